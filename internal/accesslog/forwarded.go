package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrTrustedProxies marks a trusted proxy list the format cannot use.
var ErrTrustedProxies = errors.New("bad trusted proxies")

// Forwarded says where a record's client address came from when the format
// has an X-Forwarded-For field (%{X-Forwarded-For}i, $http_x_forwarded_for).
type Forwarded uint8

// Outcomes of the X-Forwarded-For field.
const (
	// ForwardedNone: no such field, or the header was absent ("-" or
	// empty); the client is the connecting address.
	ForwardedNone Forwarded = iota
	// ForwardedUsed: the client address was taken from the header.
	ForwardedUsed
	// ForwardedUnusable: the header was present but gave no address
	// (no entry parses, or with trusted proxies the rightmost entry does
	// not); the client is the connecting address. The line is not
	// malformed.
	ForwardedUnusable
	// ForwardedUntrusted: trusted proxies are configured and the
	// connecting address is not one of them, so the header (which the
	// client itself may have written) was ignored.
	ForwardedUntrusted
)

// WithTrustedProxies returns a copy of f that believes the X-Forwarded-For
// field only on lines whose connecting address (%h) lies in one of the
// prefixes, and walks the header from the right, skipping trusted
// addresses (as Apache's mod_remoteip with RemoteIPTrustedProxy and
// Nginx's set_real_ip_from with real_ip_recursive on). An IPv4-mapped IPv6
// prefix is taken as the IPv4 prefix it maps, since addresses are unmapped
// before the comparison. With no prefixes the copy trusts the header as
// written. f itself is unchanged.
func (f *Format) WithTrustedProxies(prefixes ...netip.Prefix) (*Format, error) {
	if !f.forwarded && len(prefixes) > 0 {
		return nil, fmt.Errorf("%w: format %q has no X-Forwarded-For field (%%{X-Forwarded-For}i or $http_x_forwarded_for)", ErrTrustedProxies, f.spec)
	}
	ps := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() {
			return nil, fmt.Errorf("%w: invalid prefix %v", ErrTrustedProxies, p)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%w: %v has host bits set (%v?)", ErrTrustedProxies, p, p.Masked())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		ps = append(ps, p)
	}
	g := *f
	g.trusted = ps
	return &g, nil
}

// ParseTrustedProxies reads a comma-separated list of CIDR prefixes or
// single addresses (a single address is its own /32 or /128), the form of
// the --trusted-proxies flag.
func ParseTrustedProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%w: %q is neither a CIDR prefix nor an address", ErrTrustedProxies, s)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %v", ErrTrustedProxies, s, err)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%w: %q has host bits set (%v?)", ErrTrustedProxies, s, p.Masked())
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty list", ErrTrustedProxies)
	}
	return out, nil
}

// HasForwarded reports whether the format has an X-Forwarded-For field.
func (f *Format) HasForwarded() bool { return f.forwarded }

// TrustedProxies returns the prefixes set by WithTrustedProxies.
func (f *Format) TrustedProxies() []netip.Prefix { return append([]netip.Prefix(nil), f.trusted...) }

func (f *Format) trusts(a netip.Addr) bool {
	for _, p := range f.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// applyForwarded sets rec.Client from the header value h (rec.Client holds
// the connecting address) and records the outcome.
func (f *Format) applyForwarded(h []byte, rec *Record) {
	if len(h) == 0 || (len(h) == 1 && h[0] == '-') {
		return
	}
	if len(f.trusted) == 0 {
		// Trusted as written: the leftmost entry that is an address is
		// the one the first proxy saw connecting.
		for len(h) > 0 {
			e := h
			if i := bytes.IndexByte(h, ','); i >= 0 {
				e, h = h[:i], h[i+1:]
			} else {
				h = nil
			}
			if a, ok := parseForwardedEntry(e); ok {
				rec.Client, rec.Forwarded = a, ForwardedUsed
				return
			}
		}
		rec.Forwarded = ForwardedUnusable
		return
	}
	if !f.trusts(rec.Peer) {
		rec.Forwarded = ForwardedUntrusted
		return
	}
	// Right to left: each trusted hop vouches for the entry before it.
	// An entry that does not parse ends the walk, keeping the last good
	// address (mod_remoteip); if all are trusted, the leftmost wins.
	var last netip.Addr
	for len(h) > 0 {
		e := h
		if i := bytes.LastIndexByte(h, ','); i >= 0 {
			e, h = h[i+1:], h[:i]
		} else {
			h = nil
		}
		a, ok := parseForwardedEntry(e)
		if !ok {
			break
		}
		last = a
		if !f.trusts(a) {
			break
		}
	}
	if !last.IsValid() {
		rec.Forwarded = ForwardedUnusable
		return
	}
	rec.Client, rec.Forwarded = last, ForwardedUsed
}

// parseForwardedEntry reads one X-Forwarded-For entry: an address with
// optional surrounding blanks, an IPv4 address with a port (1.2.3.4:80),
// or a bracketed IPv6 address with or without a port ([2001:db8::1]:443).
// A bare IPv6 address cannot carry a port (the colons are ambiguous).
func parseForwardedEntry(e []byte) (netip.Addr, bool) {
	e = bytes.Trim(e, " \t")
	if len(e) == 0 {
		return netip.Addr{}, false
	}
	if e[0] == '[' {
		end := bytes.IndexByte(e, ']')
		if end < 0 || (end+1 < len(e) && (e[end+1] != ':' || !validPort(e[end+2:]))) {
			return netip.Addr{}, false
		}
		return parseAddr(e[1:end])
	}
	if i := bytes.IndexByte(e, ':'); i >= 0 && bytes.IndexByte(e[i+1:], ':') < 0 {
		// One colon: IPv4 with a port.
		if !validPort(e[i+1:]) {
			return netip.Addr{}, false
		}
		e = e[:i]
		if a, err := parseV4(e); err == nil {
			return a, true
		}
		return netip.Addr{}, false
	}
	return parseAddr(e)
}

// validPort reports whether b is a decimal port number, 0..65535.
func validPort(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for len(b) > 1 && b[0] == '0' { // leading zeros, as strconv reads them
		b = b[1:]
	}
	n, ok := parseUint(b)
	return ok && n <= 65535
}
