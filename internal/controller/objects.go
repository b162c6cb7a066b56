package controller

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/yamlstrict"
)

// ErrInvalid wraps every validation failure of user objects; the message
// names the offending field.
var ErrInvalid = errors.New("invalid object")

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Object kinds as the admin API and the CLI name them.
const (
	KindSite     = "site"
	KindMirror   = "mirror"
	KindResource = "resource"
)

// objectsFile is the YAML form of objects: one or more documents, each
// with any of the three lists.
type objectsFile struct {
	Sites     []yamlSite     `yaml:"sites,omitempty"`
	Mirrors   []yamlMirror   `yaml:"mirrors,omitempty"`
	Resources []yamlResource `yaml:"resources,omitempty"`
}

type yamlSite struct {
	ID             uint32        `yaml:"id,omitempty"` // output only; apply ignores it
	Name           string        `yaml:"name"`
	ClientPrefixes []string      `yaml:"client_prefixes,omitempty"`
	Location       *yamlLocation `yaml:"location,omitempty"`
	CapacityRPS    float64       `yaml:"capacity_rps,omitempty"`
	Nodes          []string      `yaml:"nodes,omitempty"`
}

type yamlLocation struct {
	Latitude  float64 `yaml:"latitude"`
	Longitude float64 `yaml:"longitude"`
}

type yamlMirror struct {
	ID          uint32  `yaml:"id,omitempty"`
	Name        string  `yaml:"name"`
	Site        string  `yaml:"site"`
	Address     string  `yaml:"address"`
	Node        string  `yaml:"node,omitempty"`
	CapacityRPS float64 `yaml:"capacity_rps,omitempty"`
	State       string  `yaml:"state,omitempty"`
	ServiceTime string  `yaml:"service_time,omitempty"`
	// Encap is ipip (default) or gue; GUEPort is required with gue.
	Encap   string `yaml:"encap,omitempty"`
	GUEPort int64  `yaml:"gue_port,omitempty"`
}

type yamlResource struct {
	ID            uint32          `yaml:"id,omitempty"`
	Name          string          `yaml:"name"`
	VIPs          []string        `yaml:"vips"`
	Ports         []int64         `yaml:"ports"`
	Protocol      string          `yaml:"protocol"`
	Origin        string          `yaml:"origin"`
	MirrorPolicy  *yamlPolicy     `yaml:"mirror_policy,omitempty"`
	Affinity      *yamlAffinity   `yaml:"affinity,omitempty"`
	Thresholds    *yamlThresholds `yaml:"thresholds,omitempty"`
	Profile       *yamlProfile    `yaml:"profile,omitempty"`
	HashNoSrcPort bool            `yaml:"hash_no_src_port,omitempty"`
	SizeBytes     uint64          `yaml:"size_bytes,omitempty"`
	WorkingSet    uint64          `yaml:"working_set_bytes,omitempty"`
}

type yamlPolicy struct {
	Mode       string   `yaml:"mode,omitempty"`
	Mirrors    []string `yaml:"mirrors,omitempty"`
	Sites      []string `yaml:"sites,omitempty"`
	MaxMirrors int64    `yaml:"max_mirrors,omitempty"`
}

type yamlAffinity struct {
	Timeout  string `yaml:"timeout,omitempty"`
	PrefixV4 int64  `yaml:"prefix_v4,omitempty"`
	PrefixV6 int64  `yaml:"prefix_v6,omitempty"`
}

type yamlThresholds struct {
	MirrorScore float64 `yaml:"mirror_score,omitempty"`
	RetireScore float64 `yaml:"retire_score,omitempty"`
	MaxLag      string  `yaml:"max_lag,omitempty"`
}

type yamlProfile struct {
	RoundTrips      float64 `yaml:"round_trips,omitempty"`
	BytesPerRequest float64 `yaml:"bytes_per_request,omitempty"`
}

// parseDuration reads "30m" or "1.5s"; empty is zero.
func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("%s: %v is negative", field, d)
	}
	return d, nil
}

