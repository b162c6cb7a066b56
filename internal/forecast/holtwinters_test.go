package forecast

import (
	"math"
	"math/rand/v2"
	"slices"
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
// combination's largest one-step weight goes to a Holt-Winters expert
// (the fixed or the fitted one), whose per-hour seasonal states draw the
// burst.
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
	hw := max(w[expHW], w[expHWFit])
	for k := range w {
		if k != expHW && k != expHWFit && w[k] >= hw {
			t.Fatalf("weight of %s %.3f ≥ the Holt-Winters experts' %.3f, %.3f", expNames[k], w[k], w[expHW], w[expHWFit])
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

// etsProcess simulates n buckets of ETS(A,Ad,A) with season m: a level
// that follows its shocks by α, a damped trend, a daily shape.
func etsProcess(n, m int, alpha, beta, gamma, phi float64, rng *rand.Rand) []float64 {
	l, b := 500.0, 0.0
	s := make([]float64, m)
	for i := range s {
		s[i] = 80 * math.Sin(2*math.Pi*float64(i)/float64(m))
	}
	y := make([]float64, n)
	for i := range y {
		e := 10 * rng.NormFloat64()
		y[i] = l + phi*b + s[i%m] + e
		l += phi*b + alpha*e
		b = phi*b + beta*e
		s[i%m] += gamma * e
	}
	return y
}

// TestHoltWintersRefit: on a series whose level follows its shocks fast
// (α = 0.8) the fit finds a fast level, its states are the fitted filter's
// (the forecast right after the fit is the one etsRun's final state
// gives, whatever the window's phase in the season), and over the next
// week the fitted expert's one-step error is well below the fixed-α one's.
func TestHoltWintersRefit(t *testing.T) {
	const m, W = 24, 24 * 28
	for _, off := range []int{0, 5} {
		y := etsProcess(W+off+168, m, 0.8, 0.02, 0.05, 0.95, rand.New(rand.NewPCG(4, 4)))
		fit := runHW(m, y[:W+off])
		fixed := runHW(m, y[:W+off])
		idx := int64(W + off - 1)
		win := y[off : W+off]
		fit.refit(idx, win)
		if fit.par == nil || fit.alpha < 0.6 || fit.alpha > 0.95 {
			t.Fatalf("offset %d: fitted α %.3f (params %v), want near 0.8", off, fit.alpha, fit.par)
		}
		st := make([]float64, 2+m)
		etsRun(win, m, fit.alpha, fit.beta, fit.gamma, fit.phi, st)
		for h := 1; h <= 3; h++ {
			damp := 0.0
			for p, i := 1.0, 0; i < h; i++ {
				p *= fit.phi
				damp += p
			}
			want := st[0] + damp*st[1] + st[2+(W+h-1)%m]
			if got := fit.forecast(idx, h); math.Abs(got-want) > 1e-9*math.Abs(want) {
				t.Fatalf("offset %d h=%d: forecast %v after the fit, the fitted filter's %v", off, h, got, want)
			}
		}
		ring := func(i int64) (float64, bool) { return y[i], true }
		var eFit, eFixed float64
		for i := W + off; i < len(y); i++ {
			eFit += math.Abs(y[i] - fit.forecast(int64(i-1), 1))
			eFixed += math.Abs(y[i] - fixed.forecast(int64(i-1), 1))
			fit.observe(int64(i), y[i], false, ring)
			fixed.observe(int64(i), y[i], false, ring)
		}
		if eFit > 0.8*eFixed {
			t.Fatalf("offset %d: one-step error over a week %.0f fitted, %.0f fixed", off, eFit, eFixed)
		}
	}
}

// TestHoltWintersRefitFindsLargeSeasonalGain: on a smooth sensor-like
// series (a daily cycle in proportion to a drifting level, read to one
// decimal, as many of M4's hourly series) the best additive fit re-learns
// the daily profile almost every day (γ near 1 − α). The weekly fit must
// get at least as low as the ETS baseline's fit (three starts, 300
// evaluations each; here its fixed starts fall in the basin below). The
// grid once tried seasonal gains of at most 0.27·(1 − α) and settled in a
// fast-level, slow-season basin: 10–23% more one-step squared error here;
// on M4's H322 the fitted expert's one-step error was 2.5 times the
// baseline's, whose warm start across origins had left it (BENCHMARKS
// "round 19").
func TestHoltWintersRefitFindsLargeSeasonalGain(t *testing.T) {
	const m, W = 24, 24 * 28
	sensor := func(seed uint64) []float64 {
		rng := rand.New(rand.NewPCG(seed, 9))
		l, dev := 15.0, 0.0
		y := make([]float64, W)
		for i := range y {
			dev = 0.9*dev + 0.03*rng.NormFloat64()
			l += 0.01 * (1 + rng.NormFloat64())
			y[i] = math.Round(10*(l*(1+0.2*math.Sin(2*math.Pi*float64(i%m)/m))+dev)) / 10
		}
		return y
	}
	sse := func(y []float64, w *holtWinters) float64 {
		return etsRun(y, m, w.alpha, w.beta, w.gamma, w.phi, make([]float64, 2+m))
	}
	narrowGrid := hwFitGrid
	narrowGrid[2] = []float64{-3, -1}
	for seed := range uint64(3) {
		y := sensor(seed)
		w := runHW(m, y)
		w.refit(int64(W-1), y)
		e := NewETS(m, W, 12)
		for _, v := range y {
			e.Observe(time.Time{}, v)
		}
		e.Forecast()
		fit, base := sse(y, w), etsSSE(e, y, e.par)
		// The grid without large seasonal gains, to show the case still
		// tells them apart.
		narrow := runHW(m, y)
		narrow.refitGrid(int64(W-1), y, &narrowGrid)
		t.Logf("seed %d: fitted α %.2f γ %.2f SSE %.4g; baseline %.4g; narrow grid α %.2f γ %.2f SSE %.4g",
			seed, w.alpha, w.gamma, fit, base, narrow.alpha, narrow.gamma, sse(y, narrow))
		if fit > 1.03*base {
			t.Errorf("seed %d: fitted α %.2f γ %.2f, one-step SSE %.4g against the baseline's %.4g", seed, w.alpha, w.gamma, fit, base)
		}
		if sse(y, narrow) < 1.05*fit {
			t.Errorf("seed %d: the narrow grid fits as well (%.4g vs %.4g): the case no longer shows the difference", seed, sse(y, narrow), fit)
		}
	}
}

// TestHoltWintersRefitScaleFree: the fit is the same to the bit in any
// unit (a power of two times the values).
func TestHoltWintersRefitScaleFree(t *testing.T) {
	y := etsProcess(24*14, 24, 0.3, 0.01, 0.1, 0.9, rand.New(rand.NewPCG(5, 5)))
	var want []float64
	for _, k := range []int{0, -60, 60} {
		v := make([]float64, len(y))
		for i := range y {
			v[i] = math.Ldexp(y[i], k)
		}
		w := runHW(24, v)
		w.refit(int64(len(v)-1), v)
		if want == nil {
			want = w.par
		} else if !slices.Equal(w.par, want) {
			t.Fatalf("×2^%d: parameters %v, want %v", k, w.par, want)
		}
	}
}

// TestFittedExpertSchedule: the fitted expert sleeps (NaN) until two
// seasons are known and its bucket of the day comes, and refits once a
// week at a bucket that depends on the series' seed, so series made
// together spread their fits over the day and the week. (A window of one
// week: over two weeks or more the daily polish moves the parameters too,
// TestFittedExpertPolish.)
func TestFittedExpertSchedule(t *testing.T) {
	sc := new(hybridScratch)
	fits := func(seed uint64) []int64 {
		m, err := NewHybrid(HybridConfig{Step: time.Hour, Window: 24 * 7, Horizon: 12, Seed: seed}, nil)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		var at []int64
		var last *float64
		for i := 0; i < 24*7*4; i++ {
			if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), dailyJob(i, rng)); err != nil {
				t.Fatal(err)
			}
			if m.hwf.par == nil {
				m.sc = sc // experts() writes into the scratch
				f := m.experts(m.n-1, 1, 0, 0, 0)[expHWFit]
				m.sc = nil
				if !math.IsNaN(f) {
					t.Fatalf("bucket %d: unfitted expert forecasts %v, want asleep", i, f)
				}
				continue
			}
			if &m.hwf.par[0] != last {
				at, last = append(at, int64(i)), &m.hwf.par[0]
			}
		}
		return at
	}
	a, b := fits(1), fits(2)
	// Seed 1: bucket 47 ends the second day and is its bucket of the day;
	// seed 2's is 22 of each day, 70 the first after two days.
	if len(a) != 5 || a[0] != 47 || len(b) != 5 || b[0] != 70 {
		t.Fatalf("fits at buckets %v (seed 1) and %v (seed 2): want the first at the series' bucket of the day after two days (47, 70), then one a week", a, b)
	}
	for i := 1; i < len(a); i++ {
		if a[i]-a[i-1] > 168 || (a[i]+1)%168 != 0 || (b[i]+2)%168 != 0 {
			t.Fatalf("weekly fits at %v (seed 1) and %v (seed 2), want at (bucket + seed) ≡ 0 mod 168", a, b)
		}
	}
}

// BenchmarkHoltWintersRefit: one weekly fit of the fitted expert on a
// four-week hourly window (the grid, then at most hwFitEvals evaluations).
func BenchmarkHoltWintersRefit(b *testing.B) {
	y := etsProcess(24*28, 24, 0.5, 0.02, 0.1, 0.9, rand.New(rand.NewPCG(6, 6)))
	w := runHW(24, y)
	for b.Loop() {
		w.par = nil
		w.refit(int64(len(y)-1), y)
	}
}

// cleanWindow is the last n buckets up to i as the fitted expert reads
// them (Hybrid.clean), oldest first.
func cleanWindow(m *Hybrid, i, n int) []float64 {
	win := make([]float64, n)
	for k := range win {
		win[k] = m.clean(int64(i - n + 1 + k))
	}
	return win
}

// TestFittedExpertRerun: between weekly fits the fitted expert's states
// are those of its filter re-run over the window, as the ETS baseline's
// at every origin, when the window holds two weeks or more; over a
// shorter window they follow the online update.
func TestFittedExpertRerun(t *testing.T) {
	for _, tc := range []struct {
		days  int
		rerun bool
	}{{28, true}, {14, true}, {7, false}} {
		W := 24 * tc.days
		m, err := NewHybrid(HybridConfig{Step: time.Hour, Window: W, Horizon: 12, Seed: 3}, nil)
		if err != nil {
			t.Fatal(err)
		}
		y := etsProcess(W+24*9, 24, 0.6, 0.02, 0.1, 0.9, rand.New(rand.NewPCG(7, 7)))
		checked := 0
		for i, v := range y {
			if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), v); err != nil {
				t.Fatal(err)
			}
			w := m.hwf
			at := int64(i) + 3
			if w.par == nil || i < W || at%168 == 0 {
				continue // not fitted yet, window not full, or a fit bucket
			}
			win := cleanWindow(m, i, W)
			st := make([]float64, 2+24)
			etsRun(win, 24, w.alpha, w.beta, w.gamma, w.phi, st)
			same := w.l == st[0] && w.b == st[1]
			for r := 0; r < 24; r++ {
				same = same && w.s[(i-W+1+r)%24] == st[2+r]
			}
			if same != tc.rerun {
				t.Fatalf("%d-day window, bucket %d: states equal to the re-run filter's: %v, want %v (level %v vs %v)", tc.days, i, same, tc.rerun, w.l, st[0])
			}
			checked++
		}
		if checked < 24*7 {
			t.Fatalf("%d-day window: %d buckets checked", tc.days, checked)
		}
	}
}

