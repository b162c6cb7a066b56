package forecast

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestTwelveStepCoverageAcrossVolatilityRegimes: the final intervals'
// trackers judge each error by the bounds issued at its origin
// (trackInterval). On series whose volatility changes regime — random
// walks around a daily cycle whose step switches between calm and
// turbulent every few days — judging a 12-step error in the scale of the
// bucket it arrives in (rounds 6–12) covered 0.76 on average (0.81 now): by then the
// scale has absorbed the errors of the 11 origins before, which share
// most of this one's shocks, so a miss looked like a hit.
func TestTwelveStepCoverageAcrossVolatilityRegimes(t *testing.T) {
	const n, seeds = 24 * 7 * 7, 6
	var sum1, sum12 float64
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 1313))
		x, sd := 0.0, 1.0
		s := synth(n, func(i int) float64 {
			if i%(24*4) == 0 {
				sd = 0.5 + 3.5*r.Float64()
			}
			x += sd * r.NormFloat64()
			return 500 + x + 20*math.Sin(2*math.Pi*float64(i%24)/24)
		})
		res, err := Backtest(context.Background(), s, nil, []MethodSpec{HybridSpec("hybrid", HybridConfig{Seed: seed})}, BacktestConfig{})
		if err != nil {
			t.Fatal(err)
		}
		h := res[0]
		t.Logf("seed %d: coverage h1 %.3f h12 %.3f", seed, h.Cover80[0], h.Cover80[11])
		sum1 += h.Cover80[0]
		sum12 += h.Cover80[11]
	}
	c1, c12 := sum1/seeds, sum12/seeds
	t.Logf("mean coverage h1 %.3f h12 %.3f", c1, c12)
	if c1 < 0.77 || c1 > 0.83 || c12 < 0.77 || c12 > 0.83 {
		t.Errorf("mean 80%% coverage over %d series h1 %.3f h12 %.3f, want 0.77–0.83", seeds, c1, c12)
	}
}

// TestEventDayCoverage: a series whose demand drops on holidays by an
// amount that differs from one holiday to the next. The effect learnt
// from earlier holidays moves the forecast, but how far this one departs
// from it is an error of another size than an ordinary day's: event
// targets get their own interval trackers and error scale
// (Hybrid.eventInterval), and their 80% intervals cover 75–85% of
// event-day targets (0.799 / 0.813 at h1 / h12; with the ordinary
// trackers h12 was 0.304, with their own trackers over the ordinary
// scale 0.785).
func TestEventDayCoverage(t *testing.T) {
	s, feeds := holidaySeries(t, 240)
	res, err := Backtest(context.Background(), s, feeds, []MethodSpec{HybridSpec("hybrid", HybridConfig{})}, BacktestConfig{EventDays: MarkedDays(s, feeds)})
	if err != nil {
		t.Fatal(err)
	}
	h := res[0]
	t.Logf("event-day coverage h1 %.3f h12 %.3f (%d targets); all days %.3f / %.3f", h.MarkedCover80[0], h.MarkedCover80[11], h.MarkedN[11], h.Cover80[0], h.Cover80[11])
	for _, i := range []int{0, 11} {
		if c := h.MarkedCover80[i]; c < 0.75 || c > 0.85 {
			t.Errorf("event-day 80%% coverage h%d %.3f over %d targets, want 0.75–0.85", i+1, c, h.MarkedN[i])
		}
		if c := h.Cover80[i]; c < 0.75 || c > 0.85 {
			t.Errorf("80%% coverage h%d %.3f, want 0.75–0.85", i+1, c)
		}
	}
}

// holidaySeries is a daily cycle with noise over days days, every fifth
// day a holiday whose effect (×0.2 to ×0.8) differs per occurrence.
func holidaySeries(t *testing.T, days int) (*Series, *Feeds) {
	t.Helper()
	rng := rand.New(rand.NewPCG(21, 21))
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var events []Event
	eff := map[int]float64{}
	for d := 6; d < days; d += 5 {
		eff[d] = 0.5 + 0.3*(2*rng.Float64()-1)
		day := start.Add(time.Duration(d) * 24 * time.Hour)
		events = append(events, Event{Start: day, End: day.Add(24 * time.Hour), Name: "h", Kind: KindHoliday})
	}
	s := synth(days*24, func(i int) float64 {
		v := 200 + 80*math.Sin(2*math.Pi*float64(i%24-6)/24)
		if e, ok := eff[i/24]; ok {
			v *= e
		}
		return v + 5*rng.NormFloat64()
	})
	s.Start = start
	feeds, err := s.Feeds(events)
	if err != nil {
		t.Fatal(err)
	}
	return s, feeds
}

// TestSnapshotEventScale: the event targets' error scale round-trips (the
// restored model forecasts exactly as the original through the next
// event day), and a negative one is refused as corruption.
func TestSnapshotEventScale(t *testing.T) {
	s, feeds := holidaySeries(t, 60)
	cfg := HybridConfig{Step: time.Hour, Window: 24 * 14, Horizon: 12}
	a, err := NewHybrid(cfg, feeds)
	if err != nil {
		t.Fatal(err)
	}
	cut := 24 * 40
	for i := 0; i < cut; i++ {
		if err := a.Observe(s.Time(i), s.Values[i]); err != nil {
			t.Fatal(err)
		}
	}
	if a.nE[11] == 0 || !(a.shE[11] > 0) {
		t.Fatalf("no event error scale learnt: %v over %v errors", a.shE, a.nE)
	}
	e := &enc{}
	a.encode(e)
	b, _ := NewHybrid(cfg, feeds)
	d := &dec{b: e.b}
	b.decode(d)
	if d.err != nil || len(d.b) != 0 {
		t.Fatalf("decode: %v (%d bytes left)", d.err, len(d.b))
	}
	for i := cut; i < cut+24*6; i++ { // through the holiday on day 41
		a.Observe(s.Time(i), s.Values[i])
		b.Observe(s.Time(i), s.Values[i])
		for h, q := range a.Forecast() {
			if b.Forecast()[h] != q {
				t.Fatalf("bucket %d h=%d: %+v after restore, %+v before", i, h+1, b.Forecast()[h], q)
			}
		}
	}
	a.shE[3] = -1
	be := &enc{}
	a.encode(be)
	c, _ := NewHybrid(cfg, feeds)
	d = &dec{b: be.b}
	c.decode(d)
	if !errors.Is(d.err, ErrCorruptSnapshot) {
		t.Fatalf("a negative event error scale: %v, want ErrCorruptSnapshot", d.err)
	}
}
