package accesslog

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// xffCombined is the combined format with the header appended, as
// configured behind a load balancer.
const xffCombined = Combined + ` "%{X-Forwarded-For}i"`

func xffLine(peer, header string) string {
	return peer + ` - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8" "` + header + `"`
}

func TestForwardedClient(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48"),
		netip.MustParsePrefix("192.0.2.0/24")}
	for _, tc := range []struct {
		name, peer, header string
		trusted            bool
		client             string
		want               Forwarded
	}{
		// No trusted proxies: the leftmost entry that is an address.
		{"absent dash", "10.0.0.1", "-", false, "10.0.0.1", ForwardedNone},
		{"absent empty", "10.0.0.1", "", false, "10.0.0.1", ForwardedNone},
		{"single", "10.0.0.1", "203.0.113.7", false, "203.0.113.7", ForwardedUsed},
		{"leftmost of chain", "10.0.0.1", "203.0.113.7, 198.51.100.2, 10.0.0.9", false, "203.0.113.7", ForwardedUsed},
		{"v4 with port", "10.0.0.1", "203.0.113.7:5678", false, "203.0.113.7", ForwardedUsed},
		{"bracketed v6 with port", "10.0.0.1", "[2001:db8::1]:443, 10.0.0.2", false, "2001:db8::1", ForwardedUsed},
		{"bracketed v6", "10.0.0.1", " [2001:db8::1] ", false, "2001:db8::1", ForwardedUsed},
		{"bare v6", "10.0.0.1", "2001:db8::1,10.0.0.2", false, "2001:db8::1", ForwardedUsed},
		{"mapped v4 unmapped", "10.0.0.1", "::ffff:203.0.113.7", false, "203.0.113.7", ForwardedUsed},
		{"skips junk on the left", "10.0.0.1", "unknown, , 203.0.113.7", false, "203.0.113.7", ForwardedUsed},
		{"tabs and spaces", "10.0.0.1", "\t203.0.113.7 ,10.0.0.2", false, "203.0.113.7", ForwardedUsed},
		{"nothing parses", "10.0.0.1", "unknown, host.example", false, "10.0.0.1", ForwardedUnusable},
		{"bad port", "10.0.0.1", "203.0.113.7:99999", false, "10.0.0.1", ForwardedUnusable},
		{"empty port", "10.0.0.1", "203.0.113.7:", false, "10.0.0.1", ForwardedUnusable},
		{"junk after bracket", "10.0.0.1", "[2001:db8::1]x", false, "10.0.0.1", ForwardedUnusable},
		{"unclosed bracket", "10.0.0.1", "[2001:db8::1", false, "10.0.0.1", ForwardedUnusable},
		{"only commas", "10.0.0.1", ",,,", false, "10.0.0.1", ForwardedUnusable},

		// Trusted proxies: right to left, skipping trusted hops.
		{"untrusted peer ignored", "198.51.100.1", "203.0.113.7", true, "198.51.100.1", ForwardedUntrusted},
		{"untrusted peer, absent header", "198.51.100.1", "-", true, "198.51.100.1", ForwardedNone},
		{"one hop", "10.0.0.1", "203.0.113.7", true, "203.0.113.7", ForwardedUsed},
		{"forged left entry not believed", "10.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.2", true, "203.0.113.7", ForwardedUsed},
		{"trusted v6 hop with port", "10.0.0.1", "203.0.113.7, [2001:db8:ffff::5]:8080", true, "203.0.113.7", ForwardedUsed},
		{"all trusted: leftmost", "10.0.0.1", "10.0.0.5, 192.0.2.4, 10.0.0.2", true, "10.0.0.5", ForwardedUsed},
		{"bad entry stops the walk", "10.0.0.1", "203.0.113.7, junk, 10.0.0.2", true, "10.0.0.2", ForwardedUsed},
		{"rightmost bad: unusable", "10.0.0.1", "203.0.113.7, junk", true, "10.0.0.1", ForwardedUnusable},
		{"trusted peer v6", "2001:db8:ffff::1", "2001:db8:1::7", true, "2001:db8:1::7", ForwardedUsed},
		{"mapped peer is trusted as v4", "::ffff:10.0.0.1", "203.0.113.7", true, "203.0.113.7", ForwardedUsed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFormat(t, xffCombined)
			if tc.trusted {
				var err error
				if f, err = f.WithTrustedProxies(trusted...); err != nil {
					t.Fatal(err)
				}
			}
			var rec Record
			if r := f.ParseLine([]byte(xffLine(tc.peer, tc.header)), &rec); r != ReasonNone {
				t.Fatalf("reason %s", r)
			}
			if rec.Client != netip.MustParseAddr(tc.client) || rec.Forwarded != tc.want {
				t.Fatalf("client %v (%d), want %s (%d)", rec.Client, rec.Forwarded, tc.client, tc.want)
			}
			if rec.Peer != netip.MustParseAddr(tc.peer).Unmap() {
				t.Fatalf("peer %v, want %s", rec.Peer, tc.peer)
			}
		})
	}
}

