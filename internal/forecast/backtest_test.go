package forecast

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func synth(n int, f func(i int) float64) *Series {
	s := &Series{Name: "synthetic", Start: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Step: time.Hour,
		Values: make([]float64, n), Observed: make([]bool, n)}
	for i := range s.Values {
		s.Values[i] = f(i)
		s.Observed[i] = true
	}
	return s
}

func byMethod(t *testing.T, res []Result) map[string]Result {
	t.Helper()
	m := map[string]Result{}
	for _, r := range res {
		m[r.Method] = r
	}
	return m
}

// TestBacktestKnownAnswers runs the protocol on series whose MASE is known
// in closed form.
func TestBacktestKnownAnswers(t *testing.T) {
	ctx := context.Background()
	t.Run("daily cycle plus trend: daily seasonal naive MASE is exactly 1", func(t *testing.T) {
		// Every error of the daily seasonal naive (h <= 24) is the trend
		// over one day, and so is the scale.
		s := synth(1200, func(i int) float64 { return 100 + 0.1*float64(i) + 30*math.Sin(2*math.Pi*float64(i)/24) })
		res, err := Backtest(ctx, s, nil, Baselines()[:2], BacktestConfig{})
		if err != nil {
			t.Fatal(err)
		}
		r := byMethod(t, res)["snaive_day"]
		if r.Origins != 1200-672-12+1 || r.Window != 672 {
			t.Fatalf("origins %d window %d", r.Origins, r.Window)
		}
		for h, v := range r.MASE {
			if math.Abs(v-1) > 1e-9 {
				t.Fatalf("h=%d: daily seasonal naive MASE %v, want 1", h+1, v)
			}
		}
	})
	t.Run("random walk: naive MASE is sqrt(h/24)", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 1))
		x := 0.0
		s := synth(6000, func(int) float64 { x += rng.NormFloat64(); return x })
		res, err := Backtest(ctx, s, nil, Baselines()[:1], BacktestConfig{MaxOrigins: 3000})
		if err != nil {
			t.Fatal(err)
		}
		r := res[0]
		// E|x_{t+h} − x_t| / E|x_t − x_{t−24}| = sqrt(h)/sqrt(24); the
		// scale is itself estimated from one window, which biases the
		// mean ratio up a little (Jensen), so the level gets 15% and the
		// ratio between horizons, where the scale cancels, 5%.
		for _, h := range []int{1, 12} {
			want := math.Sqrt(float64(h) / 24)
			if math.Abs(r.MASE[h-1]-want) > 0.15*want {
				t.Errorf("h=%d: naive MASE %.3f, want %.3f", h, r.MASE[h-1], want)
			}
		}
		if ratio := r.MASE[11] / r.MASE[0]; math.Abs(ratio-math.Sqrt(12)) > 0.05*math.Sqrt(12) {
			t.Errorf("MASE(12)/MASE(1) = %.3f, want sqrt(12)", ratio)
		}
		// Its empirical 80% intervals cover about 80%.
		if c := r.Cover80[0]; c < 0.76 || c > 0.84 {
			t.Errorf("naive coverage %.3f", c)
		}
	})
	t.Run("iid noise: weekly seasonal naive MASE is 1", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(2, 2))
		s := synth(5000, func(int) float64 { return rng.NormFloat64() })
		res, err := Backtest(ctx, s, nil, Baselines()[2:3], BacktestConfig{MaxOrigins: 2000})
		if err != nil {
			t.Fatal(err)
		}
		r := byMethod(t, res)["snaive_week"]
		if math.Abs(r.MASE[0]-1) > 0.05 || math.Abs(r.MASE[11]-1) > 0.05 {
			t.Fatalf("weekly seasonal naive MASE %v on iid noise, want 1", r.MASE)
		}
	})
}

