package replicator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Full-copy checkpoints: the mirror makes received data durable and
// acknowledges its position every checkpointBytes or checkpointEvery,
// whichever comes first. A resumed copy restarts at the last checkpoint.
const (
	checkpointBytes = 64 << 20
	checkpointEvery = 500 * time.Millisecond
)

// recvFull receives a full or selective copy. Blocks go straight to the
// image (a full copy marks the mirror inconsistent until a delta cycle
// commits after it); each frame is verified completely before any of it
// is written. Decryption and frame checks run in the session goroutine
// while a worker verifies block checksums and writes, so the two overlap.
func (s *session) recvFull(ctx context.Context, fb *wire.FullBegin) error {
	v, err := s.ensureMirror()
	if err != nil {
		return err
	}
	st := v.state()
	lineage := lineageString(s.hello.Lineage)
	switch {
	case fb.End != v.blocks:
		return fmt.Errorf("%w: full copy ends at block %d, volume has %d", ErrProtocol, fb.End, v.blocks)
	case fb.Start > 0 && !(st.FullActive && st.FullNext == fb.Start && st.SourceLineage == lineage):
		return fmt.Errorf("%w: cannot resume a full copy at block %d: mirror holds %d blocks of it", ErrProtocol, fb.Start, st.FullNext)
	case fb.Start > 0 && st.Selective != (fb.Flags&wire.FullSelective != 0):
		return fmt.Errorf("%w: cannot resume a copy at block %d as another kind (selective %v, the interrupted one %v)", ErrProtocol, fb.Start, fb.Flags&wire.FullSelective != 0, st.Selective)
	}
	selective := fb.Flags&wire.FullSelective != 0
	// Zero ranges may be skipped only on an image this node created empty:
	// a reused file or a block device still holds its old bytes.
	zeroed := fb.Start == 0 && st.Empty && st.ZeroImage
	if fb.Start == 0 {
		j, err := s.journal(v)
		if err != nil {
			return err
		}
		if err := j.reset(); err != nil {
			return err
		}
		if err := v.setSelective(selective); err != nil {
			return err
		}
	}
	if err := v.updateState(func(st *volState) {
		st.FullActive, st.FullNext, st.FullSession = true, fb.Start, fb.Session
		st.Inconsistent, st.Empty, st.ZeroImage = true, false, false
		st.SourceLineage = lineage
	}); err != nil {
		return err
	}
	if err := s.l.send(&wire.Ack{Kind: wire.AckFull, Value: fb.Start}); err != nil {
		return err
	}
	// A session may open as a delta and turn into a full copy when this
	// side holds none: log what it is now.
	s.log = s.n.log.With("peer", s.l.peer, "volume", s.hello.Volume, "op", "full")
	s.log.Info("receiving copy", "from_block", fb.Start, "to_block", fb.End, "selective", selective)

	type frameBuf struct {
		b []byte
		f wire.Frame
	}
	free := make(chan *frameBuf, 4)
	for range cap(free) {
		free <- &frameBuf{}
	}
	work := make(chan *frameBuf, cap(free))
	w := &fullWriter{s: s, v: v, fb: fb, zeroed: zeroed, next: fb.Start, lastCP: time.Now(), cpNext: fb.Start}
	var wg sync.WaitGroup
	var werr error // written by the worker, read after wg.Wait
	var failed atomic.Bool
	wg.Add(1)
	go func() {
		defer wg.Done()
		for buf := range work {
			if werr == nil {
				if err := w.apply(buf.f); err != nil {
					werr = err
					failed.Store(true)
				}
			}
			free <- buf
		}
	}()
	finish := func(err error) error {
		close(work)
		wg.Wait()
		w.close()
		if err != nil {
			return err
		}
		return werr
	}
	for {
		var buf *frameBuf
		select {
		case buf = <-free:
		case <-ctx.Done():
			return finish(ctx.Err())
		}
		f, err := s.l.rd.NextInto(&buf.b)
		if err != nil {
			return finish(wireError(err))
		}
		switch f.Type {
		case wire.TBlocks:
			buf.f = f // checked already; its payload lives in buf.b
			work <- buf
		case wire.TFullEnd:
			var fe wire.FullEnd
			if err := f.Decode(&fe); err != nil {
				return finish(wireError(err))
			}
			free <- buf
			if err := finish(nil); err != nil {
				return err
			}
			if fe.Next != fb.End || w.next > fb.End {
				return fmt.Errorf("%w: full copy ended at block %d, expected %d", ErrProtocol, fe.Next, fb.End)
			}
			if err := w.checkpoint(fb.End, true); err != nil {
				return err
			}
			s.log.Info("copy complete", "blocks", fb.End-fb.Start, "data_blocks", w.dataBlocks)
			return s.l.send(&wire.Ack{Kind: wire.AckFullEnd, Value: fb.End})
		case wire.TError:
			return finish(peerError(f))
		default:
			return finish(fmt.Errorf("%w: unexpected %s frame during a full copy", ErrProtocol, f.Type))
		}
		if failed.Load() {
			return finish(nil)
		}
	}
}

