package agent

import (
	"net/netip"
	"slices"
	"testing"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

func TestUnlistedEdges(t *testing.T) {
	es := edgeSourcesFromProto([]*pb.EdgeSource{
		{Node: "edge-b", Addresses: []string{"2001:db8:1::b", "192.0.2.11"}},
		{Node: "edge-a", Addresses: []string{"::ffff:192.0.2.10", "192.0.2.10", "not-an-address"}},
		{Node: "self", Addresses: []string{"203.0.113.1"}},
		{Node: "edge-c", Addresses: []string{"198.51.100.7"}},
	}, "self")
	want := []edgeSource{
		{"edge-a", netip.MustParseAddr("192.0.2.10")},
		{"edge-b", netip.MustParseAddr("192.0.2.11")},
		{"edge-b", netip.MustParseAddr("2001:db8:1::b")},
		{"edge-c", netip.MustParseAddr("198.51.100.7")},
	}
	if !slices.Equal(es, want) {
		t.Fatalf("parsed %v, want %v (sorted, unmapped, once, without self or what does not parse)", es, want)
	}
	for _, tc := range []struct {
		name string
		srcs []string // decap_sources
		want []string // edge=addr
	}{
		{"no decap_sources: any source", nil, nil},
		{"network holds all", []string{"192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"}, nil},
		{"IPv6 missing", []string{"192.0.2.0/24", "198.51.100.7"}, []string{"edge-b=2001:db8:1::b"}},
		{"one host listed", []string{"192.0.2.10"}, []string{"edge-b=192.0.2.11", "edge-b=2001:db8:1::b", "edge-c=198.51.100.7"}},
		// An IPv6 prefix lists IPv6 sources only, in the data plane too
		// (pm_decap_sources values carry the family).
		{"::/0 lists no IPv4 edge", []string{"::/0"}, []string{"edge-a=192.0.2.10", "edge-b=192.0.2.11", "edge-c=198.51.100.7"}},
		{"other network", []string{"10.0.0.0/8"}, []string{"edge-a=192.0.2.10", "edge-b=192.0.2.11", "edge-b=2001:db8:1::b", "edge-c=198.51.100.7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, e := range unlistedEdges(es, (&Config{DecapSources: tc.srcs}).decapSources()) {
				got = append(got, e.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("unlisted %v, want %v", got, tc.want)
			}
		})
	}
	a := &Agent{cfg: &Config{DecapSources: []string{"192.0.2.10", "2001:db8::/32", "192.0.2.10/32"}}}
	if got := a.decapSourcesReported(); !slices.Equal(got, []string{"192.0.2.10/32", "2001:db8::/32"}) {
		t.Fatalf("reported decap sources %v", got)
	}
}
