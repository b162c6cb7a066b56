package agent

import (
	"context"
	stdmaps "maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/maps"
)

// TestServiceCheckHysteresis: a resource is unserved after fall failed
// rounds in a row and served again after rise passing ones; a round
// passes when any of its VIPs answers; VIPs that are not local are not
// checked (they would measure a route, not the service).
func TestServiceCheckHysteresis(t *testing.T) {
	vip1, vip2 := netip.MustParseAddrPort("192.0.2.1:443"), netip.MustParseAddrPort("[2001:db8::1]:443")
	remote := netip.MustParseAddrPort("198.51.100.1:443")
	for _, c := range []struct {
		name   string
		rounds []string // per round, the VIPs that answer: "1", "2", "12" or ""
		want   []bool   // unserved after each round
	}{
		{"healthy", []string{"12", "1", "2"}, []bool{false, false, false}},
		{"falls after three", []string{"", "", "", ""}, []bool{false, false, true, true}},
		{"a pass resets the fall streak", []string{"", "", "1", "", ""}, []bool{false, false, false, false, false}},
		{"rises after two", []string{"", "", "", "2", "2", ""}, []bool{false, false, true, true, false, false}},
		{"a failure resets the rise streak", []string{"", "", "", "1", "", "1", "1"}, []bool{false, false, true, true, true, true, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var up string
			var dialed []netip.AddrPort
			var results []string
			s := newServiceChecker(ServiceCheckCfg{}, func(r string) { results = append(results, r) })
			s.localAddrs = func() map[netip.Addr]bool { return map[netip.Addr]bool{vip1.Addr(): true, vip2.Addr(): true} }
			s.dial = func(_ context.Context, v netip.AddrPort) error {
				dialed = append(dialed, v)
				if (v == vip1 && strings.Contains(up, "1")) || (v == vip2 && strings.Contains(up, "2")) {
					return nil
				}
				return syscall.ECONNREFUSED
			}
			s.setTargets(map[maps.ResourceID][]netip.AddrPort{7: {vip1, vip2}, 8: {remote}})
			for i, r := range c.rounds {
				up = r
				s.checkOnce(context.Background())
				if got := slices.Contains(s.unserved(), 7); got != c.want[i] {
					t.Fatalf("round %d (%q): unserved %v, want %v", i, r, got, c.want[i])
				}
			}
			if slices.Contains(dialed, remote) || slices.Contains(s.unserved(), 8) {
				t.Fatalf("a VIP that is not local was checked: %v", dialed)
			}
			if !slices.Contains(results, checkRefused) && slices.Contains(c.rounds, "") {
				t.Fatalf("refusals not counted: %v", results)
			}
			// Forgotten with its resource.
			s.setTargets(map[maps.ResourceID][]netip.AddrPort{})
			if len(s.unserved()) != 0 {
				t.Fatalf("unserved after the resource left: %v", s.unserved())
			}
		})
	}
}

