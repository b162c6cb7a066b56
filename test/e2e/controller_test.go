package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/lab"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/testbed"
)

var controllerBin string

// buildController builds the controller once per run, into binDir.
func buildController(t *testing.T) string {
	t.Helper()
	if controllerBin == "" {
		var err error
		controllerBin, err = lab.BuildController(context.Background(), binDir)
		if err != nil {
			t.Fatal(err)
		}
	}
	return controllerBin
}

func ms(n int) testbed.Duration { return testbed.Duration(time.Duration(n) * time.Millisecond) }

// controlledTopology: two regions, each behind its own edge; three
// mirrors. Each edge (and its clients' return path) is 3 ms from its
// region's mirror, 10 ms from m-core and 30 ms from the far mirror.
func controlledTopology() testbed.Topology {
	t := testbed.Topology{
		VIPs:    []netip.Addr{vip4, vip6},
		Service: testbed.Service{TCPPorts: []uint16{tcpPort}, UDPPorts: []uint16{udpPort}},
		Regions: []testbed.Region{
			{Name: "eu", Edge: "edge-eu", Clients: 2, PrefixV4: netip.MustParsePrefix("10.1.0.0/24"), PrefixV6: netip.MustParsePrefix("fd00:1::/64")},
			{Name: "us", Edge: "edge-us", Clients: 2, PrefixV4: netip.MustParsePrefix("10.2.0.0/24"), PrefixV6: netip.MustParsePrefix("fd00:2::/64")},
		},
		Edges:   []testbed.Edge{{Name: "edge-eu", Arms: 2}, {Name: "edge-us", Arms: 2}},
		Mirrors: []testbed.Mirror{{Name: "m-eu"}, {Name: "m-us"}, {Name: "m-core"}},
	}
	for _, r := range []string{"eu", "us"} {
		far := map[string]string{"eu": "us", "us": "eu"}[r]
		for _, end := range []string{r, "edge-" + r} {
			t.Delays = append(t.Delays,
				testbed.Delay{A: end, B: "m-" + r, OneWay: ms(3)},
				testbed.Delay{A: end, B: "m-core", OneWay: ms(10)},
				testbed.Delay{A: end, B: "m-" + far, OneWay: ms(30)})
		}
		t.Delays = append(t.Delays, testbed.Delay{A: r, B: "edge-" + r, OneWay: ms(1)})
	}
	return t
}

// controlledSitesMirrors is the sites and mirrors part of the controlled
// tests' objects: one site per region, m-core in eu, every mirror with
// its agent's node.
func controlledSitesMirrors(tb *testbed.Testbed) string {
	addr := func(h string) string { return tb.Host(h).V4().String() }
	return fmt.Sprintf(`sites:
  - {name: eu, client_prefixes: [10.1.0.0/24, "fd00:1::/64"]}
  - {name: us, client_prefixes: [10.2.0.0/24, "fd00:2::/64"]}
mirrors:
  - {name: m-eu, site: eu, address: %s, node: m-eu}
  - {name: m-us, site: us, address: %s, node: m-us}
  - {name: m-core, site: eu, address: %s, node: m-core}
`, addr("m-eu"), addr("m-us"), addr("m-core"))
}

func controlledObjects(tb *testbed.Testbed) string {
	return controlledSitesMirrors(tb) + fmt.Sprintf(`resources:
  - {name: web, vips: [%s, "%s"], ports: [%d], protocol: tcp, origin: m-core, mirror_policy: {mirrors: [m-eu, m-us]}}
  - {name: web-udp, vips: [%s, "%s"], ports: [%d], protocol: udp, origin: m-core, mirror_policy: {mirrors: [m-eu, m-us]}}
`, vip4, vip6, tcpPort, vip4, vip6, udpPort)
}

