package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/atomicfile"
)

// Defaults for zero Config fields.
const (
	DefaultReportInterval  = time.Second
	DefaultMinBackoff      = 100 * time.Millisecond
	DefaultMaxBackoff      = 5 * time.Second
	DefaultRegisterTimeout = 10 * time.Second
	// MaxMessageBytes bounds a received desired state (4096 resources × 64
	// regions encode to well under 8 MiB).
	MaxMessageBytes = 64 << 20
	// DefaultMaxPendingReports and DefaultMaxPendingFlows bound the
	// reports kept until the controller confirms their access counts:
	// a controller confirms every FlushInterval (at most a minute by
	// default), so 1024 reports is over a quarter of an hour at one a
	// second; 2^18 (resource, region) counts take 4 MiB.
	DefaultMaxPendingReports = 1024
	DefaultMaxPendingFlows   = 1 << 18
	// maxErrorText bounds a NACK's error text.
	maxErrorText = 4096
)

// ErrNotRegistered is returned by a session the controller did not accept.
var ErrNotRegistered = errors.New("controller did not register the agent")

// Config configures a Client. Endpoints, TLS (or Credentials), Node and
// Apply are required.
type Config struct {
	// Endpoints are controller replicas (host:port), tried in turn.
	Endpoints []string
	// TLS is the mutual-TLS client configuration (pki.ClientConfig). An
	// empty ServerName verifies each endpoint's host name.
	TLS *tls.Config
	// Credentials, when set, are used instead of TLS: a pki.Source's
	// ClientCredentials build a configuration per connection, so a
	// renewed certificate, CA bundle or CRL applies to the next session.
	Credentials credentials.TransportCredentials
	// Node must equal the common name of the client certificate.
	Node string
	// Site is the node's site (a Site object's name).
	Site      string
	Role      pb.NodeRole
	Addresses []string
	// AgentVersion is a free-form build identifier.
	AgentVersion string

	// Apply programs a version into the data plane; its error is sent as
	// a NACK and the previous version stays the applied one. Calls are
	// serialized.
	Apply func(version uint64, st *pb.DesiredState) error
	// AccessCounts returns the access counts since its previous call
	// (deltas). Under a controller that confirms reports
	// (Registered.durable), the client keeps each report's new flows until
	// the controller confirms them written and sends them again on the
	// next session otherwise, so each is counted once across broken
	// streams and replica changes (within MaxPendingReports). Under one
	// that does not, counts a failed send did not deliver go with the next
	// report, and nothing is sent twice.
	AccessCounts func() []*pb.AccessCount
	// Probes returns the current probe estimates.
	Probes func() []*pb.ProbeResult
	// NodeStats returns the node's load.
	NodeStats func() *pb.NodeStats
	// MirrorHealth returns the health of the mirrors this node hosts.
	MirrorHealth func() []*pb.MirrorHealth
	// OuterSources returns the outer sources of the node's tunnel
	// packets (nil on a node without the router), sent at registration
	// and in every report.
	OuterSources func() []string
	// DecapSources returns the prefixes this node's decap takes tunnel
	// packets from (nil: any, or no decap program), sent at registration
	// and in every report.
	DecapSources func() []string

	// ReportInterval is used until the controller asks for another one.
	ReportInterval time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// per failed attempt and is jittered to [d/2, d).
	MinBackoff, MaxBackoff time.Duration
	// RegisterTimeout bounds the wait for the controller's Registered.
	RegisterTimeout time.Duration
	// MaxPendingReports and MaxPendingFlows bound the reports kept until
	// the controller confirms them, in number and in (resource, region)
	// counts (defaults DefaultMaxPendingReports, DefaultMaxPendingFlows).
	// Beyond either the oldest are dropped (logged, counted): their
	// counts are lost unless a controller wrote them. Reporting never
	// waits for confirmations.
	MaxPendingReports, MaxPendingFlows int
	// CacheFile, when set, receives every applied version (see LoadCache).
	CacheFile string
	// JournalFile, when set, keeps on disk what an agent restart must not
	// lose of its access counts under a controller that confirms them
	// (journal.go): the run, its numbers, the reports not yet confirmed
	// and the counters' values the last report counted to. A Client
	// started on it continues the run: it sends those reports again and
	// the agent counts from RestoredBaseline. Each numbered report is
	// written to it before it is sent. Another process holding it
	// (locked) or a journal that cannot be applied start a new run.
	JournalFile string
	// CounterSource names the counters AccessCounts reads (the agent: the
	// boot and the pin directory): a journal of another source restores
	// no baseline, the counters being newer than it.
	CounterSource string
	// AccessBaseline, with JournalFile, returns the new flows each
	// counter held when AccessCounts last read it (NewFlows; the
	// counter's key in ResourceId, RegionId, MirrorId): of every counter
	// with new flows when all, otherwise of those changed since its
	// previous call (a counter gone as 0). Called right after
	// AccessCounts, with nothing in between that reads the counters;
	// after every report's, its result discarded when no journal record
	// takes it.
	AccessBaseline func(all bool) []*pb.AccessCount
	// DropBaseline, with JournalFile, is called at most once, before the
	// first report of a run continued from the journal, when the
	// controller says another agent ran on the node since the journal's
	// last write (Registered.access_baseline): that agent reported the
	// counters' growth since, so the agent must not count from
	// RestoredBaseline but from the counters' values at its start, as a
	// new run does. Called with nothing in between that reads the
	// counters; the client then writes the journal whole (AccessBaseline).
	DropBaseline func()
	Logger       *slog.Logger
	// Revocation, when set (a pki.Source), is asked before every desired
	// state is applied and every report is sent whether the controller's
	// certificate has been revoked since the handshake; if so the session
	// ends (and the reconnection is refused by the handshake's CRL check).
	Revocation Revocation
}

