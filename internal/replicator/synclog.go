package replicator

import (
	"slices"
)

// The sync log makes the quorum write path durable at a mirror before it
// acknowledges: each synchronous write is appended (data, version,
// checksum) and synced, then applied to the image. Replay after a crash
// applies every logged write again under the newest-version-wins rule,
// which makes it idempotent; Flush empties the log once the image and
// versions are durable.

// replaySyncLog applies writes logged before a crash.
func (v *Volume) replaySyncLog() error {
	j, err := openExistingJournal(syncLogPath(v.metaDir))
	if j == nil || err != nil {
		return err
	}
	defer j.Close()
	if len(j.staged) == 0 {
		return nil
	}
	blocks := make([]uint64, 0, len(j.staged))
	for b := range j.staged {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	items := make([]recvItem, 0, len(blocks))
	buf := make([]byte, v.bs)
	for _, b := range blocks {
		sb := j.staged[b]
		data, err := j.read(b, sb, v.bs, buf)
		if err != nil {
			return err
		}
		it := recvItem{block: b, ver: sb.ver}
		if !sb.zero {
			it.data = append([]byte(nil), data...)
		}
		items = append(items, it)
	}
	v.log.Info("replaying synchronous writes after a crash", "blocks", len(items))
	v.io.Lock()
	err = v.applyLocked(items, false)
	v.io.Unlock()
	if err != nil {
		return err
	}
	if err := v.Flush(); err != nil {
		return err
	}
	return j.reset()
}
