package maps

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// Packets a real network delivers, built byte by byte where gopacket would
// "fix" what the case is about: each gets one verdict and one reason, and
// is forwarded only to the mirror its flow belongs to.

// ethFrame wraps an L3 packet in the client's Ethernet header, padded to
// the 60-byte minimum with pad (a NIC pads with zeros, some with leftovers).
func ethFrame(l3 []byte, etype uint16, pad byte) []byte {
	b := make([]byte, 14, 14+len(l3)+46)
	copy(b, edgeMAC)
	copy(b[6:], clientMAC)
	binary.BigEndian.PutUint16(b[12:], etype)
	b = append(b, l3...)
	for len(b) < 60 {
		b = append(b, pad)
	}
	return b
}

// rawV4 is an IPv4 header (20 bytes + opts) with the given total length
// (0: the real one), fragment field and protocol, then body.
func rawV4(src, dst netip.Addr, proto byte, fragField uint16, tot int, opts, body []byte) []byte {
	hl := 20 + len(opts)
	if tot == 0 {
		tot = hl + len(body)
	}
	h := make([]byte, 20, hl+len(body))
	h[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(h[2:], uint16(tot))
	binary.BigEndian.PutUint16(h[4:], 0x4242)
	binary.BigEndian.PutUint16(h[6:], fragField)
	h[8], h[9] = 64, proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	h = append(h, opts...)
	binary.BigEndian.PutUint16(h[10:], csum(h[:hl]))
	return append(h, body...)
}

// v6hdr is one IPv6 extension header: its type and its bytes after the
// next-header field (length byte included).
type v6hdr struct {
	typ  byte
	body []byte
}

var (
	v6DstOpts  = v6hdr{byte(layers.IPProtocolIPv6Destination), []byte{0, 1, 4, 0, 0, 0, 0}}
	v6HopByHop = v6hdr{byte(layers.IPProtocolIPv6HopByHop), []byte{0, 1, 4, 0, 0, 0, 0}}
)

func v6Frag(offset uint16, more bool, id uint32) v6hdr {
	fo := offset << 3
	if more {
		fo |= 1
	}
	return v6hdr{byte(layers.IPProtocolIPv6Fragment), []byte{0, byte(fo >> 8), byte(fo), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}}
}

// rawV6 is an IPv6 header, the extension headers in order, then proto's
// body; payload length plen (-1: the real one).
func rawV6(src, dst netip.Addr, chain []v6hdr, proto byte, plen int, body []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	h[7] = 64
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	next := func(i int) byte {
		if i < len(chain) {
			return chain[i].typ
		}
		return proto
	}
	h[6] = next(0)
	for i, e := range chain {
		h = append(h, next(i+1))
		h = append(h, e.body...)
	}
	h = append(h, body...)
	if plen < 0 {
		plen = len(h) - 40
	}
	binary.BigEndian.PutUint16(h[4:], uint16(plen))
	return h
}

// tcpHdr is a 20-byte TCP header (checksum not set: the router never reads it).
func tcpHdr(sport, dport uint16, flags byte, doff byte) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h, sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = doff << 4
	h[13] = flags
	return h
}

func udpHdr(sport, dport uint16, length int) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h, sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(length))
	return h
}

type sweepCase struct {
	name    string
	frame   func(t *testing.T) []byte
	verdict uint32
	reason  string
	mirror  netip.Addr // outer destination when forwarded
}

// runSweep sends each case on a fresh fixture's pm0 and checks verdict,
// the one reason counted, an untouched passed frame and the mirror.
func runSweep(t *testing.T, f *fixture, cases []sweepCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.frame(t)
			orig := slices.Clone(in)
			before := f.stats(t)
			v, out := f.send(t, in)
			d := statDelta(before, f.stats(t))
			verdicts := 0
			for r := range d {
				if r != "icmp_steered" && r != "fragments" && r != "rerouted" && r != "counter_overflow" && r != "gue_zero_csum_v6" {
					verdicts++
				}
			}
			if v != tc.verdict || d[tc.reason] != 1 || verdicts != 1 {
				t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[tc.verdict], tc.reason)
			}
			switch v {
			case xdpPass:
				if !bytes.Equal(out[:len(orig)], orig) {
					t.Fatal("passed frame modified")
				}
			case xdpTX, xdpRedirect:
				checkEncap(t, orig, out, tc.mirror, nil)
			}
		})
	}
}

