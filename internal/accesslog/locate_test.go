package accesslog

import (
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPrefixTable(t *testing.T) {
	tab, err := ReadPrefixCSV(strings.NewReader(`prefix,region
# comment
10.0.0.0/8,eu-west
10.1.0.0/16, eu-central
10.1.2.0/24,paris
0.0.0.0/0,rest-v4
2001:db8::/32,v6-a
2001:db8:ff00::/40,v6-b
`), "prefixes.csv")
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 6 {
		t.Fatalf("len %d", tab.Len())
	}
	for _, tc := range []struct{ addr, want string }{
		{"10.9.9.9", "eu-west"},
		{"10.1.9.9", "eu-central"},
		{"10.1.2.200", "paris"},
		{"::ffff:10.1.2.3", "paris"}, // a dual-stack log's IPv4 client
		{"192.0.2.1", "rest-v4"},
		{"2001:db8:ff12::1", "v6-b"},
		{"2001:db8:1::1", "v6-a"},
		{"2002::1", ""}, // 0.0.0.0/0 does not cover IPv6, as in the data plane's separate tries
	} {
		got, ok := tab.Locate(netip.MustParseAddr(tc.addr))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: %q %v, want %q", tc.addr, got, ok, tc.want)
		}
	}
	for _, tc := range []struct{ in, msg string }{
		{"10.0.0.1/8,a\n", "line 1: bad prefix table: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"},
		{"10.0.0.0/8,a\n10.0.0.0/8,b\n", `line 2: bad prefix table: 10.0.0.0/8 listed twice (regions "a" and "b")`},
		{"10.0.0.0/8,\n", "empty location name"},
		{"10.0.0.0/8,\"a,b\"\n", `contains ','`},
		{"10.0.0.0/33,a\n", "line 1"},
		{"10.0.0.0/8,a,b\n", "wrong number of fields"},
		{"prefix,region\n", "no prefixes"},
	} {
		_, err := ReadPrefixCSV(strings.NewReader(tc.in), "p.csv")
		if !errors.Is(err, ErrPrefixes) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: got %v, want %q", tc.in, err, tc.msg)
		}
	}
}

type mapLocator map[string]string

func (m mapLocator) Locate(a netip.Addr) (string, bool) { l, ok := m[a.String()]; return l, ok }

func TestChain(t *testing.T) {
	c := Chain{mapLocator{"10.0.0.1": "a"}, mapLocator{"10.0.0.1": "b", "10.0.0.2": "c"}}
	for addr, want := range map[string]string{"10.0.0.1": "a", "10.0.0.2": "c", "10.0.0.3": ""} {
		if got, ok := c.Locate(netip.MustParseAddr(addr)); got != want || ok != (want != "") {
			t.Errorf("%s: %q", addr, got)
		}
	}
}

