package eval

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// acceptOrMatch checks a reader's result: with wantErr, an ErrFormat
// naming it (ok false); else an accepted, well-formed matrix, whose site
// names it returns.
func acceptOrMatch(t *testing.T, m *Matrix, err error, wantErr string) (names []string, ok bool) {
	t.Helper()
	if wantErr != "" {
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want ErrFormat mentioning %q", err, wantErr)
		}
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	checkMatrix(t, m)
	for _, s := range m.Sites {
		names = append(names, s.Name)
	}
	return names, true
}

// TestReadPairsUnseenShapes covers matrices shaped unlike the shared files:
// encodings, header spellings, names, repeated rows and times, and files
// cut short. note is a substring every accepted matrix's Notes must hold
// ("" = no notes at all).
func TestReadPairsUnseenShapes(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		sites   []string
		snaps   int
		note    string
		check   func(*Matrix) bool
		wantErr string
	}{
		{name: "BOM without header", in: "\ufeffa,b,10\nb,a,12\n", sites: []string{"a", "b"}, snaps: 1},
		{name: "BOM and CRLF with header", in: "\ufeffsrc,dst,rtt_ms\r\na,b,10\r\nb,a,12\r\n", sites: []string{"a", "b"}, snaps: 1,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 10 }},
		{name: "IBM-style header through the generic reader", in: "date,src_region,dst_region,avg_rtt_ms\n2024-01-01,x,y,5\n2024-01-08,x,y,7\n",
			sites: []string{"x", "y"}, snaps: 2, check: func(m *Matrix) bool { return m.Dated && m.Snaps[1].RTT[1].Avg == 7 }},
		{name: "quoted names with commas, spaces, unicode", in: "src,dst,rtt_ms\n\"Washington, DC\",東京,150\n\" São Paulo \",\"Washington, DC\",120\n",
			sites: []string{"Washington, DC", "東京", "São Paulo"}, snaps: 1},
		{name: "repeated rows averaged and noted", in: "src,dst,rtt_ms\na,b,10\na,b,20\na,b,30\nb,a,5\n", sites: []string{"a", "b"}, snaps: 1,
			note: "1 pair(s) were measured more than once", check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 20 && m.Snaps[0].RTT[2].Avg == 5 }},
		{name: "repeated rows at one date averaged", in: "src,dst,rtt_ms,time\na,b,10,2024-01-01\na,b,30,2024-01-01\na,b,7,2024-01-08\n",
			sites: []string{"a", "b"}, snaps: 2, note: "more than once", check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 20 && m.Snaps[1].RTT[1].Avg == 7 }},
		{name: "numeric times spelled twice are one snapshot", in: "src,dst,rtt_ms,time\na,b,10,60\na,b,20,60.0\na,b,5,0\n",
			sites: []string{"a", "b"}, snaps: 2, note: "same instant",
			check: func(m *Matrix) bool {
				return m.Snaps[1].At == 60 && m.Snaps[1].RTT[1].Avg == 15 && m.Snaps[0].RTT[1].Avg == 5
			}},
		{name: "a date and its midnight are one snapshot", in: "src,dst,rtt_ms,time\na,b,10,2024-01-01\nb,a,20,2024-01-01T00:00:00Z\na,b,30,2024-01-08\n",
			sites: []string{"a", "b"}, snaps: 2, note: "same instant",
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 10 && m.Snaps[0].RTT[2].Avg == 20 }},
		{name: "unsorted numeric times", in: "a,b,30,600\na,b,10,0\na,b,20,300\n", sites: []string{"a", "b"}, snaps: 3,
			check: func(m *Matrix) bool {
				return m.Snaps[0].RTT[1].Avg == 10 && m.Snaps[1].RTT[1].Avg == 20 && m.Snaps[2].At == 600
			}},
		{name: "date-time spellings", in: "src,dst,rtt_ms,time\na,b,1,2024/01/01\na,b,2,2024-01-01T06:00\na,b,3,2024-01-01 12:00:00\na,b,4,2024-01-01T18:00:00+00:00\n",
			sites: []string{"a", "b"}, snaps: 4, check: func(m *Matrix) bool { return m.Snaps[3].At == 18*3600 && m.Snaps[3].RTT[1].Avg == 4 }},
		{name: "day-first date refused", in: "src,dst,rtt_ms,time\na,b,1,31/01/2024\n", wantErr: "neither seconds nor a date"},
		{name: "single date", in: "src,dst,rtt_ms,date\na,b,10,2024-01-01\n", sites: []string{"a", "b"}, snaps: 1},
		{name: "self pairs and zero RTT kept", in: "src,dst,rtt_ms\na,a,0\na,b,0\n", sites: []string{"a", "b"}, snaps: 1,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[0].Avg == 0 && m.Snaps[0].RTT[1].Avg == 0 }},
		{name: "10 s RTT kept", in: "src,dst,rtt_ms\na,b,10000\n", sites: []string{"a", "b"}, snaps: 1,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 10000 }},
		{name: "no line ending at the end is noted", in: "src,dst,rtt_ms\na,b,10\nb,a,1", sites: []string{"a", "b"}, snaps: 1,
			note: "last line (3) has no line ending"},
		{name: "cut inside a row", in: "src,dst,rtt_ms\na,b,10\nb,", wantErr: "line 3: empty src or dst"},
		{name: "cut inside a quoted name", in: "src,dst,rtt_ms\na,b,10\n\"b", wantErr: "malformed"},
		{name: "infinite RTT", in: "src,dst,rtt_ms\na,b,+Inf\n", wantErr: "line 2: column rtt_ms"},
		{name: "RTT beyond 1e6 ms", in: "src,dst,rtt_ms\na,b,2e6\n", wantErr: "line 2: column rtt_ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadPairs(strings.NewReader(tt.in), "x.csv")
			names, ok := acceptOrMatch(t, m, err, tt.wantErr)
			if !ok {
				return
			}
			if !slices.Equal(names, tt.sites) || len(m.Snaps) != tt.snaps {
				t.Fatalf("sites %q, %d snapshots; want %q, %d", names, len(m.Snaps), tt.sites, tt.snaps)
			}
			notes := strings.Join(m.Notes, "\n")
			if (tt.note == "" && notes != "") || !strings.Contains(notes, tt.note) {
				t.Fatalf("notes %q, want %q", notes, tt.note)
			}
			if tt.check != nil && !tt.check(m) {
				t.Fatalf("content check failed: %+v", m.Snaps)
			}
		})
	}
}

