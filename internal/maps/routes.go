package maps

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/premirror/premirror/internal/chash"
)

// RouteKey identifies the route table of one resource for one client region.
type RouteKey struct {
	Resource ResourceID
	Region   RegionID
}

// Route is one installed route: the shared table it points to and how
// many slots each mirror holds there (its weight, quantized).
type Route struct {
	Table  uint32
	Shares map[MirrorID]int
}

// SetRoute installs a table for (resource, region) computed from weights
// with chash: the slots of the current table move as little as the new
// weights allow, and the whole table is swapped atomically.
func (r *Router) SetRoute(res ResourceID, region RegionID, weights map[MirrorID]uint32) error {
	w := make(map[uint32]uint32, len(weights))
	for id, v := range weights {
		if err := r.checkMirrorID(id); err != nil {
			return fmt.Errorf("route %d/%d: %w", res, region, err)
		}
		w[uint32(id)] = v
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	key := routerRouteKey{Resource: uint32(res), Region: uint32(region)}
	slots, err := chash.Build(r.tables.slotsOf(key), w, r.cfg.TableSlots)
	if err != nil {
		return fmt.Errorf("route %d/%d: %w", res, region, err)
	}
	return r.tables.set(r.objs.PmRouteIndex, key, slots)
}

// SetRouteSlots installs a precomputed table (the controller ships whole
// tables so that every edge holds byte-identical ones).
func (r *Router) SetRouteSlots(res ResourceID, region RegionID, slots []uint32) error {
	if len(slots) != r.cfg.TableSlots {
		return fmt.Errorf("route %d/%d: %d slots, this data plane uses %d", res, region, len(slots), r.cfg.TableSlots)
	}
	for i, m := range slots {
		if m == 0 {
			return fmt.Errorf("route %d/%d: slot %d is empty", res, region, i)
		}
		if err := r.checkMirrorID(MirrorID(m)); err != nil {
			return fmt.Errorf("route %d/%d: slot %d: %w", res, region, i, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tables.set(r.objs.PmRouteIndex, routerRouteKey{Resource: uint32(res), Region: uint32(region)}, slices.Clone(slots))
}

// DeleteRoute removes the table of (resource, region); new flows of that
// region fall back to the resource's wildcard route, or are dropped.
func (r *Router) DeleteRoute(res ResourceID, region RegionID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tables.remove(r.objs.PmRouteIndex, routerRouteKey{Resource: uint32(res), Region: uint32(region)})
}

// RouteSlots returns a copy of the slots of (resource, region), or nil.
func (r *Router) RouteSlots(res ResourceID, region RegionID) []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.tables.slotsOf(routerRouteKey{Resource: uint32(res), Region: uint32(region)}))
}

// Routes lists every installed route.
func (r *Router) Routes() map[RouteKey]Route {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[RouteKey]Route, len(r.tables.index))
	for k, id := range r.tables.index {
		shares := make(map[MirrorID]int)
		for m, n := range chash.Counts(r.tables.byID[id].slots) {
			shares[MirrorID(m)] = n
		}
		out[RouteKey{ResourceID(k.Resource), RegionID(k.Region)}] = Route{Table: id, Shares: shares}
	}
	return out
}

// RouteTables returns the slots of every installed route without copying
// them: routes that share a table share one slice, which is the table's
// own. A table is never written in place (a new content comes as a new
// slice), so a slice keeps the slots the route had when it was read, for
// as long as the caller holds it; it must not be modified. Holding the
// tables of 100K routes costs the index, not 100K copies of the slots.
func (r *Router) RouteTables() map[RouteKey][]uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[RouteKey][]uint32, len(r.tables.index))
	for k, id := range r.tables.index {
		out[RouteKey{ResourceID(k.Resource), RegionID(k.Region)}] = r.tables.byID[id].slots
	}
	return out
}

// TableCount is the number of distinct slot tables in use.
func (r *Router) TableCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tables.byID)
}

// tableSet keeps pm_route_tables content-addressed: every (resource,
// region) with identical slots shares one inner map, so memory grows with
// distinct mirror sets, not with resources × regions.
type tableSet struct {
	outer *ebpf.Map
	ids   *ebpf.Map // pm_table_ids: table → inner map ID
	inner *ebpf.MapSpec
	cfg   Config

	byID     map[uint32]*table
	byDigest map[[32]byte]uint32
	index    map[routerRouteKey]uint32
	// Freed IDs are reused oldest first, so a packet that read an old
	// index entry a moment ago cannot land in a table just reassigned.
	free []uint32
	next uint32
}

type table struct {
	slots  []uint32
	digest [32]byte
	refs   int
}

func newTableSet(outer, ids *ebpf.Map, inner *ebpf.MapSpec, cfg Config) *tableSet {
	in := inner.Copy()
	in.MaxEntries = uint32(cfg.TableSlots)
	in.Name = "pm_route_slots"
	return &tableSet{
		outer:    outer,
		ids:      ids,
		inner:    in,
		cfg:      cfg,
		byID:     make(map[uint32]*table),
		byDigest: make(map[[32]byte]uint32),
		index:    make(map[routerRouteKey]uint32),
	}
}

