package replicator

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator/throttle"
	"github.com/premirror/premirror/internal/replicator/wire"
)

// Config configures a Node: the replicator of one edge-agent.
type Config struct {
	// Node is this node's name; it should be its certificate's common name.
	Node string
	// Site is the hybrid-clock site id of local writes; 0 derives it from Node.
	Site uint32
	// Listen is the address replication sessions are accepted on; empty
	// disables the server (a node that only pushes).
	Listen string
	// TLS names the CA, certificate and key for mutual TLS. Required.
	TLS pki.Files
	// Volumes served or replicated by this node.
	Volumes []VolumeConfig
	// Peers this node pushes to or reads from.
	Peers []PeerConfig
	// FlushInterval is how often volume metadata is made durable (and the
	// activity log trimmed); default 1s.
	FlushInterval time.Duration
	// Registerer receives the replicator_* metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// VolumeConfig is one volume on this node.
type VolumeConfig struct {
	// Name identifies the volume to peers (Hello.Volume) and in metrics.
	Name string
	// Path is the image file or block device.
	Path string
	// MetaDir holds metadata; default Path + ".pmr".
	MetaDir string
	// Role: RolePrimary initializes an image without metadata as a primary;
	// RoleMirror waits for a peer to push a first copy. Existing metadata
	// always wins.
	Role Role
	// BlockSize for a new primary; default 4096.
	BlockSize int
	// Mirrors are the peers this volume is replicated to (primary side).
	Mirrors []MirrorConfig
	// Upstream is the peer that missing blocks of a selective mirror are
	// read from; UpstreamVolume defaults to Name. Node.SetUpstream
	// replaces them at run time.
	Upstream       string
	UpstreamVolume string
	// AllowedPeers restricts which authenticated peers (certificate common
	// names) may open sessions on the volume. Empty: a mirror takes any
	// peer the CA signed, a primary only this node's configured peers.
	AllowedPeers []string
	// WriteQuorum (W) and ReadQuorum (R) count copies, this one included,
	// that must acknowledge a Node.Write or answer a Node.Read; 0 means 1.
	WriteQuorum, ReadQuorum int
}

// MirrorConfig is one replication target of a volume.
type MirrorConfig struct {
	// Peer names a PeerConfig.
	Peer string
	// Volume is the volume name at the peer; default the local name.
	Volume string
	// Mode is the initial copy: ModeFull (default) or ModeSelective; delta
	// cycles follow.
	Mode Mode
	// Interval between delta cycles; 0 disables the background loop
	// (pushes happen only through Node.Push).
	Interval time.Duration
	// Extents (in blocks) and HotExtents select what a selective copy sends.
	Extents    []Extent
	HotExtents int
}

// PeerConfig is another node.
type PeerConfig struct {
	// Name is the peer's certificate common name.
	Name string
	// Addr is host:port of its replication listener.
	Addr string
	// ServerName to verify in its certificate; default the host of Addr.
	ServerName string
	// Schedule is the bandwidth schedule of the link to the peer (see
	// throttle.ParseSchedule); empty means unlimited.
	Schedule string
	// RateControl, if set, puts the link under delay-based rate control
	// (throttle.Controller): below the schedule's rate, copies to the
	// peer go only as fast as keeps the queueing delay they add to the
	// path near the target. nil: the schedule's rate alone.
	RateControl *throttle.DelayConfig
}

// Mode is a kind of replication.
type Mode string

// Replication modes.
const (
	ModeFull      Mode = "full"
	ModeDelta     Mode = "delta"
	ModeSelective Mode = "selective"
)

// Node is a replicator: it serves its volumes to peers, pushes them to
// their mirrors, and offers tracked, optionally quorum-replicated reads
// and writes.
type Node struct {
	cfg     Config
	log     *slog.Logger
	clock   *Clock
	srvTLS  *tls.Config
	tlsSrc  *pki.Source // follows the certificate, CA and CRL files
	metrics *Metrics

	mu    sync.Mutex
	vols  map[string]*nodeVolume
	peers map[string]*nodePeer
	dyn   dynMirrors // mirrors set at run time (SetDynamicMirrors)

	// protocol range; tests narrow it to exercise negotiation.
	protoMin, protoMax uint16
	hooks              testHooks
	live               liveLinks // sessions the revocation sweep checks

	// Background work (read repairs): Close cancels bgCtx and waits.
	bgMu     sync.Mutex
	bgClosed bool
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
	// repairSlots holds a token per read repair in flight (maxRepairs).
	repairSlots chan struct{}

	closeOnce sync.Once
}

// testHooks observe or disturb the data path in tests.
type testHooks struct {
	received func(vol string, block uint64, v Version) // data block arrived at a receiver
	durable  func(vol string, blocks []blockVer)       // received blocks durable, about to be acked
	corrupt  func(frame []byte)                        // damage outgoing block data after checksumming
	onCycle  func(vol string, cycle uint64)            // sender: cycle snapshot taken
	repair   func(vol, peer string)                    // a read repair of peer ("local": this copy) is about to be sent
	fetching func(vol, peer string)                    // a read-through request to peer is about to be sent
	storing  func(vol, peer string)                    // peer's read-through answer passed the upstream check (io lock held)
	// sender: the cycle's commit is sent; ctx is the session's, which the
	// frame reader cancels when the peer fails the session
	committed func(ctx context.Context)
	// mirror: a committed cycle is about to be applied; an error fails
	// the apply (as an I/O error would) without touching the image
	applying func(vol string, cycle uint64) error
	// mirror: a committed cycle failed to apply (before it is handled)
	applyFailed func(vol string, cycle uint64)
	// revokeEvery replaces revocationSweep (0: the default).
	revokeEvery time.Duration
}

type blockVer struct {
	block uint64
	ver   Version
}

type nodeVolume struct {
	cfg  VolumeConfig
	mu   sync.Mutex
	vol  *Volume       // nil until a mirror receives its first copy
	sess chan struct{} // holds one token while a changing session runs
	jnl  *journal
	swal *syncLog
	// allowed is cfg.AllowedPeers, replaced by SetAllowedPeers; links are
	// the sessions accepted on the volume, which it ends when their peer
	// is no longer allowed.
	allowed []string
	links   map[*link]struct{}
	// changing is the link of the session holding sess (nil: none).
	changing *link
	// up is the read-through upstream, cfg.Upstream and UpstreamVolume
	// until SetUpstream replaces it. upGen is up.gen, read without mu
	// where a fetch, holding the volume's io lock, checks that its answer
	// still comes from the upstream.
	up    upstream
	upGen atomic.Uint64
	// upCancel ends up.cut.
	upCancel context.CancelFunc
}

type nodePeer struct {
	cfg     PeerConfig
	limiter *throttle.Limiter
	links   *linkPool
	// delivered measures what copies to the peer deliver (LinkRates).
	delivered *rateMeter
}

// NewNode validates cfg and opens its volumes. Call Run to serve and
// replicate, and Close to release the volumes.
func NewNode(cfg Config) (*Node, error) {
	if cfg.Node == "" {
		return nil, errors.New("replicator config: node: empty")
	}
	if err := cfg.TLS.Validate(); err != nil {
		return nil, fmt.Errorf("replicator config: %w", err)
	}
	if cfg.Site == 0 {
		cfg.Site = SiteID(cfg.Node)
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.Node), clock: NewClock(cfg.Site),
		vols: map[string]*nodeVolume{}, peers: map[string]*nodePeer{},
		protoMin: wire.MinProto, protoMax: wire.MaxProto}
	n.bgCtx, n.bgCancel = context.WithCancel(context.Background())
	n.repairSlots = make(chan struct{}, maxRepairs)
	var err error
	if n.tlsSrc, err = pki.Open(cfg.TLS, n.log.With("channel", "replication")); err != nil {
		return nil, fmt.Errorf("replicator config: tls: %w", err)
	}
	n.srvTLS = n.tlsSrc.ServerConfig()
	n.metrics = newMetrics(n)
	if cfg.Registerer != nil {
		if err := n.metrics.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("register replicator metrics: %w", err)
		}
		if err := cfg.Registerer.Register(n.tlsSrc.Collector("replication")); err != nil {
			return nil, fmt.Errorf("register replicator metrics: %w", err)
		}
	}
	for i, p := range cfg.Peers {
		if err := n.addPeer(p); err != nil {
			return nil, fmt.Errorf("replicator config: peers[%d]: %w", i, err)
		}
	}
	for i, vc := range cfg.Volumes {
		if err := n.addVolume(vc); err != nil {
			n.Close()
			return nil, fmt.Errorf("replicator config: volumes[%d] (%s): %w", i, vc.Name, err)
		}
		if vc.Role != RolePrimary && len(vc.AllowedPeers) == 0 {
			n.log.Warn("mirror volume takes sessions from any certificate of the CA; set allowed_peers", "volume", vc.Name)
		}
	}
	return n, nil
}

