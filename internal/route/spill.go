package route

import (
	"cmp"
	"math"
	"slices"
)

// spill enforces the capacity cap after damping, as Edge Fabric does for
// peering links: the projected load of a mirror is Σ demand × share over
// the committed routes; for each mirror above CapacityCap·Capacity, the
// routes that lose least by moving (smallest cost regret to their next
// candidate) shed demand to their cheapest eligible candidate with headroom
// until the mirror is under the cap. Spill-over bypasses hysteresis and
// slew, as a failure does: an overloaded mirror is a failure in the making.
//
// It works on step entries (routes sharing group, region and state) and
// moves the same slots in every route of an entry, so spilled routes keep
// sharing their state and the next step still computes them once.
func (sc *stepCtx) spill(res *Result) map[MirrorID]bool {
	c := &sc.e.c
	in := sc.in
	nM := len(in.Mirrors)
	S := float64(c.Slots)
	limit := make([]float64, nM)
	capped := false
	for i, m := range in.Mirrors {
		limit[i] = math.Inf(1)
		if m.Capacity > 0 {
			limit[i] = c.CapacityCap * m.Capacity
			capped = true
		}
	}
	if !capped {
		return nil
	}
	load := make([]float64, nM)
	for i := range sc.entries {
		en := &sc.entries[i]
		if en.demand == 0 || en.next == nil {
			continue
		}
		for _, x := range en.next.q {
			load[sc.ix.pos(x.m)] += en.demand * float64(x.n) / S
		}
	}
	const eps = 1e-9
	var over []int

	for i := range nM {
		if load[i] > limit[i]+eps {
			over = append(over, i)
		}
	}
	if len(over) == 0 {
		return saturated(in, load, limit)
	}
	slices.SortFunc(over, func(a, b int) int { return cmp.Compare(in.Mirrors[a].ID, in.Mirrors[b].ID) })

	type spillKey struct {
		from     *routeState
		src, dst MirrorID
		slots    int32
	}
	interned := map[spillKey]*routeState{}
	type victim struct {
		en     int
		regret float64
	}
	// One pass collects, per overloaded mirror, the entries using it and
	// their regret: the extra cost of their next eligible candidate.
	isOver := make([]int, nM)
	for k, mi := range over {
		isOver[mi] = k + 1
	}
	victims := make([][]victim, len(over))
	for i := range sc.entries {
		en := &sc.entries[i]
		if en.demand == 0 || en.next == nil {
			continue
		}
		for _, x := range en.next.q {
			mi := sc.ix.pos(x.m)
			if isOver[mi] == 0 {
				continue
			}
			g := en.gr
			for _, oi := range g.tbl.order {
				if int(oi) != mi && g.eligibleIdx(int(oi)) {
					victims[isOver[mi]-1] = append(victims[isOver[mi]-1], victim{i, g.tbl.cost[oi].Cost - g.tbl.cost[mi].Cost})
					break
				}
			}
		}
	}
	for k, mi := range over {
		m := in.Mirrors[mi].ID
		vs := victims[k]
		slices.SortFunc(vs, func(a, b victim) int {
			if x := cmp.Compare(a.regret, b.regret); x != 0 {
				return x
			}
			return cmp.Compare(sc.entries[a.en].first, sc.entries[b.en].first)
		})
		for _, v := range vs {
			en := &sc.entries[v.en]
			// Shed to the cheapest candidate with headroom, then the next,
			// until the mirror is under its cap or the entry has no share
			// left on it.
			for load[mi]-limit[mi] > eps {
				g := en.gr
				slot := en.demand / S // the load one slot of this entry carries
				dst := -1
				for _, oi := range g.tbl.order {
					if int(oi) != mi && g.eligibleIdx(int(oi)) && limit[oi]-load[oi] >= slot {
						dst = int(oi)
						break
					}
				}
				st := en.next
				qm := st.q.get(m)
				if dst < 0 || qm == 0 {
					break
				}
				dm := in.Mirrors[dst].ID
				// Enough slots to clear the excess, but no more than the
				// destination can take without going over its own cap.
				// Clamped in float64: an uncapped destination has infinite
				// room and a tiny entry needs more slots than int32 holds,
				// and converting either to int32 is undefined (−2^31 on
				// amd64, which stopped the spill).
				need := math.Ceil((load[mi]-limit[mi])/slot - eps)
				room := math.Floor((limit[dst] - load[dst]) / slot)
				slots := int32(min(float64(qm), need, room))
				if slots <= 0 {
					break
				}
				k := spillKey{st, m, dm, slots}
				ns, ok := interned[k]
				if !ok {
					ids := union(st.q, qv{{dm, 0}})
					n := make([]int32, len(ids))
					for j, id := range ids {
						n[j] = st.q.get(id)
						switch id {
						case m:
							n[j] -= slots
						case dm:
							n[j] += slots
						}
					}
					cp := *st
					cp.q = fromCounts(ids, n)
					cp.w = cp.q.weightsMap()
					ns = &cp
					interned[k] = ns
				}
				en.next = ns
				en.spilled += int(slots)
				var old qv
				if en.prev != nil {
					old = en.prev.q
				}
				en.moved, en.changed = moves(old, ns.q), !old.equal(ns.q)
				shed := float64(slots) * en.demand / S
				load[mi] -= shed
				load[dst] += shed
			}
			if load[mi]-limit[mi] <= eps {
				break
			}
		}
	}
	for i := range nM {
		if load[i] > limit[i]+eps {
			res.Overloaded = append(res.Overloaded, in.Mirrors[i].ID)
		}
	}
	slices.Sort(res.Overloaded)
	return saturated(in, load, limit)
}

// saturated lists the mirrors whose projected load is within 1% of their
// cap: the next step will not start moving more load onto them.
func saturated(in *Input, load, limit []float64) map[MirrorID]bool {
	var s map[MirrorID]bool
	for i := range load {
		if load[i] >= 0.99*limit[i] {
			if s == nil {
				s = map[MirrorID]bool{}
			}
			s[in.Mirrors[i].ID] = true
		}
	}
	return s
}
