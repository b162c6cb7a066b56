package replicator

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// waitRepairs waits for the node's background read repairs; callers make
// sure no read runs concurrently.
func waitRepairs(n *Node) { n.bg.Wait() }

func repairs(n *Node) float64 {
	return testutil.ToFloat64(n.metrics.readRepairs.WithLabelValues("vol"))
}

// threeCopies starts primary a (mirrors b and c, W=2, R=2) and the two
// mirrors, with a full copy at each.
func threeCopies(t *testing.T, adjust func(*Node)) (*cluster, *Node, map[string]Config) {
	t.Helper()
	c := newCluster(t, "a", "b", "c")
	makeImage(t, c.path("a.img"), 512, bs, 1)
	acfg := Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "b"}, {Peer: "c"}}, WriteQuorum: 2, ReadQuorum: 2}}, Peers: c.peers("b", "c")}
	a := c.startWith("a", acfg, adjust)
	cfgs := map[string]Config{}
	for _, m := range []string{"b", "c"} {
		cfgs[m] = Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path(m + ".img")}}}
		c.start(m, cfgs[m])
		if _, err := a.Push(context.Background(), "vol", m, PushOptions{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
	}
	return c, a, cfgs
}

// missWrites writes blocks (block i filled with fill+i) at a while mirror
// c is down, so only a and b acknowledge, then restarts c before any delta
// cycle: c is stale on those blocks.
func missWrites(t *testing.T, c *cluster, a *Node, cfgs map[string]Config, fill byte, blocks ...uint64) *Node {
	t.Helper()
	c.stop("c")
	for i, b := range blocks {
		if err := a.Write(context.Background(), "vol", bytes.Repeat([]byte{fill + byte(i)}, bs), int64(b)*bs); err != nil {
			t.Fatal(err)
		}
	}
	return c.start("c", cfgs["c"])
}

// TestReadRepairStaleMirror makes mirror c miss writes (it is down while
// W=2 copies acknowledge them), brings it back before any delta cycle, and
// checks that a quorum read gives c the newest version of exactly the
// stale blocks it read, with the bytes and version the primary has.
func TestReadRepairStaleMirror(t *testing.T) {
	cases := []struct {
		name    string
		written []uint64 // blocks written while c is down
		read    [2]uint64
		want    []uint64 // blocks repaired at c
	}{
		{name: "one block", written: []uint64{100}, read: [2]uint64{100, 101}, want: []uint64{100}},
		{name: "part of a run", written: []uint64{100, 102, 300}, read: [2]uint64{99, 104}, want: []uint64{100, 102}},
		{name: "wide read", written: []uint64{10, 290, 500}, read: [2]uint64{0, 512}, want: []uint64{10, 290, 500}},
		{name: "nothing stale", written: []uint64{300}, read: [2]uint64{100, 110}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, a, cfgs := threeCopies(t, nil)
			ctx := context.Background()
			av, _ := a.Volume("vol")
			cn := missWrites(t, c, a, cfgs, 0x40, tc.written...)
			cv, _ := cn.Volume("vol")
			old := map[uint64]Version{}
			for _, b := range tc.written {
				old[b] = cv.Version(b)
				if old[b] == av.Version(b) {
					t.Fatalf("block %d: c is not stale", b)
				}
			}

			lo, hi := tc.read[0], tc.read[1]
			got := make([]byte, (hi-lo)*bs)
			if err := a.Read(ctx, "vol", got, int64(lo)*bs); err != nil {
				t.Fatal(err)
			}
			if want := readBlocksOf(t, c.path("a.img"), lo, hi); !bytes.Equal(got, want) {
				t.Fatal("quorum read returned other bytes than the primary holds")
			}
			waitRepairs(a)

			repaired := map[uint64]bool{}
			for _, b := range tc.want {
				repaired[b] = true
			}
			for _, b := range tc.written {
				switch {
				case repaired[b] && (cv.Version(b) != av.Version(b) || !bytes.Equal(readBlock(t, c.path("c.img"), b), readBlock(t, c.path("a.img"), b))):
					t.Fatalf("block %d: c has version %s, primary %s: not repaired", b, cv.Version(b), av.Version(b))
				case !repaired[b] && cv.Version(b) != old[b]:
					t.Fatalf("block %d outside the read changed at c", b)
				}
			}
			if n := repairs(a); n != float64(len(tc.want)) {
				t.Fatalf("read_repairs_total = %v, want %d", n, len(tc.want))
			}
			// A second read finds nothing to repair.
			if err := a.Read(ctx, "vol", got, int64(lo)*bs); err != nil {
				t.Fatal(err)
			}
			waitRepairs(a)
			if n := repairs(a); n != float64(len(tc.want)) {
				t.Fatalf("read_repairs_total = %v after a second read, want %d", n, len(tc.want))
			}
		})
	}
}

