package forecast

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Location models predict the distribution of a resource's requests over
// client regions (the access-location distribution) for a future bucket.
//
// LocationModel is the hybrid: a small Bayesian network
//
//	hour-of-week, day type, events, weather → region
//
// whose conditional tables are Dirichlet posteriors with forgetting
// (several memories), plus the short-term experts (last bucket's shares,
// alone and pooled with the long-run shares; recent shares), combined
// per horizon in two stages: a log-linear stacker (a multinomial
// logistic regression on the experts' log-probabilities, a per-region
// bias and per-region weather and event terms, trained online on the
// cross-entropy per request with AdaGrad), then a mixture of the stacker
// and every expert whose weights follow their log loss (AdaHedge, with a
// fixed share). The mixture is what makes the whole robust: when the
// stacker's weights are noisy (long horizons, little signal) the mixture
// leans on the experts.

// LocationConfig configures a LocationModel.
type LocationConfig struct {
	Regions    []string      // the regions, in the order counts are given
	Step       time.Duration // bucket length; must divide a day (default one hour)
	Horizons   []int         // horizons (in buckets) the stacker learns (default 1 and one day)
	Covariates []string      // covariates with a learnt per-region effect
	Kinds      []string      // event kinds with a learnt per-region effect (default: holiday + the calendar's)
	Region     string        // feeds region key ("" = global feeds)
	LR         float64       // AdaGrad step (default 0.01)
}

// Experts of the location stacker.
const (
	lxPersist     = iota // last bucket's shares
	lxRecent             // exponentially weighted recent shares (α = 0.3)
	lxHow0               // Dirichlet hour-of-week, weekly forgetting 0.3
	lxHow1               // ... 0.6
	lxHowMid             // ... 0.8 (the stacker's reference expert)
	lxHow3               // ... 0.95
	lxDayType            // Dirichlet hour-of-day × day type, daily forgetting 0.9
	lxHowAtOrigin        // hour-of-week prediction for the origin bucket (to form "today's anomaly")
	lxLongRun            // long-run shares (pooling with it smooths the others)
	lxDrift              // hour-of-week shifted by the last day's average deviation from it
	lxPool0              // last bucket's counts pooled with the long-run shares (persistPool[0])
	lxPool1              // ... persistPool[1]
	numLx
)

var howForget = [4]float64{0.3, 0.6, 0.8, 0.95}

// persistPool is how many mean buckets' worth of long-run shares the
// pooled persistence experts add to the last bucket's counts. Pooling by
// a count, not a fixed weight, trusts a busy hour more than a quiet one;
// measured in mean buckets it needs no unit. Two strengths, because how
// much of an hour's deviation carries into the next differs between
// resources (a persistence baseline smoothed by a tuned pseudo-count
// beat the unpooled experts at 1 h on NAB's Twitter volumes).
var persistPool = [2]float64{0.25, 1}

// howMid is the index in howForget of the reference table.
const howMid = 2

const (
	dayTypeForget = 0.9
	// mixEtaMax caps AdaHedge's rate for the mixture weights (at the
	// start the gap is nought) and mixShare is the fixed share that keeps
	// every candidate alive.
	mixEtaMax   = 1e3
	mixShare    = 1e-3
	recentAlpha = 0.3
	piAlpha     = 1.0 / (24 * 28) // the long-run shares remember about four weeks
)

