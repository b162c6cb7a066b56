package eval

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPairs(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		sites     int
		snaps     int
		dated     bool
		check     func(*Matrix) bool
		wantErrAt string // substring of the error; "" = no error
	}{
		{name: "header", in: "src,dst,rtt_ms\na,b,10\nb,a,12\n", sites: 2, snaps: 1,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[0*2+1].Avg == 10 && m.Snaps[0].RTT[1*2+0].Avg == 12 }},
		{name: "no header", in: "a,b,10\na,c,20\n", sites: 3, snaps: 1},
		{name: "duplicates averaged", in: "src,dst,rtt_ms\na,b,10\na,b,20\n", sites: 2, snaps: 1,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 15 }},
		{name: "numeric time", in: "src,dst,rtt_ms,time\na,b,10,0\na,b,30,60\n", sites: 2, snaps: 2,
			check: func(m *Matrix) bool { return m.Snaps[1].At == 60 && m.Snaps[1].RTT[1].Avg == 30 }},
		{name: "dated time sorted", in: "src,dst,rtt_ms,time\na,b,30,2024-01-08\na,b,10,2024-01-01\n", sites: 2, snaps: 2, dated: true,
			check: func(m *Matrix) bool { return m.Snaps[0].RTT[1].Avg == 10 && m.Snaps[1].At == 7*86400 }},
		{name: "alias columns reordered", in: "latency_ms,to,from\n5,b,a\n", sites: 2, snaps: 1,
			check: func(m *Matrix) bool { return m.Sites[0].Name == "a" && m.Snaps[0].RTT[1].Avg == 5 }},
		{name: "missing stays NaN", in: "src,dst,rtt_ms\na,b,10\n", sites: 2, snaps: 1,
			check: func(m *Matrix) bool { return math.IsNaN(m.Snaps[0].RTT[2].Avg) }},
		{name: "negative rtt", in: "src,dst,rtt_ms\na,b,-1\n", wantErrAt: "line 2: column rtt_ms"},
		{name: "not a number", in: "src,dst,rtt_ms\na,b,x\na,c,1\n", wantErrAt: "line 2"},
		{name: "NaN", in: "src,dst,rtt_ms\na,b,NaN\n", wantErrAt: "line 2"},
		{name: "missing column", in: "src,dst,foo\na,b,1\n", wantErrAt: "lacks a rtt column"},
		{name: "empty dst", in: "src,dst,rtt_ms\na,,1\n", wantErrAt: "line 2: empty src or dst"},
		{name: "bad time", in: "src,dst,rtt_ms,time\na,b,1,yesterday\n", wantErrAt: "neither seconds nor a date"},
		{name: "empty", in: "", wantErrAt: "empty file"},
		{name: "header only", in: "src,dst,rtt_ms\n", wantErrAt: "no measurements"},
		{name: "bad quoting", in: "src,dst,rtt_ms\n\"a,b,1\n", wantErrAt: "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadPairs(strings.NewReader(tt.in), "x.csv")
			if tt.wantErrAt != "" {
				if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.wantErrAt) {
					t.Fatalf("err = %v, want ErrFormat mentioning %q", err, tt.wantErrAt)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Sites) != tt.sites || len(m.Snaps) != tt.snaps || m.Dated != tt.dated {
				t.Fatalf("sites %d snaps %d dated %v", len(m.Sites), len(m.Snaps), m.Dated)
			}
			if tt.check != nil && !tt.check(m) {
				t.Fatalf("content check failed: %+v", m.Snaps)
			}
		})
	}
}

const serversCSV = "id,name,title,location,state,country,state_abbv,continent,latitude,longitude,selected,,,11\r\n" +
	"1,Melbourne,Melbourne,Melbourne,Victoria,Australia,VIC,4,-37.7833,144.9667,1,,,\r\n" +
	"2,Toronto,Toronto,Toronto,Ontario,Canada,ON,1,43.6481,-79.4042,1,,,\r\n"

