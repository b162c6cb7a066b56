package route

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/chash"
	"github.com/premirror/premirror/internal/probe"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// world is a small mutable scenario: regions, mirrors, per-path RTTs.
type world struct {
	regions   []RegionID
	mirrors   []Mirror
	rtt       map[pathKey]float64 // ms; missing = no path
	down      map[pathKey]bool
	resources []Resource
}

func newWorld(regions []RegionID, mirrors []MirrorID, rtt func(r RegionID, m MirrorID) float64) *world {
	w := &world{regions: regions, rtt: map[pathKey]float64{}, down: map[pathKey]bool{}}
	var reps []Replica
	for _, m := range mirrors {
		w.mirrors = append(w.mirrors, Mirror{ID: m, Up: true})
		reps = append(reps, Replica{Mirror: m, InSync: true})
		for _, r := range regions {
			w.rtt[pathKey{r, m}] = rtt(r, m)
		}
	}
	w.resources = []Resource{{ID: 1, Replicas: reps}}
	return w
}

func (w *world) set(r RegionID, m MirrorID, ms float64) { w.rtt[pathKey{r, m}] = ms }

func (w *world) mirror(m MirrorID) *Mirror {
	for i := range w.mirrors {
		if w.mirrors[i].ID == m {
			return &w.mirrors[i]
		}
	}
	panic("no mirror")
}

func (w *world) input(now time.Time) *Input {
	in := &Input{Now: now, Regions: w.regions, Mirrors: append([]Mirror(nil), w.mirrors...)}
	for _, r := range w.regions {
		for _, m := range w.mirrors {
			k := pathKey{r, m.ID}
			if v, ok := w.rtt[k]; ok {
				in.Paths = append(in.Paths, Path{Region: r, Mirror: m.ID, RTT: time.Duration(v * float64(time.Millisecond)), Up: !w.down[k]})
			}
		}
	}
	for _, res := range w.resources {
		res.Replicas = append([]Replica(nil), res.Replicas...)
		in.Resources = append(in.Resources, res)
	}
	return in
}

// runner steps an engine over a world, 2 s per tick.
type runner struct {
	t   *testing.T
	e   *Engine
	w   *world
	st  *State
	now time.Time
	res *Result
}

func newRunner(t *testing.T, cfg Config, w *world) *runner {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &runner{t: t, e: e, w: w, now: t0}
}

func (r *runner) step() *Result {
	r.t.Helper()
	res, st, err := r.e.Step(r.st, r.w.input(r.now))
	if err != nil {
		r.t.Fatal(err)
	}
	checkInvariants(r.t, r.e, r.w.input(r.now), r.st, res)
	r.st, r.res = st, res
	r.now = r.now.Add(2 * time.Second)
	return res
}

func (r *runner) route() Route { return r.res.Routes[0] }

// checkInvariants holds for every step of every test.
func checkInvariants(t *testing.T, e *Engine, in *Input, prev *State, res *Result) {
	t.Helper()
	c := e.Config()
	budget := max(1, int(c.MaxMove*float64(c.Slots)))
	healthy := map[pathKey]bool{}
	for _, p := range in.Paths {
		healthy[pathKey{p.Region, p.Mirror}] = p.Up
	}
	for _, m := range in.Mirrors {
		if !m.Up {
			for _, r := range in.Regions {
				healthy[pathKey{r, m.ID}] = false
			}
		}
	}
	for _, rt := range res.Routes {
		if rt.Weights == nil {
			if rt.Why.Mode != ModeNone {
				t.Fatalf("route %d/%d: no weights in mode %v", rt.Resource, rt.Region, rt.Why.Mode)
			}
			continue
		}
		sum := 0
		for m, w := range rt.Weights {
			sum += int(w)
			if w == 0 {
				t.Fatalf("zero weight entry for mirror %d", m)
			}
			if !healthy[pathKey{rt.Region, m}] && !rt.Why.Panic {
				t.Fatalf("route %d/%d routes to unhealthy mirror %d outside panic (%v)", rt.Resource, rt.Region, m, rt.Why)
			}
		}
		if sum != c.Slots {
			t.Fatalf("weights sum %d, want %d", sum, c.Slots)
		}
		old := prev.Weights(rt.Resource, rt.Region)
		if got := chash.IdealMoves(toInts(old), toInts(rt.Weights)); got != rt.Moved {
			t.Fatalf("Moved %d, chash.IdealMoves %d", rt.Moved, got)
		}
		discretionary := rt.Moved - rt.Why.Forced - rt.Spilled
		if old != nil && rt.Why.Mode != ModeFailover && rt.Why.Mode != ModeInstall && discretionary > budget {
			t.Fatalf("route %d/%d moved %d slots (%d forced, %d spilled) > slew budget %d in mode %v",
				rt.Resource, rt.Region, rt.Moved, rt.Why.Forced, rt.Spilled, budget, rt.Why.Mode)
		}
	}
}

