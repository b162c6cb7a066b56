package accesslog

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestTimeFormats(t *testing.T) {
	paris := loadParis(t)
	const at = "2015-05-17 10:05:03" // UTC, unless the case says otherwise
	for _, tc := range []struct {
		name, spec, field string
		loc               *time.Location
		want              string // UTC, time.DateTime with optional fraction; "" = bad_time
	}{
		{"clf layout in brackets", `[%{%d/%b/%Y:%H:%M:%S %z}t]`, `[17/May/2015:12:05:03 +0200]`, nil, at},
		{"negative zone", `%{%d/%b/%Y:%H:%M:%S %z}t`, `17/May/2015:05:35:03 -0430`, nil, at},
		{"begin prefix", `[%{begin:%d/%b/%Y:%H:%M:%S %z}t]`, `[17/May/2015:10:05:03 +0000]`, nil, at},
		{"end prefix", `[%{end:%d/%b/%Y:%H:%M:%S %z}t]`, `[17/May/2015:10:05:03 +0000]`, nil, at},
		{"iso-like F T", `%{%F %T}t`, `2015-05-17 10:05:03`, nil, at},
		{"zoneless in a location", `%{%F %T}t`, `2015-05-17 12:05:03`, paris, at},
		{"zoneless in a location, winter", `%{%F %T}t`, `2015-01-17 11:05:03`, paris, "2015-01-17 10:05:03"},
		{"compact iso with z", `%{%Y%m%dT%H%M%S%z}t`, `20150517T100503+0000`, nil, at},
		{"D and R (minute resolution)", `%{%D %R}t`, `05/17/15 10:05`, nil, "2015-05-17 10:05:00"},
		{"y 69 is 1969", `%{%D %T}t`, `12/31/69 23:59:59`, nil, "1969-12-31 23:59:59"},
		{"e space padded", `%{%b %e %T %Y}t`, `May  7 10:05:03 2015`, nil, "2015-05-07 10:05:03"},
		{"e two digits", `%{%b %e %T %Y}t`, `May 17 10:05:03 2015`, nil, at},
		{"k space padded", `%{%F %k:%M:%S}t`, `2015-05-17  9:05:03`, nil, "2015-05-17 09:05:03"},
		{"http date with Z", `%{%a, %d %b %Y %T %Z}t`, `Sun, 17 May 2015 10:05:03 GMT`, nil, at},
		{"long names", `%{%A %d %B %Y %T}t`, `Sunday 17 September 2015 10:05:03`, nil, "2015-09-17 10:05:03"},
		{"Z UTC beats location", `%{%F %T %Z}t`, `2015-05-17 10:05:03 UTC`, nil, at},
		{"day of year", `%{%Y-%j %T}t`, `2016-366 23:00:00`, nil, "2016-12-31 23:00:00"},
		{"12-hour clock pm", `%{%F %I:%M:%S %p}t`, `2015-05-17 10:05:03 PM`, nil, "2015-05-17 22:05:03"},
		{"12-hour clock midnight", `%{%F %I:%M:%S %p}t`, `2015-05-17 12:05:03 AM`, nil, "2015-05-17 00:05:03"},
		{"percent and tab literals", `%{%F%%%t%T}t`, "2015-05-17%\t10:05:03", nil, at},
		{"s epoch", `%{%s}t`, `1431857103`, nil, at},
		{"sec", `%{sec}t`, `1431857103`, nil, at},
		{"msec", `%{msec}t`, `1431857103123`, nil, at + ".123"},
		{"usec", `%{end:usec}t`, `1431857103123456`, nil, at + ".123456"},
		{"sec with msec_frac", `%{sec}t.%{msec_frac}t`, `1431857103.042`, nil, at + ".042"},
		{"apache doc example", `%{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t`, `17/May/2015 12:05:03.123 +0200`, nil, at + ".123"},
		{"usec_frac refines %t", `%t %{usec_frac}t`, `[17/May/2015:10:05:03 +0000] 000007`, nil, at + ".000007"},
		{"nginx msec", `$msec`, `1431857103.123`, nil, at + ".123"},
		{"nginx msec short fraction", `$msec`, `1431857103.5`, nil, at + ".5"},

		{"bad month", `[%{%d/%b/%Y:%H:%M:%S %z}t]`, `[17/Mai/2015:10:05:03 +0000]`, nil, ""},
		{"feb 30", `%{%F %T}t`, `2015-02-30 10:05:03`, nil, ""},
		{"hour 24", `%{%F %T}t`, `2015-05-17 24:05:03`, nil, ""},
		{"second 60", `%{%F %T}t`, `2015-05-17 10:05:60`, nil, ""},
		{"one-digit day", `%{%F %T}t`, `2015-05-7 10:05:03`, nil, ""},
		{"zone name not utc", `%{%F %T %Z}t`, `2015-05-17 10:05:03 CET`, nil, ""},
		{"zone without sign", `%{%F %T %z}t`, `2015-05-17 10:05:03 0200`, nil, ""},
		{"day 366 of 2015", `%{%Y-%j %T}t`, `2015-366 10:05:03`, nil, ""},
		{"wrong weekday name", `%{%a, %d %b %Y %T %Z}t`, `Xyz, 17 May 2015 10:05:03 GMT`, nil, ""},
		{"pm missing", `%{%F %I:%M:%S %p}t`, `2015-05-17 10:05:03 XM`, nil, ""},
		{"epoch not a number", `%{sec}t`, `14318x7103`, nil, ""},
		{"epoch too long", `%{sec}t`, `143185710312345`, nil, ""},
		{"msec_frac short", `%{sec}t.%{msec_frac}t`, `1431857103.42`, nil, ""},
		{"nginx msec no dot", `$msec`, `1431857103`, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFormat(t, `%h `+tc.spec+` %>s`)
			if tc.loc != nil {
				var err error
				if f, err = f.InLocation(tc.loc); err != nil {
					t.Fatal(err)
				}
			}
			var rec Record
			r := f.ParseLine([]byte(`192.0.2.1 `+tc.field+` 200`), &rec)
			if tc.want == "" {
				if r != ReasonBadTime {
					t.Fatalf("reason %s (time %v), want bad_time", r, rec.Time)
				}
				return
			}
			want, err := time.Parse("2006-01-02 15:04:05.999999999", tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if r != ReasonNone || !rec.Time.Equal(want) || rec.Time.Location() != time.UTC || rec.Status != 200 {
				t.Fatalf("reason %s time %v status %d, want %v", r, rec.Time, rec.Status, want)
			}
		})
	}
}

