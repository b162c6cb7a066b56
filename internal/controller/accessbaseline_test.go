package controller

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// A restored run's counter baseline is stale exactly when some record
// shows another agent registered on the node after the run last wrote
// its record; without evidence it is kept.
func TestAccessBaselineVerdict(t *testing.T) {
	const run = 0xa
	own := &pb.AccessRun{RunId: run, ThroughSeq: 4}
	agentOf := func(r uint64) *pb.AgentRecord {
		return &pb.AgentRecord{Status: &pb.AgentStatus{}, RunId: proto.Uint64(r)}
	}
	older := &pb.AgentRecord{Status: &pb.AgentStatus{}} // an earlier controller's: no run_id
	for _, tc := range []struct {
		name   string
		ev     runEvidence
		stale  bool
		reason uint64 // the other run named
	}{
		{"nothing on record (a first registration, everything expired)", runEvidence{}, false, 0},
		{"no other run, the node's last session the run's", runEvidence{own: own, ownRev: 50, agent: agentOf(run)}, false, 0},
		{"other run older than the run's last write", runEvidence{own: own, ownRev: 50,
			others: []otherRun{{0xb, 20}}, agent: agentOf(run)}, false, 0},
		{"other run registered after the run's last write", runEvidence{own: own, ownRev: 50,
			others: []otherRun{{0xb, 20}, {0xc, 70}, {0xd, 60}}, agent: agentOf(0xc)}, true, 0xc},
		{"other run newer, the node's agent record an earlier controller's", runEvidence{own: own, ownRev: 50,
			others: []otherRun{{0xc, 70}}, agent: older}, true, 0xc},
		{"other run's record expired, the node's last session another run's", runEvidence{own: own, ownRev: 50,
			agent: agentOf(0xc)}, true, 0xc},
		{"the node's last session an unnumbered agent's", runEvidence{own: own, ownRev: 50, agent: agentOf(0)}, true, 0},
		{"own record expired, the node's last session the run's", runEvidence{others: []otherRun{{0xb, 20}},
			agent: agentOf(run)}, false, 0},
		{"own record expired, the node's last session another run's", runEvidence{others: []otherRun{{0xb, 20}},
			agent: agentOf(0xb)}, true, 0xb},
		{"own record expired, other runs unordered, agent record an earlier controller's (residual)",
			runEvidence{others: []otherRun{{0xb, 20}}, agent: older}, false, 0},
		{"an earlier registration found it (its answer lost)", runEvidence{
			own: &pb.AccessRun{RunId: run, BaselineStale: true, OtherRun: 0xe}, ownRev: 90, agent: agentOf(run)}, true, 0xe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.ev.run = run
			v := baselineVerdict(tc.ev)
			if v.GetStale() != tc.stale || v.GetOtherRun() != tc.reason {
				t.Fatalf("verdict %v, want stale %v naming run %x", v, tc.stale, tc.reason)
			}
		})
	}
}

// The verdict stands until the agent heard it: a registration that found
// the baseline stale keeps saying so in the run's record, so the next
// registration of the run (the answer lost with its stream) gets it
// although the node's agent record now names the run; the first message
// of the agent on a session that told it clears the record, and a later
// restart keeps its baseline. An agent that does not ask gets no verdict.
func TestAccessBaselineVerdictStands(t *testing.T) {
	c, _, _ := newSessionTestController(t)
	cli := c.cli
	ctx := context.Background()
	session := func(run uint64, check bool, connected int64) *agentConn {
		return &agentConn{c: c, node: "edge/1", site: "eu", runID: run, checkBaseline: check,
			status: &pb.AgentStatus{Node: "edge/1", ConnectedUnixNano: connected}, access: c.newSessionAccess(),
			durableCh: make(chan struct{}, 1)}
	}
	register := func(a *agentConn) *pb.AccessBaseline {
		t.Helper()
		_, v, err := a.takeOverRun(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.writeStatus(ctx); err != nil {
			t.Fatal(err)
		}
		return v
	}
	record := func() *pb.AccessRun {
		t.Helper()
		return readRunRecord(ctx, t, cli, c.store.fkey(runKey("edge/1", 0xa)))
	}

	if v := register(session(0xa, false, 1)); v != nil {
		t.Fatalf("verdict %v for an agent that did not ask", v)
	}
	// Another agent, which does not number its reports, runs on the node.
	if err := session(0, false, 2).writeStatus(ctx); err != nil {
		t.Fatal(err)
	}
	// The run's agent restarts on its journal; the answer is lost.
	if v := register(session(0xa, true, 3)); !v.GetStale() || v.GetOtherRun() != 0 {
		t.Fatalf("verdict %v after an unnumbered agent ran", v)
	}
	if rec := record(); !rec.GetBaselineStale() {
		t.Fatalf("run record %v does not keep the verdict", rec)
	}
	b := session(0xa, true, 4)
	if v := register(b); !v.GetStale() {
		t.Fatalf("verdict %v at the registration after a lost answer", v)
	}
	// The agent heard it: its first message; the next flush writes the
	// record without the verdict, though it has no counts to write.
	b.heard()
	if err := b.flushAccess(ctx, false); err != nil {
		t.Fatal(err)
	}
	if rec := record(); rec.GetBaselineStale() || rec.GetThroughSeq() != 0 {
		t.Fatalf("run record %v after the agent heard the verdict", rec)
	}
	if v := register(session(0xa, true, 5)); v.GetStale() {
		t.Fatalf("verdict %v for a restart after the agent acted on the last one", v)
	}
}
