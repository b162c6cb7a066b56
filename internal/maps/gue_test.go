package maps

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// GUE part of the fixture: one IPv4 and one IPv6 GUE mirror, and a TCP and
// a UDP VIP of each family routed so that every (inner, outer) family pair
// has a client:
//
//	v4 in v4: clientEU  -> vipG / vipGU   -> mGUE4
//	v4 in v6: clientAS  -> vipG / vipGU   -> mGUE6
//	v6 in v6: client6EU -> vipG6 / vipGU6 -> mGUE6
//	v6 in v4: client6US -> vipG6 / vipGU6 -> mGUE4
const (
	mGUE4, mGUE6 MirrorID   = 8, 9
	resG, resG6  ResourceID = 11, 12

	gue4Port, gue6Port = 6080, 6081
)

var (
	vipG   = VIP{a("192.0.2.5"), 80, TCP}
	vipGU  = VIP{a("192.0.2.5"), 53, UDP}
	vipG6  = VIP{a("2001:db8:ff::5"), 443, TCP}
	vipGU6 = VIP{a("2001:db8:ff::5"), 53, UDP}

	gueMirrors = map[MirrorID]Mirror{
		mGUE4: {Addr: a("10.99.0.12"), State: MirrorActive, Encap: EncapGUE, GUEPort: gue4Port},
		mGUE6: {Addr: a("fd99::12"), State: MirrorActive, Encap: EncapGUE, GUEPort: gue6Port},
	}
)

// addGUE adds the GUE mirrors, VIPs and routes to a fixture.
func (f *fixture) addGUE(tb testing.TB) {
	tb.Helper()
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	for id, m := range gueMirrors {
		must(f.r.SetMirror(id, m))
	}
	must(f.r.SetVIP(vipG, VIPOptions{Resource: resG}))
	must(f.r.SetVIP(vipGU, VIPOptions{Resource: resG}))
	must(f.r.SetVIP(vipG6, VIPOptions{Resource: resG6}))
	must(f.r.SetVIP(vipGU6, VIPOptions{Resource: resG6}))
	must(f.r.SetRoute(resG, regEU, map[MirrorID]uint32{mGUE4: 1}))
	must(f.r.SetRoute(resG, regAS, map[MirrorID]uint32{mGUE6: 1}))
	must(f.r.SetRoute(resG6, regEU, map[MirrorID]uint32{mGUE6: 1}))
	must(f.r.SetRoute(resG6, regUS, map[MirrorID]uint32{mGUE4: 1}))
}

