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
// task, is refused (its open sessions end). A volume no task names keeps
// the sources it had. A selective copy reads the blocks it lacks through
// from its first task's source (which must then be a peer). A created
// volume stays when its task is retired (a later placement is a delta);
// after a restart the next task opens it again. Tasks it cannot serve
// come back as problems. The caller holds cp.taskMu.
func (cp *controlPlane) ensureTargetVolumes(cfg *Config, tasks []*pb.ReplicationTask, vols []replicator.Status, peers map[string]bool) []taskProblem {
	a := cp.a
	held := map[string]bool{}
	for _, s := range vols {
		held[s.Name] = true
	}
	// Volumes in the config keep their configured allowed_peers; the
	// others were created here for tasks.
	configured := map[string]bool{}
	if cfg.Replication != nil {
		for _, v := range cfg.Replication.Volumes {
			configured[v.Name] = true
		}
	}
	sources := map[string][]string{}
	first := map[string]*pb.ReplicationTask{}
	for _, t := range tasks {
		r, src := t.GetResource(), t.GetSourceNode()
		if t.GetTargetNode() != cfg.Node || src == cfg.Node {
			continue
		}
		if first[r] == nil {
			first[r] = t
		}
		if !slices.Contains(sources[r], src) {
			sources[r] = append(sources[r], src)
		}
	}
	var problems []taskProblem
	for r, srcs := range sources {
		slices.Sort(srcs)
		if !held[r] || configured[r] {
			continue
		}
		if err := a.repl.SetAllowedPeers(r, srcs); err != nil {
			a.log.Warn("placed copy's sources not updated", "resource", r, "sources", srcs, "err", err)
			problems = append(problems, taskProblem{task: first[r], reason: TaskRejected})
		}
	}
	for _, t := range tasks {
		if t.GetTargetNode() != cfg.Node || t.GetSourceNode() == cfg.Node || held[t.GetResource()] {
			continue
		}
		held[t.GetResource()] = true // one volume, whatever the number of tasks
		dir := ""
		if cfg.Replication != nil {
			dir = cfg.Replication.VolumeDir
		}
		if dir == "" || !volumeFileName(t.GetResource()) {
			problems = append(problems, taskProblem{task: t, reason: TaskNoTargetVolume})
			continue
		}
		vc := replicator.VolumeConfig{Name: t.GetResource(), Path: filepath.Join(dir, t.GetResource()+".img"),
			Role: replicator.RoleMirror, AllowedPeers: sources[t.GetResource()]}
		if t.GetKind() == pb.MirrorKind_MIRROR_KIND_SELECTIVE {
			if !peers[t.GetSourceNode()] {
				problems = append(problems, taskProblem{task: t, reason: TaskUnknownPeer})
				continue
			}
			vc.Upstream, vc.UpstreamVolume = t.GetSourceNode(), t.GetResource()
		}
		if err := enoughSpace(dir, t.GetCopyBytes()); err != nil {
			a.log.Warn("placed copy not received", "resource", t.GetResource(), "source", t.GetSourceNode(), "err", err)
			problems = append(problems, taskProblem{task: t, reason: TaskNoSpace})
			continue
		}
		if err := a.repl.AddVolume(vc); err != nil {
			a.log.Warn("placed copy not received", "resource", t.GetResource(), "source", t.GetSourceNode(), "err", err)
			problems = append(problems, taskProblem{task: t, reason: TaskNoTargetVolume})
			continue
		}
		a.log.Info("volume created for a placed copy", "resource", t.GetResource(), "source", t.GetSourceNode(),
			"path", vc.Path, "kind", t.GetKind().String())
	}
	return problems
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
