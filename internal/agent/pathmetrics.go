package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// pathMetrics exports what this edge's probes measure on the path to each
// mirror it probes, read from the estimators at scrape time: the latency
// the routes rank mirrors by, its floor and jitter, and the loss. The
// controller routes on these (aggregated over a region's edges); here an
// operator sees them per edge, the latency panels of the edge dashboard.
// Series are bounded by the mirrors this edge probes (edge_probe_targets).
type pathMetrics struct {
	cp                     *controlPlane
	rtt, floor, jitter, ls *prometheus.Desc
}

func newPathMetrics(cp *controlPlane) *pathMetrics {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, []string{"mirror", "address"}, nil)
	}
	return &pathMetrics{cp: cp,
		rtt: d("mirror_rtt_seconds", "Smoothed round-trip time of this edge's probes to each mirror (peak-EWMA of the median of the last three): "+
			"the latency routes rank mirrors by. Absent until a probe to the mirror succeeded."),
		floor: d("mirror_rtt_min_seconds", "Smallest probe round trip to each mirror over the estimator's window: the path's propagation floor; "+
			"edge_mirror_rtt_seconds above it is queueing or a longer route."),
		jitter: d("mirror_jitter_seconds", "Smoothed difference between consecutive probe round trips to each mirror (RFC 3550)."),
		ls:     d("mirror_probe_loss_ratio", "Share of probes to each mirror that failed, weighted toward recent probes."),
	}
}

// Describe implements prometheus.Collector.
func (m *pathMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.rtt, m.floor, m.jitter, m.ls} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *pathMetrics) Collect(ch chan<- prometheus.Metric) {
	if m.cp == nil || m.cp.probes == nil {
		return
	}
	a := m.cp.a
	a.mu.Lock()
	var names map[pmaps.MirrorID]string
	if a.compiled != nil {
		names = a.compiled.MirrorNames
	}
	a.mu.Unlock()
	// One mirror probed over two kinds at one address would be two
	// targets with the same labels; a registry refuses the whole scrape
	// for a repeated series, so the first one stands.
	type key struct{ mirror, addr string }
	seen := map[key]bool{}
	for t, est := range m.cp.probes.Snapshot() {
		name, ok := names[pmaps.MirrorID(t.Mirror)]
		if !ok {
			name = strconv.FormatUint(uint64(t.Mirror), 10)
		}
		k := key{name, t.Addr}
		if seen[k] {
			continue
		}
		seen[k] = true
		if est.Probes > 0 {
			ch <- prometheus.MustNewConstMetric(m.ls, prometheus.GaugeValue, est.Loss, name, t.Addr)
		}
		if est.Samples == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(m.rtt, prometheus.GaugeValue, est.RTT.Seconds(), name, t.Addr)
		ch <- prometheus.MustNewConstMetric(m.floor, prometheus.GaugeValue, est.Min.Seconds(), name, t.Addr)
		ch <- prometheus.MustNewConstMetric(m.jitter, prometheus.GaugeValue, est.Jitter.Seconds(), name, t.Addr)
	}
}
