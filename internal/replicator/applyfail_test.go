package replicator

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// applyFailCluster starts a primary "src" and a mirror "dst" of 1024
// blocks, adjusts dst before it serves, and runs the first full copy
// through: its closing cycle applied and the session ended (the apply
// follows the acknowledgement, and a test arming a failure before it
// would fail that apply instead of the one it pushes).
func applyFailCluster(t *testing.T, adjust func(*Node)) (c *cluster, src, dst *Node) {
	t.Helper()
	c = newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	src = c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	dst = c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}},
		Registerer: prometheus.NewRegistry()}, adjust)
	res, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	sessionsEnded(t, dst)
	return c, src, dst
}

// ioFailCluster is applyFailCluster whose mirror fails the next fail
// applies with an injected I/O error (none until the test stores a count).
func ioFailCluster(t *testing.T) (c *cluster, src, dst *Node, fail *atomic.Int32) {
	t.Helper()
	fail = new(atomic.Int32)
	c, src, dst = applyFailCluster(t, func(n *Node) {
		n.hooks.applying = failApplies(fail)
	})
	return c, src, dst, fail
}

// failApplies is an applying hook failing with an I/O error while fail
// is positive (each apply takes one).
func failApplies(fail *atomic.Int32) func(string, uint64) error {
	return func(string, uint64) error {
		if fail.Add(-1) >= 0 {
			return errors.New("injected I/O error")
		}
		return nil
	}
}

// caughtUp waits for the mirror to apply cycle and end its session, then
// checks it equals the source and reports a complete copy (after what).
func caughtUp(t *testing.T, c *cluster, dst *Node, cycle uint64, after string) {
	t.Helper()
	waitCycle(t, dst, "vol", cycle)
	sessionsEnded(t, dst)
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); !st.Complete {
		t.Errorf("mirror not complete after %s: %+v", after, st)
	}
}

