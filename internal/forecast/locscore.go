package forecast

import (
	"fmt"
	"math"
	"time"
)

// LocationPredictor is anything that forecasts the access-location
// distribution bucket by bucket: the hybrid LocationModel and the two
// baselines below.
type LocationPredictor interface {
	Observe(t time.Time, counts []float64) error
	Predict(h int, p []float64) (float64, error)
}

// PersistenceLoc predicts the last bucket's shares, smoothed toward the
// long-run shares with A pseudo-requests.
type PersistenceLoc struct {
	A    float64
	last []float64
	pi   []float64
	n    float64
}

// NewPersistenceLoc returns the persistence baseline for r regions.
func NewPersistenceLoc(r int, a float64) *PersistenceLoc {
	return &PersistenceLoc{A: a, last: make([]float64, r), pi: make([]float64, r)}
}

// Observe implements LocationPredictor.
func (p *PersistenceLoc) Observe(_ time.Time, counts []float64) error {
	copy(p.last, counts)
	updatePi(p.pi, counts, &p.n)
	return nil
}

// Predict implements LocationPredictor.
func (p *PersistenceLoc) Predict(_ int, out []float64) (float64, error) {
	smoothShares(p.last, p.pi, p.A, out)
	return sum(p.last) + p.A, nil
}

// DirichletHoWLoc is the hour-of-week Dirichlet model with forgetting: per
// hour-of-week cell, counts decayed by Lambda at each visit of the cell (so
// once a week), prior A pseudo-requests spread as the long-run shares.
type DirichletHoWLoc struct {
	Lambda, A float64
	step      time.Duration
	cells     [][]float64
	pi        []float64
	n         float64
	last      time.Time
}

// NewDirichletHoWLoc returns the hour-of-week Dirichlet baseline.
func NewDirichletHoWLoc(r int, step time.Duration, lambda, a float64) *DirichletHoWLoc {
	n := stepsPer(step, 7*24*time.Hour)
	d := &DirichletHoWLoc{Lambda: lambda, A: a, step: step, pi: make([]float64, r)}
	for i := 0; i < n; i++ {
		d.cells = append(d.cells, make([]float64, r))
	}
	return d
}

func weekCell(t time.Time, step time.Duration, n int) int {
	sec := int64(step / time.Second)
	return int(((t.Unix()+3*86400)%(7*86400)+7*86400)%(7*86400)/sec) % n
}

// Observe implements LocationPredictor.
func (d *DirichletHoWLoc) Observe(t time.Time, counts []float64) error {
	c := d.cells[weekCell(t, d.step, len(d.cells))]
	for r := range c {
		c[r] = d.Lambda*c[r] + counts[r]
	}
	updatePi(d.pi, counts, &d.n)
	d.last = t
	return nil
}

// Predict implements LocationPredictor.
func (d *DirichletHoWLoc) Predict(h int, out []float64) (float64, error) {
	c := d.cells[weekCell(d.last.Add(time.Duration(h)*d.step), d.step, len(d.cells))]
	smoothShares(c, d.pi, d.A, out)
	return sum(c) + d.A, nil
}

func sum(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s
}

func updatePi(pi, counts []float64, n *float64) {
	tot := sum(counts)
	if tot <= 0 {
		return
	}
	*n++
	a := max(piAlpha, 1 / *n)
	for r := range pi {
		if *n == 1 {
			pi[r] = counts[r] / tot
			continue
		}
		pi[r] += a * (counts[r]/tot - pi[r])
	}
}

func smoothShares(c, pi []float64, a float64, out []float64) {
	s := sum(c)
	R := float64(len(c))
	for r := range c {
		p := pi[r]
		if p == 0 {
			p = 1 / R
		}
		out[r] = (c[r] + a*(0.99*p+0.01/R)) / (s + a)
	}
}

// LocationScore is the test-period score of one method at one horizon.
type LocationScore struct {
	Method   string
	Horizon  int
	CE       float64 // cross-entropy per request, nats
	KL       float64 // CE minus the entropy of the observed shares, per request
	Buckets  int
	Requests float64
	Params   string // hyperparameters the baseline chose on the training period
}

// LocationData is a per-region count table on a regular grid.
type LocationData struct {
	Regions []string
	Start   time.Time
	Step    time.Duration
	Counts  [][]float64 // [bucket][region]
}

// LocationDataFromSeries aligns per-location series (as LoadSeries returns
// them for a timestamp,location,value table) into one table.
func LocationDataFromSeries(ss []*Series) (*LocationData, error) {
	if len(ss) < 2 {
		return nil, fmt.Errorf("%w: need at least two locations, have %d", ErrBadInput, len(ss))
	}
	d := &LocationData{Start: ss[0].Start, Step: ss[0].Step}
	n := ss[0].Len()
	for _, s := range ss {
		if !s.Start.Equal(d.Start) || s.Step != d.Step || s.Len() != n {
			return nil, fmt.Errorf("%w: location %q not on the common grid", ErrBadInput, s.Name)
		}
		d.Regions = append(d.Regions, s.Name)
	}
	d.Counts = make([][]float64, n)
	for i := range d.Counts {
		d.Counts[i] = make([]float64, len(ss))
		// A bucket no location reported is a gap: its interpolated counts
		// are no requests anyone made, so it holds none (never scored:
		// ScoreLocations skips empty buckets, the models learn nothing).
		seen := false
		for _, s := range ss {
			seen = seen || s.Observed[i]
		}
		if !seen {
			continue
		}
		for j, s := range ss {
			d.Counts[i][j] = max(s.Values[i], 0)
		}
	}
	return d, nil
}

