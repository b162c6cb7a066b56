package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/textin"
)

func init() {
	commands.Register(cli.Command{
		Name:    "forecast",
		Summary: "prediction engine: show (from the running controller); offline tools backtest, locations, explain, ingest-log",
		Run: func(ctx context.Context, args []string) error {
			return runForecast(ctx, args, os.Stdout)
		},
	})
}

func runForecast(ctx context.Context, args []string, out io.Writer) error {
	sub := &cli.Registry{Prog: "controller forecast"}
	sub.Register(cli.Command{Name: "show", Summary: "a resource's forecast, recent buckets and Mirroring Scores from the running controller (no resource: list)",
		Run: ctlForecastShow})
	sub.Register(cli.Command{Name: "backtest", Summary: "rolling-origin backtest of the hybrid and the baselines on a CSV",
		Run: func(ctx context.Context, a []string) error { return runBacktest(ctx, a, out) }})
	sub.Register(cli.Command{Name: "locations", Summary: "score access-location distributions (cross-entropy per request) on a per-location CSV",
		Run: func(ctx context.Context, a []string) error { return runLocations(ctx, a, out) }})
	sub.Register(cli.Command{Name: "explain", Summary: "Mirroring Score breakdown for a resource whose per-region demand is a CSV",
		Run: func(ctx context.Context, a []string) error { return runExplain(ctx, a, out) }})
	sub.Register(cli.Command{Name: "ingest-log", Summary: "Apache/Nginx access logs → per-location request counts CSV (client prefixes, GeoIP countries)",
		Run: func(ctx context.Context, a []string) error { return runIngestLog(ctx, a, os.Stdin, out, os.Stderr) }})
	if len(args) == 0 {
		sub.Usage(out)
		return fmt.Errorf("%w: forecast needs a subcommand", cli.ErrUsage)
	}
	return sub.Run(ctx, args)
}

// seriesFlags are the input flags shared by the subcommands.
type seriesFlags struct {
	csv, agg, step, events, covs, indexStep string
	hourly, keepRepeats                     bool
}

func (f *seriesFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&f.csv, "csv", "", "input CSV: timestamp,value | timestamp,location,value | the Uber per-borough layout (required)")
	fs.BoolVar(&f.hourly, "hourly", false, "aggregate to hourly buckets (same as --step 1h)")
	fs.StringVar(&f.step, "step", "", "aggregate to buckets of this length (e.g. 1h); default: the file's own step")
	fs.StringVar(&f.indexStep, "index-step", "", "read integer timestamps as bucket numbers of this length (e.g. 1h for a time column 1, 2, 3…); default: Unix seconds (or ms, µs, ns by magnitude)")
	fs.StringVar(&f.agg, "agg", "sum", "how samples combine into a bucket: sum (counts, bytes) or mean (gauges)")
	fs.BoolVar(&f.keepRepeats, "keep-repeats", false, "rows are events: keep rows repeating a timestamp, location and value, and sum every sample of a bucket (default: repeats are dropped as repeated exports)")
	fs.StringVar(&f.events, "events", "", "events calendar CSV: start,end,name,kind[,region] (kind holiday = Sunday-like day)")
	fs.StringVar(&f.covs, "covariates", "", "extra covariates CSV: timestamp[,region],name...")
}

func (f *seriesFlags) load() ([]*forecast.Series, []forecast.Event, *forecast.Covariates, error) {
	if f.csv == "" {
		return nil, nil, nil, fmt.Errorf("%w: --csv is required", cli.ErrUsage)
	}
	agg, err := forecast.ParseAgg(f.agg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: --agg: %v", cli.ErrUsage, err)
	}
	var step time.Duration
	if f.hourly {
		step = time.Hour
	}
	if f.step != "" {
		if step, err = time.ParseDuration(f.step); err != nil || step <= 0 {
			return nil, nil, nil, fmt.Errorf("%w: --step %q", cli.ErrUsage, f.step)
		}
	}
	var indexStep time.Duration
	if f.indexStep != "" {
		if indexStep, err = time.ParseDuration(f.indexStep); err != nil || indexStep <= 0 {
			return nil, nil, nil, fmt.Errorf("%w: --index-step %q", cli.ErrUsage, f.indexStep)
		}
	}
	fh, err := os.Open(f.csv)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open series: %w", err)
	}
	defer fh.Close()
	series, err := forecast.LoadSeries(fh, forecast.SeriesOptions{Step: step, Agg: agg, IndexStep: indexStep, KeepRepeats: f.keepRepeats})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read %s: %w", f.csv, err)
	}
	var events []forecast.Event
	if f.events != "" {
		eh, err := os.Open(f.events)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("open events: %w", err)
		}
		defer eh.Close()
		if events, err = forecast.ReadEvents(eh); err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", f.events, err)
		}
	}
	var covs *forecast.Covariates
	if f.covs != "" {
		ch, err := os.Open(f.covs)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("open covariates: %w", err)
		}
		defer ch.Close()
		covs = forecast.NewCovariates(series[0].Step)
		if err := covs.ReadCSV(ch); err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", f.covs, err)
		}
	}
	return series, events, covs, nil
}