// ParseObjects reads YAML documents of sites, mirrors and resources and
// validates each object on its own and that no name of a kind comes twice
// (references between objects are checked by ValidateObjects against the
// full set). Unknown fields are errors; an error names the document and
// field.
func ParseObjects(b []byte) (*pb.Objects, error) {
	out := &pb.Objects{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	// The same documents again as nodes, for what KnownFields misses.
	nodes := yaml.NewDecoder(bytes.NewReader(b))
	for doc := 0; ; doc++ {
		var f objectsFile
		err := dec.Decode(&f)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, invalidf("document %d: %v", doc, err)
		}
		var n yaml.Node
		if nodes.Decode(&n) == nil {
			if err := yamlstrict.WholeNumbers(&n, &f); err != nil {
				if doc == 0 {
					return nil, invalidf("%v", err)
				}
				return nil, invalidf("document %d: %v", doc, err)
			}
		}
		where := func(kind string, i int) string {
			if doc == 0 {
				return fmt.Sprintf("%s[%d]", kind, i)
			}
			return fmt.Sprintf("document %d: %s[%d]", doc, kind, i)
		}
		for i, s := range f.Sites {
			ps, err := s.proto()
			if err != nil {
				return nil, invalidf("%s.%v", where("sites", i), err)
			}
			out.Sites = append(out.Sites, ps)
		}
		for i, m := range f.Mirrors {
			pm, err := m.proto()
			if err != nil {
				return nil, invalidf("%s.%v", where("mirrors", i), err)
			}
			out.Mirrors = append(out.Mirrors, pm)
		}
		for i, r := range f.Resources {
			pr, err := r.proto()
			if err != nil {
				return nil, invalidf("%s.%v", where("resources", i), err)
			}
			out.Resources = append(out.Resources, pr)
		}
	}
	for i, s := range out.Sites {
		if err := checkSite(s); err != nil {
			return nil, invalidf("sites[%d] (%s).%v", i, s.GetName(), err)
		}
	}
	for i, m := range out.Mirrors {
		if err := checkMirror(m); err != nil {
			return nil, invalidf("mirrors[%d] (%s).%v", i, m.GetName(), err)
		}
	}
	for i, r := range out.Resources {
		if err := checkResource(r); err != nil {
			return nil, invalidf("resources[%d] (%s).%v", i, r.GetName(), err)
		}
	}
	if err := checkUnique(out); err != nil {
		return nil, err
	}
	return out, nil
}

// checkUnique refuses an input (a file, one apply) that names an object
// twice: which of the two should win is not ours to guess, and both
// writes in one etcd transaction fail with etcd's own message.
func checkUnique(o *pb.Objects) error {
	if err := uniqueNames("sites", o.GetSites()); err != nil {
		return err
	}
	if err := uniqueNames("mirrors", o.GetMirrors()); err != nil {
		return err
	}
	return uniqueNames("resources", o.GetResources())
}

func uniqueNames[T named](kind string, list []T) error {
	first := map[string]int{}
	for i, x := range list {
		if j, ok := first[x.GetName()]; ok {
			return invalidf("%s[%d] (%s).name: listed twice (also %s[%d])", kind, i, x.GetName(), kind, j)
		}
		first[x.GetName()] = i
	}
	return nil
}

// The yaml→proto conversions catch only what the proto cannot hold (a
// negative port, an unknown enum name); checkX validates the values.

func (s yamlSite) proto() (*pb.Site, error) {
	ps := &pb.Site{Name: s.Name, ClientPrefixes: s.ClientPrefixes, CapacityRps: s.CapacityRPS, Nodes: s.Nodes}
	if s.Location != nil {
		ps.Location = &pb.Location{Latitude: s.Location.Latitude, Longitude: s.Location.Longitude}
	}
	return ps, nil
}

