package replicator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dynInterval is short so the loops cycle many times within a test.
const dynInterval = 40 * time.Millisecond

// mirrorStatus returns the Node.Status entry of volume.
func mirrorStatus(t *testing.T, n *Node, volume string) Status {
	t.Helper()
	for _, s := range n.Status() {
		if s.Name == volume {
			return s
		}
	}
	t.Fatalf("no status for volume %s", volume)
	return Status{}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDynamicMirrors: a mirror added at run time gets a full copy, then
// deltas; retiring it stops its cycles while the mirror's lag grows;
// adding it again catches up with a delta, not a second full copy.
func TestDynamicMirrors(t *testing.T) {
	c := newCluster(t, "src", "dst", "other")
	makeImage(t, c.path("src.img"), 512, bs, 5)
	// A configured mirror (without a loop) that the dynamic set must not touch.
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "other"}}}}, Peers: c.peers("dst", "other")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}, Peers: c.peers("src")})

	// Before any copy the mirror side says it holds nothing usable.
	if st := mirrorStatus(t, dst, "vol"); st.Complete || !st.Empty || st.Lag != 0 || !st.CycleAsOf.IsZero() {
		t.Fatalf("mirror status before the first copy: %+v", st)
	}
	sent := func(mode Mode) float64 {
		return testutil.ToFloat64(src.metrics.blocksSent.WithLabelValues("dst", string(mode)))
	}

	want := []MirrorConfig{{Peer: "dst", Interval: dynInterval}, {Peer: "other", Interval: dynInterval}}
	if err := src.SetDynamicMirrors("vol", want); err != nil {
		t.Fatal(err)
	}
	// The configured mirror to "other" gets no second loop.
	got := src.DynamicMirrors("vol")
	if len(got) != 1 || got[0].Peer != "dst" || got[0].Volume != "vol" || got[0].Mode != ModeFull {
		t.Fatalf("dynamic mirrors %+v, want only dst/vol in full mode", got)
	}
	waitFor(t, "the first copy", func() bool { return mirrorStatus(t, dst, "vol").Complete })
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	full := sent(ModeFull)
	if full == 0 {
		t.Fatal("no block sent by a full copy")
	}
	st := mirrorStatus(t, dst, "vol")
	if st.CycleAsOf.IsZero() || st.Lag < 0 || st.Lag > 2*time.Second {
		t.Fatalf("complete mirror: as of %v, lag %v", st.CycleAsOf, st.Lag)
	}
	// The loop keeps cycling: the copy's time moves forward.
	first := st.CycleAsOf
	waitFor(t, "a later cycle", func() bool { return mirrorStatus(t, dst, "vol").CycleAsOf.After(first) })

	// Writes reach the mirror as deltas.
	sv, _ := src.Volume("vol")
	rng := rand.New(rand.NewPCG(9, 9))
	writeRandomBlocks(t, sv, rng, 30)
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	if sent(ModeFull) != full || sent(ModeDelta) == 0 {
		t.Fatalf("blocks sent: full %v (was %v), delta %v; want the writes as a delta", sent(ModeFull), full, sent(ModeDelta))
	}

	// Retired: no cycle after SetDynamicMirrors returns.
	if err := src.SetDynamicMirrors("vol", nil); err != nil {
		t.Fatal(err)
	}
	if got := src.DynamicMirrors("vol"); len(got) != 0 {
		t.Fatalf("dynamic mirrors after retiring: %+v", got)
	}
	// A cycle acknowledged before the loop stopped may still be applying
	// at the mirror, inside its session: wait for the session to end.
	dnv, _ := dst.nodeVolume("vol")
	waitFor(t, "the mirror's last session", func() bool { return len(dnv.sess) == 0 })
	retired := mirrorStatus(t, dst, "vol")
	touched := writeRandomBlocks(t, sv, rng, 20)
	time.Sleep(10 * dynInterval)
	later := mirrorStatus(t, dst, "vol")
	if later.Cycle != retired.Cycle || !later.CycleAsOf.Equal(retired.CycleAsOf) {
		t.Fatalf("retired mirror moved from cycle %d to %d", retired.Cycle, later.Cycle)
	}
	if later.Lag <= retired.Lag || later.Lag < 8*dynInterval {
		t.Fatalf("lag of a retired mirror: %v then %v, want it growing", retired.Lag, later.Lag)
	}
	if compareFiles(c.path("src.img"), c.path("dst.img")) == "" {
		t.Fatal("retired mirror received the writes")
	}
	// Its data stays complete (the last cycle), just stale.
	if !later.Complete {
		t.Fatalf("retired mirror no longer complete: %+v", later)
	}

	// Added again: a delta of what changed meanwhile.
	delta := sent(ModeDelta)
	if err := src.SetDynamicMirrors("vol", want[:1]); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	if sent(ModeFull) != full {
		t.Fatalf("re-added mirror got a full copy (%v blocks, was %v)", sent(ModeFull), full)
	}
	if d := sent(ModeDelta) - delta; d != float64(len(touched)) {
		t.Fatalf("re-added mirror caught up with %v delta blocks, want the %d written meanwhile", d, len(touched))
	}
	waitFor(t, "the lag to drop", func() bool { return mirrorStatus(t, dst, "vol").Lag < later.Lag })

	// Close stops the loops; nothing can be set afterwards.
	c.stop("src")
	if err := src.SetDynamicMirrors("vol", want[:1]); !errors.Is(err, ErrClosed) {
		t.Fatalf("set after close: %v, want ErrClosed", err)
	}
}

