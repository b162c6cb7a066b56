package controller

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	leader     prometheus.Gauge
	version    prometheus.GaugeFunc
	agents     prometheus.GaugeFunc
	ticks      *prometheus.CounterVec
	tickTime   prometheus.Histogram
	versions   prometheus.Counter
	acks       *prometheus.CounterVec
	reports    prometheus.Counter
	movedSlots prometheus.Counter
}

func newMetrics(c *Controller) *metrics {
	return &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_controller_leader",
			Help: "1 while this replica leads (computes routes and writes desired state)."}),
		version: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "premirror_controller_desired_version",
			Help: "Current desired-state version as this replica sees it."}, func() float64 {
			return float64(c.view.desiredRecord().GetState().GetVersion())
		}),
		agents: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "premirror_controller_agent_sessions",
			Help: "Agent sessions open on this replica."}, func() float64 { return float64(c.sessionCount()) }),
		ticks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_route_ticks_total",
			Help: "Route computations by this replica as leader, by result (ok, error)."}, []string{"result"}),
		tickTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "premirror_controller_route_tick_duration_seconds",
			Help:    "Duration of one route computation, from snapshot to desired state written.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		versions: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_versions_total",
			Help: "Desired-state versions written by this replica."}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_agent_acks_total",
			Help: "Versions agents confirmed on this replica, by result (ack, nack)."}, []string{"result"}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_agent_reports_total",
			Help: "Agent reports received by this replica."}),
		movedSlots: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_route_moved_slots_total",
			Help: "Route-table slots moved by the versions this replica wrote."}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.leader, m.version, m.agents, m.ticks, m.tickTime, m.versions, m.acks, m.reports, m.movedSlots}
}
