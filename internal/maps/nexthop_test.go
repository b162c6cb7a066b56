package maps

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// sendPinned runs one frame received on ifindex, on a fixed CPU: the
// next-hop cache is per CPU, so a test that expects a hit must run every
// packet on the CPU that filled the entry.
func (f *fixture) sendPinned(t testing.TB, frame []byte, ifindex int) (uint32, []byte) {
	t.Helper()
	var ret uint32
	var out []byte
	var err error
	f.env.do(func() {
		err = onOneCPU(func() error {
			opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256),
				Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}}
			var err error
			ret, err = f.r.Program().Run(opts)
			out = opts.DataOut
			return err
		})
	})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	return ret, out
}

func (f *fixture) nhCache(t testing.TB) NextHopCache {
	t.Helper()
	c, err := f.r.NextHopCache()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setNeighbour replaces the neighbour entry of addr on link in the test's
// namespace (a permanent entry, as newNSEnv makes them).
func (f *fixture) setNeighbour(t testing.TB, link int, addr netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	n := &netlink.Neigh{LinkIndex: link, IP: net.IP(addr.AsSlice()), HardwareAddr: mac, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}
	if addr.Is6() {
		n.Family = netlink.FAMILY_V6
	}
	if err := f.env.ns.Do(func() error { return netlink.NeighSet(n) }); err != nil {
		t.Fatalf("set neighbour %s: %v", addr, err)
	}
}

// The cache cases: one per kind of next hop the router resolves.
var nhCases = []struct {
	name    string
	p       pkt
	mirror  netip.Addr
	verdict uint32
}{
	{"v4 in v4, same device", pkt{src: clientEU, dst: vipWeb.Addr, sport: 100, dport: 80, flags: "A"}, fixtureMirrors[m1], xdpTX},
	{"v6 in v6", pkt{src: client6EU, dst: vipWeb6.Addr, sport: 100, dport: 443, flags: "A"}, fixtureMirrors[m3v6], xdpTX},
	{"v4 in v6", pkt{src: clientAS, dst: vipWeb.Addr, sport: 100, dport: 80, flags: "A"}, fixtureMirrors[m3v6], xdpTX},
	{"v6 in v4", pkt{src: client6US, dst: vipWeb6.Addr, sport: 100, dport: 443, flags: "A"}, fixtureMirrors[m1], xdpTX},
	{"v4 redirect to another device", pkt{src: clientEU, dst: vipFar.Addr, sport: 100, dport: 80, flags: "A"}, fixtureMirrors[m4far], xdpRedirect},
	{"v4 with VLAN and TOS", pkt{src: clientEU, dst: vipWeb.Addr, sport: 101, dport: 80, flags: "A", vlan: 7, tos: 0x28}, fixtureMirrors[m1], xdpTX},
}

// TestNextHopCacheHit: a cached next hop produces the same frame, byte for
// byte, as a fresh lookup, and is used without one.
func TestNextHopCacheHit(t *testing.T) {
	f := newFixture(t)
	for _, tt := range nhCases {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.p.frame(t)
			if err := f.r.SetNextHopTTL(0); err != nil {
				t.Fatal(err)
			}
			v0, fresh := f.sendPinned(t, in, f.env.pm0)
			if v0 != tt.verdict {
				t.Fatalf("cache off: verdict %s, want %s", verdictNames[v0], verdictNames[tt.verdict])
			}
			checkEncap(t, in, fresh, tt.mirror, nil)
			if err := f.r.SetNextHopTTL(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			c0 := f.nhCache(t)
			v1, filled := f.sendPinned(t, in, f.env.pm0)
			c1 := f.nhCache(t)
			v2, hit := f.sendPinned(t, in, f.env.pm0)
			c2 := f.nhCache(t)
			if v1 != tt.verdict || v2 != tt.verdict {
				t.Fatalf("verdicts %s, %s, want %s", verdictNames[v1], verdictNames[v2], verdictNames[tt.verdict])
			}
			if c1.Lookups-c0.Lookups != 1 || c1.Hits != c0.Hits {
				t.Fatalf("first packet: lookups +%d hits +%d, want a lookup that fills the cache", c1.Lookups-c0.Lookups, c1.Hits-c0.Hits)
			}
			if c2.Hits-c1.Hits != 1 || c2.Lookups != c1.Lookups {
				t.Fatalf("second packet: lookups +%d hits +%d, want a hit", c2.Lookups-c1.Lookups, c2.Hits-c1.Hits)
			}
			if !bytes.Equal(filled, fresh) || !bytes.Equal(hit, fresh) {
				t.Fatalf("frames differ:\n fresh  %x\n filled %x\n hit    %x", fresh, filled, hit)
			}
		})
	}
}

