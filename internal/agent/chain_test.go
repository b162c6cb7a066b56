package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/maps/mapstest"
)

func progID(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

func startAgent(t *testing.T, ns netNS, cfg *Config) (*Agent, error) {
	t.Helper()
	return startAgentFile(t, ns, cfg, "")
}

// runningAgent starts an agent of the test config in a namespace of its
// own and runs it until the test ends; its pins are removed after.
func runningAgent(t *testing.T) (netNS, *Config, *Agent) {
	t.Helper()
	ns := agentNS(t)
	cfg, _ := testConfig(t, bpffsDir(t))
	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(cfg.PinDir, true) }) // after runAgent's
	runAgent(t, a)
	return ns, cfg, a
}

// startAgentFile is startAgent for an agent that watches its config file
// at path (reloads).
func startAgentFile(t *testing.T, ns netNS, cfg *Config, path string) (*Agent, error) {
	t.Helper()
	var a *Agent
	var err error
	ns.Do(func() { a = New(cfg, path, discardLogger()); err = a.Start() })
	return a, err
}

// wire is a veth pair of the test namespace: frames sent into peer arrive
// on dev (addressed addr) as from a wire.
type wire struct{ dev, peer, addr string }

// wireA is the pair agentNS creates; wireB is the second one of
// TestChainTakeOverPerInterface.
var (
	wireA = wire{"pa0", "pa1", "10.77.0.1"}
	wireB = wire{"pb0", "pb1", "10.78.0.1"}
)

// udpFrame is an Ethernet frame from pa1 to pa0 carrying UDP to dst:port.
func udpFrame(t *testing.T, ns netNS, dst string, port uint16) []byte {
	return wireA.udpFrame(t, ns, dst, port)
}

// udpFrame is an Ethernet frame from w.peer to w.dev carrying UDP to
// dst:port.
func (w wire) udpFrame(t *testing.T, ns netNS, dst string, port uint16) []byte {
	t.Helper()
	var src, dstMAC net.HardwareAddr
	ns.Do(func() {
		l0, _ := netlink.LinkByName(w.dev)
		l1, _ := netlink.LinkByName(w.peer)
		dstMAC, src = l0.Attrs().HardwareAddr, l1.Attrs().HardwareAddr
	})
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.ParseIP("198.51.100.7").To4(), DstIP: net.ParseIP(dst).To4()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload("premirror chain test")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// inject sends frames into pa1, so pa0 receives them: through pa0's
// native XDP path, as from a wire.
func inject(t *testing.T, ns netNS, frames ...[]byte) { wireA.inject(t, ns, frames...) }

// inject sends frames into w.peer, so w.dev receives them.
func (w wire) inject(t *testing.T, ns netNS, frames ...[]byte) {
	t.Helper()
	ns.Do(func() {
		l, err := netlink.LinkByName(w.peer)
		if err != nil {
			t.Error(err)
			return
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6}); err != nil {
				t.Error(err)
			}
		}
	})
}

// received counts the datagrams a UDP socket on 10.77.0.1:port gets from
// fn's traffic.
func received(t *testing.T, ns netNS, port int, fn func()) int {
	return wireA.received(t, ns, port, fn)
}

// received counts the datagrams a UDP socket on w.addr:port gets from fn's
// traffic.
func (w wire) received(t *testing.T, ns netNS, port int, fn func()) int {
	t.Helper()
	var pc net.PacketConn
	var err error
	ns.Do(func() {
		for _, p := range []string{"all", w.dev} {
			_ = os.WriteFile("/proc/sys/net/ipv4/conf/"+p+"/rp_filter", []byte("0"), 0o644)
		}
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(w.addr, strconv.Itoa(port)))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fn()
	n := 0
	buf := make([]byte, 2048)
	for {
		_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return n
		}
		n++
	}
}

