// Package alerttest checks a component's metrics against the alerting
// rules in deploy/prometheus, for tests.
//
// An alert on increase() or rate() of a counter misses a first, isolated
// event when the counter's series only appears with that event: the series
// starts at 1, and increase() over a series that appears with its first
// sample sees no increase. Check fails for every series such an alert
// selects that the component does not export, at 0, before any event.
package alerttest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/premirror/premirror/internal/promdesc"
)

// RulesPath is the rules file, relative to the module root.
const RulesPath = "deploy/prometheus/premirror-rules.yaml"

// Rules is the format of a Prometheus rules file (the fields premirror's
// rules use).
type Rules struct {
	Groups []struct {
		Name  string
		Rules []Rule
	}
}

// Rule is one alerting or recording rule.
type Rule struct {
	Alert       string
	Expr        string
	For         string
	Labels      map[string]string
	Annotations map[string]string
}

// Matcher is one label matcher of a selector.
type Matcher struct{ Label, Op, Value string }

// Selector is a counter an alert takes the increase or rate of.
type Selector struct {
	Alert    string
	Func     string // increase, rate, irate, delta
	Metric   string
	Matchers []Matcher
}

func (s Selector) String() string {
	var ms []string
	for _, m := range s.Matchers {
		ms = append(ms, fmt.Sprintf("%s%s%q", m.Label, m.Op, m.Value))
	}
	if len(ms) == 0 {
		return fmt.Sprintf("%s(%s)", s.Func, s.Metric)
	}
	return fmt.Sprintf("%s(%s{%s})", s.Func, s.Metric, strings.Join(ms, ","))
}

var (
	rangeRE   = regexp.MustCompile(`\b(increase|rate|irate|delta)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?\s*\[`)
	matcherRE = regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	altsRE    = regexp.MustCompile(`^[a-zA-Z0-9_]+(?:\|[a-zA-Z0-9_]+)*$`)
)

// Selectors lists the counters expr takes the increase or rate of.
func Selectors(alert, expr string) []Selector {
	var out []Selector
	for _, m := range rangeRE.FindAllStringSubmatch(expr, -1) {
		s := Selector{Alert: alert, Func: m[1], Metric: m[2]}
		for _, mm := range matcherRE.FindAllStringSubmatch(m[3], -1) {
			s.Matchers = append(s.Matchers, Matcher{mm[1], mm[2], mm[3]})
		}
		out = append(out, s)
	}
	return out
}

// Load reads the module's rules file (found from the working directory up).
func Load(t T) Rules {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("%v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory: cannot find %s", RulesPath)
		}
		dir = parent
	}
	b, err := os.ReadFile(filepath.Join(dir, RulesPath))
	if err != nil {
		t.Fatalf("%v", err)
	}
	var r Rules
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", RulesPath, err)
	}
	return r
}

// AlertSelectors lists the selectors of every alert of r.
func (r Rules) AlertSelectors() []Selector {
	var out []Selector
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Alert != "" {
				out = append(out, Selectors(rule.Alert, rule.Expr)...)
			}
		}
	}
	return out
}

// T is the part of testing.TB Check uses.
type T interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Want says what the component under test creates.
type Want struct {
	// Values are the label values the component creates, for labels a
	// selector leaves open or matches with != or !~: static enums, and
	// the dynamic names (volumes, peers) the test registered. Keyed by
	// label, or by metric+"/"+label for one metric only. Without them,
	// any one series will do for that label.
	Values map[string][]string
	// Skip names metrics not to check, with why.
	Skip map[string]string
}