// sessionsEnded waits until no changing session runs on the mirror's
// volume: the one that acknowledged a cycle has then applied it, or
// failed to.
func sessionsEnded(t *testing.T, n *Node) {
	t.Helper()
	nv, err := n.nodeVolume("vol")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(nv.sess) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the mirror's session did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// refusesReads fails unless the mirror refuses reads as inconsistent.
func refusesReads(t *testing.T, n *Node, v *Volume) {
	t.Helper()
	buf := make([]byte, bs)
	if _, err := v.ReadAt(buf, 0); !errors.Is(err, ErrInconsistent) {
		t.Errorf("mirror read after a failed apply: %v, want ErrInconsistent", err)
	}
	if err := n.Read(context.Background(), "vol", buf, 0); !errors.Is(err, ErrInconsistent) {
		t.Errorf("node read after a failed apply: %v, want ErrInconsistent", err)
	}
}

// committedInJournal returns the committed cycle the mirror's journal
// file holds, 0 if none.
func committedInJournal(t *testing.T, c *cluster) uint64 {
	t.Helper()
	j, err := openJournal(journalPath(c.path("dst.img") + ".pmr"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.cur == nil || !j.cur.committed {
		return 0
	}
	return j.cur.cycle
}

// TestCycleApplyFailureRecovers: a mirror commits and acknowledges a
// delta cycle whose staged data then fails to apply (here a journal block
// damaged on disk after its commit was synced). The source retired the
// cycle's blocks on the acknowledgement, so the mirror has lost them: it
// must stop reporting a complete copy and refuse reads, and, without a
// restart, ask for a full copy, after which it equals the source.
func TestCycleApplyFailureRecovers(t *testing.T) {
	var damage atomic.Bool
	var jpath string
	c, src, dst := applyFailCluster(t, func(n *Node) {
		n.hooks.durable = damageJournalOnce(t, &damage, &jpath)
	})
	jpath = journalPath(c.path("dst.img") + ".pmr")
	ctx := context.Background()
	sv, _ := src.Volume("vol")
	rng := rand.New(rand.NewPCG(5, 5))
	writeRandomBlocks(t, sv, rng, 40)
	pushLosingCycle(t, ctx, src, dst, &damage)
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); st.Complete || !st.Inconsistent || !st.FullActive || st.FullNext != 0 {
		t.Errorf("mirror after losing an acknowledged cycle: %+v, want inconsistent with a full copy from block 0 to run", st)
	}
	refusesReads(t, dst, dv)
	if n := testutil.ToFloat64(dst.metrics.applyFailures.WithLabelValues("vol")); n != 1 {
		t.Errorf("replicator_cycle_apply_failures_total = %v, want 1", n)
	}
	if cy := committedInJournal(t, c); cy != 0 {
		t.Errorf("the damaged cycle %d is still in the journal", cy)
	}

	// The same node takes the next push, a full copy, and catches up.
	writeRandomBlocks(t, sv, rng, 10)
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatalf("push after the lost cycle: %v", err)
	}
	if !res.Full {
		t.Error("the push after the lost cycle ran no full copy")
	}
	caughtUp(t, c, dst, res.Cycle, "the full copy and its cycle")
}

// TestCycleApplyIOErrorRetried: a cycle the mirror acknowledged fails to
// apply with an I/O error. It stays committed in the journal, the mirror
// refuses reads, and the next session applies it before its Welcome: the
// source numbers its next cycle after it, and the mirror, without a
// restart, ends equal to the source (nothing of the failed cycle lost).
func TestCycleApplyIOErrorRetried(t *testing.T) {
	c, src, dst, fail := ioFailCluster(t)
	ctx := context.Background()
	sv, _ := src.Volume("vol")
	dv, _ := dst.Volume("vol")
	rng := rand.New(rand.NewPCG(6, 6))
	before := dv.Status().Cycle
	writeRandomBlocks(t, sv, rng, 40)
	fail.Store(1)
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatal(err)
	}
	failed := res.Cycle
	sessionsEnded(t, dst)
	if st := dv.Status(); st.Complete || !st.Inconsistent || st.Cycle != before {
		t.Errorf("mirror after a failed apply: %+v, want inconsistent at cycle %d", st, before)
	}
	refusesReads(t, dst, dv)
	if cy := committedInJournal(t, c); cy != failed {
		t.Errorf("journal holds committed cycle %d, want %d", cy, failed)
	}
	if n := testutil.ToFloat64(dst.metrics.applyFailures.WithLabelValues("vol")); n != 1 {
		t.Errorf("replicator_cycle_apply_failures_total = %v, want 1", n)
	}

	writeRandomBlocks(t, sv, rng, 10)
	res, err = src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatalf("push after the failed apply: %v", err)
	}
	if res.Full || res.Cycle != failed+1 {
		t.Errorf("push after the failed apply: cycle %d (full copy %v), want cycle %d", res.Cycle, res.Full, failed+1)
	}
	caughtUp(t, c, dst, res.Cycle, "the retry and the next cycle")
	buf := make([]byte, bs)
	if _, err := dv.ReadAt(buf, 0); err != nil {
		t.Errorf("mirror read after the retry: %v", err)
	}
}

// TestCycleApplyRetryFailsRefusesSession: when the retry of a failed
// apply fails again, the session is refused (the source's cycle fails),
// and the committed cycle stays in the journal: no new cycle replaces it.
// Once the disk recovers, the next session applies it.
func TestCycleApplyRetryFailsRefusesSession(t *testing.T) {
	c, src, dst, fail := ioFailCluster(t)
	ctx := context.Background()
	sv, _ := src.Volume("vol")
	dv, _ := dst.Volume("vol")
	rng := rand.New(rand.NewPCG(7, 7))
	writeRandomBlocks(t, sv, rng, 40)
	fail.Store(2)
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatal(err)
	}
	failed := res.Cycle
	sessionsEnded(t, dst)

	writeRandomBlocks(t, sv, rng, 10)
	dirty := sv.DirtyBlocks("dst")
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("push while the retry fails: %v, want ErrInconsistent", err)
	}
	sessionsEnded(t, dst)
	if cy := committedInJournal(t, c); cy != failed {
		t.Errorf("journal holds committed cycle %d, want %d", cy, failed)
	}
	if st := dv.Status(); st.Complete || st.Cycle != failed-1 {
		t.Errorf("mirror after a failed retry: %+v, want inconsistent at cycle %d", st, failed-1)
	}
	refusesReads(t, dst, dv)
	if d := sv.DirtyBlocks("dst"); d != dirty {
		t.Errorf("source has %d blocks dirty for the mirror after the refused push, had %d", d, dirty)
	}
	if n := testutil.ToFloat64(dst.metrics.applyFailures.WithLabelValues("vol")); n != 2 {
		t.Errorf("replicator_cycle_apply_failures_total = %v, want 2", n)
	}

	res, err = src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatalf("push once the disk recovered: %v", err)
	}
	if res.Cycle != failed+1 {
		t.Errorf("push once the disk recovered: cycle %d, want %d", res.Cycle, failed+1)
	}
	caughtUp(t, c, dst, res.Cycle, "the retry applied")
}

