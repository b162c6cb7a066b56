package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/premirror/premirror/internal/debugserver"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
	dir, name, ca, cert, key, crl *string
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
		crl:  fs.String("tls-crl", "", "certificate revocation list signed by the CA (controller revoke writes <tls-dir>/ca.crl); peers it lists are refused. Certificate, CA and CRL files are re-read when they change"),
	}
}

func (f ctlTLSFlags) files() pki.Files {
	pick := func(v, file string) string {
		if v != "" {
			return v
		}
		return filepath.Join(*f.dir, file)
	}
	return pki.Files{CA: pick(*f.ca, "ca.pem"), Cert: pick(*f.cert, *f.name+".pem"), Key: pick(*f.key, *f.name+"-key.pem"), CRL: *f.crl}
}

// Defaults of the price flags, in the units operators quote (see
// controller.DefaultPrices).
const (
	DefaultPriceCopyPerGB       = 0.02
	DefaultPriceStorePerGBMonth = 0.10
)

// runFlags are controller run's flags.
type runFlags struct {
	listen, name, dataDir, endpoints, etcdListen, etcdPeer, etcdClients, prefix, admins, metricsAddr, pprofAddr *string
	tls                                                                                                         ctlTLSFlags
	maxTxn, maxReq, confirm, slots, fcWindow, fcHorizon                                                         *int
	tick, report, lease, minGainAbs, dwell, slowStart, fcStep, fcGrace, fcFlush                                 *time.Duration
	minGain, maxMove, copyGB, storeGBMonth, valueReqSec                                                         *float64
	fcOff, debug                                                                                                *bool
	fcCovs, fcState                                                                                             *string
	fcMaxSnap                                                                                                   *int64
}

func newRunFlags() (*flag.FlagSet, *runFlags) {
	fs := cli.NewFlagSet("controller", "run")
	f := &runFlags{}
	f.listen = fs.String("listen", ":7443", "address for agent sessions and the admin API (mutual TLS)")
	f.name = fs.String("name", "", "replica name (default: host name and process ID)")
	f.tls = ctlAddTLSFlags(fs, "controller")
	f.dataDir = fs.String("data-dir", "/var/lib/premirror/controller", "embedded etcd data directory")
	f.endpoints = fs.String("etcd-endpoints", "", "comma-separated etcd endpoints of an external cluster (https:// uses the controller's certificate); empty runs an embedded single-node etcd")
	f.etcdListen = fs.String("etcd-listen", "127.0.0.1:2379", "embedded etcd client address (mutual TLS; other replicas may use it as --etcd-endpoints)")
	f.etcdPeer = fs.String("etcd-peer-listen", "127.0.0.1:2380", "embedded etcd peer address")
	f.etcdClients = fs.String("etcd-client-names", "", "comma-separated certificate names the embedded etcd accepts (default: this replica's own certificate's; name every replica that uses it as --etcd-endpoints)")
	f.maxTxn = fs.Int("etcd-max-txn-ops", 0, "operations per etcd transaction (0: 16384 embedded, 128 external, etcd's default); larger applies are split")
	f.maxReq = fs.Int("etcd-max-request-bytes", 0, "etcd's request size limit (0: 10 MiB embedded, 1.5 MiB external, etcd's default); larger applies are split, an object beyond it is refused as invalid")
	f.prefix = fs.String("etcd-prefix", controller.DefaultPrefix, "etcd key prefix")
	f.tick = fs.Duration("tick", controller.DefaultTickInterval, "route computation interval (health and object changes compute at once)")
	f.report = fs.Duration("report-interval", controller.DefaultReportInterval, "how often agents report")
	f.lease = fs.Duration("lease-ttl", controller.DefaultLeaseTTL, "leader and session lease; a dead leader is replaced after about this long")
	f.admins = fs.String("admin-names", "admin", "comma-separated certificate names allowed to change objects")
	f.metricsAddr = fs.String("metrics-addr", "127.0.0.1:9451", "metrics and health listen address (empty: none)")
	f.pprofAddr = fs.String("pprof-addr", "", "serve Go runtime profiles (/debug/pprof/) on this address, e.g. 127.0.0.1:6061 (empty: none)")
	// Routing policy knobs; 0 keeps internal/route's defaults (the issue's:
	// 10% and 5 ms better for 3 evaluations, 60 s dwell, 10% slew, 30 s slow start).
	f.minGain = fs.Float64("route-min-gain", 0, "a challenger must be this share better than the incumbent (default 0.10)")
	f.minGainAbs = fs.Duration("route-min-gain-abs", 0, "… and this much better in absolute cost (default 5ms)")
	f.confirm = fs.Int("route-confirm", 0, "… for this many consecutive evaluations (default 3)")
	f.dwell = fs.Duration("route-dwell", 0, "minimum time a region keeps its primary mirror (default 60s)")
	f.maxMove = fs.Float64("route-max-move", 0, "largest share of a region's slots one evaluation may move (default 0.10)")
	f.slowStart = fs.Duration("route-slow-start", 0, "ramp of a new or recovered mirror's weight (default 30s)")
	f.slots = fs.Int("table-slots", maps.DefaultConfig().TableSlots, "route table size the weights are quantized for (the agents' table_slots)")
	// Forecasting: the leader's prediction engine and the Mirroring Score.
	f.fcOff = fs.Bool("forecast-disable", false, "run without the prediction engine (no access aggregates, forecasts or scores)")
	f.fcStep = fs.Duration("forecast-step", time.Hour, "forecast bucket length (whole seconds; every replica must use the same)")
	f.fcWindow = fs.Int("forecast-window", 0, "regression window in buckets (default four weeks of buckets)")
	f.fcHorizon = fs.Int("forecast-horizon", 0, "forecast horizon in buckets (default one day of buckets)")
	f.fcCovs = fs.String("forecast-covariates", "", "comma-separated covariate names the models use (fed with `controller feed covariates`)")
	f.fcGrace = fs.Duration("forecast-grace", 0, "the leader closes a bucket this long after it ends (default 3 report intervals + 2s)")
	f.fcFlush = fs.Duration("forecast-flush", 0, "a replica rewrites a bucket's access totals in etcd at most this often (default step/10 within [report interval, 1m])")
	f.fcState = fs.String("forecast-state-file", "", "also keep the forecast checkpoint in this file (needed when it outgrows --forecast-max-snapshot)")
	f.fcMaxSnap = fs.Int64("forecast-max-snapshot", 256<<20, "largest deflated forecast checkpoint kept in etcd, bytes")
	f.copyGB = fs.Float64("price-copy-per-gb", DefaultPriceCopyPerGB, "Mirroring Score: cost of copying one GB to a site")
	f.storeGBMonth = fs.Float64("price-store-per-gb-month", DefaultPriceStorePerGBMonth, "Mirroring Score: cost of storing one GB for a month (730 h)")
	f.valueReqSec = fs.Float64("value-per-request-second", controller.DefaultPrices.ValuePerRequestSecond, "Mirroring Score: value of one second of latency saved on one request")
	f.debug = fs.Bool("debug", false, "debug logs")
	return fs, f
}

