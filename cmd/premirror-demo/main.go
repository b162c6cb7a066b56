// Command premirror-demo builds a three-region testbed with an XDP edge
// router and four mirrors, runs the real edge agent on every node with a
// static configuration, drives client traffic from every region, prints
// which mirror served each region, the RTT seen and the counters, shows a
// bpftool dump of a pinned map, and removes everything. `make demo` runs it.
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/lab"
	"github.com/premirror/premirror/internal/testbed"
)

type config struct {
	topology string
	agentBin string
	ctlBin   string
	duration time.Duration
	static   bool
	verbose  bool
	logs     string
}

func main() {
	var c config
	self, _ := os.Executable()
	flag.StringVar(&c.topology, "topology", "cmd/premirror-demo/topology.yaml", "testbed topology (YAML)")
	flag.StringVar(&c.agentBin, "agent", filepath.Join(filepath.Dir(self), "edge-agent"), "edge-agent binary")
	flag.StringVar(&c.ctlBin, "controller", filepath.Join(filepath.Dir(self), "controller"), "controller binary")
	flag.DurationVar(&c.duration, "duration", 30*time.Second, "how long to drive client traffic (split around the link change)")
	flag.BoolVar(&c.static, "static", false, "no controller: the agents' static route tables only")
	flag.StringVar(&c.logs, "logs", "", "keep the agents' and controller's configs and logs in this directory")
	flag.BoolVar(&c.verbose, "v", false, "log testbed and agent progress")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		slog.Error("demo failed", "err", err)
		os.Exit(1)
	}
}

const (
	tcpPort = 8080
	udpPort = 8053
	// predPort serves vm-disk-9, the resource of the predictive phase.
	predPort = 8081
)

