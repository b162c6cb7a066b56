package replicator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/premirror/premirror/internal/atomicfile"
)

// DefaultBlockSize is the block size of new volumes.
const DefaultBlockSize = 4096

// alExtentBlocks is the activity-log granularity: 1024 blocks (4 MiB at
// the default block size), DRBD's al-extent size. Larger extents mean
// fewer activity-log syncs on scattered writes but more blocks to probe
// after a crash.
const alExtentBlocks = 1024

// VolumeOptions configure OpenVolume.
type VolumeOptions struct {
	// Name identifies the volume in logs, metrics and sessions.
	Name string
	// MetaDir holds the volume's metadata; default "<image>.pmr".
	MetaDir string
	// Init makes OpenVolume initialize an image without metadata as a
	// primary volume (epoch 1) instead of failing.
	Init bool
	// BlockSize is used by Init; default DefaultBlockSize.
	BlockSize int
	// Size, with Init, creates the image with this many bytes when it does
	// not exist.
	Size int64
	// Clock stamps local writes; default a clock for site 1.
	Clock *Clock
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Volume is a block image (regular file or block device) with
// replication metadata: block versions, per-peer dirty bitmaps guarded by
// an activity log, and mirror state. Methods are safe for concurrent use.
type Volume struct {
	name    string
	path    string
	metaDir string
	log     *slog.Logger
	clock   *Clock
	f       *os.File
	lockf   *os.File
	bs      int
	blocks  uint64 // logical size
	capBlks uint64 // image capacity
	device  bool
	// lastAheadLog (Unix ns) rate-limits warnAhead.
	lastAheadLog atomic.Int64

	// io orders data against metadata: writers and cycle applies hold it
	// exclusively, readers and snapshot reads share it, and Flush takes it
	// exclusively for the instant it copies metadata so the copy matches
	// the data.
	io sync.RWMutex
	// flushMu serializes flushes.
	flushMu sync.Mutex
	// runBuf coalesces received blocks into one write; used under io.
	runBuf []byte

	// mu guards the fields below.
	mu        sync.Mutex
	st        volState
	vers      []byte // 16 bytes per block, file format
	verPages  pageSet
	verFile   *pagedFile
	peers     map[string]*peerBits
	al        *activityLog
	snaps     []*snapshot
	present   *Bitmap // selective mirrors; nil when every block is held
	presPages pageSet
	presFile  *pagedFile
	heat      *heatMap
	conflicts *conflictLog
	closed    bool
	suspect   uint64 // blocks marked for probing by the last recovery
	// unapplied is a cycle this mirror acknowledged whose apply failed
	// (0: none). It stays committed in the journal and is applied again
	// before the next changing session (session.settle); until then the
	// copy counts as inconsistent. Not persisted: after a crash, recovery
	// applies the committed cycle anyway.
	unapplied uint64
}

// Status is a snapshot of a volume's state for status output.
type Status struct {
	Name          string            `json:"name"`
	Path          string            `json:"path"`
	Role          Role              `json:"role"`
	Epoch         uint64            `json:"epoch"`
	Fenced        bool              `json:"fenced,omitempty"`
	BlockSize     int               `json:"block_size"`
	Blocks        uint64            `json:"blocks"`
	Lineage       string            `json:"lineage"`
	SourceLineage string            `json:"source_lineage,omitempty"`
	Cycle         uint64            `json:"cycle"`
	Inconsistent  bool              `json:"inconsistent,omitempty"`
	Empty         bool              `json:"empty,omitempty"`
	FullActive    bool              `json:"full_active,omitempty"`
	FullNext      uint64            `json:"full_next,omitempty"`
	Selective     bool              `json:"selective,omitempty"`
	PresentBlocks uint64            `json:"present_blocks,omitempty"`
	Dirty         map[string]uint64 `json:"dirty,omitempty"` // peer → dirty blocks
	Conflicts     uint64            `json:"conflicts,omitempty"`
	// Upstream is the peer a selective mirror reads the blocks it lacks
	// through from (Node.Status only).
	Upstream string `json:"upstream,omitempty"`
	// Complete reports that the volume holds a whole, consistent copy:
	// something was received, no full copy is partial or in progress, the
	// delta cycle that must follow every copy has committed, and it is not
	// selective. A primary is complete; a mirror only then serves reads
	// and may be routed to.
	Complete bool `json:"complete"`
	// CycleAsOf is when the data of the newest cycle a mirror applied was
	// current at its source, on this node's clock; zero before the first
	// cycle (and for primaries).
	CycleAsOf time.Time `json:"cycle_as_of,omitzero"`
	// Lag is how far a mirror trails its source: the time of Status minus
	// CycleAsOf. It grows between cycles and drops when one applies, so
	// it is bounded by the cycle interval plus a cycle's duration while
	// replication keeps up. Zero while CycleAsOf is zero.
	Lag time.Duration `json:"lag_ns,omitempty"`
}

var peerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// OpenVolume opens the image at path with its metadata, recovering from an
// unclean shutdown: a committed but unapplied cycle is applied, an
// uncommitted one kept only as staged data, and every block of an extent
// active at the crash is marked dirty (and to be probed) for every peer.
func OpenVolume(path string, o VolumeOptions) (*Volume, error) {
	if o.MetaDir == "" {
		o.MetaDir = path + ".pmr"
	}
	if o.Name == "" {
		o.Name = filepath.Base(path)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = NewClock(1)
	}
	st, err := loadState(o.MetaDir)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist) && o.Init:
		st, err = initPrimary(path, o)
		if err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("volume %s: no metadata in %s (initialize it first): %w", o.Name, o.MetaDir, ErrUnknownVolume)
	default:
		return nil, ioError("volume "+o.Name, err)
	}
	return openWithState(path, o, st)
}

