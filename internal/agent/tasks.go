package agent

import (
	"cmp"
	"slices"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/replicator"
)

// The controller's mirroring manager places copies of a resource by
// sending replication tasks in the desired state: the node holding the
// resource's primary volume replicates it to each target node. The agent
// turns the tasks naming it as source into the replicator's dynamic
// mirrors (replicator.Node.SetDynamicMirrors) and, on mirror hosts,
// reports each copy's sync state back (ReplicaSync), which the controller
// waits for before routing to a placed copy.

// DefaultTaskInterval is the delta-cycle interval of mirrors placed by
// replication tasks when replication.task_interval is not set. Configured
// mirrors have no default (interval 0 means no background loop); a placed
// copy must keep up on its own, and its lag runs up to about one interval
// plus a cycle's duration, so the interval sits well under the few
// seconds to tens of seconds a resource's max_lag usually allows.
const DefaultTaskInterval = 5 * time.Second

// Reasons a replication task is not carried out; the label values of
// edge_replication_task_errors_total.
const (
	// TaskNoVolume: this node holds no volume named like the resource.
	TaskNoVolume = "no_volume"
	// TaskNotPrimary: it holds one, but as a mirror (or a fenced primary),
	// which may not feed a placed copy.
	TaskNotPrimary = "not_primary"
	// TaskUnknownPeer: the target node is not a peer in replication.peers.
	TaskUnknownPeer = "unknown_peer"
	// TaskSelfTarget: the task asks the node to replicate to itself.
	TaskSelfTarget = "self_target"
	// TaskRejected: the replicator refused the volume's mirror set.
	TaskRejected = "rejected"
)

var taskReasons = []string{TaskNoVolume, TaskNotPrimary, TaskUnknownPeer, TaskSelfTarget, TaskRejected}

// taskProblem is a task addressed to this node that it cannot carry out.
type taskProblem struct {
	task   *pb.ReplicationTask
	reason string
}

// planTasks maps the replication tasks whose source is node onto its
// volumes (vols, as the replicator reports them): for every primary
// volume, the complete list of its dynamic mirrors, empty when no task
// names it, so that retired tasks stop their replication. Tasks it
// cannot carry out come back as problems. The task's kind is not needed:
// a mirror loop makes a full copy only when the target holds none, and
// catches a stale copy up with a delta otherwise.
func planTasks(node string, tasks []*pb.ReplicationTask, vols []replicator.Status, peers map[string]bool, interval time.Duration) (map[string][]replicator.MirrorConfig, []taskProblem) {
	plan := map[string][]replicator.MirrorConfig{}
	held := map[string]replicator.Status{}
	for _, s := range vols {
		held[s.Name] = s
		if primary(s) {
			plan[s.Name] = nil
		}
	}
	var problems []taskProblem
	type key struct{ volume, peer string }
	seen := map[key]bool{}
	for _, t := range tasks {
		if t.GetSourceNode() != node {
			continue
		}
		s, ok := held[t.GetResource()]
		reason := ""
		switch {
		case t.GetTargetNode() == node:
			reason = TaskSelfTarget
		case !ok:
			reason = TaskNoVolume
		case !primary(s):
			reason = TaskNotPrimary
		case !peers[t.GetTargetNode()]:
			reason = TaskUnknownPeer
		}
		if reason != "" {
			problems = append(problems, taskProblem{task: t, reason: reason})
			continue
		}
		k := key{t.GetResource(), t.GetTargetNode()}
		if seen[k] {
			continue // the same copy placed for two Mirror objects on one node
		}
		seen[k] = true
		mc := replicator.MirrorConfig{Peer: k.peer, Volume: k.volume, Mode: replicator.ModeFull, Interval: interval}
		if t.GetKind() == pb.MirrorKind_MIRROR_KIND_SELECTIVE {
			// The source's most-read extents; the target reads the rest
			// through from its upstream.
			mc.Mode, mc.HotExtents = replicator.ModeSelective, int(t.GetHotExtents())
		}
		plan[k.volume] = append(plan[k.volume], mc)
	}
	for _, ms := range plan {
		slices.SortFunc(ms, func(a, b replicator.MirrorConfig) int { return cmp.Compare(a.Peer, b.Peer) })
	}
	return plan, problems
}

// primary reports whether a volume may feed placed copies: a writable,
// unfenced primary.
func primary(s replicator.Status) bool { return s.Role == replicator.RolePrimary && !s.Fenced }

