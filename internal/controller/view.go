package controller

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// view is a replica's in-memory copy of the store, kept current by one
// etcd watch on the prefix. Every replica serves agents and the admin API
// from it; the leader computes routes from it. Values are replaced, never
// modified, so snapshots share them safely.
type view struct {
	store *Store
	log   *slog.Logger

	mu      sync.RWMutex
	rev     int64
	sites   map[string]*pb.Site
	mirrors map[string]*pb.Mirror
	res     map[string]*pb.Resource
	desired *pb.DesiredRecord
	agents  map[string]*pb.AgentRecord
	// tunnel is derived from agents (tunnelFrom), rebuilt after a batch
	// of events that changed a node's role or tunnel sources.
	tunnel      tunnelSources
	tunnelDirty bool
	live        map[string]*pb.LiveReport
	placed      map[string]*pb.PlacementRecord // resource → the mirroring manager's record
	health      map[string]string              // node → signature of its health verdicts
	election    map[string]electionKey

	desiredCh *broadcast // a new desired version
	objectsCh *broadcast // objects changed
	kick      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
}

type electionKey struct {
	create int64
	value  string
}

func newView(s *Store, log *slog.Logger) *view {
	v := &view{store: s, log: log, desiredCh: newBroadcast(), objectsCh: newBroadcast(),
		kick: make(chan struct{}, 1), ready: make(chan struct{})}
	v.reset()
	return v
}

func (v *view) reset() {
	v.sites, v.mirrors, v.res = map[string]*pb.Site{}, map[string]*pb.Mirror{}, map[string]*pb.Resource{}
	v.agents, v.live, v.health = map[string]*pb.AgentRecord{}, map[string]*pb.LiveReport{}, map[string]string{}
	v.placed = map[string]*pb.PlacementRecord{}
	v.election = map[string]electionKey{}
	v.desired = nil
	v.tunnel, v.tunnelDirty = tunnelSources{}, false
}