// initPrimary creates (if asked) the image and the metadata of a primary.
func initPrimary(path string, o VolumeOptions) (volState, error) {
	bs := o.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if err := checkBlockSize(bs); err != nil {
		return volState{}, err
	}
	if o.Size > 0 {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			if o.Size%int64(bs) != 0 {
				return volState{}, fmt.Errorf("size %d: %w: not a multiple of the block size %d", o.Size, ErrGeometry, bs)
			}
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return volState{}, ioError("create "+path, err)
			}
			err = f.Truncate(o.Size)
			f.Close()
			if err != nil {
				return volState{}, ioError("size "+path, err)
			}
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return volState{}, ioError("open "+path, err)
	}
	size, err := fileSize(f)
	f.Close()
	if err != nil {
		return volState{}, ioError("size "+path, err)
	}
	if size == 0 || size%int64(bs) != 0 {
		return volState{}, fmt.Errorf("image %s: %w: %d bytes is not a positive multiple of the block size %d", path, ErrGeometry, size, bs)
	}
	if err := os.MkdirAll(o.MetaDir, 0o700); err != nil {
		return volState{}, ioError("create "+o.MetaDir, err)
	}
	st := volState{Lineage: newLineage(), BlockSize: bs, Blocks: uint64(size) / uint64(bs), Role: RolePrimary, Epoch: 1}
	return st, saveState(o.MetaDir, st)
}

func checkBlockSize(bs int) error {
	if bs < 512 || bs > 64<<10 || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d: %w: want a power of two in 512..65536", bs, ErrGeometry)
	}
	return nil
}

// checkGeometry checks a source's geometry as a peer announces it: a
// valid block size and a size of at least one block whose byte count an
// int64 (file offsets) holds.
func checkGeometry(bs int, blocks uint64) error {
	if err := checkBlockSize(bs); err != nil {
		return err
	}
	if blocks == 0 || blocks > math.MaxInt64/uint64(bs) {
		return fmt.Errorf("source of %d blocks of %d bytes: %w: want 1..%d blocks", blocks, bs, ErrGeometry, math.MaxInt64/uint64(bs))
	}
	return nil
}

