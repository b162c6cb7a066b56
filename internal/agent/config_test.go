package agent

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
)

func TestParseConfigValid(t *testing.T) {
	b, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	comp, err := c.State.Compile(c.MapsConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(comp.VIPs) != 3 || len(comp.Routes) != 3 || comp.DefaultRegion != 1 {
		t.Fatalf("compiled %+v", comp)
	}
	o := comp.VIPs[maps.VIP{Addr: mustAddr("192.0.2.1"), Port: 80, Proto: maps.TCP}]
	if o.AffinityTimeout != 30*time.Minute || o.AffinityPrefixV4 != 24 || o.Resource != 7 {
		t.Fatalf("vip options %+v", o)
	}
	if comp.Mirrors[2].State != maps.MirrorDraining {
		t.Fatalf("mirror state %v", comp.Mirrors[2].State)
	}
	if got := comp.Routes[maps.RouteKey{Resource: 7, Region: maps.RegionAny}]; got[3] != 1 {
		t.Fatalf("wildcard route %v", got)
	}
	if c.MapsConfig().TableSlots != 256 || c.MapsConfig().MaxVIPs != maps.DefaultConfig().MaxVIPs {
		t.Fatalf("limits not applied: %+v", c.MapsConfig())
	}
	if m := comp.Mirrors[3]; m.Encap != maps.EncapGUE || m.GUEPort != 6080 {
		t.Fatalf("GUE mirror compiled as %+v", m)
	}
	if m := comp.Mirrors[1]; m.Encap != maps.EncapIPIP || m.GUEPort != 0 {
		t.Fatalf("IPIP mirror compiled as %+v", m)
	}
	mc, err := ParseConfig([]byte(strings.Replace(string(b), "role: edge", "role: mirror\ndecap_gue_port: 6080", 1)))
	if err != nil || mc.DecapGUEPort != 6080 {
		t.Fatalf("decap_gue_port: %v, %v", mc, err)
	}
	if c.NextHopTTL() != maps.DefaultNextHopTTL {
		t.Fatalf("next-hop TTL %v, want the default", c.NextHopTTL())
	}
	for s, want := range map[string]time.Duration{"0s": 0, "400ms": 400 * time.Millisecond} {
		c, err := ParseConfig(append([]byte("nexthop_cache_ttl: "+s+"\n"), b...))
		if err != nil || c.NextHopTTL() != want {
			t.Fatalf("nexthop_cache_ttl: %s -> %v, %v; want %v", s, c.NextHopTTL(), err, want)
		}
	}
}

// TestParseConfigErrors: every invalid field fails with its path named.
func TestParseConfigErrors(t *testing.T) {
	base, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		old, new string // textual edit of the valid file
		want     string
	}{
		{"unknown field", "node: edge-test", "node: edge-test\nnodes: x", "field nodes not found"},
		{"negative active probe interval", "node: edge-test", "node: edge-test\nprobe: {active_interval: -1s}", "probe.active_interval"},
		{"negative echo rate", "node: edge-test", "node: edge-test\nprobe: {echo_rate: -5}", "probe.echo_rate"},
		{"GUE on the probe port", "role: edge", "role: mirror\ndecap_gue_port: 9461", "decap_gue_port: 9461 is also probe.port"},
		{"bad role", "role: edge", "role: router", "role: \"router\""},
		{"next-hop TTL too long", "node: edge-test", "node: edge-test\nnexthop_cache_ttl: 11s", "nexthop_cache_ttl"},
		{"next-hop TTL negative", "node: edge-test", "node: edge-test\nnexthop_cache_ttl: -1ms", "nexthop_cache_ttl"},
		{"no interfaces", "interfaces: [pa0]", "interfaces: []", "interfaces:"},
		{"bad xdp mode", "pin_dir:", "xdp_mode: turbo\npin_dir:", "xdp_mode"},
		{"xdp_chain empty", "pin_dir:", "xdp_chain: {}\npin_dir:", "xdp_chain: set pinned or take_over_attached"},
		{"xdp_chain both", "pin_dir:", "xdp_chain: {pinned: /sys/fs/bpf/fw, take_over_attached: true}\npin_dir:", "xdp_chain: pinned and take_over_attached"},
		{"xdp_chain relative pin", "pin_dir:", "xdp_chain: {pinned: fw}\npin_dir:", "xdp_chain.pinned"},
		{"xdp_chain restore without take-over", "pin_dir:", "xdp_chain: {pinned: /sys/fs/bpf/fw, restore_on_detach: true}\npin_dir:", "xdp_chain.restore_on_detach"},
		{"xdp_chain unknown field", "pin_dir:", "xdp_chain: {take_over: true}\npin_dir:", "field take_over not found"},
		{"relative pin dir", "pin_dir: /sys/fs/bpf/will-be-replaced", "pin_dir: bpf", "pin_dir"},
		{"slots not power of two", "table_slots: 256", "table_slots: 300", "limits.table_slots"},
		{"outer source family", "metrics_addr:", "outer_source_v4: \"fd00::1\"\nmetrics_addr:", "outer_source_v4"},
		{"prefix host bits", "198.51.100.0/24,", "198.51.100.1/24,", "regions[0].prefixes[0]"},
		{"bad prefix", "203.0.113.0/24", "203.0.113.0/33", "regions[1].prefixes[0]"},
		{"duplicate prefix", "[203.0.113.0/24]", "[198.51.100.0/24]", "already belongs to region eu"},
		{"region id 0", "{name: us, id: 2", "{name: us, id: 0", "regions[1].id"},
		{"duplicate region id", "{name: us, id: 2", "{name: us, id: 1", "regions[1].id: 1 used twice"},
		{"unknown default region", "default_region: eu", "default_region: asia", "default_region"},
		{"mirror id too large", "{name: paris6, id: 3", "{name: paris6, id: 64", "mirrors[2].id"},
		{"mirror address", "10.77.0.11", "10.77.0.300", "mirrors[1].address"},
		{"mirror state", "state: draining", "state: sleeping", "mirrors[1].state"},
		{"mirror encap", "address: 10.77.0.10}", "address: 10.77.0.10, encap: vxlan}", "mirrors[0].encap"},
		{"GUE without port", "address: 10.77.0.10}", "address: 10.77.0.10, encap: gue}", "mirrors[0].gue_port: required"},
		{"GUE port without GUE", "address: 10.77.0.10}", "address: 10.77.0.10, gue_port: 6080}", "mirrors[0].gue_port: only with encap gue"},
		{"GUE port out of range", "address: 10.77.0.10}", "address: 10.77.0.10, encap: gue, gue_port: 70000}", "mirrors[0].gue_port: 70000"},
		{"decap GUE port on an edge", "node: edge-test", "node: edge-test\ndecap_gue_port: 6080", "decap_gue_port: only for role mirror or both"},
		{"decap addresses on an edge", "node: edge-test", "node: edge-test\ndecap_addresses: [192.0.2.10]", "decap_addresses: only for role mirror or both"},
		{"xdp_root without its array", "node: edge-test", "node: edge-test\nxdp_root: {key: 1}", "xdp_root.prog_array: missing"},
		{"xdp_root relative path", "node: edge-test", "node: edge-test\nxdp_root: {prog_array: root/progs}", "xdp_root.prog_array: \"root/progs\" must be an absolute path"},
		{"xdp_root with a take-over", "node: edge-test", "node: edge-test\nxdp_root: {prog_array: /sys/fs/bpf/root/progs}\nxdp_chain: {take_over_attached: true}", "xdp_root: excludes xdp_chain.take_over_attached"},
		{"service check timeout above its interval", "node: edge-test", "node: edge-test\nservice_check: {interval: 500ms}", "service_check.timeout: 1s must be below service_check.interval 500ms"},
		{"http check path", "node: edge-test", "node: edge-test\nservice_check: {http: {path: healthz, ports: [80]}}", `service_check.http.path: "healthz" does not start with /`},
		{"pprof address without port", "node: edge-test", "node: edge-test\npprof_addr: 127.0.0.1", "pprof_addr: "},
		{"pprof port out of range", "node: edge-test", "node: edge-test\npprof_addr: 127.0.0.1:70000", "pprof_addr: "},
		{"http check without ports", "node: edge-test", "node: edge-test\nservice_check: {http: {path: /healthz}}", "service_check.http: neither ports nor tls_ports"},
		{"http check port range", "node: edge-test", "node: edge-test\nservice_check: {http: {ports: [80, 70000]}}", "service_check.http.ports[1]: 70000 is not a port"},
		{"http check port twice", "node: edge-test", "node: edge-test\nservice_check: {http: {ports: [443], tls_ports: [443]}}", "service_check.http.tls_ports[0]: port 443 is already in service_check.http.ports"},
		{"http check expect", "node: edge-test", "node: edge-test\nservice_check: {http: {ports: [80], expect: 200-700}}", `service_check.http.expect: "200-700"`},
		{"http check expect order", "node: edge-test", "node: edge-test\nservice_check: {http: {ports: [80], expect: 299-200}}", `service_check.http.expect: "299-200"`},
		{"udp check without ports", "node: edge-test", "node: edge-test\nservice_check: {udp: {send: '00'}}", "service_check.udp.ports: no port listed"},
		{"udp check without payload", "node: edge-test", "node: edge-test\nservice_check: {udp: {ports: [53]}}", "service_check.udp.send: missing"},
		{"udp check payload not hex", "node: edge-test", "node: edge-test\nservice_check: {udp: {ports: [53], send: xyz}}", "service_check.udp.send: not hex"},
		{"udp check port twice", "node: edge-test", "node: edge-test\nservice_check: {udp: {ports: [53, 53], send: '00'}}", "service_check.udp.ports[1]: port 53 is already in service_check.udp.ports"},
		{"http check unknown field", "node: edge-test", "node: edge-test\nservice_check: {http: {port: 80}}", "field port not found"},
		{"decap GUE port out of range", "role: edge\ninterfaces: [pa0]", "role: mirror\ninterfaces: [pa0]\ndecap_gue_port: 0x10000", "decap_gue_port: 65536"},
		{"vip syntax", "192.0.2.1:53/udp", "192.0.2.1:53/sctp", "resources[0].vips[1]"},
		{"vip without port", "192.0.2.1:53/udp", "192.0.2.1/udp", "resources[0].vips[1]"},
		{"route to unknown mirror", "us: {dallas: 1}", "us: {tokyo: 1}", `resources[0].routes["us"]: mirror "tokyo"`},
		{"route for unknown region", "us: {dallas: 1}", "asia: {dallas: 1}", `region "asia" is not defined`},
		{"zero weights", "us: {dallas: 1}", "us: {dallas: 0}", "every weight is zero"},
		{"affinity prefix", "prefix_v4: 24", "prefix_v4: 40", "resources[0].affinity.prefix_v4"},
		{"affinity timeout", "timeout: 30m", "timeout: soon", `parse config: resources[0].affinity.timeout: duration "soon": time: invalid duration "soon" (line 26)`},
		{"empty duration", "timeout: 30m", "timeout: ''", `resources[0].affinity.timeout: duration "": time: invalid duration ""`},
		{"duration as a list", "timeout: 30m", "timeout: [1s]", "resources[0].affinity.timeout: want a duration such as 30s or 1h30m (line 26)"},
		{"probe interval without unit", "node: edge-test", "node: edge-test\nprobe: {interval: 2}", `probe.interval: duration "2": time: missing unit in duration "2" (line 2)`},
		{"fractional weight", "us: {dallas: 1}", "us: {dallas: 0.5}", `parse config: resources[0].routes["us"]["dallas"]: 0.5 is not a whole number (line 29)`},
		{"fractional region id", "{name: us, id: 2", "{name: us, id: 1.5", "regions[1].id: 1.5 is not a whole number"},
		{"fractional GUE port", "gue_port: 6080}", "gue_port: 6080.5}", "mirrors[2].gue_port: 6080.5"},
		{"fractional affinity prefix", "prefix_v4: 24", "prefix_v4: 24.5", "resources[0].affinity.prefix_v4: 24.5"},
		{"fractional limit", "max_sessions: 4096", "max_sessions: 4096.5", "limits.max_sessions: 4096.5"},
		{"vip with a zone", "192.0.2.1:53/udp", "\"[fe80::1%eth0]:53/udp\"", "resources[0].vips[1]: \"[fe80::1%eth0]:53/udp\": fe80::1%eth0: an address with a zone"},
		{"unspecified vip", "192.0.2.1:53/udp", "0.0.0.0:53/udp", "resources[0].vips[1]: \"0.0.0.0:53/udp\": 0.0.0.0: not a unicast address"},
		{"multicast mirror", "10.77.0.11", "224.0.0.5", "mirrors[1].address: 224.0.0.5: not a unicast address"},
		{"unspecified mirror", "10.77.0.11", "\"::\"", "mirrors[1].address: ::: not a unicast address"},
		{"mirror with a zone", "10.77.0.11", "\"fe80::11%eth0\"", "mirrors[1].address: fe80::11%eth0: an address with a zone"},
		{"IPv4-mapped prefix", "[203.0.113.0/24]", "[\"::ffff:203.0.113.0/120\"]", "regions[1].prefixes[0]: ::ffff:203.0.113.0/120 is IPv4-mapped and matches no packet (did you mean 203.0.113.0/24?)"},
		{"IPv4-mapped prefix shadowing another region's", "[203.0.113.0/24]", "[\"::ffff:198.51.100.0/120\"]", "regions[1].prefixes[0]: ::ffff:198.51.100.0/120 is IPv4-mapped"},
		{"unspecified decap address", "role: edge", "role: mirror\ndecap_addresses: [0.0.0.0]", "decap_addresses[0]: 0.0.0.0: not a unicast address"},
		{"decap source not an address", "role: edge", "role: mirror\ndecap_sources: [10.0.0.0/8, edge-eu]", `decap_sources[1]: ParseAddr("edge-eu")`},
		{"decap source prefix too long", "role: edge", "role: mirror\ndecap_sources: [10.0.0.0/33]", `decap_sources[0]: netip.ParsePrefix("10.0.0.0/33"): prefix length out of range`},
		{"IPv4-mapped decap source prefix", "role: edge", "role: mirror\ndecap_sources: [\"::ffff:10.0.0.0/104\"]", "decap_sources[0]: ::ffff:10.0.0.0/104: write an IPv4 prefix as IPv4"},
		{"decap source with a zone", "role: edge", "role: mirror\ndecap_sources: [\"fe80::1%eth0\"]", "decap_sources[0]: fe80::1%eth0: an address with a zone"},
		{"multicast decap source", "role: edge", "role: mirror\ndecap_sources: [10.0.0.1, 239.1.1.1]", "decap_sources[1]: 239.1.1.1: not a unicast address"},
		{"decap source prefix with host bits", "role: edge", "role: mirror\ndecap_sources: [10.99.7.7/16]", "decap_sources[0]: 10.99.7.7/16 has host bits set (did you mean 10.99.0.0/16?)"},
		{"decap sources on an edge", "node: edge-test", "node: edge-test\ndecap_sources: [10.0.0.1]", "decap_sources: only for role mirror or both"},
		{"IPv4-mapped outer source v6", "metrics_addr:", "outer_source_v6: \"::ffff:192.0.2.7\"\nmetrics_addr:", "outer_source_v6: ::ffff:192.0.2.7 is the wrong family"},
		{"multicast outer source", "metrics_addr:", "outer_source_v4: 239.1.1.1\nmetrics_addr:", "outer_source_v4: 239.1.1.1: not a unicast address"},
		{"affinity timeout beyond 32-bit seconds", "timeout: 30m", "timeout: 2000000h", "resources[0].affinity.timeout: 2000000h0m0s out of (0, 1193046h28m15s]"},
		{"bad decap interface of role both", "role: edge\ninterfaces: [pa0]", "role: both\nrouter_interfaces: [pa0, pa1]\ndecap_interfaces: [\"a/b\"]", `decap_interfaces[0]: "a/b" is not an interface name`},
		{"interface listed twice", "interfaces: [pa0]", "interfaces: [pa0, pa1, pa0]", "interfaces[2]: pa0 listed twice (also interfaces[0])"},
		{"interface named ..", "interfaces: [pa0]", "interfaces: [\"..\"]", `interfaces[0]: ".." is not an interface name`},
		{"interface name with a colon", "interfaces: [pa0]", "interfaces: [\"eth0:1\"]", `interfaces[0]: "eth0:1" is not an interface name`},
		{"interface name with NUL", "interfaces: [pa0]", "interfaces: [\"pa\\0x\"]", `interfaces[0]: "pa\x00x" is not an interface name`},
		{"metrics address without a port", "metrics_addr: 127.0.0.1:0", "metrics_addr: 9450", "metrics_addr: address 9450: missing port"},
		{"metrics port out of range", "metrics_addr: 127.0.0.1:0", "metrics_addr: 127.0.0.1:99999", `metrics_addr: "127.0.0.1:99999": port "99999" is not a number`},
		{"controller endpoint without port", "node: edge-test", "node: edge-test\ncontroller: {endpoints: [\"ctl:\"], site: eu, tls: {ca: a, cert: b, key: c}}", `controller.endpoints[0]: "ctl:": port missing`},
		{"controller endpoint port 0", "node: edge-test", "node: edge-test\ncontroller: {endpoints: [\"ctl:0\"], site: eu, tls: {ca: a, cert: b, key: c}}", `controller.endpoints[0]: "ctl:0": port 0`},
		{"empty controller server name", "node: edge-test", "node: edge-test\ncontroller: {endpoints: [\"ctl:7443\"], site: eu, server_names: [controller, \" \"], tls: {ca: a, cert: b, key: c}}", "controller.server_names[1]: empty name"},
		{"negative report interval", "node: edge-test", "node: edge-test\ncontroller: {endpoints: [\"ctl:7443\"], site: eu, report_interval: -1s, tls: {ca: a, cert: b, key: c}}", "controller.report_interval: -1s is negative"},
		{"replication peer port out of range", "node: edge-test", "node: edge-test\nreplication: {tls: {ca: a, cert: b, key: c}, peers: [{name: p, addr: \"10.0.0.1:70000\"}]}", `replication.peers[0].addr: "10.0.0.1:70000": port "70000"`},
		{"more IPv4 prefixes than the map holds", "max_sessions: 4096", "max_sessions: 4096\n  max_prefixes_v4: 1", "regions: 2 IPv4 prefixes exceed limits.max_prefixes_v4 1"},
		{"more IPv6 prefixes than the map holds", "max_counters: 1024\ndefault_region: eu\nregions:\n  - {name: eu, id: 1, prefixes: [198.51.100.0/24, \"2001:db8:1::/48\"]}",
			"max_counters: 1024\n  max_prefixes_v6: 1\ndefault_region: eu\nregions:\n  - {name: eu, id: 1, prefixes: [198.51.100.0/24, \"2001:db8:1::/48\", \"2001:db8:2::/48\"]}",
			"regions: 2 IPv6 prefixes exceed limits.max_prefixes_v6 1"},
		{"second document", "node: edge-test", "node: edge-test\n---\nnode: other", "more than one YAML document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.Replace(string(base), tt.old, tt.new, 1)
			if in == string(base) {
				t.Fatalf("edit %q not applied", tt.old)
			}
			_, err := ParseConfig([]byte(in))
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %q", err, tt.want)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	b, _ := os.ReadFile("testdata/edge.yaml")
	f.Add(b)
	f.Add([]byte("role: edge\ninterfaces: [x]\n"))
	f.Add([]byte("role: mirror\ninterfaces: [x]\ndecap_sources: [10.0.0.1, \"fd00::/8\"]\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseConfig(in)
		if err != nil {
			return
		}
		// Anything accepted must compile and re-validate.
		if _, err := c.State.Compile(c.MapsConfig()); err != nil {
			t.Fatalf("accepted config does not compile: %v", err)
		}
	})
}

// TestDecapSources: addresses become host prefixes, IPv4-mapped
// addresses unmapped, repeats dropped.
func TestDecapSources(t *testing.T) {
	c := &Config{DecapSources: []string{"10.99.0.1", "10.99.0.0/16", "::ffff:10.99.0.1", "fd99::1", "fd99::/64", "10.99.0.0/16"}}
	got := c.decapSources()
	want := []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32"), netip.MustParsePrefix("10.99.0.0/16"),
		netip.MustParsePrefix("fd99::1/128"), netip.MustParsePrefix("fd99::/64")}
	if !slices.Equal(got, want) {
		t.Fatalf("decap sources %v, want %v", got, want)
	}
	if got := (&Config{}).decapSources(); got != nil {
		t.Fatalf("no decap sources read as %v", got)
	}
}

// Decap addresses are unmapped as mirror addresses are: a tunnel packet
// for ::ffff:192.0.2.1 arrives as IPv4 (before, the IPv6 form was keyed
// and IPv4 tunnel packets to the address were not decapsulated).
func TestDecapAddressesUnmapped(t *testing.T) {
	got, err := decapAddresses(&Config{DecapAddresses: []string{"::ffff:192.0.2.1", "2001:db8::1"}})
	if err != nil || len(got) != 2 || got[0] != mustAddr("192.0.2.1") || got[1] != mustAddr("2001:db8::1") {
		t.Fatalf("decap addresses %v, %v", got, err)
	}
}

func TestParseVIP(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80/tcp":          "192.0.2.1:80/tcp",
		"[2001:db8::1]:443/UDP":     "[2001:db8::1]:443/udp",
		"[::ffff:192.0.2.9]:80/tcp": "192.0.2.9:80/tcp",
	} {
		v, err := ParseVIP(in)
		if err != nil || v.String() != want {
			t.Errorf("ParseVIP(%q) = %v, %v; want %s", in, v, err, want)
		}
	}
}

