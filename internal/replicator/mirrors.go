package replicator

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
)

// Dynamic mirrors are replication targets set at run time (by the agent,
// from the controller's replication tasks) rather than in VolumeConfig.
// Each runs the same loop as a configured mirror: a first copy when the
// target holds none, then a delta cycle every interval. Retiring one
// stops its loop but keeps the volume's change tracking for the peer, so
// adding it again later ships only what changed meanwhile.

// dynKey names a dynamic mirror: the peer and the volume's name there.
type dynKey struct{ peer, volume string }

// dynLoop is one dynamic mirror; cancel and done are set while it runs.
type dynLoop struct {
	cfg    MirrorConfig
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the loop and waits for it, so no push of it is in flight
// when stop returns.
func (l *dynLoop) stop() {
	if l.cancel == nil {
		return
	}
	l.cancel()
	<-l.done
	l.cancel, l.done = nil, nil
}

// dynMirrors holds every volume's dynamic mirrors. Loops run only while
// Serve does (ctx is its context then); mirrors set before Serve starts
// wait for it.
type dynMirrors struct {
	mu     sync.Mutex
	vols   map[string]map[dynKey]*dynLoop
	ctx    context.Context
	closed bool
}

// SetDynamicMirrors makes mirrors the complete set of dynamic mirrors of
// volume: a loop starts for each (peer, remote volume) not yet running,
// and loops no longer listed are cancelled and waited for before it
// returns. An empty list retires them all. Mirrors configured in
// VolumeConfig.Mirrors are never touched; a listed mirror that equals one
// of them (same peer and remote volume) is already replicated and gets no
// second loop, which would only contend with the first for the target.
// A changed mirror (mode, interval or extents) is restarted.
//
// Every peer must be configured (ErrUnknownPeer otherwise) and each
// mirror needs a positive Interval; Volume defaults to volume and Mode to
// ModeFull. Invalid input changes nothing. Dynamic mirrors replicate
// asynchronously: they are not among the copies WriteQuorum and
// ReadQuorum count. Safe for concurrent use; calls are serialized.
func (n *Node) SetDynamicMirrors(volume string, mirrors []MirrorConfig) error {
	nv, err := n.nodeVolume(volume)
	if err != nil {
		return fmt.Errorf("dynamic mirrors: %w", err)
	}
	static := map[dynKey]bool{}
	for _, m := range nv.cfg.Mirrors {
		static[dynKey{m.Peer, cmp.Or(m.Volume, volume)}] = true
	}
	want := map[dynKey]MirrorConfig{}
	for i, m := range mirrors {
		if _, err := n.peer(m.Peer); err != nil {
			return fmt.Errorf("dynamic mirrors of %s: mirrors[%d]: %w", volume, i, err)
		}
		m.Volume = cmp.Or(m.Volume, volume)
		if !peerNameRE.MatchString(m.Volume) {
			return fmt.Errorf("dynamic mirrors of %s: mirrors[%d].volume %q: want letters, digits, '.', '_' or '-'", volume, i, m.Volume)
		}
		m.Mode = cmp.Or(m.Mode, ModeFull)
		if m.Mode != ModeFull && m.Mode != ModeSelective {
			return fmt.Errorf("dynamic mirrors of %s: mirrors[%d].mode %q: want full or selective", volume, i, m.Mode)
		}
		if m.Interval <= 0 {
			return fmt.Errorf("dynamic mirrors of %s: mirrors[%d].interval %v: want a positive interval (the loop keeps the mirror in sync)", volume, i, m.Interval)
		}
		k := dynKey{m.Peer, m.Volume}
		if _, dup := want[k]; dup {
			return fmt.Errorf("dynamic mirrors of %s: mirrors[%d]: peer %s volume %s listed twice", volume, i, m.Peer, m.Volume)
		}
		if static[k] {
			continue
		}
		want[k] = m
	}

	d := &n.dyn
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("dynamic mirrors of %s: node %w", volume, ErrClosed)
	}
	if d.vols == nil {
		d.vols = map[string]map[dynKey]*dynLoop{}
	}
	cur := d.vols[volume]
	if cur == nil {
		cur = map[dynKey]*dynLoop{}
		d.vols[volume] = cur
	}
	retired := map[string]bool{} // peers
	for k, l := range cur {
		if m, ok := want[k]; ok && sameMirror(m, l.cfg) {
			continue
		}
		l.stop()
		delete(cur, k)
		retired[k.peer] = true
		n.log.Info("dynamic mirror retired", "volume", volume, "peer", k.peer, "remote_volume", k.volume)
	}
	for k, m := range want {
		if _, ok := cur[k]; ok {
			continue
		}
		l := &dynLoop{cfg: m}
		cur[k] = l
		n.metrics.mirrorAdded(volume, k.peer)
		n.log.Info("dynamic mirror added", "volume", volume, "peer", k.peer, "remote_volume", k.volume,
			"mode", m.Mode, "interval", m.Interval, "running", d.ctx != nil)
		if d.ctx != nil {
			n.startDynLoop(d.ctx, volume, l)
		}
	}
	// The series are per (volume, peer): a peer still holding a copy of
	// the volume, configured or dynamic, keeps them. The retired loops
	// have stopped, so none of their pushes recreates them.
	for k := range cur {
		delete(retired, k.peer)
	}
	for k := range static {
		delete(retired, k.peer)
	}
	for p := range retired {
		n.metrics.mirrorRemoved(volume, p)
	}
	if len(cur) == 0 {
		delete(d.vols, volume)
	}
	return nil
}

// DynamicMirrors returns the dynamic mirrors of volume, sorted by peer
// and remote volume (defaults filled in).
func (n *Node) DynamicMirrors(volume string) []MirrorConfig {
	d := &n.dyn
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []MirrorConfig
	for _, l := range d.vols[volume] {
		out = append(out, l.cfg)
	}
	slices.SortFunc(out, func(a, b MirrorConfig) int {
		return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Volume, b.Volume))
	})
	return out
}

func sameMirror(a, b MirrorConfig) bool {
	return a.Peer == b.Peer && a.Volume == b.Volume && a.Mode == b.Mode && a.Interval == b.Interval &&
		a.HotExtents == b.HotExtents && slices.Equal(a.Extents, b.Extents)
}

// startDynLoop runs l under ctx. The caller holds n.dyn.mu.
func (n *Node) startDynLoop(ctx context.Context, volume string, l *dynLoop) {
	lctx, cancel := context.WithCancel(ctx)
	l.cancel, l.done = cancel, make(chan struct{})
	done := l.done
	go func() {
		defer close(done)
		n.mirrorLoop(lctx, volume, l.cfg)
	}()
}

// runDynamic starts every dynamic mirror under Serve's ctx; mirrors set
// while Serve runs start at once.
func (n *Node) runDynamic(ctx context.Context) {
	d := &n.dyn
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.ctx = ctx
	for vol, loops := range d.vols {
		for _, l := range loops {
			n.startDynLoop(ctx, vol, l)
		}
	}
}

// stopDynamic stops and waits for every running dynamic mirror loop; the
// set is kept, so a later Serve starts them again. With closing, no
// mirror may be set any more.
func (n *Node) stopDynamic(closing bool) {
	d := &n.dyn
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, loops := range d.vols {
		for _, l := range loops {
			l.stop()
		}
	}
	d.ctx = nil
	if closing {
		d.closed = true
	}
}
