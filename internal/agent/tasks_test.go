package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	pb "github.com/premirror/premirror/api/premirror/v1"
	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/replicator"
)

func task(resource, source, target string) *pb.ReplicationTask {
	return &pb.ReplicationTask{Resource: resource, SourceNode: source, TargetNode: target, Mirror: target + "-" + resource,
		Kind: pb.MirrorKind_MIRROR_KIND_FULL}
}

func TestPlanTasks(t *testing.T) {
	vols := []replicator.Status{
		{Name: "disk", Role: replicator.RolePrimary, Complete: true},
		{Name: "idle", Role: replicator.RolePrimary, Complete: true},
		{Name: "old", Role: replicator.RolePrimary, Fenced: true},
		{Name: "cache", Role: replicator.RoleMirror},
	}
	peers := map[string]bool{"m1": true, "m2": true}
	tasks := []*pb.ReplicationTask{
		task("disk", "me", "m2"),
		task("disk", "me", "m1"),
		{Resource: "disk", SourceNode: "me", TargetNode: "m1", Mirror: "m1-other"}, // same copy, second Mirror object
		task("disk", "me", "ghost"),
		task("cache", "me", "m1"),
		task("old", "me", "m1"),
		task("nope", "me", "m1"),
		task("disk", "me", "me"),
		task("disk", "elsewhere", "m1"), // another node's task
	}
	plan, problems := planTasks("me", tasks, vols, peers, 7*time.Second)

	want := []replicator.MirrorConfig{
		{Peer: "m1", Volume: "disk", Mode: replicator.ModeFull, Interval: 7 * time.Second},
		{Peer: "m2", Volume: "disk", Mode: replicator.ModeFull, Interval: 7 * time.Second},
	}
	if !slices.EqualFunc(plan["disk"], want, func(a, b replicator.MirrorConfig) bool {
		return a.Peer == b.Peer && a.Volume == b.Volume && a.Mode == b.Mode && a.Interval == b.Interval
	}) {
		t.Fatalf("disk mirrors %+v, want %+v", plan["disk"], want)
	}
	// A primary no task names is listed with no mirrors, so its retired
	// copies stop; mirrors and fenced primaries are not listed at all.
	if ms, ok := plan["idle"]; !ok || len(ms) != 0 {
		t.Fatalf("idle primary: %v %v, want listed with no mirrors", ms, ok)
	}
	if len(plan) != 2 {
		t.Fatalf("plan covers %d volumes, want disk and idle: %v", len(plan), plan)
	}
	// A selective placement: the source's hottest extents, read-through
	// for the rest.
	sel := task("idle", "me", "m1")
	sel.Kind, sel.HotExtents = pb.MirrorKind_MIRROR_KIND_SELECTIVE, 12
	plan, _ = planTasks("me", []*pb.ReplicationTask{sel}, vols, peers, time.Second)
	if ms := plan["idle"]; len(ms) != 1 || ms[0].Mode != replicator.ModeSelective || ms[0].HotExtents != 12 {
		t.Fatalf("selective task planned as %+v", ms)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.task.GetResource()+"→"+p.task.GetTargetNode()+":"+p.reason)
	}
	wantProblems := []string{"disk→ghost:unknown_peer", "cache→m1:not_primary", "old→m1:not_primary",
		"nope→m1:no_volume", "disk→me:self_target"}
	if !slices.Equal(got, wantProblems) {
		t.Fatalf("problems %v, want %v", got, wantProblems)
	}
}

func TestReplicaSyncsAndAttach(t *testing.T) {
	now := time.Now()
	vols := []replicator.Status{
		{Name: "primary", Role: replicator.RolePrimary, Complete: true},
		{Name: "empty", Role: replicator.RoleMirror, Empty: true, Inconsistent: true},
		{Name: "copying", Role: replicator.RoleMirror, Inconsistent: true, FullActive: true},
		{Name: "synced", Role: replicator.RoleMirror, Complete: true, CycleAsOf: now.Add(-2 * time.Second), Lag: 2 * time.Second},
		// Completed before cycle times were recorded: freshness unknown.
		{Name: "legacy", Role: replicator.RoleMirror, Complete: true},
		// A selective copy serves once its hot extents committed.
		{Name: "hot", Role: replicator.RoleMirror, Selective: true, CycleAsOf: now.Add(-time.Second), Lag: time.Second},
		{Name: "hot-copying", Role: replicator.RoleMirror, Selective: true, Inconsistent: true, FullActive: true},
	}
	reps := replicaSyncs(vols)
	type rs struct {
		name string
		in   bool
		lag  time.Duration
	}
	var got []rs
	for _, r := range reps {
		got = append(got, rs{r.GetResource(), r.GetInSync(), time.Duration(r.GetLagNs())})
	}
	want := []rs{{"empty", false, 0}, {"copying", false, 0}, {"synced", true, 2 * time.Second}, {"legacy", false, 0},
		{"hot", true, time.Second}, {"hot-copying", false, 0}}
	if !slices.Equal(got, want) {
		t.Fatalf("replica syncs %v, want %v", got, want)
	}
	// Primaries report what each peer's change tracking still holds, in
	// bytes; mirrors report none.
	vols[0].BlockSize, vols[0].Dirty = 4096, map[string]uint64{"m2": 3, "m1": 0}
	vols[1].BlockSize, vols[1].Dirty = 4096, map[string]uint64{"m1": 9}
	backlogs := replicaBacklogs(vols)
	type bl struct {
		res, peer string
		n         uint64
	}
	var gotB []bl
	for _, b := range backlogs {
		gotB = append(gotB, bl{b.GetResource(), b.GetPeer(), b.GetPendingBytes()})
	}
	if wantB := []bl{{"primary", "m1", 0}, {"primary", "m2", 3 * 4096}}; !slices.Equal(gotB, wantB) {
		t.Fatalf("backlogs %v, want %v", gotB, wantB)
	}
	mh := []*pb.MirrorHealth{{Mirror: "a"}, {Mirror: "b"}}
	attachReplicas(mh, reps, backlogs)
	for _, m := range mh {
		if len(m.GetReplicas()) != len(reps) || m.GetReplicas()[2].GetResource() != "synced" || len(m.GetBacklogs()) != 2 {
			t.Fatalf("mirror %s carries %v and %v", m.GetMirror(), m.GetReplicas(), m.GetBacklogs())
		}
	}
}

