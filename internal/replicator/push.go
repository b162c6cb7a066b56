package replicator

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// chunkBlocks is the number of blocks per Blocks frame of a full copy:
// 256 (1 MiB at 4 KiB), large enough that per-frame costs (a syscall, a
// checksum, a goroutine hand-off) vanish, small enough to keep a few in
// flight without much memory.
const chunkBlocks = 1024

// manifestChunk is the number of entries per Manifest frame.
const manifestChunk = 64 << 10

// PushOptions configure Node.Push.
type PushOptions struct {
	// Mode: ModeFull copies every block (resuming an interrupted copy)
	// and then runs a delta cycle; ModeSelective copies Extents (and
	// HotExtents) and then runs a delta cycle; ModeDelta runs one delta
	// cycle, preceded by InitialMode's copy when the mirror has none.
	Mode Mode
	// InitialMode is the first copy ModeDelta makes of an empty mirror:
	// ModeFull (default) or ModeSelective.
	InitialMode Mode
	// RemoteVolume is the volume name at the peer; default the local name.
	RemoteVolume string
	// Extents (in blocks) a selective copy sends.
	Extents []Extent
	// HotExtents adds the k most-read 4 MiB extents to a selective copy.
	HotExtents int
	// Restart makes a full copy start at block 0 even if one could resume.
	Restart bool
	// Compression policy; default CompressAuto.
	Compression Compression
	// OnProgress receives progress at most every 100 ms and at the end.
	OnProgress func(Progress)
}

// PushResult reports what a push did.
type PushResult struct {
	Full          bool          `json:"full"`             // a full or selective copy ran
	Resumed       bool          `json:"resumed"`          // it resumed an interrupted copy
	ResumeFrom    uint64        `json:"resume_from"`      // first block it sent
	FullDataBlks  uint64        `json:"full_data_blocks"` // data blocks the copy sent
	ZeroBlocks    uint64        `json:"zero_blocks"`      // blocks not sent because zero or sparse
	FullDuration  time.Duration `json:"full_ns"`
	Cycle         uint64        `json:"cycle"`         // committed cycle number
	CycleEntries  uint64        `json:"cycle_entries"` // blocks in the cycle
	CycleSent     uint64        `json:"cycle_sent"`    // of which data was sent
	CycleHeld     uint64        `json:"cycle_held"`    // of which the mirror already held the data
	CycleDuration time.Duration `json:"cycle_ns"`
	WireBytes     int64         `json:"wire_bytes"` // bytes sent on the connection, TLS included
	Duration      time.Duration `json:"duration_ns"`
}

// Push replicates volume to peer once (see PushOptions.Mode). It is what
// the background mirror loop and `edge-agent replicate push` call.
func (n *Node) Push(ctx context.Context, volume, peer string, o PushOptions) (PushResult, error) {
	start := time.Now()
	var res PushResult
	v, p, err := n.volumeAndPeer(volume, peer)
	if err != nil {
		return res, err
	}
	st := v.state()
	switch {
	case st.Fenced:
		return res, fmt.Errorf("volume %s: %w: epoch %d was superseded; this copy may not be pushed", volume, ErrFenced, st.Epoch)
	case st.Role == RoleMirror && (st.Inconsistent || st.Selective):
		return res, fmt.Errorf("volume %s: %w: an incomplete or selective mirror cannot feed another", volume, ErrInconsistent)
	}
	if err := v.AddPeer(peer); err != nil {
		return res, err
	}
	if o.Mode == "" {
		o.Mode = ModeDelta
	}
	if o.RemoteVolume == "" {
		o.RemoteVolume = volume
	}
	op := map[Mode]wire.Op{ModeFull: wire.OpFull, ModeSelective: wire.OpSelective, ModeDelta: wire.OpDelta}[o.Mode]
	if op == 0 {
		return res, fmt.Errorf("push mode %q: want full, delta or selective", o.Mode)
	}
	hello := n.hello(v, op, o.RemoteVolume)
	l, w, err := dial(ctx, n.dialConfig(p), hello)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			v.fence(0)
		}
		return res, err
	}
	defer l.close()
	ourLineage := hello.Lineage
	mode := o.Mode
	if mode == ModeDelta {
		switch {
		case w.Flags&wire.WelcomeEmpty != 0:
			mode = o.InitialMode
			if mode == "" {
				mode = ModeFull
			}
		case w.Lineage != ourLineage:
			return res, fmt.Errorf("%w: mirror %s at %s holds volume %s, this is %s; push a full copy to replace it",
				ErrLineage, o.RemoteVolume, peer, lineageString(w.Lineage), lineageString(ourLineage))
		case w.Flags&wire.WelcomeFullActive != 0:
			mode = ModeFull
			if w.Flags&wire.WelcomeSelective != 0 {
				mode = ModeSelective
			}
		}
	}
	if mode == ModeFull || mode == ModeSelective {
		fs := time.Now()
		if err := n.sendFull(ctx, l, w, v, peer, mode, o, &res); err != nil {
			return res, n.pushError(v, err)
		}
		res.Full = true
		res.FullDuration = time.Since(fs)
	}
	cs := time.Now()
	if err := n.runCycle(ctx, l, w, v, peer, nil, o, &res); err != nil {
		return res, n.pushError(v, err)
	}
	res.CycleDuration = time.Since(cs)
	res.WireBytes = l.raw.tx.Load()
	res.Duration = time.Since(start)
	return res, nil
}

