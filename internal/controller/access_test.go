package controller

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

func TestSplitFlows(t *testing.T) {
	h := time.Hour
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	b0 := t0.Unix()
	for _, c := range []struct {
		name       string
		n          uint64
		start, end time.Time
		want       map[int64]uint64
	}{
		{"inside one bucket", 10, t0.Add(time.Minute), t0.Add(2 * time.Minute), map[int64]uint64{b0: 10}},
		{"instant", 10, t0.Add(time.Minute), t0.Add(time.Minute), map[int64]uint64{b0: 10}},
		{"ends on the boundary", 10, t0.Add(59 * time.Minute), t0.Add(h), map[int64]uint64{b0: 10}},
		{"straddles 30/70", 10, t0.Add(-18 * time.Minute), t0.Add(42 * time.Minute), map[int64]uint64{b0 - 3600: 3, b0: 7}},
		{"three buckets", 9, t0.Add(-30 * time.Minute), t0.Add(h + 30*time.Minute), map[int64]uint64{b0 - 3600: 2, b0: 5, b0 + 3600: 2}},
		{"rounding keeps the total", 1, t0.Add(-30 * time.Minute), t0.Add(30 * time.Minute), map[int64]uint64{b0 - 3600: 1}},
		{"large counts", 1 << 40, t0.Add(-30 * time.Minute), t0.Add(30 * time.Minute), map[int64]uint64{b0 - 3600: 1 << 39, b0: 1 << 39}},
		{"zero", 0, t0, t0.Add(h), map[int64]uint64{}},
	} {
		got := map[int64]uint64{}
		var sum uint64
		splitFlows(c.n, c.start, c.end, h, func(b int64, n uint64) {
			got[b] += n
			sum += n
		})
		if sum != c.n {
			t.Errorf("%s: parts sum to %d, want %d", c.name, sum, c.n)
		}
		for b, n := range c.want {
			if got[b] != n {
				t.Errorf("%s: bucket %+d h got %d, want %d (all %v)", c.name, (b-b0)/3600, got[b], n, got)
			}
		}
	}
}

func TestReportSpan(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	ns := func(t time.Time) int64 { return t.UnixNano() }
	for _, c := range []struct {
		name       string
		r          *pb.Report
		start, end time.Time
	}{
		{"agent clock agrees", &pb.Report{StartUnixNano: ns(now.Add(-3 * time.Second)), EndUnixNano: ns(now.Add(-2 * time.Second))},
			now.Add(-3 * time.Second), now.Add(-2 * time.Second)},
		{"agent clock an hour behind: placed by ours", &pb.Report{StartUnixNano: ns(now.Add(-time.Hour - time.Second)), EndUnixNano: ns(now.Add(-time.Hour))},
			now.Add(-time.Second), now},
		{"agent clock ahead", &pb.Report{StartUnixNano: ns(now.Add(time.Hour)), EndUnixNano: ns(now.Add(time.Hour + time.Second))},
			now.Add(-time.Second), now},
		{"no start", &pb.Report{EndUnixNano: ns(now)}, now, now},
		{"no times", &pb.Report{}, now, now},
		{"start after end", &pb.Report{StartUnixNano: ns(now.Add(time.Second)), EndUnixNano: ns(now)}, now, now},
		{"away for a day: the last maxSpan", &pb.Report{StartUnixNano: ns(now.Add(-24 * time.Hour)), EndUnixNano: ns(now)},
			now.Add(-time.Hour), now},
	} {
		s, e := reportSpan(c.r, now, time.Hour)
		if !s.Equal(c.start) || !e.Equal(c.end) {
			t.Errorf("%s: [%v, %v), want [%v, %v)", c.name, s, e, c.start, c.end)
		}
	}
}

// testConn is a session of a controller that is configured but not
// serving: enough for the aggregation logic.
func testConn(t testing.TB) *agentConn {
	t.Helper()
	cfg := Config{Name: "r1", TLS: shared.files, ReportInterval: time.Second,
		Forecast: ForecastConfig{Engine: forecast.EngineConfig{Step: time.Hour}, FlushInterval: time.Minute, Grace: 5 * time.Second}}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &agentConn{c: c, node: "edge/1", site: "eu", status: &pb.AgentStatus{ConnectedUnixNano: 42},
		access: sessionAccess{buckets: map[int64]*bucketFlows{}}}
}