// replNode starts a real replicator node on loopback from the agent's
// replication config and stops it when the test ends.
func replNode(t *testing.T, name string, r *Replication, ln net.Listener) *replicator.Node {
	t.Helper()
	if err := r.validate(); err != nil {
		t.Fatal(err)
	}
	n, err := replicator.NewNode(r.config(name, discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; n.Close() })
	return n
}

// replPair is a source node holding volume disk (256 KiB) as primary and
// a target node holding it as a mirror, replicating over mutual TLS on
// loopback.
type replPair struct {
	img            []byte
	srcImg, dstImg string
	srcCfg, dstCfg *Replication
	src, dst       *replicator.Node
}

// waitCopy waits until the target's image equals the source's.
func (p *replPair) waitCopy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(p.dstImg)
		if err == nil && string(b) == string(p.img) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy never arrived (%v); dynamic mirrors of the source %+v", err, p.src.DynamicMirrors("disk"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replNet gives each named node a certificate of one test CA, written
// under dir, and a listener on loopback.
func replNet(t *testing.T, dir string, names ...string) (map[string]TLSFiles, map[string]net.Listener) {
	t.Helper()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]TLSFiles{}
	lns := map[string]net.Listener{}
	for _, n := range names {
		leaf, err := ca.Issue(n, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pki.WriteLeaf(filepath.Join(dir, "tls"), n, ca, leaf)
		if err != nil {
			t.Fatal(err)
		}
		files[n] = TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
		if lns[n], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	return files, lns
}

// newReplPair starts both nodes; schedule is the source's schedule of its
// link to the target.
func newReplPair(t *testing.T, schedule string, edit ...func(src, dst *Replication)) *replPair {
	t.Helper()
	dir := t.TempDir()
	files, lns := replNet(t, dir, "src", "dst")
	img := make([]byte, 256<<10)
	for i := range img {
		img[i] = byte(i * 7)
	}
	srcImg, dstImg := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	if err := os.WriteFile(srcImg, img, 0o600); err != nil {
		t.Fatal(err)
	}
	srcCfg := &Replication{TLS: files["src"], TaskInterval: Duration(30 * time.Millisecond),
		Volumes: []VolumeCfg{{Name: "disk", Path: srcImg, Role: "primary"}},
		Peers:   []PeerCfg{{Name: "dst", Addr: lns["dst"].Addr().String(), Schedule: schedule}}}
	dstCfg := &Replication{TLS: files["dst"],
		Volumes: []VolumeCfg{{Name: "disk", Path: dstImg, Role: "mirror"}},
		Peers:   []PeerCfg{{Name: "src", Addr: lns["src"].Addr().String()}}}
	for _, f := range edit {
		f(srcCfg, dstCfg)
	}
	src := replNode(t, "src", srcCfg, lns["src"])
	dst := replNode(t, "dst", dstCfg, lns["dst"])

	return &replPair{img: img, srcImg: srcImg, dstImg: dstImg, srcCfg: srcCfg, dstCfg: dstCfg, src: src, dst: dst}
}

// TestApplyTasksReplicates: a desired state's replication tasks make the
// source node replicate to the target, the target reports the copy in
// sync with a lag, retiring the task stops the replication, and tasks the
// node cannot carry out are counted once per version without failing
// the version (its routing state is applied).
func TestApplyTasksReplicates(t *testing.T) {
	// Registered first, so it runs after the nodes' cleanups.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	p := newReplPair(t, "")
	img, dstImg, srcCfg, dstCfg, src, dst := p.img, p.dstImg, p.srcCfg, p.dstCfg, p.src, p.dst

	// The source agent, without a data plane: its routing state is only
	// compiled, which is what apply needs to accept a version.
	a := New(&Config{Node: "src", Replication: srcCfg, Controller: &ControllerCfg{Site: "eu"}}, "", discardLogger())
	a.repl = src
	cp := &controlPlane{a: a}
	errs := func(reason string) float64 { return testutil.ToFloat64(a.metrics.taskErrors.WithLabelValues(reason)) }

	// The target agent decapsulates mirror paris's address, so it speaks
	// for paris in its reports.
	b := New(&Config{Node: "dst", Replication: dstCfg, DecapAddresses: []string{"192.0.2.10"},
		Controller: &ControllerCfg{Site: "eu", Utilization: "none"}}, "", discardLogger())
	b.repl = dst
	bcp := &controlPlane{a: b}
	report := func() []*pb.ReplicaSync {
		t.Helper()
		mh := bcp.mirrorHealth()
		if len(mh) != 1 || mh[0].GetMirror() != "paris" {
			t.Fatalf("target speaks for %v, want paris", mh)
		}
		return mh[0].GetReplicas()
	}

	st := sampleProtoState()
	if err := bcp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	// Before any task the target holds nothing it could be routed to.
	if reps := report(); len(reps) != 1 || reps[0].GetResource() != "disk" || reps[0].GetInSync() {
		t.Fatalf("target before any task: %v", reps)
	}
	st.ReplicationTasks = []*pb.ReplicationTask{task("disk", "src", "dst"), task("disk", "src", "ghost"), task("nope", "src", "dst")}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatalf("version with unusable tasks NACKed: %v", err)
	}
	if a.compiled == nil || len(a.compiled.VIPs) != 2 {
		t.Fatalf("routing state not applied: %+v", a.compiled)
	}
	if got := src.DynamicMirrors("disk"); len(got) != 1 || got[0].Peer != "dst" || got[0].Interval != 30*time.Millisecond {
		t.Fatalf("dynamic mirrors %+v, want dst every 30ms", got)
	}
	if errs(TaskUnknownPeer) != 1 || errs(TaskNoVolume) != 1 {
		t.Fatalf("task errors: unknown_peer %v, no_volume %v; want 1 each", errs(TaskUnknownPeer), errs(TaskNoVolume))
	}
	// The same version again (a reconnect, the cache) is not counted twice.
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if errs(TaskUnknownPeer) != 1 {
		t.Fatalf("same version counted again: %v", errs(TaskUnknownPeer))
	}

	// The target reports the copy once it is complete, with a lag.
	var synced *pb.ReplicaSync
	deadline := time.Now().Add(10 * time.Second)
	for synced == nil {
		if time.Now().After(deadline) {
			t.Fatalf("target never reported in sync: %v", replicaSyncs(dst.Status()))
		}
		time.Sleep(10 * time.Millisecond)
		if reps := report(); len(reps) == 1 && reps[0].GetInSync() {
			synced = reps[0]
		}
	}
	if synced.GetResource() != "disk" || synced.GetLagNs() < 0 || time.Duration(synced.GetLagNs()) > 5*time.Second {
		t.Fatalf("in-sync report %v", synced)
	}
	got, err := os.ReadFile(dstImg)
	if err != nil || string(got) != string(img) {
		t.Fatalf("target image differs from the source (%v)", err)
	}

	// Version 10 drops the task: the replication stops.
	st = sampleProtoState()
	st.Version = 10
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if got := src.DynamicMirrors("disk"); len(got) != 0 {
		t.Fatalf("dynamic mirrors after the task was dropped: %+v", got)
	}
	// A cycle acknowledged just before the loop stopped may still be
	// applying at the target: wait until its copy stops changing.
	asOf := func() time.Time { return dst.Status()[0].CycleAsOf }
	var prev time.Time
	for {
		cur := asOf()
		if cur.Equal(prev) {
			break
		}
		prev = cur
		time.Sleep(60 * time.Millisecond)
	}
	before := report()[0]
	time.Sleep(200 * time.Millisecond)
	after := report()[0]
	if after.GetLagNs()-before.GetLagNs() < int64(150*time.Millisecond) {
		t.Fatalf("lag of a retired copy went from %v to %v, want it growing", time.Duration(before.GetLagNs()), time.Duration(after.GetLagNs()))
	}
}

