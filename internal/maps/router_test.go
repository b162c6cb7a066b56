package maps

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var verdictNames = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

var (
	a = netip.MustParseAddr

	edgeV4, edgeV6 = a("10.99.0.1"), a("fd99::1")

	vipWeb  = VIP{a("192.0.2.1"), 80, TCP}
	vipDNS  = VIP{a("192.0.2.1"), 53, UDP}
	vipWeb6 = VIP{a("2001:db8:ff::1"), 443, TCP}
	vipAff  = VIP{a("192.0.2.2"), 80, TCP}
	vipAff6 = VIP{a("2001:db8:ff::2"), 80, TCP}
	vipFar  = VIP{a("192.0.2.3"), 80, TCP}

	clientEU  = a("198.51.100.7")
	clientEU2 = a("198.51.100.8")
	clientUS  = a("203.0.113.9")
	clientAS  = a("100.64.0.5")
	clientXX  = a("10.0.0.5") // matches no prefix
	client6EU = a("2001:db8:1::7")
	client6US = a("2001:db8:2::9")
)

// Regions, resources and mirrors of the standard fixture.
const (
	regEU, regUS, regAS, regDefault RegionID = 1, 2, 3, 9

	resWeb, resWeb6, resAff, resFar ResourceID = 7, 8, 9, 10

	m1, m2, m3v6, m4far, m5v6, m6nn, m7nr MirrorID = 1, 2, 3, 4, 5, 6, 7
)

var fixtureMirrors = map[MirrorID]netip.Addr{
	m1:    a("10.99.0.10"),
	m2:    a("10.99.0.11"),
	m3v6:  a("fd99::10"),
	m4far: a("10.98.0.10"), // behind pmr0: redirect
	m5v6:  a("fd99::11"),
	m6nn:  a("10.99.0.50"), // on-link, no neighbour entry
	m7nr:  a("10.200.0.1"), // no route at all
}

type fixture struct {
	env *nsEnv
	r   *Router
}

func testConfig() Config {
	c := DefaultConfig()
	c.MaxSessions = 1 << 14
	c.MaxAffinity = 1 << 12
	c.MaxRoutes = 1 << 10
	c.MaxTables = 256
	c.TableSlots = 256
	c.MaxMirrors = 64
	c.MaxCounters = 1 << 10
	c.MaxFragments = 256
	return c
}

func newFixture(t testing.TB) *fixture { return newFixtureConfig(t, testConfig()) }

func newFixtureConfig(t testing.TB, cfg Config) *fixture {
	t.Helper()
	return newFixtureWith(t, cfg, Options{})
}

func newFixtureWith(t testing.TB, cfg Config, opts Options) *fixture {
	t.Helper()
	env := newNSEnv(t)
	r, err := LoadRouter(cfg, opts)
	if err != nil {
		t.Fatalf("load router: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	f := &fixture{env: env, r: r}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SetSettings(Settings{DefaultRegion: regDefault, OuterSourceV4: edgeV4, OuterSourceV6: edgeV6}))
	for id, addr := range fixtureMirrors {
		must(r.SetMirror(id, Mirror{Addr: addr, State: MirrorActive}))
	}
	for p, reg := range map[string]RegionID{
		"198.51.100.0/24": regEU, "203.0.113.0/24": regUS, "100.64.0.0/10": regAS,
		"2001:db8:1::/48": regEU, "2001:db8:2::/48": regUS,
	} {
		must(r.SetRegionPrefix(netip.MustParsePrefix(p), reg))
	}
	must(r.SetVIP(vipWeb, VIPOptions{Resource: resWeb}))
	must(r.SetVIP(vipDNS, VIPOptions{Resource: resWeb}))
	must(r.SetVIP(vipWeb6, VIPOptions{Resource: resWeb6}))
	must(r.SetVIP(vipAff, VIPOptions{Resource: resAff, AffinityTimeout: time.Hour}))
	must(r.SetVIP(vipAff6, VIPOptions{Resource: resAff, AffinityTimeout: time.Hour}))
	must(r.SetVIP(vipFar, VIPOptions{Resource: resFar}))
	must(r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1}))
	must(r.SetRoute(resWeb, regUS, map[MirrorID]uint32{m2: 1}))
	must(r.SetRoute(resWeb, regAS, map[MirrorID]uint32{m3v6: 1})) // IPv4 VIP served by an IPv6 mirror
	must(r.SetRoute(resWeb6, RegionAny, map[MirrorID]uint32{m3v6: 1}))
	must(r.SetRoute(resWeb6, regUS, map[MirrorID]uint32{m1: 1})) // IPv6 VIP served by an IPv4 mirror
	must(r.SetRoute(resAff, RegionAny, map[MirrorID]uint32{m1: 1, m2: 1}))
	must(r.SetRoute(resFar, regEU, map[MirrorID]uint32{m4far: 1}))
	return f
}

func (f *fixture) stats(t testing.TB) Stats {
	t.Helper()
	s, err := f.r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) counter(t testing.TB, k CounterKey) Counter {
	t.Helper()
	cs, err := f.r.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return cs[k]
}

// statDelta returns the names of the reasons that changed between two reads.
func statDelta(before, after Stats) map[string]uint64 {
	return fieldDelta(before.Fields(), after.Fields())
}

// fieldDelta is statDelta for any list of reasons (Stats, DecapStats).
func fieldDelta(before, after []StatField) map[string]uint64 {
	d := map[string]uint64{}
	for i, fa := range after {
		if fa.Value != before[i].Value {
			d[fa.Name] = fa.Value - before[i].Value
		}
	}
	return d
}