// onesSum is the 16-bit ones'-complement sum of b (RFC 1071), written
// independently of the program's arithmetic: big-endian words, an odd
// byte padded with zero, carries folded at the end.
func onesSum(b []byte) uint16 {
	var s uint64
	for i := 0; i < len(b); i += 2 {
		w := uint64(b[i]) << 8
		if i+1 < len(b) {
			w |= uint64(b[i+1])
		}
		s += w
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// udpChecksumValid checks a UDP datagram's checksum over its pseudo-header
// (RFC 768 for IPv4, RFC 8200 §8.1 for IPv6) and the whole datagram.
func udpChecksumValid(src, dst netip.Addr, udp []byte) bool {
	var ph []byte
	ph = append(ph, src.AsSlice()...)
	ph = append(ph, dst.AsSlice()...)
	if src.Is4() {
		ph = append(ph, 0, 17, byte(len(udp)>>8), byte(len(udp)))
	} else {
		ph = append(ph, 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
	}
	return onesSum(append(ph, udp...)) == 0xffff
}

// guePkt is what checkGUE found in a GUE frame.
type guePkt struct {
	sport     uint16
	csum      uint16
	flowLabel uint32 // IPv6 outer only
}

// checkGUE checks that out is in GUE-encapsulated toward m: every outer
// IP and UDP header field, the inner packet byte for byte, and the UDP
// checksum, which must be valid when wantCsum and 0 otherwise.
func checkGUE(t testing.TB, in, out []byte, m Mirror, wantCsum bool) guePkt {
	t.Helper()
	var g guePkt
	l2 := 14
	if binary.BigEndian.Uint16(in[12:]) == 0x8100 {
		l2 = 18
		if !bytes.Equal(out[12:16], in[12:16]) {
			t.Fatalf("VLAN tag not preserved: in %x out %x", in[12:18], out[12:18])
		}
	}
	if !bytes.Equal(out[:6], mirrorMAC(m.Addr)) {
		t.Errorf("dst MAC %x, want the neighbour of %s", out[:6], m.Addr)
	}
	inner := in[l2 : l2+ipLen(in[l2:])]
	innerV4 := inner[0]>>4 == 4
	var tos uint8
	if innerV4 {
		tos = inner[1]
	} else {
		tos = uint8(binary.BigEndian.Uint16(inner[0:]) >> 4)
	}
	var src netip.Addr
	var udpB []byte
	ethType := binary.BigEndian.Uint16(out[l2-2:])
	if m.Addr.Is4() {
		if ethType != 0x0800 {
			t.Fatalf("ethertype %#x, want IPv4", ethType)
		}
		ip := &layers.IPv4{}
		if err := ip.DecodeFromBytes(out[l2:], gopacket.NilDecodeFeedback); err != nil {
			t.Fatalf("outer IPv4: %v", err)
		}
		wantDF := !innerV4 || inner[6]&0x40 != 0
		if ip.Version != 4 || ip.IHL != 5 || ip.TOS != tos || int(ip.Length) != 20+8+len(inner) || ip.Id != outerID(inner, wantDF) ||
			(ip.Flags == layers.IPv4DontFragment) != wantDF || (ip.Flags != 0 && ip.Flags != layers.IPv4DontFragment) ||
			ip.FragOffset != 0 || ip.TTL != 64 || ip.Protocol != layers.IPProtocolUDP ||
			ip.SrcIP.String() != edgeV4.String() || ip.DstIP.String() != m.Addr.String() {
			t.Errorf("outer IPv4 header %+v (inner %d bytes, TOS %#x, DF %v)", ip, len(inner), tos, wantDF)
		}
		if onesSum(out[l2:l2+20]) != 0xffff {
			t.Errorf("outer IPv4 header checksum invalid: %x", out[l2:l2+20])
		}
		src, udpB = edgeV4, out[l2+20:l2+int(ip.Length)]
	} else {
		if ethType != 0x86dd {
			t.Fatalf("ethertype %#x, want IPv6", ethType)
		}
		ip := &layers.IPv6{}
		if err := ip.DecodeFromBytes(out[l2:], gopacket.NilDecodeFeedback); err != nil {
			t.Fatalf("outer IPv6: %v", err)
		}
		if ip.Version != 6 || ip.TrafficClass != tos || int(ip.Length) != 8+len(inner) ||
			ip.NextHeader != layers.IPProtocolUDP || ip.HopLimit != 64 ||
			ip.SrcIP.String() != edgeV6.String() || ip.DstIP.String() != m.Addr.String() {
			t.Errorf("outer IPv6 header %+v (inner %d bytes, traffic class %#x)", ip, len(inner), tos)
		}
		g.flowLabel = ip.FlowLabel
		src, udpB = edgeV6, out[l2+40:l2+40+int(ip.Length)]
	}
	udp := &layers.UDP{}
	if err := udp.DecodeFromBytes(udpB, gopacket.NilDecodeFeedback); err != nil {
		t.Fatalf("UDP: %v", err)
	}
	g.sport, g.csum = uint16(udp.SrcPort), udp.Checksum
	if udp.SrcPort < 0xC000 || uint16(udp.DstPort) != m.GUEPort || int(udp.Length) != len(udpB) || len(udpB) != 8+len(inner) {
		t.Errorf("UDP header %d -> %d length %d (datagram %d bytes, inner %d), want ephemeral -> %d",
			udp.SrcPort, udp.DstPort, udp.Length, len(udpB), len(inner), m.GUEPort)
	}
	if !bytes.Equal(udpB[8:], inner) {
		t.Errorf("inner packet changed:\n in  %x\n out %x", inner, udpB[8:])
	}
	switch {
	case wantCsum && udp.Checksum == 0:
		t.Errorf("UDP checksum 0, want one derived from the inner packet")
	case wantCsum && !udpChecksumValid(src, m.Addr, udpB):
		t.Errorf("UDP checksum %#04x invalid over the datagram", udp.Checksum)
	case !wantCsum && udp.Checksum != 0:
		t.Errorf("UDP checksum %#04x, want 0 (not derivable)", udp.Checksum)
	}
	return g
}

// zeroUDPChecksum clears the UDP checksum of a frame built from p.
func zeroUDPChecksum(fr []byte) []byte {
	l3 := fr[14:]
	off := 40
	if l3[0]>>4 == 4 {
		off = int(l3[0]&0xf) * 4
	}
	l3[off+6], l3[off+7] = 0, 0
	return fr
}

// TestGUEEncap: every (inner, outer) family pair with TCP and UDP inside,
// and the cases whose checksum cannot be derived.
func TestGUEEncap(t *testing.T) {
	f := newFixture(t)
	f.addGUE(t)
	v4opt := []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}
	udp := layers.IPProtocolUDP
	tests := []struct {
		name   string
		p      pkt
		mirror MirrorID
		csum   bool // derivable
		mangle func([]byte) []byte
	}{
		{name: "v4 in v4 tcp", p: pkt{src: clientEU, dst: vipG.Addr, sport: 1001, dport: 80}, mirror: mGUE4, csum: true},
		{name: "v4 in v4 udp", p: pkt{src: clientEU, dst: vipGU.Addr, sport: 1001, dport: 53, proto: udp}, mirror: mGUE4, csum: true},
		{name: "v4 in v6 tcp", p: pkt{src: clientAS, dst: vipG.Addr, sport: 1001, dport: 80}, mirror: mGUE6, csum: true},
		{name: "v4 in v6 udp", p: pkt{src: clientAS, dst: vipGU.Addr, sport: 1001, dport: 53, proto: udp}, mirror: mGUE6, csum: true},
		{name: "v6 in v6 tcp", p: pkt{src: client6EU, dst: vipG6.Addr, sport: 1001, dport: 443}, mirror: mGUE6, csum: true},
		{name: "v6 in v6 udp", p: pkt{src: client6EU, dst: vipGU6.Addr, sport: 1001, dport: 53, proto: udp}, mirror: mGUE6, csum: true},
		{name: "v6 in v4 tcp", p: pkt{src: client6US, dst: vipG6.Addr, sport: 1001, dport: 443}, mirror: mGUE4, csum: true},
		{name: "v6 in v4 udp", p: pkt{src: client6US, dst: vipGU6.Addr, sport: 1001, dport: 53, proto: udp}, mirror: mGUE4, csum: true},
		{name: "odd length, TOS, no DF", p: pkt{src: clientEU, dst: vipG.Addr, sport: 1002, dport: 80, payload: make([]byte, 1001), tos: 0xb8, noDF: true}, mirror: mGUE4, csum: true},
		{name: "v6 odd length, traffic class", p: pkt{src: client6EU, dst: vipG6.Addr, sport: 1002, dport: 443, payload: []byte("odd"), tos: 0x28}, mirror: mGUE6, csum: true},
		{name: "inner IPv4 options", p: pkt{src: clientAS, dst: vipG.Addr, sport: 1003, dport: 80, v4opts: v4opt}, mirror: mGUE6, csum: true},
		{name: "VLAN", p: pkt{src: clientEU, dst: vipG.Addr, sport: 1004, dport: 80, vlan: 5}, mirror: mGUE4, csum: true},
		{name: "ACK with payload", p: pkt{src: client6US, dst: vipG6.Addr, sport: 1005, dport: 443, flags: "A", payload: bytes.Repeat([]byte{0xff}, 300)}, mirror: mGUE4, csum: true},
		// Not derivable: 0 (and counted when the outer header is IPv6).
		{name: "inner UDPv4 without checksum, outer v4", p: pkt{src: clientEU, dst: vipGU.Addr, sport: 1006, dport: 53, proto: udp}, mirror: mGUE4, mangle: zeroUDPChecksum},
		{name: "inner UDPv4 without checksum, outer v6", p: pkt{src: clientAS, dst: vipGU.Addr, sport: 1006, dport: 53, proto: udp}, mirror: mGUE6, mangle: zeroUDPChecksum},
		{name: "inner UDPv6 with checksum 0, outer v6", p: pkt{src: client6EU, dst: vipGU6.Addr, sport: 1006, dport: 53, proto: udp}, mirror: mGUE6, mangle: zeroUDPChecksum},
		{name: "first fragment, outer v4", p: pkt{src: clientEU, dst: vipG.Addr, sport: 1007, dport: 80, frag: &fragment{0, true, 0x77}, payload: make([]byte, 64)}, mirror: mGUE4},
		{name: "first fragment, outer v6", p: pkt{src: clientAS, dst: vipG.Addr, sport: 1007, dport: 80, frag: &fragment{0, true, 0x78}, payload: make([]byte, 64)}, mirror: mGUE6},
		{name: "later fragment, outer v6", p: pkt{src: clientAS, dst: vipG.Addr, proto: layers.IPProtocolTCP, frag: &fragment{9, false, 0x78}, payload: make([]byte, 40)}, mirror: mGUE6},
		{name: "v6 fragment, outer v6", p: pkt{src: client6EU, dst: vipG6.Addr, sport: 1007, dport: 443, frag: &fragment{0, true, 0x79}, payload: make([]byte, 64)}, mirror: mGUE6},
		{name: "v6 extension headers, outer v6", p: pkt{src: client6EU, dst: vipG6.Addr, sport: 1008, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}}, mirror: mGUE6},
		{name: "v6 extension headers, outer v4", p: pkt{src: client6US, dst: vipG6.Addr, sport: 1008, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6Destination}}, mirror: mGUE4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.p.frame(t)
			if tt.mangle != nil {
				in = tt.mangle(in)
			}
			before := f.stats(t)
			v, out := f.send(t, in)
			d := statDelta(before, f.stats(t))
			if v != xdpTX || d["tx"] != 1 {
				t.Fatalf("verdict %s, reasons %v", verdictNames[v], d)
			}
			m := gueMirrors[tt.mirror]
			g := checkGUE(t, in, out, m, tt.csum)
			wantZero := uint64(0)
			if !tt.csum && m.Addr.Is6() {
				wantZero = 1
			}
			if d["gue_zero_csum_v6"] != wantZero {
				t.Errorf("gue_zero_csum_v6 counted %d, want %d", d["gue_zero_csum_v6"], wantZero)
			}
			if tt.p.frag == nil || tt.p.frag.offset == 0 {
				fl := tt.p.flow()
				h := FlowHash(fl, false)
				if g.sport != GUESourcePort(fl) {
					t.Errorf("source port %d, want %d from the flow hash", g.sport, GUESourcePort(fl))
				}
				if m.Addr.Is6() && g.flowLabel != h&0xfffff {
					t.Errorf("flow label %#x, want %#x from the flow hash", g.flowLabel, h&0xfffff)
				}
			}
		})
	}
}

