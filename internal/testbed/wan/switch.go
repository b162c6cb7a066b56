package wan

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
)

// PortIO moves whole Ethernet frames in and out of one switch port.
// [OpenKernelPort] gives the AF_PACKET implementation; tests may use
// in-memory ones.
type PortIO interface {
	// Read blocks for the next frame received on the port. A frame
	// longer than buf is consumed and reported as an error wrapping
	// ErrOversize. After Close it returns an error.
	Read(buf []byte) (int, error)
	// Write sends one frame out of the port.
	Write(frame []byte) error
	// Close releases the port and unblocks Read.
	Close() error
}

// BatchIO is implemented by a PortIO that can move several frames per call
// (recvmmsg/sendmmsg); the switch then uses it instead of Read and Write.
type BatchIO interface {
	// ReadBatch blocks until at least one frame is there and receives up
	// to len(bufs). For i < n, lens[i] is the frame length in bufs[i], -1
	// for a frame longer than its buffer (lost), or 0 for one to skip.
	ReadBatch(bufs [][]byte, lens []int) (n int, err error)
	// WriteBatch sends frames in order and returns how many were sent;
	// on error frames[n] is the one that failed.
	WriteBatch(frames [][]byte) (n int, err error)
}

// batchSize bounds the frames one ReadBatch or WriteBatch moves.
const batchSize = 32

// Overrunner is implemented by a PortIO that can count frames lost before
// the switch read them (a full socket receive buffer).
type Overrunner interface {
	// Overruns returns the frames lost so far.
	Overruns() uint64
}

// ErrOversize is wrapped by PortIO.Read for frames longer than the buffer.
var ErrOversize = errors.New("frame longer than buffer")

// ErrUnknownSite is returned for a site name the switch does not have.
var ErrUnknownSite = errors.New("unknown site")

// Site is one place on the emulated WAN: a host with one or more ports.
type Site struct {
	Name string
	// VIPPort names the port (of an edge site) that receives this site's
	// traffic to any VIP; empty means VIP traffic from it is dropped.
	VIPPort string
}

// Port is one switch port: the switch's end of a site's veth.
type Port struct {
	// Name is unique among ports (the switch-side interface name).
	Name string
	// Site is the name of the site whose interface is at the other end.
	Site string
	// MAC is the switch-side MAC: frames from the site must be sent to
	// it (it is the site's gateway MAC).
	MAC net.HardwareAddr
	// PeerMAC is the site interface's MAC, written as the destination
	// of frames the switch sends to the site.
	PeerMAC net.HardwareAddr
	// Addrs are the addresses reached through this port.
	Addrs []netip.Addr
	// IO reads and writes the port's frames. The switch closes it.
	IO PortIO
}

// Path is the emulated one-way path from one site to another.
type Path struct {
	// Delay is the one-way delay added to every frame.
	Delay time.Duration
	// Loss is the probability in [0, 1] that a frame is dropped.
	Loss float64
}

// MaxDelay bounds Path.Delay: far above any WAN, low enough that a typo in
// units is caught.
const MaxDelay = time.Minute

func (p Path) validate() error {
	if p.Delay < 0 || p.Delay > MaxDelay {
		return fmt.Errorf("delay %v out of range [0, %v]", p.Delay, MaxDelay)
	}
	if !(p.Loss >= 0 && p.Loss <= 1) { // also rejects NaN
		return fmt.Errorf("loss %v out of range [0, 1]", p.Loss)
	}
	return nil
}

// Config describes a switch.
type Config struct {
	Sites []Site
	Ports []Port
	// VIPs are routed by source site ([Site.VIPPort]).
	VIPs []netip.Addr
	// QueueLimit bounds the frames waiting in one egress port's delay
	// line; beyond it frames are dropped (DropQueueFull). Default 65536.
	QueueLimit int
	// MaxFrame is the receive buffer size; longer frames are dropped
	// (DropOversize). Default 2048, enough for a 1500-byte MTU.
	MaxFrame int
	// Seed seeds the loss generators so runs can be repeated.
	Seed uint64
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
}

