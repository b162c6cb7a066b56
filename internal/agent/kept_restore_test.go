package agent

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.yaml.in/yaml/v3"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/chash"
	pmaps "github.com/premirror/premirror/internal/maps"
)

// keptHeader is the node part of the config of TestFirstVersionFailureRestoresKeptRouting:
// role both, so a version writes the router's maps, then the decap's.
const keptHeader = `node: edge-test
role: both
router_interfaces: [pa0]
decap_interfaces: [pa1]
decap_sources: [10.77.0.0/24]
pin_dir: PIN
metrics_addr: 127.0.0.1:0
limits: {max_sessions: 4096, max_affinity: 1024, max_routes: 1024, max_tables: 64, table_slots: 256, max_mirrors: 64, max_counters: 1024}
`

// keptPrevious is the routing state the previous agent applied last:
// IPv4 and IPv6 prefixes, VIPs with options, routes of uneven shares, a
// GUE mirror at this host's decap address (its port is the decap
// endpoint's).
const keptPrevious = `
default_region: eu
regions:
  - {name: eu, id: 1, prefixes: [198.51.100.0/24, "2001:db8:1::/48"]}
  - {name: us, id: 2, prefixes: [203.0.113.0/24, "2001:db8:2::/48"]}
  - {name: as, id: 3, prefixes: [100.64.0.0/10]}
mirrors:
  - {name: paris, id: 1, address: 10.77.0.10}
  - {name: dallas, id: 2, address: 10.77.0.11, state: draining}
  - {name: paris6, id: 3, address: "fd77::10", encap: gue, gue_port: 6080}
  - {name: tokyo, id: 4, address: 10.77.0.12}
  - {name: self, id: 5, address: 10.78.0.1, encap: gue, gue_port: 6081}
resources:
  - name: web
    id: 7
    vips: [192.0.2.1:80/tcp, 192.0.2.1:53/udp, "[2001:db8:ff::1]:443/tcp"]
    affinity: {timeout: 30m, prefix_v4: 24}
    routes:
      eu: {paris: 3, dallas: 1, tokyo: 2}
      us: {dallas: 1, paris: 1}
      "*": {paris6: 1, self: 1}
  - name: db
    id: 8
    vips: [192.0.2.2:5432/tcp, "[2001:db8:ff::2]:5432/tcp"]
    hash_no_src_port: true
    affinity: {timeout: 90s, prefix_v6: 56}
    routes:
      as: {paris6: 2, tokyo: 5}
      "*": {paris: 1, paris6: 1, tokyo: 1}
`