// LocationModel is the hybrid access-location model of one resource.
type LocationModel struct {
	cfg   LocationConfig
	feeds *Feeds
	R     int
	cells int // buckets per week
	spd   int // buckets per day

	n      int64
	last   time.Time
	pi     []float64   // long-run shares (the Dirichlet prior's mean)
	lastN  []float64   // last bucket's counts
	recent []float64   // EW shares
	drift  []float64   // EW (α = 1/day) of log shares minus the hour-of-week prediction
	how    [][]float64 // [forget][cell*R + r] decayed counts
	dt     []float64   // [(hod*2+weekend)*R + r]
	tot    float64     // EW mean requests per bucket

	// Stacker per horizon: expert weights, region biases, per-region
	// covariate/event weights, AdaGrad accumulators.
	hor []locHorizon
	J   int // covariates + kinds
	cov covStats

	// Pending inputs per origin for each horizon: ring of maxH origins.
	maxH    int
	pendX   []float64 // ring: [slot][hor][numLx*R]
	pendZ   []float64 // ring: [slot][hor][J]
	pendOK  []bool    // ring: [slot]
	scratch []float64

	// Forecasts made once per bucket (Precompute) for every reader of
	// the bucket; valid while n and R are what they were made at.
	fc     []float64 // [h-1][r]
	fcConc []float64 // [h-1]
	fcN    int64
	fcR    int
}

type locHorizon struct {
	h       int
	w       []float64 // numLx
	b       []float64 // R
	g       []float64 // J×R
	gw, gb  []float64 // AdaGrad accumulators
	gg      []float64
	mix     []float64 // mixture weights: [0] the stacker, [1+k] expert k
	gap     float64   // AdaHedge's cumulative mixability gap of the mixture
	ceSum   float64   // EW cross-entropy per request (for Explain)
	ceCount float64
}

type covStats struct {
	mean, m2 []float64
	n        float64
}

// hedge moves the mixture weights by AdaHedge (de Rooij et al. 2014) on
// each candidate's cross-entropy per request of the bucket (weighted by
// the bucket's volume, wgt): the rate is ln N over the cumulative
// mixability gap, so it needs no tuning and tracks the best candidate
// (on NAB's Twitter volumes the stacker) where the exponentiated
// gradient on the mixture's own loss, with a fixed step, chased the
// last-hour shares. p is the stacker's forecast, x the experts'
// log-probabilities. The fixed share that follows keeps every candidate
// alive.
func (lh *locHorizon) hedge(counts []float64, tot, wgt float64, x, p []float64, R int) {
	var loss [1 + numLx]float64
	mn, dot := math.Inf(1), 0.0
	for k := range lh.mix {
		if k == 1+lxHowAtOrigin {
			continue // a forecast of the origin, not of the target
		}
		l := 0.0
		for r := 0; r < R; r++ {
			lk := math.Log(p[r])
			if k > 0 {
				lk = x[(k-1)*R+r]
			}
			l -= counts[r] / tot * lk
		}
		loss[k] = wgt * l
		mn = min(mn, loss[k])
		dot += lh.mix[k] * loss[k]
	}
	eta := min(math.Log(numLx)/max(lh.gap, 1e-9), mixEtaMax)
	sw := 0.0
	for k := range lh.mix {
		if k != 1+lxHowAtOrigin {
			lh.mix[k] *= math.Exp(-eta * (loss[k] - mn))
			sw += lh.mix[k]
		}
	}
	// The mixability gap: the weighted mean loss above the mix loss.
	lh.gap += max(dot-(mn-math.Log(sw)/eta), 0)
	normalise(lh.mix)
}

