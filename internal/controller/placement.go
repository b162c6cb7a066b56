package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

// The mirroring manager. At every bucket close, after the forecasts are
// published, the leader evaluates each resource in predictive mode:
//
//   - every allowed site without a copy gets its Mirroring Score (the one
//     `controller explain` prints); a site that scores at or above the
//     resource's mirror_score at placeConfirm evaluations in a row gets a
//     copy on the host the score was computed for, if max_mirrors allows
//     (one placement per resource and evaluation);
//   - every copy the manager placed gets a keep score: the same score with
//     the copy already paid for (only storage counts) and the current cost
//     of each region taken as the best other routable copy's (keepScores);
//     a copy that scores below retire_score at retireConfirm evaluations
//     in a row is retired (one per resource and evaluation), and at once
//     when its host is deleted or administratively down, its
//     site no longer allowed, or the resource left predictive mode; and
//     copies beyond a lowered max_mirrors go at once, the lowest keep
//     scores first.
//
// A placed copy is a full copy, or a delta when its host held one before
// (a retired copy keeps its data), or — for a resource that declares a
// working set smaller than its size — a selective copy of its hottest
// extents (read-through serves the rest), scored with the working set's
// bytes copied and stored. A delta is costed by what it must catch up on:
// the origin host's reported change-tracking backlog toward the target
// (score.go deltaCopy), the full size when none is reported. Every
// placement carries a deadline, when the copy should be in sync (the
// first forecast bucket whose median benefit reaches the horizon's mean,
// deadline.go), and its bytes; the origin's agent plans the transfer's
// start against them. Decisions are stored per resource in
// etcd (state/placements/<resource>, fenced on the leadership); the
// routing policy adds placed copies to the resource's replicas, routable
// once their host reports them in sync, and the desired state carries a
// replication task to the origin's node (compute.go); nothing is placed
// while the origin mirror names no node (nobody would push the copy) or
// the resource has no forecast yet. Static mirrors and the origin are
// never touched.
const (
	placeConfirm  = 2
	retireConfirm = 3
	maxEvents     = 16
	// mirror_score of a predictive resource that sets none; retire_score
	// defaults to half the mirror_score (a wide hysteresis band).
	defaultMirrorScore = 0.8
)

// placeCandidate is a site without a copy and its score, with what a
// copy there would send and when it should be in sync (deadline.go).
type placeCandidate struct {
	site, mirror string
	score        float64
	copyBytes    uint64
	deadline     time.Time
}

// placeInput is one evaluation of one resource.
type placeInput struct {
	now                      time.Time
	predictive               bool
	mirrorScore, retireScore float64
	maxCopies                int    // including the origin; 0: no bound
	copies                   int    // origin plus listed mirrors
	hotExtents               uint32 // selective copies of this many extents; 0: full copies
	cands                    []placeCandidate
	keep                     map[string]float64 // placed mirror → keep score (absent: not scored now)
	gone                     map[string]string  // placed mirror → why it must go at once
	copyStates               map[string]copyReport
}

// copyReport is what a placed copy's host last reported of it.
type copyReport struct {
	state pb.CopyState
	lag   time.Duration
}

