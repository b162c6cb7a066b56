package route

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"time"
)

// ErrClockBackwards is returned when Input.Now is before the previous
// step's: damping timers would run backwards.
var ErrClockBackwards = errors.New("evaluation time went backwards")

// Engine computes route tables. It holds only configuration, so Step is a
// pure function of (previous State, Input) and one Engine may serve
// concurrent replays.
type Engine struct{ c resolved }

// New validates cfg (zero fields take DefaultConfig's values).
func New(cfg Config) (*Engine, error) {
	c, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	return &Engine{c: c}, nil
}

// Config returns the effective configuration, defaults filled in.
func (e *Engine) Config() Config { return e.c.Config }

// routeState is the damping state of one (resource, region) route. It is
// immutable once built: routes in the same situation share one, which is
// what lets a step compute each distinct situation once.
type routeState struct {
	q          qv                  // committed slot quotas (never empty)
	w          map[MirrorID]uint32 // q as the data plane's map
	goal       qv                  // accepted target being slewed to; nil when settled
	streak     int32               // consecutive evaluations the challenger qualified
	panic      bool
	lastSwitch int64   // unix ns of the last switch, 0 = never
	switches   []int64 // recent switch times, for the flap-extended dwell
}

// dwellUntil is when the next discretionary switch may happen: Dwell after
// the last switch, doubled for every earlier switch within FlapWindow
// before it, so the dwell is fixed when the switch happens.
func (c *resolved) dwellUntil(last int64, switches []int64) int64 {
	if last == 0 {
		return 0
	}
	k := 0
	for _, t := range switches {
		if last-t <= int64(c.FlapWindow) {
			k++
		}
	}
	d := c.Dwell
	for i := 1; i < k && d < c.MaxDwell; i++ {
		d *= 2
	}
	return last + int64(min(d, c.MaxDwell))
}

// recordSwitch returns the switch history with now appended and switches
// older than FlapWindow dropped.
func (c *resolved) recordSwitch(prev []int64, now int64) []int64 {
	out := make([]int64, 0, len(prev)+1)
	for _, t := range prev {
		if now-t <= int64(c.FlapWindow) {
			out = append(out, t)
		}
	}
	out = append(out, now)
	if len(out) > 16 {
		out = out[len(out)-16:]
	}
	return out
}

// costTable ranks every mirror with a path from one region for one request
// profile; every candidate set in that region filters it.
type costTable struct {
	order   []int32         // mirror indices with a path, by (cost, mirror ID)
	cost    []CandidateCost // by mirror index; Mirror == 0 where no path exists
	healthy []bool          // cost[i].Healthy, packed for the hot loops
	recent  []float64       // cost with the latest filtered sample, for incumbents
	// Bitsets by mirror index, so a group counts its candidates with a few
	// popcounts instead of a pass over every mirror.
	pathBits, healthyBits []uint64
}

func setBit(b []uint64, i int)      { b[i>>6] |= 1 << (i & 63) }
func hasBit(b []uint64, i int) bool { return b[i>>6]&(1<<(i&63)) != 0 }

// grInfo is what every route of one (candidate group, region) shares. The
// candidates are the group's members in the region's ranking; they are
// read through tbl and g rather than copied, so a step with thousands of
// distinct candidate sets allocates little.
type grInfo struct {
	done    bool
	panic   bool
	r       int32
	healthy int32
	total   int32
	sh      *stepShared
	tbl     *costTable
	g       *group
	target  qv // desired quotas, nil when nothing is eligible
	targetW map[MirrorID]uint32
}

// stepShared is the part of a step that explanations keep referring to.
type stepShared struct {
	now    int64
	nM     int
	ix     *indexes
	mSince []int64
	pSince []int64
	cfg    *resolved
	// saturated: mirrors the previous step left at their capacity cap.
	saturated map[MirrorID]bool
}

// member reports whether mirror index mi is a candidate of the group in
// this region.
func (g *grInfo) member(mi int) bool {
	return mi >= 0 && g.g.pos[mi] >= 0 && g.tbl.cost[mi].Mirror != 0
}

func (g *grInfo) eligible(m MirrorID) bool {
	return g.eligibleIdx(g.sh.ix.pos(m))
}

func (g *grInfo) eligibleIdx(mi int) bool {
	return g.member(mi) && (g.tbl.healthy[mi] || g.panic)
}

