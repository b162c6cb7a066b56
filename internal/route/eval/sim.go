package eval

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/premirror/premirror/internal/chash"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/route"
)

// Options configure a replay. The zero value of a field selects its
// default (DefaultOptions).
type Options struct {
	// Mirrors is how many mirror sites to place by k-medoids on the mean
	// RTT matrix; 0 means min(10, max(2, sites/4)).
	Mirrors int
	// MirrorSites names the mirror sites instead (overrides Mirrors).
	MirrorSites []string
	// Origin names the origin site; "" means the 1-medoid (the site with
	// the lowest mean RTT to all clients: the best single location).
	Origin string
	// Duration of the replay for a matrix with one snapshot (1 h).
	Duration time.Duration
	// Segment is the replay time per snapshot of a dated matrix (10 min; the
	// IBM file's weeks). Numeric time columns are seconds and replay as
	// such. RTTs move linearly from one snapshot to the next.
	Segment time.Duration
	// Tick is the probe interval and the controller's evaluation period (2 s).
	Tick time.Duration
	// Warmup is excluded from scoring (2 min).
	Warmup time.Duration
	// SessionEvery is the mean time between session starts per client site
	// (Poisson, 30 s); SessionMean the mean session length (exponential,
	// 5 min); RequestEvery the time between a session's requests (10 s).
	SessionEvery, SessionMean, RequestEvery time.Duration
	// Seed drives every random draw; a replay is reproducible.
	Seed uint64
	// ProbeLoss is the share of probes lost (0.5%); ProbeSpike the share
	// of probe samples delayed 1.5–3× (1%), the outliers median-of-3 is
	// for. ProbeNoise scales the per-packet noise of a probe against the
	// pair's jitter (0.5).
	ProbeLoss, ProbeSpike, ProbeNoise float64
	// JitterFrac is a pair's RTT standard deviation as a share of its RTT
	// when the data has none (2%; WonderProxy gives mdev per pair).
	JitterFrac float64
	// Corr is the correlation time of a path's queueing state (20 s).
	Corr time.Duration
	// SelfRTT is the RTT of a client to a mirror at its own site when the
	// data has no self pair (1 ms).
	SelfRTT time.Duration
	// Steps replays every snapshot of a matrix for Segment, as dated ones
	// are, even when its time column is numeric (seconds otherwise).
	Steps bool
	// MaxReplay bounds the simulated time (72 h): a time column in the
	// wrong unit fails fast instead of replaying for years.
	MaxReplay time.Duration
	// Shortlist > 0 probes, per client, only the Shortlist mirrors nearest
	// by Vivaldi coordinates (plus one exploration probe per tick).
	Shortlist int
	// Route is the policy under test (zero: route.DefaultConfig()).
	Route route.Config
	// Exact uses every field as given, zero included, instead of filling
	// zero fields with defaults. The command sets it: its flags already
	// hold the defaults, so "-warmup 0" or "-self-rtt 0" must mean 0.
	Exact bool
}

// DefaultOptions returns the replay defaults documented on Options.
func DefaultOptions() Options {
	return Options{
		Duration: time.Hour, Segment: 10 * time.Minute, Tick: 2 * time.Second, Warmup: 2 * time.Minute,
		SessionEvery: 30 * time.Second, SessionMean: 5 * time.Minute, RequestEvery: 10 * time.Second,
		Seed: 1, ProbeLoss: 0.005, ProbeSpike: 0.01, ProbeNoise: 0.5, JitterFrac: 0.02,
		Corr: 20 * time.Second, SelfRTT: time.Millisecond, MaxReplay: 72 * time.Hour,
	}
}

