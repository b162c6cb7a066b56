package probe

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Health is the rise/fall health state of one (edge, mirror) path.
type Health uint8

const (
	// HealthUnknown: too few probes yet to decide. Routing treats such a
	// path as not yet a candidate rather than as a failure, so a starting
	// agent does not trip panic mode.
	HealthUnknown Health = iota
	// HealthUp: the last Rise probes (at least) succeeded.
	HealthUp
	// HealthDown: the last Fall probes (at least) failed.
	HealthDown
)

// String returns "unknown", "up" or "down".
func (h Health) String() string {
	switch h {
	case HealthUp:
		return "up"
	case HealthDown:
		return "down"
	default:
		return "unknown"
	}
}

// ErrBadSample is returned by Estimator.Observe for a successful probe with a
// negative round-trip time; the sample is discarded.
var ErrBadSample = errors.New("negative round-trip time")

// maxMinEntries bounds the windowed-minimum deque however fast samples come.
const maxMinEntries = 4096

// EstimatorConfig tunes an Estimator. The zero value of a field selects its
// default (DefaultEstimatorConfig).
type EstimatorConfig struct {
	// DecayTime is the peak-EWMA time constant: a sample's weight falls to
	// 1/e after DecayTime. Default 10 s (Finagle's default).
	DecayTime time.Duration
	// MinWindow is the span of the windowed minimum. Default 5 min.
	MinWindow time.Duration
	// LossDecay is the time constant of the loss-rate EWMA. Default
	// 5 min: one lost probe in 2 s probing moves the estimate by 0.7%, not
	// by the 3% a 32-probe window would, so a single loss does not look
	// like a degraded path to the routing policy.
	LossDecay time.Duration
	// Rise is how many consecutive successes mark a path up. Default 2.
	Rise int
	// Fall is how many consecutive failures mark a path down. Default 3.
	Fall int
}

// DefaultEstimatorConfig returns the defaults: 10 s decay, 5 min minimum
// window, 32-probe loss window, rise 2, fall 3 (HAProxy's rise/fall).
func DefaultEstimatorConfig() EstimatorConfig {
	return EstimatorConfig{DecayTime: 10 * time.Second, MinWindow: 5 * time.Minute, LossDecay: 5 * time.Minute, Rise: 2, Fall: 3}
}

// withDefaults fills zero fields and validates the rest.
func (c EstimatorConfig) withDefaults() (EstimatorConfig, error) {
	d := DefaultEstimatorConfig()
	if c.DecayTime == 0 {
		c.DecayTime = d.DecayTime
	}
	if c.MinWindow == 0 {
		c.MinWindow = d.MinWindow
	}
	if c.LossDecay == 0 {
		c.LossDecay = d.LossDecay
	}
	if c.Rise == 0 {
		c.Rise = d.Rise
	}
	if c.Fall == 0 {
		c.Fall = d.Fall
	}
	switch {
	case c.DecayTime < 0:
		return c, fmt.Errorf("estimator DecayTime %v: must be positive", c.DecayTime)
	case c.MinWindow < 0:
		return c, fmt.Errorf("estimator MinWindow %v: must be positive", c.MinWindow)
	case c.LossDecay < 0:
		return c, fmt.Errorf("estimator LossDecay %v: must be positive", c.LossDecay)
	case c.Rise < 0:
		return c, fmt.Errorf("estimator Rise %d: must be positive", c.Rise)
	case c.Fall < 0:
		return c, fmt.Errorf("estimator Fall %d: must be positive", c.Fall)
	}
	return c, nil
}

// Estimate is a snapshot of one path's estimator.
type Estimate struct {
	// RTT is the peak-EWMA of the median-of-3 filtered samples: the value
	// routing ranks mirrors by. Zero before the first success.
	RTT time.Duration
	// Median is the latest median of the last three successful samples.
	Median time.Duration
	// Min is the smallest raw sample within MinWindow: the propagation floor.
	Min time.Duration
	// Last is the latest raw successful sample.
	Last time.Duration
	// Jitter is the RFC 3550-style smoothed absolute difference between
	// consecutive successful samples.
	Jitter time.Duration
	// Loss is the failed share of probes, exponentially weighted over
	// time with LossDecay.
	Loss float64
	// Health is the rise/fall state; HealthSince is when it last changed.
	Health      Health
	HealthSince time.Time
	// Samples counts successful probes, Probes all probes, ever.
	Samples int
	Probes  int
	// Failures counts the probes that failed since the last success.
	Failures int
	// LastProbe and LastSuccess are the times of the latest probe and of
	// the latest successful one.
	LastProbe   time.Time
	LastSuccess time.Time
}

// Stale reports whether the latest probe is older than maxAge at now: a
// stopped prober must not keep a path looking healthy forever.
func (e Estimate) Stale(now time.Time, maxAge time.Duration) bool {
	return e.Probes == 0 || now.Sub(e.LastProbe) > maxAge
}

type minEntry struct {
	at  time.Time
	rtt time.Duration
}