// TestDynamicMirrorsBeforeServe: mirrors set before Serve wait for it.
func TestDynamicMirrorsBeforeServe(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 128, bs, 6)
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}, Peers: c.peers("src")})
	c.startWith("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: c.peers("dst")}, func(n *Node) {
		if err := n.SetDynamicMirrors("vol", []MirrorConfig{{Peer: "dst", Volume: "vol", Interval: dynInterval}}); err != nil {
			t.Fatal(err)
		}
	})
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

func TestDynamicMirrorsErrors(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 64, bs, 7)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: c.peers("dst")})
	ok := MirrorConfig{Peer: "dst", Interval: time.Hour}
	if err := src.SetDynamicMirrors("vol", []MirrorConfig{ok}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		volume  string
		mirrors []MirrorConfig
		is      error
		want    string
	}{
		{"unknown volume", "nope", []MirrorConfig{ok}, ErrUnknownVolume, `"nope"`},
		{"unknown peer", "vol", []MirrorConfig{ok, {Peer: "ghost", Interval: time.Second}}, ErrUnknownPeer, `mirrors[1]: peer "ghost"`},
		{"no interval", "vol", []MirrorConfig{{Peer: "dst"}}, nil, "mirrors[0].interval"},
		{"bad mode", "vol", []MirrorConfig{{Peer: "dst", Mode: ModeDelta, Interval: time.Second}}, nil, "mirrors[0].mode"},
		{"bad remote name", "vol", []MirrorConfig{{Peer: "dst", Volume: "a/b", Interval: time.Second}}, nil, "mirrors[0].volume"},
		{"twice", "vol", []MirrorConfig{ok, {Peer: "dst", Volume: "vol", Interval: time.Second}}, nil, "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := src.SetDynamicMirrors(tt.volume, tt.mirrors)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error naming %s", err, tt.want)
			}
			// A rejected set changes nothing.
			if got := src.DynamicMirrors("vol"); len(got) != 1 || got[0].Interval != time.Hour {
				t.Fatalf("dynamic mirrors after a rejected set: %+v", got)
			}
		})
	}
}

// TestDynamicMirrorsConcurrent: concurrent sets leave exactly the last
// one in force and no loop behind (goleak checks at exit).
func TestDynamicMirrorsConcurrent(t *testing.T) {
	c := newCluster(t, "src", "a", "b")
	makeImage(t, c.path("src.img"), 64, bs, 8)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: c.peers("a", "b")})
	// The peers are not serving: the loops fail and back off, which is
	// what a retired or unreachable target looks like.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				var ms []MirrorConfig
				if (i+j)%3 != 0 {
					ms = append(ms, MirrorConfig{Peer: "a", Interval: time.Hour})
				}
				if (i+j)%2 == 0 {
					ms = append(ms, MirrorConfig{Peer: "b", Volume: fmt.Sprint("v", j%2), Interval: time.Hour})
				}
				if err := src.SetDynamicMirrors("vol", ms); err != nil {
					t.Error(err)
					return
				}
				_ = src.DynamicMirrors("vol")
			}
		}()
	}
	wg.Wait()
	final := []MirrorConfig{{Peer: "b", Volume: "x", Interval: time.Hour}}
	if err := src.SetDynamicMirrors("vol", final); err != nil {
		t.Fatal(err)
	}
	if got := src.DynamicMirrors("vol"); len(got) != 1 || got[0].Volume != "x" {
		t.Fatalf("dynamic mirrors %+v, want only b/x", got)
	}
}

