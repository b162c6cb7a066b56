package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// testJournal is a snapshot followed by two appended reports: one kept
// with a moved and a removed counter, one without new flows that
// reserves further numbers.
func testJournal() (b []byte, want *journalState) {
	p1 := &pendingReport{seq: 3, start: 100, end: 200, flows: []flowCount{{1, 2, 5}}, sent: true}
	p2 := &pendingReport{seq: 4, start: 200, end: 300, flows: []flowCount{{1, 2, 1}, {9, 2, 7}}, sent: true}
	st := &journalState{runID: 0xfeed, seqLimit: 1027, sentUntil: 200, source: "boot-a /sys/fs/bpf/premirror",
		baseline: map[accessKey]uint64{{1, 2, 3}: 40, {8, 2, 3}: 2}, pending: []*pendingReport{p1}}
	b = encodeSnapshot(st, []baselineEntry{{accessKey{1, 2, 3}, 40}, {accessKey{8, 2, 3}, 2}})
	b = append(b, encodeReport(1027, 300, 2, p2, []baselineEntry{{accessKey{1, 2, 3}, 41}, {accessKey{9, 2, 3}, 7}, {accessKey{8, 2, 3}, 0}})...)
	b = append(b, encodeReport(3000, 400, 2, nil, nil)...)
	want = &journalState{runID: 0xfeed, seqLimit: 3000, sentUntil: 400, source: st.source,
		baseline: map[accessKey]uint64{{1, 2, 3}: 41, {9, 2, 3}: 7}, pending: []*pendingReport{p1, p2}}
	return b, want
}

func TestJournalRoundTrip(t *testing.T) {
	full, want := testJournal()
	snapLen := journalHeaderLen + recHeaderLen + int(be32(full[journalHeaderLen:]))
	firstAppend := snapLen + recHeaderLen + int(be32(full[snapLen:]))
	afterFirst := &journalState{runID: want.runID, seqLimit: 1027, sentUntil: 300, source: want.source,
		baseline: want.baseline, pending: want.pending}
	afterSnap := &journalState{runID: want.runID, seqLimit: 1027, sentUntil: 200, source: want.source,
		baseline: map[accessKey]uint64{{1, 2, 3}: 40, {8, 2, 3}: 2}, pending: want.pending[:1]}
	for _, tc := range []struct {
		name string
		b    []byte
		want *journalState
		torn bool
	}{
		{"snapshot and appends", full, want, false},
		{"snapshot alone", full[:snapLen], afterSnap, false},
		// A crash while a report was appended: that report was never
		// sent, and the journal is what it was before.
		{"last append cut in its header", full[:firstAppend+4], afterFirst, true},
		{"last append cut in its payload", full[:len(full)-1], afterFirst, true},
		{"first append cut", full[:snapLen+recHeaderLen+2], afterSnap, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, torn, err := decodeJournal(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if torn != tc.torn {
				t.Fatalf("torn %v, want %v", torn, tc.torn)
			}
			if !sameState(st, tc.want) {
				t.Fatalf("decoded\n %+v\nwant\n %+v", st, tc.want)
			}
			// What a compaction writes reads back the same.
			again, _, err := decodeJournal(encodeSnapshot(st, entriesOf(st.baseline)))
			if err != nil || !sameState(again, st) {
				t.Fatalf("snapshot of the decoded state: %+v, %v", again, err)
			}
		})
	}
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func entriesOf(m map[accessKey]uint64) []baselineEntry {
	var out []baselineEntry
	for k, v := range m {
		out = append(out, baselineEntry{k, v})
	}
	return out
}

func sameState(a, b *journalState) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.runID != b.runID || a.seqLimit != b.seqLimit || a.sentUntil != b.sentUntil || a.source != b.source ||
		!maps.Equal(a.baseline, b.baseline) || len(a.pending) != len(b.pending) {
		return false
	}
	for i := range a.pending {
		if !reflect.DeepEqual(*a.pending[i], *b.pending[i]) {
			return false
		}
	}
	return true
}