// fullWriter is the worker side of recvFull.
type fullWriter struct {
	s          *session
	v          *Volume
	fb         *wire.FullBegin
	zeroed     bool // the image is known all-zero: zero ranges need no write
	next       uint64
	cpNext     uint64
	sinceCP    int
	lastCP     time.Time
	dec        *zstd.Decoder
	arena      []byte
	msg        wire.Blocks
	items      []recvItem
	pending    []blockVer // blocks since the last checkpoint (test hooks only)
	dataBlocks uint64
}

func (w *fullWriter) close() {
	if w.dec != nil {
		w.dec.Close()
	}
}

// apply verifies a whole Blocks frame, then writes it.
func (w *fullWriter) apply(f wire.Frame) error {
	if err := f.Decode(&w.msg); err != nil {
		return wireError(err)
	}
	v, bs := w.v, w.v.bs
	w.items = w.items[:0]
	w.arena = w.arena[:0]
	var ranges []wire.BlockEntry
	hooks := w.s.n.hooks
	for i := range w.msg.Entries {
		e := &w.msg.Entries[i]
		end := e.Block + uint64(max(e.Count, 1))
		if e.Block < w.next || end > w.fb.End {
			return fmt.Errorf("%w: block %d outside the copy's remaining range %d..%d", ErrProtocol, e.Block, w.next, w.fb.End)
		}
		if e.Kind != wire.KindZeroRange && e.Kind != wire.KindAbsent && uint64(e.Version.Epoch) > w.s.hello.Epoch {
			return fmt.Errorf("%w: block %d version from epoch %d in a copy of epoch %d", ErrProtocol, e.Block, e.Version.Epoch, w.s.hello.Epoch)
		}
		w.next = end
		if hooks.received != nil && e.Kind != wire.KindZeroRange && e.Kind != wire.KindAbsent {
			hooks.received(v.name, e.Block, e.Version)
		}
		switch e.Kind {
		case wire.KindAbsent:
			return fmt.Errorf("%w: absent blocks %d+%d in a copy", ErrProtocol, e.Block, e.Count)
		case wire.KindZeroRange:
			ranges = append(ranges, *e)
			continue
		case wire.KindZero:
			w.items = append(w.items, recvItem{block: e.Block, ver: e.Version})
			continue
		case wire.KindZstd:
			if w.dec == nil {
				d, err := wire.NewDecoder()
				if err != nil {
					return err
				}
				w.dec = d
			}
		}
		// Zstd output lands in a per-frame arena so every item keeps its
		// own bytes until the frame is written.
		if cap(w.arena)-len(w.arena) < bs {
			w.arena = make([]byte, 0, max(2*cap(w.arena), 64*bs))
		}
		data, err := e.Plain(bs, w.dec, w.arena[len(w.arena):len(w.arena):cap(w.arena)])
		if err != nil {
			w.s.n.metrics.rejected.WithLabelValues("corrupt").Inc()
			return fmt.Errorf("%w: %w; frame %d rejected, nothing of it applied", ErrCorrupt, err, w.msg.Seq)
		}
		if e.Kind == wire.KindZstd {
			w.arena = w.arena[:len(w.arena)+bs]
		}
		w.items = append(w.items, recvItem{block: e.Block, ver: e.Version, data: data})
	}
	v.io.Lock()
	err := v.applyLocked(w.items, true)
	if err == nil {
		for _, r := range ranges {
			if err = v.zeroRangeLocked(r.Block, uint64(r.Count), w.zeroed); err != nil {
				break
			}
		}
	}
	v.io.Unlock()
	if err != nil {
		return err
	}
	w.dataBlocks += uint64(len(w.items))
	w.s.n.metrics.blocksRecv.WithLabelValues(v.name).Add(float64(len(w.items)))
	if hooks.durable != nil {
		for _, it := range w.items {
			w.pending = append(w.pending, blockVer{it.block, it.ver})
		}
	}
	w.sinceCP += len(f.Payload)
	if w.sinceCP >= checkpointBytes || time.Since(w.lastCP) >= checkpointEvery {
		return w.checkpoint(w.next, false)
	}
	return nil
}

