package forecast

import (
	"bufio"
	"cmp"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/premirror/premirror/internal/textin"
)

// ErrBadInput marks input a parser rejected; the wrapped message names the
// line and column. Nothing from a rejected input is applied.
var ErrBadInput = errors.New("bad input")

// Record is one parsed row of a demand table.
type Record struct {
	Time     time.Time
	Location string    // "" when the table has no location column
	Value    float64   // demand in the bucket (count, bytes, percent, ...)
	Covs     []float64 // aligned with Table.CovNames; NaN where the cell was empty
	Holiday  bool      // the row's holiday flag column said yes
}

// Table is a parsed demand CSV before it is turned into regular series.
type Table struct {
	HasLocation bool
	CovNames    []string
	Records     []Record
	// Ignored lists extra columns left out: row numbers or blank columns
	// (no header name, pandas' "Unnamed: 0", "index"; labelled "column N
	// (no name)" when nameless), then columns whose first non-empty cell
	// is not a number (a host name, a status text), which cannot be
	// covariates.
	Ignored []string
}

// Column names the parser recognises (lower case). The first column is the
// timestamp unless another column has one of timeNames.
var (
	timeNames     = []string{"timestamp", "time", "ds", "date", "datetime", "pickup_dt", "ts"}
	locationNames = []string{"location", "region", "borough", "loc", "site"}
	valueNames    = []string{"value", "y", "pickups", "count", "requests", "flows", "new_flows", "demand"}
	holidayNames  = []string{"hday", "holiday", "is_holiday"}
)

// timeLayouts are tried in order; a time without a zone is read as UTC
// wall-clock time, which keeps hour-of-day and day-of-week as the data's
// author meant them (the Uber file even has 02:00 on the spring-forward
// day). A time with a UTC offset names an instant and becomes that instant
// in UTC, as the agents' bucket times are: a feed for the live engine must
// line up with them.
var timeLayouts = []string{
	"2006-01-02 15:04:05",
	"2006-01-02 15:04",
	time.RFC3339Nano,
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02T15:04:05",
	"2006-01-02T15:04",
	"2006-01-02",
	// Offsets without a colon or without minutes: strftime's and Ruby's
	// "+0000", PostgreSQL's "+00".
	"2006-01-02T15:04:05Z0700",
	"2006-01-02 15:04:05Z0700",
	"2006-01-02 15:04:05 Z0700",
	"2006-01-02T15:04:05Z07",
	"2006-01-02 15:04:05Z07",
	"2006/01/02 15:04:05",
	"2006/01/02 15:04",
	"2006/01/02",
	"1/2/2006 15:04:05",
	"1/2/2006 15:04",
	"1/2/2006",
	// Dotted dates are day-first wherever they are written (German,
	// Russian, ... spreadsheet exports).
	"2.1.2006 15:04:05",
	"2.1.2006 15:04",
	"2.1.2006",
}

// ParseTime parses a timestamp in one of the layouts the CSV readers
// accept, or a Unix time: an unsigned decimal number of seconds (below
// 10¹¹, which also covers bucket indices such as Yahoo S5's 1, 2, 3…),
// milliseconds (below 10¹⁴), microseconds (below 10¹⁷) or nanoseconds.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, ok := parseUnix(s); ok {
		return t, nil
	}
	// BigQuery writes "2014-02-14 14:30:00 UTC". Other zone abbreviations
	// are ambiguous (EST, IST) and stay unrecognised.
	in := s
	for _, z := range []string{" UTC", " GMT"} {
		if t, ok := strings.CutSuffix(in, z); ok {
			in = t
			break
		}
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, in); err == nil {
			return t.UTC(), nil
		}
	}
	if a, _, ok := strings.Cut(s, "/"); ok {
		if d, err := strconv.Atoi(a); err == nil && d > 12 && d <= 31 {
			return time.Time{}, fmt.Errorf("%w: unrecognised timestamp %q: day-first dates are not read (month-first 1/2/2006 is; better ISO 2006-01-02)", ErrBadInput, s)
		}
	}
	return time.Time{}, fmt.Errorf("%w: unrecognised timestamp %q", ErrBadInput, s)
}

// parseUnix reads an unsigned decimal Unix time (see ParseTime).
func parseUnix(s string) (time.Time, bool) {
	if s == "" || len(s) > 24 {
		return time.Time{}, false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return time.Time{}, false
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) {
		return time.Time{}, false
	}
	var sec float64
	switch {
	case v < 1e11:
		sec = v
	case v < 1e14:
		sec = v / 1e3
	case v < 1e17:
		sec = v / 1e6
	default:
		sec = v / 1e9
	}
	whole := math.Floor(sec)
	return time.Unix(int64(whole), int64(math.Round((sec-whole)*1e9))).UTC(), true
}

