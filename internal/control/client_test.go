package control

import (
	"context"
	"crypto/tls"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/testnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type certs struct {
	server *tls.Config
	client *tls.Config
}

// newIssuer returns a fresh CA and what issues and writes its leaves.
func newIssuer(t *testing.T) (*pki.CA, func(name string, hosts []string) pki.Files) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca, func(name string, hosts []string) pki.Files {
		t.Helper()
		leaf, err := ca.Issue(name, hosts, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pki.WriteLeaf(dir, name, ca, leaf)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
}

func newCerts(t *testing.T, clientName string) certs {
	t.Helper()
	_, issue := newIssuer(t)
	srv, err := pki.ServerConfig(issue("controller", []string{"127.0.0.1", "localhost"}))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := pki.ClientConfig(issue(clientName, nil), "")
	if err != nil {
		t.Fatal(err)
	}
	return certs{server: srv, client: cli}
}

// testServer is a minimal AgentSession server that lets a test play the
// controller's part message by message (the real controller is tested
// against this client in internal/controller).
type testServer struct {
	pb.UnimplementedAgentSessionServer
	sessions chan *testSession
	silent   bool // never answer Register
	// durable, when set, is Registered.durable for a registration (a
	// controller that confirms reports); unset, an older controller.
	durable func(*pb.Register) *pb.ReportsDurable
	// baseline, when set, is Registered.access_baseline for a
	// registration; unset, a controller that does not check baselines.
	baseline func(*pb.Register) *pb.AccessBaseline
}

type testSession struct {
	peer   string
	reg    *pb.Register
	stream grpc.BidiStreamingServer[pb.AgentMessage, pb.ControllerMessage]
	recv   chan *pb.AgentMessage
	end    chan struct{}
	gone   chan struct{} // closed when the session has ended
}

func (s *testServer) Session(stream grpc.BidiStreamingServer[pb.AgentMessage, pb.ControllerMessage]) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if s.silent {
		<-stream.Context().Done()
		return nil
	}
	ts := &testSession{reg: m.GetRegister(), stream: stream, recv: make(chan *pb.AgentMessage, 64), end: make(chan struct{}),
		gone: make(chan struct{})}
	defer close(ts.gone)
	if p, ok := peer.FromContext(stream.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			ts.peer = pki.PeerName(ti.State)
		}
	}
	reg := &pb.Registered{Controller: "test", ReportIntervalMs: 20}
	if s.durable != nil {
		reg.Durable = s.durable(ts.reg)
	}
	if s.baseline != nil {
		reg.AccessBaseline = s.baseline(ts.reg)
	}
	if err := stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Registered{Registered: reg}}); err != nil {
		return err
	}
	s.sessions <- ts
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case ts.recv <- m:
			default: // the test is not reading reports
			}
		}
	}()
	select {
	case <-ts.end:
		return errors.New("session ended by test")
	case err := <-errc:
		return err
	}
}

func startServer(t *testing.T, c certs, s *testServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(c.server)))
	pb.RegisterAgentSessionServer(g, s)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func (ts *testSession) sendState(t *testing.T, v uint64) {
	t.Helper()
	if err := ts.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_State{State: &pb.DesiredState{Version: v}}}); err != nil {
		t.Fatal(err)
	}
}

// waitAck skips reports until the ACK of version v arrives.
func (ts *testSession) waitAck(t *testing.T, v uint64) *pb.Ack {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ts.recv:
			if a := m.GetAck(); a != nil && a.GetVersion() == v {
				return a
			}
		case <-deadline:
			t.Fatalf("no ack for version %d", v)
		}
	}
}

func waitSession(t *testing.T, s *testServer) *testSession {
	t.Helper()
	select {
	case ts := <-s.sessions:
		return ts
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	return nil
}

type agentFake struct {
	mu      sync.Mutex
	applied []uint64
	refuse  map[uint64]bool
	flows   atomic.Uint64
}

func (a *agentFake) apply(v uint64, _ *pb.DesiredState) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse[v] {
		return errors.New("boom: prefix overlaps")
	}
	a.applied = append(a.applied, v)
	return nil
}

func (a *agentFake) calls() []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]uint64(nil), a.applied...)
}

func runClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestSessionAckNackAndReconnect(t *testing.T) {
	ce := newCerts(t, "edge-1")
	srv := &testServer{sessions: make(chan *testSession, 4)}
	addr := startServer(t, ce, srv)
	ag := &agentFake{refuse: map[uint64]bool{2: true}}
	cache := filepath.Join(t.TempDir(), "state.pb")
	c := runClient(t, Config{
		Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Site: "eu", Role: pb.NodeRole_NODE_ROLE_EDGE,
		Addresses: []string{"192.0.2.1"}, Apply: ag.apply, CacheFile: cache, MinBackoff: 10 * time.Millisecond,
		Probes: func() []*pb.ProbeResult { return []*pb.ProbeResult{{Mirror: "paris", Health: pb.Health_HEALTH_UP}} },
		AccessCounts: func() []*pb.AccessCount {
			return []*pb.AccessCount{{ResourceId: 1, RegionId: 2, MirrorId: 3, NewFlows: ag.flows.Swap(0)}}
		},
	})
	ts := waitSession(t, srv)
	if ts.peer != "edge-1" || ts.reg.GetNode() != "edge-1" || ts.reg.GetSite() != "eu" || ts.reg.GetAppliedVersion() != 0 {
		t.Fatalf("register %v from %q", ts.reg, ts.peer)
	}
	ts.sendState(t, 1)
	if a := ts.waitAck(t, 1); a.GetError() != "" {
		t.Fatalf("v1 nacked: %v", a)
	}
	ts.sendState(t, 2)
	if a := ts.waitAck(t, 2); !strings.Contains(a.GetError(), "boom") {
		t.Fatalf("v2 should be nacked with the apply error: %v", a)
	}
	if c.Version() != 1 {
		t.Fatalf("applied version %d after a nack, want 1", c.Version())
	}
	cached, err := LoadCache(cache)
	if err != nil || cached.GetVersion() != 1 {
		t.Fatalf("cache %v %v", cached, err)
	}
	// Reports carry the supplied probes.
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case m := <-ts.recv:
			if r := m.GetReport(); r != nil && len(r.GetProbes()) == 1 && r.GetEndUnixNano() >= r.GetStartUnixNano() {
				got = true
			}
		case <-deadline:
			t.Fatal("no report with probes")
		}
	}

	// The controller goes away: the client reconnects, says what it runs,
	// and is not made to re-apply the same version.
	close(ts.end)
	ts2 := waitSession(t, srv)
	if ts2.reg.GetAppliedVersion() != 1 {
		t.Fatalf("re-register applied_version %d, want 1", ts2.reg.GetAppliedVersion())
	}
	ts2.sendState(t, 1)
	if a := ts2.waitAck(t, 1); a.GetError() != "" {
		t.Fatal(a)
	}
	ts2.sendState(t, 3)
	ts2.waitAck(t, 3)
	if got := ag.calls(); len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("apply calls %v, want [1 3]", got)
	}
	if probs, err := testutil.CollectAndLint(c); err != nil || len(probs) > 0 {
		t.Fatalf("metric lint: %v %v", probs, err)
	}
	if n := testutil.CollectAndCount(c); n != 10 {
		t.Fatalf("%d metrics", n)
	}
}

