package accesslog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// ErrMalformed marks a malformed line that stopped a strict Reader.
var ErrMalformed = errors.New("malformed log line")

// ErrNoRecords is returned when a non-empty input had no line matching
// the format: almost always the wrong --format, not a bad log.
var ErrNoRecords = errors.New("no line matched the log format")

// DefaultMaxLine is the longest line a Reader accepts by default.
const DefaultMaxLine = 64 << 10

// Options tune a Reader.
type Options struct {
	// MaxLine is the longest line accepted (bytes, without the line
	// break); longer lines are skipped as ReasonTooLong. 0: DefaultMaxLine.
	MaxLine int
	// Strict makes the first malformed line a fatal *LineError instead of
	// a counted skip. Blank lines are skipped even then.
	Strict bool
	// Name labels the input in errors (a file name); default "input".
	Name string
}

// LineError is a fatal problem at one line of the input.
type LineError struct {
	Name   string
	Line   int64
	Reason Reason // ReasonNone for a read error
	Text   string // the start of the line, for the message
	Err    error
}

// Error names the input, the line and the reason.
func (e *LineError) Error() string {
	if e.Reason == ReasonNone {
		return fmt.Sprintf("%s line %d: %v", e.Name, e.Line, e.Err)
	}
	return fmt.Sprintf("%s line %d: %v (%s): %q", e.Name, e.Line, e.Err, e.Reason, e.Text)
}

// Unwrap returns the underlying error (ErrMalformed or the read error).
func (e *LineError) Unwrap() error { return e.Err }

// Stats counts what a Reader saw.
type Stats struct {
	Lines     int64 // lines read, malformed included
	Records   int64 // lines parsed into records
	Malformed [numReasons]int64
	FirstBad  [numReasons]int64 // line number of the first line skipped for each reason
	// Records by what their X-Forwarded-For field did (see Forwarded):
	// the client taken from the header, a header present but unusable
	// (the connecting address counted instead), a header ignored because
	// the connecting address is not a trusted proxy.
	Forwarded, ForwardedUnusable, ForwardedUntrusted int64
}

// Skipped is the number of malformed lines (blank lines included).
func (s *Stats) Skipped() int64 {
	var n int64
	for _, c := range s.Malformed {
		n += c
	}
	return n
}

// Add accumulates o into s (for several inputs); FirstBad keeps s's line
// numbers where s has one.
func (s *Stats) Add(o Stats) {
	s.Lines += o.Lines
	s.Records += o.Records
	s.Forwarded += o.Forwarded
	s.ForwardedUnusable += o.ForwardedUnusable
	s.ForwardedUntrusted += o.ForwardedUntrusted
	for i := range s.Malformed {
		if s.Malformed[i] == 0 {
			s.FirstBad[i] = o.FirstBad[i]
		}
		s.Malformed[i] += o.Malformed[i]
	}
}

// Summary renders the malformed counts as "bad_time=3 (first line 17), …",
// or "none".
func (s *Stats) Summary() string {
	var parts []string
	for r := Reason(1); r < numReasons; r++ {
		if n := s.Malformed[r]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d (first line %d)", r, n, s.FirstBad[r]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// Reader streams records out of a log, one line at a time, with a buffer
// of Options.MaxLine bytes: it never holds the whole input.
type Reader struct {
	br     *bufio.Reader
	f      *Format
	opt    Options
	rec    Record
	stats  Stats
	err    error
	done   bool
	maxLen int
}

// NewReader returns a Reader of r in format f.
func NewReader(r io.Reader, f *Format, opt Options) *Reader {
	if opt.MaxLine <= 0 {
		opt.MaxLine = DefaultMaxLine
	}
	if opt.Name == "" {
		opt.Name = "input"
	}
	// The buffer holds a whole line plus its break; lines longer than
	// that are counted and skipped without being accumulated.
	return &Reader{br: bufio.NewReaderSize(r, opt.MaxLine+2), f: f, opt: opt, maxLen: opt.MaxLine}
}

// Next advances to the next well-formed record and reports whether there
// is one. Malformed lines are counted in Stats and skipped (or, when
// Strict, end the input with a *LineError). After false, Err tells why.
func (r *Reader) Next() bool {
	for !r.done {
		line, tooLong, err := r.readLine()
		if err != nil && !errors.Is(err, io.EOF) {
			r.err = &LineError{Name: r.opt.Name, Line: r.stats.Lines + 1, Err: fmt.Errorf("read: %w", err)}
			r.done = true
			return false
		}
		if errors.Is(err, io.EOF) {
			r.done = true
			if len(line) == 0 && !tooLong {
				break
			}
		}
		r.stats.Lines++
		reason := ReasonTooLong
		if !tooLong {
			reason = r.f.ParseLine(line, &r.rec)
		}
		if reason == ReasonNone {
			r.stats.Records++
			switch r.rec.Forwarded {
			case ForwardedUsed:
				r.stats.Forwarded++
			case ForwardedUnusable:
				r.stats.ForwardedUnusable++
			case ForwardedUntrusted:
				r.stats.ForwardedUntrusted++
			}
			return true
		}
		if r.stats.Malformed[reason] == 0 {
			r.stats.FirstBad[reason] = r.stats.Lines
		}
		r.stats.Malformed[reason]++
		if r.opt.Strict && reason != ReasonEmpty {
			text := string(line)
			if len(text) > 120 {
				text = text[:120] + "…"
			}
			r.err = &LineError{Name: r.opt.Name, Line: r.stats.Lines, Reason: reason, Text: text, Err: ErrMalformed}
			r.done = true
			return false
		}
	}
	if r.err == nil && r.stats.Records == 0 && r.stats.Lines > r.stats.Malformed[ReasonEmpty] {
		r.err = fmt.Errorf("%w: %s (format %q): %d lines, malformed: %s", ErrNoRecords, r.opt.Name, r.f.spec, r.stats.Lines, r.stats.Summary())
	}
	return false
}

// readLine returns the next line without its break. A line longer than
// MaxLine is consumed up to its break and reported as tooLong.
func (r *Reader) readLine() (line []byte, tooLong bool, err error) {
	b, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// Longer than the buffer: drain to the line break.
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = r.br.ReadSlice('\n')
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, true, err
		}
		return nil, true, err
	}
	b = bytes.TrimSuffix(b, []byte{'\n'})
	b = bytes.TrimSuffix(b, []byte{'\r'})
	if len(b) > r.maxLen {
		return nil, true, err
	}
	return b, false, err
}

// Record returns the current record; it is overwritten by the next Next.
func (r *Reader) Record() *Record { return &r.rec }

// Err returns the error that ended the input: nil at a clean end of
// input, a *LineError for a read failure or (Strict) a malformed line,
// or ErrNoRecords when no line matched the format.
func (r *Reader) Err() error { return r.err }

// Stats returns the counts so far.
func (r *Reader) Stats() Stats { return r.stats }