func TestForwardedFormats(t *testing.T) {
	// Nginx's variable, Apache's header in any case, and the header
	// before the client field: the client is resolved after the line.
	for _, tc := range []struct{ spec, line string }{
		{`$remote_addr [$time_local] "$http_x_forwarded_for"`, `10.0.0.1 [17/May/2015:10:05:03 +0000] "203.0.113.7, 10.0.0.2"`},
		{`%h %t "%{x-forwarded-FOR}i"`, `10.0.0.1 [17/May/2015:10:05:03 +0000] "203.0.113.7"`},
		{`"%{X-Forwarded-For}i" %a %t`, `"203.0.113.7" 10.0.0.1 [17/May/2015:10:05:03 +0000]`},
		{`%h %{X-Forwarded-For}i %t`, `10.0.0.1 203.0.113.7,10.0.0.2 [17/May/2015:10:05:03 +0000]`},
	} {
		f := mustFormat(t, tc.spec)
		if !f.HasForwarded() {
			t.Fatalf("%s: no forwarded field", tc.spec)
		}
		var rec Record
		if r := f.ParseLine([]byte(tc.line), &rec); r != ReasonNone || rec.Client.String() != "203.0.113.7" || rec.Peer.String() != "10.0.0.1" {
			t.Errorf("%s: %s client %v peer %v", tc.spec, r, rec.Client, rec.Peer)
		}
	}
	// The client field is still needed and still parsed strictly.
	if _, err := ParseFormat(`%t "%{X-Forwarded-For}i"`); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "no client address") {
		t.Errorf("no client field: %v", err)
	}
	if _, err := ParseFormat(`%h %t "%{X-Forwarded-For}i" "$http_x_forwarded_for"`); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "two X-Forwarded-For") {
		t.Errorf("two header fields: %v", err)
	}
	var rec Record
	if r := mustFormat(t, xffCombined).ParseLine([]byte(xffLine("-", "203.0.113.7")), &rec); r != ReasonBadClient {
		t.Errorf("dash peer with a header: %s, want bad_client", r)
	}
	// Other headers stay skipped fields.
	if mustFormat(t, Combined).HasForwarded() {
		t.Error("combined has no forwarded field")
	}
}

