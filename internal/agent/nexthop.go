package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nexthopDebounce is the longest a route, neighbour or link change waits
// before the router's next-hop cache is invalidated: changes arriving
// together (a link flap withdraws many routes) cost one bump, and a
// neighbour table churning on a busy node costs at most 20 bumps a second.
const nexthopDebounce = 50 * time.Millisecond

// nudValid is the kernel's NUD_VALID: the neighbour states in which
// bpf_fib_lookup answers with the neighbour's MAC instead of NO_NEIGH.
const nudValid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
	netlink.NUD_PROBE | netlink.NUD_STALE | netlink.NUD_DELAY

// errSubscriptionLost means the kernel closed a netlink subscription (for
// example after its socket buffer overflowed): events may have been missed.
var errSubscriptionLost = errors.New("netlink subscription lost")

// generationBumper is the router's side of the watcher (maps.Router).
type generationBumper interface {
	BumpNextHopGeneration() (uint32, error)
}

// nexthopWatcher invalidates the router's next-hop cache when the kernel's
// routes, policy routing rules, neighbours or links change, so a new
// neighbour MAC, route or rule takes effect within nexthopDebounce rather
// than the cache TTL. The TTL remains the backstop while no agent runs.
type nexthopWatcher struct {
	r        generationBumper
	ns       *netns.NsHandle // namespace of the router's interfaces; nil: the calling thread's
	debounce time.Duration
	log      *slog.Logger
	bumps    prometheus.Counter

	// neighbours: what each neighbour meant to a FIB lookup when last
	// seen, so state churn (REACHABLE -> STALE -> DELAY) that changes
	// neither its MAC nor its validity does not invalidate the cache.
	neighbours map[neighKey]neighVal
}

type neighKey struct {
	link int
	ip   netip.Addr
}

type neighVal struct {
	mac   string
	valid bool
}

func newNexthopWatcher(r generationBumper, ns *netns.NsHandle, log *slog.Logger, bumps prometheus.Counter) *nexthopWatcher {
	return &nexthopWatcher{r: r, ns: ns, debounce: nexthopDebounce, log: log, bumps: bumps,
		neighbours: map[neighKey]neighVal{}}
}

// run watches until ctx ends, resubscribing (after a bump, since events
// may have been lost) whenever the kernel drops a subscription.
func (w *nexthopWatcher) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("next-hop watch interrupted; cached next hops expire within their TTL until it resumes",
			"err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watch runs one set of subscriptions until ctx ends or one is lost.
func (w *nexthopWatcher) watch(ctx context.Context) (err error) {
	done := make(chan struct{})
	routes := make(chan netlink.RouteUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 256)
	links := make(chan netlink.LinkUpdate, 16)
	rules := make(chan struct{}, 16)
	lost := make(chan error, 4)
	cb := func(err error) {
		select {
		case lost <- err:
		default:
		}
	}
	var started []func()
	// Stop the subscriptions and wait for their goroutines: each closes
	// its channel once its socket is closed.
	defer func() {
		close(done)
		for _, drain := range started {
			drain()
		}
	}()
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: w.ns, ErrorCallback: cb}); err != nil {
		return fmt.Errorf("subscribe to routes: %w", err)
	}
	started = append(started, func() {
		for range routes {
		}
	})
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{Namespace: w.ns, ErrorCallback: cb}); err != nil {
		return fmt.Errorf("subscribe to neighbours: %w", err)
	}
	started = append(started, func() {
		for range neighs {
		}
	})
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: w.ns, ErrorCallback: cb}); err != nil {
		return fmt.Errorf("subscribe to links: %w", err)
	}
	started = append(started, func() {
		for range links {
		}
	})
	if err := subscribeRules(w.ns, rules, done, cb); err != nil {
		return fmt.Errorf("subscribe to routing rules: %w", err)
	}
	started = append(started, func() {
		for range rules {
		}
	})
	// Whatever changed before the subscriptions existed is covered now.
	clear(w.neighbours)
	w.bump("subscribed")

	var fire <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// The first change of a burst arms the timer and later ones ride on
	// it: every change is followed by a bump within w.debounce.
	arm := func() {
		if fire == nil {
			timer = time.NewTimer(w.debounce)
			fire = timer.C
		}
	}
	lostErr := func(what string) error {
		select {
		case err := <-lost:
			return fmt.Errorf("%w (%s): %w", errSubscriptionLost, what, err)
		default:
			return fmt.Errorf("%w (%s)", errSubscriptionLost, what)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-routes:
			if !ok {
				w.bump("resubscribe")
				return lostErr("routes")
			}
			arm()
		case u, ok := <-neighs:
			if !ok {
				w.bump("resubscribe")
				return lostErr("neighbours")
			}
			if w.neighbourChanged(u) {
				arm()
			}
		case _, ok := <-links:
			if !ok {
				w.bump("resubscribe")
				return lostErr("links")
			}
			arm()
		case _, ok := <-rules:
			if !ok {
				w.bump("resubscribe")
				return lostErr("routing rules")
			}
			arm()
		case <-fire:
			fire, timer = nil, nil
			w.bump("change")
		}
	}
}