// TestNextHopCacheInvalidation changes a mirror's neighbour MAC behind the
// cache: the cached MAC is used until the generation is bumped or the entry
// expires, the new one right after.
func TestNextHopCacheInvalidation(t *testing.T) {
	for _, how := range []string{"generation", "expiry"} {
		cases := nhCases[:4]
		if how == "expiry" {
			cases = nhCases[:2] // one IPv4 and one IPv6 mirror: each waits out a TTL
		}
		for _, tt := range cases {
			t.Run(how+"/"+tt.name, func(t *testing.T) {
				f := newFixture(t)
				ttl := 10 * time.Second
				if how == "expiry" {
					ttl = time.Second
				}
				if err := f.r.SetNextHopTTL(ttl); err != nil {
					t.Fatal(err)
				}
				in := tt.p.frame(t)
				oldMAC := mirrorMAC(tt.mirror)
				newMAC := net.HardwareAddr{0x02, 0xbb, 0xbb, 0, 0, 1}
				dst := func(label string, want net.HardwareAddr) {
					t.Helper()
					v, out := f.sendPinned(t, in, f.env.pm0)
					if v != tt.verdict || !bytes.Equal(out[:6], want) {
						t.Fatalf("%s: verdict %s dst MAC %s, want %s %s", label, verdictNames[v], net.HardwareAddr(out[:6]), verdictNames[tt.verdict], want)
					}
				}
				dst("before the change", oldMAC)
				f.setNeighbour(t, f.env.pm0, tt.mirror, newMAC)
				dst("cached, after the change", oldMAC)
				if how == "generation" {
					if _, err := f.r.BumpNextHopGeneration(); err != nil {
						t.Fatal(err)
					}
				} else {
					time.Sleep(ttl + 50*time.Millisecond)
				}
				dst("after "+how, newMAC)
			})
		}
	}
}

// TestNextHopCacheFailuresNotCached: lookups that do not succeed keep
// today's verdicts and leave nothing behind, so the first packet after the
// neighbour or route appears is sent without waiting for the TTL.
func TestNextHopCacheFailuresNotCached(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetNextHopTTL(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.r.SetRoute(resWeb, regUS, map[MirrorID]uint32{m6nn: 1}))
	must(f.r.SetRoute(resWeb, regAS, map[MirrorID]uint32{m7nr: 1}))
	noNeigh := pkt{src: clientUS, dst: vipWeb.Addr, sport: 1, dport: 80, flags: "A"}.frame(t)
	noRoute := pkt{src: clientAS, dst: vipWeb.Addr, sport: 1, dport: 80, flags: "A"}.frame(t)
	send := func(frame []byte, wantV uint32, wantReason string) []byte {
		t.Helper()
		before, c0 := f.stats(t), f.nhCache(t)
		v, out := f.sendPinned(t, frame, f.env.pm0)
		d, c1 := statDelta(before, f.stats(t)), f.nhCache(t)
		if v != wantV || d[wantReason] != 1 {
			t.Fatalf("verdict %s reasons %v, want %s/%s", verdictNames[v], d, verdictNames[wantV], wantReason)
		}
		if wantReason != "tx" && (c1.Lookups != c0.Lookups || c1.Hits != c0.Hits) {
			t.Fatalf("failed lookup touched the cache: %+v -> %+v", c0, c1)
		}
		return out
	}
	for range 2 {
		send(noNeigh, xdpPass, "pass_no_neigh")
		send(noRoute, xdpDrop, "drop_fib_miss")
	}
	// No generation bump: nothing was cached, so the fixes apply at once.
	f.setNeighbour(t, f.env.pm0, fixtureMirrors[m6nn], net.HardwareAddr{2, 0xcc, 0, 0, 0, 6})
	if out := send(noNeigh, xdpTX, "tx"); !bytes.Equal(out[:6], []byte{2, 0xcc, 0, 0, 0, 6}) {
		t.Fatalf("dst MAC %s after the neighbour appeared", net.HardwareAddr(out[:6]))
	}
	must(f.env.ns.Do(func() error {
		_, dst, _ := net.ParseCIDR("10.200.0.0/16")
		return netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("10.99.0.11"), LinkIndex: f.env.pm0})
	}))
	if out := send(noRoute, xdpTX, "tx"); !bytes.Equal(out[:6], mirrorMAC(a("10.99.0.11"))) {
		t.Fatalf("dst MAC %s, want the gateway's", net.HardwareAddr(out[:6]))
	}
}

