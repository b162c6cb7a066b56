package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/premirror/premirror/internal/debugserver"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	pmaps "github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/replicator"
)

// Agent runs one node's data plane: it loads and pins the programs,
// attaches them, keeps the maps equal to the desired state, and serves
// metrics and health.
type Agent struct {
	// Overrides, when set, is applied to every configuration read from
	// the file at a reload, as the command line's flags were to the
	// first (--pin-dir, --xdp-mode, --metrics-addr): a reload must not
	// read the flags' absence as a change.
	Overrides func(*Config)

	log  *slog.Logger
	path string // config file, for reloads ("" when given in memory)
	// stamp is the config file's stamp when New was given the
	// configuration read from it: Run compares with it, so an edit saved
	// while Start ran is applied at Run's first tick.
	stamp string

	// applyMu serializes the applies that start from the running
	// configuration (reloads, controller versions, the periodic resync,
	// interface changes): each reads a.cfg and writes it back, and one
	// that read it before another's write would undo that write.
	applyMu sync.Mutex
	// keepRouting: under a controller, until the first version (cached
	// or streamed) is applied, the routing state in the maps is the
	// previous agent's, kept: the file's state is empty there, and
	// applying it would withdraw every VIP while no controller answers.
	keepRouting atomic.Bool

	mu       sync.Mutex
	cfg      *Config
	compiled *Compiled
	// hosted is this host's verdict on the mirrors it serves, as of the
	// last apply (reported to the controller, exported as a metric).
	hosted   map[pmaps.MirrorID]hostedMirror
	version  string // hash of the applied desired state
	lastErr  error
	observed *Observed // what the router maps hold after the last reconcile; nil: read them
	// edgeSources are the registered edges' outer sources of the last
	// controller version; unlisted those this host's decap_sources
	// leaves out (checkEdgeSources).
	edgeSources, unlisted []edgeSource
	reportedOuter         []string // outer sources as last checked

	router *pmaps.Router
	decap  *pmaps.Decap
	cp     *controlPlane
	repl   *replicator.Node
	attach []*Attachment // guarded by mu once Run runs (refreshInterfaces)
	// missing names the configured interfaces ("<iface>_<program>") that
	// are gone: nothing steers their traffic until they return (healthz).
	missing map[string]bool
	netns   *netns.NsHandle // where Start ran: the interfaces, addresses and routes the agent manages
	reg     *prometheus.Registry
	metrics *metrics
	// svc checks the services of the resources this host's mirrors hold
	// (mirror hosts; nil on edges).
	svc *serviceChecker
}

// New prepares an agent; Run starts it.
func New(cfg *Config, path string, log *slog.Logger) *Agent {
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, path: path, stamp: fileStamp(path), log: log.With("node", cfg.Node), missing: map[string]bool{}}
	a.reg = prometheus.NewRegistry()
	a.metrics = newMetrics(a)
	a.reg.MustRegister(a.metrics)
	if cfg.Role != RoleEdge {
		// Created even when disabled: a reload may enable it.
		a.svc = newServiceChecker(cfg.ServiceCheck, func(r string) { a.metrics.serviceChecks.WithLabelValues(r).Inc() })
	}
	return a
}

// config is the running configuration (apply replaces it).
func (a *Agent) config() *Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// Registry is the agent's Prometheus registry (the replicator and probes
// register their collectors here too).
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Router returns the loaded router maps (nil in mirror role).
func (a *Agent) Router() *pmaps.Router { return a.router }