// A journal that cannot be applied is refused whole, with an error that
// says why.
func TestJournalRefused(t *testing.T) {
	full, _ := testJournal()
	snapLen := journalHeaderLen + recHeaderLen + int(be32(full[journalHeaderLen:]))
	flip := func(i int) []byte { b := bytes.Clone(full); b[i] ^= 0x40; return b }
	version := bytes.Clone(full)
	version[len(journalMagic)+3] = 2
	outOfOrder := encodeSnapshot(&journalState{runID: 1, seqLimit: 10, pending: []*pendingReport{
		{seq: 5, flows: []flowCount{{1, 1, 1}}}, {seq: 5, flows: []flowCount{{1, 1, 1}}}}}, nil)
	beyondLimit := encodeSnapshot(&journalState{runID: 1, seqLimit: 4, pending: []*pendingReport{
		{seq: 5, flows: []flowCount{{1, 1, 1}}}}}, nil)
	lowered := append(encodeSnapshot(&journalState{runID: 1, seqLimit: 10}, nil), encodeReport(9, 0, 0, nil, nil)...)
	confirmedAbove := append(encodeSnapshot(&journalState{runID: 1, seqLimit: 10}, nil), encodeReport(10, 0, 11, nil, nil)...)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrJournalCorrupt},
		{"header only", full[:journalHeaderLen], ErrJournalCorrupt},
		{"not a journal", []byte("pmstate1 and more bytes"), ErrJournalCorrupt},
		{"another version", version, ErrJournalVersion},
		{"snapshot cut short", full[:snapLen-1], ErrJournalCorrupt},
		{"snapshot's header cut", full[:journalHeaderLen+5], ErrJournalCorrupt},
		{"a bit flipped in the snapshot", flip(snapLen - 3), ErrJournalCorrupt},
		{"a bit flipped in an append that is not the last", flip(snapLen + recHeaderLen + 2), ErrJournalCorrupt},
		{"a bit flipped in the last append", flip(len(full) - 1), ErrJournalCorrupt},
		{"two snapshots", append(bytes.Clone(full[:snapLen]), full[journalHeaderLen:snapLen]...), ErrJournalCorrupt},
		{"reports out of order", outOfOrder, ErrJournalCorrupt},
		{"a report above the numbers reserved", beyondLimit, ErrJournalCorrupt},
		{"numbers reserved going down", lowered, ErrJournalCorrupt},
		{"confirmed above the numbers reserved", confirmedAbove, ErrJournalCorrupt},
		{"no run", encodeSnapshot(&journalState{}, nil), ErrJournalCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, err := decodeJournal(tc.b)
			if !errors.Is(err, tc.want) || st != nil {
				t.Fatalf("decoded %+v, %v; want %v", st, err, tc.want)
			}
		})
	}
}

// FuzzDecodeJournal: any bytes decode without panicking, and what
// decodes survives a snapshot of it unchanged.
func FuzzDecodeJournal(f *testing.F) {
	full, _ := testJournal()
	f.Add(full)
	f.Add(full[:len(full)-3])
	f.Add(encodeSnapshot(&journalState{runID: 1}, nil))
	f.Add([]byte("pmaccjnl"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, _, err := decodeJournal(b)
		if err != nil {
			if st != nil {
				t.Fatal("a state with an error")
			}
			return
		}
		again, torn, err := decodeJournal(encodeSnapshot(st, entriesOf(st.baseline)))
		if err != nil || torn || !sameState(again, st) {
			t.Fatalf("snapshot of %+v read back as %+v, %v", st, again, err)
		}
	})
}

// counters are an agent's pinned access counters: they outlive its
// processes. A proc is one agent process reading them, as the agent does
// (internal/agent: accessCounts, accessBaseline).
type counters struct {
	mu    sync.Mutex
	total map[accessKey]uint64 // new flows
}

func (cs *counters) add(resource uint32, n uint64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.total[accessKey{resource, 7, 3}] += n
}

func (cs *counters) sum() uint64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var n uint64
	for _, v := range cs.total {
		n += v
	}
	return n
}

type proc struct {
	cs      *counters
	mu      sync.Mutex
	prev    map[accessKey]uint64
	atStart map[accessKey]uint64 // the counters when the process started
	changed map[accessKey]bool
}

// newProc starts a process on cs from the client's restored baseline,
// or from the counters' present values.
func newProc(cs *counters, c *Client) *proc {
	p := &proc{cs: cs, prev: map[accessKey]uint64{}, changed: map[accessKey]bool{}}
	cs.mu.Lock()
	p.atStart = maps.Clone(cs.total)
	cs.mu.Unlock()
	if base, ok := c.RestoredBaseline(); ok {
		for _, a := range base {
			p.prev[accessKey{a.GetResourceId(), a.GetRegionId(), a.GetMirrorId()}] = a.GetNewFlows()
		}
		return p
	}
	maps.Copy(p.prev, p.atStart)
	return p
}

// drop counts from the counters' values at start (Config.DropBaseline).
func (p *proc) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prev = maps.Clone(p.atStart)
}

func (p *proc) counts() []*pb.AccessCount {
	p.cs.mu.Lock()
	cur := maps.Clone(p.cs.total)
	p.cs.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*pb.AccessCount
	for k, v := range cur {
		if d := v - p.prev[k]; d > 0 {
			out = append(out, &pb.AccessCount{ResourceId: k.resource, RegionId: k.region, MirrorId: k.mirror, NewFlows: d, Packets: d})
			p.changed[k] = true
		}
	}
	p.prev = cur
	return out
}

func (p *proc) baseline(all bool) []*pb.AccessCount {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*pb.AccessCount
	for k, v := range p.prev {
		if all || p.changed[k] {
			out = append(out, &pb.AccessCount{ResourceId: k.resource, RegionId: k.region, MirrorId: k.mirror, NewFlows: v})
		}
	}
	clear(p.changed)
	return out
}

