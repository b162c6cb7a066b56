package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator"
	"github.com/premirror/premirror/internal/replicator/throttle"
)

// Replication configures the node's replicator (internal/replicator): the
// volumes it holds, the peers it mirrors them to, and the local socket
// through which writes enter the tracked path.
type Replication struct {
	Listen string   `yaml:"listen"` // replication listener, e.g. 0.0.0.0:7400; empty: push only
	TLS    TLSFiles `yaml:"tls"`
	Site   uint32   `yaml:"site"`
	// WriteSocket is the unix socket of the local volume API (PUT/GET
	// /v1/volumes/<name>?offset=…); default /run/premirror/volumes.sock.
	WriteSocket string `yaml:"write_socket"`
	// WriteUIDs may use the socket (checked with SO_PEERCRED); default [0].
	WriteUIDs []uint32    `yaml:"write_uids"`
	Volumes   []VolumeCfg `yaml:"volumes"`
	Peers     []PeerCfg   `yaml:"peers"`
	// TaskInterval is the delta-cycle interval of mirrors the
	// controller's replication tasks place; default DefaultTaskInterval.
	TaskInterval Duration `yaml:"task_interval"`
	// VolumeDir, when set, lets this node receive copies the controller
	// places on it without declaring them: a replication task naming this
	// node as target for a resource it holds no volume of creates a mirror
	// volume <volume_dir>/<resource>.img that only the sources of the
	// tasks placing it may write (for a selective copy, the source is
	// also its upstream and must be a peer; both follow a move of the
	// resource's origin). Empty: only declared volumes receive copies.
	VolumeDir string `yaml:"volume_dir"`
}

// TLSFiles names PEM files.
type TLSFiles struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// CRL (optional) lists certificates of the CA that are refused.
	// All four files are re-read when they change (a renewed
	// certificate, a new CRL), without a restart.
	CRL string `yaml:"crl"`
}

// Files are the pki form of the paths.
func (f TLSFiles) Files() pki.Files { return pki.Files{CA: f.CA, Cert: f.Cert, Key: f.Key, CRL: f.CRL} }

// VolumeCfg is one replicated volume.
type VolumeCfg struct {
	Name           string      `yaml:"name"`
	Path           string      `yaml:"path"`
	MetaDir        string      `yaml:"meta_dir"`
	Role           string      `yaml:"role"` // primary or mirror
	BlockSize      int         `yaml:"block_size"`
	WriteQuorum    int         `yaml:"write_quorum"`
	ReadQuorum     int         `yaml:"read_quorum"`
	AllowedPeers   []string    `yaml:"allowed_peers"`
	Upstream       string      `yaml:"upstream"`
	UpstreamVolume string      `yaml:"upstream_volume"`
	Mirrors        []MirrorCfg `yaml:"mirrors"`
}

// MirrorCfg is one downstream copy of a volume.
type MirrorCfg struct {
	Peer       string      `yaml:"peer"`
	Volume     string      `yaml:"volume"`
	Mode       string      `yaml:"mode"` // full (default) or selective
	Interval   Duration    `yaml:"interval"`
	Extents    [][2]uint64 `yaml:"extents"` // [first block, block count]
	HotExtents int         `yaml:"hot_extents"`
}

// PeerCfg is another replicator.
type PeerCfg struct {
	Name       string `yaml:"name"`
	Addr       string `yaml:"addr"`
	ServerName string `yaml:"server_name"`
	Schedule   string `yaml:"schedule"` // see throttle.ParseSchedule
	// LinkRate is the throughput the link carries when its schedule does
	// not limit it (a rate, see throttle.ParseRate); it sizes the start
	// plans of replication tasks with a deadline. Default DefaultLinkRate.
	LinkRate string `yaml:"link_rate"`
	// RateControl is the link's delay-based rate control; absent means
	// on with the defaults (see RateControlCfg).
	RateControl *RateControlCfg `yaml:"rate_control"`
}

// RateControlCfg configures delay-based (LEDBAT-style) rate control of a
// peer link: below the schedule's rate, copies go only as fast as keeps
// the queueing delay they add to the path near target_delay, never
// slower than min_rate (DRBD's c-min-rate). It is on by default: the
// WAN paths copies cross are shared with the users the mirrors serve,
// and an SRE expects a background copy to yield to them rather than to
// fill the path's buffers; a dedicated replication link turns it off.
type RateControlCfg struct {
	// Enabled: default true.
	Enabled *bool `yaml:"enabled"`
	// TargetDelay is the queueing delay aimed for; default 25ms.
	TargetDelay Duration `yaml:"target_delay"`
	// MinRate is the floor (a rate, see throttle.ParseRate); default 1MiB.
	MinRate string `yaml:"min_rate"`
}

