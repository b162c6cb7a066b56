package forecast

import (
	"math"
	"slices"
	"time"
)

// holtWinters is an online additive Holt-Winters forecaster (exponential
// smoothing of level, damped trend and one season; ETS(A,Ad,A) in
// error-correction form) with robust updates, used as an expert of the
// combination. It is what the ETS baseline is, without re-fitting its
// parameters at every origin: O(1) per bucket and O(H) per forecast, so
// ten thousand series can afford two of them.
//
// Why an expert: exponential smoothing keeps a separate seasonal state per
// bucket of the season, so a sharp daily pattern the regression's smooth
// Fourier profile cannot draw (a nightly job's one-hour burst) is exact
// after a few days, and its level follows shifts at a rate the window
// regression cannot (on a synthetic series with a level shift every ten
// days the combination's h12 error was 18% above ETS's before this
// expert). Spikes: the one-step error that updates the states is clipped
// at hwClip robust scales (Gelper, Fried & Croux 2010, robust
// Holt-Winters), so one outlier moves the level by at most α·hwClip
// scales.
type holtWinters struct {
	alpha, beta, gamma, phi float64
	m                       int       // season length in buckets
	l, b                    float64   // level and trend
	s                       []float64 // seasonal states, by bucket index mod m
	sc                      float64   // robust scale of the one-step errors
	n                       int64     // buckets absorbed since the start (0..m: initialising)
	// par are the unconstrained smoothing parameters (etsParams) of the
	// last refit; nil for the fixed-parameter expert and before a fitted
	// one's first fit.
	par []float64
}

const (
	// hwClip: one-step errors update the states clipped at this many
	// robust scales (the same order as the Huber threshold elsewhere).
	hwClip = 3.0
	// hwScaleRate is the step of the robust scale (a memory of about 20
	// buckets); errors enter it clipped at 2·hwClip scales, so a level
	// shift raises it within a few buckets while one spike barely does.
	hwScaleRate = 0.05
)

// Smoothing: a level that averages about ten buckets, a slow damped
// trend, a season that averages about twenty cycles. A second, fast
// setting (0.5, 0.05, 0.2, 0.8) beside it got little weight on the
// synthetic level-shift and daily-job series and cost the short NAB
// traces more than it bought (the combination's learning is shared by
// more experts); parameters fitted by likelihood per origin are what the
// ETS baseline does, at a cost ten thousand series cannot pay.
const (
	hwAlpha = 0.1
	hwBeta  = 0.01
	hwGamma = 0.05
	hwPhi   = 0.9
)

func newHoltWinters(m int) *holtWinters {
	return &holtWinters{alpha: hwAlpha, beta: hwBeta, gamma: hwGamma, phi: hwPhi, m: m, s: make([]float64, m)}
}

// ready reports whether the states are initialised.
func (w *holtWinters) ready() bool { return w.n > int64(w.m) }

// observe absorbs the value of bucket idx; ring(i) returns the value of
// bucket i and whether it was observed, for the initialisation from the
// first season (i within the last m buckets).
func (w *holtWinters) observe(idx int64, y float64, missing bool, ring func(i int64) (float64, bool)) {
	if !w.ready() {
		if !missing || w.n > 0 {
			w.n++
		}
		if w.n == int64(w.m) {
			// The first season: level = its mean, seasonal states =
			// deviations from it (missing buckets: no deviation).
			sum, k := 0.0, 0
			for i := idx - int64(w.m) + 1; i <= idx; i++ {
				if v, ok := ring(i); ok {
					sum += v
					k++
				}
			}
			if k == 0 {
				w.reset()
				return
			}
			w.l = sum / float64(k)
			for i := idx - int64(w.m) + 1; i <= idx; i++ {
				w.s[i%int64(w.m)] = 0
				if v, ok := ring(i); ok {
					w.s[i%int64(w.m)] = v - w.l
				}
			}
			w.b, w.sc = 0, 0
			w.n++
		}
		return
	}
	k := idx % int64(w.m)
	if missing {
		w.l += w.phi * w.b
		w.b *= w.phi
		return
	}
	e := y - (w.l + w.phi*w.b + w.s[k])
	// Clipped at the scale before this error, which then updates it.
	ec := e
	if w.sc > 0 {
		ec = clip(e, hwClip*w.sc)
		w.sc += hwScaleRate * (min(math.Abs(e), 2*hwClip*w.sc) - w.sc)
	} else {
		w.sc = math.Abs(e)
	}
	e = ec
	w.l += w.phi*w.b + w.alpha*e
	w.b = w.phi*w.b + w.beta*e
	w.s[k] += w.gamma * e
	w.n++
}

