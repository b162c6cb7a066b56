package route

import (
	"errors"
	"testing"
	"time"
)

func TestRegionLatency(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	base := func() *Input {
		return &Input{
			Now:     t0,
			Regions: []RegionID{1, 2},
			Mirrors: []Mirror{{ID: 10, Up: true}, {ID: 20, Up: true}, {ID: 30, Up: true}},
			Paths: []Path{
				{Region: 1, Mirror: 10, RTT: ms(10), Up: true},
				{Region: 1, Mirror: 20, RTT: ms(30), Up: true},
				{Region: 2, Mirror: 20, RTT: ms(5), Up: true},
			},
			Resources: []Resource{{ID: 1, Replicas: []Replica{{10, true}, {20, true}, {30, true}}}},
		}
	}
	for _, tc := range []struct {
		name         string
		mutate       func(*Input)
		routes       []Route
		routed, best [2]time.Duration
		counted      [2]int
	}{
		{"all on the far copy", nil,
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{20: 1024}}},
			[2]time.Duration{ms(30), 0}, [2]time.Duration{ms(10), 0}, [2]int{1, 0}},
		{"split evenly", nil,
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{10: 512, 20: 512}}},
			[2]time.Duration{ms(20), 0}, [2]time.Duration{ms(10), 0}, [2]int{1, 0}},
		{"the near copy out of sync is not the best", func(in *Input) { in.Resources[0].Replicas[0].InSync = false },
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{20: 1024}}},
			[2]time.Duration{ms(30), 0}, [2]time.Duration{ms(30), 0}, [2]int{1, 0}},
		{"nor a copy whose mirror is down", func(in *Input) { in.Mirrors[0].Up = false },
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{20: 1024}}},
			[2]time.Duration{ms(30), 0}, [2]time.Duration{ms(30), 0}, [2]int{1, 0}},
		{"a mirror without a measured path is left out", nil,
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{30: 512, 10: 512}}},
			[2]time.Duration{ms(10), 0}, [2]time.Duration{ms(10), 0}, [2]int{1, 0}},
		{"only unmeasured mirrors, or no table: not counted", nil,
			[]Route{{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{30: 1024}}, {Resource: 1, Region: 2}},
			[2]time.Duration{}, [2]time.Duration{}, [2]int{0, 0}},
		{"regions apart, routes of a region averaged",
			func(in *Input) {
				in.Resources = append(in.Resources, Resource{ID: 2, Replicas: []Replica{{10, true}}})
			},
			[]Route{
				{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{20: 1024}},
				{Resource: 2, Region: 1, Weights: map[MirrorID]uint32{10: 1024}},
				{Resource: 1, Region: 2, Weights: map[MirrorID]uint32{20: 1024}},
			},
			[2]time.Duration{ms(20), ms(5)}, [2]time.Duration{ms(10), ms(5)}, [2]int{2, 1}},
		{"demand weights the mean: the region's requests, not its routes",
			func(in *Input) {
				in.Resources[0].Replicas = []Replica{{20, true}}
				in.Resources[0].Demand = []float64{3, 0}
				in.Resources = append(in.Resources, Resource{ID: 2, Replicas: []Replica{{10, true}}, Demand: []float64{1, 0}})
			},
			[]Route{
				{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{20: 1024}},
				{Resource: 2, Region: 1, Weights: map[MirrorID]uint32{10: 1024}},
				{Resource: 1, Region: 2, Weights: map[MirrorID]uint32{20: 1024}},
			},
			// Region 1: (3×30 + 1×10) / 4 routed, (3×30 + 1×10) / 4 best
			// (resource 1's only copy is the far one); region 2 has no
			// demand: its one route counts once.
			[2]time.Duration{ms(25), ms(5)}, [2]time.Duration{ms(25), ms(5)}, [2]int{2, 1}},
		{"a route of unknown demand weighs nothing beside known demand",
			func(in *Input) {
				in.Resources[0].Demand = []float64{2, 0}
				in.Resources = append(in.Resources, Resource{ID: 2, Replicas: []Replica{{20, true}}})
			},
			[]Route{
				{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{10: 1024}},
				{Resource: 2, Region: 1, Weights: map[MirrorID]uint32{20: 1024}},
			},
			[2]time.Duration{ms(10), 0}, [2]time.Duration{ms(10), 0}, [2]int{2, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			if tc.mutate != nil {
				tc.mutate(in)
			}
			got, err := RegionLatency(in, &Result{Routes: tc.routes})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].Region != 1 || got[1].Region != 2 {
				t.Fatalf("regions %+v", got)
			}
			for i, g := range got {
				if g.Routes != tc.counted[i] || g.Routed != tc.routed[i] || g.Best != tc.best[i] {
					t.Errorf("region %d: %+v, want routes %d routed %v best %v", g.Region, g, tc.counted[i], tc.routed[i], tc.best[i])
				}
			}
		})
	}
}

