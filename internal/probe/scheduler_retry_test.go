package probe

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type failingProber struct{}

func (failingProber) Probe(ctx context.Context, addr string) (time.Duration, error) {
	return 0, ErrTimeout
}

// TestFastRetries: after a failed probe the next two go out at the retry
// pace, so a dead path reaches three consecutive failures well within one
// interval; after that the interval applies again.
func TestFastRetries(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	s, err := NewScheduler(SchedulerConfig{
		Schedule: Schedule{Interval: 2 * time.Second, Jitter: -1},
		UDP:      failingProber{},
		Retry:    20 * time.Millisecond,
		OnResult: func(r Result) {
			if !errors.Is(r.Err, ErrTimeout) {
				t.Errorf("result %v", r.Err)
			}
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		},
		TimeoutFor: func(Target) time.Duration { return time.Millisecond },
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetTargets([]Target{{Mirror: 1, Kind: KindUDP, Addr: "192.0.2.1:9"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(at)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the fourth must wait for the interval
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 3 {
		t.Fatalf("%d probes in the window, want 3 (one, then two fast retries)", len(at))
	}
	if gap := at[2].Sub(at[0]); gap > time.Second {
		t.Fatalf("three failures took %v; fast retries should take ~40 ms", gap)
	}
}

// TestActiveTargetsProbedFaster: a target marked active is probed every
// Schedule.Active, the others every Interval; a target that becomes
// active is nudged at once, not after its long wait.
func TestActiveTargetsProbedFaster(t *testing.T) {
	c := &probeCounts{n: map[uint32]int{}}
	fp := &fakeProber{rtt: map[string]time.Duration{}}
	s, err := NewScheduler(SchedulerConfig{
		Schedule: Schedule{Interval: time.Hour, Active: 20 * time.Millisecond},
		UDP:      fp,
		OnResult: c.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := Target{Mirror: 1, Kind: KindUDP, Addr: "192.0.2.1:9"}
	b := Target{Mirror: 2, Kind: KindUDP, Addr: "192.0.2.2:9"}
	s.SetActive([]Target{a})
	s.SetTargets([]Target{a, b})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	got := c.get
	waitUntil := func(what string, ok func() bool) { t.Helper(); c.waitUntil(t, what, ok) }
	// An hour's interval: b (inactive) is not probed in this test unless
	// its first probe falls in it (one in a few hundred thousand); a is
	// probed every 20 ms.
	waitUntil("active target probed often", func() bool { return got(1) >= 10 })
	if n := got(2); n > 1 {
		t.Fatalf("inactive target probed %d times", n)
	}
	// b becomes active, a inactive: b is probed at once and often, a
	// stops after the probe it has scheduled.
	s.SetActive([]Target{b})
	waitUntil("newly active target probed often", func() bool { return got(2) >= 10 })
	before := got(1)
	time.Sleep(200 * time.Millisecond)
	if n := got(1) - before; n > 1 {
		t.Fatalf("target made inactive still probed %d times in 200 ms", n)
	}
}

// TestSurveyedTargetsProbedRarely: a surveyed target is probed every
// Schedule.Survey, the others every Interval; one that leaves the survey
// is nudged at once; Interval reports each target's period; an active
// target is never surveyed.
func TestSurveyedTargetsProbedRarely(t *testing.T) {
	pc := &probeCounts{n: map[uint32]int{}}
	fp := &fakeProber{rtt: map[string]time.Duration{}}
	sch := Schedule{Interval: 20 * time.Millisecond, Active: 10 * time.Millisecond, Survey: time.Hour}
	s, err := NewScheduler(SchedulerConfig{Schedule: sch, UDP: fp, OnResult: pc.add})
	if err != nil {
		t.Fatal(err)
	}
	a := Target{Mirror: 1, Kind: KindUDP, Addr: "192.0.2.1:9"}
	b := Target{Mirror: 2, Kind: KindUDP, Addr: "192.0.2.2:9"}
	c := Target{Mirror: 3, Kind: KindUDP, Addr: "192.0.2.3:9"}
	s.SetActive([]Target{c})
	s.SetSurvey([]Target{b, c})
	for tg, want := range map[Target]time.Duration{a: 20 * time.Millisecond, b: time.Hour, c: 10 * time.Millisecond} {
		if got := s.Interval(tg); got != want {
			t.Errorf("Interval(%d) = %v, want %v", tg.Mirror, got, want)
		}
	}
	s.SetTargets([]Target{a, b, c})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	got := pc.get
	waitUntil := func(what string, ok func() bool) { t.Helper(); pc.waitUntil(t, what, ok) }
	// b's first probe falls within one Interval, then it waits an hour.
	waitUntil("plain and active targets probed", func() bool { return got(1) >= 15 && got(3) >= 15 })
	if n := got(2); n > 1 {
		t.Fatalf("surveyed target probed %d times", n)
	}
	s.SetSurvey(nil)
	waitUntil("target out of the survey probed again", func() bool { return got(2) >= 5 })
}

// probeCounts counts the probes per mirror a scheduler reports.
type probeCounts struct {
	mu sync.Mutex
	n  map[uint32]int
}

func (c *probeCounts) add(r Result) {
	c.mu.Lock()
	c.n[r.Target.Mirror]++
	c.mu.Unlock()
}

func (c *probeCounts) get(m uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[m]
}

// waitUntil polls ok for up to 10 s, failing with the counts of mirrors 1–3.
func (c *probeCounts) waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: probes of mirrors 1, 2, 3: %d, %d, %d", what, c.get(1), c.get(2), c.get(3))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
