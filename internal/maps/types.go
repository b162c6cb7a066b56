package maps

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ResourceID names a mirrored resource (a VM disk, volume or service) in
// the data plane. The controller assigns it; 0 is valid.
type ResourceID uint32

// RegionID names a client region. 0 is the wildcard region: a route for
// region 0 serves a resource's clients in regions that have no route of
// their own, and clients that match no prefix fall into the configured
// default region.
type RegionID uint32

// RegionAny is the wildcard region.
const RegionAny RegionID = 0

// MirrorID names a mirror (a tunnel endpoint serving resources). IDs start
// at 1; they index pm_mirrors, so they are bounded by Config.MaxMirrors.
type MirrorID uint32

// MirrorState is what the router may do with a mirror's flows.
type MirrorState uint32

// Mirror states, as in enum mirror_state of bpf/include/premirror.h.
const (
	MirrorUnused   MirrorState = 0 // slot not configured
	MirrorActive   MirrorState = 1 // takes new and established flows
	MirrorDraining MirrorState = 2 // keeps established flows and affinities, gets no new ones
	MirrorDown     MirrorState = 3 // its flows are re-picked from the route table
)

var mirrorStateNames = [...]string{"unused", "active", "draining", "down"}

func (s MirrorState) String() string {
	if int(s) < len(mirrorStateNames) {
		return mirrorStateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// ParseMirrorState parses "active", "draining" or "down".
func ParseMirrorState(s string) (MirrorState, error) {
	for i, n := range mirrorStateNames[1:] {
		if strings.EqualFold(s, n) {
			return MirrorState(i + 1), nil
		}
	}
	return 0, fmt.Errorf("mirror state %q: want active, draining or down", s)
}

// Proto is an IP protocol number the router steers.
type Proto uint8

// Protocols a VIP can carry.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp or udp", s)
}

// VIP is one virtual service address clients connect to.
type VIP struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (v VIP) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(v.Addr, v.Port), v.Proto)
}

// VIPOptions is what the router does with a VIP's traffic.
type VIPOptions struct {
	Resource ResourceID
	// AffinityTimeout > 0 makes a user's new flows stick to the mirror of
	// its previous one for this long after that flow started.
	AffinityTimeout time.Duration
	// AffinityPrefixV4/V6 is the client prefix that forms one "user"
	// (defaults 32 and 64).
	AffinityPrefixV4 int
	AffinityPrefixV6 int
	// HashNoSrcPort hashes new flows without the client port, so all of a
	// client's flows to the VIP land on one mirror even without affinity.
	HashNoSrcPort bool
}

// Encapsulation is how the router carries packets to a mirror.
type Encapsulation uint8

// Encapsulations, as in enum mirror_encap of bpf/include/premirror.h.
const (
	// EncapIPIP is IP-in-IP: IPIP / 6in4 toward IPv4 mirrors, IPv6-in-IPv6
	// / 4in6 toward IPv6 ones. The zero value, and what mirrors written by
	// builds before GUE read as.
	EncapIPIP Encapsulation = 0
	// EncapGUE is GUE variant 1 (direct IP-in-UDP, Linux FOU "direct"):
	// outer IP, UDP from a flow-hash source port to the mirror's GUEPort,
	// the client's packet. For mirrors whose NICs spread load over RX
	// queues by outer headers only. 8 bytes more overhead than IPIP.
	EncapGUE Encapsulation = 1
)

var encapNames = [...]string{"ipip", "gue"}

func (e Encapsulation) String() string {
	if int(e) < len(encapNames) {
		return encapNames[e]
	}
	return fmt.Sprintf("encap(%d)", uint8(e))
}

// ParseEncapsulation parses "ipip" (also "", the default) or "gue".
func ParseEncapsulation(s string) (Encapsulation, error) {
	if s == "" {
		return EncapIPIP, nil
	}
	for i, n := range encapNames {
		if strings.EqualFold(s, n) {
			return Encapsulation(i), nil
		}
	}
	return 0, fmt.Errorf("encapsulation %q: want ipip or gue", s)
}

// Mirror is one tunnel endpoint as the router sees it.
type Mirror struct {
	Addr  netip.Addr // outer destination; its family picks the outer IPv4 or IPv6 header
	State MirrorState
	// Encap is IP-in-IP (the zero value) or GUE.
	Encap Encapsulation
	// GUEPort is the UDP destination port of GUE packets: required with
	// EncapGUE, 0 with EncapIPIP. The mirror's decap must accept GUE on it
	// (Decap.SetEndpoint).
	GUEPort uint16
}

// Settings are the router's node-wide knobs.
type Settings struct {
	// DefaultRegion is the region of clients that match no prefix.
	DefaultRegion RegionID
	// OuterSourceV4 / V6 are the outer source addresses of encapsulated
	// packets toward IPv4 / IPv6 mirrors. Packets toward a family without
	// a source are dropped and counted (drop_no_outer_src).
	OuterSourceV4 netip.Addr
	OuterSourceV6 netip.Addr
}

// Flow is a 5-tuple as the client sent it.
type Flow struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            Proto
}

func (f Flow) String() string {
	return fmt.Sprintf("%s %s -> %s", f.Proto, netip.AddrPortFrom(f.Src, f.SrcPort), netip.AddrPortFrom(f.Dst, f.DstPort))
}

// Session is one established flow and the mirror it is pinned to.
type Session struct {
	Flow   Flow
	Mirror MirrorID
	Region RegionID
	// Established: a TCP packet past the opening SYN was seen, so a new
	// bare SYN on this 5-tuple is a new connection and is routed afresh.
	Established bool
}

// Affinity is one user's sticky mirror.
type Affinity struct {
	Resource ResourceID
	Client   netip.Prefix
	Mirror   MirrorID
	// LastUsed is CLOCK_MONOTONIC time of the user's last new flow.
	LastUsed time.Duration
}

// CounterKey identifies one access counter.
type CounterKey struct {
	Resource ResourceID
	Region   RegionID
	Mirror   MirrorID
}

// Counter is a per-CPU-summed access counter. NewFlows per (resource,
// region) over an interval is the access log the forecaster learns from.
type Counter struct {
	Packets  uint64
	Bytes    uint64 // L3 bytes (inner IP packet), before encapsulation
	NewFlows uint64
}

// Add returns c + o.
func (c Counter) Add(o Counter) Counter {
	return Counter{c.Packets + o.Packets, c.Bytes + o.Bytes, c.NewFlows + o.NewFlows}
}

func addrBytes(a netip.Addr) (b [16]byte, family uint8) {
	a = a.Unmap()
	if a.Is4() {
		v4 := a.As4()
		copy(b[:], v4[:])
		return b, 4
	}
	return a.As16(), 6
}

func bytesAddr(b [16]byte, family uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}
