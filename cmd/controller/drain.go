package main

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
)

func init() {
	commands.Register(cli.Command{
		Name:    "drain",
		Summary: "drain mirrors before their host goes down: drain <mirror NAME | node NODE> (new flows go elsewhere, established ones stay)",
		Run:     func(ctx context.Context, args []string) error { return ctlDrain(ctx, "drain", args) },
	})
	commands.Register(cli.Command{
		Name:    "undrain",
		Summary: "return drained mirrors to service: undrain <mirror NAME | node NODE>",
		Run:     func(ctx context.Context, args []string) error { return ctlDrain(ctx, "undrain", args) },
	})
}

// ctlDrain sets the mirrors named (one mirror, or every mirror whose node
// is the host named) draining, or back to active for undrain. It reads the
// mirrors and applies only those whose state changes, so what the
// operator wrote in other fields is kept as stored; mirrors that are down
// are left down either way (draining one would take new flows off a
// mirror nothing sends to, and undraining one would send it traffic).
// The apply is conditional on the revision read (a compare-and-swap):
// the whole mirror is written back, so an edit that lands in between
// would otherwise be overwritten with what was read.
func ctlDrain(ctx context.Context, verb string, args []string) error {
	fs := cli.NewFlagSet("controller", verb)
	dry := fs.Bool("dry-run", false, "validate on the controller without writing")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || (pos[0] != "mirror" && pos[0] != "node") || pos[1] == "" {
		return fmt.Errorf("%w: %s <mirror NAME | node NODE>", cli.ErrUsage, verb)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	var changed []*pb.Mirror
	var lines []string
	for attempt := 1; ; attempt++ {
		changed, lines, err = drainOnce(rctx, c, verb, pos[0], pos[1], *dry)
		if status.Code(err) != codes.Aborted {
			break
		}
		if attempt == drainAttempts {
			return fmt.Errorf("%s: the objects changed while it ran, %d times in a row; nothing written, run it again (%s)",
				verb, attempt, status.Convert(err).Message())
		}
	}
	if err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Fprintln(ctlOut, l)
	}
	switch {
	case *dry:
		fmt.Fprintln(ctlOut, "dry run: nothing written")
	case verb == "drain" && len(changed) > 0:
		names := make([]string, len(changed))
		for i, m := range changed {
			names[i] = m.GetName()
		}
		fmt.Fprintf(ctlOut, "new flows go to other mirrors; established flows stay until they end. Before taking the host down, wait for\n"+
			"  sum(rate(edge_forwarded_packets_total{mirror=~%q}[1m]))\nto reach 0 (edge agents' metrics).\n", strings.Join(names, "|"))
	}
	return nil
}

// drainAttempts bounds how often drain reads again after a concurrent
// edit of the objects.
const drainAttempts = 5

// drainOnce reads the mirrors, picks those named and applies their new
// state if no object changed since the read. An error with code Aborted
// means one did (nothing was written).
func drainOnce(ctx context.Context, c pb.AdminClient, verb, sel, name string, dry bool) (changed []*pb.Mirror, lines []string, err error) {
	resp, err := c.Get(ctx, &pb.GetRequest{Kind: "mirror"})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: read mirrors: %s", verb, status.Convert(err).Message())
	}
	var picked []*pb.Mirror
	for _, m := range resp.GetObjects().GetMirrors() {
		if (sel == "mirror" && m.GetName() == name) || (sel == "node" && m.GetNode() == name) {
			picked = append(picked, m)
		}
	}
	if len(picked) == 0 {
		if sel == "node" {
			return nil, nil, fmt.Errorf("%s: no mirror names node %q as its host (the mirrors' node field)", verb, name)
		}
		return nil, nil, fmt.Errorf("%s: no mirror %q", verb, name)
	}
	from, to := pb.MirrorState_MIRROR_STATE_ACTIVE, pb.MirrorState_MIRROR_STATE_DRAINING
	if verb == "undrain" {
		from, to = to, from
	}
	for _, m := range picked {
		st := m.GetState()
		if st == pb.MirrorState_MIRROR_STATE_UNSPECIFIED {
			st = pb.MirrorState_MIRROR_STATE_ACTIVE
		}
		switch st {
		case to:
			lines = append(lines, fmt.Sprintf("mirror/%s already %s", m.GetName(), controller.MirrorStateName(to)))
		case from:
			m.State = to
			changed = append(changed, m)
			lines = append(lines, fmt.Sprintf("mirror/%s %s (was %s)", m.GetName(), controller.MirrorStateName(to), controller.MirrorStateName(from)))
		default:
			lines = append(lines, fmt.Sprintf("mirror/%s is %s: left as it is", m.GetName(), controller.MirrorStateName(st)))
		}
	}
	if len(changed) > 0 && resp.GetRevision() == 0 {
		// A replica older than this command neither reports the revision
		// nor honours if_revision: the write is then unconditional.
		lines = append(lines, "warning: the controller reported no revision (a replica older than this command), so an edit made while this ran may be undone; check with controller get mirror")
	}
	if len(changed) > 0 {
		_, err := c.Apply(ctx, &pb.ApplyRequest{Objects: &pb.Objects{Mirrors: changed}, DryRun: dry, IfRevision: resp.GetRevision()})
		if status.Code(err) == codes.Aborted {
			return nil, nil, err
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s", verb, status.Convert(err).Message())
		}
	}
	return changed, lines, nil
}
