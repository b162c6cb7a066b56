package accesslog

import (
	"bytes"
	"errors"
	"math"
	"net/netip"
	"time"
	"unsafe"
)

// Reason says why a line was skipped. Reasons are stable strings (they
// appear in the ingest summary and in scripts).
type Reason uint8

// Reasons a line is malformed.
const (
	ReasonNone              Reason = iota
	ReasonEmpty                    // blank line
	ReasonTooLong                  // longer than Options.MaxLine
	ReasonLiteral                  // the format's literal text is not where it should be
	ReasonUnterminatedQuote        // a quoted field has no closing quote
	ReasonBadClient                // the client field is not an IPv4 or IPv6 address ("-", a host name)
	ReasonBadTime                  // the timestamp does not parse, or is before 1678 or after 2262
	ReasonBadStatus                // the status is not a three-digit number
	ReasonBadBytes                 // the size is neither "-" nor a decimal number
	ReasonTrailing                 // text after the last field of the format
	numReasons
)

var reasonNames = [numReasons]string{"none", "empty", "too_long", "literal_mismatch", "unterminated_quote",
	"bad_client", "bad_time", "bad_status", "bad_bytes", "trailing_data"}

// String returns the reason's stable name, e.g. "bad_time".
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Record is one parsed request. Request aliases the line buffer and is
// only valid until the next call to Reader.Next or ParseLine.
type Record struct {
	// Client is the client's address: Peer, or the address the
	// X-Forwarded-For field gave (see Forwarded). Unmapped (an
	// IPv4-mapped IPv6 address becomes IPv4), no zone.
	Client netip.Addr
	// Peer is the connecting address (%h, $remote_addr), unmapped.
	Peer      netip.Addr
	Forwarded Forwarded // whether Client came from X-Forwarded-For
	Time      time.Time // UTC
	Status    int       // -1 when the format has no status field
	Bytes     int64     // -1 when the format has no size field or the size is "-"
	Request   []byte    // request line, nil when the format has none
}

// ParseLine parses one line (without its line break) into rec and returns
// ReasonNone, or the reason the line is malformed. It does not allocate.
func (f *Format) ParseLine(line []byte, rec *Record) Reason {
	*rec = Record{Status: -1, Bytes: -1}
	if len(bytes.TrimSpace(line)) == 0 {
		return ReasonEmpty
	}
	pos := 0
	var tp timeParts
	var fwd []byte
	for i := range f.tokens {
		t := &f.tokens[i]
		if !t.field {
			if !bytes.HasPrefix(line[pos:], t.litb) {
				return ReasonLiteral
			}
			pos += len(t.lit)
			continue
		}
		rest := line[pos:]
		var end int
		timeDone := false
		switch t.ext {
		case extLiteral:
			end = bytes.Index(rest, f.tokens[i+1].litb)
			if end < 0 {
				return ReasonLiteral
			}
		case extQuoted:
			end = quotedEnd(rest)
			if end < 0 {
				return ReasonUnterminatedQuote
			}
		case extBracket:
			end = bytes.IndexByte(rest, ']') + 1
			if len(rest) == 0 || rest[0] != '[' || end <= 0 {
				return ReasonBadTime
			}
		case extLayout:
			// The layout says where the field ends (it may hold the
			// literal that follows it, as "%d/%b/%Y %T" holds a space).
			n, ok := t.tl.parse(rest, &tp)
			if !ok || (i+1 < len(f.tokens) && !bytes.HasPrefix(rest[n:], f.tokens[i+1].litb)) {
				// Text the layout did not take is part of a bad time
				// (1431x…), not a misplaced literal.
				return ReasonBadTime
			}
			end, timeDone = n, true
		default:
			end = len(rest)
		}
		val := rest[:end]
		pos += end
		if t.kind < fieldForwarded {
			if r := setField(t.kind, val, rec); r != ReasonNone {
				return r
			}
		} else if t.kind == fieldForwarded {
			fwd = val
		} else if !timeDone {
			// A quoted time field: the layout must take all of it.
			if n, ok := t.tl.parse(val, &tp); !ok || n != len(val) {
				return ReasonBadTime
			}
		}
	}
	if pos != len(line) {
		return ReasonTrailing
	}
	if f.composed {
		t, ok := f.composeTime(&tp)
		if !ok {
			return ReasonBadTime
		}
		rec.Time = t
	} else if f.timeParts&partFrac != 0 {
		rec.Time = rec.Time.Add(time.Duration(tp.frac))
	}
	if rec.Time.Before(minTime) || rec.Time.After(maxTime) {
		// Syntactically a time (01/Jan/0001, 31/Dec/9999), but outside
		// the nanoseconds since 1970 an int64 holds: its bucket would
		// be garbage.
		return ReasonBadTime
	}
	rec.Peer = rec.Client
	if f.forwarded {
		f.applyForwarded(fwd, rec)
	}
	return ReasonNone
}

// minTime and maxTime bound the times a record may have: those whose
// Unix nanoseconds fit an int64 (1677-09-21 to 2262-04-11).
var (
	minTime = time.Unix(0, math.MinInt64).UTC()
	maxTime = time.Unix(0, math.MaxInt64).UTC()
)

// quotedEnd returns the index of the first double quote in b not escaped
// by a backslash, or -1. A quote is escaped when an odd number of
// backslashes precede it (Apache writes \" and \\).
func quotedEnd(b []byte) int {
	off := 0
	for {
		i := bytes.IndexByte(b[off:], '"')
		if i < 0 {
			return -1
		}
		i += off
		n := 0
		for j := i - 1; j >= 0 && b[j] == '\\'; j-- {
			n++
		}
		if n%2 == 0 {
			return i
		}
		off = i + 1
	}
}

