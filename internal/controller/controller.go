package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/route"
)

// Config configures one controller replica. Zero durations take the
// defaults below.
type Config struct {
	// Name identifies the replica (status, logs, election); default the
	// host name and process ID.
	Name string
	// TLS is the replica's certificate; agents and admin clients must
	// present certificates of the same CA.
	TLS pki.Files
	// AdminNames are the certificate common names allowed to write
	// objects (default: "admin").
	AdminNames []string
	// Prefix is the etcd key prefix (DefaultPrefix).
	Prefix string
	// TickInterval is the route computation period (default 1 s). A
	// health change or an object change computes at once.
	TickInterval time.Duration
	// ReportInterval is what agents are asked to report at (default 1 s).
	ReportInterval time.Duration
	// ReportMaxAge, ProbeMaxAge, PathHold: see inputConfig (defaults
	// 5 s, 10 s, 2 min).
	ReportMaxAge, ProbeMaxAge, PathHold time.Duration
	// LeaseTTL bounds how long a dead leader blocks its successor and how
	// long a dead replica's agents look connected (default 3 s; etcd
	// rounds up to whole seconds).
	LeaseTTL time.Duration
	// CheckpointInterval: the policy's damping state is saved for a
	// successor at every new version and at least this often (default
	// 10 s).
	CheckpointInterval time.Duration
	// Route is the routing policy; Route.Slots defaults to the data
	// plane's table size.
	Route route.Config
	// Limits are the data planes' capacities objects must fit.
	Limits Limits
	// OnReport, when set, sees every agent report this replica receives.
	OnReport func(node string, r *pb.Report)
	// reportHook, when set (tests), sees every report first; an error
	// ends the session before the report is processed, as a stream that
	// breaks after the agent sent it.
	reportHook func(node string, r *pb.Report) error
	// noBaselineCheck (tests) answers registrations as a controller
	// before Registered.access_baseline did: without it.
	noBaselineCheck bool
	// Forecast configures the prediction engine the leader runs and the
	// path of the agents' access counts to it.
	Forecast ForecastConfig
	Logger   *slog.Logger
}

// Defaults for zero Config fields.
const (
	DefaultTickInterval       = time.Second
	DefaultReportInterval     = time.Second
	DefaultReportMaxAge       = 5 * time.Second
	DefaultProbeMaxAge        = 10 * time.Second
	DefaultPathHold           = 2 * time.Minute
	DefaultLeaseTTL           = 3 * time.Second
	DefaultCheckpointInterval = 10 * time.Second
)

// maxStreamsPerConn caps the concurrent gRPC streams of one connection.
const maxStreamsPerConn = 64