// TestGUEICMPErrors: ICMP errors about a flow to a GUE mirror are steered
// to it, with a derived checksum (ICMP has none over a pseudo-header,
// ICMPv6 does).
func TestGUEICMPErrors(t *testing.T) {
	f := newFixture(t)
	f.addGUE(t)
	for _, tc := range []struct {
		name   string
		flow   pkt
		msg    func(reply pkt) pkt
		mirror MirrorID
	}{
		{"v4 frag needed, outer v6", pkt{src: clientAS, dst: vipG.Addr, sport: 9000, dport: 80}, func(r pkt) pkt {
			return pkt{src: a("100.64.0.254"), dst: vipG.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 4, 1400, r}}
		}, mGUE6},
		{"v4 unreachable, outer v4", pkt{src: clientEU, dst: vipG.Addr, sport: 9001, dport: 80}, func(r pkt) pkt {
			return pkt{src: a("198.51.100.254"), dst: vipG.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 1, 0, r}}
		}, mGUE4},
		{"v6 packet too big, outer v4", pkt{src: client6US, dst: vipG6.Addr, sport: 9002, dport: 443}, func(r pkt) pkt {
			return pkt{src: a("2001:db8:2::fe"), dst: vipG6.Addr, proto: layers.IPProtocolICMPv6, icmp: &icmpErr{2, 0, 1280, r}}
		}, mGUE4},
		{"v6 packet too big, outer v6", pkt{src: client6EU, dst: vipG6.Addr, sport: 9003, dport: 443}, func(r pkt) pkt {
			return pkt{src: a("2001:db8:1::fe"), dst: vipG6.Addr, proto: layers.IPProtocolICMPv6, icmp: &icmpErr{2, 0, 1280, r}}
		}, mGUE6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.send(t, tc.flow.frame(t))
			reply := pkt{src: tc.flow.dst, dst: tc.flow.src, sport: tc.flow.dport, dport: tc.flow.sport, flags: "SA"}
			in := tc.msg(reply).frame(t)
			before := f.stats(t)
			v, out := f.send(t, in)
			d := statDelta(before, f.stats(t))
			if v != xdpTX || d["icmp_steered"] != 1 {
				t.Fatalf("verdict %s, reasons %v", verdictNames[v], d)
			}
			g := checkGUE(t, in, out, gueMirrors[tc.mirror], true)
			// The error travels with its flow: same source port.
			if g.sport != GUESourcePort(tc.flow.flow()) {
				t.Errorf("source port %d, want the flow's %d", g.sport, GUESourcePort(tc.flow.flow()))
			}
		})
	}
}