func (n *Node) addPeer(p PeerConfig) error {
	if !peerNameRE.MatchString(p.Name) {
		return fmt.Errorf("name %q: want letters, digits, '.', '_' or '-'", p.Name)
	}
	if _, dup := n.peers[p.Name]; dup {
		return fmt.Errorf("name %q: duplicate", p.Name)
	}
	host, _, err := net.SplitHostPort(p.Addr)
	if err != nil {
		return fmt.Errorf("addr %q: %w", p.Addr, err)
	}
	if p.ServerName == "" {
		p.ServerName = host
	}
	sched := throttle.Fixed(throttle.Unlimited)
	if p.Schedule != "" {
		if sched, err = throttle.ParseSchedule(p.Schedule); err != nil {
			return fmt.Errorf("schedule: %w", err)
		}
	}
	np := &nodePeer{cfg: p, limiter: throttle.NewLimiter(sched, nil)}
	if p.RateControl != nil {
		if err := p.RateControl.Validate(); err != nil {
			return fmt.Errorf("rate control: %w", err)
		}
		np.limiter.SetDelayControl(throttle.NewController(*p.RateControl))
	}
	np.links = newLinkPool(n, np)
	np.delivered = &rateMeter{sched: np.limiter.Schedule}
	n.peers[p.Name] = np
	return nil
}