// send runs one frame on pm0 and returns the verdict and output.
func (f *fixture) send(t testing.TB, frame []byte) (uint32, []byte) {
	t.Helper()
	return f.env.run(t, f.r.Program(), frame, f.env.pm0)
}

// encapsulated checks that out is frame encapsulated toward mirror and
// returns the mirror address it was sent to.
func checkEncap(t testing.TB, in, out []byte, wantMirror netip.Addr, wantSrcMAC net.HardwareAddr) {
	t.Helper()
	pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth == nil {
		t.Fatalf("output is not Ethernet: %x", out)
	}
	if !bytes.Equal(eth.DstMAC, mirrorMAC(wantMirror)) {
		t.Errorf("dst MAC %s, want %s (neighbour of %s)", eth.DstMAC, mirrorMAC(wantMirror), wantMirror)
	}
	if wantSrcMAC != nil && !bytes.Equal(eth.SrcMAC, wantSrcMAC) {
		t.Errorf("src MAC %s, want %s", eth.SrcMAC, wantSrcMAC)
	}
	inL2, outL2 := 14, 14
	if binary.BigEndian.Uint16(in[12:]) == 0x8100 {
		inL2 = 18
		if binary.BigEndian.Uint16(out[12:]) != 0x8100 || !bytes.Equal(out[14:16], in[14:16]) {
			t.Fatalf("VLAN tag not preserved: in %x out %x", in[12:18], out[12:18])
		}
		outL2 = 18
	}
	innerIn := in[inL2:]
	ethType := binary.BigEndian.Uint16(out[outL2-2:])
	var inner []byte
	if wantMirror.Is4() {
		if ethType != 0x0800 {
			t.Fatalf("ethertype %#x, want IPv4", ethType)
		}
		o := out[outL2:]
		ip := &layers.IPv4{}
		if err := ip.DecodeFromBytes(o, gopacket.NilDecodeFeedback); err != nil {
			t.Fatalf("outer IPv4: %v", err)
		}
		if ip.IHL != 5 || ip.TTL != 64 || ip.SrcIP.String() != edgeV4.String() || ip.DstIP.String() != wantMirror.String() {
			t.Errorf("outer header %+v", ip)
		}
		wantProto := layers.IPProtocolIPv4
		if innerIn[0]>>4 == 6 {
			wantProto = layers.IPProtocolIPv6
		}
		if ip.Protocol != wantProto {
			t.Errorf("outer protocol %v, want %v", ip.Protocol, wantProto)
		}
		if csum(o[:20]) != 0 {
			t.Errorf("outer IPv4 header checksum invalid: %x", o[:20])
		}
		inner = o[20:]
		if int(ip.Length) != len(inner)+20 && int(ip.Length) > len(inner)+20 {
			t.Errorf("outer length %d for %d inner bytes", ip.Length, len(inner))
		}
		inner = inner[:int(ip.Length)-20]
		// DF follows the inner packet: set for IPv6 and DF IPv4.
		wantDF := innerIn[0]>>4 == 6 || innerIn[6]&0x40 != 0
		if (ip.Flags&layers.IPv4DontFragment != 0) != wantDF {
			t.Errorf("outer DF %v, want %v", ip.Flags, wantDF)
		}
		// A fragmentable outer packet carries the inner one's ID (a path
		// router may fragment it: a constant ID would mix packets at the
		// mirror's reassembly).
		wantID := uint16(0)
		if !wantDF {
			wantID = binary.BigEndian.Uint16(innerIn[4:])
		}
		if ip.Id != wantID {
			t.Errorf("outer IP ID %#04x, want %#04x", ip.Id, wantID)
		}
	} else {
		if ethType != 0x86dd {
			t.Fatalf("ethertype %#x, want IPv6", ethType)
		}
		o := out[outL2:]
		ip := &layers.IPv6{}
		if err := ip.DecodeFromBytes(o, gopacket.NilDecodeFeedback); err != nil {
			t.Fatalf("outer IPv6: %v", err)
		}
		if ip.HopLimit != 64 || ip.SrcIP.String() != edgeV6.String() || ip.DstIP.String() != wantMirror.String() {
			t.Errorf("outer header %+v", ip)
		}
		wantNH := layers.IPProtocolIPv4
		if innerIn[0]>>4 == 6 {
			wantNH = layers.IPProtocolIPv6
		}
		if ip.NextHeader != wantNH {
			t.Errorf("outer next header %v, want %v", ip.NextHeader, wantNH)
		}
		inner = o[40 : 40+int(ip.Length)]
	}
	if !bytes.Equal(inner, innerIn[:len(inner)]) || len(inner) != ipLen(innerIn) {
		t.Errorf("inner packet changed:\n in  %x\n out %x", innerIn, inner)
	}
}

