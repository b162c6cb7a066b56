package replicator

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/promdesc/alerttest"
)

// TestAlertCountersStartAtZero: a node exports, at 0, every series of its
// counters the alert rules take the increase or rate of, for the static
// reasons from the start and for each volume and mirror from when it is
// configured or added, so a first corrupt frame, fenced write, verify
// mismatch or failed cycle raises its alert (increase() over a series that
// appears at 1 sees nothing).
func TestAlertCountersStartAtZero(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "prim.img")
	makeImage(t, img, 16, 4096, 1)
	peer := func(name string) PeerConfig { return PeerConfig{Name: name, Addr: "127.0.0.1:1"} }
	reg := prometheus.NewPedanticRegistry()
	n, err := NewNode(Config{Node: "n", TLS: certs(t, dir, "n")["n"], Logger: quietLogger(), Registerer: reg,
		Peers: []PeerConfig{peer("p1"), peer("p2")},
		Volumes: []VolumeConfig{
			{Name: "prim", Path: img, Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "p1"}}},
			{Name: "mir", Path: filepath.Join(dir, "mir.img"), Upstream: "p1"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Added at run time, as the agent does for the controller's tasks.
	if err := n.AddPeer(peer("p3")); err != nil {
		t.Fatal(err)
	}
	if err := n.AddVolume(VolumeConfig{Name: "added", Path: filepath.Join(dir, "added.img"), Role: RoleMirror, Upstream: "p3"}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetDynamicMirrors("prim", []MirrorConfig{{Peer: "p2", Interval: time.Hour}, {Peer: "p3", Interval: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	alerttest.Check(t, alerttest.Want{Values: map[string][]string{
		"volume":                         {"prim", "mir", "added"},
		"replicator_cycles_total/volume": {"prim"}, // the only one with mirrors
		"peer":                           {"p1", "p2", "p3"},
		"replicator_rejected_frames_total/reason": {"corrupt", "protocol"},
	}}, reg, MetricDescs())
}
