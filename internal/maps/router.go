package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/premirror/premirror/internal/chash"
)

// DefaultPinDir is where the agent pins maps and links, so forwarding
// continues while it restarts or upgrades.
const DefaultPinDir = "/sys/fs/bpf/premirror"

// Config bounds every map; the kernel preallocates most of them, so these
// numbers are the data plane's memory (see Footprint).
type Config struct {
	MaxVIPs       int // pm_vips, pm_vip_addrs
	MaxSessions   int // pm_sessions (LRU)
	MaxAffinity   int // pm_affinity (LRU)
	MaxPrefixesV4 int // pm_regions_v4
	MaxPrefixesV6 int // pm_regions_v6
	MaxRoutes     int // pm_route_index: (resource, region) pairs
	MaxTables     int // pm_route_tables: distinct slot tables
	TableSlots    int // slots per table, a power of two
	MaxMirrors    int // pm_mirrors; mirror IDs are 1..MaxMirrors-1
	MaxCounters   int // pm_counters: (resource, region, mirror) triples
	MaxFragments  int // pm_frags (LRU)
}

// DefaultConfig is sized for 4096 resources × 64 regions on one edge node
// with 1M concurrent flows; see doc.go for its footprint.
func DefaultConfig() Config {
	return Config{
		MaxVIPs:       8192,
		MaxSessions:   1 << 20,
		MaxAffinity:   1 << 18,
		MaxPrefixesV4: 1 << 16,
		MaxPrefixesV6: 1 << 16,
		MaxRoutes:     1 << 18,
		MaxTables:     1 << 14,
		TableSlots:    4096,
		MaxMirrors:    1024,
		MaxCounters:   1 << 18,
		MaxFragments:  1 << 14,
	}
}

// Validate names the first field that cannot work.
func (c Config) Validate() error {
	fields := []struct {
		name string
		v    int
	}{
		{"max_vips", c.MaxVIPs}, {"max_sessions", c.MaxSessions}, {"max_affinity", c.MaxAffinity},
		{"max_prefixes_v4", c.MaxPrefixesV4}, {"max_prefixes_v6", c.MaxPrefixesV6},
		{"max_routes", c.MaxRoutes}, {"max_tables", c.MaxTables}, {"max_mirrors", c.MaxMirrors},
		{"max_counters", c.MaxCounters}, {"max_fragments", c.MaxFragments},
	}
	for _, f := range fields {
		if f.v <= 0 || f.v > 1<<28 {
			return fmt.Errorf("%s: %d out of range [1, %d]", f.name, f.v, 1<<28)
		}
	}
	if !chash.ValidSlots(c.TableSlots) {
		return fmt.Errorf("table_slots: %d is not a power of two in [1, %d]", c.TableSlots, chash.MaxSlots)
	}
	if c.MaxMirrors < 2 {
		return fmt.Errorf("max_mirrors: %d leaves no usable mirror ID", c.MaxMirrors)
	}
	return nil
}

// Options control loading.
type Options struct {
	// PinDir pins every map there and reuses compatible pins found there
	// (state survives agent restarts). Empty: nothing is pinned.
	PinDir string
}

// ErrIncompatiblePin means a pinned map exists with another layout or size
// than this build and Config want. The agent refuses to start rather than
// silently dropping the state the data plane is forwarding with.
var ErrIncompatiblePin = errors.New("pinned map is incompatible")

// Router owns the router program's maps. Its methods are the only way the
// rest of premirror reads or writes them. Writers are serialized by a mutex;
// readers (metrics, inspect) may run concurrently.
type Router struct {
	cfg  Config
	objs routerObjects
	pin  string

	mu     sync.Mutex
	tables *tableSet

	nhMu sync.Mutex // serializes read-modify-writes of pm_nexthop_ctl
}