// TestServiceCheckRealListeners: over real sockets on loopback (IPv4 and
// IPv6), a listening VIP passes; one nobody listens on is refused, and
// the resource goes unserved after three rounds and back after two once
// a listener returns; run stops with its context.
func TestServiceCheckRealListeners(t *testing.T) {
	defer goleak.VerifyNone(t)
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	v4 := netip.MustParseAddrPort(l4.Addr().String())
	var v6 netip.AddrPort
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		v6 = netip.MustParseAddrPort(l6.Addr().String())
		l6.Close() // nobody listens there now: refused
	}
	results := map[string]int{}
	var mu sync.Mutex // the checks of one round run in parallel
	s := newServiceChecker(ServiceCheckCfg{Timeout: Duration(time.Second)}, func(r string) { mu.Lock(); results[r]++; mu.Unlock() })
	targets := map[maps.ResourceID][]netip.AddrPort{1: {v4}}
	if v6.IsValid() {
		targets[2] = []netip.AddrPort{v6}
	}
	s.setTargets(targets)
	ctx := context.Background()
	for range 3 {
		s.checkOnce(ctx)
	}
	want := []maps.ResourceID{}
	if v6.IsValid() {
		want = append(want, 2)
	}
	if got := s.unserved(); !slices.Equal(append([]maps.ResourceID{}, got...), want) {
		t.Fatalf("unserved %v, want %v (results %v)", got, want, results)
	}
	if results[checkOK] != 3 {
		t.Fatalf("results %v, want 3 ok", results)
	}

	// The IPv4 service dies, then comes back on the same port.
	l4.Close()
	for range 3 {
		s.checkOnce(ctx)
	}
	if !slices.Contains(s.unserved(), 1) || results[checkRefused] < 3 {
		t.Fatalf("dead listener: unserved %v, results %v", s.unserved(), results)
	}
	l4b, err := net.Listen("tcp4", v4.String())
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", v4.Port(), err)
	}
	defer l4b.Close()
	for range 2 {
		s.checkOnce(ctx)
	}
	if slices.Contains(s.unserved(), 1) {
		t.Fatalf("listener back: still unserved %v", s.unserved())
	}

	s.cfg.Interval = Duration(10 * time.Millisecond)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.run(rctx); close(done) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
}

func TestServiceCheckConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  ServiceCheckCfg
		want string
	}{
		{ServiceCheckCfg{}, ""},
		{ServiceCheckCfg{Interval: Duration(time.Second), Timeout: Duration(time.Second)}, "service_check.timeout: 1s must be below service_check.interval 1s"},
		{ServiceCheckCfg{Interval: -1}, "service_check.interval: negative"},
		{ServiceCheckCfg{Fall: -1}, "service_check.fall: negative"},
		{ServiceCheckCfg{Rise: -2}, "service_check.rise: negative"},
	} {
		err := c.cfg.validate()
		if (err == nil) != (c.want == "") || (err != nil && err.Error() != c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

// TestMirrorHealthReportsUnservedResources: a mirror host checks the TCP
// VIPs of the resources its mirrors hold (from the controller's desired
// state) and reports, per mirror, those whose service does not answer;
// edge_service_unserved names them.
func TestMirrorHealthReportsUnservedResources(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	live := netip.MustParseAddrPort(l.Addr().String())
	defer l.Close()
	l2, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(l2.Addr().String())
	l2.Close()

	st := sampleProtoState()
	st.Mirrors = []*pb.MirrorEndpoint{
		{Name: "paris", Id: 1, Address: "192.0.2.10", ResourceIds: []uint32{7, 8}},
		{Name: "lyon", Id: 2, Address: "192.0.2.11", ResourceIds: []uint32{8}},
		{Name: "far", Id: 3, Address: "192.0.2.99", ResourceIds: []uint32{8}}, // another host's
	}
	st.WeightSets = []*pb.WeightSet{{Weights: []*pb.MirrorWeight{{MirrorId: 1, Weight: 1}}}}
	st.Resources = []*pb.ResourceState{
		{Name: "disk", Id: 7, Vips: []*pb.VIP{{Address: "127.0.0.1", Port: uint32(live.Port()), Protocol: pb.Protocol_PROTOCOL_TCP}},
			RouteRegions: []uint32{0}, RouteWeightSets: []uint32{0}},
		{Name: "db", Id: 8, Vips: []*pb.VIP{{Address: "127.0.0.1", Port: uint32(dead.Port()), Protocol: pb.Protocol_PROTOCOL_TCP},
			{Address: "127.0.0.1", Port: 53, Protocol: pb.Protocol_PROTOCOL_UDP}},
			RouteRegions: []uint32{0}, RouteWeightSets: []uint32{0}},
	}
	a := New(&Config{Node: "host", Role: RoleMirror, DecapAddresses: []string{"192.0.2.10", "192.0.2.11"},
		Controller: &ControllerCfg{Site: "eu", Utilization: "none"}}, "", discardLogger())
	cp := &controlPlane{a: a}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if want := map[maps.ResourceID][]netip.AddrPort{7: {live}, 8: {dead}}; !stdmaps.EqualFunc(a.svc.targets, want, slices.Equal) {
		t.Fatalf("targets %v, want %v (TCP VIPs only)", a.svc.targets, want)
	}
	for range DefaultServiceCheckFall {
		a.svc.checkOnce(context.Background())
	}
	got := map[string][]string{}
	for _, mh := range cp.mirrorHealth() {
		got[mh.GetMirror()] = mh.GetUnservedResources()
	}
	if want := map[string][]string{"paris": {"db"}, "lyon": {"db"}}; !stdmaps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	exp := `
# HELP edge_service_unserved 1 per resource whose service does not answer on this host (service_check: no TCP VIP accepted a connection, fall checks in a row); reported to the controller, which routes it to other copies.
# TYPE edge_service_unserved gauge
edge_service_unserved{resource="db"} 1
`
	if err := testutil.GatherAndCompare(a.Registry(), strings.NewReader(exp), "edge_service_unserved"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	// With service_check disabled nothing is checked or reported.
	b := New(&Config{Node: "host", Role: RoleMirror, ServiceCheck: ServiceCheckCfg{Disabled: true},
		Controller: &ControllerCfg{Site: "eu"}}, "", discardLogger())
	if b.svc != nil {
		t.Fatal("service_check.disabled: checker created")
	}
}

// TestServiceTargetsStatic: without a controller a mirror holds what the
// static routes send it; only TCP VIPs are checked.
func TestServiceTargetsStatic(t *testing.T) {
	c := &Compiled{
		VIPs: map[maps.VIP]maps.VIPOptions{
			{Addr: netip.MustParseAddr("192.0.2.1"), Port: 443, Proto: maps.TCP}: {Resource: 1},
			{Addr: netip.MustParseAddr("192.0.2.1"), Port: 53, Proto: maps.UDP}:  {Resource: 1},
			{Addr: netip.MustParseAddr("192.0.2.2"), Port: 80, Proto: maps.TCP}:  {Resource: 2},
		},
		Routes: map[maps.RouteKey]map[maps.MirrorID]uint32{
			{Resource: 1, Region: 1}: {5: 1, 6: 1},
			{Resource: 2, Region: 1}: {6: 1},
		},
	}
	got := serviceTargets(c, map[maps.MirrorID]hostedMirror{5: hostedUp})
	if want := map[maps.ResourceID][]netip.AddrPort{1: {netip.MustParseAddrPort("192.0.2.1:443")}}; !stdmaps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("targets %v, want %v", got, want)
	}
}

// BenchmarkServiceCheckRound: one round of service checks over 1,000
// resources whose TCP VIPs answer on loopback (connect and close; at most
// serviceCheckParallel at a time), the per-interval cost on a mirror host;
// baseline: the same connects and closes one after another, bare.
func BenchmarkServiceCheckRound(b *testing.B) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	v := netip.MustParseAddrPort(l.Addr().String())
	const n = 1000
	b.Run("round", func(b *testing.B) {
		targets := map[maps.ResourceID][]netip.AddrPort{}
		for r := range n {
			targets[maps.ResourceID(r+1)] = []netip.AddrPort{v}
		}
		var mu sync.Mutex
		ok := 0
		s := newServiceChecker(ServiceCheckCfg{}, func(r string) {
			if r == checkOK {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
		s.setTargets(targets)
		b.ResetTimer()
		for range b.N {
			s.checkOnce(context.Background())
		}
		b.StopTimer()
		if ok != n*b.N || len(s.unserved()) != 0 {
			b.Fatalf("%d checks passed of %d, unserved %v", ok, n*b.N, s.unserved())
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/check")
	})
	b.Run("baseline-dial-serial", func(b *testing.B) {
		for range b.N {
			for range n {
				if err := dialTCP(context.Background(), v); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/check")
	})
}
