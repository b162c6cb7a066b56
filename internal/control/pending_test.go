package control

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/promdesc"
)

// flowSource is an agent's access counts: what a test queues goes with
// the next report.
type flowSource struct {
	mu     sync.Mutex
	queued []*pb.AccessCount
}

func (f *flowSource) add(resource uint32, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queued = append(f.queued, &pb.AccessCount{ResourceId: resource, RegionId: 7, MirrorId: 3, NewFlows: n, Packets: n})
}

func (f *flowSource) counts() []*pb.AccessCount {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.queued
	f.queued = nil
	return out
}

// nextReport returns the session's next report that satisfies ok,
// skipping others.
func (ts *testSession) nextReport(t *testing.T, what string, ok func(*pb.Report) bool) *pb.Report {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ts.recv:
			if r := m.GetReport(); r != nil && ok(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
}

func newFlows(r *pb.Report) uint64 {
	var n uint64
	for _, a := range r.GetAccess() {
		n += a.GetNewFlows()
	}
	return n
}

func (ts *testSession) confirm(t *testing.T, through uint64) {
	t.Helper()
	d := &pb.ReportsDurable{RunId: ts.reg.GetRunId(), ThroughSeq: through}
	if err := ts.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Durable{Durable: d}}); err != nil {
		t.Fatal(err)
	}
}

func waitPending(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.PendingReports() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d reports pending, want %d", c.PendingReports(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A report a controller that confirms reports took but did not confirm
// is sent again on the next session, before any new report, with its
// number and interval, its access counts only; one it confirmed is not,
// nor one the next controller says earlier sessions wrote.
func TestPendingReportsSentAgainUntilConfirmed(t *testing.T) {
	ce := newCerts(t, "edge-1")
	var mu sync.Mutex
	through := uint64(0) // what the next Registered says was written
	srv := &testServer{sessions: make(chan *testSession, 4), durable: func(r *pb.Register) *pb.ReportsDurable {
		mu.Lock()
		defer mu.Unlock()
		return &pb.ReportsDurable{RunId: r.GetRunId(), ThroughSeq: through}
	}}
	addr := startServer(t, ce, srv)
	var src flowSource
	c := runClient(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
		AccessCounts: src.counts, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ts := waitSession(t, srv)
	if ts.reg.GetRunId() == 0 {
		t.Fatal("register without a run id")
	}
	sent := map[uint64]*pb.Report{}
	for _, n := range []uint64{5, 7, 11} {
		src.add(1, n)
		c.ReportNow()
		r := ts.nextReport(t, "report with new flows", func(r *pb.Report) bool { return newFlows(r) > 0 })
		if r.GetSeq() == 0 || r.GetResend() || newFlows(r) != n {
			t.Fatalf("report %v", r)
		}
		sent[n] = r
	}
	// Reports without new flows are numbered too, but not kept.
	empty := ts.nextReport(t, "report without new flows", func(r *pb.Report) bool { return newFlows(r) == 0 })
	if empty.GetSeq() <= sent[11].GetSeq() {
		t.Fatalf("report numbered %d after %d", empty.GetSeq(), sent[11].GetSeq())
	}
	waitPending(t, c, 3)
	ts.confirm(t, sent[5].GetSeq())
	waitPending(t, c, 2)

	// The next controller says an earlier session wrote the second one:
	// only the third is sent again, first.
	mu.Lock()
	through = sent[7].GetSeq()
	mu.Unlock()
	close(ts.end)
	ts2 := waitSession(t, srv)
	first := ts2.nextReport(t, "first report", func(*pb.Report) bool { return true })
	want := &pb.Report{StartUnixNano: sent[11].GetStartUnixNano(), EndUnixNano: sent[11].GetEndUnixNano(), Seq: sent[11].GetSeq(), Resend: true,
		Access: []*pb.AccessCount{{ResourceId: 1, RegionId: 7, NewFlows: 11}}}
	if !proto.Equal(first, want) {
		t.Fatalf("first report of the new session\n got %v\nwant %v", first, want)
	}
	next := ts2.nextReport(t, "next report", func(*pb.Report) bool { return true })
	if next.GetResend() || next.GetSeq() <= empty.GetSeq() {
		t.Fatalf("report after the resend: %v", next)
	}
	waitPending(t, c, 1)
	ts2.confirm(t, next.GetSeq())
	waitPending(t, c, 0)
	if n := metricValue(t, c, "premirror_control_reports_resent_total"); n != 1 {
		t.Fatalf("%v reports counted as sent again, want 1", n)
	}
}

// The reports kept for a controller that never confirms them are bounded
// (in number and in counts), the oldest dropped and counted, and
// reporting goes on; a controller that confirms none (an older one)
// makes the client keep nothing and number nothing.
func TestPendingReportsBounded(t *testing.T) {
	for _, tc := range []struct {
		name         string
		confirms     bool
		maxReports   int
		maxFlows     int
		wantPending  int
		wantDropped  float64
		wantNumbered bool
	}{
		{"never confirmed: bounded in reports", true, 3, 0, 3, 7, true},
		{"never confirmed: bounded in counts", true, 0, 5, 2, 8, true}, // two counts a report
		{"controller that confirms none", false, 3, 0, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := newCerts(t, "edge-1")
			srv := &testServer{sessions: make(chan *testSession, 4)}
			if tc.confirms {
				srv.durable = func(r *pb.Register) *pb.ReportsDurable { return &pb.ReportsDurable{RunId: r.GetRunId()} }
			}
			addr := startServer(t, ce, srv)
			var src flowSource
			c := runClient(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
				AccessCounts: src.counts, MaxPendingReports: tc.maxReports, MaxPendingFlows: tc.maxFlows})
			ts := waitSession(t, srv)
			for i := range 10 {
				src.add(1, uint64(i+1))
				src.add(2, 1)
				c.ReportNow()
				r := ts.nextReport(t, "report with new flows", func(r *pb.Report) bool { return newFlows(r) > 0 })
				if newFlows(r) != uint64(i+2) || (r.GetSeq() != 0) != tc.wantNumbered {
					t.Fatalf("report %d: %v", i, r)
				}
			}
			waitPending(t, c, tc.wantPending)
			if n := metricValue(t, c, "premirror_control_pending_reports"); n != float64(tc.wantPending) {
				t.Fatalf("pending gauge %v, want %d", n, tc.wantPending)
			}
			if n := metricValue(t, c, "premirror_control_pending_reports_dropped_total", "limit"); n != tc.wantDropped {
				t.Fatalf("%v dropped at the limit, want %v", n, tc.wantDropped)
			}
			if tc.confirms {
				// The newest are the ones kept.
				c.mu.Lock()
				oldest := c.pending[0].flows
				c.mu.Unlock()
				if got := oldest[0].newFlows + oldest[1].newFlows; got != uint64(10-tc.wantPending+2) {
					t.Fatalf("oldest kept report has %d new flows", got)
				}
			}
		})
	}
}

