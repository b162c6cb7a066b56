package forecast

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// etsSSE is the one-step squared error of ETS parameters par on y.
func etsSSE(e *ETS, y []float64, par []float64) float64 {
	m := e.M
	if m < 2 || len(y) < 2*m {
		m = 0
	}
	st := make([]float64, 2+max(m, 0))
	a, b, g, phi := etsParams(par)
	if m < 2 {
		g = 0
	}
	return etsRun(y, m, a, b, g, phi, st)
}

// The ETS baseline's fit at an origin must not depend on the fits before
// it: warm-started alone, a fit that fell into a corner (α, γ ≈ 0) on a
// spike stayed there after the level shift that followed, and the
// baseline forecast the old level for days (NAB network_in: sMAPE 92%).
// Rolling over a spike and a shift, every origin's fit is at least as good
// as a fresh fit on the same window.
func TestETSFitDoesNotDependOnPath(t *testing.T) {
	const W, H, spd = 157, 12, 24
	r := rand.New(rand.NewPCG(7, 7))
	var ys []float64
	for i := range 330 {
		level := 9.0
		if i >= 138 {
			level = 2.7
		}
		v := level + 0.3*math.Sin(2*math.Pi*float64(i%spd)/spd) + 0.05*r.NormFloat64()
		if i == 136 || i == 137 {
			v = 200 + 100*float64(i-136)
		}
		ys = append(ys, v)
	}
	e := NewETS(spd, W, H)
	worse := 0
	for i, y := range ys {
		if err := e.Observe(time.Time{}, y); err != nil {
			t.Fatal(err)
		}
		if i < W-1 || i%6 != 0 {
			continue
		}
		e.Forecast()
		win := ys[i-W+1 : i+1]
		fresh := NewETS(spd, W, H)
		for _, v := range win {
			fresh.Observe(time.Time{}, v)
		}
		fresh.Forecast()
		got, want := etsSSE(e, win, e.par), etsSSE(fresh, win, fresh.par)
		if got > want*(1+1e-9) {
			worse++
			t.Errorf("origin %d: rolling fit SSE %.4g, fresh fit %.4g", i, got, want)
		}
	}
	if worse > 0 {
		t.Logf("%d origins worse than a fresh fit", worse)
	}
}

// The seasonal naive baselines keep each lag's errors sorted as the
// window slides; with gaps in the series only pairs observed at both ends
// count. Checked against the errors recomputed from the window at every
// bucket, for lags shorter and longer than the gaps.
func TestSeasonalNaiveErrorsSkipGaps(t *testing.T) {
	const W, H = 60, 12
	r := rand.New(rand.NewPCG(5, 5))
	for _, m := range []int{1, 24} {
		s := NewSeasonalNaive(m, W, H)
		var ys []float64
		var gap []bool
		for i := range 400 {
			y := math.Round(10 * r.NormFloat64())
			g := r.IntN(5) == 0 || (i >= 150 && i < 190)
			ys, gap = append(ys, y), append(gap, g)
			var err error
			if g {
				err = s.Gap(time.Time{}, y, false)
			} else {
				err = s.Observe(time.Time{}, y)
			}
			if err != nil {
				t.Fatal(err)
			}
			lo := max(0, len(ys)-W)
			for _, lag := range s.lags {
				var want []float64
				for j := lo + lag; j < len(ys); j++ {
					if !gap[j] && !gap[j-lag] {
						want = append(want, ys[j]-ys[j-lag])
					}
				}
				slices.Sort(want)
				if got := s.errs[lag]; !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
					t.Fatalf("m=%d bucket %d lag %d: errors %v, want %v", m, i, lag, got, want)
				}
			}
		}
	}
}

// etsRun against the filter written out plainly (the season's slot by the
// bucket index mod m), to the bit: its slot walks the season without a
// division per bucket.
func TestETSRunMatchesPlainFilter(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 9))
	for _, tc := range []struct {
		name string
		m, n int
	}{
		{"no season", 0, 50},
		{"season of one", 1, 50},
		{"season of two", 2, 9},
		{"weekly", 7, 60},
		{"daily, hourly", 24, 24*5 + 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := make([]float64, tc.n)
			for i := range y {
				y[i] = 10 + 3*math.Sin(float64(i)) + r.NormFloat64()
			}
			y[3] = math.Copysign(0, -1)
			const a, b, g, phi = 0.3, 0.05, 0.2, 0.97
			got := make([]float64, 2+max(tc.m, 0))
			gotSSE := etsRun(y, tc.m, a, b, g, phi, got)

			want := make([]float64, len(got))
			lvl, tr := etsInit(y, tc.m, want)
			wantSSE := 0.0
			for i := range y {
				s, si := 0.0, 0
				if tc.m >= 2 {
					si = 2 + i%tc.m
					s = want[si]
				}
				e := y[i] - (lvl + phi*tr + s)
				wantSSE += e * e
				nl := lvl + phi*tr + a*e
				tr = phi*tr + b*e
				if tc.m >= 2 {
					want[si] = s + g*e
				}
				lvl = nl
			}
			want[0], want[1] = lvl, tr
			if math.Float64bits(gotSSE) != math.Float64bits(wantSSE) {
				t.Errorf("sse %v, want %v", gotSSE, wantSSE)
			}
			for i := range got {
				if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
					t.Errorf("state[%d] %v, want %v", i, got[i], want[i])
				}
			}
		})
	}
}
