package replicator

import (
	"context"
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/pki"
)

// TestRevokedPeerRefused: a CRL written while the nodes run (no restart)
// shuts a revoked node out in either direction: a primary refuses to
// push to a revoked mirror (the client verifies the server), a mirror
// refuses a revoked primary (the server verifies the client).
func TestRevokedPeerRefused(t *testing.T) {
	c := newCluster(t, "origin", "mirror")
	crl := filepath.Join(c.dir, "ca.crl")
	writeCRL := func(serials ...*big.Int) {
		t.Helper()
		b, err := testCA.Revoke(nil, serials, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(crl, 0o644, b); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL()
	serial := map[string]*big.Int{}
	for n, f := range c.tls {
		f.CRL = crl
		c.tls[n] = f
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
