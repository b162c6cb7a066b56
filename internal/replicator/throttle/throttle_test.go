package throttle

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseSchedule(t *testing.T) {
	loc := time.UTC
	// 2024-01-01 is a Monday.
	at := func(day int, hh, mm int) time.Time { return time.Date(2024, 1, day, hh, mm, 0, 0, loc) }
	cases := []struct {
		spec string
		at   time.Time
		want int64
	}{
		{"unlimited", at(1, 12, 0), Unlimited},
		{"10MiB", at(1, 12, 0), 10 << 20},
		{"unlimited; mon-fri 08:00-20:00 20MiB", at(1, 8, 0), 20 << 20},
		{"unlimited; mon-fri 08:00-20:00 20MiB", at(1, 20, 0), Unlimited},
		{"unlimited; mon-fri 08:00-20:00 20MiB", at(6, 12, 0), Unlimited}, // Saturday
		{"1MB; sat,sun 00:00-24:00 0", at(7, 23, 59), 0},
		{"1MB; fri-mon 22:00-06:00 100Mbit", at(2, 5, 59), 100e6 / 8}, // Tuesday 05:59, window from Monday night
		{"1MB; fri-mon 22:00-06:00 100Mbit", at(3, 5, 59), 1e6},       // Wednesday: Tuesday not listed
		{"1MB; * 00:00-01:00 2KiB; * 00:00-24:00 5KB", at(4, 0, 30), 2048},
	}
	for _, tc := range cases {
		s, err := ParseSchedule(tc.spec)
		if err != nil {
			t.Fatalf("%q: %v", tc.spec, err)
		}
		s.Location = loc
		if got := s.RateAt(tc.at); got != tc.want {
			t.Errorf("%q at %s: rate %d, want %d", tc.spec, tc.at.Format("Mon 15:04"), got, tc.want)
		}
		again, err := ParseSchedule(s.String())
		if err != nil {
			t.Fatalf("reparse %q: %v", s.String(), err)
		}
		again.Location = loc
		if again.RateAt(tc.at) != tc.want {
			t.Errorf("String() %q does not round trip", s.String())
		}
	}
}

func TestParseScheduleErrors(t *testing.T) {
	for _, spec := range []string{"fast", "1MB; mon 08:00 5MB", "1MB; xyz 08:00-09:00 5MB", "1MB; mon 25:00-26:00 5MB",
		"1MB; mon 08:00-09:00 -5MB", "1MB; mon 08:00-09:00", "-1",
		// Positive rates below a byte per second: truncated to 0, which pauses.
		"0.5", "1MB; mon 08:00-09:00 0.9B", "1MB; * 00:00-24:00 1e-10GiB", "1MB; mon 08:00-09:00 0.5", "0.9B", "1e-3"} {
		if _, err := ParseSchedule(spec); err == nil {
			t.Errorf("%q: accepted", spec)
		}
	}
}

func TestNextChange(t *testing.T) {
	s, _ := ParseSchedule("unlimited; mon-fri 08:00-20:00 20MiB")
	s.Location = time.UTC
	now := time.Date(2024, 1, 1, 7, 30, 0, 0, time.UTC)
	if got, want := s.NextChange(now), time.Date(2024, 1, 1, 8, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Fatalf("NextChange = %s, want %s", got, want)
	}
	if got, want := s.NextChange(time.Date(2024, 1, 1, 8, 0, 0, 0, time.UTC)), time.Date(2024, 1, 1, 20, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Fatalf("NextChange = %s, want %s", got, want)
	}
	if !Fixed(5).NextChange(now).IsZero() {
		t.Fatal("fixed schedule has a change")
	}
}

// fakeClock advances virtual time by whatever a waiter sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	c.mu.Unlock()
	return ch
}

func TestLimiterPacesToRate(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)}
	l := NewLimiter(Fixed(1<<20), clk)
	start := clk.Now()
	if err := l.Wait(context.Background(), 10<<20); err != nil {
		t.Fatal(err)
	}
	// The bucket starts empty, so 10 MiB at 1 MiB/s takes 10 virtual seconds.
	if got := clk.Now().Sub(start); got < 9900*time.Millisecond || got > 10100*time.Millisecond {
		t.Fatalf("10 MiB at 1 MiB/s took %s of virtual time", got)
	}
}

