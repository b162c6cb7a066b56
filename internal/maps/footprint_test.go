package maps

import (
	"net/netip"
	"slices"
	"testing"
)

// ScaleConfig is the scale doc.go states the footprint for: 4096
// resources × 64 regions, 1024 mirrors, 1M sessions, 1M client prefixes.
func scaleConfig() Config {
	c := DefaultConfig()
	c.MaxPrefixesV4 = 1 << 20
	c.MaxPrefixesV6 = 1 << 18
	c.MaxRoutes = 4096 * 64
	c.MaxCounters = 4096 * 64 * 3
	return c
}

// TestFootprint loads the router at the documented scale, installs 64
// distinct tables and 10,000 prefixes per family, and logs the kernel's
// own memory accounting per map (the figures in doc.go come from here).
func TestFootprint(t *testing.T) {
	requireRoot(t)
	r, err := LoadRouter(scaleConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := 1; i <= 64; i++ {
		if err := r.SetMirror(MirrorID(i), Mirror{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), State: MirrorActive}); err != nil {
			t.Fatal(err)
		}
	}
	for reg := RegionID(1); reg <= 64; reg++ {
		w := map[MirrorID]uint32{MirrorID(reg): 2, MirrorID(reg%64 + 1): 1}
		for res := ResourceID(0); res < 16; res++ {
			if err := r.SetRoute(res, reg, w); err != nil {
				t.Fatal(err)
			}
		}
	}
	const prefixes = 10000
	for i := 0; i < prefixes; i++ {
		p4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 0}), 24)
		p6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)}), 48)
		if err := r.SetRegionPrefix(p4, RegionID(i%64+1)); err != nil {
			t.Fatal(err)
		}
		if err := r.SetRegionPrefix(p6, RegionID(i%64+1)); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.TableCount(); got != 64 {
		t.Fatalf("%d tables for 64 distinct weight sets over 1024 routes", got)
	}
	mem, err := r.MemoryUsage()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(mem))
	var total uint64
	for n, v := range mem {
		names = append(names, n)
		total += v
	}
	slices.Sort(names)
	for _, n := range names {
		t.Logf("%-16s %10.1f MiB", n, float64(mem[n])/(1<<20))
	}
	t.Logf("%-16s %10.1f MiB (LPM tries hold %d prefixes per family)", "total", float64(total)/(1<<20), prefixes)
	if mem["pm_sessions"] < 1<<20*48 {
		t.Fatalf("pm_sessions accounts %d bytes for 1M entries: accounting not read", mem["pm_sessions"])
	}
}