func (m yamlMirror) proto() (*pb.Mirror, error) {
	st, err := parseMirrorState(m.State)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	svc, err := parseDuration("service_time", m.ServiceTime)
	if err != nil {
		return nil, err
	}
	enc, err := parseEncapsulation(m.Encap)
	if err != nil {
		return nil, fmt.Errorf("encap: %w", err)
	}
	if m.GUEPort < 0 || m.GUEPort > math.MaxUint16 {
		return nil, fmt.Errorf("gue_port: %d out of [1, %d]", m.GUEPort, math.MaxUint16)
	}
	return &pb.Mirror{Name: m.Name, Site: m.Site, Address: m.Address, Node: m.Node, CapacityRps: m.CapacityRPS,
		State: st, ServiceTimeMs: float64(svc) / float64(time.Millisecond), Encap: enc, GuePort: uint32(m.GUEPort)}, nil
}

func parseEncapsulation(s string) (pb.Encapsulation, error) {
	switch s {
	case "", "ipip":
		return pb.Encapsulation_ENCAPSULATION_UNSPECIFIED, nil
	case "gue":
		return pb.Encapsulation_ENCAPSULATION_GUE, nil
	}
	return 0, fmt.Errorf("%q is not ipip or gue", s)
}

// EncapsulationName is the YAML name of an encapsulation ("" for the
// default, IP-in-IP).
func EncapsulationName(e pb.Encapsulation) string {
	if e == pb.Encapsulation_ENCAPSULATION_GUE {
		return "gue"
	}
	return ""
}

func (r yamlResource) proto() (*pb.Resource, error) {
	pr := &pb.Resource{Name: r.Name, Vips: r.VIPs, Origin: r.Origin, HashNoSrcPort: r.HashNoSrcPort, SizeBytes: r.SizeBytes,
		WorkingSetBytes: r.WorkingSet}
	for i, p := range r.Ports {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("ports[%d]: %d out of [1, 65535]", i, p)
		}
		pr.Ports = append(pr.Ports, uint32(p))
	}
	switch r.Protocol {
	case "tcp":
		pr.Protocol = pb.Protocol_PROTOCOL_TCP
	case "udp":
		pr.Protocol = pb.Protocol_PROTOCOL_UDP
	case "":
	default:
		return nil, fmt.Errorf("protocol: %q is not tcp or udp", r.Protocol)
	}
	if p := r.MirrorPolicy; p != nil {
		mp := &pb.MirrorPolicy{Mirrors: p.Mirrors, Sites: p.Sites}
		switch p.Mode {
		case "", "static":
			mp.Mode = pb.MirrorMode_MIRROR_MODE_STATIC
		case "predictive":
			mp.Mode = pb.MirrorMode_MIRROR_MODE_PREDICTIVE
		default:
			return nil, fmt.Errorf("mirror_policy.mode: %q is not static or predictive", p.Mode)
		}
		if p.MaxMirrors < 0 || p.MaxMirrors > math.MaxUint16 {
			return nil, fmt.Errorf("mirror_policy.max_mirrors: %d out of [0, %d]", p.MaxMirrors, math.MaxUint16)
		}
		mp.MaxMirrors = uint32(p.MaxMirrors)
		pr.MirrorPolicy = mp
	}
	if a := r.Affinity; a != nil {
		timeout, err := parseDuration("affinity.timeout", a.Timeout)
		if err != nil {
			return nil, err
		}
		if timeout < time.Second || timeout > math.MaxUint32*time.Second {
			return nil, fmt.Errorf("affinity.timeout: %v out of [1s, %v]", timeout, math.MaxUint32*time.Second)
		}
		if timeout%time.Second != 0 {
			return nil, fmt.Errorf("affinity.timeout: %v is not whole seconds (the data plane keeps seconds)", timeout)
		}
		if a.PrefixV4 < 0 || a.PrefixV4 > 32 {
			return nil, fmt.Errorf("affinity.prefix_v4: %d out of [0, 32]", a.PrefixV4)
		}
		if a.PrefixV6 < 0 || a.PrefixV6 > 128 {
			return nil, fmt.Errorf("affinity.prefix_v6: %d out of [0, 128]", a.PrefixV6)
		}
		pr.Affinity = &pb.Affinity{TimeoutSeconds: uint32(timeout / time.Second),
			PrefixV4: uint32(a.PrefixV4), PrefixV6: uint32(a.PrefixV6)}
	}
	if t := r.Thresholds; t != nil {
		lag, err := parseDuration("thresholds.max_lag", t.MaxLag)
		if err != nil {
			return nil, err
		}
		if lag > math.MaxUint32*time.Second {
			return nil, fmt.Errorf("thresholds.max_lag: %v out of range", lag)
		}
		// Kept in whole seconds, where 0 means no bound: 500ms would
		// have become unbounded.
		if lag%time.Second != 0 {
			return nil, fmt.Errorf("thresholds.max_lag: %v is not whole seconds", lag)
		}
		pr.Thresholds = &pb.Thresholds{MirrorScore: t.MirrorScore, RetireScore: t.RetireScore,
			MaxLagSeconds: uint32(lag / time.Second)}
	}
	if p := r.Profile; p != nil {
		pr.Profile = &pb.RequestProfile{RoundTrips: p.RoundTrips, BytesPerRequest: p.BytesPerRequest}
	}
	return pr, nil
}

