package controller

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

func TestCheckOuterSources(t *testing.T) {
	for _, tc := range []struct {
		name string
		srcs []string
		want string // error substring; "" accepts
	}{
		{"none", nil, ""},
		{"one per family", []string{"192.0.2.10", "2001:db8::10"}, ""},
		{"private", []string{"10.1.2.3", "fd00::3"}, ""},
		{"IPv4-mapped", []string{"::ffff:192.0.2.10"}, ""},
		{"prefix", []string{"10.0.0.0/8"}, `outer_sources[0]: ParseAddr("10.0.0.0/8")`},
		{"unspecified", []string{"192.0.2.1", "0.0.0.0"}, "outer_sources[1]: 0.0.0.0 is not a unicast address"},
		{"IPv6 unspecified", []string{"::"}, "outer_sources[0]: :: is not a unicast address"},
		{"multicast", []string{"239.1.1.1"}, "is not a unicast address"},
		{"link-local", []string{"fe80::1"}, "is not a unicast address"},
		{"zone", []string{"fe80::1%eth0"}, "is not a unicast address"},
		{"loopback", []string{"127.0.0.1"}, "is not a unicast address"},
		{"broadcast", []string{"255.255.255.255"}, "is not a unicast address"},
		{"too many", []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"}, "9 addresses, at most 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkOuterSources("register", tc.srcs)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		srcs []string
		want string
	}{
		{[]string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"}, ""},
		{[]string{"10.0.0.1"}, `decap_sources[0]: netip.ParsePrefix("10.0.0.1"): no '/'`},
		{[]string{"10.0.0.0/8", "10.1.0.0/8"}, "decap_sources[1]: 10.1.0.0/8 has host bits set"},
		{make([]string, 1025), "1025 prefixes, at most 1024"},
	} {
		err := checkDecapSources("report", tc.srcs)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkDecapSources(%.40q): %v, want %q", tc.srcs, err, tc.want)
		}
	}
	if got := decapSources([]string{"2001:db8::/32", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/8"}); !slices.Equal(got, []string{"10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32"}) {
		t.Errorf("canonical decap sources %v", got)
	}
	got := outerSources([]string{"2001:db8::10", "::ffff:192.0.2.10", "192.0.2.10", "192.0.2.9"})
	if want := []string{"192.0.2.9", "192.0.2.10", "2001:db8::10"}; !slices.Equal(got, want) {
		t.Fatalf("canonical %v, want %v", got, want)
	}
	if outerSources(nil) != nil {
		t.Fatal("no sources must stay nil")
	}
}

// TestEdgeSourcesListed: the desired state lists every edge's outer
// sources, from its registration and from its reports (a derived source
// follows its interface), keeps a disconnected edge's, and leaves out
// mirror-only nodes; a bad source ends the session.
func TestEdgeSourcesListed(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil)
	applyObjects(t, r.addr, testObjects())
	host := startAgent(t, "host-paris", "eu", pb.NodeRole_NODE_ROLE_MIRROR, r.addr)
	host.setOuterSources("192.0.2.99") // a mirror-only node's are not an edge's
	host.setDecapSources("2001:db8::/32", "192.0.2.0/24", "192.0.2.0/24")
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
	both := startAgentWith(t, "both-us", "us", pb.NodeRole_NODE_ROLE_BOTH, []string{"2001:db8::20", "198.51.100.20"}, r.addr)

	listed := func(want []*pb.EdgeSource) func() bool {
		return func() bool {
			st := host.current()
			if st == nil || len(st.GetEdgeSources()) != len(want) {
				return false
			}
			for i, e := range st.GetEdgeSources() {
				if !proto.Equal(e, want[i]) {
					return false
				}
			}
			return true
		}
	}
	// Registered with its sources: listed from the first version on.
	waitFor(t, "registered sources listed", 10*time.Second, listed([]*pb.EdgeSource{
		{Node: "both-us", Addresses: []string{"198.51.100.20", "2001:db8::20"}}}))

	// edge-eu registered none; its report brings them, canonical.
	eu.setOuterSources("2001:db8::10", "::ffff:192.0.2.10")
	waitFor(t, "reported sources listed", 10*time.Second, listed([]*pb.EdgeSource{
		{Node: "both-us", Addresses: []string{"198.51.100.20", "2001:db8::20"}},
		{Node: "edge-eu", Addresses: []string{"192.0.2.10", "2001:db8::10"}}}))

	// A derived source changed with the interface's address.
	eu.setOuterSources("192.0.2.11")
	waitFor(t, "changed source listed", 10*time.Second, listed([]*pb.EdgeSource{
		{Node: "both-us", Addresses: []string{"198.51.100.20", "2001:db8::20"}},
		{Node: "edge-eu", Addresses: []string{"192.0.2.11"}}}))
	adm := adminClient(t, r.addr, "admin")
	s, err := adm.Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range s.GetAgents() {
		want := map[string][]string{"edge-eu": {"192.0.2.11"}, "both-us": {"198.51.100.20", "2001:db8::20"}, "host-paris": {"192.0.2.99"}}[a.GetNode()]
		if !slices.Equal(a.GetOuterSources(), want) {
			t.Fatalf("status of %s: outer sources %v, want %v", a.GetNode(), a.GetOuterSources(), want)
		}
	}
	decapOf := func(node string) []string {
		s, err := adm.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			return []string{"error"}
		}
		for _, a := range s.GetAgents() {
			if a.GetNode() == node {
				return a.GetDecapSources()
			}
		}
		return []string{"missing"}
	}
	if got := decapOf("host-paris"); !slices.Equal(got, []string{"192.0.2.0/24", "2001:db8::/32"}) {
		t.Fatalf("host-paris decap sources %v: want them canonical", got)
	}
	// A reload that drops decap_sources: any source, recorded.
	host.setDecapSources()
	waitFor(t, "decap sources cleared", 10*time.Second, func() bool { return decapOf("host-paris") == nil })

	// A disconnected edge still forwards on its last version: its
	// sources stay listed.
	eu.stop()
	v := host.client.Version()
	both.setOuterSources("not-an-address")
	waitFor(t, "bad report ends the session", 10*time.Second, func() bool {
		s, err := adm.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			return false
		}
		for _, a := range s.GetAgents() {
			if a.GetNode() == "both-us" {
				return !a.GetConnected()
			}
		}
		return false
	})
	both.setOuterSources("2001:db8::20", "198.51.100.20")
	time.Sleep(500 * time.Millisecond) // five report intervals
	if st := host.current(); !listed([]*pb.EdgeSource{
		{Node: "both-us", Addresses: []string{"198.51.100.20", "2001:db8::20"}},
		{Node: "edge-eu", Addresses: []string{"192.0.2.11"}}})() {
		t.Fatalf("version %d (was %d) lists %v", host.client.Version(), v, st.GetEdgeSources())
	}

	// Decommissioned: forgetting the node takes its sources out. Only
	// admins may; a connected node or one without a record is refused.
	ctx := context.Background()
	del := func(c pb.AdminClient, node string) error {
		_, err := c.Delete(ctx, &pb.DeleteRequest{Kind: "node", Name: node})
		return err
	}
	waitFor(t, "both-us connected again", 10*time.Second, func() bool {
		s, err := adm.Status(ctx, &pb.StatusRequest{})
		return err == nil && slices.ContainsFunc(s.GetAgents(), func(a *pb.AgentStatus) bool { return a.GetNode() == "both-us" && a.GetConnected() })
	})
	if err := del(adm, "both-us"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "stop its agent first") {
		t.Fatalf("forget a connected node: %v, want FailedPrecondition", err)
	}
	if err := del(adm, "nobody"); status.Code(err) != codes.NotFound {
		t.Fatalf("forget an unknown node: %v, want NotFound", err)
	}
	if err := del(adminClient(t, r.addr, "edge-eu"), "edge-eu"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent's certificate forgot a node: %v, want PermissionDenied", err)
	}
	if err := del(adm, "edge-eu"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "forgotten edge unlisted", 10*time.Second, listed([]*pb.EdgeSource{
		{Node: "both-us", Addresses: []string{"198.51.100.20", "2001:db8::20"}}}))
	s, err = adm.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range s.GetAgents() {
		if a.GetNode() == "edge-eu" {
			t.Fatalf("forgotten node still in status: %v", a)
		}
	}
}

