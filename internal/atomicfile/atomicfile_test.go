package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
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
