// Package chash builds the weighted consistent-hash tables the XDP router
// uses to pick a mirror for a new flow: a table is an array of slots, each
// holding a mirror ID, and the router indexes it with the flow hash.
//
// Why not Maglev: Maglev is stateless and balanced, but when a few of N
// backends leave it moves about 2.4× the ideal share of surviving backends'
// slots (M=65537, N=1000; see ANCHORS.md), and its weights are coarse.
// Here a table is derived from the previous table and the new weights:
//
//  1. Quotas: the weights are quantized into exact slot counts (largest
//     remainder), so the table's shares match the weights to one slot.
//  2. Release: a mirror holding more slots than its new quota gives up the
//     slots where its rendezvous score is lowest; a removed mirror gives up
//     all of them. No other slot changes.
//  3. Fill: each released slot goes to the under-quota mirror with the
//     highest rendezvous score for that slot.
//
// The number of slots that change is therefore exactly the minimum any
// table with those quotas could achieve: Σ max(0, old_quota − new_quota).
// The result is deterministic for a given (previous table, weights), so
// every node that applies the same sequence of weights holds byte-identical
// tables; the controller ships whole tables to keep nodes with different
// histories identical.
package chash

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// None is the slot value of an empty slot; mirror IDs start at 1.
const None uint32 = 0

// MaxSlots bounds a table; the data plane sizes its inner maps with it.
const MaxSlots = 1 << 20

// ErrNoWeight is returned when no mirror has a positive weight.
var ErrNoWeight = errors.New("no mirror has a positive weight")

// ValidSlots reports whether n is a usable table size: a power of two (the
// router masks the hash instead of dividing) between 1 and MaxSlots.
func ValidSlots(n int) bool { return n > 0 && n <= MaxSlots && n&(n-1) == 0 }

// Quotas quantizes weights into slot counts that sum to slots. Each mirror
// gets floor(w·slots/W); the slots left over go to the largest remainders,
// ties to the lower mirror ID. Mirrors with zero weight get nothing.
func Quotas(weights map[uint32]uint32, slots int) (map[uint32]int, error) {
	var total uint64
	ids := make([]uint32, 0, len(weights))
	for id, w := range weights {
		if id == None {
			return nil, fmt.Errorf("mirror id %d is reserved", None)
		}
		if w > 0 {
			total += uint64(w)
			ids = append(ids, id)
		}
	}
	if total == 0 {
		return nil, ErrNoWeight
	}
	slices.Sort(ids)
	type rem struct {
		id  uint32
		rem uint64
	}
	q := make(map[uint32]int, len(ids))
	rems := make([]rem, 0, len(ids))
	assigned := 0
	for _, id := range ids {
		hi, lo := bits.Mul64(uint64(weights[id]), uint64(slots))
		quo, r := bits.Div64(hi, lo, total)
		q[id] = int(quo)
		assigned += int(quo)
		rems = append(rems, rem{id, r})
	}
	slices.SortStableFunc(rems, func(a, b rem) int {
		switch {
		case a.rem > b.rem:
			return -1
		case a.rem < b.rem:
			return 1
		}
		return 0
	})
	for i := 0; assigned < slots; i++ {
		q[rems[i].id]++
		assigned++
	}
	return q, nil
}

// Score is the rendezvous score of mirror for slot: a 64-bit mix of both,
// identical on every machine and Go version.
func Score(slot int, mirror uint32) uint64 {
	x := uint64(mirror)<<32 | uint64(uint32(slot))
	// splitmix64 finalizer
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Build returns a table of slots entries for weights, moving as few slots of
// prev as the new quotas allow. prev may be nil or of another size, in which
// case the table is built from scratch.
func Build(prev []uint32, weights map[uint32]uint32, slots int) ([]uint32, error) {
	if !ValidSlots(slots) {
		return nil, fmt.Errorf("table size %d: must be a power of two in [1, %d]", slots, MaxSlots)
	}
	q, err := Quotas(weights, slots)
	if err != nil {
		return nil, err
	}
	table := make([]uint32, slots)
	if len(prev) == slots {
		copy(table, prev)
	}

	// Release: group slots by holder, then trim each holder to its quota,
	// dropping the slots it scores lowest on.
	held := make(map[uint32][]int, len(q))
	for s, m := range table {
		if m == None {
			continue
		}
		if q[m] == 0 {
			table[s] = None
			continue
		}
		held[m] = append(held[m], s)
	}
	deficit := make(map[uint32]int, len(q))
	for m, want := range q {
		have := held[m]
		if extra := len(have) - want; extra > 0 {
			slices.SortFunc(have, func(a, b int) int { return cmpScore(Score(a, m), Score(b, m), a, b) })
			for _, s := range have[:extra] {
				table[s] = None
			}
		} else if extra < 0 {
			deficit[m] = -extra
		}
	}

	// Fill: every empty slot goes to its best-scoring under-quota mirror.
	needy := make([]uint32, 0, len(deficit))
	for m := range deficit {
		needy = append(needy, m)
	}
	slices.Sort(needy)
	for s := range table {
		if table[s] != None {
			continue
		}
		best, bestScore := -1, uint64(0)
		for i, m := range needy {
			if sc := Score(s, m); best < 0 || sc > bestScore {
				best, bestScore = i, sc
			}
		}
		m := needy[best]
		table[s] = m
		if deficit[m]--; deficit[m] == 0 {
			needy = slices.Delete(needy, best, best+1)
		}
	}
	return table, nil
}

func cmpScore(a, b uint64, sa, sb int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return sa - sb
}

// Moved counts the slots whose mirror differs between two tables of the
// same size (all of them when the sizes differ).
func Moved(a, b []uint32) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// Counts returns how many slots each mirror holds.
func Counts(table []uint32) map[uint32]int {
	c := make(map[uint32]int)
	for _, m := range table {
		if m != None {
			c[m]++
		}
	}
	return c
}

// IdealMoves is the least number of slots any table change from quotas
// from to quotas to must move: Σ max(0, from[m] − to[m]).
func IdealMoves(from, to map[uint32]int) int {
	n := 0
	for m, f := range from {
		if d := f - to[m]; d > 0 {
			n += d
		}
	}
	return n
}