func TestWithTrustedProxies(t *testing.T) {
	f := mustFormat(t, xffCombined)
	if _, err := mustFormat(t, Combined).WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8")); !errors.Is(err, ErrTrustedProxies) ||
		!strings.Contains(err.Error(), "no X-Forwarded-For field") {
		t.Errorf("format without the header: %v", err)
	}
	if _, err := f.WithTrustedProxies(netip.MustParsePrefix("10.0.0.1/8")); !errors.Is(err, ErrTrustedProxies) || !strings.Contains(err.Error(), "host bits") {
		t.Errorf("host bits: %v", err)
	}
	if _, err := f.WithTrustedProxies(netip.Prefix{}); !errors.Is(err, ErrTrustedProxies) {
		t.Errorf("invalid prefix: %v", err)
	}
	g, err := f.WithTrustedProxies(netip.MustParsePrefix("::ffff:10.0.0.0/104"))
	if err != nil || len(g.TrustedProxies()) != 1 || g.TrustedProxies()[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Fatalf("mapped prefix: %v %v", err, g.TrustedProxies())
	}
	if len(f.TrustedProxies()) != 0 {
		t.Fatal("WithTrustedProxies changed the original")
	}

	for _, tc := range []struct {
		in   string
		want string // prefixes joined by space, or an error substring
		err  bool
	}{
		{"10.0.0.0/8", "10.0.0.0/8", false},
		{" 10.0.0.0/8 , 2001:db8::/32,192.0.2.1", "10.0.0.0/8 2001:db8::/32 192.0.2.1/32", false},
		{"2001:db8::1", "2001:db8::1/128", false},
		{"10.0.0.1/8", "host bits", true},
		{"10.0.0.0/33", "10.0.0.0/33", true},
		{"proxy.example", "neither a CIDR prefix nor an address", true},
		{" , ", "empty list", true},
	} {
		ps, err := ParseTrustedProxies(tc.in)
		if tc.err {
			if !errors.Is(err, ErrTrustedProxies) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: %v, want error containing %q", tc.in, err, tc.want)
			}
			continue
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.String())
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%q: %v %v, want %s", tc.in, got, err, tc.want)
		}
	}
}

// TestReaderCountsForwarded: the reader's stats split records by what
// their header did; an unusable header is not a malformed line.
func TestReaderCountsForwarded(t *testing.T) {
	in := strings.Join([]string{
		xffLine("10.0.0.1", "203.0.113.7"),
		xffLine("10.0.0.1", "-"),
		xffLine("10.0.0.1", "garbage"),
		xffLine("198.51.100.1", "203.0.113.8"),
		xffLine("10.0.0.1", "203.0.113.9, 10.0.0.3"),
	}, "\n")
	f, err := mustFormat(t, xffCombined).WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(strings.NewReader(in), f, Options{})
	var clients []string
	for r.Next() {
		clients = append(clients, r.Record().Client.String())
	}
	st := r.Stats()
	if r.Err() != nil || strings.Join(clients, " ") != "203.0.113.7 10.0.0.1 10.0.0.1 198.51.100.1 203.0.113.9" {
		t.Fatalf("%v %v", r.Err(), clients)
	}
	if st.Records != 5 || st.Skipped() != 0 || st.Forwarded != 2 || st.ForwardedUnusable != 1 || st.ForwardedUntrusted != 1 {
		t.Fatalf("stats %+v", st)
	}
	var sum Stats
	sum.Add(st)
	sum.Add(st)
	if sum.Forwarded != 4 || sum.ForwardedUnusable != 2 || sum.ForwardedUntrusted != 2 {
		t.Fatalf("Add: %+v", sum)
	}
}

// TestParseLineAllocs: the parser allocates nothing per line, header walk
// and composed timestamps included.
func TestParseLineAllocs(t *testing.T) {
	trusted, err := mustFormat(t, xffCombined).WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48"))
	if err != nil {
		t.Fatal(err)
	}
	paris := loadParis(t)
	local, err := mustFormat(t, `%h [%{%d/%b/%Y:%H:%M:%S}t] %>s`).InLocation(paris)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    *Format
		line string
	}{
		{mustFormat(t, "combined"), combinedLine},
		{mustFormat(t, "common"), `2001:db8::17 - - [01/Jan/2024:00:00:00 +0130] "HEAD / HTTP/1.1" 304 -`},
		{mustFormat(t, xffCombined), xffLine("10.0.0.1", "junk, [2001:db8::1]:443, 10.0.0.2")},
		{trusted, xffLine("10.0.0.1", "203.0.113.7, junk, [2001:db8:ffff::2]:80, 10.0.0.2")},
		{mustFormat(t, `%h [%{%d/%b/%Y:%H:%M:%S %z}t] %>s`), `10.0.0.1 [17/May/2015:10:05:03 +0200] 200`},
		{local, `10.0.0.1 [17/May/2015:10:05:03] 200`},
		{mustFormat(t, `%h %{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t %>s`), `10.0.0.1 17/May/2015 10:05:03.123 +0200 200`},
		{mustFormat(t, `%h %{msec}t %>s`), `10.0.0.1 1431857103123 200`},
		{mustFormat(t, `$remote_addr $msec $status`), `10.0.0.1 1431857103.123 200`},
	} {
		line := []byte(tc.line)
		var rec Record
		if r := tc.f.ParseLine(line, &rec); r != ReasonNone {
			t.Fatalf("%s: %s", tc.f, r)
		}
		if n := testing.AllocsPerRun(100, func() { tc.f.ParseLine(line, &rec) }); n != 0 {
			t.Errorf("%s: %v allocations per line", tc.f, n)
		}
	}
}

