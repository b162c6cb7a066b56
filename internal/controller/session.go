package controller

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
)

// registerTimeout bounds the wait for an agent's Register.
const registerTimeout = 10 * time.Second

// An agent sends a report every report interval, one more on each health
// change, and an ACK per version: msgsPerInterval messages per interval
// (burst msgBurst) is far above that. Every report and ACK is an etcd
// write, so a session beyond it is slowed (its stream waits; nothing is
// dropped), and one node cannot fill etcd's quota for everyone.
const (
	msgsPerInterval = 10
	msgBurst        = 50
)

// Reports an agent sends again after a reconnect (Report.resend) are
// access counts only, folded in memory with no etcd write of their own:
// they have a budget of their own, resendsPerInterval (burst
// resendBurst, above what an agent keeps by default), so the first
// reports of a session are not held up behind a backlog, and the
// backlog is not held to the rate of etcd writes.
const (
	resendsPerInterval = 100
	resendBurst        = 2048
)

// A node's records (live/<node>, agents/<node>) are bounded in size and
// charged to the message limiter by size: a report is bounded otherwise
// only by the gRPC receive limit and etcd's request limit (10 MiB), and
// msgsPerInterval of those would write ~100 MB/s that etcd keeps for its
// history. maxAgentRecordBytes is far above what an agent reports (a
// probe per mirror, a replica state per copy held); every
// recordBytesPerMessage bytes of a record count as one more message.
const (
	maxAgentRecordBytes   = 4 << 20
	recordBytesPerMessage = 128 << 10
)

// demandTau is the time constant of the new-flow rate an agent's access
// deltas are smoothed into.
const demandTau = 30 * time.Second

// peerName is the verified client certificate's common name ("" when
// there is none; the TLS config already refuses such clients).
func peerName(ctx context.Context) string {
	if c := peerCert(ctx); c != nil {
		return c.Subject.CommonName
	}
	return ""
}

// peerCert is the verified client certificate, or nil.
func peerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return pki.PeerCertificate(ti.State)
}

type sessionService struct {
	pb.UnimplementedAgentSessionServer
	c *Controller
}

// agentConn is one agent session on this replica.
type agentConn struct {
	c      *Controller
	node   string
	site   string
	role   pb.NodeRole
	cancel context.CancelFunc
	stream grpc.BidiStreamingServer[pb.AgentMessage, pb.ControllerMessage]
	cert   *x509.Certificate // the session's client certificate
	sendMu sync.Mutex
	lim    *rate.Limiter // messages from the agent (msgsPerInterval)
	// resendLim: the agent's reports sent again (resendsPerInterval).
	resendLim *rate.Limiter
	// runID is the agent run's (Register.run_id; 0: reports unnumbered);
	// checkBaseline: the agent asks whether its restored counter baseline
	// is stale (Register.check_baseline).
	runID         uint64
	checkBaseline bool
	// durableCh wakes sendLoop to send access.confirmed.
	durableCh chan struct{}
	// flushMu serializes the session's flushes; fenceRev (under it) is
	// the mod revision of the run's record this session wrote last.
	flushMu  sync.Mutex
	fenceRev int64

	mu         sync.Mutex
	status     *pb.AgentStatus
	demand     map[[2]uint32]float64
	lastReport time.Time
	access     sessionAccess
}