// Moving from a controller that confirms reports to one that confirms
// none, the client sends nothing twice: the reports the first took are
// dropped (counted), not sent again.
func TestPendingReportsNotSentToOlderController(t *testing.T) {
	ce := newCerts(t, "edge-1")
	var mu sync.Mutex
	confirms := true
	srv := &testServer{sessions: make(chan *testSession, 4), durable: func(r *pb.Register) *pb.ReportsDurable {
		mu.Lock()
		defer mu.Unlock()
		if !confirms {
			return nil
		}
		return &pb.ReportsDurable{RunId: r.GetRunId()}
	}}
	addr := startServer(t, ce, srv)
	var src flowSource
	c := runClient(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
		AccessCounts: src.counts, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ts := waitSession(t, srv)
	for _, n := range []uint64{3, 4} {
		src.add(1, n)
		c.ReportNow()
		ts.nextReport(t, "report with new flows", func(r *pb.Report) bool { return newFlows(r) == n })
	}
	waitPending(t, c, 2)
	mu.Lock()
	confirms = false
	mu.Unlock()
	close(ts.end)
	ts2 := waitSession(t, srv)
	for range 5 {
		if r := ts2.nextReport(t, "report", func(*pb.Report) bool { return true }); r.GetResend() || newFlows(r) != 0 || r.GetSeq() != 0 {
			t.Fatalf("report to a controller that confirms none: %v", r)
		}
	}
	waitPending(t, c, 0)
	if n := metricValue(t, c, "premirror_control_pending_reports_dropped_total", "not_confirming"); n != 2 {
		t.Fatalf("%v dropped for the older controller, want 2", n)
	}
}

// metricValue is the value the client exports for metric name (with the
// one label value given, if any).
func metricValue(t *testing.T, c *Client, name string, label ...string) float64 {
	t.Helper()
	v, err := promdesc.Value(c, name, label...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
