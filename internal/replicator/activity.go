package replicator

// activityLog is DRBD's activity-log idea. Before a write touches an
// extent, the extent's bit is set on disk (and synced) unless it already
// is; metadata describing writes (block versions, dirty bits) is written
// lazily by Flush. Flush clears an extent from the log only after the
// metadata covering every write to it has been synced. After a crash,
// every block of every extent still in the log is treated as changed, so
// tracking can over-mark but never lose a write. One sync per newly
// touched extent per flush interval is the whole cost.
type activityLog struct {
	pf      *pagedFile
	disk    *Bitmap // as on disk
	touched *Bitmap // touched since the current flush interval began
	flushed *Bitmap // touched set captured by the flush in progress
	buf     []byte
}

func openActivityLog(path string, extents uint64) (*activityLog, error) {
	n := (extents + 63) / 64 * 8
	pf, data, err := openPaged(path, "PMAL", n, true)
	if err != nil {
		return nil, err
	}
	al := &activityLog{pf: pf, disk: NewBitmap(extents), touched: NewBitmap(extents)}
	bitmapFromBytes(al.disk, data)
	return al, nil
}

// active lists the extents marked on disk.
func (al *activityLog) active() []uint64 {
	var out []uint64
	for e, ok := al.disk.Next(0); ok; e, ok = al.disk.Next(e + 1) {
		out = append(out, e)
	}
	return out
}

// ensure marks the extents of blocks [lo, hi) before they are written.
func (al *activityLog) ensure(lo, hi uint64) error {
	var pages []uint64
	for e := lo / alExtentBlocks; e <= (hi-1)/alExtentBlocks; e++ {
		al.touched.Set(e)
		if !al.disk.Has(e) {
			al.disk.Set(e)
			if p := e / 8 / pageBytes; len(pages) == 0 || pages[len(pages)-1] != p {
				pages = append(pages, p)
			}
		}
	}
	return al.write(pages)
}

func (al *activityLog) write(pages []uint64) error {
	if len(pages) == 0 {
		return nil
	}
	al.buf = bitmapBytes(al.buf, al.disk.w)
	return al.pf.writePages(al.buf, pages)
}

// startFlush begins a flush interval: writes from now on are tracked in a
// fresh touched set.
func (al *activityLog) startFlush() {
	al.flushed = al.touched
	al.touched = NewBitmap(al.disk.Len())
}

// abortFlush folds the captured set back after a failed flush.
func (al *activityLog) abortFlush() {
	if al.flushed != nil {
		al.touched.Or(al.flushed)
		al.flushed = nil
	}
}

// finishFlush shrinks the on-disk log to the extents touched since the
// flush began; the metadata of earlier writes is now durable.
func (al *activityLog) finishFlush() error {
	al.flushed = nil
	var pages []uint64
	for i := range al.disk.w {
		if al.disk.w[i] != al.touched.w[i] {
			if p := uint64(i) * 8 / pageBytes; len(pages) == 0 || pages[len(pages)-1] != p {
				pages = append(pages, p)
			}
		}
	}
	copy(al.disk.w, al.touched.w)
	return al.write(pages)
}

func (al *activityLog) Close() error { return al.pf.Close() }