// Revocation tells whether a certificate is in the CRL current now and
// counts the sessions it ended (pki.Source).
type Revocation interface {
	Revoked(*x509.Certificate) bool
	EndedRevoked()
}

// errControllerRevoked ends a session whose controller's certificate was
// revoked after the handshake.
var errControllerRevoked = errors.New("controller certificate revoked since the session opened")

func (c *Config) validate() error {
	switch {
	case len(c.Endpoints) == 0:
		return errors.New("control endpoints: at least one controller address is required")
	case c.TLS == nil && c.Credentials == nil:
		return errors.New("control tls: a mutual-TLS client configuration is required")
	case c.Node == "":
		return errors.New("control node: missing")
	case c.Apply == nil:
		return errors.New("control apply: callback missing")
	case c.JournalFile != "" && (c.AccessCounts == nil || c.AccessBaseline == nil || c.DropBaseline == nil):
		return errors.New("control journal: needs the AccessCounts, AccessBaseline and DropBaseline callbacks")
	}
	for i, a := range c.Addresses {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("control addresses[%d]: %w", i, err)
		}
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultReportInterval
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.RegisterTimeout == 0 {
		c.RegisterTimeout = DefaultRegisterTimeout
	}
	if c.ReportInterval < 0 || c.MinBackoff < 0 || c.MaxBackoff < c.MinBackoff || c.RegisterTimeout < 0 {
		return errors.New("control intervals: negative, or max backoff below min backoff")
	}
	if c.MaxPendingReports == 0 {
		c.MaxPendingReports = DefaultMaxPendingReports
	}
	if c.MaxPendingFlows == 0 {
		c.MaxPendingFlows = DefaultMaxPendingFlows
	}
	if c.MaxPendingReports < 0 || c.MaxPendingFlows < 0 {
		return errors.New("control pending bounds: negative")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Client is the agent's session with the controller.
type Client struct {
	cfg Config
	log *slog.Logger

	// runID numbers this process's reports (Register.run_id) with seq.
	runID uint64

	mu         sync.Mutex
	applied    uint64
	state      *pb.DesiredState
	controller string // serving replica, "" while disconnected
	// carry: access deltas no stream took and no pending report holds.
	carry     accessBuf
	sentUntil time.Time // end of the interval last reported
	// Of reports under a controller that confirms them: seq is the last
	// number given, pending the reports with new flows not yet confirmed
	// (by seq), pendingFlows their counts; confirming: the session's
	// controller confirms; overLimit: dropping beyond the bounds (logged
	// once until the next confirmation).
	seq          uint64
	confirmedSeq uint64 // the run's reports confirmed written (a replica's through_seq)
	pending      []*pendingReport
	pendingFlows int
	confirming   bool
	overLimit    bool

	// The journal (Config.JournalFile; nil without one), its file
	// operations serialized by jMu. Under mu: jLimit, the report numbers
	// the journal on disk reserved; jSnap: the next write replaces it
	// (none valid, or the appends outgrew their snapshot, jAppended
	// against jSnapBytes); jOnDisk: a journal file is there; jFailing: a
	// write failed (logged once until one succeeds); restored: the
	// journal the client started from; baselineOpen: its baseline awaits
	// the first registration's word (Register.check_baseline).
	j            *journalFile
	jMu          sync.Mutex
	jLimit       uint64
	jSnap        bool
	jOnDisk      bool
	jFailing     bool
	jSnapBytes   int
	jAppended    int
	restored     *journalState
	baselineOpen bool
	// crashHook, in tests, ends sendReport at a stage ("counted": counts
	// numbered and kept; "journaled": written) as a crash there would.
	crashHook func(stage string) error

	kick chan struct{}
	m    metrics
}

// New validates cfg and returns a client; Run connects it.
func New(cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.Node),
		carry:     accessBuf{},
		sentUntil: time.Now(),
		kick:      make(chan struct{}, 1),
	}
	for c.runID == 0 {
		c.runID = rand.Uint64()
	}
	if cfg.JournalFile != "" {
		c.loadJournal()
	}
	if cfg.CacheFile != "" {
		// A killed agent's unfinished replacements of the cache (another
		// agent given the same file writes under the lock too).
		if err := atomicfile.RemoveLeftoversLocked(cfg.CacheFile); err != nil {
			c.log.Warn("state cache's leftover temporary files not removed", "path", cfg.CacheFile, "err", err)
		}
	}
	return c, nil
}

