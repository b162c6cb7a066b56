package controller

import (
	"context"
	"errors"
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

// TestDecide walks the mirroring manager's rules one evaluation at a time.
func TestDecide(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	base := placeInput{now: now, predictive: true, mirrorScore: 0.6, retireScore: 0.3, copies: 1,
		keep: map[string]float64{}, gone: map[string]string{}}
	with := func(f func(*placeInput)) placeInput {
		in := base
		in.keep, in.gone = map[string]float64{}, map[string]string{}
		f(&in)
		return in
	}
	placed := func(mirrors ...string) *pb.PlacementRecord {
		rec := &pb.PlacementRecord{Resource: "disk"}
		for _, m := range mirrors {
			rec.Placed = append(rec.Placed, &pb.Placement{Site: "s-" + m, Mirror: m, Kind: pb.MirrorKind_MIRROR_KIND_FULL})
		}
		return rec
	}
	type step struct {
		in         placeInput
		wantPlaced []string // mirrors placed after the step
		wantEvent  string   // "" none, else action of the newest event this step
		wantKind   pb.MirrorKind
	}
	us := placeCandidate{site: "us", mirror: "nyc", score: 0.9}
	asia := placeCandidate{site: "asia", mirror: "tokyo", score: 0.7}
	for _, tc := range []struct {
		name  string
		start *pb.PlacementRecord
		steps []step
	}{
		{"places after two evaluations at or above mirror_score", placed(), []step{
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} }), wantPlaced: []string{"nyc"}, wantEvent: "place",
				wantKind: pb.MirrorKind_MIRROR_KIND_FULL},
		}},
		{"a dip below mirror_score starts the count again", placed(), []step{
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{{site: "us", mirror: "nyc", score: 0.5}} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} }), wantPlaced: []string{"nyc"}, wantEvent: "place"},
		}},
		{"one placement per evaluation, the best first", placed(), []step{
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{asia, us} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{asia, us} }), wantPlaced: []string{"nyc"}, wantEvent: "place"},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{asia}; i.keep["nyc"] = 0.9 }), wantPlaced: []string{"nyc", "tokyo"},
				wantEvent: "place"},
		}},
		{"max_mirrors counts the origin and listed mirrors", placed(), []step{
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us}; i.maxCopies = 2; i.copies = 2 })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us}; i.maxCopies = 2; i.copies = 2 })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us}; i.maxCopies = 3; i.copies = 2 }), wantPlaced: []string{"nyc"},
				wantEvent: "place"},
		}},
		{"retires after three evaluations below retire_score, then a later placement is a delta", placed("nyc"), []step{
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantPlaced: []string{"nyc"}},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.4 }), wantPlaced: []string{"nyc"}}, // within the band: count reset
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantPlaced: []string{"nyc"}},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantPlaced: []string{"nyc"}},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantEvent: "retire"},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us} }), wantPlaced: []string{"nyc"}, wantEvent: "place",
				wantKind: pb.MirrorKind_MIRROR_KIND_DELTA},
		}},
		{"a resource with a working set gets selective copies", placed(), []step{
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us}; i.hotExtents = 5 })},
			{in: with(func(i *placeInput) { i.cands = []placeCandidate{us}; i.hotExtents = 5 }), wantPlaced: []string{"nyc"}, wantEvent: "place",
				wantKind: pb.MirrorKind_MIRROR_KIND_SELECTIVE},
		}},
		{"no keep score is no evidence", placed("nyc"), []step{
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantPlaced: []string{"nyc"}},
			{in: with(func(*placeInput) {}), wantPlaced: []string{"nyc"}},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantPlaced: []string{"nyc"}},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.1 }), wantEvent: "retire"},
		}},
		// Each keep score counts the other copies as staying: two copies
		// serving the same regions both score low. Retiring both in one
		// evaluation left those regions neither; one goes (the lowest),
		// and the other is scored again without it.
		{"one retirement for a low keep score per evaluation", placed("nyc", "tokyo"), []step{
			{in: with(func(i *placeInput) { i.keep["nyc"], i.keep["tokyo"] = 0.1, 0.05 }), wantPlaced: []string{"nyc", "tokyo"}},
			{in: with(func(i *placeInput) { i.keep["nyc"], i.keep["tokyo"] = 0.1, 0.05 }), wantPlaced: []string{"nyc", "tokyo"}},
			{in: with(func(i *placeInput) { i.keep["nyc"], i.keep["tokyo"] = 0.1, 0.05 }), wantPlaced: []string{"nyc"}, wantEvent: "retire"},
			{in: with(func(i *placeInput) { i.keep["nyc"] = 0.9 }), wantPlaced: []string{"nyc"}},
		}},
		{"a gone host is retired at once", placed("nyc", "tokyo"), []step{
			{in: with(func(i *placeInput) { i.gone["tokyo"] = "its mirror host was deleted"; i.keep["nyc"] = 0.9 }),
				wantPlaced: []string{"nyc"}, wantEvent: "retire"},
		}},
		{"leaving predictive mode retires every placed copy", placed("nyc", "tokyo"), []step{
			{in: with(func(i *placeInput) { i.predictive = false }), wantEvent: "retire"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.start
			for i, st := range tc.steps {
				st.in.now = now.Add(time.Duration(i) * time.Hour)
				before := proto.Clone(rec).(*pb.PlacementRecord)
				next, changed := decide(rec, st.in)
				if !proto.Equal(rec, before) {
					t.Fatalf("step %d: decide modified its input", i)
				}
				var got []string
				for _, pl := range next.GetPlaced() {
					got = append(got, pl.GetMirror())
				}
				if len(got) != len(st.wantPlaced) {
					t.Fatalf("step %d: placed %v, want %v", i, got, st.wantPlaced)
				}
				for j := range got {
					if got[j] != st.wantPlaced[j] {
						t.Fatalf("step %d: placed %v, want %v", i, got, st.wantPlaced)
					}
				}
				var newest *pb.PlacementEvent
				if evs := next.GetEvents(); len(evs) > 0 && evs[0].GetUnixNano() == st.in.now.UnixNano() {
					newest = evs[0]
				}
				switch {
				case st.wantEvent == "" && (newest != nil || changed):
					t.Fatalf("step %d: unexpected event %v (changed %v)", i, newest, changed)
				case st.wantEvent != "" && (newest == nil || newest.GetAction() != st.wantEvent || !changed || newest.GetReason() == ""):
					t.Fatalf("step %d: event %v, want %s with a reason", i, newest, st.wantEvent)
				}
				if st.wantKind != 0 && newest.GetKind() != st.wantKind {
					t.Fatalf("step %d: kind %v, want %v", i, newest.GetKind(), st.wantKind)
				}
				rec = next
			}
		})
	}
}

