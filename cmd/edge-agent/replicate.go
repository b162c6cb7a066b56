package main

// `edge-agent replicate ...` drives the replicator by hand: initialize a
// volume, serve volumes as a mirror, push full/delta/selective copies,
// verify with Merkle trees, promote, inspect state. `edge-agent run`
// embeds the same replicator.Node.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator"
	"github.com/premirror/premirror/internal/replicator/throttle"
)

func init() {
	commands.Register(cli.Command{Name: "replicate", Summary: "replicate volumes by hand (init, serve, push, verify, status, promote, write, dev-certs)", Run: runReplicate})
}

// stdout is where results go; tests replace it.
var stdout io.Writer = os.Stdout

var replicateSubs = map[string]struct {
	summary string
	run     func(ctx context.Context, args []string) error
}{
	"init":      {"initialize an image as a primary volume", replicateInit},
	"serve":     {"serve volumes as mirrors (and upstreams) until interrupted", replicateServe},
	"push":      {"push a full, delta or selective copy to a peer", replicatePush},
	"verify":    {"compare with a peer's copy by Merkle tree; --repair fixes it", replicateVerify},
	"status":    {"show a local volume's state", replicateStatus},
	"promote":   {"make a volume the primary at a new epoch (fences the old one)", replicatePromote},
	"write":     {"write random blocks through the tracked path (tests, benchmarks)", replicateWrite},
	"dev-certs": {"create a development CA and node certificates", replicateDevCerts},
}

func runReplicate(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stdout, "usage: edge-agent replicate <command> [flags]\n\ncommands:")
		for _, n := range []string{"init", "serve", "push", "verify", "status", "promote", "write", "dev-certs"} {
			fmt.Fprintf(stdout, "  %-10s %s\n", n, replicateSubs[n].summary)
		}
		if len(args) == 0 {
			return fmt.Errorf("%w: replicate needs a command", cli.ErrUsage)
		}
		return nil
	}
	sub, ok := replicateSubs[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown replicate command %q", cli.ErrUsage, args[0])
	}
	return sub.run(ctx, args[1:])
}

// tlsFlags are the mutual-TLS material of this node.
type tlsFlags struct {
	dir, node, ca, cert, key string
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.dir, "tls-dir", "", "directory with ca.pem, NODE.pem and NODE-key.pem (as dev-certs writes)")
	fs.StringVar(&t.node, "node", "", "this node's name (its certificate's common name)")
	fs.StringVar(&t.ca, "ca", "", "CA certificate (overrides --tls-dir)")
	fs.StringVar(&t.cert, "cert", "", "node certificate (overrides --tls-dir)")
	fs.StringVar(&t.key, "key", "", "node key (overrides --tls-dir)")
}

func (t *tlsFlags) files() (pki.Files, error) {
	if t.node == "" {
		return pki.Files{}, fmt.Errorf("%w: --node is required", cli.ErrUsage)
	}
	f := pki.Files{CA: t.ca, Cert: t.cert, Key: t.key}
	if t.dir != "" {
		if f.CA == "" {
			f.CA = filepath.Join(t.dir, "ca.pem")
		}
		if f.Cert == "" {
			f.Cert = filepath.Join(t.dir, t.node+".pem")
		}
		if f.Key == "" {
			f.Key = filepath.Join(t.dir, t.node+"-key.pem")
		}
	}
	if err := f.Validate(); err != nil {
		return f, fmt.Errorf("%w: %v (give --tls-dir or --ca/--cert/--key)", cli.ErrUsage, err)
	}
	return f, nil
}

