package controller

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/control"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/testnet"
)

// One embedded etcd serves every test of the binary (starting one takes
// about a second); each test works under its own key prefix.
var shared struct {
	dir      string
	ca       *pki.CA
	files    pki.Files // the controller's certificate (also its etcd client)
	endpoint string
	once     sync.Once
	etcd     *embed.Etcd
	err      error
}

// etcdEndpoint starts the shared etcd on first use, so tests (and fuzz
// workers) that need none do not pay for it.
func etcdEndpoint(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		shared.etcd, shared.endpoint, shared.err = StartEtcd(EmbeddedEtcd{Dir: filepath.Join(shared.dir, "etcd"),
			TLS: shared.files, UnsafeNoFsync: true, Logger: zap.NewNop()})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.endpoint
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "premirror-controller-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shared.dir = dir
	if shared.ca, err = pki.NewCA("test-ca", time.Hour); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	shared.files = issueFiles(nil, shared.ca, dir, "controller", []string{"127.0.0.1", "localhost"})
	code := m.Run()
	if shared.etcd != nil {
		shared.etcd.Close()
	}
	if code == 0 {
		// etcd's own background goroutines end with Close; anything left
		// is ours.
		if err := goleak.Find(goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
			goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
			goleak.IgnoreTopFunction("go.etcd.io/etcd/pkg/v3/schedule.(*fifo).run")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

func issueFiles(t testing.TB, ca *pki.CA, dir, name string, hosts []string) pki.Files {
	leaf, err := ca.Issue(name, hosts, time.Hour)
	if err == nil {
		var f pki.Files
		if f, err = pki.WriteLeaf(dir, name, ca, leaf); err == nil {
			return f
		}
	}
	if t != nil {
		t.Fatal(err)
	}
	panic(err)
}

var prefixSeq atomic.Int64

// testPrefix isolates a test's keys in the shared etcd.
func testPrefix(t testing.TB) string {
	safe := regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-")
	return fmt.Sprintf("/test/%s-%d/", safe, prefixSeq.Add(1))
}

func etcdClient(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := DialEtcd([]string{etcdEndpoint(t)}, &shared.files)
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel}))
}

// replica is one controller under test.
type replica struct {
	c      *Controller
	addr   string
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startReplica(t testing.TB, name, prefix string, tweak func(*Config)) *replica {
	t.Helper()
	return startReplicaKV(t, name, prefix, tweak, nil)
}

// startReplicaKV is startReplica whose etcd KV calls go through wrap (a
// test's fault injection), set before the replica starts.
func startReplicaKV(t testing.TB, name, prefix string, tweak func(*Config), wrap func(clientv3.KV) clientv3.KV) *replica {
	t.Helper()
	cfg := Config{Name: name, TLS: shared.files, Prefix: prefix, TickInterval: 100 * time.Millisecond,
		ReportInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: quietLogger()}
	if tweak != nil {
		tweak(&cfg)
	}
	cli := etcdClient(t)
	if wrap != nil {
		cli.KV = wrap(cli.KV)
	}
	c, err := New(cfg, cli)
	if err != nil {
		t.Fatal(err)
	}
	// Below the ephemeral range: startReplicaAt may reopen the address.
	lis, err := testnet.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{c: c, addr: lis.Addr().String(), cli: cli, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Serve(ctx, lis) }()
	t.Cleanup(r.stop)
	return r
}

// stop shuts the replica down gracefully (resigns, revokes its lease).
func (r *replica) stop() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
		r.cli.Close()
	})
}

// kill stops the replica as a crash would: no resignation, no lease
// revocation; etcd notices only when the leases expire.
func (r *replica) kill() {
	r.c.crash.Store(true)
	r.stop()
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func clientTLS(t testing.TB, f pki.Files) *tls.Config {
	t.Helper()
	tc, err := pki.ClientConfig(f, "")
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// adminClient connects to the admin API with a certificate named cn.
func adminClient(t testing.TB, addr, cn string) pb.AdminClient {
	t.Helper()
	f := issueFiles(t, shared.ca, t.TempDir(), cn, nil)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, f))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewAdminClient(conn)
}

// testObjects: two sites, a mirror in each, one resource from paris
// mirrored to nyc.
func testObjects() *pb.Objects {
	return &pb.Objects{
		Sites: []*pb.Site{
			{Name: "eu", ClientPrefixes: []string{"10.1.0.0/16"}, Location: &pb.Location{Latitude: 48.85, Longitude: 2.35}},
			{Name: "us", ClientPrefixes: []string{"10.2.0.0/16"}, Location: &pb.Location{Latitude: 40.71, Longitude: -74.0}},
		},
		Mirrors: []*pb.Mirror{
			{Name: "paris", Site: "eu", Address: "192.0.2.10", Node: "paris-host"},
			{Name: "nyc", Site: "us", Address: "192.0.2.20"},
		},
		Resources: []*pb.Resource{{Name: "disk", Vips: []string{"203.0.113.5"}, Ports: []uint32{443},
			Protocol: pb.Protocol_PROTOCOL_TCP, Origin: "paris", MirrorPolicy: &pb.MirrorPolicy{Mirrors: []string{"nyc"}}}},
	}
}

