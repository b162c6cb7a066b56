package replicator

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// upstreamNodes starts a primary a, a full mirror b of it and a selective
// mirror m holding blocks 0..9 whose upstream is a. Every read-through
// request m is about to send is recorded by peer, and handed to the
// returned hook setter's function first.
func upstreamNodes(t *testing.T) (c *cluster, a, b, m *Node, data []byte, asked func() []string, onFetch func(func(peer string))) {
	t.Helper()
	c = newCluster(t, "a", "b", "m")
	data = makeImage(t, c.path("a.img"), 256, bs, 1)
	a = c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary}}, Peers: c.peers("b", "m")})
	b = c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img")}}, Peers: c.peers("m")})
	var mu sync.Mutex
	var peers []string
	var hook func(string)
	m = c.startWith("m", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), Upstream: "a"}}, Peers: c.peers("a", "b")},
		func(n *Node) {
			n.hooks.fetching = func(_, peer string) {
				mu.Lock()
				peers = append(peers, peer)
				h := hook
				mu.Unlock()
				if h != nil {
					h(peer)
				}
			}
		})
	ctx := context.Background()
	if _, err := a.Push(ctx, "vol", "b", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	res, err := a.Push(ctx, "vol", "m", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 0, Count: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, m, "vol", res.Cycle)
	asked = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(peers)
	}
	onFetch = func(f func(string)) {
		mu.Lock()
		defer mu.Unlock()
		hook, peers = f, nil
	}
	return c, a, b, m, data, asked, onFetch
}

// TestSetUpstream: the resource's origin moves from a to b (an operator
// promoted b, which then writes) and m's upstream is switched to b while
// a read-through to a is in flight. a's answer, which arrives after the
// switch, must not be stored: it is a deposed copy's data, and stored it
// would count as held. The read is fetched again from b, and later
// read-throughs go to b alone, with a gone.
func TestSetUpstream(t *testing.T) {
	c, _, b, m, _, asked, onFetch := upstreamNodes(t)
	ctx := context.Background()
	if _, err := b.Promote("vol", 0); err != nil {
		t.Fatal(err)
	}
	bv, _ := b.Volume("vol")
	newData := bytes.Repeat([]byte("moved origin"), 4*bs/12+1)[:4*bs]
	if _, err := bv.WriteAt(newData, 20*bs); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []struct{ vol, peer string }{{"vol", ""}, {"vol", "nope"}, {"nope", "b"}} {
		if err := m.SetUpstream(bad.vol, bad.peer, ""); err == nil {
			t.Errorf("SetUpstream(%q, %q) accepted", bad.vol, bad.peer)
		}
	}
	onFetch(func(peer string) {
		if peer == "a" {
			if err := m.SetUpstream("vol", "b", ""); err != nil {
				t.Error(err)
			}
		}
	})
	buf := make([]byte, bs)
	if err := m.Read(ctx, "vol", buf, 20*bs); err != nil {
		t.Fatal(err)
	}
	if got := asked(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("read-through asked %v, want a, then b after the switch", got)
	}
	if !bytes.Equal(buf, newData[:bs]) {
		t.Fatal("read-through returned the old upstream's answer, which arrived after the switch")
	}
	mv, _ := m.Volume("vol")
	if got, want := mv.Version(20), bv.Version(20); got != want {
		t.Fatalf("block 20 stored at version %s, want the new upstream's %s", got, want)
	}
	if st := m.Status(); st[0].Upstream != "b" {
		t.Errorf("status upstream %q, want b", st[0].Upstream)
	}

	// Later read-throughs go to b only: a may be retired.
	c.stop("a")
	onFetch(nil)
	buf = make([]byte, 3*bs)
	if err := m.Read(ctx, "vol", buf, 21*bs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, newData[bs:]) {
		t.Fatal("read-through after the switch returned other data than the new upstream's")
	}
	if got := asked(); !slices.Equal(got, []string{"b"}) {
		t.Errorf("read-through after the switch asked %v, want b", got)
	}
}

// TestSetUpstreamFailedFetch: a read-through in flight to the old
// upstream when it is switched, and which then fails (the old node goes
// away), is retried against the new upstream instead of failing the read.
func TestSetUpstreamFailedFetch(t *testing.T) {
	c, _, _, m, data, asked, onFetch := upstreamNodes(t)
	onFetch(func(peer string) {
		if peer == "a" {
			if err := m.SetUpstream("vol", "b", "vol"); err != nil {
				t.Error(err)
			}
			c.stop("a")
		}
	})
	buf := make([]byte, 2*bs)
	if err := m.Read(context.Background(), "vol", buf, 30*bs); err != nil {
		t.Fatalf("read-through across the switch: %v", err)
	}
	if !bytes.Equal(buf, data[30*bs:32*bs]) {
		t.Fatal("read-through returned wrong bytes")
	}
	if got := asked(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("read-through asked %v, want a, then b after the switch", got)
	}
	// Without an upstream change a failed fetch still fails the read.
	c.stop("b")
	if err := m.Read(context.Background(), "vol", buf, 40*bs); err == nil {
		t.Fatalf("read-through with the upstream gone: %v, want an error", err)
	}
}

