package forecast

import (
	"math"
	"time"
)

// Experts of the forecast combination (see doc.go, "Combination"). The
// hybrid and its regression are the model's own forecasts; the others are
// the protocol's simple rules, which win for a while after a level shift,
// on flat or spiky series and where the window is too short to learn a
// profile.
const (
	expHybrid    = iota // the hybrid's calibrated median
	expReg              // the Bayesian regression alone
	expNaive            // the last value
	expSDay             // the value a day before the target (sub-daily buckets)
	expSWeek            // the value a week before the target (window of a week or more)
	expMedShort         // median of the last three values: a level one spike cannot move
	expMedSeason        // median of the last season (a day; a week for daily buckets)
	expReanchor         // the hybrid shifted by its last one-step error when that was a surprise
	expSWeekMed         // the median of the values at the target's time of week in the weeks of the window
	expSDayMed          // the median of the values at the target's time of day over the last week
	expHW               // online robust Holt-Winters (holtwinters.go)
	expPersist          // the regression's forecast plus the origin's residual, undamped (h > 1)
	// Yearly experts: an expert that carries the origin's level forward,
	// plus the yearly memory's change of level from the origin's day to
	// the target's day (yearly.go). Asleep until a year has been seen.
	expHWYear  // Holt-Winters
	expRegYear // the regression
	// Holt-Winters with its smoothing parameters fitted to the window
	// once a week (holtWinters.refit), asleep until the first fit: on
	// smooth series a fitted ETS is the best one-step rule there is, and
	// expHW's fixed, slow parameters are not it.
	expHWFit
	numExp
)

// numExpV9 is the expert count of snapshot formats 8 and 9 (before
// expHWFit).
const numExpV9 = expHWFit

// expNames name the experts (test messages, debugging).
var expNames = [numExp]string{"hybrid", "regression", "naive", "snaive_day", "snaive_week",
	"median_3", "median_season", "hybrid_reanchored", "snaive_week_median", "snaive_day_median",
	"holt_winters", "regression_persistent", "holt_winters_yearly", "regression_yearly", "holt_winters_fitted"}