// backtestRow is the --json object; its field names are the protocol's.
type backtestRow struct {
	Series        string   `json:"series"`
	Method        string   `json:"method"`
	MASEH1        *float64 `json:"mase_h1"`
	MASEH12       *float64 `json:"mase_h12"`
	MASE1to12     *float64 `json:"mase_1to12"`
	SMAPEH1       *float64 `json:"smape_h1"`
	SMAPEH12      *float64 `json:"smape_h12"`
	Coverage80H1  *float64 `json:"coverage80_h1"`
	Coverage80H12 *float64 `json:"coverage80_h12"`
}

// backtestRowAll adds the protocol details (--json-all).
type backtestRowAll struct {
	backtestRow
	PinballH1   *float64 `json:"pinball_h1"`
	PinballH12  *float64 `json:"pinball_h12"`
	Window      int      `json:"train_buckets"`
	Origins     int      `json:"origins"`
	ZeroScale   int      `json:"zero_scale_origins"`
	Step        string   `json:"step"`
	MarkedH1    *float64 `json:"marked_mase_h1,omitempty"`
	MarkedH12   *float64 `json:"marked_mase_h12,omitempty"`
	MarkedN     int      `json:"marked_targets_h1,omitempty"`
	MarkedCov1  *float64 `json:"marked_coverage80_h1,omitempty"`
	MarkedCov12 *float64 `json:"marked_coverage80_h12,omitempty"`
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	v = math.Round(v*1e4) / 1e4
	return &v
}

func at(v []float64, h int) float64 {
	if h-1 < len(v) {
		return v[h-1]
	}
	return math.NaN()
}

