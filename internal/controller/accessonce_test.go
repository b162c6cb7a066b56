package controller

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// The access counts of a numbered agent (a control.Client) reach the
// leader exactly once across broken streams, replica changes and
// crashes. In these tests r1 leads, r2 is the replica the agent starts
// on (the "old" one) and r1 the one it moves to; the fake clock stays
// inside the bucket, so a session writes a bucket at once the first
// time and then not before its end: what an agent sends after the
// first write is held by the replica until the session ends (or the
// bucket does).

// onceRig is a forecasting pair of replicas and one agent on r2, which
// it reaches through p2.
type onceRig struct {
	*forecastRig
	r2    *replica
	p2    *cutProxy
	a     *fakeAgent
	disk  uint32
	eu    uint32
	start time.Time // the bucket the test counts into
}

// newOnceRig starts r1 (leader) and r2, each with its config tweak and
// KV wrapper when set, and an agent whose session it puts on r2.
func newOnceRig(t *testing.T, r2extra func(*Config), wrap1, wrap2 func(clientv3.KV) clientv3.KV) *onceRig {
	t.Helper()
	g := &forecastRig{prefix: testPrefix(t), t0: time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)}
	g.clock = newFakeClock(g.t0.Add(10 * time.Minute))
	g.r1 = startReplicaKV(t, "r1", g.prefix, g.tweak(nil), wrap1)
	waitFor(t, "r1 leads", 10*time.Second, func() bool { return g.r1.c.Leader() == "r1" })
	applyObjects(t, g.r1.addr, forecastObjects())
	o := &onceRig{forecastRig: g, start: g.t0}
	o.r2 = startReplicaKV(t, "r2", g.prefix, g.tweak(r2extra), wrap2)
	o.p2 = startProxy(t, o.r2.addr)
	o.a = startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, g.r1.addr, o.p2.addr())
	var reg map[string]uint32
	o.disk, reg = ids(t, o.a)
	o.eu = reg["eu"]
	// The client starts on either endpoint and takes the next one after
	// a session ends.
	waitFor(t, "agent registered", 10*time.Second, func() bool { return o.a.client.Controller() != "" })
	if o.a.client.Controller() == "r1" {
		endSession(t, g.r1, "edge-eu")
	}
	waitFor(t, "agent on r2", 10*time.Second, func() bool { return o.a.client.Controller() == "r2" })
	return o
}

