package replicator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// handshakeTimeout bounds TLS and Hello on accepted connections.
const handshakeTimeout = 10 * time.Second

// busyWait is how long a session waits for another on the same volume.
const busyWait = 3 * time.Second

// maxHandshakes bounds the accepted connections still in TLS or Hello:
// anyone who reaches the port can open them, and each holds a descriptor
// and a goroutine for up to handshakeTimeout. Peers reconnect with a
// backoff, so a refused one retries; authenticated sessions do not count.
const maxHandshakes = 64

func (n *Node) acceptLoop(ctx context.Context, ln net.Listener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	pending := make(chan struct{}, maxHandshakes)
	var lastWarn time.Time
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case pending <- struct{}{}:
		default:
			n.metrics.refusedConns.Inc()
			if time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				n.log.Warn("replication connection refused: too many still authenticating", "remote", c.RemoteAddr().String(), "limit", maxHandshakes)
			}
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			n.serveConn(ctx, c, func() { once.Do(func() { <-pending }) })
		}()
	}
}

// session is one accepted replication connection.
type session struct {
	n     *Node
	l     *link
	hello wire.Hello
	nv    *nodeVolume
	log   interface {
		Info(string, ...any)
		Warn(string, ...any)
	}
}

// serveConn serves one accepted connection; authenticated is called once
// its Hello has been read (or it failed before that).
func (n *Node) serveConn(ctx context.Context, c net.Conn, authenticated func()) {
	defer authenticated()
	raw := &countConn{Conn: c}
	tc := tls.Server(raw, n.srvTLS)
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		lvl := slog.LevelWarn
		if errors.Is(err, io.EOF) {
			lvl = slog.LevelDebug // a port probe, not a peer
		}
		n.log.Log(ctx, lvl, "replication handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	l := newLink(raw, tc)
	l.watch(ctx)
	n.live.add(l)
	defer l.close()
	if l.peer == "" {
		n.log.Warn("replication peer without a verified certificate", "remote", c.RemoteAddr().String())
		return
	}
	peer := l.peer
	raw.onRead = func(k int) { n.metrics.recvBytes.WithLabelValues(peer).Add(float64(k)) }
	raw.onWrite = func(k int) { n.metrics.sentBytes.WithLabelValues(peer).Add(float64(k)) }
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	s := &session{n: n, l: l}
	if err := l.read(&s.hello); err != nil {
		n.log.Warn("bad hello", "peer", peer, "err", err)
		n.countRejected(err)
		l.sendError(fmt.Errorf("%w: %w", ErrProtocol, err))
		drainBeforeClose(c)
		return
	}
	c.SetReadDeadline(time.Time{})
	authenticated()
	s.log = n.log.With("peer", peer, "volume", s.hello.Volume, "op", s.hello.Op.String())
	if err := s.run(ctx); err != nil {
		if ctx.Err() != nil {
			return
		}
		n.countRejected(err)
		s.log.Warn("replication session failed", "err", err)
		l.sendError(err)
		drainBeforeClose(c)
	}
}

// drainBeforeClose reads and discards what the peer still sends, for up
// to a second or until it closes, so that closing does not make the
// kernel answer unread data with a reset — which, on a slow link, can
// destroy the Error frame just sent before the peer has read it.
func drainBeforeClose(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, c)
}

func (n *Node) countRejected(err error) {
	switch {
	case errors.Is(err, ErrCorrupt):
		n.metrics.rejected.WithLabelValues("corrupt").Inc()
	case errors.Is(err, ErrProtocol):
		n.metrics.rejected.WithLabelValues("protocol").Inc()
	}
}

