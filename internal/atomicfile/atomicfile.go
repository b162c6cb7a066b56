// Package atomicfile replaces a file so that a crash leaves either the old
// content or the new one, never a mix: the content goes to a temporary
// file in the same directory, which is synced, renamed over the target,
// and the directory synced so the rename itself is durable. Every state,
// cache, snapshot and key file premirror writes goes through it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// tempPrefix starts the names of path's temporary files (os.CreateTemp
// appends a random suffix).
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// Write replaces path with the concatenation of parts, with permissions mode.
func Write(path string, mode os.FileMode, parts ...[]byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	fail := func(op string, err error) error {
		tmp.Close()
		return fmt.Errorf("%s %s: %w", op, path, err)
	}
	for _, p := range parts {
		if _, err := tmp.Write(p); err != nil {
			return fail("write", err)
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		return fail("chmod", err)
	}
	if err := tmp.Sync(); err != nil {
		return fail("sync", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// RemoveLeftovers deletes the temporary files of Writes to path that a
// killed process left (a Write removes its own otherwise). Only for a
// caller that is path's sole writer (holding a lock on it, say): it would
// remove another process's Write in progress too.
func RemoveLeftovers(path string) { removeLeftovers(path, 0) }

// removeLeftovers removes path's temporary files unmodified for minAge.
func removeLeftovers(path string, minAge time.Duration) {
	prefix := tempPrefix(path)
	dir := filepath.Dir(path)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) >= minAge {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// Lock takes path's writers' lock, an exclusive flock on <path>.lock,
// waiting for its holder; unlock releases it. Each call opens its own file
// description, so two holders in one process take turns too.
func Lock(path string) (unlock func(), err error) {
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		lf.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { lf.Close() }, nil // closing releases the flock
}

// WriteLocked is Write holding path's lock (<path>.lock), for a file that
// several processes may write (two agents given one cache, controllers
// sharing a state file): RemoveLeftoversLocked then never takes a live
// Write's temporary file for a killed one's.
func WriteLocked(path string, mode os.FileMode, parts ...[]byte) error {
	unlock, err := Lock(path)
	if err != nil {
		return err
	}
	defer unlock()
	return Write(path, mode, parts...)
}

// unlockedWriteAge: a temporary file unmodified this long is no live
// Write's, even of a writer that does not lock; a Write takes
// milliseconds to seconds.
const unlockedWriteAge = time.Minute

// RemoveLeftoversLocked deletes the temporary files a killed process's
// Writes to path left, holding path's lock, so a WriteLocked in progress
// finishes first; of those it removes only files unmodified for a minute,
// so a writer that does not lock (an older build) keeps its file too.
func RemoveLeftoversLocked(path string) error {
	unlock, err := Lock(path)
	if err != nil {
		return err
	}
	defer unlock()
	removeLeftovers(path, unlockedWriteAge)
	return nil
}
