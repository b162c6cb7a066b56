package controller

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

// fakeClock is forecasting's clock in these tests: buckets are real hours
// (the engine's seasonal design is built for them), and the test moves
// time bucket by bucket instead of waiting.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time  { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }
func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.set(t)
	return c
}

// testEngineConfig is small enough to close a bucket in milliseconds.
func testEngineConfig() forecast.EngineConfig {
	return forecast.EngineConfig{Step: time.Hour, Window: 48, Horizon: 6, Hidden: 4, Workers: 1}
}

func forecastTweak(clock *fakeClock) func(*Config) {
	return func(c *Config) {
		c.Forecast = ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second, Tick: 20 * time.Millisecond, Clock: clock.now}
	}
}

// forecastObjects: three sites with a mirror host each; disk lives on
// paris only, so us (nyc) and asia (tokyo) are candidates.
func forecastObjects() *pb.Objects {
	return &pb.Objects{
		Sites: []*pb.Site{
			{Name: "eu", ClientPrefixes: []string{"10.1.0.0/16"}, Location: &pb.Location{Latitude: 48.85, Longitude: 2.35}},
			{Name: "us", ClientPrefixes: []string{"10.2.0.0/16"}, Location: &pb.Location{Latitude: 40.71, Longitude: -74.0}},
			{Name: "asia", ClientPrefixes: []string{"10.3.0.0/16"}, Location: &pb.Location{Latitude: 35.68, Longitude: 139.69}},
		},
		Mirrors: []*pb.Mirror{
			{Name: "paris", Site: "eu", Address: "192.0.2.10"},
			{Name: "nyc", Site: "us", Address: "192.0.2.20"},
			{Name: "tokyo", Site: "asia", Address: "192.0.2.30"},
		},
		Resources: []*pb.Resource{{Name: "disk", Vips: []string{"203.0.113.5"}, Ports: []uint32{443},
			Protocol: pb.Protocol_PROTOCOL_TCP, Origin: "paris", SizeBytes: 1 << 30}},
	}
}

// forecastRig is a forecasting leader on a fake clock with forecastObjects
// applied.
type forecastRig struct {
	prefix string
	t0     time.Time
	clock  *fakeClock
	r1     *replica
}

// newForecastRig starts r1 with forecastTweak plus extra and waits until
// it leads.
func newForecastRig(t *testing.T, extra func(*Config)) *forecastRig {
	t.Helper()
	g := &forecastRig{prefix: testPrefix(t), t0: time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)}
	g.clock = newFakeClock(g.t0)
	g.r1 = startReplica(t, "r1", g.prefix, g.tweak(extra))
	waitFor(t, "r1 leads", 10*time.Second, func() bool { return g.r1.c.Leader() == "r1" })
	applyObjects(t, g.r1.addr, forecastObjects())
	return g
}

func (g *forecastRig) tweak(extra func(*Config)) func(*Config) {
	return func(c *Config) {
		forecastTweak(g.clock)(c)
		if extra != nil {
			extra(c)
		}
	}
}

// ids reads the IDs the desired state gives the agents.
func ids(t *testing.T, a *fakeAgent) (resource uint32, region map[string]uint32) {
	t.Helper()
	waitFor(t, "desired state with the objects", 10*time.Second, func() bool { return len(a.current().GetResources()) > 0 })
	st := a.current()
	region = map[string]uint32{}
	for _, r := range st.GetRegions() {
		region[r.GetName()] = r.GetId()
	}
	return st.GetResources()[0].GetId(), region
}

func received(rs ...*replica) float64 {
	var n float64
	for _, r := range rs {
		n += testutil.ToFloat64(r.c.m.accessFlows.WithLabelValues("received"))
	}
	return n
}

