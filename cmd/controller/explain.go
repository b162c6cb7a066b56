package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
)

// The admin side of forecasting: explain, forecast show, feed. Each asks
// whichever replica --server names; every replica answers from the
// forecast the leader published and its own view of the routes.

func init() {
	commands.Register(cli.Command{
		Name:    "explain",
		Summary: "Mirroring Score breakdown of a resource from the running controller: explain <resource>",
		Run:     ctlExplain,
	})
	commands.Register(cli.Command{
		Name:    "feed",
		Summary: "send an external feed to the prediction engine: feed events|covariates -f file.csv",
		Run:     ctlFeed,
	})
}

func ctlExplain(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "explain")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: explain <resource>", cli.ErrUsage)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.Explain(rctx, &pb.ExplainRequest{Resource: pos[0]})
	if err != nil {
		return fmt.Errorf("explain: %s", status.Convert(err).Message())
	}
	_, err = fmt.Fprint(ctlOut, resp.GetText())
	return err
}

func ctlFeed(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "feed")
	file := fs.String("f", "", "CSV file (events: start,end,name,kind[,region]; covariates: timestamp[,region],name...)")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *file == "" {
		return fmt.Errorf("%w: feed events|covariates -f file.csv", cli.ErrUsage)
	}
	var kind pb.FeedKind
	switch pos[0] {
	case "events":
		kind = pb.FeedKind_FEED_KIND_EVENTS
	case "covariates", "weather":
		kind = pb.FeedKind_FEED_KIND_COVARIATES
	default:
		return fmt.Errorf("%w: feed kind %q is not events or covariates", cli.ErrUsage, pos[0])
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("feed: %w", err)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.Feed(rctx, &pb.FeedRequest{Kind: kind, Csv: b, Name: filepath.Base(*file)})
	if err != nil {
		return fmt.Errorf("feed: %s", status.Convert(err).Message())
	}
	what := "events (the calendar is replaced)"
	if kind == pb.FeedKind_FEED_KIND_COVARIATES {
		what = "covariate values"
	}
	fmt.Fprintf(ctlOut, "%s: %d %s stored at revision %d; the leader applies it within a tick\n", filepath.Base(*file), resp.GetEntries(), what, resp.GetRevision())
	if len(resp.GetUnused()) > 0 {
		fmt.Fprintf(ctlOut, "note: no model uses %s (name them in --forecast-covariates)\n", strings.Join(resp.GetUnused(), ", "))
	}
	return nil
}

// ctlForecastShow is `controller forecast show [resource]`.
func ctlForecastShow(ctx context.Context, args []string) error {
	return ctlView(ctx, args, "forecast show", "forecast show [resource]", 1,
		func(ctx context.Context, c pb.AdminClient, pos []string) (*pb.ForecastResponse, error) {
			return c.Forecast(ctx, &pb.ForecastRequest{Resource: strings.Join(pos, "")})
		},
		func(resp *pb.ForecastResponse, pos []string) error {
			if len(pos) == 0 {
				for _, r := range resp.GetResources() {
					fmt.Fprintln(ctlOut, r)
				}
				return nil
			}
			return printForecast(resp)
		})
}

func printForecast(resp *pb.ForecastResponse) error {
	f := resp.GetForecast()
	step := time.Duration(f.GetStepSeconds()) * time.Second
	origin := time.Unix(f.GetOriginUnix(), 0).UTC()
	layout := "2006-01-02 15:04"
	if step%time.Minute != 0 {
		layout = "2006-01-02 15:04:05"
	}
	when := func(t time.Time) string { return t.Format(layout) }
	fmt.Fprintf(ctlOut, "resource %s: new flows per %v bucket, forecast from %s UTC (published by %s at %s)\n",
		f.GetResource(), step, when(origin.Add(step)), f.GetLeader(), time.Unix(0, f.GetWrittenUnixNano()).UTC().Format(time.RFC3339))
	tw := tabwriter.NewWriter(ctlOut, 2, 4, 2, ' ', 0)
	fmt.Fprint(tw, "\nBUCKET")
	for _, r := range f.GetRegions() {
		fmt.Fprintf(tw, "\t%s q50 [q10, q90]", r.GetRegion())
	}
	if len(f.GetShares()) > 0 {
		for _, r := range f.GetRegions() {
			fmt.Fprintf(tw, "\tshare %s", r.GetRegion())
		}
	}
	fmt.Fprintln(tw)
	H := int(resp.GetHorizon())
	for h := 0; h < H; h++ {
		fmt.Fprintf(tw, "+%d %s", h+1, when(origin.Add(time.Duration(h+1)*step)))
		for _, r := range f.GetRegions() {
			fmt.Fprintf(tw, "\t%.0f [%.0f, %.0f]", r.GetQ50()[h], r.GetQ10()[h], r.GetQ90()[h])
		}
		if h < len(f.GetShares()) {
			for _, s := range f.GetShares()[h].GetShares() {
				fmt.Fprintf(tw, "\t%.3f", s)
			}
		}
		fmt.Fprintln(tw)
	}
	// Recent buckets, observed against the forecast made one bucket before.
	recent := map[int64]map[string]*pb.BucketObservation{}
	var starts []int64
	for _, r := range f.GetRegions() {
		for _, o := range r.GetRecent() {
			if recent[o.GetStartUnix()] == nil {
				recent[o.GetStartUnix()] = map[string]*pb.BucketObservation{}
				starts = append(starts, o.GetStartUnix())
			}
			recent[o.GetStartUnix()][r.GetRegion()] = o
		}
	}
	if len(starts) > 0 {
		slices.Sort(starts)
		fmt.Fprint(tw, "\nRECENT (observed / predicted)")
		for _, r := range f.GetRegions() {
			fmt.Fprintf(tw, "\t%s", r.GetRegion())
		}
		fmt.Fprintln(tw)
		for _, s := range starts {
			fmt.Fprint(tw, when(time.Unix(s, 0).UTC()))
			for _, r := range f.GetRegions() {
				o := recent[s][r.GetRegion()]
				switch {
				case o == nil:
					fmt.Fprint(tw, "\t-")
				case o.GetHasPredicted():
					fmt.Fprintf(tw, "\t%.0f / %.0f", o.GetObserved(), o.GetPredicted())
				default:
					fmt.Fprintf(tw, "\t%.0f / -", o.GetObserved())
				}
			}
			fmt.Fprintln(tw)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(ctlOut, "\nMirroring Score over %d buckets (size %d bytes):\n", H, resp.GetSizeBytes())
	if resp.GetScoreNote() != "" {
		fmt.Fprintf(ctlOut, "  %s\n", resp.GetScoreNote())
	}
	tw = tabwriter.NewWriter(ctlOut, 2, 4, 2, ' ', 0)
	if len(resp.GetScores()) > 0 {
		fmt.Fprintln(tw, "  SITE\tMIRROR\tSCORE\tCOST\tBENEFIT MEAN\tBENEFIT Q10\tQ90")
	}
	for _, s := range resp.GetScores() {
		fmt.Fprintf(tw, "  %s\t%s\t%.3f\t%.4g\t%.4g\t%.4g\t%.4g\n", s.GetSite(), s.GetMirror(), s.GetScore(), s.GetCost(),
			s.GetBenefitMean(), s.GetBenefitQ10(), s.GetBenefitQ90())
	}
	return tw.Flush()
}