func TestSelectiveCopySize(t *testing.T) {
	for _, tc := range []struct {
		size, ws   uint64
		bytes      uint64
		hotExtents uint32
	}{
		{1 << 30, 0, 1 << 30, 0},
		{1 << 30, 10 << 20, 10 << 20, 3}, // 10 MiB: three 4 MiB extents
		{1 << 30, 1 << 30, 1 << 30, 0},   // not smaller than the resource: full
		{0, 4 << 20, 0, 0},
	} {
		r := &pb.Resource{SizeBytes: tc.size, WorkingSetBytes: tc.ws}
		if b, n := copyBytes(r), hotExtents(r); b != tc.bytes || n != tc.hotExtents {
			t.Errorf("size %d working set %d: copies %d bytes in %d extents, want %d in %d", tc.size, tc.ws, b, n, tc.bytes, tc.hotExtents)
		}
	}
}

func TestThresholdDefaults(t *testing.T) {
	for _, tc := range []struct {
		th            *pb.Thresholds
		place, retire float64
	}{
		{nil, defaultMirrorScore, defaultMirrorScore / 2},
		{&pb.Thresholds{MirrorScore: 0.6, RetireScore: 0.2}, 0.6, 0.2},
		{&pb.Thresholds{MirrorScore: 0.6}, 0.6, 0.3},
		{&pb.Thresholds{RetireScore: 0.5}, defaultMirrorScore, 0.5},
	} {
		p, r := thresholds(&pb.Resource{Thresholds: tc.th})
		if p != tc.place || r != tc.retire {
			t.Errorf("%v: %v/%v, want %v/%v", tc.th, p, r, tc.place, tc.retire)
		}
	}
}

