package agent

import (
	"cmp"
	"math"
	"slices"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/replicator"
	"github.com/premirror/premirror/internal/replicator/throttle"
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
	// TaskUnknownPeer: the target node (on a source), or the source a
	// selective copy reads through from (on a target), is not a peer in
	// replication.peers.
	TaskUnknownPeer = "unknown_peer"
	// TaskSelfTarget: the task asks the node to replicate to itself.
	TaskSelfTarget = "self_target"
	// TaskRejected: the replicator refused the volume's mirror set (on a
	// source) or a placed copy's source nodes (on a target).
	TaskRejected = "rejected"
	// TaskNoTargetVolume: the task names this node as its target, which
	// holds no volume of the resource and has no replication.volume_dir
	// to create one in (or could not create it there).
	TaskNoTargetVolume = "no_target_volume"
	// TaskNoSpace: replication.volume_dir has less free space than the
	// copy needs.
	TaskNoSpace = "no_space"
)

var taskReasons = []string{TaskNoVolume, TaskNotPrimary, TaskUnknownPeer, TaskSelfTarget, TaskRejected, TaskNoTargetVolume, TaskNoSpace}

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
// from the cache or after a reconnect). A task with a deadline whose
// start (ChooseStart) is still ahead is held: its mirror is added when a
// timer re-applies the tasks at that start, and every apply (a new
// version, a config reload) plans it again.
func (cp *controlPlane) applyTasks(version uint64, tasks []*pb.ReplicationTask) {
	cp.taskMu.Lock()
	defer cp.taskMu.Unlock()
	cp.applyTasksLocked(version, tasks)
}

