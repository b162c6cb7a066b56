package replicator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/premirror/premirror/internal/replicator/throttle"
	"github.com/premirror/premirror/internal/replicator/wire"
)

func TestMirrorTooSmall(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 2048, bs, 1)
	small := make([]byte, 1<<20)
	if err := os.WriteFile(c.path("dst.img"), small, 0o600); err != nil {
		t.Fatal(err)
	}
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")})
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if !errors.Is(err, ErrMirrorTooSmall) {
		t.Fatalf("push: %v, want ErrMirrorTooSmall", err)
	}
	if !strings.Contains(err.Error(), "1048576") {
		t.Fatalf("error %q does not give the mirror's size", err)
	}
	got, _ := os.ReadFile(c.path("dst.img"))
	if !bytes.Equal(got, small) {
		t.Fatal("the small mirror was written to")
	}
}

func TestIncompatiblePeer(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 256, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")})
	c.startWith("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}}, func(n *Node) {
		n.protoMin, n.protoMax = wire.MaxProto+1, wire.MaxProto+2 // a future peer
	})
	_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), fmt.Sprintf("%d..%d", wire.MaxProto+1, wire.MaxProto+2)) {
		t.Fatalf("push: %v, want ErrIncompatible naming the peer's versions", err)
	}
	if _, err := os.Stat(c.path("dst.img")); err == nil {
		t.Fatal("an incompatible session created the mirror image")
	}
}

func TestPermissionDenied(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 256, bs, 1)
	dst := c.path("dst.img")
	if err := os.WriteFile(dst, make([]byte, 256*bs), 0o400); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Root ignores file modes; an immutable file refuses even root.
		if out, err := exec.Command("chattr", "+i", dst).CombinedOutput(); err != nil {
			t.Skipf("root and chattr +i unavailable (%v: %s)", err, out)
		}
		defer exec.Command("chattr", "-i", dst).Run()
	}
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")})
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: dst}}})
	_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if !errors.Is(err, ErrPermission) {
		t.Fatalf("push: %v, want ErrPermission", err)
	}
}

func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 2048, bs, 1) // 8 MiB
	mnt := t.TempDir()
	// The filesystem holds the (sparse) image, but not its data: the copy
	// runs out of space part way.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=12m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer syscall.Unmount(mnt, syscall.MNT_DETACH)
	if err := os.WriteFile(mnt+"/filler", make([]byte, 9<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: mnt + "/dst.img"}}})
	_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("push: %v, want ErrNoSpace from the filesystem", err)
	}
	// Nothing half-applied is exposed: the mirror refuses reads.
	buf := make([]byte, bs)
	if err := dst.Read(context.Background(), "vol", buf, 0); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("read of a mirror whose copy failed: %v, want ErrInconsistent", err)
	}
	c.stop("dst")
}

func TestEpochFencingKeepsLosingWrite(t *testing.T) {
	c := newCluster(t, "a", "b")
	makeImage(t, c.path("a.img"), 512, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "b"}}}}, Peers: c.peers("b")})
	b := c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img"), Mirrors: []MirrorConfig{{Peer: "a"}}}}, Peers: c.peers("a")})
	ctx := context.Background()
	if _, err := a.Push(ctx, "vol", "b", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	// a writes block 7 but never ships it; then b is promoted (a partition,
	// a controller decision).
	lost := bytes.Repeat([]byte("lost write "), bs/11+1)[:bs]
	if err := a.Write(ctx, "vol", lost, 7*bs); err != nil {
		t.Fatal(err)
	}
	if e, err := b.Promote("vol", 0); err != nil || e != 2 {
		t.Fatalf("promote: %d %v", e, err)
	}
	// The deposed primary's push is refused and it stops taking writes.
	if _, err := a.Push(ctx, "vol", "b", PushOptions{}); !errors.Is(err, ErrFenced) {
		t.Fatalf("push from the deposed primary: %v, want ErrFenced", err)
	}
	if err := a.Write(ctx, "vol", lost, 8*bs); !errors.Is(err, ErrFenced) {
		t.Fatalf("write at the deposed primary: %v, want ErrFenced", err)
	}
	// The new primary writes and ships to the old one, which becomes its
	// mirror; a's unshipped write loses but is kept.
	fresh := bytes.Repeat([]byte{0x5A}, bs)
	if err := b.Write(ctx, "vol", fresh, 9*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Push(ctx, "vol", "a", PushOptions{}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("a.img"), c.path("b.img"))
	cs, err := ReadConflicts(c.path("a.img") + ".pmr")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Block != 7 || !bytes.Equal(cs[0].Data, lost) || cs[0].Loser.Site != SiteID("a") {
		t.Fatalf("conflict log has %d entries (first: block %d, loser %s): want block 7's losing write from a", len(cs), cs[0].Block, cs[0].Loser)
	}
	if av, _ := a.Volume("vol"); av.Role() != RoleMirror {
		t.Fatalf("deposed primary has role %s", av.Role())
	}
}

func TestQuorumWritesAndReads(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	makeImage(t, c.path("a.img"), 512, bs, 1)
	a := c.start("a", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("a.img"), Role: RolePrimary,
		Mirrors: []MirrorConfig{{Peer: "b"}, {Peer: "c"}}, WriteQuorum: 3, ReadQuorum: 2}}, Peers: c.peers("b", "c")})
	c.start("b", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("b.img")}}})
	c.start("c", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("c.img")}}})
	ctx := context.Background()
	for _, p := range []string{"b", "c"} {
		if _, err := a.Push(ctx, "vol", p, PushOptions{Mode: ModeFull}); err != nil {
			t.Fatal(err)
		}
	}
	data := bytes.Repeat([]byte{0xC3}, bs)
	if err := a.Write(ctx, "vol", data, 100*bs); err != nil {
		t.Fatal(err)
	}
	// Acknowledged by all three copies: the mirrors hold it already.
	for _, p := range []string{"b.img", "c.img"} {
		got := make([]byte, bs)
		f, _ := os.Open(c.path(p))
		f.ReadAt(got, 100*bs)
		f.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("%s lacks the acknowledged write", p)
		}
	}
	got := make([]byte, bs)
	if err := a.Read(ctx, "vol", got, 100*bs); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("quorum read: %v", err)
	}
	c.stop("c")
	err := a.Write(ctx, "vol", data, 101*bs)
	if !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "2 of 3") {
		t.Fatalf("write with one of three copies down: %v, want ErrNoQuorum (2 of 3)", err)
	}
	// R = 2 still answers with b up.
	if err := a.Read(ctx, "vol", got, 101*bs); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("quorum read with c down: %v", err)
	}
}