// checkpoint makes everything up to next durable, records the position,
// and acknowledges it.
func (w *fullWriter) checkpoint(next uint64, final bool) error {
	v := w.v
	if err := v.Flush(); err != nil {
		return err
	}
	if err := v.updateState(func(st *volState) {
		st.FullNext = next
		if final {
			st.FullActive = false
		}
	}); err != nil {
		return err
	}
	if h := w.s.n.hooks.durable; h != nil && len(w.pending) > 0 {
		h(v.name, w.pending)
		w.pending = w.pending[:0]
	}
	w.sinceCP, w.lastCP, w.cpNext = 0, time.Now(), next
	if final {
		return nil
	}
	return w.s.l.send(&wire.Ack{Kind: wire.AckFull, Value: next})
}

// zeroRangeLocked makes blocks [b, b+n) zero with version zero. A freshly
// created image is already zero there. The caller holds v.io.
func (v *Volume) zeroRangeLocked(b, n uint64, zeroed bool) error {
	v.mu.Lock()
	if len(v.peers) > 0 {
		if err := v.al.ensure(b, b+n); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	v.mu.Unlock()
	if !zeroed {
		if err := punchHole(v.f, int64(b)*int64(v.bs), int64(n)*int64(v.bs)); err != nil {
			return ioError("zero "+v.path, err)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var zero Version
	for i := b; i < b+n; i++ {
		if v.version(i) != zero {
			v.setVersion(i, zero)
		}
		if v.present != nil && !v.present.Has(i) {
			v.present.Set(i)
			v.presPages.mark(i / 8)
		}
		for _, p := range v.peers {
			p.markDirty(i)
		}
	}
	return nil
}

// setSelective switches presence tracking on (a fresh, empty presence
// bitmap) or off (every block is held once a full copy completes).
func (v *Volume) setSelective(on bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if on {
		if v.presFile != nil {
			v.presFile.Close()
			v.presFile = nil
		}
		removeFile(v.metaDir, "present")
		if err := v.openPresent(); err != nil {
			return err
		}
		v.presPages.markAll()
	} else if v.present != nil {
		v.presFile.Close()
		v.presFile, v.present = nil, nil
		removeFile(v.metaDir, "present")
	}
	// A copy of the other kind starts over from block 0, and the state
	// that records the new kind says so at once: a crash before the rest
	// of recvFull runs must not leave a selective mirror's few blocks
	// looking like a complete full copy (or the reverse).
	return v.updateStateLocked(func(st *volState) {
		st.Selective = on
		st.Inconsistent, st.FullActive, st.FullNext = true, true, 0
	})
}

func removeFile(dir, name string) { os.Remove(filepath.Join(dir, name)) }
