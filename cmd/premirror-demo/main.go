// Command premirror-demo builds a three-region testbed with an XDP edge
// router and four mirrors, runs the real edge agent on every node with a
// static configuration, drives client traffic from every region, prints
// which mirror served each region, the RTT seen and the counters, shows a
// bpftool dump of a pinned map, and removes everything. `make demo` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
	duration time.Duration
	verbose  bool
}

func main() {
	var c config
	self, _ := os.Executable()
	flag.StringVar(&c.topology, "topology", "internal/testbed/testdata/demo.yaml", "testbed topology (YAML)")
	flag.StringVar(&c.agentBin, "agent", filepath.Join(filepath.Dir(self), "edge-agent"), "edge-agent binary")
	flag.DurationVar(&c.duration, "duration", 30*time.Second, "how long to drive client traffic")
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
	fmt.Fprintf(out, "== premirror demo: %d regions, %d edge, %d mirrors (%s)\n", len(topo.Regions), len(topo.Edges), len(topo.Mirrors), c.topology)
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
	// A static route table: every region to the mirror the operator (or,
	// later, the controller) picked for it, with a share for m-core.
	routes := map[string]map[string]uint32{"*": {"m-core": 1}}
	for _, r := range topo.Regions {
		routes[r.Name] = map[string]uint32{"m-" + r.Name: 3, "m-core": 1}
	}
	state.Resources = []agent.Resource{{Name: "vm-disk-7", ID: 7, VIPs: vips, Routes: routes}}

	dir, err := os.MkdirTemp("", "premirror-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	l := lab.New(tb, c.agentBin, dir, state, log)
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := l.StartAll(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "== agents running: router on edge1, decap on %d mirrors (%.1fs)\n", len(tb.Mirrors()), time.Since(start).Seconds())
	fmt.Fprintf(out, "   route table: each region → its own mirror 75%%, m-core 25%%\n")

	fmt.Fprintf(out, "== driving TCP and UDP, IPv4 and IPv6, from every client for %v\n", c.duration)
	res := drive(ctx, tb, topo, c.duration)
	report(out, topo, res)

	edge := tb.Edges()[0]
	cfgPath := l.Agent(edge.Name).Config
	insp, ierr := edge.Run(ctx, c.agentBin, "inspect", "--pin-dir", l.PinDir(edge.Name), "--config", cfgPath, "--sessions", "5")
	fmt.Fprintf(out, "\n== edge-agent inspect (edge1)\n%s", indent(string(insp)))
	if ierr != nil {
		return fmt.Errorf("inspect: %w", ierr)
	}
	if bt, err := exec.LookPath("bpftool"); err == nil {
		pin := l.PinDir(edge.Name)
		for _, args := range [][]string{
			{"map", "lookup", "pinned", filepath.Join(pin, "pm_mirrors"), "key", "1", "0", "0", "0"},
			{"map", "dump", "pinned", filepath.Join(pin, "pm_route_index")},
		} {
			dump, derr := exec.CommandContext(ctx, bt, args...).CombinedOutput()
			fmt.Fprintf(out, "\n== bpftool %s\n%s", strings.Join(args, " "), indent(firstLines(string(dump), 30)))
			if derr != nil {
				return fmt.Errorf("bpftool: %w", derr)
			}
		}
	}
	return nil
}

type sample struct {
	region, mirror string
	rtt            time.Duration
	ok             bool
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
	fmt.Fprintln(out, "   RTT = one request/answer: client → edge1 (XDP router) → mirror (XDP decap) → client, emulated WAN delays")
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
