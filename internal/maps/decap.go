package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Decap owns the decap program and its maps (mirror hosts).
type Decap struct {
	objs decapObjects
}

// LoadDecap loads the decap program, reusing pins under opts.PinDir.
func LoadDecap(opts Options) (*Decap, error) {
	spec, err := loadDecap()
	if err != nil {
		return nil, fmt.Errorf("load decap spec: %w", err)
	}
	d := &Decap{}
	copts, err := collectionOptions(spec, opts)
	if err != nil {
		return nil, err
	}
	mg, err := preparePinMigrations(spec, opts.PinDir, DecapNextMap, "pm_decap_stats")
	if err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&d.objs, copts); err != nil {
		err = errors.Join(err, mg.abort())
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w under %s: %v", ErrIncompatiblePin, opts.PinDir, err)
		}
		return nil, fmt.Errorf("load decap: %w", err)
	}
	if err := mg.finish(d.objs.PmDecapNext, d.objs.PmDecapStats); err != nil {
		d.Close()
		return nil, fmt.Errorf("load decap: %w", err)
	}
	return d, nil
}

// OpenPinnedDecap opens the decap maps a running agent pinned under dir,
// read-only and without loading a program: for `edge-agent inspect` on a
// mirror host. Program is nil.
func OpenPinnedDecap(dir string) (*Decap, error) {
	spec, err := loadDecap()
	if err != nil {
		return nil, err
	}
	// pm_decap_sources came after the others: an agent of an older build
	// has not pinned it.
	opened, err := openPinnedMaps(spec, dir, "pm_decap_sources")
	if err != nil {
		return nil, err
	}
	d := &Decap{}
	if err := (&ebpf.Collection{Maps: opened}).Assign(&d.objs.decapMaps); err != nil {
		return nil, err
	}
	return d, nil
}

// Close releases handles; pins stay.
func (d *Decap) Close() error { return d.objs.Close() }

// Program is the XDP program to attach.
func (d *Decap) Program() *ebpf.Program { return d.objs.PmDecap }

// DecapEndpoint is one local tunnel endpoint the decap program terminates
// (pm_decap_addrs).
type DecapEndpoint struct {
	Addr netip.Addr
	// GUEPort, when not 0, also accepts GUE (direct IP-in-UDP, what the
	// router sends to EncapGUE mirrors) to this UDP port; other UDP to Addr
	// passes untouched. 0: IPIP and IPv6 tunnels only.
	GUEPort uint16
	// SourcesOnly takes tunnel packets to Addr only from outer sources in
	// a prefix of SetSources; others are dropped (drop_source). False:
	// from any source.
	SourcesOnly bool
}

// decapFlagSources is DECAP_F_SOURCES (bpf/include/premirror.h).
const decapFlagSources = 1

// AddEndpoint makes the program decapsulate IPIP and IPv6 tunnel packets
// to addr (no GUE; see SetEndpoint).
func (d *Decap) AddEndpoint(addr netip.Addr) error {
	return d.SetEndpoint(DecapEndpoint{Addr: addr})
}

// SetEndpoint creates or updates a tunnel endpoint.
func (d *Decap) SetEndpoint(e DecapEndpoint) error {
	if !e.Addr.IsValid() {
		return errors.New("decap endpoint address is empty")
	}
	var k decapDecapAddr
	k.Addr, k.Family = addrBytes(e.Addr)
	v := decapDecapAddrInfo{GuePort: e.GUEPort}
	if e.SourcesOnly {
		v.Flags |= decapFlagSources
	}
	if err := d.objs.PmDecapAddrs.Put(&k, &v); err != nil {
		return fmt.Errorf("write pm_decap_addrs %s: %w", e.Addr, err)
	}
	return nil
}

// RemoveEndpoint stops decapsulating packets to addr.
func (d *Decap) RemoveEndpoint(addr netip.Addr) error {
	var k decapDecapAddr
	k.Addr, k.Family = addrBytes(addr)
	if err := d.objs.PmDecapAddrs.Delete(&k); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete pm_decap_addrs %s: %w", addr, err)
	}
	return nil
}

// Endpoints lists the endpoints decapsulated here.
func (d *Decap) Endpoints() ([]DecapEndpoint, error) {
	var out []DecapEndpoint
	var k decapDecapAddr
	var v decapDecapAddrInfo
	it := d.objs.PmDecapAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, DecapEndpoint{Addr: bytesAddr(k.Addr, k.Family), GUEPort: v.GuePort, SourcesOnly: v.Flags&decapFlagSources != 0})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_decap_addrs: %w", err)
	}
	return out, nil
}

