package forecast

import (
	"fmt"
	"math"
	"slices"
	"time"

	"gonum.org/v1/gonum/optimize"
)

// Method is a forecaster driven through a series bucket by bucket by the
// backtest: Observe each bucket in order, Forecast after any of them.
type Method interface {
	// Observe feeds the bucket starting at t.
	Observe(t time.Time, y float64) error
	// Forecast returns the quantile forecasts of the next Horizon buckets.
	Forecast() []Quantiles
}

// gapAware is a Method that can tell a gap in the series from an
// observation, as the controller does when nothing arrives for a bucket:
// it learns nothing from it and scores nothing against it. filled is the
// interpolation across the gap; long reports a gap longer than the
// protocol's season (a day), across which a straight line erases whole
// cycles. Without it a method observes the filled value, and the
// interpolated stretch teaches its error scales errors of nearly zero.
type gapAware interface {
	Gap(t time.Time, filled float64, long bool) error
}

// window is the training window shared by the refit-per-origin baselines:
// they see only the last W buckets, as the protocol says.
type window struct {
	W, H  int
	buf   []float64 // the last min(n, W) values, oldest first
	store []float64 // buf is its tail; refilled every W pushes (O(1) a push)
	n     int
}

// push appends y and returns the value that left the window (ok false
// while it is filling).
func (w *window) push(y float64) (left float64, ok bool) {
	if w.store == nil {
		w.store = make([]float64, 0, 2*w.W)
	}
	if len(w.buf) == w.W {
		left, ok = w.buf[0], true
	}
	if len(w.store) == cap(w.store) {
		k := copy(w.store, w.store[len(w.store)-(w.W-1):])
		w.store = w.store[:k]
	}
	w.store = append(w.store, y)
	w.buf = w.store[max(0, len(w.store)-w.W):]
	w.n++
	return left, ok
}

// quantilesSorted returns the 10/50/90% quantiles (linear interpolation)
// of sorted errors; zeros when there are none.
func quantilesSorted(errs []float64) (q10, q50, q90 float64) {
	if len(errs) == 0 {
		return 0, 0, 0
	}
	at := func(p float64) float64 {
		x := p * float64(len(errs)-1)
		i := int(x)
		if i+1 >= len(errs) {
			return errs[len(errs)-1]
		}
		f := x - float64(i)
		return errs[i]*(1-f) + errs[i+1]*f
	}
	return at(0.1), at(0.5), at(0.9)
}

// SeasonalNaive forecasts y[t+h] = y[t+h-m*ceil(h/m)]; with M = 1 it is
// the naive forecast. Its 80% interval comes from the empirical quantiles
// of the same rule's h-step errors inside the training window (the median
// is the rule itself: the point forecast of a baseline is not shifted).
// The errors of each lag are kept sorted as the window slides (one
// removal and one insertion a bucket), so a forecast costs O(H), not a
// sort of the window: with 5-minute data a window holds 8064 buckets.
type SeasonalNaive struct {
	M    int
	w    window
	gaps window // parallel to w: 1 where the bucket was a gap, else 0
	f    []Quantiles
	lags []int             // distinct lags of horizons 1..H
	errs map[int][]float64 // per lag: sorted errors b[i]-b[i-lag] in the window
}

// NewSeasonalNaive returns the seasonal naive method with season m buckets
// on a training window of W buckets and horizon H.
func NewSeasonalNaive(m, W, H int) *SeasonalNaive {
	s := &SeasonalNaive{M: m, w: window{W: W, H: H}, gaps: window{W: W, H: H}, f: make([]Quantiles, H), errs: map[int][]float64{}}
	for h := 1; h <= H; h++ {
		if lag := m * ((h + m - 1) / m); !slices.Contains(s.lags, lag) {
			s.lags = append(s.lags, lag)
		}
	}
	return s
}

// Observe implements Method.
func (s *SeasonalNaive) Observe(_ time.Time, y float64) error {
	s.push(y, false)
	return nil
}

// Gap implements gapAware: the filled value stands in for the point
// forecasts (the rule reads the window as it is), but no error pair with
// a gap at either end enters the interval's quantiles.
func (s *SeasonalNaive) Gap(_ time.Time, filled float64, _ bool) error {
	s.push(filled, true)
	return nil
}