// TestGUESourcePortEntropy: the source port is the flow's hash — fixed
// per flow, spread across flows — for both outer families.
func TestGUESourcePortEntropy(t *testing.T) {
	f := newFixture(t)
	f.addGUE(t)
	for _, fam := range []struct {
		name   string
		client netip.Addr
		vip    VIP
		mirror MirrorID
	}{{"outer v4", clientEU, vipG, mGUE4}, {"outer v6", client6EU, vipG6, mGUE6}} {
		t.Run(fam.name, func(t *testing.T) {
			const flows = 256
			ports := map[uint16]int{}
			labels := map[uint32]bool{}
			for i := range flows {
				p := pkt{src: fam.client, dst: fam.vip.Addr, sport: uint16(20000 + i), dport: fam.vip.Port}
				var first uint16
				for j, flags := range []string{"S", "A", "A"} {
					p.flags = flags
					in := p.frame(t)
					if v, out := f.send(t, in); v != xdpTX {
						t.Fatalf("verdict %s", verdictNames[v])
					} else {
						g := checkGUE(t, in, out, gueMirrors[fam.mirror], true)
						if j == 0 {
							first = g.sport
							ports[g.sport]++
							labels[g.flowLabel] = true
						} else if g.sport != first {
							t.Fatalf("flow %v: source port %d, then %d", p.flow(), first, g.sport)
						}
					}
				}
			}
			// 256 hashes into 16384 ports: ~2 collisions expected.
			if len(ports) < flows-12 {
				t.Fatalf("%d flows used only %d source ports", flows, len(ports))
			}
			if fam.client.Is6() && len(labels) < flows-12 {
				t.Fatalf("%d flows used only %d flow labels", flows, len(labels))
			}
		})
	}
}

// TestGUEPathMTU: GUE's tunnel is 8 bytes longer than IPIP's, and the MTU
// the client is told is 8 bytes lower.
func TestGUEPathMTU(t *testing.T) {
	f := newFixture(t)
	f.addGUE(t)
	// The links have MTU 1500. TCP + IPv4 headers: 40 bytes; + IPv6: 60.
	for _, tc := range []struct {
		name    string
		p       pkt
		verdict uint32
		reason  string
		mtu     int
	}{
		{"v4 in v4 fits exactly", pkt{src: clientEU, dst: vipG.Addr, sport: 1, dport: 80, payload: make([]byte, 1500-28-40)}, xdpTX, "tx", 0},
		{"v4 in v4 one byte too big", pkt{src: clientEU, dst: vipG.Addr, sport: 2, dport: 80, payload: make([]byte, 1500-28-40+1)}, xdpTX, "icmp_too_big", 1500 - 28},
		{"v4 in v6 fits exactly", pkt{src: clientAS, dst: vipG.Addr, sport: 1, dport: 80, payload: make([]byte, 1500-48-40)}, xdpTX, "tx", 0},
		{"v4 in v6 one byte too big", pkt{src: clientAS, dst: vipG.Addr, sport: 2, dport: 80, payload: make([]byte, 1500-48-40+1)}, xdpTX, "icmp_too_big", 1500 - 48},
		{"v4 without DF too big: dropped", pkt{src: clientAS, dst: vipG.Addr, sport: 3, dport: 80, noDF: true, payload: make([]byte, 1500-48-40+1)}, xdpDrop, "drop_too_big", 0},
		{"v6 in v6 one byte too big", pkt{src: client6EU, dst: vipG6.Addr, sport: 2, dport: 443, payload: make([]byte, 1500-48-60+1)}, xdpTX, "icmp_too_big", 1500 - 48},
		{"v6 in v4 fits exactly", pkt{src: client6US, dst: vipG6.Addr, sport: 1, dport: 443, payload: make([]byte, 1500-28-60)}, xdpTX, "tx", 0},
		{"v6 in v4 one byte too big", pkt{src: client6US, dst: vipG6.Addr, sport: 2, dport: 443, payload: make([]byte, 1500-28-60+1)}, xdpTX, "icmp_too_big", 1500 - 28},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.frame(t)
			before := f.stats(t)
			v, out := f.send(t, in)
			d := statDelta(before, f.stats(t))
			if v != tc.verdict || d[tc.reason] != 1 {
				t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[tc.verdict], tc.reason)
			}
			switch tc.reason {
			case "icmp_too_big":
				checkTooBig(t, in, out, tc.mtu)
			case "tx":
				s, _, _ := f.r.LookupSession(tc.p.flow())
				checkGUE(t, in, out, gueMirrors[s.Mirror], true)
			}
		})
	}
}