func TestTaskMetricsLint(t *testing.T) {
	m := newMetrics(&Agent{})
	for _, c := range []prometheus.Collector{m.taskErrors, m.tasks, m.nextStart} {
		if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
			t.Fatalf("metric lint: %v %v", problems, err)
		}
	}
	for _, n := range []string{"edge_replication_task_errors_total", "edge_replication_tasks", "edge_replication_task_next_start_timestamp_seconds"} {
		if !slices.Contains(MetricNames(), n) {
			t.Fatalf("%s not among the agent's metric names", n)
		}
	}
}

// TestActiveTargets: the mirrors with weight in the edge's own region's
// routes or the wildcard route are probed at the active interval; a
// mirror used only by other regions, or at weight 0, is not.
func TestActiveTargets(t *testing.T) {
	c := &Compiled{DefaultRegion: 2, Routes: map[pmaps.RouteKey]map[pmaps.MirrorID]uint32{
		{Resource: 1, Region: 2}: {1: 3, 2: 1},
		{Resource: 1, Region: 3}: {3: 1},
		{Resource: 2, Region: 0}: {4: 1, 5: 0},
	}}
	var ts []probe.Target
	for m := uint32(1); m <= 6; m++ {
		ts = append(ts, probe.Target{Mirror: m, Kind: probe.KindUDP, Addr: fmt.Sprintf("192.0.2.%d:9461", m)})
	}
	var got []uint32
	for _, tg := range activeTargets(c, ts) {
		got = append(got, tg.Mirror)
	}
	if want := []uint32{1, 2, 4}; !slices.Equal(got, want) {
		t.Fatalf("active mirrors %v, want %v", got, want)
	}
}

// TestDeferTasks: tasks with a deadline whose start is ahead are taken
// out of the plan unless their copy already runs; the bytes planned are
// the copy's own (whole volume, hot extents, or the target's backlog).
func TestDeferTasks(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC) // a Monday, in the peak window
	links := func(peer string) linkPlan {
		if peer == "slow" {
			return linkPlan{sched: mustSchedule(t, "10MB", time.UTC)}
		}
		return linkPlan{sched: mustSchedule(t, "100MB; * 08:00-20:00 10MB", time.UTC)}
	}
	// 16 GiB in 4 KiB blocks; m3's copy is 1000 blocks behind.
	vols := []replicator.Status{{Name: "disk", Role: replicator.RolePrimary, Complete: true, BlockSize: 4096, Blocks: 4 << 20,
		Dirty: map[string]uint64{"m3": 1000}}}
	peers := map[string]bool{"m1": true, "m2": true, "m3": true, "m4": true, "m5": true, "slow": true}
	dl := func(tk *pb.ReplicationTask, d time.Time, kind pb.MirrorKind) *pb.ReplicationTask {
		tk.DeadlineUnixNano, tk.Kind = d.UnixNano(), kind
		return tk
	}
	evening := time.Date(2026, 3, 2, 21, 0, 0, 0, time.UTC)
	sel := dl(task("disk", "me", "m4"), evening, pb.MirrorKind_MIRROR_KIND_SELECTIVE)
	sel.HotExtents = 10
	tasks := []*pb.ReplicationTask{
		task("disk", "me", "m1"), // no deadline: at once
		dl(task("disk", "me", "m2"), evening, pb.MirrorKind_MIRROR_KIND_FULL),  // 16 GiB: waits for 20:00
		dl(task("disk", "me", "m3"), evening, pb.MirrorKind_MIRROR_KIND_DELTA), // 4 MB behind: also waits
		sel,
		dl(task("disk", "me", "m5"), evening, pb.MirrorKind_MIRROR_KIND_FULL),    // already running: kept
		dl(task("disk", "me", "slow"), evening, pb.MirrorKind_MIRROR_KIND_FULL),  // one rate all day: now
		dl(task("disk", "me", "ghost"), evening, pb.MirrorKind_MIRROR_KIND_FULL), // refused by planTasks
		dl(task("disk", "other", "m1"), evening, pb.MirrorKind_MIRROR_KIND_FULL), // another node's
	}
	plan, _ := planTasks("me", tasks, vols, peers, time.Second)
	running := func(vol string, mc replicator.MirrorConfig) bool { return vol == "disk" && mc.Peer == "m5" }
	starts := deferTasks(now, "me", tasks, plan, vols, running, links)

	var kept []string
	for _, mc := range plan["disk"] {
		kept = append(kept, mc.Peer)
	}
	if want := []string{"m1", "m5", "slow"}; !slices.Equal(kept, want) {
		t.Fatalf("mirrors started %v, want %v", kept, want)
	}
	type dec struct {
		target string
		bytes  int64
		held   bool
		start  time.Time
	}
	var got []dec
	for _, s := range starts {
		got = append(got, dec{s.target, s.bytes, s.held, s.choice.Start})
	}
	off := time.Date(2026, 3, 2, 20, 0, 0, 0, time.UTC)
	want := []dec{{"m2", 16 << 30, true, off}, {"m3", 1000 * 4096, true, off}, {"m4", 10 * hotExtentBytes, true, off},
		{"m5", 16 << 30, false, off}, {"slow", 16 << 30, false, now}}
	if !slices.Equal(got, want) {
		t.Fatalf("decisions\n%v\nwant\n%v", got, want)
	}
}

