package forecast

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBacktestZeroScale: a constant training window has no seasonal-naive
// error, so MASE is undefined there: such origins are counted and left
// out of MASE (NaN when none is left), never divided by zero or by
// round-off.
func TestBacktestZeroScale(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(9, 9))
	for _, tc := range []struct {
		name     string
		f        func(i int) float64
		zero     int  // origins with zero scale (of 1000-672-12+1 = 317)
		maseNaN  bool // every origin has zero scale
		smapeNaN bool
	}{
		{"constant", func(int) float64 { return 5 }, 317, true, false},
		{"all zero", func(int) float64 { return 0 }, 317, true, false},
		{"round-off around a constant", func(i int) float64 { return 1e12 + float64(i%3)*1e-4 }, 317, true, false},
		{"constant, then noise", func(i int) float64 {
			if i < 700 {
				return 5
			}
			return 5 + rng.NormFloat64()
		}, 700 - 671, false, false}, // windows ending before 700 are constant
		{"noise", func(int) float64 { return rng.NormFloat64() }, 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Backtest(ctx, synth(1000, tc.f), nil, Baselines(), BacktestConfig{})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.ZeroScale != tc.zero || r.Origins != 317 {
					t.Fatalf("%s: zero-scale origins %d of %d, want %d of 317", r.Method, r.ZeroScale, r.Origins, tc.zero)
				}
				for h := range r.MASE {
					// Finite, but not bounded: just after the constant part
					// the scale is one error over a window, and MASE is large
					// by definition.
					if math.IsNaN(r.MASE[h]) != tc.maseNaN || math.IsInf(r.MASE[h], 0) {
						t.Fatalf("%s h=%d: MASE %v", r.Method, h+1, r.MASE[h])
					}
					if math.IsNaN(r.SMAPE[h]) || math.IsNaN(r.Cover80[h]) {
						t.Fatalf("%s h=%d: sMAPE %v coverage %v", r.Method, h+1, r.SMAPE[h], r.Cover80[h])
					}
				}
			}
		})
	}
}

// seasonalNaiveBrute is the seasonal naive's forecast recomputed from
// the window by sorting (what SeasonalNaive did before its errors slid).
func seasonalNaiveBrute(b []float64, m, H int) []Quantiles {
	out := make([]Quantiles, H)
	n := len(b)
	for h := 1; h <= H; h++ {
		lag := m * ((h + m - 1) / m)
		if lag > n {
			out[h-1] = Quantiles{math.NaN(), math.NaN(), math.NaN()}
			continue
		}
		var e []float64
		for i := lag; i < n; i++ {
			e = append(e, b[i]-b[i-lag])
		}
		slices.Sort(e)
		q10, _, q90 := quantilesSorted(e)
		pt := b[n-1+h-lag]
		out[h-1] = Quantiles{Q10: pt + q10, Q50: pt, Q90: pt + q90}
	}
	return out
}

// TestSeasonalNaiveSlidingErrors: the sliding sorted errors give exactly
// the forecasts of a sort of the window at every bucket, while filling and
// after (ties and repeated values included).
func TestSeasonalNaiveSlidingErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for _, tc := range []struct{ m, W, H int }{{1, 50, 12}, {24, 100, 12}, {7, 30, 12}, {24, 20, 12}, {1, 1, 3}, {3, 5, 12}} {
		s := NewSeasonalNaive(tc.m, tc.W, tc.H)
		var hist []float64
		for i := range 400 {
			y := math.Round(rng.NormFloat64() * 3) // many ties
			if i%50 < 5 {
				y = 0
			}
			hist = append(hist, y)
			_ = s.Observe(time.Time{}, y)
			got := s.Forecast()
			want := seasonalNaiveBrute(hist[max(0, len(hist)-tc.W):], tc.m, tc.H)
			for h := range want {
				g, w := got[h], want[h]
				if !(g == w || math.IsNaN(g.Q50) && math.IsNaN(w.Q50)) {
					t.Fatalf("m=%d W=%d at %d h=%d: %+v, want %+v", tc.m, tc.W, i, h+1, g, w)
				}
			}
		}
	}
}