// TestGUEMirrorSettings: the Go API's checks and read-back, and the
// next-hop cache forgetting a mirror whose encapsulation changed.
func TestGUEMirrorSettings(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		m    Mirror
		want string
	}{
		{Mirror{Addr: a("10.99.0.13"), State: MirrorActive, Encap: EncapGUE}, "GUEPort"},
		{Mirror{Addr: a("10.99.0.13"), State: MirrorActive, GUEPort: 6080}, "GUEPort"},
		{Mirror{Addr: a("10.99.0.13"), State: MirrorActive, Encap: 7, GUEPort: 6080}, "Encap"},
	} {
		if err := f.r.SetMirror(10, tc.m); err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("SetMirror(%+v): error %v, want one naming %s", tc.m, err, tc.want)
		}
	}
	want := Mirror{Addr: a("fd99::13"), State: MirrorDraining, Encap: EncapGUE, GUEPort: 4789}
	if err := f.r.SetMirror(10, want); err != nil {
		t.Fatal(err)
	}
	if got, err := f.r.Mirror(10); err != nil || got != want {
		t.Fatalf("Mirror(10) = %+v, %v; want %+v", got, err, want)
	}
	if all, err := f.r.Mirrors(); err != nil || all[10] != want {
		t.Fatalf("Mirrors()[10] = %+v, %v; want %+v", all[10], err, want)
	}
	// State changes keep the encapsulation.
	if err := f.r.SetMirrorState(10, MirrorActive); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.r.Mirror(10); got.Encap != EncapGUE || got.GUEPort != 4789 {
		t.Fatalf("after a state change: %+v", got)
	}
	for _, s := range []string{"", "ipip", "IPIP", "gue"} {
		if _, err := ParseEncapsulation(s); err != nil {
			t.Errorf("ParseEncapsulation(%q): %v", s, err)
		}
	}
	if _, err := ParseEncapsulation("vxlan"); err == nil {
		t.Error("ParseEncapsulation(vxlan) accepted")
	}

	// Switching m1 between IPIP and GUE under a live cached next hop: the
	// next packet uses the new encapsulation, whose lookup differs.
	if err := f.r.SetNextHopTTL(DefaultNextHopTTL); err != nil {
		t.Fatal(err)
	}
	p := pkt{src: clientEU, dst: vipWeb.Addr, sport: 4242, dport: 80}
	in := p.frame(t)
	f.send(t, in)
	nh, _ := f.r.NextHopCache()
	m := Mirror{Addr: fixtureMirrors[m1], State: MirrorActive, Encap: EncapGUE, GUEPort: 6080}
	if err := f.r.SetMirror(m1, m); err != nil {
		t.Fatal(err)
	}
	if nh2, _ := f.r.NextHopCache(); nh2.Generation == nh.Generation {
		t.Fatal("encapsulation change did not invalidate the next-hop cache")
	}
	_, out := f.send(t, in)
	checkGUE(t, in, out, m, true)
	if err := f.r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}); err != nil {
		t.Fatal(err)
	}
	_, out = f.send(t, in)
	checkEncap(t, in, out, fixtureMirrors[m1], nil)
}

// gueDecapEnv is a fixture with GUE mirrors and a decap program
// terminating every fixture mirror, the GUE ones on their GUE ports.
type gueDecapEnv struct {
	*fixture
	d *Decap
}

