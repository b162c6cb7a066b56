package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
		dataset     = fs.String("dataset", "wonderproxy", "\"wonderproxy\", \"ibm\", or the path of a matrix (WonderProxy grouped pings, IBM weekly, or src,dst,rtt_ms[,time])")
		sites       = fs.String("sites", "", "optional name,lat,lon file giving the matrix's sites geography")
		mirrorSites = fs.String("mirror-sites", "", "comma-separated mirror site names (default: k-medoids placement of -mirrors sites)")
		opts        = def
		seed        = fs.Uint64("seed", def.Seed, "random seed (truth noise, probes, sessions)")
	)
	fs.IntVar(&opts.Mirrors, "mirrors", 0, "mirror sites to place by k-medoids (0: min(10, max(2, sites/4)))")
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
	fs.IntVar(&opts.Shortlist, "shortlist", 0, "probe only this many mirrors per client, chosen by Vivaldi coordinates (0: all)")
	fs.IntVar(&rc.Slots, "slots", rc.Slots, "route table size")
	fs.Float64Var(&rc.MinGain, "min-gain", rc.MinGain, "hysteresis: relative gain a challenger needs")
	fs.DurationVar(&rc.MinGainAbs, "min-gain-abs", rc.MinGainAbs, "hysteresis: absolute gain a challenger needs")
	fs.IntVar(&rc.Confirm, "confirm", rc.Confirm, "hysteresis: consecutive evaluations the gain must hold")
	fs.DurationVar(&rc.Dwell, "dwell", rc.Dwell, "minimum time between switches of a route")
	fs.Float64Var(&rc.MaxMove, "max-move", rc.MaxMove, "share of a route's slots that may move per evaluation")
	fs.Float64Var(&rc.TieBand, "tie-band", rc.TieBand, "near ties within this share of the best cost share weight")
	fs.DurationVar(&rc.SlowStart, "slow-start", rc.SlowStart, "ramp time of a new or recovered mirror")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", cli.ErrUsage, fs.Args())
	}
	opts.Seed = *seed
	opts.Route = rc
	if *mirrorSites != "" {
		for _, s := range strings.Split(*mirrorSites, ",") {
			opts.MirrorSites = append(opts.MirrorSites, strings.TrimSpace(s))
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
		m.SetGeo(geo)
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