// checkChainTraffic sends real frames into pa0 and checks both programs'
// effects: UDP to port 9 (not VIP traffic) dropped by the peer, UDP to
// port 10 passed by both to the local socket, VIP traffic encapsulated by
// the router and never shown to the peer.
func checkChainTraffic(t *testing.T, ns netNS, a *Agent, peer *mapstest.Peer) {
	t.Helper()
	seen0, _ := peer.SeenUDP()
	st0, _ := a.router.Stats()
	if n := received(t, ns, 9, func() {
		for range 5 {
			inject(t, ns, udpFrame(t, ns, "10.77.0.1", 9))
		}
	}); n != 0 {
		t.Errorf("%d of 5 datagrams to port 9 got through: the peer did not run", n)
	}
	if n := received(t, ns, 10, func() {
		for range 5 {
			inject(t, ns, udpFrame(t, ns, "10.77.0.1", 10))
		}
	}); n != 5 {
		t.Errorf("%d of 5 datagrams to port 10 arrived, want all (passed by router and peer)", n)
	}
	seen1, _ := peer.SeenUDP()
	for range 3 {
		inject(t, ns, udpFrame(t, ns, "192.0.2.1", 53)) // a VIP
	}
	time.Sleep(100 * time.Millisecond)
	seen2, _ := peer.SeenUDP()
	st1, _ := a.router.Stats()
	if seen1-seen0 != 10 {
		t.Errorf("peer ran on %d UDP datagrams, want the 10 non-VIP ones", seen1-seen0)
	}
	if seen2 != seen1 {
		t.Errorf("peer saw %d VIP packets", seen2-seen1)
	}
	// ≥: the kernel's own IPv6 chatter on the veth passes too.
	if d := st1.PassNotVip - st0.PassNotVip; d < 10 {
		t.Errorf("pass_not_vip +%d, want ≥ 10 (counted whatever the peer decides)", d)
	}
	if d := (st1.Tx + st1.Redirect + st1.PassNoNeigh) - (st0.Tx + st0.Redirect + st0.PassNoNeigh); d != 3 {
		t.Errorf("%d VIP packets encapsulated, want 3", d)
	}
}

