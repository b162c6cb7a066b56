package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// XDPChain names the XDP program that runs after ours on every packet we
// pass untouched (not VIP traffic, not tunnel traffic for this host, and
// malformed packets we do not drop): an operator's firewall, DDoS filter
// or other load balancer. A pinned program follows ours on every interface
// of a role (router, decap); programs taken over follow ours each on its
// own interface, so interfaces may run different ones.
type XDPChain struct {
	// Pinned is a bpffs path of the XDP program to chain, pinned by its
	// loader (bpftool prog load … pinned, or libbpf/cilium/ebpf Pin).
	Pinned string `yaml:"pinned"`
	// TakeOverAttached chains the program that another tool attached to the
	// interfaces through netlink (ip link set … xdp, libbpf's
	// bpf_xdp_attach) and replaces it with ours atomically, in its mode:
	// each interface's program goes in that interface's chain slot.
	// A program attached through a bpf_link cannot be replaced: use Pinned.
	TakeOverAttached bool `yaml:"take_over_attached"`
	// RestoreOnDetach puts the program taken over back on the interface
	// when `edge-agent detach` removes ours (atomically again).
	RestoreOnDetach bool `yaml:"restore_on_detach"`
}

func (c *XDPChain) validate() error {
	if c == nil {
		return nil
	}
	switch {
	case c.Pinned == "" && !c.TakeOverAttached:
		return errors.New("xdp_chain: set pinned or take_over_attached (or remove xdp_chain)")
	case c.Pinned != "" && c.TakeOverAttached:
		return errors.New("xdp_chain: pinned and take_over_attached exclude each other (one program follows ours)")
	case c.Pinned != "" && !strings.HasPrefix(c.Pinned, "/"):
		return fmt.Errorf("xdp_chain.pinned: %q must be an absolute path on a bpffs", c.Pinned)
	case c.RestoreOnDetach && !c.TakeOverAttached:
		return errors.New("xdp_chain.restore_on_detach: only with take_over_attached")
	}
	return nil
}

func (c *XDPChain) String() string {
	if c == nil {
		return "none"
	}
	if c.Pinned != "" {
		return "pinned " + c.Pinned
	}
	return fmt.Sprintf("take_over_attached (restore_on_detach %v)", c.RestoreOnDetach)
}

// chainSlot is a program's chain map (maps.Router, maps.Decap): slot 0
// for every interface, one slot per ifindex.
type chainSlot interface {
	SetNext(*ebpf.Program) error
	ClearNext() error
	Next() (*ebpf.Program, error)
	NextFor(int) (*ebpf.Program, error)
	SetNextFor(int, *ebpf.Program) error
	ClearNextFor(int) error
	NextPrograms([]int) ([]pmaps.ChainEntry, error)
}

// takeOver is one interface's foreign program to chain in its slot.
type takeOver struct {
	iface string
	index int
	prog  *ebpf.Program
}

