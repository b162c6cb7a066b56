package agent

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// ServiceCheckCfg configures a mirror host's checks of the services it
// serves: every interval it opens a TCP connection to each TCP VIP of
// each resource its mirrors hold a copy of, on this host (an HTTP GET on
// the ports HTTP lists). A resource whose VIPs all fail fall checks in a
// row is reported unserved, and the controller routes it to other copies
// until rise checks in a row pass (without a controller: metrics only).
// The edges' probes cannot see a dead service: the decap program answers
// them. UDP VIPs are checked only on the ports UDP lists, with its
// payload. Every field applies on a config reload.
type ServiceCheckCfg struct {
	Interval Duration      `yaml:"interval"` // default 5s
	Timeout  Duration      `yaml:"timeout"`  // default 1s, below interval
	Fall     int           `yaml:"fall"`     // default 3
	Rise     int           `yaml:"rise"`     // default 2
	Disabled bool          `yaml:"disabled"`
	HTTP     *HTTPCheckCfg `yaml:"http"`
	UDP      *UDPCheckCfg  `yaml:"udp"`
}

// UDPCheckCfg checks the UDP VIPs on Ports: Send (hex) goes to the VIP and
// any datagram back within the timeout passes. UDP has no generic
// question every service answers, so the operator names one (a DNS query,
// a QUIC Initial of an unsupported version, which a QUIC server answers
// with Version Negotiation); an ICMP port unreachable counts as refused.
type UDPCheckCfg struct {
	Ports []int  `yaml:"ports"`
	Send  string `yaml:"send"` // hex, 1 to 1472 bytes (one unfragmented datagram)
}

// HTTPCheckCfg turns the check of some VIP ports into an HTTP GET whose
// status must fall in Expect: a process that accepts connections but
// answers 503 (draining, its backend gone) is not serving. Ports not
// listed keep the bare TCP connection.
type HTTPCheckCfg struct {
	Path     string `yaml:"path"`      // default "/"
	Ports    []int  `yaml:"ports"`     // plain HTTP
	TLSPorts []int  `yaml:"tls_ports"` // HTTPS; the certificate is not verified (the check is of the service, not of its name)
	Expect   string `yaml:"expect"`    // status or range, default "200-399"
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
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	if err := c.UDP.validate(); err != nil {
		return err
	}
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

func (h *HTTPCheckCfg) validate() error {
	if h == nil {
		return nil
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		return fmt.Errorf("service_check.http.path: %q does not start with /", h.Path)
	}
	if len(h.Ports)+len(h.TLSPorts) == 0 {
		return errors.New("service_check.http: neither ports nor tls_ports lists a port")
	}
	seen := map[int]string{}
	if err := checkPorts("service_check.http.ports", h.Ports, seen); err != nil {
		return err
	}
	if err := checkPorts("service_check.http.tls_ports", h.TLSPorts, seen); err != nil {
		return err
	}
	if _, _, err := h.expect(); err != nil {
		return err
	}
	return nil
}

func (u *UDPCheckCfg) validate() error {
	if u == nil {
		return nil
	}
	if len(u.Ports) == 0 {
		return errors.New("service_check.udp.ports: no port listed")
	}
	if err := checkPorts("service_check.udp.ports", u.Ports, map[int]string{}); err != nil {
		return err
	}
	b, err := hex.DecodeString(u.Send)
	switch {
	case u.Send == "":
		return errors.New("service_check.udp.send: missing (the payload the service answers, in hex)")
	case err != nil:
		return fmt.Errorf("service_check.udp.send: not hex: %v", err)
	case len(b) > 1472:
		return fmt.Errorf("service_check.udp.send: %d bytes, at most 1472 (one unfragmented datagram)", len(b))
	}
	return nil
}

// checkPorts validates the ports of the list named field: each in
// 1-65535 and in no list seen (the lists' names by port) before.
func checkPorts(field string, ports []int, seen map[int]string) error {
	for i, p := range ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("%s[%d]: %d is not a port (1-65535)", field, i, p)
		}
		if other, dup := seen[p]; dup {
			return fmt.Errorf("%s[%d]: port %d is already in %s", field, i, p, other)
		}
		seen[p] = field
	}
	return nil
}

// expect parses Expect: "200", "200-299"; default 200-399.
func (h *HTTPCheckCfg) expect() (lo, hi int, err error) {
	if h.Expect == "" {
		return 200, 399, nil
	}
	a, b, isRange := strings.Cut(h.Expect, "-")
	bad := fmt.Errorf("service_check.http.expect: %q is not a status (100-599) or a range of them (200-299)", h.Expect)
	if lo, err = strconv.Atoi(strings.TrimSpace(a)); err != nil {
		return 0, 0, bad
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(strings.TrimSpace(b)); err != nil {
			return 0, 0, bad
		}
	}
	if lo < 100 || hi > 599 || lo > hi {
		return 0, 0, bad
	}
	return lo, hi, nil
}

// Results of one service check (edge_service_checks_total{result}).
const (
	checkOK        = "ok"
	checkRefused   = "refused"
	checkTimeout   = "timeout"
	checkBadStatus = "bad_status" // an HTTP check answered outside service_check.http.expect
	checkError     = "error"
)

var checkResults = []string{checkOK, checkRefused, checkTimeout, checkBadStatus, checkError}

// errBadStatus: the service answered, with a status outside expect.
var errBadStatus = errors.New("HTTP status outside service_check.http.expect")