// Close releases the journal (its lock); call it once Run returned.
func (c *Client) Close() error {
	c.jMu.Lock()
	defer c.jMu.Unlock()
	if c.j == nil {
		return nil
	}
	err := c.j.close()
	c.j = nil
	return err
}

// PendingReports is the number of reports whose access counts the
// controller has not confirmed yet (premirror_control_pending_reports).
func (c *Client) PendingReports() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// Version is the last applied version (0: none).
func (c *Client) Version() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied
}

// State returns the last applied version and its state (nil: none).
func (c *Client) State() (uint64, *pb.DesiredState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied, c.state
}

// SetApplied records a version the agent applied by itself (for example
// from LoadCache at start), so the same version is not applied again.
func (c *Client) SetApplied(version uint64, st *pb.DesiredState) {
	c.mu.Lock()
	c.applied, c.state = version, st
	c.mu.Unlock()
	c.m.applied.Store(version)
}

// Controller returns the replica serving the session, "" while
// disconnected.
func (c *Client) Controller() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.controller
}

// ReportNow sends a report at once (for example when a probe's health
// flips), without waiting for the interval.
func (c *Client) ReportNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run keeps a session open until ctx ends, reconnecting with backoff; it
// returns nil then. The last applied version stays in force throughout.
func (c *Client) Run(ctx context.Context) error {
	// The run's first journal, or the restored one compacted: from here a
	// restart continues from what this process counts.
	c.mu.Lock()
	w := c.journalWrite(false, nil)
	c.mu.Unlock()
	c.writeJournal(w)
	next := rand.IntN(len(c.cfg.Endpoints))
	failures := 0
	for {
		ep := c.cfg.Endpoints[next]
		registered, err := c.session(ctx, ep)
		if ctx.Err() != nil {
			return nil
		}
		if registered {
			failures = 0
		}
		failures++
		d := Backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff, failures, rand.Float64())
		c.m.reconnects.Add(1)
		c.log.Warn("controller session ended; reconnecting", "endpoint", ep, "err", err, "backoff", d.Round(time.Millisecond),
			"applied_version", c.Version())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		next = (next + 1) % len(c.cfg.Endpoints)
	}
}

