package forecast

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// synthLocations draws hourly request counts over three regions whose
// shares follow the time of day (plus a weekend shift) and slowly drift.
func synthLocations(hours int, seed uint64) *LocationData {
	rng := rand.New(rand.NewPCG(seed, 1))
	d := &LocationData{Regions: []string{"east", "west", "south"}, Start: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Step: time.Hour}
	for i := 0; i < hours; i++ {
		hod := float64(i % 24)
		we := (i/24)%7 >= 5
		logit := []float64{math.Sin(2 * math.Pi * hod / 24), math.Cos(2 * math.Pi * hod / 24), 0.1 * float64(i) / float64(hours)}
		if we {
			logit[2] += 0.7
		}
		// A day-to-day wobble shared by the day's hours (what "today's
		// deviation" can pick up).
		wob := 0.3 * math.Sin(float64(i/24)*1.7)
		logit[0] += wob
		s := 0.0
		p := make([]float64, 3)
		for r := range p {
			p[r] = math.Exp(logit[r])
			s += p[r]
		}
		tot := 500 + 400*math.Sin(2*math.Pi*(hod-6)/24)
		c := make([]float64, 3)
		for n := 0; n < int(tot); n++ {
			u := rng.Float64() * s
			for r := range p {
				if u < p[r] || r == 2 {
					c[r]++
					break
				}
				u -= p[r]
			}
		}
		d.Counts = append(d.Counts, c)
	}
	return d
}

func TestLocationBenchmarkSynthetic(t *testing.T) {
	d := synthLocations(24*7*10, 4)
	testFrom := d.Start.Add(24 * 7 * 8 * time.Hour)
	scores, err := LocationBenchmark(d, nil, nil, testFrom, []int{1, 24})
	if err != nil {
		t.Fatal(err)
	}
	get := func(method string, h int) LocationScore {
		for _, s := range scores {
			if s.Method == method && s.Horizon == h {
				return s
			}
		}
		t.Fatalf("no score for %s h=%d", method, h)
		return LocationScore{}
	}
	for _, h := range []int{1, 24} {
		hy, pe, di := get("hybrid", h), get("persistence", h), get("dirichlet_how", h)
		if hy.Buckets != 24*7*2 || hy.KL < 0 {
			t.Fatalf("h=%d: %+v", h, hy)
		}
		if !(hy.CE < pe.CE && hy.CE < di.CE) {
			t.Errorf("h=%d: hybrid CE %.5f, persistence %.5f, dirichlet %.5f", h, hy.CE, pe.CE, di.CE)
		}
		t.Logf("h=%d KL: hybrid %.5f persistence %.5f (%s) dirichlet %.5f (%s)", h, hy.KL, pe.KL, pe.Params, di.KL, di.Params)
	}
}