// TestDeferTasksMeasuredRate: a copy planned on a link measured slower
// than configured starts earlier than on the configured rate, at once
// when the measured rate makes peak and off-peak alike; a measurement
// that is stale, bound by the schedule, above the configured rate or of
// another peer leaves the configured rate.
func TestDeferTasksMeasuredRate(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC) // a Monday, in the peak window
	sched := mustSchedule(t, "100MB; * 08:00-20:00 10MB", time.UTC)
	deadline := time.Date(2026, 3, 2, 20, 10, 0, 0, time.UTC)
	off := time.Date(2026, 3, 2, 20, 0, 0, 0, time.UTC)
	const size = 16 << 30
	vols := []replicator.Status{{Name: "disk", Role: replicator.RolePrimary, Complete: true, BlockSize: 4096, Blocks: size / 4096}}
	fresh := now.Add(-time.Minute)
	// 12 MB/s: the 10 minutes off-peak carry 7.2 GB, the rest goes at peak.
	between := ChooseStart(sched, 12e6, now, deadline, size).Start
	if !between.After(now) || !between.Before(off) {
		t.Fatalf("setup: start at 12 MB/s %v, want between %v and %v", between, now, off)
	}
	for _, tc := range []struct {
		name     string
		measured map[string]replicator.LinkRate
		start    time.Time
		rate     int64 // planned; 0: the default
		held     bool
	}{
		{"none", nil, off, 0, true},
		{"slower", map[string]replicator.LinkRate{"m2": {Rate: 12e6, Updated: fresh}}, between, 12e6, true},
		{"slower than peak", map[string]replicator.LinkRate{"m2": {Rate: 1e6, Updated: fresh}}, now, 1e6, false},
		{"stale", map[string]replicator.LinkRate{"m2": {Rate: 1e6, Updated: now.Add(-MeasuredRateMaxAge - time.Second)}}, off, 0, true},
		{"schedule bound", map[string]replicator.LinkRate{"m2": {Rate: 1e6, Updated: fresh, ScheduleBound: true}}, off, 0, true},
		{"faster than configured", map[string]replicator.LinkRate{"m2": {Rate: 2 * DefaultLinkRate, Updated: fresh}}, off, 0, true},
		{"another peer", map[string]replicator.LinkRate{"m3": {Rate: 1e6, Updated: fresh}}, off, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tasks := []*pb.ReplicationTask{task("disk", "me", "m2")}
			tasks[0].DeadlineUnixNano = deadline.UnixNano()
			plan, _ := planTasks("me", tasks, vols, map[string]bool{"m2": true}, time.Second)
			links := func(peer string) linkPlan { return withMeasured(linkPlan{sched: sched}, tc.measured, peer, now) }
			starts := deferTasks(now, "me", tasks, plan, vols, func(string, replicator.MirrorConfig) bool { return false }, links)
			if len(starts) != 1 {
				t.Fatalf("decisions %+v, want one", starts)
			}
			ts := starts[0]
			if !ts.choice.Start.Equal(tc.start) || ts.held != tc.held || ts.link.rate != tc.rate || ts.link.measured != (tc.rate != 0) || !ts.choice.OnTime {
				t.Fatalf("start %v held %v link %+v on time %v; want start %v held %v rate %d", ts.choice.Start, ts.held, ts.link,
					ts.choice.OnTime, tc.start, tc.held, tc.rate)
			}
			if ts.link.configured != DefaultLinkRate {
				t.Errorf("configured rate %d, want the default %d", ts.link.configured, DefaultLinkRate)
			}
		})
	}
	// Through the config: link_rate is the rate a measurement must beat.
	r := &Replication{Peers: []PeerCfg{{Name: "m2", Addr: "10.0.0.2:7400", LinkRate: "100Mbit"}}}
	for _, tc := range []struct {
		measured int64
		want     int64
	}{{20e6, 12_500_000}, {5e6, 5e6}} {
		l := peerLinks(r, map[string]replicator.LinkRate{"m2": {Rate: tc.measured, Updated: fresh}}, now)("m2")
		if l.rate != tc.want || l.configured != 12_500_000 {
			t.Errorf("measured %d under link_rate 100Mbit: planned %+v, want rate %d", tc.measured, l, tc.want)
		}
	}
}

