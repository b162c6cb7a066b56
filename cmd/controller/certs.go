package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
		if strings.ContainsAny(n, "/\\ ") || n == "ca" || n == "controller" {
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