// TestSweepRouter is the adversarial packet table for the router.
func TestSweepRouter(t *testing.T) {
	f := newFixture(t)
	m1a, m3a := fixtureMirrors[m1], fixtureMirrors[m3v6]
	vip, vip6 := vipWeb.Addr, vipWeb6.Addr
	const tcp, udp, icmp, icmp6 = 6, 17, 1, 58
	const eth4, eth6 = 0x0800, 0x86dd
	syn := byte(0x02)
	dnsReq := func(n int) []byte { return append(udpHdr(5353, 53, 8+n), make([]byte, n)...) }
	router4, router6 := a("198.51.100.254"), a("2001:db8:1::fe")
	replyV4 := rawV4(vip, clientEU, tcp, 0x4000, 0, nil, tcpHdr(80, 1234, 0x12, 5))
	replyV6 := rawV6(vip6, client6EU, nil, tcp, -1, tcpHdr(443, 1234, 0x12, 5))
	icmpV4 := func(dst netip.Addr, quote []byte) []byte {
		return rawV4(router4, dst, icmp, 0, 0, nil, append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0x78}, quote...))
	}
	icmpV6 := func(dst netip.Addr, quote []byte) []byte {
		return rawV6(router6, dst, nil, icmp6, -1, append([]byte{2, 0, 0, 0, 0, 0, 0x05, 0x00}, quote...))
	}
	fr := func(l3 []byte, et uint16) func(*testing.T) []byte {
		return func(*testing.T) []byte { return ethFrame(l3, et, 0) }
	}
	frPad := func(l3 []byte, et uint16, pad []byte) func(*testing.T) []byte {
		return func(*testing.T) []byte {
			b := append(ethFrame(l3, et, 0)[:14+len(l3)], pad...)
			for len(b) < 60 {
				b = append(b, 0)
			}
			return b
		}
	}
	chain := func(n int) []v6hdr {
		var c []v6hdr
		for range n {
			c = append(c, v6DstOpts)
		}
		return c
	}
	cases := []sweepCase{
		// IPv4 headers.
		{"v4 options (IHL 6)", fr(rawV4(clientEU, vip, tcp, 0x4000, 0, []byte{1, 1, 1, 0}, tcpHdr(1, 80, syn, 5)), eth4), xdpTX, "tx", m1a},
		{"v4 total length beyond the frame, to a VIP address", fr(rawV4(clientEU, vip, tcp, 0x4000, 200, nil, tcpHdr(2, 80, syn, 5)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v4 total length beyond the frame, other address", fr(rawV4(clientEU, a("192.0.2.99"), tcp, 0x4000, 200, nil, tcpHdr(2, 80, syn, 5)), eth4), xdpPass, "pass_malformed", netip.Addr{}},
		{"v4 total length below the header", fr(rawV4(clientEU, vip, tcp, 0x4000, 16, nil, tcpHdr(3, 80, syn, 5)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v4 total length covers no UDP header (zero padding)", fr(rawV4(clientEU, vip, udp, 0, 20, nil, nil), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v4 total length covers no UDP header (padding looks like one)", frPad(rawV4(clientEU, vip, udp, 0, 20, nil, nil), eth4, dnsReq(0)), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v4 total length cuts the TCP header", frPad(rawV4(clientEU, vip, tcp, 0x4000, 30, nil, tcpHdr(4, 80, syn, 5)[:10]), eth4, tcpHdr(4, 80, syn, 5)[10:]), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v4 padding after a full packet", fr(rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(5, 80, syn, 5)), eth4), xdpTX, "tx", m1a},
		{"v4 TTL 0 carried (tunnel ingress, no decrement)", func(t *testing.T) []byte {
			l3 := rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(6, 80, syn, 5))
			l3[8] = 0
			return ethFrame(l3, eth4, 0)
		}, xdpTX, "tx", m1a},
		{"v4 version 6 in an IPv4 ethertype", func(t *testing.T) []byte {
			l3 := rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(7, 80, syn, 5))
			l3[0] = 0x65
			return ethFrame(l3, eth4, 0)
		}, xdpPass, "pass_malformed", netip.Addr{}},
		// TCP and UDP headers.
		{"TCP data offset 4", fr(rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(10, 80, syn, 4)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"TCP data offset beyond the packet", fr(rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(11, 80, syn, 15)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"TCP data offset with options", fr(rawV4(clientEU, vip, tcp, 0x4000, 0, nil, append(tcpHdr(12, 80, syn, 6), 1, 1, 1, 0)), eth4), xdpTX, "tx", m1a},
		{"UDP length 0", fr(rawV4(clientEU, vip, udp, 0, 0, nil, udpHdr(13, 53, 0)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"UDP length beyond the packet", fr(rawV4(clientEU, vip, udp, 0, 0, nil, append(udpHdr(14, 53, 40), make([]byte, 8)...)), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"UDP length 0, v6 (a jumbogram's), VIP address", fr(rawV6(client6EU, vip6, nil, udp, -1, udpHdr(15, 443, 0)), eth6), xdpDrop, "drop_malformed", netip.Addr{}},
		{"UDP length below the packet (trailer) carried", fr(rawV4(clientEU, vip, udp, 0, 0, nil, append(udpHdr(16, 53, 12), make([]byte, 8)...)), eth4), xdpTX, "tx", m1a},
		// L2.
		{"QinQ", func(t *testing.T) []byte {
			b := ethFrame(append([]byte{0, 7, 0x81, 0}, rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(20, 80, syn, 5))...), 0x88a8, 0)
			return b
		}, xdpPass, "pass_not_ip", netip.Addr{}},
		{"double 802.1Q", func(t *testing.T) []byte {
			return ethFrame(append([]byte{0, 7, 0x81, 0, 0, 8, 0x08, 0}, rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(21, 80, syn, 5))...), 0x8100, 0)
		}, xdpPass, "pass_not_ip", netip.Addr{}},
		{"802.1Q then IPv6", func(t *testing.T) []byte {
			return ethFrame(append([]byte{0, 7, 0x86, 0xdd}, rawV6(client6EU, vip6, nil, tcp, -1, tcpHdr(22, 443, syn, 5))...), 0x8100, 0)
		}, xdpTX, "tx", m3a},
		{"IPv6 in an IPv4 ethertype", fr(rawV6(client6EU, vip6, nil, tcp, -1, tcpHdr(23, 443, syn, 5)), eth4), xdpPass, "pass_malformed", netip.Addr{}},
		// IPv6 extension headers.
		{"v6 fragment header then destination options, first fragment", fr(rawV6(client6EU, vip6, []v6hdr{v6Frag(0, true, 77), v6DstOpts}, tcp, -1, append(tcpHdr(30, 443, syn, 5), make([]byte, 20)...)), eth6), xdpTX, "tx", m3a},
		{"v6 six extension headers", fr(rawV6(client6EU, vip6, chain(6), tcp, -1, tcpHdr(31, 443, syn, 5)), eth6), xdpTX, "tx", m3a},
		{"v6 seven extension headers (beyond the bound), VIP address", fr(rawV6(client6EU, vip6, chain(7), tcp, -1, tcpHdr(32, 443, syn, 5)), eth6), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v6 seven extension headers, other address", fr(rawV6(client6EU, a("2001:db8:ff::99"), chain(7), tcp, -1, tcpHdr(32, 443, syn, 5)), eth6), xdpPass, "pass_malformed", netip.Addr{}},
		{"v6 payload length beyond the frame", fr(rawV6(client6EU, vip6, nil, tcp, 100, tcpHdr(33, 443, syn, 5)), eth6), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v6 payload length covers no TCP header", frPad(rawV6(client6EU, vip6, nil, tcp, 0, nil), eth6, tcpHdr(34, 443, syn, 5)), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v6 jumbogram (payload length 0, jumbo option)", fr(rawV6(client6EU, vip6, []v6hdr{{0, []byte{0, 0xc2, 4, 0, 0, 0, 68}}}, tcp, 0, append(tcpHdr(35, 443, syn, 5), make([]byte, 40)...)), eth6), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v6 extension header cut by the payload length", frPad(rawV6(client6EU, vip6, nil, 0, 4, []byte{6, 1, 4, 0}), eth6, append([]byte{0, 0, 0, 0}, tcpHdr(36, 443, syn, 5)...)), xdpDrop, "drop_malformed", netip.Addr{}},
		{"v6 no next header", fr(rawV6(client6EU, vip6, nil, 59, -1, nil), eth6), xdpPass, "pass_not_vip", netip.Addr{}},
		{"v6 atomic fragment (offset 0, M 0) is a whole packet", fr(rawV6(client6EU, vip6, []v6hdr{v6Frag(0, false, 78)}, tcp, -1, tcpHdr(37, 443, syn, 5)), eth6), xdpTX, "tx", m3a},
		// ICMP errors.
		{"ICMP error to a VIP, quoting a VIP flow", fr(icmpV4(vip, replyV4), eth4), xdpTX, "tx", m1a},
		{"ICMP error to another address quoting a VIP flow", fr(icmpV4(edgeV4, replyV4), eth4), xdpPass, "pass_not_vip", netip.Addr{}},
		{"ICMP error to a VIP quoting another VIP's flow", fr(icmpV4(vipFar.Addr, replyV4), eth4), xdpPass, "pass_not_vip", netip.Addr{}},
		{"ICMPv6 error to another address quoting a VIP flow", fr(icmpV6(edgeV6, replyV6), eth6), xdpPass, "pass_not_vip", netip.Addr{}},
		{"ICMPv6 error to a VIP, quoting a VIP flow", fr(icmpV6(vip6, replyV6), eth6), xdpTX, "tx", m3a},
		{"ICMP error quoting a truncated packet", fr(icmpV4(vip, replyV4[:22]), eth4), xdpDrop, "drop_malformed", netip.Addr{}},
		{"ICMP error quoting IHL 4", func(t *testing.T) []byte {
			q := slices.Clone(replyV4)
			q[0] = 0x44
			return ethFrame(icmpV4(vip, q), eth4, 0)
		}, xdpDrop, "drop_malformed", netip.Addr{}},
		{"ICMP error quoting a non-VIP flow", fr(icmpV4(vip, rawV4(vip, clientEU, tcp, 0, 0, nil, tcpHdr(22, 1234, 0x12, 5))), eth4), xdpPass, "pass_not_vip", netip.Addr{}},
		{"ICMP error to a non-VIP address, quoting non-VIP", fr(icmpV4(edgeV4, rawV4(edgeV4, clientEU, tcp, 0, 0, nil, tcpHdr(22, 1234, 0x12, 5))), eth4), xdpPass, "pass_not_vip", netip.Addr{}},
	}
	runSweep(t, f, cases)
}

// TestSweepFragments: every fragment of a datagram gets its first
// fragment's decision, whatever extension headers the first one carries
// after the fragment header, and also when that decision was "pass".
func TestSweepFragments(t *testing.T) {
	f := newFixture(t)
	const tcp, udp, icmp = 6, 17, 1
	const eth4, eth6 = 0x0800, 0x86dd
	vip, vip6 := vipWeb.Addr, vipWeb6.Addr
	body := func(l4 []byte) []byte { return append(l4, make([]byte, 40)...) }
	type step struct {
		frame   []byte
		verdict uint32
		reason  string
		mirror  netip.Addr
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"v6, destination options after the fragment header", []step{
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(0, true, 501), v6DstOpts}, tcp, -1, body(tcpHdr(40, 443, 0x02, 5))), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(8, false, 501)}, byte(layers.IPProtocolIPv6Destination), -1, make([]byte, 48)), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
		}},
		{"v6, hop-by-hop before the fragment header", []step{
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6HopByHop, v6Frag(0, true, 502)}, tcp, -1, body(tcpHdr(41, 443, 0x02, 5))), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6HopByHop, v6Frag(8, false, 502)}, tcp, -1, make([]byte, 48)), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
		}},
		{"v6, later fragment whose data looks like extension headers", []step{
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(0, true, 503), v6DstOpts}, tcp, -1, body(tcpHdr(42, 443, 0x02, 5))), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(8, false, 503)}, byte(layers.IPProtocolIPv6Destination), -1, bytes.Repeat([]byte{60, 0, 0, 0, 0, 0, 0, 0}, 8)), eth6, 0), xdpTX, "tx", fixtureMirrors[m3v6]},
		}},
		{"v4, datagram to a VIP address but no VIP port", []step{
			{ethFrame(rawV4(clientEU, vip, udp, 0x2000, 0, nil, body(udpHdr(43, 9999, 100))), eth4, 0), xdpPass, "pass_not_vip", netip.Addr{}},
			{ethFrame(rawV4(clientEU, vip, udp, 6, 0, nil, make([]byte, 52)), eth4, 0), xdpPass, "pass_not_vip", netip.Addr{}},
		}},
		{"v4, ping to a VIP address", []step{
			{ethFrame(rawV4(clientEU, vip, icmp, 0x2000, 0, nil, body([]byte{8, 0, 0, 0, 0, 1, 0, 1})), eth4, 0), xdpPass, "pass_not_vip", netip.Addr{}},
			{ethFrame(rawV4(clientEU, vip, icmp, 6, 0, nil, make([]byte, 52)), eth4, 0), xdpPass, "pass_not_vip", netip.Addr{}},
		}},
		{"v6, datagram to a VIP address but no VIP port", []step{
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(0, true, 504)}, udp, -1, body(udpHdr(44, 9999, 100))), eth6, 0), xdpPass, "pass_not_vip", netip.Addr{}},
			{ethFrame(rawV6(client6EU, vip6, []v6hdr{v6Frag(6, false, 504)}, udp, -1, make([]byte, 52)), eth6, 0), xdpPass, "pass_not_vip", netip.Addr{}},
		}},
		{"v4, VIP flow: first then later", []step{
			{ethFrame(rawV4(clientEU, vip, tcp, 0x2000, 0, nil, body(tcpHdr(45, 80, 0x02, 5))), eth4, 0), xdpTX, "tx", fixtureMirrors[m1]},
			{ethFrame(rawV4(clientEU, vip, tcp, 8, 0, nil, make([]byte, 40)), eth4, 0), xdpTX, "tx", fixtureMirrors[m1]},
		}},
		{"v4, stray later fragment to a VIP address", []step{
			{ethFrame(rawV4(clientEU2, vip, tcp, 16, 0, nil, make([]byte, 40)), eth4, 0), xdpDrop, "drop_frag_miss", netip.Addr{}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, st := range tc.steps {
				in := slices.Clone(st.frame)
				before := f.stats(t)
				v, out := f.send(t, in)
				d := statDelta(before, f.stats(t))
				if v != st.verdict || d[st.reason] != 1 {
					t.Fatalf("fragment %d: verdict %s reasons %v, want %s/%s", i, verdictNames[v], d, verdictNames[st.verdict], st.reason)
				}
				switch v {
				case xdpPass:
					if !bytes.Equal(out, st.frame) {
						t.Fatalf("fragment %d: passed frame modified", i)
					}
				case xdpTX:
					checkEncap(t, st.frame, out, st.mirror, nil)
				}
			}
		})
	}
}