// isIndexColumn reports whether a header name (lower case) marks a
// row-number or empty column rather than data: no name, pandas'
// "unnamed: N", or "index".
func isIndexColumn(name string) bool {
	if name == "" || name == "index" {
		return true
	}
	rest, ok := strings.CutPrefix(name, "unnamed:")
	if !ok {
		return false
	}
	_, err := strconv.Atoi(strings.TrimSpace(rest))
	return err == nil
}

func indexOf(names []string, want []string) int {
	for i, n := range names {
		for _, w := range want {
			if n == w {
				return i
			}
		}
	}
	return -1
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "y", "yes", "true", "1", "t":
		return true, nil
	case "n", "no", "false", "0", "f", "":
		return false, nil
	}
	return false, fmt.Errorf("%w: not a yes/no flag: %q", ErrBadInput, s)
}

// isMissing reports whether a value field marks a missing value: empty,
// or a marker the usual tools write for one (pandas' NaN, R's NA, null).
// An infinity is not missing: it is refused as bad input.
func isMissing(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "nan", "na", "n/a", "null", "none":
		return true
	}
	return false
}

func parseFinite(s string) (float64, error) {
	return parseNumber(s, false)
}

// parseNumber is parseFinite that also reads a decimal comma ("0,5")
// when decComma is set: in a file separated by semicolons or tabs, the
// exports of comma-decimal locales. Only digits, one comma, digits: a
// number with thousands marks ("1.234,5") is not guessed at.
func parseNumber(s string, decComma bool) (float64, error) {
	s = strings.TrimSpace(s)
	if decComma {
		if a, b, ok := strings.Cut(strings.TrimLeft(s, "+-"), ","); ok && a != "" && b != "" && allDigits(a) && allDigits(b) {
			s = strings.Replace(s, ",", ".", 1)
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: not a number: %q", ErrBadInput, s)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%w: not a finite number: %q", ErrBadInput, s)
	}
	return v, nil
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// maxTableRows bounds what ReadTable accepts so a hostile file cannot
// exhaust memory; it is far above any bucketed access log we keep.
const maxTableRows = 5_000_000

// ReadTable parses a demand CSV. Accepted shapes:
//
//	timestamp,value                      (header optional)
//	timestamp,location,value             (header optional)
//	<time>,<location>,<value>,<cov>...   (header required; e.g. the Uber
//	                                      file's pickup_dt,borough,pickups,
//	                                      wind_spd,...,hday)
//
// With a header, columns are found by name (see timeNames, locationNames,
// valueNames, holidayNames); every other column is a numeric covariate,
// except one whose first non-empty cell is not a number: that column is
// ignored (listed in Table.Ignored), as is a column with no name or a
// row-number column (isIndexColumn). A row with an empty value is
// skipped; a malformed row rejects the whole input with an error naming
// its line. A UTF-8 byte-order mark is skipped, and the separator is the
// most frequent of comma, semicolon and tab in the first lines
// (textin.Separator).
func ReadTable(r io.Reader) (*Table, error) {
	cr, decComma, err := newCSVReader(r)
	if err != nil {
		return nil, err
	}

	cr.TrimLeadingSpace = true
	cr.ReuseRecord = false
	first, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: empty input", ErrBadInput)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: line 1: %v", ErrBadInput, err)
	}
	ncol := len(first)
	tcol, lcol, vcol, hcol := 0, -1, -1, -1
	var covCols []int
	var covText []bool // covCols[j] turned out to be a text column
	third := ""        // name of a third column whose role is undecided
	var wideCols []int // a wide table: one location per column
	wide3 := false     // three columns: long, or a wide table of two
	var raw3 [][]string
	t := &Table{}
	pending := [][]string{}
	if _, err := ParseTime(first[0]); err == nil {
		// No header: shape from the column count.
		switch ncol {
		case 2:
			vcol = 1
		case 3:
			lcol, vcol = 1, 2
		default:
			return nil, fmt.Errorf("%w: line 1: %d columns without a header (want 2 or 3)", ErrBadInput, ncol)
		}
		pending = append(pending, first)
	} else {
		names := make([]string, ncol)
		for i, n := range first {
			names[i] = strings.ToLower(strings.TrimSpace(strings.Trim(n, "\"")))
		}
		if i := indexOf(names, timeNames); i >= 0 {
			tcol = i
		}
		// A row-number column (pandas' unnamed index, "Unnamed: 0" after
		// a round trip) or the empty column of a trailing separator is
		// no part of the data: taken for the location it made every row
		// its own location. The first column stays the time when no
		// column is named for it (an unnamed DatetimeIndex).
		var named []int
		for i, n := range names {
			if i != tcol && isIndexColumn(n) {
				label := n
				if n == "" {
					label = fmt.Sprintf("column %d (no name)", i+1)
				}
				t.Ignored = append(t.Ignored, label)
				continue
			}
			named = append(named, i)
		}
		lcol = indexOf(names, locationNames)
		vcol = indexOf(names, valueNames)
		hcol = indexOf(names, holidayNames)
		// other returns the named column that is none of the given ones
		// (the shapes below have exactly one).
		other := func(not ...int) int {
			for _, i := range named {
				if !slices.Contains(not, i) {
					return i
				}
			}
			return -1
		}
		if vcol < 0 {
			switch {
			case len(named) == 2:
				vcol = other(tcol)
			case len(named) == 3 && lcol < 0 && tcol == named[0]:
				// time,location,value, or two locations' columns (wide):
				// decided after reading (wide3).
				lcol, vcol = named[1], named[2]
				wide3 = true
			case len(named) == 3 && lcol >= 0:
				vcol = other(tcol, lcol)
			case len(named) >= 4 && lcol < 0:
				// One column per location (a wide table).
				for _, i := range named {
					if i != tcol && i != hcol {
						wideCols = append(wideCols, i)
					}
				}
			default:
				return nil, fmt.Errorf("%w: header %v: cannot tell the value column (name it \"value\")", ErrBadInput, names)
			}
		}
		if len(named) == 3 && lcol < 0 && vcol >= 0 {
			// Time and value are named, the third column is not: a
			// location ("zone", "country") or a covariate ("temp").
			// Decided after reading (resolveThird).
			lcol = other(tcol, vcol)
			third = names[lcol]
		}
		if wideCols == nil && (vcol < 0 || tcol == vcol || (lcol >= 0 && (lcol == tcol || lcol == vcol))) {
			return nil, fmt.Errorf("%w: header %v: time, location and value columns overlap", ErrBadInput, names)
		}
		for _, i := range named {
			if wideCols == nil && i != tcol && i != lcol && i != vcol && i != hcol {
				covCols = append(covCols, i)
				t.CovNames = append(t.CovNames, names[i])
			}
		}
		covText = make([]bool, len(covCols))
	}
	covKnown := make([]bool, len(covCols))
	t.HasLocation = lcol >= 0 || wideCols != nil
	emptyLoc := 0               // first line with an empty location cell
	line := 1                   // the header
	wideKnown := map[int]bool{} // a wide column's first non-empty cell was read
	wideText := map[int]bool{}  // ... and was text: the column is ignored
	// wideRow adds one record per location column of a wide row.
	wideRow := func(row []string, line int, cols []int) error {
		ts, err := ParseTime(row[tcol])
		if err != nil {
			return fmt.Errorf("line %d column %d: %w", line, tcol+1, err)
		}
		holiday := false
		if hcol >= 0 {
			if holiday, err = parseBool(row[hcol]); err != nil {
				return fmt.Errorf("line %d column %d: %w", line, hcol+1, err)
			}
		}
		for _, c := range cols {
			if wideText[c] || isMissing(row[c]) {
				continue
			}
			v, err := parseNumber(row[c], decComma)
			if err != nil && !wideKnown[c] {
				wideText[c], wideKnown[c] = true, true
				continue
			}
			if err != nil {
				return fmt.Errorf("line %d column %d: %w", line, c+1, err)
			}
			wideKnown[c] = true
			if len(t.Records) >= maxTableRows {
				return fmt.Errorf("%w: more than %d values", ErrBadInput, maxTableRows)
			}
			t.Records = append(t.Records, Record{Time: ts, Location: strings.TrimSpace(first[c]), Value: v, Holiday: holiday})
		}
		return nil
	}
	if len(pending) > 0 {
		line = 0
	}
	parseRow := func(row []string) error {
		line++
		if len(row) != ncol {
			return fmt.Errorf("%w: line %d: %d columns, want %d", ErrBadInput, line, len(row), ncol)
		}
		if wideCols != nil {
			return wideRow(row, line, wideCols)
		}
		if wide3 {
			raw3 = append(raw3, slices.Clone(row))
		}
		if isMissing(row[vcol]) {
			return nil // missing value: the bucket becomes a gap
		}
		ts, err := ParseTime(row[tcol])
		if err != nil {
			return fmt.Errorf("line %d column %d: %w", line, tcol+1, err)
		}
		v, err := parseNumber(row[vcol], decComma)
		if err != nil {
			return fmt.Errorf("line %d column %d: %w", line, vcol+1, err)
		}
		rec := Record{Time: ts, Value: v}
		if lcol >= 0 {
			rec.Location = strings.TrimSpace(row[lcol])
			if rec.Location == "" && third == "" && !wide3 {
				return fmt.Errorf("%w: line %d: empty location", ErrBadInput, line)
			}
			if rec.Location == "" && emptyLoc == 0 {
				emptyLoc = line // an error unless the column is a covariate
			}
		}
		if hcol >= 0 {
			if rec.Holiday, err = parseBool(row[hcol]); err != nil {
				return fmt.Errorf("line %d column %d: %w", line, hcol+1, err)
			}
		}
		if len(covCols) > 0 {
			rec.Covs = make([]float64, len(covCols))
			for j, c := range covCols {
				if covText[j] || isMissing(row[c]) {
					rec.Covs[j] = math.NaN()
					continue
				}
				if rec.Covs[j], err = parseNumber(row[c], decComma); err != nil {
					if !covKnown[j] {
						// The column's first value is text: not a covariate.
						covText[j], covKnown[j] = true, true
						rec.Covs[j] = math.NaN()
						continue
					}
					return fmt.Errorf("line %d column %d: %w", line, c+1, err)
				}
				covKnown[j] = true
			}
		}
		if len(t.Records) >= maxTableRows {
			return fmt.Errorf("%w: more than %d rows", ErrBadInput, maxTableRows)
		}
		t.Records = append(t.Records, rec)
		return nil
	}
	for _, row := range pending {
		if err := parseRow(row); err != nil {
			return nil, err
		}
	}
	for {
		row, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrBadInput, line+1, err)
		}
		if err := parseRow(row); err != nil {
			return nil, err
		}
	}
	if wide3 && isWide3(raw3, tcol, lcol, decComma) {
		// Rebuild as two location columns ("ds,location_4,location_41").
		t.Records = t.Records[:0]
		hdr := 1
		if len(pending) > 0 {
			hdr = 0
		}
		for i, row := range raw3 {
			if err := wideRow(row, hdr+i+1, []int{lcol, vcol}); err != nil {
				return nil, err
			}
		}
		emptyLoc = 0
	}
	if len(t.Records) == 0 {
		return nil, fmt.Errorf("%w: no data rows", ErrBadInput)
	}
	for _, c := range wideCols {
		if wideText[c] {
			t.Ignored = append(t.Ignored, strings.ToLower(strings.TrimSpace(first[c])))
		}
	}
	if third != "" {
		t.resolveThird(third, decComma)
	}
	if t.HasLocation && emptyLoc > 0 {
		return nil, fmt.Errorf("%w: line %d: empty location", ErrBadInput, emptyLoc)
	}
	if slices.Contains(covText, true) {
		t.dropColumns(covText)
	}
	return t, nil
}