// decide applies one evaluation to a copy of rec and returns it with
// whether anything changed that the routes or the operator must see.
func decide(rec *pb.PlacementRecord, in placeInput) (*pb.PlacementRecord, bool) {
	out := proto.Clone(rec).(*pb.PlacementRecord)
	if out.Above == nil {
		out.Above = map[string]uint32{}
	}
	if out.Below == nil {
		out.Below = map[string]uint32{}
	}
	out.EvaluatedUnixNano = in.now.UnixNano()
	changed := false
	event := func(ev *pb.PlacementEvent) {
		ev.UnixNano = in.now.UnixNano()
		out.Events = append([]*pb.PlacementEvent{ev}, out.Events...)
		if len(out.Events) > maxEvents {
			out.Events = out.Events[:maxEvents]
		}
		changed = true
	}
	retire := func(i int, reason string) {
		pl := out.Placed[i]
		event(&pb.PlacementEvent{Action: "retire", Site: pl.GetSite(), Mirror: pl.GetMirror(), Kind: pl.GetKind(),
			Score: pl.GetScore(), Reason: reason})
		if !slices.Contains(out.Held, pl.GetMirror()) {
			out.Held = append(out.Held, pl.GetMirror())
		}
		delete(out.Below, pl.GetMirror())
		out.Placed = slices.Delete(out.Placed, i, i+1)
	}

	for _, pl := range out.Placed {
		r, ok := in.copyStates[pl.GetMirror()]
		if !ok {
			r.state = pb.CopyState_COPY_STATE_UNREPORTED
		}
		pl.CopyState, pl.LagNs = r.state, int64(r.lag)
	}
	// Retirements first: they free room for placements. At most one copy
	// goes for its keep score per evaluation, the lowest: each keep score
	// counts the other copies as staying, so two copies serving the same
	// regions both score low, and retiring both at once would leave those
	// regions neither.
	due, dueScore := "", math.Inf(1)
	for i := len(out.Placed) - 1; i >= 0; i-- {
		pl := out.Placed[i]
		m := pl.GetMirror()
		if !in.predictive {
			retire(i, "mirror_policy is no longer predictive")
			continue
		}
		if why, ok := in.gone[m]; ok {
			retire(i, why)
			continue
		}
		ks, ok := in.keep[m]
		if !ok {
			continue // not scored this time (no demand, no costs): no evidence either way
		}
		pl.Score = ks
		if ks >= in.retireScore {
			delete(out.Below, m)
			continue
		}
		out.Below[m]++
		if out.Below[m] >= retireConfirm && (ks < dueScore || ks == dueScore && m < due) {
			due, dueScore = m, ks
		}
	}
	if i := slices.IndexFunc(out.Placed, func(pl *pb.Placement) bool { return pl.GetMirror() == due }); due != "" && i >= 0 {
		retire(i, fmt.Sprintf("keep score %.3f below retire_score %.3g for %d evaluations", dueScore, in.retireScore, out.Below[due]))
	}
	if !in.predictive {
		clear(out.Above)
		return out, changed
	}
	// max_mirrors lowered (or mirrors listed) below what stands: the
	// placed copies beyond the bound go at once, the lowest scores first.
	for in.maxCopies > 0 && len(out.Placed) > 0 && in.copies+len(out.Placed) > in.maxCopies {
		low := 0
		for i, pl := range out.Placed {
			if l := out.Placed[low]; pl.GetScore() < l.GetScore() || pl.GetScore() == l.GetScore() && pl.GetMirror() < l.GetMirror() {
				low = i
			}
		}
		retire(low, fmt.Sprintf("max_mirrors %d: %d copies with the origin and listed mirrors", in.maxCopies, in.copies+len(out.Placed)))
	}

	// Hysteresis counters of the candidates; sites no longer candidates
	// start again.
	seen := map[string]bool{}
	for _, c := range in.cands {
		seen[c.site] = true
		if c.score >= in.mirrorScore {
			out.Above[c.site]++
		} else {
			delete(out.Above, c.site)
		}
	}
	for site := range out.Above {
		if !seen[site] {
			delete(out.Above, site)
		}
	}
	if in.maxCopies > 0 && in.copies+len(out.Placed) >= in.maxCopies {
		return out, changed
	}
	var best *placeCandidate
	for i := range in.cands {
		c := &in.cands[i]
		if out.Above[c.site] >= placeConfirm && (best == nil || c.score > best.score) {
			best = c
		}
	}
	if best == nil {
		return out, changed
	}
	kind := pb.MirrorKind_MIRROR_KIND_FULL
	switch {
	case in.hotExtents > 0:
		kind = pb.MirrorKind_MIRROR_KIND_SELECTIVE
	case slices.Contains(out.Held, best.mirror):
		kind = pb.MirrorKind_MIRROR_KIND_DELTA
	}
	dl := timeNano(best.deadline)
	out.Placed = append(out.Placed, &pb.Placement{Site: best.site, Mirror: best.mirror, Kind: kind, HotExtents: in.hotExtents,
		PlacedUnixNano: in.now.UnixNano(), PlacedScore: best.score, Score: best.score, CopyState: pb.CopyState_COPY_STATE_UNREPORTED,
		DeadlineUnixNano: dl, CopyBytes: best.copyBytes})
	delete(out.Above, best.site)
	event(&pb.PlacementEvent{Action: "place", Site: best.site, Mirror: best.mirror, Kind: kind, Score: best.score,
		DeadlineUnixNano: dl, CopyBytes: best.copyBytes,
		Reason: fmt.Sprintf("score %.3f at or above mirror_score %.3g for %d evaluations; ~%s to send, in sync by %s",
			best.score, in.mirrorScore, placeConfirm, mib(best.copyBytes), deadlineText(dl))})
	return out, changed
}

