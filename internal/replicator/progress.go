package replicator

import (
	"sync"
	"time"
)

// Progress describes a transfer in flight.
type Progress struct {
	Volume string `json:"volume"`
	Peer   string `json:"peer"`
	Mode   Mode   `json:"mode"`
	// Done and Total are bytes of the volume covered (sent, skipped as
	// zero, or found already held) and to cover.
	Done  int64 `json:"done_bytes"`
	Total int64 `json:"total_bytes"`
	// Acked is bytes the peer has made durable.
	Acked int64 `json:"acked_bytes"`
	// WireBytes is bytes sent on the connection so far.
	WireBytes int64         `json:"wire_bytes"`
	Rate      float64       `json:"rate_bytes_per_second"`
	ETA       time.Duration `json:"eta_ns"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	Finished  bool          `json:"finished"`
}

// tracker turns byte counts into Progress: an exponentially weighted rate
// (time constant 2 s, so a schedule change shows within seconds) and an
// ETA, published to metrics and a callback at most every 100 ms.
type tracker struct {
	mu       sync.Mutex
	p        Progress
	start    time.Time
	lastT    time.Time
	lastDone int64
	cb       func(Progress)
	m        *Metrics
	wire     func() int64
	lastCB   time.Time
}

func newTracker(m *Metrics, volume, peer string, mode Mode, total int64, cb func(Progress), wire func() int64) *tracker {
	now := time.Now()
	t := &tracker{p: Progress{Volume: volume, Peer: peer, Mode: mode, Total: total}, start: now, lastT: now, cb: cb, m: m, wire: wire}
	t.publish(true)
	return t
}

func (t *tracker) add(done int64) {
	t.mu.Lock()
	t.p.Done += done
	t.update(false)
	t.mu.Unlock()
}

func (t *tracker) setAcked(b int64) {
	t.mu.Lock()
	t.p.Acked = b
	t.mu.Unlock()
}

func (t *tracker) update(force bool) {
	now := time.Now()
	dt := now.Sub(t.lastT).Seconds()
	if dt >= 0.1 || force {
		inst := float64(t.p.Done-t.lastDone) / max(dt, 1e-9)
		if t.p.Rate == 0 {
			t.p.Rate = inst
		} else {
			a := min(1, dt/2)
			t.p.Rate += a * (inst - t.p.Rate)
		}
		t.lastT, t.lastDone = now, t.p.Done
	}
	t.p.Elapsed = now.Sub(t.start)
	if t.p.Rate > 0 && t.p.Total > t.p.Done {
		t.p.ETA = time.Duration(float64(t.p.Total-t.p.Done) / t.p.Rate * float64(time.Second))
	} else {
		t.p.ETA = 0
	}
	if t.wire != nil {
		t.p.WireBytes = t.wire()
	}
	t.publish(force)
}

func (t *tracker) publish(force bool) {
	if t.m != nil {
		l := []string{t.p.Volume, t.p.Peer, string(t.p.Mode)}
		t.m.progDone.WithLabelValues(l...).Set(float64(t.p.Done))
		t.m.progTotal.WithLabelValues(l...).Set(float64(t.p.Total))
		t.m.progRate.WithLabelValues(l...).Set(t.p.Rate)
		t.m.progETA.WithLabelValues(l...).Set(t.p.ETA.Seconds())
	}
	if t.cb != nil && (force || time.Since(t.lastCB) >= 100*time.Millisecond) {
		t.lastCB = time.Now()
		t.cb(t.p)
	}
}

// finish publishes the final state.
func (t *tracker) finish() Progress {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el := time.Since(t.start).Seconds(); el > 0 {
		t.p.Rate = float64(t.p.Done) / el
	}
	t.p.Finished = true
	t.p.ETA = 0
	t.p.Elapsed = time.Since(t.start)
	if t.wire != nil {
		t.p.WireBytes = t.wire()
	}
	t.publish(true)
	return t.p
}