// FuzzCheckRegister: whatever an agent sends, a registration that passes
// the check canonicalizes without panicking (outerSources and
// decapSources parse what the check accepted) into lists a second pass
// leaves alone.
func FuzzCheckRegister(f *testing.F) {
	for _, r := range []*pb.Register{
		{Node: "e", Role: pb.NodeRole_NODE_ROLE_EDGE, OuterSources: []string{"192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"}},
		{Node: "m", Role: pb.NodeRole_NODE_ROLE_MIRROR, DecapSources: []string{"10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8"}},
		{Node: "b", Role: pb.NodeRole_NODE_ROLE_BOTH, OuterSources: []string{"fe80::1%eth0"}, DecapSources: []string{"10.1.0.0/8"}},
		{Node: "n", Role: pb.NodeRole_NODE_ROLE_EDGE, RunId: 0x9e3779b97f4a7c15, AppliedVersion: 4},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r pb.Register
		if proto.Unmarshal(b, &r) != nil || checkRegister(&r) != nil {
			return
		}
		outer, decap := outerSources(r.GetOuterSources()), decapSources(r.GetDecapSources())
		if checkOuterSources("status", outer) != nil || checkDecapSources("status", decap) != nil {
			t.Fatalf("canonical lists %q %q fail the check", outer, decap)
		}
		if !slices.Equal(outerSources(outer), outer) || !slices.Equal(decapSources(decap), decap) {
			t.Fatalf("canonical lists %q %q are not stable", outer, decap)
		}
	})
}

