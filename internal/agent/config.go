package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/yamlstrict"
)

// Role says which programs a node runs.
type Role string

// Roles.
const (
	RoleEdge   Role = "edge"   // XDP router on the interfaces
	RoleMirror Role = "mirror" // XDP decap on the interfaces
	RoleBoth   Role = "both"   // router on router_interfaces, decap on decap_interfaces
)

// XDPMode picks the attach mode.
type XDPMode string

// XDP attach modes.
const (
	XDPAuto    XDPMode = "auto"    // native, falling back to generic
	XDPNative  XDPMode = "native"  // driver mode only
	XDPGeneric XDPMode = "generic" // skb mode only
)

// Config is the agent's file configuration. The desired data-plane state
// (regions, mirrors, resources, routes) is static here; the controller can
// later supply it instead.
type Config struct {
	Node             string   `yaml:"node"`
	Role             Role     `yaml:"role"`
	Interfaces       []string `yaml:"interfaces"`        // edge or mirror role
	RouterInterfaces []string `yaml:"router_interfaces"` // role both
	DecapInterfaces  []string `yaml:"decap_interfaces"`  // role both
	XDPMode          XDPMode  `yaml:"xdp_mode"`
	PinDir           string   `yaml:"pin_dir"`
	MetricsAddr      string   `yaml:"metrics_addr"`
	// PprofAddr serves Go's runtime profiles when set (off by default;
	// internal/debugserver says why not on the metrics listener).
	PprofAddr      string   `yaml:"pprof_addr"`
	OuterSourceV4  string   `yaml:"outer_source_v4"`
	OuterSourceV6  string   `yaml:"outer_source_v6"`
	DecapAddresses []string `yaml:"decap_addresses"`
	// DecapGUEPort makes every decap address also accept GUE (direct
	// IP-in-UDP) on this UDP port: edges send it to mirrors configured
	// with encap gue and the same gue_port. 0 or absent: IPIP and IPv6
	// tunnels only. Roles mirror and both. A GUE mirror of the desired
	// state at one of this host's decap addresses sets that address's
	// port itself (decapPorts).
	DecapGUEPort int `yaml:"decap_gue_port"`
	// DecapSources are the outer sources the decap addresses take tunnel
	// packets from: addresses or prefixes (the edges' outer_source_v4/v6,
	// or their networks). Tunnel packets from any other source are
	// dropped and counted (drop_source), so whoever reaches a decap
	// address cannot inject inner packets. Empty or absent: any source.
	// Roles mirror and both.
	DecapSources []string `yaml:"decap_sources"`
	Limits       Limits   `yaml:"limits"`
	// NextHopCacheTTL is how long the router reuses a FIB lookup toward a
	// mirror (default maps.DefaultNextHopTTL; 0 turns the cache off). The
	// agent invalidates the cache on every route, neighbour and link
	// change, so the TTL only matters while no agent runs.
	NextHopCacheTTL *Duration `yaml:"nexthop_cache_ttl"`
	// XDPChain runs an operator's XDP program after ours on the traffic we
	// pass untouched; without it an interface that already runs a foreign
	// XDP program is refused (ErrForeignXDP).
	XDPChain *XDPChain `yaml:"xdp_chain"`
	// XDPRoot runs our program behind the operator's root XDP program
	// (through its program array) instead of on the interfaces.
	XDPRoot *XDPRoot `yaml:"xdp_root"`
	// Controller, when set, supplies the desired state (the static state
	// below is then ignored) and receives the agent's reports.
	Controller *ControllerCfg `yaml:"controller"`
	// Probe configures the edges' active probes to mirrors.
	Probe ProbeCfg `yaml:"probe"`
	// ServiceCheck configures a mirror host's checks that the services of
	// the resources its mirrors hold answer.
	ServiceCheck ServiceCheckCfg `yaml:"service_check"`
	// Replication runs the node's block replicator.
	Replication *Replication `yaml:"replication"`
	State       DesiredState `yaml:",inline"`
}

