package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
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