// TestRevokedControllerSessionEnds: a controller whose certificate is
// revoked after the session opened (the CRL file changes, no restart)
// gets no further state applied and no further report: the agent ends the
// session, and its reconnection is refused by the handshake.
func TestRevokedControllerSessionEnds(t *testing.T) {
	ca, issue := newIssuer(t)
	ctlFiles := issue("controller", []string{"127.0.0.1"})
	srvTLS, err := pki.ServerConfig(ctlFiles)
	if err != nil {
		t.Fatal(err)
	}
	crl := filepath.Join(t.TempDir(), "ca.crl")
	writeCRL := func(serials ...*big.Int) {
		t.Helper()
		b, err := ca.Revoke(nil, serials, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(crl, 0o644, b); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL()
	agentFiles := issue("edge-9", nil)
	agentFiles.CRL = crl
	src, err := pki.Open(agentFiles, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &testServer{sessions: make(chan *testSession, 4)}
	addr := startServer(t, certs{server: srvTLS}, srv)
	ag := &agentFake{}
	runClient(t, Config{Endpoints: []string{addr}, Credentials: src.ClientCredentials(), Revocation: src,
		Node: "edge-9", Apply: ag.apply, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ts := waitSession(t, srv)
	ts.sendState(t, 1)
	if a := ts.waitAck(t, 1); a.GetError() != "" {
		t.Fatal(a)
	}
	ctl, err := pki.Open(ctlFiles, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeCRL(ctl.Leaf().SerialNumber)
	// Whichever comes first, this state or the next report, ends it.
	_ = ts.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_State{State: &pb.DesiredState{Version: 2}}})
	select {
	case <-ts.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the session with a revoked controller did not end")
	}
	if got := ag.calls(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("apply calls %v, want [1]: a revoked controller's state was applied", got)
	}
	if n := src.RevokedSessionsEnded(); n != 1 {
		t.Fatalf("sessions ended as revoked: %d, want 1", n)
	}
	// The reconnection fails its handshake on the CRL (counted), and no
	// session reaches the server.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(src.Collector("controller"))
	refused := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "premirror_tls_revoked_handshakes_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	for deadline := time.Now().Add(5 * time.Second); refused() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no reconnection refused by the CRL")
		}
	}
	select {
	case ts := <-srv.sessions:
		t.Fatalf("a session from %q reached the server after the revocation", ts.peer)
	default:
	}
}

func TestEndpointRotation(t *testing.T) {
	ce := newCerts(t, "edge-2")
	srv := &testServer{sessions: make(chan *testSession, 4)}
	addr := startServer(t, ce, srv)
	dead, err := testnet.Listen("tcp", "127.0.0.1") // closed, it stays refused
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	ag := &agentFake{}
	runClient(t, Config{Endpoints: []string{deadAddr, deadAddr, addr}, TLS: ce.client, Node: "edge-2",
		Apply: ag.apply, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ts := waitSession(t, srv)
	if ts.reg.GetNode() != "edge-2" {
		t.Fatal(ts.reg)
	}
}

func TestRegisterTimeout(t *testing.T) {
	ce := newCerts(t, "edge-3")
	srv := &testServer{sessions: make(chan *testSession, 1), silent: true}
	addr := startServer(t, ce, srv)
	c, err := New(Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-3", Apply: (&agentFake{}).apply,
		RegisterTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	registered, err := c.session(context.Background(), addr)
	if registered || err == nil {
		t.Fatalf("registered=%v err=%v", registered, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("register wait not bounded: %v", d)
	}
}

func TestBackoff(t *testing.T) {
	mn, mx := 100*time.Millisecond, 5*time.Second
	cases := []struct {
		n      int
		u      float64
		lo, hi time.Duration
	}{
		{1, 0, 50 * time.Millisecond, 50 * time.Millisecond},
		{1, 0.999, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 0, 100 * time.Millisecond, 100 * time.Millisecond},
		{4, 0.5, 400 * time.Millisecond, 800 * time.Millisecond},
		{30, 0.999, 2500 * time.Millisecond, 5 * time.Second},
		{1000, 0, 2500 * time.Millisecond, 2500 * time.Millisecond},
	}
	for _, tc := range cases {
		d := Backoff(mn, mx, tc.n, tc.u)
		if d < tc.lo || d > tc.hi {
			t.Errorf("Backoff(n=%d, u=%v) = %v, want in [%v, %v]", tc.n, tc.u, d, tc.lo, tc.hi)
		}
	}
}

func TestAccessBufMerges(t *testing.T) {
	b := accessBuf{}
	b.add([]*pb.AccessCount{{ResourceId: 1, RegionId: 1, MirrorId: 1, NewFlows: 2, Packets: 5, Bytes: 100}})
	b.add([]*pb.AccessCount{{ResourceId: 1, RegionId: 1, MirrorId: 1, NewFlows: 3, Packets: 1, Bytes: 10}, {ResourceId: 2, RegionId: 1, MirrorId: 1, NewFlows: 1}})
	l := b.list()
	if len(l) != 2 {
		t.Fatal(l)
	}
	for _, a := range l {
		if a.GetResourceId() == 1 && (a.GetNewFlows() != 5 || a.GetPackets() != 6 || a.GetBytes() != 110) {
			t.Fatal(a)
		}
	}
	b.reset()
	if len(b.list()) != 0 {
		t.Fatal("not reset")
	}
}

func TestLoadCache(t *testing.T) {
	dir := t.TempDir()
	if st, err := LoadCache(filepath.Join(dir, "missing")); st != nil || err != nil {
		t.Fatalf("missing: %v %v", st, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte{0xff, 0xff, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCache(bad); err == nil {
		t.Fatal("corrupt cache accepted")
	}
	good := filepath.Join(dir, "good")
	if err := writeCache(good, &pb.DesiredState{Version: 7, DefaultRegion: "eu"}); err != nil {
		t.Fatal(err)
	}
	st, err := LoadCache(good)
	if err != nil || st.GetVersion() != 7 || st.GetDefaultRegion() != "eu" {
		t.Fatalf("%v %v", st, err)
	}
	if err := writeCache(good, &pb.DesiredState{}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCache(good); err == nil {
		t.Fatal("cache without version accepted")
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Endpoints: []string{"x:1"}, TLS: &tls.Config{}, Node: "n", Apply: func(uint64, *pb.DesiredState) error { return nil }}
	cases := []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"endpoints", func(c *Config) { c.Endpoints = nil }, "endpoints"},
		{"tls", func(c *Config) { c.TLS = nil }, "tls"},
		{"node", func(c *Config) { c.Node = "" }, "node"},
		{"apply", func(c *Config) { c.Apply = nil }, "apply"},
		{"address", func(c *Config) { c.Addresses = []string{"nope"} }, "addresses[0]"},
		{"backoff", func(c *Config) { c.MinBackoff = time.Second; c.MaxBackoff = time.Millisecond }, "backoff"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want %q", err, tc.field)
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
}

// FuzzLoadCache: a cache file is decoded defensively; whatever it holds,
// LoadCache returns a state with a version or an error, never a panic.
func FuzzLoadCache(f *testing.F) {
	b, err := proto.Marshal(&pb.DesiredState{Version: 3, DefaultRegion: "eu", Regions: []*pb.RegionState{{Name: "eu", Id: 1}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0x08})
	dir := f.TempDir()
	framed := filepath.Join(dir, "framed.pb")
	if err := writeCache(framed, &pb.DesiredState{Version: 3, DefaultRegion: "eu"}); err != nil {
		f.Fatal(err)
	}
	if fb, err := os.ReadFile(framed); err == nil {
		f.Add(fb)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "state.pb")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := LoadCache(p)
		if err == nil && st.GetVersion() == 0 {
			t.Fatal("state without version accepted")
		}
	})
}

// TestSameVersionOtherContentApplied: the controller encodes a version per
// site (its default region is the agent's site). An agent restarted with
// another controller.site applies its cache (the old site's encoding of
// version 9) and records it applied; when the controller then sends
// version 9 for the new site, the client must apply it, not ACK it as
// what the data plane already runs.
func TestSameVersionOtherContentApplied(t *testing.T) {
	ce := newCerts(t, "edge-1")
	srv := &testServer{sessions: make(chan *testSession, 4)}
	addr := startServer(t, ce, srv)
	ag := &agentFake{}
	c, err := New(Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Site: "us", Role: pb.NodeRole_NODE_ROLE_EDGE,
		Apply: ag.apply, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// As the agent does after LoadCache: the cached state, written
	// while the node was in site eu.
	c.SetApplied(9, &pb.DesiredState{Version: 9, DefaultRegion: "eu", Regions: []*pb.RegionState{{Name: "eu", Id: 1}, {Name: "us", Id: 2}}})
	runStarted(t, c)
	ts := waitSession(t, srv)
	st := &pb.DesiredState{Version: 9, DefaultRegion: "us", Regions: []*pb.RegionState{{Name: "eu", Id: 1}, {Name: "us", Id: 2}}}
	if err := ts.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_State{State: st}}); err != nil {
		t.Fatal(err)
	}
	ts.waitAck(t, 9)
	if _, got := c.State(); got.GetDefaultRegion() != "us" || len(ag.calls()) != 1 {
		t.Fatalf("version 9 for site us ACKed while running site eu's (default region %q, apply calls %v)",
			got.GetDefaultRegion(), ag.calls())
	}
}

func runStarted(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