func toInts(w map[MirrorID]uint32) map[uint32]int {
	m := map[uint32]int{}
	for k, v := range w {
		m[k] = int(v)
	}
	return m
}

func share(rt Route, m MirrorID, slots int) float64 { return float64(rt.Weights[m]) / float64(slots) }

func TestCostTerms(t *testing.T) {
	e, _ := New(Config{})
	in := &Input{
		Now: t0, Regions: []RegionID{1},
		Mirrors: []Mirror{{ID: 1, Up: true, Utilization: 0.5, ServiceTime: 4 * time.Millisecond}},
		Paths:   []Path{{Region: 1, Mirror: 1, RTT: 20 * time.Millisecond, Loss: 0.01, Hops: 5, Bandwidth: 8e6, Jitter: time.Millisecond, Up: true}},
		Resources: []Resource{{ID: 1, Profile: Profile{RoundTrips: 3, Bytes: 10000},
			Replicas: []Replica{{Mirror: 1, InSync: true}}}},
	}
	res, _, err := e.Step(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	got := res.Routes[0].Why.Candidates()[0]
	want := CandidateCost{Mirror: 1, Healthy: true,
		RTT: 60, Queue: 4, Transfer: 10, Hops: 1, Loss: 0.01 * 3 * 200, SlowStart: 1, Target: 1024}
	want.Cost = want.RTT + want.Queue + want.Transfer + want.Hops + want.Loss
	const eps = 1e-9
	if math.Abs(got.Cost-want.Cost) > eps || math.Abs(got.RTT-want.RTT) > eps || math.Abs(got.Queue-want.Queue) > eps ||
		math.Abs(got.Transfer-want.Transfer) > eps || math.Abs(got.Hops-want.Hops) > eps || math.Abs(got.Loss-want.Loss) > eps {
		t.Fatalf("cost %+v, want %+v", got, want)
	}
	// Utilization is clamped: a saturated mirror costs ServiceTime·19.
	in.Mirrors[0].Utilization = 3
	res, _, _ = e.Step(nil, in)
	if q := res.Routes[0].Why.Candidates()[0].Queue; math.Abs(q-4*19) > 1e-6 {
		t.Fatalf("saturated queue %v, want 76", q)
	}
}

func TestTargetNearTies(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		rtt  map[MirrorID]float64
		want map[MirrorID]bool // mirrors with weight
	}{
		{"clear winner", Config{}, map[MirrorID]float64{1: 50, 2: 60, 3: 80}, map[MirrorID]bool{1: true}},
		{"near tie shares", Config{}, map[MirrorID]float64{1: 50, 2: 53, 3: 80}, map[MirrorID]bool{1: true, 2: true}},
		{"edge of band excluded", Config{}, map[MirrorID]float64{1: 50, 2: 55.1}, map[MirrorID]bool{1: true}},
		{"exact tie splits evenly", Config{}, map[MirrorID]float64{1: 50, 2: 50}, map[MirrorID]bool{1: true, 2: true}},
		{"sharing disabled", Config{TieBand: -1}, map[MirrorID]float64{1: 50, 2: 50.5}, map[MirrorID]bool{1: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ms []MirrorID
			for m := range MirrorID(len(tt.rtt)) {
				ms = append(ms, m+1)
			}
			w := newWorld([]RegionID{1}, ms, func(_ RegionID, m MirrorID) float64 { return tt.rtt[m] })
			r := newRunner(t, tt.cfg, w)
			rt := r.step().Routes[0]
			if rt.Why.Mode != ModeInstall {
				t.Fatalf("mode %v", rt.Why.Mode)
			}
			for m := range tt.rtt {
				if (rt.Weights[m] > 0) != tt.want[m] {
					t.Fatalf("weights %v, want mirrors %v", rt.Weights, tt.want)
				}
			}
			if len(tt.want) == 2 && tt.rtt[1] < tt.rtt[2] && rt.Weights[1] <= rt.Weights[2] {
				t.Fatalf("cheaper mirror got less: %v", rt.Weights)
			}
			if tt.rtt[1] == tt.rtt[2] && len(tt.want) == 2 && rt.Weights[1] != rt.Weights[2] {
				t.Fatalf("exact tie uneven: %v", rt.Weights)
			}
		})
	}
}

