package agent

import (
	"testing"
	"time"

	"github.com/premirror/premirror/internal/replicator/throttle"
)

func mustSchedule(t testing.TB, spec string, loc *time.Location) throttle.Schedule {
	t.Helper()
	s, err := throttle.ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	s.Location = loc
	return s
}

// TestChooseStart: the earliest start that sends the fewest bytes at less
// than the schedule's highest rate while finishing by the deadline; now
// when nothing finishes in time.
func TestChooseStart(t *testing.T) {
	const MB, GB = int64(1e6), int64(1e9)
	// Monday 2 March 2026 (UTC unless a case says otherwise).
	at := func(day, h, m int) time.Time { return time.Date(2026, 3, 2+day, h, m, 0, 0, time.UTC) }
	est := time.FixedZone("EST", -5*3600)
	peakDay := "100MB; * 08:00-20:00 10MB" // 10 MB/s from 08:00 to 20:00, 100 MB/s otherwise
	for _, tc := range []struct {
		name       string
		spec       string
		loc        *time.Location
		link       int64
		now, dl    time.Time
		n          int64
		wantStart  time.Time
		wantFinish time.Time // zero: never
		wantPeak   int64
		wantOnTime bool
	}{
		{name: "peak now, the off-peak window opens before the deadline with room: wait for it",
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 21, 0), n: 60 * GB,
			wantStart: at(0, 20, 0), wantFinish: at(0, 20, 10), wantPeak: 0, wantOnTime: true},
		{name: "deadline before the off-peak window: now, at the peak rate",
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 19, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 11, 40), wantPeak: 60 * GB, wantOnTime: true},
		{name: "deadline before the off-peak window, too much to send: now, late",
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 19, 0), n: 400 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 20, 0).Add(400 * time.Second), wantPeak: 360 * GB, wantOnTime: false},
		{name: "off-peak room before the deadline too short: start just early enough, the remainder at peak",
			// 5 min off-peak at 100 MB/s carry 30 GB; the other 30 GB need
			// 50 min at 10 MB/s before 20:00.
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 20, 5), n: 60 * GB,
			wantStart: at(0, 19, 10), wantFinish: at(0, 20, 5), wantPeak: 30 * GB, wantOnTime: true},
		{name: "already off-peak: now",
			spec: peakDay, now: at(0, 6, 0), dl: at(0, 21, 0), n: 60 * GB,
			wantStart: at(0, 6, 0), wantFinish: at(0, 6, 10), wantPeak: 0, wantOnTime: true},
		{name: "unlimited off-peak at the default link rate (1 Gbit/s)",
			spec: "unlimited; * 08:00-20:00 10MB", now: at(0, 10, 0), dl: at(0, 21, 0), n: 125 * GB,
			wantStart: at(0, 20, 0), wantFinish: at(0, 20, 0).Add(1000 * time.Second), wantPeak: 0, wantOnTime: true},
		{name: "unlimited off-peak on a 25 MB/s link: too short, so the remainder at peak just before it",
			// 20:00–21:00 at 25 MB/s carry 90 GB; 35 GB at 10 MB/s take 3500 s.
			spec: "unlimited; * 08:00-20:00 10MB", link: 25 * MB, now: at(0, 10, 0), dl: at(0, 21, 0), n: 125 * GB,
			wantStart: at(0, 20, 0).Add(-3500 * time.Second), wantFinish: at(0, 21, 0), wantPeak: 35 * GB, wantOnTime: true},
		{name: "a window above the link rate is the link rate: its bytes are not peak bytes",
			spec: "200MB; * 08:00-20:00 150MB", link: 100 * MB, now: at(0, 10, 0), dl: at(0, 21, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 10, 10), wantPeak: 0, wantOnTime: true},
		{name: "paused at peak: starting now sends nothing until off-peak (a tie: the earliest)",
			spec: "100MB; * 08:00-20:00 0", now: at(0, 10, 0), dl: at(0, 21, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 20, 10), wantPeak: 0, wantOnTime: true},
		{name: "paused at peak, deadline inside the pause: now, late",
			spec: "100MB; * 08:00-20:00 0", now: at(0, 10, 0), dl: at(0, 19, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 20, 10), wantPeak: 0, wantOnTime: false},
		{name: "paused for good: now, never finishes",
			spec: "0", now: at(0, 10, 0), dl: at(0, 19, 0), n: 1,
			wantStart: at(0, 10, 0), wantOnTime: false},
		{name: "deadline already passed: now",
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 9, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 11, 40), wantPeak: 60 * GB, wantOnTime: false},
		{name: "nothing to send: now",
			spec: peakDay, now: at(0, 10, 0), dl: at(0, 21, 0), n: 0,
			wantStart: at(0, 10, 0), wantFinish: at(0, 10, 0), wantOnTime: true},
		{name: "one rate at all times: now",
			spec: "10MB", now: at(0, 10, 0), dl: at(0, 21, 0), n: 60 * GB,
			wantStart: at(0, 10, 0), wantFinish: at(0, 11, 40), wantPeak: 0, wantOnTime: true},
		{name: "off-peak window wrapping past midnight: start at its opening",
			spec: "10MB; * 22:00-06:00 100MB", now: at(0, 10, 0), dl: at(1, 3, 0), n: 1080 * GB,
			wantStart: at(0, 22, 0), wantFinish: at(1, 1, 0), wantPeak: 0, wantOnTime: true},
		{name: "inside a window wrapping past midnight: now",
			spec: "10MB; * 22:00-06:00 100MB", now: at(0, 23, 0), dl: at(1, 7, 0), n: 60 * GB,
			wantStart: at(0, 23, 0), wantFinish: at(0, 23, 10), wantPeak: 0, wantOnTime: true},
		{name: "two off-peak windows, both enough: the earlier",
			spec: "10MB; * 12:00-13:00 100MB; * 20:00-23:00 100MB", now: at(0, 10, 0), dl: at(0, 22, 0), n: 360 * GB,
			wantStart: at(0, 12, 0), wantFinish: at(0, 13, 0), wantPeak: 0, wantOnTime: true},
		{name: "two off-peak windows, only the later is long enough",
			spec: "10MB; * 12:00-13:00 100MB; * 20:00-23:00 100MB", now: at(0, 10, 0), dl: at(0, 22, 0), n: 540 * GB,
			wantStart: at(0, 20, 0), wantFinish: at(0, 21, 30), wantPeak: 0, wantOnTime: true},
		{name: "weekend off-peak: wait over the week's last peak day",
			spec: "10MB; sat,sun 00:00-24:00 100MB", now: at(4, 10, 0), dl: at(6, 0, 0), n: 3600 * GB,
			wantStart: at(5, 0, 0), wantFinish: at(5, 10, 0), wantPeak: 0, wantOnTime: true},
		// 10:00 EST is 15:00 UTC; the window opens at 20:00 EST, 01:00 UTC.
		{name: "schedule in another time zone",
			spec: peakDay, loc: est, now: at(0, 15, 0), dl: at(1, 2, 0), n: 60 * GB,
			wantStart: at(1, 1, 0), wantFinish: at(1, 1, 10), wantPeak: 0, wantOnTime: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loc := tc.loc
			if loc == nil {
				loc = time.UTC
			}
			got := ChooseStart(mustSchedule(t, tc.spec, loc), tc.link, tc.now, tc.dl, tc.n)
			if !got.Start.Equal(tc.wantStart) || !got.Finish.Equal(tc.wantFinish) || got.OnTime != tc.wantOnTime {
				t.Fatalf("start %v finish %v on time %v; want %v, %v, %v", got.Start, got.Finish, got.OnTime, tc.wantStart, tc.wantFinish, tc.wantOnTime)
			}
			// Float rounding: within a byte per GB.
			if d := got.PeakBytes - tc.wantPeak; d > tc.n/1e9+1 || -d > tc.n/1e9+1 {
				t.Fatalf("peak bytes %d, want %d", got.PeakBytes, tc.wantPeak)
			}
		})
	}
}

// BenchmarkChooseStart is one start decision for 500 GB: on a weekday
// peak schedule with a weekend window and deadlines two and seven days
// ahead, and (the baseline) on one rate at all times, where "now" is the
// only candidate.
func BenchmarkChooseStart(b *testing.B) {
	now := time.Date(2026, 3, 5, 10, 0, 0, 0, time.UTC) // a Thursday, peak
	for _, bc := range []struct {
		name, spec string
		ahead      time.Duration
	}{
		{"fixed-rate", "100MB", 48 * time.Hour},
		{"weekly-2d", "100MB; mon-fri 08:00-20:00 10MB; sat,sun 10:00-16:00 50MB", 48 * time.Hour},
		{"weekly-7d", "100MB; mon-fri 08:00-20:00 10MB; sat,sun 10:00-16:00 50MB", 7 * 24 * time.Hour},
	} {
		s := mustSchedule(b, bc.spec, time.UTC)
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				ChooseStart(s, 0, now, now.Add(bc.ahead), 500e9)
			}
		})
	}
}