// TestFittedExpertPolish: over a window of two weeks or more the fitted
// expert's parameters move only at its bucket of the day (the polish) and
// of the week (the fit), and a polish never makes the window's objective
// worse.
func TestFittedExpertPolish(t *testing.T) {
	const W, seed = 24 * 14, 3
	m, err := NewHybrid(HybridConfig{Step: time.Hour, Window: W, Horizon: 12, Seed: seed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The smoothing changes half-way: the polish has something to follow.
	y := etsProcess(W+24*14, 24, 0.2, 0.01, 0.05, 0.9, rand.New(rand.NewPCG(8, 8)))
	y2 := etsProcess(24*14, 24, 0.9, 0.05, 0.2, 0.95, rand.New(rand.NewPCG(9, 9)))
	for i := range y2 {
		y[W+i] = y2[i] - y2[0] + y[W-1]
	}
	polished := 0
	for i, v := range y {
		old := slices.Clone(m.hwf.par)
		if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), v); err != nil {
			t.Fatal(err)
		}
		at := int64(i) + seed
		if old == nil || at%168 == 0 {
			continue // before the first fit, or the weekly fit
		}
		if at%24 != 0 {
			if !slices.Equal(old, m.hwf.par) {
				t.Fatalf("bucket %d: parameters moved outside the bucket of the day", i)
			}
			continue
		}
		obj := m.hwf.objective(cleanWindow(m, i, min(i+1, W)), make([]float64, 2+24))
		if fNew, fOld := obj(m.hwf.par), obj(old); fNew > fOld {
			t.Fatalf("bucket %d: polish raised the objective %v -> %v", i, fOld, fNew)
		}
		if !slices.Equal(old, m.hwf.par) {
			polished++
		}
	}
	if polished < 10 {
		t.Fatalf("parameters polished at %d buckets of the day, want most of the 25 after the first fit", polished)
	}
}
