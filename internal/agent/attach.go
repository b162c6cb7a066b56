package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// ErrForeignXDP means an interface already runs an XDP program that is not
// one of ours and xdp_chain does not say to take it over; the agent will
// not replace it.
var ErrForeignXDP = errors.New("interface has a foreign XDP program")

// Attachment is one program attached to one interface: through a pinned
// bpf_link, or — when it took over a program another tool attached with
// netlink — through netlink with the program pinned; either way it stays
// attached while the agent restarts.
type Attachment struct {
	Iface   string
	Ifindex int    // the interface's index when attached: its chain slot
	Program string // "router" or "decap"
	Mode    string // "native" or "generic"
	Action  string // "attached" (new), "updated" (replaced our previous program) or "took over" (replaced a foreign one)
	Via     string // "bpf_link" or "netlink"
	link    link.Link
}

// Close drops our handle; the pinned link keeps the program attached.
func (a *Attachment) Close() error {
	if a.link == nil {
		return nil
	}
	return a.link.Close()
}

func linkPin(pinDir, iface, prog string) string {
	// bpffs refuses dots in pin names.
	return filepath.Join(pinDir, "links", iface+"_"+prog)
}

// netlinkPin is where our program attached through netlink is pinned:
// proof, for the next agent and for detach, that the interface's program
// is ours.
func netlinkPin(pinDir, iface, prog string) string {
	return filepath.Join(pinDir, "netlink", iface+"_"+prog)
}

// restorePin holds the program we took over, to be put back on detach
// (xdp_chain.restore_on_detach).
func restorePin(pinDir, iface, prog string) string {
	return filepath.Join(pinDir, "restore", iface+"_"+prog)
}

// attachXDP attaches prog to iface. When an earlier agent left our program
// there (a pinned link, or a netlink attachment it pinned), it atomically
// replaces that program: packets never see the interface without one. A
// foreign program is taken over (replaced atomically through netlink, after
// being put in the interface's slot of chain) only with takeOver;
// otherwise it is ErrForeignXDP.
func attachXDP(prog *ebpf.Program, name, iface string, mode XDPMode, pinDir string, takeOver *XDPChain, chain chainSlot) (*Attachment, error) {
	nl, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	idx := nl.Attrs().Index
	pin := linkPin(pinDir, iface, name)
	for _, dir := range []string{filepath.Dir(pin), filepath.Dir(netlinkPin(pinDir, iface, name)), filepath.Dir(restorePin(pinDir, iface, name))} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}

	if _, err := os.Stat(pin); err == nil {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return nil, fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		info, ierr := l.Info()
		if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == idx {
			// link.Update keeps the link's mode: a changed xdp_mode would
			// silently not apply.
			if cur, err := readIfaceXDP(iface); err == nil {
				if err := keepsMode(iface, mode, cur.Mode); err != nil {
					l.Close()
					return nil, err
				}
			}
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("update %s program on %s: %w", name, iface, err)
			}
			return &Attachment{Iface: iface, Ifindex: idx, Program: name, Mode: xdpMode(iface), Action: "updated", Via: "bpf_link", link: l}, nil
		}
		// The interface was recreated: the old link is defunct.
		_ = l.Unpin()
		l.Close()
	}

	cur, err := readIfaceXDP(iface)
	if err != nil {
		return nil, err
	}
	if at, err := updateNetlink(prog, name, iface, mode, pinDir, cur); at != nil || err != nil {
		if err == nil {
			// restore_on_detach is the running config's, which may differ
			// from the one of the agent that took the interface over.
			err = syncRestorePin(name, iface, pinDir, cur.Index, takeOver, chain)
		}
		return at, err
	}
	if cur.ProgID != 0 {
		if takeOver == nil || !takeOver.TakeOverAttached {
			return nil, fmt.Errorf("%w: %s (prog id %d); detach it, or set xdp_chain.take_over_attached "+
				"to run premirror in front of it (see README, \"Running beside another XDP program\")", ErrForeignXDP, iface, cur.ProgID)
		}
		return takeOverXDP(prog, name, iface, mode, pinDir, cur, takeOver.RestoreOnDetach, chain)
	}

	try := []link.XDPAttachFlags{link.XDPDriverMode, link.XDPGenericMode}
	switch mode {
	case XDPNative:
		try = try[:1]
	case XDPGeneric:
		try = try[1:]
	}
	var l link.Link
	for _, flags := range try {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: flags})
		if err == nil {
			break
		}
		if st, _ := readIfaceXDP(iface); st.ProgID != 0 {
			return nil, fmt.Errorf("%w: %s (prog id %d) appeared while attaching", ErrForeignXDP, iface, st.ProgID)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s (%s mode): %w", name, iface, mode, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return &Attachment{Iface: iface, Ifindex: idx, Program: name, Mode: xdpMode(iface), Action: "attached", Via: "bpf_link", link: l}, nil
}

