package controller

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

// benchReport is one agent report: 16 resources × 4 regions × 2 mirrors.
func benchReport(now time.Time) *pb.Report {
	r := &pb.Report{StartUnixNano: now.Add(-time.Second).UnixNano(), EndUnixNano: now.UnixNano()}
	for res := range 16 {
		for reg := range 4 {
			for m := range 2 {
				r.Access = append(r.Access, &pb.AccessCount{ResourceId: uint32(res + 1), RegionId: uint32(reg + 1),
					MirrorId: uint32(m + 1), NewFlows: 3, Packets: 30, Bytes: 30000})
			}
		}
	}
	return r
}

// BenchmarkAccessReport is the replica's work per agent report (one per
// second per agent): the demand smoothing every report already paid for
// the routing policy (baseline), and the forecast aggregation added here
// with its share of the flusher's checks. It also reports the etcd writes
// per agent and hour the aggregation makes (1 h buckets, 1 min flush),
// against the 3,600 a write per report would make.
func BenchmarkAccessReport(b *testing.B) {
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	b.Run("baseline-smooth-demand", func(b *testing.B) {
		a := testConn(b)
		a.demand = map[[2]uint32]float64{}
		r := benchReport(t0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			now := t0.Add(time.Duration(i) * time.Second)
			r.StartUnixNano, r.EndUnixNano = now.Add(-time.Second).UnixNano(), now.UnixNano()
			a.smoothDemand(r, now)
		}
	})
	b.Run("record-access+flush-check", func(b *testing.B) {
		a := testConn(b)
		writes := 0
		r := benchReport(t0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			now := t0.Add(time.Duration(i) * time.Second)
			r.StartUnixNano, r.EndUnixNano = now.Add(-time.Second).UnixNano(), now.UnixNano()
			a.recordAccess(r, now)
			fl, err := a.pendingAccess(now, false)
			if err != nil {
				b.Fatal(err)
			}
			writes += len(fl.writes)
		}
		if hours := float64(b.N) / 3600; b.N >= 3600 {
			b.ReportMetric(float64(writes)/hours, "etcd-writes/agent-hour")
		}
	})
	// An agent that numbers its reports (counted once across sessions):
	// the same folding plus the sequence check, and a flush is one etcd
	// transaction holding its buckets and the run's record.
	b.Run("numbered-record-access+flush-check", func(b *testing.B) {
		a := testConn(b)
		a.runID = 0x5eed
		txns, puts := 0, 0
		r := benchReport(t0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			now := t0.Add(time.Duration(i) * time.Second)
			r.StartUnixNano, r.EndUnixNano = now.Add(-time.Second).UnixNano(), now.UnixNano()
			r.Seq = uint64(i + 1)
			a.recordAccess(r, now)
			fl, err := a.pendingAccess(now, false)
			if err != nil {
				b.Fatal(err)
			}
			if len(fl.writes) > 0 {
				txns++
				puts += len(fl.writes) + 1
			}
		}
		if hours := float64(b.N) / 3600; b.N >= 3600 {
			b.ReportMetric(float64(txns)/hours, "etcd-txns/agent-hour")
			b.ReportMetric(float64(puts)/hours, "etcd-puts/agent-hour")
		}
	})
}

// leaderBench is a controller (not serving) whose forecaster ingests
// aggregates written straight to etcd.
type leaderBench struct {
	c      *Controller
	clock  *fakeClock
	ref    *forecast.Engine // the baseline: the engine alone, same input
	agents int
	series []seriesKey
	t0     time.Time
	fence  fence
}

func newLeaderBench(b *testing.B, resources, regions, agents int) *leaderBench {
	b.Helper()
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	lb := &leaderBench{clock: newFakeClock(t0), agents: agents, t0: t0}
	ec := forecast.EngineConfig{Workers: 2}
	cli := etcdClient(b)
	b.Cleanup(func() { cli.Close() })
	c, err := New(Config{Name: "bench", TLS: shared.files, Prefix: testPrefix(b), Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: ec, Clock: lb.clock.now}}, cli)
	if err != nil {
		b.Fatal(err)
	}
	lb.c = c
	for i := range regions {
		c.view.sites[fmt.Sprint("site-", i)] = &pb.Site{Name: fmt.Sprint("site-", i), Id: uint32(i + 1)}
	}
	for i := range resources {
		c.view.res[fmt.Sprint("res-", i)] = &pb.Resource{Name: fmt.Sprint("res-", i), Id: uint32(i + 1)}
		for j := range regions {
			lb.series = append(lb.series, seriesKey{fmt.Sprint("res-", i), fmt.Sprint("site-", j)})
		}
	}
	if lb.ref, err = forecast.NewEngine(ec); err != nil {
		b.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), c.store.key(keyElection, "bench"), "bench")
	if err != nil {
		b.Fatal(err)
	}
	lb.fence = fence{key: c.store.key(keyElection, "bench"), rev: resp.Header.Revision}
	return lb
}