func TestPendingAccessRules(t *testing.T) {
	a := testConn(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	rep := func(at time.Time, n uint64) *pb.Report {
		return &pb.Report{StartUnixNano: at.Add(-time.Second).UnixNano(), EndUnixNano: at.UnixNano(),
			Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, MirrorId: 3, NewFlows: n}, {ResourceId: 1, RegionId: 2, MirrorId: 4, NewFlows: 1}}}
	}
	due := func(now time.Time, final bool) []*pb.AccessAggregate {
		t.Helper()
		fl, err := a.pendingAccess(now, final)
		if err != nil {
			t.Fatal(err)
		}
		var out []*pb.AccessAggregate
		for _, w := range fl.writes {
			agg := &pb.AccessAggregate{}
			if err := proto.Unmarshal(w.value, agg); err != nil {
				t.Fatal(err)
			}
			if b, err := parseAccessKey(strings.TrimPrefix(w.key, a.c.store.fprefix)); err != nil || b != agg.GetBucketStartUnix() {
				t.Fatalf("key %s: bucket %d %v", w.key, b, err)
			}
			out = append(out, agg)
		}
		return out
	}
	a.recordAccess(rep(t0.Add(10*time.Minute), 5), t0.Add(10*time.Minute))
	// First write at once (never written), then not before FlushInterval.
	if got := due(t0.Add(10*time.Minute), false); len(got) != 1 || got[0].GetFlows()[0].GetNewFlows() != 6 || got[0].GetNode() != "edge/1" {
		t.Fatalf("first flush: %v", got)
	}
	a.recordAccess(rep(t0.Add(10*time.Minute+30*time.Second), 4), t0.Add(10*time.Minute+30*time.Second))
	if got := due(t0.Add(10*time.Minute+30*time.Second), false); len(got) != 0 {
		t.Fatalf("rewritten within the flush interval: %v", got)
	}
	// The running total, not a delta, after the interval.
	if got := due(t0.Add(11*time.Minute), false); len(got) != 1 || got[0].GetFlows()[0].GetNewFlows() != 11 {
		t.Fatalf("second flush: %v", got)
	}
	// A report at the very end of the bucket is written as soon as the
	// bucket is over by a report interval.
	a.recordAccess(&pb.Report{Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, Packets: 7}}}, t0.Add(59*time.Minute+50*time.Second))
	if got := due(t0.Add(59*time.Minute+50*time.Second), false); len(got) != 0 {
		t.Fatalf("a report without new flows made a write: %v", got)
	}
	a.recordAccess(rep(t0.Add(59*time.Minute), 1), t0.Add(59*time.Minute+50*time.Second))
	if got := due(t0.Add(59*time.Minute+50*time.Second), false); len(got) != 1 {
		t.Fatalf("periodic flush: %v", got)
	}
	a.recordAccess(rep(t0.Add(time.Hour-time.Millisecond), 1), t0.Add(time.Hour))
	if got := due(t0.Add(time.Hour+500*time.Millisecond), false); len(got) != 0 {
		t.Fatalf("written before the bucket was over: %v", got)
	}
	if got := due(t0.Add(time.Hour+time.Second), false); len(got) != 1 || got[0].GetFlows()[0].GetNewFlows() != 15 {
		t.Fatalf("final flush: %v", got)
	}
	// Kept while the leader may read it, then evicted; later reports for
	// it are late.
	due(t0.Add(time.Hour+5*time.Second), false)
	if len(a.access.buckets) != 1 {
		t.Fatal("evicted within the grace")
	}
	due(t0.Add(time.Hour+12*time.Second), false)
	if len(a.access.buckets) != 0 {
		t.Fatal("not evicted after twice the grace")
	}
	a.recordAccess(rep(t0.Add(time.Hour-time.Second), 9), t0.Add(time.Hour+12*time.Second)) // agent clock within skew
	if len(a.access.buckets) != 0 {
		t.Fatal("a late report recreated an evicted bucket (its write would replace the total)")
	}
	if n := testutil.ToFloat64(a.c.m.accessFlows.WithLabelValues("late_at_replica")); n != 10 {
		t.Fatalf("late flows counted: %v, want 10", n)
	}
	// A count no link could carry in its one-second span (a wrapped
	// counter subtraction) is dropped and counted, the rest of the report
	// kept.
	a.recordAccess(rep(t0.Add(time.Hour+19*time.Second), math.MaxUint64-16), t0.Add(time.Hour+19*time.Second))
	if n := testutil.ToFloat64(a.c.m.accessFlows.WithLabelValues("implausible")); n != 1 {
		t.Fatalf("implausible counts: %v, want 1", n)
	}
	if got := due(t0.Add(time.Hour+19*time.Second), false); len(got) != 1 || len(got[0].GetFlows()) != 1 || got[0].GetFlows()[0].GetNewFlows() != 1 {
		t.Fatalf("after an implausible count: %v", got)
	}
	// A closing session writes everything dirty.
	a.recordAccess(rep(t0.Add(time.Hour+20*time.Second), 1), t0.Add(time.Hour+20*time.Second))
	a.recordAccess(rep(t0.Add(time.Hour+21*time.Second), 1), t0.Add(time.Hour+21*time.Second))
	if got := due(t0.Add(time.Hour+21*time.Second), true); len(got) != 1 || got[0].GetFlows()[0].GetNewFlows() != 5 { // 1 + 2 + 2
		t.Fatalf("final session flush: %v", got)
	}
}

