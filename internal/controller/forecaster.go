package controller

import (
	"bytes"
	"cmp"
	"compress/flate"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/forecast"
)

// ForecastConfig configures forecasting: the path of the agents' access
// counts to the leader's prediction engine, the engine's checkpoints and
// its published outputs. Zero fields take the defaults noted.
type ForecastConfig struct {
	// Disable turns forecasting off (no aggregates, no engine, no scores).
	Disable bool
	// Engine configures the prediction engine: Step (bucket length,
	// default 1 h; every replica must use the same), Window, Horizon,
	// Hidden, Covariates, Workers, MaxSeries. Logger and Registerer are
	// the controller's.
	Engine forecast.EngineConfig
	// Grace: the leader closes a bucket this long after it ended, once the
	// serving replicas have written their final totals (default
	// 3 × ReportInterval + 2 s; it also covers clock offsets between
	// replicas).
	Grace time.Duration
	// FlushInterval: a replica rewrites a bucket's running totals at most
	// this often, and once more when the bucket is over (default a tenth
	// of the step within [ReportInterval, 1 min]). It bounds both the etcd
	// writes (agents × (step/FlushInterval + 1) per step) and what a
	// crashed replica loses of an agent that does not number its reports
	// (a numbered agent keeps that long's reports to send again).
	FlushInterval time.Duration
	// Retention is how long aggregates live after their bucket ended when
	// no leader checkpoints them (default max(24 steps, 10 min)).
	Retention time.Duration
	// Tick is the leader's forecasting loop period (default 1 s).
	Tick time.Duration
	// History is how many closed buckets per series `forecast show`
	// lists (default the horizon).
	History int
	// Prices turn bytes and latency into one unit for the Mirroring Score
	// (default DefaultPrices).
	Prices forecast.Prices
	// ValueBytes bounds one etcd value or transaction the forecaster
	// writes: a checkpoint chunk, a feed, a batch of published forecasts
	// (default 1 MiB, within etcd's default 1.5 MiB request limit).
	ValueBytes int
	// MaxSnapshotBytes bounds the packed checkpoint kept in etcd (default
	// 256 MiB: about 3,000 series at ~80 KB each after deflate). A larger
	// one goes only to StateFile.
	MaxSnapshotBytes int64
	// StateFile, when set, also receives every checkpoint (atomically); a
	// leader starting on this host restores it when etcd took no
	// checkpoint after the one it descends from (fileFirst). Writes hold
	// <StateFile>.lock; a restore removes the temporary files a killed
	// writer left (atomicfile.RemoveLeftoversLocked).
	StateFile string
	// Clock is forecasting's clock (tests); nil means time.Now.
	Clock func() time.Time
}

// DefaultPrices are placeholders of cloud list-price magnitude (copy
// $0.02/GB, storage $0.10/GB-month, one second saved on one request worth
// $0.0001); operators set their own.
var DefaultPrices = forecast.Prices{
	CopyPerByte:           0.02 / 1e9,
	StorePerByteHour:      0.10 / 1e9 / 730,
	ValuePerRequestSecond: 1e-4,
}

func (f *ForecastConfig) setDefaults(reportInterval time.Duration) error {
	if f.Disable {
		return nil
	}
	if f.Engine.Step == 0 {
		f.Engine.Step = time.Hour
	}
	if f.Engine.Step < time.Second || f.Engine.Step%time.Second != 0 {
		return fmt.Errorf("forecast step: %v must be whole seconds, at least 1s", f.Engine.Step)
	}
	step := f.Engine.Step
	if err := setDurations(
		durationDefault{&f.Grace, 3*reportInterval + 2*time.Second, "forecast grace"},
		durationDefault{&f.FlushInterval, min(max(step/10, reportInterval), time.Minute), "forecast flush interval"},
		durationDefault{&f.Retention, max(24*step, 10*time.Minute), "forecast retention"},
		durationDefault{&f.Tick, time.Second, "forecast tick"},
	); err != nil {
		return err
	}
	if f.Retention <= 2*f.Grace {
		return fmt.Errorf("forecast retention: %v must exceed twice the grace %v", f.Retention, f.Grace)
	}
	if f.Engine.Horizon == 0 {
		f.Engine.Horizon = max(1, int(24*time.Hour/step))
	}
	if f.History == 0 {
		f.History = f.Engine.Horizon
	}
	if f.History < 0 || f.History > 10000 {
		return fmt.Errorf("forecast history: %d out of [1, 10000]", f.History)
	}
	if f.Prices == (forecast.Prices{}) {
		f.Prices = DefaultPrices
	}
	p := f.Prices
	for _, x := range []struct {
		name string
		v    float64
		pos  bool
	}{{"copy_per_byte", p.CopyPerByte, false}, {"store_per_byte_hour", p.StorePerByteHour, false},
		{"value_per_request_second", p.ValuePerRequestSecond, true}} {
		if math.IsNaN(x.v) || math.IsInf(x.v, 0) || x.v < 0 || (x.pos && x.v == 0) {
			return fmt.Errorf("forecast prices %s: %v must be finite and %s", x.name, x.v, map[bool]string{true: "> 0", false: ">= 0"}[x.pos])
		}
	}
	if f.ValueBytes == 0 {
		f.ValueBytes = 1 << 20
	}
	if f.ValueBytes < 4<<10 {
		return fmt.Errorf("forecast value bytes: %d is below 4 KiB", f.ValueBytes)
	}
	if f.MaxSnapshotBytes == 0 {
		f.MaxSnapshotBytes = 256 << 20
	}
	// A negative bound would keep every checkpoint out of etcd: a
	// successor would start its forecasts from nothing.
	if f.MaxSnapshotBytes < 0 {
		return fmt.Errorf("forecast max snapshot bytes: %d is negative", f.MaxSnapshotBytes)
	}
	return nil
}