func runBacktest(ctx context.Context, args []string, out io.Writer) error {
	fs := cli.NewFlagSet("controller forecast", "backtest")
	var sf seriesFlags
	sf.register(fs)
	jsonOut := fs.Bool("json", false, "print one JSON object per (series, method) with the protocol's fields")
	jsonAll := fs.Bool("json-all", false, "like --json, plus pinball loss, window, origins and event-day errors and coverage")
	window := fs.Duration("train", 28*24*time.Hour, "training window")
	horizon := fs.Int("horizon", 12, "forecast horizon in buckets")
	season := fs.Duration("season", 24*time.Hour, "MASE scaling season")
	minOrigins := fs.Int("min-origins", 168, "least number of origins (the window shrinks for short series)")
	maxOrigins := fs.Int("origins", 0, "use only the last N origins (0: every origin after the first window)")
	only := fs.String("series", "", "comma-separated series (locations) to run, double-quoted where a name holds a comma; default all")
	methods := fs.String("methods", "", "comma-separated methods (naive,snaive_day,snaive_week,ets,hybrid,hybrid_nofeeds,hybrid_nogru,hybrid_noyear,hybrid_nopool,blr); default baselines+hybrid")
	noCov := fs.Bool("no-covariates", false, "ignore covariate columns")
	mark := fs.String("mark", "", "also report errors on days where a covariate exceeds a value, e.g. liq_precp_1hr>0,snow_depth_in>0 (calendar days are always marked)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), backtestHelp)
		fs.PrintDefaults()
	}
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	conds, err := forecast.ParseMarkConditions(*mark)
	if err != nil {
		return fmt.Errorf("%w: --mark: %v", cli.ErrUsage, err)
	}
	series, events, extraCov, err := sf.load()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	names, err := nameList(*only)
	if err != nil {
		return fmt.Errorf("%w: --series: %v", cli.ErrUsage, err)
	}
	for _, s := range names {
		want[s] = true
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	if !*jsonOut && !*jsonAll {
		fmt.Fprintln(tw, "series\tmethod\ttrain_h\torigins\tmase_h1\tmase_h12\tmase_1to12\tsmape_h1\tsmape_h12\tcov80_h1\tcov80_h12\tpinball_h1\tpinball_h12\tvs_best_h1\tvs_best_h12\tmarked_h1\tmarked_h12\tzero_scale\t")
	}
	enc := json.NewEncoder(out)
	type job struct {
		s     *forecast.Series
		feeds *forecast.Feeds
		specs []forecast.MethodSpec
		cfg   forecast.BacktestConfig
		res   []forecast.Result
		err   error
	}
	var jobs []*job
	for _, s := range series {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		name := s.Name
		if name == "" {
			name = seriesName(sf.csv)
		} else {
			name = seriesName(sf.csv) + "/" + name
		}
		s.Name = name
		if *noCov {
			s.Covariates = nil
		}
		feeds, err := s.Feeds(events)
		if err != nil {
			return err
		}
		if extraCov != nil {
			feeds.Covariates = extraCov
		}
		specs := forecast.Methods(s, feeds, *methods)
		if len(specs) == 0 {
			return fmt.Errorf("%w: --methods %q selects nothing", cli.ErrUsage, *methods)
		}
		if *window < s.Step {
			// Monthly rows with the default four weeks: no bucket fits.
			return fmt.Errorf("%w: --train %v is shorter than one bucket (%v) of %s: pass a --train of many buckets", cli.ErrUsage, *window, s.Step, name)
		}
		if w := int(*window / s.Step); w <= *horizon {
			slog.Warn("backtest: training window holds fewer buckets than the horizon; methods that need a horizon of history leave targets unscored (pass a longer --train)",
				"series", name, "train_buckets", w, "horizon", *horizon)
		}
		jobs = append(jobs, &job{s: s, feeds: feeds, specs: specs, cfg: forecast.BacktestConfig{
			Window:     int(*window / s.Step),
			Horizon:    *horizon,
			Season:     max(int(*season/s.Step), 1),
			MinOrigins: *minOrigins,
			MaxOrigins: *maxOrigins,
			EventDays:  forecast.MarkedDays(s, feeds, conds...),
		}})
	}
	// Series run side by side (a per-location file of 200 locations took
	// minutes on one core: ETS refits at every origin); the output keeps
	// the file's order.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan *job)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				j.res, j.err = forecast.Backtest(rctx, j.s, j.feeds, j.specs, j.cfg)
				if j.err != nil && !(errors.Is(j.err, forecast.ErrTooShort) && len(series) > 1) {
					cancel() // the command fails: stop the others
				}
			}
		}()
	}
	go func() {
		defer close(next)
		for i, j := range jobs {
			select {
			case next <- j:
			case <-rctx.Done():
				for _, j := range jobs[i:] {
					j.err = rctx.Err()
				}
				return
			}
			if len(jobs) > 1 {
				slog.Info("backtest: series started", "series", j.s.Name, "n", i+1, "of", len(jobs))
			}
		}
	}()
	wg.Wait()
	// The first failure in file order that is not a skip nor a stop we
	// caused: a series cancelled because a later one failed reports that.
	var fatal error
	for _, j := range jobs {
		skip := errors.Is(j.err, forecast.ErrTooShort) && len(series) > 1
		ours := ctx.Err() == nil && errors.Is(j.err, context.Canceled)
		if j.err != nil && !skip && !ours {
			fatal = j.err
			break
		}
	}
	ran := 0
	var skipped []error
	for _, j := range jobs {
		s, res, err := j.s, j.res, j.err
		if errors.Is(err, forecast.ErrTooShort) && len(series) > 1 {
			// One location of a per-location file with a few rows must
			// not cost the others their results; say so and go on.
			slog.Warn("backtest: location skipped", "series", s.Name, "reason", err)
			skipped = append(skipped, err)
			continue
		}
		if err != nil {
			return cmp.Or(fatal, err)
		}
		ran++
		best := forecast.BestBaseline(res)
		for _, r := range res {
			row := backtestRow{Series: r.Series, Method: r.Method,
				MASEH1: num(at(r.MASE, 1)), MASEH12: num(at(r.MASE, 12)), MASE1to12: num(r.MASE1toH()),
				SMAPEH1: num(at(r.SMAPE, 1)), SMAPEH12: num(at(r.SMAPE, 12)),
				Coverage80H1: num(at(r.Cover80, 1)), Coverage80H12: num(at(r.Cover80, 12))}
			switch {
			case *jsonAll:
				all := backtestRowAll{backtestRow: row, PinballH1: num(at(r.Pinball, 1)), PinballH12: num(at(r.Pinball, 12)),
					Window: r.Window, Origins: r.Origins, ZeroScale: r.ZeroScale, Step: r.Step.String()}
				if r.MarkedN[0] > 0 {
					all.MarkedH1, all.MarkedH12, all.MarkedN = num(at(r.MarkedMASE, 1)), num(at(r.MarkedMASE, 12)), r.MarkedN[0]
					all.MarkedCov1, all.MarkedCov12 = num(at(r.MarkedCover80, 1)), num(at(r.MarkedCover80, 12))
				}
				if err := enc.Encode(all); err != nil {
					return err
				}
			case *jsonOut:
				if err := enc.Encode(row); err != nil {
					return err
				}
			default:
				fmt.Fprintf(tw, "%s\t%s\t%.0f\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", strings.ReplaceAll(r.Series, " ", "_"), r.Method,
					float64(r.Window)*r.Step.Hours(), r.Origins,
					f3(at(r.MASE, 1)), f3(at(r.MASE, 12)), f3(r.MASE1toH()),
					f1(at(r.SMAPE, 1)), f1(at(r.SMAPE, 12)), f3(at(r.Cover80, 1)), f3(at(r.Cover80, 12)),
					f3(at(r.Pinball, 1)), f3(at(r.Pinball, 12)),
					f3(at(r.MASE, 1)/best[0]), f3(at(r.MASE, 12)/best[1]),
					f3(at(r.MarkedMASE, 1)), f3(at(r.MarkedMASE, 12)), r.ZeroScale)
			}
		}
	}
	if ran == 0 && len(skipped) > 0 {
		return errors.Join(skipped...)
	}
	if ran == 0 {
		var have []string
		for _, s := range series {
			have = append(have, s.Name)
		}
		return fmt.Errorf("%w: --series %q selects none of %s", cli.ErrUsage, *only, joinNames(have))
	}
	return tw.Flush()
}