func TestTaskBytes(t *testing.T) {
	s := replicator.Status{BlockSize: 4096, Blocks: 1000, Dirty: map[string]uint64{"m1": 10, "big": 5000}}
	for _, tc := range []struct {
		task *pb.ReplicationTask
		st   bool
		want int64
	}{
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_FULL, TargetNode: "m1"}, true, 4096000},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_DELTA, TargetNode: "m1"}, true, 40960},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_DELTA, TargetNode: "big"}, true, 4096000},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_DELTA, TargetNode: "untracked"}, true, 4096000},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_SELECTIVE, HotExtents: 0}, true, 0},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_SELECTIVE, HotExtents: 9}, true, 4096000},
		{&pb.ReplicationTask{Kind: pb.MirrorKind_MIRROR_KIND_DELTA, CopyBytes: 77}, false, 77},
	} {
		if got := taskBytes(tc.task, s, tc.st); got != tc.want {
			t.Errorf("%v: %d bytes, want %d", tc.task, got, tc.want)
		}
	}
}

// TestHeldTaskStartsWhenTheScheduleChanges: a task whose deadline lets it
// wait for off-peak bandwidth is held (no replication, the gauge says
// so, a timer is armed); a reloaded schedule without a peak plans it
// again and it starts, and the copy arrives.
func TestHeldTaskStartsWhenTheScheduleChanges(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	// Peak (1 MB/s) from this minute for two hours, unlimited after: the
	// 256 KiB copy sends its bytes at peak if it starts now.
	now := time.Now()
	from := now.Hour()*60 + now.Minute()
	to := (from + 120) % 1440
	peak := fmt.Sprintf("unlimited; * %02d:%02d-%02d:%02d 1MB", from/60, from%60, to/60, to%60)
	p := newReplPair(t, peak)
	cp := taskAgent(t, "src", p.srcCfg, p.src)
	a := cp.a

	st := sampleProtoState()
	tk := task("disk", "src", "dst")
	tk.DeadlineUnixNano = now.Add(3 * time.Hour).UnixNano()
	st.ReplicationTasks = []*pb.ReplicationTask{tk}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if got := p.src.DynamicMirrors("disk"); len(got) != 0 {
		t.Fatalf("held task replicating: %+v", got)
	}
	held := testutil.ToFloat64(a.metrics.tasks.WithLabelValues("held"))
	next := testutil.ToFloat64(a.metrics.nextStart)
	cp.mu.Lock()
	armed := cp.taskTimer != nil
	cp.mu.Unlock()
	if held != 1 || !armed || next < float64(now.Add(119*time.Minute).Unix()) || next > float64(now.Add(121*time.Minute).Unix()) {
		t.Fatalf("held %v, timer armed %v, next start %v: want 1 held until the peak ends", held, armed, time.Unix(int64(next), 0))
	}

	// The operator drops the peak: the task is planned again and starts.
	old := a.cfg
	cfg := *old
	r := *old.Replication
	r.Peers = []PeerCfg{{Name: "dst", Addr: old.Replication.Peers[0].Addr}}
	cfg.Replication = &r
	a.mu.Lock()
	a.cfg = &cfg
	a.mu.Unlock()
	a.reloadReplication(old, &cfg)
	if got := p.src.DynamicMirrors("disk"); len(got) != 1 || got[0].Peer != "dst" {
		t.Fatalf("after the schedule changed: dynamic mirrors %+v", got)
	}
	if held, started := testutil.ToFloat64(a.metrics.tasks.WithLabelValues("held")), testutil.ToFloat64(a.metrics.tasks.WithLabelValues("started")); held != 0 || started != 1 {
		t.Fatalf("held %v started %v", held, started)
	}
	p.waitCopy(t)
}

// TestHeldTaskStartsAtItsStart: a task held until the end of a peak
// window starts when the timer fires at that boundary, and its copy
// arrives. The plan's clock runs 12 h ahead of the real one, with the
// boundary 100 ms ahead on it, so the peak minute is nowhere near the
// replicator's real-time throttle.
func TestHeldTaskStartsAtItsStart(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	boundary := time.Now().Add(12 * time.Hour).Truncate(time.Minute).Add(time.Minute)
	b := boundary.In(time.Local)
	from := (b.Hour()*60 + b.Minute() + 1439) % 1440
	peak := fmt.Sprintf("unlimited; * %02d:%02d-%02d:%02d 1MB", from/60, from%60, b.Hour(), b.Minute())
	p := newReplPair(t, peak)
	a := New(&Config{Node: "src", Replication: p.srcCfg, Controller: &ControllerCfg{Site: "eu"}}, "", discardLogger())
	a.repl = p.src
	var offset time.Duration
	cp := &controlPlane{a: a, clock: func() time.Time { return time.Now().Add(offset) }}
	t.Cleanup(cp.stopTasks)

	st := sampleProtoState()
	tk := task("disk", "src", "dst")
	tk.DeadlineUnixNano = boundary.Add(time.Hour).UnixNano()
	st.ReplicationTasks = []*pb.ReplicationTask{tk}
	// The node's clock reads 500 ms before the boundary now, right before
	// the apply (the replicators' setup above can take longer than that
	// on a loaded machine).
	offset = time.Until(boundary.Add(-500 * time.Millisecond))
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}
	if got := p.src.DynamicMirrors("disk"); len(got) != 0 {
		t.Fatalf("held task replicating before its start: %+v", got)
	}
	cp.mu.Lock()
	start := cp.starts[startKey{"disk", "dst"}]
	cp.mu.Unlock()
	if !start.held || !start.choice.Start.Equal(boundary) || start.bytes != int64(len(p.img)) {
		t.Fatalf("decision %+v: want held until %v, %d bytes", start, boundary, len(p.img))
	}
	p.waitCopy(t)
	if held := testutil.ToFloat64(a.metrics.tasks.WithLabelValues("held")); held != 0 {
		t.Fatalf("still %v held after the start", held)
	}
}