// TestMirroringManager runs the manager on a forecasting leader: heavy
// demand from us places a copy on nyc (full), the desired state carries
// the replication task to the origin's node, routes use nyc only once its
// host reports the copy in sync; when us goes quiet the copy is retired
// and the task withdrawn; demand returning places it again as a delta.
func TestMirroringManager(t *testing.T) {
	g := newForecastRig(t, nil)
	objs := forecastObjects()
	for _, m := range objs.Mirrors {
		m.Node = "host-" + m.Name
	}
	objs.Resources[0].MirrorPolicy = &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_PREDICTIVE, MaxMirrors: 2}
	// retire_score 0.45: after us stops, this young model's 90% quantile
	// stays wide for a few days of buckets (the keep score settles near
	// 0.35 within 80 buckets), and the test should not wait for more.
	objs.Resources[0].Thresholds = &pb.Thresholds{MirrorScore: 0.6, RetireScore: 0.45}
	applyObjects(t, g.r1.addr, objs)
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, g.r1.addr)
	us := startAgent(t, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, g.r1.addr)
	nycHost := startAgent(t, "host-nyc", "us", pb.NodeRole_NODE_ROLE_MIRROR, g.r1.addr)
	disk, reg := ids(t, eu)
	eu.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 80 * time.Millisecond, "tokyo": 220 * time.Millisecond}, pb.Health_HEALTH_UP)
	us.setProbes(map[string]time.Duration{"paris": 80 * time.Millisecond, "nyc": 4 * time.Millisecond, "tokyo": 150 * time.Millisecond}, pb.Health_HEALTH_UP)
	admin := adminClient(t, g.r1.addr, "viewer")
	br := &bucketRun{t: t, clock: g.clock, t0: g.t0, cli: g.r1.cli, st: g.r1.c.store, admin: admin, reps: []*replica{g.r1}}
	record := func() *pb.PlacementRecord {
		t.Helper()
		resp, err := admin.Placements(context.Background(), &pb.PlacementsRequest{Resource: "disk"})
		if err != nil || len(resp.GetRecords()) != 1 {
			t.Fatalf("placements: %v %v", resp, err)
		}
		return resp.GetRecords()[0]
	}
	task := func(st *pb.DesiredState) *pb.ReplicationTask {
		for _, tk := range st.GetReplicationTasks() {
			if tk.GetResource() == "disk" {
				return tk
			}
		}
		return nil
	}
	k := 0
	busy := func() {
		br.bucket(k, flows{eu, disk, reg["eu"], "eu", 500}, flows{us, disk, reg["us"], "us", uint64(3000 + 100*(k%3))})
		k++
	}
	quiet := func() {
		br.bucket(k, flows{eu, disk, reg["eu"], "eu", 500})
		k++
	}

	// Placed after two evaluations at or above 0.6 (scores near 1 here).
	for range 2 {
		busy()
	}
	waitFor(t, "nyc placed", 10*time.Second, func() bool { return len(record().GetPlaced()) == 1 })
	pl := record().GetPlaced()[0]
	if pl.GetMirror() != "nyc" || pl.GetSite() != "us" || pl.GetKind() != pb.MirrorKind_MIRROR_KIND_FULL || pl.GetPlacedScore() < 0.6 {
		t.Fatalf("placement %v", pl)
	}
	ex, err := admin.Explain(context.Background(), &pb.ExplainRequest{Resource: "disk"})
	if err != nil || !strings.Contains(ex.GetText(), "mirroring manager: places a copy after 2 evaluations at or above 0.6") ||
		!strings.Contains(ex.GetText(), "placed: us on nyc (full") || !strings.Contains(ex.GetText(), "not candidates: eu (holds a copy on paris); us (holds a copy on nyc)") {
		t.Errorf("explain after the placement (%v):\n%s", err, ex.GetText())
	}
	waitFor(t, "replication task in the desired state", 10*time.Second, func() bool { return task(eu.current()) != nil })
	tk := task(eu.current())
	if tk.GetSourceNode() != "host-paris" || tk.GetTargetNode() != "host-nyc" || tk.GetMirror() != "nyc" || tk.GetKind() != pb.MirrorKind_MIRROR_KIND_FULL {
		t.Fatalf("task %v", tk)
	}
	// It carries the deadline and bytes of the placement: the whole disk,
	// wanted at once (the rig's forecast clock is months behind the wall
	// clock, so its buckets have all begun: the deadline is the placement
	// time, never a time already past; TestCandidateDeadline checks the
	// bucket arithmetic).
	if tk.GetDeadlineUnixNano() != pl.GetDeadlineUnixNano() || tk.GetCopyBytes() != 1<<30 ||
		pl.GetDeadlineUnixNano() != pl.GetPlacedUnixNano() {
		t.Fatalf("task %v for placement %v: want its deadline and 1 GiB", tk, pl)
	}
	// Not routable before its host says it is in sync.
	if w := routeOf(us.current(), "disk", "us"); w["nyc"] != 0 {
		t.Fatalf("us routes to nyc before the copy is in sync: %v", w)
	}
	nycHost.mu.Lock()
	nycHost.health = []*pb.MirrorHealth{{Mirror: "nyc", Health: pb.Health_HEALTH_UP,
		Replicas: []*pb.ReplicaSync{{Resource: "disk", InSync: true, LagNs: int64(time.Second)}}}}
	nycHost.mu.Unlock()
	nycHost.client.ReportNow()
	waitFor(t, "us routed to nyc once in sync", 10*time.Second, func() bool { return routeOf(us.current(), "disk", "us")["nyc"] > 0 })
	if st := record().GetPlaced()[0].GetCopyState(); st != pb.CopyState_COPY_STATE_UNREPORTED {
		t.Fatalf("copy state before an evaluation saw the report: %v", st)
	}
	busy()
	waitFor(t, "the copy's state recorded as in sync", 10*time.Second, func() bool {
		p := record().GetPlaced()
		return len(p) == 1 && p[0].GetCopyState() == pb.CopyState_COPY_STATE_IN_SYNC && p[0].GetLagNs() == int64(time.Second)
	})
	// The gauges are set once every resource's record is written: the
	// record can be seen a moment before them.
	waitFor(t, "placed copies in sync: metric 1", 10*time.Second, func() bool {
		return testutil.ToFloat64(g.r1.c.m.placedCopies.WithLabelValues("in_sync")) == 1
	})

	// Every evaluation is recorded, also when nothing changes.
	before := record().GetEvaluatedUnixNano()
	busy()
	waitFor(t, "a later evaluation recorded", 10*time.Second, func() bool { return record().GetEvaluatedUnixNano() > before })

	// us goes quiet: the copy's keep score falls and it is retired.
	for i := 0; i < 80 && len(record().GetPlaced()) > 0; i++ {
		quiet()
	}
	rec := record()
	if len(rec.GetPlaced()) != 0 || rec.GetEvents()[0].GetAction() != "retire" || rec.GetHeld()[0] != "nyc" {
		t.Fatalf("after a quiet period: %v", rec)
	}
	waitFor(t, "task withdrawn", 10*time.Second, func() bool { return task(eu.current()) == nil })

	// The origin's host reports what its change tracking still holds for
	// host-nyc: the delta is costed by it.
	parisHost := startAgent(t, "host-paris", "eu", pb.NodeRole_NODE_ROLE_MIRROR, g.r1.addr)
	parisHost.mu.Lock()
	parisHost.health = []*pb.MirrorHealth{{Mirror: "paris", Health: pb.Health_HEALTH_UP,
		Backlogs: []*pb.ReplicaBacklog{{Resource: "disk", Peer: "host-nyc", PendingBytes: 24 << 20}}}}
	parisHost.mu.Unlock()
	parisHost.client.ReportNow()
	waitFor(t, "explain costs the delta by the backlog", 10*time.Second, func() bool {
		ex, err := admin.Explain(context.Background(), &pb.ExplainRequest{Resource: "disk"})
		return err == nil && strings.Contains(ex.GetText(), "delta: ~24.0 MiB to catch up")
	})

	// Demand returns: placed again, as a delta (nyc kept its data).
	for i := 0; i < 8 && len(record().GetPlaced()) == 0; i++ {
		busy()
	}
	rec = record()
	if len(rec.GetPlaced()) != 1 || rec.GetPlaced()[0].GetKind() != pb.MirrorKind_MIRROR_KIND_DELTA || rec.GetPlaced()[0].GetCopyBytes() != 24<<20 {
		t.Fatalf("after demand returned: %v", rec)
	}

	// Back to static mode: the placed copy is retired at the next
	// evaluation, its task withdrawn.
	objs.Resources[0].MirrorPolicy = &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_STATIC}
	applyObjects(t, g.r1.addr, objs)
	busy()
	waitFor(t, "retired on leaving predictive mode", 10*time.Second, func() bool {
		r := record()
		return len(r.GetPlaced()) == 0 && r.GetEvents()[0].GetReason() == "mirror_policy is no longer predictive"
	})
	waitFor(t, "task withdrawn again", 10*time.Second, func() bool { return task(eu.current()) == nil })
	// Predictive again, placed again; then the resource is deleted: its
	// copy is retired and its record forgotten.
	objs.Resources[0].MirrorPolicy = &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_PREDICTIVE, MaxMirrors: 2}
	applyObjects(t, g.r1.addr, objs)
	for i := 0; i < 8 && len(record().GetPlaced()) == 0; i++ {
		busy()
	}
	rec = record()
	if len(rec.GetPlaced()) != 1 {
		t.Fatalf("not placed again: %v", rec)
	}
	if err := g.r1.c.store.Delete(context.Background(), KindResource, "disk"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "resource gone from the view", 10*time.Second, func() bool { return g.r1.c.view.resource("disk") == nil })
	quiet()
	waitFor(t, "record forgotten", 10*time.Second, func() bool {
		_, err := admin.Placements(context.Background(), &pb.PlacementsRequest{Resource: "disk"})
		return status.Code(err) == codes.NotFound
	})
	waitFor(t, "task withdrawn after the delete", 10*time.Second, func() bool { return task(eu.current()) == nil })
	if t.Failed() || testing.Verbose() {
		for _, ev := range rec.GetEvents() {
			t.Logf("%s %s %s %s %.3f: %s", time.Unix(0, ev.GetUnixNano()).UTC().Format(time.RFC3339), ev.GetAction(), ev.GetMirror(),
				KindName(ev.GetKind()), ev.GetScore(), ev.GetReason())
		}
	}
}

