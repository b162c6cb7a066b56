package route

import (
	"math"
	"reflect"
	"time"
	"unsafe"
)

// RegionRTT is what one evaluation's routes give a client region: the
// path RTT its traffic goes over, against the best it could have.
type RegionRTT struct {
	Region RegionID
	// Routes counts the region's routes with a table and a measured path
	// to at least one of its mirrors; the means below are over them.
	Routes int
	// Demand is those routes' demand from the region (requests/s). When
	// it is positive the means are weighted by each route's demand — the
	// latency the region's requests get; routes of unknown demand then
	// weigh nothing. Without any, each route counts once.
	Demand float64
	// Routed is the mean over those routes of the slot-weighted RTT of the
	// paths to the mirrors in the table (mirrors without a measured path
	// left out of the weighting).
	Routed time.Duration
	// Best is the mean over the same routes of the lowest RTT among the
	// resource's routable copies (in sync, mirror up, path up); a route
	// with none counts at its routed RTT. Routed above Best is what
	// damping, capacity spill-over, panic spreading and the other cost
	// terms (load, transfer, loss) cost in latency.
	Best time.Duration
}

// RegionLatency summarizes res against the paths of in, per region of
// in.Regions, in that order; in must be what res was computed from (an
// input Step would refuse is refused here too). The means are over
// requests where the resources' demand is known, over routes where not
// (RegionRTT.Demand).
func RegionLatency(in *Input, res *Result) ([]RegionRTT, error) {
	// The positions Step validated with: dense tables, since one tick
	// holds hundreds of thousands of routes and map lookups per path would
	// cost more than the route computation.
	ix, err := in.validate()
	if err != nil {
		return nil, err
	}
	nR, nM := len(in.Regions), len(in.Mirrors)
	// rtt[r*nM+m] in seconds, -1 without a path; pathUp its probe health.
	rtt := make([]float64, nR*nM)
	pathUp := make([]bool, nR*nM)
	for k, pi := range ix.path {
		rtt[k] = -1
		if pi > 0 {
			p := &in.Paths[pi-1]
			rtt[k], pathUp[k] = p.RTT.Seconds(), p.Up
		}
	}
	type acc struct {
		n              int
		routed, best   float64 // seconds, summed over routes
		demand         float64 // requests/s
		dRouted, dBest float64 // seconds × requests/s
	}
	sums := make([]acc, nR)
	byID := make(map[ResourceID]*Resource, len(in.Resources))
	for i := range in.Resources {
		byID[in.Resources[i].ID] = &in.Resources[i]
	}
	// Weight sets are shared by many routes: each is flattened to mirror
	// positions once, keyed by the map's identity.
	type entry struct {
		m     int
		slots float64
	}
	flat := map[unsafe.Pointer][]entry{}
	var lastKey unsafe.Pointer
	var lastES []entry
	flatten := func(w map[MirrorID]uint32) []entry {
		key := reflect.ValueOf(w).UnsafePointer()
		if key == lastKey {
			return lastES
		}
		es, ok := flat[key]
		if ok {
			lastKey, lastES = key, es
			return es
		}
		es = make([]entry, 0, len(w))
		for m, slots := range w {
			if i := ix.pos(m); i >= 0 && slots > 0 {
				es = append(es, entry{i, float64(slots)})
			}
		}
		flat[key] = es
		lastKey, lastES = key, es
		return es
	}
	// Routes come resource-major in the input's order (Result.Routes):
	// positions then need no lookups.
	ordered := nR > 0 && len(res.Routes) == len(in.Resources)*nR
	var lastRes ResourceID
	var rs *Resource
	for i := range res.Routes {
		rt := &res.Routes[i]
		if len(rt.Weights) == 0 {
			continue
		}
		var r int
		if ordered && in.Regions[i%nR] == rt.Region && in.Resources[i/nR].ID == rt.Resource {
			r, rs, lastRes = i%nR, &in.Resources[i/nR], rt.Resource
		} else {
			var ok bool
			if r, ok = ix.region[rt.Region]; !ok {
				continue
			}
			if rs == nil || rt.Resource != lastRes {
				rs, lastRes = byID[rt.Resource], rt.Resource
			}
		}
		var w, s float64
		for _, e := range flatten(rt.Weights) {
			if v := rtt[r*nM+e.m]; v >= 0 {
				w += e.slots
				s += e.slots * v
			}
		}
		if w == 0 {
			continue
		}
		routed := s / w
		best := routed
		if rs != nil {
			for _, rep := range rs.Replicas {
				m := ix.pos(rep.Mirror)
				if m < 0 || !rep.InSync || !in.Mirrors[m].Up {
					continue
				}
				if k := r*nM + m; pathUp[k] && rtt[k] >= 0 && rtt[k] < best {
					best = rtt[k]
				}
			}
		}
		a := &sums[r]
		a.n++
		a.routed += routed
		a.best += best
		if rs != nil && r < len(rs.Demand) && rs.Demand[r] > 0 {
			d := rs.Demand[r]
			a.demand += d
			a.dRouted += d * routed
			a.dBest += d * best
		}
	}
	out := make([]RegionRTT, 0, nR)
	for i, r := range in.Regions {
		a := sums[i]
		x := RegionRTT{Region: r, Routes: a.n, Demand: a.demand}
		switch {
		case a.demand > 0:
			x.Routed, x.Best = seconds(a.dRouted/a.demand), seconds(a.dBest/a.demand)
		case a.n > 0:
			x.Routed, x.Best = seconds(a.routed/float64(a.n)), seconds(a.best/float64(a.n))
		}
		out = append(out, x)
	}
	return out, nil
}

// seconds rounds to the nanosecond (a weighted mean of whole
// milliseconds is not one below them).
func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