// refForwarded is a plain reference of the header walk, on strings and
// net/netip, for FuzzForwarded.
func refForwarded(peer netip.Addr, h string, trusted []netip.Prefix) (netip.Addr, Forwarded) {
	if h == "" || h == "-" {
		return peer, ForwardedNone
	}
	entry := func(e string) (netip.Addr, bool) {
		e = strings.Trim(e, " \t")
		var a netip.Addr
		var err error
		switch {
		case strings.HasPrefix(e, "["):
			end := strings.IndexByte(e, ']')
			if end < 0 {
				return a, false
			}
			if tail := e[end+1:]; tail != "" {
				if _, err := netip.ParseAddrPort("0.0.0.0" + tail); err != nil {
					return a, false
				}
			}
			a, err = netip.ParseAddr(e[1:end])
		case strings.Count(e, ":") == 1:
			var ap netip.AddrPort
			ap, err = netip.ParseAddrPort(e)
			a = ap.Addr()
		default:
			a, err = netip.ParseAddr(e)
		}
		return a.WithZone("").Unmap(), err == nil
	}
	parts := strings.Split(h, ",")
	inTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if len(trusted) == 0 {
		for _, e := range parts {
			if a, ok := entry(e); ok {
				return a, ForwardedUsed
			}
		}
		return peer, ForwardedUnusable
	}
	if !inTrusted(peer) {
		return peer, ForwardedUntrusted
	}
	var last netip.Addr
	for i := len(parts) - 1; i >= 0; i-- {
		a, ok := entry(parts[i])
		if !ok {
			break
		}
		last = a
		if !inTrusted(a) {
			break
		}
	}
	if !last.IsValid() {
		return peer, ForwardedUnusable
	}
	return last, ForwardedUsed
}

// FuzzForwarded compares the parser's header walk with refForwarded, with
// and without trusted proxies, on any header text.
func FuzzForwarded(f *testing.F) {
	for _, h := range []string{"203.0.113.7", "203.0.113.7:80, 10.0.0.2", "[2001:db8::1]:443,10.1.2.3", "junk, 10.0.0.5",
		"::ffff:10.0.0.9, 2001:db8:ffff::1", "-", "", " , ,", "fe80::1%eth0", "1.2.3.4:0080"} {
		f.Add(h, false)
		f.Add(h, true)
	}
	plain := mustFormat(f, `%h "%{X-Forwarded-For}i" %t`)
	trustedList := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	trusted, err := plain.WithTrustedProxies(trustedList...)
	if err != nil {
		f.Fatal(err)
	}
	peer := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, h string, useTrusted bool) {
		if strings.ContainsAny(h, "\"\n") {
			return // the field ends at a quote; the reader splits lines
		}
		fm, tl := plain, []netip.Prefix(nil)
		if useTrusted {
			fm, tl = trusted, trustedList
		}
		var rec Record
		if r := fm.ParseLine([]byte(`10.0.0.1 "`+h+`" [17/May/2015:10:05:03 +0000]`), &rec); r != ReasonNone {
			if strings.HasSuffix(h, `\`) {
				return // escapes the closing quote
			}
			t.Fatalf("reason %s", r)
		}
		wantA, wantF := refForwarded(peer, h, tl)
		if rec.Client != wantA || rec.Forwarded != wantF || rec.Peer != peer {
			t.Fatalf("%q: client %v (%d), reference %v (%d)", h, rec.Client, rec.Forwarded, wantA, wantF)
		}
		if !rec.Client.IsValid() || rec.Client.Is4In6() || rec.Client.Zone() != "" {
			t.Fatalf("client %v", rec.Client)
		}
	})
}
