package agent

import (
	stdmaps "maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/maps"
)

func sampleProtoState() *pb.DesiredState {
	return &pb.DesiredState{
		Version:       9,
		DefaultRegion: "eu",
		Regions: []*pb.RegionState{
			{Name: "eu", Id: 1, Prefixes: []string{"10.1.0.0/16"}},
			{Name: "us", Id: 2, Prefixes: []string{"10.2.0.0/16", "2001:db8:2::/48"}},
		},
		Mirrors: []*pb.MirrorEndpoint{
			{Name: "paris", Id: 1, Address: "192.0.2.10"},
			{Name: "nyc", Id: 2, Address: "2001:db8::20", State: pb.MirrorState_MIRROR_STATE_DRAINING,
				Encap: pb.Encapsulation_ENCAPSULATION_GUE, GuePort: 6080},
		},
		WeightSets: []*pb.WeightSet{
			{Weights: []*pb.MirrorWeight{{MirrorId: 1, Weight: 1}}},
			{Weights: []*pb.MirrorWeight{{MirrorId: 1, Weight: 300}, {MirrorId: 2, Weight: 724}}},
		},
		Resources: []*pb.ResourceState{{
			Name: "disk", Id: 7,
			Vips: []*pb.VIP{
				{Address: "203.0.113.5", Port: 443, Protocol: pb.Protocol_PROTOCOL_TCP},
				{Address: "2001:db8::5", Port: 53, Protocol: pb.Protocol_PROTOCOL_UDP},
			},
			Affinity:     &pb.Affinity{TimeoutSeconds: 1800, PrefixV4: 24},
			RouteRegions: []uint32{0, 2}, RouteWeightSets: []uint32{0, 1},
		}},
		TableSlots: 1024,
	}
}

func TestStateFromProto(t *testing.T) {
	ds, err := StateFromProto(sampleProtoState())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ds.Compile(maps.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultRegion != 1 || len(c.Prefixes) != 3 || c.Mirrors[2].State != maps.MirrorDraining {
		t.Fatalf("compiled %+v", c)
	}
	if m := c.Mirrors[2]; m.Encap != maps.EncapGUE || m.GUEPort != 6080 {
		t.Fatalf("GUE mirror compiled as %+v", m)
	}
	if m := c.Mirrors[1]; m.Encap != maps.EncapIPIP || m.GUEPort != 0 {
		t.Fatalf("IPIP mirror compiled as %+v", m)
	}
	// A GUE mirror without a port converts, and Compile refuses it.
	st := sampleProtoState()
	st.Mirrors[1].GuePort = 0
	if ds, err := StateFromProto(st); err != nil {
		t.Fatal(err)
	} else if _, err := ds.Compile(maps.DefaultConfig()); err == nil || !strings.Contains(err.Error(), "mirrors[1].gue_port") {
		t.Fatalf("GUE without a port: %v", err)
	}
	o := c.VIPs[maps.VIP{Addr: mustAddr("203.0.113.5"), Port: 443, Proto: maps.TCP}]
	if o.Resource != 7 || o.AffinityTimeout != 30*time.Minute || o.AffinityPrefixV4 != 24 {
		t.Fatalf("vip options %+v", o)
	}
	if _, ok := c.VIPs[maps.VIP{Addr: mustAddr("2001:db8::5"), Port: 53, Proto: maps.UDP}]; !ok {
		t.Fatalf("v6 vip missing: %v", c.VIPs)
	}
	if w := c.Routes[maps.RouteKey{Resource: 7, Region: 2}]; w[1] != 300 || w[2] != 724 {
		t.Fatalf("route us %v", w)
	}
	if w := c.Routes[maps.RouteKey{Resource: 7, Region: maps.RegionAny}]; len(w) != 1 || w[1] != 1 {
		t.Fatalf("wildcard route %v", w)
	}
}

func TestStateFromProtoRejects(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*pb.DesiredState)
		field string
	}{
		{"nil", nil, "desired state"},
		{"dup region id", func(s *pb.DesiredState) { s.Regions[1].Id = 1 }, "regions[1].id"},
		{"dup mirror id", func(s *pb.DesiredState) { s.Mirrors[1].Id = 1 }, "mirrors[1].id"},
		{"bad mirror state", func(s *pb.DesiredState) { s.Mirrors[0].State = 42 }, "mirrors[0].state"},
		{"bad encapsulation", func(s *pb.DesiredState) { s.Mirrors[0].Encap = 9 }, "mirrors[0].encap"},
		{"GUE port too big", func(s *pb.DesiredState) { s.Mirrors[1].GuePort = 70000 }, "mirrors[1].gue_port"},
		{"unknown mirror in set", func(s *pb.DesiredState) { s.WeightSets[1].Weights[1].MirrorId = 9 }, "weight_sets[1].weights[1].mirror_id"},
		{"mirror twice in set", func(s *pb.DesiredState) { s.WeightSets[1].Weights[1].MirrorId = 1 }, "weight_sets[1].weights[1].mirror_id"},
		{"unknown region", func(s *pb.DesiredState) { s.Resources[0].RouteRegions[1] = 5 }, "resources[0].route_regions[1]"},
		{"region twice", func(s *pb.DesiredState) { s.Resources[0].RouteRegions[1] = 0 }, "resources[0].route_regions[1]"},
		{"weight set out of range", func(s *pb.DesiredState) { s.Resources[0].RouteWeightSets[0] = 2 }, "resources[0].route_weight_sets[0]"},
		{"arrays differ", func(s *pb.DesiredState) { s.Resources[0].RouteWeightSets = s.Resources[0].RouteWeightSets[:1] }, "resources[0].route_weight_sets"},
		{"bad vip address", func(s *pb.DesiredState) { s.Resources[0].Vips[0].Address = "nope" }, "resources[0].vips[0]: address"},
		{"port zero", func(s *pb.DesiredState) { s.Resources[0].Vips[0].Port = 0 }, "resources[0].vips[0]: port"},
		{"port too big", func(s *pb.DesiredState) { s.Resources[0].Vips[1].Port = 70000 }, "resources[0].vips[1]: port"},
		{"no protocol", func(s *pb.DesiredState) { s.Resources[0].Vips[1].Protocol = 0 }, "resources[0].vips[1]: protocol"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st *pb.DesiredState
			if tc.edit != nil {
				st = sampleProtoState()
				tc.edit(st)
			}
			_, err := StateFromProto(st)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want one naming %q", err, tc.field)
			}
		})
	}
}