// TestHysteresis walks a route through challenger sequences. Mirror 1 is the
// incumbent at 50 ms; mirror 2's RTT per evaluation is given.
func TestHysteresis(t *testing.T) {
	tests := []struct {
		name      string
		m2        []float64
		wantModes []Mode
	}{
		{"gain below 5 ms never switches", []float64{46, 46, 46, 46, 46}, []Mode{ModeHold, ModeHold, ModeHold, ModeHold, ModeHold}},
		// 10% of 50 is 5 ms: 44.9 clears both margins.
		{"switch on the third evaluation", []float64{44.9, 44.9, 44.9, 44.9}, []Mode{ModeConfirming, ModeConfirming, ModeSwitch, ModeMoving}},
		{"interrupted streak restarts", []float64{40, 40, 49, 40, 40, 40}, []Mode{ModeConfirming, ModeConfirming, ModeHold, ModeConfirming, ModeConfirming, ModeSwitch}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 50, 2: 80}[m] })
			r := newRunner(t, Config{}, w)
			if rt := r.step().Routes[0]; rt.Weights[1] != 1024 {
				t.Fatalf("install %v", rt.Weights)
			}
			for i, v := range tt.m2 {
				w.set(1, 2, v)
				rt := r.step().Routes[0]
				if rt.Why.Mode != tt.wantModes[i] {
					t.Fatalf("evaluation %d: mode %v, want %v (%v)", i+1, rt.Why.Mode, tt.wantModes[i], rt.Why)
				}
				if rt.Why.Mode != ModeSwitch && rt.Why.Mode != ModeMoving && rt.Weights[1] != 1024 {
					t.Fatalf("evaluation %d: table changed before the switch: %v", i+1, rt.Weights)
				}
			}
		})
	}
	// Long path: 300 ms incumbent, 290 ms challenger: 10 ms ≥ 5 ms but
	// only 3.3%: never switches.
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 300, 2: 400}[m] })
	r := newRunner(t, Config{}, w)
	r.step()
	w.set(1, 2, 290)
	for range 10 {
		if m := r.step().Routes[0].Why.Mode; m != ModeHold {
			t.Fatalf("mode %v for a 3%% gain", m)
		}
	}
}

func TestSlewAndSettle(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 50, 2: 80}[m] })
	r := newRunner(t, Config{}, w)
	r.step()
	w.set(1, 2, 20)
	var moved []int
	for range 20 {
		rt := r.step().Routes[0]
		if rt.Moved > 0 {
			moved = append(moved, rt.Moved)
		}
	}
	// 1024 slots at 102 per evaluation: ten full steps and a last one of 4.
	want := []int{102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 4}
	if fmt.Sprint(moved) != fmt.Sprint(want) {
		t.Fatalf("moves per evaluation %v, want %v", moved, want)
	}
	if rt := r.route(); rt.Weights[2] != 1024 || rt.Why.Mode != ModeHold {
		t.Fatalf("final %v mode %v", rt.Weights, rt.Why.Mode)
	}
}

func TestDwellAndFlapBackoff(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 50, 2: 80}[m] })
	cfg := Config{MaxMove: 1} // whole switch per evaluation, to isolate dwell
	r := newRunner(t, cfg, w)
	r.step()
	var switches []time.Time
	flip := func(best MirrorID) {
		if best == 2 {
			w.set(1, 1, 80)
			w.set(1, 2, 50)
		} else {
			w.set(1, 1, 50)
			w.set(1, 2, 80)
		}
	}
	best := MirrorID(2)
	for range 1200 { // 40 min of 2 s evaluations
		flip(best)
		now := r.now
		rt := r.step().Routes[0]
		if rt.Why.Mode == ModeSwitch {
			switches = append(switches, now)
			best = 3 - best // the other one becomes better right away
		}
	}
	if len(switches) < 7 {
		t.Fatalf("only %d switches", len(switches))
	}
	// Gaps: dwell 60 s, 120 s, 240 s, 480 s, 600 s (MaxDwell); then the
	// oldest switches leave the 30 min window and the dwell settles
	// between 4 and 10 min, never back to 1 min.
	want := []time.Duration{60 * time.Second, 120 * time.Second, 240 * time.Second, 480 * time.Second, 600 * time.Second}
	for i := 1; i < len(switches); i++ {
		gap := switches[i].Sub(switches[i-1])
		lo, hi := 240*time.Second, 600*time.Second
		if i <= len(want) {
			lo, hi = want[i-1], want[i-1]
		}
		if gap < lo || gap > hi+5*time.Second {
			t.Fatalf("switch %d after %v, want in [%v, %v] (switch times %v)", i, gap, lo, hi, switches)
		}
	}
}