func run(ctx context.Context, c config, out io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces, XDP, bpffs): run it with sudo")
	}
	level := slog.LevelWarn
	if c.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	start := time.Now()
	topo, err := testbed.LoadTopology(c.topology)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "== premirror demo: %d regions, %d edges, %d mirrors (%s)\n", len(topo.Regions), len(topo.Edges), len(topo.Mirrors), c.topology)
	tb, err := testbed.New(ctx, topo, testbed.Options{Logger: log, NoSignalHandler: true})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := tb.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Fprintf(out, "\n== cleaned up: namespaces, links, pins and processes removed (%.1fs in all)\n", time.Since(start).Seconds())
	}()

	state := lab.StateFromTopology(tb)
	state.DefaultRegion = topo.Regions[0].Name
	var vips []string
	for _, v := range topo.VIPs {
		vips = append(vips, netip.AddrPortFrom(v, tcpPort).String()+"/tcp", netip.AddrPortFrom(v, udpPort).String()+"/udp")
	}
	// Static mode: every region to its own mirror 75%, m-core 25%.
	routes := map[string]map[string]uint32{"*": {"m-core": 1}}
	for _, r := range topo.Regions {
		routes[r.Name] = map[string]uint32{"m-" + r.Name: 3, "m-core": 1}
	}
	state.Resources = []agent.Resource{{Name: "vm-disk-7", ID: 7, VIPs: vips, Routes: routes}}

	dir := c.logs
	if dir == "" {
		if dir, err = os.MkdirTemp("", "premirror-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	l := lab.New(tb, c.agentBin, dir, state, log)
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	first := tb.Edges()[0]
	if !c.static {
		sites := map[string]string{"m-core": topo.Regions[0].Name}
		for _, r := range topo.Regions {
			sites[r.Edge] = r.Name
			sites["m-"+r.Name] = r.Name
		}
		err := l.StartController(ctx, lab.ControllerSetup{
			Bin: c.ctlBin, Host: first.Name, Objects: objects(tb, topo),
			// Damping shortened so the demo shows a move in seconds: a
			// challenger still has to be 10% and 5 ms better three times,
			// but dwell is 5 s, and slow start and the slew limit are off.
			// Forecast buckets of 2 s instead of an hour, so the
			// predictive phase takes seconds.
			Args: []string{"--tick", "500ms", "--report-interval", "500ms", "--route-dwell", "5s",
				"--route-slow-start", "1ms", "--route-max-move", "1", "--table-slots", "1024",
				"--forecast-step", "2s", "--forecast-window", "16", "--forecast-horizon", "4", "--forecast-grace", "1s"},
			Sites: sites, ProbeInterval: 500 * time.Millisecond, ReportInterval: 500 * time.Millisecond,
			ServiceCheckInterval: 500 * time.Millisecond,
			// The demo's UDP service answers every datagram: any payload
			// is a question it answers.
			ServiceCheckUDP: &agent.UDPCheckCfg{Ports: []int{udpPort}, Send: hex.EncodeToString([]byte("health"))},
			Replicators:     []string{"m-core", predMirror},
		})
		if err != nil {
			return err
		}
		if err := replicationSetup(l, dir); err != nil {
			return err
		}
		fmt.Fprintf(out, "== controller leading in %s's namespace (embedded etcd, mutual TLS); objects applied (%.1fs)\n", first.Name, time.Since(start).Seconds())
	}
	if err := l.StartAll(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "== agents running: XDP router on %d edges, XDP decap on %d mirrors (%.1fs)\n", len(tb.Edges()), len(tb.Mirrors()), time.Since(start).Seconds())

	if c.static {
		fmt.Fprintf(out, "   static route table: each region → its own mirror 75%%, m-core 25%%\n")
		fmt.Fprintf(out, "== driving TCP and UDP, IPv4 and IPv6, from every client for %v\n", c.duration)
		report(out, topo, drive(ctx, tb, topo, c.duration))
	} else {
		for _, r := range topo.Regions {
			// Five flows in a row on the region's mirror: the table settled.
			for i := 0; i < 5; i++ {
				if _, err := waitServed(ctx, tb.Clients(r.Name)[i%2], "m-"+r.Name, 60*time.Second); err != nil {
					return fmt.Errorf("region %s: %w\n%s", r.Name, err, l.ControllerLog())
				}
			}
		}
		// And no route still moving: no new version for three seconds.
		calmBy := time.Now().Add(60 * time.Second)
		lastVersion, since := "", time.Now()
		for time.Since(since) < 3*time.Second {
			st, _ := l.ControllerStatus(ctx)
			if v := statusVersion(st); v != lastVersion {
				lastVersion, since = v, time.Now()
			}
			if time.Now().After(calmBy) {
				return fmt.Errorf("routes still changing after a minute:\n%s", st)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		fmt.Fprintf(out, "== the controller routed every region to its nearest mirror from the edges' probes (%.1fs)\n", time.Since(start).Seconds())
		half := c.duration / 2
		fmt.Fprintf(out, "== phase 1: TCP and UDP, IPv4 and IPv6, from every client for %v\n", half)
		report(out, topo, drive(ctx, tb, topo, half))

		slow := topo.Regions[0].Name
		mirror := "m-" + slow
		// A long-lived TCP stream, opened before the link changes.
		sctx, stopStream := context.WithCancel(ctx)
		defer stopStream()
		type streamResult struct {
			res testbed.EchoResult
			err error
		}
		streamDone := make(chan streamResult, 1)
		conn, err := tb.Clients(slow)[0].Dial(ctx, "tcp", netip.AddrPortFrom(topo.VIPs[0], tcpPort).String())
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			r, err := testbed.Echo(sctx, conn.(*net.TCPConn), 1024, 20*time.Millisecond, nil)
			streamDone <- streamResult{r, err}
		}()
		fmt.Fprintf(out, "\n== the link between %s and %s gets slower: 4 ms → 60 ms one way\n", slow, mirror)
		for _, end := range []string{slow, topo.Regions[0].Edge} {
			if err := tb.SetDelay(end, mirror, 60*time.Millisecond); err != nil {
				return err
			}
		}
		moved := make(chan time.Duration, 1)
		go func() {
			d, err := waitServed(ctx, tb.Clients(slow)[1], "m-core", 60*time.Second)
			if err != nil {
				d = -1
			}
			moved <- d
		}()
		fmt.Fprintf(out, "== phase 2: the same traffic for %v\n", c.duration-half)
		res := drive(ctx, tb, topo, c.duration-half)
		report(out, topo, res)
		if d := <-moved; d >= 0 {
			fmt.Fprintf(out, "   %s's new flows moved to m-core %.1fs after the slowdown (probes every 0.5 s; a challenger must win 3 evaluations by 10%% and 5 ms)\n",
				slow, d.Seconds())
		} else {
			fmt.Fprintf(out, "   %s did not move within a minute\n", slow)
		}
		stopStream()
		sr := <-streamDone
		switch {
		case sr.err != nil:
			fmt.Fprintf(out, "   the stream opened before the slowdown broke: %v\n", sr.err)
		default:
			fmt.Fprintf(out, "   the TCP stream opened before the slowdown stayed on %s: %d bytes sent, %d echoed back, no reset\n",
				sr.res.Mirror, sr.res.Sent, sr.res.Received)
		}
		if err := predictivePhase(ctx, out, l, tb, topo, dir); err != nil {
			return err
		}
		if err := servicePhase(ctx, out, l, tb, topo); err != nil {
			return err
		}
		st, _ := l.ControllerStatus(ctx)
		fmt.Fprintf(out, "\n== controller status\n%s", indent(st))
	}

	cfgPath := l.Agent(first.Name).Config
	args := []string{"inspect", "--pin-dir", l.PinDir(first.Name), "--sessions", "5", "--config", cfgPath}
	insp, ierr := first.Run(ctx, c.agentBin, args...)
	fmt.Fprintf(out, "\n== edge-agent inspect (%s)\n%s", first.Name, indent(string(insp)))
	if ierr != nil {
		return fmt.Errorf("inspect: %w", ierr)
	}
	if bt, err := exec.LookPath("bpftool"); err == nil {
		pin := l.PinDir(first.Name)
		for _, args := range [][]string{
			{"map", "lookup", "pinned", filepath.Join(pin, "pm_mirrors"), "key", "1", "0", "0", "0"},
			{"map", "dump", "pinned", filepath.Join(pin, "pm_route_index")},
		} {
			dump, derr := exec.CommandContext(ctx, bt, args...).CombinedOutput()
			fmt.Fprintf(out, "\n== bpftool %s\n%s", strings.Join(args, " "), indent(firstLines(string(dump), 24)))
			if derr != nil {
				return fmt.Errorf("bpftool: %w", derr)
			}
		}
	}
	return nil
}

// servicePhase stops the service behind the VIPs on the second region's
// mirror, host and decap program still up (the edges' probes see nothing),
// and shows the mirror host's service checks moving the region's TCP
// flows to m-core, and back once the service returns.
func servicePhase(ctx context.Context, out io.Writer, l *lab.Lab, tb *testbed.Testbed, topo testbed.Topology) error {
	region := topo.Regions[1].Name
	mirror, client := "m-"+region, tb.Clients(region)[0]
	wait := func(network, want string) (time.Duration, error) {
		start := time.Now()
		for last := ""; time.Since(start) < time.Minute; {
			if s := ask(ctx, client, network, topo.VIPs[0]); s.ok {
				last = s.mirror
			}
			if last == want {
				return time.Since(start), nil
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		return 0, fmt.Errorf("%s: %s not served by %s within a minute\n%s", region, network, want, l.ControllerLog())
	}
	waitTCP := func(want string) (time.Duration, error) { return wait("tcp", want) }
	fmt.Fprintf(out, "\n== phase 4: the service on %s stops (its sockets close; the host, its decap program and the probes are fine)\n", mirror)
	if err := tb.Service(mirror).Close(); err != nil {
		return err
	}
	d, err := waitTCP("m-core")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   %.1fs: %s's new TCP flows are served by m-core: %s's agent found no listener on the VIPs 3 checks in a row (every 0.5 s) and reported it\n",
		d.Seconds(), region, mirror)
	if d, err = wait("udp", "m-core"); err != nil {
		return err
	}
	fmt.Fprintf(out, "   +%.1fs: and its UDP flows too: the check's datagram to the UDP VIPs got no reply (service_check.udp)\n", d.Seconds())
	if st, err := l.ControllerStatus(ctx); err == nil {
		for _, line := range strings.Split(st, "\n") {
			if strings.HasPrefix(line, "unserved:") {
				fmt.Fprintf(out, "   controller status: %s\n", line)
			}
		}
	}
	if err := tb.RestartService(mirror); err != nil {
		return err
	}
	if d, err = waitTCP(mirror); err != nil {
		return err
	}
	du, err := wait("udp", mirror)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   %.1fs after it listens again, %s serves %s's new TCP flows again, and %.1fs later its UDP flows (2 passing checks, then each route's dwell)\n",
		d.Seconds(), mirror, region, du.Seconds())

	// The same host, drained by the operator before a reboot.
	fmt.Fprintf(out, "\n== phase 5: the operator drains %s's host before a reboot: controller drain node %s\n", mirror, mirror)
	b, err := l.ControllerCommand(ctx, "drain", "node", mirror)
	if err != nil {
		return fmt.Errorf("controller drain: %w\n%s", err, b)
	}
	if first, _, _ := strings.Cut(string(b), "\n"); first != "" {
		fmt.Fprintf(out, "   %s\n", first)
	}
	if d, err = waitTCP("m-core"); err != nil {
		return err
	}
	fmt.Fprintf(out, "   %.1fs: %s's new TCP flows go to m-core; flows already on %s stay there until they end\n", d.Seconds(), region, mirror)
	if b, err = l.ControllerCommand(ctx, "undrain", "node", mirror); err != nil {
		return fmt.Errorf("controller undrain: %w\n%s", err, b)
	}
	if first, _, _ := strings.Cut(string(b), "\n"); first != "" {
		fmt.Fprintf(out, "   controller undrain node %s: %s\n", mirror, first)
	}
	// Not waited for: the route comes back once its dwell allows, and the
	// dwell doubles with each switch of the last half hour (this route
	// has switched several times in this demo), against flapping.
	fmt.Fprintf(out, "   %s's new TCP flows return to %s when the route's dwell allows (doubled by each recent switch: anti-flapping)\n", region, mirror)
	return nil
}

// objects are the controller's sites, mirrors and resources for topo.
func objects(tb *testbed.Testbed, topo testbed.Topology) string {
	var b strings.Builder
	b.WriteString("sites:\n")
	for _, r := range topo.Regions {
		fmt.Fprintf(&b, "  - {name: %s, client_prefixes: [%s, %q]}\n", r.Name, r.PrefixV4, r.PrefixV6.String())
	}
	b.WriteString("mirrors:\n")
	var policy []string
	for _, m := range tb.Mirrors() {
		site := strings.TrimPrefix(m.Name, "m-")
		if site == "core" {
			site = topo.Regions[0].Name
		} else {
			policy = append(policy, m.Name)
		}
		fmt.Fprintf(&b, "  - {name: %s, site: %s, address: %s, node: %s}\n", m.Name, site, m.V4(), m.Name)
	}
	var v []string
	for _, a := range topo.VIPs {
		v = append(v, fmt.Sprintf("%q", a.String()))
	}
	b.WriteString("resources:\n")
	// vm-disk-9 lives on m-core only; the mirroring manager may copy it
	// to ap's mirror when ap's demand makes the copy pay (phase 3).
	fmt.Fprintf(&b, "  - {name: %s, vips: [%s], ports: [%d], protocol: tcp, origin: m-core, size_bytes: %d, "+
		"mirror_policy: {mode: predictive, sites: [%s], max_mirrors: 2}, thresholds: {mirror_score: 0.6, retire_score: 0.3, max_lag: 30s}}\n",
		predResource, strings.Join(v, ", "), predPort, predSize, predRegion)
	for _, r := range []struct {
		name, proto string
		port        int
	}{{"vm-disk-7", "tcp", tcpPort}, {"vm-disk-7-udp", "udp", udpPort}} {
		fmt.Fprintf(&b, "  - {name: %s, vips: [%s], ports: [%d], protocol: %s, origin: m-core, mirror_policy: {mirrors: [%s]}}\n",
			r.name, strings.Join(v, ", "), r.port, r.proto, strings.Join(policy, ", "))
	}
	return b.String()
}

// statusVersion is the "version:" of `controller status` output.
func statusVersion(st string) string {
	for _, l := range strings.Split(st, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "version:" {
			return f[1]
		}
	}
	return ""
}

// waitServed opens flows from h until mirror serves one.
func waitServed(ctx context.Context, h *testbed.Host, mirror string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	last := ""
	for time.Since(start) < within {
		vip := netip.MustParseAddr("10.200.0.10")
		if s := ask(ctx, h, "udp", vip); s.ok {
			last = s.mirror
			if s.mirror == mirror {
				return time.Since(start), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("%s still served by %q after %v, want %s", h.Name, last, within, mirror)
}

type sample struct {
	mirror string
	rtt    time.Duration
	ok     bool
}

type regionResult struct {
	served  map[string]int
	rtts    []time.Duration
	errors  int
	perKind map[string]int
}

// drive makes every client open new TCP and UDP flows to every VIP in a
// loop and times each request/answer round trip.
func drive(ctx context.Context, tb *testbed.Testbed, topo testbed.Topology, d time.Duration) map[string]*regionResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	res := map[string]*regionResult{}
	for _, r := range topo.Regions {
		res[r.Name] = &regionResult{served: map[string]int{}, perKind: map[string]int{}}
	}
	var wg sync.WaitGroup
	for _, r := range topo.Regions {
		for _, c := range tb.Clients(r.Name) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					vip := topo.VIPs[i%len(topo.VIPs)]
					network := []string{"tcp", "udp"}[(i/len(topo.VIPs))%2]
					s := ask(ctx, c, network, vip)
					mu.Lock()
					rr := res[r.Name]
					if s.ok {
						rr.served[s.mirror]++
						rr.rtts = append(rr.rtts, s.rtt)
						kind := network + "/v4"
						if vip.Is6() {
							kind = network + "/v6"
						}
						rr.perKind[kind]++
					} else if ctx.Err() == nil {
						rr.errors++
					}
					mu.Unlock()
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
		}
	}
	wg.Wait()
	return res
}

func ask(ctx context.Context, h *testbed.Host, network string, vip netip.Addr) sample {
	port := uint16(tcpPort)
	if network == "udp" {
		port = udpPort
	}
	return askPort(ctx, h, network, vip, port)
}

func askPort(ctx context.Context, h *testbed.Host, network string, vip netip.Addr, port uint16) sample {
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	t0 := time.Now()
	conn, err := h.Dial(actx, network, netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return sample{}
	}
	defer conn.Close()
	var r testbed.Reply
	if network == "udp" {
		r, err = testbed.AskUDP(actx, conn, "demo")
	} else {
		t0 = time.Now() // after the handshake: one request/answer round trip
		r, err = testbed.Ask(actx, conn, "demo")
	}
	if err != nil {
		return sample{}
	}
	return sample{mirror: r.Mirror, rtt: time.Since(t0), ok: true}
}

func report(out io.Writer, topo testbed.Topology, res map[string]*regionResult) {
	fmt.Fprintln(out, "\n== who served each region")
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "REGION\tREQUESTS\tSERVED BY\tRTT p50\tRTT p95\tERRORS\tTCP/UDP × v4/v6")
	for _, r := range topo.Regions {
		rr := res[r.Name]
		total := 0
		for _, n := range rr.served {
			total += n
		}
		mirrors := make([]string, 0, len(rr.served))
		for m := range rr.served {
			mirrors = append(mirrors, m)
		}
		sort.Slice(mirrors, func(i, j int) bool { return rr.served[mirrors[i]] > rr.served[mirrors[j]] })
		var parts []string
		for _, m := range mirrors {
			parts = append(parts, fmt.Sprintf("%s %.0f%%", m, 100*float64(rr.served[m])/float64(max(total, 1))))
		}
		slices.Sort(rr.rtts)
		p := func(q float64) string {
			if len(rr.rtts) == 0 {
				return "-"
			}
			return rr.rtts[int(q*float64(len(rr.rtts)-1))].Round(100 * time.Microsecond).String()
		}
		kinds := fmt.Sprintf("%d/%d/%d/%d", rr.perKind["tcp/v4"], rr.perKind["tcp/v6"], rr.perKind["udp/v4"], rr.perKind["udp/v6"])
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%d\t%s\n", r.Name, total, strings.Join(parts, ", "), p(0.5), p(0.95), rr.errors, kinds)
	}
	w.Flush()
	fmt.Fprintln(out, "   RTT = one request/answer: client → its edge (XDP router) → mirror (XDP decap) → client, emulated WAN delays")
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = "   " + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "   …")
	}
	return strings.Join(lines, "\n")
}

