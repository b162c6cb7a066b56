package controller

import (
	"context"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/pki"
)

func applyObjects(t *testing.T, addr string, o *pb.Objects) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := adminClient(t, addr, "admin").Apply(ctx, &pb.ApplyRequest{Objects: o}); err != nil {
		t.Fatal(err)
	}
}

// sessionErr opens a session with tc, registers as node and returns the
// first error the controller answers with (nil if it registered).
func sessionErr(t *testing.T, addr string, tc *credentials.TransportCredentials, node string) error {
	t.Helper()
	return sessionErrAt(t, addr, tc, node, "")
}

// sessionErrAt registers node as an edge of site and returns the
// session's first error (nil: registered).
func sessionErrAt(t *testing.T, addr string, tc *credentials.TransportCredentials, node, site string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := openSession(ctx, t, addr, tc, node, site)
	return err
}

// openSession opens a session with tc and registers node as an edge of
// site; the stream lives as long as ctx (and the test).
func openSession(ctx context.Context, t *testing.T, addr string, tc *credentials.TransportCredentials, node, site string) (grpc.BidiStreamingClient[pb.AgentMessage, pb.ControllerMessage], error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(*tc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s, err := pb.NewAgentSessionClient(conn).Session(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Register{Register: &pb.Register{Node: node, Site: site, Role: pb.NodeRole_NODE_ROLE_EDGE}}}); err != nil {
		_, err = s.Recv()
		return nil, err
	}
	m, err := s.Recv()
	if err == nil && m.GetRegistered() == nil {
		t.Fatalf("first message %v", m)
	}
	return s, err
}

func TestMutualTLSRefusesUnknownClients(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil)
	dir := t.TempDir()
	good := issueFiles(t, shared.ca, dir, "edge-1", nil)
	otherCA, err := pki.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign := issueFiles(t, otherCA, t.TempDir(), "edge-1", nil)
	expiredLeaf, err := shared.ca.Issue("edge-1", nil, -time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := pki.WriteLeaf(t.TempDir(), "edge-1", shared.ca, expiredLeaf)
	if err != nil {
		t.Fatal(err)
	}

	creds := func(tc any) *credentials.TransportCredentials {
		c := credentials.NewTLS(clientTLS(t, tc.(pki.Files)))
		return &c
	}
	// No client certificate at all: only the CA to verify the server.
	noCert := clientTLS(t, good)
	noCert.Certificates, noCert.GetClientCertificate = nil, nil
	nc := credentials.NewTLS(noCert)

	cases := []struct {
		name  string
		creds *credentials.TransportCredentials
		node  string
		code  codes.Code
	}{
		{"valid certificate registers", creds(good), "edge-1", codes.OK},
		{"certificate of another CA", creds(foreign), "edge-1", codes.Unavailable},
		{"expired certificate", creds(expired), "edge-1", codes.Unavailable},
		{"no client certificate", &nc, "edge-1", codes.Unavailable},
		{"node is not the certificate's", creds(good), "edge-2", codes.PermissionDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := sessionErr(t, r.addr, tc.creds, tc.node)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
		})
	}

	// Only admin certificates may write objects; any valid one may read.
	ctx := context.Background()
	if _, err := adminClient(t, r.addr, "edge-1").Apply(ctx, &pb.ApplyRequest{Objects: testObjects()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent certificate applied objects: %v", err)
	} else if strings.Contains(status.Convert(err).Message(), `"admin"`) || strings.Contains(status.Convert(err).Message(), "admins:") {
		t.Fatalf("the refusal names the admins to the refused caller: %v", err)
	}
	if _, err := adminClient(t, r.addr, "edge-1").Delete(ctx, &pb.DeleteRequest{Kind: "mirror", Name: "m1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent certificate deleted an object: %v", err)
	}
	if _, err := adminClient(t, r.addr, "edge-1").Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("status with a valid certificate: %v", err)
	}
	if _, err := adminClient(t, r.addr, "admin").Apply(ctx, &pb.ApplyRequest{Objects: testObjects()}); err != nil {
		t.Fatalf("admin apply: %v", err)
	}
}

