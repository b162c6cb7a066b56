package controller

import (
	"errors"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/yamlstrict"
)

func TestParseObjectsValid(t *testing.T) {
	b, err := os.ReadFile("testdata/objects.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseObjects(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Sites) != 2 || len(o.Mirrors) != 2 || len(o.Resources) != 2 {
		t.Fatalf("parsed %d/%d/%d", len(o.Sites), len(o.Mirrors), len(o.Resources))
	}
	if err := ValidateObjects(o, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	r := o.Resources[0]
	if r.GetAffinity().GetTimeoutSeconds() != 1800 || r.GetThresholds().GetMaxLagSeconds() != 30 ||
		r.GetMirrorPolicy().GetMode() != pb.MirrorMode_MIRROR_MODE_PREDICTIVE || r.GetProtocol() != pb.Protocol_PROTOCOL_TCP {
		t.Fatalf("resource %v", r)
	}
	if m := o.Mirrors[0]; m.GetServiceTimeMs() != 2 || m.GetState() != pb.MirrorState_MIRROR_STATE_ACTIVE {
		t.Fatalf("mirror %v", m)
	}
	if o.Mirrors[1].GetState() != pb.MirrorState_MIRROR_STATE_DRAINING {
		t.Fatal(o.Mirrors[1])
	}
	if m := o.Mirrors[1]; m.GetEncap() != pb.Encapsulation_ENCAPSULATION_GUE || m.GetGuePort() != 6080 {
		t.Fatalf("GUE mirror %v", m)
	}
	if m := o.Mirrors[0]; m.GetEncap() != pb.Encapsulation_ENCAPSULATION_UNSPECIFIED || m.GetGuePort() != 0 {
		t.Fatalf("IPIP mirror %v", m)
	}
}

// Each case breaks one field of a valid file; the error must name it.
func TestParseObjectsNamesTheField(t *testing.T) {
	base, err := os.ReadFile("testdata/objects.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, from, to, field string
	}{
		{"unknown field", "capacity_rps: 20000", "capacity: 20000", "field capacity not found"},
		{"bad prefix", "10.1.0.0/16,", "10.1.0.0/33,", "sites[0] (eu).client_prefixes[0]"},
		{"host bits", "10.1.0.0/16,", "10.1.0.1/16,", "sites[0] (eu).client_prefixes[0]"},
		{"latitude", "latitude: 48.85", "latitude: 98.85", "sites[0] (eu).location.latitude"},
		{"negative capacity", "capacity_rps: 20000", "capacity_rps: -1", "sites[0] (eu).capacity_rps"},
		{"node listed twice", "capacity_rps: 20000", "capacity_rps: 20000\n    nodes: [edge-1, edge-1]", `sites[0] (eu).nodes[1]: "edge-1" listed twice`},
		{"node with a space", "capacity_rps: 20000", "capacity_rps: 20000\n    nodes: [\"edge 1\"]", "sites[0] (eu).nodes[0]"},
		{"bad name", "name: eu\n", "name: EU West\n", "sites[0] (EU West).name"},
		{"mirror address", "address: 192.0.2.10", "address: 192.0.2.300", "mirrors[0] (paris).address"},
		{"mirror state", "state: draining", "state: sleeping", "mirrors[1].state"},
		{"service time", "service_time: 2ms", "service_time: soon", "service_time"},
		{"service time beyond a duration", "service_time: 2ms", "service_time: 2562047h47m16.854775807s", "mirrors[0] (paris).service_time"},
		{"encap", "encap: gue", "encap: vxlan", "mirrors[1].encap"},
		{"GUE without port", "    gue_port: 6080\n", "", "mirrors[1] (nyc).gue_port: 0"},
		{"GUE port out of range", "gue_port: 6080", "gue_port: 70000", "mirrors[1].gue_port: 70000"},
		{"GUE port without GUE", "service_time: 2ms", "service_time: 2ms\n    gue_port: 6080", "mirrors[0] (paris).gue_port: 6080 is only for encap gue"},
		{"missing site", "    site: eu\n", "", "mirrors[0] (paris).site"},
		{"vip", "vips: [203.0.113.5,", "vips: [203.0.113.500,", "resources[0] (disk-42).vips[0]"},
		{"port", "ports: [443, 10809]", "ports: [443, 70000]", "resources[0].ports[1]"},
		{"port twice", "ports: [443, 10809]", "ports: [443, 443]", "resources[0] (disk-42).ports[1]"},
		{"protocol", "protocol: tcp\n    origin: paris", "protocol: sctp\n    origin: paris", "resources[0].protocol"},
		{"no origin", "origin: paris\n", "origin: \"\"\n", "resources[0] (disk-42).origin"},
		{"policy mode", "mode: predictive", "mode: psychic", "resources[0].mirror_policy.mode"},
		{"policy lists origin", "mirrors: [nyc]", "mirrors: [paris]", "resources[0] (disk-42).mirror_policy.mirrors[0]"},
		{"max mirrors", "max_mirrors: 3", "max_mirrors: 1", "resources[0] (disk-42).mirror_policy.max_mirrors"},
		{"working set", "size_bytes: 21474836480", "size_bytes: 21474836480\n    working_set_bytes: 21474836480", "resources[0] (disk-42).working_set_bytes"},
		{"affinity timeout", "timeout: 30m", "timeout: 0s", "resources[0].affinity.timeout"},
		{"affinity prefix", "prefix_v4: 24", "prefix_v4: 40", "resources[0].affinity.prefix_v4"},
		{"scores", "retire_score: 0.3", "retire_score: 0.7", "resources[0] (disk-42).thresholds.retire_score"},
		{"score range", "mirror_score: 0.6", "mirror_score: 1.6", "resources[0] (disk-42).thresholds.mirror_score"},
		{"round trips", "round_trips: 2", "round_trips: -2", "resources[0] (disk-42).profile.round_trips"},
		{"second document", "    origin: nyc", "    origin: nyc\n    colour: red", "document 1"},
		{"second document index", "vips: [203.0.113.6]", "vips: [nope]", "resources[1] (web).vips[0]"},
		{"not yaml", "sites:", "sites: [", "document 0"},
		{"retire score above the default mirror score", "mirror_score: 0.6, retire_score: 0.3", "retire_score: 0.9", "resources[0] (disk-42).thresholds.retire_score: 0.9 must be below mirror_score 0.8"},
		{"sub-second max lag", "max_lag: 30s", "max_lag: 500ms", "resources[0].thresholds.max_lag: 500ms is not whole seconds"},
		{"fractional affinity timeout", "timeout: 30m", "timeout: 1.5s", "resources[0].affinity.timeout: 1.5s is not whole seconds"},
		{"IPv4-mapped prefix", "[10.2.0.0/16]", "[\"::ffff:10.2.0.0/112\"]", "sites[1] (us).client_prefixes[0]: ::ffff:10.2.0.0/112 is IPv4-mapped and matches no client (did you mean 10.2.0.0/16?)"},
		{"multicast mirror", "address: 192.0.2.10", "address: 224.0.0.10", "mirrors[0] (paris).address: 224.0.0.10: not a unicast address"},
		{"mirror with a zone", "address: 192.0.2.10", "address: \"fe80::10%eth0\"", "mirrors[0] (paris).address: fe80::10%eth0: an address with a zone"},
		{"unspecified vip", "vips: [203.0.113.5,", "vips: [0.0.0.0,", "resources[0] (disk-42).vips[0]: 0.0.0.0: not a unicast address"},
		{"vip with a zone", "vips: [203.0.113.5,", "vips: [\"fe80::5%eth0\",", "resources[0] (disk-42).vips[0]: fe80::5%eth0: an address with a zone"},
		{"fractional port", "ports: [443, 10809]", "ports: [443, 10809.5]", "resources[0].ports[1]: 10809.5 is not a whole number (line 27)"},
		{"fractional GUE port", "gue_port: 6080", "gue_port: 6080.9", "mirrors[1].gue_port: 6080.9"},
		{"fractional affinity prefix", "prefix_v4: 24", "prefix_v4: 23.5", "resources[0].affinity.prefix_v4: 23.5"},
		{"fractional size", "size_bytes: 21474836480", "size_bytes: 2.5", "resources[0].size_bytes: 2.5"},
		{"fractional in the second document", "ports: [80]", "ports: [80.5]", "document 1: resources[0].ports[0]: 80.5"},
		{"mirror twice across documents", "resources:\n  - name: web", "mirrors:\n  - {name: paris, site: us, address: 192.0.2.30}\nresources:\n  - name: web", "mirrors[2] (paris).name: listed twice (also mirrors[0])"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := string(base)
			if !strings.Contains(src, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			_, err := ParseObjects([]byte(strings.Replace(src, tc.from, tc.to, 1)))
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want ErrInvalid naming %q", err, tc.field)
			}
		})
	}
}

