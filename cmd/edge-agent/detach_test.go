package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/premirror/premirror/internal/cli"
)

// detach -maps removes the pin dir recursively: a --pin-dir that is not a
// bpffs directory (a typo, "/", a home directory) must be refused, not
// emptied.
func TestDetachMapsRefusesNonBPFFSDir(t *testing.T) {
	dir := t.TempDir()
	precious := filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := commands.Run(context.Background(), []string{"detach", "-maps", "-pin-dir", dir})
	if _, serr := os.Stat(precious); serr != nil {
		t.Fatalf("detach -maps -pin-dir %s (not a bpffs) deleted unrelated files (err %v): %v", dir, err, serr)
	}
	if err == nil {
		t.Fatal("detach accepted a pin dir that is not on a bpffs")
	}
}

// A stray positional argument stops flag parsing: "detach DIR -maps" would
// detach the default pin dir's programs and ignore -maps. Refuse it.
func TestDetachRefusesPositionalArgs(t *testing.T) {
	dir := t.TempDir()
	err := commands.Run(context.Background(), []string{"detach", dir, "-maps"})
	if !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("detach %s -maps: %v, want a usage error before anything is detached", dir, err)
	}
}
