package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/testbed"
)

func bpffsDir(t *testing.T) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/premirror-agent-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := ensureBPFFS(dir); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// netNS runs test code inside a testbed namespace.
type netNS struct {
	n *testbed.NetNS
	t *testing.T
}

// Do runs f on a thread inside the namespace.
func (ns netNS) Do(f func()) {
	if err := ns.n.Do(func() error { f(); return nil }); err != nil {
		ns.t.Fatal(err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches XDP programs")
	}
}

// agentNS is a namespace with the veth pa0/pa1 the test config names.
func agentNS(t *testing.T) netNS {
	n := testbed.NewNetNS(t)
	if err := n.AddVeth("pa0", "pa1"); err != nil {
		t.Fatal(err)
	}
	addPA0Addrs(t, n)
	return netNS{n, t}
}

// addPA0Addrs gives pa0 its addresses and returns once they are local (an
// IPv6 address gets its local route from a kernel work item after the
// netlink call; a packet sent before is not delivered).
func addPA0Addrs(t *testing.T, n *testbed.NetNS) {
	t.Helper()
	for _, s := range []string{"10.77.0.1/24", "fd77::1/64"} {
		if err := n.AddAddr("pa0", netip.MustParsePrefix(s)); err != nil {
			t.Fatal(err)
		}
	}
}

func testConfig(t *testing.T, pin string) (*Config, string) {
	t.Helper()
	b, err := os.ReadFile("testdata/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return writeConfig(t, "edge.yaml", strings.Replace(string(b), "/sys/fs/bpf/will-be-replaced", pin, 1))
}

// writeConfig writes text as the config file name in a directory of its
// own and loads it. It returns the config and the file's path.
func writeConfig(t *testing.T, name, text string) (*Config, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return c, path
}

func xdpProgID(t *testing.T, ns netNS, iface string) uint32 {
	t.Helper()
	var id uint32
	ns.Do(func() {
		l, err := netlink.LinkByName(iface)
		if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
			id = l.Attrs().Xdp.ProgId
		}
	})
	return id
}

// TestAgentLifecycle: start attaches and programs the maps; a second agent
// takes the pinned link over without detaching and finds nothing to write;
// detach removes everything.
func TestAgentLifecycle(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, _ := testConfig(t, pin)

	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := xdpProgID(t, ns, "pa0")
	if first == 0 {
		t.Fatal("no XDP program on pa0")
	}
	if at := a.attach[0]; at.Action != "attached" || at.Mode != "native" {
		t.Fatalf("attachment %+v, want a new native attachment", at)
	}
	vips, _ := a.router.VIPs()
	if len(vips) != 3 || len(a.router.Routes()) != 3 {
		t.Fatalf("maps hold %d VIPs and %d routes", len(vips), len(a.router.Routes()))
	}
	st, _ := a.router.Settings()
	if st.OuterSourceV4.String() != "10.77.0.1" || st.OuterSourceV6.String() != "fd77::1" {
		t.Fatalf("outer sources %v %v not taken from pa0", st.OuterSourceV4, st.OuterSourceV6)
	}
	if problems, err := testutil.CollectAndLint(a.metrics); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %v", problems, err)
	}
	if n, err := testutil.GatherAndCount(a.reg, "edge_packets_total"); err != nil || n == 0 {
		t.Fatalf("edge_packets_total missing (%d, %v)", n, err)
	}
	a.Close()
	if xdpProgID(t, ns, "pa0") != first {
		t.Fatal("program detached when the agent stopped")
	}

	// A restarted (or upgraded) agent: same pins, link updated in place.
	var b *Agent
	ns.Do(func() { b = New(cfg, "", nil); err = b.Start() })
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if at := b.attach[0]; at.Action != "updated" {
		t.Fatalf("second agent %s the link, want updated", at.Action)
	}
	if id := xdpProgID(t, ns, "pa0"); id == 0 || id == first {
		t.Fatalf("program id %d after upgrade (was %d): link.Update did not swap", id, first)
	}
	comp, _ := cfg.State.Compile(cfg.MapsConfig())
	var ch Changes
	ns.Do(func() {
		st2, _ := b.settings(cfg, comp)
		ch, _, err = Reconcile(b.router, comp, st2, nil)
	})
	if err != nil || ch.Written+ch.Deleted != 0 {
		t.Fatalf("restart reconcile wrote %+v (%v), want nothing", ch, err)
	}

	if err := Detach(pin, true); err != nil {
		t.Fatal(err)
	}
	if id := xdpProgID(t, ns, "pa0"); id != 0 {
		t.Fatalf("program %d still attached after detach", id)
	}
	if _, err := os.Stat(filepath.Join(pin, "pm_sessions")); !os.IsNotExist(err) {
		t.Fatalf("pins left after detach -maps: %v", err)
	}
}