// TestCycleApplyFailureRefusesPeerReads: a mirror whose acknowledged
// cycle failed to apply refuses reads, those of peers too (quorum reads,
// read-throughs): its image may hold part of the cycle under the previous
// versions. Before, serveReads answered them, so a quorum read counted it.
func TestCycleApplyFailureRefusesPeerReads(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		ReadQuorum: 2, Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	var fail atomic.Int32
	dst := c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}},
		Registerer: prometheus.NewRegistry()}, func(n *Node) {
		n.hooks.applying = failApplies(&fail)
	})
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, bs)
	if err := src.Read(ctx, "vol", buf, 0); err != nil {
		t.Fatalf("quorum read before the failure: %v", err)
	}
	sv, _ := src.Volume("vol")
	writeRandomBlocks(t, sv, rand.New(rand.NewPCG(8, 8)), 40)
	fail.Store(1)
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
		t.Fatal(err)
	}
	sessionsEnded(t, dst)
	if err := src.Read(ctx, "vol", buf, 0); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("quorum read while the mirror's cycle is unapplied: %v, want ErrNoQuorum", err)
	}
}

// TestCycleApplyPartialRefusesReadsAtOnce: an apply that fails after
// writing part of the cycle to the image must refuse reads from the
// moment it releases the image, not once the failure is handled: a
// reader in between saw a mix of the two cycles.
func TestCycleApplyPartialRefusesReadsAtOnce(t *testing.T) {
	var swap atomic.Bool
	var dv *Volume
	var saved *os.File
	var readErr error
	var checked atomic.Bool
	c, src, dst := applyFailCluster(t, func(n *Node) {
		n.hooks.applying = func(string, uint64) error {
			if !swap.Load() {
				return nil
			}
			// The image writes of this apply fail (a read-only
			// descriptor), as an I/O error part-way would.
			ro, err := os.Open(dv.path)
			if err != nil {
				return err
			}
			dv.io.Lock()
			saved, dv.f = dv.f, ro
			dv.io.Unlock()
			return nil
		}
		n.hooks.applyFailed = func(string, uint64) {
			if !swap.CompareAndSwap(true, false) {
				return
			}
			_, readErr = dv.ReadAt(make([]byte, bs), 0)
			checked.Store(true)
			dv.io.Lock()
			ro := dv.f
			dv.f = saved
			dv.io.Unlock()
			ro.Close()
		}
	})
	_ = c
	dv, _ = dst.Volume("vol")
	sv, _ := src.Volume("vol")
	writeRandomBlocks(t, sv, rand.New(rand.NewPCG(9, 9)), 40)
	swap.Store(true)
	if _, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
		t.Fatal(err)
	}
	sessionsEnded(t, dst)
	if !checked.Load() {
		t.Fatal("the apply did not fail")
	}
	if !errors.Is(readErr, ErrInconsistent) {
		t.Errorf("read between the failed apply and its handling: %v, want ErrInconsistent", readErr)
	}
	refusesReads(t, dst, dv)
}

