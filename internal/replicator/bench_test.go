package replicator

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// benchBatch is 1024 random 4 KiB blocks (one 4 MiB full-copy frame).
func benchBatch(b *testing.B) *batch {
	rng := rand.New(rand.NewPCG(1, 2))
	bt := &batch{blocks: make([]uint64, chunkBlocks), vers: make([]Version, chunkBlocks), data: make([]byte, chunkBlocks*bs)}
	fillRandom(rng, bt.data)
	for i := range bt.blocks {
		bt.blocks[i] = uint64(i)
		bt.vers[i] = Version{Epoch: 1, Clock: uint64(i), Site: 1}
	}
	return bt
}

// BenchmarkFrameEncode: per-block checksums and the frame (no copy of
// block data), incompressible data with the auto compression policy.
func BenchmarkFrameEncode(b *testing.B) {
	bt := benchBatch(b)
	enc, err := newEncoder(bs, CompressAuto)
	if err != nil {
		b.Fatal(err)
	}
	defer enc.close()
	b.SetBytes(int64(len(bt.data)))
	for b.Loop() {
		if _, _, err := enc.encode(bt); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFrameDecode: frame checksum, entry parsing and per-block
// checksum verification, as a receiver does before applying anything.
func BenchmarkFrameDecode(b *testing.B) {
	bt := benchBatch(b)
	enc, _ := newEncoder(bs, CompressOff)
	defer enc.close()
	f, _, err := enc.encode(bt)
	if err != nil {
		b.Fatal(err)
	}
	frame := append([]byte(nil), f.head...)
	for _, d := range f.data {
		frame = append(frame, d...)
	}
	frame = append(frame, f.trailer...)
	var m wire.Blocks
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		fr, _, err := wire.ParseFrame(frame)
		if err != nil {
			b.Fatal(err)
		}
		if err := fr.Decode(&m); err != nil {
			b.Fatal(err)
		}
		for i := range m.Entries {
			if _, err := m.Entries[i].Plain(bs, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkBlockHash: the 64-bit block hash used for checksums and Merkle
// leaves.
func BenchmarkBlockHash(b *testing.B) {
	blk := make([]byte, bs)
	fillRandom(rand.New(rand.NewPCG(3, 4)), blk)
	b.SetBytes(bs)
	for b.Loop() {
		xxhash.Sum64(blk)
	}
}

// BenchmarkDeltaApply: stage 256 scattered blocks of a cycle in the
// journal, commit and apply them to a 64 MiB image (syncs included).
func BenchmarkDeltaApply(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "m.img")
	v, err := createMirror(path, VolumeOptions{Logger: quietLogger()}, bs, 16384)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	j, err := openJournal(journalPath(v.metaDir))
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, bs)
	fillRandom(rng, data)
	const n = 256
	b.SetBytes(n * bs)
	cycle := uint64(0)
	for b.Loop() {
		cycle++
		c := &jcycle{cycle: cycle, epoch: 1, entries: n, index: map[uint64]int{}, digest: xxhash.New()}
		if err := j.begin(c); err != nil {
			b.Fatal(err)
		}
		var es []jentry
		var items []recvItem
		var sums []uint64
		for i := uint64(0); i < n; i++ {
			blk := i*61 + uint64(rng.IntN(61))
			ver := Version{Epoch: 1, Clock: cycle<<20 | i, Site: 9}
			es = append(es, jentry{ManifestEntry: wire.ManifestEntry{Block: blk, Version: ver}, src: srcNeed})
			items = append(items, recvItem{block: blk, ver: ver, data: data})
			sums = append(sums, xxhash.Sum64(data))
		}
		if err := j.manifest(es); err != nil {
			b.Fatal(err)
		}
		if err := j.stage(items, sums); err != nil {
			b.Fatal(err)
		}
		if err := j.commit(cycle, n, c.digest.Sum64()); err != nil {
			b.Fatal(err)
		}
		if err := v.applyCycle(j, c); err != nil {
			b.Fatal(err)
		}
	}
}
