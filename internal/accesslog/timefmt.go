package accesslog

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// timePart is one component of a timestamp. Each time field of a format
// gives some parts; a format gives each part at most once, so several
// fields can build one time (Apache's "%{%d/%b/%Y %T}t.%{msec_frac}t
// %{%z}t") but never two.
type timePart uint16

const (
	partYear timePart = 1 << iota
	partMonth
	partDay
	partYearDay
	partHour
	partHour12
	partAMPM
	partMinute
	partSecond
	partZone
	partEpoch
	partFrac
	numTimeParts = iota
)

var timePartNames = [numTimeParts]string{"year", "month", "day", "day of the year", "hour", "12-hour clock hour",
	"AM/PM", "minute", "second", "time zone", "epoch time", "fraction of a second"}

// partsFull are the parts of the complete timestamps (%t, $time_local,
// $time_iso8601), which the parser reads without a layout.
const partsFull = partYear | partMonth | partDay | partHour | partMinute | partSecond | partZone

// partsCalendar are the parts an epoch time excludes.
const partsCalendar = partYear | partMonth | partDay | partYearDay | partHour | partHour12 | partAMPM | partMinute | partSecond

// timeOp is one step of a compiled time layout: literal text (conv 0) or
// one conversion.
type timeOp struct {
	conv   byte   // strftime letter, or 'E' epoch, 'f' fraction, 'N' Nginx $msec
	lit    []byte // conv 0
	digits int    // 'E': decimal places of the epoch unit (0 s, 3 ms, 6 µs); 'f': digits
}

// timeLayout is a compiled time field: a strftime format, or one of
// Apache's epoch and fraction forms. It parses without allocating.
type timeLayout struct {
	ops   []timeOp
	parts timePart
}

// timeParts collects what a line's time fields gave.
type timeParts struct {
	year, month, day, yday, hour, min, sec int
	pm                                     bool
	offset                                 int // seconds east of UTC (partZone)
	epoch                                  int64
	frac                                   int // nanoseconds
}

// compileApacheTime compiles the argument of %{…}t (name is the
// directive, for messages).
func compileApacheTime(name, arg string) (*timeLayout, error) {
	// begin: and end: choose the moment Apache stamps; both are the
	// request's time for counting.
	arg = strings.TrimPrefix(strings.TrimPrefix(arg, "begin:"), "end:")
	tl := &timeLayout{}
	switch arg {
	case "sec":
		return tl, tl.add(name, timeOp{conv: 'E'}, partEpoch)
	case "msec":
		return tl, tl.add(name, timeOp{conv: 'E', digits: 3}, partEpoch|partFrac)
	case "usec":
		return tl, tl.add(name, timeOp{conv: 'E', digits: 6}, partEpoch|partFrac)
	case "msec_frac":
		return tl, tl.add(name, timeOp{conv: 'f', digits: 3}, partFrac)
	case "usec_frac":
		return tl, tl.add(name, timeOp{conv: 'f', digits: 6}, partFrac)
	case "":
		return nil, fmt.Errorf("%w: %s: empty time format", ErrFormat, name)
	}
	if err := tl.strftime(name, arg); err != nil {
		return nil, err
	}
	if tl.parts == 0 {
		return nil, fmt.Errorf("%w: %s: the time format has no conversion", ErrFormat, name)
	}
	return tl, nil
}

// strftime appends the conversions of a strftime(3) format.
func (tl *timeLayout) strftime(name, s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			tl.literal(s[i : i+1])
			continue
		}
		if i+1 == len(s) {
			return fmt.Errorf("%w: %s: the time format ends with a lone %%", ErrFormat, name)
		}
		i++
		c := s[i]
		var part timePart
		switch c {
		case '%':
			tl.literal("%")
			continue
		case 't':
			tl.literal("\t")
			continue
		case 'T', 'F', 'D', 'R': // composites: expand
			exp := map[byte]string{'T': "%H:%M:%S", 'F': "%Y-%m-%d", 'D': "%m/%d/%y", 'R': "%H:%M"}[c]
			if err := tl.strftime(name, exp); err != nil {
				return err
			}
			continue
		case 'Y', 'y':
			part = partYear
		case 'm', 'b', 'h', 'B':
			part = partMonth
		case 'd', 'e':
			part = partDay
		case 'j':
			part = partYearDay
		case 'H', 'k':
			part = partHour
		case 'I':
			part = partHour12
		case 'p':
			part = partAMPM
		case 'M':
			part = partMinute
		case 'S':
			part = partSecond
		case 'z', 'Z':
			part = partZone
		case 's':
			if err := tl.add(name, timeOp{conv: 'E'}, partEpoch); err != nil {
				return err
			}
			continue
		case 'a', 'A': // the weekday: matched, not used
		default:
			return fmt.Errorf("%w: %s: unsupported time conversion %%%c", ErrFormat, name, c)
		}
		if c == 'h' {
			c = 'b'
		}
		if err := tl.add(name, timeOp{conv: c}, part); err != nil {
			return err
		}
	}
	return nil
}

