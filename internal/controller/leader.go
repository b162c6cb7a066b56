package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/route"
)

// leaderState is what a leader carries from tick to tick.
type leaderState struct {
	fence   fence
	version uint64
	digest  []byte
	modRev  int64 // of state/desired, for the write fence
	state   *route.State
	lastNow time.Time
	// latTicks counts computations, for observeLatency's every tenth.
	latTicks int
	held     map[uint32]*heldRegion
	downWhy  map[uint32]string      // why each active mirror was down at the last tick (logged on change)
	refused  map[[2]string][]string // (region, mirror) → edges refused at the last tick (logged on change)
	lastSave time.Time
	saves    chan routeSave // to the route-record writer (latest wins)
}

type routeSave struct {
	state *route.State
	held  []*pb.HeldPath
}

// leaderLoop campaigns until ctx ends; while this replica leads it
// computes routes.
func (c *Controller) leaderLoop(ctx context.Context) {
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(c.cli, concurrency.WithTTL(ttlSeconds(c.cfg.LeaseTTL)), concurrency.WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("election session failed", "err", err)
				sleepCtx(ctx, 500*time.Millisecond)
			}
			continue
		}
		el := concurrency.NewElection(sess, c.store.key(keyElection))
		err = el.Campaign(ctx, c.cfg.Name)
		if err == nil {
			c.m.leader.Set(1)
			c.log.Info("leading: computing routes", "tick", c.cfg.TickInterval)
			err = c.lead(ctx, sess, el)
			c.m.leader.Set(0)
			// Only the leader's view of the routes is current.
			c.m.regionRTT.Reset()
			c.m.regionBestRTT.Reset()
			c.latRegions = nil
		}
		if c.crash.Load() {
			sess.Orphan() // as if killed: the lease runs out on its own
			return
		}
		if ctx.Err() == nil {
			c.log.Warn("leadership ended; campaigning again", "err", err)
		}
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = el.Resign(rctx)
		cancel()
		_ = sess.Close()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// lead runs the ticks of one leadership.
func (c *Controller) lead(ctx context.Context, sess *concurrency.Session, el *concurrency.Election) error {
	ls := &leaderState{fence: fence{key: el.Key(), rev: el.Rev()}, held: map[uint32]*heldRegion{},
		saves: make(chan routeSave, 1)}
	// What the previous leader committed, read from etcd (not the view,
	// which may lag): versions continue from it.
	rec, modRev, err := c.store.readDesired(ctx)
	if err != nil {
		return err
	}
	ls.modRev = modRev
	if rec != nil {
		ls.version, ls.digest = rec.GetState().GetVersion(), rec.GetDigest()
	}
	if rr, err := c.store.readRoutes(ctx); err != nil {
		c.log.Warn("route state unreadable; damping starts afresh", "err", err)
	} else if rr != nil {
		c.restoreRoutes(ls, rr)
	}

	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	saved := make(chan struct{})
	go func() { defer close(saved); c.routeWriter(lctx, ls) }()
	defer func() { cancel(); <-saved }()
	if c.fc != nil {
		// Forecasting runs beside the route ticks, never in their way: a
		// bucket close or a checkpoint may take seconds.
		forecasted := make(chan struct{})
		go func() { defer close(forecasted); c.fc.run(lctx, ls.fence) }()
		defer func() { cancel(); <-forecasted }()
	}

	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		if err := c.tick(ctx, ls); errors.Is(err, ErrNotLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errLeaseLost
		case <-t.C:
		case <-c.view.kick:
		}
	}
}

func (c *Controller) restoreRoutes(ls *leaderState, rr *pb.RouteRecord) {
	var snap route.Snapshot
	if err := json.Unmarshal(rr.GetSnapshot(), &snap); err != nil {
		c.log.Warn("route snapshot unreadable; damping starts afresh", "err", err)
	} else if st, err := route.Restore(snap); err != nil {
		c.log.Warn("route snapshot refused; damping starts afresh", "err", err)
	} else {
		ls.state, ls.lastNow = st, snap.Now
	}
	for _, h := range rr.GetPaths() {
		r := ls.held[h.GetRegionId()]
		seen := time.Unix(0, h.GetSeenUnixNano())
		if r == nil {
			r = &heldRegion{seen: seen}
			ls.held[h.GetRegionId()] = r
		}
		r.paths = append(r.paths, route.Path{Region: h.GetRegionId(), Mirror: h.GetMirrorId(), RTT: time.Duration(h.GetRttNs()),
			Jitter: time.Duration(h.GetJitterNs()), Loss: h.GetLoss(), Up: h.GetUp()})
	}
}