// Start loads, pins, attaches and applies the configured state. On return
// the data plane is forwarding.
func (a *Agent) Start() error {
	cfg := a.cfg
	if err := checkCapabilities(); err != nil {
		return err
	}
	if err := cfg.checkTLS(time.Now()); err != nil {
		return err
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return err
	}
	// The watchers subscribe to this namespace's links, addresses, routes
	// and neighbours, whichever thread Run is called on.
	h, err := netns.Get()
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	a.netns = &h
	if names := cfg.RouterInterfaceNames(); len(names) > 0 {
		r, err := pmaps.LoadRouter(cfg.MapsConfig(), pmaps.Options{PinDir: cfg.PinDir})
		if err != nil {
			return err
		}
		a.router = r
		if err := enableForwarding(); err != nil {
			a.log.Warn("ip forwarding not enabled: packets whose next hop is unresolved will be dropped by the stack", "err", err)
		}
	}
	if names := cfg.DecapInterfaceNames(); len(names) > 0 {
		d, err := pmaps.LoadDecap(pmaps.Options{PinDir: cfg.PinDir})
		if err != nil {
			a.Close()
			return err
		}
		a.decap = d
		if n := len(cfg.decapSources()); n > 0 {
			a.log.Info("decap takes tunnel packets only from decap_sources", "prefixes", n)
		} else {
			a.log.Warn("decap takes tunnel packets from any outer source; set decap_sources to the edges' addresses")
		}
	}
	// State first, then attach: a fresh attach never runs on empty maps.
	// Under a controller the routing state is the controller's: the maps
	// keep the previous agent's until a version (the cache's, below)
	// replaces it; only the node's own settings are applied now.
	a.keepRouting.Store(cfg.Controller != nil)
	if err := a.apply(cfg); err != nil {
		a.Close()
		return err
	}
	// The replicator comes before the cached controller state, whose
	// replication tasks set its dynamic mirrors.
	if r := cfg.Replication; r != nil {
		rc := r.config(cfg.Node, a.log.With("component", "replicator"))
		rc.Registerer = a.reg
		node, err := replicator.NewNode(rc)
		if err != nil {
			a.Close()
			return fmt.Errorf("replication: %w", err)
		}
		a.repl = node
	}
	cp, err := newControlPlane(a)
	if err != nil {
		a.Close()
		return err
	}
	a.cp = cp
	if err := cp.loadCache(); err != nil {
		a.log.Warn("cached controller state not applied; waiting for the controller", "err", err)
	}
	if a.router != nil {
		if err := a.attachRole(a.router.Program(), a.router, "router", cfg.RouterInterfaceNames()); err != nil {
			a.Close()
			return err
		}
	}
	if a.decap != nil {
		if err := a.attachRole(a.decap.Program(), a.decap, "decap", cfg.DecapInterfaceNames()); err != nil {
			a.Close()
			return err
		}
	}
	return nil
}

// attachRole fills the role's chain slot as xdp_chain says, then attaches
// its program to each interface: the peer is in place before our program
// first runs in front of it.
func (a *Agent) attachRole(prog *ebpf.Program, slot chainSlot, name string, ifaces []string) error {
	cfg := a.cfg
	if err := setupChain(a.log, cfg, slot, name, ifaces); err != nil {
		return err
	}
	if next, err := slot.Next(); err == nil && next != nil {
		info, _ := pmaps.DescribeProgram(next)
		next.Close()
		a.log.Info("xdp program chained after ours", "program", name, "next", info.String(), "xdp_chain", cfg.XDPChain.String())
	}
	if cfg.XDPRoot != nil {
		at, err := attachRoot(prog, name, cfg.PinDir, cfg.XDPRoot)
		if err != nil {
			return err
		}
		a.log.Info("xdp program ready behind the root program", "program", name, "prog_array", cfg.XDPRoot.ProgArray,
			"key", cfg.XDPRoot.Key, "action", at.Action)
		a.attach = append(a.attach, at)
		return nil
	}
	// Without xdp_root now: a slot of ours in a root's array is emptied.
	if err := detachRoots(cfg.PinDir, name, "", ""); err != nil {
		return err
	}
	for _, iface := range ifaces {
		at, err := attachXDP(prog, name, iface, cfg.XDPMode, cfg.PinDir, cfg.XDPChain, slot)
		if err != nil {
			return err
		}
		a.log.Info("xdp program ready", "iface", iface, "program", name, "mode", at.Mode, "action", at.Action, "via", at.Via)
		a.attach = append(a.attach, at)
	}
	return nil
}

