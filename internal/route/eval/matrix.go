package eval

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/premirror/premirror/internal/textin"
)

// ErrFormat wraps every malformed-input error of the readers; the message
// names the line and column.
var ErrFormat = errors.New("malformed latency data")

// Site is one measurement location.
type Site struct {
	Name     string
	Lat, Lon float64
	HasGeo   bool
}

// Stat summarizes a pair's RTT in one snapshot, in ms. Min, Max and Mdev
// are NaN when the source does not give them.
type Stat struct {
	Avg, Min, Max, Mdev float64
}

// Snapshot is the matrix at one time.
type Snapshot struct {
	// At is the snapshot's time: seconds since the first snapshot for
	// numeric time columns, or the date for dated ones (Dated).
	At    float64
	Label string
	// RTT[i*n+j] is the pair (site i → site j); Avg is NaN when missing.
	RTT []Stat
}

// Matrix is a latency data set: sites and one or more snapshots.
type Matrix struct {
	Name  string
	Sites []Site
	Snaps []Snapshot
	// Dated: the time column held dates (one snapshot per distinct date)
	// rather than seconds.
	Dated bool
	// Notes says what the reader did to the data that a reader of the
	// results should know (averaged repeats, merged times, a last line
	// without a line ending); the replay report prints them.
	Notes []string
}

func missing() Stat { return Stat{math.NaN(), math.NaN(), math.NaN(), math.NaN()} }

func newSnap(n int, at float64, label string) Snapshot {
	s := Snapshot{At: at, Label: label, RTT: make([]Stat, n*n)}
	for i := range s.RTT {
		s.RTT[i] = missing()
	}
	return s
}

// lineReader wraps csv.Reader with line-numbered errors.
type lineReader struct {
	r    *csv.Reader
	tail *tailReader
	name string
	line int // line of the last record read
}

// tailReader remembers the last byte read, so a reader can tell whether
// the input ended with a line ending.
type tailReader struct {
	r    io.Reader
	last byte
	n    int64
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.last, t.n = p[n-1], t.n+int64(n)
	}
	return n, err
}

// utf8BOM starts spreadsheet exports (textin.Normalize skips it).
const utf8BOM = "\ufeff"

func newReader(r io.Reader, name string) *lineReader {
	in, head := textin.Normalize(bufio.NewReader(r))
	tail := &tailReader{r: in}
	cr := csv.NewReader(tail)
	cr.Comma = textin.Separator(head) // its first lines: data rows outvote a header
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	return &lineReader{r: cr, tail: tail, name: name}
}

// firstLine is s up to its first line end (LF or CR).
func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// endNote returns a note when the input's last line has no line ending:
// a file cut short mid-number still parses, so say so rather than stay
// silent. Call it after the last record was read.
func (l *lineReader) endNote() []string {
	if l.tail.n == 0 || l.tail.last == '\n' || l.tail.last == '\r' {
		return nil
	}
	return []string{fmt.Sprintf("%s: the last line (%d) has no line ending; if the file was cut short, its last value may be truncated", l.name, l.line)}
}

func (l *lineReader) read() ([]string, int, error) {
	rec, err := l.r.Read()
	if err == io.EOF {
		return nil, l.line, io.EOF
	}
	if err != nil {
		return nil, l.line, fmt.Errorf("%w: %s: %w", ErrFormat, l.name, err)
	}
	l.line, _ = l.r.FieldPos(0)
	for i := range rec {
		rec[i] = strings.TrimSpace(strings.TrimSuffix(rec[i], "\r"))
	}
	return rec, l.line, nil
}

// first reads the first record (a header, or the first row); an empty
// input is an error.
func (l *lineReader) first() ([]string, int, error) {
	rec, line, err := l.read()
	if err == io.EOF {
		return nil, 0, l.errf(1, "empty file")
	}
	return rec, line, err
}

// each calls fn for every non-blank record until the end of the input.
func (l *lineReader) each(fn func(rec []string, line int) error) error {
	for {
		rec, line, err := l.read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(rec) == 1 && rec[0] == "" {
			continue
		}
		if err := fn(rec, line); err != nil {
			return err
		}
	}
}

