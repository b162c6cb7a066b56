package controller

import (
	"context"
	"encoding/json"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/route"
)

var t0 = time.Unix(1_800_000_000, 0)

func computeWorld() *snapshot {
	o := testObjects()
	for i, s := range o.Sites {
		s.Id = uint32(i + 1)
	}
	o.Sites = append(o.Sites, &pb.Site{Name: "london", Id: 3, Location: &pb.Location{Latitude: 51.5, Longitude: -0.12}})
	for i, m := range o.Mirrors {
		m.Id = uint32(i + 1)
	}
	o.Resources[0].Id = 7
	o.Resources[0].Thresholds = &pb.Thresholds{MaxLagSeconds: 10}
	return &snapshot{sites: o.Sites, mirrors: o.Mirrors, resources: o.Resources}
}

func edgeReport(node, site string, at time.Time, probes ...*pb.ProbeResult) *pb.LiveReport {
	return &pb.LiveReport{Node: node, Site: site, Role: pb.NodeRole_NODE_ROLE_EDGE, ReceivedUnixNano: at.UnixNano(), Probes: probes}
}

func pr(mirror string, ms int, h pb.Health) *pb.ProbeResult {
	d := int64(ms) * int64(time.Millisecond)
	return &pb.ProbeResult{Mirror: mirror, RttNs: d, MedianNs: d, MinNs: d, Health: h, Samples: 5, Probes: 5}
}

var testInputCfg = inputConfig{ReportMaxAge: 5 * time.Second, ProbeMaxAge: 10 * time.Second, PathHold: time.Minute, TableSlots: 1024}

func pathOf(in *route.Input, region, mirror uint32) (route.Path, bool) {
	for _, p := range in.Paths {
		if p.Region == region && p.Mirror == mirror {
			return p, true
		}
	}
	return route.Path{}, false
}

func TestBuildInputAggregatesEdges(t *testing.T) {
	s := computeWorld()
	up, down := pb.Health_HEALTH_UP, pb.Health_HEALTH_DOWN
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, up), pr("nyc", 80, up)),
		edgeReport("e2", "eu", t0, pr("paris", 20, up), pr("nyc", 90, down)),
		edgeReport("u1", "us", t0, pr("nyc", 5, up)),
		edgeReport("u2", "us", t0, pr("nyc", 6, down)),
		edgeReport("u3", "us", t0, pr("nyc", 7, down), pr("paris", 70, pb.Health_HEALTH_UNKNOWN)),
		// Too old: ignored.
		edgeReport("old", "eu", t0.Add(-time.Minute), pr("paris", 500, down)),
		// A site that does not exist: ignored.
		edgeReport("x", "mars", t0, pr("paris", 1, up)),
	}
	held := map[uint32]*heldRegion{}
	in, w := buildInput(s, t0, testInputCfg, held)
	if p, _ := pathOf(in, 1, 1); p.RTT != 15*time.Millisecond || !p.Up {
		t.Fatalf("eu→paris %+v: want the median of two edges, up", p)
	}
	if p, _ := pathOf(in, 1, 2); !p.Up {
		t.Fatalf("eu→nyc %+v: one of two edges up counts as up", p)
	}
	if p, _ := pathOf(in, 2, 2); p.Up || p.RTT != 6*time.Millisecond {
		t.Fatalf("us→nyc %+v: two of three edges down is down", p)
	}
	if _, ok := pathOf(in, 2, 1); ok {
		t.Fatal("a path of unknown health must not be a candidate")
	}
	// london has no edge: it borrows eu's paths (the nearest site).
	if p, ok := pathOf(in, 3, 1); !ok || p.RTT != 15*time.Millisecond {
		t.Fatalf("london→paris %+v %v: want eu's path", p, ok)
	}
	if w.dpState[2] != pb.MirrorState_MIRROR_STATE_ACTIVE {
		t.Fatalf("nyc is up for eu: data-plane state %v", w.dpState[2])
	}

	// eu's edges fall silent: its paths are held, then dropped.
	s.live = []*pb.LiveReport{edgeReport("u1", "us", t0.Add(30*time.Second), pr("nyc", 5, up))}
	in, _ = buildInput(s, t0.Add(30*time.Second), testInputCfg, held)
	if p, ok := pathOf(in, 1, 1); !ok || p.RTT != 15*time.Millisecond {
		t.Fatalf("held eu→paris %+v %v", p, ok)
	}
	in, _ = buildInput(s, t0.Add(2*time.Minute), testInputCfg, held)
	if _, ok := pathOf(in, 1, 1); ok {
		t.Fatal("held path outlived PathHold")
	}
}

