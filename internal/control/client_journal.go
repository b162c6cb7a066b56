package control

import (
	"errors"
	"fmt"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// Journal load outcomes (premirror_control_journal_loads_total).
const (
	journalFresh        = "fresh"
	journalRestored     = "restored"
	journalCorrupt      = "corrupt"
	journalIncompatible = "incompatible"
	journalUnreadable   = "unreadable"
	journalLocked       = "locked"
)

var journalOutcomes = []string{journalFresh, journalRestored, journalCorrupt, journalIncompatible, journalUnreadable, journalLocked}

// Restored baseline outcomes (premirror_control_journal_baselines_total),
// indexes of baselineOutcomes.
const (
	baselineKept = iota
	baselineStale
	baselineUnchecked
)

var baselineOutcomes = [...]string{baselineKept: "kept", baselineStale: "stale", baselineUnchecked: "unchecked"}

// minCompact: appends below it never make the next write a snapshot
// (a small snapshot would be rewritten every few reports).
const minCompact = 64 << 10

// loadJournal takes over Config.JournalFile: the run it holds when it can
// be applied, a new run otherwise (logged, counted).
func (c *Client) loadJournal() {
	path := c.cfg.JournalFile
	j, st, torn, err := openJournal(path)
	switch {
	case j == nil:
		// Not this process's: reusing its run would have two processes
		// number one run's reports. This one runs as without a journal.
		c.m.journalLoad = journalUnreadable
		if errors.Is(err, errJournalLocked) {
			c.m.journalLoad = journalLocked
		}
		c.log.Error("access journal not used: another agent process holds it, or it cannot be locked; "+
			"this process's unconfirmed access counts live in memory only", "path", path, "err", err)
		return
	case err != nil:
		c.m.journalLoad = journalUnreadable
		switch {
		case errors.Is(err, ErrJournalCorrupt):
			c.m.journalLoad = journalCorrupt
		case errors.Is(err, ErrJournalVersion):
			c.m.journalLoad = journalIncompatible
		}
		c.log.Error("access journal refused; starting a new run: the previous process's unconfirmed access counts "+
			"and those since its last report are lost (the file is kept as <path>.corrupt)", "path", path, "err", err)
	case st == nil:
		c.m.journalLoad = journalFresh
		c.log.Info("no access journal; starting a new run", "path", path)
	default:
		c.m.journalLoad = journalRestored
		c.runID, c.seq, c.jLimit = st.runID, st.seqLimit, st.seqLimit
		c.sentUntil = time.Unix(0, st.sentUntil)
		c.pending = st.pending
		for _, p := range c.pending {
			c.pendingFlows += len(p.flows)
		}
		c.trimPending() // counted by the process that kept them
		c.m.pending.Store(int64(len(c.pending)))
		c.restored, c.baselineOpen = st, true
		c.log.Info("access journal restored: continuing the previous process's run", "path", path,
			"run", fmt.Sprintf("%016x", c.runID), "next_seq", c.seq+1, "pending_reports", len(c.pending),
			"counters", len(st.baseline), "torn_tail", torn, "same_counters", st.source == c.cfg.CounterSource)
	}
	c.j = j
	c.jSnap, c.jOnDisk = true, st != nil
}

// RestoredBaseline returns what the agent's counters count from when the
// client continues a journal's run (ok): the new flows of each counter
// (key in ResourceId, RegionId, MirrorId) that its last report counted
// to; none when the journal's CounterSource differs (the counters were
// created since: count from zero). Not ok: a new run, which counts from
// the counters' present values.
func (c *Client) RestoredBaseline() (counts []*pb.AccessCount, ok bool) {
	st := c.restored
	if st == nil {
		return nil, false
	}
	if st.source != c.cfg.CounterSource {
		c.log.Info("access counters are newer than the journal (another boot or pin directory): counting them from zero",
			"journal_source", st.source, "source", c.cfg.CounterSource)
		return nil, true
	}
	out := make([]*pb.AccessCount, 0, len(st.baseline))
	for k, n := range st.baseline {
		out = append(out, &pb.AccessCount{ResourceId: k.resource, RegionId: k.region, MirrorId: k.mirror, NewFlows: n})
	}
	return out, true
}

// resolveBaseline settles, at the first registration after the journal
// was restored, whether the agent counts from its baseline: a controller
// that found another agent's run on the node since the journal's run
// last wrote (access_baseline.stale) has it dropped, and the journal
// written whole with the agent's new one before any report is sent, so
// neither this process nor a restart counts again what that agent
// reported. The pending reports stay: they are the journal's run's, and
// the controller skips those it wrote. A controller that does not say
// (an older one, or one confirming nothing) leaves it as before: kept.
//
// The controller is asked because the agent cannot tell by itself: the
// journal's age proves nothing (the pinned counters count while no agent
// runs, and that growth is the baseline's to report), nor does the state
// cache (the agent's own file, which an older build rewrites only when a
// version changes). The attached program's ID would (every agent start
// replaces it), but only recorded in the journal and read before the
// agent's own attach: another journal format, not done.
func (c *Client) resolveBaseline(reg *pb.Registered, confirming bool) {
	c.mu.Lock()
	if !c.baselineOpen {
		c.mu.Unlock()
		return
	}
	c.baselineOpen = false
	ab := reg.GetAccessBaseline()
	var w *journalWriteReq
	switch {
	case !confirming || ab == nil:
		c.m.baselines[baselineUnchecked].Add(1)
		c.log.Info("the controller did not check the access journal's counter baseline (an older one): counting from it; "+
			"should another agent have run on the node since the journal's last write, what it reported since is counted again",
			"controller", reg.GetController(), "run", fmt.Sprintf("%016x", c.runID))
	case ab.GetStale():
		c.m.baselines[baselineStale].Add(1)
		c.cfg.DropBaseline()
		c.jSnap = true
		w = c.journalWrite(false, nil)
		c.log.Warn("access journal's counter baseline dropped: another agent ran on the node since the journal's last write "+
			"and reported these counters; counting from their values at this start (what was counted between that agent's "+
			"last report and this start is not reported); the journal's unconfirmed reports are still sent again",
			"run", fmt.Sprintf("%016x", c.runID), "other_run", fmt.Sprintf("%016x", ab.GetOtherRun()),
			"controller", reg.GetController(), "pending_reports", len(c.pending))
	default:
		c.m.baselines[baselineKept].Add(1)
		c.log.Info("access journal's counter baseline kept: no other agent ran on the node since the journal's last write",
			"run", fmt.Sprintf("%016x", c.runID))
	}
	c.mu.Unlock()
	c.writeJournal(w)
}

// journalWriteReq is one journal write, gathered under c.mu and encoded
// and written outside it.
type journalWriteReq struct {
	snapshot bool
	st       journalState // of a snapshot: pending is a copy
	baseline []baselineEntry
	kept     *pendingReport // of an append: the report's kept flows
	limit    uint64
	// confirmed: of an append, the reports confirmed so far.
	confirmed uint64
}

func baselineEntries(counts []*pb.AccessCount) []baselineEntry {
	out := make([]baselineEntry, len(counts))
	for i, a := range counts {
		out[i] = baselineEntry{key: accessKey{a.GetResourceId(), a.GetRegionId(), a.GetMirrorId()}, newFlows: a.GetNewFlows()}
	}
	return out
}

// journalWrite returns the write the journal needs now (nil: none),
// after a numbered report (report, with its kept flows or nil) or at
// Run's start: a snapshot when one is due; else, after a report, a
// record when the report kept new flows, moved a counter or used the
// last number reserved. Called with c.mu held, right after AccessCounts.
func (c *Client) journalWrite(report bool, kept *pendingReport) *journalWriteReq {
	if c.j == nil {
		if report {
			c.skipBaseline()
		}
		return nil
	}
	w := &journalWriteReq{limit: c.jLimit, kept: kept}
	if c.seq >= w.limit {
		w.limit = c.seq + seqReserve
	}
	if c.jSnap || c.jAppended > max(c.jSnapBytes, minCompact) {
		w.snapshot = true
		w.st = journalState{runID: c.runID, seqLimit: w.limit, sentUntil: c.sentUntil.UnixNano(), source: c.cfg.CounterSource,
			pending: append([]*pendingReport(nil), c.pending...)}
		w.baseline = baselineEntries(c.cfg.AccessBaseline(true))
		return w
	}
	if !report {
		return nil
	}
	w.baseline = baselineEntries(c.cfg.AccessBaseline(false))
	w.st.sentUntil = c.sentUntil.UnixNano()
	w.confirmed = c.confirmedSeq
	if kept == nil && len(w.baseline) == 0 && c.seq <= c.jLimit {
		return nil
	}
	return w
}

// skipBaseline empties the agent's record of the counters moved since
// AccessBaseline last asked when no append takes it: without a journal
// (another process holds it), or under a controller that confirms
// nothing (the journal removed; the next write is a snapshot, which asks
// for all). Kept, it would grow with every counter that ever moved for
// the life of the process. Called with c.mu held, right after
// AccessCounts.
func (c *Client) skipBaseline() {
	if c.cfg.JournalFile != "" {
		c.cfg.AccessBaseline(false)
	}
}

// writeJournal carries out w. A failed write removes the journal: one
// that no longer says what was sent must not be applied by a restart
// (which then starts a new run); the next write is a snapshot.
func (c *Client) writeJournal(w *journalWriteReq) {
	if w == nil {
		return
	}
	var b []byte
	if w.snapshot {
		b = encodeSnapshot(&w.st, w.baseline)
	} else {
		b = encodeReport(w.limit, w.st.sentUntil, w.confirmed, w.kept, w.baseline)
	}
	start := time.Now()
	c.jMu.Lock()
	var err, rerr error
	switch {
	case c.j == nil:
		c.jMu.Unlock()
		return // closed
	case w.snapshot:
		err = c.j.writeSnapshot(b)
	default:
		err = c.j.appendRecord(b)
	}
	if err != nil {
		rerr = c.j.remove()
	}
	c.jMu.Unlock()
	c.m.journalNanos.Add(uint64(time.Since(start)))
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.m.journalErrors.Add(1)
		c.jSnap, c.jOnDisk = true, rerr != nil
		if !c.jFailing {
			c.jFailing = true
			msg := "access journal not written: removed, so a restart starts a new run (losing what is unconfirmed) " +
				"rather than count reports twice; retrying with the next report"
			if rerr != nil {
				msg = "access journal not written nor removed: a restart before the next write succeeds may count " +
					"this process's reports since the last write twice; retrying with the next report"
			}
			c.log.Error(msg, "path", c.cfg.JournalFile, "err", err, "remove_err", rerr)
		}
		return
	}
	c.m.journalBytes.Add(uint64(len(b)))
	c.jLimit, c.jOnDisk = w.limit, true
	if w.snapshot {
		c.m.journalSnapshots.Add(1)
		c.jSnap, c.jSnapBytes, c.jAppended = false, len(b), 0
	} else {
		c.m.journalAppends.Add(1)
		c.jAppended += len(b)
	}
	if c.jFailing {
		c.jFailing = false
		c.log.Info("access journal written again", "path", c.cfg.JournalFile)
	}
}

// dropJournal removes the journal before a session whose controller
// confirms no reports: its reports are not numbered, so a journal would
// have a restart count them again. A restart then starts a new run, as
// before journals.
func (c *Client) dropJournal() {
	c.mu.Lock()
	onDisk := c.jOnDisk
	c.jSnap = true
	c.mu.Unlock()
	if !onDisk {
		return
	}
	c.jMu.Lock()
	var err error
	if c.j != nil {
		err = c.j.remove()
	}
	c.jMu.Unlock()
	c.mu.Lock()
	c.jOnDisk = err != nil
	c.mu.Unlock()
	if err != nil {
		c.m.journalErrors.Add(1)
		c.log.Error("access journal not removed: the controller confirms no reports, and a restart would count "+
			"the reports sent to it again", "path", c.cfg.JournalFile, "err", err)
		return
	}
	c.log.Info("access journal removed: the controller confirms no reports (an older one); a restart starts a new run",
		"path", c.cfg.JournalFile)
}

// crash is the test hook at a stage of sendReport.
func (c *Client) crash(stage string) error {
	if c.crashHook == nil {
		return nil
	}
	return c.crashHook(stage)
}