// setupChain makes the chain slots hold what cfg asks for before prog is
// attached to ifaces:
//   - pinned: the pinned program in slot 0 (every interface), no slot of
//     an interface's own;
//   - take_over_attached: each interface's foreign program in that
//     interface's slot; an interface that already runs ours keeps its slot;
//     one that runs nothing gets its slot emptied; slot 0 is left as it is
//     (an agent of the one-slot build put its take-over there);
//   - no xdp_chain: every slot empty.
//
// Slots of ifindexes that are not among ifaces are emptied in every case:
// a new device could get that ifindex. Nothing is changed when a check
// fails.
func setupChain(log *slog.Logger, cfg *Config, slot chainSlot, name string, ifaces []string) error {
	c := cfg.XDPChain
	index := map[int]string{} // configured ifindex → name
	ours := map[int]bool{}    // take-over: runs our program already
	var foreign []takeOver
	defer func() {
		for _, f := range foreign {
			f.prog.Close()
		}
	}()
	for _, iface := range ifaces {
		cur, err := readIfaceXDP(iface)
		if err != nil {
			return err
		}
		index[cur.Index] = iface
		if c == nil || !c.TakeOverAttached || cur.ProgID == 0 {
			continue
		}
		if runsOurs(cfg.PinDir, iface, name, cur.ProgID) {
			ours[cur.Index] = true
			continue
		}
		p, err := foreignProgram(cfg, iface, cur)
		if err != nil {
			return err
		}
		foreign = append(foreign, takeOver{iface: iface, index: cur.Index, prog: p})
	}
	have, err := slot.NextPrograms(nil)
	if err != nil {
		return err
	}

	// Fill first, then empty: a packet never misses a program it should see.
	keep := map[int]bool{}
	switch {
	case c != nil && c.Pinned != "":
		p, err := ebpf.LoadPinnedProgram(c.Pinned, nil)
		if err != nil {
			return fmt.Errorf("xdp_chain.pinned: %w", err)
		}
		defer p.Close()
		if err := slot.SetNext(p); err != nil {
			return fmt.Errorf("xdp_chain.pinned: %s: %w", c.Pinned, err)
		}
		keep[pmaps.AllInterfaces] = true
	case c != nil && c.TakeOverAttached:
		keep[pmaps.AllInterfaces] = true
		for _, f := range foreign {
			if err := slot.SetNextFor(f.index, f.prog); err != nil {
				return fmt.Errorf("xdp_chain.take_over_attached: %s: %w", f.iface, err)
			}
			keep[f.index] = true
			info, _ := pmaps.DescribeProgram(f.prog)
			log.Info("xdp program chained after ours", "program", name, "iface", f.iface, "next", info.String(), "xdp_chain", c.String())
		}
		// Runs ours: its slot holds what an earlier agent took over.
		maps.Copy(keep, ours)
	}
	for _, e := range have {
		if keep[e.Ifindex] {
			continue
		}
		where, why := index[e.Ifindex], ""
		switch {
		case e.Ifindex == pmaps.AllInterfaces:
			where, why = "*", "xdp_chain not configured"
		case where == "":
			where, why = fmt.Sprintf("ifindex %d", e.Ifindex), "not a configured interface"
		case c == nil:
			why = "xdp_chain not configured"
		case c.Pinned != "":
			why = "xdp_chain.pinned applies to every interface"
		default:
			why = "the interface runs no program to take over"
		}
		log.Warn("the program chained after ours is removed", "program", name, "iface", where, "next", e.Program.String(), "reason", why)
		if err := slot.ClearNextFor(e.Ifindex); err != nil {
			return err
		}
	}
	return nil
}

// foreignProgram opens the program another tool attached to iface, after
// checking that it can be taken over: its mode is one xdp_mode allows and
// it is attached through netlink, not a bpf_link. The caller closes it.
func foreignProgram(cfg *Config, iface string, cur ifaceXDP) (*ebpf.Program, error) {
	if _, err := takeOverFlags(iface, cfg.XDPMode, cur); err != nil {
		return nil, err
	}
	if linkAttached(cur) {
		return nil, fmt.Errorf("xdp_chain.take_over_attached: %s's program %d is attached through a bpf_link, which cannot be replaced; "+
			"have its owner pin the program and use xdp_chain.pinned instead", iface, cur.ProgID)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur.ProgID))
	if err != nil {
		return nil, fmt.Errorf("xdp_chain.take_over_attached: open %s's program %d: %w", iface, cur.ProgID, pmaps.ByIDError(err))
	}
	return p, nil
}

// runsOurs reports whether id is the program of our pinned link or our
// pinned netlink attachment on iface.
func runsOurs(pinDir, iface, name string, id uint32) bool {
	if l, err := link.LoadPinnedLink(linkPin(pinDir, iface, name), nil); err == nil {
		info, err := l.Info()
		l.Close()
		if err == nil && uint32(info.Program) == id {
			return true
		}
	}
	if p, err := ebpf.LoadPinnedProgram(netlinkPin(pinDir, iface, name), nil); err == nil {
		info, err := p.Info()
		p.Close()
		if err == nil {
			pid, _ := info.ID()
			return uint32(pid) == id
		}
	}
	return false
}

// linkAttached reports whether an XDP bpf_link on cur's interface holds
// its program. (Link IDs are global: the program ID must match too.)
func linkAttached(cur ifaceXDP) bool {
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType {
			continue
		}
		if x := info.XDP(); x != nil && int(x.Ifindex) == cur.Index && uint32(info.Program) == cur.ProgID {
			return true
		}
	}
	return false
}