// TestSweepDecap is the adversarial table for the decap program: tunnel
// packets a network (or someone else) delivers to a mirror host.
func TestSweepDecap(t *testing.T) {
	e := newGUEDecapEnv(t)
	const tcp, udp, ipip, ipv6 = 6, 17, 4, 41
	const eth4, eth6 = 0x0800, 0x86dd
	ep4, ep6 := fixtureMirrors[m1], fixtureMirrors[m3v6]
	g4, g6 := gueMirrors[mGUE4], gueMirrors[mGUE6]
	inner4 := rawV4(clientEU, vipWeb.Addr, tcp, 0x4000, 0, nil, tcpHdr(1, 80, 0x02, 5))
	inner6 := rawV6(client6EU, vipWeb6.Addr, nil, tcp, -1, tcpHdr(1, 443, 0x02, 5))
	notVIP := rawV4(clientEU, a("10.99.0.1"), tcp, 0x4000, 0, nil, tcpHdr(1, 22, 0x02, 5))
	gue := func(port uint16, in []byte) []byte { return append(udpHdr(50000, port, 8+len(in)), in...) }
	withIHL := func(b []byte, ihl byte) []byte { b = slices.Clone(b); b[0] = 0x40 | ihl; return b }
	for _, tc := range []struct {
		name    string
		frame   []byte
		verdict uint32
		reason  string
		inner   []byte // expected L3 after decapsulation
	}{
		{"IPIP", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4), eth4, 0), xdpPass, "decap_v4", inner4},
		{"IPIP, wrong outer destination", ethFrame(rawV4(edgeV4, a("10.99.0.77"), ipip, 0x4000, 0, nil, inner4), eth4, 0), xdpPass, "pass_not_local", nil},
		{"IP6IP6", ethFrame(rawV6(edgeV6, ep6, nil, ipv6, -1, inner6), eth6, 0), xdpPass, "decap_v6", inner6},
		{"IP6IP6, wrong outer destination", ethFrame(rawV6(edgeV6, a("fd99::77"), nil, ipv6, -1, inner6), eth6, 0), xdpPass, "pass_not_local", nil},
		{"IP6IP6 behind a destination-options header (the router sends none)", ethFrame(rawV6(edgeV6, ep6, []v6hdr{v6DstOpts}, ipv6, -1, inner6), eth6, 0), xdpPass, "pass_not_tunnel", nil},
		{"IPIP carrying IPv6 (protocol 4, inner 6)", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner6), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"IPIP, inner IHL 4", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, withIHL(inner4, 4)), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"IPIP, inner longer than the outer", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4[:30]), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"IPIP, outer length beyond the frame", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 200, nil, inner4), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"IPIP, outer IHL 4", ethFrame(withIHL(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4), 4), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"IPIP, outer fragment", ethFrame(rawV4(edgeV4, ep4, ipip, 0x2000, 0, nil, inner4), eth4, 0), xdpPass, "pass_fragment", nil},
		{"nested IPIP: one layer stripped, the stack has the rest", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4)), eth4, 0), xdpPass, "decap_v4", rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4)},
		{"IPIP, inner to an address that is no VIP (decapsulated: the stack judges)", ethFrame(rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, notVIP), eth4, 0), xdpPass, "decap_v4", notVIP},
		{"GUE", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, inner4)), eth4, 0), xdpPass, "decap_v4", inner4},
		{"GUE over IPv6", ethFrame(rawV6(edgeV6, g6.Addr, nil, udp, -1, gue(g6.GUEPort, inner6)), eth6, 0), xdpPass, "decap_v6", inner6},
		{"GUE, wrong outer destination", ethFrame(rawV4(edgeV4, a("10.99.0.77"), udp, 0x4000, 0, nil, gue(g4.GUEPort, inner4)), eth4, 0), xdpPass, "pass_not_tunnel", nil},
		{"GUE variant 0 header (version 0)", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, append([]byte{0x00, 4, 0, 0}, inner4...))), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"GUE variant 0 control message (C bit)", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, append([]byte{0x20, 0, 0, 0}, inner4...))), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"GUE, UDP length 0", func() []byte {
			g := gue(g4.GUEPort, inner4)
			binary.BigEndian.PutUint16(g[4:], 0)
			return ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, g), eth4, 0)
		}(), xdpDrop, "drop_malformed", nil},
		{"GUE, empty", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, nil)), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"GUE carrying IPIP", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4))), eth4, 0), xdpPass, "decap_v4", rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4)},
		{"GUE, inner IHL 4", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(g4.GUEPort, withIHL(inner4, 4))), eth4, 0), xdpDrop, "drop_malformed", nil},
		{"UDP to the endpoint, other port", ethFrame(rawV4(edgeV4, g4.Addr, udp, 0x4000, 0, nil, gue(9, inner4)), eth4, 0), xdpPass, "pass_udp_not_gue", nil},
		{"plain TCP to the endpoint", ethFrame(rawV4(clientEU, ep4, tcp, 0x4000, 0, nil, tcpHdr(1, 22, 0x02, 5)), eth4, 0), xdpPass, "pass_not_tunnel", nil},
		{"QinQ-tagged IPIP", ethFrame(append([]byte{0, 7, 0x81, 0, 0, 8, 0x08, 0}, rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4)...), 0x88a8, 0), xdpPass, "pass_not_tunnel", nil},
		{"802.1Q-tagged IPIP", ethFrame(append([]byte{0, 7, 0x08, 0}, rawV4(edgeV4, ep4, ipip, 0x4000, 0, nil, inner4)...), 0x8100, 0), xdpPass, "decap_v4", inner4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.frame)
			v, out, d := e.decap(t, in)
			verdicts := 0
			for r := range d {
				if r != "gue" {
					verdicts++
				}
			}
			if v != tc.verdict || d[tc.reason] != 1 || verdicts != 1 {
				t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[tc.verdict], tc.reason)
			}
			if tc.inner == nil {
				if v == xdpPass && !bytes.Equal(out, tc.frame) {
					t.Fatal("passed frame modified")
				}
				return
			}
			l2 := 14
			if binary.BigEndian.Uint16(out[12:]) == 0x8100 {
				l2 = 18
			}
			if len(out) < l2+len(tc.inner) || !bytes.Equal(out[l2:l2+len(tc.inner)], tc.inner) {
				t.Fatalf("inner packet:\n got  %x\n want %x", out[l2:], tc.inner)
			}
		})
	}
}

