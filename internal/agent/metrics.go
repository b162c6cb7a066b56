package agent

import (
	"github.com/premirror/premirror/internal/pki"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/control"
	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/promdesc"
	"github.com/premirror/premirror/internal/replicator"
)

// metrics reads the data-plane maps at scrape time (like tubular's
// collector): no polling loop, and a scrape always sees current values.
// Labels are bounded by the configuration: regions × mirrors, reasons.
type metrics struct {
	a *Agent

	packets    *prometheus.Desc
	decap      *prometheus.Desc
	newFlows   *prometheus.Desc
	fwdPackets *prometheus.Desc
	fwdBytes   *prometheus.Desc
	sessions   *prometheus.Desc
	tables     *prometheus.Desc
	routes     *prometheus.Desc
	mirrorUp   *prometheus.Desc
	hosted     *prometheus.Desc
	unserved   *prometheus.Desc
	unlisted   *prometheus.Desc
	memory     *prometheus.Desc
	attached   *prometheus.Desc
	next       *prometheus.Desc
	info       *prometheus.Desc
	nhHits     *prometheus.Desc
	nhLookups  *prometheus.Desc

	scrapeErrors  prometheus.Counter
	nhBumps       prometheus.Counter
	reconciles    *prometheus.CounterVec
	reconcileTime prometheus.Histogram
	taskErrors    *prometheus.CounterVec
	tasks         *prometheus.GaugeVec
	nextStart     prometheus.Gauge
	probeTargets  *prometheus.GaugeVec
	serviceChecks *prometheus.CounterVec

	mu           sync.Mutex
	sessionCount int
	sessionAt    time.Time
	// retired holds what the deleted access counters (pruneCounters)
	// had counted, by region and mirror: the forwarded and new-flow
	// counters are sums over resources, and one resource's counters
	// leaving must not make a mirror's sum go down (a reset to
	// Prometheus). Dropped once the mirror leaves the desired state.
	retired map[retiredKey]pmaps.Counter
}

type retiredKey struct {
	region pmaps.RegionID
	mirror pmaps.MirrorID
}

// retire adds a deleted counter's last values to the exported sums.
func (m *metrics) retire(k pmaps.CounterKey, v pmaps.Counter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.retired == nil {
		m.retired = map[retiredKey]pmaps.Counter{}
	}
	rk := retiredKey{k.Region, k.Mirror}
	r := m.retired[rk]
	r.Packets += v.Packets
	r.Bytes += v.Bytes
	r.NewFlows += v.NewFlows
	m.retired[rk] = r
}

const ns = "edge"