// LoadRouter loads the router program and its maps with the sizes of cfg,
// reusing pinned maps under opts.PinDir when they are compatible.
func LoadRouter(cfg Config, opts Options) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	spec, err := loadRouter()
	if err != nil {
		return nil, fmt.Errorf("load router spec: %w", err)
	}
	sizes := map[string]int{
		"pm_vips":         cfg.MaxVIPs,
		"pm_vip_addrs":    cfg.MaxVIPs,
		"pm_sessions":     cfg.MaxSessions,
		"pm_affinity":     cfg.MaxAffinity,
		"pm_regions_v4":   cfg.MaxPrefixesV4,
		"pm_regions_v6":   cfg.MaxPrefixesV6,
		"pm_route_index":  cfg.MaxRoutes,
		"pm_route_tables": cfg.MaxTables,
		"pm_table_ids":    cfg.MaxTables,
		"pm_mirrors":      cfg.MaxMirrors,
		"pm_counters":     cfg.MaxCounters,
		"pm_frags":        cfg.MaxFragments,
		"pm_nexthops":     2 * cfg.MaxMirrors, // IPv4 and IPv6 inner packets
	}
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = uint32(n)
	}
	spec.Maps["pm_route_tables"].InnerMap.MaxEntries = uint32(cfg.TableSlots)
	if err := spec.Variables["route_slots_mask"].Set(uint32(cfg.TableSlots - 1)); err != nil {
		return nil, fmt.Errorf("set route_slots_mask: %w", err)
	}

	if opts.PinDir != "" {
		if err := dropIncompatibleCache(spec.Maps["pm_nexthops"], filepath.Join(opts.PinDir, "pm_nexthops")); err != nil {
			return nil, err
		}
	}

	r := &Router{cfg: cfg, pin: opts.PinDir}
	copts, err := collectionOptions(spec, opts)
	if err != nil {
		return nil, err
	}
	mg, err := preparePinMigrations(spec, opts.PinDir, RouterNextMap, "pm_stats")
	if err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&r.objs, copts); err != nil {
		err = errors.Join(err, mg.abort())
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load router: %w", err)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w under %s (sizes or layout changed; move the old pins away to start empty): %v",
				ErrIncompatiblePin, opts.PinDir, err)
		}
		return nil, fmt.Errorf("load router: %w", err)
	}
	if err := mg.finish(r.objs.PmNext, r.objs.PmStats); err != nil {
		r.Close()
		return nil, fmt.Errorf("load router: %w", err)
	}
	r.tables = newTableSet(r.objs.PmRouteTables, r.objs.PmTableIds, spec.Maps["pm_route_tables"].InnerMap, cfg)
	// Pinned state from a previous agent: learn which tables exist.
	if err := r.tables.recover(r.objs.PmRouteIndex, true); err != nil {
		r.Close()
		return nil, fmt.Errorf("recover route tables: %w", err)
	}
	return r, nil
}

// dropIncompatibleCache removes a pinned cache map this build cannot use
// (other size or layout): a cache holds nothing worth refusing to start
// for. The running program keeps its own reference until it is replaced.
func dropIncompatibleCache(ms *ebpf.MapSpec, path string) error {
	m, err := incompatiblePin(ms, path)
	if m == nil || err != nil {
		return err
	}
	defer m.Close()
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("replace incompatible %s: %w", ms.Name, err)
	}
	return nil
}

// incompatiblePinIn is incompatiblePin for ms's pin under pinDir (none
// when pinDir is ""), with the pin's path.
func incompatiblePinIn(ms *ebpf.MapSpec, pinDir string) (*ebpf.Map, string, error) {
	if pinDir == "" {
		return nil, "", nil
	}
	path := filepath.Join(pinDir, ms.Name)
	m, err := incompatiblePin(ms, path)
	return m, path, err
}

// incompatiblePin opens the map pinned at path when this build cannot reuse
// it for ms (other size or layout); nil when nothing is pinned there or the
// pin is compatible. The caller closes it.
func incompatiblePin(ms *ebpf.MapSpec, path string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned %s: %w", ms.Name, err)
	}
	if ms.Compatible(m) == nil {
		m.Close()
		return nil, nil
	}
	return m, nil
}

// Close releases the program and map handles. Pinned maps stay in bpffs.
func (r *Router) Close() error {
	return r.objs.Close()
}