// TestReplicationTasks: one task per placed copy, to the origin's node,
// carrying the kind, a selective copy's extents, the deadline and the
// bytes; none when the origin or the target has no node, or both are on
// one node.
func TestReplicationTasks(t *testing.T) {
	w := &world{
		mirrors: []*pb.Mirror{{Name: "paris", Node: "h-paris"}, {Name: "nyc", Node: "h-nyc"}, {Name: "tokyo"},
			{Name: "paris2", Node: "h-paris"}},
		resources: []*pb.Resource{{Name: "disk", Origin: "paris"}, {Name: "web", Origin: "tokyo"}},
		placed: map[string]*pb.PlacementRecord{
			"disk": {Placed: []*pb.Placement{
				{Mirror: "nyc", Kind: pb.MirrorKind_MIRROR_KIND_SELECTIVE, HotExtents: 3, PlacedUnixNano: 7, DeadlineUnixNano: 9, CopyBytes: 3 << 22},
				{Mirror: "tokyo", Kind: pb.MirrorKind_MIRROR_KIND_FULL},  // no node
				{Mirror: "paris2", Kind: pb.MirrorKind_MIRROR_KIND_FULL}, // the origin's own node
			}},
			"web": {Placed: []*pb.Placement{{Mirror: "nyc"}}}, // origin without a node
		},
	}
	got := replicationTasks(w)
	want := []*pb.ReplicationTask{{Resource: "disk", SourceNode: "h-paris", TargetNode: "h-nyc", Mirror: "nyc",
		Kind: pb.MirrorKind_MIRROR_KIND_SELECTIVE, HotExtents: 3, PlacedUnixNano: 7, DeadlineUnixNano: 9, CopyBytes: 3 << 22}}
	if len(got) != len(want) || !proto.Equal(got[0], want[0]) {
		t.Fatalf("tasks %v, want %v", got, want)
	}
}