func TestBuildInputMirrorHealthAndReplicas(t *testing.T) {
	s := computeWorld()
	s.mirrors[1].Node = "nyc-host"
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, pb.Health_HEALTH_DOWN), pr("nyc", 80, pb.Health_HEALTH_UP)),
		{Node: "nyc-host", Role: pb.NodeRole_NODE_ROLE_MIRROR, ReceivedUnixNano: t0.UnixNano(),
			NodeStats: &pb.NodeStats{CpuUtilization: 0.3},
			Mirrors: []*pb.MirrorHealth{{Mirror: "nyc", Health: pb.Health_HEALTH_UP, Utilization: 0.5,
				Replicas: []*pb.ReplicaSync{{Resource: "disk", InSync: true, LagNs: int64(20 * time.Second)}}}},
			Demand: []*pb.DemandRate{{ResourceId: 7, RegionId: 2, FlowsPerSecond: 12}}},
		// paris-host claims to host nyc: not believed.
		{Node: "paris-host", ReceivedUnixNano: t0.UnixNano(), Mirrors: []*pb.MirrorHealth{{Mirror: "nyc", Health: pb.Health_HEALTH_DOWN}}},
	}
	in, w := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if w.dpState[1] != pb.MirrorState_MIRROR_STATE_DOWN || w.downWhy[1] != "probes" {
		t.Fatalf("paris failed every probe: data-plane state %v (why %q)", w.dpState[1], w.downWhy[1])
	}
	if _, sum := buildDesired(w, nil, 1024, t0); len(sum.GetMirrorsDown()) != 1 || sum.GetMirrorsDown()[0].GetWhy() != "probes" {
		t.Fatalf("summary's mirrors down: %v", sum.GetMirrorsDown())
	}
	if !in.Mirrors[1].Up || in.Mirrors[1].Utilization != 0.5 || w.dpState[2] != pb.MirrorState_MIRROR_STATE_ACTIVE {
		t.Fatalf("nyc %+v state %v", in.Mirrors[1], w.dpState[2])
	}
	res := in.Resources[0]
	if len(res.Replicas) != 2 || !res.Replicas[0].InSync || res.Replicas[1].InSync {
		t.Fatalf("replicas %+v: nyc lags 20s beyond max_lag 10s", res.Replicas)
	}
	if len(res.Demand) != 3 || res.Demand[1] != 12 {
		t.Fatalf("demand %v", res.Demand)
	}

	// The host itself says nyc is down, and why.
	s.live[1].Mirrors[0].Health, s.live[1].Mirrors[0].Reason = pb.Health_HEALTH_DOWN, "gue_port_is_probe_port"
	in, w = buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if in.Mirrors[1].Up || w.dpState[2] != pb.MirrorState_MIRROR_STATE_DOWN || w.downWhy[2] != "host: gue_port_is_probe_port" {
		t.Fatalf("nyc down by its host: %+v %v (why %q)", in.Mirrors[1], w.dpState[2], w.downWhy[2])
	}
	// A host whose service of a resource does not answer: that copy is
	// not routable (the origin's too), the mirror stays up for the other
	// resources; a report from a host the mirror does not name is not
	// believed.
	s.live[1].Mirrors[0].Health, s.live[1].Mirrors[0].Reason = pb.Health_HEALTH_UP, ""
	s.live[1].Mirrors[0].Replicas[0].LagNs = 0
	s.live[1].Mirrors[0].UnservedResources = []string{"disk", "other"}
	s.live[2].Mirrors = nil
	in, w = buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if reps := in.Resources[0].Replicas; len(reps) != 2 || !reps[0].InSync || reps[1].InSync || !in.Mirrors[1].Up {
		t.Fatalf("nyc does not serve disk: replicas %+v, nyc %+v", reps, in.Mirrors[1])
	}
	if _, sum := buildDesired(w, nil, 1024, t0); len(sum.GetUnserved()) != 1 || sum.GetUnserved()[0].GetMirror() != "nyc" ||
		sum.GetUnserved()[0].GetResource() != "disk" {
		t.Fatalf("summary's unserved copies: %v (an unknown resource is not listed)", sum.GetUnserved())
	}
	s.live[1].Mirrors = append(s.live[1].Mirrors, &pb.MirrorHealth{Mirror: "paris", Health: pb.Health_HEALTH_UP, UnservedResources: []string{"disk"}})
	in, _ = buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if reps := in.Resources[0].Replicas; !reps[0].InSync {
		t.Fatalf("nyc-host spoke for paris: replicas %+v", reps)
	}
	s.live[2].Mirrors = []*pb.MirrorHealth{{Mirror: "paris", Health: pb.Health_HEALTH_UP, UnservedResources: []string{"disk"}}}
	in, _ = buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if reps := in.Resources[0].Replicas; reps[0].InSync {
		t.Fatalf("paris (the origin) does not serve disk: replicas %+v", reps)
	}
	s.live[1].Mirrors, s.live[2].Mirrors = s.live[1].Mirrors[:1], nil
	s.live[1].Mirrors[0].UnservedResources = nil

	// Admin state wins over health.
	s.mirrors[1].State = pb.MirrorState_MIRROR_STATE_DRAINING
	in, w = buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if in.Mirrors[1].Up || w.dpState[2] != pb.MirrorState_MIRROR_STATE_DRAINING {
		t.Fatalf("draining nyc: %+v %v", in.Mirrors[1], w.dpState[2])
	}
	if _, sum := buildDesired(w, nil, 1024, t0); !slices.Equal(sum.GetDraining(), []string{"nyc"}) {
		t.Fatalf("summary's draining mirrors: %v", sum.GetDraining())
	}
}

