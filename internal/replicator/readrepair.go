package replicator

import (
	"context"
	"errors"
	"time"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Read repair, as in Dynamo and Cassandra: a quorum read has just seen
// every answering copy's version of each block, so copies that answered
// with an older one are sent the newest right away instead of waiting for
// the next delta cycle or verify. Repairs go through the paths writes
// already use — sync writes to mirrors, applyLocked locally — so they are
// newest-version-wins: a repair racing a newer write cannot undo it, and
// one applied twice changes nothing.

// repairTimeout bounds one background repair of one copy.
const repairTimeout = 30 * time.Second

// maxRepairs bounds the repairs in flight per node. Reads that find more
// stale copies while it is reached skip repairing them: delta cycles
// still bring those copies up to date, and a read storm against a stale
// mirror cannot pile up goroutines and queued frames.
const maxRepairs = 64

// readAnswer is one mirror's answer to a quorum read.
type readAnswer struct {
	pl  *peerLink
	got *batch
}

// readRepair starts background repairs of the copies whose answer to a
// quorum read was older than best (the newest version of each block).
// local is this copy's answer (nil: it did not answer). Blocks a mirror answered as absent (a
// selective mirror that does not hold them) are never sent: repair must
// not turn a selective mirror into a full one.
//
// Repairs sent to mirrors are writes, and are fenced as Node.Write is: a
// deposed copy sends none (a mirror that has not seen the newer epoch yet
// would take them), and a mirror refusing one as fenced deposes this copy.
func (n *Node) readRepair(v *Volume, best, local *batch, answers []readAnswer) {
	epoch := v.Epoch()
	if v.fenced() {
		answers = nil
	}
	for _, a := range answers {
		// A mirror refuses sync-written blocks whose version predates its
		// epoch (that is how it fences a deposed primary), so blocks last
		// written under an older epoch are left to delta cycles and verify.
		bt, old := staleBlocks(best, a.got, v.bs, epoch)
		peer := a.pl.pool.p.cfg.Name
		if old > 0 {
			n.log.Debug("read repair: blocks from an older epoch left to delta cycles", "volume", v.name, "peer", peer, "blocks", old)
		}
		if bt == nil {
			continue
		}
		n.startRepair(v.name, peer, func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, repairTimeout)
			defer cancel()
			if h := n.hooks.repair; h != nil {
				h(v.name, peer)
			}
			if v.fenced() { // deposed since the read
				return
			}
			if err := a.pl.pool.repair(ctx, a.pl, bt); err != nil {
				if errors.Is(err, ErrFenced) {
					v.fence(0)
					n.metrics.fenced.WithLabelValues(v.name).Inc()
				}
				n.log.Debug("read repair failed", "volume", v.name, "peer", peer, "blocks", len(bt.blocks), "err", err)
				return
			}
			n.metrics.readRepairs.WithLabelValues(v.name).Add(float64(len(bt.blocks)))
			n.log.Debug("read repair", "volume", v.name, "peer", peer, "blocks", len(bt.blocks))
		})
	}
	if local == nil {
		// This copy did not answer (Node.Read): it may not serve reads,
		// and the retry of its failed cycle or its copy will bring it.
		return
	}
	// The local copy takes any newer version, whatever its epoch:
	// applyLocked orders epochs itself.
	bt, _ := staleBlocks(best, local, v.bs, 0)
	if bt == nil {
		return
	}
	n.startRepair(v.name, "local", func(context.Context) {
		if h := n.hooks.repair; h != nil {
			h(v.name, "local")
		}
		items := make([]recvItem, len(bt.blocks))
		for k := range bt.blocks {
			items[k] = recvItem{block: bt.blocks[k], ver: bt.vers[k], data: bt.data[k*v.bs : (k+1)*v.bs]}
		}
		v.io.Lock()
		err := v.applyLocked(items, false)
		v.io.Unlock()
		if err != nil {
			n.log.Debug("read repair failed", "volume", v.name, "peer", "local", "blocks", len(items), "err", err)
			return
		}
		n.metrics.readRepairs.WithLabelValues(v.name).Add(float64(len(items)))
		n.log.Debug("read repair", "volume", v.name, "peer", "local", "blocks", len(items))
	})
}

// staleBlocks returns the blocks of best newer than in got (absent ones
// excepted) as a batch, or nil; blocks whose newest version has an epoch
// below minEpoch are left out and counted.
func staleBlocks(best, got *batch, bs int, minEpoch uint64) (*batch, int) {
	var out *batch
	old := 0
	for i, ver := range best.vers {
		if got.absent != nil && got.absent[i] || !got.vers[i].Less(ver) {
			continue
		}
		if uint64(ver.Epoch) < minEpoch {
			old++
			continue
		}
		if out == nil {
			out = &batch{}
		}
		out.blocks = append(out.blocks, best.blocks[i])
		out.vers = append(out.vers, ver)
		out.data = append(out.data, best.data[i*bs:(i+1)*bs]...)
	}
	return out, old
}

// repair sends bt to the mirror that rl reads from, on that mirror's
// sync-write session, in frames of at most maxReadBlocks blocks.
func (lp *linkPool) repair(ctx context.Context, rl *peerLink, bt *batch) error {
	pl, err := lp.get(ctx, rl.local, rl.remote, wire.OpSyncWrite)
	if err != nil {
		return err
	}
	bs := len(bt.data) / len(bt.blocks)
	for i := 0; i < len(bt.blocks); i += maxReadBlocks {
		j := min(i+maxReadBlocks, len(bt.blocks))
		part := batch{blocks: bt.blocks[i:j], vers: bt.vers[i:j], data: bt.data[i*bs : j*bs]}
		if err := pl.syncWrite(ctx, &part); err != nil {
			lp.drop(pl)
			return err
		}
	}
	return nil
}

// startRepair runs f in the background when fewer than maxRepairs
// repairs are in flight (see maxRepairs).
func (n *Node) startRepair(volume, peer string, f func(ctx context.Context)) {
	select {
	case n.repairSlots <- struct{}{}:
	default:
		n.log.Debug("read repair skipped: too many in flight", "volume", volume, "peer", peer)
		return
	}
	if !n.goBackground(func(ctx context.Context) {
		defer func() { <-n.repairSlots }()
		f(ctx)
	}) {
		<-n.repairSlots
	}
}

// goBackground runs f on a goroutine that Close cancels and waits for;
// after Close it runs nothing and returns false.
func (n *Node) goBackground(f func(ctx context.Context)) bool {
	n.bgMu.Lock()
	defer n.bgMu.Unlock()
	if n.bgClosed {
		return false
	}
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		f(n.bgCtx)
	}()
	return true
}

// stopBackground cancels background work and waits for it to end.
func (n *Node) stopBackground() {
	n.bgMu.Lock()
	n.bgClosed = true
	n.bgMu.Unlock()
	n.bgCancel()
	n.bg.Wait()
}