// slow is the slow-start factor of candidate mi: a new or recovered mirror,
// path or replica takes a growing share over Config.SlowStart.
func (g *grInfo) slow(mi int) float64 {
	c := g.sh.cfg
	if !c.slowOn {
		return 1
	}
	since := max(g.sh.mSince[mi], g.sh.pSince[int(g.r)*g.sh.nM+mi], g.g.reps[g.g.pos[mi]].since)
	if since == 0 || g.sh.now-since >= int64(c.SlowStart) {
		return 1
	}
	f := float64(g.sh.now-since) / float64(c.SlowStart)
	return c.SlowStartMin + (1-c.SlowStartMin)*f
}

// costOf is the expected cost of a request routed by q; recent selects
// the incumbent's view (see Config.PeakIncumbent).
func (g *grInfo) costOf(q qv, recent bool) float64 {
	var sum, n float64
	for _, x := range q {
		if mi := g.sh.ix.pos(x.m); g.member(mi) {
			v := g.tbl.cost[mi].Cost
			if recent {
				v = g.tbl.recent[mi]
			}
			sum += float64(x.n) * v
			n += float64(x.n)
		}
	}
	if n == 0 {
		return math.Inf(1)
	}
	return sum / n
}

// weights returns the data-plane map for q, reusing the target's map when
// q is the target.
func (g *grInfo) weights(q qv) map[MirrorID]uint32 {
	if !q.equal(g.target) {
		return q.weightsMap()
	}
	if g.targetW == nil {
		g.targetW = q.weightsMap()
	}
	return g.targetW
}

// group is a set of resources with identical candidates and profile.
type group struct {
	profile int        // index of the profile class
	reps    []repSince // in-sync replicas, sorted by mirror
	pos     []int32    // by mirror index: position in reps, or -1
	bits    []uint64   // by mirror index: in-sync replica
}

type repSince struct {
	m     MirrorID
	since int64 // in sync since (unix ns; 0 = before history)
}

// entry is one distinct (group, region, previous state) of a step: all
// routes in it get the same new state, so it is computed once.
type entry struct {
	gr      *grInfo
	prev    *routeState
	next    *routeState
	why     *Explanation
	moved   int
	changed bool
	spilled int
	demand  float64 // Σ demand of its routes
	first   int32   // lowest route index, for deterministic ordering
	link    int32   // next entry of the same (group, region), -1 = none
}

// stepCtx is the scratch of one Step.
type stepCtx struct {
	e       *Engine
	in      *Input
	ix      indexes
	sh      *stepShared
	tables  []costTable // [profile*nR + r]
	groups  []group
	grs     []grInfo // [group*nR + r]
	singles []qv     // by mirror index: the all-slots target, built once
	whys    []Explanation
	entries []entry
}

