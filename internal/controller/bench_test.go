package controller

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/route"
)

// benchWorld fills a view with nSites sites (one edge each, probing every
// mirror), nMirrors mirrors and nRes resources (origin plus two mirrors),
// with RTTs from random locations on a sphere.
type benchWorld struct {
	v      *view
	rng    *rand.Rand
	loc    map[string][2]float64
	base   map[[2]string]float64 // (site, mirror) → rtt ms
	sites  []string
	mirror []string
}

func newBenchWorld(nSites, nMirrors, nRes int) *benchWorld {
	w := &benchWorld{v: newView(NewStore(nil, "/bench/", DefaultLimits()), quietLogger()),
		rng: rand.New(rand.NewPCG(1, 2)), loc: map[string][2]float64{}, base: map[[2]string]float64{}}
	for i := range nSites {
		name := fmt.Sprintf("site-%d", i)
		lat, lon := w.rng.Float64()*140-70, w.rng.Float64()*360-180
		w.loc[name] = [2]float64{lat, lon}
		w.v.sites[name] = &pb.Site{Name: name, Id: uint32(i + 1), Location: &pb.Location{Latitude: lat, Longitude: lon},
			ClientPrefixes: []string{fmt.Sprintf("10.%d.0.0/16", i)}, CapacityRps: 1e5}
		w.sites = append(w.sites, name)
	}
	for i := range nMirrors {
		name := fmt.Sprintf("mirror-%d", i)
		site := w.sites[i*nSites/nMirrors]
		w.v.mirrors[name] = &pb.Mirror{Name: name, Id: uint32(i + 1), Site: site, Address: fmt.Sprintf("192.0.2.%d", i+1)}
		w.mirror = append(w.mirror, name)
	}
	for _, s := range w.sites {
		for _, m := range w.mirror {
			a, b := w.loc[s], w.loc[w.v.mirrors[m].GetSite()]
			km := haversineKm(&pb.Location{Latitude: a[0], Longitude: a[1]}, &pb.Location{Latitude: b[0], Longitude: b[1]})
			w.base[[2]string{s, m}] = 2 + km/100 // ~1 ms per 100 km of fibre, round trip
		}
	}
	for i := range nRes {
		o := w.mirror[i%nMirrors]
		r := &pb.Resource{Name: fmt.Sprintf("res-%d", i), Id: uint32(i + 1), Vips: []string{fmt.Sprintf("203.0.%d.%d", i/256, i%256)},
			Ports: []uint32{443}, Protocol: pb.Protocol_PROTOCOL_TCP, Origin: o,
			MirrorPolicy: &pb.MirrorPolicy{Mirrors: []string{w.mirror[(i*7+3)%nMirrors], w.mirror[(i*13+11)%nMirrors]}},
			Profile:      &pb.RequestProfile{RoundTrips: float64(1 + i%3), BytesPerRequest: 65536}}
		if r.MirrorPolicy.Mirrors[0] == o || r.MirrorPolicy.Mirrors[1] == o || r.MirrorPolicy.Mirrors[0] == r.MirrorPolicy.Mirrors[1] {
			r.MirrorPolicy.Mirrors = nil
		}
		w.v.res[r.Name] = r
	}
	return w
}

// report refreshes every edge's probes with ±5% noise at now; down marks
// one mirror failed everywhere.
func (w *benchWorld) report(now time.Time, down string) {
	for _, s := range w.sites {
		rep := &pb.LiveReport{Node: "edge-" + s, Site: s, Role: pb.NodeRole_NODE_ROLE_EDGE, ReceivedUnixNano: now.UnixNano()}
		for _, m := range w.mirror {
			rtt := w.base[[2]string{s, m}] * (0.95 + 0.1*w.rng.Float64())
			h := pb.Health_HEALTH_UP
			if m == down {
				h = pb.Health_HEALTH_DOWN
			}
			ns := int64(rtt * float64(time.Millisecond))
			rep.Probes = append(rep.Probes, &pb.ProbeResult{Mirror: m, RttNs: ns, MedianNs: ns, MinNs: ns,
				Health: h, Samples: 10, Probes: 10, LastProbeUnixNano: now.UnixNano()})
		}
		w.v.live[rep.Node] = rep
	}
}

