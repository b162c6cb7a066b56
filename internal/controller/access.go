package controller

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// The access path to the forecaster. Agents report access-count deltas
// every ReportInterval to whichever replica serves them; only the leader
// runs the prediction engine. The serving replica folds each report's new
// flows into per-bucket totals per session (bucket = the engine's step)
// and writes each bucket's running total under one key of its own
// (accessKey) at most every FlushInterval, and once more when the bucket
// is over. The leader reads a bucket's keys once the bucket ended more
// than Grace ago and ingests their sum. So etcd sees a few writes per
// agent and bucket whatever the report rate, a key's count reaches the
// engine exactly once (every key is a cumulative total, read once; the
// engine's own watermark drops a bucket it already closed), and a
// reconnecting agent's sessions on different replicas add up.
//
// A report's counts reach the keys exactly once, across broken streams,
// reconnects to another replica and replica crashes, for an agent that
// numbers its reports (Register.run_id, Report.seq; internal/control):
//
//   - The agent keeps every report with new flows until a replica
//     confirms it written (ReportsDurable), and on a new session first
//     sends again those above the session's Registered.durable.
//   - A session writes snapshots: when any bucket is due, every dirty
//     bucket of the session, with the run's record (AccessRun, runKey)
//     saying the last report folded in, through_seq, in one transaction
//     (writeAccess). Then it confirms through_seq to the agent (a session
//     with nothing left unwritten confirms at once).
//   - Every such transaction is conditioned on the run's record being the
//     session's own (its mod revision). A registering session takes the
//     record over (takeOverRun: read, then write its own conditioned on
//     what it read), so an older session of the run, here or on another
//     replica, writes nothing after the new one read through_seq: its
//     periodic and final flushes are refused (fenced; not retried), and
//     whatever it had not written the agent still holds and sends again.
//   - The agent, told through_seq at registration, sends again only the
//     reports above it; the new session skips any at or below it that
//     comes anyway (counted "duplicate"). The older sessions' keys stay
//     and are summed with its own: they hold other reports.
//
// The record is one key per (node, run), apart from the aggregates: a
// new session cannot learn through_seq from the aggregates (they carry
// it, for diagnosis), since the leader deletes those of closed buckets
// and a session that wrote nothing must still pass on what it
// inherited; and per run, not per node, so that a restarted agent's new
// session does not fence the previous process's, whose final flush is
// the only way that process's last counts reach etcd.
//
// An agent restarted on its access journal continues its run and counts
// from the journal's counter baseline. Had another agent of the node run
// in between (a build without the journal), that one reported the
// counters' growth since, and the baseline would count it again; the
// restarted agent asks (Register.check_baseline) and takeOverRun answers
// from the node's records (baselineVerdict): the agent then counts from
// its counters' values at its start. The run is taken over and its
// reports sent again as ever.
//
// The limits: a flush too large for one etcd transaction (MaxTxnOps,
// MaxRequestBytes: over a hundred dirty buckets, or aggregates of
// megabytes) is written in several, the run's record in the last; a
// replica that crashes between them, or a takeover that lands between
// them, leaves the earlier ones holding reports the agent sends again
// (counted twice). An agent holds a bounded number of reports
// (control.Config.MaxPendingReports) and drops the oldest beyond it,
// counted at the agent: those are lost if no replica wrote them. Reports that arrive, first or again, after the
// leader closed their bucket are late as ever (late_at_replica, or an
// aggregate written late); one sent again more than maxClockSkew after
// its interval is placed by the replica's clock, in a later bucket. An
// agent that does not number its reports (an older one) is served as
// before: its report in flight when a stream breaks, and what a crashed
// replica received from it since its last flush (at most FlushInterval),
// are lost; an agent under an older controller (no Registered.durable)
// keeps nothing and sends nothing again, as before.

// maxClockSkew is how far an agent's report time may be from the
// replica's clock before the replica places the report by its own clock.
const maxClockSkew = 30 * time.Second

// maxFlowsPerSecond bounds the new flows one access count may claim per
// second of its report's span (at least a second): ten times the packet
// rate of a 400 Gbit/s link of minimum-size frames. Beyond it the count
// is a broken counter (a wrapped subtraction: 2^64 − a few), not demand,
// and is dropped before it reaches the forecaster.
const maxFlowsPerSecond = 6e9