// tally is what a controller that counts numbered reports once counts:
// the first report of each (run, seq).
type tally struct {
	mu   sync.Mutex
	seen map[[2]uint64]uint64
}

func (tl *tally) add(run uint64, r *pb.Report) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	k := [2]uint64{run, r.GetSeq()}
	if _, ok := tl.seen[k]; !ok || r.GetSeq() == 0 {
		tl.seen[k] += newFlows(r)
	}
}

func (tl *tally) sum() uint64 {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var n uint64
	for _, v := range tl.seen {
		n += v
	}
	return n
}

// agentProc is one agent process: a client on the journal and its proc.
type agentProc struct {
	c      *Client
	p      *proc
	cancel context.CancelFunc
	done   chan struct{}
}

func startProc(t *testing.T, cfg Config, cs *counters, hook func(string) error) *agentProc {
	t.Helper()
	ap := &agentProc{done: make(chan struct{})}
	cfg.AccessCounts = func() []*pb.AccessCount { return ap.p.counts() }
	cfg.AccessBaseline = func(all bool) []*pb.AccessCount { return ap.p.baseline(all) }
	cfg.DropBaseline = func() { ap.p.drop() }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.crashHook = hook
	ap.c, ap.p = c, newProc(cs, c)
	ctx, cancel := context.WithCancel(context.Background())
	ap.cancel = cancel
	go func() { defer close(ap.done); _ = c.Run(ctx) }()
	t.Cleanup(ap.kill)
	return ap
}

// kill stops the process as a crash would: no final report, nothing
// written after what it wrote last.
func (ap *agentProc) kill() {
	ap.cancel()
	<-ap.done
	ap.c.Close()
}