// TestQuorumReadSkipsUnservableCopies: a copy whose acknowledged cycle
// failed to apply, or whose copy is incomplete (here marked for a full
// copy, as damage does), neither counts toward nor answers a quorum read,
// whether this node reads it (Node.Read's own copy, which before was read
// without looking at either mark) or a peer does (serveReads, which before
// looked at the failed apply only). The mirror dst reads with R = 2 from
// itself and src; src reads with R = 2 from itself and dst.
func TestQuorumReadSkipsUnservableCopies(t *testing.T) {
	for _, tc := range []struct {
		name string
		mark func(t *testing.T, src, dst *Node, dv *Volume, fail *atomic.Int32)
	}{
		{"failed apply", func(t *testing.T, src, dst *Node, dv *Volume, fail *atomic.Int32) {
			sv, _ := src.Volume("vol")
			writeRandomBlocks(t, sv, rand.New(rand.NewPCG(10, 10)), 40)
			fail.Store(1)
			if _, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
				t.Fatal(err)
			}
			sessionsEnded(t, dst)
			if dv.unappliedCycle() == 0 {
				t.Fatal("the cycle's apply did not fail")
			}
		}},
		{"incomplete copy", func(t *testing.T, _, _ *Node, dv *Volume, _ *atomic.Int32) {
			if err := dv.needFullCopy(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "src", "dst")
			makeImage(t, c.path("src.img"), 1024, bs, 1)
			src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
				ReadQuorum: 2, Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
			var fail atomic.Int32
			dst := c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"),
				ReadQuorum: 2, Mirrors: []MirrorConfig{{Peer: "src"}}}}, Peers: c.peers("src"),
				Registerer: prometheus.NewRegistry()}, func(n *Node) {
				n.hooks.applying = failApplies(&fail)
			})
			ctx := context.Background()
			res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull})
			if err != nil {
				t.Fatal(err)
			}
			waitCycle(t, dst, "vol", res.Cycle)
			buf := make([]byte, 4*bs)
			for name, n := range map[string]*Node{"src": src, "dst": dst} {
				if err := n.Read(ctx, "vol", buf, 2*bs); err != nil {
					t.Fatalf("%s: quorum read before the mark: %v", name, err)
				}
			}
			dv, _ := dst.Volume("vol")
			tc.mark(t, src, dst, dv, &fail)
			for name, n := range map[string]*Node{"src": src, "dst": dst} {
				err := n.Read(ctx, "vol", buf, 2*bs)
				if !errors.Is(err, ErrNoQuorum) {
					t.Errorf("%s: quorum read with dst's copy marked: %v, want ErrNoQuorum", name, err)
				}
			}
		})
	}
}

