package replicator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// The synchronous path: Node.Write and Node.Read with per-volume quorums,
// and read-through for selective mirrors. Writes are shipped to every
// mirror as Blocks frames on a long-lived sync-write session; a mirror
// logs them durably (sync log), applies them newest-version-wins, and
// acknowledges. Write returns once W copies (this one included) have the
// data. Reads need R copies to answer and return, block by block, the data
// with the newest version; stale answers are read-repaired (readrepair.go).
// With W + R > copies every read overlaps the last acknowledged write: a
// selective mirror that answers a block as absent never acknowledged a
// write to it (a sync write makes it hold the block), so the overlap is
// among the copies holding it. Async delta cycles still run and find the
// data already held.

// maxReadBlocks bounds one ReadReq.
const maxReadBlocks = 256

// Write writes p at off to the named primary volume through the tracked
// path, then waits until WriteQuorum copies have it. On ErrNoQuorum the
// data is on this copy (and maybe some mirrors) and will still reach every
// mirror through delta cycles; the caller decides whether to retry.
// ErrFenced means a newer primary exists: this copy was deposed.
func (n *Node) Write(ctx context.Context, volume string, p []byte, off int64) error {
	nv, v, err := n.localVolume(volume)
	if err != nil {
		return err
	}
	vers, err := v.writeTracked(p, off)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			n.metrics.fenced.WithLabelValues(volume).Inc()
		}
		return err
	}
	w := max(1, nv.cfg.WriteQuorum)
	if w == 1 {
		return nil
	}
	// Ship the whole blocks the write touched.
	bs := int64(v.bs)
	lo := off / bs
	nb := int64(len(vers))
	buf := make([]byte, nb*bs)
	if _, err := v.f.ReadAt(buf, lo*bs); err != nil {
		return ioError("read "+v.path, err)
	}
	bt := batch{blocks: make([]uint64, nb), vers: vers, data: buf}
	for i := range bt.blocks {
		bt.blocks[i] = uint64(lo) + uint64(i)
	}
	acks, errs := n.fanOut(ctx, nv, wire.OpSyncWrite, func(ctx context.Context, pl *peerLink) error {
		return pl.syncWrite(ctx, &bt)
	})
	// A mirror that refused the write for its epoch has seen a newer
	// primary: this one is deposed, however many other copies (which
	// have not seen that epoch yet) acknowledged.
	for _, e := range errs {
		if errors.Is(e, ErrFenced) {
			v.fence(0)
			n.metrics.fenced.WithLabelValues(volume).Inc()
			return fmt.Errorf("write to %s: %w", volume, e)
		}
	}
	if acks+1 >= w {
		return nil
	}
	return fmt.Errorf("write to %s: %w: %d of %d copies acknowledged: %w", volume, ErrNoQuorum, acks+1, w, errors.Join(errs...))
}