// Step computes the routes for in, given the state returned by the
// previous Step (nil for the first). prev is not modified.
func (e *Engine) Step(prev *State, in *Input) (*Result, *State, error) {
	ix, err := in.validate()
	if err != nil {
		return nil, nil, err
	}
	if prev == nil {
		prev = &State{}
	}
	now := in.Now.UnixNano()
	if prev.now != 0 && now < prev.now {
		return nil, nil, fmt.Errorf("step at %v after %v: %w", in.Now, time.Unix(0, prev.now), ErrClockBackwards)
	}
	// Whatever is up at the very first step counts as established, so a
	// controller restart does not slow-start every mirror.
	born := now
	if prev.now == 0 {
		born = 0
	}
	c := &e.c
	nR, nM, nRes := len(in.Regions), len(in.Mirrors), len(in.Resources)
	sc := &stepCtx{e: e, in: in, ix: ix}
	sc.sh = &stepShared{now: now, nM: nM, ix: &sc.ix, cfg: c, saturated: prev.saturated}
	next := &State{
		now: now, slots: c.Slots, regions: slices.Clone(in.Regions), regIdx: ix.region,
		mirrorUp: make(map[MirrorID]int64, nM), pathUp: make(map[pathKey]int64, len(in.Paths)),
	}

	// Since when each mirror and path has been up, for slow start.
	sc.sh.mSince = make([]int64, nM)
	for i, m := range in.Mirrors {
		if m.Up {
			s, ok := prev.mirrorUp[m.ID]
			if !ok {
				s = born
			}
			next.mirrorUp[m.ID] = s
			sc.sh.mSince[i] = s
		}
	}
	sc.sh.pSince = make([]int64, nR*nM)
	for k, pi := range ix.path {
		if pi == 0 || !in.Paths[pi-1].Up {
			continue
		}
		p := &in.Paths[pi-1]
		key := pathKey{p.Region, p.Mirror}
		s, ok := prev.pathUp[key]
		if !ok {
			s = born
		}
		next.pathUp[key] = s
		sc.sh.pSince[k] = s
	}

	// Group resources by (profile, in-sync replicas with their sync age).
	profIdx := map[Profile]int{}
	var profiles []Profile
	groupIdx := map[string]int{}
	groupOf := make([]int32, nRes)
	prevRow := make([]int, nRes)
	next.resources = make([]resState, nRes)
	next.resIdx = make(map[ResourceID]int, nRes)
	var key []byte
	for i := range in.Resources {
		res := &in.Resources[i]
		pr, ok := prev.resIdx[res.ID]
		if !ok {
			pr = -1
		}
		prevRow[i] = pr
		var old []repSince
		if pr >= 0 {
			old = prev.resources[pr].sync
		}
		reps := make([]repSince, 0, len(res.Replicas))
		for _, r := range res.Replicas {
			if r.InSync {
				reps = append(reps, repSince{m: r.Mirror})
			}
		}
		slices.SortFunc(reps, func(a, b repSince) int { return cmp.Compare(a.m, b.m) })
		for j := range reps {
			reps[j].since = born
			if k, found := slices.BinarySearchFunc(old, reps[j].m, func(x repSince, m MirrorID) int { return cmp.Compare(x.m, m) }); found {
				reps[j].since = old[k].since
			}
		}
		next.resources[i] = resState{id: res.ID, sync: reps}
		next.resIdx[res.ID] = i

		p, ok := profIdx[res.Profile]
		if !ok {
			p = len(profiles)
			profIdx[res.Profile] = p
			profiles = append(profiles, res.Profile)
		}
		key = binary.LittleEndian.AppendUint32(key[:0], uint32(p))
		for _, r := range reps {
			key = binary.LittleEndian.AppendUint32(key, r.m)
			key = binary.LittleEndian.AppendUint64(key, uint64(r.since))
		}
		g, ok := groupIdx[string(key)]
		if !ok {
			g = len(sc.groups)
			groupIdx[string(key)] = g
			pos := make([]int32, nM)
			for k := range pos {
				pos[k] = -1
			}
			bits := make([]uint64, (nM+63)/64)
			for j, r := range reps {
				pos[ix.pos(r.m)] = int32(j)
				setBit(bits, ix.pos(r.m))
			}
			sc.groups = append(sc.groups, group{profile: p, reps: reps, pos: pos, bits: bits})
		}
		groupOf[i] = int32(g)
	}
	sc.buildTables(profiles)

	// Previous column of each region, when the region existed.
	prevCol := make([]int, nR)
	for r, id := range in.Regions {
		pc, ok := prev.regIdx[id]
		if !ok || prev.slots != c.Slots {
			pc = -1 // a changed table size starts every route afresh
		}
		prevCol[r] = pc
	}
	pnR := len(prev.regions)

	// One decision per distinct (group, region, previous state).
	sc.grs = make([]grInfo, len(sc.groups)*nR)
	sc.singles = make([]qv, nM)
	// Every (group, region) has at least one entry; most have exactly one.
	sc.entries = make([]entry, 0, len(sc.groups)*nR+16)
	memo := make([]int32, len(sc.groups)*nR)
	for k := range memo {
		memo[k] = -1
	}
	routeEntry := make([]int32, nRes*nR)
	for i := range in.Resources {
		g := int(groupOf[i])
		dem := in.Resources[i].Demand
		for r := range nR {
			var st *routeState
			if prevRow[i] >= 0 && prevCol[r] >= 0 {
				st = prev.routes[prevRow[i]*pnR+prevCol[r]]
			}
			k := g*nR + r
			ei := memo[k]
			for ei >= 0 && sc.entries[ei].prev != st {
				ei = sc.entries[ei].link
			}
			if ei < 0 {
				gr := &sc.grs[k]
				if !gr.done {
					sc.groupRegion(gr, &sc.groups[g], r)
				}
				en := entry{gr: gr, prev: st, why: sc.newWhy(), first: int32(i*nR + r), link: memo[k]}
				en.next = e.decide(gr, st, now, en.why)
				var cur, nq qv
				if st != nil {
					cur = st.q
				}
				if en.next != nil {
					nq = en.next.q
				}
				en.moved, en.changed = moves(cur, nq), !cur.equal(nq)
				ei = int32(len(sc.entries))
				sc.entries = append(sc.entries, en)
				memo[k] = ei
			}
			routeEntry[i*nR+r] = ei
			if dem != nil {
				sc.entries[ei].demand += dem[r]
			}
		}
	}

	res := &Result{Slots: c.Slots, Routes: make([]Route, nRes*nR), regions: nR}
	if c.capOn {
		next.saturated = sc.spill(res)
	}
	next.routes = make([]*routeState, nRes*nR)
	for i := range in.Resources {
		id := in.Resources[i].ID
		for r := range nR {
			idx := i*nR + r
			en := &sc.entries[routeEntry[idx]]
			next.routes[idx] = en.next
			rt := &res.Routes[idx]
			rt.Resource, rt.Region, rt.Moved, rt.Changed, rt.Spilled, rt.Why = id, in.Regions[r], en.moved, en.changed, en.spilled, en.why
			if en.next != nil {
				rt.Weights = en.next.w
			}
		}
	}
	for i := range res.Routes {
		rt := &res.Routes[i]
		res.MovedSlots += rt.Moved
		if rt.Changed {
			res.Changed++
		}
		if rt.Spilled > 0 {
			res.Spilled++
		}
		if rt.Why.Panic { // in panic whatever the mode (a failover in panic too)
			res.Panic++
		}
	}
	return res, next, nil
}