func ipLen(p []byte) int {
	if p[0]>>4 == 4 {
		return int(binary.BigEndian.Uint16(p[2:]))
	}
	return int(binary.BigEndian.Uint16(p[4:])) + 40
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestRouterFixtures is the packet-fixture table: input frame, expected
// verdict, expected output and expected reason counter.
func TestRouterFixtures(t *testing.T) {
	f := newFixture(t)
	v4opt := []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
	tests := []struct {
		name    string
		p       pkt
		raw     []byte // instead of p
		verdict uint32
		reason  string     // stat that must grow by one
		mirror  netip.Addr // expected outer destination, when forwarded
		srcMAC  net.HardwareAddr
	}{
		{name: "arp passes", raw: arpFrame(), verdict: xdpPass, reason: "pass_not_ip"},
		{name: "non-VIP TCP passes", p: pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1000, dport: 80}, verdict: xdpPass, reason: "pass_not_vip"},
		{name: "VIP address, other port passes", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1000, dport: 81}, verdict: xdpPass, reason: "pass_not_vip"},
		{name: "ICMP echo to VIP passes", p: pkt{src: clientEU, dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4}, verdict: xdpPass, reason: "pass_not_vip"},
		{name: "new v4 flow, EU region", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1001, dport: 80}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "new v4 flow, US region", p: pkt{src: clientUS, dst: vipWeb.Addr, sport: 1001, dport: 80}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m2]},
		{name: "v4 VIP to v6 mirror (4in6)", p: pkt{src: clientAS, dst: vipWeb.Addr, sport: 1001, dport: 80}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m3v6]},
		{name: "no prefix, default region has no route", p: pkt{src: clientXX, dst: vipWeb.Addr, sport: 1001, dport: 80}, verdict: xdpDrop, reason: "drop_no_route"},
		{name: "UDP", p: pkt{src: clientEU, dst: vipDNS.Addr, sport: 5353, dport: 53, proto: layers.IPProtocolUDP}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "IPv6 (wildcard region)", p: pkt{src: client6EU, dst: vipWeb6.Addr, sport: 1001, dport: 443}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m3v6]},
		{name: "v6 VIP to v4 mirror (6in4)", p: pkt{src: client6US, dst: vipWeb6.Addr, sport: 1001, dport: 443}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "VLAN tag kept", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1002, dport: 80, vlan: 42}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "IPv4 options skipped", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1003, dport: 80, v4opts: v4opt}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "IPv6 extension headers skipped", p: pkt{src: client6EU, dst: vipWeb6.Addr, sport: 1004, dport: 443,
			v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination, layers.IPProtocolIPv6Routing}}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m3v6]},
		{name: "TOS and no DF carried", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1005, dport: 80, tos: 0xb8, noDF: true}, verdict: xdpTX, reason: "tx", mirror: fixtureMirrors[m1]},
		{name: "mirror behind another device: redirect", p: pkt{src: clientEU, dst: vipFar.Addr, sport: 1006, dport: 80}, verdict: xdpRedirect, reason: "redirect", mirror: fixtureMirrors[m4far]},
		{name: "TCP header too short to a VIP drops", raw: badTCP(t), verdict: xdpDrop, reason: "drop_malformed"},
		{name: "bad IPv4 header length passes", raw: badIHL(t), verdict: xdpPass, reason: "pass_malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.raw
			if in == nil {
				in = tt.p.frame(t)
			}
			before := f.stats(t)
			got, out := f.send(t, in)
			if got != tt.verdict {
				t.Fatalf("verdict %s, want %s (stats %v)", verdictNames[got], verdictNames[tt.verdict], statDelta(before, f.stats(t)))
			}
			d := statDelta(before, f.stats(t))
			if d[tt.reason] != 1 {
				t.Errorf("reason %s not counted once: %v", tt.reason, d)
			}
			switch got {
			case xdpPass, xdpDrop:
				if got == xdpPass && !bytes.Equal(in, out) {
					t.Errorf("passed frame was modified")
				}
			case xdpTX, xdpRedirect:
				src := f.env.pm0MAC
				if got == xdpRedirect {
					src = f.env.pmr0MAC
				}
				checkEncap(t, in, out, tt.mirror, src)
			}
		})
	}
}

