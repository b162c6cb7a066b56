package replicator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator/wire"
)

// rawSession opens a session to node to with from's certificate and the
// given Hello, as a peer speaking the protocol by hand would: tests use
// it to send what a correct sender never does.
func rawSession(t *testing.T, c *cluster, from, to string, h wire.Hello) (*link, *wire.Welcome, error) {
	t.Helper()
	tc, err := pki.ClientConfig(c.tls[from], "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if h.MinProto == 0 {
		h.MinProto, h.MaxProto = wire.MinProto, wire.MaxProto
	}
	l, w, err := dial(context.Background(), dialConfig{addr: c.addrs[to], tls: tc}, &h)
	if err == nil {
		t.Cleanup(func() { l.close() })
	}
	return l, w, err
}

// TestReadRequestOutOfRange sends read requests whose block range lies
// outside the volume, including ranges whose end overflows uint64 (and so
// wrapped to a small number that passed the range check, and the server
// indexed block 2^64-1: a panic that took the node down). Each must be
// refused as a protocol error naming the range, and the node keep serving.
func TestReadRequestOutOfRange(t *testing.T) {
	c := newCluster(t, "m", "c")
	makeImage(t, c.path("m.img"), 64, bs, 1)
	// c is m's peer: a primary takes sessions only from its peers.
	mn := c.start("m", Config{Peers: c.peers("c"), Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), Role: RolePrimary}}})
	mv, err := mn.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	lin := lineageBytes(mv.Status().Lineage)
	cases := []wire.ReadReq{
		{Block: math.MaxUint64, Count: 1},
		{Block: math.MaxUint64 - 99, Count: 200},
		{Block: 1 << 63, Count: 1},
		{Block: 64, Count: 1},
		{Block: 60, Count: 5},
	}
	for _, req := range cases {
		l, _, err := rawSession(t, c, "c", "m", wire.Hello{Op: wire.OpRead, Node: "c", Volume: "vol", Lineage: lin})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.send(&req); err != nil {
			t.Fatal(err)
		}
		var m wire.Blocks
		err = l.read(&m)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("read of %d+%d: %v, want ErrProtocol", req.Block, req.Count, err)
		}
		l.close()
	}
	// Still serving: an in-range read works.
	l, _, err := rawSession(t, c, "c", "m", wire.Hello{Op: wire.OpRead, Node: "c", Volume: "vol", Lineage: lin})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.send(&wire.ReadReq{Block: 60, Count: 4}); err != nil {
		t.Fatal(err)
	}
	var m wire.Blocks
	if err := l.read(&m); err != nil {
		t.Fatalf("in-range read after the bad ones: %v", err)
	}
}