// updateNetlink replaces our own netlink-attached program (left by an
// earlier agent that took the interface over) with prog. It returns nil,
// nil when the interface does not run such a program.
func updateNetlink(prog *ebpf.Program, name, iface string, mode XDPMode, pinDir string, cur ifaceXDP) (*Attachment, error) {
	pin := netlinkPin(pinDir, iface, name)
	old, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return nil, nil
	}
	defer old.Close()
	var oldID ebpf.ProgramID
	if info, err := old.Info(); err == nil {
		oldID, _ = info.ID()
	}
	if oldID == 0 || cur.ProgID != uint32(oldID) {
		// Someone replaced or detached our program: the pins are stale.
		_ = os.Remove(pin)
		_ = os.Remove(restorePin(pinDir, iface, name))
		return nil, nil
	}
	flags, err := modeFlags(cur.Mode)
	if err != nil {
		return nil, fmt.Errorf("update %s program on %s: %w", name, iface, err)
	}
	if err := keepsMode(iface, mode, cur.Mode); err != nil {
		return nil, err
	}
	if err := xdpReplace(cur.Index, prog.FD(), old.FD(), flags); err != nil {
		return nil, fmt.Errorf("update %s program on %s: %w", name, iface, err)
	}
	if err := repin(prog, pin); err != nil {
		return nil, err
	}
	return &Attachment{Iface: iface, Ifindex: cur.Index, Program: name, Mode: xdpMode(iface), Action: "updated", Via: "netlink"}, nil
}

// syncRestorePin makes the restore pin of our netlink attachment on iface
// say what xdp_chain.restore_on_detach says now: the program taken over
// (in the interface's chain slot) pinned when set, nothing otherwise.
func syncRestorePin(name, iface, pinDir string, ifindex int, c *XDPChain, chain chainSlot) error {
	rpin := restorePin(pinDir, iface, name)
	if c == nil || !c.TakeOverAttached || !c.RestoreOnDetach || chain == nil {
		if err := os.Remove(rpin); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("xdp_chain.restore_on_detach: %w", err)
		}
		return nil
	}
	if _, err := os.Stat(rpin); err == nil {
		return nil
	}
	p, err := chain.NextFor(ifindex)
	if err != nil {
		return fmt.Errorf("xdp_chain.restore_on_detach: %s: %w", iface, err)
	}
	if p == nil {
		return nil // nothing was taken over
	}
	defer p.Close()
	return repin(p, rpin)
}

