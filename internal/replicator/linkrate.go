package replicator

import (
	"math"
	"sync"
	"time"

	"github.com/premirror/premirror/internal/replicator/throttle"
)

// Delivered-rate estimate of a peer link. A transfer planner that trusts
// the bandwidth schedule alone overestimates a link under delay control
// (which sends far below the schedule on a busy path) or a slow path; it
// needs what the link actually carries. Only backlogged time counts: the
// link is measured from the moment a frame is ready to send until it is
// on the socket, so time the sender spent reading or encoding, or with
// nothing to send, never pulls the estimate down.
const (
	// linkRateTau is the estimate's time constant in backlogged time:
	// it weighs about the last minute of sending.
	linkRateTau = time.Minute
	// minLinkRateBusy is the backlogged time an estimate must rest on
	// before it is reported: a few frames written into an empty socket
	// buffer say nothing about the path.
	minLinkRateBusy = 2 * time.Second
	// linkRateFold bounds how long an uninterrupted busy stretch (several
	// sessions overlapping) goes without updating the estimate.
	linkRateFold = time.Second
	// scheduleBoundShare: a link that delivered at least this share of
	// its schedule's rate was held back by the schedule, not the path.
	scheduleBoundShare = 0.9
)

// LinkRate is what the link to a peer delivered while it had data
// waiting to be sent (Node.LinkRates).
type LinkRate struct {
	// Rate is bytes per second of replication frames (compressed block
	// data and headers, before TLS) over about the last minute of
	// backlogged sending (an exponentially weighted, time-weighted
	// average, time constant one minute of backlogged time).
	Rate int64
	// Updated is when backlogged sending last added to the estimate; it
	// does not advance while the link is idle, so callers judge
	// freshness by it.
	Updated time.Time
	// Busy is the backlogged time the estimate rests on, weighted as the
	// estimate weighs it (at most linkRateTau, a minute).
	Busy time.Duration
	// ScheduleBound reports that over that time the link delivered at
	// least 90% of the rate its bandwidth schedule allowed (and the
	// schedule was mostly limited): the schedule, not the path or the
	// delay controller, set the pace, so Rate is a floor on what the
	// path carries rather than a cap.
	ScheduleBound bool
}

// rateMeter estimates a peer link's delivered rate. Every session to the
// peer feeds it, and overlapping frames count their bytes together over
// the union of their busy time, so concurrent sessions measure the
// link, not their share of it. It costs two uncontended lock operations
// per frame (a frame is up to 4 MiB) and allocates nothing.
type rateMeter struct {
	sched func() throttle.Schedule // the link's schedule; nil: unlimited

	mu     sync.Mutex
	active int       // frames being sent
	mark   time.Time // start of the busy time not yet folded in
	bytes  int64     // bytes of frames finished since mark
	// Exponentially decayed sums over backlogged time: bytes, seconds,
	// bytes the schedule allowed in limited windows, seconds in
	// unlimited ones.
	sumBytes, sumSec, sumAllowed, sumUnlim float64
	updated                                time.Time
}

// begin marks a frame ready to send at now.
func (m *rateMeter) begin(now time.Time) {
	m.mu.Lock()
	if m.active == 0 {
		m.mark, m.bytes = now, 0
	}
	m.active++
	m.mu.Unlock()
}

// end marks a frame of n bytes sent (ok) or failed at now. A failure
// that leaves the link idle discards the unfolded stretch: its time may
// be a dead connection's stall or a cancelled wait, not delivery.
func (m *rateMeter) end(now time.Time, n int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.active--
	if !ok {
		if m.active == 0 {
			m.bytes = 0
		}
		return
	}
	m.bytes += int64(n)
	if m.active == 0 || now.Sub(m.mark) >= linkRateFold {
		m.fold(now)
	}
}

// fold adds the busy time since mark and its bytes to the estimate. A
// stretch that began in a paused window, or crossed a window boundary,
// is dropped: its time includes waiting for the schedule, and the rate
// it saw belongs to no single window.
func (m *rateMeter) fold(now time.Time) {
	start, b := m.mark, m.bytes
	m.mark, m.bytes = now, 0
	sch := throttle.Fixed(throttle.Unlimited)
	if m.sched != nil {
		sch = m.sched()
	}
	r := sch.RateAt(start)
	if next := sch.NextChange(start); r == 0 || (!next.IsZero() && next.Before(now)) {
		return
	}
	// Each instant of the stretch weighs e^(-age/tau): the stretch as a
	// whole weighs tau·(1-d)/sec per second (1 for an instant, where a
	// frame that ended with another one lands).
	sec := max(now.Sub(start).Seconds(), 0)
	d, k := 1.0, 1.0
	if sec > 0 {
		d = math.Exp(-sec / linkRateTau.Seconds())
		k = linkRateTau.Seconds() * -math.Expm1(-sec/linkRateTau.Seconds()) / sec
	}
	m.sumBytes = m.sumBytes*d + k*float64(b)
	m.sumSec = m.sumSec*d + k*sec
	m.sumAllowed *= d
	m.sumUnlim *= d
	if r == throttle.Unlimited {
		m.sumUnlim += k * sec
	} else {
		m.sumAllowed += k * float64(r) * sec
	}
	m.updated = now
}

// rate returns the estimate; ok is false until minLinkRateBusy of
// backlogged sending was measured.
func (m *rateMeter) rate() (LinkRate, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sumSec < minLinkRateBusy.Seconds() {
		return LinkRate{}, false
	}
	return LinkRate{
		Rate:    int64(m.sumBytes / m.sumSec),
		Updated: m.updated,
		Busy:    time.Duration(m.sumSec * float64(time.Second)),
		// Unlimited time cannot bind; a link mostly in limited windows
		// is bound when it sent about what they allowed.
		ScheduleBound: m.sumUnlim < (1-scheduleBoundShare)*m.sumSec && m.sumBytes >= scheduleBoundShare*m.sumAllowed,
	}, true
}

// LinkRates returns, per peer name, what the link to each peer delivered
// while backlogged, for peers measured long enough (two seconds of
// backlogged sending). Copies and delta cycles feed it; interactive
// quorum traffic (not throttled) does not. Planners should take Rate as
// what the path carries when it is fresh (Updated) and not
// ScheduleBound.
func (n *Node) LinkRates() map[string]LinkRate {
	n.mu.Lock()
	peers := make([]*nodePeer, 0, len(n.peers))
	for _, p := range n.peers {
		peers = append(peers, p)
	}
	n.mu.Unlock()
	out := make(map[string]LinkRate, len(peers))
	for _, p := range peers {
		if r, ok := p.delivered.rate(); ok {
			out[p.cfg.Name] = r
		}
	}
	return out
}