func newMetrics(a *Agent) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
	}
	m := &metrics{
		a:          a,
		packets:    d("packets_total", "Packets seen by the XDP router, by verdict and reason.", "verdict", "reason"),
		decap:      d("decap_packets_total", "Packets seen by the XDP decap program, by reason.", "reason"),
		newFlows:   d("new_flows_total", "New client flows (TCP SYNs, new UDP flows) by client region and mirror: the access log.", "region", "mirror"),
		fwdPackets: d("forwarded_packets_total", "VIP packets encapsulated toward each mirror.", "mirror"),
		fwdBytes:   d("forwarded_bytes_total", "VIP bytes (inner IP packets) encapsulated toward each mirror.", "mirror"),
		sessions:   d("sessions", "Flows in the session table, established or not (counted at most every 10 s)."),
		tables:     d("route_tables", "Distinct route tables installed (shared by routes with identical slots)."),
		routes:     d("routes", "Routes installed, one per (resource, client region)."),
		mirrorUp:   d("mirror_state", "1 for the state each mirror is in.", "mirror", "state"),
		hosted:     d("hosted_mirror_health", hostedHelp, "mirror", "health", "reason"),
		unserved:   d("service_unserved", "1 per resource whose service does not answer on this host (service_check: no VIP of it passed its check, fall rounds in a row); reported to the controller, which routes it to other copies.", "resource"),
		unlisted:   d("decap_source_unlisted", "1 per outer source of a registered edge (the controller's list) that decap_sources leaves out: this host would drop that edge's tunnel packets (drop_source). None without decap_sources.", "edge", "address"),
		memory:     d("map_memory_bytes", "Kernel memory of each BPF map.", "map"),
		attached:   d("xdp_attached", "1 per attached XDP program (iface \"*\" and mode \"root\": in the slot of the root program's array, xdp_root).", "iface", "program", "mode"),
		next:       d("xdp_next_program_info", "1 per XDP program chained after ours (xdp_chain), by our program, the interface (\"*\": every interface without its own) and its name.", "program", "iface", "next"),
		info:       d("desired_state_info", "The desired-state version the data plane runs.", "version"),
		nhHits:     d("nexthop_cache_hits_total", "VIP packets sent with a cached next hop, without a FIB lookup (since the program was loaded)."),
		nhLookups:  d("nexthop_cache_lookups_total", "Successful FIB lookups stored in the next-hop cache: misses, expiries and invalidations (since the program was loaded)."),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "collector_errors_total", Help: "Failures reading BPF maps at scrape time.",
		}),
		nhBumps: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "nexthop_generation_bumps_total",
			Help: "Invalidations of the router's next-hop cache after route, neighbour or link changes.",
		}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "reconciles_total", Help: "Reconciliations of the maps with the desired state.",
		}, []string{"result"}),
		reconcileTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "reconcile_duration_seconds", Help: "Time to reconcile the maps.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		taskErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "replication_task_errors_total",
			Help: "Replication tasks from the controller this node could not carry out, by reason (counted once per desired-state version).",
		}, []string{"reason"}),
		tasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "replication_tasks",
			Help: "Replication tasks with a deadline this node carries out: held until their planned start, or started.",
		}, []string{"state"}),
		nextStart: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "replication_task_next_start_timestamp_seconds",
			Help: "When the next held replication task starts (unix seconds; 0 when none is held).",
		}),
		serviceChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "service_checks_total",
			Help: "Checks of the VIPs of the resources this host's mirrors hold (service_check: a TCP connection, an HTTP GET on service_check.http's ports, a datagram and its reply on service_check.udp's), by result: ok, refused, timeout, bad_status (HTTP status outside expect), error.",
		}, []string{"result"}),
		probeTargets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "probe_targets",
			Help: "Mirrors this edge probes, by class: active (carrying its traffic, every probe.active_interval), shortlist (every probe.interval) and survey (every probe.survey_interval).",
		}, []string{"class"}),
	}
	for _, c := range []string{"active", "shortlist", "survey"} {
		m.probeTargets.WithLabelValues(c)
	}
	for _, r := range checkResults {
		m.serviceChecks.WithLabelValues(r)
	}
	m.tasks.WithLabelValues("held")
	m.tasks.WithLabelValues("started")
	// Every reason and result from the start, so a rate() sees the first
	// error (a series created by it starts at 1: no increase).
	for _, r := range taskReasons {
		m.taskErrors.WithLabelValues(r)
	}
	m.reconciles.WithLabelValues("ok")
	m.reconciles.WithLabelValues("error")
	return m
}

func (m *metrics) reconcile(ok bool, d time.Duration) {
	res := "ok"
	if !ok {
		res = "error"
	}
	m.reconciles.WithLabelValues(res).Inc()
	m.reconcileTime.Observe(d.Seconds())
}

const hostedHelp = "1 per mirror this host serves (at its decap addresses, or naming it as its host), for the health it reports to the controller: up; down (gue_port_is_probe_port, gue_port_conflict: GUE to it is not decapsulated); unknown, left to the probes (address_not_decapsulated, no_decap_program)."

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.packets, m.decap, m.newFlows, m.fwdPackets, m.fwdBytes, m.sessions,
		m.tables, m.routes, m.mirrorUp, m.hosted, m.unserved, m.unlisted, m.memory, m.attached, m.next, m.info, m.nhHits, m.nhLookups} {
		ch <- d
	}
	m.scrapeErrors.Describe(ch)
	m.nhBumps.Describe(ch)
	m.reconciles.Describe(ch)
	m.reconcileTime.Describe(ch)
	m.taskErrors.Describe(ch)
	m.tasks.Describe(ch)
	m.nextStart.Describe(ch)
	m.probeTargets.Describe(ch)
	m.serviceChecks.Describe(ch)
}

