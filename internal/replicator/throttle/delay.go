package throttle

import (
	"fmt"
	"math"
	"time"
)

// Defaults of DelayConfig.
const (
	// DefaultTargetDelay is the queueing delay a controlled link aims
	// for: RFC 6817 allows up to 100 ms; 25 ms is what an interactive
	// user sharing the path notices little of.
	DefaultTargetDelay = 25 * time.Millisecond
	// DefaultMinRate is the floor of a controlled link (DRBD's
	// c-min-rate): a copy always progresses at least this fast unless
	// its schedule pauses it or allows less.
	DefaultMinRate int64 = 1 << 20
)

// The controller's constants. They are about the control loop, not about
// any particular path, so they are not configurable.
const (
	// baseBuckets of baseInterval each keep the base (minimum) delay
	// over the last 10 minutes, as RFC 6817 section 3.4.2 does: a
	// route change that lengthens the path is re-learned within the
	// window, while a long busy period does not erase the true base.
	baseBuckets  = 10
	baseInterval = time.Minute
	// currentFilter samples: the current delay is the minimum of the
	// last few samples (RFC 6817 CURRENT_FILTER), which drops a single
	// delayed acknowledgement without hiding a standing queue.
	currentFilter = 4
	// upGain: at zero queueing delay the rate grows by upGain times
	// itself per second (plus the floor per second, so a link at the
	// floor leaves it quickly); the growth shrinks in proportion as the
	// queueing delay nears the target. The queue is seen one round trip
	// late, so a faster climb overshoots further: 0.25 keeps the
	// overshoot of a closed-loop model (TestControllerBottleneck) under
	// three targets while reaching 100x the floor in about 20 s.
	upGain = 0.25
	// downGain: per unit of excess delay (queueing delay / target - 1)
	// the rate falls by downGain times itself, once per round trip and
	// never by more than half: a standing queue must drain, which takes
	// a rate below the bottleneck's, but cutting again before the last
	// cut shows would empty the link.
	downGain = 0.5
	// maxExcess bounds how far above target the delay counts, so one
	// huge sample cannot take the rate to the floor at once.
	maxExcess = 4.0
	// maxStep bounds the time one sample accounts for: after a gap
	// (an idle link, a paused window) the first sample moves the rate
	// only a little, since the path's state during the gap is unknown.
	maxStep = 250 * time.Millisecond
	// maxSample bounds an RTT sample; longer ones are clamped.
	maxSample = time.Minute
	// maxRate bounds the controlled rate (1 TiB/s) so it cannot overflow
	// when the schedule does not limit the link.
	maxRate = float64(1 << 40)
)

// DelayConfig configures delay-based rate control of a link (see
// Controller).
type DelayConfig struct {
	// Target queueing delay; default DefaultTargetDelay.
	Target time.Duration
	// MinRate floor in bytes per second; default DefaultMinRate.
	MinRate int64
}

// Validate checks the configuration; zero fields take their defaults.
func (c DelayConfig) Validate() error {
	switch {
	case c.Target < 0:
		return fmt.Errorf("target delay %v: negative", c.Target)
	case c.Target > 0 && c.Target < time.Millisecond:
		return fmt.Errorf("target delay %v: below 1ms, shorter than the delay noise of any WAN path", c.Target)
	case c.Target > 10*time.Second:
		return fmt.Errorf("target delay %v: above 10s", c.Target)
	case c.MinRate < 0:
		return fmt.Errorf("min rate %d: negative", c.MinRate)
	}
	return nil
}

func (c DelayConfig) withDefaults() DelayConfig {
	if c.Target == 0 {
		c.Target = DefaultTargetDelay
	}
	if c.MinRate == 0 {
		c.MinRate = DefaultMinRate
	}
	return c
}

// Controller is a delay-based (LEDBAT-style, RFC 6817) rate controller for
// one link. It is fed round-trip times of the replication stream and
// keeps a rate that holds the queueing delay the stream adds to the path
// near a target: base delay is the minimum RTT over the last ten minutes,
// queueing delay the current (filtered) RTT minus the base. Below target
// the rate rises in proportion to the distance from target; above it
// the rate falls in proportion to the excess. The rate never exceeds the
// cap it is given (the schedule's rate in force), never falls below the
// floor, and is 0 when the cap is 0 (a paused window).
//
// A Controller is deterministic (time comes in as an argument) and not
// safe for concurrent use; a Limiter serialises access to its own.
type Controller struct {
	cfg  DelayConfig
	rate float64 // bytes per second, before the cap

	base      [baseBuckets]time.Duration // minimum per bucket; [0] is current
	baseN     int                        // buckets holding a sample
	baseStart time.Time                  // start of bucket [0]

	cur  [currentFilter]time.Duration
	curN int
	curI int

	last     time.Time // time of the last sample
	lastDown time.Time // time of the last decrease
	qdelay   time.Duration
}

