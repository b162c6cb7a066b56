package replicator

import (
	"context"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCycleApplyFailureRecovers: a mirror commits a delta cycle whose
// staged data then fails to apply (here a journal block damaged on disk
// after its commit was synced). The mirror must neither apply the cycle
// nor acknowledge it as applied, and the next cycle, without a restart,
// must bring the mirror to the source's content: the failed cycle's
// blocks may not be lost because the source retired them on an ACK.
func TestCycleApplyFailureRecovers(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	var damage atomic.Bool
	jpath := journalPath(c.path("dst.img") + ".pmr")
	reg := prometheus.NewRegistry()
	dst := c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}, Registerer: reg},
		func(n *Node) {
			n.hooks.durable = func(string, []blockVer) {
				if !damage.CompareAndSwap(true, false) {
					return
				}
				// The commit record (12+24 bytes) ends the journal; the
				// last data block lies just before it.
				f, err := os.OpenFile(jpath, os.O_RDWR, 0)
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
		})
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sv, _ := src.Volume("vol")
	rng := rand.New(rand.NewPCG(5, 5))
	writeRandomBlocks(t, sv, rng, 40)
	damage.Store(true)
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); err == nil {
		t.Error("a cycle the mirror could not apply was reported pushed")
	}
	if damage.Load() {
		t.Fatal("the damaging hook did not run")
	}
	dv, _ := dst.Volume("vol")
	if st := dv.Status(); st.Complete {
		t.Errorf("mirror reports a complete copy after a failed apply: %+v", st)
	}
	if n := testutil.ToFloat64(dst.metrics.cyclesRejected.WithLabelValues("vol")); n != 1 {
		t.Errorf("replicator_cycles_rejected_total = %v, want 1", n)
	}

	// The same node takes the next cycles and catches up.
	writeRandomBlocks(t, sv, rng, 10)
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatalf("cycle after the rejected one: %v", err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	if st := dv.Status(); !st.Complete {
		t.Errorf("mirror not complete after the next cycle applied: %+v", st)
	}
}
