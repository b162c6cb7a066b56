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
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/forecast"
)

// genRows writes n rows from 2024-01-01 at the given step with values
// f(i), formatted by line (time, value) -> row.
func genRows(n int, step time.Duration, f func(i int) float64, line func(t time.Time, v float64) string) string {
	var b strings.Builder
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		b.WriteString(line(t0.Add(time.Duration(i)*step), f(i)))
	}
	return b.String()
}

func plainRow(t time.Time, v float64) string {
	return fmt.Sprintf("%s,%g\n", t.Format(time.DateTime), v)
}

// TestBacktestAdversarialInputs runs `forecast backtest --json` on inputs
// the dev traces do not have and checks every line is valid JSON with the
// protocol's fields, finite numbers, and nulls only where a metric is
// undefined.
func TestBacktestAdversarialInputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	daily := func(i int) float64 {
		return math.Round(100 + 50*math.Sin(2*math.Pi*float64(i%24)/24) + 5*rng.NormFloat64())
	}
	const n = 24 * 36
	shuffled := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		rng.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
		return strings.Join(lines, "\n") + "\n"
	}
	gappy := func() string {
		var b strings.Builder
		body := genRows(n, time.Hour, daily, plainRow)
		for i, l := range strings.Split(strings.TrimSpace(body), "\n") {
			switch {
			case i >= 100 && i < 110, i >= 24*20 && i < 24*22: // hours and two days missing
			case i%10 == 0:
				b.WriteString(l + "\n" + l + "\n") // repeated rows
			default:
				b.WriteString(l + "\n")
			}
		}
		return shuffled(b.String())
	}
	perLocation := func() string {
		var b strings.Builder
		b.WriteString("timestamp,location,value\n")
		t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := range n {
			ts := t0.Add(time.Duration(i) * time.Hour).Format(time.DateTime)
			v := daily(i)
			fmt.Fprintf(&b, "%s,A,%g\n", ts, v)
			if i >= 72 {
				fmt.Fprintf(&b, "%s,B,%g\n", ts, math.Round(v/2)) // starts three days late
			}
			if i >= 200 && i < 205 {
				fmt.Fprintf(&b, "%s,C,%g\n", ts, v) // five rows only
			}
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, csv string
		args      []string
		nullMASE  bool   // every origin has a constant window
		series    int    // series expected in the output
		wantErr   string // the command must fail naming this
	}{
		{name: "constant", csv: "timestamp,value\n" + genRows(n, time.Hour, func(int) float64 { return 5 }, plainRow), nullMASE: true, series: 1},
		{name: "all zero", csv: "timestamp,value\n" + genRows(n, time.Hour, func(int) float64 { return 0 }, plainRow), nullMASE: true, series: 1},
		{name: "gaps, repeats, unsorted", csv: "timestamp,value\n" + gappy(), series: 1},
		{name: "BOM, CRLF, semicolons", csv: "\ufefftimestamp;value\r\n" + strings.ReplaceAll(genRows(n, time.Hour, daily, func(t time.Time, v float64) string {
			return fmt.Sprintf("%s;%g\n", t.Format(time.DateTime), v)
		}), "\n", "\r\n"), series: 1},
		{name: "ISO-8601 with offsets", csv: "ts,value\n" + genRows(n, time.Hour, daily, func(t time.Time, v float64) string {
			return fmt.Sprintf("%s,%g\n", t.In(time.FixedZone("", 2*3600)).Format(time.RFC3339), v)
		}), series: 1},
		{name: "negative values", csv: genRows(n, time.Hour, func(i int) float64 { return daily(i) - 150 }, plainRow), series: 1},
		{name: "values around 1e12", csv: genRows(n, time.Hour, func(i int) float64 { return 1e12 + 1e6*daily(i) }, plainRow), series: 1},
		{name: "per location, different spans, one with five rows", csv: perLocation(), series: 2},
		{name: "daily, three years", csv: "date,value\n" + genRows(3*365, 24*time.Hour, func(i int) float64 {
			return 100 + 20*math.Sin(2*math.Pi*float64(i)/7) + rng.NormFloat64()
		}, func(t time.Time, v float64) string { return fmt.Sprintf("%s,%g\n", t.Format(time.DateOnly), v) }), series: 1},
		{name: "5-minute aggregated hourly", args: []string{"--hourly", "--train", "168h"},
			csv: genRows(12*24*16, 5*time.Minute, func(i int) float64 { return daily(i / 12) }, plainRow), series: 1},
		{name: "too short", csv: genRows(100, time.Hour, daily, plainRow), wantErr: "need at least 228"},
		{name: "--series selects nothing", csv: perLocation(), args: []string{"--series", "Z"}, wantErr: "selects none of A,B,C"},
		{name: "every location too short", csv: "2024-01-01 00:00,a,1\n2024-01-01 01:00,a,2\n2024-01-01 00:00,b,1\n2024-01-01 01:00,b,2\n", wantErr: "need at least"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "trace.csv")
			if err := os.WriteFile(p, []byte(tc.csv), 0o644); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			args := append([]string{"backtest", "--csv", p, "--json", "--methods", "naive,snaive_day,snaive_week,ets,hybrid"}, tc.args...)
			err := runForecast(context.Background(), args, &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, forecast.ErrTooShort) && !errors.Is(err, cli.ErrUsage) {
					t.Fatalf("error %v, want ErrTooShort or ErrUsage naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var row map[string]any // json refuses NaN and Inf: a line with one fails here
				if err := json.Unmarshal([]byte(l), &row); err != nil {
					t.Fatalf("invalid JSON %v: %s", err, l)
				}
				if len(row) != 9 {
					t.Fatalf("fields %v", row)
				}
				seen[row["series"].(string)] = true
				for k, x := range row {
					if k == "series" || k == "method" {
						continue
					}
					v, isNum := x.(float64)
					isMASE := strings.HasPrefix(k, "mase")
					switch {
					case x == nil && !(isMASE && tc.nullMASE):
						t.Fatalf("%s null: %s", k, l)
					case x != nil && !isNum:
						t.Fatalf("%s = %v: %s", k, x, l)
					case x != nil && isMASE && tc.nullMASE:
						t.Fatalf("%s = %v on a constant series: %s", k, v, l)
					case x != nil && (v < 0 || strings.HasPrefix(k, "coverage") && v > 1):
						t.Fatalf("%s = %v: %s", k, v, l)
					}
				}
			}
			if len(seen) != tc.series {
				t.Fatalf("series %v, want %d", seen, tc.series)
			}
		})
	}
}