func (sc *stepCtx) newWhy() *Explanation {
	if len(sc.whys) == 0 {
		sc.whys = make([]Explanation, 1024)
	}
	w := &sc.whys[0]
	sc.whys = sc.whys[1:]
	return w
}

// buildTables computes the cost of every path for every profile class and
// ranks the mirrors of each region.
func (sc *stepCtx) buildTables(profiles []Profile) {
	c := &sc.e.c
	in := sc.in
	nR, nM := len(in.Regions), len(in.Mirrors)
	queue := make([]float64, nM)
	for i, m := range in.Mirrors {
		svc := c.svcMs
		if m.ServiceTime > 0 {
			svc = ms(m.ServiceTime)
		}
		rho := min(m.Utilization, c.MaxUtilization)
		queue[i] = svc * rho / (1 - rho)
	}
	sc.tables = make([]costTable, len(profiles)*nR)
	for p, pr := range profiles {
		rt := pr.RoundTrips
		if rt == 0 {
			rt = 1
		}
		for r := range nR {
			t := &sc.tables[p*nR+r]
			t.cost = make([]CandidateCost, nM)
			t.healthy = make([]bool, nM)
			t.recent = make([]float64, nM)
			t.pathBits = make([]uint64, (nM+63)/64)
			t.healthyBits = make([]uint64, (nM+63)/64)
			for mi := range nM {
				pi := sc.ix.path[r*nM+mi]
				if pi == 0 {
					continue // not measured from this region: never a candidate
				}
				pa := &in.Paths[pi-1]
				bw := pa.Bandwidth
				if bw == 0 {
					bw = c.bwBps
				}
				cc := CandidateCost{
					Mirror:   in.Mirrors[mi].ID,
					Healthy:  pa.Up && in.Mirrors[mi].Up,
					RTT:      ms(pa.RTT) * rt,
					Queue:    queue[mi],
					Transfer: pr.Bytes * 8 / bw * 1000,
					Hops:     float64(pa.Hops) * c.hopMs,
					Loss:     pa.Loss * rt * c.lossMs,
					Jitter:   c.JitterWeight * ms(pa.Jitter),
				}
				cc.Cost = cc.RTT + cc.Queue + cc.Transfer + cc.Hops + cc.Loss + cc.Jitter
				t.recent[mi] = cc.Cost
				if pa.Recent > 0 && pa.Recent < pa.RTT && !c.PeakIncumbent {
					t.recent[mi] -= (ms(pa.RTT) - ms(pa.Recent)) * rt
				}
				t.cost[mi] = cc
				t.healthy[mi] = cc.Healthy
				setBit(t.pathBits, mi)
				if cc.Healthy {
					setBit(t.healthyBits, mi)
				}
				t.order = append(t.order, int32(mi))
			}
			slices.SortFunc(t.order, func(a, b int32) int {
				if x := cmp.Compare(t.cost[a].Cost, t.cost[b].Cost); x != 0 {
					return x
				}
				return cmp.Compare(t.cost[a].Mirror, t.cost[b].Mirror)
			})
		}
	}
}

