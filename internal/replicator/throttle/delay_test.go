package throttle

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC) // a Monday

// feed sends one sample every step for d with rtt(i) and returns the last
// rate.
func feed(c *Controller, start time.Time, step, d time.Duration, capRate int64, rtt func(i int) time.Duration) (int64, time.Time) {
	var r int64
	now := start
	for i := 0; now.Sub(start) < d; i++ {
		r = c.Observe(now, rtt(i), capRate)
		now = now.Add(step)
	}
	return r, now
}

func constRTT(d time.Duration) func(int) time.Duration { return func(int) time.Duration { return d } }

func TestControllerTable(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name string
		cfg  DelayConfig
		run  func(t *testing.T, c *Controller) // asserts
	}{
		{"idle path climbs to the cap", DelayConfig{}, func(t *testing.T, c *Controller) {
			r, _ := feed(c, t0, 20*time.Millisecond, 20*time.Second, 50*mib, constRTT(40*time.Millisecond))
			if r != 50*mib {
				t.Fatalf("rate %d after 20 s on an idle path, want the cap %d", r, 50*mib)
			}
			if q := c.QueueDelay(); q != 0 {
				t.Fatalf("queueing delay %v on a constant RTT", q)
			}
		}},
		{"idle path without a cap climbs without bound but finitely", DelayConfig{}, func(t *testing.T, c *Controller) {
			r, _ := feed(c, t0, 20*time.Millisecond, 10*time.Minute, Unlimited, constRTT(40*time.Millisecond))
			if r != int64(maxRate) {
				t.Fatalf("rate %d, want the bound %d", r, int64(maxRate))
			}
		}},
		{"rising queueing delay makes the rate fall to the floor", DelayConfig{MinRate: 2 * mib}, func(t *testing.T, c *Controller) {
			r, now := feed(c, t0, 20*time.Millisecond, 20*time.Second, 100*mib, constRTT(40*time.Millisecond))
			if r != 100*mib {
				t.Fatalf("did not climb: %d", r)
			}
			var prev int64 = r
			for i := 1; i <= 200; i++ {
				// Delay rises 4 ms per sample (above target after 7) to
				// 200 ms of queue, then stays.
				r = c.Observe(now, 40*time.Millisecond+time.Duration(min(i, 50))*4*time.Millisecond, 100*mib)
				now = now.Add(20 * time.Millisecond)
				if i > 10 && r > prev {
					t.Fatalf("sample %d: rate rose %d -> %d while the queue grows", i, prev, r)
				}
				prev = r
			}
			if r != 2*mib {
				t.Fatalf("rate %d under a 200 ms queue, want the floor %d", r, 2*mib)
			}
			if q := c.QueueDelay(); q < 150*time.Millisecond {
				t.Fatalf("queueing delay %v, want about 200ms", q)
			}
		}},
		{"delay at target holds the rate", DelayConfig{}, func(t *testing.T, c *Controller) {
			_, now := feed(c, t0, 20*time.Millisecond, time.Second, Unlimited, constRTT(40*time.Millisecond))
			// The current filter needs a few samples to see the queue.
			_, now = feed(c, now, 20*time.Millisecond, 100*time.Millisecond, Unlimited, constRTT(65*time.Millisecond))
			before := c.Rate(Unlimited)
			r, _ := feed(c, now, 20*time.Millisecond, 5*time.Second, Unlimited, constRTT(65*time.Millisecond))
			if r != before {
				t.Fatalf("rate moved %d -> %d at exactly the target delay", before, r)
			}
		}},
		{"route change re-learns the base within the window", DelayConfig{}, func(t *testing.T, c *Controller) {
			_, now := feed(c, t0, 100*time.Millisecond, time.Minute, 50*mib, constRTT(20*time.Millisecond))
			// The path gets 80 ms longer: at first that reads as queueing.
			r, now := feed(c, now, 100*time.Millisecond, 30*time.Second, 50*mib, constRTT(100*time.Millisecond))
			if q := c.QueueDelay(); q != 80*time.Millisecond || r != DefaultMinRate {
				t.Fatalf("just after the change: queue %v rate %d, want 80ms and the floor", q, r)
			}
			r, _ = feed(c, now, 100*time.Millisecond, 11*time.Minute, 50*mib, constRTT(100*time.Millisecond))
			if b, q := c.BaseDelay(), c.QueueDelay(); b != 100*time.Millisecond || q != 0 || r != 50*mib {
				t.Fatalf("after the window: base %v queue %v rate %d, want 100ms, 0, the cap", b, q, r)
			}
		}},
		{"a base learned minutes ago survives a busy period", DelayConfig{}, func(t *testing.T, c *Controller) {
			_, now := feed(c, t0, 100*time.Millisecond, 10*time.Second, 50*mib, constRTT(20*time.Millisecond))
			feed(c, now, 100*time.Millisecond, 5*time.Minute, 50*mib, constRTT(60*time.Millisecond))
			if b := c.BaseDelay(); b != 20*time.Millisecond {
				t.Fatalf("base %v after 5 busy minutes, want 20ms", b)
			}
		}},
		{"the floor holds under any queue", DelayConfig{MinRate: 3 * mib}, func(t *testing.T, c *Controller) {
			c.Observe(t0, 10*time.Millisecond, 50*mib)
			r, _ := feed(c, t0.Add(time.Millisecond), 10*time.Millisecond, 10*time.Second, 50*mib, constRTT(time.Hour))
			if r != 3*mib {
				t.Fatalf("rate %d, want the floor", r)
			}
		}},
		{"a cap below the floor wins", DelayConfig{MinRate: 3 * mib}, func(t *testing.T, c *Controller) {
			r, _ := feed(c, t0, 10*time.Millisecond, 5*time.Second, mib, constRTT(10*time.Millisecond))
			if r != mib {
				t.Fatalf("rate %d, want the schedule's %d", r, mib)
			}
		}},
		{"a paused window stays paused and keeps the rate", DelayConfig{}, func(t *testing.T, c *Controller) {
			_, now := feed(c, t0, 20*time.Millisecond, 20*time.Second, 10*mib, constRTT(30*time.Millisecond))
			r, now := feed(c, now, 20*time.Millisecond, 5*time.Second, 0, constRTT(30*time.Millisecond))
			if r != 0 || c.Rate(0) != 0 {
				t.Fatalf("paused: rate %d", r)
			}
			if r := c.Observe(now, 30*time.Millisecond, 10*mib); r != 10*mib {
				t.Fatalf("after the pause: %d, want the rate from before it", r)
			}
		}},
		{"a schedule change takes effect at once", DelayConfig{}, func(t *testing.T, c *Controller) {
			feed(c, t0, 20*time.Millisecond, 20*time.Second, 40*mib, constRTT(30*time.Millisecond))
			if r := c.Rate(5 * mib); r != 5*mib {
				t.Fatalf("lowered cap: %d", r)
			}
			// Raising the cap starts from the rate in force, not a jump.
			if r := c.Observe(t0.Add(20*time.Second), 30*time.Millisecond, 80*mib); r > 41*mib {
				t.Fatalf("raised cap: jumped to %d", r)
			}
		}},
		{"zero, negative and huge samples", DelayConfig{}, func(t *testing.T, c *Controller) {
			for i, d := range []time.Duration{0, -time.Second, math.MaxInt64, 1, 0, math.MaxInt64} {
				r := c.Observe(t0.Add(time.Duration(i)*time.Second), d, Unlimited)
				if r < DefaultMinRate || r > int64(maxRate) {
					t.Fatalf("sample %v: rate %d", d, r)
				}
			}
			if math.IsNaN(c.rate) || math.IsInf(c.rate, 0) {
				t.Fatalf("rate %v", c.rate)
			}
		}},
		{"time going backwards moves nothing", DelayConfig{}, func(t *testing.T, c *Controller) {
			c.Observe(t0, 10*time.Millisecond, Unlimited)
			r0 := c.Observe(t0.Add(time.Second), 10*time.Millisecond, Unlimited)
			if r := c.Observe(t0, 10*time.Millisecond, Unlimited); r != r0 {
				t.Fatalf("rate %d -> %d on a sample from the past", r0, r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, NewController(tt.cfg)) })
	}
}