// Switch is a running emulated WAN. Its methods are safe for concurrent
// use.
type Switch struct {
	log     *slog.Logger
	sites   []*site
	byName  map[string]*site
	ports   []*port
	routes  map[netip.Addr]*port
	vips    map[netip.Addr]bool
	pairs   [][]*pair // [from site][to site]
	pool    sync.Pool
	maxFrm  int
	epoch   time.Time
	mono0   int64 // CLOCK_MONOTONIC at epoch
	done    chan struct{}
	wg      sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
}

type site struct {
	idx     int
	name    string
	vipPort *port
}

type port struct {
	name    string
	site    *site
	mac     net.HardwareAddr
	peerMAC net.HardwareAddr
	io      PortIO
	q       queue

	rxFrames, rxBytes atomic.Uint64
	txFrames, txBytes atomic.Uint64
	drops             [NumDropReasons]atomic.Uint64
}

type pair struct {
	delay atomic.Int64  // nanoseconds
	loss  atomic.Uint64 // float64 bits

	mu   sync.Mutex
	last int64 // release time of the pair's latest frame

	frames, bytes, lost atomic.Uint64
}

// New validates cfg and starts the switch: one receive and one transmit
// goroutine per port. All paths start with zero delay and no loss. On
// error every PortIO in cfg is closed.
func New(cfg Config) (*Switch, error) {
	s, err := build(cfg)
	if err != nil {
		if s != nil {
			s.closeTimers()
		}
		for _, p := range cfg.Ports {
			if p.IO != nil {
				p.IO.Close()
			}
		}
		return nil, err
	}
	for i, p := range s.ports {
		s.wg.Add(2)
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		go s.receive(p, rng)
		go s.transmit(p)
	}
	return s, nil
}

func build(cfg Config) (*Switch, error) {
	s := &Switch{
		log:    cfg.Logger,
		byName: make(map[string]*site),
		routes: make(map[netip.Addr]*port),
		vips:   make(map[netip.Addr]bool),
		maxFrm: cfg.MaxFrame,
		done:   make(chan struct{}),
	}
	// Go's monotonic clock is CLOCK_MONOTONIC, so release times (relative
	// to epoch) map onto timerfd deadlines by a constant offset.
	s.epoch, s.mono0 = time.Now(), kernel.MonotonicNow()
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxFrm <= 0 {
		s.maxFrm = 2048
	}
	if s.maxFrm < 64 {
		return nil, fmt.Errorf("max frame %d too small", s.maxFrm)
	}
	limit := cfg.QueueLimit
	if limit <= 0 {
		limit = 65536
	}
	s.pool.New = func() any { b := make([]byte, s.maxFrm); return &b }
	for i, c := range cfg.Sites {
		if c.Name == "" {
			return nil, fmt.Errorf("sites[%d]: empty name", i)
		}
		if _, dup := s.byName[c.Name]; dup {
			return nil, fmt.Errorf("sites[%d]: duplicate site %q", i, c.Name)
		}
		st := &site{idx: i, name: c.Name}
		s.sites = append(s.sites, st)
		s.byName[c.Name] = st
	}
	portByName := make(map[string]*port)
	for i, c := range cfg.Ports {
		st, ok := s.byName[c.Site]
		switch {
		case c.Name == "":
			return nil, fmt.Errorf("ports[%d]: empty name", i)
		case portByName[c.Name] != nil:
			return nil, fmt.Errorf("ports[%d]: duplicate port %q", i, c.Name)
		case !ok:
			return nil, fmt.Errorf("ports[%d] (%s): site %q: %w", i, c.Name, c.Site, ErrUnknownSite)
		case len(c.MAC) != 6 || len(c.PeerMAC) != 6:
			return nil, fmt.Errorf("ports[%d] (%s): MACs must be 6 bytes", i, c.Name)
		case c.IO == nil:
			return nil, fmt.Errorf("ports[%d] (%s): no IO", i, c.Name)
		}
		p := &port{name: c.Name, site: st, mac: c.MAC, peerMAC: c.PeerMAC, io: c.IO}
		p.q.limit = limit
		p.q.mono0 = s.mono0
		tm, err := kernel.NewTimer()
		if err != nil {
			s.closeTimers()
			return nil, fmt.Errorf("ports[%d] (%s): %w", i, c.Name, err)
		}
		p.q.timer = tm
		for _, a := range c.Addrs {
			a = a.Unmap()
			if prev := s.routes[a]; prev != nil {
				return nil, fmt.Errorf("ports[%d] (%s): address %s already on port %s", i, c.Name, a, prev.name)
			}
			s.routes[a] = p
		}
		s.ports = append(s.ports, p)
		portByName[c.Name] = p
	}
	for _, v := range cfg.VIPs {
		v = v.Unmap()
		if p := s.routes[v]; p != nil {
			return nil, fmt.Errorf("vip %s is also an address of port %s", v, p.name)
		}
		s.vips[v] = true
	}
	for i, c := range cfg.Sites {
		if c.VIPPort == "" {
			continue
		}
		p := portByName[c.VIPPort]
		if p == nil {
			return nil, fmt.Errorf("sites[%d] (%s): vip port %q does not exist", i, c.Name, c.VIPPort)
		}
		s.sites[i].vipPort = p
	}
	n := len(s.sites)
	s.pairs = make([][]*pair, n)
	for i := range s.pairs {
		s.pairs[i] = make([]*pair, n)
		for j := range s.pairs[i] {
			s.pairs[i][j] = &pair{}
		}
	}
	return s, nil
}

