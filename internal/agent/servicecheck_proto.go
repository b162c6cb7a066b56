package agent

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// httpChecker runs the HTTP form of the service check (service_check.http).
type httpChecker struct {
	path   string
	lo, hi int             // accepted statuses
	ports  map[uint16]bool // port → TLS
	client *http.Client
}

func newHTTPChecker(c HTTPCheckCfg) *httpChecker {
	lo, hi, _ := c.expect() // validated with the configuration
	h := &httpChecker{path: c.Path, lo: lo, hi: hi, ports: map[uint16]bool{}}
	if h.path == "" {
		h.path = "/"
	}
	for _, p := range c.Ports {
		h.ports[uint16(p)] = false
	}
	for _, p := range c.TLSPorts {
		h.ports[uint16(p)] = true
	}
	h.client = &http.Client{
		Transport: &http.Transport{
			// Every check opens its own connection, as a new client would:
			// a pooled one could outlive the listener it tests.
			DisableKeepAlives: true,
			// The check is whether the service answers, not whether its
			// certificate names a VIP (it names the service's DNS name).
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
			DialContext:     (&net.Dialer{}).DialContext,
			Proxy:           nil, // never through an environment proxy: the VIP is local
		},
		// A redirect is an answer (3xx is accepted by default): not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return h
}

// get sends one GET to the VIP and checks the status; the caller's ctx
// bounds it.
func (h *httpChecker) get(ctx context.Context, v netip.AddrPort, useTLS bool) error {
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	url := scheme + "://" + net.JoinHostPort(v.Addr().String(), strconv.Itoa(int(v.Port()))) + h.path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "premirror-service-check")
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	// Read a little of the body so a well-behaved server does not see a
	// reset; the status is the verdict.
	_, _ = io.CopyN(io.Discard, resp.Body, 4096)
	resp.Body.Close()
	if resp.StatusCode < h.lo || resp.StatusCode > h.hi {
		return fmt.Errorf("%w: %d from %s", errBadStatus, resp.StatusCode, url)
	}
	return nil
}

// udpChecker runs the UDP form of the service check (service_check.udp).
type udpChecker struct {
	ports   map[uint16]bool
	payload []byte
}

func newUDPChecker(c UDPCheckCfg) *udpChecker {
	u := &udpChecker{ports: map[uint16]bool{}}
	u.payload, _ = hex.DecodeString(c.Send) // validated with the configuration
	for _, p := range c.Ports {
		u.ports[uint16(p)] = true
	}
	return u
}

// probe sends the payload from a connected socket and waits, until ctx's
// deadline, for any datagram back; the kernel reports an ICMP port
// unreachable to a connected socket as ECONNREFUSED.
func (u *udpChecker) probe(ctx context.Context, v netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", v.String())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) }) // cancelled before the deadline
	defer stop()
	if _, err := c.Write(u.payload); err != nil {
		return err
	}
	var buf [512]byte // the reply's content is not judged: a truncated read is fine
	if _, err := c.Read(buf[:]); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}