// Session implements pb.AgentSessionServer.
func (s *sessionService) Session(stream grpc.BidiStreamingServer[pb.AgentMessage, pb.ControllerMessage]) error {
	c := s.c
	cn := peerName(stream.Context())
	if cn == "" {
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	first, err := recvTimeout(stream, registerTimeout)
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "first message must be register")
	}
	if reg.GetNode() != cn {
		return status.Errorf(codes.PermissionDenied, "register node %q: certificate is for %q", reg.GetNode(), cn)
	}
	if err := checkRegister(reg); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := c.view.siteAllows(reg.GetNode(), reg.GetSite()); err != nil {
		c.log.Warn("registration refused", "node", reg.GetNode(), "site", reg.GetSite(), "err", err)
		return status.Errorf(codes.PermissionDenied, "register: %v", err)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	now := time.Now()
	a := &agentConn{c: c, node: reg.GetNode(), site: reg.GetSite(), role: reg.GetRole(), cancel: cancel, stream: stream,
		cert:      peerCert(stream.Context()),
		lim:       rate.NewLimiter(rate.Every(c.cfg.ReportInterval/msgsPerInterval), msgBurst),
		resendLim: rate.NewLimiter(rate.Every(c.cfg.ReportInterval/resendsPerInterval), resendBurst),
		runID:     reg.GetRunId(), checkBaseline: reg.GetCheckBaseline(), durableCh: make(chan struct{}, 1),
		demand: map[[2]uint32]float64{}, lastReport: now, access: c.newSessionAccess(),
		status: &pb.AgentStatus{Node: reg.GetNode(), Site: reg.GetSite(), Role: reg.GetRole(), Addresses: reg.GetAddresses(),
			OuterSources: outerSources(reg.GetOuterSources()), DecapSources: decapSources(reg.GetDecapSources()),
			Connected: true, Controller: c.cfg.Name, ConnectedUnixNano: now.UnixNano(), LastSeenUnixNano: now.UnixNano(),
			AckedVersion: reg.GetAppliedVersion()}}
	if old := c.addSession(a); old != nil {
		old.cancel() // the agent reconnected: the old stream is dead or dying
	}
	defer c.removeSession(a)
	// Before the first write: a write that failed (cancelled with the
	// stream) may still have landed, and would leave the node looking
	// connected to this replica for as long as it runs.
	defer a.disconnect()
	log := c.log.With("node", a.node, "site", a.site)
	// A numbered agent's counts: this session writes them from now on,
	// and the agent sends again what earlier sessions did not write.
	// Before the agent record is written: that record, as the node's
	// previous session left it, is evidence on the agent's baseline.
	var durable *pb.ReportsDurable
	var baseline *pb.AccessBaseline
	if a.runID != 0 && !c.cfg.Forecast.Disable {
		through, verdict, err := a.takeOverRun(ctx)
		if err != nil {
			return status.Errorf(codes.Unavailable, "take over the access counts of run %016x: %v", a.runID, err)
		}
		durable = &pb.ReportsDurable{RunId: a.runID, ThroughSeq: through}
		log.Debug("agent run taken over", "run", fmt.Sprintf("%016x", a.runID), "through_seq", through)
		if verdict.GetStale() {
			log.Warn("another agent ran on the node since this run last wrote its access counts: the agent is told to "+
				"count from its counters' values at its start, not its journal's baseline (that agent reported the growth since)",
				"run", fmt.Sprintf("%016x", a.runID), "other_run", fmt.Sprintf("%016x", verdict.GetOtherRun()))
		}
		if a.checkBaseline && !c.cfg.noBaselineCheck {
			baseline = verdict
			v := "kept"
			if verdict.GetStale() {
				v = "stale"
			}
			c.m.accessBaselines.WithLabelValues(v).Inc()
		}
	}
	if err := a.writeStatus(ctx); err != nil {
		return status.Errorf(codes.Unavailable, "record registration: %v", err)
	}
	if err := a.writeLive(ctx, nil); err != nil {
		return status.Errorf(codes.Unavailable, "record session: %v", err)
	}
	defer a.finalFlush()
	cur := c.view.desiredRecord().GetState().GetVersion()
	if err := a.send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Registered{Registered: &pb.Registered{
		Controller: c.cfg.Name, ReportIntervalMs: uint32(c.cfg.ReportInterval / time.Millisecond), CurrentVersion: cur,
		Durable: durable, AccessBaseline: baseline}}}); err != nil {
		return err
	}
	log.Info("agent registered", "role", a.role, "applied_version", reg.GetAppliedVersion(), "current_version", cur)

	sendErr := make(chan error, 1)
	go func() { sendErr <- a.sendLoop(ctx) }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- a.recvLoop(ctx) }()
	select {
	case err = <-sendErr:
	case err = <-recvErr:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	log.Info("agent session closed", "err", err)
	if errors.Is(err, context.Canceled) && stream.Context().Err() == nil {
		return status.Error(codes.Aborted, "session replaced or replica stopping")
	}
	return err
}

