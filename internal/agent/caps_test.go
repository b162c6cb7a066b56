package agent

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// withoutCapability runs fn on an OS thread whose effective set lacks
// capability bit: capabilities belong to a thread, and the syscalls fn
// makes run on the thread that calls them. The thread is never unlocked,
// so it exits with fn's goroutine instead of serving others. fn must not
// call t.Fatal.
func withoutCapability(t *testing.T, bit int, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			t.Error(err)
			return
		}
		data[bit/32].Effective &^= 1 << (bit % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// TestCheckCapabilities: a start without CAP_SYS_ADMIN is refused naming
// it and why, not left to fail at the next start with a bare "operation
// not permitted".
func TestCheckCapabilities(t *testing.T) {
	requireRoot(t)
	if err := checkCapabilities(); err != nil {
		t.Fatalf("as root: %v", err)
	}
	for _, c := range neededCaps {
		var err error
		withoutCapability(t, c.bit, func() { err = checkCapabilities() })
		if err == nil || !strings.Contains(err.Error(), c.name) {
			t.Errorf("without %s: %v", c.name, err)
		}
	}
}

// TestDetachRootWithoutSysAdminKeepsRecord: detaching from a root's
// program array opens the slot's program by ID to see that it is ours,
// which needs CAP_SYS_ADMIN. Without it the check read as "not ours":
// the slot was left holding our program and its record was removed, so
// no later detach would ever empty it. `edge-agent detach -maps` then
// also removed the whole pin directory, record included. Now the record
// stays, the error names the capability, and a detach with it finishes
// the job.
func TestDetachRootWithoutSysAdminKeepsRecord(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		detach func(pin string) error
		gone   bool // the pin directory is removed once the slot is emptied
	}{
		{"detach", func(pin string) error { return detachRoots(pin, "", "", "") }, false},
		{"detach -maps", func(pin string) error { return Detach(pin, true) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := agentNS(t)
			pin := bpffsDir(t)
			const key = 3
			root, _, arrPin := pinnedRoot(t, key)
			cfg, _ := testConfig(t, pin)
			cfg.XDPRoot = &XDPRoot{ProgArray: arrPin, Key: key}
			defer Detach(pin, true)
			a, err := startAgent(t, ns, cfg)
			if err != nil {
				t.Fatal(err)
			}
			a.Close()
			filled := func() bool { _, ok := slotProgram(root.Array, key); return ok }
			records := func() int { m, _ := filepath.Glob(filepath.Join(pin, "root", "*")); return len(m) }
			if !filled() || records() != 1 {
				t.Fatalf("after start: slot filled %v, %d records", filled(), records())
			}

			withoutCapability(t, unix.CAP_SYS_ADMIN, func() { err = tc.detach(pin) })
			if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
				t.Errorf("without CAP_SYS_ADMIN: %v, want an error naming it", err)
			}
			if !filled() || records() != 1 {
				t.Fatalf("without CAP_SYS_ADMIN: slot filled %v, %d records; want the record kept while the slot holds ours", filled(), records())
			}

			if err := tc.detach(pin); err != nil {
				t.Fatal(err)
			}
			if filled() || records() != 0 {
				t.Fatalf("with CAP_SYS_ADMIN: slot filled %v, %d records", filled(), records())
			}
			if _, err := os.Stat(pin); tc.gone && !os.IsNotExist(err) {
				t.Fatalf("detach -maps left %s: %v", pin, err)
			}
		})
	}
}