// applyPlan is what one apply writes, worked out before the first map
// write: everything that can refuse a configuration (its compilation, the
// addresses read from the interfaces) refuses it while the data plane is
// untouched.
type applyPlan struct {
	cfg       *Config
	compiled  *Compiled
	keep      bool           // keepRouting: the router's settings only
	settings  pmaps.Settings // the router's (with a router)
	ports     map[netip.Addr]uint16
	probePort uint16
	hosted    map[pmaps.MirrorID]hostedMirror
}

// plan compiles cfg and reads what apply needs from the interfaces; it
// writes no map.
func (a *Agent) plan(cfg *Config, keep bool, log *slog.Logger) (*applyPlan, error) {
	compiled, err := cfg.State.Compile(cfg.MapsConfig())
	if err != nil {
		return nil, err
	}
	p := &applyPlan{cfg: cfg, compiled: compiled, keep: keep}
	if a.router != nil {
		if p.settings, err = a.settings(cfg, compiled); err != nil {
			return nil, err
		}
	}
	// Which mirrors this host serves and how its decap is set up. A host
	// terminates tunnels when it runs the decap program (decap_addresses
	// is refused on edges; set alone, without a data plane, in tests).
	p.hosted = hostedWithoutDecap(compiled, cfg.Node)
	if a.decap != nil || len(cfg.DecapAddresses) > 0 {
		addrs, err := decapAddresses(cfg)
		if err != nil {
			return nil, err
		}
		p.probePort = echoPort(cfg)
		p.ports, p.hosted = planDecap(addrs, uint16(cfg.DecapGUEPort), p.probePort, compiled, cfg.Node, log)
	}
	return p, nil
}

// echoPort is the port the decap program answers the edges' probes on
// (0: off).
func echoPort(cfg *Config) uint16 {
	if cfg.Probe.Disabled {
		return 0
	}
	return cfg.Probe.port()
}

// program writes p into the router's and the decap's maps.
func (a *Agent) program(p *applyPlan) (Changes, error) {
	var total Changes
	if a.router != nil {
		if err := a.router.SetNextHopTTL(p.cfg.NextHopTTL()); err != nil {
			return total, err
		}
		if p.keep {
			if err := a.applySettingsOnly(p.settings, &total); err != nil {
				return total, err
			}
		} else {
			a.mu.Lock()
			have := a.observed
			a.mu.Unlock()
			ch, obs, err := Reconcile(a.router, p.compiled, p.settings, have)
			a.mu.Lock()
			a.observed = obs // nil after a failure: the next reconcile reads the maps
			a.mu.Unlock()
			if err != nil {
				return total, fmt.Errorf("reconcile router maps: %w", err)
			}
			total.Written += ch.Written
			total.Deleted += ch.Deleted
			if p.cfg.Controller == nil {
				// Nobody reports the access counts: the counters of what
				// left the state go now (under a controller, after their last
				// report: controlPlane.accessCounts).
				if cs, err := a.router.Counters(); err == nil {
					a.pruneCounters(cs, p.compiled, nil)
				}
			}
		}
	}
	if err := a.applyDecap(p.cfg, p.ports, p.probePort, p.keep, &total); err != nil {
		return total, err
	}
	return total, nil
}