// TestPromoteDuringFailingApply: a mirror is promoted while a cycle it
// acknowledged is applying, and the apply then fails with an I/O error.
// The new primary must serve reads without a restart, holding the
// acknowledged cycle. Before, the promotion went through at once and the
// failed cycle, which only a mirror's next session applies again, left
// the primary refusing reads until a restart.
func TestPromoteDuringFailingApply(t *testing.T) {
	var dst *Node
	var armed atomic.Bool
	promoted := make(chan error, 1)
	c, src, dst := applyFailCluster(t, func(n *Node) {
		n.hooks.applying = func(string, uint64) error {
			if !armed.CompareAndSwap(true, false) {
				return nil
			}
			go func() {
				_, err := dst.Promote("vol", 0)
				promoted <- err
			}()
			// Give the promotion time to complete before the apply fails,
			// as it did when it did not wait for the apply.
			v, _ := n.Volume("vol")
			for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline) && v.Role() != RolePrimary; {
				time.Sleep(5 * time.Millisecond)
			}
			return errors.New("injected I/O error")
		}
	})
	sv, _ := src.Volume("vol")
	writeRandomBlocks(t, sv, rand.New(rand.NewPCG(11, 11)), 40)
	armed.Store(true)
	// The commit is acknowledged before the apply; the session may end
	// with the promotion's cut or the failure, which the push may report.
	src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeDelta})
	select {
	case err := <-promoted:
		if err != nil {
			t.Fatalf("promote: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the promotion did not return")
	}
	sessionsEnded(t, dst)
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); st.Role != RolePrimary || !st.Complete {
		t.Errorf("promoted copy: %+v, want a complete primary", st)
	}
	buf := make([]byte, bs)
	if _, err := dv.ReadAt(buf, 0); err != nil {
		t.Errorf("read of the promoted copy: %v", err)
	}
	if err := dst.Read(context.Background(), "vol", buf, 0); err != nil {
		t.Errorf("node read of the promoted copy: %v", err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// TestSelectiveApplyDamageForgetsHeldBlocks: a selective mirror loses an
// acknowledged cycle (its staged data damaged) and is marked for a copy
// from block 0. The blocks it holds may predate the lost cycle, which the
// source will not send again, so until they are copied again they must
// not be served: a raw read refuses them, and Node.Read fetches them from
// upstream. Before, the mirror kept serving its held blocks, here the one
// the lost cycle rewrote, with the bytes from before that cycle.
func TestSelectiveApplyDamageForgetsHeldBlocks(t *testing.T) {
	var damage atomic.Bool
	var jpath string
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	dst := c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}},
		Peers: c.peers("src"), Registerer: prometheus.NewRegistry()}, func(n *Node) {
		n.hooks.durable = damageJournalOnce(t, &damage, &jpath)
	})
	jpath = journalPath(c.path("dst.img") + ".pmr")
	ctx := context.Background()
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 100, Count: 50}}})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	sv, _ := src.Volume("vol")
	const b = 120
	fresh := bytes.Repeat([]byte{0xAB}, bs)
	if _, err := sv.WriteAt(fresh, b*bs); err != nil {
		t.Fatal(err)
	}
	pushLosingCycle(t, ctx, src, dst, &damage)
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); !st.Selective || !st.FullActive || st.FullNext != 0 {
		t.Fatalf("mirror after losing an acknowledged cycle: %+v, want a selective copy to run from block 0", st)
	}
	buf := make([]byte, bs)
	for _, blk := range []int64{b, b + 1} {
		if _, err := dv.ReadAt(buf, blk*bs); !errors.Is(err, ErrInconsistent) {
			t.Errorf("raw read of held block %d after the loss: %v, want ErrInconsistent", blk, err)
		}
	}
	if err := dst.Read(ctx, "vol", buf, b*bs); err != nil {
		t.Fatalf("read of block %d after the loss: %v", b, err)
	}
	if !bytes.Equal(buf, fresh) {
		t.Errorf("block %d after the loss reads as other bytes than the source's", b)
	}

	// The next push copies again from block 0 and the mirror serves.
	res, err = src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta, Extents: []Extent{{Start: 100, Count: 50}}})
	if err != nil {
		t.Fatalf("push after the lost cycle: %v", err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	if _, err := dv.ReadAt(buf, (b+1)*bs); err != nil {
		t.Errorf("raw read of block %d once copied again: %v (copy %+v)", b+1, err, dv.Status())
	}
}

// TestQuorumReadWithoutThisCopy: when this copy may not answer (here
// marked for a full copy), a quorum read is answered by the mirrors
// alone: it succeeds with R of them, and a block that every answering
// mirror lacks (selective ones) fails it rather than reading as zeros.
// dst reads with R = 2 from itself, a full mirror f and selective
// mirrors s1 and s2 holding blocks 0..9.
func TestQuorumReadWithoutThisCopy(t *testing.T) {
	c := newCluster(t, "src", "dst", "f", "s1", "s2")
	data := makeImage(t, c.path("src.img"), 256, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: c.peers("dst", "f", "s1", "s2")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), ReadQuorum: 2,
		Mirrors: []MirrorConfig{{Peer: "f"}, {Peer: "s1"}, {Peer: "s2"}}}}, Peers: c.peers("f", "s1", "s2")})
	for _, n := range []string{"f", "s1", "s2"} {
		c.start(n, Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path(n + ".img")}}})
	}
	ctx := context.Background()
	for _, n := range []string{"dst", "f", "s1", "s2"} {
		o := PushOptions{Mode: ModeFull}
		if n[0] == 's' {
			o = PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 0, Count: 10}}}
		}
		res, err := src.Push(ctx, "vol", n, o)
		if err != nil {
			t.Fatal(err)
		}
		waitCycle(t, c.nodes[n], "vol", res.Cycle)
	}
	dv, _ := dst.Volume("vol")
	if err := dv.needFullCopy(); err != nil {
		t.Fatal(err)
	}
	read := func(blk int64) error {
		buf := make([]byte, bs)
		err := dst.Read(ctx, "vol", buf, blk*bs)
		if err == nil && !bytes.Equal(buf, data[blk*bs:(blk+1)*bs]) {
			t.Errorf("block %d read as other bytes than the source's", blk)
		}
		return err
	}
	for _, blk := range []int64{5, 100} {
		if err := read(blk); err != nil {
			t.Errorf("block %d with three mirrors answering: %v", blk, err)
		}
	}
	c.stop("f")
	if err := read(5); err != nil {
		t.Errorf("block 5, held by both selective mirrors: %v", err)
	}
	if err := read(100); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("block 100, held by no answering copy: %v, want ErrNoQuorum", err)
	}
}