// tick computes routes once and writes a new version if they changed.
func (c *Controller) tick(ctx context.Context, ls *leaderState) error {
	start := time.Now()
	ds, sum, next, err := c.compute(ls, start)
	if err != nil {
		c.m.ticks.WithLabelValues("error").Inc()
		c.log.Error("route computation failed; keeping the current version", "err", err)
		return err
	}
	// The damping state advances only with what agents get: after a
	// failed write the next tick starts from the published routes, not
	// from a move nobody saw (two slew-limited moves would go out as one).
	dg, err := digest(ds)
	if err != nil {
		return err
	}
	if bytes.Equal(dg, ls.digest) {
		ls.state = next
		if time.Since(ls.lastSave) >= c.cfg.CheckpointInterval {
			c.saveRoutes(ls)
		}
		c.m.ticks.WithLabelValues("ok").Inc()
		c.m.tickTime.Observe(time.Since(start).Seconds())
		return nil
	}
	ds.Version = ls.version + 1
	sum.DurationNs = int64(time.Since(start))
	b, err := pack(&pb.DesiredRecord{State: ds, Digest: dg, Summary: sum, Leader: c.cfg.Name})
	if err != nil {
		return err
	}
	rev, err := c.store.writeDesired(ctx, ls.fence, ls.modRev, b)
	if err != nil {
		c.m.ticks.WithLabelValues("error").Inc()
		if !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
			c.log.Error("desired state not written; retrying next tick", "version", ds.Version, "err", err)
		}
		return err
	}
	ls.version, ls.digest, ls.modRev, ls.state = ds.Version, dg, rev, next
	c.saveRoutes(ls)
	c.m.versions.Inc()
	c.m.movedSlots.Add(float64(sum.GetMovedSlots()))
	c.m.ticks.WithLabelValues("ok").Inc()
	c.m.tickTime.Observe(time.Since(start).Seconds())
	c.log.Info("desired state", "version", ds.Version, "routes", sum.GetRoutes(), "changed", sum.GetChanged(),
		"moved_share", sum.GetMovedShare(), "panic", sum.GetPanic(), "unrouted", sum.GetUnrouted(),
		"duration", time.Since(start).Round(time.Microsecond))
	return nil
}

// compute is one evaluation from the current view: routes and the
// desired state, without writing anything.
func (c *Controller) compute(ls *leaderState, now time.Time) (*pb.DesiredState, *pb.RouteSummary, *route.State, error) {
	if now.Before(ls.lastNow) {
		now = ls.lastNow // another replica's clock ran ahead: never step back
	}
	snap := c.view.snapshot()
	in, w := buildInput(snap, now, c.inputConfig(), ls.held)
	start := time.Now()
	res, next, err := c.engine.Step(ls.state, in)
	if err != nil {
		return nil, nil, nil, err
	}
	c.routeM.Observe(res, time.Since(start))
	// The latency summary reads every route (about 7 ms at 4096 × 64
	// routes, a third of a tick): every tenth computation is enough for
	// a gauge scraped every 15–30 s.
	if ls.latTicks%latencyEvery == 0 {
		c.observeLatency(w, in, res)
	}
	ls.latTicks++
	ls.lastNow = now
	ds, sum := buildDesired(w, res, c.engine.Config().Slots, now)
	ds.EdgeSources = snap.tunnel.edges
	c.logDown(ls, w)
	c.logRefused(ls, sum.GetRefused())
	return ds, sum, next, nil
}

// latencyEvery is how many route computations one latency summary spans.
const latencyEvery = 10

