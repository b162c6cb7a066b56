// Package throttle limits replication bandwidth per peer link: a token
// bucket whose rate follows a cron-like schedule of peak and off-peak
// windows, changeable at run time, and optionally a delay-based
// (LEDBAT-style) Controller that keeps the rate below the schedule's as
// far as the path's queueing delay demands (see Controller).
//
// A waiter never sleeps past a change: Wait sleeps at most until the next
// window boundary, and SetSchedule wakes every waiter so it re-reads the
// rate at once. A transfer throttled to a trickle during peak hours
// therefore speeds up the moment the off-peak window opens or an operator
// raises the rate, rather than finishing a long sleep computed at the old
// rate (the stall that rate.Limiter's reservations would cause). The same
// holds under a Controller: every rate increase it makes wakes the
// waiters.
package throttle

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Unlimited is the rate of a window or link without a limit.
const Unlimited int64 = -1

// Window is a weekly time window with its rate.
type Window struct {
	Days  [7]bool // indexed by time.Weekday
	Start int     // minute of day, 0..1439
	End   int     // minute of day, 1..1440; End <= Start wraps past midnight
	Rate  int64   // bytes per second; 0 pauses; Unlimited
}

// Schedule is a default rate and windows; the first window that contains
// an instant sets the rate at that instant.
type Schedule struct {
	Default  int64
	Windows  []Window
	Location *time.Location // nil means time.Local
}

// Fixed returns a schedule with one rate at all times.
func Fixed(rate int64) Schedule { return Schedule{Default: rate} }

func (s Schedule) loc() *time.Location {
	if s.Location != nil {
		return s.Location
	}
	return time.Local
}

// contains reports whether the minute m of weekday d falls in w.
func (w Window) contains(d time.Weekday, m int) bool {
	if w.End > w.Start {
		return w.Days[d] && m >= w.Start && m < w.End
	}
	// Wrapping window: the tail of day d, or the head of the day after a
	// listed day.
	prev := (d + 6) % 7
	return (w.Days[d] && m >= w.Start) || (w.Days[prev] && m < w.End)
}

// RateAt returns the rate in force at t.
func (s Schedule) RateAt(t time.Time) int64 {
	lt := t.In(s.loc())
	m := lt.Hour()*60 + lt.Minute()
	for _, w := range s.Windows {
		if w.contains(lt.Weekday(), m) {
			return w.Rate
		}
	}
	return s.Default
}

// NextChange returns the first minute boundary after t at which a window
// starts or ends (so the rate may change), or the zero time when the
// schedule has no windows.
func (s Schedule) NextChange(t time.Time) time.Time {
	if len(s.Windows) == 0 {
		return time.Time{}
	}
	lt := t.In(s.loc())
	var best time.Time
	for i := 0; i <= 8; i++ {
		for _, w := range s.Windows {
			for _, m := range [2]int{w.Start, w.End % 1440} {
				// Wall-clock minute m of the day, not midnight plus m
				// minutes: on a day the clocks change those differ by
				// an hour, and on the long day midnight+m can fall
				// before t, so the boundary would be skipped.
				c := time.Date(lt.Year(), lt.Month(), lt.Day()+i, m/60, m%60, 0, 0, s.loc())
				if c.After(t) && (best.IsZero() || c.Before(best)) {
					best = c
				}
			}
		}
		if !best.IsZero() {
			return best
		}
	}
	return best
}