// NewLocationModel returns an empty model. feeds may be nil.
func NewLocationModel(cfg LocationConfig, feeds *Feeds) (*LocationModel, error) {
	if len(cfg.Regions) < 2 {
		return nil, fmt.Errorf("%w: location model needs at least two regions", ErrBadInput)
	}
	if cfg.Step <= 0 {
		cfg.Step = time.Hour
	}
	spd := stepsPer(cfg.Step, 24*time.Hour)
	if spd < 1 {
		return nil, fmt.Errorf("%w: location model step %v does not divide a day", ErrBadInput, cfg.Step)
	}
	if len(cfg.Horizons) == 0 {
		cfg.Horizons = []int{1, spd}
	}
	if cfg.LR == 0 {
		cfg.LR = 0.01
	}
	if cfg.Kinds == nil && feeds != nil && feeds.Calendar != nil {
		if hasHoliday(feeds.Calendar) {
			cfg.Kinds = append(cfg.Kinds, KindHoliday)
		}
		cfg.Kinds = append(cfg.Kinds, feeds.Calendar.Kinds()...)
	}
	R := len(cfg.Regions)
	m := &LocationModel{cfg: cfg, feeds: feeds, R: R, spd: spd, cells: 7 * spd}
	m.pi = make([]float64, R)
	for r := range m.pi {
		m.pi[r] = 1 / float64(R)
	}
	m.lastN = make([]float64, R)
	m.recent = append([]float64(nil), m.pi...)
	m.drift = make([]float64, R)
	for range howForget {
		m.how = append(m.how, make([]float64, m.cells*R))
	}
	m.dt = make([]float64, 2*spd*R)
	m.J = len(cfg.Covariates) + len(cfg.Kinds)
	m.cov = covStats{mean: make([]float64, len(cfg.Covariates)), m2: make([]float64, len(cfg.Covariates))}
	for _, h := range cfg.Horizons {
		if h < 1 || h > 7*spd {
			return nil, fmt.Errorf("%w: location horizon %d buckets", ErrBadInput, h)
		}
		lh := locHorizon{h: h, w: make([]float64, numLx), b: make([]float64, R), g: make([]float64, m.J*R),
			gw: make([]float64, numLx), gb: make([]float64, R), gg: make([]float64, m.J*R)}
		lh.w[lxHowMid] = 1 // start as the hour-of-week Dirichlet model
		lh.mix = make([]float64, 1+numLx)
		for k := range lh.mix {
			if k == 1+lxHowAtOrigin {
				continue // a forecast of the origin, not of the target
			}
			lh.mix[k] = 1
		}
		normalise(lh.mix)
		m.hor = append(m.hor, lh)
		m.maxH = max(m.maxH, h)
	}
	nh := len(m.hor)
	m.pendX = make([]float64, (m.maxH+1)*nh*numLx*R)
	m.pendZ = make([]float64, (m.maxH+1)*nh*max(m.J, 1))
	m.pendOK = make([]bool, m.maxH+1)
	m.scratch = make([]float64, 2*R)
	return m, nil
}

// Regions returns the model's regions.
func (m *LocationModel) Regions() []string { return m.cfg.Regions }

func (m *LocationModel) cell(t time.Time) int {
	u := t.Unix()
	// Unix time 0 was a Thursday; shift so cell 0 is Monday 00:00.
	sec := int64(m.cfg.Step / time.Second)
	c := ((u+3*86400)%(7*86400) + 7*86400) % (7 * 86400) / sec
	return int(c)
}

func (m *LocationModel) dtCell(t time.Time) int {
	sec := int64(m.cfg.Step / time.Second)
	hod := int(((t.Unix()%86400)+86400)%86400/sec) % m.spd
	we := 0
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday || (m.feeds != nil && m.feeds.Calendar.Holiday(t, m.cfg.Region)) {
		we = 1
	}
	return hod*2 + we
}

// dirichlet writes log((c + a·π) / (Σc + a)) into out, with a = R/2 (a
// Jeffreys-sized prior whose mean is the long-run shares).
func (m *LocationModel) dirichlet(c []float64, out []float64) {
	m.dirichletA(c, float64(m.R)/2, out)
}

// dirichletA is dirichlet with a prior of a pseudo-requests.
func (m *LocationModel) dirichletA(c []float64, a float64, out []float64) {
	s := 0.0
	for _, v := range c {
		s += v
	}
	for r := range out {
		// The prior mean keeps a little mass on every region, so a region
		// never seen yet has a finite log-probability.
		pr := 0.99*m.pi[r] + 0.01/float64(m.R)
		out[r] = math.Log((c[r] + a*pr) / (s + a))
	}
}

