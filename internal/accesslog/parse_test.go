package accesslog

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const combinedLine = `83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36"`

func mustFormat(t testing.TB, spec string) *Format {
	t.Helper()
	f, err := ParseFormat(spec)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestParseLine(t *testing.T) {
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.DateTime, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, tc := range []struct {
		name, format, line string
		want               Reason
		client             string
		at                 string // UTC
		status             int
		bytes              int64
		request            string
	}{
		{"combined", "combined", combinedLine, ReasonNone, "83.149.9.216", "2015-05-17 10:05:03", 200, 203023,
			"GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1"},
		{"common", "common", `10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326`,
			ReasonNone, "10.0.0.1", "2000-10-10 20:55:36", 200, 2326, "GET /apache_pb.gif HTTP/1.0"},
		{"ipv6 and dash bytes", "common", `2001:db8::17 - - [01/Jan/2024:00:00:00 +0130] "HEAD / HTTP/1.1" 304 -`,
			ReasonNone, "2001:db8::17", "2023-12-31 22:30:00", 304, -1, "HEAD / HTTP/1.1"},
		{"mapped v4 unmapped", "common", `::ffff:192.0.2.7 - - [29/Feb/2024:23:59:59 +0000] "GET / HTTP/1.1" 200 5`,
			ReasonNone, "192.0.2.7", "2024-02-29 23:59:59", 200, 5, "GET / HTTP/1.1"},
		{"bracketed v6 with zone", "common", `[fe80::1%eth0] - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5`,
			ReasonNone, "fe80::1", "2024-01-01 00:00:00", 200, 5, "GET / HTTP/1.1"},
		{"escaped quotes", "combined", `192.0.2.1 - - [01/Jan/2024:00:00:00 +0000] "GET /a\"b HTTP/1.1" 200 1 "-" "agent \"x\" \\"`,
			ReasonNone, "192.0.2.1", "2024-01-01 00:00:00", 200, 1, `GET /a\"b HTTP/1.1`},
		{"empty request", "combined", `192.0.2.1 - - [01/Jan/2024:00:00:00 +0000] "" 408 - "-" "-"`,
			ReasonNone, "192.0.2.1", "2024-01-01 00:00:00", 408, -1, ""},
		{"user with space", "common", `192.0.2.1 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 5`,
			ReasonNone, "192.0.2.1", "2024-01-01 00:00:00", 200, 5, "GET / HTTP/1.1"},
		{"nginx", "nginx", `198.51.100.4 - - [17/May/2015:10:05:03 +0200] "GET / HTTP/1.1" 200 612 "-" "curl/8"`,
			ReasonNone, "198.51.100.4", "2015-05-17 08:05:03", 200, 612, "GET / HTTP/1.1"},
		{"custom subset", `%a [%t] %>s`, `198.51.100.4 [[17/May/2015:10:05:03 +0000]] 503`,
			ReasonNone, "198.51.100.4", "2015-05-17 10:05:03", 503, -1, ""},
		{"iso8601", `$remote_addr $time_iso8601 "$request"`, `2001:db8::1 2015-05-17T10:05:03+02:00 "GET / HTTP/2.0"`,
			ReasonNone, "2001:db8::1", "2015-05-17 08:05:03", -1, -1, "GET / HTTP/2.0"},
		{"tab separated", `%h\t%t\t%s`, "192.0.2.9\t[17/May/2015:10:05:03 +0000]\t200",
			ReasonNone, "192.0.2.9", "2015-05-17 10:05:03", 200, -1, ""},

		{"blank", "combined", "   ", ReasonEmpty, "", "", 0, 0, ""},
		{"dash client", "common", `- - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadClient, "", "", 0, 0, ""},
		{"hostname client", "common", `host.example - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadClient, "", "", 0, 0, ""},
		{"bad octet", "common", `256.1.1.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadClient, "", "", 0, 0, ""},
		{"bad month", "common", `10.0.0.1 - - [17/Mai/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadTime, "", "", 0, 0, ""},
		{"feb 30", "common", `10.0.0.1 - - [30/Feb/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadTime, "", "", 0, 0, ""},
		{"year 1 (no int64 nanoseconds since 1970)", "common", `10.0.0.1 - - [01/Jan/0001:00:00:00 +0000] "GET / HTTP/1.1" 200 5`, ReasonBadTime, "", "", 0, 0, ""},
		{"year 9999", "common", `10.0.0.1 - - [31/Dec/9999:23:59:59 +1400] "GET / HTTP/1.1" 200 5`, ReasonBadTime, "", "", 0, 0, ""},
		{"ISO year 2300", "%h %{%Y-%m-%d %H:%M:%S}t", `10.0.0.1 2300-01-01 00:00:00`, ReasonBadTime, "", "", 0, 0, ""},
		{"no brackets", "common", `10.0.0.1 - - 17/May/2015:10:05:03 +0000 "GET / HTTP/1.1" 200 5`, ReasonBadTime, "", "", 0, 0, ""},
		{"unterminated quote", "common", `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1 200 5`, ReasonUnterminatedQuote, "", "", 0, 0, ""},
		{"bad status", "common", `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 2x0 5`, ReasonBadStatus, "", "", 0, 0, ""},
		{"bad bytes", "common", `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5k`, ReasonBadBytes, "", "", 0, 0, ""},
		{"truncated", "combined", `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5`, ReasonLiteral, "", "", 0, 0, ""},
		{"trailing", "common", `10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5 "x"`, ReasonBadBytes, "", "", 0, 0, ""},
		{"trailing after quote", `%h %t "%r"`, `10.0.0.1 [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" extra`, ReasonTrailing, "", "", 0, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFormat(t, tc.format)
			var rec Record
			got := f.ParseLine([]byte(tc.line), &rec)
			if got != tc.want {
				t.Fatalf("reason %s, want %s", got, tc.want)
			}
			if got != ReasonNone {
				return
			}
			if rec.Client != netip.MustParseAddr(tc.client) {
				t.Errorf("client %v, want %s", rec.Client, tc.client)
			}
			if !rec.Time.Equal(utc(tc.at)) || rec.Time.Location() != time.UTC {
				t.Errorf("time %v, want %s UTC", rec.Time, tc.at)
			}
			if rec.Status != tc.status || rec.Bytes != tc.bytes || string(rec.Request) != tc.request {
				t.Errorf("status %d bytes %d request %q, want %d %d %q", rec.Status, rec.Bytes, rec.Request, tc.status, tc.bytes, tc.request)
			}
		})
	}
}

func TestParseFormatErrors(t *testing.T) {
	for _, tc := range []struct{ spec, msg string }{
		{"", "empty"},
		{`%l %u %t`, "no client address"},
		{`%h %l %u`, "no timestamp"},
		{`%h%t`, "no literal text between"},
		{`%h %{%Y}t`, "give no month"},
		{`%h %t %{Referer`, "unterminated %{"},
		{`%h %t %`, "ends inside a directive"},
		{`%h %h %t`, "two client address"},
		{`%h %t $time_local`, "two timestamp"},
		{`%h %t \n`, "line break"},
		{`%h %t %=`, "unknown directive"},
	} {
		_, err := ParseFormat(tc.spec)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: got %v, want ErrFormat containing %q", tc.spec, err, tc.msg)
		}
	}
	for _, p := range []string{"common", "CLF", "combined", " Combined ", "nginx", "nginx-combined"} {
		if _, err := ParseFormat(p); err != nil {
			t.Errorf("preset %q: %v", p, err)
		}
	}
	if f := mustFormat(t, "combined"); f.String() != Combined {
		t.Errorf("String() = %q", f.String())
	}
}

// TestCLFTimeMatchesTimeParse checks the allocation-free parser against
// time.Parse on edge cases (the fuzz target does the same on any input).
func TestCLFTimeMatchesTimeParse(t *testing.T) {
	for _, s := range []string{
		"17/May/2015:10:05:03 +0000", "01/Jan/1970:00:00:00 -1200", "31/Dec/9999:23:59:59 +1400",
		"29/Feb/2023:00:00:00 +0000", "29/Feb/2000:00:00:00 +0000", "31/Apr/2015:00:00:00 +0000",
		"17/may/2015:10:05:03 +0000", "17/May/2015:24:00:00 +0000", "17/May/2015:10:60:03 +0000",
		"17/May/2015:10:05:60 +0000", "1/May/2015:10:05:03 +0000", "00/May/2015:10:05:03 +0000",
		"17/May/2015:10:05:03 +2400", "17/May/2015:10:05:03 +0060", "17/May/2015:10:05:03 0000",
	} {
		checkCLF(t, s)
	}
}

func checkCLF(t *testing.T, s string) {
	got, ok := parseCLFTime([]byte(s))
	want, err := time.Parse("02/Jan/2006:15:04:05 -0700", s)
	if ok && err != nil {
		t.Fatalf("%q: accepted (%v), time.Parse refuses: %v", s, got, err)
	}
	if ok && !got.Equal(want) {
		t.Fatalf("%q: %v, time.Parse %v", s, got, want)
	}
	// The parser may be stricter than time.Parse (which accepts a one-digit
	// day or hour, a month in any case, extra spaces, a zone of +2400 or
	// +0060), never on a canonical timestamp with a real zone offset.
	if !ok && err == nil && want.Format("02/Jan/2006:15:04:05 -0700") == s && s[22:24] <= "23" {
		t.Fatalf("%q: refused, time.Parse accepts %v", s, want)
	}
}

func FuzzCLFTime(f *testing.F) {
	f.Add("17/May/2015:10:05:03 +0000")
	f.Add("29/Feb/2000:23:59:59 -0930")
	f.Fuzz(func(t *testing.T, s string) { checkCLF(t, s) })
}

// FuzzParseLine: any line in the preset formats and in formats with the
// X-Forwarded-For field and composed timestamps either parses into a
// record with a valid address and a UTC time or is refused with a reason;
// no panic, a parsed request lies inside the line, and the client differs
// from the connecting address only when the header gave it.
func FuzzParseLine(f *testing.F) {
	f.Add(uint8(0), combinedLine)
	f.Add(uint8(1), `10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326`)
	f.Add(uint8(2), `2001:db8::1 - - [17/May/2015:10:05:03 +0200] "GET /\"x HTTP/1.1" 200 612 "-" "curl\\"`)
	f.Add(uint8(3), `198.51.100.4 [[17/May/2015:10:05:03 +0000]] 503`)
	f.Add(uint8(4), xffLine("10.0.0.1", "203.0.113.7, [2001:db8::1]:443, 10.0.0.2"))
	f.Add(uint8(5), xffLine("10.0.0.1", "203.0.113.7:80, junk, 10.0.0.2"))
	f.Add(uint8(6), `192.0.2.1 [17/May/2015:10:05:03 +0200] 200`)
	f.Add(uint8(7), `192.0.2.1 17/May/2015 10:05:03.123 +0200 200`)
	f.Add(uint8(8), `192.0.2.1 1431857103.123 "-" 200`)
	f.Add(uint8(9), `192.0.2.1 1431857103.042 200`)
	f.Add(uint8(10), `192.0.2.1 Sun, 17 May 2015 10:05:03 GMT 200`)
	f.Add(uint8(11), `192.0.2.1 2015-137 10:05 200`)
	trusted, err := mustFormat(f, xffCombined).WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8"))
	if err != nil {
		f.Fatal(err)
	}
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.UTC
	}
	local, err := mustFormat(f, `%h %{%Y-%j %H:%M}t %>s`).InLocation(paris)
	if err != nil {
		f.Fatal(err)
	}
	formats := []*Format{mustFormat(f, "combined"), mustFormat(f, "common"), mustFormat(f, "nginx"), mustFormat(f, `%a [%t] %>s`),
		mustFormat(f, xffCombined), trusted,
		mustFormat(f, `%h [%{%d/%b/%Y:%H:%M:%S %z}t] %>s`),
		mustFormat(f, `%h %{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t %>s`),
		mustFormat(f, `$remote_addr $msec "$http_x_forwarded_for" $status`),
		mustFormat(f, `%h %{sec}t.%{msec_frac}t %>s`),
		mustFormat(f, `%h %{%a, %d %b %Y %T %Z}t %>s`), local,
	}
	f.Fuzz(func(t *testing.T, which uint8, line string) {
		fm := formats[int(which)%len(formats)]
		var rec Record
		r := fm.ParseLine([]byte(line), &rec)
		if r >= numReasons {
			t.Fatalf("reason %d out of range", r)
		}
		if r != ReasonNone {
			return
		}
		if !rec.Client.IsValid() || rec.Client.Is4In6() || rec.Client.Zone() != "" {
			t.Fatalf("client %v", rec.Client)
		}
		// (Year 1 is the zero Time: a parsed time is only checked for UTC.)
		if rec.Time.Location() != time.UTC {
			t.Fatalf("time %v", rec.Time)
		}
		if rec.Forwarded != ForwardedUsed && rec.Client != rec.Peer || !rec.Peer.IsValid() {
			t.Fatalf("client %v peer %v (%d)", rec.Client, rec.Peer, rec.Forwarded)
		}
		if rec.Request != nil && !strings.Contains(line, string(rec.Request)) {
			t.Fatalf("request %q not in line", rec.Request)
		}
	})
}