func (o *Options) fill() error {
	d := DefaultOptions()
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 && !o.Exact {
			*v = def
		}
	}
	setF := func(v *float64, def float64) {
		if *v == 0 && !o.Exact {
			*v = def
		}
	}
	setD(&o.Duration, d.Duration)
	setD(&o.Segment, d.Segment)
	setD(&o.Tick, d.Tick)
	setD(&o.Warmup, d.Warmup)
	setD(&o.SessionEvery, d.SessionEvery)
	setD(&o.SessionMean, d.SessionMean)
	setD(&o.RequestEvery, d.RequestEvery)
	setD(&o.Corr, d.Corr)
	setD(&o.SelfRTT, d.SelfRTT)
	setD(&o.MaxReplay, d.MaxReplay)
	setF(&o.ProbeLoss, d.ProbeLoss)
	setF(&o.ProbeSpike, d.ProbeSpike)
	setF(&o.ProbeNoise, d.ProbeNoise)
	setF(&o.JitterFrac, d.JitterFrac)
	if o.Seed == 0 && !o.Exact {
		o.Seed = d.Seed
	}
	bad := func(f string, v any) error { return fmt.Errorf("route-eval option %s %v: out of range", f, v) }
	switch {
	case o.Mirrors < 0:
		return bad("mirrors", o.Mirrors)
	case o.Duration <= 0:
		return bad("duration", o.Duration)
	case o.Segment <= 0:
		return bad("segment", o.Segment)
	case o.Tick < time.Second || o.Tick%time.Second != 0:
		return bad("tick", o.Tick.String()+" (whole seconds ≥ 1 s)")
	case o.Warmup < 0:
		return bad("warmup", o.Warmup)
	case o.SessionEvery <= 0 || o.SessionMean < 0 || o.RequestEvery < time.Second:
		// A zero mean gap between sessions would start sessions forever.
		return bad("session timing", []time.Duration{o.SessionEvery, o.SessionMean, o.RequestEvery})
	case o.ProbeLoss < 0 || o.ProbeLoss >= 1:
		return bad("probe-loss", o.ProbeLoss)
	case o.ProbeSpike < 0 || o.ProbeSpike > 1:
		return bad("probe-spike", o.ProbeSpike)
	case o.ProbeNoise < 0:
		return bad("probe-noise", o.ProbeNoise)
	case o.JitterFrac < 0 || o.JitterFrac > 1:
		return bad("jitter-frac", o.JitterFrac)
	case o.Corr < 0:
		return bad("corr", o.Corr)
	case o.Shortlist < 0:
		return bad("shortlist", o.Shortlist)
	case o.MaxReplay <= 0:
		return bad("max-replay", o.MaxReplay)
	}
	return nil
}

// PolicyResult is one policy's score.
type PolicyResult struct {
	Name                      string
	Mean, P50, P95, P99       float64 // ms, over scored requests
	MeanVsOracle, P95VsOracle float64
	// FlipsPerHour: changes of the mirror a client region's new sessions
	// go to (the table's primary mirror), per region per hour.
	FlipsPerHour float64
	// Disrupted is the share of sessions whose requests did not all reach
	// the mirror their first request reached.
	Disrupted float64
	Requests  int
}

// Report is the outcome of a replay.
type Report struct {
	Dataset         string
	Sites, Clients  int
	Dropped         []string // sites left out (no geography, unreachable)
	Mirrors         []string
	Origin          string
	Snapshots       int
	Simulated       time.Duration
	Scored          time.Duration
	Sessions        int
	ShortlistRecall float64 // share of evaluations whose best mirror was probed
	// NoGeo: the sites have no coordinates, so geo-nearest routes to the
	// origin (pass -sites to give them some).
	NoGeo    bool
	Policies []PolicyResult
	Options  Options
	// Notes are facts about the data and the scoring a reader of the
	// figures needs: what the reader merged, which paths were filled in or
	// unknown, which ratios are undefined.
	Notes []string
}

// Policy names, in report order.
const (
	PolicyPremirror  = "premirror"
	PolicyGreedy     = "greedy"
	PolicyGeo        = "geo-nearest"
	PolicyRoundRobin = "round-robin"
	PolicyOrigin     = "origin-only"
	PolicyOracle     = "oracle"
)

var policyOrder = []string{PolicyPremirror, PolicyGreedy, PolicyGeo, PolicyRoundRobin, PolicyOrigin, PolicyOracle}

// GreedyConfig is the policy with every damping switched off: each
// evaluation moves everything to the cheapest mirror by the same estimates.
func GreedyConfig(base route.Config) route.Config {
	base.MinGain, base.MinGainAbs, base.Dwell = -1, -1, -1
	base.Confirm, base.MaxMove = 1, 1
	base.TieBand, base.SlowStart = -1, -1
	base.PeakIncumbent = true
	return base
}

// pairModel is one (client, target) path over time.
type pairModel struct {
	ok   bool
	mu   []float64 // per snapshot: mean, floor, std, ceiling (ms)
	fl   []float64
	sd   []float64
	mx   []float64 // +Inf when the data gives no maximum
	z    float64   // OU state of the queueing excess
	cur  float64   // true RTT at the current tick
	sdNw float64   // std at the current tick
}

// ErrNoClients is returned when no site can reach the origin and a mirror.
var ErrNoClients = errors.New("no client site reaches the origin and a mirror")

// ErrTooFewSites is returned for a matrix with fewer than two usable
// sites: with one, every policy is the same single choice.
var ErrTooFewSites = errors.New("a replay needs at least 2 sites")

// ErrNothingScored is returned when no request falls after the warm-up,
// so there is no figure to report.
var ErrNothingScored = errors.New("no request was scored")

// ErrTooLong is returned when the replay would be longer than MaxReplay.
var ErrTooLong = errors.New("replay too long")

// ErrUnknownSite is returned when -origin or -mirror-sites names a site
// the matrix does not have (or left out).
var ErrUnknownSite = errors.New("unknown site")

