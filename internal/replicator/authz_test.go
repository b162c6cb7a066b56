package replicator

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator/wire"
)

// TestPrimaryRefusesPeersItDoesNotReplicateWith: every node of the CA
// (each edge, the admins, the controller) holds a certificate the
// replicator accepts. A primary without allowed_peers used to take a
// session from any of them: a node that is none of its peers could read
// the volume, or push with a newer epoch, which deposes the primary (its
// writes then fail) and overwrites its data. Only the nodes it replicates
// with (its configured peers) may open sessions on it; a mirror without
// allowed_peers still takes any peer (documented, to be set per volume).
func TestPrimaryRefusesPeersItDoesNotReplicateWith(t *testing.T) {
	c := newCluster(t, "origin", "mirror", "rogue")
	orig := makeImage(t, c.path("origin.img"), 64, bs, 1)
	makeImage(t, c.path("rogue.img"), 64, bs, 2)
	origin := c.start("origin", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("origin.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "mirror"}}}}, Peers: c.peers("mirror")})
	c.start("mirror", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("mirror.img")}}})
	rogue := c.start("rogue", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("rogue.img"), Role: RolePrimary}},
		Peers: c.peers("origin")})
	ctx := context.Background()
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatalf("push to the configured mirror: %v", err)
	}
	if _, err := rogue.Promote("vol", 5); err != nil {
		t.Fatal(err)
	}

	// Writing: a full copy at a newer epoch.
	if _, err := rogue.Push(ctx, "vol", "origin", PushOptions{Mode: ModeFull}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("push from a node the primary does not replicate with: %v, want ErrUnauthorized", err)
	}
	if err := origin.Write(ctx, "vol", make([]byte, bs), 0); err != nil {
		t.Fatalf("the primary was deposed: %v", err)
	}
	ov, _ := origin.Volume("vol")
	if st := ov.Status(); st.Role != RolePrimary || st.Epoch != 1 {
		t.Fatalf("primary after the refused push: role %s epoch %d", st.Role, st.Epoch)
	}
	if got := readBlock(t, c.path("origin.img"), 1); string(got) != string(orig[bs:2*bs]) {
		t.Fatal("the refused push changed the primary's data")
	}

	// Reading: a read session, as a selective mirror opens.
	p, err := rogue.peer("origin")
	if err != nil {
		t.Fatal(err)
	}
	rv, _ := rogue.Volume("vol")
	l, _, err := dial(ctx, rogue.dialConfig(p), rogue.hello(rv, wire.OpRead, "vol"))
	if err == nil {
		l.close()
	}
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("read session from a node the primary does not replicate with: %v, want ErrUnauthorized", err)
	}
}

// TestPrimarySendsOnlyToThePeerItNamed: every node's certificate is valid
// for the address a test cluster listens on (127.0.0.1), as certificates
// of nodes behind one address or a shared VIP are in the field. A primary
// whose mirror's address leads to another node of the CA (a stale DNS
// record, an address reused) must not hand that node the volume: the
// peer is its certificate's common name, and the handshake refuses any
// other.
func TestPrimarySendsOnlyToThePeerItNamed(t *testing.T) {
	c := newCluster(t, "origin", "mirror", "impostor")
	makeImage(t, c.path("origin.img"), 64, bs, 1)
	peers := c.peers("mirror")
	peers[0].Addr = c.addrs["impostor"]
	origin := c.start("origin", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("origin.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "mirror"}}}}, Peers: peers})
	impostor := c.start("impostor", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("impostor.img")}}})
	_, err := origin.Push(context.Background(), "vol", "mirror", PushOptions{Mode: ModeFull})
	if !errors.Is(err, pki.ErrUnexpectedPeer) {
		t.Fatalf("push to another node's address: %v, want ErrUnexpectedPeer", err)
	}
	if v, _ := impostor.Volume("vol"); v != nil && v.Status().FullNext != 0 {
		t.Fatalf("the impostor received %d blocks", v.Status().FullNext)
	}
}