func benchController(b testing.TB, w *benchWorld, cli *clientv3.Client, prefix string) *Controller {
	// Discarded: the failover run logs a mirror going down or up every
	// tick, which would break the benchmark's output lines.
	c, err := New(Config{Name: "bench", TLS: shared.files, Prefix: prefix, Logger: slog.New(slog.DiscardHandler)}, cli)
	if err != nil {
		b.Fatal(err)
	}
	c.view = w.v
	c.view.store = c.store
	return c
}

// BenchmarkRouteTick is one leader tick at 4096 resources × 64 regions ×
// 32 mirrors: snapshot, input from reports, internal/route's Step, the
// desired state and its digest; on a change also compression and the
// fenced etcd write. engine-only is route.Engine.Step on the same input,
// the baseline the controller path adds to.
func BenchmarkRouteTick(b *testing.B) {
	const nSites, nMirrors, nRes = 64, 32, 4096
	w := newBenchWorld(nSites, nMirrors, nRes)
	now := time.Unix(1_800_000_000, 0)
	w.report(now, "")

	b.Run("engine-only", func(b *testing.B) {
		c := benchController(b, w, nil, "/bench/")
		in, _ := buildInput(c.view.snapshot(), now, c.inputConfig(), map[uint32]*heldRegion{})
		_, st, err := c.engine.Step(nil, in)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			in.Now = now.Add(time.Duration(i+1) * time.Second)
			if _, st, err = c.engine.Step(st, in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("region-latency", func(b *testing.B) {
		// The per-region latency summary a leader makes every tenth
		// computation (observeLatency), on the same routes.
		c := benchController(b, w, nil, "/bench/")
		in, _ := buildInput(c.view.snapshot(), now, c.inputConfig(), map[uint32]*heldRegion{})
		res, _, err := c.engine.Step(nil, in)
		if err != nil {
			b.Fatal(err)
		}
		// Demand known for six routes in seven (the weighted means' work;
		// the bench world's agents report none).
		for i := range in.Resources {
			d := make([]float64, len(in.Regions))
			for r := range d {
				d[r] = float64((i + r) % 7)
			}
			in.Resources[i].Demand = d
		}
		b.ResetTimer()
		for range b.N {
			if rs, err := route.RegionLatency(in, res); err != nil || len(rs) != nSites || rs[0].Demand == 0 {
				b.Fatal(len(rs), err)
			}
		}
	})
	b.Run("steady", func(b *testing.B) {
		c := benchController(b, w, nil, "/bench/")
		ls := &leaderState{held: map[uint32]*heldRegion{}, saves: make(chan routeSave, 1)}
		t := now
		if _, _, st, err := c.compute(ls, t); err != nil {
			b.Fatal(err)
		} else {
			ls.state = st
		}
		b.ResetTimer()
		for range b.N {
			t = t.Add(time.Second)
			b.StopTimer()
			w.report(t, "")
			b.StartTimer()
			ds, _, st, err := c.compute(ls, t)
			if err != nil {
				b.Fatal(err)
			}
			ls.state = st
			if _, err := digest(ds); err != nil {
				b.Fatal(err)
			}
		}
		ds, _, _, _ := c.compute(ls, t)
		packed, _ := pack(&pb.DesiredRecord{State: ds})
		raw, _ := marshal.Marshal(ds)
		b.ReportMetric(float64(len(raw)), "state-bytes")
		b.ReportMetric(float64(len(packed)), "stored-bytes")
		b.ReportMetric(float64(len(ds.GetWeightSets())), "weight-sets")
	})
	b.Run("failover-with-etcd-write", func(b *testing.B) {
		cli := etcdClient(b)
		defer cli.Close()
		prefix := testPrefix(b)
		c := benchController(b, w, cli, prefix)
		resp, err := cli.Put(context.Background(), prefix+keyElection+"bench", "bench")
		if err != nil {
			b.Fatal(err)
		}
		ls := &leaderState{fence: fence{key: prefix + keyElection + "bench", rev: resp.Header.Revision},
			held: map[uint32]*heldRegion{}, saves: make(chan routeSave, 1)}
		t := now
		w.report(t, "")
		ls.lastNow = t
		if err := c.tick(context.Background(), ls); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			t = t.Add(time.Second)
			down := ""
			if i%2 == 0 {
				down = w.mirror[i/2%nMirrors]
			}
			b.StopTimer()
			w.report(t, down)
			ls.lastNow = t
			v := ls.version
			b.StartTimer()
			if err := c.tick(context.Background(), ls); err != nil {
				b.Fatal(err)
			}
			if ls.version == v {
				b.Fatal("a mirror failure did not produce a version")
			}
		}
	})
}

// BenchmarkProbeToAgent is the time from an agent reporting a mirror
// down (or up again) to that agent applying the version without (with)
// it: report → etcd → leader (computes at once on a health change) →
// etcd → replica → agent. etcd-watch is one put seen by a watcher, the
// floor under the two etcd hops.
func BenchmarkProbeToAgent(b *testing.B) {
	b.Run("health-change", func(b *testing.B) {
		// The tick is 10 s, so only the immediate path can be measured.
		r := startReplica(b, "bench", testPrefix(b), func(c *Config) { c.TickInterval = 10 * time.Second })
		cli := etcdClient(b)
		defer cli.Close()
		s := NewStore(cli, r.c.store.prefix, DefaultLimits())
		if _, err := s.Apply(context.Background(), testObjects(), false); err != nil {
			b.Fatal(err)
		}
		us := startAgent(b, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
		us.setProbes(map[string]time.Duration{"paris": 80 * time.Millisecond, "nyc": 5 * time.Millisecond}, pb.Health_HEALTH_UP)
		waitFor(b, "us on nyc", 20*time.Second, func() bool { return routeOf(us.current(), "disk", "us")["nyc"] > 0 })
		nycState := func() pb.MirrorState {
			for _, m := range us.current().GetMirrors() {
				if m.GetName() == "nyc" {
					return m.GetState()
				}
			}
			return 0
		}
		var total time.Duration
		b.ResetTimer()
		for i := range b.N {
			// Down, then up again: each flips nyc's data-plane state (and
			// the first takes nyc out of the route; its return is damped).
			h, want := pb.Health_HEALTH_DOWN, pb.MirrorState_MIRROR_STATE_DOWN
			if i%2 == 1 {
				h, want = pb.Health_HEALTH_UP, pb.MirrorState_MIRROR_STATE_ACTIVE
			}
			start := time.Now()
			us.setProbe("nyc", 5*time.Millisecond, h)
			for nycState() != want {
				if time.Since(start) > 10*time.Second {
					b.Fatalf("no version after %v", time.Since(start))
				}
				time.Sleep(50 * time.Microsecond)
			}
			total += time.Since(start)
			if i == 0 {
				if w := routeOf(us.current(), "disk", "us"); w["nyc"] != 0 || w["paris"] == 0 {
					b.Fatalf("route still on the failed mirror: %v", w)
				}
			}
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/change")
	})
	b.Run("etcd-watch", func(b *testing.B) {
		cli := etcdClient(b)
		defer cli.Close()
		key := testPrefix(b) + "k"
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wch := cli.Watch(ctx, key)
		b.ResetTimer()
		for i := range b.N {
			if _, err := cli.Put(ctx, key, fmt.Sprint(i)); err != nil {
				b.Fatal(err)
			}
			<-wch
		}
	})
}

var _ = math.Pi
var _ = route.DefaultConfig