// Run replays m under every policy and scores them.
func Run(ctx context.Context, m *Matrix, opts Options) (*Report, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if len(m.Sites) == 0 || len(m.Snaps) == 0 {
		return nil, fmt.Errorf("replay %s: empty matrix", m.Name)
	}
	rep := &Report{Dataset: m.Name, Sites: len(m.Sites), Snapshots: len(m.Snaps), Options: opts}
	rep.Notes = append(rep.Notes, m.Notes...)

	// Sites: with mostly geo-tagged sites, drop the rest so the geography
	// baseline is scored on the same clients as every other policy.
	withGeo := 0
	for _, s := range m.Sites {
		if s.HasGeo {
			withGeo++
		}
	}
	var keep []int
	for i, s := range m.Sites {
		if withGeo*2 < len(m.Sites) || s.HasGeo {
			keep = append(keep, i)
		} else {
			rep.Dropped = append(rep.Dropped, s.Name+" (no coordinates)")
		}
	}
	geoOK := withGeo*2 >= len(m.Sites)
	if len(keep) < 2 {
		return nil, fmt.Errorf("replay %s: %d usable site(s) of %d: %w", m.Name, len(keep), len(m.Sites), ErrTooFewSites)
	}
	n := len(m.Sites)
	series := func(i, j int) ([]Stat, bool) {
		st, _, ok := fillSeries(m, n, i, j, opts.SelfRTT)
		return st, ok
	}

	// Mean matrix over kept sites for placement and the origin.
	mean := make([][]float64, len(keep))
	for a, i := range keep {
		mean[a] = make([]float64, len(keep))
		for b, j := range keep {
			st, ok := series(i, j)
			if !ok {
				mean[a][b] = math.Inf(1)
				continue
			}
			s := 0.0
			for _, x := range st {
				s += x.Avg
			}
			mean[a][b] = s / float64(len(st))
		}
	}
	byName := map[string]int{}
	for a, i := range keep {
		byName[m.Sites[i].Name] = a
	}
	// lookup resolves site names, naming every unknown one at once and
	// telling a site the file lacks from one left out for want of
	// coordinates.
	lookup := func(what string, names []string) ([]int, error) {
		var out []int
		var bad []string
		for _, nm := range names {
			if a, ok := byName[nm]; ok {
				out = append(out, a)
				continue
			}
			why := "not in " + m.Name
			if slices.ContainsFunc(m.Sites, func(s Site) bool { return s.Name == nm }) {
				why = "left out: no coordinates"
			}
			bad = append(bad, fmt.Sprintf("%q (%s)", nm, why))
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("route-eval %s %s: %w", what, strings.Join(bad, ", "), ErrUnknownSite)
		}
		return out, nil
	}
	var mirrors []int // positions in keep
	if len(opts.MirrorSites) > 0 {
		var err error
		if mirrors, err = lookup("mirror sites", opts.MirrorSites); err != nil {
			return nil, err
		}
	} else {
		k := opts.Mirrors
		if k > len(keep) {
			return nil, fmt.Errorf("route-eval option mirrors %d: more than the %d usable sites of %s", k, len(keep), m.Name)
		}
		if k == 0 {
			k = min(10, max(2, len(keep)/4))
		}
		mirrors = KMedoids(mean, k)
	}
	slices.Sort(mirrors)
	mirrors = slices.Compact(mirrors)
	if dup := len(opts.MirrorSites) - len(mirrors); len(opts.MirrorSites) > 0 && dup > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d mirror site name(s) repeated in the list: each site holds one mirror", dup))
	}
	origin := -1
	if opts.Origin != "" {
		a, err := lookup("origin", []string{opts.Origin})
		if err != nil {
			return nil, err
		}
		origin = a[0]
	} else if o := KMedoids(mean, 1); len(o) == 1 {
		origin = o[0]
	}
	for _, a := range mirrors {
		rep.Mirrors = append(rep.Mirrors, m.Sites[keep[a]].Name)
	}
	rep.Origin = m.Sites[keep[origin]].Name

	// Clients: kept sites reaching the origin and at least one mirror.
	M := len(mirrors)
	var clients []int
	var pairs [][]pairModel // [client][mirror j, origin at M]
	var cov coverage
	for a := range keep {
		row := make([]pairModel, M+1)
		reach := 0
		var rowCov coverage
		for j := 0; j <= M; j++ {
			t := origin
			if j < M {
				t = mirrors[j]
			}
			st, fi, ok := fillSeries(m, n, keep[a], keep[t], opts.SelfRTT)
			rowCov.add(fi, ok)
			if !ok {
				continue
			}
			row[j] = newPair(st, opts.JitterFrac)
			if j < M {
				reach++
			}
		}
		if reach == 0 || !row[M].ok {
			why := " (no RTT to the origin)"
			if reach == 0 {
				why = " (no RTT to any mirror)"
			}
			rep.Dropped = append(rep.Dropped, m.Sites[keep[a]].Name+why)
			continue
		}
		cov.merge(rowCov)
		clients = append(clients, a)
		pairs = append(pairs, row)
	}
	C := len(clients)
	if C == 0 {
		return nil, fmt.Errorf("replay %s: %w", m.Name, ErrNoClients)
	}
	rep.Clients = C
	rep.Notes = append(rep.Notes, cov.notes(opts.SelfRTT)...)
	for j, a := range mirrors {
		if !slices.ContainsFunc(pairs, func(row []pairModel) bool { return row[j].ok }) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("mirror %s has no measured RTT to any client region: no policy can use it", m.Sites[keep[a]].Name))
		}
	}

	// Timeline.
	length := opts.Duration.Seconds()
	var snapT []float64 // snapshot times, seconds of replay
	if len(m.Snaps) > 1 {
		if m.Dated || opts.Steps {
			// Dated snapshots (weeks apart) are compressed to Segment each.
			seg := opts.Segment.Seconds()
			for k := range m.Snaps {
				snapT = append(snapT, (float64(k)+0.5)*seg)
			}
			length = seg * float64(len(m.Snaps))
		} else {
			// Numeric time columns are seconds: replayed as they are, the
			// last snapshot holding for one mean gap.
			t0 := m.Snaps[0].At
			for _, s := range m.Snaps {
				snapT = append(snapT, s.At-t0)
			}
			span := snapT[len(snapT)-1]
			length = span + span/float64(len(snapT)-1)
		}
	}
	// A time column in milliseconds, or epochs years apart, would replay
	// for years: refuse rather than run for days or exhaust memory.
	if length > opts.MaxReplay.Seconds() {
		hint := "lower -duration or -segment"
		if len(m.Snaps) > 1 && !m.Dated && !opts.Steps {
			hint = fmt.Sprintf("its %d numeric times span %.0f s; if they are not seconds, or to compress them, use -steps (each snapshot replays -segment)", len(m.Snaps), snapT[len(snapT)-1])
		}
		return nil, fmt.Errorf("replay %s: %w: %v is longer than -max-replay %v: %s", m.Name, ErrTooLong,
			time.Duration(length*float64(time.Second)).Round(time.Second), opts.MaxReplay, hint)
	}
	D := int(length)
	if D <= int(opts.Warmup/time.Second) {
		hint := "lengthen -duration or shorten -warmup"
		if len(m.Snaps) > 1 {
			hint = "lengthen -segment with -steps, or shorten -warmup"
		}
		return nil, fmt.Errorf("route-eval: replay of %ds is not longer than the %v warm-up: %s", D, opts.Warmup, hint)
	}
	rep.Simulated = time.Duration(D) * time.Second
	warm := int(opts.Warmup / time.Second)
	rep.Scored = time.Duration(D-warm) * time.Second

	s := &sim{
		opts: opts, C: C, M: M, D: D, warm: warm, pairs: pairs, snapT: snapT,
		rTruth: rand.New(rand.NewPCG(opts.Seed, 1)), rProbe: rand.New(rand.NewPCG(opts.Seed, 2)),
		rSess:        rand.New(rand.NewPCG(opts.Seed, 3)),
		originMirror: slices.Index(mirrors, origin),
	}
	if geoOK {
		s.geo = make([]int, C)
		for c, a := range clients {
			best, bestD := -1, math.Inf(1)
			for j, t := range mirrors {
				if !pairs[c][j].ok {
					continue
				}
				if d := haversineKm(m.Sites[keep[a]], m.Sites[keep[t]]); d < bestD {
					best, bestD = j, d
				}
			}
			s.geo[c] = best
		}
	}
	s.names = make([]string, C)
	for c, a := range clients {
		s.names[c] = m.Sites[keep[a]].Name
	}
	s.mirrorNames = rep.Mirrors
	s.geoSites = make([]Site, 0)
	for _, a := range clients {
		s.geoSites = append(s.geoSites, m.Sites[keep[a]])
	}
	for _, a := range mirrors {
		s.mirrorSites = append(s.mirrorSites, m.Sites[keep[a]])
	}
	if err := s.run(ctx); err != nil {
		return nil, err
	}
	rep.Sessions = s.sessions
	rep.NoGeo = s.geo == nil
	rep.Policies = s.results()
	if rep.Policies[len(rep.Policies)-1].Requests == 0 {
		return nil, fmt.Errorf("replay %s: %w in %v after the warm-up from %d client region(s): lengthen -duration or shorten -session-every", m.Name, ErrNothingScored, rep.Scored, C)
	}
	or := rep.Policies[len(rep.Policies)-1]
	for _, q := range []struct {
		name string
		v    float64
	}{{"mean", or.Mean}, {"p95", or.P95}} {
		if q.v == 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the oracle's %s is 0 ms: %s/oracle is n/a (undefined) where a policy's %s is not 0 too", q.name, q.name, q.name))
		}
	}
	if opts.Shortlist > 0 && s.recallN > 0 {
		rep.ShortlistRecall = float64(s.recallHit) / float64(s.recallN)
	}
	return rep, nil
}

