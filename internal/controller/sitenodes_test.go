package controller

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// TestInventory: a node a site lists belongs there alone; a site that
// lists its nodes takes only those; the others take anyone.
func TestInventory(t *testing.T) {
	sites := []*pb.Site{
		{Name: "eu", Nodes: []string{"edge-1", "paris-host"}},
		{Name: "us"},
		{Name: "ap", Nodes: []string{"tokyo-1"}},
	}
	inv := newInventory(slices.Values(sites))
	cases := []struct {
		node, site string
		ok         bool
	}{
		{"edge-1", "eu", true},
		{"paris-host", "eu", true},
		{"edge-1", "us", false},   // listed by eu
		{"edge-1", "mars", false}, // listed by eu, claims an unknown site
		{"edge-9", "eu", false},   // eu lists its nodes
		{"edge-9", "us", true},    // us lists nobody
		{"edge-9", "mars", true},  // no such site: compute ignores it anyway
		{"tokyo-1", "eu", false},  // listed by ap
		{"tokyo-1", "ap", true},   //
		{"", "ap", false},         // ap lists its nodes
	}
	for _, c := range cases {
		err := inv.allows(c.node, c.site)
		if (err == nil) != c.ok {
			t.Errorf("node %q in site %q: %v, want allowed %v", c.node, c.site, err, c.ok)
		}
	}
	if err := newInventory(slices.Values([]*pb.Site(nil))).allows("x", "eu"); err != nil {
		t.Errorf("no sites: %v", err)
	}
}

// TestRegisterHonoursSiteNodes: once eu lists its nodes, a certificate it
// does not list cannot register as an eu node, and a node it lists cannot
// register elsewhere; sites without a list still take anyone.
func TestRegisterHonoursSiteNodes(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil)
	o := testObjects()
	o.Sites[0].Nodes = []string{"edge-1"}
	if _, err := adminClient(t, r.addr, "admin").Apply(context.Background(), &pb.ApplyRequest{Objects: o}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.c.view.siteAllows("edge-2", "eu") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the view never saw eu's nodes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	creds := func(cn string) *credentials.TransportCredentials {
		c := credentials.NewTLS(clientTLS(t, issueFiles(t, shared.ca, t.TempDir(), cn, nil)))
		return &c
	}
	cases := []struct {
		node, site string
		code       codes.Code
	}{
		{"edge-1", "eu", codes.OK},
		{"edge-2", "eu", codes.PermissionDenied},
		{"edge-1", "us", codes.PermissionDenied},
		{"edge-2", "us", codes.OK},
	}
	for _, c := range cases {
		err := sessionErrAt(t, r.addr, creds(c.node), c.node, c.site)
		if got := status.Code(err); got != c.code {
			t.Errorf("%s registering in %s: %v (%v), want %v", c.node, c.site, got, err, c.code)
		}
	}
}

// TestBuildInputIgnoresNodesOutsideTheirSite: a report stored before eu
// listed its nodes no longer speaks for eu.
func TestBuildInputIgnoresNodesOutsideTheirSite(t *testing.T) {
	s := computeWorld()
	s.sites[0].Nodes = []string{"e1"}
	up := pb.Health_HEALTH_UP
	s.live = []*pb.LiveReport{
		edgeReport("e1", "eu", t0, pr("paris", 10, up)),
		edgeReport("rogue", "eu", t0, pr("paris", 500, up)),
	}
	in, _ := buildInput(s, t0, testInputCfg, map[uint32]*heldRegion{})
	if p, _ := pathOf(in, 1, 1); p.RTT != 10*time.Millisecond {
		t.Fatalf("eu→paris %v: want e1's 10ms alone (the median with rogue's 500ms is 255ms)", p.RTT)
	}
}
