package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/route"
	"github.com/premirror/premirror/internal/route/eval"
)

func init() {
	commands.Register(cli.Command{
		Name:    "route-eval",
		Summary: "replay a latency matrix against the routing policy and its baselines",
		Run: func(ctx context.Context, args []string) error {
			return runRouteEval(ctx, args, os.Stdout)
		},
	})
}

// routeEvalHelp is printed before the flags by -h.
const routeEvalHelp = `usage: controller route-eval [flags]

Replays a latency matrix through probes, estimators and the routing policy
and scores it against origin-only, geography-nearest, round robin, greedy
(no damping) and the per-instant oracle (the best mirror at each instant;
the origin is not a candidate, so origin-only can beat it when the origin
is nearer than every mirror).

Input (-dataset): WonderProxy grouped pings (source,destination,min,avg,
max,mdev; a servers-*.csv beside it gives geography), the IBM weekly file
(snapshot_date,…,src_region,dst_region,avg_rtt_ms), a generic
src,dst,rtt_ms[,time] file (header optional; aliases such as source/from/
client, destination/to/target/server, avg_rtt_ms/latency/ping_ms, date are
accepted), a square matrix as clouds publish them (a corner cell and
destination names, then a source name and one RTT per destination; "",
"-", "n/a" or "NaN" = unmeasured), or a directory of per-source ping
summaries (one <source>.dat file per site, lines min/avg/max/mdev:
destination, as in fantoch's latency_gcp and latency_aws sets). Fields may
be separated by commas, semicolons or tabs; a UTF-8 BOM and CRLF or CR
line ends are fine; names may be quoted and hold commas, spaces or any
UTF-8.
RTTs must be finite and in [0, 1e6] ms: anything else is an error naming
the line.

How the data is read:
  * Asymmetry: a client uses its own row (client → mirror); the reverse
    RTT is used only where that direction is missing.
  * Missing pairs: a pair measured in neither direction is unknown, not
    far: that mirror is unavailable to that client under every policy, the
    oracle included. A site with no RTT to the origin or to any mirror is
    left out. An unmeasured self-pair is -self-rtt.
  * Time: snapshots missing a pair hold its nearest snapshot's value.
    Rows may be in any order; times naming the same instant are one
    snapshot. Numeric times are seconds and replay as such (-steps: each
    snapshot replays -segment, as dates do); a replay longer than
    -max-replay is refused. Dates are ISO (2024-01-31, 2024-01-31 12:00,
    RFC 3339) or 2024/01/31; day- or month-first dates are refused.
  * Duplicates: repeated rows of the generic format (same pair and time)
    are averaged; WonderProxy and IBM files have one row per pair (and
    date), so a repeat there is an error.
  * Every such fill-in, merge or drop is printed as a "note:" line.

Output: the table, then one "route-eval policy=… key=value" line per
policy. A ratio to the oracle is n/a in the table and left out of the line
when the oracle's figure is 0 and the policy's is not.

Flags:
`

// defaultLatencyDir is where the shared latency data lives, relative to the
// repository root.
const defaultLatencyDir = "../shared/data/latency"

// datasets maps the short names of the shared files to their paths.
var datasets = map[string]string{
	"wonderproxy": "pings-2020-07-19-2020-07-20-grouped.csv",
	"ibm":         "ibm-vpc-inter-region-weekly.csv",
}

