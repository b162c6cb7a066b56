package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/premirror/premirror/internal/testbed/wan"
)

// ErrInvalidTopology is wrapped by every topology validation error; the
// message names the offending field.
var ErrInvalidTopology = errors.New("invalid topology")

// Topology describes a testbed. The zero values of optional fields get the
// defaults documented on each field. It is loaded from YAML by
// [LoadTopology] or [ParseTopology] with the field names in the yaml tags.
type Topology struct {
	// VIPs are the service addresses (IPv4 and IPv6, any number). They
	// are bound on every mirror's loopback; the WAN sends a client's
	// traffic to them to its region's edge.
	VIPs []netip.Addr `yaml:"vips"`
	// Service configures the identity service on every mirror.
	Service Service `yaml:"service"`
	// Regions hold the client hosts.
	Regions []Region `yaml:"regions"`
	// Edges are the routers that receive VIP traffic.
	Edges []Edge `yaml:"edges"`
	// Mirrors serve the VIPs.
	Mirrors []Mirror `yaml:"mirrors"`
	// Delays set the initial one-way delays and losses; unset pairs
	// have zero delay and no loss. Later entries override earlier ones.
	Delays []Delay `yaml:"delays"`
	// InfraV4 and InfraV6 are the prefixes edge and mirror addresses are
	// taken from, in order (edges first, one address per arm), unless a
	// mirror names its own. Defaults 10.255.0.0/16 and fd00:ff::/64.
	InfraV4 netip.Prefix `yaml:"infra_v4"`
	InfraV6 netip.Prefix `yaml:"infra_v6"`
	// MTU of every link; default 1500, at most 9000. Above about 3500 a
	// veth accepts a native XDP program only if it is multi-buffer aware
	// (BPF_F_XDP_HAS_FRAGS): the switch's is; programs attached to host
	// interfaces must be too.
	MTU int `yaml:"mtu"`
	// ClientMTU is the MTU of client hosts' links; default MTU. Set it
	// below MTU (1400 with MTU 1500, say) when an edge encapsulates
	// client packets (IPIP adds 20 bytes, IP6IP6 40): a veth drops an
	// XDP_TX or XDP_REDIRECT frame larger than its peer's MTU allows.
	ClientMTU int `yaml:"client_mtu"`
}

// Service configures the identity service each mirror runs on every VIP
// and on its own addresses.
type Service struct {
	// TCPPorts default to [8080]; UDPPorts to [8053].
	TCPPorts []uint16 `yaml:"tcp_ports"`
	UDPPorts []uint16 `yaml:"udp_ports"`
	// Disabled starts no service (for tests that bind their own).
	Disabled bool `yaml:"disabled"`
}

// Region is a group of client hosts sharing an address prefix and an edge.
type Region struct {
	// Name names the region; its clients are named "<name>-1", ….
	Name string `yaml:"name"`
	// Edge names the edge that receives the region's VIP traffic.
	Edge string `yaml:"edge"`
	// Clients is the number of client hosts (1–250).
	Clients int `yaml:"clients"`
	// PrefixV4 and PrefixV6 hold the clients' addresses: client i gets
	// the prefix's address + i.
	PrefixV4 netip.Prefix `yaml:"prefix_v4"`
	PrefixV6 netip.Prefix `yaml:"prefix_v6"`
}

// Edge is an edge router host.
type Edge struct {
	Name string `yaml:"name"`
	// Arms is 1 (default: eth0 faces clients and mirrors) or 2 (eth0
	// faces clients and receives the VIP traffic, eth1 faces mirrors:
	// the edge routes mirror addresses via eth1, so XDP_REDIRECT from
	// eth0 to eth1 can be exercised).
	Arms int `yaml:"arms"`
}

// Mirror is a host serving the VIPs.
type Mirror struct {
	Name string `yaml:"name"`
	// V4 and V6 are its addresses; allocated from the infra prefixes
	// when unset.
	V4 netip.Addr `yaml:"v4"`
	V6 netip.Addr `yaml:"v6"`
}