func recvTimeout(stream grpc.BidiStreamingServer[pb.AgentMessage, pb.ControllerMessage], d time.Duration) (*pb.AgentMessage, error) {
	type res struct {
		m   *pb.AgentMessage
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := stream.Recv()
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(d):
		// Returning ends the stream, which ends the Recv above.
		return nil, status.Errorf(codes.DeadlineExceeded, "no register within %v", d)
	}
}

func checkRegister(r *pb.Register) error {
	switch r.GetRole() {
	case pb.NodeRole_NODE_ROLE_EDGE, pb.NodeRole_NODE_ROLE_MIRROR, pb.NodeRole_NODE_ROLE_BOTH:
	default:
		return fmt.Errorf("register role: %v is not edge, mirror or both", r.GetRole())
	}
	if len(r.GetSite()) > 63 {
		return fmt.Errorf("register site: %d characters is too long", len(r.GetSite()))
	}
	for i, a := range r.GetAddresses() {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("register addresses[%d]: %w", i, err)
		}
	}
	if err := checkOuterSources("register", r.GetOuterSources()); err != nil {
		return err
	}
	return checkDecapSources("register", r.GetDecapSources())
}

// checkDecapSources refuses a decap_sources list the agent's own config
// check would have.
func checkDecapSources(msg string, srcs []string) error {
	if len(srcs) > pmaps.MaxDecapSources {
		return fmt.Errorf("%s decap_sources: %d prefixes, at most %d", msg, len(srcs), pmaps.MaxDecapSources)
	}
	for i, s := range srcs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("%s decap_sources[%d]: %w", msg, i, err)
		}
		if p != p.Masked() {
			return fmt.Errorf("%s decap_sources[%d]: %s has host bits set", msg, i, s)
		}
	}
	return nil
}

// decapSources is srcs canonical (sorted, without repeats), as the
// status keeps them; nil when empty. srcs passed checkDecapSources.
func decapSources(srcs []string) []string {
	var ps []netip.Prefix
	for _, s := range srcs {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	ps = slices.Compact(ps)
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// maxOuterSources bounds an agent's outer sources (an edge has one per
// family; the rest is room for a change of mind, not for a network).
const maxOuterSources = 8

// checkOuterSources refuses what could not be an edge's outer source:
// each is one unicast address, so an agent's word names hosts, never a
// prefix a mirror host could be told to trust.
func checkOuterSources(msg string, srcs []string) error {
	if len(srcs) > maxOuterSources {
		return fmt.Errorf("%s outer_sources: %d addresses, at most %d", msg, len(srcs), maxOuterSources)
	}
	for i, s := range srcs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("%s outer_sources[%d]: %w", msg, i, err)
		}
		if a = a.Unmap(); a.Zone() != "" || !a.IsGlobalUnicast() {
			return fmt.Errorf("%s outer_sources[%d]: %s is not a unicast address", msg, i, s)
		}
	}
	return nil
}

// outerSources is srcs canonical (unmapped, sorted, without repeats), as
// the status keeps them; nil when empty. srcs passed checkOuterSources.
func outerSources(srcs []string) []string {
	var as []netip.Addr
	for _, s := range srcs {
		as = append(as, netip.MustParseAddr(s).Unmap())
	}
	slices.SortFunc(as, netip.Addr.Compare)
	as = slices.Compact(as)
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func (c *Controller) addSession(a *agentConn) *agentConn {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	old := c.sessions[a.node]
	c.sessions[a.node] = a
	return old
}

func (c *Controller) removeSession(a *agentConn) {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	if c.sessions[a.node] == a {
		delete(c.sessions, a.node)
	}
}

func (a *agentConn) send(m any) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	return a.stream.SendMsg(m)
}

// sendLoop sends every new version, always the latest: an agent that fell
// behind skips intermediate versions; and the confirmations of the
// agent's reports (here, so nothing is sent once the handler returned).
func (a *agentConn) sendLoop(ctx context.Context) error {
	var sent uint64
	for {
		wait := a.c.view.desiredCh.wait()
		if rec := a.c.view.desiredRecord(); rec != nil && rec.GetState().GetVersion() != sent {
			b, err := a.c.encoded(rec, a.site)
			if err != nil {
				return status.Errorf(codes.Internal, "encode version %d: %v", rec.GetState().GetVersion(), err)
			}
			if err := a.send(rawMessage(b)); err != nil {
				return err
			}
			sent = rec.GetState().GetVersion()
			a.mu.Lock()
			a.status.SentVersion = sent
			a.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait:
		case <-a.durableCh:
			a.mu.Lock()
			d := &pb.ReportsDurable{RunId: a.runID, ThroughSeq: a.access.confirmed}
			a.mu.Unlock()
			if err := a.send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Durable{Durable: d}}); err != nil {
				return err
			}
		}
	}
}