// createMirror creates the image (when missing) and metadata of an empty
// mirror volume for a source of the given geometry.
func createMirror(path string, o VolumeOptions, bs int, blocks uint64) (*Volume, error) {
	if err := checkGeometry(bs, blocks); err != nil {
		return nil, err
	}
	if o.MetaDir == "" {
		o.MetaDir = path + ".pmr"
	}
	want := int64(blocks) * int64(bs)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioError("create mirror image "+path, err)
	}
	size, err := fileSize(f)
	zeroImage := false
	if err == nil && size == 0 && !isDevice(f) {
		// A sparse image takes any size, but its metadata (16 bytes a
		// block) and bitmaps do not: a source larger than the whole
		// filesystem cannot be mirrored here, and a Hello claiming one
		// must not make this node allocate for it.
		if fs := fsBytes(f); fs > 0 && want > fs {
			f.Close()
			return nil, fmt.Errorf("mirror %s: %w: source has %d bytes, more than the whole filesystem holding it (%d)", path, ErrNoSpace, want, fs)
		}
		err = f.Truncate(want)
		size = want
		zeroImage = true
	}
	f.Close()
	if err != nil {
		return nil, ioError("size "+path, err)
	}
	if size < want {
		return nil, fmt.Errorf("mirror %s: %w: %d bytes, source has %d", path, ErrMirrorTooSmall, size, want)
	}
	if err := os.MkdirAll(o.MetaDir, 0o700); err != nil {
		return nil, ioError("create "+o.MetaDir, err)
	}
	st := volState{Lineage: newLineage(), BlockSize: bs, Blocks: blocks, Role: RoleMirror, Inconsistent: true, Empty: true, ZeroImage: zeroImage}
	if err := saveState(o.MetaDir, st); err != nil {
		return nil, err
	}
	return OpenVolume(path, o)
}

func openWithState(path string, o VolumeOptions, st volState) (_ *Volume, err error) {
	if err := checkBlockSize(st.BlockSize); err != nil {
		return nil, err
	}
	v := &Volume{name: o.Name, path: path, metaDir: o.MetaDir, log: o.Logger.With("volume", o.Name),
		clock: o.Clock, bs: st.BlockSize, blocks: st.Blocks, st: st, peers: map[string]*peerBits{}}
	defer func() {
		if err != nil {
			v.closeFiles()
		}
	}()
	v.lockf, err = os.OpenFile(filepath.Join(o.MetaDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioError("open lock", err)
	}
	if err := lockFile(v.lockf); err != nil {
		return nil, fmt.Errorf("volume %s: %w: metadata %s is locked by another process", o.Name, ErrBusy, o.MetaDir)
	}
	removeStaleSnapshots(o.MetaDir)
	// The lock makes this process the state file's only writer: a killed
	// one's unfinished replacements are garbage.
	atomicfile.RemoveLeftovers(filepath.Join(o.MetaDir, stateFile))
	v.f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, ioError("open image "+path, err)
	}
	v.device = isDevice(v.f)
	size, err := fileSize(v.f)
	if err != nil {
		return nil, ioError("size "+path, err)
	}
	v.capBlks = uint64(size) / uint64(v.bs)
	if v.capBlks < v.blocks {
		return nil, fmt.Errorf("image %s: %w: %d bytes, volume needs %d", path, ErrMirrorTooSmall, size, v.blocks*uint64(v.bs))
	}
	verBytes := v.blocks * 16
	v.verFile, v.vers, err = openPaged(filepath.Join(o.MetaDir, "versions"), "PMVR", verBytes, true)
	if err != nil {
		return nil, err
	}
	v.verPages = newPageSet(verBytes)
	if v.al, err = openActivityLog(filepath.Join(o.MetaDir, "al"), (v.blocks+alExtentBlocks-1)/alExtentBlocks); err != nil {
		return nil, err
	}
	for _, p := range st.Peers {
		pb, err := openPeerBits(o.MetaDir, p, v.blocks)
		if err != nil {
			return nil, err
		}
		v.peers[p] = pb
	}
	if st.Selective {
		if err := v.openPresent(); err != nil {
			return nil, err
		}
	}
	v.heat = newHeatMap(v.blocks)
	if v.conflicts, err = openConflictLog(filepath.Join(o.MetaDir, "conflicts.log")); err != nil {
		return nil, err
	}
	if err := v.recover(); err != nil {
		return nil, fmt.Errorf("recover volume %s: %w", o.Name, err)
	}
	return v, nil
}