// fillInfo says how fillSeries completed a path's series.
type fillInfo struct {
	reversed bool // some snapshot took the j → i measurement
	carried  bool // some snapshot took the nearest snapshot's value
	self     bool // a site to itself, unmeasured: the SelfRTT option
}

// fillSeries returns the (i → j) stats per snapshot: the reverse direction
// where i → j is missing, then the nearest snapshot in time that has the
// pair. ok is false when the pair is never measured.
func fillSeries(m *Matrix, n, i, j int, self time.Duration) ([]Stat, fillInfo, bool) {
	T := len(m.Snaps)
	out := make([]Stat, T)
	have := make([]bool, T)
	found := false
	var fi fillInfo
	for k, s := range m.Snaps {
		st := s.RTT[i*n+j]
		if math.IsNaN(st.Avg) {
			st = s.RTT[j*n+i]
			fi.reversed = fi.reversed || !math.IsNaN(st.Avg)
		}
		if !math.IsNaN(st.Avg) {
			out[k], have[k], found = st, true, true
		}
	}
	if !found {
		if i != j {
			return nil, fi, false
		}
		st := missing()
		st.Avg = float64(self) / float64(time.Millisecond)
		for k := range out {
			out[k] = st
		}
		fi.self = true
		return out, fi, true
	}
	for k := range out {
		if have[k] {
			continue
		}
		fi.carried = true
		for d := 1; d < T; d++ {
			if k-d >= 0 && have[k-d] {
				out[k] = out[k-d]
				break
			}
			if k+d < T && have[k+d] {
				out[k] = out[k+d]
				break
			}
		}
	}
	return out, fi, true
}

