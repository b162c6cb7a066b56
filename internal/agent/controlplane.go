package agent

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/control"
	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/probe"
)

// ControllerCfg connects the agent to the controller: the desired state
// then comes from the controller instead of this file, and the agent
// reports access counts, probe estimates, node load and mirror health.
type ControllerCfg struct {
	Endpoints []string `yaml:"endpoints"`
	// Site is this node's site (a Site object): the data plane's default
	// region and the region its probes speak for.
	Site      string   `yaml:"site"`
	Addresses []string `yaml:"addresses"`
	TLS       TLSFiles `yaml:"tls"`
	// ServerNames, when set, are the common names the controller's
	// certificate may carry (`controller certs` names it "controller").
	// Without them any certificate of the CA valid for the endpoint's host
	// is taken for the controller.
	ServerNames []string `yaml:"server_names"`
	// StateCache keeps the last applied version, so a restarted agent
	// forwards on it before the controller answers. On an edge, the
	// access journal lives beside it (<state_cache>.access, and its
	// .lock): a restarted agent reports what its predecessor had not
	// had confirmed, and the access counted since its last report.
	StateCache     string   `yaml:"state_cache"`
	ReportInterval Duration `yaml:"report_interval"`
	// Utilization is what a mirror host reports as its load, which the
	// routing policy turns into queueing cost: "cpu" (default, the host's
	// busy CPU share) or "none" (hosts that share CPUs with unrelated work,
	// such as the testbed's namespaces on one machine).
	Utilization string `yaml:"utilization"`
}

// ProbeCfg sets the active probes edges send to mirrors (UDP echo, which
// mirror agents answer).
type ProbeCfg struct {
	Interval Duration `yaml:"interval"` // default 2s, ±20% jitter
	// ActiveInterval probes the mirrors this edge's own region (and the
	// wildcard route) sends traffic to; default 400ms, never above
	// Interval. A dead mirror in use is then out of the tables in well
	// under a second, while the others cost a probe every Interval.
	ActiveInterval Duration `yaml:"active_interval"`
	// Shortlist bounds how many mirrors are probed every Interval: the
	// mirrors in use plus the nearest others by estimated RTT (and any
	// never measured); the rest are surveyed every SurveyInterval, and
	// their estimates stay usable by the controller for a few survey
	// intervals. Default DefaultShortlist; it matters only with more
	// mirrors than that.
	Shortlist int `yaml:"shortlist"`
	// SurveyInterval is the probe period of mirrors outside the
	// shortlist; default DefaultSurveyInterval, never below Interval.
	SurveyInterval Duration `yaml:"survey_interval"`
	Port           uint16   `yaml:"port"` // UDP echo port on mirrors; default 9461
	Disabled       bool     `yaml:"disabled"`
	// EchoRate bounds the echo replies a mirror host sends per second
	// (default probe.DefaultEchoRate): the budget of every edge probing
	// it, and the most a spoofed flood can reflect. An edge that routes to
	// the mirror probes it every active_interval, the others every
	// interval or survey_interval.
	EchoRate int `yaml:"echo_rate"`
}

// DefaultShortlist and DefaultSurveyInterval: with 32 mirrors probed
// every 2 s and the rest every 30 s, an edge of a 1,000-mirror fleet
// sends about 48 probes a second instead of 500.
const (
	DefaultShortlist      = 32
	DefaultSurveyInterval = 30 * time.Second
)

func (p ProbeCfg) shortlist() int {
	if p.Shortlist == 0 {
		return DefaultShortlist
	}
	return p.Shortlist
}

// DefaultProbePort is the mirrors' UDP echo port.
const DefaultProbePort = 9461

// interval is the probe period of the mirrors not in use.
func (p ProbeCfg) interval() time.Duration {
	if p.Interval == 0 {
		return probe.DefaultInterval
	}
	return time.Duration(p.Interval)
}

// echoRate is the reply budget of a mirror host, per second.
func (p ProbeCfg) echoRate() int {
	if p.EchoRate == 0 {
		return probe.DefaultEchoRate
	}
	return p.EchoRate
}

func (p ProbeCfg) port() uint16 {
	if p.Port == 0 {
		return DefaultProbePort
	}
	return p.Port
}