// TestChainTakeOver: a firewall attached to pa0 through netlink. Without
// xdp_chain the agent refuses the interface (ErrForeignXDP); with
// take_over_attached it chains the firewall, replaces it atomically and
// both programs act on real traffic; a restarted agent keeps the chain;
// detach puts the firewall back.
func TestChainTakeOver(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	peerID := progID(t, peer.Program)
	cfg, _ := testConfig(t, pin)
	cfg.XDPChain = &XDPChain{TakeOverAttached: true, RestoreOnDetach: true}

	t.Run("bpf_link cannot be taken over", func(t *testing.T) {
		var l link.Link
		var err error
		ns.Do(func() {
			nl, _ := netlink.LinkByName("pa0")
			l, err = link.AttachXDP(link.XDPOptions{Program: peer.Program, Interface: nl.Attrs().Index})
		})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		a, err := startAgent(t, ns, cfg)
		if err == nil {
			a.Close()
			t.Fatal("took over a bpf_link")
		}
		if !strings.Contains(err.Error(), "xdp_chain.take_over_attached") || !strings.Contains(err.Error(), "bpf_link") {
			t.Fatalf("unclear error: %v", err)
		}
		if id := xdpProgID(t, ns, "pa0"); id != peerID {
			t.Fatalf("pa0 runs %d after a refused take-over, want the peer %d", id, peerID)
		}
	})

	ns.Do(func() {
		nl, _ := netlink.LinkByName("pa0")
		if err := netlink.LinkSetXdpFdWithFlags(nl, peer.Program.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			t.Fatal(err)
		}
	})

	plain := *cfg
	plain.XDPChain = nil
	if a, err := startAgent(t, ns, &plain); !errors.Is(err, ErrForeignXDP) || !strings.Contains(err.Error(), "xdp_chain.take_over_attached") {
		if a != nil {
			a.Close()
		}
		t.Fatalf("without xdp_chain: %v, want ErrForeignXDP naming the setting", err)
	}
	generic := *cfg
	generic.XDPMode = XDPGeneric
	if a, err := startAgent(t, ns, &generic); err == nil || !strings.Contains(err.Error(), "xdp_mode") {
		if a != nil {
			a.Close()
		}
		t.Fatalf("generic take-over of a native program: %v, want an xdp_mode error", err)
	}
	if id := xdpProgID(t, ns, "pa0"); id != peerID {
		t.Fatalf("pa0 runs %d after refused starts, want the peer %d", id, peerID)
	}

	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if at := a.attach[0]; at.Action != "took over" || at.Via != "netlink" || at.Mode != "native" {
		t.Fatalf("attachment %+v", at)
	}
	ours := xdpProgID(t, ns, "pa0")
	if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(ours)); err != nil {
		t.Fatal(err)
	} else if info, _ := p.Info(); info.Name != "pm_router" {
		p.Close()
		t.Fatalf("pa0 runs %q after the take-over", info.Name)
	} else {
		p.Close()
	}
	next, err := a.router.NextFor(a.attach[0].Ifindex)
	if err != nil || next == nil || progID(t, next) != peerID {
		t.Fatalf("pa0's chain slot %v %v, want the peer %d", next, err, peerID)
	}
	next.Close()
	if all, err := a.router.Next(); err != nil || all != nil {
		t.Fatalf("slot for every interface after a take-over: %v %v, want empty", all, err)
	}
	checkChainTraffic(t, ns, a, peer)
	if got := nextProgramSeries(t, a); !slices.Equal(got, []string{"router pa0 fw_udp_drop"}) {
		t.Fatalf("edge_xdp_next_program_info: %v", got)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}
	a.Close()

	// Restart: our netlink attachment is replaced in place, the chain kept.
	b, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if at := b.attach[0]; at.Action != "updated" || at.Via != "netlink" {
		t.Fatalf("restarted agent: %+v", at)
	}
	if id := xdpProgID(t, ns, "pa0"); id == ours || id == peerID {
		t.Fatalf("pa0 runs %d after restart (ours was %d, peer %d)", id, ours, peerID)
	}
	checkChainTraffic(t, ns, b, peer)
	b.Close()

	var derr error
	ns.Do(func() { derr = Detach(pin, true) })
	if derr != nil {
		t.Fatal(derr)
	}
	if id := xdpProgID(t, ns, "pa0"); id != peerID {
		t.Fatalf("pa0 runs %d after detach, want the peer %d restored", id, peerID)
	}
}

// TestChainPinned: xdp_chain.pinned chains a program pinned on bpffs;
// bad ones are refused with the field named; removing xdp_chain empties
// the slot.
func TestChainPinned(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	peerDir := bpffsDir(t)
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	frags := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Frags: true, Name: "fw_frags"})
	peerPin, fragsPin := filepath.Join(peerDir, "fw"), filepath.Join(peerDir, "fw_frags")
	if err := peer.Program.Pin(peerPin); err != nil {
		t.Fatal(err)
	}
	if err := frags.Program.Pin(fragsPin); err != nil {
		t.Fatal(err)
	}
	cfg, _ := testConfig(t, pin)
	defer Detach(pin, true)

	for _, tc := range []struct {
		path string
		is   error
	}{{filepath.Join(peerDir, "missing"), nil}, {fragsPin, maps.ErrChainIncompatible}} {
		c := *cfg
		c.XDPChain = &XDPChain{Pinned: tc.path}
		a, err := startAgent(t, ns, &c)
		if err == nil {
			a.Close()
			t.Fatalf("started with xdp_chain.pinned %s", tc.path)
		}
		if !strings.Contains(err.Error(), "xdp_chain.pinned") || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Fatalf("pinned %s: unclear error %v", tc.path, err)
		}
		t.Log(err)
	}

	c := *cfg
	c.XDPChain = &XDPChain{Pinned: peerPin}
	a, err := startAgent(t, ns, &c)
	if err != nil {
		t.Fatal(err)
	}
	if at := a.attach[0]; at.Via != "bpf_link" || at.Action != "attached" {
		t.Fatalf("attachment %+v", at)
	}
	checkChainTraffic(t, ns, a, peer)
	// A slot of pa0's own (left by a take-over) would hide the pinned
	// program there: a restart with pinned empties it.
	other := mapstest.NewPeerT(t, 10, mapstest.PeerOptions{Name: "fw_other"})
	if err := a.router.SetNextFor(a.attach[0].Ifindex, other.Program); err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = startAgent(t, ns, &c)
	if err != nil {
		t.Fatal(err)
	}
	if list, err := a.router.NextPrograms(nil); err != nil || len(list) != 1 || list[0].Ifindex != maps.AllInterfaces {
		t.Fatalf("slots with xdp_chain.pinned: %+v %v, want slot 0 alone", list, err)
	}
	if err := a.router.SetNextFor(a.attach[0].Ifindex, other.Program); err != nil {
		t.Fatal(err)
	}
	a.Close()

	// No xdp_chain any more: every slot is emptied and port 9 gets through.
	b, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if list, err := b.router.NextPrograms(nil); err != nil || len(list) != 0 {
		t.Fatalf("slots after xdp_chain was removed: %+v %v", list, err)
	}
	if n := received(t, ns, 9, func() { inject(t, ns, udpFrame(t, ns, "10.77.0.1", 9)) }); n != 1 {
		t.Fatalf("port 9 with an empty slot: %d of 1 arrived", n)
	}
}

