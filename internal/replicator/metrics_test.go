package replicator

import (
	"maps"
	"path/filepath"
	"slices"
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

// seriesOf returns the label sets ("volume/peer/third") of the series of
// the named metric a registry exports.
func seriesOf(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			third := l["result"] + l["mode"]
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			out[l["volume"]+"/"+l["peer"]+"/"+third] = v
		}
	}
	return out
}

// A retired dynamic mirror's series (its cycle counters and transfer
// gauges) are removed when it is retired, unless another mirror of the
// volume at the same peer (configured, or dynamic to another remote
// volume) still uses them; a mirror restarted with a changed interval
// keeps its counts, and one added again starts at 0. Before, every
// retired mirror's series stayed exported for the life of the agent.
func TestRetiredDynamicMirrorSeriesRemoved(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "prim.img")
	makeImage(t, img, 16, 4096, 1)
	peer := func(name string) PeerConfig { return PeerConfig{Name: name, Addr: "127.0.0.1:1"} }
	reg := prometheus.NewPedanticRegistry()
	n, err := NewNode(Config{Node: "n", TLS: certs(t, dir, "n")["n"], Logger: quietLogger(), Registerer: reg,
		Peers:   []PeerConfig{peer("p1"), peer("p2"), peer("p3")},
		Volumes: []VolumeConfig{{Name: "prim", Path: img, Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "p1"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	set := func(ms ...MirrorConfig) {
		t.Helper()
		if err := n.SetDynamicMirrors("prim", ms); err != nil {
			t.Fatal(err)
		}
	}
	// What pushes to p2 and p3 would leave: cycles counted, transfers
	// published.
	transfer := func(p string) {
		n.metrics.cycles.WithLabelValues("prim", p, "ok").Add(3)
		newTracker(n.metrics, "prim", p, ModeFull, 4096, nil, nil).finish()
	}
	check := func(what string, cycles map[string]float64, transfers []string) {
		t.Helper()
		if got := seriesOf(t, reg, "replicator_cycles_total"); !maps.Equal(got, cycles) {
			t.Errorf("%s: replicator_cycles_total %v, want %v", what, got, cycles)
		}
		for _, name := range []string{"replicator_transfer_done_bytes", "replicator_transfer_total_bytes",
			"replicator_transfer_rate_bytes_per_second", "replicator_transfer_eta_seconds"} {
			got := slices.Sorted(maps.Keys(seriesOf(t, reg, name)))
			if !slices.Equal(got, transfers) {
				t.Errorf("%s: %s series %v, want %v", what, name, got, transfers)
			}
		}
	}
	static := map[string]float64{"prim/p1/ok": 0, "prim/p1/error": 0}
	with := func(m map[string]float64, kv ...any) map[string]float64 {
		out := maps.Clone(m)
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1].(float64)
		}
		return out
	}

	set(MirrorConfig{Peer: "p2", Interval: time.Hour}, MirrorConfig{Peer: "p3", Interval: time.Hour},
		MirrorConfig{Peer: "p3", Volume: "other", Interval: time.Hour})
	transfer("p2")
	transfer("p3")
	check("three dynamic mirrors", with(static, "prim/p2/ok", 3.0, "prim/p2/error", 0.0, "prim/p3/ok", 3.0, "prim/p3/error", 0.0),
		[]string{"prim/p2/full", "prim/p3/full"})

	// p3/other restarts with a changed interval; p2 and p3/prim retire.
	set(MirrorConfig{Peer: "p3", Volume: "other", Interval: time.Minute})
	check("p2 retired, p3 still mirrored", with(static, "prim/p3/ok", 3.0, "prim/p3/error", 0.0), []string{"prim/p3/full"})

	set()
	check("every dynamic mirror retired", static, nil)

	set(MirrorConfig{Peer: "p2", Interval: time.Hour})
	check("p2 added again", with(static, "prim/p2/ok", 0.0, "prim/p2/error", 0.0), nil)
}
