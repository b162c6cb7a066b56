package maps

import (
	"errors"
	"fmt"
	stdmaps "maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
)

// Chaining: the router and the decap program each own a
// BPF_MAP_TYPE_PROG_ARRAY (pm_next, pm_decap_next), pinned like the other
// maps. Every packet the program passes untouched — not IP, not for a VIP
// (or not a tunnel packet to us), malformed but not to a VIP address — is
// tail-called into the slot of its ingress ifindex first, then into slot 0
// (every interface), so an operator's firewall, DDoS filter or other load
// balancer still sees all the traffic premirror does not handle, and each
// interface may have its own. Packets premirror changed (encapsulated,
// decapsulated) are never chained. An empty slot falls through: the miss
// costs a few ns, so a node without per-interface programs pays for slot 0
// only. Needs Linux 5.10+ (tail calls from XDP with BTF-loaded programs;
// tested on 6.x).
//
// Both maps have ChainSlots slots: key = ingress ifindex, key 0 = every
// interface (ifindex 0 is never a real device). A device with a larger
// ifindex only gets slot 0; SetNextFor refuses it.

// ErrChainIncompatible means a program cannot run after ours: not XDP, one
// of premirror's own programs, or refused by the kernel for the slot.
var ErrChainIncompatible = errors.New("program cannot be chained after premirror")

// Names of the chain maps (pinned under the pin directory).
const (
	RouterNextMap = "pm_next"
	DecapNextMap  = "pm_decap_next"
)

// ChainSlots is the size of the chain maps: slots 1..ChainSlots-1 are
// per-interface (by ifindex), slot 0 is for every interface.
const ChainSlots = 65536

// AllInterfaces is the chain slot (ifindex 0) that applies to every
// interface without a slot of its own.
const AllInterfaces = 0

// ownPrograms are premirror's program names: chaining one of them after
// itself would loop through the tail-call limit.
var ownPrograms = map[string]bool{"pm_router": true, "pm_decap": true}

// chain is one program's chain map.
type chain struct{ m *ebpf.Map }

func checkIfindex(m *ebpf.Map, ifindex int) error {
	if ifindex < 0 || uint64(ifindex) >= uint64(m.MaxEntries()) {
		return fmt.Errorf("%w: ifindex %d is outside %s's %d slots (such an interface can only use slot 0, every interface)",
			ErrChainIncompatible, ifindex, m, m.MaxEntries())
	}
	return nil
}

// set installs prog in the slot of ifindex, replacing any previous program.
func (c chain) set(ifindex int, prog *ebpf.Program) error {
	if err := checkIfindex(c.m, ifindex); err != nil {
		return err
	}
	info, err := prog.Info()
	if err != nil {
		return fmt.Errorf("read program info: %w", err)
	}
	id, _ := info.ID()
	if info.Type != ebpf.XDP {
		return fmt.Errorf("%w: program %q (id %d) is a %s program, not XDP", ErrChainIncompatible, info.Name, id, info.Type)
	}
	if ownPrograms[info.Name] {
		return fmt.Errorf("%w: program %q (id %d) is premirror's own", ErrChainIncompatible, info.Name, id)
	}
	if err := c.m.Put(uint32(ifindex), prog); err != nil {
		if errors.Is(err, syscall.EINVAL) {
			// bpf_prog_map_compatible: type, JIT, xdp_has_frags and
			// expected attach type must match the map's owner (ours).
			return fmt.Errorf("%w: the kernel refused program %q (id %d) in %s: it must be loaded like ours, "+
				"as SEC(\"xdp\") by libbpf or cilium/ebpf: expected attach type BPF_XDP, without BPF_F_XDP_HAS_FRAGS "+
				"(not \"xdp.frags\"), JIT-compiled (%v)",
				ErrChainIncompatible, info.Name, id, c.m, err)
		}
		return fmt.Errorf("write %s slot %d: %w", c.m, ifindex, err)
	}
	return nil
}

// clear empties the slot of ifindex.
func (c chain) clear(ifindex int) error {
	if err := checkIfindex(c.m, ifindex); err != nil {
		return err
	}
	if err := c.m.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear %s slot %d: %w", c.m, ifindex, err)
	}
	return nil
}

// get opens the program in the slot of ifindex, or returns nil when the
// slot is empty. The caller closes it.
func (c chain) get(ifindex int) (*ebpf.Program, error) {
	if err := checkIfindex(c.m, ifindex); err != nil {
		return nil, err
	}
	var id uint32
	if err := c.m.Lookup(uint32(ifindex), &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s slot %d: %w", c.m, ifindex, err)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("open program %d from %s slot %d: %w", id, c.m, ifindex, ByIDError(err))
	}
	return p, nil
}

