package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator"
	"github.com/premirror/premirror/internal/replicator/throttle"
)

// TestVolumeAPI writes and reads a primary volume through the agent's
// unix-socket write path, and checks that a uid outside write_uids is
// refused before anything reaches the volume.
func TestVolumeAPI(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := ca.Issue("node-a", []string{"127.0.0.1"}, time.Hour)
	files, err := pki.WriteLeaf(filepath.Join(dir, "tls"), "node-a", ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &Replication{TLS: TLSFiles{CA: files.CA, Cert: files.Cert, Key: files.Key},
		Volumes: []VolumeCfg{{Name: "disk", Path: img, Role: "primary"}}}
	if err := r.validate(); err != nil {
		t.Fatal(err)
	}
	node, err := replicator.NewNode(r.config("node-a", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, tc := range []struct {
		name string
		uids []uint32
		want int
	}{
		{"allowed uid", []uint32{uint32(os.Geteuid())}, http.StatusNoContent},
		{"other uid refused", []uint32{uint32(os.Geteuid()) + 4242}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".sock")
			stop, err := serveVolumeAPI(ctx, node, sock, tc.uids, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
			block := bytes.Repeat([]byte{0xab}, 4096)
			req, _ := http.NewRequest(http.MethodPut, "http://local/v1/volumes/disk?offset=8192", bytes.NewReader(block))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("PUT: %d %s, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want != http.StatusNoContent {
				return
			}
			resp, err = c.Get("http://local/v1/volumes/disk?offset=8192&length=4096")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(got, block) {
				t.Fatalf("read back %d bytes, not what was written", len(got))
			}
			for _, bad := range []string{"offset=-1", "offset=x"} {
				req, _ := http.NewRequest(http.MethodPut, "http://local/v1/volumes/disk?"+bad, bytes.NewReader(block))
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("%s: %d", bad, resp.StatusCode)
				}
			}
			resp, _ = c.Get("http://local/v1/volumes/nope?offset=0&length=1")
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("unknown volume: %d", resp.StatusCode)
			}
			resp.Body.Close()
		})
	}
}

// TestVolumeAPIKeepsWhatIsNotASocket: write_socket naming an existing
// file or directory fails the start and leaves it; a stale socket is
// replaced. Before, whatever was at the path was removed first: a write
// socket mistyped as the volume image's path deleted the image.
func TestVolumeAPIKeepsWhatIsNotASocket(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{img, dir} {
		_, err := serveVolumeAPI(context.Background(), nil, path, nil, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), "replication.write_socket: "+path+" exists and is a") {
			t.Fatalf("%s: %v, want it refused", path, err)
		}
	}
	if b, err := os.ReadFile(img); err != nil || string(b) != "data" {
		t.Fatalf("image after a refused start: %q, %v", b, err)
	}
	// A socket left by a previous agent is replaced.
	sock := filepath.Join(dir, "volumes.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop, err := serveVolumeAPI(ctx, nil, sock, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	stop()
}

