package replicator

// Child processes for the crash tests: the test binary re-executes itself
// with PREMIRROR_REPLICATOR_CHILD set to "sender" or "receiver", and the
// parent kills them with SIGKILL at random points.

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/pki"
)

const childEnv = "PREMIRROR_REPLICATOR_CHILD"

// Environment of a child.
const (
	envDir  = "PREMIRROR_CHILD_DIR"  // working directory shared with the parent
	envAddr = "PREMIRROR_CHILD_ADDR" // the receiver's listen address
	envSeed = "PREMIRROR_CHILD_SEED"
)

func runChild(role string) int {
	dir := os.Getenv(envDir)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch role {
	case "receiver":
		err = childReceiver(ctx, dir)
	case "sender":
		err = childSender(ctx, dir)
	default:
		err = fmt.Errorf("unknown child role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
		return 1
	}
	return 0
}

func childTLS(dir, name string) pki.Files {
	d := filepath.Join(dir, "tls")
	return pki.Files{CA: filepath.Join(d, "ca.pem"), Cert: filepath.Join(d, name+".pem"), Key: filepath.Join(d, name+"-key.pem")}
}

// appendLog is a line log that survives SIGKILL of its writer: every line
// is one write system call to an O_APPEND file.
type appendLog struct {
	mu sync.Mutex
	f  *os.File
}

func openAppendLog(path string) (*appendLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &appendLog{f: f}, nil
}

func (l *appendLog) write(s string) {
	l.mu.Lock()
	l.f.WriteString(s)
	l.mu.Unlock()
}

// childReceiver serves the mirror and logs, for the parent's check that no
// acknowledged block is ever sent again, every data block it receives
// ("R block version") and every block it made durable before acknowledging
// ("D block version").
func childReceiver(ctx context.Context, dir string) error {
	hl, err := openAppendLog(filepath.Join(dir, "receiver.log"))
	if err != nil {
		return err
	}
	n, err := NewNode(Config{Node: "dst", Listen: os.Getenv(envAddr), TLS: childTLS(dir, "dst"), Logger: quietLogger(),
		Volumes: []VolumeConfig{{Name: "vol", Path: filepath.Join(dir, "dst.img")}}})
	if err != nil {
		return err
	}
	n.hooks.received = func(_ string, b uint64, v Version) { hl.write(fmt.Sprintf("R %d %s\n", b, v)) }
	n.hooks.durable = func(_ string, bvs []blockVer) {
		var sb strings.Builder
		for _, bv := range bvs {
			fmt.Fprintf(&sb, "D %d %s\n", bv.block, bv.ver)
		}
		hl.write(sb.String())
	}
	err = n.Run(ctx)
	n.Close()
	return err
}

// childSender writes random blocks and pushes cycles until the parent
// creates the file "stop"; then it makes one last push and exits. Before
// each cycle it logs the cycle number and a hash of the whole source
// image (writes and cycles alternate, so that is the snapshot's content).
func childSender(ctx context.Context, dir string) error {
	cl, err := openAppendLog(filepath.Join(dir, "cycles.log"))
	if err != nil {
		return err
	}
	src := filepath.Join(dir, "src.img")
	n, err := NewNode(Config{Node: "src", TLS: childTLS(dir, "src"), Logger: quietLogger(),
		Volumes: []VolumeConfig{{Name: "vol", Path: src, Role: RolePrimary, Mirrors: []MirrorConfig{{Peer: "dst"}}}},
		Peers:   []PeerConfig{{Name: "dst", Addr: os.Getenv(envAddr)}}})
	if err != nil {
		return err
	}
	defer n.Close()
	n.hooks.onCycle = func(_ string, cycle uint64) {
		data, err := os.ReadFile(src)
		if err != nil {
			panic(err)
		}
		cl.write(fmt.Sprintf("%d %x\n", cycle, xxhash.Sum64(data)))
	}
	v, err := n.Volume("vol")
	if err != nil {
		return err
	}
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	rng := rand.New(rand.NewPCG(seed, uint64(os.Getpid())))
	buf := make([]byte, v.BlockSize())
	for ctx.Err() == nil {
		_, statErr := os.Stat(filepath.Join(dir, "stop"))
		stopping := statErr == nil
		if !stopping {
			for i := 0; i < 48; i++ {
				b := rng.Uint64N(v.Blocks())
				fillRandom(rng, buf)
				if _, err := v.WriteAt(buf, int64(b)*int64(v.BlockSize())); err != nil {
					return err
				}
			}
		}
		for ctx.Err() == nil {
			if _, err := n.Push(ctx, "vol", "dst", PushOptions{}); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if stopping {
			return nil
		}
	}
	return nil
}

// readLines returns the complete lines of a log file.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out, sc.Err()
}
