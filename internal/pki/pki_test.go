package pki

import (
	"crypto/tls"
	"io"
	"testing"
	"time"
)

// TestMutualTLS checks that a peer with a CA-signed certificate connects and
// is named, and that a peer signed by another CA is refused.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvLeaf, _ := ca.Issue("server", []string{"127.0.0.1", "localhost"}, time.Hour)
	cliLeaf, _ := ca.Issue("node-a", nil, time.Hour)
	srvFiles, err := WriteLeaf(dir+"/srv", "server", ca, srvLeaf)
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, _ := WriteLeaf(dir+"/cli", "node-a", ca, cliLeaf)

	other, _ := NewCA("other-ca", time.Hour)
	rogueLeaf, _ := other.Issue("rogue", nil, time.Hour)
	rogueFiles, _ := WriteLeaf(dir+"/rogue", "rogue", other, rogueLeaf)
	rogueFiles.CA = srvFiles.CA // trusts the server, but is signed by another CA

	scfg, err := ServerConfig(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	names := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				names <- "refused"
			} else {
				names <- PeerName(tc.ConnectionState())
				io.WriteString(tc, "ok")
			}
			tc.Close()
		}
	}()

	tests := []struct {
		name  string
		files Files
		want  string
	}{
		{"signed client accepted", cliFiles, "node-a"},
		{"foreign client refused", rogueFiles, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ccfg, err := ClientConfig(tt.files, "127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
			if err == nil {
				// TLS 1.3 reports a refused client certificate on first read.
				_, err = io.ReadAll(c)
				c.Close()
			}
			if got := <-names; got != tt.want {
				t.Fatalf("server saw %q, want %q (client err %v)", got, tt.want, err)
			}
		})
	}
}

func TestFilesValidate(t *testing.T) {
	err := Files{CA: "a", Cert: "b"}.Validate()
	if err == nil || err.Error() != "tls key: path is empty" {
		t.Fatalf("got %v", err)
	}
	if _, err := ServerConfig(Files{CA: "/nonexistent", Cert: "/x", Key: "/y"}); err == nil {
		t.Fatal("want error for missing files")
	}
}
