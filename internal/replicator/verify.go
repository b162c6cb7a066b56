package replicator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/merkle"
	"github.com/premirror/premirror/internal/replicator/wire"
)

// hashChunkBlocks is the read size of leaf hashing: 1024 blocks (4 MiB).
const hashChunkBlocks = 1024

// absentLeaf is the leaf of a block a selective mirror does not hold; the
// source uses it for the same blocks, so they never differ.
const absentLeaf = 0

// VerifyResult reports a Merkle comparison.
type VerifyResult struct {
	Blocks      uint64        `json:"blocks"`       // blocks compared
	Differ      []uint64      `json:"differ"`       // differing blocks (ascending)
	Repaired    bool          `json:"repaired"`     // a repair cycle made the mirror match
	Cycle       uint64        `json:"cycle"`        // the repair cycle
	HashedBytes int64         `json:"hashed_bytes"` // bytes read locally
	WireBytes   int64         `json:"wire_bytes"`   // bytes sent, TLS included
	Duration    time.Duration `json:"duration_ns"`
}

// VerifyOptions configure Node.Verify.
type VerifyOptions struct {
	// RemoteVolume is the volume name at the peer; default the local name.
	RemoteVolume string
	// Repair ships the differing blocks in a repair cycle (the source's
	// copy wins), applied atomically like any cycle.
	Repair bool
}

// Verify compares volume with its mirror at peer through Merkle trees of
// block hashes: each side reads its copy once, in parallel, then only the
// hashes of differing subtrees cross the network. With Repair the
// differing blocks are sent and the mirror fixed; without it nothing
// changes. Use it after a crash of unknown extent, for volumes changed
// behind the replicator's back, or periodically against silent corruption.
func (n *Node) Verify(ctx context.Context, volume, peer string, o VerifyOptions) (VerifyResult, error) {
	start := time.Now()
	var res VerifyResult
	v, p, err := n.volumeAndPeer(volume, peer)
	if err != nil {
		return res, err
	}
	if o.RemoteVolume == "" {
		o.RemoteVolume = volume
	}
	hello := n.hello(v, wire.OpVerify, o.RemoteVolume)
	l, w, err := dial(ctx, n.dialConfig(p), hello)
	if err != nil {
		return res, n.pushError(v, err)
	}
	defer l.close()
	switch {
	case w.Flags&wire.WelcomeEmpty != 0:
		return res, fmt.Errorf("%w: mirror %s at %s holds no copy", ErrInconsistent, o.RemoteVolume, peer)
	case w.Lineage != hello.Lineage:
		return res, fmt.Errorf("%w: mirror %s at %s holds volume %s", ErrLineage, o.RemoteVolume, peer, lineageString(w.Lineage))
	}
	var present *Bitmap
	if w.Flags&wire.WelcomeSelective != 0 {
		if present, err = readPresent(l, v.blocks); err != nil {
			return res, err
		}
	}
	// Ask for the root first so the peer starts hashing while we do.
	sizes := merkle.LevelSizes(int(v.blocks))
	top := len(sizes) - 1
	if err := l.send(&wire.MerkleReq{Level: uint8(top), Indices: []uint64{0}}); err != nil {
		return res, err
	}
	leaves, err := v.leafHashes(ctx, present)
	if err != nil {
		return res, err
	}
	res.HashedBytes = v.Size()
	tree := merkle.Build(leaves)
	first := true
	diff, err := tree.Diff(func(level int, idx []uint64) ([]uint64, error) {
		if !first {
			for i := 0; i < len(idx); i += wire.MaxEntries {
				req := wire.MerkleReq{Level: uint8(level), Indices: idx[i:min(i+wire.MaxEntries, len(idx))]}
				if err := l.send(&req); err != nil {
					return nil, err
				}
			}
		}
		first = false
		out := make([]uint64, 0, len(idx))
		for len(out) < len(idx) {
			var r wire.MerkleResp
			if err := l.read(&r); err != nil {
				return nil, err
			}
			if int(r.Level) != level || len(out)+len(r.Hashes) > len(idx) {
				return nil, fmt.Errorf("%w: merkle answer for level %d with %d hashes, asked level %d", ErrProtocol, r.Level, len(r.Hashes), level)
			}
			out = append(out, r.Hashes...)
		}
		return out, nil
	})
	if err != nil {
		return res, err
	}
	res.Blocks = v.blocks
	res.Differ = diff
	n.metrics.verifyDiff.WithLabelValues(v.name).Add(float64(len(diff)))
	n.log.Info("verify", "volume", volume, "peer", peer, "differ", len(diff))
	if o.Repair && len(diff) > 0 {
		var pr PushResult
		if err := n.runCycle(ctx, l, w, v, peer, diff, PushOptions{}, &pr); err != nil {
			return res, n.pushError(v, err)
		}
		res.Repaired, res.Cycle = true, pr.Cycle
	}
	res.WireBytes = l.raw.tx.Load()
	res.Duration = time.Since(start)
	return res, nil
}

