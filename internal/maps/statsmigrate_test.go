package maps

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// Layouts of the builds before GUE: 19 router reasons, 6 decap reasons.
const (
	oldRouterReasons = 19
	oldDecapReasons  = 6
)

// pinOldStats pins a per-CPU counter map of n counters as an older build
// would have, CPU c's counter i holding base*(c+1)+i.
func pinOldStats(t *testing.T, dir, name string, n int, base uint64) {
	t.Helper()
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: name, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: uint32(8 * n), MaxEntries: 1, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	vals := make([][]byte, cpus)
	for c := range vals {
		vals[c] = make([]byte, 8*n)
		for i := range n {
			v := base*uint64(c+1) + uint64(i)
			for b := range 8 {
				vals[c][8*i+b] = byte(v >> (8 * b))
			}
		}
	}
	if err := m.Put(uint32(0), vals); err != nil {
		t.Fatal(err)
	}
}

// wantOld is the per-CPU sum pinOldStats wrote into counter i.
func wantOld(t *testing.T, base uint64, i int) uint64 {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	var s uint64
	for c := range cpus {
		s += base*uint64(c+1) + uint64(i)
	}
	return s
}

// TestPinsFromBeforeGUE: a node upgraded from the build before GUE keeps
// its counters (carried into the longer stats maps), its mirrors (the
// former padding reads as IPIP) and its decap endpoints (no GUE).
func TestPinsFromBeforeGUE(t *testing.T) {
	requireRoot(t)
	dir := bpffsDir(t)
	pinOldStats(t, dir, "pm_stats", oldRouterReasons, 1000)
	pinOldStats(t, dir, "pm_decap_stats", oldDecapReasons, 2000)

	f := newFixtureWith(t, testConfig(), Options{PinDir: dir})
	st := f.stats(t).Fields()
	if len(st) != oldRouterReasons+1 {
		t.Fatalf("%d router reasons, want %d", len(st), oldRouterReasons+1)
	}
	for i, fl := range st[:oldRouterReasons] {
		if fl.Value != wantOld(t, 1000, i) {
			t.Fatalf("%s = %d after the upgrade, want %d carried over", fl.Name, fl.Value, wantOld(t, 1000, i))
		}
	}
	if st[oldRouterReasons].Name != "gue_zero_csum_v6" || st[oldRouterReasons].Value != 0 {
		t.Fatalf("new counter %+v", st[oldRouterReasons])
	}

	// A mirror as the old build wrote it: address, family, 3 bytes of
	// zero padding, state.
	raw := make([]byte, 24)
	addr := fixtureMirrors[m1].As4()
	copy(raw, addr[:])
	raw[16] = 4
	raw[20] = byte(MirrorActive)
	if err := f.r.objs.PmMirrors.Put(uint32(m1), raw); err != nil {
		t.Fatal(err)
	}
	if m, err := f.r.Mirror(m1); err != nil || m != (Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}) {
		t.Fatalf("old mirror entry reads as %+v, %v", m, err)
	}
	in := pkt{src: clientEU, dst: vipWeb.Addr, sport: 77, dport: 80}.frame(t)
	v, enc := f.send(t, in)
	if v != xdpTX {
		t.Fatalf("verdict %s", verdictNames[v])
	}
	checkEncap(t, in, enc, fixtureMirrors[m1], nil)

	d, err := LoadDecap(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ds, _ := d.Stats()
	for i, fl := range ds.Fields()[:oldDecapReasons] {
		if fl.Value != wantOld(t, 2000, i) {
			t.Fatalf("decap %s = %d after the upgrade, want %d", fl.Name, fl.Value, wantOld(t, 2000, i))
		}
	}
	// An endpoint as the old build wrote it: value = __u32 flags, 0.
	key := make([]byte, 20)
	copy(key, addr[:])
	key[16] = 4
	if err := d.objs.PmDecapAddrs.Put(key, []byte{0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if eps, err := d.Endpoints(); err != nil || len(eps) != 1 || eps[0] != (DecapEndpoint{Addr: fixtureMirrors[m1]}) {
		t.Fatalf("old endpoint reads as %+v, %v", eps, err)
	}
	if v, out := f.env.run(t, d.Program(), enc, 0); v != xdpPass || len(out) != len(in) {
		t.Fatalf("IPIP to the old endpoint: verdict %s", verdictNames[v])
	}
	// GUE to it passes: the old endpoint has no GUE port.
	if err := f.r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive, Encap: EncapGUE, GUEPort: 6080}); err != nil {
		t.Fatal(err)
	}
	_, gue := f.send(t, in)
	before, _ := d.Stats()
	if v, out := f.env.run(t, d.Program(), gue, 0); v != xdpPass || len(out) != len(gue) {
		t.Fatalf("GUE to an endpoint without GUE: verdict %s, %d bytes", verdictNames[v], len(out))
	}
	if after, _ := d.Stats(); after.PassUdpNotGue != before.PassUdpNotGue+1 {
		t.Fatal("not counted as pass_udp_not_gue")
	}
}

// TestStatsMigrationRefusals: a counter map that is not a shorter prefix
// of ours is refused as before, and a failed load puts an old map that
// was about to be migrated back in place.
func TestStatsMigrationRefusals(t *testing.T) {
	requireRoot(t)
	t.Run("longer than ours", func(t *testing.T) {
		dir := bpffsDir(t)
		pinOldStats(t, dir, "pm_stats", 40, 1)
		if _, err := LoadRouter(testConfig(), Options{PinDir: dir}); !errors.Is(err, ErrIncompatiblePin) {
			t.Fatalf("error %v, want ErrIncompatiblePin", err)
		}
	})
	t.Run("load fails: old map restored", func(t *testing.T) {
		dir := bpffsDir(t)
		pinOldStats(t, dir, "pm_stats", oldRouterReasons, 3000)
		// Another pinned map the load refuses.
		other := testConfig()
		other.MaxSessions *= 2
		r, err := LoadRouter(other, Options{PinDir: filepath.Join(dir, "sessions")})
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		if err := relink(filepath.Join(dir, "sessions", "pm_sessions"), filepath.Join(dir, "pm_sessions")); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadRouter(testConfig(), Options{PinDir: dir}); !errors.Is(err, ErrIncompatiblePin) {
			t.Fatalf("error %v, want ErrIncompatiblePin (pm_sessions)", err)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "pm_stats"), nil)
		if err != nil {
			t.Fatalf("old pm_stats not pinned back: %v", err)
		}
		defer m.Close()
		if m.ValueSize() != 8*oldRouterReasons {
			t.Fatalf("pm_stats pinned with %d-byte values, want the old %d", m.ValueSize(), 8*oldRouterReasons)
		}
	})
}

// relink moves a bpffs pin.
func relink(from, to string) error {
	m, err := ebpf.LoadPinnedMap(from, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Pin(to); err != nil {
		return err
	}
	// Pin renames a map it knows to be pinned; remove the old name if not.
	if err := os.Remove(from); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