// An agent process killed at any point of its report path (after
// counting, after the journal write, between reports) and started again
// on its journal and its counters: the controller counts exactly what
// the counters counted, and the restarted process continues the run,
// sending the reports not confirmed again with their numbers before any
// new one, which it numbers above every number the first one gave.
func TestJournalRestartCountsOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stage   string // where the crash comes ("": between reports)
		pending int    // reports the restarted process sends again
	}{
		{"crash after counting, before the journal write", "counted", 2},
		{"crash after the journal write, before the send", "journaled", 3},
		{"crash between reports", "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := newCerts(t, "edge-1")
			tl := &tally{seen: map[[2]uint64]uint64{}}
			var written atomic.Uint64 // what the controller wrote and confirmed
			srv := &testServer{sessions: make(chan *testSession, 8), durable: func(r *pb.Register) *pb.ReportsDurable {
				return &pb.ReportsDurable{RunId: r.GetRunId(), ThroughSeq: written.Load()}
			}}
			addr := startServer(t, ce, srv)
			cs := &counters{total: map[accessKey]uint64{{1, 7, 3}: 1000}} // counted before the agent
			path := filepath.Join(t.TempDir(), "state.pb.access")
			cfg := Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
				JournalFile: path, CounterSource: "boot-a",
				MinBackoff: time.Hour, MaxBackoff: time.Hour} // a crashed session is not retried
			var armed sync.Mutex
			crashAt := ""
			crashed := make(chan struct{})
			hook := func(stage string) error {
				armed.Lock()
				defer armed.Unlock()
				if stage != crashAt {
					return nil
				}
				crashAt = "-"
				close(crashed)
				return errors.New("crashed (test)")
			}
			a := startProc(t, cfg, cs, hook)
			ts := waitSession(t, srv)
			run := ts.reg.GetRunId()
			var maxSeq uint64
			// read tallies the session's reports until one satisfies ok.
			read := func(ts *testSession, what string, ok func(*pb.Report) bool) *pb.Report {
				return ts.nextReport(t, what, func(r *pb.Report) bool {
					tl.add(run, r)
					maxSeq = max(maxSeq, r.GetSeq())
					return ok(r)
				})
			}
			step := func(n uint64) *pb.Report {
				cs.add(1, n)
				a.c.ReportNow()
				return read(ts, "report", func(r *pb.Report) bool { return newFlows(r) == n })
			}
			first := step(5)
			step(7)
			step(11)
			written.Store(first.GetSeq())
			ts.confirm(t, first.GetSeq())
			waitPending(t, a.c, 2)
			// Reports without new flows are numbered too.
			read(ts, "reports without new flows", func(r *pb.Report) bool { return r.GetSeq() > first.GetSeq()+5 })
			cs.add(1, 13)
			if tc.stage != "" {
				armed.Lock()
				crashAt = tc.stage
				armed.Unlock()
				a.c.ReportNow()
				<-crashed
			}
			a.kill()
			for {
				select {
				case m := <-ts.recv:
					if r := m.GetReport(); r != nil {
						tl.add(run, r)
						maxSeq = max(maxSeq, r.GetSeq())
					}
					continue
				default:
				}
				break
			}
			cs.add(1, 17) // counted while no agent runs

			b := startProc(t, cfg, cs, nil)
			ts2 := waitSession(t, srv)
			if ts2.reg.GetRunId() != run {
				t.Fatalf("restarted process registered run %x, want the journal's %x", ts2.reg.GetRunId(), run)
			}
			if n := metricValue(t, b.c, "premirror_control_journal_loads_total", "restored"); n != 1 {
				t.Fatalf("journal loads restored = %v", n)
			}
			// The unconfirmed reports come first, with their numbers.
			var resent []uint64
			for range tc.pending {
				r := ts2.nextReport(t, "report sent again", func(*pb.Report) bool { return true })
				if !r.GetResend() || r.GetSeq() <= first.GetSeq() {
					t.Fatalf("first reports of the restarted process: %v is not one sent again", r)
				}
				resent = append(resent, r.GetSeq())
				tl.add(run, r)
			}
			if !slices.IsSorted(resent) {
				t.Fatalf("sent again %v", resent)
			}
			r := ts2.nextReport(t, "new report", func(r *pb.Report) bool { return !r.GetResend() })
			if r.GetSeq() <= maxSeq {
				t.Fatalf("the restarted process numbered its first report %d; the first one went to %d", r.GetSeq(), maxSeq)
			}
			tl.add(run, r)
			want := cs.sum() - 1000
			if got := tl.sum(); got != want {
				t.Fatalf("counted %d new flows, the counters counted %d", got, want)
			}
			if n := metricValue(t, b.c, "premirror_control_reports_resent_total"); n != float64(tc.pending) {
				t.Fatalf("%v reports counted as sent again, want %d", n, tc.pending)
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A journal that cannot be applied, or one another process holds, starts
// a new run: logged, counted, never applied; the damaged file is kept
// aside and a new journal written.
func TestJournalNotApplied(t *testing.T) {
	full, _ := testJournal()
	version := bytes.Clone(full)
	version[len(journalMagic)+3] = 9
	for _, tc := range []struct {
		name    string
		content []byte // nil: no file
		lockit  bool   // another process holds it
		dir     bool   // the path is a directory: read fails
		outcome string
		kept    bool // the file is moved to .corrupt
	}{
		{"none", nil, false, false, journalFresh, false},
		{"corrupt", append(bytes.Clone(full[:40]), 0xff), false, false, journalCorrupt, true},
		{"truncated snapshot", full[:journalHeaderLen+20], false, false, journalCorrupt, true},
		{"another version", version, false, false, journalIncompatible, true},
		{"held by another process", full, true, false, journalLocked, false},
		{"unreadable", nil, false, true, journalUnreadable, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.pb.access")
			if tc.content != nil {
				if err := os.WriteFile(path, tc.content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tc.dir {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if tc.lockit {
				j, st, _, err := openJournal(path)
				if err != nil || st == nil {
					t.Fatal(err)
				}
				defer j.close()
			}
			cs := &counters{total: map[accessKey]uint64{}}
			a := startProc(t, Config{Endpoints: []string{"127.0.0.1:1"}, TLS: newCerts(t, "edge-1").client, Node: "edge-1",
				Apply: (&agentFake{}).apply, JournalFile: path}, cs, nil)
			if n := metricValue(t, a.c, "premirror_control_journal_loads_total", tc.outcome); n != 1 {
				t.Fatalf("loads{outcome=%s} = %v", tc.outcome, n)
			}
			if _, ok := a.c.RestoredBaseline(); ok || a.c.runID == 0xfeed || a.c.PendingReports() != 0 {
				t.Fatalf("the journal was applied: run %x, %d pending", a.c.runID, a.c.PendingReports())
			}
			if _, err := os.Stat(path + ".corrupt"); (err == nil) != tc.kept {
				t.Fatalf("%s.corrupt: %v", path, err)
			}
			if tc.lockit {
				// The other process's journal is untouched.
				if b, _ := os.ReadFile(path); !bytes.Equal(b, full) {
					t.Fatal("a process without the lock wrote the journal")
				}
				return
			}
			// This process's journal of its new run is there from the start.
			waitJournalOf(t, "the new run's journal", path, a.c.runID)
		})
	}
}

// Reports without new flows and without moved counters write nothing;
// one with new flows appends a record, not the whole journal; the
// appends are compacted into a snapshot once they outgrow it. A
// controller that confirms nothing (an older one) has the journal
// removed: its reports are not numbered.
func TestJournalWrites(t *testing.T) {
	ce := newCerts(t, "edge-1")
	var mu sync.Mutex
	confirms := true
	srv := &testServer{sessions: make(chan *testSession, 8), durable: func(r *pb.Register) *pb.ReportsDurable {
		mu.Lock()
		defer mu.Unlock()
		if !confirms {
			return nil
		}
		return &pb.ReportsDurable{RunId: r.GetRunId()}
	}}
	addr := startServer(t, ce, srv)
	path := filepath.Join(t.TempDir(), "state.pb.access")
	cs := &counters{total: map[accessKey]uint64{}}
	a := startProc(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
		JournalFile: path, ReportInterval: time.Hour, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, cs, nil)
	ts := waitSession(t, srv)
	writes := func(kind string) float64 { return metricValue(t, a.c, "premirror_control_journal_writes_total", kind) }
	if writes("snapshot") != 1 || writes("append") != 0 {
		t.Fatalf("at start: %v snapshots, %v appends", writes("snapshot"), writes("append"))
	}
	for range 5 {
		a.c.ReportNow()
		ts.nextReport(t, "report", func(*pb.Report) bool { return true })
	}
	if writes("snapshot") != 1 || writes("append") != 0 {
		t.Fatalf("reports without new flows wrote the journal: %v snapshots, %v appends", writes("snapshot"), writes("append"))
	}
	size := func() int64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	before := size()
	cs.add(1, 3)
	a.c.ReportNow()
	ts.nextReport(t, "report with new flows", func(r *pb.Report) bool { return newFlows(r) == 3 })
	waitFor(t, "append", func() bool { return writes("append") == 1 })
	if grew := size() - before; grew <= 0 || grew > 64 {
		t.Fatalf("one report's append grew the journal by %d bytes", grew)
	}
	// Compaction: appends beyond the snapshot's size (and minCompact).
	for i := range 100 {
		cs.mu.Lock() // one report takes all 100
		for r := range 100 {
			cs.total[accessKey{uint32(100 + i*100 + r), 7, 3}]++
		}
		cs.mu.Unlock()
		a.c.ReportNow()
		ts.nextReport(t, "report with new flows", func(r *pb.Report) bool { return newFlows(r) == 100 })
	}
	waitFor(t, "compaction", func() bool { return writes("snapshot") == 2 })
	b, _ := os.ReadFile(path)
	st, torn, err := decodeJournal(b)
	if err != nil || torn || len(st.pending) != 101 || len(st.baseline) != 10001 {
		t.Fatalf("compacted journal: %v %v, %d pending, %d counters", err, torn, len(st.pending), len(st.baseline))
	}
	if n := metricValue(t, a.c, "premirror_control_journal_write_errors_total"); n != 0 {
		t.Fatalf("%v write errors", n)
	}

	// An older controller: the journal goes.
	mu.Lock()
	confirms = false
	mu.Unlock()
	close(ts.end)
	ts2 := waitSession(t, srv)
	ts2.nextReport(t, "unnumbered report", func(r *pb.Report) bool { return r.GetSeq() == 0 })
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal kept under a controller that confirms nothing: %v", err)
	}
	// Back to a newer one: a new journal, the run's.
	mu.Lock()
	confirms = true
	mu.Unlock()
	close(ts2.end)
	ts3 := waitSession(t, srv)
	cs.add(1, 1)
	a.c.ReportNow()
	ts3.nextReport(t, "numbered report", func(r *pb.Report) bool { return r.GetSeq() != 0 && newFlows(r) == 1 })
	waitJournalOf(t, "journal written again", path, a.c.runID)
}

// A journal write that fails removes the journal (a restart then starts
// a new run rather than count reports twice), counts the error, and the
// next report writes a whole new journal (a snapshot).
func TestJournalWriteFailure(t *testing.T) {
	ce := newCerts(t, "edge-1")
	srv := &testServer{sessions: make(chan *testSession, 8), durable: func(r *pb.Register) *pb.ReportsDurable {
		return &pb.ReportsDurable{RunId: r.GetRunId()}
	}}
	addr := startServer(t, ce, srv)
	path := filepath.Join(t.TempDir(), "state.pb.access")
	cs := &counters{total: map[accessKey]uint64{}}
	a := startProc(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
		JournalFile: path, ReportInterval: time.Hour}, cs, nil)
	ts := waitSession(t, srv)
	// The append handle goes bad: the next append fails.
	a.c.jMu.Lock()
	a.c.j.f.Close()
	a.c.jMu.Unlock()
	cs.add(1, 2)
	a.c.ReportNow()
	ts.nextReport(t, "report sent despite the failed write", func(r *pb.Report) bool { return newFlows(r) == 2 })
	waitFor(t, "error counted", func() bool {
		return metricValue(t, a.c, "premirror_control_journal_write_errors_total") == 1
	})
	cs.add(1, 4)
	a.c.ReportNow()
	ts.nextReport(t, "next report", func(r *pb.Report) bool { return newFlows(r) == 4 })
	waitFor(t, "journal written whole again", func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		st, _, err := decodeJournal(b)
		return err == nil && len(st.pending) == 2 && st.baseline[accessKey{1, 7, 3}] == 6
	})
	if n := metricValue(t, a.c, "premirror_control_journal_writes_total", "snapshot"); n < 2 {
		t.Fatalf("%v snapshots: the journal after the failure is not a whole one", n)
	}
}

// The journal's baseline applies only to the counters it was taken from.
func TestJournalCounterSource(t *testing.T) {
	for _, tc := range []struct {
		name, source string
		want         int // counters restored
	}{
		{"same counters", "boot-a/7", 1},
		{"counters created since (a reboot, detach -maps)", "boot-b/3", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.pb.access")
			b := encodeSnapshot(&journalState{runID: 5, seqLimit: 9, source: "boot-a/7"}, []baselineEntry{{accessKey{1, 2, 3}, 40}})
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := New(Config{Endpoints: []string{"127.0.0.1:1"}, TLS: newCerts(t, "edge-1").client, Node: "edge-1",
				Apply: (&agentFake{}).apply, JournalFile: path, CounterSource: tc.source,
				AccessCounts: func() []*pb.AccessCount { return nil }, AccessBaseline: func(bool) []*pb.AccessCount { return nil },
				DropBaseline: func() {}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			base, ok := c.RestoredBaseline()
			if !ok || len(base) != tc.want || c.runID != 5 {
				t.Fatalf("restored %v (%v), run %x", base, ok, c.runID)
			}
		})
	}
}

// discardStream takes every message (a session whose sends cost nothing).
type discardStream struct {
	grpc.BidiStreamingClient[pb.AgentMessage, pb.ControllerMessage]
}

func (discardStream) Send(*pb.AgentMessage) error { return nil }

// BenchmarkJournalWrite is the report path of a numbered agent (128
// access counts a report, all with new flows) without a journal and with
// one, appending or compacting, beside few pending reports or the most
// (1024 reports, 2^18 counts) and 2^18 counters. Set
// PREMIRROR_BENCH_DIR to measure another file system than TMPDIR's.
func BenchmarkJournalWrite(b *testing.B) {
	const perReport = 128
	for _, bc := range []struct {
		name     string
		journal  bool
		snapshot bool // every write compacts
		max      bool // the pending set and the counters at their bounds
	}{
		{"baseline-no-journal/pending-small", false, false, false},
		{"baseline-no-journal/pending-max", false, false, true},
		{"append/pending-small", true, false, false},
		{"append/pending-max", true, false, true},
		{"snapshot/pending-small", true, true, false},
		{"snapshot/pending-max", true, true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dir := os.Getenv("PREMIRROR_BENCH_DIR")
			if dir == "" {
				dir = b.TempDir()
			} else {
				var err error
				if dir, err = os.MkdirTemp(dir, "journal-bench-"); err != nil {
					b.Fatal(err)
				}
				defer os.RemoveAll(dir)
			}
			counters := 128
			if bc.max {
				counters = 1 << 18
			}
			base := make([]*pb.AccessCount, counters)
			for i := range base {
				base[i] = &pb.AccessCount{ResourceId: uint32(i >> 6), RegionId: uint32(i & 63), MirrorId: 1, NewFlows: 1 << 20}
			}
			n := uint32(0)
			cfg := Config{Endpoints: []string{"127.0.0.1:1"}, TLS: &tls.Config{}, Node: "edge-1",
				Apply: (&agentFake{}).apply, Logger: slog.New(slog.DiscardHandler),
				AccessCounts: func() []*pb.AccessCount {
					out := make([]*pb.AccessCount, perReport)
					for i := range out {
						n++
						out[i] = &pb.AccessCount{ResourceId: n >> 6, RegionId: n & 63, MirrorId: 1, NewFlows: 3, Packets: 9, Bytes: 900}
					}
					return out
				},
				AccessBaseline: func(all bool) []*pb.AccessCount {
					if all {
						return base
					}
					return base[:perReport]
				},
				DropBaseline: func() {}}
			if bc.journal {
				cfg.JournalFile = filepath.Join(dir, "state.pb.access")
			}
			c, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.confirming = true
			if bc.max {
				for i := range DefaultMaxPendingReports {
					p := &pendingReport{seq: uint64(i + 1), flows: make([]flowCount, DefaultMaxPendingFlows/DefaultMaxPendingReports)}
					for j := range p.flows {
						p.flows[j] = flowCount{uint32(j), uint32(i), 5}
					}
					c.pending = append(c.pending, p)
					c.pendingFlows += len(p.flows)
				}
				c.seq = DefaultMaxPendingReports
			}
			c.writeJournal(c.journalWrite(false, nil))
			s := &sessionIO{stream: discardStream{}}
			bytes0, writes0 := c.m.journalBytes.Load(), c.m.journalSnapshots.Load()+c.m.journalAppends.Load()
			b.ResetTimer()
			for range b.N {
				if bc.snapshot {
					c.mu.Lock()
					c.jSnap = true
					c.mu.Unlock()
				}
				if err := c.sendReport(s); err != nil {
					b.Fatal(err)
				}
				if !bc.max {
					c.confirmed(&pb.ReportsDurable{RunId: c.runID, ThroughSeq: c.seq})
				}
			}
			b.StopTimer()
			if c.m.journalErrors.Load() > 0 {
				b.Fatal("journal write errors")
			}
			if w := c.m.journalSnapshots.Load() + c.m.journalAppends.Load() - writes0; bc.journal {
				b.ReportMetric(float64(c.m.journalBytes.Load()-bytes0)/float64(b.N), "journal-B/report")
				b.ReportMetric(float64(w)/float64(b.N), "writes/report")
			}
			b.ReportMetric(float64(len(c.pending)), "pending-reports")
		})
	}
}

// A process restarted on its journal asks, at its first registration
// only (Register.check_baseline), whether another agent ran on the node
// since the journal's last write, and counts from the journal's baseline
// when the controller says none did (kept) or says nothing (an older
// one: unchecked, as before), from the counters' values at its start
// when one did (stale: that agent reported the growth since). Either way
// it sends the journal's unconfirmed reports again, and what it settled
// on is in the journal before its first report: a restart killed before
// that report's journal write counts from it too.
func TestJournalBaselineVerdict(t *testing.T) {
	for _, tc := range []struct {
		name    string
		verdict *pb.AccessBaseline // nil: not said
		outcome string
		want    uint64 // new flows of the first new report after the restart
	}{
		{"no other agent ran: kept", &pb.AccessBaseline{}, "kept", 17 + 19},
		{"another agent ran: stale, counted from the start", &pb.AccessBaseline{Stale: true, OtherRun: 0xb}, "stale", 19},
		{"older controller: unchecked, kept", nil, "unchecked", 17 + 19},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := newCerts(t, "edge-1")
			cs := &counters{total: map[accessKey]uint64{{1, 7, 3}: 1000}}
			var verdict atomic.Pointer[pb.AccessBaseline]
			var mu sync.Mutex
			var asked []bool // Register.check_baseline, by registration
			srv := &testServer{sessions: make(chan *testSession, 8),
				durable: func(r *pb.Register) *pb.ReportsDurable { return &pb.ReportsDurable{RunId: r.GetRunId()} },
				baseline: func(r *pb.Register) *pb.AccessBaseline {
					mu.Lock()
					asked = append(asked, r.GetCheckBaseline())
					n := len(asked)
					mu.Unlock()
					if n == 2 {
						cs.add(1, 19) // counted after the restart, before the answer
					}
					return verdict.Load()
				}}
			addr := startServer(t, ce, srv)
			path := filepath.Join(t.TempDir(), "state.pb.access")
			cfg := Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
				JournalFile: path, CounterSource: "boot-a", MinBackoff: time.Hour, MaxBackoff: time.Hour}
			verdict.Store(&pb.AccessBaseline{})
			a := startProc(t, cfg, cs, nil)
			ts := waitSession(t, srv)
			cs.add(1, 5)
			a.c.ReportNow()
			ts.nextReport(t, "report", func(r *pb.Report) bool { return newFlows(r) == 5 })
			a.kill()
			cs.add(1, 17) // reported by another agent, or by none

			// The restarted process dies at its first new report, before
			// writing it: its journal is what it settled on at registration.
			verdict.Store(tc.verdict)
			crashed, resent := make(chan struct{}), make(chan struct{})
			var once sync.Once
			b := startProc(t, cfg, cs, func(stage string) error {
				if stage != "counted" {
					return nil
				}
				once.Do(func() {
					// The crash must not cut the stream before the server
					// read the report sent again.
					select {
					case <-resent:
					case <-time.After(5 * time.Second):
					}
					close(crashed)
				})
				return errors.New("crashed (test)")
			})
			ts = waitSession(t, srv)
			r := ts.nextReport(t, "report sent again", func(*pb.Report) bool { return true })
			close(resent)
			if !r.GetResend() || newFlows(r) != 5 {
				t.Fatalf("first report after the restart %v, want the unconfirmed one again", r)
			}
			<-crashed
			b.kill()

			verdict.Store(&pb.AccessBaseline{})
			c := startProc(t, cfg, cs, nil)
			ts = waitSession(t, srv)
			r = ts.nextReport(t, "new report", func(r *pb.Report) bool { return !r.GetResend() })
			if got := newFlows(r); got != tc.want {
				t.Fatalf("first new report after the restarts has %d new flows, want %d", got, tc.want)
			}
			if n := metricValue(t, b.c, "premirror_control_journal_baselines_total", tc.outcome); n != 1 {
				t.Fatalf("journal baselines %s = %v", tc.outcome, n)
			}
			if n := metricValue(t, c.c, "premirror_control_journal_baselines_total", "kept"); n != 1 {
				t.Fatalf("journal baselines kept = %v", n)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(asked, []bool{false, true, true}) {
				t.Fatalf("check_baseline by registration: %v, want only the restarted processes' asking", asked)
			}
		})
	}
}