// The predictive phase: vm-disk-9 (2 MiB, only on m-core) starts being
// used from ap; the controller's forecast and Mirroring Score place a copy
// on m-ap, m-core's replicator copies the volume there over mutual TLS,
// and once m-ap reports the copy in sync ap's new flows go to it.
const (
	predResource = "vm-disk-9"
	predSize     = 2 << 20
	predRegion   = "ap"
	predMirror   = "m-ap"
)

// predImage is host's image file of vm-disk-9: m-core's declared
// primary, or the mirror volume the placement creates in m-ap's
// volume_dir.
func predImage(dir, host string) string {
	if host == predMirror {
		return filepath.Join(predVolumeDir(dir), predResource+".img")
	}
	return filepath.Join(dir, predResource+"."+host+".img")
}

// predVolumeDir is m-ap's replication.volume_dir.
func predVolumeDir(dir string) string { return filepath.Join(dir, "placed-"+predMirror) }

// replicationSetup gives m-core a primary volume for vm-disk-9 (random
// data); m-ap declares no volume, only a volume_dir where the placement's
// task creates the mirror that only m-core may fill.
func replicationSetup(l *lab.Lab, dir string) error {
	img := predImage(dir, "m-core")
	data := make([]byte, predSize)
	rand.NewChaCha8([32]byte{'d', 'e', 'm', 'o'}).Read(data)
	if err := os.WriteFile(img, data, 0o600); err != nil {
		return err
	}
	l.SetVolumeCopy(lab.VolumeCopy{Volume: predResource, PrimaryHost: "m-core", Primary: img,
		MirrorHost: predMirror, MirrorDir: predVolumeDir(dir), TaskInterval: time.Second})
	return nil
}

