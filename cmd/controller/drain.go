package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
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
// Each apply is conditional on the revision read (a compare-and-swap):
// the whole mirror is written back, so an edit that lands in between
// would otherwise be overwritten with what was read. More mirrors than
// one etcd transaction holds are applied in batches, each a
// compare-and-swap on a read of its own (see drainRun).
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
	r := &drainRun{verb: verb, sel: pos[0], name: pos[1], dry: *dry, lines: map[string]string{}}
	err = r.run(rctx, c)
	for _, l := range r.output(err != nil) {
		fmt.Fprintln(ctlOut, l)
	}
	if err != nil {
		return err
	}
	switch {
	case *dry:
		fmt.Fprintln(ctlOut, "dry run: nothing written")
	case verb == "drain" && len(r.changed) > 0:
		fmt.Fprintf(ctlOut, "new flows go to other mirrors; established flows stay until they end. Before taking the host down, wait for\n"+
			"  sum(rate(edge_forwarded_packets_total{mirror=~%q}[1m]))\nto reach 0 (edge agents' metrics).\n", strings.Join(r.changed, "|"))
	}
	return nil
}

// drainAttempts bounds how often drain reads again after a concurrent
// edit of the objects, in a row.
const drainAttempts = 5

// drainRun is one drain or undrain. Each round reads the mirrors, picks
// those named whose state changes and that this run has not written yet,
// and applies them (at most perTxn of them) if no object changed since
// that read. The controller refuses a conditional apply that takes more
// than one etcd transaction, saying how many objects one holds: the run
// then applies that many at a time. A batch is atomic and written only
// over what it read; the run as a whole is not atomic, and when a later
// batch fails, the mirrors of the earlier ones stay changed and the error
// names them. Running it again is safe: mirrors already in the new state
// are left as they are.
type drainRun struct {
	verb, sel, name string
	dry             bool
	// changed are the mirrors this run applied (validated in a dry run),
	// in order; lines are the per-mirror lines to print, by name.
	changed []string
	lines   map[string]string
	// written holds the names in changed: their lines are of the read
	// their batch applied, the others' of the last read.
	written map[string]bool
	// noRev: a read came without a revision (an older replica).
	noRev bool
}

func (r *drainRun) run(ctx context.Context, c pb.AdminClient) error {
	r.written = map[string]bool{}
	perTxn := 0 // mirrors one apply may carry; 0: every one
	aborts := 0
	for round := 0; ; round++ {
		resp, err := c.Get(ctx, &pb.GetRequest{Kind: "mirror"})
		if err != nil {
			return r.fail(fmt.Sprintf("read mirrors: %s", status.Convert(err).Message()))
		}
		todo, err := r.pick(resp.GetObjects().GetMirrors(), round == 0)
		if err != nil || len(todo) == 0 {
			return err
		}
		batch := todo
		if perTxn > 0 && len(batch) > perTxn {
			batch = batch[:perTxn]
		}
		if resp.GetRevision() == 0 {
			r.noRev = true
		}
		_, err = c.Apply(ctx, &pb.ApplyRequest{Objects: &pb.Objects{Mirrors: batch}, DryRun: r.dry, IfRevision: resp.GetRevision()})
		if n := splitPerTxn(err); n > 0 && n < len(batch) {
			// Refused whole, nothing written: apply n at a time.
			perTxn = n
			continue
		}
		switch status.Code(err) {
		case codes.OK:
			aborts = 0
			for _, m := range batch {
				r.changed = append(r.changed, m.GetName())
				r.written[m.GetName()] = true
			}
		case codes.Aborted:
			if aborts++; aborts == drainAttempts {
				return r.fail(fmt.Sprintf("the objects changed while it ran, %d times in a row", aborts), status.Convert(err).Message())
			}
		default:
			return r.fail(status.Convert(err).Message())
		}
	}
}

