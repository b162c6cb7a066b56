package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/cli"
)

// writeCSV writes a synthetic hourly per-region demand table (five weeks,
// three regions with daily cycles) and returns its path.
func writeCSV(t *testing.T, withLocation bool) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var b strings.Builder
	if withLocation {
		b.WriteString("timestamp,location,value\n")
	} else {
		b.WriteString("timestamp,value\n")
	}
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 24*37; i++ {
		ts := start.Add(time.Duration(i) * time.Hour).Format("2006-01-02 15:04:05")
		for r, base := range []float64{300, 100, 30} {
			v := base * (1 + 0.5*math.Sin(2*math.Pi*float64(i%24+r*6)/24))
			v = math.Round(math.Max(0, v+math.Sqrt(v)*rng.NormFloat64()))
			if withLocation {
				fmt.Fprintf(&b, "%s,region%d,%.0f\n", ts, r, v)
			} else if r == 0 {
				fmt.Fprintf(&b, "%s,%.0f\n", ts, v)
			}
		}
	}
	p := filepath.Join(t.TempDir(), "demand.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestForecastBacktestJSON(t *testing.T) {
	var out bytes.Buffer
	err := runForecast(context.Background(), []string{"backtest", "--csv", writeCSV(t, false), "--json", "--methods", "naive,snaive_day,ets,hybrid"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"coverage80_h1", "coverage80_h12", "mase_1to12", "mase_h1", "mase_h12", "method", "series", "smape_h1", "smape_h12"}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d JSON lines:\n%s", len(lines), out.String())
	}
	methods := map[string]bool{}
	for _, l := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		var keys []string
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if strings.Join(keys, ",") != strings.Join(want, ",") {
			t.Fatalf("fields %v, want exactly %v", keys, want)
		}
		if obj["series"] != "demand" {
			t.Fatalf("series %v", obj["series"])
		}
		methods[obj["method"].(string)] = true
		if v, ok := obj["mase_h1"].(float64); !ok || v <= 0 {
			t.Fatalf("mase_h1 %v", obj["mase_h1"])
		}
	}
	if len(methods) != 4 || !methods["hybrid"] {
		t.Fatalf("methods %v", methods)
	}
}

func TestForecastBacktestTableAndErrors(t *testing.T) {
	var out bytes.Buffer
	if err := runForecast(context.Background(), []string{"backtest", "--csv", writeCSV(t, true), "--series", "region1", "--methods", "naive,hybrid"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "demand/region1") || strings.Contains(s, "region0") || !strings.Contains(s, "vs_best_h12") {
		t.Fatalf("table:\n%s", s)
	}
	for _, args := range [][]string{
		{"backtest"},
		{"backtest", "--csv", "/nonexistent.csv"},
		{"backtest", "--csv", writeCSV(t, false), "--agg", "median"},
		{"backtest", "--csv", writeCSV(t, false), "--methods", "nothing"},
		{"nosuch"},
		{},
	} {
		if err := runForecast(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", args)
		} else if len(args) == 1 && args[0] == "backtest" && !errors.Is(err, cli.ErrUsage) {
			t.Errorf("%v: %v is not a usage error", args, err)
		}
	}
}

func TestForecastLocationsAndExplain(t *testing.T) {
	csv := writeCSV(t, true)
	var out bytes.Buffer
	if err := runForecast(context.Background(), []string{"locations", "--csv", csv, "--test-from", "2024-01-31", "--json"}, &out); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var obj map[string]any
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			t.Fatal(err)
		}
		seen[obj["method"].(string)]++
		if ce := obj["cross_entropy_per_request"].(float64); !(ce > 0 && ce < math.Log(3)+0.5) {
			t.Fatalf("cross-entropy %v", ce)
		}
	}
	if seen["hybrid"] != 2 || seen["persistence"] != 2 || seen["dirichlet_how"] != 2 {
		t.Fatalf("rows %v", seen)
	}
	lat := filepath.Join(t.TempDir(), "lat.csv")
	os.WriteFile(lat, []byte("region,location,latency_ms\nregion0,siteA,2\nregion0,siteB,40\nregion1,siteA,30\nregion1,siteB,3\nregion2,siteB,5\n"), 0o644)
	out.Reset()
	if err := runForecast(context.Background(), []string{"explain", "--csv", csv, "--resource", "disk-9", "--latency", lat, "--mirrors", "siteA",
		"--value-per-request-second", "0.01"}, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "resource disk-9") || !strings.Contains(s, "candidate siteB") || !strings.Contains(s, "region1") {
		t.Fatalf("explain:\n%s", s)
	}
	if err := runForecast(context.Background(), []string{"explain", "--csv", csv}, &bytes.Buffer{}); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("explain without latency: %v", err)
	}
}