// String renders s in the syntax ParseSchedule reads.
func (s Schedule) String() string {
	parts := []string{FormatRate(s.Default)}
	for _, w := range s.Windows {
		var days []string
		for d := time.Sunday; d <= time.Saturday; d++ {
			if w.Days[d] {
				days = append(days, dayNames[d])
			}
		}
		parts = append(parts, fmt.Sprintf("%s %02d:%02d-%02d:%02d %s", strings.Join(days, ","),
			w.Start/60, w.Start%60, w.End/60, w.End%60, FormatRate(w.Rate)))
	}
	return strings.Join(parts, "; ")
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseSchedule reads "DEFAULT; DAYS HH:MM-HH:MM RATE; ...", for example
//
//	unlimited; mon-fri 08:00-20:00 20MiB; sat,sun 10:00-16:00 50MiB
//
// DAYS is *, a day (mon), a range (mon-fri) or a comma list of those.
// RATE is a byte rate with an optional unit (B, KB, MB, GB, KiB, MiB, GiB,
// or Kbit, Mbit, Gbit), "unlimited", or 0 to pause. A window whose end is
// not after its start wraps past midnight.
func ParseSchedule(s string) (Schedule, error) {
	parts := strings.Split(s, ";")
	var sch Schedule
	def, err := ParseRate(strings.TrimSpace(parts[0]))
	if err != nil {
		return Schedule{}, fmt.Errorf("schedule default rate: %w", err)
	}
	sch.Default = def
	for i, p := range parts[1:] {
		f := strings.Fields(p)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return Schedule{}, fmt.Errorf("schedule window %d %q: want DAYS HH:MM-HH:MM RATE", i+1, strings.TrimSpace(p))
		}
		var w Window
		if w.Days, err = parseDays(f[0]); err != nil {
			return Schedule{}, fmt.Errorf("schedule window %d days: %w", i+1, err)
		}
		if w.Start, w.End, err = parseSpan(f[1]); err != nil {
			return Schedule{}, fmt.Errorf("schedule window %d hours: %w", i+1, err)
		}
		if w.Rate, err = ParseRate(f[2]); err != nil {
			return Schedule{}, fmt.Errorf("schedule window %d rate: %w", i+1, err)
		}
		sch.Windows = append(sch.Windows, w)
	}
	return sch, nil
}

func dayIndex(s string) (int, error) {
	for i, n := range dayNames {
		if strings.EqualFold(s, n) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown day %q (want sun..sat)", s)
}

func parseDays(s string) ([7]bool, error) {
	var days [7]bool
	if s == "*" {
		return [7]bool{true, true, true, true, true, true, true}, nil
	}
	for _, item := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(item, "-")
		i, err := dayIndex(a)
		if err != nil {
			return days, err
		}
		j := i
		if isRange {
			if j, err = dayIndex(b); err != nil {
				return days, err
			}
		}
		for d := i; ; d = (d + 1) % 7 {
			days[d] = true
			if d == j {
				break
			}
		}
	}
	return days, nil
}

func parseSpan(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want HH:MM-HH:MM", s)
	}
	start, err := parseClock(a, false)
	if err != nil {
		return 0, 0, err
	}
	end, err := parseClock(b, true)
	if err != nil {
		return 0, 0, err
	}
	return start, end, nil
}

func parseClock(s string, allow24 bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && (mm != 0 || !allow24)) {
		return 0, fmt.Errorf("bad time %q", s)
	}
	return hh*60 + mm, nil
}

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8},
	{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1},
}

// ParseRate reads a byte rate (see ParseSchedule).
func ParseRate(s string) (int64, error) {
	ls := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if ls == "unlimited" || ls == "inf" {
		return Unlimited, nil
	}
	mult := 1.0
	for _, u := range rateUnits {
		if strings.HasSuffix(ls, u.suffix) {
			ls, mult = strings.TrimSuffix(ls, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(ls), 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("bad rate %q", s)
	}
	// Only an explicit 0 pauses: 0.5 (a unit forgotten: 0.5MiB) would
	// truncate to 0 and pause the link for good.
	if v*mult > 0 && v*mult < 1 {
		return 0, fmt.Errorf("bad rate %q: below 1 byte per second (0 pauses; was a unit left out?)", s)
	}
	return int64(v * mult), nil
}

// FormatRate renders a rate for ParseRate.
func FormatRate(r int64) string {
	switch {
	case r < 0:
		return "unlimited"
	case r >= 1<<20 && r%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", r>>20)
	case r >= 1<<10 && r%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", r>>10)
	}
	return strconv.FormatInt(r, 10)
}

// Clock abstracts time for tests.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Limiter is a token bucket whose rate follows a Schedule. It is safe for
// concurrent use; every session to one peer shares the peer's Limiter.
type Limiter struct {
	mu      sync.Mutex
	clock   Clock
	sched   Schedule
	capRate int64 // the schedule's rate in force
	rate    int64 // in force: capRate, or the controller's rate under it
	ctl     *Controller
	tokens  float64
	last    time.Time
	next    time.Time // when the schedule must be re-read
	changed chan struct{}
}

// NewLimiter returns a limiter following s; clock nil means real time.
func NewLimiter(s Schedule, clock Clock) *Limiter {
	if clock == nil {
		clock = realClock{}
	}
	l := &Limiter{clock: clock, changed: make(chan struct{})}
	l.SetSchedule(s)
	return l
}

// SetSchedule replaces the schedule; waiters re-read the rate at once.
func (l *Limiter) SetSchedule(s Schedule) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sched = s
	now := l.clock.Now()
	l.apply(now)
	l.wake()
}

// Schedule returns the current schedule.
func (l *Limiter) Schedule() Schedule {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sched
}

// Rate returns the rate in force now (bytes per second, Unlimited, or 0
// when paused).
func (l *Limiter) Rate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(l.clock.Now())
	return l.rate
}