func (a *agentConn) recvLoop(ctx context.Context) error {
	for {
		m, err := a.stream.Recv()
		if err != nil {
			return err
		}
		a.heard()
		// A certificate revoked after the handshake ends the session at
		// its next message (reports come every interval); the agent's
		// reconnection is then refused by the handshake.
		if a.c.tls.Revoked(a.cert) {
			a.c.tls.EndedRevoked()
			a.c.log.Warn("agent session ended: its certificate was revoked", "node", a.node,
				"serial", fmt.Sprintf("%x", a.cert.SerialNumber))
			return status.Error(codes.PermissionDenied, "certificate revoked")
		}
		lim := a.lim
		if m.GetReport().GetResend() {
			lim = a.resendLim
		}
		if !lim.Allow() {
			a.c.m.throttled.Inc()
			if err := lim.Wait(ctx); err != nil {
				return err
			}
		}
		switch msg := m.GetMsg().(type) {
		case *pb.AgentMessage_Ack:
			if err := a.ack(ctx, msg.Ack); err != nil {
				return err
			}
		case *pb.AgentMessage_Report:
			if err := a.report(ctx, msg.Report); err != nil {
				return err
			}
		case *pb.AgentMessage_Register:
			return status.Error(codes.InvalidArgument, "register sent twice")
		}
	}
}

// heard notes a message from the agent after Registered: an agent told
// its baseline is stale has acted on it (it writes its journal before it
// sends anything), so the run's record may stop saying so.
func (a *agentConn) heard() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.access.staleBaseline {
		a.access.staleBaseline, a.access.clearStale = false, true
	}
}

func (a *agentConn) ack(ctx context.Context, ack *pb.Ack) error {
	a.mu.Lock()
	st := a.status
	st.LastSeenUnixNano = time.Now().UnixNano()
	if ack.GetError() == "" {
		st.AckedVersion = ack.GetVersion()
		if st.NackedVersion <= ack.GetVersion() {
			st.NackedVersion, st.NackError = 0, ""
		}
	} else {
		st.NackedVersion, st.NackError = ack.GetVersion(), ack.GetError()
	}
	a.mu.Unlock()
	if ack.GetError() == "" {
		a.c.m.acks.WithLabelValues("ack").Inc()
	} else {
		a.c.m.acks.WithLabelValues("nack").Inc()
		a.c.log.Warn("agent refused a version (NACK); it keeps its previous one", "node", a.node,
			"version", ack.GetVersion(), "err", ack.GetError())
	}
	if err := a.writeStatus(ctx); err != nil {
		return status.Errorf(codes.Unavailable, "record ack: %v", err)
	}
	return nil
}