const (
	// poolEtas learning rates η_g = poolEta0·4^g = 0.1, 0.4, 1.6, 6.4
	// (in units of the robust error scale, so one bucket's loss gap of
	// one scale moves a weight ratio by e^η) each drive one fixed-share
	// combination of the experts, from almost an average of them to
	// almost following the last best.
	poolEtas = 4
	poolEta0 = 0.1
	// The candidates, the hybrid alone and per learning rate the experts'
	// weighted mean and weighted median, are themselves combined by a
	// Fixed-Share forecaster whose rate AdaHedge sets (at most
	// candEtaMax): which learning rate suits a series, mean or median,
	// and whether to combine at all, is learnt online too.
	numCand    = 2*poolEtas + 1
	candEtaMax = 8.0
	// poolDelayExp slows the learning of horizon h by h^−1.5, at both
	// levels (the experts' rates and AdaHedge's cap): an h-step forecast's
	// loss arrives h−1 buckets late and the losses of consecutive origins
	// share h−1 of their targets, so one regime counts h times over
	// (a factor h), and a delay of d costs regret like √(d+1) (Joulani,
	// György & Szepesvári 2013: another √h). At one rate for all horizons
	// the 12-step weights chased regimes they learnt of too late. Measured
	// on the dev traces and on 46 NAB series outside them (exponents 0,
	// 0.5, 1, 1.5, 2: see BENCHMARKS "round 5"); h1 is unchanged.
	poolDelayExp = 1.5

	// poolLossClip bounds one scaled loss, so a single spike cannot decide
	// the weights alone (e^{−η·clip} is still tiny, but fixed share
	// brings the weight back).
	poolLossClip = 20.0
	// poolScaleClip: errors enter the robust loss scale clipped at this
	// many times it (about 3.2 standard deviations of Gaussian noise, the
	// same order as the Huber threshold).
	poolScaleClip = 4.0
	// surpriseK: a one-step error of the hybrid beyond this many robust
	// scales re-anchors expReanchor on the last value.
	surpriseK = 4.0
	// gateLam discounts the shift gate's evidence per surprise (a memory
	// of about thirty surprises: a series' habits, not its last burst).
	gateLam = 0.97
	// gateBins: surprises of 4–8, 8–16, … robust scales, the last open;
	// the gate weighs the evidence of the same bin and up, and of
	// gateBelow bins below (surprises at least a quarter as large). Held
	// out (46 NAB series): none below, one-step geometric mean ratio to
	// the best baseline 0.902; one 0.893; two 0.890; every bin (one sum)
	// 0.903; no gate 0.912.
	gateBins  = 8
	gateBelow = 2
	// carryTol: the longer horizons carry a bet on a shift only on series
	// whose last value's discounted h-step loss is at most this many
	// times the combination's (Hybrid.carryShift): in calm stretches the
	// combination beats the last value by a little even on a random walk,
	// after a shift the last value wins by far for h−1 origins. Held out
	// (46 NAB series, round 17; twelve-step geometric mean ratio to the
	// best baseline, series behind it): 1 → 0.835, 4 (it hardly ever
	// carried); 1.1 → 0.834, 2; 1.25 → 0.832, 2; 1.5 → 0.830, 1; no bound
	// → 0.841, 2 (NAB's clean daily shapes carried their anomalies:
	// art_daily_jumpsup 0.863 → 1.317). M4 hourly and the dev traces moved
	// by at most 0.001 from 1.1 to 1.5 but for NAB rds_cpu.
	carryTol = 1.5
	// carryMature: seasons of resolved h-step losses before that
	// comparison is trusted (the protocol's least window for an error
	// scale is two seasons too), so the Apache log's 50-hour windows do
	// not carry their first days' noise.
	carryMature = 2
	// ivRecentRate is the step of the final forecast's recent error scale
	// (a memory of about eight buckets); ivRecentCap bounds the interval
	// scale at that many times it (see Hybrid.ivScale). A grid of 8–16
	// buckets and caps 1–3 moved no coverage on the dev traces outside
	// what the slow scale alone gave, except the series with a transient.
	ivRecentRate = 1.0 / 8
	ivRecentCap  = 1.5
	// errAbsurd: an error beyond this many times the error scale it
	// updates is a broken measurement, not a regime (clipErr).
	errAbsurd = 1000.0
	// ivEta0/h^ivDelayExp is the step of the final interval's quantile
	// trackers at horizon h (in units of its error scale). The one-step
	// trackers learn of each error at once and can move fast (at 0.05,
	// NAB network_in's short trace covered 89% at one step: the trackers
	// had not come in from their start). An h-step error arrives h−1
	// buckets late and consecutive ones overlap, so the longer horizons
	// step slower; at h^−0.5 (rounds 6–12) the 12-step intervals, now
	// judged by the bounds they issued (trackInterval), came in too slowly
	// after a change of regime. Held out (M4's 414 hourly series, 46 NAB
	// series), exponents 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7: the smaller, the
	// closer the 12-step coverage to 80% and the larger the pinball loss
	// (the bounds move more); 0.2 buys about half of what 0 does in
	// calibration (mean |coverage − 0.8| at 0.5 / 0.2 / 0: M4 0.031 /
	// 0.028 / 0.025, NAB 0.029 / 0.026 / 0.024) for half its pinball cost
	// (+1.6% against +3.3% on M4; BENCHMARKS "round 13").
	ivEta0     = 0.15
	ivDelayExp = 0.2
	// poissonMaxMean: for integer series whose model mean is below this,
	// the model experts give the median of a Poisson count with that mean
	// (above it the Poisson median is within a third of the mean and the
	// tracked median shift is as good).
	poissonMaxMean = 20.0
)

