package forecast

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// hourlyRows returns n hourly "timestamp,value" rows from 2024-01-01 in
// the given time layout, values 10, 11, 12, ...
func hourlyRows(n int, layout, sep, nl string) string {
	var b strings.Builder
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		fmt.Fprintf(&b, "%s%s%d%s", t0.Add(time.Duration(i)*time.Hour).Format(layout), sep, 10+i, nl)
	}
	return b.String()
}

// TestReadTableVariants: header and format variants of one table read as
// the same records; nothing is lost (the first row of a headerless file
// starting with a byte-order mark was taken for a header and dropped).
func TestReadTableVariants(t *testing.T) {
	const n = 5
	plain := "timestamp,value\n" + hourlyRows(n, time.DateTime, ",", "\n")
	for _, tc := range []struct {
		name, in      string
		ignored, covs []string
	}{
		{name: "plain", in: plain},
		{name: "BOM and header", in: "\ufeff" + plain},
		{name: "BOM, no header", in: "\ufeff" + hourlyRows(n, time.DateTime, ",", "\n")},
		{name: "CRLF", in: "timestamp,value\r\n" + hourlyRows(n, time.DateTime, ",", "\r\n")},
		{name: "quoted", in: "\"timestamp\",\"value\"\n" + hourlyRows(n, `"`+time.DateTime+`"`, ",", "\n")},
		{name: "semicolons", in: "timestamp;value\n" + hourlyRows(n, time.DateTime, ";", "\n")},
		{name: "tabs", in: "timestamp\tvalue\n" + hourlyRows(n, time.DateTime, "\t", "\n")},
		{name: "tabs, a comma in the value column's name", in: "timestamp\trequests (count, per hour)\n" + hourlyRows(n, time.DateTime, "\t", "\n")},
		{name: "spaces around fields", in: " Timestamp , Value \n" + hourlyRows(n, time.DateTime, " ,  ", " \n")},
		{name: "ISO-8601 UTC", in: "timestamp,value\n" + hourlyRows(n, "2006-01-02T15:04:05Z", ",", "\n")},
		{name: "ISO-8601 offset", in: "timestamp,value\n" + strings.ReplaceAll(hourlyRows(n, "2006-01-02T15:04:05", ",", "\n"), ",", "+00:00,")},
		{name: "text column ignored", in: "timestamp,value,host,status\n" + strings.ReplaceAll(hourlyRows(n, time.DateTime, ",", "\n"), "\n", ",web-1,\n"),
			ignored: []string{"host"}, covs: []string{"status"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(tb.Records) != n || !slices.Equal(tb.CovNames, tc.covs) || !slices.Equal(tb.Ignored, tc.ignored) {
				t.Fatalf("%d records, covariates %v, ignored %v", len(tb.Records), tb.CovNames, tb.Ignored)
			}
			t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, r := range tb.Records {
				if !r.Time.Equal(t0.Add(time.Duration(i)*time.Hour)) || r.Value != float64(10+i) || len(r.Covs) != len(tc.covs) {
					t.Fatalf("record %d: %+v", i, r)
				}
			}
		})
	}
	// A text value in a column whose first value was a number is a typo,
	// not a text column: refused with its line.
	_, err := ReadTable(strings.NewReader("timestamp,value,temp,wind\n2024-01-01 00:00,1,3,1\n2024-01-01 01:00,1,x,1\n"))
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "line 3 column 3") {
		t.Fatalf("numeric column with text: %v", err)
	}
	// Dates only: a daily series.
	ss, err := LoadSeries(strings.NewReader("date,value\n2024-01-01,1\n2024-01-02,2\n2024-01-04,4\n"), SeriesOptions{})
	if err != nil || ss[0].Step != 24*time.Hour || ss[0].Len() != 4 || ss[0].Observed[2] {
		t.Fatalf("daily: %v %+v", err, ss)
	}
}

// grid returns n times from t0, step d apart.
func grid(t0 time.Time, n int, d time.Duration) []time.Time {
	ts := make([]time.Time, n)
	for i := range ts {
		ts[i] = t0.Add(time.Duration(i) * d)
	}
	return ts
}

