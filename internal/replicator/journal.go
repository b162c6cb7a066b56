package replicator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// The mirror journal makes a delta cycle atomic. Blocks of a cycle are
// appended to the journal (never to the image) and synced before they are
// acknowledged; the sender then asks for a commit, the mirror appends a
// commit record, syncs it and acknowledges the commit, applies the cycle
// to the image in place, syncs the image and metadata, records the cycle
// number, and only then empties the journal. Recovery applies a committed
// cycle again (applying is idempotent) and ignores an uncommitted one, so
// after a crash at any point the image is the previous cycle's or the new
// one's. Without a crash, a committed cycle whose apply failed stays until
// a retry applies it (session.settle); begin refuses to follow it.
//
// Staged blocks of an uncommitted cycle stay in the journal: when the
// sender retries, it learns from the Need answer that the mirror already
// holds them and does not send them again.
//
// Record: [crc32c u32][kind u8][0 0 0][len u32][payload]; the checksum
// covers everything after itself. A torn record ends the journal (it was
// never acknowledged): appends only ever tear at the tail. A damaged
// record with a valid one after it is not a torn tail but data that
// changed after it was synced, and what follows it may have been
// acknowledged: that is errJournalDamaged, never a silent cut.

const (
	recBegin    = 1 // cycle u64, epoch u64, lineage [16], entries u64, flags u8
	recManifest = 2 // count u32, entries of 35 bytes
	recData     = 3 // block u64, version, sum u64, data (empty: zeros)
	recCommit   = 4 // cycle u64, entries u64, digest u64
	recHeader   = 12

	// Payload lengths, for replay and for validRecordAfter.
	recBeginLen    = 41
	recManifestEnt = 35 // a manifest is 4 + recManifestEnt·count
	recDataHdr     = 32 // then the block's data (none for zeros)
	recCommitLen   = 24
)

// Where a cycle entry's data comes from at apply time.
const (
	srcNeed   = 1 // the sender sends it; staged in the journal
	srcStaged = 2 // already staged by an earlier attempt
	srcImage  = 3 // the image already holds this version
	srcAdopt  = 4 // the image holds the same bytes; adopt the version
	srcAbsent = 5 // a selective mirror does not hold the block; skip
)

type stagedBlock struct {
	ver  Version
	off  int64 // offset of the data in the journal
	n    int   // data length (0: zeros)
	sum  uint64
	zero bool
}

type jentry struct {
	wire.ManifestEntry
	src  uint8
	have bool // data staged (srcNeed entries, once received)
}

// jcycle is the cycle being received or replayed.
type jcycle struct {
	cycle, epoch uint64
	lineage      [16]byte
	entries      uint64
	flags        uint8
	manifest     []jentry
	index        map[uint64]int // block → manifest position
	digest       *xxhash.Digest
	missing      int // srcNeed entries not yet staged
	committed    bool
	// asOf is when the sender's snapshot of the cycle was taken, on this
	// node's clock (see recvCycle); zero for a cycle replayed from the
	// journal after a crash, whose time was not recorded.
	asOf time.Time
}

type journal struct {
	f      *os.File
	path   string
	size   int64
	staged map[uint64]stagedBlock
	cur    *jcycle
	buf    []byte
	dirty  bool // appended since the last sync
}

func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioError("open "+path, err)
	}
	j := &journal{f: f, path: path, staged: map[uint64]stagedBlock{}}
	if err := j.scan(); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// errJournalDamaged: a journal record is damaged and valid records follow
// it (see the record format above).
var errJournalDamaged = fmt.Errorf("%w: journal damaged before its tail", ErrCorrupt)

// errStagedDamaged: a staged block fails its checksum, or a block a
// committed cycle needs is not staged: data already acknowledged is gone.
var errStagedDamaged = fmt.Errorf("%w: staged data damaged", ErrCorrupt)

// journalDamaged reports whether err says a journal lost acknowledged
// data: a mirror then needs a full copy (resyncAfterDamage).
func journalDamaged(err error) bool {
	return errors.Is(err, errJournalDamaged) || errors.Is(err, errStagedDamaged)
}

// scan rebuilds the staged index and the last cycle from the file and cuts
// off a torn tail.
func (j *journal) scan() error {
	var off int64
	hdr := make([]byte, recHeader)
	defer func() { j.size = off }()
	for {
		if _, err := j.f.ReadAt(hdr, off); err != nil {
			break
		}
		n := int64(binary.LittleEndian.Uint32(hdr[8:]))
		if n > 64<<20 {
			break
		}
		rec := make([]byte, recHeader+n)
		if _, err := j.f.ReadAt(rec, off); err != nil {
			break
		}
		if crc32.Checksum(rec[4:], castagnoli) != binary.LittleEndian.Uint32(rec) {
			break
		}
		if err := j.replayRecord(rec[4], rec[recHeader:], off+recHeader); err != nil {
			break
		}
		off += recHeader + n
	}
	if at, ok, err := j.validRecordAfter(off); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%w: %s: the record at offset %d is damaged and a valid one follows at %d", errJournalDamaged, j.path, off, at)
	}
	if err := j.f.Truncate(off); err != nil {
		return ioError("truncate "+j.path, err)
	}
	return nil
}

