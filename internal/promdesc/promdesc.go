// Package promdesc lists the metrics a set of Prometheus collectors
// exports, with their label names, without a registry or a scrape. The
// deploy tests check the Grafana dashboards' queries and the alert rules
// against these lists, so a renamed metric or label fails a test rather
// than leaving a panel empty or an alert silent.
package promdesc

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric is one metric family: its fully qualified name and the names of
// its labels (constant and variable).
type Metric struct {
	Name   string
	Labels []string
}

// Recorder is a prometheus.Registerer that only records what it is given
// (for constructors that register their own collectors).
type Recorder struct{ metrics []Metric }

// Metrics returns what was registered, in order.
func (r *Recorder) Metrics() []Metric { return r.metrics }

// Register implements prometheus.Registerer.
func (r *Recorder) Register(c prometheus.Collector) error {
	ms, err := Describe(c)
	r.metrics = append(r.metrics, ms...)
	return err
}

// MustRegister implements prometheus.Registerer.
func (r *Recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister implements prometheus.Registerer.
func (r *Recorder) Unregister(prometheus.Collector) bool { return false }

// Describe lists the metrics of the collectors.
func Describe(cs ...prometheus.Collector) ([]Metric, error) {
	var out []Metric
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		var err error
		for d := range ch {
			m, perr := parse(d.String())
			if perr != nil && err == nil {
				err = perr
			}
			if perr == nil {
				out = append(out, m)
			}
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// Value is the value c exports for metric name: of its first series
// whose label values are labelValues (in the labels' order), or of its
// first series when none are given. Counters, gauges and untyped metrics
// have one; a test reads a component's metric through it without
// reaching into the component.
func Value(c prometheus.Collector, name string, labelValues ...string) (float64, error) {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		return 0, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(labelValues) > 0 {
				if len(m.GetLabel()) != len(labelValues) {
					continue
				}
				for i, l := range m.GetLabel() {
					if l.GetValue() != labelValues[i] {
						continue series
					}
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), nil
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), nil
			case m.GetUntyped() != nil:
				return m.GetUntyped().GetValue(), nil
			}
			return 0, fmt.Errorf("metric %s%v: not a counter, gauge or untyped metric", name, labelValues)
		}
	}
	return 0, fmt.Errorf("no metric %s%v", name, labelValues)
}

// Names returns the metrics' names.
func Names(ms []Metric) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// Desc has no accessors for its name and labels; its String form is
// stable across client_golang releases:
// Desc{fqName: "x", help: "…", constLabels: {a="b"}, variableLabels: {c,d}}
// (a constrained variable label prints as c(name)).
var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*constLabels: \{(.*)\}, variableLabels: \{([^}]*)\}\}$`)

func parse(s string) (Metric, error) {
	sub := descRE.FindStringSubmatch(s)
	if sub == nil {
		return Metric{}, fmt.Errorf("promdesc: cannot read %s", s)
	}
	m := Metric{Name: sub[1]}
	if sub[2] != "" {
		for _, kv := range strings.Split(sub[2], ",") {
			name, _, _ := strings.Cut(kv, "=")
			m.Labels = append(m.Labels, name)
		}
	}
	if sub[3] != "" {
		for _, l := range strings.Split(sub[3], ",") {
			if strings.HasPrefix(l, "c(") && strings.HasSuffix(l, ")") {
				l = l[2 : len(l)-1]
			}
			m.Labels = append(m.Labels, l)
		}
	}
	slices.Sort(m.Labels)
	return m, nil
}