func (v *Volume) openPresent() error {
	n := (v.blocks + 63) / 64 * 8
	pf, data, err := openPaged(filepath.Join(v.metaDir, "present"), "PMPR", n, true)
	if err != nil {
		return err
	}
	v.presFile = pf
	v.present = NewBitmap(v.blocks)
	bitmapFromBytes(v.present, data)
	v.presPages = newPageSet(n)
	return nil
}

// resyncAfterDamage handles a mirror's journal or sync log that changed
// after it was synced: what it held may have been acknowledged, so the
// copy can no longer vouch for any block. Both logs are emptied and the
// copy marked inconsistent with a full copy to run from block 0, which
// the source starts at its next cycle (WelcomeFullActive); reads are
// refused until it commits. A primary's damaged log is left for the
// operator: nobody holds newer data to copy from.
func (v *Volume) resyncAfterDamage(cause error) error {
	v.log.Error("mirror journal damaged; discarding it and asking the source for a full copy", "err", cause)
	for _, p := range []string{journalPath(v.metaDir), syncLogPath(v.metaDir)} {
		if err := os.Truncate(p, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return ioError("truncate "+p, err)
		}
	}
	return v.needFullCopy()
}

// needFullCopy marks the copy inconsistent with a full copy to run from
// block 0. If that cannot be recorded, it is still marked in memory: the
// copy must not serve reads or take delta cycles meanwhile.
//
// A full mirror then refuses reads; a selective one serves the blocks it
// holds (it is a cache), so it forgets them all instead: they may predate
// the lost cycle, whose blocks the source will not send again, and
// reading them through from upstream until the copy brings them is what
// a selective copy just begun does. Forgetting a block is always safe, so
// it comes first and is made durable at once (under flushMu, so that no
// flush in progress writes the old bits back): a crash must not bring the
// blocks back while the copy waits.
func (v *Volume) needFullCopy() error {
	mark := func(st *volState) {
		st.Inconsistent, st.Empty = true, false
		st.FullActive, st.FullNext, st.FullSession = true, 0, 0
	}
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.unapplied = 0 // the full copy replaces whatever it held
	var perr error
	if v.present != nil {
		v.present.ClearAll()
		v.presPages.markAll()
		if perr = v.presFile.writePages(bitmapBytes(nil, v.present.w), v.presPages.take()); perr != nil {
			v.presPages.markAll() // the next flush retries
		}
	}
	err := v.updateStateLocked(mark)
	if err != nil {
		mark(&v.st)
	}
	return errors.Join(perr, err)
}

// setUnapplied records the cycle whose apply failed (0: none).
func (v *Volume) setUnapplied(cycle uint64) {
	v.mu.Lock()
	v.unapplied = cycle
	v.mu.Unlock()
}

func (v *Volume) unappliedCycle() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.unapplied
}

// recover replays the mirror journal and the sync-write log, then turns the
// activity log into dirty and probe bits.
func (v *Volume) recover() error {
	for _, replay := range []func() error{v.replayJournal, v.replaySyncLog} {
		if err := replay(); journalDamaged(err) && v.st.Role == RoleMirror {
			if err := v.resyncAfterDamage(err); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	exts := v.al.active()
	if len(exts) == 0 {
		return nil
	}
	v.mu.Lock()
	var n uint64
	for _, e := range exts {
		lo, hi := e*alExtentBlocks, min((e+1)*alExtentBlocks, v.blocks)
		for b := lo; b < hi; b++ {
			if v.st.Role == RolePrimary {
				// The data may have changed after the last persisted
				// version: give it a version newer than anything shipped.
				v.setVersion(b, v.clock.After(v.st.Epoch, v.version(b)))
			}
			for _, p := range v.peers {
				p.markDirty(b)
				p.markProbe(b)
			}
			n++
		}
	}
	v.suspect = n
	v.mu.Unlock()
	v.log.Warn("unclean shutdown: blocks of active extents marked for probing", "extents", len(exts), "blocks", n)
	return v.Flush()
}

// Name returns the volume name.
func (v *Volume) Name() string { return v.name }

// Path returns the image path.
func (v *Volume) Path() string { return v.path }

// BlockSize returns the block size in bytes.
func (v *Volume) BlockSize() int { return v.bs }

// Blocks returns the volume size in blocks.
func (v *Volume) Blocks() uint64 { return v.blocks }

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return int64(v.blocks) * int64(v.bs) }

// Epoch returns the volume's epoch.
func (v *Volume) Epoch() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.Epoch
}

