package replicator

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}

const bs = DefaultBlockSize

// twoNodes starts a primary "src" holding a test image and an empty
// mirror node "dst".
func twoNodes(t *testing.T, blocks int, srcVol func(*VolumeConfig)) (*cluster, *Node, *Node, []byte) {
	t.Helper()
	c := newCluster(t, "src", "dst")
	data := makeImage(t, c.path("src.img"), blocks, bs, 1)
	vc := VolumeConfig{Name: "vol", Path: c.path("src.img"), Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "dst"}}}
	if srcVol != nil {
		srcVol(&vc)
	}
	src := c.start("src", Config{Volumes: []VolumeConfig{vc}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	return c, src, dst, data
}

func TestFullRoundTrip(t *testing.T) {
	c, src, dst, _ := twoNodes(t, 2048, nil)
	ctx := context.Background()
	var last Progress
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull, OnProgress: func(p Progress) { last = p }})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.Cycle != 1 {
		t.Fatalf("push result %+v: want a full copy and cycle 1", res)
	}
	if !last.Finished || last.Done != last.Total {
		t.Fatalf("final progress %+v", last)
	}
	// Zero blocks and the hole are not sent.
	if res.ZeroBlocks == 0 || res.FullDataBlks+res.ZeroBlocks != 2048 {
		t.Fatalf("data %d + zero %d blocks, want 2048 with some zero", res.FullDataBlks, res.ZeroBlocks)
	}
	dv := waitCycle(t, dst, "vol", res.Cycle)
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	sv, _ := src.Volume("vol")
	for b := uint64(0); b < sv.Blocks(); b++ {
		if sv.Version(b) != dv.Version(b) {
			t.Fatalf("block %d: version %s at source, %s at mirror", b, sv.Version(b), dv.Version(b))
		}
	}
	st := dv.Status()
	if st.Inconsistent || st.FullActive || st.Cycle != 1 {
		t.Fatalf("mirror status %+v", st)
	}
	if d := sv.DirtyBlocks("dst"); d != 0 {
		t.Fatalf("%d dirty blocks after a full copy and cycle", d)
	}
	// Reads on the mirror work.
	buf := make([]byte, bs)
	if err := dst.Read(ctx, "vol", buf, 5*bs); err != nil {
		t.Fatal(err)
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	c, src, _, _ := twoNodes(t, 2048, nil)
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sv, _ := src.Volume("vol")
	rng := rand.New(rand.NewPCG(3, 3))
	for round := 0; round < 3; round++ {
		touched := writeRandomBlocks(t, sv, rng, 60)
		res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
		if err != nil {
			t.Fatal(err)
		}
		// A block written several times in the cycle is sent once.
		if res.CycleEntries != uint64(len(touched)) || res.CycleSent != uint64(len(touched)) || res.Full {
			t.Fatalf("round %d: %+v, want %d blocks sent once each and no full copy", round, res, len(touched))
		}
		sameFile(t, c.path("src.img"), c.path("dst.img"))
	}
	// Nothing changed: an empty cycle.
	res, err := src.Push(ctx, "vol", "dst", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.CycleEntries != 0 {
		t.Fatalf("idle cycle shipped %d entries", res.CycleEntries)
	}
}

func TestSelectiveRoundTripAndReadThrough(t *testing.T) {
	c, src, dst, data := twoNodes(t, 2048, nil)
	ctx := context.Background()
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 100, Count: 50}, {Start: 1000, Count: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	if res.FullDataBlks+res.ZeroBlocks != 60 {
		t.Fatalf("selective copy covered %d blocks, want 60", res.FullDataBlks+res.ZeroBlocks)
	}
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); !st.Selective || st.PresentBlocks != 60 {
		t.Fatalf("mirror status %+v", st)
	}
	// A held block reads locally; a missing one is fetched from upstream.
	buf := make([]byte, 3*bs)
	if err := dst.Read(ctx, "vol", buf, 120*bs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[120*bs:123*bs]) {
		t.Fatal("held blocks read wrong")
	}
	if _, err := dv.ReadAt(buf, 500*bs); err == nil {
		t.Fatal("raw read of a missing block succeeded")
	}
	if err := dst.Read(ctx, "vol", buf, 500*bs+100); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[500*bs+100:503*bs+100]) {
		t.Fatal("read-through returned wrong bytes")
	}
	if st := dv.Status(); st.PresentBlocks != 64 {
		t.Fatalf("after read-through %d blocks present, want 64", st.PresentBlocks)
	}
	// A delta cycle updates held blocks and leaves missing ones to
	// read-through.
	sv, _ := src.Volume("vol")
	newData := bytes.Repeat([]byte{0xAB}, bs)
	for _, b := range []int64{101, 700} {
		if _, err := sv.WriteAt(newData, b*bs); err != nil {
			t.Fatal(err)
		}
	}
	r2, err := src.Push(ctx, "vol", "dst", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.CycleSent != 1 {
		t.Fatalf("cycle sent %d blocks, want 1 (block 700 is not held)", r2.CycleSent)
	}
	waitCycle(t, dst, "vol", r2.Cycle)
	for _, b := range []int64{101, 700} {
		if err := dst.Read(ctx, "vol", buf[:bs], b*bs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:bs], newData) {
			t.Fatalf("block %d not updated at the selective mirror", b)
		}
	}
	_ = c
}

