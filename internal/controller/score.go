package controller

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/url"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/route"
)

// Scores are computed by whichever replica serves the request, from the
// forecast the leader published at its last bucket close and the route
// costs this replica's view holds now: the forecast changes once per
// bucket, route costs every second.

// readForecast returns the forecast the leader published for resource.
func (c *Controller) readForecast(ctx context.Context, resource string) (*pb.ResourceForecast, error) {
	resp, err := c.cli.Get(ctx, c.store.fkey(outKey(resource)))
	if err != nil {
		return nil, fmt.Errorf("read forecast: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("resource %q: %w yet (the leader publishes one when the first bucket with its accesses closes)", resource, ErrNoForecast)
	}
	rec := &pb.ResourceForecast{}
	if err := unpack(resp.Kvs[0].Value, rec); err != nil {
		return nil, fmt.Errorf("resource %q: corrupt forecast record: %w", resource, err)
	}
	if err := checkForecastRecord(rec); err != nil {
		return nil, fmt.Errorf("resource %q: corrupt forecast record: %w", resource, err)
	}
	return rec, nil
}

// checkForecastRecord rejects a record whose arrays disagree (so no
// reader indexes past them) or whose numbers are not finite.
func checkForecastRecord(rec *pb.ResourceForecast) error {
	if rec.GetStepSeconds() <= 0 {
		return fmt.Errorf("step %d", rec.GetStepSeconds())
	}
	h := -1
	for _, r := range rec.GetRegions() {
		if r.GetRegion() == "" {
			return errors.New("region without name")
		}
		n := len(r.GetQ50())
		if len(r.GetQ10()) != n || len(r.GetQ90()) != n || (h >= 0 && n != h) {
			return fmt.Errorf("region %s: quantile lengths differ", r.GetRegion())
		}
		h = n
		for _, q := range [][]float64{r.GetQ10(), r.GetQ50(), r.GetQ90()} {
			for _, v := range q {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("region %s: quantile %v", r.GetRegion(), v)
				}
			}
		}
	}
	for i, s := range rec.GetShares() {
		if len(s.GetShares()) != len(rec.GetRegions()) {
			return fmt.Errorf("shares[%d]: %d values for %d regions", i, len(s.GetShares()), len(rec.GetRegions()))
		}
	}
	return nil
}

// listForecasts returns the resources with a published forecast.
func (c *Controller) listForecasts(ctx context.Context) ([]string, error) {
	pfx := c.store.fkey(fkeyOut)
	resp, err := c.cli.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list forecasts: %w", err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if name, err := url.PathUnescape(strings.TrimPrefix(string(kv.Key), pfx)); err == nil {
			out = append(out, name)
		}
	}
	return out, nil
}

// candCost is the routing policy's cost of one (region, mirror) path.
type candCost struct {
	ms      float64
	healthy bool
}

// scoreSetup is everything a score needs besides the forecast.
type scoreSetup struct {
	req     forecast.ScoreRequest
	routes  []*pb.RegionRoute
	mirror  map[string]string // candidate site → mirror host used
	notes   []string          // sites left out, and why
	step    time.Duration
	viewRev int64
	// For the mirroring manager: every (region, mirror) path cost, mirror
	// IDs by name, and the mirrors holding a copy (origin, listed, placed).
	costs  map[string]map[uint32]candCost
	ids    map[string]uint32
	copies []string
	w      *world
	// copyNotes says, per candidate site whose host held a copy before,
	// what its delta copy is costed at and why.
	copyNotes map[string]string
}

// scoreSetup builds the Mirroring Score request of a resource: its size,
// the cost of its current route per region, and per candidate site the
// cost a copy on that site's best mirror host would have, all from the
// routing policy's own cost function on the current probe estimates.
func (c *Controller) scoreSetup(res *pb.Resource, demand []forecast.RegionDemand, now time.Time) (*scoreSetup, error) {
	return c.scoreSetupFrom(c.newScoreBase(now), res, demand)
}