// cutProxy forwards TCP connections to a replica until cut, which closes
// them all (either end sees its connection drop, as in a network
// failure, not a session the replica ended) and refuses new ones.
type cutProxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{lis: lis, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.closed {
				c.Close()
				d.Close()
			} else {
				p.conns = append(p.conns, c, d)
				p.wg.Add(2)
				go p.pipe(c, d)
				go p.pipe(d, c)
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *cutProxy) addr() string { return p.lis.Addr().String() }

func (p *cutProxy) cut() {
	p.lis.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// endSession ends node's session on r as a broken stream would (the
// replica's side ends; its final flush runs).
func endSession(t *testing.T, r *replica, node string) {
	t.Helper()
	r.c.sessMu.Lock()
	s := r.c.sessions[node]
	r.c.sessMu.Unlock()
	if s == nil {
		t.Fatalf("no session of %s on %s", node, r.c.cfg.Name)
	}
	s.cancel()
}

// send makes the agent report n new flows and waits until r received
// the given total.
func (o *onceRig) send(t *testing.T, n uint64, r *replica, total float64) {
	t.Helper()
	o.a.addAccess(o.disk, o.eu, n)
	waitFor(t, "counts received", 10*time.Second, func() bool { return received(r) == total })
}

// sessionTotal is what the aggregates of r's sessions say for the rig's
// bucket (0 on an error: callers wait for a value).
func (o *onceRig) sessionTotal(r *replica) uint64 {
	resp, err := o.r1.cli.Get(context.Background(), o.r1.c.store.fkey(accessBucketKey(o.start.Unix())), clientv3.WithPrefix())
	if err != nil {
		return 0
	}
	var n uint64
	for _, kv := range resp.Kvs {
		agg := &pb.AccessAggregate{}
		if proto.Unmarshal(kv.Value, agg) == nil && agg.GetController() == r.c.cfg.Name {
			for _, f := range agg.GetFlows() {
				n += f.GetNewFlows()
			}
		}
	}
	return n
}

// closeBucket moves the clock past the bucket (every session writes it
// for the last time), checks that its aggregates add up to want, then
// past the grace, and checks that the leader ingested want for it.
func (o *onceRig) closeBucket(t *testing.T, want uint64) {
	t.Helper()
	o.clock.set(o.start.Add(time.Hour + time.Second))
	var n uint64
	deadline := time.Now().Add(10 * time.Second)
	for n, _ = bucketTotal(t, o.r1.cli, o.r1.c.store, o.start.Unix()); n != want; n, _ = bucketTotal(t, o.r1.cli, o.r1.c.store, o.start.Unix()) {
		if time.Now().After(deadline) {
			t.Fatalf("the bucket's aggregates add up to %d new flows, the agent sent %d", n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ingested := func() float64 { return testutil.ToFloat64(o.r1.c.m.accessFlows.WithLabelValues("ingested")) }
	o.clock.set(o.start.Add(time.Hour + 10*time.Second))
	waitFor(t, "bucket ingested", 10*time.Second, func() bool { return ingested() > 0 })
	if got := ingested(); got != float64(want) {
		t.Fatalf("leader ingested %v new flows, the agent sent %d", got, want)
	}
}

func (o *onceRig) fenced(r *replica) float64 { return testutil.ToFloat64(r.c.m.accessFenced) }

// runHold holds a replica's transactions that write an agent run's
// record while armed, until released. A transaction begun while armed
// commits with a context that outlives the hold (a final flush's own
// times out after 2 s).
type runHold struct {
	prefix  string // runs/ of the rig's store
	armed   atomic.Bool
	once    sync.Once
	waiting chan struct{} // closed when the first transaction waits
	release chan struct{}
}

func newRunHold() *runHold {
	return &runHold{waiting: make(chan struct{}), release: make(chan struct{})}
}

func (h *runHold) wrap(kv clientv3.KV) clientv3.KV { return &runHoldKV{KV: kv, h: h} }

type runHoldKV struct {
	clientv3.KV
	h *runHold
}

func (k *runHoldKV) Txn(ctx context.Context) clientv3.Txn {
	if !k.h.armed.Load() {
		return k.KV.Txn(ctx)
	}
	return &txnHook{Txn: k.KV.Txn(context.WithoutCancel(ctx)), k: &txnKV{commit: func(then []clientv3.Op) error {
		for _, op := range then {
			if k.h.prefix != "" && strings.HasPrefix(string(op.KeyBytes()), k.h.prefix) && k.h.armed.Load() {
				k.h.once.Do(func() { close(k.h.waiting) })
				<-k.h.release
				break
			}
		}
		return nil
	}}}
}

// 1. A report whose stream breaks after the agent sent it, before the
// replica processed it, is sent again on the next session and counted
// once.
func TestAccessReportInFlightCountedOnce(t *testing.T) {
	var drop atomic.Uint64 // the new flows of the fresh report to lose
	o := newOnceRig(t, func(c *Config) { c.reportHook = loseReport(&drop) }, nil, nil)
	o.send(t, 100, o.r2, 100)
	drop.Store(37)
	o.a.addAccess(o.disk, o.eu, 37)
	waitFor(t, "the lost report counted on the next session", 10*time.Second, func() bool { return received(o.r1, o.r2) == 137 })
	waitFor(t, "agent holds nothing unconfirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	if drop.Load() != 0 {
		t.Fatal("the report was never lost")
	}
	o.closeBucket(t, 137)
}

// loseReport is a report hook that breaks the stream at the first new
// report (not one sent again) carrying *n new flows, once.
func loseReport(n *atomic.Uint64) func(string, *pb.Report) error {
	return func(_ string, r *pb.Report) error {
		var flows uint64
		for _, a := range r.GetAccess() {
			flows += a.GetNewFlows()
		}
		if w := n.Load(); w != 0 && flows == w && !r.GetResend() && n.CompareAndSwap(w, 0) {
			return status.Error(codes.Unavailable, "stream broke (test)")
		}
		return nil
	}
}

// 2. The agent moves to another replica after the old one wrote reports
// it had not confirmed (its final flush), and with one report lost in
// flight: the new session starts from what the old one wrote (nothing
// counted twice) and gets the lost one again (nothing lost).
func TestAccessReconnectAfterOldReplicaFlushed(t *testing.T) {
	hold := newRunHold()
	var drop atomic.Uint64
	o := newOnceRig(t, func(c *Config) { c.reportHook = loseReport(&drop) }, hold.wrap, nil)
	hold.prefix = o.r1.c.store.fkey(fkeyRuns)
	o.send(t, 100, o.r2, 100) // written at once, confirmed
	waitFor(t, "first write confirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	o.send(t, 20, o.r2, 120) // held by r2 until the session ends
	if o.a.client.PendingReports() != 1 {
		t.Fatalf("%d reports pending, want the one r2 holds", o.a.client.PendingReports())
	}
	// r1 takes the run over only once r2's final flush wrote the 20.
	hold.armed.Store(true)
	go func() {
		<-hold.waiting
		deadline := time.Now().Add(10 * time.Second)
		for o.sessionTotal(o.r2) != 120 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		close(hold.release)
	}()
	drop.Store(3)
	o.a.addAccess(o.disk, o.eu, 3) // lost in flight; r2's session ends
	waitFor(t, "agent on r1", 10*time.Second, func() bool { return o.a.client.Controller() == "r1" })
	waitFor(t, "the lost report counted on r1", 10*time.Second, func() bool { return received(o.r1) == 3 })
	waitFor(t, "agent holds nothing unconfirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	if got := o.sessionTotal(o.r2); got != 120 {
		t.Fatalf("r2 wrote %d, want 120", got)
	}
	if n := o.fenced(o.r2); n != 0 {
		t.Fatalf("r2's final flush, before the takeover, was fenced (%v)", n)
	}
	o.send(t, 1, o.r1, 4)
	if d := testutil.ToFloat64(o.r1.c.m.accessFlows.WithLabelValues("duplicate")); d != 0 {
		t.Fatalf("%v duplicate flows reached r1: the agent sent again what r2 wrote", d)
	}
	o.closeBucket(t, 124)
}

// 3. The old replica's final flush, after the new session took the run
// over, is refused; what it held is counted once, from the agent's
// resend. (A replica ends a session's stream only after its final
// flush: it comes after the takeover when the agent saw the stream
// break first, here a network failure.)
func TestAccessFinalFlushAfterTakeoverFenced(t *testing.T) {
	hold := newRunHold()
	o := newOnceRig(t, nil, nil, hold.wrap)
	hold.prefix = o.r2.c.store.fkey(fkeyRuns)
	o.send(t, 100, o.r2, 100)
	waitFor(t, "first write confirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	o.send(t, 20, o.r2, 120)
	hold.armed.Store(true)
	o.p2.cut() // r2 sees the connection drop as the agent does
	select {
	case <-hold.waiting: // r2's final flush
	case <-time.After(10 * time.Second):
		close(hold.release)
		t.Fatal("r2's final flush did not write the run's record")
	}
	waitFor(t, "agent on r1", 10*time.Second, func() bool { return o.a.client.Controller() == "r1" })
	waitFor(t, "the 20 sent again to r1", 10*time.Second, func() bool { return received(o.r1) == 20 })
	waitFor(t, "agent holds nothing unconfirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	close(hold.release)
	waitFor(t, "r2's session closed", 10*time.Second, func() bool { return o.r2.c.sessionCount() == 0 })
	if got := o.sessionTotal(o.r2); got != 100 {
		t.Fatalf("r2's aggregate holds %d after the takeover, want the 100 it wrote before", got)
	}
	if n := o.fenced(o.r2); n != 1 {
		t.Fatalf("%v of r2's flushes fenced, want its final one", n)
	}
	o.closeBucket(t, 120)
}

// 4. A replica that crashes writes nothing more; what it received since
// its last write is sent again to the next replica and counted.
func TestAccessReplicaCrashCountsResent(t *testing.T) {
	o := newOnceRig(t, nil, nil, nil)
	o.send(t, 100, o.r2, 100)
	waitFor(t, "first write confirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	o.send(t, 20, o.r2, 120)
	o.send(t, 5, o.r2, 125)
	o.r2.kill()
	waitFor(t, "agent on r1", 10*time.Second, func() bool { return o.a.client.Controller() == "r1" })
	waitFor(t, "the counts r2 lost sent again to r1", 10*time.Second, func() bool { return received(o.r1) == 25 })
	waitFor(t, "agent holds nothing unconfirmed", 10*time.Second, func() bool { return o.a.client.PendingReports() == 0 })
	o.closeBucket(t, 125)
}

// rawAgent is an agent session driven message by message.
type rawAgent struct {
	t      *testing.T
	s      grpc.BidiStreamingClient[pb.AgentMessage, pb.ControllerMessage]
	reg    *pb.Registered
	cancel context.CancelFunc
	mu     sync.Mutex
	durab  []*pb.ReportsDurable // confirmations received
	done   chan struct{}
}

func openRaw(t *testing.T, addr, node string, run uint64) *rawAgent {
	t.Helper()
	tc := credentials.NewTLS(clientTLS(t, issueFiles(t, shared.ca, t.TempDir(), node, nil)))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	s, err := pb.NewAgentSessionClient(conn).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Register{Register: &pb.Register{Node: node, Site: "eu",
		Role: pb.NodeRole_NODE_ROLE_EDGE, RunId: run}}})
	m, rerr := s.Recv()
	if err != nil || rerr != nil || m.GetRegistered() == nil {
		t.Fatalf("register: %v %v %v", err, rerr, m)
	}
	ra := &rawAgent{t: t, s: s, reg: m.GetRegistered(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ra.done)
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			if d := m.GetDurable(); d != nil {
				ra.mu.Lock()
				ra.durab = append(ra.durab, d)
				ra.mu.Unlock()
			}
		}
	}()
	t.Cleanup(ra.close)
	return ra
}

func (ra *rawAgent) close() {
	ra.cancel()
	<-ra.done
}

func (ra *rawAgent) report(r *pb.Report) {
	ra.t.Helper()
	if err := ra.s.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: r}}); err != nil {
		ra.t.Fatal(err)
	}
}

func (ra *rawAgent) confirmed() uint64 {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if len(ra.durab) == 0 {
		return 0
	}
	return ra.durab[len(ra.durab)-1].GetThroughSeq()
}

// 6 and the replica's side of 2. An agent that does not number its
// reports is served as before: nothing confirmed, no run record, every
// report counted as it comes. A numbered one's report sent again at or
// below what its run's sessions wrote is skipped (duplicate), one above
// counted.
func TestAccessRawAgents(t *testing.T) {
	for _, tc := range []struct {
		name    string
		run     uint64
		want    uint64  // ingested
		dup     float64 // skipped as already counted
		records int     // run records in etcd
	}{
		{"unnumbered agent: as before", 0, 42 + 42 + 5, 0, 0},
		{"numbered agent: counted once", 0x5eed, 42 + 5, 42, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newForecastRig(t, nil)
			st := g.r1.c.view.desiredRecord().GetState()
			waitFor(t, "desired state", 10*time.Second, func() bool {
				st = g.r1.c.view.desiredRecord().GetState()
				return len(st.GetResources()) > 0
			})
			var eu uint32
			for _, r := range st.GetRegions() {
				if r.GetName() == "eu" {
					eu = r.GetId()
				}
			}
			disk := st.GetResources()[0].GetId()
			rep := func(seq uint64, resend bool, n uint64) *pb.Report {
				end := g.clock.now()
				return &pb.Report{StartUnixNano: end.Add(-time.Second).UnixNano(), EndUnixNano: end.UnixNano(), Seq: seq, Resend: resend,
					Access: []*pb.AccessCount{{ResourceId: disk, RegionId: eu, NewFlows: n}}}
			}
			g.clock.set(g.t0.Add(10 * time.Minute))
			a := openRaw(t, g.r1.addr, "edge-raw", tc.run)
			if (a.reg.GetDurable() != nil) != (tc.run != 0) || a.reg.GetDurable().GetThroughSeq() != 0 {
				t.Fatalf("registered: %v", a.reg)
			}
			a.report(rep(1, false, 42))
			waitFor(t, "received", 10*time.Second, func() bool { return received(g.r1) == 42 })
			if tc.run != 0 {
				waitFor(t, "report 1 confirmed", 10*time.Second, func() bool { return a.confirmed() == 1 })
			}
			a.close()
			b := openRaw(t, g.r1.addr, "edge-raw", tc.run)
			if tc.run != 0 && b.reg.GetDurable().GetThroughSeq() != 1 {
				t.Fatalf("the next session says %v was written", b.reg.GetDurable())
			}
			b.report(rep(1, tc.run != 0, 42)) // sent again (a numbered agent that missed the confirmation)
			b.report(rep(2, false, 5))
			waitFor(t, "reports handled", 10*time.Second, func() bool {
				return testutil.ToFloat64(g.r1.c.m.reports) == 3 && received(g.r1)+testutil.ToFloat64(g.r1.c.m.accessFlows.WithLabelValues("duplicate")) == 42+42+5
			})
			if d := testutil.ToFloat64(g.r1.c.m.accessFlows.WithLabelValues("duplicate")); d != tc.dup {
				t.Fatalf("%v duplicate flows, want %v", d, tc.dup)
			}
			resp, err := g.r1.cli.Get(context.Background(), g.r1.c.store.fkey(fkeyRuns), clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil || int(resp.Count) != tc.records {
				t.Fatalf("%d run records, want %d (%v)", resp.Count, tc.records, err)
			}
			if tc.run == 0 && (a.confirmed() != 0 || b.confirmed() != 0) {
				t.Fatal("an unnumbered agent got confirmations")
			}
			o := &onceRig{forecastRig: g, start: g.t0}
			o.closeBucket(t, tc.want)
		})
	}
}

// newSessionTestController is a controller, not running, whose agent
// sessions a test builds by hand (agentConn); its forecasting clock
// stands ten minutes after t0 until the test sets it.
func newSessionTestController(t *testing.T) (c *Controller, t0 time.Time, clock *fakeClock) {
	t.Helper()
	cli := etcdClient(t)
	t.Cleanup(func() { cli.Close() })
	t0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	clock = newFakeClock(t0.Add(10 * time.Minute))
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: testPrefix(t), ReportInterval: time.Second, Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second, Clock: clock.now}}, cli)
	if err != nil {
		t.Fatal(err)
	}
	return c, t0, clock
}

