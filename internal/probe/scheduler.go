package probe

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Kind selects the probe protocol.
type Kind uint8

const (
	// KindTCP times a TCP handshake (TCPProber).
	KindTCP Kind = iota + 1
	// KindUDP times a UDP echo (UDPProber against a Responder).
	KindUDP
)

// String returns "tcp" or "udp".
func (k Kind) String() string {
	switch k {
	case KindTCP:
		return "tcp"
	case KindUDP:
		return "udp"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Target is one probed path end: a mirror reached at Addr with Kind.
type Target struct {
	// Mirror is the routing ID of the mirror (informational for probing).
	Mirror uint32
	Kind   Kind
	// Addr is "ip:port" (IPv6 in brackets).
	Addr string
}

// Result is the outcome of one probe.
type Result struct {
	Target Target
	// At is when the probe was sent.
	At  time.Time
	RTT time.Duration
	// Err is nil on success; see ErrTimeout and ErrRefused.
	Err error
}

// DefaultInterval is the probe period.
const DefaultInterval = 2 * time.Second

// DefaultJitter spreads each wait uniformly over ±20% of the interval.
const DefaultJitter = 0.2

// DefaultActiveInterval is the agent's probe period of the mirrors that
// carry its traffic (Schedule.Active): a dead one is then known within
// about half a second, while the rest are probed every Interval.
const DefaultActiveInterval = 400 * time.Millisecond

// Schedule is the probe timing rule, shared by the live Scheduler and the
// replay in controller route-eval.
type Schedule struct {
	// Interval is the mean time between two probes of a target
	// (0: DefaultInterval).
	Interval time.Duration
	// Jitter is the half-width of the uniform spread around Interval, as a
	// fraction below 1 (0: DefaultJitter; negative: none).
	Jitter float64
	// Active is the mean time between two probes of a target marked
	// active (Scheduler.SetActive: a mirror carrying traffic), when shorter
	// than Interval; 0: Interval. Failover time follows it, probe load
	// the much larger Interval of everything else.
	Active time.Duration
	// Survey is the mean time between two probes of a target marked as
	// surveyed (Scheduler.SetSurvey: a mirror outside the edge's
	// shortlist of nearest ones), when longer than Interval; 0: Interval.
	// With hundreds of mirrors, probe load follows the shortlist, while
	// the survey still notices a far mirror that came closer.
	Survey time.Duration
}

// Validate checks the fields, naming the bad one.
func (s Schedule) Validate() error {
	switch {
	case s.Interval < 0:
		return fmt.Errorf("probe Interval %v: must be positive", s.Interval)
	case s.Jitter >= 1:
		return fmt.Errorf("probe Jitter %v: must be below 1", s.Jitter)
	case s.Active < 0:
		return fmt.Errorf("probe Active %v: must be positive", s.Active)
	case s.Survey < 0:
		return fmt.Errorf("probe Survey %v: must be positive", s.Survey)
	}
	return nil
}

func (s Schedule) interval() time.Duration {
	if s.Interval == 0 {
		return DefaultInterval
	}
	return s.Interval
}

// First is the delay before a target's first probe: uniform over one
// interval, so targets added together do not probe in lockstep.
func (s Schedule) First(r *rand.Rand) time.Duration {
	return time.Duration(r.Float64() * float64(s.interval()))
}

// activeInterval is the period of an active target.
func (s Schedule) activeInterval() time.Duration {
	if s.Active > 0 && s.Active < s.interval() {
		return s.Active
	}
	return s.interval()
}

// surveyInterval is the period of a surveyed target.
func (s Schedule) surveyInterval() time.Duration {
	if s.Survey > s.interval() {
		return s.Survey
	}
	return s.interval()
}

// Next is the delay between two probes of a target.
func (s Schedule) Next(r *rand.Rand) time.Duration {
	return s.next(r, s.interval())
}

func (s Schedule) next(r *rand.Rand, iv time.Duration) time.Duration {
	j := s.Jitter
	switch {
	case j == 0:
		j = DefaultJitter
	case j < 0:
		j = 0
	}
	f := 1 + j*(2*r.Float64()-1)
	return time.Duration(f * float64(iv))
}

// Scheduler probes a changing set of targets, each on its own jittered
// timer, and reports every result to OnResult (called from the probing
// goroutines, so it must be safe for concurrent use; Table.Observe is).
type Scheduler struct {
	sched   Schedule
	timeout time.Duration
	retry   time.Duration
	// activeRetry is retry for an active target.
	activeRetry time.Duration
	retries     int
	timeoutF    func(Target) time.Duration
	probers     map[Kind]Prober
	onResult    func(Result)
	log         *slog.Logger
	metrics     *Metrics

	mu      sync.Mutex
	ctx     context.Context // nil until Run
	targets map[Target]context.CancelFunc
	wake    map[Target]chan struct{} // a loop's nudge: it became active
	wanted  []Target
	active  map[Target]bool
	survey  map[Target]bool
	wg      sync.WaitGroup
	seed    uint64
	stopped bool // Run has returned; no loop may start any more
}

// SchedulerConfig configures NewScheduler.
type SchedulerConfig struct {
	Schedule Schedule
	// Timeout bounds one probe (0: the smaller of 1 s and the interval).
	Timeout time.Duration
	// TimeoutFor, if set, gives a target's timeout (capped by Timeout), so
	// a near mirror's lost probe is known lost in milliseconds, not a
	// second: e.g. a few smoothed RTTs from the estimator.
	TimeoutFor func(Target) time.Duration
	// FastRetries probes that follow a failed probe are sent after Retry
	// instead of the interval, so a dead path reaches Fall consecutive
	// failures within one interval plus a few timeouts, instead of Fall
	// intervals. Default 2 (Fall − 1 with the default Fall of 3); negative
	// disables. Retry defaults to an eighth of the interval (of the active
	// interval for an active target).
	FastRetries int
	Retry       time.Duration
	// TCP and UDP are the probers per kind; a target whose kind has no
	// prober fails every probe with an error.
	TCP, UDP Prober
	// OnResult receives every result; required.
	OnResult func(Result)
	Logger   *slog.Logger
	Metrics  *Metrics
	// Seed makes the timing reproducible; 0 picks a random seed.
	Seed uint64
}

// NewScheduler validates cfg and returns an idle scheduler.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if err := cfg.Schedule.Validate(); err != nil {
		return nil, err
	}
	if cfg.OnResult == nil {
		return nil, fmt.Errorf("probe scheduler OnResult: required")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("probe scheduler Timeout %v: must be positive", cfg.Timeout)
	}
	to := cfg.Timeout
	if to == 0 {
		to = min(DefaultProbeTimeout, cfg.Schedule.interval())
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	retries, retry, activeRetry := cfg.FastRetries, cfg.Retry, cfg.Retry
	if retries == 0 {
		retries = 2
	}
	if retry <= 0 {
		retry = max(cfg.Schedule.interval()/8, time.Millisecond)
		activeRetry = max(cfg.Schedule.activeInterval()/8, time.Millisecond)
	}
	return &Scheduler{
		sched: cfg.Schedule, timeout: to, retry: retry, activeRetry: activeRetry, retries: retries, timeoutF: cfg.TimeoutFor,
		active: map[Target]bool{}, survey: map[Target]bool{},
		onResult: cfg.OnResult, log: log, metrics: cfg.Metrics,
		probers: map[Kind]Prober{KindTCP: cfg.TCP, KindUDP: cfg.UDP},
		targets: map[Target]context.CancelFunc{}, wake: map[Target]chan struct{}{}, seed: seed,
	}, nil
}

// SetTargets replaces the probed set: new targets start probing, removed
// ones stop (their in-flight probe is cancelled). Safe before and during Run.
func (s *Scheduler) SetTargets(ts []Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wanted = append(s.wanted[:0], ts...)
	if s.ctx != nil && !s.stopped {
		s.reconcile()
	}
}

// SetActive marks the targets that carry traffic: they are probed every
// Schedule.Active instead of every Interval (from their next probe on).
// Targets not in ts are inactive. Safe at any time.
func (s *Scheduler) SetActive(ts []Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.active
	s.active = make(map[Target]bool, len(ts))
	for _, t := range ts {
		s.active[t] = true
		if !was[t] {
			s.nudgeLocked(t) // newly active: do not wait out a long inactive interval
		}
	}
}

// nudgeLocked wakes t's loop so it reschedules its next probe under its
// new interval; s.mu is held.
func (s *Scheduler) nudgeLocked(t Target) {
	if w := s.wake[t]; w != nil {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// SetSurvey marks the targets probed only every Schedule.Survey (from
// their next probe on); an active target is never surveyed. A target
// leaving the survey is probed within an Interval, not at the end of its
// long wait. Safe at any time.
func (s *Scheduler) SetSurvey(ts []Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.survey
	s.survey = make(map[Target]bool, len(ts))
	for _, t := range ts {
		s.survey[t] = true
	}
	for t := range was {
		if !s.survey[t] {
			s.nudgeLocked(t)
		}
	}
}

// isActive reports whether t is marked active.
func (s *Scheduler) isActive(t Target) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[t]
}

// Interval returns the mean period t is probed at now: the active, the
// survey or the plain interval.
func (s *Scheduler) Interval(t Target) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.intervalLocked(t)
}

func (s *Scheduler) intervalLocked(t Target) time.Duration {
	switch {
	case s.active[t]:
		return s.sched.activeInterval()
	case s.survey[t]:
		return s.sched.surveyInterval()
	}
	return s.sched.interval()
}

// reconcile starts and stops loops to match wanted; s.mu is held.
func (s *Scheduler) reconcile() {
	want := make(map[Target]bool, len(s.wanted))
	for _, t := range s.wanted {
		want[t] = true
	}
	for t, cancel := range s.targets {
		if !want[t] {
			cancel()
			delete(s.targets, t)
			delete(s.wake, t)
		}
	}
	for t := range want {
		if _, ok := s.targets[t]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(s.ctx)
		s.targets[t] = cancel
		wake := make(chan struct{}, 1)
		s.wake[t] = wake
		s.seed++
		r := rand.New(rand.NewPCG(s.seed, uint64(len(t.Addr))<<32|uint64(t.Mirror)))
		s.wg.Add(1)
		go s.loop(ctx, t, r, wake)
	}
}

// Run probes until ctx is done, then stops every loop and waits for them.
func (s *Scheduler) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ctx != nil {
		s.mu.Unlock()
		return fmt.Errorf("probe scheduler: already running")
	}
	s.ctx = ctx
	s.reconcile()
	s.mu.Unlock()

	<-ctx.Done()
	s.mu.Lock()
	s.stopped = true
	for t, cancel := range s.targets {
		cancel()
		delete(s.targets, t)
		delete(s.wake, t)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Scheduler) loop(ctx context.Context, t Target, r *rand.Rand, wake <-chan struct{}) {
	defer s.wg.Done()
	first := s.sched.First(r)
	if s.isActive(t) {
		first = time.Duration(r.Float64() * float64(s.sched.activeInterval()))
	}
	timer := time.NewTimer(first)
	defer timer.Stop()
	failed := 0 // consecutive failures
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			// Became active, or left the survey: the next probe within
			// its new interval.
			timer.Stop()
			timer.Reset(time.Duration(r.Float64() * float64(s.Interval(t))))
			continue
		case <-timer.C:
		}
		res := s.probeOnce(ctx, t)
		if ctx.Err() != nil {
			return // cancelled mid-probe: not a path failure
		}
		s.metrics.result(t.Kind, res.RTT, res.Err)
		s.onResult(res)
		if res.Err != nil {
			failed++
		} else {
			failed = 0
		}
		active := s.isActive(t)
		switch {
		case failed > 0 && failed <= s.retries && active:
			timer.Reset(s.activeRetry) // confirm a failure fast
		case failed > 0 && failed <= s.retries:
			timer.Reset(s.retry)
		default:
			timer.Reset(s.sched.next(r, s.Interval(t)))
		}
	}
}