func (l *lineReader) errf(line int, format string, a ...any) error {
	if line <= 0 {
		return fmt.Errorf("%w: %s: %s", ErrFormat, l.name, fmt.Sprintf(format, a...))
	}
	return fmt.Errorf("%w: %s line %d: %s", ErrFormat, l.name, line, fmt.Sprintf(format, a...))
}

// rtt parses a non-negative finite number of milliseconds.
func (l *lineReader) rtt(line int, col, s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e6 {
		return 0, l.errf(line, "column %s: %q is not a round-trip time in ms", col, s)
	}
	return v, nil
}

// header reads the first record and maps the wanted column names (case
// insensitive) to positions; missing required columns are an error.
func (l *lineReader) header(required, optional []string) (map[string]int, error) {
	rec, line, err := l.first()
	if err != nil {
		return nil, err
	}
	pos := map[string]int{}
	for i, h := range rec {
		h = strings.ToLower(strings.TrimPrefix(h, "\ufeff"))
		if _, dup := pos[h]; !dup && h != "" {
			pos[h] = i
		}
	}
	out := map[string]int{}
	for _, c := range required {
		i, ok := pos[c]
		if !ok {
			return nil, l.errf(line, "header %q lacks column %q", strings.Join(rec, ","), c)
		}
		out[c] = i
	}
	for _, c := range optional {
		if i, ok := pos[c]; ok {
			out[c] = i
		}
	}
	return out, nil
}

func field(rec []string, i int) string {
	if i < len(rec) {
		return rec[i]
	}
	return ""
}

// siteIndex assigns dense indices to site names in order of appearance.
type siteIndex struct {
	names []string
	idx   map[string]int
}

func (s *siteIndex) get(name string) int {
	if i, ok := s.idx[name]; ok {
		return i
	}
	if s.idx == nil {
		s.idx = map[string]int{}
	}
	s.idx[name] = len(s.names)
	s.names = append(s.names, name)
	return len(s.names) - 1
}

// maxSites bounds a matrix (n² cells per snapshot).
const maxSites = 5000

// maxCells bounds n²·snapshots so a hostile file cannot exhaust memory.
const maxCells = 1 << 27

// Column names the generic reader accepts (lower case), so the same
// kinds of files with other headers (an IBM-style export, "from,to,…")
// read without editing.
var (
	srcCols  = []string{"src", "source", "from", "src_region", "source_region", "src_site", "client", "client_region"}
	dstCols  = []string{"dst", "destination", "to", "dst_region", "destination_region", "dst_site", "target", "server", "target_region", "server_region"}
	rttCols  = []string{"rtt_ms", "rtt", "avg", "latency_ms", "avg_rtt_ms", "mean_rtt_ms", "latency", "ping_ms", "ping", "avg_ms", "rtt_avg_ms"}
	timeCols = []string{"time", "t", "timestamp", "date", "snapshot_date"}
)