// bucketTotal sums the aggregates stored for bucket b.
func bucketTotal(t *testing.T, cli *clientv3.Client, st *Store, b int64) (uint64, int) {
	t.Helper()
	resp, err := cli.Get(context.Background(), st.fkey(accessBucketKey(b)), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, kv := range resp.Kvs {
		agg := &pb.AccessAggregate{}
		if err := proto.Unmarshal(kv.Value, agg); err != nil {
			t.Fatal(err)
		}
		for _, f := range agg.GetFlows() {
			n += f.GetNewFlows()
		}
	}
	return n, len(resp.Kvs)
}

// bucketRun drives buckets through the controller: the agents report
// what each step asks, the test then moves the clock past the bucket (the
// replicas write their final totals) and past the grace (the leader closes
// it) and waits until the forecast published for it is visible.
type bucketRun struct {
	t      *testing.T
	clock  *fakeClock
	t0     time.Time
	cli    *clientv3.Client
	st     *Store
	admin  pb.AdminClient
	reps   []*replica
	sent   float64
	ref    *forecast.Engine // fed the same summaries, for exact comparison
	refSum map[int64]map[seriesKey]uint64
}

type flows struct {
	a        *fakeAgent
	resource uint32
	region   uint32
	name     string // region name (for the reference engine)
	n        uint64
}

func (br *bucketRun) bucket(k int, fs ...flows) {
	t := br.t
	t.Helper()
	start := br.t0.Add(time.Duration(k) * time.Hour)
	br.clock.set(start.Add(10 * time.Minute))
	var total uint64
	sums := map[seriesKey]uint64{}
	for _, f := range fs {
		f.a.addAccess(f.resource, f.region, f.n)
		total += f.n
		sums[seriesKey{"disk", f.name}] += f.n
	}
	br.sent += float64(total)
	waitFor(t, "replicas received the counts", 10*time.Second, func() bool { return received(br.reps...) == br.sent })
	// Over (final writes) but within the grace.
	br.clock.set(start.Add(time.Hour + time.Second))
	waitFor(t, "final aggregates written", 10*time.Second, func() bool {
		n, _ := bucketTotal(t, br.cli, br.st, start.Unix())
		return n == total
	})
	br.clock.set(start.Add(time.Hour + 10*time.Second))
	waitFor(t, "bucket closed and published", 10*time.Second, func() bool {
		resp, err := br.admin.Forecast(context.Background(), &pb.ForecastRequest{Resource: "disk"})
		return err == nil && resp.GetForecast().GetOriginUnix() == start.Unix()
	})
	if br.ref != nil {
		batch := make([]forecast.AccessSummary, 0, len(sums))
		for k, n := range sums {
			batch = append(batch, forecast.AccessSummary{Resource: k.resource, Region: k.region, Start: start, NewFlows: n})
		}
		slices.SortFunc(batch, func(x, y forecast.AccessSummary) int { return strings.Compare(x.Region, y.Region) })
		if _, err := br.ref.Ingest(batch); err != nil {
			t.Fatal(err)
		}
		if err := br.ref.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if br.refSum != nil {
		br.refSum[start.Unix()] = sums
	}
}

// sameForecast fails unless the engine's forecast of disk equals the
// reference engine's exactly.
func sameForecast(t *testing.T, what string, got *forecast.Engine, ref *forecast.Engine) {
	t.Helper()
	g, err := got.Forecast("disk")
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	w, err := ref.Forecast("disk")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s: forecast differs from the reference engine's\n got %+v\nwant %+v", what, g, w)
	}
}

func TestForecastIngestsOnceFromEveryReplica(t *testing.T) {
	g := newForecastRig(t, nil)
	t0, clock, prefix, r1 := g.t0, g.clock, g.prefix, g.r1
	r2 := startReplica(t, "r2", prefix, g.tweak(nil))
	// One agent on the leader, one on the follower.
	a := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	b := startAgent(t, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, r2.addr)
	disk, reg := ids(t, a)
	ids(t, b)
	br := &bucketRun{t: t, clock: clock, t0: t0, cli: r1.cli, st: r1.c.store, admin: adminClient(t, r2.addr, "viewer"),
		reps: []*replica{r1, r2}, refSum: map[int64]map[seriesKey]uint64{}}
	for k := range 4 {
		br.bucket(k,
			flows{a, disk, reg["eu"], "eu", uint64(100 + 10*k)},
			flows{a, disk, reg["us"], "us", 7},
			flows{b, disk, reg["us"], "us", uint64(50 + k)},
			flows{b, disk, 0, "", 3}) // a client of no region: counted, not learnt
	}
	resp, err := br.admin.Forecast(context.Background(), &pb.ForecastRequest{Resource: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	f := resp.GetForecast()
	if len(f.GetRegions()) != 2 || f.GetLeader() != "r1" {
		t.Fatalf("forecast regions %d leader %q", len(f.GetRegions()), f.GetLeader())
	}
	for _, r := range f.GetRegions() {
		if len(r.GetQ50()) != 6 || len(r.GetRecent()) != 4 {
			t.Fatalf("region %s: %d quantiles, %d recent buckets", r.GetRegion(), len(r.GetQ50()), len(r.GetRecent()))
		}
		for i, o := range r.GetRecent() {
			want := br.refSum[o.GetStartUnix()][seriesKey{"disk", r.GetRegion()}]
			if o.GetObserved() != float64(want) {
				t.Errorf("region %s bucket %d: observed %v, the agents sent %d", r.GetRegion(), i, o.GetObserved(), want)
			}
			if i > 0 && !o.GetHasPredicted() {
				t.Errorf("region %s bucket %d: no one-step forecast recorded", r.GetRegion(), i)
			}
		}
	}
	if len(f.GetShares()) != 6 || len(f.GetShares()[0].GetShares()) != 2 {
		t.Fatalf("location shares: %v", f.GetShares())
	}
	ingested := testutil.ToFloat64(r1.c.m.accessFlows.WithLabelValues("ingested"))
	noRegion := testutil.ToFloat64(r1.c.m.accessFlows.WithLabelValues("unknown_region"))
	late := testutil.ToFloat64(r1.c.m.accessFlows.WithLabelValues("late"))
	if ingested+noRegion != br.sent || noRegion != 12 || late != 0 {
		t.Fatalf("ingested %v + unknown region %v (late %v), sent %v", ingested, noRegion, late, br.sent)
	}
	// The follower did not ingest anything itself.
	if n := testutil.ToFloat64(r2.c.m.accessFlows.WithLabelValues("ingested")); n != 0 {
		t.Fatalf("follower ingested %v flows", n)
	}
	// The checkpoint after the last close deleted the aggregates of every
	// closed bucket, none of them late.
	waitCheckpoint(t, r1, t0.Add(4*time.Hour))
	for k := range 4 {
		if _, keys := bucketTotal(t, r1.cli, r1.c.store, t0.Add(time.Duration(k)*time.Hour).Unix()); keys != 0 {
			t.Fatalf("bucket %d: %d aggregates left after the checkpoint", k, keys)
		}
	}
	if n := testutil.ToFloat64(r1.c.m.aggregatesLate); n != 0 {
		t.Fatalf("%v aggregates reported late", n)
	}
	if probs, err := testutil.CollectAndLint(r1.c.Registry()); err != nil || len(probs) > 0 {
		t.Fatalf("metric lint: %v %v", err, probs)
	}
	if list, err := br.admin.Forecast(context.Background(), &pb.ForecastRequest{}); err != nil || !slices.Equal(list.GetResources(), []string{"disk"}) {
		t.Fatalf("list: %v %v", list.GetResources(), err)
	}
	// An aggregate rewritten after its bucket closed (a replica whose clock
	// is far behind) is reported, once, by the next checkpoint, which
	// deletes it.
	lateAgg, _ := proto.Marshal(&pb.AccessAggregate{Node: "edge-x", Controller: "r9", BucketStartUnix: t0.Unix(),
		Flows: []*pb.AccessFlows{{ResourceId: disk, RegionId: reg["eu"], NewFlows: 5}}})
	if _, err := r1.cli.Put(context.Background(), r1.c.store.fkey(accessKey(t0.Unix(), "edge-x", "r9", 1)), string(lateAgg)); err != nil {
		t.Fatal(err)
	}
	br.bucket(4, flows{a, disk, reg["eu"], "eu", 1})
	waitCheckpoint(t, r1, t0.Add(5*time.Hour))
	if _, keys := bucketTotal(t, r1.cli, r1.c.store, t0.Unix()); keys != 0 {
		t.Fatalf("late aggregate not deleted (%d keys)", keys)
	}
	if n := testutil.ToFloat64(r1.c.m.aggregatesLate); n != 1 {
		t.Fatalf("%v aggregates reported late, want 1", n)
	}
}

func TestForecastSurvivesFailoverAndRestart(t *testing.T) {
	g := newForecastRig(t, nil)
	t0, clock, prefix, r1 := g.t0, g.clock, g.prefix, g.r1
	r2 := startReplica(t, "r2", prefix, g.tweak(nil))
	a := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r2.addr) // survives r1's death
	disk, reg := ids(t, a)
	ref, err := forecast.NewEngine(testEngineConfig())
	if err != nil {
		t.Fatal(err)
	}
	events := "start,end,name,kind\n2026-03-02,2026-03-02,test day,launch\n"
	if _, err := adminClient(t, r2.addr, "admin").Feed(context.Background(),
		&pb.FeedRequest{Kind: pb.FeedKind_FEED_KIND_EVENTS, Csv: []byte(events), Name: "events.csv"}); err != nil {
		t.Fatal(err)
	}
	if err := ref.ReadEventsCSV(strings.NewReader(events)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "leader applied the feed", passWait, func() bool {
		return testutil.ToFloat64(r1.c.m.fcFeeds.WithLabelValues("events", "applied")) == 1
	})
	br := &bucketRun{t: t, clock: clock, t0: t0, cli: r2.cli, st: r2.c.store, admin: adminClient(t, r2.addr, "viewer"),
		reps: []*replica{r1, r2}, ref: ref}
	load := func(k int) []flows {
		return []flows{{a, disk, reg["eu"], "eu", uint64(200 + 30*(k%3))}, {a, disk, reg["us"], "us", uint64(20 + k)}}
	}
	k := 0
	for ; k < 3; k++ {
		br.bucket(k, load(k)...)
	}
	sameForecast(t, "leader", r1.c.fc.eng, ref)
	waitCheckpoint(t, r1, t0.Add(3*time.Hour))

	// Failover: the leader dies; r2 takes over with the checkpoint.
	r1.kill()
	waitFor(t, "r2 leads and restored", 15*time.Second, func() bool {
		return r2.c.Leader() == "r2" && testutil.ToFloat64(r2.c.m.fcRestores.WithLabelValues("etcd")) == 1
	})
	sameForecast(t, "after failover", r2.c.fc.eng, ref)
	br.reps = []*replica{r2}
	br.sent = received(r2)
	br.bucket(k, load(k)...)
	k++
	sameForecast(t, "a bucket after failover", r2.c.fc.eng, ref)
	waitCheckpoint(t, r2, t0.Add(time.Duration(k)*time.Hour))

	// Restart: every replica stops; a new one starts on the same etcd.
	a.stop()
	r2.stop()
	r3 := startReplica(t, "r3", prefix, forecastTweak(clock))
	waitFor(t, "r3 leads and restored", 15*time.Second, func() bool {
		return r3.c.Leader() == "r3" && testutil.ToFloat64(r3.c.m.fcRestores.WithLabelValues("etcd")) == 1
	})
	sameForecast(t, "after restart", r3.c.fc.eng, ref)
	a3 := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r3.addr)
	ids(t, a3)
	br.reps, br.sent, br.cli, br.st, br.admin = []*replica{r3}, 0, r3.cli, r3.c.store, adminClient(t, r3.addr, "viewer")
	load3 := []flows{{a3, disk, reg["eu"], "eu", 230}, {a3, disk, reg["us"], "us", 25}}
	br.bucket(k, load3...)
	sameForecast(t, "a bucket after restart", r3.c.fc.eng, ref)
	// The calendar came back with the model.
	got, _ := r3.c.fc.eng.MarshalBinary()
	want, _ := ref.MarshalBinary()
	if !slices.Equal(got, want) {
		t.Fatal("restored engine state differs from the reference engine's")
	}
}

// passWait bounds what one leader pass does after the test's last step
// (tick, snapshot, a few etcd transactions), as bucketRun's waits do.
const passWait = 10 * time.Second

// waitCheckpoint waits until leader r has finished the pass that wrote
// the checkpoint whose open bucket is open: the transaction that wrote its
// manifest deleted the aggregates of the buckets before it, and the pass
// has reported the late ones among them.
func waitCheckpoint(t *testing.T, r *replica, open time.Time) {
	t.Helper()
	waitFor(t, "checkpoint with open bucket "+open.UTC().Format(time.RFC3339), passWait, func() bool {
		return checkpointOpen(t, r) == open.Unix()
	})
	// The manifest is in etcd as soon as the transaction commits, before
	// the leader has handled its response; a pass holds fc.mu throughout,
	// so taking it waits for the rest of that pass.
	r.c.fc.mu.Lock()
	r.c.fc.mu.Unlock() //lint:ignore SA2001 taking the lock is the wait
}

// checkpointOpen is the open bucket of the checkpoint in etcd (0: none).
func checkpointOpen(t *testing.T, r *replica) int64 {
	t.Helper()
	resp, err := r.cli.Get(context.Background(), r.c.store.fkey(fkeyManifest))
	if err != nil || len(resp.Kvs) == 0 {
		return 0
	}
	m := &pb.ForecastManifest{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, m); err != nil {
		t.Fatal(err)
	}
	return m.GetOpenBucketUnix()
}

func TestForecastExplainAndScores(t *testing.T) {
	g := newForecastRig(t, nil)
	t0, clock, r1 := g.t0, g.clock, g.r1
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	us := startAgent(t, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	disk, reg := ids(t, eu)
	eu.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 80 * time.Millisecond, "tokyo": 220 * time.Millisecond}, pb.Health_HEALTH_UP)
	us.setProbes(map[string]time.Duration{"paris": 80 * time.Millisecond, "nyc": 4 * time.Millisecond, "tokyo": 150 * time.Millisecond}, pb.Health_HEALTH_UP)
	admin := adminClient(t, r1.addr, "viewer")
	if _, err := admin.Explain(context.Background(), &pb.ExplainRequest{Resource: "disk"}); status.Code(err) != codes.NotFound {
		t.Fatalf("explain before any bucket: %v, want NotFound", err)
	}
	br := &bucketRun{t: t, clock: clock, t0: t0, cli: r1.cli, st: r1.c.store, admin: admin, reps: []*replica{r1}}
	for k := range 3 {
		br.bucket(k, flows{eu, disk, reg["eu"], "eu", 500}, flows{us, disk, reg["us"], "us", uint64(3000 + 100*k)})
	}
	resp, err := admin.Forecast(context.Background(), &pb.ForecastRequest{Resource: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetScoreNote() != "" || len(resp.GetScores()) != 2 {
		t.Fatalf("scores %v, note %q", resp.GetScores(), resp.GetScoreNote())
	}
	best := resp.GetScores()[0]
	if best.GetSite() != "us" || best.GetMirror() != "nyc" || best.GetScore() < 0.9 || resp.GetScores()[1].GetScore() > 0.1 {
		t.Fatalf("scores: %v", resp.GetScores())
	}
	var saved float64
	for _, rb := range best.GetRegions() {
		if rb.GetRegion() == "us" {
			saved = rb.GetSavedSeconds()
		}
	}
	// us reaches paris (its current route, the origin) at 80 ms and nyc at 4.
	if saved < 0.070 || saved > 0.080 {
		t.Fatalf("us saves %v s per request, want about 0.076", saved)
	}
	ex, err := admin.Explain(context.Background(), &pb.ExplainRequest{Resource: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"resource disk", "candidate us", "candidate asia", "mirror nyc", "not candidates: eu (holds a copy on paris)",
		"via paris", "size 1.0 GiB", "mirroring manager: off for this resource"} {
		if !strings.Contains(ex.GetText(), want) {
			t.Errorf("explain lacks %q:\n%s", want, ex.GetText())
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Log("\n" + ex.GetText())
	}
}

func TestForecastFeedsRejectBadFiles(t *testing.T) {
	r1 := newForecastRig(t, func(c *Config) { c.Forecast.Engine.Covariates = []string{"temp_f"} }).r1
	admin := adminClient(t, r1.addr, "admin")
	before, err := r1.c.fc.eng.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		kind pb.FeedKind
		csv  string
		want string
	}{
		{"bad date", pb.FeedKind_FEED_KIND_EVENTS, "start,end,name,kind\n2026-01-01,2026-01-01,ok,holiday\n2026-13-01,2026-13-02,x,holiday\n", "line 3 start"},
		{"columns", pb.FeedKind_FEED_KIND_EVENTS, "2026-01-01,2026-01-02,x\n", "line 1: 3 columns"},
		{"end before start", pb.FeedKind_FEED_KIND_EVENTS, "2026-01-05,2026-01-02,x,storm\n", "line 1: end before start"},
		{"number", pb.FeedKind_FEED_KIND_COVARIATES, "timestamp,region,temp_f\n2026-01-01 00:00,eu,41\n2026-01-01 01:00,eu,warm\n", "line 3 column 3"},
		{"csv syntax", pb.FeedKind_FEED_KIND_COVARIATES, "timestamp,temp_f\n2026-01-01 00:00,\"4\"1\n", "line 2"},
		{"no covariate", pb.FeedKind_FEED_KIND_COVARIATES, "timestamp\n2026-01-01 00:00\n", "no covariate column"},
		{"empty", pb.FeedKind_FEED_KIND_COVARIATES, "", "empty file"},
		{"kind", pb.FeedKind_FEED_KIND_UNSPECIFIED, "a,b\n", "kind"},
	} {
		_, err := admin.Feed(context.Background(), &pb.FeedRequest{Kind: c.kind, Csv: []byte(c.csv), Name: "f.csv"})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "f.csv") {
			t.Errorf("%s: %v, want InvalidArgument naming f.csv and %q", c.name, err, c.want)
		}
	}
	// Only admins feed.
	if _, err := adminClient(t, r1.addr, "viewer").Feed(context.Background(), &pb.FeedRequest{Kind: pb.FeedKind_FEED_KIND_EVENTS,
		Csv: []byte("2026-01-01,2026-01-01,x,holiday\n")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("feed by a non-admin: %v", err)
	}
	resp, err := r1.cli.Get(context.Background(), r1.c.store.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("stored feeds after rejections: %d %v", resp.Count, err)
	}
	time.Sleep(100 * time.Millisecond) // a few leader passes
	if after, _ := r1.c.fc.eng.MarshalBinary(); !slices.Equal(before, after) {
		t.Fatal("a rejected feed changed the engine")
	}
	// A good file is stored and applied; unused columns are named.
	good, err := admin.Feed(context.Background(), &pb.FeedRequest{Kind: pb.FeedKind_FEED_KIND_COVARIATES,
		Csv: []byte("timestamp,region,temp_f,humidity\n2026-03-02 00:00,eu,41,80\n2026-03-02 01:00,eu,43,\n")})
	if err != nil {
		t.Fatal(err)
	}
	if good.GetEntries() != 3 || !slices.Equal(good.GetUnused(), []string{"humidity"}) {
		t.Fatalf("feed response %v", good)
	}
	waitFor(t, "feed applied and checkpointed", passWait, func() bool {
		resp, err := r1.cli.Get(context.Background(), r1.c.store.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return testutil.ToFloat64(r1.c.m.fcFeeds.WithLabelValues("covariates", "applied")) == 1 && err == nil && resp.Count == 0
	})
	ref, _ := forecast.NewEngine(forecast.EngineConfig{Step: time.Hour, Window: 48, Horizon: 6, Hidden: 4, Workers: 1, Covariates: []string{"temp_f"}})
	if err := ref.ReadCovariatesCSV(strings.NewReader("timestamp,region,temp_f,humidity\n2026-03-02 00:00,eu,41,80\n2026-03-02 01:00,eu,43,\n")); err != nil {
		t.Fatal(err)
	}
	got, _ := r1.c.fc.eng.MarshalBinary()
	want, _ := ref.MarshalBinary()
	if !slices.Equal(got, want) {
		t.Fatal("applied feed: engine state differs from an engine that read the file")
	}
}

func TestForecastDisabled(t *testing.T) {
	prefix := testPrefix(t)
	r1 := startReplica(t, "r1", prefix, func(c *Config) { c.Forecast.Disable = true })
	_, err := adminClient(t, r1.addr, "viewer").Explain(context.Background(), &pb.ExplainRequest{Resource: "disk"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("explain with forecasting off: %v", err)
	}
}

// A leader that closed buckets but could not checkpoint them (here: its
// checkpoint exceeds its etcd bound) dies; its successor rebuilds the same
// model from the aggregates and feeds still in etcd: every count ingested
// once, the feed applied once.
func TestForecastReplaysUncheckpointedBuckets(t *testing.T) {
	g := newForecastRig(t, func(c *Config) { c.Forecast.MaxSnapshotBytes = 1 })
	t0, clock, r1 := g.t0, g.clock, g.r1
	r2 := startReplica(t, "r2", g.prefix, g.tweak(nil))
	a := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r2.addr)
	disk, reg := ids(t, a)
	ref, _ := forecast.NewEngine(testEngineConfig())
	events := "2026-03-02,2026-03-03,fair,launch,eu\n"
	if _, err := adminClient(t, r2.addr, "admin").Feed(context.Background(),
		&pb.FeedRequest{Kind: pb.FeedKind_FEED_KIND_EVENTS, Csv: []byte(events)}); err != nil {
		t.Fatal(err)
	}
	_ = ref.ReadEventsCSV(strings.NewReader(events))
	br := &bucketRun{t: t, clock: clock, t0: t0, cli: r2.cli, st: r2.c.store, admin: adminClient(t, r2.addr, "viewer"),
		reps: []*replica{r1, r2}, ref: ref}
	for k := range 3 {
		br.bucket(k, flows{a, disk, reg["eu"], "eu", uint64(300 + k)}, flows{a, disk, reg["us"], "us", 40})
	}
	sameForecast(t, "leader", r1.c.fc.eng, ref)
	if n := testutil.ToFloat64(r1.c.m.fcCheckpoints.WithLabelValues("too_large")); n == 0 || checkpointOpen(t, r1) != 0 {
		t.Fatalf("r1 checkpointed to etcd (too_large %v)", n)
	}
	r1.kill()
	waitFor(t, "r2 leads and rebuilt the model", 15*time.Second, func() bool {
		if r2.c.Leader() != "r2" || testutil.ToFloat64(r2.c.m.fcRestores.WithLabelValues("none")) != 1 {
			return false
		}
		f, err := r2.c.fc.eng.Forecast("disk")
		return err == nil && f.Origin.Equal(t0.Add(2*time.Hour))
	})
	sameForecast(t, "rebuilt", r2.c.fc.eng, ref)
	got, _ := r2.c.fc.eng.MarshalBinary()
	want, _ := ref.MarshalBinary()
	if !slices.Equal(got, want) {
		t.Fatal("rebuilt engine differs from the reference")
	}
}

// With a state file, a checkpoint too large for etcd still survives a
// restart on the same host.
func TestForecastStateFile(t *testing.T) {
	file := t.TempDir() + "/forecast.state"
	extra := func(c *Config) { c.Forecast.MaxSnapshotBytes, c.Forecast.StateFile = 1, file }
	g := newForecastRig(t, extra)
	t0, clock, r1 := g.t0, g.clock, g.r1
	a := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	disk, reg := ids(t, a)
	ref, _ := forecast.NewEngine(testEngineConfig())
	br := &bucketRun{t: t, clock: clock, t0: t0, cli: r1.cli, st: r1.c.store, admin: adminClient(t, r1.addr, "viewer"),
		reps: []*replica{r1}, ref: ref}
	for k := range 2 {
		br.bucket(k, flows{a, disk, reg["eu"], "eu", uint64(70 + k)}, flows{a, disk, reg["us"], "us", 9})
	}
	waitFor(t, "state file written", passWait, func() bool {
		return testutil.ToFloat64(r1.c.m.fcCheckpoints.WithLabelValues("file")) >= 2
	})
	a.stop()
	r1.stop()
	r2 := startReplica(t, "r2", g.prefix, g.tweak(extra))
	waitFor(t, "r2 leads and restored from the file", 15*time.Second, func() bool {
		return r2.c.Leader() == "r2" && testutil.ToFloat64(r2.c.m.fcRestores.WithLabelValues("file")) == 1
	})
	sameForecast(t, "restored from the file", r2.c.fc.eng, ref)
}

// kvHook calls before just before committing a transaction that deletes
// the access aggregates: there a write of another replica lands after
// anything the leader read for the checkpoint.
type kvHook struct {
	accessPrefix string
	before       func()
}

func (k *kvHook) wrap(kv clientv3.KV) clientv3.KV {
	return &txnKV{KV: kv, commit: func(then []clientv3.Op) error {
		access := slices.ContainsFunc(then, func(op clientv3.Op) bool { return op.IsDelete() && string(op.KeyBytes()) == k.accessPrefix })
		if access && k.before != nil {
			k.before()
		}
		return nil
	}}
}

// A checkpoint reports exactly the late aggregates it deletes, once each:
// those below the buckets the previous checkpoint deleted, those rewritten
// since the leader read their bucket, and one written just before the
// deleting transaction commits; not the ones ingested as read, not the
// open bucket's, nothing when the fence fails.
func TestCheckpointReportsLateAggregatesItDeletes(t *testing.T) {
	cli := etcdClient(t)
	t.Cleanup(func() { cli.Close() })
	hook := &kvHook{}
	cli.KV = hook.wrap(cli.KV)
	prefix := testPrefix(t)
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: prefix, ReportInterval: 100 * time.Millisecond, Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second}}, cli)
	if err != nil {
		t.Fatal(err)
	}
	f, st, ctx := c.fc, c.store, context.Background()
	hook.accessPrefix = st.fkey(fkeyAccess)
	put := func(b int64, node string) int64 {
		t.Helper()
		v, _ := proto.Marshal(&pb.AccessAggregate{Node: node, Controller: "r2", BucketStartUnix: b, Flows: []*pb.AccessFlows{{ResourceId: 1, RegionId: 1, NewFlows: 3}}})
		resp, err := cli.Put(ctx, st.fkey(accessKey(b, node, "r2", 1)), string(v))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	keys := func(from, to int64) int {
		t.Helper()
		resp, err := cli.Get(ctx, st.fkey(accessBucketKey(from)), clientv3.WithRange(st.fkey(accessBucketKey(to))), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return int(resp.Count)
	}
	late := func() float64 { return testutil.ToFloat64(c.m.aggregatesLate) }
	fr, err := cli.Put(ctx, prefix+"fence", "r1")
	if err != nil {
		t.Fatal(err)
	}
	fn := fence{key: prefix + "fence", rev: fr.Header.Revision}

	// b0 was checkpointed (its aggregates deleted), b1 closed (read at
	// readRev), b2 is open.
	b0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC).Unix()
	b1, b2 := b0+3600, b0+7200
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gcBefore, f.next, f.readRev = b1, b2, put(b1, "ingested")
	put(b1, "rewritten")
	put(b0, "after-gc")
	put(b2, "open")

	if err := f.checkpoint(ctx, fence{key: fn.key, rev: fn.rev + 1}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("checkpoint without the fence: %v", err)
	}
	if late() != 0 || keys(b0, b2) != 3 {
		t.Fatalf("a refused checkpoint reported %v late, left %d of 3 keys", late(), keys(b0, b2))
	}
	hook.before = func() {
		hook.before = nil
		put(b0, "racing")
	}
	if err := f.checkpoint(ctx, fn); err != nil {
		t.Fatal(err)
	}
	if late() != 3 || keys(b0, b2) != 0 || keys(b2, b2+3600) != 1 || f.gcBefore != b2 {
		t.Fatalf("late %v (want 3), keys of closed buckets %d, of the open one %d, gcBefore %d", late(), keys(b0, b2), keys(b2, b2+3600), f.gcBefore)
	}
	// The next checkpoint deletes nothing: nothing more reported.
	if err := f.checkpoint(ctx, fn); err != nil || late() != 3 {
		t.Fatalf("second checkpoint: late %v, %v", late(), err)
	}
}
