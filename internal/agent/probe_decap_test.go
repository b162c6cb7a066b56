package agent

import (
	"log/slog"
	stdmaps "maps"
	"net/netip"
	"testing"
	"time"

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

// TestDecapPorts: a decap address accepts GUE on decap_gue_port, or on
// the port a GUE mirror at that address is reached on (the desired
// state's mirrors tell the mirror host what edges send); mirrors at other
// hosts' addresses and IPIP mirrors change nothing.
func TestDecapPorts(t *testing.T) {
	a4, a6, other := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("192.0.2.99")
	gue := func(a netip.Addr, port uint16) maps.Mirror {
		return maps.Mirror{Addr: a, Encap: maps.EncapGUE, GUEPort: port}
	}
	for _, c := range []struct {
		name    string
		def     uint16
		mirrors map[maps.MirrorID]maps.Mirror
		want    map[netip.Addr]uint16
	}{
		{"no GUE", 0, nil, map[netip.Addr]uint16{a4: 0, a6: 0}},
		{"decap_gue_port on every address", 6080, nil, map[netip.Addr]uint16{a4: 6080, a6: 6080}},
		{"a GUE mirror here sets its address's port", 0, map[maps.MirrorID]maps.Mirror{1: gue(a6, 9000), 2: {Addr: a4}},
			map[netip.Addr]uint16{a4: 0, a6: 9000}},
		{"the mirror's port wins over decap_gue_port", 6080, map[maps.MirrorID]maps.Mirror{1: gue(netip.MustParseAddr("::ffff:192.0.2.10"), 9000)},
			map[netip.Addr]uint16{a4: 9000, a6: 6080}},
		{"a GUE mirror elsewhere changes nothing", 0, map[maps.MirrorID]maps.Mirror{1: gue(other, 9000)},
			map[netip.Addr]uint16{a4: 0, a6: 0}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := decapPorts([]netip.Addr{a4, a6}, c.def, c.mirrors, slog.New(slog.DiscardHandler))
			if !stdmaps.Equal(got, c.want) {
				t.Fatalf("decapPorts = %v, want %v", got, c.want)
			}
		})
	}
}