// TestSyncWriteChecksLineage: a mirror holding another volume's
// copy refuses that primary's delta cycles (ErrLineage); it must refuse
// its synchronous writes too rather than write them into the other
// volume's copy.
func TestSyncWriteChecksLineage(t *testing.T) {
	c := newCluster(t, "other", "src", "dst")
	makeImage(t, c.path("other.img"), 256, bs, 1)
	makeImage(t, c.path("src.img"), 256, bs, 2)
	other := c.start("other", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("other.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "other"}}, Peers: c.peers("other", "src")})
	ctx := context.Background()
	res, err := other.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	sameFile(t, c.path("other.img"), c.path("dst.img"))

	// A different primary volume is (mis)configured with dst as its mirror.
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		WriteQuorum: 2, Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeDelta}); !errors.Is(err, ErrLineage) {
		t.Fatalf("delta push to a mirror of another volume: %v, want ErrLineage", err)
	}
	buf := bytes.Repeat([]byte{0x5A}, bs)
	werr := src.Write(ctx, "vol", buf, 10*bs)
	t.Logf("quorum write: %v", werr)
	if msg := compareFiles(c.path("other.img"), c.path("dst.img")); msg != "" {
		t.Fatalf("the mirror of other's volume took src's sync write: %s", msg)
	}
	if werr == nil {
		t.Fatal("quorum write acknowledged by a mirror holding another volume")
	}
}

// TestQuorumReadChecksLineage: a quorum read must not take a
// block from a mirror holding another volume's copy (nor read-repair
// the primary with it).
func TestQuorumReadChecksLineage(t *testing.T) {
	c := newCluster(t, "other", "src", "dst")
	makeImage(t, c.path("other.img"), 256, bs, 1)
	srcData := makeImage(t, c.path("src.img"), 256, bs, 2)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary,
		ReadQuorum: 2, Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	other := c.start("other", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("other.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "other"}}, Peers: c.peers("other", "src")})
	ctx := context.Background()
	ov, _ := other.Volume("vol")
	if _, err := ov.WriteAt(bytes.Repeat([]byte{0x77}, bs), 20*bs); err != nil {
		t.Fatal(err)
	}
	res, err := other.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	buf := make([]byte, bs)
	rerr := src.Read(ctx, "vol", buf, 20*bs)
	t.Logf("quorum read: %v", rerr)
	if rerr == nil && !bytes.Equal(buf, srcData[20*bs:21*bs]) {
		t.Fatal("quorum read returned the other volume's block")
	}
	src.Close() // waits for read repairs
	got, _ := os.ReadFile(c.path("src.img"))
	if !bytes.Equal(got[20*bs:21*bs], srcData[20*bs:21*bs]) {
		t.Fatal("read repair wrote the other volume's block into the primary")
	}
}

// TestSetAllowedPeers: a mirror that takes sessions only from its
// source is given a new source at run time (the resource's origin moved
// to a promoted copy): the new source's cycles are accepted, the old
// source is refused, and a session it still had open is ended.
func TestSetAllowedPeers(t *testing.T) {
	c := newCluster(t, "a", "b", "m")
	makeImage(t, c.path("a.img"), 256, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary}}, Peers: c.peers("b", "m")})
	b := c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img")}}, Peers: c.peers("m")})
	m := c.start("m", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), AllowedPeers: []string{"a"}}}})
	ctx := context.Background()
	for _, to := range []string{"b", "m"} {
		if _, err := a.Push(ctx, "vol", to, PushOptions{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Promote("vol", 0); err != nil {
		t.Fatal(err)
	}
	bv, _ := b.Volume("vol")
	if _, err := bv.WriteAt(bytes.Repeat([]byte{0x6B}, bs), 7*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Push(ctx, "vol", "m", PushOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("push from b before it is allowed: %v, want ErrUnauthorized", err)
	}
	// a keeps a read session open on m.
	p, _ := a.peer("m")
	av, _ := a.Volume("vol")
	l, _, err := dial(ctx, a.dialConfig(p), a.hello(av, wire.OpRead, "vol"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()

	for _, bad := range [][]string{nil, {}, {"a b"}} {
		if err := m.SetAllowedPeers("vol", bad); err == nil {
			t.Errorf("SetAllowedPeers(%q) accepted", bad)
		}
	}
	if err := m.SetAllowedPeers("nope", []string{"b"}); !errors.Is(err, ErrUnknownVolume) {
		t.Errorf("SetAllowedPeers on an unknown volume: %v", err)
	}
	if err := m.SetAllowedPeers("vol", []string{"b"}); err != nil {
		t.Fatal(err)
	}
	l.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := l.rd.Next(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a's read session after a was removed: %v, want it ended", err)
	}
	res, err := b.Push(ctx, "vol", "m", PushOptions{})
	if err != nil {
		t.Fatalf("push from the new source: %v", err)
	}
	waitCycle(t, m, "vol", res.Cycle)
	sameFile(t, c.path("b.img"), c.path("m.img"))
	if _, err := a.Push(ctx, "vol", "m", PushOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("push from the old source: %v, want ErrUnauthorized", err)
	}
}
