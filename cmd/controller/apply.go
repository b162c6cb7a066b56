package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
)

func init() {
	commands.Register(cli.Command{
		Name:    "apply",
		Summary: "create or update sites, mirrors and resources from YAML (-f file, - for stdin)",
		Run:     ctlApply,
	})
	commands.Register(cli.Command{
		Name:    "delete",
		Summary: "delete one object, or forget a decommissioned node: delete <site|mirror|resource|node> <name>",
		Run:     ctlDelete,
	})
}

func ctlApply(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "apply")
	file := fs.String("f", "", "YAML file of objects (- for stdin)")
	dry := fs.Bool("dry-run", false, "validate on the controller without writing")
	af := ctlAddAdminFlags(fs)
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: -f is required", cli.ErrUsage)
	}
	var b []byte
	var err error
	if *file == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("read objects: %w", err)
	}
	// Local validation names the field and line before anything is sent.
	objs, err := controller.ParseObjects(b)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.Apply(rctx, &pb.ApplyRequest{Objects: objs, DryRun: *dry})
	if err != nil {
		return fmt.Errorf("apply %s: %s", *file, status.Convert(err).Message())
	}
	for _, ch := range resp.GetChanges() {
		fmt.Fprintf(ctlOut, "%s/%s %s (id %d)\n", ch.GetKind(), ch.GetName(), ch.GetAction(), ch.GetId())
	}
	if *dry {
		fmt.Fprintln(ctlOut, "dry run: nothing written")
	}
	return nil
}

func ctlDelete(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "delete")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("%w: delete <site|mirror|resource|node> <name>", cli.ErrUsage)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	if _, err := c.Delete(rctx, &pb.DeleteRequest{Kind: pos[0], Name: pos[1]}); err != nil {
		return fmt.Errorf("delete %s %s: %s", pos[0], pos[1], status.Convert(err).Message())
	}
	fmt.Fprintf(ctlOut, "%s/%s deleted\n", pos[0], pos[1])
	return nil
}
