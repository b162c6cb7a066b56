package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The UDP echo datagram, big-endian:
//
//	0  magic   "PMPR"
//	4  version 1
//	5  type    1 = request, 2 = reply
//	6  zero    uint16, must be 0
//	8  seq     uint32, chosen by the prober
//	12 nonce   uint64, random per probe: an off-path sender cannot forge a reply
//	20 sent    int64, prober's clock in unix ns (informational, never trusted)
//	28 padding to the probe size
//
// A reply is the request with the type byte changed, so it is never larger
// than the request: the responder cannot amplify a spoofed flood.
const (
	// HeaderLen is the size of a probe datagram without padding.
	HeaderLen = 28
	// MaxPacketLen keeps a probe unfragmented on any IPv6 path (1280-byte
	// minimum MTU minus IPv6 and UDP headers).
	MaxPacketLen = 1232

	packetVersion = 1
)

var packetMagic = [4]byte{'P', 'M', 'P', 'R'}

// PacketType tells requests from replies.
type PacketType uint8

const (
	// TypeRequest is sent by the prober.
	TypeRequest PacketType = 1
	// TypeReply is sent back by the responder.
	TypeReply PacketType = 2
)

// ErrMalformed is wrapped by every Decode error.
var ErrMalformed = errors.New("malformed probe packet")

// Packet is a decoded probe datagram.
type Packet struct {
	Type  PacketType
	Seq   uint32
	Nonce uint64
	Sent  int64
	Len   int // total datagram length including padding
}

// AppendPacket appends the encoding of p padded to p.Len bytes (at least
// HeaderLen) to b.
func AppendPacket(b []byte, p Packet) ([]byte, error) {
	n := max(p.Len, HeaderLen)
	if n > MaxPacketLen {
		return b, fmt.Errorf("probe packet length %d: above %d", n, MaxPacketLen)
	}
	if p.Type != TypeRequest && p.Type != TypeReply {
		return b, fmt.Errorf("probe packet type %d: unknown", p.Type)
	}
	b = append(b, packetMagic[:]...)
	b = append(b, packetVersion, byte(p.Type), 0, 0)
	b = binary.BigEndian.AppendUint32(b, p.Seq)
	b = binary.BigEndian.AppendUint64(b, p.Nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(p.Sent))
	for range n - HeaderLen {
		b = append(b, 0)
	}
	return b, nil
}

// DecodePacket parses a probe datagram. Anything that is not exactly a
// version-1 request or reply of an allowed length is rejected.
func DecodePacket(b []byte) (Packet, error) {
	switch {
	case len(b) < HeaderLen:
		return Packet{}, fmt.Errorf("%w: %d bytes, need %d", ErrMalformed, len(b), HeaderLen)
	case len(b) > MaxPacketLen:
		return Packet{}, fmt.Errorf("%w: %d bytes, above %d", ErrMalformed, len(b), MaxPacketLen)
	case [4]byte(b[:4]) != packetMagic:
		return Packet{}, fmt.Errorf("%w: bad magic %q", ErrMalformed, b[:4])
	case b[4] != packetVersion:
		return Packet{}, fmt.Errorf("%w: version %d", ErrMalformed, b[4])
	case PacketType(b[5]) != TypeRequest && PacketType(b[5]) != TypeReply:
		return Packet{}, fmt.Errorf("%w: type %d", ErrMalformed, b[5])
	case b[6] != 0 || b[7] != 0:
		return Packet{}, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	return Packet{
		Type:  PacketType(b[5]),
		Seq:   binary.BigEndian.Uint32(b[8:]),
		Nonce: binary.BigEndian.Uint64(b[12:]),
		Sent:  int64(binary.BigEndian.Uint64(b[20:])),
		Len:   len(b),
	}, nil
}
