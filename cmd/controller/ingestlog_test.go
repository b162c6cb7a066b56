package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/premirror/premirror/internal/accesslog"
	"github.com/premirror/premirror/internal/cli"
)

// synthLog writes a combined-format log: hours 0..5 of 2024-03-01, each
// hour 10+h requests from 10.1.0.7 (paris), 5 from 10.2.0.9 (nyc), 3 from
// 2001:db8:1::5 (paris) and 1 from 192.0.2.1 (no prefix), plus one
// malformed line.
func synthLog(t *testing.T) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	start := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	line := func(addr string, at time.Time) {
		fmt.Fprintf(&b, `%s - - [%s] "GET /disk.img HTTP/1.1" 200 4096 "-" "qemu/8.2"`+"\n", addr, at.Format("02/Jan/2006:15:04:05 -0700"))
	}
	for h := range 6 {
		at := start.Add(time.Duration(h) * time.Hour)
		for i := range 10 + h {
			line("10.1.0.7", at.Add(time.Duration(i)*time.Minute))
		}
		for i := range 5 {
			line("10.2.0.9", at.Add(time.Duration(30+i)*time.Minute))
		}
		for i := range 3 {
			line("2001:db8:1::5", at.Add(time.Duration(40+i)*time.Minute))
		}
		line("192.0.2.1", at.Add(50*time.Minute))
		if h == 2 {
			b.WriteString(`10.1.0.7 - - [01/Mar/2024:02:59:00 +0000] "GET /cut-off` + "\n")
		}
	}
	p := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b.Bytes()
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func ingest(t *testing.T, stdin []byte, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runIngestLog(context.Background(), args, bytes.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestIngestLogPrefixes(t *testing.T) {
	logPath, raw := synthLog(t)
	prefixes := writeTemp(t, "prefixes.csv", "prefix,region\n10.1.0.0/16,paris\n10.2.0.0/16,nyc\n2001:db8:1::/48,paris\n")
	out, summary, err := ingest(t, nil, "--prefixes", prefixes, "--keep-partial", logPath)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	want.WriteString("timestamp,location,value\n")
	for h := range 6 {
		ts := fmt.Sprintf("2024-03-01 %02d:00:00", h)
		fmt.Fprintf(&want, "%s,nyc,5\n%s,paris,%d\n%s,unknown,1\n", ts, ts, 13+h, ts)
	}
	if out != want.String() {
		t.Fatalf("csv:\n%s\nwant\n%s", out, want.String())
	}
	for _, s := range []string{"130 lines, 129 requests", "unterminated_quote=1 (first line 61)", "located by prefixes 123, unknown 6", "3 locations: paris 93, nyc 30, unknown 6"} {
		if !strings.Contains(summary, s) {
			t.Errorf("summary lacks %q:\n%s", s, summary)
		}
	}

	// The same log from standard input, gzipped from a file, and by a
	// controller objects file (site client_prefixes) give the same table.
	objects := writeTemp(t, "objects.yaml", "sites:\n  - {name: paris, client_prefixes: [10.1.0.0/16, \"2001:db8:1::/48\"]}\n  - {name: nyc, client_prefixes: [10.2.0.0/16]}\n")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	gzPath := writeTemp(t, "access.log.gz", gz.String())
	for _, args := range [][]string{
		{"--prefixes", prefixes, "--keep-partial"},
		{"--prefixes", prefixes, "--keep-partial", "-"},
		{"--objects", objects, "--keep-partial", gzPath},
	} {
		got, _, err := ingest(t, raw, args...)
		if err != nil || got != want.String() {
			t.Fatalf("%v: %v\n%s", args, err, got)
		}
	}

	// --top 1 folds nyc and unknown into other; --total sums; default
	// drops the partial first and last hours; -o writes a file.
	out, _, err = ingest(t, nil, "--prefixes", prefixes, "--top", "1", "--keep-partial", logPath)
	if err != nil || !strings.Contains(out, "2024-03-01 05:00:00,other,6\n2024-03-01 05:00:00,paris,18\n") && !strings.Contains(out, "2024-03-01 05:00:00,paris,18\n2024-03-01 05:00:00,other,6\n") {
		t.Fatalf("top: %v\n%s", err, out)
	}
	// Two files: the per-file summary names the file of each line number.
	_, summary, err = ingest(t, nil, "--prefixes", prefixes, logPath, gzPath)
	if err != nil || !strings.Contains(summary, gzPath+": 130 lines, malformed skipped: unterminated_quote=1 (first line 61)") ||
		!strings.Contains(summary, "2 files, 260 lines, 258 requests, 2 malformed lines skipped") {
		t.Fatalf("two files: %v\n%s", err, summary)
	}
	csvPath := filepath.Join(t.TempDir(), "counts.csv")
	if _, _, err = ingest(t, nil, "--prefixes", prefixes, "--total", "-o", csvPath, logPath); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(csvPath)
	if want := "timestamp,value\n2024-03-01 01:00:00,20\n2024-03-01 02:00:00,21\n2024-03-01 03:00:00,22\n2024-03-01 04:00:00,23\n"; string(b) != want {
		t.Fatalf("total:\n%s", b)
	}
}

// TestIngestLogFeedsForecast: the CSV ingest-log writes is the input the
// backtest and the location scoring read.
func TestIngestLogFeedsForecast(t *testing.T) {
	var b bytes.Buffer
	start := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	for h := range 24 * 9 {
		at := start.Add(time.Duration(h) * time.Hour)
		n := 3 + (h%24)/2
		for i := range n {
			addr := "10.1.0.7"
			if i%3 == 0 {
				addr = "10.2.0.9"
			}
			fmt.Fprintf(&b, `%s - - [%s] "GET / HTTP/1.1" 200 1`+"\n", addr, at.Add(time.Duration(i)*time.Minute).Format("02/Jan/2006:15:04:05 -0700"))
		}
	}
	logPath := writeTemp(t, "access.log", b.String())
	prefixes := writeTemp(t, "p.csv", "10.1.0.0/16,paris\n10.2.0.0/16,nyc\n")
	csvPath := filepath.Join(t.TempDir(), "counts.csv")
	if _, _, err := ingest(t, nil, "--format", "common", "--prefixes", prefixes, "-o", csvPath, logPath); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runForecast(context.Background(), []string{"backtest", "--csv", csvPath, "--methods", "naive,snaive_day",
		"--train", "72h", "--min-origins", "24", "--json-all"}, &out); err != nil {
		t.Fatalf("backtest: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), `"method"`); n != 4 || !strings.Contains(out.String(), `"series":"counts/paris"`) {
		t.Fatalf("backtest rows:\n%s", out.String())
	}
	out.Reset()
	if err := runForecast(context.Background(), []string{"locations", "--csv", csvPath, "--test-from", "2024-03-08", "--horizons", "1"}, &out); err != nil {
		t.Fatalf("locations: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "locations [nyc paris]") {
		t.Fatalf("locations:\n%s", out.String())
	}
}

func TestIngestLogErrors(t *testing.T) {
	logPath, _ := synthLog(t)
	badPrefixes := writeTemp(t, "bad.csv", "10.1.0.0/16,paris\n10.1.0.1/16,nyc\n")
	dupObjects := writeTemp(t, "o.yaml", "sites:\n  - {name: a, client_prefixes: [10.1.0.0/16]}\n")
	dupPrefixes := writeTemp(t, "d.csv", "10.1.0.0/16,a\n")
	for _, tc := range []struct {
		args  []string
		usage bool
		msg   string
	}{
		{[]string{"--format", "%h %l", logPath}, true, "no timestamp field"},
		{[]string{"--step", "0s", logPath}, true, "--step"},
		{[]string{"--top", "-1", logPath}, true, "--top"},
		{[]string{"--unknown", "a,b", logPath}, true, "--unknown"},
		{[]string{"/nonexistent.log"}, false, "no such file"},
		{[]string{"--format", "nginx", "--strict", logPath}, false, "line 61: malformed log line (unterminated_quote)"},
		{[]string{"--format", "%h %t", logPath}, false, "no line matched the log format"},
		{[]string{"--prefixes", badPrefixes, logPath}, false, "bad.csv line 2: bad prefix table: 10.1.0.1/16 has host bits set"},
		{[]string{"--prefixes", dupPrefixes, "--objects", dupObjects, logPath}, false, `site "a" client_prefixes[0]: bad prefix table: 10.1.0.0/16 listed twice`},
		{[]string{"--geoip", logPath, logPath}, false, "corrupt GeoIP database"},
	} {
		_, _, err := ingest(t, nil, tc.args...)
		if err == nil || errors.Is(err, cli.ErrUsage) != tc.usage || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: got %v, want usage=%v containing %q", tc.args, err, tc.usage, tc.msg)
		}
	}
	if _, _, err := ingest(t, nil, "--keep-partial"); !errors.Is(err, accesslog.ErrEmpty) {
		t.Errorf("empty stdin: %v", err)
	}
}

// TestIngestLogGeoIP maps the synthetic log with Debian's databases when
// installed: documentation prefixes are in no country.
func TestIngestLogGeoIP(t *testing.T) {
	v4, v6 := "/usr/share/GeoIP/GeoIP.dat", "/usr/share/GeoIP/GeoIPv6.dat"
	for _, p := range []string{v4, v6} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s absent (apt-get install geoip-database)", p)
		}
	}
	log := writeTemp(t, "a.log", `8.8.8.8 - - [01/Mar/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1
2001:4860:4860::8888 - - [01/Mar/2024:00:00:01 +0000] "GET / HTTP/1.1" 200 1
192.0.2.1 - - [01/Mar/2024:00:00:02 +0000] "GET / HTTP/1.1" 200 1
`)
	out, summary, err := ingest(t, nil, "--format", "common", "--geoip", v4, "--geoip6", v6, "--unknown", "nowhere", "--keep-partial", log)
	if err != nil {
		t.Fatal(err)
	}
	if want := "timestamp,location,value\n2024-03-01 00:00:00,US,2\n2024-03-01 00:00:00,nowhere,1\n"; out != want {
		t.Fatalf("csv:\n%s", out)
	}
	if !strings.Contains(summary, "located by geoip 2, nowhere 1") {
		t.Fatalf("summary %s", summary)
	}
	if _, _, err := ingest(t, nil, "--format", "common", "--geoip", v6, log); err == nil || !strings.Contains(err.Error(), "edition 12, want 1") {
		t.Fatalf("swapped databases: %v", err)
	}
}

// TestIngestLogReplay is the documented pipe into a running controller:
// ingest-log --objects (locations = the controller's site names) writes
// the counts, replay-access reports them as an edge agent over mutual
// TLS, and the leader's forecast shows them per site.
func TestIngestLogReplay(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	// 40 hours: every hour 20 requests from eu's 10.1.0.0/16 and 7 from
	// us's 10.2.0.0/16, plus one client in no site.
	var b bytes.Buffer
	start := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	for h := range 40 {
		at := start.Add(time.Duration(h) * time.Hour)
		for i := range 28 {
			addr := "10.1.0.7"
			switch {
			case i >= 27:
				addr = "198.51.100.1"
			case i >= 20:
				addr = "10.2.3.4"
			}
			fmt.Fprintf(&b, `%s - - [%s] "GET / HTTP/1.1" 200 1`+"\n", addr, at.Add(time.Duration(i)*time.Minute).Format("02/Jan/2006:15:04:05 -0700"))
		}
	}
	logPath := writeTemp(t, "access.log", b.String())
	counts := filepath.Join(dir, "counts.csv")
	if _, summary, err := ingest(t, nil, "--format", "common", "--objects", forecastObjects, "-o", counts, logPath); err != nil ||
		!strings.Contains(summary, "located by prefixes 1080, unknown 40; 3 locations: eu 800, us 280, unknown 40") {
		t.Fatalf("ingest: %v\n%s", err, summary)
	}

	certs := filepath.Join(dir, "certs")
	if _, err := ctl(t, "certs", "--dir", certs, "--agents", "replay-eu"); err != nil {
		t.Fatal(err)
	}
	addr, stop := runForecastController(t, dir, certs)
	defer stop()
	admin := []string{"--server", addr, "--tls-dir", certs}
	rctx, rcancel := context.WithCancel(context.Background())
	replayDone := make(chan error, 1)
	go func() {
		replayDone <- commands.Run(rctx, []string{"replay-access", "--server", addr, "--tls-dir", certs, "--tls-name", "replay-eu",
			"--site", "eu", "--csv", counts, "--resource", "web", "--speedup", "1800", "--report-interval", "100ms"})
	}()
	defer func() {
		rcancel()
		if err := <-replayDone; err != nil {
			t.Errorf("replay-access: %v", err)
		}
	}()
	var out string
	waitFor(t, "forecast of web with both sites' observed counts", 40*time.Second, func() bool {
		var err error
		out, err = ctl(t, append([]string{"forecast", "show", "web"}, admin...)...)
		return err == nil && strings.Contains(out, "20 / ") && strings.Contains(out, "7 / ")
	})
	if testing.Verbose() {
		t.Log("\n" + out)
	}
}

// TestIngestLogForwarded: behind a proxy, the header names the clients;
// --trusted-proxies restricts whose header is believed; the summary
// counts what the header did.
func TestIngestLogForwarded(t *testing.T) {
	const format = `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i" "%{X-Forwarded-For}i"`
	var b strings.Builder
	line := func(peer, xff string, minute int) {
		fmt.Fprintf(&b, `%s - - [01/Mar/2024:00:%02d:00 +0000] "GET / HTTP/1.1" 200 1 "-" "curl/8" "%s"`+"\n", peer, minute, xff)
	}
	// Through the load balancer 10.9.0.1: 4 from paris, 2 from nyc (one
	// via a second proxy, one with a port), 1 unusable header; then 1
	// direct request from paris with a forged header.
	line("10.9.0.1", "10.1.0.7", 0)
	line("10.9.0.1", "10.1.0.8:5555, 10.9.0.2", 1)
	line("10.9.0.1", "10.1.0.9", 2)
	line("10.9.0.1", "[2001:db8:1::5]:443", 3)
	line("10.9.0.1", "10.2.0.9", 4)
	line("10.9.0.1", "10.2.0.1, 10.9.0.3", 5)
	line("10.9.0.1", "unknown", 6)
	line("10.1.0.3", "10.2.0.7", 7)
	logPath := writeTemp(t, "xff.log", b.String())
	prefixes := writeTemp(t, "p.csv", "10.1.0.0/16,paris\n10.2.0.0/16,nyc\n2001:db8:1::/48,paris\n10.9.0.0/16,proxy\n")

	// Trusted as written: the forged header counts as nyc.
	out, summary, err := ingest(t, nil, "--format", format, "--prefixes", prefixes, "--keep-partial", logPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := "timestamp,location,value\n2024-03-01 00:00:00,nyc,3\n2024-03-01 00:00:00,paris,4\n2024-03-01 00:00:00,proxy,1\n"; out != want {
		t.Fatalf("csv:\n%s", out)
	}
	if !strings.Contains(summary, "X-Forwarded-For: client from the header 7, header unusable 1 (connecting address counted)\n") {
		t.Fatalf("summary:\n%s", summary)
	}
	// Only 10.9.0.0/16 is trusted: the direct request is paris, and the
	// second proxy's 10.9.0.x hops are skipped.
	out, summary, err = ingest(t, nil, "--format", format, "--prefixes", prefixes, "--keep-partial",
		"--trusted-proxies", "10.9.0.0/16, 192.0.2.1", logPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := "timestamp,location,value\n2024-03-01 00:00:00,nyc,2\n2024-03-01 00:00:00,paris,5\n2024-03-01 00:00:00,proxy,1\n"; out != want {
		t.Fatalf("csv with trusted proxies:\n%s", out)
	}
	if !strings.Contains(summary, "client from the header 6, header unusable 1 (connecting address counted), header ignored 1 (connecting address not a trusted proxy)") {
		t.Fatalf("summary:\n%s", summary)
	}
	// No header field, no header line in the summary.
	if _, summary, err = ingest(t, nil, "--format", "combined", "--keep-partial", writeTemp(t, "c.log",
		`10.1.0.7 - - [01/Mar/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "x"`+"\n")); err != nil || strings.Contains(summary, "X-Forwarded-For") {
		t.Fatalf("%v\n%s", err, summary)
	}
}

// TestIngestLogTimeFormats: a strftime timestamp without a zone is UTC,
// or local time in --time-zone; Nginx's $msec is epoch time.
func TestIngestLogTimeFormats(t *testing.T) {
	log := writeTemp(t, "t.log", `10.1.0.7 [2024-03-01 09:30:00] 200
10.1.0.7 [2024-03-01 10:30:00] 200
10.2.0.9 [2024-03-01 10:45:00] 200
`)
	prefixes := writeTemp(t, "p.csv", "10.1.0.0/16,paris\n10.2.0.0/16,nyc\n")
	const format = `%h [%{%F %T}t] %>s`
	out, _, err := ingest(t, nil, "--format", format, "--prefixes", prefixes, "--keep-partial", "--total", log)
	if err != nil || out != "timestamp,value\n2024-03-01 09:00:00,1\n2024-03-01 10:00:00,2\n" {
		t.Fatalf("utc: %v\n%s", err, out)
	}
	out, _, err = ingest(t, nil, "--format", format, "--time-zone", "Europe/Paris", "--prefixes", prefixes, "--keep-partial", "--total", log)
	if err != nil || out != "timestamp,value\n2024-03-01 08:00:00,1\n2024-03-01 09:00:00,2\n" {
		t.Fatalf("Europe/Paris: %v\n%s", err, out)
	}
	nginx := writeTemp(t, "n.log", "10.1.0.7 1709285400.123 200\n10.2.0.9 1709289000.999 200\n")
	out, _, err = ingest(t, nil, "--format", `$remote_addr $msec $status`, "--prefixes", prefixes, "--keep-partial", nginx)
	if err != nil || out != "timestamp,location,value\n2024-03-01 09:00:00,nyc,0\n2024-03-01 09:00:00,paris,1\n2024-03-01 10:00:00,nyc,1\n2024-03-01 10:00:00,paris,0\n" {
		t.Fatalf("$msec: %v\n%s", err, out)
	}
}

// TestIngestLogStrayDates: one line dated 2105 among two days of 2015
// would have made 788,000 hourly rows of zeros; it is left out and said
// so. A year no int64 of nanoseconds holds is a bad time.
func TestIngestLogStrayDates(t *testing.T) {
	var b strings.Builder
	at := time.Date(2015, 5, 17, 0, 0, 0, 0, time.UTC)
	for m := range 48 * 60 {
		if m%2 == 0 {
			fmt.Fprintf(&b, "10.1.0.7 - - [%s] \"GET / HTTP/1.1\" 200 5\n", at.Add(time.Duration(m)*time.Minute).Format("02/Jan/2006:15:04:05 -0700"))
		}
	}
	b.WriteString(`10.1.0.7 - - [17/May/2105:10:05:03 +0000] "GET / HTTP/1.1" 200 5` + "\n")
	b.WriteString(`10.1.0.7 - - [01/Jan/0001:00:00:00 +0000] "GET / HTTP/1.1" 200 5` + "\n")
	out, errOut, err := ingest(t, []byte(b.String()), "--format", "common", "--total", "-")
	if err != nil {
		t.Fatal(err)
	}
	if rows := strings.Count(out, "\n") - 1; rows != 46 { // 48 hours, the partial first and last dropped
		t.Fatalf("%d rows, want 46:\n%s", rows, errOut)
	}
	for _, want := range []string{"1 request(s) far after all the others left out", "2105-05-17 10:00:00", "bad_time=1"} {
		if !strings.Contains(errOut, want) {
			t.Fatalf("summary lacks %q:\n%s", want, errOut)
		}
	}
}

func TestIngestLogNewFlagErrors(t *testing.T) {
	logPath, _ := synthLog(t)
	const xff = `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i" "%{X-Forwarded-For}i"`
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--format", xff, "--trusted-proxies", "10.0.0.1/8", logPath}, `--trusted-proxies "10.0.0.1/8"`},
		{[]string{"--format", xff, "--trusted-proxies", "10.0.0.0/8,lb.example", logPath}, `--trusted-proxies "10.0.0.0/8,lb.example": bad trusted proxies: "lb.example" is neither`},
		{[]string{"--format", xff, "--trusted-proxies", ",", logPath}, "empty list"},
		{[]string{"--trusted-proxies", "10.0.0.0/8", logPath}, `--trusted-proxies "10.0.0.0/8": bad trusted proxies: format `},
		{[]string{"--trusted-proxies", "10.0.0.0/8", logPath}, "has no X-Forwarded-For field"},
		{[]string{"--format", `%h %{%F %T}t`, "--time-zone", "Mars/Olympus", logPath}, `--time-zone "Mars/Olympus"`},
		{[]string{"--time-zone", "Europe/Paris", logPath}, `--time-zone "Europe/Paris": format`},
		{[]string{"--format", `%h %{%F %Q}t`, logPath}, "--format: bad log format: %{%F %Q}t: unsupported time conversion %Q"},
	} {
		_, _, err := ingest(t, nil, tc.args...)
		if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: got %v, want a usage error containing %q", tc.args, err, tc.msg)
		}
	}
}

// TestBacktestMarkedDays: with a calendar, --json-all reports the event
// days' MASE and 80% coverage beside the whole backtest's.
func TestBacktestMarkedDays(t *testing.T) {
	var b strings.Builder
	b.WriteString("timestamp,value\n")
	start := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	for h := range 24 * 12 {
		v := 100 + 40*math.Sin(2*math.Pi*float64(h%24)/24) + float64(h%7)
		if h/24 == 9 {
			v /= 2
		}
		fmt.Fprintf(&b, "%s,%.0f\n", start.Add(time.Duration(h)*time.Hour).Format(time.RFC3339), v)
	}
	csvPath := writeTemp(t, "demand.csv", b.String())
	events := writeTemp(t, "events.csv", "start,end,name,kind\n2024-03-10,2024-03-11,closure,holiday\n")
	var out bytes.Buffer
	if err := runForecast(context.Background(), []string{"backtest", "--csv", csvPath, "--events", events, "--methods", "naive,hybrid",
		"--train", "120h", "--min-origins", "24", "--json-all"}, &out); err != nil {
		t.Fatalf("backtest: %v\n%s", err, out.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var row backtestRowAll
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatal(err)
		}
		if row.MarkedN < 24 || row.MarkedH1 == nil || row.MarkedCov1 == nil || row.MarkedCov12 == nil ||
			*row.MarkedCov1 < 0 || *row.MarkedCov1 > 1 || *row.MarkedCov12 < 0 || *row.MarkedCov12 > 1 {
			t.Fatalf("%s: marked-day fields %+v\n%s", row.Method, row, line)
		}
	}
}