// TestTimeFieldInQuotes: a quoted time field ends at the quote and its
// layout must take all of it.
func TestTimeFieldInQuotes(t *testing.T) {
	f := mustFormat(t, `%h "%{%F %T}t" %>s`)
	var rec Record
	if r := f.ParseLine([]byte(`192.0.2.1 "2015-05-17 10:05:03" 200`), &rec); r != ReasonNone || rec.Time.Unix() != 1431857103 {
		t.Fatalf("%s %v", r, rec.Time)
	}
	if r := f.ParseLine([]byte(`192.0.2.1 "2015-05-17 10:05:03x" 200`), &rec); r != ReasonBadTime {
		t.Fatalf("extra text in quotes: %s", r)
	}
}

func TestTimeFormatErrors(t *testing.T) {
	for _, tc := range []struct{ spec, msg string }{
		{`%h %{%Q}t`, "%{%Q}t: unsupported time conversion %Q"},
		{`%h %{%c}t`, "unsupported time conversion %c"},
		{`%h %{%F %T%}t`, "lone %"},
		{`%h %{}t`, "empty time format"},
		{`%h %{begin:}t`, "empty time format"},
		{`%h %{hello}t`, "no conversion"},
		{`%h %{%F %T %Y}t`, "gives the year twice"},
		{`%h %{%F}t %{%F %T}t`, "two timestamp fields: %{%F}t and %{%F %T}t both give the year"},
		{`%h %t %{sec}t`, "two timestamp fields"},
		{`%h %t %{%j}t`, "two timestamp fields"},
		{`%h %t $time_local`, "two timestamp fields: %t and $time_local both give the year"},
		{`%h %{sec}t %{msec}t`, "both give the epoch time"},
		{`%h %{msec}t.%{msec_frac}t`, "both give the fraction of a second"},
		{`%h %{%s %Y}t`, "both an epoch time and the year"},
		{`%h %{%m-%d %T}t`, "give no year"},
		{`%h %{%Y-%m %T}t`, "give no day"},
		{`%h %{%Y-%j-%d %T}t`, "day of the year"},
		{`%h %{%F %M:%S}t`, "no hour"},
		{`%h %{%F %H}t`, "no minute"},
		{`%h %{%F %I:%M}t`, "needs AM/PM"},
		{`%h %{%F %H %I:%M %p}t`, "both a 24-hour"},
		{`%h %{msec_frac}t`, "no timestamp field"},
	} {
		_, err := ParseFormat(tc.spec)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: got %v, want ErrFormat containing %q", tc.spec, err, tc.msg)
		}
	}
}

func TestInLocation(t *testing.T) {
	paris := loadParis(t)
	for _, spec := range []string{"combined", `%h %{%F %T %z}t`, `%h %{sec}t`, `$remote_addr $msec`, `$remote_addr $time_iso8601`} {
		f := mustFormat(t, spec)
		if f.Zoneless() {
			t.Errorf("%s: zoneless", spec)
		}
		if _, err := f.InLocation(paris); err == nil || !strings.Contains(err.Error(), "carries its own zone") {
			t.Errorf("%s: %v", spec, err)
		}
	}
	f := mustFormat(t, `%h %{%F %T}t`)
	g, err := f.InLocation(paris)
	if err != nil || !f.Zoneless() {
		t.Fatal(err)
	}
	var a, b Record
	line := []byte(`192.0.2.1 2015-05-17 10:05:03`)
	if f.ParseLine(line, &a) != ReasonNone || g.ParseLine(line, &b) != ReasonNone || a.Time.Sub(b.Time) != 2*time.Hour {
		t.Fatalf("UTC %v, Paris %v", a.Time, b.Time)
	}
}