// Backoff is the delay before reconnect attempt n (n ≥ 1): min·2^(n−1)
// capped at max, jittered to [d/2, d) by u ∈ [0, 1) so agents that lost
// the same controller do not reconnect in lockstep.
func Backoff(minD, maxD time.Duration, n int, u float64) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d/2 + time.Duration(u*float64(d/2))
}

// session runs one connection; registered reports whether the controller
// accepted the agent before the session ended.
func (c *Client) session(ctx context.Context, endpoint string) (registered bool, err error) {
	creds := c.cfg.Credentials
	if creds == nil {
		creds = credentials.NewTLS(c.cfg.TLS)
	}
	conn, err := grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewAgentSessionClient(conn).Session(sctx)
	if err != nil {
		return false, fmt.Errorf("open session on %s: %w", endpoint, err)
	}
	s := &sessionIO{stream: stream}
	c.mu.Lock()
	checkBaseline := c.baselineOpen
	c.mu.Unlock()
	register := &pb.Register{
		Node: c.cfg.Node, Site: c.cfg.Site, Role: c.cfg.Role, Addresses: c.cfg.Addresses,
		AppliedVersion: c.Version(), AgentVersion: c.cfg.AgentVersion, RunId: c.runID, CheckBaseline: checkBaseline,
	}
	if f := c.cfg.OuterSources; f != nil {
		register.OuterSources = f()
	}
	if f := c.cfg.DecapSources; f != nil {
		register.DecapSources = f()
	}
	err = s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Register{Register: register}})
	if err != nil {
		return false, fmt.Errorf("register: %w", err)
	}
	// A controller that accepts the stream but never answers must not hold
	// the agent: cancel the stream if Registered does not come in time.
	timer := time.AfterFunc(c.cfg.RegisterTimeout, cancel)
	first, err := stream.Recv()
	timer.Stop()
	if err != nil {
		return false, fmt.Errorf("register: %w", err)
	}
	reg := first.GetRegistered()
	if reg == nil {
		return false, fmt.Errorf("%w: first message is %T", ErrNotRegistered, first.GetMsg())
	}
	interval := c.cfg.ReportInterval
	if reg.GetReportIntervalMs() > 0 {
		interval = time.Duration(reg.GetReportIntervalMs()) * time.Millisecond
	}
	// The controller's verified certificate, checked against the CRL
	// before each state is applied and each report sent.
	revoked := func() bool { return false }
	if rv := c.cfg.Revocation; rv != nil {
		var cert *x509.Certificate
		if p, ok := peer.FromContext(stream.Context()); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
				cert = ti.State.VerifiedChains[0][0]
			}
		}
		var ended atomic.Bool // the report loop and the receiver both ask: count once
		revoked = func() bool {
			if ended.Load() {
				return true
			}
			if cert == nil || !rv.Revoked(cert) {
				return false
			}
			if ended.CompareAndSwap(false, true) {
				rv.EndedRevoked()
				c.log.Warn("controller session ended: its certificate was revoked", "endpoint", endpoint,
					"name", cert.Subject.CommonName, "serial", fmt.Sprintf("%x", cert.SerialNumber))
			}
			return true
		}
	}
	c.mu.Lock()
	c.controller = reg.GetController()
	c.mu.Unlock()
	resend, confirming := c.startReports(reg.GetDurable())
	if !confirming {
		c.dropJournal()
	}
	// Before anything is sent on the session: the controller takes any
	// message as the agent having acted on its word.
	c.resolveBaseline(reg, confirming)
	c.m.connected.Store(true)
	defer func() {
		c.mu.Lock()
		c.controller = ""
		c.confirming = false
		c.mu.Unlock()
		c.m.connected.Store(false)
	}()
	c.log.Info("controller session open", "endpoint", endpoint, "controller", reg.GetController(),
		"current_version", reg.GetCurrentVersion(), "applied_version", c.Version(), "report_interval", interval)

	var wg sync.WaitGroup
	reportErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := c.reportLoop(sctx, s, interval, revoked, resend)
		if err != nil {
			cancel() // the receive below returns, and reports this error
		}
		reportErr <- err
	}()
	defer wg.Wait()
	defer cancel()
	for {
		msg, err := stream.Recv()
		if err != nil {
			select {
			case rerr := <-reportErr:
				if rerr != nil {
					return true, rerr
				}
			default:
			}
			return true, fmt.Errorf("receive: %w", err)
		}
		if d := msg.GetDurable(); d != nil {
			c.confirmed(d)
			continue
		}
		st := msg.GetState()
		if st == nil {
			continue // a newer controller's message this agent does not know
		}
		if revoked() {
			return true, errControllerRevoked
		}
		if err := s.send(c.handleState(st)); err != nil {
			return true, fmt.Errorf("ack version %d: %w", st.GetVersion(), err)
		}
	}
}

