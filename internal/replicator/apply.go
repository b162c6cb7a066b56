package replicator

import (
	"time"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// recvItem is one block received from a peer, to be written at a mirror.
type recvItem struct {
	block uint64
	ver   Version
	data  []byte // nil: all zeros
	adopt bool   // the image already holds these bytes: set the version only
	force bool   // a repair: replace the bytes even at the same version (never a newer one)
	// epoch is the sender's epoch: a primary vouches for all the data it
	// ships, so any local version from an older epoch loses to it even
	// if its clock is newer (a deposed primary's unshipped write).
	epoch uint32
}

// applyLocked writes received blocks (ascending order) to the image. The
// caller holds v.io exclusively.
//
// Unless force is set, the newer version wins (epoch, then hybrid clock,
// then site). The loser is kept in the conflict log when it came from
// another site: an incoming write older than ours, or a local write that
// was never shipped and is being overwritten. Contiguous blocks go out in
// one write.
func (v *Volume) applyLocked(items []recvItem, force bool) error {
	if len(items) == 0 {
		return nil
	}
	type loss struct {
		c     Conflict
		local bool // read the loser's data from the image first
	}
	var losses []loss
	keep := make([]bool, len(items))
	mySite := v.clock.Site()
	now := time.Now()

	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return ErrClosed
	}
	var newest Version // the newest clock received, checked against the wall clock once
	for i, it := range items {
		local := v.version(it.block)
		v.clock.Observe(it.ver)
		if it.ver.Clock > newest.Clock {
			newest = it.ver
		}
		if it.adopt {
			keep[i] = true
			continue
		}
		// A repair (it.force) replaces bytes whatever they are, but never
		// a newer version: a write that reached this copy after the
		// repair's snapshot was taken must not be rolled back.
		if !force && it.ver.Less(local) && local.Epoch >= max(it.epoch, it.ver.Epoch) {
			if local.Site != it.ver.Site {
				losses = append(losses, loss{c: Conflict{Time: now, Block: it.block, Winner: local, Loser: it.ver, Data: it.data}})
			}
			continue
		}
		keep[i] = true
		if !local.IsZero() && local != it.ver && local.Site == mySite && it.ver.Site != mySite && v.unshippedLocked(it.block) {
			losses = append(losses, loss{c: Conflict{Time: now, Block: it.block, Winner: it.ver, Loser: local}, local: true})
		}
	}
	if len(v.peers) > 0 {
		// Downstream peers track these writes too: cover them in the
		// activity log first.
		if err := v.al.ensure(items[0].block, items[len(items)-1].block+1); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	v.mu.Unlock()
	if d := v.clock.aheadOf(newest.Clock); d > clockAheadWarn {
		v.warnAhead(d, newest)
	}

	for _, l := range losses {
		if l.local {
			l.c.Data = make([]byte, v.bs)
			if _, err := v.f.ReadAt(l.c.Data, int64(l.c.Block)*int64(v.bs)); err != nil {
				return ioError("read "+v.path, err)
			}
		}
		if l.c.Data == nil {
			l.c.Data = make([]byte, v.bs)
		}
		if err := v.conflicts.add(l.c); err != nil {
			return err
		}
		v.log.Warn("write conflict: losing version kept in the conflict log", "block", l.c.Block,
			"winner", l.c.Winner.String(), "loser", l.c.Loser.String())
	}

	if err := v.writeRuns(items, keep); err != nil {
		return err
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	for i, it := range items {
		if !keep[i] {
			continue
		}
		v.setVersion(it.block, it.ver)
		if v.present != nil && !v.present.Has(it.block) {
			v.present.Set(it.block)
			v.presPages.mark(it.block / 8)
		}
		if !it.adopt {
			for _, p := range v.peers {
				p.markDirty(it.block)
			}
		}
	}
	return nil
}

// unshippedLocked reports whether a local write to b may not have reached
// any peer yet (it is dirty for one, or there are no peers to ask).
func (v *Volume) unshippedLocked(b uint64) bool {
	if len(v.peers) == 0 {
		return true
	}
	for _, p := range v.peers {
		if p.dirty.Has(b) || p.sending.Has(b) {
			return true
		}
	}
	return false
}

// maxRunBlocks bounds one coalesced write.
const maxRunBlocks = 1024

// writeRuns writes the kept, non-adopt items, one write per contiguous
// run. A run whose data already lies contiguously in memory (adjacent
// blocks of one received frame) is written in place; otherwise it is
// gathered in a reusable buffer (the caller holds v.io exclusively).
func (v *Volume) writeRuns(items []recvItem, keep []bool) error {
	bs := v.bs
	var direct []byte // run data in place, while contiguous
	inPlace := false
	run := v.runBuf[:0]
	var runStart, runLen uint64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		data := run
		if inPlace {
			data = direct
		}
		_, err := v.f.WriteAt(data[:runLen*uint64(bs)], int64(runStart)*int64(bs))
		runLen, run, direct, inPlace = 0, run[:0], nil, false
		return ioError("write "+v.path, err)
	}
	for i, it := range items {
		if !keep[i] || it.adopt {
			continue
		}
		if runLen > 0 && (it.block != runStart+runLen || runLen >= maxRunBlocks) {
			if err := flush(); err != nil {
				return err
			}
		}
		switch {
		case runLen == 0:
			runStart = it.block
			inPlace = it.data != nil
			direct = it.data
			if !inPlace {
				run = append(run, make([]byte, bs)...)
			}
		case inPlace && wire.Adjacent(direct, it.data):
			direct = direct[:len(direct)+bs]
		default:
			if inPlace {
				run = append(run[:0], direct...)
				inPlace = false
			}
			if it.data == nil {
				run = append(run, make([]byte, bs)...)
			} else {
				run = append(run, it.data...)
			}
		}
		runLen++
	}
	err := flush()
	if cap(run) > cap(v.runBuf) {
		v.runBuf = run[:0]
	}
	return err
}

// warnAhead logs, at most once a minute per volume, a received version
// whose clock runs far ahead of this node's wall clock.
func (v *Volume) warnAhead(d time.Duration, ver Version) {
	now := time.Now().UnixNano()
	if last := v.lastAheadLog.Load(); last != 0 && now-last < int64(time.Minute) {
		return
	}
	v.lastAheadLog.Store(now)
	v.log.Warn("received a version from a clock ahead of ours: this node's versions follow it (replicator_clock_ahead_seconds); fix the time of that site's node",
		"volume", v.name, "site", ver.Site, "version", ver.String(), "ahead", d.Round(time.Second).String())
}
