package accesslog

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ErrFormat marks a log format specification the parser cannot use; the
// message names the offending directive.
var ErrFormat = errors.New("bad log format")

// Preset formats, by the names Apache and Nginx give them.
const (
	// Common is Apache's common log format (CLF).
	Common = `%h %l %u %t "%r" %>s %b`
	// Combined is Apache's combined format: CLF plus referer and user agent.
	Combined = Common + ` "%{Referer}i" "%{User-agent}i"`
	// NginxCombined is Nginx's default "combined" log_format; it produces
	// the same lines as Combined.
	NginxCombined = `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`
)

// presets maps the names accepted by ParseFormat to specifications.
var presets = map[string]string{
	"common":         Common,
	"clf":            Common,
	"combined":       Combined,
	"nginx":          NginxCombined,
	"nginx-combined": NginxCombined,
}

// fieldKind says what the parser does with a field's text.
type fieldKind uint8

const (
	fieldSkip      fieldKind = iota // matched and ignored
	fieldClient                     // client address (%h, %a, $remote_addr)
	fieldTimeCLF                    // [17/May/2015:10:05:03 +0000], brackets included (%t)
	fieldTimeBare                   // 17/May/2015:10:05:03 +0000 ($time_local; the brackets are literals)
	fieldTimeISO                    // RFC 3339 ($time_iso8601)
	fieldStatus                     // final status (%>s, %s, $status)
	fieldBytes                      // response bytes (%b, %B, $body_bytes_sent, $bytes_sent)
	fieldRequest                    // request line (%r, $request)
	fieldForwarded                  // X-Forwarded-For header (%{X-Forwarded-For}i, $http_x_forwarded_for)
	fieldTimeParts                  // %{format}t, %{sec}t, $msec…: parsed by token.tl, composed after the line
)

// token is one literal or one field of a format.
type token struct {
	lit   string // literal text (field == false)
	litb  []byte // lit as bytes, so matching does not convert
	field bool
	kind  fieldKind
	name  string // directive as written, for messages
	// quoted: the field sits between two literal double quotes, so it
	// ends at the first unescaped quote (it may contain spaces and \").
	quoted bool
	ext    extent      // how ParseLine finds the field's end, set by ParseFormat
	tl     *timeLayout // fieldTimeParts
}

// extent is how the parser finds where a field ends.
type extent uint8

const (
	extLiteral extent = iota // at the next literal
	extQuoted                // at the first unescaped double quote
	extBracket               // after the first ']' (%t)
	extLayout                // where its time layout stops
	extRest                  // at the end of the line (last token)
)

// Format is a compiled log format: the line layout the parser matches.
// It is immutable and safe for concurrent use.
type Format struct {
	spec   string
	tokens []token
	// timeParts is the union of the parts the time fields give; composed
	// says the time is built from them after the line (no %t,
	// $time_local or $time_iso8601, which the parser reads whole).
	timeParts timePart
	composed  bool
	forwarded bool           // has an X-Forwarded-For field
	trusted   []netip.Prefix // WithTrustedProxies
	loc       *time.Location // InLocation; nil is UTC
}

// String returns the specification the format was compiled from.
func (f *Format) String() string { return f.spec }

