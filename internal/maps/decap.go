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
	// An upgrade from the one-slot chain map: carry its program over.
	mg, err := prepareChainMigration(spec.Maps[DecapNextMap], opts.PinDir)
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
	// Before the caller attaches the new program: no packet misses the peer.
	if err := mg.finish(d.objs.PmDecapNext); err != nil {
		d.Close()
		return nil, fmt.Errorf("load decap: %w", err)
	}
	return d, nil
}

// Close releases handles; pins stay.
func (d *Decap) Close() error { return d.objs.Close() }

// Program is the XDP program to attach.
func (d *Decap) Program() *ebpf.Program { return d.objs.PmDecap }

// AddEndpoint makes the program decapsulate tunnel packets to addr.
func (d *Decap) AddEndpoint(addr netip.Addr) error {
	if !addr.IsValid() {
		return errors.New("decap endpoint address is empty")
	}
	var k decapDecapAddr
	k.Addr, k.Family = addrBytes(addr)
	if err := d.objs.PmDecapAddrs.Put(&k, &decapDecapAddrInfo{}); err != nil {
		return fmt.Errorf("write pm_decap_addrs %s: %w", addr, err)
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

// Endpoints lists the addresses decapsulated here.
func (d *Decap) Endpoints() ([]netip.Addr, error) {
	var out []netip.Addr
	var k decapDecapAddr
	var v decapDecapAddrInfo
	it := d.objs.PmDecapAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, bytesAddr(k.Addr, k.Family))
	}
	return out, it.Err()
}

// Stats reads the decap counters.
func (d *Decap) Stats() (DecapStats, error) {
	var per []decapDecapStats
	if err := d.objs.PmDecapStats.Lookup(uint32(0), &per); err != nil {
		return DecapStats{}, fmt.Errorf("read pm_decap_stats: %w", err)
	}
	return DecapStats(sumPerCPU(per)), nil
}