func (c *ControllerCfg) validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("controller.endpoints: at least one endpoint is required")
	}
	for i, e := range c.Endpoints {
		if err := checkHostPort(e, false); err != nil {
			return fmt.Errorf("controller.endpoints[%d]: %w", i, err)
		}
	}
	if c.Site == "" {
		return errors.New("controller.site: missing (the Site object this node belongs to)")
	}
	if c.ReportInterval < 0 {
		return fmt.Errorf("controller.report_interval: %v is negative", time.Duration(c.ReportInterval))
	}
	if err := c.TLS.Files().Validate(); err != nil {
		return fmt.Errorf("controller.%w (the control channel is always mutual TLS)", err)
	}
	for i, a := range c.Addresses {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("controller.addresses[%d]: %w", i, err)
		}
	}
	for i, n := range c.ServerNames {
		if strings.TrimSpace(n) == "" {
			return fmt.Errorf("controller.server_names[%d]: empty name", i)
		}
	}
	switch c.Utilization {
	case "", "cpu", "none":
	default:
		return fmt.Errorf("controller.utilization: %q is not cpu or none", c.Utilization)
	}
	return nil
}

func (cp *controlPlane) utilization() float64 {
	if c := cp.a.config().Controller; c != nil && c.Utilization == "none" {
		return 0
	}
	return cp.cpu.utilization()
}

// controlPlane holds the agent's controller session and probes.
type controlPlane struct {
	a      *Agent
	client *control.Client

	probes  *probe.Table
	sched   *probe.Scheduler
	pmet    *probe.Metrics
	mu      sync.Mutex
	health  map[probe.Target]probe.Health
	targets []probe.Target
	active  []probe.Target // of targets: the mirrors carrying this edge's traffic
	prev    map[pmaps.CounterKey]pmaps.Counter
	// atStart: the counters when a journal's baseline was restored into
	// prev, until the first report (dropBaseline counts from them).
	atStart map[pmaps.CounterKey]pmaps.Counter
	// changed: the counters whose new flows moved (or that went) since
	// the journal last asked (accessBaseline); nil without a journal.
	changed map[pmaps.CounterKey]struct{}
	cpu     cpuSampler
	// The version whose replication tasks were last applied, so their
	// problems are logged once per version, and those tasks, which a
	// timer applies again when a held task's start comes (tasks.go).
	taskVersion uint64
	taskApplied bool
	lastTasks   []*pb.ReplicationTask
	starts      map[startKey]taskStart
	taskTimer   *time.Timer
	taskStopped bool
	// taskMu serializes applyTasks (the session's and the timer's).
	taskMu sync.Mutex
	// clock, when set, is the time start plans are made at (tests put
	// a schedule boundary moments ahead); timers still run in real time.
	clock func() time.Time
}

func (a *Agent) role() pb.NodeRole {
	switch a.cfg.Role {
	case RoleEdge:
		return pb.NodeRole_NODE_ROLE_EDGE
	case RoleMirror:
		return pb.NodeRole_NODE_ROLE_MIRROR
	}
	return pb.NodeRole_NODE_ROLE_BOTH
}