func (tl *timeLayout) add(name string, op timeOp, part timePart) error {
	if dup := tl.parts & part; dup != 0 {
		return fmt.Errorf("%w: %s gives the %s twice", ErrFormat, name, partName(dup))
	}
	tl.parts |= part
	tl.ops = append(tl.ops, op)
	return nil
}

// literal appends text, merged with a literal before it.
func (tl *timeLayout) literal(s string) {
	if n := len(tl.ops); n > 0 && tl.ops[n-1].conv == 0 {
		tl.ops[n-1].lit = append(tl.ops[n-1].lit, s...)
		return
	}
	tl.ops = append(tl.ops, timeOp{lit: []byte(s)})
}

// partName names the lowest part in p.
func partName(p timePart) string {
	if p == 0 {
		return "nothing"
	}
	return timePartNames[bitIndex(p)]
}

// bitIndex is the index of the lowest set bit of p.
func bitIndex(p timePart) int {
	for i := range numTimeParts {
		if p&(1<<i) != 0 {
			return i
		}
	}
	return 0
}

// checkTimeParts says what is wrong with the union of a format's composed
// time fields, or nil when they determine an instant.
func checkTimeParts(p timePart) error {
	switch {
	case p&partEpoch != 0:
		if p&partsCalendar != 0 {
			return fmt.Errorf("both an epoch time and the %s", partName(p&partsCalendar))
		}
		return nil
	case p&partYear == 0:
		return fmt.Errorf("no year")
	case p&partYearDay != 0 && p&(partMonth|partDay) != 0:
		return fmt.Errorf("both a day of the year (%%j) and a month or day")
	case p&partYearDay == 0 && p&(partMonth|partDay) != partMonth|partDay:
		return fmt.Errorf("no %s", partName((partMonth|partDay)&^p))
	case (p&partHour12 != 0) != (p&partAMPM != 0):
		return fmt.Errorf("a 12-hour clock (%%I) needs AM/PM (%%p) and the other way round")
	case p&partHour12 != 0 && p&partHour != 0:
		return fmt.Errorf("both a 24-hour (%%H) and a 12-hour (%%I) hour")
	case p&(partHour|partHour12) == 0:
		return fmt.Errorf("no hour")
	case p&partMinute == 0:
		return fmt.Errorf("no minute")
	}
	return nil
}

// parse reads the layout at the start of b into tp and returns the number
// of bytes it took; the layout itself decides where the field ends.
func (tl *timeLayout) parse(b []byte, tp *timeParts) (int, bool) {
	pos := 0
	for i := range tl.ops {
		op := &tl.ops[i]
		rest := b[pos:]
		n, v := 2, 0
		ok := true
		switch op.conv {
		case 0:
			if !bytes.HasPrefix(rest, op.lit) {
				return 0, false
			}
			pos += len(op.lit)
			continue
		case 'Y':
			n = 4
			v, ok = fixedNum(rest, 4)
			tp.year = v
		case 'y':
			v, ok = fixedNum(rest, 2)
			// POSIX: 69..99 are 1969..1999, 00..68 are 2000..2068.
			tp.year = 2000 + v
			if v >= 69 {
				tp.year = 1900 + v
			}
		case 'm':
			v, ok = fixedNum(rest, 2)
			ok = ok && v >= 1 && v <= 12
			tp.month = v
		case 'b':
			n = 3
			ok = len(rest) >= 3
			if ok {
				v = monthOf(rest[0], rest[1], rest[2])
				ok = v != 0
			}
			tp.month = v
		case 'B':
			n, v = longName(rest, monthNames[:])
			ok = n > 0
			tp.month = v + 1
		case 'a':
			n = 3
			ok = len(rest) >= 3 && nameIndex(rest[:3], dayAbbrevs[:]) >= 0
		case 'A':
			n, _ = longName(rest, dayNames[:])
			ok = n > 0
		case 'd':
			v, ok = fixedNum(rest, 2)
			ok = ok && v >= 1
			tp.day = v
		case 'e':
			v, ok = spaceNum(rest)
			ok = ok && v >= 1
			tp.day = v
		case 'j':
			n = 3
			v, ok = fixedNum(rest, 3)
			ok = ok && v >= 1 && v <= 366
			tp.yday = v
		case 'H', 'k':
			if op.conv == 'H' {
				v, ok = fixedNum(rest, 2)
			} else {
				v, ok = spaceNum(rest)
			}
			ok = ok && v <= 23
			tp.hour = v
		case 'I':
			v, ok = fixedNum(rest, 2)
			ok = ok && v >= 1 && v <= 12
			tp.hour = v
		case 'p':
			ok = len(rest) >= 2 && (rest[1] == 'M' || rest[1] == 'm')
			if ok {
				switch rest[0] {
				case 'P', 'p':
					tp.pm = true
				case 'A', 'a':
					tp.pm = false
				default:
					ok = false
				}
			}
		case 'M':
			v, ok = fixedNum(rest, 2)
			ok = ok && v <= 59
			tp.min = v
		case 'S':
			v, ok = fixedNum(rest, 2)
			ok = ok && v <= 59
			tp.sec = v
		case 'z':
			n = 5
			ok = len(rest) >= 5 && (rest[0] == '+' || rest[0] == '-')
			if ok {
				zh, ok1 := fixedNum(rest[1:], 2)
				zm, ok2 := fixedNum(rest[3:], 2)
				ok = ok1 && ok2 && zh <= 23 && zm <= 59
				tp.offset = zh*3600 + zm*60
				if rest[0] == '-' {
					tp.offset = -tp.offset
				}
			}
		case 'Z':
			// Only the names of UTC itself: any other abbreviation is
			// ambiguous (CST is three zones).
			n = 3
			ok = bytes.HasPrefix(rest, []byte("UTC")) || bytes.HasPrefix(rest, []byte("GMT"))
			tp.offset = 0
		case 'E':
			// Epoch seconds, milliseconds or microseconds; at most 11
			// digits of seconds (year 5138), which keeps the product in
			// int64.
			n = digitRun(rest)
			ok = n >= 1 && n <= 11+op.digits
			if ok {
				e, _ := parseUint(rest[:n])
				unit := pow10[op.digits]
				tp.epoch = e / unit
				tp.frac = int(e%unit) * int(pow10[9-op.digits])
			}
		case 'f':
			n = op.digits
			v, ok = fixedNum(rest, n)
			tp.frac = v * int(pow10[9-n])
		case 'N':
			// Nginx $msec: seconds, a dot, milliseconds (1..9 digits
			// accepted).
			n = digitRun(rest)
			ok = n >= 1 && n <= 11 && n+1 < len(rest) && rest[n] == '.'
			if ok {
				e, _ := parseUint(rest[:n])
				m := digitRun(rest[n+1:])
				ok = m >= 1 && m <= 9
				if ok {
					f, _ := parseUint(rest[n+1 : n+1+m])
					tp.epoch, tp.frac = e, int(f)*int(pow10[9-m])
					n += 1 + m
				}
			}
		}
		if !ok {
			return 0, false
		}
		pos += n
	}
	return pos, true
}