// Program is the XDP program to attach or to link.Update to.
func (r *Router) Program() *ebpf.Program { return r.objs.PmRouter }

// Config is the configuration the maps were sized with.
func (r *Router) Config() Config { return r.cfg }

// PinDir is where the maps are pinned ("" if not pinned).
func (r *Router) PinDir() string { return r.pin }

// SetSettings writes the node-wide settings.
func (r *Router) SetSettings(s Settings) error {
	var v routerSettings
	v.DefaultRegion = uint32(s.DefaultRegion)
	if s.OuterSourceV4.IsValid() {
		if !s.OuterSourceV4.Unmap().Is4() {
			return fmt.Errorf("outer_source_v4: %s is not IPv4", s.OuterSourceV4)
		}
		v.OuterSrcV4 = s.OuterSourceV4.Unmap().As4()
	}
	if s.OuterSourceV6.IsValid() {
		if !s.OuterSourceV6.Is6() || s.OuterSourceV6.Is4In6() {
			return fmt.Errorf("outer_source_v6: %s is not IPv6", s.OuterSourceV6)
		}
		v.OuterSrcV6 = s.OuterSourceV6.As16()
	}
	var old routerSettings
	_ = r.objs.PmSettings.Lookup(uint32(0), &old)
	if err := r.objs.PmSettings.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write pm_settings: %w", err)
	}
	// The outer sources are inputs of the cached FIB lookups (source
	// routing rules): drop the cache after, never before, the write.
	if old.OuterSrcV4 != v.OuterSrcV4 || old.OuterSrcV6 != v.OuterSrcV6 {
		if _, err := r.BumpNextHopGeneration(); err != nil {
			return err
		}
	}
	return nil
}

// Settings reads the node-wide settings.
func (r *Router) Settings() (Settings, error) {
	var v routerSettings
	if err := r.objs.PmSettings.Lookup(uint32(0), &v); err != nil {
		return Settings{}, fmt.Errorf("read pm_settings: %w", err)
	}
	s := Settings{DefaultRegion: RegionID(v.DefaultRegion)}
	if v.OuterSrcV4 != [4]byte{} {
		s.OuterSourceV4 = netip.AddrFrom4(v.OuterSrcV4)
	}
	if v.OuterSrcV6 != [16]byte{} {
		s.OuterSourceV6 = netip.AddrFrom16(v.OuterSrcV6)
	}
	return s, nil
}

func vipKey(v VIP) (routerVipKey, error) {
	if !v.Addr.IsValid() {
		return routerVipKey{}, errors.New("vip address is empty")
	}
	if v.Proto != TCP && v.Proto != UDP {
		return routerVipKey{}, fmt.Errorf("vip %s: protocol must be tcp or udp", v)
	}
	var k routerVipKey
	k.Addr, k.Family = addrBytes(v.Addr)
	k.Port = v.Port
	k.Proto = uint8(v.Proto)
	return k, nil
}

