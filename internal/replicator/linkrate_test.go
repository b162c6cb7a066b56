package replicator

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/premirror/premirror/internal/replicator/throttle"
)

// meterClock drives a rateMeter with synthetic times.
type meterClock struct {
	m   *rateMeter
	now time.Time
}

// send sends frames of size bytes back to back at rate bytes/s for d,
// each followed by gap idle time.
func (c *meterClock) send(d time.Duration, rate float64, size int, gap time.Duration) {
	per := time.Duration(float64(size) / rate * float64(time.Second))
	for end := c.now.Add(d); c.now.Before(end); {
		c.m.begin(c.now)
		c.now = c.now.Add(per)
		c.m.end(c.now, size, true)
		c.now = c.now.Add(gap)
	}
}

// TestRateMeter: the estimate is the rate frames were sent at while
// backlogged, whatever the idle time between them; it follows a change
// over about a minute; overlapping frames count together; stretches in a
// paused window, across a window boundary or ending in failure are not
// counted; and it says when the schedule, not the path, set the pace.
func TestRateMeter(t *testing.T) {
	const mib = 1 << 20
	mon := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC) // a Monday
	peak := func(t *testing.T) throttle.Schedule {
		s, err := throttle.ParseSchedule("unlimited; * 10:00-12:00 0; * 12:00-13:00 4MiB")
		if err != nil {
			t.Fatal(err)
		}
		s.Location = time.UTC
		return s
	}
	for _, tc := range []struct {
		name  string
		sched func(*testing.T) throttle.Schedule // nil: unlimited
		run   func(c *meterClock)
		ok    bool
		rate  float64 // want, within tol
		tol   float64
		bound bool
	}{
		{name: "too little to tell", run: func(c *meterClock) { c.send(time.Second, 4*mib, mib, time.Second) }},
		{name: "idle gaps ignored", ok: true, rate: 4 * mib, tol: 0.001, run: func(c *meterClock) {
			c.send(5*time.Second, 4*mib, mib, 3*time.Second) // 0.25 s frames, 3 s apart
			c.now = c.now.Add(30 * time.Minute)
			c.send(5*time.Second, 4*mib, mib, 0)
		}},
		{name: "follows a drop within minutes", ok: true, rate: 1 * mib, tol: 0.02, run: func(c *meterClock) {
			c.send(2*time.Minute, 16*mib, 4*mib, 0)
			c.send(15*time.Minute, mib, mib, time.Second)
		}},
		{name: "old rate weighs e^-t/tau", ok: true, rate: (8*0.1353 + 0.8647) * mib, tol: 0.001, run: func(c *meterClock) {
			// 8 MiB/s for 10 min, then 1 MiB/s for 2 min: the old rate keeps e^-2 of the weight.
			c.send(10*time.Minute, 8*mib, 4*mib, 0)
			c.send(2*time.Minute, mib, mib, 0)
		}},
		{name: "overlapping frames count together", ok: true, rate: 2 * mib, tol: 0.005, run: func(c *meterClock) {
			for range 10 { // two sessions sharing the link, each at 1 MiB/s
				c.m.begin(c.now)
				c.m.begin(c.now)
				c.now = c.now.Add(time.Second)
				c.m.end(c.now, mib, true)
				c.m.end(c.now, mib, true)
				c.now = c.now.Add(time.Minute)
			}
			// Drawn-out overlap: folded every second, not only when idle.
			c.m.begin(c.now)
			for range 20 {
				c.m.begin(c.now)
				c.now = c.now.Add(time.Second)
				c.m.end(c.now, 2*mib, true)
			}
			c.m.end(c.now, 0, true)
		}},
		{name: "failed frames not counted", ok: true, rate: 4 * mib, tol: 0.001, run: func(c *meterClock) {
			c.send(3*time.Second, 4*mib, mib, 0)
			c.m.begin(c.now)
			c.now = c.now.Add(time.Minute) // stalled, then the connection died
			c.m.end(c.now, mib, false)
			c.send(3*time.Second, 4*mib, mib, 0)
		}},
		{name: "paused window and boundary not counted", sched: peak, ok: true, rate: 4 * mib, tol: 0.001, bound: true, run: func(c *meterClock) {
			c.now = mon.Add(59*time.Minute + 59*time.Second)
			c.m.begin(c.now) // waits out the 10:00-12:00 pause
			c.now = mon.Add(3*time.Hour + 250*time.Millisecond)
			c.m.end(c.now, mib, true)
			c.now = mon.Add(90 * time.Minute) // a frame sent from tokens left, in the pause
			c.m.begin(c.now)
			c.now = c.now.Add(3 * time.Second)
			c.m.end(c.now, mib, true)
			c.now = mon.Add(3*time.Hour + 10*time.Second)
			c.send(10*time.Second, 4*mib, mib, 0) // the 4 MiB/s window, at its rate
		}},
		{name: "schedule bound", sched: func(*testing.T) throttle.Schedule { return throttle.Fixed(4 * mib) }, ok: true,
			rate: 3.8 * mib, tol: 0.001, bound: true, run: func(c *meterClock) { c.send(10*time.Second, 3.8*mib, mib, 0) }},
		{name: "path bound under a schedule", sched: func(*testing.T) throttle.Schedule { return throttle.Fixed(4 * mib) }, ok: true,
			rate: mib, tol: 0.001, run: func(c *meterClock) { c.send(10*time.Second, mib, 256<<10, 0) }},
		{name: "unlimited never bound", ok: true, rate: 100 * mib, tol: 0.001, run: func(c *meterClock) { c.send(10*time.Second, 100*mib, 4*mib, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &rateMeter{}
			if tc.sched != nil {
				s := tc.sched(t)
				m.sched = func() throttle.Schedule { return s }
			}
			c := &meterClock{m: m, now: mon}
			tc.run(c)
			r, ok := m.rate()
			if ok != tc.ok {
				t.Fatalf("estimate %+v ok %v, want ok %v", r, ok, tc.ok)
			}
			if !ok {
				return
			}
			if got := float64(r.Rate); math.Abs(got-tc.rate) > tc.tol*tc.rate {
				t.Errorf("rate %.0f B/s, want %.0f ±%.1f%%", got, tc.rate, 100*tc.tol)
			}
			if r.ScheduleBound != tc.bound {
				t.Errorf("schedule bound %v, want %v", r.ScheduleBound, tc.bound)
			}
			if r.Busy < minLinkRateBusy || r.Busy > linkRateTau {
				t.Errorf("busy %v outside [%v, %v]", r.Busy, minLinkRateBusy, linkRateTau)
			}
			if m.active != 0 || r.Updated.After(c.now) || r.Updated.Before(mon) {
				t.Errorf("active %d, updated %v (clock %v)", m.active, r.Updated, c.now)
			}
		})
	}
}