// TestNativeStep: the sampling interval survives gaps, a stray off-grid
// row and jittered timestamps (the smallest gap did not: one row at 00:30
// in an hourly file made it a half-hourly series, half of it filled).
func TestNativeStep(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		times func() []time.Time
		want  time.Duration
	}{
		{"hourly", func() []time.Time { return grid(t0, 50, time.Hour) }, time.Hour},
		{"hourly with gaps of hours and days", func() (ts []time.Time) {
			for i := range 200 {
				if (i < 20 || i > 25) && (i < 60 || i > 110) {
					ts = append(ts, t0.Add(time.Duration(i)*time.Hour))
				}
			}
			return ts
		}, time.Hour},
		{"hourly with one off-grid row", func() []time.Time {
			return append(grid(t0, 50, time.Hour), t0.Add(10*time.Hour+30*time.Minute))
		}, time.Hour},
		{"5-minute jittered by up to 3 s", func() (ts []time.Time) {
			rng := rand.New(rand.NewPCG(1, 1))
			for i := range 500 {
				ts = append(ts, t0.Add(time.Duration(i)*5*time.Minute+time.Duration(rng.IntN(4))*time.Second))
			}
			return ts
		}, 5 * time.Minute},
		{"daily with missing days", func() (ts []time.Time) {
			for i := range 100 {
				if i%7 != 3 {
					ts = append(ts, t0.AddDate(0, 0, i))
				}
			}
			return ts
		}, 24 * time.Hour},
		{"15-minute", func() []time.Time { return grid(t0, 100, 15*time.Minute) }, 15 * time.Minute},
		{"irregular 5-minute sampling with missed samples", func() (ts []time.Time) {
			rng := rand.New(rand.NewPCG(2, 2))
			tm := t0
			for range 2000 {
				if rng.Float64() > 0.05 {
					ts = append(ts, tm)
				}
				tm = tm.Add(time.Duration(300+rng.IntN(241)-120) * time.Second)
			}
			return ts
		}, 5 * time.Minute},
		{"7-minute stays 7-minute", func() []time.Time { return grid(t0, 100, 7*time.Minute) }, 7 * time.Minute},
		{"90-minute stays 90-minute", func() []time.Time { return grid(t0, 100, 90*time.Minute) }, 90 * time.Minute},
		{"irregular seconds stay seconds", func() []time.Time { return grid(t0, 100, 7*time.Second) }, 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := &Table{}
			for _, tm := range tc.times() {
				tb.Records = append(tb.Records, Record{Time: tm, Value: 1})
			}
			got, err := tb.NativeStep()
			if err != nil || got != tc.want {
				t.Fatalf("NativeStep = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestDropDuplicates: a repeated row is dropped once, whatever rows lie
// between; rows sharing a timestamp with other values stay and are
// combined by the aggregation.
func TestDropDuplicates(t *testing.T) {
	for _, tc := range []struct {
		name              string
		in                string
		dropped, conflict int
		values            []float64 // series at the native step, Agg sum
	}{
		{"no duplicates", "2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n", 0, 0, []float64{1, 2, 3}},
		{"repeated row", "2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n", 1, 0, []float64{1, 2, 3}},
		{"file concatenated with itself", "2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n",
			3, 0, []float64{1, 2, 3}},
		{"three copies", "2024-01-01 00:00,1\n2024-01-01 00:00,1\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n", 2, 0, []float64{1, 2}},
		// Two values for a bucket that holds one sample: their mean.
		{"A B A", "2024-01-01 00:00,1\n2024-01-01 00:00,5\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n", 1, 1, []float64{3, 2}},
		{"other values are samples", "2024-01-01 00:00,1\n2024-01-01 00:00,4\n2024-01-01 01:00,2\n", 0, 1, []float64{2.5, 2}},
		{"same time, other location", "2024-01-01 00:00,a,1\n2024-01-01 00:00,b,1\n2024-01-01 01:00,a,2\n2024-01-01 01:00,b,2\n", 0, 0, []float64{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			d, c := tb.DropDuplicates()
			if d != tc.dropped || c != tc.conflict {
				t.Fatalf("dropped %d conflicting %d, want %d %d", d, c, tc.dropped, tc.conflict)
			}
			ss, err := tb.Series(SeriesOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ss[0].Values, tc.values) {
				t.Fatalf("values %v, want %v", ss[0].Values, tc.values)
			}
		})
	}
}

// TestOverfullBuckets: NAB's daylight-saving artifact (the 02:xx hour of
// 5-minute rows relabelled 03:00) summed to hourly gave 03:00 24 samples,
// twice its demand; it is now the mean times 12. An event log with
// KeepRepeats keeps every row and sums them.
func TestOverfullBuckets(t *testing.T) {
	var b strings.Builder
	b.WriteString("timestamp,value\n")
	t0 := time.Date(2014, 3, 9, 0, 0, 0, 0, time.UTC)
	for i := range 12 * 6 {
		ts := t0.Add(time.Duration(i) * 5 * time.Minute)
		if ts.Hour() == 2 {
			ts = time.Date(2014, 3, 9, 3, 0, 0, 0, time.UTC)
		}
		fmt.Fprintf(&b, "%s,%d\n", ts.Format(time.DateTime), 10+i%2)
	}
	ss, err := LoadSeries(strings.NewReader(b.String()), SeriesOptions{Step: time.Hour, Agg: AggSum})
	if err != nil {
		t.Fatal(err)
	}
	// Hours 0..5; hour 2 is a gap; hour 3 holds 11 rows and the two
	// distinct values of the twelve relabelled ones: 13 samples.
	if v := ss[0].Values; v[0] != 126 || ss[0].Observed[2] || math.Abs(v[3]-126) > 1 || v[4] != 126 {
		t.Fatalf("hourly sums %v observed %v", v, ss[0].Observed)
	}
	ev := "timestamp,location,value\n2024-01-01 00:00:01,a,1\n2024-01-01 00:00:01,a,1\n2024-01-01 00:00:02,a,1\n2024-01-01 01:00:05,a,1\n" +
		"2024-01-01 02:00:01,a,1\n2024-01-01 02:00:01,a,1\n2024-01-01 02:00:03,a,1\n"
	ss, err = LoadSeries(strings.NewReader(ev), SeriesOptions{Step: time.Hour, KeepRepeats: true})
	if err != nil {
		t.Fatal(err)
	}
	if v := ss[0].Values; !slices.Equal(v, []float64{3, 1, 3}) {
		t.Fatalf("event log per hour %v", v)
	}
}

// TestLocationSpans: a location that starts late or stops early is
// unobserved outside its own rows (it was zero-filled and scored as if it
// had no demand); inside, a missing row is still a zero count.
func TestLocationSpans(t *testing.T) {
	in := "timestamp,location,value\n" +
		"2024-01-01 00:00,a,1\n2024-01-01 01:00,a,1\n2024-01-01 02:00,a,1\n2024-01-01 03:00,a,1\n" +
		"2024-01-01 01:00,b,5\n2024-01-01 03:00,b,6\n" +
		"2024-01-01 00:00,c,7\n"
	ss, err := LoadSeries(strings.NewReader(in), SeriesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]bool{
		"a": {true, true, true, true},
		"b": {false, true, true, true}, // its rows: 01:00 .. 03:00
		"c": {true, false, false, false},
	}
	for _, s := range ss {
		if !slices.Equal(s.Observed, want[s.Name]) {
			t.Errorf("%s observed %v, want %v (values %v)", s.Name, s.Observed, want[s.Name], s.Values)
		}
	}
	if b := ss[1]; b.Values[2] != 0 || b.Values[0] != 0 {
		t.Errorf("b values %v", b.Values)
	}
	// The grid stays common (the locations tool needs it).
	if _, err := LocationDataFromSeries(ss); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseTime: the timestamp parser never panics and what it accepts
// is in UTC and formats back to something it accepts.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"2023-01-02 10:30:00", "2023-01-02T12:30:00+02:00", "1/2/2023", "1672655400000", "7", "\ufeff2023-01-02"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tm, err := ParseTime(s)
		if err != nil {
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("error without ErrBadInput: %v", err)
			}
			return
		}
		if tm.Location() != time.UTC {
			t.Fatalf("%q parsed to %v, not UTC", s, tm)
		}
	})
}

// FuzzParseMarkConditions: the --mark parser never panics and accepts
// only finite thresholds.
func FuzzParseMarkConditions(f *testing.F) {
	f.Add("liq_precp_1hr>0,snow_depth_in>0")
	f.Add("a>1e309")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseMarkConditions(s)
		if err != nil {
			return
		}
		for _, c := range cs {
			if math.IsNaN(c.Above) || math.IsInf(c.Above, 0) {
				t.Fatalf("%q: threshold %v", s, c.Above)
			}
		}
	})
}