// apply compiles cfg and reconciles the maps with it; while keepRouting,
// only the node's settings (outer sources, next-hop TTL, decap endpoints
// missing from the map) are written. It is all or nothing: a
// configuration refused before the first write leaves the maps as they
// were, and a write that fails part-way puts them back on the running
// configuration (restore), or, for the first routing state after
// keepRouting, on what they held before it (keptImage).
func (a *Agent) apply(cfg *Config) error {
	start := time.Now()
	keep := a.keepRouting.Load()
	p, err := a.plan(cfg, keep, a.log)
	if err != nil {
		return err
	}
	a.mu.Lock()
	first := !keep && a.version == keptVersion
	a.mu.Unlock()
	var img *keptImage
	if first {
		if img, err = a.readKept(); err != nil {
			return err
		}
		// The reconcile starts from what was just read.
		a.mu.Lock()
		a.observed = img.router
		a.mu.Unlock()
	}
	total, err := a.program(p)
	if err != nil {
		a.metrics.reconcile(false, time.Since(start))
		a.restore(cfg, err, img)
		return err
	}
	a.metrics.reconcile(true, time.Since(start))
	version := stateVersion(cfg)
	if keep {
		version = keptVersion
	}
	a.mu.Lock()
	prevCfg := a.cfg
	a.cfg, a.compiled, a.version = cfg, p.compiled, version
	prev := a.hosted
	a.hosted = p.hosted
	a.mu.Unlock()
	logHosted(a.log, prev, p.hosted, p.compiled)
	a.noteOuterSources()
	a.checkEdgeSources(prevCfg, cfg)
	if a.svc != nil {
		a.svc.setTargets(serviceTargets(p.compiled, p.hosted))
	}
	a.log.Info("desired state applied", "version", a.version, "written", total.Written, "deleted", total.Deleted,
		"duration", time.Since(start).Round(time.Microsecond))
	return nil
}

// restore puts the maps back on the running configuration after applying
// failed stopped part-way: otherwise the router would forward on the
// refused state (role both writes the router's maps before the decap's)
// while the agent's version, health and reports, and a controller's NACK,
// say the old one, until the periodic resync. Nothing to restore at start
// or when the running configuration itself was re-applied (resync, an
// interface change): the next attempt writes toward the same state. Under
// a controller before its first version (keepRouting) the running
// configuration does not say the routing: the first version's apply read
// what the maps held (img), and they are put back on that, the previous
// agent's routing slot for slot; the agent then holds no copy of it
// (observed nil, as while keepRouting), and the controller's next version
// is a first one again. When restoring fails too, the maps stay as the
// failure left them and the error is logged: the periodic resync retries
// the running configuration, which under keepRouting writes the node's
// settings only, so the routing written stays until a version applies.
func (a *Agent) restore(failed *Config, cause error, img *keptImage) {
	a.mu.Lock()
	prev, keep, version := a.cfg, a.version == keptVersion, a.version
	a.mu.Unlock()
	if prev == nil || prev == failed {
		return
	}
	var p *applyPlan
	var err error
	if img != nil {
		p = img.plan(prev)
	} else {
		// Planned as when it was applied; its notes were logged then.
		p, err = a.plan(prev, keep, slog.New(slog.DiscardHandler))
	}
	if err == nil {
		_, err = a.program(p)
	}
	if img != nil {
		a.mu.Lock()
		a.observed = nil
		a.mu.Unlock()
	}
	if err != nil {
		a.log.Error("apply failed part-way and the running version was not restored; the periodic resync retries",
			"version", version, "cause", cause, "err", err)
		return
	}
	a.log.Warn("apply failed part-way; maps restored to the running version", "version", version, "cause", cause)
}

// keptImage is what the maps held before the first routing state applied
// after keepRouting: the previous agent's routing, the decap endpoints
// (whose GUE ports came from its mirrors) and the node's settings written
// since. It is read by that apply and dropped with it: with 1M client
// prefixes it is large.
type keptImage struct {
	router *Observed                   // nil without a router
	tables map[pmaps.RouteKey][]uint32 // each route's slots (Router.RouteTables: shared, read-only)
	decap  map[netip.Addr]uint16       // each decap endpoint's GUE port (nil without a decap program)
}