// plausibleFlows reports whether n new flows over span (at least a second)
// can be demand rather than a broken counter (maxFlowsPerSecond).
func plausibleFlows(n uint64, span time.Duration) bool {
	return float64(n) <= maxFlowsPerSecond*max(span.Seconds(), 1)
}

// bucketFlows is one session's new flows in one bucket.
type bucketFlows struct {
	flows     map[[2]uint32]uint64 // (resource ID, region ID) → new flows
	dirty     bool
	lastWrite time.Time
}

// sessionAccess is the aggregation state of one agent session.
type sessionAccess struct {
	buckets map[int64]*bucketFlows // by bucket start (unix seconds)
	// evictedBefore: buckets before it were written for the last time;
	// reports for them arrive too late and are dropped.
	evictedBefore int64
	// Of a numbered agent run: through is the last report folded in (or
	// inherited from the run's earlier sessions), written the last
	// through in the run's record, confirmed the last one confirmed to
	// the agent, owed the last folded in with access counts (the agent
	// keeps only those: no confirmation is sent for the others alone);
	// fenced: a newer session took the run over.
	through, written, confirmed, owed uint64
	fenced                            bool
	// staleBaseline: the session told the agent its restored counter
	// baseline is stale (otherRun: the other agent's run), and its record
	// says so until the agent sent a message (heard); clearStale: the
	// agent did, and the record still says so.
	staleBaseline, clearStale bool
	otherRun                  uint64
}

// newSessionAccess is a new session's aggregation state. The buckets an
// older session would have evicted by now count as written for the last
// time: a report for them (mostly one sent again after a reconnect) is
// late at the replica, not a key written after the leader read its
// bucket.
func (c *Controller) newSessionAccess() sessionAccess {
	sa := sessionAccess{buckets: map[int64]*bucketFlows{}}
	if fc := &c.cfg.Forecast; !fc.Disable {
		sa.evictedBefore = bucketStart(fc.now().Add(-2*fc.Grace-c.cfg.ReportInterval), fc.Engine.Step)
	}
	return sa
}

// bucketStart is the start (unix seconds) of the step-long bucket holding t,
// aligned as forecast.Engine aligns its buckets.
func bucketStart(t time.Time, step time.Duration) int64 {
	s := int64(step / time.Second)
	u := t.Unix()
	b := u / s
	if u%s < 0 {
		b--
	}
	return b * s
}

// reportSpan is the interval a report's access deltas cover, as the
// replica places it: the agent's own interval when its clock agrees with
// the replica's within maxClockSkew, otherwise the same length ending now;
// at most maxSpan long (older deltas of an agent that was away for long
// are placed in the last maxSpan).
func reportSpan(r *pb.Report, now time.Time, maxSpan time.Duration) (start, end time.Time) {
	end = time.Unix(0, r.GetEndUnixNano())
	var dur time.Duration
	if r.GetStartUnixNano() > 0 && r.GetEndUnixNano() >= r.GetStartUnixNano() {
		dur = time.Duration(r.GetEndUnixNano() - r.GetStartUnixNano())
	}
	if r.GetEndUnixNano() <= 0 || end.Sub(now) > maxClockSkew || now.Sub(end) > maxClockSkew {
		end = now
	}
	return end.Add(-min(dur, maxSpan)), end
}

// splitFlows spreads n flows over the step-long buckets [start, end)
// overlaps, in proportion to the overlap, exactly (the parts sum to n):
// part i is round(n·F_i) − round(n·F_{i−1}) with F the cumulative share.
func splitFlows(n uint64, start, end time.Time, step time.Duration, fn func(bucket int64, n uint64)) {
	b0, b1 := bucketStart(start, step), bucketStart(end, step)
	if !end.After(start) || b0 == b1 {
		fn(bucketStart(end, step), n)
		return
	}
	total := float64(end.Sub(start))
	var prev uint64
	s := int64(step / time.Second)
	for b := b0; b <= b1; b += s {
		cut := time.Unix(b+s, 0)
		if end.Before(cut) {
			cut = end
		}
		cum := n
		if cut.Before(end) {
			cum = uint64(float64(n)*float64(cut.Sub(start))/total + 0.5)
			cum = min(cum, n)
		}
		if cum > prev {
			fn(b, cum-prev)
			prev = cum
		}
	}
}

