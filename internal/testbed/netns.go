package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
)

// NSPrefix starts the name of every namespace this package creates:
// "pmtb-<owner pid>-<owner start time>-<seq>-<suffix>". The owner fields
// let [Sweep] tell leftovers of dead processes from live ones.
const NSPrefix = "pmtb-"

// LinkAliasPrefix starts the alias (IFLA_IFALIAS) of every link the
// testbed creates, so a leak check can recognise them in any namespace.
const LinkAliasPrefix = "premirror-testbed "

// ErrNotRoot is returned when the caller lacks the privileges to build
// namespaces.
var ErrNotRoot = errors.New("testbed needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")

// ErrClosed is returned by operations on a closed namespace or testbed.
var ErrClosed = errors.New("testbed closed")

var (
	nsSeq     atomic.Uint64
	ownerOnce sync.Once
	ownerTag  string // "<pid>-<start>"

	// created remembers the inode of every namespace this process made,
	// for the leak checker.
	createdMu sync.Mutex
	created   = map[uint64]string{}
)

func ownerPrefix() string {
	ownerOnce.Do(func() {
		pid := os.Getpid()
		st, _ := kernel.ProcStartTime(pid)
		ownerTag = strconv.Itoa(pid) + "-" + strconv.FormatUint(st, 36)
	})
	return NSPrefix + ownerTag + "-"
}

// NetNS is one named network namespace created by this package, with
// helpers to run code, open sockets and start processes inside it.
type NetNS struct {
	name string
	path string
	h    netns.NsHandle
	ino  uint64

	mu     sync.Mutex
	cmds   []*exec.Cmd
	closed bool
}

// newNetNS creates a namespace named after suffix.
func newNetNS(suffix string) (*NetNS, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	name := fmt.Sprintf("%s%d-%s", ownerPrefix(), nsSeq.Add(1), suffix)
	h, err := kernel.CreateNamedNS(name)
	if err != nil {
		return nil, err
	}
	ino, err := kernel.NSInode(h)
	if err != nil {
		h.Close()
		_ = kernel.DeleteNamedNS(name)
		return nil, err
	}
	createdMu.Lock()
	created[ino] = name
	createdMu.Unlock()
	return &NetNS{name: name, path: filepath.Join(kernel.NetnsDir, name), h: h, ino: ino}, nil
}

// NSName returns the namespace's name in /run/netns (as `ip netns` shows it).
func (n *NetNS) NSName() string { return n.name }

// Path returns the namespace's file, e.g. for `nsenter --net=PATH` or
// netns.GetFromPath.
func (n *NetNS) Path() string { return n.path }

// Handle returns the open namespace handle. It stays owned by n: do not
// close it.
func (n *NetNS) Handle() netns.NsHandle { return n.h }

// Do runs fn on a locked OS thread inside the namespace and returns its
// error. Sockets fn creates belong to the namespace and may be used from
// any goroutine afterwards; goroutines fn starts do NOT run in it.
func (n *NetNS) Do(fn func() error) error {
	if n.isClosed() {
		return ErrClosed
	}
	return kernel.InNS(n.h, fn)
}

// Dial connects to addr ("ip:port", an IP literal: no name resolution
// happens) from inside the namespace. network is tcp, tcp4, tcp6, udp,
// udp4 or udp6.
func (n *NetNS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return nil, fmt.Errorf("dial %s: address must be an ip:port literal: %w", addr, err)
	}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a stream listener inside the namespace (addr as for
// net.Listen, with an IP literal or empty host).
func (n *NetNS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket (udp, udp4, udp6, ip:…) inside the
// namespace.
func (n *NetNS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Command returns a command that runs name in the namespace's network
// namespace only, through `nsenter --net=<path>`: the mount namespace (and
// so /sys/fs/bpf pins) is shared with the caller, unlike `ip netns exec`.
// The process gets its own process group and SIGKILL if this process dies.
// Closing the namespace (or the testbed) kills the group and reaps the
// process; a later cmd.Wait then returns an error.
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return n.CommandContext(context.Background(), name, args...)
}

// CommandContext is Command with a context that kills the process group.
func (n *NetNS) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.path, "--", name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd.Process) }
	cmd.WaitDelay = 5 * time.Second
	n.mu.Lock()
	if n.closed {
		cmd.Err = ErrClosed
	} else {
		n.cmds = append(n.cmds, cmd)
	}
	n.mu.Unlock()
	return cmd
}

