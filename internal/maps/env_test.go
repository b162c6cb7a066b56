package maps

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/premirror/premirror/internal/testbed"
)

// nsEnv is a private network namespace with a fixed topology, and a
// goroutine locked into it that runs every prog.Run, so bpf_fib_lookup
// sees the routes and neighbours the test expects:
//
//	pm0 (veth, 10.99.0.1/24, fd99::1/64)   mirrors 10.99.0.10-13, fd99::10-13 (permanent neighbours)
//	pmr0 (veth, 10.98.0.1/24, fd98::1/64) mirror 10.98.0.10 (redirect target)
type nsEnv struct {
	ns      *testbed.NetNS
	pm0     int // ifindex
	pm0MAC  net.HardwareAddr
	pmr0    int
	pmr0MAC net.HardwareAddr
}

// Neighbour MAC of every mirror address the env knows: 02:00:00:00:<net>:<host>.
func mirrorMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	if a.Is4() {
		v4 := a.As4()
		return net.HardwareAddr{2, 0, 0, 0, v4[2], v4[3]}
	}
	return net.HardwareAddr{2, 0, 0, 6, b[1], b[15]}
}

var envMirrors = []string{
	"10.99.0.10", "10.99.0.11", "10.99.0.12", "10.99.0.13",
	"fd99::10", "fd99::11", "fd99::12", "fd99::13",
	"10.98.0.10", "fd98::10",
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: loads BPF programs and creates a network namespace")
	}
}

func newNSEnv(tb testing.TB) *nsEnv {
	tb.Helper()
	requireRoot(tb)
	env := &nsEnv{}
	env.ns = testbed.NewNetNS(tb)
	if err := env.ns.Do(env.setup); err != nil {
		tb.Fatal(err)
	}
	return env
}

// do runs f on a thread inside the namespace.
func (e *nsEnv) do(f func()) {
	if err := e.ns.Do(func() error { f(); return nil }); err != nil {
		panic(err) // only when the namespace is already closed
	}
}

func sysctl(path, v string) error { return os.WriteFile("/proc/sys/"+path, []byte(v), 0o644) }

func (e *nsEnv) setup() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pm0", MTU: 1500}, PeerName: "pm1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	// This kernel has no dummy module: a second veth pair stands in.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pmr0", MTU: 1500}, PeerName: "pmr1"}); err != nil {
		return fmt.Errorf("add second veth: %w", err)
	}
	for _, s := range []string{"ipv4/conf/all/forwarding", "ipv6/conf/all/forwarding", "ipv6/conf/default/accept_dad"} {
		v := "1"
		if s == "ipv6/conf/default/accept_dad" {
			v = "0"
		}
		if err := sysctl("net/"+s, v); err != nil {
			return err
		}
	}
	addrs := map[string][]string{"pm0": {"10.99.0.1/24", "fd99::1/64"}, "pmr0": {"10.98.0.1/24", "fd98::1/64"}}
	for name, as := range addrs {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		for _, a := range as {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = 0x02 // IFA_F_NODAD
			if err := netlink.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("addr %s: %w", a, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		switch name {
		case "pm0":
			e.pm0, e.pm0MAC = l.Attrs().Index, l.Attrs().HardwareAddr
		case "pmr0":
			e.pmr0, e.pmr0MAC = l.Attrs().Index, l.Attrs().HardwareAddr
		}
	}
	for _, name := range []string{"pm1", "pmr1"} {
		peer, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
	}
	for _, m := range envMirrors {
		a := netip.MustParseAddr(m)
		idx := e.pm0
		if a.Is4() && a.As4()[1] == 98 || a.Is6() && a.As16()[1] == 0x98 {
			idx = e.pmr0
		}
		n := &netlink.Neigh{LinkIndex: idx, IP: net.IP(a.AsSlice()), HardwareAddr: mirrorMAC(a), State: netlink.NUD_PERMANENT}
		if a.Is4() {
			n.Family = netlink.FAMILY_V4
		} else {
			n.Family = netlink.FAMILY_V6
		}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("neigh %s: %w", m, err)
		}
	}
	return nil
}

// xdpMD is struct xdp_md, the context BPF_PROG_TEST_RUN accepts.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run feeds one frame through prog as if received on ifindex (0: lo).
func (e *nsEnv) run(tb testing.TB, prog *ebpf.Program, frame []byte, ifindex int) (uint32, []byte) {
	tb.Helper()
	var ret uint32
	var out []byte
	var err error
	e.do(func() {
		opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
		if ifindex != 0 {
			opts.Context = xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
		}
		ret, err = prog.Run(opts)
		out = opts.DataOut
	})
	if err != nil {
		tb.Fatalf("prog.Run: %v", err)
	}
	return ret, out
}

// onOneCPU runs f with the calling (locked) thread bound to one CPU, then
// gives the thread its CPUs back. Per-CPU state must stay put across runs:
// the next-hop cache, and the benchmark harness's flow sequence.
func onOneCPU(f func() error) error {
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return err
	}
	for c := 0; c < len(old)*64; c++ {
		if old.IsSet(c) {
			one.Set(c)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return err
	}
	// The thread goes back to the runtime afterwards.
	defer unix.SchedSetaffinity(0, &old)
	return f()
}