// thresholds returns a resource's placement thresholds, defaults filled.
func thresholds(res *pb.Resource) (place, retire float64) {
	place, retire = res.GetThresholds().GetMirrorScore(), res.GetThresholds().GetRetireScore()
	if place == 0 {
		place = defaultMirrorScore
	}
	if retire == 0 || retire >= place {
		retire = place / 2
	}
	return place, retire
}

// evaluatePlacements runs the manager over every resource once for
// bucket (the leader, after publishing its forecasts) and writes every
// record it evaluated, fenced on the leadership. All resources are scored
// from one view and one routing input. Each record is its own write, so
// a pass can fail part-way; a record that already counted bucket is
// skipped, so the retry (or a new leader closing the bucket again) does
// not count its evidence twice toward placeConfirm or retireConfirm.
// resumeAfter (unix nanoseconds; 0: none) is a new leader finishing its
// predecessor's pass for bucket, whose checkpoint was taken then: a record
// evaluated since was evaluated for bucket (publish precedes checkpoint),
// whatever build wrote it, and one of an earlier build, which names no
// bucket, may have counted it; both are skipped too.
func (c *Controller) evaluatePlacements(ctx context.Context, fn fence, bucket, resumeAfter int64, now time.Time) error {
	base := c.newScoreBase(now)
	snap := base.snap
	names := make([]string, 0, len(snap.resources))
	byName := map[string]*pb.Resource{}
	for _, r := range snap.resources {
		byName[r.GetName()] = r
		if r.GetMirrorPolicy().GetMode() == pb.MirrorMode_MIRROR_MODE_PREDICTIVE || len(snap.placed[r.GetName()].GetPlaced()) > 0 {
			names = append(names, r.GetName())
		}
	}
	for name, rec := range snap.placed {
		if byName[name] == nil && len(rec.GetPlaced()) > 0 {
			names = append(names, name) // a deleted resource: retire its copies
		}
	}
	slices.Sort(names)
	placed := map[pb.CopyState]int{}
	for _, name := range names {
		rec := snap.placed[name]
		if rec == nil {
			rec = &pb.PlacementRecord{Resource: name}
		}
		if rec.GetEvaluatedBucketUnix() >= bucket || resumeAfter != 0 && (rec.GetEvaluatedUnixNano() >= resumeAfter ||
			rec.GetEvaluatedBucketUnix() == 0 && rec.GetEvaluatedUnixNano() != 0) {
			for _, pl := range rec.GetPlaced() {
				placed[pl.GetCopyState()]++
			}
			continue
		}
		in, err := c.placementInput(ctx, byName[name], rec, base, now)
		if err != nil {
			c.log.Warn("placement not evaluated", "resource", name, "err", err)
			c.m.placementEvals.WithLabelValues("error").Inc()
			continue
		}
		next, changed := decide(rec, in)
		next.EvaluatedBucketUnix = bucket
		c.m.placementEvals.WithLabelValues("ok").Inc()
		for _, ev := range next.GetEvents() {
			if !changed || ev.GetUnixNano() != now.UnixNano() {
				break // only this evaluation's decisions
			}
			c.m.placementDecisions.WithLabelValues(ev.GetAction()).Inc()
			c.log.Info("mirroring manager", "action", ev.GetAction(), "resource", name, "site", ev.GetSite(),
				"mirror", ev.GetMirror(), "kind", KindName(ev.GetKind()), "score", ev.GetScore(),
				"copy_bytes", ev.GetCopyBytes(), "deadline", deadlineText(ev.GetDeadlineUnixNano()), "reason", ev.GetReason())
		}
		for _, pl := range next.GetPlaced() {
			placed[pl.GetCopyState()]++
		}
		// Written at every evaluation (one small record per resource and
		// bucket), so `controller placements` shows when it last looked.
		key := c.store.key(keyPlaced, url.PathEscape(name))
		op := clientv3.OpDelete(key) // a deleted resource whose copies are all retired: forget it
		if byName[name] != nil || len(next.GetPlaced()) > 0 {
			b, err := proto.Marshal(next)
			if err != nil {
				return err
			}
			op = clientv3.OpPut(key, string(b))
		}
		resp, err := c.cli.Txn(ctx).If(fn.cmp()).Then(op).Commit()
		if err != nil {
			return fmt.Errorf("write placements of %s: %w", name, err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
	}
	for st, label := range map[pb.CopyState]string{pb.CopyState_COPY_STATE_UNREPORTED: "unreported",
		pb.CopyState_COPY_STATE_COPYING: "copying", pb.CopyState_COPY_STATE_IN_SYNC: "in_sync"} {
		c.m.placedCopies.WithLabelValues(label).Set(float64(placed[st]))
	}
	return nil
}

// KindName is how operators read a placed copy's kind: full, delta,
// selective.
func KindName(k pb.MirrorKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "MIRROR_KIND_"))
}