// Read reads len(p) bytes at off. A selective mirror fetches blocks it
// lacks from its upstream first (read-through) and keeps them. With
// ReadQuorum R > 1 the mirrors are asked too, each block comes from the
// copy with the newest version, and copies that answered with an older
// one are repaired in the background (see readRepair). A selective
// mirror's answer for a block it does not hold counts as "no version",
// like a Dynamo replica that lacks a key.
func (n *Node) Read(ctx context.Context, volume string, p []byte, off int64) error {
	nv, v, err := n.localVolume(volume)
	if err != nil {
		return err
	}
	if err := v.checkRange(off, len(p)); err != nil {
		return err
	}
	bs := int64(v.bs)
	lo, hi := uint64(off/bs), uint64((off+int64(len(p))+bs-1)/bs)
	if miss := v.missing(lo, hi); len(miss) > 0 {
		if err := n.readThrough(ctx, nv, v, miss); err != nil {
			return err
		}
	}
	r := max(1, nv.cfg.ReadQuorum)
	if r == 1 {
		_, err := v.ReadAt(p, off)
		return err
	}
	// Quorum read: whole blocks with versions from every copy. This copy
	// answers only as the single-copy path would let it: one whose first
	// copy is incomplete or whose acknowledged cycle failed to apply may
	// hold part of a cycle under older versions, so it neither counts
	// nor answers, as mirrors refuse peers' reads then (serveReads).
	local, lerr := v.readBlocks(lo, hi, func() error { return v.readableLocked(off, len(p)) })
	if lerr != nil && !errors.Is(lerr, ErrInconsistent) {
		return lerr
	}
	self := 1
	// answered: a copy holding the block answered it (not absent).
	answered := make([]bool, hi-lo)
	best := &batch{blocks: make([]uint64, hi-lo), vers: make([]Version, hi-lo), data: make([]byte, (hi-lo)*uint64(v.bs))}
	if lerr == nil {
		copy(best.vers, local.vers)
		copy(best.data, local.data)
		for i := range answered {
			answered[i] = true
		}
	} else {
		self = 0
	}
	for i := range best.blocks {
		best.blocks[i] = lo + uint64(i)
	}
	var mu sync.Mutex
	var answers []readAnswer
	acks, errs := n.fanOut(ctx, nv, wire.OpRead, func(ctx context.Context, pl *peerLink) error {
		got, err := pl.read(ctx, lo, hi, v.bs, true)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		answers = append(answers, readAnswer{pl: pl, got: got})
		for i := range got.vers {
			if got.absent[i] {
				continue
			}
			if !answered[i] || best.vers[i].Less(got.vers[i]) {
				best.vers[i] = got.vers[i]
				copy(best.data[i*v.bs:(i+1)*v.bs], got.data[i*v.bs:(i+1)*v.bs])
			}
			answered[i] = true
		}
		return nil
	})
	if lerr != nil {
		errs = append(errs, fmt.Errorf("this copy: %w", lerr))
	}
	if acks+self < r {
		return fmt.Errorf("read from %s: %w: %d of %d copies answered: %w", volume, ErrNoQuorum, acks+self, r, errors.Join(errs...))
	}
	// Without this copy, a block every answering mirror lacks (selective
	// ones) has no answer at all: zeros would be a made-up value.
	if i := slices.Index(answered, false); i >= 0 {
		return fmt.Errorf("read from %s: %w: no answering copy holds block %d: %w", volume, ErrNoQuorum, lo+uint64(i), errors.Join(errs...))
	}
	// fanOut has returned: no callback touches best or answers any more.
	copy(p, best.data[off-int64(lo)*bs:])
	n.readRepair(v, best, local, answers)
	return nil
}

func (n *Node) localVolume(volume string) (*nodeVolume, *Volume, error) {
	nv, err := n.nodeVolume(volume)
	if err != nil {
		return nil, nil, err
	}
	v, err := n.Volume(volume)
	return nv, v, err
}

// readBlocks reads whole blocks [lo, hi) with their versions, if check
// (nil: none; see readChunk) allows.
func (v *Volume) readBlocks(lo, hi uint64, check func() error) (*batch, error) {
	n := hi - lo
	bt := &batch{blocks: make([]uint64, n), vers: make([]Version, n), data: make([]byte, n*uint64(v.bs)), hole: make([]bool, n)}
	for i := range bt.blocks {
		bt.blocks[i] = lo + uint64(i)
	}
	if err := v.readChunk(bt, nil, check); err != nil {
		return nil, err
	}
	for i, h := range bt.hole {
		if h {
			clear(bt.data[i*v.bs : (i+1)*v.bs])
		}
	}
	return bt, nil
}

// fanOut runs f against every mirror of the volume in parallel and counts
// successes.
func (n *Node) fanOut(ctx context.Context, nv *nodeVolume, op wire.Op, f func(context.Context, *peerLink) error) (int, []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	acks := 0
	var errs []error
	for _, m := range nv.cfg.Mirrors {
		p, err := n.peer(m.Peer)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		remote := m.Volume
		if remote == "" {
			remote = nv.cfg.Name
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pl, err := p.links.get(ctx, nv.cfg.Name, remote, op)
			if err == nil {
				if err = f(ctx, pl); err != nil {
					p.links.drop(pl)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.Peer, err))
				return
			}
			acks++
		}()
	}
	wg.Wait()
	return acks, errs
}