// applyTasksLocked is applyTasks; the caller holds cp.taskMu.
func (cp *controlPlane) applyTasksLocked(version uint64, tasks []*pb.ReplicationTask) {
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
	if a.repl != nil {
		problems = append(problems, cp.ensureTargetVolumes(cfg, tasks, vols, peers)...)
	}
	now := time.Now()
	if cp.clock != nil {
		now = cp.clock()
	}
	var starts []taskStart
	if a.repl != nil {
		running := func(vol string, mc replicator.MirrorConfig) bool {
			return slices.ContainsFunc(a.repl.DynamicMirrors(vol), func(d replicator.MirrorConfig) bool {
				return d.Peer == mc.Peer && d.Volume == cmp.Or(mc.Volume, vol)
			})
		}
		starts = deferTasks(now, cfg.Node, tasks, plan, vols, running, peerLinks(cfg.Replication, a.repl.LinkRates(), now))
	}

	cp.mu.Lock()
	report := cp.taskVersion != version || !cp.taskApplied
	cp.taskVersion, cp.taskApplied, cp.lastTasks = version, true, tasks
	cp.mu.Unlock()

	for _, p := range problems {
		if !report {
			break
		}
		a.metrics.taskErrors.WithLabelValues(p.reason).Inc()
		a.log.Warn("replication task not carried out", "version", version, "resource", p.task.GetResource(),
			"target", p.task.GetTargetNode(), "mirror", p.task.GetMirror(), "reason", p.reason)
	}
	cp.noteStarts(version, starts, now)
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

// startKey names a task's copy: the volume and the target peer.
type startKey struct{ resource, target string }

// noteStarts logs each start decision when it changes (held until a new
// start, or started), sets the task gauges and arms the timer for the
// earliest held start. The caller holds cp.taskMu.
func (cp *controlPlane) noteStarts(version uint64, starts []taskStart, now time.Time) {
	a := cp.a
	var next time.Time
	held := 0
	cp.mu.Lock()
	prev := cp.starts
	cp.starts = map[startKey]taskStart{}
	for _, ts := range starts {
		k := startKey{ts.resource, ts.target}
		cp.starts[k] = ts
		if ts.held {
			held++
			if next.IsZero() || ts.choice.Start.Before(next) {
				next = ts.choice.Start
			}
		}
		if p, ok := prev[k]; ok && p.held == ts.held && (!ts.held || p.choice.Start.Equal(ts.choice.Start)) {
			continue
		}
		msg := "replication task started"
		if ts.held {
			msg = "replication task held"
		}
		finish := "never"
		if !ts.choice.Finish.IsZero() {
			finish = ts.choice.Finish.UTC().Format(time.RFC3339)
		}
		a.log.Info(msg, "version", version, "resource", ts.resource, "target", ts.target,
			"start", ts.choice.Start.UTC().Format(time.RFC3339), "delay_seconds", max(0, ts.choice.Start.Sub(now).Seconds()),
			"deadline", ts.deadline.UTC().Format(time.RFC3339), "bytes", ts.bytes, "peak_bytes", ts.choice.PeakBytes,
			"finish", finish, "on_time", ts.choice.OnTime, "link_rate_bytes_per_second", cmp.Or(ts.link.rate, DefaultLinkRate))
		if ts.link.measured {
			a.log.Info("replication task planned at measured link rate", "version", version, "resource", ts.resource,
				"target", ts.target, "link_rate_bytes_per_second", ts.link.rate,
				"configured_rate_bytes_per_second", ts.link.configured, "measured_at", ts.link.measuredAt.UTC().Format(time.RFC3339))
		}
	}
	if cp.taskTimer != nil {
		cp.taskTimer.Stop()
		cp.taskTimer = nil
	}
	if !next.IsZero() && !cp.taskStopped {
		// While a copy is held, plan again every replanInterval: a link
		// measured slower since (replicator.Node.LinkRates) may need it
		// started before the start planned.
		cp.taskTimer = time.AfterFunc(min(next.Sub(now), replanInterval), cp.retryTasks)
	}
	cp.mu.Unlock()
	a.metrics.tasks.WithLabelValues("held").Set(float64(held))
	a.metrics.tasks.WithLabelValues("started").Set(float64(len(starts) - held))
	ts := 0.0
	if !next.IsZero() {
		ts = float64(next.UnixNano()) / 1e9
	}
	a.metrics.nextStart.Set(ts)
}

// retryTasks applies the last version's tasks again: a held task's start
// has come, or the peer schedules changed.
func (cp *controlPlane) retryTasks() {
	// The tasks are read under taskMu: read before it, they could be an
	// older version's that an apply in progress is replacing, and would
	// be applied over the newer ones.
	cp.taskMu.Lock()
	defer cp.taskMu.Unlock()
	cp.mu.Lock()
	version, tasks, ok := cp.taskVersion, cp.lastTasks, cp.taskApplied && !cp.taskStopped
	cp.mu.Unlock()
	if ok {
		cp.applyTasksLocked(version, tasks)
	}
}

// stopTasks ends the start timer; a task still held stays held. It
// waits for an apply in progress.
func (cp *controlPlane) stopTasks() {
	cp.mu.Lock()
	cp.taskStopped = true
	if cp.taskTimer != nil {
		cp.taskTimer.Stop()
		cp.taskTimer = nil
	}
	cp.mu.Unlock()
	cp.taskMu.Lock()
	defer cp.taskMu.Unlock()
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

// hotExtentBytes is the size of the extents a selective copy counts
// (replicator.PushOptions.HotExtents: 4 MiB each).
const hotExtentBytes = 4 << 20

// taskStart is this node's start decision for one replication task with
// a deadline.
type taskStart struct {
	resource, target string
	deadline         time.Time
	bytes            int64
	choice           StartChoice
	// held: its start is still ahead, so its copy is not replicated yet.
	held bool
	// link is the link plan the start was chosen on.
	link linkPlan
}

// linkPlan is what ChooseStart needs of the link to one peer.
type linkPlan struct {
	sched throttle.Schedule
	// rate is the link's rate; 0 means DefaultLinkRate.
	rate int64
	// measured: rate is what the link was measured to deliver, below
	// configured (link_rate or DefaultLinkRate), as of measuredAt.
	measured   bool
	configured int64
	measuredAt time.Time
}

// MeasuredRateMaxAge bounds the age of a link's measured delivered rate
// (replicator.LinkRate.Updated) that start planning uses; an older one,
// or none, leaves the configured link_rate.
const MeasuredRateMaxAge = 10 * time.Minute

// replanInterval is how often held copies are planned again (see
// noteStarts).
const replanInterval = time.Minute

// taskBytes is what a task's copy must send: a selective copy's hot
// extents, a delta's backlog in this node's own change tracking (fresher
// than the controller's estimate), or the whole volume; the controller's
// estimate when the volume's status is unknown.
func taskBytes(t *pb.ReplicationTask, s replicator.Status, ok bool) int64 {
	if !ok {
		return int64(min(t.GetCopyBytes(), math.MaxInt64))
	}
	size := int64(s.Blocks) * int64(s.BlockSize)
	switch t.GetKind() {
	case pb.MirrorKind_MIRROR_KIND_SELECTIVE:
		return min(int64(t.GetHotExtents())*hotExtentBytes, size)
	case pb.MirrorKind_MIRROR_KIND_DELTA:
		if d, ok := s.Dirty[t.GetTargetNode()]; ok {
			return min(int64(d)*int64(s.BlockSize), size)
		}
	}
	return size
}

// deferTasks decides when each of node's tasks with a deadline starts
// (ChooseStart on the link to its target) and takes out of plan the
// copies whose start is still ahead, unless they already run: a started
// copy keeps running, since stopping it would waste what it sent and
// leave its target stale. Tasks planTasks refused are not in plan and
// are skipped. It returns every decision, held or not.
func deferTasks(now time.Time, node string, tasks []*pb.ReplicationTask, plan map[string][]replicator.MirrorConfig,
	vols []replicator.Status, running func(volume string, mc replicator.MirrorConfig) bool, links func(peer string) linkPlan) []taskStart {
	held := map[string]replicator.Status{}
	for _, s := range vols {
		held[s.Name] = s
	}
	type key struct{ volume, peer string }
	seen := map[key]bool{}
	var out []taskStart
	for _, t := range tasks {
		k := key{t.GetResource(), t.GetTargetNode()}
		if t.GetSourceNode() != node || t.GetDeadlineUnixNano() == 0 || seen[k] {
			continue
		}
		i := slices.IndexFunc(plan[k.volume], func(mc replicator.MirrorConfig) bool { return mc.Peer == k.peer })
		if i < 0 {
			continue
		}
		seen[k] = true
		s, ok := held[k.volume]
		ts := taskStart{resource: k.volume, target: k.peer, deadline: time.Unix(0, t.GetDeadlineUnixNano()), bytes: taskBytes(t, s, ok)}
		l := links(k.peer)
		ts.link = l
		ts.choice = ChooseStart(l.sched, l.rate, now, ts.deadline, ts.bytes)
		if ts.choice.Start.After(now) && !running(k.volume, plan[k.volume][i]) {
			ts.held = true
			plan[k.volume] = slices.Delete(plan[k.volume], i, i+1)
		}
		out = append(out, ts)
	}
	return out
}

// peerLinks returns the link plan of every peer in r: its schedule
// (unlimited when none) and its rate, link_rate (DefaultLinkRate when
// not set) or, when lower, the rate the link was measured to deliver
// (measured, from replicator.Node.LinkRates) if measured within
// MeasuredRateMaxAge of now and not bound by the schedule. A measured
// rate is what the path carried (under delay control, what it let the
// copies have), so it caps the link in every window, as link_rate does;
// a schedule-bound one only says the path carried the schedule's rate,
// which the plan already assumes.
func peerLinks(r *Replication, measured map[string]replicator.LinkRate, now time.Time) func(peer string) linkPlan {
	links := map[string]linkPlan{}
	if r != nil {
		for _, p := range r.Peers {
			l := linkPlan{sched: throttle.Fixed(throttle.Unlimited)}
			if p.Schedule != "" {
				// Validated with the config; a bad one cannot get here.
				if s, err := throttle.ParseSchedule(p.Schedule); err == nil {
					l.sched = s
				}
			}
			if p.LinkRate != "" {
				if v, err := throttle.ParseRate(p.LinkRate); err == nil && v > 0 {
					l.rate = v
				}
			}
			links[p.Name] = withMeasured(l, measured, p.Name, now)
		}
	}
	return func(peer string) linkPlan {
		if l, ok := links[peer]; ok {
			return l
		}
		return withMeasured(linkPlan{sched: throttle.Fixed(throttle.Unlimited)}, measured, peer, now)
	}
}

// withMeasured lowers l's rate to peer's measured rate (see peerLinks).
func withMeasured(l linkPlan, measured map[string]replicator.LinkRate, peer string, now time.Time) linkPlan {
	m, ok := measured[peer]
	l.configured = cmp.Or(l.rate, DefaultLinkRate)
	if !ok || m.ScheduleBound || m.Rate <= 0 || m.Rate >= l.configured || now.Sub(m.Updated) > MeasuredRateMaxAge {
		return l
	}
	l.rate, l.measured, l.measuredAt = m.Rate, true, m.Updated
	return l
}

// reloadReplication gives the replicator the new peers and the peer
// schedules of a reloaded config (a peer's link throttle follows its new
// schedule at once) and plans the held replication tasks again against
// them. Replication.reloadable has refused every other change.
func (a *Agent) reloadReplication(old, cfg *Config) {
	if a.repl == nil || cfg.Replication == nil {
		return
	}
	prev := map[string]string{}
	if old.Replication != nil {
		for _, p := range old.Replication.Peers {
			prev[p.Name] = p.Schedule
		}
	}
	for _, p := range cfg.Replication.Peers {
		was, ok := prev[p.Name]
		if !ok {
			if err := a.repl.AddPeer(p.peerConfig()); err != nil {
				a.log.Warn("peer not added", "peer", p.Name, "err", err)
			}
			continue // added with its schedule
		}
		if was == p.Schedule {
			continue
		}
		s := throttle.Fixed(throttle.Unlimited)
		if p.Schedule != "" {
			var err error
			if s, err = throttle.ParseSchedule(p.Schedule); err != nil {
				continue // validated with the config: cannot happen
			}
		}
		if err := a.repl.SetSchedule(p.Name, s); err != nil {
			a.log.Warn("peer schedule not applied", "peer", p.Name, "err", err)
			continue
		}
		a.log.Info("peer schedule applied", "peer", p.Name, "schedule", s.String())
	}
	if a.cp != nil {
		a.cp.retryTasks()
	}
}