// newControlPlane prepares probes (edges) and the controller client.
func newControlPlane(a *Agent) (*controlPlane, error) {
	cp := &controlPlane{a: a, health: map[probe.Target]probe.Health{}, pmet: probe.NewMetrics()}
	a.reg.MustRegister(cp.pmet)
	if a.router != nil && !a.cfg.Probe.Disabled {
		tbl, err := probe.NewTable(probe.EstimatorConfig{})
		if err != nil {
			return nil, err
		}
		cp.probes = tbl
		interval := a.cfg.Probe.interval()
		active := time.Duration(a.cfg.Probe.ActiveInterval)
		if active == 0 {
			active = probe.DefaultActiveInterval
		}
		survey := time.Duration(a.cfg.Probe.SurveyInterval)
		if survey == 0 {
			survey = DefaultSurveyInterval
		}
		cp.sched, err = probe.NewScheduler(probe.SchedulerConfig{
			Schedule:   probe.Schedule{Interval: interval, Active: active, Survey: survey},
			UDP:        &probe.UDPProber{},
			OnResult:   cp.observe,
			TimeoutFor: cp.timeoutFor,
			Metrics:    cp.pmet,
			Logger:     a.log,
		})
		if err != nil {
			return nil, err
		}
		a.reg.MustRegister(newPathMetrics(cp))
	}
	c := a.cfg.Controller
	if c == nil {
		return cp, nil
	}
	tlsSrc, err := pki.Open(c.TLS.Files(), a.log.With("channel", "controller"))
	if err != nil {
		return nil, fmt.Errorf("controller.tls: %w", err)
	}
	a.reg.MustRegister(tlsSrc.Collector("controller"))
	addrs := c.Addresses
	if len(addrs) == 0 {
		for _, iface := range append(a.cfg.RouterInterfaceNames(), a.cfg.DecapInterfaceNames()...) {
			as, _ := ifaceAddrs(iface)
			for _, ad := range as {
				if !ad.IsLinkLocalUnicast() {
					addrs = append(addrs, ad.String())
				}
			}
		}
	}
	cfg := control.Config{
		Endpoints: c.Endpoints, Credentials: tlsSrc.ClientCredentialsFor(c.ServerNames), Node: a.cfg.Node, Site: c.Site, Role: a.role(), Addresses: addrs,
		AgentVersion: "edge-agent", Apply: cp.apply, NodeStats: cp.nodeStats,
		ReportInterval: time.Duration(c.ReportInterval), CacheFile: c.StateCache, Logger: a.log,
		Revocation: tlsSrc,
	}
	if a.router != nil {
		cfg.OuterSources = a.outerSources
		cfg.AccessCounts = cp.accessCounts
		cfg.Probes = cp.probeResults
		if c.StateCache != "" {
			cfg.JournalFile = c.StateCache + ".access"
			cfg.CounterSource = cp.counterSource()
			cfg.AccessBaseline = cp.accessBaseline
			cfg.DropBaseline = cp.dropBaseline
			cp.changed = map[pmaps.CounterKey]struct{}{}
		}
	}
	// Every node speaks for the mirrors it serves or that name it as
	// their host (an edge named as one says it cannot vouch for them).
	cfg.MirrorHealth = cp.mirrorHealth
	if a.decap != nil {
		cfg.DecapSources = a.decapSourcesReported
	}
	cl, err := control.New(cfg)
	if err != nil {
		return nil, err
	}
	cp.client = cl
	a.reg.MustRegister(cl)
	if a.router != nil {
		if base, ok := cl.RestoredBaseline(); ok {
			cp.restoreCounters(base)
		} else {
			cp.baselineCounters()
		}
	}
	return cp, nil
}

// counterSource names this instance of pm_counters (the boot and the
// map's ID): a journal of another one holds values of counters that are
// gone, and the present ones count from zero.
func (cp *controlPlane) counterSource() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		cp.a.log.Warn("read boot id for the access journal", "err", err)
	}
	id, err := cp.a.router.CountersID()
	if err != nil {
		cp.a.log.Warn("read pm_counters' map ID for the access journal", "err", err)
	}
	return fmt.Sprintf("%s/%d", strings.TrimSpace(string(boot)), id)
}

// loadCache applies the last version the controller sent, if any, so the
// data plane forwards on it before the controller is reachable.
func (cp *controlPlane) loadCache() error {
	c := cp.a.cfg.Controller
	if c == nil || c.StateCache == "" {
		return nil
	}
	st, err := control.LoadCache(c.StateCache)
	if err != nil || st == nil {
		return err
	}
	if err := cp.apply(st.GetVersion(), st); err != nil {
		return fmt.Errorf("cached desired state %d: %w", st.GetVersion(), err)
	}
	cp.client.SetApplied(st.GetVersion(), st)
	return nil
}

// apply programs one controller version; its error becomes the NACK.
func (cp *controlPlane) apply(version uint64, st *pb.DesiredState) error {
	ds, err := StateFromProto(st)
	if err != nil {
		return err
	}
	a := cp.a
	a.applyMu.Lock()
	a.mu.Lock()
	next := *a.cfg
	// The version's edges, for the check after its apply; a refused
	// version's are not the running ones.
	prevEdges := a.edgeSources
	a.edgeSources = edgeSourcesFromProto(st.GetEdgeSources(), next.Node)
	a.mu.Unlock()
	next.State = ds
	if next.State.DefaultRegion == "" {
		next.State.DefaultRegion = next.Controller.Site
	}
	// A version owns the routing state: the maps stop keeping the
	// previous agent's (a failed apply keeps them).
	kept := a.keepRouting.Swap(false)
	err = a.apply(&next)
	if err != nil && kept {
		a.keepRouting.Store(true)
	}
	if err != nil {
		a.mu.Lock()
		a.edgeSources = prevEdges
		a.mu.Unlock()
	}
	a.applyMu.Unlock()
	if err != nil {
		return err
	}
	// After the routing state, and never a NACK: a task this node cannot
	// carry out is the controller's or the operator's to fix, and the
	// routing must not wait for it.
	cp.applyTasks(version, st.GetReplicationTasks())
	a.log.Info("controller version applied", "version", version)
	cp.updateTargets()
	return nil
}

