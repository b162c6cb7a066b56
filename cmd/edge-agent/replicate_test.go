package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/testnet"
)

func run(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	old := stdout
	stdout = &out
	defer func() { stdout = old }()
	if err := commands.Run(ctx, args); err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// TestReplicateCommands drives the replicator the way an operator does:
// certificates, a primary, a mirror node, full and delta pushes, verify.
func TestReplicateCommands(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	ctx := context.Background()
	run(t, ctx, "replicate", "dev-certs", "--dir", filepath.Join(dir, "tls"), "--names", "src,dst")
	src := filepath.Join(dir, "src.img")
	run(t, ctx, "replicate", "init", "--image", src, "--size", "4MiB")
	addr, stop := serveMirror(t, filepath.Join(dir, "tls"), filepath.Join(dir, "dst.img"))
	defer stop()
	tlsArgs := []string{"--node", "src", "--tls-dir", filepath.Join(dir, "tls"), "--image", src, "--peer", "dst@" + addr}
	out := run(t, ctx, append([]string{"replicate", "push", "--mode", "full"}, tlsArgs...)...)
	if !strings.Contains(out, "copy:") || !strings.Contains(out, "cycle 1") {
		t.Fatalf("push output %q", out)
	}
	out = run(t, ctx, "replicate", "write", "--image", src, "--fraction", "0.01", "--seed", "3")
	if !strings.Contains(out, "changed_blocks=10") {
		t.Fatalf("write output %q", out)
	}
	out = run(t, ctx, append([]string{"replicate", "push", "--json"}, tlsArgs...)...)
	if !strings.Contains(out, `"cycle_sent": 10`) {
		t.Fatalf("delta push output %q", out)
	}
	// The mirror applies a cycle right after acknowledging its commit.
	for i := 0; ; i++ {
		a, _ := os.ReadFile(src)
		b, _ := os.ReadFile(filepath.Join(dir, "dst.img"))
		if bytes.Equal(a, b) {
			break
		}
		if i == 200 {
			t.Fatal("mirror differs from source after the delta push")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out = run(t, ctx, append([]string{"replicate", "verify"}, tlsArgs...)...)
	if !strings.Contains(out, "0 differ") {
		t.Fatalf("verify output %q", out)
	}
	out = run(t, ctx, "replicate", "status", "--image", src)
	if !strings.Contains(out, `"role": "primary"`) {
		t.Fatalf("status output %q", out)
	}
	if err := commands.Run(ctx, []string{"replicate", "push", "--image", src}); err == nil {
		t.Fatal("push without --peer succeeded")
	}
}

// dev-certs names files <name>.pem and <name>-key.pem: a name ending in
// -key writes its certificate over another name's key ("ca" over the CA,
// "../x" outside --dir, "" a ".pem"). Such names must be refused.
func TestDevCertsRefusesCollidingNames(t *testing.T) {
	for _, names := range []string{"src,src-key", "src,ca", "src,", "../escape"} {
		base := t.TempDir()
		dir := filepath.Join(base, "tls")
		err := commands.Run(context.Background(), []string{"replicate", "dev-certs", "--dir", dir, "--names", names})
		if errors.Is(err, cli.ErrUsage) {
			continue
		}
		t.Errorf("dev-certs --names %q: %v, want a usage error", names, err)
		if names == "src,src-key" {
			if _, perr := pki.ClientConfig(pki.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "src.pem"),
				Key: filepath.Join(dir, "src-key.pem")}, ""); perr != nil {
				t.Errorf("  and src's files are broken: %v", perr)
			}
		}
		if _, serr := os.Stat(filepath.Join(base, "escape.pem")); serr == nil {
			t.Errorf("  and it wrote %s, outside --dir", filepath.Join(base, "escape.pem"))
		}
	}
}

// push and verify name the local image of an initialized primary: a
// --image that has no volume metadata (a typo, the wrong device) must be
// refused, not initialized on the spot as a new primary and pushed over
// the mirror's copy of the real volume.
func TestPushRefusesUninitializedImage(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	run(t, ctx, "replicate", "dev-certs", "--dir", filepath.Join(dir, "tls"), "--names", "src,dst")
	src := filepath.Join(dir, "src.img")
	run(t, ctx, "replicate", "init", "--image", src, "--size", "1MiB")
	dst := filepath.Join(dir, "dst.img")
	addr, stop := serveMirror(t, filepath.Join(dir, "tls"), dst)
	defer stop()
	tlsArgs := []string{"--node", "src", "--tls-dir", filepath.Join(dir, "tls"), "--peer", "dst@" + addr}
	run(t, ctx, append([]string{"replicate", "push", "--mode", "full", "--image", src}, tlsArgs...)...)
	before, _ := os.ReadFile(dst)

	// Another file, never initialized: a typo for src.img.
	other := filepath.Join(dir, "other.img")
	junk := make([]byte, 1<<20)
	rand.Read(junk)
	if err := os.WriteFile(other, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	stdout = &out
	err := commands.Run(ctx, append([]string{"replicate", "push", "--mode", "full", "--image", other}, tlsArgs...))
	stdout = os.Stdout
	if _, serr := os.Stat(other + ".pmr"); serr == nil {
		t.Errorf("push initialized %s as a new primary volume (err %v)", other, err)
	}
	time.Sleep(200 * time.Millisecond)
	after, _ := os.ReadFile(dst)
	if !bytes.Equal(before, after) {
		t.Errorf("push from an uninitialized image replaced the mirror's copy (err %v)", err)
	}
	if err == nil {
		t.Error("push from an uninitialized image succeeded")
	}
}

// serveMirror runs `replicate serve` as node dst with volume vol at image,
// waits until it listens, and returns its address and a stop function
// (which reports serve's error).
func serveMirror(t *testing.T, tlsDir, image string) (string, func()) {
	t.Helper()
	// Below the ephemeral range: nothing takes the port before serve
	// listens there.
	ln, err := testnet.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- commands.Run(ctx, []string{"replicate", "serve", "--node", "dst", "--tls-dir", tlsDir,
			"--listen", addr, "--volume", "vol=" + image})
	}()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}