// coverage counts how the replayed (client, mirror or origin) paths were
// completed, for the report's notes.
type coverage struct {
	paths, reversed, carried, self, unknown int
}

func (c *coverage) add(fi fillInfo, ok bool) {
	c.paths++
	switch {
	case !ok:
		c.unknown++
	case fi.self:
		c.self++
	}
	if fi.reversed {
		c.reversed++
	}
	if fi.carried {
		c.carried++
	}
}

func (c *coverage) merge(o coverage) {
	c.paths += o.paths
	c.reversed += o.reversed
	c.carried += o.carried
	c.self += o.self
	c.unknown += o.unknown
}

func (c coverage) notes(self time.Duration) []string {
	var out []string
	if c.reversed > 0 {
		out = append(out, fmt.Sprintf("%d of %d client→mirror/origin paths use the reverse direction's RTT where their own is missing", c.reversed, c.paths))
	}
	if c.carried > 0 {
		out = append(out, fmt.Sprintf("%d of %d paths lack some snapshots and hold the nearest snapshot's RTT there", c.carried, c.paths))
	}
	if c.self > 0 {
		out = append(out, fmt.Sprintf("%d path(s) from a site to itself have no self-pair: %v assumed (-self-rtt)", c.self, self))
	}
	if c.unknown > 0 {
		out = append(out, fmt.Sprintf("%d of %d paths were never measured in either direction: that mirror is unavailable to that client under every policy, the oracle included", c.unknown, c.paths))
	}
	return out
}

// newPair derives the truth model of a path: a floor plus a lognormal
// queueing excess with the data's mean and standard deviation.
func newPair(st []Stat, jitterFrac float64) pairModel {
	p := pairModel{ok: true}
	for _, x := range st {
		mu := x.Avg
		fl, sd := x.Min, x.Mdev
		if math.IsNaN(fl) || math.IsNaN(sd) {
			sd = jitterFrac * mu
			fl = max(0, mu-2*sd)
		}
		fl = min(fl, mu)
		mx := x.Max
		if math.IsNaN(mx) || mx < mu {
			mx = math.Inf(1)
		}
		p.mx = append(p.mx, mx)
		p.mu = append(p.mu, mu)
		p.fl = append(p.fl, fl)
		p.sd = append(p.sd, sd)
	}
	return p
}

type session struct {
	client int
	start  int
	hash   uint64
	first  [6]int32 // first mirror per policy, -1 before the first request
	broken [6]bool
}

type sim struct {
	opts                  Options
	C, M, D, warm         int
	pairs                 [][]pairModel
	snapT                 []float64
	rTruth, rProbe, rSess *rand.Rand
	geo                   []int // per client, geography-nearest mirror (nil: no geography)
	// originMirror is the mirror at the origin's site, -1 if none: the
	// origin path is then that mirror's path, not a second draw of it.
	originMirror       int
	names, mirrorNames []string
	geoSites           []Site
	mirrorSites        []Site

	sessions           int
	lat                [6][]float32
	flips              [6]int
	disrupted          [6]int
	scoredSessions     int
	recallHit, recallN int
}