// Estimator filters the probe results of one (edge, mirror) path. It is
// driven by sample timestamps only, so replays are deterministic. It is not
// safe for concurrent use; Table adds the lock.
type Estimator struct {
	cfg EstimatorConfig

	last3 [3]time.Duration // ring of the latest successful raw samples
	n3    int              // successful samples in last3 (≤ 3)
	i3    int              // next write position in last3

	ewma   float64 // peak-EWMA, nanoseconds
	ewmaAt time.Time

	minq []minEntry // increasing rtt, increasing time: front is the minimum

	jitter  float64 // nanoseconds
	prevRaw time.Duration

	loss   float64 // EWMA of the failure indicator
	lossAt time.Time

	okRun, failRun int
	est            Estimate
}

// NewEstimator returns an estimator with cfg (zero fields take defaults).
func NewEstimator(cfg EstimatorConfig) (*Estimator, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Estimator{cfg: c}, nil
}

// Observe feeds one probe result taken at at: err == nil is a success with
// round-trip time rtt, any error a failure (timeout, refused, …).
func (e *Estimator) Observe(at time.Time, rtt time.Duration, err error) error {
	if err == nil && rtt < 0 {
		return fmt.Errorf("observe %v: %w", rtt, ErrBadSample)
	}
	e.est.Probes++
	e.est.LastProbe = at
	x := 0.0
	if err != nil {
		x = 1
	}
	// The EWMA starts from "no loss" and weighs each outcome by the time
	// since the previous probe, so the first probe carries no weight.
	if e.est.Probes > 1 {
		dt := max(at.Sub(e.lossAt), 0)
		w := math.Exp(-float64(dt) / float64(e.cfg.LossDecay))
		e.loss = e.loss*w + x*(1-w)
	}
	if at.After(e.lossAt) {
		e.lossAt = at
	}
	e.est.Loss = e.loss
	if err != nil {
		e.okRun = 0
		e.failRun++
		e.est.Failures = e.failRun
		if e.failRun >= e.cfg.Fall {
			e.setHealth(HealthDown, at)
		}
		return nil
	}
	e.failRun = 0
	e.est.Failures = 0
	e.okRun++
	if e.okRun >= e.cfg.Rise {
		e.setHealth(HealthUp, at)
	}
	e.success(at, rtt)
	return nil
}

func (e *Estimator) setHealth(h Health, at time.Time) {
	if e.est.Health != h {
		e.est.Health = h
		e.est.HealthSince = at
	}
}

func (e *Estimator) success(at time.Time, rtt time.Duration) {
	// Jitter over raw samples, as RTP does for interarrival times.
	if e.est.Samples > 0 {
		d := math.Abs(float64(rtt - e.prevRaw))
		e.jitter += (d - e.jitter) / 16
	}
	e.prevRaw = rtt
	e.est.Samples++
	e.est.Last = rtt
	e.est.LastSuccess = at

	e.last3[e.i3] = rtt
	e.i3 = (e.i3 + 1) % 3
	if e.n3 < 3 {
		e.n3++
	}
	med := median3(e.last3, e.n3)

	// Peak-EWMA: a higher value replaces the estimate at once; a lower one
	// is blended in with a weight that grows with the time since the last
	// update, so an idle path converges as fast as a busy one.
	x := float64(med)
	switch {
	case e.est.Samples == 1 || x >= e.ewma:
		e.ewma = x
	default:
		dt := at.Sub(e.ewmaAt)
		if dt < 0 {
			dt = 0 // out-of-order sample: no decay
		}
		w := math.Exp(-float64(dt) / float64(e.cfg.DecayTime))
		e.ewma = e.ewma*w + x*(1-w)
	}
	if at.After(e.ewmaAt) {
		e.ewmaAt = at
	}

	// Windowed minimum: a monotonic deque. Entries with a larger rtt than
	// the new one can never be the minimum again.
	for len(e.minq) > 0 && e.minq[len(e.minq)-1].rtt >= rtt {
		e.minq = e.minq[:len(e.minq)-1]
	}
	e.minq = append(e.minq, minEntry{at, rtt})
	cut := 0
	for cut < len(e.minq)-1 && at.Sub(e.minq[cut].at) > e.cfg.MinWindow {
		cut++
	}
	if len(e.minq)-cut > maxMinEntries {
		cut = len(e.minq) - maxMinEntries
	}
	if cut > 0 {
		e.minq = append(e.minq[:0], e.minq[cut:]...)
	}

	e.est.Median = med
	e.est.RTT = time.Duration(math.Round(e.ewma))
	e.est.Min = e.minq[0].rtt
	e.est.Jitter = time.Duration(math.Round(e.jitter))
}

// median3 is the median of the first n (1–3) entries of a ring; for two
// samples it is their mean.
func median3(r [3]time.Duration, n int) time.Duration {
	switch n {
	case 1:
		return r[0]
	case 2:
		return (r[0] + r[1]) / 2
	}
	a, b, c := r[0], r[1], r[2]
	if a > b {
		a, b = b, a
	}
	if b > c {
		b = c
	}
	if a > b {
		b = a
	}
	return b
}

// Estimate returns the current snapshot.
func (e *Estimator) Estimate() Estimate { return e.est }