// run lists the prefix and follows it until ctx ends, listing again when
// the watch is compacted or broken.
func (v *view) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := v.follow(ctx); err != nil && ctx.Err() == nil {
			v.log.Warn("etcd watch interrupted; listing again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

func (v *view) follow(ctx context.Context) error {
	cli, pfx := v.store.cli, v.store.prefix
	resp, err := cli.Get(ctx, pfx, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list %s: %w", pfx, err)
	}
	v.mu.Lock()
	v.reset()
	for _, kv := range resp.Kvs {
		v.applyLocked(kv, false)
	}
	v.refreshTunnelLocked()
	v.rev = resp.Header.Revision
	v.mu.Unlock()
	v.desiredCh.signal()
	v.objectsCh.signal()
	v.signalKick()
	v.readyOnce.Do(func() { close(v.ready) })

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		var desired, objects, kick bool
		v.mu.Lock()
		for _, ev := range wr.Events {
			d, o, k := v.applyLocked(ev.Kv, ev.Type == mvccpb.DELETE)
			desired, objects, kick = desired || d, objects || o, kick || k
		}
		v.refreshTunnelLocked()
		v.rev = wr.Header.Revision
		v.mu.Unlock()
		if desired {
			v.desiredCh.signal()
		}
		if objects {
			v.objectsCh.signal()
			kick = true
		}
		if kick {
			v.signalKick()
		}
	}
	return fmt.Errorf("watch closed: %w", ctx.Err())
}

func (v *view) signalKick() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// applyLocked applies one key; it reports whether the desired state or
// the objects changed, and whether the leader should compute at once (a
// health verdict or an agent changed).
func (v *view) applyLocked(kv *mvccpb.KeyValue, deleted bool) (desired, objects, kick bool) {
	rel := strings.TrimPrefix(string(kv.Key), v.store.prefix)
	bad := func(err error) {
		v.log.Error("ignoring corrupt record", "key", string(kv.Key), "err", err)
	}
	switch {
	case strings.HasPrefix(rel, keyObjects):
		kind, name, _ := strings.Cut(strings.TrimPrefix(rel, keyObjects), "/")
		if deleted {
			switch kind {
			case KindSite:
				delete(v.sites, name)
			case KindMirror:
				delete(v.mirrors, name)
			case KindResource:
				delete(v.res, name)
			}
			return false, true, false
		}
		var o pb.Objects
		if err := decodeObject(strings.TrimPrefix(rel, keyObjects), kv.Value, &o); err != nil {
			bad(err)
			return false, false, false
		}
		for _, x := range o.Sites {
			v.sites[x.GetName()] = x
		}
		for _, x := range o.Mirrors {
			v.mirrors[x.GetName()] = x
		}
		for _, x := range o.Resources {
			v.res[x.GetName()] = x
		}
		return false, true, false
	case rel == keyDesired:
		if deleted {
			v.desired = nil
			return true, false, false
		}
		rec := &pb.DesiredRecord{}
		if err := unpack(kv.Value, rec); err != nil {
			bad(err)
			return false, false, false
		}
		v.desired = rec
		return true, false, false
	case strings.HasPrefix(rel, keyAgents):
		node := strings.TrimPrefix(rel, keyAgents)
		if deleted {
			prev := v.agents[node].GetStatus()
			delete(v.agents, node)
			changed := len(prev.GetOuterSources()) > 0 || len(prev.GetDecapSources()) > 0
			v.tunnelDirty = v.tunnelDirty || changed
			return false, false, changed
		}
		rec := &pb.AgentRecord{}
		if err := proto.Unmarshal(kv.Value, rec); err != nil {
			bad(err)
			return false, false, false
		}
		// An edge's outer sources are in the desired state, a host's
		// decap_sources decide which regions may use its mirrors: a
		// change computes now.
		prev, st := v.agents[node].GetStatus(), rec.GetStatus()
		v.agents[node] = rec
		changed := prev.GetRole() != st.GetRole() ||
			!slices.Equal(prev.GetOuterSources(), st.GetOuterSources()) || !slices.Equal(prev.GetDecapSources(), st.GetDecapSources())
		v.tunnelDirty = v.tunnelDirty || changed
		return false, false, changed
	case strings.HasPrefix(rel, keyLive):
		node := strings.TrimPrefix(rel, keyLive)
		if deleted {
			delete(v.live, node)
			delete(v.health, node)
			return false, false, true
		}
		rep := &pb.LiveReport{}
		if err := proto.Unmarshal(kv.Value, rep); err != nil {
			bad(err)
			return false, false, false
		}
		v.live[node] = rep
		sig := healthSignature(rep)
		changed := v.health[node] != sig
		v.health[node] = sig
		return false, false, changed
	case strings.HasPrefix(rel, keyPlaced):
		res, err := url.PathUnescape(strings.TrimPrefix(rel, keyPlaced))
		if err != nil {
			bad(err)
			return false, false, false
		}
		if deleted {
			delete(v.placed, res)
			return false, false, true
		}
		rec := &pb.PlacementRecord{}
		if err := proto.Unmarshal(kv.Value, rec); err != nil {
			bad(err)
			return false, false, false
		}
		v.placed[res] = rec
		// Placements change replicas and replication tasks: compute now.
		return false, false, true
	case strings.HasPrefix(rel, keyElection):
		if deleted {
			delete(v.election, rel)
		} else {
			v.election[rel] = electionKey{create: kv.CreateRevision, value: string(kv.Value)}
		}
		return false, false, false
	}
	return false, false, false
}

// healthSignature sums up the verdicts of a report that bypass damping:
// when it changes, the leader computes at once instead of on its tick.
func healthSignature(r *pb.LiveReport) string {
	var b strings.Builder
	b.WriteString(r.GetSite())
	for _, p := range r.GetProbes() {
		fmt.Fprintf(&b, "|p%s=%d", p.GetMirror(), p.GetHealth())
	}
	for _, m := range r.GetMirrors() {
		fmt.Fprintf(&b, "|m%s=%d", m.GetMirror(), m.GetHealth())
		for _, rs := range m.GetReplicas() {
			fmt.Fprintf(&b, ",%s=%t", rs.GetResource(), rs.GetInSync())
		}
	}
	return b.String()
}

// snapshot is a consistent copy of the view for one computation.
type snapshot struct {
	rev       int64
	sites     []*pb.Site
	mirrors   []*pb.Mirror
	resources []*pb.Resource
	live      []*pb.LiveReport
	desired   *pb.DesiredRecord
	placed    map[string]*pb.PlacementRecord // resource → record (shared, read only)
	tunnel    tunnelSources                  // shared, read only
}

func (v *view) snapshot() *snapshot {
	v.mu.RLock()
	defer v.mu.RUnlock()
	s := &snapshot{rev: v.rev, desired: v.desired,
		sites: make([]*pb.Site, 0, len(v.sites)), mirrors: make([]*pb.Mirror, 0, len(v.mirrors)),
		resources: make([]*pb.Resource, 0, len(v.res)), live: make([]*pb.LiveReport, 0, len(v.live)),
		placed: make(map[string]*pb.PlacementRecord, len(v.placed))}
	for k, x := range v.placed {
		s.placed[k] = x
	}
	for _, x := range v.sites {
		s.sites = append(s.sites, x)
	}
	for _, x := range v.mirrors {
		s.mirrors = append(s.mirrors, x)
	}
	for _, x := range v.res {
		s.resources = append(s.resources, x)
	}
	for _, x := range v.live {
		s.live = append(s.live, x)
	}
	s.tunnel = v.tunnel
	return s
}

// tunnelSources is what the nodes' tunnel sources say, derived from their
// agent records.
type tunnelSources struct {
	// edges: the outer sources of every edge with a record, connected or
	// not (a disconnected edge forwards on its last version), by node.
	edges []*pb.EdgeSource
	// refusals: host → the edges (sorted) with an outer source outside
	// the host's decap_sources; hosts without one refuse nobody.
	refusals map[string][]string
}

// refreshTunnelLocked rebuilds v.tunnel if a node's role or tunnel
// sources changed: once per batch of events, not per computation (the
// comparison is edges × hosts).
func (v *view) refreshTunnelLocked() {
	if v.tunnelDirty {
		v.tunnel, v.tunnelDirty = tunnelFrom(v.agents), false
	}
}

// isEdge says whether a node of role r sends tunnel packets.
func isEdge(r pb.NodeRole) bool {
	return r == pb.NodeRole_NODE_ROLE_EDGE || r == pb.NodeRole_NODE_ROLE_BOTH
}

// tunnelFrom derives tunnelSources from the agent records, whose lists
// the session checked and keeps canonical. A node does not tunnel to
// itself, so a node of role both never refuses its own sources.
func tunnelFrom(agents map[string]*pb.AgentRecord) tunnelSources {
	t := tunnelSources{refusals: map[string][]string{}}
	type edge struct {
		node  string
		addrs []netip.Addr
	}
	var edges []edge
	for _, node := range slices.Sorted(maps.Keys(agents)) {
		st := agents[node].GetStatus()
		if !isEdge(st.GetRole()) || len(st.GetOuterSources()) == 0 {
			continue
		}
		t.edges = append(t.edges, &pb.EdgeSource{Node: node, Addresses: st.GetOuterSources()})
		e := edge{node: node}
		for _, s := range st.GetOuterSources() {
			if a, err := netip.ParseAddr(s); err == nil {
				e.addrs = append(e.addrs, a.Unmap())
			}
		}
		edges = append(edges, e)
	}
	for host, rec := range agents {
		var filter []netip.Prefix
		for _, s := range rec.GetStatus().GetDecapSources() {
			if p, err := netip.ParsePrefix(s); err == nil {
				filter = append(filter, p)
			}
		}
		if len(filter) == 0 {
			continue
		}
		for _, e := range edges {
			if e.node != host && slices.ContainsFunc(e.addrs, func(a netip.Addr) bool {
				return !slices.ContainsFunc(filter, func(p netip.Prefix) bool { return p.Contains(a) })
			}) {
				t.refusals[host] = append(t.refusals[host], e.node)
			}
		}
	}
	return t
}

func (v *view) desiredRecord() *pb.DesiredRecord {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.desired
}

// placements returns every record, by resource name.
func (v *view) placements() map[string]*pb.PlacementRecord {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make(map[string]*pb.PlacementRecord, len(v.placed))
	for k, x := range v.placed {
		out[k] = x
	}
	return out
}

func (v *view) resource(name string) *pb.Resource {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.res[name]
}

// leader is the value of the oldest election key: the campaign that won.
func (v *view) leader() string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	best := electionKey{}
	for _, k := range v.election {
		if best.create == 0 || k.create < best.create {
			best = k
		}
	}
	return best.value
}

