package deploy

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/controller"
	"github.com/premirror/premirror/internal/promdesc"
	"github.com/premirror/premirror/internal/promdesc/alerttest"
)

const (
	rulesFile     = "prometheus/premirror-rules.yaml" // alerttest.RulesPath
	rulesTestFile = "prometheus/premirror-rules_test.yaml"
)

// ruleFile is shared with the components' tests, which check that their
// counters' series the alerts select exist at 0 before the first event.
type ruleFile = alerttest.Rules

type ruleTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name        string
		InputSeries []struct {
			Series string
		} `json:"input_series"`
		AlertRuleTest []struct {
			Alertname string
			ExpAlerts []struct {
				ExpLabels map[string]string `json:"exp_labels"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	}
}

// readYAML decodes path into v; strictly (an unknown field is an error)
// when v describes the whole format.
func readYAML(t *testing.T, path string, v any, strict bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unmarshal := yaml.Unmarshal
	if strict {
		unmarshal = yaml.UnmarshalStrict
	}
	if err := unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// exported maps every metric of ms to its labels; job and instance are
// Prometheus's, on every series.
func exported(ms ...promdesc.Metric) map[string][]string {
	m := map[string][]string{}
	for _, d := range ms {
		m[d.Name] = append(slices.Clone(d.Labels), "job", "instance")
	}
	return m
}

var (
	metricRE  = regexp.MustCompile(`\b(?:edge|premirror|replicator)_[a-z0-9_]+`)
	matcherRE = regexp.MustCompile(`(\w+)\s*(?:=~|!~|!=|=)\s*"`)
	runbookRE = regexp.MustCompile(`OPERATIONS\.md §(\d), \\"([^"\\]+)\\"`)
	rangeRE   = regexp.MustCompile(`\b(?:increase|rate|irate|delta)\(`)
	groupRE   = regexp.MustCompile(`\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
)

// baseName strips the suffixes Prometheus adds to histograms.
func baseName(n string, have map[string][]string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(n, suf); ok && have[b] != nil {
			return b
		}
	}
	return n
}

type errorer interface {
	Helper()
	Errorf(format string, args ...any)
}

// failed records whether checkSelectors reported anything.
type failed struct{ n int }

func (f *failed) Helper()               {}
func (f *failed) Errorf(string, ...any) { f.n++ }

// checkSelectors reports metrics the expression names that nothing exports,
// label matchers a metric does not have, and grouping labels none of the
// expression's metrics has.
func checkSelectors(t errorer, where, expr string, have map[string][]string) {
	t.Helper()
	var all []string
	for _, loc := range metricRE.FindAllStringIndex(expr, -1) {
		full := expr[loc[0]:loc[1]]
		name := baseName(full, have)
		labels, ok := have[name]
		if !ok {
			t.Errorf("%s: %s is not exported", where, name)
			continue
		}
		if name != full && strings.HasSuffix(full, "_bucket") {
			labels = append(slices.Clone(labels), "le")
		}
		all = append(all, labels...)
		rest := expr[loc[1]:]
		if !strings.HasPrefix(rest, "{") {
			continue
		}
		sel := rest[1:strings.IndexByte(rest, '}')]
		for _, m := range matcherRE.FindAllStringSubmatch(sel, -1) {
			if !slices.Contains(labels, m[1]) {
				t.Errorf("%s: %s has no label %q (it has %v)", where, name, m[1], labels)
			}
		}
	}
	for _, g := range groupRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !slices.Contains(all, l) {
				t.Errorf("%s: groups by %q, a label none of its metrics has", where, l)
			}
		}
	}
}

// TestAlertRules: every alert names metrics and labels the code exports,
// carries a severity, a summary and a description, and has unit tests in
// premirror-rules_test.yaml that see it fire and that see it stay quiet,
// and the README counts them; promtool checks the file and runs those
// tests (which also render every annotation).
func TestAlertRules(t *testing.T) {
	if "deploy/"+rulesFile != alerttest.RulesPath {
		t.Fatalf("alerttest reads %s, not %s", alerttest.RulesPath, rulesFile)
	}
	var rf ruleFile
	readYAML(t, rulesFile, &rf, true)
	var rt ruleTests
	readYAML(t, rulesTestFile, &rt, false)
	have := exported(append(agent.Metrics(), controller.Metrics()...)...)

	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, s := range tc.InputSeries {
			// Test input is shaped like what the code exports.
			if name, _, _ := strings.Cut(s.Series, "{"); name != "up" {
				checkSelectors(t, "test "+tc.Name, s.Series, have)
			}
		}
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if slices.Contains(alerts, r.Alert) {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts = append(alerts, r.Alert)
			checkSelectors(t, r.Alert, r.Expr, have)
			// The components' tests see every counter it takes the rate of.
			if n, sel := len(rangeRE.FindAllString(r.Expr, -1)), alerttest.Selectors(r.Alert, r.Expr); n != len(sel) {
				t.Errorf("%s: alerttest reads %d of its %d increase()/rate() selectors: %v", r.Alert, len(sel), n, sel)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: wants a summary and a description", r.Alert)
			}
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: %s wants a case where it fires (%v) and one where it stays quiet (%v)", r.Alert, rulesTestFile, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
	// The runbooks the annotations point to exist.
	ops, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(rulesFile)
	refs := runbookRE.FindAllStringSubmatch(string(raw), -1)
	if len(refs) < 10 {
		t.Fatalf("only %d runbook references found", len(refs))
	}
	for _, m := range refs {
		_, sec, _ := strings.Cut(string(ops), "\n## "+m[1]+". ")
		sec, _, _ = strings.Cut(sec, "\n## ")
		if !strings.Contains(sec, m[2]) {
			t.Errorf("%s points to OPERATIONS.md §%s, %q, which is not there", rulesFile, m[1], m[2])
		}
	}
	if len(alerts) < 20 {
		t.Fatalf("only %d alerts read from %s", len(alerts), rulesFile)
	}
	// The README counts them.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`premirror-rules\.yaml` + "`" + ` holds (\d+) alerting rules`).FindSubmatch(readme); m == nil {
		t.Error("README.md no longer says how many alerting rules premirror-rules.yaml holds")
	} else if string(m[1]) != strconv.Itoa(len(alerts)) {
		t.Errorf("README.md says premirror-rules.yaml holds %s alerting rules; it holds %d", m[1], len(alerts))
	}
	// OPERATIONS §1 "Alerts" lists every alert.
	_, table, _ := strings.Cut(string(ops), "\n### Alerts\n")
	table, _, _ = strings.Cut(table, "\n## ")
	for _, a := range alerts {
		if !strings.Contains(table, "| `"+a+"` |") {
			t.Errorf("OPERATIONS.md §1 \"Alerts\" has no row for %s", a)
		}
	}
	for a := range fires {
		if !slices.Contains(alerts, a) {
			t.Errorf("%s tests alert %s, which %s does not define", rulesTestFile, a, rulesFile)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool absent (scripts/install-deps.sh installs it)")
	}
	for _, args := range [][]string{{"check", "rules", "premirror-rules.yaml"}, {"test", "rules", "premirror-rules_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestCheckSelectors: the checks above catch what they are for.
func TestCheckSelectors(t *testing.T) {
	have := map[string][]string{"edge_x_total": {"reason", "job", "instance"}, "edge_h_seconds": {"job", "instance"}}
	for _, tc := range []struct {
		expr string
		bad  bool
	}{
		{`rate(edge_x_total{reason="a"}[5m])`, false},
		{`sum by (reason) (rate(edge_x_total[5m]))`, false},
		{`histogram_quantile(0.99, sum by (le) (rate(edge_h_seconds_bucket[5m])))`, false},
		{`sum by (le) (edge_x_total)`, true},               // le only on a histogram's buckets
		{`rate(edge_y_total[5m])`, true},                   // not exported
		{`rate(edge_x_total{verdict="drop"}[5m])`, true},   // no such label
		{`sum by (mirror) (rate(edge_x_total[5m]))`, true}, // nor to group by
		{`edge_x_total unless on (job, peer) edge_h_seconds_count`, true},
	} {
		var f failed
		checkSelectors(&f, "case", tc.expr, have)
		if (f.n > 0) != tc.bad {
			t.Errorf("%s: %d errors, want any: %v", tc.expr, f.n, tc.bad)
		}
	}
}
