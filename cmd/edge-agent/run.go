package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	// Replication schedules are in local time: TZ must name a zone even
	// in an image without a zone database.
	_ "time/tzdata"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/cli"
)

func init() {
	commands.Register(cli.Command{
		Name:    "run",
		Summary: "load, pin and attach the XDP programs and keep their maps in the desired state",
		Run:     runAgent,
	})
}

func runAgent(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent", "run")
	path := fs.String("config", "/etc/premirror/edge-agent.yaml", "configuration file (YAML)")
	mode := fs.String("xdp-mode", "", "force the XDP attach mode: native, generic or auto (overrides xdp_mode)")
	metrics := fs.String("metrics-addr", "", "metrics and health listen address (overrides metrics_addr)")
	pinDir := fs.String("pin-dir", "", "bpffs directory for pinned maps and links (overrides pin_dir)")
	pprofAddr := fs.String("pprof-addr", "", "serve Go runtime profiles (/debug/pprof/) on this address, e.g. 127.0.0.1:6060 (overrides pprof_addr)")
	debug := fs.Bool("debug", false, "debug logs, full verifier output on load errors")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg, err := agent.LoadConfig(*path)
	if err != nil {
		return err
	}
	// The flags win over the file, at start and at every reload.
	overrides := func(cfg *agent.Config) {
		if *mode != "" {
			cfg.XDPMode = agent.XDPMode(*mode)
		}
		if *metrics != "" {
			cfg.MetricsAddr = *metrics
		}
		if *pinDir != "" {
			cfg.PinDir = *pinDir
		}
		if *pprofAddr != "" {
			cfg.PprofAddr = *pprofAddr
		}
	}
	overrides(cfg)
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := agent.New(cfg, *path, log)
	a.Overrides = overrides
	if err := a.Start(); err != nil {
		if *debug {
			return fmt.Errorf("%+v", err)
		}
		return err
	}
	defer a.Close()
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("agent stopped; programs stay attached and maps pinned", "pin_dir", cfg.PinDir)
	return err
}
