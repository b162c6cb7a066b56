package replicator

import (
	"bytes"
	"context"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/pki"
)

// useCRL gives every node of c a CRL file, empty for now, and returns
// what writes it anew listing serials (atomically, as a Secret volume
// swaps files).
func (c *cluster) useCRL() func(serials ...*big.Int) {
	c.t.Helper()
	crl := filepath.Join(c.dir, "ca.crl")
	write := func(serials ...*big.Int) {
		c.t.Helper()
		b, err := testCA.Revoke(nil, serials, time.Now(), time.Hour)
		if err != nil {
			c.t.Fatal(err)
		}
		if err := atomicfile.Write(crl, 0o644, b); err != nil {
			c.t.Fatal(err)
		}
	}
	write()
	for n, f := range c.tls {
		f.CRL = crl
		c.tls[n] = f
	}
	return write
}

// TestRevokedPeerRefused: a CRL written while the nodes run (no restart)
// shuts a revoked node out in either direction: a primary refuses to
// push to a revoked mirror (the client verifies the server), a mirror
// refuses a revoked primary (the server verifies the client).
func TestRevokedPeerRefused(t *testing.T) {
	c := newCluster(t, "origin", "mirror")
	writeCRL := c.useCRL()
	serial := map[string]*big.Int{}
	for n, f := range c.tls {
		s, err := pki.Open(f, nil)
		if err != nil {
			t.Fatal(err)
		}
		serial[n] = s.Leaf().SerialNumber
	}
	makeImage(t, c.path("origin.img"), 64, bs, 1)
	origin := c.start("origin", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("origin.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "mirror"}}}}, Peers: c.peers("mirror")})
	mirror := c.start("mirror", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("mirror.img")}}})
	ctx := context.Background()
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatalf("push before any revocation: %v", err)
	}

	writeCRL(serial["mirror"])
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("push to a revoked mirror: %v, want ErrRevoked", err)
	}
	writeCRL(serial["origin"])
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err == nil {
		t.Fatal("a revoked primary pushed")
	}
	if !mirror.tlsSrc.Revoked(origin.tlsSrc.Leaf()) {
		t.Fatal("the mirror does not see the primary as revoked")
	}
	writeCRL()
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatalf("push after the revocations were lifted: %v", err)
	}
}

// TestRevokedLiveSessionEnds: a certificate revoked while a sync-write
// session is open ends that session, in either direction, instead of
// letting it run for as long as the peers do. A mirror stops taking the
// writes of a primary revoked after it connected; a primary stops
// sending to a mirror revoked after it connected. Without the sweep both
// writes below would reach the mirror through the pooled session.
func TestRevokedLiveSessionEnds(t *testing.T) {
	c := newCluster(t, "origin", "mirror")
	writeCRL := c.useCRL()
	fast := func(n *Node) { n.hooks.revokeEvery = 20 * time.Millisecond }
	makeImage(t, c.path("origin.img"), 64, bs, 1)
	origin := c.startWith("origin", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("origin.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "mirror"}}, WriteQuorum: 2}}, Peers: c.peers("mirror")}, fast)
	mirror := c.startWith("mirror", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("mirror.img")}}}, fast)
	ctx := context.Background()
	if _, err := origin.Push(ctx, "vol", "mirror", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	mirrorHas := func(block int64, data []byte) bool {
		got, err := os.ReadFile(c.path("mirror.img"))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Equal(got[block*bs:(block+1)*bs], data)
	}
	waitEnded := func(n *Node, want uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); n.tlsSrc.RevokedSessionsEnded() < want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the live session was not ended (ended %d, want %d)", n.tlsSrc.RevokedSessionsEnded(), want)
			}
		}
	}
	for i, revoke := range []struct{ who, ender string }{{"origin", "mirror"}, {"mirror", "origin"}} {
		// A quorum write opens (or reuses) the pooled sync-write session.
		before := bytes.Repeat([]byte{byte(0x10 + i)}, bs)
		if err := origin.Write(ctx, "vol", before, int64(10+2*i)*bs); err != nil {
			t.Fatalf("quorum write before revoking %s: %v", revoke.who, err)
		}
		if !mirrorHas(int64(10+2*i), before) {
			t.Fatal("the acknowledged write is not on the mirror")
		}
		s, err := pki.Open(c.tls[revoke.who], nil)
		if err != nil {
			t.Fatal(err)
		}
		ender := map[string]*Node{"origin": origin, "mirror": mirror}[revoke.ender]
		other := map[string]*Node{"origin": mirror, "mirror": origin}[revoke.ender]
		base, otherBase := ender.tlsSrc.RevokedSessionsEnded(), other.tlsSrc.RevokedSessionsEnded()
		writeCRL(s.Leaf().SerialNumber)
		waitEnded(ender, base+1)
		after := bytes.Repeat([]byte{byte(0x20 + i)}, bs)
		if err := origin.Write(ctx, "vol", after, int64(11+2*i)*bs); !errors.Is(err, ErrNoQuorum) {
			t.Fatalf("quorum write after revoking %s: %v, want ErrNoQuorum", revoke.who, err)
		}
		if mirrorHas(int64(11+2*i), after) {
			t.Fatalf("a write reached the mirror after %s was revoked", revoke.who)
		}
		if got := other.tlsSrc.RevokedSessionsEnded(); got != otherBase {
			t.Fatalf("%s, the revoked node, ended %d sessions of its own", revoke.who, got-otherBase)
		}
		writeCRL()
	}
}
