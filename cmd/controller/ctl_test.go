package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const objectsFile = "../../internal/controller/testdata/objects.yaml"

var outMu sync.Mutex

// ctl runs one subcommand in-process and returns its output.
func ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	outMu.Lock()
	ctlOut = &buf
	err := commands.Run(context.Background(), args)
	ctlOut = os.Stdout
	outMu.Unlock()
	return buf.String(), err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func healthz(addr string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricsText(t *testing.T, addr string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCtlEndToEnd(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	out, err := ctl(t, "certs", "--dir", certs, "--agents", "edge-eu,edge-us", "--replicators", "paris-host")
	if err != nil || !strings.Contains(out, "edge-us.pem") || !strings.Contains(out, "replicator-paris-host.pem") {
		t.Fatalf("certs: %v\n%s", err, out)
	}
	// Running it again reuses the CA.
	caBefore, _ := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if _, err := ctl(t, "certs", "--dir", certs, "--agents", "edge-asia"); err != nil {
		t.Fatal(err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if !bytes.Equal(caBefore, caAfter) {
		t.Fatal("certs replaced an existing CA")
	}

	// An empty revocation list to start with.
	if out, err := ctl(t, "revoke", "--dir", certs); err != nil || !strings.Contains(out, "0 revoked") {
		t.Fatalf("revoke (none): %v\n%s", err, out)
	}
	crl := filepath.Join(certs, "ca.crl")

	addr, maddr, paddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- commands.Run(ctx, []string{"run", "--name", "solo", "--listen", addr, "--tls-dir", certs, "--tls-crl", crl,
			"--data-dir", filepath.Join(dir, "etcd"), "--etcd-listen", freeAddr(t), "--etcd-peer-listen", freeAddr(t),
			"--metrics-addr", maddr, "--pprof-addr", paddr, "--tick", "100ms"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	waitFor(t, "controller leads", 30*time.Second, func() bool { return strings.Contains(healthz(maddr), `leader "solo"`) })
	// Runtime profiles on their own listener.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + paddr + "/debug/pprof/goroutine?debug=1"); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "goroutine profile") {
			t.Fatalf("pprof: %.200s", b)
		}
	}

	admin := []string{"--server", addr, "--tls-dir", certs}
	out, err = ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...)
	if err != nil || !strings.Contains(out, "site/eu created (id 1)") || !strings.Contains(out, "resource/web created") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	out, err = ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...)
	if err != nil || strings.Contains(out, "created") || !strings.Contains(out, "mirror/nyc unchanged") {
		t.Fatalf("re-apply: %v\n%s", err, out)
	}
	out, err = ctl(t, append([]string{"get", "mirror", "paris"}, admin...)...)
	if err != nil || !strings.Contains(out, "name: paris") || strings.Contains(out, "nyc") {
		t.Fatalf("get: %v\n%s", err, out)
	}
	// What get prints applies again.
	all, err := ctl(t, append([]string{"get"}, admin...)...)
	if err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(dir, "back.yaml")
	if err := os.WriteFile(back, []byte(all), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(t, append([]string{"apply", "-f", back}, admin...)...); err != nil || strings.Contains(out, "updated") {
		t.Fatalf("apply of get output: %v\n%s", err, out)
	}

	// Draining a host: its mirrors drain, nothing else changes; a mirror
	// already draining (nyc) or down is left as it is; undrain reverses.
	out, err = ctl(t, append([]string{"drain", "node", "paris-host"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/paris draining (was active)") || !strings.Contains(out, `mirror=~"paris"`) {
		t.Fatalf("drain node: %v\n%s", err, out)
	}
	if out, _ := ctl(t, append([]string{"get", "mirror", "paris"}, admin...)...); !strings.Contains(out, "state: draining") || !strings.Contains(out, "node: paris-host") {
		t.Fatalf("paris after drain:\n%s", out)
	}
	waitFor(t, "status to list paris draining", 10*time.Second, func() bool {
		out, _ := ctl(t, append([]string{"status"}, admin...)...)
		return strings.Contains(out, "draining: mirror paris (set by the operator")
	})
	if out, err := ctl(t, append([]string{"drain", "mirror", "nyc"}, admin...)...); err != nil || !strings.Contains(out, "mirror/nyc already draining") {
		t.Fatalf("drain of a draining mirror: %v\n%s", err, out)
	}
	if _, err := ctl(t, append([]string{"drain", "node", "nobody"}, admin...)...); err == nil || !strings.Contains(err.Error(), `no mirror names node "nobody"`) {
		t.Fatalf("drain of an unknown node: %v", err)
	}
	if _, err := ctl(t, append([]string{"drain", "site", "eu"}, admin...)...); err == nil {
		t.Fatal("drain site accepted")
	}
	out, err = ctl(t, append([]string{"undrain", "mirror", "paris"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/paris active (was draining)") {
		t.Fatalf("undrain: %v\n%s", err, out)
	}
	if out, err := ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...); err != nil || strings.Contains(out, "updated") {
		t.Fatalf("after undrain the objects are as applied: %v\n%s", err, out)
	}
	if _, err := ctl(t, append([]string{"drain", "node", "paris-host"}, "--server", addr, "--tls-dir", certs, "--tls-name", "edge-eu")...); err == nil || !strings.Contains(err.Error(), "may not change objects") {
		t.Fatalf("agent drain: %v", err)
	}

	// Invalid objects: the offending field is named, locally and by the
	// controller's set validation.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("mirrors:\n  - {name: m2, site: eu, address: 192.0.2.300}\n"), 0o600)
	if _, err := ctl(t, append([]string{"apply", "-f", bad}, admin...)...); err == nil || !strings.Contains(err.Error(), "mirrors[0] (m2).address") {
		t.Fatalf("bad address: %v", err)
	}
	os.WriteFile(bad, []byte("mirrors:\n  - {name: m2, site: mars, address: 192.0.2.30}\n"), 0o600)
	if _, err := ctl(t, append([]string{"apply", "-f", bad}, admin...)...); err == nil || !strings.Contains(err.Error(), `mirror "m2": site: "mars"`) {
		t.Fatalf("unknown site: %v", err)
	}
	// An agent's certificate may not write.
	if _, err := ctl(t, "apply", "-f", objectsFile, "--server", addr, "--tls-dir", certs, "--tls-name", "edge-eu"); err == nil || !strings.Contains(err.Error(), "may not change objects") {
		t.Fatalf("agent apply: %v", err)
	}

	waitFor(t, "a version", 10*time.Second, func() bool {
		out, _ := ctl(t, append([]string{"status"}, admin...)...)
		return strings.Contains(out, "leader:  solo") && !strings.Contains(out, "version: 0 ")
	})
	out, err = ctl(t, append([]string{"delete", "resource", "web"}, admin...)...)
	if err != nil || !strings.Contains(out, "resource/web deleted") {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, err := ctl(t, append([]string{"delete", "mirror", "paris"}, admin...)...); err == nil || !strings.Contains(err.Error(), "still uses it") {
		t.Fatalf("delete of a used mirror: %v", err)
	}
	if _, err := ctl(t, append([]string{"delete", "node", "nobody"}, admin...)...); err == nil || !strings.Contains(err.Error(), `delete node nobody: node "nobody": no agent record`) {
		t.Fatalf("forget an unknown node: %v", err)
	}
	if _, err := ctl(t, "apply"); err == nil {
		t.Fatal("apply without -f accepted")
	}

	// Revocation takes effect at the running controller's next handshake:
	// edge-us may read until its certificate is listed.
	asEdgeUS := []string{"get", "site", "eu", "--server", addr, "--tls-dir", certs, "--tls-name", "edge-us"}
	if _, err := ctl(t, asEdgeUS...); err != nil {
		t.Fatalf("get as edge-us before revocation: %v", err)
	}
	if out, err := ctl(t, "revoke", "--dir", certs, filepath.Join(certs, "edge-us.pem")); err != nil || !strings.Contains(out, "1 revoked") {
		t.Fatalf("revoke edge-us: %v\n%s", err, out)
	}
	if _, err := ctl(t, asEdgeUS...); err == nil {
		t.Fatal("a revoked certificate still reads")
	}
	if _, err := ctl(t, append([]string{"get", "site", "eu"}, admin...)...); err != nil {
		t.Fatalf("admin after edge-us's revocation: %v", err)
	}
	if m := metricsText(t, maddr); !strings.Contains(m, `premirror_tls_revoked_handshakes_total{channel="agents"} 1`) ||
		!strings.Contains(m, `premirror_tls_reloads_total{channel="agents",result="loaded"} 1`) {
		t.Fatalf("metrics after a revocation:\n%s", grepLines(m, "premirror_tls_"))
	}
	// Bad arguments are named.
	for _, args := range [][]string{{"revoke", "--dir", certs, "zz"}, {"revoke", "--dir", t.TempDir()}, {"revoke", "--dir", certs, objectsFile}} {
		if _, err := ctl(t, args...); err == nil {
			t.Fatalf("%v accepted", args)
		}
	}
}

// TestCtlChildProcess is the body of the child processes of
// TestCtlLeaderKilled; it does nothing in a normal run.
func TestCtlChildProcess(t *testing.T) {
	args := os.Getenv("PREMIRROR_CTL_CHILD_ARGS")
	if args == "" {
		t.Skip("child process helper")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := commands.Run(ctx, strings.Split(args, "\x1f"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestCtlLeaderKilled runs two controller processes on one etcd, kills
// the leader with SIGKILL and checks the other takes over and keeps the
// versions monotonic.
func TestCtlLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if _, err := ctl(t, "certs", "--dir", certs); err != nil {
		t.Fatal(err)
	}
	// The etcd both replicas share runs in its own process too.
	etcdAddr := freeAddr(t)
	ep := "https://" + etcdAddr
	etcdCmd := exec.Command(os.Args[0], "-test.run=^TestCtlChildProcess$")
	etcdCmd.Env = append(os.Environ(), "PREMIRROR_CTL_CHILD_ARGS="+strings.Join([]string{"etcd", "--tls-dir", certs,
		"--data-dir", filepath.Join(dir, "etcd"), "--etcd-listen", etcdAddr, "--etcd-peer-listen", freeAddr(t)}, "\x1f"))
	if err := etcdCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcdCmd.Process.Signal(syscall.SIGTERM); etcdCmd.Wait() })

	type child struct {
		cmd         *exec.Cmd
		addr, maddr string
	}
	start := func(name string) *child {
		c := &child{addr: freeAddr(t), maddr: freeAddr(t)}
		args := []string{"run", "--name", name, "--listen", c.addr, "--tls-dir", certs, "--etcd-endpoints", ep,
			"--metrics-addr", c.maddr, "--tick", "100ms", "--lease-ttl", "2s"}
		c.cmd = exec.Command(os.Args[0], "-test.run=^TestCtlChildProcess$")
		c.cmd.Env = append(os.Environ(), "PREMIRROR_CTL_CHILD_ARGS="+strings.Join(args, "\x1f"))
		logs := &syncBuffer{}
		c.cmd.Stderr = logs
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			c.cmd.Process.Kill()
			c.cmd.Wait()
			if t.Failed() {
				t.Logf("%s logs:\n%s", name, logs.String())
			}
		})
		return c
	}
	a := start("ra")
	waitFor(t, "ra leads", 30*time.Second, func() bool { return strings.Contains(healthz(a.maddr), `leader "ra"`) })
	b := start("rb")
	waitFor(t, "rb follows", 30*time.Second, func() bool { return strings.Contains(healthz(b.maddr), `leader "ra"`) })
	admin := []string{"--server", b.addr, "--tls-dir", certs}
	if out, err := ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...); err != nil {
		t.Fatalf("apply via the follower: %v\n%s", err, out)
	}
	var before string
	waitFor(t, "version from ra", 10*time.Second, func() bool {
		before = healthz(b.maddr)
		return !strings.Contains(before, "version 0")
	})

	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	waitFor(t, "rb takes over", 15*time.Second, func() bool { return strings.Contains(healthz(b.maddr), `leader "rb"`) })
	t.Logf("rb leads %v after SIGKILL of the leader (lease ttl 2s); before: %s", time.Since(killed).Round(time.Millisecond), strings.TrimSpace(before))

	// The survivor computes: a change gives a higher version.
	os.WriteFile(filepath.Join(dir, "more.yaml"), []byte("sites:\n  - {name: asia, client_prefixes: [10.3.0.0/16]}\n"), 0o600)
	if _, err := ctl(t, append([]string{"apply", "-f", filepath.Join(dir, "more.yaml")}, admin...)...); err != nil {
		t.Fatal(err)
	}
	var vBefore, vAfter uint64
	fmt.Sscanf(before[strings.Index(before, "version ")+len("version "):], "%d", &vBefore)
	waitFor(t, "a version from rb", 10*time.Second, func() bool {
		h := healthz(b.maddr)
		if i := strings.Index(h, "version "); i >= 0 {
			fmt.Sscanf(h[i+len("version "):], "%d", &vAfter)
		}
		return vAfter > vBefore
	})
	out, err := ctl(t, append([]string{"status"}, admin...)...)
	if err != nil || !strings.Contains(out, "leader:  rb") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	if err := b.cmd.Wait(); err != nil {
		t.Fatalf("rb did not stop cleanly on SIGTERM: %v", err)
	}
}

// syncBuffer collects a child's logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A certificate's files are <name>.pem and <name>-key.pem: a name ending
// in "-key" would write its certificate over another's key ("ca-key" over
// the CA's private key, "controller-key" over the controller's).
func TestCertsRefusesKeyFileNames(t *testing.T) {
	for _, flag := range []string{"--agents=ca-key", "--admins=controller-key", "--replicators=r1-key"} {
		dir := t.TempDir()
		if _, err := ctl(t, "certs", "--dir", dir); err != nil {
			t.Fatal(err)
		}
		if _, err := ctl(t, "certs", "--dir", dir, flag); err == nil || !strings.Contains(err.Error(), "cannot name a certificate") {
			t.Fatalf("%s: %v, want it refused", flag, err)
		}
		// The CA and the controller's key pair are untouched.
		if _, err := ctl(t, "certs", "--dir", dir, "--agents=edge-1"); err != nil {
			t.Fatalf("after %s the CA no longer loads: %v", flag, err)
		}
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "controller.pem"), filepath.Join(dir, "controller-key.pem")); err != nil {
			t.Fatalf("after %s the controller's key pair no longer loads: %v", flag, err)
		}
	}
}

// replay-access returns when its context ends. Its loop selects on the
// context and on the client's result; when it took the result, a deferred
// second receive would wait forever.
func TestReplayReturnsOnCancel(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if _, err := ctl(t, "certs", "--dir", certs, "--agents", "replay-eu"); err != nil {
		t.Fatal(err)
	}
	csv := filepath.Join(dir, "d.csv")
	if err := os.WriteFile(csv, []byte("timestamp,location,value\n2024-01-01T00:00:00Z,eu,5\n2024-01-01T01:00:00Z,eu,6\n2024-01-01T02:00:00Z,eu,7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 20 { // the select picks at random: 20 runs miss it with p = 2^-20
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // ended before it starts: the client returns at once
		done := make(chan error, 1)
		go func() {
			done <- commands.Run(ctx, []string{"replay-access", "--server", freeAddr(t), "--tls-dir", certs, "--tls-name", "replay-eu",
				"--site", "eu", "--csv", csv, "--resource", "web", "--speedup", "3600"})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("run %d: replay-access did not return after its context ended", i)
		}
	}
}
