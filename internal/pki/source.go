package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
)

// ErrRevoked is returned by a handshake whose peer presented a certificate
// the configured CRL lists.
var ErrRevoked = errors.New("certificate revoked")

// Source is a peer's TLS material (certificate, key, CA bundle and
// optional CRL) that follows its files: every handshake stats them and a
// change is loaded before the handshake proceeds, so a certificate renewed
// by cert-manager or Vault (a Secret volume swaps its files atomically), a
// CA bundle that gains the next CA, or a new CRL takes effect without a
// restart. A change that does not load (a key written before its
// certificate, a truncated file) or would not serve (an expired
// certificate, one the bundle's CAs did not sign) keeps
// the previous material, is logged once and counted, and is tried again
// when the files change again.
type Source struct {
	files Files
	log   *slog.Logger

	mu     sync.Mutex // guards sig, cur and stale; serializes reloads
	sig    [4]fileSig // of the files last tried, loaded or not
	cur    *material
	stale  bool // the files last tried did not load: cur is older
	reload struct{ ok, failed, revoked, ended atomic.Uint64 }
	// lastRevokedLog (Unix ns) rate-limits the refused-revoked log line.
	lastRevokedLog atomic.Int64
}

type material struct {
	cert    tls.Certificate
	leaf    *x509.Certificate
	pool    *x509.CertPool
	crl     *x509.RevocationList // nil: no CRL configured
	revoked map[string]struct{}  // serial (hex) of crl's entries
}

// lists reports whether m's CRL revokes c.
func (m *material) lists(c *x509.Certificate) bool {
	if m.crl == nil || c == nil || !bytes.Equal(c.RawIssuer, m.crl.RawIssuer) {
		return false
	}
	_, ok := m.revoked[fmt.Sprintf("%x", c.SerialNumber)]
	return ok
}

// fileSig tells whether a file changed: a Secret volume replaces files by
// renaming a directory (new inode), editors and cp rewrite in place (new
// mtime or size).
type fileSig struct {
	ino, size uint64
	mtime     int64
	missing   bool
}

func statSig(path string) fileSig {
	if path == "" {
		return fileSig{}
	}
	fi, err := os.Stat(path) // follows the ..data symlinks of a Secret volume
	if err != nil {
		return fileSig{missing: true}
	}
	s := fileSig{size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

func (f Files) sigs() [4]fileSig {
	return [4]fileSig{statSig(f.CA), statSig(f.Cert), statSig(f.Key), statSig(f.CRL)}
}

// Open loads f and returns a Source that keeps it current. It fails when
// the files do not load now; later failures only keep the last good
// material. log may be nil.
func Open(f Files, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Source{files: f, log: log}
	s.sig = f.sigs()
	m, err := loadMaterial(f)
	if err != nil {
		return nil, err
	}
	s.cur = m
	m.warnStale(log, f, time.Now())
	return s, nil
}

// Files are the paths the source follows.
func (s *Source) Files() Files { return s.files }

// current returns the material, loading the files first if they changed
// since they were last tried.
func (s *Source) current() *material {
	sig := s.files.sigs()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sig == s.sig {
		return s.cur
	}
	s.sig = sig
	m, err := loadMaterial(s.files)
	if err == nil {
		// A set that loads but cannot serve (expired, not signed by the
		// bundle's CAs) is refused too: unlike at start there is a good
		// one to keep. Open takes such a set, as loading always did;
		// Files.Check is the strict start-up test. A CRL that lists our
		// own certificate is taken all the same: its other entries must
		// be enforced, and peers that hold it refuse us either way.
		if err = m.check(s.files, time.Now()); errors.Is(err, ErrRevoked) {
			s.log.Error("this process's own certificate is in the new CRL: peers that load it refuse this node; issue it a new one", "err", err)
			err = nil
		}
	}
	if err != nil {
		s.reload.failed.Add(1)
		s.stale = true
		s.log.Warn("tls files changed but do not load; keeping the previous certificate", "cert", s.files.Cert, "err", err)
		return s.cur
	}
	s.reload.ok.Add(1)
	s.stale = false
	s.cur = m
	s.log.Info("tls files reloaded", "cert", s.files.Cert, "name", m.leaf.Subject.CommonName,
		"serial", fmt.Sprintf("%x", m.leaf.SerialNumber), "not_after", m.leaf.NotAfter.UTC().Format(time.RFC3339),
		"crl_entries", len(m.revoked))
	m.warnStale(s.log, s.files, time.Now())
	return m
}

// Revoked reports whether the CRL current now lists c (a peer's verified
// certificate), so a long-lived session can be ended when its peer is
// revoked after the handshake.
func (s *Source) Revoked(c *x509.Certificate) bool { return s.current().lists(c) }

// Revocations loads the files if they changed and returns the test of the
// CRL current now: a sweep over many live sessions stats the files once.
func (s *Source) Revocations() func(*x509.Certificate) bool { return s.current().lists }

// EndedRevoked counts a live session ended because its peer's certificate
// was revoked after the handshake (premirror_tls_revoked_sessions_ended_total).
func (s *Source) EndedRevoked() { s.reload.ended.Add(1) }

// RevokedSessionsEnded is how many EndedRevoked counted.
func (s *Source) RevokedSessionsEnded() uint64 { return s.reload.ended.Load() }

// Leaf is the certificate the source presents now.
func (s *Source) Leaf() *x509.Certificate { return s.current().leaf }

// ServerConfig returns a TLS 1.3 server configuration that requires a
// client certificate of the CA, not revoked, and presents the current
// certificate. Every handshake takes the material then current (through
// GetConfigForClient; gRPC's credentials add "h2" to what it returns).
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.current()
			peer := ""
			if hi.Conn != nil {
				peer = hi.Conn.RemoteAddr().String()
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{m.cert},
				ClientCAs:        m.pool,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				VerifyConnection: func(cs tls.ConnectionState) error { return s.checkRevoked(m, cs, peer) },
			}, nil
		},
	}
}