// TestCycleAsOf: a mirror's copy time comes from delta cycles only (a
// repair cycle ships verify's differences, not the writes since the last
// cycle), and it survives a restart.
func TestCycleAsOf(t *testing.T) {
	c, src, dst, _ := twoNodes(t, 256, nil)
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first copy", func() bool { return mirrorStatus(t, dst, "vol").Complete })
	copied := mirrorStatus(t, dst, "vol")
	if copied.CycleAsOf.IsZero() {
		t.Fatalf("complete mirror without a copy time: %+v", copied)
	}

	// Damage the mirror behind the replicator's back; verify repairs it.
	// Block 11 holds data (TestVerifyRepairsCorruption covers
	// never-written zero blocks).
	f, err := os.OpenFile(c.path("dst.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, bs), 11*bs); err != nil {
		t.Fatal(err)
	}
	f.Close()
	res, err := src.Verify(ctx, "vol", "dst", VerifyOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differ) == 0 || !res.Repaired {
		t.Fatalf("verify found no difference: %+v", res)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	// The mirror acknowledges a durable commit and applies it after.
	waitCycle(t, dst, "vol", res.Cycle)
	repaired := mirrorStatus(t, dst, "vol")
	if repaired.Cycle <= copied.Cycle || !repaired.CycleAsOf.Equal(copied.CycleAsOf) {
		t.Fatalf("repair cycle: cycle %d→%d, as of %v→%v; want a new cycle and the same time",
			copied.Cycle, repaired.Cycle, copied.CycleAsOf, repaired.CycleAsOf)
	}

	// Restarted, the mirror still knows how fresh its copy is.
	c.stop("dst")
	dst = c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	if st := mirrorStatus(t, dst, "vol"); !st.Complete || !st.CycleAsOf.Equal(copied.CycleAsOf) || st.Lag <= 0 {
		t.Fatalf("after a restart: %+v, want complete as of %v", st, copied.CycleAsOf)
	}
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a newer copy time", func() bool { return mirrorStatus(t, dst, "vol").CycleAsOf.After(copied.CycleAsOf) })
}

// TestDynamicSelectiveMirror: a dynamic mirror in selective mode (what a
// placement of a resource with a working set asks for) gets the source's
// most-read extents only; a read of another block at the mirror is
// fetched from its upstream and served.
func TestDynamicSelectiveMirror(t *testing.T) {
	c := newCluster(t, "src", "dst")
	const blocks = 4 * alExtentBlocks // four 4 MiB extents
	makeImage(t, c.path("src.img"), blocks, bs, 11)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	// Reads make the third extent the hottest.
	sv, _ := src.Volume("vol")
	buf := make([]byte, 64*bs)
	for range 20 {
		if _, err := sv.ReadAt(buf, int64(2*alExtentBlocks+100)*bs); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.SetDynamicMirrors("vol", []MirrorConfig{{Peer: "dst", Mode: ModeSelective, HotExtents: 1, Interval: dynInterval}}); err != nil {
		t.Fatal(err)
	}
	// A selective copy is never Complete (it lacks the cold blocks): it
	// serves once its first copy committed and cycles follow.
	waitFor(t, "the selective copy", func() bool {
		st := mirrorStatus(t, dst, "vol")
		return st.Selective && !st.Inconsistent && !st.FullActive && !st.CycleAsOf.IsZero()
	})
	dv, _ := dst.Volume("vol")
	if miss := dv.missing(2*alExtentBlocks, 3*alExtentBlocks); len(miss) != 0 {
		t.Fatalf("the hot extent lacks %d blocks", len(miss))
	}
	if miss := dv.missing(0, alExtentBlocks); len(miss) != alExtentBlocks {
		t.Fatalf("a cold extent holds %d blocks, want none", alExtentBlocks-len(miss))
	}
	// A cold block read at the mirror comes through from the source.
	want := make([]byte, bs)
	if _, err := sv.ReadAt(want, 5*bs); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, bs)
	if err := dst.Read(context.Background(), "vol", got, 5*bs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read-through returned other data")
	}
}
