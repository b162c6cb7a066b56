package wan

import (
	"encoding/binary"
	"net/netip"
)

const (
	ethHdrLen   = 14
	etherTypeV4 = 0x0800
	etherTypeV6 = 0x86dd
)

// DropReason says why the switch dropped a frame.
type DropReason int

// Drop reasons, counted per port ([PortStats.Drops]).
const (
	// DropMalformed: too short, or an IP header that does not parse.
	DropMalformed DropReason = iota
	// DropOversize: longer than the switch's frame buffer.
	DropOversize
	// DropMulticast: broadcast or multicast destination MAC (ARP, ND,
	// MLD, router solicitations); sites never need them.
	DropMulticast
	// DropNotForUs: unicast to a MAC other than the ingress port's.
	DropNotForUs
	// DropNonIP: neither IPv4 nor IPv6.
	DropNonIP
	// DropNoRoute: destination is no site address, or a VIP from a site
	// without a VIP edge.
	DropNoRoute
	// DropTTL: TTL or hop limit would reach zero.
	DropTTL
	// DropLoss: emulated random loss of the (source, destination) pair.
	DropLoss
	// DropQueueFull: the egress port's delay line is full.
	DropQueueFull
	// DropTxError: the kernel refused the frame on the egress port.
	DropTxError
	// NumDropReasons is the number of reasons; not a reason itself.
	NumDropReasons
)

var dropNames = [NumDropReasons]string{
	"malformed", "oversize", "multicast", "not_for_us", "non_ip",
	"no_route", "ttl", "loss", "queue_full", "tx_error",
}

// String returns a stable snake_case name for r.
func (r DropReason) String() string {
	if r < 0 || r >= NumDropReasons {
		return "unknown"
	}
	return dropNames[r]
}

// parseDst returns the destination IP of an Ethernet frame carrying IPv4
// or IPv6 (the outer header for encapsulated packets) and its TTL or hop
// limit. ok is false when the frame is not a well-formed IP frame; reason
// then says why.
func parseDst(f []byte) (dst netip.Addr, ttl uint8, reason DropReason, ok bool) {
	if len(f) < ethHdrLen {
		return netip.Addr{}, 0, DropMalformed, false
	}
	ip := f[ethHdrLen:]
	switch binary.BigEndian.Uint16(f[12:14]) {
	case etherTypeV4:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return netip.Addr{}, 0, DropMalformed, false
		}
		ihl := int(ip[0]&0x0f) * 4
		if ihl < 20 || len(ip) < ihl {
			return netip.Addr{}, 0, DropMalformed, false
		}
		return netip.AddrFrom4([4]byte(ip[16:20])), ip[8], 0, true
	case etherTypeV6:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return netip.Addr{}, 0, DropMalformed, false
		}
		return netip.AddrFrom16([16]byte(ip[24:40])), ip[7], 0, true
	default:
		return netip.Addr{}, 0, DropNonIP, false
	}
}

// decTTL decrements the TTL (IPv4, with an incremental header checksum
// update, RFC 1624) or hop limit (IPv6) of a frame parseDst accepted.
func decTTL(f []byte) {
	ip := f[ethHdrLen:]
	if ip[0]>>4 == 6 {
		ip[7]--
		return
	}
	old := binary.BigEndian.Uint16(ip[8:10])
	ip[8]--
	nw := binary.BigEndian.Uint16(ip[8:10])
	hc := binary.BigEndian.Uint16(ip[10:12])
	// HC' = ~(~HC + ~m + m')
	sum := uint32(^hc) + uint32(^old) + uint32(nw)
	sum = (sum & 0xffff) + (sum >> 16)
	sum = (sum & 0xffff) + (sum >> 16)
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
}