func (s *SeasonalNaive) push(y float64, gap bool) {
	// The window before the push, for the pair that leaves with its
	// oldest value (push never overwrites the live tail it is).
	var old, oldGap []float64
	if len(s.w.buf) == s.w.W {
		old, oldGap = s.w.buf, s.gaps.buf
	}
	left, full := s.w.push(y)
	g := 0.0
	if gap {
		g = 1
	}
	leftGap, _ := s.gaps.push(g)
	b, bg := s.w.buf, s.gaps.buf
	n := len(b)
	for _, lag := range s.lags {
		e := s.errs[lag]
		if full && lag < n && leftGap == 0 && oldGap[lag] == 0 {
			// The pair (old[0], old[lag]) left with old[0].
			x := old[lag] - left
			if i, ok := slices.BinarySearch(e, x); ok {
				e = slices.Delete(e, i, i+1)
			}
		}
		if lag < n && !gap && bg[n-1-lag] == 0 {
			x := y - b[n-1-lag]
			i, _ := slices.BinarySearch(e, x)
			e = slices.Insert(e, i, x)
		}
		s.errs[lag] = e
	}
}

// Forecast implements Method.
func (s *SeasonalNaive) Forecast() []Quantiles {
	b := s.w.buf
	n := len(b)
	for h := 1; h <= s.w.H; h++ {
		lag := s.M * ((h + s.M - 1) / s.M)
		if lag > n {
			s.f[h-1] = Quantiles{math.NaN(), math.NaN(), math.NaN()}
			continue
		}
		pt := b[n-1+h-lag]
		q10, _, q90 := quantilesSorted(s.errs[lag])
		s.f[h-1] = Quantiles{Q10: pt + q10, Q50: pt, Q90: pt + q90}
	}
	return s.f
}

// ETS is additive Holt-Winters with a damped trend, ETS(A,Ad,A), with
// season M; the smoothing parameters are re-estimated on the training
// window at every forecast by minimising the one-step squared error
// (Nelder-Mead, warm-started from the previous origin), and the
// intervals are the model's analytic Gaussian ones (Hyndman et al. 2008,
// class 1). With M < 2 it is damped Holt (no season).
type ETS struct {
	M     int
	w     window
	f     []Quantiles
	par   []float64 // unconstrained parameters of the last fit
	state []float64
}

// NewETS returns ETS(A,Ad,A) with season m on window W and horizon H.
func NewETS(m, W, H int) *ETS {
	return &ETS{M: m, w: window{W: W, H: H}, f: make([]Quantiles, H), par: slices.Clone(etsStartLow)}
}

// Fixed starts of the fit (unconstrained, see etsParams): α ≈ 0.27 and
// α ≈ 0.73, both with a small trend and season gain and φ ≈ 0.95.
var (
	etsStartLow  = []float64{-1, -3, -3, 1.5}
	etsStartHigh = []float64{1, -3, -3, 1.5}
)

// Observe implements Method.
func (e *ETS) Observe(_ time.Time, y float64) error { e.w.push(y); return nil }