func TestFailoverBypassesDamping(t *testing.T) {
	// Region 1 shares between near-tied mirrors 1 and 2; mirror 3 is far.
	w := newWorld([]RegionID{1}, []MirrorID{1, 2, 3, 4}, func(_ RegionID, m MirrorID) float64 {
		return map[MirrorID]float64{1: 50, 2: 51, 3: 90, 4: 91}[m]
	})
	r := newRunner(t, Config{}, w)
	before := r.step().Routes[0]
	if before.Weights[1] == 0 || before.Weights[2] == 0 {
		t.Fatalf("expected sharing, got %v", before.Weights)
	}
	oldTable, _ := chash.Build(nil, before.Weights, 1024)
	w.down[pathKey{1, 2}] = true
	after := r.step().Routes[0]
	if after.Why.Mode != ModeFailover || after.Weights[2] != 0 || after.Weights[1] != 1024 {
		t.Fatalf("after failure: %v %v", after.Weights, after.Why)
	}
	if after.Why.Forced != int(before.Weights[2]) || after.Moved != int(before.Weights[2]) {
		t.Fatalf("forced %d moved %d, want %d", after.Why.Forced, after.Moved, before.Weights[2])
	}
	newTable, _ := chash.Build(oldTable, after.Weights, 1024)
	for s := range oldTable {
		if oldTable[s] == 1 && newTable[s] != 1 {
			t.Fatalf("slot %d on healthy mirror 1 moved", s)
		}
	}
	// The whole mirror host going down is a failure too.
	w.down[pathKey{1, 2}] = false
	w.mirror(1).Up = false
	rt := r.step().Routes[0]
	if rt.Weights[1] != 0 || rt.Why.Mode != ModeFailover {
		t.Fatalf("mirror down: %v %v", rt.Weights, rt.Why)
	}
}

func TestPanicKeepsRoutingToAll(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2, 3, 4}, func(_ RegionID, m MirrorID) float64 { return 40 + float64(m)*20 })
	r := newRunner(t, Config{MaxMove: 1}, w)
	r.step()
	// Two of four down: 50% healthy is not below the threshold.
	w.down[pathKey{1, 1}], w.down[pathKey{1, 2}] = true, true
	rt := r.step().Routes[0]
	if rt.Why.Panic || rt.Weights[3] != 1024 {
		t.Fatalf("2/4 healthy: %v %v", rt.Weights, rt.Why)
	}
	// Three of four down: panic, spread over all four.
	w.down[pathKey{1, 3}] = true
	rt = r.step().Routes[0]
	if !rt.Why.Panic || rt.Why.Mode != ModePanic || len(rt.Weights) != 4 {
		t.Fatalf("3/4 down: %v %v", rt.Weights, rt.Why)
	}
	// Everything down: still routed (never an empty region).
	w.down[pathKey{1, 4}] = true
	rt = r.step().Routes[0]
	if len(rt.Weights) != 4 {
		t.Fatalf("all down: %v", rt.Weights)
	}
	// Recovery below the threshold ends panic and removes the down ones.
	w.down[pathKey{1, 1}], w.down[pathKey{1, 2}] = false, false
	rt = r.step().Routes[0]
	if rt.Why.Panic || rt.Weights[3] != 0 || rt.Weights[4] != 0 || rt.Why.Mode != ModeFailover {
		t.Fatalf("recovered: %v %v", rt.Weights, rt.Why)
	}
	// Panic disabled: the last healthy mirror takes everything.
	w2 := newWorld([]RegionID{1}, []MirrorID{1, 2, 3}, func(_ RegionID, m MirrorID) float64 { return 40 + float64(m) })
	r2 := newRunner(t, Config{Panic: -1}, w2)
	r2.step()
	w2.down[pathKey{1, 1}], w2.down[pathKey{1, 2}] = true, true
	if rt := r2.step().Routes[0]; rt.Weights[3] != 1024 {
		t.Fatalf("panic disabled: %v", rt.Weights)
	}
}

func TestSlowStartForRecoveredMirror(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 20, 2: 60}[m] })
	r := newRunner(t, Config{MaxMove: 1, Dwell: -1}, w)
	r.step()
	w.mirror(1).Up = false
	if rt := r.step().Routes[0]; rt.Weights[2] != 1024 {
		t.Fatalf("failover %v", rt.Weights)
	}
	w.mirror(1).Up = true
	var shares []float64
	for range 25 {
		rt := r.step().Routes[0]
		shares = append(shares, share(rt, 1, 1024))
	}
	// Confirm takes 3 evaluations; then mirror 1's share follows the ramp
	// from 10% over 30 s even though the slew limit would allow all of it.
	if shares[0] != 0 || shares[1] != 0 {
		t.Fatalf("switched before confirmation: %v", shares)
	}
	for i := 1; i < len(shares); i++ {
		if shares[i] < shares[i-1] {
			t.Fatalf("share decreased: %v", shares)
		}
	}
	if shares[2] <= 0 || shares[2] > 0.35 {
		t.Fatalf("first step of slow start %.2f, want a small share", shares[2])
	}
	if shares[len(shares)-1] != 1 {
		t.Fatalf("never completed: %v", shares)
	}
	if shares[8] >= 1 {
		t.Fatalf("completed in %d evaluations, faster than the 30 s ramp: %v", 8, shares)
	}
}