// TestKeepScores: a placed copy's keep score weighs it against the copies
// the routes can use without it. A copy still copying (or out of sync)
// serves nobody, so it must not make an in-sync copy look redundant — the
// in-sync copy was retired and its regions fell back to the origin while
// the other was still copying. A copy that is the only one a region with
// demand reaches is kept whatever the latency arithmetic says.
func TestKeepScores(t *testing.T) {
	res := &pb.Resource{Name: "disk", Origin: "paris"}
	rec := &pb.PlacementRecord{Resource: "disk", Placed: []*pb.Placement{{Site: "us", Mirror: "nyc"}, {Site: "us2", Mirror: "bos"}}}
	flat := func(region string, n float64) forecast.RegionDemand {
		d := forecast.RegionDemand{Region: region}
		for range 24 {
			d.Q = append(d.Q, forecast.Quantiles{Q10: n / 2, Q50: n, Q90: 2 * n})
		}
		return d
	}
	demand := []forecast.RegionDemand{flat("eu", 100), flat("us", 1000)}
	// us saves 75 ms × ~24000 requests on nyc against paris (1800 ≫ the
	// storage's 240), 1 ms against bos (24 ≪ 240).
	prices := forecast.Prices{StorePerByteHour: 1e-8, ValuePerRequestSecond: 1}
	setup := func(down map[string]bool, routable map[string]bool) *scoreSetup {
		c := func(ms float64, path string) candCost { return candCost{ms: ms, healthy: !down[path]} }
		w := &world{routable: map[repKey]bool{}}
		for m, ok := range routable {
			w.routable[repKey{m, "disk"}] = ok
		}
		return &scoreSetup{req: forecast.ScoreRequest{Bytes: 1e9, Prices: prices},
			ids:    map[string]uint32{"paris": 1, "nyc": 2, "bos": 3},
			copies: []string{"paris", "nyc", "bos"}, w: w,
			costs: map[string]map[uint32]candCost{
				"eu": {1: c(10, "eu/paris"), 2: c(80, "eu/nyc"), 3: c(85, "eu/bos")},
				"us": {1: c(80, "us/paris"), 2: c(5, "us/nyc"), 3: c(6, "us/bos")},
			}}
	}
	for _, tt := range []struct {
		name     string
		down     map[string]bool // paths down, "region/mirror"
		routable map[string]bool
		want     map[string]float64 // keep scores, ±0.05; absent: not scored
	}{
		{"both copies routable: each redundant beside the other", nil,
			map[string]bool{"paris": true, "nyc": true, "bos": true}, map[string]float64{"nyc": 0, "bos": 0}},
		{"bos still copying: nyc is what serves us", nil,
			map[string]bool{"paris": true, "nyc": true, "bos": false}, map[string]float64{"nyc": 1, "bos": 0}},
		{"paris down from us, bos down: nyc is us's only copy", map[string]bool{"us/paris": true, "us/bos": true, "eu/bos": true},
			map[string]bool{"paris": true, "nyc": true, "bos": true}, map[string]float64{"nyc": 1}},
		{"paris not serving, bos copying: nyc is the only copy", nil,
			map[string]bool{"paris": false, "nyc": true, "bos": false}, map[string]float64{"nyc": 1, "bos": 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := setup(tt.down, tt.routable)
			got, err := keepScores(res, rec, s, demand, time.Hour, 1)
			if err != nil {
				t.Fatal(err)
			}
			for m, want := range tt.want {
				if v, ok := got[m]; !ok || v < want-0.05 || v > want+0.05 {
					t.Errorf("keep score of %s: %v (scored %v), want %v", m, v, ok, want)
				}
			}
		})
	}
}