// Cross-object checks run on the whole set.
func TestValidateObjectsReferences(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*pb.Objects)
		lim   Limits
		field string
	}{
		{"site twice", func(o *pb.Objects) { o.Sites = append(o.Sites, &pb.Site{Name: "eu"}) }, Limits{}, `site "eu": name: defined twice`},
		{"prefix in two sites", func(o *pb.Objects) { o.Sites[1].ClientPrefixes = []string{"10.1.0.0/16"} }, Limits{}, `site "us": client_prefixes[0]`},
		{"node in two sites", func(o *pb.Objects) {
			o.Sites[0].Nodes, o.Sites[1].Nodes = []string{"edge-1"}, []string{"edge-2", "edge-1"}
		},
			Limits{}, `site "us": nodes[1]: "edge-1" already belongs to site "eu"`},
		{"unknown site", func(o *pb.Objects) { o.Mirrors[0].Site = "mars" }, Limits{}, `mirror "paris": site: "mars"`},
		{"address twice", func(o *pb.Objects) { o.Mirrors[1].Address = "192.0.2.10" }, Limits{}, `mirror "nyc": address`},
		{"unknown origin", func(o *pb.Objects) { o.Resources[0].Origin = "tokyo" }, Limits{}, `resource "disk": origin: "tokyo"`},
		{"unknown policy mirror", func(o *pb.Objects) { o.Resources[0].MirrorPolicy.Mirrors = []string{"tokyo"} }, Limits{}, `mirror_policy.mirrors[0]`},
		{"unknown policy site", func(o *pb.Objects) { o.Resources[0].MirrorPolicy.Sites = []string{"mars"} }, Limits{}, `mirror_policy.sites[0]`},
		{"vip twice", func(o *pb.Objects) {
			r := proto.Clone(o.Resources[0]).(*pb.Resource)
			r.Name = "copy"
			o.Resources = append(o.Resources, r)
		}, Limits{}, `resource "copy": vips[0]`},
		{"vip of two resources through zones", func(o *pb.Objects) {
			r := proto.Clone(o.Resources[0]).(*pb.Resource)
			r.Name, r.Vips = "copy", []string{"fe80::5%b"}
			o.Resources[0].Vips = []string{"fe80::5%a"}
			o.Resources = append(o.Resources, r)
		}, Limits{}, `resource "disk": vips[0]: fe80::5%a: an address with a zone`},
		{"too many vips", func(o *pb.Objects) { o.Resources[0].Ports = []uint32{1, 2, 3} }, Limits{MaxVIPs: 2}, "VIPs exceed"},
		{"too many routes", func(o *pb.Objects) {}, Limits{MaxRoutes: 2}, "routes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := testObjects()
			tc.edit(o)
			err := ValidateObjects(o, tc.lim)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want one naming %q", err, tc.field)
			}
		})
	}
	if err := ValidateObjects(testObjects(), DefaultLimits()); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseObjects: arbitrary input is parsed or refused with ErrInvalid,