// TestControllerBottleneck closes the loop over a model of a bottleneck
// queue: the controlled sender shares a 4 MB/s path with 60 ms base RTT.
// In steady state the queueing delay must stay near the target and the
// link must stay busy.
func TestControllerBottleneck(t *testing.T) {
	for _, target := range []time.Duration{10 * time.Millisecond, 25 * time.Millisecond, 100 * time.Millisecond} {
		c := NewController(DelayConfig{Target: target})
		const capacity, base = 4e6, 60 * time.Millisecond
		step := 20 * time.Millisecond
		var queue, sent float64 // bytes
		// The sender sees the queue one RTT late, through a smoothed RTT.
		var hist []time.Duration
		srtt := base
		var maxQ time.Duration
		now := t0
		for i := 0; i < 3000; i++ { // 60 s
			r := float64(c.Rate(Unlimited))
			queue = math.Max(0, queue+(r-capacity)*step.Seconds())
			rtt := base + time.Duration(queue/capacity*float64(time.Second))
			hist = append(hist, rtt)
			// The newest feedback to arrive: of a packet sent at j whose
			// round trip has ended by now.
			seen := base
			for j := len(hist) - 1; j >= 0; j-- {
				if time.Duration(j)*step+hist[j] <= time.Duration(i)*step {
					seen = hist[j]
					break
				}
			}
			srtt = srtt + (seen-srtt)/2
			c.Observe(now, srtt, Unlimited)
			now = now.Add(step)
			if i >= 1500 {
				// The link is busy while a queue drains.
				sent += math.Min(capacity, r+queue/step.Seconds()) * step.Seconds()
				maxQ = max(maxQ, rtt-base)
			}
		}
		util := sent / (capacity * 30)
		t.Logf("target %v: steady-state max queueing delay %v, utilisation %.2f", target, maxQ, util)
		// The sender sees the queue one round trip late, so it may
		// overshoot by what it adds in half a base RTT.
		if bound := 3*target + base/2; maxQ > bound || util < 0.6 {
			t.Errorf("target %v: max queueing delay %v (want <= %v), utilisation %.2f (want >= 0.6)", target, maxQ, bound, util)
		}
	}
}