// readKept reads what the maps hold before the first routing state.
func (a *Agent) readKept() (*keptImage, error) {
	img := &keptImage{}
	if a.router != nil {
		o, err := ReadObserved(a.router)
		if err != nil {
			return nil, fmt.Errorf("read router maps: %w", err)
		}
		img.router, img.tables = o, a.router.RouteTables()
	}
	if a.decap != nil {
		es, err := a.decap.Endpoints()
		if err != nil {
			return nil, fmt.Errorf("read decap maps: %w", err)
		}
		img.decap = make(map[netip.Addr]uint16, len(es))
		for _, e := range es {
			img.decap[e.Addr] = e.GUEPort
		}
	}
	return img, nil
}

// plan writes the maps back to the image under cfg, the running
// configuration, which gives what a routing state does not change: the
// next-hop TTL, the decap sources (and so every endpoint's SourcesOnly,
// which the apply that kept the endpoints wrote from them) and the probe
// echo.
func (img *keptImage) plan(cfg *Config) *applyPlan {
	p := &applyPlan{cfg: cfg, ports: img.decap, probePort: echoPort(cfg)}
	if o := img.router; o != nil {
		c := &Compiled{DefaultRegion: o.Settings.DefaultRegion, Prefixes: o.Prefixes, Mirrors: o.Mirrors, VIPs: o.VIPs,
			Routes: make(map[pmaps.RouteKey]map[pmaps.MirrorID]uint32, len(o.Shares)), Tables: img.tables}
		for k, shares := range o.Shares {
			w := make(map[pmaps.MirrorID]uint32, len(shares))
			for id, n := range shares {
				w[id] = uint32(n)
			}
			c.Routes[k] = w
		}
		p.compiled, p.settings = c, o.Settings
	}
	return p
}

// keptVersion is the version (healthz, edge_desired_state_info) while the
// maps hold the previous agent's routing state (keepRouting).
const keptVersion = "kept"

// applySettingsOnly writes the router's node settings and nothing of the
// routing state (keepRouting). The default region, in pm_settings too, is
// routing state: the previous agent's stays (the file's state, empty
// under a controller, would set none, and the clients of no listed
// prefix would lose their region's routes).
func (a *Agent) applySettingsOnly(st pmaps.Settings, total *Changes) error {
	have, err := a.router.Settings()
	if err != nil {
		return fmt.Errorf("read router settings: %w", err)
	}
	a.mu.Lock()
	a.observed = nil // the first version reads what the maps hold
	a.mu.Unlock()
	st.DefaultRegion = have.DefaultRegion
	if have == st {
		return nil
	}
	if err := a.router.SetSettings(st); err != nil {
		return fmt.Errorf("router settings: %w", err)
	}
	total.Written++
	return nil
}

// applyDecap programs the decap endpoints and the probe echo (no-op
// without a decap program); keep adds missing endpoints only.
func (a *Agent) applyDecap(cfg *Config, ports map[netip.Addr]uint16, probePort uint16, keep bool, total *Changes) error {
	if a.decap == nil {
		return nil
	}
	if keep {
		// The GUE ports of the endpoints come from the controller's
		// mirrors: keep every endpoint as the map holds it, add the
		// missing ones.
		have, err := a.decap.Endpoints()
		if err != nil {
			return fmt.Errorf("reconcile decap maps: %w", err)
		}
		ports = maps.Clone(ports)
		for _, e := range have {
			ports[e.Addr] = e.GUEPort
		}
	}
	// The sources are listed before the endpoints check them and the
	// checks lifted before the list is emptied: a listed edge is never
	// refused in between.
	srcs := cfg.decapSources()
	setSources := func() error {
		w, d, err := a.decap.SetSources(srcs)
		total.Written += w
		total.Deleted += d
		if err != nil {
			return fmt.Errorf("decap sources: %w", err)
		}
		return nil
	}
	if len(srcs) > 0 {
		if err := setSources(); err != nil {
			return err
		}
	}
	ch, err := ReconcileDecap(a.decap, ports, len(srcs) > 0)
	if err != nil {
		return fmt.Errorf("reconcile decap maps: %w", err)
	}
	if h := testHookAfterDecapEndpoints; h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	if len(srcs) == 0 {
		if err := setSources(); err != nil {
			return err
		}
	}
	// The decap program answers the edges' probes itself, so they see
	// this host while its agent restarts (an upgrade would otherwise
	// read as a dead mirror and move its established flows away); the
	// agent's responder takes what is over the budget.
	rate := 0
	if probePort != 0 {
		rate = cfg.Probe.echoRate()
	}
	if err := a.decap.SetProbeEcho(probePort, rate); err != nil {
		return fmt.Errorf("decap probe echo: %w", err)
	}
	total.Written += ch.Written
	total.Deleted += ch.Deleted
	return nil
}