// isWide3 tells two location columns (a wide table) from a location and
// a value column under an unknown header: the first column is a location
// when one of its cells is not a number or a timestamp repeats (a long
// table lists several locations at one time).
func isWide3(rows [][]string, tcol, c int, decComma bool) bool {
	seen := make(map[string]bool, len(rows))
	for _, r := range rows {
		if seen[r[tcol]] {
			return false
		}
		seen[r[tcol]] = true
		if _, err := parseNumber(r[c], decComma); err != nil && !isMissing(r[c]) {
			return false
		}
	}
	return true
}

// resolveThird decides the role of a third column (name) that was read
// as the location: it is a numeric covariate when every cell is a number
// (or missing) and no timestamp repeats, since a per-location table lists
// several locations at one time; otherwise it stays the location.
func (t *Table) resolveThird(name string, decComma bool) {
	vals := make([]float64, len(t.Records))
	times := make([]int64, len(t.Records))
	for i, r := range t.Records {
		v := math.NaN()
		if !isMissing(r.Location) {
			x, err := parseNumber(r.Location, decComma)
			if err != nil {
				return
			}
			v = x
		}
		vals[i], times[i] = v, r.Time.UnixNano()
	}
	slices.Sort(times)
	for i := 1; i < len(times); i++ {
		if times[i] == times[i-1] {
			return
		}
	}
	t.HasLocation = false
	t.CovNames = append([]string{name}, t.CovNames...)
	for i := range t.Records {
		r := &t.Records[i]
		r.Location = ""
		r.Covs = append([]float64{vals[i]}, r.Covs...)
	}
}

