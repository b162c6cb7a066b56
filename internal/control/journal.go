package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"syscall"

	"github.com/premirror/premirror/internal/atomicfile"
)

// The access journal keeps what an agent restart must not lose of its
// numbered reports (Config.JournalFile): the run, how far its numbers
// went, the reports not yet confirmed, and the counter values the last
// report counted to. Layout: a 12-byte header (journalMagic, version),
// then records, each a 4-byte payload length, the CRC-32C of its type
// and payload, a type byte and the payload. The first record is a
// snapshot (the whole state), written atomically (atomicfile); each
// later one is appended (report: one numbered report's change) and
// synced before the report is sent (a confirmation rides along in the
// next append). A snapshot replaces the log when the appends outgrew the
// last snapshot (and minCompact), so a write costs one report's size,
// not the pending set's.
//
// The payloads are varints, not protobuf as the project's other files:
// measured with the records as AccessCount / Report messages
// (BenchmarkJournalWrite, 2026-11-29), an append took 1.9 times the
// bytes, and a snapshot at the pending bounds 5.8 MB and 152 ms against
// 2.95 MB and 18 ms — a journal the agent rewrites while it reports.
var journalMagic = []byte("pmaccjnl")

// journalVersion is the format this build writes and reads; a journal of
// another version is refused (ErrJournalVersion) and the agent starts a
// new run.
const journalVersion = 1

const (
	journalHeaderLen = 12
	recHeaderLen     = 9 // length, CRC, type
	recSnapshot      = 1
	recReport        = 2
	// maxJournalRecord bounds one record: a snapshot of the maximal
	// pending set (2^18 flows) and 2^18 counters takes under 16 MiB.
	maxJournalRecord = 256 << 20
	maxSourceLen     = 256
)

// seqReserve is how many report numbers may be given after a journal
// write without another: the journal holds the highest number it
// reserved, and a restarted agent continues above it, so reports without
// new flows (no write of their own) never reuse a number a replica may
// have counted.
const seqReserve = 1024

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Sentinel errors of a journal that cannot be applied.
var (
	// ErrJournalCorrupt: a checksum, length or value is wrong.
	ErrJournalCorrupt = errors.New("access journal corrupt")
	// ErrJournalVersion: another build's format.
	ErrJournalVersion = errors.New("access journal of an unsupported version")
	// errJournalLocked: another process holds the journal.
	errJournalLocked = errors.New("access journal locked by another process")
)

// journalState is what a journal holds.
type journalState struct {
	runID uint64
	// seqLimit: every report number given so far is at most this.
	seqLimit  uint64
	sentUntil int64 // unix nanoseconds
	// source identifies the counters baseline counts (Config.CounterSource).
	source string
	// baseline: the new flows each counter had when the last report
	// counted it (absent: 0).
	baseline map[accessKey]uint64
	pending  []*pendingReport
}

// baselineEntry is one counter's new-flows total in a journal record; 0
// removes it from the baseline.
type baselineEntry struct {
	key      accessKey
	newFlows uint64
}

// appendRecord frames a record whose payload enc appends.
func appendRecord(dst []byte, typ byte, enc func([]byte) []byte) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	dst = enc(dst)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-recHeaderLen))
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[start+8:], castagnoli))
	return dst
}

func appendKey(b []byte, k accessKey) []byte {
	b = binary.AppendUvarint(b, uint64(k.resource))
	b = binary.AppendUvarint(b, uint64(k.region))
	return binary.AppendUvarint(b, uint64(k.mirror))
}

func appendPending(b []byte, p *pendingReport) []byte {
	b = binary.AppendUvarint(b, p.seq)
	b = binary.AppendVarint(b, p.start)
	b = binary.AppendVarint(b, p.end)
	b = binary.AppendUvarint(b, uint64(len(p.flows)))
	for _, f := range p.flows {
		b = binary.AppendUvarint(b, uint64(f.resource))
		b = binary.AppendUvarint(b, uint64(f.region))
		b = binary.AppendUvarint(b, f.newFlows)
	}
	return b
}

// encodeSnapshot is a whole journal: header and one snapshot record.
func encodeSnapshot(st *journalState, baseline []baselineEntry) []byte {
	n := journalHeaderLen + recHeaderLen + 64 + len(st.source) + 12*len(baseline)
	for _, p := range st.pending {
		n += 24 + 10*len(p.flows)
	}
	b := make([]byte, 0, n)
	b = append(b, journalMagic...)
	b = binary.BigEndian.AppendUint32(b, journalVersion)
	return appendRecord(b, recSnapshot, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, st.runID)
		b = binary.AppendUvarint(b, st.seqLimit)
		b = binary.AppendVarint(b, st.sentUntil)
		b = binary.AppendUvarint(b, uint64(len(st.source)))
		b = append(b, st.source...)
		b = binary.AppendUvarint(b, uint64(len(baseline)))
		for _, e := range baseline {
			b = appendKey(b, e.key)
			b = binary.AppendUvarint(b, e.newFlows)
		}
		b = binary.AppendUvarint(b, uint64(len(st.pending)))
		for _, p := range st.pending {
			b = appendPending(b, p)
		}
		return b
	})
}

