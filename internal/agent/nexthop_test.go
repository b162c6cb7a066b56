package agent

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/premirror/premirror/internal/maps"
)

// TestNexthopWatcherBumps runs a real agent in a namespace the test made
// and changes that namespace's neighbours, routes and links: each change
// must bump the router's next-hop generation (read back from the map).
func TestNexthopWatcherBumps(t *testing.T) {
	requireRoot(t)
	ns, cfg, a := runningAgent(t)
	if ttl := mustCache(t, a).TTL; ttl != cfg.NextHopTTL() {
		t.Fatalf("cache TTL %v, want the configured %v", ttl, cfg.NextHopTTL())
	}

	gen := func() uint32 { return mustCache(t, a).Generation }
	// quiet waits until nothing has bumped for a while (the subscription's
	// own bump, events from the agent's attach), so the next bump is ours.
	quiet := func() uint32 {
		t.Helper()
		g, since := gen(), time.Now()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if n := gen(); n != g {
				g, since = n, time.Now()
			} else if g > 0 && time.Since(since) > 300*time.Millisecond {
				return g
			}
		}
		t.Fatalf("generation never settled (at %d)", g)
		return 0
	}
	bumped := func(what string, before uint32) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if gen() > before {
				return
			}
		}
		t.Fatalf("%s: generation still %d after 5 s", what, before)
	}
	var pa0 netlink.Link
	var err error
	ns.Do(func() { pa0, err = netlink.LinkByName("pa0") })
	if err != nil {
		t.Fatal(err)
	}
	neigh := func(mac string) func() error {
		return func() error {
			hw, _ := net.ParseMAC(mac)
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: pa0.Attrs().Index, Family: netlink.FAMILY_V4,
				IP: net.ParseIP("10.77.0.10"), HardwareAddr: hw, State: netlink.NUD_PERMANENT})
		}
	}
	_, dst, _ := net.ParseCIDR("10.200.0.0/16")
	for _, c := range []struct {
		what   string
		change func() error
	}{
		{"neighbour added", neigh("02:00:00:00:aa:01")},
		{"neighbour MAC changed", neigh("02:00:00:00:aa:02")},
		{"route added", func() error {
			return netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("10.77.0.10"), LinkIndex: pa0.Attrs().Index})
		}},
		{"link MTU changed", func() error { return netlink.LinkSetMTU(pa0, 1400) }},
		{"IPv4 routing rule added", func() error {
			r := netlink.NewRule()
			r.Src, r.Table, r.Priority = dst, 100, 1000
			return netlink.RuleAdd(r)
		}},
		{"IPv6 routing rule added", func() error {
			_, src6, _ := net.ParseCIDR("fd00:77::/64")
			r := netlink.NewRule()
			r.Family, r.Src, r.Table, r.Priority = netlink.FAMILY_V6, src6, 100, 1000
			return netlink.RuleAdd(r)
		}},
	} {
		before := quiet()
		var err error
		ns.Do(func() { err = c.change() })
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		bumped(c.what, before)
	}
	if n := testutil.ToFloat64(a.metrics.nhBumps); n < 7 {
		t.Fatalf("edge_nexthop_generation_bumps_total = %v after 7 bumps", n)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}
}

// runAgent runs a until the test ends; then Run must return nil, leave
// no goroutine behind, and a is closed.
func runAgent(t *testing.T, a *Agent) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		goleak.VerifyNone(t, ignore)
		a.Close()
	})
}

func mustCache(t *testing.T, a *Agent) maps.NextHopCache {
	t.Helper()
	c, err := a.router.NextHopCache()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestNeighbourChanged: only what changes a FIB lookup's answer counts.
func TestNeighbourChanged(t *testing.T) {
	w := newNexthopWatcher(nil, nil, discardLogger(), nil)
	mac1, _ := net.ParseMAC("02:00:00:00:00:01")
	mac2, _ := net.ParseMAC("02:00:00:00:00:02")
	n := func(typ uint16, family int, state int, mac net.HardwareAddr) netlink.NeighUpdate {
		return netlink.NeighUpdate{Type: typ, Neigh: netlink.Neigh{LinkIndex: 3, Family: family,
			IP: net.ParseIP("10.0.0.1"), State: state, HardwareAddr: mac}}
	}
	for i, s := range []struct {
		u    netlink.NeighUpdate
		want bool
	}{
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_INCOMPLETE, nil), true}, // first sight
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_REACHABLE, mac1), true}, // became valid
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_STALE, mac1), false},    // state churn
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_DELAY, mac1), false},
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_REACHABLE, mac2), true}, // new MAC
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_FAILED, mac2), true},    // invalid now
		{n(unix.RTM_DELNEIGH, netlink.FAMILY_V4, netlink.NUD_FAILED, mac2), false},   // was invalid already
		{n(unix.RTM_NEWNEIGH, netlink.FAMILY_V4, netlink.NUD_PERMANENT, mac1), true},
		{n(unix.RTM_DELNEIGH, netlink.FAMILY_V4, netlink.NUD_PERMANENT, mac1), true}, // a valid one gone
		{n(unix.RTM_NEWNEIGH, unix.AF_BRIDGE, netlink.NUD_PERMANENT, mac1), false},   // FDB entry
	} {
		if got := w.neighbourChanged(s.u); got != s.want {
			t.Errorf("update %d (%+v): changed %v, want %v", i, s.u.Neigh, got, s.want)
		}
	}
}

// TestNexthopObjectReplaceBumps: a route through a nexthop object
// (ip nexthop, Linux 5.3+) changes its FIB answer when the nexthop object
// is replaced. With net.ipv4.nexthop_compat_mode=0 (which the kernel's
// ip-sysctl documentation suggests once a system uses the nexthop API)
// that replacement sends no route notification, only RTM_NEWNEXTHOP:
// the cache must be invalidated anyway.
func TestNexthopObjectReplaceBumps(t *testing.T) {
	requireRoot(t)
	ns, _, a := runningAgent(t)
	run := func(args ...string) {
		t.Helper()
		if _, err := ns.n.Run(context.Background(), args[0], args[1:]...); err != nil {
			t.Skip(err) // no nexthop objects / sysctl on this kernel
		}
	}
	run("sysctl", "-w", "net.ipv4.nexthop_compat_mode=0")
	// Both gateways resolved already: the replacement changes no neighbour.
	run("ip", "neigh", "replace", "10.77.0.10", "lladdr", "02:00:00:00:aa:10", "dev", "pa0", "nud", "permanent")
	run("ip", "neigh", "replace", "10.77.0.11", "lladdr", "02:00:00:00:aa:11", "dev", "pa0", "nud", "permanent")
	run("ip", "nexthop", "add", "id", "77", "via", "10.77.0.10", "dev", "pa0")
	run("ip", "route", "add", "10.200.0.0/16", "nhid", "77")

	gen := func() uint32 { return mustCache(t, a).Generation }
	g, since := gen(), time.Now()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if n := gen(); n != g {
			g, since = n, time.Now()
		} else if g > 0 && time.Since(since) > 3*time.Second {
			// (IPv6 link-local addresses and their routes arrive a
			// second or two after the veth came up.)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation never settled (at %d)", g)
		}
	}
	run("ip", "nexthop", "replace", "id", "77", "via", "10.77.0.11", "dev", "pa0")
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if gen() > g {
			return
		}
	}
	t.Fatalf("nexthop object 77 replaced (10.200.0.0/16 now via 10.77.0.11): generation still %d after 3 s", g)
}
