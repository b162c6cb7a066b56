package maps

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// TestChainPerInterface: a program in an interface's slot follows ours on
// that interface only, in place of the one for every interface (slot 0);
// interfaces without a slot of their own keep slot 0; clearing an
// interface's slot falls back to slot 0.
func TestChainPerInterface(t *testing.T) {
	f := newFixture(t)
	onPM0 := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{Name: "fw_pm0"})
	onPMR0 := mapstest.NewPeerT(t, 10, mapstest.PeerOptions{Name: "fw_pmr0"})
	all := mapstest.NewPeerT(t, 11, mapstest.PeerOptions{Name: "fw_all"})
	if err := f.r.SetNextFor(f.env.pm0, onPM0.Program); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetNextFor(f.env.pmr0, onPMR0.Program); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetNext(all.Program); err != nil {
		t.Fatal(err)
	}
	udp := func(port uint16) []byte {
		return pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1000, dport: port, proto: layers.IPProtocolUDP}.frame(t)
	}
	lo := 1 // the loopback device: no slot of its own
	peers := map[string]*mapstest.Peer{"pm0": onPM0, "pmr0": onPMR0, "all": all}
	tests := []struct {
		name    string
		ifindex int
		port    uint16
		verdict uint32
		runs    string // the one peer that runs
	}{
		{"pm0, port 9: its own peer drops", f.env.pm0, 9, xdpDrop, "pm0"},
		{"pm0, port 11: its own peer passes, slot 0 not run", f.env.pm0, 11, xdpPass, "pm0"},
		{"pmr0, port 9: its own peer passes", f.env.pmr0, 9, xdpPass, "pmr0"},
		{"pmr0, port 10: its own peer drops", f.env.pmr0, 10, xdpDrop, "pmr0"},
		{"lo, port 11: slot 0 drops", lo, 11, xdpDrop, "all"},
		{"lo, port 9: slot 0 passes", lo, 9, xdpPass, "all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]uint64{}
			for n, p := range peers {
				before[n] = peerSeen(t, p)
			}
			if v, _ := f.env.run(t, f.r.Program(), udp(tt.port), tt.ifindex); v != tt.verdict {
				t.Fatalf("verdict %s, want %s", verdictNames[v], verdictNames[tt.verdict])
			}
			for n, p := range peers {
				if got, want := peerSeen(t, p)-before[n], map[bool]uint64{true: 1}[n == tt.runs]; got != want {
					t.Errorf("peer %s ran %d times, want %d", n, got, want)
				}
			}
		})
	}
	// VIP traffic stays ours whatever the interface.
	seen := peerSeen(t, onPM0)
	if v, _ := f.env.run(t, f.r.Program(), pkt{src: clientEU, dst: vipDNS.Addr, sport: 2000, dport: 53, proto: layers.IPProtocolUDP}.frame(t), f.env.pm0); v != xdpTX {
		t.Fatalf("VIP on pm0: verdict %s", verdictNames[v])
	}
	if peerSeen(t, onPM0) != seen {
		t.Fatal("pm0's peer saw VIP traffic")
	}

	list, err := f.r.NextPrograms(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range list {
		got = append(got, fmt.Sprintf("%d=%s", e.Ifindex, e.Program.Name))
	}
	want := []string{"0=fw_all", fmt.Sprintf("%d=fw_pm0", f.env.pm0), fmt.Sprintf("%d=fw_pmr0", f.env.pmr0)}
	if !slices.Equal(got, want) {
		t.Fatalf("NextPrograms(nil) = %v, want %v", got, want)
	}
	if list, err := f.r.NextPrograms([]int{f.env.pmr0, lo, ChainSlots + 5}); err != nil || len(list) != 1 || list[0].Ifindex != f.env.pmr0 {
		t.Fatalf("NextPrograms(pmr0, lo, out of range) = %+v %v", list, err)
	}
	if p, err := f.r.NextFor(f.env.pm0); err != nil || p == nil {
		t.Fatalf("NextFor(pm0): %v %v", p, err)
	} else {
		p.Close()
	}

	for _, bad := range []int{-1, ChainSlots, ChainSlots + 1} {
		if err := f.r.SetNextFor(bad, onPM0.Program); !errors.Is(err, ErrChainIncompatible) {
			t.Errorf("SetNextFor(%d): %v, want ErrChainIncompatible", bad, err)
		}
	}
	if err := f.r.SetNextFor(f.env.pm0, f.r.Program()); !errors.Is(err, ErrChainIncompatible) {
		t.Errorf("SetNextFor(pm0, our router): %v, want ErrChainIncompatible", err)
	}

	// pm0 without a slot of its own: back to slot 0.
	if err := f.r.ClearNextFor(f.env.pm0); err != nil {
		t.Fatal(err)
	}
	seen = peerSeen(t, all)
	if v, _ := f.env.run(t, f.r.Program(), udp(11), f.env.pm0); v != xdpDrop || peerSeen(t, all) != seen+1 {
		t.Fatalf("pm0 after ClearNextFor: verdict %s, want slot 0's DROP", verdictNames[v])
	}
	if err := f.r.ClearNextFor(f.env.pm0); err != nil {
		t.Fatalf("clearing an empty slot: %v", err)
	}
}

