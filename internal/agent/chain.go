package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// XDPChain names the XDP program that runs after ours on every packet we
// pass untouched (not VIP traffic, not tunnel traffic for this host, and
// malformed packets we do not drop): an operator's firewall, DDoS filter
// or other load balancer. It applies to every interface of a role; each
// role (router, decap) has one slot, so one program follows it.
type XDPChain struct {
	// Pinned is a bpffs path of the XDP program to chain, pinned by its
	// loader (bpftool prog load … pinned, or libbpf/cilium/ebpf Pin).
	Pinned string `yaml:"pinned"`
	// TakeOverAttached chains the program that another tool attached to the
	// interfaces through netlink (ip link set … xdp, libbpf's
	// bpf_xdp_attach) and replaces it with ours atomically, in its mode.
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

// chainSlot is a program's chain slot (maps.Router, maps.Decap).
type chainSlot interface {
	SetNext(*ebpf.Program) error
	ClearNext() error
	Next() (*ebpf.Program, error)
}

// setupChain makes slot hold what cfg asks for before prog is attached to
// ifaces: the pinned program; the program the interfaces run (take-over);
// nothing when xdp_chain is absent. Nothing is changed when a check fails.
func setupChain(log *slog.Logger, cfg *Config, slot chainSlot, name string, ifaces []string) error {
	c := cfg.XDPChain
	switch {
	case c == nil:
		prev, err := slot.Next()
		if err != nil {
			return err
		}
		if prev != nil {
			info, _ := pmaps.DescribeProgram(prev)
			prev.Close()
			log.Warn("xdp_chain not configured: the program chained after ours is removed", "program", name, "next", info.String())
			return slot.ClearNext()
		}
		return nil
	case c.Pinned != "":
		p, err := ebpf.LoadPinnedProgram(c.Pinned, nil)
		if err != nil {
			return fmt.Errorf("xdp_chain.pinned: %w", err)
		}
		defer p.Close()
		if err := slot.SetNext(p); err != nil {
			return fmt.Errorf("xdp_chain.pinned: %s: %w", c.Pinned, err)
		}
		return nil
	}
	p, err := foreignProgram(cfg, name, ifaces)
	if err != nil || p == nil {
		return err
	}
	defer p.Close()
	if err := slot.SetNext(p); err != nil {
		return fmt.Errorf("xdp_chain.take_over_attached: %w", err)
	}
	return nil
}

// foreignProgram finds the one program to take over on ifaces: every
// interface runs it, ours, or nothing. nil: nothing to take over (the slot
// keeps what an earlier take-over put there).
func foreignProgram(cfg *Config, name string, ifaces []string) (*ebpf.Program, error) {
	var id uint32
	var where []string
	for _, iface := range ifaces {
		cur, err := readIfaceXDP(iface)
		if err != nil {
			return nil, err
		}
		if cur.ProgID == 0 || runsOurs(cfg.PinDir, iface, name, cur.ProgID) {
			continue
		}
		if id != 0 && cur.ProgID != id {
			return nil, fmt.Errorf("xdp_chain.take_over_attached: %s runs program %d but %s runs %d; one program can follow the %s",
				strings.Join(where, ", "), id, iface, cur.ProgID, name)
		}
		if _, err := takeOverFlags(iface, cfg.XDPMode, cur); err != nil {
			return nil, err
		}
		if linkAttached(cur) {
			return nil, fmt.Errorf("xdp_chain.take_over_attached: %s's program %d is attached through a bpf_link, which cannot be replaced; "+
				"have its owner pin the program and use xdp_chain.pinned instead", iface, cur.ProgID)
		}
		id = cur.ProgID
		where = append(where, iface)
	}
	if id == 0 {
		return nil, nil
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("xdp_chain.take_over_attached: open %s's program %d: %w", where[0], id, err)
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
