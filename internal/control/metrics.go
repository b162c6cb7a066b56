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
)

// Describe implements prometheus.Collector.
func (c *Client) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descApplied, descVersions, descReports, descReconnects} {
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
}
