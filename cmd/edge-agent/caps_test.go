package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/testbed"
)

// mainEnv makes the test binary run edge-agent's main instead of the
// tests, so the tests below can start the agent as a process of its own,
// under setpriv.
const mainEnv = "PM_EDGE_AGENT_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

const manifestPath = "../../deploy/kubernetes/edge-agent.yaml"

// daemonSet is what deploy/kubernetes/edge-agent.yaml runs: the
// edge-agent container's security context and the agent config of the
// ConfigMap. Read from the manifest so that the tests cannot drift from it.
type daemonSet struct {
	caps       []string // added after drop ALL, as setpriv names them (net_admin)
	noNewPrivs bool
	config     string
}

func readDaemonSet(t *testing.T) daemonSet {
	t.Helper()
	b, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	var ds daemonSet
	var found bool
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "ConfigMap":
			var cm corev1.ConfigMap
			if err := yaml.Unmarshal([]byte(doc), &cm); err != nil {
				t.Fatal(err)
			}
			ds.config = cm.Data["edge-agent.yaml"]
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(d.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "edge-agent" })
			if i < 0 {
				t.Fatal("the DaemonSet has no edge-agent container")
			}
			sc := d.Spec.Template.Spec.Containers[i].SecurityContext
			if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
				sc.RunAsUser == nil || *sc.RunAsUser != 0 {
				t.Fatal("the edge-agent container must run as root with capabilities drop [ALL] for this test to reproduce it")
			}
			for _, c := range sc.Capabilities.Add {
				ds.caps = append(ds.caps, strings.ToLower(string(c)))
			}
			ds.noNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
			found = true
		}
	}
	if !found || ds.config == "" {
		t.Fatalf("%s: no DaemonSet or no edge-agent.yaml in its ConfigMap", manifestPath)
	}
	return ds
}

// capsTestbed is a network namespace with the interface the shipped
// config names (eth0, a veth) and a scratch bpffs, mounted for the test
// and removed after it.
type capsTestbed struct {
	t      *testing.T
	ns     *testbed.NetNS
	pinDir string
	config string // the shipped config, written to a file
	health string // its metrics address, in the namespace
}

func newCapsTestbed(t *testing.T, ds daemonSet) *capsTestbed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, mounts a bpffs and attaches XDP")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	cfg, err := agent.ParseConfig([]byte(ds.config))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Interfaces) != 1 || cfg.Interfaces[0] != "eth0" {
		t.Fatalf("the shipped config runs on %v; this test builds eth0 only", cfg.Interfaces)
	}
	_, port, err := net.SplitHostPort(cfg.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	ns := testbed.NewNetNS(t)
	if err := ns.AddVeth("eth0", "wire0"); err != nil {
		t.Fatal(err)
	}
	// The shipped mirrors (10.10.0.10, 10.20.0.10) are on this link.
	if err := ns.AddAddr("eth0", netip.MustParsePrefix("10.0.0.2/8")); err != nil {
		t.Fatal(err)
	}

	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("mount a bpffs: %v", err)
	}
	tb := &capsTestbed{t: t, ns: ns, pinDir: filepath.Join(bpffs, "premirror"), health: net.JoinHostPort("127.0.0.1", port)}
	t.Cleanup(func() {
		// Detach and unpin before the mount goes, as root.
		if out, err := tb.agentCmd(nil, "detach", "-maps", "--pin-dir", tb.pinDir).CombinedOutput(); err != nil {
			t.Errorf("detach: %v\n%s", err, out)
		}
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount the scratch bpffs: %v", err)
		}
	})
	tb.config = filepath.Join(t.TempDir(), "edge-agent.yaml")
	if err := os.WriteFile(tb.config, []byte(ds.config), 0o644); err != nil {
		t.Fatal(err)
	}
	return tb
}

// agentCmd is edge-agent args in the namespace, with only caps (setpriv
// names; nil: every capability, as root) in every capability set.
func (tb *capsTestbed) agentCmd(caps []string, args ...string) *exec.Cmd {
	var argv []string
	if caps != nil {
		set := "-all"
		for _, c := range caps {
			set += ",+" + c
		}
		// As uid 0 the bounding set becomes the permitted and effective
		// sets at exec, as in a container after drop ALL and add.
		argv = append(argv, "setpriv", "--bounding-set="+set, "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--")
	}
	argv = append(argv, os.Args[0])
	argv = append(argv, args...)
	cmd := tb.ns.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	return cmd
}

