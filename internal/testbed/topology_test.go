package testbed

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestLoadDemoTopology(t *testing.T) {
	topo, err := LoadTopology("testdata/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := topo.plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Regions) != 3 || len(topo.Edges) != 1 || len(topo.Mirrors) != 4 {
		t.Fatalf("regions %d edges %d mirrors %d", len(topo.Regions), len(topo.Edges), len(topo.Mirrors))
	}
	for _, r := range topo.Regions {
		if r.Clients != 2 {
			t.Errorf("region %s has %d clients", r.Name, r.Clients)
		}
	}
	// Each region's best mirror (lowest client→edge→mirror→client RTT)
	// is a different one.
	delay := map[[2]string]time.Duration{}
	for _, d := range p.delays {
		delay[[2]string{d.from, d.to}] = d.path.Delay
	}
	best := map[string]string{}
	for _, r := range topo.Regions {
		c := p.regions[r.Name][0]
		var bestM string
		var bestD time.Duration
		for _, m := range topo.Mirrors {
			d := delay[[2]string{c, r.Edge}] + delay[[2]string{r.Edge, m.Name}] + delay[[2]string{m.Name, c}]
			if bestM == "" || d < bestD {
				bestM, bestD = m.Name, d
			}
		}
		if prev, dup := best[bestM]; dup {
			t.Errorf("regions %s and %s share best mirror %s", prev, r.Name, bestM)
		}
		best[bestM] = r.Name
	}
}

func TestTopologyErrors(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(*Topology)
		field string
	}{
		{"no vips", func(t *Topology) { t.VIPs = nil }, "vips"},
		{"no regions", func(t *Topology) { t.Regions = nil }, "regions"},
		{"no edges", func(t *Topology) { t.Edges = nil }, "edges"},
		{"bad name", func(t *Topology) { t.Mirrors[0].Name = "M_1" }, "mirrors[0].name"},
		{"duplicate name", func(t *Topology) { t.Mirrors[1].Name = "ea" }, "mirrors[1].name"},
		{"client name clash", func(t *Topology) { t.Mirrors[0].Name = "ra-1" }, "regions[0] client 1"},
		{"unknown edge", func(t *Topology) { t.Regions[0].Edge = "zz" }, "regions[0].edge"},
		{"zero clients", func(t *Topology) { t.Regions[0].Clients = 0 }, "regions[0].clients"},
		{"too many clients", func(t *Topology) { t.Regions[0].Clients = 251 }, "regions[0].clients"},
		{"v6 prefix as v4", func(t *Topology) { t.Regions[0].PrefixV4 = netip.MustParsePrefix("fd00:9::/64") }, "regions[0].prefix_v4"},
		{"unmasked prefix", func(t *Topology) { t.Regions[0].PrefixV4 = netip.MustParsePrefix("10.1.0.5/24") }, "regions[0].prefix_v4"},
		{"overlapping regions", func(t *Topology) { t.Regions[1].PrefixV4 = netip.MustParsePrefix("10.1.0.0/16") }, "regions[1].prefix_v4"},
		{"region in infra", func(t *Topology) { t.Regions[1].PrefixV4 = netip.MustParsePrefix("10.255.3.0/24") }, "regions[1].prefix_v4"},
		{"prefix too small", func(t *Topology) {
			t.Regions[0].PrefixV4 = netip.MustParsePrefix("10.1.0.0/30")
			t.Regions[0].Clients = 3
		}, "regions[0].clients"},
		{"three arms", func(t *Topology) { t.Edges[0].Arms = 3 }, "edges[0].arms"},
		{"vip in region", func(t *Topology) { t.VIPs[0] = netip.MustParseAddr("10.1.0.77") }, "vips[0]"},
		{"duplicate vip", func(t *Topology) { t.VIPs[1] = t.VIPs[0] }, "vips[1]"},
		{"mirror address twice", func(t *Topology) {
			t.Mirrors[0].V4 = netip.MustParseAddr("10.9.0.1")
			t.Mirrors[1].V4 = netip.MustParseAddr("10.9.0.1")
		}, "mirrors[1].v4"},
		{"mirror in client prefix", func(t *Topology) { t.Mirrors[0].V4 = netip.MustParseAddr("10.2.0.9") }, "mirrors[0].v4"},
		{"mirror v4 as v6", func(t *Topology) { t.Mirrors[0].V6 = netip.MustParseAddr("10.9.0.1") }, "mirrors[0].v6"},
		{"delay unknown name", func(t *Topology) { t.Delays = []Delay{{A: "ra", B: "nowhere"}} }, "delays[0].b"},
		{"negative delay", func(t *Topology) { t.Delays = []Delay{{A: "ra", B: "m1", OneWay: Duration(-time.Millisecond)}} }, "delays[0].one_way"},
		{"loss above 1", func(t *Topology) { t.Delays = []Delay{{A: "ra", B: "m1", Loss: 1.5}} }, "delays[0].loss"},
		{"mtu", func(t *Topology) { t.MTU = 100 }, "mtu"},
		{"client mtu above mtu", func(t *Topology) { t.ClientMTU = 1600 }, "client_mtu"},
		{"port 0", func(t *Topology) { t.Service.TCPPorts = []uint16{0} }, "service.tcp_ports[0]"},
		{"small infra", func(t *Topology) { t.InfraV4 = netip.MustParsePrefix("10.255.0.0/29") }, "infra_v4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topo := smallTopo()
			tc.mod(&topo)
			err := topo.Validate()
			if !errors.Is(err, ErrInvalidTopology) {
				t.Fatalf("err %v, want ErrInvalidTopology", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
		})
	}
	if err := smallTopo().Validate(); err != nil {
		t.Fatalf("base topology: %v", err)
	}
}