// TestReload: a changed file is applied; a broken one is refused, the
// running state kept and health reports it.
func TestReload(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, path := testConfig(t, pin)
	a, err := startAgentFile(t, ns, cfg, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { a.Close(); Detach(pin, true) }()

	b, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(b), "us: {dallas: 1}", "us: {dallas: 1, paris: 1}", 1)), 0o644)
	ns.Do(func() { err = a.Reload() })
	if err != nil {
		t.Fatal(err)
	}
	sh := a.router.Routes()[maps.RouteKey{Resource: 7, Region: 2}].Shares
	if sh[1] != 128 || sh[2] != 128 {
		t.Fatalf("shares after reload %v, want 128/128", sh)
	}

	os.WriteFile(path, []byte(strings.Replace(string(b), "us: {dallas: 1}", "us: {nowhere: 1}", 1)), 0o644)
	ns.Do(func() { err = a.Reload() })
	if err == nil || !strings.Contains(err.Error(), `mirror "nowhere"`) {
		t.Fatalf("broken reload: %v", err)
	}
	if sh := a.router.Routes()[maps.RouteKey{Resource: 7, Region: 2}].Shares; sh[1] != 128 {
		t.Fatalf("state changed by a refused reload: %v", sh)
	}
	rec := httptest.NewRecorder()
	a.healthz(rec, httptest.NewRequest("GET", "/healthz", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(string(body), "nowhere") {
		t.Fatalf("healthz %d %s", rec.Code, body)
	}
	// Alive all the same: a liveness restart cannot fix the file.
	rec = httptest.NewRecorder()
	a.livez(rec, httptest.NewRequest("GET", "/livez", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("livez %d after a refused reload, want 200", rec.Code)
	}
}

// TestForcedGenericMode: xdp_mode generic attaches in skb mode.
func TestForcedGenericMode(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, _ := testConfig(t, pin)
	cfg.XDPMode = XDPGeneric
	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { a.Close(); Detach(pin, true) }()
	if got := a.attach[0].Mode; got != "generic" {
		t.Fatalf("attached in %s mode, want generic", got)
	}
}

// TestUsableAddrs: an address whose duplicate address detection failed is
// never assigned and must not become an outer source or decap endpoint; a
// tentative one is kept (usable within seconds), IPv4-mapped ones unmapped.
func TestUsableAddrs(t *testing.T) {
	addr := func(s string, flags int) netlink.Addr {
		return netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(s), Mask: net.CIDRMask(64, 128)}, Flags: flags}
	}
	got := usableAddrs([]netlink.Addr{
		addr("2001:db8::1", unix.IFA_F_DADFAILED|unix.IFA_F_TENTATIVE),
		addr("2001:db8::2", unix.IFA_F_TENTATIVE),
		addr("2001:db8::3", 0),
		addr("192.0.2.1", 0),
		addr("2001:db8::4", unix.IFA_F_DADFAILED),
	})
	want := []netip.Addr{netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("192.0.2.1")}
	if !slices.Equal(got, want) {
		t.Fatalf("usable addresses %v, want %v", got, want)
	}
}

// TestRestartAppliesXDPMode: xdp_mode changes with a restart (OPERATIONS
// §4). An agent restarted with xdp_mode native over its own pinned link
// in generic mode must not silently go on in generic mode (skb mode is
// the slow path native was asked to avoid): it runs native, or refuses
// naming xdp_mode, as a take-over in the wrong mode does.
func TestRestartAppliesXDPMode(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, _ := testConfig(t, pin)
	cfg.XDPMode = XDPGeneric
	a, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m := a.attach[0].Mode; m != "generic" {
		t.Fatalf("first agent attached in %s mode, want generic", m)
	}
	a.Close()
	native := *cfg
	native.XDPMode = XDPNative
	b, err := startAgent(t, ns, &native)
	if err != nil {
		return // refused: fine
	}
	defer b.Close()
	if at := b.attach[0]; at.Mode != "native" {
		t.Fatalf("restarted with xdp_mode native: %s in %s mode, no error", at.Action, at.Mode)
	}
}

// TestFileChangedDuringStartIsApplied: the config file is read, then
// Start loads and attaches the programs (seconds on a big node). An edit
// saved meanwhile must be applied like any other (the file is watched),
// not taken as the baseline Run compares later edits against.
func TestFileChangedDuringStartIsApplied(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	cfg, path := testConfig(t, pin)
	var a *Agent
	var err error
	ns.Do(func() { a = New(cfg, path, nil) })
	ns.Do(func() { err = a.Start() })
	if err != nil {
		t.Fatal(err)
	}
	started := a.config()
	// Saved while Start ran (before Run): dallas goes down.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), "state: draining", "state: down", 1)
	if edited == string(b) {
		t.Fatal("test config changed")
	}
	time.Sleep(10 * time.Millisecond) // a new mtime
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if a.config() != started {
			return
		}
	}
	t.Fatal("the edit saved during Start was never applied (Run took the edited file as its baseline)")
}