// groupRegion derives the health, panic state and desired target of a
// group's candidates in region r.
func (sc *stepCtx) groupRegion(gr *grInfo, g *group, r int) {
	c := &sc.e.c
	nR := len(sc.in.Regions)
	*gr = grInfo{done: true, r: int32(r), sh: sc.sh, tbl: &sc.tables[g.profile*nR+r], g: g}
	for w, b := range g.bits {
		gr.total += int32(bits.OnesCount64(b & gr.tbl.pathBits[w]))
		gr.healthy += int32(bits.OnesCount64(b & gr.tbl.healthyBits[w]))
	}
	if gr.total == 0 {
		return
	}
	gr.panic = c.panicOn && float64(gr.healthy) < c.Panic*float64(gr.total)

	// Weights: the best healthy candidate, plus near ties by softmin; in
	// panic, every candidate equally (Envoy: health is not trusted).
	type mw struct {
		m MirrorID
		w uint32
	}
	var ws [8]mw
	w := ws[:0]
	best := -1.0
	for _, mi := range gr.tbl.order {
		if !hasBit(g.bits, int(mi)) {
			continue
		}
		cc := &gr.tbl.cost[mi]
		if gr.panic {
			w = append(w, mw{cc.Mirror, 1})
			continue
		}
		if !gr.tbl.healthy[mi] {
			continue
		}
		if best < 0 {
			best = cc.Cost
			w = append(w, mw{cc.Mirror, 1 << 20})
			if !c.tieOn {
				break
			}
			continue
		}
		if cc.Cost > best*(1+c.TieBand) {
			break // ranked by cost: nothing further is a near tie
		}
		// Softmin over the near ties, temperature TieBand·best/3: the edge
		// of the band gets e⁻³ ≈ 5% of the best's weight.
		tau := c.TieBand * best / 3
		wt := 1.0
		if tau > 0 {
			wt = math.Exp(-(cc.Cost - best) / tau)
		}
		if v := uint32(math.Round(wt * (1 << 20))); v > 0 {
			w = append(w, mw{cc.Mirror, v})
		}
	}
	switch len(w) {
	case 0:
		return
	case 1:
		mi := sc.ix.pos(w[0].m)
		if sc.singles[mi] == nil {
			sc.singles[mi] = qv{{w[0].m, int32(c.Slots)}}
		}
		gr.target = sc.singles[mi]
		return
	}
	// Largest-remainder quotas, as chash.Quotas computes them; the data
	// plane gets the quotas themselves as weights, which chash quantizes
	// back to exactly these counts.
	claims := make([]int64, len(w))
	ids := make([]MirrorID, len(w))
	for i, x := range w {
		claims[i], ids[i] = int64(x.w), x.m
	}
	quota := apportion(int64(c.Slots), claims)
	n := make([]int32, len(w))
	for i, k := range quota {
		n[i] = int32(k)
	}
	gr.target = fromCounts(ids, n)
}

