package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// ServiceCheckCfg configures a mirror host's checks of the services it
// serves: every interval it opens a TCP connection to each TCP VIP of
// each resource its mirrors hold a copy of, on this host. A resource
// whose VIPs all fail fall checks in a row is reported unserved, and the
// controller routes it to other copies until rise checks in a row pass
// (without a controller: metrics only). The edges' probes cannot see a
// dead service: the decap program answers them.
type ServiceCheckCfg struct {
	Interval Duration `yaml:"interval"` // default 5s
	Timeout  Duration `yaml:"timeout"`  // default 1s, below interval
	Fall     int      `yaml:"fall"`     // default 3
	Rise     int      `yaml:"rise"`     // default 2
	Disabled bool     `yaml:"disabled"`
}

// Service check defaults.
const (
	DefaultServiceCheckInterval = 5 * time.Second
	DefaultServiceCheckTimeout  = time.Second
	DefaultServiceCheckFall     = 3
	DefaultServiceCheckRise     = 2
	// serviceCheckParallel bounds the connections one round opens at once.
	serviceCheckParallel = 16
)

func (c ServiceCheckCfg) interval() time.Duration {
	return cmp.Or(time.Duration(c.Interval), DefaultServiceCheckInterval)
}
func (c ServiceCheckCfg) timeout() time.Duration {
	return cmp.Or(time.Duration(c.Timeout), DefaultServiceCheckTimeout)
}
func (c ServiceCheckCfg) fall() int { return cmp.Or(c.Fall, DefaultServiceCheckFall) }
func (c ServiceCheckCfg) rise() int { return cmp.Or(c.Rise, DefaultServiceCheckRise) }

func (c ServiceCheckCfg) validate() error {
	switch {
	case c.Interval < 0:
		return errors.New("service_check.interval: negative")
	case c.Timeout < 0:
		return errors.New("service_check.timeout: negative")
	case c.timeout() >= c.interval():
		return fmt.Errorf("service_check.timeout: %v must be below service_check.interval %v", c.timeout(), c.interval())
	case c.Fall < 0:
		return errors.New("service_check.fall: negative")
	case c.Rise < 0:
		return errors.New("service_check.rise: negative")
	}
	return nil
}

// Results of one service check (edge_service_checks_total{result}).
const (
	checkOK      = "ok"
	checkRefused = "refused"
	checkTimeout = "timeout"
	checkError   = "error"
)

var checkResults = []string{checkOK, checkRefused, checkTimeout, checkError}

// serviceChecker tracks whether this host's services answer, per
// resource, with rise/fall hysteresis. A resource starts served: a
// restarted agent does not pull its copies out of the routes before it
// has checked them fall times.
type serviceChecker struct {
	cfg  ServiceCheckCfg
	dial func(ctx context.Context, addr netip.AddrPort) error
	// localAddrs lists this namespace's addresses, once per round.
	localAddrs func() map[netip.Addr]bool
	count      func(result string)

	mu      sync.Mutex
	targets map[pmaps.ResourceID][]netip.AddrPort
	state   map[pmaps.ResourceID]*checkState
}

type checkState struct {
	unserved bool
	streak   int // checks in a row that disagree with the current verdict
}

func newServiceChecker(cfg ServiceCheckCfg, count func(string)) *serviceChecker {
	if count == nil {
		count = func(string) {}
	}
	return &serviceChecker{cfg: cfg, dial: dialTCP, localAddrs: interfaceAddrs, count: count,
		targets: map[pmaps.ResourceID][]netip.AddrPort{}, state: map[pmaps.ResourceID]*checkState{}}
}

// dialTCP opens and closes one TCP connection to addr.
func dialTCP(ctx context.Context, addr netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	return c.Close()
}

