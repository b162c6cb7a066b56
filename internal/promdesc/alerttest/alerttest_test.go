package alerttest

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSelectors(t *testing.T) {
	got := Selectors("A", `sum by (job) (increase(a_total{result="error", kind=~"x|y"}[15m])) > 0
		unless rate(b_total[5m]) > 0 and c_gauge > 1 and irate( d_total {r!="ok"} [1m])`)
	want := []Selector{
		{"A", "increase", "a_total", []Matcher{{"result", "=", "error"}, {"kind", "=~", "x|y"}}},
		{"A", "rate", "b_total", nil},
		{"A", "irate", "d_total", []Matcher{{"r", "!=", "ok"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// The rules file is found and has selectors.
	if n := len(Load(t).AlertSelectors()); n < 20 {
		t.Fatalf("%d selectors in %s", n, RulesPath)
	}
}

// recorder is a T that counts errors.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(f string, a ...any) {
	r.errs = append(r.errs, fmt.Sprintf(f, a...))
}
func (r *recorder) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

// TestCheck: Check catches a series created at the first event, a series
// that is not 0, and a value Values names but the code does not create;
// it passes series created at 0. The metrics are the rules' own.
func TestCheck(t *testing.T) {
	acks := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_agent_acks_total", Help: "h"}, []string{"result"})
	}
	probes := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_probe_results_total", Help: "h"}, []string{"kind", "result"})
	}
	probeValues := Want{Values: map[string][]string{"kind": {"tcp"}, "result": {"ok", "timeout", "error"}}}
	for _, tc := range []struct {
		name string
		w    Want
		c    func() prometheus.Collector
		errs int
	}{
		{"created at the first event", Want{}, func() prometheus.Collector { return acks() }, 1},
		{"created at 0", Want{}, func() prometheus.Collector {
			c := acks()
			c.WithLabelValues("nack")
			return c
		}, 0},
		{"not 0", Want{}, func() prometheus.Collector {
			c := acks()
			c.WithLabelValues("nack").Inc()
			return c
		}, 1},
		{"skipped", Want{Skip: map[string]string{"premirror_controller_agent_acks_total": "test"}}, func() prometheus.Collector { return acks() }, 1}, // nothing left to check
		{"every value but the excluded one", probeValues, func() prometheus.Collector {
			c := probes()
			c.WithLabelValues("tcp", "timeout")
			c.WithLabelValues("tcp", "error")
			return c
		}, 1}, // the ratio's denominator, rate() of every result, wants ok
		{"every value", probeValues, func() prometheus.Collector {
			c := probes()
			for _, r := range []string{"ok", "timeout", "error"} {
				c.WithLabelValues("tcp", r)
			}
			return c
		}, 0},
		{"a value missing", probeValues, func() prometheus.Collector {
			c := probes()
			c.WithLabelValues("tcp", "ok")
			c.WithLabelValues("tcp", "timeout")
			return c
		}, 2}, // numerator and denominator
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r recorder
			CheckCollectors(&r, tc.w, tc.c())
			if len(r.errs) != tc.errs {
				t.Fatalf("%d errors, want %d: %q", len(r.errs), tc.errs, r.errs)
			}
		})
	}
}