func (s *Switch) now() int64 { return int64(time.Since(s.epoch)) }

func (s *Switch) pair(from, to string) (*pair, error) {
	a, ok := s.byName[from]
	if !ok {
		return nil, fmt.Errorf("site %q: %w", from, ErrUnknownSite)
	}
	b, ok := s.byName[to]
	if !ok {
		return nil, fmt.Errorf("site %q: %w", to, ErrUnknownSite)
	}
	return s.pairs[a.idx][b.idx], nil
}

// SetPath sets the one-way path from site from to site to. It applies to
// frames that arrive afterwards; frames already in the delay line keep
// their release time, and a lowered delay never lets a later frame
// overtake an earlier one of the same pair.
func (s *Switch) SetPath(from, to string, p Path) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("path %s->%s: %w", from, to, err)
	}
	pr, err := s.pair(from, to)
	if err != nil {
		return err
	}
	pr.delay.Store(int64(p.Delay))
	pr.loss.Store(math.Float64bits(p.Loss))
	return nil
}

// Path returns the current one-way path from site from to site to.
func (s *Switch) Path(from, to string) (Path, error) {
	pr, err := s.pair(from, to)
	if err != nil {
		return Path{}, err
	}
	return Path{Delay: time.Duration(pr.delay.Load()), Loss: math.Float64frombits(pr.loss.Load())}, nil
}

// PortStats are one port's counters. Rx counts frames the site sent to the
// switch, Tx frames the switch delivered to the site.
type PortStats struct {
	Name, Site        string
	RxFrames, RxBytes uint64
	TxFrames, TxBytes uint64
	Drops             [NumDropReasons]uint64
	Queued            int
	// Overruns are frames the kernel dropped before the switch read them
	// (receive buffer full: the switch did not keep up), if the port can
	// tell ([Overrunner]).
	Overruns uint64
}

// TotalDrops sums Drops and Overruns.
func (p PortStats) TotalDrops() uint64 {
	t := p.Overruns
	for _, d := range p.Drops {
		t += d
	}
	return t
}

// Stats returns every port's counters, in configuration order.
func (s *Switch) Stats() []PortStats {
	out := make([]PortStats, 0, len(s.ports))
	for _, p := range s.ports {
		st := PortStats{
			Name: p.name, Site: p.site.name,
			RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(),
			TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(),
		}
		for i := range p.drops {
			st.Drops[i] = p.drops[i].Load()
		}
		p.q.mu.Lock()
		st.Queued = len(p.q.h)
		p.q.mu.Unlock()
		if o, ok := p.io.(Overrunner); ok {
			st.Overruns = o.Overruns()
		}
		out = append(out, st)
	}
	return out
}

// PortStats returns the counters of the named port.
func (s *Switch) PortStats(name string) (PortStats, bool) {
	for _, st := range s.Stats() {
		if st.Name == name {
			return st, true
		}
	}
	return PortStats{}, false
}

// PairStats counts what one (source site, destination site) pair carried.
type PairStats struct {
	// Frames and Bytes were accepted into the delay line.
	Frames, Bytes uint64
	// Lost were dropped by emulated loss.
	Lost uint64
}

