package eval

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLoadFileHeldOutLayouts: matrices a reviewer may bring that the
// shared files do not exercise, read through LoadFile as route-eval does.
// Semicolon- and tab-separated exports (a spreadsheet in a comma-decimal
// locale, a table pasted from a web page) failed with "lacks a src
// column"; a file with classic Mac line ends (CR only) printed the whole
// file as its header; common header spellings (client/server/target,
// ping_ms) were refused.
func TestLoadFileHeldOutLayouts(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		sites      []string
		rtt        float64 // a→b
		wantErr    string
	}{
		{name: "semicolons", body: "src;dst;rtt_ms\na;b;10\nb;a;11\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "tabs", body: "src\tdst\trtt_ms\na\tb\t10\nb\ta\t11\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "tabs, no header", body: "a\tb\t10\nb\ta\t11\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "square, tabs, a name with a comma", body: "\ta\tWashington, DC\na\t0\t10\nWashington, DC\t11\t0\n",
			sites: []string{"a", "Washington, DC"}, rtt: 10},
		{name: "square, semicolons", body: ";a;b\na;0;10\nb;11;0\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "IBM layout, semicolons", body: "snapshot_date;window_start;window_end;src_region;dst_region;avg_rtt_ms\n2024-01-07;2023-12-08;2024-01-07;a;b;10\n",
			sites: []string{"a", "b"}, rtt: 10},
		{name: "CR line ends", body: "src,dst,rtt_ms\ra,b,10\rb,a,11\r", sites: []string{"a", "b"}, rtt: 10},
		{name: "CR line ends, square", body: ",a,b\ra,0,10\rb,11,0\r", sites: []string{"a", "b"}, rtt: 10},
		{name: "client,server,ping_ms", body: "client,server,ping_ms\na,b,10\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "source,target,latency", body: "source,target,latency\na,b,10\n", sites: []string{"a", "b"}, rtt: 10},
		{name: "UTF-16 refused by name", body: "\xff\xfes\x00r\x00c\x00", wantErr: "UTF-16"},
		{name: "unknown header names what it accepts", body: "src,dest_host,rtt_ms\na,b,10\n", wantErr: "lacks a dst column (want one of dst, destination"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "m.csv")
			if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := LoadFile(p)
			names, ok := acceptOrMatch(t, m, err, tc.wantErr)
			if !ok {
				return
			}
			if !slices.Equal(names, tc.sites) {
				t.Fatalf("sites %q, want %q", names, tc.sites)
			}
			if got := m.Snaps[0].RTT[1].Avg; got != tc.rtt {
				t.Fatalf("a→b %v, want %v", got, tc.rtt)
			}
		})
	}
}

// TestLoadPingDir: a directory of per-source ping summaries, one file per
// source region named after it, each line "min/avg/max/mdev:destination"
// (the layout of vitorenesduarte/fantoch's latency_gcp and latency_aws
// sets), reads as one matrix; a bad line is an error naming file and line.
func TestLoadPingDir(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		sites   []string
		check   func(m *Matrix) bool
		wantErr string
	}{
		{name: "three regions", files: map[string]string{
			"us-east1.dat":     "0.1/0.2/0.5/0.1:us-east1\n30.5/31.0/40.2/0.4:us-west1\n90.1/90.6/95.0/0.3:europe-west1\n",
			"us-west1.dat":     "30.6/31.1/39.0/0.5:us-east1\n0.1/0.2/0.4/0.1:us-west1\n140.0/141.2/150.1/1.0:europe-west1\n",
			"europe-west1.dat": "90.0/90.5/91.0/0.2:us-east1\n141.0/141.5/142.0/0.2:us-west1\n",
			"README.md":        "not a data file\n",
		}, sites: []string{"europe-west1", "us-east1", "us-west1"}, check: func(m *Matrix) bool {
			e, w := slices.Index(siteNames(m), "us-east1"), slices.Index(siteNames(m), "us-west1")
			st := m.Snaps[0].RTT[e*3+w]
			return st.Avg == 31.0 && st.Min == 30.5 && st.Max == 40.2 && st.Mdev == 0.4
		}},
		{name: "CRLF, blank lines, spaces", files: map[string]string{
			"a.dat": "1/2/3/0.5: b\r\n\r\n", "b.dat": " 1/2/3/0.5:a\r\n",
		}, sites: []string{"a", "b"}},
		{name: "min above avg", files: map[string]string{"a.dat": "5/2/3/0.5:b\n", "b.dat": "1/2/3/0.5:a\n"}, wantErr: "a.dat line 1"},
		{name: "not four numbers", files: map[string]string{"a.dat": "1/2/3/0.5:b\n2/3:c\n", "b.dat": "1/2/3/0.5:a\n"}, wantErr: "a.dat line 2"},
		{name: "no destination", files: map[string]string{"a.dat": "1/2/3/0.5\n", "b.dat": "1/2/3/0.5:a\n"}, wantErr: "a.dat line 1"},
		{name: "repeated destination", files: map[string]string{"a.dat": "1/2/3/0.5:b\n1/2/3/0.5:b\n", "b.dat": "1/2/3/0.5:a\n"}, wantErr: "a.dat line 2: destination \"b\" repeated"},
		{name: "NaN", files: map[string]string{"a.dat": "1/NaN/3/0.5:b\n", "b.dat": "1/2/3/0.5:a\n"}, wantErr: "a.dat line 1"},
		{name: "empty directory", files: map[string]string{"notes.txt": "x"}, wantErr: "no .dat files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, body := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			m, err := LoadFile(dir)
			names, ok := acceptOrMatch(t, m, err, tc.wantErr)
			if !ok {
				return
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.sites) {
				t.Fatalf("sites %q, want %q", names, tc.sites)
			}
			if tc.check != nil && !tc.check(m) {
				t.Fatalf("matrix %+v", m.Snaps[0].RTT)
			}
		})
	}
	// One file alone is one source, not a matrix: the error says to pass
	// the directory.
	dir := t.TempDir()
	p := filepath.Join(dir, "a.dat")
	if err := os.WriteFile(p, []byte("1/2/3/0.5:b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(p); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "pass the directory") {
		t.Fatalf("single .dat file: %v", err)
	}
}

func siteNames(m *Matrix) []string {
	var out []string
	for _, s := range m.Sites {
		out = append(out, s.Name)
	}
	return out
}

func FuzzReadPingDat(f *testing.F) {
	f.Add("0.1/0.2/0.5/0.1:us-east1\n30.5/31.0/40.2/0.4:us-west1\n")
	f.Add(" 1/2/3/0.5: b\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		var sites siteIndex
		rows, err := readPingDat(strings.NewReader(in), "f.dat", &sites)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error without ErrFormat: %v", err)
			}
			return
		}
		for _, r := range rows {
			if !(r.st.Min <= r.st.Avg+1e-6 && r.st.Avg <= r.st.Max+1e-6) || r.st.Avg < 0 || r.j >= len(sites.names) {
				t.Fatalf("accepted %+v", r)
			}
		}
	})
}

// TestSiteListRoundTrips: the printed mirror list reads back through
// -mirror-sites; names with commas were joined bare ("City 2, X, City 9,
// X"), which reads as four sites.
func TestSiteListRoundTrips(t *testing.T) {
	for _, names := range [][]string{
		{"a", "b"},
		{"City 2, X", "Zürich", `say "hi"`, "東京"},
	} {
		got, err := ParseSiteList(siteList(names))
		if err != nil || !slices.Equal(got, names) {
			t.Fatalf("%q -> %q -> %q, %v", names, siteList(names), got, err)
		}
	}
}