func TestForecastConfigNamesTheField(t *testing.T) {
	for _, c := range []struct {
		cfg  ForecastConfig
		want string
	}{
		{ForecastConfig{Engine: forecast.EngineConfig{Step: 1500 * time.Millisecond}}, "forecast step"},
		{ForecastConfig{Grace: -time.Second}, "forecast grace"},
		{ForecastConfig{Retention: time.Second, Grace: time.Second}, "forecast retention"},
		{ForecastConfig{Prices: forecast.Prices{CopyPerByte: -1, ValuePerRequestSecond: 1}}, "copy_per_byte"},
		{ForecastConfig{Prices: forecast.Prices{CopyPerByte: 1}}, "value_per_request_second"},
		{ForecastConfig{ValueBytes: 100}, "value bytes"},
		{ForecastConfig{History: -1}, "history"},
	} {
		err := c.cfg.setDefaults(time.Second)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c.cfg, err, c.want)
		}
	}
	var ok ForecastConfig
	if err := ok.setDefaults(time.Second); err != nil || ok.Engine.Step != time.Hour || ok.FlushInterval != time.Minute ||
		ok.Grace != 5*time.Second || ok.Retention != 24*time.Hour || ok.History != 24 {
		t.Fatalf("defaults: %+v %v", ok, err)
	}
}

