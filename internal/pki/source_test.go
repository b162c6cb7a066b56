package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// handshakeResult is what each side of one connection saw.
type handshakeResult struct {
	serverSaw *big.Int // client certificate serial the server verified; nil if refused
	peerName  string   // PeerName on the server side
	clientSaw *big.Int // server certificate serial; nil if the client failed
	serverErr error
	clientErr error
}

// serve accepts TLS connections with cfg and reports, per connection, the
// serial of the verified client certificate or the handshake error.
func serve(t *testing.T, cfg *tls.Config) (addr string, results <-chan handshakeResult) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan handshakeResult, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			var r handshakeResult
			if r.serverErr = tc.Handshake(); r.serverErr == nil {
				r.serverSaw = tc.ConnectionState().VerifiedChains[0][0].SerialNumber
				r.peerName = PeerName(tc.ConnectionState())
				io.WriteString(tc, "ok")
			}
			tc.Close()
			out <- r
		}
	}()
	return ln.Addr().String(), out
}

func dial(t *testing.T, addr string, cfg *tls.Config, results <-chan handshakeResult) handshakeResult {
	t.Helper()
	var r handshakeResult
	c, err := tls.Dial("tcp", addr, cfg)
	if err == nil {
		r.clientSaw = c.ConnectionState().PeerCertificates[0].SerialNumber
		var b []byte
		// TLS 1.3 reports a refused client certificate on the first read.
		if b, err = io.ReadAll(c); err == nil && string(b) != "ok" {
			err = errors.New("no reply")
		}
		c.Close()
	}
	r.clientErr = err
	srv := <-results
	r.serverSaw, r.serverErr, r.peerName = srv.serverSaw, srv.serverErr, srv.peerName
	return r
}

type pkiFixture struct {
	t          *testing.T
	dir        string
	ca         *CA
	srv, cli   Files
	srvSerial  *big.Int
	cliSerial  *big.Int
	srcS, srcC *Source
}

func newFixture(t *testing.T) *pkiFixture {
	t.Helper()
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fx := &pkiFixture{t: t, dir: t.TempDir(), ca: ca}
	fx.srv, fx.srvSerial = fx.issue("srv", "server", []string{"127.0.0.1"})
	fx.cli, fx.cliSerial = fx.issue("cli", "node-a", nil)
	if fx.srcS, err = Open(fx.srv, nil); err != nil {
		t.Fatal(err)
	}
	if fx.srcC, err = Open(fx.cli, nil); err != nil {
		t.Fatal(err)
	}
	return fx
}

// issue writes a new leaf for cn into dir/sub (replacing what is there)
// and returns the files and the serial.
func (fx *pkiFixture) issue(sub, cn string, hosts []string) (Files, *big.Int) {
	fx.t.Helper()
	leaf, err := fx.ca.Issue(cn, hosts, time.Hour)
	if err != nil {
		fx.t.Fatal(err)
	}
	f, err := WriteLeaf(filepath.Join(fx.dir, sub), cn, fx.ca, leaf)
	if err != nil {
		fx.t.Fatal(err)
	}
	c, err := readCerts(f.Cert)
	if err != nil {
		fx.t.Fatal(err)
	}
	return f, c[0].SerialNumber
}

func sameSerial(a, b *big.Int) bool { return a != nil && b != nil && a.Cmp(b) == 0 }

// TestSourceFollowsRenewal: a renewed certificate (written over the old
// files, as a Secret volume or cert-manager does) is presented from the
// next handshake on by both a running server and an existing client
// configuration, without reopening anything.
func TestSourceFollowsRenewal(t *testing.T) {
	fx := newFixture(t)
	addr, res := serve(t, fx.srcS.ServerConfig())
	ccfg := fx.srcC.ClientConfig("127.0.0.1")

	r := dial(t, addr, ccfg, res)
	if r.clientErr != nil || !sameSerial(r.clientSaw, fx.srvSerial) || !sameSerial(r.serverSaw, fx.cliSerial) {
		t.Fatalf("first handshake: %+v", r)
	}
	_, newSrv := fx.issue("srv", "server", []string{"127.0.0.1"})
	_, newCli := fx.issue("cli", "node-a", nil)
	r = dial(t, addr, ccfg, res)
	if r.clientErr != nil || !sameSerial(r.clientSaw, newSrv) || !sameSerial(r.serverSaw, newCli) {
		t.Fatalf("after renewal: server presented %x (new %x), client %x (new %x), err %v",
			r.clientSaw, newSrv, r.serverSaw, newCli, r.clientErr)
	}
	if got := fx.srcS.reload.ok.Load(); got != 1 {
		t.Fatalf("server reloads = %v, want 1", got)
	}
	if fx.srcS.Leaf().SerialNumber.Cmp(newSrv) != 0 {
		t.Fatal("Leaf is not the renewed certificate")
	}
}