func setField(kind fieldKind, val []byte, rec *Record) Reason {
	switch kind {
	case fieldClient:
		a, ok := parseAddr(val)
		if !ok {
			return ReasonBadClient
		}
		rec.Client = a
	case fieldTimeCLF, fieldTimeBare:
		if kind == fieldTimeCLF {
			val = val[1 : len(val)-1] // ParseLine checked the brackets
		}
		t, ok := parseCLFTime(val)
		if !ok {
			return ReasonBadTime
		}
		rec.Time = t
	case fieldTimeISO:
		t, err := time.Parse(time.RFC3339, string(val))
		if err != nil {
			return ReasonBadTime
		}
		rec.Time = t.UTC()
	case fieldStatus:
		if len(val) != 3 {
			return ReasonBadStatus
		}
		n, ok := parseUint(val)
		if !ok || n < 100 {
			return ReasonBadStatus
		}
		rec.Status = int(n)
	case fieldBytes:
		if len(val) == 1 && val[0] == '-' {
			break
		}
		n, ok := parseUint(val)
		if !ok {
			return ReasonBadBytes
		}
		rec.Bytes = n
	case fieldRequest:
		rec.Request = val
	}
	return ReasonNone
}

// parseAddr reads an IPv4 or IPv6 address, optionally in brackets, and
// drops a zone and the IPv4-mapped prefix (a dual-stack server logs IPv4
// clients as ::ffff:a.b.c.d; the data plane sees them as IPv4).
func parseAddr(b []byte) (netip.Addr, bool) {
	if len(b) >= 2 && b[0] == '[' && b[len(b)-1] == ']' {
		b = b[1 : len(b)-1]
	}
	if len(b) == 0 {
		return netip.Addr{}, false
	}
	if bytes.IndexByte(b, ':') < 0 {
		a, err := parseV4(b)
		return a, err == nil
	}
	// The zone is dropped anyway: cut it here so that ParseAddr keeps
	// nothing of its input but an error, which is discarded.
	if i := bytes.IndexByte(b, '%'); i >= 0 {
		if i == len(b)-1 || bytes.IndexByte(b[:i], ':') < 0 {
			return netip.Addr{}, false // an empty zone, or a zone after IPv4: ParseAddr refuses both
		}
		b = b[:i]
	}
	if len(b) == 0 || len(b) > 64 { // the longest IPv6 text is 45 bytes
		return netip.Addr{}, false
	}
	// string(b) would escape through ParseAddr's error and allocate on
	// every line; the unsafe view is only read during the call.
	a, err := netip.ParseAddr(unsafe.String(&b[0], len(b)))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// errV4 is returned by parseV4; callers only test it against nil.
var errV4 = errors.New("not a dotted-quad IPv4 address")

// parseV4 parses dotted-quad IPv4 without allocating (netip.ParseAddr
// would need a string conversion).
func parseV4(b []byte) (netip.Addr, error) {
	var out [4]byte
	part, digits := 0, 0
	v := 0
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '.' {
			if digits == 0 || part > 3 {
				return netip.Addr{}, errV4
			}
			out[part] = byte(v)
			part++
			v, digits = 0, 0
			continue
		}
		c := b[i]
		if c < '0' || c > '9' || (digits == 1 && v == 0) { // no leading zeros, as netip
			return netip.Addr{}, errV4
		}
		v = v*10 + int(c-'0')
		digits++
		if v > 255 {
			return netip.Addr{}, errV4
		}
	}
	if part != 4 {
		return netip.Addr{}, errV4
	}
	return netip.AddrFrom4(out), nil
}

// parseUint reads an unsigned decimal of at most 18 digits.
func parseUint(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

var months = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}

// monthOf returns 1..12 for an English month abbreviation, 0 otherwise.
func monthOf(a, b, c byte) int {
	for i, m := range months {
		if m[0] == a && m[1] == b && m[2] == c {
			return i + 1
		}
	}
	return 0
}

// parseCLFTime reads 17/May/2015:10:05:03 +0000 (time.Parse layout
// "02/Jan/2006:15:04:05 -0700") into UTC without allocating.
func parseCLFTime(b []byte) (time.Time, bool) {
	if len(b) != 26 || b[2] != '/' || b[6] != '/' || b[11] != ':' || b[14] != ':' || b[17] != ':' || b[20] != ' ' {
		return time.Time{}, false
	}
	num := func(s []byte) int {
		n := 0
		for _, c := range s {
			if c < '0' || c > '9' {
				return -1
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	day, year, hh, mm, ss := num(b[0:2]), num(b[7:11]), num(b[12:14]), num(b[15:17]), num(b[18:20])
	mon := monthOf(b[3], b[4], b[5])
	zh, zm := num(b[22:24]), num(b[24:26])
	if mon == 0 || day < 1 || year < 0 || hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 59 ||
		zh < 0 || zh > 23 || zm < 0 || zm > 59 || (b[21] != '+' && b[21] != '-') {
		return time.Time{}, false
	}
	if day > daysIn(time.Month(mon), year) {
		return time.Time{}, false
	}
	off := time.Duration(zh)*time.Hour + time.Duration(zm)*time.Minute
	if b[21] == '-' {
		off = -off
	}
	return time.Date(year, time.Month(mon), day, hh, mm, ss, 0, time.UTC).Add(-off), true
}

func daysIn(m time.Month, year int) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