// TestReloadAddsPeer: a task to a node the replicator has no peer for
// does nothing; a reload that adds the peer gives it to the running
// replicator, the held task is applied again and the copy arrives.
func TestReloadAddsPeer(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	var peer PeerCfg
	p := newReplPair(t, "", func(src, _ *Replication) { peer, src.Peers = src.Peers[0], nil })
	cp := taskAgent(t, "src", p.srcCfg, p.src)
	a := cp.a

	st := sampleProtoState()
	st.ReplicationTasks = []*pb.ReplicationTask{task("disk", "src", "dst")}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		t.Fatalf("a task to an unknown peer failed the version: %v", err)
	}
	if got := p.src.DynamicMirrors("disk"); len(got) != 0 {
		t.Fatalf("replicating to a peer the node does not know: %+v", got)
	}

	old := a.cfg
	cfg := *old
	r := *old.Replication
	r.Peers = []PeerCfg{peer}
	cfg.Replication = &r
	if err := r.reloadable(old.Replication); err != nil {
		t.Fatalf("adding a peer refused: %v", err)
	}
	a.mu.Lock()
	a.cfg = &cfg
	a.mu.Unlock()
	a.reloadReplication(old, &cfg)
	if got := p.src.DynamicMirrors("disk"); len(got) != 1 || got[0].Peer != "dst" {
		t.Fatalf("after the reload added the peer: dynamic mirrors %+v", got)
	}
	p.waitCopy(t)
}

