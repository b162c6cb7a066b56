package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/cilium/ebpf"
)

// Stats are the router's packets by verdict and reason, summed over CPUs.
// Field order and names follow struct stats in bpf/include/premirror.h.
type Stats routerStats

// StatField is one named reason of Stats or DecapStats.
type StatField struct {
	Name    string // snake_case, as in the C struct: "drop_no_route"
	Verdict string // "tx", "redirect", "pass", "drop" or "event"
	Value   uint64
}

// Fields lists every reason with its value, in C declaration order.
func (s Stats) Fields() []StatField { return fields(reflect.ValueOf(s)) }

// DecapStats are the decap program's packets by reason, summed over CPUs.
type DecapStats decapDecapStats

// Fields lists every reason with its value.
func (s DecapStats) Fields() []StatField { return fields(reflect.ValueOf(s)) }

func fields(v reflect.Value) []StatField {
	t := v.Type()
	out := make([]StatField, 0, t.NumField())
	for i := range t.NumField() {
		if t.Field(i).Type.Kind() != reflect.Uint64 {
			continue
		}
		name := snake(t.Field(i).Name)
		verdict := "event"
		switch {
		case name == "tx" || name == "redirect":
			verdict = name
		case name == "icmp_too_big" || name == "probe_echo":
			// Their own verdict (the answer goes back out with
			// XDP_TX), not events about packets counted under another.
			verdict = "tx"
		case strings.HasPrefix(name, "pass_"):
			verdict = "pass"
		case strings.HasPrefix(name, "drop_"):
			verdict = "drop"
		case strings.HasPrefix(name, "decap_"):
			verdict = "pass"
		}
		out = append(out, StatField{Name: name, Verdict: verdict, Value: v.Field(i).Uint()})
	}
	return out
}

// snake turns bpf2go's Go field names back into the C names.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) && i > 0 && !unicode.IsDigit(rune(s[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// sumPerCPU adds the uint64 fields of per-CPU copies of a struct.
func sumPerCPU[T any](vals []T) T {
	var sum T
	out := reflect.ValueOf(&sum).Elem()
	for i := range vals {
		in := reflect.ValueOf(vals[i])
		for f := range in.NumField() {
			if in.Field(f).Kind() == reflect.Uint64 {
				out.Field(f).SetUint(out.Field(f).Uint() + in.Field(f).Uint())
			}
		}
	}
	return sum
}

// Stats reads the reason counters.
func (r *Router) Stats() (Stats, error) {
	var per []routerStats
	if err := r.objs.PmStats.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("read pm_stats: %w", err)
	}
	return Stats(sumPerCPU(per)), nil
}

// Counters reads every access counter, summed over CPUs.
func (r *Router) Counters() (map[CounterKey]Counter, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	out := make(map[CounterKey]Counter)
	err = forEach(r.objs.PmCounters, cpus, func(k *routerCounterKey, v []routerCounter) bool {
		c := sumPerCPU(v)
		out[CounterKey{ResourceID(k.Resource), RegionID(k.Region), MirrorID(k.Mirror)}] = Counter{c.Packets, c.Bytes, c.NewFlows}
		return true
	})
	return out, err
}

