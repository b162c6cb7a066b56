package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// ErrForeignXDP means an interface already runs an XDP program that is not
// one of our links; the agent will not replace it.
var ErrForeignXDP = errors.New("interface has a foreign XDP program")

// Attachment is one program attached to one interface through a pinned
// bpf_link, so it stays attached while the agent restarts.
type Attachment struct {
	Iface   string
	Program string // "router" or "decap"
	Mode    string // "native" or "generic"
	Action  string // "attached" (new link) or "updated" (took over a pinned link)
	link    link.Link
}

// Close drops our handle; the pinned link keeps the program attached.
func (a *Attachment) Close() error { return a.link.Close() }

func linkPin(pinDir, iface, prog string) string {
	// bpffs refuses dots in pin names.
	return filepath.Join(pinDir, "links", iface+"_"+prog)
}

// attachXDP attaches prog to iface, or, when a pinned link from a previous
// agent exists for that interface, atomically replaces the program it runs
// (link.Update): packets never see the interface without a program.
func attachXDP(prog *ebpf.Program, name, iface string, mode XDPMode, pinDir string) (*Attachment, error) {
	nl, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	idx := nl.Attrs().Index
	pin := linkPin(pinDir, iface, name)
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return nil, fmt.Errorf("create link pin dir: %w", err)
	}

	if _, err := os.Stat(pin); err == nil {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return nil, fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		info, ierr := l.Info()
		if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == idx {
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("update %s program on %s: %w", name, iface, err)
			}
			return &Attachment{Iface: iface, Program: name, Mode: xdpMode(iface), Action: "updated", link: l}, nil
		}
		// The interface was recreated: the old link is defunct.
		_ = l.Unpin()
		l.Close()
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
		if nl.Attrs().Xdp != nil && nl.Attrs().Xdp.Attached {
			return nil, fmt.Errorf("%w: %s (prog id %d); detach it first", ErrForeignXDP, iface, nl.Attrs().Xdp.ProgId)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s (%s mode): %w", name, iface, mode, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return &Attachment{Iface: iface, Program: name, Mode: xdpMode(iface), Action: "attached", link: l}, nil
}

// xdpMode reads back the mode the kernel attached in.
func xdpMode(iface string) string {
	nl, err := netlink.LinkByName(iface)
	if err != nil || nl.Attrs().Xdp == nil {
		return "unknown"
	}
	switch nl.Attrs().Xdp.AttachMode {
	case 1: // XDP_ATTACHED_DRV
		return "native"
	case 2: // XDP_ATTACHED_SKB
		return "generic"
	case 3:
		return "offload"
	}
	return "unknown"
}

// Detach removes every pinned link under pinDir (detaching the programs)
// and, with maps true, the pinned maps as well: the node forgets premirror.
func Detach(pinDir string, withMaps bool) error {
	links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	var errs []error
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
		if err := os.RemoveAll(pinDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