// pool combines the hybrid with simple experts per horizon by
// exponentially weighted averaging with fixed share (Herbster & Warmuth
// 1998) on robustly scaled absolute losses: each step multiplies an
// expert's weight by e^{−η·loss}, then every weight gets a share α of the
// uniform distribution back, so an expert that was bad for weeks can take
// over within a bucket or two after a regime change (a level shift, after
// which the naive and median rules win). Two levels: two combinations
// (weighted mean and weighted median) per learning rate, and a
// fixed-share combination of those with the hybrid alone, whose weights
// learn which suits the series.
type pool struct {
	H, P   int
	avail  [numExp]bool
	nav    int         // experts available
	lagDay int         // buckets in a day (expSDay)
	lagWk  int         // buckets in a week (expSWeek)
	season int         // buckets of expMedSeason
	alpha  float64     // fixed share: 1/window, about one switch per window (times h^−1.5 for the experts at horizon h)
	lamGap float64     // discount of the candidates' mixability gap (memory a window)
	fx     []float32   // P×H×numExp expert forecasts per origin
	fc     []float32   // P×H×numCand candidate forecasts per origin
	w      []float64   // H×poolEtas×numExp expert weights per learning rate
	v      []float64   // H×numCand candidate weights
	gap    []float64   // H discounted mixability gap of the candidates (AdaHedge)
	slow   []float64   // H learning-rate factor of each horizon, h^−poolDelayExp
	order  [numExp]int // the last combine's order of the experts (sortAwakeFrom's start; not state)
}

func newPool(H, P, W, spd, wk int, yearly bool) *pool {
	p := &pool{H: H, P: P}
	for _, k := range []int{expHybrid, expReg, expNaive, expMedShort, expReanchor, expPersist} {
		p.avail[k] = true
	}
	if spd >= 2 && W > spd {
		p.avail[expSDay] = true
		p.lagDay = spd
	}
	if wk >= 2 && W >= wk {
		p.avail[expSWeek] = true
		p.lagWk = wk
	}
	if wk >= 2 && W >= 3*wk {
		p.avail[expSWeekMed] = true
	}
	if spd >= 2 && W >= 3*spd {
		p.avail[expSDayMed] = true
	}
	p.season = spd
	if spd < 2 {
		p.season = wk
	}
	if p.season >= 4 && W > p.season {
		p.avail[expMedSeason] = true
	}
	if p.season >= 2 && W >= 2*p.season {
		p.avail[expHW] = true
		p.avail[expHWFit] = true
	}
	if yearly {
		p.avail[expRegYear] = true
		p.avail[expHWYear] = p.avail[expHW]
	}
	for _, ok := range p.avail {
		if ok {
			p.nav++
		}
	}
	p.alpha = 1 / float64(max(W, 8))
	p.fx = make([]float32, P*H*numExp)
	p.fc = make([]float32, P*H*numCand)
	p.w = make([]float64, H*poolEtas*numExp)
	for i := range p.w {
		if p.avail[i%numExp] {
			p.w[i] = 1 / float64(p.nav)
		}
	}
	p.v = make([]float64, H*numCand)
	p.gap = make([]float64, H)
	p.slow = make([]float64, H)
	for h := range p.slow {
		p.slow[h] = math.Pow(float64(h+1), -poolDelayExp)
	}
	p.lamGap = 1 - 1/float64(max(W, 8))
	for i := range p.v {
		p.v[i] = 1 / float64(numCand)
	}
	return p
}

// combine stores the experts' forecasts f of horizon h (1-based) made at
// origin slot po and the candidates built from them, and returns the
// combined forecast. Integer series get an integer forecast.
func (p *pool) combine(h, po int, f *[numExp]float64, scale float64, integer bool) float64 {
	fc := p.fc[(po*p.H+h-1)*numCand : (po*p.H+h)*numCand]
	fc[0] = float32(f[expHybrid])
	// The experts sorted by forecast once: the order is the same at every
	// rate, only the weights differ.
	order := sortAwakeFrom(f, &p.avail, &p.order)
	var awake [numExp]bool
	for k, ok := range p.avail {
		awake[k] = ok && !math.IsNaN(f[k])
	}
	for g := 0; g < poolEtas; g++ {
		// Sleeping experts (Freund, Schapire, Singer & Warmuth 1997): an
		// expert with no forecast (NaN) is left out and the others'
		// weights renormalised; its weight is neither won nor lost while
		// it sleeps (update), so a series on which it never wakes is
		// combined as if it did not exist.
		w := p.w[((h-1)*poolEtas+g)*numExp : ((h-1)*poolEtas+g+1)*numExp]
		sw := 0.0
		for k, ok := range awake { // in expert order: the same rounding at every rate
			if ok {
				sw += w[k]
			}
		}
		med := weightedMedianSum(f, w, sw, order)
		// The mean takes each expert at most poolLossClip error scales
		// from the median, the most one loss can teach the weights: a
		// seasonal naive replaying last week's counter reset (10⁹ on a
		// series of level 10) moved the mean by 10⁷ at a weight of 1%.
		lo, hi := math.Inf(-1), math.Inf(1)
		if scale > 0 {
			lo, hi = med-poolLossClip*scale, med+poolLossClip*scale
		}
		c := 0.0
		for k, ok := range awake {
			if ok {
				// Clamped by comparisons, not min and max: f[k] is not
				// NaN, and a zero's sign cannot change the sum (it starts
				// at +0 and the weights are positive).
				x := f[k]
				if x < lo {
					x = lo
				}
				if x > hi {
					x = hi
				}
				c += w[k] * x
			}
		}
		if sw > 0 {
			c /= sw
		}
		fc[g+1] = float32(c)
		fc[1+poolEtas+g] = float32(med)
	}
	v := p.v[(h-1)*numCand : h*numCand]
	c := 0.0
	for g, x := range fc {
		c += v[g] * float64(x)
	}
	fx := p.fx[(po*p.H+h-1)*numExp : (po*p.H+h)*numExp]
	for k := range fx {
		fx[k] = float32(f[k])
	}
	if integer {
		c = math.Round(c)
	}
	return c
}