// handleState applies one version and returns its ACK or NACK.
func (c *Client) handleState(st *pb.DesiredState) *pb.AgentMessage {
	v := st.GetVersion()
	ack := &pb.Ack{Version: v}
	c.mu.Lock()
	applied, cur := c.applied, c.state
	c.mu.Unlock()
	// The version number alone does not say the data plane runs this
	// state: the controller encodes a version per site (its default
	// region), and a state restored from the cache may be another
	// site's encoding of it (the node's controller.site changed across
	// the restart).
	if applied == v && cur != nil && proto.Equal(cur, st) {
		// The data plane already runs it (a reconnect): confirm only.
		return &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: ack}}
	}
	start := time.Now()
	if err := c.cfg.Apply(v, st); err != nil {
		ack.Error = err.Error()
		if len(ack.Error) > maxErrorText {
			ack.Error = ack.Error[:maxErrorText]
		}
		c.m.nacks.Add(1)
		c.log.Error("desired state refused (NACK); keeping the previous version", "version", v,
			"applied_version", c.Version(), "err", err)
		return &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: ack}}
	}
	c.SetApplied(v, st)
	c.m.acks.Add(1)
	c.log.Info("desired state applied", "version", v, "duration", time.Since(start).Round(time.Microsecond))
	if c.cfg.CacheFile != "" {
		if err := writeCache(c.cfg.CacheFile, st); err != nil {
			c.log.Warn("desired state cache not written", "path", c.cfg.CacheFile, "err", err)
		}
	}
	return &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: ack}}
}

// reportLoop sends the reports kept from earlier sessions again (resend),
// then a report every interval.
func (c *Client) reportLoop(ctx context.Context, s *sessionIO, interval time.Duration, revoked func() bool, resend []*pendingReport) error {
	for _, p := range resend {
		if revoked() {
			return errControllerRevoked
		}
		if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: p.report()}}); err != nil {
			return fmt.Errorf("report %d again: %w", p.seq, err)
		}
		c.mu.Lock()
		p.sent = true
		c.mu.Unlock()
		c.m.resent.Add(1)
	}
	if len(resend) > 0 {
		c.log.Info("reports sent again: no controller confirmed their access counts", "reports", len(resend),
			"first_seq", resend[0].seq, "last_seq", resend[len(resend)-1].seq)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if revoked() {
			return errControllerRevoked
		}
		if err := c.sendReport(s); err != nil {
			return fmt.Errorf("report: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.kick:
		}
	}
}

// sendReport sends one report. Under a controller that confirms reports
// it is numbered, and its new flows are kept (pending) until confirmed;
// otherwise access deltas are dropped from the carry buffer only once the
// stream took them.
func (c *Client) sendReport(s *sessionIO) error {
	now := time.Now()
	r := &pb.Report{EndUnixNano: now.UnixNano()}
	if f := c.cfg.Probes; f != nil {
		r.Probes = f()
	}
	if f := c.cfg.NodeStats; f != nil {
		r.Node = f()
	}
	if f := c.cfg.MirrorHealth; f != nil {
		r.Mirrors = f()
	}
	if f := c.cfg.OuterSources; f != nil {
		r.OuterSources = f()
	}
	if f := c.cfg.DecapSources; f != nil {
		r.DecapSources = f()
	}
	c.mu.Lock()
	if f := c.cfg.AccessCounts; f != nil {
		c.carry.add(f())
	}
	r.StartUnixNano = c.sentUntil.UnixNano()
	r.Access = c.carry.list()
	var kept *pendingReport
	var jw *journalWriteReq
	numbered := c.confirming
	if numbered {
		// From here the report holds the counts, sent or not.
		c.seq++
		r.Seq = c.seq
		kept = c.keep(r)
		c.carry = accessBuf{}
		c.sentUntil = now
		jw = c.journalWrite(true, kept)
	} else {
		c.skipBaseline()
	}
	c.mu.Unlock()
	if err := c.crash("counted"); err != nil {
		return err
	}
	// Before the send: a restart then either sends this report again or
	// (the write not done) counts its growth again, never sent.
	c.writeJournal(jw)
	if err := c.crash("journaled"); err != nil {
		return err
	}
	if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: r}}); err != nil {
		return err
	}
	c.mu.Lock()
	if kept != nil {
		kept.sent = true
	}
	if !numbered {
		c.carry.reset()
		c.sentUntil = now
	}
	c.mu.Unlock()
	c.m.reports.Add(1)
	return nil
}