// TestReadTableIndexColumns: pandas' to_csv writes its row index as a
// first column with an empty name (or "Unnamed: 0" after a round trip),
// and a trailing separator adds an empty column. Such a column was taken
// for the location (one location per row, each too short to backtest) or
// became a covariate counting rows; it is ignored and listed.
func TestReadTableIndexColumns(t *testing.T) {
	const n = 5
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	rows := func(f func(i int, ts string) string) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(f(i, t0.Add(time.Duration(i)*time.Hour).Format(time.DateTime)) + "\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, in string
		loc      bool
		ignored  []string
	}{
		{name: "pandas index", in: ",timestamp,value\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%d,%s,%d", i, ts, 10+i) }),
			ignored: []string{"column 1 (no name)"}},
		{name: "pandas index, per location", in: ",timestamp,location,value\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%d,%s,eu,%d", i, ts, 10+i) }),
			loc: true, ignored: []string{"column 1 (no name)"}},
		{name: "pandas index after a round trip", in: "Unnamed: 0,timestamp,value\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%d,%s,%d", i, ts, 10+i) }),
			ignored: []string{"unnamed: 0"}},
		{name: "unnamed time index", in: ",value\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%s,%d", ts, 10+i) })},
		{name: "trailing separator", in: "timestamp,value,\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%s,%d,", ts, 10+i) }),
			ignored: []string{"column 3 (no name)"}},
		{name: "trailing separator, semicolons", in: "timestamp;location;value;\n" + rows(func(i int, ts string) string { return fmt.Sprintf("%s;eu;%d;", ts, 10+i) }),
			loc: true, ignored: []string{"column 4 (no name)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(tb.Records) != n || len(tb.CovNames) != 0 || tb.HasLocation != tc.loc || !slices.Equal(tb.Ignored, tc.ignored) {
				t.Fatalf("%d records, covariates %v, location %v, ignored %q", len(tb.Records), tb.CovNames, tb.HasLocation, tb.Ignored)
			}
			for i, r := range tb.Records {
				if !r.Time.Equal(t0.Add(time.Duration(i)*time.Hour)) || r.Value != float64(10+i) || (tc.loc && r.Location != "eu") {
					t.Fatalf("record %d: %+v", i, r)
				}
			}
		})
	}
}

