package maps

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/premirror/premirror/internal/maps/mapstest"
)

// TestDecapOverBudgetProbeChained: what the decap program passes
// untouched goes through the operator's chained program first (a firewall
// or DDoS filter must see what premirror does not handle); only packets it
// changed go straight to the stack. A probe request over the reply budget
// is passed untouched — the budget exists for floods of spoofed probes —
// but it skips pm_decap_next: the chained filter never sees the flood.
func TestDecapOverBudgetProbeChained(t *testing.T) {
	requireRoot(t)
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	edge4, mirror4 := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.99.0.10")
	if err := d.AddEndpoint(mirror4); err != nil {
		t.Fatal(err)
	}
	peer := mapstest.NewPeerT(t, 9461, mapstest.PeerOptions{}) // drops UDP to 9461
	if err := d.SetNext(peer.Program); err != nil {
		t.Fatal(err)
	}
	// One reply a second and CPU: the second request is over budget.
	if err := d.SetProbeEcho(9461, 1); err != nil {
		t.Fatal(err)
	}
	req := echoFrame(t, edge4, mirror4, 9461, probeRequest(t, 64), false)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var verdicts []uint32
	var reasons []map[string]uint64
	err = onOneCPU(func() error {
		for range 2 {
			before, _ := d.Stats()
			v, err := d.Program().Run(&ebpf.RunOptions{Data: append([]byte(nil), req...)})
			if err != nil {
				return err
			}
			after, _ := d.Stats()
			verdicts = append(verdicts, v)
			reasons = append(reasons, fieldDelta(before.Fields(), after.Fields()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if verdicts[0] != xdpTX || reasons[0]["probe_echo"] != 1 {
		t.Fatalf("first request: verdict %s reasons %v, want it answered", verdictNames[verdicts[0]], reasons[0])
	}
	if reasons[1]["pass_probe_over_budget"] != 1 {
		t.Fatalf("second request: reasons %v, want pass_probe_over_budget", reasons[1])
	}
	if seen := peerSeen(t, peer); seen != 1 || verdicts[1] != xdpDrop {
		t.Fatalf("over-budget request: verdict %s, chained program ran %d times; want it run (its DROP)", verdictNames[verdicts[1]], seen)
	}
}