// testHookAfterDecapEndpoints, set by tests only, fails an apply after
// the decap endpoints were written: no map write after them can be made
// to fail once without failing the restore too (the probe echo is the
// same in both).
var testHookAfterDecapEndpoints func() error

// stateVersion hashes the desired state's content (JSON follows pointers
// and sorts map keys; %+v would print a pointer's address), so equal
// states get equal versions on every node and across reloads.
func stateVersion(cfg *Config) string {
	b, _ := json.Marshal(cfg.State) // strings, numbers, slices, maps: never fails
	h := sha256.Sum256(b)
	return fmt.Sprintf("%x", h[:6])
}

// settings builds the router's node settings, taking the outer sources
// from the router interfaces' addresses when not configured.
func (a *Agent) settings(cfg *Config, c *Compiled) (pmaps.Settings, error) {
	st := pmaps.Settings{DefaultRegion: c.DefaultRegion}
	if cfg.OuterSourceV4 != "" {
		st.OuterSourceV4 = netip.MustParseAddr(cfg.OuterSourceV4)
	}
	if cfg.OuterSourceV6 != "" {
		st.OuterSourceV6 = netip.MustParseAddr(cfg.OuterSourceV6)
	}
	if st.OuterSourceV4.IsValid() && st.OuterSourceV6.IsValid() {
		return st, nil
	}
	for _, iface := range cfg.RouterInterfaceNames() {
		addrs, err := ifaceAddrs(iface)
		if err != nil {
			return st, err
		}
		for _, ad := range addrs {
			if !st.OuterSourceV4.IsValid() && ad.Is4() {
				st.OuterSourceV4 = ad
			}
			if !st.OuterSourceV6.IsValid() && ad.Is6() && !ad.IsLinkLocalUnicast() {
				st.OuterSourceV6 = ad
			}
		}
	}
	if !st.OuterSourceV4.IsValid() && !st.OuterSourceV6.IsValid() {
		return st, errors.New("outer_source_v4/outer_source_v6: not set and no global address on the router interfaces")
	}
	return st, nil
}

func decapAddresses(cfg *Config) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range cfg.DecapAddresses {
		// Unmapped as mirror addresses are: ::ffff:192.0.2.1 is the
		// IPv4 address tunnel packets arrive for.
		out = append(out, netip.MustParseAddr(s).Unmap())
	}
	if len(out) > 0 {
		return out, nil
	}
	for _, iface := range cfg.DecapInterfaceNames() {
		addrs, err := ifaceAddrs(iface)
		if err != nil {
			return nil, err
		}
		for _, ad := range addrs {
			if !ad.IsLinkLocalUnicast() {
				out = append(out, ad)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("decap_addresses: not set and the decap interfaces have no address")
	}
	return out, nil
}

func ifaceAddrs(iface string) ([]netip.Addr, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", iface, err)
	}
	return usableAddrs(as), nil
}