// experts writes the experts' log-probabilities for target bucket tt,
// made at the current origin, into x (numLx×R).
func (m *LocationModel) experts(tt time.Time, x []float64) {
	R := m.R
	m.dirichlet(m.lastN, x[lxPersist*R:(lxPersist+1)*R])
	for k, f := range persistPool {
		e := lxPool0 + k
		m.dirichletA(m.lastN, max(f*m.tot, float64(R)/2), x[e*R:(e+1)*R])
	}
	for r := 0; r < R; r++ {
		x[lxRecent*R+r] = math.Log(0.99*m.recent[r] + 0.01/float64(R))
	}
	c := m.cell(tt)
	for k := range howForget {
		m.dirichlet(m.how[k][c*R:(c+1)*R], x[(lxHow0+k)*R:(lxHow0+k+1)*R])
	}
	d := m.dtCell(tt)
	m.dirichlet(m.dt[d*R:(d+1)*R], x[lxDayType*R:(lxDayType+1)*R])
	co := m.cell(m.last)
	m.dirichlet(m.how[howMid][co*R:(co+1)*R], x[lxHowAtOrigin*R:(lxHowAtOrigin+1)*R])
	for r := 0; r < R; r++ {
		x[lxLongRun*R+r] = math.Log(0.99*m.pi[r] + 0.01/float64(R))
	}
	dr := x[lxDrift*R : (lxDrift+1)*R]
	mx := math.Inf(-1)
	for r := 0; r < R; r++ {
		dr[r] = x[lxHowMid*R+r] + m.drift[r]
		mx = max(mx, dr[r])
	}
	s := 0.0
	for r := 0; r < R; r++ {
		s += math.Exp(dr[r] - mx)
	}
	for r := 0; r < R; r++ {
		dr[r] -= mx + math.Log(s)
	}
}

// context writes the standardised covariates and event indicators at tt.
func (m *LocationModel) context(tt time.Time, z []float64) {
	nc := len(m.cfg.Covariates)
	for j, name := range m.cfg.Covariates {
		z[j] = 0
		if m.feeds == nil || m.cov.n < 2 {
			continue
		}
		if v, ok := m.feeds.Covariates.At(name, m.cfg.Region, tt); ok {
			if sd := math.Sqrt(m.cov.m2[j] / (m.cov.n - 1)); sd > 0 {
				z[j] = clip((v-m.cov.mean[j])/sd, 5)
			}
		}
	}
	for k, kind := range m.cfg.Kinds {
		z[nc+k] = 0
		if m.feeds == nil {
			continue
		}
		if (kind == KindHoliday && m.feeds.Calendar.Holiday(tt, m.cfg.Region)) ||
			(kind != KindHoliday && m.feeds.Calendar.Active(tt, m.cfg.Region, kind)) {
			z[nc+k] = 1
		}
	}
}

// combine writes horizon hi's forecast: the mixture of the stacker and
// the experts under the mixture weights.
func (m *LocationModel) combine(hi int, x, z, p []float64) {
	m.stack(hi, x, z, p)
	m.mixture(hi, x, p, p)
}

// mixture writes into out (which may be sp) the mixture of the stacker's
// forecast sp and the experts x under horizon hi's weights.
func (m *LocationModel) mixture(hi int, x, sp, out []float64) {
	R := m.R
	lh := &m.hor[hi]
	for r := 0; r < R; r++ {
		v := lh.mix[0] * sp[r]
		for k := 0; k < numLx; k++ {
			if w := lh.mix[1+k]; w > 0 {
				v += w * math.Exp(x[k*R+r])
			}
		}
		out[r] = v
	}
}

func normalise(v []float64) {
	s := sum(v)
	for i := range v {
		v[i] /= s
	}
}

