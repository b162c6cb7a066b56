package maps

import (
	"slices"
	"testing"
)

// TestRouteChangeWithAllTablesInUse: max_tables bounds the distinct slot
// tables. With every table in use, changing the weights of a route whose
// table no other route shares ends with as many tables as before, so it
// must work (the table is replaced in place: a new one would need a free
// ID first). A crash between publishing the replacement and recording it
// leaves pm_table_ids naming the freed map: the next load reads the table
// through pm_route_tables and records it again.
func TestRouteChangeWithAllTablesInUse(t *testing.T) {
	requireRoot(t)
	dir := bpffsDir(t)
	cfg := testConfig()
	cfg.MaxTables = 2
	r, err := LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r != nil {
			r.Close()
		}
	}()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}))
	must(r.SetMirror(m2, Mirror{Addr: fixtureMirrors[m2], State: MirrorActive}))
	must(r.SetRoute(resWeb, RegionAny, map[MirrorID]uint32{m1: 1}))
	must(r.SetRoute(resWeb6, RegionAny, map[MirrorID]uint32{m2: 1}))
	if err := r.SetRoute(resWeb, RegionAny, map[MirrorID]uint32{m1: 1, m2: 1}); err != nil {
		t.Fatalf("re-weighting a route with every table in use: %v", err)
	}
	if n := r.TableCount(); n != 2 {
		t.Fatalf("%d tables in use, want 2", n)
	}
	// A new distinct table still does not fit.
	if err := r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 3}); err == nil {
		t.Fatal("a third distinct table fitted max_tables 2")
	}
	want := r.RouteSlots(resWeb, RegionAny)
	if got := chashCounts(want); got[m1] != got[m2] {
		t.Fatalf("shares %v after re-weighting, want even", got)
	}

	// The crash: the record still names a map that is gone.
	id := r.Routes()[RouteKey{resWeb, RegionAny}].Table
	must(r.objs.PmTableIds.Put(id, &routerTableRef{MapId: 0x7ffffff0}))
	r.Close()
	r, err = LoadRouter(cfg, Options{PinDir: dir})
	if err != nil {
		t.Fatalf("reload after a crash inside a table replacement: %v", err)
	}
	if got := r.RouteSlots(resWeb, RegionAny); !slices.Equal(got, want) {
		t.Fatal("replaced table lost across the reload")
	}
	var ref routerTableRef
	if err := r.objs.PmTableIds.Lookup(id, &ref); err != nil || ref.MapId == 0x7ffffff0 || ref.MapId == 0 {
		t.Fatalf("table %d record not repaired: %+v %v", id, ref, err)
	}
}

func chashCounts(slots []uint32) map[MirrorID]int {
	out := map[MirrorID]int{}
	for _, s := range slots {
		out[MirrorID(s)]++
	}
	return out
}

// TestRouteTablesKeepTheirSlots: RouteTables hands out the tables' own
// slices, uncopied (a restore keeps them across an apply: copied, 100K
// routes of 16K slots would take gigabytes). That is only sound if no
// write changes a slice it handed out: a route re-weighted, one sharing
// its table with another, and one replaced in place with every table in
// use (the one path that reuses a table's ID) each leave the slices read
// before them as they were.
func TestRouteTablesKeepTheirSlots(t *testing.T) {
	requireRoot(t)
	cfg := testConfig()
	cfg.MaxTables = 2
	r, err := LoadRouter(cfg, Options{PinDir: bpffsDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.SetMirror(m1, Mirror{Addr: fixtureMirrors[m1], State: MirrorActive}))
	must(r.SetMirror(m2, Mirror{Addr: fixtureMirrors[m2], State: MirrorActive}))
	must(r.SetRoute(resWeb, RegionAny, map[MirrorID]uint32{m1: 1, m2: 1}))
	must(r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1, m2: 1}))
	must(r.SetRoute(resWeb6, RegionAny, map[MirrorID]uint32{m1: 3, m2: 1}))

	before := r.RouteTables()
	star, eu, web6 := RouteKey{resWeb, RegionAny}, RouteKey{resWeb, regEU}, RouteKey{resWeb6, RegionAny}
	if len(before) != 3 || &before[star][0] != &before[eu][0] {
		t.Fatalf("routes of one table do not share its slots: %d routes", len(before))
	}
	for k, s := range before {
		if !slices.Equal(s, r.RouteSlots(k.Resource, k.Region)) {
			t.Fatalf("route %v: RouteTables and RouteSlots disagree", k)
		}
	}
	saved := map[RouteKey][]uint32{}
	for k, s := range before {
		saved[k] = slices.Clone(s)
	}
	// Both tables in use: re-weighting web6, alone on its table, replaces
	// the table in place; eu leaves the table it shares with any.
	must(r.SetRoute(resWeb6, RegionAny, map[MirrorID]uint32{m1: 1, m2: 3}))
	must(r.DeleteRoute(resWeb, RegionAny))
	must(r.SetRoute(resWeb, regEU, map[MirrorID]uint32{m1: 1}))
	for k, s := range before {
		if !slices.Equal(s, saved[k]) {
			t.Fatalf("route %v: the slots read before the writes changed under the reader", k)
		}
	}
	if slices.Equal(r.RouteSlots(web6.Resource, web6.Region), saved[web6]) {
		t.Fatal("web6 was not re-weighted")
	}
}
