// Package cli is the small subcommand dispatcher shared by premirror's
// binaries. Each subcommand lives in its own file of its cmd package and
// registers itself from init, so independent features never edit the same
// dispatch table.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Command is one subcommand. Run receives the arguments after the
// subcommand name and a context cancelled on SIGINT/SIGTERM.
type Command struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, args []string) error
}

// Registry holds the subcommands of one binary.
type Registry struct {
	Prog     string
	Default  string // subcommand run when the first argument is a flag or absent
	commands map[string]Command
}

// Register adds c; registering a name twice is a programming error.
func (r *Registry) Register(c Command) {
	if r.commands == nil {
		r.commands = make(map[string]Command)
	}
	if _, dup := r.commands[c.Name]; dup {
		panic("cli: duplicate subcommand " + c.Name)
	}
	r.commands[c.Name] = c
}

// ErrUsage marks an error caused by bad arguments; Main exits 2 for it.
var ErrUsage = errors.New("usage")

// Usage prints the subcommand list.
func (r *Registry) Usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\ncommands:\n", r.Prog)
	names := make([]string, 0, len(r.commands))
	for n := range r.commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, r.commands[n].Summary)
	}
}

// Run dispatches args (without the program name) and returns the error of
// the chosen subcommand.
func (r *Registry) Run(ctx context.Context, args []string) error {
	name := r.Default
	if len(args) > 0 && (len(args[0]) == 0 || args[0][0] != '-') {
		name, args = args[0], args[1:]
	}
	if name == "help" || name == "" {
		r.Usage(os.Stdout)
		return nil
	}
	c, ok := r.commands[name]
	if !ok {
		r.Usage(os.Stderr)
		return fmt.Errorf("%w: unknown command %q", ErrUsage, name)
	}
	return c.Run(ctx, args)
}

// Main runs the binary: it wires signals, dispatches, logs a failure with
// slog and returns the process exit code.
func (r *Registry) Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := r.Run(ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		slog.Error(r.Prog+" failed", "err", err)
		return 2
	default:
		slog.Error(r.Prog+" failed", "err", err)
		return 1
	}
}

// NewFlagSet returns a flag set for a subcommand that reports errors
// instead of exiting, so commands can run in-process in tests.
func NewFlagSet(prog, name string) *flag.FlagSet {
	fs := flag.NewFlagSet(prog+" "+name, flag.ContinueOnError)
	return fs
}

// ParseFlags parses args into fs and wraps a parse failure as ErrUsage.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	return nil
}