func (c *Config) setDefaults() error {
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if len(c.AdminNames) == 0 {
		c.AdminNames = []string{"admin"}
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultReportInterval
	}
	// The ages scale with a longer report interval: an agent reporting on
	// time must not look silent between its reports.
	ri := c.ReportInterval
	if err := setDurations(
		durationDefault{&c.TickInterval, DefaultTickInterval, "tick interval"}, durationDefault{&c.ReportInterval, DefaultReportInterval, "report interval"},
		durationDefault{&c.ReportMaxAge, max(DefaultReportMaxAge, 5*ri), "report max age"}, durationDefault{&c.ProbeMaxAge, max(DefaultProbeMaxAge, 10*ri), "probe max age"},
		durationDefault{&c.PathHold, DefaultPathHold, "path hold"}, durationDefault{&c.LeaseTTL, DefaultLeaseTTL, "lease ttl"},
		durationDefault{&c.CheckpointInterval, DefaultCheckpointInterval, "checkpoint interval"},
	); err != nil {
		return err
	}
	if c.ReportMaxAge <= c.ReportInterval {
		return fmt.Errorf("report max age: %v must exceed the report interval %v", c.ReportMaxAge, c.ReportInterval)
	}
	if c.Route.Slots == 0 {
		c.Route.Slots = maps.DefaultConfig().TableSlots
	}
	if c.Limits == (Limits{}) {
		c.Limits = DefaultLimits()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.Forecast.setDefaults(c.ReportInterval); err != nil {
		return err
	}
	return c.TLS.Validate()
}

// durationDefault is a duration field, its default and its name in errors.
type durationDefault struct {
	d    *time.Duration
	v    time.Duration
	name string
}

// setDurations fills zero fields with their defaults and refuses negative
// ones, naming the field.
func setDurations(fs ...durationDefault) error {
	for _, f := range fs {
		if *f.d == 0 {
			*f.d = f.v
		}
		if *f.d < 0 {
			return fmt.Errorf("%s: %v must be positive", f.name, *f.d)
		}
	}
	return nil
}

// Controller is one replica: it serves agents and the admin API from its
// view of etcd, and computes routes while it leads.
type Controller struct {
	tls    *pki.Source // the agents' and admins' channel (etcd reads its files itself)
	cfg    Config
	log    *slog.Logger
	cli    *clientv3.Client
	store  *Store
	view   *view
	engine *route.Engine
	m      *metrics
	routeM *route.Metrics
	// latRegions are the regions with latency series (leader goroutine).
	latRegions map[string]bool
	reg        *prometheus.Registry
	codec      codec

	sessMu   sync.Mutex
	sessions map[string]*agentConn
	liveMu   sync.Mutex
	live     *concurrency.Session // lease of this replica's live/ keys
	encMu    sync.Mutex
	enc      encCache
	access   *accessWriter
	fc       *forecaster // nil when forecasting is disabled

	crash atomic.Bool // tests: stop as if killed (no resign, no revoke)
}

// CheckConfig validates cfg as New does, without an etcd client, so a
// command can refuse a bad configuration before it starts anything.
func CheckConfig(cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if _, err := route.New(cfg.Route); err != nil {
		return err
	}
	if !cfg.Forecast.Disable {
		ec := cfg.Forecast.Engine
		ec.Logger = slog.New(slog.DiscardHandler)
		if _, err := forecast.NewEngine(ec); err != nil {
			return fmt.Errorf("forecast engine: %w", err)
		}
	}
	return nil
}

// New prepares a replica using an etcd client it does not own.
func New(cfg Config, cli *clientv3.Client) (*Controller, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	eng, err := route.New(cfg.Route)
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: cfg.Logger.With("controller", cfg.Name), cli: cli, engine: eng,
		sessions: map[string]*agentConn{}, reg: prometheus.NewRegistry(), codec: newCodec()}
	c.store = NewStore(cli, cfg.Prefix, cfg.Limits)
	c.view = newView(c.store, c.log)
	if c.tls, err = pki.Open(cfg.TLS, c.log); err != nil {
		return nil, err
	}
	c.m = newMetrics(c)
	c.routeM = route.NewMetrics()
	c.reg.MustRegister(c.tls.Collector("agents"))
	c.reg.MustRegister(c.m.collectors()...)
	c.reg.MustRegister(c.routeM)
	c.access = &accessWriter{c: c, leases: map[int64]clientv3.LeaseID{}}
	if !cfg.Forecast.Disable {
		if c.fc, err = newForecaster(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Name is the replica's name.
func (c *Controller) Name() string { return c.cfg.Name }

// Registry holds the replica's metrics.
func (c *Controller) Registry() *prometheus.Registry { return c.reg }

// Store is the replica's store.
func (c *Controller) Store() *Store { return c.store }

// Leader returns the name of the replica that leads now ("" if none).
func (c *Controller) Leader() string { return c.view.leader() }

// Version is the current desired-state version as this replica sees it.
func (c *Controller) Version() uint64 { return c.view.desiredRecord().GetState().GetVersion() }

// Serve runs the replica on lis until ctx ends: the agent session and
// admin services, the etcd view and the leader campaign. On return the
// replica has resigned and its agents' sessions are closed; they
// reconnect to another replica.
func (c *Controller) Serve(ctx context.Context, lis net.Listener) error {
	tc := c.tls.ServerConfig()
	var err error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() { defer wg.Done(); c.view.run(ctx) }()
	select {
	case <-c.view.ready:
	case <-ctx.Done():
		return nil
	}
	if err := c.renewLive(ctx); err != nil {
		return err
	}
	wg.Add(1)
	go func() { defer wg.Done(); c.keepLive(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.accessFlusher(ctx) }()

	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tc)),
		grpc.ForceServerCodecV2(c.codec),
		grpc.MaxRecvMsgSize(64<<20),
		// An agent holds one session stream and makes a few unary calls;
		// the cap bounds what one connection of an authenticated but
		// misbehaving node can hold open.
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// The handshake checks the CRL once per connection, and a client's
		// connection lives on: every call is checked, so a certificate
		// revoked since (an admin's, an agent's) loses its rights at once.
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := c.refuseRevoked(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := c.refuseRevoked(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	pb.RegisterAgentSessionServer(srv, &sessionService{c: c})
	pb.RegisterAdminServer(srv, &adminService{c: c})
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.leaderLoop(ctx) }()
	c.log.Info("controller serving", "addr", lis.Addr().String(), "prefix", c.store.prefix)

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	}
	cancel()
	// Session handlers end with their streams: end them, so a graceful
	// stop does not wait for agents to hang up.
	c.sessMu.Lock()
	for _, a := range c.sessions {
		a.cancel()
	}
	c.sessMu.Unlock()
	if c.crash.Load() {
		srv.Stop()
	} else {
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			srv.Stop()
		}
	}
	wg.Wait()
	c.liveMu.Lock()
	if c.live != nil {
		if c.crash.Load() {
			c.live.Orphan()
		} else {
			_ = c.live.Close() // revokes: the agents' live keys go at once
		}
	}
	c.liveMu.Unlock()
	return err
}

// refuseRevoked refuses a call whose client certificate was revoked after
// its connection's handshake.
func (c *Controller) refuseRevoked(ctx context.Context) error {
	if cert := peerCert(ctx); cert != nil && c.tls.Revoked(cert) {
		c.log.Warn("call refused: the client's certificate was revoked", "certificate", cert.Subject.CommonName,
			"serial", fmt.Sprintf("%x", cert.SerialNumber))
		return status.Error(codes.PermissionDenied, "certificate revoked")
	}
	return nil
}

func (c *Controller) renewLive(ctx context.Context) error {
	s, err := concurrency.NewSession(c.cli, concurrency.WithTTL(ttlSeconds(c.cfg.LeaseTTL)), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd lease: %w", err)
	}
	c.liveMu.Lock()
	c.live = s
	c.liveMu.Unlock()
	return nil
}

// keepLive replaces the replica's lease when etcd expired it (a long
// partition); sessions write their next report under the new one.
func (c *Controller) keepLive(ctx context.Context) {
	for {
		c.liveMu.Lock()
		s := c.live
		c.liveMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("replica lease lost; renewing")
		for ctx.Err() == nil {
			if err := c.renewLive(ctx); err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

func (c *Controller) liveLease() clientv3.LeaseID {
	c.liveMu.Lock()
	defer c.liveMu.Unlock()
	return c.live.Lease()
}

func ttlSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

func (c *Controller) sessionCount() int {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	return len(c.sessions)
}

// errLeaseLost ends a leadership whose election lease expired.
var errLeaseLost = errors.New("election lease lost")