// dropColumns removes the covariates marked text from the table.
func (t *Table) dropColumns(text []bool) {
	var names []string
	for j, n := range t.CovNames {
		if text[j] {
			t.Ignored = append(t.Ignored, n)
		} else {
			names = append(names, n)
		}
	}
	t.CovNames = names
	for i := range t.Records {
		r := &t.Records[i]
		k := 0
		for j, v := range r.Covs {
			if !text[j] {
				r.Covs[k] = v
				k++
			}
		}
		r.Covs = r.Covs[:k]
		if k == 0 {
			r.Covs = nil
		}
	}
}

// newCSVReader opens r as a spreadsheet or database export: a UTF-8
// byte-order mark skipped, UTF-16 refused by name, CR-only line ends
// split, the separator sniffed from its first lines (textin.Separator).
// decComma: the separator is not a comma, so numbers may carry a decimal
// comma.
func newCSVReader(r io.Reader) (*csv.Reader, bool, error) {
	br := bufio.NewReader(r)
	if b, _ := br.Peek(2); textin.IsUTF16(b) {
		return nil, false, fmt.Errorf("%w: UTF-16 text (byte-order mark %X): save the file as UTF-8 CSV", ErrBadInput, b)
	}
	in, head := textin.Normalize(br)
	cr := csv.NewReader(in)
	cr.Comma = textin.Separator(head)
	return cr, cr.Comma != ',', nil
}

