package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// VethSpec describes one veth pair whose ends live in two namespaces.
type VethSpec struct {
	// A is the first end (for the testbed: the WAN switch's port).
	ANS   netns.NsHandle
	AName string
	AMAC  net.HardwareAddr
	// B is the second end (for the testbed: a host's eth0 or eth1).
	BNS   netns.NsHandle
	BName string
	BMAC  net.HardwareAddr
	MTU   int
	// Alias is set on both ends (IFLA_IFALIAS), so leak checks and
	// operators can recognise the testbed's links anywhere.
	Alias string
}

// CreateVeth creates the pair directly in its two namespaces (it never
// appears in the caller's namespace), sets the aliases and brings both ends
// up. It returns the ifindex of each end.
func CreateVeth(s VethSpec) (aIndex, bIndex int, err error) {
	ha, err := netlink.NewHandleAt(s.ANS, unix.NETLINK_ROUTE)
	if err != nil {
		return 0, 0, fmt.Errorf("netlink handle: %w", err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(s.BNS, unix.NETLINK_ROUTE)
	if err != nil {
		return 0, 0, fmt.Errorf("netlink handle: %w", err)
	}
	defer hb.Close()

	v := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         s.AName,
			HardwareAddr: s.AMAC,
			MTU:          s.MTU,
		},
		PeerName:         s.BName,
		PeerHardwareAddr: s.BMAC,
		PeerNamespace:    netlink.NsFd(int(s.BNS)),
	}
	if err := ha.LinkAdd(v); err != nil {
		return 0, 0, fmt.Errorf("add veth %s/%s: %w", s.AName, s.BName, err)
	}
	la, err := ha.LinkByName(s.AName)
	if err != nil {
		return 0, 0, fmt.Errorf("find %s: %w", s.AName, err)
	}
	lb, err := hb.LinkByName(s.BName)
	if err != nil {
		return 0, 0, fmt.Errorf("find %s: %w", s.BName, err)
	}
	if s.MTU > 0 {
		if err := hb.LinkSetMTU(lb, s.MTU); err != nil {
			return 0, 0, fmt.Errorf("set mtu of %s: %w", s.BName, err)
		}
	}
	for _, x := range []struct {
		h *netlink.Handle
		l netlink.Link
	}{{ha, la}, {hb, lb}} {
		if s.Alias != "" {
			if err := x.h.LinkSetAlias(x.l, s.Alias); err != nil {
				return 0, 0, fmt.Errorf("set alias of %s: %w", x.l.Attrs().Name, err)
			}
		}
		if err := x.h.LinkSetUp(x.l); err != nil {
			return 0, 0, fmt.Errorf("set %s up: %w", x.l.Attrs().Name, err)
		}
	}
	return la.Attrs().Index, lb.Attrs().Index, nil
}

// IfaceConfig is the L3 configuration of one host interface.
type IfaceConfig struct {
	Name string
	// Addrs are host addresses (/32 or /128 are typical); IPv6 ones are
	// added with IFA_F_NODAD so they are usable at once.
	Addrs []netip.Prefix
	// GatewayV4 and GatewayV6 are next hops reached on this link, with
	// permanent neighbour entries to GatewayMAC so no ARP/ND is needed.
	GatewayV4, GatewayV6 netip.Addr
	GatewayMAC           net.HardwareAddr
	// Routes are destinations sent via this interface's gateways (the
	// matching family); a zero-bits prefix is a default route.
	Routes []netip.Prefix
}

// ConfigureIface applies c inside h.
func ConfigureIface(h netns.NsHandle, c IfaceConfig) error {
	return withLink(h, c.Name, func(nh *netlink.Handle, l netlink.Link) error {
		return configureIface(nh, l, c)
	})
}

func configureIface(nh *netlink.Handle, l netlink.Link, c IfaceConfig) error {
	idx := l.Attrs().Index
	for _, p := range c.Addrs {
		a := &netlink.Addr{IPNet: prefixNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := nh.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", p, c.Name, err)
		}
	}
	for _, gw := range []netip.Addr{c.GatewayV4, c.GatewayV6} {
		if !gw.IsValid() {
			continue
		}
		fam := netlink.FAMILY_V4
		if gw.Is6() {
			fam = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       fam,
			State:        netlink.NUD_PERMANENT,
			IP:           net.IP(gw.AsSlice()),
			HardwareAddr: c.GatewayMAC,
		}
		if err := nh.NeighSet(n); err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", gw, c.Name, err)
		}
	}
	for _, dst := range c.Routes {
		gw := c.GatewayV4
		if dst.Addr().Is6() {
			gw = c.GatewayV6
		}
		if !gw.IsValid() {
			return fmt.Errorf("route %s on %s: no gateway of that family", dst, c.Name)
		}
		r := &netlink.Route{
			LinkIndex: idx,
			Dst:       prefixNet(dst),
			Gw:        net.IP(gw.AsSlice()),
		}
		if gw.Is4() {
			// The IPv4 gateway is link-local and on no subnet of ours.
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := nh.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s via %s on %s: %w", dst, gw, c.Name, err)
		}
	}
	return nil
}