func (n *Node) addVolume(vc VolumeConfig) error {
	if !peerNameRE.MatchString(vc.Name) {
		return fmt.Errorf("name %q: want letters, digits, '.', '_' or '-'", vc.Name)
	}
	if _, dup := n.vols[vc.Name]; dup {
		return fmt.Errorf("name: duplicate")
	}
	if vc.Path == "" {
		return errors.New("path: empty")
	}
	if vc.MetaDir == "" {
		vc.MetaDir = vc.Path + ".pmr"
	}
	if vc.Role == "" {
		vc.Role = RoleMirror
	}
	if vc.Role != RolePrimary && vc.Role != RoleMirror {
		return fmt.Errorf("role %q: want primary or mirror", vc.Role)
	}
	copies := 1 + len(vc.Mirrors)
	if vc.WriteQuorum < 0 || vc.WriteQuorum > copies {
		return fmt.Errorf("write_quorum %d: want 1..%d (this copy and %d mirrors)", vc.WriteQuorum, copies, len(vc.Mirrors))
	}
	if vc.ReadQuorum < 0 || vc.ReadQuorum > copies {
		return fmt.Errorf("read_quorum %d: want 1..%d (this copy and %d mirrors)", vc.ReadQuorum, copies, len(vc.Mirrors))
	}
	seen := map[dynKey]int{}
	for i, m := range vc.Mirrors {
		if _, ok := n.peers[m.Peer]; !ok {
			return fmt.Errorf("mirrors[%d].peer %q: no such peer", i, m.Peer)
		}
		// One copy listed twice would count twice towards the quorums
		// (both fan-out calls share its session) and run two loops.
		k := dynKey{m.Peer, cmp.Or(m.Volume, vc.Name)}
		if j, dup := seen[k]; dup {
			return fmt.Errorf("mirrors[%d]: peer %s volume %s is mirrors[%d] already", i, k.peer, k.volume, j)
		}
		seen[k] = i
		if m.Mode != "" && m.Mode != ModeFull && m.Mode != ModeSelective {
			return fmt.Errorf("mirrors[%d].mode %q: want full or selective", i, m.Mode)
		}
	}
	if vc.Upstream != "" {
		if _, ok := n.peers[vc.Upstream]; !ok {
			return fmt.Errorf("upstream %q: no such peer", vc.Upstream)
		}
	}
	nv := &nodeVolume{cfg: vc, sess: make(chan struct{}, 1), allowed: slices.Clone(vc.AllowedPeers), links: map[*link]struct{}{},
		up: upstream{peer: vc.Upstream, volume: cmp.Or(vc.UpstreamVolume, vc.Name)}}
	nv.up.cut, nv.upCancel = context.WithCancel(context.Background())
	opts := n.volOptions(vc)
	opts.Init = vc.Role == RolePrimary
	opts.BlockSize = vc.BlockSize
	v, err := OpenVolume(vc.Path, opts)
	switch {
	case err == nil:
		nv.vol = v
	case vc.Role == RoleMirror && errors.Is(err, ErrUnknownVolume):
		// Created when the first copy arrives.
	default:
		return err
	}
	if v != nil {
		for _, m := range vc.Mirrors {
			if err := v.AddPeer(m.Peer); err != nil {
				v.Close()
				return err
			}
		}
	}
	n.metrics.volumeAdded(vc)
	n.vols[vc.Name] = nv
	return nil
}