// TestLinkRatesFollowThrottledCopies: a copy throttled to 8 MiB/s, an
// idle pause, then a delta cycle. The link's measured rate never exceeds
// the throttle (but for its burst) and is at least what the pushes
// averaged over their wall time (a loaded machine may deliver less than
// the throttle allows: the estimate must follow what was delivered); it
// does not move while the link is idle, is marked bound by the schedule
// exactly when it reached 90% of the throttle, and is exported as a
// gauge.
func TestLinkRatesFollowThrottledCopies(t *testing.T) {
	const rate = 8 << 20
	c := newCluster(t, "src", "dst")
	img := c.path("src.img")
	data := make([]byte, 20<<20) // random: compression must not shrink frames
	fillRandom(rand.New(rand.NewPCG(11, 7)), data)
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	peers := c.peers("dst")
	peers[0].Schedule = "8MiB"
	reg := prometheus.NewRegistry()
	src := c.start("src", Config{Registerer: reg, Volumes: []VolumeConfig{{Name: "vol", Path: img, Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "dst"}}}}, Peers: peers})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")})
	if r := src.LinkRates(); len(r) != 0 {
		t.Fatalf("rates %+v before any traffic", r)
	}
	var sent int64
	var wall time.Duration
	push := func(mode Mode) {
		t.Helper()
		res, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		waitCycle(t, dst, "vol", res.Cycle)
		sent += res.WireBytes
		wall += res.Duration
	}
	check := func(when string) LinkRate {
		t.Helper()
		r, ok := src.LinkRates()["dst"]
		if !ok {
			t.Fatalf("%s: no rate measured", when)
		}
		avg := float64(sent) / wall.Seconds()
		t.Logf("%s: %.2f MiB/s over %v busy (pushes averaged %.2f MiB/s over %v), bound %v", when, float64(r.Rate)/(1<<20),
			r.Busy.Round(time.Millisecond), avg/(1<<20), wall.Round(time.Millisecond), r.ScheduleBound)
		if float64(r.Rate) > 1.15*rate || float64(r.Rate) < 0.9*avg || r.Busy > wall {
			t.Fatalf("%s: measured %+v: want at most %d B/s (+15%%), at least 90%% of the pushes' %.0f B/s, busy at most %v", when, r, rate, avg, wall)
		}
		if r.ScheduleBound != (float64(r.Rate) >= scheduleBoundShare*rate) {
			t.Fatalf("%s: measured %+v: schedule bound wrong for a %d B/s schedule", when, r, rate)
		}
		return r
	}
	push(ModeFull)
	first := check("after the copy")
	time.Sleep(time.Second)
	if idle := src.LinkRates()["dst"]; idle != first {
		t.Fatalf("estimate moved while idle: %+v, was %+v", idle, first)
	}
	v, err := src.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	writeRandomBlocks(t, v, rand.New(rand.NewPCG(5, 7)), 6<<20/bs)
	push(ModeDelta)
	if r := check("after the delta"); !r.Updated.After(first.Updated) || r.Busy <= first.Busy {
		t.Fatalf("delta not measured: %+v, was %+v", r, first)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("metrics lint: %v %+v", err, problems)
	}
	if n, err := testutil.GatherAndCount(reg, "replicator_link_delivered_rate_bytes_per_second"); err != nil || n != 1 {
		t.Fatalf("delivered rate gauge: %d series, %v", n, err)
	}
}