// parsePeer reads NAME@HOST:PORT.
func parsePeer(s string) (replicator.PeerConfig, error) {
	name, addr, ok := strings.Cut(s, "@")
	if !ok || name == "" || addr == "" {
		return replicator.PeerConfig{}, fmt.Errorf("%w: peer %q: want NAME@HOST:PORT", cli.ErrUsage, s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return replicator.PeerConfig{}, fmt.Errorf("%w: peer %q: %v", cli.ErrUsage, s, err)
	}
	return replicator.PeerConfig{Name: name, Addr: addr}, nil
}

func logger(debug bool) *slog.Logger {
	lvl := slog.LevelWarn
	if debug {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func printJSON(v any) error {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func replicateInit(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "init")
	image := fs.String("image", "", "image file or block device (required)")
	meta := fs.String("meta", "", "metadata directory (default IMAGE.pmr)")
	bsz := fs.Int("block-size", replicator.DefaultBlockSize, "block size in bytes")
	size := fs.String("size", "", "create the image with this size if missing (e.g. 1GiB)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *image == "" {
		return fmt.Errorf("%w: --image is required", cli.ErrUsage)
	}
	var n int64
	if *size != "" {
		r, err := throttle.ParseRate(*size)
		if err != nil || r <= 0 {
			return fmt.Errorf("%w: --size %q: want a byte count such as 1GiB", cli.ErrUsage, *size)
		}
		n = r
	}
	v, err := replicator.OpenVolume(*image, replicator.VolumeOptions{MetaDir: *meta, Init: true, BlockSize: *bsz, Size: n, Logger: logger(false)})
	if err != nil {
		return err
	}
	st := v.Status()
	if err := v.Close(); err != nil {
		return err
	}
	return printJSON(st)
}

// volumeFlag collects NAME=PATH[,upstream=PEER][,primary].
type volumeFlag []replicator.VolumeConfig

func (v *volumeFlag) String() string { return fmt.Sprint(len(*v), " volumes") }

func (v *volumeFlag) Set(s string) error {
	parts := strings.Split(s, ",")
	name, path, ok := strings.Cut(parts[0], "=")
	if !ok || name == "" || path == "" {
		return fmt.Errorf("volume %q: want NAME=PATH[,upstream=PEER][,primary]", s)
	}
	vc := replicator.VolumeConfig{Name: name, Path: path, Role: replicator.RoleMirror}
	for _, p := range parts[1:] {
		k, val, _ := strings.Cut(p, "=")
		switch k {
		case "upstream":
			vc.Upstream = val
		case "primary":
			vc.Role = replicator.RolePrimary
		case "meta":
			vc.MetaDir = val
		default:
			return fmt.Errorf("volume %q: unknown option %q", s, k)
		}
	}
	*v = append(*v, vc)
	return nil
}

// peerFlag collects NAME@HOST:PORT.
type peerFlag []replicator.PeerConfig

func (p *peerFlag) String() string { return fmt.Sprint(len(*p), " peers") }

func (p *peerFlag) Set(s string) error {
	pc, err := parsePeer(s)
	if err != nil {
		return err
	}
	*p = append(*p, pc)
	return nil
}

func replicateServe(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "serve")
	var t tlsFlags
	t.register(fs)
	listen := fs.String("listen", "127.0.0.1:7420", "replication listen address")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this address (/metrics)")
	debug := fs.Bool("debug", false, "debug logging")
	var vols volumeFlag
	var peers peerFlag
	fs.Var(&vols, "volume", "NAME=PATH[,upstream=PEER][,primary] (repeatable)")
	fs.Var(&peers, "peer", "NAME@HOST:PORT of an upstream (repeatable)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	files, err := t.files()
	if err != nil {
		return err
	}
	if len(vols) == 0 {
		return fmt.Errorf("%w: at least one --volume is required", cli.ErrUsage)
	}
	reg := prometheus.NewRegistry()
	node, err := replicator.NewNode(replicator.Config{Node: t.node, Listen: *listen, TLS: files, Volumes: vols, Peers: peers,
		Registerer: reg, Logger: logger(*debug).With("node", t.node)})
	if err != nil {
		return err
	}
	defer node.Close()
	if *metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.ListenAndServe()
		defer srv.Close()
	}
	fmt.Fprintf(os.Stderr, "replicator %s serving %d volume(s) on %s\n", t.node, len(vols), *listen)
	return node.Run(ctx)
}

// peerCmd holds the flags push and verify share: this node, its local
// image, and the peer.
type peerCmd struct {
	tls                       tlsFlags
	image, meta, peer, volume string
	asJSON, debug             bool
}

func (c *peerCmd) register(fs *flag.FlagSet) {
	c.tls.register(fs)
	fs.StringVar(&c.image, "image", "", "local image (required)")
	fs.StringVar(&c.meta, "meta", "", "metadata directory (default IMAGE.pmr)")
	fs.StringVar(&c.peer, "peer", "", "NAME@HOST:PORT of the mirror (required)")
	fs.StringVar(&c.volume, "volume", "vol", "volume name at the peer")
	fs.BoolVar(&c.asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&c.debug, "debug", false, "debug logging")
}

// node validates the flags and builds the local node; schedule, when
// set, limits the link to the peer.
func (c *peerCmd) node(schedule string) (*replicator.Node, replicator.PeerConfig, error) {
	if c.image == "" || c.peer == "" {
		return nil, replicator.PeerConfig{}, fmt.Errorf("%w: --image and --peer are required", cli.ErrUsage)
	}
	files, err := c.tls.files()
	if err != nil {
		return nil, replicator.PeerConfig{}, err
	}
	pc, err := parsePeer(c.peer)
	if err != nil {
		return nil, pc, err
	}
	pc.Schedule = schedule
	// The node would initialize an image without metadata as a new
	// primary (a typo'd --image, the wrong device) and push it over the
	// mirror's copy: only an initialized volume is pushed or verified.
	v, err := replicator.OpenVolume(c.image, replicator.VolumeOptions{MetaDir: c.meta, Logger: logger(c.debug)})
	if err != nil {
		return nil, pc, fmt.Errorf("--image %s: %w (replicate init creates a primary)", c.image, err)
	}
	if err := v.Close(); err != nil {
		return nil, pc, err
	}
	n, err := localNode(c.image, c.meta, c.volume, pc, files, c.tls.node, c.debug)
	return n, pc, err
}

// localNode builds a Node around one local volume and one peer.
func localNode(image, meta, volName string, peer replicator.PeerConfig, files pki.Files, node string, debug bool) (*replicator.Node, error) {
	return replicator.NewNode(replicator.Config{Node: node, TLS: files, Logger: logger(debug).With("node", node),
		Volumes: []replicator.VolumeConfig{{Name: volName, Path: image, MetaDir: meta, Role: replicator.RolePrimary}},
		Peers:   []replicator.PeerConfig{peer}})
}

// parseExtents reads START:LENGTH[,...] in bytes (units allowed), rounded
// out to whole blocks.
func parseExtents(s string, bs int) ([]replicator.Extent, error) {
	var out []replicator.Extent
	if s == "" {
		return nil, nil
	}
	for _, item := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(item, ":")
		start, err1 := throttle.ParseRate(a)
		n, err2 := throttle.ParseRate(b)
		if !ok || err1 != nil || err2 != nil || start < 0 || n <= 0 {
			return nil, fmt.Errorf("%w: extent %q: want START:LENGTH in bytes (units allowed)", cli.ErrUsage, item)
		}
		first := uint64(start) / uint64(bs)
		last := (uint64(start+n) + uint64(bs) - 1) / uint64(bs)
		out = append(out, replicator.Extent{Start: first, Count: last - first})
	}
	return out, nil
}

// progressPrinter draws a progress bar when stdout is a terminal.
func progressPrinter(enabled bool) func(replicator.Progress) {
	if !enabled {
		return nil
	}
	return func(p replicator.Progress) {
		frac := 1.0
		if p.Total > 0 {
			frac = float64(p.Done) / float64(p.Total)
		}
		const width = 30
		fill := int(frac * width)
		bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
		eta := "-"
		if p.ETA > 0 {
			eta = p.ETA.Round(time.Second).String()
		}
		fmt.Fprintf(stdout, "\r%-9s [%s] %5.1f%% %9s/%-9s %9s/s ETA %-6s", p.Mode, bar, 100*frac,
			human(p.Done), human(p.Total), human(int64(p.Rate)), eta)
		if p.Finished {
			fmt.Fprintln(stdout)
		}
	}
}

func human(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 || u == "TiB" {
			if u == "B" {
				return strconv.FormatInt(n, 10) + u
			}
			return strconv.FormatFloat(f, 'f', 1, 64) + u
		}
		f /= 1024
	}
	return ""
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func replicatePush(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "push")
	var pcmd peerCmd
	pcmd.register(fs)
	mode := fs.String("mode", "delta", "full, delta or selective")
	extents := fs.String("extents", "", "selective: START:LENGTH[,...] byte ranges")
	hot := fs.Int("hot", 0, "selective: also the N most-read 4 MiB extents")
	restart := fs.Bool("restart", false, "full: start over instead of resuming")
	schedule := fs.String("schedule", "", "bandwidth schedule, e.g. 'unlimited; mon-fri 08:00-20:00 20MiB'")
	rate := fs.String("rate", "", "fixed bandwidth limit, e.g. 50MiB (shorthand for --schedule)")
	comp := fs.String("compression", "auto", "auto, off or always")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *rate != "" {
		*schedule = *rate
	}
	c, err := replicator.ParseCompression(*comp)
	if err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	node, pc, err := pcmd.node(*schedule)
	if err != nil {
		return err
	}
	defer node.Close()
	v, err := node.Volume(pcmd.volume)
	if err != nil {
		return err
	}
	ext, err := parseExtents(*extents, v.BlockSize())
	if err != nil {
		return err
	}
	res, err := node.Push(ctx, pcmd.volume, pc.Name, replicator.PushOptions{Mode: replicator.Mode(*mode), Extents: ext,
		HotExtents: *hot, Restart: *restart, Compression: c, OnProgress: progressPrinter(!pcmd.asJSON && isTerminal(stdout))})
	if err != nil {
		return err
	}
	if pcmd.asJSON {
		return printJSON(res)
	}
	if res.Full {
		fmt.Fprintf(stdout, "copy: %d data blocks, %d zero blocks skipped, from block %d (resumed %v) in %s\n",
			res.FullDataBlks, res.ZeroBlocks, res.ResumeFrom, res.Resumed, res.FullDuration.Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "cycle %d: %d blocks, %d sent, %d already held, in %s; %s on the wire\n",
		res.Cycle, res.CycleEntries, res.CycleSent, res.CycleHeld, res.CycleDuration.Round(time.Millisecond), human(res.WireBytes))
	return nil
}

func replicateVerify(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "verify")
	var pcmd peerCmd
	pcmd.register(fs)
	repair := fs.Bool("repair", false, "send differing blocks so the mirror matches")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	node, pc, err := pcmd.node("")
	if err != nil {
		return err
	}
	defer node.Close()
	res, err := node.Verify(ctx, pcmd.volume, pc.Name, replicator.VerifyOptions{Repair: *repair})
	if err != nil {
		return err
	}
	if pcmd.asJSON {
		return printJSON(res)
	}
	fmt.Fprintf(stdout, "verify: %d blocks compared, %d differ, repaired %v, in %s\n", res.Blocks, len(res.Differ), res.Repaired, res.Duration.Round(time.Millisecond))
	return nil
}

