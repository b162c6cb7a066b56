package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
)

func init() {
	commands.Register(cli.Command{
		Name:    "run",
		Summary: "serve agents and the admin API; compute routes while leading (embedded etcd by default)",
		Run:     ctlRun,
	})
}

// ctlTLSFlags are the certificate flags every subcommand shares.
type ctlTLSFlags struct {
	dir, name, ca, cert, key *string
}

func ctlAddTLSFlags(fs interface {
	String(name, value, usage string) *string
}, defaultName string) ctlTLSFlags {
	return ctlTLSFlags{
		dir:  fs.String("tls-dir", "/etc/premirror/tls", "directory with ca.pem, <tls-name>.pem and <tls-name>-key.pem (see `controller certs`)"),
		name: fs.String("tls-name", defaultName, "certificate name in --tls-dir"),
		ca:   fs.String("tls-ca", "", "CA certificate (overrides --tls-dir)"),
		cert: fs.String("tls-cert", "", "certificate (overrides --tls-dir)"),
		key:  fs.String("tls-key", "", "private key (overrides --tls-dir)"),
	}
}

func (f ctlTLSFlags) files() pki.Files {
	pick := func(v, file string) string {
		if v != "" {
			return v
		}
		return filepath.Join(*f.dir, file)
	}
	return pki.Files{CA: pick(*f.ca, "ca.pem"), Cert: pick(*f.cert, *f.name+".pem"), Key: pick(*f.key, *f.name+"-key.pem")}
}

// Defaults of the price flags, in the units operators quote (see
// controller.DefaultPrices).
const (
	DefaultPriceCopyPerGB       = 0.02
	DefaultPriceStorePerGBMonth = 0.10
)