// Role returns the volume's role.
func (v *Volume) Role() Role {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.Role
}

// Status returns the volume's state.
func (v *Volume) Status() Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := Status{Name: v.name, Path: v.path, Role: v.st.Role, Epoch: v.st.Epoch, Fenced: v.st.Fenced,
		BlockSize: v.bs, Blocks: v.blocks, Lineage: v.st.Lineage, SourceLineage: v.st.SourceLineage,
		Cycle: v.st.Cycle, Inconsistent: v.st.Inconsistent || v.unapplied != 0, Empty: v.st.Empty, FullActive: v.st.FullActive,
		FullNext: v.st.FullNext, Selective: v.st.Selective, Conflicts: v.conflicts.count()}
	s.Complete = !s.Empty && !s.Inconsistent && !s.FullActive && !s.Selective
	if v.st.CycleAsOf != 0 {
		s.CycleAsOf = time.Unix(0, v.st.CycleAsOf)
		// Never negative: the wall clock may have stepped back.
		s.Lag = max(0, time.Since(s.CycleAsOf))
	}
	if v.present != nil {
		s.PresentBlocks = v.present.Count()
	}
	if len(v.peers) > 0 {
		s.Dirty = map[string]uint64{}
		for n, p := range v.peers {
			s.Dirty[n] = p.pending()
		}
	}
	return s
}

func (v *Volume) version(b uint64) Version {
	p := v.vers[b*16:]
	return Version{Epoch: binary.LittleEndian.Uint32(p), Clock: binary.LittleEndian.Uint64(p[4:]), Site: binary.LittleEndian.Uint32(p[12:])}
}

func (v *Volume) setVersion(b uint64, ver Version) {
	p := v.vers[b*16:]
	binary.LittleEndian.PutUint32(p, ver.Epoch)
	binary.LittleEndian.PutUint64(p[4:], ver.Clock)
	binary.LittleEndian.PutUint32(p[12:], ver.Site)
	v.verPages.mark(b * 16)
}

// Version returns block b's version.
func (v *Volume) Version(b uint64) Version {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.version(b)
}

func (v *Volume) checkRange(off int64, n int) error {
	if off < 0 || n < 0 || off+int64(n) > v.Size() {
		return fmt.Errorf("volume %s: range %d+%d outside %d bytes: %w", v.name, off, n, v.Size(), io.ErrUnexpectedEOF)
	}
	return nil
}

// ReadAt reads len(p) bytes at off. A full mirror whose first copy is
// incomplete refuses with ErrInconsistent, and a block a selective mirror
// does not hold is ErrInconsistent too (Node.Read fetches it from
// upstream instead).
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	if err := v.checkRange(off, len(p)); err != nil {
		return 0, err
	}
	v.io.RLock()
	defer v.io.RUnlock()
	v.mu.Lock()
	err := v.readableLocked(off, len(p))
	v.mu.Unlock()
	if err != nil {
		return 0, err
	}
	v.heat.record(uint64(off)/uint64(v.bs), uint64(len(p)+v.bs-1)/uint64(v.bs))
	n, err := v.f.ReadAt(p, off)
	if err != nil {
		return n, ioError("read "+v.path, err)
	}
	return n, nil
}