// Run runs name with args in the namespace and returns its combined
// output.
func (n *NetNS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := n.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (n *NetNS) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func killGroup(p *os.Process) error {
	if p == nil {
		return nil
	}
	if err := p.Signal(syscall.SIGKILL); errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	// The leader is not reaped yet, so its pid still names the group.
	_ = kernel.Kill(-p.Pid, syscall.SIGKILL)
	return nil
}

// stopProcesses kills and reaps the tracked commands, then kills any other
// process still inside the namespace (for example a daemon that left the
// group) and waits until none is left.
func (n *NetNS) stopProcesses(timeout time.Duration) error {
	n.mu.Lock()
	cmds := n.cmds
	n.cmds = nil
	n.mu.Unlock()
	var errs []error
	for _, c := range cmds {
		p := c.Process
		if p == nil {
			continue
		}
		_ = killGroup(p)
		done := make(chan struct{})
		go func() {
			// Errors mean someone else reaped it (the caller's Wait).
			_, _ = p.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(timeout):
			errs = append(errs, fmt.Errorf("process %d in %s did not exit after SIGKILL", p.Pid, n.name))
		}
	}
	if err := killNSUsers(n.ino, timeout); err != nil {
		errs = append(errs, fmt.Errorf("namespace %s: %w", n.name, err))
	}
	return errors.Join(errs...)
}

// Close kills the namespace's processes, closes its handle and deletes it.
// It is idempotent.
func (n *NetNS) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	err := n.stopProcesses(5 * time.Second)
	n.h.Close()
	return errors.Join(err, kernel.DeleteNamedNS(n.name))
}

// NewNetNS creates a fresh network namespace for a test of another package
// (loopback up, nothing else) and deletes it in tb.Cleanup, after killing
// processes started in it. It skips the test with a clear message when not
// root. Use [NetNS.Enter] to move the test goroutine into it, or
// [NetNS.Do] to run code inside it.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: network namespaces need root")
	}
	n, err := newNetNS("t")
	if err != nil {
		tb.Fatalf("create network namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("delete network namespace: %v", err)
		}
	})
	return n
}

// JoinNewNetNS is NewNetNS followed by Enter: the test goroutine's OS
// thread is locked into a fresh namespace until the test ends, so code
// under test that uses the current namespace (netlink, link.AttachXDP by
// ifindex, sockets) runs in it.
func JoinNewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	n := NewNetNS(tb)
	n.Enter(tb)
	return n
}

// Enter locks the calling goroutine to its OS thread and moves that thread
// into the namespace until the end of the test (restored in tb.Cleanup,
// which runs on the same goroutine). Goroutines the test starts do not
// follow: open their sockets before starting them, or use [NetNS.Do].
func (n *NetNS) Enter(tb testing.TB) {
	tb.Helper()
	restore, err := kernel.EnterNS(n.h)
	if err != nil {
		tb.Fatalf("enter namespace %s: %v", n.name, err)
	}
	tb.Cleanup(func() {
		if err := restore(); err != nil {
			tb.Errorf("leave namespace %s: %v", n.name, err)
		}
	})
}

// AddVeth creates the veth pair name/peer with both ends in the
// namespace and brings them and lo up: a link for an XDP program with a
// peer to send through, and a loopback for the addresses tests bind.
func (n *NetNS) AddVeth(name, peer string) error {
	if _, _, err := kernel.CreateVeth(kernel.VethSpec{ANS: n.h, AName: name, BNS: n.h, BName: peer}); err != nil {
		return err
	}
	return n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
}

// AddAddr adds a host address (/32 or /128 for a single address) to link
// inside the namespace, e.g. a VIP on "lo"; IPv6 gets IFA_F_NODAD. It
// returns once the address is usable (IPv6 completes asynchronously).
func (n *NetNS) AddAddr(link string, p netip.Prefix) error {
	if err := kernel.AddAddr(n.h, link, p); err != nil {
		return err
	}
	return kernel.WaitLocal(n.h, 10*time.Second, p.Addr())
}

// DelAddr removes an address added with AddAddr.
func (n *NetNS) DelAddr(link string, p netip.Prefix) error {
	return kernel.DelAddr(n.h, link, p)
}