// TestSourceKeepsLastGood: a change that does not load (a key written
// before its certificate) keeps the previous certificate in use, is
// counted and flagged stale, and the next change that loads clears it.
func TestSourceKeepsLastGood(t *testing.T) {
	fx := newFixture(t)
	addr, res := serve(t, fx.srcS.ServerConfig())
	ccfg := fx.srcC.ClientConfig("127.0.0.1")

	// Half a renewal: a new key beside the old certificate.
	other, _ := fx.ca.Issue("server", []string{"127.0.0.1"}, time.Hour)
	if err := atomicfile.Write(fx.srv.Key, 0o600, other.KeyPEM); err != nil {
		t.Fatal(err)
	}
	r := dial(t, addr, ccfg, res)
	if r.clientErr != nil || !sameSerial(r.clientSaw, fx.srvSerial) {
		t.Fatalf("half-written renewal: %+v (want the old certificate served)", r)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(fx.srcS.Collector("test"))
	if got := gauge(t, reg, "premirror_tls_files_stale"); got != 1 {
		t.Fatalf("stale = %v, want 1", got)
	}
	if got := fx.srcS.reload.failed.Load(); got != 1 {
		t.Fatalf("failed reloads = %v, want 1 (not one per handshake)", got)
	}
	r = dial(t, addr, ccfg, res)
	if got := fx.srcS.reload.failed.Load(); got != 1 || r.clientErr != nil {
		t.Fatalf("failed reloads after another handshake = %v (%v), want 1: unchanged files are not retried", got, r.clientErr)
	}
	// The rest of the renewal.
	if err := atomicfile.Write(fx.srv.Cert, 0o644, other.CertPEM); err != nil {
		t.Fatal(err)
	}
	r = dial(t, addr, ccfg, res)
	if r.clientErr != nil || sameSerial(r.clientSaw, fx.srvSerial) {
		t.Fatalf("completed renewal: %+v (want the new certificate)", r)
	}
	if got := gauge(t, reg, "premirror_tls_files_stale"); got != 0 {
		t.Fatalf("stale = %v after a good load, want 0", got)
	}
	if exp := gauge(t, reg, "premirror_tls_certificate_expiry_timestamp_seconds"); exp != float64(fx.srcS.Leaf().NotAfter.Unix()) {
		t.Fatalf("expiry gauge %v, want %v", exp, fx.srcS.Leaf().NotAfter.Unix())
	}

	// A complete set that would not serve: an expired certificate, and
	// one another CA signed. The one in use stays.
	inUse := fx.srcS.Leaf().SerialNumber
	expired, _ := fx.ca.Issue("server", []string{"127.0.0.1"}, -time.Minute)
	otherCA, _ := NewCA("other", time.Hour)
	foreign, _ := otherCA.Issue("server", []string{"127.0.0.1"}, time.Hour)
	for i, l := range []*Leaf{expired, foreign} {
		if err := atomicfile.Write(fx.srv.Key, 0o600, l.KeyPEM); err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(fx.srv.Cert, 0o644, l.CertPEM); err != nil {
			t.Fatal(err)
		}
		r = dial(t, addr, ccfg, res)
		if r.clientErr != nil || !sameSerial(r.clientSaw, inUse) {
			t.Fatalf("set %d that would not serve: %+v (want the certificate in use, %x)", i, r, inUse)
		}
		if got := gauge(t, reg, "premirror_tls_files_stale"); got != 1 {
			t.Fatalf("set %d: stale = %v, want 1", i, got)
		}
	}
}

// TestSourceCRL: a certificate the CRL lists is refused by the other side
// from the next handshake on, in either direction, and counted; a CRL the
// CA did not sign is refused at Open and at Check.
func TestSourceCRL(t *testing.T) {
	fx := newFixture(t)
	crlPath := filepath.Join(fx.dir, "ca.crl")
	writeCRL := func(serials ...*big.Int) {
		t.Helper()
		var prev *x509.RevocationList
		if p, err := ReadCRL(crlPath); err == nil {
			prev = p
		}
		b, err := fx.ca.Revoke(prev, serials, time.Now(), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.Write(crlPath, 0o644, b); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL() // empty list
	srv, cli := fx.srv, fx.cli
	srv.CRL, cli.CRL = crlPath, crlPath
	srcS, err := Open(srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	srcC, err := Open(cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, res := serve(t, srcS.ServerConfig())
	if r := dial(t, addr, srcC.ClientConfig("127.0.0.1"), res); r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("empty CRL: %+v", r)
	}

	writeCRL(fx.cliSerial)
	r := dial(t, addr, srcC.ClientConfig("127.0.0.1"), res)
	if r.serverErr == nil || !errors.Is(r.serverErr, ErrRevoked) || r.clientErr == nil {
		t.Fatalf("revoked client: %+v, want the server to refuse it as revoked", r)
	}
	if got := srcS.reload.revoked.Load(); got != 1 {
		t.Fatalf("server revoked handshakes = %v, want 1", got)
	}
	if err := cli.Check(time.Now()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Check of a revoked certificate: %v", err)
	}

	// A client with another certificate, and now the server's revoked.
	other, _ := fx.issue("cli2", "node-b", nil)
	other.CRL = crlPath
	srcO, err := Open(other, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeCRL(fx.srvSerial)
	r = dial(t, addr, srcO.ClientConfig("127.0.0.1"), res)
	if !errors.Is(r.clientErr, ErrRevoked) {
		t.Fatalf("revoked server: client err %v, want ErrRevoked", r.clientErr)
	}
	// The server loaded that CRL though it lists the server itself: its
	// other entries are enforced.
	if !srcS.Revoked(srcS.Leaf()) {
		t.Fatal("a CRL listing the process's own certificate was not loaded")
	}

	// A CRL signed by another CA is not this CA's word.
	rogue, _ := NewCA("test-ca", time.Hour) // same name, other key
	b, err := rogue.Revoke(nil, nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(fx.dir, "rogue.crl")
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f := fx.srv
	f.CRL = bad
	if _, err := Open(f, nil); err == nil || !strings.Contains(err.Error(), "not signed by a CA of") {
		t.Fatalf("rogue CRL: %v", err)
	}
	if _, err := fx.ca.Revoke(mustCRL(t, bad), nil, time.Now(), time.Hour); err == nil {
		t.Fatal("Revoke extended a CRL another CA signed")
	}
	// PEM is read as well as DER.
	der, _ := os.ReadFile(crlPath)
	pemPath := filepath.Join(fx.dir, "ca.crl.pem")
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	f.CRL = pemPath
	if s, err := Open(f, nil); err != nil || len(s.current().revoked) != 2 {
		t.Fatalf("PEM CRL: %v", err)
	}
	f.CRL = fx.srv.Key
	if _, err := Open(f, nil); err == nil || !strings.Contains(err.Error(), `want "X509 CRL"`) {
		t.Fatalf("a key as CRL: %v", err)
	}
}

// TestSourceCARotation: a CA bundle that gains the next CA lets a server
// whose certificate the new CA signed be verified by a client that takes
// a new configuration per connection (ClientConfig, ClientCredentials).
func TestSourceCARotation(t *testing.T) {
	fx := newFixture(t)
	next, err := NewCA("next-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := next.Issue("server", []string{"127.0.0.1"}, time.Hour)
	bundle := append(append([]byte{}, fx.ca.PEM...), next.PEM...)
	for _, p := range []string{fx.srv.CA, fx.cli.CA} {
		if err := atomicfile.Write(p, 0o644, bundle); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.Write(fx.srv.Key, 0o600, leaf.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(fx.srv.Cert, 0o644, leaf.CertPEM); err != nil {
		t.Fatal(err)
	}
	addr, res := serve(t, fx.srcS.ServerConfig())
	if r := dial(t, addr, fx.srcC.ClientConfig("127.0.0.1"), res); r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("after the CA bundle gained the next CA: %+v", r)
	}
}

// TestSourceGRPC: gRPC over a Source's server config (gRPC adds h2 to the
// per-handshake config) and ClientCredentials, across a renewal of the server's
// certificate.
// healthServer serves gRPC health checks with cfg until the test ends.
func healthServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func TestSourceGRPC(t *testing.T) {
	fx := newFixture(t)
	addr := healthServer(t, fx.srcS.ServerConfig())
	check := func() *big.Int {
		t.Helper()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(fx.srcC.ClientCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("health check over mTLS: %v", err)
		}
		return fx.srcS.Leaf().SerialNumber
	}
	if got := check(); !sameSerial(got, fx.srvSerial) {
		t.Fatalf("served %x", got)
	}
	_, renewed := fx.issue("srv", "server", []string{"127.0.0.1"})
	if got := check(); !sameSerial(got, renewed) {
		t.Fatalf("after renewal served %x, want %x", got, renewed)
	}
}

// TestClientCredentialsFor: a client that names the server's role takes
// only a certificate of that common name. Another certificate of the same
// CA, valid for the address dialed, is refused (an agent does not take a
// node's certificate for the controller's).
func TestClientCredentialsFor(t *testing.T) {
	fx := newFixture(t)
	srvAddr := healthServer(t, fx.srcS.ServerConfig())
	for _, tc := range []struct {
		names []string
		ok    bool
	}{
		{nil, true},
		{[]string{"server"}, true},
		{[]string{"controller", "server"}, true},
		{[]string{"controller"}, false},
		{[]string{"Server"}, false}, // names are exact
	} {
		conn, err := grpc.NewClient(srvAddr, grpc.WithTransportCredentials(fx.srcC.ClientCredentialsFor(tc.names)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		conn.Close()
		switch {
		case tc.ok && err != nil:
			t.Errorf("names %q: %v", tc.names, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), ErrUnexpectedPeer.Error())):
			t.Errorf("names %q: %v, want %v", tc.names, err, ErrUnexpectedPeer)
		}
	}
	// The plain TLS configuration says the same, with the error itself.
	cfg := fx.srcC.clientConfig("", []string{"controller"})
	addr, results := serve(t, fx.srcS.ServerConfig())
	if r := dial(t, addr, cfg, results); !errors.Is(r.clientErr, ErrUnexpectedPeer) {
		t.Fatalf("tls dial: %v, want ErrUnexpectedPeer", r.clientErr)
	}
}

func mustCRL(t *testing.T, path string) *x509.RevocationList {
	t.Helper()
	c, err := ReadCRL(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("%s not exported", name)
	return 0
}

// TestCollectorPerChannel: one registry takes a collector per channel
// (the agent exports its controller and replication channels side by
// side).
func TestCollectorPerChannel(t *testing.T) {
	fx := newFixture(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(fx.srcS.Collector("controller"), fx.srcC.Collector("replication"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "premirror_tls_certificate_expiry_timestamp_seconds" && len(mf.GetMetric()) == 2 {
			return
		}
	}
	t.Fatal("want one expiry series per channel")
}

// FuzzReadCRL: any bytes in the CRL file give a CRL or an error, and a
// CRL loads only when the CA signed it.
func FuzzReadCRL(f *testing.F) {
	ca, err := NewCA("fuzz-ca", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	der, err := ca.Revoke(nil, []*big.Int{big.NewInt(7)}, time.Now(), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	dir := f.TempDir()
	leaf, err := ca.Issue("n", nil, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	files, err := WriteLeaf(dir, "n", ca, leaf)
	if err != nil {
		f.Fatal(err)
	}
	files.CRL = filepath.Join(dir, "ca.crl")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(files.CRL, b, 0o600); err != nil {
			t.Fatal(err)
		}
		crl, err := readCRL(files.CRL)
		m, lerr := loadMaterial(files)
		if err != nil && lerr == nil {
			t.Fatalf("an unreadable CRL loaded: %v", err)
		}
		if lerr == nil && (m.crl == nil || crl.CheckSignatureFrom(ca.Cert) != nil) {
			t.Fatal("a CRL the CA did not sign loaded")
		}
	})
}
