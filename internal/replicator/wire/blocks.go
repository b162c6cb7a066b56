package wire

import (
	"bytes"
	"errors"
	"fmt"

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
	maxKind       Kind = 4
)

// BlockEntry is one block (or, for KindZeroRange, a run of zero blocks).
type BlockEntry struct {
	Kind    Kind
	Block   uint64
	Count   uint32  // KindZeroRange only
	Version Version // not for KindZeroRange
	Sum     uint64  // xxh64 of the plain block (raw, zstd)
	Data    []byte  // raw, zstd
}

// Blocks carries a batch of block entries in ascending order of block
// number. Seq numbers the frames of a session for acknowledgements.
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
		b = appendEntry(b, &m.Entries[i])
	}
	return b
}

func appendEntry(b []byte, e *BlockEntry) []byte {
	b = putU64(append(b, byte(e.Kind)), e.Block)
	switch e.Kind {
	case KindZeroRange:
		return putU32(b, e.Count)
	case KindZero:
		return putVersion(b, e.Version)
	default:
		b = putU64(putVersion(b, e.Version), e.Sum)
		return append(putU32(b, uint32(len(e.Data))), e.Data...)
	}
}

// DecodePayload implements Message. Entry data aliases p. Entries must be
// in strictly ascending, non-overlapping block order.
func (m *Blocks) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Seq = c.u64("seq")
	n := c.count("entries", 13)
	m.Entries = m.Entries[:0]
	var next uint64
	for i := 0; i < n && c.err == nil; i++ {
		e := BlockEntry{Kind: Kind(c.u8("kind")), Block: c.u64("block")}
		switch e.Kind {
		case KindZeroRange:
			e.Count = c.u32("count")
			if c.err == nil && e.Count == 0 {
				c.fail("entry %d: empty zero range", i)
			}
		case KindZero:
			e.Version = c.version("version")
		case KindRaw, KindZstd:
			e.Version = c.version("version")
			e.Sum = c.u64("sum")
			dl := int(c.u32("data length"))
			if c.err == nil && (dl == 0 || dl > MaxBlockSize) {
				c.fail("entry %d: data length %d out of 1..%d", i, dl, MaxBlockSize)
			}
			e.Data = c.take(dl, "data")
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
		m.Entries = append(m.Entries, e)
	}
	return c.end()
}

func (e *BlockEntry) span() uint32 {
	if e.Kind == KindZeroRange {
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

// BlocksBuilder appends a Blocks frame entry by entry without building an
// entry slice first; it is the sender's hot path.
type BlocksBuilder struct {
	buf      []byte
	start    int
	countOff int
	n        uint32
	// DataBytes counts block data appended (raw or compressed).
	DataBytes int
}

// Reset starts a new Blocks frame with sequence seq, appended to dst.
func (bb *BlocksBuilder) Reset(dst []byte, seq uint64) {
	bb.start = len(dst)
	dst = BeginFrame(dst, TBlocks)
	dst = putU64(dst, seq)
	bb.countOff = len(dst)
	bb.buf = putU32(dst, 0)
	bb.n = 0
	bb.DataBytes = 0
}

// Len is the number of entries added since Reset.
func (bb *BlocksBuilder) Len() int { return int(bb.n) }

// Size is the frame size so far.
func (bb *BlocksBuilder) Size() int { return len(bb.buf) - bb.start }

// Add appends one entry.
func (bb *BlocksBuilder) Add(e *BlockEntry) {
	bb.buf = appendEntry(bb.buf, e)
	bb.DataBytes += len(e.Data)
	bb.n++
}

// Finish completes the frame and returns the whole buffer (dst passed to
// Reset plus the frame).
func (bb *BlocksBuilder) Finish() ([]byte, error) {
	putCount := bb.buf[bb.countOff : bb.countOff+4]
	putCount[0], putCount[1], putCount[2], putCount[3] = byte(bb.n), byte(bb.n>>8), byte(bb.n>>16), byte(bb.n>>24)
	return EndFrame(bb.buf, bb.start)
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
