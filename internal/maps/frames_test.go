package maps

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	clientMAC = net.HardwareAddr{0x02, 0xc0, 0, 0, 0, 1}
	edgeMAC   = net.HardwareAddr{0x02, 0xed, 0, 0, 0, 1}
)

// pkt describes a test frame; zero values give a plain TCP SYN.
type pkt struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        layers.IPProtocol // default TCP
	flags        string            // TCP flags: "S", "A", "SA", "F", "R"
	vlan         uint16            // 802.1Q VLAN ID, 0: untagged
	v4opts       []layers.IPv4Option
	v6ext        []layers.IPProtocol // IPv6 extension headers in order
	frag         *fragment
	payload      []byte
	tos          uint8
	noDF         bool
	icmp         *icmpErr // an ICMP error quoting `quote`
}

type fragment struct {
	offset uint16 // in 8-byte units
	more   bool
	id     uint32
}

type icmpErr struct {
	typ, code uint8
	mtu       uint16
	quote     pkt // the packet the error is about
}

func ser(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// l3 returns the IP packet (no L2) of p.
func (p pkt) l3(tb testing.TB) []byte {
	tb.Helper()
	if p.proto == 0 {
		p.proto = layers.IPProtocolTCP
	}
	if p.flags == "" {
		p.flags = "S"
	}
	if p.payload == nil {
		p.payload = []byte("premirror test payload")
	}
	var l4 []gopacket.SerializableLayer
	var netLayer gopacket.NetworkLayer
	type checksummed interface {
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}
	var needNet checksummed
	v6 := p.src.Is6()
	switch p.proto {
	case layers.IPProtocolTCP:
		t := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: 1000, Window: 65535}
		for _, f := range p.flags {
			switch f {
			case 'S':
				t.SYN = true
			case 'A':
				t.ACK = true
			case 'F':
				t.FIN = true
			case 'R':
				t.RST = true
			}
		}
		l4 = []gopacket.SerializableLayer{t, gopacket.Payload(p.payload)}
		needNet = t
	case layers.IPProtocolUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		l4 = []gopacket.SerializableLayer{u, gopacket.Payload(p.payload)}
		needNet = u
	case layers.IPProtocolICMPv4:
		if p.icmp == nil {
			l4 = []gopacket.SerializableLayer{&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1}, gopacket.Payload(p.payload)}
		} else {
			q := p.icmp.quote.l3(tb)
			ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmp.typ, p.icmp.code)}
			if p.icmp.mtu != 0 {
				ic.Seq = p.icmp.mtu // next-hop MTU sits in the second half of "rest"
			}
			l4 = []gopacket.SerializableLayer{ic, gopacket.Payload(q[:min(len(q), 28+len(p.icmp.quote.v4optsBytes()))])}
		}
	case layers.IPProtocolICMPv6:
		var ic *layers.ICMPv6
		var body []byte
		if p.icmp == nil {
			ic = &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
			body = append([]byte{0, 1, 0, 1}, p.payload...)
		} else {
			ic = &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmp.typ, p.icmp.code)}
			q := p.icmp.quote.l3(tb)
			body = append([]byte{0, 0, byte(p.icmp.mtu >> 8), byte(p.icmp.mtu)}, q...)
		}
		l4 = []gopacket.SerializableLayer{ic, gopacket.Payload(body)}
		needNet = ic
	default:
		l4 = []gopacket.SerializableLayer{gopacket.Payload(p.payload)}
	}

	var ls []gopacket.SerializableLayer
	if !v6 {
		ip := &layers.IPv4{Version: 4, IHL: 5, TOS: p.tos, TTL: 64, Id: 77, Protocol: p.proto,
			SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(), Options: p.v4opts}
		if !p.noDF && p.frag == nil {
			ip.Flags = layers.IPv4DontFragment
		}
		if p.frag != nil {
			ip.Id = uint16(p.frag.id)
			ip.FragOffset = p.frag.offset
			if p.frag.more {
				ip.Flags |= layers.IPv4MoreFragments
			}
			if p.frag.offset != 0 {
				l4 = []gopacket.SerializableLayer{gopacket.Payload(p.payload)}
			}
		}
		netLayer = ip
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv6{Version: 6, TrafficClass: p.tos, FlowLabel: 0x12345, HopLimit: 64,
			SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()}
		netLayer = ip
		ls = append(ls, ip)
		ext := append([]layers.IPProtocol(nil), p.v6ext...)
		if p.frag != nil {
			ext = append(ext, layers.IPProtocolIPv6Fragment)
			if p.frag.offset != 0 {
				l4 = []gopacket.SerializableLayer{gopacket.Payload(p.payload)}
			}
		}
		// Chain the extension headers; each names the next.
		next := func(i int) layers.IPProtocol {
			if i < len(ext) {
				return ext[i]
			}
			return p.proto
		}
		ip.NextHeader = next(0)
		for i, e := range ext {
			nh := next(i + 1)
			switch e {
			case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination:
				// Generic TLV header: next, len=0, PadN of 4 bytes.
				ls = append(ls, gopacket.Payload([]byte{byte(nh), 0, 1, 4, 0, 0, 0, 0}))
			case layers.IPProtocolIPv6Routing:
				// Type 4 (segment routing) with no segments left, 8 bytes.
				ls = append(ls, gopacket.Payload([]byte{byte(nh), 0, 4, 0, 0, 0, 0, 0}))
			case layers.IPProtocolIPv6Fragment:
				fo := p.frag.offset << 3
				if p.frag.more {
					fo |= 1
				}
				id := p.frag.id
				ls = append(ls, gopacket.Payload([]byte{byte(nh), 0, byte(fo >> 8), byte(fo), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}))
			}
		}
	}
	ls = append(ls, l4...)
	if needNet != nil {
		_ = needNet.SetNetworkLayerForChecksum(netLayer)
	}
	return ser(tb, ls...)
}

func (p pkt) v4optsBytes() []byte {
	n := 0
	for _, o := range p.v4opts {
		n += int(o.OptionLength)
	}
	return make([]byte, (n+3)/4*4)
}

// frame returns the Ethernet frame of p as a client would send it to the edge.
func (p pkt) frame(tb testing.TB) []byte {
	tb.Helper()
	l3 := p.l3(tb)
	et := layers.EthernetTypeIPv4
	if p.src.Is6() {
		et = layers.EthernetTypeIPv6
	}
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: edgeMAC, EthernetType: et}
	if p.vlan != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		return ser(tb, eth, &layers.Dot1Q{VLANIdentifier: p.vlan, Type: et}, gopacket.Payload(l3))
	}
	return ser(tb, eth, gopacket.Payload(l3))
}

// flow returns the flow key the router derives from p.
func (p pkt) flow() Flow {
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	return Flow{Src: p.src, Dst: p.dst, SrcPort: p.sport, DstPort: p.dport, Proto: Proto(proto)}
}