// encodeReport is the record one numbered report appends: the numbers
// reserved, the end of its interval, the reports confirmed so far (they
// need not be sent again), its new flows when it is kept (nil: none) and
// the counters it moved.
func encodeReport(seqLimit uint64, sentUntil int64, confirmed uint64, p *pendingReport, changes []baselineEntry) []byte {
	n := recHeaderLen + 32 + 12*len(changes)
	if p != nil {
		n += 24 + 10*len(p.flows)
	}
	return appendRecord(make([]byte, 0, n), recReport, func(b []byte) []byte {
		b = binary.AppendUvarint(b, seqLimit)
		b = binary.AppendVarint(b, sentUntil)
		b = binary.AppendUvarint(b, confirmed)
		if p == nil {
			b = append(b, 0)
		} else {
			b = append(b, 1)
			b = appendPending(b, p)
		}
		b = binary.AppendUvarint(b, uint64(len(changes)))
		for _, e := range changes {
			b = appendKey(b, e.key)
			b = binary.AppendUvarint(b, e.newFlows)
		}
		return b
	})
}

// reader decodes a record's payload; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrJournalCorrupt}, args...)...)
	}
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u32() uint32 {
	v := r.uvarint()
	if v > math.MaxUint32 {
		r.fail("ID %d out of range", v)
	}
	return uint32(v)
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail("cut short")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail("cut short")
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// count reads a number of items each at least min bytes long: never more
// than the payload can hold, so a corrupt count cannot allocate much.
func (r *reader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) {
		r.fail("count %d beyond the record", n)
		return 0
	}
	return int(n)
}

func (r *reader) key() accessKey {
	return accessKey{resource: r.u32(), region: r.u32(), mirror: r.u32()}
}

func (r *reader) pending() *pendingReport {
	p := &pendingReport{seq: r.uvarint(), start: r.varint(), end: r.varint(), sent: true}
	n := r.count(3)
	p.flows = make([]flowCount, 0, n)
	for range n {
		f := flowCount{resource: r.u32(), region: r.u32(), newFlows: r.uvarint()}
		if f.newFlows == 0 {
			r.fail("report %d: a count without new flows", p.seq)
		}
		p.flows = append(p.flows, f)
	}
	if r.err == nil && (p.seq == 0 || len(p.flows) == 0) {
		r.fail("report %d without number or counts", p.seq)
	}
	return p
}

// decodeJournal reads a journal. A last record cut short (a crash while
// it was appended: its report was never sent) is left out and reported
// as torn; anything else wrong refuses the whole journal.
func decodeJournal(b []byte) (st *journalState, torn bool, err error) {
	if len(b) < journalHeaderLen || string(b[:len(journalMagic)]) != string(journalMagic) {
		return nil, false, fmt.Errorf("%w: no journal header", ErrJournalCorrupt)
	}
	if v := binary.BigEndian.Uint32(b[len(journalMagic):]); v != journalVersion {
		return nil, false, fmt.Errorf("%w: version %d, this build reads %d", ErrJournalVersion, v, journalVersion)
	}
	b = b[journalHeaderLen:]
	for first := true; len(b) > 0; first = false {
		if len(b) < recHeaderLen {
			if first {
				return nil, false, fmt.Errorf("%w: snapshot cut short", ErrJournalCorrupt)
			}
			return st, true, nil
		}
		n := binary.BigEndian.Uint32(b)
		if n > maxJournalRecord {
			return nil, false, fmt.Errorf("%w: record of %d bytes", ErrJournalCorrupt, n)
		}
		if uint64(len(b)) < recHeaderLen+uint64(n) {
			if first {
				return nil, false, fmt.Errorf("%w: snapshot cut short", ErrJournalCorrupt)
			}
			return st, true, nil
		}
		rec := b[8 : recHeaderLen+n]
		if crc32.Checksum(rec, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
			return nil, false, fmt.Errorf("%w: checksum mismatch", ErrJournalCorrupt)
		}
		b = b[recHeaderLen+n:]
		r := &reader{b: rec[1:]}
		switch typ := rec[0]; {
		case first && typ == recSnapshot:
			st = r.snapshot()
		case !first && typ == recReport:
			r.report(st)
		default:
			return nil, false, fmt.Errorf("%w: record type %d where it cannot be", ErrJournalCorrupt, typ)
		}
		if r.err == nil && len(r.b) > 0 {
			r.fail("%d bytes after a record's end", len(r.b))
		}
		if r.err != nil {
			return nil, false, r.err
		}
	}
	if st == nil {
		return nil, false, fmt.Errorf("%w: no snapshot", ErrJournalCorrupt)
	}
	return st, false, nil
}