func logistic(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// etsParams maps unconstrained values to α∈(0,1), β∈(0,α), γ∈(0,1-α),
// φ∈(0.8,0.98) — the admissible region used by R's ets().
func etsParams(p []float64) (a, b, g, phi float64) {
	a = 0.0001 + 0.9998*logistic(p[0])
	b = a * logistic(p[1])
	g = (1 - a) * logistic(p[2])
	phi = 0.8 + 0.18*logistic(p[3])
	return
}

// etsRun filters y and returns the one-step SSE; the final state is left
// in st = [level, trend, season_0..season_{m-1}] (season index = bucket
// index mod m of the next bucket's slot is computed by the caller).
func etsRun(y []float64, m int, a, b, g, phi float64, st []float64) float64 {
	lvl, tr := etsInit(y, m, st)
	sse := 0.0
	if m < 2 {
		for _, v := range y {
			e := v - (lvl + phi*tr)
			sse += e * e
			nl := lvl + phi*tr + a*e
			tr = phi*tr + b*e
			lvl = nl
		}
	} else {
		// The season's slot walks st[2:2+m] (bucket index mod m) without
		// a division per bucket.
		seas := st[2 : 2+m]
		si := 0
		for _, v := range y {
			s := seas[si]
			e := v - (lvl + phi*tr + s)
			sse += e * e
			nl := lvl + phi*tr + a*e
			tr = phi*tr + b*e
			seas[si] = s + g*e
			lvl = nl
			if si++; si == m {
				si = 0
			}
		}
	}
	st[0], st[1] = lvl, tr
	return sse
}

// etsInit sets the season's initial states st[2:2+m] by classical
// decomposition of y's first cycles and returns the initial level and
// trend.
func etsInit(y []float64, m int, st []float64) (lvl, tr float64) {
	n := len(y)
	ms := max(m, 1)
	k := min(n/ms, 4)
	if m < 2 {
		k = 0
	}
	lvl, tr = y[0], 0.0
	if k >= 1 {
		s1 := 0.0
		for i := 0; i < m; i++ {
			s1 += y[i]
		}
		lvl = s1 / float64(m)
		if k >= 2 {
			s2 := 0.0
			for i := m; i < 2*m; i++ {
				s2 += y[i]
			}
			tr = (s2/float64(m) - lvl) / float64(m)
		}
		seas := st[2 : 2+m]
		clear(seas)
		for c := 0; c < k; c++ {
			mean := 0.0
			for i := c * m; i < (c+1)*m; i++ {
				mean += y[i]
			}
			mean /= float64(m)
			for i := 0; i < m; i++ {
				seas[i] += (y[c*m+i] - mean) / float64(k)
			}
		}
		// Level at the start of the series.
		lvl -= tr * float64(m-1) / 2
	} else if n > 1 {
		tr = 0
	}
	return lvl, tr
}

// etsMinimize runs Nelder-Mead on an ETS fit's objective from start, for at
// most evals evaluations (the ETS baseline and the fitted Holt-Winters
// expert). An error only ends a run early: the result, if any, is still
// the best point found.
func etsMinimize(obj func([]float64) float64, start []float64, evals int) *optimize.Result {
	res, _ := optimize.Minimize(optimize.Problem{Func: obj}, start,
		&optimize.Settings{FuncEvaluations: evals, Converger: &optimize.FunctionConverge{Absolute: 1e-10, Relative: 1e-6, Iterations: 20}},
		&optimize.NelderMead{SimplexSize: 0.5})
	return res
}

// Forecast implements Method.
func (e *ETS) Forecast() []Quantiles {
	y := e.w.buf
	n := len(y)
	m := e.M
	if m < 2 || n < 2*m {
		m = 0
	}
	if e.state == nil || len(e.state) < 2+max(m, 0) {
		e.state = make([]float64, 2+max(m, 0))
	}
	obj := func(p []float64) float64 {
		a, b, g, phi := etsParams(p)
		if m < 2 {
			g = 0
		}
		return etsRun(y, m, a, b, g, phi, e.state)
	}
	// Nelder-Mead from the previous origin's fit and from fixed starts,
	// keeping the lowest error: warm-started alone, a fit that a spike
	// once pushed into a corner (α near 0: the first cycles' level
	// frozen) stayed there after the level shift that followed, for the
	// rest of the series. An error only ends a run early: its result, if
	// any, is still the best point it found.
	bestF := math.Inf(1)
	for _, start := range [][]float64{e.par, etsStartLow, etsStartHigh} {
		res := etsMinimize(obj, start, 300)
		if res != nil && res.F < bestF {
			e.par, bestF = slices.Clone(res.X), res.F
		}
	}
	a, b, g, phi := etsParams(e.par)
	if m < 2 {
		g = 0
	}
	sse := etsRun(y, m, a, b, g, phi, e.state)
	sigma2 := sse / float64(max(n-4, 1))
	lvl, tr := e.state[0], e.state[1]
	phiSum, varSum := 0.0, 0.0
	for h := 1; h <= e.w.H; h++ {
		phiSum += math.Pow(phi, float64(h))
		s := 0.0
		if m >= 2 {
			s = e.state[2+(n+h-1)%m]
		}
		pt := lvl + phiSum*tr + s
		// Var_h = σ²(1 + Σ_{j<h} c_j²), c_j = α(1+βφ_j/α... ) written as
		// α + β φ_j + γ·[j mod m = 0] with φ_j = φ + … + φ^j.
		sd := math.Sqrt(sigma2 * (1 + varSum))
		e.f[h-1] = Quantiles{Q10: pt - 1.2816*sd, Q50: pt, Q90: pt + 1.2816*sd}
		cj := a + b*phiSum
		if m >= 2 && h%m == 0 {
			cj += g
		}
		varSum += cj * cj
	}
	return e.f
}

// String names the method for errors.
func (e *ETS) String() string { return fmt.Sprintf("ets(m=%d)", e.M) }
