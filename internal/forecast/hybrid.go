package forecast

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// ErrOutOfOrder is returned when a bucket is observed that does not follow
// the previous one; callers fill gaps (an access count's gap is a zero).
var ErrOutOfOrder = errors.New("bucket does not follow the previous one")

// Quantiles is the predictive distribution of one future bucket.
type Quantiles struct {
	Q10, Q50, Q90 float64
}

// HybridConfig configures one Hybrid model. Zero fields take defaults
// derived from the bucket length (see withDefaults).
type HybridConfig struct {
	Step       time.Duration // bucket length (required)
	Window     int           // regression window in buckets (default 4 weeks)
	Horizon    int           // forecast steps (default 12)
	Hidden     int           // GRU hidden units (default 12)
	BPTT       int           // truncated BPTT length (default one day, within [12, 48])
	LR         float64       // Adam learning rate (default 0.003)
	Seed       uint64        // GRU initialisation seed
	Region     string        // region whose events/covariates apply
	Kinds      []string      // event kinds with a learnt effect (default: the calendar's, plus holiday)
	Covariates []string      // covariate names with a learnt effect (default none)
	NoGRU      bool          // ablation: no recurrent part
	NoStack    bool          // ablation: Bayesian regression only
	NoPool     bool          // ablation: no combination with the simple experts
	NoYear     bool          // ablation: no yearly memory
}

// minHybridWindow is the shortest regression window the hybrid accepts.
const minHybridWindow = 8

func (c HybridConfig) withDefaults(feeds *Feeds) (HybridConfig, error) {
	if c.Step <= 0 {
		return c, fmt.Errorf("%w: hybrid config: step %v", ErrBadInput, c.Step)
	}
	if c.Window == 0 {
		c.Window = int(28 * 24 * time.Hour / c.Step)
	}
	if c.Horizon == 0 {
		c.Horizon = 12
	}
	if c.Hidden == 0 {
		c.Hidden = 12
	}
	if c.BPTT == 0 {
		c.BPTT = min(48, max(12, stepsPer(c.Step, 24*time.Hour)))
	}
	if c.LR == 0 {
		c.LR = 0.003
	}
	if c.Kinds == nil && feeds != nil && feeds.Calendar != nil {
		if hasHoliday(feeds.Calendar) {
			c.Kinds = append(c.Kinds, KindHoliday)
		}
		c.Kinds = append(c.Kinds, feeds.Calendar.Kinds()...)
	}
	switch {
	case c.Window < minHybridWindow:
		return c, fmt.Errorf("%w: hybrid config: window %d buckets (want >= %d)", ErrBadInput, c.Window, minHybridWindow)
	case c.Horizon < 1 || c.Horizon > 1000:
		return c, fmt.Errorf("%w: hybrid config: horizon %d", ErrBadInput, c.Horizon)
	case c.Hidden < 1 || c.Hidden > 256:
		return c, fmt.Errorf("%w: hybrid config: hidden %d", ErrBadInput, c.Hidden)
	case c.BPTT < 2 || c.BPTT > 1000:
		return c, fmt.Errorf("%w: hybrid config: bptt %d", ErrBadInput, c.BPTT)
	case !(c.LR > 0 && c.LR < 1):
		return c, fmt.Errorf("%w: hybrid config: lr %v", ErrBadInput, c.LR)
	}
	return c, nil
}

// Stacker inputs (per horizon), residuals of the regression over their
// robust scale ν: a bias; the last residual and exponentially smoothed
// residual levels (α = 0.5, 0.2, 0.05: the "ES" of ES-RNN, which lets the
// forecast follow a level the window's regression has not caught up
// with); the GRU's prediction; the residuals at the target's time of day
// yesterday, its time of week a week ago and averaged over the weeks in
// the window; the raw mean at the target's time of week minus the
// regression (the hour-of-week detail a smooth profile misses); the
// relative level of the last day and quarter day times the regression's
// forecast (a quiet day is quiet at every hour, in proportion); from the
// yearly memory (yearly.go), the change of level between the origin's and
// the target's days a year before and how the target's day stood out from
// its week then (both zero until a year has been seen); and the difference
// between the regression at the window's mean level and at the origin's
// (the trend is held at the origin; this input lets each horizon learn how
// much of the window's slope to believe, a damped trend fitted online).
// Then one input per covariate: its standardised value at the target times the
// regression's forecast (weather moves demand in proportion to it).
const (
	stkBias = iota
	stkLast
	stkES5
	stkES2
	stkES05
	stkGRU
	stkYday
	stkWk1
	stkWkM
	stkP4
	stkRho24
	stkRho6
	stkYear
	stkYearDay
	stkTrend
	numStk
)

var esAlpha = [3]float64{0.5, 0.2, 0.05}

// gruIn is the GRU's input width: residual, time of day (sin, cos), and a
// weekend/holiday flag.
const gruIn = 4

const (
	// clipNorm bounds the normalised residuals the GRU sees so one spike
	// cannot wreck its weights; bigClip only guards the stacker's
	// arithmetic (a level shift of 30 robust scales must get through).
	clipNorm = 5.0
	bigClip  = 1e3
	// huberK is the Huber threshold in robust-scale units (about three
	// standard deviations of Gaussian noise).
	huberK = 3.0
	// stackRidge is the stacker's ridge penalty in units of one
	// observation's weight: the weights stay near "trust the regression"
	// until the data show otherwise, and collinear inputs (the smoothed
	// levels) cannot cancel each other with huge weights.
	stackRidge = 8.0
	// stackSolveEvery is how often (in buckets) each horizon's stacker
	// weights are re-solved, and gruTrainEvery how often the GRU takes a
	// gradient step (each target stays inside the truncated BPTT window for
	// BPTT buckets, so it is still learnt from many times; training every
	// bucket while the model was young bought nothing measurable and cost
	// a tenth of the update, BENCHMARKS "round 20").
	stackSolveEvery = 4
	gruTrainEvery   = 2
	// stackMemPerInput: the stacker's memory holds at least this many
	// observations per input weight (the usual 10–20 per parameter of a
	// regression), whatever the window.
	stackMemPerInput = 20
	// evPriorSD is the prior standard deviation of an event kind's
	// relative effect (±30% is a plausible holiday or storm).
	evPriorSD = 0.3
	// evBins splits the day into bins with their own event effect, so a
	// holiday can lose its morning rush but keep its evening.
	evBins = 4
)

// evIndex is the slot of the effect of kind k at horizon h (1-based) for a
// target starting at t.
func (m *Hybrid) evIndex(h, k int, t time.Time) int {
	bin := 0
	if m.d.spd > 1 {
		bin = int(((t.Unix()%86400)+86400)%86400) * evBins / 86400
	}
	return ((h-1)*len(m.cfg.Kinds)+k)*evBins + bin
}

