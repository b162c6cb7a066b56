package route

import (
	"math/rand/v2"
	"testing"

	"github.com/premirror/premirror/internal/chash"
)

func q(pairs ...int) qv {
	var ids []MirrorID
	var n []int32
	for i := 0; i < len(pairs); i += 2 {
		ids = append(ids, MirrorID(pairs[i]))
		n = append(n, int32(pairs[i+1]))
	}
	return fromCounts(ids, n)
}

func TestMovesMatchesChash(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for range 200 {
		a, b := randQ(r, 64), randQ(r, 64)
		toInt := func(x qv) map[uint32]int {
			m := map[uint32]int{}
			for _, e := range x {
				m[e.m] = int(e.n)
			}
			return m
		}
		if got, want := moves(a, b), chash.IdealMoves(toInt(a), toInt(b)); got != want {
			t.Fatalf("moves(%v, %v) = %d, chash says %d", a, b, got, want)
		}
	}
}

// randQ draws quotas over up to 6 of 8 mirrors summing to slots.
func randQ(r *rand.Rand, slots int) qv {
	w := map[uint32]uint32{}
	for range 1 + r.IntN(6) {
		w[uint32(1+r.IntN(8))] = uint32(1 + r.IntN(100))
	}
	qs, _ := chash.Quotas(w, slots)
	var ids []MirrorID
	var n []int32
	for m, k := range qs {
		ids = append(ids, m)
		n = append(n, int32(k))
	}
	return fromCounts(ids, n)
}

func TestSlew(t *testing.T) {
	tests := []struct {
		name     string
		cur, tgt qv
		budget   int
		want     qv
	}{
		{"within budget reaches target", q(1, 60, 2, 40), q(1, 50, 2, 50), 10, q(1, 50, 2, 50)},
		{"full switch limited", q(1, 100), q(2, 100), 10, q(1, 90, 2, 10)},
		{"split giving", q(1, 100), q(2, 50, 3, 50), 10, q(1, 90, 2, 5, 3, 5)},
		{"split taking", q(1, 50, 2, 50), q(3, 100), 10, q(1, 45, 2, 45, 3, 10)},
		{"largest remainder", q(1, 100), q(2, 70, 3, 30), 5, q(1, 95, 2, 4, 3, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := slew(tt.cur, tt.tgt, tt.budget)
			if !got.equal(tt.want) {
				t.Fatalf("slew = %v, want %v", got, tt.want)
			}
			if m := moves(tt.cur, got); m > tt.budget {
				t.Fatalf("moved %d > budget %d", m, tt.budget)
			}
		})
	}
	r := rand.New(rand.NewPCG(2, 2))
	for range 500 {
		a, b := randQ(r, 1024), randQ(r, 1024)
		budget := 1 + r.IntN(200)
		got := slew(a, b, budget)
		if got.sum() != 1024 {
			t.Fatalf("slew sum %d", got.sum())
		}
		if want := min(budget, moves(a, b)); moves(a, got) != want {
			t.Fatalf("slew moved %d, want exactly %d", moves(a, got), want)
		}
		if moves(a, got)+moves(got, b) != moves(a, b) {
			t.Fatalf("slew step %v is not on the way from %v to %v", got, a, b)
		}
	}
}

func TestRefill(t *testing.T) {
	// Mirror 3 failed holding 40 slots; the target wants 1 and 2 equal.
	got := refill(q(1, 40, 2, 20), q(1, 50, 2, 50), 40)
	if !got.equal(q(1, 50, 2, 50)) {
		t.Fatalf("refill = %v", got)
	}
	// Deficits larger than the freed slots: proportional.
	got = refill(q(1, 90), q(2, 50, 3, 50), 10)
	if !got.equal(q(1, 90, 2, 5, 3, 5)) {
		t.Fatalf("refill = %v", got)
	}
}

func TestApportion(t *testing.T) {
	tests := []struct {
		total  int64
		claims []int64
		want   []int64
	}{
		{10, []int64{1, 1}, []int64{5, 5}},
		{3, []int64{1, 1}, []int64{2, 1}},
		{1, []int64{0, 3, 1}, []int64{0, 1, 0}},
		{0, []int64{4}, []int64{0}},
		{5, []int64{0, 0}, []int64{0, 0}},
	}
	for _, tt := range tests {
		got := apportion(tt.total, tt.claims)
		for i := range got {
			if got[i] != tt.want[i] {
				t.Fatalf("apportion(%d, %v) = %v, want %v", tt.total, tt.claims, got, tt.want)
			}
		}
	}
}