// TestTunnelFrom: edges (role edge or both) are listed by node; a host
// refuses each edge with a source outside its list, never itself; a
// mirror-only node's outer sources are no edge's; without a list a host
// refuses nobody.
func TestTunnelFrom(t *testing.T) {
	rec := func(node string, role pb.NodeRole, outer, decap []string) *pb.AgentRecord {
		return &pb.AgentRecord{Status: &pb.AgentStatus{Node: node, Role: role, OuterSources: outer, DecapSources: decap}}
	}
	tn := tunnelFrom(map[string]*pb.AgentRecord{
		"both": rec("both", pb.NodeRole_NODE_ROLE_BOTH, []string{"192.0.2.1"}, []string{"10.0.0.0/8"}),
		"e2":   rec("e2", pb.NodeRole_NODE_ROLE_EDGE, []string{"10.0.0.2", "2001:db8::2"}, nil),
		"e1":   rec("e1", pb.NodeRole_NODE_ROLE_EDGE, []string{"10.0.0.1"}, nil),
		"m":    rec("m", pb.NodeRole_NODE_ROLE_MIRROR, []string{"192.0.2.9"}, []string{"10.0.0.1/32", "192.0.2.0/24"}),
		"open": rec("open", pb.NodeRole_NODE_ROLE_MIRROR, nil, nil),
	})
	var nodes []string
	for _, e := range tn.edges {
		nodes = append(nodes, e.GetNode())
	}
	if !slices.Equal(nodes, []string{"both", "e1", "e2"}) {
		t.Fatalf("edges %v", nodes)
	}
	want := map[string][]string{"both": {"e2"}, "m": {"e2"}}
	if len(tn.refusals) != len(want) || !slices.Equal(tn.refusals["both"], want["both"]) || !slices.Equal(tn.refusals["m"], want["m"]) {
		t.Fatalf("refusals %v, want %v", tn.refusals, want)
	}
}