// validRecordAfter looks past the end of the valid records, off, for a
// record that checks out: a kind, zero padding, a length that kind can
// have, and its checksum. Data records hold at most wire.MaxBlockSize.
func (j *journal) validRecordAfter(off int64) (int64, bool, error) {
	st, err := j.f.Stat()
	if err != nil {
		return 0, false, ioError("stat "+j.path, err)
	}
	size := st.Size()
	const window = 1 << 20
	buf := make([]byte, window+recHeader+4)
	for base := off + 1; base+recHeader <= size; base += window {
		n, err := j.f.ReadAt(buf[:min(int64(len(buf)), size-base)], base)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, false, ioError("read "+j.path, err)
		}
		for i := 0; i < min(n, window) && i+recHeader <= n; i++ {
			h := buf[i:]
			kind, l := h[4], int64(binary.LittleEndian.Uint32(h[8:]))
			if kind < recBegin || kind > recCommit || h[5]|h[6]|h[7] != 0 || base+int64(i)+recHeader+l > size {
				continue
			}
			switch kind {
			case recBegin:
				if l != recBeginLen {
					continue
				}
			case recCommit:
				if l != recCommitLen {
					continue
				}
			case recData:
				if l < recDataHdr || l > recDataHdr+wire.MaxBlockSize {
					continue
				}
			case recManifest:
				if i+recHeader+4 > n || l != 4+recManifestEnt*int64(binary.LittleEndian.Uint32(h[recHeader:])) || l > 64<<20 {
					continue
				}
			}
			rec := make([]byte, recHeader+l)
			if _, err := j.f.ReadAt(rec, base+int64(i)); err != nil {
				return 0, false, ioError("read "+j.path, err)
			}
			if crc32.Checksum(rec[4:], castagnoli) == binary.LittleEndian.Uint32(rec) {
				return base + int64(i), true, nil
			}
		}
	}
	return 0, false, nil
}

func (j *journal) replayRecord(kind byte, p []byte, dataOff int64) error {
	switch kind {
	case recBegin:
		if len(p) != recBeginLen {
			return errors.New("bad begin")
		}
		c := &jcycle{cycle: binary.LittleEndian.Uint64(p), epoch: binary.LittleEndian.Uint64(p[8:]),
			entries: binary.LittleEndian.Uint64(p[32:]), flags: p[40], index: map[uint64]int{}, digest: xxhash.New()}
		copy(c.lineage[:], p[16:32])
		j.cur = c
	case recManifest:
		if j.cur == nil || len(p) < 4 {
			return errors.New("manifest without begin")
		}
		n := int(binary.LittleEndian.Uint32(p))
		if len(p) != 4+recManifestEnt*n {
			return errors.New("bad manifest")
		}
		for i := 0; i < n; i++ {
			q := p[4+recManifestEnt*i:]
			e := jentry{ManifestEntry: wire.ManifestEntry{Block: binary.LittleEndian.Uint64(q), Version: getVer(q[8:]),
				Flags: q[24], Hash: binary.LittleEndian.Uint64(q[25:])}, src: q[33]}
			j.cur.add(e)
		}
	case recData:
		if len(p) < recDataHdr {
			return errors.New("bad data")
		}
		b := binary.LittleEndian.Uint64(p)
		sb := stagedBlock{ver: getVer(p[8:]), sum: binary.LittleEndian.Uint64(p[24:]), off: dataOff + recDataHdr, n: len(p) - recDataHdr}
		sb.zero = sb.n == 0
		if old, ok := j.staged[b]; !ok || !sb.ver.Less(old.ver) {
			j.staged[b] = sb
		}
		if j.cur != nil {
			j.cur.received(b, sb.ver)
		}
	case recCommit:
		if j.cur == nil || len(p) != recCommitLen {
			return errors.New("commit without begin")
		}
		if binary.LittleEndian.Uint64(p) == j.cur.cycle && j.cur.missing == 0 {
			j.cur.committed = true
		}
	default:
		return fmt.Errorf("unknown record %d", kind)
	}
	return nil
}

func (c *jcycle) add(e jentry) {
	c.index[e.Block] = len(c.manifest)
	if e.src == srcNeed {
		c.missing++
	}
	c.manifest = append(c.manifest, e)
	digestEntry(c.digest, e.ManifestEntry)
}

