package pki

import (
	"os"
	"path/filepath"
	"strings"
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
	addr, res := serve(t, scfg)
	tests := []struct {
		name    string
		files   Files
		refused bool
	}{
		{"signed client accepted", cliFiles, false},
		{"foreign client refused", rogueFiles, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ccfg, err := ClientConfig(tt.files, "127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			r := dial(t, addr, ccfg, res)
			if refused := r.serverErr != nil; refused != tt.refused || refused != (r.clientErr != nil) {
				t.Fatalf("server err %v, client err %v; want refused %v", r.serverErr, r.clientErr, tt.refused)
			}
			if !tt.refused && r.peerName != "node-a" {
				t.Fatalf("server named the client %q, want node-a", r.peerName)
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

// TestFilesCheck: what loads but cannot complete a handshake fails
// Check, naming the file: before, only a missing or unparsable file or a
// key of another certificate was caught, and an expired certificate or
// one another CA signed failed every handshake at run time.
func TestFilesCheck(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, ca *CA, validity time.Duration) Files {
		leaf, err := ca.Issue(name, nil, validity)
		if err != nil {
			t.Fatal(err)
		}
		f, err := WriteLeaf(filepath.Join(dir, name), name, ca, leaf)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	good := write("node-a", ca, time.Hour)
	if err := good.Check(time.Now()); err != nil {
		t.Fatalf("valid files: %v", err)
	}
	expired := write("expired", ca, -time.Second)
	foreign := write("foreign", other, time.Hour)
	corrupt := filepath.Join(dir, "corrupt.pem")
	if err := os.WriteFile(corrupt, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    Files
		now  time.Time
		want string
	}{
		{"expired", expired, time.Now(), "tls cert " + expired.Cert + ` ("expired"`},
		{"not yet valid", good, time.Now().Add(-time.Hour), "certificate has expired or is not yet valid"},
		{"valid past the CA", good, time.Now().Add(2 * time.Hour), "certificate has expired or is not yet valid"},
		{"another CA", Files{CA: good.CA, Cert: foreign.Cert, Key: foreign.Key}, time.Now(), "signed by unknown authority"},
		{"key of another certificate", Files{CA: good.CA, Cert: good.Cert, Key: foreign.Key}, time.Now(), "load key pair " + good.Cert},
		{"corrupt certificate", Files{CA: good.CA, Cert: corrupt, Key: good.Key}, time.Now(), "load key pair " + corrupt},
		{"corrupt CA", Files{CA: corrupt, Cert: good.Cert, Key: good.Key}, time.Now(), "ca " + corrupt},
		{"missing key", Files{CA: good.CA, Cert: good.Cert, Key: filepath.Join(dir, "none.pem")}, time.Now(), "no such file"},
		{"a directory", Files{CA: dir, Cert: good.Cert, Key: good.Key}, time.Now(), "read ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Check(tc.now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestCommonName reads the name of an issued certificate and refuses a
// file that holds none.
func TestCommonName(t *testing.T) {
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("edge-1", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f, err := WriteLeaf(dir, "edge-1", ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := CommonName(f.Cert); err != nil || cn != "edge-1" {
		t.Fatalf("CommonName = %q, %v; want edge-1", cn, err)
	}
	if _, err := CommonName(f.Key + ".missing"); err == nil {
		t.Fatal("a missing file has a name")
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CommonName(junk); err == nil || !strings.Contains(err.Error(), "no PEM block") {
		t.Fatalf("junk: %v, want no PEM block", err)
	}
}

// TestCheckLeafName: WriteLeaf writes <name>.pem and <name>-key.pem next
// to ca.pem; a name that would overwrite another's files or leave dir is
// refused.
func TestCheckLeafName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"edge-1", true}, {"admin", true}, {"keys", true},
		{"", false}, {".", false}, {"..", false}, {"ca", false}, {"edge-1-key", false},
		{"../x", false}, {`a\b`, false}, {"a b", false},
	} {
		if err := CheckLeafName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckLeafName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if _, err := WriteLeaf(t.TempDir(), "ca", nil, nil); err == nil {
		t.Error("WriteLeaf wrote a leaf named ca")
	}
}