// A numbered session's flush, split over several transactions by
// MaxTxnOps, writes every dirty bucket and then the run's record, and
// confirms; once another session took the run over, its flushes are
// refused and write nothing. A record whose write's answer was lost is
// adopted, one that expired written again.
func TestAccessFlushTransactions(t *testing.T) {
	c, t0, clock := newSessionTestController(t)
	cli := c.cli
	c.store.MaxTxnOps = 2
	ctx := context.Background()
	session := func(connected int64) *agentConn {
		return &agentConn{c: c, node: "edge/1", site: "eu", runID: 7, status: &pb.AgentStatus{ConnectedUnixNano: connected},
			access: c.newSessionAccess(), durableCh: make(chan struct{}, 1)}
	}
	rep := func(a *agentConn, seq uint64, at time.Time, n uint64) {
		a.recordAccess(&pb.Report{StartUnixNano: at.Add(-time.Second).UnixNano(), EndUnixNano: at.UnixNano(), Seq: seq,
			Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 2, NewFlows: n}}}, at)
	}
	record := func() *pb.AccessRun {
		t.Helper()
		return readRunRecord(ctx, t, cli, c.store.fkey(runKey("edge/1", 7)))
	}
	totals := func(connected int64) map[int64]uint64 {
		t.Helper()
		resp, err := cli.Get(ctx, c.store.fkey(fkeyAccess), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[int64]uint64{}
		for _, kv := range resp.Kvs {
			agg := &pb.AccessAggregate{}
			if err := proto.Unmarshal(kv.Value, agg); err != nil {
				t.Fatal(err)
			}
			if agg.GetConnectedUnixNano() == connected {
				out[agg.GetBucketStartUnix()-t0.Unix()] = agg.GetFlows()[0].GetNewFlows()
			}
		}
		return out
	}
	h := int64(time.Hour / time.Second)

	a := session(1)
	if through, _, err := a.takeOverRun(ctx); err != nil || through != 0 {
		t.Fatalf("first takeover: %d %v", through, err)
	}
	// Three buckets dirty at once: three aggregates and the record, two a
	// transaction.
	rep(a, 1, t0.Add(10*time.Minute), 5)
	rep(a, 2, t0.Add(70*time.Minute), 6)
	rep(a, 3, t0.Add(130*time.Minute), 7)
	clock.set(t0.Add(130 * time.Minute))
	if err := a.flushAccess(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := totals(1); len(got) != 3 || got[0] != 5 || got[h] != 6 || got[2*h] != 7 {
		t.Fatalf("aggregates %v", got)
	}
	if rec := record(); rec.GetThroughSeq() != 3 || rec.GetConnectedUnixNano() != 1 || rec.GetController() != "r1" {
		t.Fatalf("run record %v", rec)
	}
	if a.access.confirmed != 3 || len(a.durableCh) != 1 {
		t.Fatalf("confirmed %d, queued %d", a.access.confirmed, len(a.durableCh))
	}

	// A second session takes the run over: the first writes nothing more.
	b := session(2)
	if through, _, err := b.takeOverRun(ctx); err != nil || through != 3 {
		t.Fatalf("second takeover: %d %v", through, err)
	}
	rep(a, 4, t0.Add(131*time.Minute), 100)
	if err := a.flushAccess(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := totals(1); got[2*h] != 7 || testutil.ToFloat64(c.m.accessFenced) != 1 || !a.access.fenced {
		t.Fatalf("after the takeover the old session wrote %v (fenced %v)", got, testutil.ToFloat64(c.m.accessFenced))
	}
	// The new session skips what the old one wrote, counts the rest.
	rep(b, 3, t0.Add(131*time.Minute), 7)
	rep(b, 4, t0.Add(131*time.Minute), 100)
	if err := b.flushAccess(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := totals(2); len(got) != 1 || got[2*h] != 100 || record().GetThroughSeq() != 4 {
		t.Fatalf("new session wrote %v, record %v", got, record())
	}
	if d := testutil.ToFloat64(c.m.accessFlows.WithLabelValues("duplicate")); d != 7 {
		t.Fatalf("%v duplicate flows, want 7", d)
	}

	// A write that landed but whose answer was lost: the session's own
	// record, at a revision it does not know.
	b.fenceRev--
	rep(b, 5, t0.Add(132*time.Minute), 1)
	clock.set(t0.Add(140 * time.Minute)) // the flush interval passed
	if err := b.flushAccess(ctx, false); err != nil || totals(2)[2*h] != 101 || record().GetThroughSeq() != 5 {
		t.Fatalf("after a lost answer: %v, %v, %v", err, totals(2), record())
	}
	// The record expired (no write of the run for the retention).
	if _, err := cli.Delete(ctx, c.store.fkey(runKey("edge/1", 7))); err != nil {
		t.Fatal(err)
	}
	rep(b, 6, t0.Add(141*time.Minute), 1)
	clock.set(t0.Add(150 * time.Minute))
	if err := b.flushAccess(ctx, false); err != nil || totals(2)[2*h] != 102 || record().GetThroughSeq() != 6 {
		t.Fatalf("after the record expired: %v, %v, %v", err, totals(2), record())
	}
	if n := testutil.ToFloat64(c.m.accessFenced); n != 1 {
		t.Fatalf("%v fenced flushes, want 1", n)
	}
	// Reports without access counts are not confirmed on their own (the
	// agent keeps none of them): an idle agent gets no messages.
	for len(b.durableCh) > 0 {
		<-b.durableCh
	}
	at := t0.Add(151 * time.Minute)
	b.recordAccess(&pb.Report{Seq: 7, StartUnixNano: at.Add(-time.Second).UnixNano(), EndUnixNano: at.UnixNano()}, at)
	if err := b.flushAccess(ctx, false); err != nil || len(b.durableCh) != 0 || b.access.confirmed != 6 || b.access.through != 7 {
		t.Fatalf("idle report: %v, queued %d, confirmed %d, through %d", err, len(b.durableCh), b.access.confirmed, b.access.through)
	}
}

func TestSplitPuts(t *testing.T) {
	put := func(key string, n int) clientv3.Op { return clientv3.OpPut(key, strings.Repeat("x", n)) }
	last := put("run", 10)
	sizeOf := func(ops ...clientv3.Op) int { return requestBytes(ops) }
	for _, tc := range []struct {
		name     string
		puts     []clientv3.Op
		maxOps   int
		maxBytes int
		want     []int // operations per transaction
	}{
		{"one transaction", []clientv3.Op{put("a", 1), put("b", 1)}, 128, 0, []int{3}},
		{"nothing but the record", nil, 128, 0, []int{1}},
		{"by operations", []clientv3.Op{put("a", 1), put("b", 1), put("c", 1)}, 2, 0, []int{2, 2}},
		{"by bytes", []clientv3.Op{put("a", 100), put("b", 100), put("c", 100)}, 128,
			sizeOf(put("a", 100), put("b", 100)), []int{2, 2}},
		{"a put above the byte limit gets its own", []clientv3.Op{put("a", 5000), put("b", 1)}, 128, 4000, []int{1, 2}},
	} {
		got := splitPuts(tc.puts, last, tc.maxOps, tc.maxBytes)
		var sizes []int
		for _, b := range got {
			sizes = append(sizes, len(b))
		}
		if !slices.Equal(sizes, tc.want) {
			t.Errorf("%s: transactions of %v operations, want %v", tc.name, sizes, tc.want)
			continue
		}
		if b := got[len(got)-1]; string(b[len(b)-1].KeyBytes()) != "run" {
			t.Errorf("%s: the record is not the last write", tc.name)
		}
	}
}
