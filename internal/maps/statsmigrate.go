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

// statsMigration is a pending copy of one pinned counter map.
type statsMigration struct {
	old  *ebpf.Map
	path string
}

// prepareStatsMigration unpins the counter map ms.Name under pinDir when it
// is an older, shorter layout of ms. nil: nothing to migrate (no pin, a
// compatible one, or an incompatible one that is not a prefix of ms, which
// the load then refuses as before). The caller loads the collection, then
// calls finish with the new map, or abort if the load failed.
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
	return &statsMigration{old: m, path: path}, nil
}

// finish copies the old counters into m, the new map. On failure the old
// map is pinned again and m unpinned.
func (mg *statsMigration) finish(m *ebpf.Map) error {
	if mg == nil {
		return nil
	}
	defer mg.old.Close()
	if err := copyCounters(mg.old, m); err != nil {
		_ = m.Unpin()
		if perr := mg.old.Pin(mg.path); perr != nil {
			err = errors.Join(err, fmt.Errorf("pin the old %s back: %w", mg.path, perr))
		}
		return fmt.Errorf("migrate %s: %w", mg.path, err)
	}
	return nil
}

// abort pins the old map back after the new collection failed to load.
func (mg *statsMigration) abort() error {
	if mg == nil {
		return nil
	}
	defer mg.old.Close()
	// The failed load may have pinned a new map before failing.
	if err := os.Remove(mg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pin the old %s back: %w", mg.path, err)
	}
	if err := mg.old.Pin(mg.path); err != nil {
		return fmt.Errorf("pin the old %s back: %w", mg.path, err)
	}
	return nil
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
