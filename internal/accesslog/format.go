package accesslog

import (
	"errors"
	"fmt"
	"strings"
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
	fieldSkip     fieldKind = iota // matched and ignored
	fieldClient                    // client address (%h, %a, $remote_addr)
	fieldTimeCLF                   // [17/May/2015:10:05:03 +0000], brackets included (%t)
	fieldTimeBare                  // 17/May/2015:10:05:03 +0000 ($time_local; the brackets are literals)
	fieldTimeISO                   // RFC 3339 ($time_iso8601)
	fieldStatus                    // final status (%>s, %s, $status)
	fieldBytes                     // response bytes (%b, %B, $body_bytes_sent, $bytes_sent)
	fieldRequest                   // request line (%r, $request)
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
}

// Format is a compiled log format: the line layout the parser matches.
// It is immutable and safe for concurrent use.
type Format struct {
	spec   string
	tokens []token
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
			name, kind, n, err := apacheDirective(spec[i:])
			if err != nil {
				return nil, err
			}
			if name == "%%" {
				lit.WriteByte('%')
			} else {
				flush()
				toks = append(toks, token{field: true, kind: kind, name: name})
			}
			i += n
		case c == '$' && i+1 < len(spec) && (isVarChar(spec[i+1]) || spec[i+1] == '{'):
			name, kind, n, err := nginxVariable(spec[i:])
			if err != nil {
				return nil, err
			}
			flush()
			toks = append(toks, token{field: true, kind: kind, name: name})
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
	var client, ts bool
	for i := range toks {
		t := &toks[i]
		if !t.field {
			continue
		}
		if i+1 < len(toks) && toks[i+1].field {
			return nil, fmt.Errorf("%w: %s and %s have no literal text between them", ErrFormat, t.name, toks[i+1].name)
		}
		t.quoted = i > 0 && strings.HasSuffix(toks[i-1].lit, `"`) && i+1 < len(toks) && strings.HasPrefix(toks[i+1].lit, `"`)
		switch t.kind {
		case fieldClient:
			if client {
				return nil, fmt.Errorf("%w: two client address fields (%s)", ErrFormat, t.name)
			}
			client = true
		case fieldTimeCLF, fieldTimeBare, fieldTimeISO:
			if ts {
				return nil, fmt.Errorf("%w: two timestamp fields (%s)", ErrFormat, t.name)
			}
			ts = true
		}
	}
	if !client {
		return nil, fmt.Errorf("%w: %q has no client address field (%%h, %%a or $remote_addr)", ErrFormat, spec)
	}
	if !ts {
		return nil, fmt.Errorf("%w: %q has no timestamp field (%%t, $time_local or $time_iso8601)", ErrFormat, spec)
	}
	return &Format{spec: spec, tokens: toks}, nil
}

// apacheDirective reads one % directive at the start of s and returns it,
// its kind and its length.
func apacheDirective(s string) (string, fieldKind, int, error) {
	i := 1
	// Modifiers: < or > (original or final request), ! and status lists.
	for i < len(s) && (s[i] == '<' || s[i] == '>' || s[i] == '!' || s[i] == ',' || (s[i] >= '0' && s[i] <= '9')) {
		i++
	}
	arg := ""
	if i < len(s) && s[i] == '{' {
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", 0, 0, fmt.Errorf("%w: unterminated %%{ in %q", ErrFormat, s)
		}
		arg = s[i+1 : i+end]
		i += end + 1
	}
	if i >= len(s) {
		return "", 0, 0, fmt.Errorf("%w: %q ends inside a directive", ErrFormat, s)
	}
	letter := s[i]
	name := s[:i+1]
	if letter == '%' && i == 1 {
		return "%%", fieldSkip, 2, nil
	}
	switch letter {
	case 'h':
		return name, fieldClient, i + 1, nil
	case 'a':
		return name, fieldClient, i + 1, nil
	case 't':
		if arg != "" {
			return "", 0, 0, fmt.Errorf("%w: %s: only the default %%t timestamp is supported", ErrFormat, name)
		}
		return name, fieldTimeCLF, i + 1, nil
	case 's':
		return name, fieldStatus, i + 1, nil
	case 'b', 'B':
		return name, fieldBytes, i + 1, nil
	case 'r':
		return name, fieldRequest, i + 1, nil
	}
	if (letter >= 'a' && letter <= 'z') || (letter >= 'A' && letter <= 'Z') || letter == '^' {
		if letter == '^' { // %{name}^ti and friends: two more letters
			if i+2 >= len(s) {
				return "", 0, 0, fmt.Errorf("%w: %q ends inside a directive", ErrFormat, s)
			}
			return s[:i+3], fieldSkip, i + 3, nil
		}
		return name, fieldSkip, i + 1, nil
	}
	return "", 0, 0, fmt.Errorf("%w: unknown directive %q", ErrFormat, name)
}

func isVarChar(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// nginxVariable reads one $variable (or ${variable}) at the start of s.
func nginxVariable(s string) (string, fieldKind, int, error) {
	var v string
	n := 1
	if s[1] == '{' {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return "", 0, 0, fmt.Errorf("%w: unterminated ${ in %q", ErrFormat, s)
		}
		v, n = s[2:end], end+1
	} else {
		for n < len(s) && isVarChar(s[n]) {
			n++
		}
		v = s[1:n]
	}
	name := "$" + v
	switch v {
	case "remote_addr", "realip_remote_addr":
		return name, fieldClient, n, nil
	case "time_local":
		return name, fieldTimeBare, n, nil
	case "time_iso8601":
		return name, fieldTimeISO, n, nil
	case "status":
		return name, fieldStatus, n, nil
	case "body_bytes_sent", "bytes_sent":
		return name, fieldBytes, n, nil
	case "request":
		return name, fieldRequest, n, nil
	case "":
		return "", 0, 0, fmt.Errorf("%w: empty variable name in %q", ErrFormat, s)
	}
	return name, fieldSkip, n, nil
}