// TestReadCutShort: the WonderProxy and IBM readers reject a file cut in
// the middle of a row and note one whose last value may be cut.
func TestReadCutShort(t *testing.T) {
	const wp = "source,destination,min,avg,max,mdev\n1,2,1,2,3,0.5\n2,1,1,2,3,0.5\n"
	const ibm = "snapshot_date,window_start,window_end,src_region,dst_region,avg_rtt_ms\n" +
		"2023-02-26,2023-01-28,2023-02-26,Dallas,Tokyo,130.0\r\n2023-02-26,2023-01-28,2023-02-26,Tokyo,Dallas,131.0\r\n"
	read := map[string]func(string) (*Matrix, error){
		"wonderproxy": func(s string) (*Matrix, error) { return ReadWonderProxy(strings.NewReader(s), "p.csv", nil) },
		"ibm":         func(s string) (*Matrix, error) { return ReadIBM(strings.NewReader(s), "i.csv") },
	}
	tests := []struct {
		format, in, wantErr, note string
	}{
		{"wonderproxy", wp, "", ""},
		{"wonderproxy", wp[:len(wp)-1], "", "last line (3) has no line ending"},
		{"wonderproxy", wp[:len(wp)-3], "", "no line ending"}, // mdev "0" of "0.5": only the note can tell
		{"wonderproxy", wp[:len(wp)-4], "line 3: column mdev", ""},
		{"wonderproxy", wp[:len(wp)-6], "line 3: column max", ""},
		{"wonderproxy", wp[:len(wp)-8], "line 3: column avg", ""},
		{"ibm", ibm, "", ""},
		{"ibm", ibm[:len(ibm)-4], "", "no line ending"},
		{"ibm", ibm[:len(ibm)-8], "line 3: column avg_rtt_ms", ""},
		{"ibm", ibm[:len(ibm)-30], "line 3: empty src_region or dst_region", ""},
		{"ibm", ibm[:len(ibm)-50], "line 3: column snapshot_date", ""},
	}
	for _, tt := range tests {
		m, err := read[tt.format](tt.in)
		if tt.wantErr != "" {
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s cut to %q: err = %v, want %q", tt.format, tt.in[max(0, len(tt.in)-20):], err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s cut to %q: %v", tt.format, tt.in[max(0, len(tt.in)-20):], err)
			continue
		}
		notes := strings.Join(m.Notes, "\n")
		if (tt.note == "" && notes != "") || !strings.Contains(notes, tt.note) {
			t.Errorf("%s cut to %q: notes %q, want %q", tt.format, tt.in[max(0, len(tt.in)-20):], notes, tt.note)
		}
	}
}

