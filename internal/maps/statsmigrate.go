package maps

import (
	"errors"
	"fmt"
	"os"
	"reflect"

	"github.com/cilium/ebpf"
)

// Reason counters (pm_stats, pm_decap_stats) are per-CPU arrays of one
// struct of uint64 counters, and new counters are only ever appended to
// it. A build that appended some finds the previous build's map pinned
// with a shorter value: instead of refusing it (ErrIncompatiblePin, as for
// maps that hold forwarding state), the load unpins it, creates the new
// map and copies every CPU's old counters into the first fields, so the
// exported counters keep counting. What the old program counts between
// the copy and the attachment of the new one (link.Update, milliseconds
// later) is lost, and the Prometheus counters see at most that dip.

// unpinned is a pinned map this build cannot reuse, unpinned and still
// open while the new collection loads: repin puts it back.
type unpinned struct {
	old  *ebpf.Map
	path string
}

// repin removes whatever the load pinned at the path (the new map, or a
// map a failed load created) and pins the old map there again.
func (u *unpinned) repin() error {
	if err := os.Remove(u.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pin the old %s back: %w", u.path, err)
	}
	if err := u.old.Pin(u.path); err != nil {
		return fmt.Errorf("pin the old %s back: %w", u.path, err)
	}
	return nil
}

// restore is repin after a failed carry-over into the new map: err, and
// any failure to pin the old map back.
func (u *unpinned) restore(err error) error {
	return errors.Join(fmt.Errorf("migrate %s: %w", u.path, err), u.repin())
}

// statsMigration is a pending copy of one pinned counter map.
type statsMigration struct{ unpinned }

// prepareStatsMigration unpins the counter map ms.Name under pinDir when it
// is an older, shorter layout of ms. nil: nothing to migrate (no pin, a
// compatible one, or an incompatible one that is not a prefix of ms, which
// the load then refuses as before).
func prepareStatsMigration(ms *ebpf.MapSpec, pinDir string) (*statsMigration, error) {
	m, path, err := incompatiblePinIn(ms, pinDir)
	if m == nil || err != nil {
		return nil, err
	}
	if m.Type() != ms.Type || ms.Type != ebpf.PerCPUArray || m.KeySize() != ms.KeySize ||
		m.MaxEntries() != ms.MaxEntries || m.ValueSize() >= ms.ValueSize || m.ValueSize()%8 != 0 {
		m.Close()
		return nil, nil
	}
	if err := m.Unpin(); err != nil {
		m.Close()
		return nil, fmt.Errorf("migrate %s: unpin the old map: %w", ms.Name, err)
	}
	return &statsMigration{unpinned{old: m, path: path}}, nil
}

// finish copies the old counters into m, the new map; on failure the old
// map is pinned back.
func (mg *statsMigration) finish(m *ebpf.Map) error {
	if mg == nil {
		return nil
	}
	defer mg.old.Close()
	if err := copyCounters(mg.old, m); err != nil {
		return mg.restore(err)
	}
	return nil
}

// abort pins the old map back after the new collection failed to load.
func (mg *statsMigration) abort() error {
	if mg == nil {
		return nil
	}
	defer mg.old.Close()
	return mg.repin()
}

// pinMigrations are the two carry-overs a program's load does: its chain
// map (an upgrade from the one-slot map: the operator's programs) and its
// reason counters (an upgrade from a build with fewer).
type pinMigrations struct {
	chain *chainMigration
	stats *statsMigration
}

// preparePinMigrations unpins what the load of spec cannot reuse among
// the chain map chainName and the counter map statsName under pinDir.
func preparePinMigrations(spec *ebpf.CollectionSpec, pinDir, chainName, statsName string) (*pinMigrations, error) {
	cm, err := prepareChainMigration(spec.Maps[chainName], pinDir)
	if err != nil {
		return nil, err
	}
	sm, err := prepareStatsMigration(spec.Maps[statsName], pinDir)
	if err != nil {
		return nil, errors.Join(err, cm.abort())
	}
	return &pinMigrations{chain: cm, stats: sm}, nil
}

// abort pins both old maps back after the load failed.
func (p *pinMigrations) abort() error { return errors.Join(p.chain.abort(), p.stats.abort()) }

// finish carries both over into the loaded maps, before the caller
// attaches the new program (no packet misses the operator's peer).
func (p *pinMigrations) finish(next, stats *ebpf.Map) error {
	if err := p.chain.finish(next); err != nil {
		return errors.Join(err, p.stats.abort())
	}
	return p.stats.finish(stats)
}

// copyCounters writes every entry's per-CPU uint64 counters of from into
// the first counters of the same entry of to.
func copyCounters(from, to *ebpf.Map) error {
	u64 := reflect.TypeFor[uint64]()
	oldT := reflect.SliceOf(reflect.ArrayOf(int(from.ValueSize()/8), u64))
	newT := reflect.SliceOf(reflect.ArrayOf(int(to.ValueSize()/8), u64))
	for k := range from.MaxEntries() {
		oldV := reflect.New(oldT)
		if err := from.Lookup(k, oldV.Interface()); err != nil {
			return fmt.Errorf("read entry %d: %w", k, err)
		}
		newV := reflect.New(newT)
		if err := to.Lookup(k, newV.Interface()); err != nil {
			return fmt.Errorf("read new entry %d: %w", k, err)
		}
		o, n := oldV.Elem(), newV.Elem()
		if o.Len() != n.Len() {
			return fmt.Errorf("entry %d: %d CPUs in the old map, %d in the new", k, o.Len(), n.Len())
		}
		for cpu := range o.Len() {
			reflect.Copy(n.Index(cpu), o.Index(cpu))
		}
		if err := to.Put(k, n.Interface()); err != nil {
			return fmt.Errorf("write entry %d: %w", k, err)
		}
	}
	return nil
}