// fakeAgent is the agent side under test: a real control.Client whose
// Apply records versions and whose probes the test sets.
type fakeAgent struct {
	client *control.Client
	mu     sync.Mutex
	states map[uint64]*pb.DesiredState
	probes map[string]*pb.ProbeResult
	health []*pb.MirrorHealth
	access []*pb.AccessCount // deltas for the next report
	refuse bool
	outer  []string // outer sources sent at registration and in reports
	decap  []string // decap_sources, likewise
	cancel context.CancelFunc
	done   chan struct{}
}

func startAgent(t testing.TB, node, site string, role pb.NodeRole, endpoints ...string) *fakeAgent {
	t.Helper()
	return startAgentWith(t, node, site, role, nil, endpoints...)
}

// startAgentWith starts an agent that registers with outer sources.
func startAgentWith(t testing.TB, node, site string, role pb.NodeRole, outer []string, endpoints ...string) *fakeAgent {
	t.Helper()
	f := issueFiles(t, shared.ca, t.TempDir(), node, nil)
	a := &fakeAgent{states: map[uint64]*pb.DesiredState{}, probes: map[string]*pb.ProbeResult{}, done: make(chan struct{}), outer: outer}
	c, err := control.New(control.Config{
		Endpoints: endpoints, TLS: clientTLS(t, f), Node: node, Site: site, Role: role,
		Apply: a.apply, Probes: a.probeList, MirrorHealth: a.mirrorHealth, AccessCounts: a.accessCounts,
		OuterSources: a.outerSources, DecapSources: a.decapSources, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.client = c
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { defer close(a.done); _ = c.Run(ctx) }()
	t.Cleanup(a.stop)
	return a
}

func (a *fakeAgent) stop() {
	a.cancel()
	<-a.done
}

func (a *fakeAgent) apply(v uint64, st *pb.DesiredState) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse {
		return fmt.Errorf("refused by test")
	}
	a.states[v] = proto.Clone(st).(*pb.DesiredState)
	return nil
}

func (a *fakeAgent) outerSources() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.outer
}

func (a *fakeAgent) decapSources() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.decap
}

func (a *fakeAgent) setDecapSources(s ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.decap = s
}

func (a *fakeAgent) setOuterSources(s ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.outer = s
}

func (a *fakeAgent) probeList() []*pb.ProbeResult {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*pb.ProbeResult
	for _, p := range a.probes {
		p.LastProbeUnixNano = time.Now().UnixNano()
		out = append(out, proto.Clone(p).(*pb.ProbeResult))
	}
	return out
}

func (a *fakeAgent) mirrorHealth() []*pb.MirrorHealth {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.health
}

func (a *fakeAgent) accessCounts() []*pb.AccessCount {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.access
	a.access = nil
	return out
}

// addAccess queues new flows of (resource ID, region ID) for the next
// report and sends it.
func (a *fakeAgent) addAccess(resource, region uint32, newFlows uint64) {
	a.mu.Lock()
	a.access = append(a.access, &pb.AccessCount{ResourceId: resource, RegionId: region, MirrorId: 1, NewFlows: newFlows, Packets: newFlows})
	a.mu.Unlock()
	a.client.ReportNow()
}

func (a *fakeAgent) setProbe(mirror string, rtt time.Duration, h pb.Health) {
	a.setProbes(map[string]time.Duration{mirror: rtt}, h)
}

// setProbes sets several probe results at once (one report carries them
// all, so the policy never sees half of them).
func (a *fakeAgent) setProbes(rtts map[string]time.Duration, h pb.Health) {
	a.mu.Lock()
	for mirror, rtt := range rtts {
		a.probes[mirror] = &pb.ProbeResult{Mirror: mirror, RttNs: int64(rtt), MedianNs: int64(rtt), MinNs: int64(rtt),
			Health: h, Samples: 10, Probes: 10}
	}
	a.mu.Unlock()
	a.client.ReportNow()
}

// current is the state of the applied version.
func (a *fakeAgent) current() *pb.DesiredState {
	v := a.client.Version()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.states[v]
}

// routeOf returns the weights by mirror name of (resource, region name)
// in st ("*" for the wildcard).
func routeOf(st *pb.DesiredState, resource, region string) map[string]uint32 {
	if st == nil {
		return nil
	}
	regionID := map[string]uint32{"*": 0}
	for _, r := range st.GetRegions() {
		regionID[r.GetName()] = r.GetId()
	}
	mirror := map[uint32]string{}
	for _, m := range st.GetMirrors() {
		mirror[m.GetId()] = m.GetName()
	}
	for _, res := range st.GetResources() {
		if res.GetName() != resource {
			continue
		}
		for i, reg := range res.GetRouteRegions() {
			if id, ok := regionID[region]; ok && reg == id {
				out := map[string]uint32{}
				for _, w := range st.GetWeightSets()[res.GetRouteWeightSets()[i]].GetWeights() {
					out[mirror[w.GetMirrorId()]] = w.GetWeight()
				}
				return out
			}
		}
	}
	return nil
}

// startReplicaAt starts a replica listening on a given address (a
// restarted controller keeps its address).
func startReplicaAt(t testing.TB, name, prefix, addr string) *replica {
	t.Helper()
	cli := etcdClient(t)
	c, err := New(Config{Name: name, TLS: shared.files, Prefix: prefix, TickInterval: 100 * time.Millisecond,
		ReportInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: quietLogger()}, cli)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := testnet.Relisten("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{c: c, addr: addr, cli: cli, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Serve(ctx, lis) }()
	t.Cleanup(r.stop)
	return r
}

var testLogLevel = func() slog.Level {
	if os.Getenv("PREMIRROR_TEST_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}()