// observeLatency exports, per client region, the path RTT the routes
// give its traffic and the best they could (route.RegionLatency); a
// region whose routes have no measured path has no series.
func (c *Controller) observeLatency(w *world, in *route.Input, res *route.Result) {
	names := make(map[route.RegionID]string, len(w.regions))
	for _, r := range w.regions {
		names[r.GetId()] = r.GetName()
	}
	now := make(map[string]bool, len(names))
	xs, err := route.RegionLatency(in, res)
	if err != nil {
		c.log.Warn("route latency summary refused its input", "err", err) // Step took it: a bug
		return
	}
	for _, x := range xs {
		if x.Routes == 0 {
			continue
		}
		n := names[x.Region]
		now[n] = true
		c.m.regionRTT.WithLabelValues(n).Set(x.Routed.Seconds())
		c.m.regionBestRTT.WithLabelValues(n).Set(x.Best.Seconds())
	}
	// Series of regions gone, or without a measured route now, go; the
	// others were overwritten in place (no scrape sees them missing).
	for n := range c.latRegions {
		if !now[n] {
			c.m.regionRTT.DeleteLabelValues(n)
			c.m.regionBestRTT.DeleteLabelValues(n)
		}
	}
	c.latRegions = now
}

// logDown logs the active mirrors that went down in the data plane, and
// why, or came back.
func (c *Controller) logDown(ls *leaderState, w *world) {
	for _, m := range w.mirrors {
		id := m.GetId()
		why, was := w.downWhy[id], ls.downWhy[id]
		switch {
		case why != "" && why != was:
			c.log.Warn("mirror down: routed around", "mirror", m.GetName(), "why", why, "node", m.GetNode())
		case why == "" && was != "":
			c.log.Info("mirror up again", "mirror", m.GetName(), "was", was)
		}
	}
	ls.downWhy = w.downWhy
}

// logRefused logs the refused paths (RouteSummary.refused) that changed
// since the last tick.
func (c *Controller) logRefused(ls *leaderState, refused []*pb.RefusedPath) {
	now := make(map[[2]string][]string, len(refused))
	for _, p := range refused {
		k := [2]string{p.GetRegion(), p.GetMirror()}
		now[k] = p.GetEdges()
		if !slices.Equal(p.GetEdges(), ls.refused[k]) {
			c.log.Warn("region routed around a mirror whose host's decap_sources leaves out its edges", "region", k[0], "mirror", k[1], "edges", p.GetEdges())
		}
	}
	for k := range ls.refused {
		if _, ok := now[k]; !ok {
			c.log.Info("region may use the mirror again: its host lists its edges", "region", k[0], "mirror", k[1])
		}
	}
	ls.refused = now
}

func (c *Controller) inputConfig() inputConfig {
	return inputConfig{ReportMaxAge: c.cfg.ReportMaxAge, ProbeMaxAge: c.cfg.ProbeMaxAge, PathHold: c.cfg.PathHold,
		TableSlots: c.engine.Config().Slots}
}

// saveRoutes hands the policy state to the writer; a save still queued
// is replaced by this newer one.
func (c *Controller) saveRoutes(ls *leaderState) {
	var held []*pb.HeldPath
	for r, h := range ls.held {
		for _, p := range h.paths {
			held = append(held, &pb.HeldPath{RegionId: r, MirrorId: p.Mirror, RttNs: int64(p.RTT), JitterNs: int64(p.Jitter),
				Loss: p.Loss, Up: p.Up, SeenUnixNano: h.seen.UnixNano()})
		}
	}
	ls.lastSave = time.Now()
	s := routeSave{state: ls.state, held: held}
	select {
	case ls.saves <- s:
	default:
		select {
		case <-ls.saves:
		default:
		}
		ls.saves <- s
	}
}

// routeWriter saves the policy state off the tick path: a snapshot of
// 4096 × 64 routes takes longer to encode than a tick may.
func (c *Controller) routeWriter(ctx context.Context, ls *leaderState) {
	for {
		var s routeSave
		select {
		case <-ctx.Done():
			return
		case s = <-ls.saves:
		}
		if s.state == nil {
			continue
		}
		js, err := json.Marshal(s.state.Snapshot())
		if err != nil {
			c.log.Error("route snapshot not encoded", "err", err)
			continue
		}
		b, err := pack(&pb.RouteRecord{Snapshot: js, Paths: s.held, WrittenUnixNano: time.Now().UnixNano()})
		if err != nil {
			continue
		}
		if err := c.store.writeRoutes(ctx, ls.fence, b); err != nil && ctx.Err() == nil {
			c.log.Warn("route state not saved", "err", err)
		}
	}
}
