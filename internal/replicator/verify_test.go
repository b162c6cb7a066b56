package replicator

import (
	"bytes"
	"context"
	"os"
	"slices"
	"testing"
)

// flipBit flips one bit of block b in an image file, behind the
// replicator's back (silent corruption, a stray writer).
func flipBit(t testing.TB, path string, b uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	one := make([]byte, 1)
	off := int64(b)*bs + 77
	if _, err := f.ReadAt(one, off); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0x10
	if _, err := f.WriteAt(one, off); err != nil {
		t.Fatal(err)
	}
}

// readBlock reads block b of an image file directly.
func readBlock(t testing.TB, path string, b uint64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, bs)
	if _, err := f.ReadAt(buf, int64(b)*bs); err != nil {
		t.Fatal(err)
	}
	return buf
}

// TestVerifySelective checks Merkle verify against a selective mirror:
// only blocks the mirror holds (copied or fetched by read-through) are
// compared, corruption in them is found and repaired, and a repair never
// gives the mirror blocks it did not hold.
func TestVerifySelective(t *testing.T) {
	extents := []Extent{{Start: 100, Count: 50}, {Start: 1000, Count: 10}}
	cases := []struct {
		name    string
		reads   []uint64 // blocks read at the mirror first (read-through for absent ones)
		corrupt []uint64 // blocks flipped in the mirror's image
		want    []uint64 // blocks verify must report
	}{
		{name: "in sync"},
		// The mirror's image holds zeros where the source has data, and
		// even garbage there must not count: the block is not held.
		{name: "absent block damaged", corrupt: []uint64{700}},
		{name: "held blocks damaged", corrupt: []uint64{100, 149, 1009}, want: []uint64{100, 149, 1009}},
		{name: "read-through block in sync", reads: []uint64{500, 501}},
		{name: "read-through block damaged", reads: []uint64{500, 501}, corrupt: []uint64{501, 120}, want: []uint64{120, 501}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, src, dst, data := twoNodes(t, 2048, nil)
			ctx := context.Background()
			res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeSelective, Extents: extents})
			if err != nil {
				t.Fatal(err)
			}
			dv := waitCycle(t, dst, "vol", res.Cycle)
			buf := make([]byte, bs)
			for _, b := range tc.reads {
				if err := dst.Read(ctx, "vol", buf, int64(b)*bs); err != nil {
					t.Fatal(err)
				}
			}
			held := dv.Status().PresentBlocks
			if want := uint64(60 + len(tc.reads)); held != want {
				t.Fatalf("mirror holds %d blocks, want %d", held, want)
			}
			for _, b := range tc.corrupt {
				flipBit(t, c.path("dst.img"), b)
			}

			r, err := src.Verify(ctx, "vol", "dst", VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Blocks != 2048 || !slices.Equal(r.Differ, tc.want) {
				t.Fatalf("verify compared %d blocks, found %d differing %v; want 2048 and %v", r.Blocks, len(r.Differ), r.Differ[:min(len(r.Differ), 16)], tc.want)
			}
			r, err = src.Verify(ctx, "vol", "dst", VerifyOptions{Repair: true})
			if err != nil {
				t.Fatal(err)
			}
			if r.Repaired != (len(tc.want) > 0) {
				t.Fatalf("repair: %+v, want repaired=%v", r, len(tc.want) > 0)
			}
			if r.Repaired {
				waitCycle(t, dst, "vol", r.Cycle)
			}

			// Every held block matches the source byte for byte; the
			// repair added none.
			if got := dv.Status().PresentBlocks; got != held {
				t.Fatalf("after repair the mirror holds %d blocks, held %d before", got, held)
			}
			holds := map[uint64]bool{}
			for _, e := range extents {
				for b := e.Start; b < e.Start+e.Count; b++ {
					holds[b] = true
				}
			}
			for _, b := range tc.reads {
				holds[b] = true
			}
			for b := uint64(0); b < 2048; b++ {
				missing := len(dv.missing(b, b+1)) == 1
				if missing == holds[b] {
					t.Fatalf("block %d: held=%v at the mirror, want %v", b, !missing, holds[b])
				}
				if holds[b] && !bytes.Equal(readBlock(t, c.path("dst.img"), b), data[b*bs:(b+1)*bs]) {
					t.Fatalf("held block %d differs from the source after repair", b)
				}
			}
			r, err = src.Verify(ctx, "vol", "dst", VerifyOptions{})
			if err != nil || len(r.Differ) != 0 {
				t.Fatalf("verify after repair: %v, %d differ", err, len(r.Differ))
			}
		})
	}
}

// TestRepairDoesNotRollBackSyncWrite: a verify-repair cycle takes its
// snapshot, then a quorum write of a differing block reaches the mirror
// (acknowledged there) before the repair cycle is applied. The forced
// repair must not put the snapshot's older bytes back over the newer
// acknowledged write.
func TestRepairDoesNotRollBackSyncWrite(t *testing.T) {
	c, src, dst, _ := twoNodes(t, 256, func(vc *VolumeConfig) { vc.WriteQuorum = 2 })
	ctx := context.Background()
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	dv := waitCycle(t, dst, "vol", res.Cycle)
	const blk = 10
	flipBit(t, c.path("dst.img"), blk)

	newData := bytes.Repeat([]byte{0xA5}, bs)
	fired := false
	src.hooks.onCycle = func(vol string, cycle uint64) {
		if fired {
			return
		}
		fired = true
		// The repair snapshot is taken: a client write arrives now.
		if err := src.Write(ctx, "vol", newData, blk*bs); err != nil {
			t.Errorf("quorum write: %v", err)
		}
	}
	r, err := src.Verify(ctx, "vol", "dst", VerifyOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Repaired {
		t.Fatalf("not repaired: %+v", r)
	}
	waitCycle(t, dst, "vol", r.Cycle)
	sv, _ := src.Volume("vol")
	if got := readBlock(t, c.path("dst.img"), blk); !bytes.Equal(got, newData) {
		t.Fatalf("block %d at the mirror rolled back by the repair: version %s at mirror, %s at source (first byte %#x, want %#x)",
			blk, dv.Version(blk), sv.Version(blk), got[0], newData[0])
	}
}
