package forecast

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReadTableShapes(t *testing.T) {
	for _, tc := range []struct {
		name, in    string
		hasLoc      bool
		covs        []string
		records     int
		wantErr     string
		firstValue  float64
		firstLoc    string
		firstHolday bool
	}{
		{name: "headerless two columns", in: "2014-01-01 00:00:00,5\n2014-01-01 01:00:00,7\n", records: 2, firstValue: 5},
		{name: "NAB header", in: "timestamp,value\n2014-02-14 14:30:00,1.732\n", records: 1, firstValue: 1.732},
		{name: "prophet quoted header", in: "\"ds\",\"y\"\n\"2007-12-10\",9.59\n", records: 1, firstValue: 9.59},
		{name: "headerless location", in: "2015-01-01 01:00,Bronx,3\n2015-01-01 01:00,Queens,4\n", hasLoc: true, records: 2, firstValue: 3, firstLoc: "Bronx"},
		{name: "uber layout", in: "pickup_dt,borough,pickups,temp_F,hday\n1/1/2015 1:00,Bronx,152,30,Y\n", hasLoc: true,
			covs: []string{"temp_f"}, records: 1, firstValue: 152, firstLoc: "Bronx", firstHolday: true},
		{name: "empty value skipped", in: "timestamp,value\n2014-01-01 00:00:00,\n2014-01-01 01:00:00,2\n", records: 1, firstValue: 2},
		{name: "NaN, NA and null values skipped", in: "timestamp,value\n2014-01-01 00:00:00,NaN\n2014-01-01 01:00:00, na \n2014-01-01 02:00:00,null\n2014-01-01 03:00:00,2\n", records: 1, firstValue: 2},
		{name: "Unix-seconds timestamps", in: "timestamp,value\n1388534400,3\n1388538000,4\n", records: 2, firstValue: 3},
		{name: "empty covariate is NaN", in: "time,location,value,wind\n2015-01-01 00:00,a,1,\n", hasLoc: true, covs: []string{"wind"}, records: 1, firstValue: 1, firstLoc: "a"},
		{name: "bad number names line", in: "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 01:00:00,x\n", wantErr: "line 3 column 2"},
		{name: "infinite value", in: "timestamp,value\n2014-01-01 00:00:00,Inf\n", wantErr: "not a finite number"},
		{name: "negative infinity", in: "timestamp,value\n2014-01-01 00:00:00,-inf\n", wantErr: "not a finite number"},
		{name: "bad time", in: "timestamp,value\nyesterday,1\n", wantErr: "unrecognised timestamp"},
		{name: "ragged row", in: "timestamp,value\n2014-01-01 00:00:00,1,2\n", wantErr: "line 2"},
		{name: "bad holiday flag", in: "pickup_dt,borough,pickups,hday\n1/1/2015 1:00,Bronx,1,maybe\n", wantErr: "yes/no"},
		// (timestamp,a,b,c is a wide table: TestReadTableWide.)
		{name: "no value column", in: "timestamp,location,b,c\n2014-01-01 00:00:00,x,2,3\n", wantErr: "value column"},
		{name: "empty", in: "", wantErr: "empty input"},
		{name: "header only", in: "timestamp,value\n", wantErr: "no data rows"},
		{name: "four columns headerless", in: "2014-01-01 00:00:00,a,1,2\n", wantErr: "without a header"},
		{name: "empty location", in: "2014-01-01 00:00:00,,1\n", wantErr: "empty location"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := ReadTable(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrBadInput) {
					t.Fatalf("error %v, want ErrBadInput mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tb.HasLocation != tc.hasLoc || len(tb.Records) != tc.records || strings.Join(tb.CovNames, ",") != strings.Join(tc.covs, ",") {
				t.Fatalf("table %+v", tb)
			}
			r := tb.Records[0]
			if r.Value != tc.firstValue || r.Location != tc.firstLoc || r.Holiday != tc.firstHolday {
				t.Fatalf("first record %+v", r)
			}
		})
	}
}