func TestAgentSessionDeliversVersionsAndRecordsAcks(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil)
	applyObjects(t, r.addr, testObjects())
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
	us := startAgent(t, "edge-us", "us", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
	waitFor(t, "objects applied by both", 10*time.Second, func() bool {
		return routeOf(eu.current(), "disk", "*") != nil && routeOf(us.current(), "disk", "*") != nil
	})

	// The state converts into a data plane the agent accepts, with the
	// agent's site as its default region and the origin as wildcard.
	st := eu.current()
	if st.GetDefaultRegion() != "eu" || us.current().GetDefaultRegion() != "us" {
		t.Fatalf("default regions %q %q", st.GetDefaultRegion(), us.current().GetDefaultRegion())
	}
	ds, err := agent.StateFromProto(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Compile(maps.DefaultConfig()); err != nil {
		t.Fatalf("agent refuses the controller's state: %v", err)
	}
	if w := routeOf(st, "disk", "*"); w["paris"] != 1 || len(w) != 1 {
		t.Fatalf("wildcard route %v", w)
	}

	// Probes: eu is near paris, us near nyc.
	eu.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 80 * time.Millisecond}, pb.Health_HEALTH_UP)
	us.setProbes(map[string]time.Duration{"paris": 80 * time.Millisecond, "nyc": 5 * time.Millisecond}, pb.Health_HEALTH_UP)
	waitFor(t, "routes from probes", 10*time.Second, func() bool {
		s := us.current()
		return routeOf(s, "disk", "us")["nyc"] > 0 && routeOf(s, "disk", "eu")["paris"] > 0
	})
	if w := routeOf(us.current(), "disk", "us"); w["paris"] != 0 {
		t.Fatalf("us route %v should be nyc only", w)
	}
	// The latency each region's routes give it, and the best they could.
	regionRTT := func(region string) (routed, best float64) {
		return testutil.ToFloat64(r.c.m.regionRTT.WithLabelValues(region)), testutil.ToFloat64(r.c.m.regionBestRTT.WithLabelValues(region))
	}
	waitFor(t, "region latency metrics", 10*time.Second, func() bool {
		eur, eub := regionRTT("eu")
		usr, usb := regionRTT("us")
		return eur == 0.005 && eub == 0.005 && usr == 0.005 && usb == 0.005
	})

	// A failure bypasses damping: nyc down for us leaves its table at once.
	before := us.client.Version()
	us.setProbe("nyc", 5*time.Millisecond, pb.Health_HEALTH_DOWN)
	waitFor(t, "failover off nyc", 15*time.Second, func() bool {
		w := routeOf(us.current(), "disk", "us")
		return us.client.Version() > before && w["nyc"] == 0 && w["paris"] > 0
	})
	// us now goes 80 ms to paris, and nothing nearer is routable.
	waitFor(t, "us latency after the failover", 10*time.Second, func() bool {
		routed, best := regionRTT("us")
		return routed == 0.080 && best == 0.080
	})

	// Status: both agents connected and on the current version.
	ctx := context.Background()
	adm := adminClient(t, r.addr, "admin")
	waitFor(t, "acks recorded", 15*time.Second, func() bool {
		s, err := adm.Status(ctx, &pb.StatusRequest{})
		if err != nil || len(s.GetAgents()) != 2 || s.GetLeader() != "r1" {
			return false
		}
		for _, a := range s.GetAgents() {
			if !a.GetConnected() || a.GetAckedVersion() != s.GetVersion() || a.GetSentVersion() != s.GetVersion() {
				return false
			}
		}
		return true
	})

	// A NACK: the agent refuses the next version and keeps its own.
	eu.mu.Lock()
	eu.refuse = true
	eu.mu.Unlock()
	kept := eu.client.Version()
	o := testObjects()
	o.Sites = append(o.Sites, &pb.Site{Name: "asia", ClientPrefixes: []string{"10.3.0.0/16"}})
	applyObjects(t, r.addr, o)
	waitFor(t, "nack recorded", 15*time.Second, func() bool {
		s, err := adm.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return false
		}
		for _, a := range s.GetAgents() {
			if a.GetNode() == "edge-eu" {
				return a.GetNackedVersion() == s.GetVersion() && strings.Contains(a.GetNackError(), "refused by test") &&
					a.GetAckedVersion() == kept
			}
		}
		return false
	})
	if eu.client.Version() != kept {
		t.Fatalf("applied version moved to %d after a nack", eu.client.Version())
	}

	// Disconnect is recorded.
	us.stop()
	waitFor(t, "disconnect recorded", 15*time.Second, func() bool {
		s, _ := adm.Status(ctx, &pb.StatusRequest{})
		for _, a := range s.GetAgents() {
			if a.GetNode() == "edge-us" {
				return !a.GetConnected()
			}
		}
		return false
	})
	if probs, err := testutil.CollectAndLint(r.c.Registry()); err != nil || len(probs) > 0 {
		t.Fatalf("metric lint: %v %v", probs, err)
	}
}