// TestFirstVersionFailureRestoresKeptRouting: an agent started under a
// controller keeps the routing the previous agent left in the pinned
// maps until the controller's first version. When applying that version
// failed part-way, only the node's settings were put back: the mirrors,
// VIPs, routes and prefixes written before the failure stayed, the
// router forwarded on half a version the controller was told (NACK) was
// not applied, until the next version. Now the maps go back to exactly
// what they held — every route's table slot for slot, so no flow moves —
// and the agent is where it was: version kept, keeping the routing, the
// next version a first one again. The failure is injected at each step
// of the reconcile order: a frozen map refuses every write from user
// space, a full pm_route_tables refuses a new table, and a test hook fails
// the apply after the decap endpoints (the last write, the probe echo, is
// the same in the version and in the restore: a frozen map would fail
// both).
func TestFirstVersionFailureRestoresKeptRouting(t *testing.T) {
	requireRoot(t)
	tlsFiles := controllerTLS(t)
	for _, tc := range []struct {
		name   string
		freeze string // the map that refuses writes ("": none)
		// failAfterEndpoints fails the apply once, after the decap
		// endpoints were written (testHookAfterDecapEndpoints).
		failAfterEndpoints bool
		edit               func(t *testing.T, s *DesiredState)
	}{
		{
			name: "after mirrors, at the VIPs", freeze: "pm_vips",
			edit: func(t *testing.T, s *DesiredState) {
				mirror(t, s, "tokyo").Address = "10.77.0.13"
				mirror(t, s, "dallas").State = "active"
				s.Mirrors = append(s.Mirrors, Mirror{Name: "lyon", ID: 6, Address: "10.77.0.14"})
				resource(t, s, "web").Routes["eu"]["lyon"] = 4
				resource(t, s, "web").Affinity.Timeout = Duration(10 * time.Minute)
			},
		},
		{
			name: "after VIPs, at the routes", freeze: "pm_route_index",
			edit: func(t *testing.T, s *DesiredState) {
				s.Mirrors = append(s.Mirrors, Mirror{Name: "lyon", ID: 6, Address: "10.77.0.14"})
				web := resource(t, s, "web")
				web.VIPs = []string{"192.0.2.1:80/tcp", "192.0.2.1:443/tcp", "[2001:db8:ff::1]:443/tcp", "[2001:db8:ff::9]:443/tcp"}
				web.Routes["eu"] = map[string]uint32{"paris": 1, "lyon": 1}
				resource(t, s, "db").HashNoSrcPort = false
			},
		},
		{
			name: "part-way through the routes, route tables full",
			edit: func(t *testing.T, s *DesiredState) {
				resource(t, s, "web").Routes["us"] = map[string]uint32{"paris": 5, "tokyo": 2}
				resource(t, s, "db").Routes["*"] = map[string]uint32{"paris": 2, "paris6": 1}
				// 70 distinct tables do not fit max_tables 64.
				for i := range uint32(70) {
					s.Resources = append(s.Resources, Resource{Name: fmt.Sprintf("bulk%d", i), ID: 100 + i,
						VIPs:   []string{fmt.Sprintf("192.0.2.%d:80/tcp", 100+i)},
						Routes: map[string]map[string]uint32{"*": {"paris": 1 + i, "tokyo": 200 - i}}})
				}
			},
		},
		{
			name: "after routes, part-way through the prefixes", freeze: "pm_regions_v4",
			edit: func(t *testing.T, s *DesiredState) {
				resource(t, s, "web").Routes["us"] = map[string]uint32{"paris": 2, "tokyo": 1}
				resource(t, s, "db").Routes["*"] = map[string]uint32{"paris": 1}
				s.Regions[0].Prefixes = []string{"198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48", "2001:db8:3::/48"}
				s.Regions[1].Prefixes = []string{"2001:db8:2::/48", "2001:db8:4::/48"}
				s.Regions[2].Prefixes = []string{"100.64.0.0/10", "2001:db8:5::/48"}
			},
		},
		{
			name: "after prefixes, at the default region", freeze: "pm_settings",
			edit: func(t *testing.T, s *DesiredState) {
				s.DefaultRegion = "us"
				s.Mirrors = append(s.Mirrors, Mirror{Name: "lyon", ID: 6, Address: "10.77.0.14"})
				resource(t, s, "web").Routes["eu"] = map[string]uint32{"lyon": 1, "tokyo": 3}
				s.Regions[1].Prefixes = append(s.Regions[1].Prefixes, "192.0.2.128/25", "2001:db8:6::/48")
			},
		},
		{
			name: "after the deletions, at the last mirror", freeze: "pm_mirrors",
			edit: func(t *testing.T, s *DesiredState) {
				s.Mirrors = slices.DeleteFunc(s.Mirrors, func(m Mirror) bool { return m.Name == "tokyo" })
				s.Regions = s.Regions[:2]
				web, db := resource(t, s, "web"), resource(t, s, "db")
				delete(web.Routes["eu"], "tokyo")
				delete(db.Routes, "as")
				delete(db.Routes["*"], "tokyo")
				db.VIPs = db.VIPs[:1]
			},
		},
		{
			name: "after the router, at the decap endpoints", freeze: "pm_decap_addrs",
			edit: func(t *testing.T, s *DesiredState) {
				mirror(t, s, "self").GUEPort = 7000
				resource(t, s, "web").Routes["us"] = map[string]uint32{"self": 1}
				s.Regions[2].Prefixes = []string{"100.64.0.0/10", "2001:db8:7::/48"}
			},
		},
		{
			name: "after the decap endpoints, at the probe echo", failAfterEndpoints: true,
			edit: func(t *testing.T, s *DesiredState) {
				mirror(t, s, "self").GUEPort = 7000
				resource(t, s, "web").Routes["us"] = map[string]uint32{"self": 1}
				s.Regions[2].Prefixes = []string{"100.64.0.0/10", "2001:db8:7::/48"}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := agentNS(t)
			if err := ns.n.AddAddr("pa1", netip.MustParsePrefix("10.78.0.1/24")); err != nil {
				t.Fatal(err)
			}
			pin := bpffsDir(t)
			header := strings.Replace(keptHeader, "PIN", pin, 1)

			// The previous agent: its tables derive from earlier ones
			// (chash moves as few slots as it can), as a long-running
			// agent's do, so the layout is not a function of the shares.
			earlier := strings.NewReplacer(`eu: {paris: 3, dallas: 1, tokyo: 2}`, `eu: {paris: 1, dallas: 1, tokyo: 1}`,
				`"*": {paris: 1, paris6: 1, tokyo: 1}`, `"*": {paris: 1, tokyo: 1}`).Replace(keptPrevious)
			cfg, path := writeConfig(t, "both.yaml", header+earlier)
			prev, err := startAgentFile(t, ns, cfg, path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(header+keptPrevious), 0o644); err != nil {
				t.Fatal(err)
			}
			ns.Do(func() { err = prev.Reload() })
			if err != nil {
				t.Fatal(err)
			}
			prev.Close()

			// This agent, under a controller that does not answer.
			next := *prev.config()
			next.State = DesiredState{}
			next.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: tlsFiles, Utilization: "none"}
			if err := next.Validate(); err != nil {
				t.Fatal(err)
			}
			a, err := startAgent(t, ns, &next)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { a.Close(); Detach(pin, true) }()
			kept := snapshotMaps(t, a)
			if len(kept.observed.Shares) != 5 || len(kept.observed.VIPs) != 5 || kept.endpoints[netip.MustParseAddr("10.78.0.1")].GUEPort != 6081 {
				t.Fatalf("the maps do not hold the previous agent's state: %+v %+v", kept.observed, kept.endpoints)
			}

			if tc.freeze != "" {
				m, err := ebpf.LoadPinnedMap(filepath.Join(pin, tc.freeze), nil)
				if err != nil {
					t.Fatal(err)
				}
				err = m.Freeze()
				m.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			var endpointsWritten map[netip.Addr]pmaps.DecapEndpoint
			if tc.failAfterEndpoints {
				var fired atomic.Bool
				testHookAfterDecapEndpoints = func() error {
					if fired.Swap(true) {
						return nil // the restore's own pass
					}
					endpointsWritten = snapshotMaps(t, a).endpoints
					return errors.New("injected failure after the decap endpoints")
				}
				defer func() { testHookAfterDecapEndpoints = nil }()
			}
			version := parseState(t, keptPrevious)
			tc.edit(t, &version)
			ns.Do(func() { err = a.cp.apply(1, protoState(t, version)) })
			if err == nil {
				t.Fatal("the first version applied, want it to fail part-way")
			}
			t.Logf("version 1 refused: %v", err)
			if tc.failAfterEndpoints {
				// The failure came after the version's endpoints were
				// in the map: the restore had something to undo.
				if got := endpointsWritten[netip.MustParseAddr("10.78.0.1")].GUEPort; got != 7000 {
					t.Fatalf("at the injected failure the decap endpoint had GUE port %d, want the version's 7000 (endpoints %v)", got, endpointsWritten)
				}
			}

			snapshotMaps(t, a).mustEqual(t, kept, "after the first version failed")
			a.mu.Lock()
			v, obs := a.version, a.observed
			a.mu.Unlock()
			if v != keptVersion || !a.keepRouting.Load() || obs != nil {
				t.Fatalf("after the failure: version %q, keepRouting %v, observed set %v; want kept, true, false", v, a.keepRouting.Load(), obs != nil)
			}

			// The previous state as a version applies (whatever map is
			// frozen: the maps hold it already) and owns the routing.
			ns.Do(func() { err = a.cp.apply(2, protoState(t, parseState(t, keptPrevious))) })
			if err != nil {
				t.Fatalf("the previous state as version 2: %v", err)
			}
			if a.version == keptVersion || a.keepRouting.Load() {
				t.Fatalf("version 2 applied, still %q", a.version)
			}
			snapshotMaps(t, a).mustEqual(t, kept, "after version 2, the previous state")
			if tc.freeze == "" {
				// Nothing frozen: a version that changes routes and
				// tables applies too.
				good := parseState(t, keptPrevious)
				resource(t, &good, "web").Routes["us"] = map[string]uint32{"paris": 5, "tokyo": 2}
				ns.Do(func() { err = a.cp.apply(3, protoState(t, good)) })
				if err != nil {
					t.Fatalf("version 3: %v", err)
				}
				us := pmaps.RouteKey{Resource: 7, Region: 2}
				if got := a.router.Routes()[us].Shares; got[1] != 183 || got[4] != 73 {
					t.Fatalf("version 3 applied, route %v has shares %v", us, got)
				}
			}
		})
	}
}

