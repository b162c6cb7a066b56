package route

import (
	"fmt"
	"strings"
	"time"
)

// Mode is what the policy did to a route in one evaluation.
type Mode uint8

const (
	// ModeNone: no candidate at all; the route has no table.
	ModeNone Mode = iota
	// ModeInstall: a new route took the target directly.
	ModeInstall
	// ModeHold: the current table is kept; the target is not better by
	// the required margin.
	ModeHold
	// ModeConfirming: the target is better, for fewer than Confirm
	// consecutive evaluations so far.
	ModeConfirming
	// ModeDwell: the target qualified but the route switched too recently.
	ModeDwell
	// ModeSwitch: the target was accepted this evaluation; slots start
	// moving (at most MaxMove per evaluation).
	ModeSwitch
	// ModeMoving: slots keep moving towards an accepted target.
	ModeMoving
	// ModeFailover: slots on mirrors that failed (down, out of sync, gone)
	// moved at once to the healthy target.
	ModeFailover
	// ModePanic: fewer than Config.Panic of the candidates are healthy;
	// traffic spreads over all candidates.
	ModePanic
	// ModeCapped: the target would add load to a mirror that the previous
	// evaluation left at its capacity cap, so the route holds instead of
	// moving towards it (spill-over would only push the load back).
	ModeCapped
)

var modeNames = [...]string{"none", "install", "hold", "confirming", "dwell", "switch", "moving", "failover", "panic", "capped"}

// String returns the mode's lowercase name.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// CandidateCost is the cost breakdown of one candidate mirror for a route,
// in milliseconds per request.
type CandidateCost struct {
	Mirror MirrorID
	// Healthy: probe health up and mirror up.
	Healthy bool
	// Cost is the sum of the terms below.
	Cost float64
	// RTT is the path estimate × round trips per request.
	RTT float64
	// Queue is ServiceTime·ρ/(1−ρ) from the mirror's utilization.
	Queue float64
	// Transfer is bytes per request over the path bandwidth.
	Transfer float64
	// Hops and Loss are the small hop and loss terms; Jitter is weighted
	// jitter (0 by default).
	Hops, Loss, Jitter float64
	// SlowStart is the ramp factor of a new or recovered mirror (1: none).
	SlowStart float64
	// Target is the mirror's slot count in the undamped target.
	Target uint32
}

// Explanation says why a route has its weights. Routes in the same
// situation share one Explanation; treat it as read-only.
type Explanation struct {
	Mode Mode
	// Healthy of Total candidates; Panic when below Config.Panic.
	Healthy, Total int
	Panic          bool
	// CurrentCost and TargetCost are the expected per-request costs (ms) of
	// the previous table and of the undamped target; Gain their difference
	// when a switch was considered.
	CurrentCost, TargetCost, Gain float64
	// Streak is how many consecutive evaluations the target has qualified.
	Streak int
	// DwellUntil is when the route may next switch by choice (zero: now).
	DwellUntil time.Time
	// Forced is how many slots left failed mirrors this evaluation.
	Forced int

	gr *grInfo // the candidates' ranking, shared with the group's routes
}

// Candidates returns the cost breakdown of every candidate, cheapest first.
func (x *Explanation) Candidates() []CandidateCost {
	if x == nil || x.gr == nil {
		return nil
	}
	g := x.gr
	out := make([]CandidateCost, 0, g.total)
	for _, mi := range g.tbl.order {
		if g.g.pos[mi] < 0 {
			continue
		}
		cc := g.tbl.cost[mi]
		cc.SlowStart = g.slow(int(mi))
		cc.Target = uint32(g.target.get(cc.Mirror))
		out = append(out, cc)
	}
	return out
}

// String renders the explanation on one line.
func (x *Explanation) String() string {
	if x == nil {
		return "no explanation"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d/%d healthy", x.Mode, x.Healthy, x.Total)
	if x.Panic {
		b.WriteString(" (panic)")
	}
	fmt.Fprintf(&b, ", current %.1f ms, target %.1f ms", x.CurrentCost, x.TargetCost)
	switch x.Mode {
	case ModeConfirming:
		fmt.Fprintf(&b, ", gain %.1f ms for %d evaluation(s)", x.Gain, x.Streak)
	case ModeDwell:
		fmt.Fprintf(&b, ", gain %.1f ms, dwell until %s", x.Gain, x.DwellUntil.UTC().Format(time.RFC3339))
	case ModeHold:
		fmt.Fprintf(&b, ", gain %.1f ms below the margin", x.Gain)
	case ModeFailover:
		fmt.Fprintf(&b, ", %d slot(s) left failed mirrors", x.Forced)
	}
	for i, c := range x.Candidates() {
		if i == 0 {
			b.WriteString("; candidates")
		}
		fmt.Fprintf(&b, " m%d=%.1fms", c.Mirror, c.Cost)
		if !c.Healthy {
			b.WriteString("(down)")
		}
		if c.SlowStart < 1 {
			fmt.Fprintf(&b, "(slow %.0f%%)", 100*c.SlowStart)
		}
		if c.Target > 0 {
			fmt.Fprintf(&b, "[t%d]", c.Target)
		}
	}
	return b.String()
}

// Route is the table of one (resource, region).
type Route struct {
	Resource ResourceID
	Region   RegionID
	// Weights are slot quotas summing to Config.Slots, ready for
	// chash.Build; nil when the route has no candidate. Shared between
	// routes: do not modify.
	Weights map[MirrorID]uint32
	// Moved is how many slots change against the previous table
	// (chash.IdealMoves: exactly what chash.Build will move).
	Moved int
	// Changed reports whether Weights differ from the previous step.
	Changed bool
	// Spilled is how many slots capacity spill-over moved off an
	// overloaded mirror in this step (included in Moved).
	Spilled int
	// Why explains the weights (shared, read-only).
	Why *Explanation
}

// Result is the output of one Step.
type Result struct {
	// Routes holds every (resource, region), resource-major in the order
	// of Input.Resources and Input.Regions.
	Routes []Route
	// Slots is the table size of every route.
	Slots int
	// MovedSlots sums Route.Moved; Changed counts changed routes; Panic
	// counts routes in panic mode; Spilled counts routes cut by capacity.
	MovedSlots, Changed, Panic, Spilled int
	// Overloaded lists mirrors still above the capacity cap after
	// spill-over (no candidate had headroom).
	Overloaded []MirrorID

	regions int
}

// MovedShare is the share of all slots that this step moves.
func (r *Result) MovedShare() float64 {
	if len(r.Routes) == 0 {
		return 0
	}
	return float64(r.MovedSlots) / float64(len(r.Routes)*r.Slots)
}

// MovedShareByRegion is the share of each region's slots that this step
// moves.
func (r *Result) MovedShareByRegion() map[RegionID]float64 {
	moved := map[RegionID]int{}
	total := map[RegionID]int{}
	for _, rt := range r.Routes {
		moved[rt.Region] += rt.Moved
		total[rt.Region] += r.Slots
	}
	out := make(map[RegionID]float64, len(total))
	for k, t := range total {
		out[k] = float64(moved[k]) / float64(t)
	}
	return out
}

// At returns the route of the resource and region at those positions of
// Input.Resources and Input.Regions.
func (r *Result) At(resource, region int) *Route {
	return &r.Routes[resource*r.regions+region]
}