// ClientConfig returns a TLS 1.3 client configuration that verifies the
// server against the CA and the CRL current now and presents, at each
// handshake, the certificate current then. serverName must match a SAN of
// the server's certificate ("" lets gRPC fill in the dialed host). The CA
// bundle and CRL are those of the call: take a new config per connection
// (ClientCredentials does) to follow their changes too.
func (s *Source) ClientConfig(serverName string) *tls.Config {
	return s.clientConfig(serverName, nil)
}

// ErrUnexpectedPeer is returned by a handshake whose server presented a
// valid certificate of the CA under a common name the client does not
// accept in that role (ClientCredentialsFor).
var ErrUnexpectedPeer = errors.New("peer certificate not accepted in this role")

// ClientConfigFor is ClientConfig that also requires, when names is not
// empty, the server certificate's common name to be one of names
// (ErrUnexpectedPeer): a replicator dialing a peer takes only that peer's
// certificate, not another of the CA valid for the same address.
func (s *Source) ClientConfigFor(serverName string, names []string) *tls.Config {
	return s.clientConfig(serverName, slices.Clone(names))
}

func (s *Source) clientConfig(serverName string, names []string) *tls.Config {
	m := s.current()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    m.pool,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := s.current().cert
			return &c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := s.checkRevoked(m, cs, serverName); err != nil {
				return err
			}
			return checkName(cs, names)
		},
	}
}

// checkName requires the verified peer certificate's common name to be one
// of names (none: any).
func checkName(cs tls.ConnectionState, names []string) error {
	if len(names) == 0 {
		return nil
	}
	c := PeerCertificate(cs)
	if c != nil && slices.Contains(names, c.Subject.CommonName) {
		return nil
	}
	cn := ""
	if c != nil {
		cn = c.Subject.CommonName
	}
	return fmt.Errorf("%w: server certificate %q is none of %q", ErrUnexpectedPeer, cn, names)
}

// ClientCredentials are gRPC transport credentials that build a
// ClientConfig for every connection, so a long-lived client follows CA
// and CRL changes as well as certificate renewals.
func (s *Source) ClientCredentials() credentials.TransportCredentials {
	return s.ClientCredentialsFor(nil)
}

// ClientCredentialsFor is ClientCredentials that also requires the server
// certificate's common name to be one of names (none: any certificate of
// the CA valid for the host dialed). An agent names the controller's
// certificate so that another certificate of the same CA which carries
// the controller's address in its SANs is not taken for the controller.
func (s *Source) ClientCredentialsFor(names []string) credentials.TransportCredentials {
	names = slices.Clone(names)
	return sourceCreds{s: s, names: names, TransportCredentials: credentials.NewTLS(s.clientConfig("", names))}
}

type sourceCreds struct {
	s     *Source
	names []string
	credentials.TransportCredentials
}

func (c sourceCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.s.clientConfig("", c.names)).ClientHandshake(ctx, authority, raw)
}

func (c sourceCreds) Clone() credentials.TransportCredentials {
	return sourceCreds{s: c.s, names: c.names, TransportCredentials: c.TransportCredentials.Clone()}
}