// params interpolates a pair's (mean, floor, std, ceiling) at replay
// second t.
func (s *sim) params(p *pairModel, t float64) (mu, fl, sd, mx float64) {
	if len(p.mu) == 1 || len(s.snapT) == 0 {
		return p.mu[0], p.fl[0], p.sd[0], p.mx[0]
	}
	k := 0
	for k+1 < len(s.snapT) && s.snapT[k+1] <= t {
		k++
	}
	if t <= s.snapT[0] || k+1 >= len(s.snapT) {
		return p.mu[k], p.fl[k], p.sd[k], p.mx[k]
	}
	gap := s.snapT[k+1] - s.snapT[k]
	if gap <= 0 { // snapshots at one instant (a Matrix built in code)
		return p.mu[k+1], p.fl[k+1], p.sd[k+1], p.mx[k+1]
	}
	f := (t - s.snapT[k]) / gap
	lerp := func(a []float64) float64 { return a[k] + f*(a[k+1]-a[k]) }
	return lerp(p.mu), lerp(p.fl), lerp(p.sd), max(p.mx[k], p.mx[k+1])
}

// advance moves every path's true RTT to second t.
func (s *sim) advance(t int) {
	rho := 0.0
	if s.opts.Corr > 0 {
		rho = math.Exp(-1 / s.opts.Corr.Seconds())
	}
	innov := math.Sqrt(1 - rho*rho)
	for c := range s.pairs {
		for j := range s.pairs[c] {
			p := &s.pairs[c][j]
			if !p.ok {
				continue
			}
			if j == s.M && s.originMirror >= 0 {
				// One site, one path: a policy on the origin cannot beat
				// the oracle on the same mirror through noise.
				if q := &s.pairs[c][s.originMirror]; q.ok {
					p.cur, p.sdNw = q.cur, q.sdNw
					continue
				}
			}
			if t == 0 {
				p.z = s.rTruth.NormFloat64()
			} else {
				p.z = rho*p.z + innov*s.rTruth.NormFloat64()
			}
			mu, fl, sd, mx := s.params(p, float64(t))
			e := mu - fl
			p.sdNw = sd
			if e <= 0 {
				p.cur = mu
				continue
			}
			cv := sd / e
			sl := math.Sqrt(math.Log1p(cv * cv))
			// Bounded by the data's own maximum where it has one: a ping
			// run's max is about its 97th percentile, and an unbounded
			// lognormal tail would invent spikes the data never saw.
			p.cur = min(fl+e*math.Exp(sl*p.z-sl*sl/2), mx)
		}
	}
}

// probeSample is what a probe of pair (c, j) measures now: the path's
// state plus per-packet noise, sometimes a delayed outlier, sometimes lost.
func (s *sim) probeSample(c, j int) (float64, bool) {
	p := &s.pairs[c][j]
	if s.rProbe.Float64() < s.opts.ProbeLoss {
		return 0, false
	}
	v := p.cur + math.Abs(s.rProbe.NormFloat64())*s.opts.ProbeNoise*p.sdNw
	if s.rProbe.Float64() < s.opts.ProbeSpike {
		v *= 1.5 + 1.5*s.rProbe.Float64()
	}
	return v, true
}