// sortAwakeFrom returns the available, awake experts (forecast not NaN)
// in ascending order of forecast, ties in expert order. It sorts them
// from order, the experts' order of the last call (any permutation will
// do): the next horizon's or origin's forecasts mostly keep it, so the
// insertion sort moves few entries and its comparisons are predictable,
// and the tie rule makes the result independent of the start. order is
// left holding every expert, the ones asleep after the returned prefix.
func sortAwakeFrom(f *[numExp]float64, avail *[numExp]bool, order *[numExp]int) []int {
	if *order == ([numExp]int{}) { // zero value: not a permutation yet
		for k := range order {
			order[k] = k
		}
	}
	var sleep [numExp]int
	n, ns := 0, 0
	for _, k := range order {
		if avail[k] && !math.IsNaN(f[k]) {
			order[n] = k
			n++
		} else {
			sleep[ns] = k
			ns++
		}
	}
	copy(order[n:], sleep[:ns])
	for i := 1; i < n; i++ {
		k := order[i]
		v := f[k]
		j := i
		for ; j > 0; j-- {
			p := order[j-1]
			if f[p] < v || (f[p] == v && p < k) {
				break
			}
			order[j] = p
		}
		order[j] = k
	}
	return order[:n]
}

// weightedMedianSum is the weighted median of the forecasts f of the
// experts in order (the awake ones, sorted by sortAwakeFrom) with weights
// w, given sw, the sum of their weights in expert order (so every rate's
// sum rounds alike).
func weightedMedianSum(f *[numExp]float64, w []float64, sw float64, order []int) float64 {
	n := len(order)
	if n == 0 {
		return math.NaN()
	}
	acc, half := 0.0, sw/2
	for i, k := range order {
		acc += w[k]
		if math.Abs(acc-half) <= 1e-9*sw && i+1 < n {
			// Exactly half the weight on each side (equal weights, an
			// even count): the midpoint, as an unweighted median does,
			// whatever the rounding of the sums.
			return (f[k] + f[order[i+1]]) / 2
		}
		if acc >= half {
			return f[k]
		}
	}
	return f[order[n-1]]
}

// skip marks the forecast of horizon h at origin slot po as not made by
// the combination (its target will teach the weights nothing).
func (p *pool) skip(h, po int) {
	p.fc[(po*p.H+h-1)*numCand] = float32(math.NaN())
}

// used reports whether the combination made the forecast of horizon h at
// origin slot po.
func (p *pool) used(h, po int) bool {
	return !math.IsNaN(float64(p.fc[(po*p.H+h-1)*numCand]))
}