func (f *ForecastConfig) now() time.Time {
	if f.Clock != nil {
		return f.Clock()
	}
	return time.Now()
}

// maxSpan bounds the interval one report's deltas are spread over.
func (f *ForecastConfig) maxSpan() time.Duration { return max(f.Engine.Step, time.Minute) }

// Forecast keys live beside the store prefix, not under it: every replica
// watches the store prefix, and neither the checkpoint chunks nor the
// per-bucket aggregates concern anyone but the leader and the admin API.
//
//	<prefix>-forecast/access/<bucket>/<node>/<replica>/<since>  pb.AccessAggregate, leased
//	<prefix>-forecast/runs/<node>/<run>                         pb.AccessRun, leased  serving replica
//	<prefix>-forecast/snap/manifest                             pb.ForecastManifest   leader
//	<prefix>-forecast/snap/c/<generation>/<chunk>               deflate(pb.ForecastCheckpoint) in chunks
//	<prefix>-forecast/out/<resource>                            deflate(pb.ResourceForecast) leader
//	<prefix>-forecast/feeds/<time>-<kind>                       deflate(pb.FeedRecord)   admin API
const (
	fkeyAccess   = "access/"
	fkeyRuns     = "runs/"
	fkeyManifest = "snap/manifest"
	fkeyChunks   = "snap/c/"
	fkeyOut      = "out/"
	fkeyFeeds    = "feeds/"
)

// forecastPrefix is where forecast keys of a store prefix live.
func forecastPrefix(prefix string) string { return strings.TrimSuffix(prefix, "/") + "-forecast/" }

func (s *Store) fkey(rel string) string { return s.fprefix + rel }

func chunkKey(gen uint64, i int) string { return fmt.Sprintf("%s%020d/%06d", fkeyChunks, gen, i) }

func outKey(resource string) string { return fkeyOut + url.PathEscape(resource) }

// Sentinel errors of the forecasting API.
var (
	// ErrNoForecast: the leader has not published a forecast for the
	// resource (no bucket with its accesses has closed yet).
	ErrNoForecast = errors.New("no forecast")
	// ErrForecastDisabled: the controller runs with forecasting off.
	ErrForecastDisabled = errors.New("forecasting is disabled")
)

type seriesKey struct{ resource, region string }

// h1 is a series' median forecast for its next bucket.
type h1 struct {
	target int64
	q50    float64
}

// forecaster is the leader's prediction engine and what the controller
// keeps beside it. One per replica; it holds state only while leading.
type forecaster struct {
	c     *Controller
	cfg   *ForecastConfig
	eng   *forecast.Engine
	empty []byte // snapshot of an empty engine (resets between leaderships)

	mu       sync.Mutex // the fields below; run holds it while it works
	history  map[seriesKey][]*pb.BucketObservation
	nextH1   map[seriesKey]h1
	feedsRev int64
	next     int64 // next bucket (start, unix seconds) to close; 0: none seen yet
	gen      uint64
	readRev  int64 // etcd revision of the last aggregates read (0: none this leadership)
	gcBefore int64 // aggregates of buckets before it are deleted (0: none yet)
	// Work still owed after a failed etcd write.
	publishDue, snapDue bool
	// Forecasts published for this bucket (f.next then; 0: none): the
	// mirroring manager evaluates for it. Set by restore too, since a
	// checkpoint's open bucket had its forecasts published: the previous
	// leader may have lost the leadership before its evaluation completed.
	// placeResume is then the checkpoint's time (0 otherwise): records
	// evaluated since were evaluated for the bucket (evaluatePlacements).
	placeBucket, placeResume int64
}

func newForecaster(c *Controller) (*forecaster, error) {
	cfg := &c.cfg.Forecast
	ec := cfg.Engine
	ec.Logger = c.log.With("component", "forecast")
	ec.Registerer = c.reg
	eng, err := forecast.NewEngine(ec)
	if err != nil {
		return nil, fmt.Errorf("forecast engine: %w", err)
	}
	empty, err := eng.MarshalBinary()
	if err != nil {
		return nil, err
	}
	f := &forecaster{c: c, cfg: cfg, eng: eng, empty: empty}
	f.resetLocked()
	return f, nil
}

func (f *forecaster) step() int64 { return int64(f.cfg.Engine.Step / time.Second) }

func (f *forecaster) resetLocked() {
	if err := f.eng.UnmarshalBinary(f.empty); err != nil {
		f.c.log.Error("forecast engine reset failed", "err", err) // cannot happen: our own snapshot
	}
	f.history, f.nextH1 = map[seriesKey][]*pb.BucketObservation{}, map[seriesKey]h1{}
	f.feedsRev, f.next, f.readRev, f.gcBefore, f.publishDue, f.snapDue, f.placeBucket = 0, 0, 0, 0, false, false, 0
	f.placeResume = 0
}