// pendingReport is the access part of a report the controller has not
// confirmed: enough to send it again (Report.resend).
type pendingReport struct {
	seq        uint64
	start, end int64
	flows      []flowCount
	sent       bool // a stream took it (a controller may have counted it)
}

// flowCount is the new flows of one (resource, region): all the
// controller counts of an access count.
type flowCount struct {
	resource, region uint32
	newFlows         uint64
}

// report is p as sent again.
func (p *pendingReport) report() *pb.Report {
	r := &pb.Report{StartUnixNano: p.start, EndUnixNano: p.end, Seq: p.seq, Resend: true}
	for _, f := range p.flows {
		r.Access = append(r.Access, &pb.AccessCount{ResourceId: f.resource, RegionId: f.region, NewFlows: f.newFlows})
	}
	return r
}

// keep holds numbered report r's new flows until the controller confirms
// them (nil when it has none), dropping the oldest beyond the bounds.
// Dropped, not merged: a merged report would carry several numbers, and
// a replica that had written some of them could neither skip it nor
// count it without counting some twice. Called with c.mu held.
func (c *Client) keep(r *pb.Report) *pendingReport {
	byKey := map[[2]uint32]uint64{}
	for _, a := range r.GetAccess() {
		if a.GetNewFlows() > 0 {
			byKey[[2]uint32{a.GetResourceId(), a.GetRegionId()}] += a.GetNewFlows()
		}
	}
	if len(byKey) == 0 {
		return nil
	}
	p := &pendingReport{seq: r.GetSeq(), start: r.GetStartUnixNano(), end: r.GetEndUnixNano(), flows: make([]flowCount, 0, len(byKey))}
	for k, n := range byKey {
		p.flows = append(p.flows, flowCount{resource: k[0], region: k[1], newFlows: n})
	}
	c.pending = append(c.pending, p)
	c.pendingFlows += len(p.flows)
	if dropped := c.trimPending(); dropped > 0 {
		c.m.droppedLimit.Add(uint64(dropped))
		if !c.overLimit {
			c.overLimit = true
			c.log.Warn("access counts the controller has not confirmed dropped: more reports wait for confirmation than the limit; "+
				"they are lost unless a controller wrote them", "max_pending_reports", c.cfg.MaxPendingReports,
				"max_pending_flows", c.cfg.MaxPendingFlows, "controller", c.controller)
		}
	}
	c.m.pending.Store(int64(len(c.pending)))
	return p
}

// trimPending drops the oldest pending reports beyond the bounds and
// returns how many. Called with c.mu held.
func (c *Client) trimPending() int {
	dropped := 0
	for len(c.pending) > 1 && (len(c.pending) > c.cfg.MaxPendingReports || c.pendingFlows > c.cfg.MaxPendingFlows) {
		c.dropFirst()
		dropped++
	}
	return dropped
}

// dropFirst forgets the oldest pending report. Called with c.mu held.
func (c *Client) dropFirst() {
	c.pendingFlows -= len(c.pending[0].flows)
	c.pending[0] = nil
	c.pending = c.pending[1:]
}