// delayConfig returns the replicator's rate control configuration, nil
// when off. The configuration was validated.
func (r *RateControlCfg) delayConfig() (*throttle.DelayConfig, error) {
	if r == nil {
		return &throttle.DelayConfig{}, nil
	}
	if r.Enabled != nil && !*r.Enabled {
		return nil, nil
	}
	dc := &throttle.DelayConfig{Target: time.Duration(r.TargetDelay)}
	if r.MinRate != "" {
		v, err := throttle.ParseRate(r.MinRate)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("min_rate: %q: want a positive byte rate such as 1MiB or 8Mbit", r.MinRate)
		}
		dc.MinRate = v
	}
	if err := dc.Validate(); err != nil {
		return nil, fmt.Errorf("target_delay: %w", err)
	}
	return dc, nil
}

// checkSelection: extents and hot_extents select what a selective copy
// sends and are ignored by a full one, so either without mode selective
// is a mistake that would copy the whole volume; a selective copy that
// selects nothing would copy nothing.
func (m MirrorCfg) checkSelection() error {
	if m.HotExtents < 0 {
		return fmt.Errorf("hot_extents: %d is negative", m.HotExtents)
	}
	for i, e := range m.Extents {
		if e[1] == 0 || e[0]+e[1] < e[0] {
			return fmt.Errorf("extents[%d]: [%d, %d] is not [first block, block count > 0]", i, e[0], e[1])
		}
	}
	selects := len(m.Extents) > 0 || m.HotExtents > 0
	switch {
	case replicator.Mode(m.Mode) == replicator.ModeSelective && !selects:
		return errors.New("mode: selective without extents or hot_extents would copy nothing")
	case replicator.Mode(m.Mode) != replicator.ModeSelective && selects:
		return fmt.Errorf("extents, hot_extents: only with mode selective (mode %s copies the whole volume)", cmp.Or(m.Mode, "full"))
	}
	return nil
}

// DefaultWriteSocket is where the volume API listens.
const DefaultWriteSocket = "/run/premirror/volumes.sock"

// validate names the first bad field under "replication.".
func (r *Replication) validate() error {
	if err := r.TLS.Files().Validate(); err != nil {
		return fmt.Errorf("replication.%w (replication channels are always mutual TLS)", err)
	}
	if r.Listen != "" {
		if err := checkHostPort(r.Listen, true); err != nil {
			return fmt.Errorf("replication.listen: %w", err)
		}
	}
	if r.TaskInterval < 0 {
		return errors.New("replication.task_interval: negative")
	}
	if r.VolumeDir != "" && !filepath.IsAbs(r.VolumeDir) {
		return fmt.Errorf("replication.volume_dir: %q must be absolute", r.VolumeDir)
	}
	peers := map[string]bool{}
	for i, p := range r.Peers {
		f := fmt.Sprintf("replication.peers[%d]", i)
		if p.Name == "" || peers[p.Name] {
			return fmt.Errorf("%s.name: %q empty or defined twice", f, p.Name)
		}
		peers[p.Name] = true
		if err := checkHostPort(p.Addr, false); err != nil {
			return fmt.Errorf("%s.addr: %w", f, err)
		}
		if p.Schedule != "" {
			if _, err := throttle.ParseSchedule(p.Schedule); err != nil {
				return fmt.Errorf("%s.schedule: %w", f, err)
			}
		}
		if p.LinkRate != "" {
			if v, err := throttle.ParseRate(p.LinkRate); err != nil || v <= 0 {
				return fmt.Errorf("%s.link_rate: %q: want a positive byte rate such as 1Gbit or 100MB", f, p.LinkRate)
			}
		}
		if _, err := p.RateControl.delayConfig(); err != nil {
			return fmt.Errorf("%s.rate_control.%w", f, err)
		}
	}
	vols := map[string]bool{}
	// Two volumes on one image or metadata directory would both write
	// it; the second failed at start as "locked by another process".
	files := map[string]string{}
	for i, v := range r.Volumes {
		f := fmt.Sprintf("replication.volumes[%d]", i)
		if v.Name == "" || vols[v.Name] {
			return fmt.Errorf("%s.name: %q empty or defined twice", f, v.Name)
		}
		vols[v.Name] = true
		if !filepath.IsAbs(v.Path) {
			return fmt.Errorf("%s.path: %q must be absolute", f, v.Path)
		}
		meta := cmp.Or(v.MetaDir, v.Path+".pmr")
		for _, p := range []struct{ field, path string }{{"path", filepath.Clean(v.Path)}, {"meta_dir", filepath.Clean(meta)}} {
			if other, dup := files[p.path]; dup {
				return fmt.Errorf("%s.%s: %s is already %s", f, p.field, p.path, other)
			}
			files[p.path] = f + "." + p.field
		}
		switch replicator.Role(v.Role) {
		case replicator.RolePrimary, replicator.RoleMirror:
		default:
			return fmt.Errorf("%s.role: %q is not primary or mirror", f, v.Role)
		}
		if v.Upstream != "" && !peers[v.Upstream] {
			return fmt.Errorf("%s.upstream: peer %q is not defined", f, v.Upstream)
		}
		for j, m := range v.Mirrors {
			mf := fmt.Sprintf("%s.mirrors[%d]", f, j)
			if !peers[m.Peer] {
				return fmt.Errorf("%s.peer: %q is not defined", mf, m.Peer)
			}
			for k, o := range v.Mirrors[:j] {
				if o.Peer == m.Peer && cmp.Or(o.Volume, v.Name) == cmp.Or(m.Volume, v.Name) {
					return fmt.Errorf("%s: peer %q volume %q is already %s.mirrors[%d]", mf, m.Peer, cmp.Or(m.Volume, v.Name), f, k)
				}
			}
			switch replicator.Mode(m.Mode) {
			case "", replicator.ModeFull, replicator.ModeSelective:
			default:
				return fmt.Errorf("%s.mode: %q is not full or selective", mf, m.Mode)
			}
			if m.Interval < 0 {
				return fmt.Errorf("%s.interval: negative", mf)
			}
			if err := m.checkSelection(); err != nil {
				return fmt.Errorf("%s.%w", mf, err)
			}
		}
	}
	return nil
}