func TestBuildDesired(t *testing.T) {
	s := computeWorld()
	// nyc is reached over GUE: the edges must learn it.
	s.mirrors[1].Encap, s.mirrors[1].GuePort = pb.Encapsulation_ENCAPSULATION_GUE, 6080
	// Its host learns that it speaks for it, even at an address it does
	// not terminate.
	s.mirrors[1].Node = "nyc-host"
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, pb.Health_HEALTH_UP), pr("nyc", 80, pb.Health_HEALTH_UP)),
		edgeReport("u1", "us", t0, pr("paris", 80, pb.Health_HEALTH_UP), pr("nyc", 10, pb.Health_HEALTH_UP)),
	}
	eng, err := route.New(route.Config{Slots: 1024})
	if err != nil {
		t.Fatal(err)
	}
	in, w := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	res, _, err := eng.Step(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	ds, sum := buildDesired(w, res, 1024, t0)
	if sum.GetRoutes() != 3 || sum.GetUnrouted() != 0 {
		t.Fatalf("summary %v", sum)
	}
	for _, m := range ds.GetMirrors() {
		gue := m.GetName() == "nyc"
		if (m.GetEncap() == pb.Encapsulation_ENCAPSULATION_GUE) != gue || (m.GetGuePort() == 6080) != gue || (m.GetNode() == "nyc-host") != gue {
			t.Fatalf("mirror endpoint %v", m)
		}
		// paris is disk's origin, nyc a listed mirror: both hosts check it.
		if !slices.Equal(m.GetResourceIds(), []uint32{7}) {
			t.Fatalf("mirror endpoint %v: resources %v, want [7]", m.GetName(), m.GetResourceIds())
		}
	}
	if w := routeOf(ds, "disk", "eu"); w["paris"] != 1024 {
		t.Fatalf("eu %v", w)
	}
	if w := routeOf(ds, "disk", "us"); w["nyc"] != 1024 {
		t.Fatalf("us %v", w)
	}
	if w := routeOf(ds, "disk", "*"); w["paris"] != 1 || len(w) != 1 {
		t.Fatalf("wildcard %v", w)
	}
	// eu and london share one weight set; the origin set is distinct.
	if len(ds.GetWeightSets()) != 3 || len(ds.GetResources()[0].GetVips()) != 1 {
		t.Fatalf("weight sets %v vips %v", ds.GetWeightSets(), ds.GetResources()[0].GetVips())
	}
	d1, _ := digest(ds)
	ds.Version, ds.ComputedUnixNano = 9, 42
	d2, _ := digest(ds)
	if string(d1) != string(d2) || ds.Version != 9 {
		t.Fatal("digest depends on version or time, or clobbered them")
	}
	ds.Mirrors[1].State = pb.MirrorState_MIRROR_STATE_DOWN
	if d3, _ := digest(ds); string(d3) == string(d1) {
		t.Fatal("digest ignores content")
	}
}