func readPresent(l *link, blocks uint64) (*Bitmap, error) {
	b := NewBitmap(blocks)
	var next uint64
	for {
		var p wire.Present
		if err := l.read(&p); err != nil {
			return nil, err
		}
		if p.Start != next || p.Start+uint64(p.Count) > blocks {
			return nil, fmt.Errorf("%w: presence bitmap run at %d+%d, expected %d", ErrProtocol, p.Start, p.Count, next)
		}
		for i := uint64(0); i < uint64(p.Count); i++ {
			if p.Bits[i/8]&(1<<(i%8)) != 0 {
				b.Set(p.Start + i)
			}
		}
		next += uint64(p.Count)
		if p.Last {
			if next != blocks {
				return nil, fmt.Errorf("%w: presence bitmap covers %d of %d blocks", ErrProtocol, next, blocks)
			}
			return b, nil
		}
	}
}

// leafHashes hashes every block (absentLeaf where present says the mirror
// lacks it). One goroutine reads 4 MiB chunks while this one hashes;
// holes are not read.
func (v *Volume) leafHashes(ctx context.Context, present *Bitmap) ([]uint64, error) {
	leaves := make([]uint64, v.blocks)
	zeroLeaf := xxhash.Sum64(make([]byte, v.bs))
	bufs := make(chan []byte, 3)
	for range cap(bufs) {
		bufs <- make([]byte, hashChunkBlocks*v.bs)
	}
	chunks := make(chan batch, cap(bufs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var rerr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(chunks)
		dm := newDataMap(v.f, v.Size())
		for b := uint64(0); b < v.blocks; b += hashChunkBlocks {
			n := min(hashChunkBlocks, v.blocks-b)
			var buf []byte
			select {
			case buf = <-bufs:
			case <-ctx.Done():
				rerr = ctx.Err()
				return
			}
			bt := batch{blocks: make([]uint64, n), vers: make([]Version, n), data: buf[:n*uint64(v.bs)], hole: make([]bool, n)}
			for i := range bt.blocks {
				bt.blocks[i] = b + uint64(i)
			}
			if err := v.readChunk(&bt, dm, nil); err != nil {
				rerr = err
				return
			}
			chunks <- bt
		}
	}()
	for bt := range chunks {
		for i, b := range bt.blocks {
			switch {
			case present != nil && !present.Has(b):
				leaves[b] = absentLeaf
			case bt.hole[i]:
				leaves[b] = zeroLeaf
			default:
				leaves[b] = xxhash.Sum64(bt.data[i*v.bs : (i+1)*v.bs])
			}
		}
		bufs <- bt.data[:cap(bt.data)]
	}
	wg.Wait()
	if rerr != nil {
		return nil, rerr
	}
	return leaves, nil
}

// merkleState is the server side of a verify session.
type merkleState struct {
	present *Bitmap
	tree    *merkle.Tree
}

// sendPresent starts a verify session: a selective mirror first sends
// which blocks it holds.
func (s *session) sendPresent() (*merkleState, error) {
	v := s.volume()
	if v == nil {
		return nil, fmt.Errorf("%w: no copy to verify", ErrInconsistent)
	}
	m := &merkleState{}
	v.mu.Lock()
	if v.present != nil {
		m.present = v.present.Clone()
	}
	v.mu.Unlock()
	if m.present == nil {
		return m, nil
	}
	const run = 8 << 20 // bits per frame
	raw := bitmapBytes(nil, m.present.w)
	for start := uint64(0); ; start += run {
		cnt := min(run, v.blocks-start)
		bits := append([]byte(nil), raw[start/8:(start+cnt+7)/8]...)
		if r := cnt % 8; r != 0 {
			bits[len(bits)-1] &= 1<<r - 1
		}
		last := start+cnt >= v.blocks
		if err := s.l.send(&wire.Present{Start: start, Count: uint32(cnt), Last: last, Bits: bits}); err != nil {
			return nil, err
		}
		if last {
			return m, nil
		}
	}
}

func (s *session) answerMerkle(ctx context.Context, m *merkleState, r *wire.MerkleReq) error {
	v := s.volume()
	if m.tree == nil {
		leaves, err := v.leafHashes(ctx, m.present)
		if err != nil {
			return err
		}
		m.tree = merkle.Build(leaves)
	}
	if int(r.Level) >= len(m.tree.Levels) {
		return fmt.Errorf("%w: merkle level %d, tree has %d", ErrProtocol, r.Level, len(m.tree.Levels))
	}
	lv := m.tree.Levels[r.Level]
	resp := wire.MerkleResp{Level: r.Level, Hashes: make([]uint64, len(r.Indices))}
	for i, idx := range r.Indices {
		if idx >= uint64(len(lv)) {
			return fmt.Errorf("%w: merkle node %d of level %d, level has %d", ErrProtocol, idx, r.Level, len(lv))
		}
		resp.Hashes[i] = lv[idx]
	}
	return s.l.send(&resp)
}
