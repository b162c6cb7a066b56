package agent

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Netlink (not bpf_link) XDP attachment. A program attached this way by
// another tool can be replaced atomically — IFLA_XDP with
// XDP_FLAGS_REPLACE and IFLA_XDP_EXPECTED_FD (Linux 5.7+) swaps it only if
// it is still the expected program — which a bpf_link never allows: the
// kernel refuses to create a link over an attached program and to replace
// a link's program from netlink. vishvananda/netlink does not send
// IFLA_XDP_EXPECTED_FD, so the request is built here.

// IFLA_XDP_ATTACHED values: the mode a program runs in.
const (
	xdpAttachedNone  = 0
	xdpAttachedDrv   = 1
	xdpAttachedSKB   = 2
	xdpAttachedHW    = 3
	xdpAttachedMulti = 4
)

// ifaceXDP is what netlink reports about an interface's XDP program.
type ifaceXDP struct {
	Index  int
	ProgID uint32 // 0: none
	Mode   uint8  // xdpAttached*
}

func readIfaceXDP(iface string) (ifaceXDP, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return ifaceXDP{}, fmt.Errorf("interface %s: %w", iface, err)
	}
	st := ifaceXDP{Index: l.Attrs().Index}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		st.ProgID, st.Mode = x.ProgId, uint8(x.AttachMode)
	}
	return st, nil
}

// modeFlags are the XDP_FLAGS_* selecting the slot a program in mode runs
// in: a replacement must name the same one.
func modeFlags(mode uint8) (uint32, error) {
	switch mode {
	case xdpAttachedDrv:
		return unix.XDP_FLAGS_DRV_MODE, nil
	case xdpAttachedSKB:
		return unix.XDP_FLAGS_SKB_MODE, nil
	case xdpAttachedHW:
		return 0, errors.New("the program is offloaded to the NIC (hardware mode)")
	case xdpAttachedMulti:
		return 0, errors.New("programs run in several modes at once")
	}
	return 0, fmt.Errorf("attach mode %d", mode)
}

// errLinkAttached: the interface's program belongs to a bpf_link.
var errLinkAttached = errors.New("the program is attached through a bpf_link")

// xdpReplace atomically swaps the program on ifindex from expected to fd
// (-1: detach) in the mode given by flags. It fails, changing nothing, if
// the interface no longer runs expected.
func xdpReplace(ifindex, fd, expected int, flags uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	attrs := nl.NewRtAttr(unix.IFLA_XDP|unix.NLA_F_NESTED, nil)
	attrs.AddRtAttr(nl.IFLA_XDP_FD, nl.Uint32Attr(uint32(int32(fd))))
	attrs.AddRtAttr(nl.IFLA_XDP_FLAGS, nl.Uint32Attr(flags|unix.XDP_FLAGS_REPLACE))
	attrs.AddRtAttr(unix.IFLA_XDP_EXPECTED_FD, nl.Uint32Attr(uint32(int32(expected))))
	req.AddData(attrs)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w (%v)", errLinkAttached, err)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("the interface's program changed meanwhile (%w)", err)
	}
	return err
}