// ParseFormat compiles a preset name (common, clf, combined, nginx,
// nginx-combined) or a format specification in Apache LogFormat syntax
// (%h %l %u %t "%r" %>s %b "%{Referer}i" …) or Nginx log_format syntax
// ($remote_addr … [$time_local] …). The format must contain a client
// address and a timestamp; every other directive matches a field that is
// skipped. Fields are delimited by the literal text that follows them, so
// two fields with no literal between them are refused.
func ParseFormat(spec string) (*Format, error) {
	if p, ok := presets[strings.ToLower(strings.TrimSpace(spec))]; ok {
		spec = p
	}
	if strings.TrimSpace(spec) == "" {
		return nil, fmt.Errorf("%w: empty specification", ErrFormat)
	}
	var toks []token
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			toks = append(toks, token{lit: lit.String(), litb: []byte(lit.String())})
			lit.Reset()
		}
	}
	for i := 0; i < len(spec); {
		c := spec[i]
		switch {
		case c == '%':
			tok, n, err := apacheDirective(spec[i:])
			if err != nil {
				return nil, err
			}
			if tok.name == "%%" {
				lit.WriteByte('%')
			} else {
				flush()
				toks = append(toks, tok)
			}
			i += n
		case c == '$' && i+1 < len(spec) && (isVarChar(spec[i+1]) || spec[i+1] == '{'):
			tok, n, err := nginxVariable(spec[i:])
			if err != nil {
				return nil, err
			}
			flush()
			toks = append(toks, tok)
			i += n
		case c == '\\' && i+1 < len(spec):
			// A backslash escapes the next character of the specification
			// (as in Apache's LogFormat "\"" and "\t").
			switch spec[i+1] {
			case 't':
				lit.WriteByte('\t')
			case 'n', 'r':
				return nil, fmt.Errorf("%w: a format cannot contain a line break", ErrFormat)
			default:
				lit.WriteByte(spec[i+1])
			}
			i += 2
		default:
			lit.WriteByte(c)
			i++
		}
	}
	flush()
	f := &Format{spec: spec, tokens: toks, composed: true}
	var client string
	var giver [numTimeParts]string // the field that gave each time part
	for i := range toks {
		t := &toks[i]
		if !t.field {
			continue
		}
		if i+1 < len(toks) && toks[i+1].field {
			return nil, fmt.Errorf("%w: %s and %s have no literal text between them", ErrFormat, t.name, toks[i+1].name)
		}
		t.quoted = i > 0 && strings.HasSuffix(toks[i-1].lit, `"`) && i+1 < len(toks) && strings.HasPrefix(toks[i+1].lit, `"`)
		switch {
		case t.quoted:
			t.ext = extQuoted
		case t.kind == fieldTimeCLF:
			t.ext = extBracket
		case t.kind == fieldTimeParts:
			t.ext = extLayout
		case i+1 == len(toks):
			t.ext = extRest
		}
		var parts timePart
		switch t.kind {
		case fieldClient:
			if client != "" {
				return nil, fmt.Errorf("%w: two client address fields (%s and %s)", ErrFormat, client, t.name)
			}
			client = t.name
		case fieldForwarded:
			if f.forwarded {
				return nil, fmt.Errorf("%w: two X-Forwarded-For fields (%s)", ErrFormat, t.name)
			}
			f.forwarded = true
		case fieldTimeCLF, fieldTimeBare, fieldTimeISO:
			parts = partsFull
			f.composed = false
		case fieldTimeParts:
			parts = t.tl.parts
		}
		if dup := f.timeParts & parts; dup != 0 {
			return nil, fmt.Errorf("%w: two timestamp fields: %s and %s both give the %s", ErrFormat, giver[bitIndex(dup)], t.name, partName(dup))
		}
		f.timeParts |= parts
		for b := range numTimeParts {
			if parts&(1<<b) != 0 {
				giver[b] = t.name
			}
		}
	}
	if client == "" {
		return nil, fmt.Errorf("%w: %q has no client address field (%%h, %%a or $remote_addr)", ErrFormat, spec)
	}
	if f.timeParts&^partFrac == 0 {
		return nil, fmt.Errorf("%w: %q has no timestamp field (%%t, %%{format}t, %%{sec}t, $time_local, $time_iso8601 or $msec)", ErrFormat, spec)
	}
	if f.composed {
		if err := checkTimeParts(f.timeParts); err != nil {
			return nil, fmt.Errorf("%w: the time fields of %q give %v", ErrFormat, spec, err)
		}
	} else if extra := f.timeParts &^ (partsFull | partFrac); extra != 0 {
		return nil, fmt.Errorf("%w: two timestamp fields: %s and a complete timestamp", ErrFormat, giver[bitIndex(extra)])
	}
	return f, nil
}

// InLocation returns a copy of f that reads timestamps without a zone
// (a %{format}t with no %z or %Z) as local time in loc instead of UTC. It
// is an error for a format whose timestamps carry their zone or are epoch
// times: the location would be silently ignored.
func (f *Format) InLocation(loc *time.Location) (*Format, error) {
	if !f.Zoneless() {
		return nil, fmt.Errorf("format %q: its timestamp carries its own zone or is an epoch time", f.spec)
	}
	g := *f
	g.loc = loc
	return &g, nil
}

