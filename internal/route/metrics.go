package route

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics export what each Step did, for the controller's registry. Labels
// are bounded: the mode names only.
type Metrics struct {
	evals    prometheus.Counter
	duration prometheus.Histogram
	moved    prometheus.Counter
	changed  prometheus.Counter
	routes   *prometheus.GaugeVec
	over     prometheus.Gauge
}

// NewMetrics creates the collectors; register the result with a registry.
func NewMetrics() *Metrics {
	return &Metrics{
		evals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "premirror_route_evaluations_total", Help: "Route computations (Engine.Step calls).",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "premirror_route_evaluation_duration_seconds", Help: "Time to compute all routes once.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12), // 1 ms … 2 s
		}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "premirror_route_slots_moved_total", Help: "Table slots whose mirror changed, over all routes.",
		}),
		changed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "premirror_route_changes_total", Help: "Routes whose weights changed.",
		}),
		routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "premirror_route_routes", Help: "Routes by what the last evaluation did to them (mode).",
		}, []string{"mode"}),
		over: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "premirror_route_overloaded_mirrors", Help: "Mirrors left above their capacity cap after spill-over.",
		}),
	}
}

// Observe records one Step's result and how long it took.
func (m *Metrics) Observe(res *Result, took time.Duration) {
	m.evals.Inc()
	m.duration.Observe(took.Seconds())
	m.moved.Add(float64(res.MovedSlots))
	m.changed.Add(float64(res.Changed))
	var byMode [len(modeNames)]int
	for i := range res.Routes {
		if w := res.Routes[i].Why; w != nil && int(w.Mode) < len(byMode) {
			byMode[w.Mode]++
		}
	}
	for i, n := range byMode {
		m.routes.WithLabelValues(modeNames[i]).Set(float64(n))
	}
	m.over.Set(float64(len(res.Overloaded)))
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.evals, m.duration, m.moved, m.changed, m.routes, m.over}
}