func (n *Node) volumeAndPeer(volume, peer string) (*Volume, *nodePeer, error) {
	v, err := n.Volume(volume)
	if err != nil {
		return nil, nil, err
	}
	p, err := n.peer(peer)
	if err != nil {
		return nil, nil, err
	}
	return v, p, nil
}

// pushError fences the local volume when the peer reports a newer epoch.
func (n *Node) pushError(v *Volume, err error) error {
	if errors.Is(err, ErrFenced) {
		v.fence(0)
	}
	return err
}

// hello builds the Hello for a session about v.
func (n *Node) hello(v *Volume, op wire.Op, remote string) *wire.Hello {
	st := v.state()
	return &wire.Hello{MinProto: n.protoMin, MaxProto: n.protoMax, Op: op, Node: n.cfg.Node, Volume: remote,
		Lineage: lineageBytes(dataLineage(st)), BlockSize: uint32(v.bs), Blocks: v.blocks, Epoch: st.Epoch}
}

// dataLineage is the identity of the data a volume holds: its own
// lineage, or for a mirror its source's.
func dataLineage(st volState) string {
	if st.Role == RoleMirror && st.SourceLineage != "" {
		// A cascaded mirror ships its source's data under its lineage.
		return st.SourceLineage
	}
	return st.Lineage
}

// checkLineage refuses to serve or take the blocks of a session whose
// peer holds another volume's data (or, here, an empty mirror).
func (s *session) checkLineage(v *Volume) error {
	if lin, peer := dataLineage(v.state()), lineageString(s.hello.Lineage); lin != peer {
		return fmt.Errorf("%w: volume %s holds data of volume %s, the peer's is %s", ErrLineage, v.name, lin, peer)
	}
	return nil
}

func (n *Node) dialConfig(p *nodePeer) dialConfig {
	name := p.cfg.Name
	// A configuration per connection: the CA bundle and CRL current now.
	// The peer is its certificate's common name (PeerConfig.Name): a
	// certificate of the CA for another node is refused even where it is
	// valid for the address dialed.
	dc := dialConfig{addr: p.cfg.Addr, tls: n.tlsSrc.ClientConfigFor(p.cfg.ServerName, []string{name}), limiter: p.limiter, meter: p.delivered,
		onWrite: func(k int) { n.metrics.sentBytes.WithLabelValues(name).Add(float64(k)) },
		onRead:  func(k int) { n.metrics.recvBytes.WithLabelValues(name).Add(float64(k)) },
		track:   n.live.add}
	if p.cfg.RateControl != nil {
		dc.rtt = p.limiter.ObserveRTT
	}
	return dc
}

// fullJob is one chunk moving through the full-copy pipeline.
type fullJob struct {
	b     batch
	frame outFrame
	st    encStats
	err   error
	done  chan struct{}
}