// backtestHelp is printed above the flags of `forecast backtest --help`.
const backtestHelp = `Usage: controller forecast backtest --csv FILE [flags]

Rolling-origin backtest of the hybrid and the baselines. Input: a CSV of
timestamp,value or timestamp,location,value (header optional), or a wide
table: a time column and one column per location, none named value.
Comma, semicolon or tab separated (then a decimal comma is read too); a
UTF-8 byte-order mark, CRLF or CR line ends and quoted fields are fine;
extra numeric columns are covariates; extra text columns and nameless or
row-number columns (pandas' index) are ignored with a warning; with time
and value named, a third column is the location unless every cell is a
number and no timestamp repeats. Rows may come in any order; a few rows
far from all the others (an epoch-zero placeholder) are left out with a
warning. The bucket length is the median gap between timestamps, rounded
to the nearest length dividing a day when within 5% (jitter), or one
calendar month (730h) for rows on the first or last day of each month;
--step/--hourly aggregate further.
  * repeated rows (same timestamp, location and value) are dropped, with a
    warning (--keep-repeats: the rows are events, keep them); a bucket
    holding more samples than native steps (a DST artifact) sums as their
    mean times that number; with --agg mean it is their mean;
  * missing buckets (gaps of any length) are filled by interpolation but
    never scored, no forecast is made from inside a gap, and no interval
    is learnt from one: the hybrid takes a gap up to a day long as an
    estimate for its state and skips a longer one (as the controller does
    a bucket with no report), the seasonal naive baselines count only
    error pairs observed at both ends;
  * a location is backtested over its own span (first to last row); one
    too short for the protocol is skipped with a warning; inside it, a
    location with no row where others have one counted zero requests
    (with --agg mean, gauges: a missing sample, a gap);
  * MASE is undefined at an origin whose training window has no
    seasonal-naive error (a constant window): such origins are left out of
    MASE and pinball (counted as zero_scale), and a series where every
    origin is like that prints "-" (null in --json).
A series shorter than two MASE seasons of training + --min-origins +
--horizon buckets is an error naming what it needs.

`

