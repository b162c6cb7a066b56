package testbed

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/testbed/wan"
)

// smallTopo: two regions on two different edges, two mirrors.
func smallTopo() Topology {
	p4, p6 := netip.MustParsePrefix, netip.MustParsePrefix
	return Topology{
		VIPs: []netip.Addr{netip.MustParseAddr("10.200.0.1"), netip.MustParseAddr("fd00:200::1")},
		Regions: []Region{
			{Name: "ra", Edge: "ea", Clients: 1, PrefixV4: p4("10.1.0.0/24"), PrefixV6: p6("fd00:1::/64")},
			{Name: "rb", Edge: "eb", Clients: 1, PrefixV4: p4("10.2.0.0/24"), PrefixV6: p6("fd00:2::/64")},
		},
		Edges:   []Edge{{Name: "ea", Arms: 2}, {Name: "eb"}},
		Mirrors: []Mirror{{Name: "m1"}, {Name: "m2"}},
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// TestMirrorsAnswerAcrossWAN: every client reaches every mirror's service
// over TCP and UDP, IPv4 and IPv6, and the reply names the mirror and the
// client's own address (nothing rewrites it on the way).
func TestMirrorsAnswerAcrossWAN(t *testing.T) {
	VerifyNoLeaks(t, LeakOptions{})
	tb := ForTest(t, smallTopo(), Options{})
	ctx := ctxT(t, 20*time.Second)
	for _, c := range append(tb.Clients("ra"), tb.Clients("rb")...) {
		for _, m := range tb.Mirrors() {
			for _, fam := range []struct {
				src, dst netip.Addr
			}{{c.V4(), m.V4()}, {c.V6(), m.V6()}} {
				for _, proto := range []struct {
					net  string
					port uint16
				}{{"tcp", 8080}, {"udp", 8053}} {
					name := fmt.Sprintf("%s->%s/%s/%s", c.Name, m.Name, proto.net, fam.dst)
					r, err := c.Ask(ctx, proto.net, hostPort(fam.dst, proto.port))
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if r.Mirror != m.Name || r.Proto != proto.net || r.Remote.Addr() != fam.src || r.Local != netip.AddrPortFrom(fam.dst, proto.port) {
						t.Errorf("%s: reply %v", name, r)
					}
				}
			}
		}
	}
	for _, st := range tb.Switch().Stats() {
		if st.Drops[wan.DropNoRoute]+st.Drops[wan.DropMalformed]+st.Drops[wan.DropNotForUs] != 0 {
			t.Errorf("port %s (%s) drops %v", st.Name, st.Site, st.Drops)
		}
	}
}

// TestVIPGoesToRegionEdge: with no router loaded, the VIP is bound on the
// edges themselves: each region's VIP traffic must reach its own edge
// (and arrive on eth0 of the two-armed one), v4 and v6, TCP and UDP.
func TestVIPGoesToRegionEdge(t *testing.T) {
	VerifyNoLeaks(t, LeakOptions{})
	topo := smallTopo()
	tb := ForTest(t, topo, Options{})
	ctx := ctxT(t, 20*time.Second)
	for _, e := range tb.Edges() {
		var lns []net.Listener
		var pcs []net.PacketConn
		for _, v := range tb.VIPs() {
			bits := 32
			if v.Is6() {
				bits = 128
			}
			if err := e.AddAddr("lo", netip.PrefixFrom(v, bits)); err != nil {
				t.Fatal(err)
			}
			l, err := e.Listen("tcp", hostPort(v, 9000))
			if err != nil {
				t.Fatal(err)
			}
			pc, err := e.ListenPacket("udp", hostPort(v, 9001))
			if err != nil {
				t.Fatal(err)
			}
			lns, pcs = append(lns, l), append(pcs, pc)
		}
		svc := StartMirrorService(e.Name, lns, pcs, nil)
		t.Cleanup(func() { svc.Close() })
	}
	want := map[string]string{"ra": "ea", "rb": "eb"}
	for region, edge := range want {
		c := tb.Clients(region)[0]
		before, _ := tb.Switch().PairStats(c.Name, edge)
		for _, v := range tb.VIPs() {
			for _, proto := range []struct {
				net  string
				port uint16
			}{{"tcp", 9000}, {"udp", 9001}} {
				r, err := c.Ask(ctx, proto.net, hostPort(v, proto.port))
				if err != nil {
					t.Fatalf("%s -> %s/%s: %v", c.Name, v, proto.net, err)
				}
				if r.Mirror != edge || r.Local.Addr() != v {
					t.Errorf("%s -> %s/%s answered by %v, want edge %s", c.Name, v, proto.net, r, edge)
				}
			}
		}
		after, _ := tb.Switch().PairStats(c.Name, edge)
		if after.Frames <= before.Frames {
			t.Errorf("pair %s->%s carried no frames", c.Name, edge)
		}
	}
	// The two-armed edge receives VIP traffic on eth0 (port of arm 0).
	ea := tb.Host("ea")
	st0, _ := tb.Switch().PortStats(ea.Ifaces[0].Port)
	if st0.TxFrames == 0 {
		t.Errorf("edge ea eth0 port delivered nothing")
	}
	// No mirror saw any of it.
	for _, m := range tb.Mirrors() {
		if s := tb.Service(m.Name).Stats(); s.TCPConns+s.UDPRequests != 0 {
			t.Errorf("mirror %s got VIP traffic: %+v", m.Name, s)
		}
	}
}

// TestTwoArmedEdgeRoutesMirrorsViaEth1: the edge's own traffic to a mirror
// leaves through eth1, to a client through eth0.
func TestTwoArmedEdgeRoutesMirrorsViaEth1(t *testing.T) {
	topo := smallTopo()
	topo.ClientMTU = 1400
	tb := ForTest(t, topo, Options{})
	ctx := ctxT(t, 10*time.Second)
	ea := tb.Host("ea")
	eth1, ok := ea.Iface("eth1")
	if !ok {
		t.Fatal("no eth1")
	}
	m := tb.Host("m1")
	r, err := ea.Ask(ctx, "tcp", hostPort(m.V6(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	if r.Remote.Addr() != eth1.V6 {
		t.Errorf("mirror saw the edge as %v, want its eth1 address %v", r.Remote.Addr(), eth1.V6)
	}
	out, err := ea.Run(ctx, "ip", "-4", "route", "get", tb.Clients("ra")[0].V4().String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "dev eth0") {
		t.Errorf("route to client: %s", out)
	}
	// Client links use ClientMTU, the others MTU.
	for host, want := range map[string]string{"ra-1": "mtu 1400", "ea": "mtu 1500", "m1": "mtu 1500"} {
		out, err := tb.Host(host).Run(ctx, "ip", "link", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("%s eth0: %s, want %s", host, out, want)
		}
	}
}

// TestDelayAtRuntime: a changed delay shows in the next RTTs, and a
// removed one disappears.
func TestDelayAtRuntime(t *testing.T) {
	tb := ForTest(t, smallTopo(), Options{})
	ctx := ctxT(t, 20*time.Second)
	c, m := tb.Clients("ra")[0], tb.Host("m1")
	rtt := func() time.Duration {
		t.Helper()
		conn, err := c.Dial(ctx, "udp", hostPort(m.V4(), 8053))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		best := time.Hour
		for i := 0; i < 5; i++ {
			start := time.Now()
			if _, err := AskUDP(ctx, conn, fmt.Sprintf("r%d", i)); err != nil {
				t.Fatal(err)
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	base := rtt()
	if err := tb.SetDelay("ra", "m1", 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	slow := rtt()
	if slow < 60*time.Millisecond {
		t.Errorf("RTT %v with 30 ms each way, want >= 60 ms", slow)
	}
	if err := tb.SetDelay("ra", "m1", 0); err != nil {
		t.Fatal(err)
	}
	if back := rtt(); back >= 30*time.Millisecond {
		t.Errorf("RTT %v after removing the delay (baseline %v)", back, base)
	}
	if err := tb.SetDelay("ra", "nowhere", time.Millisecond); err == nil {
		t.Error("SetDelay to an unknown name succeeded")
	}
}

// TestLoss: with 50% loss one way, about half the UDP requests go
// unanswered, and the switch counts each loss.
func TestLoss(t *testing.T) {
	tb := ForTest(t, smallTopo(), Options{Seed: 7})
	ctx := ctxT(t, 30*time.Second)
	c, m := tb.Clients("rb")[0], tb.Host("m2")
	if err := tb.SetPath(c.Name, m.Name, wan.Path{Loss: 0.5}); err != nil {
		t.Fatal(err)
	}
	conn, err := c.Dial(ctx, "udp", hostPort(m.V4(), 8053))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = 400
	for i := 0; i < n; i++ {
		if _, err := conn.Write([]byte(fmt.Sprintf("l%d", i))); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(2 * time.Millisecond) // stay far below socket buffers
		}
	}
	got := 0
	buf := make([]byte, 512)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil {
			break
		}
		got++
	}
	ps, _ := tb.Switch().PairStats(c.Name, m.Name)
	if int(ps.Lost)+got != n {
		t.Errorf("lost %d + answered %d != sent %d", ps.Lost, got, n)
	}
	// 0.5 ± 5σ with σ = 0.025.
	if f := float64(got) / n; f < 0.375 || f > 0.625 {
		t.Errorf("answered fraction %.3f, want about 0.5", f)
	}
}

// TestEchoStream streams bulk data through the switch and back: every
// byte returns intact, and the switch never saw an oversized (GRO) frame
// or a frame with a bad header.
func TestEchoStream(t *testing.T) {
	for _, mtu := range []int{1500, 9000} {
		t.Run(fmt.Sprintf("mtu%d", mtu), func(t *testing.T) { testEchoStream(t, mtu) })
	}
}

func testEchoStream(t *testing.T, mtu int) {
	topo := smallTopo()
	topo.MTU = mtu
	tb := ForTest(t, topo, Options{})
	c, m := tb.Clients("ra")[0], tb.Host("m2")
	if err := tb.SetDelay("ra", "m2", 2*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	conn, err := c.Dial(ctx, "tcp", hostPort(m.V6(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	res, err := Echo(sctx, conn.(*net.TCPConn), 16<<10, 0, nil)
	if err != nil {
		t.Fatalf("echo: %v (%+v)", err, res)
	}
	if res.Mirror != "m2" || res.Sent < 512<<10 {
		t.Errorf("echo result %+v", res)
	}
	t.Logf("echoed %d bytes in 0.5 s through a 2 ms + 2 ms path", res.Received)
	var table strings.Builder
	if err := tb.WriteSwitchStats(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "PORT") || !strings.Contains(table.String(), "m2") {
		t.Errorf("stats table:\n%s", table.String())
	}
	if s := tb.Service("m2").Stats(); s.EchoBytes != res.Received {
		t.Errorf("mirror echoed %d bytes, client received %d", s.EchoBytes, res.Received)
	}
	for _, st := range tb.Switch().Stats() {
		if st.RxFrames > 1000 {
			t.Logf("port %s (%s): rx %d frames, %d bytes/frame", st.Name, st.Site, st.RxFrames, st.RxBytes/st.RxFrames)
			if avg := st.RxBytes / st.RxFrames; avg > uint64(mtu+14) || avg < uint64(mtu/2) {
				t.Errorf("port %s: average frame %d bytes with MTU %d", st.Name, avg, mtu)
			}
		}
		if st.Drops[wan.DropOversize]+st.Drops[wan.DropMalformed] != 0 {
			t.Errorf("port %s drops %v", st.Name, st.Drops)
		}
	}
}

// TestCommandRunsInHostNetns: Command enters only the network namespace
// (the mount namespace, and so /sys/fs/bpf, stays shared), and Close kills
// what it started.
func TestCommandRunsInHostNetns(t *testing.T) {
	VerifyNoLeaks(t, LeakOptions{})
	tb := ForTest(t, smallTopo(), Options{})
	ctx := ctxT(t, 10*time.Second)
	h := tb.Host("m1")
	out, err := h.Run(ctx, "sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; ip -o addr show dev lo")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(out), "\n", 3)
	ownMnt, _ := os.Readlink("/proc/self/ns/mnt")
	wantNet := fmt.Sprintf("net:[%d]", h.ino)
	if lines[0] != wantNet || lines[1] != ownMnt {
		t.Errorf("child namespaces %q %q, want %q %q", lines[0], lines[1], wantNet, ownMnt)
	}
	if !strings.Contains(lines[2], "10.200.0.1/32") || !strings.Contains(lines[2], "fd00:200::1/128") {
		t.Errorf("VIPs not on the mirror's lo: %s", lines[2])
	}
	// A long-running process left running is killed by Close.
	cmd := h.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
}