func TestParseSiteList(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "a,b", want: []string{"a", "b"}},
		{in: " a , b ", want: []string{"a", "b"}},
		{in: `"Washington, DC",東京`, want: []string{"Washington, DC", "東京"}},
		{in: `São Paulo, "Washington, DC"`, want: []string{"São Paulo", "Washington, DC"}},
		{in: `"Q ""x"""`, want: []string{`Q "x"`}},
		{in: "a,,b", wantErr: true},
		{in: `"a`, wantErr: true},
		{in: "a\nb", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseSiteList(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && !slices.Equal(got, tt.want)) {
			t.Errorf("ParseSiteList(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func FuzzParseSiteList(f *testing.F) {
	f.Add(`"Washington, DC",Tokyo`)
	f.Add("a, b ,c")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseSiteList(in)
		if err != nil {
			return
		}
		if len(got) == 0 {
			t.Fatal("accepted an empty list")
		}
		for _, nm := range got {
			if nm == "" || nm != strings.TrimSpace(nm) {
				t.Fatalf("accepted name %q", nm)
			}
		}
	})
}

func TestReadSquare(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		sites   []string
		check   func(*Matrix) bool
		wantErr string
	}{
		{name: "cloud table", in: "Source \\ Destination,us-east-1,eu-west-1,ap-south-1\r\nus-east-1,1.2,68.5,190\r\neu-west-1,67.9,0.9,120.3 ms\r\nap-south-1,-,,1.1\r\n",
			sites: []string{"us-east-1", "eu-west-1", "ap-south-1"},
			check: func(m *Matrix) bool {
				r := m.Snaps[0].RTT
				return r[0*3+1].Avg == 68.5 && r[1*3+0].Avg == 67.9 && r[1*3+2].Avg == 120.3 && math.IsNaN(r[2*3+0].Avg) && math.IsNaN(r[2*3+1].Avg) && r[2*3+2].Avg == 1.1
			}},
		{name: "sources not among the destinations", in: ",a,b\nc,5,6\n", sites: []string{"a", "b", "c"},
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[2*3+0].Avg == 5 && math.IsNaN(m.Snaps[0].RTT[0*3+2].Avg) }},
		{name: "quoted names with commas", in: "\ufeff,\"Washington, DC\",東京\n\"Washington, DC\",1,150\n東京,NaN,1\n", sites: []string{"Washington, DC", "東京"}},
		{name: "short row", in: ",a,b\na,1,2\nb,1\n", wantErr: "line 3: 2 fields, want 3"},
		{name: "long row", in: ",a,b\na,1,2,3\n", wantErr: "line 2: 4 fields, want 3"},
		{name: "negative cell", in: ",a,b\na,1,-2\n", wantErr: "line 2: column 3 (b)"},
		{name: "text cell", in: ",a,b\na,1,fast\n", wantErr: "line 2: column 3 (b)"},
		{name: "repeated destination", in: ",a,a\n", wantErr: "destination \"a\" repeated"},
		{name: "repeated source", in: ",a,b\na,1,2\na,1,2\n", wantErr: "line 3: source \"a\" repeated"},
		{name: "nothing measured", in: ",a,b\na,-,-\n", wantErr: "no measurements"},
		{name: "one destination", in: ",a\na,1\n", wantErr: "at least two destinations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadSquare(strings.NewReader(tt.in), "sq.csv")
			names, ok := acceptOrMatch(t, m, err, tt.wantErr)
			if !ok {
				return
			}
			if !slices.Equal(names, tt.sites) {
				t.Fatalf("sites %q, want %q", names, tt.sites)
			}
			if tt.check != nil && !tt.check(m) {
				t.Fatalf("content %+v", m.Snaps[0].RTT)
			}
		})
	}
}

// TestLoadFileSquareOrPairs: the header decides between the square and the
// pairs reader.
func TestLoadFileSquareOrPairs(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		body   string
		square bool
	}{
		{",a,b,c\na,1,2,3\n", true},
		{"\ufeffregion,a,b\na,1,2\n", true},
		{"src,dst,rtt_ms\na,b,1\n", false},
		{"a,b,10\nb,a,11\n", false},
		{"From,To,Latency_ms\na,b,1\n", false},
	} {
		p := filepath.Join(dir, "m.csv")
		if err := os.WriteFile(p, []byte(tt.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := looksSquare(strings.SplitN(strings.ToLower(tt.body), "\n", 2)[0]); got != tt.square {
			t.Errorf("%q: square %v, want %v", tt.body, got, tt.square)
		}
		if _, err := LoadFile(p); err != nil {
			t.Errorf("%q: %v", tt.body, err)
		}
	}
}

func FuzzReadSquare(f *testing.F) {
	f.Add(",a,b\na,1,2\nb,3 ms,-\n")
	f.Add("\ufeffx,\"p, q\",r\r\n\"p, q\",0,NaN\r\n")
	f.Add("\tWashington, DC\tTokyo\nWashington, DC\t1\t150\nTokyo\t151\t1\n")
	f.Add(";a;b\ra;0;10\rb;11;-\r")
	f.Fuzz(func(t *testing.T, in string) {
		if m, err := ReadSquare(strings.NewReader(in), "f"); err == nil {
			checkMatrix(t, m)
		}
	})
}