// PairStats returns the counters of the pair from → to.
func (s *Switch) PairStats(from, to string) (PairStats, error) {
	pr, err := s.pair(from, to)
	if err != nil {
		return PairStats{}, err
	}
	return PairStats{Frames: pr.frames.Load(), Bytes: pr.bytes.Load(), Lost: pr.lost.Load()}, nil
}

// Close stops the switch, closes every port and waits for its goroutines.
// Frames still in the delay lines are discarded.
func (s *Switch) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.done)
	var errs []error
	for _, p := range s.ports {
		if err := p.io.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close port %s: %w", p.name, err))
		}
	}
	s.closeTimers()
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *Switch) closeTimers() {
	for _, p := range s.ports {
		p.q.timer.Close()
	}
}

func (s *Switch) stopping() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// receive reads the port's frames, routes them and feeds the egress delay
// lines.
func (s *Switch) receive(in *port, rng *rand.Rand) {
	defer s.wg.Done()
	if b, ok := in.io.(BatchIO); ok {
		s.receiveBatch(in, b, rng)
		return
	}
	for {
		bp := s.pool.Get().(*[]byte)
		n, err := in.io.Read(*bp)
		if err != nil {
			s.pool.Put(bp)
			if s.stopping() {
				return
			}
			if errors.Is(err, ErrOversize) {
				in.drops[DropOversize].Add(1)
				continue
			}
			s.log.Warn("wan port read failed; port stopped", "port", in.name, "err", err)
			return
		}
		in.rxFrames.Add(1)
		in.rxBytes.Add(uint64(n))
		if r, ok := s.forward(in, (*bp)[:n], bp, rng); !ok {
			in.drops[r].Add(1)
			s.pool.Put(bp)
		}
	}
}

// receiveBatch is receive for ports that move frames in batches.
func (s *Switch) receiveBatch(in *port, b BatchIO, rng *rand.Rand) {
	bps := make([]*[]byte, batchSize)
	bufs := make([][]byte, batchSize)
	lens := make([]int, batchSize)
	for i := range bps {
		bps[i] = s.pool.Get().(*[]byte)
		bufs[i] = *bps[i]
	}
	defer func() {
		for _, bp := range bps {
			s.pool.Put(bp)
		}
	}()
	for {
		n, err := b.ReadBatch(bufs, lens)
		if err != nil {
			if !s.stopping() {
				s.log.Warn("wan port read failed; port stopped", "port", in.name, "err", err)
			}
			return
		}
		for i := 0; i < n; i++ {
			switch {
			case lens[i] < 0:
				in.drops[DropOversize].Add(1)
				continue
			case lens[i] == 0:
				continue
			}
			in.rxFrames.Add(1)
			in.rxBytes.Add(uint64(lens[i]))
			if r, ok := s.forward(in, bufs[i][:lens[i]], bps[i], rng); !ok {
				in.drops[r].Add(1)
				continue
			}
			// The delay line owns the buffer now.
			bps[i] = s.pool.Get().(*[]byte)
			bufs[i] = *bps[i]
		}
	}
}

// forward routes one frame. When it returns ok the frame (and bp) belong
// to the egress delay line.
func (s *Switch) forward(in *port, f []byte, bp *[]byte, rng *rand.Rand) (DropReason, bool) {
	if len(f) < ethHdrLen {
		return DropMalformed, false
	}
	if f[0]&1 != 0 {
		return DropMulticast, false
	}
	if !bytes.Equal(f[0:6], in.mac) {
		return DropNotForUs, false
	}
	dst, ttl, reason, ok := parseDst(f)
	if !ok {
		return reason, false
	}
	out := s.routes[dst]
	if out == nil {
		if !s.vips[dst] || in.site.vipPort == nil {
			return DropNoRoute, false
		}
		out = in.site.vipPort
	}
	if ttl <= 1 {
		return DropTTL, false
	}
	pr := s.pairs[in.site.idx][out.site.idx]
	if l := math.Float64frombits(pr.loss.Load()); l > 0 && rng.Float64() < l {
		pr.lost.Add(1)
		return DropLoss, false
	}
	decTTL(f)
	copy(f[0:6], out.peerMAC)
	copy(f[6:12], out.mac)

	// The pair lock orders release times and queue sequence numbers of
	// one pair even when the site has several ingress ports.
	pr.mu.Lock()
	rel := s.now() + pr.delay.Load()
	if rel < pr.last {
		rel = pr.last
	}
	if !out.q.push(item{release: rel, buf: bp, n: len(f)}) {
		pr.mu.Unlock()
		out.drops[DropQueueFull].Add(1)
		s.pool.Put(bp)
		return 0, true // counted on the egress port
	}
	pr.last = rel
	pr.mu.Unlock()
	pr.frames.Add(1)
	pr.bytes.Add(uint64(len(f)))
	return 0, true
}