// serviceChecker tracks whether this host's services answer, per
// resource, with rise/fall hysteresis. A resource starts served: a
// restarted agent does not pull its copies out of the routes before it
// has checked them fall times.
type serviceChecker struct {
	// dial checks one VIP (tests replace it); nil: checkService, by the
	// configuration.
	dial func(ctx context.Context, v pmaps.VIP) error
	// localAddrs lists this namespace's addresses, once per round (nil:
	// unknown).
	localAddrs func() map[netip.Addr]bool
	count      func(result string)
	changed    chan struct{} // a new configuration (run resets its ticker)

	mu      sync.Mutex
	cfg     ServiceCheckCfg
	http    *httpChecker                     // nil without service_check.http
	udp     *udpChecker                      // nil without service_check.udp
	targets map[pmaps.ResourceID][]pmaps.VIP // TCP VIPs, and UDP ones (checked on udp.ports only)
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
	s := &serviceChecker{localAddrs: interfaceAddrs, count: count, changed: make(chan struct{}, 1),
		targets: map[pmaps.ResourceID][]pmaps.VIP{}, state: map[pmaps.ResourceID]*checkState{}}
	s.setConfig(cfg)
	return s
}

// setConfig applies a (validated) configuration: the next round uses it.
// Disabling forgets every verdict, so no resource stays unserved on the
// word of checks that no longer run.
func (s *serviceChecker) setConfig(cfg ServiceCheckCfg) {
	s.mu.Lock()
	s.cfg = cfg
	s.http, s.udp = nil, nil
	if cfg.HTTP != nil {
		s.http = newHTTPChecker(*cfg.HTTP)
	}
	if cfg.UDP != nil {
		s.udp = newUDPChecker(*cfg.UDP)
	}
	if cfg.Disabled {
		clear(s.state)
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// checked reports whether a round checks v (a UDP VIP only on the ports
// service_check.udp lists).
func checked(v pmaps.VIP, u *udpChecker) bool {
	return v.Proto != pmaps.UDP || (u != nil && u.ports[v.Port])
}

// checkService checks one VIP: UDP with service_check.udp's payload; TCP with an
// HTTP GET on the ports service_check.http lists, else a connection.
func checkService(ctx context.Context, v pmaps.VIP, h *httpChecker, u *udpChecker) error {
	ap := netip.AddrPortFrom(v.Addr, v.Port)
	if v.Proto == pmaps.UDP {
		return u.probe(ctx, ap)
	}
	if h != nil {
		if tls, ok := h.ports[v.Port]; ok {
			return h.get(ctx, ap, tls)
		}
	}
	return dialTCP(ctx, ap)
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
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil // unknown: the round is skipped
	}
	out := map[netip.Addr]bool{}
	for _, ad := range addrs {
		if p, err := netip.ParsePrefix(ad.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

// setTargets replaces the resources to check and their VIPs; resources
// no longer listed are forgotten.
func (s *serviceChecker) setTargets(t map[pmaps.ResourceID][]pmaps.VIP) {
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
	targets, cfg, h, u := s.targets, s.cfg, s.http, s.udp
	s.mu.Unlock()
	if cfg.Disabled {
		return
	}
	type job struct {
		r    pmaps.ResourceID
		vips []pmaps.VIP
	}
	var jobs []job
	addrs := s.localAddrs()
	if addrs == nil {
		return // the addresses could not be read: the verdicts stand
	}
	for _, r := range slices.Sorted(maps.Keys(targets)) {
		var local []pmaps.VIP
		for _, v := range targets[r] {
			if addrs[v.Addr.Unmap()] && checked(v, u) {
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
				if s.checkVIP(ctx, v, cfg.timeout(), h, u) {
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
	if s.cfg.Disabled {
		return // disabled while the round ran
	}
	// A resource with no VIP checked here any more (its addresses left
	// the host) forgets its verdict, as when checks are disabled: none
	// stays unserved on the word of checks that no longer run.
	for r := range s.state {
		if !slices.ContainsFunc(jobs, func(j job) bool { return j.r == r }) {
			delete(s.state, r)
		}
	}
	for i, j := range jobs {
		if _, still := s.targets[j.r]; !still {
			continue // left while the round ran
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

func (s *serviceChecker) checkVIP(ctx context.Context, v pmaps.VIP, timeout time.Duration, h *httpChecker, u *udpChecker) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	if s.dial != nil {
		err = s.dial(ctx, v)
	} else {
		err = checkService(ctx, v, h, u)
	}
	switch {
	case err == nil:
		s.count(checkOK)
		return true
	case errors.Is(err, errBadStatus):
		s.count(checkBadStatus)
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
	interval := func() time.Duration {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cfg.interval()
	}
	t := time.NewTicker(interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
			t.Reset(interval())
		case <-t.C:
			s.checkOnce(ctx)
		}
	}
}

// serviceTargets lists, per resource held by a mirror this host serves
// (up or not: a copy must not be routed to while its service is dead),
// the resource's VIPs. What a mirror holds comes from the controller; in
// a static file, the resources routed to it.
func serviceTargets(c *Compiled, hosted map[pmaps.MirrorID]hostedMirror) map[pmaps.ResourceID][]pmaps.VIP {
	out := map[pmaps.ResourceID][]pmaps.VIP{}
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
		if held[o.Resource] {
			out[o.Resource] = append(out[o.Resource], v)
		}
	}
	for _, vs := range out {
		slices.SortFunc(vs, func(a, b pmaps.VIP) int {
			return cmp.Or(netip.AddrPortFrom(a.Addr, a.Port).Compare(netip.AddrPortFrom(b.Addr, b.Port)), cmp.Compare(a.Proto, b.Proto))
		})
	}
	return out
}