// ScoreLocations runs mk's predictor through the table and scores, for
// every horizon, the forecasts of the buckets in [from, to) made h buckets
// earlier from the data up to their origin (cross-entropy per request).
func ScoreLocations(d *LocationData, from, to time.Time, horizons []int, mk func() (LocationPredictor, error)) ([]LocationScore, error) {
	p, err := mk()
	if err != nil {
		return nil, err
	}
	R := len(d.Regions)
	maxH := 0
	for _, h := range horizons {
		maxH = max(maxH, h)
	}
	ring := make([][]float64, (maxH+1)*len(horizons))
	for i := range ring {
		ring[i] = make([]float64, R)
	}
	ok := make([]bool, maxH+1)
	out := make([]LocationScore, len(horizons))
	for k, h := range horizons {
		out[k].Horizon = h
	}
	for i, counts := range d.Counts {
		t := d.Start.Add(time.Duration(i) * d.Step)
		tot := sum(counts)
		if !t.Before(from) && t.Before(to) && tot > 0 {
			ent := 0.0
			for _, c := range counts {
				if c > 0 {
					ent -= c * math.Log(c/tot)
				}
			}
			for k, h := range horizons {
				o := i - h
				if o < 0 || !ok[o%(maxH+1)] {
					continue
				}
				pr := ring[(o%(maxH+1))*len(horizons)+k]
				ce := 0.0
				for r, c := range counts {
					if c > 0 {
						ce -= c * math.Log(pr[r])
					}
				}
				out[k].CE += ce
				out[k].KL += ce - ent
				out[k].Requests += tot
				out[k].Buckets++
			}
		}
		if err := p.Observe(t, counts); err != nil {
			return nil, err
		}
		slot := i % (maxH + 1)
		for k, h := range horizons {
			if _, err := p.Predict(h, ring[slot*len(horizons)+k]); err != nil {
				return nil, err
			}
		}
		ok[slot] = true
	}
	for k := range out {
		if out[k].Requests > 0 {
			out[k].CE /= out[k].Requests
			out[k].KL /= out[k].Requests
		}
	}
	return out, nil
}

// LocationBenchmark scores the hybrid and the two baselines on d: the
// baselines' hyperparameters (smoothing, forgetting) are chosen per
// horizon on [trainFrom, testFrom) — the last half of the training period,
// after the first half warmed them up — and every method is then scored
// on [testFrom, end).
func LocationBenchmark(d *LocationData, feeds *Feeds, covs []string, testFrom time.Time, horizons []int) ([]LocationScore, error) {
	end := d.Start.Add(time.Duration(len(d.Counts)) * d.Step)
	if !testFrom.After(d.Start) || !testFrom.Before(end) {
		return nil, fmt.Errorf("%w: test start %v outside the data [%v, %v)", ErrBadInput, testFrom, d.Start, end)
	}
	valFrom := d.Start.Add(testFrom.Sub(d.Start) / 2)
	R := len(d.Regions)
	var out []LocationScore
	// Baselines: grid search on the training period.
	pick := func(name string, grid []func() (LocationPredictor, error), labels []string) error {
		for hi, h := range horizons {
			best, bi := math.Inf(1), 0
			for gi, mk := range grid {
				sc, err := ScoreLocations(d, valFrom, testFrom, []int{h}, mk)
				if err != nil {
					return err
				}
				if sc[0].CE < best {
					best, bi = sc[0].CE, gi
				}
			}
			sc, err := ScoreLocations(d, testFrom, end, []int{h}, grid[bi])
			if err != nil {
				return err
			}
			sc[0].Method, sc[0].Params = name, labels[bi]
			out = append(out, sc[0])
			_ = hi
		}
		return nil
	}
	var pg []func() (LocationPredictor, error)
	var pl []string
	for _, a := range []float64{0.1, 1, 10, 100, 1000} {
		pg = append(pg, func() (LocationPredictor, error) { return NewPersistenceLoc(R, a), nil })
		pl = append(pl, fmt.Sprintf("a=%g", a))
	}
	if err := pick("persistence", pg, pl); err != nil {
		return nil, err
	}
	var dg []func() (LocationPredictor, error)
	var dl []string
	for _, lam := range []float64{0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1} {
		for _, a := range []float64{0.1, 1, 10, 100} {
			dg = append(dg, func() (LocationPredictor, error) { return NewDirichletHoWLoc(R, d.Step, lam, a), nil })
			dl = append(dl, fmt.Sprintf("lambda=%g a=%g", lam, a))
		}
	}
	if err := pick("dirichlet_how", dg, dl); err != nil {
		return nil, err
	}
	hyb, err := ScoreLocations(d, testFrom, end, horizons, func() (LocationPredictor, error) {
		return NewLocationModel(LocationConfig{Regions: d.Regions, Step: d.Step, Horizons: horizons, Covariates: covs}, feeds)
	})
	if err != nil {
		return nil, err
	}
	for i := range hyb {
		hyb[i].Method = "hybrid"
	}
	return append(out, hyb...), nil
}