// usableAddrs are the addresses of an interface a packet can use: one
// whose duplicate address detection failed is never assigned by the
// kernel, so it can be neither an outer source nor a decap endpoint. A
// tentative one (DAD still running) is kept: it becomes usable within
// seconds, and the address watcher applies the change.
func usableAddrs(as []netlink.Addr) []netip.Addr {
	var out []netip.Addr
	for _, ad := range as {
		if ad.Flags&unix.IFA_F_DADFAILED != 0 {
			continue
		}
		if a, ok := netip.AddrFromSlice(ad.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Reload re-reads the config file and applies it. A config that does not
// validate is refused and the running state kept, and so is one that
// changes what only a restart applies (Config.reloadable names it).
func (a *Agent) Reload() error {
	if a.path == "" {
		return nil
	}
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cfg, err := LoadConfig(a.path)
	if err == nil && a.Overrides != nil {
		a.Overrides(cfg)
		err = cfg.Validate()
	}
	if err != nil {
		a.setErr(err)
		return fmt.Errorf("reload refused, keeping the running state: %w", err)
	}
	a.mu.Lock()
	old := a.cfg
	a.mu.Unlock()
	if cfg.Controller != nil {
		// The controller owns the desired state; the file only tunes the agent.
		cfg.State = old.State
	}
	if err := cfg.reloadable(old); err != nil {
		a.setErr(err)
		return fmt.Errorf("reload refused, keeping the running state: %w", err)
	}
	if err := a.apply(cfg); err != nil {
		a.setErr(err)
		return err
	}
	a.reloadReplication(old, cfg)
	if a.svc != nil {
		a.svc.setConfig(cfg.ServiceCheck)
	}
	a.setErr(nil)
	return nil
}

func (a *Agent) setErr(err error) {
	a.mu.Lock()
	a.lastErr = err
	a.mu.Unlock()
}

// Run serves metrics and health and applies config changes (SIGHUP or a
// changed file) until ctx ends. Programs and maps stay pinned and attached
// on return: forwarding goes on while the agent is away.
func (a *Agent) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics_addr: listen %s: %w", a.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", a.healthz)
	mux.HandleFunc("/livez", a.livez)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a.log.Info("serving metrics and health", "addr", ln.Addr().String())
	if p := a.cfg.PprofAddr; p != "" {
		if _, err := debugserver.Start(ctx, p, "pprof_addr", a.log); err != nil {
			srv.Close()
			return err
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	if a.cp != nil {
		a.cp.run(runCtx, &wg)
	}
	ifaces := make(chan struct{}, 1)
	if a.router != nil || a.decap != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watchInterfaces(runCtx, ifaces)
		}()
	}
	if a.router != nil {
		w := newNexthopWatcher(a.router, a.netns, a.log.With("component", "nexthop"), a.metrics.nhBumps)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(runCtx)
		}()
	}
	if a.repl != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.repl.Run(runCtx); err != nil && runCtx.Err() == nil {
				a.log.Error("replicator stopped", "err", err)
			}
		}()
		r := a.config().Replication
		if _, err := serveVolumeAPI(runCtx, a.repl, r.WriteSocket, r.WriteUIDs, a.log); err != nil {
			return err
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	// Repair drift: now and then compare with what the maps really hold
	// (someone may have written them with bpftool).
	resync := time.NewTicker(5 * time.Minute)
	defer resync.Stop()
	last := a.stamp
	for {
		select {
		case <-ctx.Done():
			shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = srv.Shutdown(shut)
			cancel()
			return nil
		case <-hup:
			a.reload("sighup")
			last = fileStamp(a.path)
		case <-resync.C:
			a.applyMu.Lock()
			a.mu.Lock()
			a.observed = nil
			cfg := a.cfg
			a.mu.Unlock()
			if err := inNS(a.netns, func() error { return a.apply(cfg) }); err != nil {
				a.log.Error("periodic resync failed", "err", err)
			}
			a.applyMu.Unlock()
		case <-ifaces:
			if err := a.refreshInterfaces(); err != nil {
				a.log.Error("interface change not applied", "err", err)
			}
		case <-tick.C:
			if a.missingAny() {
				if err := a.refreshInterfaces(); err != nil {
					a.log.Debug("interface still missing", "err", err)
				}
			}
			if s := fileStamp(a.path); s != last {
				last = s
				a.reload("file changed")
			}
		}
	}
}

