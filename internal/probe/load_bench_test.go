package probe

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkProbeLoad measures the probes an edge sends per second with a
// fleet of 1,000 mirrors, every mirror probed every Interval (the
// baseline) against a shortlist of 32 with the rest surveyed. Time is
// scaled down 100× (Interval 20 ms for the agent's 2 s, Survey 300 ms for
// its 30 s), so the metric is per 100 real seconds ÷ 100 = probes/s at the
// agent's defaults. Each run lasts one second of wall time whatever b.N.
func BenchmarkProbeLoad(b *testing.B) {
	const mirrors, shortlist, scale = 1000, 32, 100
	for _, tc := range []struct {
		name   string
		survey int
	}{{"all_every_interval", 0}, {fmt.Sprintf("shortlist_%d", shortlist), mirrors - shortlist}} {
		b.Run(tc.name, func(b *testing.B) {
			var n atomic.Int64
			s, err := NewScheduler(SchedulerConfig{
				Schedule: Schedule{Interval: 2 * time.Second / scale, Survey: 30 * time.Second / scale},
				UDP:      &fakeProber{rtt: map[string]time.Duration{}},
				OnResult: func(Result) { n.Add(1) },
			})
			if err != nil {
				b.Fatal(err)
			}
			var ts []Target
			for i := range mirrors {
				ts = append(ts, Target{Mirror: uint32(i + 1), Kind: KindUDP, Addr: fmt.Sprintf("192.0.2.%d:%d", i%250+1, 9000+i)})
			}
			s.SetSurvey(ts[:tc.survey])
			s.SetTargets(ts)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = s.Run(ctx); close(done) }()
			b.ResetTimer()
			time.Sleep(200 * time.Millisecond) // past the first, spread-out probes
			start, t0 := n.Load(), time.Now()
			time.Sleep(time.Second)
			rate := float64(n.Load()-start) / time.Since(t0).Seconds() / scale
			b.StopTimer()
			cancel()
			<-done
			b.ReportMetric(rate, "probes/s")
		})
	}
}