// TestPromoteSettlesFailedCycle: a mirror whose acknowledged cycle failed
// to apply, and whose source is gone (so no session will apply it
// again), can be promoted: Promote applies the cycle first. Before, it
// refused the promotion until a restart.
func TestPromoteSettlesFailedCycle(t *testing.T) {
	c, src, dst, fail := ioFailCluster(t)
	sv, _ := src.Volume("vol")
	writeRandomBlocks(t, sv, rand.New(rand.NewPCG(12, 12)), 40)
	fail.Store(1)
	if _, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
		t.Fatal(err)
	}
	sessionsEnded(t, dst)
	dv, _ := dst.Volume("vol")
	if dv.unappliedCycle() == 0 {
		t.Fatal("the cycle's apply did not fail")
	}
	c.stop("src")
	if _, err := dst.Promote("vol", 0); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if st := dv.Status(); st.Role != RolePrimary || !st.Complete {
		t.Errorf("promoted copy: %+v, want a complete primary", st)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// TestPromoteRefusedLeavesFullCopyRunning: a promotion that the copy's
// state refuses anyway (a full copy still running) is refused without
// ending the session that brings the copy.
func TestPromoteRefusedLeavesFullCopyRunning(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 2048, bs, 1) // 8 MiB at 4 MiB/s
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: []PeerConfig{{Name: "dst", Addr: c.addrs["dst"], Schedule: "4MiB"}}})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	done := make(chan error, 1)
	go func() {
		_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if dv, err := dst.Volume("vol"); err == nil && dv.Status().FullNext > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the full copy did not reach its first checkpoint")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := dst.Promote("vol", 0); !errors.Is(err, ErrInconsistent) {
		t.Errorf("promote during the full copy: %v, want ErrInconsistent", err)
	}
	if err := <-done; err != nil {
		t.Errorf("full copy after the refused promotion: %v", err)
	}
}

// damageJournalOnce is a durable hook that, when armed (damage set), flips
// a byte of the last data block of the journal at *jpath once its commit
// is synced: the cycle is acknowledged, its staged data then fails its
// check at apply.
func damageJournalOnce(t *testing.T, damage *atomic.Bool, jpath *string) func(string, []blockVer) {
	return func(string, []blockVer) {
		if !damage.CompareAndSwap(true, false) {
			return
		}
		// The commit record (12+24 bytes) ends the journal; the last
		// data block lies just before it.
		f, err := os.OpenFile(*jpath, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		at := st.Size() - 36 - bs/2
		b := []byte{0}
		f.ReadAt(b, at)
		b[0] ^= 0xFF
		if _, err := f.WriteAt(b, at); err != nil {
			t.Error(err)
		}
	}
}

// pushLosingCycle pushes a delta cycle of vol from src to dst with
// damageJournalOnce armed: dst acknowledges it (the commit was durable,
// so the push succeeds) and then fails to apply it; it returns once the
// hook has run and dst's sessions have ended.
func pushLosingCycle(t *testing.T, ctx context.Context, src, dst *Node, damage *atomic.Bool) {
	t.Helper()
	damage.Store(true)
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); err != nil {
		t.Fatal(err)
	}
	if damage.Load() {
		t.Fatal("the damaging hook did not run")
	}
	sessionsEnded(t, dst)
}