func f3(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

func f1(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func seriesName(path string) string {
	b := path
	if i := strings.LastIndexByte(b, '/'); i >= 0 {
		b = b[i+1:]
	}
	return strings.TrimSuffix(b, ".csv")
}

func runLocations(ctx context.Context, args []string, out io.Writer) error {
	fs := cli.NewFlagSet("controller forecast", "locations")
	var sf seriesFlags
	sf.register(fs)
	testFrom := fs.String("test-from", "", "start of the test period (default: the first day of the data's last calendar month; for data inside one month, its last quarter)")
	horizons := fs.String("horizons", "", "comma-separated horizons in buckets, at most a week of buckets (default: 1 and one day of buckets, 1,24 for hourly data)")
	jsonOut := fs.Bool("json", false, "print one JSON object per (method, horizon)")
	noCov := fs.Bool("no-covariates", false, "ignore covariate columns")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	series, events, extraCov, err := sf.load()
	if err != nil {
		return err
	}
	d, err := forecast.LocationDataFromSeries(series)
	if err != nil {
		return err
	}
	// Counts below zero are not requests; LocationDataFromSeries would
	// clamp them to zero and the score would hide it.
	for _, s := range series {
		for i, v := range s.Values {
			if v < 0 && s.Observed[i] {
				return fmt.Errorf("%w: location %q has a negative count %g at %s: the locations tool reads request counts",
					forecast.ErrBadInput, s.Name, v, s.Time(i).Format(time.DateTime))
			}
		}
	}
	// The location model looks at most a week ahead; hourly data's
	// default "1,24" is 24 days on daily buckets.
	day, week := max(int(24*time.Hour/d.Step), 1), max(int(7*24*time.Hour/d.Step), 1)
	hlist := *horizons
	if hlist == "" {
		hlist = fmt.Sprintf("1,%d", day)
		if day == 1 {
			hlist = "1"
		}
	}
	var hs []int
	for _, f := range strings.Split(hlist, ",") {
		var h int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &h); err != nil || h < 1 {
			return fmt.Errorf("%w: --horizons %q", cli.ErrUsage, hlist)
		}
		if h > week {
			return fmt.Errorf("%w: --horizons: %d buckets of %v is beyond the location model's reach of a week (%d buckets)", cli.ErrUsage, h, d.Step, week)
		}
		hs = append(hs, h)
	}
	feeds, err := series[0].Feeds(events)
	if err != nil {
		return err
	}
	if extraCov != nil {
		feeds.Covariates = extraCov
	}
	var covs []string
	if !*noCov {
		covs = feeds.Covariates.Names()
	}
	end := d.Start.Add(time.Duration(len(d.Counts)) * d.Step)
	from := time.Date(end.Add(-d.Step).Year(), end.Add(-d.Step).Month(), 1, 0, 0, 0, 0, time.UTC)
	if !from.After(d.Start) {
		// The data lies inside one calendar month (a few days of logs):
		// train on its first three quarters, test on the last.
		from = d.Start.Add(end.Sub(d.Start) * 3 / 4).Truncate(d.Step)
		if from.Sub(d.Start) >= 48*time.Hour {
			from = from.Truncate(24 * time.Hour)
		}
	}
	if *testFrom != "" {
		if from, err = forecast.ParseTime(*testFrom); err != nil {
			return fmt.Errorf("%w: --test-from: %v", cli.ErrUsage, err)
		}
	}
	scores, err := forecast.LocationBenchmark(d, feeds, covs, from, hs)
	if err != nil {
		return err
	}
	scored := false
	for _, s := range scores {
		scored = scored || s.Requests > 0
	}
	if !scored {
		// A cross-entropy of 0 over no requests would read as perfect.
		return fmt.Errorf("%w: no requests in the test period %s .. %s: nothing to score (--test-from)", forecast.ErrBadInput,
			from.Format(time.DateTime), end.Format(time.DateTime))
	}
	if *jsonOut {
		enc := json.NewEncoder(out)
		for _, s := range scores {
			if err := enc.Encode(map[string]any{"series": seriesName(sf.csv), "method": s.Method, "horizon": s.Horizon,
				"cross_entropy_per_request": num(s.CE), "kl_per_request": num(s.KL), "test_buckets": s.Buckets,
				"test_requests": s.Requests, "params": s.Params}); err != nil {
				return err
			}
		}
		return nil
	}
	fmt.Fprintf(out, "locations %v, test %s .. %s, train before\n", d.Regions, from.Format(time.DateOnly), end.Format(time.DateOnly))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "method\thorizon\tce_per_request\tkl_per_request\ttest_buckets\tparams (chosen on training)")
	for _, s := range scores {
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%.4f\t%d\t%s\n", s.Method, s.Horizon, s.CE, s.KL, s.Buckets, s.Params)
	}
	return tw.Flush()
}