// TestReadTableLocaleExports: spreadsheet exports in comma-decimal locales
// (semicolon or tab separated, "0,5", dotted day-first dates) and classic
// Mac line ends (CR only). The decimal comma was "not a number"; CR-only
// input became one header line holding the whole file; UTF-16 (Excel's
// "Unicode text") was garbled into an unrecognised timestamp and is now
// refused by name.
func TestReadTableLocaleExports(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		values   []float64
		covs     []float64 // first covariate per row, when any
		wantErr  string
	}{
		{name: "semicolons, decimal comma", in: "timestamp;value\n2024-01-01 00:00;0,5\n2024-01-01 01:00;1,25\n", values: []float64{0.5, 1.25}},
		{name: "tabs, decimal comma, covariate", in: "timestamp\tvalue\ttemp\n2024-01-01 00:00\t3\t-1,5\n2024-01-01 01:00\t4\t2\n",
			values: []float64{3, 4}, covs: []float64{-1.5, 2}},
		{name: "dotted day-first dates", in: "Datum;Wert\n31.01.2024 23:00;1\n01.02.2024 00:00;2\n", values: []float64{1, 2}},
		{name: "CR line ends", in: "timestamp,value\r2024-01-01 00:00,1\r2024-01-01 01:00,2\r", values: []float64{1, 2}},
		{name: "CR line ends, semicolons", in: "timestamp;value\r2024-01-01 00:00;1,5\r2024-01-01 01:00;2\r", values: []float64{1.5, 2}},
		{name: "comma separator: a decimal comma is two fields", in: "timestamp,value\n2024-01-01 00:00,0,5\n", wantErr: "line 2"},
		{name: "thousands and decimal marks are not guessed", in: "timestamp;value\n2024-01-01 00:00;1.234,5\n", wantErr: "line 2 column 2"},
		{name: "UTF-16 little endian", in: "\xff\xfet\x00s\x00,\x00v\x00\n\x00", wantErr: "UTF-16"},
		{name: "UTF-16 big endian", in: "\xfe\xff\x00t\x00s", wantErr: "UTF-16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want ErrBadInput naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got, covs []float64
			for _, r := range tb.Records {
				got = append(got, r.Value)
				if len(r.Covs) > 0 {
					covs = append(covs, r.Covs[0])
				}
			}
			if !slices.Equal(got, tc.values) || !slices.Equal(covs, tc.covs) {
				t.Fatalf("values %v covariates %v", got, covs)
			}
			if d := tb.Records[1].Time.Sub(tb.Records[0].Time); d != time.Hour {
				t.Fatalf("times %v, %v", tb.Records[0].Time, tb.Records[1].Time)
			}
		})
	}
}