// reloadable reports why a reload from old to r cannot be applied to a
// running replicator, naming the field; nil when it can. New peers and
// changed schedules and link rates apply at once (reloadReplication);
// everything else the replicator opened at start needs a restart, and a
// reload that changes it is refused rather than half-applied.
func (r *Replication) reloadable(old *Replication) error {
	switch {
	case old == nil && r == nil:
		return nil
	case old == nil || r == nil:
		return errors.New("replication: enabling or disabling the replicator needs a restart")
	}
	if err := restartOnly("replication", *old, *r, "peers", "task_interval"); err != nil {
		return err
	}
	now := map[string]PeerCfg{}
	for _, p := range r.Peers {
		now[p.Name] = p
	}
	for i, p := range old.Peers {
		q, ok := now[p.Name]
		if !ok {
			return fmt.Errorf("replication.peers: peer %q (peers[%d] before) removed: removing a peer needs a restart", p.Name, i)
		}
		if err := restartOnly(fmt.Sprintf("replication.peers: peer %q:", p.Name), p, q, "schedule", "link_rate"); err != nil {
			return err
		}
	}
	return nil
}

// restartOnly compares two values of one config struct field by field
// and names the first field (by its yaml tag, after prefix) that differs
// and is not among the reloadable ones: every field a reload does not
// apply is refused, including fields added later.
func restartOnly[T any](prefix string, old, now T, reloadable ...string) error {
	a, b := reflect.ValueOf(old), reflect.ValueOf(now)
	for i := range a.NumField() {
		tag, _, _ := strings.Cut(a.Type().Field(i).Tag.Get("yaml"), ",")
		if slices.Contains(reloadable, tag) || reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			continue
		}
		sep := "."
		switch {
		case prefix == "":
			sep = ""
		case strings.HasSuffix(prefix, ":"):
			sep = " "
		}
		return fmt.Errorf("%s%s%s: changes only with a restart", prefix, sep, tag)
	}
	return nil
}

// peerConfig converts one peer to the replicator's configuration.
func (p PeerCfg) peerConfig() replicator.PeerConfig {
	rc, _ := p.RateControl.delayConfig() // validated with the config
	return replicator.PeerConfig{Name: p.Name, Addr: p.Addr, ServerName: p.ServerName, Schedule: p.Schedule, RateControl: rc}
}

