package replicator

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// TestHandshakeCap: connections that never finish TLS (anyone who reaches
// the port can open them) hold at most maxHandshakes slots; the next is
// closed at once and counted, and once they go, peers are served again.
func TestHandshakeCap(t *testing.T) {
	c := newCluster(t, "m", "p")
	makeImage(t, c.path("m.img"), 16, bs, 1)
	n := c.start("m", Config{Peers: c.peers("p"), Volumes: []VolumeConfig{{Name: "vol", Path: c.path("m.img"), Role: RolePrimary}}})
	var idle []net.Conn
	defer func() {
		for _, x := range idle {
			x.Close()
		}
	}()
	for range maxHandshakes {
		x, err := net.Dial("tcp", c.addrs["m"])
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, x)
	}
	extra, err := net.Dial("tcp", c.addrs["m"])
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("connection beyond %d pending handshakes: read %v, want it closed (EOF)", maxHandshakes, err)
	}
	if got := testutil.ToFloat64(n.metrics.refusedConns); got != 1 {
		t.Fatalf("replicator_refused_connections_total = %v, want 1", got)
	}
	for _, x := range idle {
		x.Close()
	}
	idle = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, err := rawSession(t, c, "p", "m", wire.Hello{Op: wire.OpRead, Node: "p", Volume: "vol"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a peer after the stalled connections closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