// Agg says how samples inside one bucket combine.
type Agg int

const (
	// AggSum adds the samples (counts, bytes, requests).
	AggSum Agg = iota
	// AggMean averages them (gauges such as CPU percent).
	AggMean
)

// String names the aggregation as ParseAgg reads it.
func (a Agg) String() string {
	if a == AggMean {
		return "mean"
	}
	return "sum"
}

// ParseAgg reads "sum" or "mean".
func ParseAgg(s string) (Agg, error) {
	switch s {
	case "sum":
		return AggSum, nil
	case "mean", "avg":
		return AggMean, nil
	}
	return 0, fmt.Errorf("%w: aggregation %q (want sum or mean)", ErrBadInput, s)
}

// SeriesOptions controls how a Table becomes regular series.
type SeriesOptions struct {
	// Step is the bucket length; 0 keeps the table's native step.
	Step time.Duration
	// IndexStep, when set, reads the timestamps as bucket numbers of this
	// length (a file whose time column is 1, 2, 3…, one per hour, say):
	// bucket n starts n × IndexStep after the Unix epoch.
	IndexStep time.Duration
	// Agg combines the samples of one bucket.
	Agg Agg
	// KeepRepeats keeps rows that repeat another row's timestamp,
	// location and value (an event log with one row per request) and lets
	// a bucket's sum grow with every sample. By default such rows are
	// repeated exports (LoadSeries drops them) and a bucket holding more
	// samples than the step holds native steps (a DST artifact: NAB's
	// 02:00 hour relabelled 03:00) is summed as its mean times that number.
	KeepRepeats bool
}

// NativeStep is the data's sampling interval: the median of the positive
// gaps between consecutive distinct timestamps (so missing rows, which
// make some gaps longer, and a stray off-grid row, which makes two
// shorter, do not change it), rounded to the nearest length that divides
// a day when within 5% of it (jittered or irregular sampling), else to a
// whole minute, hour or day when within 2% of one.
func (t *Table) NativeStep() (time.Duration, error) {
	ts := make([]int64, 0, len(t.Records))
	for _, r := range t.Records {
		ts = append(ts, r.Time.Unix())
	}
	slices.Sort(ts)
	ts = slices.Compact(ts)
	if len(ts) < 2 {
		return 0, fmt.Errorf("%w: fewer than two distinct timestamps", ErrBadInput)
	}
	gaps := make([]int64, len(ts)-1)
	for i := 1; i < len(ts); i++ {
		gaps[i-1] = ts[i] - ts[i-1]
	}
	slices.Sort(gaps)
	step := gaps[(len(gaps)-1)/2] // the lower median: an observed gap
	// Irregular sampling (a median gap of 307 s for a 5-minute sampler
	// with missed samples): the nearest step that divides a day, within 5%.
	best := niceSteps[0]
	for _, c := range niceSteps {
		if abs64(c-step) < abs64(best-step) {
			best = c
		}
	}
	if abs64(best-step)*20 <= step {
		return time.Duration(best) * time.Second, nil
	}
	for _, unit := range []int64{60, 3600, 86400} {
		if step >= unit {
			r := (step + unit/2) / unit * unit
			if d := r - step; d*50 <= step && -d*50 <= step {
				step = r
			}
		}
	}
	return time.Duration(step) * time.Second, nil
}