func TestReadServersAndWonderProxy(t *testing.T) {
	srv, err := ReadServers(strings.NewReader(serversCSV), "servers.csv")
	if err != nil {
		t.Fatal(err)
	}
	if s := srv["2"]; s.Name != "Toronto" || !s.HasGeo || s.Lon != -79.4042 {
		t.Fatalf("server 2 = %+v", s)
	}
	pings := "source,destination,min,avg,max,mdev\n1,2,190,200,230,5\n2,1,191,201,231,6\n2,9,10,11,12,0.5\n"
	m, err := ReadWonderProxy(strings.NewReader(pings), "pings.csv", srv)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Sites) != 3 || !m.Sites[0].HasGeo || m.Sites[2].HasGeo || m.Sites[2].Name != "9" {
		t.Fatalf("sites %+v", m.Sites)
	}
	if st := m.Snaps[0].RTT[0*3+1]; st != (Stat{200, 190, 230, 5}) {
		t.Fatalf("1→2 = %+v", st)
	}
	bad := []struct{ in, want string }{
		{"source,destination,min,avg,max,mdev\n1,2,10,9,12,1\n", "line 2: min"},
		{"source,destination,min,avg,max,mdev\n1,2,1,2,3,1\n1,2,1,2,3,1\n", "line 3: pair 1→2 repeated"},
		{"source,destination,min,avg,max\n1,2,1,2,3\n", "lacks column \"mdev\""},
		{"source,destination,min,avg,max,mdev\n1,2,1,2,3,-1\n", "column mdev"},
		{"source,destination,min,avg,max,mdev\n", "no measurements"},
	}
	for _, b := range bad {
		if _, err := ReadWonderProxy(strings.NewReader(b.in), "p.csv", srv); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: err = %v, want %q", b.in, err, b.want)
		}
	}
	for _, b := range []string{
		"id,name,latitude,longitude\n1,A,95,0\n",
		"id,name,latitude,longitude\n1,A,1,1\n1,B,1,1\n",
		"id,name,latitude\n",
	} {
		if _, err := ReadServers(strings.NewReader(b), "s.csv"); !errors.Is(err, ErrFormat) {
			t.Errorf("servers %q: err = %v", b, err)
		}
	}
}

func TestReadIBM(t *testing.T) {
	in := "snapshot_date,window_start,window_end,src_region,dst_region,avg_rtt_ms\n" +
		"2023-03-05,a,b,Dallas,Tokyo,130.0\n2023-02-26,a,b,Dallas,Tokyo,120.0\n2023-02-26,a,b,Tokyo,Dallas,121.0\n"
	m, err := ReadIBM(strings.NewReader(in), "ibm.csv")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Snaps) != 2 || !m.Dated || m.Snaps[0].Label != "2023-02-26" || m.Snaps[1].At != 7*86400 {
		t.Fatalf("snaps %+v", m.Snaps)
	}
	if m.Snaps[1].RTT[0*2+1].Avg != 130 || !math.IsNaN(m.Snaps[1].RTT[1*2+0].Avg) {
		t.Fatal("content")
	}
	for _, b := range []struct{ in, want string }{
		{"snapshot_date,src_region,dst_region,avg_rtt_ms\n2023-13-01,a,b,1\n", "line 2: column snapshot_date"},
		{"snapshot_date,src_region,dst_region,avg_rtt_ms\n2023-01-01,a,b,1\n2023-01-01,a,b,2\n", "line 3: pair a→b repeated"},
		{"snapshot_date,src_region,dst_region,avg_rtt_ms\n2023-01-01,a,b,inf\n", "column avg_rtt_ms"},
	} {
		if _, err := ReadIBM(strings.NewReader(b.in), "i.csv"); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: err = %v, want %q", b.in, err, b.want)
		}
	}
}

func TestReadSitesAndGeo(t *testing.T) {
	g, err := ReadSites(strings.NewReader("name,lat,lon\na,10,20\nb,-5,170\n"), "sites.csv")
	if err != nil || len(g) != 2 || g["b"].Lon != 170 {
		t.Fatalf("%v %v", g, err)
	}
	m := &Matrix{Sites: []Site{{Name: "a"}, {Name: "Tokyo"}, {Name: "zz"}}}
	m.SetGeo(g)
	AddKnownGeo(m)
	if !m.Sites[0].HasGeo || !m.Sites[1].HasGeo || m.Sites[2].HasGeo {
		t.Fatalf("geo %+v", m.Sites)
	}
	if _, err := ReadSites(strings.NewReader("a,1,2\nb,x,3\n"), "s"); err == nil {
		t.Fatal("bad latitude accepted")
	}
}