func digest(slots []uint32) [32]byte {
	b := make([]byte, 4*len(slots))
	for i, s := range slots {
		binary.LittleEndian.PutUint32(b[4*i:], s)
	}
	return sha256.Sum256(b)
}

func (ts *tableSet) slotsOf(key routerRouteKey) []uint32 {
	if id, ok := ts.index[key]; ok {
		return ts.byID[id].slots
	}
	return nil
}

// ErrTablesFull means every pm_route_tables entry holds a distinct table.
var ErrTablesFull = errors.New("route tables full (raise max_tables)")

func (ts *tableSet) alloc() (uint32, error) {
	if len(ts.free) > 0 {
		id := ts.free[0]
		ts.free = ts.free[1:]
		return id, nil
	}
	if int(ts.next) >= ts.cfg.MaxTables {
		return 0, ErrTablesFull
	}
	ts.next++
	return ts.next - 1, nil
}

// publish creates an inner map holding slots and swaps it into pm_route_tables.
func (ts *tableSet) publish(slots []uint32) (uint32, error) {
	d := digest(slots)
	if id, ok := ts.byDigest[d]; ok {
		return id, nil
	}
	id, err := ts.alloc()
	if err != nil {
		return 0, err
	}
	m, err := ebpf.NewMap(ts.inner)
	if err != nil {
		ts.free = append(ts.free, id)
		return 0, fmt.Errorf("create route table: %w", err)
	}
	defer m.Close() // pm_route_tables holds its own reference
	keys := make([]uint32, len(slots))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := m.BatchUpdate(keys, slots, nil); err != nil {
		ts.free = append(ts.free, id)
		return 0, fmt.Errorf("fill route table: %w", err)
	}
	info, err := m.Info()
	if err != nil {
		ts.free = append(ts.free, id)
		return 0, fmt.Errorf("route table info: %w", err)
	}
	mapID, _ := info.ID()
	// Record the inner map before publishing it: after a crash, a recorded
	// table no route points to is pruned; an unrecorded one would leak.
	if err := ts.ids.Put(id, &routerTableRef{MapId: uint32(mapID)}); err != nil {
		ts.free = append(ts.free, id)
		return 0, fmt.Errorf("record route table %d: %w", id, err)
	}
	if err := ts.outer.Put(id, m); err != nil {
		_ = ts.ids.Put(id, &routerTableRef{})
		ts.free = append(ts.free, id)
		return 0, fmt.Errorf("publish route table %d: %w", id, err)
	}
	ts.byID[id] = &table{slots: slots, digest: d}
	ts.byDigest[d] = id
	return id, nil
}

// full reports whether publishing a new table would need an ID there is not.
func (ts *tableSet) full() bool {
	return len(ts.free) == 0 && int(ts.next) >= ts.cfg.MaxTables
}

// replace puts slots in table id (used by one route only) in place.
func (ts *tableSet) replace(id uint32, slots []uint32) error {
	m, err := ebpf.NewMap(ts.inner)
	if err != nil {
		return fmt.Errorf("create route table: %w", err)
	}
	defer m.Close()
	keys := make([]uint32, len(slots))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := m.BatchUpdate(keys, slots, nil); err != nil {
		return fmt.Errorf("fill route table: %w", err)
	}
	info, err := m.Info()
	if err != nil {
		return fmt.Errorf("route table info: %w", err)
	}
	mapID, _ := info.ID()
	// Published first: a crash before the record leaves pm_table_ids
	// naming the freed map, which recover detects and reads around.
	if err := ts.outer.Put(id, m); err != nil {
		return fmt.Errorf("publish route table %d: %w", id, err)
	}
	if err := ts.ids.Put(id, &routerTableRef{MapId: uint32(mapID)}); err != nil {
		return fmt.Errorf("record route table %d: %w", id, err)
	}
	t := ts.byID[id]
	delete(ts.byDigest, t.digest)
	t.slots, t.digest = slots, digest(slots)
	ts.byDigest[t.digest] = id
	return nil
}

func (ts *tableSet) release(id uint32) {
	t := ts.byID[id]
	if t.refs--; t.refs > 0 {
		return
	}
	// Readers that already hold the inner map finish with it; the kernel
	// frees it after an RCU grace period.
	_ = ts.outer.Delete(id)
	_ = ts.ids.Put(id, &routerTableRef{})
	delete(ts.byID, id)
	delete(ts.byDigest, t.digest)
	ts.free = append(ts.free, id)
}