// Hybrid is the per-series forecaster. Data flow for each new bucket:
//
//	Bayesian regression (window W, NIG prior, Huber-weighted)  → profile μ(t+h)
//	residuals e = y − μ  → ES levels, GRU (trained online, truncated BPTT)
//	per-horizon stacker (weighted ridge with forgetting)       → base forecast
//	event effects (conjugate normal per kind and horizon)      → × (1 + θ)
//	per-horizon error scale and quantile trackers              → q10, q50, q90
//
// See doc.go for the rationale of each part.
type Hybrid struct {
	cfg HybridConfig
	d   *design
	blr *BLR
	x   []float64

	n    int64 // buckets observed
	last time.Time
	W    int
	ys   []float64 // ring of the last W values
	wts  []float64 // ring of the regression weights given to them
	run  int64     // buckets up to the newest with weight > 0 in a row (not encoded: countRun)
	res  []float64 // ring of in-sample residuals (data units)
	es   [3]float64
	nu   float64        // robust residual scale: 1.4826 × median |residual|
	sc   *hybridScratch // borrowed for the duration of Observe

	c, s        float64 // target standardisation z = (y-c)/s inside the regression
	sinceRebase int
	nextTune    int64
	gv          [numGroups]float64 // prior variance multiplier per group
	sig         float64            // regression residual sd (data units)
	spd, wk     int                // buckets per day (>=1), per week (0 if the window holds < 2 weeks)
	integer     bool               // every value so far was an integer (counts)
	nonneg      bool               // no value so far was below zero

	R        int                    // ring of per-origin regression forecasts (the GRU's targets)
	muY      []float64              // R×H regression forecast per origin
	sgY      []float64              // R robust scale per origin
	P        int                    // ring of per-origin stacker inputs: H+1 origins
	feat     []float32              // P×H×K stacker inputs per origin (single precision: they only weight a correction)
	predY    []float64              // P×H stacked forecast (before events and the median shift)
	predE    []float64              // P×H after events
	predF    []float64              // P×H final point forecast (the combination's)
	pl       *pool                  // combination with simple experts (nil: NoPool)
	yr       *yearly                // daily means over two years, for the yearly expert (nil: none)
	hw       *holtWinters           // the combination's Holt-Winters expert (nil: not available)
	hwf      *holtWinters           // the same with its parameters fitted weekly (expHWFit; nil: not available)
	surprise float64                // the hybrid's last one-step error if it was a surprise, else 0
	gate     [gateBins]gateEvidence // the shift gate's evidence per surprise size (shiftGate)
	bet      gateBet                // the one-step bet pending on the next value
	carry    carry                  // the longer horizons' share of the gate's bets (carryShift)
	noCarry  bool                   // the carry's ablation (tests)

	memoDay, memoWk medMemo // the seasonal median experts' medians by target (medLagged)

	K   int       // stacker width: numStk + covariates
	rw  []float64 // H×K weights
	rp  []float64 // H × K(K+1)/2 Gram matrices (exponentially weighted, lower triangles packed by rows)
	rb  []float64 // H×K moments
	lam float64   // forgetting factor

	covMean, covM2 []float64 // running moments of each covariate (standardisation)
	covN           float64
	covNow         []float64 // scratch

	evM, evP []float64 // H×kinds×evBins posterior mean and precision of the relative effects

	sh   []float64 // H mean absolute error of the hybrid's forecast (predE)
	nh   []float64 // H errors seen
	q    []float64 // H×3 tracked quantiles (10, 50, 90) of the hybrid's error / sh
	shF  []float64 // H mean absolute error of the final forecast (the combination)
	shFr []float64 // H mean absolute error of the final forecast over the last few buckets
	shr  []float64 // H robust version of shF (errors clipped at poolScaleClip times it)
	qF   []float64 // H×2 tracked 10/90% quantiles of the final forecast's error / ivScale
	qE   []float64 // H×2 the same for targets in a calendar event, over shE
	shE  []float64 // H mean absolute error of the final forecast on targets in a calendar event
	nE   []float64 // H such errors seen
	ivF  []float64 // P×H×2 the 10/90% bounds issued at each origin, as offsets from predF
	eta  float64

	gru  *GRU
	adam *Adam

	fc   []Quantiles // forecast from the last origin
	med1 float64     // unrounded one-step median
	acc  accuracy
}

// hybridScratch is the per-call working memory of Observe, pooled so that
// ten thousand models do not each carry buffers only used inside a call.
type hybridScratch struct {
	L, tmp, stk, grad, dout, f []float64
	hwSt                       []float64 // the fitted Holt-Winters filter's states (rerun)
	tape                       GRUTape
	exp                        [numExp]float64
	// The horizon-free medians of experts, for model medOf at origin
	// medIdx (a borrower's own; reset when the scratch is returned).
	medOf               *Hybrid
	medIdx              int64
	medShort, medSeason float64
}

var scratchPool = sync.Pool{New: func() any { return new(hybridScratch) }}

func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	return s[:n]
}

// accuracy keeps exponentially weighted absolute errors per horizon of the
// regression alone and of the final forecast, for Explain.
type accuracy struct {
	blrAE, hybAE []float64
}

// NewHybrid returns an empty model. feeds may be nil.
func NewHybrid(cfg HybridConfig, feeds *Feeds) (*Hybrid, error) {
	cfg, err := cfg.withDefaults(feeds)
	if err != nil {
		return nil, err
	}
	H := cfg.Horizon
	m := &Hybrid{cfg: cfg, W: cfg.Window, integer: true, nonneg: true}
	m.d = newDesign(cfg.Step, cfg.Window, cfg.Region, feeds)
	m.blr = NewBLR(m.d.p)
	m.blr.L = nil // the factor lives in the pooled scratch
	m.x = make([]float64, m.d.p)
	m.ys = make([]float64, m.W)
	m.wts = make([]float64, m.W)
	m.res = make([]float64, m.W)
	m.s = 1
	m.spd = max(m.d.spd, 1)
	if wk := stepsPer(cfg.Step, 7*24*time.Hour); wk > 0 && m.W >= 2*wk {
		m.wk = wk
	}
	for g := range m.gv {
		m.gv[g] = 1
	}
	m.gv[grpIntercept] = 1e8
	m.applyPrior()
	m.R = cfg.BPTT + H + 1
	m.K = numStk + len(cfg.Covariates)
	m.P = H + 1
	m.muY = make([]float64, m.R*H)
	m.sgY = make([]float64, m.R)
	m.feat = make([]float32, m.P*H*m.K)
	m.predY = make([]float64, m.P*H)
	m.predE = make([]float64, m.P*H)
	m.predF = make([]float64, m.P*H)
	m.ivF = make([]float64, 2*m.P*H)
	if cfg.Step <= 24*time.Hour && !cfg.NoYear {
		m.yr = newYearly()
	}
	if !cfg.NoPool {
		// The yearly experts where the horizon spans a week or more:
		// over a shorter one the year's change of level is a sliver and
		// they would repeat Holt-Winters and the regression.
		yearly := m.yr != nil && time.Duration(H)*cfg.Step >= 7*24*time.Hour
		m.pl = newPool(H, m.P, m.W, max(m.d.spd, 1), stepsPer(cfg.Step, 7*24*time.Hour), yearly)
		m.carry = newCarry(H, m.P)
		m.memoDay, m.memoWk = newMedMemo(H+1), newMedMemo(H+1)
		if m.pl.avail[expHW] {
			m.hw = newHoltWinters(m.pl.season)
		}
		if m.pl.avail[expHWFit] {
			m.hwf = newHoltWinters(m.pl.season)
		}
	}
	m.rw = make([]float64, H*m.K)
	m.rp = make([]float64, H*m.K*(m.K+1)/2)
	m.rb = make([]float64, H*m.K)
	// A memory of one window, and at least stackMemPerInput observations
	// per input weight (a daily series' four-week window holds 28).
	m.lam = 1 - 1/float64(max(m.W, stackMemPerInput*m.K))
	nc := len(cfg.Covariates)
	m.covMean, m.covM2, m.covNow = make([]float64, nc), make([]float64, nc), make([]float64, nc)
	nk := len(cfg.Kinds)
	m.evM, m.evP = make([]float64, H*nk*evBins), make([]float64, H*nk*evBins)
	for i := range m.evP {
		m.evP[i] = 1 / (evPriorSD * evPriorSD)
	}
	m.sh = make([]float64, H)
	m.shr = make([]float64, H)
	m.shF = make([]float64, H)
	m.shFr = make([]float64, H)
	m.qF = make([]float64, 2*H)
	m.qE = make([]float64, 2*H)
	m.shE = make([]float64, H)
	m.nE = make([]float64, H)
	for h := 0; h < H; h++ {
		m.qF[2*h], m.qF[2*h+1] = -1.6, 1.6
		m.qE[2*h], m.qE[2*h+1] = -1.6, 1.6
	}
	m.nh = make([]float64, H)
	m.q = make([]float64, 3*H)
	for h := 0; h < H; h++ {
		// Gaussian quantiles in units of the mean absolute error.
		m.q[3*h], m.q[3*h+1], m.q[3*h+2] = -1.6, 0, 1.6
	}
	m.eta = 0.05
	if !cfg.NoGRU {
		m.gru = NewGRU(gruIn, cfg.Hidden, H, cfg.Seed)
		m.adam = NewAdam(m.gru.NumParams(), cfg.LR)
	}
	// Spread the periodic work (evidence tuning, exact rebuilds) of models
	// created together over different buckets, so ten thousand series
	// started at once do not all tune in the same bucket.
	m.nextTune = int64(cfg.Seed % uint64(max(m.spd, 24)))
	m.sinceRebase = int(cfg.Seed % uint64(max(m.W/2, 1)))
	m.fc = make([]Quantiles, H)
	m.acc = accuracy{blrAE: make([]float64, H), hybAE: make([]float64, H)}
	return m, nil
}

// Config returns the effective configuration.
func (m *Hybrid) Config() HybridConfig { return m.cfg }

// NumFeatures is the regression's width.
func (m *Hybrid) NumFeatures() int { return m.d.p }

func (m *Hybrid) applyPrior() {
	for i, g := range m.d.group {
		m.blr.Prec0[i] = 1 / (m.gv[g] * m.d.decay[i])
	}
}

func (m *Hybrid) z(y float64) float64 { return (y - m.c) / m.s }

// timeOf is the start of bucket index i.
func (m *Hybrid) timeOf(i int64) time.Time {
	return m.last.Add(time.Duration(i-(m.n-1)) * m.cfg.Step)
}

// inWindow reports whether bucket i is still in the rings.
func (m *Hybrid) inWindow(i int64) bool { return i >= 0 && i <= m.n-1 && i > m.n-1-int64(m.W) }

