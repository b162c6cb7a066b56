// Package textin prepares the text files operators export from
// spreadsheets and databases (demand tables, latency matrices, feeds) for
// encoding/csv: what those exports add that the CSV reader does not
// expect is taken away once, here.
package textin

import (
	"bufio"
	"bytes"
	"io"
)

// headLen is how much of the input Normalize looks at (and returns).
const headLen = 4096

// Normalize wraps br: a UTF-8 byte-order mark is skipped (it would
// otherwise become part of the first field), and an input whose first
// 4096 bytes hold a CR but no LF — classic Mac line ends, which
// encoding/csv does not split on, so the whole file would read as one
// line — reads with every CR as LF. head is those first bytes, after the
// mark (fewer at the end of a short input), for sniffing the separator.
func Normalize(br *bufio.Reader) (in io.Reader, head []byte) {
	if b, err := br.Peek(3); err == nil && bytes.Equal(b, []byte("\xef\xbb\xbf")) {
		_, _ = br.Discard(3)
	}
	head, _ = br.Peek(headLen)
	if bytes.IndexByte(head, '\n') < 0 && bytes.IndexByte(head, '\r') >= 0 {
		return crReader{br}, head
	}
	return br, head
}

// IsUTF16 reports whether b starts with a UTF-16 byte-order mark (Excel's
// "Unicode text"): every other byte of such a file would read as a NUL.
func IsUTF16(b []byte) bool {
	return len(b) >= 2 && (b[0] == 0xff && b[1] == 0xfe || b[0] == 0xfe && b[1] == 0xff)
}

// crReader turns every CR into LF.
type crReader struct{ r io.Reader }

func (c crReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	for i, b := range p[:n] {
		if b == '\r' {
			p[i] = '\n'
		}
	}
	return n, err
}

// Separator picks the field separator of a CSV from its head (its first
// bytes): the most frequent of comma, semicolon and tab outside quotes over
// its first few lines (blank lines and "#" comments passed over). A
// spreadsheet export in a comma-decimal locale uses semicolons, a table
// pasted from a web page tabs, and a tab- or semicolon-separated header may
// name a column "requests (count, per hour)". On a tie the semicolon or
// tab wins: in such a file a comma is a decimal mark or part of a name in
// every line, while a comma-separated file rarely holds as many semicolons
// or tabs as separators. A comma when there is none.
func Separator(head []byte) rune {
	var commas, semis, tabs int
	for lines := 0; len(head) > 0 && lines < sniffLines; {
		line := head
		if i := bytes.IndexAny(head, "\r\n"); i >= 0 {
			line, head = head[:i], head[i+1:]
		} else {
			head = nil
		}
		if t := bytes.TrimSpace(line); len(t) == 0 || t[0] == '#' {
			continue
		}
		lines++
		quoted := false
		for _, c := range line {
			switch {
			case c == '"':
				quoted = !quoted
			case quoted:
			case c == ',':
				commas++
			case c == ';':
				semis++
			case c == '\t':
				tabs++
			}
		}
	}
	switch {
	case commas == 0 && semis == 0 && tabs == 0:
		return ','
	case tabs >= semis && tabs >= commas:
		return '\t'
	case semis >= commas:
		return ';'
	}
	return ','
}

// sniffLines is how many lines Separator reads: enough for the data rows
// to outvote a header, few enough that a stray line later does not matter.
const sniffLines = 5