// niceSteps are the bucket lengths (seconds) that divide a day, and a week.
var niceSteps = []int64{1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800,
	3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400, 7 * 86400}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// DropDuplicates removes rows repeating an earlier row's timestamp,
// location, value and covariates (overlapping exports, a re-sent sample),
// keeping the first. Rows sharing a timestamp and location but not the
// value are distinct samples and stay (Series combines them by
// SeriesOptions.Agg, as it does samples of one bucket); conflicting
// counts them.
func (t *Table) DropDuplicates() (dropped, conflicting int) {
	idx := make([]int, len(t.Records))
	for i := range idx {
		idx[i] = i
	}
	rec := t.Records
	slices.SortStableFunc(idx, func(a, b int) int {
		if c := strings.Compare(rec[a].Location, rec[b].Location); c != 0 {
			return c
		}
		if c := rec[a].Time.Compare(rec[b].Time); c != 0 {
			return c
		}
		return cmp.Compare(rec[a].Value, rec[b].Value)
	})
	drop := make([]bool, len(rec))
	var kept []int // kept rows of the current (location, time, value) group
	for k, i := range idx {
		b := &rec[i]
		if k > 0 {
			a := &rec[idx[k-1]]
			if a.Location != b.Location || !a.Time.Equal(b.Time) {
				kept = kept[:0]
			} else if a.Value != b.Value {
				kept = kept[:0]
				conflicting++
			}
		}
		for _, j := range kept {
			if sameRecord(&rec[j], b) {
				drop[i] = true
				dropped++
				break
			}
		}
		if !drop[i] {
			if len(kept) > 0 {
				conflicting++ // same value, other covariates
			}
			kept = append(kept, i)
		}
	}
	if dropped > 0 {
		out := rec[:0]
		for i := range rec {
			if !drop[i] {
				out = append(out, rec[i])
			}
		}
		t.Records = out
	}
	return dropped, conflicting
}

func sameRecord(a, b *Record) bool {
	if a.Value != b.Value || a.Holiday != b.Holiday || len(a.Covs) != len(b.Covs) {
		return false
	}
	for i, x := range a.Covs {
		if y := b.Covs[i]; x != y && !(math.IsNaN(x) && math.IsNaN(y)) {
			return false
		}
	}
	return true
}

// maxSeriesLen bounds the bucket grid so a stray timestamp far from the
// rest cannot make us allocate gigabytes.
const maxSeriesLen = 10_000_000

