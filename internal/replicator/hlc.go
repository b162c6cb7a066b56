package replicator

import (
	"hash/fnv"
	"math"
	"sync"
	"time"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Version is a block version: epoch, hybrid logical clock and site.
type Version = wire.Version

// Clock is a hybrid logical clock (Kulkarni et al.): 48 bits of Unix
// milliseconds and a 16-bit logical counter. It never goes backwards, stays
// close to wall time, and moves past every remote clock it has seen, so a
// write that causally follows another always gets a larger version even
// across skewed hosts.
type Clock struct {
	mu   sync.Mutex
	last uint64
	site uint32
	now  func() time.Time
}

// NewClock returns a clock for site.
func NewClock(site uint32) *Clock { return &Clock{site: site, now: time.Now} }

// Site returns the clock's site id.
func (c *Clock) Site() uint32 { return c.site }

func (c *Clock) physical() uint64 { return uint64(c.now().UnixMilli()) << 16 }

// Now returns a fresh version for epoch.
func (c *Clock) Now(epoch uint64) Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked(epoch)
}

func (c *Clock) nowLocked(epoch uint64) Version {
	p := c.physical()
	switch {
	case p > c.last:
		c.last = p
	case c.last < math.MaxUint64:
		c.last++
		// else stay: wrapping to 0 would order the version before all
		// others (2^64-1 is year 10895, reached only by a garbage clock).
	}
	return Version{Epoch: uint32(epoch), Clock: c.last, Site: c.site}
}

// After returns a fresh version for epoch newer than prev, the version
// the block being written has now. A write follows the one it replaces,
// and the wall clock alone does not order them when it stepped back
// since (the clock is not persisted across restarts): mirrors, which
// keep the newest version, would keep the older data.
func (c *Clock) After(epoch uint64, prev Version) Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	if uint64(prev.Epoch) == epoch && prev.Clock > c.last {
		c.last = prev.Clock
	}
	return c.nowLocked(epoch)
}

// Observe moves the clock past a remote version, whatever the distance,
// so that causality holds (the receiver tells the operator when a version
// is far ahead of the wall clock: clockAheadWarn).
func (c *Clock) Observe(v Version) {
	c.mu.Lock()
	if v.Clock > c.last {
		c.last = v.Clock
	}
	c.mu.Unlock()
}

// Ahead is how far the clock runs ahead of the wall clock: zero while it
// follows wall time; after it observed a version from a clock ahead of
// ours (a peer whose time is wrong), every version this node issues is
// that far ahead too, and wins against concurrent writes of nodes that
// have not seen it, until the wall clock catches up.
func (c *Clock) Ahead() time.Duration {
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	return c.aheadOf(last)
}

// aheadOf is how far the hybrid clock value hlc is ahead of the wall clock.
func (c *Clock) aheadOf(hlc uint64) time.Duration {
	d := int64(hlc>>16) - c.now().UnixMilli()
	if d <= 0 {
		return 0
	}
	return time.Duration(d) * time.Millisecond
}

// clockAheadWarn: a received version whose clock is further ahead of
// ours than this is logged (NTP keeps hosts within milliseconds; a minute
// is a wrong clock, not skew).
const clockAheadWarn = time.Minute

// SiteID derives a site id from a node name when none is configured.
func SiteID(node string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(node))
	if s := h.Sum32(); s != 0 {
		return s
	}
	return 1
}
