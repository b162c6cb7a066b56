package maps

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"

	"github.com/premirror/premirror/internal/maps/mapstest"
)

func peerSeen(t testing.TB, p *mapstest.Peer) uint64 {
	t.Helper()
	n, err := p.Seen()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestChainRouter: what the router passes untouched reaches the peer and
// takes the peer's verdict; VIP traffic stays ours and the peer never sees
// it; the reason counters mean what they meant without a peer; an empty
// slot passes as before.
func TestChainRouter(t *testing.T) {
	f := newFixture(t)
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	if p, err := f.r.Next(); err != nil || p != nil {
		t.Fatalf("fresh router has a next program: %v %v", p, err)
	}
	if err := f.r.SetNext(peer.Program); err != nil {
		t.Fatal(err)
	}
	next, err := f.r.Next()
	if err != nil || next == nil {
		t.Fatalf("Next after SetNext: %v %v", next, err)
	}
	info, _ := DescribeProgram(next)
	next.Close()
	if info.Name != "fw_udp_drop" {
		t.Fatalf("next program %+v", info)
	}

	udp9 := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1000, dport: 9, proto: layers.IPProtocolUDP}
	tests := []struct {
		name     string
		p        pkt
		raw      []byte
		verdict  uint32
		reason   string
		peerSees bool
	}{
		{name: "non-VIP UDP to port 9: peer drops", p: udp9, verdict: xdpDrop, reason: "pass_not_vip", peerSees: true},
		{name: "non-VIP UDP to port 10: peer passes", p: pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1000, dport: 10, proto: layers.IPProtocolUDP},
			verdict: xdpPass, reason: "pass_not_vip", peerSees: true},
		{name: "non-VIP TCP: peer passes", p: pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1000, dport: 80}, verdict: xdpPass, reason: "pass_not_vip", peerSees: true},
		{name: "VIP address, UDP port 9 (not a VIP): peer drops", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 1000, dport: 9, proto: layers.IPProtocolUDP},
			verdict: xdpDrop, reason: "pass_not_vip", peerSees: true},
		{name: "ICMP echo to VIP address: peer", p: pkt{src: clientEU, dst: vipWeb.Addr, proto: layers.IPProtocolICMPv4}, verdict: xdpPass, reason: "pass_not_vip", peerSees: true},
		{name: "ARP: peer", raw: arpFrame(), verdict: xdpPass, reason: "pass_not_ip", peerSees: true},
		{name: "malformed IPv4 passed: peer sees it", raw: badIHL(t), verdict: xdpPass, reason: "pass_malformed", peerSees: true},
		{name: "later fragment, not to a VIP: peer", p: pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1, dport: 9, proto: layers.IPProtocolUDP, frag: &fragment{offset: 100, id: 4}},
			verdict: xdpPass, reason: "pass_not_vip", peerSees: true},
		{name: "VIP TCP: ours, encapsulated", p: pkt{src: clientEU, dst: vipWeb.Addr, sport: 2000, dport: 80}, verdict: xdpTX, reason: "tx"},
		{name: "VIP UDP: ours, encapsulated", p: pkt{src: clientEU, dst: vipDNS.Addr, sport: 2000, dport: 53, proto: layers.IPProtocolUDP}, verdict: xdpTX, reason: "tx"},
		{name: "VIP on another device: redirect", p: pkt{src: clientEU, dst: vipFar.Addr, sport: 2000, dport: 80}, verdict: xdpRedirect, reason: "redirect"},
		{name: "malformed TCP to a VIP: ours, dropped", raw: badTCP(t), verdict: xdpDrop, reason: "drop_malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.raw
			if in == nil {
				in = tt.p.frame(t)
			}
			before, seen := f.stats(t), peerSeen(t, peer)
			got, out := f.send(t, in)
			if got != tt.verdict {
				t.Fatalf("verdict %s, want %s", verdictNames[got], verdictNames[tt.verdict])
			}
			if d := statDelta(before, f.stats(t)); d[tt.reason] != 1 || len(d) != 1 {
				t.Errorf("counters %v, want only %s +1", d, tt.reason)
			}
			if n := peerSeen(t, peer) - seen; n != map[bool]uint64{true: 1}[tt.peerSees] {
				t.Errorf("peer ran %d times, want peer sees it %v", n, tt.peerSees)
			}
			if tt.peerSees && !bytes.Equal(out, in) {
				t.Errorf("frame handed to the peer was modified")
			}
		})
	}

	// Empty slot: back to XDP_PASS, the peer out of the path.
	if err := f.r.ClearNext(); err != nil {
		t.Fatal(err)
	}
	if err := f.r.ClearNext(); err != nil {
		t.Fatalf("clearing an empty slot: %v", err)
	}
	seen := peerSeen(t, peer)
	if got, out := f.send(t, udp9.frame(t)); got != xdpPass || !bytes.Equal(out, udp9.frame(t)) {
		t.Fatalf("empty slot: verdict %s", verdictNames[got])
	}
	if peerSeen(t, peer) != seen {
		t.Fatal("peer ran after its slot was cleared")
	}
}

