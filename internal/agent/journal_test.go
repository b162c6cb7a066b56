package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	pmaps "github.com/premirror/premirror/internal/maps"
)

// flowFrame is udpFrame to resource web's VIP from source port sport: a
// flow of its own (no UDP checksum, which IPv4 allows).
func flowFrame(t *testing.T, ns netNS, sport uint16) []byte {
	f := udpFrame(t, ns, "192.0.2.1", 53)
	f[34], f[35] = byte(sport>>8), byte(sport)
	f[40], f[41] = 0, 0
	return f
}

// TestAccessJournalAcrossRestart: an edge under a controller with a
// state_cache keeps an access journal beside it. A restarted agent
// reports the new flows its pinned counters counted after the previous
// process last took them (here: its journal's start, no controller ever
// answering), instead of starting from the counters' present values;
// the journal belongs to one process at a time.
func TestAccessJournalAcrossRestart(t *testing.T) {
	requireRoot(t)
	ns := agentNS(t)
	cfg, _ := testConfig(t, bpffsDir(t))
	static, err := startAgent(t, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer Detach(cfg.PinDir, true)
	next := *cfg
	next.State = DesiredState{}
	next.Controller = &ControllerCfg{Endpoints: []string{"127.0.0.1:1"}, Site: "eu", TLS: controllerTLS(t),
		StateCache: filepath.Join(t.TempDir(), "state.pb"), Utilization: "none"}
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}
	newFlows := func(cs map[pmaps.CounterKey]pmaps.Counter) (n uint64) {
		for k, v := range cs {
			if k.Resource == 7 {
				n += v.NewFlows
			}
		}
		return n
	}
	inject(t, ns, flowFrame(t, ns, 1000)) // before the agent: reported by none
	waitCounters(t, static, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return newFlows(cs) == 1 })
	static.Close()

	first, err := startAgent(t, ns, &next)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = first.cp.client.Run(ctx) }()
	journal := next.Controller.StateCache + ".access"
	deadline := time.Now().Add(5 * time.Second)
	for _, err := os.Stat(journal); err != nil; _, err = os.Stat(journal) {
		if time.Now().After(deadline) {
			t.Fatalf("no access journal: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A second process on the same node does not take the journal.
	if second, err := startAgent(t, ns, &next); err != nil {
		t.Fatal(err)
	} else {
		if _, ok := second.cp.client.RestoredBaseline(); ok {
			t.Fatal("a second process restored the journal another holds")
		}
		second.Close()
	}
	inject(t, ns, flowFrame(t, ns, 1001), flowFrame(t, ns, 1002))
	waitCounters(t, first, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return newFlows(cs) == 3 })
	cancel() // killed: no report, nothing written since the journal's start
	<-done
	first.Close()

	restarted, err := startAgent(t, ns, &next)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := restarted.cp.client.RestoredBaseline(); !ok {
		t.Fatal("the restarted agent did not restore the journal")
	}
	web := func(as []*pb.AccessCount) (n uint64) {
		for _, a := range as {
			if a.ResourceId == 7 {
				n += a.NewFlows
			}
		}
		return n
	}
	if got := web(restarted.cp.accessCounts()); got != 2 {
		t.Fatalf("the restarted agent's first report has %d new flows of web, want the 2 counted since the previous one's journal", got)
	}
	restarted.Close()

	// Restarted again on the same journal, and told its baseline is
	// stale (another agent reported the counters since the journal's last
	// write): it counts from the counters' values at its start, and
	// reports what was counted since, not what was counted before.
	again, err := startAgent(t, ns, &next)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, ok := again.cp.client.RestoredBaseline(); !ok {
		t.Fatal("the agent restarted again did not restore the journal")
	}
	inject(t, ns, flowFrame(t, ns, 1003))
	waitCounters(t, again, func(cs map[pmaps.CounterKey]pmaps.Counter) bool { return newFlows(cs) == 4 })
	again.cp.dropBaseline()
	if got := web(again.cp.accessCounts()); got != 1 {
		t.Fatalf("after its baseline was dropped the agent's first report has %d new flows of web, want the 1 counted since its start", got)
	}
}