// readBlocksOf reads blocks [lo, hi) of an image file directly.
func readBlocksOf(t testing.TB, path string, lo, hi uint64) []byte {
	t.Helper()
	var out []byte
	for b := lo; b < hi; b++ {
		out = append(out, readBlock(t, path, b)...)
	}
	return out
}

// TestReadRepairLosesToNewerWrite holds a read repair back until a newer
// write has reached the stale mirror: the repair, carrying the older
// version, must not undo it.
func TestReadRepairLosesToNewerWrite(t *testing.T) {
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	c, a, cfgs := threeCopies(t, func(n *Node) {
		n.hooks.repair = func(_, peer string) {
			if peer != "c" {
				return
			}
			held <- struct{}{}
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
	})
	ctx := context.Background()
	first := bytes.Repeat([]byte{1}, bs)
	cn := missWrites(t, c, a, cfgs, 1, 7)
	got := make([]byte, bs)
	if err := a.Read(ctx, "vol", got, 7*bs); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("quorum read: %v", err)
	}
	select { // the repair of c carries first's version and waits
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the quorum read started no repair of c")
	}
	second := bytes.Repeat([]byte{2}, bs)
	if err := a.Write(ctx, "vol", second, 7*bs); err != nil {
		t.Fatal(err)
	}
	av, _ := a.Volume("vol")
	cv, _ := cn.Volume("vol")
	newest := av.Version(7)
	deadline := time.Now().Add(5 * time.Second)
	for cv.Version(7) != newest { // W=2: b may have acknowledged before c
		if time.Now().After(deadline) {
			t.Fatalf("c did not receive the second write: %s, want %s", cv.Version(7), newest)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	waitRepairs(a)
	if cv.Version(7) != newest || !bytes.Equal(readBlock(t, c.path("c.img"), 7), second) {
		t.Fatalf("the repair overwrote a newer write: c has %s", cv.Version(7))
	}
}

// TestReadRepairLocalCopy reads at a mirror that missed a write its own
// downstream copy has: the read returns the newer data and the local copy
// is repaired through the apply path, version included.
func TestReadRepairLocalCopy(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	makeImage(t, c.path("a.img"), 256, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "b"}, {Peer: "c"}}, WriteQuorum: 2}}, Peers: c.peers("b", "c")})
	bcfg := Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img"), Mirrors: []MirrorConfig{{Peer: "c"}}, ReadQuorum: 2}},
		Peers: c.peers("c")}
	c.start("b", bcfg)
	c.start("c", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("c.img")}}})
	ctx := context.Background()
	for _, m := range []string{"b", "c"} {
		if _, err := a.Push(ctx, "vol", m, PushOptions{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
	}
	c.stop("b")
	data := bytes.Repeat([]byte{0x77}, bs)
	if err := a.Write(ctx, "vol", data, 50*bs); err != nil { // a and c
		t.Fatal(err)
	}
	b := c.start("b", bcfg)
	got := make([]byte, bs)
	if err := b.Read(ctx, "vol", got, 50*bs); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("quorum read at the stale copy: %v", err)
	}
	waitRepairs(b)
	av, _ := a.Volume("vol")
	bv, _ := b.Volume("vol")
	if bv.Version(50) != av.Version(50) || !bytes.Equal(readBlock(t, c.path("b.img"), 50), data) {
		t.Fatalf("local copy not repaired: version %s, primary %s", bv.Version(50), av.Version(50))
	}
	if n := repairs(b); n != 1 {
		t.Fatalf("read_repairs_total = %v, want 1", n)
	}
}

