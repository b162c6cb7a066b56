package forecast

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"
)

// ErrTooShort is returned when a series cannot hold the protocol's
// minimum (two seasons of training plus the minimum number of origins).
var ErrTooShort = errors.New("series too short for the protocol")

// BacktestConfig is the rolling-origin protocol.
type BacktestConfig struct {
	// Window is the training window in buckets (default 4 weeks). Each
	// baseline sees only these buckets at an origin; the hybrid's
	// regression too (its online parts carry memory, see doc.go).
	Window int
	// Horizon is the number of steps forecast (default 12).
	Horizon int
	// Season is the MASE scaling season in buckets (default one day).
	Season int
	// MinOrigins is the least number of origins (default 168). When the
	// series cannot give MinOrigins observed origins after a full Window,
	// Window shrinks so it can (reported in Result.Window); below two
	// seasons of training the series is rejected with ErrTooShort.
	MinOrigins int
	// MaxOrigins, when positive, keeps only the last MaxOrigins origins.
	MaxOrigins int
	// EventDays, when set, marks buckets whose errors are also reported
	// separately (Result.Marked...), e.g. the days an events calendar or
	// weather feed marks.
	EventDays func(t time.Time) bool
}

func (c BacktestConfig) withDefaults(s *Series) (BacktestConfig, error) {
	if c.Horizon == 0 {
		c.Horizon = 12
	}
	if c.Season == 0 {
		c.Season = max(s.StepsPerDay(), 1)
	}
	if c.Window == 0 {
		c.Window = int(28 * 24 * time.Hour / s.Step)
	}
	if c.MinOrigins == 0 {
		c.MinOrigins = 168
	}
	for _, f := range []struct {
		what string
		v    int
	}{{"window", c.Window}, {"horizon", c.Horizon}, {"season", c.Season}, {"minimum origins", c.MinOrigins}} {
		if f.v < 1 {
			// Buckets longer than the window (monthly rows, a four-week
			// window) round it to zero: say which figure and why.
			return c, fmt.Errorf("%w: backtest of %s: a %s of %d buckets of %v (want at least 1)", ErrBadInput, s.Name, f.what, f.v, s.Step)
		}
	}
	n := s.Len()
	// The window ends where MinOrigins observed origins remain after it
	// (origins inside a gap do not count: no forecast is made there).
	need, p := c.MinOrigins, n-c.Horizon
	for p > 0 && need > 0 {
		p--
		if s.Observed[p] {
			need--
		}
	}
	if need > 0 {
		p -= need // not enough observed buckets: too short below
	}
	c.Window = min(c.Window, p+1)
	if c.Window < 2*c.Season+1 {
		hint := ""
		if s.Step <= time.Second && s.Start.Year() == 1970 {
			hint = " (a time column counting buckets 1, 2, 3…? give their length with --index-step)"
		}
		obs := 0
		for _, o := range s.Observed {
			if o {
				obs++
			}
		}
		return c, fmt.Errorf("%w: %s has %d buckets of %v (%d observed); need at least %d (%d training = two MASE seasons + 1, %d observed origins, %d horizon)%s",
			ErrTooShort, s.Name, n, s.Step, obs, 2*c.Season+1+c.MinOrigins+c.Horizon-1, 2*c.Season+1, c.MinOrigins, c.Horizon, hint)
	}
	return c, nil
}

// MethodSpec names a method and builds a fresh instance for a series.
type MethodSpec struct {
	Name string
	New  func(s *Series, feeds *Feeds, cfg BacktestConfig) (Method, error)
}

// Result holds one (series, method) row of the backtest.
type Result struct {
	Series, Method string
	Window         int // training window actually used (buckets)
	// Origins counts the origins forecast from: buckets with a full window
	// before them and H after, that were observed (at a filled gap the
	// filled value would leak the value after the gap).
	Origins int
	// ZeroScale counts the origins whose training window has no
	// seasonal-naive error (a constant window): MASE and pinball are
	// undefined there and average over the other origins (NaN when none).
	ZeroScale int
	Step      time.Duration
	// Per horizon h (index h-1): mean absolute scaled error, sMAPE (%),
	// 80% interval coverage, scaled pinball loss averaged over q10/q50/q90.
	MASE, SMAPE, Cover80, Pinball []float64
	// The same restricted to targets in marked buckets (EventDays).
	MarkedMASE    []float64
	MarkedCover80 []float64
	MarkedN       []int
	N             []int // scored targets per horizon
}

