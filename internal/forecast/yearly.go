package forecast

import (
	"math"
	"time"
)

// Yearly memory. The regression's window (four weeks) cannot see a yearly
// season, and holding a year of buckets per series would cost 8,760 values
// for an hourly one. The model keeps instead a ring of daily means over two
// years and a bit (about 3 KiB per series), from which the change in level
// between the origin's day and the target's day a year before (and two
// years before) is read: Prophet's yearly season, without its Fourier
// fit, as an expert of the combination (pool.go) that sleeps until a year
// of history has arrived.
const (
	// yrLag is a year in days, rounded to whole weeks so the same
	// weekdays line up.
	yrLag = 364
	// yrYears: how many past years are averaged.
	yrYears = 2
	// yrHalf: the level of a day is the mean of the days yrHalf either side
	// (a week centred on it, which also evens out the weekly cycle).
	yrHalf = 7
	// yrMinDays: days of the centred week that must be known.
	yrMinDays = 8
	// yrRing holds the oldest day ever read: two years and a half week
	// before the origin's day.
	yrRing = yrYears*yrLag + yrHalf + 8
)

// yearly is the ring of daily means behind the yearly expert.
type yearly struct {
	ring     []float32 // yrRing daily means; NaN: unknown day
	day      int64     // day number of the day being accumulated (-1: none yet)
	sum, cnt float64   // its sum and count so far
	last     int64     // last day stored in ring (-1: none)
}

func newYearly() *yearly {
	y := &yearly{ring: make([]float32, yrRing), day: -1, last: -1}
	for i := range y.ring {
		y.ring[i] = float32(math.NaN())
	}
	return y
}

// dayOf is the UTC day number of t.
func dayOf(t time.Time) int64 {
	u := t.Unix()
	if u < 0 {
		return (u - 86399) / 86400
	}
	return u / 86400
}

// add records the value v of the bucket starting at t (known says whether
// the bucket's value is known); days pass as buckets of a new day arrive.
func (y *yearly) add(t time.Time, v float64, known bool) {
	d := dayOf(t)
	if d < 0 {
		return // before 1970: no yearly memory (the ring is indexed by day number)
	}
	if d != y.day {
		y.flush()
		y.day, y.sum, y.cnt = d, 0, 0
	}
	if known {
		y.sum += v
		y.cnt++
	}
}

// flush stores the day being accumulated (days skipped since the last
// stored one become unknown).
func (y *yearly) flush() {
	if y.day < 0 {
		return
	}
	for d := max(y.last+1, y.day-yrRing+1); d < y.day; d++ {
		y.ring[d%yrRing] = float32(math.NaN())
	}
	v := math.NaN()
	if y.cnt > 0 {
		v = y.sum / y.cnt
	}
	y.ring[y.day%yrRing] = float32(v)
	y.last = y.day
}

// level is the mean of the known daily means in the week centred on day
// d, if enough of them are stored.
func (y *yearly) level(d int64) (float64, bool) {
	if d-yrHalf <= y.last-yrRing || d+yrHalf > y.last || d-yrHalf < 0 {
		return 0, false
	}
	s, n := 0.0, 0
	for i := d - yrHalf; i <= d+yrHalf; i++ {
		if v := float64(y.ring[i%yrRing]); !math.IsNaN(v) {
			s += v
			n++
		}
	}
	if n < yrMinDays {
		return 0, false
	}
	return s / float64(n), true
}

// delta is the change of level from the origin's day to the target's day
// in the past years, averaged over the years that have both; false while
// no year has.
func (y *yearly) delta(origin, target time.Time) (float64, bool) {
	do, dt := dayOf(origin), dayOf(target)
	s, n := 0.0, 0
	for k := int64(1); k <= yrYears; k++ {
		a, okA := y.level(dt - k*yrLag)
		b, okB := y.level(do - k*yrLag)
		if okA && okB {
			s += a - b
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return s / float64(n), true
}

func (y *yearly) encode(e *enc) {
	e.f32s(y.ring)
	e.i64(y.day)
	e.f64(y.sum)
	e.f64(y.cnt)
	e.i64(y.last)
}

func (y *yearly) decode(d *dec) {
	d.f32sInto(y.ring, "daily means")
	y.day = d.i64()
	y.sum = d.f64()
	y.cnt = d.f64()
	y.last = d.i64()
	if y.day < -1 || y.last < -1 || y.last > y.day || !(y.cnt >= 0) || math.IsInf(y.cnt, 0) || math.IsInf(y.sum, 0) || math.IsNaN(y.sum) {
		d.fail("yearly memory")
	}
	for _, v := range y.ring {
		if math.IsInf(float64(v), 0) {
			d.fail("yearly memory: infinite daily mean")
			return
		}
	}
}

// anomaly is the target's day's deviation from the level of its week in
// the past years (a day that stood out a year before: a recurring
// event), averaged over the years that have it.
func (y *yearly) anomaly(target time.Time) (float64, bool) {
	dt := dayOf(target)
	s, n := 0.0, 0
	for k := int64(1); k <= yrYears; k++ {
		d := dt - k*yrLag
		a, ok := y.level(d)
		if !ok {
			continue
		}
		if v := float64(y.ring[d%yrRing]); !math.IsNaN(v) {
			s += v - a
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return s / float64(n), true
}