// TestReadRepairSelective checks that a quorum read repairs the blocks a
// selective mirror holds and neither repairs nor adds the others: with
// protocol 2 the mirror answers them as absent instead of fetching them
// from its upstream. A protocol 1 mirror still reads them through itself
// (its old behaviour) and its held blocks are repaired all the same.
func TestReadRepairSelective(t *testing.T) {
	cases := []struct {
		name     string
		proto    uint16
		wantHeld uint64 // blocks the mirror holds after the read
	}{
		{name: "protocol 2", proto: wire.MaxProto, wantHeld: 50},
		{name: "protocol 1", proto: 1, wantHeld: 60}, // read-through of 150..159
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "a", "s")
			makeImage(t, c.path("a.img"), 512, bs, 1)
			a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
				Mirrors: []MirrorConfig{{Peer: "s"}}, ReadQuorum: 2}}, Peers: c.peers("s")})
			// With an upstream, s could fetch what it lacks: the test shows
			// the quorum read does not make it.
			s := c.startWith("s", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("s.img"), Upstream: "a"}}, Peers: c.peers("a")},
				func(n *Node) { n.protoMax = tc.proto })
			ctx := context.Background()
			res, err := a.Push(ctx, "vol", "s", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 100, Count: 50}}})
			if err != nil {
				t.Fatal(err)
			}
			sv := waitCycle(t, s, "vol", res.Cycle)
			// W=1: the writes stay at a until a delta cycle, so s is stale
			// on the held block 145; block 155 it does not hold.
			for _, b := range []int64{145, 155} {
				if err := a.Write(ctx, "vol", bytes.Repeat([]byte{0xEE}, bs), b*bs); err != nil {
					t.Fatal(err)
				}
			}
			got := make([]byte, 20*bs)
			if err := a.Read(ctx, "vol", got, 140*bs); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, readBlocksOf(t, c.path("a.img"), 140, 160)) {
				t.Fatal("quorum read returned other bytes than the primary holds")
			}
			waitRepairs(a)
			av, _ := a.Volume("vol")
			if sv.Version(145) != av.Version(145) || !bytes.Equal(readBlock(t, c.path("s.img"), 145), readBlock(t, c.path("a.img"), 145)) {
				t.Fatalf("held block 145 not repaired: %s at s, %s at a", sv.Version(145), av.Version(145))
			}
			if got := sv.Status().PresentBlocks; got != tc.wantHeld {
				t.Fatalf("s holds %d blocks after the read, want %d", got, tc.wantHeld)
			}
			if tc.proto >= 2 && len(sv.missing(155, 156)) != 1 {
				t.Fatal("the read or its repair gave s block 155, which it did not hold")
			}
			if n := repairs(a); n != 1 {
				t.Fatalf("read_repairs_total = %v, want 1 (block 145)", n)
			}
		})
	}
}

// TestCloseWaitsForReadRepairs closes a node while one of its read
// repairs is held: Close must not return before the repair goroutine has
// ended (it cancels it and waits).
func TestCloseWaitsForReadRepairs(t *testing.T) {
	release := make(chan struct{})
	c, a, cfgs := threeCopies(t, func(n *Node) {
		n.hooks.repair = func(string, string) { <-release }
	})
	ctx := context.Background()
	missWrites(t, c, a, cfgs, 3, 9)
	if err := a.Read(ctx, "vol", make([]byte, bs), 9*bs); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		c.stop("a")
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.bgMu.Lock()
		stopping := a.bgClosed
		a.bgMu.Unlock()
		if stopping {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Close did not start")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a read repair was still running")
	default:
	}
	close(release)
	<-closed
}

