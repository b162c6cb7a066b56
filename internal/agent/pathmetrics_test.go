package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/probe"
)

// TestPathMetrics: each probed mirror's estimate is exported under its
// name and address: the smoothed RTT, its floor, jitter and loss; a
// mirror that never answered has loss and no latency; an ID without a
// name (a mirror gone from the state) keeps its number; one mirror probed
// over two kinds at one address is one series, not a failed scrape.
func TestPathMetrics(t *testing.T) {
	tbl, err := probe.NewTable(probe.EstimatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	observe := func(tg probe.Target, rtts ...time.Duration) {
		for i, rtt := range rtts {
			r := probe.Result{Target: tg, At: now.Add(time.Duration(i) * time.Second), RTT: rtt}
			if rtt == 0 {
				r.Err = errors.New("timeout")
			}
			if err := tbl.Observe(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	ms := time.Millisecond
	observe(probe.Target{Mirror: 1, Kind: probe.KindUDP, Addr: "192.0.2.1:9461"}, 4*ms, 2*ms, 3*ms, 3*ms)
	observe(probe.Target{Mirror: 1, Kind: probe.KindTCP, Addr: "192.0.2.1:9461"}, 50*ms)
	observe(probe.Target{Mirror: 2, Kind: probe.KindUDP, Addr: "[2001:db8::2]:9461"}, 0, 0, 0)
	observe(probe.Target{Mirror: 7, Kind: probe.KindUDP, Addr: "192.0.2.7:9461"}, 10*ms)

	a := &Agent{compiled: &Compiled{MirrorNames: map[pmaps.MirrorID]string{1: "paris", 2: "lyon"}}}
	m := newPathMetrics(&controlPlane{a: a, probes: tbl})
	if problems, err := testutil.CollectAndLint(m); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 9 {
		// paris and 7: four series each; lyon: loss only; paris's TCP
		// target: none.
		t.Fatalf("%d series (%v), want 9", n, err)
	}
	want := `
# HELP edge_mirror_probe_loss_ratio Share of probes to each mirror that failed, weighted toward recent probes.
# TYPE edge_mirror_probe_loss_ratio gauge
edge_mirror_probe_loss_ratio{address="192.0.2.7:9461",mirror="7"} 0
edge_mirror_probe_loss_ratio{address="[2001:db8::2]:9461",mirror="lyon"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "edge_mirror_probe_loss_ratio"); err != nil {
		// paris's loss depends on which of its two targets came first:
		// checked below.
		if !strings.Contains(err.Error(), "paris") {
			t.Fatal(err)
		}
	}
	got := map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			var mirror string
			for _, l := range s.GetLabel() {
				if l.GetName() == "mirror" {
					mirror = l.GetValue()
				}
			}
			got[mf.GetName()+"/"+mirror] = s.GetGauge().GetValue()
		}
	}
	if _, ok := got["edge_mirror_rtt_seconds/lyon"]; ok {
		t.Error("a mirror that never answered has a latency")
	}
	if v := got["edge_mirror_rtt_min_seconds/7"]; v != 0.010 {
		t.Errorf("mirror 7 floor %v, want 0.010", v)
	}
	// paris: either its UDP estimate (samples 4, 2, 3, 3 ms) or its TCP
	// one (50 ms), whole: never a mix of the two.
	rtt, floor := got["edge_mirror_rtt_seconds/paris"], got["edge_mirror_rtt_min_seconds/paris"]
	switch floor {
	case 0.002:
		if rtt < 0.002 || rtt > 0.004 {
			t.Errorf("paris UDP rtt %v, want within the samples 2–4 ms", rtt)
		}
	case 0.050:
		if rtt != 0.050 {
			t.Errorf("paris TCP rtt %v, want 0.050", rtt)
		}
	default:
		t.Errorf("paris floor %v", floor)
	}
}

// TestPathMetricsWithoutProbes: an agent that does not probe exports none.
func TestPathMetricsWithoutProbes(t *testing.T) {
	if n := testutil.CollectAndCount(newPathMetrics(&controlPlane{a: &Agent{}})); n != 0 {
		t.Fatalf("%d series", n)
	}
}