// never a panic, and what parses also survives the set validation.
func FuzzParseObjects(f *testing.F) {
	b, err := os.ReadFile("testdata/objects.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("sites: [{name: a, client_prefixes: [::/0]}]"))
	f.Add([]byte("resources: [{name: r, vips: [1.2.3.4], ports: [1], protocol: udp, origin: m}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseObjects(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		if err := ValidateObjects(o, DefaultLimits()); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error without ErrInvalid: %v", err)
		}
	})
}

// What get prints, apply reads back to the same objects.
func TestFormatObjectsRoundTrip(t *testing.T) {
	b, err := os.ReadFile("testdata/objects.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseObjects(b)
	if err != nil {
		t.Fatal(err)
	}
	o.Sites[0].Id = 4
	out, err := FormatObjects(o)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseObjects(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	o.Sites[0].Id = 0 // apply ignores IDs
	if !proto.Equal(o, back) {
		t.Fatalf("round trip differs:\n%v\n%v", o, back)
	}
	if !strings.Contains(string(out), "id: 4") {
		t.Fatalf("ids not printed:\n%s", out)
	}
}

// TestOperationsDocumentsEveryField: docs/OPERATIONS.md §6 lists every
// field of the edge-agent's configuration and of the objects apply reads,
// and only those.
func TestOperationsDocumentsEveryField(t *testing.T) {
	b, err := os.ReadFile("../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		heading string
		typ     reflect.Type
	}{{"### edge-agent", reflect.TypeFor[agent.Config]()}, {"### controller objects", reflect.TypeFor[objectsFile]()}} {
		_, sec, ok := strings.Cut(string(b), "\n"+tc.heading)
		if !ok {
			t.Fatalf("OPERATIONS.md has no %q section", tc.heading)
		}
		if i := strings.Index(sec, "\n#"); i >= 0 {
			sec = sec[:i]
		}
		var doc []string
		for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(sec, -1) {
			doc = append(doc, m[1])
		}
		real := yamlstrict.Paths(tc.typ)
		for _, p := range real {
			if !slices.Contains(doc, p) {
				t.Errorf("%s: %s is not documented", tc.heading, p)
			}
		}
		for _, p := range doc {
			if !slices.Contains(real, p) {
				t.Errorf("%s: documents %s, which is not read", tc.heading, p)
			}
		}
	}
}