// takeOverXDP atomically replaces the foreign program cur on iface with
// prog, in the foreign program's mode. It puts that very program in the
// chain slot of iface's ifindex first (setupChain did, but the interface's
// program may have been replaced since), so from the swap on it runs right
// after ours there (and only there); the swap expects it on the interface.
func takeOverXDP(prog *ebpf.Program, name, iface string, mode XDPMode, pinDir string, cur ifaceXDP, restore bool, chain chainSlot) (*Attachment, error) {
	flags, err := takeOverFlags(iface, mode, cur)
	if err != nil {
		return nil, err
	}
	foreign, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur.ProgID))
	if err != nil {
		return nil, fmt.Errorf("xdp_chain.take_over_attached: open %s's program %d: %w", iface, cur.ProgID, pmaps.ByIDError(err))
	}
	defer foreign.Close()
	if chain != nil {
		if err := chain.SetNextFor(cur.Index, foreign); err != nil {
			return nil, fmt.Errorf("xdp_chain.take_over_attached: %s: %w", iface, err)
		}
	}
	if restore {
		if err := repin(foreign, restorePin(pinDir, iface, name)); err != nil {
			return nil, err
		}
	}
	if err := xdpReplace(cur.Index, prog.FD(), foreign.FD(), flags); err != nil {
		_ = os.Remove(restorePin(pinDir, iface, name))
		if errors.Is(err, errLinkAttached) {
			return nil, fmt.Errorf("xdp_chain.take_over_attached: %s's program %d is attached through a bpf_link, which cannot be replaced; "+
				"have its owner pin the program and use xdp_chain.pinned instead: %w", iface, cur.ProgID, err)
		}
		return nil, fmt.Errorf("xdp_chain.take_over_attached: replace %s's program %d with %s: %w", iface, cur.ProgID, name, err)
	}
	if err := repin(prog, netlinkPin(pinDir, iface, name)); err != nil {
		return nil, err
	}
	return &Attachment{Iface: iface, Ifindex: cur.Index, Program: name, Mode: xdpMode(iface), Action: "took over", Via: "netlink"}, nil
}

// takeOverFlags checks that the foreign program's mode is one we can run
// in and that xdp_mode allows, and returns its XDP_FLAGS_* mode.
func takeOverFlags(iface string, mode XDPMode, cur ifaceXDP) (uint32, error) {
	flags, err := modeFlags(cur.Mode)
	if err != nil {
		return 0, fmt.Errorf("xdp_chain.take_over_attached: %s: %w", iface, err)
	}
	if (mode == XDPNative && cur.Mode != xdpAttachedDrv) || (mode == XDPGeneric && cur.Mode != xdpAttachedSKB) {
		return 0, fmt.Errorf("xdp_mode: %s, but the program to take over on %s runs in %s mode (a take-over keeps its mode)",
			mode, iface, attachedModeName(cur.Mode))
	}
	return flags, nil
}

// keepsMode refuses an update in place of our program running in mode
// attached when xdp_mode asks for the other one: an update keeps the
// mode, and switching it cannot be atomic (the kernel runs one mode at a
// time), so it takes a detach.
func keepsMode(iface string, mode XDPMode, attached uint8) error {
	if (mode == XDPNative && attached == xdpAttachedSKB) || (mode == XDPGeneric && attached == xdpAttachedDrv) {
		return fmt.Errorf("xdp_mode: %s, but our program on %s runs in %s mode and an update keeps it; "+
			"to change it run `edge-agent detach` (without -maps, the maps stay) and start the agent again", mode, iface, attachedModeName(attached))
	}
	return nil
}

func attachedModeName(m uint8) string {
	switch m {
	case xdpAttachedDrv:
		return "native"
	case xdpAttachedSKB:
		return "generic"
	case xdpAttachedHW:
		return "offload"
	}
	return "unknown"
}