func TestOnlyInSyncReplicasRoute(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 20, 2: 60}[m] })
	w.resources[0].Replicas[0].InSync = false
	r := newRunner(t, Config{}, w)
	if rt := r.step().Routes[0]; rt.Weights[2] != 1024 {
		t.Fatalf("out-of-sync mirror routed: %v", rt.Weights)
	}
	// Falling out of sync is a forced removal.
	w.resources[0].Replicas[0].InSync = true
	w.resources[0].Replicas[1].InSync = false
	if rt := r.step().Routes[0]; rt.Weights[1] != 1024 || rt.Why.Mode != ModeFailover {
		t.Fatalf("sync loss: %v %v", rt.Weights, rt.Why)
	}
	// No in-sync replica at all: no route.
	w.resources[0].Replicas[0].InSync = false
	if rt := r.step().Routes[0]; rt.Weights != nil || rt.Why.Mode != ModeNone || rt.Moved != 1024 {
		t.Fatalf("no replica: %+v", rt)
	}
}

func TestCapacitySpill(t *testing.T) {
	// Two regions both prefer mirror 1 (capacity 100 → cap 80 req/s); region
	// 2 loses less by moving to mirror 2.
	w := newWorld([]RegionID{1, 2}, []MirrorID{1, 2}, func(r RegionID, m MirrorID) float64 {
		return map[pathKey]float64{{1, 1}: 10, {1, 2}: 90, {2, 1}: 30, {2, 2}: 40}[pathKey{r, m}]
	})
	w.mirror(1).Capacity = 100
	w.mirror(2).Capacity = 1000
	w.resources[0].Demand = []float64{50, 50}
	r := newRunner(t, Config{}, w)
	res := r.step()
	r1, r2 := res.Routes[0], res.Routes[1]
	if r1.Weights[1] != 1024 {
		t.Fatalf("region 1 (large regret) was spilled: %v", r1.Weights)
	}
	// Region 2 keeps 30 of 50 req/s on mirror 1: 80 total.
	if got := 50 * share(r2, 1, 1024); math.Abs(got-30) > 50.0/1024 || r2.Spilled == 0 {
		t.Fatalf("region 2 keeps %.2f req/s on mirror 1, want 30 (%v, spilled %d)", got, r2.Weights, r2.Spilled)
	}
	if res.Spilled != 1 || len(res.Overloaded) != 0 {
		t.Fatalf("spilled %d overloaded %v", res.Spilled, res.Overloaded)
	}
	// Steady state: the same split next evaluation, nothing moves.
	res = r.step()
	if res.MovedSlots != 0 {
		t.Fatalf("spill moved %d slots in steady state", res.MovedSlots)
	}
	// No headroom anywhere: reported, not hidden.
	w.mirror(2).Capacity = 10
	res = r.step()
	if len(res.Overloaded) == 0 {
		t.Fatal("overload not reported")
	}
}

