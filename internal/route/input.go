package route

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/premirror/premirror/internal/chash"
	"github.com/premirror/premirror/internal/probe"
)

// MirrorID names a mirror in route tables; 0 (chash.None) is reserved.
type MirrorID = uint32

// RegionID names a client region (the data plane's LPM value).
type RegionID = uint32

// ResourceID names a resource (a VIP's service).
type ResourceID = uint32

// ErrInvalidInput wraps every input validation failure; the message names
// the offending field.
var ErrInvalidInput = errors.New("invalid route input")

// Input is everything the controller knows at one evaluation.
type Input struct {
	// Now is the evaluation time; it must not go backwards between steps.
	Now time.Time
	// Regions are the client regions to route; every resource is routed in
	// every region.
	Regions []RegionID
	// Mirrors are all mirror hosts.
	Mirrors []Mirror
	// Paths are the probe estimates per (region, mirror). A region's paths
	// come from its edges' probes (aggregate several edges before). A
	// missing path means the pair is not a candidate (not shortlisted or
	// not yet measured).
	Paths []Path
	// Resources to route.
	Resources []Resource
}

// Mirror is a mirror host's self-reported state.
type Mirror struct {
	ID MirrorID
	// Up is the host-level health (agent alive, service up). A mirror that
	// is not Up is down for every region.
	Up bool
	// Capacity is what the mirror can serve, in the unit of Resource.Demand
	// (requests/s); 0 means unknown: no capacity cap.
	Capacity float64
	// Utilization is the measured ρ (busy share) feeding the queueing term.
	Utilization float64
	// ServiceTime is the mean service time; 0 means Config.DefaultServiceTime.
	ServiceTime time.Duration
}

// Path is the estimate of one (region, mirror) path.
type Path struct {
	Region RegionID
	Mirror MirrorID
	// RTT is the smoothed round-trip estimate (probe.Estimate.RTT, the
	// peak-EWMA): what candidates are ranked by.
	RTT time.Duration
	// Recent is the latest filtered sample (probe.Estimate.Median); 0 means
	// RTT. The incumbent of a route is judged by the lower of the two, so
	// a spike that the peak-EWMA still remembers does not count as a fresh
	// failure at every later evaluation (see Config.PeakIncumbent).
	Recent time.Duration
	// Jitter and Loss as probe.Estimate reports them.
	Jitter time.Duration
	Loss   float64
	// Hops is the network hop count if known.
	Hops int
	// Bandwidth in bits/s; 0 means Config.DefaultBandwidth.
	Bandwidth float64
	// Up is the rise/fall probe health.
	Up bool
}

// PathFromEstimate converts a probe estimate; ok is false while the
// estimator has not decided the path's health (too few probes), so a
// starting agent adds no path rather than a failed one.
func PathFromEstimate(region RegionID, mirror MirrorID, e probe.Estimate) (p Path, ok bool) {
	if e.Health == probe.HealthUnknown || e.Samples == 0 {
		return Path{}, false
	}
	return Path{Region: region, Mirror: mirror, RTT: e.RTT, Recent: e.Median, Jitter: e.Jitter, Loss: e.Loss, Up: e.Health == probe.HealthUp}, true
}

// Profile describes a resource's requests.
type Profile struct {
	// RoundTrips per request (handshakes plus request/response turns);
	// 0 means 1.
	RoundTrips float64
	// Bytes transferred per request (the response size).
	Bytes float64
}

// Replica is a copy of a resource on a mirror.
type Replica struct {
	Mirror MirrorID
	// InSync: only a replica in sync within its lag bound is routable.
	InSync bool
}

// Resource is one routed resource.
type Resource struct {
	ID       ResourceID
	Profile  Profile
	Replicas []Replica
	// Demand per region, aligned with Input.Regions, in requests/s; empty
	// means unknown (no capacity accounting for this resource).
	Demand []float64
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidInput, fmt.Sprintf(format, a...))
}

// indexes are the dense positions built while validating.
type indexes struct {
	region map[RegionID]int
	mirror map[MirrorID]int
	// path[r*nMirrors+m] is the index in Input.Paths + 1 (0: none).
	path []int32
	// dense[id] is the mirror's index + 1 when IDs are small enough for
	// a slice, which spares the per-route map lookups.
	dense []int32
}

// pos returns the index in Input.Mirrors of m, or -1 when m is not in the
// input (a mirror removed since the previous step).
func (ix *indexes) pos(m MirrorID) int {
	if ix.dense != nil {
		if int(m) < len(ix.dense) {
			return int(ix.dense[m]) - 1
		}
		return -1
	}
	if i, ok := ix.mirror[m]; ok {
		return i
	}
	return -1
}

