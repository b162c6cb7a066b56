// Package testutil holds helpers for tests that need privileges: a private
// network namespace served by one locked OS thread, and root checks.
package testutil

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireRoot skips tb unless it runs as root.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: " + why)
	}
}

// NetNS is a fresh network namespace with a goroutine locked into it.
// Everything that must see the namespace (netlink, sockets, prog.Run with
// bpf_fib_lookup, sysctls) runs through Do. Go test functions and subtests
// run on arbitrary threads, so they must not enter namespaces themselves.
type NetNS struct {
	work chan func()
	// Path is /proc/<pid>/task/<tid>/ns/net of the serving thread, for
	// tools such as nsenter while the namespace lives.
	Path string
}

// NewNetNS creates a namespace that lives until tb ends. setup, if not
// nil, runs inside it first.
func NewNetNS(tb testing.TB, setup func() error) *NetNS {
	tb.Helper()
	RequireRoot(tb, "creates a network namespace")
	n := &NetNS{work: make(chan func())}
	ready := make(chan error)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime retires
		// the thread and with it the last reference to the namespace.
		runtime.LockOSThread()
		h, err := netns.New()
		if err != nil {
			ready <- fmt.Errorf("new netns: %w", err)
			return
		}
		defer h.Close()
		n.Path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if setup != nil {
			err = setup()
		}
		ready <- err
		for f := range n.work {
			f()
		}
	}()
	if err := <-ready; err != nil {
		close(n.work)
		tb.Fatal(err)
	}
	tb.Cleanup(func() { close(n.work) })
	return n
}

// Do runs f inside the namespace and waits for it.
func (n *NetNS) Do(f func()) {
	done := make(chan struct{})
	n.work <- func() { defer close(done); f() }
	<-done
}

// Sysctl writes a value under /proc/sys; call it through Do for net.*.
func Sysctl(path, v string) error {
	return os.WriteFile("/proc/sys/"+path, []byte(v), 0o644)
}