func (c *jcycle) received(b uint64, v Version) {
	i, ok := c.index[b]
	if !ok {
		return
	}
	e := &c.manifest[i]
	if e.src == srcNeed && !e.have && e.Version == v {
		e.have = true
		c.missing--
	}
}

// digestEntry feeds one manifest entry to the cycle digest both sides
// compute; the commit carries the sender's so a lost or altered manifest
// chunk cannot commit.
func digestEntry(d *xxhash.Digest, e wire.ManifestEntry) {
	var b [33]byte
	binary.LittleEndian.PutUint64(b[0:], e.Block)
	copy(b[8:24], putVer(nil, e.Version))
	b[24] = e.Flags
	binary.LittleEndian.PutUint64(b[25:], e.Hash)
	d.Write(b[:])
}

func (j *journal) append(kind byte, payload []byte) error {
	rec := j.buf[:0]
	rec = append(rec, 0, 0, 0, 0, kind, 0, 0, 0)
	rec = binary.LittleEndian.AppendUint32(rec, uint32(len(payload)))
	rec = append(rec, payload...)
	binary.LittleEndian.PutUint32(rec, crc32.Checksum(rec[4:], castagnoli))
	j.buf = rec
	if _, err := j.f.WriteAt(rec, j.size); err != nil {
		// Cut off whatever part was written so the journal stays scannable.
		j.f.Truncate(j.size)
		return ioError("write journal "+j.path, err)
	}
	j.size += int64(len(rec))
	j.dirty = true
	return nil
}

func (j *journal) sync() error {
	if !j.dirty {
		return nil
	}
	if err := fdatasync(j.f); err != nil {
		return ioError("sync journal "+j.path, err)
	}
	j.dirty = false
	return nil
}

func (j *journal) begin(c *jcycle) error {
	if j.cur != nil && j.cur.committed {
		// Its commit was acknowledged: once the begin record follows it,
		// neither recovery nor a retry would apply it, and the source
		// will not send it again.
		return fmt.Errorf("%w: cycle %d is committed and not applied yet; cycle %d cannot begin", ErrInconsistent, j.cur.cycle, c.cycle)
	}
	p := make([]byte, 0, recBeginLen)
	p = binary.LittleEndian.AppendUint64(p, c.cycle)
	p = binary.LittleEndian.AppendUint64(p, c.epoch)
	p = append(p, c.lineage[:]...)
	p = binary.LittleEndian.AppendUint64(p, c.entries)
	p = append(p, c.flags)
	if err := j.append(recBegin, p); err != nil {
		return err
	}
	j.cur = c
	return nil
}

func (j *journal) manifest(es []jentry) error {
	p := make([]byte, 0, 4+recManifestEnt*len(es))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(es)))
	for _, e := range es {
		p = binary.LittleEndian.AppendUint64(p, e.Block)
		p = putVer(p, e.Version)
		p = append(p, e.Flags)
		p = binary.LittleEndian.AppendUint64(p, e.Hash)
		p = append(p, e.src, 0)
	}
	if err := j.append(recManifest, p); err != nil {
		return err
	}
	for _, e := range es {
		j.cur.add(e)
	}
	return nil
}

// stage appends verified blocks (data nil: zeros) in one write.
func (j *journal) stage(blocks []recvItem, sums []uint64) error {
	start := j.size
	batch := j.buf[:0]
	offs := make([]int64, len(blocks))
	for i, it := range blocks {
		p := make([]byte, 0, recDataHdr)
		p = binary.LittleEndian.AppendUint64(p, it.block)
		p = putVer(p, it.ver)
		p = binary.LittleEndian.AppendUint64(p, sums[i])
		recStart := len(batch)
		batch = append(batch, 0, 0, 0, 0, recData, 0, 0, 0)
		batch = binary.LittleEndian.AppendUint32(batch, uint32(recDataHdr+len(it.data)))
		batch = append(batch, p...)
		batch = append(batch, it.data...)
		binary.LittleEndian.PutUint32(batch[recStart:], crc32.Checksum(batch[recStart+4:], castagnoli))
		offs[i] = start + int64(recStart) + recHeader + recDataHdr
	}
	j.buf = batch
	if _, err := j.f.WriteAt(batch, start); err != nil {
		j.f.Truncate(start)
		return ioError("write journal "+j.path, err)
	}
	j.size += int64(len(batch))
	j.dirty = true
	for i, it := range blocks {
		if old, ok := j.staged[it.block]; !ok || !it.ver.Less(old.ver) {
			j.staged[it.block] = stagedBlock{ver: it.ver, off: offs[i], n: len(it.data), sum: sums[i], zero: it.data == nil}
		}
		if j.cur != nil {
			j.cur.received(it.block, it.ver)
		}
	}
	return nil
}

