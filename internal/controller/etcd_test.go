package controller

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

// TestEtcdRefusesOtherCertificatesOfTheCA: agents and admins hold
// certificates of the controller's CA. The embedded etcd holds what the
// admin API guards (objects, desired state, placements), so a certificate
// of that CA whose name is not the controller's must not reach it: an
// agent could otherwise write objects past requireAdmin.
func TestEtcdRefusesOtherCertificatesOfTheCA(t *testing.T) {
	ep := etcdEndpoint(t)
	prefix := testPrefix(t)
	dir := t.TempDir()
	for _, name := range []string{"edge-1", "admin"} {
		t.Run(name, func(t *testing.T) {
			f := issueFiles(t, shared.ca, dir, name, []string{"127.0.0.1"})
			cli, err := DialEtcd([]string{ep}, &f)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, prefix+"objects/mirror/evil", "x"); err == nil {
				t.Fatalf("%s's certificate wrote to etcd", name)
			}
		})
	}
	// The controller's own certificate still works, and nothing landed.
	cli := etcdClient(t)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix+"objects/mirror/evil")
	if err != nil {
		t.Fatalf("controller certificate: %v", err)
	}
	if len(resp.Kvs) != 0 {
		t.Fatal("a refused client's write landed")
	}
}

// TestEtcdRefusesTLS12: the embedded etcd speaks TLS 1.3 only, as every
// other channel (etcd's own default accepts 1.2).
func TestEtcdRefusesTLS12(t *testing.T) {
	tc := clientTLS(t, shared.files)
	tc.MinVersion, tc.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	tc.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", strings.TrimPrefix(etcdEndpoint(t), "https://"), tc)
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.2 handshake accepted")
	}
}
