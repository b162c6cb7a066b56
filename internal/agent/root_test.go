package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/premirror/premirror/internal/maps/mapstest"
)

// pinnedRoot is the operator's root XDP program, which tail-calls slot
// key of its program array, with the array pinned as arrPin, root_progs
// in a bpffs directory of its own, rootDir.
func pinnedRoot(t *testing.T, key uint32) (root *mapstest.Root, rootDir, arrPin string) {
	t.Helper()
	rootDir = bpffsDir(t)
	root = mapstest.NewRootT(t, key)
	arrPin = filepath.Join(rootDir, "root_progs")
	if err := root.Array.Pin(arrPin); err != nil {
		t.Fatal(err)
	}
	return root, rootDir, arrPin
}

// TestXDPRoot: the operator's root XDP program runs on pa0 and
// tail-calls slot 3 of its pinned program array. With xdp_root the agent
// attaches nothing: it puts the router in that slot, VIP traffic the root
// hands on is encapsulated and the rest passes; a restarted agent
// replaces its program in the slot; a changed slot empties the old one;
// detach empties ours and leaves the root running. Bad settings fail at
// start naming the field.
func TestXDPRoot(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	pin := bpffsDir(t)
	const key = 3
	root, rootDir, arrPin := pinnedRoot(t, key)
	notArray, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer notArray.Close()
	if err := notArray.Pin(filepath.Join(rootDir, "not_progs")); err != nil {
		t.Fatal(err)
	}
	var l link.Link
	ns.Do(func() {
		pa0, lerr := netlink.LinkByName("pa0")
		if lerr != nil {
			err = lerr
			return
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: root.Program, Interface: pa0.Attrs().Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rootID := xdpProgID(t, ns, "pa0")
	cfg, _ := testConfig(t, pin)
	defer Detach(pin, true)

	for _, tc := range []struct {
		root XDPRoot
		want string
	}{
		{XDPRoot{ProgArray: filepath.Join(rootDir, "missing"), Key: key}, "xdp_root.prog_array"},
		{XDPRoot{ProgArray: filepath.Join(rootDir, "not_progs"), Key: key}, "not a program array"},
		{XDPRoot{ProgArray: arrPin, Key: 8}, "xdp_root.key: 8 is beyond the array's 8 slots"},
	} {
		c := *cfg
		c.XDPRoot = &tc.root
		a, err := startAgent(t, ns, &c)
		if err == nil {
			a.Close()
			t.Fatalf("started with %+v", tc.root)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%+v: error %v, want %q", tc.root, err, tc.want)
		}
	}

	slot := func(k uint32) string {
		id, ok := slotProgram(root.Array, k)
		if !ok {
			return ""
		}
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return ""
		}
		defer p.Close()
		info, _ := p.Info()
		return info.Name
	}
	c := *cfg
	c.XDPRoot = &XDPRoot{ProgArray: arrPin, Key: key}
	a, err := startAgent(t, ns, &c)
	if err != nil {
		t.Fatal(err)
	}
	if at := a.attach[0]; at.Via != "prog_array" || at.Action != "attached" || at.Mode != "root" {
		t.Fatalf("attachment %+v", at)
	}
	if id := xdpProgID(t, ns, "pa0"); id != rootID {
		t.Fatalf("pa0 runs program %d, want the root %d: the agent attached", id, rootID)
	}
	if got := slot(key); got != "pm_router" {
		t.Fatalf("slot %d holds %q, want pm_router", key, got)
	}
	checkRootTraffic(t, ns, a, root, 3)
	firstID, _ := slotProgram(root.Array, key)

	// A restarted agent (an upgrade) replaces its program in the slot.
	a.Close()
	a, err = startAgent(t, ns, &c)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := slotProgram(root.Array, key); a.attach[0].Action != "updated" || id == firstID {
		t.Fatalf("restart: attachment %+v, slot program %d (was %d)", a.attach[0], id, firstID)
	}
	checkRootTraffic(t, ns, a, root, 3)
	a.Close()

	// The slot changed: the old one is emptied.
	c.XDPRoot = &XDPRoot{ProgArray: arrPin, Key: 5}
	if a, err = startAgent(t, ns, &c); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if slot(key) != "" || slot(5) != "pm_router" {
		t.Fatalf("after moving to slot 5: slot %d %q, slot 5 %q", key, slot(key), slot(5))
	}

	var derr error
	ns.Do(func() { derr = Detach(pin, false) })
	if derr != nil {
		t.Fatal(derr)
	}
	if slot(5) != "" {
		t.Fatalf("slot 5 holds %q after detach", slot(5))
	}
	if id := xdpProgID(t, ns, "pa0"); id != rootID {
		t.Fatalf("pa0 runs %d after detach, want the root %d", id, rootID)
	}
	if matches, _ := filepath.Glob(filepath.Join(pin, "root", "*")); len(matches) != 0 {
		t.Fatalf("records left after detach: %v", matches)
	}
}

// checkRootTraffic: through the root, n VIP packets are encapsulated by
// the router and datagrams to the host arrive.
func checkRootTraffic(t *testing.T, ns netNS, a *Agent, root *mapstest.Root, n int) {
	t.Helper()
	seen0, _ := root.Seen()
	st0, _ := a.router.Stats()
	if got := received(t, ns, 10, func() {
		for range 5 {
			inject(t, ns, udpFrame(t, ns, "10.77.0.1", 10))
		}
	}); got != 5 {
		t.Errorf("%d of 5 datagrams to the host arrived through root and router", got)
	}
	for range n {
		inject(t, ns, udpFrame(t, ns, "192.0.2.1", 53)) // a VIP
	}
	var enc uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		st1, _ := a.router.Stats()
		if enc = (st1.Tx + st1.Redirect + st1.PassNoNeigh) - (st0.Tx + st0.Redirect + st0.PassNoNeigh); enc >= uint64(n) {
			break
		}
	}
	if enc != uint64(n) {
		t.Errorf("%d VIP packets encapsulated, want %d", enc, n)
	}
	if seen, _ := root.Seen(); seen-seen0 < uint64(5+n) {
		t.Errorf("the root ran on %d packets, want ≥ %d", seen-seen0, 5+n)
	}
}

func TestXDPRootRoleBoth(t *testing.T) {
	err := (&XDPRoot{ProgArray: "/sys/fs/bpf/root/progs"}).validate(&Config{Role: RoleBoth})
	if err == nil || !strings.Contains(err.Error(), "only for role edge or mirror") {
		t.Fatalf("role both: %v", err)
	}
}