func TestVerifyRepairsCorruption(t *testing.T) {
	c, src, dst, _ := twoNodes(t, 4096, nil)
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	r, err := src.Verify(ctx, "vol", "dst", VerifyOptions{})
	if err != nil || len(r.Differ) != 0 {
		t.Fatalf("clean verify: %v differ=%v", err, r.Differ)
	}
	// Flip bits in the mirror's file behind the replicator's back.
	f, err := os.OpenFile(c.path("dst.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	bad := []uint64{7, 10, 2000, 3100, 4095} // 10 is all zero, 3100 in the hole: never written
	for _, b := range bad {
		one := make([]byte, 1)
		off := int64(b)*bs + 77
		f.ReadAt(one, off)
		one[0] ^= 0x10
		f.WriteAt(one, off)
	}
	f.Close()
	r, err = src.Verify(ctx, "vol", "dst", VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Differ) != len(bad) {
		t.Fatalf("verify found %v, want %v", r.Differ, bad)
	}
	for i := range bad {
		if r.Differ[i] != bad[i] {
			t.Fatalf("verify found %v, want %v", r.Differ, bad)
		}
	}
	r, err = src.Verify(ctx, "vol", "dst", VerifyOptions{Repair: true})
	if err != nil || !r.Repaired {
		t.Fatalf("repair: %v %+v", err, r)
	}
	waitCycle(t, dst, "vol", r.Cycle)
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	r, err = src.Verify(ctx, "vol", "dst", VerifyOptions{})
	if err != nil || len(r.Differ) != 0 {
		t.Fatalf("after repair: %v differ=%v", err, r.Differ)
	}
}

// TestFullCopyOverExistingImage: a mirror created over an image file
// that already holds bytes (a reused disk, a block device) must end up
// identical to the source after a full copy.
func TestFullCopyOverExistingImage(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 2048, bs, 1)
	// The mirror's image exists already, full of old bytes.
	if err := os.WriteFile(c.path("dst.img"), bytes.Repeat([]byte{0xAB}, 2048*bs), 0o600); err != nil {
		t.Fatal(err)
	}
	vc := VolumeConfig{Name: "vol", Path: c.path("src.img"), Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "dst"}}}
	src := c.start("src", Config{Volumes: []VolumeConfig{vc}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	res, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	dv := waitCycle(t, dst, "vol", res.Cycle)
	if st := dv.Status(); !st.Complete {
		t.Fatalf("mirror status %+v", st)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// TestResumeFullCopyAsSelective: a full copy is interrupted after a
// checkpoint; the next push asks for a selective copy, which the sender
// resumes from the mirror's FullNext. The mirror was not selective (no
// presence bitmap), so blocks past FullNext outside the extents are never
// sent, yet the mirror ends up consistent, not selective, and serves
// them as whatever its image held (zeros).
func TestResumeFullCopyAsSelective(t *testing.T) {
	c := newCluster(t, "src", "dst")
	data := makeImage(t, c.path("src.img"), 4096, bs, 1) // 16 MiB
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: []PeerConfig{{Name: "dst", Addr: c.addrs["dst"], Schedule: "4MiB"}}})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	interruptFullCopy(t, src, dst)
	res, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 0, Count: 10}}})
	if err != nil {
		t.Logf("selective push over an interrupted full copy refused: %v", err)
		return
	}
	dv := waitCycle(t, dst, "vol", res.Cycle)
	st := dv.Status()
	t.Logf("resumed=%v from %d; mirror: complete=%v selective=%v present=%d", res.Resumed, res.ResumeFrom, st.Complete, st.Selective, st.PresentBlocks)
	buf := make([]byte, bs)
	for _, b := range []uint64{4000, 4090, 3000} {
		err := dst.Read(context.Background(), "vol", buf, int64(b)*bs)
		if err == nil && !bytes.Equal(buf, data[b*bs:(b+1)*bs]) {
			t.Fatalf("block %d read at the mirror (complete=%v selective=%v) differs from the source: never copied", b, st.Complete, st.Selective)
		}
	}
}