// TestReadThroughVouchesOnlyWithPrimaryEpoch: a read-through answer beats
// local versions of older epochs only when its upstream is an unfenced
// primary, whose data is the epoch's truth. Here m's upstream becomes b,
// a full mirror that lags (it never got a's epoch-2 write of block 20)
// but has seen epoch 3, as a session of a newer primary that failed
// before its cycle committed leaves it. m knows block 20's epoch-2
// version from a's cycle. Before, b's Welcome epoch vouched for its
// epoch-1 copy of the block, which then replaced the newer version and
// was served as held.
func TestReadThroughVouchesOnlyWithPrimaryEpoch(t *testing.T) {
	_, a, b, m, data, _, _ := upstreamNodes(t)
	ctx := context.Background()
	if _, err := a.Promote("vol", 2); err != nil {
		t.Fatal(err)
	}
	av, _ := a.Volume("vol")
	const blk = 20
	if _, err := av.WriteAt(bytes.Repeat([]byte{0xEE}, bs), blk*bs); err != nil {
		t.Fatal(err)
	}
	res, err := a.Push(ctx, "vol", "m", PushOptions{Mode: ModeDelta})
	if err != nil {
		t.Fatal(err)
	}
	mv := waitCycle(t, m, "vol", res.Cycle)
	announced := mv.Version(blk)
	if announced.Epoch != 2 {
		t.Fatalf("m's version of block %d after a's cycle: %s, want one of epoch 2", blk, announced)
	}
	bv, _ := b.Volume("vol")
	if err := bv.observeEpoch(3); err != nil {
		t.Fatal(err)
	}
	if err := m.SetUpstream("vol", "b", ""); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, bs)
	err = m.Read(ctx, "vol", buf, blk*bs)
	if err == nil && bytes.Equal(buf, data[blk*bs:(blk+1)*bs]) {
		t.Errorf("read of block %d returned b's stale epoch-1 bytes", blk)
	}
	if got := mv.Version(blk); got != announced {
		t.Errorf("m's version of block %d after the read-through: %s, want %s", blk, got, announced)
	}
}

// TestSetUpstreamIsABarrier: once SetUpstream returns, no answer from the
// old upstream is stored. Here a's answer passed the upstream check just
// before the change; it must be stored before SetUpstream returns, not
// after. Before, SetUpstream returned at once and the answer was stored
// later, as held data from a copy that was no longer the upstream.
func TestSetUpstreamIsABarrier(t *testing.T) {
	_, _, _, m, data, _, _ := upstreamNodes(t)
	mv, _ := m.Volume("vol")
	const blk = 40
	returned := make(chan bool, 1) // whether blk was held when SetUpstream returned
	var once sync.Once
	m.hooks.storing = func(_, peer string) {
		if peer != "a" {
			return
		}
		once.Do(func() {
			go func() {
				if err := m.SetUpstream("vol", "b", ""); err != nil {
					t.Error(err)
				}
				returned <- len(mv.missingOf([]uint64{blk})) == 0
			}()
			// Time for SetUpstream to return before the answer is stored,
			// had it not waited for it.
			select {
			case <-time.After(200 * time.Millisecond):
			case held := <-returned:
				returned <- held
			}
		})
	}
	buf := make([]byte, bs)
	if err := m.Read(context.Background(), "vol", buf, blk*bs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[blk*bs:(blk+1)*bs]) {
		t.Error("read-through returned wrong bytes")
	}
	if held := <-returned; !held {
		t.Error("SetUpstream returned before the old upstream's answer, checked before the change, was stored")
	}
}

// TestSetUpstreamCutsStuckReadThrough: a read-through stuck on the old
// upstream (here a, whose reads hang) is cut by SetUpstream and fetched
// again from the new one. Before, the read waited for a.
func TestSetUpstreamCutsStuckReadThrough(t *testing.T) {
	_, a, _, m, data, asked, onFetch := upstreamNodes(t)
	av, _ := a.Volume("vol")
	av.io.Lock() // a's reads of the image wait
	locked := true
	defer func() {
		if locked {
			av.io.Unlock()
		}
	}()
	onFetch(func(peer string) {
		if peer == "a" {
			go func() {
				time.Sleep(50 * time.Millisecond)
				if err := m.SetUpstream("vol", "b", ""); err != nil {
					t.Error(err)
				}
			}()
		}
	})
	const blk = 50
	buf := make([]byte, bs)
	done := make(chan error, 1)
	go func() { done <- m.Read(context.Background(), "vol", buf, blk*bs) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		av.io.Unlock()
		locked = false
		<-done
		t.Fatal("the read-through stuck on the old upstream was not cut by SetUpstream")
	}
	if !bytes.Equal(buf, data[blk*bs:(blk+1)*bs]) {
		t.Error("read-through returned wrong bytes")
	}
	if got := asked(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("read-through asked %v, want a, then b after the switch", got)
	}
}