func TestStepIsPure(t *testing.T) {
	w := newWorld([]RegionID{1, 2, 3}, []MirrorID{1, 2, 3}, func(r RegionID, m MirrorID) float64 { return float64(10*r) + float64(7*m%5) })
	e, _ := New(Config{})
	res1, st1, err := e.Step(nil, w.input(t0))
	if err != nil {
		t.Fatal(err)
	}
	snap := st1.Snapshot()
	w.set(1, 3, 1)
	in2 := w.input(t0.Add(2 * time.Second))
	a, sa, _ := e.Step(st1, in2)
	b, sb, _ := e.Step(st1, in2)
	if !reflect.DeepEqual(a.Routes, b.Routes) || !reflect.DeepEqual(sa.Snapshot(), sb.Snapshot()) {
		t.Fatal("same (state, input) gave different results")
	}
	if !reflect.DeepEqual(st1.Snapshot(), snap) {
		t.Fatal("Step modified its input state")
	}
	_ = res1
	if _, _, err := e.Step(sa, w.input(t0)); !errors.Is(err, ErrClockBackwards) {
		t.Fatalf("clock backwards: %v", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	w := newWorld([]RegionID{1, 2}, []MirrorID{1, 2, 3}, func(r RegionID, m MirrorID) float64 { return float64(20*m) + float64(r) })
	r := newRunner(t, Config{}, w)
	r.step()
	w.set(1, 3, 5)
	r.step()
	r.step() // mid-confirmation: streak 2
	snap := r.st.Snapshot()
	restored, err := Restore(snap)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(restored.Snapshot(), snap) {
		t.Fatal("snapshot does not round-trip")
	}
	in := w.input(r.now)
	a, _, _ := r.e.Step(r.st, in)
	b, _, _ := r.e.Step(restored, in)
	if !reflect.DeepEqual(a.Routes, b.Routes) {
		t.Fatal("restored state steps differently")
	}
	if a.Routes[0].Why.Mode != ModeSwitch {
		t.Fatalf("expected the third confirmation to switch, got %v", a.Routes[0].Why.Mode)
	}
	bad := snap
	bad.Resources = append([]ResourceSnapshot(nil), snap.Resources...)
	bad.Resources[0].Routes = append([]RouteSnapshot(nil), snap.Resources[0].Routes...)
	bad.Resources[0].Routes[0].Weights = map[MirrorID]uint32{1: 5}
	if _, err := Restore(bad); err == nil || !strings.Contains(err.Error(), "resources[0].routes[0].weights") {
		t.Fatalf("bad weights: %v", err)
	}
}

func TestInputValidation(t *testing.T) {
	base := func() *Input {
		return &Input{Now: t0, Regions: []RegionID{1}, Mirrors: []Mirror{{ID: 1, Up: true}},
			Paths:     []Path{{Region: 1, Mirror: 1, RTT: time.Millisecond, Up: true}},
			Resources: []Resource{{ID: 1, Replicas: []Replica{{Mirror: 1, InSync: true}}}}}
	}
	tests := []struct {
		field string
		mut   func(*Input)
	}{
		{"now", func(in *Input) { in.Now = time.Time{} }},
		{"regions[1]", func(in *Input) { in.Regions = append(in.Regions, 1) }},
		{"mirrors[0].id", func(in *Input) { in.Mirrors[0].ID = 0 }},
		{"mirrors[0].capacity", func(in *Input) { in.Mirrors[0].Capacity = math.NaN() }},
		{"mirrors[0].utilization", func(in *Input) { in.Mirrors[0].Utilization = -1 }},
		{"mirrors[1].id", func(in *Input) { in.Mirrors = append(in.Mirrors, Mirror{ID: 1}) }},
		{"paths[0].region", func(in *Input) { in.Paths[0].Region = 9 }},
		{"paths[0].mirror", func(in *Input) { in.Paths[0].Mirror = 9 }},
		{"paths[0].rtt", func(in *Input) { in.Paths[0].RTT = -1 }},
		{"paths[0].loss", func(in *Input) { in.Paths[0].Loss = 1.5 }},
		{"paths[1]", func(in *Input) { in.Paths = append(in.Paths, in.Paths[0]) }},
		{"resources[0].profile.round_trips", func(in *Input) { in.Resources[0].Profile.RoundTrips = math.Inf(1) }},
		{"resources[0].demand", func(in *Input) { in.Resources[0].Demand = []float64{1, 2} }},
		{"resources[0].demand[0]", func(in *Input) { in.Resources[0].Demand = []float64{-1} }},
		{"resources[0].replicas[0].mirror", func(in *Input) { in.Resources[0].Replicas[0].Mirror = 7 }},
		{"resources[1].id", func(in *Input) { in.Resources = append(in.Resources, in.Resources[0]) }},
	}
	e, _ := New(Config{})
	if _, _, err := e.Step(nil, base()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			in := base()
			tt.mut(in)
			_, _, err := e.Step(nil, in)
			if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want ErrInvalidInput naming %s", err, tt.field)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	for field, cfg := range map[string]Config{
		"Slots":          {Slots: 1000},
		"MaxUtilization": {MaxUtilization: 1},
		"CapacityCap":    {CapacityCap: 2},
		"MinGain":        {MinGain: 1},
		"Confirm":        {Confirm: -1},
		"MaxDwell":       {Dwell: time.Hour},
		"MaxMove":        {MaxMove: 1.5},
		"SlowStartMin":   {SlowStartMin: 2},
		"JitterWeight":   {JitterWeight: -1},
	} {
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err = %v", field, err)
		}
	}
	e, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if c := e.Config(); c.Confirm != 3 || c.Dwell != time.Minute || c.MaxMove != 0.1 || c.MinGain != 0.1 || c.MinGainAbs != 5*time.Millisecond {
		t.Fatalf("defaults are not the issue's: %+v", c)
	}
}

func TestPathFromEstimate(t *testing.T) {
	if _, ok := PathFromEstimate(1, 2, probe.Estimate{}); ok {
		t.Fatal("unknown health produced a path")
	}
	p, ok := PathFromEstimate(1, 2, probe.Estimate{Health: probe.HealthDown, Samples: 3, RTT: time.Millisecond, Loss: 0.5})
	if !ok || p.Up || p.RTT != time.Millisecond || p.Loss != 0.5 {
		t.Fatalf("down path %+v", p)
	}
}

func TestExplanationString(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return 10 * float64(m) })
	r := newRunner(t, Config{}, w)
	s := r.step().Routes[0].Why.String()
	if !strings.HasPrefix(s, "install: 2/2 healthy") || !strings.Contains(s, "m1=10.0ms") {
		t.Fatalf("explanation %q", s)
	}
}

