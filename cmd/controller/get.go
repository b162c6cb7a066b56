package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
)

func init() {
	commands.Register(cli.Command{
		Name:    "get",
		Summary: "print objects as YAML (re-appliable) or JSON: get [site|mirror|resource [name]]",
		Run:     ctlGet,
	})
}

func ctlGet(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "get")
	format := fs.String("o", "yaml", "output format: yaml or json")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 2 {
		return fmt.Errorf("%w: get [kind [name]]", cli.ErrUsage)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	pos = append(pos, "", "")
	resp, err := c.Get(rctx, &pb.GetRequest{Kind: pos[0], Name: pos[1]})
	if err != nil {
		return fmt.Errorf("get: %s", status.Convert(err).Message())
	}
	var out []byte
	switch *format {
	case "yaml":
		out, err = controller.FormatObjects(resp.GetObjects())
	case "json":
		out, err = protojson.MarshalOptions{Multiline: true}.Marshal(resp.GetObjects())
		out = append(out, '\n')
	default:
		return fmt.Errorf("%w: -o %q is not yaml or json", cli.ErrUsage, *format)
	}
	if err != nil {
		return err
	}
	_, err = ctlOut.Write(out)
	return err
}
