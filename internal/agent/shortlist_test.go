package agent

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/probe"
)

// TestSurveyTargets: the shortlist keeps the active mirrors, then the
// never-measured ones, then the healthy ones nearest first, then the
// down ones; the rest is surveyed.
func TestSurveyTargets(t *testing.T) {
	tg := func(id uint32) probe.Target {
		return probe.Target{Mirror: id, Kind: probe.KindUDP, Addr: "192.0.2.1:9"}
	}
	tbl, err := probe.NewTable(probe.EstimatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Mirror i answers in i ms; 5 is down; 9 is never measured.
	for _, id := range []uint32{1, 2, 3, 4, 5, 6, 7, 8} {
		for j := range 3 {
			r := probe.Result{Target: tg(id), At: now.Add(time.Duration(j) * time.Second), RTT: time.Duration(id) * time.Millisecond}
			if id == 5 {
				r.Err, r.RTT = errors.New("timeout"), 0
			}
			if err := tbl.Observe(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	var all []probe.Target
	for id := uint32(1); id <= 9; id++ {
		all = append(all, tg(id))
	}
	ids := func(ts []probe.Target) []uint32 {
		var out []uint32
		for _, t := range ts {
			out = append(out, t.Mirror)
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name   string
		active []uint32
		k      int
		want   []uint32
	}{
		{"fewer targets than k: nothing surveyed", nil, 9, nil},
		{"k 4: the unmeasured one, then the three nearest", nil, 4, []uint32{4, 5, 6, 7, 8}},
		{"the active far mirror counts against k", []uint32{8}, 4, []uint32{3, 4, 5, 6, 7}},
		{"down mirrors after every healthy one", nil, 8, []uint32{5}},
		{"k 1 with two active: only those two probed often", []uint32{7, 8}, 1, []uint32{1, 2, 3, 4, 5, 6, 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var active []probe.Target
			for _, id := range tc.active {
				active = append(active, tg(id))
			}
			if got := ids(surveyTargets(all, active, tbl, tc.k)); !slices.Equal(got, tc.want) {
				t.Fatalf("surveyed %v, want %v", got, tc.want)
			}
		})
	}
}
