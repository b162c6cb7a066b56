package route

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"
)

// State is everything a Step remembers for the next: the committed tables,
// the damping counters, and since when each mirror, path and replica has
// been routable (for slow start). A State is immutable; Step returns a new
// one. Snapshot and Restore carry it across a controller fail-over.
type State struct {
	now       int64 // unix ns of the step that made it; 0 = empty state
	slots     int
	regions   []RegionID
	regIdx    map[RegionID]int
	resources []resState
	resIdx    map[ResourceID]int
	routes    []*routeState // resource-major, len(resources)·len(regions)
	mirrorUp  map[MirrorID]int64
	pathUp    map[pathKey]int64
	saturated map[MirrorID]bool // projected load at the capacity cap
}

type pathKey struct {
	r RegionID
	m MirrorID
}

type resState struct {
	id   ResourceID
	sync []repSince // in-sync replicas, sorted by mirror
}

// Weights returns the committed weights of (resource, region), nil when
// there is no such route.
func (s *State) Weights(resource ResourceID, region RegionID) map[MirrorID]uint32 {
	if s == nil {
		return nil
	}
	i, ok1 := s.resIdx[resource]
	r, ok2 := s.regIdx[region]
	if !ok1 || !ok2 || s.routes[i*len(s.regions)+r] == nil {
		return nil
	}
	return s.routes[i*len(s.regions)+r].w
}

// Snapshot is the serializable form of a State (encoding/json ready).
type Snapshot struct {
	Now       time.Time          `json:"now"`
	Slots     int                `json:"slots"`
	Regions   []RegionID         `json:"regions"`
	Resources []ResourceSnapshot `json:"resources"`
	Mirrors   []SinceSnapshot    `json:"mirrors_up"`
	Paths     []SinceSnapshot    `json:"paths_up"`
	// Saturated mirrors had their projected load at the capacity cap.
	Saturated []MirrorID `json:"saturated,omitempty"`
}

// ResourceSnapshot is one resource's part of a Snapshot.
type ResourceSnapshot struct {
	ID ResourceID `json:"id"`
	// InSync lists the in-sync replicas (Region unused).
	InSync []SinceSnapshot `json:"in_sync"`
	// Routes are aligned with Snapshot.Regions.
	Routes []RouteSnapshot `json:"routes"`
}

// SinceSnapshot records since when something has been routable; a zero
// Since means "before the state's history began".
type SinceSnapshot struct {
	Region RegionID  `json:"region,omitempty"`
	Mirror MirrorID  `json:"mirror"`
	Since  time.Time `json:"since,omitzero"`
}

// RouteSnapshot is one route's table and damping counters.
type RouteSnapshot struct {
	Weights    map[MirrorID]uint32 `json:"weights,omitempty"`
	Goal       map[MirrorID]uint32 `json:"goal,omitempty"`
	Streak     int                 `json:"streak,omitempty"`
	Panic      bool                `json:"panic,omitempty"`
	LastSwitch time.Time           `json:"last_switch,omitzero"`
	Switches   []time.Time         `json:"switches,omitempty"`
}

func toTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func fromTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Snapshot exports s.
func (s *State) Snapshot() Snapshot {
	snap := Snapshot{Now: toTime(s.now), Slots: s.slots, Regions: slices.Clone(s.regions)}
	for m, t := range s.mirrorUp {
		snap.Mirrors = append(snap.Mirrors, SinceSnapshot{Mirror: m, Since: toTime(t)})
	}
	for k, t := range s.pathUp {
		snap.Paths = append(snap.Paths, SinceSnapshot{Region: k.r, Mirror: k.m, Since: toTime(t)})
	}
	bySince := func(a, b SinceSnapshot) int {
		if x := cmp.Compare(a.Region, b.Region); x != 0 {
			return x
		}
		return cmp.Compare(a.Mirror, b.Mirror)
	}
	for m := range s.saturated {
		snap.Saturated = append(snap.Saturated, m)
	}
	slices.Sort(snap.Saturated)
	slices.SortFunc(snap.Mirrors, bySince)
	slices.SortFunc(snap.Paths, bySince)
	nR := len(s.regions)
	for i, rs := range s.resources {
		r := ResourceSnapshot{ID: rs.id, Routes: make([]RouteSnapshot, nR)}
		for _, x := range rs.sync {
			r.InSync = append(r.InSync, SinceSnapshot{Mirror: x.m, Since: toTime(x.since)})
		}
		for j := range nR {
			st := s.routes[i*nR+j]
			if st == nil {
				continue
			}
			rt := RouteSnapshot{Weights: maps.Clone(st.w), Goal: st.goal.weightsMap(), Streak: int(st.streak), Panic: st.panic, LastSwitch: toTime(st.lastSwitch)}
			for _, t := range st.switches {
				rt.Switches = append(rt.Switches, toTime(t))
			}
			r.Routes[j] = rt
		}
		snap.Resources = append(snap.Resources, r)
	}
	return snap
}