var pow10 = [...]int64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

var (
	monthNames = [...]string{"January", "February", "March", "April", "May", "June", "July", "August",
		"September", "October", "November", "December"}
	dayNames   = [...]string{"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"}
	dayAbbrevs = [...]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
)

// longName matches one of names at the start of b: its length and index,
// or 0 and -1.
func longName(b []byte, names []string) (int, int) {
	for i, nm := range names {
		if len(b) >= len(nm) && string(b[:len(nm)]) == nm {
			return len(nm), i
		}
	}
	return 0, -1
}

func nameIndex(b []byte, names []string) int {
	for i, nm := range names {
		if string(b) == nm {
			return i
		}
	}
	return -1
}

// fixedNum reads exactly n decimal digits at the start of b.
func fixedNum(b []byte, n int) (int, bool) {
	if len(b) < n {
		return 0, false
	}
	v := 0
	for _, c := range b[:n] {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

// spaceNum reads a two-character number padded with a space (%e, %k).
func spaceNum(b []byte) (int, bool) {
	if len(b) >= 2 && b[0] == ' ' {
		v, ok := fixedNum(b[1:], 1)
		return v, ok
	}
	return fixedNum(b, 2)
}

// digitRun is the number of decimal digits at the start of b.
func digitRun(b []byte) int {
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		n++
	}
	return n
}

// composeTime builds the instant a line's time fields gave (f.composed).
func (f *Format) composeTime(tp *timeParts) (time.Time, bool) {
	if f.timeParts&partEpoch != 0 {
		return time.Unix(tp.epoch, int64(tp.frac)).UTC(), true
	}
	mon, day := time.Month(tp.month), tp.day
	if f.timeParts&partYearDay != 0 {
		if tp.yday > 365 && daysIn(time.February, tp.year) == 28 {
			return time.Time{}, false
		}
		mon, day = time.January, tp.yday // time.Date normalises Jan 32 to Feb 1
	} else if day > daysIn(mon, tp.year) {
		return time.Time{}, false
	}
	hour := tp.hour
	if f.timeParts&partHour12 != 0 {
		hour %= 12
		if tp.pm {
			hour += 12
		}
	}
	if f.timeParts&partZone != 0 {
		t := time.Date(tp.year, mon, day, hour, tp.min, tp.sec, tp.frac, time.UTC)
		return t.Add(-time.Duration(tp.offset) * time.Second), true
	}
	loc := f.loc
	if loc == nil {
		loc = time.UTC
	}
	return time.Date(tp.year, mon, day, hour, tp.min, tp.sec, tp.frac, loc).UTC(), true
}