// ChainEntry is one filled chain slot.
type ChainEntry struct {
	// Ifindex is the interface the program follows ours on; AllInterfaces
	// (0) for every interface without a slot of its own.
	Ifindex int
	Program NextInfo
}

// ids lists the filled slots as ifindex → program ID. It walks every key
// (the kernel iterates a prog array over empty slots too, two syscalls a
// slot): about 45 ms for 65536 slots, so a caller that knows its
// interfaces (metrics) lists those instead.
func (c chain) ids() (map[int]uint32, error) {
	out := map[int]uint32{}
	var k, id uint32
	it := c.m.Iterate()
	for it.Next(&k, &id) {
		out[int(k)] = id
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", c.m, err)
	}
	return out, nil
}

// list describes the filled slots among ifindexes (nil: every slot),
// sorted by ifindex. A program that went away between the read of its
// slot and its description is skipped.
func (c chain) list(ifindexes []int) ([]ChainEntry, error) {
	var ids map[int]uint32
	if ifindexes == nil {
		var err error
		if ids, err = c.ids(); err != nil {
			return nil, err
		}
	} else {
		ids = map[int]uint32{}
		for _, i := range ifindexes {
			if i < 0 || uint64(i) >= uint64(c.m.MaxEntries()) {
				continue // cannot have a slot of its own
			}
			var id uint32
			err := c.m.Lookup(uint32(i), &id)
			switch {
			case err == nil:
				ids[i] = id
			case !errors.Is(err, ebpf.ErrKeyNotExist):
				return nil, fmt.Errorf("read %s slot %d: %w", c.m, i, err)
			}
		}
	}
	out := make([]ChainEntry, 0, len(ids))
	for _, i := range slices.Sorted(stdmaps.Keys(ids)) {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(ids[i]))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open program %d from %s slot %d: %w", ids[i], c.m, i, ByIDError(err))
		}
		info, err := DescribeProgram(p)
		p.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, ChainEntry{Ifindex: i, Program: info})
	}
	return out, nil
}

// NextInfo describes the program in a chain slot, for inspect and metrics.
type NextInfo struct {
	ID   ebpf.ProgramID
	Name string
	Tag  string
}

func (n NextInfo) String() string { return fmt.Sprintf("%s (id %d, tag %s)", n.Name, n.ID, n.Tag) }

// DescribeProgram returns the ID, name and tag of p.
func DescribeProgram(p *ebpf.Program) (NextInfo, error) {
	info, err := p.Info()
	if err != nil {
		return NextInfo{}, fmt.Errorf("read program info: %w", err)
	}
	id, _ := info.ID()
	return NextInfo{ID: id, Name: info.Name, Tag: info.Tag}, nil
}

// SetNext makes prog run after the router, on every interface without a
// program of its own (SetNextFor), on the packets it passes untouched.
// prog must be an XDP program loaded without frags support.
func (r *Router) SetNext(prog *ebpf.Program) error { return r.chain().set(AllInterfaces, prog) }

// ClearNext empties the router's slot for every interface: passed packets
// go to the stack unless their interface has a program of its own.
func (r *Router) ClearNext() error { return r.chain().clear(AllInterfaces) }

// Next opens the program chained after the router for every interface
// (nil: none).
func (r *Router) Next() (*ebpf.Program, error) { return r.chain().get(AllInterfaces) }

// SetNextFor makes prog run after the router on the packets it passes
// untouched that arrived on ifindex, instead of the program for every
// interface. ifindex must be below ChainSlots.
func (r *Router) SetNextFor(ifindex int, prog *ebpf.Program) error {
	return r.chain().set(ifindex, prog)
}

// ClearNextFor empties the router's slot of ifindex: that interface falls
// back to the program for every interface (SetNext), if any.
func (r *Router) ClearNextFor(ifindex int) error { return r.chain().clear(ifindex) }

// NextFor opens the program chained after the router for ifindex alone
// (nil: none; AllInterfaces is Next).
func (r *Router) NextFor(ifindex int) (*ebpf.Program, error) { return r.chain().get(ifindex) }

// NextPrograms lists the router's filled chain slots among ifindexes (and
// AllInterfaces if listed), or all of them when ifindexes is nil, sorted by
// ifindex.
func (r *Router) NextPrograms(ifindexes []int) ([]ChainEntry, error) {
	return r.chain().list(ifindexes)
}