// run is the forecasting part of one leadership: restore, then close
// buckets, publish and checkpoint every Tick until ctx ends or the fence
// is lost.
func (f *forecaster) run(ctx context.Context, fn fence) {
	defer func() {
		f.mu.Lock()
		f.resetLocked() // a follower holds no model
		f.mu.Unlock()
	}()
	for {
		f.mu.Lock()
		err := f.restore(ctx)
		f.mu.Unlock()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		f.c.log.Warn("forecast state not restored; retrying", "err", err)
		sleepCtx(ctx, f.cfg.Tick)
	}
	t := time.NewTicker(f.cfg.Tick)
	defer t.Stop()
	for {
		f.mu.Lock()
		err := f.pass(ctx, fn)
		bucket, resume := f.placeBucket, f.placeResume
		f.mu.Unlock()
		// The bucket's forecasts are out even when a later step of the
		// pass failed (the checkpoint): evaluate them now, and until an
		// evaluation completes, at every tick, not the next bucket.
		if bucket != 0 && !errors.Is(err, ErrNotLeader) {
			// Outside the lock: scoring reads etcd and runs the route
			// policy, and must not hold up the admin API's forecasts.
			perr := f.c.evaluatePlacements(ctx, fn, bucket, resume, time.Now())
			if perr == nil || errors.Is(perr, ErrNotLeader) {
				f.mu.Lock()
				f.placeBucket, f.placeResume = 0, 0
				f.mu.Unlock()
			}
			err = errors.Join(err, perr)
		}
		switch {
		case errors.Is(err, ErrNotLeader):
			f.c.log.Warn("forecast writes refused: no longer the leader")
			return
		case err != nil && ctx.Err() == nil:
			f.c.log.Warn("forecast pass incomplete; retrying next tick", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pass applies new feeds, closes the buckets that are over, publishes the
// forecasts and checkpoints.
func (f *forecaster) pass(ctx context.Context, fn fence) error {
	applied, err := f.applyFeeds(ctx)
	if err != nil {
		return err
	}
	closed, err := f.closeBuckets(ctx)
	if err != nil {
		return err
	}
	if closed {
		f.publishDue, f.snapDue = true, true
	}
	if applied {
		f.snapDue = true
	}
	if f.publishDue {
		if err := f.publish(ctx, fn); err != nil {
			return err
		}
		f.publishDue, f.placeBucket, f.placeResume = false, f.next, 0
	}
	if f.snapDue {
		if err := f.checkpoint(ctx, fn); err != nil {
			return err
		}
		f.snapDue = false
	}
	return nil
}

// closeBuckets ingests every bucket that ended more than Grace ago and
// has not been closed, and advances the engine past it.
func (f *forecaster) closeBuckets(ctx context.Context) (bool, error) {
	step := f.step()
	now := f.cfg.now()
	final := bucketStart(now.Add(-f.cfg.Grace), f.cfg.Engine.Step) - step // last bucket over for Grace
	cli, st := f.c.cli, f.c.store
	if f.next == 0 {
		// Nothing closed yet: start at the oldest aggregate still kept.
		resp, err := cli.Get(ctx, st.fkey(fkeyAccess), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return false, fmt.Errorf("list access aggregates: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return false, nil
		}
		b, err := parseAccessKey(strings.TrimPrefix(string(resp.Kvs[0].Key), st.fprefix))
		if err != nil {
			return false, err
		}
		f.next = b - b%step
	}
	if f.next > final {
		return false, nil
	}
	start := time.Now()
	resp, err := cli.Get(ctx, st.fkey(accessBucketKey(f.next)), clientv3.WithRange(st.fkey(accessBucketKey(final+step))))
	if err != nil {
		return false, fmt.Errorf("read access aggregates: %w", err)
	}
	f.readRev = resp.Header.Revision
	byBucket := map[int64][]*pb.AccessAggregate{}
	for _, kv := range resp.Kvs {
		b, err := parseAccessKey(strings.TrimPrefix(string(kv.Key), st.fprefix))
		agg := &pb.AccessAggregate{}
		if err == nil {
			err = proto.Unmarshal(kv.Value, agg)
		}
		if err == nil && agg.GetBucketStartUnix() != b {
			err = fmt.Errorf("holds bucket %d", agg.GetBucketStartUnix())
		}
		if err != nil {
			f.c.log.Error("ignoring corrupt access aggregate", "key", string(kv.Key), "err", err)
			continue
		}
		byBucket[b] = append(byBucket[b], agg)
	}
	buckets := make([]int64, 0, len(byBucket))
	for b := range byBucket {
		buckets = append(buckets, b)
	}
	slices.Sort(buckets)
	names := f.c.view.idNames()
	for _, b := range buckets {
		// Close the buckets before b that had no aggregate (unknown: the
		// engine skips them), then ingest b and close it.
		if err := f.eng.Advance(time.Unix(b, 0)); err != nil {
			return true, fmt.Errorf("advance to %d: %w", b, err)
		}
		sums := f.sum(byBucket[b], names)
		batch := make([]forecast.AccessSummary, 0, len(sums))
		for k, n := range sums {
			batch = append(batch, forecast.AccessSummary{Resource: k.resource, Region: k.region, Start: time.Unix(b, 0), NewFlows: n})
		}
		slices.SortFunc(batch, func(x, y forecast.AccessSummary) int {
			return cmp.Or(strings.Compare(x.Resource, y.Resource), strings.Compare(x.Region, y.Region))
		})
		var total float64
		for _, s := range batch {
			total += float64(s.NewFlows)
		}
		acc, ingErr := f.eng.Ingest(batch)
		switch {
		case ingErr == nil:
			f.c.m.accessFlows.WithLabelValues("ingested").Add(total)
		case errors.Is(ingErr, forecast.ErrTooManySeries):
			// The series already modelled were applied; new ones beyond
			// the engine's MaxSeries were dropped (the engine counts them:
			// premirror_forecast_summaries_total{outcome="rejected"}).
			f.c.m.accessFlows.WithLabelValues("ingested").Add(total)
			f.c.log.Error("access summaries of new series beyond the forecast series limit dropped", "bucket", time.Unix(b, 0).UTC(),
				"accepted", acc, "err", ingErr)
		case errors.Is(ingErr, forecast.ErrLate):
			// The engine closed b before (a checkpoint newer than our
			// bookkeeping): it counts them once already.
			f.c.m.accessFlows.WithLabelValues("late").Add(total)
			f.c.log.Warn("access summaries for a closed bucket dropped", "bucket", time.Unix(b, 0).UTC(), "accepted", acc, "err", ingErr)
		default:
			f.c.m.accessFlows.WithLabelValues("rejected").Add(total)
			f.c.log.Error("access summaries rejected", "bucket", time.Unix(b, 0).UTC(), "err", ingErr)
		}
		if err := f.eng.Advance(time.Unix(b+step, 0)); err != nil {
			return true, fmt.Errorf("advance past %d: %w", b, err)
		}
		if (ingErr == nil || errors.Is(ingErr, forecast.ErrTooManySeries)) && len(batch) > 0 { // an empty batch leaves the bucket unknown
			f.recordBucket(b, sums)
		}
		f.next = b + step // a failure after this point does not ingest b again
	}
	if err := f.eng.Advance(time.Unix(final+step, 0)); err != nil {
		return true, fmt.Errorf("advance past %d: %w", final, err)
	}
	f.next = final + step
	f.c.m.fcPass.Observe(time.Since(start).Seconds())
	return true, nil
}

// sum adds a bucket's aggregates per (resource, region) by name.
func (f *forecaster) sum(aggs []*pb.AccessAggregate, names idNames) map[seriesKey]uint64 {
	out := map[seriesKey]uint64{}
	var noRes, noReg float64
	for _, a := range aggs {
		for _, fl := range a.GetFlows() {
			res, ok := names.resources[fl.GetResourceId()]
			if !ok {
				noRes += float64(fl.GetNewFlows())
				continue
			}
			reg, ok := names.regions[fl.GetRegionId()]
			if !ok {
				// Clients of no site (region 0) or a deleted site: no
				// location a mirror could be placed for.
				noReg += float64(fl.GetNewFlows())
				continue
			}
			k := seriesKey{res, reg}
			if out[k]+fl.GetNewFlows() < out[k] {
				f.c.log.Error("access count overflows; capping", "resource", res, "region", reg)
				out[k] = math.MaxUint64
				continue
			}
			out[k] += fl.GetNewFlows()
		}
	}
	if noRes > 0 {
		f.c.m.accessFlows.WithLabelValues("unknown_resource").Add(noRes)
	}
	if noReg > 0 {
		f.c.m.accessFlows.WithLabelValues("unknown_region").Add(noReg)
	}
	return out
}

// recordBucket appends bucket b to every series' history.
func (f *forecaster) recordBucket(b int64, sums map[seriesKey]uint64) {
	for k := range sums {
		if _, ok := f.history[k]; !ok {
			f.history[k] = nil
		}
	}
	for k, h := range f.history {
		o := &pb.BucketObservation{StartUnix: b, Observed: float64(sums[k])}
		if p, ok := f.nextH1[k]; ok && p.target == b {
			o.Predicted, o.HasPredicted = p.q50, true
		}
		h = append(h, o)
		if len(h) > f.cfg.History {
			h = slices.Delete(h, 0, len(h)-f.cfg.History)
		}
		f.history[k] = h
	}
}

// refreshH1 notes every series' median forecast of its next bucket, to
// show next to what that bucket brings (publish notes them as it goes; a
// pass that closes several buckets records the prediction of the first).
func (f *forecaster) refreshH1() {
	for _, r := range f.eng.Resources() {
		if rf, err := f.eng.Forecast(r); err == nil {
			f.noteH1(r, rf)
		}
	}
}

func (f *forecaster) noteH1(r string, rf forecast.ResourceForecast) {
	target := rf.Origin.Unix() + f.step()
	for _, rg := range rf.Regions {
		if len(rg.Q) > 0 {
			f.nextH1[seriesKey{r, rg.Region}] = h1{target: target, q50: rg.Q[0].Q50}
		}
	}
}

// record is the published form of a resource's forecast.
func (f *forecaster) record(r string, rf forecast.ResourceForecast, now time.Time) *pb.ResourceForecast {
	rec := &pb.ResourceForecast{Resource: r, OriginUnix: rf.Origin.Unix(), StepSeconds: int64(rf.Step / time.Second),
		Concentration: rf.Concentration, Leader: f.c.cfg.Name, WrittenUnixNano: now.UnixNano()}
	for _, rg := range rf.Regions {
		pr := &pb.RegionForecast{Region: rg.Region, Recent: f.history[seriesKey{r, rg.Region}]}
		for _, q := range rg.Q {
			pr.Q10, pr.Q50, pr.Q90 = append(pr.Q10, q.Q10), append(pr.Q50, q.Q50), append(pr.Q90, q.Q90)
		}
		rec.Regions = append(rec.Regions, pr)
	}
	for _, s := range rf.Shares {
		rec.Shares = append(rec.Shares, &pb.LocationShares{Shares: s})
	}
	return rec
}

// publish stores every resource's current forecast for the admin API of
// every replica, fenced on the leadership.
func (f *forecaster) publish(ctx context.Context, fn fence) error {
	now := time.Now()
	var ops []clientv3.Op
	size := 0
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		resp, err := f.c.cli.Txn(ctx).If(fn.cmp()).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("publish forecasts: %w", err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		ops, size = ops[:0], 0
		return nil
	}
	maxOps := max(1, f.c.store.MaxTxnOps-1)
	for _, r := range f.eng.Resources() {
		rf, err := f.eng.Forecast(r)
		if err != nil {
			continue // no closed bucket yet
		}
		f.noteH1(r, rf)
		b, err := packLevel(f.record(r, rf, now), flate.DefaultCompression)
		if err != nil {
			return err
		}
		if len(b) > f.cfg.ValueBytes {
			f.c.log.Error("forecast too large to publish", "resource", r, "bytes", len(b), "limit", f.cfg.ValueBytes)
			continue
		}
		if len(ops) >= maxOps || size+len(b) > f.cfg.ValueBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		ops = append(ops, clientv3.OpPut(f.c.store.fkey(outKey(r)), string(b)))
		size += len(b)
	}
	return flush()
}

// checkpoint saves the engine and the history: to StateFile when set,
// and to etcd in chunks when it fits MaxSnapshotBytes, with a fenced
// manifest written last; the same transaction deletes what the
// checkpoint makes redundant (older chunks, applied feeds, aggregates of
// closed buckets).
func (f *forecaster) checkpoint(ctx context.Context, fn fence) error {
	start := time.Now()
	eb, err := f.eng.MarshalBinary()
	if err != nil {
		return fmt.Errorf("snapshot engine: %w", err)
	}
	cp := &pb.ForecastCheckpoint{Engine: eb, FeedsRevision: f.feedsRev, OpenBucketUnix: f.next,
		WrittenUnixNano: start.UnixNano(), StepSeconds: f.step(), BaseGeneration: proto.Uint64(f.gen)}
	for k, h := range f.history {
		cp.History = append(cp.History, &pb.SeriesHistory{Resource: k.resource, Region: k.region, Buckets: h})
	}
	slices.SortFunc(cp.History, func(a, b *pb.SeriesHistory) int {
		return cmp.Or(strings.Compare(a.GetResource(), b.GetResource()), strings.Compare(a.GetRegion(), b.GetRegion()))
	})
	packed, err := packLevel(cp, flate.DefaultCompression)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(packed)
	f.c.m.fcCheckpointBytes.Set(float64(len(packed)))
	if f.cfg.StateFile != "" {
		if err := writeStateFile(f.cfg.StateFile, packed, sum); err != nil {
			f.c.m.fcCheckpoints.WithLabelValues("file_error").Inc()
			f.c.log.Error("forecast state file not written", "path", f.cfg.StateFile, "err", err)
		} else {
			f.c.m.fcCheckpoints.WithLabelValues("file").Inc()
		}
	}
	if int64(len(packed)) > f.cfg.MaxSnapshotBytes {
		f.c.m.fcCheckpoints.WithLabelValues("too_large").Inc()
		f.c.log.Error("forecast checkpoint exceeds the etcd bound; only the state file (if any) has it",
			"bytes", len(packed), "limit", f.cfg.MaxSnapshotBytes, "state_file", f.cfg.StateFile)
		return nil
	}
	gen := max(f.gen+1, uint64(start.UnixNano()))
	n := 0
	for off := 0; off < len(packed) || n == 0; off += f.cfg.ValueBytes {
		chunk := packed[off:min(off+f.cfg.ValueBytes, len(packed))]
		resp, err := f.c.cli.Txn(ctx).If(fn.cmp()).Then(clientv3.OpPut(f.c.store.fkey(chunkKey(gen, n)), string(chunk))).Commit()
		if err != nil {
			f.c.m.fcCheckpoints.WithLabelValues("error").Inc()
			return fmt.Errorf("write checkpoint chunk %d: %w", n, err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		n++
	}
	man := &pb.ForecastManifest{Generation: gen, Chunks: uint32(n), SizeBytes: uint64(len(packed)), Sha256: sum[:],
		OpenBucketUnix: f.next, Leader: f.c.cfg.Name, WrittenUnixNano: time.Now().UnixNano()}
	mb, err := marshal.Marshal(man)
	if err != nil {
		return err
	}
	st := f.c.store
	genPfx := st.fkey(fmt.Sprintf("%s%020d/", fkeyChunks, gen))
	ops := []clientv3.Op{
		clientv3.OpPut(st.fkey(fkeyManifest), string(mb)),
		clientv3.OpDelete(st.fkey(fkeyChunks), clientv3.WithRange(genPfx)),
		// From this generation's chunk n on: the later generations, and
		// chunks of this one beyond its count left by an earlier attempt
		// at the same generation (a failed write, or a leader that crashed
		// before its manifest, when generations run on by one from a
		// manifest written by a clock ahead); the reader counts them all.
		clientv3.OpDelete(st.fkey(chunkKey(gen, n)), clientv3.WithRange(clientv3.GetPrefixRangeEnd(st.fkey(fkeyChunks)))),
	}
	accessOp := -1
	if f.next > 0 {
		// WithPrevKV: the late aggregates are found among what this very
		// delete removes (reading them before the transaction left a window
		// in which one written after the read was deleted unreported). It
		// costs a second transfer of the closed buckets' aggregates, the
		// size of the read that ingested them.
		accessOp = len(ops)
		ops = append(ops, clientv3.OpDelete(st.fkey(fkeyAccess), clientv3.WithRange(st.fkey(accessBucketKey(f.next))), clientv3.WithPrevKV()))
	}
	if f.feedsRev > 0 {
		resp, err := f.c.cli.Get(ctx, st.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return fmt.Errorf("list feeds: %w", err)
		}
		for _, kv := range resp.Kvs {
			if kv.CreateRevision <= f.feedsRev && len(ops) < max(4, st.MaxTxnOps-1) {
				ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			}
		}
	}
	resp, err := f.c.cli.Txn(ctx).If(fn.cmp()).Then(ops...).Commit()
	if err != nil {
		f.c.m.fcCheckpoints.WithLabelValues("error").Inc()
		return fmt.Errorf("write checkpoint manifest: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	f.gen = gen
	if accessOp >= 0 {
		if dr := resp.Responses[accessOp].GetResponseDeleteRange(); dr != nil {
			f.reportLate(dr.GetPrevKvs())
		}
		f.gcBefore = f.next
	}
	f.c.m.fcCheckpoints.WithLabelValues("etcd").Inc()
	f.c.m.fcCheckpointTime.Observe(time.Since(start).Seconds())
	f.c.log.Debug("forecast checkpoint", "generation", gen, "bytes", len(packed), "chunks", n,
		"open_bucket", time.Unix(f.next, 0).UTC(), "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// reportLate reports, among the aggregates a checkpoint deleted, those
// written after the leader read their bucket (a replica whose clock is
// behind by more than Grace, or one that stalled): what they added since
// the read is lost. Below gcBefore (as it was before this checkpoint)
// everything is late, since the previous checkpoint deleted those buckets;
// above it, what changed since the last read. It runs only once the
// deleting transaction committed, so each is reported exactly once.
func (f *forecaster) reportLate(deleted []*mvccpb.KeyValue) {
	for _, kv := range deleted {
		b, err := parseAccessKey(strings.TrimPrefix(string(kv.Key), f.c.store.fprefix))
		if err != nil {
			continue // not an aggregate's key: nothing to report
		}
		if b >= f.gcBefore && (f.readRev == 0 || kv.ModRevision <= f.readRev) {
			continue // ingested as read
		}
		agg := &pb.AccessAggregate{}
		if proto.Unmarshal(kv.Value, agg) != nil {
			continue
		}
		f.c.m.aggregatesLate.Inc()
		f.c.log.Warn("access aggregate written after its bucket closed; raise --forecast-grace or check the replicas' clocks",
			"node", agg.GetNode(), "replica", agg.GetController(), "bucket", time.Unix(agg.GetBucketStartUnix(), 0).UTC(),
			"written", time.Unix(0, agg.GetWrittenUnixNano()).UTC())
	}
}

// restore loads the newest checkpoint (etcd's or the state file's) and
// the feeds stored after it. A read failure is returned (retry: starting
// afresh would overwrite a good checkpoint); a checkpoint the engine
// refuses is logged and the other one is tried, and the engine starts
// empty only when neither is usable.
func (f *forecaster) restore(ctx context.Context) error {
	f.resetLocked()
	ecp, gen, err := f.readEtcdCheckpoint(ctx)
	if err != nil {
		return err
	}
	type candidate struct {
		cp     *pb.ForecastCheckpoint
		source string
	}
	var cands []candidate
	if ecp != nil {
		cands = append(cands, candidate{ecp, "etcd"})
	}
	if f.cfg.StateFile != "" {
		if err := atomicfile.RemoveLeftoversLocked(f.cfg.StateFile); err != nil {
			f.c.log.Warn("forecast state file's leftover temporary files not removed", "path", f.cfg.StateFile, "err", err)
		}
		fcp, ferr := readStateFile(f.cfg.StateFile)
		switch {
		case ferr != nil && !errors.Is(ferr, os.ErrNotExist):
			f.c.log.Error("forecast state file unusable", "path", f.cfg.StateFile, "err", ferr)
		case fcp != nil && (ecp == nil || fileFirst(fcp, ecp, gen)):
			cands = append([]candidate{{fcp, "file"}}, cands...)
		case fcp != nil:
			cands = append(cands, candidate{fcp, "file"}) // older, but better than nothing
		}
	}
	var cp *pb.ForecastCheckpoint
	source := ""
	for i, cd := range cands {
		if err := f.eng.UnmarshalBinary(cd.cp.GetEngine()); err != nil {
			f.c.m.fcRestores.WithLabelValues("discarded").Inc()
			next := "the models start afresh"
			if i+1 < len(cands) {
				next = "trying the one in " + cands[i+1].source
			}
			f.c.log.Error("forecast checkpoint refused; "+next, "source", cd.source, "err", err)
			f.resetLocked()
			continue
		}
		cp, source = cd.cp, cd.source
		break
	}
	f.gen = gen
	if cp == nil {
		f.c.m.fcRestores.WithLabelValues("none").Inc()
		f.c.log.Info("forecasting starts without a checkpoint")
	} else {
		f.feedsRev, f.next = cp.GetFeedsRevision(), cp.GetOpenBucketUnix()
		// Its leader published the forecasts of its open bucket before it
		// checkpointed, but may have lost the leadership before its
		// placement pass completed: finish that pass (records already
		// evaluated for the bucket are skipped).
		f.placeBucket, f.placeResume = f.next, max(cp.GetWrittenUnixNano(), 1)
		if source == "etcd" {
			f.gcBefore = f.next // its manifest deleted the aggregates before it
		}
		for _, h := range cp.GetHistory() {
			f.history[seriesKey{h.GetResource(), h.GetRegion()}] = h.GetBuckets()
		}
		st := f.eng.Stats()
		f.c.m.fcRestores.WithLabelValues(source).Inc()
		f.c.log.Info("forecast state restored", "source", source, "series", st.Series, "resources", st.Resources,
			"open_bucket", time.Unix(f.next, 0).UTC())
	}
	if _, err := f.applyFeeds(ctx); err != nil {
		return err
	}
	f.refreshH1()
	return nil
}

// fileFirst reports whether the state file's checkpoint is restored over
// etcd's, of generation gen: when etcd took none after the one the file
// descends from (its leader wrote it after that one and could not write
// etcd: a checkpoint too large for it, a failed write, a crash). Open
// buckets do not order them: a later one in the file may come from a
// leader whose clock ran ahead or whose grace was shorter, while a later
// etcd checkpoint deleted the feeds and aggregates it covered, which the
// file lacks. A file of an earlier build, which names no base, is
// restored when it names the later open bucket.
func fileFirst(file, etcd *pb.ForecastCheckpoint, gen uint64) bool {
	if file.BaseGeneration == nil {
		return file.GetOpenBucketUnix() > etcd.GetOpenBucketUnix()
	}
	return file.GetBaseGeneration() >= gen
}

// readEtcdCheckpoint returns the checkpoint the manifest names (nil when
// none or corrupt) and the manifest's generation.
func (f *forecaster) readEtcdCheckpoint(ctx context.Context) (*pb.ForecastCheckpoint, uint64, error) {
	st := f.c.store
	for attempt := 0; ; attempt++ {
		resp, err := f.c.cli.Get(ctx, st.fkey(fkeyManifest))
		if err != nil {
			return nil, 0, fmt.Errorf("read forecast manifest: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return nil, 0, nil
		}
		man := &pb.ForecastManifest{}
		if err := proto.Unmarshal(resp.Kvs[0].Value, man); err != nil {
			f.c.log.Error("forecast manifest corrupt; ignoring the checkpoint", "err", err)
			return nil, 0, nil
		}
		pfx := st.fkey(fmt.Sprintf("%s%020d/", fkeyChunks, man.GetGeneration()))
		// The chunks a page at a time (one response holding a checkpoint
		// of MaxSnapshotBytes would exceed the client's receive limit),
		// all at the manifest's revision.
		var kvs []*mvccpb.KeyValue
		page := int64(max(1, (32<<20)/f.cfg.ValueBytes))
		from, end := pfx, clientv3.GetPrefixRangeEnd(pfx)
		for uint64(len(kvs)) <= uint64(man.GetChunks()) {
			cr, err := f.c.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(resp.Header.Revision), clientv3.WithLimit(page),
				clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
			if err != nil {
				return nil, 0, fmt.Errorf("read forecast checkpoint: %w", err)
			}
			kvs = append(kvs, cr.Kvs...)
			if !cr.More || len(cr.Kvs) == 0 {
				break
			}
			from = string(cr.Kvs[len(cr.Kvs)-1].Key) + "\x00"
		}
		packed, err := joinChunks(man, kvs, pfx)
		if err != nil {
			if attempt < 2 {
				continue // a new checkpoint replaced this one meanwhile
			}
			f.c.log.Error("forecast checkpoint corrupt; ignoring it", "generation", man.GetGeneration(), "err", err)
			return nil, man.GetGeneration(), nil
		}
		cp, err := unpackCheckpoint(packed)
		if err != nil {
			f.c.log.Error("forecast checkpoint corrupt; ignoring it", "generation", man.GetGeneration(), "err", err)
			return nil, man.GetGeneration(), nil
		}
		return cp, man.GetGeneration(), nil
	}
}

// joinChunks reassembles a checkpoint and checks it against its manifest.
func joinChunks(man *pb.ForecastManifest, kvs []*mvccpb.KeyValue, pfx string) ([]byte, error) {
	if uint64(len(kvs)) != uint64(man.GetChunks()) {
		return nil, fmt.Errorf("%d chunks, manifest says %d", len(kvs), man.GetChunks())
	}
	// The size is checked against the chunks before anything is
	// allocated: a corrupt size field must not reserve what it claims
	// (2^40 bytes is a fatal out-of-memory, not an error).
	var size uint64
	for i, kv := range kvs {
		if string(kv.Key) != pfx+fmt.Sprintf("%06d", i) {
			return nil, fmt.Errorf("chunk %d missing (found %s)", i, kv.Key)
		}
		size += uint64(len(kv.Value))
	}
	if size != man.GetSizeBytes() {
		return nil, fmt.Errorf("%d bytes, manifest says %d", size, man.GetSizeBytes())
	}
	out := make([]byte, 0, size)
	for _, kv := range kvs {
		out = append(out, kv.Value...)
	}
	if s := sha256.Sum256(out); !bytes.Equal(s[:], man.GetSha256()) {
		return nil, errors.New("checksum mismatch")
	}
	return out, nil
}

// maxCheckpoint bounds a decompressed checkpoint (the engine's own bound).
const maxCheckpoint = 64 << 30

func unpackCheckpoint(packed []byte) (*pb.ForecastCheckpoint, error) {
	r := flate.NewReader(bytes.NewReader(packed))
	defer r.Close()
	raw, err := io.ReadAll(io.LimitReader(r, maxCheckpoint+1))
	if err != nil {
		return nil, fmt.Errorf("decompress checkpoint: %w", err)
	}
	if len(raw) > maxCheckpoint {
		return nil, errors.New("decompress checkpoint: too large")
	}
	cp := &pb.ForecastCheckpoint{}
	if err := proto.Unmarshal(raw, cp); err != nil {
		return nil, fmt.Errorf("decode checkpoint: %w", err)
	}
	for _, h := range cp.GetHistory() {
		if h.GetResource() == "" || h.GetRegion() == "" {
			return nil, errors.New("decode checkpoint: history of an unnamed series")
		}
	}
	if cp.GetOpenBucketUnix() < 0 || cp.GetFeedsRevision() < 0 {
		return nil, errors.New("decode checkpoint: negative bucket or revision")
	}
	return cp, nil
}

// State file: magic, SHA-256 of the rest, the packed checkpoint.
const stateMagic = "PMFCCKPT"

func writeStateFile(path string, packed []byte, sum [32]byte) error {
	// Locked: controllers of one host may share the path, and a restore
	// removes the temporary files of killed writers only (restore).
	return atomicfile.WriteLocked(path, 0o600, []byte(stateMagic), sum[:], packed)
}

func readStateFile(path string) (*pb.ForecastCheckpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	h := len(stateMagic) + sha256.Size
	if len(b) < h || string(b[:len(stateMagic)]) != stateMagic {
		return nil, errors.New("not a forecast state file")
	}
	if s := sha256.Sum256(b[h:]); !bytes.Equal(s[:], b[len(stateMagic):h]) {
		return nil, errors.New("checksum mismatch")
	}
	return unpackCheckpoint(b[h:])
}

// applyFeeds applies the feeds stored since the last one applied, in the
// order they were stored.
func (f *forecaster) applyFeeds(ctx context.Context) (bool, error) {
	resp, err := f.c.cli.Get(ctx, f.c.store.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithMinCreateRev(f.feedsRev+1),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return false, fmt.Errorf("read feeds: %w", err)
	}
	for _, kv := range resp.Kvs {
		rec := &pb.FeedRecord{}
		err := unpack(kv.Value, rec)
		if err == nil {
			err = applyFeed(f.eng, rec)
		}
		kind := feedKindName(rec.GetKind())
		if err != nil {
			f.c.m.fcFeeds.WithLabelValues(kind, "failed").Inc()
			f.c.log.Error("feed not applied", "key", string(kv.Key), "name", rec.GetName(), "err", err)
		} else {
			f.c.m.fcFeeds.WithLabelValues(kind, "applied").Inc()
			f.c.log.Info("feed applied", "kind", kind, "name", rec.GetName(), "by", rec.GetBy())
		}
		f.feedsRev = kv.CreateRevision
	}
	return len(resp.Kvs) > 0, nil
}

func applyFeed(eng *forecast.Engine, rec *pb.FeedRecord) error {
	switch rec.GetKind() {
	case pb.FeedKind_FEED_KIND_EVENTS:
		return eng.ReadEventsCSV(bytes.NewReader(rec.GetCsv()))
	case pb.FeedKind_FEED_KIND_COVARIATES:
		return eng.ReadCovariatesCSV(bytes.NewReader(rec.GetCsv()))
	}
	return fmt.Errorf("feed kind %v unknown", rec.GetKind())
}

func feedKindName(k pb.FeedKind) string {
	switch k {
	case pb.FeedKind_FEED_KIND_EVENTS:
		return "events"
	case pb.FeedKind_FEED_KIND_COVARIATES:
		return "covariates"
	}
	return "unknown"
}

// packLevel is pack with a chosen deflate level.
func packLevel(m proto.Message, level int) ([]byte, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, level)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