// readThrough fetches blocks a selective mirror lacks from its upstream,
// verifies and stores them. Concurrent readers of the same blocks fetch
// them once per call at worst; storing is newest-version-wins so a fetch
// racing a delta cycle cannot go back in time.
func (n *Node) readThrough(ctx context.Context, nv *nodeVolume, v *Volume, blocks []uint64) error {
	// A fetched block older than a version a delta cycle announced for it
	// meanwhile (see decide) is not stored, nor is an answer from an
	// upstream SetUpstream replaced meanwhile: fetch what is still
	// missing again, from the upstream of the moment.
	for attempt := 0; len(blocks) > 0; attempt++ {
		if attempt == readThroughAttempts {
			return fmt.Errorf("volume %s: %w: %d blocks still not held after %d read-through attempts", v.name, ErrInconsistent, len(blocks), attempt)
		}
		up := nv.upstream()
		if up.peer == "" {
			return fmt.Errorf("volume %s: %w: %d blocks not held and no upstream configured", v.name, ErrInconsistent, len(blocks))
		}
		p, err := n.peer(up.peer)
		if err != nil {
			return err
		}
		fctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(up.cut, cancel)
		err = n.fetchBlocks(fctx, nv, v, p, up, blocks)
		stop()
		cancel()
		if err != nil {
			if nv.upGen.Load() == up.gen || ctx.Err() != nil {
				return err
			}
			n.log.Info("read-through from a former upstream failed or was discarded; fetching from the new one",
				"volume", v.name, "former_upstream", up.peer, "err", err)
		}
		blocks = v.missingOf(blocks)
	}
	return nil
}

// readThroughAttempts bounds the fetches of blocks that keep changing.
const readThroughAttempts = 5

// errUpstreamMoved: an answer came from a peer that is no longer the
// volume's upstream; it was not stored.
var errUpstreamMoved = errors.New("the volume's upstream changed during the fetch")

// missingOf returns the blocks of bs a selective mirror still lacks.
func (v *Volume) missingOf(bs []uint64) []uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.present == nil {
		return nil
	}
	var out []uint64
	for _, b := range bs {
		if !v.present.Has(b) {
			out = append(out, b)
		}
	}
	return out
}

