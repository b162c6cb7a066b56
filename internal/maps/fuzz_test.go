package maps

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// FuzzRouter feeds arbitrary frames through the router and checks its
// invariants: a verdict in the allowed set; a passed frame untouched
// (unless handed to the stack encapsulated); every forwarded frame a
// well-formed encapsulation of the input toward a configured mirror, sent
// to that mirror's neighbour MAC (the next-hop cache is on, as in the agent).
func FuzzRouter(f *testing.F) {
	fx := newFixture(f)
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
	for _, s := range seeds {
		f.Add(s.frame(f))
	}
	mirrors := map[netip.Addr]bool{}
	for _, m := range fixtureMirrors {
		mirrors[m] = true
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
		switch et {
		case 0x0800:
			olen = 20
			if len(out) < l2+20 || out[l2] != 0x45 || (out[l2+9] != 4 && out[l2+9] != 41) || csum(out[l2:l2+20]) != 0 {
				t.Fatalf("bad outer IPv4 header: %x", out[l2:min(len(out), l2+20)])
			}
			dst = netip.AddrFrom4([4]byte(out[l2+16 : l2+20]))
		case 0x86dd:
			olen = 40
			if len(out) < l2+40 || out[l2]>>4 != 6 || (out[l2+6] != 4 && out[l2+6] != 41) {
				t.Fatalf("bad outer IPv6 header")
			}
			dst = netip.AddrFrom16([16]byte(out[l2+24 : l2+40]))
		default:
			t.Fatalf("forwarded frame with ethertype %#x", et)
		}
		if !mirrors[dst] {
			t.Fatalf("forwarded to %s, not a mirror", dst)
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