// stack applies horizon hi's log-linear stacker to experts x and context z.
func (m *LocationModel) stack(hi int, x, z, p []float64) {
	lh := &m.hor[hi]
	R := m.R
	mx := math.Inf(-1)
	for r := 0; r < R; r++ {
		// Experts enter as differences from the hour-of-week expert (its
		// own weight tempers it): the inputs are then small and nearly
		// uncorrelated, which the online optimiser needs.
		base := x[lxHowMid*R+r]
		v := lh.b[r] + lh.w[lxHowMid]*base
		for k := 0; k < numLx; k++ {
			if k != lxHowMid {
				v += lh.w[k] * (x[k*R+r] - base)
			}
		}
		for j := 0; j < m.J; j++ {
			v += lh.g[j*R+r] * z[j]
		}
		p[r] = v
		mx = max(mx, v)
	}
	s := 0.0
	for r := range p[:R] {
		p[r] = math.Exp(p[r] - mx)
		s += p[r]
	}
	for r := range p[:R] {
		// A floor keeps one confident mistake from costing infinity.
		p[r] = 0.9999*p[r]/s + 0.0001/float64(R)
	}
}

// Observe feeds the request counts per region (in Regions order) of the
// bucket starting at t, which must follow the previous bucket.
func (m *LocationModel) Observe(t time.Time, counts []float64) error {
	R := m.R
	if len(counts) != R {
		return fmt.Errorf("%w: %d counts for %d regions", ErrBadInput, len(counts), R)
	}
	tot := 0.0
	for _, v := range counts {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: count %v at %v", ErrBadInput, v, t)
		}
		tot += v
	}
	if m.n > 0 && !t.Equal(m.last.Add(m.cfg.Step)) {
		return fmt.Errorf("%w: got %v after %v", ErrOutOfOrder, t, m.last)
	}
	// Learn from the forecasts that targeted this bucket.
	if tot > 0 {
		m.tot += max(piAlpha, 1/float64(m.n+1)) * (tot - m.tot)
		wgt := clip(tot/max(m.tot, 1e-9), 5)
		p := m.scratch[:R]
		for hi := range m.hor {
			lh := &m.hor[hi]
			o := m.n - int64(lh.h) // origin index
			if o < 0 {
				continue
			}
			slot := int(o % int64(m.maxH+1))
			if !m.pendOK[slot] {
				continue
			}
			x := m.pendX[(slot*len(m.hor)+hi)*numLx*R : (slot*len(m.hor)+hi+1)*numLx*R]
			z := m.pendZ[(slot*len(m.hor)+hi)*max(m.J, 1) : (slot*len(m.hor)+hi+1)*max(m.J, 1)]
			mixP := m.scratch[R : 2*R]
			m.stack(hi, x, z, p)
			m.mixture(hi, x, p, mixP)
			ce := 0.0
			for r := 0; r < R; r++ {
				ce -= counts[r] * math.Log(mixP[r])
			}
			lh.ceSum = 0.99*lh.ceSum + ce/tot
			lh.ceCount = 0.99*lh.ceCount + 1
			lh.hedge(counts, tot, wgt, x, p, R)
			for k := range lh.mix {
				if k != 1+lxHowAtOrigin {
					lh.mix[k] = (1-mixShare)*lh.mix[k] + mixShare/float64(len(lh.mix)-1)
				}
			}
			// Gradient of the cross-entropy per request: p − shares.
			for r := 0; r < R; r++ {
				d := wgt * (p[r] - counts[r]/tot)
				lh.gb[r] += d * d
				lh.b[r] -= m.cfg.LR * d / (math.Sqrt(lh.gb[r]) + 1e-6)
				for j := 0; j < m.J; j++ {
					g := d * z[j]
					lh.gg[j*R+r] += g * g
					lh.g[j*R+r] -= m.cfg.LR * g / (math.Sqrt(lh.gg[j*R+r]) + 1e-6)
				}
			}
			for k := 0; k < numLx; k++ {
				g := 0.0
				for r := 0; r < R; r++ {
					in := x[k*R+r]
					if k != lxHowMid {
						in -= x[lxHowMid*R+r]
					}
					g += wgt * (p[r] - counts[r]/tot) * in
				}
				lh.gw[k] += g * g
				lh.w[k] -= m.cfg.LR * g / (math.Sqrt(lh.gw[k]) + 1e-6)
			}
		}
	}
	// Drift: how far this bucket's shares are from what the hour-of-week
	// table expected, averaged over about a day.
	if tot > 0 && m.n > 0 {
		c := m.cell(t)
		lp := m.scratch[:R]
		m.dirichlet(m.how[howMid][c*R:(c+1)*R], lp)
		a := 1 / float64(m.spd)
		pa := float64(R) / 2
		for r := 0; r < R; r++ {
			ls := math.Log((counts[r] + pa*(0.99*m.pi[r]+0.01/float64(R))) / (tot + pa))
			m.drift[r] += a * (ls - lp[r] - m.drift[r])
		}
	}
	// Update the tables.
	c := m.cell(t)
	for k, f := range howForget {
		cc := m.how[k][c*R : (c+1)*R]
		for r := range cc {
			cc[r] = f*cc[r] + counts[r]
		}
	}
	d := m.dtCell(t)
	dd := m.dt[d*R : (d+1)*R]
	for r := range dd {
		dd[r] = dayTypeForget*dd[r] + counts[r]
	}
	copy(m.lastN, counts)
	if tot > 0 {
		a := max(piAlpha, 1/float64(m.n+1))
		for r := 0; r < R; r++ {
			s := counts[r] / tot
			m.pi[r] += a * (s - m.pi[r])
			m.recent[r] += recentAlpha * (s - m.recent[r])
		}
	}
	if m.feeds != nil && len(m.cfg.Covariates) > 0 {
		m.cov.n++
		for j, name := range m.cfg.Covariates {
			v, ok := m.feeds.Covariates.At(name, m.cfg.Region, t)
			if !ok {
				v = m.cov.mean[j]
			}
			dv := v - m.cov.mean[j]
			m.cov.mean[j] += dv / m.cov.n
			m.cov.m2[j] += dv * (v - m.cov.mean[j])
		}
	}
	m.advance(t)
	return nil
}