// CountersID is pm_counters' kernel map ID: the same while the pinned map
// lives (across agent restarts), another once it is created again
// (`detach -maps`, a reboot; unique within a boot).
func (r *Router) CountersID() (ebpf.MapID, error) {
	info, err := r.objs.PmCounters.Info()
	if err != nil {
		return 0, fmt.Errorf("pm_counters info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("pm_counters info: no map ID (kernel before 4.13)")
	}
	return id, nil
}

// DeleteCounter drops one counter entry (after its final value was
// exported), freeing room in pm_counters.
func (r *Router) DeleteCounter(k CounterKey) error {
	ck := routerCounterKey{Resource: uint32(k.Resource), Region: uint32(k.Region), Mirror: uint32(k.Mirror)}
	if err := r.objs.PmCounters.Delete(&ck); err != nil {
		return fmt.Errorf("delete pm_counters: %w", err)
	}
	return nil
}

func flowOf(k *routerFlowKey) Flow {
	return Flow{
		Src: bytesAddr(k.Src, k.Family), Dst: bytesAddr(k.Dst, k.Family),
		SrcPort: k.Sport, DstPort: k.Dport, Proto: Proto(k.Proto),
	}
}

func flowKey(f Flow) routerFlowKey {
	var k routerFlowKey
	k.Src, k.Family = addrBytes(f.Src)
	k.Dst, _ = addrBytes(f.Dst)
	k.Sport, k.Dport, k.Proto = f.SrcPort, f.DstPort, uint8(f.Proto)
	return k
}

// Sessions calls fn for every established flow until it returns false.
func (r *Router) Sessions(fn func(Session) bool) error {
	return forEach(r.objs.PmSessions, 1, func(k *routerFlowKey, v []routerSession) bool {
		return fn(Session{Flow: flowOf(k), Mirror: MirrorID(v[0].Mirror), Region: RegionID(v[0].Region), Established: v[0].Flags&1 != 0})
	})
}

// SessionCount counts established flows (a full walk: O(sessions)).
func (r *Router) SessionCount() (int, error) {
	n := 0
	err := r.Sessions(func(Session) bool { n++; return true })
	return n, err
}

// LookupSession returns the session of a flow, if the router holds one.
func (r *Router) LookupSession(f Flow) (Session, bool, error) {
	k := flowKey(f)
	var v routerSession
	if err := r.objs.PmSessions.Lookup(&k, &v); err != nil {
		if isNotExist(err) {
			return Session{}, false, nil
		}
		return Session{}, false, fmt.Errorf("lookup pm_sessions: %w", err)
	}
	return Session{Flow: f, Mirror: MirrorID(v.Mirror), Region: RegionID(v.Region), Established: v.Flags&1 != 0}, true, nil
}

// Affinities calls fn for every user affinity until it returns false.
func (r *Router) Affinities(fn func(Affinity) bool) error {
	return forEach(r.objs.PmAffinity, 1, func(k *routerAffinityKey, v []routerAffinity) bool {
		return fn(Affinity{
			Resource: ResourceID(k.Resource),
			Client:   netip.PrefixFrom(bytesAddr(k.Client, k.Family), int(k.PrefixLen)),
			Mirror:   MirrorID(v[0].Mirror),
			LastUsed: time.Duration(v[0].LastUsedNs),
		})
	})
}

// MemoryUsage reports the kernel memory of every map (fdinfo "memlock"),
// in bytes. Route tables are counted per inner map under "pm_route_slots".
func (r *Router) MemoryUsage() (map[string]uint64, error) {
	out := make(map[string]uint64)
	maps := map[string]*ebpf.Map{
		"pm_vips": r.objs.PmVips, "pm_vip_addrs": r.objs.PmVipAddrs, "pm_sessions": r.objs.PmSessions,
		"pm_affinity": r.objs.PmAffinity, "pm_regions_v4": r.objs.PmRegionsV4, "pm_regions_v6": r.objs.PmRegionsV6,
		"pm_route_index": r.objs.PmRouteIndex, "pm_route_tables": r.objs.PmRouteTables, "pm_mirrors": r.objs.PmMirrors,
		"pm_settings": r.objs.PmSettings, "pm_table_ids": r.objs.PmTableIds, "pm_counters": r.objs.PmCounters, "pm_stats": r.objs.PmStats, "pm_frags": r.objs.PmFrags,
		"pm_nexthops": r.objs.PmNexthops, "pm_nexthop_ctl": r.objs.PmNexthopCtl,
	}
	for name, m := range maps {
		n, err := memlock(m.FD())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = n
	}
	// Every inner table has the same size: measure one, multiply.
	r.mu.Lock()
	count := len(r.tables.byID)
	var mapID uint32
	for id := range r.tables.byID {
		var ref routerTableRef
		if r.objs.PmTableIds.Lookup(id, &ref) == nil && ref.MapId != 0 {
			mapID = ref.MapId
			break
		}
	}
	r.mu.Unlock()
	if mapID != 0 {
		if m, err := ebpf.NewMapFromID(ebpf.MapID(mapID)); err == nil {
			n, err := memlock(m.FD())
			m.Close()
			if err == nil {
				out["pm_route_slots"] = n * uint64(count)
			}
		}
	}
	return out, nil
}

func memlock(fd int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no memlock in fdinfo")
}