// MASE1toH averages MASE over horizons 1..H.
func (r *Result) MASE1toH() float64 {
	s := 0.0
	for _, v := range r.MASE {
		s += v
	}
	return s / float64(len(r.MASE))
}

// Backtest runs the rolling-origin evaluation of every method on s.
// Origins are every bucket o with a full training window before it
// (o = Window-1 ...) and H buckets after it; the MASE scale at an origin
// is the mean absolute seasonal-naive (season = Season) error inside that
// origin's training window. Methods run concurrently.
func Backtest(ctx context.Context, s *Series, feeds *Feeds, methods []MethodSpec, cfg BacktestConfig) ([]Result, error) {
	s = s.trimmed().rescaled()
	cfg, err := cfg.withDefaults(s)
	if err != nil {
		return nil, err
	}
	n, H, W, m := s.Len(), cfg.Horizon, cfg.Window, cfg.Season
	first := W - 1
	last := n - 1 - H
	if cfg.MaxOrigins > 0 && last-first+1 > cfg.MaxOrigins {
		first = last - cfg.MaxOrigins + 1
	}
	// MASE scale per origin from its own training window; zero for a
	// window with no seasonal-naive error, or one below round-off of the
	// window's values (a constant 0.1 + 0.2 - 0.3): dividing by it would
	// give an absurd MASE.
	scale := make([]float64, n)
	zero := 0
	for o := first; o <= last; o++ {
		sum, level, cnt := 0.0, 0.0, 0
		for i := o - W + 1 + m; i <= o; i++ {
			if s.Observed[i] && s.Observed[i-m] {
				sum += math.Abs(s.Values[i] - s.Values[i-m])
				level += math.Abs(s.Values[i])
				cnt++
			}
		}
		if cnt > 0 && sum > 1e-12*level {
			scale[o] = sum / float64(cnt)
		} else if s.Observed[o] {
			zero++
		}
	}
	if zero > 0 {
		slog.Warn("backtest: MASE undefined at origins whose training window has no seasonal-naive error; left out of MASE and pinball",
			"series", s.Name, "origins", zero)
	}
	marked := make([]bool, n)
	if cfg.EventDays != nil {
		for i := range marked {
			marked[i] = cfg.EventDays(s.Time(i))
		}
	}
	results := make([]Result, len(methods))
	errs := make([]error, len(methods))
	skip := make([]bool, len(methods))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for mi, spec := range methods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[mi], errs[mi] = runMethod(ctx, s, feeds, spec, cfg, first, last, scale, marked)
			results[mi].ZeroScale = zero
			if errors.Is(errs[mi], ErrNotApplicable) {
				slog.Warn("backtest: method skipped", "series", s.Name, "method", spec.Name, "reason", errs[mi])
				skip[mi], errs[mi] = true, nil
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := results[:0]
	for i, r := range results {
		if !skip[i] {
			out = append(out, r)
		}
	}
	return out, nil
}

// trimmed returns s without its leading and trailing unobserved buckets
// (a location before its first row or after its last): there is nothing
// to learn from or score there. s itself when there are none.
func (s *Series) trimmed() *Series {
	i0, i1 := 0, s.Len()-1
	for i0 <= i1 && !s.Observed[i0] {
		i0++
	}
	for i1 >= i0 && !s.Observed[i1] {
		i1--
	}
	if i0 == 0 && i1 == s.Len()-1 || i0 > i1 {
		return s
	}
	t := *s
	t.Start = s.Time(i0)
	t.Values = s.Values[i0 : i1+1]
	t.Observed = s.Observed[i0 : i1+1]
	if s.Covariates != nil {
		t.Covariates = make(map[string][]float64, len(s.Covariates))
		for k, v := range s.Covariates {
			t.Covariates[k] = v[i0 : i1+1]
		}
	}
	return &t
}

func runMethod(ctx context.Context, s *Series, feeds *Feeds, spec MethodSpec, cfg BacktestConfig,
	first, last int, scale []float64, marked []bool) (Result, error) {
	H := cfg.Horizon
	r := Result{Series: s.Name, Method: spec.Name, Window: cfg.Window, Step: s.Step,
		MASE: make([]float64, H), SMAPE: make([]float64, H), Cover80: make([]float64, H), Pinball: make([]float64, H),
		MarkedMASE: make([]float64, H), MarkedCover80: make([]float64, H), MarkedN: make([]int, H), N: make([]int, H)}
	meth, err := spec.New(s, feeds, cfg)
	if err != nil {
		return r, fmt.Errorf("%s on %s: %w", spec.Name, s.Name, err)
	}
	long := longGaps(s.Observed, cfg.Season)
	nS := make([]int, H) // targets counted for sMAPE/coverage (no scale needed)
	nanFc := 0           // targets left unscored because the forecast was NaN
	for i := 0; i <= last; i++ {
		if i%512 == 0 && ctx.Err() != nil {
			return r, ctx.Err()
		}
		var err error
		if g, ok := meth.(gapAware); ok && !s.Observed[i] {
			err = g.Gap(s.Time(i), s.Values[i], long[i])
		} else {
			err = meth.Observe(s.Time(i), s.Values[i])
		}
		if err != nil {
			return r, fmt.Errorf("%s on %s at %v: %w", spec.Name, s.Name, s.Time(i), err)
		}
		if i < first || !s.Observed[i] {
			continue
		}
		r.Origins++
		fc := meth.Forecast()
		for h := 1; h <= H; h++ {
			j := i + h
			if !s.Observed[j] {
				continue
			}
			y, q := s.Values[j], fc[h-1]
			if math.IsNaN(q.Q50) {
				nanFc++
				continue
			}
			ae := math.Abs(y - q.Q50)
			if d := math.Abs(y) + math.Abs(q.Q50); d > 0 {
				r.SMAPE[h-1] += 200 * ae / d
			}
			if y >= q.Q10 && y <= q.Q90 {
				r.Cover80[h-1]++
			}
			nS[h-1]++
			if sc := scale[i]; sc > 0 {
				r.MASE[h-1] += ae / sc
				r.Pinball[h-1] += (pinball(y, q.Q10, 0.1) + pinball(y, q.Q50, 0.5) + pinball(y, q.Q90, 0.9)) / 3 / sc
				r.N[h-1]++
				if marked[j] {
					r.MarkedMASE[h-1] += ae / sc
					if y >= q.Q10 && y <= q.Q90 {
						r.MarkedCover80[h-1]++
					}
					r.MarkedN[h-1]++
				}
			}
		}
	}
	if nanFc > 0 {
		slog.Warn("backtest: targets without a forecast (NaN) left unscored", "series", s.Name, "method", spec.Name, "targets", nanFc)
	}
	for h := 0; h < H; h++ {
		if r.N[h] > 0 {
			r.MASE[h] /= float64(r.N[h])
			r.Pinball[h] /= float64(r.N[h])
		} else {
			r.MASE[h], r.Pinball[h] = math.NaN(), math.NaN()
		}
		if nS[h] > 0 {
			r.SMAPE[h] /= float64(nS[h])
			r.Cover80[h] /= float64(nS[h])
		} else {
			r.SMAPE[h], r.Cover80[h] = math.NaN(), math.NaN()
		}
		if r.MarkedN[h] > 0 {
			r.MarkedMASE[h] /= float64(r.MarkedN[h])
			r.MarkedCover80[h] /= float64(r.MarkedN[h])
		} else {
			r.MarkedMASE[h], r.MarkedCover80[h] = math.NaN(), math.NaN()
		}
	}
	return r, nil
}

// longGaps marks the buckets of gaps longer than season: up to a season
// (a day) a gap's interpolation is a local estimate; across a longer one a
// straight line erases whole cycles (a week for daily data measured
// worse: BENCHMARKS round 18).
func longGaps(observed []bool, season int) []bool {
	long := make([]bool, len(observed))
	for i := 0; i < len(observed); i++ {
		j := i
		for j < len(observed) && !observed[j] {
			j++
		}
		if j-i > season {
			for k := i; k < j; k++ {
				long[k] = true
			}
		}
		i = j
	}
	return long
}

func pinball(y, q, tau float64) float64 {
	if y >= q {
		return tau * (y - q)
	}
	return (1 - tau) * (q - y)
}

// Baselines returns the protocol's own baselines for a series: naive,
// daily and weekly seasonal naive (when the bucket divides a day and the
// window holds the lag) and ETS(A,Ad,A) with a daily season (damped Holt
// for daily data).
func Baselines() []MethodSpec {
	return []MethodSpec{
		{Name: "naive", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			return NewSeasonalNaive(1, c.Window, c.Horizon), nil
		}},
		{Name: "snaive_day", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			d := s.StepsPerDay()
			if d < 2 {
				return nil, fmt.Errorf("%w: daily seasonal naive needs buckets that divide a day (have %v)", ErrNotApplicable, s.Step)
			}
			return NewSeasonalNaive(d, c.Window, c.Horizon), nil
		}},
		{Name: "snaive_week", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			wk := stepsPer(s.Step, 7*24*time.Hour)
			if wk < 2 || c.Window < wk {
				return nil, fmt.Errorf("%w: weekly seasonal naive needs a window of a week (have %d buckets, need %d)", ErrNotApplicable, c.Window, wk)
			}
			return NewSeasonalNaive(wk, c.Window, c.Horizon), nil
		}},
		{Name: "ets", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			m := s.StepsPerDay()
			if m < 2 {
				m = stepsPer(s.Step, 7*24*time.Hour)
			}
			return NewETS(m, c.Window, c.Horizon), nil
		}},
	}
}