// count is the demand of series i in bucket k: a daily cycle.
func (lb *leaderBench) count(i, k int) uint64 { return uint64(50 + 40*((k+i)%24)/24 + i%7) }

// write stores bucket k's aggregates: each agent reports a share of every
// series.
func (lb *leaderBench) write(b *testing.B, k int) {
	b.Helper()
	start := lb.t0.Add(time.Duration(k) * time.Hour).Unix()
	per := make([][]*pb.AccessFlows, lb.agents)
	for i := range lb.series {
		res, reg := uint32(i/len(lb.c.view.sites)+1), uint32(i%len(lb.c.view.sites)+1)
		n := lb.count(i, k)
		for a := range lb.agents {
			part := n / uint64(lb.agents)
			if a == 0 {
				part += n % uint64(lb.agents)
			}
			if part > 0 {
				per[a] = append(per[a], &pb.AccessFlows{ResourceId: res, RegionId: reg, NewFlows: part})
			}
		}
	}
	for a, fl := range per {
		v, _ := proto.Marshal(&pb.AccessAggregate{Node: fmt.Sprint("edge-", a), BucketStartUnix: start, StepSeconds: 3600, Flows: fl})
		if _, err := lb.c.cli.Put(context.Background(), lb.c.store.fkey(accessKey(start, fmt.Sprint("edge-", a), "r", 1)), string(v)); err != nil {
			b.Fatal(err)
		}
	}
}

func (lb *leaderBench) close(b *testing.B, k int) {
	lb.clock.set(lb.t0.Add(time.Duration(k+1)*time.Hour + time.Minute))
	if closed, err := lb.c.fc.closeBuckets(context.Background()); err != nil || !closed {
		b.Fatalf("close bucket %d: %v %v", k, closed, err)
	}
}

func (lb *leaderBench) refBucket(b *testing.B, k int) {
	start := lb.t0.Add(time.Duration(k) * time.Hour)
	batch := make([]forecast.AccessSummary, len(lb.series))
	for i, s := range lb.series {
		batch[i] = forecast.AccessSummary{Resource: s.resource, Region: s.region, Start: start, NewFlows: lb.count(i, k)}
	}
	slices.SortFunc(batch, func(x, y forecast.AccessSummary) int {
		if c := strings.Compare(x.Resource, y.Resource); c != 0 {
			return c
		}
		return strings.Compare(x.Region, y.Region)
	})
	if _, err := lb.ref.Ingest(batch); err != nil {
		b.Fatal(err)
	}
	if err := lb.ref.Advance(start.Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLeaderBucket is the leader's work per bucket for 1,000 series
// (200 resources × 5 regions) reported by 100 agents, after a day of
// buckets: reading and summing the aggregates, ingesting and closing the
// bucket (baseline: the engine alone on the same summaries), publishing
// the 200 forecasts, and the checkpoint into etcd (bytes per series
// reported; they grow as the models' windows fill: set
// PREMIRROR_BENCH_WARM=700 to measure after four weeks of buckets).
func BenchmarkLeaderBucket(b *testing.B) {
	lb := newLeaderBench(b, 200, 5, 100)
	warm := 24
	if v, err := strconv.Atoi(os.Getenv("PREMIRROR_BENCH_WARM")); err == nil && v > 0 {
		warm = v
	}
	for k := range warm {
		lb.write(b, k)
		lb.close(b, k)
		lb.refBucket(b, k)
	}
	k := warm
	b.Run("baseline-engine-ingest+advance", func(b *testing.B) {
		for range b.N {
			lb.refBucket(b, k)
			k++
		}
	})
	k = warm
	b.Run("controller-read+ingest+advance", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			lb.write(b, k)
			b.StartTimer()
			lb.close(b, k)
			k++
		}
	})
	b.Run("publish", func(b *testing.B) {
		for range b.N {
			if err := lb.c.fc.publish(context.Background(), lb.fence); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("checkpoint", func(b *testing.B) {
		for range b.N {
			if err := lb.c.fc.checkpoint(context.Background(), lb.fence); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(testutilGauge(lb.c), "bytes")
		b.ReportMetric(testutilGauge(lb.c)/float64(len(lb.series)), "bytes/series")
	})
}

func testutilGauge(c *Controller) float64 { return testutil.ToFloat64(c.m.fcCheckpointBytes) }
