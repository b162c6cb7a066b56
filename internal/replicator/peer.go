package replicator

import (
	"path/filepath"
)

// peerBits is the change tracking of one downstream peer. dirty holds
// blocks written since the last cycle started; sending holds the blocks of
// the cycle in flight, which return to dirty if it fails. probe/probing
// mark blocks whose version is not trusted after a crash: the cycle sends
// their hash and the peer says whether it already has the data.
//
// On disk each file holds the union (dirty|sending, probe|probing), so a
// crash in the middle of a cycle leaves its blocks dirty.
type peerBits struct {
	name                   string
	dirty, sending         *Bitmap
	probe, probing         *Bitmap
	pages, probePages      pageSet
	dirtyFile, probeFile   *pagedFile
	dirtyScratch, probeScr []byte
}

func openPeerBits(metaDir, name string, blocks uint64) (*peerBits, error) {
	n := (blocks + 63) / 64 * 8
	p := &peerBits{name: name, dirty: NewBitmap(blocks), sending: NewBitmap(blocks),
		probe: NewBitmap(blocks), probing: NewBitmap(blocks), pages: newPageSet(n), probePages: newPageSet(n)}
	df, data, err := openPaged(filepath.Join(metaDir, "peer-"+name+".dirty"), "PMDB", n, true)
	if err != nil {
		return nil, err
	}
	bitmapFromBytes(p.dirty, data)
	pf, pdata, err := openPaged(filepath.Join(metaDir, "peer-"+name+".probe"), "PMPB", n, true)
	if err != nil {
		df.Close()
		return nil, err
	}
	bitmapFromBytes(p.probe, pdata)
	p.dirtyFile, p.probeFile = df, pf
	return p, nil
}

func (p *peerBits) markDirty(b uint64) {
	p.dirty.Set(b)
	p.pages.mark(b / 8)
}

func (p *peerBits) markProbe(b uint64) {
	p.probe.Set(b)
	p.probePages.mark(b / 8)
}

// pending counts blocks dirty or in flight.
func (p *peerBits) pending() uint64 {
	u := p.dirty.Clone()
	u.Or(p.sending)
	return u.Count()
}

// startCycle moves dirty into sending and returns it (and the probe set).
// The on-disk union is unchanged.
func (p *peerBits) startCycle() (set, probe *Bitmap) {
	p.sending.Or(p.dirty)
	p.dirty.ClearAll()
	p.probing.Or(p.probe)
	p.probe.ClearAll()
	return p.sending.Clone(), p.probing.Clone()
}

// endCycle retires the in-flight set after a commit or returns it to dirty
// after a failure.
func (p *peerBits) endCycle(ok bool) {
	if !ok {
		p.dirty.Or(p.sending)
		p.probe.Or(p.probing)
	} else {
		markWords(p.pages, p.sending)
		markWords(p.probePages, p.probing)
	}
	p.sending.ClearAll()
	p.probing.ClearAll()
}

// reset forgets everything (a full copy will send every block).
func (p *peerBits) reset() {
	p.dirty.ClearAll()
	p.sending.ClearAll()
	p.probe.ClearAll()
	p.probing.ClearAll()
	p.pages.markAll()
	p.probePages.markAll()
}

// markWords marks the pages holding any set bit of b.
func markWords(ps pageSet, b *Bitmap) {
	for i, w := range b.w {
		if w != 0 {
			ps.mark(uint64(i) * 8)
		}
	}
}

type flushJob struct {
	pf    *pagedFile
	pages []uint64
	data  []byte
}

// flushJobs captures the changed pages of both unions (caller holds the
// volume lock).
func (p *peerBits) flushJobs() []flushJob {
	var jobs []flushJob
	if pages := p.pages.take(); len(pages) > 0 {
		p.dirtyScratch = unionBytes(p.dirtyScratch, p.dirty, p.sending)
		jobs = append(jobs, flushJob{p.dirtyFile, pages, append([]byte(nil), p.dirtyScratch...)})
	}
	if pages := p.probePages.take(); len(pages) > 0 {
		p.probeScr = unionBytes(p.probeScr, p.probe, p.probing)
		jobs = append(jobs, flushJob{p.probeFile, pages, append([]byte(nil), p.probeScr...)})
	}
	return jobs
}

func unionBytes(dst []byte, a, b *Bitmap) []byte {
	dst = dst[:0]
	for i := range a.w {
		x := a.w[i] | b.w[i]
		dst = append(dst, byte(x), byte(x>>8), byte(x>>16), byte(x>>24), byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56))
	}
	return dst
}

func (p *peerBits) close() {
	if p.dirtyFile != nil {
		p.dirtyFile.Close()
	}
	if p.probeFile != nil {
		p.probeFile.Close()
	}
}
