package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/premirror/premirror/internal/maps"
)

// TestReloadAllOrNothing: a node of role both whose reload fails
// part-way keeps running the old configuration everywhere. The router's
// maps are written before the decap's; a reload that then failed (the
// decap interface lost its address, a decap map refused a write) left
// the router forwarding on the new routes while the agent's version,
// health and decap stayed on the old ones until the periodic resync.
// Now what can be refused is checked before the first write, and a
// write that fails puts the router back.
func TestReloadAllOrNothing(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		// breakIt makes the reload of the edited file fail.
		breakIt func(t *testing.T, ns netNS, pin string)
		// edit is applied to the file beside the route change.
		edit func(string) string
	}{
		{
			name: "decap interface without address",
			breakIt: func(t *testing.T, ns netNS, _ string) {
				ns.Do(func() {
					l, err := netlink.LinkByName("pa1")
					if err != nil {
						t.Fatal(err)
					}
					ad, _ := netlink.ParseAddr("10.78.0.1/24")
					if err := netlink.AddrDel(l, ad); err != nil {
						t.Fatal(err)
					}
				})
			},
			edit: func(s string) string { return s },
		},
		{
			name: "decap map write refused",
			// A frozen map refuses every write from user space: the new
			// source is refused after the router took the new routes.
			breakIt: func(t *testing.T, _ netNS, pin string) {
				m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "pm_decap_sources"), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				if err := m.Freeze(); err != nil {
					t.Fatal(err)
				}
			},
			edit: func(s string) string {
				return strings.Replace(s, "decap_sources: [10.77.0.0/24]", "decap_sources: [10.77.0.0/24, 10.79.0.0/24]", 1)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := agentNS(t)
			if err := ns.n.AddAddr("pa1", netip.MustParsePrefix("10.78.0.1/24")); err != nil {
				t.Fatal(err)
			}
			pin := bpffsDir(t)
			_, edgePath := testConfig(t, pin)
			b, err := os.ReadFile(edgePath)
			if err != nil {
				t.Fatal(err)
			}
			file := strings.Replace(string(b), "role: edge\ninterfaces: [pa0]\n",
				"role: both\nrouter_interfaces: [pa0]\ndecap_interfaces: [pa1]\ndecap_sources: [10.77.0.0/24]\n", 1)
			cfg, path := writeConfig(t, "both.yaml", file)
			var a *Agent
			ns.Do(func() { a = New(cfg, path, discardLogger()); err = a.Start() })
			if err != nil {
				t.Fatal(err)
			}
			defer func() { a.Close(); Detach(pin, true) }()
			us := maps.RouteKey{Resource: 7, Region: 2}
			oldShares := a.router.Routes()[us].Shares
			oldVersion := a.version
			oldSources, err := a.decap.Sources()
			if err != nil {
				t.Fatal(err)
			}

			tc.breakIt(t, ns, pin)
			edited := tc.edit(strings.Replace(file, "us: {dallas: 1}", "us: {dallas: 1, paris: 1}", 1))
			if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
				t.Fatal(err)
			}
			ns.Do(func() { err = a.Reload() })
			if err == nil {
				t.Fatal("reload succeeded, want it to fail")
			}
			if got := a.router.Routes()[us].Shares; !reflect.DeepEqual(got, oldShares) {
				t.Fatalf("router shares after the failed reload %v, want the running %v (%v)", got, oldShares, err)
			}
			if a.version != oldVersion {
				t.Fatalf("version %s after the failed reload, want %s", a.version, oldVersion)
			}
			if got, _ := a.decap.Sources(); !slices.Equal(got, oldSources) {
				t.Fatalf("decap sources %v after the failed reload, want %v", got, oldSources)
			}
			// What the agent believes the router holds is what it holds:
			// the next reconcile of the running state writes nothing.
			var ch Changes
			ns.Do(func() {
				st, _ := a.settings(a.cfg, a.compiled)
				ch, _, err = Reconcile(a.router, a.compiled, st, a.observed)
			})
			if err != nil || ch.Written+ch.Deleted != 0 {
				t.Fatalf("reconcile of the running state after the failed reload wrote %+v (%v), want nothing", ch, err)
			}
		})
	}
}