// fetchBlocks is one read-through pass over blocks from up (the peer p).
func (n *Node) fetchBlocks(ctx context.Context, nv *nodeVolume, v *Volume, p *nodePeer, up upstream, blocks []uint64) error {
	pl, err := p.links.get(ctx, nv.cfg.Name, up.volume, wire.OpRead)
	if err != nil {
		return fmt.Errorf("read-through from %s: %w", up.peer, err)
	}
	if h := n.hooks.fetching; h != nil {
		h(nv.cfg.Name, up.peer)
	}
	for i := 0; i < len(blocks); {
		// Fetch contiguous runs.
		j := i + 1
		for j < len(blocks) && blocks[j] == blocks[j-1]+1 && j-i < maxReadBlocks {
			j++
		}
		got, err := pl.read(ctx, blocks[i], blocks[j-1]+1, v.bs, false)
		if err != nil {
			p.links.drop(pl)
			return fmt.Errorf("read-through from %s: %w", up.peer, err)
		}
		epoch := pl.vouchEpoch()
		items := make([]recvItem, len(got.blocks))
		for k := range got.blocks {
			items[k] = recvItem{block: got.blocks[k], ver: got.vers[k], data: got.data[k*v.bs : (k+1)*v.bs], epoch: uint32(epoch)}
		}
		v.io.Lock()
		// Checked under the io lock the store holds: an answer is stored
		// only if the upstream did not change before it was.
		if nv.upGen.Load() != up.gen {
			v.io.Unlock()
			if nv.upstream().peer != up.peer {
				// Nothing reads through from the former upstream now.
				p.links.drop(pl)
			}
			return fmt.Errorf("read-through from %s: %w", up.peer, errUpstreamMoved)
		}
		if h := n.hooks.storing; h != nil {
			h(nv.cfg.Name, up.peer)
		}
		err = v.applyLocked(items, false)
		v.io.Unlock()
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

// --- client links -----------------------------------------------------------

// linkPool keeps one session per (local volume, remote volume, op) open
// to a peer: sync writes and reads.
type linkPool struct {
	n     *Node
	p     *nodePeer
	mu    sync.Mutex
	links map[string]*peerLink
}

// peerLink is a long-lived session used one request at a time.
type peerLink struct {
	pool   *linkPool
	mu     sync.Mutex
	key    string
	l      *link
	cancel context.CancelFunc
	seq    uint64
	enc    *encoder
	dec    *zstd.Decoder
	local  string
	remote string
	epoch  uint64 // the session's Hello epoch
	// vouch is the epoch the peer vouches for all the data it ships
	// with, as a cycle's sender does: local versions of older epochs lose
	// to it. Only an unfenced primary does (its Welcome epoch, with
	// WelcomePrimary); 0 otherwise, so versions alone decide. A mirror's
	// or a fenced primary's Welcome epoch is the newest it has seen, not
	// the epoch of the data it holds: a deposed or lagging copy reports
	// a newer epoch than its data, which would then beat versions of the
	// epochs in between that it never received.
	vouch uint64
}

func newLinkPool(n *Node, p *nodePeer) *linkPool {
	return &linkPool{n: n, p: p, links: map[string]*peerLink{}}
}

func (lp *linkPool) get(ctx context.Context, local, remote string, op wire.Op) (*peerLink, error) {
	key := fmt.Sprintf("%s\x00%s\x00%d", local, remote, op)
	lp.mu.Lock()
	pl := lp.links[key]
	if pl == nil {
		pl = &peerLink{pool: lp, key: key, local: local, remote: remote}
		lp.links[key] = pl
	}
	lp.mu.Unlock()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	v, err := lp.n.Volume(local)
	if err != nil {
		return nil, err
	}
	if pl.l != nil && pl.epoch == v.Epoch() {
		return pl, nil
	}
	// A session announces the epoch in its Hello and the peer refuses
	// blocks of a newer one: after a promotion, open a new session.
	pl.closeLocked()
	// The session outlives the request that opened it; closeAll ends it.
	lctx, cancel := context.WithCancel(context.Background())
	hello := lp.n.hello(v, op, remote)
	type result struct {
		l   *link
		w   *wire.Welcome
		err error
	}
	ch := make(chan result, 1)
	go func() {
		dc := lp.n.dialConfig(lp.p)
		// Interactive traffic is neither throttled, sampled nor measured.
		dc.rtt, dc.meter = nil, nil
		l, w, err := dial(lctx, dc, hello)
		ch <- result{l, w, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		cancel()
		r = <-ch
		if r.l != nil {
			r.l.close()
		}
		return nil, ctx.Err()
	}
	if r.err != nil {
		cancel()
		return nil, r.err
	}
	r.l.limiter = nil // interactive traffic is not throttled
	enc, err := newEncoder(v.bs, CompressOff)
	if err != nil {
		cancel()
		r.l.close()
		return nil, err
	}
	pl.l, pl.cancel, pl.enc, pl.epoch, pl.vouch = r.l, cancel, enc, hello.Epoch, 0
	if r.w.Flags&wire.WelcomePrimary != 0 {
		pl.vouch = r.w.Epoch
	}
	return pl, nil
}

// vouchEpoch is the epoch the peer vouched for its data with when the
// link was opened (see peerLink.vouch).
func (pl *peerLink) vouchEpoch() uint64 {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.vouch
}

// drop closes a link after an error; the next get redials.
func (lp *linkPool) drop(pl *peerLink) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.closeLocked()
}

func (pl *peerLink) closeLocked() {
	if pl.l != nil {
		pl.l.close()
		pl.cancel()
		pl.l = nil
	}
	if pl.enc != nil {
		pl.enc.close()
		pl.enc = nil
	}
	if pl.dec != nil {
		pl.dec.Close()
		pl.dec = nil
	}
}

func (lp *linkPool) closeAll() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	for _, pl := range lp.links {
		pl.mu.Lock()
		pl.closeLocked()
		pl.mu.Unlock()
	}
}

// syncWrite ships one write and waits for its acknowledgement. The batch
// is shared by every peer's goroutine, so it is copied before encoding.
func (pl *peerLink) syncWrite(ctx context.Context, shared *batch) error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.l == nil {
		return ErrClosed
	}
	pl.seq++
	b := batch{seq: pl.seq, blocks: shared.blocks, vers: shared.vers, data: shared.data, hole: shared.hole, exact: true}
	bt := &b
	frame, _, err := pl.enc.encode(bt)
	if err != nil {
		return err
	}
	// The connection, not pl.l: the function may run after a drop has
	// cleared pl.l.
	conn := pl.l.conn
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := pl.l.sendFrame(ctx, frame); err != nil {
		return err
	}
	var a wire.Ack
	if err := pl.l.read(&a); err != nil {
		return err
	}
	if a.Kind != wire.AckWrite || a.Seq != pl.seq {
		return fmt.Errorf("%w: write %d acknowledged as %d/%d", ErrProtocol, pl.seq, a.Kind, a.Seq)
	}
	return nil
}

