package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where iproute2 and this package keep named namespaces, so
// `ip netns list` shows the testbed's namespaces while it runs.
const NetnsDir = "/run/netns"

var netnsDirOnce struct {
	sync.Mutex
	done bool
}

// ensureNetnsDir makes NetnsDir a shared mount point, as `ip netns add`
// does: an unmount of a namespace file then propagates into mount
// namespaces copied from ours (for example by another tool's
// `ip netns exec`), so they cannot keep a deleted namespace alive.
func ensureNetnsDir() error {
	netnsDirOnce.Lock()
	defer netnsDirOnce.Unlock()
	if netnsDirOnce.done {
		return nil
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself first.
		if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", NetnsDir, err)
		}
		err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", NetnsDir, err)
	}
	netnsDirOnce.done = true
	return nil
}

// CreateNamedNS creates a network namespace bound at NetnsDir/name and
// returns an open handle to it. The calling thread's namespace is not
// changed. The new namespace has its loopback up.
func CreateNamedNS(name string) (netns.NsHandle, error) {
	if strings.ContainsAny(name, "/\x00") || name == "" || name == "." || name == ".." {
		return -1, fmt.Errorf("invalid namespace name %q", name)
	}
	if err := ensureNetnsDir(); err != nil {
		return -1, err
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return -1, fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()

	err = inNewNS(func() error {
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind namespace: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return -1, fmt.Errorf("create namespace %s: %w", name, err)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		_ = DeleteNamedNS(name)
		return -1, fmt.Errorf("open namespace %s: %w", name, err)
	}
	if err := InNS(h, func() error { return linkUp("lo") }); err != nil {
		h.Close()
		_ = DeleteNamedNS(name)
		return -1, err
	}
	return h, nil
}

// DeleteNamedNS unmounts and removes NetnsDir/name. The namespace itself
// disappears once no process and no open handle refers to it.
func DeleteNamedNS(name string) error {
	path := filepath.Join(NetnsDir, name)
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// ListNamedNS returns the names in NetnsDir that start with prefix.
func ListNamedNS(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", NetnsDir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// inNewNS runs fn on a locked OS thread moved into a new network
// namespace, then moves the thread back.
func inNewNS(fn func() error) error {
	return onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		return nil
	}, fn)
}

// InNS runs fn on a locked OS thread inside the namespace h and restores
// the thread afterwards. Sockets created by fn belong to h and may be used
// from any goroutine afterwards.
func InNS(h netns.NsHandle, fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("enter namespace: %w", err)
		}
		return nil
	}, fn)
}

// onLockedThread runs enter and then fn on a fresh goroutine locked to its
// OS thread, and moves the thread back to its original network namespace.
// A thread that may not be back (enter or the restore failed) stays
// locked, so the runtime discards it with its goroutine rather than
// reusing it — except the main thread, which the runtime parks forever
// instead (the leak checker then reports the namespace as kept alive).
func onLockedThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// EnterNS moves the calling goroutine's locked OS thread into h and returns
// a function that moves it back and unlocks it. Callers must not start
// goroutines expecting them to inherit the namespace: only this thread is
// moved.
func EnterNS(h netns.NsHandle) (restore func() error, err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("get current namespace: %w", err)
	}
	if err := netns.Set(h); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter namespace: %w", err)
	}
	return func() error {
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with its goroutine.
			return fmt.Errorf("restore namespace: %w", err)
		}
		runtime.UnlockOSThread()
		return nil
	}, nil
}

// NSInode returns the inode number identifying the namespace h.
func NSInode(h netns.NsHandle) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return 0, fmt.Errorf("stat namespace: %w", err)
	}
	return st.Ino, nil
}

// PathInode returns the inode number of the namespace file at path.
func PathInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// SetSysctls writes net sysctls (keys relative to /proc/sys, dotted or
// slashed) inside h. Keys are applied in order.
func SetSysctls(h netns.NsHandle, kv [][2]string) error {
	return InNS(h, func() error {
		for _, p := range kv {
			path := "/proc/sys/" + strings.ReplaceAll(p[0], ".", "/")
			if err := os.WriteFile(path, []byte(p[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", p[0], p[1], err)
			}
		}
		return nil
	})
}