// nextProgramSeries lists the edge_xdp_next_program_info series as
// "program iface next".
func nextProgramSeries(t *testing.T, a *Agent) []string {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != "edge_xdp_next_program_info" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l["program"]+" "+l["iface"]+" "+l["next"])
		}
	}
	slices.Sort(out)
	return out
}

// addWireB adds the second veth pair pb0/pb1 (pb0 10.78.0.1/24) to ns.
func addWireB(t *testing.T, ns netNS) {
	t.Helper()
	ns.Do(func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pb0"}, PeerName: "pb1"}); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"pb0", "pb1"} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if n == "pb0" {
				ad, _ := netlink.ParseAddr("10.78.0.1/24")
				ad.Flags = 0x02 // nodad
				if err := netlink.AddrAdd(l, ad); err != nil {
					t.Fatal(err)
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestChainTakeOverPerInterface: pa0 and pb0 run different firewalls
// (one drops UDP to port 9, the other UDP to port 10), both attached
// through netlink. take_over_attached chains each in its interface's slot:
// on real traffic each interface's own firewall acts, and only there, while
// VIP traffic is encapsulated and shown to neither. A restart without pb0
// in the config empties pb0's slot and keeps pa0's; detach puts each
// interface's own firewall back.
func TestChainTakeOverPerInterface(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	addWireB(t, ns)
	pin := bpffsDir(t)
	fwA := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Name: "fw_a_drop9"})
	fwB := mapstest.NewPeerT(t, 10, mapstest.PeerOptions{Name: "fw_b_drop10"})
	ns.Do(func() {
		for iface, p := range map[string]*ebpf.Program{"pa0": fwA.Program, "pb0": fwB.Program} {
			l, _ := netlink.LinkByName(iface)
			if err := netlink.LinkSetXdpFdWithFlags(l, p.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
				t.Fatal(err)
			}
		}
	})
	cfg, _ := testConfig(t, pin)
	cfg.Interfaces = []string{"pa0", "pb0"}
	cfg.XDPChain = &XDPChain{TakeOverAttached: true, RestoreOnDetach: true}
	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	idx := map[string]int{}
	for _, at := range a.attach {
		if at.Action != "took over" || at.Via != "netlink" {
			t.Fatalf("attachment %+v", at)
		}
		idx[at.Iface] = at.Ifindex
	}
	for iface, want := range map[string]*ebpf.Program{"pa0": fwA.Program, "pb0": fwB.Program} {
		next, err := a.router.NextFor(idx[iface])
		if err != nil || next == nil || progID(t, next) != progID(t, want) {
			t.Fatalf("%s's chain slot %v %v, want its own firewall", iface, next, err)
		}
		next.Close()
	}
	if got := nextProgramSeries(t, a); !slices.Equal(got, []string{"router pa0 fw_a_drop9", "router pb0 fw_b_drop10"}) {
		t.Fatalf("edge_xdp_next_program_info: %v", got)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}

	// Each interface: its own port dropped, the other's passed, only its own
	// firewall runs, VIP traffic ours.
	for _, tc := range []struct {
		w                  wire
		drop, pass         uint16
		own, other         *mapstest.Peer
		ownName, otherName string
	}{{wireA, 9, 10, fwA, fwB, "pa0's", "pb0's"}, {wireB, 10, 9, fwB, fwA, "pb0's", "pa0's"}} {
		send := func(dst string, port uint16, n int) func() {
			return func() {
				for range n {
					tc.w.inject(t, ns, tc.w.udpFrame(t, ns, dst, port))
				}
			}
		}
		own0, _ := tc.own.SeenUDP()
		other0, _ := tc.other.SeenUDP()
		if n := tc.w.received(t, ns, int(tc.drop), send(tc.w.addr, tc.drop, 5)); n != 0 {
			t.Errorf("%s: %d of 5 datagrams to port %d got through: %s firewall did not run", tc.w.dev, n, tc.drop, tc.ownName)
		}
		if n := tc.w.received(t, ns, int(tc.pass), send(tc.w.addr, tc.pass, 5)); n != 5 {
			t.Errorf("%s: %d of 5 datagrams to port %d arrived, want all (%s firewall does not run here)", tc.w.dev, n, tc.pass, tc.otherName)
		}
		own1, _ := tc.own.SeenUDP()
		other1, _ := tc.other.SeenUDP()
		if own1-own0 != 10 || other1 != other0 {
			t.Errorf("%s: own firewall ran on %d datagrams (want 10), the other on %d (want 0)", tc.w.dev, own1-own0, other1-other0)
		}
		st0, _ := a.router.Stats()
		send("192.0.2.1", 53, 3)() // a VIP
		time.Sleep(100 * time.Millisecond)
		st1, _ := a.router.Stats()
		own2, _ := tc.own.SeenUDP()
		if d := (st1.Tx + st1.Redirect + st1.PassNoNeigh) - (st0.Tx + st0.Redirect + st0.PassNoNeigh); d != 3 {
			t.Errorf("%s: %d VIP packets encapsulated, want 3", tc.w.dev, d)
		}
		if own2 != own1 {
			t.Errorf("%s: the firewall saw %d VIP packets", tc.w.dev, own2-own1)
		}
	}
	a.Close()

	// pb0 leaves the config: its slot is emptied at start (its ifindex
	// could go to a new device), pa0's is kept.
	onlyA := *cfg
	onlyA.Interfaces = []string{"pa0"}
	b, err := startAgent(t, ns, &onlyA)
	if err != nil {
		t.Fatal(err)
	}
	if at := b.attach[0]; at.Action != "updated" || at.Via != "netlink" {
		t.Fatalf("restarted agent: %+v", at)
	}
	list, err := b.router.NextPrograms(nil)
	if err != nil || len(list) != 1 || list[0].Ifindex != idx["pa0"] || list[0].Program.Name != "fw_a_drop9" {
		t.Fatalf("slots after pb0 left the config: %+v %v", list, err)
	}
	b.Close()

	var derr error
	ns.Do(func() { derr = Detach(pin, true) })
	if derr != nil {
		t.Fatal(derr)
	}
	if xdpProgID(t, ns, "pa0") != progID(t, fwA.Program) || xdpProgID(t, ns, "pb0") != progID(t, fwB.Program) {
		t.Fatal("detach did not put each interface's own firewall back")
	}
	if n := wireB.received(t, ns, 10, func() { wireB.inject(t, ns, wireB.udpFrame(t, ns, wireB.addr, 10)) }); n != 0 {
		t.Errorf("pb0 after detach: port 10 got through")
	}
}

// TestChainXDPFilter: xdp-tools' xdp-filter, a real firewall loaded by
// libxdp, as the peer. Attached first, it is taken over and keeps
// filtering behind the router (UDP to port 9 denied, port 10 passed, VIP
// traffic encapsulated and never shown to it); detach puts it back. The
// other order: once the agent holds the interface through its bpf_link,
// xdp-filter cannot attach and the router keeps running.
func TestChainXDPFilter(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"xdp-filter", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install xdp-tools util-linux; scripts/install-deps.sh installs them)", tool)
		}
	}
	// xdp-filter pins its maps on /sys/fs/bpf: it runs in a private mount
	// namespace with a bpffs of its own, gone when the commands end (the
	// attached program keeps its maps), so nothing stays on the host.
	xdpFilter := func(ns netNS, cmds ...string) error {
		script := "mount -t bpf bpf /sys/fs/bpf"
		for _, c := range cmds {
			script += " && xdp-filter " + c
		}
		var out []byte
		var err error
		ns.Do(func() {
			out, err = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script).CombinedOutput()
		})
		if err != nil {
			return fmt.Errorf("%s: %w: %s", script, err, out)
		}
		return nil
	}
	sendUDP := func(ns netNS, dst string, port uint16, n int) {
		for range n {
			inject(t, ns, udpFrame(t, ns, dst, port))
		}
	}

	t.Run("filter first", func(t *testing.T) {
		ns := agentNS(t)
		pin := bpffsDir(t)
		if err := xdpFilter(ns, "load --mode native pa0", "port 9 --proto udp --mode dst"); err != nil {
			t.Fatal(err)
		}
		filterID := xdpProgID(t, ns, "pa0")
		cfg, _ := testConfig(t, pin)
		cfg.XDPChain = &XDPChain{TakeOverAttached: true, RestoreOnDetach: true}
		a, err := startAgent(t, ns, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if at := a.attach[0]; at.Action != "took over" {
			t.Fatalf("attachment %+v", at)
		}
		if n := received(t, ns, 9, func() { sendUDP(ns, "10.77.0.1", 9, 5) }); n != 0 {
			t.Errorf("%d of 5 datagrams to the denied port got through: xdp-filter did not run", n)
		}
		if n := received(t, ns, 10, func() { sendUDP(ns, "10.77.0.1", 10, 5) }); n != 5 {
			t.Errorf("%d of 5 datagrams to port 10 arrived, want all", n)
		}
		st0, _ := a.router.Stats()
		sendUDP(ns, "192.0.2.1", 53, 3) // a VIP
		time.Sleep(100 * time.Millisecond)
		st1, _ := a.router.Stats()
		if d := (st1.Tx + st1.Redirect + st1.PassNoNeigh) - (st0.Tx + st0.Redirect + st0.PassNoNeigh); d != 3 {
			t.Errorf("%d VIP packets encapsulated, want 3", d)
		}
		a.Close()
		var derr error
		ns.Do(func() { derr = Detach(pin, true) })
		if derr != nil {
			t.Fatal(derr)
		}
		if id := xdpProgID(t, ns, "pa0"); id != filterID {
			t.Fatalf("pa0 runs %d after detach, want xdp-filter's %d back", id, filterID)
		}
		if n := received(t, ns, 9, func() { sendUDP(ns, "10.77.0.1", 9, 5) }); n != 0 {
			t.Errorf("after detach %d of 5 datagrams to the denied port got through", n)
		}
	})

	t.Run("agent first", func(t *testing.T) {
		ns := agentNS(t)
		cfg, _ := testConfig(t, bpffsDir(t))
		a, err := startAgent(t, ns, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		ours := xdpProgID(t, ns, "pa0")
		err = xdpFilter(ns, "load --mode native pa0")
		if err == nil {
			t.Fatal("xdp-filter attached over the agent's bpf_link")
		}
		if !strings.Contains(err.Error(), "busy") {
			t.Fatalf("xdp-filter failed for another reason than the busy interface: %v", err)
		}
		if id := xdpProgID(t, ns, "pa0"); id != ours {
			t.Fatalf("pa0 runs %d, want the router %d", id, ours)
		}
	})
}

// TestRestoreOnDetachFollowsRestart: xdp_chain changes with a restart, and
// the restarted agent's restore_on_detach is what detach must do. An
// agent that took pa0 over with restore_on_detach true, restarted with it
// false, must not have detach put the firewall back; and the other way
// round, detach must put it back.
func TestRestoreOnDetachFollowsRestart(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name          string
		first, second bool
	}{{"true then false", true, false}, {"false then true", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := agentNS(t)
			pin := bpffsDir(t)
			fw := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
			fwID := progID(t, fw.Program)
			ns.Do(func() {
				l, _ := netlink.LinkByName("pa0")
				if err := netlink.LinkSetXdpFdWithFlags(l, fw.Program.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
					t.Fatal(err)
				}
			})
			cfg, _ := testConfig(t, pin)
			cfg.XDPChain = &XDPChain{TakeOverAttached: true, RestoreOnDetach: tc.first}
			a, err := startAgent(t, ns, cfg)
			if err != nil {
				t.Fatal(err)
			}
			a.Close()
			cfg2 := *cfg
			cfg2.XDPChain = &XDPChain{TakeOverAttached: true, RestoreOnDetach: tc.second}
			b, err := startAgent(t, ns, &cfg2)
			if err != nil {
				t.Fatal(err)
			}
			if at := b.attach[0]; at.Action != "updated" || at.Via != "netlink" {
				t.Fatalf("restarted agent: %+v", at)
			}
			b.Close()
			ns.Do(func() { err = Detach(pin, true) })
			if err != nil {
				t.Fatal(err)
			}
			want := uint32(0)
			if tc.second {
				want = fwID
			}
			if id := xdpProgID(t, ns, "pa0"); id != want {
				t.Fatalf("pa0 runs %d after detach with restore_on_detach %v (the running agent's), want %d", id, tc.second, want)
			}
		})
	}
}