func (n *Node) volOptions(vc VolumeConfig) VolumeOptions {
	return VolumeOptions{Name: vc.Name, MetaDir: vc.MetaDir, Clock: n.clock, Logger: n.log}
}

// Volume returns the named volume, or an error when it is unknown or a
// mirror that has not received its first copy yet.
func (n *Node) Volume(name string) (*Volume, error) {
	nv, err := n.nodeVolume(name)
	if err != nil {
		return nil, err
	}
	nv.mu.Lock()
	defer nv.mu.Unlock()
	if nv.vol == nil {
		return nil, fmt.Errorf("volume %s: %w: no copy received yet", name, ErrInconsistent)
	}
	return nv.vol, nil
}

func (n *Node) nodeVolume(name string) (*nodeVolume, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nv := n.vols[name]
	if nv == nil {
		return nil, fmt.Errorf("volume %q: %w", name, ErrUnknownVolume)
	}
	return nv, nil
}

func (n *Node) peer(name string) (*nodePeer, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[name]
	if p == nil {
		return nil, fmt.Errorf("peer %q: %w", name, ErrUnknownPeer)
	}
	return p, nil
}

// AddPeer adds a peer at run time (a site joined: placements and
// dynamic mirrors may now name it). Volumes configured at start cannot
// name it; dynamic mirrors (SetDynamicMirrors) can.
func (n *Node) AddPeer(p PeerConfig) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.addPeer(p); err != nil {
		return fmt.Errorf("add peer: %w", err)
	}
	n.log.Info("peer added", "peer", p.Name, "addr", p.Addr)
	return nil
}