func (a *Agent) reload(why string) {
	// In Start's namespace, as refreshInterfaces: apply reads the
	// interfaces' addresses.
	if err := inNS(a.netns, a.Reload); err != nil {
		a.log.Error("reload failed", "why", why, "err", err)
	}
}

func fileStamp(path string) string {
	if path == "" {
		return ""
	}
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprint(st.ModTime().UnixNano(), st.Size())
}

// livez answers whether the agent is alive: it serves and its programs
// are attached. A refused reload does not make it fail: restarting the
// agent cannot fix a bad file, and a fresh agent refuses to start on one
// (its forwarding goes on meanwhile, but the kubelet's restarts would
// become a crash loop). That is what /healthz reports, for readiness and
// alerts.
//
// An interface that went away counts as attached here: the agent attaches
// again when it returns, and a new agent would fail to start without it.
func (a *Agent) livez(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	n := len(a.attach) + len(a.missing)
	a.mu.Unlock()
	if n == 0 {
		http.Error(w, "no program attached", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// healthz answers whether the agent runs the configuration it was given:
// 503 while no program is attached or after a refused reload (forwarding
// goes on with the last good state).
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	err, version := a.lastErr, a.version
	attached, missing := len(a.attach), slices.Sorted(maps.Keys(a.missing))
	a.mu.Unlock()
	if attached == 0 && len(missing) == 0 {
		http.Error(w, "no program attached", http.StatusServiceUnavailable)
		return
	}
	if len(missing) > 0 {
		http.Error(w, "configured interface gone, its program attaches again when it returns: "+strings.Join(missing, ", "),
			http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		http.Error(w, "last reload failed (still forwarding on version "+version+"): "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintf(w, "ok version %s\n", version)
}

// Close releases handles. Pinned maps and links stay, so the data plane
// keeps forwarding until the next agent takes over (or `detach`).
func (a *Agent) Close() error {
	var errs []error
	if a.cp != nil && a.cp.client != nil {
		errs = append(errs, a.cp.client.Close()) // the access journal's lock
	}
	a.mu.Lock()
	for _, at := range a.attach {
		errs = append(errs, at.Close())
	}
	a.attach = nil
	a.mu.Unlock()
	if a.repl != nil {
		errs = append(errs, a.repl.Close())
		a.repl = nil
	}
	if a.router != nil {
		errs = append(errs, a.router.Close())
		a.router = nil
	}
	if a.netns != nil {
		errs = append(errs, a.netns.Close())
		a.netns = nil
	}
	if a.decap != nil {
		errs = append(errs, a.decap.Close())
		a.decap = nil
	}
	return errors.Join(errs...)
}

// onBPFFS reports whether path is on a bpffs (statfs f_type BPF_FS_MAGIC).
func onBPFFS(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && uint32(st.Type) == 0xcafe4a11
}

// ensureBPFFS checks that pinDir is on a bpffs, mounting one at
// /sys/fs/bpf when nothing is mounted there.
func ensureBPFFS(pinDir string) error {
	if err := os.MkdirAll(pinDir, 0o700); err == nil {
		if onBPFFS(pinDir) {
			return nil
		}
	}
	// Mount one only where none is: a second bpffs over /sys/fs/bpf
	// would hide every pin of the first (other tools' and ours).
	if onBPFFS("/sys/fs/bpf") {
		return fmt.Errorf("pin_dir %s is not on a bpffs (one is mounted at /sys/fs/bpf)", pinDir)
	}
	if err := syscall.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("pin_dir %s is not on a bpffs and mounting /sys/fs/bpf failed: %w", pinDir, err)
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fmt.Errorf("pin_dir: %w", err)
	}
	if !onBPFFS(pinDir) {
		return fmt.Errorf("pin_dir %s is not on a bpffs", pinDir)
	}
	return nil
}

// enableForwarding turns on IPv4 and IPv6 forwarding in this namespace.
func enableForwarding() error {
	var errs []error
	for _, p := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