// names splits a comma-separated list, refusing an empty or repeated
// entry (a stray comma).
func names(flagName, list string, lower bool) ([]string, error) {
	var out []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if lower {
			n = strings.ToLower(n)
		}
		if n == "" || slices.Contains(out, n) {
			return nil, fmt.Errorf("--%s: %q: an empty or repeated entry", flagName, list)
		}
		out = append(out, n)
	}
	return out, nil
}

// config is the replica's configuration (logger and etcd aside).
func (f *runFlags) config() (controller.Config, error) {
	admins, err := names("admin-names", *f.admins, false)
	if err != nil {
		return controller.Config{}, err
	}
	if *f.maxTxn < 0 {
		return controller.Config{}, fmt.Errorf("--etcd-max-txn-ops: %d is negative", *f.maxTxn)
	}
	if *f.maxReq < 0 || *f.maxReq > controller.EtcdMaxRequestBytes {
		// Beyond it the controller's etcd client would not send the request.
		return controller.Config{}, fmt.Errorf("--etcd-max-request-bytes: %d is not within [0, %d]", *f.maxReq, controller.EtcdMaxRequestBytes)
	}
	if *f.endpoints != "" {
		if _, err := names("etcd-endpoints", *f.endpoints, false); err != nil {
			return controller.Config{}, err
		}
	}
	if _, err := etcdClientNames(*f.etcdClients); err != nil {
		return controller.Config{}, err
	}
	// Listen addresses are bound after etcd starts: check them first.
	for _, l := range []struct{ flag, addr string }{{"listen", *f.listen}, {"metrics-addr", *f.metricsAddr}, {"pprof-addr", *f.pprofAddr},
		{"etcd-listen", *f.etcdListen}, {"etcd-peer-listen", *f.etcdPeer}} {
		if l.addr == "" && (l.flag == "metrics-addr" || l.flag == "pprof-addr") {
			continue
		}
		if _, port, err := net.SplitHostPort(l.addr); err != nil {
			return controller.Config{}, fmt.Errorf("--%s: %w", l.flag, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return controller.Config{}, fmt.Errorf("--%s: %q: port %q is not in [0, 65535]", l.flag, l.addr, port)
		}
	}
	cfg := controller.Config{Name: *f.name, TLS: f.tls.files(), AdminNames: admins, Prefix: *f.prefix,
		TickInterval: *f.tick, ReportInterval: *f.report, LeaseTTL: *f.lease}
	cfg.Route.Slots = *f.slots
	cfg.Route.MinGain, cfg.Route.MinGainAbs, cfg.Route.Confirm = *f.minGain, *f.minGainAbs, *f.confirm
	cfg.Route.Dwell, cfg.Route.MaxMove, cfg.Route.SlowStart = *f.dwell, *f.maxMove, *f.slowStart
	cfg.Forecast = controller.ForecastConfig{Disable: *f.fcOff, Grace: *f.fcGrace, FlushInterval: *f.fcFlush, StateFile: *f.fcState,
		MaxSnapshotBytes: *f.fcMaxSnap, Prices: forecast.Prices{CopyPerByte: *f.copyGB / 1e9, StorePerByteHour: *f.storeGBMonth / 1e9 / 730,
			ValuePerRequestSecond: *f.valueReqSec}}
	cfg.Forecast.Engine.Step, cfg.Forecast.Engine.Window, cfg.Forecast.Engine.Horizon = *f.fcStep, *f.fcWindow, *f.fcHorizon
	if *f.fcCovs != "" {
		if cfg.Forecast.Engine.Covariates, err = names("forecast-covariates", *f.fcCovs, true); err != nil {
			return controller.Config{}, err
		}
	}
	return cfg, nil
}

// etcdClientNames parses --etcd-client-names (run and etcd): the
// certificate names the embedded etcd accepts; none: its own
// certificate's.
func etcdClientNames(list string) ([]string, error) {
	if list == "" {
		return nil, nil
	}
	return names("etcd-client-names", list, false)
}

// checkRunFlags validates what the flags make before anything starts
// (embedded etcd creates its data directory), naming the flag at fault:
// each flag the command line set is tried alone over the defaults, with
// the validation controller.New runs. What only a combination of flags
// breaks is reported as such.
func checkRunFlags(fs *flag.FlagSet, f *runFlags) error {
	check := func(f *runFlags) error {
		cfg, err := f.config()
		if err != nil {
			return err
		}
		return controller.CheckConfig(cfg)
	}
	err := check(f)
	if err == nil {
		return nil
	}
	var blame error
	fs.Visit(func(fl *flag.Flag) {
		if blame != nil {
			return
		}
		fs1, f1 := newRunFlags()
		if fs1.Set(fl.Name, fl.Value.String()) != nil {
			return
		}
		if err1 := check(f1); err1 != nil {
			if !strings.HasPrefix(err1.Error(), "--") {
				err1 = fmt.Errorf("--%s=%s: %w", fl.Name, fl.Value, err1)
			}
			blame = err1
		}
	})
	if blame != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, blame)
	}
	return fmt.Errorf("%w: flags together: %v", cli.ErrUsage, err)
}