// SetVIP creates or updates a VIP.
func (r *Router) SetVIP(v VIP, o VIPOptions) error {
	k, err := vipKey(v)
	if err != nil {
		return err
	}
	val := routerVipInfo{Resource: uint32(o.Resource)}
	if o.AffinityTimeout < 0 {
		return fmt.Errorf("vip %s: affinity timeout %v is negative", v, o.AffinityTimeout)
	}
	if o.AffinityTimeout > 0 {
		val.AffinityTimeoutS = uint32(max(1, (o.AffinityTimeout+time.Second-1)/time.Second))
	}
	p4, p6 := o.AffinityPrefixV4, o.AffinityPrefixV6
	if p4 == 0 {
		p4 = 32
	}
	if p6 == 0 {
		p6 = 64
	}
	if p4 < 1 || p4 > 32 {
		return fmt.Errorf("vip %s: affinity_prefix_v4 %d out of [1, 32]", v, p4)
	}
	if p6 < 1 || p6 > 128 {
		return fmt.Errorf("vip %s: affinity_prefix_v6 %d out of [1, 128]", v, p6)
	}
	val.AffinityPrefixV4, val.AffinityPrefixV6 = uint8(p4), uint8(p6)
	if o.HashNoSrcPort {
		val.Flags |= 1
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	var old routerVipInfo
	existed := r.objs.PmVips.Lookup(&k, &old) == nil
	if err := r.objs.PmVips.Put(&k, &val); err != nil {
		return fmt.Errorf("write pm_vips %s: %w", v, err)
	}
	if !existed {
		if err := r.adjustVIPAddr(k, +1); err != nil {
			return err
		}
	}
	return nil
}

// DeleteVIP removes a VIP; its sessions age out of the LRU.
func (r *Router) DeleteVIP(v VIP) error {
	k, err := vipKey(v)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.objs.PmVips.Delete(&k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("delete pm_vips %s: %w", v, err)
	}
	return r.adjustVIPAddr(k, -1)
}

// adjustVIPAddr keeps pm_vip_addrs counting the VIPs per address.
func (r *Router) adjustVIPAddr(k routerVipKey, d int) error {
	ak := routerVipAddr{Addr: k.Addr, Family: k.Family}
	var cur routerVipAddrInfo
	_ = r.objs.PmVipAddrs.Lookup(&ak, &cur)
	n := int(cur.Vips) + d
	if n <= 0 {
		if err := r.objs.PmVipAddrs.Delete(&ak); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete pm_vip_addrs: %w", err)
		}
		return nil
	}
	if err := r.objs.PmVipAddrs.Put(&ak, &routerVipAddrInfo{Vips: uint32(n)}); err != nil {
		return fmt.Errorf("write pm_vip_addrs: %w", err)
	}
	return nil
}

// VIPs lists the configured VIPs.
func (r *Router) VIPs() (map[VIP]VIPOptions, error) {
	out := make(map[VIP]VIPOptions)
	var k routerVipKey
	var v routerVipInfo
	it := r.objs.PmVips.Iterate()
	for it.Next(&k, &v) {
		out[VIP{Addr: bytesAddr(k.Addr, k.Family), Port: k.Port, Proto: Proto(k.Proto)}] = VIPOptions{
			Resource:         ResourceID(v.Resource),
			AffinityTimeout:  time.Duration(v.AffinityTimeoutS) * time.Second,
			AffinityPrefixV4: int(v.AffinityPrefixV4),
			AffinityPrefixV6: int(v.AffinityPrefixV6),
			HashNoSrcPort:    v.Flags&1 != 0,
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_vips: %w", err)
	}
	return out, nil
}

// SetRegionPrefix maps a client prefix to a region.
func (r *Router) SetRegionPrefix(p netip.Prefix, region RegionID) error {
	m, k, err := r.regionKey(p)
	if err != nil {
		return err
	}
	if err := m.Put(k, &routerRegionInfo{Region: uint32(region)}); err != nil {
		return fmt.Errorf("write %s %s: %w", m, p, err)
	}
	return nil
}

// DeleteRegionPrefix removes a client prefix.
func (r *Router) DeleteRegionPrefix(p netip.Prefix) error {
	m, k, err := r.regionKey(p)
	if err != nil {
		return err
	}
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete %s: %w", p, err)
	}
	return nil
}

func (r *Router) regionKey(p netip.Prefix) (*ebpf.Map, any, error) {
	if !p.IsValid() {
		return nil, nil, fmt.Errorf("prefix %s is not valid", p)
	}
	p = p.Masked()
	if p.Addr().Is4() {
		return r.objs.PmRegionsV4, &routerRegionKeyV4{PrefixLen: uint32(p.Bits()), Addr: p.Addr().As4()}, nil
	}
	if p.Addr().Is4In6() {
		return nil, nil, fmt.Errorf("prefix %s: use the IPv4 form", p)
	}
	return r.objs.PmRegionsV6, &routerRegionKeyV6{PrefixLen: uint32(p.Bits()), Addr: p.Addr().As16()}, nil
}

