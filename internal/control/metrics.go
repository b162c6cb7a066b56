package control

import "github.com/prometheus/client_golang/prometheus"

var (
	descConnected = prometheus.NewDesc("premirror_control_connected",
		"1 while a session with a controller is open.", nil, nil)
	descApplied = prometheus.NewDesc("premirror_control_applied_version",
		"Desired-state version the data plane runs (0: none).", nil, nil)
	descVersions = prometheus.NewDesc("premirror_control_versions_total",
		"Desired-state versions received, by outcome (ack, nack).", []string{"result"}, nil)
	descReports = prometheus.NewDesc("premirror_control_reports_total",
		"Reports sent to the controller.", nil, nil)
	descReconnects = prometheus.NewDesc("premirror_control_reconnects_total",
		"Sessions that ended and were retried.", nil, nil)
	descResent = prometheus.NewDesc("premirror_control_reports_resent_total",
		"Reports sent again on a new session because no controller had confirmed their access counts.", nil, nil)
	descPending = prometheus.NewDesc("premirror_control_pending_reports",
		"Reports whose access counts the controller has not yet confirmed written; they are sent again after a reconnect.", nil, nil)
	descPendingDropped = prometheus.NewDesc("premirror_control_pending_reports_dropped_total",
		"Reports dropped before the controller confirmed their access counts, by reason: limit (more pending than "+
			"the bound; lost unless a controller wrote them), not_confirming (the new session's controller confirms none, "+
			"an older one: not sent again, as before confirmations).", []string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Client) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descApplied, descVersions, descReports, descReconnects, descResent, descPending, descPendingDropped} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; register the Client in the
// agent's registry.
func (c *Client) Collect(ch chan<- prometheus.Metric) {
	conn := 0.0
	if c.m.connected.Load() {
		conn = 1
	}
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, conn)
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(c.m.applied.Load()))
	ch <- prometheus.MustNewConstMetric(descVersions, prometheus.CounterValue, float64(c.m.acks.Load()), "ack")
	ch <- prometheus.MustNewConstMetric(descVersions, prometheus.CounterValue, float64(c.m.nacks.Load()), "nack")
	ch <- prometheus.MustNewConstMetric(descReports, prometheus.CounterValue, float64(c.m.reports.Load()))
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(c.m.reconnects.Load()))
	ch <- prometheus.MustNewConstMetric(descResent, prometheus.CounterValue, float64(c.m.resent.Load()))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(c.m.pending.Load()))
	ch <- prometheus.MustNewConstMetric(descPendingDropped, prometheus.CounterValue, float64(c.m.droppedLimit.Load()), "limit")
	ch <- prometheus.MustNewConstMetric(descPendingDropped, prometheus.CounterValue, float64(c.m.droppedUnconfirmed.Load()), "not_confirming")
}