// TestReplicationReloadable: what a reload may change in a running
// replicator (new peers, schedules, link rates, the task interval) and
// what it must refuse, naming the field.
func TestReplicationReloadable(t *testing.T) {
	base := func() *Replication {
		return &Replication{Listen: "127.0.0.1:7400", TLS: TLSFiles{CA: "ca", Cert: "c", Key: "k"},
			Volumes: []VolumeCfg{{Name: "disk", Path: "/v/disk", Role: "primary", Mirrors: []MirrorCfg{{Peer: "b"}}}},
			Peers:   []PeerCfg{{Name: "b", Addr: "10.0.0.2:7400"}}}
	}
	for _, tc := range []struct {
		name    string
		old     *Replication
		edit    func(r *Replication) *Replication
		wantErr string
	}{
		{"unchanged", base(), func(r *Replication) *Replication { return r }, ""},
		{"both off", nil, func(*Replication) *Replication { return nil }, ""},
		{"new peer", base(), func(r *Replication) *Replication {
			r.Peers = append(r.Peers, PeerCfg{Name: "c", Addr: "10.0.0.3:7400"})
			return r
		}, ""},
		{"schedule and link rate", base(), func(r *Replication) *Replication {
			r.Peers[0].Schedule, r.Peers[0].LinkRate = "10MB", "1Gbit"
			return r
		}, ""},
		{"task interval", base(), func(r *Replication) *Replication { r.TaskInterval = Duration(time.Second); return r }, ""},
		{"enable", nil, func(r *Replication) *Replication { return r }, "replication: enabling"},
		{"disable", base(), func(*Replication) *Replication { return nil }, "replication: enabling"},
		{"listen", base(), func(r *Replication) *Replication { r.Listen = "0.0.0.0:7400"; return r }, "replication.listen"},
		{"tls", base(), func(r *Replication) *Replication { r.TLS.Cert = "c2"; return r }, "replication.tls"},
		{"site", base(), func(r *Replication) *Replication { r.Site = 7; return r }, "replication.site"},
		{"write uids", base(), func(r *Replication) *Replication { r.WriteUIDs = []uint32{0, 1000}; return r }, "replication.write_uids"},
		{"volume dir", base(), func(r *Replication) *Replication { r.VolumeDir = "/v/placed"; return r }, "replication.volume_dir"},
		{"volume mirror", base(), func(r *Replication) *Replication { r.Volumes[0].Mirrors = nil; return r }, "replication.volumes"},
		{"peer removed", base(), func(r *Replication) *Replication { r.Peers = nil; return r }, `peer "b" (peers[0] before) removed`},
		{"peer addr", base(), func(r *Replication) *Replication { r.Peers[0].Addr = "10.0.0.9:7400"; return r }, `peer "b": addr`},
		{"peer rate control", base(), func(r *Replication) *Replication {
			r.Peers[0].RateControl = &RateControlCfg{}
			return r
		}, `peer "b": rate_control`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.edit(base()).reloadable(tc.old)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}

// TestTargetCreatesPlacedVolume: a mirror host with replication.volume_dir
// and no declared volume receives a placed copy: the task naming it as
// target creates the mirror volume (writable only by the task's source),
// the source's push fills it byte for byte, and the host reports it. A
// host without volume_dir counts the task as not carried out.
func TestTargetCreatesPlacedVolume(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	var volDir string
	p := newReplPair(t, "", func(_, dst *Replication) {
		volDir = filepath.Join(filepath.Dir(dst.Volumes[0].Path), "placed")
		dst.Volumes, dst.VolumeDir = nil, volDir
	})
	p.dstImg = filepath.Join(volDir, "disk.img")
	src, dst := taskAgent(t, "src", p.srcCfg, p.src), taskAgent(t, "dst", p.dstCfg, p.dst)

	st := sampleProtoState()
	tk := task("disk", "src", "dst")
	tk.CopyBytes = uint64(len(p.img))
	st.ReplicationTasks = []*pb.ReplicationTask{tk}
	for _, cp := range []*controlPlane{dst, src} {
		if err := cp.apply(st.GetVersion(), st); err != nil {
			t.Fatal(err)
		}
	}
	if n := testutil.ToFloat64(dst.a.metrics.taskErrors.WithLabelValues(TaskNoTargetVolume)); n != 0 {
		t.Fatalf("%v tasks not carried out on the target", n)
	}
	p.waitCopy(t)
	var got *replicator.Status
	for _, s := range p.dst.Status() {
		if s.Name == "disk" {
			got = &s
		}
	}
	if got == nil || got.Role != replicator.RoleMirror || got.Path != p.dstImg {
		t.Fatalf("target volumes %+v: want a mirror volume disk at %s", p.dst.Status(), p.dstImg)
	}
	// Applying the version again creates nothing twice.
	if err := dst.apply(st.GetVersion(), st); err != nil {
		t.Fatal(err)
	}

	// A host without volume_dir cannot receive it: counted, not fatal.
	r := *p.dstCfg
	r.VolumeDir = ""
	other := taskAgent(t, "dst", &r, p.dst)
	st2 := sampleProtoState()
	tk2 := task("other-disk", "src", "dst")
	st2.ReplicationTasks = []*pb.ReplicationTask{tk2}
	if err := other.apply(st2.GetVersion(), st2); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(other.a.metrics.taskErrors.WithLabelValues(TaskNoTargetVolume)); n != 1 {
		t.Fatalf("no_target_volume counted %v times, want 1", n)
	}
}

// originMove is three replication nodes for a copy placed on dst whose
// origin moves: src holds volume disk (64 KiB) as primary, src2 holds a
// full copy of it pushed from src, as a copy an operator promotes does,
// and dst, with volume_dir and no volume, receives the copy its tasks
// place. Each node runs the agent's task control plane.
type originMove struct {
	img            []byte
	dstImg         string
	src, src2, dst *replicator.Node
	cps            map[string]*controlPlane
	kind           pb.MirrorKind
}

// newOriginMove starts the three nodes; kind is the placed copy's.
func newOriginMove(t *testing.T, kind pb.MirrorKind) *originMove {
	t.Helper()
	dir := t.TempDir()
	files, lns := replNet(t, dir, "src", "src2", "dst")
	peer := func(n string) PeerCfg { return PeerCfg{Name: n, Addr: lns[n].Addr().String()} }
	img := make([]byte, 64<<10)
	for i := range img {
		img[i] = byte(i * 13)
	}
	srcImg, dstImg := filepath.Join(dir, "src.img"), filepath.Join(dir, "placed", "disk.img")
	if err := os.WriteFile(srcImg, img, 0o600); err != nil {
		t.Fatal(err)
	}
	fast := Duration(30 * time.Millisecond)
	srcCfg := &Replication{TLS: files["src"], TaskInterval: fast,
		Volumes: []VolumeCfg{{Name: "disk", Path: srcImg, Role: "primary"}}, Peers: []PeerCfg{peer("dst"), peer("src2")}}
	src2Cfg := &Replication{TLS: files["src2"], TaskInterval: fast,
		Volumes: []VolumeCfg{{Name: "disk", Path: filepath.Join(dir, "src2.img"), Role: "mirror"}}, Peers: []PeerCfg{peer("dst")}}
	dstCfg := &Replication{TLS: files["dst"], VolumeDir: filepath.Dir(dstImg), Peers: []PeerCfg{peer("src"), peer("src2")}}
	src, src2, dst := replNode(t, "src", srcCfg, lns["src"]), replNode(t, "src2", src2Cfg, lns["src2"]), replNode(t, "dst", dstCfg, lns["dst"])
	if _, err := src.Push(context.Background(), "disk", "src2", replicator.PushOptions{Mode: replicator.ModeFull}); err != nil {
		t.Fatal(err)
	}
	cps := map[string]*controlPlane{"src": taskAgent(t, "src", srcCfg, src), "src2": taskAgent(t, "src2", src2Cfg, src2),
		"dst": taskAgent(t, "dst", dstCfg, dst)}
	return &originMove{img: img, dstImg: dstImg, src: src, src2: src2, dst: dst, cps: cps, kind: kind}
}

// apply applies version, whose one task copies disk from source to dst,
// on every node, the target first.
func (m *originMove) apply(t *testing.T, version uint64, source string) {
	t.Helper()
	st := sampleProtoState()
	st.Version = version
	tk := task("disk", source, "dst")
	tk.Kind = m.kind
	st.ReplicationTasks = []*pb.ReplicationTask{tk}
	for _, n := range []string{"dst", "src", "src2"} {
		if err := m.cps[n].apply(version, st); err != nil {
			t.Fatal(err)
		}
	}
}

// promote makes src2's copy the primary and returns it for writing.
func (m *originMove) promote(t *testing.T) *replicator.Volume {
	t.Helper()
	if _, err := m.src2.Promote("disk", 0); err != nil {
		t.Fatal(err)
	}
	v2, err := m.src2.Volume("disk")
	if err != nil {
		t.Fatal(err)
	}
	return v2
}

// TestPlacedCopyFollowsNewSource: a copy placed here takes sessions only
// from its task's source. When the controller moves the resource's origin
// (the operator promoted another copy, src2, and the task now comes from
// it), the copy must take src2's cycles without an agent restart, and
// refuse the old source, which no task names any more.
func TestPlacedCopyFollowsNewSource(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	m := newOriginMove(t, pb.MirrorKind_MIRROR_KIND_FULL)
	waitImage := func(want []byte) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, err := os.ReadFile(m.dstImg)
			if err == nil && string(b) == string(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the placed copy does not hold the source's data (%v)", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	m.apply(t, 9, "src")
	waitImage(m.img)

	v2 := m.promote(t)
	want := slices.Clone(m.img)
	copy(want[4096:8192], strings.Repeat("new origin ", 373))
	if _, err := v2.WriteAt(want[4096:8192], 4096); err != nil {
		t.Fatal(err)
	}
	m.apply(t, 10, "src2")
	waitImage(want)
	if n := testutil.ToFloat64(m.cps["dst"].a.metrics.taskErrors.WithLabelValues(TaskRejected)); n != 0 {
		t.Fatalf("%v tasks rejected on the target", n)
	}
	// The old source is no task's any more.
	if _, err := m.src.Push(context.Background(), "disk", "dst", replicator.PushOptions{}); !errors.Is(err, replicator.ErrUnauthorized) {
		t.Fatalf("push from the former source: %v, want ErrUnauthorized", err)
	}
}

// TestPlacedSelectiveCopyFollowsNewSource: a selective copy placed here
// reads the blocks it lacks through from its task's source. When the
// controller moves the resource's origin to src2 (the operator promoted
// it), later read-throughs must go to src2, not to src, which still
// holds the deposed data and may be retired.
func TestPlacedSelectiveCopyFollowsNewSource(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	m := newOriginMove(t, pb.MirrorKind_MIRROR_KIND_SELECTIVE)
	ctx := context.Background()
	status := func() replicator.Status {
		for _, s := range m.dst.Status() {
			if s.Name == "disk" {
				return s
			}
		}
		return replicator.Status{}
	}
	m.apply(t, 9, "src")
	deadline := time.Now().Add(10 * time.Second)
	for st := status(); !st.Selective || st.Inconsistent || st.FullActive; st = status() {
		if time.Now().After(deadline) {
			t.Fatalf("the selective copy was not received: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 4096)
	if err := m.dst.Read(ctx, "disk", buf, 0); err != nil || string(buf) != string(m.img[:4096]) {
		t.Fatalf("read-through from src: %v, or wrong bytes", err)
	}

	v2 := m.promote(t)
	moved := []byte(strings.Repeat("new origin ", 373)[:4096])
	if _, err := v2.WriteAt(moved, 8192); err != nil {
		t.Fatal(err)
	}
	m.apply(t, 10, "src2")
	if got := status().Upstream; got != "src2" {
		t.Errorf("upstream %q after the origin moved, want src2", got)
	}
	if err := m.dst.Read(ctx, "disk", buf, 8192); err != nil {
		t.Fatal(err)
	}
	if string(buf) != string(moved) {
		t.Fatal("the placed copy read through from the former origin, not from the new one")
	}
	for _, r := range []string{TaskRejected, TaskUnknownPeer} {
		if n := testutil.ToFloat64(m.cps["dst"].a.metrics.taskErrors.WithLabelValues(r)); n != 0 {
			t.Errorf("%v tasks counted %s on the target", n, r)
		}
	}
}

// TestUpstreamTask: which task's source a selective placed copy reads
// through from when a version names several.
func TestUpstreamTask(t *testing.T) {
	at := func(source string, placed int64) *pb.ReplicationTask {
		tk := task("disk", source, "dst")
		tk.PlacedUnixNano = placed
		return tk
	}
	for _, c := range []struct {
		name    string
		tasks   []*pb.ReplicationTask
		current string
		want    string
	}{
		{"one source", []*pb.ReplicationTask{at("b", 1)}, "a", "b"},
		{"current still named", []*pb.ReplicationTask{at("b", 2), at("a", 1)}, "a", "a"},
		{"newest placement", []*pb.ReplicationTask{at("a", 1), at("c", 3), at("b", 2)}, "", "c"},
		{"newest placement, current gone", []*pb.ReplicationTask{at("a", 1), at("c", 3)}, "x", "c"},
		{"ties by name", []*pb.ReplicationTask{at("c", 1), at("b", 1)}, "", "b"},
	} {
		if got := upstreamTask(c.tasks, c.current).GetSourceNode(); got != c.want {
			t.Errorf("%s: upstream %s, want %s", c.name, got, c.want)
		}
	}
}

func TestVolumeFileNameAndSpace(t *testing.T) {
	for name, ok := range map[string]bool{"disk": true, "vm-9.raw": true, "": false, ".": false, "..": false, ".hidden": false, "a/b": false, `a\b`: false} {
		if volumeFileName(name) != ok {
			t.Errorf("volumeFileName(%q) = %v", name, !ok)
		}
	}
	dir := filepath.Join(t.TempDir(), "v")
	if err := enoughSpace(dir, 1); err != nil {
		t.Fatalf("one byte: %v", err)
	}
	if err := enoughSpace(dir, 1<<62); err == nil || !strings.Contains(err.Error(), "bytes free") {
		t.Fatalf("an exabyte copy: %v", err)
	}
}

// taskAgent is an agent of node without a data plane (its routing state is
// only compiled, which is all apply needs) running replicator n, with its
// control plane; its task timers stop with the test.
func taskAgent(t *testing.T, node string, r *Replication, n *replicator.Node) *controlPlane {
	t.Helper()
	a := New(&Config{Node: node, Replication: r, Controller: &ControllerCfg{Site: "eu"}}, "", discardLogger())
	a.repl = n
	cp := &controlPlane{a: a}
	a.cp = cp
	t.Cleanup(cp.stopTasks)
	return cp
}

// TestRetryTasksDoesNotReapplyAnOlderVersion: the task timer (or a config
// reload) calls retryTasks, which reads the last version's tasks and then
// waits for taskMu. If a new version's applyTasks holds taskMu at that
// moment, retryTasks must not apply the tasks it read (the older version's)
// over the newer version's once it gets the lock.
func TestRetryTasksDoesNotReapplyAnOlderVersion(t *testing.T) {
	p := newReplPair(t, "")
	cp := taskAgent(t, "src", p.srcCfg, p.src)

	// Version 9 places a copy of disk on dst.
	v1 := sampleProtoState()
	v1.ReplicationTasks = []*pb.ReplicationTask{task("disk", "src", "dst")}
	if err := cp.apply(v1.GetVersion(), v1); err != nil {
		t.Fatal(err)
	}
	if got := p.src.DynamicMirrors("disk"); len(got) != 1 {
		t.Fatalf("version 9: dynamic mirrors %+v, want dst", got)
	}

	// Version 10 retires it. While its applyTasks holds taskMu (inside the
	// clock call), the task timer fires: retryTasks reads version 9's
	// tasks and blocks on taskMu.
	var armed atomic.Bool
	retryDone := make(chan struct{})
	cp.clock = func() time.Time {
		if armed.CompareAndSwap(true, false) {
			go func() { defer close(retryDone); cp.retryTasks() }()
			waitBlockedInRetry(t)
		}
		return time.Now()
	}
	v2 := sampleProtoState()
	v2.Version = 10
	armed.Store(true)
	if err := cp.apply(v2.GetVersion(), v2); err != nil {
		t.Fatal(err)
	}
	<-retryDone

	cp.mu.Lock()
	ver := cp.taskVersion
	cp.mu.Unlock()
	if got := p.src.DynamicMirrors("disk"); len(got) != 0 || ver != 10 {
		t.Fatalf("after version 10 retired the copy: tasks of version %d in force, dynamic mirrors %+v", ver, got)
	}
}

// waitBlockedInRetry waits until a goroutine running retryTasks waits for
// a mutex inside applyTasks.
func waitBlockedInRetry(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "retryTasks") && strings.Contains(g, "sync.(*Mutex).Lock") {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Error("retryTasks never blocked")
}