// rescaleBound: a series whose largest magnitude lies outside
// [2^−rescaleBound, 2^rescaleBound] is backtested in units of a power of
// two. The models' sums of squares overflow beyond about 1e154 and
// underflow below 1e−154, and the combination keeps its experts'
// forecasts as float32 (1e−38 to 3e38); every other part of the protocol
// is scale-free (MASE, sMAPE and coverage are ratios, the pinball loss is
// divided by the MASE scale), and multiplying by 2^k is exact, so the
// figures are those of the series itself. Within the bound nothing is
// rescaled: integer counts stay integers (the hybrid forecasts counts as
// counts).
const rescaleBound = 64

// rescaled returns s in units of 2^k, its largest observed magnitude in
// [1, 2), when that magnitude is outside the bound; s itself otherwise.
func (s *Series) rescaled() *Series {
	top := 0.0
	for i, v := range s.Values {
		if s.Observed[i] {
			top = max(top, math.Abs(v))
		}
	}
	if top == 0 || (top >= math.Ldexp(1, -rescaleBound) && top <= math.Ldexp(1, rescaleBound)) {
		return s
	}
	_, e := math.Frexp(top) // top = f·2^e, f in [0.5, 1)
	t := *s
	t.Values = make([]float64, len(s.Values))
	for i, v := range s.Values {
		t.Values[i] = math.Ldexp(v, 1-e)
	}
	slog.Info("backtest: values rescaled for the models' floating-point range (the figures are scale-free)",
		"series", s.Name, "unit", fmt.Sprintf("2^%d", e-1))
	return &t
}

