package controller

import (
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/premirror/premirror/internal/pki"
)

// Etcd request limits of the embedded etcd. A compressed desired state for
// 4096 resources × 64 regions is about 90 kB, but a bulk apply of
// thousands of objects needs more than etcd's 128 operations per
// transaction. Against an external cluster with other limits, set
// Store.MaxTxnOps to its --max-txn-ops and Store.MaxRequestBytes to its
// --max-request-bytes (a larger apply is split, each part valid; an
// object beyond the request limit is refused before anything is
// written).
const (
	EtcdMaxRequestBytes = 10 << 20
	EtcdMaxTxnOps       = 16384
	// EtcdDefaultMaxRequestBytes is etcd's own default, assumed of an
	// external cluster.
	EtcdDefaultMaxRequestBytes = 3 << 19 // 1.5 MiB
)

// EmbeddedEtcd configures the single-node etcd `controller run` starts by
// default.
type EmbeddedEtcd struct {
	// Dir is the data directory.
	Dir string
	// ClientAddr and PeerAddr are host:port listen addresses; an empty
	// one picks a free loopback port.
	ClientAddr, PeerAddr string
	// TLS secures both listeners with mutual TLS (the controller's own
	// certificate must carry the listen host in its SANs).
	TLS pki.Files
	// ClientNames are the certificate common names both listeners accept;
	// empty: only the common name of TLS.Cert (every replica of the
	// development CA is "controller"). Agents and admins hold certificates
	// of the same CA, and etcd's data is everything the admin API guards:
	// a CA-signed certificate alone must not reach it.
	ClientNames []string
	// UnsafeNoFsync skips fsync (tests only: a crash may lose writes).
	UnsafeNoFsync bool
	// Logger receives etcd's logs; nil logs errors to stderr.
	Logger *zap.Logger
}

// StartEtcd starts an embedded etcd and returns it with its client
// endpoint. Clients must present a certificate of the same CA whose
// common name is one of ClientNames.
func StartEtcd(c EmbeddedEtcd) (*embed.Etcd, string, error) {
	if err := c.TLS.Validate(); err != nil {
		return nil, "", fmt.Errorf("embedded etcd: %w", err)
	}
	if c.Dir == "" {
		return nil, "", fmt.Errorf("embedded etcd data dir: missing")
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("embedded etcd data dir: %w", err)
	}
	var err error
	for _, a := range []*string{&c.ClientAddr, &c.PeerAddr} {
		if *a == "" {
			if *a, err = freeLoopbackAddr(); err != nil {
				return nil, "", err
			}
		}
	}
	cu, err := url.Parse("https://" + c.ClientAddr)
	if err != nil {
		return nil, "", fmt.Errorf("etcd client address: %w", err)
	}
	pu, err := url.Parse("https://" + c.PeerAddr)
	if err != nil {
		return nil, "", fmt.Errorf("etcd peer address: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "premirror"
	cfg.Dir = c.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	names := c.ClientNames
	if len(names) == 0 {
		own, err := pki.CommonName(c.TLS.Cert)
		if err == nil && own == "" {
			err = fmt.Errorf("certificate %s: no common name", c.TLS.Cert)
		}
		if err != nil {
			return nil, "", fmt.Errorf("embedded etcd: %w", err)
		}
		names = []string{own}
	}
	if c.TLS.CRL != "" {
		// etcd parses the file as DER and, given PEM, refuses every
		// connection, the controller's own included.
		b, err := os.ReadFile(c.TLS.CRL)
		if err != nil {
			return nil, "", fmt.Errorf("embedded etcd: tls crl: %w", err)
		}
		if blk, _ := pem.Decode(b); blk != nil {
			return nil, "", fmt.Errorf("embedded etcd: tls crl %s is PEM; etcd reads DER only (openssl crl -in %s -outform DER -out ca.crl)", c.TLS.CRL, c.TLS.CRL)
		}
	}
	// etcd reads the certificate and the CRL again at every handshake
	// (a renewal needs no restart); the CA bundle only at start.
	tlsInfo := transport.TLSInfo{CertFile: c.TLS.Cert, KeyFile: c.TLS.Key, TrustedCAFile: c.TLS.CA, ClientCertAuth: true,
		AllowedCNs: names, CRLFile: c.TLS.CRL}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	cfg.TlsMinVersion = "TLS1.3" // as every other channel (pki)
	cfg.LogLevel = "error"
	if c.Logger != nil {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.Logger)
	}
	cfg.MaxRequestBytes = EtcdMaxRequestBytes
	cfg.MaxTxnOps = EtcdMaxTxnOps
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	// Reports rewrite one key per agent every second: keep 10 minutes of
	// history for watchers that fall behind, not forever.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "10m"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("embedded etcd not ready after 60s")
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("embedded etcd: %w", err)
	}
	return e, cu.String(), nil
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// DialEtcd connects to etcd endpoints. With files set the connection uses
// mutual TLS (required for https endpoints such as the embedded etcd).
func DialEtcd(endpoints []string, files *pki.Files) (*clientv3.Client, error) {
	var tc *tls.Config
	if files != nil {
		var err error
		if tc, err = pki.ClientConfig(*files, ""); err != nil {
			return nil, fmt.Errorf("etcd tls: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:          endpoints,
		TLS:                tc,
		DialTimeout:        5 * time.Second,
		MaxCallSendMsgSize: EtcdMaxRequestBytes + 1<<20,
		MaxCallRecvMsgSize: 256 << 20,
		Logger:             zap.NewNop(),
		// Detect a dead etcd member quickly enough for leader failover.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("connect etcd %v: %w", endpoints, err)
	}
	return cli, nil
}
