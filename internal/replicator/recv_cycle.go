package replicator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// stageSyncBytes: staged cycle data is synced and acknowledged every
// 16 MiB (and at commit). Acknowledged staged blocks are never requested
// again (see decide), so a retried cycle resumes where the last one
// stopped.
const stageSyncBytes = 16 << 20

// recvCycle receives one delta (or repair) cycle and applies it
// atomically through the journal.
func (s *session) recvCycle(ctx context.Context, cb *wire.CycleBegin) error {
	// The sender takes the cycle's snapshot just before it sends
	// CycleBegin, so its arrival, on this node's clock, is when the data
	// the cycle brings was current, give or take one-way latency. Cycles
	// carry no source timestamp (block versions hold the time of each
	// write, which says nothing about an idle volume's freshness), and
	// the apply time would hide how long a throttled transfer took.
	asOf := time.Now()
	v := s.volume()
	if v == nil {
		return fmt.Errorf("%w: mirror %s has no copy yet; run a full copy first", ErrInconsistent, s.hello.Volume)
	}
	st := v.state()
	lineage := lineageString(s.hello.Lineage)
	switch {
	case st.Empty:
		return fmt.Errorf("%w: mirror %s has no copy yet; run a full copy first", ErrInconsistent, v.name)
	case st.SourceLineage != lineage:
		return fmt.Errorf("%w: mirror %s holds volume %s, the source is %s; run a full copy", ErrLineage, v.name, st.SourceLineage, lineage)
	case st.FullActive:
		return fmt.Errorf("%w: mirror %s has an unfinished full copy at block %d; finish it first", ErrInconsistent, v.name, st.FullNext)
	case cb.Cycle != st.Cycle+1:
		return fmt.Errorf("%w: cycle %d does not follow committed cycle %d", ErrProtocol, cb.Cycle, st.Cycle)
	case cb.Epoch > maxEpoch:
		return fmt.Errorf("%w: cycle from epoch %d, beyond %d, the largest a block version holds", ErrProtocol, cb.Epoch, uint64(maxEpoch))
	case cb.Epoch < st.Epoch:
		return fmt.Errorf("%w: cycle from epoch %d, volume %s is at epoch %d", ErrFenced, cb.Epoch, v.name, st.Epoch)
	case cb.Entries > v.blocks:
		return fmt.Errorf("%w: cycle of %d entries for %d blocks", ErrProtocol, cb.Entries, v.blocks)
	}
	j, err := s.journal(v)
	if err != nil {
		return err
	}
	jc := &jcycle{cycle: cb.Cycle, epoch: cb.Epoch, lineage: s.hello.Lineage, entries: cb.Entries, flags: cb.Flags,
		index: map[uint64]int{}, digest: xxhash.New(), asOf: asOf}
	if err := j.begin(jc); err != nil {
		return err
	}
	r := &cycleReceiver{s: s, v: v, j: j, c: jc}
	defer r.close()
	for {
		f, err := s.l.rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: connection closed inside cycle %d (staged blocks are kept)", ErrProtocol, cb.Cycle)
			}
			return wireError(err)
		}
		switch f.Type {
		case wire.TManifest:
			var m wire.Manifest
			if err := f.Decode(&m); err != nil {
				return wireError(err)
			}
			if err := r.manifest(&m); err != nil {
				return err
			}
		case wire.TBlocks:
			var m wire.Blocks
			if err := f.Decode(&m); err != nil {
				return wireError(err)
			}
			if err := r.blocks(&m); err != nil {
				return err
			}
		case wire.TCycleCommit:
			var m wire.CycleCommit
			if err := f.Decode(&m); err != nil {
				return wireError(err)
			}
			return r.commit(&m)
		case wire.TError:
			return peerError(f)
		default:
			return fmt.Errorf("%w: unexpected %s frame in cycle %d", ErrProtocol, f.Type, cb.Cycle)
		}
	}
}

type cycleReceiver struct {
	s         *session
	v         *Volume
	j         *journal
	c         *jcycle
	chunks    uint32
	last      bool
	lastBlock uint64
	seen      int
	dec       *zstd.Decoder
	unsynced  int
	seq       uint64
	pending   []blockVer
	buf       []byte
}

func (r *cycleReceiver) close() {
	if r.dec != nil {
		r.dec.Close()
	}
}

