package forecast

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// dailyJob is a quiet series with a nightly one-hour burst: the pattern a
// smooth Fourier profile cannot draw.
func dailyJob(i int, rng *rand.Rand) float64 {
	v := 20 + 2*rng.NormFloat64()
	if i%24 == 3 {
		v += 200
	}
	return v
}

// runHW feeds vals (NaN = missing) to a Holt-Winters of season m, with a
// ring like the hybrid's window.
func runHW(m int, vals []float64) *holtWinters {
	w := newHoltWinters(m)
	ring := func(i int64) (float64, bool) {
		if i < 0 || int(i) >= len(vals) || math.IsNaN(vals[i]) {
			return 0, false
		}
		return vals[i], true
	}
	for i, v := range vals {
		w.observe(int64(i), v, math.IsNaN(v), ring)
	}
	return w
}

func TestHoltWinters(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	job := make([]float64, 24*21)
	for i := range job {
		job[i] = dailyJob(i, rng)
	}
	cases := []struct {
		name string
		vals []float64
		want func(i int) float64 // noise-free value of bucket i
		tol  float64
	}{
		{"daily job", job, func(i int) float64 { return 20 + 200*b2f(i%24 == 3) }, 6},
		{"flat", constSeries(24*5, 7), func(int) float64 { return 7 }, 1e-9},
		{"level and season, gaps", withGaps(seasonal(24*14, 0), 24*10, 5), func(i int) float64 { return 100 + 30*math.Sin(2*math.Pi*float64(i%24)/24) }, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := runHW(24, c.vals)
			if !w.ready() {
				t.Fatal("not initialised")
			}
			last := int64(len(c.vals) - 1)
			for h := 1; h <= 24; h++ {
				if got, want := w.forecast(last, h), c.want(int(last)+h); math.Abs(got-want) > c.tol {
					t.Errorf("h=%d forecast %.2f, want %.2f ± %.2f", h, got, want, c.tol)
				}
			}
		})
	}
}

// TestHoltWintersSpikeMovesLittle: one spike of 100 noise SDs moves the
// level by at most α·hwClip robust scales.
func TestHoltWintersSpikeMovesLittle(t *testing.T) {
	vals := seasonal(24*10, 1)
	before := runHW(24, vals)
	vals = append(vals, vals[len(vals)-24]+300)
	after := runHW(24, vals)
	if d := math.Abs(after.l - before.l - before.phi*before.b); d > hwAlpha*hwClip*before.sc*1.01+1e-9 {
		t.Fatalf("level moved %.2f by one spike (bound %.2f)", d, hwAlpha*hwClip*before.sc)
	}
}

// TestHoltWintersWaitsForASeason: no forecast until a whole season was
// seen (counted from the first observed bucket), and a reset starts over.
func TestHoltWintersWaitsForASeason(t *testing.T) {
	vals := append([]float64{math.NaN(), math.NaN()}, seasonal(23, 0)...)
	if w := runHW(24, vals); w.ready() {
		t.Fatal("ready before a season")
	}
	w := runHW(24, append(vals, 100))
	if !w.ready() {
		t.Fatal("not ready after a season")
	}
	w.reset()
	if w.ready() || w.l != 0 || w.s[3] != 0 {
		t.Fatal("reset kept state")
	}
}

// TestCombinationWeighsHoltWintersOnADailyJob: on the daily-job series the
// combination's largest one-step weight goes to the Holt-Winters expert,
// whose per-hour seasonal states draw the burst.
func TestCombinationWeighsHoltWintersOnADailyJob(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 77))
	m, err := NewHybrid(HybridConfig{Step: time.Hour, Window: 24 * 28, Horizon: 12}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 24*7*9; i++ {
		if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), dailyJob(i, rng)); err != nil {
			t.Fatal(err)
		}
	}
	w := m.pl.weights(1)
	for k := range w {
		if k != expHW && w[k] >= w[expHW] {
			t.Fatalf("weight of %s %.3f ≥ holt_winters %.3f", expNames[k], w[k], w[expHW])
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func constSeries(n int, v float64) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// seasonal is 100 + a daily sine of amplitude 30, plus N(0, sd²) noise.
func seasonal(n int, sd float64) []float64 {
	rng := rand.New(rand.NewPCG(9, 9))
	s := make([]float64, n)
	for i := range s {
		s[i] = 100 + 30*math.Sin(2*math.Pi*float64(i%24)/24) + sd*rng.NormFloat64()
	}
	return s
}

// withGaps marks k buckets from at as missing (NaN).
func withGaps(s []float64, at, k int) []float64 {
	for i := at; i < at+k && i < len(s); i++ {
		s[i] = math.NaN()
	}
	return s
}