// mapsSnapshot is what a test compares of the maps a version writes.
type mapsSnapshot struct {
	observed  *Observed
	tables    map[pmaps.RouteKey][]uint32
	endpoints map[netip.Addr]pmaps.DecapEndpoint
	sources   []netip.Prefix
}

func snapshotMaps(t *testing.T, a *Agent) mapsSnapshot {
	t.Helper()
	o, err := ReadObserved(a.router)
	if err != nil {
		t.Fatal(err)
	}
	s := mapsSnapshot{observed: o, tables: map[pmaps.RouteKey][]uint32{}, endpoints: map[netip.Addr]pmaps.DecapEndpoint{}}
	for k := range a.router.Routes() {
		s.tables[k] = a.router.RouteSlots(k.Resource, k.Region)
	}
	es, err := a.decap.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		s.endpoints[e.Addr] = e
	}
	if s.sources, err = a.decap.Sources(); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(s.sources, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	return s
}

func (s mapsSnapshot) mustEqual(t *testing.T, want mapsSnapshot, when string) {
	t.Helper()
	g, w := s.observed, want.observed
	if g.Settings != w.Settings {
		t.Errorf("%s: settings %+v, want %+v", when, g.Settings, w.Settings)
	}
	if !maps.Equal(g.Mirrors, w.Mirrors) {
		t.Errorf("%s: mirrors %v, want %v", when, g.Mirrors, w.Mirrors)
	}
	if !maps.Equal(g.VIPs, w.VIPs) {
		t.Errorf("%s: VIPs %v, want %v", when, g.VIPs, w.VIPs)
	}
	if !maps.Equal(g.Prefixes, w.Prefixes) {
		t.Errorf("%s: prefixes %v, want %v", when, g.Prefixes, w.Prefixes)
	}
	if !reflect.DeepEqual(g.Shares, w.Shares) {
		t.Errorf("%s: route shares %v, want %v", when, g.Shares, w.Shares)
	}
	if !maps.EqualFunc(s.tables, want.tables, slices.Equal) {
		for k, ts := range want.tables {
			if got := s.tables[k]; !slices.Equal(got, ts) {
				t.Errorf("%s: route %v: %d of %d slots moved", when, k, chash.Moved(got, ts), len(ts))
			}
		}
		if len(s.tables) != len(want.tables) {
			t.Errorf("%s: %d routes, want %d", when, len(s.tables), len(want.tables))
		}
	}
	if !maps.Equal(s.endpoints, want.endpoints) {
		t.Errorf("%s: decap endpoints %v, want %v", when, s.endpoints, want.endpoints)
	}
	if !slices.Equal(s.sources, want.sources) {
		t.Errorf("%s: decap sources %v, want %v", when, s.sources, want.sources)
	}
	if t.Failed() {
		t.FailNow()
	}
}