// TestConfigReloadable: a reload may change what apply re-reads; what the
// agent set up once at start is refused with the field named. Before,
// only limits, pin_dir, role, interfaces and xdp_chain were refused: a
// reload changing probe.port (the decap program passed probes to the new
// port while the responder listened on the old one), controller.endpoints,
// metrics_addr, xdp_mode or xdp_root was reported as applied and ran on
// the old setting, and one adding or removing the controller section left
// two sources of desired state.
func TestConfigReloadable(t *testing.T) {
	base, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const ctl = "\ncontroller: {endpoints: [\"ctl:7443\"], site: eu, tls: {ca: a, cert: b, key: c}}\n"
	const node = "node: edge-test"
	for _, tc := range []struct {
		name, extra, from, to, want string
	}{
		{"routes", "", "us: {dallas: 1}", "us: {dallas: 1, paris: 1}", ""},
		{"next-hop TTL", "", node, node + "\nnexthop_cache_ttl: 1s", ""},
		{"outer source", "", node, node + "\nouter_source_v4: 192.0.2.9", ""},
		{"service check", "", node, node + "\nservice_check: {interval: 10s}", ""},
		{"probe shortlist", "", node, node + "\nprobe: {shortlist: 8}", ""},
		{"controller utilization", ctl, "site: eu", "site: eu, utilization: none", ""},
		{"node", "", node, "node: other", "node: changes only with a restart"},
		{"metrics address", "", "metrics_addr: 127.0.0.1:0", "metrics_addr: 127.0.0.1:9999", "metrics_addr: changes only with a restart"},
		{"xdp mode", "", node, node + "\nxdp_mode: generic", "xdp_mode: changes only with a restart"},
		{"xdp root", "", node, node + "\nxdp_root: {prog_array: /sys/fs/bpf/root}", "xdp_root: changes only with a restart"},
		{"xdp chain", "", node, node + "\nxdp_chain: {take_over_attached: true}", "xdp_chain: changes only with a restart"},
		{"pin dir", "", "pin_dir: /sys/fs/bpf/will-be-replaced", "pin_dir: /sys/fs/bpf/other", "pin_dir: changes only with a restart"},
		{"interfaces", "", "interfaces: [pa0]", "interfaces: [pa0, pa1]", "interfaces: changes only with a restart"},
		{"limits", "", "max_sessions: 4096", "max_sessions: 8192", "limits: changes only with a restart"},
		{"probe interval", "", node, node + "\nprobe: {interval: 5s}", "probe.interval: changes only with a restart"},
		{"probe port", "", node, node + "\nprobe: {port: 9999}", "probe.port: changes only with a restart"},
		{"probe disabled", "", node, node + "\nprobe: {disabled: true}", "probe.disabled: changes only with a restart"},
		{"controller endpoints", ctl, "ctl:7443", "ctl2:7443", "controller.endpoints: changes only with a restart"},
		{"controller added", "", node, node + ctl, "controller: adding or removing"},
		{"controller removed", ctl, ctl, "\n", "controller: adding or removing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := string(base) + tc.extra
			old, err := ParseConfig([]byte(src))
			if err != nil {
				t.Fatal(err)
			}
			edited := strings.Replace(src, tc.from, tc.to, 1)
			if edited == src {
				t.Fatalf("edit %q not applied", tc.from)
			}
			now, err := ParseConfig([]byte(edited))
			if err != nil {
				t.Fatal(err)
			}
			err = now.reloadable(old)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestReloadKeepsFlagOverrides: the command line's overrides apply to the
// file read at a reload too. Before, `run --pin-dir` made every reload
// fail ("pin_dir … change only with a restart"): the file's pin_dir was
// read as a change (and --xdp-mode, --metrics-addr silently undone).
func TestReloadKeepsFlagOverrides(t *testing.T) {
	b, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, withOverrides := range []bool{false, true} {
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		flags := func(c *Config) { c.PinDir, c.XDPMode = "/sys/fs/bpf/from-flag", XDPGeneric }
		flags(cfg)
		a := New(cfg, path, slog.New(slog.DiscardHandler))
		if withOverrides {
			a.Overrides = flags
		}
		edited := strings.Replace(string(b), "us: {dallas: 1}", "us: {dallas: 1, paris: 1}", 1)
		if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
			t.Fatal(err)
		}
		err = a.Reload()
		if !withOverrides {
			if err == nil || !strings.Contains(err.Error(), "xdp_mode: changes only with a restart") {
				t.Fatalf("reload without the overrides: %v, want the flags' xdp_mode read as a change", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("reload with the flags' overrides: %v", err)
		}
		if a.cfg.PinDir != "/sys/fs/bpf/from-flag" || a.cfg.XDPMode != XDPGeneric || a.cfg.State.Resources[0].Routes["us"]["paris"] != 1 {
			t.Fatalf("after reload: pin_dir %s, xdp_mode %s, routes %v", a.cfg.PinDir, a.cfg.XDPMode, a.cfg.State.Resources[0].Routes)
		}
	}
}

// TestStartChecksCertificatesFirst: certificate files that cannot complete
// a handshake, or a controller certificate for another node, fail Start
// naming the field, before the pin directory or a map is touched. Before,
// an expired certificate or one another CA signed loaded fine and failed
// every controller handshake (and replication session) at run time, and
// the controller refused every registration of a node its certificate
// does not name, after the static state had been written.
func TestStartChecksCertificatesFirst(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, name string, validity time.Duration) TLSFiles {
		leaf, err := ca.Issue(name, nil, validity)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pki.WriteLeaf(filepath.Join(dir, name), name, ca, leaf)
		if err != nil {
			t.Fatal(err)
		}
		return TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	good, expired, foreign := issue(ca, "edge-test", time.Hour), issue(ca, "old", -time.Minute), issue(other, "foreign", time.Hour)
	foreign.CA = good.CA
	b, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"expired controller certificate", func(c *Config) {
			c.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: expired}
		}, "controller.tls: tls cert " + expired.Cert},
		{"controller certificate of another CA", func(c *Config) {
			c.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: foreign}
		}, "signed by unknown authority"},
		{"controller certificate of another node", func(c *Config) {
			c.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: issue(ca, "edge-other", time.Hour)}
		}, `controller.tls.cert: ` + filepath.Join(dir, "edge-other", "edge-other.pem") + ` is for "edge-other", not node "edge-test"`},
		{"replication key missing", func(c *Config) {
			c.Replication = &Replication{TLS: TLSFiles{CA: good.CA, Cert: good.Cert, Key: filepath.Join(dir, "none.pem")}}
		}, "replication.tls: load key pair"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig(b)
			if err != nil {
				t.Fatal(err)
			}
			cfg.PinDir = filepath.Join(dir, "pins-"+strings.ReplaceAll(tc.name, " ", "-"))
			tc.edit(cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the file validates: %v", err)
			}
			a := New(cfg, "", slog.New(slog.DiscardHandler))
			err = a.Start()
			if err == nil {
				a.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start: %v, want an error with %q", err, tc.want)
			}
			if _, err := os.Stat(cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pin dir touched: %v", err)
			}
		})
	}
}