func ctlRun(ctx context.Context, args []string) error {
	fs, f := newRunFlags()
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *f.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	files := f.tls.files()
	if err := files.Validate(); err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	if err := checkRunFlags(fs, f); err != nil {
		return err
	}
	cfg, _ := f.config() // checked
	cfg.Logger = log
	// Fail on certificates that cannot complete a handshake (unreadable,
	// expired, of another CA) here, before etcd reports it less clearly.
	if err := files.Check(time.Now()); err != nil {
		return fmt.Errorf("tls (see `controller certs`): %w", err)
	}

	var eps []string
	var etcdTLS *pki.Files
	if *f.endpoints == "" {
		etcdClients, _ := etcdClientNames(*f.etcdClients) // checked
		var quiet atomic.Bool
		e, ep, err := controller.StartEtcd(controller.EmbeddedEtcd{Dir: *f.dataDir, ClientAddr: *f.etcdListen, PeerAddr: *f.etcdPeer,
			TLS: files, ClientNames: etcdClients, Logger: controller.EtcdLogger(log, &quiet)})
		if err != nil {
			return err
		}
		defer func() { quiet.Store(true); e.Close() }()
		log.Info("embedded etcd ready", "endpoint", ep, "data_dir", *f.dataDir)
		eps, etcdTLS = []string{ep}, &files
	} else {
		for _, e := range strings.Split(*f.endpoints, ",") {
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

	c, err := controller.New(cfg, etcd)
	if err != nil {
		return err
	}
	switch {
	case *f.maxTxn > 0:
		c.Store().MaxTxnOps = *f.maxTxn
	case *f.endpoints != "":
		c.Store().MaxTxnOps = 128
	}
	switch {
	case *f.maxReq > 0:
		c.Store().MaxRequestBytes = *f.maxReq
	case *f.endpoints != "":
		c.Store().MaxRequestBytes = controller.EtcdDefaultMaxRequestBytes
	}
	lis, err := net.Listen("tcp", *f.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *f.listen, err)
	}
	if *f.metricsAddr != "" {
		ml, err := net.Listen("tcp", *f.metricsAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics-addr: listen %s: %w", *f.metricsAddr, err)
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
	if *f.pprofAddr != "" {
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		if _, err := debugserver.Start(pctx, *f.pprofAddr, "--pprof-addr", log); err != nil {
			lis.Close()
			return err
		}
	}
	err = c.Serve(ctx, lis)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
