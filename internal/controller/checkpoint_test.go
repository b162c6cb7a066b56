package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/forecast"
)

// A manifest whose size field is corrupt (here 2^40) is refused with an
// error, without reserving the size it claims before the chunks are
// counted.
func TestJoinChunksCorruptSizeRefused(t *testing.T) {
	chunk := []byte("one small chunk")
	sum := sha256.Sum256(chunk)
	pfx := "p-forecast/snap/c/00000000000000000001/"
	man := &pb.ForecastManifest{Generation: 1, Chunks: 1, SizeBytes: 1 << 40, Sha256: sum[:]}
	kvs := []*mvccpb.KeyValue{{Key: []byte(pfx + "000000"), Value: chunk}}
	if _, err := joinChunks(man, kvs, pfx); err == nil {
		t.Fatal("a manifest claiming 1 TiB for 15 bytes was accepted")
	}
	man.SizeBytes = uint64(len(chunk))
	if b, err := joinChunks(man, kvs, pfx); err != nil || string(b) != string(chunk) {
		t.Fatalf("good manifest: %q, %v", b, err)
	}
}

// A leader that crashed while writing the chunks of generation G leaves
// them behind; when its successor picks the same generation (generations
// are sequential once a manifest's came from a clock ahead of the
// successor's), the successor's own checkpoint must still restore:
// leftover chunks beyond its count must not make it unreadable.
func TestCheckpointIgnoresStaleChunksOfItsGeneration(t *testing.T) {
	cli := etcdClient(t)
	t.Cleanup(func() { cli.Close() })
	prefix := testPrefix(t)
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: prefix, ReportInterval: 100 * time.Millisecond, Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second}}, cli)
	if err != nil {
		t.Fatal(err)
	}
	f, st, ctx := c.fc, c.store, context.Background()
	fr, err := cli.Put(ctx, prefix+"fence", "r1")
	if err != nil {
		t.Fatal(err)
	}
	fn := fence{key: prefix + "fence", rev: fr.Header.Revision}
	f.mu.Lock()
	defer f.mu.Unlock()

	// Some learnt state: one series, a few closed buckets.
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	for b := 0; b < 5; b++ {
		start := t0.Add(time.Duration(b) * time.Hour)
		if _, err := f.eng.Ingest([]forecast.AccessSummary{{Resource: "disk", Region: "eu", Start: start, NewFlows: 10}}); err != nil {
			t.Fatal(err)
		}
		if err := f.eng.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	f.next = t0.Add(5 * time.Hour).Unix()

	// The manifest was written by a leader whose clock ran a day ahead.
	ahead := uint64(time.Now().Add(24 * time.Hour).UnixNano())
	f.gen = ahead
	if err := f.checkpoint(ctx, fn); err != nil {
		t.Fatal(err)
	}
	if f.gen != ahead+1 {
		t.Fatalf("generation %d, want %d", f.gen, ahead+1)
	}
	// The next leader crashed after writing three chunks of generation
	// ahead+2, before its manifest.
	for i := 0; i < 3; i++ {
		if _, err := cli.Put(ctx, st.fkey(chunkKey(ahead+2, i)), "stale chunk of a crashed leader"); err != nil {
			t.Fatal(err)
		}
	}
	// Its successor restores the manifest's checkpoint and checkpoints
	// (generation ahead+2 again: its clock is behind the manifest's).
	if err := f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.m.fcRestores.WithLabelValues("etcd")); got != 1 {
		t.Fatalf("first restore: %v from etcd", got)
	}
	if err := f.checkpoint(ctx, fn); err != nil {
		t.Fatal(err)
	}
	if f.gen != ahead+2 {
		t.Fatalf("generation %d, want %d", f.gen, ahead+2)
	}
	// A failover now must restore that checkpoint.
	if err := f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.m.fcRestores.WithLabelValues("etcd")); got != 2 {
		t.Fatalf("the last checkpoint was not restored (restores from etcd %v, none %v): the models start afresh",
			got, testutil.ToFloat64(c.m.fcRestores.WithLabelValues("none")))
	}
	if s := f.eng.Stats(); s.Series != 1 || f.next != t0.Add(5*time.Hour).Unix() {
		t.Fatalf("restored %d series, open bucket %d", s.Series, f.next)
	}
}