// TestIncumbentJudgedByRecent: a spike the peak-EWMA still remembers does
// not make a challenger qualify once the latest median is back to normal;
// with PeakIncumbent (the greedy baseline's view) it does.
func TestIncumbentJudgedByRecent(t *testing.T) {
	for _, tt := range []struct {
		peak bool
		want Mode
	}{{false, ModeHold}, {true, ModeSwitch}} {
		w := newWorld([]RegionID{1}, []MirrorID{1, 2}, func(_ RegionID, m MirrorID) float64 { return map[MirrorID]float64{1: 20, 2: 22}[m] })
		r := newRunner(t, Config{PeakIncumbent: tt.peak}, w)
		r.step()
		var last Mode
		for range 3 {
			in := w.input(r.now)
			for i := range in.Paths {
				if in.Paths[i].Mirror == 1 {
					in.Paths[i].RTT, in.Paths[i].Recent = 40*time.Millisecond, 20*time.Millisecond
				}
			}
			res, st, err := r.e.Step(r.st, in)
			if err != nil {
				t.Fatal(err)
			}
			r.st, r.now = st, r.now.Add(2*time.Second)
			last = res.Routes[0].Why.Mode
		}
		if last != tt.want {
			t.Errorf("PeakIncumbent=%v: mode %v after three evaluations, want %v", tt.peak, last, tt.want)
		}
	}
}

// TestCappedHoldsOffSaturatedMirror: a route whose target would add load
// to a mirror left at its capacity cap holds instead of switching.
func TestCappedHoldsOffSaturatedMirror(t *testing.T) {
	w := newWorld([]RegionID{1, 2}, []MirrorID{1, 2}, func(r RegionID, m MirrorID) float64 {
		return map[pathKey]float64{{1, 1}: 10, {1, 2}: 90, {2, 1}: 80, {2, 2}: 40}[pathKey{r, m}]
	})
	w.mirror(1).Capacity = 100 // cap 80 req/s: region 1 alone fills it
	w.resources[0].Demand = []float64{80, 50}
	r := newRunner(t, Config{}, w)
	r.step()
	// Mirror 1 becomes much better for region 2 too.
	w.set(2, 1, 10)
	modes := map[Mode]int{}
	for range 10 {
		rt := r.step().Routes[1]
		modes[rt.Why.Mode]++
		if rt.Weights[1] != 0 {
			t.Fatalf("region 2 moved onto the saturated mirror: %v (%v)", rt.Weights, rt.Why)
		}
	}
	if modes[ModeCapped] == 0 {
		t.Fatalf("modes %v, want capped", modes)
	}
}

func TestMetricsLint(t *testing.T) {
	w := newWorld([]RegionID{1, 2}, []MirrorID{1, 2}, func(r RegionID, m MirrorID) float64 { return float64(10 * m) })
	r := newRunner(t, Config{}, w)
	m := NewMetrics()
	m.Observe(r.step(), time.Millisecond)
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	if got := testutil.ToFloat64(m.routes.WithLabelValues("install")); got != 2 {
		t.Fatalf("install routes %v, want 2", got)
	}
}

func TestMergeEdgePaths(t *testing.T) {
	msd := func(v int) time.Duration { return time.Duration(v) * time.Millisecond }
	tests := []struct {
		name   string
		in     []Path
		rtt    time.Duration
		up     bool
		loss   float64
		wantOK bool
	}{
		{"none", nil, 0, false, 0, false},
		{"one", []Path{{RTT: msd(10), Up: true}}, msd(10), true, 0, true},
		{"median of three, one edge broken", []Path{{RTT: msd(10), Up: true}, {RTT: msd(90), Up: false, Loss: 0.9}, {RTT: msd(12), Up: true}}, msd(12), true, 0.3, true},
		{"half down stays up", []Path{{RTT: msd(10), Up: true}, {RTT: msd(20), Up: false}}, msd(15), true, 0, true},
		{"all down", []Path{{RTT: msd(10)}, {RTT: msd(20)}, {RTT: msd(30), Up: true}}, msd(20), false, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := MergeEdgePaths(tt.in)
			if ok != tt.wantOK || p.RTT != tt.rtt || p.Up != tt.up || math.Abs(p.Loss-tt.loss) > 1e-9 {
				t.Fatalf("got %+v ok=%v", p, ok)
			}
		})
	}
}