// FuzzStateFromProto feeds arbitrary wire bytes through the decoder, the
// conversion and Compile: bad input must fail cleanly, never panic.
func FuzzStateFromProto(f *testing.F) {
	b, err := proto.Marshal(sampleProtoState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var st pb.DesiredState
		if err := proto.Unmarshal(b, &st); err != nil {
			return
		}
		ds, err := StateFromProto(&st)
		if err != nil {
			return
		}
		_, _ = ds.Compile(maps.DefaultConfig())
	})
}

// TestReconcileDecapGUE: endpoints follow the address list and the GUE
// port, rewriting only what differs.
func TestReconcileDecapGUE(t *testing.T) {
	requireRoot(t)
	d, err := maps.LoadDecap(maps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a4, a6, old := mustAddr("192.0.2.10"), mustAddr("2001:db8::10"), mustAddr("192.0.2.99")
	if err := d.AddEndpoint(old); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		addrs          []netip.Addr
		port           uint16
		only           bool // sources only
		written, dropd int
	}{
		{[]netip.Addr{a4, a6}, 0, false, 2, 1},
		{[]netip.Addr{a4, a6}, 0, false, 0, 0},    // unchanged: nothing written
		{[]netip.Addr{a4, a6}, 6080, false, 2, 0}, // the port changed on both
		{[]netip.Addr{a4, a6}, 6080, true, 2, 0},  // decap_sources set
		{[]netip.Addr{a4, a6}, 6080, true, 0, 0},
		{[]netip.Addr{a6}, 6080, true, 0, 1},
		{[]netip.Addr{a6}, 0, false, 1, 0},
	} {
		ports, _ := planDecap(step.addrs, step.port, 0, nil, "", nil)
		ch, err := ReconcileDecap(d, ports, step.only)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Written != step.written || ch.Deleted != step.dropd {
			t.Fatalf("%v port %d: changes %+v, want %d written %d deleted", step.addrs, step.port, ch, step.written, step.dropd)
		}
		eps, err := d.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		if len(eps) != len(step.addrs) {
			t.Fatalf("endpoints %v, want %v", eps, step.addrs)
		}
		for _, e := range eps {
			if !slices.Contains(step.addrs, e.Addr) || e.GUEPort != step.port || e.SourcesOnly != step.only {
				t.Fatalf("endpoint %+v, want one of %v with GUE port %d, sources only %v", e, step.addrs, step.port, step.only)
			}
		}
	}
}