func TestCheckpointCorruptionIsRefused(t *testing.T) {
	cp := &pb.ForecastCheckpoint{Engine: []byte("PMFCSNAP..."), OpenBucketUnix: 3600, History: []*pb.SeriesHistory{{Resource: "r", Region: "g"}}}
	packed, err := packLevel(cp, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(packed)
	man := &pb.ForecastManifest{Chunks: 2, SizeBytes: uint64(len(packed)), Sha256: sum[:]}
	half := len(packed) / 2
	kvs := func(a, b []byte) []*mvccpb.KeyValue {
		return []*mvccpb.KeyValue{{Key: []byte("p/000000"), Value: a}, {Key: []byte("p/000001"), Value: b}}
	}
	if got, err := joinChunks(man, kvs(packed[:half], packed[half:]), "p/"); err != nil || !bytes.Equal(got, packed) {
		t.Fatalf("join: %v", err)
	}
	flipped := bytes.Clone(packed)
	flipped[half] ^= 1
	for name, in := range map[string][]*mvccpb.KeyValue{
		"bit flip":      kvs(flipped[:half], flipped[half:]),
		"missing chunk": kvs(packed[:half], nil)[:1],
		"short chunk":   kvs(packed[:half], packed[half:len(packed)-1]),
		"wrong order":   {{Key: []byte("p/000001"), Value: packed[half:]}, {Key: []byte("p/000000"), Value: packed[:half]}},
	} {
		if _, err := joinChunks(man, in, "p/"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := unpackCheckpoint(packed[:half]); err == nil {
		t.Error("truncated checkpoint decoded")
	}
	bad, _ := packLevel(&pb.ForecastCheckpoint{History: []*pb.SeriesHistory{{Resource: "r"}}}, 1)
	if _, err := unpackCheckpoint(bad); err == nil {
		t.Error("history of an unnamed series accepted")
	}
	// State file: a flipped byte is caught by its checksum.
	dir := t.TempDir()
	if err := writeStateFile(dir+"/s", packed, sum); err != nil {
		t.Fatal(err)
	}
	if got, err := readStateFile(dir + "/s"); err != nil || got.GetOpenBucketUnix() != 3600 {
		t.Fatalf("state file: %v %v", got, err)
	}
	if err := writeStateFile(dir+"/s", flipped, sum); err != nil {
		t.Fatal(err)
	}
	if _, err := readStateFile(dir + "/s"); err == nil {
		t.Fatal("corrupt state file accepted")
	}
}

// FuzzUnpackCheckpoint: a checkpoint from etcd or the state file never
// panics the decoder, and what it accepts is safe to use.
func FuzzUnpackCheckpoint(f *testing.F) {
	good, _ := packLevel(&pb.ForecastCheckpoint{Engine: []byte("x"), OpenBucketUnix: 7200, FeedsRevision: 3,
		History: []*pb.SeriesHistory{{Resource: "r", Region: "g", Buckets: []*pb.BucketObservation{{StartUnix: 3600, Observed: 4}}}}}, 1)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x01, 0x00, 0x00, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		cp, err := unpackCheckpoint(b)
		if err != nil {
			return
		}
		if cp.GetOpenBucketUnix() < 0 || cp.GetFeedsRevision() < 0 {
			t.Fatal("accepted a negative bucket or revision")
		}
		for _, h := range cp.GetHistory() {
			if h.GetResource() == "" || h.GetRegion() == "" {
				t.Fatal("accepted an unnamed series")
			}
		}
	})
}

// FuzzForecastRecord: a published forecast that passes the check can be
// scored and rendered without indexing past its arrays.
func FuzzForecastRecord(f *testing.F) {
	good := &pb.ResourceForecast{Resource: "disk", StepSeconds: 3600, OriginUnix: 3600,
		Regions: []*pb.RegionForecast{{Region: "eu", Q10: []float64{1, 2}, Q50: []float64{2, 3}, Q90: []float64{3, 4}},
			{Region: "us", Q10: []float64{0, 0}, Q50: []float64{1, 1}, Q90: []float64{2, 2}}},
		Shares: []*pb.LocationShares{{Shares: []float64{0.5, 0.5}}}}
	b, _ := pack(good)
	f.Add(b)
	raw, _ := proto.Marshal(good)
	f.Add(raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		rec := &pb.ResourceForecast{}
		if unpack(b, rec) != nil || checkForecastRecord(rec) != nil {
			return
		}
		d := demandOf(rec)
		if len(d) > 0 && len(d[0].Q) > 0 {
			req := forecast.ScoreRequest{Bytes: 1 << 20, Current: map[string]float64{d[0].Region: 0.05}, Samples: 64,
				Candidates: []forecast.Candidate{{Location: "x", Latency: map[string]float64{d[0].Region: 0.01}}}, Prices: DefaultPrices}
			if _, err := forecast.Score(d, req, time.Hour, 1); err != nil {
				t.Fatalf("score of an accepted record: %v", err)
			}
		}
		in := forecast.ExplainInput{Resource: rec.GetResource(), Step: time.Hour, Demand: d}
		if len(rec.GetShares()) > 0 {
			in.Shares = rec.GetShares()[0].GetShares()
		}
		_ = forecast.RenderExplain(in)
	})
}

// FuzzParseAccessKey: any key either parses to a non-negative bucket or is
// refused; what accessKey writes parses back.
func FuzzParseAccessKey(f *testing.F) {
	f.Add(accessKey(3600, "edge/eu", "r1", 42))
	f.Add("access/-00000003600/x")
	f.Add("access/")
	f.Fuzz(func(t *testing.T, key string) {
		b, err := parseAccessKey(key)
		if err == nil && b < 0 {
			t.Fatalf("%q: bucket %d", key, b)
		}
		if err == nil {
			if got, err := parseAccessKey(accessKey(b, key, key, 1)); err != nil || got != b {
				t.Fatalf("round trip of %d: %d %v", b, got, err)
			}
		}
	})
}