// CopyStateText is how operators read what a placed copy's host last
// reported of it.
func CopyStateText(p *pb.Placement) string {
	switch p.GetCopyState() {
	case pb.CopyState_COPY_STATE_IN_SYNC:
		return fmt.Sprintf("in sync (lag %v): routable", time.Duration(p.GetLagNs()).Round(time.Millisecond))
	case pb.CopyState_COPY_STATE_COPYING:
		return "copying: not routable yet"
	}
	return "not reported by its host yet"
}

// placementInput scores a resource's candidates and placed copies.
func (c *Controller) placementInput(ctx context.Context, res *pb.Resource, rec *pb.PlacementRecord, base *scoreBase, now time.Time) (placeInput, error) {
	snap := base.snap
	in := placeInput{now: now, gone: map[string]string{}, keep: map[string]float64{}, copyStates: map[string]copyReport{}}
	if res == nil {
		in.predictive = false
		return in, nil
	}
	in.predictive = res.GetMirrorPolicy().GetMode() == pb.MirrorMode_MIRROR_MODE_PREDICTIVE
	in.mirrorScore, in.retireScore = thresholds(res)
	in.maxCopies = int(res.GetMirrorPolicy().GetMaxMirrors())
	in.hotExtents = hotExtents(res)
	in.copies = 1 + len(res.GetMirrorPolicy().GetMirrors())
	mirrors := map[string]*pb.Mirror{}
	for _, m := range snap.mirrors {
		mirrors[m.GetName()] = m
	}
	allowed := res.GetMirrorPolicy().GetSites()
	for _, pl := range rec.GetPlaced() {
		m := mirrors[pl.GetMirror()]
		switch {
		case m == nil:
			in.gone[pl.GetMirror()] = "its mirror host was deleted"
		case m.GetState() == pb.MirrorState_MIRROR_STATE_DOWN:
			in.gone[pl.GetMirror()] = "its mirror host is administratively down"
		case len(allowed) > 0 && !slices.Contains(allowed, m.GetSite()):
			in.gone[pl.GetMirror()] = "its site is no longer in mirror_policy.sites"
		}
	}
	if !in.predictive {
		return in, nil
	}
	if o := mirrors[res.GetOrigin()]; o == nil || o.GetNode() == "" {
		// Nobody could carry out a replication task: place nothing.
		return in, nil
	}
	fc, err := c.readForecast(ctx, res.GetName())
	if errors.Is(err, ErrNoForecast) {
		return in, nil // no demand seen yet: no evidence either way
	}
	if err != nil {
		return in, err
	}
	demand := demandOf(fc)
	setup, err := c.scoreSetupFrom(base, res, demand)
	if err != nil {
		return in, err
	}
	in.copyStates = copyStates(res, rec, setup.w)
	step := time.Duration(fc.GetStepSeconds()) * time.Second
	seed := seedOf(res.GetName())
	if len(setup.req.Candidates) > 0 && len(setup.req.Current) > 0 {
		scores, err := forecast.Score(demand, setup.req, step, seed)
		if err != nil {
			return in, err
		}
		byLoc := map[string]forecast.Candidate{}
		for _, cd := range setup.req.Candidates {
			byLoc[cd.Location] = cd
		}
		for _, s := range scores {
			m := mirrors[setup.mirror[s.Location]]
			if m == nil || m.GetNode() == "" {
				continue // a host without a node cannot receive a replication task
			}
			cd := byLoc[s.Location]
			n := uint64(setup.req.Bytes)
			if cd.CopyBytes > 0 {
				n = uint64(cd.CopyBytes)
			}
			in.cands = append(in.cands, placeCandidate{site: s.Location, mirror: m.GetName(), score: s.Score,
				copyBytes: n, deadline: candidateDeadline(fc, demand, setup.req, cd, now)})
		}
		slices.SortFunc(in.cands, func(a, b placeCandidate) int { return cmp.Compare(a.site, b.site) })
	}
	keep, err := keepScores(res, rec, setup, demand, step, seed)
	if err != nil {
		return in, err
	}
	in.keep = keep
	return in, nil
}

