package replicator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// writeCycleJournal writes a committed one-block cycle to a journal at
// path and returns the file's bytes.
func writeCycleJournal(t *testing.T, path string) []byte {
	t.Helper()
	j, err := openJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	ver := Version{Epoch: 1, Clock: 9, Site: 2}
	c := &jcycle{cycle: 3, epoch: 1, entries: 1, index: map[uint64]int{}, digest: xxhash.New()}
	data := make([]byte, bs)
	data[0] = 1
	if err := errors.Join(j.begin(c),
		j.manifest([]jentry{{ManifestEntry: wire.ManifestEntry{Block: 5, Version: ver}, src: srcNeed}}),
		j.stage([]recvItem{{block: 5, ver: ver, data: data}}, []uint64{xxhash.Sum64(data)}),
		j.commit(3, 1, c.digest.Sum64()), j.Close()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestJournalScanTornTailAndDamage: a torn tail (a record cut short, or
// damaged with nothing valid after it) is cut off as never acknowledged;
// a damaged record with valid ones after it is errJournalDamaged — the
// scan used to cut there too, dropping the committed cycle after it
// without a word.
func TestJournalScanTornTailAndDamage(t *testing.T) {
	dir := t.TempDir()
	good := writeCycleJournal(t, filepath.Join(dir, "good"))
	const commitLen = recHeader + 24
	cases := []struct {
		name    string
		edit    func([]byte) []byte
		damaged bool
		size    int // bytes kept when not damaged
	}{
		{"intact", func(b []byte) []byte { return b }, false, len(good)},
		{"commit cut short", func(b []byte) []byte { return b[:len(b)-5] }, false, len(good) - commitLen},
		{"commit damaged", func(b []byte) []byte { b[len(b)-3] ^= 1; return b }, false, len(good) - commitLen},
		{"data record cut short", func(b []byte) []byte { return b[:len(b)-commitLen-100] }, false, -1},
		{"begin damaged, the rest valid", func(b []byte) []byte { b[recHeader+3] ^= 0x40; return b }, true, 0},
		{"data damaged, commit after it", func(b []byte) []byte { b[len(b)-commitLen-100] ^= 0x40; return b }, true, 0},
		{"length of a record damaged", func(b []byte) []byte { b[9] ^= 0x10; return b }, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "j")
			if err := os.WriteFile(p, tc.edit(append([]byte(nil), good...)), 0o600); err != nil {
				t.Fatal(err)
			}
			j, err := openJournal(p)
			if tc.damaged {
				if !errors.Is(err, errJournalDamaged) || !errors.Is(err, ErrCorrupt) {
					t.Fatalf("open: %v, want errJournalDamaged", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer j.Close()
			if tc.size >= 0 && j.size != int64(tc.size) {
				t.Fatalf("kept %d bytes, want %d", j.size, tc.size)
			}
		})
	}
}

// TestDamagedMirrorJournalResyncs: a mirror whose journal was damaged
// after it was synced starts inconsistent, with a full copy to run from
// block 0; the source's next push runs it and the copy is whole again.
func TestDamagedMirrorJournalResyncs(t *testing.T) {
	c := newCluster(t, "origin", "mirror")
	makeImage(t, c.path("origin.img"), 64, bs, 1)
	origin := c.start("origin", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("origin.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "mirror"}}}}, Peers: c.peers("mirror")})
	mcfg := Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("mirror.img")}}}
	c.start("mirror", mcfg)
	ctx := context.Background()
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("origin.img"), c.path("mirror.img"))
	c.stop("mirror")

	jp := journalPath(c.path("mirror.img") + ".pmr")
	b := writeCycleJournal(t, jp)
	b[recHeader+3] ^= 0x40 // the begin record: the manifest, data and commit after it are valid
	if err := os.WriteFile(jp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	m := c.start("mirror", mcfg)
	mv, err := m.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	if st := mv.Status(); !st.Inconsistent || !st.FullActive || st.FullNext != 0 || st.Complete {
		t.Fatalf("mirror after a damaged journal: %+v, want inconsistent with a full copy from block 0", st)
	}
	if fi, err := os.Stat(jp); err != nil || fi.Size() != 0 {
		t.Fatalf("damaged journal kept: %v %v", fi, err)
	}
	res, err := origin.Push(ctx, "vol", "mirror", PushOptions{})
	if err != nil {
		t.Fatalf("push after the damage: %v", err)
	}
	if !res.Full || res.ResumeFrom != 0 {
		t.Fatalf("push after the damage: %+v, want a full copy from block 0", res)
	}
	// The mirror applies a cycle right after acknowledging it.
	sameFile(t, c.path("origin.img"), c.path("mirror.img"))
	deadline := time.Now().Add(5 * time.Second)
	for st := mv.Status(); !st.Complete; st = mv.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("mirror after the full copy: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
