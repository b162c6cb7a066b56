package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/pki"
)

// ctlOut receives the admin subcommands' output (tests replace it).
var ctlOut io.Writer = os.Stdout

// ctlDialOptions are added to every admin connection (tests add
// interceptors).
var ctlDialOptions []grpc.DialOption

// ctlAdminFlags connect an admin subcommand to a controller.
type ctlAdminFlags struct {
	server  *string
	tls     ctlTLSFlags
	timeout *time.Duration
}

func ctlAddAdminFlags(fs *flag.FlagSet) ctlAdminFlags {
	return ctlAdminFlags{
		server:  fs.String("server", "127.0.0.1:7443", "controller address"),
		tls:     ctlAddTLSFlags(fs, "admin"),
		timeout: fs.Duration("timeout", 30*time.Second, "request timeout"),
	}
}

// dial returns an admin client and a context bounded by --timeout.
func (f ctlAdminFlags) dial(ctx context.Context) (pb.AdminClient, context.Context, func(), error) {
	tc, err := pki.ClientConfig(f.tls.files(), "")
	if err != nil {
		return nil, nil, nil, err
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(64<<20))}, ctlDialOptions...)
	conn, err := grpc.NewClient(*f.server, opts...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect %s: %w", *f.server, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *f.timeout)
	return pb.NewAdminClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

// ctlParse parses flags and positional arguments in any order
// (`get mirror paris --server x` as well as `get --server x mirror paris`).
func ctlParse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := cli.ParseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// ctlView runs a read-only admin query with `-o text|json`: it parses the
// flags and at most maxPos positional arguments (usage names them), asks
// the controller, and prints the answer as JSON or through text.
func ctlView[T proto.Message](ctx context.Context, args []string, name, usage string, maxPos int,
	query func(context.Context, pb.AdminClient, []string) (T, error), text func(T, []string) error) error {
	fs := cli.NewFlagSet("controller", name)
	format := fs.String("o", "text", "output format: text or json")
	af := ctlAddAdminFlags(fs)
	pos, err := ctlParse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > maxPos {
		return fmt.Errorf("%w: %s", cli.ErrUsage, usage)
	}
	if *format != "text" && *format != "json" {
		return fmt.Errorf("%w: -o %q is not text or json", cli.ErrUsage, *format)
	}
	c, rctx, done, err := af.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	resp, err := query(rctx, c, pos)
	if err != nil {
		return fmt.Errorf("%s: %s", name, status.Convert(err).Message())
	}
	if *format == "json" {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(resp)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(ctlOut, "%s\n", b)
		return err
	}
	return text(resp, pos)
}
