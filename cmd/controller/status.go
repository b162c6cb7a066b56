package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
)

func init() {
	commands.Register(cli.Command{
		Name:    "status",
		Summary: "show the leader, the current version and every agent's ACK state",
		Run:     ctlStatus,
	})
}

func ctlStatus(ctx context.Context, args []string) error {
	return ctlView(ctx, args, "status", "status (no arguments)", 0,
		func(ctx context.Context, c pb.AdminClient, _ []string) (*pb.StatusResponse, error) {
			return c.Status(ctx, &pb.StatusRequest{})
		}, printStatus)
}

func printStatus(st *pb.StatusResponse, _ []string) error {
	at := "-"
	if st.GetVersionUnixNano() > 0 {
		at = time.Unix(0, st.GetVersionUnixNano()).UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(ctlOut, "leader:  %s\nversion: %d (computed %s)\n", ctlDash(st.GetLeader()), st.GetVersion(), at)
	if r := st.GetRoutes(); r != nil {
		fmt.Fprintf(ctlOut, "routes:  %d (%d changed, %d unrouted, %d in panic, %.2f%% of slots moved, computed in %v)\n",
			r.GetRoutes(), r.GetChanged(), r.GetUnrouted(), r.GetPanic(), 100*r.GetMovedShare(), time.Duration(r.GetDurationNs()).Round(time.Microsecond))
		for _, d := range r.GetMirrorsDown() {
			fmt.Fprintf(ctlOut, "down:    mirror %s (%s)\n", d.GetMirror(), printable(d.GetWhy()))
		}
		for _, m := range r.GetDraining() {
			fmt.Fprintf(ctlOut, "draining: mirror %s (set by the operator: established flows stay, no new ones)\n", m)
		}
		for _, p := range r.GetRefused() {
			fmt.Fprintf(ctlOut, "refused: mirror %s for region %s (its host's decap_sources leaves out edge %s)\n",
				p.GetMirror(), p.GetRegion(), strings.Join(p.GetEdges(), ", "))
		}
		for _, u := range r.GetUnserved() {
			fmt.Fprintf(ctlOut, "unserved: %s on mirror %s (its host's service check fails)\n", u.GetResource(), u.GetMirror())
		}
	}
	tw := tabwriter.NewWriter(ctlOut, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNODE\tSITE\tROLE\tCONNECTED\tCONTROLLER\tSENT\tACKED\tNACKED\tOUTER_SOURCES\tERROR")
	for _, a := range st.GetAgents() {
		role := strings.ToLower(strings.TrimPrefix(a.GetRole().String(), "NODE_ROLE_"))
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%d\t%d\t%d\t%s\t%s\n", ctlDash(a.GetNode()), ctlDash(a.GetSite()), role, a.GetConnected(),
			ctlDash(a.GetController()), a.GetSentVersion(), a.GetAckedVersion(), a.GetNackedVersion(),
			ctlDash(strings.Join(a.GetOuterSources(), ",")), ctlDash(a.GetNackError()))
	}
	return tw.Flush()
}

// ctlDash prints an agent's word: "-" for nothing, and quoted with its
// control characters escaped when it has any (printable), so an agent's
// error text cannot move the operator's cursor, recolour the terminal or
// break the table.
func ctlDash(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

// printable is s, or s quoted with its control characters escaped.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