// Limits sizes the data-plane maps; zero fields keep maps.DefaultConfig.
type Limits struct {
	MaxVIPs       int `yaml:"max_vips"`
	MaxSessions   int `yaml:"max_sessions"`
	MaxAffinity   int `yaml:"max_affinity"`
	MaxPrefixesV4 int `yaml:"max_prefixes_v4"`
	MaxPrefixesV6 int `yaml:"max_prefixes_v6"`
	MaxRoutes     int `yaml:"max_routes"`
	MaxTables     int `yaml:"max_tables"`
	TableSlots    int `yaml:"table_slots"`
	MaxMirrors    int `yaml:"max_mirrors"`
	MaxCounters   int `yaml:"max_counters"`
	MaxFragments  int `yaml:"max_fragments"`
}

// DesiredState is what the data plane should hold.
type DesiredState struct {
	DefaultRegion string     `yaml:"default_region"`
	Regions       []Region   `yaml:"regions"`
	Mirrors       []Mirror   `yaml:"mirrors"`
	Resources     []Resource `yaml:"resources"`
}

// Region is a set of client prefixes.
type Region struct {
	Name     string   `yaml:"name"`
	ID       uint32   `yaml:"id"`
	Prefixes []string `yaml:"prefixes"`
}

// Mirror is a tunnel endpoint that serves resources.
type Mirror struct {
	Name    string `yaml:"name"`
	ID      uint32 `yaml:"id"`
	Address string `yaml:"address"`
	State   string `yaml:"state"` // active (default), draining, down
	// Encap is how edges carry packets to the mirror: ipip (default:
	// IPIP / IPv6-in-IPv6 by the address's family) or gue (IP in UDP to
	// GUEPort, with a per-flow source port, for mirror NICs that spread
	// load over RX queues by outer headers only).
	Encap   string `yaml:"encap,omitempty"`
	GUEPort int    `yaml:"gue_port,omitempty"` // required with encap gue; the mirror's decap_gue_port
	// Node is the host whose agent reports on the mirror and Resources
	// the IDs of the resources it holds a copy of, whose services that
	// host checks (set by the controller's desired state; a static file
	// has no reports).
	Node      string   `yaml:"-"`
	Resources []uint32 `yaml:"-"`
}

// Resource is a mirrored service and its VIPs.
type Resource struct {
	Name          string    `yaml:"name"`
	ID            uint32    `yaml:"id"`
	VIPs          []string  `yaml:"vips"` // "192.0.2.1:80/tcp", "[2001:db8::1]:443/udp"
	Affinity      *Affinity `yaml:"affinity"`
	HashNoSrcPort bool      `yaml:"hash_no_src_port"`
	// Routes: region name ("*" for every other region) → mirror name → weight.
	Routes map[string]map[string]uint32 `yaml:"routes"`
}

// Affinity makes a user's new flows stick to its mirror.
type Affinity struct {
	Timeout  Duration `yaml:"timeout"`
	PrefixV4 int      `yaml:"prefix_v4"`
	PrefixV6 int      `yaml:"prefix_v6"`
}

// Duration is a time.Duration that YAML reads as "30m".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

func parseDuration(n *yaml.Node) (time.Duration, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, errors.New("want a duration such as 30s or 1h30m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", n.Value, err)
	}
	return v, nil
}

// checkDurations names the field of a bad duration, which the decoder's
// error from UnmarshalYAML cannot.
func checkDurations(path string, n *yaml.Node, t reflect.Type) error {
	if t != reflect.TypeFor[Duration]() || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null") {
		return nil
	}
	if _, err := parseDuration(n); err != nil {
		return fmt.Errorf("%s: %w (line %d)", path, err, n.Line)
	}
	return nil
}

// MarshalYAML writes a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Defaults applied by Load.
const (
	DefaultMetricsAddr = "127.0.0.1:9450"
)

