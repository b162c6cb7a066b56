package agent

import (
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
