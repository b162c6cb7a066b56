package controller

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
// agent and bucket whatever the report rate, a count reaches the engine
// exactly once (every key is a cumulative total, read once; the engine's
// own watermark drops a bucket it already closed), and a reconnecting
// agent's sessions on different replicas add up. What a crashed replica
// received since its last flush is lost (at most FlushInterval of one
// agent's accesses); the engine learns such a bucket as lower demand.

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

// recordAccess folds one report's new flows into the session's buckets.
func (a *agentConn) recordAccess(r *pb.Report, now time.Time) {
	fc := &a.c.cfg.Forecast
	if fc.Disable || len(r.GetAccess()) == 0 {
		return
	}
	start, end := reportSpan(r, now, fc.maxSpan())
	var received, late float64
	a.mu.Lock()
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
}

// pendingAccess returns the session's buckets due for a write: dirty and
// either over (no report for it is expected any more) or not written for
// FlushInterval; all dirty ones when final. Buckets over for long are
// evicted once written.
func (a *agentConn) pendingAccess(now time.Time, final bool) ([]accessWrite, error) {
	fc := &a.c.cfg.Forecast
	step := int64(fc.Engine.Step / time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []accessWrite
	for b, bf := range a.access.buckets {
		end := time.Unix(b+step, 0)
		over := !now.Before(end.Add(a.c.cfg.ReportInterval))
		if bf.dirty && (final || over || now.Sub(bf.lastWrite) >= fc.FlushInterval) {
			agg := &pb.AccessAggregate{Node: a.node, Site: a.site, Controller: a.c.cfg.Name,
				ConnectedUnixNano: a.status.GetConnectedUnixNano(), BucketStartUnix: b, StepSeconds: uint32(step),
				WrittenUnixNano: now.UnixNano()}
			for k, n := range bf.flows {
				agg.Flows = append(agg.Flows, &pb.AccessFlows{ResourceId: k[0], RegionId: k[1], NewFlows: n})
			}
			slices.SortFunc(agg.Flows, func(x, y *pb.AccessFlows) int {
				if x.ResourceId != y.ResourceId {
					return int(x.ResourceId) - int(y.ResourceId)
				}
				return int(x.RegionId) - int(y.RegionId)
			})
			v, err := marshal.Marshal(agg)
			if err != nil {
				return nil, err
			}
			out = append(out, accessWrite{bucket: b, key: a.c.store.fkey(accessKey(b, a.node, a.c.cfg.Name, a.status.GetConnectedUnixNano())), value: v})
			// Marked clean now; a failed write marks it dirty again.
			bf.dirty, bf.lastWrite = false, now
		}
		// Keep a bucket while the leader may still read it, so a late
		// report adds to its total instead of replacing it.
		if !bf.dirty && !now.Before(end.Add(2*fc.Grace+a.c.cfg.ReportInterval)) {
			delete(a.access.buckets, b)
			a.access.evictedBefore = max(a.access.evictedBefore, b+step)
		}
	}
	slices.SortFunc(out, func(x, y accessWrite) int { return int(x.bucket - y.bucket) })
	return out, nil
}

func (a *agentConn) markDirty(b int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if bf := a.access.buckets[b]; bf != nil {
		bf.dirty = true
	} else {
		// Evicted meanwhile: its counts were lost with the write.
		a.c.m.accessFlows.WithLabelValues("write_failed").Inc()
	}
}

// flushAccess writes the session's due bucket aggregates.
func (a *agentConn) flushAccess(ctx context.Context, final bool) error {
	fc := &a.c.cfg.Forecast
	if fc.Disable {
		return nil
	}
	now := fc.now()
	ws, err := a.pendingAccess(now, final)
	if err != nil {
		return err
	}
	for i, w := range ws {
		if err := a.c.access.put(ctx, w, now); err != nil {
			for _, rest := range ws[i:] {
				a.markDirty(rest.bucket)
			}
			return fmt.Errorf("write access aggregate %s: %w", w.key, err)
		}
		a.c.m.aggregateWrites.Inc()
	}
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

func (w *accessWriter) put(ctx context.Context, aw accessWrite, now time.Time) error {
	id, err := w.lease(ctx, aw.bucket, now)
	if err != nil {
		return err
	}
	_, err = w.c.cli.Put(ctx, aw.key, string(aw.value), clientv3.WithLease(id))
	if err != nil {
		// The lease may be gone (an etcd restored from backup, a clock
		// jump): grant a new one next time.
		w.mu.Lock()
		if w.leases[aw.bucket] == id {
			delete(w.leases, aw.bucket)
		}
		w.mu.Unlock()
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
