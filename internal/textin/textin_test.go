package textin

import (
	"bufio"
	"io"
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
