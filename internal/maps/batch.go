package maps

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
)

// batchChunk is how many entries one BPF_MAP_LOOKUP_BATCH call moves.
const batchChunk = 4096

// forEach walks a hash or array map with batch lookups (two orders of
// magnitude fewer syscalls than get-next-key iteration on 1M sessions).
// For per-CPU maps, vals holds cpus values per key. fn returning false stops.
func forEach[K, V any](m *ebpf.Map, cpus int, fn func(k *K, v []V) bool) error {
	var cursor ebpf.MapBatchCursor
	keys := make([]K, batchChunk)
	vals := make([]V, batchChunk*cpus)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if !fn(&keys[i], vals[i*cpus:(i+1)*cpus]) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("batch lookup %s: %w", m, err)
		}
	}
}

// unpin makes a spec load without bpffs (tests, benchmarks, inspect -x).
func unpin(spec *ebpf.CollectionSpec) {
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
}

// collectionOptions pins under opts.PinDir (creating it), or turns pinning
// off in spec when there is none.
func collectionOptions(spec *ebpf.CollectionSpec, opts Options) (*ebpf.CollectionOptions, error) {
	copts := &ebpf.CollectionOptions{}
	if opts.PinDir == "" {
		unpin(spec)
		return copts, nil
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	copts.Maps.PinPath = opts.PinDir
	return copts, nil
}