func (in *Input) validate() (indexes, error) {
	var ix indexes
	if in.Now.IsZero() {
		return ix, invalid("now: zero time")
	}
	ix.region = make(map[RegionID]int, len(in.Regions))
	for i, r := range in.Regions {
		if _, dup := ix.region[r]; dup {
			return ix, invalid("regions[%d] %d: duplicate", i, r)
		}
		ix.region[r] = i
	}
	ix.mirror = make(map[MirrorID]int, len(in.Mirrors))
	for i, m := range in.Mirrors {
		switch {
		case m.ID == chash.None:
			return ix, invalid("mirrors[%d].id: %d is reserved", i, m.ID)
		case !finite(m.Capacity) || m.Capacity < 0:
			return ix, invalid("mirrors[%d].capacity %v: must be ≥ 0", i, m.Capacity)
		case !finite(m.Utilization) || m.Utilization < 0:
			return ix, invalid("mirrors[%d].utilization %v: must be ≥ 0", i, m.Utilization)
		case m.ServiceTime < 0:
			return ix, invalid("mirrors[%d].service_time %v: must be ≥ 0", i, m.ServiceTime)
		}
		if _, dup := ix.mirror[m.ID]; dup {
			return ix, invalid("mirrors[%d].id %d: duplicate", i, m.ID)
		}
		ix.mirror[m.ID] = i
	}
	var maxID MirrorID
	for _, m := range in.Mirrors {
		maxID = max(maxID, m.ID)
	}
	if maxID < 1<<16 {
		ix.dense = make([]int32, maxID+1)
		for i, m := range in.Mirrors {
			ix.dense[m.ID] = int32(i + 1)
		}
	}
	nm := len(in.Mirrors)
	ix.path = make([]int32, len(in.Regions)*nm)
	for i, p := range in.Paths {
		r, okR := ix.region[p.Region]
		m, okM := ix.mirror[p.Mirror]
		switch {
		case !okR:
			return ix, invalid("paths[%d].region %d: not in regions", i, p.Region)
		case !okM:
			return ix, invalid("paths[%d].mirror %d: not in mirrors", i, p.Mirror)
		case p.RTT < 0:
			return ix, invalid("paths[%d].rtt %v: must be ≥ 0", i, p.RTT)
		case p.Recent < 0:
			return ix, invalid("paths[%d].recent %v: must be ≥ 0", i, p.Recent)
		case p.Jitter < 0:
			return ix, invalid("paths[%d].jitter %v: must be ≥ 0", i, p.Jitter)
		case !finite(p.Loss) || p.Loss < 0 || p.Loss > 1:
			return ix, invalid("paths[%d].loss %v: must be in [0, 1]", i, p.Loss)
		case p.Hops < 0:
			return ix, invalid("paths[%d].hops %d: must be ≥ 0", i, p.Hops)
		case !finite(p.Bandwidth) || p.Bandwidth < 0:
			return ix, invalid("paths[%d].bandwidth %v: must be ≥ 0", i, p.Bandwidth)
		}
		k := r*nm + m
		if ix.path[k] != 0 {
			return ix, invalid("paths[%d] (%d, %d): duplicate", i, p.Region, p.Mirror)
		}
		ix.path[k] = int32(i + 1)
	}
	seen := make(map[ResourceID]bool, len(in.Resources))
	rep := make(map[MirrorID]bool)
	for i, res := range in.Resources {
		if seen[res.ID] {
			return ix, invalid("resources[%d].id %d: duplicate", i, res.ID)
		}
		seen[res.ID] = true
		pr := res.Profile
		switch {
		case !finite(pr.RoundTrips) || pr.RoundTrips < 0:
			return ix, invalid("resources[%d].profile.round_trips %v: must be ≥ 0", i, pr.RoundTrips)
		case !finite(pr.Bytes) || pr.Bytes < 0:
			return ix, invalid("resources[%d].profile.bytes %v: must be ≥ 0", i, pr.Bytes)
		case len(res.Demand) != 0 && len(res.Demand) != len(in.Regions):
			return ix, invalid("resources[%d].demand: %d values for %d regions", i, len(res.Demand), len(in.Regions))
		}
		for j, d := range res.Demand {
			if !finite(d) || d < 0 {
				return ix, invalid("resources[%d].demand[%d] %v: must be ≥ 0", i, j, d)
			}
		}
		clear(rep)
		for j, r := range res.Replicas {
			if _, ok := ix.mirror[r.Mirror]; !ok {
				return ix, invalid("resources[%d].replicas[%d].mirror %d: not in mirrors", i, j, r.Mirror)
			}
			if rep[r.Mirror] {
				return ix, invalid("resources[%d].replicas[%d].mirror %d: duplicate", i, j, r.Mirror)
			}
			rep[r.Mirror] = true
		}
	}
	return ix, nil
}

// MergeEdgePaths combines the estimates of several edges of one region to
// the same mirror into the region's path: median RTT, Recent and jitter,
// mean loss, the smallest hop count, and up while at least half the edges
// see it up — one edge whose prober breaks does not take a mirror away
// from the whole region, while a mirror every edge loses is down. The
// paths must share Region and Mirror; ok is false for none.
func MergeEdgePaths(ps []Path) (p Path, ok bool) {
	if len(ps) == 0 {
		return Path{}, false
	}
	med := func(get func(Path) time.Duration) time.Duration {
		v := make([]time.Duration, len(ps))
		for i, x := range ps {
			v[i] = get(x)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		// The midpoint without the sum, which could wrap negative on
		// large estimates (an edge's word): v is sorted.
		lo, hi := v[len(v)/2-1], v[len(v)/2]
		return lo + (hi-lo)/2
	}
	p = Path{Region: ps[0].Region, Mirror: ps[0].Mirror, Hops: ps[0].Hops, Bandwidth: ps[0].Bandwidth}
	p.RTT = med(func(x Path) time.Duration { return x.RTT })
	p.Recent = med(func(x Path) time.Duration { return x.Recent })
	p.Jitter = med(func(x Path) time.Duration { return x.Jitter })
	up := 0
	for _, x := range ps {
		p.Loss += x.Loss / float64(len(ps))
		p.Hops = min(p.Hops, x.Hops)
		p.Bandwidth = max(p.Bandwidth, x.Bandwidth)
		if x.Up {
			up++
		}
	}
	p.Up = 2*up >= len(ps)
	return p, true
}
