package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/maps"
)

// bpffsMagic is the file system type of a bpffs (statfs f_type).
const bpffsMagic = 0xcafe4a11

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
			if _, err := os.Stat(*pinDir); os.IsNotExist(err) && filepath.IsAbs(*pinDir) {
				return nil // nothing pinned: nothing to detach
			}
			if err := checkPinDir(*pinDir); err != nil {
				return fmt.Errorf("%w: %v", cli.ErrUsage, err)
			}
			if err := agent.Detach(*pinDir, *withMaps); err != nil {
				return fmt.Errorf("detach: %w", err)
			}
			return nil
		},
	})
}

// checkPinDir refuses a pin dir detach must not touch: one that is not a
// directory on a bpffs (detach removes files there, and with -maps the
// whole tree), or the bpffs mount itself (other programs' pins).
func checkPinDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("-pin-dir %q: must be an absolute path on a bpffs", dir)
	}
	dir = filepath.Clean(dir)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("-pin-dir %s: %v", dir, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("-pin-dir %s: not on a bpffs", dir)
	}
	var parent syscall.Statfs_t
	if dir == "/" || syscall.Statfs(filepath.Dir(dir), &parent) != nil || uint32(parent.Type) != bpffsMagic {
		return fmt.Errorf("-pin-dir %s: is a bpffs mount itself, not the agent's directory on it", dir)
	}
	return nil
}
