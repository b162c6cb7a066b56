package maps

// Decap program cases that need no namespace: loaded unpinned, run with
// BPF_PROG_TEST_RUN.

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
)

// loadDecapRun loads the decap program without pins or namespaces and
// terminates ep4 (GUE on 6080) and ep6 (GUE on 6080).
func loadDecapRun(t *testing.T, sourcesOnly bool) (*Decap, func([]byte) (uint32, []byte, map[string]uint64)) {
	t.Helper()
	requireRoot(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, s := range []string{"10.99.0.10", "fd99::10"} {
		if err := d.SetEndpoint(DecapEndpoint{Addr: netip.MustParseAddr(s), GUEPort: 6080, SourcesOnly: sourcesOnly}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(frame []byte) (uint32, []byte, map[string]uint64) {
		t.Helper()
		before, _ := d.Stats()
		out := make([]byte, len(frame)+256)
		opts := ebpf.RunOptions{Data: slices.Clone(frame), DataOut: out}
		v, err := d.Program().Run(&opts)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := d.Stats()
		return v, opts.DataOut, fieldDelta(before.Fields(), after.Fields())
	}
	return d, run
}

// TestDecapInnerIPv4HeaderLongerThanPacket: an inner IPv4 packet whose
// own total length is shorter than its header (tot_len < 4·IHL) is invalid;
// the program checks IHL ≥ 5 but not this, and decapsulates it when
// Ethernet padding makes the 20 header bytes readable.
func TestDecapInnerIPv4HeaderLongerThanPacket(t *testing.T) {
	_, run := loadDecapRun(t, false)
	edge, ep := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.10")
	inner := rawV4(netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1"), 6, 0x4000, 0, nil, tcpHdr(1, 80, 2, 5))
	// Inner says it is 8 bytes long (less than its 20-byte header); the
	// outer carries exactly those 8 bytes, the frame's padding holds the rest.
	short := slices.Clone(inner[:20])
	binary.BigEndian.PutUint16(short[2:], 8)
	binary.BigEndian.PutUint16(short[10:], 0)
	binary.BigEndian.PutUint16(short[10:], csum(short))
	outer := rawV4(edge, ep, 4, 0x4000, 20+8, nil, short) // tot_len 28: 20 + the inner's 8
	frame := ethFrame(outer, 0x0800, 0)
	v, _, d := run(frame)
	if v != xdpDrop || d["drop_malformed"] != 1 {
		t.Errorf("IPIP, inner tot_len 8 < its 20-byte header: verdict %s reasons %v, want drop_malformed", verdictNames[v], d)
	}
	// GUE: the same inner packet in UDP to the GUE port (UDP length 8+8).
	g := append(udpHdr(50000, 6080, 8+8), short...)
	outer = rawV4(edge, ep, 17, 0x4000, 20+8+8, nil, g)
	v, _, d = run(ethFrame(outer, 0x0800, 0))
	if v != xdpDrop || d["drop_malformed"] != 1 {
		t.Errorf("GUE, inner tot_len 8 < its 20-byte header: verdict %s reasons %v, want drop_malformed", verdictNames[v], d)
	}
	// IHL 6 (24-byte header) with total length 20: the header claims four
	// option bytes the packet does not hold.
	ihl6 := slices.Clone(inner[:20])
	ihl6[0] = 0x46
	binary.BigEndian.PutUint16(ihl6[2:], 20)
	binary.BigEndian.PutUint16(ihl6[10:], 0)
	binary.BigEndian.PutUint16(ihl6[10:], csum(ihl6))
	v, _, d = run(ethFrame(rawV4(edge, ep, 4, 0x4000, 0, nil, ihl6), 0x0800, 0))
	if v != xdpDrop || d["drop_malformed"] != 1 {
		t.Errorf("IPIP, inner IHL 6 with tot_len 20: verdict %s reasons %v, want drop_malformed", verdictNames[v], d)
	}
	g = append(udpHdr(50000, 6080, 8+20), ihl6...)
	v, _, d = run(ethFrame(rawV4(edge, ep, 17, 0x4000, 0, nil, g), 0x0800, 0))
	if v != xdpDrop || d["drop_malformed"] != 1 {
		t.Errorf("GUE, inner IHL 6 with tot_len 20: verdict %s reasons %v, want drop_malformed", verdictNames[v], d)
	}
	// Control: a well-formed inner packet is still decapsulated.
	v, _, d = run(ethFrame(rawV4(edge, ep, 4, 0x4000, 0, nil, inner), 0x0800, 0))
	if v != xdpPass || d["decap_v4"] != 1 {
		t.Errorf("IPIP, well-formed: verdict %s reasons %v, want decap_v4", verdictNames[v], d)
	}
}

// TestDecapSourcesFamilies: the data plane must take a tunnel packet
// exactly when the rule the agent (unlistedEdges) and the controller
// (tunnelFrom) use says the outer source is listed: some prefix p of
// decap_sources with p.Contains(source). That rule (net/netip) never
// matches an IPv4 address with an IPv6 prefix, and the config refuses
// IPv4-mapped prefixes ("write an IPv4 prefix as IPv4"); the trie keys
// IPv4 sources as ::ffff:a.b.c.d, so an IPv6 prefix covering
// ::ffff:0:0/96 (::/0 up to ::/80) admitted every IPv4 source: with
// decap_sources [10.99.0.0/16, ::/0] an IPv4 host outside 10.99.0.0/16
// could inject inner packets, while the controller believed it refused.
func TestDecapSourcesFamilies(t *testing.T) {
	d, run := loadDecapRun(t, true)
	ep4, ep6 := netip.MustParseAddr("10.99.0.10"), netip.MustParseAddr("fd99::10")
	inner4 := rawV4(netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1"), 6, 0x4000, 0, nil, tcpHdr(1, 80, 2, 5))
	inner6 := rawV6(netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("2001:db8:1::1"), nil, 6, -1, tcpHdr(1, 443, 2, 5))
	frame := func(src netip.Addr) []byte {
		if src.Is4() {
			return ethFrame(rawV4(src, ep4, 4, 0x4000, 0, nil, inner4), 0x0800, 0)
		}
		return ethFrame(rawV6(src, ep6, nil, 41, -1, inner6), 0x86dd, 0)
	}
	for _, srcs := range [][]string{
		{"10.99.0.0/16", "::/0"},
		{"::/0"},
		{"10.99.0.1/32", "::/80"},
		{"fd99::/64"},
		{"10.99.0.0/16", "fd99::/64"},
	} {
		var ps []netip.Prefix
		for _, s := range srcs {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		if _, _, err := d.SetSources(ps); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"10.99.0.1", "10.98.0.1", "203.0.113.9", "fd99::1", "fd98::1"} {
			src := netip.MustParseAddr(s)
			listed := slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(src) })
			v, _, r := run(frame(src))
			taken := v == xdpPass && r["decap_v4"]+r["decap_v6"] == 1
			if taken != listed {
				t.Errorf("decap_sources %v, outer source %s: verdict %s reasons %v; the agent and controller say listed=%v",
					srcs, src, verdictNames[v], r, listed)
			}
		}
	}
}

// TestDecapSourcesLegacyValue: an entry a build before wrote (value
// 1, either family) is rewritten with its family by the next SetSources.
func TestDecapSourcesLegacyValue(t *testing.T) {
	d, run := loadDecapRun(t, true)
	p := netip.MustParsePrefix("::/0")
	k, one := srcKey(p), uint8(1)
	if err := d.objs.PmDecapSources.Put(&k, &one); err != nil {
		t.Fatal(err)
	}
	inner4 := rawV4(netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1"), 6, 0x4000, 0, nil, tcpHdr(1, 80, 2, 5))
	fr := ethFrame(rawV4(netip.MustParseAddr("10.98.0.1"), netip.MustParseAddr("10.99.0.10"), 4, 0x4000, 0, nil, inner4), 0x0800, 0)
	if v, _, _ := run(fr); v != xdpPass {
		t.Fatalf("legacy entry: verdict %s, want the old behaviour (taken)", verdictNames[v])
	}
	w, del, err := d.SetSources([]netip.Prefix{p})
	if err != nil || w != 1 || del != 0 {
		t.Fatalf("SetSources: wrote %d deleted %d err %v, want the legacy value rewritten", w, del, err)
	}
	if v, _, r := run(fr); v != xdpDrop || r["drop_source"] != 1 {
		t.Fatalf("after the rewrite: verdict %s reasons %v, want drop_source", verdictNames[v], r)
	}
	if w, del, _ := d.SetSources([]netip.Prefix{p}); w != 0 || del != 0 {
		t.Fatalf("second SetSources wrote %d deleted %d", w, del)
	}
}

// TestDecapV6FragmentReason: an outer IPv4 fragment of a tunnel
// packet to one of our endpoints is passed and counted pass_fragment; its
// IPv6 counterpart (a fragment header before next header 41 / 4 / 17) was
// counted pass_not_tunnel, "not a tunnel packet to one of our endpoints".
func TestDecapV6FragmentReason(t *testing.T) {
	_, run := loadDecapRun(t, false)
	edge4, ep4 := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.10")
	edge6, ep6 := netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::10")
	inner4 := rawV4(netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1"), 6, 0x4000, 0, nil, tcpHdr(1, 80, 2, 5))
	inner6 := rawV6(netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("2001:db8:1::1"), nil, 6, -1, tcpHdr(1, 443, 2, 5))
	gue6 := append(udpHdr(50000, 6080, 8+len(inner6)), inner6...)
	frag := []v6hdr{v6Frag(0, true, 5)}
	for _, tc := range []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"v4: IPIP, outer fragment (reference)", ethFrame(rawV4(edge4, ep4, 4, 0x2000, 0, nil, inner4), 0x0800, 0), "pass_fragment"},
		{"v6: IP6IP6, outer fragment", ethFrame(rawV6(edge6, ep6, frag, 41, -1, inner6), 0x86dd, 0), "pass_fragment"},
		{"v6: 4in6, outer fragment", ethFrame(rawV6(edge6, ep6, frag, 4, -1, inner4), 0x86dd, 0), "pass_fragment"},
		{"v6: GUE, outer fragment", ethFrame(rawV6(edge6, ep6, frag, 17, -1, gue6), 0x86dd, 0), "pass_fragment"},
		{"v6: IP6IP6 fragment to another address", ethFrame(rawV6(edge6, netip.MustParseAddr("fd99::77"), frag, 41, -1, inner6), 0x86dd, 0), "pass_not_local"},
		{"v6: TCP fragment to the endpoint", ethFrame(rawV6(edge6, ep6, frag, 6, -1, tcpHdr(1, 22, 2, 5)), 0x86dd, 0), "pass_not_tunnel"},
	} {
		v, out, d := run(tc.frame)
		if v != xdpPass || d[tc.reason] != 1 || len(d) != 1 || !bytes.Equal(out, tc.frame) {
			t.Errorf("%s: verdict %s reasons %v, want it passed untouched as %s", tc.name, verdictNames[v], d, tc.reason)
		}
	}
}

// TestDecapTable: controls that pass before and after the fixes.
func TestDecapTable(t *testing.T) {
	_, run := loadDecapRun(t, false)
	edge4, ep4 := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.10")
	edge6, ep6 := netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::10")
	inner4 := rawV4(netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1"), 6, 0x4000, 0, nil, tcpHdr(1, 80, 2, 5))
	inner6 := rawV6(netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("2001:db8:1::1"), nil, 6, -1, tcpHdr(1, 443, 2, 5))
	gue := func(port uint16, ulen int, in []byte) []byte { return append(udpHdr(50000, port, ulen), in...) }
	for _, tc := range []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"v6 GUE, UDP len short by 1", ethFrame(rawV6(edge6, ep6, nil, 17, -1, gue(6080, 8+len(inner6)-1, inner6)), 0x86dd, 0), "drop_malformed"},
		{"v6 GUE, UDP len long by 1", ethFrame(rawV6(edge6, ep6, nil, 17, -1, gue(6080, 8+len(inner6)+1, inner6)), 0x86dd, 0), "drop_malformed"},
		{"v4 GUE, UDP len short by 1", ethFrame(rawV4(edge4, ep4, 17, 0x4000, 0, nil, gue(6080, 8+len(inner4)-1, inner4)), 0x0800, 0), "drop_malformed"},
		{"v4 GUE inner6", ethFrame(rawV4(edge4, ep4, 17, 0x4000, 0, nil, gue(6080, 8+len(inner6), inner6)), 0x0800, 0), "decap_v4"},
		{"v6 4in6", ethFrame(rawV6(edge6, ep6, nil, 4, -1, inner4), 0x86dd, 0), "decap_v6"},
		{"v6 4in6 inner longer", ethFrame(rawV6(edge6, ep6, nil, 4, -1, inner4[:30]), 0x86dd, 0), "drop_malformed"},
		{"v4 6in4", ethFrame(rawV4(edge4, ep4, 41, 0x4000, 0, nil, inner6), 0x0800, 0), "decap_v4"},
		{"v6 outer payload beyond frame", ethFrame(rawV6(edge6, ep6, nil, 41, len(inner6)+8, inner6), 0x86dd, 0), "drop_malformed"},
		{"v4 GUE, non-first fragment", ethFrame(rawV4(edge4, ep4, 17, 5, 0, nil, inner4), 0x0800, 0), "pass_fragment"},
		{"v4 GUE, UDP len 0", ethFrame(rawV4(edge4, ep4, 17, 0x4000, 0, nil, gue(6080, 0, inner4)), 0x0800, 0), "drop_malformed"},
	} {
		v, _, d := run(tc.frame)
		if d[tc.reason] != 1 {
			t.Errorf("%s: verdict %s reasons %v, want %s", tc.name, verdictNames[v], d, tc.reason)
		}
	}
}