// Series turns the table into one regular series per location (sorted by
// name). Buckets are aligned to multiples of Step since the Unix epoch.
// When aggregating, a first or last bucket holding fewer samples than a
// full bucket is dropped (a partial hour is not comparable). In a table
// with locations a location absent at a timestamp that other locations
// report counts as zero (count tables list only non-zero rows); a bucket
// no location reports is a gap, filled by linear interpolation and marked
// unobserved so the backtest never scores it. With AggMean (gauges such
// as CPU percent per host) an absent row is a gap too, never a zero.
func (t *Table) Series(opt SeriesOptions) ([]*Series, error) {
	native, err := t.NativeStep()
	if err != nil {
		return nil, err
	}
	monthly := opt.Step == 0 && opt.IndexStep == 0 && native >= 28*24*time.Hour && native <= 31*24*time.Hour && calendarMonthly(t.Records)
	if monthly {
		native = monthStep
	}
	step := opt.Step
	if step == 0 {
		step = native
	}
	if step < native {
		return nil, fmt.Errorf("%w: step %v is finer than the data's %v", ErrBadInput, step, native)
	}
	per := int(step / native)
	if step%native != 0 {
		per = 0 // irregular ratio: no partial-bucket check
	}
	sec := int64(step / time.Second)
	if sec <= 0 {
		return nil, fmt.Errorf("%w: step %v below one second", ErrBadInput, step)
	}
	keepFrom, keepTo := t.strayBounds()
	records := t.Records
	if !keepFrom.IsZero() || !keepTo.IsZero() {
		records = nil
		for _, r := range t.Records {
			if (keepFrom.IsZero() || !r.Time.Before(keepFrom)) && (keepTo.IsZero() || !r.Time.After(keepTo)) {
				records = append(records, r)
			}
		}
	}
	if monthly {
		// Calendar months are 28 to 31 days: fixed buckets of the median
		// gap drift against them (two months in one bucket, none in
		// another). One bucket per month instead, a twelfth of a year.
		mapped := make([]Record, len(records))
		for i, r := range records {
			r.Time = time.Unix(int64((r.Time.Year()-1970)*12+int(r.Time.Month())-1)*int64(monthStep/time.Second), 0).UTC()
			mapped[i] = r
		}
		records = mapped
		slog.Info("series: monthly rows, one bucket per calendar month", "step", monthStep.String())
	}
	minB, maxB := int64(math.MaxInt64), int64(math.MinInt64)
	bucket := func(tm time.Time) int64 {
		u := tm.Unix()
		b := u / sec
		if u%sec < 0 {
			b--
		}
		return b
	}
	for _, r := range records {
		b := bucket(r.Time)
		minB = min(minB, b)
		maxB = max(maxB, b)
	}
	n := maxB - minB + 1
	if n > maxSeriesLen {
		return nil, fmt.Errorf("%w: %d buckets of %v between first and last timestamp", ErrBadInput, n, step)
	}
	type acc struct {
		sum, cnt    []float64
		cov         [][]float64
		covN        [][]float64
		first, last int64 // the location's own span of buckets
	}
	locs := map[string]*acc{}
	anyAt := make([]int, n)
	holi := map[int64]bool{}
	for _, r := range records {
		a := locs[r.Location]
		if a == nil {
			a = &acc{sum: make([]float64, n), cnt: make([]float64, n), first: n, last: -1}
			for range t.CovNames {
				a.cov = append(a.cov, make([]float64, n))
				a.covN = append(a.covN, make([]float64, n))
			}
			locs[r.Location] = a
		}
		i := bucket(r.Time) - minB
		a.first, a.last = min(a.first, i), max(a.last, i)
		a.sum[i] += r.Value
		a.cnt[i]++
		anyAt[i]++
		for j, c := range r.Covs {
			if !math.IsNaN(c) {
				a.cov[j][i] += c
				a.covN[j][i]++
			}
		}
		if r.Holiday {
			d := r.Time.Truncate(24 * time.Hour)
			holi[d.Unix()] = true
		}
	}
	// Partial edge buckets: compare with the fullest bucket of all locations.
	lo, hi := int64(0), n-1
	if per > 1 {
		full := 0
		for _, c := range anyAt {
			full = max(full, c)
		}
		nl := len(locs)
		if anyAt[lo] < full && anyAt[lo] < per*nl {
			lo++
		}
		if hi > lo && anyAt[hi] < full && anyAt[hi] < per*nl {
			hi--
		}
	}
	if hi < lo {
		return nil, fmt.Errorf("%w: no complete bucket of %v", ErrBadInput, step)
	}
	var holidays []time.Time
	for d := range holi {
		holidays = append(holidays, time.Unix(d, 0).UTC())
	}
	sort.Slice(holidays, func(i, j int) bool { return holidays[i].Before(holidays[j]) })
	names := make([]string, 0, len(locs))
	for l := range locs {
		names = append(names, l)
	}
	sort.Strings(names)
	out := make([]*Series, 0, len(names))
	overfull := 0 // buckets with more samples than native steps
	for _, l := range names {
		a := locs[l]
		m := int(hi - lo + 1)
		s := &Series{
			Name:     l,
			Start:    time.Unix((minB+lo)*sec, 0).UTC(),
			Step:     step,
			Values:   make([]float64, m),
			Observed: make([]bool, m),
			Holidays: holidays,
		}
		for i := range m {
			k := int(lo) + i
			switch {
			case a.cnt[k] > 0:
				s.Values[i] = a.sum[k]
				if opt.Agg == AggMean {
					s.Values[i] /= a.cnt[k]
				} else if per >= 1 && a.cnt[k] > float64(per) && !opt.KeepRepeats {
					s.Values[i] *= float64(per) / a.cnt[k]
				}
				if per >= 1 && a.cnt[k] > float64(per) {
					overfull++
				}
				s.Observed[i] = true
			case t.HasLocation && anyAt[k] > 0 && opt.Agg == AggSum:
				// Other locations report: this one had nothing, inside
				// its own span; before its first row or after its last
				// it was not reporting (a site added or retired), so the
				// zero is not an observation (the backtest trims it).
				s.Values[i] = 0
				s.Observed[i] = int64(k) >= a.first && int64(k) <= a.last
			default:
				s.Values[i] = math.NaN()
			}
		}
		if len(t.CovNames) > 0 {
			s.Covariates = map[string][]float64{}
			for j, cn := range t.CovNames {
				v := make([]float64, m)
				for i := range m {
					k := int(lo) + i
					if a.covN[j][k] > 0 {
						v[i] = a.cov[j][k] / a.covN[j][k]
					} else {
						v[i] = math.NaN()
					}
				}
				fillGaps(v)
				s.Covariates[cn] = v
			}
		}
		if !fillGaps(s.Values) {
			return nil, fmt.Errorf("%w: location %q has no values", ErrBadInput, l)
		}
		out = append(out, s)
	}
	if overfull > 0 {
		how := "mean of the samples"
		if opt.Agg == AggSum {
			how = fmt.Sprintf("mean × %d", per)
			if opt.KeepRepeats {
				how = "sum of the samples"
			}
		}
		slog.Warn("series: buckets hold more samples than native steps", "buckets", overfull,
			"step", step.String(), "native_step", native.String(), "value", how)
	}
	return out, nil
}

