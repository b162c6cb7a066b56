package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
	"github.com/premirror/premirror/internal/testbed/wan"
)

// Options tune a testbed beyond its topology.
type Options struct {
	// Logger receives progress and warnings; nil discards them.
	Logger *slog.Logger
	// NoSignalHandler disables the guard that closes the testbed on
	// SIGINT/SIGTERM/SIGHUP before letting the signal kill the process.
	// Programs that handle signals themselves (the demo) set it and call
	// Close.
	NoSignalHandler bool
	// Seed seeds the WAN's loss generators.
	Seed uint64
	// QueueLimit bounds each switch port's delay line (frames); default
	// 65536.
	QueueLimit int
}

// Iface is one host interface and its link to the WAN switch.
type Iface struct {
	// Name is the interface name in the host: "eth0" or "eth1".
	Name  string
	Index int
	MAC   net.HardwareAddr
	// V4 and V6 are the interface's addresses (/32 and /128).
	V4, V6 netip.Addr
	// GatewayMAC is the MAC of the switch port (the next hop for
	// everything the host sends out of this interface, e.g. the
	// destination MAC an XDP program writes before XDP_TX).
	GatewayMAC net.HardwareAddr
	// Port is the switch port's name (a key of wan.Switch stats).
	Port string
}

// Host is one client, edge or mirror: a network namespace with one or two
// uplinks to the WAN switch.
type Host struct {
	*NetNS
	// Name is the topology name ("eu-1", "edge1", "m1", …).
	Name string
	Role Role
	// Region is the client's region (empty for edges and mirrors).
	Region string
	// Ifaces are eth0 and, for a two-armed edge, eth1.
	Ifaces []Iface
}

// V4 returns the host's eth0 IPv4 address.
func (h *Host) V4() netip.Addr { return h.Ifaces[0].V4 }

// V6 returns the host's eth0 IPv6 address.
func (h *Host) V6() netip.Addr { return h.Ifaces[0].V6 }

// Iface returns the named interface.
func (h *Host) Iface(name string) (Iface, bool) {
	for _, i := range h.Ifaces {
		if i.Name == name {
			return i, true
		}
	}
	return Iface{}, false
}

// Testbed is a running topology: namespaces, veths, the WAN switch and the
// mirrors' services. Close removes all of it.
type Testbed struct {
	log    *slog.Logger
	plan   *plan
	hosts  []*Host
	byName map[string]*Host
	swNS   *NetNS
	sw     *wan.Switch
	pass   *ebpf.Program
	svcs   map[string]*MirrorService
	guard  bool

	closeMu sync.Mutex
	closing bool
	closed  chan struct{}
	err     error
}

// mac returns a locally administered MAC: 02:70:6d:<kind>:<n>.
func mac(kind byte, n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x70, 0x6d, kind, byte(n >> 8), byte(n)}
}

// New builds topo. It first sweeps leftovers of dead testbed processes.
// On error everything built so far is removed. ctx bounds the build.
func New(ctx context.Context, topo Topology, opts Options) (*Testbed, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	p, err := topo.plan()
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if n, err := Sweep(log); err != nil {
		log.Warn("sweeping leftover namespaces failed", "err", err)
	} else if n > 0 {
		log.Info("swept leftover namespaces", "count", n)
	}
	t := &Testbed{
		log: log, plan: p, byName: map[string]*Host{}, svcs: map[string]*MirrorService{},
		closed: make(chan struct{}), guard: !opts.NoSignalHandler,
	}
	if t.guard {
		guardAdd(t)
	}
	start := time.Now()
	if err := t.build(ctx, opts); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	log.Info("testbed built", "hosts", len(t.hosts), "took", time.Since(start))
	return t, nil
}

// ForTest builds topo for a test: it skips the test when not root, fails
// it on error, and closes the testbed in tb.Cleanup.
func ForTest(tb testing.TB, topo Topology, opts Options) *Testbed {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: the testbed needs root (network namespaces, veths, XDP)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t, err := New(ctx, topo, opts)
	if err != nil {
		tb.Fatalf("build testbed: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("close testbed: %v", err)
		}
	})
	return t
}

var hostSysctls = [][2]string{
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	{"net.ipv6.conf.all.router_solicitations", "0"},
	{"net.ipv6.conf.default.router_solicitations", "0"},
	{"net.ipv6.conf.all.accept_ra", "0"},
	{"net.ipv6.conf.default.accept_ra", "0"},
	// Loose reverse-path filtering: a mirror receives VIP packets from
	// any client on eth0 (after the edge's encapsulation is removed).
	{"net.ipv4.conf.all.rp_filter", "2"},
	{"net.ipv4.conf.default.rp_filter", "2"},
}

var edgeSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
	// A VIP packet the kernel forwards back out of eth0 (no XDP router
	// loaded) must not teach clients a redirect.
	{"net.ipv4.conf.all.send_redirects", "0"},
	{"net.ipv4.conf.default.send_redirects", "0"},
}

var switchSysctls = [][2]string{
	// The switch's veth ends carry no addresses and must not speak IPv6
	// themselves (link-local, MLD).
	{"net.ipv6.conf.all.disable_ipv6", "1"},
	{"net.ipv6.conf.default.disable_ipv6", "1"},
}

func (t *Testbed) build(ctx context.Context, opts Options) error {
	var err error
	if t.swNS, err = newNetNS("wan"); err != nil {
		return fmt.Errorf("switch namespace: %w", err)
	}
	if err := kernel.SetSysctls(t.swNS.h, switchSysctls); err != nil {
		return fmt.Errorf("switch namespace: %w", err)
	}
	var sites []wan.Site
	var ports []wan.Port
	var swIndexes []int
	portNo := 0
	for _, hp := range t.plan.hosts {
		if err := ctx.Err(); err != nil {
			return err
		}
		ns, err := newNetNS(hp.name)
		if err != nil {
			return fmt.Errorf("host %s: %w", hp.name, err)
		}
		h := &Host{NetNS: ns, Name: hp.name, Role: hp.role, Region: hp.region}
		t.hosts = append(t.hosts, h)
		t.byName[h.Name] = h
		sc := hostSysctls
		if hp.role == RoleEdge {
			sc = append(append([][2]string{}, hostSysctls...), edgeSysctls...)
		}
		if err := kernel.SetSysctls(ns.h, sc); err != nil {
			return fmt.Errorf("host %s: %w", hp.name, err)
		}
		mtu := t.plan.topo.MTU
		if hp.role == RoleClient {
			mtu = t.plan.topo.ClientMTU
		}
		for arm, ap := range hp.arms {
			portNo++
			ifname := "eth" + strconv.Itoa(arm)
			pname := "p" + strconv.Itoa(portNo)
			swMAC, hostMAC := mac(0, portNo), mac(1, portNo)
			swIdx, hIdx, err := kernel.CreateVeth(kernel.VethSpec{
				ANS: t.swNS.h, AName: pname, AMAC: swMAC,
				BNS: ns.h, BName: ifname, BMAC: hostMAC,
				MTU: mtu, Alias: LinkAliasPrefix + h.Name + "/" + ifname,
			})
			if err != nil {
				return fmt.Errorf("host %s: %w", hp.name, err)
			}
			ic := kernel.IfaceConfig{
				Name:      ifname,
				Addrs:     []netip.Prefix{netip.PrefixFrom(ap.v4, 32), netip.PrefixFrom(ap.v6, 128)},
				GatewayV4: GatewayV4, GatewayV6: GatewayV6, GatewayMAC: swMAC,
			}
			if arm == 0 {
				ic.Routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
			} else {
				ic.Routes = hp.arm1Routes
			}
			if err := kernel.ConfigureIface(ns.h, ic); err != nil {
				return fmt.Errorf("host %s: %w", hp.name, err)
			}
			// Complete checksums on the wire: the switch copies frames
			// verbatim and an XDP program may encapsulate them.
			if err := kernel.SetOffloads(ns.h, kernel.Offloads{GRO: false}, ifname); err != nil {
				return fmt.Errorf("host %s: %w", hp.name, err)
			}
			h.Ifaces = append(h.Ifaces, Iface{
				Name: ifname, Index: hIdx, MAC: hostMAC, V4: ap.v4, V6: ap.v6,
				GatewayMAC: swMAC, Port: pname,
			})
			ports = append(ports, wan.Port{
				Name: pname, Site: h.Name, MAC: swMAC, PeerMAC: hostMAC,
				Addrs: []netip.Addr{ap.v4, ap.v6},
			})
			swIndexes = append(swIndexes, swIdx)
		}
		sites = append(sites, wan.Site{Name: h.Name})
		if hp.role == RoleMirror {
			for _, v := range t.plan.topo.VIPs {
				bits := 32
				if v.Is6() {
					bits = 128
				}
				if err := kernel.AddAddr(ns.h, "lo", netip.PrefixFrom(v, bits)); err != nil {
					return fmt.Errorf("host %s: %w", hp.name, err)
				}
			}
		}
	}
	// VIP traffic enters the edge on its client-facing eth0.
	for i, hp := range t.plan.hosts {
		if hp.vipVia != "" {
			sites[i].VIPPort = t.byName[hp.vipVia].Ifaces[0].Port
		}
	}

	// Addresses and routes are in place, but the kernel finishes IPv6
	// address setup and link state asynchronously: wait for both, so the
	// first connect of a test cannot fail with "network is unreachable".
	for _, h := range t.hosts {
		var names []string
		var addrs []netip.Addr
		for _, i := range h.Ifaces {
			names = append(names, i.Name)
			addrs = append(addrs, i.V6)
		}
		if h.Role == RoleMirror {
			addrs = append(addrs, t.plan.topo.VIPs...)
		}
		if err := kernel.WaitOperUp(h.h, 10*time.Second, names...); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		if err := kernel.WaitLocal(h.h, 10*time.Second, addrs...); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	if t.pass, err = wan.PassProgram(); err != nil {
		return err
	}
	for i := range ports {
		io, err := wan.OpenKernelPort(t.swNS.h, ports[i].Name, swIndexes[i], t.pass)
		if err != nil {
			for j := 0; j < i; j++ {
				ports[j].IO.Close()
			}
			return err
		}
		ports[i].IO = io
	}
	t.sw, err = wan.New(wan.Config{
		Sites: sites, Ports: ports, VIPs: t.plan.topo.VIPs,
		QueueLimit: opts.QueueLimit, Seed: opts.Seed, Logger: t.log,
		// Ethernet header plus room for a VLAN tag and slack.
		MaxFrame: max(2048, t.plan.topo.MTU+64),
	})
	if err != nil {
		return fmt.Errorf("wan switch: %w", err)
	}
	for _, d := range t.plan.delays {
		if err := t.sw.SetPath(d.from, d.to, d.path); err != nil {
			return err
		}
	}
	if !t.plan.topo.Service.Disabled {
		for _, h := range t.hosts {
			if h.Role != RoleMirror {
				continue
			}
			if err := t.startService(h); err != nil {
				return fmt.Errorf("mirror %s service: %w", h.Name, err)
			}
		}
	}
	return nil
}

func (t *Testbed) startService(h *Host) error {
	var addrs []netip.Addr
	addrs = append(addrs, t.plan.topo.VIPs...)
	addrs = append(addrs, h.V4(), h.V6())
	var lns []net.Listener
	var pcs []net.PacketConn
	fail := func(err error) error {
		for _, l := range lns {
			l.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
		return err
	}
	for _, a := range addrs {
		for _, port := range t.plan.topo.Service.TCPPorts {
			l, err := h.Listen("tcp", netip.AddrPortFrom(a, port).String())
			if err != nil {
				return fail(err)
			}
			lns = append(lns, l)
		}
		for _, port := range t.plan.topo.Service.UDPPorts {
			pc, err := h.ListenPacket("udp", netip.AddrPortFrom(a, port).String())
			if err != nil {
				return fail(err)
			}
			pcs = append(pcs, pc)
		}
	}
	t.svcs[h.Name] = StartMirrorService(h.Name, lns, pcs, t.log)
	return nil
}

// Host returns the named host, or nil.
func (t *Testbed) Host(name string) *Host { return t.byName[name] }

// Hosts returns every host: clients (by region), edges, mirrors.
func (t *Testbed) Hosts() []*Host { return append([]*Host(nil), t.hosts...) }

// Clients returns the client hosts of region, in order.
func (t *Testbed) Clients(region string) []*Host {
	var out []*Host
	for _, h := range t.hosts {
		if h.Role == RoleClient && h.Region == region {
			out = append(out, h)
		}
	}
	return out
}

// Edges returns the edge hosts in topology order.
func (t *Testbed) Edges() []*Host { return t.byRole(RoleEdge) }

// Mirrors returns the mirror hosts in topology order.
func (t *Testbed) Mirrors() []*Host { return t.byRole(RoleMirror) }

func (t *Testbed) byRole(r Role) []*Host {
	var out []*Host
	for _, h := range t.hosts {
		if h.Role == r {
			out = append(out, h)
		}
	}
	return out
}

// Topology returns the topology with defaults and allocated addresses
// filled in.
func (t *Testbed) Topology() Topology { return t.plan.topo }

// VIPs returns the topology's VIPs.
func (t *Testbed) VIPs() []netip.Addr { return append([]netip.Addr(nil), t.plan.topo.VIPs...) }

// Switch returns the WAN switch (for counters and per-pair paths).
func (t *Testbed) Switch() *wan.Switch { return t.sw }

// SwitchNS returns the switch's namespace (its ports are p1, p2, …).
func (t *Testbed) SwitchNS() *NetNS { return t.swNS }

// Service returns the identity service of the named mirror, or nil.
func (t *Testbed) Service(mirror string) *MirrorService { return t.svcs[mirror] }

// RestartService starts the named mirror's identity service again after
// its Close (a service that died and came back), on the same sockets'
// addresses.
func (t *Testbed) RestartService(mirror string) error {
	h := t.byName[mirror]
	if h == nil || h.Role != RoleMirror {
		return fmt.Errorf("no mirror %q", mirror)
	}
	if s := t.svcs[mirror]; s != nil {
		if err := s.Close(); err != nil {
			return err
		}
	}
	return t.startService(h)
}

// SetDelay sets the one-way delay between a and b in both directions,
// keeping each direction's loss. a and b are host or region names (a
// region stands for all its clients). Frames already in flight keep their
// delay.
func (t *Testbed) SetDelay(a, b string, oneWay time.Duration) error {
	return t.setPaths(a, b, true, func(p wan.Path) wan.Path { p.Delay = oneWay; return p })
}

// SetLoss sets the loss probability between a and b in both directions,
// keeping the delays.
func (t *Testbed) SetLoss(a, b string, loss float64) error {
	return t.setPaths(a, b, true, func(p wan.Path) wan.Path { p.Loss = loss; return p })
}

// SetPath sets the path from → to only (one direction).
func (t *Testbed) SetPath(from, to string, p wan.Path) error {
	return t.setPaths(from, to, false, func(wan.Path) wan.Path { return p })
}

func (t *Testbed) setPaths(a, b string, both bool, f func(wan.Path) wan.Path) error {
	as, err := t.plan.expand(a)
	if err != nil {
		return fmt.Errorf("set path: %w", err)
	}
	bs, err := t.plan.expand(b)
	if err != nil {
		return fmt.Errorf("set path: %w", err)
	}
	set := func(x, y string) error {
		cur, err := t.sw.Path(x, y)
		if err != nil {
			return err
		}
		return t.sw.SetPath(x, y, f(cur))
	}
	for _, x := range as {
		for _, y := range bs {
			if err := set(x, y); err != nil {
				return err
			}
			if both {
				if err := set(y, x); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// WriteSwitchStats writes the switch's per-port counters as a table: one
// line per port with its host, frames and bytes each way, and the drops
// by reason (only reasons with a non-zero count).
func (t *Testbed) WriteSwitchStats(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tHOST\tRX FRAMES\tRX BYTES\tTX FRAMES\tTX BYTES\tQUEUED\tDROPS")
	// Overruns (frames the kernel dropped before the switch read them)
	// are listed among the drops.
	for _, st := range t.sw.Stats() {
		var drops []string
		if st.Overruns > 0 {
			drops = append(drops, fmt.Sprintf("overrun=%d", st.Overruns))
		}
		for r, n := range st.Drops {
			if n > 0 {
				drops = append(drops, fmt.Sprintf("%s=%d", wan.DropReason(r), n))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", st.Name, st.Site,
			st.RxFrames, st.RxBytes, st.TxFrames, st.TxBytes, st.Queued, strings.Join(drops, " "))
	}
	return tw.Flush()
}

// Close stops the mirrors' services and every process started in the
// hosts, stops the switch, and deletes every namespace (and with them the
// veths). It is idempotent; a second call returns the first one's result.
func (t *Testbed) Close() error { return t.close(false) }

func (t *Testbed) close(fromSignal bool) error {
	t.closeMu.Lock()
	if t.closing {
		t.closeMu.Unlock()
		if fromSignal {
			return nil // the closer in progress will finish
		}
		<-t.closed
		return t.err
	}
	t.closing = true
	t.closeMu.Unlock()

	var errs []error
	// Processes first: they may hold sockets in the namespaces.
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, h := range t.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.stopProcesses(5 * time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for name, s := range t.svcs {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("mirror %s service: %w", name, err))
		}
	}
	if t.sw != nil {
		if err := t.sw.Close(); err != nil {
			errs = append(errs, fmt.Errorf("wan switch: %w", err))
		}
	}
	if t.pass != nil {
		t.pass.Close()
	}
	for _, h := range t.hosts {
		if err := h.NetNS.Close(); err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
		}
	}
	if t.swNS != nil {
		if err := t.swNS.Close(); err != nil {
			errs = append(errs, fmt.Errorf("switch namespace: %w", err))
		}
	}
	t.err = errors.Join(errs...)
	close(t.closed)
	if t.guard && !fromSignal {
		guardRemove(t)
	}
	return t.err
}