// update scores the forecasts made at origin slot po for horizon h now
// that y is known; scale (a robust error scale) makes the losses of
// different times and series comparable.
func (p *pool) update(h, po int, y, scale float64, integer bool) {
	if !(scale > 0) {
		return
	}
	loss := func(f float64) float64 {
		if integer {
			f = math.Round(f)
		}
		if l := math.Abs(y-f) / scale; l < poolLossClip {
			return l
		}
		return poolLossClip
	}
	fx := p.fx[(po*p.H+h-1)*numExp : (po*p.H+h)*numExp]
	fc := p.fc[(po*p.H+h-1)*numCand : (po*p.H+h)*numCand]
	var e [numExp]float64
	awake, nAwake := p.avail, p.nav
	rate := -poolEta0 * p.slow[h-1]
	for k, ok := range p.avail {
		if !ok {
			continue
		}
		if math.IsNaN(float64(fx[k])) {
			awake[k] = false
			nAwake--
			continue
		}
		e[k] = math.Exp(rate * loss(float64(fx[k])))
	}
	for g := 0; g < poolEtas; g++ {
		if g > 0 {
			for k := range e { // e^{−4η} = (e^{−η})⁴
				e[k] *= e[k]
				e[k] *= e[k]
			}
		}
		w := p.w[((h-1)*poolEtas+g)*numExp : ((h-1)*poolEtas+g+1)*numExp]
		// The share slows with the rate: an expert's weight settles
		// where what the share gives back balances what its losses take
		// (about α/η), so at α/1 and η·h^−1.5 the twelve-step weights
		// stayed near uniform and a random-walk gauge's naive expert,
		// best by a third at twelve steps, never took over.
		alpha := p.alpha * p.slow[h-1]
		if nAwake == p.nav {
			fixedShare(w, e[:], p.avail[:], p.nav, alpha)
			continue
		}
		// Sleeping experts keep their weight; the awake ones share the
		// rest as if the sleepers were not there.
		mass := 0.0
		for k, ok := range awake {
			if ok {
				mass += w[k]
			}
		}
		fixedShare(w, e[:], awake[:], nAwake, alpha)
		for k, ok := range awake {
			if ok {
				w[k] *= mass
			}
		}
	}
	var ec, lc [numCand]float64
	all := [numCand]bool{}
	v := p.v[(h-1)*numCand : h*numCand]
	// AdaHedge (de Rooij et al. 2014): the rate is ln N over the
	// cumulative mixability gap (discounted like the window), so it
	// needs no tuning and adapts to how far apart the candidates are.
	eta := min(math.Log(numCand)/max(p.gap[h-1], 1e-9), candEtaMax*p.slow[h-1])
	dot, mix, mn := 0.0, 0.0, math.Inf(1)
	for g, x := range fc {
		lc[g] = loss(float64(x))
		mn = min(mn, lc[g])
		dot += v[g] * lc[g]
		all[g] = true
	}
	for g := range fc {
		ec[g] = math.Exp(-eta * (lc[g] - mn))
		mix += v[g] * ec[g]
	}
	m := mn - math.Log(mix)/eta // the mix loss
	p.gap[h-1] = p.lamGap*p.gap[h-1] + max(dot-m, 0)
	fixedShare(p.v[(h-1)*numCand:h*numCand], ec[:], all[:], numCand, p.alpha)
}

// fixedShare multiplies the weights w of the available entries by e,
// renormalises and mixes in a share alpha of the uniform distribution over
// the n available entries.
func fixedShare(w, e []float64, avail []bool, n int, alpha float64) {
	sw := 0.0
	for k := range w {
		if avail[k] {
			w[k] *= e[k]
			sw += w[k]
		}
	}
	keep, share := 1-alpha, alpha/float64(n)
	for k := range w {
		if !avail[k] {
			continue
		}
		if sw > 0 {
			w[k] = keep*w[k]/sw + share
		} else {
			w[k] = 1 / float64(n)
		}
	}
}

// weights returns the current weights of the experts at horizon h in the
// final combination (the candidates' weights times their experts'
// weights), for the tests and for debugging.
func (p *pool) weights(h int) (w [numExp]float64) {
	v := p.v[(h-1)*numCand : h*numCand]
	w[expHybrid] = v[0]
	for g := 0; g < poolEtas; g++ {
		wg := p.w[((h-1)*poolEtas+g)*numExp : ((h-1)*poolEtas+g+1)*numExp]
		for k := range w {
			w[k] += (v[g+1] + v[1+poolEtas+g]) * wg[k]
		}
	}
	return w
}

