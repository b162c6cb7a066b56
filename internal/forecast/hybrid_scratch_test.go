package forecast

import (
	"math"
	"testing"
	"time"
)

// A series' forecasts must not depend on which other series used the
// pooled scratch before it. The medians (expMedShort, expMedSeason) are
// written into the scratch's expert array only for h = 1 and read back
// for longer horizons; when the one-step target is in an event ahead and
// the base forecast is not positive, experts(h=1) is not called and the
// longer horizons read another series' medians.
func TestForecastIndependentOfOtherSeries(t *testing.T) {
	cal, err := NewCalendar([]Event{{Start: t0.Add(200 * time.Hour), End: t0.Add(201 * time.Hour), Name: "h", Kind: KindHoliday}})
	if err != nil {
		t.Fatal(err)
	}
	feeds := &Feeds{Calendar: cal, Covariates: NewCovariates(time.Hour)}
	cfg := HybridConfig{Step: time.Hour, Window: 24 * 7, Horizon: 6, Hidden: 4, Kinds: []string{KindHoliday}, Seed: 1}
	run := func(withBusy bool) []Quantiles {
		quiet, _ := NewHybrid(cfg, feeds)
		busy, _ := NewHybrid(cfg, feeds)
		var out []Quantiles
		for b := 0; b < 300; b++ {
			ts := t0.Add(time.Duration(b) * time.Hour)
			if withBusy {
				if err := busy.Observe(ts, 1000+100*math.Sin(float64(b))); err != nil {
					t.Fatal(err)
				}
			}
			y := 0.0
			if b < 185 && b%3 == 0 {
				y = float64(2 + b%4)
			}
			if b > 201 && b%2 == 0 {
				y = 3
			}
			if err := quiet.Observe(ts, y); err != nil {
				t.Fatal(err)
			}
			out = append(out, quiet.Forecast()...)
		}
		return out
	}
	alone, beside := run(false), run(true)
	for i := range alone {
		if alone[i] != beside[i] {
			t.Fatalf("bucket %d h=%d: the quiet series forecasts %+v alone, %+v beside a busy one", i/6, i%6+1, alone[i], beside[i])
		}
	}
}