func TestCountsCSV(t *testing.T) {
	loc := mapLocator{"10.0.0.1": "US", "10.0.0.2": "DE", "10.0.0.3": "FR", "10.0.0.4": "NZ"}
	c, err := NewCounts(time.Hour, loc, "")
	if err != nil {
		t.Fatal(err)
	}
	at := func(h, m int) time.Time { return time.Date(2015, 5, 17, h, m, 0, 0, time.UTC) }
	add := func(a string, t time.Time, n int) {
		for range n {
			c.Add(netip.MustParseAddr(a), t)
		}
	}
	add("10.0.0.1", at(10, 5), 5)
	add("10.0.0.2", at(10, 59), 3)
	add("10.0.0.3", at(12, 0), 2) // 11:00 has no request at all: written as zeros
	add("10.0.0.4", at(12, 30), 1)
	add("10.0.0.9", at(12, 31), 1) // unknown
	if c.Total() != 12 || c.Unknown() != 1 {
		t.Fatalf("total %d unknown %d", c.Total(), c.Unknown())
	}
	var b strings.Builder
	if err := c.WriteCSV(&b, WriteOptions{Top: 2, KeepPartial: true}); err != nil {
		t.Fatal(err)
	}
	want := `timestamp,location,value
2015-05-17 10:00:00,DE,3
2015-05-17 10:00:00,US,5
2015-05-17 10:00:00,other,0
2015-05-17 11:00:00,DE,0
2015-05-17 11:00:00,US,0
2015-05-17 11:00:00,other,0
2015-05-17 12:00:00,DE,0
2015-05-17 12:00:00,US,0
2015-05-17 12:00:00,other,4
`
	if b.String() != want {
		t.Fatalf("top 2:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := c.WriteCSV(&b, WriteOptions{Total: true, KeepPartial: true}); err != nil {
		t.Fatal(err)
	}
	if want := "timestamp,value\n2015-05-17 10:00:00,8\n2015-05-17 11:00:00,0\n2015-05-17 12:00:00,4\n"; b.String() != want {
		t.Fatalf("total:\n%s", b.String())
	}
	b.Reset()
	if err := c.WriteCSV(&b, WriteOptions{KeepPartial: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "2015-05-17 12:00:00,unknown,1\n") || strings.Count(b.String(), "\n") != 1+3*5 {
		t.Fatalf("all:\n%s", b.String())
	}
	locs := c.Locations()
	if locs[0] != (LocationTotal{"US", 5}) || locs[1] != (LocationTotal{"DE", 3}) || locs[len(locs)-1].Requests != 1 {
		t.Fatalf("locations %v", locs)
	}
	old, _ := NewCounts(time.Hour, nil, "")
	old.Add(netip.MustParseAddr("10.0.0.1"), time.Date(1969, 12, 31, 23, 30, 0, 0, time.UTC))
	// By default the first and last (partial) buckets are dropped.
	b.Reset()
	if err := c.WriteCSV(&b, WriteOptions{Total: true}); err != nil || b.String() != "timestamp,value\n2015-05-17 11:00:00,0\n" {
		t.Fatalf("trimmed: %v\n%s", err, b.String())
	}
	if err := old.WriteCSV(&b, WriteOptions{}); !errors.Is(err, ErrEmpty) || !strings.Contains(err.Error(), "all partial") {
		t.Fatalf("one bucket trimmed: %v", err)
	}
	empty, _ := NewCounts(time.Minute, nil, "nowhere")
	if err := empty.WriteCSV(&b, WriteOptions{}); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty: %v", err)
	}
	if _, err := NewCounts(0, nil, ""); err == nil {
		t.Fatal("zero step accepted")
	}
	// Buckets align to the epoch, also before 1970 (floor, not truncation).
	b.Reset()
	if err := old.WriteCSV(&b, WriteOptions{Total: true, KeepPartial: true}); err != nil || !strings.Contains(b.String(), "1969-12-31 23:00:00,1") {
		t.Fatalf("pre-epoch: %v %s", err, b.String())
	}
}

// TestTrimStray: a few requests far from all the others (a typo'd year, a
// reset clock) are left out by the rule forecast's tables apply to rows;
// anything more than 1% of the requests, or not separated by more than the
// rest's span, stays.
func TestTrimStray(t *testing.T) {
	day := time.Date(2015, 5, 17, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name          string
		extra         []time.Time // besides 200 requests an hour over two days
		before, after uint64
		rows          int // hourly rows written after trimming (0: not written)
	}{
		{"none", nil, 0, 0, 48},
		{"a typo'd year after", []time.Time{day.AddDate(90, 0, 0)}, 0, 1, 48},
		{"a reset clock before", []time.Time{time.Unix(0, 0), time.Unix(60, 0)}, 2, 0, 48},
		{"both ends", []time.Time{time.Unix(0, 0), day.AddDate(90, 0, 0), day.AddDate(91, 0, 0)}, 1, 2, 48},
		{"near the rest: a gap shorter than the span", []time.Time{day.Add(-40 * time.Hour)}, 0, 0, 88},
		{"more than 1% of the requests", slices.Repeat([]time.Time{day.AddDate(90, 0, 0)}, 100), 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewCounts(time.Hour, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			a := netip.MustParseAddr("10.0.0.1")
			for h := range 48 {
				for range 200 {
					c.Add(a, day.Add(time.Duration(h)*time.Hour))
				}
			}
			for _, x := range tc.extra {
				c.Add(a, x)
			}
			total := c.Total()
			st := c.TrimStray()
			if st.Before != tc.before || st.After != tc.after || c.Total() != total-tc.before-tc.after {
				t.Fatalf("left out %d before, %d after (total %d → %d), want %d, %d", st.Before, st.After, total, c.Total(), tc.before, tc.after)
			}
			if (tc.before > 0) == st.First.IsZero() || (tc.after > 0) == st.Last.IsZero() {
				t.Fatalf("stray span %v .. %v", st.First, st.Last)
			}
			if tc.rows == 0 {
				return
			}
			var b strings.Builder
			if err := c.WriteCSV(&b, WriteOptions{Total: true, KeepPartial: true}); err != nil {
				t.Fatal(err)
			}
			if rows := strings.Count(b.String(), "\n") - 1; rows != tc.rows {
				t.Fatalf("%d rows, want %d", rows, tc.rows)
			}
		})
	}
	// Beyond the bound on rows (ten years of minutes for a dozen
	// locations), writing is refused with the span named, not attempted.
	c, _ := NewCounts(time.Second, nil, "")
	a := netip.MustParseAddr("10.0.0.1")
	for _, y := range []int{0, 5, 10} {
		c.Add(a, day.AddDate(y, 0, 0))
	}
	if err := c.WriteCSV(io.Discard, WriteOptions{}); err == nil || !strings.Contains(err.Error(), "stray date") {
		t.Fatalf("a 10-year span of 1 s buckets: %v", err)
	}
}