// updateTargets points the probes at the mirrors of the current state.
func (cp *controlPlane) updateTargets() {
	if cp.sched == nil {
		return
	}
	a := cp.a
	a.mu.Lock()
	c := a.compiled
	a.mu.Unlock()
	if c == nil {
		return
	}
	var ts []probe.Target
	for id, m := range c.Mirrors {
		ts = append(ts, probe.Target{Mirror: uint32(id), Kind: probe.KindUDP,
			Addr: netip.AddrPortFrom(m.Addr, a.config().Probe.port()).String()})
	}
	active := activeTargets(c, ts)
	cp.mu.Lock()
	cp.targets, cp.active = ts, active
	cp.mu.Unlock()
	cp.sched.SetActive(active)
	cp.updateShortlist()
	cp.sched.SetTargets(ts)
	cp.probes.Retain(ts)
}

// updateShortlist re-ranks the probe targets by their latest estimates
// (a far mirror that came closer joins the shortlist at its next survey
// probe) and sets the probe-class gauges: at every new target list, at
// every report to the controller and, without one, every probe interval.
func (cp *controlPlane) updateShortlist() {
	if cp.sched == nil {
		return
	}
	cp.mu.Lock()
	ts, active := cp.targets, cp.active
	cp.mu.Unlock()
	survey := surveyTargets(ts, active, cp.probes, cp.a.config().Probe.shortlist())
	cp.sched.SetSurvey(survey)
	m := cp.a.metrics
	m.probeTargets.WithLabelValues("active").Set(float64(len(active)))
	m.probeTargets.WithLabelValues("shortlist").Set(float64(len(ts) - len(active) - len(survey)))
	m.probeTargets.WithLabelValues("survey").Set(float64(len(survey)))
}

// surveyTargets returns the targets outside the shortlist of k: every
// active target is in it, then the others nearest first by estimated
// RTT — never-measured ones before all (they must be measured once),
// healthy ones before the rest — until k; the remaining ones are
// surveyed.
func surveyTargets(ts, active []probe.Target, tbl *probe.Table, k int) []probe.Target {
	if len(ts) <= k {
		return nil
	}
	isActive := map[probe.Target]bool{}
	for _, t := range active {
		isActive[t] = true
	}
	type ranked struct {
		t       probe.Target
		unknown bool
		down    bool
		rtt     time.Duration
	}
	var rs []ranked
	for _, t := range ts {
		if isActive[t] {
			continue
		}
		r := ranked{t: t, unknown: true}
		if est, ok := tbl.Get(t); ok && est.Probes > 0 {
			r = ranked{t: t, down: est.Health == probe.HealthDown, rtt: est.RTT}
		}
		rs = append(rs, r)
	}
	slices.SortStableFunc(rs, func(a, b ranked) int {
		switch {
		case a.unknown != b.unknown:
			if a.unknown {
				return -1
			}
			return 1
		case a.down != b.down:
			if b.down {
				return -1
			}
			return 1
		case a.rtt != b.rtt:
			return cmp.Compare(a.rtt, b.rtt)
		}
		return cmp.Compare(a.t.Mirror, b.t.Mirror)
	})
	keep := max(k-len(active), 0)
	var out []probe.Target
	for i, r := range rs {
		if i >= keep {
			out = append(out, r.t)
		}
	}
	return out
}

// activeTargets are the probe targets of the mirrors that carry this
// edge's traffic: those with weight in a route of its own region (the
// desired state's default region, the edge's site) or the wildcard route.
func activeTargets(c *Compiled, ts []probe.Target) []probe.Target {
	used := map[pmaps.MirrorID]bool{}
	for k, ws := range c.Routes {
		if k.Region != 0 && k.Region != c.DefaultRegion {
			continue
		}
		for m, w := range ws {
			if w > 0 {
				used[m] = true
			}
		}
	}
	var out []probe.Target
	for _, t := range ts {
		if used[pmaps.MirrorID(t.Mirror)] {
			out = append(out, t)
		}
	}
	return out
}