func toQV(w map[MirrorID]uint32, slots int, what string) (qv, error) {
	if len(w) == 0 {
		return nil, nil
	}
	ids := make([]MirrorID, 0, len(w))
	n := make([]int32, 0, len(w))
	sum := 0
	for m, k := range w {
		if m == 0 {
			return nil, fmt.Errorf("%s: mirror id 0 is reserved", what)
		}
		if k > uint32(slots) {
			return nil, fmt.Errorf("%s: mirror %d has %d slots of %d", what, m, k, slots)
		}
		ids = append(ids, m)
		n = append(n, int32(k))
		sum += int(k)
	}
	if sum != slots {
		return nil, fmt.Errorf("%s: weights sum to %d, want %d slots", what, sum, slots)
	}
	return fromCounts(ids, n), nil
}

// Restore rebuilds a State from a Snapshot, rejecting inconsistent ones
// (weights not summing to the table size, misaligned routes, …).
func Restore(snap Snapshot) (*State, error) {
	bad := func(format string, a ...any) (*State, error) {
		return nil, fmt.Errorf("%w: snapshot %s", ErrInvalidInput, fmt.Sprintf(format, a...))
	}
	if len(snap.Resources) > 0 && snap.Slots <= 0 {
		return bad("slots %d: must be positive", snap.Slots)
	}
	s := &State{
		now: fromTime(snap.Now), slots: snap.Slots, regions: slices.Clone(snap.Regions),
		regIdx: map[RegionID]int{}, resIdx: map[ResourceID]int{},
		mirrorUp: map[MirrorID]int64{}, pathUp: map[pathKey]int64{},
	}
	if len(snap.Saturated) > 0 {
		s.saturated = map[MirrorID]bool{}
		for _, m := range snap.Saturated {
			s.saturated[m] = true
		}
	}
	for i, r := range snap.Regions {
		if _, dup := s.regIdx[r]; dup {
			return bad("regions[%d] %d: duplicate", i, r)
		}
		s.regIdx[r] = i
	}
	for _, m := range snap.Mirrors {
		s.mirrorUp[m.Mirror] = fromTime(m.Since)
	}
	for _, p := range snap.Paths {
		s.pathUp[pathKey{p.Region, p.Mirror}] = fromTime(p.Since)
	}
	nR := len(snap.Regions)
	s.routes = make([]*routeState, len(snap.Resources)*nR)
	intern := map[string]*routeState{}
	for i, r := range snap.Resources {
		if _, dup := s.resIdx[r.ID]; dup {
			return bad("resources[%d].id %d: duplicate", i, r.ID)
		}
		if len(r.Routes) != nR {
			return bad("resources[%d].routes: %d for %d regions", i, len(r.Routes), nR)
		}
		s.resIdx[r.ID] = i
		rs := resState{id: r.ID}
		for _, x := range r.InSync {
			rs.sync = append(rs.sync, repSince{m: x.Mirror, since: fromTime(x.Since)})
		}
		slices.SortFunc(rs.sync, func(a, b repSince) int { return cmp.Compare(a.m, b.m) })
		s.resources = append(s.resources, rs)
		for j, rt := range r.Routes {
			what := fmt.Sprintf("resources[%d].routes[%d]", i, j)
			q, err := toQV(rt.Weights, snap.Slots, what+".weights")
			if err != nil {
				return bad("%v", err)
			}
			if q == nil {
				continue
			}
			goal, err := toQV(rt.Goal, snap.Slots, what+".goal")
			if err != nil {
				return bad("%v", err)
			}
			st := &routeState{q: q, goal: goal, streak: int32(rt.Streak), panic: rt.Panic, lastSwitch: fromTime(rt.LastSwitch)}
			for _, t := range rt.Switches {
				st.switches = append(st.switches, fromTime(t))
			}
			// Identical routes share one state again, as they did before.
			k := fmt.Sprint(st.q, st.goal, st.streak, st.panic, st.lastSwitch, st.switches)
			if prev, ok := intern[k]; ok {
				st = prev
			} else {
				st.w = q.weightsMap()
				intern[k] = st
			}
			s.routes[i*nR+j] = st
		}
	}
	return s, nil
}
