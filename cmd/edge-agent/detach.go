package main

import (
	"context"
	"fmt"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/maps"
)

func init() {
	commands.Register(cli.Command{
		Name:    "detach",
		Summary: "detach premirror's XDP programs and (with -maps) remove its pinned state",
		Run: func(ctx context.Context, args []string) error {
			fs := cli.NewFlagSet("edge-agent", "detach")
			pinDir := fs.String("pin-dir", maps.DefaultPinDir, "bpffs directory the agent pinned to")
			withMaps := fs.Bool("maps", false, "also remove the pinned maps (sessions, routes…)")
			if err := cli.ParseFlags(fs, args); err != nil {
				return err
			}
			// A stray argument ends flag parsing: what follows it (-maps,
			// -pin-dir) would be ignored and the default pin dir detached.
			if fs.NArg() > 0 {
				return fmt.Errorf("%w: unexpected argument %q (use -pin-dir DIR)", cli.ErrUsage, fs.Arg(0))
			}
			if err := agent.Detach(*pinDir, *withMaps); err != nil {
				return fmt.Errorf("detach: %w", err)
			}
			return nil
		},
	})
}