func (a *agentConn) report(ctx context.Context, r *pb.Report) error {
	if h := a.c.cfg.reportHook; h != nil {
		if err := h(a.node, r); err != nil {
			return err
		}
	}
	a.c.m.reports.Inc()
	if r.GetResend() {
		// Its access counts only: the agent sends nothing else in it, and
		// what it sent with it the first time is long stale.
		if f := a.c.cfg.OnReport; f != nil {
			f(a.node, r)
		}
		a.recordAccess(r, a.c.cfg.Forecast.now())
		return nil
	}
	if err := checkOuterSources("report", r.GetOuterSources()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkDecapSources("report", r.GetDecapSources()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if f := a.c.cfg.OnReport; f != nil {
		f(a.node, r)
	}
	a.recordAccess(r, a.c.cfg.Forecast.now())
	// A derived outer source follows the edge's interface, a reload may
	// change decap_sources: a change is recorded (the leader lists the
	// edges to the mirror hosts and routes around the hosts that would
	// refuse them). An agent that sends no outer sources keeps what it
	// registered; no decap_sources means any source.
	outer, decap := outerSources(r.GetOuterSources()), decapSources(r.GetDecapSources())
	a.mu.Lock()
	changed := outer != nil && !slices.Equal(outer, a.status.OuterSources) || !slices.Equal(decap, a.status.DecapSources)
	if changed {
		if outer != nil {
			a.status.OuterSources = outer
		}
		a.status.DecapSources = decap
	}
	a.mu.Unlock()
	if changed {
		a.c.log.Info("node's tunnel sources changed", "node", a.node, "outer_sources", outer, "decap_sources", decap)
		if err := a.writeStatus(ctx); err != nil {
			return status.Errorf(codes.Unavailable, "record tunnel sources: %v", err)
		}
	}
	return a.writeLive(ctx, r)
}

// finalFlush writes what the session counted that is not in etcd yet
// (the stream is gone, so with a context of its own), unless a newer
// session of the agent's run took its counts over. A crashed replica
// does not get to: a numbered agent sends those reports again to its
// next session; an unnumbered one's are lost.
func (a *agentConn) finalFlush() {
	if a.c.crash.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.flushAccess(ctx, true); err != nil {
		a.c.log.Warn("access counts of a closed session not written", "node", a.node, "err", err)
	}
}

// smoothDemand folds one report's new flows into per-(resource, region)
// rates with an exponential moving average of time constant demandTau.
func (a *agentConn) smoothDemand(r *pb.Report, now time.Time) []*pb.DemandRate {
	dt := time.Duration(r.GetEndUnixNano() - r.GetStartUnixNano())
	if dt <= 0 || dt > time.Minute {
		dt = now.Sub(a.lastReport)
	}
	dt = max(dt, 100*time.Millisecond)
	a.lastReport = now
	sample := map[[2]uint32]float64{}
	for _, ac := range r.GetAccess() {
		// A broken counter is no demand (recordAccess drops and counts it).
		if !plausibleFlows(ac.GetNewFlows(), dt) {
			continue
		}
		sample[[2]uint32{ac.GetResourceId(), ac.GetRegionId()}] += float64(ac.GetNewFlows())
	}
	alpha := 1 - math.Exp(-dt.Seconds()/demandTau.Seconds())
	for k := range sample {
		if _, ok := a.demand[k]; !ok {
			a.demand[k] = 0
		}
	}
	out := make([]*pb.DemandRate, 0, len(a.demand))
	for k, rate := range a.demand {
		rate += alpha * (sample[k]/dt.Seconds() - rate)
		if rate < 1e-3 {
			delete(a.demand, k)
			continue
		}
		a.demand[k] = rate
		out = append(out, &pb.DemandRate{ResourceId: k[0], RegionId: k[1], FlowsPerSecond: rate})
	}
	slices.SortFunc(out, func(x, y *pb.DemandRate) int {
		if x.ResourceId != y.ResourceId {
			return int(x.ResourceId) - int(y.ResourceId)
		}
		return int(x.RegionId) - int(y.RegionId)
	})
	return out
}

// writeLive stores the agent's latest report under this replica's lease.
func (a *agentConn) writeLive(ctx context.Context, r *pb.Report) error {
	now := time.Now()
	a.mu.Lock()
	lr := &pb.LiveReport{Node: a.node, Site: a.site, Role: a.role, Controller: a.c.cfg.Name, ReceivedUnixNano: now.UnixNano()}
	if r != nil {
		lr.Probes, lr.NodeStats, lr.Mirrors = r.GetProbes(), r.GetNode(), r.GetMirrors()
		lr.Demand = a.smoothDemand(r, now)
		a.status.LastSeenUnixNano = now.UnixNano()
	}
	a.mu.Unlock()
	b, err := marshal.Marshal(lr)
	if err != nil {
		return err
	}
	if err := a.chargeRecord(ctx, "report", len(b)); err != nil {
		return err
	}
	_, err = a.c.cli.Put(ctx, a.c.store.key(keyLive, a.node), string(b), clientv3.WithLease(a.c.liveLease()))
	return err
}

// chargeRecord refuses a record beyond maxAgentRecordBytes and waits for
// the message limiter's tokens of a large one (recordBytesPerMessage).
func (a *agentConn) chargeRecord(ctx context.Context, what string, n int) error {
	if n > maxAgentRecordBytes {
		a.c.log.Warn("agent record refused: too large", "node", a.node, "record", what, "bytes", n)
		return status.Errorf(codes.ResourceExhausted, "%s: %d bytes exceed the %d a node's record may take", what, n, maxAgentRecordBytes)
	}
	if extra := n / recordBytesPerMessage; extra > 0 && !a.lim.AllowN(time.Now(), extra) {
		a.c.m.throttled.Inc()
		return a.lim.WaitN(ctx, extra)
	}
	return nil
}

// writeStatus stores the agent's registration and ACK state.
func (a *agentConn) writeStatus(ctx context.Context) error {
	a.mu.Lock()
	b, err := marshal.Marshal(a.record())
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := a.chargeRecord(ctx, "status", len(b)); err != nil {
		return err
	}
	_, err = a.c.cli.Put(ctx, a.c.store.key(keyAgents, a.node), string(b))
	return err
}

// record is the node's agent record as this session writes it, with its
// run (AgentRecord.run_id). Called with a.mu held.
func (a *agentConn) record() *pb.AgentRecord {
	return &pb.AgentRecord{Status: proto.Clone(a.status).(*pb.AgentStatus), RunId: proto.Uint64(a.runID)}
}

// disconnect marks the agent gone, unless another session (here or on
// another replica) has taken over its records since. It reads before it
// writes because a write cancelled with the stream may still have landed.
func (a *agentConn) disconnect() {
	if a.c.crash.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a.c.sessMu.Lock()
	replaced := a.c.sessions[a.node] != nil && a.c.sessions[a.node] != a
	a.c.sessMu.Unlock()
	if replaced {
		return
	}
	a.mu.Lock()
	since := a.status.GetConnectedUnixNano()
	a.status.Connected = false
	a.status.LastSeenUnixNano = time.Now().UnixNano()
	b, err := marshal.Marshal(a.record())
	a.mu.Unlock()
	if err != nil {
		return
	}
	st, lk := a.c.store.key(keyAgents, a.node), a.c.store.key(keyLive, a.node)
	if resp, err := a.c.cli.Get(ctx, lk); err == nil && len(resp.Kvs) == 1 {
		var lr pb.LiveReport
		if proto.Unmarshal(resp.Kvs[0].Value, &lr) == nil && lr.GetController() == a.c.cfg.Name {
			_, _ = a.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(lk), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpDelete(lk)).Commit()
		}
	}
	if resp, err := a.c.cli.Get(ctx, st); err == nil && len(resp.Kvs) == 1 {
		var rec pb.AgentRecord
		if proto.Unmarshal(resp.Kvs[0].Value, &rec) == nil && rec.GetStatus().GetController() == a.c.cfg.Name &&
			rec.GetStatus().GetConnectedUnixNano() == since {
			_, _ = a.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(st), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpPut(st, string(b))).Commit()
		}
	}
}