// apply re-reads the schedule at now. Tokens carry over, capped by the
// new burst, so a rate change neither loses nor invents a backlog.
func (l *Limiter) apply(now time.Time) {
	l.capRate = l.sched.RateAt(now)
	l.rate = l.capRate
	if l.ctl != nil {
		l.rate = l.ctl.Rate(l.capRate)
	}
	l.next = l.sched.NextChange(now)
	l.last = now
	l.tokens = math.Min(l.tokens, l.burst())
}

// burst is a tenth of a second of traffic, at least 256 KiB so one large
// frame does not need many wake-ups. Under delay control it is 10 ms of
// traffic (16 KiB to 4 MiB): a burst lands in the path's bottleneck queue
// at once, so it must be small against the target delay.
func (l *Limiter) burst() float64 {
	if l.ctl != nil {
		return math.Min(math.Max(16<<10, float64(l.rate)/100), 4<<20)
	}
	return math.Max(256<<10, float64(l.rate)/10)
}

// SetDelayControl puts the limiter's rate under c (nil: the schedule's
// rate alone); the schedule's rate stays the cap. Waiters re-read the
// rate at once.
func (l *Limiter) SetDelayControl(c *Controller) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ctl = c
	l.apply(l.clock.Now())
	l.wake()
}

// ObserveRTT feeds a round-trip time of the link's traffic to its delay
// controller (a no-op without one). A rate increase wakes the waiters,
// so none sleeps out a wait computed at the lower rate.
func (l *Limiter) ObserveRTT(rtt time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctl == nil {
		return
	}
	now := l.clock.Now()
	l.refill(now) // credit the old rate up to now
	old := l.rate
	l.rate = l.ctl.Observe(now, rtt, l.capRate)
	l.tokens = math.Min(l.tokens, l.burst())
	if l.rate > old {
		l.wake()
	}
}

// DelayState reports the delay controller's view: the rate in force, the
// schedule's rate (its cap), the last queueing delay and the base delay.
// ok is false when the limiter has no controller.
func (l *Limiter) DelayState() (rate, capRate int64, queue, base time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctl == nil {
		return 0, 0, 0, 0, false
	}
	l.refill(l.clock.Now())
	return l.rate, l.capRate, l.ctl.QueueDelay(), l.ctl.BaseDelay(), true
}

// Quantum is how many bytes a sender should write per Wait so that it
// paces its traffic rather than sending whole frames at line rate: the
// burst under delay control, 0 (no pacing needed) otherwise.
func (l *Limiter) Quantum() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctl == nil || l.rate == Unlimited {
		return 0
	}
	return int(l.burst())
}

// wake releases every waiter; the caller holds mu.
func (l *Limiter) wake() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Limiter) refill(now time.Time) {
	if !l.next.IsZero() && !now.Before(l.next) {
		// Credit the old rate up to the boundary, then switch.
		l.add(l.next)
		l.apply(now)
		return
	}
	l.add(now)
}

func (l *Limiter) add(now time.Time) {
	if d := now.Sub(l.last); d > 0 && l.rate > 0 {
		l.tokens = math.Min(l.burst(), l.tokens+d.Seconds()*float64(l.rate))
	}
	if now.After(l.last) {
		l.last = now
	}
}

// Wait blocks until n bytes may be sent or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	remaining := float64(n)
	for remaining > 0 {
		l.mu.Lock()
		now := l.clock.Now()
		l.refill(now)
		if l.rate == Unlimited {
			l.mu.Unlock()
			return nil
		}
		chunk := math.Min(remaining, l.burst())
		var wait time.Duration
		if l.rate > 0 && l.tokens >= chunk {
			l.tokens -= chunk
			remaining -= chunk
			l.mu.Unlock()
			continue
		}
		if l.rate > 0 {
			wait = time.Duration((chunk - l.tokens) / float64(l.rate) * float64(time.Second))
			if wait < time.Millisecond {
				wait = time.Millisecond
			}
		} else {
			wait = time.Hour // paused: until the next boundary or change
		}
		if !l.next.IsZero() {
			if until := l.next.Sub(now); until < wait {
				wait = max(until, time.Millisecond)
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-l.clock.After(wait):
		}
	}
	return nil
}