// timeoutFor waits a few RTTs of the path (like TCP's RTO) rather than a
// fixed second, so a lost probe to a near mirror is known lost in
// milliseconds and failover is bounded by the probe interval. Like TCP's
// RTO (RFC 6298 §5.5) it doubles after every timeout in a row: a path
// whose RTT grew beyond the timeout (a reroute, a slower link) would
// otherwise never answer in time, never teach the estimator its new RTT,
// and be declared down instead of slower. With Fall = 3 a 25 ms timeout
// reaches 100 ms on the third probe.
func (cp *controlPlane) timeoutFor(t probe.Target) time.Duration {
	est, ok := cp.probes.Get(t)
	if !ok || est.Samples < 3 {
		return 0 // the scheduler's default
	}
	return probeTimeout(est)
}

// probeTimeout is timeoutFor's rule for one path's estimate.
func probeTimeout(est probe.Estimate) time.Duration {
	const floor, ceiling = 25 * time.Millisecond, time.Second
	rtt := max(est.RTT, est.Median)
	d := max(3*rtt+4*est.Jitter, floor)
	for i := 0; i < est.Failures && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

func (cp *controlPlane) observe(r probe.Result) {
	if err := cp.probes.Observe(r); err != nil {
		return
	}
	est, ok := cp.probes.Get(r.Target)
	if !ok {
		return
	}
	cp.mu.Lock()
	changed := cp.health[r.Target] != est.Health
	cp.health[r.Target] = est.Health
	cp.mu.Unlock()
	// A mirror going down or coming back must not wait for the next
	// report: failover is probe interval plus propagation.
	if changed && cp.client != nil {
		cp.client.ReportNow()
	}
}

func (cp *controlPlane) probeResults() []*pb.ProbeResult {
	if cp.probes == nil {
		return nil
	}
	a := cp.a
	a.mu.Lock()
	names := a.compiled.MirrorNames
	a.mu.Unlock()
	// Reports come every second or two: re-rank the shortlist with them.
	cp.updateShortlist()
	var out []*pb.ProbeResult
	for t, est := range cp.probes.Snapshot() {
		if n, ok := names[pmaps.MirrorID(t.Mirror)]; ok {
			r := control.ProbeResult(n, est)
			r.IntervalNs = int64(cp.sched.Interval(t))
			out = append(out, r)
		}
	}
	return out
}

// baselineCounters makes the counters' present values the point the
// first report counts from, for a new run (no access journal, or none
// usable). The counters outlive the agent (pinned): what they hold at
// start was counted before this process and partly reported by the one
// before it. Counting from here loses at most one report interval across
// a restart, instead of sending everything since the maps were created as
// one interval's accesses (a burst of new flows in every forecast after
// each restart).
func (cp *controlPlane) baselineCounters() {
	cs, err := cp.a.router.Counters()
	if err != nil {
		cp.a.log.Warn("read access counters", "err", err)
		return
	}
	cp.mu.Lock()
	cp.prev = cs
	cp.mu.Unlock()
}

// restoreCounters makes the access journal's baseline the point the
// first report counts from: the new flows each counter had when the
// previous process's last report counted it, so what it counted since is
// reported, and nothing before. Packets and bytes, which the controller
// does not count, start from their present values.
func (cp *controlPlane) restoreCounters(base []*pb.AccessCount) {
	cs, err := cp.a.router.Counters()
	if err != nil {
		cp.a.log.Warn("read access counters", "err", err)
	}
	prev := make(map[pmaps.CounterKey]pmaps.Counter, len(cs))
	for k, v := range cs {
		prev[k] = pmaps.Counter{Packets: v.Packets, Bytes: v.Bytes}
	}
	for _, a := range base {
		k := pmaps.CounterKey{Resource: pmaps.ResourceID(a.GetResourceId()), Region: pmaps.RegionID(a.GetRegionId()), Mirror: pmaps.MirrorID(a.GetMirrorId())}
		v := prev[k]
		v.NewFlows = a.GetNewFlows()
		prev[k] = v
	}
	cp.mu.Lock()
	cp.prev, cp.atStart = prev, cs
	cp.mu.Unlock()
}

// dropBaseline counts from the counters' values when the agent started
// instead of the journal's baseline (control.Config.DropBaseline: another
// agent reported their growth since): as a new run, but from the start,
// not from the controller's answer, so nothing counted since the start
// is lost.
func (cp *controlPlane) dropBaseline() {
	cp.mu.Lock()
	cs := cp.atStart
	cp.mu.Unlock()
	if cs == nil {
		// Not read at start: the present values are the next best.
		var err error
		if cs, err = cp.a.router.Counters(); err != nil {
			cp.a.log.Warn("read access counters", "err", err)
			return
		}
	}
	cp.mu.Lock()
	cp.prev, cp.atStart = cs, nil
	cp.mu.Unlock()
}

// accessBaseline is the journal's view of prev (control.Config.AccessBaseline):
// the new flows of every counter (all), or of those changed since its
// previous call.
func (cp *controlPlane) accessBaseline(all bool) []*pb.AccessCount {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []*pb.AccessCount
	add := func(k pmaps.CounterKey, n uint64) {
		out = append(out, &pb.AccessCount{ResourceId: uint32(k.Resource), RegionId: uint32(k.Region), MirrorId: uint32(k.Mirror), NewFlows: n})
	}
	if all {
		for k, v := range cp.prev {
			if v.NewFlows > 0 {
				add(k, v.NewFlows)
			}
		}
	} else {
		for k := range cp.changed {
			add(k, cp.prev[k].NewFlows)
		}
	}
	clear(cp.changed)
	return out
}

// accessCounts returns the counters' growth since the previous call and
// then deletes the counters nothing will count into again (their
// resource, region or mirror left the desired state; left in place they
// would fill pm_counters until counter_overflow) once they gained nothing
// since the previous call: their last growth went with an earlier report,
// which the journal holds from before it was sent, so a crash right after
// the delete loses none of it. One that just gained goes at the next
// report.
func (cp *controlPlane) accessCounts() []*pb.AccessCount {
	cs, err := cp.a.router.Counters()
	if err != nil {
		cp.a.log.Warn("read access counters", "err", err)
		return nil
	}
	cp.a.mu.Lock()
	c := cp.a.compiled
	cp.a.mu.Unlock()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := counterGrowth(cp.prev, cs)
	old := cp.prev
	cp.prev, cp.atStart = cs, nil
	// No version yet (keepRouting): every counter would look stale.
	if c != nil && !cp.a.keepRouting.Load() {
		cp.a.pruneCounters(cs, c, func(k pmaps.CounterKey) bool {
			p, ok := old[k]
			return ok && p == cs[k]
		})
	}
	if cp.changed != nil {
		for k, v := range cs {
			if old[k].NewFlows != v.NewFlows {
				cp.changed[k] = struct{}{}
			}
		}
		for k, v := range old {
			if _, ok := cs[k]; !ok && v.NewFlows > 0 {
				cp.changed[k] = struct{}{}
			}
		}
	}
	return out
}

// counterGrowth is what each counter gained from prev to cur, for the
// counters that gained packets or new flows. A counter with any field
// below its previous value was recreated (maps detached and loaded again)
// and counts from 0: checking packets alone, a recreated counter that had
// already passed the old packet count but not the old flow count reported
// 2^64 − a few new flows.
func counterGrowth(prev, cur map[pmaps.CounterKey]pmaps.Counter) []*pb.AccessCount {
	var out []*pb.AccessCount
	for k, v := range cur {
		p := prev[k]
		if v.Packets < p.Packets || v.Bytes < p.Bytes || v.NewFlows < p.NewFlows {
			p = pmaps.Counter{}
		}
		d := pmaps.Counter{Packets: v.Packets - p.Packets, Bytes: v.Bytes - p.Bytes, NewFlows: v.NewFlows - p.NewFlows}
		if d.Packets == 0 && d.NewFlows == 0 {
			continue
		}
		out = append(out, &pb.AccessCount{ResourceId: uint32(k.Resource), RegionId: uint32(k.Region), MirrorId: uint32(k.Mirror),
			NewFlows: d.NewFlows, Packets: d.Packets, Bytes: d.Bytes})
	}
	return out
}

// staleCounter reports whether counter k's resource, region or mirror is
// gone from the desired state c. Region 0 (no prefix matched and no
// default region) is never stale; a default region is a defined one.
func staleCounter(k pmaps.CounterKey, c *Compiled) bool {
	if _, ok := c.ResourceNames[k.Resource]; !ok {
		return true
	}
	if _, ok := c.Mirrors[k.Mirror]; !ok {
		return true
	}
	_, ok := c.RegionNames[k.Region]
	return !ok && k.Region != 0
}

// pruneCounters deletes the counters of cs that are stale under c (from
// the map and from cs), of those settled accepts when it is set.
func (a *Agent) pruneCounters(cs map[pmaps.CounterKey]pmaps.Counter, c *Compiled, settled func(pmaps.CounterKey) bool) {
	n := 0
	for k := range cs {
		if !staleCounter(k, c) || settled != nil && !settled(k) {
			continue
		}
		if err := a.router.DeleteCounter(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			a.log.Warn("delete stale access counter", "resource", k.Resource, "region", k.Region, "mirror", k.Mirror, "err", err)
			continue
		}
		if a.metrics != nil {
			a.metrics.retire(k, cs[k])
		}
		delete(cs, k)
		n++
	}
	if n > 0 {
		a.log.Debug("stale access counters deleted", "count", n)
	}
}

// mirrorHealth speaks for the mirrors this host serves (its decap
// addresses', and those the desired state names it host of): up, or down
// or unknown with why (planDecap), the resources whose service does not
// answer here, and the sync state of the copies its replicator holds.
func (cp *controlPlane) mirrorHealth() []*pb.MirrorHealth {
	a := cp.a
	a.mu.Lock()
	c, hosted := a.compiled, a.hosted
	a.mu.Unlock()
	if c == nil {
		return nil
	}
	util := cp.utilization()
	var unserved []pmaps.ResourceID
	if a.svc != nil {
		unserved = a.svc.unserved()
	}
	var out []*pb.MirrorHealth
	for _, id := range slices.Sorted(maps.Keys(hosted)) {
		h := hosted[id]
		mh := &pb.MirrorHealth{Mirror: c.MirrorNames[id], Health: h.health, Reason: h.reason, Utilization: util}
		for _, r := range unserved {
			if slices.Contains(c.MirrorResources[id], r) {
				mh.UnservedResources = append(mh.UnservedResources, c.ResourceNames[r])
			}
		}
		out = append(out, mh)
	}
	if a.repl != nil {
		st := a.repl.Status()
		attachReplicas(out, replicaSyncs(st), replicaBacklogs(st))
	}
	return out
}

func (cp *controlPlane) nodeStats() *pb.NodeStats {
	return &pb.NodeStats{CpuUtilization: cp.utilization(), MemoryUsedBytes: memUsed()}
}

// run serves probes and the controller session until ctx ends.
func (cp *controlPlane) run(ctx context.Context, wg *sync.WaitGroup) {
	if cp.sched != nil {
		cp.updateTargets()
		wg.Add(1)
		go func() { defer wg.Done(); _ = cp.sched.Run(ctx) }()
	}
	pcfg := cp.a.config().Probe // restart-only fields
	if cp.a.decap != nil && !pcfg.Disabled {
		r := &probe.Responder{Rate: float64(pcfg.echoRate()), Logger: cp.a.log, Metrics: cp.pmet}
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort("::", strconv.Itoa(int(pcfg.port())))
			if err := r.ListenAndServe(ctx, nil, "udp", addr); err != nil && ctx.Err() == nil {
				cp.a.log.Error("probe responder stopped", "err", err)
			}
		}()
	}
	if svc := cp.a.svc; svc != nil {
		wg.Add(1)
		go func() { defer wg.Done(); svc.run(ctx) }()
	}
	if cp.client != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = cp.client.Run(ctx) }()
	} else if cp.sched != nil {
		// No reports pace the re-ranking (probeResults): a ticker does.
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(pcfg.interval())
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					cp.updateShortlist()
				}
			}
		}()
	}
	// No held task may start after the agent stops.
	wg.Add(1)
	go func() { defer wg.Done(); <-ctx.Done(); cp.stopTasks() }()
}

// cpuSampler turns /proc/stat into a busy share since the previous call.
type cpuSampler struct {
	mu          sync.Mutex
	busy, total uint64
}

func (s *cpuSampler) utilization() float64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	fields := strings.Fields(sc.Text())
	var total, idle uint64
	for i, v := range fields[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	busy := total - idle
	s.mu.Lock()
	defer s.mu.Unlock()
	db, dt := busy-s.busy, total-s.total
	s.busy, s.total = busy, total
	if dt == 0 || db > dt {
		return 0
	}
	return float64(db) / float64(dt)
}

func memUsed() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var total, avail uint64
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = n
		case "MemAvailable:":
			avail = n
		}
	}
	if avail > total {
		return 0
	}
	return (total - avail) * 1024
}