func (s *session) run(ctx context.Context) error {
	h := &s.hello
	proto, err := negotiate(s.n.protoMin, s.n.protoMax, h.MinProto, h.MaxProto)
	if err != nil {
		return err
	}
	s.l.proto = proto
	if s.nv, err = s.n.nodeVolume(h.Volume); err != nil {
		return err
	}
	defer s.nv.track(s.l)()
	if err := s.authorize(); err != nil {
		return err
	}
	switch h.Op {
	case wire.OpStatus:
		return s.welcome()
	case wire.OpRead:
		if err := s.welcome(); err != nil {
			return err
		}
		return s.serveReads(ctx)
	case wire.OpSyncWrite:
		if err := s.admit(); err != nil {
			return err
		}
		if err := s.welcome(); err != nil {
			return err
		}
		return s.serveSyncWrites(ctx)
	}
	// Full, selective, delta and verify sessions change the volume: one
	// at a time. A session that just ended may still be releasing, so wait
	// a little before reporting the volume busy.
	select {
	case s.nv.sess <- struct{}{}:
	case <-time.After(busyWait):
		return fmt.Errorf("%w: another replication session is active on %s", ErrBusy, h.Volume)
	case <-ctx.Done():
		return ctx.Err()
	}
	s.nv.setChanging(s.l)
	defer func() {
		s.nv.setChanging(nil)
		<-s.nv.sess
	}()
	if err := s.admit(); err != nil {
		return err
	}
	if err := s.settle(); err != nil {
		return err
	}
	if err := s.welcome(); err != nil {
		return err
	}
	var m *merkleState
	if h.Op == wire.OpVerify {
		if m, err = s.sendPresent(); err != nil {
			return err
		}
	}
	for {
		f, err := s.l.rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return wireError(err)
		}
		switch f.Type {
		case wire.TFullBegin:
			var fb wire.FullBegin
			if err := f.Decode(&fb); err != nil {
				return wireError(err)
			}
			if h.Op != wire.OpFull && h.Op != wire.OpSelective && h.Op != wire.OpDelta {
				return fmt.Errorf("%w: full copy in a %s session", ErrProtocol, h.Op)
			}
			if err := s.recvFull(ctx, &fb); err != nil {
				return err
			}
		case wire.TCycleBegin:
			var cb wire.CycleBegin
			if err := f.Decode(&cb); err != nil {
				return wireError(err)
			}
			if err := s.recvCycle(ctx, &cb); err != nil {
				return err
			}
		case wire.TMerkleReq:
			var r wire.MerkleReq
			if err := f.Decode(&r); err != nil {
				return wireError(err)
			}
			if m == nil {
				return fmt.Errorf("%w: merkle request in a %s session", ErrProtocol, h.Op)
			}
			if err := s.answerMerkle(ctx, m, &r); err != nil {
				return err
			}
		case wire.TError:
			return peerError(f)
		default:
			return fmt.Errorf("%w: unexpected %s frame", ErrProtocol, f.Type)
		}
	}
}

// authorize checks that the peer's certificate may open sessions on the
// volume: one of its allowed_peers when it lists any. Without them a
// mirror takes any peer the CA signed, but a primary only the nodes this
// one is configured to replicate with (Config.Peers, AddPeer): every
// node of the CA holds a certificate, and a primary's data is the one
// copy that matters — a stranger could read it, or push with a newer
// epoch, which deposes it and overwrites its data.
func (s *session) authorize() error {
	h := &s.hello
	if a := s.nv.allowedPeers(); len(a) > 0 {
		if !slices.Contains(a, s.l.peer) {
			return fmt.Errorf("%w: %q may not open sessions on volume %s", ErrUnauthorized, s.l.peer, h.Volume)
		}
		return nil
	}
	if v := s.volume(); v != nil {
		if st := v.state(); st.Role == RolePrimary && !st.Fenced {
			if _, err := s.n.peer(s.l.peer); err != nil {
				return fmt.Errorf("%w: %q is not a peer of this node, and volume %s is a primary without allowed_peers", ErrUnauthorized, s.l.peer, h.Volume)
			}
		}
	}
	return nil
}

// track enters an accepted session's link in the volume's until the
// returned function is called. It comes before authorize, so that a
// SetAllowedPeers either precedes the check or finds the link to end.
func (nv *nodeVolume) track(l *link) func() {
	nv.mu.Lock()
	nv.links[l] = struct{}{}
	nv.mu.Unlock()
	return func() {
		nv.mu.Lock()
		delete(nv.links, l)
		nv.mu.Unlock()
	}
}

// setChanging records the link of the changing session holding the
// volume's session token (nil: none).
func (nv *nodeVolume) setChanging(l *link) {
	nv.mu.Lock()
	nv.changing = l
	nv.mu.Unlock()
}