func (v *Volume) readableLocked(off int64, n int) error {
	if err := v.servableLocked(); err != nil {
		return err
	}
	if v.present != nil && n > 0 {
		lo, hi := uint64(off)/uint64(v.bs), (uint64(off)+uint64(n)-1)/uint64(v.bs)
		for b := lo; b <= hi; b++ {
			if !v.present.Has(b) {
				return fmt.Errorf("volume %s: %w: block %d is not held by this selective mirror", v.name, ErrInconsistent, b)
			}
		}
	}
	return nil
}

// servableLocked reports whether the copy may answer reads at all, to
// local readers and peers alike: not while a full mirror's copy is
// incomplete, nor while an acknowledged cycle waits for its apply to be
// retried. Blocks a selective mirror lacks are the caller's concern.
func (v *Volume) servableLocked() error {
	if v.closed {
		return ErrClosed
	}
	if v.st.Role == RoleMirror && v.st.Inconsistent && !v.st.Selective {
		return fmt.Errorf("volume %s: %w: the first copy from the source is incomplete", v.name, ErrInconsistent)
	}
	if v.unapplied != 0 {
		// The image may hold part of the cycle.
		return fmt.Errorf("volume %s: %w: cycle %d failed to apply and waits for a retry", v.name, ErrInconsistent, v.unapplied)
	}
	return nil
}

func (v *Volume) servable() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.servableLocked()
}

// missing returns the blocks of [lo, hi) a selective mirror lacks.
func (v *Volume) missing(lo, hi uint64) []uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.present == nil {
		return nil
	}
	var out []uint64
	for b := lo; b < hi; b++ {
		if !v.present.Has(b) {
			out = append(out, b)
		}
	}
	return out
}

// WriteAt writes p at off as a tracked primary write: every block touched
// gets a fresh version and is marked dirty for every peer. The extent is
// recorded in the activity log (and synced) before the data is written,
// so a crash can only over-mark. Mirrors and fenced primaries refuse.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	if _, err := v.writeTracked(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeTracked is WriteAt returning the blocks written and their versions.
func (v *Volume) writeTracked(p []byte, off int64) ([]Version, error) {
	if err := v.checkRange(off, len(p)); err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, nil
	}
	bs := int64(v.bs)
	lo, hi := off/bs, (off+int64(len(p))+bs-1)/bs
	v.io.Lock()
	defer v.io.Unlock()
	v.mu.Lock()
	switch {
	case v.closed:
		v.mu.Unlock()
		return nil, ErrClosed
	case v.st.Fenced:
		v.mu.Unlock()
		return nil, fmt.Errorf("volume %s: %w: epoch %d was superseded", v.name, ErrFenced, v.st.Epoch)
	case v.st.Role != RolePrimary:
		v.mu.Unlock()
		return nil, fmt.Errorf("volume %s: %w", v.name, ErrNotPrimary)
	}
	if err := v.al.ensure(uint64(lo), uint64(hi)); err != nil {
		v.mu.Unlock()
		return nil, err
	}
	snaps := slices.Clone(v.snaps)
	v.mu.Unlock()

	if err := v.preserve(snaps, uint64(lo), uint64(hi)); err != nil {
		return nil, err
	}
	// Unaligned edges: read-modify-write whole blocks.
	buf := p
	wOff := off
	if off%bs != 0 || int64(len(p))%bs != 0 {
		buf = make([]byte, (hi-lo)*bs)
		if _, err := v.f.ReadAt(buf, lo*bs); err != nil {
			return nil, ioError("read "+v.path, err)
		}
		copy(buf[off-lo*bs:], p)
		wOff = lo * bs
	}
	if _, err := v.f.WriteAt(buf, wOff); err != nil {
		return nil, ioError("write "+v.path, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	vers := make([]Version, 0, hi-lo)
	for b := uint64(lo); b < uint64(hi); b++ {
		ver := v.clock.After(v.st.Epoch, v.version(b))
		v.setVersion(b, ver)
		vers = append(vers, ver)
		for _, pb := range v.peers {
			pb.markDirty(b)
		}
	}
	return vers, nil
}

// Flush makes the metadata durable: the image is synced, then changed
// pages of versions, bitmaps and presence are written and synced, and only
// then are extents no longer written removed from the activity log.
func (v *Volume) Flush() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	var jobs []flushJob
	v.io.Lock()
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		v.io.Unlock()
		return ErrClosed
	}
	if pages := v.verPages.take(); len(pages) > 0 {
		jobs = append(jobs, flushJob{v.verFile, pages, slices.Clone(v.vers)})
	}
	for _, p := range v.peers {
		jobs = append(jobs, p.flushJobs()...)
	}
	if v.present != nil {
		if pages := v.presPages.take(); len(pages) > 0 {
			jobs = append(jobs, flushJob{v.presFile, pages, bitmapBytes(nil, v.present.w)})
		}
	}
	v.al.startFlush()
	v.mu.Unlock()
	v.io.Unlock()

	err := fdatasync(v.f)
	if err != nil && !errors.Is(err, syscall.EINVAL) {
		err = ioError("sync "+v.path, err)
	} else {
		err = nil
	}
	for _, j := range jobs {
		if err != nil {
			break
		}
		err = j.pf.writePages(j.data, j.pages)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		// Keep everything marked; the next flush retries.
		v.verPages.markAll()
		for _, p := range v.peers {
			p.pages.markAll()
			p.probePages.markAll()
		}
		if v.present != nil {
			v.presPages.markAll()
		}
		v.al.abortFlush()
		return err
	}
	return v.al.finishFlush()
}