func TestDemandSmoothing(t *testing.T) {
	a := &agentConn{demand: map[[2]uint32]float64{}, lastReport: t0}
	var rate float64
	for i := range 120 {
		end := t0.Add(time.Duration(i+1) * time.Second)
		out := a.smoothDemand(&pb.Report{StartUnixNano: end.Add(-time.Second).UnixNano(), EndUnixNano: end.UnixNano(),
			Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, MirrorId: 1, NewFlows: 6}, {ResourceId: 1, RegionId: 2, MirrorId: 2, NewFlows: 4}}}, end)
		rate = out[0].GetFlowsPerSecond()
	}
	if rate < 9.5 || rate > 10 {
		t.Fatalf("rate %v after 2 min at 10 flows/s", rate)
	}
	// Silence decays the rate.
	for i := range 300 {
		end := t0.Add(time.Duration(200+i) * time.Second)
		a.smoothDemand(&pb.Report{StartUnixNano: end.Add(-time.Second).UnixNano(), EndUnixNano: end.UnixNano()}, end)
	}
	if len(a.demand) != 0 {
		t.Fatalf("rate did not decay away: %v", a.demand)
	}
}

// A successor restores the policy's memory and held paths from the
// record its predecessor saved.
func TestRouteRecordRestores(t *testing.T) {
	s := computeWorld()
	s.live = []*pb.LiveReport{edgeReport("e1", "eu", t0, pr("paris", 10, pb.Health_HEALTH_UP), pr("nyc", 80, pb.Health_HEALTH_UP))}
	c := &Controller{log: quietLogger()}
	eng, err := route.New(route.Config{Slots: 1024})
	if err != nil {
		t.Fatal(err)
	}
	held := map[uint32]*heldRegion{}
	in, _ := buildInput(s, t0, testInputCfg, held)
	_, st, err := eng.Step(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	ls := &leaderState{state: st, held: held, saves: make(chan routeSave, 1)}
	c.saveRoutes(ls)
	save := <-ls.saves
	js, err := json.Marshal(save.state.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	next := &leaderState{held: map[uint32]*heldRegion{}}
	c.restoreRoutes(next, &pb.RouteRecord{Snapshot: js, Paths: save.held})
	if next.state == nil || !next.lastNow.Equal(t0) {
		t.Fatalf("state not restored (now %v)", next.lastNow)
	}
	if got, want := next.state.Weights(7, 1), st.Weights(7, 1); len(got) == 0 || got[1] != want[1] {
		t.Fatalf("weights %v, want %v", got, want)
	}
	if h := next.held[1]; h == nil || len(h.paths) != 2 || !h.seen.Equal(t0) {
		t.Fatalf("held paths %+v", next.held)
	}
	// A corrupt snapshot leaves damping to start afresh, paths still held.
	broken := &leaderState{held: map[uint32]*heldRegion{}}
	c.restoreRoutes(broken, &pb.RouteRecord{Snapshot: []byte("{"), Paths: save.held})
	if broken.state != nil || len(broken.held[1].paths) != 2 {
		t.Fatal("corrupt snapshot restored")
	}
}

// TestProbeAgeFollowsTheEdgesInterval: an estimate older than the probe
// max age is ignored, unless its edge probes that mirror only every
// interval_ns (a survey outside its shortlist): then a few intervals.
func TestProbeAgeFollowsTheEdgesInterval(t *testing.T) {
	s := computeWorld()
	up := pb.Health_HEALTH_UP
	old := func(mirror string, rtt int, age, interval time.Duration) *pb.ProbeResult {
		p := pr(mirror, rtt, up)
		p.LastProbeUnixNano = t0.Add(-age).UnixNano()
		p.IntervalNs = int64(interval)
		return p
	}
	for _, tc := range []struct {
		name          string
		age, interval time.Duration
		want          bool
	}{
		{"fresh", time.Second, 0, true},
		{"stale, no interval", 20 * time.Second, 0, false},
		{"stale for a 2 s interval", 20 * time.Second, 2 * time.Second, false},
		{"20 s old, surveyed every 30 s", 20 * time.Second, 30 * time.Second, true},
		{"100 s old, surveyed every 30 s", 100 * time.Second, 30 * time.Second, false},
	} {
		s.live = []*pb.LiveReport{edgeReport("e1", "eu", t0, pr("paris", 10, up), old("nyc", 80, tc.age, tc.interval))}
		in, _ := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
		if _, ok := pathOf(in, 1, 2); ok != tc.want {
			t.Errorf("%s: eu→nyc used %v, want %v", tc.name, ok, tc.want)
		}
	}
}

// TestHeldResources: a mirror holds the resources it is origin of, listed
// for, or has a placed copy of, each once and sorted; unknown mirrors
// are skipped.
func TestHeldResources(t *testing.T) {
	s := computeWorld()
	s.resources = append(s.resources, &pb.Resource{Name: "db", Id: 3, Origin: "nyc",
		MirrorPolicy: &pb.MirrorPolicy{Mirrors: []string{"nyc", "ghost"}}})
	s.placed = map[string]*pb.PlacementRecord{"db": {Resource: "db", Placed: []*pb.Placement{{Mirror: "paris"}, {Mirror: "nyc"}}}}
	_, w := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	got := w.held
	if want := map[uint32][]uint32{1: {3, 7}, 2: {3, 7}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("held %v, want %v", got, want)
	}
}

// TestBuildInputKeepsLatestSample: the route policy judges a route's
// current mirror by min(peak-EWMA, latest median-of-3) so that one spike
// the peak-EWMA remembers does not count as fresh evidence at every later
// evaluation; the controller must pass the edges' median on. It dropped it
// (Recent 0 means "RTT"), so after one spike on the incumbent the three
// confirmations all saw the same spike and the route switched.
func TestBuildInputKeepsLatestSample(t *testing.T) {
	s := computeWorld()
	up := pb.Health_HEALTH_UP
	probe := func(mirror string, peak, med time.Duration) *pb.ProbeResult {
		return &pb.ProbeResult{Mirror: mirror, RttNs: int64(peak), MedianNs: int64(med), MinNs: int64(med), Health: up, Samples: 5, Probes: 5}
	}
	ms := time.Millisecond
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, probe("paris", 60*ms, 10*ms), probe("nyc", 40*ms, 40*ms)),
		edgeReport("e2", "eu", t0, probe("paris", 70*ms, 12*ms), probe("nyc", 40*ms, 40*ms)),
		// A buggy agent's negative median: the path is not believed.
		edgeReport("u1", "us", t0, probe("paris", 60*ms, -ms)),
	}
	in, _ := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if p, _ := pathOf(in, 1, 1); p.RTT != 65*ms || p.Recent != 11*ms {
		t.Fatalf("eu→paris %+v: want RTT 65ms (median of the peaks), Recent 11ms (median of the medians)", p)
	}
	if _, ok := pathOf(in, 2, 1); ok {
		t.Fatal("a probe with a negative median was used")
	}

	// The decision: eu is on paris (10 ms); one spike lifts paris's
	// peak-EWMA to 60–70 ms while its latest samples are back at 10–12 ms.
	// nyc (40 ms) must not take the route over on the remembered spike.
	e, err := route.New(route.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, probe("paris", 10*ms, 10*ms), probe("nyc", 40*ms, 40*ms)),
	}
	held := map[uint32]*heldRegion{}
	in, _ = buildInput(s, t0, testInputCfg, held)
	_, st, err := e.Step(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		now := t0.Add(time.Duration(i) * 2 * time.Second)
		s.live = []*pb.LiveReport{
			edgeReport("e1", "eu", now, probe("paris", 65*ms, 11*ms), probe("nyc", 40*ms, 40*ms)),
		}
		in, _ = buildInput(s, now, testInputCfg, held)
		var res *route.Result
		res, st, err = e.Step(st, in)
		if err != nil {
			t.Fatal(err)
		}
		if w := st.Weights(7, 1); w[1] != 1024 {
			t.Fatalf("evaluation %d: eu moved off paris on a remembered spike: %v (%v)", i, w, res.At(0, 0).Why)
		}
	}
}

