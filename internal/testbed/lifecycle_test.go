package testbed

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"go.uber.org/goleak"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
	"github.com/premirror/premirror/internal/testbed/wan"
)

func TestMain(m *testing.M) {
	// Per-test checks run through VerifyNoLeaks; this one also catches a
	// test that forgot it.
	code := m.Run()
	if code == 0 && os.Getenv(crashChildEnv) == "" {
		c := NewLeakChecker(LeakOptions{})
		c.oldNames, c.oldInodes = nil, nil // every namespace this process made must be gone
		if err := c.checkOnce(); err != nil {
			fmt.Fprintln(os.Stderr, "leaks after all tests:", err)
			code = 1
		}
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked by the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const crashChildEnv = "PREMIRROR_TESTBED_CRASH_CHILD"

// TestCrashChild is not a test of its own: TestSweepAfterCrash runs it in
// a child process, which builds a testbed, starts a process in a host
// that would outlive it, reports, and waits to be killed.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) == "" {
		t.Skip("helper for TestSweepAfterCrash")
	}
	tb := ForTest(t, smallTopo(), Options{})
	cmd := tb.Host("m1").Command("sleep", "300")
	if os.Getenv(crashChildEnv) == "crash" {
		cmd.SysProcAttr.Pdeathsig = 0 // survive our death: the sweeper must kill it
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %d\n", cmd.Process.Pid)
	time.Sleep(time.Minute)
	t.Fatal("not killed")
}

// TestSweepAfterCrash kills a process that built a testbed (SIGKILL: no
// cleanup runs) and checks that the next New removes its namespaces and
// the process it left running in one of them.
func TestSweepAfterCrash(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	VerifyNoLeaks(t, LeakOptions{})
	child, orphan := startChild(t, "crash")
	prefix := fmt.Sprintf("%s%d-", NSPrefix, child.Process.Pid)
	left, _ := kernel.ListNamedNS(prefix)
	if len(left) != 7 { // switch + 2 clients + 2 edges + 2 mirrors
		t.Fatalf("child made namespaces %v, want 7", left)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	if left, _ := kernel.ListNamedNS(prefix); len(left) != 7 {
		t.Fatalf("namespaces after the crash: %v", left)
	}
	if !kernel.Exists(orphan) {
		t.Fatalf("orphan %d died with its parent; the test proves nothing", orphan)
	}

	ForTest(t, smallTopo(), Options{}) // sweeps before building

	if left, _ := kernel.ListNamedNS(prefix); len(left) != 0 {
		t.Errorf("namespaces left after sweep: %v", left)
	}
	waitGone(t, orphan)
}

// TestSignalClosesTestbed: SIGTERM to a process with an open testbed
// closes it (namespaces and processes gone, no sweep needed) and then
// terminates the process by that signal.
func TestSignalClosesTestbed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	child, proc := startChild(t, "signal")
	prefix := fmt.Sprintf("%s%d-", NSPrefix, child.Process.Pid)
	if left, _ := kernel.ListNamedNS(prefix); len(left) != 7 {
		t.Fatalf("child made namespaces %v, want 7", left)
	}
	if err := child.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := child.Wait()
	ws, ok := child.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("child ended with %v, want death by SIGTERM", err)
	}
	if left, _ := kernel.ListNamedNS(prefix); len(left) != 0 {
		t.Errorf("namespaces left after SIGTERM: %v", left)
	}
	waitGone(t, proc)
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for kernel.Exists(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if kernel.Exists(pid) {
		t.Errorf("process %d still running", pid)
	}
}

// startChild runs TestCrashChild in a child process in the given mode and
// returns it with the pid of the process it started in a host.
func startChild(t *testing.T, mode string) (*exec.Cmd, int) {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
	child.Env = append(os.Environ(), crashChildEnv+"="+mode)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	sc := bufio.NewScanner(out)
	orphan := 0
	for sc.Scan() {
		if pid, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			orphan, _ = strconv.Atoi(pid)
			break
		}
	}
	if orphan == 0 {
		t.Fatalf("child never got ready: %v", sc.Err())
	}
	go io.Copy(io.Discard, out)
	return child, orphan
}