// TestExplainNamesHostsWithoutNode: the manager places nothing while the
// origin names no node, and no copy on a host that names none, whatever
// the scores (placementInput); explain printed those scores as candidates
// the manager acts on without saying so.
func TestExplainNamesHostsWithoutNode(t *testing.T) {
	res := &pb.Resource{Name: "disk", Origin: "paris", MirrorPolicy: &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_PREDICTIVE}}
	setup := func(parisNode string) *scoreSetup {
		return &scoreSetup{
			w:      &world{mirrors: []*pb.Mirror{{Name: "paris", Node: parisNode}, {Name: "nyc"}, {Name: "tokyo", Node: "host-tokyo"}}},
			req:    forecast.ScoreRequest{Candidates: []forecast.Candidate{{Location: "us"}, {Location: "asia"}}},
			mirror: map[string]string{"us": "nyc", "asia": "tokyo"},
		}
	}
	for _, tt := range []struct {
		node, want, avoid string
	}{
		{"host-paris", "places no copy at us (mirror nyc): the host names no node to receive it", "asia"},
		{"", "places nothing: the origin paris names no node", "us"},
	} {
		var b strings.Builder
		writeNoNode(&b, res, setup(tt.node))
		if !strings.Contains(b.String(), tt.want) || strings.Contains(b.String(), tt.avoid) {
			t.Errorf("origin node %q: want %q and no %q in %q", tt.node, tt.want, tt.avoid, b.String())
		}
	}
}

// max_mirrors is "an upper bound on copies including the origin". After
// an operator lowers it below the copies the manager placed, the excess
// copies must go; decide only stops placing, so the resource keeps more
// copies than its bound for as long as their keep scores stay high.
func TestLoweredMaxMirrorsRetiresExcess(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	rec := &pb.PlacementRecord{Resource: "disk", Placed: []*pb.Placement{
		{Site: "us", Mirror: "nyc", Kind: pb.MirrorKind_MIRROR_KIND_FULL},
		{Site: "asia", Mirror: "tokyo", Kind: pb.MirrorKind_MIRROR_KIND_FULL},
	}}
	for i := 0; i < 5; i++ {
		in := placeInput{now: now.Add(time.Duration(i) * time.Hour), predictive: true, mirrorScore: 0.6, retireScore: 0.3,
			maxCopies: 2, copies: 1, keep: map[string]float64{"nyc": 0.9, "tokyo": 0.7}, gone: map[string]string{}}
		rec, _ = decide(rec, in)
	}
	if n := 1 + len(rec.GetPlaced()); n > 2 {
		t.Fatalf("%d copies with max_mirrors 2: %v", n, rec.GetPlaced())
	}
	if rec.GetPlaced()[0].GetMirror() != "nyc" {
		t.Fatalf("kept %v, want the higher keep score (nyc)", rec.GetPlaced())
	}
}