// confirmed forgets the pending reports the controller confirmed.
func (c *Client) confirmed(d *pb.ReportsDurable) {
	if d.GetRunId() != c.runID {
		return // not this process's (a confused controller): keep them
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) > 0 && c.pending[0].seq <= d.GetThroughSeq() {
		c.dropFirst()
	}
	c.confirmedSeq = max(c.confirmedSeq, min(d.GetThroughSeq(), c.seq))
	c.overLimit = false
	c.m.pending.Store(int64(len(c.pending)))
}

// startReports sets up a new session's reports by what its controller
// said at registration and returns the reports to send again first, and
// whether the controller confirms reports.
func (c *Client) startReports(d *pb.ReportsDurable) ([]*pendingReport, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() { c.m.pending.Store(int64(len(c.pending))) }()
	c.confirming = d != nil && d.GetRunId() == c.runID
	if c.confirming {
		// Earlier sessions wrote these; the rest no replica can write any
		// more but this session.
		for len(c.pending) > 0 && c.pending[0].seq <= d.GetThroughSeq() {
			c.dropFirst()
		}
		c.confirmedSeq = max(c.confirmedSeq, min(d.GetThroughSeq(), c.seq))
		return slices.Clone(c.pending), true
	}
	// A controller that confirms nothing (an older one): as before
	// confirmations, nothing is sent twice. Reports a stream took may
	// have been counted: dropped. Those none took go with the next report.
	var unconfirmed uint64
	for _, p := range c.pending {
		if p.sent {
			unconfirmed++
			continue
		}
		for _, f := range p.flows {
			c.carry.add([]*pb.AccessCount{{ResourceId: f.resource, RegionId: f.region, NewFlows: f.newFlows}})
		}
		c.sentUntil = minTime(c.sentUntil, time.Unix(0, p.start))
	}
	c.pending, c.pendingFlows = nil, 0
	if unconfirmed > 0 {
		c.m.droppedUnconfirmed.Add(unconfirmed)
		c.log.Info("reports not confirmed by the previous controller dropped: this one confirms none, and might count them twice",
			"reports", unconfirmed, "controller", c.controller)
	}
	return nil, false
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// sessionIO serializes sends: gRPC allows one sender and one receiver at a
// time on a stream.
type sessionIO struct {
	mu     sync.Mutex
	stream grpc.BidiStreamingClient[pb.AgentMessage, pb.ControllerMessage]
}

func (s *sessionIO) send(m *pb.AgentMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.Send(m)
}

type accessKey struct{ resource, region, mirror uint32 }

// accessBuf accumulates access deltas not yet delivered.
type accessBuf map[accessKey]*pb.AccessCount

func (b accessBuf) add(counts []*pb.AccessCount) {
	for _, a := range counts {
		k := accessKey{a.GetResourceId(), a.GetRegionId(), a.GetMirrorId()}
		if cur, ok := b[k]; ok {
			cur.NewFlows += a.GetNewFlows()
			cur.Packets += a.GetPackets()
			cur.Bytes += a.GetBytes()
			continue
		}
		b[k] = &pb.AccessCount{ResourceId: k.resource, RegionId: k.region, MirrorId: k.mirror,
			NewFlows: a.GetNewFlows(), Packets: a.GetPackets(), Bytes: a.GetBytes()}
	}
}

func (b accessBuf) list() []*pb.AccessCount {
	out := make([]*pb.AccessCount, 0, len(b))
	for _, a := range b {
		out = append(out, a)
	}
	return out
}

func (b accessBuf) reset() { clear(b) }

// metrics are read by the Prometheus collector (metrics.go).
type metrics struct {
	connected          atomic.Bool
	applied            atomic.Uint64
	acks               atomic.Uint64
	nacks              atomic.Uint64
	reports            atomic.Uint64
	reconnects         atomic.Uint64
	resent             atomic.Uint64
	pending            atomic.Int64
	droppedLimit       atomic.Uint64
	droppedUnconfirmed atomic.Uint64
	journalLoad        string // outcome at New ("" without a journal)
	baselines          [len(baselineOutcomes)]atomic.Uint64
	journalSnapshots   atomic.Uint64
	journalAppends     atomic.Uint64
	journalErrors      atomic.Uint64
	journalBytes       atomic.Uint64
	journalNanos       atomic.Uint64
}
