package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
)

func init() {
	commands.Register(cli.Command{
		Name:    "etcd",
		Summary: "run only the embedded single-node etcd (mutual TLS), for several `run --etcd-endpoints` replicas",
		Run:     ctlEtcd,
	})
}

func ctlEtcd(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "etcd")
	tlsf := ctlAddTLSFlags(fs, "controller")
	dataDir := fs.String("data-dir", "/var/lib/premirror/etcd", "etcd data directory")
	listen := fs.String("etcd-listen", "127.0.0.1:2379", "client address (the certificate's SANs must name its host)")
	peer := fs.String("etcd-peer-listen", "127.0.0.1:2380", "peer address")
	etcdClients := fs.String("etcd-client-names", "", "comma-separated certificate names accepted (default: this certificate's own; name every replica's)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	files := tlsf.files()
	if err := files.Validate(); err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	clients, err := etcdClientNames(*etcdClients)
	if err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var quiet atomic.Bool
	e, ep, err := controller.StartEtcd(controller.EmbeddedEtcd{Dir: *dataDir, ClientAddr: *listen, PeerAddr: *peer,
		TLS: files, ClientNames: clients, Logger: controller.EtcdLogger(log, &quiet)})
	if err != nil {
		return err
	}
	defer func() { quiet.Store(true); e.Close() }()
	log.Info("etcd ready", "endpoint", ep, "data_dir", *dataDir)
	fmt.Fprintln(ctlOut, ep)
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}
