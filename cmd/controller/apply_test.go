package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// sitesFile writes a file of sites named prefix-00, prefix-01, ..., each
// of nodes node names of 240 characters (about 250 bytes a node stored),
// and returns its path.
func sitesFile(t *testing.T, prefix string, sites, nodes int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("sites:\n")
	for i := range sites {
		fmt.Fprintf(&b, "  - name: %s-%02d\n    nodes:\n", prefix, i)
		for j := range nodes {
			fmt.Fprintf(&b, "      - %s-%02d-%0230d\n", prefix, i, j)
		}
	}
	f := filepath.Join(t.TempDir(), prefix+".yaml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// An apply beyond etcd's request limit (64 KiB here) only because of its
// number of objects is written, split by size over several
// transactions; one with an object that alone exceeds the limit is
// refused, naming the request's size and that object, and nothing of it
// is written. Before, both were refused.
func TestCtlApplySplitsBySize(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	admin := startCtlController(t, "--etcd-max-request-bytes", "65536")

	// 40 sites of about 2.5 KB: about 100 KB in all.
	out, err := ctl(t, append([]string{"apply", "-f", sitesFile(t, "many", 40, 10)}, admin...)...)
	if err != nil {
		t.Fatalf("apply of 40 sites of 2.5 KB under a 64 KiB limit: %v\n%s", err, out)
	}
	for i := range 40 {
		if l := fmt.Sprintf("site/many-%02d created", i); !strings.Contains(out, l) {
			t.Errorf("apply's output lacks %q", l)
		}
	}
	if got, err := ctl(t, append([]string{"get", "site"}, admin...)...); err != nil || strings.Count(got, "name: many-") != 40 {
		t.Fatalf("sites stored: %v\n%s", err, got)
	}

	// One site of about 75 KB among small ones.
	small := sitesFile(t, "small", 2, 1)
	big := sitesFile(t, "big", 1, 300)
	b0, _ := os.ReadFile(small)
	b1, _ := os.ReadFile(big)
	both := filepath.Join(t.TempDir(), "both.yaml")
	if err := os.WriteFile(both, append(append(b0, "---\n"...), b1...), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ctl(t, append([]string{"apply", "-f", both}, admin...)...)
	if err == nil || !strings.Contains(err.Error(), "bytes to write in one etcd request") ||
		!strings.Contains(err.Error(), "above the etcd request limit of 65536 bytes") ||
		!strings.Contains(err.Error(), `the largest object is site "big-00"`) {
		t.Fatalf("apply of a 75 KB site under a 64 KiB limit: %v", err)
	}
	if got, err := ctl(t, append([]string{"get", "site"}, admin...)...); err != nil || strings.Contains(got, "small-") || strings.Contains(got, "big-") {
		t.Fatalf("sites stored after a refused apply: %v\n%s", err, got)
	}
}