func runExplain(ctx context.Context, args []string, out io.Writer) error {
	fs := cli.NewFlagSet("controller forecast", "explain")
	var sf seriesFlags
	sf.register(fs)
	resource := fs.String("resource", "", "resource name to show (default: the CSV's base name)")
	at := fs.String("at", "", "explain as of the end of this bucket (default: the last bucket of the CSV)")
	horizon := fs.Int("horizon", 24, "decision horizon in buckets")
	size := fs.Float64("size-gib", 10, "resource size in GiB")
	latency := fs.String("latency", "", "route costs CSV: region,location,latency_ms (required)")
	mirrors := fs.String("mirrors", "", "comma-separated locations that hold a mirror today, double-quoted where a name holds a comma (required)")
	cands := fs.String("candidates", "", "comma-separated candidate locations, double-quoted where a name holds a comma (default: every other location of --latency)")
	copyGB := fs.Float64("copy-per-gb", 0.02, "cost of copying one GB to a location")
	storeGBh := fs.Float64("store-per-gb-hour", 0.0001, "cost of storing one GB for an hour")
	value := fs.Float64("value-per-request-second", 0.0005, "value of one second of latency saved on one request")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *latency == "" || *mirrors == "" {
		return fmt.Errorf("%w: --latency and --mirrors are required", cli.ErrUsage)
	}
	series, events, extraCov, err := sf.load()
	if err != nil {
		return err
	}
	lat, err := readLatency(*latency)
	if err != nil {
		return err
	}
	name := *resource
	if name == "" {
		name = seriesName(sf.csv)
	}
	step := series[0].Step
	var covs []string
	if extraCov == nil {
		for c := range series[0].Covariates {
			covs = append(covs, c)
		}
		sort.Strings(covs)
	}
	eng, err := forecast.NewEngine(forecast.EngineConfig{Step: step, Horizon: *horizon, Covariates: covs, Workers: 2})
	if err != nil {
		return err
	}
	feeds, err := series[0].Feeds(events)
	if err != nil {
		return err
	}
	if err := eng.SetEvents(feeds.Calendar.Events()); err != nil {
		return err
	}
	for c, vals := range series[0].Covariates {
		for i, v := range vals {
			if err := eng.SetCovariate(c, "", series[0].Time(i), v); err != nil {
				return err
			}
		}
	}
	end := series[0].Len()
	if *at != "" {
		t, err := forecast.ParseTime(*at)
		if err != nil {
			return fmt.Errorf("%w: --at: %v", cli.ErrUsage, err)
		}
		end = min(end, int(t.Sub(series[0].Start)/step)+1)
		if end < 1 {
			return fmt.Errorf("%w: --at %s is before the data", cli.ErrUsage, *at)
		}
	}
	// Replay the table as the agents' summaries, one bucket at a time.
	for i := 0; i < end; i++ {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		t := series[0].Time(i)
		batch := make([]forecast.AccessSummary, 0, len(series))
		for _, s := range series {
			region := s.Name
			if region == "" {
				region = "all"
			}
			batch = append(batch, forecast.AccessSummary{Resource: name, Region: region, Start: t, NewFlows: uint64(math.Max(s.Values[i], 0))})
		}
		if _, err := eng.Ingest(batch); err != nil {
			return err
		}
		if err := eng.Advance(t.Add(step)); err != nil {
			return err
		}
	}
	req := forecast.ScoreRequest{Bytes: int64(*size * (1 << 30)), Horizon: *horizon, Current: map[string]float64{},
		Prices: forecast.Prices{CopyPerByte: *copyGB / 1e9, StorePerByteHour: *storeGBh / 1e9, ValuePerRequestSecond: *value}}
	mir, err := nameList(*mirrors)
	if err != nil {
		return fmt.Errorf("%w: --mirrors: %v", cli.ErrUsage, err)
	}
	for region, row := range lat {
		best := math.Inf(1)
		for _, m := range mir {
			if v, ok := row[m]; ok {
				best = math.Min(best, v)
			}
		}
		if !math.IsInf(best, 1) {
			req.Current[region] = best
		}
	}
	cl, err := nameList(*cands)
	if err != nil {
		return fmt.Errorf("%w: --candidates: %v", cli.ErrUsage, err)
	}
	if len(cl) == 0 {
		seen := map[string]bool{}
		for _, m := range mir {
			seen[m] = true
		}
		for _, row := range lat {
			for loc := range row {
				if !seen[loc] {
					seen[loc] = true
					cl = append(cl, loc)
				}
			}
		}
		sort.Strings(cl)
	}
	for _, c := range cl {
		cand := forecast.Candidate{Location: c, Latency: map[string]float64{}}
		for region, row := range lat {
			if v, ok := row[c]; ok {
				cand.Latency[region] = v
			}
		}
		req.Candidates = append(req.Candidates, cand)
	}
	text, err := eng.Explain(name, req)
	if err != nil {
		return err
	}
	_, err = io.WriteString(out, text)
	return err
}