// TestNextHopCacheMTU: a cached entry only vouches for packets as long as
// one a lookup accepted; a longer one is looked up, so the path MTU check
// (ICMP too big) still holds on a warm cache.
func TestNextHopCacheMTU(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetNextHopTTL(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	small := pkt{src: clientEU, dst: vipWeb.Addr, sport: 9, dport: 80, flags: "A"}.frame(t)
	tooBig := pkt{src: clientEU, dst: vipWeb.Addr, sport: 9, dport: 80, flags: "A", payload: make([]byte, 1500-40-20+1)}.frame(t)
	fits := pkt{src: clientEU, dst: vipWeb.Addr, sport: 9, dport: 80, flags: "A", payload: make([]byte, 1500-40-20)}.frame(t)
	for i, s := range []struct {
		frame   []byte
		reason  string
		lookups uint64
		hits    uint64
	}{
		{small, "tx", 1, 0},            // fills the entry
		{small, "tx", 0, 1},            // hit
		{tooBig, "icmp_too_big", 0, 0}, // longer than any accepted: looked up, refused
		{fits, "tx", 1, 0},             // looked up, raises max_len
		{fits, "tx", 0, 1},             // now a hit
		{small, "tx", 0, 1},
	} {
		before, c0 := f.stats(t), f.nhCache(t)
		_, out := f.sendPinned(t, s.frame, f.env.pm0)
		d, c1 := statDelta(before, f.stats(t)), f.nhCache(t)
		if d[s.reason] != 1 || c1.Lookups-c0.Lookups != s.lookups || c1.Hits-c0.Hits != s.hits {
			t.Fatalf("packet %d: reasons %v lookups +%d hits +%d, want %s +%d +%d", i, d, c1.Lookups-c0.Lookups, c1.Hits-c0.Hits, s.reason, s.lookups, s.hits)
		}
		if s.reason == "icmp_too_big" {
			checkTooBig(t, s.frame, out, 1500-20)
		}
	}
}

// TestNextHopCacheIngress: an entry is only used for packets from the
// device its lookup was made for (routing rules may depend on it).
func TestNextHopCacheIngress(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetNextHopTTL(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 11, dport: 80, flags: "A"}.frame(t)
	for i, s := range []struct {
		ifindex       int
		lookups, hits uint64
		verdict       uint32
	}{
		{f.env.pm0, 1, 0, xdpTX}, {f.env.pm0, 0, 1, xdpTX}, {f.env.pmr0, 1, 0, xdpRedirect}, {f.env.pmr0, 0, 1, xdpRedirect}, {f.env.pm0, 1, 0, xdpTX},
	} {
		c0 := f.nhCache(t)
		v, _ := f.sendPinned(t, in, s.ifindex)
		c1 := f.nhCache(t)
		if v != s.verdict || c1.Lookups-c0.Lookups != s.lookups || c1.Hits-c0.Hits != s.hits {
			t.Fatalf("packet %d: verdict %s lookups +%d hits +%d, want %s +%d +%d", i, verdictNames[v], c1.Lookups-c0.Lookups, c1.Hits-c0.Hits, verdictNames[s.verdict], s.lookups, s.hits)
		}
	}
}

func TestNextHopTTLValidation(t *testing.T) {
	f := newFixture(t)
	for _, ttl := range []time.Duration{-time.Millisecond, MaxNextHopTTL + time.Millisecond} {
		if err := f.r.SetNextHopTTL(ttl); err == nil {
			t.Errorf("SetNextHopTTL(%v) accepted", ttl)
		}
	}
	if err := f.r.SetNextHopTTL(1500 * time.Microsecond); err != nil {
		t.Fatal(err)
	}
	g1, err := f.r.BumpNextHopGeneration()
	if err != nil {
		t.Fatal(err)
	}
	g2, _ := f.r.BumpNextHopGeneration()
	c := f.nhCache(t)
	if c.TTL != 2*time.Millisecond || g2 != g1+1 || c.Generation != g2 {
		t.Fatalf("cache state %+v after bumps %d, %d; want TTL 2ms, generation %d", c, g1, g2, g2)
	}
}

// TestNextHopCachePinReplaced: a pinned pm_nexthops of another layout (an
// older build's, or another max_mirrors) is replaced, not refused: it is
// only a cache. The rest of the pinned state is kept.
func TestNextHopCachePinReplaced(t *testing.T) {
	requireRoot(t)
	dir := bpffsDir(t)
	r, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	path := filepath.Join(dir, "pm_nexthops")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "pm_nexthops", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 32, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	r2, err := LoadRouter(testConfig(), Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load over an old cache pin: %v", err)
	}
	defer r2.Close()
	if m, err := r2.Mirror(m1); err != nil || m.Addr != fixtureMirrors[m1] {
		t.Fatalf("pinned mirror lost: %+v %v", m, err)
	}
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if pinned.MaxEntries() != uint32(2*testConfig().MaxMirrors) {
		t.Fatalf("pinned cache has %d entries, want %d", pinned.MaxEntries(), 2*testConfig().MaxMirrors)
	}
}

// TestNextHopCacheFollowsMapWrites: the cache is keyed by mirror ID, so a
// mirror that changes address, or a new outer source, must not keep the
// next hop looked up for the old one.
func TestNextHopCacheFollowsMapWrites(t *testing.T) {
	f := newFixture(t)
	if err := f.r.SetNextHopTTL(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 12, dport: 80, flags: "A"}.frame(t)
	for i := range 2 {
		if _, out := f.sendPinned(t, in, f.env.pm0); !bytes.Equal(out[:6], mirrorMAC(fixtureMirrors[m1])) {
			t.Fatalf("packet %d: dst MAC %s", i, net.HardwareAddr(out[:6]))
		}
	}
	g := f.nhCache(t).Generation
	// A state change alone keeps the cache.
	if err := f.r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorDraining}); err != nil {
		t.Fatal(err)
	}
	if f.nhCache(t).Generation != g {
		t.Fatal("a mirror state change invalidated the next-hop cache")
	}
	moved := a("10.99.0.12")
	if err := f.r.SetMirror(m1, Mirror{Addr: moved, State: MirrorActive}); err != nil {
		t.Fatal(err)
	}
	v, out := f.sendPinned(t, in, f.env.pm0)
	if v != xdpTX {
		t.Fatalf("verdict %s", verdictNames[v])
	}
	checkEncap(t, in, out, moved, f.env.pm0MAC)
	g = f.nhCache(t).Generation
	if err := f.r.SetSettings(Settings{DefaultRegion: regDefault, OuterSourceV4: a("10.99.0.2"), OuterSourceV6: edgeV6}); err != nil {
		t.Fatal(err)
	}
	if f.nhCache(t).Generation == g {
		t.Fatal("a new outer source kept the next-hop cache")
	}
}

// TestIncompatibleNextHopCacheDropped: a pinned next-hop cache of another
// size (a build whose cache had another layout, or another mirror count
// for it) is dropped and made anew at load, not refused: a cache holds
// nothing worth refusing to start for.
func TestIncompatibleNextHopCacheDropped(t *testing.T) {
	dir := bpffsDir(t)
	cfg := testConfig()
	r, err := LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	path := filepath.Join(dir, "pm_nexthops")
	old, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := old.Info()
	old.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	small, err := ebpf.NewMap(&ebpf.MapSpec{Type: info.Type, KeySize: info.KeySize, ValueSize: info.ValueSize, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := small.Pin(path); err != nil {
		small.Close()
		t.Fatal(err)
	}
	small.Close()

	r, err = LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load over an incompatible next-hop cache: %v", err)
	}
	defer r.Close()
	if n := pinnedSlots(t, path); n != uint32(2*cfg.MaxMirrors) {
		t.Fatalf("pm_nexthops has %d entries after the load, want %d", n, 2*cfg.MaxMirrors)
	}
}