// TestChainDecapPerInterface: the decap program takes the same
// per-interface slots.
func TestChainDecapPerInterface(t *testing.T) {
	f := newFixture(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	if err := d.SetNextFor(f.env.pmr0, peer.Program); err != nil {
		t.Fatal(err)
	}
	udp9 := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1, dport: 9, proto: layers.IPProtocolUDP}.frame(t)
	if v, _ := f.env.run(t, d.Program(), udp9, f.env.pmr0); v != xdpDrop {
		t.Fatalf("pmr0: verdict %s, want its peer's DROP", verdictNames[v])
	}
	if v, _ := f.env.run(t, d.Program(), udp9, f.env.pm0); v != xdpPass {
		t.Fatalf("pm0 (no slot): verdict %s, want PASS", verdictNames[v])
	}
	if list, err := d.NextPrograms(nil); err != nil || len(list) != 1 || list[0].Ifindex != f.env.pmr0 {
		t.Fatalf("NextPrograms: %+v %v", list, err)
	}
	if err := d.ClearNextFor(f.env.pmr0); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.env.run(t, d.Program(), udp9, f.env.pmr0); v != xdpPass {
		t.Fatalf("pmr0 after ClearNextFor: verdict %s", verdictNames[v])
	}
}

// pinOneSlotChain pins what the one-slot build left: a PROG_ARRAY with
// max_entries 1 under name, holding peer in slot 0.
func pinOneSlotChain(t *testing.T, dir, name string, peer *mapstest.Peer) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Put(uint32(0), peer.Program); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// pinnedSlots is the max_entries of the map pinned at path.
func pinnedSlots(t *testing.T, path string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.MaxEntries()
}

// TestChainMigratesOneSlotPin: an agent upgraded from the one-slot build
// finds pm_next / pm_decap_next pinned with max_entries 1. The program in
// their slot 0 is carried into slot 0 of the new maps by LoadRouter and
// LoadDecap (before anything is attached); a load that fails for another
// reason leaves the old pin in place.
func TestChainMigratesOneSlotPin(t *testing.T) {
	env := newNSEnv(t)
	dir := bpffsDir(t)
	peer := mapstest.NewPeerT(t, 9, mapstest.PeerOptions{})
	cfg := testConfig()
	r, err := LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	pinOneSlotChain(t, dir, RouterNextMap, peer)

	// A load that fails (another map's size changed) keeps the old pin.
	other := cfg
	other.MaxVIPs *= 2
	if r, err := LoadRouter(other, Options{PinDir: dir}); !errors.Is(err, ErrIncompatiblePin) {
		if r != nil {
			r.Close()
		}
		t.Fatalf("LoadRouter with other sizes: %v, want ErrIncompatiblePin", err)
	}
	if n := pinnedSlots(t, filepath.Join(dir, RouterNextMap)); n != 1 {
		t.Fatalf("after a failed load %s has %d slots, want the old map (1) back", RouterNextMap, n)
	}
	if info, ok, err := PinnedNext(dir, RouterNextMap); err != nil || !ok || info.Name != "fw_udp_drop" {
		t.Fatalf("old pin after a failed load: %+v %v %v", info, ok, err)
	}

	r, err = LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n := pinnedSlots(t, filepath.Join(dir, RouterNextMap)); n != ChainSlots {
		t.Fatalf("%s has %d slots after the upgrade, want %d", RouterNextMap, n, ChainSlots)
	}
	next, err := r.Next()
	if err != nil || next == nil {
		t.Fatalf("slot 0 after the upgrade: %v %v", next, err)
	}
	if progIDOf(t, next) != progIDOf(t, peer.Program) {
		t.Fatal("slot 0 holds another program than the one-slot map did")
	}
	next.Close()
	in := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 1, dport: 9, proto: layers.IPProtocolUDP}.frame(t)
	if v, _ := env.run(t, r.Program(), in, 0); v != xdpDrop {
		t.Fatalf("upgraded router: verdict %s, want the peer's DROP", verdictNames[v])
	}

	pinOneSlotChain(t, dir, DecapNextMap, peer)
	d, err := LoadDecap(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if list, err := d.NextPrograms(nil); err != nil || len(list) != 1 || list[0].Ifindex != 0 || list[0].Program.Name != "fw_udp_drop" {
		t.Fatalf("decap slots after the upgrade: %+v %v", list, err)
	}
	if v, _ := env.run(t, d.Program(), in, 0); v != xdpDrop {
		t.Fatalf("upgraded decap: verdict %s, want the peer's DROP", verdictNames[v])
	}
}

func progIDOf(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}