// monthStep is the bucket of monthly data: a twelfth of a 365-day year,
// so the yearly season is 12 buckets.
const monthStep = 730 * time.Hour

// calendarMonthly reports whether every row is at midnight on the first,
// or every row on the last, day of its month (monthly data as exported).
func calendarMonthly(rs []Record) bool {
	first, last := true, true
	for _, r := range rs {
		tm := r.Time
		if tm.Hour() != 0 || tm.Minute() != 0 || tm.Second() != 0 || tm.Nanosecond() != 0 {
			return false
		}
		first = first && tm.Day() == 1
		last = last && tm.AddDate(0, 0, 1).Day() == 1
		if !first && !last {
			return false
		}
	}
	return len(rs) > 0
}

// strayBounds finds rows far from all the others at either end (an
// epoch-zero placeholder, a typo'd year; textin.StrayEnds over the
// distinct timestamps). Left in, they stretch the grid over years of interpolated
// buckets that change what is trained and scored. It returns the first
// and last time to keep (zero: no bound) and warns about what it leaves
// out; a long outage inside the data is no stray.
func (t *Table) strayBounds() (from, to time.Time) {
	ts := make([]int64, 0, len(t.Records))
	for _, r := range t.Records {
		ts = append(ts, r.Time.UnixNano())
	}
	slices.Sort(ts)
	ts = slices.Compact(ts)
	m := len(ts)
	lead, tail := textin.StrayEnds(ts, nil)
	if lead > 0 {
		from = time.Unix(0, ts[lead]).UTC()
		slog.Warn("series: rows far before all the others left out (a placeholder or typo'd date?)",
			"timestamps", lead, "first", time.Unix(0, ts[0]).UTC().Format(time.DateTime), "data_from", from.Format(time.DateTime))
	}
	if tail > 0 {
		to = time.Unix(0, ts[m-tail-1]).UTC()
		slog.Warn("series: rows far after all the others left out (a placeholder or typo'd date?)",
			"timestamps", tail, "last", time.Unix(0, ts[m-1]).UTC().Format(time.DateTime), "data_to", to.Format(time.DateTime))
	}
	return from, to
}

// fillGaps replaces NaNs by linear interpolation (constant at the edges).
// It reports false when every value is NaN.
func fillGaps(v []float64) bool {
	prev := -1
	for i, x := range v {
		if math.IsNaN(x) {
			continue
		}
		if prev < 0 {
			for j := 0; j < i; j++ {
				v[j] = x
			}
		} else if i-prev > 1 {
			a := v[prev]
			for j := prev + 1; j < i; j++ {
				f := float64(j-prev) / float64(i-prev)
				v[j] = a + f*(x-a)
			}
		}
		prev = i
	}
	if prev < 0 {
		return false
	}
	for j := prev + 1; j < len(v); j++ {
		v[j] = v[prev]
	}
	return true
}