// TestHelloGeometryRefused opens copies to a mirror that holds nothing
// yet with geometries no source can have: no blocks, or more bytes than
// an int64 holds (the size check multiplied without overflow checks, the
// product wrapped, and the mirror saved metadata for 2^62 blocks that no
// image could hold, so the node then refused to start). Each must fail
// with ErrGeometry before anything is created, and a real copy must work
// afterwards, also after a restart.
func TestHelloGeometryRefused(t *testing.T) {
	c := newCluster(t, "src", "m")
	makeImage(t, c.path("src.img"), 64, bs, 1)
	mcfg := Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img")}}}
	c.start("m", mcfg)
	lin := [16]byte{1, 2, 3}
	cases := []struct {
		name   string
		blocks uint64
		bsize  uint32
	}{
		{"no blocks", 0, bs},
		{"size overflows int64", 1 << 62, bs},
		{"size wraps to zero", 1 << 52, 1 << 12},
		{"all ones", math.MaxUint64, bs},
		{"bad block size", 64, 1000},
	}
	for _, tc := range cases {
		l, _, err := rawSession(t, c, "src", "m", wire.Hello{Op: wire.OpFull, Node: "src", Volume: "vol",
			Lineage: lin, BlockSize: tc.bsize, Blocks: tc.blocks, Epoch: 1})
		if err == nil {
			err = l.send(&wire.FullBegin{Session: 1, End: tc.blocks})
			if err == nil {
				var a wire.Ack
				err = l.read(&a)
			}
			l.close()
		}
		if !errors.Is(err, ErrGeometry) {
			t.Errorf("%s: %v, want ErrGeometry", tc.name, err)
		}
		if _, err := os.Stat(filepath.Join(c.path("m.img.pmr"), stateFile)); err == nil {
			t.Fatalf("%s: the refused session saved mirror metadata", tc.name)
		}
	}
	// A geometry int64 holds, but larger than the mirror's filesystem: the
	// node would have allocated metadata for it (16 bytes a block).
	d, err := os.Open(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	huge := uint64(fsBytes(d))/bs*4 + 1
	d.Close()
	l, _, err := rawSession(t, c, "src", "m", wire.Hello{Op: wire.OpFull, Node: "src", Volume: "vol",
		Lineage: lin, BlockSize: bs, Blocks: huge, Epoch: 1})
	if err == nil {
		err = l.send(&wire.FullBegin{Session: 1, End: huge})
		if err == nil {
			var a wire.Ack
			err = l.read(&a)
		}
		l.close()
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Errorf("%d blocks, 4 times the filesystem: %v, want ErrNoSpace", huge, err)
	}
	if fi, err := os.Stat(c.path("m.img")); err == nil && fi.Size() != 0 {
		t.Errorf("the refused session sized the image to %d bytes", fi.Size())
	}
	if _, err := os.Stat(filepath.Join(c.path("m.img.pmr"), stateFile)); err == nil {
		t.Fatal("the refused session saved mirror metadata")
	}
	c.stop("m")
	c.start("m", mcfg)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("m")})
	if _, err := src.Push(context.Background(), "vol", "m", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatalf("push after the refused sessions: %v", err)
	}
	sameFile(t, c.path("src.img"), c.path("m.img"))
}

// TestDuplicateMirrorRefused configures one mirror twice. Write quorum
// counted it as two copies (both fan-out goroutines used the same
// session, and each acknowledgement counted), so W=3 was met by two
// copies. The config must be refused with the field named.
func TestDuplicateMirrorRefused(t *testing.T) {
	c := newCluster(t, "a", "b")
	makeImage(t, c.path("a.img"), 64, bs, 1)
	cases := [][]MirrorConfig{
		{{Peer: "b"}, {Peer: "b"}},
		{{Peer: "b"}, {Peer: "b", Volume: "vol"}},
		{{Peer: "b", Volume: "x"}, {Peer: "b", Volume: "x", Mode: ModeSelective}},
	}
	for _, ms := range cases {
		n, err := NewNode(Config{Node: "a", TLS: c.tls["a"], Logger: quietLogger(), Peers: c.peers("b"),
			Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary, Mirrors: ms, WriteQuorum: 3}}})
		if err == nil {
			n.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "mirrors[1]") {
			t.Errorf("mirrors %+v: %v, want an error naming mirrors[1]", ms, err)
		}
	}
	// Two volumes of one peer are two copies.
	n, err := NewNode(Config{Node: "a", TLS: c.tls["a"], Logger: quietLogger(), Peers: c.peers("b"),
		Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
			Mirrors: []MirrorConfig{{Peer: "b"}, {Peer: "b", Volume: "other"}}, WriteQuorum: 3}}})
	if err != nil {
		t.Fatalf("two volumes on one peer: %v", err)
	}
	n.Close()
}

