package agent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	pmaps "github.com/premirror/premirror/internal/maps"
)

// tcpSYNFrame is an Ethernet/IPv4/TCP SYN from src:sport to dst:dport.
func tcpSYNFrame(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[6:], 0x4000)
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12], tcp[13] = 5<<4, 0x02
	return b
}

// TestReconcileRegionBeforeItsRoute: a client whose prefix moves to a new
// region (a more specific prefix with its own route) is routed before the
// change and after it, so no packet of it may find "no route" while
// Reconcile moves it. Reconcile writes the prefix before the new region's
// route (and, going back, deletes the route before the prefix), so new
// flows of those clients are dropped (drop_no_route) in between.
// Needs root (loads the router); no namespace: the verdict is decided
// before any FIB lookup.
func TestReconcileRegionBeforeItsRoute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cfg := pmaps.DefaultConfig()
	cfg.MaxSessions, cfg.MaxAffinity, cfg.MaxRoutes, cfg.MaxTables = 1<<10, 1<<10, 1<<10, 256
	cfg.TableSlots, cfg.MaxMirrors, cfg.MaxCounters, cfg.MaxFragments = 64, 256, 1<<10, 64
	r, err := pmaps.LoadRouter(cfg, pmaps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	base := func(split bool) DesiredState {
		s := DesiredState{
			Regions: []Region{{Name: "eu", ID: 1, Prefixes: []string{"198.51.0.0/16"}}},
			Mirrors: []Mirror{{Name: "m1", ID: 1, Address: "10.99.0.10"}, {Name: "m2", ID: 2, Address: "10.99.0.11"}},
			Resources: []Resource{{Name: "web", ID: 7, VIPs: []string{"192.0.2.1:80/tcp"},
				Routes: map[string]map[string]uint32{"eu": {"m1": 1}}}},
		}
		// Other resources whose weights change with the split, so the
		// route loop has work around the one that matters.
		for i := range 64 {
			w := map[string]uint32{"m1": 1, "m2": 1}
			if split {
				w["m2"] = 3
			}
			s.Resources = append(s.Resources, Resource{Name: "r" + string(rune('A'+i/26)) + string(rune('a'+i%26)), ID: uint32(100 + i),
				VIPs:   []string{netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 80).String() + "/tcp"},
				Routes: map[string]map[string]uint32{"eu": w}})
		}
		if split {
			s.Regions = append(s.Regions, Region{Name: "eu2", ID: 2, Prefixes: []string{"198.51.100.0/24"}})
			s.Resources[0].Routes["eu2"] = map[string]uint32{"m1": 1}
		}
		return s
	}
	compile := func(s DesiredState) *Compiled {
		c, err := s.Compile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	before, after := compile(base(false)), compile(base(true))
	st := pmaps.Settings{OuterSourceV4: netip.MustParseAddr("10.99.0.1")}
	if _, _, err := Reconcile(r, before, st, nil); err != nil {
		t.Fatal(err)
	}

	noRoute := func() uint64 {
		s, err := r.Stats()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range s.Fields() {
			if f.Name == "drop_no_route" {
				return f.Value
			}
		}
		t.Fatal("no drop_no_route field")
		return 0
	}
	// The client is routed in both states (sanity: no drop_no_route).
	client, vip := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.1")
	var sport atomic.Uint32
	send := func() {
		// A new flow every packet, so every packet is routed afresh.
		fr := tcpSYNFrame(client, vip, uint16(1024+sport.Add(1)%60000), 80)
		if _, err := r.Program().Run(&ebpf.RunOptions{Data: fr}); err != nil {
			t.Error(err)
		}
	}
	n0 := noRoute()
	send()
	if _, _, err := Reconcile(r, after, st, nil); err != nil {
		t.Fatal(err)
	}
	send()
	if _, _, err := Reconcile(r, before, st, nil); err != nil {
		t.Fatal(err)
	}
	send()
	if d := noRoute() - n0; d != 0 {
		t.Fatalf("client dropped for no route in a steady state (%d): the test's states are wrong", d)
	}

	// Now send while Reconcile switches back and forth.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					send()
				}
			}
		}()
	}
	n0 = noRoute()
	for i := range 100 {
		want := after
		if i%2 == 1 {
			want = before
		}
		if _, _, err := Reconcile(r, want, st, nil); err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if d := noRoute() - n0; d != 0 {
		t.Fatalf("%d new flows of a client routed before and after every change were dropped for no route while Reconcile ran", d)
	}
}