// TestBacktestExtremeValues: values whose squares would overflow or
// underflow, or leave float32's range, are backtested in units of a power
// of two, so every method runs and scores what it scores on the same
// series in ordinary units (before, ETS and the hybrid were skipped above
// 1e100, and below about 1e−40 the hybrid forecast zero for everything);
// values around 1e12 and negative ones are ordinary.
func TestBacktestExtremeValues(t *testing.T) {
	ctx := context.Background()
	all := []string{"naive", "snaive_day", "ets", "hybrid"}
	for _, tc := range []struct {
		name string
		f    func(i int) float64
	}{
		{"around 1e12", func(i int) float64 { return 1e12 * (2 + math.Sin(float64(i)/4)) }},
		{"negative", func(i int) float64 { return -100 + 10*math.Sin(float64(i)/4) }},
		{"around 1e300", func(i int) float64 { return 1e300 * (1 + 0.5*math.Sin(float64(i)/4)) }},
		{"around 1e-300", func(i int) float64 { return 1e-300 * (1 + 0.5*math.Sin(float64(i)/4)) }},
		{"around 1e-50", func(i int) float64 { return 1e-50 * (1 + 0.5*math.Sin(float64(i)/4)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := synth(900, tc.f)
			res, err := Backtest(ctx, s, nil, Methods(s, nil, strings.Join(all, ",")), BacktestConfig{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range res {
				got = append(got, r.Method)
				for h := range r.MASE {
					if math.IsNaN(r.MASE[h]) || math.IsInf(r.MASE[h], 0) || r.N[h] == 0 {
						t.Fatalf("%s h=%d: MASE %v over %d targets", r.Method, h+1, r.MASE[h], r.N[h])
					}
				}
			}
			if !slices.Equal(got, all) {
				t.Fatalf("methods %v, want %v", got, all)
			}
		})
	}
}

// TestBacktestScaleFree: the same series in other units scores the same,
// to the bit. Multiplying by a power of two is exact in floating point,
// so any difference is an absolute constant somewhere in a model (the
// hybrid's scale floor was 1e−9·(|mean| + 1): a series around 1e−12 lost
// its seasonality to it) or a float32 overflow; beyond 2^±64 the backtest
// rescales (rescaled), within it the models must be scale-free
// themselves. The series has a spike and a level shift, so the robust
// paths (Huber weights, clipped scales, the shift gate) run too.
func TestBacktestScaleFree(t *testing.T) {
	ctx := context.Background()
	base := func(i int) float64 {
		v := 1.2 + 0.3*math.Sin(2*math.Pi*float64(i)/24) + 0.05*math.Sin(float64(i)*1.7)
		if i > 700 {
			v += 0.4
		}
		if i == 650 {
			v = 1.9
		}
		return v
	}
	run := func(k int) map[string]Result {
		s := synth(900, func(i int) float64 { return math.Ldexp(base(i), k) })
		res, err := Backtest(ctx, s, nil, Methods(s, nil, "naive,snaive_day,hybrid"), BacktestConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return byMethod(t, res)
	}
	want := run(0)
	for _, k := range []int{-1000, -200, -40, -12, 30, 60, 200, 1000} {
		got := run(k)
		for name, w := range want {
			g := got[name]
			if !slices.Equal(g.MASE, w.MASE) || !slices.Equal(g.SMAPE, w.SMAPE) || !slices.Equal(g.Cover80, w.Cover80) {
				t.Errorf("×2^%d, %s: MASE %v, want %v", k, name, g.MASE, w.MASE)
			}
		}
	}
}

// BenchmarkSeasonalNaiveFiveMinute: one origin of the naive baseline on a
// 5-minute series' four-week window (8064 buckets, 12 lags): observe one
// bucket and forecast, with the errors sliding ("sliding") and, as the
// baseline in the same run, re-sorted per origin and lag as before
// ("sort"). A year of 5-minute data has about 97,000 origins.
func BenchmarkSeasonalNaiveFiveMinute(b *testing.B) {
	const W, H = 28 * 288, 12
	rng := rand.New(rand.NewPCG(1, 2))
	ys := make([]float64, 2*W)
	for i := range ys {
		ys[i] = 100 + 50*math.Sin(2*math.Pi*float64(i%288)/288) + rng.NormFloat64()
	}
	b.Run("sliding", func(b *testing.B) {
		s := NewSeasonalNaive(1, W, H)
		for _, y := range ys[:W] {
			_ = s.Observe(time.Time{}, y)
		}
		for i := 0; b.Loop(); i++ {
			_ = s.Observe(time.Time{}, ys[W+i%W])
			_ = s.Forecast()
		}
	})
	b.Run("sort", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			_ = seasonalNaiveBrute(ys[i%W:i%W+W], 1, H)
		}
	})
}