// txnKV passes each transaction, with the ops of its Then branch, to
// commit just before it commits; an error from commit fails it instead,
// as an etcd error would.
type txnKV struct {
	clientv3.KV
	commit func(then []clientv3.Op) error
}

func (k *txnKV) Txn(ctx context.Context) clientv3.Txn { return &txnHook{Txn: k.KV.Txn(ctx), k: k} }

type txnHook struct {
	clientv3.Txn
	k    *txnKV
	then []clientv3.Op
}

func (t *txnHook) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *txnHook) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}
func (t *txnHook) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *txnHook) Commit() (*clientv3.TxnResponse, error) {
	if err := t.k.commit(t.then); err != nil {
		return nil, err
	}
	return t.Txn.Commit()
}

// writes reports whether one of ops is on key.
func writes(ops []clientv3.Op, key string) bool {
	return slices.ContainsFunc(ops, func(op clientv3.Op) bool { return string(op.KeyBytes()) == key })
}

// failOnceKV fails the first transaction that writes key, after calling
// before (which may wait), as an etcd error part-way through a pass would.
type failOnceKV struct {
	key    string
	before func()
	failed atomic.Bool
}

func (k *failOnceKV) wrap(kv clientv3.KV) clientv3.KV {
	return &txnKV{KV: kv, commit: func(then []clientv3.Op) error {
		if writes(then, k.key) && k.failed.CompareAndSwap(false, true) {
			k.before()
			return errors.New("injected etcd failure")
		}
		return nil
	}}
}

// A placement pass that fails part-way (here: the write of web's record,
// after disk's was written) is retried at the next tick; the retry must
// not count the bucket's evidence a second time for disk, whose record
// already holds it. Before, disk's site reached placeConfirm (2) on one
// bucket and was placed.
func TestRetriedPlacementPassCountsBucketOnce(t *testing.T) {
	prefix := testPrefix(t)
	var r1p atomic.Pointer[replica]
	hook := &failOnceKV{key: prefix + keyPlaced + "web", before: func() {
		// Disk's record is committed; the retry must see it in the view
		// (as it would a tick later), or the test proves nothing.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if r1p.Load().c.view.placements()["disk"].GetEvaluatedUnixNano() != 0 {
				return
			}
		}
	}}
	r1, br, eu, us := placementRig(t, prefix, hook.wrap)
	r1p.Store(r1)

	br.bucket(0, eu, us)
	waitFor(t, "web's record written by the retried pass", 10*time.Second, func() bool {
		return hook.failed.Load() && r1.c.view.placements()["web"] != nil
	})
	rec := r1.c.view.placements()["disk"]
	if len(rec.GetPlaced()) != 0 || rec.GetAbove()["us"] != 1 {
		t.Fatalf("after one bucket, a failed pass and its retry: placed %v, above %v; want nothing placed, us above once",
			rec.GetPlaced(), rec.GetAbove())
	}
}