// Skip advances the model over a bucket whose counts are unknown: nothing
// is learnt, the forecasts move on by a bucket.
func (m *LocationModel) Skip(t time.Time) error {
	if m.n > 0 && !t.Equal(m.last.Add(m.cfg.Step)) {
		return fmt.Errorf("%w: got %v after %v", ErrOutOfOrder, t, m.last)
	}
	m.advance(t)
	return nil
}

// skipMany jumps over n unknown buckets ending with the one starting at
// last; pending forecasts are dropped.
func (m *LocationModel) skipMany(n int64, last time.Time) {
	if n <= 0 {
		return
	}
	m.n += n
	m.last = last
	clear(m.pendOK)
}

// advance records the forecasts made from the bucket starting at t.
func (m *LocationModel) advance(t time.Time) {
	R := m.R
	m.last = t
	// Record the inputs of the forecasts made from this origin.
	slot := int(m.n % int64(m.maxH+1))
	for hi, lh := range m.hor {
		tt := t.Add(time.Duration(lh.h) * m.cfg.Step)
		m.experts(tt, m.pendX[(slot*len(m.hor)+hi)*numLx*R:(slot*len(m.hor)+hi+1)*numLx*R])
		if m.J > 0 {
			m.context(tt, m.pendZ[(slot*len(m.hor)+hi)*m.J:(slot*len(m.hor)+hi+1)*m.J])
		}
	}
	m.pendOK[slot] = true
	m.n++
}

