package route

import "time"

// RegionRTT is what one evaluation's routes give a client region: the
// path RTT its traffic goes over, against the best it could have.
type RegionRTT struct {
	Region RegionID
	// Routes counts the region's routes with a table and a measured path
	// to at least one of its mirrors; the means below are over them.
	Routes int
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
// in.Regions, in that order. Every resource counts once, whatever its
// demand: the mean is over routes, not requests.
func RegionLatency(in *Input, res *Result) []RegionRTT {
	type pk struct {
		r RegionID
		m MirrorID
	}
	paths := make(map[pk]*Path, len(in.Paths))
	for i := range in.Paths {
		p := &in.Paths[i]
		paths[pk{p.Region, p.Mirror}] = p
	}
	up := make(map[MirrorID]bool, len(in.Mirrors))
	for _, m := range in.Mirrors {
		up[m.ID] = m.Up
	}
	type acc struct {
		n            int
		routed, best float64 // seconds
	}
	sums := make(map[RegionID]*acc, len(in.Regions))
	for _, r := range in.Regions {
		sums[r] = &acc{}
	}
	byID := make(map[ResourceID]*Resource, len(in.Resources))
	for i := range in.Resources {
		byID[in.Resources[i].ID] = &in.Resources[i]
	}
	for i := range res.Routes {
		rt := &res.Routes[i]
		a := sums[rt.Region]
		if a == nil || len(rt.Weights) == 0 {
			continue
		}
		var w, s float64
		for m, slots := range rt.Weights {
			if p := paths[pk{rt.Region, m}]; p != nil && slots > 0 {
				w += float64(slots)
				s += float64(slots) * p.RTT.Seconds()
			}
		}
		if w == 0 {
			continue
		}
		routed := s / w
		best := routed
		if rs := byID[rt.Resource]; rs != nil {
			for _, rep := range rs.Replicas {
				p := paths[pk{rt.Region, rep.Mirror}]
				if rep.InSync && up[rep.Mirror] && p != nil && p.Up && p.RTT.Seconds() < best {
					best = p.RTT.Seconds()
				}
			}
		}
		a.n++
		a.routed += routed
		a.best += best
	}
	out := make([]RegionRTT, 0, len(in.Regions))
	for _, r := range in.Regions {
		a := sums[r]
		x := RegionRTT{Region: r, Routes: a.n}
		if a.n > 0 {
			x.Routed = time.Duration(a.routed / float64(a.n) * float64(time.Second))
			x.Best = time.Duration(a.best / float64(a.n) * float64(time.Second))
		}
		out = append(out, x)
	}
	return out
}