// TestOrderIndependence: permuting Input.Mirrors, Input.Paths and
// each resource's Replicas changes no route's weights or mode.
func TestOrderIndependence(t *testing.T) {
	for seed := range uint64(6) {
		rng := rand.New(rand.NewPCG(seed, 7))
		regions := []RegionID{1, 2, 3}
		mirrors := []MirrorID{1, 2, 3, 4, 5, 6, 7}
		w := newWorld(regions, mirrors, func(_ RegionID, m MirrorID) float64 { return float64(20 + rng.IntN(4)*5) }) // many exact ties
		for i := range w.mirrors {
			if rng.IntN(2) == 0 {
				w.mirrors[i].Capacity = 10 + rng.Float64()*30
			}
		}
		w.resources[0].Demand = []float64{20, 30, 25}
		w.resources = append(w.resources, Resource{ID: 2, Replicas: w.resources[0].Replicas[:4], Demand: []float64{5, 50, 9}})
		e, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		var st *State
		now := t0
		for tick := range 120 {
			if rng.IntN(4) == 0 {
				k := pathKey{regions[rng.IntN(3)], mirrors[rng.IntN(7)]}
				w.down[k] = !w.down[k]
			}
			if rng.IntN(6) == 0 {
				k := pathKey{regions[rng.IntN(3)], mirrors[rng.IntN(7)]}
				w.rtt[k] = float64(20 + rng.IntN(4)*5)
			}
			in := w.input(now)
			res, next, err := e.Step(st, in)
			if err != nil {
				t.Fatal(err)
			}
			p := w.input(now)
			rng.Shuffle(len(p.Mirrors), func(i, j int) { p.Mirrors[i], p.Mirrors[j] = p.Mirrors[j], p.Mirrors[i] })
			rng.Shuffle(len(p.Paths), func(i, j int) { p.Paths[i], p.Paths[j] = p.Paths[j], p.Paths[i] })
			for i := range p.Resources {
				reps := append([]Replica(nil), p.Resources[i].Replicas...)
				rng.Shuffle(len(reps), func(a, b int) { reps[a], reps[b] = reps[b], reps[a] })
				p.Resources[i].Replicas = reps
			}
			res2, _, err := e.Step(st, p)
			if err != nil {
				t.Fatal(err)
			}
			for i := range res.Routes {
				a, b := res.Routes[i], res2.Routes[i]
				if !reflect.DeepEqual(a.Weights, b.Weights) || a.Why.Mode != b.Why.Mode {
					t.Fatalf("seed %d tick %d route %d/%d: %v %v vs permuted %v %v", seed, tick, a.Resource, a.Region, a.Weights, a.Why.Mode, b.Weights, b.Why.Mode)
				}
			}
			if !reflect.DeepEqual(res.Overloaded, res2.Overloaded) {
				t.Fatalf("seed %d tick %d: overloaded %v vs %v", seed, tick, res.Overloaded, res2.Overloaded)
			}
			st = next
			now = now.Add(2 * time.Second)
		}
	}
}

// TestPanicCount: Result.Panic "counts routes in panic mode"; a
// route that enters panic in the same evaluation a replica leaves sync is
// in panic (Why.Panic) but reported as failover, and not counted.
func TestPanicCount(t *testing.T) {
	w := newWorld([]RegionID{1}, []MirrorID{1, 2, 3, 4}, func(_ RegionID, m MirrorID) float64 { return 40 + float64(m)*20 })
	r := newRunner(t, Config{}, w)
	r.step()
	w.down[pathKey{1, 2}], w.down[pathKey{1, 3}] = true, true
	w.resources[0].Replicas[0].InSync = false // mirror 1, which held the route, leaves sync
	res := r.step()
	rt := res.Routes[0]
	t.Logf("mode %v panic %v weights %v res.Panic %d", rt.Why.Mode, rt.Why.Panic, rt.Weights, res.Panic)
	if rt.Why.Panic && res.Panic != 1 {
		t.Errorf("route in panic (%v) not counted: Result.Panic %d", rt.Why, res.Panic)
	}
}
