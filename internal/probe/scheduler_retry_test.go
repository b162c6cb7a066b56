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
