package forecast

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors the controller branches on.
var (
	// ErrLate marks summaries for a bucket the engine already closed; they
	// are counted and dropped (the models have moved past that bucket).
	ErrLate = errors.New("summary for a closed bucket")
	// ErrFuture marks summaries too far ahead of the open bucket.
	ErrFuture = errors.New("summary too far in the future")
	// ErrTooManySeries marks summaries of new series beyond MaxSeries;
	// they are dropped and counted, the batch's others applied. It also
	// wraps ErrBadInput.
	ErrTooManySeries = fmt.Errorf("%w: series limit reached", ErrBadInput)
	// ErrUnknownResource is returned for a resource the engine never saw.
	ErrUnknownResource = errors.New("unknown resource")
	// ErrSnapshotMismatch is returned when a snapshot was taken with a
	// configuration of a different shape (step, window, horizon, ...).
	ErrSnapshotMismatch = errors.New("snapshot does not match the engine configuration")
)

// maxAhead is how many buckets past the open one a summary may target
// (agents' clocks run a little ahead, or the controller is catching up).
const maxAhead = 48

// EngineConfig configures an Engine. Zero fields take the defaults noted.
type EngineConfig struct {
	Step       time.Duration // bucket length (default 1h)
	Window     int           // regression window in buckets (default 4 weeks)
	Horizon    int           // forecast horizon in buckets (default one day)
	Hidden     int           // GRU hidden units (default 12)
	Covariates []string      // covariate names the models use (must be fed with SetCovariate)
	Workers    int           // parallel model updates (default GOMAXPROCS)
	MaxSeries  int           // refuse new series beyond this (default 1,000,000)
	Logger     *slog.Logger  // default slog.Default()
	// Registerer receives the engine's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

func (c EngineConfig) withDefaults() (EngineConfig, error) {
	if c.Step == 0 {
		c.Step = time.Hour
	}
	if c.Step < time.Second || c.Step%time.Second != 0 {
		return c, fmt.Errorf("%w: engine config: step %v (whole seconds, >= 1s)", ErrBadInput, c.Step)
	}
	if c.Window == 0 {
		c.Window = int(28 * 24 * time.Hour / c.Step)
	}
	if c.Horizon == 0 {
		c.Horizon = max(1, int(24*time.Hour/c.Step))
	}
	if c.Hidden == 0 {
		c.Hidden = 12
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.MaxSeries <= 0 {
		c.MaxSeries = 1_000_000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if _, err := (HybridConfig{Step: c.Step, Window: c.Window, Horizon: c.Horizon, Hidden: c.Hidden}).withDefaults(nil); err != nil {
		return c, fmt.Errorf("engine config: %w", err)
	}
	return c, nil
}

// SeriesKey names one demand series: a resource's accesses from one
// client region.
type SeriesKey struct{ Resource, Region string }

// AccessSummary is what an edge agent reports from the XDP counters: new
// flows to a resource from a client region during an interval starting at
// Start (any interval inside one bucket; several summaries add up).
type AccessSummary struct {
	Resource string
	Region   string
	Start    time.Time
	NewFlows uint64
}

type seriesState struct {
	m     *Hybrid
	first int64 // first bucket the series observed
	// last is the previous bucket's count (lastOK: known), the naive
	// forecast the online accuracy metrics compare against; not in
	// snapshots (the first bucket after a restore is not scored).
	last   float64
	lastOK bool
}

// stepScores sums one bucket's one-step scores over series (one worker's
// share): what engineMetrics' accuracy counters add.
type stepScores struct {
	scored, hits     float64
	absErr, naiveErr float64
}

// score adds the one-step forecast q of y (the model's before it
// observes y) against the previous bucket's count.
func (a *stepScores) score(s *seriesState, q []Quantiles, y float64) {
	if len(q) == 0 || !s.lastOK {
		return
	}
	f := q[0]
	a.scored++
	if f.Q10 <= y && y <= f.Q90 {
		a.hits++
	}
	a.absErr += math.Abs(y - f.Q50)
	a.naiveErr += math.Abs(y - s.last)
}

type resourceState struct {
	regions []string // order of the location model's regions
	loc     *LocationModel
}

// Engine is the controller's prediction engine: it turns access summaries
// and external feeds into per-(resource, region) demand forecasts, the
// access-location distribution of each resource and Mirroring Scores. All
// methods are safe for concurrent use.
type Engine struct {
	cfg EngineConfig

	mu      sync.RWMutex
	feeds   *Feeds
	events  []Event
	started bool
	open    int64 // index of the oldest open bucket
	pending map[int64]map[SeriesKey]float64
	series  map[SeriesKey]*seriesState
	res     map[string]*resourceState

	met *engineMetrics
}

// NewEngine returns an empty engine.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, pending: map[int64]map[SeriesKey]float64{}, series: map[SeriesKey]*seriesState{},
		res: map[string]*resourceState{}}
	e.feeds = &Feeds{Covariates: NewCovariates(cfg.Step)}
	e.feeds.Calendar, _ = NewCalendar(nil)
	e.met = newEngineMetrics()
	if cfg.Registerer != nil {
		if err := e.met.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("register forecast metrics: %w", err)
		}
	}
	return e, nil
}

