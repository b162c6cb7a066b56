package textin

import (
	"bufio"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	for _, c := range []struct{ name, in, want, head string }{
		{"plain", "a,b\n1,2\n", "a,b\n1,2\n", "a,b\n1,2\n"},
		{"byte-order mark", "\ufeffa,b\r\n1,2\r\n", "a,b\r\n1,2\r\n", "a,b\r\n1,2\r\n"},
		{"CR only", "a;b\r1;2\r", "a;b\n1;2\n", "a;b\r1;2\r"},
		{"mark and CR only", "\ufeffa\r1\r", "a\n1\n", "a\r1\r"},
		{"CRLF kept", "a\r\n1\r\n", "a\r\n1\r\n", "a\r\n1\r\n"},
		{"empty", "", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			in, head := Normalize(bufio.NewReader(strings.NewReader(c.in)))
			got, err := io.ReadAll(in)
			if err != nil || string(got) != c.want || string(head) != c.head {
				t.Fatalf("read %q head %q (%v), want %q head %q", got, head, err, c.want, c.head)
			}
		})
	}
}

func TestIsUTF16(t *testing.T) {
	for in, want := range map[string]bool{"\xff\xfea\x00": true, "\xfe\xff\x00a": true, "\ufeffa": false, "ab": false, "\xff": false} {
		if IsUTF16([]byte(in)) != want {
			t.Errorf("IsUTF16(%q) = %v", in, !want)
		}
	}
}

func TestSeparator(t *testing.T) {
	for _, c := range []struct {
		line string
		want rune
	}{
		{"timestamp,value", ','},
		{"timestamp;value", ';'},
		{"timestamp\tvalue", '\t'},
		{"timestamp", ','},
		{"", ','},
		{"time\tlocation\trequests (count, per hour)", '\t'},
		{"time;requests (count, per hour);note", ';'},
		{`"time; UTC",value`, ','},
		{`"a,b,c";x;y`, ';'},
		{"a,b;c", ';'}, // a tie: the comma is the one that appears by accident
		{"a;b\tc\td", '\t'},
		{"time\trequests (count, per hour)\n2024-01-01 00:00\t5\n", '\t'},
		{"2024-01-01 00:00;0,5\n2024-01-01 01:00;1,25\n", ';'}, // headerless, decimal commas
		{"# comment, with commas\n\ntimestamp;value\n", ';'},
		{"timestamp,value,note\n2024-01-01,1,a;b\n2024-01-02,2,c\n", ','},
	} {
		if got := Separator([]byte(c.line)); got != c.want {
			t.Errorf("Separator(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

// TestStrayEnds: placeholder and typo'd dates at either end are found,
// also when strays at both ends hide each other on a first pass; a
// cluster holding more than 1% of the samples, or one nearer than the
// rest's span, stays.
func TestStrayEnds(t *testing.T) {
	const day = 86400
	series := func(n int, extra ...int64) []int64 {
		var p []int64
		for i := range n {
			p = append(p, 1_431_820_800+int64(i)*3600) // 2015-05-17, hourly
		}
		p = append(p, extra...)
		slices.Sort(p)
		return p
	}
	for _, tc := range []struct {
		name       string
		pos        []int64
		weight     []uint64
		lead, tail int
	}{
		{"none", series(200), nil, 0, 0},
		{"epoch zero", series(200, 0), nil, 1, 0},
		{"a typo'd year", series(200, 1_431_820_800+90*365*day), nil, 0, 1},
		{"both ends hide each other on a first pass", series(200, 0, 1_431_820_800+90*365*day), nil, 1, 1},
		{"near: the gap is shorter than the span", series(200, 1_431_820_800-3*day), nil, 0, 0},
		{"more than 1% of the samples", series(100, 0, 1), nil, 0, 0},
		{"weighted: one stray bucket of a few requests", []int64{0, 100, 101, 102}, []uint64{1, 300, 300, 300}, 1, 0},
		{"weighted: the far bucket holds 2%", []int64{0, 100, 101, 102}, []uint64{20, 300, 300, 300}, 0, 0},
		{"too few to tell", []int64{0, 1000}, nil, 0, 0},
	} {
		if lead, tail := StrayEnds(tc.pos, tc.weight); lead != tc.lead || tail != tc.tail {
			t.Errorf("%s: lead %d tail %d, want %d %d", tc.name, lead, tail, tc.lead, tc.tail)
		}
	}
}
