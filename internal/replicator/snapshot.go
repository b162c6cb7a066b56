package replicator

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// snapshot gives a delta cycle a point-in-time view of its blocks while
// the volume keeps taking writes: the first write to a block of the set
// copies the old content to a side file (copy-on-write), and reads of the
// set come from there. A mirror applying the cycle thus gets exactly the
// primary's state at the instant the cycle began, never a mix of before
// and after a concurrent write.
type snapshot struct {
	v       *Volume
	set     *Bitmap
	mu      sync.Mutex
	cow     map[uint64]int64
	cowFile *os.File
	cowNext int64
}

// cycle is the sender's view of one delta cycle.
type cycle struct {
	peer     string // "" for repair cycles, which leave tracking alone
	snap     *snapshot
	manifest []wire.ManifestEntry // ascending block order
}

// beginCycle snapshots the blocks to ship to peer: its dirty set, or
// exactly the forced blocks (a repair after verify).
func (v *Volume) beginCycle(peer string, forced []uint64) (*cycle, error) {
	v.io.Lock()
	defer v.io.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, ErrClosed
	}
	c := &cycle{peer: peer}
	var set, probe *Bitmap
	if forced != nil {
		set = NewBitmap(v.blocks)
		for _, b := range forced {
			set.Set(b)
		}
		c.peer = ""
	} else {
		p := v.peers[peer]
		if p == nil {
			return nil, fmt.Errorf("volume %s: no change tracking for peer %q", v.name, peer)
		}
		set, probe = p.startCycle()
	}
	for b, ok := set.Next(0); ok; b, ok = set.Next(b + 1) {
		e := wire.ManifestEntry{Block: b, Version: v.version(b)}
		switch {
		case forced != nil:
			e.Flags = wire.ManifestForce
		case probe.Has(b):
			e.Flags = wire.ManifestProbe
		}
		c.manifest = append(c.manifest, e)
	}
	c.snap = &snapshot{v: v, set: set, cow: map[uint64]int64{}}
	v.snaps = append(v.snaps, c.snap)
	return c, nil
}

// endCycle drops the snapshot and, for a tracked cycle, retires its set
// (ok) or returns it to the dirty set.
func (v *Volume) endCycle(c *cycle, ok bool) {
	v.mu.Lock()
	v.snaps = slices.DeleteFunc(v.snaps, func(s *snapshot) bool { return s == c.snap })
	if p := v.peers[c.peer]; p != nil {
		p.endCycle(ok)
	}
	v.mu.Unlock()
	c.snap.close()
}

// preserve copies the current content of blocks [lo, hi) that belong to a
// snapshot and were not copied yet. The caller holds v.io exclusively.
func (v *Volume) preserve(snaps []*snapshot, lo, hi uint64) error {
	var buf []byte
	for _, s := range snaps {
		for b := lo; b < hi; b++ {
			if !s.set.Has(b) {
				continue
			}
			s.mu.Lock()
			_, done := s.cow[b]
			s.mu.Unlock()
			if done {
				continue
			}
			if buf == nil {
				buf = make([]byte, v.bs)
			}
			if _, err := v.f.ReadAt(buf, int64(b)*int64(v.bs)); err != nil {
				return ioError("read "+v.path, err)
			}
			if err := s.keep(b, buf); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *snapshot) keep(b uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cowFile == nil {
		f, err := os.CreateTemp(s.v.metaDir, "cow-*")
		if err != nil {
			return ioError("create snapshot file", err)
		}
		s.cowFile = f
	}
	if _, err := s.cowFile.WriteAt(data, s.cowNext); err != nil {
		return ioError("write snapshot file", err)
	}
	s.cow[b] = s.cowNext
	s.cowNext += int64(len(data))
	return nil
}

// readRun reads blocks [b, b+n) as of the snapshot into dst.
func (s *snapshot) readRun(b, n uint64, dst []byte) error {
	v := s.v
	bs := uint64(v.bs)
	v.io.RLock()
	defer v.io.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	start := b
	flush := func(end uint64) error {
		if end > start {
			if _, err := v.f.ReadAt(dst[(start-b)*bs:(end-b)*bs], int64(start*bs)); err != nil {
				return ioError("read "+v.path, err)
			}
		}
		return nil
	}
	for i := b; i < b+n; i++ {
		off, ok := s.cow[i]
		if !ok {
			continue
		}
		if err := flush(i); err != nil {
			return err
		}
		if _, err := s.cowFile.ReadAt(dst[(i-b)*bs:(i-b+1)*bs], off); err != nil {
			return ioError("read snapshot file", err)
		}
		start = i + 1
	}
	return flush(b + n)
}

func (s *snapshot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cowFile != nil {
		s.cowFile.Close()
		os.Remove(s.cowFile.Name())
		s.cowFile = nil
	}
}

// removeStaleSnapshots deletes side files left by a crash.
func removeStaleSnapshots(metaDir string) {
	files, _ := filepath.Glob(filepath.Join(metaDir, "cow-*"))
	for _, f := range files {
		os.Remove(f)
	}
}