// transmit releases the port's frames when they are due. It sleeps on the
// queue's timerfd, which is always armed for the head of the queue (by
// this loop, or by push when a new frame becomes the head).
func (s *Switch) transmit(p *port) {
	defer s.wg.Done()
	var due []item
	var frames [][]byte
	for {
		p.q.mu.Lock()
		now := s.now()
		due = due[:0]
		for len(p.q.h) > 0 && p.q.h[0].release <= now {
			due = append(due, p.q.h.pop())
		}
		var err error
		if len(p.q.h) > 0 {
			err = p.q.timer.ArmAt(p.q.mono0 + p.q.h[0].release)
		} else {
			err = p.q.timer.Disarm()
		}
		p.q.mu.Unlock()
		if err != nil {
			if !s.stopping() {
				s.log.Warn("wan port timer failed; port stopped", "port", p.name, "err", err)
			}
			return
		}

		if !s.send(p, due, &frames) {
			return
		}
		if len(due) > 0 {
			continue // more may have become due while writing
		}
		if err := p.q.timer.Wait(); err != nil {
			return // closed
		}
	}
}

// send writes the due frames out of p, in order, and returns their buffers
// to the pool. It returns false when the switch is stopping.
func (s *Switch) send(p *port, due []item, frames *[][]byte) bool {
	defer func() {
		for _, it := range due {
			s.pool.Put(it.buf)
		}
	}()
	b, batched := p.io.(BatchIO)
	for len(due) > 0 {
		var n int
		var err error
		if batched {
			*frames = (*frames)[:0]
			for _, it := range due[:min(len(due), batchSize)] {
				*frames = append(*frames, (*it.buf)[:it.n])
			}
			n, err = b.WriteBatch(*frames)
		} else {
			err = p.io.Write((*due[0].buf)[:due[0].n])
			if err == nil {
				n = 1
			}
		}
		for _, it := range due[:n] {
			p.txFrames.Add(1)
			p.txBytes.Add(uint64(it.n))
		}
		if err != nil {
			if s.stopping() {
				return false
			}
			p.drops[DropTxError].Add(1)
			n++ // skip the frame that failed
		}
		for _, it := range due[:n] {
			s.pool.Put(it.buf)
		}
		due = due[n:]
	}
	return true
}

type item struct {
	release int64
	seq     uint64
	buf     *[]byte
	n       int
}

// itemHeap is a binary min-heap on (release, seq). It is hand-written
// rather than container/heap so pushing a frame does not box it.
type itemHeap []item

func (h itemHeap) less(i, j int) bool {
	if h[i].release != h[j].release {
		return h[i].release < h[j].release
	}
	return h[i].seq < h[j].seq
}

func (h *itemHeap) push(it item) {
	*h = append(*h, it)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if !a.less(i, p) {
			break
		}
		a[i], a[p] = a[p], a[i]
		i = p
	}
}

func (h *itemHeap) pop() item {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a[n] = item{}
	a = a[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && a.less(l, m) {
			m = l
		}
		if r := l + 1; r < n && a.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// queue is one egress port's delay line, ordered by (release, arrival).
type queue struct {
	mu    sync.Mutex
	h     itemHeap
	seq   uint64
	limit int
	timer *kernel.Timer
	mono0 int64
}

func (q *queue) push(it item) bool {
	q.mu.Lock()
	if len(q.h) >= q.limit {
		q.mu.Unlock()
		return false
	}
	it.seq = q.seq
	q.seq++
	q.h.push(it)
	if q.h[0].seq == it.seq {
		// A new head: wake the transmitter at its release time. An
		// error means the switch is closing.
		_ = q.timer.ArmAt(q.mono0 + it.release)
	}
	q.mu.Unlock()
	return true
}
