package probe

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// Coords keeps a Vivaldi network coordinate per node (edges and mirrors)
// from observed RTTs, so the controller can estimate the RTT of pairs nobody
// probes and shortlist, per client region, the few mirrors worth probing
// directly. It is safe for concurrent use.
//
// Unlike Serf, where each node updates only its own coordinate, Coords runs
// centrally: an observation of a↔b updates both ends, since RTTs are
// symmetric to within a fraction of a percent on real city matrices.
type Coords struct {
	cfg   *coordinate.Config
	mu    sync.Mutex
	nodes map[string]*coordinate.Client
}

// NewCoords returns an empty coordinate system with Serf's defaults
// (8 dimensions plus height, median-of-3 latency filter).
func NewCoords() *Coords {
	return &Coords{cfg: coordinate.DefaultConfig(), nodes: map[string]*coordinate.Client{}}
}

// client returns node's Vivaldi client, creating it at a small offset from
// the origin derived from the name: nodes that all start at the origin make
// Serf draw a random direction from the global source, which would make a
// replay irreproducible.
func (c *Coords) client(node string) (*coordinate.Client, error) {
	if cl, ok := c.nodes[node]; ok {
		return cl, nil
	}
	cl, err := coordinate.NewClient(c.cfg)
	if err != nil {
		return nil, fmt.Errorf("vivaldi client for %q: %w", node, err)
	}
	co := coordinate.NewCoordinate(c.cfg)
	h := fnv.New64a()
	h.Write([]byte(node))
	x := h.Sum64()
	for i := range co.Vec {
		// ±5 µs per dimension: far below any real RTT, enough to break ties.
		co.Vec[i] = (float64(x>>(i*8)&0xff) - 127.5) / 127.5 * 5e-6
	}
	if err := cl.SetCoordinate(co); err != nil {
		return nil, fmt.Errorf("vivaldi client for %q: %w", node, err)
	}
	c.nodes[node] = cl
	return cl, nil
}

// Observe records an RTT measured between a and b.
func (c *Coords) Observe(a, b string, rtt time.Duration) error {
	if a == b {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ca, err := c.client(a)
	if err != nil {
		return err
	}
	cb, err := c.client(b)
	if err != nil {
		return err
	}
	coA, coB := ca.GetCoordinate(), cb.GetCoordinate()
	if _, err := ca.Update(b, coB, rtt); err != nil {
		return fmt.Errorf("vivaldi update %s→%s: %w", a, b, err)
	}
	if _, err := cb.Update(a, coA, rtt); err != nil {
		return fmt.Errorf("vivaldi update %s→%s: %w", b, a, err)
	}
	return nil
}

// Estimate returns the coordinate distance between a and b, false when
// either has never been observed.
func (c *Coords) Estimate(a, b string) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ca, okA := c.nodes[a]
	cb, okB := c.nodes[b]
	if !okA || !okB {
		return 0, false
	}
	return ca.GetCoordinate().DistanceTo(cb.GetCoordinate()), true
}

// Shortlist returns the k candidates nearest to from by coordinates, nearest
// first. Candidates never observed sort last (in the given order), so a new
// mirror still gets probed once the shortlist has room.
func (c *Coords) Shortlist(from string, candidates []string, k int) []string {
	type cand struct {
		name  string
		d     time.Duration
		known bool
		pos   int
	}
	cs := make([]cand, 0, len(candidates))
	for i, m := range candidates {
		d, ok := c.Estimate(from, m)
		cs = append(cs, cand{m, d, ok, i})
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		switch {
		case a.known != b.known:
			if a.known {
				return -1
			}
			return 1
		case a.known && a.d != b.d:
			if a.d < b.d {
				return -1
			}
			return 1
		}
		return a.pos - b.pos
	})
	out := make([]string, 0, min(k, len(cs)))
	for _, x := range cs[:min(k, len(cs))] {
		out = append(out, x.name)
	}
	return out
}