func TestBacktestWindowRule(t *testing.T) {
	ctx := context.Background()
	// 14 days of hourly data: the 4-week window cannot leave 168 origins,
	// so it shrinks to n − 12 − 168 + 1 = 156 buckets.
	s := synth(336, func(i int) float64 { return float64(i % 24) })
	res, err := Backtest(ctx, s, nil, Baselines(), BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := byMethod(t, res)
	if r := m["naive"]; r.Window != 157 || r.Origins != 168 {
		t.Fatalf("window %d origins %d", r.Window, r.Origins)
	}
	if _, ok := m["snaive_week"]; ok {
		t.Fatal("weekly seasonal naive ran with a window shorter than a week")
	}
	// A day missing among the origins: the window shrinks by a day more,
	// so that 168 origins are still forecast from.
	for i := 250; i < 274; i++ {
		s.Observed[i] = false
	}
	res, err = Backtest(ctx, s, nil, Baselines()[:1], BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Window != 157-24 || r.Origins != 168 {
		t.Fatalf("with a gap: window %d origins %d", r.Window, r.Origins)
	}
	// Too short for two days of training plus 168 origins.
	_, err = Backtest(ctx, synth(200, func(int) float64 { return 1 }), nil, Baselines(), BacktestConfig{})
	if !errors.Is(err, ErrTooShort) {
		t.Fatalf("short series: %v", err)
	}
	// Unobserved targets are not scored, and neither are origins inside a
	// gap (the filled value there is drawn towards the value after it).
	rng := rand.New(rand.NewPCG(5, 5))
	s = synth(1000, func(i int) float64 { return float64(i%24) + rng.NormFloat64() })
	for i := 800; i < 900; i++ {
		s.Observed[i] = false
	}
	res, err = Backtest(ctx, s, nil, Baselines()[:1], BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Origins 671..987 target 672..988 at h=1; origins 799..899 have an
	// unobserved origin or target.
	if n, o := res[0].N[0], res[0].Origins; n != 317-101 || o != 317-100 {
		t.Fatalf("scored %d targets at h=1 from %d origins", n, o)
	}
	// Trailing unobserved buckets (a location that stopped reporting) are
	// trimmed: the same series cut at 900 gives the same figures.
	cut := *s
	cut.Values, cut.Observed = s.Values[:800], s.Observed[:800]
	for i := 800; i < 1000; i++ {
		s.Observed[i] = false
	}
	a, err := Backtest(ctx, s, nil, Baselines()[:1], BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Backtest(ctx, &cut, nil, Baselines()[:1], BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if a[0].Origins != b[0].Origins || a[0].MASE[0] != b[0].MASE[0] || a[0].Window != b[0].Window {
		t.Fatalf("trailing gap: origins %d MASE %v window %d; cut series: %d %v %d",
			a[0].Origins, a[0].MASE[0], a[0].Window, b[0].Origins, b[0].MASE[0], b[0].Window)
	}
}

// TestHybridBeatsBaselinesOnSeasonalSeries: on a series with a daily and
// weekly profile, a slowly moving level and noise, the hybrid must beat
// every baseline at h=1 and h=12 and keep its 80% intervals calibrated.
func TestHybridBeatsBaselinesOnSeasonalSeries(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	lvl := 100.0
	s := synth(672+400, func(i int) float64 {
		lvl += 0.5 * rng.NormFloat64()
		hod := float64(i % 24)
		dow := (i / 24) % 7
		p := 30 * math.Sin(2*math.Pi*(hod-8)/24)
		if dow >= 5 {
			p *= 0.5
		}
		return math.Round(lvl + p + 3*rng.NormFloat64())
	})
	specs := append(Baselines(), HybridSpec("hybrid", HybridConfig{}))
	res, err := Backtest(context.Background(), s, nil, specs, BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	best := BestBaseline(res)
	h := byMethod(t, res)["hybrid"]
	if h.MASE[0] >= best[0] || h.MASE[11] >= best[1] {
		t.Fatalf("hybrid MASE h1 %.3f h12 %.3f; best baseline %.3f %.3f", h.MASE[0], h.MASE[11], best[0], best[1])
	}
	if h.Cover80[0] < 0.7 || h.Cover80[0] > 0.9 {
		t.Fatalf("hybrid 80%% coverage %.3f", h.Cover80[0])
	}
	t.Logf("hybrid h1 %.3f h12 %.3f; best baseline %.3f %.3f; coverage %.2f", h.MASE[0], h.MASE[11], best[0], best[1], h.Cover80[0])
}

// TestEventsReduceErrorOnMarkedDays: a series whose demand halves on
// holidays; with the calendar the hybrid learns the effect from earlier
// holidays and errs less on the later ones than without it.
func TestEventsReduceErrorOnMarkedDays(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var events []Event
	hol := map[int]bool{}
	for d := 10; d < 120; d += 9 {
		hol[d] = true
		day := start.Add(time.Duration(d) * 24 * time.Hour)
		events = append(events, Event{Start: day, End: day.Add(24 * time.Hour), Name: "h", Kind: KindHoliday})
	}
	s := synth(120*24, func(i int) float64 {
		v := 200 + 80*math.Sin(2*math.Pi*float64(i%24-6)/24)
		if hol[i/24] {
			v *= 0.5
		}
		return math.Round(v + 5*rng.NormFloat64())
	})
	s.Start = start
	feeds, err := s.Feeds(events)
	if err != nil {
		t.Fatal(err)
	}
	specs := []MethodSpec{
		HybridSpec("with", HybridConfig{}),
		{Name: "without", New: func(s *Series, _ *Feeds, c BacktestConfig) (Method, error) {
			return NewHybrid(HybridConfig{Step: s.Step, Window: c.Window, Horizon: c.Horizon}, nil)
		}},
	}
	res, err := Backtest(context.Background(), s, feeds, specs, BacktestConfig{EventDays: MarkedDays(s, feeds)})
	if err != nil {
		t.Fatal(err)
	}
	m := byMethod(t, res)
	with, without := m["with"], m["without"]
	if with.MarkedN[11] == 0 || !(with.MarkedMASE[11] < 0.8*without.MarkedMASE[11]) {
		t.Fatalf("marked-day MASE h12 with events %.3f, without %.3f (%d targets)", with.MarkedMASE[11], without.MarkedMASE[11], with.MarkedN[11])
	}
	t.Logf("marked-day MASE h12: with %.3f, without %.3f", with.MarkedMASE[11], without.MarkedMASE[11])
}

// asObservations hides a method's gap handling: it observes every filled
// value as data (how the backtest fed gaps before it told them apart).
type asObservations struct{ Method }

// TestBacktestGapsNotLearnt: a sensor that reports only by day (nine hours
// missing every night, filled by interpolation) plus a three-day outage.
// The hybrid learns its error scales from observed buckets only, so its
// 80% intervals cover about 80% of the observed targets; fed the straight
// interpolated nights as data it learnt errors of nearly zero there and
// its intervals were too narrow.
func TestBacktestGapsNotLearnt(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	ar := 0.0
	s := synth(24*7*8, func(i int) float64 {
		ar = 0.7*ar + 5*rng.NormFloat64()
		return 200 + 40*math.Sin(2*math.Pi*float64(i%24)/24) + ar
	})
	for i := range s.Values {
		if h := i % 24; h >= 22 || h < 7 || (i >= 24*7*6 && i < 24*7*6+72) {
			s.Observed[i] = false
			s.Values[i] = math.NaN()
		}
	}
	fillGaps(s.Values)
	hy := HybridSpec("hybrid", HybridConfig{})
	opaque := MethodSpec{Name: "opaque", New: func(s *Series, f *Feeds, c BacktestConfig) (Method, error) {
		m, err := hy.New(s, f, c)
		return asObservations{m}, err
	}}
	res, err := Backtest(context.Background(), s, nil, []MethodSpec{hy, opaque}, BacktestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	r := byMethod(t, res)
	for _, h := range []int{1, 12} {
		c, o := r["hybrid"].Cover80[h-1], r["opaque"].Cover80[h-1]
		t.Logf("h=%d: coverage %.3f (gaps as data %.3f), MASE %.3f (%.3f)", h, c, o, r["hybrid"].MASE[h-1], r["opaque"].MASE[h-1])
		if c < 0.72 || c > 0.88 {
			t.Errorf("h=%d: 80%% interval covers %.3f of %d observed targets", h, c, r["hybrid"].N[h-1])
		}
	}
	if c, o := r["hybrid"].Cover80[0], r["opaque"].Cover80[0]; o > c-0.05 {
		t.Errorf("one step: gaps as data cover %.3f, told apart %.3f: the test no longer shows the difference", o, c)
	}
}

// TestHybridFill: a filled bucket (Hybrid.fill) moves the model's state
// but teaches it nothing (no error scale, no count-ness lost) and is
// checked like an observation.
func TestHybridFill(t *testing.T) {
	m := newHourlyModel(t, 24*7, 12)
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := m.fill(t0, 1); !errors.Is(err, ErrNotReady) {
		t.Fatalf("fill before the first observation: %v", err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	i := 0
	obs := func() {
		t.Helper()
		y := math.Round(50 + 20*math.Sin(2*math.Pi*float64(i%24)/24) + 4*rng.NormFloat64())
		if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), y); err != nil {
			t.Fatal(err)
		}
		i++
	}
	for range 24 * 10 {
		obs()
	}
	next := t0.Add(time.Duration(i) * time.Hour)
	if err := m.fill(next, math.NaN()); !errors.Is(err, ErrBadInput) {
		t.Fatalf("fill with NaN: %v", err)
	}
	if err := m.fill(next.Add(time.Hour), 1); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("fill out of order: %v", err)
	}
	sh := slices.Clone(m.sh)
	for range 6 {
		// An interpolated stretch: not an integer, far off the forecast.
		if err := m.fill(t0.Add(time.Duration(i)*time.Hour), 1000.5); err != nil {
			t.Fatal(err)
		}
		i++
	}
	if !slices.Equal(sh, m.sh) {
		t.Fatalf("filled buckets changed the error scales: %v -> %v", sh, m.sh)
	}
	if !m.integer {
		t.Fatal("a filled non-integer value made a count series continuous")
	}
	for _, q := range m.Forecast() {
		if q.Q50 != math.Trunc(q.Q50) {
			t.Fatalf("count forecast %v is not an integer", q)
		}
	}
	for range 24 {
		obs()
	}
	if slices.Equal(sh, m.sh) {
		t.Fatal("observations no longer move the error scales: the check above proves nothing")
	}
}

func TestLongGaps(t *testing.T) {
	for _, tc := range []struct {
		obs  string // o observed, . gap
		want string // L in a gap longer than the season (2)
	}{
		{"oooo", "...."},
		{"o.o..o...o", "......LLL."},
		{"...o", "LLL."},
		{"o..", "..."},
		{"o...", ".LLL"},
	} {
		obs := make([]bool, len(tc.obs))
		for i, c := range tc.obs {
			obs[i] = c == 'o'
		}
		got := []byte{}
		for _, l := range longGaps(obs, 2) {
			got = append(got, map[bool]byte{true: 'L', false: '.'}[l])
		}
		if string(got) != tc.want {
			t.Errorf("%s: long gaps %s, want %s", tc.obs, got, tc.want)
		}
	}
}