func (r *Router) chain() chain { return chain{r.objs.PmNext} }

// SetNext makes prog run after the decap program, on every interface
// without a program of its own, on the packets it passes untouched (not
// tunnel traffic to this host).
func (d *Decap) SetNext(prog *ebpf.Program) error { return d.chain().set(AllInterfaces, prog) }

// ClearNext empties the decap program's slot for every interface.
func (d *Decap) ClearNext() error { return d.chain().clear(AllInterfaces) }

// Next opens the program chained after the decap program for every
// interface (nil: none).
func (d *Decap) Next() (*ebpf.Program, error) { return d.chain().get(AllInterfaces) }

// SetNextFor makes prog run after the decap program on what it passes
// untouched from ifindex, instead of the program for every interface.
func (d *Decap) SetNextFor(ifindex int, prog *ebpf.Program) error {
	return d.chain().set(ifindex, prog)
}

// ClearNextFor empties the decap program's slot of ifindex.
func (d *Decap) ClearNextFor(ifindex int) error { return d.chain().clear(ifindex) }

// NextFor opens the program chained after the decap program for ifindex
// alone (nil: none).
func (d *Decap) NextFor(ifindex int) (*ebpf.Program, error) { return d.chain().get(ifindex) }

// NextPrograms lists the decap program's filled chain slots among
// ifindexes, or all of them when ifindexes is nil, sorted by ifindex.
func (d *Decap) NextPrograms(ifindexes []int) ([]ChainEntry, error) {
	return d.chain().list(ifindexes)
}

func (d *Decap) chain() chain { return chain{d.objs.PmDecapNext} }

// PinnedNext describes the program for every interface in the pinned
// chain map mapName (RouterNextMap or DecapNextMap) under dir, for
// read-only tools. ok is false when the slot is empty.
func PinnedNext(dir, mapName string) (info NextInfo, ok bool, err error) {
	entries, err := PinnedNextPrograms(dir, mapName, []int{AllInterfaces})
	if err != nil || len(entries) == 0 {
		return NextInfo{}, false, err
	}
	return entries[0].Program, true, nil
}

// PinnedNextPrograms lists the filled slots of the pinned chain map
// mapName under dir among ifindexes (nil: every slot), for read-only tools.
func PinnedNextPrograms(dir, mapName string, ifindexes []int) ([]ChainEntry, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, mapName), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned %s: %w", mapName, err)
	}
	defer m.Close()
	return chain{m}.list(ifindexes)
}

// chainMigration carries the programs of a pinned chain map this build
// cannot reuse (an upgrade from the one-slot maps) into the new map, so an
// upgrade never drops the operator's program.
type chainMigration struct {
	unpinned // the running program holds the old map too
	progs    map[int]*ebpf.Program
}

// prepareChainMigration unpins the chain map ms.Name under pinDir if it is
// incompatible with ms, keeping its filled slots. nil: nothing to migrate
// (also when pinDir is "").
func prepareChainMigration(ms *ebpf.MapSpec, pinDir string) (*chainMigration, error) {
	m, path, err := incompatiblePinIn(ms, pinDir)
	if m == nil || err != nil {
		return nil, err
	}
	mg := &chainMigration{unpinned: unpinned{old: m, path: path}, progs: map[int]*ebpf.Program{}}
	ids, err := chain{m}.ids()
	if err != nil {
		mg.close()
		return nil, err
	}
	for i, id := range ids {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			mg.close()
			return nil, fmt.Errorf("migrate %s: open program %d of slot %d: %w", ms.Name, id, i, ByIDError(err))
		}
		mg.progs[i] = p
	}
	if err := m.Unpin(); err != nil {
		mg.close()
		return nil, fmt.Errorf("migrate %s: unpin the old map: %w", ms.Name, err)
	}
	return mg, nil
}

// finish writes the old map's programs into m, the new chain map, before
// the new program is attached; on failure the old map is pinned back, so
// nothing is lost.
func (mg *chainMigration) finish(m *ebpf.Map) error {
	if mg == nil {
		return nil
	}
	defer mg.close()
	for i, p := range mg.progs {
		if err := (chain{m}).set(i, p); err != nil {
			return mg.restore(fmt.Errorf("slot %d: %w", i, err))
		}
	}
	return nil
}

// abort pins the old map back after the new collection failed to load.
func (mg *chainMigration) abort() error {
	if mg == nil {
		return nil
	}
	defer mg.close()
	return mg.repin()
}

func (mg *chainMigration) close() {
	for _, p := range mg.progs {
		p.Close()
	}
	mg.old.Close()
}
