package testbed

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
)

// Sweep deletes the namespaces left by testbed processes that are gone
// (crashed, killed, or timed out): it kills the processes still running in
// them and removes their /run/netns entries, which lets the kernel destroy
// them with their veths. Namespaces of live processes, this one included,
// are left alone. It returns how many namespaces it deleted. [New] calls
// it; call it directly to clean a machine by hand.
func Sweep(log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	names, err := kernel.ListNamedNS(NSPrefix)
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, name := range names {
		pid, start, ok := parseOwner(name)
		if !ok || kernel.ProcAlive(pid, start) {
			continue
		}
		ino, err := kernel.PathInode(filepath.Join(kernel.NetnsDir, name))
		if err == nil {
			if err := killNSUsers(ino, 5*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
				continue
			}
		}
		if err := kernel.DeleteNamedNS(name); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
			continue
		}
		log.Info("swept leftover namespace", "netns", name, "owner_pid", pid)
		n++
	}
	return n, errors.Join(errs...)
}

// parseOwner extracts the owner pid and start time from a namespace name.
func parseOwner(name string) (pid int, start uint64, ok bool) {
	rest, ok := strings.CutPrefix(name, NSPrefix)
	if !ok {
		return 0, 0, false
	}
	f := strings.SplitN(rest, "-", 3)
	if len(f) < 3 {
		return 0, 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(f[1], 36, 64)
	if err != nil {
		return 0, 0, false
	}
	return pid, start, true
}

// killNSUsers SIGKILLs every process in the namespace ino and waits for
// them to go.
func killNSUsers(ino uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		users, err := kernel.NSUsers(map[uint64]bool{ino: true})
		if err != nil {
			return err
		}
		var procs []int
		for _, u := range users {
			if u.What == "process" {
				procs = append(procs, u.Pid)
			}
		}
		if len(procs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survive SIGKILL", procs)
		}
		for _, p := range procs {
			_ = kernel.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The signal guard closes every live testbed on SIGINT, SIGTERM or SIGHUP
// and then lets the signal take its default action, so an interrupted test
// run leaves nothing behind. It runs only while a testbed that asked for it
// is open.
var guard struct {
	sync.Mutex
	live map[*Testbed]struct{}
	ch   chan os.Signal
	stop chan struct{}
	done chan struct{}
}

func guardAdd(t *Testbed) {
	guard.Lock()
	defer guard.Unlock()
	if guard.live == nil {
		guard.live = make(map[*Testbed]struct{})
	}
	guard.live[t] = struct{}{}
	if guard.ch != nil {
		return
	}
	ch := make(chan os.Signal, 1)
	stop, done := make(chan struct{}), make(chan struct{})
	guard.ch, guard.stop, guard.done = ch, stop, done
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		defer close(done)
		select {
		case sig := <-ch:
			guard.Lock()
			live := make([]*Testbed, 0, len(guard.live))
			for t := range guard.live {
				live = append(live, t)
			}
			guard.Unlock()
			for _, t := range live {
				_ = t.close(true)
			}
			signal.Reset(sig)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		case <-stop:
		}
	}()
}

func guardRemove(t *Testbed) {
	guard.Lock()
	delete(guard.live, t)
	if len(guard.live) > 0 || guard.ch == nil {
		guard.Unlock()
		return
	}
	ch, stop, done := guard.ch, guard.stop, guard.done
	guard.ch = nil
	guard.Unlock()
	signal.Stop(ch)
	close(stop)
	<-done
}