func (r *reader) snapshot() *journalState {
	st := &journalState{runID: r.u64(), seqLimit: r.uvarint(), sentUntil: r.varint(), baseline: map[accessKey]uint64{}}
	if n := r.count(1); n > maxSourceLen {
		r.fail("counter source of %d bytes", n)
	} else if r.err == nil {
		st.source, r.b = string(r.b[:n]), r.b[n:]
	}
	for range r.count(4) {
		k, v := r.key(), r.uvarint()
		st.baseline[k] = v
	}
	n := r.count(4)
	for range n {
		r.addPending(st, r.pending())
	}
	if r.err == nil && st.runID == 0 {
		r.fail("no run")
	}
	return st
}

func (r *reader) report(st *journalState) {
	limit, until, confirmed := r.uvarint(), r.varint(), r.uvarint()
	if r.err == nil && (limit < st.seqLimit || confirmed > limit) {
		r.fail("numbers reserved went down from %d to %d, or %d confirmed above them", st.seqLimit, limit, confirmed)
	}
	st.seqLimit, st.sentUntil = limit, until
	for len(st.pending) > 0 && st.pending[0].seq <= confirmed {
		st.pending = st.pending[1:]
	}
	if r.byte() == 1 {
		r.addPending(st, r.pending())
	}
	for range r.count(4) {
		k, v := r.key(), r.uvarint()
		if v == 0 {
			delete(st.baseline, k)
		} else {
			st.baseline[k] = v
		}
	}
}

// addPending appends p, whose number must be above the others and within
// the numbers reserved.
func (r *reader) addPending(st *journalState, p *pendingReport) {
	if r.err != nil {
		return
	}
	if p.seq > st.seqLimit || len(st.pending) > 0 && p.seq <= st.pending[len(st.pending)-1].seq {
		r.fail("report %d out of order (reserved through %d)", p.seq, st.seqLimit)
		return
	}
	st.pending = append(st.pending, p)
}

// journalFile is the journal on disk, locked by this process.
type journalFile struct {
	path string
	lock *os.File // <path>.lock, flocked while the process uses the journal
	f    *os.File // the journal, opened to append; nil when none is valid
}

// openJournal locks path (errJournalLocked: another process has it) and
// reads it: (nil, false, nil) when there is none; a journal that cannot be
// applied is moved to <path>.corrupt and returned as the error.
func openJournal(path string) (j *journalFile, st *journalState, torn bool, err error) {
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, false, fmt.Errorf("open access journal lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, false, fmt.Errorf("%w (%s.lock)", errJournalLocked, path)
		}
		return nil, nil, false, fmt.Errorf("lock access journal: %w", err)
	}
	j = &journalFile{path: path, lock: lock}
	// Snapshots a killed process did not finish would stay for good.
	atomicfile.RemoveLeftovers(path)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return j, nil, false, nil
	case err != nil:
		// Never applied either: out of the way of the next journal too.
		err = fmt.Errorf("read access journal: %w", err)
		if rerr := os.Rename(path, path+".corrupt"); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return j, nil, false, err
	}
	st, torn, err = decodeJournal(b)
	if err != nil {
		// Kept for a look, out of the way of the next journal.
		if rerr := os.Rename(path, path+".corrupt"); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return j, nil, false, fmt.Errorf("access journal %s: %w", path, err)
	}
	return j, st, torn, nil
}

// writeSnapshot replaces the journal with b atomically and reopens it to
// append.
func (j *journalFile) writeSnapshot(b []byte) error {
	j.closeAppend()
	if err := atomicfile.Write(j.path, 0o600, b); err != nil {
		return err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open access journal: %w", err)
	}
	j.f = f
	return nil
}

// appendRecord appends b and syncs it; a failure may leave part of it,
// so the caller removes the journal.
func (j *journalFile) appendRecord(b []byte) error {
	if j.f == nil {
		return errors.New("access journal: no snapshot to append to")
	}
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("append to access journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("sync access journal: %w", err)
	}
	return nil
}

// remove deletes the journal, durably: a restart must not apply a
// journal that no longer says what was sent.
func (j *journalFile) remove() error {
	j.closeAppend()
	if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove access journal: %w", err)
	}
	d, err := os.Open(filepath.Dir(j.path))
	if err != nil {
		return fmt.Errorf("remove access journal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("remove access journal: %w", err)
	}
	return nil
}

func (j *journalFile) closeAppend() {
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

// close releases the journal and its lock.
func (j *journalFile) close() error {
	j.closeAppend()
	return j.lock.Close() // releases the flock
}
