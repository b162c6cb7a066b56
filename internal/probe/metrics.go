package probe

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the probe counters an agent exports. Labels are bounded: the
// probe kind, the outcome class, never a mirror or address. A nil *Metrics
// counts nothing.
type Metrics struct {
	results *prometheus.CounterVec
	rtt     *prometheus.HistogramVec
	echoes  *prometheus.CounterVec
}

// NewMetrics creates the collectors; register the result with a registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "premirror_probe_results_total",
			Help: "Probes sent, by kind (tcp, udp) and result (ok, timeout, refused, error).",
		}, []string{"kind", "result"}),
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "premirror_probe_rtt_seconds",
			Help:    "Round-trip time of successful probes, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14), // 0.1 ms … 0.8 s
		}, []string{"kind"}),
		echoes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "premirror_probe_echo_requests_total",
			Help: "UDP echo datagrams received by the responder, by outcome (answered, malformed, rate_limited, send_error).",
		}, []string{"outcome"}),
	}
	// Every series from the start: one created by its first event starts
	// at 1, and rate() over it misses that event (the alerts on failing
	// probes and rate-limited echoes).
	for _, k := range []Kind{KindTCP, KindUDP} {
		for _, r := range []string{"ok", "timeout", "refused", "error"} {
			m.results.WithLabelValues(k.String(), r)
		}
	}
	for _, o := range []string{"answered", "malformed", "rate_limited", "send_error"} {
		m.echoes.WithLabelValues(o)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.results.Describe(ch)
	m.rtt.Describe(ch)
	m.echoes.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.results.Collect(ch)
	m.rtt.Collect(ch)
	m.echoes.Collect(ch)
}

func (m *Metrics) echo(outcome string) {
	if m != nil {
		m.echoes.WithLabelValues(outcome).Inc()
	}
}

func (m *Metrics) result(kind Kind, rtt time.Duration, err error) {
	if m == nil {
		return
	}
	m.results.WithLabelValues(kind.String(), ResultClass(err)).Inc()
	if err == nil {
		m.rtt.WithLabelValues(kind.String()).Observe(rtt.Seconds())
	}
}

// ResultClass names the outcome of a probe: "ok", "timeout", "refused" or
// "error".
func ResultClass(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrRefused):
		return "refused"
	}
	return "error"
}
