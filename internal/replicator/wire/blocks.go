package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Kind is how a BlockEntry encodes its block.
type Kind uint8

// Block entry kinds.
const (
	KindRaw       Kind = 1 // Data is the block
	KindZstd      Kind = 2 // Data is a zstd frame of the block
	KindZero      Kind = 3 // an all-zero block with a version; no data
	KindZeroRange Kind = 4 // Count never-written (version zero) all-zero blocks
	// KindAbsent: Count blocks the answering volume does not hold (a
	// selective mirror's answer to a ReadHeld request; protocol 2). Only
	// read answers may carry it.
	KindAbsent Kind = 5
	maxKind    Kind = 5
)

// BlockEntry is one block (or, for KindZeroRange, a run of zero blocks).
type BlockEntry struct {
	Kind    Kind
	Block   uint64
	Count   uint32  // KindZeroRange, KindAbsent only
	Version Version // not for KindZeroRange, KindAbsent
	Sum     uint64  // xxh64 of the plain block (raw, zstd)
	Data    []byte  // raw, zstd
}

// Blocks carries a batch of block entries in ascending order of block
// number. Seq numbers the frames of a session for acknowledgements.
//
// Payload: seq u64, count u32, the entry headers, then the data of the
// raw and zstd entries concatenated in entry order. Keeping data apart
// from headers lets a sender hand a run of adjacent blocks from its read
// buffer to the connection without copying it into the frame, and a
// receiver write such a run to disk straight from the frame.
type Blocks struct {
	Seq     uint64
	Entries []BlockEntry
}

// Type implements Message.
func (*Blocks) Type() Type { return TBlocks }

// AppendPayload implements Message.
func (m *Blocks) AppendPayload(b []byte) []byte {
	b = putU32(putU64(b, m.Seq), uint32(len(m.Entries)))
	for i := range m.Entries {
		b = appendEntryHeader(b, &m.Entries[i])
	}
	for i := range m.Entries {
		b = append(b, m.Entries[i].Data...)
	}
	return b
}

func appendEntryHeader(b []byte, e *BlockEntry) []byte {
	b = putU64(append(b, byte(e.Kind)), e.Block)
	switch e.Kind {
	case KindZeroRange, KindAbsent:
		return putU32(b, e.Count)
	case KindZero:
		return putVersion(b, e.Version)
	default:
		b = putU64(putVersion(b, e.Version), e.Sum)
		return putU32(b, uint32(len(e.Data)))
	}
}

// DecodePayload implements Message. Entry data aliases p. Entries must be
// in strictly ascending, non-overlapping block order, and the data region
// must hold exactly the bytes the headers announce.
func (m *Blocks) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Seq = c.u64("seq")
	n := c.count("entries", 13)
	m.Entries = m.Entries[:0]
	var next uint64
	lens := make([]int, 0, n)
	total := 0
	for i := 0; i < n && c.err == nil; i++ {
		e := BlockEntry{Kind: Kind(c.u8("kind")), Block: c.u64("block")}
		dl := 0
		switch e.Kind {
		case KindZeroRange, KindAbsent:
			e.Count = c.u32("count")
			if c.err == nil && e.Count == 0 {
				c.fail("entry %d: empty range", i)
			}
		case KindZero:
			e.Version = c.version("version")
		case KindRaw, KindZstd:
			e.Version = c.version("version")
			e.Sum = c.u64("sum")
			dl = int(c.u32("data length"))
			if c.err == nil && (dl == 0 || dl > MaxBlockSize) {
				c.fail("entry %d: data length %d out of 1..%d", i, dl, MaxBlockSize)
			}
		default:
			c.fail("entry %d: unknown kind %d", i, e.Kind)
		}
		if c.err != nil {
			break
		}
		if i > 0 && e.Block < next {
			c.fail("entry %d: block %d out of order", i, e.Block)
			break
		}
		end := e.Block + uint64(e.span())
		if end < e.Block {
			c.fail("entry %d: block range overflows", i)
			break
		}
		next = end
		lens = append(lens, dl)
		total += dl
		m.Entries = append(m.Entries, e)
	}
	if c.err == nil && total != len(c.b) {
		c.fail("entries announce %d data bytes, frame has %d", total, len(c.b))
	}
	// Data slices keep the payload's capacity so wire.Adjacent can see that
	// consecutive blocks lie back to back (receivers then write a run of
	// them without copying); callers must not append to them.
	rest := c.b
	for i := range m.Entries {
		if c.err != nil {
			break
		}
		if lens[i] > 0 {
			m.Entries[i].Data = rest[:lens[i]]
			rest = rest[lens[i]:]
		}
	}
	if c.err == nil {
		c.b = rest
	}
	return c.end()
}

func (e *BlockEntry) span() uint32 {
	if e.Kind == KindZeroRange || e.Kind == KindAbsent {
		return e.Count
	}
	return 1
}

// ErrBlockChecksum is returned by Plain when the data does not match the
// entry's checksum.
var ErrBlockChecksum = errors.New("block checksum mismatch")