// experts writes the experts' forecasts of bucket idx+h made at origin idx
// into the scratch array and returns it; hyb is the hybrid's median, mean
// its mean and mu the regression's forecast.
func (m *Hybrid) experts(idx int64, h int, hyb, mean, mu float64) *[numExp]float64 {
	f := &m.sc.exp
	// Every slot afresh: the array is pooled scratch, last written by
	// whichever model borrowed it before (an unavailable expert's slot
	// would carry that model's forecast into this one's pool state).
	*f = [numExp]float64{}
	p := m.pl
	last := m.ys[idx%int64(m.W)]
	if m.integer && mean >= 0 && mean < poissonMaxMean {
		// Counts of a few per bucket: the median of the count, not a
		// shifted mean, minimises the absolute error.
		hyb = poissonMedian(mean)
	}
	if m.integer && mu >= 0 && mu < poissonMaxMean {
		mu = poissonMedian(mu)
	}
	f[expHybrid] = hyb
	f[expReg] = mu
	f[expReanchor] = hyb + m.surprise
	// The residual carried undamped: on a random-walk-like gauge the
	// stacker, trained on residuals that mostly decay, pulls long-horizon
	// forecasts back to the window's fit while the level stays put. One
	// step ahead this is naive with a seasonal step, which naive and the
	// hybrid already cover: there it repeats the hybrid.
	f[expPersist] = mu + m.res[idx%int64(m.W)]
	if h == 1 {
		f[expPersist] = hyb
	}
	f[expNaive] = last
	lagged := func(lag int) float64 {
		i := idx + int64(h) - int64(lag*((h+lag-1)/lag))
		if !m.inWindow(i) || m.wts[i%int64(m.W)] == 0 {
			return last
		}
		return m.ys[i%int64(m.W)]
	}
	if p.avail[expSDay] {
		f[expSDay] = lagged(p.lagDay)
	}
	if p.avail[expSWeek] {
		f[expSWeek] = lagged(p.lagWk)
	}
	if p.avail[expSWeekMed] {
		f[expSWeekMed] = m.medLagged(idx, h, p.lagWk, 0, last, &m.memoWk)
	}
	if p.avail[expSDayMed] {
		f[expSDayMed] = m.medLagged(idx, h, p.lagDay, 7, last, &m.memoDay)
	}
	if p.avail[expHW] {
		f[expHW] = hyb // until its first season is seen
		if m.hw.ready() {
			f[expHW] = m.hw.forecast(idx, h)
		}
	}
	if p.avail[expHWFit] {
		f[expHWFit] = math.NaN() // asleep until fitted
		if m.hwf.par != nil && m.hwf.ready() {
			f[expHWFit] = m.hwf.forecast(idx, h)
		}
	}
	// The medians do not depend on the horizon: computed once per origin
	// of this model (not only at h = 1, which an event ahead can skip:
	// the longer horizons read another series' medians then).
	sc := m.sc
	if sc.medOf != m || sc.medIdx != idx {
		sc.medShort, sc.medSeason = m.medLast(idx, 3), 0
		if p.avail[expMedSeason] {
			sc.medSeason = m.medLast(idx, p.season)
		}
		sc.medOf, sc.medIdx = m, idx
	}
	f[expMedShort] = sc.medShort
	if p.avail[expMedSeason] {
		f[expMedSeason] = sc.medSeason
	}
	if p.avail[expRegYear] {
		d, ok := m.yr.delta(m.last, m.last.Add(time.Duration(h)*m.cfg.Step))
		if !ok {
			d = math.NaN() // asleep
		}
		f[expRegYear] = mu + d
		f[expHWYear] = f[expHW] + d
	}
	return f
}