// TestCloseIsIdempotentAndLeakFree also covers Close with a process still
// running and a namespace handle in use.
func TestCloseIsIdempotentAndLeakFree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	lc := NewLeakChecker(LeakOptions{})
	quick := NewLeakChecker(LeakOptions{Timeout: 100 * time.Millisecond})
	tb, err := New(t.Context(), smallTopo(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range tb.Hosts() {
		if err := h.Command("sleep", "300").Start(); err != nil {
			t.Fatal(err)
		}
	}
	if err := quick.Check(); err == nil {
		t.Fatal("leak check passed with a testbed open")
	} else if !strings.Contains(err.Error(), "leaked namespaces") || !strings.Contains(err.Error(), "sleep") {
		t.Errorf("leak report misses the namespaces or processes: %v", err)
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := lc.Check(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Host("m1").Do(func() error { return nil }); err == nil {
		t.Error("Do on a closed host succeeded")
	}
}

// TestNewNetNS: a fresh namespace has only lo, JoinNewNetNS moves the
// test's thread into it, and cleanup removes it (VerifyNoLeaks would
// catch a thread left inside).
func TestNewNetNS(t *testing.T) {
	VerifyNoLeaks(t, LeakOptions{})
	n := JoinNewNetNS(t)
	links, err := kernel.ListLinks(n.Handle())
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Name != "lo" {
		t.Fatalf("links %+v, want lo only", links)
	}
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", n.ino); self != want {
		t.Errorf("thread in %s, want %s", self, want)
	}
}

// TestXDPTxAndRedirectReachSwitch: frames a host's XDP program sends with
// XDP_TX (bounced out of eth0) or XDP_REDIRECT (from a two-armed edge's
// eth0 out of eth1) reach the switch, which counts them as not addressed
// to it: the switch's veth ends run the pass-through program, without
// which (checked on this kernel by detaching it) none of them arrive.
func TestXDPTxAndRedirectReachSwitch(t *testing.T) {
	tb := ForTest(t, smallTopo(), Options{})
	ea := tb.Host("ea")
	eth1, _ := ea.Iface("eth1")
	tests := []struct {
		name    string
		host    *Host // runs the program on eth0
		sender  *Host // sends UDP to host's eth0 address
		outPort string
		prog    asm.Instructions
	}{
		{"xdp_tx", tb.Clients("ra")[0], tb.Host("m1"), tb.Clients("ra")[0].Ifaces[0].Port,
			asm.Instructions{asm.Mov.Imm(asm.R0, 3), asm.Return()}},
		{"xdp_redirect", ea, tb.Clients("ra")[0], eth1.Port,
			asm.Instructions{
				asm.Mov.Imm(asm.R1, int32(eth1.Index)),
				asm.Mov.Imm(asm.R2, 0),
				asm.FnRedirect.Call(),
				asm.Return(),
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: tc.prog})
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			l, err := kernel.AttachXDP(tc.host.Handle(), prog, tc.host.Ifaces[0].Index)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			before, _ := tb.Switch().PortStats(tc.outPort)
			conn, err := tc.sender.Dial(t.Context(), "udp", hostPort(tc.host.V4(), 7))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			const n = 100
			for i := 0; i < n; i++ {
				if _, err := conn.Write([]byte("bounce")); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Microsecond)
			}
			var got uint64
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				st, _ := tb.Switch().PortStats(tc.outPort)
				if got = st.Drops[wan.DropNotForUs] - before.Drops[wan.DropNotForUs]; got >= n {
					break
				}
			}
			if got < n*95/100 {
				t.Errorf("%d of %d frames reached switch port %s", got, n, tc.outPort)
			}
		})
	}
}