// The agent records the counters that moved since the journal last
// asked (AccessBaseline); when no append will ever take that record (a
// controller that confirms nothing, or a journal another process holds)
// the client empties it at every report, or it would hold every counter
// that ever moved for the life of the process.
func TestJournalChangesNotKeptWithoutAppends(t *testing.T) {
	for _, tc := range []struct {
		name    string
		confirm bool
		lockit  bool
	}{
		{"controller that confirms nothing", false, false},
		{"journal held by another process", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := newCerts(t, "edge-1")
			srv := &testServer{sessions: make(chan *testSession, 8), durable: func(r *pb.Register) *pb.ReportsDurable {
				if !tc.confirm {
					return nil
				}
				return &pb.ReportsDurable{RunId: r.GetRunId()}
			}}
			addr := startServer(t, ce, srv)
			path := filepath.Join(t.TempDir(), "state.pb.access")
			if tc.lockit {
				j, _, _, err := openJournal(path)
				if err != nil {
					t.Fatal(err)
				}
				defer j.close()
			}
			cs := &counters{total: map[accessKey]uint64{}}
			a := startProc(t, Config{Endpoints: []string{addr}, TLS: ce.client, Node: "edge-1", Apply: (&agentFake{}).apply,
				JournalFile: path, ReportInterval: time.Hour}, cs, nil)
			ts := waitSession(t, srv)
			for i := range 20 {
				cs.add(uint32(100+i), 1) // a counter that moves once (its resource then goes)
				a.c.ReportNow()
				ts.nextReport(t, "report", func(r *pb.Report) bool { return newFlows(r) == 1 })
			}
			a.p.mu.Lock()
			n := len(a.p.changed)
			a.p.mu.Unlock()
			if n > 1 {
				t.Fatalf("%d counters recorded as moved for a journal append that never comes", n)
			}
		})
	}
}