// TestReadTableThirdColumn: with time and value named, a third column of
// another name was always the location, so "timestamp,value,temp" made
// one location per temperature (the help says extra numeric columns are
// covariates). It is now a covariate when every cell is a number and no
// timestamp repeats, else the location.
func TestReadTableThirdColumn(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		loc      bool
		covs     []string
		wantErr  string
	}{
		{name: "numeric covariate", in: "timestamp,value,temp\n2024-01-01 00:00,1,-3.5\n2024-01-01 01:00,2,\n2024-01-01 02:00,3,4\n", covs: []string{"temp"}},
		{name: "text location", in: "timestamp,value,country\n2024-01-01 00:00,1,FR\n2024-01-01 00:00,2,DE\n2024-01-01 01:00,3,FR\n", loc: true},
		{name: "integer zone ids, time-major", in: "timestamp,zone,value\n2024-01-01 00:00,1,5\n2024-01-01 00:00,2,6\n2024-01-01 01:00,1,7\n", loc: true},
		{name: "integer zone ids, zone-major", in: "timestamp,value,zone\n2024-01-01 00:00,5,1\n2024-01-01 01:00,7,1\n2024-01-01 00:00,6,2\n", loc: true},
		{name: "empty location", in: "timestamp,value,country\n2024-01-01 00:00,1,FR\n2024-01-01 00:00,2,\n", wantErr: "line 3: empty location"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tb.HasLocation != tc.loc || !slices.Equal(tb.CovNames, tc.covs) {
				t.Fatalf("location %v covariates %v", tb.HasLocation, tb.CovNames)
			}
			for _, r := range tb.Records {
				if (r.Location != "") != tc.loc || len(r.Covs) != len(tc.covs) {
					t.Fatalf("record %+v", r)
				}
			}
			if tc.covs != nil && (tb.Records[0].Covs[0] != -3.5 || !math.IsNaN(tb.Records[1].Covs[0])) {
				t.Fatalf("covariate values %v %v", tb.Records[0].Covs, tb.Records[1].Covs)
			}
		})
	}
}

// TestParseTimeExportSpellings: timestamp spellings of database and
// language exports (BigQuery's "… UTC", PostgreSQL's "+00", Ruby's and
// strftime's "+0000", year-first slashes) were "unrecognised"; a
// day-first date says why it is refused.
func TestParseTimeExportSpellings(t *testing.T) {
	want := time.Date(2014, 2, 14, 14, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		in      string
		shift   time.Duration // want + shift
		wantErr string
	}{
		{in: "2014-02-14 14:30:00 UTC"},
		{in: "2014-02-14 14:30:00 GMT"},
		{in: "2014-02-14T14:30:00 UTC"},
		{in: "2014-02-14 14:30:00+00"},
		{in: "2014-02-14 15:30:00+01"},
		{in: "2014-02-14T14:30:00+0000"},
		{in: "2014-02-14T16:30:00.000+0200"},
		{in: "2014-02-14 14:30:00 +0000"},
		{in: "2014-02-14 09:30:00 -0500"},
		{in: "2014/02/14 14:30:00"},
		{in: "2014/02/14 14:30"},
		{in: "2014/02/14", shift: -14*time.Hour - 30*time.Minute},
		{in: "14/02/2014 14:30", wantErr: "day-first"},
		{in: "2014-02-14 14:30:00 EST", wantErr: "unrecognised"}, // abbreviations are ambiguous
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTime(tc.in)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(want.Add(tc.shift)) || got.Location() != time.UTC {
				t.Fatalf("ParseTime = %v, %v", got, err)
			}
		})
	}
}

