package forecast

import (
	"math"
	"time"
)

// Feature groups of the long-term regression. Each group has one prior
// variance multiplier, chosen by maximising the model evidence.
const (
	grpIntercept = iota
	grpTrend
	grpDaily
	grpDOW
	grpDayType
	grpHoliday
	numGroups
)

// Design rules (not tuned to any data set; see doc.go):
//   - daily Fourier terms need at least 4 buckets a day; up to 8 harmonics
//     (a one-hour feature of the daily profile) and never past Nyquist;
//   - day-of-week and day-type (Saturday, Sunday/holiday) profiles need a
//     window of at least two weeks, so each weekday is seen twice;
//   - day-type profiles use half the daily harmonics.
const (
	maxDailyHarmonics  = 8
	minWindowDaysWeek  = 14
	minStepsPerDayFour = 4
)

// design maps a timestamp to the regression's feature vector.
type design struct {
	step   int64 // seconds
	spd    int   // buckets per day (0: none or sub-daily profile impossible)
	region string
	feeds  *Feeds

	kd, ki  int  // daily and day-type harmonics
	dow     bool // day-of-week and day-type terms
	holiday bool // holiday indicator (relative to a Sunday)
	p       int
	group   []int
	decay   []float64 // prior variance factor within the group (1/k for harmonic k)

	cTrend, cDaily, cDow, cSat, cSun, cHol int

	sinT, cosT []float64 // [phase*kd + k-1]

	// Trend normalisation, fixed at each rebase.
	trendRef   int64   // unix seconds where trend = 0
	trendScale float64 // seconds per trend unit (the window length)
}

func newDesign(step time.Duration, window int, region string, feeds *Feeds) *design {
	d := &design{step: int64(step / time.Second), region: region, feeds: feeds}
	if d.step <= 0 {
		d.step = 3600
	}
	d.spd = stepsPer(step, 24*time.Hour)
	windowDays := float64(window) * float64(d.step) / 86400
	if d.spd >= minStepsPerDayFour {
		d.kd = min(maxDailyHarmonics, (d.spd-1)/2)
	}
	d.dow = windowDays >= minWindowDaysWeek && d.spd >= 1
	if d.dow && d.kd > 0 {
		d.ki = (d.kd + 1) / 2
	}
	d.holiday = sundayHolidays && feeds != nil && feeds.Calendar != nil && hasHoliday(feeds.Calendar)
	add := func(g int, n int, harmonic bool, perHarm int) int {
		c := d.p
		for i := 0; i < n; i++ {
			d.group = append(d.group, g)
			f := 1.0
			if harmonic {
				f = 1 / float64(i/perHarm+1)
			}
			d.decay = append(d.decay, f)
		}
		d.p += n
		return c
	}
	add(grpIntercept, 1, false, 1)
	d.cTrend = add(grpTrend, 1, false, 1)
	d.cDaily = add(grpDaily, 2*d.kd, true, 2)
	if d.dow {
		d.cDow = add(grpDOW, 6, false, 1)
		d.cSat = add(grpDayType, 2*d.ki, true, 2)
		d.cSun = add(grpDayType, 2*d.ki, true, 2)
	}
	if d.holiday {
		d.cHol = add(grpHoliday, 1, false, 1)
	}
	if d.spd > 0 && d.kd > 0 {
		d.sinT = make([]float64, d.spd*d.kd)
		d.cosT = make([]float64, d.spd*d.kd)
		for ph := 0; ph < d.spd; ph++ {
			for k := 1; k <= d.kd; k++ {
				a := 2 * math.Pi * float64(k*ph) / float64(d.spd)
				d.sinT[ph*d.kd+k-1] = math.Sin(a)
				d.cosT[ph*d.kd+k-1] = math.Cos(a)
			}
		}
	}
	d.trendScale = float64(window) * float64(d.step)
	return d
}

func hasHoliday(c *Calendar) bool {
	for _, e := range c.events {
		if e.Kind == KindHoliday {
			return true
		}
	}
	return false
}

// sundayHolidays makes the regression treat a holiday as a Sunday. Off:
// measured on the Uber file it cost accuracy (its holiday flag also marks
// days most people work, e.g. Lincoln's Birthday); holidays act through
// the learnt event effects instead.
const sundayHolidays = false

// dayType returns the weekday the model treats t as (with sundayHolidays,
// a holiday is a Sunday) and whether t is a holiday.
func (d *design) dayType(t time.Time) (time.Weekday, bool) {
	if !d.holiday {
		return t.Weekday(), false
	}
	hol := d.feeds != nil && d.feeds.Calendar.Holiday(t, d.region)
	if hol {
		return time.Sunday, true
	}
	return t.Weekday(), false
}

// fill writes the features of the bucket starting at t into x (len p).
func (d *design) fill(t time.Time, x []float64) {
	clear(x)
	x[0] = 1
	x[d.cTrend] = float64(t.Unix()-d.trendRef) / d.trendScale
	var wd time.Weekday
	var hol bool
	if d.dow || d.holiday {
		wd, hol = d.dayType(t)
	}
	if d.kd > 0 {
		u := t.Unix()
		ph := int(((u % 86400) + 86400) % 86400 / d.step)
		base := ph * d.kd
		for k := 0; k < d.kd; k++ {
			x[d.cDaily+2*k] = d.sinT[base+k]
			x[d.cDaily+2*k+1] = d.cosT[base+k]
		}
		if d.dow {
			var c int = -1
			switch wd {
			case time.Saturday:
				c = d.cSat
			case time.Sunday:
				c = d.cSun
			}
			if c >= 0 {
				for k := 0; k < d.ki; k++ {
					x[c+2*k] = d.sinT[base+k]
					x[c+2*k+1] = d.cosT[base+k]
				}
			}
		}
	}
	if d.dow && wd != time.Sunday {
		x[d.cDow+int(wd)-1] = 1
	}
	if d.holiday && hol {
		x[d.cHol] = 1
	}
}