func (v *view) agentsStatus() []*pb.AgentStatus {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]*pb.AgentStatus, 0, len(v.agents))
	for node, rec := range v.agents {
		st := proto.Clone(rec.GetStatus()).(*pb.AgentStatus)
		if st == nil {
			st = &pb.AgentStatus{Node: node}
		}
		live, ok := v.live[node]
		st.Connected = ok
		if ok {
			st.Controller = live.GetController()
			st.LastSeenUnixNano = max(st.GetLastSeenUnixNano(), live.GetReceivedUnixNano())
		}
		out = append(out, st)
	}
	return out
}

// broadcast wakes every waiter once per signal.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

// wait returns a channel closed at the next signal.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcast) signal() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

// idNames resolves the IDs of access counts: resources and regions
// (sites) by ID. IDs are never reused, so a name found is the right one.
type idNames struct {
	resources, regions map[uint32]string
}

func (v *view) idNames() idNames {
	v.mu.RLock()
	defer v.mu.RUnlock()
	n := idNames{resources: make(map[uint32]string, len(v.res)), regions: make(map[uint32]string, len(v.sites))}
	for _, r := range v.res {
		n.resources[r.GetId()] = r.GetName()
	}
	for _, s := range v.sites {
		n.regions[s.GetId()] = s.GetName()
	}
	return n
}