// A checkpoint within a MaxSnapshotBytes above 256 MiB (the client's
// receive limit) is written chunk by chunk; its successor must be able to
// read it back (here: the chunks are read, and the random content is then
// refused as corrupt, not a read error that restore retries forever).
func TestReadCheckpointLargerThanReceiveLimit(t *testing.T) {
	if os.Getenv("PREMIRROR_LONG") == "" {
		t.Skip("writes 264 MiB to etcd: make test-long")
	}
	cli := etcdClient(t)
	t.Cleanup(func() { cli.Close() })
	prefix := testPrefix(t)
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: prefix, ReportInterval: 100 * time.Millisecond, Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second, MaxSnapshotBytes: 1 << 30}}, cli)
	if err != nil {
		t.Fatal(err)
	}
	f, st, ctx := c.fc, c.store, context.Background()
	t.Cleanup(func() { cli.Delete(context.Background(), st.fkey(""), clientv3.WithPrefix()) })
	const n = 264
	h := sha256.New()
	chunk := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		rand.Read(chunk)
		h.Write(chunk)
		if _, err := cli.Put(ctx, st.fkey(chunkKey(7, i)), string(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	man := &pb.ForecastManifest{Generation: 7, Chunks: n, SizeBytes: n << 20, Sha256: h.Sum(nil)}
	mb, _ := marshal.Marshal(man)
	if _, err := cli.Put(ctx, st.fkey(fkeyManifest), string(mb)); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, gen, err := f.readEtcdCheckpoint(ctx); err != nil || gen != 7 {
		t.Fatalf("checkpoint of %d MiB not read: generation %d, %v", n, gen, err)
	}
}

// checkpointRig is a forecaster that is not running (the test drives
// it, holding its lock) with a fence it holds, and a state file.
type checkpointRig struct {
	c     *Controller
	f     *forecaster
	fn    fence
	cli   *clientv3.Client
	t0    time.Time
	state string
}

func newCheckpointRig(t *testing.T) *checkpointRig {
	t.Helper()
	cli := etcdClient(t)
	t.Cleanup(func() { cli.Close() })
	prefix := testPrefix(t)
	state := t.TempDir() + "/forecast.state"
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: prefix, ReportInterval: 100 * time.Millisecond, Logger: quietLogger(),
		Forecast: ForecastConfig{Engine: testEngineConfig(), Grace: 5 * time.Second, StateFile: state}}, cli)
	if err != nil {
		t.Fatal(err)
	}
	fr, err := cli.Put(context.Background(), prefix+"fence", "r1")
	if err != nil {
		t.Fatal(err)
	}
	g := &checkpointRig{c: c, f: c.fc, fn: fence{key: prefix + "fence", rev: fr.Header.Revision}, cli: cli,
		t0: time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), state: state}
	g.f.mu.Lock()
	t.Cleanup(g.f.mu.Unlock)
	return g
}

