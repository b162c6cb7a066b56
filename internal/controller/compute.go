package controller

import (
	"cmp"
	"crypto/sha256"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/route"
)

// inputConfig are the knobs of turning reports into a route input.
type inputConfig struct {
	// ReportMaxAge: a report older than this is ignored (its agent is
	// silent or gone).
	ReportMaxAge time.Duration
	// ProbeMaxAge: a probe estimate whose latest probe is older is ignored
	// (a stopped prober must not keep a path looking healthy).
	ProbeMaxAge time.Duration
	// PathHold: a region whose edges all fell silent keeps its last paths
	// this long, so a controller-side hiccup (agents reconnecting after a
	// replica died) does not empty its routes. Failures still show: a
	// held path keeps its last verdict.
	PathHold time.Duration
	// TableSlots is the route table size shipped to agents.
	TableSlots int
}

// heldPath is an aggregated path and when fresh reports last gave it.
type heldRegion struct {
	paths []route.Path
	seen  time.Time
}

// world is one snapshot resolved to IDs, in the order the route input
// uses: regions, mirrors and resources sorted by ID.
type world struct {
	regions   []*pb.Site
	mirrors   []*pb.Mirror
	resources []*pb.Resource
	regionID  map[string]uint32
	mirrorID  map[string]uint32
	// dpState is each mirror's data-plane state: the admin state, or down
	// when its host says so or every fresh probe of it failed.
	dpState map[uint32]pb.MirrorState
	// downWhy says why an active mirror is down in the data plane: its
	// host's report ("host: " and the host's reason) or "probes".
	downWhy map[uint32]string
	// placed is the mirroring manager's record per resource.
	placed map[string]*pb.PlacementRecord
	// replicas is what each mirror's host last reported (fresh reports
	// only) of the copies it holds, by (mirror, resource).
	replicas map[repKey]*pb.ReplicaSync
	// unserved: the mirror's host reports the resource's service does
	// not answer there (fresh reports only); that copy is not routed to.
	unserved map[repKey]bool
	// refused: the (region, mirror) paths that are no candidates because
	// the mirror's host refuses these edges of the region (refusedPaths).
	refused map[pathKey][]string
	// routable: the copy is one the routing policy may send traffic to
	// (in sync within the lag bound, its service answering), by (mirror,
	// resource); the mirroring manager's keep scores count only these.
	routable map[repKey]bool
	// backlogs is what each node's primary volumes last reported still
	// to send to each peer (fresh reports only), in bytes.
	backlogs map[backlogKey]uint64
	// held lists, per mirror ID, the resources it holds a copy of (origin,
	// listed mirror, placed copy) in ID order: its host checks their
	// services.
	held map[uint32][]uint32
}

type repKey struct{ mirror, resource string }

// backlogKey names one change-tracking backlog: the node holding the
// primary, the resource, and the peer node it tracks changes for.
type backlogKey struct{ node, resource, peer string }

// replicaInSync judges a host's report of a copy as the routing policy
// does: in sync when the host says so and its lag is within maxLag (0: no
// bound). A missing report is not in sync.
func replicaInSync(rs *pb.ReplicaSync, maxLag time.Duration) bool {
	return rs != nil && rs.GetInSync() && (maxLag == 0 || time.Duration(rs.GetLagNs()) <= maxLag)
}

func pbHealth(h pb.Health) probe.Health {
	switch h {
	case pb.Health_HEALTH_UP:
		return probe.HealthUp
	case pb.Health_HEALTH_DOWN:
		return probe.HealthDown
	}
	return probe.HealthUnknown
}

type pathKey struct{ region, mirror uint32 }

