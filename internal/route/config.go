package route

import (
	"fmt"
	"math"
	"time"

	"github.com/premirror/premirror/internal/chash"
)

// Config holds every policy constant. The zero value of a field selects its
// default (DefaultConfig); set a field negative where noted to disable it.
type Config struct {
	// Slots is the size of every route table (a power of two, see
	// chash.ValidSlots). Default 1024: ≥32 slots per mirror for routes of
	// up to 32 mirrors, so a share is exact to 0.1%.
	Slots int

	// --- cost ---

	// DefaultBandwidth (bits/s) is used for paths that report none.
	// Default 100 Mbit/s.
	DefaultBandwidth float64
	// DefaultServiceTime is a mirror's mean service time when it reports
	// none; the queueing term is ServiceTime·ρ/(1−ρ). Default 2 ms.
	DefaultServiceTime time.Duration
	// MaxUtilization clamps ρ in the queueing term so a saturated mirror
	// costs a lot but not infinity (default 0.95: ×19 the service time).
	MaxUtilization float64
	// HopCost is added per network hop. Default 0.2 ms.
	HopCost time.Duration
	// LossPenalty is the expected delay of a lost round trip (a TCP
	// retransmission timeout); the loss term is loss·RoundTrips·LossPenalty.
	// Default 200 ms, Linux's minimum RTO.
	LossPenalty time.Duration
	// JitterWeight multiplies the path jitter into the cost. Default 0
	// (the peak-EWMA already charges for jitter); negative is invalid.
	JitterWeight float64

	// --- capacity ---

	// CapacityCap is the share of a mirror's capacity routes may fill
	// before the excess demand spills to the next candidate. Default 0.8;
	// negative disables spill-over.
	CapacityCap float64

	// --- near ties ---

	// TieBand: candidates within this fraction of the best cost share
	// weight by softmin (temperature TieBand·best/3). Default 0.10;
	// negative disables sharing (the best takes all).
	TieBand float64

	// --- anti-flapping ---

	// MinGain and MinGainAbs: a challenger target must be cheaper than the
	// current route by at least both. Defaults 10% and 5 ms; negative
	// values mean no minimum.
	MinGain    float64
	MinGainAbs time.Duration
	// Confirm is how many consecutive evaluations the gain must hold.
	// Default 3.
	Confirm int
	// Dwell is the minimum time between two switches of a route. Default
	// 60 s. Each further switch within FlapWindow doubles it, up to
	// MaxDwell (defaults 30 min and 10 min: a route that keeps flapping
	// settles at one switch per 10 min). A negative Dwell disables it.
	Dwell      time.Duration
	FlapWindow time.Duration
	MaxDwell   time.Duration
	// MaxMove is the share of a route's slots that may move per
	// evaluation, failures excepted. Default 0.10.
	MaxMove float64
	// SlowStart is the ramp of a new or recovered mirror: its share of a
	// route grows linearly from SlowStartMin of its target share to all of
	// it over SlowStart. Defaults 30 s and 0.10; negative disables.
	SlowStart    time.Duration
	SlowStartMin float64
	// PeakIncumbent judges the current table by the peak-EWMA like the
	// challenger. By default the incumbent gets the benefit of the doubt:
	// its cost uses min(peak-EWMA, latest median-of-3), so "better for
	// Confirm consecutive evaluations" needs fresh evidence at each one
	// rather than one spike the peak-EWMA keeps for several decay times.
	PeakIncumbent bool
	// Panic: when fewer than this share of a route's candidates are
	// healthy, route to all of them (Envoy's panic threshold). Default
	// 0.5; negative disables.
	Panic float64
}

// DefaultConfig returns the policy: 10%/5 ms for 3 evaluations,
// 60 s dwell, 10% slew, 0.8 capacity cap, softmin within 10%, panic below 50%.
func DefaultConfig() Config {
	return Config{
		Slots:              1024,
		DefaultBandwidth:   100e6,
		DefaultServiceTime: 2 * time.Millisecond,
		MaxUtilization:     0.95,
		HopCost:            200 * time.Microsecond,
		LossPenalty:        200 * time.Millisecond,
		CapacityCap:        0.8,
		TieBand:            0.10,
		MinGain:            0.10,
		MinGainAbs:         5 * time.Millisecond,
		Confirm:            3,
		Dwell:              60 * time.Second,
		FlapWindow:         30 * time.Minute,
		MaxDwell:           10 * time.Minute,
		MaxMove:            0.10,
		SlowStart:          30 * time.Second,
		SlowStartMin:       0.10,
		Panic:              0.5,
	}
}