func TestLoadFileDetects(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("servers-2020-07-19.csv", serversCSV)
	wp := write("pings-2020-07-19-grouped.csv", "source,destination,min,avg,max,mdev\n1,2,1,2,3,0.5\n")
	ibm := write("ibm.csv", "snapshot_date,src_region,dst_region,avg_rtt_ms\n2023-01-01,a,b,1\n")
	gen := write("gen.csv", "src,dst,rtt_ms\na,b,1\n")
	m, err := LoadFile(wp)
	if err != nil || !m.Sites[0].HasGeo {
		t.Fatalf("wonderproxy: %v %+v", err, m)
	}
	if m, err := LoadFile(ibm); err != nil || !m.Dated {
		t.Fatalf("ibm: %v", err)
	}
	if m, err := LoadFile(gen); err != nil || len(m.Sites) != 2 {
		t.Fatalf("generic: %v", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "nope.csv")); err == nil {
		t.Fatal("missing file accepted")
	}
}

// checkMatrix holds for anything a reader accepts.
func checkMatrix(t *testing.T, m *Matrix) {
	n := len(m.Sites)
	if n == 0 || len(m.Snaps) == 0 {
		t.Fatalf("accepted an empty matrix")
	}
	for _, s := range m.Snaps {
		if len(s.RTT) != n*n {
			t.Fatalf("snapshot of %d cells for %d sites", len(s.RTT), n)
		}
		for _, st := range s.RTT {
			if st.Avg < 0 || math.IsInf(st.Avg, 0) {
				t.Fatalf("accepted rtt %v", st.Avg)
			}
		}
	}
}

func FuzzReadPairs(f *testing.F) {
	f.Add("src,dst,rtt_ms\na,b,10\n")
	f.Add("a,b,1,0\nb,a,2,5\n")
	f.Add("src,dst,rtt_ms,time\na,b,30,2024-01-08\na,b,10,2024-01-01T00:00:00Z\n")
	f.Add("client;server;ping_ms\ra;b;10\rb;a;11\r")
	f.Add("a\tb\t10\nb\ta\t11\n")
	f.Fuzz(func(t *testing.T, in string) {
		if m, err := ReadPairs(strings.NewReader(in), "f"); err == nil {
			checkMatrix(t, m)
		}
	})
}

func FuzzReadWonderProxy(f *testing.F) {
	f.Add("source,destination,min,avg,max,mdev\n1,2,1,2,3,0.5\n")
	f.Add("source,destination,min,avg,max,mdev\n0,0,0.014,0.027,0.137,0.025\n")
	srv, _ := ReadServers(strings.NewReader(serversCSV), "s")
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ReadWonderProxy(strings.NewReader(in), "f", srv)
		if err != nil {
			return
		}
		checkMatrix(t, m)
		for _, st := range m.Snaps[0].RTT {
			if !math.IsNaN(st.Avg) && (st.Min > st.Avg+1e-6 || st.Avg > st.Max+1e-6) {
				t.Fatalf("accepted inverted stats %+v", st)
			}
		}
	})
}

func FuzzReadServers(f *testing.F) {
	f.Add(serversCSV)
	f.Add("id,name,latitude,longitude\n1,a,0,0\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ReadServers(strings.NewReader(in), "f")
		if err != nil {
			return
		}
		for _, x := range s {
			if math.Abs(x.Lat) > 90 || math.Abs(x.Lon) > 180 {
				t.Fatalf("accepted %+v", x)
			}
		}
	})
}

func FuzzReadIBM(f *testing.F) {
	f.Add("snapshot_date,window_start,window_end,src_region,dst_region,avg_rtt_ms\n2023-02-26,a,b,Dallas,Toronto,34.0\n")
	f.Fuzz(func(t *testing.T, in string) {
		if m, err := ReadIBM(strings.NewReader(in), "f"); err == nil {
			checkMatrix(t, m)
		}
	})
}

func FuzzReadSites(f *testing.F) {
	f.Add("name,lat,lon\na,1,2\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ReadSites(strings.NewReader(in), "f")
		if err != nil {
			return
		}
		for _, x := range s {
			if math.Abs(x.Lat) > 90 || math.Abs(x.Lon) > 180 || math.IsNaN(x.Lat) {
				t.Fatalf("accepted %+v", x)
			}
		}
	})
}
