package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
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

// TestRouteEvalUnseenFiles runs the command on files shaped unlike the
// shared ones: each gives a clear error or a report whose notes say what
// was done to the data.
func TestRouteEvalUnseenFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	names := []string{"Washington, DC", "東京", "São Paulo", "New York", "Zürich"}
	var b strings.Builder
	b.WriteString("\ufeffsource,destination,latency_ms\r\n")
	for i, a := range names {
		for j, c := range names {
			if i != j {
				fmt.Fprintf(&b, "%q,%q,%d\r\n", a, c, 3+8*abs(i-j))
			}
		}
	}
	quoted := write("quoted.csv", b.String())
	one := write("one.csv", "src,dst,rtt_ms\na,a,1\n")
	fewGeo := write("geo.csv", "name,lat,lon\nZürich,47.37,8.54\nParis,48.86,2.35\n")
	square := write("square.csv", "Source \\ Destination,eu-west-1,us-east-1,ap-south-1\r\n"+
		"eu-west-1,1.1,68.2,120.5\r\nus-east-1,67.9,0.9,-\r\nap-south-1,121.0 ms,190.2,1.0\r\n")
	b.Reset()
	b.WriteString("src,dst,rtt_ms,time\n") // times in ms, as some exports write them
	for _, ms := range []int{0, 3600000, 7200000} {
		for i := range 4 {
			for j := range 4 {
				fmt.Fprintf(&b, "s%d,s%d,%d,%d\n", i, j, 3+8*abs(i-j), ms)
			}
		}
	}
	msTimes := write("ms.csv", b.String())
	// Held-out layouts: per-source ping summaries in a directory (fantoch's
	// latency_gcp), and a tab-separated square matrix pasted from a page.
	pingDir := filepath.Join(dir, "gcp")
	if err := os.Mkdir(pingDir, 0o755); err != nil {
		t.Fatal(err)
	}
	regions := []string{"us-east1", "europe-west4", "asia-east1", "us-west1"}
	for i, a := range regions {
		b.Reset()
		for j, c := range regions {
			r := 0.2 + 40*float64(abs(i-j))
			fmt.Fprintf(&b, "%.3f/%.3f/%.3f/0.2:%s\n", r*0.98, r, r*1.1, c)
		}
		if err := os.WriteFile(filepath.Join(pingDir, a+".dat"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tabSquare := write("pasted.tsv", "\tWashington, DC\tTokyo\tParis\nWashington, DC\t1\t150\t80\nTokyo\t151\t1\t220\nParis\t81\t219\t1\n")
	tests := []struct {
		name    string
		args    []string
		wantErr string // substring; "" = success
		usage   bool   // errors.Is(err, cli.ErrUsage)
		out     []string
	}{
		{name: "quoted mirror names", args: []string{"-dataset", quoted, "-mirror-sites", `"Washington, DC",Zürich`, "-origin", "東京"},
			out: []string{`mirrors (2): "Washington, DC", Zürich`, "origin: 東京", "no self-pair"}},
		{name: "unknown names listed", args: []string{"-dataset", quoted, "-mirror-sites", "Washington,Tokyo"},
			wantErr: `"Washington" (not in quoted.csv), "Tokyo" (not in quoted.csv)`},
		{name: "empty mirror name", args: []string{"-dataset", quoted, "-mirror-sites", "a,,b"}, usage: true, wantErr: "name 2 is empty"},
		{name: "too many mirrors", args: []string{"-dataset", quoted, "-mirrors", "9"}, wantErr: "mirrors 9: more than the 5 usable sites"},
		{name: "one site", args: []string{"-dataset", one}, wantErr: "at least 2 sites"},
		{name: "explicit zeros are zeros", args: []string{"-dataset", quoted, "-warmup", "0", "-self-rtt", "0", "-probe-loss", "0"},
			out: []string{"(scored 6m0s after 0s warm-up)", "no self-pair: 0s assumed"}},
		{name: "zero session gap", args: []string{"-dataset", quoted, "-session-every", "0"}, wantErr: "session timing"},
		{name: "sites file matching one site", args: []string{"-dataset", quoted, "-sites", fewGeo},
			out: []string{"geo.csv gave coordinates to 1 of the 5 sites", "geo-nearest falls back to the origin"}},
		{name: "square cloud matrix", args: []string{"-dataset", square, "-mirrors", "2"}, out: []string{"dataset square.csv: 3 sites", "use the reverse direction's RTT"}},
		{name: "directory of per-source ping files", args: []string{"-dataset", pingDir, "-mirrors", "2"}, out: []string{"dataset gcp: 4 sites"}},
		{name: "one ping file", args: []string{"-dataset", filepath.Join(pingDir, "us-east1.dat")}, wantErr: "pass the directory"},
		{name: "tab-separated square matrix", args: []string{"-dataset", tabSquare, "-mirror-sites", `"Washington, DC",Paris`},
			out: []string{"dataset pasted.tsv: 3 sites"}},
		{name: "time column in ms", args: []string{"-dataset", msTimes}, wantErr: "use -steps"},
		{name: "time column in ms with -steps", args: []string{"-dataset", msTimes, "-steps", "-segment", "3m"}, out: []string{"3 snapshot(s), replay 9m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runRouteEval(context.Background(), append(tt.args, "-duration", "6m"), &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || (tt.usage && !errors.Is(err, cli.ErrUsage)) {
					t.Fatalf("err = %v, want %q (usage %v)", err, tt.wantErr, tt.usage)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			machineLines(t, out.String())
			for _, w := range tt.out {
				if !strings.Contains(out.String(), w) {
					t.Fatalf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestRouteEvalHelpDocumentsData: -h says how missing pairs, asymmetry and
// duplicates are handled.
func TestRouteEvalHelpDocumentsData(t *testing.T) {
	var out bytes.Buffer
	if err := runRouteEval(context.Background(), []string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, w := range []string{"Missing pairs", "Asymmetry", "Duplicates", "n/a", "-mirror-sites"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("help lacks %q", w)
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