// forecast returns the forecast of bucket idx+h made after bucket idx.
func (w *holtWinters) forecast(idx int64, h int) float64 {
	damp, p := 0.0, 1.0
	for i := 0; i < h; i++ {
		p *= w.phi
		damp += p
	}
	return w.l + damp*w.b + w.s[(idx+int64(h))%int64(w.m)]
}

// hwFitEvals bounds the Nelder-Mead polish of a refit. The ETS baseline
// spends about a thousand evaluations per origin (three starts); a grid
// that picks the basin and this many more got the same held-out accuracy
// as 150 (M4 hourly, BENCHMARKS "round 12"). At 672 buckets one
// evaluation is about 5 µs, a whole fit 0.6 ms (BenchmarkHoltWintersRefit).
const hwFitEvals = 60

// hwFitGrid are the grid's unconstrained values of α, β/α and γ/(1−α)
// (etsParams): α ≈ 0.05, 0.27, 0.73, 0.95; β/α ≈ 0.05 or 0.5; γ/(1−α) ≈
// 0.05, 0.27, 0.73, 0.95; φ ≈ 0.95. The large seasonal gains re-learn the
// daily profile almost every day, the best fit of many smooth hourly
// series, which the fit's Nelder-Mead steps do not reach from a small
// gain's basin (M4: 51 → 46 series behind the best baseline at one step,
// BENCHMARKS "round 19").
var hwFitGrid = [3][]float64{{-3, -1, 1, 3}, {-3, 0}, {-3, -1, 1, 3}}

// refit re-estimates the smoothing parameters on y, the values of the
// buckets up to idx (oldest first), by minimising the one-step squared
// error as the ETS baseline does (same filter, same admissible region),
// then takes the fitted filter's states at idx. The last fit, when there is
// one, competes with the grid, so a steady series keeps its parameters;
// a fit alone from the last one could stay in a corner a spike once pushed
// it into (the ETS baseline's experience, baselines.go).
func (w *holtWinters) refit(idx int64, y []float64) { w.refitGrid(idx, y, &hwFitGrid) }

// refitGrid is refit from the given grid (a test compares grids).
func (w *holtWinters) refitGrid(idx int64, y []float64, grid *[3][]float64) {
	m := w.m
	if m < 2 || len(y) < 2*m {
		return
	}
	st := make([]float64, 2+m)
	obj := w.objective(y, st)
	best, bestF := []float64(nil), math.Inf(1)
	try := func(p []float64) {
		if f := obj(p); f < bestF {
			best, bestF = slices.Clone(p), f
		}
	}
	if w.par != nil {
		try(w.par)
	}
	for _, a := range grid[0] {
		for _, b := range grid[1] {
			for _, g := range grid[2] {
				try([]float64{a, b, g, etsStartLow[3]})
			}
		}
	}
	if best == nil {
		return // no finite error anywhere: keep what there is
	}
	if res := etsMinimize(obj, best, hwFitEvals); res != nil && res.F < bestF {
		best = slices.Clone(res.X)
	}
	w.par = best
	w.alpha, w.beta, w.gamma, w.phi = etsParams(best)
	w.rerun(idx, y, st)
}