// Predict writes into p (len R) the predicted share of requests per region
// for the bucket h steps after the last observed one, and returns the
// Dirichlet concentration of the hour-of-week table behind it (how many
// requests' worth of evidence the shares rest on). h must be one of the
// configured horizons or lie between them (the nearer stacker is used).
// Predict does not change the model: concurrent calls are safe.
func (m *LocationModel) Predict(h int, p []float64) (conc float64, err error) {
	if m.n == 0 {
		return 0, fmt.Errorf("%w: no data yet", ErrNotReady)
	}
	if len(p) < m.R {
		return 0, fmt.Errorf("%w: output of %d for %d regions", ErrBadInput, len(p), m.R)
	}
	if m.fcN == m.n && m.fcR == m.R && h >= 1 && h <= len(m.fcConc) {
		copy(p, m.fc[(h-1)*m.R:h*m.R])
		return m.fcConc[h-1], nil
	}
	return m.predict(h, p, make([]float64, m.workLen())), nil
}

// workLen is the length of predict's work buffer.
func (m *LocationModel) workLen() int { return numLx*m.R + max(m.J, 1) }

// Precompute makes the forecasts of horizons 1..H from the current state
// once, so that the controller's many readers of a bucket's forecasts
// (placement, scores, explain, the API) copy them instead of each
// recomputing every expert. Like the demand models' forecasts, they see
// the external feeds as they were when the bucket closed.
func (m *LocationModel) Precompute(H int) {
	if m.n == 0 || H < 1 {
		return
	}
	m.fc = slices.Grow(m.fc[:0], H*m.R)[:H*m.R]
	m.fcConc = slices.Grow(m.fcConc[:0], H)[:H]
	work := make([]float64, m.workLen())
	for h := 1; h <= H; h++ {
		m.fcConc[h-1] = m.predict(h, m.fc[(h-1)*m.R:h*m.R], work)
	}
	m.fcN, m.fcR = m.n, m.R
}

// predict computes the forecast Predict returns (m.n > 0, len(p) >= R);
// work holds the experts and the context (workLen values).
func (m *LocationModel) predict(h int, p, work []float64) (conc float64) {
	hi := 0
	for i, lh := range m.hor {
		if abs(lh.h-h) < abs(m.hor[hi].h-h) {
			hi = i
		}
	}
	tt := m.last.Add(time.Duration(h) * m.cfg.Step)
	x, z := work[:numLx*m.R], work[numLx*m.R:]
	m.experts(tt, x)
	if m.J > 0 {
		m.context(tt, z)
	}
	m.combine(hi, x, z, p)
	c := m.cell(tt)
	conc = float64(m.R) / 2
	for _, v := range m.how[howMid][c*m.R : (c+1)*m.R] {
		conc += v
	}
	return conc
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// ErrNotReady is returned when a model has not seen enough data to answer.
var ErrNotReady = fmt.Errorf("model not ready")

// widen returns m (rows×R, row-major) with one zero column appended.
func widen(m []float64, rows, R int) []float64 {
	out := make([]float64, rows*(R+1))
	for i := 0; i < rows; i++ {
		copy(out[i*(R+1):i*(R+1)+R], m[i*R:(i+1)*R])
	}
	return out
}

// addRegion appends a region that has had no requests so far. Its tables
// start empty; forecasts already pending are dropped (they did not
// include it).
func (m *LocationModel) addRegion(name string) {
	R := m.R
	m.cfg.Regions = append(m.cfg.Regions, name)
	m.pi = append(m.pi, 0)
	m.lastN = append(m.lastN, 0)
	m.recent = append(m.recent, 0)
	m.drift = append(m.drift, 0)
	for k := range m.how {
		m.how[k] = widen(m.how[k], m.cells, R)
	}
	m.dt = widen(m.dt, 2*m.spd, R)
	for i := range m.hor {
		lh := &m.hor[i]
		lh.b = append(lh.b, 0)
		lh.gb = append(lh.gb, 0)
		lh.g = widen(lh.g, m.J, R)
		lh.gg = widen(lh.gg, m.J, R)
	}
	m.R = R + 1
	m.pendX = make([]float64, (m.maxH+1)*len(m.hor)*numLx*m.R)
	clear(m.pendOK)
	m.scratch = make([]float64, 2*m.R)
}