// TestTakeOverChainsTheProgramItReplaces: setupChain puts pa0's foreign
// program in pa0's chain slot, then attachXDP swaps it for ours. If the
// operator's tool replaced its program on pa0 in between (a firewall
// upgrade), the swap must not go through with the old program in the
// slot: pa0 would then run ours followed by a program that is no longer
// the interface's, and the one it ran last would be dropped entirely.
func TestTakeOverChainsTheProgramItReplaces(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, _ := testConfig(t, pin)
	cfg.XDPChain = &XDPChain{TakeOverAttached: true}
	fw1 := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Name: "fw_one"})
	fw2 := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Name: "fw_two"})
	fw2ID := progID(t, fw2.Program)

	var idx int
	ns.Do(func() {
		l, _ := netlink.LinkByName("pa0")
		idx = l.Attrs().Index
		if err := netlink.LinkSetXdpFdWithFlags(l, fw1.Program.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			t.Fatal(err)
		}
	})
	r, err := maps.LoadRouter(cfg.MapsConfig(), maps.Options{PinDir: cfg.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ns.Do(func() { err = setupChain(discardLogger(), cfg, r, "router", []string{"pa0"}) })
	if err != nil {
		t.Fatal(err)
	}
	// The firewall's owner swaps in its new version meanwhile.
	ns.Do(func() {
		l, _ := netlink.LinkByName("pa0")
		if err := netlink.LinkSetXdpFdWithFlags(l, fw2.Program.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			t.Fatal(err)
		}
	})
	var at *Attachment
	ns.Do(func() { at, err = attachXDP(r.Program(), "router", "pa0", cfg.XDPMode, cfg.PinDir, cfg.XDPChain, r) })
	if err != nil {
		// Refused: fine if pa0 still runs fw2.
		if id := xdpProgID(t, ns, "pa0"); id != fw2ID {
			t.Fatalf("take-over refused (%v) but pa0 runs %d, want fw2 %d", err, id, fw2ID)
		}
		return
	}
	next, err := r.NextFor(idx)
	if err != nil {
		t.Fatal(err)
	}
	var nextID uint32
	if next != nil {
		nextID = progID(t, next)
		next.Close()
	}
	if nextID != fw2ID {
		t.Fatalf("pa0 taken over (%s): it runs ours followed by program %d, not fw2 %d, the program it replaced (fw2 is gone from pa0)",
			at.Action, nextID, fw2ID)
	}
}