// recordAccess folds one report's new flows into the session's buckets;
// a numbered report the agent's run has already counted is skipped.
func (a *agentConn) recordAccess(r *pb.Report, now time.Time) {
	fc := &a.c.cfg.Forecast
	numbered := a.runID != 0 && r.GetSeq() != 0
	if fc.Disable || (len(r.GetAccess()) == 0 && !numbered) {
		return
	}
	start, end := reportSpan(r, now, fc.maxSpan())
	var received, late, dup float64
	a.mu.Lock()
	if numbered && r.GetSeq() <= a.access.through {
		a.mu.Unlock()
		for _, ac := range r.GetAccess() {
			dup += float64(ac.GetNewFlows())
		}
		a.c.m.accessFlows.WithLabelValues("duplicate").Add(dup)
		a.c.log.Debug("access counts already counted skipped", "node", a.node, "run", fmt.Sprintf("%016x", a.runID),
			"seq", r.GetSeq(), "through_seq", a.access.through, "new_flows", dup)
		return
	}
	for _, ac := range r.GetAccess() {
		if ac.GetNewFlows() == 0 {
			continue
		}
		if !plausibleFlows(ac.GetNewFlows(), end.Sub(start)) {
			a.c.m.accessFlows.WithLabelValues("implausible").Inc()
			a.c.log.Warn("implausible access count dropped", "node", a.node, "resource_id", ac.GetResourceId(),
				"region_id", ac.GetRegionId(), "new_flows", ac.GetNewFlows(), "span", end.Sub(start))
			continue
		}
		k := [2]uint32{ac.GetResourceId(), ac.GetRegionId()}
		splitFlows(ac.GetNewFlows(), start, end, fc.Engine.Step, func(b int64, n uint64) {
			if b < a.access.evictedBefore {
				late += float64(n)
				return
			}
			bf := a.access.buckets[b]
			if bf == nil {
				bf = &bucketFlows{flows: map[[2]uint32]uint64{}}
				a.access.buckets[b] = bf
			}
			bf.flows[k] += n
			bf.dirty = true
			received += float64(n)
		})
	}
	// Under the same lock as the folding: a snapshot of the buckets
	// (pendingAccess) holds exactly the reports up to through.
	if numbered {
		a.access.through = r.GetSeq()
		if len(r.GetAccess()) > 0 {
			a.access.owed = r.GetSeq()
		}
	}
	a.mu.Unlock()
	a.c.m.accessFlows.WithLabelValues("received").Add(received)
	if late > 0 {
		a.c.m.accessFlows.WithLabelValues("late_at_replica").Add(late)
	}
}

// accessWrite is one bucket aggregate ready to be written.
type accessWrite struct {
	bucket int64
	key    string
	value  []byte
	flows  uint64 // the new flows it holds
}

// accessFlush is one snapshot of a session's counts to write.
type accessFlush struct {
	writes []accessWrite
	// through: the last numbered report in the snapshot; clean: nothing
	// the session folded in is left out of it (or out of etcd).
	through uint64
	clean   bool
}

