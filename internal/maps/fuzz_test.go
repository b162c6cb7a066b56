package maps

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/premirror/premirror/internal/probe"
)

// FuzzRouter feeds arbitrary frames through the router and checks its
// invariants: a verdict in the allowed set; a passed frame untouched
// (unless handed to the stack encapsulated); every forwarded frame a
// well-formed encapsulation of the input toward a configured mirror (IPIP,
// or GUE to the mirror's port with a consistent UDP header), sent to that
// mirror's neighbour MAC (the next-hop cache is on, as in the agent).
func FuzzRouter(f *testing.F) {
	fx := newFixture(f)
	fx.addGUE(f)
	if err := fx.r.SetNextHopTTL(DefaultNextHopTTL); err != nil {
		f.Fatal(err)
	}
	seeds := []pkt{
		{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80},
		{src: clientUS, dst: vipDNS.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP},
		{src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}},
		{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80, vlan: 3},
		{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80, frag: &fragment{0, true, 9}},
		{src: a("198.51.100.254"), dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4, icmp: &icmpErr{3, 4, 1400, pkt{src: vipWeb.Addr, dst: clientEU, sport: 80, dport: 1}}},
	}
	seeds = append(seeds, gueSeeds...)
	for _, s := range seeds {
		f.Add(s.frame(f))
	}
	mirrors := map[netip.Addr]uint16{} // mirror -> GUE port (0: IPIP)
	for _, m := range fixtureMirrors {
		mirrors[m] = 0
	}
	for _, m := range gueMirrors {
		mirrors[m.Addr] = m.GUEPort
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // BPF_PROG_TEST_RUN wants at least an Ethernet header
		}
		before := fx.stats(t)
		v, out := fx.send(t, in)
		d := statDelta(before, fx.stats(t))
		switch v {
		case xdpDrop:
			return
		case xdpPass:
			if d["pass_no_neigh"] == 0 && !bytes.Equal(in, out) {
				t.Fatalf("passed frame modified")
			}
			if d["pass_no_neigh"] == 0 {
				return
			}
		case xdpTX, xdpRedirect:
		default:
			t.Fatalf("verdict %d", v)
		}
		l2 := 14
		if binary.BigEndian.Uint16(in[12:]) == 0x8100 {
			l2 = 18
		}
		et := binary.BigEndian.Uint16(out[l2-2:])
		var dst netip.Addr
		var olen int
		var proto byte
		switch et {
		case 0x0800:
			olen = 20
			if len(out) < l2+20 || out[l2] != 0x45 || csum(out[l2:l2+20]) != 0 {
				t.Fatalf("bad outer IPv4 header: %x", out[l2:min(len(out), l2+20)])
			}
			proto = out[l2+9]
			dst = netip.AddrFrom4([4]byte(out[l2+16 : l2+20]))
		case 0x86dd:
			olen = 40
			if len(out) < l2+40 || out[l2]>>4 != 6 {
				t.Fatalf("bad outer IPv6 header")
			}
			proto = out[l2+6]
			dst = netip.AddrFrom16([16]byte(out[l2+24 : l2+40]))
		default:
			t.Fatalf("forwarded frame with ethertype %#x", et)
		}
		guePort, ok := mirrors[dst]
		if !ok {
			t.Fatalf("forwarded to %s, not a mirror", dst)
		}
		switch {
		case guePort == 0 && proto != 4 && proto != 41:
			t.Fatalf("outer protocol %d toward an IPIP mirror", proto)
		case guePort != 0 && proto != 17:
			t.Fatalf("outer protocol %d toward a GUE mirror", proto)
		case guePort != 0:
			// The UDP header: ephemeral source, the mirror's port, the
			// length of the rest of the frame.
			u := out[l2+olen:]
			if len(u) < 8 || binary.BigEndian.Uint16(u) < 0xC000 || binary.BigEndian.Uint16(u[2:]) != guePort ||
				int(binary.BigEndian.Uint16(u[4:])) != 8+ipLen(in[l2:]) {
				t.Fatalf("bad GUE UDP header %x", u[:min(len(u), 8)])
			}
			olen += 8
		}
		if d["pass_no_neigh"] == 0 && !bytes.Equal(out[:6], mirrorMAC(dst)) {
			t.Fatalf("sent to MAC %x, not the neighbour of %s", out[:6], dst)
		}
		inner := in[l2:]
		if !bytes.Equal(out[l2+olen:], inner) || ipLen(inner) > len(inner) {
			t.Fatalf("inner packet differs from the input")
		}
	})
}

