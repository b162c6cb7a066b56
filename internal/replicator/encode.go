package replicator

import (
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Compression chooses when block data is zstd-compressed on the wire.
type Compression int

// Compression policies.
const (
	// CompressAuto compresses a batch only when a sample block of it
	// shrinks by at least 20%, and backs off exponentially (up to 64
	// batches) after samples that do not, so incompressible data (VM
	// images full of compressed or encrypted files) costs about one sample
	// compression per 64 MiB.
	CompressAuto Compression = iota
	// CompressOff never compresses.
	CompressOff
	// CompressAlways compresses every block and keeps the result when it
	// is smaller.
	CompressAlways
)

// ParseCompression reads auto, off or always.
func ParseCompression(s string) (Compression, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return CompressAuto, nil
	case "off", "none":
		return CompressOff, nil
	case "always", "zstd":
		return CompressAlways, nil
	}
	return 0, fmt.Errorf("compression %q: want auto, off or always", s)
}

// batch is a group of blocks (ascending) encoded into one Blocks frame.
// The frame references data and zbuf until it is written.
type batch struct {
	seq    uint64
	blocks []uint64
	vers   []Version
	data   []byte // block i at i*bs
	hole   []bool // optional: block known to be zero without reading
	absent []bool // optional: block not held (read answers to ReadHeld only)
	// exact: every block is its own entry (no zero ranges). A cycle's
	// receiver checks each block against its manifest, and a range would
	// hide the never-written zero blocks a repair cycle can carry.
	exact bool
	zbuf  []byte // compressed block data (owned by the batch)
	head  []byte // frame head storage (owned by the batch)
}

// encStats counts what an encoded batch holds.
type encStats struct {
	dataBlocks int // raw or compressed blocks
	zeroBlocks int // sent as zero entries or ranges
	compressed int
	dataBytes  int // block payload bytes on the wire
}

// encoder turns batches into Blocks frames. It is not safe for concurrent
// use; pipelines give each worker its own.
type encoder struct {
	bs      int
	policy  Compression
	zenc    *zstd.Encoder
	zbuf    []byte
	skip    int // batches to skip before the next sample
	backoff int
	bb      wire.BlocksBuilder
	corrupt func(block []byte) // test hook: damage block data after checksumming
}

func newEncoder(bs int, policy Compression) (*encoder, error) {
	e := &encoder{bs: bs, policy: policy}
	if policy != CompressOff {
		z, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true), zstd.WithZeroFrames(true))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		e.zenc = z
	}
	return e, nil
}

func (e *encoder) close() {
	if e.zenc != nil {
		e.zenc.Close()
	}
}

// shouldCompress decides for a batch (see CompressAuto).
func (e *encoder) shouldCompress(b *batch) bool {
	switch e.policy {
	case CompressOff:
		return false
	case CompressAlways:
		return true
	}
	if e.skip > 0 {
		e.skip--
		return false
	}
	for i := range b.blocks {
		if b.hole != nil && b.hole[i] {
			continue
		}
		blk := b.data[i*e.bs : (i+1)*e.bs]
		if wire.IsZero(blk) {
			continue
		}
		e.zbuf = e.zenc.EncodeAll(blk, e.zbuf[:0])
		if len(e.zbuf) <= e.bs*8/10 {
			e.backoff = 0
			return true
		}
		e.backoff = min(max(1, e.backoff*2), 64)
		e.skip = e.backoff
		return false
	}
	return false
}

// encode turns b into a Blocks frame. Raw block data is referenced, not
// copied: the frame is valid while b's buffers are.
func (e *encoder) encode(b *batch) (outFrame, encStats, error) {
	var st encStats
	compress := e.shouldCompress(b)
	e.bb.Reset(b.head, b.seq)
	b.zbuf = b.zbuf[:0]
	var zr wire.BlockEntry // pending zero or absent range
	flushZR := func() {
		if zr.Count > 0 {
			e.bb.Add(&zr)
			zr.Count = 0
		}
	}
	extend := func(kind wire.Kind, blk uint64) {
		if zr.Count > 0 && zr.Kind == kind && zr.Block+uint64(zr.Count) == blk {
			zr.Count++
			return
		}
		flushZR()
		zr = wire.BlockEntry{Kind: kind, Block: blk, Count: 1}
	}
	for i, blk := range b.blocks {
		if b.absent != nil && b.absent[i] {
			extend(wire.KindAbsent, blk)
			continue
		}
		var data []byte
		zero := b.hole != nil && b.hole[i]
		if !zero {
			data = b.data[i*e.bs : (i+1)*e.bs]
			zero = wire.IsZero(data)
		}
		if zero {
			st.zeroBlocks++
			if b.vers[i].IsZero() && !b.exact {
				extend(wire.KindZeroRange, blk)
				continue
			}
			flushZR()
			e.bb.Add(&wire.BlockEntry{Kind: wire.KindZero, Block: blk, Version: b.vers[i]})
			continue
		}
		flushZR()
		ent := wire.BlockEntry{Kind: wire.KindRaw, Block: blk, Version: b.vers[i], Sum: xxhash.Sum64(data), Data: data}
		if compress {
			if cap(b.zbuf)-len(b.zbuf) < e.bs+64 {
				b.zbuf = make([]byte, 0, max(2*cap(b.zbuf), len(b.blocks)*e.bs/2+e.bs+64))
			}
			z := e.zenc.EncodeAll(data, b.zbuf[len(b.zbuf):len(b.zbuf)])
			if len(z) < e.bs*9/10 {
				if wire.Adjacent(b.zbuf, z) {
					b.zbuf = b.zbuf[:len(b.zbuf)+len(z)]
				}
				ent.Kind, ent.Data = wire.KindZstd, z
				st.compressed++
			}
		}
		if e.corrupt != nil {
			ent.Data = append([]byte(nil), ent.Data...)
			e.corrupt(ent.Data)
		}
		st.dataBlocks++
		st.dataBytes += len(ent.Data)
		e.bb.Add(&ent)
	}
	flushZR()
	head, data, trailer, err := e.bb.Finish()
	b.head = head[:0]
	f := outFrame{head: head, data: data, trailer: trailer, size: e.bb.Size()}
	return f, st, err
}