// sendFull streams every block (or the selected extents) from the resume
// point. A reader goroutine reads 1 MiB chunks (skipping holes the file
// system reports), encoder goroutines hash and compress them into frames,
// and this goroutine writes frames in order, throttled; a fourth reads
// acknowledgements. Reads, hashing, encryption and the network overlap.
func (n *Node) sendFull(ctx context.Context, l *link, w *wire.Welcome, v *Volume, peer string, mode Mode, o PushOptions, res *PushResult) (err error) {
	lineage := n.hello(v, wire.OpFull, "").Lineage
	startBlk := uint64(0)
	// Only a copy of the same kind resumes: a full copy resumed as a
	// selective one would leave the blocks past the resume point outside
	// the extents unsent at a mirror that tracks no presence.
	sameKind := (w.Flags&wire.WelcomeSelective != 0) == (mode == ModeSelective)
	if w.Flags&wire.WelcomeFullActive != 0 && w.Lineage == lineage && sameKind && !o.Restart {
		startBlk = w.FullNext
		res.Resumed = true
	}
	res.ResumeFrom = startBlk
	fb := wire.FullBegin{Session: randomU64(), Start: startBlk, End: v.blocks}
	var extents []Extent
	if mode == ModeSelective {
		fb.Flags = wire.FullSelective
		extents = normalizeExtents(append(append([]Extent(nil), o.Extents...), v.HotExtents(o.HotExtents, alExtentBlocks)...), v.blocks)
		fb.Extents = extents
	}
	if err := l.send(&fb); err != nil {
		return err
	}
	// The mirror acknowledges FullBegin once its state says a copy is in
	// progress. Only then is this peer's change tracking reset: a crash
	// in between leaves a mirror that asks for the copy to resume.
	var ack wire.Ack
	if err := l.read(&ack); err != nil {
		return err
	}
	if ack.Kind != wire.AckFull || ack.Value != startBlk {
		return fmt.Errorf("%w: full copy start acknowledged as %d/%d", ErrProtocol, ack.Kind, ack.Value)
	}
	if startBlk == 0 {
		if err := v.resetPeer(peer); err != nil {
			return err
		}
	}
	total := int64(countBlocks(startBlk, v.blocks, extents)) * int64(v.bs)
	tr := newTracker(n.metrics, v.name, peer, mode, total, o.OnProgress, l.raw.tx.Load)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		if err != nil {
			l.conn.Close() // unblocks the acknowledgement reader
		}
		wg.Wait()
	}()

	// Acknowledgements.
	ackErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var a wire.Ack
			if err := l.read(&a); err != nil {
				ackErr <- err
				cancel()
				return
			}
			switch a.Kind {
			case wire.AckFull:
				tr.setAcked(int64(a.Value-startBlk) * int64(v.bs))
			case wire.AckFullEnd:
				ackErr <- nil
				return
			default:
				ackErr <- fmt.Errorf("%w: unexpected %d ack during a full copy", ErrProtocol, a.Kind)
				cancel()
				return
			}
		}
	}()

	workers := max(1, runtime.GOMAXPROCS(0)-1)
	const inflight = 4
	bufs := make(chan *batch, inflight)
	for range inflight {
		bufs <- &batch{data: make([]byte, chunkBlocks*v.bs)}
	}
	jobs := make(chan *fullJob, inflight)
	order := make(chan *fullJob, inflight)
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(jobs)
		readErr = v.readChunks(ctx, startBlk, v.blocks, extents, bufs, func(b *batch) bool {
			j := &fullJob{b: *b, done: make(chan struct{})}
			select {
			case <-ctx.Done():
				return false
			case order <- j:
			}
			jobs <- j
			return true
		})
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc, err := newEncoder(v.bs, o.Compression)
			if err != nil {
				for j := range jobs {
					j.err = err
					close(j.done)
				}
				return
			}
			defer enc.close()
			enc.corrupt = n.hooks.corrupt
			for j := range jobs {
				if ctx.Err() != nil {
					j.err = ctx.Err()
				} else {
					j.frame, j.st, j.err = enc.encode(&j.b)
				}
				close(j.done)
			}
		}()
	}

	var seq uint64
	var sendErr error
	for j := range order {
		<-j.done
		if sendErr == nil && j.err != nil {
			sendErr = j.err
		}
		if sendErr == nil {
			seq++
			if err := l.sendFrame(ctx, j.frame); err != nil {
				sendErr = err
			}
		}
		if sendErr == nil {
			res.FullDataBlks += uint64(j.st.dataBlocks)
			res.ZeroBlocks += uint64(j.st.zeroBlocks)
			n.metrics.blocksSent.WithLabelValues(peer, string(mode)).Add(float64(j.st.dataBlocks))
			n.metrics.blocksSkipped.WithLabelValues("zero").Add(float64(j.st.zeroBlocks))
			tr.add(int64(len(j.b.blocks)) * int64(v.bs))
		}
		bufs <- &batch{data: j.b.data[:cap(j.b.data)], zbuf: j.b.zbuf, head: j.b.head}
		if sendErr != nil {
			cancel()
		}
	}
	if sendErr == nil && readErr != nil {
		sendErr = readErr
	}
	if sendErr == nil {
		sendErr = l.send(&wire.FullEnd{Session: fb.Session, Next: v.blocks, Sent: res.FullDataBlks})
	}
	if sendErr != nil {
		cancel()
		return settle(parent, sendErr, ackErr)
	}
	if aerr := <-ackErr; aerr != nil {
		return verdict(parent, nil, aerr)
	}
	tr.setAcked(total)
	tr.finish()
	return nil
}