func TestTopologyAddressesAndDefaults(t *testing.T) {
	topo := smallTopo()
	topo.Mirrors[1].V4 = netip.MustParseAddr("10.255.0.2") // would be allocated otherwise
	p, err := topo.plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Edges) == 0 || topo.Edges[1].Arms != 0 {
		t.Fatal("plan modified the caller's topology")
	}
	got := map[string][]armPlan{}
	for _, h := range p.hosts {
		got[h.name] = h.arms
	}
	a := netip.MustParseAddr
	want := map[string][]armPlan{
		"ra-1": {{a("10.1.0.1"), a("fd00:1::1")}},
		"rb-1": {{a("10.2.0.1"), a("fd00:2::1")}},
		"ea":   {{a("10.255.0.1"), a("fd00:ff::1")}, {a("10.255.0.3"), a("fd00:ff::2")}},
		"eb":   {{a("10.255.0.4"), a("fd00:ff::3")}},
		"m1":   {{a("10.255.0.5"), a("fd00:ff::4")}},
		"m2":   {{a("10.255.0.2"), a("fd00:ff::5")}},
	}
	for name, w := range want {
		if g := got[name]; len(g) != len(w) || (len(g) > 0 && g[0] != w[0]) || (len(g) > 1 && g[1] != w[1]) {
			t.Errorf("%s: %v, want %v", name, g, w)
		}
	}
	if p.topo.MTU != 1500 || p.topo.ClientMTU != 1500 || p.topo.Service.TCPPorts[0] != 8080 || p.topo.Service.UDPPorts[0] != 8053 {
		t.Errorf("defaults: %+v", p.topo)
	}
	// The two-armed edge routes each mirror via eth1.
	for _, h := range p.hosts {
		if h.name == "ea" && len(h.arm1Routes) != 4 {
			t.Errorf("ea eth1 routes %v", h.arm1Routes)
		}
	}
}

func TestParseTopologyStrict(t *testing.T) {
	for _, bad := range []string{
		"",
		"vips: [10.200.0.1]\nregionz: []\n",
		"vips: [not-an-ip]\n",
		"delays: [{a: x, b: y, one_way: 5 parsecs}]\n",
	} {
		if _, err := ParseTopology([]byte(bad)); !errors.Is(err, ErrInvalidTopology) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func FuzzParseTopology(f *testing.F) {
	f.Add([]byte("vips: [10.200.0.1]\nregions: [{name: a, edge: e, clients: 1, prefix_v4: 10.1.0.0/24, prefix_v6: 'fd00:1::/64'}]\nedges: [{name: e}]\n"))
	f.Add([]byte("vips: [fd00::1]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		topo, err := ParseTopology(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidTopology) {
				t.Fatalf("error without ErrInvalidTopology: %v", err)
			}
			return
		}
		if err := topo.Validate(); err != nil {
			t.Fatalf("parsed topology does not validate: %v", err)
		}
	})
}
