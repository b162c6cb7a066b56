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
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
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
	// (deltas). Counts not delivered are kept and sent with the next
	// report.
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
	// CacheFile, when set, receives every applied version (see LoadCache).
	CacheFile string
	Logger    *slog.Logger
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
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Client is the agent's session with the controller.
type Client struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	applied    uint64
	state      *pb.DesiredState
	controller string // serving replica, "" while disconnected
	pending    accessBuf
	sentUntil  time.Time // end of the interval last reported

	kick chan struct{}
	m    metrics
}

// New validates cfg and returns a client; Run connects it.
func New(cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Client{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.Node),
		pending:   accessBuf{},
		sentUntil: time.Now(),
		kick:      make(chan struct{}, 1),
	}, nil
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
	register := &pb.Register{
		Node: c.cfg.Node, Site: c.cfg.Site, Role: c.cfg.Role, Addresses: c.cfg.Addresses,
		AppliedVersion: c.Version(), AgentVersion: c.cfg.AgentVersion,
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
	c.m.connected.Store(true)
	defer func() {
		c.mu.Lock()
		c.controller = ""
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
		err := c.reportLoop(sctx, s, interval, revoked)
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

func (c *Client) reportLoop(ctx context.Context, s *sessionIO, interval time.Duration, revoked func() bool) error {
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

// sendReport sends one report; access deltas are dropped from the pending
// buffer only once the stream took them.
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
		c.pending.add(f())
	}
	r.StartUnixNano = c.sentUntil.UnixNano()
	r.Access = c.pending.list()
	c.mu.Unlock()
	if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: r}}); err != nil {
		return err
	}
	c.mu.Lock()
	c.pending.reset()
	c.sentUntil = now
	c.mu.Unlock()
	c.m.reports.Add(1)
	return nil
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
	connected  atomic.Bool
	applied    atomic.Uint64
	acks       atomic.Uint64
	nacks      atomic.Uint64
	reports    atomic.Uint64
	reconnects atomic.Uint64
}
