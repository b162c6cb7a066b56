package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MeasureRTT sends n UDP requests to a mirror service at addr ("ip:port")
// from host h, one every interval without waiting for replies (so slow
// paths do not stretch the run), and returns the RTT of each answered
// request, sorted ascending. Requests still unanswered 2 s after the last
// one was sent count as lost and are left out.
func MeasureRTT(ctx context.Context, h *NetNS, addr string, n int, interval time.Duration) ([]time.Duration, error) {
	if n <= 0 {
		return nil, errors.New("measure rtt: n must be positive")
	}
	conn, err := h.Dial(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("measure rtt: %w", err)
	}
	defer conn.Close()
	sent := make([]time.Time, n)
	var mu sync.Mutex
	rtts := make([]time.Duration, 0, n)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 1024)
		for {
			k, err := conn.Read(buf)
			now := time.Now()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					err = nil
				}
				done <- err
				return
			}
			r, err := ParseReply(string(buf[:k]))
			if err != nil {
				continue
			}
			i, err := strconv.Atoi(strings.TrimPrefix(r.Req, "rtt"))
			if err != nil || i < 0 || i >= n {
				continue
			}
			mu.Lock()
			if !sent[i].IsZero() {
				rtts = append(rtts, now.Sub(sent[i]))
				sent[i] = time.Time{} // a duplicate does not count twice
			}
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; i < n; i++ {
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if _, err := conn.Write([]byte("rtt" + strconv.Itoa(i))); err != nil {
			return nil, fmt.Errorf("measure rtt: send: %w", err)
		}
		if i < n-1 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	// Wait for the stragglers, then stop the reader.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		mu.Lock()
		got := len(rtts)
		mu.Unlock()
		if got == n {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = conn.SetReadDeadline(time.Unix(1, 0))
	if err := <-done; err != nil {
		return nil, fmt.Errorf("measure rtt: read: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(rtts)
	return rtts, nil
}

// RTTTolerance is the p50 RTT error this package states for a path with
// the given configured round-trip time (the sum of the one-way delays):
// the larger of 1 ms and 5%, on a machine with CPU to spare (measured
// 0.1–0.3 ms, see docs/BENCHMARKS.md). When every CPU is saturated the
// error follows the scheduler: p50 errors up to a few ms were measured.
// Errors are never negative: the switch never releases a frame early.
func RTTTolerance(configured time.Duration) time.Duration {
	return max(time.Millisecond, configured/20)
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1, nearest rank) of sorted
// durations; zero for an empty slice.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