func parseMirrorState(s string) (pb.MirrorState, error) {
	switch s {
	case "", "active":
		return pb.MirrorState_MIRROR_STATE_ACTIVE, nil
	case "draining":
		return pb.MirrorState_MIRROR_STATE_DRAINING, nil
	case "down":
		return pb.MirrorState_MIRROR_STATE_DOWN, nil
	}
	return 0, fmt.Errorf("%q is not active, draining or down", s)
}

// MirrorStateName is the YAML name of a mirror state.
func MirrorStateName(s pb.MirrorState) string {
	switch s {
	case pb.MirrorState_MIRROR_STATE_DRAINING:
		return "draining"
	case pb.MirrorState_MIRROR_STATE_DOWN:
		return "down"
	}
	return "active"
}

// Names: lowercase letters, digits, '-', '_' and '.', starting with a
// letter or digit; they become etcd key components and metric values.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func checkName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("name: %q must match %s", n, nameRE)
	}
	return nil
}

// checkUnicast refuses addresses the agents refuse in the desired state
// (agent.ParseVIP, mirror addresses): a zone, which the data plane's
// keys drop (fe80::1%a and fe80::1%b would be one VIP), the unspecified
// address, multicast and the IPv4 broadcast.
func checkUnicast(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return err
	}
	switch a = a.Unmap(); {
	case a.Zone() != "":
		return fmt.Errorf("%s: an address with a zone (%%%s) is not for the data plane", a, a.Zone())
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s: not a unicast address", a)
	}
	return nil
}

func finiteNonNeg(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) && f >= 0 }

func checkSite(s *pb.Site) error {
	if err := checkName(s.GetName()); err != nil {
		return err
	}
	seen := map[netip.Prefix]bool{}
	for i, p := range s.GetClientPrefixes() {
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return fmt.Errorf("client_prefixes[%d]: %w", i, err)
		}
		if pf.Masked() != pf {
			return fmt.Errorf("client_prefixes[%d]: %s has host bits set (did you mean %s?)", i, pf, pf.Masked())
		}
		// IPv4 clients are looked up as IPv4 (by the agents, and by
		// ingest-log): a mapped prefix would match nobody.
		if pf.Addr().Is4In6() && pf.Bits() >= 96 {
			return fmt.Errorf("client_prefixes[%d]: %s is IPv4-mapped and matches no client (did you mean %s?)", i, pf,
				netip.PrefixFrom(pf.Addr().Unmap(), pf.Bits()-96))
		}
		if seen[pf] {
			return fmt.Errorf("client_prefixes[%d]: %s listed twice", i, pf)
		}
		seen[pf] = true
	}
	if l := s.GetLocation(); l != nil {
		if math.IsNaN(l.GetLatitude()) || l.GetLatitude() < -90 || l.GetLatitude() > 90 {
			return fmt.Errorf("location.latitude: %v out of [-90, 90]", l.GetLatitude())
		}
		if math.IsNaN(l.GetLongitude()) || l.GetLongitude() < -180 || l.GetLongitude() > 180 {
			return fmt.Errorf("location.longitude: %v out of [-180, 180]", l.GetLongitude())
		}
	}
	if !finiteNonNeg(s.GetCapacityRps()) {
		return fmt.Errorf("capacity_rps: %v must be ≥ 0", s.GetCapacityRps())
	}
	nodes := make(map[string]bool, len(s.GetNodes()))
	for i, n := range s.GetNodes() {
		// Node names are certificate common names, as the agents' node.
		if n == "" || len(n) > 253 || strings.ContainsFunc(n, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("nodes[%d]: %q is not a node name (1-253 characters, no spaces or control characters)", i, n)
		}
		if nodes[n] {
			return fmt.Errorf("nodes[%d]: %q listed twice", i, n)
		}
		nodes[n] = true
	}
	return nil
}