func arpFrame() []byte {
	b := make([]byte, 42)
	copy(b, edgeMAC)
	copy(b[6:], clientMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	return b
}

func badTCP(t testing.TB) []byte {
	in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(t)
	in[14+20+12] = 0x20 // doff = 2 words
	return in
}

func badIHL(t testing.TB) []byte {
	in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(t)
	in[14] = 0x43 // IHL 3
	return in
}

// TestNewFlowAccounting checks the map effects of a new flow: a session in
// the client's region, an access counter with one new flow, and that only
// a SYN (not a mid-flow ACK) counts as an access.
func TestNewFlowAccounting(t *testing.T) {
	f := newFixture(t)
	syn := pkt{src: clientEU, dst: vipWeb.Addr, sport: 2000, dport: 80}
	if v, _ := f.send(t, syn.frame(t)); v != xdpTX {
		t.Fatalf("verdict %s", verdictNames[v])
	}
	s, ok, err := f.r.LookupSession(syn.flow())
	if err != nil || !ok {
		t.Fatalf("no session for %v: %v", syn.flow(), err)
	}
	if s.Mirror != m1 || s.Region != regEU {
		t.Fatalf("session %+v, want mirror %d region %d", s, m1, regEU)
	}
	ack := syn
	ack.flags = "A"
	f.send(t, ack.frame(t))
	mid := pkt{src: clientEU, dst: vipWeb.Addr, sport: 2001, dport: 80, flags: "A"} // no SYN seen: a pickup
	f.send(t, mid.frame(t))
	c := f.counter(t, CounterKey{resWeb, regEU, m1})
	l3 := len(syn.l3(t))
	if c.Packets != 3 || c.NewFlows != 1 || c.Bytes != uint64(3*l3) {
		t.Fatalf("counter %+v, want 3 packets, 1 new flow, %d bytes", c, 3*l3)
	}
	n, err := f.r.SessionCount()
	if err != nil || n != 2 {
		t.Fatalf("session count %d (%v), want 2", n, err)
	}
}

// TestEstablishedFlowKeepsMirror changes the route under a live flow.
func TestEstablishedFlowKeepsMirror(t *testing.T) {
	f := newFixture(t)
	flow := pkt{src: clientEU, dst: vipWeb.Addr, sport: 3000, dport: 80}
	_, out := f.send(t, flow.frame(t))
	checkEncap(t, flow.frame(t), out, fixtureMirrors[m1], nil)

	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m2: 1}); err != nil {
		t.Fatal(err)
	}
	flow.flags = "A"
	_, out = f.send(t, flow.frame(t))
	checkEncap(t, flow.frame(t), out, fixtureMirrors[m1], nil) // established: unchanged

	fresh := pkt{src: clientEU, dst: vipWeb.Addr, sport: 3001, dport: 80}
	_, out = f.send(t, fresh.frame(t))
	checkEncap(t, fresh.frame(t), out, fixtureMirrors[m2], nil) // new: the new table

	// A retransmitted SYN (nothing past it seen yet) keeps its mirror.
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1}); err != nil {
		t.Fatal(err)
	}
	_, out = f.send(t, fresh.frame(t))
	checkEncap(t, fresh.frame(t), out, fixtureMirrors[m2], nil)

	// The first connection ends; the client reuses its port for a new one:
	// that bare SYN is a new flow, routed by today's table and counted.
	before := f.counter(t, CounterKey{resWeb, regEU, m1}).NewFlows
	reuse := flow
	reuse.flags = "S"
	_, out = f.send(t, reuse.frame(t))
	checkEncap(t, reuse.frame(t), out, fixtureMirrors[m1], nil)
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m2: 1}); err != nil {
		t.Fatal(err)
	}
	flow.flags = "A" // established again
	f.send(t, flow.frame(t))
	_, out = f.send(t, reuse.frame(t))
	checkEncap(t, reuse.frame(t), out, fixtureMirrors[m2], nil)
	if got := f.counter(t, CounterKey{resWeb, regEU, m1}).NewFlows; got != before+1 {
		t.Fatalf("new flows on m1 %d, want %d: the reused 5-tuple's SYN was not counted", got, before+1)
	}
}

// TestAffinity: a user's new flows stick to its mirror until the timeout,
// whatever the table says; other users follow the table.
func TestAffinity(t *testing.T) {
	for _, fam := range []struct {
		name        string
		vip         VIP
		user, other netip.Addr
		sameUser    netip.Addr // another address inside the user's prefix
	}{
		{"v4 /32", vipAff, clientEU, clientEU2, clientEU},
		{"v6 /64", vipAff6, a("2001:db8:1::7"), a("2001:db8:1:1::7"), a("2001:db8:1::ffff")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			f := newFixture(t)
			first := pkt{src: fam.user, dst: fam.vip.Addr, sport: 4000, dport: fam.vip.Port}
			f.send(t, first.frame(t))
			s, ok, _ := f.r.LookupSession(first.flow())
			if !ok {
				t.Fatal("no session")
			}
			mine := s.Mirror
			theirs := m1
			if mine == m1 {
				theirs = m2
			}
			// The table now sends everyone else to the other mirror.
			if err := f.r.SetRoute(resAff, RegionAny, map[MirrorID]uint32{theirs: 1}); err != nil {
				t.Fatal(err)
			}
			for port := uint16(4001); port < 4010; port++ {
				p := pkt{src: fam.sameUser, dst: fam.vip.Addr, sport: port, dport: fam.vip.Port}
				_, out := f.send(t, p.frame(t))
				checkEncap(t, p.frame(t), out, fixtureMirrors[mine], nil)
			}
			o := pkt{src: fam.other, dst: fam.vip.Addr, sport: 4000, dport: fam.vip.Port}
			_, out := f.send(t, o.frame(t))
			checkEncap(t, o.frame(t), out, fixtureMirrors[theirs], nil)

			// Age the user's affinity past its timeout: the next new flow
			// follows the table.
			f.expireAffinities(t)
			p := pkt{src: fam.sameUser, dst: fam.vip.Addr, sport: 4100, dport: fam.vip.Port}
			_, out = f.send(t, p.frame(t))
			checkEncap(t, p.frame(t), out, fixtureMirrors[theirs], nil)
		})
	}
}