// exclusive takes the volume's session token, first ending the changing
// session that holds it, and returns its release. The session ends once
// it notices: an acknowledged cycle it is applying finishes (or fails)
// first.
func (nv *nodeVolume) exclusive() (release func()) {
	release = func() { <-nv.sess }
	for {
		select {
		case nv.sess <- struct{}{}:
			return release
		default:
		}
		nv.mu.Lock()
		l := nv.changing
		nv.mu.Unlock()
		if l != nil {
			l.conn.Close()
		}
		select {
		case nv.sess <- struct{}{}:
			return release
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (nv *nodeVolume) allowedPeers() []string {
	nv.mu.Lock()
	defer nv.mu.Unlock()
	return nv.allowed
}

func (s *session) volume() *Volume {
	s.nv.mu.Lock()
	defer s.nv.mu.Unlock()
	return s.nv.vol
}

// admit checks that the client may change the volume: its epoch is not
// older than the volume's (fencing), the geometry fits, and it is not a
// second primary of the same epoch.
func (s *session) admit() error {
	h := &s.hello
	if h.Epoch > maxEpoch {
		return fmt.Errorf("%w: sender epoch %d exceeds %d, the largest a block version holds", ErrProtocol, h.Epoch, uint64(maxEpoch))
	}
	v := s.volume()
	if v == nil {
		// The mirror will be created with this geometry: refuse one that
		// no image can hold before anything is written.
		if err := checkGeometry(int(h.BlockSize), h.Blocks); err != nil {
			return err
		}
		size, err := imageSize(s.nv.cfg.Path)
		if err != nil {
			return err
		}
		if need := int64(h.Blocks) * int64(h.BlockSize); size > 0 && size < need {
			return fmt.Errorf("mirror %s: %w: image has %d bytes, source volume has %d", s.nv.cfg.Path, ErrMirrorTooSmall, size, need)
		}
		return nil
	}
	st := v.state()
	if h.Epoch < st.Epoch {
		s.n.metrics.fenced.WithLabelValues(v.name).Inc()
		return fmt.Errorf("%w: sender epoch %d is older than volume %s epoch %d; the sender was deposed", ErrFenced, h.Epoch, v.name, st.Epoch)
	}
	if st.Role == RolePrimary && !st.Fenced && h.Epoch == st.Epoch {
		return fmt.Errorf("%w: volume %s is a primary at epoch %d too (split brain); promote one side to a newer epoch", ErrNotMirror, v.name, st.Epoch)
	}
	if int(h.BlockSize) != v.bs {
		return fmt.Errorf("%w: source block size %d, mirror %s uses %d", ErrGeometry, h.BlockSize, v.name, v.bs)
	}
	if h.Blocks > v.capBlks {
		return fmt.Errorf("mirror %s: %w: image holds %d blocks of %d bytes, source has %d", v.name, ErrMirrorTooSmall, v.capBlks, v.bs, h.Blocks)
	}
	if h.Blocks != v.blocks {
		return fmt.Errorf("%w: source has %d blocks, mirror %s was created for %d", ErrGeometry, h.Blocks, v.name, v.blocks)
	}
	return v.observeEpoch(h.Epoch)
}

func (s *session) welcome() error {
	w := wire.Welcome{Proto: s.l.proto, Node: s.n.cfg.Node}
	v := s.volume()
	if v == nil {
		w.Flags = wire.WelcomeEmpty | wire.WelcomeInconsistent
		return s.l.send(&w)
	}
	st := v.state()
	w.Lineage = lineageBytes(st.SourceLineage)
	w.BlockSize = uint32(v.bs)
	w.Blocks = v.blocks
	w.Epoch = st.Epoch
	w.Cycle = st.Cycle
	if st.Inconsistent {
		w.Flags |= wire.WelcomeInconsistent
	}
	if st.FullActive {
		w.Flags |= wire.WelcomeFullActive
		w.FullNext = st.FullNext
	}
	if st.Selective {
		w.Flags |= wire.WelcomeSelective
	}
	if st.Role == RolePrimary && !st.Fenced {
		w.Flags |= wire.WelcomePrimary
		w.Lineage = lineageBytes(st.Lineage)
	}
	if st.Empty {
		w.Flags |= wire.WelcomeEmpty
	}
	return s.l.send(&w)
}

// ensureMirror returns the session's volume, creating an empty mirror with
// the client's geometry if it does not exist yet.
func (s *session) ensureMirror() (*Volume, error) {
	s.nv.mu.Lock()
	defer s.nv.mu.Unlock()
	if s.nv.vol != nil {
		return s.nv.vol, nil
	}
	vc := s.nv.cfg
	v, err := createMirror(vc.Path, s.n.volOptions(vc), int(s.hello.BlockSize), s.hello.Blocks)
	if err != nil {
		return nil, err
	}
	if err := v.observeEpoch(s.hello.Epoch); err != nil {
		v.Close()
		return nil, err
	}
	for _, m := range vc.Mirrors {
		if err := v.AddPeer(m.Peer); err != nil {
			v.Close()
			return nil, err
		}
	}
	s.nv.vol = v
	s.log.Info("created mirror volume", "path", vc.Path, "blocks", s.hello.Blocks, "block_size", s.hello.BlockSize)
	return v, nil
}

// journal returns the volume's cycle journal, opened on first use.
func (s *session) journal(v *Volume) (*journal, error) {
	s.nv.mu.Lock()
	defer s.nv.mu.Unlock()
	if s.nv.jnl == nil {
		j, err := openJournal(journalPath(v.metaDir))
		if err != nil {
			return nil, err
		}
		s.nv.jnl = j
	}
	return s.nv.jnl, nil
}
