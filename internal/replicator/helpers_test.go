package replicator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator/throttle"
	"github.com/premirror/premirror/internal/testnet"
)

// testCA issues certificates for test nodes; one per test binary.
var (
	testCAOnce sync.Once
	testCA     *pki.CA
	testCAErr  error
)

// certs writes a CA and leaf certificates for names into dir.
func certs(t testing.TB, dir string, names ...string) map[string]pki.Files {
	t.Helper()
	testCAOnce.Do(func() { testCA, testCAErr = pki.NewCA("premirror-test", 24*time.Hour) })
	if testCAErr != nil {
		t.Fatal(testCAErr)
	}
	out := map[string]pki.Files{}
	for _, n := range names {
		leaf, err := testCA.Issue(n, []string{"127.0.0.1", "localhost"}, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pki.WriteLeaf(filepath.Join(dir, "tls"), n, testCA, leaf)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = f
	}
	return out
}

func quietLogger() *slog.Logger {
	if os.Getenv("PREMIRROR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cluster is a set of in-process nodes on loopback.
type cluster struct {
	t     *testing.T
	dir   string
	tls   map[string]pki.Files
	addrs map[string]string
	lns   map[string]net.Listener // opened, not yet served
	nodes map[string]*Node
	stops map[string]func()
}

func newCluster(t *testing.T, names ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, tls: certs(t, dir, names...), addrs: map[string]string{},
		lns: map[string]net.Listener{}, nodes: map[string]*Node{}, stops: map[string]func(){}}
	for _, n := range names {
		// Below the ephemeral range: a stopped node's port must still be
		// free when start brings it back.
		ln, err := testnet.Listen("tcp", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		c.lns[n] = ln
		c.addrs[n] = ln.Addr().String()
	}
	t.Cleanup(func() {
		for n := range c.stops {
			c.stop(n)
		}
		for _, ln := range c.lns {
			ln.Close()
		}
	})
	return c
}

// peers returns PeerConfigs for the named nodes.
func (c *cluster) peers(names ...string) []PeerConfig {
	var out []PeerConfig
	for _, n := range names {
		out = append(out, PeerConfig{Name: n, Addr: c.addrs[n]})
	}
	return out
}

// start creates and serves node name with cfg (Node, TLS, logger filled).
func (c *cluster) start(name string, cfg Config) *Node {
	c.t.Helper()
	return c.startWith(name, cfg, nil)
}

// startWith is start with a chance to adjust the node before it serves.
func (c *cluster) startWith(name string, cfg Config, adjust func(*Node)) *Node {
	c.t.Helper()
	cfg.Node = name
	cfg.TLS = c.tls[name]
	if cfg.Logger == nil {
		cfg.Logger = quietLogger().With("node", name)
	}
	n, err := NewNode(cfg)
	if err != nil {
		c.t.Fatalf("NewNode(%s): %v", name, err)
	}
	if adjust != nil {
		adjust(n)
	}
	ln := c.lns[name]
	delete(c.lns, name)
	if ln == nil {
		if ln, err = testnet.Relisten("tcp", c.addrs[name], 5*time.Second); err != nil {
			c.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Serve(ctx, ln)
	}()
	c.nodes[name] = n
	c.stops[name] = func() {
		cancel()
		<-done
		n.Close()
	}
	return n
}

// stop shuts node name down; start brings it back on the same address.
func (c *cluster) stop(name string) {
	if s := c.stops[name]; s != nil {
		s()
		delete(c.stops, name)
		delete(c.nodes, name)
	}
}

func (c *cluster) path(name string) string { return filepath.Join(c.dir, name) }

// makeImage writes a test image: random blocks, all-zero blocks, a hole,
// and compressible blocks, so every encoding path runs.
func makeImage(t testing.TB, path string, blocks, bs int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	data := make([]byte, blocks*bs)
	for b := 0; b < blocks; b++ {
		blk := data[b*bs : (b+1)*bs]
		switch {
		case b%7 == 3: // zero
		case b%5 == 1: // compressible text-like
			for i := range blk {
				blk[i] = "abcdefgh "[rng.IntN(9)]
			}
		default:
			fillRandom(rng, blk)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Write everything but the last quarter's first half, which stays a hole.
	holeLo, holeHi := blocks*3/4, blocks*7/8
	if _, err := f.WriteAt(data[:holeLo*bs], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[holeHi*bs:], int64(holeHi*bs)); err != nil {
		t.Fatal(err)
	}
	clear(data[holeLo*bs : holeHi*bs])
	if err := f.Truncate(int64(blocks * bs)); err != nil {
		t.Fatal(err)
	}
	return data
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		x := rng.Uint64()
		b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24), byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56)
	}
}

// sameFile fails unless the two images hold the same bytes. A mirror
// acknowledges a cycle once it is durable and applies it right after, so
// the comparison retries for a few seconds.
func sameFile(t testing.TB, a, b string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg := compareFiles(a, b)
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func compareFiles(a, b string) string {
	da, err := os.ReadFile(a)
	if err != nil {
		return err.Error()
	}
	db, err := os.ReadFile(b)
	if err != nil {
		return err.Error()
	}
	if len(da) != len(db) {
		return fmt.Sprintf("%s has %d bytes, %s has %d", a, len(da), b, len(db))
	}
	if !bytes.Equal(da, db) {
		for i := range da {
			if da[i] != db[i] {
				return fmt.Sprintf("%s and %s differ first at byte %d (block %d)", a, b, i, i/4096)
			}
		}
	}
	return ""
}

// waitCycle waits until the mirror volume has applied cycle.
func waitCycle(t testing.TB, n *Node, volume string, cycle uint64) *Volume {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := n.Volume(volume)
		if err == nil && v.Status().Cycle >= cycle {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror %s did not apply cycle %d", volume, cycle)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeRandomBlocks rewrites k random blocks (some more than once)
// through the tracked path and returns the distinct blocks written.
func writeRandomBlocks(t testing.TB, v *Volume, rng *rand.Rand, k int) map[uint64]bool {
	t.Helper()
	touched := map[uint64]bool{}
	buf := make([]byte, v.BlockSize())
	for i := 0; i < k; i++ {
		b := rng.Uint64N(v.Blocks())
		if i%4 == 3 && len(touched) > 0 {
			for tb := range touched { // rewrite one already written
				b = tb
				break
			}
		}
		fillRandom(rng, buf)
		if _, err := v.WriteAt(buf, int64(b)*int64(v.BlockSize())); err != nil {
			t.Fatal(err)
		}
		touched[b] = true
	}
	return touched
}

// interruptFullCopy starts a full copy of vol from src to dst, cancels it
// once dst has acknowledged a checkpoint (src's schedule to dst must be
// slow enough for that), then lifts the schedule: the copy can resume.
func interruptFullCopy(t *testing.T, src, dst *Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if dv, err := dst.Volume("vol"); err == nil && dv.Status().FullNext > 0 {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if _, err := src.Push(ctx, "vol", "dst", PushOptions{Mode: ModeFull}); err == nil {
		t.Fatal("interrupted copy reported success")
	}
	cancel()
	if err := src.SetSchedule("dst", throttle.Fixed(throttle.Unlimited)); err != nil {
		t.Fatal(err)
	}
}