// expireAffinities shortens the affinity VIPs' timeout to one second and
// moves every affinity's last use two seconds into the past, on the clock
// the router reads (CLOCK_MONOTONIC).
func (f *fixture) expireAffinities(t testing.TB) {
	t.Helper()
	for _, v := range []VIP{vipAff, vipAff6} {
		if err := f.r.SetVIP(v, VIPOptions{Resource: resAff, AffinityTimeout: time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []routerAffinityKey
	var vals []routerAffinity
	err := forEach(f.r.objs.PmAffinity, 1, func(k *routerAffinityKey, v []routerAffinity) bool {
		keys, vals = append(keys, *k), append(vals, v[0])
		return true
	})
	if err != nil || len(keys) == 0 {
		t.Fatalf("no affinities (%v)", err)
	}
	for i := range keys {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		vals[i].LastUsedNs = uint64(ts.Nano() - int64(2*time.Second))
		if err := f.r.objs.PmAffinity.Put(&keys[i], &vals[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMirrorStates: draining keeps flows and takes no new ones; down moves
// only its own flows.
func TestMirrorStates(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 1}); err != nil {
		t.Fatal(err)
	}
	// Open flows until both mirrors hold some.
	byMirror := map[MirrorID][]pkt{}
	for port := uint16(5000); len(byMirror[m1]) < 3 || len(byMirror[m2]) < 3; port++ {
		p := pkt{src: clientEU, dst: vipWeb.Addr, sport: port, dport: 80}
		f.send(t, p.frame(t))
		s, _, _ := f.r.LookupSession(p.flow())
		byMirror[s.Mirror] = append(byMirror[s.Mirror], p)
	}
	expect := func(p pkt, m MirrorID) {
		t.Helper()
		p.flags = "A"
		v, out := f.send(t, p.frame(t))
		if v != xdpTX {
			t.Fatalf("verdict %s", verdictNames[v])
		}
		checkEncap(t, p.frame(t), out, fixtureMirrors[m], nil)
	}

	if err := f.r.SetMirrorState(m1, MirrorDraining); err != nil {
		t.Fatal(err)
	}
	for _, p := range byMirror[m1] {
		expect(p, m1)
	}
	for port := uint16(6000); port < 6020; port++ {
		expect(pkt{src: clientEU, dst: vipWeb.Addr, sport: port, dport: 80}, m2)
	}

	before := f.stats(t)
	if err := f.r.SetMirrorState(m1, MirrorDown); err != nil {
		t.Fatal(err)
	}
	for _, p := range byMirror[m1] {
		expect(p, m2)
	}
	for _, p := range byMirror[m2] {
		expect(p, m2)
	}
	if d := statDelta(before, f.stats(t)); d["rerouted"] != uint64(len(byMirror[m1])) {
		t.Errorf("rerouted %d, want %d", d["rerouted"], len(byMirror[m1]))
	}
	// Recovered: the moved flows stay where they are now.
	if err := f.r.SetMirrorState(m1, MirrorActive); err != nil {
		t.Fatal(err)
	}
	for _, p := range byMirror[m1] {
		expect(p, m2)
	}
	// Everything down: new flows are dropped, not passed.
	f.r.SetMirrorState(m1, MirrorDown)
	f.r.SetMirrorState(m2, MirrorDown)
	p := pkt{src: clientEU, dst: vipWeb.Addr, sport: 7000, dport: 80}
	if v, _ := f.send(t, p.frame(t)); v != xdpDrop {
		t.Fatalf("all mirrors down: verdict %s", verdictNames[v])
	}
}

// TestFragments: later fragments follow their first fragment's mirror.
func TestFragments(t *testing.T) {
	f := newFixture(t)
	for _, fam := range []struct {
		name   string
		client netip.Addr
		vip    VIP
		mirror netip.Addr
	}{
		{"v4", clientEU, vipWeb, fixtureMirrors[m1]},
		{"v6", client6EU, vipWeb6, fixtureMirrors[m3v6]},
	} {
		t.Run(fam.name, func(t *testing.T) {
			first := pkt{src: fam.client, dst: fam.vip.Addr, sport: 8000, dport: fam.vip.Port, frag: &fragment{0, true, 0x4242}, payload: make([]byte, 64)}
			later := pkt{src: fam.client, dst: fam.vip.Addr, proto: layers.IPProtocolTCP, frag: &fragment{11, false, 0x4242}, payload: make([]byte, 40)}
			for _, p := range []pkt{first, later} {
				v, out := f.send(t, p.frame(t))
				if v != xdpTX {
					t.Fatalf("verdict %s", verdictNames[v])
				}
				checkEncap(t, p.frame(t), out, fam.mirror, nil)
			}
			orphan := later
			orphan.frag = &fragment{11, false, 0x9999}
			if v, _ := f.send(t, orphan.frame(t)); v != xdpDrop {
				t.Fatalf("orphan fragment to a VIP address: verdict %s, want DROP", verdictNames[v])
			}
			other := orphan
			other.dst = a("192.0.2.99")
			if fam.client.Is6() {
				other.dst = a("2001:db8:ff::99")
			}
			if v, _ := f.send(t, other.frame(t)); v != xdpPass {
				t.Fatalf("fragment to a non-VIP address: verdict %s, want PASS", verdictNames[v])
			}
		})
	}
}

// TestICMPErrors: errors about a VIP flow's replies reach the flow's mirror.
func TestICMPErrors(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 1}); err != nil {
		t.Fatal(err)
	}
	router4, router6 := a("198.51.100.254"), a("2001:db8:1::fe")
	for _, tc := range []struct {
		name   string
		flow   pkt
		icmp   func(reply pkt) pkt
		family int
	}{
		{"v4 frag needed", pkt{src: clientEU, dst: vipWeb.Addr, sport: 9000, dport: 80}, func(r pkt) pkt {
			return pkt{src: router4, dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 4, 1400, r}}
		}, 4},
		{"v4 unreachable", pkt{src: clientEU, dst: vipWeb.Addr, sport: 9001, dport: 80}, func(r pkt) pkt {
			return pkt{src: router4, dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 1, 0, r}}
		}, 4},
		{"v6 packet too big", pkt{src: client6EU, dst: vipWeb6.Addr, sport: 9002, dport: 443}, func(r pkt) pkt {
			return pkt{src: router6, dst: vipWeb6.Addr, proto: layers.IPProtocolICMPv6, icmp: &icmpErr{2, 0, 1280, r}}
		}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.send(t, tc.flow.frame(t))
			s, ok, _ := f.r.LookupSession(tc.flow.flow())
			if !ok {
				t.Fatal("no session")
			}
			reply := pkt{src: tc.flow.dst, dst: tc.flow.src, sport: tc.flow.dport, dport: tc.flow.sport, flags: "SA"}
			msg := tc.icmp(reply)
			before := f.stats(t)
			v, out := f.send(t, msg.frame(t))
			if v != xdpTX {
				t.Fatalf("verdict %s (%v)", verdictNames[v], statDelta(before, f.stats(t)))
			}
			checkEncap(t, msg.frame(t), out, fixtureMirrors[s.Mirror], nil)
			if d := statDelta(before, f.stats(t)); d["icmp_steered"] != 1 {
				t.Errorf("icmp_steered not counted: %v", d)
			}
		})
	}
}

