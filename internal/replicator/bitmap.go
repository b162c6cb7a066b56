package replicator

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"os"
)

// Bitmap is a fixed-size bit set.
type Bitmap struct {
	n uint64
	w []uint64
}

// NewBitmap returns an empty bitmap of n bits.
func NewBitmap(n uint64) *Bitmap { return &Bitmap{n: n, w: make([]uint64, (n+63)/64)} }

// Len returns the number of bits.
func (b *Bitmap) Len() uint64 { return b.n }

// Set sets bit i.
func (b *Bitmap) Set(i uint64) { b.w[i/64] |= 1 << (i % 64) }

// Clear clears bit i.
func (b *Bitmap) Clear(i uint64) { b.w[i/64] &^= 1 << (i % 64) }

// Has reports bit i.
func (b *Bitmap) Has(i uint64) bool { return b.w[i/64]&(1<<(i%64)) != 0 }

// SetAll sets every bit.
func (b *Bitmap) SetAll() {
	for i := range b.w {
		b.w[i] = ^uint64(0)
	}
	if r := b.n % 64; r != 0 {
		b.w[len(b.w)-1] = 1<<r - 1
	}
}

// ClearAll clears every bit.
func (b *Bitmap) ClearAll() { clear(b.w) }

// Count returns the number of set bits.
func (b *Bitmap) Count() uint64 {
	var c int
	for _, w := range b.w {
		c += bits.OnesCount64(w)
	}
	return uint64(c)
}

// Next returns the first set bit at or after i.
func (b *Bitmap) Next(i uint64) (uint64, bool) {
	if i >= b.n {
		return 0, false
	}
	wi := i / 64
	w := b.w[wi] &^ (1<<(i%64) - 1)
	for {
		if w != 0 {
			j := wi*64 + uint64(bits.TrailingZeros64(w))
			return j, j < b.n
		}
		wi++
		if wi >= uint64(len(b.w)) {
			return 0, false
		}
		w = b.w[wi]
	}
}

// Or sets every bit set in o (same size).
func (b *Bitmap) Or(o *Bitmap) {
	for i, w := range o.w {
		b.w[i] |= w
	}
}

// Clone returns a copy.
func (b *Bitmap) Clone() *Bitmap {
	return &Bitmap{n: b.n, w: append([]uint64(nil), b.w...)}
}

// pageBytes is the unit in which metadata files are rewritten.
const pageBytes = 4096

// metaHeader is the size of the header of a paged metadata file; data
// pages start after it so they stay page aligned.
const metaHeader = pageBytes

// pagedFile is a metadata file written in place, one 4 KiB page at a
// time: a header page (magic, format, item count, checksum) and the data.
// Crash safety does not rest on page atomicity: the activity log keeps
// every extent whose metadata may be stale marked until the pages that
// describe it are synced (see activity.go).
type pagedFile struct {
	f    *os.File
	path string
}

func openPaged(path, magic string, size uint64, create bool) (*pagedFile, []byte, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, nil, ioError("open "+path, err)
	}
	pf := &pagedFile{f: f, path: path}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	data := make([]byte, size)
	if st.Size() == 0 {
		if !create {
			f.Close()
			return nil, nil, fmt.Errorf("%s: empty metadata file", path)
		}
		if err := pf.writeHeader(magic, size); err != nil {
			f.Close()
			return nil, nil, err
		}
		if err := f.Truncate(int64(metaHeader + size)); err != nil {
			f.Close()
			return nil, nil, ioError("size "+path, err)
		}
		return pf, data, nil
	}
	truncated := func() error {
		return fmt.Errorf("%s: %w: truncated to %d bytes, the volume's metadata needs %d", path, ErrCorrupt, st.Size(), metaHeader+size)
	}
	hdr := make([]byte, 32)
	if st.Size() < int64(len(hdr)) {
		f.Close()
		return nil, nil, truncated()
	}
	if _, err := f.ReadAt(hdr, 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read %s header: %w", path, err)
	}
	if string(hdr[:4]) != magic || crc32.Checksum(hdr[:28], castagnoli) != binary.LittleEndian.Uint32(hdr[28:]) {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w: bad metadata header", path, ErrCorrupt)
	}
	if got := binary.LittleEndian.Uint64(hdr[8:]); got != size {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w: holds %d bytes, volume needs %d", path, ErrGeometry, got, size)
	}
	if st.Size() < int64(metaHeader+size) {
		f.Close()
		return nil, nil, truncated()
	}
	if _, err := f.ReadAt(data, metaHeader); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return pf, data, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (pf *pagedFile) writeHeader(magic string, size uint64) error {
	hdr := make([]byte, 32)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[4:], 1) // format
	binary.LittleEndian.PutUint64(hdr[8:], size)
	binary.LittleEndian.PutUint32(hdr[28:], crc32.Checksum(hdr[:28], castagnoli))
	if _, err := pf.f.WriteAt(hdr, 0); err != nil {
		return ioError("write "+pf.path, err)
	}
	return nil
}

// writePages writes the listed pages of data (a full copy of the file's
// data region) and syncs. Adjacent pages go out in one write.
func (pf *pagedFile) writePages(data []byte, pages []uint64) error {
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		lo := pages[i] * pageBytes
		hi := min((pages[j-1]+1)*pageBytes, uint64(len(data)))
		if _, err := pf.f.WriteAt(data[lo:hi], int64(metaHeader+lo)); err != nil {
			return ioError("write "+pf.path, err)
		}
		i = j
	}
	if len(pages) == 0 {
		return nil
	}
	if err := fdatasync(pf.f); err != nil {
		return ioError("sync "+pf.path, err)
	}
	return nil
}

func (pf *pagedFile) Close() error { return pf.f.Close() }

// pageSet records which pages of a metadata file changed since the last
// flush.
type pageSet struct{ b *Bitmap }

func newPageSet(dataBytes uint64) pageSet {
	return pageSet{NewBitmap((dataBytes + pageBytes - 1) / pageBytes)}
}

func (p pageSet) mark(byteOff uint64) { p.b.Set(byteOff / pageBytes) }

func (p pageSet) markAll() { p.b.SetAll() }

// take returns the changed pages and resets the set.
func (p pageSet) take() []uint64 {
	var out []uint64
	for i, ok := p.b.Next(0); ok; i, ok = p.b.Next(i + 1) {
		out = append(out, i)
	}
	p.b.ClearAll()
	return out
}

// bitmapBytes encodes words little endian (the file format).
func bitmapBytes(dst []byte, w []uint64) []byte {
	dst = dst[:0]
	for _, x := range w {
		dst = binary.LittleEndian.AppendUint64(dst, x)
	}
	return dst
}

func bitmapFromBytes(b *Bitmap, data []byte) {
	for i := range b.w {
		b.w[i] = binary.LittleEndian.Uint64(data[i*8:])
	}
	if r := b.n % 64; r != 0 && len(b.w) > 0 {
		b.w[len(b.w)-1] &= 1<<r - 1
	}
}
