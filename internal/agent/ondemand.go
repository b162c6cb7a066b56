package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/replicator"
)

// ensureTargetVolumes creates, under replication.volume_dir, the mirror
// volume of every replication task that names this node as its target
// for a resource it holds no volume of, so a copy the controller places
// here needs no volume declared in advance. The volume accepts sessions
// only from the source nodes of the tasks placing it here, and follows
// them: when the controller moves the resource's origin, the task from
// the new source lets it in, and the old source, no longer named by a
// task, is refused (its open sessions end). A selective copy reads the
// blocks it lacks through from one of those sources, its upstream (which
// must then be a peer; see upstreamTask), and follows a move too: reading
// through from the former origin would fail once it is retired, or
// bring back its deposed data. A volume no task names keeps the sources
// and upstream it had. A created volume stays when its task is retired
// (a later placement is a delta); after a restart the next task opens it
// again. Tasks it cannot serve come back as problems. The caller holds
// cp.taskMu.
func (cp *controlPlane) ensureTargetVolumes(cfg *Config, tasks []*pb.ReplicationTask, vols []replicator.Status, peers map[string]bool) []taskProblem {
	a := cp.a
	held := map[string]replicator.Status{}
	for _, s := range vols {
		held[s.Name] = s
	}
	// Volumes in the config keep their configured allowed_peers and
	// upstream; the others were created here for tasks.
	configured := map[string]bool{}
	if cfg.Replication != nil {
		for _, v := range cfg.Replication.Volumes {
			configured[v.Name] = true
		}
	}
	placing := map[string][]*pb.ReplicationTask{}
	var resources []string
	for _, t := range tasks {
		r := t.GetResource()
		if t.GetTargetNode() != cfg.Node || t.GetSourceNode() == cfg.Node {
			continue
		}
		if placing[r] == nil {
			resources = append(resources, r)
		}
		placing[r] = append(placing[r], t)
	}
	var problems []taskProblem
	for _, r := range resources {
		ts := placing[r]
		s, ok := held[r]
		if !ok || configured[r] {
			continue
		}
		var srcs []string
		for _, t := range ts {
			srcs = append(srcs, t.GetSourceNode())
		}
		slices.Sort(srcs)
		srcs = slices.Compact(srcs)
		if err := a.repl.SetAllowedPeers(r, srcs); err != nil {
			a.log.Warn("placed copy's sources not updated", "resource", r, "sources", srcs, "err", err)
			problems = append(problems, taskProblem{task: ts[0], reason: TaskRejected})
		}
		if !s.Selective && !slices.ContainsFunc(ts, selectiveTask) {
			continue // nothing to read through
		}
		t := upstreamTask(ts, s.Upstream)
		up := t.GetSourceNode()
		switch {
		case up == s.Upstream: // in place
		case !peers[up]:
			// It keeps the upstream it had until a reload adds the peer.
			a.log.Warn("placed copy's upstream not moved: the source is not a peer", "resource", r, "upstream", up, "current", s.Upstream)
			problems = append(problems, taskProblem{task: t, reason: TaskUnknownPeer})
		default:
			if err := a.repl.SetUpstream(r, up, r); err != nil {
				a.log.Warn("placed copy's upstream not moved", "resource", r, "upstream", up, "current", s.Upstream, "err", err)
				problems = append(problems, taskProblem{task: t, reason: TaskRejected})
				continue
			}
			a.log.Info("placed copy reads through from a new upstream", "resource", r, "upstream", up, "before", s.Upstream)
		}
	}
	for _, r := range resources {
		if _, ok := held[r]; ok {
			continue
		}
		t := upstreamTask(placing[r], "")
		dir := ""
		if cfg.Replication != nil {
			dir = cfg.Replication.VolumeDir
		}
		if dir == "" || !volumeFileName(r) {
			problems = append(problems, taskProblem{task: t, reason: TaskNoTargetVolume})
			continue
		}
		var srcs []string
		for _, pt := range placing[r] {
			srcs = append(srcs, pt.GetSourceNode())
		}
		slices.Sort(srcs)
		vc := replicator.VolumeConfig{Name: r, Path: filepath.Join(dir, r+".img"),
			Role: replicator.RoleMirror, AllowedPeers: slices.Compact(srcs)}
		if selectiveTask(t) {
			if !peers[t.GetSourceNode()] {
				problems = append(problems, taskProblem{task: t, reason: TaskUnknownPeer})
				continue
			}
			vc.Upstream, vc.UpstreamVolume = t.GetSourceNode(), r
		}
		if err := enoughSpace(dir, t.GetCopyBytes()); err != nil {
			a.log.Warn("placed copy not received", "resource", r, "source", t.GetSourceNode(), "err", err)
			problems = append(problems, taskProblem{task: t, reason: TaskNoSpace})
			continue
		}
		if err := a.repl.AddVolume(vc); err != nil {
			a.log.Warn("placed copy not received", "resource", r, "source", t.GetSourceNode(), "err", err)
			problems = append(problems, taskProblem{task: t, reason: TaskNoTargetVolume})
			continue
		}
		a.log.Info("volume created for a placed copy", "resource", r, "source", t.GetSourceNode(),
			"path", vc.Path, "kind", t.GetKind().String())
	}
	return problems
}

func selectiveTask(t *pb.ReplicationTask) bool {
	return t.GetKind() == pb.MirrorKind_MIRROR_KIND_SELECTIVE
}

// upstreamTask chooses, among the tasks placing one resource here, the
// one whose source a selective copy reads through from, given its
// current upstream ("" for a new copy). The controller sends every task
// of a resource from the node of the resource's origin, so a version
// names one source, and a move of the origin comes as a version naming
// only the new one: the copy follows it. Should a version name several
// (old and new tasks side by side for a while), a current upstream that
// a task still names is kept, since the controller still vouches for it
// and switching back and forth gains nothing; otherwise the source of the
// most recently placed task is taken, the controller's latest decision,
// the first by name among equals so that every apply chooses alike.
func upstreamTask(ts []*pb.ReplicationTask, current string) *pb.ReplicationTask {
	var best *pb.ReplicationTask
	for _, t := range ts {
		if current != "" && t.GetSourceNode() == current {
			return t
		}
		if best == nil || t.GetPlacedUnixNano() > best.GetPlacedUnixNano() ||
			t.GetPlacedUnixNano() == best.GetPlacedUnixNano() && t.GetSourceNode() < best.GetSourceNode() {
			best = t
		}
	}
	return best
}

// volumeFileName reports whether a resource name can name a file in
// volume_dir: the replicator's volume name rule, and no leading dot (no
// hidden files, no "." or "..").
func volumeFileName(name string) bool {
	return name != "" && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, `/\`)
}

// enoughSpace creates dir if needed and checks that its file system has
// room for n bytes (0: unknown, not checked).
func enoughSpace(dir string, n uint64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("replication.volume_dir: %w", err)
	}
	if n == 0 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("replication.volume_dir %s: %w", dir, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < n {
		return fmt.Errorf("replication.volume_dir %s: %d bytes free, the copy needs %d", dir, free, n)
	}
	return nil
}