// medLagged is the median of the known values whole multiples of lag
// before the target bucket idx+h, at most maxK of them (0: as many as the
// window holds), skipping multiples that are still in the future at
// origin idx; def when there is none.
//
// With memo, a median is kept by target and found again at the next
// origins: while no multiple is in the future (h ≤ lag) the candidates
// are the multiples from the target back to the window's start, values
// never change once in the ring, and the count of candidates tells when
// one has left the window.
func (m *Hybrid) medLagged(idx int64, h, lag, maxK int, def float64, memo *medMemo) float64 {
	target := idx + int64(h)
	slot, cnt := -1, int64(0)
	if memo != nil && h <= lag {
		if lo := max(m.n-int64(m.W), 0); target >= lo {
			cnt = (target - lo) / int64(lag)
		}
		if maxK > 0 {
			cnt = min(cnt, int64(maxK))
		}
		slot = int(target % int64(len(memo.tag)))
		if memo.tag[slot] == target+1 && memo.cnt[slot] == cnt {
			return memo.val[slot]
		}
	}
	tmp := m.sc.tmp[:0]
	for k := 1; maxK == 0 || k <= maxK; k++ {
		i := idx + int64(h) - int64(k*lag)
		if i > idx {
			continue
		}
		if !m.inWindow(i) {
			break
		}
		if m.wts[i%int64(m.W)] > 0 {
			tmp = append(tmp, m.ys[i%int64(m.W)])
		}
	}
	if len(tmp) == 0 {
		return def // not kept: def is the origin's
	}
	v := median(tmp)
	if slot >= 0 {
		memo.tag[slot], memo.cnt[slot], memo.val[slot] = target+1, cnt, v
	}
	return v
}

// medMemo keeps medLagged's medians by target bucket (slot target mod
// its length, at least the horizon). It is not model state: a restored
// or reset model starts it empty.
type medMemo struct {
	tag []int64 // target+1; 0: empty
	cnt []int64 // candidates in the window when computed
	val []float64
}

func newMedMemo(n int) medMemo {
	return medMemo{tag: make([]int64, n), cnt: make([]int64, n), val: make([]float64, n)}
}

func (c *medMemo) reset() { clear(c.tag) }

// medLast is the median of the last k known values up to bucket idx.
func (m *Hybrid) medLast(idx int64, k int) float64 {
	tmp := m.sc.tmp[:0]
	for i := idx; i >= 0 && i > idx-int64(m.W) && len(tmp) < k; i-- {
		if m.wts[i%int64(m.W)] > 0 {
			tmp = append(tmp, m.ys[i%int64(m.W)])
		}
	}
	if len(tmp) == 0 {
		return m.ys[idx%int64(m.W)]
	}
	return median(tmp)
}

// poissonMedian is the median of a Poisson distribution with mean lam
// (0 ≤ lam, small: the loop runs about lam times).
func poissonMedian(lam float64) float64 {
	p := math.Exp(-lam)
	cdf := p
	k := 0.0
	for cdf < 0.5 && k < 10*lam+10 {
		k++
		p *= lam / k
		cdf += p
	}
	return k
}

// encode writes the pool's learnt state (its shape comes from the
// configuration).
func (p *pool) encode(e *enc) {
	e.f32s(p.fx)
	e.f32s(p.fc)
	e.fs(p.w)
	e.fs(p.v)
	e.fs(p.gap)
}

// decode reads what encode wrote; sizes must match, the weights must be
// probabilities and the gaps finite and non-negative. A format 8 or 9
// snapshot has one expert fewer (numExpV9): expHWFit joins asleep, with
// the weight a fresh pool gives each expert, the others' scaled to leave
// room for it.
func (p *pool) decode(d *dec) {
	if d.before(10) {
		fx := make([]float32, len(p.fx)/numExp*numExpV9)
		w := make([]float64, len(p.w)/numExp*numExpV9)
		d.f32sInto(fx, "expert forecasts")
		d.f32sInto(p.fc, "candidate forecasts")
		d.fsInto(w, "expert weights")
		for b := range len(fx) / numExpV9 {
			copy(p.fx[b*numExp:], fx[b*numExpV9:(b+1)*numExpV9])
			p.fx[b*numExp+expHWFit] = float32(math.NaN())
		}
		share := 0.0
		if p.avail[expHWFit] {
			share = 1 / float64(p.nav)
		}
		for b := range len(w) / numExpV9 {
			for k := range numExpV9 {
				p.w[b*numExp+k] = w[b*numExpV9+k] * (1 - share)
			}
			p.w[b*numExp+expHWFit] = share
		}
	} else {
		d.f32sInto(p.fx, "expert forecasts")
		d.f32sInto(p.fc, "candidate forecasts")
		d.fsInto(p.w, "expert weights")
	}
	d.fsInto(p.v, "candidate weights")
	d.fsInto(p.gap, "mixability gaps")
	d.inRange(p.w, 0, 1, "expert weights")
	d.inRange(p.v, 0, 1, "candidate weights")
	d.inRange(p.gap, 0, math.MaxFloat64, "mixability gaps")
}