// TestReconcileAtCapacity: a desired state that Compile accepts (it fits
// the limits) must reach the maps whatever they held before. Reconcile
// writes every new VIP, route and prefix before it deletes the stale ones,
// so replacing a full set with another full set overflows the map half-way
// and the new state is never applied (every retry fails the same way).
func TestReconcileAtCapacity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cfg := pmaps.DefaultConfig()
	cfg.MaxSessions, cfg.MaxAffinity, cfg.MaxTables = 1<<10, 1<<10, 64
	cfg.TableSlots, cfg.MaxMirrors, cfg.MaxCounters, cfg.MaxFragments = 64, 16, 1<<10, 64
	cfg.MaxVIPs, cfg.MaxRoutes, cfg.MaxPrefixesV4 = 4, 4, 4

	// Four resources, each with a VIP and a route for its own region,
	// which has one prefix: every map exactly full.
	state := func(vip, reg, pfx int) DesiredState {
		s := DesiredState{Mirrors: []Mirror{{Name: "m1", ID: 1, Address: "10.99.0.10"}}}
		for i := range 4 {
			s.Regions = append(s.Regions, Region{Name: fmt.Sprintf("reg%d", i), ID: uint32(reg + i),
				Prefixes: []string{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(pfx + i), 0, 0}), 16).String()}})
			s.Resources = append(s.Resources, Resource{Name: fmt.Sprintf("res%d", i), ID: uint32(1 + i),
				VIPs:   []string{fmt.Sprintf("192.0.2.%d:80/tcp", vip+i)},
				Routes: map[string]map[string]uint32{fmt.Sprintf("reg%d", i): {"m1": 1}}})
		}
		return s
	}
	st := pmaps.Settings{OuterSourceV4: netip.MustParseAddr("10.99.0.1")}
	for _, tc := range []struct {
		name     string
		from, to DesiredState
	}{
		{"new VIPs", state(1, 1, 1), state(11, 1, 1)},
		{"new routes (regions renumbered)", state(1, 1, 1), state(1, 11, 1)},
		{"new prefixes", state(1, 1, 1), state(1, 1, 11)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := pmaps.LoadRouter(cfg, pmaps.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var want *Compiled
			for i, s := range []DesiredState{tc.from, tc.to} {
				c, err := s.Compile(cfg)
				if err != nil {
					t.Fatalf("state %d does not compile: %v", i, err)
				}
				if _, _, err := Reconcile(r, c, st, nil); err != nil {
					t.Fatalf("state %d (fits the limits, Compile accepts it): %v", i, err)
				}
				want = c
			}
			have, err := ReadObserved(r)
			if err != nil {
				t.Fatal(err)
			}
			if len(have.VIPs) != len(want.VIPs) || len(have.Shares) != len(want.Routes) || len(have.Prefixes) != len(want.Prefixes) {
				t.Fatalf("maps hold %d VIPs, %d routes, %d prefixes; want %d, %d, %d", len(have.VIPs), len(have.Shares), len(have.Prefixes),
					len(want.VIPs), len(want.Routes), len(want.Prefixes))
			}
			for v := range want.VIPs {
				if _, ok := have.VIPs[v]; !ok {
					t.Fatalf("VIP %s missing", v)
				}
			}
			for k := range want.Routes {
				if _, ok := have.Shares[k]; !ok {
					t.Fatalf("route %+v missing", k)
				}
			}
			for p, reg := range want.Prefixes {
				if have.Prefixes[p] != reg {
					t.Fatalf("prefix %s in region %d, want %d", p, have.Prefixes[p], reg)
				}
			}
		})
	}
}

