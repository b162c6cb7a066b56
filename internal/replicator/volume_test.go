package replicator

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func openTestVolume(t *testing.T, blocks int) (*Volume, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "v.img")
	makeImage(t, path, blocks, bs, 9)
	v, err := OpenVolume(path, VolumeOptions{Init: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return v, path
}

// A crash (no flush) after tracked writes can only over-mark: every block
// written is dirty and to be probed after recovery.
func TestActivityLogOverMarksAfterCrash(t *testing.T) {
	v, path := openTestVolume(t, 4096)
	if err := v.AddPeer("p"); err != nil {
		t.Fatal(err)
	}
	v.resetPeer("p")
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	written := writeRandomBlocks(t, v, rng, 40)
	v.closeFiles() // crash: nothing flushed after the writes
	v2, err := OpenVolume(path, VolumeOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	v2.mu.Lock()
	p := v2.peers["p"]
	for b := range written {
		if !p.dirty.Has(b) || !p.probe.Has(b) {
			t.Errorf("block %d written before the crash is not marked dirty and probed", b)
		}
	}
	v2.mu.Unlock()
	if v2.suspect == 0 || v2.suspect > uint64(len(written))*alExtentBlocks {
		t.Fatalf("%d suspect blocks for %d written", v2.suspect, len(written))
	}
	// A clean shutdown leaves nothing to recover.
	v2.Close()
	v3, err := OpenVolume(path, VolumeOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	if v3.suspect != 0 {
		t.Fatalf("%d suspect blocks after a clean close", v3.suspect)
	}
}

// A cycle's snapshot keeps the content from when the cycle began while the
// volume takes writes.
func TestSnapshotIsPointInTime(t *testing.T) {
	v, _ := openTestVolume(t, 256)
	defer v.Close()
	v.AddPeer("p")
	v.resetPeer("p")
	old := bytes.Repeat([]byte{1}, bs)
	if _, err := v.WriteAt(old, 10*bs); err != nil {
		t.Fatal(err)
	}
	c, err := v.beginCycle("p", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.manifest) != 1 || c.manifest[0].Block != 10 {
		t.Fatalf("manifest %+v, want block 10", c.manifest)
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{2}, bs), 10*bs); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, bs)
	if err := c.snap.readRun(10, 1, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, old) {
		t.Fatal("snapshot read returned the newer write")
	}
	v.endCycle(c, true)
	// The write during the cycle is tracked for the next one.
	if d := v.DirtyBlocks("p"); d != 1 {
		t.Fatalf("%d dirty blocks after the cycle, want 1", d)
	}
}

func TestVolumeErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		open func() error
		want error
	}{
		{"no metadata", func() error {
			_, err := OpenVolume(filepath.Join(dir, "none.img"), VolumeOptions{})
			return err
		}, ErrUnknownVolume},
		{"bad block size", func() error {
			_, err := OpenVolume(filepath.Join(dir, "a.img"), VolumeOptions{Init: true, BlockSize: 1000, Size: 1 << 20})
			return err
		}, ErrGeometry},
		{"odd size", func() error {
			_, err := OpenVolume(filepath.Join(dir, "b.img"), VolumeOptions{Init: true, Size: 5000})
			return err
		}, ErrGeometry},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.open(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	v, path := openTestVolume(t, 64)
	defer v.Close()
	if _, err := OpenVolume(path, VolumeOptions{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second open: %v, want ErrBusy", err)
	}
}

func TestHotExtents(t *testing.T) {
	v, _ := openTestVolume(t, 4096)
	defer v.Close()
	buf := make([]byte, bs)
	for i := 0; i < 10; i++ {
		v.ReadAt(buf, 3000*bs)
	}
	v.ReadAt(buf, 100*bs)
	hot := v.HotExtents(1, alExtentBlocks)
	if len(hot) != 1 || hot[0].Start != 2048 || hot[0].Count != alExtentBlocks {
		t.Fatalf("hot extents %+v, want the extent of block 3000", hot)
	}
}

// A process killed while it replaced the state file leaves atomicfile's
// temporary behind; the next process to lock the volume removes it (a
// node whose replicator is killed now and then does not collect them),
// and a second open refused as busy removes nothing.
func TestStateLeftoversRemoved(t *testing.T) {
	v, path := openTestVolume(t, 64)
	meta := path + ".pmr"
	leftovers := []string{".state.json.tmp-123", ".state.json.tmp-4567"}
	for _, n := range append(slices.Clone(leftovers), ".other.json.tmp-1") {
		if err := os.WriteFile(filepath.Join(meta, n), []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenVolume(path, VolumeOptions{Logger: quietLogger()}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second open: %v, want ErrBusy", err)
	}
	for _, n := range leftovers {
		if _, err := os.Stat(filepath.Join(meta, n)); err != nil {
			t.Fatalf("%s removed by an open refused as busy: %v", n, err)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v, err := OpenVolume(path, VolumeOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, n := range leftovers {
		if _, err := os.Stat(filepath.Join(meta, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s: %v", n, err)
		}
	}
	for _, n := range []string{"state.json", ".other.json.tmp-1"} {
		if _, err := os.Stat(filepath.Join(meta, n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}