func name(names map[uint32]string, id uint32) string {
	if n, ok := names[id]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	a := m.a
	a.mu.Lock()
	c, version, hosted := a.compiled, a.version, a.hosted
	attach := slices.Clone(a.attach)
	unlisted := a.unlisted
	a.mu.Unlock()
	for _, e := range unlisted {
		ch <- prometheus.MustNewConstMetric(m.unlisted, prometheus.GaugeValue, 1, e.node, e.addr.String())
	}
	regionNames, mirrorNames := map[uint32]string{}, map[uint32]string{}
	if c != nil {
		for id, h := range hosted {
			health := strings.ToLower(strings.TrimPrefix(h.health.String(), "HEALTH_"))
			ch <- prometheus.MustNewConstMetric(m.hosted, prometheus.GaugeValue, 1, c.MirrorNames[id], health, h.reason)
		}
		if a.svc != nil {
			for _, r := range a.svc.unserved() {
				ch <- prometheus.MustNewConstMetric(m.unserved, prometheus.GaugeValue, 1, c.ResourceNames[r])
			}
		}
		for id, n := range c.RegionNames {
			regionNames[uint32(id)] = n
		}
		regionNames[0] = "default"
		for id, n := range c.MirrorNames {
			mirrorNames[uint32(id)] = n
		}
	}
	fail := func() { m.scrapeErrors.Inc() }
	if r := a.router; r != nil {
		if st, err := r.Stats(); err != nil {
			fail()
		} else {
			for _, f := range st.Fields() {
				ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(f.Value), f.Verdict, f.Name)
			}
		}
		if cs, err := r.Counters(); err != nil {
			fail()
		} else {
			type rm struct{ region, mirror string }
			flows := map[rm]uint64{}
			pk, by := map[string]uint64{}, map[string]uint64{}
			for k, v := range cs {
				mn := name(mirrorNames, uint32(k.Mirror))
				flows[rm{name(regionNames, uint32(k.Region)), mn}] += v.NewFlows
				pk[mn] += v.Packets
				by[mn] += v.Bytes
			}
			m.mu.Lock()
			for k, v := range m.retired {
				if c == nil {
					continue
				}
				if _, ok := c.Mirrors[k.mirror]; !ok {
					delete(m.retired, k) // the mirror left: its series go
					continue
				}
				mn := name(mirrorNames, uint32(k.mirror))
				if _, ok := c.RegionNames[k.region]; ok || k.region == 0 {
					flows[rm{name(regionNames, uint32(k.region)), mn}] += v.NewFlows
				}
				pk[mn] += v.Packets
				by[mn] += v.Bytes
			}
			m.mu.Unlock()
			for k, v := range flows {
				ch <- prometheus.MustNewConstMetric(m.newFlows, prometheus.CounterValue, float64(v), k.region, k.mirror)
			}
			for mn, v := range pk {
				ch <- prometheus.MustNewConstMetric(m.fwdPackets, prometheus.CounterValue, float64(v), mn)
				ch <- prometheus.MustNewConstMetric(m.fwdBytes, prometheus.CounterValue, float64(by[mn]), mn)
			}
		}
		if n, err := m.sessionsCached(r); err != nil {
			fail()
		} else {
			ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, float64(n))
		}
		ch <- prometheus.MustNewConstMetric(m.tables, prometheus.GaugeValue, float64(r.TableCount()))
		ch <- prometheus.MustNewConstMetric(m.routes, prometheus.GaugeValue, float64(len(r.Routes())))
		if ms, err := r.Mirrors(); err != nil {
			fail()
		} else {
			for id, mi := range ms {
				for _, s := range []pmaps.MirrorState{pmaps.MirrorActive, pmaps.MirrorDraining, pmaps.MirrorDown} {
					v := 0.0
					if mi.State == s {
						v = 1
					}
					ch <- prometheus.MustNewConstMetric(m.mirrorUp, prometheus.GaugeValue, v, name(mirrorNames, uint32(id)), s.String())
				}
			}
		}
		if nh, err := r.NextHopCache(); err != nil {
			fail()
		} else {
			ch <- prometheus.MustNewConstMetric(m.nhHits, prometheus.CounterValue, float64(nh.Hits))
			ch <- prometheus.MustNewConstMetric(m.nhLookups, prometheus.CounterValue, float64(nh.Lookups))
		}
		if mem, err := r.MemoryUsage(); err != nil {
			fail()
		} else {
			for mp, v := range mem {
				ch <- prometheus.MustNewConstMetric(m.memory, prometheus.GaugeValue, float64(v), mp)
			}
		}
	}
	if d := a.decap; d != nil {
		if st, err := d.Stats(); err != nil {
			fail()
		} else {
			for _, f := range st.Fields() {
				ch <- prometheus.MustNewConstMetric(m.decap, prometheus.CounterValue, float64(f.Value), f.Name)
			}
		}
	}
	for _, at := range attach {
		ch <- prometheus.MustNewConstMetric(m.attached, prometheus.GaugeValue, 1, at.Iface, at.Program, at.Mode)
	}
	for _, s := range []struct {
		name string
		slot chainSlot
	}{{"router", routerSlot(a.router)}, {"decap", decapSlot(a.decap)}} {
		if s.slot == nil {
			continue
		}
		// Slot 0 and the attached interfaces' slots: bounded labels, and
		// no walk over the 65536 slots at every scrape.
		names := map[int]string{pmaps.AllInterfaces: "*"}
		for _, at := range attach {
			if at.Program == s.name {
				names[at.Ifindex] = at.Iface
			}
		}
		entries, err := s.slot.NextPrograms(slices.Collect(maps.Keys(names)))
		if err != nil {
			fail()
			continue
		}
		for _, e := range entries {
			ch <- prometheus.MustNewConstMetric(m.next, prometheus.GaugeValue, 1, s.name, names[e.Ifindex], e.Program.Name)
		}
	}
	if version != "" {
		ch <- prometheus.MustNewConstMetric(m.info, prometheus.GaugeValue, 1, version)
	}
	m.scrapeErrors.Collect(ch)
	m.nhBumps.Collect(ch)
	m.reconciles.Collect(ch)
	m.reconcileTime.Collect(ch)
	m.taskErrors.Collect(ch)
	m.tasks.Collect(ch)
	m.nextStart.Collect(ch)
	m.probeTargets.Collect(ch)
	m.serviceChecks.Collect(ch)
}