// ErrNotApplicable marks a method that does not apply to a series (for
// example a weekly seasonal naive with a window shorter than a week).
var ErrNotApplicable = errors.New("method not applicable")

// HybridSpec is the backtest entry of the hybrid model; cov lists the
// covariates it may use.
func HybridSpec(name string, base HybridConfig) MethodSpec {
	return MethodSpec{Name: name, New: func(s *Series, feeds *Feeds, c BacktestConfig) (Method, error) {
		cfg := base
		cfg.Step = s.Step
		cfg.Window = c.Window
		cfg.Horizon = c.Horizon
		if cfg.Window < minHybridWindow {
			// Weekly buckets with a four-week window, say: report the
			// method as not applicable and let the baselines run.
			return nil, fmt.Errorf("%w: the hybrid needs a window of at least %d buckets (have %d; pass a longer --train)", ErrNotApplicable, minHybridWindow, cfg.Window)
		}
		return NewHybrid(cfg, feeds)
	}}
}

// baselineNames are the methods the hybrid is compared with.
var baselineNames = map[string]bool{"naive": true, "snaive_day": true, "snaive_week": true, "ets": true}

// IsBaseline reports whether method is one of the protocol's baselines.
func IsBaseline(method string) bool { return baselineNames[method] }

// BestBaseline returns the lowest baseline MASE at h=1 and at h=12 (each
// may come from a different baseline); NaN when there is none.
func BestBaseline(res []Result) [2]float64 {
	best := [2]float64{math.NaN(), math.NaN()}
	for _, r := range res {
		if !IsBaseline(r.Method) {
			continue
		}
		for k, h := range [2]int{1, 12} {
			if h > len(r.MASE) {
				continue
			}
			if v := r.MASE[h-1]; !math.IsNaN(v) && (math.IsNaN(best[k]) || v < best[k]) {
				best[k] = v
			}
		}
	}
	return best
}

