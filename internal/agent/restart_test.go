package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/pki"
)

// controllerTLS writes a certificate for node edge-test and its CA.
func controllerTLS(t *testing.T) TLSFiles {
	t.Helper()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("edge-test", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pki.WriteLeaf(filepath.Join(t.TempDir(), "tls"), "edge-test", ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	return TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
}

// TestRestartUnderControllerKeepsForwarding: an agent under a controller
// restarts while no controller answers and it has no usable state cache
// (none configured — the default —, the file lost, or damaged). The
// pinned maps hold the last version the previous agent applied, and
// forwarding must go on with them: the restart promise. Start applied the
// file's desired state first, which under a controller is empty, and
// deleted every VIP, route and mirror: VIP traffic was passed to the
// stack until a controller answered. Then it kept them but set the
// file's default region, none: clients of no listed prefix lost their
// region's routes.
func TestRestartUnderControllerKeepsForwarding(t *testing.T) {
	requireRoot(t)
	tlsFiles := controllerTLS(t)
	for _, tc := range []struct {
		name  string
		cache func(dir string) string // the state_cache path ("" : none)
	}{
		{"no state_cache", func(string) string { return "" }},
		{"cache file lost", func(dir string) string { return filepath.Join(dir, "state.pb") }},
		{"cache file damaged", func(dir string) string {
			p := filepath.Join(dir, "state.pb")
			if err := os.WriteFile(p, []byte("pmstate1 cut"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := agentNS(t)
			cfg, _ := testConfig(t, bpffsDir(t))
			first, err := startAgent(t, ns, cfg)
			if err != nil {
				t.Fatal(err)
			}
			inject(t, ns, udpFrame(t, ns, "192.0.2.1", 53)) // a flow with a session
			sessions := func(a *Agent) int {
				n, err := a.router.SessionCount()
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			deadline := time.Now().Add(3 * time.Second)
			for sessions(first) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			vips, _ := first.router.VIPs()
			mirrors, _ := first.router.Mirrors()
			settings, _ := first.router.Settings()
			routes, sess := len(first.router.Routes()), sessions(first)
			first.Close()

			next := *cfg
			next.State = DesiredState{}
			next.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: tlsFiles,
				StateCache: tc.cache(t.TempDir()), Utilization: "none"}
			if err := next.Validate(); err != nil {
				t.Fatal(err)
			}
			second, err := startAgent(t, ns, &next)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { second.Close(); Detach(cfg.PinDir, true) }()
			gotVIPs, _ := second.router.VIPs()
			gotMirrors, _ := second.router.Mirrors()
			if len(gotVIPs) != len(vips) || len(gotMirrors) != len(mirrors) || len(second.router.Routes()) != routes {
				t.Fatalf("after the restart the maps hold %d VIPs, %d mirrors, %d routes; before: %d, %d, %d",
					len(gotVIPs), len(gotMirrors), len(second.router.Routes()), len(vips), len(mirrors), routes)
			}
			// The default region is the previous agent's routing too:
			// the clients of no listed prefix keep their routes.
			if got, _ := second.router.Settings(); got.DefaultRegion != settings.DefaultRegion || settings.DefaultRegion == 0 {
				t.Fatalf("default region %d after the restart, %d before", got.DefaultRegion, settings.DefaultRegion)
			}
			if n := sessions(second); n != sess || sess == 0 {
				t.Fatalf("sessions %d after the restart, %d before", n, sess)
			}
		})
	}
}