// Check fails t for every series an alert's increase() or rate() selects
// from the metrics ms (what the component describes) that g does not
// gather, at 0. Call it after constructing the component, before any
// event.
func Check(t T, w Want, g prometheus.Gatherer, ms []promdesc.Metric) {
	t.Helper()
	labels := map[string][]string{}
	for _, m := range ms {
		labels[m.Name] = m.Labels
	}
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	// series[name] holds each sample's labels and value.
	type sample struct {
		labels map[string]string
		value  float64
	}
	series := map[string][]sample{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				s.value = m.GetUntyped().GetValue()
			case m.GetHistogram() != nil:
				s.value = float64(m.GetHistogram().GetSampleCount())
			}
			series[f.GetName()] = append(series[f.GetName()], s)
		}
	}

	checked := 0
	for _, sel := range Load(t).AlertSelectors() {
		name := sel.Metric
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(name, suf); ok && labels[b] != nil {
				name = b
			}
		}
		ls, ok := labels[name]
		if !ok {
			continue // another component's
		}
		if _, skip := w.Skip[name]; skip {
			continue
		}
		checked++
		for _, want := range required(t, w, sel, name, ls) {
			found := false
			for _, s := range series[name] {
				if !matches(s.labels, want) {
					continue
				}
				found = true
				if s.value != 0 {
					t.Errorf("%s: %s: series %v is %v before any event, want 0", sel.Alert, sel, s.labels, s.value)
				}
			}
			if !found {
				t.Errorf("%s: %s: no series %v before the first event (create it at 0: %s() sees no first event of a series that appears at 1)",
					sel.Alert, sel, want, sel.Func)
			}
		}
	}
	if checked == 0 {
		t.Errorf("no alert of %s takes the increase or rate of these metrics: %v", RulesPath, promdesc.Names(ms))
	}
}

// CheckCollectors is Check on the collectors that export a metric some
// alert selects (the others are not collected: they may read state the
// test did not set up).
func CheckCollectors(t T, w Want, cs ...prometheus.Collector) {
	t.Helper()
	alerting := map[string]bool{}
	for _, s := range Load(t).AlertSelectors() {
		alerting[s.Metric] = true
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			alerting[strings.TrimSuffix(s.Metric, suf)] = true
		}
	}
	reg := prometheus.NewPedanticRegistry()
	var all []promdesc.Metric
	for _, c := range cs {
		ms, err := promdesc.Describe(c)
		if err != nil {
			t.Fatalf("%v", err)
		}
		if slices.ContainsFunc(ms, func(m promdesc.Metric) bool { return alerting[m.Name] }) {
			reg.MustRegister(c)
			all = append(all, ms...)
		}
	}
	Check(t, w, reg, all)
}

// required lists the label sets the selector needs series for: one per
// combination of the values its matchers name (or Values give); labels
// without either are left out (any value).
func required(t T, w Want, sel Selector, name string, labels []string) []map[string]string {
	t.Helper()
	out := []map[string]string{{}}
	for _, l := range labels {
		vals, known := w.Values[name+"/"+l]
		if !known {
			vals, known = w.Values[l]
		}
		for _, m := range sel.Matchers {
			if m.Label != l {
				continue
			}
			switch m.Op {
			case "=":
				vals, known = []string{m.Value}, true
			case "=~":
				if !altsRE.MatchString(m.Value) {
					t.Errorf("%s: %s: cannot list the values of %s=~%q", sel.Alert, sel, l, m.Value)
					return nil
				}
				vals, known = strings.Split(m.Value, "|"), true
			case "!=", "!~":
				if !known {
					t.Errorf("%s: %s: want Values of %s to tell which series it selects", sel.Alert, sel, l)
					return nil
				}
				re, err := regexp.Compile("^(?:" + m.Value + ")$")
				if m.Op == "!=" {
					re, err = regexp.Compile("^" + regexp.QuoteMeta(m.Value) + "$")
				}
				if err != nil {
					t.Errorf("%s: %s: %v", sel.Alert, sel, err)
					return nil
				}
				if vals = slices.DeleteFunc(slices.Clone(vals), re.MatchString); len(vals) == 0 {
					t.Errorf("%s: %s: Values leave no value of %s", sel.Alert, sel, l)
				}
			}
		}
		if !known {
			continue
		}
		var next []map[string]string
		for _, o := range out {
			for _, v := range vals {
				n := map[string]string{l: v}
				for k, x := range o {
					n[k] = x
				}
				next = append(next, n)
			}
		}
		out = next
	}
	return out
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
