package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

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
	fs := cli.NewFlagSet("controller", "status")
	format := fs.String("o", "text", "output format: text or json")
	af := ctlAddAdminFlags(fs)
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := c.Status(rctx, &pb.StatusRequest{})
	if err != nil {
		return fmt.Errorf("status: %s", status.Convert(err).Message())
	}
	if *format == "json" {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(st)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(ctlOut, "%s\n", b)
		return err
	}
	if *format != "text" {
		return fmt.Errorf("%w: -o %q is not text or json", cli.ErrUsage, *format)
	}
	at := "-"
	if st.GetVersionUnixNano() > 0 {
		at = time.Unix(0, st.GetVersionUnixNano()).UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(ctlOut, "leader:  %s\nversion: %d (computed %s)\n", ctlDash(st.GetLeader()), st.GetVersion(), at)
	if r := st.GetRoutes(); r != nil {
		fmt.Fprintf(ctlOut, "routes:  %d (%d changed, %d unrouted, %d in panic, %.2f%% of slots moved, computed in %v)\n",
			r.GetRoutes(), r.GetChanged(), r.GetUnrouted(), r.GetPanic(), 100*r.GetMovedShare(), time.Duration(r.GetDurationNs()).Round(time.Microsecond))
	}
	tw := tabwriter.NewWriter(ctlOut, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNODE\tSITE\tROLE\tCONNECTED\tCONTROLLER\tSENT\tACKED\tNACKED\tERROR")
	for _, a := range st.GetAgents() {
		role := strings.ToLower(strings.TrimPrefix(a.GetRole().String(), "NODE_ROLE_"))
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%d\t%d\t%d\t%s\n", a.GetNode(), ctlDash(a.GetSite()), role, a.GetConnected(),
			ctlDash(a.GetController()), a.GetSentVersion(), a.GetAckedVersion(), a.GetNackedVersion(), ctlDash(a.GetNackError()))
	}
	return tw.Flush()
}

func ctlDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