// TestStrayEdgeRows: a row far from all the others (an epoch-zero
// placeholder, a typo'd year) stretched the grid over decades of
// interpolated buckets: a 1970 row in a 2014 file gave 4020 origins
// instead of 168 and an 80% interval coverage of 0.3. Such edge rows
// (at most 1% of the timestamps, separated from the rest by a gap longer
// than the rest's whole span) are left out, with a warning; a long outage
// in the middle of the data is not.
func TestStrayEdgeRows(t *testing.T) {
	t0 := time.Date(2014, 2, 14, 0, 0, 0, 0, time.UTC)
	hourly := func(n int) []Record {
		var rs []Record
		for i := range n {
			rs = append(rs, Record{Time: t0.Add(time.Duration(i) * time.Hour), Value: float64(1 + i%5)})
		}
		return rs
	}
	for _, tc := range []struct {
		name  string
		recs  []Record
		start time.Time
		n     int
	}{
		{name: "epoch-zero row", recs: append(hourly(500), Record{Time: time.Unix(0, 0).UTC(), Value: 5}), start: t0, n: 500},
		{name: "typo'd year at the end", recs: append(hourly(500), Record{Time: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), Value: 5}), start: t0, n: 500},
		{name: "two stray rows before", recs: append(hourly(500), Record{Time: time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), Value: 5},
			Record{Time: time.Date(2001, 1, 1, 1, 0, 0, 0, time.UTC), Value: 5}), start: t0, n: 500},
		{name: "strays at both ends (the later one hid the earlier)", recs: append(hourly(500), Record{Time: time.Unix(0, 0).UTC(), Value: 5},
			Record{Time: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), Value: 5}), start: t0, n: 500},
		{name: "outage in the middle stays", recs: append(hourly(300), func() (rs []Record) {
			for _, r := range hourly(300) {
				r.Time = r.Time.AddDate(0, 4, 0)
				rs = append(rs, r)
			}
			return rs
		}()...), start: t0, n: int(t0.AddDate(0, 4, 0).Sub(t0)/time.Hour) + 300},
		{name: "short series, no stray", recs: hourly(3), start: t0, n: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := &Table{Records: tc.recs}
			ss, err := tb.Series(SeriesOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if s := ss[0]; !s.Start.Equal(tc.start) || s.Len() != tc.n {
				t.Fatalf("series from %v, %d buckets; want %v, %d", s.Start, s.Len(), tc.start, tc.n)
			}
		})
	}
}

// TestMissingLocationRowsByAgg: in a count table a location absent at a
// time others report had no requests (zero); in a gauge table (--agg
// mean: CPU percent per host) an absent row is a missing sample, not a
// zero: it was filled with 0 and scored as an observation.
func TestMissingLocationRowsByAgg(t *testing.T) {
	in := "timestamp,location,value\n" +
		"2024-01-01 00:00,a,50\n2024-01-01 00:00,b,40\n" +
		"2024-01-01 01:00,a,60\n" + // b missing
		"2024-01-01 02:00,a,70\n2024-01-01 02:00,b,44\n"
	for _, tc := range []struct {
		agg      Agg
		values   []float64
		observed []bool
	}{
		{AggSum, []float64{40, 0, 44}, []bool{true, true, true}},
		{AggMean, []float64{40, 42, 44}, []bool{true, false, true}},
	} {
		ss, err := LoadSeries(strings.NewReader(in), SeriesOptions{Agg: tc.agg})
		if err != nil {
			t.Fatal(err)
		}
		b := ss[1]
		if b.Name != "b" || !slices.Equal(b.Values, tc.values) || !slices.Equal(b.Observed, tc.observed) {
			t.Fatalf("agg %v: b values %v observed %v", tc.agg, b.Values, b.Observed)
		}
	}
}