// TestNextHop covers the bpf_fib_lookup outcomes.
func TestNextHop(t *testing.T) {
	f := newFixture(t)
	f.r.SetRoute(resWeb, regUS, map[MirrorID]uint32{m6nn: 1})
	f.r.SetRoute(resWeb, regAS, map[MirrorID]uint32{m7nr: 1})
	f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m5v6: 1})
	tests := []struct {
		name    string
		p       pkt
		setup   func()
		verdict uint32
		reason  string
	}{
		{"neighbour unknown: stack resolves it", pkt{src: clientUS, dst: vipWeb.Addr, sport: 1, dport: 80}, nil, xdpPass, "pass_no_neigh"},
		{"no route to mirror", pkt{src: clientAS, dst: vipWeb.Addr, sport: 1, dport: 80}, nil, xdpDrop, "drop_fib_miss"},
		{"too big, IPv4 with DF: ICMP frag-needed back", pkt{src: clientEU, dst: vipWeb.Addr, sport: 2, dport: 80, payload: make([]byte, 1500-40-40+1)}, nil, xdpTX, "icmp_too_big"},
		{"too big, VLAN: ICMP back on the VLAN", pkt{src: clientEU, dst: vipWeb.Addr, sport: 5, dport: 80, vlan: 12, payload: make([]byte, 1500)}, nil, xdpTX, "icmp_too_big"},
		{"too big, IPv4 without DF: dropped", pkt{src: clientEU, dst: vipWeb.Addr, sport: 6, dport: 80, noDF: true, payload: make([]byte, 1500-40-40+1)}, nil, xdpDrop, "drop_too_big"},
		{"too big, IPv6: packet-too-big back", pkt{src: client6EU, dst: vipWeb6.Addr, sport: 2, dport: 443, payload: make([]byte, 1500-60-40+1)}, nil, xdpTX, "icmp_too_big"},
		{"fits the egress MTU exactly", pkt{src: clientEU, dst: vipWeb.Addr, sport: 3, dport: 80, payload: make([]byte, 1500-40-40)}, nil, xdpTX, "tx"},
		{"no outer source for the family", pkt{src: clientEU, dst: vipWeb.Addr, sport: 4, dport: 80}, func() {
			f.r.SetSettings(Settings{DefaultRegion: regDefault, OuterSourceV4: edgeV4})
		}, xdpDrop, "drop_no_outer_src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			in := tt.p.frame(t)
			before := f.stats(t)
			v, out := f.send(t, in)
			d := statDelta(before, f.stats(t))
			if v != tt.verdict || d[tt.reason] != 1 {
				t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[tt.verdict], tt.reason)
			}
			if tt.reason == "icmp_too_big" {
				// Both routes here lead to IPv6 mirrors: 40 bytes of tunnel.
				checkTooBig(t, in, out, 1500-40)
			}
			if tt.reason == "pass_no_neigh" {
				// Encapsulated, original MACs kept for the stack.
				if !bytes.Equal(out[:12], in[:12]) || binary.BigEndian.Uint16(out[12:]) != 0x0800 || out[14+9] != 4 {
					t.Fatalf("not an IPIP frame with the original MACs: %x", out[:40])
				}
			}
		})
	}
}

