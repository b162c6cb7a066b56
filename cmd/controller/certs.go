package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/premirror/premirror/internal/atomicfile"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/pki"
)

func init() {
	commands.Register(cli.Command{
		Name:    "certs",
		Summary: "development helper: make a CA and certificates for the controller, admins, agents and replicators",
		Run:     ctlCerts,
	})
}

func ctlCerts(_ context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "certs")
	dir := fs.String("dir", "./certs", "output directory (an existing ca.pem/ca-key.pem there is reused)")
	hosts := fs.String("hosts", "127.0.0.1,::1,localhost", "comma-separated DNS names and addresses of the controller (certificate SANs; the embedded etcd listens on one of them)")
	admins := fs.String("admins", "admin", "comma-separated admin certificate names")
	agents := fs.String("agents", "", "comma-separated agent node names (certificate common name = node name)")
	replicators := fs.String("replicators", "", "comma-separated replicator node names; files replicator-<node>.pem, SANs <node>, 127.0.0.1, ::1")
	validity := fs.Duration("validity", 365*24*time.Hour, "certificate validity")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	list := func(s string) []string {
		var out []string
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
		return out
	}
	for _, n := range append(append(list(*admins), list(*agents)...), list(*replicators)...) {
		// Checked before anything is written; "controller" is the
		// controller's own certificate.
		if err := pki.CheckLeafName(n); err != nil || n == "controller" {
			return fmt.Errorf("%w: %q cannot name a certificate", cli.ErrUsage, n)
		}
	}
	ca, created, err := ctlLoadOrCreateCA(*dir, *validity)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(ctlOut, "CA        %s\n", filepath.Join(*dir, "ca.pem"))
	}
	issue := func(file, cn string, sans []string) error {
		leaf, err := ca.Issue(cn, sans, *validity)
		if err != nil {
			return err
		}
		f, err := pki.WriteLeaf(*dir, file, ca, leaf)
		if err != nil {
			return fmt.Errorf("write %s: %w", file, err)
		}
		fmt.Fprintf(ctlOut, "%-9s %s (cn %s)\n", strings.SplitN(file, "-", 2)[0], f.Cert, cn)
		return nil
	}
	if err := issue("controller", "controller", list(*hosts)); err != nil {
		return err
	}
	for _, n := range list(*admins) {
		if err := issue(n, n, nil); err != nil {
			return err
		}
	}
	for _, n := range list(*agents) {
		if err := issue(n, n, nil); err != nil {
			return err
		}
	}
	for _, n := range list(*replicators) {
		if err := issue("replicator-"+n, n, []string{n, "127.0.0.1", "::1"}); err != nil {
			return err
		}
	}
	return nil
}

// ctlLoadOrCreateCA reuses dir's CA, so certificates for new nodes can be
// added later, or creates one (its key stays in dir, mode 0600).
func ctlLoadOrCreateCA(dir string, validity time.Duration) (*pki.CA, bool, error) {
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certPEM, err1 := os.ReadFile(certPath)
	keyPEM, err2 := os.ReadFile(keyPath)
	if err1 == nil && err2 == nil {
		cb, _ := pem.Decode(certPEM)
		kb, _ := pem.Decode(keyPEM)
		if cb == nil || kb == nil {
			return nil, false, fmt.Errorf("%s or %s: no PEM block", certPath, keyPath)
		}
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", certPath, err)
		}
		key, err := x509.ParseECPrivateKey(kb.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", keyPath, err)
		}
		return &pki.CA{Cert: cert, Key: key, PEM: certPEM}, false, nil
	}
	if !errors.Is(err1, os.ErrNotExist) || !errors.Is(err2, os.ErrNotExist) {
		return nil, false, fmt.Errorf("%s and %s must both exist or both be absent", certPath, keyPath)
	}
	ca, err := pki.NewCA("premirror-dev-ca", validity)
	if err != nil {
		return nil, false, err
	}
	kp, err := ca.KeyPEM()
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, err
	}
	if err := os.WriteFile(keyPath, kp, 0o600); err != nil {
		return nil, false, err
	}
	if err := os.WriteFile(certPath, ca.PEM, 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

func init() {
	commands.Register(cli.Command{
		Name:    "revoke",
		Summary: "add certificates to the CA's revocation list (<dir>/ca.crl); with none, re-sign it (a new next update)",
		Run:     ctlRevoke,
	})
}

// ctlRevoke writes dir/ca.crl: the entries already there plus the named
// certificates (files, or serials in hex), signed by dir's CA. Processes
// started with --tls-crl (controllers) or tls.crl (agents) refuse those
// peers from their next handshake, without a restart.
func ctlRevoke(_ context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "revoke")
	dir := fs.String("dir", "./certs", "directory with ca.pem and ca-key.pem (see certs); the list is written to ca.crl there")
	validity := fs.Duration("validity", 30*24*time.Hour, "until the list's next update: past it peers log a warning and export the time (run revoke again before)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: controller revoke [--dir DIR] [--validity D] [CERT.pem | SERIAL]...\n")
		fs.PrintDefaults()
	}
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *validity <= 0 {
		return fmt.Errorf("%w: --validity must be positive", cli.ErrUsage)
	}
	certPath, keyPath := filepath.Join(*dir, "ca.pem"), filepath.Join(*dir, "ca-key.pem")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("revoke needs the CA: %w", err)
		}
	}
	ca, _, err := ctlLoadOrCreateCA(*dir, 0)
	if err != nil {
		return err
	}
	var serials []*big.Int
	for _, a := range fs.Args() {
		sn, err := ctlSerialOf(a, ca)
		if err != nil {
			return err
		}
		serials = append(serials, sn)
	}
	crlPath := filepath.Join(*dir, "ca.crl")
	var prev *x509.RevocationList
	if _, err := os.Stat(crlPath); err == nil {
		if prev, err = pki.ReadCRL(crlPath); err != nil {
			return err
		}
	}
	b, err := ca.Revoke(prev, serials, time.Now(), *validity)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(crlPath, 0o644, b); err != nil {
		return err
	}
	crl, err := pki.ReadCRL(crlPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(ctlOut, "CRL       %s (number %s, %d revoked, next update %s)\n", crlPath, crl.Number,
		len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))
	return nil
}

// ctlSerialOf reads a certificate file's serial (refusing one another CA
// issued: its serial means nothing in this CA's list) or parses a hex
// serial.
func ctlSerialOf(arg string, ca *pki.CA) (*big.Int, error) {
	if _, err := os.Stat(arg); err == nil {
		c, err := pki.ReadCertificate(arg)
		if err != nil {
			return nil, err
		}
		if err := c.CheckSignatureFrom(ca.Cert); err != nil {
			return nil, fmt.Errorf("%s (%q) was not issued by this CA: %w", arg, c.Subject.CommonName, err)
		}
		return c.SerialNumber, nil
	}
	sn, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ReplaceAll(arg, ":", ""), "0x"), 16)
	if !ok || sn.Sign() <= 0 {
		return nil, fmt.Errorf("%w: %q is neither a certificate file nor a hex serial", cli.ErrUsage, arg)
	}
	return sn, nil
}