// Plain returns the entry's block of bs bytes: data checked against the
// entry checksum, decompressed if needed (into dst, which must have
// capacity bs), or nil for zero kinds. dec may be nil when no zstd entry
// is expected.
func (e *BlockEntry) Plain(bs int, dec *zstd.Decoder, dst []byte) ([]byte, error) {
	var out []byte
	switch e.Kind {
	case KindZero, KindZeroRange:
		return nil, nil
	case KindAbsent:
		return nil, fmt.Errorf("%w: block %d: absent entry carries no block", ErrMalformed, e.Block)
	case KindRaw:
		if len(e.Data) != bs {
			return nil, fmt.Errorf("%w: block %d: raw length %d, block size %d", ErrMalformed, e.Block, len(e.Data), bs)
		}
		out = e.Data
	case KindZstd:
		if dec == nil {
			return nil, fmt.Errorf("%w: block %d: unexpected compressed entry", ErrMalformed, e.Block)
		}
		if cap(dst) < bs {
			dst = make([]byte, 0, bs)
		}
		var err error
		out, err = dec.DecodeAll(e.Data, dst[:0:bs])
		if err != nil {
			return nil, fmt.Errorf("%w: block %d: zstd: %v", ErrMalformed, e.Block, err)
		}
		if len(out) != bs {
			return nil, fmt.Errorf("%w: block %d: decompressed to %d bytes, block size %d", ErrMalformed, e.Block, len(out), bs)
		}
	default:
		return nil, fmt.Errorf("%w: block %d: unknown kind %d", ErrMalformed, e.Block, e.Kind)
	}
	if got := xxhash.Sum64(out); got != e.Sum {
		return nil, fmt.Errorf("%w: block %d (%#x, want %#x)", ErrBlockChecksum, e.Block, got, e.Sum)
	}
	return out, nil
}

// NewDecoder returns a zstd decoder whose output is bounded by
// MaxBlockSize, for BlockEntry.Plain.
func NewDecoder() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(MaxBlockSize), zstd.WithDecodeAllCapLimit(true))
}

// BlocksBuilder builds a Blocks frame entry by entry; it is the sender's
// hot path. Block data is not copied: Finish returns the frame head
// (header, entry headers) and the data slices, adjacent slices merged, for
// the caller to write in order, then the trailer.
type BlocksBuilder struct {
	head     []byte
	countOff int
	n        uint32
	data     [][]byte
	dataLen  int
}

// Reset starts a new Blocks frame with sequence seq; the head is built in
// dst's storage.
func (bb *BlocksBuilder) Reset(dst []byte, seq uint64) {
	dst = BeginFrame(dst[:0], TBlocks)
	dst = putU64(dst, seq)
	bb.countOff = len(dst)
	bb.head = putU32(dst, 0)
	bb.n = 0
	bb.data = make([][]byte, 0, 4) // the previous frame may still be in flight
	bb.dataLen = 0
}

// Len is the number of entries added since Reset.
func (bb *BlocksBuilder) Len() int { return int(bb.n) }

// Size is the frame size so far.
func (bb *BlocksBuilder) Size() int { return len(bb.head) + bb.dataLen + TrailerSize }

// DataBytes is the block data added so far.
func (bb *BlocksBuilder) DataBytes() int { return bb.dataLen }

// Add appends one entry. e.Data must stay unchanged until the frame is
// written.
func (bb *BlocksBuilder) Add(e *BlockEntry) {
	bb.head = appendEntryHeader(bb.head, e)
	bb.n++
	if len(e.Data) == 0 {
		return
	}
	bb.dataLen += len(e.Data)
	if k := len(bb.data); k > 0 && Adjacent(bb.data[k-1], e.Data) {
		bb.data[k-1] = bb.data[k-1][:len(bb.data[k-1])+len(e.Data)]
		return
	}
	bb.data = append(bb.data, e.Data)
}

// Adjacent reports whether b starts where a ends in the same array, so
// a[:len(a)+len(b)] covers both without a copy.
func Adjacent(a, b []byte) bool {
	return len(b) > 0 && len(a) < cap(a) && cap(a)-len(a) >= len(b) && &a[:len(a)+1][len(a)] == &b[0]
}

// Finish completes the frame: it returns the head, the data slices and
// the trailer, which written in that order form the frame. The head and
// trailer alias the builder's buffers until the next Reset.
func (bb *BlocksBuilder) Finish() (head []byte, data [][]byte, trailer []byte, err error) {
	n := len(bb.head) - HeaderSize + bb.dataLen
	if n > MaxPayload {
		return nil, nil, nil, fmt.Errorf("%w: payload %d bytes exceeds %d", ErrMalformed, n, MaxPayload)
	}
	binary.LittleEndian.PutUint32(bb.head[bb.countOff:], bb.n)
	binary.LittleEndian.PutUint32(bb.head[8:], uint32(n))
	crc := crc32.Checksum(bb.head, castagnoli)
	for _, d := range bb.data {
		crc = crc32.Update(crc, castagnoli, d)
	}
	bb.head = binary.LittleEndian.AppendUint32(bb.head, crc)
	l := len(bb.head)
	return bb.head[:l-TrailerSize], bb.data, bb.head[l-TrailerSize : l], nil
}

// FinishFrame completes the frame and returns it as one contiguous
// buffer appended to dst (a copy; for small frames and tests).
func (bb *BlocksBuilder) FinishFrame(dst []byte) ([]byte, error) {
	head, data, trailer, err := bb.Finish()
	if err != nil {
		return dst, err
	}
	dst = append(dst, head...)
	for _, d := range data {
		dst = append(dst, d...)
	}
	return append(dst, trailer...), nil
}

// IsZero reports whether b is all zero bytes.
func IsZero(b []byte) bool {
	for len(b) >= len(zeroPage) {
		if !bytes.Equal(b[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		b = b[len(zeroPage):]
	}
	return bytes.Equal(b, zeroPage[:len(b)])
}

var zeroPage [4096]byte