func predictivePhase(ctx context.Context, out io.Writer, l *lab.Lab, tb *testbed.Testbed, topo testbed.Topology, dir string) error {
	fmt.Fprintf(out, "\n== phase 3: %s's clients start using %s (%d MiB), whose only copy is on m-core (16 ms from %s; %s is 6 ms)\n",
		predRegion, predResource, predSize>>20, predRegion, predMirror)
	fmt.Fprintf(out, "   mirror_policy: predictive, sites [%s]; a copy is placed when its Mirroring Score stays ≥ 0.6 (forecast buckets of 2 s)\n", predRegion)
	fmt.Fprintf(out, "   %s declares no volume: its replication.volume_dir receives whatever copy is placed on it\n", predMirror)
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu     sync.Mutex
		served = map[string]int{}
		first  time.Time // first flow served by predMirror
		wg     sync.WaitGroup
	)
	start := time.Now()
	for _, c := range tb.Clients(predRegion) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for dctx.Err() == nil {
				if s := askPort(dctx, c, "tcp", topo.VIPs[0], predPort); s.ok {
					mu.Lock()
					served[s.mirror]++
					if s.mirror == predMirror && first.IsZero() {
						first = time.Now()
					}
					mu.Unlock()
				}
				select {
				case <-dctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	halt := func() { stop(); wg.Wait() }
	defer halt()
	wait := func(what string, within time.Duration, ok func() bool) error {
		deadline := time.Now().Add(within)
		for !ok() {
			if time.Now().After(deadline) {
				pl, _ := l.ControllerCommand(ctx, "placements", predResource)
				ex, _ := l.ControllerCommand(ctx, "explain", predResource)
				return fmt.Errorf("%s: not within %v\n%s\n%s\n%s", what, within, pl, ex, l.ControllerLog())
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
		return nil
	}
	var placedAt time.Time
	if err := wait("a copy of "+predResource+" placed", 90*time.Second, func() bool {
		rec, err := l.Placements(ctx, predResource)
		if err == nil && len(rec.GetPlaced()) > 0 {
			placedAt = time.Unix(0, rec.GetPlaced()[0].GetPlacedUnixNano())
			return true
		}
		return false
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "   %.1fs: the controller placed a full copy on %s (forecast → Mirroring Score ≥ 0.6 twice)\n", placedAt.Sub(start).Seconds(), predMirror)
	var firstLocal time.Time
	if err := wait(predRegion+"'s flows served by "+predMirror, 90*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		firstLocal = first
		return !first.IsZero()
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "   %.1fs: m-core's replicator had copied the volume to %s and %s reported it in sync: %s's new flows now go to %s\n",
		firstLocal.Sub(start).Seconds(), predMirror, predMirror, predRegion, predMirror)
	time.Sleep(2 * time.Second)
	halt()
	src, err1 := os.ReadFile(predImage(dir, "m-core"))
	dst, err2 := os.ReadFile(predImage(dir, predMirror))
	same := err1 == nil && err2 == nil && bytes.Equal(src, dst)
	mu.Lock()
	fmt.Fprintf(out, "   %s's flows to %s: %d served by m-core, %d by %s; the two copies are byte-identical: %t\n",
		predRegion, predResource, served["m-core"], served[predMirror], predMirror, same)
	mu.Unlock()
	pl, err := l.ControllerCommand(ctx, "placements", predResource)
	if err != nil {
		return fmt.Errorf("controller placements: %w", err)
	}
	fmt.Fprintf(out, "\n== controller placements %s\n%s", predResource, indent(string(pl)))
	return nil
}