// Config returns the effective configuration.
func (e *Engine) Config() EngineConfig { return e.cfg }

func (e *Engine) bucket(t time.Time) int64 {
	s := int64(e.cfg.Step / time.Second)
	u := t.Unix()
	b := u / s
	if u%s < 0 {
		b--
	}
	return b
}

func (e *Engine) bucketStart(b int64) time.Time {
	return time.Unix(b*int64(e.cfg.Step/time.Second), 0).UTC()
}

func validName(kind, s string) error {
	if s == "" || len(s) > 256 || !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s %q", ErrBadInput, kind, s)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s %q has a control character", ErrBadInput, kind, s)
		}
	}
	return nil
}

// Ingest adds access summaries to their buckets. The whole batch is
// validated first: a malformed summary (empty or invalid names, zero
// time) rejects the batch and nothing is applied. Summaries for closed
// buckets are dropped and counted; the returned error then wraps ErrLate
// (the others were applied). Summaries that would add a series beyond
// MaxSeries are dropped the same way (ErrTooManySeries). Summaries more than maxAhead buckets past the
// open bucket reject the batch with ErrFuture.
func (e *Engine) Ingest(batch []AccessSummary) (accepted int, err error) {
	for i, s := range batch {
		if err := validName("resource", s.Resource); err != nil {
			e.met.summaries.WithLabelValues("rejected").Add(float64(len(batch)))
			return 0, fmt.Errorf("summary %d: %w", i, err)
		}
		if err := validName("region", s.Region); err != nil {
			e.met.summaries.WithLabelValues("rejected").Add(float64(len(batch)))
			return 0, fmt.Errorf("summary %d: %w", i, err)
		}
		if s.Start.IsZero() {
			e.met.summaries.WithLabelValues("rejected").Add(float64(len(batch)))
			return 0, fmt.Errorf("summary %d: %w: zero start time", i, ErrBadInput)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(batch) == 0 {
		return 0, nil
	}
	// A fresh engine starts at the batch's oldest bucket, but only once
	// the batch is accepted: a rejected batch changes nothing.
	open := e.open
	if !e.started {
		open = e.bucket(batch[0].Start)
		for _, s := range batch {
			open = min(open, e.bucket(s.Start))
		}
	}
	for i, s := range batch {
		b := e.bucket(s.Start)
		if b > open+maxAhead {
			e.met.summaries.WithLabelValues("rejected").Add(float64(len(batch)))
			return 0, fmt.Errorf("summary %d at %v: %w (open bucket starts %v)", i, s.Start, ErrFuture, e.bucketStart(open))
		}
	}
	e.open, e.started = open, true
	late, refused := 0, 0
	for _, s := range batch {
		b := e.bucket(s.Start)
		if b < e.open {
			late++
			continue
		}
		k := SeriesKey{s.Resource, s.Region}
		if st, ok := e.series[k]; !ok {
			if len(e.series) >= e.cfg.MaxSeries {
				// Only the new series is refused: the batch's other
				// series keep their bucket.
				refused++
				continue
			}
			if err := e.addSeries(k, b); err != nil {
				return accepted, err
			}
		} else if b < st.first {
			// First seen in a later (still open) bucket: the series starts
			// here, or closeBucket would drop this accepted count.
			st.first = b
		}
		p := e.pending[b]
		if p == nil {
			p = map[SeriesKey]float64{}
			e.pending[b] = p
		}
		p[k] += float64(s.NewFlows)
		accepted++
	}
	e.met.summaries.WithLabelValues("accepted").Add(float64(accepted))
	var errs []error
	if refused > 0 {
		e.met.summaries.WithLabelValues("rejected").Add(float64(refused))
		errs = append(errs, fmt.Errorf("%d of %d summaries: %w (limit %d)", refused, len(batch), ErrTooManySeries, e.cfg.MaxSeries))
	}
	if late > 0 {
		e.met.summaries.WithLabelValues("late").Add(float64(late))
		errs = append(errs, fmt.Errorf("%d of %d summaries: %w", late, len(batch), ErrLate))
	}
	return accepted, errors.Join(errs...)
}

func (e *Engine) hybridConfig(region string, seed uint64) HybridConfig {
	return HybridConfig{Step: e.cfg.Step, Window: e.cfg.Window, Horizon: e.cfg.Horizon, Hidden: e.cfg.Hidden,
		Region: region, Covariates: e.cfg.Covariates, Kinds: e.kinds(), Seed: seed}
}

// kinds are the event kinds models learn effects for: holiday and every
// kind of the calendar at the time the model is created.
func (e *Engine) kinds() []string {
	k := []string{KindHoliday}
	return append(k, e.feeds.Calendar.Kinds()...)
}

// addSeries creates the model of a new series starting at bucket b.
func (e *Engine) addSeries(k SeriesKey, b int64) error {
	m, err := NewHybrid(e.hybridConfig(k.Region, seedOf(k.Resource+"\x00"+k.Region)), e.feeds)
	if err != nil {
		return err
	}
	e.series[k] = &seriesState{m: m, first: b}
	rs := e.res[k.Resource]
	if rs == nil {
		rs = &resourceState{}
		e.res[k.Resource] = rs
	}
	rs.regions = append(rs.regions, k.Region)
	if rs.loc != nil {
		rs.loc.addRegion(k.Region)
	} else if len(rs.regions) >= 2 {
		loc, err := e.newLocationModel(rs.regions)
		if err != nil {
			return err
		}
		rs.loc = loc
	}
	e.met.series.Set(float64(len(e.series)))
	e.met.resources.Set(float64(len(e.res)))
	return nil
}

// locHorizons are the horizons the location stacker learns: the next
// bucket and a day ahead (within the horizon).
func (e *Engine) locHorizons() []int {
	d := max(1, int(24*time.Hour/e.cfg.Step))
	if d > e.cfg.Horizon {
		d = e.cfg.Horizon
	}
	if d <= 1 {
		return []int{1}
	}
	return []int{1, d}
}

// SetEvents replaces the events calendar. Kinds that appear for the first
// time are learnt by models created afterwards (existing models learn the
// kinds they were created with; holidays always).
func (e *Engine) SetEvents(events []Event) error {
	cal, err := NewCalendar(events)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = cal.Events()
	e.feeds.Calendar = cal
	return nil
}

// ReadEventsCSV replaces the events calendar with the one in r (the
// ReadEvents format); a bad file changes nothing.
func (e *Engine) ReadEventsCSV(r io.Reader) error {
	ev, err := ReadEvents(r)
	if err != nil {
		return err
	}
	return e.SetEvents(ev)
}

// ReadCovariatesCSV adds the values of a wide covariates CSV
// (timestamp[,region],name...); a bad file changes nothing.
func (e *Engine) ReadCovariatesCSV(r io.Reader) error {
	e.mu.RLock() // e.feeds is swapped by UnmarshalBinary
	defer e.mu.RUnlock()
	return e.feeds.Covariates.ReadCSV(r)
}

// SetCovariate stores one value of a numeric feed (e.g. temperature) for a
// region ("" = every region) and the bucket containing t. Values for
// future buckets are forecasts of the covariate and are used as such.
func (e *Engine) SetCovariate(name, region string, t time.Time, v float64) error {
	e.mu.RLock() // e.feeds is swapped by UnmarshalBinary
	defer e.mu.RUnlock()
	return e.feeds.Covariates.Set(name, region, t, v)
}

// Advance closes every bucket that ends at or before now: each series
// observes its count for the bucket (zero when no summary came: no
// accesses is an observation), its forecast is refreshed, and each
// resource's location model observes the bucket's counts per region.
// Series update in parallel.
func (e *Engine) Advance(now time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return nil
	}
	last := e.bucket(now) - 1 // the last bucket that has ended
	if last-e.open > int64(e.cfg.Window) {
		// Away for more than a window: the older buckets cannot matter to
		// any regression any more; jump the models over them at once.
		skipTo := last - int64(e.cfg.Window)
		for b := range e.pending {
			if b <= skipTo {
				delete(e.pending, b)
			}
		}
		t := e.bucketStart(skipTo)
		for k, s := range e.series {
			if s.m.Observed() > 0 {
				if err := s.m.skipMany(skipTo-e.bucket(s.m.Last()), t); err != nil {
					return fmt.Errorf("series %s/%s: %w", k.Resource, k.Region, err)
				}
			} else {
				s.first = max(s.first, skipTo+1)
			}
		}
		for _, rs := range e.res {
			if rs.loc != nil && rs.loc.n > 0 {
				rs.loc.skipMany(skipTo-e.bucket(rs.loc.last), t)
			}
		}
		e.cfg.Logger.Warn("forecast engine skipped buckets it never received", "from", e.bucketStart(e.open), "to", t)
		e.open = skipTo + 1
	}
	for b := e.open; b <= last; b++ {
		t0 := time.Now()
		if err := e.closeBucket(b); err != nil {
			return err
		}
		e.open = b + 1
		e.met.closed.Inc()
		e.met.advance.Observe(time.Since(t0).Seconds())
	}
	// Covariate values older than a window are never read again.
	e.feeds.Covariates.Prune(e.bucketStart(e.open - int64(e.cfg.Window) - 1))
	return nil
}

// newLocationModel returns an empty location model over regions (copied)
// configured as the engine's.
func (e *Engine) newLocationModel(regions []string) (*LocationModel, error) {
	return NewLocationModel(LocationConfig{Regions: append([]string(nil), regions...), Step: e.cfg.Step,
		Horizons: e.locHorizons(), Covariates: e.cfg.Covariates, Kinds: e.kinds()}, e.feeds)
}

// parallel runs f(w, i) for i in [0, n) on the engine's workers (w is
// the worker's index, for per-worker results) and returns when all are
// done.
func (e *Engine) parallel(n int, f func(w, i int)) {
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for w := 0; w < e.cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(w, i)
			}
		}()
	}
	wg.Wait()
}