// Delay sets the path between A and B, each a host or a region name (a
// region stands for all its clients).
type Delay struct {
	A string `yaml:"a"`
	B string `yaml:"b"`
	// OneWay is the one-way delay (YAML: a Go duration such as "5ms").
	OneWay Duration `yaml:"one_way"`
	// Loss is the probability in [0, 1] of dropping each frame.
	Loss float64 `yaml:"loss"`
	// Directed sets only A→B; by default both directions get the path.
	Directed bool `yaml:"directed"`
}

// Duration is a time.Duration written in YAML as "20ms", "1.5s", ….
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Default gateway addresses every host uses; their neighbour entries are
// permanent and point at the host's switch port.
var (
	GatewayV4 = netip.MustParseAddr("169.254.0.1")
	GatewayV6 = netip.MustParseAddr("fe80::1")
)

const maxClientsPerRegion = 250

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// LoadTopology reads a YAML topology from path and validates it.
func LoadTopology(path string) (Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Topology{}, fmt.Errorf("read topology: %w", err)
	}
	t, err := ParseTopology(b)
	if err != nil {
		return Topology{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes a YAML topology strictly (unknown fields are
// errors) and validates it.
func ParseTopology(b []byte) (Topology, error) {
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		if errors.Is(err, io.EOF) {
			return Topology{}, fmt.Errorf("%w: empty document", ErrInvalidTopology)
		}
		return Topology{}, fmt.Errorf("%w: %w", ErrInvalidTopology, err)
	}
	if _, err := t.plan(); err != nil {
		return Topology{}, err
	}
	return t, nil
}

// Validate reports the first problem in t, naming the field.
func (t Topology) Validate() error {
	_, err := t.plan()
	return err
}

// Role is what a host is in the topology.
type Role int

// Host roles.
const (
	RoleClient Role = iota + 1
	RoleEdge
	RoleMirror
)

// String returns "client", "edge" or "mirror".
func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleEdge:
		return "edge"
	case RoleMirror:
		return "mirror"
	}
	return "unknown"
}

// plan is a validated topology with every default and address resolved.
type plan struct {
	topo    Topology // with defaults filled
	hosts   []hostPlan
	byName  map[string]int
	regions map[string][]string // region → client host names
	delays  []pathSet
}

type hostPlan struct {
	name   string
	role   Role
	region string // clients
	vipVia string // edge name, for clients
	arms   []armPlan
	// extra routes via eth1 (two-armed edges: the mirrors' addresses)
	arm1Routes []netip.Prefix
}

type armPlan struct {
	v4, v6 netip.Addr
}

type pathSet struct {
	from, to string
	path     wan.Path
}

func invalid(field string, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidTopology, field, fmt.Sprintf(format, a...))
}