// checkTooBig verifies an ICMP "fragmentation needed" / ICMPv6 "packet
// too big" built from the offending frame in: back to the client's MAC,
// from the VIP, the egress MTU minus the tunnel, a valid checksum, and the
// start of the offending packet quoted.
func checkTooBig(t *testing.T, in, out []byte, mtu int) {
	t.Helper()
	l2 := 14
	if binary.BigEndian.Uint16(in[12:]) == 0x8100 {
		l2 = 18
		if !bytes.Equal(out[12:16], in[12:16]) {
			t.Fatalf("VLAN tag lost: %x", out[12:18])
		}
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		t.Fatalf("MACs not swapped: %x", out[:12])
	}
	orig, ip := in[l2:], out[l2:]
	if orig[0]>>4 == 4 {
		if len(out) != l2+20+8+56 || ip[9] != 1 || csum(ip[:20]) != 0 {
			t.Fatalf("bad IPv4 ICMP packet (%d bytes): %x", len(out), ip[:20])
		}
		if !bytes.Equal(ip[12:16], orig[16:20]) || !bytes.Equal(ip[16:20], orig[12:16]) {
			t.Fatalf("ICMP not from the VIP to the client")
		}
		ic := ip[20:]
		if ic[0] != 3 || ic[1] != 4 || int(binary.BigEndian.Uint16(ic[6:])) != mtu || csum(ic) != 0 {
			t.Fatalf("ICMP header %x (want type 3 code 4, MTU %d, valid checksum)", ic[:8], mtu)
		}
		if !bytes.Equal(ic[8:], orig[:56]) {
			t.Fatalf("quote differs from the offending packet")
		}
		return
	}
	if len(out) != l2+40+8+184 || ip[6] != 58 {
		t.Fatalf("bad ICMPv6 packet (%d bytes)", len(out))
	}
	if !bytes.Equal(ip[8:24], orig[24:40]) || !bytes.Equal(ip[24:40], orig[8:24]) {
		t.Fatalf("ICMPv6 not from the VIP to the client")
	}
	ic := ip[40:]
	pseudo := append(append(append([]byte{}, ip[8:40]...), 0, 0, byte(len(ic)>>8), byte(len(ic))), 0, 0, 0, 58)
	if ic[0] != 2 || int(binary.BigEndian.Uint32(ic[4:])) != mtu || csum(append(pseudo, ic...)) != 0 {
		t.Fatalf("ICMPv6 header %x (want type 2, MTU %d, valid checksum)", ic[:8], mtu)
	}
	if !bytes.Equal(ic[8:], orig[:184]) {
		t.Fatalf("quote differs from the offending packet")
	}
}

// TestTruncatedFrames cuts valid VIP frames at every offset: none may be
// forwarded, and every one must be counted under a reason.
func TestTruncatedFrames(t *testing.T) {
	f := newFixture(t)
	frames := map[string][]byte{
		"v4 tcp":              pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(t),
		"v4 udp":              pkt{src: clientEU, dst: vipDNS.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP}.frame(t),
		"v4 options":          pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80, v4opts: []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}}.frame(t),
		"v6 ext":              pkt{src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing}}.frame(t),
		"vlan":                pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80, vlan: 7}.frame(t),
		"icmp":                pkt{src: a("198.51.100.254"), dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 4, 1400, pkt{src: vipWeb.Addr, dst: clientEU, sport: 80, dport: 1}}}.frame(t),
		"icmpv6":              pkt{src: a("2001:db8:1::fe"), dst: vipWeb6.Addr, proto: layers.IPProtocolICMPv6, icmp: &icmpErr{2, 0, 1280, pkt{src: vipWeb6.Addr, dst: client6EU, sport: 443, dport: 1}}}.frame(t),
		"v6 frag + dest opts": ethFrame(rawV6(client6EU, vipWeb6.Addr, []v6hdr{v6Frag(0, true, 9), v6DstOpts}, 6, -1, tcpHdr(1, 443, 0x02, 5)), 0x86dd, 0),
	}
	allowed := []string{"pass_not_ip", "pass_malformed", "drop_malformed", "pass_not_vip"}
	for name, full := range frames {
		t.Run(name, func(t *testing.T) {
			for cut := 14; cut < len(full); cut++ {
				in := full[:cut]
				before := f.stats(t)
				v, out := f.send(t, in)
				if v != xdpPass && v != xdpDrop {
					t.Fatalf("cut at %d: verdict %s", cut, verdictNames[v])
				}
				d := statDelta(before, f.stats(t))
				if len(d) != 1 {
					t.Fatalf("cut at %d: reasons %v, want exactly one", cut, d)
				}
				for r := range d {
					if !slices.Contains(allowed, r) {
						t.Fatalf("cut at %d: reason %s", cut, r)
					}
				}
				if v == xdpPass && !bytes.Equal(in, out) {
					t.Fatalf("cut at %d: passed frame modified", cut)
				}
			}
		})
	}
}

// TestDecapRoundTrip feeds the router's output to the decap program and
// expects the client's packet back, for every encapsulation.
func TestDecapRoundTrip(t *testing.T) {
	f := newFixture(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, m := range fixtureMirrors {
		if err := d.AddEndpoint(m); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]pkt{
		"ipip":         {src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80},
		"ipip vlan":    {src: clientEU, dst: vipWeb.Addr, sport: 2, dport: 80, vlan: 9},
		"4in6":         {src: clientAS, dst: vipWeb.Addr, sport: 1, dport: 80},
		"ip6ip6":       {src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443},
		"6in4":         {src: client6US, dst: vipWeb6.Addr, sport: 1, dport: 443},
		"udp":          {src: clientEU, dst: vipDNS.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP},
		"ipv4 options": {src: clientEU, dst: vipWeb.Addr, sport: 3, dport: 80, v4opts: []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}},
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			in := p.frame(t)
			v, enc := f.send(t, in)
			if v != xdpTX {
				t.Fatalf("router verdict %s", verdictNames[v])
			}
			before, _ := d.Stats()
			v, out := f.env.run(t, d.Program(), enc, 0)
			if v != xdpPass {
				t.Fatalf("decap verdict %s", verdictNames[v])
			}
			// L2 addresses are the router's; everything after them is the
			// client's frame again.
			if !bytes.Equal(out[12:], in[12:]) {
				t.Fatalf("decap output differs:\n in  %x\n out %x", in[12:], out[12:])
			}
			after, _ := d.Stats()
			if after.DecapV4+after.DecapV6 != before.DecapV4+before.DecapV6+1 {
				t.Fatalf("decap not counted")
			}
		})
	}
	t.Run("not for us", func(t *testing.T) {
		in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(t)
		_, enc := f.send(t, in)
		if err := d.RemoveEndpoint(fixtureMirrors[m1]); err != nil {
			t.Fatal(err)
		}
		defer d.AddEndpoint(fixtureMirrors[m1])
		v, out := f.env.run(t, d.Program(), enc, 0)
		if v != xdpPass || !bytes.Equal(out, enc) {
			t.Fatalf("tunnel packet to another endpoint: verdict %s, modified %v", verdictNames[v], !bytes.Equal(out, enc))
		}
	})
	t.Run("inner length mismatch dropped", func(t *testing.T) {
		in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 5, dport: 80}.frame(t)
		_, enc := f.send(t, in)
		enc = slices.Clone(enc)
		enc[14+20+3]++ // inner total length
		if v, _ := f.env.run(t, d.Program(), enc, 0); v != xdpDrop {
			t.Fatalf("verdict %s, want DROP", verdictNames[v])
		}
	})
	t.Run("plain traffic untouched", func(t *testing.T) {
		in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(t)
		v, out := f.env.run(t, d.Program(), in, 0)
		if v != xdpPass || !bytes.Equal(out, in) {
			t.Fatalf("verdict %s", verdictNames[v])
		}
	})
}

