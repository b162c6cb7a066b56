// Package lab runs the real edge-agent binary on a testbed: one agent per
// edge (XDP router) and per mirror (XDP decap), each in its host's network
// namespace with its own pin directory, configured from one desired state.
// The end-to-end tests and `make demo` are built on it.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/testbed"
)

// MetricsAddr is where every lab agent serves metrics, inside its host's
// namespace.
const MetricsAddr = "127.0.0.1:9450"

// Lab is a testbed with agents.
type Lab struct {
	TB  *testbed.Testbed
	bin string
	dir string
	log *slog.Logger

	mu     sync.Mutex
	state  agent.DesiredState
	limits agent.Limits
	agents map[string]*Agent
	ctl    *ctlState
	hook   func(h *testbed.Host, c *agent.Config) error
}

// Agent is one running edge-agent process.
type Agent struct {
	Host   *testbed.Host
	Config string // config file path
	PinDir string
	Log    string // log file path
	cmd    *exec.Cmd
	done   chan error
}

// BuildAgent compiles cmd/edge-agent into dir and returns the binary path.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "edge-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/edge-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build edge-agent: %v\n%s", err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the module")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// New prepares a lab on tb; state is what every edge gets. bin is the
// edge-agent binary, dir a scratch directory for configs and logs.
func New(tb *testbed.Testbed, bin, dir string, state agent.DesiredState, log *slog.Logger) *Lab {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := SweepPins(); err != nil {
		log.Warn("sweeping pins of dead lab processes", "err", err)
	}
	return &Lab{TB: tb, bin: bin, dir: dir, log: log, state: state, agents: map[string]*Agent{},
		limits: agent.Limits{MaxSessions: 1 << 16, MaxAffinity: 1 << 14, MaxRoutes: 1 << 12, MaxTables: 1 << 10,
			TableSlots: 1024, MaxMirrors: 256, MaxCounters: 1 << 14, MaxPrefixesV4: 1 << 12, MaxPrefixesV6: 1 << 12}}
}

// StateFromTopology derives regions (IDs in topology order, the regions'
// prefixes) and mirrors (IDs in topology order, IPv4 addresses) from the
// testbed; the caller adds resources and routes.
func StateFromTopology(tb *testbed.Testbed) agent.DesiredState {
	var s agent.DesiredState
	topo := tb.Topology()
	for i, r := range topo.Regions {
		s.Regions = append(s.Regions, agent.Region{Name: r.Name, ID: uint32(i + 1),
			Prefixes: []string{r.PrefixV4.String(), r.PrefixV6.String()}})
	}
	for i, m := range tb.Mirrors() {
		s.Mirrors = append(s.Mirrors, agent.Mirror{Name: m.Name, ID: uint32(i + 1), Address: m.V4().String()})
	}
	return s
}

// MirrorID returns the ID StateFromTopology gave a mirror.
func (l *Lab) MirrorID(name string) uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.state.Mirrors {
		if m.Name == name {
			return m.ID
		}
	}
	return 0
}

// PinDir is the pin directory of a host's agent.
func (l *Lab) PinDir(host string) string {
	return fmt.Sprintf("/sys/fs/bpf/pmlab-%d-%s", os.Getpid(), host)
}

func (l *Lab) config(h *testbed.Host) agent.Config {
	c := agent.Config{
		Node:        h.Name,
		Interfaces:  []string{"eth0"},
		PinDir:      l.PinDir(h.Name),
		MetricsAddr: MetricsAddr,
		XDPMode:     agent.XDPNative,
		Limits:      l.limits,
	}
	c.Controller, c.Probe, c.ServiceCheck = l.controllerConfig(h.Name)
	switch h.Role {
	case testbed.RoleEdge:
		c.Role = agent.RoleEdge
		if c.Controller == nil {
			c.State = l.state
		}
		if arm, ok := h.Iface("eth1"); ok {
			// Tunnel packets leave through the mirror-facing arm.
			c.OuterSourceV4, c.OuterSourceV6 = arm.V4.String(), arm.V6.String()
		}
	case testbed.RoleMirror:
		c.Role = agent.RoleMirror
	}
	return c
}

// SetConfigHook makes every agent config the lab writes from now on pass
// through hook, which may add what the lab does not (a replication
// section, say); the result is validated like the lab's own.
func (l *Lab) SetConfigHook(hook func(h *testbed.Host, c *agent.Config) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hook = hook
}

func (l *Lab) writeConfig(a *Agent) error {
	c := l.config(a.Host)
	l.mu.Lock()
	hook := l.hook
	l.mu.Unlock()
	if hook != nil {
		if err := hook(a.Host, &c); err != nil {
			return fmt.Errorf("lab config hook for %s: %w", a.Host.Name, err)
		}
	}
	b, err := yaml.Marshal(&c)
	if err != nil {
		return err
	}
	if _, err := agent.ParseConfig(b); err != nil {
		return fmt.Errorf("lab config for %s: %w", a.Host.Name, err)
	}
	// Write then rename, so the agent's file watcher never reads half a file.
	tmp := a.Config + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, a.Config)
}

// StartAll starts the mirrors' agents, then the edges'.
func (l *Lab) StartAll(ctx context.Context) error {
	for _, h := range append(l.TB.Mirrors(), l.TB.Edges()...) {
		if err := l.Start(ctx, h.Name); err != nil {
			return err
		}
	}
	return nil
}