// TestRefusedPathsRouteAround: a region whose edge has an outer source
// outside a mirror host's decap_sources does not route to that host's
// mirrors, whatever the probes say; the other regions keep them, the
// mirror is not down, and the summary says why.
func TestRefusedPathsRouteAround(t *testing.T) {
	up := pb.Health_HEALTH_UP
	edges := func(u1, u2 []string) []*pb.EdgeSource {
		return []*pb.EdgeSource{
			{Node: "e1", Addresses: []string{"10.9.9.9"}},
			{Node: "gone", Addresses: []string{"203.0.113.1"}}, // has a record, not live
			{Node: "u1", Addresses: u1},
			{Node: "u2", Addresses: u2},
		}
	}
	listed := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for _, tc := range []struct {
		name    string
		edges   []*pb.EdgeSource
		filters map[string][]netip.Prefix
		usNyc   bool // us routed to nyc
		refused []*pb.RefusedPath
	}{
		{"no decap_sources", edges([]string{"192.0.2.1"}, []string{"192.0.2.2"}), nil, true, nil},
		{"every live edge listed", edges([]string{"10.1.0.1", "2001:db8::1"}, []string{"::ffff:10.1.0.2"}), map[string][]netip.Prefix{"nyc-host": listed}, true, nil},
		{"one us edge unlisted", edges([]string{"10.1.0.1"}, []string{"192.0.2.2"}), map[string][]netip.Prefix{"nyc-host": listed}, false,
			[]*pb.RefusedPath{{Region: "us", Mirror: "nyc", Edges: []string{"u2"}}}},
		{"IPv6 source unlisted", edges([]string{"10.1.0.1", "2001:db9::1"}, []string{"192.0.2.2"}), map[string][]netip.Prefix{"nyc-host": listed}, false,
			[]*pb.RefusedPath{{Region: "us", Mirror: "nyc", Edges: []string{"u1", "u2"}}}},
		{"every us path refused", edges([]string{"192.0.2.1"}, nil), map[string][]netip.Prefix{"nyc-host": listed, "paris-host": listed}, false,
			[]*pb.RefusedPath{{Region: "us", Mirror: "paris", Edges: []string{"u1"}}, {Region: "us", Mirror: "nyc", Edges: []string{"u1"}}}},
		{"another host's list", edges([]string{"192.0.2.1"}, nil), map[string][]netip.Prefix{"paris-host": listed}, true,
			[]*pb.RefusedPath{{Region: "us", Mirror: "paris", Edges: []string{"u1"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := computeWorld()
			s.mirrors[1].Node = "nyc-host"
			// The records the view derives the refusals from.
			agents := map[string]*pb.AgentRecord{}
			for _, e := range tc.edges {
				agents[e.GetNode()] = &pb.AgentRecord{Status: &pb.AgentStatus{Node: e.GetNode(), Role: pb.NodeRole_NODE_ROLE_EDGE, OuterSources: e.GetAddresses()}}
			}
			for host, ps := range tc.filters {
				st := &pb.AgentStatus{Node: host, Role: pb.NodeRole_NODE_ROLE_MIRROR}
				for _, p := range ps {
					st.DecapSources = append(st.DecapSources, p.String())
				}
				agents[host] = &pb.AgentRecord{Status: st}
			}
			s.tunnel = tunnelFrom(agents)
			s.live = []*pb.LiveReport{
				edgeReport("e1", "eu", t0, pr("paris", 80, up), pr("nyc", 10, up)),
				edgeReport("u1", "us", t0, pr("paris", 80, up), pr("nyc", 10, up)),
				edgeReport("u2", "us", t0, pr("paris", 80, up), pr("nyc", 10, up)),
			}
			eng, err := route.New(route.Config{Slots: 1024})
			if err != nil {
				t.Fatal(err)
			}
			held := map[uint32]*heldRegion{}
			if tc.refused != nil {
				// Paths held from before the host's list changed go too.
				held[2] = &heldRegion{seen: t0, paths: []route.Path{{Region: 2, Mirror: 1, RTT: 80 * time.Millisecond, Up: true}, {Region: 2, Mirror: 2, RTT: 10 * time.Millisecond, Up: true}}}
			}
			in, w := buildInput(s, t0, testInputCfg, held)
			for _, r := range tc.refused {
				mid := map[string]uint32{"paris": 1, "nyc": 2}[r.GetMirror()]
				if _, ok := pathOf(in, map[string]uint32{"eu": 1, "us": 2}[r.GetRegion()], mid); ok {
					t.Fatalf("refused path %v is a candidate", r)
				}
			}
			res, _, err := eng.Step(nil, in)
			if err != nil {
				t.Fatal(err)
			}
			ds, sum := buildDesired(w, res, 1024, t0)
			if got := routeOf(ds, "disk", "us")["nyc"] == 1024; got != tc.usNyc {
				t.Fatalf("us routes %v, want nyc: %v", routeOf(ds, "disk", "us"), tc.usNyc)
			}
			if w := routeOf(ds, "disk", "us"); len(tc.refused) == 2 && w != nil {
				t.Fatalf("us routes %v with every path refused: want the wildcard", w)
			}
			if w := routeOf(ds, "disk", "eu"); w["nyc"] != 1024 {
				t.Fatalf("eu routes %v: its edge is listed, nyc is its best", w)
			}
			if len(sum.GetMirrorsDown()) != 0 || w.dpState[2] != pb.MirrorState_MIRROR_STATE_ACTIVE {
				t.Fatalf("a refused path marked the mirror down: %v %v", sum.GetMirrorsDown(), w.dpState[2])
			}
			if len(sum.GetRefused()) != len(tc.refused) {
				t.Fatalf("summary refused %v, want %v", sum.GetRefused(), tc.refused)
			}
			for i, r := range tc.refused {
				if g := sum.GetRefused()[i]; g.GetRegion() != r.GetRegion() || g.GetMirror() != r.GetMirror() || !slices.Equal(g.GetEdges(), r.GetEdges()) {
					t.Fatalf("summary refused %v, want %v", sum.GetRefused(), tc.refused)
				}
			}
		})
	}
}

// A region whose edges fell silent keeps its last paths for PathHold. A
// mirror deleted meanwhile must leave them: a path to an unknown mirror
// makes the route input invalid, and the leader would compute no route
// for anyone (failovers included) until the hold ran out.
func TestHeldPathsOfDeletedMirror(t *testing.T) {
	s := computeWorld()
	up := pb.Health_HEALTH_UP
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, up), pr("nyc", 80, up)),
		edgeReport("u1", "us", t0, pr("paris", 70, up)),
	}
	held := map[uint32]*heldRegion{}
	eng, err := route.New(route.Config{})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := buildInput(s, t0, testInputCfg, held)
	_, st, err := eng.Step(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	// eu's edge falls silent; the nyc mirror is deleted (and the resource
	// no longer lists it).
	s.mirrors = s.mirrors[:1]
	s.resources[0].MirrorPolicy = nil
	now := t0.Add(10 * time.Second)
	s.live = []*pb.LiveReport{edgeReport("u1", "us", now, pr("paris", 70, up))}
	in, _ = buildInput(s, now, testInputCfg, held)
	if _, ok := pathOf(in, 1, 1); !ok {
		t.Fatal("eu's held path to paris lost: the hold should keep it")
	}
	if _, _, err := eng.Step(st, in); err != nil {
		t.Fatalf("route step after deleting a mirror a held region had a path to: %v", err)
	}
}

