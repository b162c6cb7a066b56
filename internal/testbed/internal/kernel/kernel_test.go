package kernel

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestNSLinkInode(t *testing.T) {
	for in, want := range map[string]uint64{"net:[4026531840]": 4026531840, "net:[1]": 1} {
		if got, ok := nsLinkInode(in); !ok || got != want {
			t.Errorf("%q: %d %v", in, got, ok)
		}
	}
	for _, bad := range []string{"mnt:[1]", "net:[x]", "net:[1", "net:1]", ""} {
		if _, ok := nsLinkInode(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestProcStartTime(t *testing.T) {
	st, err := ProcStartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("start time %d, %v", st, err)
	}
	if !ProcAlive(os.Getpid(), st) || ProcAlive(os.Getpid(), st+1) {
		t.Error("ProcAlive disagrees with ProcStartTime")
	}
	if !Exists(os.Getpid()) || Exists(1<<30) {
		t.Error("Exists wrong")
	}
}

func TestTimer(t *testing.T) {
	tm, err := NewTimer()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := tm.ArmAt(MonotonicNow() + int64(20*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := tm.Wait(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 20*time.Millisecond {
		t.Errorf("timer fired after %v, before its 20 ms", el)
	}
	done := make(chan error)
	go func() { done <- tm.Wait() }()
	time.Sleep(10 * time.Millisecond)
	tm.Close()
	if err := <-done; err == nil {
		t.Error("Wait on a closed timer returned nil")
	}
}

// TestNamedNSAndVeth needs root: a named namespace, a veth into it, an
// address, and deletion.
func TestNamedNSAndVeth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	name := "premirror-kernel-test-" + time.Now().Format("150405.000000")
	h, err := CreateNamedNS(name)
	if err != nil {
		t.Fatal(err)
	}
	defer DeleteNamedNS(name)
	defer h.Close()
	h2, err := CreateNamedNS(name + "b")
	if err != nil {
		t.Fatal(err)
	}
	defer DeleteNamedNS(name + "b")
	defer h2.Close()
	if _, err := CreateNamedNS(name); err == nil {
		t.Error("created the same name twice")
	}
	_, bi, err := CreateVeth(VethSpec{ANS: h, AName: "a0", BNS: h2, BName: "b0", MTU: 1400, Alias: "premirror-testbed kernel-test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := AddAddr(h2, "b0", netip.MustParsePrefix("fd00:77::1/128")); err != nil {
		t.Fatal(err)
	}
	links, err := ListLinks(h2)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range links {
		if l.Name == "b0" && l.Index == bi && l.Alias == "premirror-testbed kernel-test" {
			found = true
		}
	}
	if !found {
		t.Errorf("b0 not found in %+v", links)
	}
	// Nothing leaked into our own namespace.
	root, _ := ListLinks(netns.None())
	for _, l := range root {
		if l.Name == "a0" || l.Name == "b0" {
			t.Errorf("veth end %s in the caller's namespace", l.Name)
		}
	}
	if err := DeleteNamedNS(name); err != nil {
		t.Fatal(err)
	}
	if names, _ := ListNamedNS(name); len(names) != 1 || names[0] != name+"b" {
		t.Errorf("after delete: %v", names)
	}
}