// TestMirrorHealthSaysWhy: a mirror host reports every mirror it serves
// to the controller and in edge_hosted_mirror_health: down, with why, one
// whose gue_port is the host's probe port (its decap would take the
// probes for GUE) and a second GUE port at an address that has one (the
// controller routes around both; probes cannot see it); unknown, left to
// the probes, a mirror naming this node at an address it does not
// terminate (a NATed public address looks the same). Fixing the state
// brings them up. A node without a decap program (an edge) cannot vouch
// for the mirrors naming it.
func TestMirrorHealthSaysWhy(t *testing.T) {
	st := sampleProtoState()
	st.Mirrors = []*pb.MirrorEndpoint{
		{Name: "paris", Id: 1, Address: "192.0.2.10", Node: "host"},
		{Name: "probe-port", Id: 2, Address: "2001:db8::10", Encap: pb.Encapsulation_ENCAPSULATION_GUE, GuePort: uint32(DefaultProbePort)},
		{Name: "gue-a", Id: 3, Address: "192.0.2.10", Encap: pb.Encapsulation_ENCAPSULATION_GUE, GuePort: 6080},
		{Name: "gue-b", Id: 4, Address: "192.0.2.10", Encap: pb.Encapsulation_ENCAPSULATION_GUE, GuePort: 6081, Node: "host"},
		{Name: "elsewhere", Id: 5, Address: "192.0.2.77", Node: "host"},
		{Name: "not-ours", Id: 6, Address: "192.0.2.78", Node: "other"},
	}
	st.WeightSets = []*pb.WeightSet{{Weights: []*pb.MirrorWeight{{MirrorId: 1, Weight: 1}}}}
	st.Resources[0].RouteRegions, st.Resources[0].RouteWeightSets = []uint32{0}, []uint32{0}

	a := New(&Config{Node: "host", Role: RoleMirror, DecapAddresses: []string{"192.0.2.10", "2001:db8::10"},
		Controller: &ControllerCfg{Site: "eu", Utilization: "none"}}, "", discardLogger())
	cp := &controlPlane{a: a}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	health := func(cp *controlPlane) map[string]string {
		got := map[string]string{}
		for _, mh := range cp.mirrorHealth() {
			got[mh.GetMirror()] = strings.TrimSpace(strings.TrimPrefix(mh.GetHealth().String(), "HEALTH_") + " " + mh.GetReason())
		}
		return got
	}
	want := map[string]string{"paris": "UP", "probe-port": "DOWN gue_port_is_probe_port", "gue-a": "UP",
		"gue-b": "DOWN gue_port_conflict", "elsewhere": "UNKNOWN address_not_decapsulated"}
	if got := health(cp); !stdmaps.Equal(got, want) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	exp := `
# HELP edge_hosted_mirror_health ` + hostedHelp + `
# TYPE edge_hosted_mirror_health gauge
edge_hosted_mirror_health{health="down",mirror="gue-b",reason="gue_port_conflict"} 1
edge_hosted_mirror_health{health="down",mirror="probe-port",reason="gue_port_is_probe_port"} 1
edge_hosted_mirror_health{health="unknown",mirror="elsewhere",reason="address_not_decapsulated"} 1
edge_hosted_mirror_health{health="up",mirror="gue-a",reason=""} 1
edge_hosted_mirror_health{health="up",mirror="paris",reason=""} 1
`
	if err := testutil.GatherAndCompare(a.Registry(), strings.NewReader(exp), "edge_hosted_mirror_health"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}

	// The operator fixes the ports and moves "elsewhere" onto this host.
	st.Mirrors[1].GuePort, st.Mirrors[3].GuePort, st.Mirrors[4].Address = 9000, 6080, "2001:db8::10"
	if err := cp.apply(st.GetVersion()+1, st); err != nil {
		t.Fatal(err)
	}
	for m, h := range health(cp) {
		if h != "UP" {
			t.Fatalf("after the fix %s is %q", m, h)
		}
	}

	edge := New(&Config{Node: "host", Role: RoleEdge, Controller: &ControllerCfg{Site: "eu", Utilization: "none"}}, "", discardLogger())
	ecp := &controlPlane{a: edge}
	if err := ecp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if got, want := health(ecp), map[string]string{"paris": "UNKNOWN no_decap_program", "gue-b": "UNKNOWN no_decap_program",
		"elsewhere": "UNKNOWN no_decap_program"}; !stdmaps.Equal(got, want) {
		t.Fatalf("edge reported %v, want %v", got, want)
	}
}

// TestRefusedVersionKeepsEdgeSources: the edges a refused controller
// version lists are not the running ones. The unlisted-edge check after
// a later reload or address change compares decap_sources with the edges
// of the version the maps hold; before, a refused version's list
// replaced them until the next version applied.
func TestRefusedVersionKeepsEdgeSources(t *testing.T) {
	a := New(&Config{Node: "host", Role: RoleMirror, DecapAddresses: []string{"192.0.2.10"},
		Controller: &ControllerCfg{Site: "eu", Utilization: "none"}}, "", discardLogger())
	cp := &controlPlane{a: a}
	st := sampleProtoState()
	st.EdgeSources = []*pb.EdgeSource{{Node: "edge-a", Addresses: []string{"198.51.100.1"}}}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	want := []edgeSource{{node: "edge-a", addr: netip.MustParseAddr("198.51.100.1")}}
	edges := func() []edgeSource {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Clone(a.edgeSources)
	}
	if got := edges(); !slices.Equal(got, want) {
		t.Fatalf("after version %d: edges %v, want %v", st.GetVersion(), got, want)
	}
	// The next version lists another edge but does not compile (GUE
	// without a port): NACKed, the running version's edges stay.
	bad := sampleProtoState()
	bad.Version++
	bad.EdgeSources = []*pb.EdgeSource{{Node: "edge-b", Addresses: []string{"198.51.100.2"}}}
	bad.Mirrors[1].GuePort = 0
	if err := cp.apply(bad.GetVersion(), bad); err == nil {
		t.Fatal("a GUE mirror without a port applied")
	}
	if got := edges(); !slices.Equal(got, want) {
		t.Fatalf("after the refused version: edges %v, want the running version's %v", got, want)
	}
}