// localVolume is --image and --meta: a volume opened directly.
type localVolume struct{ image, meta string }

func (l *localVolume) register(fs *flag.FlagSet) {
	fs.StringVar(&l.image, "image", "", "local image (required)")
	fs.StringVar(&l.meta, "meta", "", "metadata directory (default IMAGE.pmr)")
}

func (l *localVolume) open() (*replicator.Volume, error) {
	if l.image == "" {
		return nil, fmt.Errorf("%w: --image is required", cli.ErrUsage)
	}
	return replicator.OpenVolume(l.image, replicator.VolumeOptions{MetaDir: l.meta, Logger: logger(false)})
}

func replicateStatus(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "status")
	var lv localVolume
	lv.register(fs)
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	v, err := lv.open()
	if err != nil {
		return err
	}
	defer v.Close()
	return printJSON(v.Status())
}

func replicatePromote(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "promote")
	var lv localVolume
	lv.register(fs)
	epoch := fs.Uint64("epoch", 0, "new epoch (default: this copy's epoch + 1; it must exceed every other copy's epoch to fence them)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	v, err := lv.open()
	if err != nil {
		return err
	}
	defer v.Close()
	e, err := v.Promote(*epoch)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "promoted %s to primary at epoch %d\n", lv.image, e)
	return nil
}

