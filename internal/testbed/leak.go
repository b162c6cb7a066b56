package testbed

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
)

// LeakOptions configures a [LeakChecker].
type LeakOptions struct {
	// PinDir is a bpffs directory (e.g. /sys/fs/bpf/premirror-test-x):
	// pins under it that were not there at the snapshot are leaks.
	// Empty skips the pin check.
	PinDir string
	// Goleak adds options to the goroutine check (goleak.IgnoreTopFunction
	// and friends). Goroutines running at the snapshot are ignored.
	Goleak []goleak.Option
	// Timeout bounds how long Check waits for things to settle (process
	// exit, goroutine exit). Default 5 s.
	Timeout time.Duration
}

// LeakChecker compares the machine against a snapshot: namespaces, links,
// processes, goroutines and bpffs pins created after the snapshot and
// still there are leaks. Testbeds of this process that were already open
// at the snapshot are ignored, so parallel tests may each use one; their
// goroutines are not, so goroutine checks in parallel tests need the
// same care as any goleak use.
type LeakChecker struct {
	opts     LeakOptions
	pins     map[string]bool
	ignoreGR goleak.Option
	rootLink map[string]bool
	kids     map[string]bool
	// Namespaces that existed at the snapshot (other testbeds of this
	// process, e.g. in parallel tests) are not this check's business.
	oldNames  map[string]bool
	oldInodes map[uint64]bool
}

// NewLeakChecker takes the snapshot. Create it before the testbed.
func NewLeakChecker(opts LeakOptions) *LeakChecker {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	c := &LeakChecker{opts: opts, ignoreGR: goleak.IgnoreCurrent(), rootLink: map[string]bool{}}
	c.pins, _ = listPins(opts.PinDir)
	c.oldNames = map[string]bool{}
	names, _ := kernel.ListNamedNS(ownerPrefix())
	for _, n := range names {
		c.oldNames[n] = true
	}
	c.oldInodes = map[uint64]bool{}
	createdMu.Lock()
	for ino := range created {
		c.oldInodes[ino] = true
	}
	createdMu.Unlock()
	c.kids = map[string]bool{}
	for pid := range childProcesses() {
		c.kids[pid] = true
	}
	if ls, err := kernel.ListLinks(netns.None()); err == nil {
		for _, l := range ls {
			c.rootLink[l.Name] = true
		}
	}
	return c
}

// Check returns an error describing every leak, or nil. It waits up to
// the timeout for leaks to disappear (processes being reaped, goroutines
// returning) before reporting them.
func (c *LeakChecker) Check() error {
	deadline := time.Now().Add(c.opts.Timeout)
	for {
		err := c.checkOnce()
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				return err
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// goleak has its own retry loop; run it once the rest is clean.
	opts := append([]goleak.Option{c.ignoreGR}, c.opts.Goleak...)
	if err := goleak.Find(opts...); err != nil {
		return fmt.Errorf("leaked goroutines: %w", err)
	}
	return nil
}

func (c *LeakChecker) checkOnce() error {
	var errs []error
	// Namespaces of this process still named in /run/netns.
	all, err := kernel.ListNamedNS(ownerPrefix())
	if err != nil {
		errs = append(errs, err)
	}
	var names []string
	for _, n := range all {
		if !c.oldNames[n] {
			names = append(names, n)
		}
	}
	if len(names) > 0 {
		errs = append(errs, fmt.Errorf("leaked namespaces in %s: %s", kernel.NetnsDir, strings.Join(names, " ")))
	}
	// Anything keeping a namespace we created alive: a process inside it,
	// one of our threads stuck in it, or an open handle.
	createdMu.Lock()
	inodes := make(map[uint64]bool, len(created))
	for ino := range created {
		if !c.oldInodes[ino] {
			inodes[ino] = true
		}
	}
	createdMu.Unlock()
	users, err := kernel.NSUsers(inodes)
	if err != nil {
		errs = append(errs, err)
	}
	for _, u := range users {
		errs = append(errs, fmt.Errorf("namespace %s kept alive by pid %d (%s)", nameOfInode(u.Inode), u.Pid, u.What))
	}
	// Links in our own namespace: the testbed creates none there.
	if ls, err := kernel.ListLinks(netns.None()); err == nil {
		for _, l := range ls {
			if strings.HasPrefix(l.Alias, LinkAliasPrefix) && !c.rootLink[l.Name] {
				errs = append(errs, fmt.Errorf("leaked link %s (%s) in the root namespace", l.Name, l.Alias))
			}
		}
	}
	// Child processes of ours that are still alive or unreaped.
	var kids []string
	for pid, desc := range childProcesses() {
		if !c.kids[pid] {
			kids = append(kids, desc)
		}
	}
	slices.Sort(kids)
	if len(kids) > 0 {
		errs = append(errs, fmt.Errorf("child processes still present: %s", strings.Join(kids, ", ")))
	}
	if c.opts.PinDir != "" {
		now, err := listPins(c.opts.PinDir)
		if err != nil {
			errs = append(errs, err)
		}
		var extra []string
		for p := range now {
			if !c.pins[p] {
				extra = append(extra, p)
			}
		}
		slices.Sort(extra)
		if len(extra) > 0 {
			errs = append(errs, fmt.Errorf("leaked pins under %s: %s", c.opts.PinDir, strings.Join(extra, " ")))
		}
	}
	return errors.Join(errs...)
}

func nameOfInode(ino uint64) string {
	createdMu.Lock()
	defer createdMu.Unlock()
	if n, ok := created[ino]; ok {
		return n
	}
	return fmt.Sprintf("net:[%d]", ino)
}

// childProcesses maps the pid of each process whose parent is this
// process to "pid (comm, state)".
func childProcesses() map[string]string {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		j := strings.IndexByte(s, '(')
		if i < 0 || j < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != fmt.Sprint(self) {
			continue
		}
		out[e.Name()] = fmt.Sprintf("%s (%s, %s)", e.Name(), s[j+1:i], f[0])
	}
	return out
}

func listPins(dir string) (map[string]bool, error) {
	out := map[string]bool{}
	if dir == "" {
		return out, nil
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			out[p] = true
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("list pins under %s: %w", dir, err)
	}
	return out, nil
}

// VerifyNoLeaks snapshots the machine now and checks for leaks when the
// test ends. Call it before building the testbed, so its cleanup runs
// after the testbed's (cleanups run last-in first-out).
func VerifyNoLeaks(tb testing.TB, opts LeakOptions) *LeakChecker {
	tb.Helper()
	c := NewLeakChecker(opts)
	tb.Cleanup(func() {
		if err := c.Check(); err != nil {
			tb.Errorf("leak check: %v", err)
		}
	})
	return c
}