func newGUEDecapEnv(t testing.TB) *gueDecapEnv {
	t.Helper()
	f := newFixture(t)
	f.addGUE(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, m := range fixtureMirrors {
		if err := d.AddEndpoint(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range gueMirrors {
		if err := d.SetEndpoint(DecapEndpoint{Addr: m.Addr, GUEPort: m.GUEPort}); err != nil {
			t.Fatal(err)
		}
	}
	return &gueDecapEnv{fixture: f, d: d}
}

// encap returns the router's GUE frame for p.
func (e *gueDecapEnv) encap(t *testing.T, p pkt) (in, enc []byte) {
	t.Helper()
	in = p.frame(t)
	v, enc := e.send(t, in)
	if v != xdpTX {
		t.Fatalf("router verdict %s", verdictNames[v])
	}
	return in, slices.Clone(enc)
}

// decap runs frame through the decap program: verdict, output, reasons.
func (e *gueDecapEnv) decap(t *testing.T, frame []byte) (uint32, []byte, map[string]uint64) {
	t.Helper()
	before, err := e.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	v, out := e.env.run(t, e.d.Program(), frame, 0)
	after, err := e.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return v, out, fieldDelta(before.Fields(), after.Fields())
}

// TestGUEDecap: GUE from the router is stripped for every family pair,
// IPIP still works beside it, and everything else is passed untouched or
// dropped by reason.
func TestGUEDecap(t *testing.T) {
	e := newGUEDecapEnv(t)
	udp := layers.IPProtocolUDP
	for name, p := range map[string]pkt{
		"v4 in v4 tcp":        {src: clientEU, dst: vipG.Addr, sport: 1, dport: 80},
		"v4 in v4 udp":        {src: clientEU, dst: vipGU.Addr, sport: 1, dport: 53, proto: udp},
		"v4 in v6 tcp":        {src: clientAS, dst: vipG.Addr, sport: 1, dport: 80},
		"v4 in v6 udp":        {src: clientAS, dst: vipGU.Addr, sport: 1, dport: 53, proto: udp},
		"v6 in v6 tcp":        {src: client6EU, dst: vipG6.Addr, sport: 1, dport: 443},
		"v6 in v6 udp":        {src: client6EU, dst: vipGU6.Addr, sport: 1, dport: 53, proto: udp},
		"v6 in v4 tcp":        {src: client6US, dst: vipG6.Addr, sport: 1, dport: 443},
		"v6 in v4 udp":        {src: client6US, dst: vipGU6.Addr, sport: 1, dport: 53, proto: udp},
		"vlan":                {src: clientEU, dst: vipG.Addr, sport: 2, dport: 80, vlan: 9},
		"zero checksum, v6":   {src: client6EU, dst: vipG6.Addr, sport: 2, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}},
		"ipip beside GUE":     {src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80},
		"ip6ip6 beside GUE":   {src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443},
		"v4 options in v6":    {src: clientAS, dst: vipG.Addr, sport: 3, dport: 80, v4opts: []layers.IPv4Option{{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}}}},
		"odd length in v4":    {src: clientEU, dst: vipG.Addr, sport: 4, dport: 80, payload: make([]byte, 333)},
		"odd length v6 in v6": {src: client6EU, dst: vipGU6.Addr, sport: 4, dport: 53, proto: udp, payload: make([]byte, 333)},
	} {
		t.Run(name, func(t *testing.T) {
			in, enc := e.encap(t, p)
			v, out, d := e.decap(t, enc)
			if v != xdpPass {
				t.Fatalf("decap verdict %s (%v)", verdictNames[v], d)
			}
			if !bytes.Equal(out[12:], in[12:]) {
				t.Fatalf("decap output differs from the client's frame:\n in  %x\n out %x", in[12:], out[12:])
			}
			gue := uint64(1)
			if strings.Contains(name, "beside") {
				gue = 0
			}
			if d["gue"] != gue || d["decap_v4"]+d["decap_v6"] != 1 || len(d) != 1+int(gue) {
				t.Fatalf("reasons %v", d)
			}
		})
	}

	// Frames built from a real GUE packet, broken one way each.
	base := pkt{src: clientEU, dst: vipG.Addr, sport: 7, dport: 80}
	base6 := pkt{src: client6EU, dst: vipG6.Addr, sport: 7, dport: 443}
	const l2, udpOff4, udpOff6 = 14, 14 + 20, 14 + 40
	put16 := func(b []byte, off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }
	add16 := func(b []byte, off, d int) { put16(b, off, uint16(int(binary.BigEndian.Uint16(b[off:]))+d)) }
	fixIPv4 := func(b []byte) { // after editing the outer IPv4 header
		put16(b, l2+10, 0)
		put16(b, l2+10, ^onesSum(b[l2:l2+20]))
	}
	for _, tc := range []struct {
		name    string
		p       pkt
		edit    func(b []byte) []byte
		verdict uint32
		reason  string
	}{
		{"other UDP port", base, func(b []byte) []byte { put16(b, udpOff4+2, 9); return b }, xdpPass, "pass_udp_not_gue"},
		{"other UDP port, v6", base6, func(b []byte) []byte { put16(b, udpOff6+2, gue4Port); return b }, xdpPass, "pass_udp_not_gue"},
		{"endpoint without GUE", base, func(b []byte) []byte {
			if err := e.d.AddEndpoint(gueMirrors[mGUE4].Addr); err != nil {
				t.Fatal(err)
			}
			return b
		}, xdpPass, "pass_udp_not_gue"},
		{"not a local endpoint", base, func(b []byte) []byte {
			if err := e.d.RemoveEndpoint(gueMirrors[mGUE4].Addr); err != nil {
				t.Fatal(err)
			}
			return b
		}, xdpPass, "pass_not_tunnel"},
		{"UDP length + 1", base, func(b []byte) []byte { add16(b, udpOff4+4, 1); return b }, xdpDrop, "drop_malformed"},
		{"UDP length - 1", base6, func(b []byte) []byte { add16(b, udpOff6+4, -1); return b }, xdpDrop, "drop_malformed"},
		{"outer length - 1", base, func(b []byte) []byte { add16(b, l2+2, -1); fixIPv4(b); return b }, xdpDrop, "drop_malformed"},
		{"outer length beyond the frame", base, func(b []byte) []byte {
			add16(b, l2+2, 4)
			add16(b, udpOff4+4, 4)
			fixIPv4(b)
			return b
		}, xdpDrop, "drop_malformed"},
		{"inner length + 1", base, func(b []byte) []byte { add16(b, udpOff4+8+2, 1); return b }, xdpDrop, "drop_malformed"},
		{"inner v6 length - 1", base6, func(b []byte) []byte { add16(b, udpOff6+8+4, -1); return b }, xdpDrop, "drop_malformed"},
		{"inner nibble 5", base, func(b []byte) []byte { b[udpOff4+8] = 0x55; return b }, xdpDrop, "drop_malformed"},
		{"inner nibble 6 on a v4 packet", base, func(b []byte) []byte { b[udpOff4+8] = 0x65; return b }, xdpDrop, "drop_malformed"},
		{"truncated inner", base, func(b []byte) []byte { return b[:udpOff4+8+10] }, xdpDrop, "drop_malformed"},
		{"truncated UDP header", base, func(b []byte) []byte { return b[:udpOff4+4] }, xdpPass, "pass_not_tunnel"},
		{"outer fragment", base, func(b []byte) []byte { put16(b, l2+6, 0x2000); fixIPv4(b); return b }, xdpPass, "pass_fragment"},
		{"wrong non-zero UDP checksum (not verified)", base, func(b []byte) []byte { b[udpOff4+7] ^= 0x5a; return b }, xdpPass, "gue"},
		{"outer IPv4 options, GUE port", base, func(b []byte) []byte { return withOuterOption(b) }, xdpDrop, "drop_malformed"},
		{"outer IPv4 options, other port", base, func(b []byte) []byte {
			b = withOuterOption(b)
			put16(b, udpOff4+4+2, 9)
			return b
		}, xdpPass, "pass_udp_not_gue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() { // restore the endpoint the edits may have changed
				m := gueMirrors[mGUE4]
				if err := e.d.SetEndpoint(DecapEndpoint{Addr: m.Addr, GUEPort: m.GUEPort}); err != nil {
					t.Fatal(err)
				}
			}()
			_, enc := e.encap(t, tc.p)
			frame := tc.edit(enc)
			in := slices.Clone(frame)
			v, out, d := e.decap(t, frame)
			if v != tc.verdict || d[tc.reason] != 1 {
				t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[tc.verdict], tc.reason)
			}
			if v == xdpPass && tc.reason != "gue" && !bytes.Equal(out, in) {
				t.Fatal("passed frame modified")
			}
		})
	}

	// Cut a GUE frame at every length: outer and UDP headers cut short
	// pass untouched (not recognizably ours), anything later is dropped.
	_, full := e.encap(t, base6)
	for cut := 14; cut < len(full); cut++ {
		v, out, d := e.decap(t, full[:cut])
		want, reason := uint32(xdpDrop), "drop_malformed"
		if cut < udpOff6+8 {
			want, reason = xdpPass, "pass_not_tunnel"
		}
		if v != want || d[reason] != 1 || len(d) != 1 {
			t.Fatalf("cut at %d: verdict %s reasons %v, want %s/%s", cut, verdictNames[v], d, verdictNames[want], reason)
		}
		if v == xdpPass && !bytes.Equal(out, full[:cut]) {
			t.Fatalf("cut at %d: passed frame modified", cut)
		}
	}
}

