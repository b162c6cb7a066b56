package replicator

import (
	"github.com/premirror/premirror/internal/pki"
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/promdesc"
	"github.com/premirror/premirror/internal/replicator/throttle"
)

// Metrics are the replicator's Prometheus metrics. Labels are bounded:
// volume and peer names come from configuration or from certificates the
// cluster CA issued; mode, reason and result are small enums.
type Metrics struct {
	sentBytes     *prometheus.CounterVec
	recvBytes     *prometheus.CounterVec
	blocksSent    *prometheus.CounterVec
	blocksSkipped *prometheus.CounterVec
	blocksRecv    *prometheus.CounterVec
	cycles        *prometheus.CounterVec
	cycleSeconds  *prometheus.HistogramVec
	applyFailures *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	refusedConns  prometheus.Counter
	fenced        *prometheus.CounterVec
	verifyDiff    *prometheus.CounterVec
	readRepairs   *prometheus.CounterVec
	progDone      *prometheus.GaugeVec
	progTotal     *prometheus.GaugeVec
	progRate      *prometheus.GaugeVec
	progETA       *prometheus.GaugeVec
	state         *stateCollector
}

func newMetrics(n *Node) *Metrics {
	const ns = "replicator"
	pm := []string{"peer", "mode"}
	vpm := []string{"volume", "peer", "mode"}
	m := &Metrics{
		sentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sent_bytes_total",
			Help: "Bytes sent on replication connections, TLS included."}, []string{"peer"}),
		recvBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "received_bytes_total",
			Help: "Bytes received on replication connections, TLS included."}, []string{"peer"}),
		blocksSent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "blocks_sent_total",
			Help: "Data blocks sent, by mode."}, pm),
		blocksSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "blocks_skipped_total",
			Help: "Blocks not sent: zero (sparse or all-zero) or held (the peer already had them)."}, []string{"reason"}),
		blocksRecv: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "blocks_received_total",
			Help: "Data blocks received and verified, by volume."}, []string{"volume"}),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cycles_total",
			Help: "Delta cycles pushed, by result."}, []string{"volume", "peer", "result"}),
		cycleSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "cycle_duration_seconds",
			Help:    "Duration of committed delta cycles, snapshot to commit acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"volume"}),
		applyFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cycle_apply_failures_total",
			Help: "Failed attempts of a mirror to apply a delta cycle it committed and acknowledged, retries included: after an I/O error the cycle stays in the journal and is applied again before the next session (reads are refused meanwhile); after damaged staged data a full copy follows."}, []string{"volume"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rejected_frames_total",
			Help: "Frames rejected and not applied: corrupt (checksum) or protocol (malformed, unexpected)."}, []string{"reason"}),
		refusedConns: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "refused_connections_total",
			Help: "Connections closed unanswered because maxHandshakes others were still authenticating."}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "fenced_total",
			Help: "Sessions or writes rejected because the writer's epoch was superseded."}, []string{"volume"}),
		verifyDiff: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "verify_mismatched_blocks_total",
			Help: "Blocks found different by Merkle verify."}, []string{"volume"}),
		readRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "read_repairs_total",
			Help: "Blocks sent by read repair to copies (mirrors or this one) that answered a quorum read with an older version."}, []string{"volume"}),
		progDone: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "transfer_done_bytes",
			Help: "Bytes of the current or last transfer covered so far."}, vpm),
		progTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "transfer_total_bytes",
			Help: "Bytes the current or last transfer covers."}, vpm),
		progRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "transfer_rate_bytes_per_second",
			Help: "Recent transfer rate."}, vpm),
		progETA: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "transfer_eta_seconds",
			Help: "Estimated time to finish the current transfer; 0 when done."}, vpm),
		state: &stateCollector{n: n,
			dirty: prometheus.NewDesc(ns+"_dirty_blocks", "Blocks changed since they were last shipped to a peer.", []string{"volume", "peer"}, nil),
			epoch: prometheus.NewDesc(ns+"_volume_epoch", "Epoch of the volume (fencing).", []string{"volume", "role"}, nil),
			cycle: prometheus.NewDesc(ns+"_volume_cycle", "Last delta cycle committed at a mirror.", []string{"volume"}, nil),
			incon: prometheus.NewDesc(ns+"_volume_inconsistent", "1 while a mirror's copy is incomplete.", []string{"volume"}, nil),
			confl: prometheus.NewDesc(ns+"_conflicts_total", "Losing writes kept in the conflict log.", []string{"volume"}, nil),
			limit: prometheus.NewDesc(ns+"_rate_limit_bytes_per_second", "Bandwidth limit in force per peer link (+Inf: none).", []string{"peer"}, nil),
			ctlRate: prometheus.NewDesc(ns+"_rate_control_rate_bytes_per_second",
				"Rate the delay controller allows on a peer link, under its schedule's rate (links under rate control only).", []string{"peer"}, nil),
			ctlQueue: prometheus.NewDesc(ns+"_rate_control_queueing_delay_seconds",
				"Queueing delay the delay controller last measured on a peer link: filtered RTT minus base RTT.", []string{"peer"}, nil),
			ctlBase: prometheus.NewDesc(ns+"_rate_control_base_delay_seconds",
				"Base RTT of a peer link: the minimum over the last 10 minutes.", []string{"peer"}, nil),
			ahead: prometheus.NewDesc(ns+"_clock_ahead_seconds",
				"How far this node's hybrid clock runs ahead of its wall clock: 0 normally; more after a version from a node whose clock is ahead arrived (this node's versions then follow it).", nil, nil),
			delivered: prometheus.NewDesc(ns+"_link_delivered_rate_bytes_per_second",
				"Rate a peer link delivered while it had data waiting to send: frame bytes over about the last minute of backlogged sending (links measured at least 2 s only).", []string{"peer"}, nil),
		},
	}
	// The series the alerts take the increase of exist at 0 from when
	// their labels are known (here, volumeAdded, mirrorAdded): one created
	// by its first event starts at 1, and increase() over it misses that
	// event.
	m.rejected.WithLabelValues("corrupt")
	m.rejected.WithLabelValues("protocol")
	return m
}

