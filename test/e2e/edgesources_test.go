package e2e

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/lab"
	"github.com/premirror/premirror/internal/testbed"
)

// TestUnlistedEdgeRoutedAround: agents register their outer sources
// (edges) and decap_sources (mirror hosts); a host whose list leaves an
// edge out names it (edge_decap_source_unlisted, from the edges the
// controller lists) and the controller routes the edge's region to
// other mirrors, though the edge's probes of the host pass (probes are
// not tunnel packets).
// Listed (here by a restart with the new file), the series goes and the
// region comes back to its nearest mirror.
func TestUnlistedEdgeRoutedAround(t *testing.T) {
	e, bin := newControlled(t)
	armEU, _ := e.tb.Host("edge-eu").Iface("eth1")
	armUS, _ := e.tb.Host("edge-us").Iface("eth1")
	listUS := false
	e.lab.SetConfigHook(func(h *testbed.Host, c *agent.Config) error {
		if h.Name == "m-us" {
			c.DecapSources = []string{armEU.V4.String(), armEU.V6.String()}
			if listUS {
				c.DecapSources = append(c.DecapSources, armUS.V4.String(), armUS.V6.String())
			}
		}
		return nil
	})
	e.startController(lab.ControllerSetup{Bin: bin, Objects: controlledObjects(e.tb)})

	unlisted := func(host string) []string {
		m, err := e.lab.Metrics(host)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "edge_decap_source_unlisted{") {
				out = append(out, l)
			}
		}
		return out
	}
	named := func(ls []string, edge, addr string) bool {
		for _, l := range ls {
			if strings.Contains(l, `edge="`+edge+`"`) && strings.Contains(l, `address="`+addr+`"`) && strings.HasSuffix(l, " 1") {
				return true
			}
		}
		return false
	}
	var got []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = unlisted("m-us"); len(got) == 2 && named(got, "edge-us", armUS.V4.String()) && named(got, "edge-us", armUS.V6.String()) {
			break
		}
	}
	if len(got) != 2 || !named(got, "edge-us", armUS.V4.String()) || !named(got, "edge-us", armUS.V6.String()) {
		t.Fatalf("m-us names %q, want edge-us's %s and %s only", got, armUS.V4, armUS.V6)
	}
	// Hosts without decap_sources take any source: nothing to name.
	for _, h := range []string{"m-eu", "m-core"} {
		if ls := unlisted(h); len(ls) != 0 {
			t.Errorf("%s without decap_sources names %q", h, ls)
		}
	}
	// Once us has routes of its own (the wildcard goes to the origin
	// before), they avoid m-us (3 ms), which would drop its packets; eu
	// keeps m-eu. The controller knew m-us's list from its registration:
	// no packet of edge-us ever reached it.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if st, _ := e.lab.ControllerStatus(context.Background()); strings.Contains(st, " 0 unrouted") {
			break
		}
	}
	e.waitServed("eu-1", "tcp", "m-eu", 30*time.Second)
	for _, client := range []string{"us-1", "us-2"} {
		for _, network := range []string{"tcp", "udp"} {
			for _, vip := range []netip.Addr{vip4, vip6} {
				if got := e.askQuick(client, network, vip, time.Second); got == "" || got == "m-us" {
					t.Errorf("%s %s %s served by %q, want another mirror than m-us", client, network, vip, got)
				}
			}
		}
	}
	if n := decapCount(t, e, "m-us", "drop_source"); n != 0 {
		t.Errorf("m-us dropped %d tunnel packets of edge-us: the controller routed us there", n)
	}
	st, err := e.lab.ControllerStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(grepLines(st, "edge-us"), armUS.V4.String()+","+armUS.V6.String()) {
		t.Errorf("controller status lacks edge-us's outer sources:\n%s", st)
	}
	if !strings.Contains(st, "refused: mirror m-us for region us (its host's decap_sources leaves out edge edge-us)") {
		t.Errorf("controller status does not say why us avoids m-us:\n%s", st)
	}

	listUS = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.lab.Restart(ctx, "m-us"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = unlisted("m-us"); len(got) == 0 {
			break
		}
	}
	if len(got) != 0 {
		t.Fatalf("m-us still names %q with every edge listed", got)
	}
	e.waitServed("us-1", "tcp", "m-us", 30*time.Second)
	if n := decapCount(t, e, "m-us", "drop_source"); n != 0 {
		t.Errorf("m-us dropped %d tunnel packets of edge-us once it listed it", n)
	}
}