// manifest decides, for each entry, whether the data must be sent, and
// answers with a Need bitmap.
func (r *cycleReceiver) manifest(m *wire.Manifest) error {
	if r.last || m.Chunk != r.chunks {
		return fmt.Errorf("%w: manifest chunk %d out of order", ErrProtocol, m.Chunk)
	}
	r.chunks++
	r.last = m.Last
	if uint64(r.seen+len(m.Entries)) > r.c.entries {
		return fmt.Errorf("%w: manifest longer than the %d entries announced", ErrProtocol, r.c.entries)
	}
	need := wire.Need{Chunk: m.Chunk, Count: uint32(len(m.Entries)), Bits: make([]byte, (len(m.Entries)+7)/8)}
	es := make([]jentry, len(m.Entries))
	for i, e := range m.Entries {
		if e.Block >= r.v.blocks || (r.seen+i > 0 && e.Block <= r.lastBlock) {
			return fmt.Errorf("%w: manifest entry %d: block %d out of order or range", ErrProtocol, i, e.Block)
		}
		r.lastBlock = e.Block
		if e.Version.Epoch > uint32(r.c.epoch) {
			return fmt.Errorf("%w: block %d version from epoch %d in a cycle of epoch %d", ErrProtocol, e.Block, e.Version.Epoch, r.c.epoch)
		}
		src, err := r.decide(e)
		if err != nil {
			return err
		}
		es[i] = jentry{ManifestEntry: e, src: src}
		if src == srcNeed {
			need.Bits[i/8] |= 1 << (i % 8)
		} else if src != srcAbsent {
			r.s.n.metrics.blocksSkipped.WithLabelValues("held").Inc()
		}
	}
	r.seen += len(m.Entries)
	if m.Last && uint64(r.seen) != r.c.entries {
		return fmt.Errorf("%w: manifest has %d entries, %d announced", ErrProtocol, r.seen, r.c.entries)
	}
	if err := r.j.manifest(es); err != nil {
		return err
	}
	return r.s.l.send(&need)
}

// decide says where a manifest entry's data will come from. Data the
// mirror already holds, staged by an interrupted attempt or in its image,
// is never requested again.
func (r *cycleReceiver) decide(e wire.ManifestEntry) (uint8, error) {
	v := r.v
	probe := e.Flags&wire.ManifestProbe != 0
	if sb, ok := r.j.staged[e.Block]; ok {
		if sb.ver == e.Version && !probe {
			return srcStaged, nil
		}
		if probe && sb.sum == e.Hash {
			// Same bytes staged under the version the sender had before
			// its crash: restage them under the new version locally.
			if r.buf == nil {
				r.buf = make([]byte, v.bs)
			}
			data, err := r.j.read(e.Block, sb, v.bs, r.buf)
			if err != nil {
				return 0, err
			}
			it := recvItem{block: e.Block, ver: e.Version}
			if !sb.zero {
				it.data = data
			}
			if err := r.j.stage([]recvItem{it}, []uint64{sb.sum}); err != nil {
				return 0, err
			}
			return srcStaged, nil
		}
	}
	v.mu.Lock()
	present := v.present == nil || v.present.Has(e.Block)
	local := v.version(e.Block)
	if !present && local.Less(e.Version) {
		// Not held: the cycle skips it, but a read-through fetch in
		// flight may bring older data. Keep the version this cycle
		// announced so that such a fetch loses (newest-version-wins)
		// and is made again, instead of being stored as held.
		v.setVersion(e.Block, e.Version)
	}
	v.mu.Unlock()
	switch {
	case !present:
		// A selective mirror fetches this block on demand instead.
		return srcAbsent, nil
	case e.Flags&wire.ManifestForce != 0:
		return srcNeed, nil
	case probe:
		h, err := v.blockHash(e.Block)
		if err != nil {
			return 0, err
		}
		if h != e.Hash {
			return srcNeed, nil
		}
		if local == e.Version {
			return srcImage, nil
		}
		return srcAdopt, nil
	case local == e.Version:
		return srcImage, nil
	}
	return srcNeed, nil
}