// buildInput turns a snapshot into the routing policy's input. held is
// updated in place: regions with fresh paths replace their held paths.
func buildInput(s *snapshot, now time.Time, cfg inputConfig, held map[uint32]*heldRegion) (*route.Input, *world) {
	w := &world{
		regions: slices.Clone(s.sites), mirrors: slices.Clone(s.mirrors), resources: slices.Clone(s.resources),
		regionID: make(map[string]uint32, len(s.sites)), mirrorID: make(map[string]uint32, len(s.mirrors)),
		dpState: make(map[uint32]pb.MirrorState, len(s.mirrors)), downWhy: map[uint32]string{}, placed: s.placed,
		replicas: map[repKey]*pb.ReplicaSync{}, backlogs: map[backlogKey]uint64{}, unserved: map[repKey]bool{}, routable: map[repKey]bool{}, held: map[uint32][]uint32{},
	}
	slices.SortFunc(w.regions, func(a, b *pb.Site) int { return cmp.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(w.mirrors, func(a, b *pb.Mirror) int { return cmp.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(w.resources, func(a, b *pb.Resource) int { return cmp.Compare(a.GetId(), b.GetId()) })
	in := &route.Input{Now: now, Regions: make([]route.RegionID, len(w.regions))}
	sitesByName := make(map[string]*pb.Site, len(w.regions))
	for i, r := range w.regions {
		in.Regions[i] = r.GetId()
		w.regionID[r.GetName()] = r.GetId()
		sitesByName[r.GetName()] = r
	}
	mirrorsByNode := map[string][]*pb.Mirror{}
	for _, m := range w.mirrors {
		w.mirrorID[m.GetName()] = m.GetId()
		if m.GetNode() != "" {
			mirrorsByNode[m.GetNode()] = append(mirrorsByNode[m.GetNode()], m)
		}
	}

	// Fresh reports: probe paths from edges, self-reports of mirror hosts,
	// demand rates.
	agg := map[pathKey][]route.Path{}
	mirrorHealth := map[string]*pb.MirrorHealth{}
	nodeCPU := map[string]float64{}
	replicas := w.replicas
	demand := map[uint32][]float64{}
	regionIdx := make(map[uint32]int, len(w.regions))
	for i, r := range w.regions {
		regionIdx[r.GetId()] = i
	}
	edgeSites := map[uint32]bool{}    // regions with a live edge, probing or about to
	edgeRegion := map[string]uint32{} // live edge → its site's region
	inv := newInventory(slices.Values(w.regions))
	for _, rep := range s.live {
		if now.Sub(time.Unix(0, rep.GetReceivedUnixNano())) > cfg.ReportMaxAge {
			continue
		}
		// Registration checked the node's site; the sites may have listed
		// their nodes since.
		if inv.allows(rep.GetNode(), rep.GetSite()) != nil {
			continue
		}
		if id, ok := w.regionID[rep.GetSite()]; ok && rep.GetRole() != pb.NodeRole_NODE_ROLE_MIRROR {
			edgeSites[id] = true
			edgeRegion[rep.GetNode()] = id
		}
		if ns := rep.GetNodeStats(); ns != nil {
			nodeCPU[rep.GetNode()] = ns.GetCpuUtilization()
		}
		// A node speaks only for the mirrors that name it as their host.
		for _, mh := range rep.GetMirrors() {
			for _, m := range mirrorsByNode[rep.GetNode()] {
				if m.GetName() == mh.GetMirror() {
					mirrorHealth[m.GetName()] = mh
					for _, rs := range mh.GetReplicas() {
						replicas[repKey{m.GetName(), rs.GetResource()}] = rs
					}
					for _, r := range mh.GetUnservedResources() {
						w.unserved[repKey{m.GetName(), r}] = true
					}
					for _, b := range mh.GetBacklogs() {
						w.backlogs[backlogKey{rep.GetNode(), b.GetResource(), b.GetPeer()}] = b.GetPendingBytes()
					}
				}
			}
		}
		for _, d := range rep.GetDemand() {
			i, ok := regionIdx[d.GetRegionId()]
			if !ok || !finiteNonNeg(d.GetFlowsPerSecond()) {
				continue
			}
			row := demand[d.GetResourceId()]
			if row == nil {
				row = make([]float64, len(w.regions))
				demand[d.GetResourceId()] = row
			}
			row[i] += d.GetFlowsPerSecond()
		}
		if rep.GetRole() != pb.NodeRole_NODE_ROLE_EDGE && rep.GetRole() != pb.NodeRole_NODE_ROLE_BOTH {
			continue
		}
		region, ok := w.regionID[rep.GetSite()]
		if !ok {
			continue
		}
		for _, p := range rep.GetProbes() {
			mid, ok := w.mirrorID[p.GetMirror()]
			if !ok {
				continue
			}
			if lp := p.GetLastProbeUnixNano(); lp != 0 && now.Sub(time.Unix(0, lp)) > probeMaxAge(cfg.ProbeMaxAge, p) {
				continue
			}
			est := probe.Estimate{
				RTT: time.Duration(p.GetRttNs()), Median: time.Duration(p.GetMedianNs()), Min: time.Duration(p.GetMinNs()),
				Jitter: time.Duration(p.GetJitterNs()), Loss: p.GetLoss(), Health: pbHealth(p.GetHealth()),
				Samples: int(p.GetSamples()), Probes: int(p.GetProbes()),
			}
			path, ok := route.PathFromEstimate(region, mid, est)
			if !ok || path.RTT < 0 || path.Recent < 0 || path.Jitter < 0 || !(path.Loss >= 0 && path.Loss <= 1) {
				continue
			}
			k := pathKey{region, mid}
			agg[k] = append(agg[k], path)
		}
	}

	// Aggregate each (region, mirror) over its edges: median RTT, latest
	// sample (the incumbent's view, Config.PeakIncumbent) and jitter, mean
	// loss, up while at least half the edges see it up.
	fresh := map[uint32][]route.Path{}
	probedDown := map[uint32]int{}
	probed := map[uint32]int{}
	w.refused = refusedPaths(s.tunnel.refusals, edgeRegion, mirrorsByNode)
	for k, ps := range agg {
		p, _ := route.MergeEdgePaths(ps)
		probed[k.mirror]++
		if !p.Up {
			probedDown[k.mirror]++
		}
		// After the count: a refused path says nothing of the mirror.
		// It is no candidate at all, not a down one (a region in panic
		// spreads over its down paths); the region's held paths are
		// replaced all the same.
		if len(w.refused[k]) > 0 {
			if _, ok := fresh[k.region]; !ok {
				fresh[k.region] = nil
			}
			continue
		}
		fresh[k.region] = append(fresh[k.region], p)
	}
	for r, ps := range fresh {
		slices.SortFunc(ps, func(a, b route.Path) int { return cmp.Compare(a.Mirror, b.Mirror) })
		held[r] = &heldRegion{paths: ps, seen: now}
	}
	paths := map[uint32][]route.Path{}
	for _, r := range w.regions {
		id := r.GetId()
		if h := held[id]; h != nil && now.Sub(h.seen) <= cfg.PathHold {
			paths[id] = h.paths
		}
	}
	for id := range held {
		if _, ok := regionIdx[id]; !ok || now.Sub(held[id].seen) > cfg.PathHold {
			delete(held, id)
		}
	}
	// A region without edges borrows the paths of the nearest site that
	// has some (both need a location). A region whose edges have not
	// probed yet waits for them rather than settle on borrowed paths.
	for _, r := range w.regions {
		if _, ok := paths[r.GetId()]; ok || edgeSites[r.GetId()] || r.GetLocation() == nil {
			continue
		}
		best, bestD := uint32(0), math.Inf(1)
		for _, o := range w.regions {
			if _, ok := held[o.GetId()]; !ok || o.GetLocation() == nil || now.Sub(held[o.GetId()].seen) > cfg.PathHold {
				continue
			}
			if d := haversineKm(r.GetLocation(), o.GetLocation()); d < bestD {
				best, bestD = o.GetId(), d
			}
		}
		if best == 0 {
			continue
		}
		for _, p := range held[best].paths {
			p.Region = r.GetId()
			paths[r.GetId()] = append(paths[r.GetId()], p)
		}
	}
	// Held (and borrowed) paths may name a mirror deleted since they were
	// fresh: such a path is no candidate, and would make the input invalid.
	known := make(map[uint32]bool, len(w.mirrors))
	for _, m := range w.mirrors {
		known[m.GetId()] = true
	}
	for _, r := range w.regions {
		for _, p := range paths[r.GetId()] {
			if known[p.Mirror] {
				in.Paths = append(in.Paths, p)
			}
		}
	}

	for _, m := range w.mirrors {
		id := m.GetId()
		state := m.GetState()
		if state == pb.MirrorState_MIRROR_STATE_UNSPECIFIED {
			state = pb.MirrorState_MIRROR_STATE_ACTIVE
		}
		rm := route.Mirror{ID: id, Up: state == pb.MirrorState_MIRROR_STATE_ACTIVE, Capacity: m.GetCapacityRps(),
			ServiceTime: time.Duration(m.GetServiceTimeMs() * float64(time.Millisecond))}
		if rm.Capacity == 0 {
			if s := sitesByName[m.GetSite()]; s != nil {
				rm.Capacity = s.GetCapacityRps()
			}
		}
		mh := mirrorHealth[m.GetName()]
		if cpu, ok := nodeCPU[m.GetNode()]; ok {
			rm.Utilization = cpu
		}
		if mh != nil && mh.GetUtilization() > 0 {
			rm.Utilization = mh.GetUtilization()
		}
		if !finiteNonNeg(rm.Utilization) {
			rm.Utilization = 0
		}
		// Established flows of a dead mirror are lost anyway: mark it down
		// in the data plane so they are re-picked at once.
		hostDown := mh != nil && mh.GetHealth() == pb.Health_HEALTH_DOWN
		allProbesDown := probed[id] > 0 && probedDown[id] == probed[id]
		if hostDown {
			rm.Up = false
		}
		if state == pb.MirrorState_MIRROR_STATE_ACTIVE && (hostDown || allProbesDown) {
			state = pb.MirrorState_MIRROR_STATE_DOWN
			w.downWhy[id] = "probes"
			if hostDown {
				w.downWhy[id] = "host: " + cmp.Or(mh.GetReason(), "down")
			}
		}
		w.dpState[id] = state
		in.Mirrors = append(in.Mirrors, rm)
	}

	for _, r := range w.resources {
		rr := route.Resource{ID: r.GetId()}
		if p := r.GetProfile(); p != nil {
			rr.Profile = route.Profile{RoundTrips: p.GetRoundTrips(), Bytes: p.GetBytesPerRequest()}
		}
		maxLag := time.Duration(r.GetThresholds().GetMaxLagSeconds()) * time.Second
		// A copy is routable when in sync and its host's service check
		// passes; every copy's host checks the resource (w.held).
		add := func(mid uint32, name string, inSync bool) {
			inSync = inSync && !w.unserved[repKey{name, r.GetName()}]
			rr.Replicas = append(rr.Replicas, route.Replica{Mirror: mid, InSync: inSync})
			w.routable[repKey{name, r.GetName()}] = inSync
			if h := w.held[mid]; len(h) == 0 || h[len(h)-1] != r.GetId() {
				w.held[mid] = append(h, r.GetId())
			}
		}
		if oid, ok := w.mirrorID[r.GetOrigin()]; ok {
			add(oid, r.GetOrigin(), true)
		}
		for _, name := range r.GetMirrorPolicy().GetMirrors() {
			mid, ok := w.mirrorID[name]
			if !ok {
				continue
			}
			// A listed mirror is in sync until its host's replicator says
			// otherwise.
			inSync := true
			if rs := replicas[repKey{name, r.GetName()}]; rs != nil {
				inSync = replicaInSync(rs, maxLag)
			}
			add(mid, name, inSync)
		}
		// Copies the mirroring manager placed are routable only once their
		// host reports them in sync within the lag bound: until then the
		// replicator is still copying.
		for _, pl := range s.placed[r.GetName()].GetPlaced() {
			mid, ok := w.mirrorID[pl.GetMirror()]
			if !ok || slices.Contains(r.GetMirrorPolicy().GetMirrors(), pl.GetMirror()) || pl.GetMirror() == r.GetOrigin() {
				continue
			}
			add(mid, pl.GetMirror(), replicaInSync(replicas[repKey{pl.GetMirror(), r.GetName()}], maxLag))
		}
		rr.Demand = demand[r.GetId()]
		in.Resources = append(in.Resources, rr)
	}
	return in, w
}

// refusedPaths are the (region, mirror) paths whose mirror's host would
// drop the tunnel packets of one of the region's live edges (an outer
// source of the edge outside the host's decap_sources, tunnelFrom). The
// probes cannot tell (they are not tunnel packets), and a region's
// routes are shared by all its edges: such a path is no candidate for
// the whole region. The value names the refused edges, sorted.
func refusedPaths(refusals map[string][]string, edgeRegion map[string]uint32, mirrorsByNode map[string][]*pb.Mirror) map[pathKey][]string {
	out := map[pathKey][]string{}
	for host, edges := range refusals {
		for _, e := range edges {
			region, ok := edgeRegion[e]
			if !ok {
				continue // not live: it probes nothing and gets no version
			}
			for _, m := range mirrorsByNode[host] {
				k := pathKey{region, m.GetId()}
				out[k] = append(out[k], e)
			}
		}
	}
	return out
}

// haversineKm is the great-circle distance between two locations.
func haversineKm(a, b *pb.Location) float64 {
	const r = 6371.0
	rad := math.Pi / 180
	dLat := (b.GetLatitude() - a.GetLatitude()) * rad
	dLon := (b.GetLongitude() - a.GetLongitude()) * rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(a.GetLatitude()*rad)*math.Cos(b.GetLatitude()*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * r * math.Asin(math.Min(1, math.Sqrt(h)))
}

// buildDesired turns the policy's result into the global desired state
// (version and default region unset). Every resource also gets a wildcard
// route to its origin, which serves regions the policy has no candidate
// for (and clients of no region at an edge of no site).
func buildDesired(w *world, res *route.Result, slots int, now time.Time) (*pb.DesiredState, *pb.RouteSummary) {
	ds := &pb.DesiredState{TableSlots: uint32(slots), ComputedUnixNano: now.UnixNano()}
	for _, r := range w.regions {
		ds.Regions = append(ds.Regions, &pb.RegionState{Name: r.GetName(), Id: r.GetId(), Prefixes: r.GetClientPrefixes()})
	}
	for _, m := range w.mirrors {
		ds.Mirrors = append(ds.Mirrors, &pb.MirrorEndpoint{Name: m.GetName(), Id: m.GetId(), Address: m.GetAddress(), State: w.dpState[m.GetId()],
			Encap: m.GetEncap(), GuePort: m.GetGuePort(), Node: m.GetNode(), ResourceIds: w.held[m.GetId()]})
	}
	sets := weightSets{byPtr: map[uintptr]uint32{}, byKey: map[string]uint32{}, ds: ds}
	sum := &pb.RouteSummary{}
	for _, m := range w.mirrors {
		if why := w.downWhy[m.GetId()]; why != "" {
			sum.MirrorsDown = append(sum.MirrorsDown, &pb.MirrorDown{Mirror: m.GetName(), Why: why})
		}
		if m.GetState() == pb.MirrorState_MIRROR_STATE_DRAINING {
			sum.Draining = append(sum.Draining, m.GetName())
		}
	}
	if len(w.refused) > 0 {
		regionName, mirrorName := map[uint32]string{}, map[uint32]string{}
		for _, r := range w.regions {
			regionName[r.GetId()] = r.GetName()
		}
		for _, m := range w.mirrors {
			mirrorName[m.GetId()] = m.GetName()
		}
		for _, k := range slices.SortedFunc(maps.Keys(w.refused), func(a, b pathKey) int {
			return cmp.Or(cmp.Compare(a.region, b.region), cmp.Compare(a.mirror, b.mirror))
		}) {
			sum.Refused = append(sum.Refused, &pb.RefusedPath{Region: regionName[k.region], Mirror: mirrorName[k.mirror], Edges: w.refused[k]})
		}
	}
	if len(w.unserved) > 0 {
		known := make(map[string]bool, len(w.resources))
		for _, r := range w.resources {
			known[r.GetName()] = true
		}
		for _, k := range slices.SortedFunc(maps.Keys(w.unserved), func(a, b repKey) int {
			return cmp.Or(strings.Compare(a.mirror, b.mirror), strings.Compare(a.resource, b.resource))
		}) {
			if known[k.resource] {
				sum.Unserved = append(sum.Unserved, &pb.UnservedCopy{Mirror: k.mirror, Resource: k.resource})
			}
		}
	}
	if res != nil {
		sum.Routes = uint32(len(res.Routes))
		sum.Changed, sum.MovedSlots, sum.Panic, sum.Spilled = uint32(res.Changed), uint32(res.MovedSlots), uint32(res.Panic), uint32(res.Spilled)
		sum.MovedShare = res.MovedShare()
	}
	ds.ReplicationTasks = replicationTasks(w)
	for i, r := range w.resources {
		rs := &pb.ResourceState{Name: r.GetName(), Id: r.GetId(), HashNoSrcPort: r.GetHashNoSrcPort(),
			RouteRegions: make([]uint32, 0, len(w.regions)+1), RouteWeightSets: make([]uint32, 0, len(w.regions)+1)}
		if a := r.GetAffinity(); a != nil {
			rs.Affinity = proto.Clone(a).(*pb.Affinity)
		}
		for _, v := range r.GetVips() {
			for _, p := range r.GetPorts() {
				rs.Vips = append(rs.Vips, &pb.VIP{Address: v, Port: p, Protocol: r.GetProtocol()})
			}
		}
		if oid, ok := w.mirrorID[r.GetOrigin()]; ok {
			rs.RouteRegions = append(rs.RouteRegions, 0)
			rs.RouteWeightSets = append(rs.RouteWeightSets, sets.origin(oid))
		}
		for j, reg := range w.regions {
			if res == nil {
				break
			}
			rt := res.At(i, j)
			if rt.Weights == nil {
				sum.Unrouted++
				continue
			}
			rs.RouteRegions = append(rs.RouteRegions, reg.GetId())
			rs.RouteWeightSets = append(rs.RouteWeightSets, sets.of(rt.Weights))
		}
		ds.Resources = append(ds.Resources, rs)
	}
	return ds, sum
}

// weightSets deduplicates weight maps: the policy shares one map between
// routes in the same situation, so identity catches nearly all repeats
// and content the rest.
type weightSets struct {
	byPtr   map[uintptr]uint32
	byKey   map[string]uint32
	origins map[uint32]uint32
	ds      *pb.DesiredState
	key     []byte
}

func (s *weightSets) of(w map[route.MirrorID]uint32) uint32 {
	// Only maps the result keeps alive are cached by address: a freed
	// map's address could be reused by another.
	ptr := reflect.ValueOf(w).Pointer()
	if i, ok := s.byPtr[ptr]; ok {
		return i
	}
	i := s.byContent(w)
	s.byPtr[ptr] = i
	return i
}

func (s *weightSets) byContent(w map[route.MirrorID]uint32) uint32 {
	ids := make([]uint32, 0, len(w))
	for m := range w {
		ids = append(ids, m)
	}
	slices.Sort(ids)
	s.key = s.key[:0]
	for _, m := range ids {
		s.key = append(s.key, byte(m), byte(m>>8), byte(m>>16), byte(m>>24))
		s.key = append(s.key, byte(w[m]), byte(w[m]>>8), byte(w[m]>>16), byte(w[m]>>24))
	}
	if i, ok := s.byKey[string(s.key)]; ok {
		return i
	}
	ws := &pb.WeightSet{}
	for _, m := range ids {
		ws.Weights = append(ws.Weights, &pb.MirrorWeight{MirrorId: m, Weight: w[m]})
	}
	i := uint32(len(s.ds.WeightSets))
	s.ds.WeightSets = append(s.ds.WeightSets, ws)
	s.byKey[string(s.key)] = i
	return i
}

func (s *weightSets) origin(m uint32) uint32 {
	if s.origins == nil {
		s.origins = map[uint32]uint32{}
	}
	if i, ok := s.origins[m]; ok {
		return i
	}
	i := s.byContent(map[route.MirrorID]uint32{m: 1})
	s.origins[m] = i
	return i
}

// digest identifies a desired state's content: version and time cleared.
func digest(ds *pb.DesiredState) ([]byte, error) {
	v, t := ds.Version, ds.ComputedUnixNano
	ds.Version, ds.ComputedUnixNano = 0, 0
	b, err := marshal.Marshal(ds)
	ds.Version, ds.ComputedUnixNano = v, t
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(b)
	return h[:], nil
}

// replicationTasks turns the manager's placements into tasks for the
// node holding each resource's primary copy (its origin mirror's host).
// A placement whose origin or target has no node cannot be carried out:
// it is left out (placement.go does not place on hosts without a node).
func replicationTasks(w *world) []*pb.ReplicationTask {
	node := make(map[string]string, len(w.mirrors))
	for _, m := range w.mirrors {
		node[m.GetName()] = m.GetNode()
	}
	var out []*pb.ReplicationTask
	for _, r := range w.resources {
		src := node[r.GetOrigin()]
		if src == "" {
			continue
		}
		for _, pl := range w.placed[r.GetName()].GetPlaced() {
			dst := node[pl.GetMirror()]
			if dst == "" || dst == src {
				continue
			}
			out = append(out, &pb.ReplicationTask{Resource: r.GetName(), SourceNode: src, TargetNode: dst,
				Mirror: pl.GetMirror(), Kind: pl.GetKind(), PlacedUnixNano: pl.GetPlacedUnixNano(), HotExtents: pl.GetHotExtents(),
				DeadlineUnixNano: pl.GetDeadlineUnixNano(), CopyBytes: pl.GetCopyBytes()})
		}
	}
	return out
}

// surveyAgeFactor: an estimate of a mirror its edge probes only every
// interval_ns (a survey of a mirror outside the edge's shortlist) stays
// usable for this many intervals, so a far mirror remains a candidate
// between its rare probes instead of blinking in and out of the routes.
const surveyAgeFactor = 3

// probeMaxAge is how old p's latest probe may be: the configured bound,
// or a few of its edge's probe intervals when they are longer.
func probeMaxAge(base time.Duration, p *pb.ProbeResult) time.Duration {
	return max(base, surveyAgeFactor*time.Duration(p.GetIntervalNs()))
}