// repin pins p at path, replacing whatever was pinned there. It pins a
// clone: Program.Pin on an already pinned object moves the old pin, and
// one program is pinned once per interface.
func repin(p *ebpf.Program, path string) error {
	c, err := p.Clone()
	if err != nil {
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	defer c.Close()
	_ = os.Remove(path)
	if err := c.Pin(path); err != nil {
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	return nil
}

// xdpMode reads back the mode the kernel attached in.
func xdpMode(iface string) string {
	nl, err := netlink.LinkByName(iface)
	if err != nil || nl.Attrs().Xdp == nil {
		return "unknown"
	}
	return attachedModeName(uint8(nl.Attrs().Xdp.AttachMode))
}

// Detach removes every pinned link under pinDir (detaching the programs),
// detaches the programs it attached through netlink when taking an
// interface over — putting the program it took over back where
// xdp_chain.restore_on_detach pinned it —, empties our slots in a root
// program's array (xdp_root) and, with maps true, removes the
// pinned maps as well: the node forgets premirror.
func Detach(pinDir string, withMaps bool) error {
	if _, err := os.Stat(pinDir); os.IsNotExist(err) && filepath.IsAbs(pinDir) {
		return nil // nothing pinned: nothing to detach
	}
	if err := checkPinDir(pinDir); err != nil {
		return err
	}
	links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	errs := detachNetlink(pinDir)
	rootErr := detachRoots(pinDir, "", "", "")
	if rootErr != nil {
		errs = append(errs, rootErr)
	}
	for _, p := range links {
		l, err := link.LoadPinnedLink(p, nil)
		if err == nil {
			// Detach even if a running agent still holds the link open.
			if err := l.Detach(); err != nil {
				errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
			}
			if err := l.Unpin(); err != nil {
				errs = append(errs, err)
			}
			l.Close()
		} else if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	if withMaps {
		if err := removePinned(pinDir, rootErr != nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removePinned removes the pinned state under pinDir; with keepRoots it
// keeps pinDir/root, where detachRoots left the records of slots it
// could not empty (without CAP_SYS_ADMIN it cannot tell whether a slot
// holds ours): removing them would leave the root's array calling our
// program with nothing left to ever empty its slot.
func removePinned(pinDir string, keepRoots bool) error {
	if !keepRoots {
		return os.RemoveAll(pinDir)
	}
	ents, err := os.ReadDir(pinDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.Name() == "root" {
			continue
		}
		errs = append(errs, os.RemoveAll(filepath.Join(pinDir, e.Name())))
	}
	return errors.Join(errs...)
}

// detachNetlink detaches (or swaps back) every program pinned under
// pinDir/netlink, each only if the interface still runs it.
func detachNetlink(pinDir string) []error {
	pins, _ := filepath.Glob(filepath.Join(pinDir, "netlink", "*"))
	var errs []error
	for _, p := range pins {
		base := filepath.Base(p)
		iface, prog, ok := cutProgSuffix(base)
		ours, err := ebpf.LoadPinnedProgram(p, nil)
		if !ok || err != nil {
			errs = append(errs, os.Remove(p))
			continue
		}
		rpin := restorePin(pinDir, iface, prog)
		if err := swapBack(ours, iface, rpin); err != nil {
			errs = append(errs, fmt.Errorf("detach %s from %s: %w", prog, iface, err))
		} else {
			errs = append(errs, os.Remove(p))
		}
		ours.Close()
		if err := os.Remove(rpin); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errs
}

// swapBack replaces ours on iface with the program pinned at rpin, or
// detaches it when nothing is pinned there. An interface that no longer
// runs ours is left alone.
func swapBack(ours *ebpf.Program, iface, rpin string) error {
	cur, err := readIfaceXDP(iface)
	if err != nil {
		return nil // the interface is gone, and our program with it
	}
	info, err := ours.Info()
	if err != nil {
		return err
	}
	if id, _ := info.ID(); cur.ProgID != uint32(id) {
		return nil
	}
	flags, err := modeFlags(cur.Mode)
	if err != nil {
		return err
	}
	fd := -1
	if prev, err := ebpf.LoadPinnedProgram(rpin, nil); err == nil {
		defer prev.Close()
		fd = prev.FD()
	}
	return xdpReplace(cur.Index, fd, ours.FD(), flags)
}

// cutProgSuffix splits a pin name "<iface>_<program>".
func cutProgSuffix(base string) (iface, prog string, ok bool) {
	for _, p := range []string{"router", "decap"} {
		if i, found := strings.CutSuffix(base, "_"+p); found && i != "" {
			return i, p, true
		}
	}
	return "", "", false
}

// checkPinDir refuses a pin dir Detach must not touch: one that is not a
// directory on a bpffs (Detach removes files there, and with withMaps the
// whole tree), or the bpffs mount itself (other programs' pins).
func checkPinDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("pin dir %q: must be an absolute path on a bpffs", dir)
	}
	dir = filepath.Clean(dir)
	if !onBPFFS(dir) {
		return fmt.Errorf("pin dir %s: not on a bpffs", dir)
	}
	if dir == "/" || !onBPFFS(filepath.Dir(dir)) {
		return fmt.Errorf("pin dir %s: is a bpffs mount itself, not the agent's directory on it", dir)
	}
	return nil
}
