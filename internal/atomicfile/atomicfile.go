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
func RemoveLeftovers(path string) {
	prefix := tempPrefix(path)
	ents, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
			_ = os.Remove(filepath.Join(filepath.Dir(path), e.Name()))
		}
	}
}