// pick records the lines of the mirrors named as read and returns those
// whose state changes and that this run has not applied yet. A first read
// that names none is an error.
func (r *drainRun) pick(mirrors []*pb.Mirror, first bool) ([]*pb.Mirror, error) {
	var picked []*pb.Mirror
	for _, m := range mirrors {
		if (r.sel == "mirror" && m.GetName() == r.name) || (r.sel == "node" && m.GetNode() == r.name) {
			picked = append(picked, m)
		}
	}
	if len(picked) == 0 && first {
		if r.sel == "node" {
			return nil, fmt.Errorf("%s: no mirror names node %q as its host (the mirrors' node field)", r.verb, r.name)
		}
		return nil, fmt.Errorf("%s: no mirror %q", r.verb, r.name)
	}
	from, to := pb.MirrorState_MIRROR_STATE_ACTIVE, pb.MirrorState_MIRROR_STATE_DRAINING
	if r.verb == "undrain" {
		from, to = to, from
	}
	var todo []*pb.Mirror
	for _, m := range picked {
		if r.written[m.GetName()] {
			continue
		}
		st := m.GetState()
		if st == pb.MirrorState_MIRROR_STATE_UNSPECIFIED {
			st = pb.MirrorState_MIRROR_STATE_ACTIVE
		}
		switch st {
		case to:
			r.lines[m.GetName()] = fmt.Sprintf("mirror/%s already %s", m.GetName(), controller.MirrorStateName(to))
		case from:
			m.State = to
			todo = append(todo, m)
			r.lines[m.GetName()] = fmt.Sprintf("mirror/%s %s (was %s)", m.GetName(), controller.MirrorStateName(to), controller.MirrorStateName(from))
		default:
			r.lines[m.GetName()] = fmt.Sprintf("mirror/%s is %s: left as it is", m.GetName(), controller.MirrorStateName(st))
		}
	}
	return todo, nil
}

// fail is the run's error after a refused read or apply: what this run
// had applied before it, if anything, and the reason (why), with the
// controller's message (detail) in parentheses when given.
func (r *drainRun) fail(why string, detail ...string) error {
	to := "draining"
	if r.verb == "undrain" {
		to = "active"
	}
	done := "nothing written, run it again"
	switch {
	case len(r.changed) > 0 && r.dry:
		done = fmt.Sprintf("%d of the mirrors validated as %s (%s) before it, the others were not; dry run: nothing written",
			len(r.changed), to, strings.Join(r.changed, ", "))
	case len(r.changed) > 0:
		done = fmt.Sprintf("%d of the mirrors were set %s (%s), the others were not: run it again to %s them (mirrors already %s are left as they are)",
			len(r.changed), to, strings.Join(r.changed, ", "), r.verb, to)
	}
	if len(detail) > 0 {
		return fmt.Errorf("%s: %s; %s (%s)", r.verb, why, done, strings.Join(detail, "; "))
	}
	if len(r.changed) == 0 {
		return fmt.Errorf("%s: %s", r.verb, why)
	}
	return fmt.Errorf("%s: %s; %s", r.verb, why, done)
}

// output is the lines to print: one per mirror named, in name order, and
// the warning of a replica without revisions. After a failure only the
// mirrors applied are listed (the others were not).
func (r *drainRun) output(failed bool) []string {
	names := make([]string, 0, len(r.lines))
	for n := range r.lines {
		if !failed || r.written[n] {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		out = append(out, r.lines[n])
	}
	if r.noRev && len(r.changed) > 0 {
		// A replica older than this command neither reports the revision
		// nor honours if_revision: the write is then unconditional.
		out = append(out, "warning: the controller reported no revision (a replica older than this command), so an edit made while this ran may be undone; check with controller get mirror")
	}
	return out
}

// splitPerTxn is how many objects one etcd transaction holds when err is
// the controller's refusal of a conditional apply that would take
// several; 0 for any other error.
func splitPerTxn(err error) int {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == controller.ErrorDomain && ei.GetReason() == controller.ReasonApplySplit {
			n, _ := strconv.Atoi(ei.GetMetadata()[controller.MetaObjectsPerTxn])
			return n
		}
	}
	return 0
}
