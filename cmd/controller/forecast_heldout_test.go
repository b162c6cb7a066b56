package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/forecast"
)

// writeTrace writes body to a temporary CSV and returns its path.
func writeTrace(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "trace.csv")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBacktestCoarseBuckets: buckets as long as or longer than --train
// (monthly rows with the default four weeks) made a zero-bucket window
// and the error "bad input: backtest config {Window:0 ...}"; it is now a
// usage error naming --train and the bucket length. A longer --train runs.
func TestBacktestCoarseBuckets(t *testing.T) {
	monthly := func() string {
		var b strings.Builder
		b.WriteString("date,value\n")
		for i := range 200 {
			fmt.Fprintf(&b, "%d-%02d-01,%g\n", 2000+i/12, i%12+1, 100+10*math.Sin(float64(i)))
		}
		return b.String()
	}()
	weekly := "date,value\n" + genRows(400, 7*24*time.Hour, func(i int) float64 { return 100 + 10*math.Sin(float64(i)) },
		func(t time.Time, v float64) string { return fmt.Sprintf("%s,%g\n", t.Format(time.DateOnly), v) })
	for _, tc := range []struct {
		name, csv string
		args      []string
		wantErr   string
	}{
		{name: "monthly, default --train", csv: monthly, wantErr: "--train 672h0m0s is shorter than one bucket"},
		{name: "weekly, --train of one day", csv: weekly, args: []string{"--train", "24h"}, wantErr: "--train 24h0m0s is shorter than one bucket (168h0m0s)"},
		{name: "monthly, long --train", csv: monthly, args: []string{"--train", "50000h", "--min-origins", "20"}},
		{name: "weekly, long --train", csv: weekly, args: []string{"--train", "20000h"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"backtest", "--csv", writeTrace(t, tc.csv), "--methods", "naive,ets", "--json"}, tc.args...)
			err := runForecast(context.Background(), args, &out)
			if tc.wantErr != "" {
				if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want a usage error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(out.String(), "\n") != 2 || strings.Contains(out.String(), "null") {
				t.Fatalf("output:\n%s", out.String())
			}
		})
	}
	// The library names the field too.
	s := &forecast.Series{Name: "m", Start: time.Unix(0, 0).UTC(), Step: 744 * time.Hour, Values: make([]float64, 300), Observed: make([]bool, 300)}
	for i := range s.Observed {
		s.Observed[i], s.Values[i] = true, float64(i%7)
	}
	_, err := forecast.Backtest(context.Background(), s, nil, forecast.Baselines(), forecast.BacktestConfig{})
	if !errors.Is(err, forecast.ErrBadInput) || !strings.Contains(err.Error(), "window of 0 buckets") {
		t.Fatalf("library error %v", err)
	}
}

// locRows writes a timestamp,location,value table of n buckets of step
// for the given locations; v gives each count.
func locRows(n int, step time.Duration, locs []string, v func(i, j int) float64) string {
	var b strings.Builder
	b.WriteString("timestamp,location,value\n")
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		for j, l := range locs {
			fmt.Fprintf(&b, "%s,%s,%g\n", t0.Add(time.Duration(i)*step).Format(time.DateTime), l, v(i, j))
		}
	}
	return b.String()
}

// TestLocationsHeldOutShapes: inputs the dev files do not have. A log of
// a few days (ingest-log's output) lies inside one calendar month, so the
// default test start was the data's start and the error "test start ...
// outside the data"; daily buckets failed on the default horizon 24 with
// "location horizon 24 buckets"; an all-zero test period printed a
// cross-entropy of 0 (a perfect score); negative counts were clamped to
// zero silently.
func TestLocationsHeldOutShapes(t *testing.T) {
	varied := func(i, j int) float64 { return float64(5 + (i*7+j*3)%11) }
	for _, tc := range []struct {
		name, csv string
		args      []string
		wantErr   string
		horizons  []int // horizons of the scored rows
	}{
		{name: "four days of hourly counts", csv: locRows(96, time.Hour, []string{"a", "b", "c"}, varied), horizons: []int{1, 24}},
		{name: "daily buckets", csv: locRows(400, 24*time.Hour, []string{"a", "b"}, varied), horizons: []int{1}},
		{name: "15-minute buckets", csv: locRows(96*20, 15*time.Minute, []string{"a", "b"}, varied), horizons: []int{1, 96}},
		{name: "daily, horizon beyond a week", csv: locRows(400, 24*time.Hour, []string{"a", "b"}, varied), args: []string{"--horizons", "1,24"},
			wantErr: "--horizons: 24 buckets of 24h0m0s"},
		{name: "all zero", csv: locRows(24*60, time.Hour, []string{"a", "b"}, func(int, int) float64 { return 0 }), wantErr: "no requests in the test period"},
		{name: "negative count", csv: locRows(24*60, time.Hour, []string{"a", "b"}, func(i, j int) float64 {
			if i == 30 && j == 1 {
				return -3
			}
			return varied(i, j)
		}), wantErr: `location "b" has a negative count -3 at 2024-01-02 06:00`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"locations", "--csv", writeTrace(t, tc.csv), "--json"}, tc.args...)
			err := runForecast(context.Background(), args, &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, forecast.ErrBadInput) && !errors.Is(err, cli.ErrUsage) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rows := 0
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var r struct {
					Horizon int      `json:"horizon"`
					CE      *float64 `json:"cross_entropy_per_request"`
					Buckets int      `json:"test_buckets"`
				}
				if err := json.Unmarshal([]byte(l), &r); err != nil {
					t.Fatal(err)
				}
				if r.CE == nil || *r.CE <= 0 || r.Buckets == 0 || r.Horizon != tc.horizons[rows%len(tc.horizons)] {
					t.Fatalf("row %s", l)
				}
				rows++
			}
			if rows != 3*len(tc.horizons) {
				t.Fatalf("%d rows:\n%s", rows, out.String())
			}
		})
	}
}