// A process killed while it rewrote the journal (atomicfile) leaves the
// temporary file behind; the next process to take the journal removes
// such leftovers, so a node whose agent is killed now and then does not
// collect snapshots of the journal. Other files stay.
func TestJournalLeftoverSnapshotsRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.pb.access")
	full, _ := testJournal()
	if err := os.WriteFile(path, full, 0o600); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{".state.pb.access.tmp-123", ".state.pb.access.tmp-4567"}
	others := []string{".state.pb.tmp-99", "state.pb", ".other.access.tmp-1"}
	for _, n := range append(slices.Clone(leftovers), others...) {
		if err := os.WriteFile(filepath.Join(dir, n), full, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	j, st, _, err := openJournal(path)
	if err != nil || st == nil {
		t.Fatal(err)
	}
	defer j.close()
	for _, n := range leftovers {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s: %v", n, err)
		}
	}
	for _, n := range append(others, "state.pb.access") {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

// waitJournalOf waits for the journal at path to hold run (what: for the
// failure message).
func waitJournalOf(t *testing.T, what, path string, run uint64) {
	t.Helper()
	waitFor(t, what, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		st, _, err := decodeJournal(b)
		return err == nil && st.runID == run
	})
}

// The state cache's unfinished replacements (atomicfile temporaries of a
// killed agent) are removed when a client starts, with a journal or
// without one (another agent may hold it). A temporary file modified in
// the last minute stays: it may be a write in progress of an agent that
// writes without the cache's lock (an older build); new writers hold it.
func TestCacheLeftoversRemoved(t *testing.T) {
	for _, tc := range []struct {
		name    string
		journal bool
		held    bool // another process holds the journal
	}{
		{"journal taken", true, false},
		{"journal held by another process", true, true},
		{"no journal", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cache := filepath.Join(dir, "state.pb")
			old := []string{".state.pb.tmp-123", ".state.pb.tmp-4567"}
			fresh := ".state.pb.tmp-89"
			hour := time.Now().Add(-time.Hour)
			for _, n := range append(slices.Clone(old), fresh, "state.pb", ".other.pb.tmp-1") {
				p := filepath.Join(dir, n)
				if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
				if n != fresh {
					if err := os.Chtimes(p, hour, hour); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tc.held {
				j, _, _, err := openJournal(cache + ".access")
				if err != nil {
					t.Fatal(err)
				}
				defer j.close()
			}
			cfg := Config{Endpoints: []string{"127.0.0.1:1"}, TLS: newCerts(t, "edge-1").client, Node: "edge-1",
				Apply: (&agentFake{}).apply, CacheFile: cache}
			if tc.journal {
				cfg.JournalFile = cache + ".access"
				cfg.AccessCounts = func() []*pb.AccessCount { return nil }
				cfg.AccessBaseline = func(bool) []*pb.AccessCount { return nil }
				cfg.DropBaseline = func() {}
			}
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, n := range old {
				if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("leftover %s: %v", n, err)
				}
			}
			for _, n := range []string{fresh, "state.pb", ".other.pb.tmp-1"} {
				if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
					t.Errorf("%s: %v", n, err)
				}
			}
		})
	}
}