func checkMirror(m *pb.Mirror) error {
	if err := checkName(m.GetName()); err != nil {
		return err
	}
	if m.GetSite() == "" {
		return errors.New("site: missing")
	}
	if err := checkUnicast(m.GetAddress()); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if n := m.GetNode(); n != "" && len(n) > 253 {
		return fmt.Errorf("node: %d characters is too long", len(n))
	}
	if !finiteNonNeg(m.GetCapacityRps()) {
		return fmt.Errorf("capacity_rps: %v must be ≥ 0", m.GetCapacityRps())
	}
	if !finiteNonNeg(m.GetServiceTimeMs()) {
		return fmt.Errorf("service_time: %vms must be ≥ 0", m.GetServiceTimeMs())
	}
	// The routing policy takes it as a time.Duration: beyond (or rounding
	// to) 2^63 ns it would wrap negative and the route input be refused.
	if m.GetServiceTimeMs() >= float64(math.MaxInt64)/float64(time.Millisecond) {
		return fmt.Errorf("service_time: %vms is out of range", m.GetServiceTimeMs())
	}
	if _, ok := pb.MirrorState_name[int32(m.GetState())]; !ok {
		return fmt.Errorf("state: %d is not a mirror state", m.GetState())
	}
	switch m.GetEncap() {
	case pb.Encapsulation_ENCAPSULATION_GUE:
		if p := m.GetGuePort(); p == 0 || p > math.MaxUint16 {
			return fmt.Errorf("gue_port: %d, want 1..%d with encap gue (the mirror host's decap_gue_port)", p, math.MaxUint16)
		}
	case pb.Encapsulation_ENCAPSULATION_UNSPECIFIED, pb.Encapsulation_ENCAPSULATION_IPIP:
		if m.GetGuePort() != 0 {
			return fmt.Errorf("gue_port: %d is only for encap gue", m.GetGuePort())
		}
	default:
		return fmt.Errorf("encap: %d is not an encapsulation", m.GetEncap())
	}
	return nil
}

