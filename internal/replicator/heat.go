package replicator

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Extent is a run of blocks.
type Extent = wire.Extent

// heatGrain is the granularity of read heat: 256 blocks (1 MiB at 4 KiB).
const heatGrain = 256

// heatHalfLife is how fast old reads stop counting.
const heatHalfLife = time.Hour

// heatMap counts reads per grain with exponential decay. Instead of
// decaying every counter, each read adds 2^(age/halfLife) relative to a
// base time, which orders counters exactly as decayed counts would; the
// base moves forward (rescaling all counters) before weights overflow.
type heatMap struct {
	mu     sync.Mutex
	counts []float64
	base   time.Time
	now    func() time.Time
}

func newHeatMap(blocks uint64) *heatMap {
	return &heatMap{counts: make([]float64, (blocks+heatGrain-1)/heatGrain), base: time.Now(), now: time.Now}
}

func (h *heatMap) record(block, n uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	age := h.now().Sub(h.base).Seconds() / heatHalfLife.Seconds()
	if age > 500 {
		scale := math.Exp2(-age)
		for i := range h.counts {
			h.counts[i] *= scale
		}
		h.base, age = h.now(), 0
	}
	w := math.Exp2(age)
	for g := block / heatGrain; g <= (block+max(n, 1)-1)/heatGrain && g < uint64(len(h.counts)); g++ {
		h.counts[g] += w
	}
}

func (h *heatMap) hot(k int, extentBlocks uint64) []Extent {
	if extentBlocks < heatGrain {
		extentBlocks = heatGrain
	}
	per := extentBlocks / heatGrain
	h.mu.Lock()
	type ext struct {
		i    uint64
		heat float64
	}
	var all []ext
	for i := uint64(0); i*per < uint64(len(h.counts)); i++ {
		var s float64
		for g := i * per; g < min((i+1)*per, uint64(len(h.counts))); g++ {
			s += h.counts[g]
		}
		if s > 0 {
			all = append(all, ext{i, s})
		}
	}
	h.mu.Unlock()
	sort.Slice(all, func(a, b int) bool {
		if all[a].heat != all[b].heat {
			return all[a].heat > all[b].heat
		}
		return all[a].i < all[b].i
	})
	if len(all) > k {
		all = all[:k]
	}
	out := make([]Extent, len(all))
	for j, e := range all {
		out[j] = Extent{Start: e.i * per * heatGrain, Count: per * heatGrain}
	}
	return out
}