func (e *Engine) closeBucket(b int64) error {
	counts, known := e.pending[b]
	delete(e.pending, b)
	// A bucket for which the controller received no summary at all is
	// unknown (the controller or every agent was away), not a bucket of
	// zero demand; once any summary came, absent series had no accesses.
	t := e.bucketStart(b)
	keys := make([]SeriesKey, 0, len(e.series))
	for k, s := range e.series {
		if s.first <= b {
			keys = append(keys, k)
		}
	}
	failed := make([][]SeriesKey, e.cfg.Workers)
	acc := make([]stepScores, e.cfg.Workers)
	e.parallel(len(keys), func(w, i int) {
		k := keys[i]
		st := e.series[k]
		m := st.m
		var err error
		switch {
		case known:
			y := counts[k]
			acc[w].score(st, m.Forecast(), y)
			err = m.Observe(t, y)
			st.last, st.lastOK = y, true
		case m.Observed() > 0:
			err = m.Skip(t)
			st.lastOK = false
		}
		if err != nil {
			e.cfg.Logger.Error("forecast model failed; restarting it", "resource", k.Resource, "region", k.Region, "err", err)
			failed[w] = append(failed[w], k)
		}
	})
	for _, a := range acc {
		e.met.scored.Add(a.scored)
		e.met.hits.Add(a.hits)
		e.met.absErr.Add(a.absErr)
		e.met.naiveErr.Add(a.naiveErr)
	}
	// A model that failed (say its regression lost positive definiteness
	// on absurd input) must not stop the other series or the bucket: it
	// starts afresh from the next bucket.
	for _, ks := range failed {
		for _, k := range ks {
			m, err := NewHybrid(e.hybridConfig(k.Region, seedOf(k.Resource+"\x00"+k.Region)), e.feeds)
			if err != nil {
				return err
			}
			e.series[k] = &seriesState{m: m, first: b + 1}
			e.met.restarts.Inc()
		}
	}
	// The location models, one per resource, in parallel as the demand
	// models are; each then makes its forecasts for the bucket's readers.
	names := make([]string, 0, len(e.res))
	for name, rs := range e.res {
		if rs.loc != nil {
			names = append(names, name)
		}
	}
	lfailed := make([][]string, e.cfg.Workers)
	e.parallel(len(names), func(w, i int) {
		name := names[i]
		rs := e.res[name]
		c := make([]float64, len(rs.regions))
		for j, r := range rs.regions {
			c[j] = counts[SeriesKey{name, r}]
		}
		var err error
		switch {
		case !known && rs.loc.n > 0:
			err = rs.loc.Skip(t)
		case known && (rs.loc.n > 0 || sum(c) > 0):
			err = rs.loc.Observe(t, c)
		}
		if err != nil {
			e.cfg.Logger.Error("location model failed; restarting it", "resource", name, "err", err)
			lfailed[w] = append(lfailed[w], name)
			return
		}
		rs.loc.Precompute(e.cfg.Horizon)
	})
	for _, ns := range lfailed {
		for _, name := range ns {
			rs := e.res[name]
			loc, err := e.newLocationModel(rs.regions)
			if err != nil {
				return err
			}
			rs.loc = loc
			e.met.restarts.Inc()
		}
	}
	return nil
}