// learn closes buckets [from, to) of one series, as closeBuckets would.
func (g *checkpointRig) learn(t *testing.T, from, to int) {
	t.Helper()
	for b := from; b < to; b++ {
		start := g.t0.Add(time.Duration(b) * time.Hour)
		if _, err := g.f.eng.Ingest([]forecast.AccessSummary{{Resource: "disk", Region: "eu", Start: start, NewFlows: 10}}); err != nil {
			t.Fatal(err)
		}
		if err := g.f.eng.Advance(start.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	g.f.next = g.t0.Add(time.Duration(to) * time.Hour).Unix()
}

func (g *checkpointRig) restores(source string) float64 {
	return testutil.ToFloat64(g.c.m.fcRestores.WithLabelValues(source))
}

// A state file that reads well but whose snapshot the engine refuses
// (another format, a bug) must not cost the model: restore falls back to
// etcd's checkpoint. Before, the models started afresh though etcd held
// a good one.
func TestRestoreFallsBackToEtcdWhenStateFileRefused(t *testing.T) {
	g := newCheckpointRig(t)
	ctx := context.Background()
	g.learn(t, 0, 5)
	if err := g.f.checkpoint(ctx, g.fn); err != nil {
		t.Fatal(err)
	}
	// A later file (it names a later open bucket, so restore prefers it)
	// with a snapshot the engine cannot read.
	bad := &pb.ForecastCheckpoint{Engine: []byte("not an engine snapshot"), OpenBucketUnix: g.t0.Add(6 * time.Hour).Unix(),
		WrittenUnixNano: time.Now().UnixNano(), StepSeconds: 3600}
	packed, err := packLevel(bad, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeStateFile(g.state, packed, sha256.Sum256(packed)); err != nil {
		t.Fatal(err)
	}
	if err := g.f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	if g.restores("discarded") != 1 || g.restores("etcd") != 1 {
		t.Fatalf("restores: discarded %v, etcd %v, file %v, none %v; want the file discarded, etcd's restored",
			g.restores("discarded"), g.restores("etcd"), g.restores("file"), g.restores("none"))
	}
	if s := g.f.eng.Stats(); s.Series != 1 || g.f.next != g.t0.Add(5*time.Hour).Unix() || g.f.gcBefore != g.f.next {
		t.Fatalf("restored %d series, open bucket %d, gcBefore %d", s.Series, g.f.next, g.f.gcBefore)
	}
}

// The state file is restored over etcd's checkpoint only when etcd took
// none after the one the file's state descends from: here the file's
// leader (its clock ahead, so its file names a later open bucket) lost
// the etcd write, and the next leader, on another host, applied a feed
// and checkpointed, which deleted the feed. Before, restore preferred the
// file for its later open bucket, and the feed was lost for good.
func TestRestorePrefersLaterEtcdCheckpointOverStateFile(t *testing.T) {
	g := newCheckpointRig(t)
	f, ctx := g.f, context.Background()
	g.learn(t, 0, 5)
	if err := f.checkpoint(ctx, g.fn); err != nil {
		t.Fatal(err)
	}
	// The file's leader closes bucket 5 early; its etcd write is fenced
	// off (it lost the leadership), its file is written.
	g.learn(t, 5, 6)
	if err := f.checkpoint(ctx, fence{key: g.fn.key, rev: g.fn.rev + 1}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("checkpoint without the fence: %v", err)
	}
	// The next leader has no state file: it restores etcd's checkpoint,
	// applies a feed and checkpoints.
	f.cfg.StateFile = ""
	if err := f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := pack(&pb.FeedRecord{Kind: pb.FeedKind_FEED_KIND_EVENTS, Csv: []byte("start,end,name,kind\n2026-03-10,2026-03-10,fair,holiday\n"), Name: "events.csv"})
	if err != nil {
		t.Fatal(err)
	}
	put, err := g.cli.Put(ctx, g.c.store.fkey(fkeyFeeds+"00000000000000000001-events"), string(rec))
	if err != nil {
		t.Fatal(err)
	}
	if applied, err := f.applyFeeds(ctx); err != nil || !applied || f.feedsRev != put.Header.Revision {
		t.Fatalf("feed applied %v (feeds revision %d, want %d): %v", applied, f.feedsRev, put.Header.Revision, err)
	}
	if err := f.checkpoint(ctx, g.fn); err != nil {
		t.Fatal(err)
	}
	if resp, err := g.cli.Get(ctx, g.c.store.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("feeds left after the checkpoint: %v %v", resp, err)
	}
	// The file's host leads again.
	f.cfg.StateFile = g.state
	if err := f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	if g.restores("etcd") != 2 || g.restores("file") != 0 || f.feedsRev != put.Header.Revision || f.next != g.t0.Add(5*time.Hour).Unix() {
		t.Fatalf("restored from etcd %v, from the file %v; feeds revision %d (want %d), open bucket %d: the feed is lost",
			g.restores("etcd"), g.restores("file"), f.feedsRev, put.Header.Revision, f.next)
	}
	// A file written after etcd's last checkpoint, from it, is restored.
	g.learn(t, 5, 6)
	if err := f.checkpoint(ctx, fence{key: g.fn.key, rev: g.fn.rev + 1}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("checkpoint without the fence: %v", err)
	}
	if err := f.restore(ctx); err != nil {
		t.Fatal(err)
	}
	if g.restores("file") != 1 || f.next != g.t0.Add(6*time.Hour).Unix() || f.feedsRev != put.Header.Revision {
		t.Fatalf("restored from the file %v, open bucket %d, feeds revision %d", g.restores("file"), f.next, f.feedsRev)
	}
}

// A controller killed while it wrote the state file leaves atomicfile's
// temporary file, a checkpoint's size; the next restore removes it (and
// restores the checkpoint as before). A write in progress (its writer
// holds the state file's lock) is waited for, not removed under it, and a
// checkpoint's write waits for another writer's lock in turn.
func TestRestoreRemovesStateFileLeftovers(t *testing.T) {
	g := newCheckpointRig(t)
	ctx := context.Background()
	g.learn(t, 0, 5)
	if err := g.f.checkpoint(ctx, g.fn); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(g.state)
	hour := time.Now().Add(-time.Hour)
	leftover := filepath.Join(dir, ".forecast.state.tmp-123")
	other := filepath.Join(dir, ".other.state.tmp-1")
	for _, p := range []string{leftover, other} {
		if err := os.WriteFile(p, []byte("half a checkpoint"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, hour, hour); err != nil {
			t.Fatal(err)
		}
	}
	// Another controller's write in progress.
	unlock, err := atomicfile.Lock(g.state)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.f.restore(ctx) }()
	select {
	case err := <-done:
		unlock()
		t.Fatalf("restore ran while another writer held the state file's lock: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := os.Stat(leftover); err != nil {
		t.Fatalf("a live writer's temporary file removed: %v", err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover after restore: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("another file's temporary removed: %v", err)
	}
	if s := g.f.eng.Stats(); s.Series != 1 || g.f.next != g.t0.Add(5*time.Hour).Unix() {
		t.Fatalf("restored %d series, open bucket %d", s.Series, g.f.next)
	}

	// The writer's side: a checkpoint waits for the lock's holder.
	before, err := os.Stat(g.state)
	if err != nil {
		t.Fatal(err)
	}
	if unlock, err = atomicfile.Lock(g.state); err != nil {
		t.Fatal(err)
	}
	go func() { done <- g.f.checkpoint(ctx, g.fn) }()
	select {
	case err := <-done:
		unlock()
		t.Fatalf("checkpoint wrote the state file while another writer held its lock: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(g.state); err != nil || os.SameFile(before, after) {
		t.Fatalf("state file not replaced by the checkpoint (%v)", err)
	}
}
