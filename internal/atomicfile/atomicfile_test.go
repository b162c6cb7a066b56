package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Write(p, 0o600, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, 0o640, []byte("n"), []byte("ew")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q (%v)", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// TestWriteFailureKeepsOld: a failed write leaves the old file intact.
func TestWriteFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Write(p, 0o600, []byte("old")); err != nil {
		t.Fatal(err)
	}
	err := Write(filepath.Join(dir, "missing", "state"), 0o600, []byte("x"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("write into a missing directory: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("old file changed: %q", b)
	}
}

// A killed Write leaves its temporary file; RemoveLeftovers deletes those
// of its path and nothing else (another path's, the file itself).
func TestRemoveLeftovers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Write(p, 0o600, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var left []string
	for range 2 {
		f, err := os.CreateTemp(dir, tempPrefix(p)+"*") // as a Write killed before its rename
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		left = append(left, f.Name())
	}
	other := filepath.Join(dir, tempPrefix(filepath.Join(dir, "state2"))+"1")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	RemoveLeftovers(p)
	for _, n := range left {
		if _, err := os.Stat(n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s: %v", n, err)
		}
	}
	for _, n := range []string{p, other} {
		if _, err := os.Stat(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

// leftover makes a temporary file of path as a killed Write leaves it,
// last modified age ago.
func leftover(t *testing.T, path string, age time.Duration) string {
	t.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), tempPrefix(path)+"*")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	at := time.Now().Add(-age)
	if err := os.Chtimes(f.Name(), at, at); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// RemoveLeftoversLocked waits for a WriteLocked in progress (its holder
// of the lock) and removes only temporaries old enough to be no unlocked
// writer's either; WriteLocked waits for the lock too.
func TestLockedLeftovers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	old := leftover(t, p, time.Hour)
	fresh := leftover(t, p, 0) // an older build's Write in progress, say
	unlock, err := Lock(p)
	if err != nil {
		t.Fatal(err)
	}
	removed := make(chan error, 1)
	go func() { removed <- RemoveLeftoversLocked(p) }()
	wrote := make(chan error, 1)
	go func() { wrote <- WriteLocked(p, 0o600, []byte("x")) }()
	select {
	case err := <-removed:
		t.Fatalf("removal ran while a writer held the lock: %v", err)
	case err := <-wrote:
		t.Fatalf("a locked write ran while another writer held the lock: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("removed under a live writer's lock: %v", err)
	}
	unlock()
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old leftover: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary removed: %v", err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "x" {
		t.Errorf("written %q (%v)", b, err)
	}
}