// TestRegionLatencyThroughDamping: after the near mirror gets faster,
// the routes stay on the old one while the switch is confirmed, and the
// gap between routed and best is what that costs; once the slots have
// moved the two meet.
func TestRegionLatencyThroughDamping(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 50, 2: 80}[m] })
	r := newRunner(t, Config{}, w)
	at := func() RegionRTT {
		got, err := RegionLatency(r.w.input(r.now.Add(-2*time.Second)), r.res)
		if err != nil {
			t.Fatal(err)
		}
		return got[0]
	}
	r.step()
	if g := at(); g.Routed != 50*time.Millisecond || g.Best != 50*time.Millisecond {
		t.Fatalf("installed: %+v", g)
	}
	w.set(1, 2, 20)
	r.step()
	if g := at(); g.Routed != 50*time.Millisecond || g.Best != 20*time.Millisecond {
		t.Fatalf("confirming: %+v, want routed 50 ms against best 20 ms", g)
	}
	for range 30 {
		r.step()
	}
	if g := at(); g.Routed != 20*time.Millisecond || g.Best != 20*time.Millisecond {
		t.Fatalf("settled: %+v", g)
	}
}

// TestRegionLatencySparseAndUnordered: mirror IDs too large for the dense
// table and routes not in the input's order give what small IDs in order
// give.
func TestRegionLatencySparseAndUnordered(t *testing.T) {
	mk := func(big MirrorID, reversed bool) []RegionRTT {
		in := &Input{
			Now:     t0,
			Regions: []RegionID{1, 2},
			Mirrors: []Mirror{{ID: big + 1, Up: true}, {ID: big + 2, Up: true}},
			Paths: []Path{
				{Region: 1, Mirror: big + 1, RTT: 10 * time.Millisecond, Up: true},
				{Region: 1, Mirror: big + 2, RTT: 40 * time.Millisecond, Up: true},
				{Region: 2, Mirror: big + 2, RTT: 7 * time.Millisecond, Up: true},
			},
			Resources: []Resource{
				{ID: 1, Replicas: []Replica{{big + 1, true}, {big + 2, true}}},
				{ID: 2, Replicas: []Replica{{big + 2, true}}},
			},
		}
		routes := []Route{
			{Resource: 1, Region: 1, Weights: map[MirrorID]uint32{big + 2: 768, big + 1: 256}},
			{Resource: 1, Region: 2, Weights: map[MirrorID]uint32{big + 2: 1024}},
			{Resource: 2, Region: 1, Weights: map[MirrorID]uint32{big + 2: 1024}},
			{Resource: 2, Region: 2, Weights: map[MirrorID]uint32{big + 2: 1024}},
		}
		if reversed {
			for i, j := 0, len(routes)-1; i < j; i, j = i+1, j-1 {
				routes[i], routes[j] = routes[j], routes[i]
			}
		}
		got, err := RegionLatency(in, &Result{Routes: routes})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	want := mk(0, false)
	// Region 1: (0.75·40 + 0.25·10 = 32.5) and 40, best 10 and 40.
	if want[0].Routes != 2 || want[0].Routed != 36250*time.Microsecond || want[0].Best != 25*time.Millisecond {
		t.Fatalf("region 1: %+v", want[0])
	}
	for _, big := range []MirrorID{0, 1 << 20, 1<<32 - 10} {
		for _, rev := range []bool{false, true} {
			if got := mk(big, rev); got[0] != want[0] || got[1] != want[1] {
				t.Errorf("IDs from %d, reversed %v: %+v, want %+v", big, rev, got, want)
			}
		}
	}
}

// TestRegionLatencyRefusesWhatStepRefuses: an input Step would not take
// (a path to a region it does not list) is an error, not a summary.
func TestRegionLatencyRefusesWhatStepRefuses(t *testing.T) {
	in := &Input{Now: t0, Regions: []RegionID{1}, Mirrors: []Mirror{{ID: 1, Up: true}},
		Paths: []Path{{Region: 9, Mirror: 1, RTT: time.Millisecond, Up: true}}}
	if _, err := RegionLatency(in, &Result{}); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("err %v, want ErrInvalidInput", err)
	}
}