// TestReadRepairLeavesOlderEpochToCycles: a mirror refuses sync-written
// versions older than its epoch (fencing), so after a promotion a block
// last written under the old epoch is not read-repaired (no refused
// session, nothing fenced); the next delta cycle brings it.
func TestReadRepairLeavesOlderEpochToCycles(t *testing.T) {
	c, a, cfgs := threeCopies(t, nil)
	ctx := context.Background()
	data := bytes.Repeat([]byte{0x21}, bs)
	cn := missWrites(t, c, a, cfgs, 0x21, 20)
	if _, err := a.Promote("vol", 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, bs)
	if err := a.Read(ctx, "vol", got, 20*bs); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("quorum read: %v", err)
	}
	waitRepairs(a)
	av, _ := a.Volume("vol")
	cv, _ := cn.Volume("vol")
	if cv.Version(20) == av.Version(20) {
		t.Fatal("block 20 from the old epoch was read-repaired")
	}
	if n := repairs(a); n != 0 {
		t.Fatalf("read_repairs_total = %v, want 0", n)
	}
	if f := testutil.ToFloat64(cn.metrics.fenced.WithLabelValues("vol")); f != 0 {
		t.Fatalf("c refused %v writes as fenced", f)
	}
	if _, err := a.Push(ctx, "vol", "c", PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if cv.Version(20) != av.Version(20) || !bytes.Equal(readBlock(t, c.path("c.img"), 20), data) {
		t.Fatalf("delta cycle did not bring block 20: %s at c, %s at a", cv.Version(20), av.Version(20))
	}
}

// TestReadThroughRacingCycle: a selective mirror fetches block b from its
// upstream (version V1); before the fetched data is stored, the source
// writes b (V2) and a delta cycle commits at the mirror, which skips b
// because it is not held yet. The read-through then stores V1 and marks
// b held: the mirror keeps serving V1 although it committed a cycle that
// carried V2, and no later cycle sends b again.
func TestReadThroughRacingCycle(t *testing.T) {
	_, src, dst, _ := twoNodes(t, 2048, nil)
	ctx := context.Background()
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 100, Count: 50}}})
	if err != nil {
		t.Fatal(err)
	}
	dv := waitCycle(t, dst, "vol", res.Cycle)
	const blk = 500
	if len(dv.missing(blk, blk+1)) != 1 {
		t.Fatal("block should not be held yet")
	}

	// The copy's session ends after its closing apply has flushed.
	nv, _ := dst.nodeVolume("vol")
	for len(nv.sess) > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	// Hold the mirror's image lock: the read-through below fetches, then
	// waits to store (as a descheduled reader would).
	dv.io.Lock()
	readDone := make(chan error, 1)
	go func() {
		buf := make([]byte, bs)
		readDone <- dst.Read(ctx, "vol", buf, blk*bs)
	}()
	// Wait until the fetch has been answered by the source.
	time.Sleep(300 * time.Millisecond)

	newData := bytes.Repeat([]byte{0x3C}, bs)
	sv, _ := src.Volume("vol")
	if _, err := sv.WriteAt(newData, blk*bs); err != nil {
		t.Fatal(err)
	}
	// The cycle's apply waits for the lock. Push in the background, so
	// the test holds whenever the mirror acknowledges (now at its durable
	// commit, before the apply), and release the lock once the cycle's
	// manifest has recorded the version it announced for blk: the store
	// then follows it.
	type pushed struct {
		res PushResult
		err error
	}
	pushDone := make(chan pushed, 1)
	go func() {
		res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
		pushDone <- pushed{res, err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for dv.Version(blk) != sv.Version(blk) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	dv.io.Unlock()
	p := <-pushDone
	if p.err != nil {
		t.Fatal(p.err)
	}
	res = p.res
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)

	// The mirror has committed the cycle that carried newData for blk.
	got := make([]byte, bs)
	if err := dst.Read(ctx, "vol", got, blk*bs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, newData) {
		t.Fatalf("mirror at cycle %d serves block %d at version %s, source has %s: stale read-through data kept",
			dv.Status().Cycle, blk, dv.Version(blk), sv.Version(blk))
	}
	// And it stays so: another cycle does not bring it.
	if res, err = src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
}