// read fetches blocks [lo, hi) with versions, verified. With held (and a
// protocol 2 peer) blocks the peer does not hold come back marked absent
// instead of being fetched by the peer from its own upstream.
func (pl *peerLink) read(ctx context.Context, lo, hi uint64, bs int, held bool) (*batch, error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.l == nil {
		return nil, ErrClosed
	}
	// The connection, not pl.l: the function may run after a drop has
	// cleared pl.l.
	conn := pl.l.conn
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var flags uint8
	if held && pl.l.proto >= 2 {
		flags = wire.ReadHeld
	}
	out := &batch{data: make([]byte, 0, (hi-lo)*uint64(bs)), absent: make([]bool, 0, hi-lo)}
	for b := lo; b < hi; b += maxReadBlocks {
		cnt := min(maxReadBlocks, hi-b)
		if err := pl.l.send(&wire.ReadReq{Block: b, Count: uint32(cnt), Flags: flags}); err != nil {
			return nil, err
		}
		var m wire.Blocks
		if err := pl.l.read(&m); err != nil {
			return nil, err
		}
		next := b
		for i := range m.Entries {
			e := &m.Entries[i]
			if e.Block != next || uint64(max(e.Count, 1)) > b+cnt-next {
				return nil, fmt.Errorf("%w: read answer has block %d+%d, expected %d..%d", ErrProtocol, e.Block, e.Count, next, b+cnt)
			}
			if e.Kind == wire.KindAbsent {
				if flags&wire.ReadHeld == 0 {
					return nil, fmt.Errorf("%w: read answer has absent blocks %d+%d", ErrProtocol, e.Block, e.Count)
				}
				for range e.Count {
					out.blocks = append(out.blocks, next)
					out.vers = append(out.vers, Version{})
					out.absent = append(out.absent, true)
					out.data = append(out.data, make([]byte, bs)...)
					next++
				}
				continue
			}
			if e.Kind == wire.KindZstd && pl.dec == nil {
				d, err := wire.NewDecoder()
				if err != nil {
					return nil, err
				}
				pl.dec = d
			}
			data, err := e.Plain(bs, pl.dec, make([]byte, 0, bs))
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			for k := uint64(0); k < uint64(max(e.Count, 1)); k++ {
				out.blocks = append(out.blocks, next)
				out.vers = append(out.vers, e.Version)
				out.absent = append(out.absent, false)
				if data == nil {
					out.data = append(out.data, make([]byte, bs)...)
				} else {
					out.data = append(out.data, data...)
				}
				next++
			}
		}
		if next != b+cnt {
			return nil, fmt.Errorf("%w: read answer ends at block %d, expected %d", ErrProtocol, next, b+cnt)
		}
	}
	return out, nil
}

// --- server side ---------------------------------------------------------------