func TestTableSeries(t *testing.T) {
	// 30-minute counts from 00:30: the first hour is partial and dropped,
	// 03:00 is missing entirely and gets interpolated, unobserved.
	in := "timestamp,value\n" +
		"2014-01-01 00:30:00,1\n" +
		"2014-01-01 01:00:00,2\n2014-01-01 01:30:00,3\n" +
		"2014-01-01 02:00:00,4\n2014-01-01 02:30:00,4\n" +
		"2014-01-01 04:00:00,6\n2014-01-01 04:30:00,6\n" +
		"2014-01-01 05:00:00,1\n"
	ss, err := LoadSeries(strings.NewReader(in), SeriesOptions{Step: time.Hour, Agg: AggSum})
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	want := []float64{5, 8, 10, 12}
	wantObs := []bool{true, true, false, true}
	if !s.Start.Equal(time.Date(2014, 1, 1, 1, 0, 0, 0, time.UTC)) || s.Len() != len(want) {
		t.Fatalf("series start %v len %d: %v", s.Start, s.Len(), s.Values)
	}
	for i := range want {
		if s.Values[i] != want[i] || s.Observed[i] != wantObs[i] {
			t.Fatalf("bucket %d: %v (observed %v), want %v (%v)", i, s.Values[i], s.Observed[i], want[i], wantObs[i])
		}
	}
	// Mean aggregation of a gauge.
	ss, err = LoadSeries(strings.NewReader(in), SeriesOptions{Step: time.Hour, Agg: AggMean})
	if err != nil {
		t.Fatal(err)
	}
	if ss[0].Values[0] != 2.5 {
		t.Fatalf("mean of 2 and 3 = %v", ss[0].Values[0])
	}
	// A finer step than the data's is an error.
	if _, err := LoadSeries(strings.NewReader(in), SeriesOptions{Step: time.Minute}); !errors.Is(err, ErrBadInput) {
		t.Fatalf("finer step: %v", err)
	}
}