func TestMirrorHostReportsDown(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil)
	applyObjects(t, r.addr, testObjects())
	eu := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
	host := startAgent(t, "paris-host", "eu", pb.NodeRole_NODE_ROLE_MIRROR, r.addr)
	eu.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 60 * time.Millisecond}, pb.Health_HEALTH_UP)
	waitFor(t, "eu on paris", 10*time.Second, func() bool { return routeOf(eu.current(), "disk", "eu")["paris"] > 0 })
	// The host says paris is down: it leaves the routes and is marked down
	// in the data plane, though the edge's probes still succeed.
	host.mu.Lock()
	host.health = []*pb.MirrorHealth{{Mirror: "paris", Health: pb.Health_HEALTH_DOWN}}
	host.mu.Unlock()
	host.client.ReportNow()
	waitFor(t, "paris out", 15*time.Second, func() bool {
		st := eu.current()
		for _, m := range st.GetMirrors() {
			if m.GetName() == "paris" && m.GetState() != pb.MirrorState_MIRROR_STATE_DOWN {
				return false
			}
		}
		w := routeOf(st, "disk", "eu")
		return w["paris"] == 0 && w["nyc"] > 0
	})
	// Another node may not speak for paris.
	eu.mu.Lock()
	eu.health = []*pb.MirrorHealth{{Mirror: "nyc", Health: pb.Health_HEALTH_DOWN}}
	eu.mu.Unlock()
	eu.client.ReportNow()
	time.Sleep(300 * time.Millisecond)
	if w := routeOf(eu.current(), "disk", "eu"); w["nyc"] == 0 {
		t.Fatalf("an edge's claim about a mirror it does not host was believed: %v", w)
	}
}

func TestAgentConvergesAfterControllerRestart(t *testing.T) {
	prefix := testPrefix(t)
	r := startReplica(t, "r1", prefix, nil)
	applyObjects(t, r.addr, testObjects())
	a := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, r.addr)
	waitFor(t, "objects applied", 10*time.Second, func() bool { return routeOf(a.current(), "disk", "*") != nil })
	v1 := a.client.Version()

	r.stop()
	waitFor(t, "agent notices", 15*time.Second, func() bool { return a.client.Controller() == "" })
	// While no controller runs, the objects change; the agent keeps v1.
	o := testObjects()
	o.Mirrors[1].State = pb.MirrorState_MIRROR_STATE_DRAINING
	cli := etcdClient(t)
	defer cli.Close()
	if _, err := NewStore(cli, prefix, DefaultLimits()).Apply(context.Background(), o, false); err != nil {
		t.Fatal(err)
	}
	if a.client.Version() != v1 {
		t.Fatal("version changed without a controller")
	}

	// A controller comes back on the same address.
	r2 := startReplicaAt(t, "r2", prefix, r.addr)
	waitFor(t, "agent converges on the change", 15*time.Second, func() bool {
		if r2.c.Version() <= v1 || a.client.Version() != r2.c.Version() {
			return false
		}
		for _, m := range a.current().GetMirrors() {
			if m.GetName() == "nyc" {
				return m.GetState() == pb.MirrorState_MIRROR_STATE_DRAINING
			}
		}
		return false
	})
}

