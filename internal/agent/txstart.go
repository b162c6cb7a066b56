package agent

import (
	"time"

	"github.com/premirror/premirror/internal/replicator/throttle"
)

// When to start a placed copy. The controller gives each replication task
// a deadline (when the copy should be in sync, from the demand forecast);
// this node knows its link's bandwidth schedule. It starts the transfer
// at the earliest moment that sends the fewest bytes during peak hours
// while still finishing by the deadline, and at once when no start
// finishes in time.

// DefaultLinkRate is the throughput assumed for a link whose schedule
// allows more than it can carry ("unlimited" windows, or rates above
// it) when replication.peers[].link_rate is not set: 1 Gbit/s. It only
// sizes the plan; the replicator sends as fast as the link goes.
const DefaultLinkRate int64 = 125_000_000

// maxStarts bounds the window boundaries considered before a deadline (a
// schedule changes a few times a day; this is years of boundaries).
const maxStarts = 4096

// StartChoice is when to start a transfer, and what the schedule implies.
type StartChoice struct {
	// Start is when to begin pushing.
	Start time.Time
	// Finish is when the transfer ends at the schedule's rates (zero: it
	// would not end within a week after the deadline, e.g. paused).
	Finish time.Time
	// PeakBytes is what is sent at less than the schedule's highest rate.
	PeakBytes int64
	// OnTime reports that Finish is not after the deadline.
	OnTime bool
}

// ChooseStart picks when to start sending n bytes over a link following
// s so that they arrive by deadline. The candidates are now, every
// window boundary of s (throttle.Schedule.NextChange) before the
// deadline, and the latest start (to the second) that still finishes by
// it; each is simulated at the schedule's rates, an unlimited rate
// (or one above linkRate) counting as linkRate (DefaultLinkRate when
// linkRate ≤ 0). Among the starts that finish by the deadline it returns
// the one sending the fewest peak bytes (bytes at less than the
// schedule's highest rate), the earliest on a tie; when none finishes in
// time, or the deadline has passed, it starts now.
func ChooseStart(s throttle.Schedule, linkRate int64, now, deadline time.Time, n int64) StartChoice {
	if linkRate <= 0 {
		linkRate = DefaultLinkRate
	}
	sim := simulator{s: s, link: linkRate}
	sim.top = sim.rate(s.Default)
	for _, w := range s.Windows {
		sim.top = max(sim.top, sim.rate(w.Rate))
	}
	var best *StartChoice
	for t, i := now, 0; !t.IsZero() && !t.After(deadline) && i < maxStarts; t, i = s.NextChange(t), i+1 {
		c := sim.run(t, deadline, deadline, n)
		if c.OnTime && (best == nil || c.PeakBytes < best.PeakBytes) {
			best = &c
		}
	}
	if best != nil && best.PeakBytes > 0 {
		// The latest start that still finishes in time: when the off-peak
		// room before the deadline is too short for the whole transfer,
		// starting just early enough sends only the remainder at peak
		// (a start between two boundaries). Starting later never finishes
		// earlier, so the on-time starts are [now, latest].
		lo, hi := best.Start, deadline
		for hi.Sub(lo) > time.Millisecond {
			mid := lo.Add(hi.Sub(lo) / 2)
			if sim.run(mid, deadline, deadline, n).OnTime {
				lo = mid
			} else {
				hi = mid
			}
		}
		// To the second: rounded up when that is still on time.
		c := sim.run(lo.Truncate(time.Second).Add(time.Second), deadline, deadline, n)
		if !c.OnTime {
			c = sim.run(lo.Truncate(time.Second), deadline, deadline, n)
		}
		if c.OnTime && c.PeakBytes < best.PeakBytes {
			best = &c
		}
	}
	if best != nil {
		return *best
	}
	// Late whatever we do: as soon as possible.
	return sim.run(now, deadline, later(now, deadline).Add(7*24*time.Hour), n)
}

// simulator replays a schedule's rates over a transfer.
type simulator struct {
	s    throttle.Schedule
	link int64
	top  int64 // the highest effective rate of the schedule
}

// rate is what a scheduled rate moves per second over the link.
func (m simulator) rate(r int64) int64 {
	if r == throttle.Unlimited || r > m.link {
		return m.link
	}
	return r
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// run sends n bytes from start, giving up after limit.
func (m simulator) run(start, deadline, limit time.Time, n int64) StartChoice {
	c := StartChoice{Start: start}
	rem := float64(n)
	var peak float64
	for t := start; ; {
		if rem <= 0 {
			c.Finish = t
			break
		}
		if t.After(limit) {
			break // not done by the limit: no finish
		}
		r := m.rate(m.s.RateAt(t))
		next := m.s.NextChange(t)
		if r > 0 {
			need := time.Duration(rem / float64(r) * float64(time.Second))
			if next.IsZero() || !t.Add(need).After(next) {
				if r < m.top {
					peak += rem
				}
				rem, t = 0, t.Add(need)
				continue
			}
			sent := float64(r) * next.Sub(t).Seconds()
			if r < m.top {
				peak += sent
			}
			rem -= sent
		}
		if next.IsZero() {
			break // paused for good
		}
		t = next
	}
	c.PeakBytes = int64(peak)
	c.OnTime = !c.Finish.IsZero() && !c.Finish.After(deadline)
	return c
}
