package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const forecastObjects = "../../internal/controller/testdata/forecast-demo.yaml"

// TestCtlForecastCommands runs the controller with 2-second buckets, two
// replaying edge agents (the real control client) and the admin commands:
// feed (bad and good files), forecast show and explain.
func TestCtlForecastCommands(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if _, err := ctl(t, "certs", "--dir", certs, "--agents", "replay-eu,replay-us"); err != nil {
		t.Fatal(err)
	}
	addr, stop := runForecastController(t, dir, certs, "--forecast-covariates", "temp_f")
	defer stop()
	admin := []string{"--server", addr, "--tls-dir", certs}

	// Feeds: a bad file names its line, a good one is stored.
	bad := filepath.Join(dir, "events.csv")
	os.WriteFile(bad, []byte("start,end,name,kind\n2026-01-01,yesterday,x,holiday\n"), 0o600)
	if _, err := ctl(t, append([]string{"feed", "events", "-f", bad}, admin...)...); err == nil ||
		!strings.Contains(err.Error(), "events.csv: events line 2 end") {
		t.Fatalf("bad feed: %v", err)
	}
	weather := filepath.Join(dir, "weather.csv")
	os.WriteFile(weather, []byte("timestamp,temp_f,wind\n2026-01-01 00:00,40,3\n"), 0o600)
	out, err := ctl(t, append([]string{"feed", "weather", "-f", weather}, admin...)...)
	if err != nil || !strings.Contains(out, "2 covariate values stored") || !strings.Contains(out, "no model uses wind") {
		t.Fatalf("feed: %v\n%s", err, out)
	}
	if _, err := ctl(t, append([]string{"explain", "web"}, admin...)...); err == nil || !strings.Contains(err.Error(), "no forecast yet") {
		t.Fatalf("explain before any bucket: %v", err)
	}

	// Two edges replay an hourly CSV, one hour per 2-second bucket.
	var b strings.Builder
	b.WriteString("timestamp,location,value\n")
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	for h := range 200 {
		ts := t0.Add(time.Duration(h) * time.Hour).Format("2006-01-02 15:04")
		fmt.Fprintf(&b, "%s,Manhattan,%d\n%s,Brooklyn,%d\n", ts, 100+h%24, ts, 2000+50*(h%24))
	}
	demand := filepath.Join(dir, "demand.csv")
	os.WriteFile(demand, []byte(b.String()), 0o600)
	rctx, rcancel := context.WithCancel(context.Background())
	replayDone := make(chan error, 2)
	for _, r := range []struct{ name, site, loc, probes string }{
		{"replay-eu", "eu", "Manhattan=eu", "paris=5ms,nyc=80ms,tokyo=220ms"},
		{"replay-us", "us", "Brooklyn=us", "paris=80ms,nyc=4ms,tokyo=150ms"},
	} {
		go func() {
			replayDone <- commands.Run(rctx, []string{"replay-access", "--server", addr, "--tls-dir", certs, "--tls-name", r.name,
				"--site", r.site, "--csv", demand, "--resource", "web", "--locations", r.loc, "--probe", r.probes,
				"--speedup", "1800", "--report-interval", "100ms"})
		}()
	}
	defer func() {
		rcancel()
		for range 2 {
			if err := <-replayDone; err != nil {
				t.Errorf("replay-access: %v", err)
			}
		}
	}()
	// Enough buckets for both regions to have a forecast and a route.
	waitFor(t, "explain with both candidates", 40*time.Second, func() bool {
		out, err = ctl(t, append([]string{"explain", "web"}, admin...)...)
		return err == nil && strings.Contains(out, "candidate us") && strings.Contains(out, "candidate asia") &&
			strings.Contains(out, "ms via paris")
	})
	for _, want := range []string{"resource web: Mirroring Score", "size 1.0 GiB", "not candidates: eu (holds a copy on paris)"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	out, err = ctl(t, append([]string{"forecast", "show", "web"}, admin...)...)
	if err != nil || !strings.Contains(out, "resource web: new flows per 2s bucket") || !strings.Contains(out, "RECENT (observed / predicted)") ||
		!strings.Contains(out, "SITE") || !strings.Contains(out, "  us    nyc") {
		t.Fatalf("forecast show: %v\n%s", err, out)
	}
	if list, err := ctl(t, append([]string{"forecast", "show"}, admin...)...); err != nil || strings.TrimSpace(list) != "web" {
		t.Fatalf("forecast show (list): %v %q", err, list)
	}
	if js, err := ctl(t, append([]string{"forecast", "show", "web", "-o", "json"}, admin...)...); err != nil || !strings.Contains(js, `"scores"`) {
		t.Fatalf("forecast show -o json: %v\n%s", err, js)
	}
	if testing.Verbose() {
		t.Log("\n" + out)
	}

	// The mirroring manager: web turns predictive, its mirrors get nodes;
	// us (Brooklyn's heavy demand, 80 ms from paris, 4 ms from nyc) gets a
	// copy on nyc within a few buckets.
	if out, err := ctl(t, append([]string{"placements", "web"}, admin...)...); err != nil || !strings.Contains(out, "resource web: 0 placed") {
		t.Fatalf("placements before predictive mode: %v\n%s", err, out)
	}
	demo, err := os.ReadFile(forecastObjects)
	if err != nil {
		t.Fatal(err)
	}
	pred := strings.NewReplacer("address: 192.0.2.10}", "address: 192.0.2.10, node: host-paris}",
		"address: 192.0.2.20}", "address: 192.0.2.20, node: host-nyc}",
		"address: 192.0.2.30}", "address: 192.0.2.30, node: host-tokyo}").Replace(string(demo)) +
		"    mirror_policy: {mode: predictive, max_mirrors: 2}\n    thresholds: {mirror_score: 0.6, retire_score: 0.3}\n"
	predFile := filepath.Join(dir, "predictive.yaml")
	os.WriteFile(predFile, []byte(pred), 0o600)
	if out, err := ctl(t, append([]string{"apply", "-f", predFile}, admin...)...); err != nil {
		t.Fatalf("apply predictive: %v\n%s", err, out)
	}
	waitFor(t, "a copy of web placed on nyc", 40*time.Second, func() bool {
		out, err = ctl(t, append([]string{"placements", "web"}, admin...)...)
		return err == nil && strings.Contains(out, "resource web: 1 placed") && strings.Contains(out, "place  us on nyc (full")
	})
	if testing.Verbose() {
		t.Log("\n" + out)
	}
	if js, err := ctl(t, append([]string{"placements", "-o", "json"}, admin...)...); err != nil || !strings.Contains(js, `"nyc"`) || !strings.Contains(js, "MIRROR_KIND_FULL") {
		t.Fatalf("placements -o json: %v\n%s", err, js)
	}
}

// runForecastController runs a single-replica controller with 2-second
// forecast buckets in dir, waits until it accepts forecastObjects, and
// returns its address and a stop function that reports its exit error.
func runForecastController(t *testing.T, dir, certs string, extra ...string) (string, func()) {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- commands.Run(ctx, append([]string{"run", "--name", "solo", "--listen", addr, "--tls-dir", certs,
			"--data-dir", filepath.Join(dir, "etcd"), "--etcd-listen", freeAddr(t), "--etcd-peer-listen", freeAddr(t),
			"--metrics-addr", "", "--tick", "100ms", "--report-interval", "100ms",
			"--forecast-step", "2s", "--forecast-window", "16", "--forecast-horizon", "4", "--forecast-grace", "1s"}, extra...))
	}()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	admin := []string{"--server", addr, "--tls-dir", certs}
	waitFor(t, "controller serving", 30*time.Second, func() bool {
		_, err := ctl(t, append([]string{"apply", "-f", forecastObjects}, admin...)...)
		return err == nil
	})
	return addr, stop
}
