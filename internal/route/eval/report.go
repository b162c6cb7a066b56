package eval

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the replay's setup and a table of every policy.
func (r *Report) WriteTable(w io.Writer) error {
	o := r.Options
	fmt.Fprintf(w, "dataset %s: %d sites, %d client regions, %d snapshot(s), replay %v (scored %v after %v warm-up), %d sessions, seed %d\n",
		r.Dataset, r.Sites, r.Clients, r.Snapshots, r.Simulated, r.Scored, o.Warmup, r.Sessions, o.Seed)
	fmt.Fprintf(w, "mirrors (%d): %s\n", len(r.Mirrors), strings.Join(r.Mirrors, ", "))
	fmt.Fprintf(w, "origin: %s\n", r.Origin)
	if len(r.Dropped) > 0 {
		fmt.Fprintf(w, "left out: %s\n", strings.Join(r.Dropped, ", "))
	}
	if r.NoGeo {
		fmt.Fprintln(w, "no site coordinates: geo-nearest falls back to the origin")
	}
	if o.Shortlist > 0 {
		fmt.Fprintf(w, "Vivaldi shortlist of %d: the instantaneous best mirror was probed in %.1f%% of evaluations\n", o.Shortlist, 100*r.ShortlistRecall)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tmean ms\tp50 ms\tp95 ms\tp99 ms\tmean/oracle\tp95/oracle\tflips/h\tdisrupted\t")
	for _, p := range r.Policies {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.3f\t%.3f\t%.2f\t%.2f%%\t\n",
			p.Name, p.Mean, p.P50, p.P95, p.P99, p.MeanVsOracle, p.P95VsOracle, p.FlipsPerHour, 100*p.Disrupted)
	}
	return tw.Flush()
}

// WriteLines prints one machine-readable line per policy.
func (r *Report) WriteLines(w io.Writer) error {
	for _, p := range r.Policies {
		_, err := fmt.Fprintf(w, "route-eval policy=%s mean_ms=%.2f p95_ms=%.2f p99_ms=%.2f mean_vs_oracle=%.4f p95_vs_oracle=%.4f flips_per_hour=%.3f disrupted_share=%.4f\n",
			p.Name, p.Mean, p.P95, p.P99, p.MeanVsOracle, p.P95VsOracle, p.FlipsPerHour, p.Disrupted)
		if err != nil {
			return err
		}
	}
	return nil
}
