package route

import (
	"testing"
)

// TestSpillToUncappedMirror: a mirror of unknown capacity (0) takes
// spill-over without limit. The spill computed its room as
// int32(+Inf), which is −2^31 on amd64, so nothing moved and the capped
// mirror was reported overloaded although a candidate had headroom; an
// entry whose demand is tiny beside the excess needed more slots than
// int32 holds and stopped likewise.
func TestSpillToUncappedMirror(t *testing.T) {
	for _, tt := range []struct {
		name   string
		rtt    map[pathKey]float64
		cap1   float64
		cap2   float64
		demand []float64
		// want: req/s left on mirror 1 (the cap, 0.8 × cap1).
		want float64
	}{
		{name: "uncapped destination", rtt: map[pathKey]float64{{1, 1}: 10, {1, 2}: 40},
			cap1: 100, demand: []float64{200}, want: 80},
		{name: "huge destination", rtt: map[pathKey]float64{{1, 1}: 10, {1, 2}: 40},
			cap1: 100, cap2: 1e300, demand: []float64{200}, want: 80},
		{name: "tiny entry first", rtt: map[pathKey]float64{{1, 1}: 10, {1, 2}: 10.5, {2, 1}: 10, {2, 2}: 90},
			cap1: 1e6, demand: []float64{1e-9, 1e6}, want: 0.8e6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var regions []RegionID
			for r := range tt.demand {
				regions = append(regions, RegionID(r+1))
			}
			w := newWorld(regions, []MirrorID{1, 2}, func(r RegionID, m MirrorID) float64 { return tt.rtt[pathKey{r, m}] })
			w.mirror(1).Capacity = tt.cap1
			w.mirror(2).Capacity = tt.cap2
			w.resources[0].Demand = tt.demand
			r := newRunner(t, Config{}, w)
			for i := range 5 {
				res := r.step()
				if len(res.Overloaded) != 0 {
					t.Fatalf("step %d: overloaded %v although mirror 2 has room", i, res.Overloaded)
				}
				load := 0.0
				for j, rt := range res.Routes {
					load += tt.demand[j] * share(rt, 1, 1024)
				}
				if load > tt.want+1e-6 || load < tt.want-tt.demand[len(tt.demand)-1]/1024 {
					t.Fatalf("step %d: %.6g req/s on mirror 1, want %.6g", i, load, tt.want)
				}
				if i > 0 && res.MovedSlots != 0 {
					t.Fatalf("step %d: %d slots moved in steady state", i, res.MovedSlots)
				}
			}
		})
	}
}