// withOuterOption inserts a 4-byte option (NOP padding) into the outer
// IPv4 header of a GUE frame.
func withOuterOption(b []byte) []byte {
	out := append(slices.Clone(b[:14+20]), 1, 1, 1, 0)
	out = append(out, b[14+20:]...)
	out[14] = 0x46
	binary.BigEndian.PutUint16(out[14+2:], binary.BigEndian.Uint16(out[14+2:])+4)
	binary.BigEndian.PutUint16(out[14+10:], 0)
	binary.BigEndian.PutUint16(out[14+10:], ^onesSum(out[14:14+24]))
	return out
}

// TestUDPChecksumHelper: the test's own checksum verifier agrees with
// gopacket's, and notices a flipped bit.
func TestUDPChecksumHelper(t *testing.T) {
	for _, p := range []pkt{
		{src: clientEU, dst: vipDNS.Addr, sport: 5, dport: 53, proto: layers.IPProtocolUDP, payload: []byte("odd")},
		{src: client6EU, dst: vipGU6.Addr, sport: 5, dport: 53, proto: layers.IPProtocolUDP, payload: make([]byte, 100)},
	} {
		l3 := p.l3(t)
		hl := 40
		if p.src.Is4() {
			hl = 20
		}
		u := l3[hl:]
		if !udpChecksumValid(p.src, p.dst, u) {
			t.Fatalf("gopacket's checksum judged invalid: %x", u)
		}
		u[len(u)-1] ^= 1
		if udpChecksumValid(p.src, p.dst, u) {
			t.Fatal("a flipped bit went unnoticed")
		}
	}
}

