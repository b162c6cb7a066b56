package replicator

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/testnet"
)

// TestCrashSafety kills the sender and the receiver with SIGKILL at random
// points while the sender writes and ships cycles, and checks that
//   - after every receiver crash, the recovered mirror is exactly the state
//     of a cycle the primary had (never a torn mix);
//   - no block the receiver had made durable and acknowledged is ever
//     received again (counted from the receiver's log);
//   - in the end the mirror converges to the source byte for byte.
//
// A few kills by default; PREMIRROR_LONG=1 runs 60.
func TestCrashSafety(t *testing.T) {
	kills := 6
	if os.Getenv("PREMIRROR_LONG") != "" {
		kills = 60
	}
	dir := t.TempDir()
	certs(t, dir, "src", "dst")
	src := filepath.Join(dir, "src.img")
	makeImage(t, src, 2048, bs, 11)
	v, err := OpenVolume(src, VolumeOptions{Init: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	// Below the ephemeral range: the receiver restarts on this address
	// while the sender redials it, and a redial must not take the port.
	ln, err := testnet.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	seed := 0
	start := func(role string) *exec.Cmd {
		seed++
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+role, envDir+"="+dir, envAddr+"="+addr, fmt.Sprintf("%s=%d", envSeed, seed))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		cmd.Process.Kill()
		cmd.Wait()
	}
	recv := start("receiver")
	send := start("sender")
	defer func() {
		kill(recv)
		kill(send)
	}()

	checked := 0
	for i := 0; i < kills; i++ {
		time.Sleep(time.Duration(30+rng.IntN(400)) * time.Millisecond)
		if i%2 == 1 {
			kill(send)
			send = start("sender")
			continue
		}
		kill(recv)
		if checkMirror(t, dir) {
			checked++
		}
		recv = start("receiver")
	}
	// Let the sender finish: one last push after the stop file appears.
	os.WriteFile(filepath.Join(dir, "stop"), nil, 0o600)
	done := make(chan error, 1)
	go func() { done <- send.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sender: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("sender did not converge within 90s")
	}
	send = exec.Command("true") // already waited for
	send.Run()
	kill(recv)
	if !checkMirror(t, dir) {
		t.Fatal("mirror inconsistent after convergence")
	}
	sameFile(t, src, filepath.Join(dir, "dst.img"))

	// No acknowledged block was received again.
	lines, err := readLines(filepath.Join(dir, "receiver.log"))
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	received, durable, dups := 0, 0, 0
	for _, l := range lines {
		kind, key, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		switch kind {
		case "R":
			received++
			if held[key] {
				dups++
				if dups < 5 {
					t.Errorf("block %s received again after it was acknowledged", key)
				}
			}
		case "D":
			durable++
			held[key] = true
		}
	}
	t.Logf("%d kills, %d mirror states checked, %d blocks received, %d acknowledged durable, %d received again",
		kills, checked, received, durable, dups)
	if dups > 0 {
		t.Fatalf("%d acknowledged blocks were sent again", dups)
	}
	if durable == 0 {
		t.Fatal("receiver log shows no durable block: the hooks did not run")
	}
}

// checkMirror opens the mirror as a restarted receiver would (recovery
// included) and, when it claims a committed cycle, checks that its content
// is exactly the source's at that cycle. It reports whether it checked.
func checkMirror(t *testing.T, dir string) bool {
	t.Helper()
	path := filepath.Join(dir, "dst.img")
	if _, err := os.Stat(path + ".pmr/state.json"); err != nil {
		return false
	}
	v, err := OpenVolume(path, VolumeOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("reopen mirror after a crash: %v", err)
	}
	st := v.Status()
	v.Close()
	if st.Inconsistent || st.Cycle == 0 {
		return false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%x", xxhash.Sum64(data))
	lines, err := readLines(filepath.Join(dir, "cycles.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, l := range lines {
		c, h, _ := strings.Cut(l, " ")
		if c == fmt.Sprint(st.Cycle) {
			want = h // the last attempt of a cycle number is the one committed
		}
	}
	if want == "" {
		t.Fatalf("mirror at cycle %d, which the sender never logged", st.Cycle)
	}
	if got != want {
		t.Fatalf("mirror at cycle %d has content %s, the source had %s: torn cycle", st.Cycle, got, want)
	}
	return true
}

// TestCrashWhileSelectiveMirrorTurnsFull: a selective mirror receives a
// full copy from block 0. recvFull first drops the presence bitmap
// (setSelective(false), which saves state.json), and only then marks the
// copy active and inconsistent. A crash between the two steps leaves a
// mirror that says it is a complete, consistent full copy while it holds
// only the selective blocks: reads of the others return zeros, and the
// source, seeing no copy in progress, never sends them.
func TestCrashWhileSelectiveMirrorTurnsFull(t *testing.T) {
	c, src, dst, data := twoNodes(t, 2048, nil)
	ctx := context.Background()
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeSelective, Extents: []Extent{{Start: 100, Count: 50}}})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	c.stop("dst")

	// The mirror's first steps of a full copy from block 0 (recvFull),
	// then a crash.
	dstCfg := Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img"), Upstream: "src"}}, Peers: c.peers("src")}
	v, err := OpenVolume(c.path("dst.img"), VolumeOptions{Name: "vol", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	j, err := openJournal(journalPath(v.metaDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.reset(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if err := v.setSelective(false); err != nil {
		t.Fatal(err)
	}
	v.Close() // crash: nothing else of recvFull ran

	dst = c.start("dst", dstCfg)
	dv, err := dst.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	st := dv.Status()
	t.Logf("after the crash: complete=%v inconsistent=%v fullActive=%v selective=%v", st.Complete, st.Inconsistent, st.FullActive, st.Selective)
	// The source's next push, and a read of a block the mirror never held.
	res, err = src.Push(ctx, "vol", "dst", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	buf := make([]byte, bs)
	const b = 501
	if err := dst.Read(ctx, "vol", buf, b*bs); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(buf, data[b*bs:(b+1)*bs]) {
		st = dv.Status()
		t.Fatalf("block %d, never copied, reads as other bytes than the source's (mirror complete=%v, full copy after the crash: %v)", b, st.Complete, res.Full)
	}
}