func (j *journal) commit(cycle, entries, digest uint64) error {
	p := binary.LittleEndian.AppendUint64(nil, cycle)
	p = binary.LittleEndian.AppendUint64(p, entries)
	p = binary.LittleEndian.AppendUint64(p, digest)
	if err := j.append(recCommit, p); err != nil {
		return err
	}
	if err := j.sync(); err != nil {
		return err
	}
	j.cur.committed = true
	return nil
}

// read returns a staged block's data, checked against its checksum so a
// journal corrupted on disk is never applied.
func (j *journal) read(b uint64, sb stagedBlock, bs int, dst []byte) ([]byte, error) {
	if sb.zero {
		clear(dst[:bs])
		return dst[:bs], nil
	}
	if sb.n != bs {
		return nil, fmt.Errorf("journal %s: %w: block %d has %d bytes", j.path, errStagedDamaged, b, sb.n)
	}
	if _, err := j.f.ReadAt(dst[:bs], sb.off); err != nil {
		return nil, ioError("read journal "+j.path, err)
	}
	if xxhash.Sum64(dst[:bs]) != sb.sum {
		return nil, fmt.Errorf("journal %s: %w: block %d checksum mismatch", j.path, errStagedDamaged, b)
	}
	return dst[:bs], nil
}

// openExistingJournal opens a journal for recovery; nil when there is none.
func openExistingJournal(path string) (*journal, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return openJournal(path)
}

// reset empties the journal.
func (j *journal) reset() error {
	if err := j.f.Truncate(0); err != nil {
		return ioError("truncate "+j.path, err)
	}
	// The file is empty now, synced or not: the index must say so, or the
	// next append would leave a hole that reads as damage.
	j.size = 0
	j.staged = map[uint64]stagedBlock{}
	j.cur = nil
	j.dirty = false
	if err := fdatasync(j.f); err != nil {
		return ioError("sync "+j.path, err)
	}
	return nil
}

func (j *journal) Close() error { return j.f.Close() }

// journalPath and syncLogPath name the two journals of a volume.
func journalPath(metaDir string) string { return filepath.Join(metaDir, "journal") }
func syncLogPath(metaDir string) string { return filepath.Join(metaDir, "syncwal") }

// replayJournal applies a committed cycle left by a crash.
func (v *Volume) replayJournal() error {
	j, err := openExistingJournal(journalPath(v.metaDir))
	if j == nil || err != nil {
		return err
	}
	defer j.Close()
	if j.cur == nil || !j.cur.committed {
		return nil
	}
	v.log.Info("replaying committed cycle after a crash", "cycle", j.cur.cycle)
	return v.applyCycle(j, j.cur)
}

// applyCycle applies a committed cycle to the image, records it and
// empties the journal.
func (v *Volume) applyCycle(j *journal, c *jcycle) error {
	buf := make([]byte, v.bs)
	var items []recvItem
	for _, e := range c.manifest {
		switch e.src {
		case srcNeed, srcStaged:
			sb, ok := j.staged[e.Block]
			if !ok || sb.ver != e.Version {
				return fmt.Errorf("cycle %d: %w: block %d version %s not staged", c.cycle, errStagedDamaged, e.Block, e.Version)
			}
			data, err := j.read(e.Block, sb, v.bs, buf)
			if err != nil {
				return err
			}
			it := recvItem{block: e.Block, ver: e.Version, force: e.Flags&wire.ManifestForce != 0, epoch: uint32(c.epoch)}
			if !sb.zero {
				it.data = append([]byte(nil), data...)
			}
			items = append(items, it)
		case srcAdopt:
			items = append(items, recvItem{block: e.Block, ver: e.Version, adopt: true, epoch: uint32(c.epoch)})
		}
	}
	v.io.Lock()
	err := v.applyLocked(items, false)
	if err != nil {
		// The image may hold part of the cycle now: refuse reads before
		// releasing it (session.applyAcked keeps the mark or replaces it).
		v.setUnapplied(c.cycle)
	}
	v.io.Unlock()
	if err != nil {
		return err
	}
	if err := v.updateState(func(st *volState) {
		st.Cycle = c.cycle
		st.Inconsistent = false
		st.Empty = false
		st.SourceLineage = lineageString(c.lineage)
		// A repair cycle carries only the blocks verify found different,
		// not the writes since the last cycle, so it does not make the
		// copy any fresher. A replayed cycle has no time: keeping the
		// previous one overstates the lag, which errs on the safe side.
		if !c.asOf.IsZero() && c.flags&wire.CycleRepair == 0 {
			st.CycleAsOf = c.asOf.UnixNano()
		}
	}); err != nil {
		return err
	}
	if err := v.Flush(); err != nil {
		return err
	}
	return j.reset()
}