func (s *sim) run(ctx context.Context) error {
	o := s.opts
	C, M, D := s.C, s.M, s.D
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }
	rc := o.Route
	greedyCfg := GreedyConfig(rc)
	eng, err := route.New(rc)
	if err != nil {
		return fmt.Errorf("route-eval policy config: %w", err)
	}
	greedy, err := route.New(greedyCfg)
	if err != nil {
		return fmt.Errorf("route-eval greedy config: %w", err)
	}
	slots := eng.Config().Slots

	// Sessions: Poisson starts per client, exponential lengths, a request
	// every RequestEvery from the start.
	var sess []session
	reqs := make([][]int32, D) // per second, session indices with a request
	for c := range C {
		t := 0.0
		for {
			t += s.rSess.ExpFloat64() * o.SessionEvery.Seconds()
			if int(t) >= D {
				break
			}
			length := s.rSess.ExpFloat64() * o.SessionMean.Seconds()
			id := int32(len(sess))
			se := session{client: c, start: int(t), hash: s.rSess.Uint64()}
			for k := range se.first {
				se.first[k] = -1
			}
			sess = append(sess, se)
			for r := t; r <= t+length && int(r) < D; r += o.RequestEvery.Seconds() {
				reqs[int(r)] = append(reqs[int(r)], id)
			}
		}
	}

	// Probing state.
	sched := probe.Schedule{Interval: o.Tick, Jitter: probe.DefaultJitter}
	est := make([][]*probe.Estimator, C)
	next := make([][]float64, C)
	for c := range C {
		est[c] = make([]*probe.Estimator, M)
		next[c] = make([]float64, M)
		for j := range M {
			est[c][j], _ = probe.NewEstimator(probe.EstimatorConfig{})
			next[c][j] = sched.First(s.rProbe).Seconds()
		}
	}
	var coords *probe.Coords
	short := make([][]bool, C) // probed set per client
	for c := range C {
		short[c] = make([]bool, M)
		for j := range M {
			short[c][j] = s.pairs[c][j].ok
		}
	}
	if o.Shortlist > 0 && o.Shortlist < M {
		coords = probe.NewCoords()
		s.initialShortlist(short)
	}
	explore := make([]float64, C)

	// Route state per engine.
	type table struct {
		st      *route.State
		tab     [][]uint32
		primary []int
	}
	tabs := [2]*table{{tab: make([][]uint32, C), primary: make([]int, C)}, {tab: make([][]uint32, C), primary: make([]int, C)}}
	for _, tb := range tabs {
		for c := range tb.primary {
			tb.primary[c] = -1
		}
	}
	in := &route.Input{}
	for c := range C {
		in.Regions = append(in.Regions, route.RegionID(c+1))
	}
	res := route.Resource{ID: 1}
	for j := range M {
		in.Mirrors = append(in.Mirrors, route.Mirror{ID: route.MirrorID(j + 1), Up: true})
		res.Replicas = append(res.Replicas, route.Replica{Mirror: route.MirrorID(j + 1), InSync: true})
	}
	in.Resources = []route.Resource{res}
	rr := make([]int, C)
	rrLast := make([]int, C)
	oracleLast := make([]int, C)
	for c := range C {
		rrLast[c], oracleLast[c] = -1, -1
	}
	oracle := make([]int, C)
	tickS := int(o.Tick / time.Second)

	for t := range D {
		if t%600 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		s.advance(t)

		// Oracle: the best mirror at this instant.
		for c := range C {
			best, bv := -1, math.Inf(1)
			for j := range M {
				if p := &s.pairs[c][j]; p.ok && p.cur < bv {
					best, bv = j, p.cur
				}
			}
			oracle[c] = best
			if t >= s.warm && oracleLast[c] >= 0 && best != oracleLast[c] {
				s.flips[5]++
			}
			oracleLast[c] = best
		}

		// Probes due in this second.
		for c := range C {
			for j := range M {
				if !short[c][j] || next[c][j] >= float64(t+1) {
					continue
				}
				when := next[c][j]
				next[c][j] = when + sched.Next(s.rProbe).Seconds()
				v, ok := s.probeSample(c, j)
				var perr error
				if !ok {
					perr = probe.ErrTimeout
				}
				_ = est[c][j].Observe(at(when), time.Duration(v*float64(time.Millisecond)), perr)
				if ok && coords != nil {
					_ = coords.Observe(s.names[c], s.mirrorNames[j], time.Duration(v*float64(time.Millisecond)))
				}
			}
			if coords != nil && explore[c] <= float64(t) {
				// One probe to a random mirror off the shortlist keeps
				// the coordinates of every mirror fresh.
				explore[c] = float64(t) + o.Tick.Seconds()
				j := s.rProbe.IntN(M)
				if !short[c][j] && s.pairs[c][j].ok {
					if v, ok := s.probeSample(c, j); ok {
						_ = coords.Observe(s.names[c], s.mirrorNames[j], time.Duration(v*float64(time.Millisecond)))
					}
				}
			}
		}

		// Controller evaluation.
		if t%tickS == 0 {
			in.Now = at(float64(t))
			in.Paths = in.Paths[:0]
			for c := range C {
				for j := range M {
					if !short[c][j] {
						continue
					}
					if p, ok := route.PathFromEstimate(route.RegionID(c+1), route.MirrorID(j+1), est[c][j].Estimate()); ok {
						in.Paths = append(in.Paths, p)
					}
				}
			}
			for k, e := range []*route.Engine{eng, greedy} {
				tb := tabs[k]
				r, st, err := e.Step(tb.st, in)
				if err != nil {
					return fmt.Errorf("route-eval step at %ds: %w", t, err)
				}
				tb.st = st
				for c := range C {
					rt := r.At(0, c)
					if rt.Weights == nil {
						tb.tab[c] = nil
						continue
					}
					if rt.Changed || tb.tab[c] == nil {
						if tb.tab[c], err = chash.Build(tb.tab[c], rt.Weights, slots); err != nil {
							return fmt.Errorf("route-eval table: %w", err)
						}
					}
					pm, pw := -1, uint32(0)
					for mid, w := range rt.Weights {
						if w > pw || (w == pw && int(mid)-1 < pm) {
							pm, pw = int(mid)-1, w
						}
					}
					if t >= s.warm && tb.primary[c] >= 0 && pm != tb.primary[c] {
						s.flips[k]++
					}
					tb.primary[c] = pm
				}
			}
			if coords != nil && t%(15*tickS) == 0 && t > 0 {
				s.refreshShortlist(coords, short, tabs[0].primary)
			}
			if o.Shortlist > 0 && t >= s.warm {
				for c := range C {
					s.recallN++
					if short[c][oracle[c]] {
						s.recallHit++
					}
				}
			}
		}

		// Requests.
		for _, id := range reqs[t] {
			se := &sess[id]
			c := se.client
			var pick [6]int
			slot := int(se.hash & uint64(slots-1))
			for k := range 2 {
				pick[k] = -1
				if tb := tabs[k].tab[c]; tb != nil {
					pick[k] = int(tb[slot]) - 1
				}
				if pick[k] < 0 {
					pick[k] = M // no route yet: the origin serves
				}
			}
			pick[2] = M
			if s.geo != nil {
				pick[2] = s.geo[c]
			}
			if se.first[3] < 0 {
				// Round robin assigns a session once; it stays put.
				for range M {
					rr[c] = (rr[c] + 1) % M
					if s.pairs[c][rr[c]].ok {
						break
					}
				}
				pick[3] = rr[c]
				if se.start >= s.warm && rrLast[c] >= 0 && rr[c] != rrLast[c] {
					s.flips[3]++
				}
				rrLast[c] = rr[c]
			} else {
				pick[3] = int(se.first[3])
			}
			pick[4] = M
			pick[5] = oracle[c]
			first := se.first[0] < 0
			if first && se.start >= s.warm {
				s.scoredSessions++
			}
			for k := range 6 {
				if first {
					se.first[k] = int32(pick[k])
				} else if int(se.first[k]) != pick[k] && !se.broken[k] {
					se.broken[k] = true
					if se.start >= s.warm {
						s.disrupted[k]++
					}
				}
				if se.start >= s.warm {
					s.lat[k] = append(s.lat[k], float32(s.pairs[c][pick[k]].cur))
				}
			}
		}
	}
	s.sessions = s.scoredSessions
	return nil
}