// placementRig is a forecasting leader whose etcd KV calls go through
// wrap, with disk and web predictive, agents at eu and us probing all
// three mirrors, and a bucketRun to drive buckets.
func placementRig(t *testing.T, prefix string, wrap func(clientv3.KV) clientv3.KV) (*replica, *bucketRun, flows, flows) {
	t.Helper()
	g := &forecastRig{prefix: prefix, t0: time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)}
	g.clock = newFakeClock(g.t0)
	r1 := startReplicaKV(t, "r1", g.prefix, g.tweak(nil), wrap)
	waitFor(t, "r1 leads", 10*time.Second, func() bool { return r1.c.Leader() == "r1" })
	objs := forecastObjects()
	for _, m := range objs.Mirrors {
		m.Node = "host-" + m.Name
	}
	pol := &pb.MirrorPolicy{Mode: pb.MirrorMode_MIRROR_MODE_PREDICTIVE, MaxMirrors: 2}
	objs.Resources[0].MirrorPolicy = pol
	objs.Resources[0].Thresholds = &pb.Thresholds{MirrorScore: 0.6, RetireScore: 0.45}
	objs.Resources = append(objs.Resources, &pb.Resource{Name: "web", Vips: []string{"203.0.113.6"}, Ports: []uint32{443},
		Protocol: pb.Protocol_PROTOCOL_TCP, Origin: "paris", SizeBytes: 1 << 30, MirrorPolicy: pol})
	applyObjects(t, r1.addr, objs)
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	us := startAgent(t, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, r1.addr)
	disk, reg := ids(t, eu)
	eu.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 80 * time.Millisecond, "tokyo": 220 * time.Millisecond}, pb.Health_HEALTH_UP)
	us.setProbes(map[string]time.Duration{"paris": 80 * time.Millisecond, "nyc": 4 * time.Millisecond, "tokyo": 150 * time.Millisecond}, pb.Health_HEALTH_UP)
	br := &bucketRun{t: t, clock: g.clock, t0: g.t0, cli: r1.cli, st: r1.c.store, admin: adminClient(t, r1.addr, "viewer"), reps: []*replica{r1}}
	return r1, br, flows{eu, disk, reg["eu"], "eu", 500}, flows{us, disk, reg["us"], "us", 3000}
}

// Forecasts published, then the checkpoint's write fails: the pass is
// incomplete, but the bucket's forecasts are out and the mirroring
// manager must still evaluate them (at the next tick, with the retried
// checkpoint). Before, the evaluation was dropped: the bucket counted for
// no placement.
func TestPlacementEvaluatedWhenCheckpointFails(t *testing.T) {
	prefix := testPrefix(t)
	hook := &failOnceKV{key: forecastPrefix(prefix) + fkeyManifest, before: func() {}}
	r1, br, eu, us := placementRig(t, prefix, hook.wrap)
	br.bucket(0, eu, us)
	waitFor(t, "disk evaluated for bucket 0", 10*time.Second, func() bool {
		return hook.failed.Load() && r1.c.view.placements()["disk"].GetEvaluatedBucketUnix() == br.t0.Add(time.Hour).Unix()
	})
	if rec := r1.c.view.placements()["disk"]; rec.GetAbove()["us"] != 1 {
		t.Fatalf("disk after bucket 0: %v", rec)
	}
}

// failKV fails every transaction that writes key while on is set.
type failKV struct {
	key  string
	on   atomic.Bool
	hits atomic.Int32
}

func (k *failKV) wrap(kv clientv3.KV) clientv3.KV {
	return &txnKV{KV: kv, commit: func(then []clientv3.Op) error {
		if writes(then, k.key) && k.on.Load() {
			k.hits.Add(1)
			return errors.New("injected etcd failure")
		}
		return nil
	}}
}

// The evaluation of a published bucket stays due until it completes, but
// only in the leader's memory: a leader that published and checkpointed
// a bucket and lost the leadership before its placement pass completed
// (here web's record cannot be written) left the rest of the bucket
// unevaluated, and its successor, restoring that checkpoint, evaluated
// nothing until the next bucket closed: the bucket counted for nothing
// for those resources, as 5db92f5 fixed for a failed checkpoint. The
// successor resumes the pass; records that hold the bucket (disk) are not
// counted twice.
func TestPlacementPassResumedByNextLeader(t *testing.T) {
	prefix := testPrefix(t)
	hook := &failKV{key: prefix + keyPlaced + "web"}
	hook.on.Store(true)
	r1, br, eu, us := placementRig(t, prefix, hook.wrap)
	bucket := br.t0.Add(time.Hour).Unix()

	br.bucket(0, eu, us)
	waitFor(t, "disk evaluated and web's write refused", 10*time.Second, func() bool {
		return hook.hits.Load() > 0 && r1.c.view.placements()["disk"].GetEvaluatedBucketUnix() == bucket
	})
	r1.stop()
	r2 := startReplica(t, "r2", prefix, forecastTweak(br.clock))
	waitFor(t, "r2 leads", 10*time.Second, func() bool { return r2.c.Leader() == "r2" })
	waitFor(t, "web evaluated for bucket 0 by the next leader", 5*time.Second, func() bool {
		return r2.c.view.placements()["web"].GetEvaluatedBucketUnix() == bucket
	})
	if rec := r2.c.view.placements()["disk"]; rec.GetAbove()["us"] != 1 {
		t.Fatalf("disk after bucket 0 and a leader change: above %v, want us above once", rec.GetAbove())
	}
}