func (ts *tableSet) set(index *ebpf.Map, key routerRouteKey, slots []uint32) error {
	if old, had := ts.index[key]; had && ts.full() && ts.byID[old].refs == 1 {
		if _, shared := ts.byDigest[digest(slots)]; !shared {
			// Every table is in use and this key alone holds its
			// own: a new one would need a free ID first. Swap the
			// inner map in place instead: one pointer replaced under
			// RCU, a packet sees the old table or the new one.
			return ts.replace(old, slots)
		}
	}
	id, err := ts.publish(slots)
	if err != nil {
		return err
	}
	old, had := ts.index[key]
	if had && old == id {
		return nil
	}
	t := ts.byID[id]
	t.refs++
	// One 4-byte value replaced under RCU: a packet sees either table.
	if err := index.Put(&key, &routerRouteRef{Table: id}); err != nil {
		ts.release(id)
		return fmt.Errorf("write pm_route_index %d/%d: %w", key.Resource, key.Region, err)
	}
	ts.index[key] = id
	if had {
		ts.release(old)
	}
	return nil
}

func (ts *tableSet) remove(index *ebpf.Map, key routerRouteKey) error {
	id, ok := ts.index[key]
	if !ok {
		return nil
	}
	if err := index.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pm_route_index %d/%d: %w", key.Resource, key.Region, err)
	}
	delete(ts.index, key)
	ts.release(id)
	return nil
}

// recover rebuilds the Go view from pinned maps after an agent restart.
// It reads pm_table_ids (one batch over a plain array) and opens each
// table's inner map by ID, never looking up pm_route_tables from
// userspace: before Linux 6.8 every such lookup waits for an RCU grace
// period, which made a start with 16K table slots take minutes. With prune,
// tables no route points to (left by a crash between publishing a table
// and pointing a route at it) are deleted.
func (ts *tableSet) recover(index *ebpf.Map, prune bool) error {
	err := forEach(index, 1, func(k *routerRouteKey, v []routerRouteRef) bool {
		ts.index[*k] = v[0].Table
		return true
	})
	if err != nil {
		return err
	}
	recorded := map[uint32]uint32{}
	err = forEach(ts.ids, 1, func(k *uint32, v []routerTableRef) bool {
		if v[0].MapId != 0 {
			recorded[*k] = v[0].MapId
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, id := range ts.index {
		if t, ok := ts.byID[id]; ok {
			t.refs++
			continue
		}
		mapID, ok := recorded[id]
		if !ok {
			return fmt.Errorf("route table %d is referenced but not recorded in pm_table_ids", id)
		}
		slots, err := ts.read(id, mapID)
		if errors.Is(err, os.ErrNotExist) {
			// A crash between replace's two writes: the table's
			// inner map changed, its record did not. Ask the outer
			// map (one slow lookup before Linux 6.8, only here).
			slots, err = ts.readPublished(id)
		}
		if err != nil {
			return err
		}
		d := digest(slots)
		ts.byID[id] = &table{slots: slots, digest: d, refs: 1}
		ts.byDigest[d] = id
	}
	for id := range recorded {
		if _, used := ts.byID[id]; used {
			continue
		}
		if prune {
			_ = ts.outer.Delete(id)
			_ = ts.ids.Put(id, &routerTableRef{})
		}
	}
	for id := range ts.byID {
		ts.next = max(ts.next, id+1)
	}
	for id := uint32(0); id < ts.next; id++ {
		if _, used := ts.byID[id]; !used {
			ts.free = append(ts.free, id)
		}
	}
	return nil
}

// readPublished reads table id through pm_route_tables and records its
// inner map in pm_table_ids again.
func (ts *tableSet) readPublished(id uint32) ([]uint32, error) {
	var m *ebpf.Map
	if err := ts.outer.Lookup(id, &m); err != nil {
		return nil, fmt.Errorf("route table %d: recorded map gone, and not published: %w", id, ByIDError(err))
	}
	info, err := m.Info()
	m.Close()
	if err != nil {
		return nil, fmt.Errorf("route table %d info: %w", id, err)
	}
	mapID, _ := info.ID()
	if err := ts.ids.Put(id, &routerTableRef{MapId: uint32(mapID)}); err != nil {
		return nil, fmt.Errorf("record route table %d: %w", id, err)
	}
	return ts.read(id, uint32(mapID))
}

func (ts *tableSet) read(id, mapID uint32) ([]uint32, error) {
	m, err := ebpf.NewMapFromID(ebpf.MapID(mapID))
	if err != nil {
		return nil, fmt.Errorf("open route table %d (map id %d): %w", id, mapID, ByIDError(err))
	}
	defer m.Close()
	if m.Type() != ebpf.Array || m.KeySize() != 4 || m.ValueSize() != 4 {
		return nil, fmt.Errorf("route table %d: map id %d is not a slot table", id, mapID)
	}
	if int(m.MaxEntries()) != ts.cfg.TableSlots {
		return nil, fmt.Errorf("%w: route table %d has %d slots, config wants %d",
			ErrIncompatiblePin, id, m.MaxEntries(), ts.cfg.TableSlots)
	}
	slots := make([]uint32, 0, ts.cfg.TableSlots)
	err = forEach(m, 1, func(_ *uint32, v []uint32) bool {
		slots = append(slots, v[0])
		return true
	})
	return slots, err
}
