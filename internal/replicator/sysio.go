package replicator

// The few raw file operations the replicator needs, in one place. They use
// the standard syscall package; golang.org/x/sys/unix is not needed.

import (
	"errors"
	"io"
	"os"
	"syscall"
)

const (
	seekData = 3 // SEEK_DATA, Linux ≥ 3.1
	seekHole = 4 // SEEK_HOLE
	// FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
	punchHoleMode = 0x01 | 0x02
)

// nextData returns the start of the first data region at or after off and
// the end of that region (the next hole). ok is false when no data follows
// off. When the filesystem or device cannot report holes, the whole rest
// of the file is one data region.
func nextData(f *os.File, off, size int64) (start, end int64, ok bool) {
	fd := int(f.Fd())
	d, err := syscall.Seek(fd, off, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return 0, 0, false
		}
		return off, size, off < size
	}
	if d >= size {
		return 0, 0, false
	}
	h, err := syscall.Seek(fd, d, seekHole)
	if err != nil || h > size {
		h = size
	}
	return d, h, true
}

// dataMap answers "where is the next data at or after pos" from a cached
// data segment, so a sequential scan costs one SEEK_DATA/SEEK_HOLE pair
// per segment rather than per chunk. (On ext4, SEEK_HOLE over dirty page
// cache walks every page to the next hole: per-chunk calls made a full
// copy quadratic.)
type dataMap struct {
	f            *os.File
	size         int64
	segLo, segHi int64 // cached data segment; segHi == 0: none
	noData       int64 // no data at or after this offset (when > 0)
}

func newDataMap(f *os.File, size int64) *dataMap { return &dataMap{f: f, size: size, noData: -1} }

// next returns the data segment containing or following pos, clipped to
// [pos, end).
func (m *dataMap) next(pos, end int64) (start, stop int64, ok bool) {
	if m.noData >= 0 && pos >= m.noData {
		return 0, 0, false
	}
	if !(pos >= m.segLo && pos < m.segHi) && !(m.segHi > 0 && pos < m.segLo) {
		d, h, found := nextData(m.f, pos, m.size)
		if !found {
			m.noData = pos
			return 0, 0, false
		}
		m.segLo, m.segHi = d, h
	}
	start, stop = max(pos, m.segLo), min(m.segHi, end)
	if start >= end {
		return 0, 0, false
	}
	return start, stop, true
}

// punchHole deallocates a range so it reads as zeros, falling back to
// writing zeros where punching is not supported (block devices, tmpfs on
// old kernels).
func punchHole(f *os.File, off, n int64) error {
	err := syscall.Fallocate(int(f.Fd()), punchHoleMode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOSYS) && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// willNeed asks the kernel to start reading a range into the page cache
// (POSIX_FADV_WILLNEED); errors are ignored, it is only a hint. Issuing it
// for every block of a cycle before reading them turns thousands of
// latency-bound random reads into one deep queue.
func willNeed(f *os.File, off, n int64) {
	const fadvWillNeed = 3
	syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), uintptr(off), uintptr(n), fadvWillNeed, 0, 0)
}

// fdatasync flushes a file's data (and the metadata needed to read it).
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// lockFile takes an exclusive, non-blocking flock on f.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

// fileSize returns the size of a regular file or a block device.
func fileSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode()&os.ModeDevice != 0 {
		return f.Seek(0, io.SeekEnd)
	}
	return st.Size(), nil
}

// isDevice reports whether f is a block device.
func isDevice(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeDevice != 0
}

// fsBytes is the size of the filesystem holding f (0 when unknown).
func fsBytes(f *os.File) int64 {
	var st syscall.Statfs_t
	if err := syscall.Fstatfs(int(f.Fd()), &st); err != nil || st.Bsize <= 0 {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}