// startControlled runs the controller (in edge-eu's namespace) and an
// agent on every edge and mirror under it, with fast probes and damping
// shortened so the test takes seconds, not minutes.
func startControlled(t *testing.T) *env {
	t.Helper()
	e, bin := newControlled(t)
	e.startController(lab.ControllerSetup{Bin: bin, Objects: controlledObjects(e.tb)})
	return e
}

// startController runs s's controller in edge-eu's namespace, with the
// controlled tests' sites, intervals and flags (s.Args come after them),
// then an agent on every edge and mirror: agents report every 300 ms and
// probe every 250 ms (unless s.ProbeInterval says otherwise), the
// controller ticks every 200 ms, and the damping
// is shortened so that a move takes about a second.
func (e *env) startController(s lab.ControllerSetup) {
	e.t.Helper()
	s.Host = "edge-eu"
	s.Args = append([]string{"--tick", "200ms", "--report-interval", "300ms", "--route-dwell", "1s", "--route-slow-start", "1ms",
		"--route-max-move", "1", "--table-slots", "1024"}, s.Args...)
	s.Sites = map[string]string{"edge-eu": "eu", "edge-us": "us", "m-eu": "eu", "m-us": "us", "m-core": "eu"}
	if s.ProbeInterval == 0 {
		s.ProbeInterval = 250 * time.Millisecond
	}
	s.ReportInterval = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.lab.StartController(ctx, s); err != nil {
		e.t.Fatal(err)
	}
	if err := e.lab.StartAll(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// newControlled builds the controller and the testbed of
// controlledTopology with a lab on it (no process started yet) that is
// closed, leak-checked and dumped on failure at the end of the test; it
// returns the controller binary too.
func newControlled(t *testing.T) (*env, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, XDP, bpffs")
	}
	bin := buildController(t)
	testbed.VerifyNoLeaks(t, testbed.LeakOptions{PinDir: "/sys/fs/bpf"})
	tb := testbed.ForTest(t, controlledTopology(), testbed.Options{})
	l := lab.New(tb, agentBin, t.TempDir(), lab.StateFromTopology(tb), nil)
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	e := &env{t: t, tb: tb, lab: l}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log:\n%s", l.ControllerLog())
			st, _ := l.ControllerStatus(context.Background())
			t.Logf("controller status:\n%s", st)
		}
	})
	e.dumpOnFailure()
	return e, bin
}

