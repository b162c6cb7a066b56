package kernel

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Timer is a CLOCK_MONOTONIC timerfd that a goroutine waits on through the
// runtime poller. The poller wakes on the fd at hrtimer precision (tens of
// microseconds), where Go timers can oversleep by up to a millisecond
// because the runtime's own idle sleep has millisecond granularity.
type Timer struct {
	fd int
	f  *os.File
	rc syscall.RawConn
}

// NewTimer creates a disarmed timer.
func NewTimer() (*Timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd rawconn: %w", err)
	}
	return &Timer{fd: fd, f: f, rc: rc}, nil
}

// ArmAt makes the timer expire at the absolute CLOCK_MONOTONIC time mono
// (nanoseconds); a time in the past expires at once. Safe to call from any
// goroutine, also while another waits.
func (t *Timer) ArmAt(mono int64) error {
	if mono <= 0 {
		mono = 1 // zero would disarm
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(mono)}
	var err error
	cerr := t.rc.Control(func(fd uintptr) {
		err = unix.TimerfdSettime(int(fd), unix.TFD_TIMER_ABSTIME, &spec, nil)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// Disarm stops the timer.
func (t *Timer) Disarm() error {
	var spec unix.ItimerSpec
	var err error
	cerr := t.rc.Control(func(fd uintptr) {
		err = unix.TimerfdSettime(int(fd), 0, &spec, nil)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// Wait blocks until the timer has expired (since the last Wait) or is
// closed, which returns an error.
func (t *Timer) Wait() error {
	var buf [8]byte // the expiration count, unused
	_, err := rawIO(t.rc.Read, unix.SYS_READ, buf[:])
	return err
}

// Close releases the timer and wakes a waiter.
func (t *Timer) Close() error { return t.f.Close() }

// MonotonicNow returns CLOCK_MONOTONIC in nanoseconds, the clock Go's
// monotonic readings and Timer.ArmAt use.
func MonotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
