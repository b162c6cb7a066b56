package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

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

// TestApplyTasksReplicates: a desired state's replication tasks make the
// source node replicate to the target, the target reports the copy in
// sync with a lag, retiring the task stops the replication, and tasks the
// node cannot carry out are counted once per version without failing
// the version (its routing state is applied).
func TestApplyTasksReplicates(t *testing.T) {
	// Registered first, so it runs after the nodes' cleanups.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]TLSFiles{}
	for _, n := range []string{"src", "dst"} {
		leaf, err := ca.Issue(n, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pki.WriteLeaf(filepath.Join(dir, "tls"), n, ca, leaf)
		if err != nil {
			t.Fatal(err)
		}
		files[n] = TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	lns := map[string]net.Listener{}
	for _, n := range []string{"src", "dst"} {
		if lns[n], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
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
		Peers:   []PeerCfg{{Name: "dst", Addr: lns["dst"].Addr().String()}}}
	dstCfg := &Replication{TLS: files["dst"],
		Volumes: []VolumeCfg{{Name: "disk", Path: dstImg, Role: "mirror"}},
		Peers:   []PeerCfg{{Name: "src", Addr: lns["src"].Addr().String()}}}
	src := replNode(t, "src", srcCfg, lns["src"])
	dst := replNode(t, "dst", dstCfg, lns["dst"])

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
	if problems, err := testutil.CollectAndLint(m.taskErrors); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}
	if !slices.Contains(MetricNames(), "edge_replication_task_errors_total") {
		t.Fatal("task error metric not among the agent's metric names")
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