// blocks verifies a whole Blocks frame, then stages it.
func (r *cycleReceiver) blocks(m *wire.Blocks) error {
	if !r.last {
		return fmt.Errorf("%w: blocks before the manifest ended", ErrProtocol)
	}
	v := r.v
	items := make([]recvItem, 0, len(m.Entries))
	sums := make([]uint64, 0, len(m.Entries))
	var arena []byte
	hooks := r.s.n.hooks
	for i := range m.Entries {
		e := &m.Entries[i]
		k, ok := r.c.index[e.Block]
		if !ok || e.Kind == wire.KindZeroRange || e.Kind == wire.KindAbsent {
			return fmt.Errorf("%w: block %d is not in cycle %d", ErrProtocol, e.Block, r.c.cycle)
		}
		if hooks.received != nil {
			hooks.received(v.name, e.Block, e.Version)
		}
		me := &r.c.manifest[k]
		if me.src != srcNeed || me.have || me.Version != e.Version {
			return fmt.Errorf("%w: block %d version %s was not requested", ErrProtocol, e.Block, e.Version)
		}
		var data []byte
		var sum uint64
		if e.Kind != wire.KindZero {
			if e.Kind == wire.KindZstd && r.dec == nil {
				d, err := wire.NewDecoder()
				if err != nil {
					return err
				}
				r.dec = d
			}
			if cap(arena)-len(arena) < v.bs {
				arena = make([]byte, 0, v.bs*len(m.Entries))
			}
			var err error
			data, err = e.Plain(v.bs, r.dec, arena[len(arena):len(arena):cap(arena)])
			if err != nil {
				r.s.n.metrics.rejected.WithLabelValues("corrupt").Inc()
				return fmt.Errorf("%w: %w; frame %d rejected, nothing of it applied", ErrCorrupt, err, m.Seq)
			}
			if e.Kind == wire.KindZstd {
				arena = arena[:len(arena)+v.bs]
			}
			sum = e.Sum
		}
		items = append(items, recvItem{block: e.Block, ver: e.Version, data: data})
		sums = append(sums, sum)
	}
	if err := r.j.stage(items, sums); err != nil {
		return err
	}
	r.s.n.metrics.blocksRecv.WithLabelValues(v.name).Add(float64(len(items)))
	if hooks.durable != nil {
		for _, it := range items {
			r.pending = append(r.pending, blockVer{it.block, it.ver})
		}
	}
	r.seq = m.Seq
	r.unsynced += len(items) * v.bs
	if r.unsynced >= stageSyncBytes {
		return r.syncAck()
	}
	return nil
}

func (r *cycleReceiver) syncAck() error {
	if err := r.j.sync(); err != nil {
		return err
	}
	if h := r.s.n.hooks.durable; h != nil && len(r.pending) > 0 {
		h(r.v.name, r.pending)
		r.pending = r.pending[:0]
	}
	r.unsynced = 0
	return r.s.l.send(&wire.Ack{Kind: wire.AckData, Seq: r.seq})
}

// commit checks the cycle is complete and matches the sender's manifest,
// makes it durable, acknowledges and applies it.
func (r *cycleReceiver) commit(m *wire.CycleCommit) error {
	c := r.c
	switch {
	case !r.last:
		return fmt.Errorf("%w: commit before the manifest ended", ErrProtocol)
	case m.Cycle != c.cycle || m.Entries != c.entries:
		return fmt.Errorf("%w: commit of cycle %d/%d entries, receiving cycle %d/%d", ErrProtocol, m.Cycle, m.Entries, c.cycle, c.entries)
	case m.Digest != c.digest.Sum64():
		return fmt.Errorf("%w: cycle %d manifest digest mismatch; nothing applied", ErrCorrupt, c.cycle)
	case c.missing != 0:
		return fmt.Errorf("%w: commit of cycle %d with %d requested blocks missing; nothing applied", ErrProtocol, c.cycle, c.missing)
	}
	if err := r.j.commit(m.Cycle, m.Entries, m.Digest); err != nil {
		return err
	}
	if h := r.s.n.hooks.durable; h != nil && len(r.pending) > 0 {
		h(r.v.name, r.pending)
		r.pending = r.pending[:0]
	}
	// The commit record is durable: from here the cycle survives any
	// crash (recovery applies it), so it is acknowledged now and applied
	// while the sender moves on; the sender retires the cycle's dirty
	// bits on this acknowledgement. The session (and so the next cycle)
	// waits for the apply; in-process readers never see it half done.
	// applyAcked keeps a failed apply from losing the cycle.
	ackErr := r.s.l.send(&wire.Ack{Kind: wire.AckCommit, Seq: r.seq, Value: c.cycle})
	return errors.Join(r.s.applyAcked(r.v, r.j, c), ackErr)
}