// A mirror's service time that validation accepts (the admin API takes
// the proto as it is) must be refused there if the routing policy cannot
// take it as a time.Duration: beyond 2^63 ns it would wrap negative and
// every route computation fail.
func TestServiceTimeBeyondDurationRefused(t *testing.T) {
	s := computeWorld()
	s.mirrors[0].ServiceTimeMs = 1e13
	err := ValidateObjects(&pb.Objects{Sites: s.sites, Mirrors: s.mirrors, Resources: s.resources}, DefaultLimits())
	if err == nil || !strings.Contains(err.Error(), "service_time") {
		t.Fatalf("service_time_ms 1e13: %v, want it refused naming service_time", err)
	}
}

// A wrapped access counter (2^64 − a few new flows in a second) is
// dropped from the forecaster's path (recordAccess); the routing policy's
// demand rate must not take it either: ~10^17 flows/s of projected load
// would drive the capacity spill-over for half an hour.
func TestSmoothDemandDropsImplausibleCount(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := &agentConn{demand: map[[2]uint32]float64{}, lastReport: now.Add(-time.Second)}
	r := &pb.Report{StartUnixNano: now.Add(-time.Second).UnixNano(), EndUnixNano: now.UnixNano(),
		Access: []*pb.AccessCount{
			{ResourceId: 7, RegionId: 1, NewFlows: math.MaxUint64 - 3},
			{ResourceId: 7, RegionId: 2, NewFlows: 100},
		}}
	out := a.smoothDemand(r, now)
	if len(out) != 1 || out[0].GetRegionId() != 2 {
		t.Fatalf("demand %v: want only region 2's", out)
	}
}