// TestChainRefused: programs that cannot follow ours are refused with
// ErrChainIncompatible and leave the slot as it was.
func TestChainRefused(t *testing.T) {
	f := newFixture(t)
	good := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	if err := f.r.SetNext(good.Program); err != nil {
		t.Fatal(err)
	}
	sock, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	frags := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Frags: true, Name: "fw_frags"})
	legacy := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{LegacyAttachType: true, Name: "fw_legacy"})
	for name, p := range map[string]*ebpf.Program{
		"socket filter":          sock,
		"xdp.frags program":      frags.Program,
		"expected attach type 0": legacy.Program,
		"our own router":         f.r.Program(),
	} {
		t.Run(name, func(t *testing.T) {
			err := f.r.SetNext(p)
			if !errors.Is(err, ErrChainIncompatible) {
				t.Fatalf("SetNext: %v, want ErrChainIncompatible", err)
			}
			t.Log(err)
			next, err := f.r.Next()
			if err != nil || next == nil {
				t.Fatalf("slot emptied by a refused program: %v", err)
			}
			info, _ := DescribeProgram(next)
			next.Close()
			if info.Name != "fw_udp_drop" {
				t.Fatalf("slot holds %s after a refused SetNext", info)
			}
		})
	}
}

// TestChainPinnedSurvivesReload: the slot is pinned state like the other
// maps: a reloaded (upgraded) router chains to the same peer, and a
// read-only tool sees it.
func TestChainPinnedSurvivesReload(t *testing.T) {
	env := newNSEnv(t)
	dir := bpffsDir(t)
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	r, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetNext(peer.Program); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	in := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1, dport: 9, proto: layers.IPProtocolUDP}.frame(t)
	if v, _ := env.run(t, r2.Program(), in, 0); v != xdpDrop {
		t.Fatalf("reloaded router: verdict %s, want the peer's DROP", verdictNames[v])
	}
	info, ok, err := PinnedNext(dir, RouterNextMap)
	if err != nil || !ok || info.Name != "fw_udp_drop" {
		t.Fatalf("PinnedNext: %+v %v %v", info, ok, err)
	}
}

// TestChainDecap: the decap program chains what it passes untouched; the
// packets it decapsulates go to the stack, not to the peer.
func TestChainDecap(t *testing.T) {
	f := newFixture(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.AddEndpoint(fixtureMirrors[m1]); err != nil {
		t.Fatal(err)
	}
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	if err := d.SetNext(peer.Program); err != nil {
		t.Fatal(err)
	}
	// A tunnel packet for us carrying UDP to port 9: decapsulated and
	// passed, never shown to the peer.
	inner := pkt{src: clientEU, dst: vipDNS.Addr, sport: 1, dport: 53, proto: layers.IPProtocolUDP}.frame(t)
	if v, _ := f.send(t, inner); v != xdpTX {
		t.Fatalf("router verdict %s", verdictNames[v])
	}
	_, enc := f.send(t, pkt{src: clientEU, dst: vipDNS.Addr, sport: 2, dport: 53, proto: layers.IPProtocolUDP}.frame(t))
	seen := peerSeen(t, peer)
	if v, _ := f.env.run(t, d.Program(), enc, 0); v != xdpPass || peerSeen(t, peer) != seen {
		t.Fatalf("tunnel packet: verdict %s, peer ran %d times", verdictNames[v], peerSeen(t, peer)-seen)
	}
	// Plain traffic: the peer's verdict.
	udp9 := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1, dport: 9, proto: layers.IPProtocolUDP}.frame(t)
	if v, _ := f.env.run(t, d.Program(), udp9, 0); v != xdpDrop || peerSeen(t, peer) != seen+1 {
		t.Fatalf("plain UDP/9: verdict %s, want the peer's DROP", verdictNames[v])
	}
	st, _ := d.Stats()
	if st.PassNotTunnel == 0 {
		t.Fatal("chained packet not counted as pass_not_tunnel")
	}
	if err := d.ClearNext(); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.env.run(t, d.Program(), udp9, 0); v != xdpPass {
		t.Fatalf("empty slot: verdict %s", verdictNames[v])
	}
}