// scoreBase is the view and routing input every score of one moment
// shares: the mirroring manager scores all its resources from one.
type scoreBase struct {
	snap *snapshot
	in   *route.Input
	w    *world
}

func (c *Controller) newScoreBase(now time.Time) *scoreBase {
	snap := c.view.snapshot()
	in, w := buildInput(snap, now, c.inputConfig(), map[uint32]*heldRegion{})
	return &scoreBase{snap: snap, in: in, w: w}
}

// scoreSetupFrom is scoreSetup on a shared base (its input's resources
// are replaced by the one being scored).
func (c *Controller) scoreSetupFrom(b *scoreBase, res *pb.Resource, demand []forecast.RegionDemand) (*scoreSetup, error) {
	snap, in, w := b.snap, b.in, b.w
	// Cost every (region, mirror) path with the resource's profile: one
	// evaluation of a resource that every mirror holds, from no state.
	rr := route.Resource{ID: max(res.GetId(), 1)}
	if p := res.GetProfile(); p != nil {
		rr.Profile = route.Profile{RoundTrips: p.GetRoundTrips(), Bytes: p.GetBytesPerRequest()}
	}
	for _, m := range w.mirrors {
		rr.Replicas = append(rr.Replicas, route.Replica{Mirror: m.GetId(), InSync: true})
	}
	in.Resources = []route.Resource{rr}
	result, _, err := c.engine.Step(nil, in)
	if err != nil {
		return nil, fmt.Errorf("route costs: %w", err)
	}
	costs := map[string]map[uint32]candCost{} // region name → mirror → cost
	for j, reg := range w.regions {
		m := map[uint32]candCost{}
		if why := result.At(0, j).Why; why != nil {
			for _, cc := range why.Candidates() {
				m[cc.Mirror] = candCost{ms: cc.Cost, healthy: cc.Healthy}
			}
		}
		costs[reg.GetName()] = m
	}
	mirrorName := map[uint32]string{}
	for _, m := range w.mirrors {
		mirrorName[m.GetId()] = m.GetName()
	}

	s := &scoreSetup{step: c.cfg.Forecast.Engine.Step, mirror: map[string]string{}, viewRev: snap.rev, costs: costs,
		ids: w.mirrorID, w: w, copyNotes: map[string]string{},
		req: forecast.ScoreRequest{Bytes: int64(min(copyBytes(res), math.MaxInt64)), Current: map[string]float64{},
			Prices: c.cfg.Forecast.Prices}}
	// Current cost per region: the current table's weights × each
	// mirror's cost (the wildcard route where the region has none).
	tables := currentTables(snap.desired, res.GetName())
	for _, d := range demand {
		id, ok := w.regionID[d.Region]
		if !ok {
			continue
		}
		ws, ok := tables[id]
		if !ok {
			ws = tables[0]
		}
		var sum, n float64
		rt := &pb.RegionRoute{Region: d.Region}
		for _, mw := range ws {
			rt.Mirrors = append(rt.Mirrors, mirrorName[mw.GetMirrorId()])
			if cc, ok := costs[d.Region][mw.GetMirrorId()]; ok {
				sum += float64(mw.GetWeight()) * cc.ms
				n += float64(mw.GetWeight())
			}
		}
		if n > 0 {
			rt.CostSeconds = sum / n / 1000
			s.req.Current[d.Region] = rt.CostSeconds
			s.routes = append(s.routes, rt)
		}
	}

	// Candidates: sites with an active mirror host that do not hold a copy
	// yet, within the resource's mirror_policy.sites when it names any.
	copyAt := map[string]string{}
	mirrorByName := map[string]*pb.Mirror{}
	for _, m := range w.mirrors {
		mirrorByName[m.GetName()] = m
	}
	holders := append([]string{res.GetOrigin()}, res.GetMirrorPolicy().GetMirrors()...)
	for _, pl := range snap.placed[res.GetName()].GetPlaced() {
		holders = append(holders, pl.GetMirror())
	}
	for _, name := range holders {
		if m := mirrorByName[name]; m != nil {
			copyAt[m.GetSite()] = name
			s.copies = append(s.copies, name)
		}
	}
	allowed := res.GetMirrorPolicy().GetSites()
	for _, site := range w.regions {
		name := site.GetName()
		if len(allowed) > 0 && !slices.Contains(allowed, name) {
			continue
		}
		if m, ok := copyAt[name]; ok {
			s.notes = append(s.notes, fmt.Sprintf("%s (holds a copy on %s)", name, m))
			continue
		}
		var best *forecast.Candidate
		bestMean, bestMirror, bestN := math.Inf(1), "", 0
		for _, m := range w.mirrors {
			if m.GetSite() != name || w.dpState[m.GetId()] != pb.MirrorState_MIRROR_STATE_ACTIVE {
				continue
			}
			cand := &forecast.Candidate{Location: name, Latency: map[string]float64{}}
			var sum float64
			for _, d := range demand {
				if cc, ok := costs[d.Region][m.GetId()]; ok && cc.healthy {
					cand.Latency[d.Region] = cc.ms / 1000
					sum += cc.ms
				}
			}
			if len(cand.Latency) == 0 {
				continue
			}
			// The host reaching most regions, then with the lowest mean cost
			// over them; ties by ID (w.mirrors is sorted by ID).
			n := len(cand.Latency)
			if mean := sum / float64(n); n > bestN || (n == bestN && mean < bestMean) {
				best, bestMean, bestMirror, bestN = cand, mean, m.GetName(), n
			}
		}
		if best == nil {
			s.notes = append(s.notes, fmt.Sprintf("%s (no active mirror host with a probed path from a region with demand)", name))
			continue
		}
		if held := snap.placed[res.GetName()].GetHeld(); hotExtents(res) == 0 && slices.Contains(held, bestMirror) {
			// A delta: the copy left there catches up (placement.go).
			var note string
			best.CopyBytes, note = deltaCopy(w, res, mirrorByName[res.GetOrigin()], mirrorByName[bestMirror])
			s.copyNotes[name] = note
		}
		s.req.Candidates = append(s.req.Candidates, *best)
		s.mirror[name] = bestMirror
	}
	return s, nil
}

