package controller

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/control"
	"github.com/premirror/premirror/internal/promdesc"
)

// pinnedCounters are an edge's access counters (pm_counters): they
// outlive its agent processes.
type pinnedCounters struct {
	mu    sync.Mutex
	total map[[3]uint32]uint64 // (resource, region, mirror) → new flows
}

func (pc *pinnedCounters) add(resource, region uint32, n uint64) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.total[[3]uint32{resource, region, 1}] += n
}

func (pc *pinnedCounters) snapshot() map[[3]uint32]uint64 {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return maps.Clone(pc.total)
}

// journalProc is one edge-agent process: a control.Client with an access
// journal, reporting the growth of the pinned counters as the agent does
// (internal/agent: baselineCounters or the journal's, accessCounts,
// accessBaseline).
type journalProc struct {
	client  *control.Client
	pc      *pinnedCounters
	mu      sync.Mutex
	prev    map[[3]uint32]uint64
	atStart map[[3]uint32]uint64 // the counters when the process started
	changed map[[3]uint32]bool
	// taken, when set, runs once the counts of a report are taken.
	taken  func()
	cancel context.CancelFunc
	done   chan struct{}
}

func startJournalProc(t *testing.T, pc *pinnedCounters, journal string, endpoints ...string) *journalProc {
	t.Helper()
	f := issueFiles(t, shared.ca, t.TempDir(), "edge-j", nil)
	p := &journalProc{pc: pc, prev: map[[3]uint32]uint64{}, atStart: pc.snapshot(), changed: map[[3]uint32]bool{}, done: make(chan struct{})}
	c, err := control.New(control.Config{
		Endpoints: endpoints, TLS: clientTLS(t, f), Node: "edge-j", Site: "eu", Role: pb.NodeRole_NODE_ROLE_EDGE,
		Apply: func(uint64, *pb.DesiredState) error { return nil }, AccessCounts: p.counts, AccessBaseline: p.baseline,
		DropBaseline: p.drop, JournalFile: journal, CounterSource: "boot/1", MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	if base, ok := c.RestoredBaseline(); ok {
		for _, a := range base {
			p.prev[[3]uint32{a.GetResourceId(), a.GetRegionId(), a.GetMirrorId()}] = a.GetNewFlows()
		}
	} else {
		p.prev = maps.Clone(p.atStart)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { defer close(p.done); _ = c.Run(ctx) }()
	t.Cleanup(p.kill)
	return p
}

func (p *journalProc) counts() []*pb.AccessCount {
	cur := p.pc.snapshot()
	p.mu.Lock()
	var out []*pb.AccessCount
	for k, v := range cur {
		if d := v - p.prev[k]; d > 0 {
			out = append(out, &pb.AccessCount{ResourceId: k[0], RegionId: k[1], MirrorId: k[2], NewFlows: d, Packets: d})
			p.changed[k] = true
		}
	}
	p.prev = cur
	taken := p.taken
	p.taken = nil
	p.mu.Unlock()
	if taken != nil {
		taken()
	}
	return out
}

func (p *journalProc) baseline(all bool) []*pb.AccessCount {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*pb.AccessCount
	for k, v := range p.prev {
		if all || p.changed[k] {
			out = append(out, &pb.AccessCount{ResourceId: k[0], RegionId: k[1], MirrorId: k[2], NewFlows: v})
		}
	}
	clear(p.changed)
	return out
}

// drop counts from the counters' values at start (control.Config.DropBaseline).
func (p *journalProc) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prev = maps.Clone(p.atStart)
}

// kill ends the process as a crash would: no final report, and its
// journal as it last wrote it.
func (p *journalProc) kill() {
	p.cancel()
	<-p.done
	p.client.Close()
}

// An edge agent restarts (killed: no final report) while the replica
// holds some of its reports unconfirmed; the new process starts on the
// previous one's journal and pinned counters. The leader ingests exactly
// what the counters counted since the first process started: nothing
// counted before it, nothing lost (the reports not confirmed, those
// counted but never sent, what was counted while no agent ran), nothing
// twice — whether the replica's final flush of the old session or the new
// session's takeover comes first. The controller needs nothing new: the
// new process's Register with the journal's run is a takeover, as a
// reconnect is.
func TestAccessAgentRestartFromJournal(t *testing.T) {
	for _, tc := range []struct {
		name string
		// The report at the kill: counted and never sent nor journaled
		// (a crash between taking the counts and the journal write), or
		// sent and held by the replica.
		crashBeforeWrite bool
	}{
		{"killed with reports held by the replica", false},
		{"killed between taking a report's counts and its journal write", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newForecastRig(t, nil)
			g.clock.set(g.t0.Add(10 * time.Minute))
			disk, eu := firstResourceAndRegion(t, g, "eu")
			pc := &pinnedCounters{total: map[[3]uint32]uint64{{disk, eu, 1}: 1000}} // before any agent
			journal := filepath.Join(t.TempDir(), "state.pb.access")
			proxy := startProxy(t, g.r1.addr)
			first := startJournalProc(t, pc, journal, proxy.addr())
			send := func(p *journalProc, n uint64, total float64) {
				t.Helper()
				pc.add(disk, eu, n)
				p.client.ReportNow()
				waitFor(t, "counts received", 10*time.Second, func() bool { return received(g.r1) == total })
			}
			waitFor(t, "first process registered", 10*time.Second, func() bool { return first.client.Controller() != "" })
			send(first, 100, 100) // written at once, confirmed
			waitFor(t, "first write confirmed", 10*time.Second, func() bool { return first.client.PendingReports() == 0 })
			send(first, 20, 120) // held by the session until it ends
			if first.client.PendingReports() != 1 {
				t.Fatalf("%d reports pending, want the one r1 holds", first.client.PendingReports())
			}
			if tc.crashBeforeWrite {
				// The counts are taken; the process dies before the
				// journal write: the report never leaves (the proxy is
				// cut), and the journal is what it was before the write.
				var before []byte
				cut := make(chan struct{})
				first.mu.Lock()
				first.taken = func() {
					var err error
					before, err = os.ReadFile(journal)
					if err != nil && !os.IsNotExist(err) {
						t.Error(err)
					}
					proxy.cut()
					close(cut)
				}
				first.mu.Unlock()
				send13 := func() { pc.add(disk, eu, 13); first.client.ReportNow() }
				send13()
				select {
				case <-cut:
				case <-time.After(10 * time.Second):
					t.Fatal("the report's counts were never taken")
				}
				first.kill()
				if before != nil {
					if err := os.WriteFile(journal, before, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				send(first, 13, 133)
				first.kill()
			}
			pc.add(disk, eu, 7) // counted while no agent runs

			second := startJournalProc(t, pc, journal, g.r1.addr)
			waitFor(t, "second process registered", 10*time.Second, func() bool { return second.client.Controller() != "" })
			waitFor(t, "the restarted agent holds nothing unconfirmed", 10*time.Second, func() bool { return second.client.PendingReports() == 0 })
			resp, err := g.r1.cli.Get(context.Background(), g.r1.c.store.fkey(fkeyRuns), clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil || resp.Count != 1 {
				t.Errorf("%d run records, want the one run both processes continued (%v)", resp.Count, err)
			}
			var want uint64
			for _, v := range pc.snapshot() {
				want += v
			}
			want -= 1000
			o := &onceRig{forecastRig: g, start: g.t0}
			o.closeBucket(t, want)
			t.Logf("duplicates skipped by the replica: %v new flows", testutil.ToFloat64(g.r1.c.m.accessFlows.WithLabelValues("duplicate")))
		})
	}
}

// An edge agent killed with its journal, then another agent on the node
// that does not keep it (a downgraded build, or one without
// controller.state_cache: another run, numbered or not) reports the
// counters' growth, then the first agent's build starts again on the old
// journal. The controller tells it the journal's baseline is stale (the
// other agent's registration is newer than the run's last write), so
// the leader ingests exactly the counters' growth: the other agent's
// counts once, the journal's unconfirmed report once, the restarted
// agent's from its start. Without another agent the baseline is kept
// (what was counted while no agent ran is reported). Under a controller
// that does not say (an older one), the agent keeps the baseline as
// before and the other agent's counts are counted twice: the residual
// OPERATIONS §5 states.
func TestAccessJournalInterimAgent(t *testing.T) {
	for _, tc := range []struct {
		name string
		// interim: the agent between: "" none, "numbered" (a run of its
		// own, no journal), "unnumbered" (run_id 0).
		interim       string
		oldController bool
		outcome       string // premirror_control_journal_baselines_total of the restarted agent
		twice         uint64 // counted twice
	}{
		{"no other agent: the journal's baseline kept", "", false, "kept", 0},
		{"an agent without the journal ran: baseline dropped", "numbered", false, "stale", 0},
		{"an agent not numbering its reports ran: baseline dropped", "unnumbered", false, "stale", 0},
		{"older controller: baseline kept, the other agent's counts twice", "numbered", true, "unchecked", 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newForecastRig(t, func(c *Config) { c.noBaselineCheck = tc.oldController })
			g.clock.set(g.t0.Add(10 * time.Minute))
			disk, eu := firstResourceAndRegion(t, g, "eu")
			pc := &pinnedCounters{total: map[[3]uint32]uint64{{disk, eu, 1}: 1000}} // before any agent
			journal := filepath.Join(t.TempDir(), "state.pb.access")
			send := func(p *journalProc, n uint64, total float64) {
				t.Helper()
				pc.add(disk, eu, n)
				p.client.ReportNow()
				waitFor(t, "counts received", 10*time.Second, func() bool { return received(g.r1) == total })
			}
			first := startJournalProc(t, pc, journal, g.r1.addr)
			waitFor(t, "first agent registered", 10*time.Second, func() bool { return first.client.Controller() != "" })
			send(first, 100, 100)
			waitFor(t, "first write confirmed", 10*time.Second, func() bool { return first.client.PendingReports() == 0 })
			send(first, 20, 120) // unconfirmed when the agent is killed
			first.kill()

			switch tc.interim {
			case "":
				pc.add(disk, eu, 40) // counted while no agent runs: the journal's baseline reports it
			case "numbered":
				other := startJournalProc(t, pc, "", g.r1.addr)
				waitFor(t, "other agent registered", 10*time.Second, func() bool { return other.client.Controller() != "" })
				send(other, 40, 160)
				other.kill()
			case "unnumbered":
				other := openRaw(t, g.r1.addr, "edge-j", 0)
				pc.add(disk, eu, 40)
				end := g.clock.now()
				other.report(&pb.Report{StartUnixNano: end.Add(-time.Second).UnixNano(), EndUnixNano: end.UnixNano(),
					Access: []*pb.AccessCount{{ResourceId: disk, RegionId: eu, MirrorId: 1, NewFlows: 40}}})
				waitFor(t, "other agent's counts received", 10*time.Second, func() bool { return received(g.r1) == 160 })
				other.close()
			}

			restarted := startJournalProc(t, pc, journal, g.r1.addr)
			waitFor(t, "restarted agent registered", 10*time.Second, func() bool { return restarted.client.Controller() != "" })
			pc.add(disk, eu, 5)
			restarted.client.ReportNow()
			var want uint64
			for _, v := range pc.snapshot() {
				want += v
			}
			want -= 1000
			// Received: the reports sent again are skipped (duplicate).
			waitFor(t, "restarted agent's counts received", 10*time.Second, func() bool { return received(g.r1) == float64(want+tc.twice) })
			if n := clientMetric(t, restarted.client, "premirror_control_journal_baselines_total", tc.outcome); n != 1 {
				t.Errorf("restarted agent's journal baselines %s = %v, want 1", tc.outcome, n)
			}
			// The controller's count of its verdicts (none from an older one).
			for _, v := range []string{"kept", "stale"} {
				want := 0.0
				if v == tc.outcome {
					want = 1
				}
				if n := testutil.ToFloat64(g.r1.c.m.accessBaselines.WithLabelValues(v)); n != want {
					t.Errorf("controller's access baselines %s = %v, want %v", v, n, want)
				}
			}
			o := &onceRig{forecastRig: g, start: g.t0}
			o.closeBucket(t, want+tc.twice)
		})
	}
}

// clientMetric is the value of a control.Client's metric with the given
// label value.
func clientMetric(t *testing.T, c *control.Client, name, label string) float64 {
	t.Helper()
	v, err := promdesc.Value(c, name, label)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// firstResourceAndRegion waits for the rig's desired state and returns the
// IDs of its first resource and of the named region.
func firstResourceAndRegion(t *testing.T, g *forecastRig, region string) (resource, regionID uint32) {
	t.Helper()
	waitFor(t, "desired state", 10*time.Second, func() bool {
		st := g.r1.c.view.desiredRecord().GetState()
		for _, r := range st.GetRegions() {
			if r.GetName() == region {
				regionID = r.GetId()
			}
		}
		if len(st.GetResources()) > 0 {
			resource = st.GetResources()[0].GetId()
		}
		return resource != 0 && regionID != 0
	})
	return resource, regionID
}

// readRunRecord reads an agent run's access record (it must exist).
func readRunRecord(ctx context.Context, t *testing.T, cli *clientv3.Client, key string) *pb.AccessRun {
	t.Helper()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("run record: %v %v", resp, err)
	}
	rec := &pb.AccessRun{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rec); err != nil {
		t.Fatal(err)
	}
	return rec
}