// `controller run --report-interval 10s`: an edge whose last report is 6 s
// old reports on time and must still count. With a fixed 5 s report max
// age its paths, mirror health and copy states would blink out for half
// of every interval.
func TestReportAgesFollowReportInterval(t *testing.T) {
	for _, tc := range []struct {
		interval, maxAge time.Duration
		wantErr          string
	}{
		{interval: time.Second},
		{interval: 10 * time.Second},
		{interval: 2 * time.Second, maxAge: 2 * time.Second, wantErr: "report max age: 2s must exceed the report interval 2s"},
	} {
		cfg := Config{ReportInterval: tc.interval, ReportMaxAge: tc.maxAge, TLS: pki.Files{CA: "ca.pem", Cert: "c.pem", Key: "k.pem"},
			Forecast: ForecastConfig{Disable: true}}
		err := cfg.setDefaults()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("interval %v, max age %v: %v, want %q", tc.interval, tc.maxAge, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if tc.interval == time.Second && (cfg.ReportMaxAge != DefaultReportMaxAge || cfg.ProbeMaxAge != DefaultProbeMaxAge) {
			t.Fatalf("default interval: max ages %v / %v, want the defaults", cfg.ReportMaxAge, cfg.ProbeMaxAge)
		}
		icfg := inputConfig{ReportMaxAge: cfg.ReportMaxAge, ProbeMaxAge: cfg.ProbeMaxAge, PathHold: cfg.PathHold, TableSlots: 1024}
		s := computeWorld()
		p := pr("paris", 10, pb.Health_HEALTH_UP)
		p.LastProbeUnixNano = t0.Add(-time.Second).UnixNano()
		s.live = []*pb.LiveReport{edgeReport("e1", "eu", t0, p)}
		age := tc.interval * 6 / 10 // inside the interval: on time
		in, _ := buildInput(s, t0.Add(age), icfg, map[uint32]*heldRegion{})
		if _, ok := pathOf(in, 1, 1); !ok {
			t.Fatalf("report interval %v, max ages %v / %v: a report %v old is ignored", tc.interval, cfg.ReportMaxAge, cfg.ProbeMaxAge, age)
		}
	}
}

// A tick whose write fails (etcd unavailable, here a cancelled context)
// leaves the damping state where the published version left it: the
// next tick starts from what agents run, so two slew-limited moves never
// go out as one.
func TestTickKeepsDampingStateWhenWriteFails(t *testing.T) {
	w := newBenchWorld(4, 3, 8)
	cli := etcdClient(t)
	defer cli.Close()
	prefix := testPrefix(t)
	c := benchController(t, w, cli, prefix)
	resp, err := cli.Put(context.Background(), prefix+keyElection+"t", "t")
	if err != nil {
		t.Fatal(err)
	}
	ls := &leaderState{fence: fence{key: prefix + keyElection + "t", rev: resp.Header.Revision},
		held: map[uint32]*heldRegion{}, saves: make(chan routeSave, 4)}
	now := time.Unix(1_800_000_000, 0)
	w.report(now, "")
	if err := c.tick(context.Background(), ls); err != nil {
		t.Fatal(err)
	}
	published, v := ls.state, ls.version
	now = now.Add(time.Second)
	w.report(now, w.mirror[0]) // a mirror fails: a new version is due
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.tick(cancelled, ls); err == nil {
		t.Fatal("tick wrote with a cancelled context")
	}
	if ls.state != published || ls.version != v {
		t.Fatal("a failed write advanced the damping state past the published version")
	}
	if err := c.tick(context.Background(), ls); err != nil {
		t.Fatal(err)
	}
	if ls.state == published || ls.version != v+1 {
		t.Fatalf("version %d after the retry, want %d with a new state", ls.version, v+1)
	}
}

// One edge reporting an absurd (but non-negative) RTT next to an honest
// edge of the same region must not make the merged path invalid: the route
// engine would then refuse every tick's input and no version would ever
// be computed again.
func TestHugeProbeRTTDoesNotBreakComputation(t *testing.T) {
	s := computeWorld()
	up := pb.Health_HEALTH_UP
	huge := &pb.ProbeResult{Mirror: "paris", RttNs: math.MaxInt64, MedianNs: math.MaxInt64, MinNs: 1,
		JitterNs: math.MaxInt64, Health: up, Samples: 5, Probes: 5}
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, up)),
		edgeReport("evil", "eu", t0, huge),
	}
	in, _ := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	for _, p := range in.Paths {
		if p.RTT < 0 || p.Recent < 0 || p.Jitter < 0 {
			t.Errorf("path %d→%d: negative merged estimate %+v", p.Region, p.Mirror, p)
		}
	}
	eng, err := route.New(route.Config{Slots: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := eng.Step(nil, in); err != nil {
		t.Fatalf("route computation refused the input: %v", err)
	}
}

// The data plane holds maps.DefaultConfig().MaxPrefixesV4 client prefixes
// of each family; every agent refuses (NACKs) a desired state with more,
// and every agent gets the same regions, so a set beyond it must be
// refused at apply as the VIP and route limits are: otherwise no agent
// takes any new version.
func TestClientPrefixesBeyondDataPlaneRefused(t *testing.T) {
	o := testObjects()
	lim := DefaultLimits()
	n := pmaps.DefaultConfig().MaxPrefixesV4 + 1
	var ps []string
	for i := range n {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 32).String())
	}
	o.Sites[1].ClientPrefixes = ps
	if err := ValidateObjects(o, lim); err == nil {
		t.Fatalf("%d IPv4 client prefixes accepted; the data plane holds %d", n, pmaps.DefaultConfig().MaxPrefixesV4)
	}
}