// TestReadTableWide: one column per location under a time column and no
// column named for the value ("ds,location_4,location_41" in Prophet's
// multivariate example) made the first location's counts the location
// names (617 one-row locations), or with more columns was refused; each
// column is now a location.
func TestReadTableWide(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		locs     []string // locations of the records, in order
		values   []float64
		ignored  []string
		wantErr  string
	}{
		{name: "two locations", in: "ds,location_4,location_41\n2023-04-01 00:00:00,903,975\n2023-04-01 01:00:00,800,\n",
			locs: []string{"location_4", "location_41", "location_4"}, values: []float64{903, 975, 800}},
		{name: "three locations, names keep their case", in: "time;EU;US;AP\n2024-01-01 00:00;1;2;3\n2024-01-01 01:00;4;5;6\n",
			locs: []string{"EU", "US", "AP", "EU", "US", "AP"}, values: []float64{1, 2, 3, 4, 5, 6}},
		{name: "text column ignored", in: "time,eu,us,note\n2024-01-01 00:00,1,2,ok\n2024-01-01 01:00,4,5,\n",
			locs: []string{"eu", "us", "eu", "us"}, values: []float64{1, 2, 4, 5}, ignored: []string{"note"}},
		{name: "long format with numeric ids stays long", in: "time,zone,count_x\n2024-01-01 00:00,1,5\n2024-01-01 00:00,2,6\n",
			locs: []string{"1", "2"}, values: []float64{5, 6}},
		{name: "text in a location column", in: "time,eu,us,ap\n2024-01-01 00:00,1,2,3\n2024-01-01 01:00,4,x,6\n", wantErr: "line 3 column 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var locs []string
			var vals []float64
			for _, r := range tb.Records {
				locs, vals = append(locs, r.Location), append(vals, r.Value)
			}
			if !tb.HasLocation || !slices.Equal(locs, tc.locs) || !slices.Equal(vals, tc.values) || len(tb.CovNames) != 0 || !slices.Equal(tb.Ignored, tc.ignored) {
				t.Fatalf("locations %q values %v covariates %v ignored %v", locs, vals, tb.CovNames, tb.Ignored)
			}
		})
	}
}

// TestMonthlyRows: calendar months are 28 to 31 days, so fixed buckets
// of the median gap (744 h) drifted against them: some buckets held two
// months (averaged into one value) and others none (a gap), 3 of 144 in
// Prophet's air passengers. Rows on the first (or the last) day of each
// month are now one bucket per month of 730 h (a twelfth of a year).
func TestMonthlyRows(t *testing.T) {
	for _, tc := range []struct {
		name string
		day  func(y int, m time.Month) time.Time
	}{
		{"first of the month", func(y int, m time.Month) time.Time { return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC) }},
		{"last of the month", func(y int, m time.Month) time.Time { return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("ds,y\n")
			for i := range 144 {
				fmt.Fprintf(&b, "%s,%d\n", tc.day(1949+i/12, time.Month(i%12+1)).Format(time.DateOnly), 100+i)
			}
			ss, err := LoadSeries(strings.NewReader(b.String()), SeriesOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s := ss[0]
			if s.Step != 730*time.Hour || s.Len() != 144 || slices.Contains(s.Observed, false) {
				t.Fatalf("step %v, %d buckets, observed %v", s.Step, s.Len(), s.Observed)
			}
			for i, v := range s.Values {
				if v != float64(100+i) {
					t.Fatalf("bucket %d = %v", i, v)
				}
			}
		})
	}
	// Monthly with a day that varies is not remapped (no calendar rule).
	var b strings.Builder
	b.WriteString("ds,y\n")
	for i := range 60 {
		fmt.Fprintf(&b, "%s,1\n", time.Date(2000, time.Month(i+1), 1+i%3, 0, 0, 0, 0, time.UTC).Format(time.DateOnly))
	}
	if ss, err := LoadSeries(strings.NewReader(b.String()), SeriesOptions{}); err != nil || ss[0].Step == 730*time.Hour {
		t.Fatalf("irregular days: %v %v", err, ss[0].Step)
	}
}
