package forecast

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestMedianNear checks the pivoted selection against a sort on windows
// with ties, zeros and guesses at, near and far from the median.
func TestMedianNear(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 20000; trial++ {
		n := 1 + rng.IntN(80)
		v := make([]float64, n)
		levels := 1 + rng.IntN(12) // few levels: many ties
		for i := range v {
			switch rng.IntN(4) {
			case 0:
				v[i] = 0
			case 1:
				v[i] = float64(rng.IntN(levels))
			default:
				v[i] = rng.NormFloat64() * 3
			}
		}
		sorted := slices.Clone(v)
		slices.Sort(sorted)
		want := sorted[n/2]
		var guess float64
		switch rng.IntN(6) {
		case 0:
			guess = want
		case 1:
			guess = sorted[max(n/2-1-rng.IntN(10), 0)]
		case 2:
			guess = sorted[min(n/2+1+rng.IntN(10), n-1)]
		case 3:
			guess = want + (rng.Float64()-0.5)*0.1
		case 4:
			guess = []float64{math.Inf(1), math.Inf(-1), math.NaN(), 1e300}[rng.IntN(4)]
		default:
			guess = rng.NormFloat64() * 5
		}
		in := slices.Clone(v)
		if got := medianNear(in, guess); got != want {
			t.Fatalf("trial %d: medianNear(%v, %v) = %v, want %v", trial, v, guess, got, want)
		}
		if got := median(slices.Clone(v)); got != want {
			t.Fatalf("trial %d: median(%v) = %v, want %v", trial, v, got, want)
		}
	}
	if got := medianNear(nil, 1); got != 0 {
		t.Fatalf("empty: %v", got)
	}
	if got, want := medianNear([]float64{1, math.NaN(), 3}, 1), median([]float64{1, math.NaN(), 3}); math.Float64bits(got) != math.Float64bits(want) {
		t.Fatalf("NaN: %v does not fall back to median", got)
	}
}