// encCache holds the encoded desired state of the latest version: once
// globally, then per site with the default region appended (protobuf
// merges concatenated messages), so each agent costs no marshalling.
type encCache struct {
	version uint64
	base    []byte
	bySite  map[string][]byte
}

func (c *Controller) encoded(rec *pb.DesiredRecord, site string) ([]byte, error) {
	c.encMu.Lock()
	defer c.encMu.Unlock()
	v := rec.GetState().GetVersion()
	if c.enc.version != v || c.enc.base == nil {
		base, err := marshal.Marshal(&pb.ControllerMessage{Msg: &pb.ControllerMessage_State{State: rec.GetState()}})
		if err != nil {
			return nil, err
		}
		c.enc = encCache{version: v, base: base, bySite: map[string][]byte{}}
	}
	if b, ok := c.enc.bySite[site]; ok {
		return b, nil
	}
	b := c.enc.base
	// Only a site that is a region of this version may be the default
	// region: the agent would refuse an unknown one.
	for _, r := range rec.GetState().GetRegions() {
		if r.GetName() == site && site != "" {
			suffix, err := marshal.Marshal(&pb.ControllerMessage{Msg: &pb.ControllerMessage_State{State: &pb.DesiredState{DefaultRegion: site}}})
			if err != nil {
				return nil, err
			}
			b = append(slices.Clip(c.enc.base), suffix...)
			break
		}
	}
	c.enc.bySite[site] = b
	return b, nil
}
