package forecast

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

var yrStart = time.Date(2020, 1, 6, 0, 0, 0, 0, time.UTC) // a Monday

// TestYearlyMemory checks the ring's arithmetic: daily means of hourly
// buckets, unknown buckets and days, the centred week's level, and the
// level change and day anomaly a year and two years back.
func TestYearlyMemory(t *testing.T) {
	day := func(d int) float64 { return float64(d) } // a value that names its day
	y := newYearly()
	// Hourly buckets: the day's mean is its value; hour 5 of every day is
	// unknown and must not count; days 100..102 are wholly unknown.
	for d := 0; d < 2*yrLag+40; d++ {
		for h := 0; h < 24; h++ {
			tm := yrStart.Add(time.Duration(d*24+h) * time.Hour)
			known := h != 5 && (d < 100 || d > 102)
			v := day(d)
			if h == 5 {
				v = 1e9
			}
			y.add(tm, v, known)
		}
	}
	d0 := dayOf(yrStart)
	at := func(d int) time.Time { return yrStart.Add(time.Duration(d) * 24 * time.Hour) }
	if got := float64(y.ring[(d0+50)%yrRing]); got != 50 {
		t.Fatalf("daily mean of day 50 = %v, want 50", got)
	}
	if v := y.ring[(d0+101)%yrRing]; !math.IsNaN(float64(v)) {
		t.Fatalf("unknown day stored as %v", v)
	}
	// A centred week of a linear series has the day's own value as level.
	if l, ok := y.level(d0 + 50); !ok || l != 50 {
		t.Fatalf("level(day 50) = %v, %v", l, ok)
	}
	// Three unknown days in the week around day 101 leave four: still a level.
	if _, ok := y.level(d0 + 101); !ok {
		t.Fatal("week with four known days has no level")
	}
	// Origin day 2·364+20, target 12 days on: a year back the level rose
	// by 12, two years back too.
	o := 2*yrLag + 20
	if dl, ok := y.delta(at(o), at(o+12)); !ok || math.Abs(dl-12) > 1e-9 {
		t.Fatalf("delta = %v, %v; want 12", dl, ok)
	}
	if a, ok := y.anomaly(at(o + 12)); !ok || math.Abs(a) > 1e-9 {
		t.Fatalf("anomaly of a linear series = %v, %v; want 0", a, ok)
	}
	// Less than a year of history: nothing to say.
	if _, ok := y.delta(at(300), at(312)); ok {
		t.Fatal("delta before a year of history")
	}
	// Further back than the ring holds: nothing either.
	if _, ok := y.level(d0); ok {
		t.Fatal("level of a day the ring no longer holds")
	}
	// Days before 1970 are ignored, not a panic.
	y.add(time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC), 1, true)
}

// TestYearlyMemoryHelpsSeasonalDaily: on a daily series whose level jumps
// at the same time every year (a sports season, a holiday period) the
// hybrid with its yearly memory forecasts 12 days ahead clearly better,
// in the second and third years, than without it; and no worse one day
// ahead.
func TestYearlyMemoryHelpsSeasonalDaily(t *testing.T) {
	const days = 4 * 365
	rng := rand.New(rand.NewPCG(7, 8))
	ys := make([]float64, days)
	for d := range ys {
		doy := d % 365
		v := 10.0
		if doy >= 240 && doy < 330 { // the season: a level 3 higher
			v += 3
		}
		if (d+2)%7 == 0 { // a weekly peak
			v += 1
		}
		ys[d] = v + 0.3*rng.NormFloat64()
	}
	run := func(noYear bool) (mae1, mae12 float64) {
		m, err := NewHybrid(HybridConfig{Step: 24 * time.Hour, Horizon: 12, NoYear: noYear, Seed: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var f1, f12 []float64 = make([]float64, days), make([]float64, days)
		n := 0
		for d, v := range ys {
			if d >= 2*365 && d-12 >= 0 {
				mae1 += math.Abs(v - f1[d])
				mae12 += math.Abs(v - f12[d])
				n++
			}
			if err := m.Observe(yrStart.Add(time.Duration(d)*24*time.Hour), v); err != nil {
				t.Fatal(err)
			}
			fc := m.Forecast()
			if d+1 < days {
				f1[d+1] = fc[0].Q50
			}
			if d+12 < days {
				f12[d+12] = fc[11].Q50
			}
		}
		return mae1 / float64(n), mae12 / float64(n)
	}
	y1, y12 := run(false)
	n1, n12 := run(true)
	t.Logf("MAE h1 %.3f (no yearly memory %.3f), h12 %.3f (%.3f)", y1, n1, y12, n12)
	if y12 > 0.9*n12 {
		t.Errorf("yearly memory: h12 MAE %.3f, want at most 0.9 × %.3f", y12, n12)
	}
	if y1 > 1.05*n1 {
		t.Errorf("yearly memory: h1 MAE %.3f, want no worse than %.3f", y1, n1)
	}
}
