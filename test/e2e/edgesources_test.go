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
// region comes back to its nearest mirror; narrowed again by a reload,
// the region leaves it (the window is logged for docs/BENCHMARKS.md).
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

	// edge-us's route for (web, us), from inspect: web and us are the
	// first resource and the second site applied (IDs 1 and 2), m-us's
	// ID is the MIRROR line with its address.
	routeOffMUS := func() bool {
		out, _ := e.tb.Host("edge-us").Run(ctx, agentBin, "inspect", "--pin-dir", e.lab.PinDir("edge-us"))
		mUS, off := "", false
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			switch {
			case len(f) == 4 && f[1] == e.tb.Host("m-us").V4().String():
				mUS = f[0] + "="
			case len(f) >= 4 && f[0] == "1" && f[1] == "2" && mUS != "" && strings.Contains(l, "%"):
				off = !strings.Contains(l, " "+mUS)
			}
		}
		return off
	}
	// After its restart m-us's service check starts over: wait until
	// the route is on m-us again before narrowing.
	for deadline := time.Now().Add(30 * time.Second); routeOffMUS(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("edge-us's route for us never came back to m-us")
		}
	}
	// Narrowed by a reload: m-us drops edge-us's packets at once and
	// reports its list at once; us moves off m-us within a report, a
	// tick and a push (the window ARCHITECTURE states; logged for
	// docs/BENCHMARKS.md, not asserted).
	listUS = false
	start := time.Now()
	if err := e.lab.Reload(ctx, "m-us"); err != nil {
		t.Fatal(err)
	}
	applied := time.Since(start)
	var moved time.Duration
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if routeOffMUS() {
			moved = time.Since(start)
			break
		}
	}
	if moved == 0 {
		t.Fatal("edge-us still routes us to m-us 30 s after m-us narrowed its decap_sources")
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if got := e.askQuick("us-1", "tcp", vip4, time.Second); got != "" && got != "m-us" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("us-1 not served by another mirror after the route moved")
		}
	}
	t.Logf("narrowed decap_sources: applied by m-us after %v, edge-us's route for us off m-us after %v",
		applied.Round(time.Millisecond), moved.Round(time.Millisecond))
}