// AddAddr adds a host address to the named link in h (for example a VIP on
// "lo"); IPv6 addresses get IFA_F_NODAD.
func AddAddr(h netns.NsHandle, link string, p netip.Prefix) error {
	return withLink(h, link, func(nh *netlink.Handle, l netlink.Link) error {
		a := &netlink.Addr{IPNet: prefixNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := nh.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", p, link, err)
		}
		return nil
	})
}

// DelAddr removes a host address from the named link in h.
func DelAddr(h netns.NsHandle, link string, p netip.Prefix) error {
	return withLink(h, link, func(nh *netlink.Handle, l netlink.Link) error {
		if err := nh.AddrDel(l, &netlink.Addr{IPNet: prefixNet(p)}); err != nil {
			return fmt.Errorf("delete %s from %s: %w", p, link, err)
		}
		return nil
	})
}

// withLink runs fn with a netlink handle in h and the named link.
func withLink(h netns.NsHandle, link string, fn func(*netlink.Handle, netlink.Link) error) error {
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s: %w", link, err)
	}
	return fn(nh, l)
}

// LinkInfo is what callers need to know about one link.
type LinkInfo struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	Alias string
}

// ListLinks returns the links of namespace h (the caller's own namespace
// when h is netns.None()).
func ListLinks(h netns.NsHandle) ([]LinkInfo, error) {
	var nh *netlink.Handle
	var err error
	if h.IsOpen() {
		nh, err = netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	} else {
		nh, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer nh.Close()
	ls, err := nh.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]LinkInfo, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		out = append(out, LinkInfo{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, Alias: a.Alias})
	}
	return out, nil
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// Ethtool legacy commands (include/uapi/linux/ethtool.h).
const (
	ethtoolSTXCSUM = 0x00000017 // set transmit checksum offload
	ethtoolSGRO    = 0x0000002c // set generic receive offload
	ethtoolGGRO    = 0x0000002b
)

type ethtoolValue struct {
	cmd  uint32
	data uint32
}

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte // the union is 24 bytes on 64-bit
}

func ethtool(fd int, ifname string, cmd, data uint32) (uint32, error) {
	v := ethtoolValue{cmd: cmd, data: data}
	var req ifreqData
	copy(req.name[:], ifname)
	req.data = uintptr(unsafe.Pointer(&v))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req)))
	if errno != 0 {
		return 0, errno
	}
	return v.data, nil
}

// Offloads is the offload state SetOffloads applies to a link.
type Offloads struct {
	// TxChecksum off makes the stack write complete checksums, so frames
	// copied by the WAN switch or rewritten by XDP stay valid (a veth
	// otherwise passes CHECKSUM_PARTIAL packets whose bytes carry only
	// the pseudo-header sum). Turning it off also turns TSO off.
	TxChecksum bool
	// GRO on a veth with an XDP program would coalesce frames into
	// super-packets before AF_PACKET sees them.
	GRO bool
}

// SetOffloads applies o to the named links inside h.
func SetOffloads(h netns.NsHandle, o Offloads, links ...string) error {
	return InNS(h, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("ethtool socket: %w", err)
		}
		defer unix.Close(fd)
		for _, l := range links {
			if _, err := ethtool(fd, l, ethtoolSTXCSUM, b2u(o.TxChecksum)); err != nil {
				return fmt.Errorf("ethtool tx-checksumming %s: %w", l, err)
			}
			if _, err := ethtool(fd, l, ethtoolSGRO, b2u(o.GRO)); err != nil {
				return fmt.Errorf("ethtool gro %s: %w", l, err)
			}
			got, err := ethtool(fd, l, ethtoolGGRO, 0)
			if err != nil {
				return fmt.Errorf("ethtool get gro %s: %w", l, err)
			}
			if (got != 0) != o.GRO {
				return fmt.Errorf("ethtool gro %s: kernel kept it %v: %w", l, got != 0, errors.ErrUnsupported)
			}
		}
		return nil
	})
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// WaitOperUp waits until each named link in h is operationally up
// (carrier on, as the kernel's linkwatch reports it asynchronously; under
// CPU load this can take hundreds of milliseconds). IPv6 does not use a
// link's routes before then: a connect fails with "network is
// unreachable".
func WaitOperUp(h netns.NsHandle, timeout time.Duration, links ...string) error {
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer nh.Close()
	deadline := time.Now().Add(timeout)
	for _, name := range links {
		for {
			l, err := nh.LinkByName(name)
			if err != nil {
				return fmt.Errorf("find %s: %w", name, err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still %s after %v", name, l.Attrs().OperState, timeout)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// WaitLocal waits until each address is a usable local address in h. An
// IPv6 address, even one added with IFA_F_NODAD, gets its local route
// only when the kernel's address work item runs, asynchronously after the
// netlink call returns; until then packets to it are not delivered
// locally (a TCP client sees "network is unreachable").
func WaitLocal(h netns.NsHandle, timeout time.Duration, addrs ...netip.Addr) error {
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer nh.Close()
	deadline := time.Now().Add(timeout)
	for _, a := range addrs {
		for {
			rs, err := nh.RouteGet(net.IP(a.AsSlice()))
			if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("address %s not local after %v (route %v, %v)", a, timeout, rs, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}