// nextRequest reads the next request of a long-lived session into m and
// returns the volume to serve it from; a nil volume ends the session (with
// a nil error when the client closed).
func (s *session) nextRequest(m wire.Message) (*Volume, error) {
	if err := s.l.read(m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	v := s.volume()
	if v == nil {
		return nil, fmt.Errorf("%w: volume %s holds no copy yet", ErrInconsistent, s.hello.Volume)
	}
	return v, nil
}

// serveReads answers ReadReq frames until the client closes.
func (s *session) serveReads(ctx context.Context) error {
	enc, err := newEncoder(DefaultBlockSize, CompressAuto)
	if err != nil {
		return err
	}
	defer enc.close()
	for {
		var req wire.ReadReq
		v, err := s.nextRequest(&req)
		if v == nil {
			return err
		}
		// Block first: Block+Count can wrap past 2^64 to a small number.
		if req.Block >= v.blocks || uint64(req.Count) > v.blocks-req.Block || req.Count > maxReadBlocks {
			return fmt.Errorf("%w: read of blocks %d+%d outside %d", ErrProtocol, req.Block, req.Count, v.blocks)
		}
		// A copy of another volume (or none yet) must not answer: its
		// versions would compete with the reader's own data.
		if err := s.checkLineage(v); err != nil {
			return err
		}
		// Nor one that may not serve reads (checked again below under the
		// io lock): refused before it reads anything through.
		if err := v.servable(); err != nil {
			return err
		}
		hi := req.Block + uint64(req.Count)
		held := req.Flags&wire.ReadHeld != 0
		if miss := v.missing(req.Block, hi); len(miss) > 0 && !held {
			if err := s.n.readThrough(ctx, s.nv, v, miss); err != nil {
				return err
			}
		}
		// A copy whose acknowledged cycle failed to apply (its image may
		// hold part of the cycle under the previous versions) or a full
		// mirror whose copy is incomplete does not answer: checked under
		// the io lock the read holds, which a failing apply sets its mark
		// under.
		bt, err := v.readBlocks(req.Block, hi, v.servableLocked)
		if err != nil {
			return err
		}
		if held {
			// Asked after reading: presence only grows, so a block still
			// missing now was missing when read and its answer is "absent"
			// rather than whatever the image holds there.
			if miss := v.missing(req.Block, hi); len(miss) > 0 {
				bt.absent = make([]bool, len(bt.blocks))
				for _, b := range miss {
					bt.absent[b-req.Block] = true
				}
			}
		}
		enc.bs = v.bs
		frame, _, err := enc.encode(bt)
		if err != nil {
			return err
		}
		if err := s.l.sendFrame(ctx, frame); err != nil {
			return err
		}
	}
}

// serveSyncWrites applies synchronous writes: verify the frame, log it
// durably, apply newest-version-wins, acknowledge.
func (s *session) serveSyncWrites(ctx context.Context) error {
	var dec *zstd.Decoder
	defer func() {
		if dec != nil {
			dec.Close()
		}
	}()
	for {
		var m wire.Blocks
		v, err := s.nextRequest(&m)
		if v == nil {
			return err
		}
		epoch := v.Epoch()
		// As for a cycle: only a copy of the sender's volume takes its
		// writes, never an empty mirror or one holding another volume.
		if err := s.checkLineage(v); err != nil {
			return err
		}
		items := make([]recvItem, 0, len(m.Entries))
		sums := make([]uint64, 0, len(m.Entries))
		for i := range m.Entries {
			e := &m.Entries[i]
			if e.Kind == wire.KindZeroRange || e.Kind == wire.KindAbsent || e.Block >= v.blocks {
				return fmt.Errorf("%w: sync write of block %d", ErrProtocol, e.Block)
			}
			if uint64(e.Version.Epoch) > s.hello.Epoch {
				// As in a cycle's manifest: the sender cannot have written
				// under an epoch newer than its own, and such a version
				// would beat every write up to that epoch.
				return fmt.Errorf("%w: sync write of block %d version from epoch %d in a session of epoch %d", ErrProtocol, e.Block, e.Version.Epoch, s.hello.Epoch)
			}
			if uint64(e.Version.Epoch) < epoch {
				s.n.metrics.fenced.WithLabelValues(v.name).Inc()
				return fmt.Errorf("%w: write from epoch %d, volume %s is at epoch %d", ErrFenced, e.Version.Epoch, v.name, epoch)
			}
			if e.Kind == wire.KindZstd && dec == nil {
				d, err := wire.NewDecoder()
				if err != nil {
					return err
				}
				dec = d
			}
			data, err := e.Plain(v.bs, dec, make([]byte, 0, v.bs))
			if err != nil {
				return fmt.Errorf("%w: %w; write %d rejected", ErrCorrupt, err, m.Seq)
			}
			items = append(items, recvItem{block: e.Block, ver: e.Version, data: data})
			sums = append(sums, e.Sum)
		}
		swal, err := s.syncLog(v)
		if err != nil {
			return err
		}
		if err := swal.write(v, items, sums); err != nil {
			return err
		}
		if err := s.l.send(&wire.Ack{Kind: wire.AckWrite, Seq: m.Seq}); err != nil {
			return err
		}
	}
}

func (s *session) syncLog(v *Volume) (*syncLog, error) {
	s.nv.mu.Lock()
	defer s.nv.mu.Unlock()
	if s.nv.swal == nil {
		j, err := openJournal(syncLogPath(v.metaDir))
		if err != nil {
			return nil, err
		}
		s.nv.swal = &syncLog{j: j}
	}
	return s.nv.swal, nil
}

// syncLog is a volume's log of synchronous writes.
type syncLog struct {
	mu sync.Mutex
	j  *journal
}

func (l *syncLog) write(v *Volume, items []recvItem, sums []uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.j.stage(items, sums); err != nil {
		return err
	}
	if err := l.j.sync(); err != nil {
		return err
	}
	v.io.Lock()
	defer v.io.Unlock()
	return v.applyLocked(items, false)
}

// checkpoint flushes the volume and empties the log.
func (l *syncLog) checkpoint(v *Volume) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := v.Flush(); err != nil {
		return err
	}
	if l.j.size == 0 {
		return nil
	}
	return l.j.reset()
}

func (l *syncLog) close() { l.j.Close() }
