// Package pki makes and loads the X.509 material premirror's mutual-TLS
// channels use (controller ⇄ agents, replicator ⇄ replicator). It is a
// development CA: production deployments bring their own CA (cert-manager,
// Vault…) and only use Load*.
package pki

import (
	"github.com/premirror/premirror/internal/atomicfile"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CA is a certificate authority able to issue leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte // certificate, PEM
}

// Leaf is an issued certificate with its key, both PEM encoded.
type Leaf struct {
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a self-signed ECDSA P-256 CA valid for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"premirror"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issue signs a leaf certificate usable both as a TLS server and client
// certificate. hosts are DNS names or IP addresses put in the SANs; the
// common name identifies the peer (node name) to the other side.
func (ca *CA) Issue(commonName string, hosts []string, validity time.Duration) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"premirror"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", commonName, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, nil
}

// KeyPEM returns the CA key, PEM encoded, for WriteFiles.
func (ca *CA) KeyPEM() ([]byte, error) {
	kder, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// Files names the PEM files a peer needs, and an optional CRL.
type Files struct {
	CA   string // CA certificates (a bundle) that sign every peer
	Cert string // this peer's certificate
	Key  string // this peer's private key
	CRL  string // optional: certificates revoked by a CA of the bundle (PEM or DER)
}

// Validate reports which field is missing.
func (f Files) Validate() error {
	switch {
	case f.CA == "":
		return errors.New("tls ca: path is empty")
	case f.Cert == "":
		return errors.New("tls cert: path is empty")
	case f.Key == "":
		return errors.New("tls key: path is empty")
	}
	return nil
}

// Check loads the files as Open does and verifies
// that the certificate chains to the CA and is valid at now. Loading
// alone accepts an expired certificate, one not yet valid and one another
// CA signed, all of which then fail every handshake long after the
// process started; Check fails at start instead, naming the file.
func (f Files) Check(now time.Time) error {
	m, err := loadMaterial(f)
	if err != nil {
		return err
	}
	return m.check(f, now)
}

// check verifies that m's certificate chains to m's CA bundle, is valid
// at now and is not in m's CRL.
func (m *material) check(f Files, now time.Time) error {
	leaf := m.leaf
	inter := x509.NewCertPool()
	for _, der := range m.cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("tls cert %s (%q, valid %s to %s) against ca %s: %w", f.Cert, leaf.Subject.CommonName,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), f.CA, err)
	}
	if m.lists(leaf) {
		return fmt.Errorf("tls cert %s (%q, serial %x): %w by %s", f.Cert, leaf.Subject.CommonName, leaf.SerialNumber, ErrRevoked, f.CRL)
	}
	return nil
}

// CommonName is the subject common name of the first certificate in the
// PEM file at path.
func CommonName(path string) (string, error) {
	c, err := ReadCertificate(path)
	if err != nil {
		return "", err
	}
	return c.Subject.CommonName, nil
}

// ReadCertificate parses the first certificate in the PEM file at path.
func ReadCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("certificate %s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	return cert, nil
}

// CheckLeafName refuses a name whose files WriteLeaf cannot write beside
// the others': <name>.pem and <name>-key.pem sit next to ca.pem, so "ca"
// would overwrite the CA, "x-key" x's key, and a path would leave dir.
func CheckLeafName(name string) error {
	if name == "" || name == "." || name == ".." || name == "ca" || strings.ContainsAny(name, `/\ `) || strings.HasSuffix(name, "-key") {
		return fmt.Errorf("%q cannot name a certificate's files", name)
	}
	return nil
}

// WriteLeaf writes ca.pem, <name>.pem and <name>-key.pem into dir (keys 0600)
// and returns their paths.
func WriteLeaf(dir, name string, ca *CA, leaf *Leaf) (Files, error) {
	if err := CheckLeafName(name); err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, err
	}
	f := Files{
		CA:   filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, name+".pem"),
		Key:  filepath.Join(dir, name+"-key.pem"),
	}
	if err := atomicfile.Write(f.CA, 0o644, ca.PEM); err != nil {
		return Files{}, err
	}
	if err := atomicfile.Write(f.Cert, 0o644, leaf.CertPEM); err != nil {
		return Files{}, err
	}
	if err := atomicfile.Write(f.Key, 0o600, leaf.KeyPEM); err != nil {
		return Files{}, err
	}
	return f, nil
}

// ServerConfig opens f (Open) and returns its ServerConfig: mutual TLS
// 1.3 that follows the files.
func ServerConfig(f Files) (*tls.Config, error) {
	s, err := Open(f, nil)
	if err != nil {
		return nil, err
	}
	return s.ServerConfig(), nil
}

// ClientConfig opens f (Open) and returns its ClientConfig for serverName,
// which must match a SAN of the server certificate.
func ClientConfig(f Files, serverName string) (*tls.Config, error) {
	s, err := Open(f, nil)
	if err != nil {
		return nil, err
	}
	return s.ClientConfig(serverName), nil
}

// PeerName returns the common name of the verified peer certificate of a
// TLS connection state, or "" when there is none.
func PeerName(cs tls.ConnectionState) string {
	if c := PeerCertificate(cs); c != nil {
		return c.Subject.CommonName
	}
	return ""
}

// PeerCertificate returns the verified peer certificate of a TLS
// connection state, or nil when there is none.
func PeerCertificate(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	return cs.VerifiedChains[0][0]
}

func load(f Files) (tls.Certificate, *x509.CertPool, error) {
	if err := f.Validate(); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load key pair %s: %w", f.Cert, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("read ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("ca %s: no PEM certificate found", f.CA)
	}
	return cert, pool, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

// Revoke returns a new CRL, DER encoded (what etcd reads), signed by ca: the entries of prev
// (a CRL ca signed, or nil) plus serials, numbered one above prev and
// valid until now+validity. Peers that load it (Files.CRL) refuse those
// certificates from their next handshake on.
func (ca *CA) Revoke(prev *x509.RevocationList, serials []*big.Int, now time.Time, validity time.Duration) ([]byte, error) {
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(validity)}
	seen := map[string]bool{}
	if prev != nil {
		if err := prev.CheckSignatureFrom(ca.Cert); err != nil {
			return nil, fmt.Errorf("existing crl: not signed by this ca: %w", err)
		}
		if prev.Number != nil {
			tmpl.Number = new(big.Int).Add(prev.Number, big.NewInt(1))
		}
		for _, e := range prev.RevokedCertificateEntries {
			seen[e.SerialNumber.String()] = true
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, e)
		}
	}
	for _, sn := range serials {
		if seen[sn.String()] {
			continue
		}
		seen[sn.String()] = true
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: sn, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign crl: %w", err)
	}
	return der, nil
}

// ReadCRL reads a CRL file (PEM or DER).
func ReadCRL(path string) (*x509.RevocationList, error) { return readCRL(path) }