// pendingAccess returns the session's bucket aggregates to write: none
// until a dirty bucket is due (over, so no report for it is expected any
// more, or not written for FlushInterval; any when final), then every
// dirty one, so that what is written holds exactly the reports up to
// through (the run's record says so in the same transaction). Buckets
// over for long are evicted once written.
func (a *agentConn) pendingAccess(now time.Time, final bool) (accessFlush, error) {
	fc := &a.c.cfg.Forecast
	step := int64(fc.Engine.Step / time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	due, dirty := final, false
	for b, bf := range a.access.buckets {
		over := !now.Before(time.Unix(b+step, 0).Add(a.c.cfg.ReportInterval))
		dirty = dirty || bf.dirty
		due = due || bf.dirty && (over || now.Sub(bf.lastWrite) >= fc.FlushInterval)
	}
	fl := accessFlush{through: a.access.through, clean: due || !dirty}
	for b, bf := range a.access.buckets {
		end := time.Unix(b+step, 0)
		// Written by an earlier flush (this one's write may still fail).
		written := !bf.dirty
		if bf.dirty && due {
			agg := &pb.AccessAggregate{Node: a.node, Site: a.site, Controller: a.c.cfg.Name,
				ConnectedUnixNano: a.status.GetConnectedUnixNano(), BucketStartUnix: b, StepSeconds: uint32(step),
				WrittenUnixNano: now.UnixNano(), RunId: a.runID, ThroughSeq: a.access.through}
			var total uint64
			for k, n := range bf.flows {
				agg.Flows = append(agg.Flows, &pb.AccessFlows{ResourceId: k[0], RegionId: k[1], NewFlows: n})
				total += n
			}
			slices.SortFunc(agg.Flows, func(x, y *pb.AccessFlows) int {
				if x.ResourceId != y.ResourceId {
					return int(x.ResourceId) - int(y.ResourceId)
				}
				return int(x.RegionId) - int(y.RegionId)
			})
			v, err := marshal.Marshal(agg)
			if err != nil {
				return accessFlush{}, err
			}
			fl.writes = append(fl.writes, accessWrite{bucket: b, key: a.c.store.fkey(accessKey(b, a.node, a.c.cfg.Name, a.status.GetConnectedUnixNano())), value: v, flows: total})
			// Marked clean now; a failed write marks it dirty again.
			bf.dirty, bf.lastWrite = false, now
		}
		// Keep a bucket while the leader may still read it, so a late
		// report adds to its total instead of replacing it, and until a
		// flush wrote it: a failed write marks it dirty for the next.
		if written && !now.Before(end.Add(2*fc.Grace+a.c.cfg.ReportInterval)) {
			delete(a.access.buckets, b)
			a.access.evictedBefore = max(a.access.evictedBefore, b+step)
		}
	}
	slices.SortFunc(fl.writes, func(x, y accessWrite) int { return int(x.bucket - y.bucket) })
	return fl, nil
}

// markDirty has a failed write's bucket written again by the next flush.
func (a *agentConn) markDirty(w accessWrite) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if bf := a.access.buckets[w.bucket]; bf != nil {
		bf.dirty = true
	} else {
		// Evicted meanwhile (flushes are serialized, and a bucket leaves
		// only once written: not expected): its counts are lost.
		a.c.m.accessFlows.WithLabelValues("write_failed").Add(float64(w.flows))
	}
}

// errFenced: a newer session of the agent's run took its counts over.
var errFenced = errors.New("a newer session of the agent run took its access counts over")

// flushAccess writes the session's due bucket aggregates and confirms to
// a numbered agent the reports they hold. One flush of a session at a
// time: a snapshot written after a newer one would lower the totals.
func (a *agentConn) flushAccess(ctx context.Context, final bool) error {
	fc := &a.c.cfg.Forecast
	if fc.Disable {
		return nil
	}
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	a.mu.Lock()
	fenced, clearStale, written := a.access.fenced, a.access.clearStale, a.access.written
	a.mu.Unlock()
	if fenced {
		return nil
	}
	now := fc.now()
	fl, err := a.pendingAccess(now, final)
	if err != nil {
		return err
	}
	// The run's record says the agent's baseline is stale while the agent
	// may not have heard it; once it has, the record is written without
	// it (with the aggregates, or alone, through what is written), so its
	// next restart keeps the baseline its journal has by then.
	if len(fl.writes) > 0 || clearStale && a.runID != 0 {
		wfl := fl
		if len(fl.writes) == 0 {
			wfl = accessFlush{through: written}
		}
		err := a.writeAccess(ctx, wfl, now)
		if errors.Is(err, errFenced) {
			a.fence(len(fl.writes))
			return nil
		}
		if err != nil {
			for _, w := range fl.writes {
				a.markDirty(w)
			}
			return err
		}
		a.mu.Lock()
		a.access.written = max(a.access.written, wfl.through)
		if clearStale {
			a.access.clearStale = false
		}
		a.mu.Unlock()
	}
	if fl.clean {
		a.confirm(fl.through)
	}
	return nil
}