// RegionForecast is the demand forecast of one (resource, region).
type RegionForecast struct {
	Region string
	// Q[h-1] is the predictive distribution of the requests (new flows) in
	// the h-th bucket after Origin.
	Q []Quantiles
}

// ResourceForecast is everything the engine predicts for one resource.
type ResourceForecast struct {
	Resource string
	Origin   time.Time // start of the last closed bucket
	Step     time.Duration
	Regions  []RegionForecast
	// Shares[h-1][i] is the predicted share of the resource's requests
	// coming from Regions[i] in the h-th bucket (nil with one region).
	Shares [][]float64
	// Concentration is the Dirichlet concentration behind the next
	// bucket's shares (requests' worth of evidence).
	Concentration float64
}

// Resources lists the resources the engine knows, sorted.
func (e *Engine) Resources() []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]string, 0, len(e.res))
	for r := range e.res {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// Forecast returns the resource's current forecast. Regions whose series
// has not closed a bucket yet are left out; ErrNotReady when none has.
func (e *Engine) Forecast(resource string) (ResourceForecast, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.forecastLocked(resource)
}

func (e *Engine) forecastLocked(resource string) (ResourceForecast, error) {
	rs := e.res[resource]
	if rs == nil {
		return ResourceForecast{}, fmt.Errorf("%w: %q", ErrUnknownResource, resource)
	}
	out := ResourceForecast{Resource: resource, Step: e.cfg.Step}
	for _, r := range rs.regions {
		s := e.series[SeriesKey{resource, r}]
		if s.m.Observed() == 0 {
			continue
		}
		out.Origin = s.m.Last()
		out.Regions = append(out.Regions, RegionForecast{Region: r, Q: append([]Quantiles(nil), s.m.Forecast()...)})
	}
	if len(out.Regions) == 0 {
		return out, fmt.Errorf("%w: %q has no closed bucket yet", ErrNotReady, resource)
	}
	if rs.loc != nil && rs.loc.n > 0 && len(out.Regions) == len(rs.regions) {
		all := make([]float64, e.cfg.Horizon*len(rs.regions))
		for h := 1; h <= e.cfg.Horizon; h++ {
			p := all[(h-1)*len(rs.regions) : h*len(rs.regions) : h*len(rs.regions)]
			c, err := rs.loc.Predict(h, p)
			if err != nil {
				return out, err
			}
			if h == 1 {
				out.Concentration = c
			}
			out.Shares = append(out.Shares, p)
		}
	}
	return out, nil
}

// Score returns the Mirroring Score of each candidate location for the
// resource: P(predicted requests × latency saved × value > bytes to copy
// and store × prices), sorted best first.
func (e *Engine) Score(resource string, req ScoreRequest) ([]MirrorScore, error) {
	f, err := e.Forecast(resource)
	if err != nil {
		return nil, err
	}
	return Score(demandOf(f), req, e.cfg.Step, seedOf(resource))
}

func demandOf(f ResourceForecast) []RegionDemand {
	d := make([]RegionDemand, len(f.Regions))
	for i, r := range f.Regions {
		d[i] = RegionDemand(r)
	}
	return d
}

// Explain renders the Mirroring Score breakdown of a resource for an
// operator (what `controller explain <resource>` prints).
func (e *Engine) Explain(resource string, req ScoreRequest) (string, error) {
	e.mu.RLock()
	f, err := e.forecastLocked(resource)
	acc := map[string][4]float64{}
	if err == nil {
		for _, r := range f.Regions {
			m := e.series[SeriesKey{resource, r.Region}].m
			H := len(m.acc.hybAE)
			acc[r.Region] = [4]float64{m.acc.hybAE[0], m.acc.hybAE[H-1], m.acc.blrAE[0], m.acc.blrAE[H-1]}
		}
	}
	e.mu.RUnlock()
	if err != nil {
		return "", err
	}
	scores, err := Score(demandOf(f), req, e.cfg.Step, seedOf(resource))
	if err != nil {
		return "", err
	}
	in := ExplainInput{Resource: resource, Origin: f.Origin, Step: f.Step, Request: req, Demand: demandOf(f),
		Scores: scores, Accuracy: acc, ShareConcentration: f.Concentration}
	if len(f.Shares) > 0 {
		in.Shares = f.Shares[0]
	}
	return RenderExplain(in), nil
}

// Stats describes the engine's size.
type Stats struct {
	Series, Resources, PendingBuckets int
	OpenBucket                        time.Time
}

// Stats returns the engine's size.
func (e *Engine) Stats() Stats {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return Stats{Series: len(e.series), Resources: len(e.res), PendingBuckets: len(e.pending), OpenBucket: e.bucketStart(e.open)}
}

type engineMetrics struct {
	series, resources prometheus.Gauge
	closed            prometheus.Counter
	summaries         *prometheus.CounterVec
	advance           prometheus.Histogram
	snapshotBytes     prometheus.Gauge
	restarts          prometheus.Counter
	// One-step accuracy, online: summed over series, so large series
	// weigh most (what a copy's benefit is counted in).
	scored, hits, absErr, naiveErr prometheus.Counter
}

func newEngineMetrics() *engineMetrics {
	return &engineMetrics{
		series: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_forecast_series",
			Help: "Demand series (resource × client region) the prediction engine models."}),
		resources: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_forecast_resources",
			Help: "Resources the prediction engine models."}),
		closed: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_buckets_closed_total",
			Help: "Buckets closed (every series updated and re-forecast)."}),
		summaries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_forecast_summaries_total",
			Help: "Access summaries received, by outcome (accepted, late, rejected)."}, []string{"outcome"}),
		advance: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "premirror_forecast_bucket_update_duration_seconds",
			Help:    "Time to update and re-forecast every series for one bucket.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_forecast_snapshot_size_bytes",
			Help: "Size of the last model-state snapshot."}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_model_restarts_total",
			Help: "Models that failed on their input and were started afresh."}),
		scored: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_scored_total",
			Help: "One-bucket-ahead forecasts scored against what came (series × buckets with the previous bucket known)."}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_interval_hits_total",
			Help: "Scored forecasts whose 80% interval (10th to 90th percentile) held the count that came: over scored_total, the interval's coverage."}),
		absErr: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_abs_error_total",
			Help: "Sum over scored forecasts of |count − median forecast| (requests)."}),
		naiveErr: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_forecast_naive_abs_error_total",
			Help: "Sum over the same points of |count − previous bucket's count|: abs_error_total over it is the forecast's error relative to naive (below 1: better)."}),
	}
}

func (m *engineMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.series, m.resources, m.closed, m.summaries, m.advance, m.snapshotBytes, m.restarts,
		m.scored, m.hits, m.absErr, m.naiveErr}
}

func (m *engineMetrics) register(r prometheus.Registerer) error {
	for _, c := range m.collectors() {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