// strftimeOracle pairs layouts with the time.Parse layout that reads the
// same text, for checkStrftime.
var strftimeOracle = []struct{ spec, layout string }{
	{`%d/%b/%Y:%H:%M:%S %z`, "02/Jan/2006:15:04:05 -0700"},
	{`%F %T`, time.DateTime},
	{`%a, %d %b %Y %T %Z`, "Mon, 02 Jan 2006 15:04:05 MST"},
	{`%Y%m%dT%H%M%S%z`, "20060102T150405-0700"},
	{`%A %B %e %I:%M:%S %p %Y`, "Monday January _2 03:04:05 PM 2006"},
}

// ampm finds an AM/PM marker in any case.
var ampm = regexp.MustCompile(`(?i)\b[ap]m\b`)

// checkStrftime compares the compiled layout with time.Parse on s: what
// both accept must be the same instant; what we refuse, time.Parse must
// refuse too or accept only in a non-canonical spelling.
func checkStrftime(t *testing.T, which int, s string) {
	o := strftimeOracle[which%len(strftimeOracle)]
	f := mustFormat(t, `%h [%{`+o.spec+`}t]`)
	var rec Record
	r := f.ParseLine([]byte(`192.0.2.1 [`+s+`]`), &rec)
	want, err := time.Parse(o.layout, s)
	if err != nil && r == ReasonNone {
		// strptime's %p matches AM and PM in any case, time.Parse only
		// "AM", "am", "PM" and "pm": compare on the marker upper-cased.
		if w, e := time.Parse(o.layout, ampm.ReplaceAllStringFunc(s, strings.ToUpper)); e == nil {
			want, err = w, nil
		}
	}
	if r == ReasonNone && err != nil {
		// time.Parse checks the weekday against the date and knows more
		// zone names; we ignore the weekday and know only UTC and GMT.
		if strings.Contains(err.Error(), "day-of-week") {
			return
		}
		t.Fatalf("%q as %s: accepted (%v), time.Parse refuses: %v", s, o.spec, rec.Time, err)
	}
	if r == ReasonNone && !rec.Time.Equal(want) {
		// time.Parse reads an unknown zone abbreviation as a zero offset
		// in a fabricated zone; we only accept UTC and GMT, which agree.
		t.Fatalf("%q as %s: %v, time.Parse %v", s, o.spec, rec.Time, want)
	}
	if r != ReasonNone && err == nil && want.Format(o.layout) == s {
		if zone, _ := want.Zone(); o.layout == "Mon, 02 Jan 2006 15:04:05 MST" && zone != "UTC" && zone != "GMT" {
			return // a zone name we refuse by design
		}
		if strings.HasPrefix(o.layout, "02/Jan") || strings.HasPrefix(o.layout, "2006") {
			if _, off := want.Zone(); off/3600 > 23 || off/3600 < -23 {
				return
			}
		}
		if want.Year() < 1000 {
			return // %Y reads four digits
		}
		if want.Before(minTime) || want.After(maxTime) {
			return // refused by design: no int64 nanoseconds since 1970 (ParseLine)
		}
		t.Fatalf("%q as %s: refused (%s), time.Parse accepts %v", s, o.spec, r, want)
	}
}

func TestStrftimeMatchesTimeParse(t *testing.T) {
	for i, s := range []string{
		"17/May/2015:10:05:03 +0000", "29/Feb/2023:00:00:00 +0000", "31/Dec/9999:23:59:59 +1400",
		"2015-05-17 10:05:03", "2015-02-29 10:05:03", "2016-02-29 00:00:00",
		"Sun, 17 May 2015 10:05:03 GMT", "Sun, 17 May 2015 10:05:03 UTC", "Sun, 17 May 2015 10:05:03 CET",
		"20150517T100503+0530", "20150517T100503-0000",
		"Sunday May 17 10:05:03 PM 2015", "Sunday May  7 12:00:00 AM 2015",
	} {
		checkStrftime(t, []int{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4}[i], s)
	}
}

func FuzzStrftime(f *testing.F) {
	f.Add(uint8(0), "17/May/2015:10:05:03 +0000")
	f.Add(uint8(1), "2015-05-17 10:05:03")
	f.Add(uint8(2), "Sun, 17 May 2015 10:05:03 GMT")
	f.Add(uint8(3), "20150517T100503+0530")
	f.Add(uint8(4), "Sunday May  7 12:00:00 AM 2015")
	f.Add(uint8(4), "Sunday May 17 01:00:00 Am 2015") // strptime's %p ignores case
	f.Fuzz(func(t *testing.T, which uint8, s string) { checkStrftime(t, int(which), s) })
}

// loadParis returns Europe/Paris, or skips when the zone database is absent.
func loadParis(t testing.TB) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Skipf("tzdata: %v", err)
	}
	return loc
}
