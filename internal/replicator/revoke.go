package replicator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// revocationSweep is how often a node checks its live sessions' peers
// against the CRL current now. The handshake checks the CRL too, but
// sync-write and read sessions (and the pooled links that carry them)
// stay open for as long as the peers run: without the sweep a node whose
// certificate is revoked would keep writing to a mirror through a session
// it opened before. A sweep stats the TLS files once and compares a few
// certificates: nothing next to the sessions' own traffic.
const revocationSweep = 2 * time.Second

// liveLinks are the authenticated links of a node, accepted or dialed.
type liveLinks struct {
	mu    sync.Mutex
	links map[*link]struct{}
}

// add enters l in the sweep until l closes.
func (s *liveLinks) add(l *link) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.links == nil {
		s.links = map[*link]struct{}{}
	}
	s.links[l] = struct{}{}
	l.untrack = func() {
		s.mu.Lock()
		delete(s.links, l)
		s.mu.Unlock()
	}
}

func (s *liveLinks) snapshot() []*link {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*link, 0, len(s.links))
	for l := range s.links {
		out = append(out, l)
	}
	return out
}

// revocationLoop ends every live session whose peer's certificate chain
// the CRL lists, in either direction: a mirror stops taking a revoked
// primary's writes, a primary stops sending to a revoked mirror. Closing
// the connection fails the session's reads and writes; reconnecting is
// refused by the handshake.
func (n *Node) revocationLoop(ctx context.Context) {
	every := revocationSweep
	if n.hooks.revokeEvery > 0 {
		every = n.hooks.revokeEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.sweepRevoked()
	}
}

func (n *Node) sweepRevoked() {
	links := n.live.snapshot()
	if len(links) == 0 {
		return
	}
	revoked := n.tlsSrc.Revocations()
	for _, l := range links {
		for _, c := range l.chain {
			if !revoked(c) || l.revoked.Swap(true) {
				continue
			}
			n.tlsSrc.EndedRevoked()
			n.log.Warn("replication session ended: the peer's certificate was revoked", "peer", l.peer,
				"name", c.Subject.CommonName, "serial", fmt.Sprintf("%x", c.SerialNumber), "remote", l.conn.RemoteAddr().String())
			l.conn.Close()
			break
		}
	}
}