// deltaCopy is what a stale copy on target must catch up on: the origin
// host's change-tracking backlog toward the target's node, as it last
// reported it (every block written since the copy was last in sync, or
// all of them if it never was), at most the resource's size. It returns
// 0 (forecast.Score then costs the whole resource) when no such report
// is fresh, and in both cases what explain says about it.
func deltaCopy(w *world, res *pb.Resource, origin, target *pb.Mirror) (int64, string) {
	size := copyBytes(res)
	if origin.GetNode() == "" || target.GetNode() == "" {
		return 0, "delta, costed as a full copy: the origin or the target has no node to track changes between"
	}
	b, ok := w.backlogs[backlogKey{origin.GetNode(), res.GetName(), target.GetNode()}]
	if !ok {
		return 0, fmt.Sprintf("delta, costed as a full copy: %s's host %s has not reported its change tracking toward %s",
			origin.GetName(), origin.GetNode(), target.GetNode())
	}
	d := min(b, size)
	// At least one byte: 0 would mean the whole resource to the score, and
	// a delta cycle with nothing to send still costs a round trip.
	return int64(min(max(d, 1), math.MaxInt64)), fmt.Sprintf("delta: ~%s to catch up, of %s (blocks %s's host %s has not sent to %s)",
		mib(d), mib(size), origin.GetName(), origin.GetNode(), target.GetNode())
}

// currentTables returns the weights of a resource's routes in the desired
// state, by region ID (0: the wildcard route).
func currentTables(rec *pb.DesiredRecord, resource string) map[uint32][]*pb.MirrorWeight {
	out := map[uint32][]*pb.MirrorWeight{}
	st := rec.GetState()
	for _, rs := range st.GetResources() {
		if rs.GetName() != resource {
			continue
		}
		for i, reg := range rs.GetRouteRegions() {
			if i < len(rs.GetRouteWeightSets()) && int(rs.GetRouteWeightSets()[i]) < len(st.GetWeightSets()) {
				out[reg] = st.GetWeightSets()[rs.GetRouteWeightSets()[i]].GetWeights()
			}
		}
	}
	return out
}

