package agent

import (
	"context"
	"encoding/hex"
	stdmaps "maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/testnet"
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
			s.dial = func(_ context.Context, vip maps.VIP) error {
				v := netip.AddrPortFrom(vip.Addr, vip.Port)
				dialed = append(dialed, v)
				if (v == vip1 && strings.Contains(up, "1")) || (v == vip2 && strings.Contains(up, "2")) {
					return nil
				}
				return syscall.ECONNREFUSED
			}
			s.setTargets(map[maps.ResourceID][]maps.VIP{7: tcpVIPs(vip1, vip2), 8: tcpVIPs(remote)})
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
			s.setTargets(map[maps.ResourceID][]maps.VIP{})
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
	// Ports below the ephemeral range: a closed one stays free (no
	// connection, not even the checker's own by simultaneous open, takes
	// it), so "refused" is certain and the listener can come back.
	l4, err := testnet.Listen("tcp4", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	v4 := netip.MustParseAddrPort(l4.Addr().String())
	var v6 netip.AddrPort
	if l6, err := testnet.Listen("tcp6", "::1"); err == nil {
		v6 = netip.MustParseAddrPort(l6.Addr().String())
		l6.Close() // nobody listens there now: refused
	}
	results := map[string]int{}
	var mu sync.Mutex // the checks of one round run in parallel
	s := newServiceChecker(ServiceCheckCfg{Timeout: Duration(time.Second)}, func(r string) { mu.Lock(); results[r]++; mu.Unlock() })
	targets := map[maps.ResourceID][]maps.VIP{1: tcpVIPs(v4)}
	if v6.IsValid() {
		targets[2] = tcpVIPs(v6)
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
		t.Fatalf("port %d taken meanwhile: %v", v4.Port(), err)
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
	l2, err := testnet.Listen("tcp4", "127.0.0.1") // closed, it stays refused
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
	want := map[maps.ResourceID][]maps.VIP{7: tcpVIPs(live), 8: append(udpVIPs(netip.MustParseAddrPort("127.0.0.1:53")), tcpVIPs(dead)...)}
	if !stdmaps.EqualFunc(a.svc.targets, want, slices.Equal) {
		t.Fatalf("targets %v, want %v (the UDP one is checked only on service_check.udp's ports)", a.svc.targets, want)
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
# HELP edge_service_unserved 1 per resource whose service does not answer on this host (service_check: no VIP of it passed its check, fall rounds in a row); reported to the controller, which routes it to other copies.
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
	b.svc.setTargets(map[maps.ResourceID][]maps.VIP{9: tcpVIPs(dead)})
	for range 4 {
		b.svc.checkOnce(context.Background())
	}
	if got := b.svc.unserved(); len(got) != 0 {
		t.Fatalf("service_check.disabled: unserved %v", got)
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
	want := map[maps.ResourceID][]maps.VIP{1: append(udpVIPs(netip.MustParseAddrPort("192.0.2.1:53")), tcpVIPs(netip.MustParseAddrPort("192.0.2.1:443"))...)}
	if !stdmaps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("targets %v, want %v", got, want)
	}
}

// TestServiceCheckUDP: on the ports service_check.udp lists, the payload
// goes to the UDP VIP and any reply passes; a closed port is refused
// (ICMP port unreachable), a service that reads but does not answer times
// out; a UDP VIP on a port not listed is not checked. IPv4 and IPv6.
func TestServiceCheckUDP(t *testing.T) {
	defer goleak.VerifyNone(t)
	listen := func(network, addr string, answer bool) (netip.AddrPort, func()) {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Skipf("%s %s: %v", network, addr, err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if answer && string(buf[:n]) == "ping" {
					c.WriteTo([]byte("pong"), from)
				}
			}
		}()
		return netip.MustParseAddrPort(c.LocalAddr().String()), func() { c.Close(); <-done }
	}
	echo4, stop4 := listen("udp4", "127.0.0.1:0", true)
	defer stop4()
	echo6, stop6 := listen("udp6", "[::1]:0", true)
	defer stop6()
	silent, stopSilent := listen("udp4", "127.0.0.1:0", false)
	defer stopSilent()
	closed, stopClosed := listen("udp4", "127.0.0.1:0", false)
	stopClosed() // nobody there now
	unlisted, stopUnlisted := listen("udp4", "127.0.0.1:0", false)
	defer stopUnlisted()

	cfg := ServiceCheckCfg{Timeout: Duration(300 * time.Millisecond), UDP: &UDPCheckCfg{
		Ports: []int{int(echo4.Port()), int(echo6.Port()), int(silent.Port()), int(closed.Port())}, Send: hex.EncodeToString([]byte("ping"))}}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	results := map[string]int{}
	var mu sync.Mutex
	s := newServiceChecker(cfg, func(r string) { mu.Lock(); results[r]++; mu.Unlock() })
	s.setTargets(map[maps.ResourceID][]maps.VIP{1: udpVIPs(echo4), 2: udpVIPs(echo6), 3: udpVIPs(silent), 4: udpVIPs(closed), 5: udpVIPs(unlisted)})
	for range 3 {
		s.checkOnce(context.Background())
	}
	if got := s.unserved(); !slices.Equal(got, []maps.ResourceID{3, 4}) {
		t.Fatalf("unserved %v, want [3 4] (silent, closed); results %v", got, results)
	}
	if results[checkOK] != 6 || results[checkTimeout] != 3 || results[checkRefused] != 3 {
		t.Fatalf("results %v, want 6 ok, 3 timeout, 3 refused (the unlisted port unchecked)", results)
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
		targets := map[maps.ResourceID][]maps.VIP{}
		for r := range n {
			targets[maps.ResourceID(r+1)] = tcpVIPs(v)
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

// TestServiceCheckHTTP: on the ports service_check.http lists, a check is
// an HTTP GET of its path (plain or TLS, the certificate unverified) whose
// status must fall in expect; a listener that accepts but does not speak
// HTTP fails; other ports keep the bare TCP connection.
func TestServiceCheckHTTP(t *testing.T) {
	defer goleak.VerifyNone(t)
	var status atomic.Int32
	status.Store(http.StatusOK)
	var paths sync.Map
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.URL.Path, r.Header.Get("User-Agent"))
		w.WriteHeader(int(status.Load()))
	})
	plain := httptest.NewServer(h)
	defer plain.Close()
	secure := httptest.NewTLSServer(h)
	defer secure.Close()
	// Accepts and closes at once: a port that is open but serves nothing.
	mute, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A bare TCP port (not listed): a listener is enough.
	bare, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()

	ap := func(s string) netip.AddrPort {
		return netip.MustParseAddrPort(strings.TrimPrefix(strings.TrimPrefix(s, "http://"), "https://"))
	}
	vPlain, vTLS, vMute, vBare := ap(plain.URL), ap(secure.URL), ap(mute.Addr().String()), ap(bare.Addr().String())
	results := map[string]int{}
	var mu sync.Mutex
	cfg := ServiceCheckCfg{Timeout: Duration(2 * time.Second), HTTP: &HTTPCheckCfg{
		Path: "/healthz", Ports: []int{int(vPlain.Port()), int(vMute.Port())}, TLSPorts: []int{int(vTLS.Port())}, Expect: "200-299"}}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	s := newServiceChecker(cfg, func(r string) { mu.Lock(); results[r]++; mu.Unlock() })
	s.setTargets(map[maps.ResourceID][]maps.VIP{1: tcpVIPs(vPlain), 2: tcpVIPs(vTLS), 3: tcpVIPs(vMute), 4: tcpVIPs(vBare)})
	ctx := context.Background()
	round := func(n int) {
		for range n {
			s.checkOnce(ctx)
		}
	}
	round(3)
	if got := s.unserved(); !slices.Equal(got, []maps.ResourceID{3}) {
		t.Fatalf("unserved %v, want [3] (the mute port); results %v", got, results)
	}
	if ua, ok := paths.Load("/healthz"); !ok || ua != "premirror-service-check" {
		t.Fatalf("the check did not GET /healthz with its user agent: %v", ua)
	}
	if results[checkOK] != 9 || results[checkError] != 3 {
		t.Fatalf("results %v, want 9 ok (plain, TLS, bare) and 3 errors (mute)", results)
	}
	// The service answers, but 503: the HTTP resources go unserved, the
	// bare one does not.
	status.Store(http.StatusServiceUnavailable)
	round(3)
	if got := s.unserved(); !slices.Equal(got, []maps.ResourceID{1, 2, 3}) {
		t.Fatalf("after 503s: unserved %v, want [1 2 3]; results %v", got, results)
	}
	if results[checkBadStatus] != 6 {
		t.Fatalf("results %v, want 6 bad_status", results)
	}
	// Accepts and never answers: the check times out.
	hang, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := hang.Accept(); err == nil {
			held <- c
		}
	}()
	vHang := ap(hang.Addr().String())
	sh := newServiceChecker(ServiceCheckCfg{HTTP: &HTTPCheckCfg{Ports: []int{int(vHang.Port())}}}, func(r string) { mu.Lock(); results[r]++; mu.Unlock() })
	before := results[checkTimeout]
	if sh.checkVIP(ctx, tcpVIPs(vHang)[0], 200*time.Millisecond, sh.http, nil) {
		t.Fatal("a server that never answers passed")
	}
	if results[checkTimeout] != before+1 {
		t.Fatalf("results %v: want one more timeout", results)
	}
	(<-held).Close()

	// IPv6: the URL brackets the address.
	if l6, err := testnet.Listen("tcp6", "::1"); err == nil {
		srv6 := httptest.NewUnstartedServer(h)
		srv6.Listener.Close()
		srv6.Listener = l6
		srv6.Start()
		defer srv6.Close()
		v6 := netip.MustParseAddrPort(l6.Addr().String())
		status.Store(http.StatusOK)
		c6 := ServiceCheckCfg{Timeout: Duration(2 * time.Second), HTTP: &HTTPCheckCfg{Ports: []int{int(v6.Port())}}}
		s6 := newServiceChecker(c6, nil)
		s6.localAddrs = func() map[netip.Addr]bool { return map[netip.Addr]bool{v6.Addr(): true} }
		if !s6.checkVIP(ctx, tcpVIPs(v6)[0], time.Second, s6.http, nil) {
			t.Fatalf("HTTP check of %v failed", v6)
		}
		if _, ok := paths.Load("/"); !ok {
			t.Fatal("the IPv6 check did not GET / (the default path)")
		}
	}
	// A redirect is an answer when expect allows it (the default 200-399),
	// and is not followed.
	status.Store(http.StatusFound)
	cfg.HTTP.Expect = ""
	s.setConfig(cfg)
	round(2)
	if got := s.unserved(); !slices.Equal(got, []maps.ResourceID{3}) {
		t.Fatalf("after 302s with the default expect: unserved %v, want [3]", got)
	}
}

// TestServiceCheckReload: a new configuration applies to the next round;
// disabling forgets every verdict and checks nothing until enabled again.
func TestServiceCheckReload(t *testing.T) {
	defer goleak.VerifyNone(t)
	vip := netip.MustParseAddrPort("192.0.2.1:443")
	var dials atomic.Int32
	s := newServiceChecker(ServiceCheckCfg{}, nil)
	s.localAddrs = func() map[netip.Addr]bool { return map[netip.Addr]bool{vip.Addr(): true} }
	s.dial = func(context.Context, maps.VIP) error { dials.Add(1); return syscall.ECONNREFUSED }
	s.setTargets(map[maps.ResourceID][]maps.VIP{5: tcpVIPs(vip)})
	ctx := context.Background()
	s.setConfig(ServiceCheckCfg{Fall: 1})
	s.checkOnce(ctx)
	if !slices.Contains(s.unserved(), 5) {
		t.Fatal("fall 1: not unserved after one failed round")
	}
	s.setConfig(ServiceCheckCfg{Disabled: true})
	if len(s.unserved()) != 0 {
		t.Fatalf("disabled: still unserved %v", s.unserved())
	}
	before := dials.Load()
	s.checkOnce(ctx)
	if dials.Load() != before || len(s.unserved()) != 0 {
		t.Fatal("disabled: a round still checked")
	}
	// The running loop picks up a new interval.
	s.setConfig(ServiceCheckCfg{Interval: Duration(time.Hour), Timeout: Duration(time.Second)})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.run(rctx); close(done) }()
	s.setConfig(ServiceCheckCfg{Interval: Duration(20 * time.Millisecond), Timeout: Duration(10 * time.Millisecond), Fall: 1})
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(s.unserved(), 5) {
		if time.Now().After(deadline) {
			t.Fatal("the loop did not take the 20ms interval (an hour's ticker still running)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// tcpVIPs and udpVIPs turn addresses and ports into service-check targets.
func tcpVIPs(aps ...netip.AddrPort) []maps.VIP { return protoVIPs(maps.TCP, aps) }
func udpVIPs(aps ...netip.AddrPort) []maps.VIP { return protoVIPs(maps.UDP, aps) }

func protoVIPs(p maps.Proto, aps []netip.AddrPort) []maps.VIP {
	out := make([]maps.VIP, len(aps))
	for i, ap := range aps {
		out[i] = maps.VIP{Addr: ap.Addr(), Port: ap.Port(), Proto: p}
	}
	return out
}

// TestServiceCheckForgetsVIPTakenOff: a resource whose VIPs are no
// longer addresses of this host is no longer checked, and its verdict is
// forgotten as when service_check is disabled: it kept the verdict of its
// last checks, so one that had fallen stayed unserved — routed away from
// this copy — until the agent restarted (a restarted agent starts it
// served), and an address put back started from that stale verdict.
func TestServiceCheckForgetsVIPTakenOff(t *testing.T) {
	vip := netip.MustParseAddrPort("192.0.2.1:443")
	local := true
	s := newServiceChecker(ServiceCheckCfg{}, nil)
	s.localAddrs = func() map[netip.Addr]bool { return map[netip.Addr]bool{vip.Addr(): local} }
	s.dial = func(context.Context, maps.VIP) error { return syscall.ECONNREFUSED }
	s.setTargets(map[maps.ResourceID][]maps.VIP{7: tcpVIPs(vip)})
	for range 3 {
		s.checkOnce(context.Background())
	}
	if !slices.Contains(s.unserved(), 7) {
		t.Fatal("not unserved after three refusals")
	}
	local = false // the operator takes the VIP off this host
	s.checkOnce(context.Background())
	if got := s.unserved(); len(got) != 0 {
		t.Fatalf("unserved %v after its VIP left the host: the verdict of checks that no longer run", got)
	}
	local = true // back, still refused: it falls again after three rounds
	for i := range 3 {
		s.checkOnce(context.Background())
		if got := slices.Contains(s.unserved(), 7); got != (i == 2) {
			t.Fatalf("round %d after the VIP returned: unserved %v", i, got)
		}
	}
}