// Close flushes and releases the volume.
func (v *Volume) Close() error {
	err := v.Flush()
	if errors.Is(err, ErrClosed) {
		return nil
	}
	v.io.Lock()
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.io.Unlock()
	v.closeFiles()
	return err
}

func (v *Volume) closeFiles() {
	for _, c := range []io.Closer{v.verFile, v.presFile, v.al, v.conflicts, v.f} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	for _, p := range v.peers {
		p.close()
	}
	if v.lockf != nil {
		v.lockf.Close() // releases the flock
	}
}

func isNilCloser(c io.Closer) bool {
	switch x := c.(type) {
	case *pagedFile:
		return x == nil
	case *activityLog:
		return x == nil
	case *conflictLog:
		return x == nil
	case *os.File:
		return x == nil
	}
	return false
}

// AddPeer starts change tracking for a downstream peer. A new peer starts
// with every block dirty: until its first full copy, nothing is known
// about what it holds.
func (v *Volume) AddPeer(name string) error {
	if !peerNameRE.MatchString(name) {
		return fmt.Errorf("peer name %q: want letters, digits, '.', '_' or '-'", name)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.peers[name]; ok {
		return nil
	}
	pb, err := openPeerBits(v.metaDir, name, v.blocks)
	if err != nil {
		return err
	}
	pb.dirty.SetAll()
	pb.pages.markAll()
	v.peers[name] = pb
	st := v.st
	st.Peers = append(slices.Clone(st.Peers), name)
	slices.Sort(st.Peers)
	if err := saveState(v.metaDir, st); err != nil {
		pb.close()
		delete(v.peers, name)
		return err
	}
	v.st = st
	return nil
}

// DirtyBlocks returns the blocks still to ship to peer.
func (v *Volume) DirtyBlocks(peer string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p := v.peers[peer]; p != nil {
		return p.pending()
	}
	return 0
}

// maxEpoch is the largest epoch: a block version holds it in 32 bits, so
// a larger one would be stamped on writes truncated (2^32 as 0) and they
// would lose to the data of the very epochs it fenced.
const maxEpoch = math.MaxUint32

// Promote makes the volume the primary at epoch (which must exceed the
// current epoch; 0 means current+1). The epoch is how the rest of the
// cluster fences the previous primary: mirrors reject sessions and
// versions from older epochs once they have seen this one.
func (v *Volume) Promote(epoch uint64) (uint64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	epoch, err := v.promotableLocked(epoch, false)
	if err != nil {
		return 0, err
	}
	st := v.st
	st.Epoch, st.Role, st.Fenced = epoch, RolePrimary, false
	if st.SourceLineage != "" {
		// The data keeps its identity across a promotion, so mirrors of
		// the old primary accept this one's cycles.
		st.Lineage = st.SourceLineage
	}
	if err := saveState(v.metaDir, st); err != nil {
		return 0, err
	}
	v.st = st
	v.log.Info("promoted", "epoch", epoch)
	return epoch, nil
}

// promotableLocked checks that the volume can be promoted to epoch (0:
// current+1) and returns the epoch. With settling, a copy whose failed
// cycle waits for its retry passes: the caller applies it and checks again.
func (v *Volume) promotableLocked(epoch uint64, settling bool) (uint64, error) {
	if epoch == 0 {
		epoch = v.st.Epoch + 1
	}
	if epoch > maxEpoch {
		return 0, fmt.Errorf("volume %s: promote to epoch %d: block versions hold epochs up to %d", v.name, epoch, uint64(maxEpoch))
	}
	if epoch <= v.st.Epoch {
		return 0, fmt.Errorf("volume %s: promote to epoch %d: %w: current epoch is %d", v.name, epoch, ErrFenced, v.st.Epoch)
	}
	if settling && v.unapplied != 0 {
		return epoch, nil // applying the cycle may complete the copy
	}
	if v.st.Role == RoleMirror && ((v.st.Inconsistent && !v.st.Selective) || v.unapplied != 0) {
		return 0, fmt.Errorf("volume %s: %w: cannot promote a mirror whose copy is incomplete", v.name, ErrInconsistent)
	}
	return epoch, nil
}

// promotable is promotableLocked for Node.Promote's first check.
func (v *Volume) promotable(epoch uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, err := v.promotableLocked(epoch, true)
	return err
}

// observeEpoch records an epoch seen from a peer. A primary that sees a
// newer epoch was deposed: it becomes a fenced mirror and refuses writes.
func (v *Volume) observeEpoch(epoch uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if epoch <= v.st.Epoch {
		return nil
	}
	st := v.st
	st.Epoch = epoch
	if st.Role == RolePrimary {
		// Deposed: the volume becomes a mirror of the same data, so the
		// new primary's cycles (same lineage) apply here.
		st.Role, st.Fenced = RoleMirror, true
		if st.SourceLineage == "" {
			st.SourceLineage = st.Lineage
		}
		v.log.Warn("deposed: a newer epoch exists", "epoch", epoch)
	}
	if err := saveState(v.metaDir, st); err != nil {
		return err
	}
	v.st = st
	return nil
}

// fence marks a primary deposed after a peer rejected it for its epoch.
func (v *Volume) fence(seen uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.Fenced {
		return
	}
	st := v.st
	st.Fenced = true
	if seen > st.Epoch {
		st.Epoch = seen
	}
	if err := saveState(v.metaDir, st); err != nil {
		v.log.Error("persist fence", "err", err)
	}
	v.st = st
	v.log.Warn("fenced: a peer has a newer epoch; local writes are rejected")
}

// fenced reports whether a newer epoch has deposed the volume.
func (v *Volume) fenced() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.Fenced
}

func (v *Volume) updateState(f func(*volState)) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.updateStateLocked(f)
}

func (v *Volume) updateStateLocked(f func(*volState)) error {
	st := v.st
	st.Peers = slices.Clone(st.Peers)
	f(&st)
	if err := saveState(v.metaDir, st); err != nil {
		return err
	}
	v.st = st
	return nil
}

// state returns the volume's state, inconsistent while a failed cycle
// waits for its retry (so Welcome and Push treat it so).
func (v *Volume) state() volState {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.st
	if v.unapplied != 0 {
		st.Inconsistent = true
	}
	return st
}

// HotExtents returns up to k extents of the given size in blocks, hottest
// first by decayed read count, skipping extents never read.
func (v *Volume) HotExtents(k int, extentBlocks uint64) []Extent {
	return v.heat.hot(k, extentBlocks)
}