// Methods returns the method specs named in list (comma-separated; empty
// means the baselines and the hybrid). Hybrid variants: "hybrid" uses
// every event kind of the calendar and every covariate of the series,
// "hybrid_nofeeds" neither, "hybrid_nogru" drops the recurrent part, "hybrid_noyear" the yearly memory and
// "blr" keeps only the Bayesian regression (with calibrated quantiles).
func Methods(s *Series, feeds *Feeds, list string) []MethodSpec {
	var covs []string
	if feeds != nil {
		covs = feeds.Covariates.Names()
	}
	all := append(Baselines(),
		HybridSpec("hybrid", HybridConfig{Covariates: covs}),
		MethodSpec{Name: "hybrid_nofeeds", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			return HybridSpec("hybrid_nofeeds", HybridConfig{}).New(s, nil, c)
		}},
		HybridSpec("hybrid_nogru", HybridConfig{Covariates: covs, NoGRU: true}),
		HybridSpec("hybrid_noyear", HybridConfig{Covariates: covs, NoYear: true}),
		HybridSpec("hybrid_nopool", HybridConfig{Covariates: covs, NoPool: true}),
		HybridSpec("hybrid_nocov", HybridConfig{}),
		MethodSpec{Name: "hybrid_noevents", New: func(s *Series, feeds *Feeds, c BacktestConfig) (Method, error) {
			f := &Feeds{Covariates: feeds.Covariates}
			return HybridSpec("hybrid_noevents", HybridConfig{Covariates: covs}).New(s, f, c)
		}},
		HybridSpec("blr", HybridConfig{Covariates: covs, NoGRU: true, NoStack: true}),
	)
	if list == "" {
		list = "naive,snaive_day,snaive_week,ets,hybrid"
	}
	var out []MethodSpec
	for _, name := range strings.Split(list, ",") {
		for _, m := range all {
			if m.Name == strings.TrimSpace(name) {
				out = append(out, m)
			}
		}
	}
	return out
}

// MarkCondition marks the days on which a covariate exceeds a threshold
// in some bucket (e.g. precipitation > 0).
type MarkCondition struct {
	Covariate string
	Above     float64
}

// ParseMarkConditions reads "name>value[,name>value...]".
func ParseMarkConditions(s string) ([]MarkCondition, error) {
	var out []MarkCondition
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		name, val, ok := strings.Cut(f, ">")
		if !ok {
			return nil, fmt.Errorf("%w: mark condition %q (want name>value)", ErrBadInput, f)
		}
		v, err := parseFinite(val)
		if err != nil {
			return nil, fmt.Errorf("mark condition %q: %w", f, err)
		}
		out = append(out, MarkCondition{Covariate: strings.ToLower(strings.TrimSpace(name)), Above: v})
	}
	return out, nil
}

// MarkedDays returns the predicate of days the external feeds mark: days
// with a calendar event (holiday flags included) and days on which a
// condition holds for the series' covariates in some bucket. Nil when
// nothing is marked.
func MarkedDays(s *Series, feeds *Feeds, conds ...MarkCondition) func(time.Time) bool {
	days := map[int64]bool{}
	if feeds != nil && feeds.Calendar != nil {
		for _, e := range feeds.Calendar.Events() {
			for d := e.Start.Truncate(24 * time.Hour); d.Before(e.End); d = d.Add(24 * time.Hour) {
				days[d.Unix()] = true
			}
		}
	}
	for _, c := range conds {
		for i, x := range s.Covariates[c.Covariate] {
			if x > c.Above {
				days[s.Time(i).Truncate(24*time.Hour).Unix()] = true
			}
		}
	}
	if len(days) == 0 {
		return nil
	}
	return func(t time.Time) bool { return days[t.Truncate(24*time.Hour).Unix()] }
}