// config converts to the replicator's configuration.
func (r *Replication) config(node string, log *slog.Logger) replicator.Config {
	c := replicator.Config{
		Node: node, Site: r.Site, Listen: r.Listen, Logger: log,
		TLS: r.TLS.Files(),
	}
	for _, p := range r.Peers {
		c.Peers = append(c.Peers, p.peerConfig())
	}
	for _, v := range r.Volumes {
		vc := replicator.VolumeConfig{
			Name: v.Name, Path: v.Path, MetaDir: v.MetaDir, Role: replicator.Role(v.Role), BlockSize: v.BlockSize,
			Upstream: v.Upstream, UpstreamVolume: v.UpstreamVolume, AllowedPeers: v.AllowedPeers,
			WriteQuorum: v.WriteQuorum, ReadQuorum: v.ReadQuorum,
		}
		for _, m := range v.Mirrors {
			mc := replicator.MirrorConfig{Peer: m.Peer, Volume: m.Volume, Mode: replicator.Mode(m.Mode),
				Interval: time.Duration(m.Interval), HotExtents: m.HotExtents}
			if mc.Mode == "" {
				mc.Mode = replicator.ModeFull
			}
			for _, e := range m.Extents {
				mc.Extents = append(mc.Extents, replicator.Extent{Start: e[0], Count: e[1]})
			}
			vc.Mirrors = append(vc.Mirrors, mc)
		}
		c.Volumes = append(c.Volumes, vc)
	}
	return c
}

// volumeAPI serves the local write path over a unix socket. Only the
// configured uids may connect: the kernel reports each client's uid
// (SO_PEERCRED), so no unauthenticated process writes to a volume.
type volumeAPI struct {
	node *replicator.Node
	uids []uint32
	log  *slog.Logger
}

type peerUID struct{}

// serveVolumeAPI listens on path (0660, replaced if stale) until ctx ends.
func serveVolumeAPI(ctx context.Context, node *replicator.Node, path string, uids []uint32, log *slog.Logger) (func(), error) {
	if path == "" {
		path = DefaultWriteSocket
	}
	if len(uids) == 0 {
		uids = []uint32{0}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("replication.write_socket: %w", err)
	}
	// A stale socket of a previous agent is replaced; anything else at
	// the path (a mistyped volume image path, say) is not ours to delete.
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("replication.write_socket: %s exists and is a %v, not a socket", path, fi.Mode().Type())
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("replication.write_socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	api := &volumeAPI{node: node, uids: uids, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/volumes/{name}", api.write)
	mux.HandleFunc("GET /v1/volumes/{name}", api.read)
	mux.HandleFunc("GET /v1/volumes", api.status)
	srv := &http.Server{
		Handler:           api.authenticate(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			uid, ok := peerCredUID(c)
			if !ok {
				return ctx
			}
			return context.WithValue(ctx, peerUID{}, uid)
		},
	}
	go func() { _ = srv.Serve(ln) }()
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = os.Remove(path)
	}
	go func() { <-ctx.Done(); stop() }()
	return stop, nil
}

func peerCredUID(c net.Conn) (uint32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, false
	}
	return cred.Uid, true
}

func (a *volumeAPI) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, ok := r.Context().Value(peerUID{}).(uint32)
		if !ok || !slices.Contains(a.uids, uid) {
			a.log.Warn("volume API refused", "uid", uid, "known", ok)
			http.Error(w, "forbidden: uid not in replication.write_uids", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// maxWrite bounds one request; larger writes are split by the client.
const maxWrite = 64 << 20

func offsetArg(r *http.Request) (int64, error) {
	off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || off < 0 {
		return 0, fmt.Errorf("offset %q: want a non-negative byte offset", r.URL.Query().Get("offset"))
	}
	return off, nil
}

func (a *volumeAPI) fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, replicator.ErrFenced):
		code = http.StatusConflict
	case errors.Is(err, replicator.ErrNoQuorum):
		code = http.StatusServiceUnavailable
	case errors.Is(err, replicator.ErrNoSpace):
		code = http.StatusInsufficientStorage
	case errors.Is(err, replicator.ErrUnknownVolume):
		code = http.StatusNotFound
	}
	http.Error(w, err.Error(), code)
}

func (a *volumeAPI) write(w http.ResponseWriter, r *http.Request) {
	off, err := offsetArg(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWrite+1))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) == 0 || len(body) > maxWrite {
		http.Error(w, fmt.Sprintf("body of %d bytes: want 1..%d", len(body), maxWrite), http.StatusBadRequest)
		return
	}
	if err := a.node.Write(r.Context(), r.PathValue("name"), body, off); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *volumeAPI) read(w http.ResponseWriter, r *http.Request) {
	off, err := offsetArg(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n, err := strconv.Atoi(r.URL.Query().Get("length"))
	if err != nil || n <= 0 || n > maxWrite {
		http.Error(w, fmt.Sprintf("length: want 1..%d", maxWrite), http.StatusBadRequest)
		return
	}
	buf := make([]byte, n)
	if err := a.node.Read(r.Context(), r.PathValue("name"), buf, off); err != nil {
		a.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(buf)
}

func (a *volumeAPI) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.node.Status())
}
