package eval

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the replay's setup and a table of every policy.
func (r *Report) WriteTable(w io.Writer) error {
	o := r.Options
	fmt.Fprintf(w, "dataset %s: %d sites, %d client regions, %d snapshot(s), replay %v (scored %v after %v warm-up), %d sessions, seed %d\n",
		r.Dataset, r.Sites, r.Clients, r.Snapshots, r.Simulated, r.Scored, o.Warmup, r.Sessions, o.Seed)
	fmt.Fprintf(w, "mirrors (%d): %s\n", len(r.Mirrors), siteList(r.Mirrors))
	fmt.Fprintf(w, "origin: %s\n", r.Origin)
	if len(r.Dropped) > 0 {
		fmt.Fprintf(w, "left out (%d of %d sites): %s\n", len(r.Dropped), r.Sites, strings.Join(r.Dropped, ", "))
	}
	if r.NoGeo {
		fmt.Fprintln(w, "no site coordinates: geo-nearest falls back to the origin")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if o.Shortlist > 0 {
		fmt.Fprintf(w, "Vivaldi shortlist of %d: the instantaneous best mirror was probed in %.1f%% of evaluations\n", o.Shortlist, 100*r.ShortlistRecall)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tmean ms\tp50 ms\tp95 ms\tp99 ms\tmean/oracle\tp95/oracle\tflips/h\tdisrupted\t")
	for _, p := range r.Policies {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%.2f\t%.2f%%\t\n",
			p.Name, p.Mean, p.P50, p.P95, p.P99, fmtRatio(p.MeanVsOracle), fmtRatio(p.P95VsOracle), p.FlipsPerHour, 100*p.Disrupted)
	}
	return tw.Flush()
}

// siteList joins site names as -mirror-sites reads them back
// (ParseSiteList): a name holding a comma or a quote is double-quoted, so
// "City 2, X" is not read as two sites.
func siteList(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		if strings.ContainsAny(n, ",\"") {
			n = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
		}
		out[i] = n
	}
	return strings.Join(out, ", ")
}

// fmtRatio prints a ratio to the oracle, n/a where it is undefined.
func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", v)
}

// WriteLines prints one machine-readable line per policy. Every value is a
// finite number; a ratio to the oracle that is undefined (the oracle's
// figure is 0 and the policy's is not) is left out of the line.
func (r *Report) WriteLines(w io.Writer) error {
	for _, p := range r.Policies {
		var b strings.Builder
		fmt.Fprintf(&b, "route-eval policy=%s mean_ms=%.2f p95_ms=%.2f p99_ms=%.2f", p.Name, p.Mean, p.P95, p.P99)
		if !math.IsNaN(p.MeanVsOracle) {
			fmt.Fprintf(&b, " mean_vs_oracle=%.4f", p.MeanVsOracle)
		}
		if !math.IsNaN(p.P95VsOracle) {
			fmt.Fprintf(&b, " p95_vs_oracle=%.4f", p.P95VsOracle)
		}
		fmt.Fprintf(&b, " flips_per_hour=%.3f disrupted_share=%.4f\n", p.FlipsPerHour, p.Disrupted)
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	return nil
}
