package accesslog

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestReaderCountsMalformed(t *testing.T) {
	in := strings.Join([]string{
		`10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`,
		``,
		`garbage`,
		`10.0.0.2 - - [17/May/2015:10:05:04 +0000] "GET / HTTP/1.1" 200 5` + "\r", // CRLF
		`- - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`,
		`10.0.0.3 - - [17/May/2015:10:05:05 +0000] "GET /` + strings.Repeat("x", 200) + ` HTTP/1.1" 200 5`,
		`10.0.0.4 - - [17/Xyz/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`,
		`2001:db8::4 - - [17/May/2015:10:05:06 +0000] "GET / HTTP/1.1" 200 -`, // no final newline
	}, "\n")
	r := NewReader(strings.NewReader(in), mustFormat(t, "common"), Options{MaxLine: 128})
	var clients []string
	for r.Next() {
		clients = append(clients, r.Record().Client.String())
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(clients, " "); got != "10.0.0.1 10.0.0.2 2001:db8::4" {
		t.Fatalf("records %s", got)
	}
	st := r.Stats()
	want := map[Reason]int64{ReasonEmpty: 1, ReasonLiteral: 1, ReasonBadClient: 1, ReasonTooLong: 1, ReasonBadTime: 1}
	for reason := Reason(1); reason < numReasons; reason++ {
		if st.Malformed[reason] != want[reason] {
			t.Errorf("%s: %d, want %d", reason, st.Malformed[reason], want[reason])
		}
	}
	if st.Lines != 8 || st.Records != 3 || st.Skipped() != 5 || st.FirstBad[ReasonTooLong] != 6 {
		t.Errorf("stats %+v", st)
	}
	if s := st.Summary(); !strings.Contains(s, "too_long=1 (first line 6)") || !strings.Contains(s, "bad_time=1 (first line 7)") {
		t.Errorf("summary %q", s)
	}
}

func TestReaderStrict(t *testing.T) {
	in := "\n" + `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5` + "\n" + `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 five` + "\n"
	r := NewReader(strings.NewReader(in), mustFormat(t, "common"), Options{Strict: true, Name: "access.log"})
	n := 0
	for r.Next() {
		n++
	}
	var le *LineError
	if n != 1 || !errors.As(r.Err(), &le) || le.Line != 3 || le.Reason != ReasonBadBytes || !errors.Is(r.Err(), ErrMalformed) {
		t.Fatalf("n=%d err=%v", n, r.Err())
	}
	if msg := r.Err().Error(); !strings.HasPrefix(msg, "access.log line 3: malformed log line (bad_bytes)") {
		t.Fatalf("message %q", msg)
	}
}

func TestReaderNoRecords(t *testing.T) {
	// A common-format log read as combined: every line misses the last
	// two fields, which is a wrong --format, not a bad log.
	in := `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5` + "\n"
	r := NewReader(strings.NewReader(strings.Repeat(in, 3)), mustFormat(t, "combined"), Options{Name: "x.log"})
	for r.Next() {
		t.Fatal("no record expected")
	}
	if !errors.Is(r.Err(), ErrNoRecords) || !strings.Contains(r.Err().Error(), "literal_mismatch=3 (first line 1)") {
		t.Fatalf("err %v", r.Err())
	}
	// Empty input is not an error.
	r = NewReader(strings.NewReader(""), mustFormat(t, "combined"), Options{})
	if r.Next() || r.Err() != nil {
		t.Fatalf("empty input: %v", r.Err())
	}
}

func TestReaderReadError(t *testing.T) {
	in := `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5` + "\n"
	boom := errors.New("disk on fire")
	r := NewReader(io.MultiReader(strings.NewReader(in), iotest.ErrReader(boom)), mustFormat(t, "common"), Options{Name: "a.log"})
	n := 0
	for r.Next() {
		n++
	}
	var le *LineError
	if n != 1 || !errors.Is(r.Err(), boom) || !errors.As(r.Err(), &le) || le.Line != 2 {
		t.Fatalf("n=%d err=%v", n, r.Err())
	}
}

// TestReaderStreams checks the reader holds one line at a time: a long
// input through a one-byte reader still parses every record.
func TestReaderStreams(t *testing.T) {
	var b bytes.Buffer
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 500 {
		writeLine(&b, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), start.Add(time.Duration(i)*time.Second))
	}
	r := NewReader(iotest.OneByteReader(&b), mustFormat(t, "combined"), Options{MaxLine: 512})
	n := 0
	for r.Next() {
		if want := start.Add(time.Duration(n) * time.Second); !r.Record().Time.Equal(want) {
			t.Fatalf("record %d at %v", n, r.Record().Time)
		}
		n++
	}
	if n != 500 || r.Err() != nil {
		t.Fatalf("n=%d err=%v", n, r.Err())
	}
}

// writeLine writes one synthetic combined-format line.
func writeLine(b *bytes.Buffer, a netip.Addr, at time.Time) {
	b.WriteString(a.String())
	b.WriteString(` - - [`)
	b.WriteString(at.Format("02/Jan/2006:15:04:05 -0700"))
	b.WriteString(`] "GET /images/web/2009/banner.png HTTP/1.1" 200 52315 "http://www.example.com/style2.css" "Mozilla/5.0 (X11; Linux x86_64; rv:25.0) Gecko/20100101 Firefox/25.0"` + "\n")
}