// ReadPairs reads the generic format: a header naming src, dst and rtt_ms
// (or an alias: srcCols, dstCols, rttCols, timeCols), and optionally time;
// one row per measurement. Several rows for the same pair and time are
// averaged, and so are rows whose times differ in spelling only ("60" and
// "60.0", a date and its midnight); Notes counts them. A numeric time is
// seconds; anything else (a date, an RFC 3339 time) orders snapshots by
// value, one per distinct instant. Rows may come in any order.
func ReadPairs(r io.Reader, name string) (*Matrix, error) {
	l := newReader(r, name)
	rec, line, err := l.first()
	if err != nil {
		return nil, err
	}
	// Header or not: a header's third field is not a number.
	col := map[string]int{"src": 0, "dst": 1, "rtt": 2, "time": 3}
	hasTime := len(rec) >= 4
	var first []string
	if _, perr := strconv.ParseFloat(field(rec, 2), 64); perr != nil {
		col = map[string]int{}
		for i, h := range rec {
			h = strings.ToLower(h)
			for c, names := range map[string][]string{"src": srcCols, "dst": dstCols, "rtt": rttCols, "time": timeCols} {
				if _, dup := col[c]; !dup && slices.Contains(names, h) {
					col[c] = i
				}
			}
		}
		for c, names := range map[string][]string{"src": srcCols, "dst": dstCols, "rtt": rttCols} {
			if _, ok := col[c]; !ok {
				return nil, l.errf(line, "header %q lacks a %s column (want one of %s; RTTs in ms)", strings.Join(rec, ","), c, strings.Join(names, ", "))
			}
		}
		_, hasTime = col["time"]
	} else {
		first = slices.Clone(rec)
	}

	// Compact cells (24 bytes each, times interned) keep a matrix of a few
	// thousand sites in memory.
	type key struct{ t, i, j int32 }
	type acc struct {
		k   key
		n   int32
		sum float64
	}
	var sites siteIndex
	cells := map[key]int32{} // index in accs, which keeps file order
	var accs []acc
	timeIdx := map[string]int32{}
	var labels []string
	handle := func(rec []string, line int) error {
		src, dst := field(rec, col["src"]), field(rec, col["dst"])
		if src == "" || dst == "" {
			return l.errf(line, "empty src or dst")
		}
		v, err := l.rtt(line, "rtt_ms", field(rec, col["rtt"]))
		if err != nil {
			return err
		}
		t := ""
		if hasTime {
			if t = field(rec, col["time"]); t == "" {
				return l.errf(line, "empty time")
			}
		}
		if len(cells) >= maxCells {
			return l.errf(line, "more than %d measurements", maxCells)
		}
		ti, ok := timeIdx[t]
		if !ok {
			ti = int32(len(labels))
			timeIdx[t] = ti
			labels = append(labels, t)
		}
		k := key{ti, int32(sites.get(src)), int32(sites.get(dst))}
		if len(sites.names) > maxSites {
			return l.errf(line, "more than %d sites", maxSites)
		}
		ai, ok := cells[k]
		if !ok {
			ai = int32(len(accs))
			cells[k] = ai
			accs = append(accs, acc{k: k})
		}
		accs[ai].sum += v
		accs[ai].n++
		return nil
	}
	if first != nil {
		if err := handle(first, line); err != nil {
			return nil, err
		}
	}
	if err := l.each(handle); err != nil {
		return nil, err
	}
	if len(accs) == 0 {
		return nil, l.errf(line, "no measurements")
	}
	cells = nil // only accs is needed from here
	at, dated, err := orderTimes(labels)
	if err != nil {
		return nil, l.errf(0, "%v", err)
	}
	// One snapshot per instant; labels naming the same instant share it,
	// under the label that sorts first.
	sorted := slices.Clone(labels)
	slices.SortFunc(sorted, func(a, b string) int {
		if c := cmpFloat(at[a], at[b]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	n := len(sites.names)
	m := &Matrix{Name: name, Dated: dated}
	snapOf := make([]int, len(labels)) // by time index
	merged := 0
	for _, t := range sorted {
		if k := len(m.Snaps); k > 0 && m.Snaps[k-1].At == at[t] {
			snapOf[timeIdx[t]] = k - 1
			merged++
			continue
		}
		if (len(m.Snaps)+1)*n*n > maxCells {
			return nil, l.errf(0, "%d sites × %d snapshots is too large", n, len(labels)-merged)
		}
		snapOf[timeIdx[t]] = len(m.Snaps)
		m.Snaps = append(m.Snaps, newSnap(n, at[t], t))
	}
	for _, s := range sites.names {
		m.Sites = append(m.Sites, Site{Name: s})
	}
	// Sum per snapshot cell in file order, so the result does not depend
	// on map order.
	count := make([]int32, len(m.Snaps)*n*n) // rows per snapshot cell
	for _, a := range accs {
		s, c := snapOf[a.k.t], int(a.k.i)*n+int(a.k.j)
		cell := &m.Snaps[s].RTT[c]
		if count[s*n*n+c] == 0 {
			cell.Avg = a.sum
		} else {
			cell.Avg += a.sum
		}
		count[s*n*n+c] += a.n
	}
	repeats := 0
	for x, c := range count {
		if c > 1 {
			repeats++
			m.Snaps[x/(n*n)].RTT[x%(n*n)].Avg /= float64(c)
		}
	}
	if merged > 0 {
		m.Notes = append(m.Notes, fmt.Sprintf("%s: %d time value(s) name the same instant as another and share its snapshot", name, merged))
	}
	if repeats > 0 {
		m.Notes = append(m.Notes, fmt.Sprintf("%s: %d pair(s) were measured more than once in a snapshot; their RTTs are averaged", name, repeats))
	}
	m.Notes = append(m.Notes, l.endNote()...)
	return m, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// timeLayouts are the date and time spellings a time column may use (UTC
// unless the value names a zone); day-first and month-first dates are left
// out because they cannot be told apart.
var timeLayouts = []string{
	time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04",
	"2006-01-02", "2006/01/02 15:04:05", "2006/01/02",
}

// orderTimes maps time labels to seconds: numbers are seconds; dates and
// RFC 3339 times are seconds since the earliest; "" (no time column) is 0.
func orderTimes(labels []string) (map[string]float64, bool, error) {
	at := map[string]float64{}
	numeric := true
	for _, t := range labels {
		v, err := strconv.ParseFloat(t, 64)
		if t != "" && (err != nil || math.IsNaN(v) || math.IsInf(v, 0)) {
			numeric = false
			break
		}
		at[t] = v
	}
	if numeric {
		return at, false, nil
	}
	var base time.Time
	parsed := map[string]time.Time{}
	for _, t := range labels {
		var tm time.Time
		var err error
		for _, layout := range timeLayouts {
			if tm, err = time.Parse(layout, t); err == nil {
				break
			}
		}
		if err != nil {
			return nil, false, fmt.Errorf("time %q is neither seconds nor a date", t)
		}
		parsed[t] = tm
		if base.IsZero() || tm.Before(base) {
			base = tm
		}
	}
	for t, tm := range parsed {
		at[t] = tm.Sub(base).Seconds()
	}
	return at, true, nil
}

// ReadServers reads WonderProxy's servers file: id, name, title, …,
// latitude, longitude (extra columns are ignored).
func ReadServers(r io.Reader, name string) (map[string]Site, error) {
	l := newReader(r, name)
	col, err := l.header([]string{"id", "name", "latitude", "longitude"}, []string{"title"})
	if err != nil {
		return nil, err
	}
	out := map[string]Site{}
	if err := l.each(func(rec []string, line int) error {
		id := field(rec, col["id"])
		if id == "" {
			return l.errf(line, "column id: empty")
		}
		if _, dup := out[id]; dup {
			return l.errf(line, "column id: %q repeated", id)
		}
		lat, lon, ok := parseLatLon(field(rec, col["latitude"]), field(rec, col["longitude"]))
		if !ok {
			return l.errf(line, "columns latitude/longitude: %q, %q are not coordinates",
				field(rec, col["latitude"]), field(rec, col["longitude"]))
		}
		nm := field(rec, col["name"])
		if t, ok := col["title"]; ok && field(rec, t) != "" {
			nm = field(rec, t)
		}
		if nm == "" {
			nm = id
		}
		out[id] = Site{Name: nm, Lat: lat, Lon: lon, HasGeo: true}
		if len(out) > maxSites {
			return l.errf(line, "more than %d servers", maxSites)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// ReadWonderProxy reads WonderProxy grouped pings (source, destination, min,
// avg, max, mdev). Server ids absent from servers get no geography; pass a
// nil map when there is no servers file.
func ReadWonderProxy(r io.Reader, name string, servers map[string]Site) (*Matrix, error) {
	l := newReader(r, name)
	col, err := l.header([]string{"source", "destination", "min", "avg", "max", "mdev"}, nil)
	if err != nil {
		return nil, err
	}
	type row struct {
		i, j int
		st   Stat
	}
	var sites siteIndex
	var rows []row
	seen := map[[2]int]bool{}
	if err := l.each(func(rec []string, line int) error {
		src, dst := field(rec, col["source"]), field(rec, col["destination"])
		if src == "" || dst == "" {
			return l.errf(line, "empty source or destination")
		}
		var v [4]float64
		for k, c := range []string{"min", "avg", "max", "mdev"} {
			if v[k], err = l.rtt(line, c, field(rec, col[c])); err != nil {
				return err
			}
		}
		// Rounding in the source leaves min/avg/max within a hair of each
		// other; a real inversion is corrupt data.
		const slack = 1e-6
		if v[0] > v[1]+slack || v[1] > v[2]+slack {
			return l.errf(line, "min %.3f ≤ avg %.3f ≤ max %.3f does not hold", v[0], v[1], v[2])
		}
		i, j := sites.get(src), sites.get(dst)
		if len(sites.names) > maxSites {
			return l.errf(line, "more than %d servers", maxSites)
		}
		if seen[[2]int{i, j}] {
			return l.errf(line, "pair %s→%s repeated", src, dst)
		}
		seen[[2]int{i, j}] = true
		rows = append(rows, row{i, j, Stat{Avg: v[1], Min: v[0], Max: v[2], Mdev: v[3]}})
		return nil
	}); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, l.errf(1, "no measurements")
	}
	n := len(sites.names)
	m := &Matrix{Name: name, Snaps: []Snapshot{newSnap(n, 0, "")}, Notes: l.endNote()}
	for _, id := range sites.names {
		s, ok := servers[id]
		if !ok {
			s = Site{Name: id}
		}
		m.Sites = append(m.Sites, s)
	}
	for _, r := range rows {
		m.Snaps[0].RTT[r.i*n+r.j] = r.st
	}
	return m, nil
}

// ReadIBM reads the IBM weekly inter-region file (snapshot_date, …,
// src_region, dst_region, avg_rtt_ms): one snapshot per date.
func ReadIBM(r io.Reader, name string) (*Matrix, error) {
	l := newReader(r, name)
	col, err := l.header([]string{"snapshot_date", "src_region", "dst_region", "avg_rtt_ms"}, nil)
	if err != nil {
		return nil, err
	}
	var sites siteIndex
	type row struct {
		t    string
		i, j int
		v    float64
	}
	var rows []row
	dates := map[string]time.Time{}
	seen := map[row]bool{}
	if err := l.each(func(rec []string, line int) error {
		d := field(rec, col["snapshot_date"])
		tm, perr := time.Parse("2006-01-02", d)
		if perr != nil {
			return l.errf(line, "column snapshot_date: %q is not a date", d)
		}
		src, dst := field(rec, col["src_region"]), field(rec, col["dst_region"])
		if src == "" || dst == "" {
			return l.errf(line, "empty src_region or dst_region")
		}
		v, err := l.rtt(line, "avg_rtt_ms", field(rec, col["avg_rtt_ms"]))
		if err != nil {
			return err
		}
		i, j := sites.get(src), sites.get(dst)
		if len(sites.names) > maxSites || len(rows) >= maxCells {
			return l.errf(line, "too many regions or rows")
		}
		k := row{d, i, j, 0}
		if seen[k] {
			return l.errf(line, "pair %s→%s repeated for %s", src, dst, d)
		}
		seen[k] = true
		dates[d] = tm
		rows = append(rows, row{d, i, j, v})
		return nil
	}); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, l.errf(1, "no measurements")
	}
	labels := make([]string, 0, len(dates))
	for d := range dates {
		labels = append(labels, d)
	}
	slices.Sort(labels) // ISO dates sort chronologically
	n := len(sites.names)
	if n*n*len(labels) > maxCells {
		return nil, l.errf(0, "%d regions × %d snapshots is too large", n, len(labels))
	}
	base := dates[labels[0]]
	m := &Matrix{Name: name, Dated: true, Notes: l.endNote()}
	for _, s := range sites.names {
		m.Sites = append(m.Sites, Site{Name: s})
	}
	snapOf := map[string]int{}
	for i, d := range labels {
		snapOf[d] = i
		m.Snaps = append(m.Snaps, newSnap(n, dates[d].Sub(base).Seconds(), d))
	}
	for _, r := range rows {
		st := missing()
		st.Avg = r.v
		m.Snaps[snapOf[r.t]].RTT[r.i*n+r.j] = st
	}
	return m, nil
}

// ReadSites reads "name,lat,lon" (header optional) to give a matrix's sites
// geography.
func ReadSites(r io.Reader, name string) (map[string]Site, error) {
	l := newReader(r, name)
	out := map[string]Site{}
	if err := l.each(func(rec []string, line int) error {
		if len(rec) < 3 {
			return l.errf(line, "want name,lat,lon")
		}
		lat, lon, ok := parseLatLon(rec[1], rec[2])
		if !ok {
			if line == 1 {
				return nil // a header line
			}
			return l.errf(line, "lat/lon %q, %q are not coordinates", rec[1], rec[2])
		}
		if _, dup := out[rec[0]]; dup {
			return l.errf(line, "site %q repeated", rec[0])
		}
		out[rec[0]] = Site{Name: rec[0], Lat: lat, Lon: lon, HasGeo: true}
		if len(out) > maxSites {
			return l.errf(line, "more than %d sites", maxSites)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// parseLatLon parses decimal degrees within range.
func parseLatLon(a, b string) (lat, lon float64, ok bool) {
	lat, err1 := strconv.ParseFloat(a, 64)
	lon, err2 := strconv.ParseFloat(b, 64)
	ok = err1 == nil && err2 == nil && math.Abs(lat) <= 90 && math.Abs(lon) <= 180
	return lat, lon, ok
}

// SetGeo gives the matrix's sites the coordinates of same-named sites and
// returns how many of them it found.
func (m *Matrix) SetGeo(geo map[string]Site) int {
	found := 0
	for i := range m.Sites {
		if g, ok := geo[m.Sites[i].Name]; ok {
			m.Sites[i].Lat, m.Sites[i].Lon, m.Sites[i].HasGeo = g.Lat, g.Lon, true
			found++
		}
	}
	return found
}

// LoadFile reads a matrix, choosing the reader from the header: WonderProxy
// grouped pings (with the servers file next to it, servers-*.csv, for
// geography), the IBM weekly file, or the generic pairs format.
func LoadFile(path string) (*Matrix, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return LoadPingDir(path)
	}
	if strings.EqualFold(filepath.Ext(path), ".dat") {
		return nil, fmt.Errorf("%w: %s: one per-source ping file is one row of a matrix: pass the directory holding every source's .dat file",
			ErrFormat, filepath.Base(path))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open latency matrix: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, _ := br.Peek(512)
	if textin.IsUTF16(head) {
		// Excel's "Unicode text": every other byte would be a NUL.
		return nil, fmt.Errorf("%w: %s: UTF-16 text (byte-order mark %X): save the file as UTF-8", ErrFormat, filepath.Base(path), head[:2])
	}
	first := strings.ToLower(firstLine(string(head)))
	name := filepath.Base(path)
	switch {
	case strings.Contains(first, "snapshot_date") && strings.Contains(first, "avg_rtt_ms"):
		return ReadIBM(br, name)
	case strings.Contains(first, "source") && strings.Contains(first, "mdev"):
		servers, err := loadServersNear(path)
		if err != nil {
			return nil, err
		}
		return ReadWonderProxy(br, name, servers)
	case looksSquare(first):
		return ReadSquare(br, name)
	default:
		return ReadPairs(br, name)
	}
}

// looksSquare tells a square matrix's header (a corner cell, then
// destination names) from a pairs file's: no field names a pairs column,
// and the second and third fields are not numbers (a header-less pairs
// file has an RTT third).
func looksSquare(first string) bool {
	first = strings.TrimPrefix(first, utf8BOM)
	r := csv.NewReader(strings.NewReader(first))
	r.Comma = textin.Separator([]byte(first))
	r.LazyQuotes = true
	rec, _ := r.Read()
	if len(rec) < 3 {
		return false
	}
	for _, f := range rec {
		f = strings.ToLower(strings.TrimSpace(f))
		for _, cols := range [][]string{srcCols, dstCols, rttCols, timeCols} {
			if slices.Contains(cols, f) {
				return false
			}
		}
	}
	for _, f := range rec[1:3] {
		if _, err := strconv.ParseFloat(strings.TrimSpace(f), 64); err == nil {
			return false
		}
	}
	return true
}

// missingCell spells an unmeasured cell of a square matrix.
func missingCell(s string) bool {
	switch strings.ToLower(s) {
	case "", "-", "–", "—", "n/a", "na", "nan", "null", "none":
		return true
	}
	return false
}

// ReadSquare reads a square (wide) matrix, the layout cloud providers
// publish inter-region latency in: a header of a corner cell and the
// destination names, then one row per source, its name and one RTT in ms
// per destination ("12.5" or "12.5 ms"). An empty cell, "-", "n/a" or
// "NaN" is an unmeasured pair; a row of the wrong width, a repeated source
// or destination, or any other value is an error naming the line.
func ReadSquare(r io.Reader, name string) (*Matrix, error) {
	l := newReader(r, name)
	rec, line, err := l.first()
	if err != nil {
		return nil, err
	}
	if len(rec) < 3 {
		return nil, l.errf(line, "a square matrix's header needs a corner cell and at least two destinations")
	}
	dsts := slices.Clone(rec[1:])
	var sites siteIndex
	dstIdx := make([]int, len(dsts))
	for k, d := range dsts {
		if d == "" {
			return nil, l.errf(line, "column %d: empty destination name", k+2)
		}
		if _, dup := sites.idx[d]; dup {
			return nil, l.errf(line, "column %d: destination %q repeated", k+2, d)
		}
		dstIdx[k] = sites.get(d)
	}
	if len(sites.names) > maxSites {
		return nil, l.errf(line, "more than %d sites", maxSites)
	}
	type cell struct {
		i, j int
		v    float64
	}
	var cells []cell
	seen := map[string]bool{}
	if err := l.each(func(rec []string, line int) error {
		if len(rec) != len(dsts)+1 {
			return l.errf(line, "%d fields, want %d (a source and one RTT per destination)", len(rec), len(dsts)+1)
		}
		src := rec[0]
		if src == "" {
			return l.errf(line, "empty source name")
		}
		if seen[src] {
			return l.errf(line, "source %q repeated", src)
		}
		seen[src] = true
		i := sites.get(src)
		if len(sites.names) > maxSites {
			return l.errf(line, "more than %d sites", maxSites)
		}
		for k, f := range rec[1:] {
			if missingCell(f) {
				continue
			}
			v, err := l.rtt(line, fmt.Sprintf("%d (%s)", k+2, dsts[k]), strings.TrimSpace(strings.TrimSuffix(f, "ms")))
			if err != nil {
				return err
			}
			cells = append(cells, cell{i, dstIdx[k], v})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if len(cells) == 0 {
		return nil, l.errf(line, "no measurements")
	}
	n := len(sites.names)
	if n*n > maxCells {
		return nil, l.errf(0, "%d sites is too large", n)
	}
	m := &Matrix{Name: name, Snaps: []Snapshot{newSnap(n, 0, "")}, Notes: l.endNote()}
	for _, s := range sites.names {
		m.Sites = append(m.Sites, Site{Name: s})
	}
	for _, c := range cells {
		m.Snaps[0].RTT[c.i*n+c.j].Avg = c.v
	}
	return m, nil
}

// loadServersNear finds the WonderProxy servers file beside a pings file:
// the one whose date matches, else the only servers-*.csv there.
func loadServersNear(pings string) (map[string]Site, error) {
	dir := filepath.Dir(pings)
	cands, _ := filepath.Glob(filepath.Join(dir, "servers-*.csv"))
	if len(cands) == 0 {
		return nil, nil
	}
	pick := ""
	for _, c := range cands {
		date := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(c), "servers-"), ".csv")
		if strings.Contains(filepath.Base(pings), date) {
			pick = c
		}
	}
	if pick == "" && len(cands) == 1 {
		pick = cands[0]
	}
	if pick == "" {
		return nil, nil
	}
	f, err := os.Open(pick)
	if err != nil {
		return nil, fmt.Errorf("open servers file: %w", err)
	}
	defer f.Close()
	return ReadServers(f, filepath.Base(pick))
}

// ParseSiteList parses a comma-separated list of site names as one CSV
// record, so a name holding a comma is given in double quotes
// ("Washington, DC",Tokyo). Names are trimmed like the readers trim them;
// an empty name is an error.
func ParseSiteList(s string) ([]string, error) {
	r := csv.NewReader(strings.NewReader(s))
	r.TrimLeadingSpace = true
	rec, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("site list %q: %w", s, err)
	}
	if _, err := r.Read(); err != io.EOF {
		return nil, fmt.Errorf("site list %q: more than one line", s)
	}
	out := make([]string, 0, len(rec))
	for i, nm := range rec {
		if nm = strings.TrimSpace(nm); nm == "" {
			return nil, fmt.Errorf("site list %q: name %d is empty", s, i+1)
		}
		out = append(out, nm)
	}
	return out, nil
}
