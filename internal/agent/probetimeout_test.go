package agent

import (
	"testing"
	"time"

	"github.com/premirror/premirror/internal/probe"
)

// TestProbeTimeoutBacksOff: a probe waits a few RTTs of its path, at least
// 25 ms, and twice as long after every timeout in a row (at most a
// second), so a path whose RTT jumped past the timeout is measured slower
// within Fall probes instead of being declared down.
func TestProbeTimeoutBacksOff(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		est  probe.Estimate
		want time.Duration
	}{
		{"near path, floor", probe.Estimate{RTT: 3 * ms, Median: 3 * ms}, 25 * ms},
		{"three RTTs and four jitters", probe.Estimate{RTT: 20 * ms, Median: 18 * ms, Jitter: 2 * ms}, 68 * ms},
		{"the median when above the smoothed RTT", probe.Estimate{RTT: 10 * ms, Median: 30 * ms}, 90 * ms},
		{"one timeout", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 1}, 50 * ms},
		{"two timeouts: an 80 ms path answers in time", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 2}, 100 * ms},
		{"capped at a second", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 9}, time.Second},
		{"a far path is capped too", probe.Estimate{RTT: 500 * ms, Median: 500 * ms}, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := probeTimeout(c.est); got != c.want {
				t.Fatalf("probeTimeout(%+v) = %v, want %v", c.est, got, c.want)
			}
		})
	}
}