// MaxDecapSources is how many prefixes pm_decap_sources holds.
const MaxDecapSources = 1024

// srcKey is p's pm_decap_sources key: IPv4 as IPv4-mapped IPv6.
func srcKey(p netip.Prefix) decapDecapSrcKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return decapDecapSrcKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

// srcFamily is p's pm_decap_sources value (DECAP_SRC_V4 / _V6): an IPv4
// source is taken only where the longest match is an IPv4 prefix, so an
// IPv6 prefix covering ::ffff:0:0/96 (::/0) does not list IPv4 sources.
func srcFamily(k decapDecapSrcKey) uint8 {
	if netip.AddrFrom16(k.Addr).Is4In6() && k.Prefixlen >= 96 {
		return 4
	}
	return 6
}

// keyPrefix is the prefix of a pm_decap_sources key.
func keyPrefix(k decapDecapSrcKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen)
	if a.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), bits-96)
	}
	return netip.PrefixFrom(a, bits)
}

// SetSources makes pm_decap_sources hold exactly the prefixes of want:
// the outer sources that endpoints with SourcesOnly take tunnel packets
// from. Only differences are written (the agent applies every desired
// state), and missing prefixes before stale ones are deleted, so a source
// in both the old and the new list is never refused in between. It
// returns how many prefixes it wrote and deleted.
func (d *Decap) SetSources(want []netip.Prefix) (written, deleted int, err error) {
	keep := map[decapDecapSrcKey]bool{}
	for _, p := range want {
		if !p.IsValid() {
			return 0, 0, fmt.Errorf("decap source %v: not a prefix", p)
		}
		keep[srcKey(p)] = true
	}
	if len(keep) > MaxDecapSources {
		return 0, 0, fmt.Errorf("%d decap sources: pm_decap_sources holds %d", len(keep), MaxDecapSources)
	}
	have := map[decapDecapSrcKey]uint8{}
	var k decapDecapSrcKey
	var v uint8
	it := d.objs.PmDecapSources.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("iterate pm_decap_sources: %w", err)
	}
	for k := range keep {
		fam := srcFamily(k)
		if hv, ok := have[k]; ok && hv == fam {
			continue
		}
		if err := d.objs.PmDecapSources.Put(&k, &fam); err != nil {
			return written, deleted, fmt.Errorf("write pm_decap_sources %s: %w", keyPrefix(k), err)
		}
		written++
	}
	for k := range have {
		if keep[k] {
			continue
		}
		if err := d.objs.PmDecapSources.Delete(&k); err != nil && !isNotExist(err) {
			return written, deleted, fmt.Errorf("delete pm_decap_sources %s: %w", keyPrefix(k), err)
		}
		deleted++
	}
	return written, deleted, nil
}

// Sources lists the prefixes of pm_decap_sources.
func (d *Decap) Sources() ([]netip.Prefix, error) {
	var out []netip.Prefix
	var k decapDecapSrcKey
	var v uint8
	it := d.objs.PmDecapSources.Iterate()
	for it.Next(&k, &v) {
		out = append(out, keyPrefix(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pm_decap_sources: %w", err)
	}
	return out, nil
}

// SetProbeEcho makes the decap program answer the edges' UDP echo probes
// to its endpoints on port itself (internal/probe's datagram), at most
// ratePerSecond (> 0) replies a second on the host, split over its CPUs.
// Requests over that budget go on to the stack, where the agent's
// responder may answer them. Port 0 turns it off.
func (d *Decap) SetProbeEcho(port uint16, ratePerSecond int) error {
	if port != 0 && ratePerSecond <= 0 {
		return fmt.Errorf("probe echo rate %d: must be positive", ratePerSecond)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	cfg := decapProbeEchoCfg{Port: port, Rate: uint32(max(1, ratePerSecond/max(cpus, 1)))}
	if err := d.objs.PmDecapProbe.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write pm_decap_probe: %w", err)
	}
	return nil
}

// Stats reads the decap counters.
func (d *Decap) Stats() (DecapStats, error) {
	var per []decapDecapStats
	if err := d.objs.PmDecapStats.Lookup(uint32(0), &per); err != nil {
		return DecapStats{}, fmt.Errorf("read pm_decap_stats: %w", err)
	}
	return DecapStats(sumPerCPU(per)), nil
}
