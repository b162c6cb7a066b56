package agent

import (
	"log/slog"
	stdmaps "maps"
	"net/netip"
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/probe"
)

// TestProbeTimeoutBacksOff: a probe waits a few RTTs of its path, at least
// 25 ms, and twice as long after every timeout in a row (at most a
// second), so a path whose RTT jumped past the timeout is measured slower
// within Fall probes instead of being declared down.
func TestProbeTimeoutBacksOff(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		est  probe.Estimate
		want time.Duration
	}{
		{"near path, floor", probe.Estimate{RTT: 3 * ms, Median: 3 * ms}, 25 * ms},
		{"three RTTs and four jitters", probe.Estimate{RTT: 20 * ms, Median: 18 * ms, Jitter: 2 * ms}, 68 * ms},
		{"the median when above the smoothed RTT", probe.Estimate{RTT: 10 * ms, Median: 30 * ms}, 90 * ms},
		{"one timeout", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 1}, 50 * ms},
		{"two timeouts: an 80 ms path answers in time", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 2}, 100 * ms},
		{"capped at a second", probe.Estimate{RTT: 3 * ms, Median: 3 * ms, Failures: 9}, time.Second},
		{"a far path is capped too", probe.Estimate{RTT: 500 * ms, Median: 500 * ms}, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := probeTimeout(c.est); got != c.want {
				t.Fatalf("probeTimeout(%+v) = %v, want %v", c.est, got, c.want)
			}
		})
	}
}

// TestPlanDecap: a decap address accepts GUE on decap_gue_port, or on
// the port a GUE mirror at that address is reached on (the desired
// state's mirrors tell the mirror host what edges send); mirrors at other
// hosts' addresses and IPIP mirrors change nothing. An address has one
// GUE port: the lowest-ID GUE mirror there sets it and a mirror asking
// for another is reported down, as is one whose port is probe.port (not
// opened: GUE would take the probes); one naming this node at an address
// it does not decapsulate is unknown (a NATed public address looks the
// same), left to the probes. The outcome never depends on map order.
func TestPlanDecap(t *testing.T) {
	a4, a6, other := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("192.0.2.99")
	gue := func(a netip.Addr, port uint16) maps.Mirror {
		return maps.Mirror{Addr: a, Encap: maps.EncapGUE, GUEPort: port}
	}
	up, down := hostedUp, hostedDown
	const probePort = 7946
	for _, c := range []struct {
		name       string
		def        uint16
		mirrors    map[maps.MirrorID]maps.Mirror
		nodes      map[maps.MirrorID]string
		want       map[netip.Addr]uint16
		wantHosted map[maps.MirrorID]hostedMirror
	}{
		{"no GUE", 0, nil, nil, map[netip.Addr]uint16{a4: 0, a6: 0}, map[maps.MirrorID]hostedMirror{}},
		{"decap_gue_port on every address", 6080, nil, nil, map[netip.Addr]uint16{a4: 6080, a6: 6080}, map[maps.MirrorID]hostedMirror{}},
		{"a GUE mirror here sets its address's port", 0, map[maps.MirrorID]maps.Mirror{1: gue(a6, 9000), 2: {Addr: a4}}, nil,
			map[netip.Addr]uint16{a4: 0, a6: 9000}, map[maps.MirrorID]hostedMirror{1: up, 2: up}},
		{"the mirror's port wins over decap_gue_port", 6080, map[maps.MirrorID]maps.Mirror{1: gue(netip.MustParseAddr("::ffff:192.0.2.10"), 9000)}, nil,
			map[netip.Addr]uint16{a4: 9000, a6: 6080}, map[maps.MirrorID]hostedMirror{1: up}},
		{"a GUE mirror elsewhere changes nothing", 0, map[maps.MirrorID]maps.Mirror{1: gue(other, 9000)}, nil,
			map[netip.Addr]uint16{a4: 0, a6: 0}, map[maps.MirrorID]hostedMirror{}},
		{"two ports at one address: the lower ID's stands", 0,
			map[maps.MirrorID]maps.Mirror{7: gue(a4, 9001), 3: gue(a4, 9000), 5: gue(a4, 9000), 9: {Addr: a4}}, nil,
			map[netip.Addr]uint16{a4: 9000, a6: 0},
			map[maps.MirrorID]hostedMirror{3: up, 5: up, 7: {health: pb.Health_HEALTH_DOWN, reason: hostedGUEConflict, other: 3}, 9: up}},
		{"gue_port = probe.port is not opened", 6080, map[maps.MirrorID]maps.Mirror{1: gue(a4, probePort), 2: gue(a4, 9000)}, nil,
			map[netip.Addr]uint16{a4: 9000, a6: 6080}, map[maps.MirrorID]hostedMirror{1: down(hostedGUEProbePort), 2: up}},
		{"named host, address not here", 0, map[maps.MirrorID]maps.Mirror{1: {Addr: other}, 2: gue(other, 9000), 3: {Addr: netip.MustParseAddr("192.0.2.98")}},
			map[maps.MirrorID]string{1: "me", 2: "me", 3: "someone-else"},
			map[netip.Addr]uint16{a4: 0, a6: 0},
			map[maps.MirrorID]hostedMirror{1: hostedUnknown(hostedNotDecapsulated), 2: hostedUnknown(hostedNotDecapsulated)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			comp := &Compiled{Mirrors: c.mirrors, MirrorNodes: c.nodes, MirrorNames: map[maps.MirrorID]string{}}
			for i := 0; i < 20; i++ { // map order must not matter
				got, hosted := planDecap([]netip.Addr{a4, a6}, c.def, probePort, comp, "me", slog.New(slog.DiscardHandler))
				if !stdmaps.Equal(got, c.want) {
					t.Fatalf("ports = %v, want %v", got, c.want)
				}
				if !stdmaps.Equal(hosted, c.wantHosted) {
					t.Fatalf("hosted = %+v, want %+v", hosted, c.wantHosted)
				}
			}
		})
	}
	// Probes off: the port is free for GUE.
	comp := &Compiled{Mirrors: map[maps.MirrorID]maps.Mirror{1: gue(a4, probePort)}}
	if got, hosted := planDecap([]netip.Addr{a4}, 0, 0, comp, "me", nil); got[a4] != probePort || hosted[1] != up {
		t.Fatalf("probes off: ports %v hosted %+v, want %d and up", got, hosted, probePort)
	}
	// An edge runs no decap program: the mirrors naming it are down.
	comp = &Compiled{Mirrors: map[maps.MirrorID]maps.Mirror{1: {Addr: a4}, 2: {Addr: a6}}, MirrorNodes: map[maps.MirrorID]string{1: "me"}}
	if got := hostedWithoutDecap(comp, "me"); !stdmaps.Equal(got, map[maps.MirrorID]hostedMirror{1: hostedUnknown(hostedNoDecap)}) {
		t.Fatalf("edge: hosted %+v", got)
	}
}