// demandOf turns a published record into the score's demand input.
func demandOf(rec *pb.ResourceForecast) []forecast.RegionDemand {
	out := make([]forecast.RegionDemand, 0, len(rec.GetRegions()))
	for _, r := range rec.GetRegions() {
		d := forecast.RegionDemand{Region: r.GetRegion(), Q: make([]forecast.Quantiles, len(r.GetQ50()))}
		for h := range d.Q {
			d.Q[h] = forecast.Quantiles{Q10: r.GetQ10()[h], Q50: r.GetQ50()[h], Q90: r.GetQ90()[h]}
		}
		out = append(out, d)
	}
	return out
}

func seedOf(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// scored is a resource's forecast with its scores.
type scored struct {
	rec    *pb.ResourceForecast
	res    *pb.Resource
	setup  *scoreSetup
	scores []forecast.MirrorScore
	note   string
}

// score computes the Mirroring Score of every candidate site of a
// resource: what `controller forecast show` and `explain` print, and what
// a placement manager would act on.
func (c *Controller) score(ctx context.Context, resource string) (*scored, error) {
	if c.fc == nil {
		return nil, ErrForecastDisabled
	}
	rec, err := c.readForecast(ctx, resource)
	if err != nil {
		return nil, err
	}
	out := &scored{rec: rec, res: c.view.resource(resource)}
	if out.res == nil {
		out.note = "the resource object no longer exists: no size, route or candidates to score"
		return out, nil
	}
	demand := demandOf(rec)
	out.setup, err = c.scoreSetup(out.res, demand, time.Now())
	if err != nil {
		return nil, err
	}
	switch {
	case len(out.setup.req.Candidates) == 0:
		out.note = "no candidate site"
		if len(out.setup.notes) > 0 {
			out.note += ": " + strings.Join(out.setup.notes, "; ")
		}
	case len(out.setup.req.Current) == 0:
		out.note = "no current route cost for any region with demand yet (no probe estimates): nothing to save against"
	}
	if len(out.setup.req.Candidates) == 0 {
		return out, nil
	}
	out.scores, err = forecast.Score(demand, out.setup.req, time.Duration(rec.GetStepSeconds())*time.Second, seedOf(resource))
	if err != nil {
		return nil, fmt.Errorf("score %q: %w", resource, err)
	}
	return out, nil
}

// response is the admin API's form of a scored resource.
func (s *scored) response() *pb.ForecastResponse {
	resp := &pb.ForecastResponse{Forecast: s.rec, ScoreNote: s.note}
	if len(s.rec.GetRegions()) > 0 {
		resp.Horizon = uint32(len(s.rec.GetRegions()[0].GetQ50()))
	}
	if s.res != nil {
		resp.SizeBytes = s.res.GetSizeBytes()
	}
	if st := s.setup; st != nil {
		resp.Routes = st.routes
		p := st.req.Prices
		resp.Prices = &pb.Prices{CopyPerByte: p.CopyPerByte, StorePerByteHour: p.StorePerByteHour, ValuePerRequestSecond: p.ValuePerRequestSecond}
	}
	for _, ms := range s.scores {
		m := &pb.MirrorScore{Site: ms.Location, Score: ms.Score, Cost: ms.Cost, CopyCost: ms.CopyCost, StoreCost: ms.StoreCost,
			BenefitMean: ms.BenefitMean, BenefitQ10: ms.BenefitQ10, BenefitQ50: ms.BenefitQ50, BenefitQ90: ms.BenefitQ90}
		if s.setup != nil {
			m.Mirror = s.setup.mirror[ms.Location]
		}
		for _, r := range ms.Regions {
			m.Regions = append(m.Regions, &pb.RegionBenefit{Region: r.Region, RequestsQ10: r.RequestsQ10, RequestsQ50: r.RequestsQ50,
				RequestsQ90: r.RequestsQ90, SavedSeconds: r.SavedSeconds, BenefitMean: r.BenefitMean})
		}
		resp.Scores = append(resp.Scores, m)
	}
	return resp
}

// explain renders the breakdown: forecast's RenderExplain, then what the
// controller chose as inputs (current routes, candidate hosts, sites left
// out) and where the numbers come from.
func (c *Controller) explain(s *scored) string {
	rec := s.rec
	in := forecast.ExplainInput{Resource: rec.GetResource(), Origin: time.Unix(rec.GetOriginUnix(), 0).UTC(),
		Step: time.Duration(rec.GetStepSeconds()) * time.Second, Demand: demandOf(rec), Scores: s.scores,
		ShareConcentration: rec.GetConcentration()}
	if s.setup != nil {
		in.Request = s.setup.req
	} else {
		in.Request.Prices = c.cfg.Forecast.Prices
	}
	if len(rec.GetShares()) > 0 {
		in.Shares = rec.GetShares()[0].GetShares()
	}
	if s.res != nil && s.res.GetMirrorPolicy().GetMode() == pb.MirrorMode_MIRROR_MODE_PREDICTIVE {
		in.MirrorScore, _ = thresholds(s.res) // the verdicts say what the manager does
	}
	var b strings.Builder
	b.WriteString(forecast.RenderExplain(in))
	if st := s.setup; st != nil {
		b.WriteString("\ncurrent routes (cost per request with the routing policy's cost function):\n")
		if len(st.routes) == 0 {
			b.WriteString("  none known yet (no probe estimates from the regions with demand)\n")
		}
		for _, r := range st.routes {
			fmt.Fprintf(&b, "  %-16s %8.1f ms via %s\n", r.GetRegion(), r.GetCostSeconds()*1000, strings.Join(r.GetMirrors(), ", "))
		}
		sites := make([]string, 0, len(st.mirror))
		for site, m := range st.mirror {
			sites = append(sites, site+" (mirror "+m+")")
		}
		slices.Sort(sites)
		if len(sites) > 0 {
			fmt.Fprintf(&b, "candidate sites: %s\n", strings.Join(sites, ", "))
		}
		if len(st.notes) > 0 {
			fmt.Fprintf(&b, "not candidates: %s\n", strings.Join(st.notes, "; "))
		}
		writeCopyPlans(&b, st, s)

	}
	if s.note != "" {
		fmt.Fprintf(&b, "note: %s\n", s.note)
	}
	if s.res != nil {
		writeManagerState(&b, s.res, c.view.placements()[s.res.GetName()])
		if st := s.setup; st != nil && s.res.GetMirrorPolicy().GetMode() == pb.MirrorMode_MIRROR_MODE_PREDICTIVE {
			writeNoNode(&b, s.res, st)
		}
	}
	fmt.Fprintf(&b, "forecast published by %s at %s; route costs from replica %s at %s\n", rec.GetLeader(),
		time.Unix(0, rec.GetWrittenUnixNano()).UTC().Format(time.RFC3339), c.cfg.Name, time.Now().UTC().Format(time.RFC3339))
	return b.String()
}

// writeCopyPlans says, per candidate site, what a copy there would send
// and by when it should be in sync (the deadline a placement would carry).
func writeCopyPlans(b *strings.Builder, st *scoreSetup, s *scored) {
	if len(st.req.Candidates) == 0 {
		return
	}
	demand := demandOf(s.rec)
	b.WriteString("copies a placement would make (bytes to send; in sync by the first bucket whose median benefit reaches the horizon's mean):\n")
	for _, c := range st.req.Candidates {
		n := uint64(c.CopyBytes)
		if c.CopyBytes <= 0 {
			n = uint64(st.req.Bytes)
		}
		dl := candidateDeadline(s.rec, demand, st.req, c, time.Now())
		fmt.Fprintf(b, "  %-16s %s, in sync by %s", c.Location, mib(n), deadlineText(timeNano(dl)))
		if note := st.copyNotes[c.Location]; note != "" {
			fmt.Fprintf(b, "; %s", note)
		}
		b.WriteString("\n")
	}
}

// timeNano is t in unix nanoseconds, 0 for the zero time.
func timeNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// writeManagerState says what the mirroring manager does with the scores
// above: nothing (static mode), or its thresholds, copies and counters.
func writeManagerState(b *strings.Builder, res *pb.Resource, rec *pb.PlacementRecord) {
	if res.GetMirrorPolicy().GetMode() != pb.MirrorMode_MIRROR_MODE_PREDICTIVE {
		b.WriteString("mirroring manager: off for this resource (mirror_policy.mode is not predictive)\n")
		return
	}
	place, retire := thresholds(res)
	fmt.Fprintf(b, "mirroring manager: places a copy after %d evaluations at or above %.3g, retires one after %d below %.3g",
		placeConfirm, place, retireConfirm, retire)
	if n := res.GetMirrorPolicy().GetMaxMirrors(); n > 0 {
		fmt.Fprintf(b, ", at most %d copies with the origin", n)
	}
	if n := hotExtents(res); n > 0 {
		fmt.Fprintf(b, "; copies are selective: the %d most-read 4 MiB extents (working set %d bytes), the rest read through", n, res.GetWorkingSetBytes())
	}
	b.WriteString("\n")
	for _, pl := range rec.GetPlaced() {
		fmt.Fprintf(b, "  placed: %s on %s (%s, since %s, ~%s to send, in sync by %s), copy %s, keep score %.3f, %d evaluation(s) below retire_score\n",
			pl.GetSite(), pl.GetMirror(), KindName(pl.GetKind()), time.Unix(0, pl.GetPlacedUnixNano()).UTC().Format(time.RFC3339), mib(pl.GetCopyBytes()),
			deadlineText(pl.GetDeadlineUnixNano()), CopyStateText(pl), pl.GetScore(), rec.GetBelow()[pl.GetMirror()])
	}
	sites := make([]string, 0, len(rec.GetAbove()))
	for site, n := range rec.GetAbove() {
		sites = append(sites, fmt.Sprintf("%s (%d of %d)", site, n, placeConfirm))
	}
	slices.Sort(sites)
	if len(sites) > 0 {
		fmt.Fprintf(b, "  at or above mirror_score so far: %s\n", strings.Join(sites, ", "))
	}
}

// writeNoNode says which scores the manager cannot act on because a host
// names no node (placementInput skips them): the origin's, so nothing is
// placed, or a candidate's, so that site gets no copy whatever its score.
func writeNoNode(b *strings.Builder, res *pb.Resource, st *scoreSetup) {
	node := map[string]string{}
	for _, m := range st.w.mirrors {
		node[m.GetName()] = m.GetNode()
	}
	if node[res.GetOrigin()] == "" {
		fmt.Fprintf(b, "  places nothing: the origin %s names no node to send copies from\n", res.GetOrigin())
		return
	}
	var sites []string
	for _, c := range st.req.Candidates {
		if m := st.mirror[c.Location]; node[m] == "" {
			sites = append(sites, c.Location+" (mirror "+m+")")
		}
	}
	if len(sites) > 0 {
		fmt.Fprintf(b, "  places no copy at %s: the host names no node to receive it\n", strings.Join(sites, ", "))
	}
}

// copyBytes is what a new copy of res copies and stores: its working set
// when it declares one (a selective copy), else its whole size.
func copyBytes(res *pb.Resource) uint64 {
	if ws := res.GetWorkingSetBytes(); ws > 0 && ws < res.GetSizeBytes() {
		return ws
	}
	return res.GetSizeBytes()
}

// hotExtentBytes is the replicator's unit of read heat for selective
// copies (replicator.PushOptions.HotExtents: 4 MiB extents).
const hotExtentBytes = 4 << 20

// hotExtents is how many extents a selective copy of res holds; 0: full.
func hotExtents(res *pb.Resource) uint32 {
	ws := res.GetWorkingSetBytes()
	if ws == 0 || ws >= res.GetSizeBytes() {
		return 0
	}
	return uint32(min((ws+hotExtentBytes-1)/hotExtentBytes, math.MaxUint32))
}