// TestSweepSticky: a flow's packets of every kind stay on its mirror when
// the table changes and while the mirror drains; the IPv4-mapped IPv6 form
// of its 5-tuple is another flow and moves nothing.
func TestSweepSticky(t *testing.T) {
	f := newFixture(t)
	const tcp, udp = 6, 17
	const eth4, eth6 = 0x0800, 0x86dd
	vip := vipWeb.Addr
	m1a, m2a := fixtureMirrors[m1], fixtureMirrors[m2]
	seg := func(flags byte) []byte {
		return ethFrame(rawV4(clientEU, vip, tcp, 0x4000, 0, nil, tcpHdr(7000, 80, flags, 5)), eth4, 0)
	}
	dgram := ethFrame(rawV4(clientEU, vipDNS.Addr, udp, 0, 0, nil, udpHdr(7000, 53, 8)), eth4, 0)
	expect := func(name string, frame []byte, want netip.Addr) {
		t.Helper()
		v, out := f.send(t, slices.Clone(frame))
		if v != xdpTX {
			t.Fatalf("%s: verdict %s", name, verdictNames[v])
		}
		checkEncap(t, frame, out, want, nil)
	}
	expect("SYN", seg(0x02), m1a)
	expect("ACK", seg(0x10), m1a)
	expect("UDP", dgram, m1a)
	if err := f.r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m2: 1}); err != nil {
		t.Fatal(err)
	}
	expect("ACK after the table moved", seg(0x10), m1a)
	expect("UDP after the table moved", dgram, m1a)
	reply := rawV4(vip, clientEU, tcp, 0x4000, 0, nil, tcpHdr(80, 7000, 0x10, 5))
	expect("ICMP frag-needed about it", ethFrame(rawV4(a("198.51.100.254"), vip, 1, 0, 0, nil, append([]byte{3, 4, 0, 0, 0, 0, 5, 0x78}, reply[:28]...)), eth4, 0), m1a)
	expect("first fragment", ethFrame(rawV4(clientEU, vip, tcp, 0x2000, 0, nil, append(tcpHdr(7000, 80, 0x10, 5), make([]byte, 20)...)), eth4, 0), m1a)
	expect("later fragment", ethFrame(rawV4(clientEU, vip, tcp, 5, 0, nil, make([]byte, 16)), eth4, 0), m1a)
	if err := f.r.SetMirrorState(m1, MirrorDraining); err != nil {
		t.Fatal(err)
	}
	expect("ACK while draining", seg(0x10), m1a)
	expect("FIN while draining", seg(0x11), m1a)
	expect("RST while draining", seg(0x14), m1a)
	expect("UDP while draining", dgram, m1a)

	// The same 5-tuple in IPv4-mapped IPv6 form: not the VIP (VIPs are
	// stored unmapped), so passed; the IPv4 flow keeps its mirror.
	mapped := ethFrame(rawV6(a("::ffff:198.51.100.7"), a("::ffff:192.0.2.1"), nil, tcp, -1, tcpHdr(7000, 80, 0x02, 5)), eth6, 0)
	before := f.stats(t)
	if v, out := f.send(t, slices.Clone(mapped)); v != xdpPass || !bytes.Equal(out, mapped) {
		t.Fatalf("mapped form: verdict %s", verdictNames[v])
	}
	if d := statDelta(before, f.stats(t)); d["pass_not_vip"] != 1 {
		t.Fatalf("mapped form: reasons %v", d)
	}
	expect("ACK after the mapped form", seg(0x10), m1a)

	// A new connection on the reused port (a bare SYN after the flow was
	// established) is a new flow: today's table, by design.
	if err := f.r.SetMirrorState(m1, MirrorActive); err != nil {
		t.Fatal(err)
	}
	expect("SYN reusing the port", seg(0x02), m2a)
}
