package forecast

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// devData returns the shared dev traces' directory, skipping the test when
// the long tests are off or the data are absent.
func devData(t *testing.T) string {
	t.Helper()
	if os.Getenv("PREMIRROR_LONG") == "" {
		t.Skip("backtests on the dev traces run with PREMIRROR_LONG=1 (and in scripts/bench-forecast.sh)")
	}
	dir := os.Getenv("PREMIRROR_DEV_DATA")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "shared", "data", "dev")
	}
	if _, err := os.Stat(filepath.Join(dir, "nab_nyc_taxi.csv")); err != nil {
		t.Skipf("dev traces not found in %s (set PREMIRROR_DEV_DATA)", dir)
	}
	return dir
}

// loadEvents reads an events calendar from testdata.
func loadEvents(t *testing.T, name string) []Event {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events, err := ReadEvents(f)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

func loadDev(t *testing.T, path string, opt SeriesOptions) []*Series {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ss, err := LoadSeries(f, opt)
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

// TestDevTargets guards targets BENCHMARKS.md records as met: on NYC taxi,
// the large Uber boroughs, the low-count Uber NA series, the NAB
// network_in trace (a spike and a permanent drop before the test origins:
// the forecast combination's case), NAB elb and ec2_cpu the hybrid stays ≤ 0.9 × the best
// baseline at h1 and h12, with 80% intervals covering 75–85% where the
// series has a continuous spread, and events help on the taxi's event
// days. On NAB rds_cpu only h1 is met (the shift gate; its h12 cannot be,
// see BENCHMARKS "Why the misses remain"); at h12 it stays ahead of the
// best baseline (the carry of the gate's bets, round 17).
func TestDevTargets(t *testing.T) {
	dir := devData(t)
	events := loadEvents(t, "nyc_events_2014_2015.csv")
	cases := []struct {
		file, series    string
		events, cover80 bool
		agg             Agg  // gauges are averaged into hours, as scripts/bench-forecast.sh does
		h1Only          bool // the target is met one step ahead only
	}{
		{"nab_nyc_taxi.csv", "", true, true, AggSum, false},
		{"uber_nyc_boroughs_hourly_2015-01_04.csv", "Manhattan", true, true, AggSum, false},
		{"uber_nyc_boroughs_hourly_2015-01_04.csv", "Brooklyn", true, true, AggSum, false},
		{"uber_nyc_boroughs_hourly_2015-01_04.csv", "NA", true, true, AggSum, false},
		// Coverage 0.79 / 0.87: since the twelve-step share slows with
		// its rate (round 6) the intervals after its drop stay too wide.
		{"nab_ec2_network_in_257a54.csv", "", false, false, AggSum, false},
		{"nab_elb_request_count_8c0756.csv", "", false, true, AggSum, false},
		{"nab_ec2_cpu_utilization_53ea38.csv", "", false, true, AggMean, false},
		{"nab_rds_cpu_utilization_cc0c53.csv", "", false, true, AggMean, true},
	}
	for _, c := range cases {
		t.Run(strings.TrimSuffix(c.file, ".csv")+"/"+c.series, func(t *testing.T) {
			var s *Series
			for _, x := range loadDev(t, filepath.Join(dir, c.file), SeriesOptions{Step: time.Hour, Agg: c.agg}) {
				if x.Name == c.series {
					s = x
				}
			}
			var ev []Event
			if c.events {
				ev = events
			}
			feeds, err := s.Feeds(ev)
			if err != nil {
				t.Fatal(err)
			}
			specs := append(Baselines(), Methods(s, feeds, "hybrid,hybrid_nofeeds")...)
			res, err := Backtest(context.Background(), s, feeds, specs, BacktestConfig{EventDays: MarkedDays(s, feeds)})
			if err != nil {
				t.Fatal(err)
			}
			best := BestBaseline(res)
			m := byMethod(t, res)
			h := m["hybrid"]
			if r1, r12 := h.MASE[0]/best[0], h.MASE[11]/best[1]; r1 > 0.9 || (r12 > 0.9 && !c.h1Only) || r12 >= 1 {
				t.Errorf("hybrid / best baseline: h1 %.3f h12 %.3f", r1, r12)
			}
			for _, i := range []int{0, 11} {
				if cv := h.Cover80[i]; c.cover80 && (cv < 0.75 || cv > 0.85) {
					t.Errorf("coverage h%d %.3f", i+1, cv)
				}
			}
			if c.file == "nab_nyc_taxi.csv" && !(h.MarkedMASE[11] < m["hybrid_nofeeds"].MarkedMASE[11]) {
				t.Errorf("event days MASE h12: with calendar %.3f, without %.3f", h.MarkedMASE[11], m["hybrid_nofeeds"].MarkedMASE[11])
			}
		})
	}
}

// TestDevLocations guards the location result: the hybrid beats
// persistence and the Dirichlet hour-of-week model at 1 h and 24 h.
func TestDevLocations(t *testing.T) {
	dir := devData(t)
	ss := loadDev(t, filepath.Join(dir, "uber_nyc_boroughs_hourly_2015-01_04.csv"), SeriesOptions{})
	d, err := LocationDataFromSeries(ss)
	if err != nil {
		t.Fatal(err)
	}
	feeds, err := ss[0].Feeds(nil)
	if err != nil {
		t.Fatal(err)
	}
	scores, err := LocationBenchmark(d, feeds, feeds.Covariates.Names(), time.Date(2015, 4, 1, 0, 0, 0, 0, time.UTC), []int{1, 24})
	if err != nil {
		t.Fatal(err)
	}
	ce := map[string]float64{}
	for _, s := range scores {
		ce[s.Method+"/"+time.Duration(s.Horizon).String()] = s.CE
	}
	for _, h := range []string{"1ns", "24ns"} {
		if !(ce["hybrid/"+h] < ce["persistence/"+h] && ce["hybrid/"+h] < ce["dirichlet_how/"+h]) {
			t.Errorf("horizon %s: %v", h, ce)
		}
	}
}

// TestDevProphetPlayoffs guards what the events calendar buys on a second
// data set: Peyton Manning's playoff games (the dates of Prophet's own
// documentation) cut the daily page-view series' error on the days they
// mark at h1 and h12, and its h12 error overall; and the hybrid stays ≤ 0.9 ×
// the best baseline at h1 and h12.
func TestDevProphetPlayoffs(t *testing.T) {
	dir := devData(t)
	events := loadEvents(t, "peyton_manning_playoffs.csv")
	s := loadDev(t, filepath.Join(dir, "prophet_wp_log_peyton_manning.csv"), SeriesOptions{})[0]
	feeds, err := s.Feeds(events)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Backtest(context.Background(), s, feeds, append(Baselines(), Methods(s, feeds, "hybrid,hybrid_nofeeds")...),
		BacktestConfig{EventDays: MarkedDays(s, feeds)})
	if err != nil {
		t.Fatal(err)
	}
	m := byMethod(t, res)
	with, without := m["hybrid"], m["hybrid_nofeeds"]
	if with.MarkedN[0] == 0 {
		t.Fatal("no marked targets: the calendar did not load")
	}
	for _, i := range []int{0, 11} {
		if !(with.MarkedMASE[i] < without.MarkedMASE[i]) {
			t.Errorf("playoff days MASE h%d: with calendar %.3f, without %.3f", i+1, with.MarkedMASE[i], without.MarkedMASE[i])
		}
	}
	if !(with.MASE[11] < without.MASE[11]) {
		t.Errorf("MASE h12: with calendar %.3f, without %.3f", with.MASE[11], without.MASE[11])
	}
	// The ≤ 0.9 × best baseline target, met since the yearly experts
	// (round 6) by 0.3%: a change that loses it should say so.
	best := BestBaseline(res)
	if r1, r12 := with.MASE[0]/best[0], with.MASE[11]/best[1]; r1 > 0.9 || r12 > 0.9 {
		t.Errorf("hybrid / best baseline: h1 %.3f h12 %.3f", r1, r12)
	}
}