func ctlRun(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "run")
	listen := fs.String("listen", ":7443", "address for agent sessions and the admin API (mutual TLS)")
	name := fs.String("name", "", "replica name (default: host name and process ID)")
	tlsf := ctlAddTLSFlags(fs, "controller")
	dataDir := fs.String("data-dir", "/var/lib/premirror/controller", "embedded etcd data directory")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints of an external cluster (https:// uses the controller's certificate); empty runs an embedded single-node etcd")
	etcdListen := fs.String("etcd-listen", "127.0.0.1:2379", "embedded etcd client address (mutual TLS; other replicas may use it as --etcd-endpoints)")
	etcdPeer := fs.String("etcd-peer-listen", "127.0.0.1:2380", "embedded etcd peer address")
	etcdClients := fs.String("etcd-client-names", "", "comma-separated certificate names the embedded etcd accepts (default: this replica's own certificate's; name every replica that uses it as --etcd-endpoints)")
	maxTxn := fs.Int("etcd-max-txn-ops", 0, "operations per etcd transaction (0: 16384 embedded, 128 external, etcd's default); larger applies are split")
	prefix := fs.String("etcd-prefix", controller.DefaultPrefix, "etcd key prefix")
	tick := fs.Duration("tick", controller.DefaultTickInterval, "route computation interval (health and object changes compute at once)")
	report := fs.Duration("report-interval", controller.DefaultReportInterval, "how often agents report")
	lease := fs.Duration("lease-ttl", controller.DefaultLeaseTTL, "leader and session lease; a dead leader is replaced after about this long")
	admins := fs.String("admin-names", "admin", "comma-separated certificate names allowed to change objects")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:9451", "metrics and health listen address (empty: none)")
	// Routing policy knobs; 0 keeps internal/route's defaults (the issue's:
	// 10% and 5 ms better for 3 evaluations, 60 s dwell, 10% slew, 30 s slow start).
	minGain := fs.Float64("route-min-gain", 0, "a challenger must be this share better than the incumbent (default 0.10)")
	minGainAbs := fs.Duration("route-min-gain-abs", 0, "… and this much better in absolute cost (default 5ms)")
	confirm := fs.Int("route-confirm", 0, "… for this many consecutive evaluations (default 3)")
	dwell := fs.Duration("route-dwell", 0, "minimum time a region keeps its primary mirror (default 60s)")
	maxMove := fs.Float64("route-max-move", 0, "largest share of a region's slots one evaluation may move (default 0.10)")
	slowStart := fs.Duration("route-slow-start", 0, "ramp of a new or recovered mirror's weight (default 30s)")
	slots := fs.Int("table-slots", maps.DefaultConfig().TableSlots, "route table size the weights are quantized for (the agents' table_slots)")
	// Forecasting: the leader's prediction engine and the Mirroring Score.
	fcOff := fs.Bool("forecast-disable", false, "run without the prediction engine (no access aggregates, forecasts or scores)")
	fcStep := fs.Duration("forecast-step", time.Hour, "forecast bucket length (whole seconds; every replica must use the same)")
	fcWindow := fs.Int("forecast-window", 0, "regression window in buckets (default four weeks of buckets)")
	fcHorizon := fs.Int("forecast-horizon", 0, "forecast horizon in buckets (default one day of buckets)")
	fcCovs := fs.String("forecast-covariates", "", "comma-separated covariate names the models use (fed with `controller feed covariates`)")
	fcGrace := fs.Duration("forecast-grace", 0, "the leader closes a bucket this long after it ends (default 3 report intervals + 2s)")
	fcFlush := fs.Duration("forecast-flush", 0, "a replica rewrites a bucket's access totals in etcd at most this often (default step/10 within [report interval, 1m])")
	fcState := fs.String("forecast-state-file", "", "also keep the forecast checkpoint in this file (needed when it outgrows --forecast-max-snapshot)")
	fcMaxSnap := fs.Int64("forecast-max-snapshot", 256<<20, "largest deflated forecast checkpoint kept in etcd, bytes")
	copyGB := fs.Float64("price-copy-per-gb", DefaultPriceCopyPerGB, "Mirroring Score: cost of copying one GB to a site")
	storeGBMonth := fs.Float64("price-store-per-gb-month", DefaultPriceStorePerGBMonth, "Mirroring Score: cost of storing one GB for a month (730 h)")
	valueReqSec := fs.Float64("value-per-request-second", controller.DefaultPrices.ValuePerRequestSecond, "Mirroring Score: value of one second of latency saved on one request")
	debug := fs.Bool("debug", false, "debug logs")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	files := tlsf.files()
	if err := files.Validate(); err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	// Fail on unreadable certificates here, before etcd reports it less clearly.
	if _, err := pki.ServerConfig(files); err != nil {
		return fmt.Errorf("tls (see `controller certs`): %w", err)
	}

	var eps []string
	var etcdTLS *pki.Files
	if *endpoints == "" {
		var quiet atomic.Bool
		e, ep, err := controller.StartEtcd(controller.EmbeddedEtcd{Dir: *dataDir, ClientAddr: *etcdListen, PeerAddr: *etcdPeer,
			TLS: files, ClientNames: splitList(*etcdClients), Logger: controller.EtcdLogger(log, &quiet)})
		if err != nil {
			return err
		}
		defer func() { quiet.Store(true); e.Close() }()
		log.Info("embedded etcd ready", "endpoint", ep, "data_dir", *dataDir)
		eps, etcdTLS = []string{ep}, &files
	} else {
		for _, e := range strings.Split(*endpoints, ",") {
			e = strings.TrimSpace(e)
			eps = append(eps, e)
			if !strings.HasPrefix(e, "http://") {
				etcdTLS = &files
			}
		}
	}
	etcd, err := controller.DialEtcd(eps, etcdTLS)
	if err != nil {
		return err
	}
	defer etcd.Close()

	cfg := controller.Config{Name: *name, TLS: files, AdminNames: strings.Split(*admins, ","), Prefix: *prefix,
		TickInterval: *tick, ReportInterval: *report, LeaseTTL: *lease, Logger: log}
	cfg.Route.Slots = *slots
	cfg.Route.MinGain, cfg.Route.MinGainAbs, cfg.Route.Confirm = *minGain, *minGainAbs, *confirm
	cfg.Route.Dwell, cfg.Route.MaxMove, cfg.Route.SlowStart = *dwell, *maxMove, *slowStart
	cfg.Forecast = controller.ForecastConfig{Disable: *fcOff, Grace: *fcGrace, FlushInterval: *fcFlush, StateFile: *fcState,
		MaxSnapshotBytes: *fcMaxSnap, Prices: forecast.Prices{CopyPerByte: *copyGB / 1e9, StorePerByteHour: *storeGBMonth / 1e9 / 730,
			ValuePerRequestSecond: *valueReqSec}}
	cfg.Forecast.Engine.Step, cfg.Forecast.Engine.Window, cfg.Forecast.Engine.Horizon = *fcStep, *fcWindow, *fcHorizon
	if *fcCovs != "" {
		for _, n := range strings.Split(*fcCovs, ",") {
			cfg.Forecast.Engine.Covariates = append(cfg.Forecast.Engine.Covariates, strings.ToLower(strings.TrimSpace(n)))
		}
	}
	c, err := controller.New(cfg, etcd)
	if err != nil {
		return err
	}
	switch {
	case *maxTxn > 0:
		c.Store().MaxTxnOps = *maxTxn
	case *endpoints != "":
		c.Store().MaxTxnOps = 128
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	if *metricsAddr != "" {
		ml, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics-addr: listen %s: %w", *metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(c.Registry(), promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "ok replica %s leader %q version %d\n", c.Name(), c.Leader(), c.Version())
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ml) }()
		defer srv.Close()
	}
	err = c.Serve(ctx, lis)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