// FuzzRecordAccess: whatever a numbered agent reports (two reports, in
// order), a session counts each once: its through_seq never goes back,
// a report at or below it adds nothing, and what its buckets hold is
// what it counted received.
func FuzzRecordAccess(f *testing.F) {
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	ns := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	for _, rs := range [][2]*pb.Report{
		{{Seq: 1, StartUnixNano: ns(-time.Second), EndUnixNano: ns(0), Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, NewFlows: 5}}},
			{Seq: 1, Resend: true, StartUnixNano: ns(-time.Second), EndUnixNano: ns(0), Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, NewFlows: 5}}}},
		{{Seq: 7, StartUnixNano: ns(-2 * time.Hour), EndUnixNano: ns(time.Hour)},
			{Seq: 3, Access: []*pb.AccessCount{{ResourceId: 1, NewFlows: math.MaxUint64}, {RegionId: 4, NewFlows: 1}}}},
		{{Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, NewFlows: 9}}}, {Seq: math.MaxUint64, Resend: true}},
	} {
		a, _ := proto.Marshal(rs[0])
		b, _ := proto.Marshal(rs[1])
		f.Add(a, b)
	}
	f.Fuzz(func(t *testing.T, x, y []byte) {
		a := testConn(t)
		a.runID = 9
		held := func() (n uint64) {
			for _, bf := range a.access.buckets {
				for _, v := range bf.flows {
					n += v
				}
			}
			return n
		}
		for _, b := range [][]byte{x, y} {
			var r pb.Report
			if proto.Unmarshal(b, &r) != nil {
				continue
			}
			through, before := a.access.through, held()
			a.recordAccess(&r, t0)
			switch {
			case a.access.through < through:
				t.Fatalf("through_seq went back from %d to %d", through, a.access.through)
			case r.GetSeq() != 0 && r.GetSeq() <= through && held() != before:
				t.Fatalf("report %d at or below %d was counted", r.GetSeq(), through)
			case r.GetSeq() > through && a.access.through != r.GetSeq():
				t.Fatalf("report %d counted, through_seq %d", r.GetSeq(), a.access.through)
			}
		}
		if got, want := float64(held()), testutil.ToFloat64(a.c.m.accessFlows.WithLabelValues("received")); got != want {
			t.Fatalf("buckets hold %v new flows, %v received", got, want)
		}
	})
}

// FuzzCheckFeed: what a replica accepts from the admin API, the leader's
// engine accepts too (a stored feed never fails to apply).
func FuzzCheckFeed(f *testing.F) {
	f.Add(true, "start,end,name,kind,region\n2026-01-01,2026-01-02,x,holiday,eu\n")
	f.Add(false, "timestamp,region,temp_f\n2026-01-01 00:00,eu,41\n")
	f.Add(false, "timestamp,temp_f\n2026-01-01T00:00:00Z,\n")
	f.Fuzz(func(t *testing.T, events bool, csv string) {
		kind := pb.FeedKind_FEED_KIND_COVARIATES
		if events {
			kind = pb.FeedKind_FEED_KIND_EVENTS
		}
		req := &pb.FeedRequest{Kind: kind, Csv: []byte(csv)}
		if _, err := checkFeed(req, time.Hour, []string{"temp_f"}); err != nil {
			return
		}
		eng, err := forecast.NewEngine(forecast.EngineConfig{Window: 48, Horizon: 2, Hidden: 2, Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := applyFeed(eng, &pb.FeedRecord{Kind: kind, Csv: []byte(csv)}); err != nil {
			t.Fatalf("accepted by the replica, refused by the engine: %v", err)
		}
	})
}

// TestFailedLastWriteRetried: a bucket whose write fails is written again
// by the next flush, even when that write was its last (the bucket over
// for longer than the leader waits). Before, the flush that wrote it last
// also evicted it, and a failed write lost its counts ("write_failed").
func TestFailedLastWriteRetried(t *testing.T) {
	a := testConn(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	a.recordAccess(&pb.Report{StartUnixNano: t0.Add(58 * time.Minute).UnixNano(), EndUnixNano: t0.Add(59 * time.Minute).UnixNano(),
		Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, NewFlows: 7}}}, t0.Add(59*time.Minute))
	// The flush runs late: the bucket is over by more than the leader's
	// grace when it is written.
	late := t0.Add(time.Hour + time.Minute)
	fl, err := a.pendingAccess(late, false)
	if err != nil || len(fl.writes) != 1 || fl.writes[0].flows != 7 {
		t.Fatalf("first flush: %+v %v", fl, err)
	}
	a.markDirty(fl.writes[0]) // its write failed
	fl, err = a.pendingAccess(late.Add(time.Second), false)
	if err != nil || len(fl.writes) != 1 || fl.writes[0].flows != 7 {
		t.Fatalf("after a failed write: %+v %v, want the bucket written again", fl, err)
	}
	if n := testutil.ToFloat64(a.c.m.accessFlows.WithLabelValues("write_failed")); n != 0 {
		t.Fatalf("write_failed %v, want 0", n)
	}
	// Written: evicted by the next flush.
	if _, err := a.pendingAccess(late.Add(2*time.Second), false); err != nil || len(a.access.buckets) != 0 {
		t.Fatalf("written bucket kept: %v %v", a.access.buckets, err)
	}
}