// writeAccess writes a snapshot: for an agent that does not number its
// reports, bucket by bucket; otherwise with the run's record, in one
// transaction (several when it exceeds etcd's limits, the record in the
// last) conditioned on the record being this session's.
func (a *agentConn) writeAccess(ctx context.Context, fl accessFlush, now time.Time) error {
	w := a.c.access
	if a.runID == 0 {
		for _, aw := range fl.writes {
			if err := w.put(ctx, aw, now); err != nil {
				return fmt.Errorf("write access aggregate %s: %w", aw.key, err)
			}
			a.c.m.aggregateWrites.Inc()
		}
		return nil
	}
	var ops []clientv3.Op
	var leases []bucketLease
	for _, aw := range fl.writes {
		id, err := w.lease(ctx, aw.bucket, now)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(aw.key, string(aw.value), clientv3.WithLease(id)))
		leases = append(leases, bucketLease{aw.bucket, id})
	}
	run, rl, err := a.runOp(ctx, fl.through, now)
	if err != nil {
		return err
	}
	leases = append(leases, rl)
	batches := splitPuts(ops, run, a.c.store.MaxTxnOps, a.c.store.MaxRequestBytes)
	k := a.c.store.fkey(runKey(a.node, a.runID))
	for i, batch := range batches {
		for adopted := false; ; adopted = true {
			resp, err := a.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", a.fenceRev)).Then(batch...).Commit()
			if err != nil {
				// A lease may be gone (an etcd restored from backup, a
				// clock jump): grant new ones next time.
				w.forget(leases)
				return fmt.Errorf("write access aggregates of %d buckets: %w", len(fl.writes), err)
			}
			if resp.Succeeded {
				aggregates := len(batch)
				if i == len(batches)-1 {
					a.fenceRev = resp.Header.Revision
					aggregates-- // the run's record
				}
				a.c.m.aggregateWrites.Add(float64(aggregates))
				break
			}
			// Adopting the record's revision is right once: failing again
			// at once, another session took it in between.
			if adopted {
				return errFenced
			}
			if err := a.ownRun(ctx, now); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitPuts groups puts into transactions of at most maxOps operations
// and maxBytes of request (when set), last appended to the last one.
func splitPuts(puts []clientv3.Op, last clientv3.Op, maxOps, maxBytes int) [][]clientv3.Op {
	all := append(slices.Clip(puts), last)
	items := make([][]clientv3.Op, len(all))
	for i := range all {
		items[i] = all[i : i+1]
	}
	var out [][]clientv3.Op
	start := 0
	for _, end := range packTxns(items, maxOps, maxBytes, nil) {
		out = append(out, all[start:end:end])
		start = end
	}
	return out
}

// fence stops a session whose run a newer session took over: its counts
// not written are the newer session's, from the agent's reports sent
// again; its stream, if it still has one, is the agent's old one.
func (a *agentConn) fence(buckets int) {
	a.mu.Lock()
	a.access.fenced = true
	a.mu.Unlock()
	a.c.m.accessFenced.Inc()
	a.c.log.Info("access aggregates not written: a newer session of the agent took its counts over", "node", a.node,
		"run", fmt.Sprintf("%016x", a.runID), "buckets", buckets)
	if a.cancel != nil {
		a.cancel()
	}
}

// confirm queues the agent's confirmation that its reports up to through
// are written (sendLoop sends it), when one it keeps is not confirmed yet.
func (a *agentConn) confirm(through uint64) {
	if a.runID == 0 {
		return
	}
	a.mu.Lock()
	newer := through > a.access.confirmed && a.access.owed > a.access.confirmed
	if newer {
		a.access.confirmed = through
	}
	a.mu.Unlock()
	if newer {
		select {
		case a.durableCh <- struct{}{}:
		default: // one is queued already; it sends the latest
		}
	}
}

// runKey is where the progress of one agent run lives (pb.AccessRun):
// beside the aggregates, not among them (the leader reads access/ as
// buckets).
func runKey(node string, run uint64) string {
	return fmt.Sprintf("%s%s/%016x", fkeyRuns, url.PathEscape(node), run)
}

// runOp is the write of this session's record of its run, through the
// given report, leased like the aggregates of the current bucket.
func (a *agentConn) runOp(ctx context.Context, through uint64, now time.Time) (clientv3.Op, bucketLease, error) {
	a.mu.Lock()
	stale, other := a.access.staleBaseline, a.access.otherRun
	a.mu.Unlock()
	rec := &pb.AccessRun{Node: a.node, RunId: a.runID, Controller: a.c.cfg.Name, ConnectedUnixNano: a.status.GetConnectedUnixNano(),
		ThroughSeq: through, WrittenUnixNano: now.UnixNano(), BaselineStale: stale, OtherRun: other}
	v, err := marshal.Marshal(rec)
	if err != nil {
		return clientv3.Op{}, bucketLease{}, err
	}
	b := bucketStart(now, a.c.cfg.Forecast.Engine.Step)
	id, err := a.c.access.lease(ctx, b, now)
	if err != nil {
		return clientv3.Op{}, bucketLease{}, err
	}
	return clientv3.OpPut(a.c.store.fkey(runKey(a.node, a.runID)), string(v), clientv3.WithLease(id)), bucketLease{b, id}, nil
}

// takeOverRun makes this session the one that writes its agent run's
// counts and returns how far the run's earlier sessions wrote them. It
// reads the run's record and writes its own conditioned on the record's
// revision being the one read: an older session's write that lands in
// between makes it read again, and every later one fails (fenced). For
// an agent that asked (Register.check_baseline) it also returns whether
// the counter baseline the agent restored is stale (baselineVerdict),
// read in the same compare-and-swap and kept in the record until the
// agent hears it (AccessRun.baseline_stale).
func (a *agentConn) takeOverRun(ctx context.Context) (uint64, *pb.AccessBaseline, error) {
	k := a.c.store.fkey(runKey(a.node, a.runID))
	agentKey := a.c.store.key(keyAgents, a.node)
	for range 10 {
		resp, err := a.c.cli.Get(ctx, k)
		if err != nil {
			return 0, nil, err
		}
		var rev int64
		var through uint64
		var own *pb.AccessRun
		if len(resp.Kvs) == 1 {
			rev = resp.Kvs[0].ModRevision
			rec := &pb.AccessRun{}
			if err := proto.Unmarshal(resp.Kvs[0].Value, rec); err != nil {
				// Nothing to go by: the reports the agent sends again are
				// counted, some maybe twice.
				a.c.log.Error("ignoring corrupt access run record", "key", k, "err", err)
			} else {
				through, own = rec.GetThroughSeq(), rec
			}
		}
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", rev)}
		var verdict *pb.AccessBaseline
		if a.checkBaseline {
			ev, agentRev, err := a.runEvidence(ctx, rev, own)
			if err != nil {
				return 0, nil, err
			}
			// The node's agent record as read: this registration writes
			// it next, and the verdict must stand on what it was.
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(agentKey), "=", agentRev))
			verdict = baselineVerdict(ev)
		}
		a.mu.Lock()
		a.access.staleBaseline, a.access.otherRun = verdict.GetStale(), verdict.GetOtherRun()
		a.mu.Unlock()
		now := a.c.cfg.Forecast.now()
		op, l, err := a.runOp(ctx, through, now)
		if err != nil {
			return 0, nil, err
		}
		tr, err := a.c.cli.Txn(ctx).If(conds...).Then(op).Commit()
		if err != nil {
			a.c.access.forget([]bucketLease{l})
			return 0, nil, err
		}
		if tr.Succeeded {
			a.flushMu.Lock()
			a.fenceRev = tr.Header.Revision
			a.flushMu.Unlock()
			a.mu.Lock()
			a.access.through, a.access.written, a.access.confirmed = through, through, through
			a.mu.Unlock()
			return through, verdict, nil
		}
	}
	return 0, nil, errors.New("the run's record keeps changing")
}