func parseState(t *testing.T, text string) DesiredState {
	t.Helper()
	var s DesiredState
	if err := yaml.Unmarshal([]byte(text), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func mirror(t *testing.T, s *DesiredState, name string) *Mirror {
	t.Helper()
	for i := range s.Mirrors {
		if s.Mirrors[i].Name == name {
			return &s.Mirrors[i]
		}
	}
	t.Fatalf("no mirror %s", name)
	return nil
}

func resource(t *testing.T, s *DesiredState, name string) *Resource {
	t.Helper()
	for i := range s.Resources {
		if s.Resources[i].Name == name {
			return &s.Resources[i]
		}
	}
	t.Fatalf("no resource %s", name)
	return nil
}

// protoState is s as the controller streams it (StateFromProto's inverse).
func protoState(t *testing.T, s DesiredState) *pb.DesiredState {
	t.Helper()
	st := &pb.DesiredState{DefaultRegion: s.DefaultRegion}
	regions := map[string]uint32{"*": 0}
	for _, r := range s.Regions {
		st.Regions = append(st.Regions, &pb.RegionState{Name: r.Name, Id: r.ID, Prefixes: r.Prefixes})
		regions[r.Name] = r.ID
	}
	mirrors := map[string]uint32{}
	for _, m := range s.Mirrors {
		pm := &pb.MirrorEndpoint{Name: m.Name, Id: m.ID, Address: m.Address, GuePort: uint32(m.GUEPort)}
		switch m.State {
		case "draining":
			pm.State = pb.MirrorState_MIRROR_STATE_DRAINING
		case "down":
			pm.State = pb.MirrorState_MIRROR_STATE_DOWN
		}
		if m.Encap == "gue" {
			pm.Encap = pb.Encapsulation_ENCAPSULATION_GUE
		}
		st.Mirrors = append(st.Mirrors, pm)
		mirrors[m.Name] = m.ID
	}
	for _, r := range s.Resources {
		pr := &pb.ResourceState{Name: r.Name, Id: r.ID, HashNoSrcPort: r.HashNoSrcPort}
		for _, v := range r.VIPs {
			vip, err := ParseVIP(v)
			if err != nil {
				t.Fatal(err)
			}
			proto := pb.Protocol_PROTOCOL_TCP
			if vip.Proto == pmaps.UDP {
				proto = pb.Protocol_PROTOCOL_UDP
			}
			pr.Vips = append(pr.Vips, &pb.VIP{Address: vip.Addr.String(), Port: uint32(vip.Port), Protocol: proto})
		}
		if af := r.Affinity; af != nil {
			pr.Affinity = &pb.Affinity{TimeoutSeconds: uint32(time.Duration(af.Timeout) / time.Second), PrefixV4: uint32(af.PrefixV4), PrefixV6: uint32(af.PrefixV6)}
		}
		for _, region := range slices.Sorted(maps.Keys(r.Routes)) {
			ws := &pb.WeightSet{}
			for _, m := range slices.Sorted(maps.Keys(r.Routes[region])) {
				ws.Weights = append(ws.Weights, &pb.MirrorWeight{MirrorId: mirrors[m], Weight: r.Routes[region][m]})
			}
			pr.RouteRegions = append(pr.RouteRegions, regions[region])
			pr.RouteWeightSets = append(pr.RouteWeightSets, uint32(len(st.WeightSets)))
			st.WeightSets = append(st.WeightSets, ws)
		}
		st.Resources = append(st.Resources, pr)
	}
	return st
}
