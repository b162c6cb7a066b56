package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/premirror/premirror/internal/cli"
)

// machineLines parses the trailing "route-eval policy=…" lines.
func machineLines(t *testing.T, out string) map[string]map[string]float64 {
	t.Helper()
	res := map[string]map[string]float64{}
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "route-eval ") {
			if len(res) > 0 {
				t.Fatalf("output continues after the machine lines: %q", l)
			}
			continue
		}
		kv := map[string]float64{}
		name := ""
		for _, f := range strings.Fields(l)[1:] {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				t.Fatalf("field %q in %q", f, l)
			}
			if k == "policy" {
				name = v
				continue
			}
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsNaN(x) {
				t.Fatalf("value %q in %q", f, l)
			}
			kv[k] = x
		}
		res[name] = kv
		order = append(order, name)
	}
	want := []string{"premirror", "greedy", "geo-nearest", "round-robin", "origin-only", "oracle"}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("policies %v, want %v", order, want)
	}
	for _, k := range []string{"mean_ms", "p95_ms", "p99_ms", "mean_vs_oracle", "p95_vs_oracle", "flips_per_hour", "disrupted_share"} {
		if _, ok := res["premirror"][k]; !ok {
			t.Fatalf("key %s missing", k)
		}
	}
	return res
}

func TestRouteEvalGenericCSV(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("src,dst,rtt_ms\n")
	for i := range 10 {
		for j := range 10 {
			fmt.Fprintf(&b, "c%d,c%d,%d\n", i, j, 3+8*abs(i-j))
		}
	}
	csv := filepath.Join(dir, "m.csv")
	if err := os.WriteFile(csv, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runRouteEval(context.Background(), []string{"-dataset", csv, "-duration", "8m", "-mirrors", "3"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	res := machineLines(t, out.String())
	if pm := res["premirror"]; pm["mean_vs_oracle"] > 1.05 || pm["p95_vs_oracle"] > 1.10 {
		t.Fatalf("premirror %v", pm)
	}
	if !strings.Contains(out.String(), "no site coordinates") || res["geo-nearest"]["mean_ms"] != res["origin-only"]["mean_ms"] {
		t.Fatal("geography baseline without coordinates must say so and fall back to the origin")
	}
}

func TestRouteEvalSharedData(t *testing.T) {
	if _, err := resolveDataDir(defaultLatencyDir); err != nil {
		t.Skipf("shared latency data not found: %v", err)
	}
	for _, ds := range []string{"wonderproxy", "ibm"} {
		t.Run(ds, func(t *testing.T) {
			args := []string{"-dataset", ds, "-duration", "8m", "-warmup", "1m"}
			if ds == "ibm" {
				args = append(args, "-segment", "20s") // 182 weeks in an hour
			}
			var out bytes.Buffer
			if err := runRouteEval(context.Background(), args, &out); err != nil {
				t.Fatal(err)
			}
			res := machineLines(t, out.String())
			pm := res["premirror"]
			// The targets, on the development set.
			if pm["mean_vs_oracle"] > 1.05 || pm["p95_vs_oracle"] > 1.10 {
				t.Fatalf("%s: premirror %v misses the targets", ds, pm)
			}
			if res["origin-only"]["mean_ms"] <= pm["mean_ms"] {
				t.Fatalf("%s: origin-only beats premirror", ds)
			}
		})
	}
}

func TestRouteEvalErrors(t *testing.T) {
	var out bytes.Buffer
	if err := runRouteEval(context.Background(), []string{"-nope"}, &out); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("bad flag: %v", err)
	}
	if err := runRouteEval(context.Background(), []string{"extra"}, &out); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("extra argument: %v", err)
	}
	if err := runRouteEval(context.Background(), []string{"-dataset", filepath.Join(t.TempDir(), "none.csv")}, &out); err == nil {
		t.Fatal("missing file accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.csv")
	_ = os.WriteFile(bad, []byte("src,dst,rtt_ms\na,b,-3\n"), 0o644)
	if err := runRouteEval(context.Background(), []string{"-dataset", bad}, &out); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("corrupt file: %v", err)
	}
	if err := runRouteEval(context.Background(), []string{"-data", "/nonexistent/dir", "-dataset", "ibm"}, &out); err == nil {
		t.Fatal("missing data dir accepted")
	}
	if err := runRouteEval(context.Background(), []string{"-data", "no/such/relative/dir", "-dataset", "ibm"}, &out); err == nil {
		t.Fatal("missing relative data dir accepted")
	}
	if err := commands.Run(context.Background(), []string{"route-eval", "-h"}); err == nil {
		t.Fatal("-h returned no error")
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
