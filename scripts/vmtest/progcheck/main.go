// Command progcheck loads premirror's XDP programs through the loaders the
// agent uses (maps.LoadRouter, maps.LoadDecap) and reports, per program,
// whether the running kernel's verifier accepts it. On success it prints
// the verified instruction count and JIT size; on failure the complete
// verifier log, which test failures only show the tail of.
//
// scripts/vmtest runs it in the guest before the test binaries; as root it
// also runs on the host: go run ./scripts/vmtest/progcheck
//
// Output, one line per program, then any log lines indented:
//
//	VMTEST-PROG pm_router OK verified_insns=1234 jited_bytes=5678
//	VMTEST-PROG pm_decap FAIL load decap: ...
//	  verifier: 0: (b7) r0 = 0
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cilium/ebpf"

	"github.com/premirror/premirror/internal/maps"
)

// errRejected means at least one program did not load.
var errRejected = errors.New("kernel rejected a program")

// loader loads one program and returns it with a function that releases it.
type loader struct {
	name string
	load func() (*ebpf.Program, func() error, error)
}

// checkConfig is the default configuration with few route tables: the
// program is the same (map sizes do not change what the verifier checks;
// TableSlots, which sets route_slots_mask, stays at its default), but
// LoadRouter probes every table slot once and on kernels before 6.8 each
// of those lookups waits for an RCU grace period (about 20 ms under TCG).
func checkConfig() maps.Config {
	c := maps.DefaultConfig()
	c.MaxTables = 64
	return c
}

var loaders = []loader{
	{"pm_router", func() (*ebpf.Program, func() error, error) {
		r, err := maps.LoadRouter(checkConfig(), maps.Options{})
		if err != nil {
			return nil, nil, err
		}
		return r.Program(), r.Close, nil
	}},
	{"pm_decap", func() (*ebpf.Program, func() error, error) {
		d, err := maps.LoadDecap(maps.Options{})
		if err != nil {
			return nil, nil, err
		}
		return d.Program(), d.Close, nil
	}},
}

func main() {
	if err := run(os.Stdout, loaders); err != nil {
		slog.Error("progcheck", "err", err)
		os.Exit(1)
	}
}

// run loads every program, reports each to w, and fails if any failed.
func run(w io.Writer, ls []loader) error {
	var failed []string
	for _, l := range ls {
		prog, closeFn, err := l.load()
		if err != nil {
			report(w, l.name, err)
			failed = append(failed, l.name)
			continue
		}
		fmt.Fprintf(w, "VMTEST-PROG %s OK%s\n", l.name, stats(prog))
		if err := closeFn(); err != nil {
			return fmt.Errorf("close %s: %w", l.name, err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %v", errRejected, failed)
	}
	return nil
}

// stats reads what the kernel says about a loaded program. Either figure
// may be missing on older kernels (verified_insns needs 5.16).
func stats(p *ebpf.Program) string {
	info, err := p.Info()
	if err != nil {
		return fmt.Sprintf(" (no info: %v)", err)
	}
	s := ""
	if n, ok := info.VerifiedInstructions(); ok {
		s += fmt.Sprintf(" verified_insns=%d", n)
	}
	if n, err := info.JitedSize(); err == nil {
		s += fmt.Sprintf(" jited_bytes=%d", n)
	}
	return s
}

// report prints a failure, with the whole verifier log when there is one.
func report(w io.Writer, name string, err error) {
	fmt.Fprintf(w, "VMTEST-PROG %s FAIL %v\n", name, err)
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return
	}
	for _, line := range ve.Log {
		fmt.Fprintf(w, "  verifier: %s\n", line)
	}
}