func TestLimiterFollowsWindows(t *testing.T) {
	// 1 KiB/s until 12:00:10 is impossible to express in minutes, so use a
	// window ending at 12:01 and measure the time to send 1 MiB starting
	// at 12:00:30: 30 s at 10 KiB/s (300 KiB) then unlimited.
	s, _ := ParseSchedule("unlimited; * 12:00-12:01 10KiB")
	s.Location = time.UTC
	clk := &fakeClock{now: time.Date(2024, 1, 1, 12, 0, 30, 0, time.UTC)}
	l := NewLimiter(s, clk)
	if l.Rate() != 10<<10 {
		t.Fatalf("rate %d in window", l.Rate())
	}
	if err := l.Wait(context.Background(), 1<<20); err != nil {
		t.Fatal(err)
	}
	if got := clk.Now(); got.After(time.Date(2024, 1, 1, 12, 1, 1, 0, time.UTC)) {
		t.Fatalf("finished at %s: the off-peak window did not lift the limit", got.Format(time.TimeOnly))
	}
	if l.Rate() != Unlimited {
		t.Fatalf("rate %d after window", l.Rate())
	}
}

func TestSetScheduleWakesPausedWaiter(t *testing.T) {
	l := NewLimiter(Fixed(0), nil) // paused
	done := make(chan error, 1)
	go func() { done <- l.Wait(context.Background(), 1<<20) }()
	select {
	case err := <-done:
		t.Fatalf("paused limiter let a waiter through: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.SetSchedule(Fixed(Unlimited))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter still blocked after the rate was raised")
	}
}

func TestWaitHonoursContext(t *testing.T) {
	l := NewLimiter(Fixed(0), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, 1); err != context.Canceled {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
}

func TestParseRate(t *testing.T) {
	cases := map[string]int64{"100": 100, "1KiB": 1024, "1.5MB": 1500000, "8Mbit": 1e6, "2GiB/s": 2 << 30, "unlimited": Unlimited, "0": 0,
		"0.0": 0, "1.5": 1, "0.5KiB": 512}
	for in, want := range cases {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// TestNextChangeAcrossDST checks window boundaries on the days a zone's
// clocks change: the boundary is the wall-clock minute of the schedule,
// not midnight plus that many hours (which is an hour off on a 23- or
// 25-hour day, and on the long day lands on a minute already passed, so
// the limiter would miss the boundary and keep the window's rate until
// the next one).
func TestNextChangeAcrossDST(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no tz database: %v", err)
	}
	s, err := ParseSchedule("unlimited; * 08:00-20:00 0")
	if err != nil {
		t.Fatal(err)
	}
	s.Location = berlin
	at := func(y int, m time.Month, d, hh, mm int) time.Time { return time.Date(y, m, d, hh, mm, 0, 0, berlin) }
	cases := []struct {
		name      string
		now, want time.Time
	}{
		{"spring forward, window end", at(2025, 3, 30, 12, 0), at(2025, 3, 30, 20, 0)},
		{"spring forward, window start", at(2025, 3, 30, 1, 0), at(2025, 3, 30, 8, 0)},
		{"fall back, window end", at(2025, 10, 26, 12, 0), at(2025, 10, 26, 20, 0)},
		{"fall back, window end from 19:00", at(2025, 10, 26, 19, 0), at(2025, 10, 26, 20, 0)},
		{"fall back, window start", at(2025, 10, 26, 1, 0), at(2025, 10, 26, 8, 0)},
	}
	for _, tc := range cases {
		if got := s.NextChange(tc.now); !got.Equal(tc.want) {
			t.Errorf("%s: NextChange(%s) = %s, want %s", tc.name, tc.now, got.In(berlin), tc.want)
		}
	}
	// The limiter re-reads the rate at the boundary: at 20:00 on the
	// long day the paused window is over.
	clk := &fakeClock{now: at(2025, 10, 26, 19, 0)}
	l := NewLimiter(s, clk)
	if r := l.Rate(); r != 0 {
		t.Fatalf("rate at 19:00 = %d, want 0 (paused window)", r)
	}
	clk.mu.Lock()
	clk.now = at(2025, 10, 26, 20, 0)
	clk.mu.Unlock()
	if r := l.Rate(); r != Unlimited {
		t.Fatalf("rate at 20:00 on the day clocks go back = %d, want unlimited", r)
	}
}

// FuzzParseSchedule: any text is parsed or refused without a panic, and
// an accepted schedule prints as text that parses back to it.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"unlimited; mon-fri 08:00-20:00 20MiB; sat,sun 10:00-16:00 50MiB", "0", "1MB; fri-mon 22:00-06:00 0.5KiB",
		"inf;;* 00:00-24:00 8Mbit", "1MB; mon 08:00-09:00 0.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sch, err := ParseSchedule(s)
		if err != nil {
			return
		}
		back, err := ParseSchedule(sch.String())
		if err != nil || !reflect.DeepEqual(back, sch) {
			t.Fatalf("%q printed as %q, which parses to %+v, %v; want %+v", s, sch.String(), back, err, sch)
		}
	})
}