// runEvidence is what tells whether another agent ran on the node since
// this run last wrote its record (own, at revision ownRev; nil: none, or
// expired): the node's other run records and its agent record, with the
// agent record's revision (0: none).
func (a *agentConn) runEvidence(ctx context.Context, ownRev int64, own *pb.AccessRun) (runEvidence, int64, error) {
	ev := runEvidence{run: a.runID, own: own, ownRev: ownRev}
	prefix := a.c.store.fkey(fmt.Sprintf("%s%s/", fkeyRuns, url.PathEscape(a.node)))
	resp, err := a.c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return ev, 0, err
	}
	for _, kv := range resp.Kvs {
		rec := &pb.AccessRun{}
		if err := proto.Unmarshal(kv.Value, rec); err != nil || rec.GetRunId() == a.runID {
			continue
		}
		ev.others = append(ev.others, otherRun{run: rec.GetRunId(), created: kv.CreateRevision})
	}
	resp, err = a.c.cli.Get(ctx, a.c.store.key(keyAgents, a.node))
	if err != nil || len(resp.Kvs) == 0 {
		return ev, 0, err
	}
	ev.agent = &pb.AgentRecord{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, ev.agent); err != nil {
		ev.agent = nil
	}
	return ev, resp.Kvs[0].ModRevision, nil
}

