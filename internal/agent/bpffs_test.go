package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestEnsureBPFFSKeepsMountedBPFFS: a pin_dir that is not on a bpffs
// (a typo, a tmpfs path) must be refused without mounting a new, empty
// bpffs over the one at /sys/fs/bpf: that hides every pin there (other
// tools', and this node's premirror pins) from whoever looks next. Runs
// in a private mount namespace (a re-exec of the test under unshare -m).
func TestEnsureBPFFSKeepsMountedBPFFS(t *testing.T) {
	requireRoot(t)
	if os.Getenv("PM_BPFFS_TEST_CHILD") == "" {
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("needs unshare")
		}
		cmd := exec.Command("unshare", "-m", "--propagation", "private", os.Args[0],
			"-test.run=^TestEnsureBPFFSKeepsMountedBPFFS$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "PM_BPFFS_TEST_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS") {
			t.Fatalf("in a private mount namespace: %v\n%s", err, out)
		}
		return
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/bpf", &st); err != nil || uint32(st.Type) != 0xcafe4a11 {
		t.Skip("no bpffs at /sys/fs/bpf")
	}
	// A pin of someone else's on the bpffs already mounted (only in this
	// mount namespace's view: a fresh directory of our own).
	marker := filepath.Join("/sys/fs/bpf", "premirror-test-marker")
	if err := os.Mkdir(marker, 0o700); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	defer os.Remove(marker)
	notBPF := filepath.Join(t.TempDir(), "pins")
	if err := ensureBPFFS(notBPF); err == nil {
		t.Fatalf("pin_dir %s on a tmpfs accepted", notBPF)
	}
	if _, err := os.Stat(marker); err != nil {
		// Clean up the stacked mount of this (private) namespace.
		_ = syscall.Unmount("/sys/fs/bpf", 0)
		t.Fatalf("a refused pin_dir mounted a new bpffs over /sys/fs/bpf: %s is hidden (%v)", marker, err)
	}
}