// checkRevoked refuses a peer (its address, or the server name dialed)
// whose chain holds a certificate m's CRL lists, and logs it (one line per
// 10 s at most: a revoked node retries). The chain was verified against
// m's CA bundle before this runs.
func (s *Source) checkRevoked(m *material, cs tls.ConnectionState, peer string) error {
	for _, c := range cs.PeerCertificates {
		if m.lists(c) {
			s.reload.revoked.Add(1)
			if now := time.Now().UnixNano(); now-s.lastRevokedLog.Load() >= int64(10*time.Second) {
				s.lastRevokedLog.Store(now)
				s.log.Warn("refused a revoked certificate", "peer", peer, "name", c.Subject.CommonName,
					"serial", fmt.Sprintf("%x", c.SerialNumber), "crl", s.files.CRL, "refused_total", s.reload.revoked.Load())
			}
			return fmt.Errorf("%w: %q (serial %x) is listed in %s", ErrRevoked, c.Subject.CommonName, c.SerialNumber, s.files.CRL)
		}
	}
	return nil
}

func (m *material) warnStale(log *slog.Logger, f Files, now time.Time) {
	if m.crl != nil && !m.crl.NextUpdate.IsZero() && now.After(m.crl.NextUpdate) {
		// Still enforced: an out-of-date list of revoked certificates is
		// better than none; the operator is told to publish a new one.
		log.Warn("crl is past its next update; publish a new one (`controller revoke` re-signs it)", "crl", f.CRL,
			"next_update", m.crl.NextUpdate.UTC().Format(time.RFC3339))
	}
}

// loadMaterial reads and cross-checks the files: key pair, CA bundle, and
// a CRL that one of the bundle's CAs signed.
func loadMaterial(f Files) (*material, error) {
	cert, pool, err := load(f)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls cert %s: %w", f.Cert, err)
	}
	cert.Leaf = leaf
	m := &material{cert: cert, leaf: leaf, pool: pool}
	if f.CRL == "" {
		return m, nil
	}
	cas, err := readCerts(f.CA)
	if err != nil {
		return nil, err
	}
	crl, err := readCRL(f.CRL)
	if err != nil {
		return nil, err
	}
	signed := false
	for _, ca := range cas {
		if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, fmt.Errorf("tls crl %s: not signed by a CA of %s", f.CRL, f.CA)
	}
	m.crl = crl
	m.revoked = make(map[string]struct{}, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		m.revoked[fmt.Sprintf("%x", e.SerialNumber)] = struct{}{}
	}
	return m, nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ca: %w", err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca %s: %w", path, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// readCRL reads a CRL in PEM ("X509 CRL") or DER.
func readCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read crl: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("tls crl %s: PEM block %q, want \"X509 CRL\"", path, blk.Type)
		}
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("tls crl %s: %w", path, err)
	}
	return crl, nil
}

// Collector exports the source's state for channel (a label value naming
// what the files secure: "controller", "replication", "agents"…; a
// constant label, so one registry takes a collector per channel).
// Scraping also picks up changed files, so the expiry gauge shows a
// renewal before the next handshake uses it.
func (s *Source) Collector(channel string) prometheus.Collector {
	l := prometheus.Labels{"channel": channel}
	return &sourceCollector{s: s,
		expiry: prometheus.NewDesc("premirror_tls_certificate_expiry_timestamp_seconds",
			"When the certificate this process presents expires (Unix time), as loaded now.", nil, l),
		stale: prometheus.NewDesc("premirror_tls_files_stale",
			"1 while the TLS files on disk changed but do not load (the previous certificate stays in use), else 0.", nil, l),
		reloads: prometheus.NewDesc("premirror_tls_reloads_total",
			"Changes of the TLS files taken (result=loaded) or refused because they did not load (result=failed).", []string{"result"}, l),
		revoked: prometheus.NewDesc("premirror_tls_revoked_handshakes_total",
			"Handshakes refused because the peer's certificate is in the CRL.", nil, l),
		ended: prometheus.NewDesc("premirror_tls_revoked_sessions_ended_total",
			"Live sessions ended because the peer's certificate was revoked after their handshake.", nil, l),
		crlNext: prometheus.NewDesc("premirror_tls_crl_next_update_timestamp_seconds",
			"The loaded CRL's next update (Unix time); absent without a CRL. Past it the CRL is still enforced.", nil, l),
	}
}

type sourceCollector struct {
	s                                               *Source
	expiry, stale, reloads, revoked, ended, crlNext *prometheus.Desc
}

func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.expiry, c.stale, c.reloads, c.revoked, c.ended, c.crlNext} {
		ch <- d
	}
}

func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.s.current()
	stale := 0.0
	c.s.mu.Lock()
	if c.s.stale {
		stale = 1
	}
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, float64(m.leaf.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(c.stale, prometheus.GaugeValue, stale)
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(c.s.reload.ok.Load()), "loaded")
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(c.s.reload.failed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(c.revoked, prometheus.CounterValue, float64(c.s.reload.revoked.Load()))
	ch <- prometheus.MustNewConstMetric(c.ended, prometheus.CounterValue, float64(c.s.reload.ended.Load()))
	if m.crl != nil && !m.crl.NextUpdate.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.crlNext, prometheus.GaugeValue, float64(m.crl.NextUpdate.Unix()))
	}
}