// TestDecapSources: an endpoint marked SourcesOnly decapsulates tunnel
// packets (IPIP, IPv6-in-IP and GUE, either outer family) only from outer
// sources inside a prefix of pm_decap_sources; the rest are dropped and
// counted, other UDP to the endpoint still passes, and an unmarked
// endpoint takes any source.
func TestDecapSources(t *testing.T) {
	e := newGUEDecapEnv(t)
	mark := func(on bool) {
		t.Helper()
		for _, m := range fixtureMirrors {
			if err := e.d.SetEndpoint(DecapEndpoint{Addr: m, SourcesOnly: on}); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range gueMirrors {
			if err := e.d.SetEndpoint(DecapEndpoint{Addr: m.Addr, GUEPort: m.GUEPort, SourcesOnly: on}); err != nil {
				t.Fatal(err)
			}
		}
	}
	udp := layers.IPProtocolUDP
	pkts := map[string]pkt{
		"ipip":       {src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80},
		"ip6ip6":     {src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443},
		"gue v4":     {src: clientEU, dst: vipGU.Addr, sport: 1, dport: 53, proto: udp},
		"gue v6":     {src: client6EU, dst: vipGU6.Addr, sport: 1, dport: 53, proto: udp},
		"gue v4 in6": {src: clientAS, dst: vipG.Addr, sport: 1, dport: 80},
	}
	frames := map[string][]byte{}
	outer6 := map[string]bool{}
	for name, p := range pkts {
		_, frames[name] = e.encap(t, p)
		outer6[name] = binary.BigEndian.Uint16(frames[name][12:]) == 0x86dd
	}
	if src := netip.AddrFrom4([4]byte(frames["ipip"][14+12 : 14+16])); src != edgeV4 {
		t.Fatalf("the router's outer IPv4 source is %s, the test expects %s", src, edgeV4)
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		marked     bool
		sources    []netip.Prefix
		allow4     bool // outer IPv4 packets decapsulated
		allow6     bool
		wantListed []netip.Prefix // what Sources reads back (nil: sources)
	}{
		{"marked, no source listed", true, nil, false, false, nil},
		{"the edges' networks", true, pfx("10.99.0.0/16", "fd99::/64"), true, true, nil},
		{"the IPv4 edge only", true, pfx("10.99.0.1/32"), true, false, nil},
		{"the IPv6 edge only", true, pfx("fd99::1/128"), false, true, nil},
		{"host bits are masked", true, pfx("10.99.7.7/16"), true, false, pfx("10.99.0.0/16")},
		{"other networks", true, pfx("10.98.0.0/16", "10.99.0.2/32", "fd98::/16", "fd99::2/128"), false, false, nil},
		{"::/0 lists IPv6 sources only (an IPv4 source needs an IPv4 prefix)", true, pfx("::/0"), false, true, nil},
		{"0.0.0.0/0 and ::/0 hold every source", true, pfx("0.0.0.0/0", "::/0"), true, true, nil},
		{"unmarked endpoints take any source", false, pfx("10.98.0.0/16"), true, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark(tc.marked)
			if _, _, err := e.d.SetSources(tc.sources); err != nil {
				t.Fatal(err)
			}
			got, err := e.d.Sources()
			if err != nil {
				t.Fatal(err)
			}
			want := tc.wantListed
			if want == nil {
				want = tc.sources
			}
			slices.SortFunc(got, netip.Prefix.Compare)
			want = slices.SortedFunc(slices.Values(want), netip.Prefix.Compare)
			if !slices.Equal(got, want) {
				t.Fatalf("pm_decap_sources holds %v, want %v", got, want)
			}
			eps, err := e.d.Endpoints()
			if err != nil {
				t.Fatal(err)
			}
			for _, ep := range eps {
				if ep.SourcesOnly != tc.marked {
					t.Fatalf("endpoint %s reads back SourcesOnly=%v", ep.Addr, ep.SourcesOnly)
				}
			}
			for name, frame := range frames {
				allow := tc.allow4
				if outer6[name] {
					allow = tc.allow6
				}
				in := slices.Clone(frame)
				v, out, d := e.decap(t, slices.Clone(frame))
				switch {
				case allow && (v != xdpPass || d["decap_v4"]+d["decap_v6"] != 1 || d["drop_source"] != 0):
					t.Errorf("%s: verdict %s reasons %v, want it decapsulated", name, verdictNames[v], d)
				case !allow && (v != xdpDrop || d["drop_source"] != 1 || len(d) != 1):
					t.Errorf("%s: verdict %s reasons %v, want drop_source", name, verdictNames[v], d)
				case !allow && !bytes.Equal(out, in):
					t.Errorf("%s: dropped frame modified", name)
				}
			}
			// An IPv6 outer source that is IPv4-mapped (never on the
			// wire) does not pass for the listed IPv4 edge.
			mapped := slices.Clone(frames["ip6ip6"])
			src := netip.AddrFrom16(edgeV4.As16()).As16() // ::ffff:10.99.0.1
			copy(mapped[14+8:], src[:])
			wantMapped := !tc.marked // refused wherever sources are checked, ::/0 too
			if v, _, d := e.decap(t, mapped); wantMapped != (v == xdpPass) || (!wantMapped && d["drop_source"] != 1) {
				t.Errorf("IPv4-mapped outer IPv6 source: verdict %s reasons %v, want decapsulated %v", verdictNames[v], d, wantMapped)
			}
			// Other UDP to a GUE endpoint is not a tunnel packet: it
			// passes to the stack whatever its source.
			other := slices.Clone(frames["gue v4"])
			binary.BigEndian.PutUint16(other[14+20+2:], 9)
			if v, _, d := e.decap(t, other); v != xdpPass || d["pass_udp_not_gue"] != 1 {
				t.Errorf("UDP to another port: verdict %s reasons %v, want pass_udp_not_gue", verdictNames[v], d)
			}
		})
	}
	// Only differences are written: the last case listed 10.98.0.0/16.
	for i, want := range [][2]int{{1, 1}, {0, 0}} {
		w, d, err := e.d.SetSources(pfx("10.99.0.0/16"))
		if err != nil {
			t.Fatal(err)
		}
		if w != want[0] || d != want[1] {
			t.Fatalf("SetSources %d: wrote %d, deleted %d; want %d, %d", i, w, d, want[0], want[1])
		}
	}
	if _, _, err := e.d.SetSources([]netip.Prefix{{}}); err == nil {
		t.Fatal("an invalid prefix was accepted")
	}
	big := make([]netip.Prefix, MaxDecapSources+1)
	for i := range big {
		big[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	if _, _, err := e.d.SetSources(big); err == nil {
		t.Fatalf("%d sources accepted", len(big))
	}
	if got, _ := e.d.Sources(); len(got) != 1 {
		t.Fatalf("refused lists changed the map: %v", got)
	}
}

// outerID is the outer IPv4 ID the router writes: the inner IPv4 packet's
// when the outer may be fragmented, else 0.
func outerID(inner []byte, df bool) uint16 {
	if df || inner[0]>>4 != 4 {
		return 0
	}
	return binary.BigEndian.Uint16(inner[4:])
}