// applyAcked applies a committed cycle whose commit was acknowledged, and
// makes a failed apply safe without a restart. The source has retired the
// cycle's blocks and numbers its next cycle from the one the next Welcome
// reports, so the cycle can neither be dropped nor be passed over:
//
//   - Staged data damaged (a checksum fails): the acknowledged data is
//     lost here, so, as at start, the copy gets a full copy from block 0.
//     It returns nil then: the next Welcome asks for that copy.
//   - Otherwise (an I/O error on the image or metadata) the cycle stays
//     committed in the journal, the copy refuses reads, and the next
//     changing session applies it again before its Welcome (settle). The
//     error ends this session.
func (s *session) applyAcked(v *Volume, j *journal, c *jcycle) error {
	var err error
	if h := s.n.hooks.applying; h != nil {
		err = h(v.name, c.cycle)
	}
	if err == nil {
		err = v.applyCycle(j, c)
	}
	if err == nil {
		v.setUnapplied(0)
		return nil
	}
	if h := s.n.hooks.applyFailed; h != nil {
		h(v.name, c.cycle)
	}
	s.n.metrics.applyFailures.WithLabelValues(v.name).Inc()
	if journalDamaged(err) {
		if rerr := s.resync(v, j, fmt.Errorf("apply cycle %d: %w", c.cycle, err)); rerr != nil {
			// Not ErrCorrupt: no frame was rejected.
			return fmt.Errorf("%w: cycle %d: %v; the copy is marked for a full copy: %w", ErrInconsistent, c.cycle, err, rerr)
		}
		return nil
	}
	v.setUnapplied(c.cycle)
	v.log.Error("acknowledged delta cycle failed to apply; it stays in the journal and is applied again before the next session",
		"cycle", c.cycle, "err", err)
	return fmt.Errorf("%w: cycle %d is committed and failed to apply (applied again before the next session): %w", ErrInconsistent, c.cycle, err)
}

// settle applies again a cycle that failed to apply in an earlier
// session, before this session's Welcome reports the cycle number and
// before any cycle can begin. If it fails again the session is refused:
// the source's cycle fails (and its alert fires) while the committed
// cycle stays in the journal for the next attempt or a restart.
func (s *session) settle() error {
	v := s.volume()
	if v == nil || v.unappliedCycle() == 0 {
		return nil
	}
	j, err := s.journal(v)
	if err != nil {
		return err
	}
	if j.cur == nil || !j.cur.committed {
		// Emptied: applyCycle empties it last, once the cycle is recorded
		// and synced, so only syncing the emptied file failed.
		v.setUnapplied(0)
		return nil
	}
	v.log.Info("applying again a cycle that failed to apply", "cycle", j.cur.cycle)
	return s.applyAcked(v, j, j.cur)
}

// resync is resyncAfterDamage for a volume in service. The copy is marked
// first: if that cannot be recorded, the journal is kept so that a
// restart finds the damage again. The logs are emptied through their open
// objects, so what they index matches the files. The sync log's writes are
// already in the image: it is checkpointed (flushed, then emptied); not
// open yet, it is empty (recovery emptied it).
func (s *session) resync(v *Volume, j *journal, cause error) error {
	v.log.Error("mirror journal damaged; discarding it and asking the source for a full copy", "err", cause)
	if err := v.needFullCopy(); err != nil {
		return err
	}
	s.nv.mu.Lock()
	swal := s.nv.swal
	s.nv.mu.Unlock()
	err := j.reset()
	if swal != nil {
		err = errors.Join(err, swal.checkpoint(v))
	}
	return err
}

// blockHash hashes block b of the image.
func (v *Volume) blockHash(b uint64) (uint64, error) {
	buf := make([]byte, v.bs)
	v.io.RLock()
	_, err := v.f.ReadAt(buf, int64(b)*int64(v.bs))
	v.io.RUnlock()
	if err != nil {
		return 0, ioError("read "+v.path, err)
	}
	return xxhash.Sum64(buf), nil
}