// decide applies failover, panic, hysteresis, dwell, slow start and slew to
// one route and fills why. It returns the route's new state (nil: no route).
func (e *Engine) decide(gr *grInfo, st *routeState, now int64, why *Explanation) *routeState {
	c := &e.c
	var cur, goal qv
	var streak int32
	var last int64
	var sw []int64
	if st != nil {
		cur, goal, streak, last, sw = st.q, st.goal, st.streak, st.lastSwitch, st.switches
	}
	*why = Explanation{
		gr: gr, Healthy: int(gr.healthy), Total: int(gr.total), Panic: gr.panic,
		CurrentCost: gr.costOf(cur, true), TargetCost: gr.costOf(gr.target, false),
	}
	finish := func(q qv, mode Mode) *routeState {
		why.Mode = mode
		why.Streak = int(streak)
		if du := c.dwellUntil(last, sw); du > now {
			why.DwellUntil = time.Unix(0, du)
		}
		switch {
		case len(q) == 0:
			return nil
		case st != nil && q.equal(st.q) && goal.equal(st.goal) && streak == st.streak && last == st.lastSwitch && gr.panic == st.panic:
			return st // nothing changed: keep sharing the old state
		}
		ns := &routeState{q: q, goal: goal, streak: streak, panic: gr.panic, lastSwitch: last, switches: sw}
		if st != nil && q.equal(st.q) {
			ns.w = st.w
		} else {
			ns.w = gr.weights(q)
		}
		return ns
	}
	switchNow := func() {
		last, sw = now, c.recordSwitch(sw, now)
	}

	// Failures bypass damping: slots on mirrors that are no longer
	// eligible (down, out of sync, gone) move now; slots on healthy
	// mirrors stay where they are.
	freed := 0
	for _, x := range cur {
		if !gr.eligible(x.m) {
			freed += int(x.n)
		}
	}
	kept := cur
	if freed > 0 {
		kept = make(qv, 0, len(cur))
		for _, x := range cur {
			if gr.eligible(x.m) {
				kept = append(kept, x)
			}
		}
	}
	why.Forced = freed
	for _, x := range goal {
		if !gr.eligible(x.m) {
			goal = nil // the accepted target lost a mirror: settle, re-evaluate
			break
		}
	}
	capped := gr.sh.addsLoad(goal, cur)
	if capped {
		goal = nil // moving on would only be spilled back
	}
	switch {
	case gr.target == nil:
		goal, streak, last, sw = nil, 0, 0, nil
		return finish(nil, ModeNone)
	case len(kept) == 0:
		goal, streak = nil, 0
		if len(cur) == 0 {
			return finish(gr.target, ModeInstall)
		}
		switchNow()
		return finish(gr.target, ModeFailover)
	case freed > 0:
		streak = 0
		switchNow()
		return finish(refill(kept, gr.target, freed), ModeFailover)
	case gr.panic:
		goal, streak = nil, 0
		return finish(slew(cur, gr.target, c.budget), ModePanic)
	}

	mode := ModeMoving
	if goal == nil {
		gain := why.CurrentCost - why.TargetCost
		why.Gain = gain
		need := max(c.MinGain*why.CurrentCost, c.gainAbsMs)
		if !cur.equal(gr.target) && gain > 0 && gain >= need {
			streak++
		} else {
			streak = 0
		}
		switch {
		case streak == 0 && capped:
			return finish(cur, ModeCapped)
		case streak == 0:
			return finish(cur, ModeHold)
		case gr.sh.addsLoad(gr.target, cur):
			return finish(cur, ModeCapped)
		case int(streak) < c.Confirm:
			return finish(cur, ModeConfirming)
		case now < c.dwellUntil(last, sw):
			return finish(cur, ModeDwell)
		}
		goal, streak = gr.target, 0
		switchNow()
		mode = ModeSwitch
	}
	q := slew(cur, e.slowCap(gr, goal, cur), c.budget)
	if q.equal(goal) {
		goal = nil
	}
	return finish(q, mode)
}

// addsLoad reports whether moving from cur to q gives slots to a mirror
// the previous step left at its capacity cap.
func (sh *stepShared) addsLoad(q, cur qv) bool {
	if len(sh.saturated) == 0 {
		return false
	}
	for _, x := range q {
		if sh.saturated[x.m] && x.n > cur.get(x.m) {
			return true
		}
	}
	return false
}

// slowCap limits each slow-starting mirror of goal to max(its current
// slots, factor·goal slots); the slots it may not take yet stay with the
// mirrors currently giving them up.
func (e *Engine) slowCap(gr *grInfo, goal, cur qv) qv {
	if !e.c.slowOn {
		return goal
	}
	limited := false
	for _, x := range goal {
		if mi := gr.sh.ix.pos(x.m); gr.member(mi) && x.n > cur.get(x.m) && gr.slow(mi) < 1 {
			limited = true
			break
		}
	}
	if !limited {
		return goal
	}
	ids := union(goal, cur)
	n := make([]int32, len(ids))
	claims := make([]int64, len(ids))
	var held int64
	for i, m := range ids {
		g, c := goal.get(m), cur.get(m)
		n[i] = g
		if c > g {
			claims[i] = int64(c - g)
		}
		mi := gr.sh.ix.pos(m)
		if g <= c || !gr.member(mi) {
			continue
		}
		f := gr.slow(mi)
		if f >= 1 {
			continue
		}
		if lim := max(c, int32(math.Ceil(f*float64(g)))); lim < g {
			held += int64(g - lim)
			n[i] = lim
		}
	}
	if held == 0 {
		return goal
	}
	give := apportion(held, claims)
	var total int64
	for _, x := range give {
		total += x
	}
	if total != held {
		return goal // nobody is giving slots up: nothing to hold back
	}
	for i := range n {
		n[i] += int32(give[i])
	}
	return fromCounts(ids, n)
}