func TestTableSeriesLocations(t *testing.T) {
	// A location missing at a timestamp others report is a zero count.
	in := "2015-01-01 00:00,a,1\n2015-01-01 00:00,b,2\n2015-01-01 01:00,a,3\n2015-01-01 02:00,a,4\n2015-01-01 02:00,b,5\n"
	ss, err := LoadSeries(strings.NewReader(in), SeriesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 || ss[1].Name != "b" {
		t.Fatalf("locations %v", ss)
	}
	if got := ss[1].Values; got[0] != 2 || got[1] != 0 || got[2] != 5 || !ss[1].Observed[1] {
		t.Fatalf("b = %v observed %v", got, ss[1].Observed)
	}
}

func TestReadEvents(t *testing.T) {
	ev, err := ReadEvents(strings.NewReader("# comment\nstart,end,name,kind\n2014-11-27,2014-11-27,Thanksgiving,Holiday\n2015-01-26 12:00,2015-01-28 00:00,Blizzard,storm,Manhattan\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 2 || ev[0].Kind != "holiday" || !ev[0].End.Equal(ev[0].Start.Add(24*time.Hour)) || ev[1].Region != "Manhattan" {
		t.Fatalf("events %+v", ev)
	}
	cal, err := NewCalendar(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at              string
		region          string
		holiday, stormy bool
	}{
		{"2014-11-27 13:00", "", true, false},
		{"2014-11-28 00:00", "", false, false},
		{"2015-01-27 08:00", "Manhattan", false, true},
		{"2015-01-27 08:00", "Queens", false, false},
		{"2015-01-26 11:59", "Manhattan", false, false},
	} {
		tm, _ := ParseTime(tc.at)
		if cal.Holiday(tm, tc.region) != tc.holiday || cal.Active(tm, tc.region, "storm") != tc.stormy {
			t.Errorf("%s %s: holiday %v storm %v", tc.at, tc.region, cal.Holiday(tm, tc.region), cal.Active(tm, tc.region, "storm"))
		}
	}
	for _, bad := range []string{"2014-01-02,2014-01-01,x,holiday\n", "2014-01-01,2014-01-01,x\n", "2014-01-01,2014-01-01,x,\n", "soon,2014-01-01,x,y\n"} {
		if _, err := ReadEvents(strings.NewReader(bad)); !errors.Is(err, ErrBadInput) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestCovariates(t *testing.T) {
	c := NewCovariates(time.Hour)
	if err := c.ReadCSV(strings.NewReader("timestamp,region,temp,rain\n2015-01-01 00:00,,1,0\n2015-01-01 02:00,Bronx,5,\n")); err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time { tm, _ := ParseTime(s); return tm }
	for _, tc := range []struct {
		name, region, at string
		want             float64
		ok               bool
	}{
		{"temp", "", "2015-01-01 00:30", 1, true},
		{"temp", "Queens", "2015-01-01 03:00", 1, true}, // falls back to global, persisted
		{"temp", "Bronx", "2015-01-01 02:00", 5, true},
		{"rain", "Bronx", "2015-01-01 02:00", 0, true},
		{"temp", "", "2014-12-31 23:00", 0, false},
	} {
		v, ok := c.At(tc.name, tc.region, at(tc.at))
		if v != tc.want || ok != tc.ok {
			t.Errorf("%s/%s at %s = %v %v", tc.name, tc.region, tc.at, v, ok)
		}
	}
	if err := c.Set("temp", "", at("2015-01-01 00:00"), math.NaN()); !errors.Is(err, ErrBadInput) {
		t.Fatalf("NaN accepted: %v", err)
	}
	before := len(c.Names())
	if err := c.ReadCSV(strings.NewReader("timestamp,wind\n2015-01-01 00:00,3\n2015-01-01 01:00,x\n")); !errors.Is(err, ErrBadInput) {
		t.Fatalf("bad covariate file: %v", err)
	}
	if len(c.Names()) != before {
		t.Fatalf("a rejected file changed the feeds: %v", c.Names())
	}
	// A value under a nameless header column is refused before any of the
	// file applies (the fuzzer found it half-applied: the named column
	// first, then Set refused the empty name); a trailing comma in the
	// header is fine while its column stays empty.
	if err := c.ReadCSV(strings.NewReader("timestamp,gust,\n2015-01-01 00:00,3,4\n")); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "column 3") {
		t.Fatalf("value in a nameless column: %v", err)
	}
	if len(c.Names()) != before {
		t.Fatalf("a rejected file changed the feeds: %v", c.Names())
	}
	if err := c.ReadCSV(strings.NewReader("timestamp,gust,\n2015-01-01 00:00,3,\n")); err != nil || !slices.Contains(c.Names(), "gust") {
		t.Fatalf("trailing comma in the header: %v, names %v", err, c.Names())
	}
}

// FuzzReadTable: the parser never panics, and what it accepts is finite
// and becomes series with consistent lengths.
func FuzzReadTable(f *testing.F) {
	f.Add("timestamp,value\n2014-02-14 14:30:00,1.732\n2014-02-14 14:35:00,2\n")
	f.Add("pickup_dt,borough,pickups,temp_F,hday\n1/1/2015 1:00,Bronx,152,30,Y\n1/1/2015 2:00,Bronx,1,29,N\n")
	f.Add("2015-01-01 01:00,Bronx,3\n2015-01-01 02:00,Queens,4\n")
	f.Add("\"ds\",\"y\"\n\"2007-12-10\",9.59\n\"2007-12-12\",8\n")
	f.Add("\ufefftimestamp;value\r\n2014-02-14 14:30:00;1\r\n2014-02-14 14:30:00;1\r\n2014-02-14 15:30:00;2\r\n")
	f.Add("timestamp,value,host,temp\n2014-02-14T14:30:00+02:00,1,web,3\n2014-02-14T15:30:00+02:00,1,db,\n")
	f.Add(",timestamp,location,value\n0,2014-02-14 14:30:00,eu,1\n1,2014-02-14 15:30:00,eu,2\n")
	f.Add("Unnamed: 0;timestamp;value;\n0;2014-02-14 14:30:00;1;\n1;2014-02-14 15:30:00;2;\n")
	f.Add("Datum;Wert;temp\r31.01.2024 23:00;0,5;-1,5\r01.02.2024 00:00;1,25;\r")
	f.Add("timestamp,value,zone\n2024-01-01 00:00,5,1\n2024-01-01 01:00,7,1\n2024-01-01 00:00,6,2\n")
	f.Add("ds,location_4,location_41\n2023-04-01 00:00:00,903,975\n2023-04-01 01:00:00,,975\n")
	f.Add("time;EU;US;note\n2024-01-01 00:00;1;2,5;ok\n2024-01-01 01:00;4;;\n")
	f.Fuzz(func(t *testing.T, in string) {
		tb, err := ReadTable(strings.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("error without ErrBadInput: %v", err)
			}
			return
		}
		for _, r := range tb.Records {
			if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) || len(r.Covs) != len(tb.CovNames) {
				t.Fatalf("accepted bad record %+v", r)
			}
		}
		if d, _ := tb.DropDuplicates(); d > len(tb.Records)+d-1 {
			t.Fatalf("dropped %d of %d rows", d, len(tb.Records)+d)
		}
		if d, _ := tb.DropDuplicates(); d != 0 {
			t.Fatalf("a second pass dropped %d more", d)
		}
		ss, err := tb.Series(SeriesOptions{Step: time.Hour})
		if err != nil {
			return
		}
		for _, s := range ss {
			if len(s.Observed) != s.Len() {
				t.Fatal("observed mask length")
			}
			for _, v := range s.Values {
				if math.IsNaN(v) {
					t.Fatal("NaN left in a series")
				}
			}
		}
	})
}

func FuzzReadEvents(f *testing.F) {
	f.Add("start,end,name,kind\n2014-11-27,2014-11-27,Thanksgiving,holiday\n")
	f.Add("2015-01-26 12:00,2015-01-28 00:00,Blizzard,storm,Manhattan\n")
	f.Fuzz(func(t *testing.T, in string) {
		ev, err := ReadEvents(strings.NewReader(in))
		if err != nil {
			return
		}
		cal, err := NewCalendar(ev)
		if err != nil {
			t.Fatalf("parsed events rejected by the calendar: %v", err)
		}
		for _, e := range ev {
			_ = cal.Holiday(e.Start, e.Region)
		}
	})
}

func FuzzReadCovariates(f *testing.F) {
	f.Add("timestamp,region,temp,rain\n2015-01-01 00:00,,1,0\n2015-01-01 02:00,Bronx,5,\n")
	f.Add("timestamp,wind\n2015-01-01 00:00,3\n")
	f.Fuzz(func(t *testing.T, in string) {
		c := NewCovariates(time.Hour)
		if err := c.ReadCSV(strings.NewReader(in)); err != nil {
			if len(c.Names()) != 0 {
				t.Fatal("a rejected file left covariates behind")
			}
		}
	})
}

// TestParseTimeForms: every accepted form (zoneless times as UTC wall
// clock, offsets as instants); Unix
// times by magnitude; junk refused.
func TestParseTimeForms(t *testing.T) {
	want := time.Date(2023, 1, 2, 10, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2023-01-02 10:30:00", want},
		{"2023-01-02 10:30", want},
		{"2023-01-02T10:30:00", want},
		{"2023-01-02T10:30:00Z", want},
		{"2023-01-02T12:30:00+02:00", want}, // an instant, in UTC
		{"2023-01-02 05:30:00-05:00", want},
		{"2023-01-02T12:30:00.000+02:00", want},
		{"1/2/2023 10:30", want},
		{"2023-01-02", time.Date(2023, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"1672655400", want},       // Unix seconds
		{"1672655400000", want},    // milliseconds
		{"1672655400000000", want}, // microseconds
		{"1672655400.5", want.Add(500 * time.Millisecond)},
		{"7", time.Unix(7, 0).UTC()}, // a bucket number (see SeriesOptions.IndexStep)
	} {
		got, err := ParseTime(tc.in)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "soon", "-5", "1e9", "12:00", "2023-13-01", "1.2.3", "NaN"} {
		if _, err := ParseTime(bad); !errors.Is(err, ErrBadInput) {
			t.Errorf("ParseTime(%q): %v, want ErrBadInput", bad, err)
		}
	}
}

// TestIndexStep: a time column counting buckets becomes a series of that
// step; a fractional or negative bucket number is refused.
func TestIndexStep(t *testing.T) {
	in := "timestamp,value\n1,10\n2,11\n3,12\n5,14\n"
	ss, err := LoadSeries(strings.NewReader(in), SeriesOptions{IndexStep: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if s.Step != time.Hour || !s.Start.Equal(time.Unix(3600, 0)) || s.Len() != 5 || s.Values[4] != 14 {
		t.Fatalf("series step %v start %v len %d values %v", s.Step, s.Start, s.Len(), s.Values)
	}
	for _, bad := range []string{"timestamp,value\n1.5,10\n2,11\n", "timestamp,value\n99999999999999,1\n1,2\n"} {
		if _, err := LoadSeries(strings.NewReader(bad), SeriesOptions{IndexStep: 24 * time.Hour}); !errors.Is(err, ErrBadInput) {
			t.Errorf("%q: %v, want ErrBadInput", bad, err)
		}
	}
}

// TestFeedsSpreadsheetExports: the events and covariates files are read
// like the tables: a byte-order mark, semicolons (a comment line's own
// punctuation not taken for the separator), CR-only line ends, a decimal
// comma in a covariate; UTF-16 is refused by name.
func TestFeedsSpreadsheetExports(t *testing.T) {
	ev, err := ReadEvents(strings.NewReader("\ufeff# NYC; public sources, 2014\nstart;end;name;kind\r\n2014-11-27;2014-11-27;Thanksgiving;holiday\r\n"))
	if err != nil || len(ev) != 1 || ev[0].Name != "Thanksgiving" {
		t.Fatalf("events: %+v, %v", ev, err)
	}
	if ev, err := ReadEvents(strings.NewReader("start,end,name,kind\r2014-11-27,2014-11-27,Thanksgiving,holiday\r")); err != nil || len(ev) != 1 {
		t.Fatalf("CR-only events: %+v, %v", ev, err)
	}
	c := NewCovariates(time.Hour)
	if err := c.ReadCSV(strings.NewReader("\ufefftimestamp;temp\n2015-01-01 00:00;-1,5\n")); err != nil {
		t.Fatal(err)
	}
	if v, ok := c.At("temp", "", time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC)); !ok || v != -1.5 {
		t.Fatalf("temp = %v %v, want -1.5", v, ok)
	}
	for _, read := range []func() error{
		func() error { _, err := ReadEvents(strings.NewReader("\xff\xfes\x00")); return err },
		func() error { return NewCovariates(time.Hour).ReadCSV(strings.NewReader("\xff\xfet\x00")) },
	} {
		if err := read(); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "UTF-16") {
			t.Errorf("UTF-16: %v", err)
		}
	}
}