func (t Topology) plan() (*plan, error) {
	p := &plan{byName: make(map[string]int), regions: make(map[string][]string)}
	// Defaults are filled into copies: the caller's slices stay untouched.
	t.Edges = slices.Clone(t.Edges)
	t.Mirrors = slices.Clone(t.Mirrors)
	if !t.InfraV4.IsValid() {
		t.InfraV4 = netip.MustParsePrefix("10.255.0.0/16")
	}
	if !t.InfraV6.IsValid() {
		t.InfraV6 = netip.MustParsePrefix("fd00:ff::/64")
	}
	if t.MTU == 0 {
		t.MTU = 1500
	}
	if !t.Service.Disabled {
		if len(t.Service.TCPPorts) == 0 {
			t.Service.TCPPorts = []uint16{8080}
		}
		if len(t.Service.UDPPorts) == 0 {
			t.Service.UDPPorts = []uint16{8053}
		}
	}
	if t.MTU < 1280 || t.MTU > 9000 {
		return nil, invalid("mtu", "%d not in [1280, 9000]", t.MTU)
	}
	if t.ClientMTU == 0 {
		t.ClientMTU = t.MTU
	}
	if t.ClientMTU < 1280 || t.ClientMTU > t.MTU {
		return nil, invalid("client_mtu", "%d not in [1280, mtu %d]", t.ClientMTU, t.MTU)
	}
	if !t.InfraV4.Addr().Is4() || t.InfraV4 != t.InfraV4.Masked() || t.InfraV4.Bits() > 28 {
		return nil, invalid("infra_v4", "%s must be a masked IPv4 prefix of at most /28", t.InfraV4)
	}
	if !t.InfraV6.Addr().Is6() || t.InfraV6.Addr().Is4In6() || t.InfraV6 != t.InfraV6.Masked() || t.InfraV6.Bits() > 120 {
		return nil, invalid("infra_v6", "%s must be a masked IPv6 prefix of at most /120", t.InfraV6)
	}
	for i, port := range t.Service.TCPPorts {
		if port == 0 {
			return nil, invalid(fmt.Sprintf("service.tcp_ports[%d]", i), "port 0")
		}
	}
	for i, port := range t.Service.UDPPorts {
		if port == 0 {
			return nil, invalid(fmt.Sprintf("service.udp_ports[%d]", i), "port 0")
		}
	}
	if len(t.VIPs) == 0 {
		return nil, invalid("vips", "at least one VIP is needed")
	}
	if len(t.Regions) == 0 {
		return nil, invalid("regions", "at least one region is needed")
	}
	if len(t.Edges) == 0 {
		return nil, invalid("edges", "at least one edge is needed")
	}

	// Every name (region or host) is unique, so delays can name either.
	names := make(map[string]string)
	claim := func(field, name string) error {
		if !nameRE.MatchString(name) {
			return invalid(field, "name %q must match %s", name, nameRE)
		}
		if prev, dup := names[name]; dup {
			return invalid(field, "name %q already used by %s", name, prev)
		}
		names[name] = field
		return nil
	}
	addrs := make(map[netip.Addr]string)
	useAddr := func(field string, a netip.Addr) error {
		if prev, dup := addrs[a]; dup {
			return invalid(field, "address %s already used by %s", a, prev)
		}
		if a == GatewayV4 || a == GatewayV6 {
			return invalid(field, "address %s is the gateway", a)
		}
		addrs[a] = field
		return nil
	}
	var prefixes []struct {
		field string
		p     netip.Prefix
	}
	addPrefix := func(field string, pf netip.Prefix) error {
		for _, o := range prefixes {
			if o.p.Overlaps(pf) {
				return invalid(field, "%s overlaps %s (%s)", pf, o.field, o.p)
			}
		}
		prefixes = append(prefixes, struct {
			field string
			p     netip.Prefix
		}{field, pf})
		return nil
	}
	if err := addPrefix("infra_v4", t.InfraV4); err != nil {
		return nil, err
	}
	if err := addPrefix("infra_v6", t.InfraV6); err != nil {
		return nil, err
	}

	edges := make(map[string]bool)
	for i, e := range t.Edges {
		f := fmt.Sprintf("edges[%d]", i)
		if err := claim(f+".name", e.Name); err != nil {
			return nil, err
		}
		if e.Arms == 0 {
			t.Edges[i].Arms = 1
		}
		if a := t.Edges[i].Arms; a != 1 && a != 2 {
			return nil, invalid(f+".arms", "%d, want 1 or 2", a)
		}
		edges[e.Name] = true
	}

	// Allocate infrastructure addresses: edges' arms, then mirrors.
	next4, next6 := t.InfraV4.Addr().Next(), t.InfraV6.Addr().Next()
	take := func(field string) (netip.Addr, netip.Addr, error) {
		for addrs[next4] != "" || next4 == GatewayV4 {
			next4 = next4.Next()
		}
		for addrs[next6] != "" {
			next6 = next6.Next()
		}
		if !t.InfraV4.Contains(next4) || !t.InfraV4.Contains(next4.Next()) {
			return netip.Addr{}, netip.Addr{}, invalid("infra_v4", "%s has no address left for %s", t.InfraV4, field)
		}
		if !t.InfraV6.Contains(next6) {
			return netip.Addr{}, netip.Addr{}, invalid("infra_v6", "%s has no address left for %s", t.InfraV6, field)
		}
		a4, a6 := next4, next6
		next4, next6 = next4.Next(), next6.Next()
		return a4, a6, nil
	}
	// Explicit mirror addresses are claimed first so allocation skips them.
	for i, m := range t.Mirrors {
		f := fmt.Sprintf("mirrors[%d]", i)
		if m.V4.IsValid() {
			if !m.V4.Is4() || !m.V4.IsGlobalUnicast() {
				return nil, invalid(f+".v4", "%s is not a unicast IPv4 address", m.V4)
			}
			if err := useAddr(f+".v4", m.V4); err != nil {
				return nil, err
			}
		}
		if m.V6.IsValid() {
			if !m.V6.Is6() || m.V6.Is4In6() || !m.V6.IsGlobalUnicast() {
				return nil, invalid(f+".v6", "%s is not a global unicast IPv6 address", m.V6)
			}
			if err := useAddr(f+".v6", m.V6); err != nil {
				return nil, err
			}
		}
	}
	var edgePlans []hostPlan
	for i, e := range t.Edges {
		hp := hostPlan{name: e.Name, role: RoleEdge}
		for a := 0; a < t.Edges[i].Arms; a++ {
			f := fmt.Sprintf("edges[%d] arm %d", i, a)
			v4, v6, err := take(f)
			if err != nil {
				return nil, err
			}
			_ = useAddr(f, v4)
			_ = useAddr(f, v6)
			hp.arms = append(hp.arms, armPlan{v4: v4, v6: v6})
		}
		edgePlans = append(edgePlans, hp)
	}
	var mirrorPlans []hostPlan
	var mirrorRoutes []netip.Prefix
	for i, m := range t.Mirrors {
		f := fmt.Sprintf("mirrors[%d]", i)
		if err := claim(f+".name", m.Name); err != nil {
			return nil, err
		}
		if !m.V4.IsValid() || !m.V6.IsValid() {
			v4, v6, err := take(f)
			if err != nil {
				return nil, err
			}
			if !m.V4.IsValid() {
				t.Mirrors[i].V4 = v4
				_ = useAddr(f+".v4", v4)
			}
			if !m.V6.IsValid() {
				t.Mirrors[i].V6 = v6
				_ = useAddr(f+".v6", v6)
			}
		}
		m = t.Mirrors[i]
		mirrorPlans = append(mirrorPlans, hostPlan{name: m.Name, role: RoleMirror, arms: []armPlan{{v4: m.V4, v6: m.V6}}})
		mirrorRoutes = append(mirrorRoutes, netip.PrefixFrom(m.V4, 32), netip.PrefixFrom(m.V6, 128))
	}
	for i := range edgePlans {
		if len(edgePlans[i].arms) == 2 {
			edgePlans[i].arm1Routes = mirrorRoutes
		}
	}

	var clientPlans []hostPlan
	for i, r := range t.Regions {
		f := fmt.Sprintf("regions[%d]", i)
		if err := claim(f+".name", r.Name); err != nil {
			return nil, err
		}
		if !edges[r.Edge] {
			return nil, invalid(f+".edge", "%q is not an edge", r.Edge)
		}
		if r.Clients < 1 || r.Clients > maxClientsPerRegion {
			return nil, invalid(f+".clients", "%d not in [1, %d]", r.Clients, maxClientsPerRegion)
		}
		if !r.PrefixV4.IsValid() || !r.PrefixV4.Addr().Is4() || r.PrefixV4 != r.PrefixV4.Masked() {
			return nil, invalid(f+".prefix_v4", "%q must be a masked IPv4 prefix", r.PrefixV4)
		}
		if !r.PrefixV6.IsValid() || !r.PrefixV6.Addr().Is6() || r.PrefixV6.Addr().Is4In6() || r.PrefixV6 != r.PrefixV6.Masked() {
			return nil, invalid(f+".prefix_v6", "%q must be a masked IPv6 prefix", r.PrefixV6)
		}
		if err := addPrefix(f+".prefix_v4", r.PrefixV4); err != nil {
			return nil, err
		}
		if err := addPrefix(f+".prefix_v6", r.PrefixV6); err != nil {
			return nil, err
		}
		a4, a6 := r.PrefixV4.Addr(), r.PrefixV6.Addr()
		for c := 1; c <= r.Clients; c++ {
			a4, a6 = a4.Next(), a6.Next()
			// Keep the broadcast-looking last address free.
			if !r.PrefixV4.Contains(a4) || !r.PrefixV4.Contains(a4.Next()) || !r.PrefixV6.Contains(a6) {
				return nil, invalid(f+".clients", "%d clients do not fit in %s / %s", r.Clients, r.PrefixV4, r.PrefixV6)
			}
			name := fmt.Sprintf("%s-%d", r.Name, c)
			if err := claim(fmt.Sprintf("%s client %d", f, c), name); err != nil {
				return nil, err
			}
			if err := useAddr(f+".prefix_v4", a4); err != nil {
				return nil, err
			}
			if err := useAddr(f+".prefix_v6", a6); err != nil {
				return nil, err
			}
			clientPlans = append(clientPlans, hostPlan{
				name: name, role: RoleClient, region: r.Name, vipVia: r.Edge,
				arms: []armPlan{{v4: a4, v6: a6}},
			})
			p.regions[r.Name] = append(p.regions[r.Name], name)
		}
	}
	// Mirrors' explicit addresses must not sit in a client prefix.
	for a, field := range addrs {
		for _, pf := range prefixes {
			infra := pf.field == "infra_v4" || pf.field == "infra_v6"
			if pf.p.Contains(a) && !infra && pf.field != field {
				return nil, invalid(field, "address %s lies in %s (%s)", a, pf.field, pf.p)
			}
		}
	}
	for i, v := range t.VIPs {
		f := fmt.Sprintf("vips[%d]", i)
		if !v.IsValid() || v.Is4In6() || !v.IsGlobalUnicast() {
			return nil, invalid(f, "%s is not a unicast address", v)
		}
		if err := useAddr(f, v); err != nil {
			return nil, err
		}
		for _, pf := range prefixes {
			if pf.p.Contains(v) {
				return nil, invalid(f, "%s lies in %s (%s)", v, pf.field, pf.p)
			}
		}
	}

	p.hosts = append(append(append(p.hosts, clientPlans...), edgePlans...), mirrorPlans...)
	for i, h := range p.hosts {
		p.byName[h.name] = i
	}
	for i, d := range t.Delays {
		f := fmt.Sprintf("delays[%d]", i)
		as, err := p.expand(d.A)
		if err != nil {
			return nil, invalid(f+".a", "%v", err)
		}
		bs, err := p.expand(d.B)
		if err != nil {
			return nil, invalid(f+".b", "%v", err)
		}
		path := wan.Path{Delay: time.Duration(d.OneWay), Loss: d.Loss}
		if path.Delay < 0 || path.Delay > wan.MaxDelay {
			return nil, invalid(f+".one_way", "%v not in [0, %v]", path.Delay, wan.MaxDelay)
		}
		if !(path.Loss >= 0 && path.Loss <= 1) {
			return nil, invalid(f+".loss", "%v not in [0, 1]", path.Loss)
		}
		for _, a := range as {
			for _, b := range bs {
				p.delays = append(p.delays, pathSet{from: a, to: b, path: path})
				if !d.Directed {
					p.delays = append(p.delays, pathSet{from: b, to: a, path: path})
				}
			}
		}
	}
	p.topo = t
	return p, nil
}

// expand turns a host or region name into host names.
func (p *plan) expand(name string) ([]string, error) {
	if hs, ok := p.regions[name]; ok {
		return hs, nil
	}
	if _, ok := p.byName[name]; ok {
		return []string{name}, nil
	}
	return nil, fmt.Errorf("%q is neither a host nor a region", name)
}