// LoadConfig reads and validates a YAML file. Unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes and validates a YAML document.
func ParseConfig(b []byte) (*Config, error) {
	c := &Config{}
	// First as a node: what the decoder would truncate or report without
	// the field's name is refused naming it.
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err == nil {
		if err := yamlstrict.Check(&doc, c, checkDurations); err != nil {
			return nil, fmt.Errorf("parse config: %w", err)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	// A second document would be ignored: refuse it rather than run on
	// half of what the file says.
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, errors.New("parse config: more than one YAML document (---): the agent reads one")
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.XDPMode == "" {
		c.XDPMode = XDPAuto
	}
	if c.PinDir == "" {
		c.PinDir = maps.DefaultPinDir
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = DefaultMetricsAddr
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
}

// reloadable reports why a reload from old to c cannot be applied to
// the running agent, naming the field; nil when it can. Apply re-reads
// the desired state, outer sources, decap addresses and GUE port, the
// next-hop TTL, the service checks, the probe shortlist and the
// controller's utilization; what the agent set up once at start (maps,
// attachments, listeners, the controller session, the probe scheduler
// and responder) stays as it was, so a change to it is refused rather
// than recorded as applied while the old setting runs on. Fields added
// later are restart-only until listed here.
func (c *Config) reloadable(old *Config) error {
	if old.MapsConfig() != c.MapsConfig() {
		return errors.New("limits: changes only with a restart (pinned maps keep their size)")
	}
	if err := restartOnly("", *old, *c, "limits", "outer_source_v4", "outer_source_v6", "decap_addresses", "decap_gue_port", "decap_sources",
		"nexthop_cache_ttl", "service_check", "probe", "controller", "replication", ""); err != nil {
		return err
	}
	if err := restartOnly("probe", old.Probe, c.Probe, "shortlist"); err != nil {
		return err
	}
	switch {
	case (old.Controller == nil) != (c.Controller == nil):
		return errors.New("controller: adding or removing the controller section needs a restart")
	case c.Controller != nil:
		if err := restartOnly("controller", *old.Controller, *c.Controller, "utilization"); err != nil {
			return err
		}
	}
	return c.Replication.reloadable(old.Replication)
}

// checkTLS verifies the certificate files of the controller session and
// the replicator (pki.Files.Check) before Start touches anything: an
// expired certificate or one another CA signed fails the start naming
// its field, rather than every handshake after the maps were written.
func (c *Config) checkTLS(now time.Time) error {
	if c.Controller != nil {
		if err := c.Controller.TLS.Files().Check(now); err != nil {
			return fmt.Errorf("controller.tls: %w", err)
		}
		// The controller registers an agent only under its certificate's
		// name: any other node name is refused at every attempt.
		cn, err := pki.CommonName(c.Controller.TLS.Cert)
		if err != nil {
			return fmt.Errorf("controller.tls.cert: %w", err)
		}
		if cn != c.Node {
			return fmt.Errorf("controller.tls.cert: %s is for %q, not node %q (set node, or issue `controller certs --agents %s`)",
				c.Controller.TLS.Cert, cn, c.Node, c.Node)
		}
	}
	if r := c.Replication; r != nil {
		if err := r.TLS.Files().Check(now); err != nil {
			return fmt.Errorf("replication.tls: %w", err)
		}
	}
	return nil
}

// MapsConfig is the data-plane sizing of c.
func (c *Config) MapsConfig() maps.Config {
	m := maps.DefaultConfig()
	l := c.Limits
	set := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	set(&m.MaxVIPs, l.MaxVIPs)
	set(&m.MaxSessions, l.MaxSessions)
	set(&m.MaxAffinity, l.MaxAffinity)
	set(&m.MaxPrefixesV4, l.MaxPrefixesV4)
	set(&m.MaxPrefixesV6, l.MaxPrefixesV6)
	set(&m.MaxRoutes, l.MaxRoutes)
	set(&m.MaxTables, l.MaxTables)
	set(&m.TableSlots, l.TableSlots)
	set(&m.MaxMirrors, l.MaxMirrors)
	set(&m.MaxCounters, l.MaxCounters)
	set(&m.MaxFragments, l.MaxFragments)
	return m
}

// NextHopTTL is the router's next-hop cache TTL.
func (c *Config) NextHopTTL() time.Duration {
	if c.NextHopCacheTTL == nil {
		return maps.DefaultNextHopTTL
	}
	return time.Duration(*c.NextHopCacheTTL)
}

// RouterInterfaceNames are the interfaces that get the router.
func (c *Config) RouterInterfaceNames() []string {
	switch c.Role {
	case RoleEdge:
		return c.Interfaces
	case RoleBoth:
		return c.RouterInterfaces
	}
	return nil
}

// DecapInterfaceNames are the interfaces that get the decap program.
func (c *Config) DecapInterfaceNames() []string {
	switch c.Role {
	case RoleMirror:
		return c.Interfaces
	case RoleBoth:
		return c.DecapInterfaces
	}
	return nil
}

// Validate checks every field and names the first bad one.
func (c *Config) Validate() error {
	switch c.Role {
	case RoleEdge, RoleMirror:
		if len(c.Interfaces) == 0 {
			return errors.New("interfaces: at least one interface is required")
		}
		if len(c.RouterInterfaces)+len(c.DecapInterfaces) > 0 {
			return fmt.Errorf("router_interfaces/decap_interfaces: only for role both; role %s uses interfaces", c.Role)
		}
	case RoleBoth:
		if len(c.RouterInterfaces) == 0 || len(c.DecapInterfaces) == 0 {
			return errors.New("router_interfaces, decap_interfaces: role both needs both lists")
		}
		for _, r := range c.RouterInterfaces {
			for _, d := range c.DecapInterfaces {
				if r == d {
					return fmt.Errorf("decap_interfaces: %s also runs the router (one XDP program per interface)", r)
				}
			}
		}
	case "":
		return errors.New("role: missing (edge, mirror or both)")
	default:
		return fmt.Errorf("role: %q is not edge, mirror or both", c.Role)
	}
	for _, l := range []struct {
		field string
		names []string
	}{{"interfaces", c.Interfaces}, {"router_interfaces", c.RouterInterfaces}, {"decap_interfaces", c.DecapInterfaces}} {
		for i, name := range l.names {
			if !validIfaceName(name) {
				return fmt.Errorf("%s[%d]: %q is not an interface name", l.field, i, name)
			}
			if j := slices.Index(l.names, name); j != i {
				return fmt.Errorf("%s[%d]: %s listed twice (also %s[%d])", l.field, i, name, l.field, j)
			}
		}
	}
	if err := checkHostPort(c.MetricsAddr, true); err != nil {
		return fmt.Errorf("metrics_addr: %w", err)
	}
	if c.PprofAddr != "" {
		if err := checkHostPort(c.PprofAddr, true); err != nil {
			return fmt.Errorf("pprof_addr: %w", err)
		}
	}
	switch c.XDPMode {
	case XDPAuto, XDPNative, XDPGeneric:
	default:
		return fmt.Errorf("xdp_mode: %q is not auto, native or generic", c.XDPMode)
	}
	if err := c.XDPRoot.validate(c); err != nil {
		return err
	}
	if err := c.XDPChain.validate(); err != nil {
		return err
	}
	if !strings.HasPrefix(c.PinDir, "/") {
		return fmt.Errorf("pin_dir: %q must be an absolute path on a bpffs", c.PinDir)
	}
	for _, f := range []struct{ name, v string }{{"outer_source_v4", c.OuterSourceV4}, {"outer_source_v6", c.OuterSourceV6}} {
		if f.v == "" {
			continue
		}
		a, err := netip.ParseAddr(f.v)
		if err == nil {
			_, err = unicast(a)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		if (f.name == "outer_source_v4") != a.Is4() || a.Is4In6() {
			return fmt.Errorf("%s: %s is the wrong family", f.name, a)
		}
	}
	for i, s := range c.DecapAddresses {
		if _, err := parseUnicast(s); err != nil {
			return fmt.Errorf("decap_addresses[%d]: %w", i, err)
		}
	}
	if len(c.DecapAddresses) > 0 && c.Role == RoleEdge {
		return errors.New("decap_addresses: only for role mirror or both (an edge runs no decap program)")
	}
	for i, s := range c.DecapSources {
		if _, err := parseSource(s); err != nil {
			return fmt.Errorf("decap_sources[%d]: %w", i, err)
		}
	}
	if len(c.DecapSources) > 0 && c.Role == RoleEdge {
		return errors.New("decap_sources: only for role mirror or both (an edge runs no decap program)")
	}
	if n := len(c.decapSources()); n > maps.MaxDecapSources {
		return fmt.Errorf("decap_sources: %d prefixes, the data plane holds %d", n, maps.MaxDecapSources)
	}
	if c.DecapGUEPort != 0 {
		if c.DecapGUEPort < 1 || c.DecapGUEPort > 65535 {
			return fmt.Errorf("decap_gue_port: %d out of [1, 65535]", c.DecapGUEPort)
		}
		if c.Role == RoleEdge {
			return errors.New("decap_gue_port: only for role mirror or both (an edge runs no decap program)")
		}
		if !c.Probe.Disabled && uint16(c.DecapGUEPort) == c.Probe.port() {
			return fmt.Errorf("decap_gue_port: %d is also probe.port: probes would be taken for GUE", c.DecapGUEPort)
		}
	}
	if ttl := c.NextHopTTL(); ttl < 0 || ttl > maps.MaxNextHopTTL {
		return fmt.Errorf("nexthop_cache_ttl: %v out of [0, %v]", ttl, maps.MaxNextHopTTL)
	}
	if err := c.MapsConfig().Validate(); err != nil {
		return fmt.Errorf("limits.%w", err)
	}
	if c.Controller != nil {
		if err := c.Controller.validate(); err != nil {
			return err
		}
	}
	if c.Probe.ActiveInterval < 0 {
		return errors.New("probe.active_interval: negative")
	}
	if c.Probe.Interval < 0 {
		return errors.New("probe.interval: negative")
	}
	if c.Probe.Shortlist < 0 {
		return errors.New("probe.shortlist: negative")
	}
	if c.Probe.EchoRate < 0 {
		return errors.New("probe.echo_rate: negative (0 takes the default)")
	}
	if c.Probe.SurveyInterval < 0 {
		return errors.New("probe.survey_interval: negative")
	}
	if err := c.ServiceCheck.validate(); err != nil {
		return err
	}
	if c.Replication != nil {
		if err := c.Replication.validate(); err != nil {
			return err
		}
	}
	if _, err := c.State.Compile(c.MapsConfig()); err != nil {
		return err
	}
	return nil
}

// validIfaceName is the kernel's rule (dev_valid_name): 1 to 15 bytes,
// not . or .., no '/', ':' or white space; control bytes (NUL would cut
// the name short in netlink) are refused too.
func validIfaceName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// checkHostPort checks a host:port address before anything listens or
// dials: a port out of range or missing fails at start, naming the
// field, rather than after the programs are attached. Port 0 (any free
// port) is for listen addresses only.
func checkHostPort(s string, listen bool) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case port == "":
		return fmt.Errorf("%q: port missing", s)
	case err == nil && n == 0 && !listen:
		return fmt.Errorf("%q: port 0", s)
	case err == nil:
		return nil
	}
	// A service name (https) is looked up in /etc/services, never on the
	// network.
	if _, lerr := net.LookupPort("tcp", port); lerr != nil {
		return fmt.Errorf("%q: port %q is not a number in [1, 65535] or a known service", s, port)
	}
	return nil
}

// ParseVIP parses "addr:port/proto" ("[v6]:port/proto" for IPv6).
func ParseVIP(s string) (maps.VIP, error) {
	hostport, proto, ok := strings.Cut(s, "/")
	if !ok {
		return maps.VIP{}, fmt.Errorf("%q: want address:port/tcp or /udp", s)
	}
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return maps.VIP{}, fmt.Errorf("%q: %w", s, err)
	}
	p, err := maps.ParseProto(proto)
	if err != nil {
		return maps.VIP{}, fmt.Errorf("%q: %w", s, err)
	}
	if ap.Port() == 0 {
		return maps.VIP{}, fmt.Errorf("%q: port 0", s)
	}
	a, err := unicast(ap.Addr())
	if err != nil {
		return maps.VIP{}, fmt.Errorf("%q: %w", s, err)
	}
	return maps.VIP{Addr: a, Port: ap.Port(), Proto: p}, nil
}

// parseSource reads a decap source: a prefix (no host bits, IPv4 written
// as IPv4: the trie keys IPv4 as IPv4-mapped, so ::ffff:10.0.0.0/104
// would be 10.0.0.0/8) or one unicast address (a /32 or /128).
func parseSource(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := parseUnicast(s)
		return netip.PrefixFrom(a, a.BitLen()), err
	}
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4In6() {
		return p, fmt.Errorf("%s: write an IPv4 prefix as IPv4", s)
	}
	return clientPrefix(s)
}