// keepScores scores each placed copy as if it were a candidate again,
// against the best other copy per region and with the copy already paid.
// Only copies the routes may use count as the others (a copy still
// copying, out of sync or not serving would leave its regions on the
// origin), and a copy that is the only one a region with predicted demand
// has a healthy path to scores 1: retiring it would leave that region no
// copy at all, whatever the score says of its latency.
func keepScores(res *pb.Resource, rec *pb.PlacementRecord, s *scoreSetup, demand []forecast.RegionDemand, step time.Duration, seed uint64) (map[string]float64, error) {
	out := map[string]float64{}
	H := forecast.ScoreHorizon(demand, s.req.Horizon)
	for _, pl := range rec.GetPlaced() {
		id, ok := s.ids[pl.GetMirror()]
		if !ok {
			continue
		}
		req := forecast.ScoreRequest{Bytes: s.req.Bytes, Horizon: s.req.Horizon, Prices: s.req.Prices, Current: map[string]float64{}}
		req.Prices.CopyPerByte = 0 // sunk
		cand := forecast.Candidate{Location: pl.GetSite(), Latency: map[string]float64{}}
		only := false
		for _, d := range demand {
			if cc, ok := s.costs[d.Region][id]; ok && cc.healthy {
				cand.Latency[d.Region] = cc.ms / 1000
			}
			best := math.Inf(1)
			for _, other := range s.copies {
				oid, ok := s.ids[other]
				if !ok || other == pl.GetMirror() || !s.w.routable[repKey{other, res.GetName()}] {
					continue
				}
				if cc, ok := s.costs[d.Region][oid]; ok && cc.healthy {
					best = math.Min(best, cc.ms/1000)
				}
			}
			_, reaches := cand.Latency[d.Region]
			switch {
			case !math.IsInf(best, 1):
				req.Current[d.Region] = best
			case reaches && mayHaveDemand(d, H):
				only = true
			}
		}
		if only {
			out[pl.GetMirror()] = 1
			continue
		}
		if len(cand.Latency) == 0 || len(req.Current) == 0 {
			continue
		}
		req.Candidates = []forecast.Candidate{cand}
		sc, err := forecast.Score(demand, req, step, seed)
		if err != nil {
			return nil, fmt.Errorf("keep score of %s at %s: %w", res.GetName(), pl.GetMirror(), err)
		}
		out[pl.GetMirror()] = sc[0].Score
	}
	return out, nil
}

// mayHaveDemand reports whether d's 90% quantile is above zero in any of
// its first h buckets.
func mayHaveDemand(d forecast.RegionDemand, h int) bool {
	for _, q := range d.Q[:min(h, len(d.Q))] {
		if q.Q90 > 0 {
			return true
		}
	}
	return false
}

// copyStates is what the hosts of a resource's placed copies last
// reported of them, judged as the routing policy judges them.
func copyStates(res *pb.Resource, rec *pb.PlacementRecord, w *world) map[string]copyReport {
	out := map[string]copyReport{}
	maxLag := time.Duration(res.GetThresholds().GetMaxLagSeconds()) * time.Second
	for _, pl := range rec.GetPlaced() {
		rs := w.replicas[repKey{pl.GetMirror(), res.GetName()}]
		if rs == nil {
			continue
		}
		st := pb.CopyState_COPY_STATE_COPYING
		if replicaInSync(rs, maxLag) {
			st = pb.CopyState_COPY_STATE_IN_SYNC
		}
		out[pl.GetMirror()] = copyReport{state: st, lag: time.Duration(rs.GetLagNs())}
	}
	return out
}