// readChunks reads blocks [from, to) (restricted to extents when given)
// in chunks and passes them to emit, which returns false to stop.
func (v *Volume) readChunks(ctx context.Context, from, to uint64, extents []Extent, bufs chan *batch, emit func(*batch) bool) error {
	if extents == nil {
		extents = []Extent{{Start: 0, Count: v.blocks}}
	}
	bs := uint64(v.bs)
	dm := newDataMap(v.f, v.Size())
	for _, e := range extents {
		lo, hi := max(e.Start, from), min(e.Start+e.Count, to)
		for b := lo; b < hi; {
			n := min(uint64(chunkBlocks), hi-b)
			var bt *batch
			select {
			case <-ctx.Done():
				return ctx.Err()
			case bt = <-bufs:
			}
			bt.blocks, bt.vers, bt.hole = make([]uint64, n), make([]Version, n), make([]bool, n)
			bt.data = bt.data[:n*bs]
			for i := range bt.blocks {
				bt.blocks[i] = b + uint64(i)
			}
			if err := v.readChunk(bt, dm, nil); err != nil {
				return err
			}
			if !emit(bt) {
				return ctx.Err()
			}
			b += n
		}
	}
	return nil
}

// readChunk fills a batch of contiguous blocks: versions first, then data,
// under the shared io lock so no write lands in between (a write after
// the versions were read would otherwise ship new data under an old
// version, which the next cycle would then wrongly consider held).
// Regions the file system reports as holes are not read. A non-nil check
// runs first with the locks held (v.mu too), so the state it checks, such
// as a failed apply's mark (set under the io lock), holds for the data.
func (v *Volume) readChunk(bt *batch, dm *dataMap, check func() error) error {
	bs := int64(v.bs)
	first := int64(bt.blocks[0])
	n := int64(len(bt.blocks))
	start, end := first*bs, (first+n)*bs
	v.io.RLock()
	defer v.io.RUnlock()
	v.mu.Lock()
	if check != nil {
		if err := check(); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	for i, b := range bt.blocks {
		bt.vers[i] = v.version(b)
	}
	v.mu.Unlock()
	for i := range bt.hole {
		bt.hole[i] = true
	}
	if dm == nil {
		dm = newDataMap(v.f, v.Size())
	}
	for pos := start; pos < end; {
		ds, de, ok := dm.next(pos, end)
		if !ok {
			break
		}
		ds = ds / bs * bs
		de = min((de+bs-1)/bs*bs, end)
		if _, err := v.f.ReadAt(bt.data[ds-start:de-start], ds); err != nil {
			return ioError("read "+v.path, err)
		}
		for b := (ds - start) / bs; b < (de-start)/bs; b++ {
			bt.hole[b] = false
		}
		pos = de
	}
	return nil
}

// resetPeer forgets the peer's change tracking (a full copy follows) and
// makes that durable.
func (v *Volume) resetPeer(peer string) error {
	v.mu.Lock()
	if p := v.peers[peer]; p != nil {
		p.reset()
	}
	v.mu.Unlock()
	return v.Flush()
}

func countBlocks(from, to uint64, extents []Extent) uint64 {
	if extents == nil {
		return to - from
	}
	var c uint64
	for _, e := range extents {
		lo, hi := max(e.Start, from), min(e.Start+e.Count, to)
		if hi > lo {
			c += hi - lo
		}
	}
	return c
}

// normalizeExtents clips extents to the volume, sorts and merges them.
func normalizeExtents(es []Extent, blocks uint64) []Extent {
	var out []Extent
	for _, e := range es {
		if e.Start >= blocks || e.Count == 0 {
			continue
		}
		e.Count = min(e.Count, blocks-e.Start)
		out = append(out, e)
	}
	sortExtents(out)
	merged := out[:0]
	for _, e := range out {
		if k := len(merged); k > 0 && e.Start <= merged[k-1].Start+merged[k-1].Count {
			merged[k-1].Count = max(merged[k-1].Count, e.Start+e.Count-merged[k-1].Start)
			continue
		}
		merged = append(merged, e)
	}
	if merged == nil {
		merged = []Extent{}
	}
	return merged
}

func sortExtents(es []Extent) {
	slices.SortFunc(es, func(a, b Extent) int { return cmp.Compare(a.Start, b.Start) })
}

func randomU64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// peerErrorGrace bounds how long a push that failed for a local reason,
// on a connection that still works, waits for an error the peer may have
// sent at the same moment.
const peerErrorGrace = time.Second

// settle returns the error a push session that failed locally (local)
// reports, given the channel on which the goroutine reading the peer's
// frames publishes its single result. That goroutine publishes before
// it cancels the session, so when the peer's rejection caused the local
// failure (a cancelled context, a write to the connection the peer
// closed) the rejection is already there. The session's context must be
// cancelled before the call, so the reader is not blocked handing over
// frames.
func settle(parent context.Context, local error, remote <-chan error) error {
	var rerr error
	select {
	case rerr = <-remote:
	default:
		if connFailed(local) || parent.Err() != nil {
			// The connection is dead (or being closed by the link's
			// context watcher): the reader drains what the peer sent
			// before it went away and ends, so wait for it.
			rerr = <-remote
		} else {
			select {
			case rerr = <-remote:
			case <-time.After(peerErrorGrace):
			}
		}
	}
	return verdict(parent, local, rerr)
}

// verdict picks what a failed push session reports: the peer's reason
// first (its Error frame, a bad frame, the connection it dropped), then
// the caller's cancellation (whatever failed locally after it was most
// likely caused by the link closing), then the local error. Errors the
// session's own teardown causes (its cancelled context, reads on the
// connection it closed) are never the peer's reason.
func verdict(parent context.Context, local, remote error) error {
	switch {
	case remote != nil && !teardown(remote):
		return remote
	case parent.Err() != nil:
		return parent.Err()
	case local != nil:
		return local
	}
	return remote
}

// teardown reports whether err is a consequence of this side ending the
// session rather than a reason for it ending.
func teardown(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// connFailed reports whether err is a failure of the connection itself,
// after which reads end without waiting for the peer.
func connFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// runCycle ships one delta cycle (forced nil) or a repair cycle of the
// given blocks, and waits until the mirror has applied it.
func (n *Node) runCycle(ctx context.Context, l *link, w *wire.Welcome, v *Volume, peer string, forced []uint64, o PushOptions, res *PushResult) error {
	tracked := peer
	if forced != nil {
		tracked = ""
	}
	c, err := v.beginCycle(tracked, forced)
	if err != nil {
		return err
	}
	start := time.Now()
	ok := false
	defer func() {
		v.endCycle(c, ok)
		result := "ok"
		if !ok {
			result = "error"
		}
		n.metrics.cycles.WithLabelValues(v.name, peer, result).Inc()
		if ok {
			n.metrics.cycleSeconds.WithLabelValues(v.name).Observe(time.Since(start).Seconds())
		}
	}()
	if err := n.sendCycle(ctx, l, w, v, peer, c, o, res); err != nil {
		return err
	}
	ok = true
	// Retire the cycle's bits durably now, so a crash does not bring
	// them back as dirty.
	v.endCycle(c, true)
	c.peer = "" // endCycle in the deferred call must not touch bits again
	return v.Flush()
}

func (n *Node) sendCycle(ctx context.Context, l *link, w *wire.Welcome, v *Volume, peer string, c *cycle, o PushOptions, res *PushResult) (err error) {
	cycleNo := w.Cycle + 1
	if h := n.hooks.onCycle; h != nil {
		h(v.name, cycleNo)
	}
	// Probed blocks carry a hash of their snapshot content.
	if err := hashProbes(c, v); err != nil {
		return err
	}
	flags := uint8(0)
	if c.peer == "" && len(c.manifest) > 0 && c.manifest[0].Flags&wire.ManifestForce != 0 {
		flags = wire.CycleRepair
	}
	if err := l.send(&wire.CycleBegin{Cycle: cycleNo, Epoch: v.Epoch(), Entries: uint64(len(c.manifest)), Flags: flags}); err != nil {
		return err
	}
	tr := newTracker(n.metrics, v.name, peer, ModeDelta, int64(len(c.manifest))*int64(v.bs), o.OnProgress, l.raw.tx.Load)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	needs := make(chan *wire.Need, 4)
	done := make(chan error, 1)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		if err != nil {
			l.conn.Close() // unblocks the frame reader
		}
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(needs)
		for {
			f, err := l.rd.Next()
			if err != nil {
				done <- wireError(err)
				cancel()
				return
			}
			switch f.Type {
			case wire.TNeed:
				var nd wire.Need
				if err := f.Decode(&nd); err != nil {
					done <- wireError(err)
					cancel()
					return
				}
				nd.Bits = append([]byte(nil), nd.Bits...)
				select {
				case needs <- &nd:
				case <-ctx.Done():
					done <- ctx.Err()
					return
				}
			case wire.TAck:
				var a wire.Ack
				if err := f.Decode(&a); err != nil {
					done <- wireError(err)
					cancel()
					return
				}
				if a.Kind == wire.AckCommit {
					if a.Value != cycleNo {
						done <- fmt.Errorf("%w: commit acknowledged for cycle %d, sent %d", ErrProtocol, a.Value, cycleNo)
					} else {
						done <- nil
					}
					return
				}
			case wire.TError:
				done <- peerError(f)
				cancel()
				return
			default:
				done <- fmt.Errorf("%w: unexpected %s frame during a cycle", ErrProtocol, f.Type)
				cancel()
				return
			}
		}
	}()
	fail := func(err error) error {
		cancel()
		return settle(parent, err, done)
	}

	// Manifest, chunked, with the digest the commit carries.
	digest := xxhash.New()
	for i := 0; i < len(c.manifest) || i == 0; i += manifestChunk {
		chunk := c.manifest[i:min(i+manifestChunk, len(c.manifest))]
		for _, e := range chunk {
			digestEntry(digest, e)
		}
		m := wire.Manifest{Chunk: uint32(i / manifestChunk), Last: i+manifestChunk >= len(c.manifest), Entries: chunk}
		if err := l.send(&m); err != nil {
			return fail(err)
		}
	}
	var want []int
	for i := 0; i < len(c.manifest) || i == 0; i += manifestChunk {
		var nd *wire.Need
		select {
		case nd = <-needs:
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		if nd == nil {
			return fail(fmt.Errorf("%w: connection closed before the need list", ErrProtocol))
		}
		cnt := min(manifestChunk, len(c.manifest)-i)
		if nd.Chunk != uint32(i/manifestChunk) || int(nd.Count) != cnt {
			return fail(fmt.Errorf("%w: need list for chunk %d/%d entries, expected %d/%d", ErrProtocol, nd.Chunk, nd.Count, i/manifestChunk, cnt))
		}
		for k := 0; k < cnt; k++ {
			if nd.Has(k) {
				want = append(want, i+k)
			}
		}
	}
	res.Cycle = cycleNo
	res.CycleEntries = uint64(len(c.manifest))
	res.CycleHeld = uint64(len(c.manifest) - len(want))
	tr.add(int64(res.CycleHeld) * int64(v.bs))

	// Data of the needed entries, read from the snapshot in runs.
	enc, encErr := newEncoder(v.bs, o.Compression)
	if encErr != nil {
		return fail(encErr)
	}
	defer enc.close()
	enc.corrupt = n.hooks.corrupt
	// Start reading every needed block now (deep queue, one pass).
	for i := 0; i < len(want); {
		j := i + 1
		for j < len(want) && c.manifest[want[j]].Block == c.manifest[want[j-1]].Block+1 {
			j++
		}
		willNeed(v.f, int64(c.manifest[want[i]].Block)*int64(v.bs), int64(j-i)*int64(v.bs))
		i = j
	}
	buf := make([]byte, chunkBlocks*v.bs)
	var head, zbuf []byte
	var seq uint64
	for i := 0; i < len(want); {
		// One frame: up to chunkBlocks wanted entries.
		k := min(len(want), i+chunkBlocks)
		bt := batch{blocks: make([]uint64, 0, k-i), vers: make([]Version, 0, k-i), data: buf[:(k-i)*v.bs], head: head, zbuf: zbuf, exact: true}
		for r := i; r < k; {
			// Contiguous run of blocks for one read.
			s := r
			for r+1 < k && c.manifest[want[r+1]].Block == c.manifest[want[r]].Block+1 {
				r++
			}
			r++
			first := c.manifest[want[s]].Block
			if err := c.snap.readRun(first, uint64(r-s), bt.data[(s-i)*v.bs:(r-i)*v.bs]); err != nil {
				return fail(err)
			}
			for q := s; q < r; q++ {
				bt.blocks = append(bt.blocks, c.manifest[want[q]].Block)
				bt.vers = append(bt.vers, c.manifest[want[q]].Version)
			}
		}
		seq++
		bt.seq = seq
		frame, st, ferr := enc.encode(&bt)
		if ferr != nil {
			return fail(ferr)
		}
		head, zbuf = bt.head, bt.zbuf
		if err := l.sendFrame(ctx, frame); err != nil {
			return fail(err)
		}
		res.CycleSent += uint64(len(bt.blocks))
		n.metrics.blocksSent.WithLabelValues(peer, string(ModeDelta)).Add(float64(st.dataBlocks))
		tr.add(int64(len(bt.blocks)) * int64(v.bs))
		i = k
	}
	n.metrics.blocksSkipped.WithLabelValues("held").Add(float64(res.CycleHeld))
	if err := l.send(&wire.CycleCommit{Cycle: cycleNo, Entries: uint64(len(c.manifest)), Digest: digest.Sum64()}); err != nil {
		return fail(err)
	}
	if h := n.hooks.committed; h != nil {
		h(ctx)
	}
	// Only the reader's result counts here, not ctx: the reader publishes
	// the peer's rejection and then cancels ctx, so a select on both
	// would sometimes report that cancellation instead of the rejection.
	// The reader always ends: with the commit's acknowledgement, the
	// peer's error, or the connection, which the link closes when the
	// caller's context ends.
	if derr := <-done; derr != nil {
		return verdict(parent, nil, derr)
	}
	w.Cycle = cycleNo
	tr.setAcked(int64(len(c.manifest)) * int64(v.bs))
	tr.finish()
	return nil
}

// hashProbes fills the hash of manifest entries whose version is not
// trusted after a crash.
func hashProbes(c *cycle, v *Volume) error {
	buf := make([]byte, v.bs)
	for i := range c.manifest {
		e := &c.manifest[i]
		if e.Flags&wire.ManifestProbe == 0 {
			continue
		}
		if err := c.snap.readRun(e.Block, 1, buf); err != nil {
			return err
		}
		e.Hash = xxhash.Sum64(buf)
	}
	return nil
}