// interfaceAddrs is the set of addresses assigned in this network
// namespace. A VIP that is not among them is served somewhere this host
// cannot see (a pod's namespace behind a route, another box): checking it
// from here would measure the route, so it is not checked.
func interfaceAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, ad := range addrs {
		if p, err := netip.ParsePrefix(ad.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

// setTargets replaces the resources to check and their TCP VIPs;
// resources no longer listed are forgotten.
func (s *serviceChecker) setTargets(t map[pmaps.ResourceID][]netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = t
	for r := range s.state {
		if _, ok := t[r]; !ok {
			delete(s.state, r)
		}
	}
}

// unserved returns the resources whose service does not answer, sorted.
func (s *serviceChecker) unserved() []pmaps.ResourceID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pmaps.ResourceID
	for r, st := range s.state {
		if st.unserved {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// checkOnce checks every target once, at most serviceCheckParallel
// connections at a time, and updates the verdicts.
func (s *serviceChecker) checkOnce(ctx context.Context) {
	s.mu.Lock()
	targets := s.targets
	s.mu.Unlock()
	type job struct {
		r    pmaps.ResourceID
		vips []netip.AddrPort
	}
	var jobs []job
	addrs := s.localAddrs()
	for _, r := range slices.Sorted(maps.Keys(targets)) {
		var local []netip.AddrPort
		for _, v := range targets[r] {
			if addrs[v.Addr().Unmap()] {
				local = append(local, v)
			}
		}
		if len(local) > 0 {
			jobs = append(jobs, job{r, local})
		}
	}
	ok := make([]bool, len(jobs))
	sem := make(chan struct{}, serviceCheckParallel)
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// One VIP answering is enough: the service runs; a VIP that
			// does not is a listener or address problem the metrics show.
			for _, v := range j.vips {
				if s.checkVIP(ctx, v) {
					ok[i] = true
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // cancelled checks say nothing about the services
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, j := range jobs {
		if _, still := s.targets[j.r]; !still {
			continue
		}
		st := s.state[j.r]
		if st == nil {
			st = &checkState{}
			s.state[j.r] = st
		}
		s.observe(st, ok[i])
	}
}

// observe moves a verdict after fall failures or rise passes in a row.
func (s *serviceChecker) observe(st *checkState, ok bool) {
	if ok != st.unserved { // agrees with the verdict
		st.streak = 0
		return
	}
	st.streak++
	if (st.unserved && st.streak >= s.cfg.rise()) || (!st.unserved && st.streak >= s.cfg.fall()) {
		st.unserved, st.streak = !st.unserved, 0
	}
}

func (s *serviceChecker) checkVIP(ctx context.Context, v netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout())
	defer cancel()
	err := s.dial(ctx, v)
	switch {
	case err == nil:
		s.count(checkOK)
		return true
	case errors.Is(err, syscall.ECONNREFUSED):
		s.count(checkRefused)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		s.count(checkTimeout)
	default:
		s.count(checkError)
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// run checks every interval until ctx ends.
func (s *serviceChecker) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkOnce(ctx)
		}
	}
}

// serviceTargets lists, per resource held by a mirror this host serves
// (up or not: a copy must not be routed to while its service is dead),
// the resource's TCP VIPs. What a mirror holds comes from the controller;
// in a static file, the resources routed to it.
func serviceTargets(c *Compiled, hosted map[pmaps.MirrorID]hostedMirror) map[pmaps.ResourceID][]netip.AddrPort {
	out := map[pmaps.ResourceID][]netip.AddrPort{}
	if c == nil {
		return out
	}
	held := map[pmaps.ResourceID]bool{}
	for id := range hosted {
		for _, r := range c.MirrorResources[id] {
			held[r] = true
		}
		if len(c.MirrorResources[id]) == 0 {
			for k, ws := range c.Routes {
				if _, ok := ws[id]; ok {
					held[k.Resource] = true
				}
			}
		}
	}
	for v, o := range c.VIPs {
		if held[o.Resource] && v.Proto == pmaps.TCP {
			out[o.Resource] = append(out[o.Resource], netip.AddrPortFrom(v.Addr, v.Port))
		}
	}
	for _, vs := range out {
		slices.SortFunc(vs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	}
	return out
}
