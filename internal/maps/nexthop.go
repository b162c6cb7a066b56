package maps

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// Next-hop cache (pm_nexthops, pm_nexthop_ctl).
//
// pm_nexthops (per-CPU array, 2 × MaxMirrors entries, key mirror ID × 2 +
// inner-is-IPv6, value struct nexthop): written only by the router, which
// stores every successful bpf_fib_lookup toward a mirror and reuses it
// while it is fresh. Read by NextHopCache for hit and lookup counts.
//
// pm_nexthop_ctl (array, one entry, value struct nexthop_ctl): written by
// the agent — the TTL from its config, and a generation it bumps on every
// route, neighbour or link change — read by the router on every packet it
// encapsulates. An entry of another generation is never used.

// DefaultNextHopTTL is how long a cached next hop is used without a new
// FIB lookup. The agent invalidates the cache within milliseconds of any
// route, neighbour or link change, so the TTL only bounds staleness while
// no agent runs: 250 ms is about one minimum TCP retransmission timeout
// (200 ms), so a neighbour that changed MAC behind a dead agent costs a
// flow at most one retransmission. Shorter would buy little: a lookup per
// mirror, family and CPU every 250 ms is 1 in 250,000 packets at 1 Mpps.
const DefaultNextHopTTL = 250 * time.Millisecond

// MaxNextHopTTL bounds the configurable TTL: longer would let a stale next
// hop outlive an agent restart by more than a flow can bear.
const MaxNextHopTTL = 10 * time.Second

// NextHopCache is the state of the router's next-hop cache.
type NextHopCache struct {
	TTL        time.Duration // 0: cache off, every packet looks up the FIB
	Generation uint32        // bumped by the agent on route/neighbour/link changes
	Hits       uint64        // packets sent with a cached next hop, summed over CPUs
	Lookups    uint64        // successful FIB lookups stored in the cache, summed over CPUs
}

// SetNextHopTTL sets how long a cached next hop is used (rounded up to a
// millisecond); 0 turns the cache off.
func (r *Router) SetNextHopTTL(ttl time.Duration) error {
	if ttl < 0 || ttl > MaxNextHopTTL {
		return fmt.Errorf("nexthop_cache_ttl: %v out of [0, %v]", ttl, MaxNextHopTTL)
	}
	ms := uint32((ttl + time.Millisecond - 1) / time.Millisecond)
	r.nhMu.Lock()
	defer r.nhMu.Unlock()
	var v routerNexthopCtl
	if err := r.objs.PmNexthopCtl.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("read pm_nexthop_ctl: %w", err)
	}
	v.TtlMs = ms
	if err := r.objs.PmNexthopCtl.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write pm_nexthop_ctl: %w", err)
	}
	return nil
}

// BumpNextHopGeneration invalidates every cached next hop on every CPU at
// once (the next packet to each mirror looks up the FIB again) and returns
// the new generation.
func (r *Router) BumpNextHopGeneration() (uint32, error) {
	r.nhMu.Lock()
	defer r.nhMu.Unlock()
	var v routerNexthopCtl
	if err := r.objs.PmNexthopCtl.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read pm_nexthop_ctl: %w", err)
	}
	v.Generation++
	if err := r.objs.PmNexthopCtl.Put(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("write pm_nexthop_ctl: %w", err)
	}
	return v.Generation, nil
}

// NextHopCache reads the cache's settings and its hit and lookup counts.
func (r *Router) NextHopCache() (NextHopCache, error) {
	var v routerNexthopCtl
	if err := r.objs.PmNexthopCtl.Lookup(uint32(0), &v); err != nil {
		return NextHopCache{}, fmt.Errorf("read pm_nexthop_ctl: %w", err)
	}
	out := NextHopCache{TTL: time.Duration(v.TtlMs) * time.Millisecond, Generation: v.Generation}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return NextHopCache{}, err
	}
	err = forEach(r.objs.PmNexthops, cpus, func(_ *uint32, vals []routerNexthop) bool {
		for i := range vals {
			out.Hits += vals[i].Hits
			out.Lookups += vals[i].Lookups
		}
		return true
	})
	return out, err
}