// RegionPrefixes lists every client prefix and its region.
func (r *Router) RegionPrefixes() (map[netip.Prefix]RegionID, error) {
	out := make(map[netip.Prefix]RegionID)
	var k4 routerRegionKeyV4
	var k6 routerRegionKeyV6
	var v routerRegionInfo
	it := r.objs.PmRegionsV4.Iterate()
	for it.Next(&k4, &v) {
		out[netip.PrefixFrom(netip.AddrFrom4(k4.Addr), int(k4.PrefixLen))] = RegionID(v.Region)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_regions_v4: %w", err)
	}
	it = r.objs.PmRegionsV6.Iterate()
	for it.Next(&k6, &v) {
		out[netip.PrefixFrom(netip.AddrFrom16(k6.Addr), int(k6.PrefixLen))] = RegionID(v.Region)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_regions_v6: %w", err)
	}
	return out, nil
}

func (r *Router) checkMirrorID(id MirrorID) error {
	if id == 0 || int(id) >= r.cfg.MaxMirrors {
		return fmt.Errorf("mirror id %d out of [1, %d]", id, r.cfg.MaxMirrors-1)
	}
	return nil
}

// SetMirror creates or updates a mirror. Setting a mirror down moves its
// established flows at their next packet; draining keeps them.
func (r *Router) SetMirror(id MirrorID, m Mirror) error {
	if err := r.checkMirrorID(id); err != nil {
		return err
	}
	if !m.Addr.IsValid() {
		return fmt.Errorf("mirror %d: address is empty", id)
	}
	if m.State == MirrorUnused || m.State > MirrorDown {
		return fmt.Errorf("mirror %d: state %s is not settable", id, m.State)
	}
	switch m.Encap {
	case EncapIPIP:
		if m.GUEPort != 0 {
			return fmt.Errorf("mirror %d: GUEPort %d is only for encapsulation gue", id, m.GUEPort)
		}
	case EncapGUE:
		if m.GUEPort == 0 {
			return fmt.Errorf("mirror %d: GUEPort is required (not 0) with encapsulation gue", id)
		}
	default:
		return fmt.Errorf("mirror %d: Encap %s is not ipip or gue", id, m.Encap)
	}
	v := mirrorValue(m)
	var old routerMirror
	_ = r.objs.PmMirrors.Lookup(uint32(id), &old)
	if err := r.objs.PmMirrors.Put(uint32(id), &v); err != nil {
		return fmt.Errorf("write pm_mirrors %d: %w", id, err)
	}
	// The next-hop cache is keyed by mirror ID: a new address needs a new
	// lookup, and so does a new encapsulation (the lookup's protocol and
	// port, and the MTU check's overhead, change). Bumping after the write
	// leaves no window in which a lookup for the old inputs could be
	// cached for the new ones.
	if old.Addr != v.Addr || old.Family != v.Family || old.Encap != v.Encap || old.GueDport != v.GueDport {
		if _, err := r.BumpNextHopGeneration(); err != nil {
			return err
		}
	}
	return nil
}

// SetMirrorState changes only a mirror's state.
func (r *Router) SetMirrorState(id MirrorID, s MirrorState) error {
	m, err := r.Mirror(id)
	if err != nil {
		return err
	}
	if m.State == MirrorUnused {
		return fmt.Errorf("mirror %d is not configured", id)
	}
	m.State = s
	return r.SetMirror(id, m)
}

// DeleteMirror marks a mirror unused: its flows move like a down mirror's.
func (r *Router) DeleteMirror(id MirrorID) error {
	if err := r.checkMirrorID(id); err != nil {
		return err
	}
	if err := r.objs.PmMirrors.Put(uint32(id), &routerMirror{}); err != nil {
		return fmt.Errorf("clear pm_mirrors %d: %w", id, err)
	}
	return nil
}

// Mirror reads one mirror.
func (r *Router) Mirror(id MirrorID) (Mirror, error) {
	if err := r.checkMirrorID(id); err != nil {
		return Mirror{}, err
	}
	var v routerMirror
	if err := r.objs.PmMirrors.Lookup(uint32(id), &v); err != nil {
		return Mirror{}, fmt.Errorf("read pm_mirrors %d: %w", id, err)
	}
	if v.State == uint32(MirrorUnused) {
		return Mirror{}, nil
	}
	return mirrorOf(v), nil
}