// TestRunFollowsWeights checks the kept count of positive weights in a
// row against a scan of the ring through spikes (down-weighted, still
// positive), skipped buckets, fills, long gaps and a restore.
func TestRunFollowsWeights(t *testing.T) {
	m, err := NewHybrid(HybridConfig{Step: time.Hour, Horizon: 6, Window: 24 * 14}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	at := t0
	check := func(i int, what string) {
		t.Helper()
		if got, want := min(m.run, m.n, int64(m.W)), m.countRun(); got != want {
			t.Fatalf("bucket %d (%s): run %d, ring says %d", i, what, got, want)
		}
	}
	for i := 0; i < 24*40; i++ {
		var what string
		var err error
		switch r := rng.IntN(100); {
		case i > 0 && r < 4:
			what, err = "skip", m.Skip(at)
		case i > 0 && r < 7:
			what, err = "fill", m.fill(at, 10)
		case i > 24*20 && r < 8:
			what = "long gap"
			gap := int64(m.W) + int64(rng.IntN(48))
			if err = m.skipMany(gap, at.Add(time.Duration(gap-1)*time.Hour)); err == nil {
				at = at.Add(time.Duration(gap) * time.Hour)
				check(i, what)
				continue
			}
		case r < 12:
			what, err = "spike", m.Observe(at, 1e6)
		default:
			what, err = "value", m.Observe(at, float64(10+rng.IntN(5)))
		}
		if err != nil {
			t.Fatalf("bucket %d (%s): %v", i, what, err)
		}
		at = at.Add(time.Hour)
		check(i, what)
		if i%97 == 0 {
			en := &enc{}
			m.encode(en)
			r, err := NewHybrid(m.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := &dec{b: en.b}
			r.decode(d)
			if d.err != nil {
				t.Fatal(d.err)
			}
			if min(r.run, r.n, int64(r.W)) != min(m.run, m.n, int64(m.W)) {
				t.Fatalf("bucket %d: restored run %d, want %d", i, r.run, m.run)
			}
			m = r
		}
	}
}

// TestMedLaggedMemo checks the seasonal medians found again by target
// against the medians computed afresh, through the window filling up,
// skipped and down-weighted buckets and a long gap.
func TestMedLaggedMemo(t *testing.T) {
	for _, W := range []int{24 * 9, 24*28 - 10, 24 * 28} {
		m, err := NewHybrid(HybridConfig{Step: time.Hour, Horizon: 24, Window: W}, nil)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(9, uint64(W)))
		at := t0
		hits := 0
		for i := 0; i < 24*60; i++ {
			var err error
			switch r := rng.IntN(100); {
			case i > 0 && r < 5:
				err = m.Skip(at)
			case i > 24*30 && r < 6:
				gap := int64(m.W) + int64(rng.IntN(30))
				err = m.skipMany(gap, at.Add(time.Duration(gap-1)*time.Hour))
				at = at.Add(time.Duration(gap-1) * time.Hour)
			case r < 10:
				err = m.Observe(at, 1e5)
			default:
				err = m.Observe(at, float64(rng.IntN(50)))
			}
			if err != nil {
				t.Fatal(err)
			}
			at = at.Add(time.Hour)
			m.sc = new(hybridScratch)
			m.sc.tmp = make([]float64, m.W)
			idx := m.n - 1
			for _, c := range []struct {
				lag, maxK int
				memo      *medMemo
			}{{m.pl.lagDay, 7, &m.memoDay}, {m.pl.lagWk, 0, &m.memoWk}} {
				for h := 1; h <= 24; h++ {
					before := *c.memo
					before.tag = slices.Clone(c.memo.tag)
					got := m.medLagged(idx, h, c.lag, c.maxK, -1, c.memo)
					want := m.medLagged(idx, h, c.lag, c.maxK, -1, nil)
					if got != want {
						t.Fatalf("W %d bucket %d lag %d h %d: memo gives %v, afresh %v", W, i, c.lag, h, got, want)
					}
					if slices.Equal(before.tag, c.memo.tag) && want != -1 {
						hits++
					}
				}
			}
			m.sc = nil
		}
		if hits < 24*60*20 {
			t.Fatalf("W %d: only %d medians found again", W, hits)
		}
	}
}

// TestSortAwakeFrom checks the sort from the last order against sortAwake
// (a stable sort in expert order) from any start, with ties and sleeping
// experts, and that the order stays a permutation of the experts.
func TestSortAwakeFrom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	var order [numExp]int
	for trial := 0; trial < 50000; trial++ {
		var f [numExp]float64
		var avail [numExp]bool
		for k := range f {
			avail[k] = rng.IntN(6) > 0
			switch rng.IntN(5) {
			case 0:
				f[k] = math.NaN()
			case 1:
				f[k] = float64(rng.IntN(3))
			default:
				f[k] = rng.NormFloat64()
			}
		}
		if trial%7 == 0 {
			rng.Shuffle(numExp, func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		var idx [numExp]int
		want := slices.Clone(sortAwake(&f, &avail, &idx))
		if got := sortAwakeFrom(&f, &avail, &order); !slices.Equal(got, want) {
			t.Fatalf("trial %d: sortAwakeFrom(%v, %v) = %v, want %v", trial, f, avail, got, want)
		}
		seen := order
		slices.Sort(seen[:])
		for k, v := range seen {
			if v != k {
				t.Fatalf("trial %d: order %v is not a permutation", trial, order)
			}
		}
	}
}

// weightedMedian is the weighted median of the available, awake experts'
// forecasts f with weights w: the point forecast that minimises the
// weighted absolute loss, where the weighted mean minimises the squared
// one (for a burst half the experts expect, the mean is a level no bucket
// ever has). combine computes it with weightedMedianSum over
// sortAwakeFrom's order; this is the reference for the tests.
func weightedMedian(f *[numExp]float64, w []float64, avail *[numExp]bool) float64 {
	var idx [numExp]int
	sw := 0.0
	for k, ok := range avail {
		if ok && !math.IsNaN(f[k]) {
			sw += w[k]
		}
	}
	return weightedMedianSum(f, w, sw, sortAwake(f, avail, &idx))
}

// sortAwake writes into idx the available, awake experts (forecast not
// NaN) in ascending order of forecast and returns that prefix of idx: a
// stable insertion sort from expert order, the reference for
// sortAwakeFrom (which combine uses).
func sortAwake(f *[numExp]float64, avail *[numExp]bool, idx *[numExp]int) []int {
	n := 0
	for k, ok := range avail {
		if ok && !math.IsNaN(f[k]) {
			idx[n] = k
			n++
		}
	}
	for i := 1; i < n; i++ { // insertion sort by forecast: at most numExp entries
		for j := i; j > 0 && f[idx[j]] < f[idx[j-1]]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	return idx[:n]
}