func TestLocationModelBasics(t *testing.T) {
	m, err := NewLocationModel(LocationConfig{Regions: []string{"a", "b"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float64, 2)
	if _, err := m.Predict(1, p); err == nil {
		t.Fatal("prediction before any data")
	}
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 500; i++ {
		// Region a at night, b by day.
		c := []float64{10, 90}
		if i%24 < 8 {
			c = []float64{90, 10}
		}
		if err := m.Observe(t0.Add(time.Duration(i)*time.Hour), c); err != nil {
			t.Fatal(err)
		}
	}
	// The next bucket is hour 500 % 24 = 20 (day): b dominates; at 3 h
	// ahead it is 23:00, still day; 8 h ahead it is 04:00, night.
	if _, err := m.Predict(1, p); err != nil || p[1] < 0.6 || math.Abs(p[0]+p[1]-1) > 1e-9 {
		t.Fatalf("day shares %v (%v)", p, err)
	}
	if _, err := m.Predict(8, p); err != nil || p[0] < 0.6 {
		t.Fatalf("night shares %v (%v)", p, err)
	}
	// Errors: wrong count length, negative counts, out of order.
	if err := m.Observe(t0.Add(500*time.Hour), []float64{1}); err == nil {
		t.Fatal("accepted a short count vector")
	}
	if err := m.Observe(t0.Add(500*time.Hour), []float64{1, -1}); err == nil {
		t.Fatal("accepted a negative count")
	}
	if err := m.Observe(t0.Add(900*time.Hour), []float64{1, 1}); err == nil {
		t.Fatal("accepted a gap")
	}
	// A new region joins with no history and gets a small share.
	m.addRegion("c")
	p = make([]float64, 3)
	if err := m.Observe(t0.Add(500*time.Hour), []float64{10, 90, 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Predict(1, p); err != nil || p[2] > 0.05 || math.Abs(p[0]+p[1]+p[2]-1) > 1e-9 {
		t.Fatalf("after adding a region: %v (%v)", p, err)
	}
}

// TestLocationPrecompute: the forecasts made once at a bucket's close are
// the ones Predict computes, and a later bucket, a skipped bucket or a new
// region is never answered from the old ones.
func TestLocationPrecompute(t *testing.T) {
	d := synthLocations(24*10, 3)
	m, err := NewLocationModel(LocationConfig{Regions: d.Regions}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const H = 24
	fresh := func(h int) []float64 {
		p := make([]float64, m.R)
		m.predict(h, p, make([]float64, numLx*m.R+max(m.J, 1)))
		return p
	}
	cached := func(h int) []float64 {
		p := make([]float64, m.R)
		if _, err := m.Predict(h, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	same := func(step string) {
		t.Helper()
		for h := 1; h <= H+2; h++ {
			a, b := cached(h), fresh(h)
			for r := range a {
				if a[r] != b[r] {
					t.Fatalf("%s: h=%d region %d: Predict %v, computed %v", step, h, r, a, b)
				}
			}
		}
	}
	for i, c := range d.Counts[:200] {
		if err := m.Observe(d.Start.Add(time.Duration(i)*d.Step), c); err != nil {
			t.Fatal(err)
		}
	}
	m.Precompute(H)
	same("precomputed")
	if m.fcN != m.n {
		t.Fatal("Precompute made no forecasts")
	}
	// The model moves on without a Precompute: Predict must not answer
	// with the previous bucket's forecasts.
	if err := m.Observe(d.Start.Add(200*d.Step), d.Counts[200]); err != nil {
		t.Fatal(err)
	}
	same("after an observe")
	m.Precompute(H)
	if err := m.Skip(d.Start.Add(201 * d.Step)); err != nil {
		t.Fatal(err)
	}
	same("after a skip")
	m.Precompute(H)
	m.addRegion("north")
	same("after a new region")
}

// Hours that no location reported are gaps: the per-location series fill
// them by interpolation for the demand models, but the location table
// holds no requests there, so they are never scored (scoring them scored
// the forecasts against interpolated shares nobody requested).
func TestLocationDataGapsHoldNoRequests(t *testing.T) {
	const n = 24 * 14
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(name string, f func(i int) float64) *Series {
		s := &Series{Name: name, Start: start, Step: time.Hour, Values: make([]float64, n), Observed: make([]bool, n)}
		for i := range s.Values {
			s.Values[i], s.Observed[i] = f(i), true
		}
		return s
	}
	a := mk("a", func(i int) float64 { return 10 + float64(i%24) })
	b := mk("b", func(i int) float64 { return 30 })
	gap := 0
	for i := 24 * 10; i < 24*10+30; i++ {
		a.Observed[i], b.Observed[i] = false, false
		gap++
	}
	b.Observed[24*12] = false // one location quiet: still a bucket with requests
	d, err := LocationDataFromSeries([]*Series{a, b})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range d.Counts {
		if inGap := i >= 24*10 && i < 24*10+30; inGap != (sum(c) == 0) {
			t.Fatalf("bucket %d: counts %v (in the gap: %v)", i, c, inGap)
		}
	}
	from := start.Add(24 * 7 * time.Hour)
	sc, err := ScoreLocations(d, from, start.Add(n*time.Hour), []int{1}, func() (LocationPredictor, error) {
		return NewPersistenceLoc(2, 1), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := n - 24*7 - gap; sc[0].Buckets != want {
		t.Fatalf("scored %d buckets, want %d (the %d gap hours left out)", sc[0].Buckets, want, gap)
	}
}