// volumeAdded creates the alerted series of a volume the node now has, and
// of its configured mirrors, at 0.
func (m *Metrics) volumeAdded(vc VolumeConfig) {
	m.fenced.WithLabelValues(vc.Name)
	m.verifyDiff.WithLabelValues(vc.Name)
	m.applyFailures.WithLabelValues(vc.Name)
	for _, mc := range vc.Mirrors {
		m.mirrorAdded(vc.Name, mc.Peer)
	}
}

// mirrorAdded creates the cycle counters of volume's copy at peer at 0.
func (m *Metrics) mirrorAdded(volume, peer string) {
	m.cycles.WithLabelValues(volume, peer, "ok")
	m.cycles.WithLabelValues(volume, peer, "error")
}

// mirrorRemoved deletes the series of volume's copy at peer once no
// mirror of volume targets peer any more: its cycle counters and its
// transfer gauges, which would otherwise stay exported (the last
// transfer's ETA and rate included) for as long as the node runs. Its
// dirty blocks stay: the change tracking for peer is kept.
func (m *Metrics) mirrorRemoved(volume, peer string) {
	l := prometheus.Labels{"volume": volume, "peer": peer}
	m.cycles.DeletePartialMatch(l)
	for _, g := range []*prometheus.GaugeVec{m.progDone, m.progTotal, m.progRate, m.progETA} {
		g.DeletePartialMatch(l)
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.sentBytes, m.recvBytes, m.blocksSent, m.blocksSkipped, m.blocksRecv, m.cycles,
		m.cycleSeconds, m.applyFailures, m.rejected, m.refusedConns, m.fenced, m.verifyDiff, m.readRepairs, m.progDone, m.progTotal, m.progRate, m.progETA, m.state}
}

// MetricDescs lists the replicator_* metrics a Node registers, with their
// labels (for the deploy tests' dashboard and alert-rule checks).
func MetricDescs() []promdesc.Metric {
	ms, err := promdesc.Describe(append(newMetrics(&Node{}).collectors(), new(pki.Source).Collector("replication"))...)
	if err != nil {
		panic(err)
	}
	return ms
}

func (m *Metrics) register(r prometheus.Registerer) error {
	for _, c := range m.collectors() {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// stateCollector reads volume and link state at scrape time.
type stateCollector struct {
	n                                        *Node
	dirty, epoch, cycle, incon, confl, limit *prometheus.Desc
	ctlRate, ctlQueue, ctlBase, delivered    *prometheus.Desc
	ahead                                    *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.dirty, c.epoch, c.cycle, c.incon, c.confl, c.limit, c.ctlRate, c.ctlQueue, c.ctlBase, c.delivered, c.ahead} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.n.clock != nil {
		ch <- prometheus.MustNewConstMetric(c.ahead, prometheus.GaugeValue, c.n.clock.Ahead().Seconds())
	}
	for _, s := range c.n.Status() {
		for peer, d := range s.Dirty {
			ch <- prometheus.MustNewConstMetric(c.dirty, prometheus.GaugeValue, float64(d), s.Name, peer)
		}
		ch <- prometheus.MustNewConstMetric(c.epoch, prometheus.GaugeValue, float64(s.Epoch), s.Name, string(s.Role))
		ch <- prometheus.MustNewConstMetric(c.cycle, prometheus.GaugeValue, float64(s.Cycle), s.Name)
		ch <- prometheus.MustNewConstMetric(c.incon, prometheus.GaugeValue, b2f(s.Inconsistent), s.Name)
		ch <- prometheus.MustNewConstMetric(c.confl, prometheus.CounterValue, float64(s.Conflicts), s.Name)
	}
	c.n.mu.Lock()
	peers := make([]*nodePeer, 0, len(c.n.peers))
	for _, p := range c.n.peers {
		peers = append(peers, p)
	}
	c.n.mu.Unlock()
	for _, p := range peers {
		r := float64(p.limiter.Rate())
		if p.limiter.Rate() == throttle.Unlimited {
			r = math.Inf(1)
		}
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, r, p.cfg.Name)
		if rate, _, q, b, ok := p.limiter.DelayState(); ok {
			ch <- prometheus.MustNewConstMetric(c.ctlRate, prometheus.GaugeValue, float64(rate), p.cfg.Name)
			ch <- prometheus.MustNewConstMetric(c.ctlQueue, prometheus.GaugeValue, q.Seconds(), p.cfg.Name)
			ch <- prometheus.MustNewConstMetric(c.ctlBase, prometheus.GaugeValue, b.Seconds(), p.cfg.Name)
		}
		if d, ok := p.delivered.rate(); ok {
			ch <- prometheus.MustNewConstMetric(c.delivered, prometheus.GaugeValue, float64(d.Rate), p.cfg.Name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