// decapSources are DecapSources parsed, without repeats; nil when empty
// (any source). Validate has refused what does not parse.
func (c *Config) decapSources() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.DecapSources {
		if p, err := parseSource(s); err == nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// parseUnicast parses an address packets are sent to or from (see
// unicast).
func parseUnicast(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, err
	}
	return unicast(a)
}

// unicast refuses what the data plane cannot key or send to: a zone
// (maps hold bare addresses, so fe80::1%a and fe80::1%b would be one
// key), the unspecified address, multicast and the IPv4 broadcast. An
// IPv4-mapped IPv6 address is returned as the IPv4 address packets carry.
func unicast(a netip.Addr) (netip.Addr, error) {
	switch a = a.Unmap(); {
	case a.Zone() != "":
		return a, fmt.Errorf("%s: an address with a zone (%%%s) is not for the data plane", a, a.Zone())
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return a, fmt.Errorf("%s: not a unicast address", a)
	}
	return a, nil
}

// clientPrefix parses a region's client prefix: no host bits, and not an
// IPv4-mapped IPv6 prefix, which no packet matches (IPv4 clients are
// looked up as IPv4).
func clientPrefix(s string) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return pf, err
	}
	if pf.Masked() != pf {
		return pf, fmt.Errorf("%s has host bits set (did you mean %s?)", pf, pf.Masked())
	}
	if pf.Addr().Is4In6() && pf.Bits() >= 96 {
		return pf, fmt.Errorf("%s is IPv4-mapped and matches no packet (did you mean %s?)", pf,
			netip.PrefixFrom(pf.Addr().Unmap(), pf.Bits()-96))
	}
	return pf, nil
}