// gueSeeds are frames to the GUE fixture's VIPs (see addGUE).
var gueSeeds = []pkt{
	{src: clientEU, dst: vipG.Addr, sport: 1, dport: 80},
	{src: clientAS, dst: vipGU.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP},
	{src: client6EU, dst: vipG6.Addr, sport: 1, dport: 443, v6ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}},
	{src: client6US, dst: vipGU6.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP},
	{src: clientAS, dst: vipG.Addr, sport: 1, dport: 80, frag: &fragment{0, true, 9}},
}

// FuzzDecap feeds arbitrary frames through the decap program: a frame it
// passes is untouched unless it counted a decapsulation, and then it is
// the input without its outer IP (and, for GUE, UDP) header, under the
// inner family's ethertype; a frame it sends back is a counted probe echo
// of the same length whose payload decodes as a probe reply; nothing else
// is ever returned.
func FuzzDecap(f *testing.F) {
	e := newGUEDecapEnv(f)
	fx, d := e.fixture, e.d
	if err := d.SetProbeEcho(9461, 1_000_000); err != nil {
		f.Fatal(err)
	}
	req, err := probe.AppendPacket(nil, probe.Packet{Type: probe.TypeRequest, Seq: 1, Nonce: 2, Len: 64})
	if err != nil {
		f.Fatal(err)
	}
	for _, dst := range []netip.Addr{fixtureMirrors[m1], fixtureMirrors[m3v6], gueMirrors[mGUE6].Addr} {
		src := netip.MustParseAddr("10.1.0.5")
		if dst.Is6() {
			src = netip.MustParseAddr("fd01::5")
		}
		f.Add(echoFrame(f, src, dst, 9461, req, false))
	}
	// Seeds: the router's output for IPIP and GUE flows, and plain frames.
	for _, p := range append([]pkt{
		{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80},
		{src: client6EU, dst: vipWeb6.Addr, sport: 1, dport: 443, vlan: 4},
	}, gueSeeds...) {
		in := p.frame(f)
		f.Add(in)
		if v, out := fx.send(f, in); v == xdpTX {
			f.Add(bytes.Clone(out))
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return
		}
		before, err := d.Stats()
		if err != nil {
			t.Fatal(err)
		}
		v, out := fx.env.run(t, d.Program(), in, 0)
		after, _ := d.Stats()
		decapped := after.DecapV4+after.DecapV6 > before.DecapV4+before.DecapV6
		switch {
		case v == xdpTX:
			if after.ProbeEcho != before.ProbeEcho+1 || decapped || len(out) != len(in) {
				t.Fatalf("sent back: probe echoes %d → %d, decapsulated %v, %d → %d bytes", before.ProbeEcho, after.ProbeEcho, decapped, len(in), len(out))
			}
			pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			udp, _ := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if udp == nil {
				t.Fatalf("probe echo without UDP: %x", out)
			}
			if p, err := probe.DecodePacket(udp.Payload); err != nil || p.Type != probe.TypeReply {
				t.Fatalf("probe echo payload %x: %+v %v", udp.Payload, p, err)
			}
			return
		case v == xdpDrop:
			if decapped {
				t.Fatal("dropped and counted as decapsulated")
			}
			return
		case v != xdpPass:
			t.Fatalf("verdict %d", v)
		case !decapped:
			if !bytes.Equal(in, out) {
				t.Fatal("passed frame modified")
			}
			return
		}
		l2 := 14
		if binary.BigEndian.Uint16(in[12:]) == 0x8100 {
			l2 = 18
		}
		olen := 20
		if after.DecapV6 > before.DecapV6 {
			olen = 40
		}
		if after.Gue > before.Gue {
			olen += 8
		}
		if len(out) != len(in)-olen || !bytes.Equal(out[:l2-2], in[:l2-2]) || !bytes.Equal(out[l2:], in[l2+olen:]) {
			t.Fatalf("decapsulated frame is not the input minus %d bytes of outer header:\n in  %x\n out %x", olen, in, out)
		}
		inner := out[l2:]
		et := binary.BigEndian.Uint16(out[l2-2:])
		if (inner[0]>>4 == 4) != (et == 0x0800) || (inner[0]>>4 == 6) != (et == 0x86dd) {
			t.Fatalf("ethertype %#x for an inner packet starting %#x", et, inner[0])
		}
		if ipLen(inner) > len(inner) {
			t.Fatalf("inner packet longer (%d) than the frame (%d)", ipLen(inner), len(inner))
		}
	})
}