// NewController returns a controller starting at the floor rate (a new
// link probes upwards rather than flooding the path first).
func NewController(cfg DelayConfig) *Controller {
	cfg = cfg.withDefaults()
	return &Controller{cfg: cfg, rate: float64(cfg.MinRate)}
}

// Config returns the configuration with defaults applied.
func (c *Controller) Config() DelayConfig { return c.cfg }

// QueueDelay returns the queueing delay of the last sample.
func (c *Controller) QueueDelay() time.Duration { return c.qdelay }

// BaseDelay returns the base delay (minimum RTT over the window); 0
// before the first sample.
func (c *Controller) BaseDelay() time.Duration {
	if c.baseN == 0 {
		return 0
	}
	b := c.base[0]
	for _, d := range c.base[1:c.baseN] {
		b = min(b, d)
	}
	return b
}

// Rate returns the rate in force under cap (the schedule's rate: bytes
// per second, Unlimited, or 0 for paused).
func (c *Controller) Rate(capRate int64) int64 {
	if capRate == 0 {
		return 0
	}
	r := math.Max(c.rate, float64(c.cfg.MinRate))
	if capRate > 0 {
		r = math.Min(r, float64(capRate))
	}
	return int64(r)
}

// Observe feeds one RTT sample taken at now and returns the rate in
// force under capRate. Samples that are not positive are ignored. While
// the cap is 0 (paused) the rate does not move.
func (c *Controller) Observe(now time.Time, rtt time.Duration, capRate int64) int64 {
	if rtt <= 0 {
		return c.Rate(capRate)
	}
	rtt = min(rtt, maxSample)
	c.addBase(now, rtt)
	c.cur[c.curI] = rtt
	c.curI = (c.curI + 1) % currentFilter
	c.curN = min(c.curN+1, currentFilter)
	current := c.cur[0]
	for _, d := range c.cur[1:c.curN] {
		current = min(current, d)
	}
	c.qdelay = max(0, current-c.BaseDelay())

	var dt float64
	if !c.last.IsZero() && now.After(c.last) {
		dt = min(now.Sub(c.last), maxStep).Seconds()
	}
	if now.After(c.last) {
		c.last = now
	}
	if capRate == 0 {
		return 0
	}
	target := c.cfg.Target.Seconds()
	off := (target - c.qdelay.Seconds()) / target // 1 at an empty queue
	if off >= 0 {
		c.rate += off * dt * (upGain*c.rate + float64(c.cfg.MinRate))
	} else if now.Sub(c.lastDown) >= current {
		// At most one decrease per round trip (the queue it reacts to
		// needs that long to show the effect), by the share of the
		// delay that is excess, at most half.
		c.rate *= math.Max(0.5, 1-downGain*math.Min(-off, maxExcess))
		c.lastDown = now
	}
	// Anti-windup: the rate never holds credit above the cap or below
	// the floor, so a schedule change or a cleared queue starts from a
	// rate that was actually in force.
	c.rate = math.Min(math.Max(c.rate, float64(c.cfg.MinRate)), maxRate)
	if capRate > 0 {
		c.rate = math.Min(c.rate, float64(capRate))
	}
	return c.Rate(capRate)
}

// addBase records rtt in the base-delay history, rolling one bucket per
// baseInterval elapsed (a gap of more than the window clears it).
func (c *Controller) addBase(now time.Time, rtt time.Duration) {
	if c.baseN == 0 {
		c.base[0], c.baseN, c.baseStart = rtt, 1, now
		return
	}
	if el := now.Sub(c.baseStart); el >= baseInterval {
		roll := int(min(el/baseInterval, baseBuckets))
		copy(c.base[roll:], c.base[:baseBuckets-roll])
		for i := range roll {
			c.base[i] = maxSample
		}
		c.baseN = min(c.baseN+roll, baseBuckets)
		c.baseStart = c.baseStart.Add(el / baseInterval * baseInterval)
	}
	c.base[0] = min(c.base[0], rtt)
}
