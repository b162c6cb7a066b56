package promdesc

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    prometheus.Collector
		want Metric
	}{
		{"plain counter", prometheus.NewCounter(prometheus.CounterOpts{Name: "a_total", Help: "h, with: commas {and} braces"}),
			Metric{Name: "a_total"}},
		{"vector", prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ns", Name: "g", Help: "h"}, []string{"z", "a"}),
			Metric{Name: "ns_g", Labels: []string{"a", "z"}}},
		{"const labels", prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "h",
			ConstLabels: prometheus.Labels{"node": "n1", "site": "s"}}, []string{"result"}),
			Metric{Name: "c_total", Labels: []string{"node", "result", "site"}}},
		{"constrained label", prometheus.V2.NewCounterVec(prometheus.CounterVecOpts{
			CounterOpts:    prometheus.CounterOpts{Name: "k_total", Help: "h"},
			VariableLabels: prometheus.ConstrainedLabels{{Name: "peer", Constraint: func(s string) string { return s }}},
		}), Metric{Name: "k_total", Labels: []string{"peer"}}},
		{"histogram", prometheus.NewHistogram(prometheus.HistogramOpts{Name: "d_seconds", Help: "h"}),
			Metric{Name: "d_seconds"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := Describe(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 || ms[0].Name != tc.want.Name || !slices.Equal(ms[0].Labels, tc.want.Labels) {
				t.Fatalf("got %+v, want %+v", ms, tc.want)
			}
		})
	}
}

func TestRecorder(t *testing.T) {
	var r Recorder
	r.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "h"}),
		prometheus.NewGauge(prometheus.GaugeOpts{Name: "y", Help: "h"}))
	if got := Names(r.Metrics()); !slices.Equal(got, []string{"x_total", "y"}) {
		t.Fatalf("names %v", got)
	}
}

// FuzzParse: any string is read or refused, never a panic, and what is
// read has a name.
func FuzzParse(f *testing.F) {
	f.Add(`Desc{fqName: "a", help: "h", unit: "", constLabels: {}, variableLabels: {}}`)
	f.Add(`Desc{fqName: "a", help: "h", unit: "", constLabels: {n="v"}, variableLabels: {c(x),y}}`)
	f.Add(`Desc{fqName: "a", help: "}", constLabels: {`)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parse(s)
		if err == nil && m.Name == "" {
			t.Fatalf("%q read without a name", s)
		}
	})
}

func TestValue(t *testing.T) {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "h"}, []string{"a", "b"})
	cv.WithLabelValues("x", "y").Add(2)
	cv.WithLabelValues("x", "z").Add(3)
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "h"})
	g.Set(7)
	for _, tc := range []struct {
		c      prometheus.Collector
		name   string
		labels []string
		want   float64
		ok     bool
	}{
		{cv, "c_total", []string{"x", "z"}, 3, true},
		{cv, "c_total", []string{"x", "y"}, 2, true},
		{cv, "c_total", nil, 2, true}, // the first series
		{cv, "c_total", []string{"x"}, 0, false},
		{cv, "c_total", []string{"y", "x"}, 0, false},
		{g, "g", nil, 7, true},
		{g, "missing", nil, 0, false},
	} {
		got, err := Value(tc.c, tc.name, tc.labels...)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Value(%s, %v) = %v, %v; want %v (found %v)", tc.name, tc.labels, got, err, tc.want, tc.ok)
		}
	}
}