// subscribeRules sends on ch whenever an IPv4 or IPv6 policy routing rule
// or a nexthop object is added, replaced or removed in namespace ns (nil:
// the calling thread's), until done is closed; then, or when the socket fails (reported to cb), it
// closes ch. vishvananda/netlink has no rule subscription: this is its
// route subscription's pattern on the rule multicast groups. A rule
// update's content does not matter: any change can move a FIB lookup.
func subscribeRules(ns *netns.NsHandle, ch chan<- struct{}, done <-chan struct{}, cb func(error)) error {
	var s *nl.NetlinkSocket
	var err error
	if ns == nil {
		s, err = nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_NEXTHOP)
	} else {
		s, err = nl.SubscribeAt(*ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_NEXTHOP)
	}
	if err != nil {
		return err
	}
	go func() {
		<-done
		s.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, from, err := s.Receive()
			if err != nil {
				select {
				case <-done: // closed on purpose
				default:
					cb(fmt.Errorf("receive: %w", err))
				}
				return
			}
			if from.Pid != nl.PidKernel {
				continue
			}
			for _, m := range msgs {
				switch m.Header.Type {
				case unix.RTM_NEWRULE, unix.RTM_DELRULE,
					// A nexthop object replaced or removed: with
					// net.ipv4.nexthop_compat_mode=0 the routes using it
					// are not notified, yet their FIB answer changed.
					unix.RTM_NEWNEXTHOP, unix.RTM_DELNEXTHOP:
					select {
					case ch <- struct{}{}:
					default: // a change is already pending
					}
				}
			}
		}
	}()
	return nil
}

// neighbourChanged reports whether u can change a FIB lookup's answer: a
// new MAC, or the neighbour becoming valid or invalid.
func (w *nexthopWatcher) neighbourChanged(u netlink.NeighUpdate) bool {
	n := u.Neigh
	if n.Family != netlink.FAMILY_V4 && n.Family != netlink.FAMILY_V6 {
		return false // bridge FDB entries
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return true
	}
	k := neighKey{n.LinkIndex, ip.Unmap()}
	old, seen := w.neighbours[k]
	if u.Type == unix.RTM_DELNEIGH {
		delete(w.neighbours, k)
		return !seen || old.valid
	}
	v := neighVal{mac: string(n.HardwareAddr), valid: n.State&nudValid != 0}
	w.neighbours[k] = v
	return !seen || old != v
}

func (w *nexthopWatcher) bump(why string) {
	gen, err := w.r.BumpNextHopGeneration()
	if err != nil {
		w.log.Error("next-hop cache not invalidated", "why", why, "err", err)
		return
	}
	w.bumps.Inc()
	w.log.Debug("next-hop cache invalidated", "why", why, "generation", gen)
}