// TestBacktestLocationsSideBySide: the locations of a per-location file
// are backtested concurrently (200 locations took minutes on one core);
// the output is in location order and each location's rows are what a
// run of that location alone prints.
func TestBacktestLocationsSideBySide(t *testing.T) {
	locs := []string{"eu", "us", "ap", "sa", "af"}
	p := writeTrace(t, locRows(24*16, time.Hour, locs, func(i, j int) float64 {
		return float64(20 + 10*j + (i*(j+3))%17 + 8*(i%24)/(j+1))
	}))
	run := func(extra ...string) string {
		var out bytes.Buffer
		args := append([]string{"backtest", "--csv", p, "--json", "--methods", "naive,ets,hybrid", "--min-origins", "48"}, extra...)
		if err := runForecast(context.Background(), args, &out); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	all := strings.Split(strings.TrimSpace(run()), "\n")
	if len(all) != 3*len(locs) {
		t.Fatalf("%d rows:\n%s", len(all), strings.Join(all, "\n"))
	}
	sorted := []string{"af", "ap", "eu", "sa", "us"}
	for k, l := range sorted {
		alone := strings.Split(strings.TrimSpace(run("--series", l)), "\n")
		for m := range alone {
			if all[3*k+m] != alone[m] {
				t.Fatalf("%s row %d: together %s, alone %s", l, m, all[3*k+m], alone[m])
			}
		}
	}
}

// TestReadLatencyVariants: route-cost files for `forecast explain` in
// other spellings. A byte-order mark or a header other than "region,…"
// was read as data ("latency \"latency_ms\""), semicolons failed as
// "wrong number of fields", and a NaN latency was accepted and printed as
// a NaN route cost.
func TestReadLatencyVariants(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		wantErr    string
	}{
		{name: "plain", body: "region,location,latency_ms\neu,a,10\nus,a,80\n"},
		{name: "no header, comments", body: "# measured 2024-01\neu,a,10\nus,a,80\n"},
		{name: "BOM and CRLF", body: "\ufeffregion,location,latency_ms\r\neu,a,10\r\nus,a,80\r\n"},
		{name: "other header", body: "src,dst,rtt_ms\neu,a,10\nus,a,80\n"},
		{name: "semicolons", body: "region;location;latency_ms\neu;a;10\nus;a;80\n"},
		{name: "quoted names", body: "region,location,latency_ms\n\"eu, west\",a,10\nus,a,80\n"},
		{name: "NaN", body: "region,location,latency_ms\neu,a,NaN\nus,a,80\n", wantErr: "line 2: latency \"NaN\""},
		{name: "negative", body: "region,location,latency_ms\neu,a,10\nus,a,-1\n", wantErr: "line 3: latency \"-1\""},
		{name: "text on a data line", body: "region,location,latency_ms\neu,a,10\nus,a,fast\n", wantErr: "line 3: latency \"fast\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lat, err := readLatency(writeTrace(t, tc.body))
			if tc.wantErr != "" {
				if !errors.Is(err, forecast.ErrBadInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(lat) != 2 || lat["us"]["a"] != 0.08 {
				t.Fatalf("latency %v", lat)
			}
		})
	}
}

// FuzzParseLatency: the route-cost parser never panics, and what it
// accepts is finite, non-negative seconds under non-empty names.
func FuzzParseLatency(f *testing.F) {
	f.Add("region,location,latency_ms\neu,a,10\nus,a,80\n")
	f.Add("\ufeff# c\r\nsrc;dst;rtt_ms\r\n\"eu; w\";a;1,5\r\n")
	f.Add("eu\ta\tNaN\n")
	f.Fuzz(func(t *testing.T, in string) {
		lat, err := parseLatency(strings.NewReader(in), "f")
		if err != nil {
			if !errors.Is(err, forecast.ErrBadInput) {
				t.Fatalf("error without ErrBadInput: %v", err)
			}
			return
		}
		for reg, row := range lat {
			for loc, v := range row {
				if reg == "" || loc == "" || !(v >= 0) || math.IsInf(v, 0) {
					t.Fatalf("accepted %q→%q %v", reg, loc, v)
				}
			}
		}
	})
}

// TestNameLists: --series, --mirrors and --candidates split on every
// comma, so a location such as "New York, NY" could not be selected.
func TestNameLists(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"eu, us", []string{"eu", "us"}},
		{`"New York, NY",Zürich`, []string{"New York, NY", "Zürich"}},
		{`a"b, "c""d"`, []string{`a"b`, `c"d`}},
	} {
		got, err := nameList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Fatalf("nameList(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if back, err := nameList(joinNames(got)); err != nil || !slices.Equal(back, got) {
			t.Fatalf("round trip of %q: %q, %v", got, back, err)
		}
	}
	p := writeTrace(t, locRows(24*12, time.Hour, []string{`"New York, NY"`, "Zürich"}, func(i, j int) float64 { return float64(10 + (i+3*j)%7) }))
	var out bytes.Buffer
	if err := runForecast(context.Background(), []string{"backtest", "--csv", p, "--methods", "naive", "--json", "--min-origins", "24",
		"--series", `"New York, NY"`}, &out); err != nil || strings.Count(out.String(), "\n") != 1 || !strings.Contains(out.String(), "New York, NY") {
		t.Fatalf("--series with a comma: %v\n%s", err, out.String())
	}
}