// TestLimiterDelayControl: the limiter's rate follows the controller under
// the schedule's cap, and a rate increase wakes a waiter at once.
func TestLimiterDelayControl(t *testing.T) {
	clk := newFakeClock(t0)
	l := NewLimiter(Fixed(64<<20), clk)
	if q := l.Quantum(); q != 0 {
		t.Fatalf("quantum %d without control", q)
	}
	l.SetDelayControl(NewController(DelayConfig{MinRate: 1 << 10}))
	if r := l.Rate(); r != 1<<10 {
		t.Fatalf("controlled rate starts at %d, want the floor", r)
	}
	if q := l.Quantum(); q != 16<<10 {
		t.Fatalf("quantum %d at 1 KiB/s, want 16 KiB", q)
	}
	// The bucket starts empty: at 1 KiB/s, 16 KiB is a 16 s sleep. The
	// clock moves only through the test, so the waiter can finish
	// earlier only if rate increases wake it.
	start := clk.Now()
	done := make(chan error, 1)
	go func() { done <- l.Wait(context.Background(), 16<<10) }()
	clk.waitSleepers(t, 1)
	finished := false
	for i := 0; i < 120 && !finished; i++ {
		clk.Advance(100 * time.Millisecond)
		l.ObserveRTT(30 * time.Millisecond)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		case <-time.After(2 * time.Millisecond):
		}
	}
	if !finished {
		t.Fatal("waiter still asleep after 12 virtual seconds although the rate rose")
	}
	if el := clk.Now().Sub(start); el >= 16*time.Second {
		t.Fatalf("waiter finished after %v: it slept out the wait computed at the floor", el)
	}
	for range 700 {
		clk.Advance(100 * time.Millisecond)
		l.ObserveRTT(30 * time.Millisecond)
	}
	rate, capRate, q, b, ok := l.DelayState()
	if !ok || rate != 64<<20 || capRate != 64<<20 || q != 0 || b != 30*time.Millisecond {
		t.Fatalf("state %d %d %v %v %v, want the cap reached on an idle path", rate, capRate, q, b, ok)
	}
	l.SetSchedule(Fixed(0))
	if r := l.Rate(); r != 0 {
		t.Fatalf("paused schedule: rate %d", r)
	}
	l.SetDelayControl(nil)
	l.SetSchedule(Fixed(5 << 20))
	if r := l.Rate(); r != 5<<20 {
		t.Fatalf("control off: rate %d", r)
	}
}

// manualClock moves only when the test advances it, firing due timers, so
// a waiter progresses only through wake-ups or the test's advances.
type manualClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []manualTimer
	waiters chan struct{}
}

type manualTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *manualClock {
	return &manualClock{now: now, waiters: make(chan struct{}, 1024)}
}

func (c *manualClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.timers = append(c.timers, manualTimer{c.now.Add(d), ch})
	c.waiters <- struct{}{}
	return ch
}

// Advance moves time on without firing timers further than d: a waiter
// that slept at an old rate would still be asleep.
func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if !tm.at.After(c.now) {
			tm.ch <- c.now
			continue
		}
		kept = append(kept, tm)
	}
	c.timers = kept
}

// waitSleepers blocks until n calls to After happened.
func (c *manualClock) waitSleepers(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-c.waiters:
		case <-time.After(5 * time.Second):
			t.Fatal("no waiter went to sleep")
		}
	}
}