// resolved is Config with defaults applied and units converted.
type resolved struct {
	Config
	bwBps, svcMs, hopMs, lossMs, gainAbsMs float64
	budget                                 int // slots per evaluation
	capOn, tieOn, slowOn, panicOn          bool
}

func (c Config) resolve() (resolved, error) {
	d := DefaultConfig()
	fill := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	filld := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if c.Slots == 0 {
		c.Slots = d.Slots
	}
	if c.Confirm == 0 {
		c.Confirm = d.Confirm
	}
	fill(&c.DefaultBandwidth, d.DefaultBandwidth)
	fill(&c.MaxUtilization, d.MaxUtilization)
	fill(&c.CapacityCap, d.CapacityCap)
	fill(&c.TieBand, d.TieBand)
	fill(&c.MinGain, d.MinGain)
	fill(&c.MaxMove, d.MaxMove)
	fill(&c.SlowStartMin, d.SlowStartMin)
	fill(&c.Panic, d.Panic)
	filld(&c.DefaultServiceTime, d.DefaultServiceTime)
	filld(&c.HopCost, d.HopCost)
	filld(&c.LossPenalty, d.LossPenalty)
	filld(&c.MinGainAbs, d.MinGainAbs)
	filld(&c.Dwell, d.Dwell)
	filld(&c.FlapWindow, d.FlapWindow)
	filld(&c.MaxDwell, d.MaxDwell)
	filld(&c.SlowStart, d.SlowStart)

	bad := func(field string, v any, why string) (resolved, error) {
		return resolved{}, fmt.Errorf("route config %s %v: %s", field, v, why)
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case !chash.ValidSlots(c.Slots):
		return bad("Slots", c.Slots, "must be a power of two in [1, 2^20]")
	case !finite(c.DefaultBandwidth) || c.DefaultBandwidth < 0:
		return bad("DefaultBandwidth", c.DefaultBandwidth, "must be positive")
	case c.DefaultServiceTime < 0:
		return bad("DefaultServiceTime", c.DefaultServiceTime, "must be positive")
	case !finite(c.MaxUtilization) || c.MaxUtilization <= 0 || c.MaxUtilization >= 1:
		return bad("MaxUtilization", c.MaxUtilization, "must be in (0, 1)")
	case c.HopCost < 0:
		return bad("HopCost", c.HopCost, "must be positive")
	case c.LossPenalty < 0:
		return bad("LossPenalty", c.LossPenalty, "must be positive")
	case !finite(c.JitterWeight) || c.JitterWeight < 0:
		return bad("JitterWeight", c.JitterWeight, "must be ≥ 0")
	case !finite(c.CapacityCap) || c.CapacityCap > 1:
		return bad("CapacityCap", c.CapacityCap, "must be in (0, 1], or negative to disable")
	case !finite(c.TieBand) || c.TieBand > 1:
		return bad("TieBand", c.TieBand, "must be in (0, 1], or negative to disable")
	case !finite(c.MinGain) || c.MinGain >= 1:
		return bad("MinGain", c.MinGain, "must be below 1")
	case c.Confirm < 1:
		return bad("Confirm", c.Confirm, "must be ≥ 1")
	case c.FlapWindow < 0:
		return bad("FlapWindow", c.FlapWindow, "must be ≥ 0")
	case c.MaxDwell < c.Dwell:
		return bad("MaxDwell", c.MaxDwell, "must be ≥ Dwell")
	case !finite(c.MaxMove) || c.MaxMove <= 0 || c.MaxMove > 1:
		return bad("MaxMove", c.MaxMove, "must be in (0, 1]")
	case !finite(c.SlowStartMin) || c.SlowStartMin <= 0 || c.SlowStartMin > 1:
		return bad("SlowStartMin", c.SlowStartMin, "must be in (0, 1]")
	case !finite(c.Panic) || c.Panic > 1:
		return bad("Panic", c.Panic, "must be in (0, 1], or negative to disable")
	}
	// Negative gains and dwell switch those checks off.
	c.MinGain = max(c.MinGain, 0)
	c.MinGainAbs = max(c.MinGainAbs, 0)
	c.Dwell = max(c.Dwell, 0)
	r := resolved{
		Config:    c,
		bwBps:     c.DefaultBandwidth,
		svcMs:     ms(c.DefaultServiceTime),
		hopMs:     ms(c.HopCost),
		lossMs:    ms(c.LossPenalty),
		gainAbsMs: ms(c.MinGainAbs),
		budget:    max(1, int(c.MaxMove*float64(c.Slots))),
		capOn:     c.CapacityCap > 0,
		tieOn:     c.TieBand > 0,
		slowOn:    c.SlowStart > 0,
		panicOn:   c.Panic > 0,
	}
	return r, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