// initialShortlist starts each client on the Shortlist mirrors nearest by
// geography when known, else the first ones: coordinates need samples.
func (s *sim) initialShortlist(short [][]bool) {
	k := s.opts.Shortlist
	for c := range short {
		idx := make([]int, 0, s.M)
		for j := range s.M {
			short[c][j] = false
			if s.pairs[c][j].ok {
				idx = append(idx, j)
			}
		}
		if s.geo != nil {
			slices.SortStableFunc(idx, func(a, b int) int {
				return cmpFloat(haversineKm(s.geoSites[c], s.mirrorSites[a]), haversineKm(s.geoSites[c], s.mirrorSites[b]))
			})
		}
		for _, j := range idx[:min(k, len(idx))] {
			short[c][j] = true
		}
	}
}

// refreshShortlist re-ranks mirrors by coordinates; the mirror a client is
// routed to stays probed so a route never loses its own measurements.
func (s *sim) refreshShortlist(co *probe.Coords, short [][]bool, primary []int) {
	for c := range short {
		var cands []string
		for j := range s.M {
			if s.pairs[c][j].ok {
				cands = append(cands, s.mirrorNames[j])
			}
		}
		keep := map[string]bool{}
		for _, nm := range co.Shortlist(s.names[c], cands, s.opts.Shortlist) {
			keep[nm] = true
		}
		for j := range s.M {
			short[c][j] = keep[s.mirrorNames[j]] || j == primary[c]
		}
	}
}

func (s *sim) results() []PolicyResult {
	out := make([]PolicyResult, len(policyOrder))
	for k, name := range policyOrder {
		l := s.lat[k]
		r := PolicyResult{Name: name, Requests: len(l)}
		if len(l) > 0 {
			sum := 0.0
			for _, v := range l {
				sum += float64(v)
			}
			r.Mean = sum / float64(len(l))
			slices.Sort(l)
			q := func(p float64) float64 { return float64(l[min(len(l)-1, int(p*float64(len(l))))]) }
			r.P50, r.P95, r.P99 = q(0.50), q(0.95), q(0.99)
		}
		hours := float64(s.D-s.warm) / 3600
		r.FlipsPerHour = float64(s.flips[k]) / float64(s.C) / hours
		if s.scoredSessions > 0 {
			r.Disrupted = float64(s.disrupted[k]) / float64(s.scoredSessions)
		}
		out[k] = r
	}
	or := out[len(out)-1]
	for k := range out {
		out[k].MeanVsOracle = ratio(out[k].Mean, or.Mean)
		out[k].P95VsOracle = ratio(out[k].P95, or.P95)
	}
	return out
}

// ratio is a policy's figure over the oracle's: 1 when equal (both 0
// included), NaN (printed n/a) when the oracle's is 0 and the policy's is
// not, since no finite ratio means anything there.
func ratio(a, b float64) float64 {
	switch {
	case a == b:
		return 1
	case b > 0:
		return a / b
	}
	return math.NaN()
}