func (s *Scheduler) probeOnce(ctx context.Context, t Target) Result {
	res := Result{Target: t, At: time.Now()}
	p := s.probers[t.Kind]
	if p == nil {
		res.Err = fmt.Errorf("probe %s %s: no prober for kind", t.Kind, t.Addr)
		return res
	}
	to := s.timeout
	if s.timeoutF != nil {
		if d := s.timeoutF(t); d > 0 && d < to {
			to = d
		}
	}
	pctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	res.RTT, res.Err = p.Probe(pctx, t.Addr)
	if res.Err != nil {
		s.log.Debug("probe failed", "mirror", t.Mirror, "addr", t.Addr, "kind", t.Kind.String(), "err", res.Err)
	}
	return res
}

// Table keeps one Estimator per target, safe for concurrent use: the
// Scheduler's OnResult writes, the agent's reporting loop reads.
type Table struct {
	cfg EstimatorConfig
	mu  sync.Mutex
	m   map[Target]*Estimator
}

// NewTable validates cfg and returns an empty table.
func NewTable(cfg EstimatorConfig) (*Table, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Table{cfg: c, m: map[Target]*Estimator{}}, nil
}

// Observe feeds a result to its target's estimator, creating it on first use.
func (t *Table) Observe(r Result) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[r.Target]
	if e == nil {
		e = &Estimator{cfg: t.cfg}
		t.m[r.Target] = e
	}
	return e.Observe(r.At, r.RTT, r.Err)
}

// Get returns the estimate of one target.
func (t *Table) Get(tg Target) (Estimate, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[tg]
	if !ok {
		return Estimate{}, false
	}
	return e.Estimate(), true
}

// Snapshot copies every estimate.
func (t *Table) Snapshot() map[Target]Estimate {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[Target]Estimate, len(t.m))
	for k, e := range t.m {
		out[k] = e.Estimate()
	}
	return out
}

// Retain drops the estimators of targets not in keep (a mirror left the
// shortlist), so a later return starts from a clean history.
func (t *Table) Retain(keep []Target) {
	k := make(map[Target]bool, len(keep))
	for _, x := range keep {
		k[x] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for x := range t.m {
		if !k[x] {
			delete(t.m, x)
		}
	}
}