// TestReconcileFractionalAffinityTimeout: a restarted agent facing maps
// that already hold its state writes nothing (Reconcile's contract, and
// what TestAgentLifecycle checks for whole seconds). SetVIP stores an
// affinity timeout rounded up to whole seconds; sameVIPOptions compares
// it with the desired one rounded to the nearest second, so 1.2s (stored
// as 2s) differs from itself and is rewritten on every restart.
func TestReconcileFractionalAffinityTimeout(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cfg := pmaps.DefaultConfig()
	cfg.MaxSessions, cfg.MaxAffinity, cfg.MaxRoutes, cfg.MaxTables = 1<<10, 1<<10, 64, 16
	cfg.TableSlots, cfg.MaxMirrors, cfg.MaxCounters, cfg.MaxFragments = 64, 16, 1<<10, 64
	r, err := pmaps.LoadRouter(cfg, pmaps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := ParseConfig([]byte(`role: edge
interfaces: [eth0]
mirrors: [{name: m1, id: 1, address: 10.99.0.10}]
resources:
- name: web
  id: 7
  vips: ["192.0.2.1:80/tcp"]
  affinity: {timeout: 1200ms}
  routes: {"*": {m1: 1}}
`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.State.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := pmaps.Settings{OuterSourceV4: netip.MustParseAddr("10.99.0.1")}
	if _, _, err := Reconcile(r, c, st, nil); err != nil {
		t.Fatal(err)
	}
	// A restart: the maps are read back.
	ch, _, err := Reconcile(r, c, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Written+ch.Deleted != 0 {
		t.Fatalf("second reconcile of the same state wrote %+v, want nothing", ch)
	}
}

// TestReconcileWritesTablesSlotForSlot: a route given a table
// (Compiled.Tables, a restore) gets it slot for slot, even when its shares
// equal what the map holds (the slots may sit elsewhere: the flows would
// move), and once it holds it, nothing is written again.
func TestReconcileWritesTablesSlotForSlot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cfg := pmaps.DefaultConfig()
	cfg.MaxSessions, cfg.MaxAffinity, cfg.MaxRoutes, cfg.MaxTables = 1<<10, 1<<10, 1<<10, 16
	cfg.TableSlots, cfg.MaxMirrors, cfg.MaxCounters, cfg.MaxFragments = 64, 16, 1<<10, 64
	r, err := pmaps.LoadRouter(cfg, pmaps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := DesiredState{
		Mirrors: []Mirror{{Name: "m1", ID: 1, Address: "10.99.0.10"}, {Name: "m2", ID: 2, Address: "10.99.0.11"}},
		Resources: []Resource{{Name: "web", ID: 7, VIPs: []string{"192.0.2.1:80/tcp"},
			Routes: map[string]map[string]uint32{"*": {"m1": 3, "m2": 1}}}},
	}
	want, err := s.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, have, err := Reconcile(r, want, pmaps.Settings{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := pmaps.RouteKey{Resource: 7}
	built := r.RouteSlots(k.Resource, k.Region)
	table := slices.Clone(built)
	slices.Reverse(table) // the same shares, other slots
	want.Tables = map[pmaps.RouteKey][]uint32{k: table}
	ch, have, err := Reconcile(r, want, pmaps.Settings{}, have)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.RouteSlots(k.Resource, k.Region); ch.Written != 1 || !slices.Equal(got, table) {
		t.Fatalf("wrote %+v; the route holds %v, want %v", ch, got, table)
	}
	if got := have.Shares[k]; got[1] != 48 || got[2] != 16 {
		t.Fatalf("observed shares %v after the table, want 48 and 16", got)
	}
	if ch, _, err := Reconcile(r, want, pmaps.Settings{}, have); err != nil || ch.Written+ch.Deleted != 0 {
		t.Fatalf("reconciling again wrote %+v (%v), want nothing", ch, err)
	}
}