// resAt is the stored residual of bucket i, 0 when outside the window.
func (m *Hybrid) resAt(i int64) float64 {
	if !m.inWindow(i) {
		return 0
	}
	return m.res[i%int64(m.W)]
}

// warm is the number of buckets before the regression's forecasts are
// used to train the stacker: a day, and at least as many buckets as the
// regression has features.
func (m *Hybrid) warm() int64 { return int64(max(m.spd, m.d.p)) }

// Observe feeds the value of the bucket starting at t, which must follow
// the previously observed bucket, and refreshes the forecast.
func (m *Hybrid) Observe(t time.Time, y float64) error {
	if math.IsNaN(y) || math.IsInf(y, 0) {
		return fmt.Errorf("%w: observation %v at %v", ErrBadInput, y, t)
	}
	return m.observe(t, y, obsValue)
}

// Skip advances the model over a bucket whose value is unknown (the
// controller received nothing for it): nothing is learnt from it, the
// window holds it with weight zero and the forecast moves on by a bucket.
func (m *Hybrid) Skip(t time.Time) error {
	if m.n == 0 {
		return fmt.Errorf("%w: skip before the first observation", ErrNotReady)
	}
	return m.observe(t, m.med1, obsMissing)
}

// fill feeds an estimate of a bucket that had no data (the backtest's
// interpolation across a gap of its CSV): the window, the regression and
// the experts' states take it as they would an observation, so a series
// with many gaps still has the runs of buckets its seasonal fits need,
// but no forecast is scored against it. An interpolated stretch is far
// smoother than the series, and scoring it taught the error scales and
// the interval trackers errors of nearly zero (a NAB traffic sensor with
// half its hours missing: 80% intervals covering 61%).
func (m *Hybrid) fill(t time.Time, y float64) error {
	if m.n == 0 {
		return fmt.Errorf("%w: fill before the first observation", ErrNotReady)
	}
	if math.IsNaN(y) || math.IsInf(y, 0) {
		return fmt.Errorf("%w: filled value %v at %v", ErrBadInput, y, t)
	}
	return m.observe(t, y, obsFilled)
}

// Gap implements the backtest's gapAware: a gap up to the protocol's
// season (a day) is taken by its interpolation (fill); across a longer one
// the model's own forecast carries the season (Skip), as it does in the
// controller.
func (m *Hybrid) Gap(t time.Time, filled float64, long bool) error {
	if long {
		return m.Skip(t)
	}
	return m.fill(t, filled)
}

// obsKind is how observe takes a bucket's value.
type obsKind int

const (
	obsValue   obsKind = iota // an observation
	obsFilled                 // an estimate: state only, nothing scored or learnt
	obsMissing                // unknown: weight zero in the window, nothing learnt
)

func (m *Hybrid) observe(t time.Time, y float64, how obsKind) error {
	if m.n > 0 && !t.Equal(m.last.Add(m.cfg.Step)) {
		return fmt.Errorf("%w: got %v after %v", ErrOutOfOrder, t, m.last)
	}
	missing := how == obsMissing
	if how == obsValue && (y != math.Trunc(y) || math.Abs(y) > 1<<53) {
		m.integer = false
	}
	if how == obsValue && y < 0 {
		m.nonneg = false
	}
	sc := scratchPool.Get().(*hybridScratch)
	sc.L = grow(sc.L, m.d.p*m.d.p)
	sc.tmp = grow(sc.tmp, m.W)
	sc.stk = grow(sc.stk, m.K*m.K)
	sc.f = grow(sc.f, m.K)
	sc.medOf = nil
	m.sc = sc
	defer func() {
		m.sc = nil
		sc.medOf = nil
		scratchPool.Put(sc)
	}()
	idx := m.n
	// Huber weight of the new bucket from the forecast's own one-step
	// error: a spike barely moves the regression, while after a level
	// shift the stacked forecast catches up within a few buckets and the
	// new level gets full weight again.
	wNew := 1.0
	if missing {
		wNew = 0
	} else if m.n > m.warm() && m.nu > 0 {
		if a := math.Abs(y-m.med1) / m.nu; a > huberK {
			wNew = huberK / a
		}
	}
	if idx >= int64(m.W) {
		k := idx % int64(m.W)
		m.d.fill(t.Add(-time.Duration(m.W)*m.cfg.Step), m.x)
		m.blr.Add(m.x, m.z(m.ys[k]), -m.wts[k])
	}
	m.ys[idx%int64(m.W)] = y
	m.wts[idx%int64(m.W)] = wNew
	if wNew > 0 {
		m.run++
	} else {
		m.run = 0
	}
	m.last = t
	if m.yr != nil {
		m.yr.add(t, y, !missing)
	}
	m.n++
	m.sinceRebase++
	if m.n == 1 || m.sinceRebase >= min(max(int(m.n)/2, 1), m.W/2) {
		m.rebase()
	} else {
		m.d.fill(t, m.x)
		m.blr.Add(m.x, m.z(y), wNew)
	}
	if m.n >= m.nextTune {
		m.tune()
		m.nextTune = m.n + int64(max(m.spd, 24))
	}
	if err := m.blr.SolveWith(m.sc.L); err != nil {
		return fmt.Errorf("regression at %v: %w", t, err)
	}
	floor := 1e-9 * (math.Abs(m.c) + m.s)
	m.sig = max(m.s*math.Sqrt(m.blr.Sigma2()), floor)
	m.d.fill(t, m.x)
	e := 0.0 // a missing bucket says nothing about the residual
	if !missing {
		// Huber's ψ: the residual of a down-weighted bucket enters the
		// stacker's features, the smoothed residuals and the GRU scaled
		// by its weight, so one wild bucket (a counter reset a billion
		// times the level) moves them like a bucket huberK scales off,
		// not a billion. After a level shift the weight is back to one
		// once the final forecast has caught up (a bucket or two).
		e = wNew * (y - (m.c + m.s*m.blr.Mean(m.x)))
		for k, a := range esAlpha {
			m.es[k] += a * (e - m.es[k])
		}
	}
	m.res[idx%int64(m.W)] = e
	cnt := int(min(m.n, int64(m.W)))
	tmp := m.sc.tmp[:0]
	for i := 0; i < cnt; i++ {
		if m.wts[i] > 0 {
			tmp = append(tmp, math.Abs(m.res[i]))
		}
	}
	if len(tmp) > 0 {
		// One value entered the window and one left it since the last
		// bucket, so the last median (nu undone) is a pivot a rank or two
		// from this one.
		m.nu = max(1.4826*medianNear(tmp, m.nu/1.4826), floor)
	}
	m.nu = max(m.nu, floor)
	if !missing {
		m.observeCovariates(t)
	}
	if how == obsValue {
		m.resolve(idx, y)
	}
	var gruOut []float64
	if m.gru != nil {
		learn := how == obsValue && (idx+int64(m.cfg.Seed))%gruTrainEvery == 0
		gruOut = m.trainGRU(idx, learn)
	}
	if m.hw != nil {
		m.hw.observe(idx, y, missing, m.ringAt)
	}
	if m.hwf != nil {
		m.hwf.observe(idx, y, missing, m.ringAt)
		m.refitHW(idx)
	}
	m.forecast(idx, t, gruOut)
	return nil
}

// refitHW re-estimates the fitted Holt-Winters expert's parameters on the
// window once a week (a season for weekly-season series), at a bucket of
// the week that depends on the seed, so that series created together do
// not all fit in the same bucket. A young series (window not yet full) is
// first fitted at its bucket of the season once two seasons are known; a
// series without a fit but a full window (restored from a format 9
// snapshot) waits for its bucket of the week, so an upgrade does not fit
// a week's share of series a day. It fits the longest run of observed
// buckets ending at idx (at least two seasons), read as the robust fit saw
// them (clean: a counter reset is not a level to follow).
//
// Between fits, when the window holds at least two weeks, every bucket
// re-runs the fitted filter over that run (rerun: about 5 µs at four weeks
// hourly) and takes its states, as the ETS baseline does at every origin,
// and once a season (a day) the parameters are polished from where they
// are (polish: a few dozen runs) before it. On M4's hourly series this
// took the one-step losses to the best baseline from 92 to 51 of 414; on
// windows shorter than two weeks (the short NAB traces, about 6.5 days)
// the re-run cost one-step accuracy, as the states the online filter
// carries from before such a window are worth more than a re-run over a
// few cycles, so there the online update carries the states between fits
// (BENCHMARKS "round 16").
func (m *Hybrid) refitHW(idx int64) {
	w := m.hwf
	if !w.ready() {
		return
	}
	at := idx + int64(m.cfg.Seed)
	weekly := at%int64(max(w.m, stepsPer(m.cfg.Step, 7*24*time.Hour))) == 0
	first := w.par == nil && m.n <= int64(m.W) && at%int64(w.m) == 0
	fit := weekly || first
	if !fit && (w.par == nil || time.Duration(m.W)*m.cfg.Step < hwRerunWindow) {
		return
	}
	run := int(min(m.run, m.n, int64(m.W)))
	if run < 2*w.m {
		return
	}
	y := grow(m.sc.tmp, run)
	m.sc.tmp = y
	for i := range run {
		y[i] = m.clean(idx - int64(run) + 1 + int64(i))
	}
	m.sc.hwSt = grow(m.sc.hwSt, 2+w.m)
	switch {
	case fit:
		w.refit(idx, y)
	case at%int64(w.m) == 0:
		w.polish(idx, y, m.sc.hwSt)
	default:
		w.rerun(idx, y, m.sc.hwSt)
	}
}