// AddVolume adds a mirror volume at run time: a copy the controller
// placed on this node, which receives its first copy from a peer. Only
// mirrors without downstream mirrors of their own can be added while the
// node runs (a primary's replication loops start with Run).
func (n *Node) AddVolume(vc VolumeConfig) error {
	if vc.Role != RoleMirror || len(vc.Mirrors) > 0 {
		return fmt.Errorf("add volume %s: only a mirror without mirrors of its own can be added at run time", vc.Name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.addVolume(vc); err != nil {
		return fmt.Errorf("add volume %s: %w", vc.Name, err)
	}
	n.log.Info("volume added", "volume", vc.Name, "path", vc.Path, "upstream", vc.Upstream, "allowed_peers", vc.AllowedPeers)
	return nil
}

// SetAllowedPeers replaces, at run time, the peers that may open sessions
// on a volume (VolumeConfig.AllowedPeers) and ends the sessions open from
// peers no longer listed. The agent gives a copy the controller placed
// here the source nodes of its current replication tasks, which change
// when the controller moves the resource's origin. An empty list is
// refused: it would admit every certificate of the CA.
func (n *Node) SetAllowedPeers(volume string, peers []string) error {
	if len(peers) == 0 {
		return fmt.Errorf("allowed peers of %s: empty list", volume)
	}
	for _, p := range peers {
		if !peerNameRE.MatchString(p) {
			return fmt.Errorf("allowed peers of %s: name %q: want letters, digits, '.', '_' or '-'", volume, p)
		}
	}
	nv, err := n.nodeVolume(volume)
	if err != nil {
		return fmt.Errorf("allowed peers: %w", err)
	}
	peers = slices.Clone(peers)
	slices.Sort(peers)
	peers = slices.Compact(peers)
	var ended []*link
	nv.mu.Lock()
	old := nv.allowed
	if slices.Equal(slices.Sorted(slices.Values(old)), peers) {
		nv.mu.Unlock()
		return nil
	}
	nv.allowed = peers
	for l := range nv.links {
		if !slices.Contains(peers, l.peer) {
			ended = append(ended, l)
		}
	}
	nv.mu.Unlock()
	n.log.Info("allowed peers changed", "volume", volume, "allowed_peers", peers, "before", old)
	for _, l := range ended {
		n.log.Warn("replication session ended: the peer may no longer open sessions on the volume", "volume", volume, "peer", l.peer)
		l.conn.Close()
	}
	return nil
}

// SetUpstream replaces, at run time, the peer a selective mirror reads
// the blocks it lacks through from (VolumeConfig.Upstream, and
// UpstreamVolume, "" for the volume's name). The agent gives a placed
// copy the source of its current tasks, which changes when the
// controller moves the resource's origin. Once it returns, no answer
// from the old upstream is stored, since the old one may be a deposed
// copy whose data would then count as held: a read-through in flight to
// it is cut (a stuck one would otherwise hold its reader until the old
// node answered) and fetches the blocks again from the new upstream, and
// an answer that arrived before is discarded unstored, unless it was
// checked before the change, in which case it is stored before
// SetUpstream returns (so it may wait for an apply holding the image).
func (n *Node) SetUpstream(volume, peer, remoteVolume string) error {
	if peer == "" {
		return fmt.Errorf("upstream of %s: empty", volume)
	}
	if _, err := n.peer(peer); err != nil {
		return fmt.Errorf("upstream of %s: %w", volume, err)
	}
	remoteVolume = cmp.Or(remoteVolume, volume)
	if !peerNameRE.MatchString(remoteVolume) {
		return fmt.Errorf("upstream of %s: volume %q: want letters, digits, '.', '_' or '-'", volume, remoteVolume)
	}
	nv, err := n.nodeVolume(volume)
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	nv.mu.Lock()
	old := nv.up
	if old.peer == peer && old.volume == remoteVolume {
		nv.mu.Unlock()
		return nil
	}
	cut, cancel := context.WithCancel(context.Background())
	nv.up = upstream{peer: peer, volume: remoteVolume, gen: old.gen + 1, cut: cut}
	nv.upGen.Store(old.gen + 1)
	cutOld := nv.upCancel
	nv.upCancel = cancel
	v := nv.vol
	nv.mu.Unlock()
	cutOld()
	if v != nil {
		// A fetch checks the generation and stores its answer under the
		// io lock: one that checked before the change has stored once
		// this returns, and any later check sees the change. (Without a
		// volume no fetch can run; one that starts later sees it too.)
		v.io.Lock()
		//lint:ignore SA2001 a barrier: it waits for a fetch holding the lock
		v.io.Unlock()
	}
	n.log.Info("upstream changed", "volume", volume, "upstream", peer, "upstream_volume", remoteVolume,
		"before", old.peer, "before_volume", old.volume)
	return nil
}

// upstream is where a selective mirror reads missing blocks through from;
// gen counts SetUpstream's changes, and cut ends when SetUpstream
// replaces it, cutting the read-throughs to it.
type upstream struct {
	peer, volume string
	gen          uint64
	cut          context.Context
}

func (nv *nodeVolume) upstream() upstream {
	nv.mu.Lock()
	defer nv.mu.Unlock()
	return nv.up
}

// SetSchedule replaces the bandwidth schedule of the link to peer at run
// time; transfers in progress adopt it at once.
func (n *Node) SetSchedule(peer string, s throttle.Schedule) error {
	p, err := n.peer(peer)
	if err != nil {
		return err
	}
	p.limiter.SetSchedule(s)
	n.log.Info("bandwidth schedule changed", "peer", peer, "schedule", s.String())
	return nil
}

// Promote makes the named volume the primary at epoch (0: current+1).
// It first ends the changing session running on the volume, if any, and
// waits for it: a cycle the mirror acknowledged may be applying, and were
// that apply to fail after the promotion, nothing would retry it (settle
// runs before a mirror's sessions, and a primary takes none), leaving the
// new primary refusing reads until a restart. A cycle whose apply failed
// is applied again here, as the next session would; if that fails the
// promotion is refused. Ending the session also keeps the old primary
// from committing a cycle into the new one after the promotion.
func (n *Node) Promote(volume string, epoch uint64) (uint64, error) {
	nv, v, err := n.localVolume(volume)
	if err != nil {
		return 0, err
	}
	// Refused anyway (a full copy still running, say): leave it running.
	if err := v.promotable(epoch); err != nil {
		return 0, err
	}
	defer nv.exclusive()()
	s := &session{n: n, nv: nv, log: n.log}
	if err := s.settle(); err != nil {
		return 0, fmt.Errorf("volume %s: promote: %w", volume, err)
	}
	return v.Promote(epoch)
}

// Status returns the state of every volume, sorted by name.
func (n *Node) Status() []Status {
	n.mu.Lock()
	names := make([]string, 0, len(n.vols))
	for name := range n.vols {
		names = append(names, name)
	}
	n.mu.Unlock()
	sort.Strings(names)
	var out []Status
	for _, name := range names {
		nv, _ := n.nodeVolume(name)
		nv.mu.Lock()
		v := nv.vol
		nv.mu.Unlock()
		up := nv.upstream().peer
		if v == nil {
			out = append(out, Status{Name: name, Path: nv.cfg.Path, Role: RoleMirror, Empty: true, Inconsistent: true, Upstream: up})
			continue
		}
		st := v.Status()
		st.Upstream = up
		out = append(out, st)
	}
	return out
}

// Run serves replication sessions on cfg.Listen (if set), runs the
// background delta cycles of every mirror with an Interval (configured
// or set with SetDynamicMirrors), and flushes
// volume metadata every FlushInterval, until ctx ends. It returns nil
// after a clean shutdown.
func (n *Node) Run(ctx context.Context) error {
	var ln net.Listener
	if n.cfg.Listen != "" {
		var err error
		if ln, err = net.Listen("tcp", n.cfg.Listen); err != nil {
			return fmt.Errorf("replicator listen: %w", err)
		}
	}
	return n.Serve(ctx, ln)
}

// Serve is Run on an existing listener (nil: no server). The listener is
// closed when ctx ends.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	if ln != nil {
		n.log.Info("replicator listening", "addr", ln.Addr().String(), "site", n.clock.Site())
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.acceptLoop(ctx, ln)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.flushLoop(ctx)
	}()
	n.mu.Lock()
	for _, nv := range n.vols {
		for _, m := range nv.cfg.Mirrors {
			if m.Interval > 0 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n.mirrorLoop(ctx, nv.cfg.Name, m)
				}()
			}
		}
	}
	n.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.revocationLoop(ctx)
	}()
	n.runDynamic(ctx)
	<-ctx.Done()
	n.stopDynamic(false)
	wg.Wait()
	return nil
}

