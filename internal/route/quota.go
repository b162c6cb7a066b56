package route

import (
	"cmp"
	"slices"
)

// mq is one mirror's slot count in a route table.
type mq struct {
	m MirrorID
	n int32
}

// qv is a route's slot quotas, sorted by mirror, no zero entries. The sum is
// the table size. A qv is never modified once built: routes share them.
type qv []mq

func (q qv) get(m MirrorID) int32 {
	for _, x := range q {
		if x.m == m {
			return x.n
		}
		if x.m > m {
			break
		}
	}
	return 0
}

func (q qv) sum() int {
	s := 0
	for _, x := range q {
		s += int(x.n)
	}
	return s
}

func (q qv) equal(o qv) bool {
	return slices.Equal(q, o)
}

// moves is chash.IdealMoves for two quota vectors: Σ max(0, a[m] − b[m]).
func moves(a, b qv) int {
	n := 0
	i, j := 0, 0
	for i < len(a) {
		switch {
		case j >= len(b) || a[i].m < b[j].m:
			n += int(a[i].n)
			i++
		case a[i].m > b[j].m:
			j++
		default:
			if d := a[i].n - b[j].n; d > 0 {
				n += int(d)
			}
			i++
			j++
		}
	}
	return n
}

// weightsMap converts q to the data plane's map form.
func (q qv) weightsMap() map[MirrorID]uint32 {
	if len(q) == 0 {
		return nil
	}
	w := make(map[MirrorID]uint32, len(q))
	for _, x := range q {
		w[x.m] = uint32(x.n)
	}
	return w
}

// fromCounts builds a qv from a dense accumulator, dropping zeros.
func fromCounts(ids []MirrorID, n []int32) qv {
	q := make(qv, 0, len(ids))
	for i, m := range ids {
		if n[i] > 0 {
			q = append(q, mq{m, n[i]})
		}
	}
	slices.SortFunc(q, func(a, b mq) int { return cmp.Compare(a.m, b.m) })
	return q
}

// apportion splits total units over claims in proportion to claim sizes,
// by largest remainder (ties to the lower index), never giving an entry
// more than its claim when total ≤ Σ claims.
func apportion(total int64, claims []int64) []int64 {
	out := make([]int64, len(claims))
	var sum int64
	for _, c := range claims {
		sum += c
	}
	if sum == 0 || total == 0 {
		return out
	}
	type rem struct {
		i int
		r int64
	}
	rems := make([]rem, 0, len(claims))
	var given int64
	for i, c := range claims {
		// total and claims are slot counts (≤ 2^20), so the product fits.
		out[i] = c * total / sum
		given += out[i]
		rems = append(rems, rem{i, c * total % sum})
	}
	slices.SortStableFunc(rems, func(a, b rem) int { return cmp.Compare(b.r, a.r) })
	for k := 0; given < total; k++ {
		out[rems[k%len(rems)].i]++
		given++
	}
	return out
}

// union returns the sorted mirror IDs present in a or b.
func union(a, b qv) []MirrorID {
	ids := make([]MirrorID, 0, len(a)+len(b))
	for _, x := range a {
		ids = append(ids, x.m)
	}
	for _, x := range b {
		ids = append(ids, x.m)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// slew moves from cur towards tgt (same sum) by at most budget slots and
// returns the result; exactly min(budget, moves(cur, tgt)) slots move. Slots
// leave each shrinking mirror and reach each growing one in proportion to
// how far each still has to go.
func slew(cur, tgt qv, budget int) qv {
	d := moves(cur, tgt)
	if d <= budget {
		return tgt
	}
	ids := union(cur, tgt)
	dec := make([]int64, len(ids))
	inc := make([]int64, len(ids))
	for i, m := range ids {
		c, t := cur.get(m), tgt.get(m)
		if c > t {
			dec[i] = int64(c - t)
		} else {
			inc[i] = int64(t - c)
		}
	}
	take := apportion(int64(budget), dec)
	give := apportion(int64(budget), inc)
	n := make([]int32, len(ids))
	for i, m := range ids {
		n[i] = cur.get(m) - int32(take[i]) + int32(give[i])
	}
	return fromCounts(ids, n)
}

// refill gives free slots to the mirrors of tgt that cur lacks most, in
// proportion to their deficits; Σ deficits ≥ free whenever
// cur.sum() + free == tgt.sum().
func refill(cur, tgt qv, free int) qv {
	if free == 0 {
		return cur
	}
	ids := union(cur, tgt)
	def := make([]int64, len(ids))
	for i, m := range ids {
		if d := tgt.get(m) - cur.get(m); d > 0 {
			def[i] = int64(d)
		}
	}
	give := apportion(int64(free), def)
	n := make([]int32, len(ids))
	for i, m := range ids {
		n[i] = cur.get(m) + int32(give[i])
	}
	return fromCounts(ids, n)
}
