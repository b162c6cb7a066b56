package agent

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/premirror/premirror/internal/yamlstrict"
)

// documentedFields returns the first-column fields of the tables under
// the heading that starts with heading in docs/OPERATIONS.md.
func documentedFields(t *testing.T, heading string) []string {
	b, err := os.ReadFile("../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n"+heading)
	if !ok {
		t.Fatalf("OPERATIONS.md has no %q section", heading)
	}
	if i := strings.Index(sec, "\n#"); i >= 0 {
		sec = sec[:i]
	}
	var out []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(sec, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestOperationsDocumentsEveryField: docs/OPERATIONS.md §6 lists every
// field of the agent's configuration, and only those.
func TestOperationsDocumentsEveryField(t *testing.T) {
	doc := documentedFields(t, "### edge-agent")
	real := yamlstrict.Paths(reflect.TypeFor[Config]())
	for _, p := range real {
		if !slices.Contains(doc, p) {
			t.Errorf("%s is not in OPERATIONS.md §6", p)
		}
	}
	for _, p := range doc {
		if !slices.Contains(real, p) {
			t.Errorf("OPERATIONS.md §6 documents %s, which the agent does not read", p)
		}
	}
}