// Start writes host's config and starts its agent, waiting until healthy.
func (l *Lab) Start(ctx context.Context, host string) error {
	h := l.TB.Host(host)
	if h == nil {
		return fmt.Errorf("no host %q", host)
	}
	l.mu.Lock()
	a := l.agents[host]
	if a == nil {
		a = &Agent{Host: h, Config: filepath.Join(l.dir, host+".yaml"), PinDir: l.PinDir(host), Log: filepath.Join(l.dir, host+".log")}
		l.agents[host] = a
	}
	l.mu.Unlock()
	if err := l.writeConfig(a); err != nil {
		return err
	}
	logf, err := os.OpenFile(a.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	a.cmd = h.Command(l.bin, "run", "--config", a.Config)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent on %s: %w", host, err)
	}
	a.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait(); logf.Close() }(a.cmd, a.done)
	if err := l.waitHealthy(ctx, a); err != nil {
		return err
	}
	l.log.Info("agent running", "host", host, "pid", a.cmd.Process.Pid)
	return nil
}

func (l *Lab) httpClient(h *testbed.Host) *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
}

func (l *Lab) waitHealthy(ctx context.Context, a *Agent) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := l.httpClient(a.Host)
	var last string
	for {
		select {
		case err := <-a.done:
			return fmt.Errorf("agent on %s exited (%v):\n%s", a.Host.Name, err, tail(a.Log))
		case <-ctx.Done():
			return fmt.Errorf("agent on %s not healthy (%s):\n%s", a.Host.Name, last, tail(a.Log))
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := c.Get("http://" + MetricsAddr + "/healthz")
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = string(b)
	}
}

// Metrics returns the text exposition of a host's agent.
func (l *Lab) Metrics(host string) (string, error) {
	resp, err := l.httpClient(l.TB.Host(host)).Get("http://" + MetricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Stop sends SIGTERM to a host's agent and waits for it to exit. The
// programs stay attached.
func (l *Lab) Stop(host string) error {
	l.mu.Lock()
	a := l.agents[host]
	l.mu.Unlock()
	if a == nil || a.cmd == nil {
		return nil
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		a.cmd = nil
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		if ee != nil && ee.ExitCode() != 0 {
			return fmt.Errorf("agent on %s exited %d:\n%s", host, ee.ExitCode(), tail(a.Log))
		}
		return nil
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		return fmt.Errorf("agent on %s ignored SIGTERM", host)
	}
}

// Restart stops and starts a host's agent.
func (l *Lab) Restart(ctx context.Context, host string) error {
	if err := l.Stop(host); err != nil {
		return err
	}
	return l.Start(ctx, host)
}

// SetState rewrites every edge's config with state and signals the agents
// to reload, then waits until each applied it.
func (l *Lab) SetState(ctx context.Context, state agent.DesiredState) error {
	l.mu.Lock()
	l.state = state
	edges := []*Agent{}
	for _, a := range l.agents {
		if a.Host.Role == testbed.RoleEdge {
			edges = append(edges, a)
		}
	}
	l.mu.Unlock()
	for _, a := range edges {
		if err := l.reload(ctx, a); err != nil {
			return err
		}
	}
	return nil
}

// Reload rewrites host's agent config (through the config hook, which
// may have changed) and signals the agent to reload, then waits until it
// applied it.
func (l *Lab) Reload(ctx context.Context, host string) error {
	a := l.Agent(host)
	if a == nil {
		return fmt.Errorf("no agent on %s", host)
	}
	return l.reload(ctx, a)
}

func (l *Lab) reload(ctx context.Context, a *Agent) error {
	before := countLines(a.Log, "desired state applied")
	if err := l.writeConfig(a); err != nil {
		return err
	}
	if a.cmd != nil {
		_ = a.cmd.Process.Signal(syscall.SIGHUP)
	}
	deadline := time.Now().Add(10 * time.Second)
	for countLines(a.Log, "desired state applied") <= before {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s did not apply the new state:\n%s", a.Host.Name, tail(a.Log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// State returns a copy of the current desired state.
func (l *Lab) State() agent.DesiredState {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.state
	s.Regions = append([]agent.Region(nil), s.Regions...)
	s.Mirrors = append([]agent.Mirror(nil), s.Mirrors...)
	s.Resources = append([]agent.Resource(nil), s.Resources...)
	return s
}

// Agent returns a host's agent.
func (l *Lab) Agent(host string) *Agent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.agents[host]
}

// Close stops every agent and the controller and removes the agents' pins
// (detaching the programs).
func (l *Lab) Close() error {
	var errs []error
	if err := l.StopController(); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	hosts := make([]string, 0, len(l.agents))
	for h := range l.agents {
		hosts = append(hosts, h)
	}
	l.mu.Unlock()
	for _, h := range hosts {
		if err := l.Stop(h); err != nil {
			errs = append(errs, err)
		}
		if err := agent.Detach(l.PinDir(h), true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func countLines(path, substr string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte(substr))
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// SweepPins detaches and removes the pin directories of lab agents whose
// test or demo process died without cleaning up (pmlab-<pid>-<host>).
func SweepPins() error {
	dirs, _ := filepath.Glob("/sys/fs/bpf/pmlab-*")
	var errs []error
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "pmlab-%d-", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its owner still runs
		}
		if err := agent.Detach(d, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
