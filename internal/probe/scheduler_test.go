package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestScheduleBounds(t *testing.T) {
	tests := []struct {
		name   string
		s      Schedule
		lo, hi time.Duration
	}{
		{"default interval no jitter", Schedule{Jitter: -1}, 2 * time.Second, 2 * time.Second},
		{"defaults", Schedule{}, 1600 * time.Millisecond, 2400 * time.Millisecond},
		{"default jitter", Schedule{Interval: time.Second, Jitter: DefaultJitter}, 800 * time.Millisecond, 1200 * time.Millisecond},
		{"wide jitter", Schedule{Interval: 10 * time.Second, Jitter: 0.5}, 5 * time.Second, 15 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var sum time.Duration
			const n = 2000
			for range n {
				d := tt.s.Next(r)
				if d < tt.lo || d > tt.hi {
					t.Fatalf("Next = %v outside [%v, %v]", d, tt.lo, tt.hi)
				}
				sum += d
				if f := tt.s.First(r); f < 0 || f >= tt.s.interval() {
					t.Fatalf("First = %v outside one interval", f)
				}
			}
			mean := sum / n
			if math.Abs(float64(mean-tt.s.interval())) > 0.05*float64(tt.s.interval()) {
				t.Fatalf("mean wait %v, want ≈%v", mean, tt.s.interval())
			}
		})
	}
	for _, bad := range []Schedule{{Interval: -1}, {Jitter: 1}, {Jitter: 1.5}, {Active: -time.Second}, {Survey: -time.Second}} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// fakeProber answers from a per-address table; it stands in for the network
// so scheduler timing can be tested without sockets.
type fakeProber struct {
	mu   sync.Mutex
	rtt  map[string]time.Duration
	errs map[string]error
}

func (f *fakeProber) Probe(ctx context.Context, addr string) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs[addr]; err != nil {
		return 0, err
	}
	return f.rtt[addr], nil
}

type collector struct {
	mu  sync.Mutex
	got map[Target][]Result
}

func (c *collector) add(r Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got[r.Target] = append(c.got[r.Target], r)
}

func (c *collector) count(t Target) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got[t])
}