// clean is bucket i's value as the robust fit saw it: the value itself,
// or for a down-weighted bucket the regression's fit plus the Huberized
// residual (res holds weight × raw residual). The stacker's level
// features read it, so a spike is not carried into them for weeks.
func (m *Hybrid) clean(i int64) float64 {
	k := i % int64(m.W)
	if w := m.wts[k]; w > 0 && w < 1 {
		return m.ys[k] - m.res[k]*(1-w)/w
	}
	return m.ys[k]
}

// ringAt returns the value of bucket i from the window ring and whether it
// was observed (i within the last W buckets).
func (m *Hybrid) ringAt(i int64) (float64, bool) {
	k := i % int64(m.W)
	return m.ys[k], m.inWindow(i) && m.wts[k] > 0
}

// skipMany advances the model over n unknown buckets, the last starting
// at last. From a window's length on it does so at once: the whole window
// becomes unknown (weight zero) and the regression restarts from its
// prior, while what is learnt across windows (GRU, stacker, event effects,
// error scales) is kept.
func (m *Hybrid) skipMany(n int64, last time.Time) error {
	if m.n == 0 || n <= 0 {
		return nil
	}
	if n < int64(m.W) {
		for i := int64(1); i <= n; i++ {
			if err := m.Skip(m.last.Add(m.cfg.Step)); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range m.wts {
		m.wts[i], m.res[i] = 0, 0
	}
	m.run = 0
	m.memoDay.reset()
	m.memoWk.reset()
	m.blr.Reset()
	m.es = [3]float64{}
	m.surprise = 0
	m.bet = gateBet{}
	if m.hw != nil {
		m.hw.reset()
	}
	if m.hwf != nil {
		m.hwf.reset()
	}
	m.n += n
	m.last = last
	m.sinceRebase = m.W // rebase at the next observation
	clear(m.sgY)        // no pending forecast targets a known bucket
	return nil
}

func clip(v, c float64) float64 {
	// Comparisons, not math.Min/Max: the same result for c > 0 (NaN stays
	// NaN, a signed zero keeps its sign) at a fraction of the cost, and
	// the update calls it dozens of times per bucket.
	if v > c {
		return c
	}
	if v < -c {
		return -c
	}
	return v
}

// observeCovariates updates the running standardisation of the covariates.
func (m *Hybrid) observeCovariates(t time.Time) {
	if len(m.cfg.Covariates) == 0 || m.d.feeds == nil {
		return
	}
	m.covN++
	for j, name := range m.cfg.Covariates {
		v, ok := m.d.feeds.Covariates.At(name, m.cfg.Region, t)
		if !ok {
			v = m.covMean[j]
		}
		d := v - m.covMean[j]
		m.covMean[j] += d / m.covN
		m.covM2[j] += d * (v - m.covMean[j])
	}
}

// covZ writes the standardised covariates at t into m.covNow.
func (m *Hybrid) covZ(t time.Time) {
	for j, name := range m.cfg.Covariates {
		m.covNow[j] = 0
		if m.covN < 2 || m.d.feeds == nil {
			continue
		}
		v, ok := m.d.feeds.Covariates.At(name, m.cfg.Region, t)
		sd := math.Sqrt(m.covM2[j] / (m.covN - 1))
		if ok && sd > 0 {
			m.covNow[j] = clip((v-m.covMean[j])/sd, 10)
		}
	}
}

// rebase recomputes the standardisation of the target and the trend
// origin from the window, then rebuilds the regression's statistics
// exactly (this also wipes accumulated rounding from the sliding updates).
func (m *Hybrid) rebase() {
	m.sinceRebase = 0
	cnt := int(min(m.n, int64(m.W)))
	first := m.n - int64(cnt)
	mean, sw := 0.0, 0.0
	for i := first; i < m.n; i++ {
		v, w := m.ys[i%int64(m.W)], m.wts[i%int64(m.W)]
		mean += w * v
		sw += w
	}
	if sw > 0 { // a window of unknown buckets keeps the old scaling
		mean /= sw
		// The spread weighs squared deviations by the Huber weight
		// squared, so a down-weighted bucket adds at most its clipped
		// residual: with weight w alone a spike a billion times the level
		// (a counter reset) added w·v² ∝ |v| and inflated the scale, and
		// with it the prior's hold on the regression, for a whole window.
		sq, sw2 := 0.0, 0.0
		for i := first; i < m.n; i++ {
			d, w := m.ys[i%int64(m.W)]-mean, m.wts[i%int64(m.W)]
			sq += w * w * d * d
			sw2 += w * w
		}
		m.c = mean
		// Relative floor: the model is scale-equivariant (a series in
		// bytes and the same in petabytes give the same forecasts).
		m.s = max(math.Sqrt(sq/sw2), 1e-9*math.Abs(mean))
		if m.s == 0 {
			m.s = 1 // a constant zero window: any unit will do
		}
	}
	m.d.trendRef = m.last.Unix()
	m.blr.Reset()
	for i := first; i < m.n; i++ {
		m.d.fill(m.timeOf(i), m.x)
		m.blr.Add(m.x, m.z(m.ys[i%int64(m.W)]), m.wts[i%int64(m.W)])
	}
}

// tune picks each group's prior variance multiplier from a grid by
// maximising the regression's log evidence (coordinate ascent, one pass):
// empirical Bayes, so the amount of seasonal detail follows the data in
// the window instead of constants tuned to some data set.
func (m *Hybrid) tune() {
	grid := [...]float64{0.01, 0.1, 1, 10, 100}
	present := [numGroups]bool{}
	for _, g := range m.d.group {
		present[g] = true
	}
	for g := grpTrend; g < numGroups; g++ {
		if !present[g] {
			continue
		}
		best, bestV := math.Inf(-1), m.gv[g]
		for _, v := range grid {
			m.gv[g] = v
			m.applyPrior()
			if m.blr.SolveWith(m.sc.L) != nil {
				continue
			}
			if e := m.blr.LogEvidence(); e > best {
				best, bestV = e, v
			}
		}
		m.gv[g] = bestV
	}
	m.applyPrior()
}

// activeKinds calls fn with the index of every event kind active at t.
func (m *Hybrid) activeKinds(t time.Time, fn func(k int)) {
	if len(m.cfg.Kinds) == 0 || m.d.feeds == nil || m.d.feeds.Calendar == nil {
		return
	}
	for k := range m.cfg.Kinds {
		if m.kindActive(k, t) {
			fn(k)
		}
	}
}

// inEvent says whether t is inside an event of a kind the model learns.
func (m *Hybrid) inEvent(t time.Time) bool {
	in := false
	m.activeKinds(t, func(int) { in = true })
	return in
}

// eventAhead reports whether an event kind is active at the target time
// but was not at the origin.
func (m *Hybrid) eventAhead(origin, target time.Time) bool {
	ahead := false
	if len(m.cfg.Kinds) > 0 {
		m.activeKinds(target, func(k int) {
			if !ahead && !m.kindActive(k, origin) {
				ahead = true
			}
		})
	}
	return ahead
}

// kindActive reports whether event kind k is active at t.
func (m *Hybrid) kindActive(k int, t time.Time) bool {
	kind := m.cfg.Kinds[k]
	if kind == KindHoliday {
		return m.d.feeds.Calendar.Holiday(t, m.cfg.Region)
	}
	return m.d.feeds.Calendar.Active(t, m.cfg.Region, kind)
}

// resolve scores the forecasts whose target is bucket idx and updates the
// stacker (ordinary buckets) or the event effects (event buckets), the
// error scales and the quantile trackers.
func (m *Hybrid) resolve(idx int64, y float64) {
	H, K := m.cfg.Horizon, m.K
	tt := m.timeOf(idx)
	var active [8]int
	na := 0
	m.activeKinds(tt, func(k int) {
		if na < len(active) {
			active[na] = k
			na++
		}
	})
	for h := 1; h <= H; h++ {
		o := idx - int64(h)
		if o < m.warm() {
			// The regression's first forecasts, made from a handful of
			// points, would teach the stacker and the error scales noise.
			continue
		}
		ro := int(o % int64(m.R))
		sg := m.sgY[ro]
		if sg == 0 {
			continue
		}
		mu := m.muY[ro*H+h-1]
		po := int(o % int64(m.P))
		base := m.predY[po*H+h-1]
		if na == 0 {
			if !m.cfg.NoStack {
				f := m.sc.f
				for i, v := range m.feat[(po*H+h-1)*K : (po*H+h)*K] {
					f[i] = float64(v)
				}
				m.stackUpdate(h-1, f, clip((y-mu)/sg, bigClip))
			}
		} else if base > 0 {
			// Conjugate normal update of each active kind's relative
			// effect at this horizon and time of day. The buckets of one
			// event are far from independent: each counts as evBins/spd
			// of an observation, so a day weighs like one observation.
			d := clip(y/base-1, 3)
			noise := max(m.sh[h-1], sg) / base
			prec := 1 / (noise * noise * max(float64(m.spd)/evBins, 1) * float64(na))
			for _, k := range active[:na] {
				i := m.evIndex(h, k, tt)
				m.evM[i] = (m.evP[i]*m.evM[i] + prec*d) / (m.evP[i] + prec)
				m.evP[i] += prec
			}
		}
		pred := m.predE[po*H+h-1]
		sc := m.sh[h-1]
		q := m.q[3*(h-1) : 3*h]
		trackQuantiles(q, (y-pred)/sc, m.eta)
		// The error scale follows the recent mean absolute error: a
		// running mean at first, then a memory of a few days so the
		// interval width tracks regimes.
		rate := followScale(&m.sh[h-1], &m.nh[h-1], math.Abs(y-pred))
		fin := pred + sc*q[1]
		if m.pl != nil {
			used := m.pl.used(h, po)
			if used {
				fin = m.resolvePool(h, po, y, rate)
			} else if h == 1 {
				m.surprise = 0 // an event's first hour is no level shift
			}
			// The final interval's trackers: an event target's (issued by
			// either path) or an ordinary one's.
			if na > 0 {
				e := y - m.predF[po*H+h-1]
				m.trackInterval(m.qE[2*(h-1):2*h], h, po, e)
				followScale(&m.shE[h-1], &m.nE[h-1], math.Abs(e))
			} else if used {
				m.trackInterval(m.qF[2*(h-1):2*h], h, po, y-fin)
			}
		}
		const wAcc = 1.0 / 168
		m.acc.blrAE[h-1] += wAcc * (math.Abs(y-mu) - m.acc.blrAE[h-1])
		m.acc.hybAE[h-1] += wAcc * (math.Abs(y-fin) - m.acc.hybAE[h-1])
	}
}

// trackQuantiles moves the tracked quantiles q (levels 10/50/90%, or
// 10/90% when len(q) is 2) of a standardised error u by one
// stochastic-approximation step of size eta, keeping them ordered.
func trackQuantiles(q []float64, u, eta float64) {
	taus := [3]float64{0.1, 0.5, 0.9}
	if len(q) == 2 {
		taus[1] = 0.9
	}
	for k := range q {
		if u < q[k] {
			q[k] -= eta * (1 - taus[k])
		} else {
			q[k] += eta * taus[k]
		}
	}
	for k := 1; k < len(q); k++ {
		q[k] = max(q[k], q[k-1])
	}
}

// trackInterval moves the final interval's quantile trackers at horizon h
// by whether the bounds issued at origin slot po held the error e: the
// adaptive conformal update (Gibbs & Candès 2021), whose long-run miss
// rate is the nominal one whatever the scale did meanwhile. Until round
// 13 the trackers judged e in the interval scale of the bucket it
// arrived in; at h steps that scale has already absorbed the errors of
// the h−1 origins before, which share most of this error's shocks, so a
// large error looked smaller than the interval it missed and the
// 12-step intervals covered 0.76 on average on M4's hourly series
// (BENCHMARKS "round 13").
func (m *Hybrid) trackInterval(q []float64, h, po int, e float64) {
	j := 2 * (po*m.cfg.Horizon + h - 1)
	eta := ivEta0 / math.Pow(float64(h), ivDelayExp)
	for k, tau := range [2]float64{0.1, 0.9} {
		if e < m.ivF[j+k] {
			q[k] -= eta * (1 - tau)
		} else {
			q[k] += eta * tau
		}
	}
	q[1] = max(q[1], q[0])
}

// issue returns the interval c + iv·q of the final forecast c at horizon h
// from origin slot po, and keeps its bounds for trackInterval.
func (m *Hybrid) issue(q []float64, h, po int, c, iv float64) Quantiles {
	j := 2 * (po*m.cfg.Horizon + h - 1)
	m.ivF[j], m.ivF[j+1] = iv*q[0], iv*q[1]
	return Quantiles{Q10: min(c+iv*q[0], c), Q50: c, Q90: max(c+iv*q[1], c)}
}

// eventInterval is the interval of a target inside a calendar event: the
// event trackers' (qE) over the event targets' own error scale (shE),
// both learnt from event targets only. An event day's error is not an
// ordinary day's: how far this Thanksgiving departs from the learnt
// effect of holidays is news no error scale of ordinary buckets holds.
// With the ordinary trackers NYC taxi's event days were covered 71% at
// one step and 48% at twelve (round 13); with their own trackers over the
// ordinary scale 78% and 66%, the trackers having to stretch the ordinary
// scale to the events' (a few misses per event day at twelve steps' slow
// step); over their own scale 80% and 80% (BENCHMARKS "round 14"). Until
// an event target has resolved at h the ordinary scale stands in, and sc
// before the combination has one.
func (m *Hybrid) eventInterval(h, po int, c, sc float64) Quantiles {
	iv := m.shE[h-1]
	if m.nE[h-1] == 0 {
		if iv = m.ivScale(h); iv == 0 {
			iv = sc
		}
	}
	return m.issue(m.qE[2*(h-1):2*h], h, po, c, iv)
}

// resolvePool scores the combination's forecasts of bucket y made at
// origin slot po for horizon h and updates its error scales (rate: their
// step); returns the final point forecast that was made (resolve moves
// the interval trackers).
func (m *Hybrid) resolvePool(h, po int, y, rate float64) float64 {
	H := m.cfg.Horizon
	fin := m.predF[po*H+h-1]
	if h == 1 {
		// A one-step error of the hybrid far beyond the usual is a spike
		// or a level shift; expReanchor bets on the shift, and the
		// weights learn from the series' history which bet pays.
		m.surprise = 0
		if e := y - float64(m.pl.fx[po*H*numExp+expHybrid]); m.nh[0] > 16 && math.Abs(e) > surpriseK*m.shr[0] {
			m.surprise = e
		}
	}
	if h > 1 {
		m.resolveCarry(h, po, y)
	}
	m.pl.update(h, po, y, m.shr[h-1], m.integer)
	// The error scale is positive once a forecast has missed; a series
	// that never changed has no scale to weigh the bet's outcome in.
	if b := m.bet; h == 1 && b.pending && m.shr[0] > 0 {
		scoreBet(m.gate[:], b.bin, (math.Abs(y-b.c)-math.Abs(y-b.last))/m.shr[0])
	}
	if h == 1 {
		m.bet = gateBet{}
	}
	ae := math.Abs(y - fin)
	ac := clipErr(ae, m.ivScale(h))
	m.shF[h-1] += rate * (ac - m.shF[h-1])
	m.shFr[h-1] += max(rate, ivRecentRate) * (ac - m.shFr[h-1])
	// The losses are scaled by a robust version (errors clipped at a few
	// times it): after one spike every later difference between the
	// experts must not look small.
	if m.nh[h-1] <= 16 {
		m.shr[h-1] = m.shF[h-1]
	} else {
		m.shr[h-1] += rate * (min(ae, poolScaleClip*m.shr[h-1]) - m.shr[h-1])
	}
	return fin
}

// shiftGate decides the final one-step forecast after a surprise, given
// the combination's forecast c and the last value. The combination learns
// from all buckets, so right after the first level shift in weeks it still
// weighs the experts that were right before it and follows the new level
// over a few buckets (NAB rds_cpu: 7.8 forecast for 14.9 after the jump,
// 48 error scales, the backtest's largest one-step cost but for the jump
// itself). One value cannot tell a spike from a shift, so the gate learns
// which bet pays on this series: after each surprise it keeps both c and
// the last value (the level the surprise showed, kept), and when the
// target arrives adds the last value's advantage in absolute error, in
// robust scales, to a discounted sum (gateLam) for the surprise's size
// (bins of 4–8, 8–16, … scales), and how many bets were made and lost.
// It bets on the shift unless the evidence of the surprises at least a
// quarter as large (this bin and up, and the two below) says the bet
// loses, in total or more often than it wins; so with no such history it
// bets on it. On a spiky series the first spikes teach it otherwise; on a
// series that shifts once there is nothing to learn from, and that bet is
// the one that pays. Sizes matter: Gaussian noise's surprises of 4–6
// scales revert and say little about a jump of a hundred. The advantage
// is weighed (a burst's end is a cheap win for the shift, a one-bucket
// spike an expensive loss), and counted too: where bursts of one size
// last one bucket or several alike (NAB disk_write), the total swings
// around zero and a gate following its sign loses a whole burst on every
// wrong bet.
func (m *Hybrid) shiftGate(idx int64, c, last float64) float64 {
	m.bet = gateBet{}
	if m.surprise == 0 {
		return c
	}
	bin := gateBins - 1 // a surprise on a series that never missed is as large as they come
	if z := math.Abs(m.surprise) / m.shr[0]; z < math.Exp2(gateBins+1) {
		bin = max(int(math.Log2(z))-2, 0)
	}
	m.bet = gateBet{pending: true, c: c, last: last, bin: bin}
	if betPays(m.gate[:], bin) {
		m.carry.at, m.carry.bin = idx+1, bin
		return last
	}
	return c
}

// betPays reports whether the evidence ev (per surprise size bin) lets a
// bet after a surprise of size bin be made: the evidence of surprises at
// least a quarter as large (bin and up, and gateBelow bins below) neither
// says the bet loses in total nor that it lost more often than it won.
// With no evidence the bet is made.
func betPays(ev []gateEvidence, bin int) bool {
	var sum gateEvidence
	for _, g := range ev[max(bin-gateBelow, 0):] {
		sum.adv, sum.n, sum.lost = sum.adv+g.adv, sum.n+g.n, sum.lost+g.lost
	}
	return sum.adv >= 0 && sum.lost <= sum.n/2
}

// scoreBet discounts the evidence ev of every size (gateLam per bet) and
// adds a bet's advantage adv (in error scales; negative: it lost) to bin's.
func scoreBet(ev []gateEvidence, bin int, adv float64) {
	for k := range ev {
		g := &ev[k]
		g.adv, g.n, g.lost = gateLam*g.adv, gateLam*g.n, gateLam*g.lost
	}
	g := &ev[bin]
	g.adv += adv
	g.n++
	if adv < 0 {
		g.lost++
	}
}

// carry is what carryShift keeps per series.
type carry struct {
	at   int64          // one past the origin of the last one-step bet on a shift (0: none yet)
	bin  int            // that bet's surprise size bin (as the gate's)
	c    []float32      // P×H the combination's forecast per pending origin, before any carry (single precision, as the experts' in the pool)
	bet  []int8         // P×H the size bin of the carry considered there, −1 for none (scored when the target arrives)
	loss []float64      // H×2 discounted h-step losses: the last value's, the combination's
	n    []float64      // H h-step losses resolved
	ev   []gateEvidence // H×gateBins what the carries considered would have gained, per surprise size (as the gate's)
}

func newCarry(H, P int) carry {
	k := carry{c: make([]float32, P*H), bet: make([]int8, P*H), loss: make([]float64, 2*H),
		n: make([]float64, H), ev: make([]gateEvidence, H*gateBins)}
	for i := range k.bet {
		k.bet[i] = -1
	}
	return k
}

// carryShift decides the final h-step forecast (h ≥ 2) at origin idx,
// slot po, given the combination's forecast c and the last value. The
// shift gate bets on a level shift one step ahead, but the h-step weights
// hear of the new level h−1 buckets later and learn at h^−1.5 the one-step
// rate, so after a shift the longer horizons kept forecasting the old
// level for about h origins: on random-walk-like gauges that drop (NAB
// grok_asg: 34 → 1.3) those origins alone put the hybrid 26% behind naive
// at twelve steps. For h−1 origins after a bet on a shift, horizon h
// carries the bet (its forecast is the last value, the level the surprise
// showed) where four things hold:
//   - the series is one whose last value is its level: the last value's
//     discounted h-step loss is at most carryTol times the combination's
//     (on a seasonal or mean-reverting series it is far worse, and a
//     shift's h-step forecast is better left to the combination);
//   - that comparison rests on at least carryMature seasons of h-step
//     losses (a short window's first days decide nothing);
//   - the carry moves the forecast by more than the combination's h-step
//     error scale: a carry that barely moves it is no bet (a gauge
//     resting at zero, where every bucket surprises a near-zero scale,
//     would fill the evidence with trivial wins that then let a burst's
//     start be carried);
//   - the carries considered before at this horizon after surprises at
//     least a quarter as large have not lost, by the gate's own rule and
//     bins: their discounted advantage is not negative and they lost at
//     most half the time. Every considered carry is scored, taken or
//     not, so a refusal can be revised. Sizes matter here too: on a
//     random walk, noise's surprises of 4–8 scales are carried or not
//     at a coin's odds, which says nothing of a drop of sixty.
//
// With no carry considered yet the evidence is empty and the carry is
// taken: on a series that shifts once there is nothing else to learn from
// (and on one whose first large surprise is a spike the bet costs that
// origin, as the gate's does).
func (m *Hybrid) carryShift(idx int64, h, po int, c, last float64) float64 {
	H := m.cfg.Horizon
	k := &m.carry
	i := po*H + h - 1
	k.c[i], k.bet[i] = float32(c), -1
	if m.noCarry || k.at == 0 || idx-(k.at-1) >= int64(h) {
		return c
	}
	if k.n[h-1] < carryMature*float64(m.pl.season) || k.loss[2*(h-1)] > carryTol*k.loss[2*(h-1)+1] {
		return c
	}
	if !(math.Abs(last-c) > m.carryScale(h)) {
		return c
	}
	k.bet[i] = int8(k.bin)
	if !betPays(k.ev[(h-1)*gateBins:h*gateBins], k.bin) {
		return c
	}
	return last
}

// carryScale is the scale of the carry's losses at horizon h: the
// combination's mean absolute h-step error, or its robust scale where that
// is larger. The robust scale alone (the combination's own) nears zero on
// a series that is zero most of the time, and every deviation from zero
// would then weigh like a burst.
func (m *Hybrid) carryScale(h int) float64 { return max(m.shr[h-1], m.shF[h-1]) }

// resolveCarry scores the last value and the combination at horizon
// h ≥ 2 on the target y of origin slot po, and the carry if it was
// considered there; the losses are in carryScale, before it learns
// from y.
func (m *Hybrid) resolveCarry(h, po int, y float64) {
	sc := m.carryScale(h)
	if !(sc > 0) {
		return
	}
	H := m.cfg.Horizon
	k := &m.carry
	i := po*H + h - 1
	c, p := float64(k.c[i]), float64(m.pl.fx[i*numExp+expNaive])
	lp, lc := min(math.Abs(y-p)/sc, poolLossClip), min(math.Abs(y-c)/sc, poolLossClip)
	if math.IsNaN(lp) || math.IsNaN(lc) {
		return
	}
	lam := 1 - 1/float64(m.W) // a memory of a window, as the combination's
	k.loss[2*(h-1)] = lam*k.loss[2*(h-1)] + lp
	k.loss[2*(h-1)+1] = lam*k.loss[2*(h-1)+1] + lc
	k.n[h-1]++
	if k.bet[i] >= 0 {
		scoreBet(k.ev[(h-1)*gateBins:h*gateBins], int(k.bet[i]), lc-lp)
	}
}

// gateEvidence is what the shift gate learnt from the surprises of one
// size: the discounted advantage of betting on the shift (robust scales),
// and the discounted number of bets and of those lost.
type gateEvidence struct{ adv, n, lost float64 }

// gateBet is a one-step bet awaiting its value: the combination's
// forecast c, the last value, and the surprise's size bin.
type gateBet struct {
	pending bool
	c, last float64
	bin     int
}

// stackUpdate adds one (inputs, target) pair to the exponentially weighted,
// Huber-weighted ridge regression of horizon index h and re-solves it.
func (m *Hybrid) stackUpdate(h int, f []float64, target float64) {
	K := m.K
	A := m.rp[h*K*(K+1)/2 : (h+1)*K*(K+1)/2]
	b := m.rb[h*K : (h+1)*K]
	w := m.rw[h*K : (h+1)*K]
	r := target
	for i := 0; i < K; i++ {
		r -= w[i] * f[i]
	}
	om := 1.0
	if a := math.Abs(r); a > huberK {
		om = huberK / a
	}
	lam := m.lam
	for i := 0; i < K; i++ {
		omf := om * f[i]
		b[i] = lam*b[i] + omf*target
		row := A[i*(i+1)/2 : i*(i+1)/2+i+1]
		fr := f[:len(row)]
		for j, x := range fr {
			row[j] = lam*row[j] + omf*x
		}
	}
	// The weights move slowly: re-solving every few buckets is enough and
	// saves most of the stacker's cost (the Gram matrix above is exact) —
	// except after a surprise (a level shift must be followed at once).
	if om == 1 && (m.n+int64(h))%stackSolveEvery != 0 {
		return
	}
	L := m.sc.stk
	for i := 0; i < K; i++ {
		copy(L[i*K:i*K+i+1], A[i*(i+1)/2:])
		L[i*K+i] += stackRidge
		if i >= numStk {
			// Weather effects get a quarter window's worth of prior
			// evidence that they are nil: a covariate must keep showing
			// its effect for weeks before it moves the forecast.
			L[i*K+i] += float64(m.W) / 4
		}
	}
	if !cholSolve(L, K, b, w) {
		return
	}
}

// cholSolve solves (L Lᵀ) w = b in place after factorising the lower
// triangle of L (which it overwrites); false if not positive definite.
func cholSolve(L []float64, K int, b, w []float64) bool {
	// Rows as slices of their first j+1 entries, so the inner loops run
	// without bounds checks; the order of every sum is the textbook one.
	for j := 0; j < K; j++ {
		Lj := L[j*K : j*K+j+1]
		rj := Lj[:j]
		d := Lj[j]
		for _, x := range rj {
			d -= x * x
		}
		if d <= 0 {
			return false
		}
		d = math.Sqrt(d)
		Lj[j] = d
		for i := j + 1; i < K; i++ {
			Li := L[i*K : i*K+j+1]
			v := Li[j]
			ri := Li[:j]
			rj := rj[:len(ri)]
			for k, x := range ri {
				v -= x * rj[k]
			}
			Li[j] = v / d
		}
	}
	w = w[:K]
	for i := range w {
		Li := L[i*K : i*K+i+1]
		v := b[i]
		wi := w[:i]
		for k, x := range Li[:len(wi)] {
			v -= x * wi[k]
		}
		w[i] = v / Li[i]
	}
	for i := K - 1; i >= 0; i-- {
		v := w[i]
		for k := i + 1; k < K; k++ {
			v -= L[k*K+i] * w[k]
		}
		w[i] = v / L[i*K+i]
	}
	return true
}

// gruInput writes the GRU input of bucket index i.
func (m *Hybrid) gruInput(i int64, in []float64) {
	in[0] = clip(m.resAt(i)/m.nu, clipNorm)
	t := m.timeOf(i)
	if m.d.spd > 1 {
		ph := float64(((t.Unix()%86400)+86400)%86400) / 86400
		in[1] = math.Sin(2 * math.Pi * ph)
		in[2] = math.Cos(2 * math.Pi * ph)
	} else {
		in[1], in[2] = 0, 0
	}
	in[3] = 0
	if wd, hol := m.d.dayType(t); hol || wd == time.Saturday || wd == time.Sunday {
		in[3] = 1
	}
}

// trainGRU runs the network over the last BPTT buckets, takes one Adam
// step on the regression errors it can already see (what the seasonal
// model leaves), and returns the network's per-horizon prediction at the
// newest bucket (made with the weights before the step).
func (m *Hybrid) trainGRU(idx int64, learn bool) []float64 {
	H := m.cfg.Horizon
	L := int(min(int64(m.cfg.BPTT), idx+1))
	if L < 2 {
		return nil
	}
	g := m.gru
	tape := &m.sc.tape
	g.Prepare(tape, L)
	start := idx - int64(L) + 1
	for k := 0; k < L; k++ {
		m.gruInput(start+int64(k), tape.Input(k, gruIn))
	}
	if !learn {
		g.ForwardLast(tape)
		return tape.Output(L-1, H)
	}
	g.Forward(tape)
	grad := grow(m.sc.grad, g.NumParams())
	m.sc.grad = grad
	clear(grad)
	dout := grow(m.sc.dout, L*H)
	m.sc.dout = dout
	clear(dout)
	cnt := 0
	for k := 0; k < L; k++ {
		o := start + int64(k)
		ro := int(o % int64(m.R))
		sg := m.sgY[ro]
		if sg == 0 || o < m.warm() {
			continue
		}
		out := tape.Output(k, H)
		for h := 1; h <= H && o+int64(h) <= idx; h++ {
			if m.wts[(o+int64(h))%int64(m.W)] == 0 {
				continue // an unknown bucket
			}
			y := m.ys[(o+int64(h))%int64(m.W)]
			target := clip((y-m.muY[ro*H+h-1])/sg, clipNorm)
			// Huber loss (delta 1): robust to the spikes of access counts.
			dout[k*H+h-1] = clip(out[h-1]-target, 1)
			cnt++
		}
	}
	if cnt > 0 {
		for i := range dout {
			dout[i] /= float64(cnt)
		}
		g.Backward(tape, dout, grad)
		m.adam.Step(g.P, grad)
	}
	return tape.Output(L-1, H)
}

// forecast computes the forecast from origin idx (bucket starting at t).
func (m *Hybrid) forecast(idx int64, t time.Time, gruOut []float64) {
	H, K := m.cfg.Horizon, m.K
	ro := int(idx % int64(m.R))
	po := int(idx % int64(m.P))
	// Stacker inputs and targets are residuals over their robust scale, so
	// a spike in the window does not shrink every other input to nothing.
	nu := m.nu
	m.sgY[ro] = nu
	nr := func(v float64) float64 { return clip(v/nu, bigClip) }
	weeks := 0
	if m.wk > 0 {
		weeks = (m.W - 1) / m.wk
	}
	// Relative level of the last day and quarter day against the
	// regression's in-sample fit.
	rho := func(k int64) float64 {
		k = min(k, idx+1, int64(m.W))
		sy, sf := 0.0, 0.0
		for i := idx - k + 1; i <= idx; i++ {
			v := m.clean(i)
			sy += v
			sf += v - m.res[i%int64(m.W)]
		}
		if math.Abs(sf) <= 1e-12*math.Abs(sy) {
			return 0
		}
		return clip(sy/sf-1, 10)
	}
	rho24, rho6 := rho(int64(m.spd)), rho(max(int64(m.spd)/4, 1))
	stack := !m.cfg.NoStack && m.n > m.warm()
	// The yearly features depend on the target's day only (the origin is
	// fixed here): sub-daily horizons share one or two days.
	yrDay := int64(math.MinInt64)
	var yrDelta, yrAnom float64
	var yrDeltaOK, yrAnomOK bool
	for h := 1; h <= H; h++ {
		th := t.Add(time.Duration(h) * m.cfg.Step)
		m.d.fill(th, m.x)
		// The trend fits the window but is not extrapolated: forecasts
		// hold the level reached at the origin (a damped trend with no
		// memory; a 28-point window's slope carried twelve days ahead
		// cost the daily series more than it bought anywhere).
		m.x[m.d.cTrend] = float64(t.Unix()-m.d.trendRef) / m.d.trendScale
		mu := m.c + m.s*m.blr.Mean(m.x)
		m.muY[ro*H+h-1] = mu
		m.x[m.d.cTrend] -= 0.5 // the window's middle
		muMid := m.c + m.s*m.blr.Mean(m.x)
		f := m.sc.f
		clear(f)
		f[stkBias] = 1
		f[stkLast] = nr(m.res[idx%int64(m.W)])
		f[stkES5] = nr(m.es[0])
		f[stkES2] = nr(m.es[1])
		f[stkES05] = nr(m.es[2])
		if gruOut != nil {
			f[stkGRU] = gruOut[h-1]
		}
		target := idx + int64(h)
		f[stkYday] = nr(m.resAt(target - int64(m.spd)))
		if m.wk > 0 {
			f[stkWk1] = nr(m.resAt(target - int64(m.wk)))
			sr, sy, k := 0.0, 0.0, 0
			for w := 1; w <= weeks; w++ {
				if i := target - int64(w*m.wk); m.inWindow(i) {
					sr += m.res[i%int64(m.W)]
					sy += m.clean(i)
					k++
				}
			}
			if k > 0 {
				f[stkWkM] = nr(sr / float64(k))
				f[stkP4] = nr(sy/float64(k) - mu)
			}
		}
		if m.yr != nil {
			if d := dayOf(th); d != yrDay {
				yrDay = d
				yrDelta, yrDeltaOK = m.yr.delta(t, th)
				yrAnom, yrAnomOK = m.yr.anomaly(th)
			}
			if yrDeltaOK {
				f[stkYear] = nr(yrDelta)
			}
			if yrAnomOK {
				f[stkYearDay] = nr(yrAnom)
			}
		}
		f[stkTrend] = nr(muMid - mu)
		f[stkRho24] = clip(rho24*mu/nu, bigClip)
		f[stkRho6] = clip(rho6*mu/nu, bigClip)
		if len(m.cfg.Covariates) > 0 {
			m.covZ(th)
			// Scaled so a one-SD change moves the forecast by w·ν at the
			// window's mean level and in proportion elsewhere; the ridge
			// then means the same on every series.
			lvl := math.Abs(m.c) + nu
			for j, z := range m.covNow {
				f[numStk+j] = clip(z*mu/lvl, bigClip)
			}
		}
		corr := 0.0
		w := m.rw[(h-1)*K : h*K]
		stored := m.feat[(po*H+h-1)*K : (po*H+h)*K]
		for i := range f {
			stored[i] = float32(f[i])
			if stack {
				corr += w[i] * float64(stored[i]) // the value the stacker will learn from
			}
		}
		base := mu + nu*corr
		m.predY[po*H+h-1] = base
		pred := base
		if len(m.cfg.Kinds) > 0 && base > 0 {
			eff := 0.0
			m.activeKinds(th, func(k int) { eff += m.evM[m.evIndex(h, k, th)] })
			pred = base * max(1+eff, 0)
		}
		m.predE[po*H+h-1] = pred
		if m.sh[h-1] == 0 {
			m.sh[h-1] = 0.8 * max(m.sig, nu) // a Gaussian's mean absolute deviation
		}
		sc := m.sh[h-1]
		q := m.q[3*(h-1) : 3*h]
		fq := Quantiles{Q10: pred + sc*q[0], Q50: pred + sc*q[1], Q90: pred + sc*q[2]}
		m.predF[po*H+h-1] = fq.Q50
		if m.pl != nil && m.eventAhead(t, th) {
			// A target in an event that has not begun at the origin: the
			// other experts lack the hybrid's learnt event effect, so
			// they get it (scaled by the same relative effect) and the
			// combination forecasts with its current weights, but the
			// target teaches the weights nothing (skip): recent accuracy
			// on ordinary buckets cannot weigh knowledge only the
			// calendar has. The interval is the event trackers'.
			if base > 0 {
				f := *m.experts(idx, h, fq.Q50, pred, mu)
				r := pred / base
				for k := range f {
					if k != expHybrid && k != expReanchor {
						f[k] *= r
					}
				}
				m.predF[po*H+h-1] = m.pl.combine(h, po, &f, m.shr[h-1], m.integer)
			}
			fq = m.eventInterval(h, po, m.predF[po*H+h-1], sc)
			m.pl.skip(h, po)
			if h == 1 {
				m.bet = gateBet{}
			}
		} else if m.pl != nil {
			// The final forecast is the combination's; its intervals come
			// from its own calibrated error quantiles (once an event is
			// under way, the recent values show its level too).
			ex := m.experts(idx, h, fq.Q50, pred, mu)
			c := m.pl.combine(h, po, ex, m.shr[h-1], m.integer)
			if h == 1 {
				c = m.shiftGate(idx, c, ex[expNaive])
			} else {
				c = m.carryShift(idx, h, po, c, ex[expNaive])
			}
			m.predF[po*H+h-1] = c
			if m.shF[h-1] == 0 {
				m.shF[h-1], m.shr[h-1], m.shFr[h-1] = sc, sc, sc
			}
			if m.inEvent(th) {
				fq = m.eventInterval(h, po, c, sc)
			} else {
				fq = m.issue(m.qF[2*(h-1):2*h], h, po, c, m.ivScale(h))
			}
		}
		if h == 1 {
			m.med1 = fq.Q50
		}
		if m.integer {
			// Counts: the quantiles of an integer variable are integers.
			// Rounding the bounds inwards changes no coverage; the median
			// goes to the nearest integer.
			fq = Quantiles{Q10: math.Ceil(fq.Q10), Q50: math.Round(fq.Q50), Q90: math.Floor(fq.Q90)}
			fq.Q90 = max(fq.Q90, fq.Q50)
			fq.Q10 = min(fq.Q10, fq.Q50)
		}
		if m.nonneg {
			// A series never below zero (access counts, bytes) has no
			// negative quantiles: a quantile below zero is zero.
			fq = Quantiles{Q10: max(fq.Q10, 0), Q50: max(fq.Q50, 0), Q90: max(fq.Q90, 0)}
		}
		m.fc[h-1] = fq
	}
}

// Forecast returns the quantile forecast for the Horizon buckets after
// the last observed one (valid after the first Observe).
func (m *Hybrid) Forecast() []Quantiles { return m.fc }

// Observed is the number of buckets seen.
func (m *Hybrid) Observed() int64 { return m.n }

// Last is the start of the last observed bucket.
func (m *Hybrid) Last() time.Time { return m.last }

// median returns the median of v, reordering v (quickselect).
func median(v []float64) float64 {
	n := len(v)
	if n == 0 {
		return 0
	}
	k := n / 2
	lo, hi := 0, n-1
	for lo < hi {
		p := v[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return v[k]
		}
	}
	return v[k]
}

// countRun counts run from the weights ring: the buckets up to the newest
// with weight > 0 in a row, at most the window.
func (m *Hybrid) countRun() int64 {
	var run int64
	for run < min(m.n, int64(m.W)) && m.wts[(m.n-1-run)%int64(m.W)] > 0 {
		run++
	}
	return run
}

// medianNear is median(v), the element of rank len(v)/2, found from
// guess, a value believed to be a few ranks from it: one pass counts the
// values below and equal to guess and, when the median is not guess
// itself, a second keeps the few values between them. Far guesses and
// NaNs go to median. Reorders v only when it falls back.
func medianNear(v []float64, guess float64) float64 {
	const near = 8
	n := len(v)
	if n == 0 {
		return 0
	}
	k := n / 2
	below, equal := 0, 0
	for _, x := range v {
		switch {
		case x < guess:
			below++
		case x == guess:
			equal++
		case x != x:
			return median(v)
		}
	}
	var keep [near]float64 // the r values nearest guess on the median's side, nearest first
	switch {
	case k >= below && k < below+equal:
		return guess
	case k < below:
		// The median is the r-th largest value below guess.
		r := below - k
		if r > near {
			return median(v)
		}
		m := 0
		for _, x := range v {
			if x >= guess || (m == r && x <= keep[r-1]) {
				continue
			}
			i := min(m, r-1)
			for ; i > 0 && keep[i-1] < x; i-- {
				keep[i] = keep[i-1]
			}
			keep[i] = x
			m = min(m+1, r)
		}
		return keep[r-1]
	default:
		// The median is the r-th smallest value above guess.
		r := k - below - equal + 1
		if r > near {
			return median(v)
		}
		m := 0
		for _, x := range v {
			if x <= guess || (m == r && x >= keep[r-1]) {
				continue
			}
			i := min(m, r-1)
			for ; i > 0 && keep[i-1] > x; i-- {
				keep[i] = keep[i-1]
			}
			keep[i] = x
			m = min(m+1, r)
		}
		return keep[r-1]
	}
}

// followScale moves the mean absolute error s by one more error ae (the
// nth, clipped by clipErr): a running mean at first, then a memory of 64
// errors, so an interval's width tracks regimes. Returns the step taken.
func followScale(s, n *float64, ae float64) float64 {
	*n++
	rate := max(1.0/64, 1 / *n)
	*s += rate * (clipErr(ae, *s) - *s)
	return rate
}

// clipErr bounds an absolute error at errAbsurd times the scale ref it
// is about to update. Unclipped, one bucket a hundred million times the
// level (a counter reset read as a delta) set the intervals 10⁷ wide for
// a week, and the hybrid's median tracker's ±1% step times that scale
// swung its point forecast by ±4·10⁵ every other bucket on a series of
// level 10. Heavy tails pass: NAB network_in's spikes, 30 times its
// level, are a few hundred scales, and clipping them any lower moved
// its interval coverage (BENCHMARKS "round 10").
func clipErr(ae, ref float64) float64 {
	if ref > 0 {
		return min(ae, errAbsurd*ref)
	}
	return ae
}

// ivScale is the error scale of the final forecast's intervals at horizon
// h: the recent mean absolute error, capped at ivRecentCap times the
// mean over the last few buckets, so that a transient (one spike, or the
// turbulent days before a level shift) widens the intervals only while it
// is recent instead of for the scale's whole memory.
func (m *Hybrid) ivScale(h int) float64 {
	s := m.shF[h-1]
	if r := m.shFr[h-1]; r > 0 {
		s = min(s, ivRecentCap*r)
	}
	return s
}
