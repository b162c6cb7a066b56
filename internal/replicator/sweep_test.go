package replicator

import (
	"context"
	"errors"
	"math"
	"testing"

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
	c.start("m", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), Role: RolePrimary}}})
	cases := []wire.ReadReq{
		{Block: math.MaxUint64, Count: 1},
		{Block: math.MaxUint64 - 99, Count: 200},
		{Block: 1 << 63, Count: 1},
		{Block: 64, Count: 1},
		{Block: 60, Count: 5},
	}
	for _, req := range cases {
		l, _, err := rawSession(t, c, "c", "m", wire.Hello{Op: wire.OpRead, Node: "c", Volume: "vol"})
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
	l, _, err := rawSession(t, c, "c", "m", wire.Hello{Op: wire.OpRead, Node: "c", Volume: "vol"})
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