func TestLeaderFailover(t *testing.T) {
	prefix := testPrefix(t)
	a := startReplica(t, "ra", prefix, nil)
	waitFor(t, "ra leads", 10*time.Second, func() bool { return a.c.Leader() == "ra" })
	b := startReplica(t, "rb", prefix, nil)
	applyObjects(t, a.addr, testObjects())
	ag := startAgent(t, "edge-eu", "eu", pb.NodeRole_NODE_ROLE_EDGE, b.addr)
	waitFor(t, "version from ra", 10*time.Second, func() bool { return routeOf(ag.current(), "disk", "*") != nil })
	waitFor(t, "rb sees ra lead", 15*time.Second, func() bool { return b.c.Leader() == "ra" })
	vA := b.c.Version()

	killed := time.Now()
	a.kill()
	waitFor(t, "rb takes over", 10*time.Second, func() bool { return b.c.Leader() == "rb" })
	t.Logf("takeover %v after the leader was killed (lease ttl 2s)", time.Since(killed).Round(time.Millisecond))

	// The new leader computes: a change reaches the agent, and versions
	// continue from the dead leader's.
	ag.setProbes(map[string]time.Duration{"paris": 5 * time.Millisecond, "nyc": 50 * time.Millisecond}, pb.Health_HEALTH_UP)
	waitFor(t, "route from the new leader", 10*time.Second, func() bool {
		return routeOf(ag.current(), "disk", "eu")["paris"] > 0
	})
	if v := ag.client.Version(); v <= vA {
		t.Fatalf("version %d after failover, not above %d", v, vA)
	}
	rec, _, err := b.c.store.readDesired(context.Background())
	if err != nil || rec.GetLeader() != "rb" {
		t.Fatalf("record written by %q (%v)", rec.GetLeader(), err)
	}
}

// TestRevokedAgentSessionEnds: revoking a registered agent's certificate
// (a new CRL file, no restart) ends its live session at its next message
// and its reconnection is refused at the handshake; another agent is not
// affected.
func TestRevokedAgentSessionEnds(t *testing.T) {
	dir := t.TempDir()
	crl := filepath.Join(dir, "ca.crl")
	writeCRL := func(serials ...*big.Int) {
		t.Helper()
		b, err := shared.ca.Revoke(nil, serials, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(crl, 0o644, b); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL()
	r := startReplica(t, "r1", testPrefix(t), func(c *Config) { c.TLS.CRL = crl })
	bad := issueFiles(t, shared.ca, t.TempDir(), "edge-1", nil)
	good := issueFiles(t, shared.ca, t.TempDir(), "edge-2", nil)
	creds := func(f pki.Files) *credentials.TransportCredentials {
		c := credentials.NewTLS(clientTLS(t, f))
		return &c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sBad, err := openSession(ctx, t, r.addr, creds(bad), "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	sGood, err := openSession(ctx, t, r.addr, creds(good), "edge-2", "")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.Open(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeCRL(leaf.Leaf().SerialNumber)

	ack := &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: &pb.Ack{Version: 0}}}
	if err := sBad.Send(ack); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := sBad.Recv()
		if err == nil {
			continue // a version pushed meanwhile
		}
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("revoked session ended with %v, want PermissionDenied: certificate revoked", err)
		}
		break
	}
	if err := sessionErr(t, r.addr, creds(bad), "edge-1"); status.Code(err) != codes.Unavailable {
		t.Fatalf("reconnection with a revoked certificate: %v, want Unavailable (handshake refused)", err)
	}
	if err := sGood.Send(ack); err != nil {
		t.Fatalf("the other agent's session: %v", err)
	}
	if err := sessionErr(t, r.addr, creds(good), "edge-2"); err != nil {
		t.Fatalf("the other agent reconnects: %v", err)
	}
}

// An agent session ends at its next message once its certificate is
// revoked (a new CRL, no restart). An admin's gRPC connection lives as
// long: a revoked admin certificate must not keep changing objects over a
// connection opened before the revocation.
func TestRevokedAdminRefusedOnOpenConnection(t *testing.T) {
	dir := t.TempDir()
	crl := filepath.Join(dir, "ca.crl")
	writeCRL := func(f pki.Files) {
		t.Helper()
		var serials []*big.Int
		if f.Cert != "" {
			leaf, err := pki.Open(f, nil)
			if err != nil {
				t.Fatal(err)
			}
			serials = append(serials, leaf.Leaf().SerialNumber)
		}
		b, err := shared.ca.Revoke(nil, serials, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(crl, 0o644, b); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL(pki.Files{})
	r := startReplica(t, "r1", testPrefix(t), func(c *Config) { c.TLS.CRL = crl })
	admin := issueFiles(t, shared.ca, t.TempDir(), "admin", nil)
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, admin))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewAdminClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Apply(ctx, &pb.ApplyRequest{Objects: testObjects()}); err != nil {
		t.Fatal(err)
	}
	writeCRL(admin)
	_, err = c.Delete(ctx, &pb.DeleteRequest{Kind: "resource", Name: "disk"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked admin certificate on its open connection: Delete returned %v, want PermissionDenied", err)
	}
}