// nameList reads a comma-separated list of names as one CSV record, so a
// location holding a comma is given in double quotes ("New York, NY");
// a stray quote inside a name is kept.
func nameList(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	r := csv.NewReader(strings.NewReader(s))
	r.TrimLeadingSpace, r.LazyQuotes = true, true
	rec, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", s, err)
	}
	var out []string
	for _, n := range rec {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out, nil
}

// joinNames is nameList's inverse: names holding a comma or a quote are
// double-quoted.
func joinNames(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		if strings.ContainsAny(n, ",\"") {
			n = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
		}
		out[i] = n
	}
	return strings.Join(out, ",")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// readLatency reads region,location,latency_ms rows into seconds. A
// first line whose third field is not a number is a header (any names);
// '#' starts a comment line; the separator may be a comma, semicolon or
// tab, and a UTF-8 byte-order mark is skipped.
func readLatency(path string) (map[string]map[string]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open latency: %w", err)
	}
	defer f.Close()
	return parseLatency(f, path)
}

// parseLatency is readLatency's parser; path names the input in errors.
func parseLatency(in io.Reader, path string) (map[string]map[string]float64, error) {
	br := bufio.NewReader(in)
	if b, err := br.Peek(3); err == nil && string(b) == "\ufeff" {
		_, _ = br.Discard(3)
	}
	head, _ := br.Peek(4096)
	first := head
	for len(first) > 0 && first[0] == '#' { // the separator comes from the first record
		i := bytes.IndexByte(first, '\n')
		if i < 0 {
			break
		}
		first = first[i+1:]
	}
	if i := bytes.IndexAny(first, "\r\n"); i >= 0 {
		first = first[:i]
	}
	r := csv.NewReader(br)
	r.Comma = textin.Separator(first)
	r.FieldsPerRecord = 3
	r.Comment = '#'
	r.TrimLeadingSpace = true
	out := map[string]map[string]float64{}
	for rec := 0; ; rec++ {
		row, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", forecast.ErrBadInput, path, err)
		}
		line, _ := r.FieldPos(0)
		cell := strings.TrimSpace(row[2])
		ms, err := strconv.ParseFloat(cell, 64)
		if err != nil && rec == 0 {
			continue // a header
		}
		if err != nil || !(ms >= 0) || math.IsInf(ms, 0) { // !(ms >= 0) also refuses NaN
			return nil, fmt.Errorf("%w: %s line %d: latency %q (want milliseconds ≥ 0)", forecast.ErrBadInput, path, line, row[2])
		}
		reg, loc := strings.TrimSpace(row[0]), strings.TrimSpace(row[1])
		if reg == "" || loc == "" {
			return nil, fmt.Errorf("%w: %s line %d: empty region or location", forecast.ErrBadInput, path, line)
		}
		if out[reg] == nil {
			out[reg] = map[string]float64{}
		}
		out[reg][loc] = ms / 1000
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s has no rows", forecast.ErrBadInput, path)
	}
	return out, nil
}