func runRouteEval(ctx context.Context, args []string, out io.Writer) error {
	fs := cli.NewFlagSet("controller", "route-eval")
	fs.SetOutput(out)
	def := eval.DefaultOptions()
	rc := route.DefaultConfig()
	var (
		dataDir     = fs.String("data", defaultLatencyDir, "latency data directory; a relative path is tried from the working directory, then the repository root and its parents")
		dataset     = fs.String("dataset", "wonderproxy", "\"wonderproxy\", \"ibm\", or the path of a matrix (WonderProxy grouped pings, IBM weekly, src,dst,rtt_ms[,time], a square matrix, or a directory of <source>.dat ping summaries)")
		sites       = fs.String("sites", "", "optional name,lat,lon file giving the matrix's sites geography")
		mirrorSites = fs.String("mirror-sites", "", "comma-separated mirror site names, double-quoted where a name holds a comma (default: k-medoids placement of -mirrors sites)")
		opts        = def
		seed        = fs.Uint64("seed", def.Seed, "random seed (truth noise, probes, sessions)")
	)
	fs.IntVar(&opts.Mirrors, "mirrors", 0, "mirror sites to place by k-medoids, at most the site count (0: min(10, max(2, sites/4)))")
	fs.StringVar(&opts.Origin, "origin", "", "origin site name (default: the 1-medoid)")
	fs.DurationVar(&opts.Duration, "duration", def.Duration, "replay length of a single-snapshot matrix")
	fs.DurationVar(&opts.Segment, "segment", def.Segment, "replay time per snapshot of a dated matrix (numeric time columns replay in their own seconds)")
	fs.DurationVar(&opts.Tick, "tick", def.Tick, "probe interval and controller evaluation period")
	fs.DurationVar(&opts.Warmup, "warmup", def.Warmup, "unscored start of the replay")
	fs.DurationVar(&opts.SessionEvery, "session-every", def.SessionEvery, "mean time between sessions per client region")
	fs.DurationVar(&opts.SessionMean, "session-mean", def.SessionMean, "mean session length")
	fs.DurationVar(&opts.RequestEvery, "request-every", def.RequestEvery, "time between a session's requests")
	fs.Float64Var(&opts.ProbeLoss, "probe-loss", def.ProbeLoss, "share of probes lost")
	fs.Float64Var(&opts.ProbeSpike, "probe-spike", def.ProbeSpike, "share of probe samples delayed 1.5-3x")
	fs.Float64Var(&opts.ProbeNoise, "probe-noise", def.ProbeNoise, "per-packet probe noise as a multiple of the pair's jitter")
	fs.Float64Var(&opts.JitterFrac, "jitter-frac", def.JitterFrac, "RTT standard deviation as a share of RTT where the data gives none")
	fs.DurationVar(&opts.Corr, "corr", def.Corr, "correlation time of a path's queueing state")
	fs.DurationVar(&opts.SelfRTT, "self-rtt", def.SelfRTT, "RTT to a mirror at the client's own site when the data has no self pair")
	fs.BoolVar(&opts.Steps, "steps", false, "replay every snapshot for -segment even when the time column is numeric (use when it is not in seconds)")
	fs.DurationVar(&opts.MaxReplay, "max-replay", def.MaxReplay, "refuse a replay longer than this (a time column in ms would otherwise replay for years)")
	fs.IntVar(&opts.Shortlist, "shortlist", 0, "probe only this many mirrors per client, chosen by Vivaldi coordinates (0: all)")
	fs.IntVar(&rc.Slots, "slots", rc.Slots, "route table size")
	fs.Float64Var(&rc.MinGain, "min-gain", rc.MinGain, "hysteresis: relative gain a challenger needs")
	fs.DurationVar(&rc.MinGainAbs, "min-gain-abs", rc.MinGainAbs, "hysteresis: absolute gain a challenger needs")
	fs.IntVar(&rc.Confirm, "confirm", rc.Confirm, "hysteresis: consecutive evaluations the gain must hold")
	fs.DurationVar(&rc.Dwell, "dwell", rc.Dwell, "minimum time between switches of a route")
	fs.Float64Var(&rc.MaxMove, "max-move", rc.MaxMove, "share of a route's slots that may move per evaluation")
	fs.Float64Var(&rc.TieBand, "tie-band", rc.TieBand, "near ties within this share of the best cost share weight")
	fs.DurationVar(&rc.SlowStart, "slow-start", rc.SlowStart, "ramp time of a new or recovered mirror")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), routeEvalHelp)
		fs.PrintDefaults()
	}
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", cli.ErrUsage, fs.Args())
	}
	opts.Seed = *seed
	opts.Route = rc
	opts.Exact = true // the flags hold the defaults: an explicit 0 means 0
	if *mirrorSites != "" {
		var err error
		if opts.MirrorSites, err = eval.ParseSiteList(*mirrorSites); err != nil {
			return fmt.Errorf("%w: -mirror-sites: %v", cli.ErrUsage, err)
		}
	}

	path := *dataset
	if name, ok := datasets[path]; ok {
		dir, err := resolveDataDir(*dataDir)
		if err != nil {
			return err
		}
		path = filepath.Join(dir, name)
	}
	m, err := eval.LoadFile(path)
	if err != nil {
		return fmt.Errorf("route-eval: %w", err)
	}
	if *sites != "" {
		f, err := os.Open(*sites)
		if err != nil {
			return fmt.Errorf("route-eval sites: %w", err)
		}
		geo, err := eval.ReadSites(f, filepath.Base(*sites))
		f.Close()
		if err != nil {
			return fmt.Errorf("route-eval: %w", err)
		}
		found := m.SetGeo(geo)
		m.Notes = append(m.Notes, fmt.Sprintf("%s gave coordinates to %d of the %d sites (geo-nearest needs at least half)", filepath.Base(*sites), found, len(m.Sites)))
	}
	eval.AddKnownGeo(m)
	start := time.Now()
	rep, err := eval.Run(ctx, m, opts)
	if err != nil {
		return fmt.Errorf("route-eval: %w", err)
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "replayed in %v\n", time.Since(start).Round(time.Millisecond))
	return rep.WriteLines(out)
}

// resolveDataDir finds dir as given, else relative to the repository root
// (the nearest parent holding go.mod), else relative to the root's parents:
// a worktree nested one level deeper than the main checkout still finds the
// shared data.
func resolveDataDir(dir string) (string, error) {
	if filepath.IsAbs(dir) {
		return dir, nil
	}
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return dir, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("route-eval data directory: %w", err)
	}
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			root = wd
			break
		}
		root = parent
	}
	for base := root; ; base = filepath.Dir(base) {
		cand := filepath.Join(base, dir)
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand, nil
		}
		if filepath.Dir(base) == base {
			break
		}
	}
	return "", fmt.Errorf("route-eval data directory %q: %w (set -data)", dir, errors.New("not found from the working directory or the repository root"))
}