func TestSchedulerProbesAndRetargets(t *testing.T) {
	fp := &fakeProber{rtt: map[string]time.Duration{"a:1": 5 * time.Millisecond, "b:1": 9 * time.Millisecond}, errs: map[string]error{"c:1": ErrRefused}}
	col := &collector{got: map[Target][]Result{}}
	tbl, err := NewTable(EstimatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewScheduler(SchedulerConfig{
		Schedule: Schedule{Interval: 10 * time.Millisecond, Jitter: 0.2},
		TCP:      fp, UDP: fp, Metrics: NewMetrics(), Seed: 42,
		OnResult: func(r Result) { col.add(r); _ = tbl.Observe(r) },
	})
	if err != nil {
		t.Fatal(err)
	}
	a := Target{Mirror: 1, Kind: KindTCP, Addr: "a:1"}
	b := Target{Mirror: 2, Kind: KindUDP, Addr: "b:1"}
	c := Target{Mirror: 3, Kind: KindTCP, Addr: "c:1"}
	s.SetTargets([]Target{a, b})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	waitFor(t, func() bool { return col.count(a) >= 5 && col.count(b) >= 5 })
	s.SetTargets([]Target{b, c})
	waitFor(t, func() bool { return col.count(c) >= 4 })
	frozen := col.count(a)
	waitFor(t, func() bool { return col.count(b) >= col.count(a)+8 })
	if col.count(a) != frozen {
		t.Fatalf("removed target still probed: %d → %d", frozen, col.count(a))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
	s.SetTargets([]Target{a}) // after Run returned: must not start anything

	eb, _ := tbl.Get(b)
	if eb.Health != HealthUp || eb.RTT != 9*time.Millisecond {
		t.Fatalf("b estimate %+v", eb)
	}
	ec, _ := tbl.Get(c)
	if ec.Health != HealthDown || ec.Loss <= 0 || ec.Samples != 0 {
		t.Fatalf("c estimate %+v", ec)
	}
	for _, r := range col.got[c] {
		if !errors.Is(r.Err, ErrRefused) {
			t.Fatalf("c result err %v", r.Err)
		}
	}
	if n := len(tbl.Snapshot()); n != 3 {
		t.Fatalf("snapshot has %d targets, want 3", n)
	}
	tbl.Retain([]Target{b})
	if _, ok := tbl.Get(a); ok {
		t.Fatal("Retain kept a dropped target")
	}
}

func TestSchedulerMissingProberAndConfig(t *testing.T) {
	col := &collector{got: map[Target][]Result{}}
	s, err := NewScheduler(SchedulerConfig{Schedule: Schedule{Interval: 5 * time.Millisecond}, OnResult: col.add})
	if err != nil {
		t.Fatal(err)
	}
	tg := Target{Kind: KindUDP, Addr: "x:1"}
	s.SetTargets([]Target{tg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, func() bool { return col.count(tg) >= 2 })
	cancel()
	<-done
	if col.got[tg][0].Err == nil {
		t.Fatal("probe without a prober succeeded")
	}
	for _, bad := range []SchedulerConfig{
		{OnResult: nil},
		{OnResult: col.add, Timeout: -1},
		{OnResult: col.add, Schedule: Schedule{Jitter: 2}},
	} {
		if _, err := NewScheduler(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestCoordsShortlist(t *testing.T) {
	// Nodes on a plane; RTT = distance + 1 ms of access delay on each side.
	r := rand.New(rand.NewPCG(7, 7))
	type pt struct{ x, y float64 }
	pos := map[string]pt{}
	var clients, mirrors []string
	for i := range 40 {
		n := fmt.Sprintf("c%d", i)
		pos[n] = pt{r.Float64() * 100, r.Float64() * 100}
		clients = append(clients, n)
	}
	for i := range 30 {
		n := fmt.Sprintf("m%d", i)
		pos[n] = pt{r.Float64() * 100, r.Float64() * 100}
		mirrors = append(mirrors, n)
	}
	rtt := func(a, b string) time.Duration {
		d := math.Hypot(pos[a].x-pos[b].x, pos[a].y-pos[b].y) + 2
		return time.Duration(d * float64(time.Millisecond))
	}
	co := NewCoords()
	if got := co.Shortlist("c0", []string{"m1", "m2"}, 1); len(got) != 1 || got[0] != "m1" {
		t.Fatalf("unknown candidates keep input order, got %v", got)
	}
	// Every round each client probes 4 random mirrors and each mirror 2
	// random others: far fewer than all pairs.
	nodes := append(append([]string{}, clients...), mirrors...)
	for range 200 {
		for _, c := range nodes {
			for range 3 {
				m := mirrors[r.IntN(len(mirrors))]
				if err := co.Observe(c, m, rtt(c, m)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	hits := 0
	var relErr []float64
	for _, c := range clients {
		best := mirrors[0]
		for _, m := range mirrors {
			if rtt(c, m) < rtt(c, best) {
				best = m
			}
			est, ok := co.Estimate(c, m)
			if !ok {
				t.Fatalf("no estimate %s-%s", c, m)
			}
			relErr = append(relErr, math.Abs(float64(est-rtt(c, m)))/float64(rtt(c, m)))
		}
		for _, m := range co.Shortlist(c, mirrors, 5) {
			if m == best {
				hits++
			}
		}
	}
	if hits < len(clients)*9/10 {
		t.Fatalf("true nearest in the 5-shortlist for %d/%d clients, want ≥90%%", hits, len(clients))
	}
	slices.Sort(relErr)
	if med := relErr[len(relErr)/2]; med > 0.25 {
		t.Fatalf("median relative error %.2f, want ≤0.25", med)
	}
	if err := co.Observe("a", "b", time.Minute); err == nil {
		t.Fatal("RTT above Serf's 10 s limit accepted")
	}
}
