package agent

import (
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	pmaps "github.com/premirror/premirror/internal/maps"
)

func TestCounterGrowth(t *testing.T) {
	k1 := pmaps.CounterKey{Resource: 7, Region: 1, Mirror: 1}
	k2 := pmaps.CounterKey{Resource: 7, Region: 2, Mirror: 2}
	for _, tc := range []struct {
		name      string
		prev, cur map[pmaps.CounterKey]pmaps.Counter
		want      map[pmaps.CounterKey]pmaps.Counter
	}{
		{"first report counts from zero", nil,
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 5, Bytes: 500, NewFlows: 2}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 5, Bytes: 500, NewFlows: 2}}},
		{"growth only",
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 5, Bytes: 500, NewFlows: 2}, k2: {Packets: 1, Bytes: 60, NewFlows: 1}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 8, Bytes: 800, NewFlows: 3}, k2: {Packets: 1, Bytes: 60, NewFlows: 1}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 3, Bytes: 300, NewFlows: 1}}},
		{"recreated counter counts from zero",
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 50, Bytes: 5000, NewFlows: 20}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 4, Bytes: 400, NewFlows: 1}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 4, Bytes: 400, NewFlows: 1}}},
		{"recreated counter already past the old packets, not the old flows",
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 50, Bytes: 5000, NewFlows: 20}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 60, Bytes: 6000, NewFlows: 3}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 60, Bytes: 6000, NewFlows: 3}}},
		{"recreated counter past the old packets, not the old bytes",
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 50, Bytes: 50000, NewFlows: 2}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 60, Bytes: 3600, NewFlows: 5}},
			map[pmaps.CounterKey]pmaps.Counter{k1: {Packets: 60, Bytes: 3600, NewFlows: 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[pmaps.CounterKey]pmaps.Counter{}
			for _, a := range counterGrowth(tc.prev, tc.cur) {
				got[pmaps.CounterKey{Resource: pmaps.ResourceID(a.ResourceId), Region: pmaps.RegionID(a.RegionId), Mirror: pmaps.MirrorID(a.MirrorId)}] =
					pmaps.Counter{Packets: a.Packets, Bytes: a.Bytes, NewFlows: a.NewFlows}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for k, w := range tc.want {
				if got[k] != w {
					t.Fatalf("%v: got %+v, want %+v", k, got[k], w)
				}
			}
		})
	}
}

func TestStaleCounter(t *testing.T) {
	c := &Compiled{
		DefaultRegion: 3,
		Mirrors:       map[pmaps.MirrorID]pmaps.Mirror{1: {}},
		RegionNames:   map[pmaps.RegionID]string{1: "eu", 3: "ap"}, // Compile: the default region is a defined one
		ResourceNames: map[pmaps.ResourceID]string{7: "web"},
	}
	for _, tc := range []struct {
		k     pmaps.CounterKey
		stale bool
	}{
		{pmaps.CounterKey{Resource: 7, Region: 1, Mirror: 1}, false},
		{pmaps.CounterKey{Resource: 7, Region: 0, Mirror: 1}, false}, // no region matched, none by default
		{pmaps.CounterKey{Resource: 7, Region: 3, Mirror: 1}, false}, // the default region
		{pmaps.CounterKey{Resource: 8, Region: 1, Mirror: 1}, true},  // resource gone
		{pmaps.CounterKey{Resource: 7, Region: 2, Mirror: 1}, true},  // region gone
		{pmaps.CounterKey{Resource: 7, Region: 1, Mirror: 2}, true},  // mirror gone
	} {
		if got := staleCounter(tc.k, c); got != tc.stale {
			t.Errorf("staleCounter(%+v) = %v, want %v", tc.k, got, tc.stale)
		}
	}
}

