package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
)

func init() {
	commands.Register(cli.Command{
		Name:    "placements",
		Summary: "the mirroring manager's copies, hysteresis counters and last decisions: placements [resource]",
		Run:     ctlPlacements,
	})
}

func ctlPlacements(ctx context.Context, args []string) error {
	return ctlView(ctx, args, "placements", "placements [resource]", 1,
		func(ctx context.Context, c pb.AdminClient, pos []string) (*pb.PlacementsResponse, error) {
			return c.Placements(ctx, &pb.PlacementsRequest{Resource: strings.Join(pos, "")})
		},
		func(resp *pb.PlacementsResponse, _ []string) error {
			if len(resp.GetRecords()) == 0 {
				_, err := fmt.Fprintln(ctlOut, "no resource in predictive mode has been evaluated yet")
				return err
			}
			for i, rec := range resp.GetRecords() {
				if i > 0 {
					fmt.Fprintln(ctlOut)
				}
				printPlacements(rec)
			}
			return nil
		})
}

func printPlacements(rec *pb.PlacementRecord) {
	when := func(ns int64) string {
		if ns == 0 {
			return "-"
		}
		return time.Unix(0, ns).UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(ctlOut, "resource %s: %d placed, last evaluated %s\n", rec.GetResource(), len(rec.GetPlaced()), when(rec.GetEvaluatedUnixNano()))
	if len(rec.GetPlaced()) > 0 {
		tw := tabwriter.NewWriter(ctlOut, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SITE\tMIRROR\tKIND\tPLACED\tTO SEND\tIN SYNC BY\tCOPY\tSCORE THEN\tKEEP SCORE\tBELOW RETIRE")
		for _, p := range rec.GetPlaced() {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%.1f MiB\t%s\t%s\t%.3f\t%.3f\t%d\n", p.GetSite(), p.GetMirror(), controller.KindName(p.GetKind()),
				when(p.GetPlacedUnixNano()), float64(p.GetCopyBytes())/(1<<20), when(p.GetDeadlineUnixNano()),
				controller.CopyStateText(p), p.GetPlacedScore(), p.GetScore(), rec.GetBelow()[p.GetMirror()])
		}
		tw.Flush()
	}
	if len(rec.GetAbove()) > 0 {
		sites := make([]string, 0, len(rec.GetAbove()))
		for s, n := range rec.GetAbove() {
			sites = append(sites, fmt.Sprintf("%s (%d)", s, n))
		}
		slices.Sort(sites)
		fmt.Fprintf(ctlOut, "  at or above mirror_score (evaluations in a row): %s\n", strings.Join(sites, ", "))
	}
	if len(rec.GetHeld()) > 0 {
		fmt.Fprintf(ctlOut, "  held a copy before (a placement there is a delta): %s\n", strings.Join(rec.GetHeld(), ", "))
	}
	if len(rec.GetEvents()) > 0 {
		fmt.Fprintln(ctlOut, "  decisions, newest first:")
		for _, ev := range rec.GetEvents() {
			fmt.Fprintf(ctlOut, "    %s  %-6s %s on %s (%s, score %.3f): %s\n", when(ev.GetUnixNano()), ev.GetAction(), ev.GetSite(),
				ev.GetMirror(), controller.KindName(ev.GetKind()), ev.GetScore(), ev.GetReason())
		}
	}
}