// objective is the fit's objective on y: the filter's one-step squared
// error in units of a power of two near the values' size, so that the
// optimiser's absolute tolerance means the same in any unit and the fit
// is the same to the bit (TestBacktestScaleFree). st is working memory of
// 2+m values.
func (w *holtWinters) objective(y, st []float64) func([]float64) float64 {
	big := 0.0
	for _, v := range y {
		big = max(big, math.Abs(v))
	}
	_, exp := math.Frexp(big)
	unit := math.Ldexp(1, -2*exp)
	return func(p []float64) float64 {
		a, b, g, phi := etsParams(p)
		return etsRun(y, w.m, a, b, g, phi, st) * unit
	}
}

// hwPolishEvals bounds the daily polish of a fitted expert's parameters
// (a third of the weekly fit's Nelder-Mead budget, without its grid).
const hwPolishEvals = 20

// polish moves the fitted parameters downhill from where they are, by at
// most hwPolishEvals evaluations of the objective on y (the values up to
// idx, oldest first), then re-runs the filter: the weekly fit's local
// step, cheap enough to take every season, so the parameters follow a
// series whose dynamics drift within the week. st is working memory of
// 2+m values.
func (w *holtWinters) polish(idx int64, y, st []float64) {
	obj := w.objective(y, st)
	f0 := obj(w.par)
	if res := etsMinimize(obj, w.par, hwPolishEvals); res != nil && res.F < f0 {
		w.par = slices.Clone(res.X)
		w.alpha, w.beta, w.gamma, w.phi = etsParams(w.par)
	}
	w.rerun(idx, y, st)
}

// hwRerunWindow is the shortest window over which the fitted filter is
// re-run between fits (Hybrid.refitHW).
const hwRerunWindow = 14 * 24 * time.Hour

// rerun runs the filter with the current parameters over y, the values of
// the buckets up to idx (oldest first; at least two seasons), from the
// decomposition of its first cycles, and takes its states at idx. st is
// working memory of 2+m values.
func (w *holtWinters) rerun(idx int64, y, st []float64) {
	m := w.m
	etsRun(y, m, w.alpha, w.beta, w.gamma, w.phi, st)
	// etsRun's season slot r holds the bucket r after y's first, so
	// bucket i's slot here is i mod m.
	first := idx - int64(len(y)) + 1
	w.l, w.b = st[0], st[1]
	for r := 0; r < m; r++ {
		w.s[(first+int64(r))%int64(m)] = st[2+r]
	}
}

// reset forgets everything (after a gap longer than the window).
// The fitted parameters are the series' and survive it.
func (w *holtWinters) reset() {
	w.l, w.b, w.sc, w.n = 0, 0, 0, 0
	clear(w.s)
}

func (w *holtWinters) encode(e *enc) {
	e.f64(w.l)
	e.f64(w.b)
	e.fs(w.s)
	e.f64(w.sc)
	e.i64(w.n)
	e.bool(w.par != nil)
	if w.par != nil {
		e.fs(w.par)
	}
}

func (w *holtWinters) decode(d *dec) {
	w.l = d.f64()
	w.b = d.f64()
	d.fsInto(w.s, "holt-winters seasons")
	w.sc = d.f64()
	w.n = d.i64()
	if w.n < 0 || math.IsNaN(w.l) || math.IsInf(w.l, 0) || math.IsNaN(w.b) || math.IsInf(w.b, 0) || !(w.sc >= 0) {
		d.fail("holt-winters state")
	}
	if d.before(10) || !d.bool() {
		return // no fitted parameters (format 9 had none)
	}
	par := make([]float64, len(etsStartLow))
	d.fsInto(par, "holt-winters parameters")
	d.inRange(par, -math.MaxFloat64, math.MaxFloat64, "holt-winters parameters")
	if d.err == nil {
		w.par = par
		w.alpha, w.beta, w.gamma, w.phi = etsParams(par)
	}
}