// Zoneless reports whether the format's timestamp has no zone of its own
// (see InLocation).
func (f *Format) Zoneless() bool {
	return f.composed && f.timeParts&(partZone|partEpoch) == 0
}

// apacheDirective reads one % directive at the start of s and returns
// its token and its length.
func apacheDirective(s string) (token, int, error) {
	i := 1
	// Modifiers: < or > (original or final request), ! and status lists.
	for i < len(s) && (s[i] == '<' || s[i] == '>' || s[i] == '!' || s[i] == ',' || (s[i] >= '0' && s[i] <= '9')) {
		i++
	}
	arg, hasArg := "", false
	if i < len(s) && s[i] == '{' {
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return token{}, 0, fmt.Errorf("%w: unterminated %%{ in %q", ErrFormat, s)
		}
		arg, hasArg = s[i+1:i+end], true
		i += end + 1
	}
	if i >= len(s) {
		return token{}, 0, fmt.Errorf("%w: %q ends inside a directive", ErrFormat, s)
	}
	letter := s[i]
	name := s[:i+1]
	field := func(k fieldKind) (token, int, error) { return token{field: true, kind: k, name: name}, i + 1, nil }
	if letter == '%' && i == 1 {
		return token{name: "%%"}, 2, nil
	}
	switch letter {
	case 'h', 'a':
		return field(fieldClient)
	case 't':
		if !hasArg {
			return field(fieldTimeCLF)
		}
		tl, err := compileApacheTime(name, arg)
		if err != nil {
			return token{}, 0, err
		}
		return token{field: true, kind: fieldTimeParts, name: name, tl: tl}, i + 1, nil
	case 'i':
		// Header names are case-insensitive.
		if strings.EqualFold(strings.TrimSpace(arg), "X-Forwarded-For") {
			return field(fieldForwarded)
		}
	case 's':
		return field(fieldStatus)
	case 'b', 'B':
		return field(fieldBytes)
	case 'r':
		return field(fieldRequest)
	}
	if (letter >= 'a' && letter <= 'z') || (letter >= 'A' && letter <= 'Z') || letter == '^' {
		if letter == '^' { // %{name}^ti and friends: two more letters
			if i+2 >= len(s) {
				return token{}, 0, fmt.Errorf("%w: %q ends inside a directive", ErrFormat, s)
			}
			return token{field: true, kind: fieldSkip, name: s[:i+3]}, i + 3, nil
		}
		return field(fieldSkip)
	}
	return token{}, 0, fmt.Errorf("%w: unknown directive %q", ErrFormat, name)
}

func isVarChar(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// nginxVariable reads one $variable (or ${variable}) at the start of s.
func nginxVariable(s string) (token, int, error) {
	var v string
	n := 1
	if s[1] == '{' {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return token{}, 0, fmt.Errorf("%w: unterminated ${ in %q", ErrFormat, s)
		}
		v, n = s[2:end], end+1
	} else {
		for n < len(s) && isVarChar(s[n]) {
			n++
		}
		v = s[1:n]
	}
	tok := token{field: true, kind: fieldSkip, name: "$" + v}
	switch v {
	case "remote_addr", "realip_remote_addr":
		tok.kind = fieldClient
	case "http_x_forwarded_for":
		tok.kind = fieldForwarded
	case "time_local":
		tok.kind = fieldTimeBare
	case "time_iso8601":
		tok.kind = fieldTimeISO
	case "msec":
		tok.kind = fieldTimeParts
		tok.tl = &timeLayout{ops: []timeOp{{conv: 'N'}}, parts: partEpoch | partFrac}
	case "status":
		tok.kind = fieldStatus
	case "body_bytes_sent", "bytes_sent":
		tok.kind = fieldBytes
	case "request":
		tok.kind = fieldRequest
	case "":
		return token{}, 0, fmt.Errorf("%w: empty variable name in %q", ErrFormat, s)
	}
	return tok, n, nil
}