// applyTasks sets the replicator's dynamic mirrors from a desired state's
// replication tasks. Nothing here fails the version: a task that cannot
// be carried out is logged and counted, and routing applies regardless.
// Problems are logged once per version (a version can be applied again,
// from the cache or after a reconnect).
func (cp *controlPlane) applyTasks(version uint64, tasks []*pb.ReplicationTask) {
	a := cp.a
	a.mu.Lock()
	cfg := a.cfg
	a.mu.Unlock()
	var vols []replicator.Status
	peers := map[string]bool{}
	interval := DefaultTaskInterval
	if r := cfg.Replication; r != nil {
		for _, p := range r.Peers {
			peers[p.Name] = true
		}
		if r.TaskInterval > 0 {
			interval = time.Duration(r.TaskInterval)
		}
	}
	if a.repl != nil {
		vols = a.repl.Status()
	}
	plan, problems := planTasks(cfg.Node, tasks, vols, peers, interval)

	cp.mu.Lock()
	report := cp.taskVersion != version || !cp.taskApplied
	cp.taskVersion, cp.taskApplied = version, true
	cp.mu.Unlock()

	for _, p := range problems {
		if !report {
			break
		}
		a.metrics.taskErrors.WithLabelValues(p.reason).Inc()
		a.log.Warn("replication task not carried out", "version", version, "resource", p.task.GetResource(),
			"target", p.task.GetTargetNode(), "mirror", p.task.GetMirror(), "reason", p.reason)
	}
	if a.repl == nil {
		return
	}
	names := make([]string, 0, len(plan))
	for v := range plan {
		names = append(names, v)
	}
	slices.Sort(names)
	for _, vol := range names {
		if err := a.repl.SetDynamicMirrors(vol, plan[vol]); err != nil {
			if report {
				a.metrics.taskErrors.WithLabelValues(TaskRejected).Inc()
				a.log.Error("replication tasks not applied", "version", version, "resource", vol, "err", err)
			}
			continue
		}
		if report && len(plan[vol]) > 0 {
			targets := make([]string, len(plan[vol]))
			for i, m := range plan[vol] {
				targets[i] = m.Peer
			}
			a.log.Info("replication tasks applied", "version", version, "resource", vol, "targets", targets)
		}
	}
}

// replicaSyncs reports every volume held here as a mirror: in sync once
// it can serve the resource and its freshness is known, with its lag. A
// full copy can serve once complete; a selective one once its first copy
// of the hot extents has committed (reads of the other blocks go through
// to its upstream). A copy completed by a replicator that did not record
// cycle times counts as out of sync until its next cycle (one interval
// later).
func replicaSyncs(vols []replicator.Status) []*pb.ReplicaSync {
	var out []*pb.ReplicaSync
	for _, s := range vols {
		if s.Role != replicator.RoleMirror {
			continue
		}
		serves := s.Complete || (s.Selective && !s.Empty && !s.Inconsistent && !s.FullActive)
		out = append(out, &pb.ReplicaSync{Resource: s.Name, InSync: serves && !s.CycleAsOf.IsZero(),
			LagNs: int64(s.Lag)})
	}
	return out
}

// replicaBacklogs reports, for every primary volume held here, what its
// change tracking still has to send to each peer: the blocks written
// since that peer's copy was last in sync (all of them before a first
// copy). A retired placed copy keeps its tracking, so this is what a
// delta placement there must catch up on; the controller costs it so.
func replicaBacklogs(vols []replicator.Status) []*pb.ReplicaBacklog {
	var out []*pb.ReplicaBacklog
	for _, s := range vols {
		if s.Role != replicator.RolePrimary {
			continue
		}
		peers := make([]string, 0, len(s.Dirty))
		for p := range s.Dirty {
			peers = append(peers, p)
		}
		slices.Sort(peers)
		for _, p := range peers {
			out = append(out, &pb.ReplicaBacklog{Resource: s.Name, Peer: p, PendingBytes: s.Dirty[p] * uint64(max(s.BlockSize, 0))})
		}
	}
	return out
}

// attachReplicas gives every mirror this host speaks for the sync state
// of the copies it holds and the backlogs of its primaries. The
// controller reads them per (mirror, resource), so a host serving
// several mirrors repeats them under each. A host that speaks for no
// mirror (it decapsulates no mirror's address) cannot attribute its
// copies, and they go unreported.
func attachReplicas(mh []*pb.MirrorHealth, reps []*pb.ReplicaSync, backlogs []*pb.ReplicaBacklog) {
	for _, m := range mh {
		m.Replicas, m.Backlogs = reps, backlogs
	}
}