// TestCorruptBlockRejected flips a bit in block data after the sender
// checksummed it (the frame checksum is computed after, so only the block
// checksum can catch it): the receiver rejects the frame and applies
// nothing of it; a clean retry converges.
func TestCorruptBlockRejected(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	var corrupt sync.Once
	hook := func(b []byte) { corrupt.Do(func() { b[len(b)/2] ^= 4 }) }
	src := c.startWith("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")},
		func(n *Node) { n.hooks.corrupt = hook })
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("push with a corrupted block: %v, want ErrCorrupt", err)
	}
	if dv, _ := dst.Volume("vol"); dv.Status().FullNext != 0 {
		t.Fatalf("mirror advanced to block %d despite the corrupt frame", dv.Status().FullNext)
	}
	res, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
	// A corrupt block inside a delta cycle: the cycle is not applied.
	sv, _ := src.Volume("vol")
	if _, err := sv.WriteAt(bytes.Repeat([]byte{1}, bs), 3*bs); err != nil {
		t.Fatal(err)
	}
	waitCycle(t, dst, "vol", res.Cycle)
	before, _ := os.ReadFile(c.path("dst.img"))
	corrupt = sync.Once{}
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("delta with a corrupted block: %v, want ErrCorrupt", err)
	}
	after, _ := os.ReadFile(c.path("dst.img"))
	if !bytes.Equal(before, after) {
		t.Fatal("a rejected cycle changed the mirror")
	}
	corrupt.Do(func() {})
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// TestRejectionWinsOverCancellation forces the interleaving that made
// TestCorruptBlockRejected flaky on a loaded machine: the mirror rejects
// a delta cycle's corrupt block and the sender's frame reader cancels the
// session before the sender starts waiting for the commit. The caller
// must still get the mirror's reason, every time.
func TestRejectionWinsOverCancellation(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 256, bs, 1)
	var corrupt atomic.Bool
	src := c.startWith("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}}, Peers: c.peers("dst")},
		func(n *Node) {
			n.hooks.corrupt = func(b []byte) {
				if corrupt.Load() {
					b[len(b)/2] ^= 4
				}
			}
			n.hooks.committed = func(ctx context.Context) {
				if !corrupt.Load() {
					return
				}
				// Arrive at the wait only once the reader has cancelled.
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
					t.Error("the mirror's rejection did not end the session")
				}
			}
		})
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sv, _ := src.Volume("vol")
	corrupt.Store(true)
	// Each round would pass by luck half the time if the cancellation
	// could win; twelve rounds make that a 1-in-4096 chance.
	for round := range 12 {
		if _, err := sv.WriteAt(bytes.Repeat([]byte{byte(round + 1)}, bs), 5*bs); err != nil {
			t.Fatal(err)
		}
		_, err := src.Push(ctx, "vol", "dst", PushOptions{})
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("round %d: delta with a corrupted block: %v, want ErrCorrupt", round, err)
		}
	}
	corrupt.Store(false)
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// TestVerdict pins the precedence a failed push session reports: the
// peer's reason, then the caller's cancellation, then the local error.
func TestVerdict(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	peer := fmt.Errorf("%w: remote says no", ErrCorrupt)
	local := errors.New("local failure")
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	broken := &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}
	for _, tc := range []struct {
		name          string
		parent        context.Context
		local, remote error
		want          error
	}{
		{"peer error over own cancellation", live, context.Canceled, peer, ErrCorrupt},
		{"peer error over broken pipe", live, broken, peer, ErrCorrupt},
		{"peer error over caller cancellation", cancelled, broken, peer, ErrCorrupt},
		{"caller cancellation over closed link", cancelled, closed, closed, context.Canceled},
		{"caller cancellation, reader cancelled", cancelled, nil, context.Canceled, context.Canceled},
		{"local error when reader only saw teardown", live, local, closed, local},
		{"local error when the reader said nothing", live, local, nil, local},
		{"reader error alone", live, nil, peer, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := verdict(tc.parent, tc.local, tc.remote); !errors.Is(got, tc.want) {
				t.Fatalf("verdict = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSettleWaitsForReaderOnBrokenLink: after a write to a connection the
// peer closed, the reader's result is waited for however late it comes
// (it must come: the connection is dead), so no timer decides the reason.
func TestSettleWaitsForReaderOnBrokenLink(t *testing.T) {
	remote := make(chan error, 1)
	broken := &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}
	got := make(chan error, 1)
	go func() { got <- settle(context.Background(), broken, remote) }()
	select {
	case err := <-got:
		t.Fatalf("settle returned %v before the reader reported", err)
	case <-time.After(peerErrorGrace + 200*time.Millisecond):
	}
	remote <- fmt.Errorf("%w: late", ErrNoSpace)
	if err := <-got; !errors.Is(err, ErrNoSpace) {
		t.Fatalf("settle = %v, want the reader's ErrNoSpace", err)
	}
}

// TestFlippedBitOnTheWire runs a full copy through a proxy that flips one
// bit of the encrypted stream: TLS rejects the record, the session fails,
// and the retry converges.
func TestFlippedBitOnTheWire(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 1024, bs, 1)
	proxy := flipProxy(t, c.addrs["dst"], 200<<10)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: []PeerConfig{{Name: "dst", Addr: proxy, ServerName: "127.0.0.1"}}})
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	ctx := context.Background()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err == nil {
		t.Fatal("push through a bit-flipping link succeeded")
	}
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

// flipProxy forwards to target and flips one bit at offset `at` of the
// first connection's client-to-server stream.
func flipProxy(t *testing.T, target string, at int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	first := true
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cl, err := ln.Accept()
			if err != nil {
				return
			}
			srv, err := net.Dial("tcp", target)
			if err != nil {
				cl.Close()
				continue
			}
			flip := first
			first = false
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer srv.Close()
				buf := make([]byte, 32<<10)
				n := 0
				for {
					k, err := cl.Read(buf)
					if k > 0 {
						if flip && n <= at && at < n+k {
							buf[at-n] ^= 1
						}
						n += k
						if _, werr := srv.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				defer cl.Close()
				io.Copy(cl, srv)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestResumeFullCopy(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 4096, bs, 1) // 16 MiB
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: []PeerConfig{{Name: "dst", Addr: c.addrs["dst"], Schedule: "4MiB"}}})
	dst := c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	interruptFullCopy(t, src, dst)
	res, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.ResumeFrom == 0 {
		t.Fatalf("second push %+v: want a resumed copy", res)
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

func TestScheduleChangeUnblocksPush(t *testing.T) {
	c := newCluster(t, "src", "dst")
	makeImage(t, c.path("src.img"), 512, bs, 1)
	src := c.start("src", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("src.img"), Role: RolePrimary}},
		Peers: []PeerConfig{{Name: "dst", Addr: c.addrs["dst"], Schedule: "0"}}}) // paused
	c.start("dst", Config{Volumes: []VolumeConfig{{Name: "vol", Path: c.path("dst.img")}}})
	done := make(chan error, 1)
	go func() {
		_, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("push finished while paused: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	src.SetSchedule("dst", throttle.Fixed(throttle.Unlimited))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("push still blocked after the schedule was lifted")
	}
	sameFile(t, c.path("src.img"), c.path("dst.img"))
}

func TestMetricsLint(t *testing.T) {
	c, src, _, _ := twoNodes(t, 256, nil)
	if _, err := src.Push(context.Background(), "vol", "dst", PushOptions{Mode: ModeFull}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := src.metrics.register(reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(reg, "replicator_transfer_done_bytes", "replicator_dirty_blocks", "replicator_sent_bytes_total")
	if err != nil || n == 0 {
		t.Fatalf("progress and tracking metrics missing: %d %v", n, err)
	}
	_ = c
}
