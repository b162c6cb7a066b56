package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/pki"
)

// TestRunRefusesBadFlags: a bad flag fails before anything starts (the
// embedded etcd's data directory is not created), as a usage error
// naming the flag and its value. Before, every flag was checked after
// etcd had started, in the controller's internal terms (--price-copy-
// per-gb=-1 read "forecast prices copy_per_byte: -1e-09 ..."), and
// --forecast-max-snapshot=-1, --etcd-max-txn-ops=-3, an empty admin name
// or covariate were accepted.
func TestRunRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--tick=-1s"}, "--tick=-1s: tick interval: -1s must be positive"},
		{[]string{"--lease-ttl=-3s"}, "--lease-ttl=-3s: lease ttl"},
		{[]string{"--price-copy-per-gb=-1"}, "--price-copy-per-gb=-1: forecast prices copy_per_byte"},
		{[]string{"--value-per-request-second=Inf"}, "--value-per-request-second=+Inf"},
		{[]string{"--forecast-horizon=100000000"}, "--forecast-horizon=100000000: forecast history"},
		{[]string{"--forecast-window=-5"}, "--forecast-window=-5: forecast engine"},
		{[]string{"--forecast-step=90m30ms"}, "--forecast-step=1h30m0.03s: forecast step"},
		{[]string{"--route-max-move=NaN"}, "--route-max-move=NaN: route config MaxMove"},
		{[]string{"--table-slots=300"}, "--table-slots=300: route config Slots 300"},
		{[]string{"--route-confirm=-1"}, "--route-confirm=-1"},
		{[]string{"--forecast-max-snapshot=-1"}, "--forecast-max-snapshot=-1: forecast max snapshot bytes: -1 is negative"},
		{[]string{"--etcd-max-txn-ops=-3"}, "--etcd-max-txn-ops: -3 is negative"},
		{[]string{"--etcd-max-request-bytes=-1"}, "--etcd-max-request-bytes: -1 is not within [0, 10485760]"},
		{[]string{"--etcd-max-request-bytes=20000000"}, "--etcd-max-request-bytes: 20000000 is not within [0, 10485760]"},
		{[]string{"--admin-names=admin,,ops"}, `--admin-names: "admin,,ops": an empty or repeated entry`},
		{[]string{"--etcd-client-names=controller,controller"}, `--etcd-client-names: "controller,controller": an empty or repeated entry`},
		{[]string{"--forecast-covariates=temp,TEMP"}, "--forecast-covariates"},
		{[]string{"--listen=7443"}, "--listen: address 7443: missing port"},
		{[]string{"--metrics-addr=127.0.0.1:99999"}, `--metrics-addr: "127.0.0.1:99999": port "99999"`},
		{[]string{"--etcd-peer-listen=localhost"}, "--etcd-peer-listen"},
		{[]string{"--etcd-endpoints=https://a:2379,,https://b:2379"}, `--etcd-endpoints: "https://a:2379,,https://b:2379": an empty or repeated entry`},
		// Each is fine alone; together the retention (48 min at a 2 min
		// step) does not exceed twice the grace.
		{[]string{"--forecast-step=2m", "--forecast-grace=25m"}, "flags together: forecast retention"},
	} {
		t.Run(strings.Join(tc.flags, " "), func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "etcd")
			// No certificates exist: a flag let through fails on them
			// instead, without the flag in the error.
			args := append([]string{"--tls-dir", filepath.Join(dir, "tls"), "--data-dir", data,
				"--listen", "127.0.0.1:0", "--metrics-addr", "", "--etcd-listen", "127.0.0.1:0", "--etcd-peer-listen", "127.0.0.1:0"}, tc.flags...)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := ctlRun(ctx, args)
			if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a usage error with %q", err, tc.want)
			}
			if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("data dir: %v, want none", err)
			}
		})
	}
}

// TestRunRefusesExpiredCertificate: a certificate that cannot complete a
// handshake fails run before etcd starts; before, an expired one loaded
// and every agent's and admin's handshake failed at run time.
func TestRunRefusesExpiredCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("controller", []string{"127.0.0.1"}, -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteLeaf(filepath.Join(dir, "tls"), "controller", ca, leaf); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "etcd")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = ctlRun(ctx, []string{"--tls-dir", filepath.Join(dir, "tls"), "--data-dir", data, "--listen", "127.0.0.1:0",
		"--metrics-addr", "", "--etcd-listen", "127.0.0.1:0", "--etcd-peer-listen", "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "tls (see `controller certs`)") || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("error %v, want the expired certificate named", err)
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir: %v, want none", err)
	}
}