func checkResource(r *pb.Resource) error {
	if err := checkName(r.GetName()); err != nil {
		return err
	}
	if len(r.GetVips()) == 0 {
		return errors.New("vips: at least one VIP address is required")
	}
	addrs := map[netip.Addr]bool{}
	for i, v := range r.GetVips() {
		if err := checkUnicast(v); err != nil {
			return fmt.Errorf("vips[%d]: %w", i, err)
		}
		a := netip.MustParseAddr(v)
		if addrs[a.Unmap()] {
			return fmt.Errorf("vips[%d]: %s listed twice", i, a)
		}
		addrs[a.Unmap()] = true
	}
	if len(r.GetPorts()) == 0 {
		return errors.New("ports: at least one port is required")
	}
	for i, p := range r.GetPorts() {
		if p < 1 || p > 65535 {
			return fmt.Errorf("ports[%d]: %d out of [1, 65535]", i, p)
		}
		if slices.Index(r.GetPorts(), p) != i {
			return fmt.Errorf("ports[%d]: %d listed twice", i, p)
		}
	}
	switch r.GetProtocol() {
	case pb.Protocol_PROTOCOL_TCP, pb.Protocol_PROTOCOL_UDP:
	default:
		return errors.New("protocol: missing (tcp or udp)")
	}
	if r.GetOrigin() == "" {
		return errors.New("origin: missing (the mirror holding the primary copy)")
	}
	if p := r.GetMirrorPolicy(); p != nil {
		for i, m := range p.GetMirrors() {
			if m == r.GetOrigin() {
				return fmt.Errorf("mirror_policy.mirrors[%d]: %q is the origin", i, m)
			}
			if slices.Index(p.GetMirrors(), m) != i {
				return fmt.Errorf("mirror_policy.mirrors[%d]: %q listed twice", i, m)
			}
		}
		for i, s := range p.GetSites() {
			if slices.Index(p.GetSites(), s) != i {
				return fmt.Errorf("mirror_policy.sites[%d]: %q listed twice", i, s)
			}
		}
		if _, ok := pb.MirrorMode_name[int32(p.GetMode())]; !ok {
			return fmt.Errorf("mirror_policy.mode: %d is not a mode", p.GetMode())
		}
		if n := p.GetMaxMirrors(); n > 0 && int(n) < 1+len(p.GetMirrors()) {
			return fmt.Errorf("mirror_policy.max_mirrors: %d is below the origin plus %d listed mirrors", n, len(p.GetMirrors()))
		}
	}
	if a := r.GetAffinity(); a != nil {
		if a.GetTimeoutSeconds() == 0 {
			return errors.New("affinity.timeout: must be at least 1s")
		}
		if a.GetPrefixV4() > 32 {
			return fmt.Errorf("affinity.prefix_v4: %d out of [0, 32]", a.GetPrefixV4())
		}
		if a.GetPrefixV6() > 128 {
			return fmt.Errorf("affinity.prefix_v6: %d out of [0, 128]", a.GetPrefixV6())
		}
	}
	if ws := r.GetWorkingSetBytes(); ws > 0 && (r.GetSizeBytes() == 0 || ws >= r.GetSizeBytes()) {
		return fmt.Errorf("working_set_bytes: %d must be below size_bytes %d (or 0 for full copies)", ws, r.GetSizeBytes())
	}
	if t := r.GetThresholds(); t != nil {
		for _, f := range []struct {
			name string
			v    float64
		}{{"mirror_score", t.GetMirrorScore()}, {"retire_score", t.GetRetireScore()}} {
			if math.IsNaN(f.v) || f.v < 0 || f.v > 1 {
				return fmt.Errorf("thresholds.%s: %v out of [0, 1]", f.name, f.v)
			}
		}
		// Against the default mirror_score too: placement would otherwise
		// drop a retire_score at or above it for half the mirror_score.
		if ms := cmp.Or(t.GetMirrorScore(), defaultMirrorScore); t.GetRetireScore() >= ms {
			return fmt.Errorf("thresholds.retire_score: %v must be below mirror_score %v (hysteresis)", t.GetRetireScore(), ms)
		}
	}
	if p := r.GetProfile(); p != nil {
		if !finiteNonNeg(p.GetRoundTrips()) {
			return fmt.Errorf("profile.round_trips: %v must be ≥ 0", p.GetRoundTrips())
		}
		if !finiteNonNeg(p.GetBytesPerRequest()) {
			return fmt.Errorf("profile.bytes_per_request: %v must be ≥ 0", p.GetBytesPerRequest())
		}
	}
	return nil
}

// Limits bound what the data planes can hold; ValidateObjects refuses a
// set that would not fit.
type Limits struct {
	MaxMirrorID uint32 // highest mirror ID the data plane accepts
	MaxVIPs     int
	MaxRoutes   int // (resource, region) pairs, wildcard included
	// MaxPrefixesV4 and MaxPrefixesV6 bound the sites' client prefixes of
	// each family (every agent gets all regions' prefixes).
	MaxPrefixesV4, MaxPrefixesV6 int
}

// DefaultLimits follow maps.DefaultConfig.
func DefaultLimits() Limits {
	c := maps.DefaultConfig()
	return Limits{MaxMirrorID: uint32(c.MaxMirrors - 1), MaxVIPs: c.MaxVIPs, MaxRoutes: c.MaxRoutes,
		MaxPrefixesV4: c.MaxPrefixesV4, MaxPrefixesV6: c.MaxPrefixesV6}
}

