package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// gateHandler blocks the first log record with message msg, once armed,
// until release is closed: it holds an apply in mid-flight.
type gateHandler struct {
	slog.Handler
	msg     string
	mu      sync.Mutex
	armed   bool
	held    chan struct{} // closed when a record is held
	release chan struct{}
}

func (h *gateHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	hold := h.armed && r.Message == h.msg
	if hold {
		h.armed = false
	}
	h.mu.Unlock()
	if hold {
		close(h.held)
		<-h.release
	}
	return nil
}

func (h *gateHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *gateHandler) WithAttrs([]slog.Attr) slog.Handler { return h }

// TestReloadDoesNotUndoControllerVersion: a SIGHUP reload keeps the
// controller's desired state (the file only tunes the agent). A reload
// that read that state before a new version landed and applied it after
// put the older state back — maps, version hash and reports — while the
// controller held the newer one ACKed, until the next version. Applies
// are serialized: the version waits for the reload and lands last.
func TestReloadDoesNotUndoControllerVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mirror.yaml")
	// decap_gue_port differs from nyc's gue_port: every apply logs the
	// override, which is where the gate holds the reload.
	const file = "node: host\nrole: mirror\ninterfaces: [lo]\ndecap_addresses: [\"2001:db8::20\"]\ndecap_gue_port: 7000\n" +
		"controller: {endpoints: [\"ctl:7443\"], site: eu, utilization: none, tls: {ca: a, cert: b, key: c}}\n"
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	gate := &gateHandler{Handler: slog.DiscardHandler, msg: "decap_gue_port overridden by the mirror's gue_port",
		held: make(chan struct{}), release: make(chan struct{})}
	a := New(cfg, path, slog.New(gate))
	cp := &controlPlane{a: a}
	v1 := proto.Clone(sampleProtoState()).(*pb.DesiredState)
	v1.Version = 1
	if err := cp.apply(1, v1); err != nil {
		t.Fatal(err)
	}
	v2 := proto.Clone(v1).(*pb.DesiredState)
	v2.Version = 2
	v2.Mirrors[0].Address = "192.0.2.99" // paris moved

	gate.mu.Lock()
	gate.armed = true
	gate.mu.Unlock()
	reloaded := make(chan error, 1)
	go func() { reloaded <- a.Reload() }()
	select { // the reload is inside apply with v1's state
	case <-gate.held:
	case err := <-reloaded:
		t.Fatalf("reload returned (%v) before logging the override", err)
	case <-time.After(10 * time.Second):
		t.Fatal("reload never reached the decap plan")
	}
	applied := make(chan error, 1)
	go func() { applied <- cp.apply(2, v2) }()
	select {
	case err := <-applied: // the old code: v2 lands under the reload
		applied <- err
	case <-time.After(200 * time.Millisecond): // serialized: v2 waits
	}
	close(gate.release)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	want, err := StateFromProto(v2)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	got := a.cfg.State
	a.mu.Unlock()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after a reload raced version 2 the agent runs mirrors %+v, want version 2's %+v", got.Mirrors, want.Mirrors)
	}
}

// TestStateVersionIsContentHash: the version hash (healthz,
// edge_desired_state_info) is the same for equal states parsed apart,
// and differs when the state does. It hashed Go's %+v, which prints the
// address of a resource's affinity: every reload or controller apply of
// an unchanged state showed a new version, and no two nodes agreed.
func TestStateVersionIsContentHash(t *testing.T) {
	parse := func(st *pb.DesiredState) *Config {
		ds, err := StateFromProto(st)
		if err != nil {
			t.Fatal(err)
		}
		return &Config{State: ds}
	}
	st := sampleProtoState()
	a, b := stateVersion(parse(st)), stateVersion(parse(proto.Clone(st).(*pb.DesiredState)))
	if a != b {
		t.Fatalf("one state, two versions: %s and %s", a, b)
	}
	st.Resources[0].Affinity.TimeoutSeconds++
	if c := stateVersion(parse(st)); c == a {
		t.Fatalf("affinity changed, version %s did not", c)
	}
}