// waitCounters polls the router's counters until ok accepts them.
func waitCounters(t *testing.T, a *Agent, ok func(map[pmaps.CounterKey]pmaps.Counter) bool) map[pmaps.CounterKey]pmaps.Counter {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		cs, err := a.router.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if ok(cs) {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters %v", cs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAccessCountersAcrossRestartAndPrune: real packets through the
// attached router. A new control plane reports only what was counted
// after it started (the pinned counters' earlier values are not one
// interval's accesses); the counters of a resource that left the desired
// state are reported once more and then deleted, under a controller at
// the next report (which finds they gained nothing) and without one at
// the apply.
func TestAccessCountersAcrossRestartAndPrune(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, path := testConfig(t, pin)
	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	web := func(cs map[pmaps.CounterKey]pmaps.Counter) (c pmaps.Counter) {
		for k, v := range cs {
			if k.Resource == 7 {
				c.Packets += v.Packets
				c.NewFlows += v.NewFlows
			}
		}
		return c
	}
	frame := udpFrame(t, ns, "192.0.2.1", 53) // a VIP of resource web (7)
	inject(t, ns, frame)
	waitCounters(t, a, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return web(cs).Packets == 1 })

	cp := &controlPlane{a: a} // a control plane starting now
	cp.baselineCounters()
	inject(t, ns, frame) // the same flow: one more packet, no new flow
	waitCounters(t, a, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return web(cs).Packets == 2 })
	var rep pmaps.Counter
	for _, c := range cp.accessCounts() {
		rep.Packets += c.Packets
		rep.NewFlows += c.NewFlows
	}
	if rep.Packets != 1 || rep.NewFlows != 0 {
		t.Fatalf("first report after start: %+v, want the one packet since, no new flow", rep)
	}

	// Under a controller: web leaves the state; its last packet is
	// reported, then its counters are gone.
	inject(t, ns, frame)
	waitCounters(t, a, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return web(cs).Packets == 3 })
	a.mu.Lock()
	keep := a.compiled
	without := *keep
	without.ResourceNames = map[pmaps.ResourceID]string{}
	a.compiled = &without
	a.mu.Unlock()
	rep = pmaps.Counter{}
	for _, c := range cp.accessCounts() {
		rep.Packets += c.Packets
	}
	if rep.Packets != 1 {
		t.Fatalf("last report of a removed resource: %d packets, want 1", rep.Packets)
	}
	// Deleted at the next report, having gained nothing since: the
	// report with their last growth went out (journaled) first.
	if cs, _ := a.router.Counters(); web(cs).Packets != 3 {
		t.Fatalf("counters of a removed resource deleted with the report of their last growth: %v", cs)
	}
	if out := cp.accessCounts(); len(out) != 0 {
		t.Fatalf("report after the last growth: %v", out)
	}
	if cs, _ := a.router.Counters(); web(cs).Packets != 0 {
		t.Fatalf("counters of a removed resource kept: %v", cs)
	}
	a.mu.Lock()
	a.compiled = keep
	a.mu.Unlock()

	// Without a controller: the apply that removes web deletes them.
	inject(t, ns, frame)
	waitCounters(t, a, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return web(cs).Packets > 0 })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg2, _ := writeConfig(t, "edge.yaml", strings.Replace(string(b), "id: 7", "id: 8", 1))
	ns.Do(func() { err = a.apply(cfg2) })
	if err != nil {
		t.Fatal(err)
	}
	if cs, _ := a.router.Counters(); web(cs).Packets != 0 {
		t.Fatalf("static apply kept the counters of a removed resource: %v", cs)
	}
}

// forwardedPackets reads edge_forwarded_packets_total{mirror} from a scrape.
func forwardedPackets(t *testing.T, a *Agent, mirror string) (float64, bool) {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "edge_forwarded_packets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelIs(m, "mirror", mirror) {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestForwardedCounterNeverGoesBackwards: two resources route to one
// mirror; removing one of them (static config, its counters pruned at
// the apply) must not make edge_forwarded_packets_total{mirror} go down:
// the mirror is still there and Prometheus reads a decrease as a reset.
func TestForwardedCounterNeverGoesBackwards(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	_, path := testConfig(t, pin)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every region to paris only, and a second resource (api) on paris.
	base := strings.NewReplacer(
		"eu: {paris: 3, dallas: 1}", "eu: {paris: 1}",
		"us: {dallas: 1}", "us: {paris: 1}",
		`"*": {paris6: 1}`, `"*": {paris: 1}`,
	).Replace(string(b))
	two := base + `  - name: api
    id: 9
    vips: [192.0.2.2:53/udp]
    routes:
      "*": {paris: 1}
`
	write := func(s string) *Config {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cfg := write(two)
	var a *Agent
	ns.Do(func() { a = New(cfg, "", nil); err = a.Start() })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	inject(t, ns, udpFrame(t, ns, "192.0.2.1", 53), udpFrame(t, ns, "192.0.2.2", 53))
	waitCounters(t, a, func(cs map[pmaps.CounterKey]pmaps.Counter) bool {
		var web, api uint64
		for k, v := range cs {
			switch k.Resource {
			case 7:
				web += v.Packets
			case 9:
				api += v.Packets
			}
		}
		return web == 1 && api == 1
	})
	before, ok := forwardedPackets(t, a, "paris")
	if !ok || before != 2 {
		t.Fatalf("edge_forwarded_packets_total{mirror=paris} = %v (present %v), want 2", before, ok)
	}

	// api leaves the state; paris stays.
	cfg2 := write(base)
	ns.Do(func() { err = a.apply(cfg2) })
	if err != nil {
		t.Fatal(err)
	}
	after, ok := forwardedPackets(t, a, "paris")
	if !ok || after < before {
		t.Fatalf("edge_forwarded_packets_total{mirror=paris} went from %v to %v (present %v) after a resource left: a counter must not go backwards", before, after, ok)
	}
}
