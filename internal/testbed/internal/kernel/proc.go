package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ProcStartTime returns the start time of process pid in clock ticks since
// boot (field 22 of /proc/<pid>/stat); with the pid it identifies a process
// across pid reuse.
func ProcStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after it start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// ProcAlive reports whether process pid exists, has the given start time
// and is not a zombie.
func ProcAlive(pid int, start uint64) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return err == nil && st == start
}

// nsLinkInode parses a namespace symlink target such as "net:[4026532]".
func nsLinkInode(target string) (uint64, bool) {
	rest, ok := strings.CutPrefix(target, "net:[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	return v, err == nil
}

// NSUser is something that keeps a network namespace alive.
type NSUser struct {
	Pid   int
	Inode uint64
	// What is "process", "thread <tid>" or "fd <n>".
	What string
}

// NSUsers lists processes of the system whose network namespace is one of
// inodes, threads of this process in one of them, and this process's open
// file descriptors referring to one of them.
func NSUsers(inodes map[uint64]bool) ([]NSUser, error) {
	var out []NSUser
	if len(inodes) == 0 {
		return nil, nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		t, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns/net"))
		if err != nil {
			continue // exited, a zombie or a kernel thread
		}
		if ino, ok := nsLinkInode(t); ok && inodes[ino] {
			out = append(out, NSUser{Pid: pid, Inode: ino, What: "process"})
		}
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, e := range tasks {
		t, err := os.Readlink(filepath.Join("/proc/self/task", e.Name(), "ns/net"))
		if err != nil {
			continue
		}
		if ino, ok := nsLinkInode(t); ok && inodes[ino] {
			out = append(out, NSUser{Pid: self, Inode: ino, What: "thread " + e.Name()})
		}
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, e := range fds {
		t, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := nsLinkInode(t); ok && inodes[ino] {
			out = append(out, NSUser{Pid: self, Inode: ino, What: "fd " + e.Name()})
		}
	}
	return out, nil
}

// Kill sends sig to pid; a process that is already gone is not an error.
func Kill(pid int, sig syscall.Signal) error {
	err := unix.Kill(pid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Exists reports whether pid names a process that has not been reaped and
// is not a zombie.
func Exists(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}