// TestEpochBeyondVersionRefused: block versions hold the epoch in 32
// bits. A volume promoted to epoch 2^32 stamped its writes with epoch 0,
// so every later write lost to the data of the epoch it had just fenced
// (and mirrors refused its sync writes as fenced). Such epochs must be
// refused where they enter: Promote, and a peer's Hello.
func TestEpochBeyondVersionRefused(t *testing.T) {
	dir := t.TempDir()
	v, err := OpenVolume(filepath.Join(dir, "p.img"), VolumeOptions{Init: true, Size: 16 * bs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, e := range []uint64{1 << 32, math.MaxUint64} {
		if _, err := v.Promote(e); err == nil || !strings.Contains(err.Error(), "4294967295") {
			t.Errorf("Promote(%d): %v, want an error naming the largest epoch", e, err)
		}
	}
	if e, err := v.Promote(math.MaxUint32); err != nil || e != math.MaxUint32 {
		t.Fatalf("Promote(MaxUint32) = %d, %v", e, err)
	}
	if _, err := v.Promote(0); err == nil {
		t.Fatal("Promote(0) at the largest epoch succeeded")
	}
	if _, err := v.WriteAt(make([]byte, bs), 0); err != nil {
		t.Fatal(err)
	}
	if got := v.Version(0).Epoch; got != math.MaxUint32 {
		t.Fatalf("write at epoch %d has version epoch %d", uint64(math.MaxUint32), got)
	}

	c := newCluster(t, "src", "m")
	makeImage(t, c.path("m.img"), 64, bs, 1)
	c.start("m", Config{Peers: c.peers("src"), Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), Role: RolePrimary}}})
	mv, _ := c.nodes["m"].Volume("vol")
	for _, op := range []wire.Op{wire.OpDelta, wire.OpSyncWrite} {
		_, _, err := rawSession(t, c, "src", "m", wire.Hello{Op: op, Node: "src", Volume: "vol",
			Lineage: lineageBytes(mv.Status().Lineage), BlockSize: bs, Blocks: 64, Epoch: 1 << 32})
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s session at epoch 2^32: %v, want ErrProtocol", op, err)
		}
	}
	if st := mv.Status(); st.Epoch != 1 || st.Role != RolePrimary || st.Fenced {
		t.Fatalf("after the refused sessions: epoch %d role %s fenced %v, want epoch 1, an unfenced primary", st.Epoch, st.Role, st.Fenced)
	}
}