// ValidateObjects checks a complete object set: each object, names unique
// per kind, every reference resolved, no prefix, address or VIP claimed
// twice, and the data-plane limits. Errors name the object and field.
func ValidateObjects(o *pb.Objects, lim Limits) error {
	sites := map[string]bool{}
	nodeSite := map[string]string{}
	prefixOwner := map[netip.Prefix]string{}
	for _, s := range o.GetSites() {
		f := fmt.Sprintf("site %q", s.GetName())
		if err := checkSite(s); err != nil {
			return invalidf("%s: %v", f, err)
		}
		if sites[s.GetName()] {
			return invalidf("%s: name: defined twice", f)
		}
		sites[s.GetName()] = true
		for i, n := range s.GetNodes() {
			if other, dup := nodeSite[n]; dup {
				return invalidf("%s: nodes[%d]: %q already belongs to site %q", f, i, n, other)
			}
			nodeSite[n] = s.GetName()
		}
		for i, p := range s.GetClientPrefixes() {
			pf := netip.MustParsePrefix(p)
			if other, dup := prefixOwner[pf]; dup {
				return invalidf("%s: client_prefixes[%d]: %s already belongs to site %q", f, i, pf, other)
			}
			prefixOwner[pf] = s.GetName()
		}
	}
	mirrors := map[string]bool{}
	addrOwner := map[netip.Addr]string{}
	for _, m := range o.GetMirrors() {
		f := fmt.Sprintf("mirror %q", m.GetName())
		if err := checkMirror(m); err != nil {
			return invalidf("%s: %v", f, err)
		}
		if mirrors[m.GetName()] {
			return invalidf("%s: name: defined twice", f)
		}
		mirrors[m.GetName()] = true
		if !sites[m.GetSite()] {
			return invalidf("%s: site: %q is not a defined site", f, m.GetSite())
		}
		a := netip.MustParseAddr(m.GetAddress()).Unmap()
		if other, dup := addrOwner[a]; dup {
			return invalidf("%s: address: %s is already mirror %q's", f, a, other)
		}
		addrOwner[a] = m.GetName()
	}
	res := map[string]bool{}
	type vipKey struct {
		a     netip.Addr
		port  uint32
		proto pb.Protocol
	}
	vipOwner := map[vipKey]string{}
	routes := 0
	for _, r := range o.GetResources() {
		f := fmt.Sprintf("resource %q", r.GetName())
		if err := checkResource(r); err != nil {
			return invalidf("%s: %v", f, err)
		}
		if res[r.GetName()] {
			return invalidf("%s: name: defined twice", f)
		}
		res[r.GetName()] = true
		if !mirrors[r.GetOrigin()] {
			return invalidf("%s: origin: %q is not a defined mirror", f, r.GetOrigin())
		}
		for i, m := range r.GetMirrorPolicy().GetMirrors() {
			if !mirrors[m] {
				return invalidf("%s: mirror_policy.mirrors[%d]: %q is not a defined mirror", f, i, m)
			}
		}
		for i, s := range r.GetMirrorPolicy().GetSites() {
			if !sites[s] {
				return invalidf("%s: mirror_policy.sites[%d]: %q is not a defined site", f, i, s)
			}
		}
		for i, v := range r.GetVips() {
			a := netip.MustParseAddr(v).Unmap()
			for _, p := range r.GetPorts() {
				k := vipKey{a, p, r.GetProtocol()}
				if other, dup := vipOwner[k]; dup {
					return invalidf("%s: vips[%d]: %s port %d is already resource %q's", f, i, a, p, other)
				}
				vipOwner[k] = r.GetName()
			}
		}
		routes += 1 + len(o.GetSites())
	}
	var v4, v6 int
	for p := range prefixOwner {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if lim.MaxPrefixesV4 > 0 && v4 > lim.MaxPrefixesV4 {
		return invalidf("sites: %d IPv4 client prefixes exceed the data plane's %d", v4, lim.MaxPrefixesV4)
	}
	if lim.MaxPrefixesV6 > 0 && v6 > lim.MaxPrefixesV6 {
		return invalidf("sites: %d IPv6 client prefixes exceed the data plane's %d", v6, lim.MaxPrefixesV6)
	}
	if lim.MaxVIPs > 0 && len(vipOwner) > lim.MaxVIPs {
		return invalidf("resources: %d VIPs exceed the data plane's %d", len(vipOwner), lim.MaxVIPs)
	}
	if lim.MaxRoutes > 0 && routes > lim.MaxRoutes {
		return invalidf("resources: %d routes (resources × (sites+1)) exceed the data plane's %d", routes, lim.MaxRoutes)
	}
	return nil
}

// FormatObjects writes objects as the YAML ParseObjects reads, with their
// IDs (which apply ignores), so `get` output can be edited and applied.
func FormatObjects(o *pb.Objects) ([]byte, error) {
	var f objectsFile
	for _, s := range o.GetSites() {
		ys := yamlSite{ID: s.GetId(), Name: s.GetName(), ClientPrefixes: s.GetClientPrefixes(), CapacityRPS: s.GetCapacityRps(),
			Nodes: s.GetNodes()}
		if l := s.GetLocation(); l != nil {
			ys.Location = &yamlLocation{Latitude: l.GetLatitude(), Longitude: l.GetLongitude()}
		}
		f.Sites = append(f.Sites, ys)
	}
	for _, m := range o.GetMirrors() {
		ym := yamlMirror{ID: m.GetId(), Name: m.GetName(), Site: m.GetSite(), Address: m.GetAddress(), Node: m.GetNode(),
			CapacityRPS: m.GetCapacityRps(), State: MirrorStateName(m.GetState()),
			Encap: EncapsulationName(m.GetEncap()), GUEPort: int64(m.GetGuePort())}
		if st := m.GetServiceTimeMs(); st > 0 {
			ym.ServiceTime = time.Duration(st * float64(time.Millisecond)).String()
		}
		f.Mirrors = append(f.Mirrors, ym)
	}
	for _, r := range o.GetResources() {
		yr := yamlResource{ID: r.GetId(), Name: r.GetName(), VIPs: r.GetVips(), Origin: r.GetOrigin(), HashNoSrcPort: r.GetHashNoSrcPort(),
			SizeBytes: r.GetSizeBytes(), WorkingSet: r.GetWorkingSetBytes()}
		for _, p := range r.GetPorts() {
			yr.Ports = append(yr.Ports, int64(p))
		}
		switch r.GetProtocol() {
		case pb.Protocol_PROTOCOL_TCP:
			yr.Protocol = "tcp"
		case pb.Protocol_PROTOCOL_UDP:
			yr.Protocol = "udp"
		}
		if p := r.GetMirrorPolicy(); p != nil {
			mode := "static"
			if p.GetMode() == pb.MirrorMode_MIRROR_MODE_PREDICTIVE {
				mode = "predictive"
			}
			yr.MirrorPolicy = &yamlPolicy{Mode: mode, Mirrors: p.GetMirrors(), Sites: p.GetSites(), MaxMirrors: int64(p.GetMaxMirrors())}
		}
		if a := r.GetAffinity(); a != nil {
			yr.Affinity = &yamlAffinity{Timeout: (time.Duration(a.GetTimeoutSeconds()) * time.Second).String(),
				PrefixV4: int64(a.GetPrefixV4()), PrefixV6: int64(a.GetPrefixV6())}
		}
		if t := r.GetThresholds(); t != nil {
			yt := &yamlThresholds{MirrorScore: t.GetMirrorScore(), RetireScore: t.GetRetireScore()}
			if t.GetMaxLagSeconds() > 0 {
				yt.MaxLag = (time.Duration(t.GetMaxLagSeconds()) * time.Second).String()
			}
			yr.Thresholds = yt
		}
		if p := r.GetProfile(); p != nil {
			yr.Profile = &yamlProfile{RoundTrips: p.GetRoundTrips(), BytesPerRequest: p.GetBytesPerRequest()}
		}
		f.Resources = append(f.Resources, yr)
	}
	return yaml.Marshal(&f)
}