func (n *Node) flushLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		vols := make([]*nodeVolume, 0, len(n.vols))
		for _, nv := range n.vols {
			vols = append(vols, nv)
		}
		n.mu.Unlock()
		for _, nv := range vols {
			nv.mu.Lock()
			v, swal := nv.vol, nv.swal
			nv.mu.Unlock()
			if v == nil {
				continue
			}
			var err error
			if swal != nil {
				err = swal.checkpoint(v)
			} else {
				err = v.Flush()
			}
			if err != nil && !errors.Is(err, ErrClosed) {
				n.log.Error("flush volume metadata", "volume", v.name, "err", err)
			}
		}
	}
}

// mirrorLoop keeps one mirror in sync: a first copy when the mirror needs
// one, then a delta cycle every interval. Failures back off and retry.
func (n *Node) mirrorLoop(ctx context.Context, volume string, m MirrorConfig) {
	backoff := time.Second
	for {
		mode := ModeDelta
		_, err := n.Push(ctx, volume, m.Peer, PushOptions{Mode: mode, RemoteVolume: m.Volume,
			InitialMode: m.Mode, Extents: m.Extents, HotExtents: m.HotExtents})
		wait := m.Interval
		if err != nil && ctx.Err() == nil {
			n.log.Warn("mirror cycle failed", "volume", volume, "peer", m.Peer, "err", err, "retry_in", backoff)
			wait = backoff
			backoff = min(backoff*2, time.Minute)
			if errors.Is(err, ErrFenced) {
				wait = time.Minute
			}
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Close closes the node's volumes and links, after cancelling and waiting
// for background read repairs. Call it after Run returns.
func (n *Node) Close() error {
	// Dynamic mirror loops use the volumes and links closed below.
	n.stopDynamic(true)
	var errs []error
	n.closeOnce.Do(func() {
		// Repairs use the links and volumes closed below.
		n.stopBackground()
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, p := range n.peers {
			p.links.closeAll()
		}
		for _, nv := range n.vols {
			nv.mu.Lock()
			if nv.jnl != nil {
				nv.jnl.Close()
			}
			if nv.swal != nil {
				nv.swal.close()
			}
			if nv.vol != nil {
				if err := nv.vol.Close(); err != nil {
					errs = append(errs, err)
				}
			}
			nv.mu.Unlock()
		}
	})
	return errors.Join(errs...)
}

// imageSize returns the size of an existing image (0 when missing).
func imageSize(path string) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, ioError("open "+path, err)
	}
	defer f.Close()
	return fileSize(f)
}