// syncBuffer collects a process's output while it runs.
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

// start runs the agent with caps until it is live (its programs attached:
// /livez), then stops it with SIGTERM as the kubelet does. It returns the
// agent's output and an error if it exited before it was live.
func (tb *capsTestbed) start(caps []string) (string, error) {
	tb.t.Helper()
	cmd := tb.agentCmd(caps, "run", "--config", tb.config, "--pin-dir", tb.pinDir)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: tb.ns.Dial}}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return out.String(), fmt.Errorf("the agent exited before it was live: %v", err)
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			tb.t.Fatalf("the agent is not live after 30s:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := client.Get("http://" + tb.health + "/livez")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			tb.t.Fatalf("the agent did not stop cleanly on SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		tb.t.Fatalf("the agent did not stop on SIGTERM:\n%s", out.String())
	}
	return out.String(), nil
}

// TestRestartUnderManifestCapabilities: the agent runs, restarts and is
// inspected with exactly the capabilities the DaemonSet grants. The
// first start installs the shipped config's routes; the restart reads
// them back from the pinned maps, as every pod restart or upgrade does.
// With BPF, NET_ADMIN and PERFMON alone that restart failed ("recover
// route tables: open route table 0 (map id N): operation not
// permitted": the kernel opens a map by ID only for CAP_SYS_ADMIN) and
// the pod crash-looped.
func TestRestartUnderManifestCapabilities(t *testing.T) {
	ds := readDaemonSet(t)
	if !ds.noNewPrivs {
		t.Error("the edge-agent container must set allowPrivilegeEscalation: false")
	}
	tb := newCapsTestbed(t, ds)
	for i, what := range []string{"first start", "restart with routes installed", "second restart"} {
		out, err := tb.start(ds.caps)
		if err != nil {
			t.Fatalf("%s (start %d) with capabilities %v: %v\n%s", what, i+1, ds.caps, err, out)
		}
		// A watch that cannot enter the namespace only logs it, and
		// runs without it.
		if strings.Contains(out, "not permitted") {
			t.Fatalf("%s (start %d) with capabilities %v: an operation was refused:\n%s", what, i+1, ds.caps, out)
		}
	}
	out, err := tb.agentCmd(ds.caps, "inspect", "--pin-dir", tb.pinDir).CombinedOutput()
	if err != nil {
		t.Fatalf("inspect with capabilities %v: %v\n%s", ds.caps, err, out)
	}
	if !regexp.MustCompile(`(?m)^RESOURCE\s+REGION\s+TABLE.*\n\d+\s+\S+\s+\d+\s+\d+=`).Match(out) {
		t.Fatalf("inspect shows no routes:\n%s", out)
	}
}

// TestMissingCapabilityNamed: without CAP_SYS_ADMIN the agent refuses to
// start naming it, instead of starting once and crash-looping on the
// next start with a bare "operation not permitted"; inspect names it too
// when it needs it.
func TestMissingCapabilityNamed(t *testing.T) {
	ds := readDaemonSet(t)
	tb := newCapsTestbed(t, ds)
	without := slices.DeleteFunc(slices.Clone(ds.caps), func(c string) bool { return c == "sys_admin" })
	out, err := tb.start(without)
	if err == nil || !strings.Contains(out, "CAP_SYS_ADMIN") {
		t.Fatalf("started with %v: %v, want a refusal naming CAP_SYS_ADMIN:\n%s", without, err, out)
	}
	// Routes installed by an agent that has it; inspect without it.
	if out, err := tb.start(nil); err != nil {
		t.Fatalf("as root: %v\n%s", err, out)
	}
	b, err := tb.agentCmd(without, "inspect", "--pin-dir", tb.pinDir).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "CAP_SYS_ADMIN") {
		t.Fatalf("inspect with %v: %v, want an error naming CAP_SYS_ADMIN:\n%s", without, err, b)
	}
}