// askQuick opens a flow and returns who served it ("" on failure).
func (e *env) askQuick(client, network string, vip netip.Addr, timeout time.Duration) string {
	port := tcpPort
	if network == "udp" {
		port = udpPort
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := e.tb.Host(client).Dial(ctx, network, netip.AddrPortFrom(vip, uint16(port)).String())
	if err != nil {
		return ""
	}
	defer c.Close()
	var r testbed.Reply
	if network == "udp" {
		r, err = testbed.AskUDP(ctx, c, "who")
	} else {
		r, err = testbed.Ask(ctx, c, "who")
	}
	if err != nil {
		return ""
	}
	return r.Mirror
}

// waitServed polls new flows from client until want serves one; it returns
// how long that took.
func (e *env) waitServed(client, network, want string, within time.Duration) time.Duration {
	e.t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < within {
		if last = e.askQuick(client, network, vip4, 300*time.Millisecond); last == want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("%s %s still served by %q after %v, want %s", client, network, last, within, want)
	return 0
}

// waitSettled waits until the controller's last routes have none in panic
// and client is served by want three times in a row.
func (e *env) waitSettled(t *testing.T, client, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	ok := 0
	for ok < 3 {
		if time.Now().After(deadline) {
			st, _ := e.lab.ControllerStatus(e.ctx())
			t.Fatalf("routes did not settle on %s for %s within %v:\n%s", want, client, within, st)
		}
		st, err := e.lab.ControllerStatus(e.ctx())
		if err == nil && strings.Contains(st, " 0 in panic") && e.askQuick(client, "tcp", vip4, 300*time.Millisecond) == want {
			ok++
		} else {
			ok = 0
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestControllerRouting: the controller routes each region to its best
// mirror from the edges' probes; a slower link moves new flows (not
// established ones) within the damping rules; a dead mirror fails over;
// traffic goes on with the controller gone, and agents converge when it
// comes back.
func TestControllerRouting(t *testing.T) {
	e := startControlled(t)
	e.waitServed("eu-1", "tcp", "m-eu", 30*time.Second)
	e.waitServed("us-1", "tcp", "m-us", 30*time.Second)
	for _, vip := range []netip.Addr{vip4, vip6} {
		for _, c := range []struct{ client, want string }{{"eu-2", "m-eu"}, {"us-2", "m-us"}} {
			if got := e.askQuick(c.client, "udp", vip, time.Second); got != c.want {
				t.Errorf("%s udp %s served by %q, want %s", c.client, vip, got, c.want)
			}
		}
	}

	t.Run("slower link moves new flows only", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		streams := e.openStreams(ctx, "eu-1", vip4, 2)
		for _, s := range streams {
			if s.servedBy() != "m-eu" {
				t.Fatalf("stream on %s before the change", s.servedBy())
			}
		}
		for _, end := range []string{"eu", "edge-eu"} {
			if err := e.tb.SetDelay(end, "m-eu", 40*time.Millisecond); err != nil {
				t.Fatal(err)
			}
		}
		took := e.waitServed("eu-2", "tcp", "m-core", 30*time.Second)
		t.Logf("new flows moved from m-eu (now 80 ms RTT) to m-core (20 ms) %v after the link slowed", took.Round(time.Millisecond))
		// The edge's latency metrics say why: m-eu's smoothed RTT is the
		// new 80 ms, m-core's floor the 20 ms of its path.
		rtt := e.waitMirrorMetric("edge-eu", "edge_mirror_rtt_seconds", "m-eu", func(v float64) bool { return v >= 0.075 && v < 0.2 })
		floor := e.waitMirrorMetric("edge-eu", "edge_mirror_rtt_min_seconds", "m-core", func(v float64) bool { return v >= 0.018 && v < 0.06 })
		t.Logf("edge-eu's metrics: m-eu RTT %.1f ms, m-core floor %.1f ms", rtt*1000, floor*1000)
		time.Sleep(300 * time.Millisecond)
		cancel()
		finish(t, streams)
		for _, s := range streams {
			if s.servedBy() != "m-eu" {
				t.Errorf("established stream moved to %s", s.servedBy())
			}
		}
	})

	t.Run("dead mirror fails over", func(t *testing.T) {
		// The us region is on m-us. Cut m-us off from everyone.
		for _, h := range e.tb.Hosts() {
			if h.Name != "m-us" {
				if err := e.tb.SetLoss(h.Name, "m-us", 1); err != nil {
					t.Fatal(err)
				}
			}
		}
		took := e.waitServed("us-1", "udp", "m-core", 30*time.Second)
		t.Logf("failover: new flows of us served by m-core %v after m-us died (probe interval 250 ms)", took.Round(time.Millisecond))
	})

	t.Run("controller away, agents restart on cached state", func(t *testing.T) {
		// The agents keep the last state they were sent: make it the
		// settled one (no route in panic: a panic table spreads eu over
		// every candidate, the dead m-us included).
		e.waitSettled(t, "eu-1", "m-core", 30*time.Second)
		if err := e.lab.StopController(); err != nil {
			t.Fatal(err)
		}
		// Every certificate is renewed meanwhile: the agents that keep
		// running reconnect with theirs, re-read from the files.
		if err := e.lab.RenewCerts(e.ctx()); err != nil {
			t.Fatal(err)
		}
		if got := e.askQuick("eu-1", "tcp", vip4, 2*time.Second); got != "m-core" {
			t.Fatalf("without the controller eu served by %q", got)
		}
		if err := e.lab.Restart(e.ctx(), "edge-us"); err != nil {
			t.Fatal(err)
		}
		if got := e.askQuick("us-1", "tcp", vip4, 2*time.Second); got != "m-core" {
			t.Fatalf("restarted edge without the controller: us served by %q, want m-core (cached state)", got)
		}
		// m-us comes back too: every agent must converge.
		for _, h := range e.tb.Hosts() {
			if h.Name != "m-us" {
				if err := e.tb.SetLoss(h.Name, "m-us", 0); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := e.lab.RestartController(e.ctx()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := e.lab.ControllerStatus(e.ctx())
			if err == nil && allAcked(st, 5) {
				t.Logf("after the controller restart:\n%s", st)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("agents did not converge: %v\n%s", err, st)
			}
			time.Sleep(200 * time.Millisecond)
		}
		m, err := e.lab.Metrics("edge-eu")
		if err != nil {
			t.Fatal(err)
		}
		loaded := regexp.MustCompile(`premirror_tls_reloads_total\{channel="controller",result="loaded"\} [1-9]`)
		if !loaded.MatchString(m) || !strings.Contains(m, `premirror_tls_files_stale{channel="controller"} 0`) {
			t.Fatalf("edge-eu did not take its renewed certificate:\n%s", grepLines(m, "premirror_tls_"))
		}
	})
}

// waitMirrorMetric polls host's agent until its per-mirror gauge name for
// mirror satisfies ok, and returns the value.
func (e *env) waitMirrorMetric(host, name, mirror string, ok func(float64) bool) float64 {
	e.t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m, err := e.lab.Metrics(host)
		if err != nil {
			last = err.Error()
			continue
		}
		for _, l := range strings.Split(m, "\n") {
			if !strings.HasPrefix(l, name+"{") || !strings.Contains(l, `mirror="`+mirror+`"`) {
				continue
			}
			last = l
			f := strings.Fields(l)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && ok(v) {
				return v
			}
		}
	}
	e.t.Fatalf("%s: %s for %s never as expected; last: %s", host, name, mirror, last)
	return 0
}

// allAcked reports whether `controller status` shows n connected agents
// that acknowledged the current version.
func allAcked(status string, n int) bool {
	var cur string
	cols := map[string]int{}
	ok := 0
	for _, l := range strings.Split(status, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "version:":
			cur = f[1]
		case len(f) > 0 && f[0] == "NODE":
			for i, c := range f {
				cols[c] = i
			}
		case len(cols) > 0 && len(f) == len(cols):
			if f[cols["CONNECTED"]] == "true" && f[cols["ACKED"]] == cur && cur != "" {
				ok++
			}
		}
	}
	return ok >= n
}

// TestFailoverAtDefaultProbeInterval: with the agents' default probe
// timing (every mirror every 2 s, the mirrors carrying the edge's traffic
// every 400 ms), a dead mirror in use leaves the tables, and new flows
// move, within about a second.
func TestFailoverAtDefaultProbeInterval(t *testing.T) {
	e, bin := newControlled(t)
	e.startController(lab.ControllerSetup{Bin: bin, Objects: controlledObjects(e.tb), ProbeInterval: probe.DefaultInterval})
	e.waitServed("us-1", "udp", "m-us", 30*time.Second)
	// Let every edge's estimates settle (a few active probes).
	time.Sleep(2 * time.Second)
	for _, h := range e.tb.Hosts() {
		if h.Name != "m-us" {
			if err := e.tb.SetLoss(h.Name, "m-us", 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	took := e.waitServed("us-1", "udp", "m-core", 30*time.Second)
	t.Logf("failover at the default probe timing (%v, active mirrors %v): new flows of us served by m-core %v after m-us died",
		probe.DefaultInterval, probe.DefaultActiveInterval, took.Round(time.Millisecond))
}

// TestDeadServiceMovesResource: the mirror host checks the services of
// the resources its mirrors hold; when eu's mirror stops serving web (its
// listeners closed, the host and its decap program still up, so the
// edges' probes still see it), eu's new flows move to the next copy, and
// come back once the service does.
func TestDeadServiceMovesResource(t *testing.T) {
	e, bin := newControlled(t)
	e.startController(lab.ControllerSetup{Bin: bin, Objects: controlledObjects(e.tb), ServiceCheckInterval: 200 * time.Millisecond})
	e.waitSettled(t, "eu-1", "m-eu", 30*time.Second)

	if err := e.tb.Service("m-eu").Close(); err != nil {
		t.Fatal(err)
	}
	took := e.waitServed("eu-2", "tcp", "m-core", 30*time.Second)
	t.Logf("web moved off m-eu %v after its service stopped (checks every 200 ms, fall 3)", took.Round(time.Millisecond))
	if got := e.askQuick("eu-1", "tcp", vip6, time.Second); got != "m-core" {
		t.Errorf("eu-1 over IPv6 served by %q, want m-core", got)
	}
	if got := e.askQuick("us-1", "tcp", vip4, time.Second); got != "m-us" {
		t.Errorf("us-1 served by %q, want m-us (its own mirror serves)", got)
	}
	if st, err := e.lab.ControllerStatus(e.ctx()); err != nil || !strings.Contains(st, "unserved: web on mirror m-eu") {
		t.Errorf("controller status does not say why (%v):\n%s", err, st)
	}

	if err := e.tb.RestartService("m-eu"); err != nil {
		t.Fatal(err)
	}
	took = e.waitServed("eu-2", "tcp", "m-eu", 60*time.Second)
	t.Logf("web back on m-eu %v after its service returned (rise 2)", took.Round(time.Millisecond))
}

// TestDrainKeepsEstablishedFlows: `controller drain node` on a mirror's
// host moves its region's new flows to another copy at once, while the TCP
// streams already open to it keep every byte and their mirror;
// `controller status` says so; undrain brings new flows back.
func TestDrainKeepsEstablishedFlows(t *testing.T) {
	e, bin := newControlled(t)
	e.startController(lab.ControllerSetup{Bin: bin, Objects: controlledObjects(e.tb)})
	e.waitSettled(t, "eu-1", "m-eu", 30*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	streams := append(e.openStreams(ctx, "eu-1", vip4, 2), e.openStreams(ctx, "eu-2", vip6, 1)...)
	for _, s := range streams {
		if s.servedBy() != "m-eu" {
			t.Fatalf("stream on %s before the drain", s.servedBy())
		}
	}
	out, err := e.lab.ControllerCommand(e.ctx(), "drain", "node", "m-eu")
	if err != nil || !strings.Contains(string(out), "mirror/m-eu draining (was active)") {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	took := e.waitServed("eu-2", "tcp", "m-core", 30*time.Second)
	t.Logf("new flows left the drained m-eu %v after the drain", took.Round(time.Millisecond))
	if got := e.askQuick("eu-1", "udp", vip6, time.Second); got != "m-core" {
		t.Errorf("eu-1 udp over IPv6 served by %q after the drain, want m-core", got)
	}
	if st, err := e.lab.ControllerStatus(e.ctx()); err != nil || !strings.Contains(st, "draining: mirror m-eu") {
		t.Errorf("controller status does not list the drained mirror (%v):\n%s", err, st)
	}
	time.Sleep(500 * time.Millisecond) // the streams keep echoing through the drained mirror
	cancel()
	finish(t, streams)
	for _, s := range streams {
		if s.servedBy() != "m-eu" {
			t.Errorf("established stream moved to %s", s.servedBy())
		}
	}

	if out, err := e.lab.ControllerCommand(e.ctx(), "undrain", "node", "m-eu"); err != nil || !strings.Contains(string(out), "mirror/m-eu active (was draining)") {
		t.Fatalf("undrain: %v\n%s", err, out)
	}
	took = e.waitServed("eu-2", "tcp", "m-eu", 120*time.Second)
	t.Logf("new flows back on m-eu %v after the undrain (the route's dwell)", took.Round(time.Millisecond))
}