func TestReplicationConfigErrors(t *testing.T) {
	ok := Replication{TLS: TLSFiles{CA: "a", Cert: "b", Key: "c"},
		Peers:   []PeerCfg{{Name: "m2", Addr: "10.0.0.2:7400"}},
		Volumes: []VolumeCfg{{Name: "d", Path: "/v/d.img", Role: "primary", Mirrors: []MirrorCfg{{Peer: "m2"}}}}}
	tests := []struct {
		mut  func(*Replication)
		want string
	}{
		{func(r *Replication) { r.TLS.Key = "" }, "replication.tls key"},
		{func(r *Replication) { r.Peers[0].Addr = "nohost" }, "replication.peers[0].addr"},
		{func(r *Replication) { r.Peers[0].Schedule = "whenever" }, "replication.peers[0].schedule"},
		{func(r *Replication) { r.Peers[0].LinkRate = "fast" }, "replication.peers[0].link_rate"},
		{func(r *Replication) { r.Peers[0].LinkRate = "unlimited" }, "replication.peers[0].link_rate"},
		{func(r *Replication) { r.Peers[0].LinkRate = "0" }, "replication.peers[0].link_rate"},
		{func(r *Replication) { r.Peers[0].RateControl = &RateControlCfg{MinRate: "slow"} }, "replication.peers[0].rate_control.min_rate"},
		{func(r *Replication) { r.Peers[0].RateControl = &RateControlCfg{MinRate: "0"} }, "replication.peers[0].rate_control.min_rate"},
		{func(r *Replication) {
			r.Peers[0].RateControl = &RateControlCfg{TargetDelay: Duration(100 * time.Microsecond)}
		}, "replication.peers[0].rate_control.target_delay"},
		{func(r *Replication) { r.Peers[0].RateControl = &RateControlCfg{TargetDelay: Duration(-time.Second)} }, "replication.peers[0].rate_control.target_delay"},
		{func(r *Replication) { r.Volumes[0].Path = "rel.img" }, "replication.volumes[0].path"},
		{func(r *Replication) { r.Volumes[0].Role = "boss" }, "replication.volumes[0].role"},
		{func(r *Replication) { r.Volumes[0].Mirrors[0].Peer = "m9" }, "replication.volumes[0].mirrors[0].peer"},
		{func(r *Replication) { r.Volumes[0].Mirrors[0].Mode = "delta" }, "replication.volumes[0].mirrors[0].mode"},
		{func(r *Replication) { r.TaskInterval = -1 }, "replication.task_interval"},
		{func(r *Replication) { r.Volumes[0].Mirrors[0].Extents = [][2]uint64{{0, 256}} }, "replication.volumes[0].mirrors[0].extents, hot_extents: only with mode selective (mode full copies the whole volume)"},
		{func(r *Replication) { r.Volumes[0].Mirrors[0].HotExtents = 4 }, "replication.volumes[0].mirrors[0].extents, hot_extents: only with mode selective"},
		{func(r *Replication) { r.Volumes[0].Mirrors[0].Mode = "selective" }, "replication.volumes[0].mirrors[0].mode: selective without extents or hot_extents would copy nothing"},
		{func(r *Replication) {
			r.Volumes[0].Mirrors[0].Mode, r.Volumes[0].Mirrors[0].Extents = "selective", [][2]uint64{{0, 8}, {16, 0}}
		}, "replication.volumes[0].mirrors[0].extents[1]: [16, 0] is not [first block, block count > 0]"},
		{func(r *Replication) {
			r.Volumes[0].Mirrors[0].Mode, r.Volumes[0].Mirrors[0].Extents = "selective", [][2]uint64{{1 << 63, 1 << 63}}
		}, "replication.volumes[0].mirrors[0].extents[0]"},
		{func(r *Replication) {
			r.Volumes[0].Mirrors[0].Mode, r.Volumes[0].Mirrors[0].HotExtents = "selective", -1
		}, "replication.volumes[0].mirrors[0].hot_extents: -1 is negative"},
		{func(r *Replication) {
			r.Volumes = append(r.Volumes, VolumeCfg{Name: "e", Path: "/v/../v/d.img", Role: "mirror"})
		}, "replication.volumes[1].path: /v/d.img is already replication.volumes[0].path"},
		{func(r *Replication) {
			r.Volumes = append(r.Volumes, VolumeCfg{Name: "e", Path: "/v/e.img", MetaDir: "/v/d.img.pmr/", Role: "mirror"})
		}, "replication.volumes[1].meta_dir: /v/d.img.pmr is already replication.volumes[0].meta_dir"},
		{func(r *Replication) {
			r.Volumes[0].Mirrors = append(r.Volumes[0].Mirrors, MirrorCfg{Peer: "m2", Volume: "d"})
		}, `replication.volumes[0].mirrors[1]: peer "m2" volume "d" is already replication.volumes[0].mirrors[0]`},
	}
	for _, tt := range tests {
		r := ok
		r.Peers = append([]PeerCfg(nil), ok.Peers...)
		r.Volumes = []VolumeCfg{ok.Volumes[0]}
		r.Volumes[0].Mirrors = append([]MirrorCfg(nil), ok.Volumes[0].Mirrors...)
		tt.mut(&r)
		err := r.validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("got %v, want it to name %s", err, tt.want)
		}
	}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	sel := ok
	sel.Volumes = []VolumeCfg{ok.Volumes[0]}
	sel.Volumes[0].Mirrors = []MirrorCfg{{Peer: "m2", Mode: "selective", Extents: [][2]uint64{{0, 256}}}, {Peer: "m2", Volume: "d2", Mode: "selective", HotExtents: 8}}
	if err := sel.validate(); err != nil {
		t.Fatalf("selective mirrors: %v", err)
	}
	// Rate control: on by default, off on request, fields carried over.
	off := false
	for _, tc := range []struct {
		rc   *RateControlCfg
		want *throttle.DelayConfig
	}{
		{nil, &throttle.DelayConfig{}},
		{&RateControlCfg{Enabled: &off, MinRate: "5MiB"}, nil},
		{&RateControlCfg{TargetDelay: Duration(40 * time.Millisecond), MinRate: "8Mbit"}, &throttle.DelayConfig{Target: 40 * time.Millisecond, MinRate: 1e6}},
	} {
		pc := PeerCfg{Name: "m2", Addr: "10.0.0.2:7400", RateControl: tc.rc}.peerConfig()
		if !reflect.DeepEqual(pc.RateControl, tc.want) {
			t.Errorf("rate_control %+v: replicator config %+v, want %+v", tc.rc, pc.RateControl, tc.want)
		}
	}
	withRate := ok
	withRate.Peers = []PeerCfg{{Name: "m2", Addr: "10.0.0.2:7400", LinkRate: "1Gbit"}}
	if err := withRate.validate(); err != nil {
		t.Fatal(err)
	}
	if l := peerLinks(&withRate, nil, time.Now())("m2"); l.rate != 125_000_000 || l.sched.RateAt(time.Now()) != throttle.Unlimited {
		t.Fatalf("link plan %+v: want 1 Gbit/s, unlimited schedule", l)
	}
}
