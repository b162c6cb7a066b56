package maps

import (
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// rootFixture is the router with the standard fixture's state, loaded in
// the test's own namespace (no veths, no pins): enough for verdicts taken
// before the FIB lookup. There every steered packet ends drop_fib_miss
// (forwarding is off), which tells "steered to a mirror" apart from the
// other verdicts.
func newRootFixture(t *testing.T) *Router {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs")
	}
	r, err := LoadRouter(testConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SetSettings(Settings{DefaultRegion: regDefault, OuterSourceV4: edgeV4, OuterSourceV6: edgeV6}))
	must(r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}))
	must(r.SetMirror(m3v6, Mirror{Addr: fixtureMirrors[m3v6], State: MirrorActive}))
	for p, reg := range map[string]RegionID{"198.51.100.0/24": regEU, "2001:db8:1::/48": regEU} {
		must(r.SetRegionPrefix(netip.MustParsePrefix(p), reg))
	}
	must(r.SetVIP(vipWeb, VIPOptions{Resource: resWeb, AffinityTimeout: 0}))
	must(r.SetVIP(vipWeb6, VIPOptions{Resource: resWeb6}))
	must(r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1}))
	must(r.SetRoute(resWeb6, RegionAny, map[MirrorID]uint32{m3v6: 1}))
	return r
}

func rootRun(t *testing.T, r *Router, frame []byte) (uint32, map[string]uint64) {
	t.Helper()
	before, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.Program().Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatal(err)
	}
	after, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return v, statDelta(before, after)
}

// TestICMPErrorFragments: an ICMP error about a VIP flow that arrives
// fragmented is steered to the flow's mirror (its first fragment is); its
// later fragments must follow the first one, as every VIP fragment does.
// The first fragment's pm_frags record is keyed by the quoted flow's
// addresses (client, VIP) instead of the fragment's own (the router that
// sent the error, VIP), so the later fragments never find it and are
// dropped as strays (drop_frag_miss).
func TestICMPErrorFragments(t *testing.T) {
	r := newRootFixture(t)
	const tcp, icmp, icmp6 = 6, 1, 58
	router4, router6 := a("198.51.100.254"), a("2001:db8:1::fe")

	t.Run("v4", func(t *testing.T) {
		quote := rawV4(vipWeb.Addr, clientEU, tcp, 0x4000, 0, nil, tcpHdr(80, 1234, 0x12, 5))
		body := append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0x78}, quote...) // frag needed, MTU 1400
		body = append(body, make([]byte, 64-len(body)%8)...)
		first := ethFrame(rawV4(router4, vipWeb.Addr, icmp, 0x2000, 0, nil, body), 0x0800, 0) // MF, offset 0
		later := ethFrame(rawV4(router4, vipWeb.Addr, icmp, uint16(len(body)/8), 0, nil, make([]byte, 40)), 0x0800, 0)
		if v, d := rootRun(t, r, first); v != xdpDrop || d["drop_fib_miss"] != 1 || d["icmp_steered"] != 1 {
			t.Fatalf("first fragment: verdict %s reasons %v, want it steered (drop_fib_miss here)", verdictNames[v], d)
		}
		if v, d := rootRun(t, r, later); d["drop_frag_miss"] != 0 || d["fragments"] != 1 {
			t.Fatalf("later fragment: verdict %s reasons %v, want it steered like its first fragment", verdictNames[v], d)
		}
	})
	t.Run("v4, error about a flow that is no VIP's: passed, and so are its later fragments", func(t *testing.T) {
		quote := rawV4(vipWeb.Addr, clientEU, tcp, 0x4000, 0, nil, tcpHdr(81, 1234, 0x12, 5)) // port 81: no VIP
		body := append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0x78}, quote...)
		body = append(body, make([]byte, 64-len(body)%8)...)
		fr := func(l3 []byte) []byte { return ethFrame(l3, 0x0800, 0) }
		if v, d := rootRun(t, r, fr(rawV4(router4, vipWeb.Addr, icmp, 0x2000, 0, nil, body))); v != xdpPass || d["pass_not_vip"] != 1 {
			t.Fatalf("first fragment: verdict %s reasons %v, want pass_not_vip", verdictNames[v], d)
		}
		if v, d := rootRun(t, r, fr(rawV4(router4, vipWeb.Addr, icmp, uint16(len(body)/8), 0, nil, make([]byte, 40)))); v != xdpPass || d["pass_not_vip"] != 1 {
			t.Fatalf("later fragment: verdict %s reasons %v, want pass_not_vip like its first fragment", verdictNames[v], d)
		}
	})
	t.Run("v6", func(t *testing.T) {
		quote := rawV6(vipWeb6.Addr, client6EU, nil, tcp, -1, tcpHdr(443, 1234, 0x12, 5))
		body := append([]byte{2, 0, 0, 0, 0, 0, 0x05, 0x00}, quote...) // packet too big
		body = append(body, make([]byte, 8-len(body)%8)...)
		first := ethFrame(rawV6(router6, vipWeb6.Addr, []v6hdr{v6Frag(0, true, 901)}, icmp6, -1, body), 0x86dd, 0)
		later := ethFrame(rawV6(router6, vipWeb6.Addr, []v6hdr{v6Frag(uint16(len(body)/8), false, 901)}, icmp6, -1, make([]byte, 40)), 0x86dd, 0)
		if v, d := rootRun(t, r, first); v != xdpDrop || d["drop_fib_miss"] != 1 || d["icmp_steered"] != 1 {
			t.Fatalf("first fragment: verdict %s reasons %v, want it steered (drop_fib_miss here)", verdictNames[v], d)
		}
		if v, d := rootRun(t, r, later); d["drop_frag_miss"] != 0 || d["fragments"] != 1 {
			t.Fatalf("later fragment: verdict %s reasons %v, want it steered like its first fragment", verdictNames[v], d)
		}
	})
}