// runEvidence is what a registering run's counter baseline is judged by.
type runEvidence struct {
	run uint64
	// own: the run's record (nil: never written, or expired with its
	// lease), last written at revision ownRev.
	own    *pb.AccessRun
	ownRev int64
	// others: the node's records of other runs (not expired).
	others []otherRun
	// agent: the node's agent record as the previous registration left
	// it (nil: none, or unreadable).
	agent *pb.AgentRecord
}

// otherRun is another run of the node and its record's create revision
// (its first registration under a controller that confirms reports).
type otherRun struct {
	run     uint64
	created int64
}

// baselineVerdict says whether a run's restored counter baseline is
// stale: whether another agent registered on the node since the run
// last wrote its record, and so reported the counters' growth since
// (counted again from the baseline). etcd's revision is global and
// monotonic across replicas, so records compare by it whichever replica
// wrote them. Evidence, any of:
//   - the run's record says an earlier registration found it (whose
//     answer may not have reached the agent);
//   - another run's record was created after the run's record was last
//     written (an agent that numbers its reports, not expired);
//   - the node's agent record, which every registration writes and which
//     has no lease, names another run, 0 included (an agent that does not
//     number its reports, or whose run record expired).
//
// Not stale without evidence: a missed interim agent double counts what
// it reported since the journal's last write, a false alarm loses what
// was counted between the run's last report and the agent's start; only
// evidence decides. Residual (documented in OPERATIONS §5): an agent
// record written by an earlier controller (no run_id) and either no own
// record (expired) or an interim agent that wrote no run record (one
// that does not number its reports, or under a controller confirming
// none).
func baselineVerdict(ev runEvidence) *pb.AccessBaseline {
	if ev.own.GetBaselineStale() {
		return &pb.AccessBaseline{Stale: true, OtherRun: ev.own.GetOtherRun()}
	}
	if ev.own != nil {
		var newest *otherRun
		for i, o := range ev.others {
			if o.created > ev.ownRev && (newest == nil || o.created > newest.created) {
				newest = &ev.others[i]
			}
		}
		if newest != nil {
			return &pb.AccessBaseline{Stale: true, OtherRun: newest.run}
		}
	}
	if ev.agent != nil && ev.agent.RunId != nil && ev.agent.GetRunId() != ev.run {
		return &pb.AccessBaseline{Stale: true, OtherRun: ev.agent.GetRunId()}
	}
	return &pb.AccessBaseline{}
}

// ownRun adopts the run's record's revision when the record is still
// this session's (a write whose answer was lost may have landed), and
// writes it again when it expired (no session of the run wrote for
// Retention); otherwise the session is fenced (errFenced).
func (a *agentConn) ownRun(ctx context.Context, now time.Time) error {
	k := a.c.store.fkey(runKey(a.node, a.runID))
	resp, err := a.c.cli.Get(ctx, k)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		a.mu.Lock()
		written := a.access.written
		a.mu.Unlock()
		op, l, err := a.runOp(ctx, written, now)
		if err != nil {
			return err
		}
		tr, err := a.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(op).Commit()
		if err != nil {
			a.c.access.forget([]bucketLease{l})
			return err
		}
		if !tr.Succeeded {
			return errFenced
		}
		a.fenceRev = tr.Header.Revision
		return nil
	}
	rec := &pb.AccessRun{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rec); err != nil ||
		rec.GetController() != a.c.cfg.Name || rec.GetConnectedUnixNano() != a.status.GetConnectedUnixNano() {
		return errFenced
	}
	a.fenceRev = resp.Kvs[0].ModRevision
	return nil
}