func replicateWrite(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "write")
	var lv localVolume
	lv.register(fs)
	fraction := fs.Float64("fraction", 0.01, "fraction of blocks to rewrite, chosen at random without repeats")
	seed := fs.Uint64("seed", 1, "random seed")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *fraction <= 0 || *fraction > 1 {
		return fmt.Errorf("%w: --fraction must be in (0, 1]", cli.ErrUsage)
	}
	v, err := lv.open()
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(*seed, 0x9e3779b97f4a7c15))
	n := int(float64(v.Blocks()) * *fraction)
	perm := rng.Perm(int(v.Blocks()))[:n]
	buf := make([]byte, v.BlockSize())
	for _, b := range perm {
		for i := 0; i < len(buf); i += 8 {
			x := rng.Uint64()
			for k := 0; k < 8 && i+k < len(buf); k++ {
				buf[i+k] = byte(x >> (8 * k))
			}
		}
		if _, err := v.WriteAt(buf, int64(b)*int64(v.BlockSize())); err != nil {
			v.Close()
			return err
		}
	}
	if err := v.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "changed_blocks=%d changed_bytes=%d\n", n, n*v.BlockSize())
	return nil
}

func replicateDevCerts(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("edge-agent replicate", "dev-certs")
	dir := fs.String("dir", "", "output directory (required)")
	names := fs.String("names", "", "comma-separated node names (required)")
	hosts := fs.String("hosts", "127.0.0.1,localhost", "comma-separated SANs for every certificate")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" || *names == "" {
		return fmt.Errorf("%w: --dir and --names are required", cli.ErrUsage)
	}
	for _, n := range strings.Split(*names, ",") {
		if err := pki.CheckLeafName(n); err != nil { // before anything is written
			return fmt.Errorf("%w: --names: %v", cli.ErrUsage, err)
		}
	}
	ca, err := pki.NewCA("premirror-dev", 365*24*time.Hour)
	if err != nil {
		return err
	}
	for _, n := range strings.Split(*names, ",") {
		leaf, err := ca.Issue(n, strings.Split(*hosts, ","), 365*24*time.Hour)
		if err != nil {
			return err
		}
		if _, err := pki.WriteLeaf(*dir, n, ca, leaf); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote CA and %d certificates to %s\n", len(strings.Split(*names, ",")), *dir)
	return nil
}