// TestWriteVersionAfterClockStepsBack restarts a primary whose wall clock
// went back (an RTC set ahead, then corrected by NTP; the hybrid clock is
// not persisted). A rewrite of a block was stamped by the wall clock
// alone, older than the version the block already had, so every mirror
// kept its copy (newest version wins, and the same site loses silently):
// the mirrors diverged from the primary without an error. The same held
// for blocks recovery re-versions after a crash. A write must always get
// a version newer than the block's.
func TestWriteVersionAfterClockStepsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.img")
	clockAt := func(at time.Time) *Clock {
		c := NewClock(7)
		c.now = func() time.Time { return at }
		return c
	}
	ahead := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	behind := ahead.Add(-24 * time.Hour)
	v, err := OpenVolume(path, VolumeOptions{Init: true, Size: 4096 * bs, Logger: quietLogger(), Clock: clockAt(ahead)})
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, bs)
	if _, err := v.WriteAt(blk, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(blk, 2048*bs); err != nil { // recovery case, below
		t.Fatal(err)
	}
	old0, old2048 := v.Version(0), v.Version(2048)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	v, err = OpenVolume(path, VolumeOptions{Logger: quietLogger(), Clock: clockAt(behind)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(blk, 0); err != nil {
		t.Fatal(err)
	}
	if got := v.Version(0); !old0.Less(got) {
		t.Fatalf("rewrite after the clock stepped back has version %s, not newer than %s", got, old0)
	}
	// A crash with block 2048's extent in the activity log: recovery
	// re-versions the extent's blocks, and must go past 2048's version.
	if _, err := v.WriteAt(blk, 2049*bs); err != nil {
		t.Fatal(err)
	}
	v.closeFiles()
	v, err = OpenVolume(path, VolumeOptions{Logger: quietLogger(), Clock: clockAt(behind)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if got := v.Version(2048); !old2048.Less(got) {
		t.Fatalf("block re-versioned by recovery has version %s, not newer than %s", got, old2048)
	}
}

// TestClockNeverWraps: a version whose clock is the largest value (a
// peer's garbage, or a clock run out) must not make the next local
// version wrap to zero, which would order it before everything.
func TestClockNeverWraps(t *testing.T) {
	c := NewClock(1)
	c.Observe(Version{Epoch: 1, Clock: math.MaxUint64, Site: 2})
	a := c.Now(1)
	b := c.Now(1)
	if a.Clock != math.MaxUint64 || b.Clock != math.MaxUint64 {
		t.Fatalf("clock after observing 2^64-1: %d then %d, want it to stay at 2^64-1", a.Clock, b.Clock)
	}
}

// TestClockAhead: a version from a clock two hours ahead moves this clock
// there (causality), and Ahead says so until the wall clock catches up.
func TestClockAhead(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := NewClock(1)
	c.now = func() time.Time { return now }
	if d := c.Ahead(); d != 0 {
		t.Fatalf("fresh clock %v ahead", d)
	}
	past := Version{Epoch: 1, Clock: uint64(now.Add(-time.Hour).UnixMilli()) << 16, Site: 2}
	c.Observe(past)
	if d, dv := c.Ahead(), c.aheadOf(past.Clock); d != 0 || dv != 0 {
		t.Fatalf("after a version from the past: clock %v ahead, the version %v", d, dv)
	}
	future := now.Add(2 * time.Hour)
	fv := Version{Epoch: 1, Clock: uint64(future.UnixMilli())<<16 | 7, Site: 2}
	c.Observe(fv)
	if d := c.aheadOf(fv.Clock); d != 2*time.Hour {
		t.Fatalf("the version is %v ahead, want 2h", d)
	}
	if v := c.Now(1); v.Clock>>16 != uint64(future.UnixMilli()) || c.Ahead() != 2*time.Hour {
		t.Fatalf("after observing: issued %s, %v ahead", v, c.Ahead())
	}
	now = future.Add(time.Second)
	if d := c.Ahead(); d != 0 {
		t.Fatalf("wall clock caught up: still %v ahead", d)
	}
}

// TestClockAheadReported: a primary whose clock runs two hours ahead
// pushes to a mirror; the mirror's hybrid clock follows it, which its
// replicator_clock_ahead_seconds shows, and a fresh mirror shows zero.
func TestClockAheadReported(t *testing.T) {
	c := newCluster(t, "src", "m")
	makeImage(t, c.path("src.img"), 64, bs, 1)
	src := c.startWith("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("m")},
		func(n *Node) { n.clock.now = func() time.Time { return time.Now().Add(2 * time.Hour) } })
	reg := prometheus.NewRegistry()
	m := c.start("m", Config{Registerer: reg, Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img")}}})
	ahead := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "replicator_clock_ahead_seconds" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("replicator_clock_ahead_seconds not exported")
		return 0
	}
	if a := ahead(); a != 0 {
		t.Fatalf("before any version arrived: %v s ahead", a)
	}
	sv, _ := src.Volume("vol")
	if _, err := sv.WriteAt(bytes.Repeat([]byte{3}, bs), 5*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Push(context.Background(), "vol", "m", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	if a := ahead(); a < 7000 || a > 7300 {
		t.Fatalf("after versions from a clock 2 h ahead: %v s ahead, want about 7200", a)
	}
	if d := m.clock.Ahead(); d < time.Hour {
		t.Fatalf("mirror clock %v ahead", d)
	}
}

// TestVersionEpochBeyondSession sends blocks stamped with an epoch newer
// than the one the sender opened the session with. A cycle refuses such
// a manifest entry; a sync write and a full copy applied it, and the
// block then beat every later write of the real newer epochs' primaries
// up to it (epoch 2^32-1: forever). They must be refused and not applied.
func TestVersionEpochBeyondSession(t *testing.T) {
	c := newCluster(t, "src", "m")
	makeImage(t, c.path("src.img"), 64, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("m")})
	m := c.start("m", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img")}}})
	if _, err := src.Push(context.Background(), "vol", "m", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sv, _ := src.Volume("vol")
	mv, _ := m.Volume("vol")
	data := bytes.Repeat([]byte{0xEE}, bs)
	entry := wire.BlockEntry{Kind: wire.KindRaw, Block: 3, Version: Version{Epoch: math.MaxUint32, Clock: 1, Site: 9},
		Sum: xxhash.Sum64(data), Data: data}
	hello := wire.Hello{Node: "src", Volume: "vol", Lineage: lineageBytes(sv.Status().Lineage), BlockSize: bs, Blocks: 64, Epoch: 1}

	hello.Op = wire.OpSyncWrite
	l, _, err := rawSession(t, c, "src", "m", hello)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.send(&wire.Blocks{Seq: 1, Entries: []wire.BlockEntry{entry}}); err != nil {
		t.Fatal(err)
	}
	var a wire.Ack
	if err := l.read(&a); !errors.Is(err, ErrProtocol) {
		t.Errorf("sync write of a block at epoch 2^32-1 in an epoch 1 session: %v, want ErrProtocol", err)
	}
	l.close()
	if got := mv.Version(3); got.Epoch == math.MaxUint32 {
		t.Fatalf("sync write applied: block 3 has version %s", got)
	}

	hello.Op = wire.OpFull
	hello.Flags = wire.HelloRestart
	l, _, err = rawSession(t, c, "src", "m", hello)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.send(&wire.FullBegin{Session: 1, End: 64}); err != nil {
		t.Fatal(err)
	}
	if err := l.read(&a); err != nil {
		t.Fatal(err)
	}
	if err := l.send(&wire.Blocks{Seq: 1, Entries: []wire.BlockEntry{entry}}); err != nil {
		t.Fatal(err)
	}
	err = l.send(&wire.FullEnd{Session: 1, Next: 64})
	for err == nil && a.Kind != wire.AckFullEnd {
		err = l.read(&a)
	}
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("full copy of a block at epoch 2^32-1 in an epoch 1 session: %v, want ErrProtocol", err)
	}
	if got := mv.Version(3); got.Epoch == math.MaxUint32 {
		t.Fatalf("full copy applied: block 3 has version %s", got)
	}
}

// TestSyncWriteAfterPromotion: a primary promoted to a newer epoch while
// its sync-write sessions are open stamps writes with the new epoch; the
// sessions announced the old one, so they are opened again rather than
// sending blocks the mirror must refuse.
func TestSyncWriteAfterPromotion(t *testing.T) {
	c := newCluster(t, "a", "b")
	makeImage(t, c.path("a.img"), 64, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "b"}}, WriteQuorum: 2}}, Peers: c.peers("b")})
	b := c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img")}}})
	ctx := context.Background()
	if _, err := a.Push(ctx, "vol", "b", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x11}, bs)
	if err := a.Write(ctx, "vol", data, 5*bs); err != nil {
		t.Fatal(err)
	}
	if e, err := a.Promote("vol", 0); err != nil || e != 2 {
		t.Fatalf("promote: %d, %v", e, err)
	}
	if err := a.Write(ctx, "vol", data, 6*bs); err != nil {
		t.Fatalf("write after promotion: %v", err)
	}
	bv, _ := b.Volume("vol")
	if got := bv.Version(6); got.Epoch != 2 {
		t.Fatalf("mirror holds block 6 at version %s, want epoch 2", got)
	}
}

// TestTruncatedMetadataRefused cuts the volume's paged metadata files
// short (a copy that stopped early, a full disk). Opening must fail with
// ErrCorrupt naming the file and both sizes; it said "read …: EOF",
// which also matched errors.Is(err, io.EOF).
func TestTruncatedMetadataRefused(t *testing.T) {
	for _, tc := range []struct {
		file string
		size int64
	}{
		{"versions", metaHeader + 100},
		{"versions", 10},
		{"al", metaHeader},
		{"peer-b.dirty", 20},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "p.img")
		v, err := OpenVolume(path, VolumeOptions{Init: true, Size: 2048 * bs, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.AddPeer("b"); err != nil {
			t.Fatal(err)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(path+".pmr", tc.file), tc.size); err != nil {
			t.Fatal(err)
		}
		_, err = OpenVolume(path, VolumeOptions{Logger: quietLogger()})
		if !errors.Is(err, ErrCorrupt) || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tc.file) ||
			!strings.Contains(err.Error(), fmt.Sprint(tc.size)) {
			t.Errorf("%s truncated to %d bytes: %v, want ErrCorrupt naming the file and its size", tc.file, tc.size, err)
		}
	}
}
