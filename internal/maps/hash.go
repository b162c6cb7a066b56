package maps

import (
	"encoding/binary"
	"math/bits"
)

// The router's flow hash, in Go, so tools and tests can tell which slot a
// flow lands in. It must stay identical to flow_hash() in router.bpf.c
// (TestFlowHashMatchesBPF checks it).

func mix(h, k uint32) uint32 {
	k *= 0xcc9e2d51
	k = bits.RotateLeft32(k, 15)
	k *= 0x1b873593
	h ^= k
	h = bits.RotateLeft32(h, 13)
	return h*5 + 0xe6546b64
}

func fmix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// The C side reads the address bytes as native (little-endian) words.
func hashAddr(h uint32, a [16]byte, family uint8) uint32 {
	h = mix(h, binary.LittleEndian.Uint32(a[0:]))
	if family == 6 {
		h = mix(h, binary.LittleEndian.Uint32(a[4:]))
		h = mix(h, binary.LittleEndian.Uint32(a[8:]))
		h = mix(h, binary.LittleEndian.Uint32(a[12:]))
	}
	return h
}

// FlowHash is the hash that indexes a route table for a flow without
// affinity; noSrcPort mirrors VIPOptions.HashNoSrcPort.
func FlowHash(f Flow, noSrcPort bool) uint32 {
	k := flowKey(f)
	h := uint32(0x5bd1e995)
	h = hashAddr(h, k.Src, k.Family)
	h = hashAddr(h, k.Dst, k.Family)
	sport := uint32(k.Sport)
	if noSrcPort {
		sport = 0
	}
	h = mix(h, sport<<16|uint32(k.Dport))
	h = mix(h, uint32(k.Proto))
	return fmix(h)
}

// UserHash is the hash that indexes a route table for a user with
// affinity: the resource and the client address masked to the prefix.
func UserHash(res ResourceID, client [16]byte, family uint8) uint32 {
	h := uint32(0x5bd1e995)
	h = mix(h, uint32(res))
	h = hashAddr(h, client, family)
	return fmix(h)
}

// GUE source ports (gue_udp in router.bpf.c): the flow hash in the IANA
// ephemeral range, 49152–65535.
const (
	gueSportBase = 0xC000
	gueSportMask = 0x3FFF
)

// GUESourcePort is the UDP source port of a flow's GUE packets toward an
// EncapGUE mirror: its flow hash (with the source port, whatever the
// VIP's HashNoSrcPort) in 49152–65535. Every packet of a flow carries the
// same port, so a mirror NIC hashing outer headers keeps a flow on one RX
// queue and spreads flows over all of them.
func GUESourcePort(f Flow) uint16 {
	return gueSportBase | uint16(FlowHash(f, false)&gueSportMask)
}
