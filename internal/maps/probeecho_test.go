package maps

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/premirror/premirror/internal/probe"
)

var (
	echoEdgeMAC   = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	echoMirrorMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// echoFrame is an edge's probe request (or any payload) to dst:port over
// UDP, as the wire carries it.
func echoFrame(t testing.TB, src, dst netip.Addr, port uint16, payload []byte, zeroCsum bool) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: echoEdgeMAC, DstMAC: echoMirrorMAC, EthernetType: layers.EthernetTypeIPv4}
	udp := &layers.UDP{SrcPort: 43210, DstPort: layers.UDPPort(port)}
	var ip gopacket.SerializableLayer
	if src.Is4() {
		v4 := &layers.IPv4{Version: 4, TTL: 57, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		udp.SetNetworkLayerForChecksum(v4)
		ip = v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 57, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		udp.SetNetworkLayerForChecksum(v6)
		ip = v6
	}
	b := ser(t, eth, ip, udp, gopacket.Payload(payload))
	if zeroCsum {
		b[14+20+6], b[14+20+7] = 0, 0 // IPv4 only: "no checksum"
	}
	return b
}

func probeRequest(t *testing.T, n int) []byte {
	t.Helper()
	b, err := probe.AppendPacket(nil, probe.Packet{Type: probe.TypeRequest, Seq: 7, Nonce: 0x0123456789abcdef, Sent: 42, Len: n})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecapProbeEcho: the decap program answers an edge's UDP echo probe
// to one of its endpoints itself, with the reply the agent's responder
// would send (the prober's own decoder accepts it, seq and nonce kept),
// addresses, ports and MACs swapped and every checksum valid; anything
// that is not a well-formed request to the probe port goes on as before;
// over the reply budget a request is left to the stack.
func TestDecapProbeEcho(t *testing.T) {
	requireRoot(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	edge4, mirror4 := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.99.0.10")
	edge6, mirror6 := netip.MustParseAddr("fd01::5"), netip.MustParseAddr("fd99::10")
	for _, a := range []netip.Addr{mirror4, mirror6} {
		if err := d.AddEndpoint(a); err != nil {
			t.Fatal(err)
		}
	}
	run := func(frame []byte) (uint32, []byte, map[string]uint64) {
		t.Helper()
		before, _ := d.Stats()
		out := make([]byte, len(frame)+256)
		opts := ebpf.RunOptions{Data: frame, DataOut: out}
		v, err := d.Program().Run(&opts)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := d.Stats()
		return v, opts.DataOut, fieldDelta(before.Fields(), after.Fields())
	}

	// Off until the agent sets the port: the stack's responder answers.
	if v, _, r := run(echoFrame(t, edge4, mirror4, 9461, probeRequest(t, 64), false)); v != xdpPass || r["pass_udp_not_gue"] != 1 {
		t.Fatalf("echo off: verdict %d, reasons %v", v, r)
	}
	if err := d.SetProbeEcho(9461, 1_000_000); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		size     int
		zeroCsum bool
	}{
		{"v4", edge4, mirror4, 64, false},
		{"v4 smallest", edge4, mirror4, probe.HeaderLen, false},
		{"v4 largest", edge4, mirror4, probe.MaxPacketLen, false},
		{"v4 without UDP checksum", edge4, mirror4, 64, true},
		{"v6", edge6, mirror6, 64, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := probeRequest(t, tc.size)
			v, out, r := run(echoFrame(t, tc.src, tc.dst, 9461, req, tc.zeroCsum))
			if v != xdpTX || r["probe_echo"] != 1 {
				t.Fatalf("verdict %d, reasons %v", v, r)
			}
			pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			udp, _ := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if eth == nil || udp == nil || !bytes.Equal(eth.DstMAC, echoEdgeMAC) || !bytes.Equal(eth.SrcMAC, echoMirrorMAC) {
				t.Fatalf("reply frame %v", pk)
			}
			if udp.SrcPort != 9461 || udp.DstPort != 43210 {
				t.Fatalf("reply ports %d -> %d", udp.SrcPort, udp.DstPort)
			}
			var want []byte
			if tc.src.Is4() {
				ip := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				if !ip.SrcIP.Equal(tc.dst.AsSlice()) || !ip.DstIP.Equal(tc.src.AsSlice()) || ip.TTL != 64 {
					t.Fatalf("reply IPv4 %v -> %v ttl %d", ip.SrcIP, ip.DstIP, ip.TTL)
				}
				hdr := out[14 : 14+20]
				if ipv4Sum(hdr) != 0xffff {
					t.Fatalf("IPv4 header checksum invalid: %x", hdr)
				}
				udp.SetNetworkLayerForChecksum(ip)
			} else {
				ip := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
				if !ip.SrcIP.Equal(tc.dst.AsSlice()) || !ip.DstIP.Equal(tc.src.AsSlice()) || ip.HopLimit != 64 {
					t.Fatalf("reply IPv6 %v -> %v hop limit %d", ip.SrcIP, ip.DstIP, ip.HopLimit)
				}
				udp.SetNetworkLayerForChecksum(ip)
			}
			if tc.zeroCsum {
				if udp.Checksum != 0 {
					t.Fatalf("UDP checksum %x on a request without one", udp.Checksum)
				}
			} else {
				got := udp.Checksum
				buf := gopacket.NewSerializeBuffer()
				if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, udp, gopacket.Payload(udp.Payload)); err != nil {
					t.Fatal(err)
				}
				if want = buf.Bytes(); got != uint16(want[6])<<8|uint16(want[7]) {
					t.Fatalf("UDP checksum %x, want %x", got, uint16(want[6])<<8|uint16(want[7]))
				}
			}
			p, err := probe.DecodePacket(udp.Payload)
			if err != nil || p.Type != probe.TypeReply || p.Seq != 7 || p.Nonce != 0x0123456789abcdef || p.Len != tc.size {
				t.Fatalf("reply %+v (%v)", p, err)
			}
		})
	}

	// The program does not verify the request's UDP checksum (that would
	// sum the whole datagram here); it updates it incrementally, so a
	// request corrupted on the way is answered with a reply whose checksum
	// is just as wrong, which the prober's UDP socket drops: a loss, never
	// an RTT (the prober times with its own clock and wants its nonce and
	// seq back anyway). A checksum recomputed from scratch would launder
	// the corruption.
	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		l3       int
	}{{"v4", edge4, mirror4, 20}, {"v6", edge6, mirror6, 40}} {
		f := echoFrame(t, tc.src, tc.dst, 9461, probeRequest(t, 64), false)
		f[14+tc.l3+8+20] ^= 0x5a // the request's send time
		v, out, _ := run(f)
		udp := out[14+tc.l3:]
		if v != xdpTX || udpChecksumValid(tc.dst, tc.src, udp) || udp[6]|udp[7] == 0 {
			t.Errorf("corrupted %s request: verdict %d, reply checksum %02x%02x; want XDP_TX with a wrong, non-zero checksum", tc.name, v, udp[6], udp[7])
		}
	}

	// Not requests to the probe port: as before (UDP to an endpoint
	// without GUE passes), never answered.
	bad := probeRequest(t, 64)
	bad[5] = byte(probe.TypeReply)
	short := probeRequest(t, 64)[:probe.HeaderLen-1]
	magic := probeRequest(t, 64)
	magic[0] = 'X'
	for name, f := range map[string][]byte{
		"a reply":          echoFrame(t, edge4, mirror4, 9461, bad, false),
		"short":            echoFrame(t, edge4, mirror4, 9461, short, false),
		"bad magic":        echoFrame(t, edge4, mirror4, 9461, magic, false),
		"other port":       echoFrame(t, edge4, mirror4, 9462, probeRequest(t, 64), false),
		"not our endpoint": echoFrame(t, edge4, netip.MustParseAddr("10.99.0.99"), 9461, probeRequest(t, 64), false),
	} {
		if v, _, r := run(f); v != xdpPass || r["probe_echo"] != 0 {
			t.Errorf("%s: verdict %d, reasons %v", name, v, r)
		}
	}

	// One reply a second: of requests at once, at most one is answered
	// (the budget carries no burst over from the faster rate); the rest
	// are left to the stack.
	if err := d.SetProbeEcho(9461, 1); err != nil {
		t.Fatal(err)
	}
	f := echoFrame(t, edge4, mirror4, 9461, probeRequest(t, 64), false)
	tx, over := 0, 0
	for range 5 {
		v, _, r := run(f)
		switch {
		case v == xdpTX && r["probe_echo"] == 1:
			tx++
		case v == xdpPass && r["pass_probe_over_budget"] == 1:
			over++
		default:
			t.Fatalf("at 1/s: verdict %d, reasons %v", v, r)
		}
	}
	if tx > 1 || over < 4 {
		t.Fatalf("at 1/s, 5 requests at once: %d answered, %d over budget", tx, over)
	}
	if err := d.SetProbeEcho(9461, 0); err == nil {
		t.Fatal("rate 0 accepted")
	}
}

// ipv4Sum is the ones'-complement sum of an IPv4 header: 0xffff when its
// checksum is valid.
func ipv4Sum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