// TestQuorumWriteFencedDespiteQuorum: a primary whose sync write one
// mirror refuses as fenced (that mirror was promoted to a newer epoch)
// has been deposed, even when the other mirrors still acknowledge enough
// copies for the write quorum. It must stop taking writes (ErrFenced),
// not keep acknowledging writes that the new primary's epoch will
// overrule.
func TestQuorumWriteFencedDespiteQuorum(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	makeImage(t, c.path("a.img"), 256, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "b"}, {Peer: "c"}}, WriteQuorum: 2}}, Peers: c.peers("b", "c")})
	b := c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img")}}})
	c.start("c", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("c.img")}}})
	ctx := context.Background()
	for _, p := range []string{"b", "c"} {
		if _, err := a.Push(ctx, "vol", p, PushOptions{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Write(ctx, "vol", bytes.Repeat([]byte{1}, bs), 3*bs); err != nil {
		t.Fatal(err)
	}
	// b is promoted: a is deposed.
	if e, err := b.Promote("vol", 0); err != nil || e != 2 {
		t.Fatalf("promote: %d %v", e, err)
	}
	err := a.Write(ctx, "vol", bytes.Repeat([]byte{2}, bs), 4*bs)
	av, _ := a.Volume("vol")
	if !errors.Is(err, ErrFenced) {
		t.Errorf("write at a deposed primary (b refused it as fenced, c acknowledged): %v, want ErrFenced", err)
	}
	if !av.Status().Fenced {
		t.Errorf("the deposed primary is not fenced after a mirror refused its write for its epoch")
	}
	if err := a.Write(ctx, "vol", bytes.Repeat([]byte{3}, bs), 5*bs); !errors.Is(err, ErrFenced) {
		t.Fatalf("second write at the deposed primary: %v, want ErrFenced", err)
	}
}

// TestReadRepairHonoursFencing: read repairs are writes to other copies,
// so they follow the fencing rules of Node.Write. A copy that is fenced
// (deposed) sends none, and a repair a mirror refuses as fenced (it has
// seen a newer epoch) deposes the reader, as a refused sync write does.
func TestReadRepairHonoursFencing(t *testing.T) {
	cases := []struct {
		name string
		// depose makes the primary a deposed, or makes c refuse it.
		depose func(t *testing.T, a, b, c *Node)
	}{
		{name: "reader already fenced", depose: func(t *testing.T, a, b, _ *Node) {
			if _, err := b.Promote("vol", 0); err != nil {
				t.Fatal(err)
			}
			// b refuses the write: a is fenced (c, unaware, takes it).
			if err := a.Write(context.Background(), "vol", bytes.Repeat([]byte{9}, bs), 90*bs); !errors.Is(err, ErrFenced) {
				t.Fatalf("write at the deposed primary: %v, want ErrFenced", err)
			}
		}},
		{name: "mirror refuses as fenced", depose: func(t *testing.T, _, _, c *Node) {
			if _, err := c.Promote("vol", 0); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl, a, cfgs := threeCopies(t, nil)
			ctx := context.Background()
			const blk = 40
			// Promoted, c serves only its peers (a primary's rule).
			cc := cfgs["c"]
			cc.Peers = cl.peers("a")
			cfgs["c"] = cc
			cn := missWrites(t, cl, a, cfgs, 0x51, blk)
			cv, _ := cn.Volume("vol")
			before := cv.Version(blk)
			tc.depose(t, a, cl.nodes["b"], cn)
			fenced := testutil.ToFloat64(a.metrics.fenced.WithLabelValues("vol"))

			got := make([]byte, bs)
			if err := a.Read(ctx, "vol", got, blk*bs); err != nil {
				t.Fatal(err)
			}
			waitRepairs(a)
			if v := cv.Version(blk); v != before {
				t.Errorf("c's block %d went from %s to %s: repaired by a deposed primary", blk, before, v)
			}
			if n := repairs(a); n != 0 {
				t.Errorf("read_repairs_total = %v, want 0", n)
			}
			av, _ := a.Volume("vol")
			if !av.Status().Fenced {
				t.Errorf("the primary is not fenced after a mirror refused its repair for its epoch")
			}
			if f := testutil.ToFloat64(a.metrics.fenced.WithLabelValues("vol")); tc.name == "mirror refuses as fenced" && f != fenced+1 {
				t.Errorf("replicator_fenced_total at a = %v, want %v", f, fenced+1)
			}
			if err := a.Write(ctx, "vol", bytes.Repeat([]byte{7}, bs), 41*bs); !errors.Is(err, ErrFenced) {
				t.Errorf("write after the read: %v, want ErrFenced", err)
			}
		})
	}
}