// TestFlowHashMatchesBPF: the Go hash predicts the slot the router uses.
func TestFlowHashMatchesBPF(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 1}); err != nil {
		t.Fatal(err)
	}
	slots := f.r.RouteSlots(resWeb, regEU)
	for port := uint16(100); port < 200; port++ {
		p := pkt{src: clientEU, dst: vipWeb.Addr, sport: port, dport: 80}
		f.send(t, p.frame(t))
		s, _, _ := f.r.LookupSession(p.flow())
		want := MirrorID(slots[FlowHash(p.flow(), false)&uint32(len(slots)-1)])
		if s.Mirror != want {
			t.Fatalf("port %d: router chose %d, Go hash predicts %d", port, s.Mirror, want)
		}
	}
}

// TestRouteTablesShared: identical tables are stored once and freed when
// no route uses them.
func TestRouteTablesShared(t *testing.T) {
	f := newFixture(t)
	base := f.r.TableCount()
	w := map[MirrorID]uint32{m1: 3, m2: 1}
	for res := ResourceID(100); res < 110; res++ {
		if err := f.r.SetRoute(res, regEU, w); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.r.TableCount(); got != base+1 {
		t.Fatalf("%d tables for 10 identical routes, want %d", got, base+1)
	}
	shares := f.r.Routes()[RouteKey{100, regEU}].Shares
	if shares[m1] != 192 || shares[m2] != 64 {
		t.Fatalf("shares %v, want 192/64 of 256", shares)
	}
	for res := ResourceID(100); res < 110; res++ {
		if err := f.r.DeleteRoute(res, regEU); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.r.TableCount(); got != base {
		t.Fatalf("%d tables after deleting, want %d", got, base)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.TableSlots = 1000 }, "table_slots"},
		{func(c *Config) { c.MaxSessions = 0 }, "max_sessions"},
		{func(c *Config) { c.MaxMirrors = 1 }, "max_mirrors"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.mut(&c)
		err := c.Validate()
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
			t.Errorf("error %v does not name %s", err, tt.want)
		}
	}
}

func TestPinnedStateSurvivesReload(t *testing.T) {
	requireRoot(t)
	dir := bpffsDir(t)
	r, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}))
	must(r.SetMirror(m2, Mirror{Addr: fixtureMirrors[m2], State: MirrorActive}))
	must(r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 1}))
	must(r.SetRoute(resWeb, regUS, map[MirrorID]uint32{m1: 1, m2: 1}))
	slots := r.RouteSlots(resWeb, regEU)
	// A crash between publishing a table and pointing a route at it leaves
	// a recorded table nobody uses: the next load prunes it.
	orphan := make([]uint32, testConfig().TableSlots)
	for i := range orphan {
		orphan[i] = uint32(m1)
	}
	r.mu.Lock()
	orphanID, err := r.tables.publish(orphan)
	r.mu.Unlock()
	must(err)
	r.Close()

	r2, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := r2.RouteSlots(resWeb, regEU); !slices.Equal(got, slots) {
		t.Fatal("route table lost across reload")
	}
	if r2.TableCount() != 1 {
		t.Fatalf("tables %d after reload, want 1 shared", r2.TableCount())
	}
	var ref routerTableRef
	if err := r2.objs.PmTableIds.Lookup(orphanID, &ref); err != nil || ref.MapId != 0 {
		t.Fatalf("orphan table %d not pruned: %+v %v", orphanID, ref, err)
	}
	// Changing weights after a reload still moves the minimum.
	must(r2.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 3}))
	moved := 0
	for i, s := range r2.RouteSlots(resWeb, regEU) {
		if s != slots[i] {
			moved++
		}
	}
	if moved != 64 {
		t.Fatalf("moved %d slots, want 64", moved)
	}

	c := testConfig()
	c.MaxSessions *= 2
	if _, err := LoadRouter(c, Options{PinDir: dir}); err == nil {
		t.Fatal("loaded over pins of another size")
	} else if !bytes.Contains([]byte(err.Error()), []byte("incompatible")) {
		t.Fatalf("unclear error: %v", err)
	}
}

func bpffsDir(t testing.TB) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/premirror-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Skipf("no bpffs at /sys/fs/bpf: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