// sessionsCached counts sessions at most every 10 s: a count walks the
// whole LRU (1M entries ≈ 50 MB of batch lookups).
func (m *metrics) sessionsCached(r *pmaps.Router) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.sessionAt) < 10*time.Second {
		return m.sessionCount, nil
	}
	n, err := r.SessionCount()
	if err != nil {
		return 0, err
	}
	m.sessionCount, m.sessionAt = n, time.Now()
	return n, nil
}

// Metrics lists every metric an edge-agent process exports, with its
// labels: the agent's own (edge_*, the per-mirror path estimates among
// them), the prober's and the controller
// session's (premirror_probe_*, premirror_control_*) and the replicator's
// (replicator_*). The deploy tests keep the dashboards' queries and the
// alert rules in sync with it.
func Metrics() []promdesc.Metric {
	ms, err := promdesc.Describe(newMetrics(&Agent{}), newPathMetrics(nil), probe.NewMetrics(), &control.Client{},
		new(pki.Source).Collector("controller"))
	if err != nil {
		panic(err) // a Desc that does not print as client_golang prints it
	}
	return append(ms, replicator.MetricDescs()...)
}

// MetricNames lists the names of the agent's own metrics (edge_*).
func MetricNames() []string {
	var out []string
	for _, n := range promdesc.Names(Metrics()) {
		if strings.HasPrefix(n, ns+"_") {
			out = append(out, n)
		}
	}
	return out
}

// routerSlot and decapSlot avoid a non-nil interface holding a nil pointer.
func routerSlot(r *pmaps.Router) chainSlot {
	if r == nil {
		return nil
	}
	return r
}

func decapSlot(d *pmaps.Decap) chainSlot {
	if d == nil {
		return nil
	}
	return d
}