// Compiled is a DesiredState resolved to data-plane IDs.
type Compiled struct {
	DefaultRegion maps.RegionID
	Prefixes      map[netip.Prefix]maps.RegionID
	Mirrors       map[maps.MirrorID]maps.Mirror
	VIPs          map[maps.VIP]maps.VIPOptions
	Routes        map[maps.RouteKey]map[maps.MirrorID]uint32
	// Tables, when it has a route of Routes, is that route's table to
	// write slot for slot instead of building one from the weights
	// (which give its shares): a restore puts back the tables a previous
	// agent left, and chash.Build's layout depends on the table it starts
	// from, so the weights alone would move flows. Compile sets none.
	Tables map[maps.RouteKey][]uint32
	// Names for metrics and inspect.
	RegionNames   map[maps.RegionID]string
	MirrorNames   map[maps.MirrorID]string
	ResourceNames map[maps.ResourceID]string
	// MirrorNodes is the host of each mirror that names one, and
	// MirrorResources the resources each holds a copy of (both from the
	// controller).
	MirrorNodes     map[maps.MirrorID]string
	MirrorResources map[maps.MirrorID][]maps.ResourceID
}

// Compile validates names, IDs, prefixes and routes and resolves them.
func (s *DesiredState) Compile(lim maps.Config) (*Compiled, error) {
	out := &Compiled{
		Prefixes:        map[netip.Prefix]maps.RegionID{},
		Mirrors:         map[maps.MirrorID]maps.Mirror{},
		VIPs:            map[maps.VIP]maps.VIPOptions{},
		Routes:          map[maps.RouteKey]map[maps.MirrorID]uint32{},
		RegionNames:     map[maps.RegionID]string{},
		MirrorNames:     map[maps.MirrorID]string{},
		ResourceNames:   map[maps.ResourceID]string{},
		MirrorNodes:     map[maps.MirrorID]string{},
		MirrorResources: map[maps.MirrorID][]maps.ResourceID{},
	}
	regions := map[string]maps.RegionID{}
	for i, r := range s.Regions {
		f := fmt.Sprintf("regions[%d]", i)
		if r.Name == "" || r.Name == "*" {
			return nil, fmt.Errorf("%s.name: %q is not a region name", f, r.Name)
		}
		if r.ID == 0 {
			return nil, fmt.Errorf("%s.id: must be > 0 (0 is the wildcard region)", f)
		}
		if _, dup := regions[r.Name]; dup {
			return nil, fmt.Errorf("%s.name: %q defined twice", f, r.Name)
		}
		if _, dup := out.RegionNames[maps.RegionID(r.ID)]; dup {
			return nil, fmt.Errorf("%s.id: %d used twice", f, r.ID)
		}
		regions[r.Name] = maps.RegionID(r.ID)
		out.RegionNames[maps.RegionID(r.ID)] = r.Name
		for j, p := range r.Prefixes {
			pf, err := clientPrefix(p)
			if err != nil {
				return nil, fmt.Errorf("%s.prefixes[%d]: %w", f, j, err)
			}
			if other, dup := out.Prefixes[pf]; dup {
				return nil, fmt.Errorf("%s.prefixes[%d]: %s already belongs to region %s", f, j, pf, out.RegionNames[other])
			}
			out.Prefixes[pf] = maps.RegionID(r.ID)
		}
	}
	if s.DefaultRegion != "" {
		id, ok := regions[s.DefaultRegion]
		if !ok {
			return nil, fmt.Errorf("default_region: %q is not a defined region", s.DefaultRegion)
		}
		out.DefaultRegion = id
	}
	mirrors := map[string]maps.MirrorID{}
	for i, m := range s.Mirrors {
		f := fmt.Sprintf("mirrors[%d]", i)
		if m.Name == "" {
			return nil, fmt.Errorf("%s.name: missing", f)
		}
		if m.ID == 0 || int(m.ID) >= lim.MaxMirrors {
			return nil, fmt.Errorf("%s.id: %d out of [1, %d] (limits.max_mirrors)", f, m.ID, lim.MaxMirrors-1)
		}
		if _, dup := mirrors[m.Name]; dup {
			return nil, fmt.Errorf("%s.name: %q defined twice", f, m.Name)
		}
		if _, dup := out.MirrorNames[maps.MirrorID(m.ID)]; dup {
			return nil, fmt.Errorf("%s.id: %d used twice", f, m.ID)
		}
		addr, err := parseUnicast(m.Address)
		if err != nil {
			return nil, fmt.Errorf("%s.address: %w", f, err)
		}
		state := maps.MirrorActive
		if m.State != "" {
			if state, err = maps.ParseMirrorState(m.State); err != nil {
				return nil, fmt.Errorf("%s.state: %w", f, err)
			}
		}
		mm := maps.Mirror{Addr: addr, State: state}
		if mm.Encap, err = maps.ParseEncapsulation(m.Encap); err != nil {
			return nil, fmt.Errorf("%s.encap: %w", f, err)
		}
		switch {
		case m.GUEPort < 0 || m.GUEPort > 65535:
			return nil, fmt.Errorf("%s.gue_port: %d out of [1, 65535]", f, m.GUEPort)
		case mm.Encap == maps.EncapGUE && m.GUEPort == 0:
			return nil, fmt.Errorf("%s.gue_port: required with encap gue (the mirror's decap_gue_port)", f)
		case mm.Encap != maps.EncapGUE && m.GUEPort != 0:
			return nil, fmt.Errorf("%s.gue_port: only with encap gue", f)
		}
		mm.GUEPort = uint16(m.GUEPort)
		mirrors[m.Name] = maps.MirrorID(m.ID)
		out.MirrorNames[maps.MirrorID(m.ID)] = m.Name
		out.Mirrors[maps.MirrorID(m.ID)] = mm
		if m.Node != "" {
			out.MirrorNodes[maps.MirrorID(m.ID)] = m.Node
		}
		for _, r := range m.Resources {
			out.MirrorResources[maps.MirrorID(m.ID)] = append(out.MirrorResources[maps.MirrorID(m.ID)], maps.ResourceID(r))
		}
	}
	seenRes := map[string]bool{}
	for i, r := range s.Resources {
		f := fmt.Sprintf("resources[%d]", i)
		if r.Name == "" {
			return nil, fmt.Errorf("%s.name: missing", f)
		}
		if seenRes[r.Name] {
			return nil, fmt.Errorf("%s.name: %q defined twice", f, r.Name)
		}
		seenRes[r.Name] = true
		rid := maps.ResourceID(r.ID)
		if _, dup := out.ResourceNames[rid]; dup {
			return nil, fmt.Errorf("%s.id: %d used twice", f, r.ID)
		}
		out.ResourceNames[rid] = r.Name
		opts := maps.VIPOptions{Resource: rid, HashNoSrcPort: r.HashNoSrcPort}
		if a := r.Affinity; a != nil {
			if a.Timeout <= 0 {
				return nil, fmt.Errorf("%s.affinity.timeout: must be > 0", f)
			}
			// The data plane keeps whole seconds in 32 bits: a longer
			// timeout would wrap to a short one.
			if limit := Duration(math.MaxUint32 * time.Second); a.Timeout > limit {
				return nil, fmt.Errorf("%s.affinity.timeout: %v out of (0, %v]", f, time.Duration(a.Timeout), time.Duration(limit))
			}
			if a.PrefixV4 < 0 || a.PrefixV4 > 32 {
				return nil, fmt.Errorf("%s.affinity.prefix_v4: %d out of [1, 32]", f, a.PrefixV4)
			}
			if a.PrefixV6 < 0 || a.PrefixV6 > 128 {
				return nil, fmt.Errorf("%s.affinity.prefix_v6: %d out of [1, 128]", f, a.PrefixV6)
			}
			opts.AffinityTimeout = time.Duration(a.Timeout)
			opts.AffinityPrefixV4, opts.AffinityPrefixV6 = a.PrefixV4, a.PrefixV6
		}
		if len(r.VIPs) == 0 {
			return nil, fmt.Errorf("%s.vips: at least one VIP is required", f)
		}
		for j, v := range r.VIPs {
			vip, err := ParseVIP(v)
			if err != nil {
				return nil, fmt.Errorf("%s.vips[%d]: %w", f, j, err)
			}
			if _, dup := out.VIPs[vip]; dup {
				return nil, fmt.Errorf("%s.vips[%d]: %s used twice", f, j, vip)
			}
			out.VIPs[vip] = opts
		}
		if len(r.Routes) == 0 {
			return nil, fmt.Errorf("%s.routes: no route: its traffic would be dropped", f)
		}
		for region, weights := range r.Routes {
			rf := fmt.Sprintf("%s.routes[%s]", f, strconv.Quote(region))
			reg := maps.RegionAny
			if region != "*" {
				id, ok := regions[region]
				if !ok {
					return nil, fmt.Errorf("%s: region %q is not defined", rf, region)
				}
				reg = id
			}
			w := map[maps.MirrorID]uint32{}
			var total uint64
			for name, weight := range weights {
				id, ok := mirrors[name]
				if !ok {
					return nil, fmt.Errorf("%s: mirror %q is not defined", rf, name)
				}
				w[id] = weight
				total += uint64(weight)
			}
			if total == 0 {
				return nil, fmt.Errorf("%s: every weight is zero", rf)
			}
			out.Routes[maps.RouteKey{Resource: rid, Region: reg}] = w
		}
	}
	// Checked here, not when the maps fill up: reconcile would stop
	// half-way, some prefixes of the new state written.
	var v4, v6 int
	for p := range out.Prefixes {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > lim.MaxPrefixesV4 {
		return nil, fmt.Errorf("regions: %d IPv4 prefixes exceed limits.max_prefixes_v4 %d", v4, lim.MaxPrefixesV4)
	}
	if v6 > lim.MaxPrefixesV6 {
		return nil, fmt.Errorf("regions: %d IPv6 prefixes exceed limits.max_prefixes_v6 %d", v6, lim.MaxPrefixesV6)
	}
	if len(out.VIPs) > lim.MaxVIPs {
		return nil, fmt.Errorf("resources: %d VIPs exceed limits.max_vips %d", len(out.VIPs), lim.MaxVIPs)
	}
	if len(out.Routes) > lim.MaxRoutes {
		return nil, fmt.Errorf("resources: %d routes exceed limits.max_routes %d", len(out.Routes), lim.MaxRoutes)
	}
	return out, nil
}