func mirrorValue(m Mirror) routerMirror {
	var v routerMirror
	v.Addr, v.Family = addrBytes(m.Addr)
	v.State = uint32(m.State)
	v.Encap = uint8(m.Encap)
	v.GueDport = m.GUEPort
	return v
}

func mirrorOf(v routerMirror) Mirror {
	return Mirror{Addr: bytesAddr(v.Addr, v.Family), State: MirrorState(v.State), Encap: Encapsulation(v.Encap), GUEPort: v.GueDport}
}

// Mirrors lists configured mirrors.
func (r *Router) Mirrors() (map[MirrorID]Mirror, error) {
	out := make(map[MirrorID]Mirror)
	var k uint32
	var v routerMirror
	it := r.objs.PmMirrors.Iterate()
	for it.Next(&k, &v) {
		if v.State != uint32(MirrorUnused) {
			out[MirrorID(k)] = mirrorOf(v)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_mirrors: %w", err)
	}
	return out, nil
}

// openPinnedMaps opens every map of spec pinned under dir, read-only.
func openPinnedMaps(spec *ebpf.CollectionSpec, dir string, since ...string) (map[string]*ebpf.Map, error) {
	opened := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata and friends are not pinned
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) && slices.Contains(since, name) {
			// A map newer than the agent that pinned the others: it
			// reads as empty, which is what that agent has configured.
			ms := spec.Maps[name].Copy()
			ms.Pinning = ebpf.PinNone
			m, err = ebpf.NewMap(ms)
		}
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return nil, fmt.Errorf("open pinned %s: %w", name, err)
		}
		opened[name] = m
	}
	return opened, nil
}

// OpenPinnedRouter opens the maps a running agent pinned under dir,
// without loading a program: for read-only tools such as
// `edge-agent inspect`. Its Config is read back from the maps.
func OpenPinnedRouter(dir string) (*Router, error) {
	spec, err := loadRouter()
	if err != nil {
		return nil, err
	}
	r := &Router{pin: dir}
	opened, err := openPinnedMaps(spec, dir)
	if err != nil {
		return nil, err
	}
	if err := (&ebpf.Collection{Maps: opened}).Assign(&r.objs.routerMaps); err != nil {
		return nil, err
	}
	o := &r.objs
	slotsSpec := spec.Maps["pm_route_tables"].InnerMap
	r.cfg = Config{
		MaxVIPs: int(o.PmVips.MaxEntries()), MaxSessions: int(o.PmSessions.MaxEntries()),
		MaxAffinity: int(o.PmAffinity.MaxEntries()), MaxPrefixesV4: int(o.PmRegionsV4.MaxEntries()),
		MaxPrefixesV6: int(o.PmRegionsV6.MaxEntries()), MaxRoutes: int(o.PmRouteIndex.MaxEntries()),
		MaxTables: int(o.PmRouteTables.MaxEntries()), MaxMirrors: int(o.PmMirrors.MaxEntries()),
		MaxCounters: int(o.PmCounters.MaxEntries()), MaxFragments: int(o.PmFrags.MaxEntries()),
		TableSlots: int(slotsSpec.MaxEntries),
	}
	// The table size is whatever the pinned inner maps have.
	var tref routerTableRef
	var tkey uint32
	it := o.PmTableIds.Iterate()
	for it.Next(&tkey, &tref) {
		if tref.MapId == 0 {
			continue
		}
		if m, err := ebpf.NewMapFromID(ebpf.MapID(tref.MapId)); err == nil {
			r.cfg.TableSlots = int(m.MaxEntries())
			m.Close()
		}
		break
	}
	r.tables = newTableSet(o.PmRouteTables, o.PmTableIds, slotsSpec, r.cfg)
	if err := r.tables.recover(o.PmRouteIndex, false); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}