// accessKey is where one session's aggregate of one bucket lives: by
// bucket first, so the leader reads a bucket (or a range of buckets) with
// one range read and deletes closed buckets with one range delete.
func accessKey(bucket int64, node, replica string, connected int64) string {
	return fmt.Sprintf("%s%012d/%s/%s/%d", fkeyAccess, bucket, url.PathEscape(node), url.PathEscape(replica), connected)
}

// accessBucketKey is the start of bucket b's keys.
func accessBucketKey(b int64) string { return fmt.Sprintf("%s%012d/", fkeyAccess, b) }

// parseAccessKey returns the bucket of an aggregate's key (relative to
// the forecast prefix).
func parseAccessKey(rel string) (int64, error) {
	s, ok := strings.CutPrefix(rel, fkeyAccess)
	if !ok {
		return 0, fmt.Errorf("access key %q: not under %s", rel, fkeyAccess)
	}
	digits, _, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("access key %q: no bucket", rel)
	}
	b, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || b < 0 {
		return 0, fmt.Errorf("access key %q: bucket %q", rel, digits)
	}
	return b, nil
}

// accessWriter writes aggregates under leases that expire Retention after
// their bucket ends: the leader deletes what it has checkpointed, the
// lease removes what no leader ever read (one lease per bucket and
// replica).
type accessWriter struct {
	c      *Controller
	mu     sync.Mutex
	leases map[int64]clientv3.LeaseID
}

func (w *accessWriter) lease(ctx context.Context, b int64, now time.Time) (clientv3.LeaseID, error) {
	fc := &w.c.cfg.Forecast
	step := int64(fc.Engine.Step / time.Second)
	w.mu.Lock()
	defer w.mu.Unlock()
	for ob := range w.leases {
		if now.After(time.Unix(ob+step, 0).Add(fc.Retention)) {
			delete(w.leases, ob) // expired on its own
		}
	}
	if id, ok := w.leases[b]; ok {
		return id, nil
	}
	ttl := time.Unix(b+step, 0).Add(fc.Retention).Sub(now)
	resp, err := w.c.cli.Grant(ctx, max(int64(ttl/time.Second), 10))
	if err != nil {
		return 0, fmt.Errorf("grant access lease: %w", err)
	}
	w.leases[b] = resp.ID
	return resp.ID, nil
}

// bucketLease is a lease the writer handed out for a bucket.
type bucketLease struct {
	bucket int64
	id     clientv3.LeaseID
}

// forget drops leases a failed write used: they may be gone (an etcd
// restored from backup, a clock jump), and new ones are granted next time.
func (w *accessWriter) forget(ls []bucketLease) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range ls {
		if w.leases[l.bucket] == l.id {
			delete(w.leases, l.bucket)
		}
	}
}

func (w *accessWriter) put(ctx context.Context, aw accessWrite, now time.Time) error {
	id, err := w.lease(ctx, aw.bucket, now)
	if err != nil {
		return err
	}
	_, err = w.c.cli.Put(ctx, aw.key, string(aw.value), clientv3.WithLease(id))
	if err != nil {
		w.forget([]bucketLease{{aw.bucket, id}})
	}
	return err
}

// accessFlusher writes every session's due aggregates each tick.
func (c *Controller) accessFlusher(ctx context.Context) {
	fc := &c.cfg.Forecast
	if fc.Disable {
		return
	}
	t := time.NewTicker(min(fc.FlushInterval, c.cfg.ReportInterval, fc.Tick))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.sessMu.Lock()
		conns := make([]*agentConn, 0, len(c.sessions))
		for _, a := range c.sessions {
			conns = append(conns, a)
		}
		c.sessMu.Unlock()
		for _, a := range conns {
			if err := a.flushAccess(ctx, false); err != nil && ctx.Err() == nil {
				c.log.Warn("access aggregate not written; retrying", "node", a.node, "err", err)
			}
		}
	}
}
