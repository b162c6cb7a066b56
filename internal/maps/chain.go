package maps

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
)

// Chaining: the router and the decap program each own a one-slot
// BPF_MAP_TYPE_PROG_ARRAY (pm_next, pm_decap_next), pinned like the other
// maps. Every packet the program passes untouched — not IP, not for a VIP
// (or not a tunnel packet to us), malformed but not to a VIP address — is
// tail-called into slot 0 first, so an operator's firewall, DDoS filter or
// other load balancer still sees all the traffic premirror does not handle.
// Packets premirror changed (encapsulated, decapsulated) are never chained.
// An empty slot falls through to XDP_PASS. Needs Linux 5.10+ (tail calls
// from XDP with BTF-loaded programs; tested on 6.x).

// ErrChainIncompatible means a program cannot run after ours: not XDP, one
// of premirror's own programs, or refused by the kernel for the slot.
var ErrChainIncompatible = errors.New("program cannot be chained after premirror")

// Names of the chain maps (pinned under the pin directory).
const (
	RouterNextMap = "pm_next"
	DecapNextMap  = "pm_decap_next"
)

// ownPrograms are premirror's program names: chaining one of them after
// itself would loop through the tail-call limit.
var ownPrograms = map[string]bool{"pm_router": true, "pm_decap": true}

// setNext installs prog in slot 0 of m, replacing any previous program.
func setNext(m *ebpf.Map, prog *ebpf.Program) error {
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
	if err := m.Put(uint32(0), prog); err != nil {
		if errors.Is(err, syscall.EINVAL) {
			// bpf_prog_map_compatible: type, JIT, xdp_has_frags and
			// expected attach type must match the map's owner (ours).
			return fmt.Errorf("%w: the kernel refused program %q (id %d) in %s: it must be loaded like ours, "+
				"as SEC(\"xdp\") by libbpf or cilium/ebpf: expected attach type BPF_XDP, without BPF_F_XDP_HAS_FRAGS "+
				"(not \"xdp.frags\"), JIT-compiled (%v)",
				ErrChainIncompatible, info.Name, id, m, err)
		}
		return fmt.Errorf("write %s: %w", m, err)
	}
	return nil
}

// clearNext empties slot 0 of m.
func clearNext(m *ebpf.Map) error {
	if err := m.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear %s: %w", m, err)
	}
	return nil
}

// nextProgram opens the program in slot 0 of m, or returns nil when the
// slot is empty. The caller closes it.
func nextProgram(m *ebpf.Map) (*ebpf.Program, error) {
	var id uint32
	if err := m.Lookup(uint32(0), &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", m, err)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("open program %d from %s: %w", id, m, err)
	}
	return p, nil
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

// SetNext makes prog run after the router on the packets it passes
// untouched. prog must be an XDP program loaded without frags support.
func (r *Router) SetNext(prog *ebpf.Program) error { return setNext(r.objs.PmNext, prog) }

// ClearNext empties the router's chain slot: passed packets go to the stack.
func (r *Router) ClearNext() error { return clearNext(r.objs.PmNext) }

// Next opens the program chained after the router (nil: none).
func (r *Router) Next() (*ebpf.Program, error) { return nextProgram(r.objs.PmNext) }

// SetNext makes prog run after the decap program on the packets it passes
// untouched (not tunnel traffic to this host).
func (d *Decap) SetNext(prog *ebpf.Program) error { return setNext(d.objs.PmDecapNext, prog) }

// ClearNext empties the decap program's chain slot.
func (d *Decap) ClearNext() error { return clearNext(d.objs.PmDecapNext) }

// Next opens the program chained after the decap program (nil: none).
func (d *Decap) Next() (*ebpf.Program, error) { return nextProgram(d.objs.PmDecapNext) }

// PinnedNext describes the program in the pinned chain map mapName
// (RouterNextMap or DecapNextMap) under dir, for read-only tools. ok is
// false when the slot is empty.
func PinnedNext(dir, mapName string) (info NextInfo, ok bool, err error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, mapName), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return NextInfo{}, false, fmt.Errorf("open pinned %s: %w", mapName, err)
	}
	defer m.Close()
	p, err := nextProgram(m)
	if err != nil || p == nil {
		return NextInfo{}, false, err
	}
	defer p.Close()
	info, err = DescribeProgram(p)
	return info, err == nil, err
}
