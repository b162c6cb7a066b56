package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// startCtlController runs `controller run` in-process on fresh
// certificates until the test ends and returns the admin flags.
func startCtlController(t *testing.T, extra ...string) []string {
	t.Helper()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if _, err := ctl(t, "certs", "--dir", certs); err != nil {
		t.Fatal(err)
	}
	addr, maddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- commands.Run(ctx, append([]string{"run", "--name", "solo", "--listen", addr, "--tls-dir", certs,
			"--data-dir", filepath.Join(dir, "etcd"), "--etcd-listen", freeAddr(t), "--etcd-peer-listen", freeAddr(t),
			"--metrics-addr", maddr, "--tick", "100ms"}, extra...))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	waitFor(t, "controller leads", 30*time.Second, func() bool { return strings.Contains(healthz(maddr), `leader "solo"`) })
	return []string{"--server", addr, "--tls-dir", certs}
}

// concurrentEdits returns an interceptor that, before each of the first
// n Apply calls it sees, makes another admin's edit of mirror paris (its
// capacity_rps set to base+1, base+2, ...) as `apply` of an edited file
// would: it lands between drain's read and drain's write.
func concurrentEdits(t *testing.T, n int, base float64) grpc.UnaryClientInterceptor {
	edits := 0
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == pb.Admin_Apply_FullMethodName && edits < n {
			edits++
			get := &pb.GetResponse{}
			if err := invoker(ctx, pb.Admin_Get_FullMethodName, &pb.GetRequest{Kind: "mirror", Name: "paris"}, get, cc, opts...); err != nil {
				return err
			}
			m := get.GetObjects().GetMirrors()[0]
			m.CapacityRps = base + float64(edits)
			if err := invoker(ctx, pb.Admin_Apply_FullMethodName, &pb.ApplyRequest{Objects: &pb.Objects{Mirrors: []*pb.Mirror{m}}},
				&pb.ApplyResponse{}, cc, opts...); err != nil {
				t.Errorf("concurrent edit: %v", err)
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// drain reads the mirror, then writes it back whole with its new state:
// an edit of another field landing in between must not be lost. It is a
// compare-and-swap on the revision read: drain reads again and applies
// over the edit, and gives up, writing nothing, when edits keep landing.
func TestDrainKeepsConcurrentEdit(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // after the controller's own cleanup
	admin := startCtlController(t)
	if out, err := ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	defer func() { ctlDialOptions = nil }()
	paris := func() string {
		t.Helper()
		out, err := ctl(t, append([]string{"get", "mirror", "paris"}, admin...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(concurrentEdits(t, 1, 7000))}
	out, err := ctl(t, append([]string{"drain", "mirror", "paris"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/paris draining (was active)") {
		t.Fatalf("drain with a concurrent edit: %v\n%s", err, out)
	}
	if got := paris(); !strings.Contains(got, "state: draining") || !strings.Contains(got, "capacity_rps: 7001") {
		t.Fatalf("paris after drain and a concurrent edit of capacity_rps to 7001:\n%s", got)
	}

	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(concurrentEdits(t, 1000, 8000))}
	_, err = ctl(t, append([]string{"undrain", "mirror", "paris"}, admin...)...)
	if err == nil || !strings.Contains(err.Error(), "the objects changed while it ran, 5 times in a row; nothing written") {
		t.Fatalf("undrain under endless concurrent edits: %v", err)
	}
	if got := paris(); !strings.Contains(got, "state: draining") || !strings.Contains(got, "capacity_rps: 8005") {
		t.Fatalf("paris after a refused undrain and five edits:\n%s", got)
	}
}

// TestDrainWarnsWithoutRevision: a replica older than drain's
// compare-and-swap answers Get without a revision and ignores
// if_revision, so the write is unconditional; drain says so.
func TestDrainWarnsWithoutRevision(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	admin := startCtlController(t)
	if out, err := ctl(t, append([]string{"apply", "-f", objectsFile}, admin...)...); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	defer func() { ctlDialOptions = nil }()
	oldReplica := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if r, ok := reply.(*pb.GetResponse); ok {
			r.Revision = 0
		}
		return err
	}
	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(oldReplica)}
	out, err := ctl(t, append([]string{"drain", "mirror", "paris"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/paris draining (was active)") || !strings.Contains(out, "warning: the controller reported no revision") {
		t.Fatalf("drain against a replica without revisions: %v\n%s", err, out)
	}
}

// rackController starts a controller with the extra flags (goleak checks
// it stopped everything) holding rackObjects(n), and returns the admin
// flags to reach it.
func rackController(t *testing.T, n int, extra ...string) []string {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	admin := startCtlController(t, extra...)
	if out, err := ctl(t, append([]string{"apply", "-f", rackObjects(t, n)}, admin...)...); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	return admin
}

// rackObjects writes a file of n mirrors m-00, m-01, ... whose node is
// rack-1, and one mirror elsewhere (other), and returns its path.
func rackObjects(t *testing.T, n int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("sites:\n  - name: eu\n    client_prefixes: [10.1.0.0/16]\nmirrors:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: m-%02d, site: eu, address: 192.0.2.%d, node: rack-1}\n", i, 10+i)
	}
	b.WriteString("  - {name: other, site: eu, address: 192.0.2.200, node: rack-2}\n")
	f := filepath.Join(t.TempDir(), "rack.yaml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// editsAfterFirstWrite returns an interceptor that, once an Apply of
// drain's has succeeded, makes another admin's edit of mirror m-09
// (capacity_rps base+1, base+2, ...) before each of drain's next n
// Applies: the edits land between drain's batches. It records how many
// mirrors each Apply that succeeded carried.
func editsAfterFirstWrite(t *testing.T, n int, base float64, sizes *[]int) grpc.UnaryClientInterceptor {
	edits, wrote := 0, false
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != pb.Admin_Apply_FullMethodName {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		if wrote && edits < n {
			edits++
			get := &pb.GetResponse{}
			if err := invoker(ctx, pb.Admin_Get_FullMethodName, &pb.GetRequest{Kind: "mirror", Name: "m-09"}, get, cc, opts...); err != nil {
				return err
			}
			m := get.GetObjects().GetMirrors()[0]
			m.CapacityRps = base + float64(edits)
			if err := invoker(ctx, pb.Admin_Apply_FullMethodName, &pb.ApplyRequest{Objects: &pb.Objects{Mirrors: []*pb.Mirror{m}}},
				&pb.ApplyResponse{}, cc, opts...); err != nil {
				t.Errorf("concurrent edit: %v", err)
			}
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil {
			wrote = true
			*sizes = append(*sizes, len(req.(*pb.ApplyRequest).GetObjects().GetMirrors()))
		}
		return err
	}
}

// mirrorStates returns every mirror's state, followed by " " and its
// capacity_rps when set, as get prints them.
func mirrorStates(t *testing.T, admin []string) map[string]string {
	t.Helper()
	out, err := ctl(t, append([]string{"get", "mirror"}, admin...)...)
	if err != nil {
		t.Fatal(err)
	}
	state, capacity := map[string]string{}, map[string]string{}
	name := ""
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- "))
		switch {
		case strings.HasPrefix(l, "name: "):
			name = strings.TrimPrefix(l, "name: ")
			state[name] = "active"
		case strings.HasPrefix(l, "state: "):
			state[name] = strings.TrimPrefix(l, "state: ")
		case strings.HasPrefix(l, "capacity_rps: "):
			capacity[name] = " " + strings.TrimPrefix(l, "capacity_rps: ")
		}
	}
	for n := range state {
		state[n] += capacity[n]
	}
	return state
}

// A drain of more mirrors than one etcd transaction holds
// ((--etcd-max-txn-ops − 1)/2: 3 here) is applied in batches, each a
// compare-and-swap on a fresh read: an edit landing between two batches
// is kept (the next batch reads again), and every batch fits one
// transaction. Before, the whole drain was refused.
func TestDrainBatchesOverTransactions(t *testing.T) {
	admin := rackController(t, 10, "--etcd-max-txn-ops", "7")
	defer func() { ctlDialOptions = nil }()

	out, err := ctl(t, append([]string{"drain", "--dry-run", "node", "rack-1"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/m-09 draining (was active)") || !strings.Contains(out, "dry run: nothing written") {
		t.Fatalf("dry-run drain of 10 mirrors: %v\n%s", err, out)
	}
	for name, st := range mirrorStates(t, admin) {
		if st != "active" {
			t.Fatalf("mirror %s is %q after a dry run", name, st)
		}
	}

	var sizes []int
	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(editsAfterFirstWrite(t, 1, 7000, &sizes))}
	out, err = ctl(t, append([]string{"drain", "node", "rack-1"}, admin...)...)
	if err != nil {
		t.Fatalf("drain of 10 mirrors, 3 per transaction: %v\n%s", err, out)
	}
	for i := range 10 {
		if l := fmt.Sprintf("mirror/m-%02d draining (was active)", i); !strings.Contains(out, l) {
			t.Errorf("drain's output lacks %q:\n%s", l, out)
		}
	}
	total := 0
	for _, n := range sizes {
		if n > 3 {
			t.Errorf("an apply of %d mirrors succeeded, more than one transaction holds: %v", n, sizes)
		}
		total += n
	}
	if total != 10 || len(sizes) < 4 {
		t.Errorf("applies written: %v, want 10 mirrors in batches of at most 3", sizes)
	}
	got := mirrorStates(t, admin)
	for i := range 9 {
		if name := fmt.Sprintf("m-%02d", i); got[name] != "draining" {
			t.Errorf("mirror %s after drain: %q", name, got[name])
		}
	}
	if got["m-09"] != "draining 7001" || got["other"] != "active" {
		t.Errorf("after drain with an edit of m-09 between batches: m-09 %q (want draining, capacity 7001 kept), other %q", got["m-09"], got["other"])
	}

	ctlDialOptions = nil
	out, err = ctl(t, append([]string{"undrain", "node", "rack-1"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/m-00 active (was draining)") || !strings.Contains(out, "mirror/m-09 active (was draining)") {
		t.Fatalf("undrain of 10 mirrors: %v\n%s", err, out)
	}
	for name, st := range mirrorStates(t, admin) {
		if !strings.HasPrefix(st, "active") {
			t.Errorf("mirror %s after undrain: %q", name, st)
		}
	}
}

// When a later batch of a drain is refused (here: edits keep landing
// before it), drain fails saying which mirrors it did drain, prints their
// lines, and leaves the others as they were; run again, it drains the
// rest and leaves the drained ones as they are.
func TestDrainReportsPartialBatches(t *testing.T) {
	admin := rackController(t, 10, "--etcd-max-txn-ops", "7")
	defer func() { ctlDialOptions = nil }()
	var sizes []int
	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(editsAfterFirstWrite(t, 1000, 8000, &sizes))}
	out, err := ctl(t, append([]string{"drain", "node", "rack-1"}, admin...)...)
	if err == nil || len(sizes) != 1 {
		t.Fatalf("drain under endless edits after its first batch: %v (applies written: %v)\n%s", err, sizes, out)
	}
	got := mirrorStates(t, admin)
	var drained []string
	for i := range 10 {
		name := fmt.Sprintf("m-%02d", i)
		if strings.HasPrefix(got[name], "draining") {
			drained = append(drained, name)
			if l := "mirror/" + name + " draining (was active)"; !strings.Contains(out, l) {
				t.Errorf("output lacks %q:\n%s", l, out)
			}
		} else if strings.Contains(out, "mirror/"+name+" ") {
			t.Errorf("output names %s, which it did not drain:\n%s", name, out)
		}
	}
	want := fmt.Sprintf("the objects changed while it ran, 5 times in a row; %d of the mirrors were set draining (%s), the others were not",
		sizes[0], strings.Join(drained, ", "))
	if len(drained) != sizes[0] || !strings.Contains(err.Error(), want) {
		t.Fatalf("drained %v (the batch written held %d); error %q, want it to contain %q", drained, sizes[0], err, want)
	}

	ctlDialOptions = nil
	out, err = ctl(t, append([]string{"drain", "node", "rack-1"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/"+drained[0]+" already draining") || !strings.Contains(out, "mirror/m-09 draining (was active)") {
		t.Fatalf("drain run again: %v\n%s", err, out)
	}
	for name, st := range mirrorStates(t, admin) {
		if want := name != "other"; strings.HasPrefix(st, "draining") != want {
			t.Errorf("mirror %s after drain run again: %q", name, st)
		}
	}
}

// When etcd's request limit binds before its operations limit (2,000
// bytes here: a handful of mirrors), drain's batches are as many mirrors
// as fit the request, as the controller says in its refusal.
func TestDrainBatchesBySize(t *testing.T) {
	admin := rackController(t, 30, "--etcd-max-request-bytes", "2000")
	defer func() { ctlDialOptions = nil }()
	var sizes []int
	ctlDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(editsAfterFirstWrite(t, 0, 0, &sizes))}
	out, err := ctl(t, append([]string{"drain", "node", "rack-1"}, admin...)...)
	if err != nil || !strings.Contains(out, "mirror/m-29 draining (was active)") {
		t.Fatalf("drain of 30 mirrors under a 2,000-byte request limit: %v\n%s", err, out)
	}
	total := 0
	for _, n := range sizes {
		total += n
	}
	if total != 30 || len(sizes) < 3 || sizes[0] >= 30 {
		t.Errorf("applies written: %v, want 30 mirrors in several batches", sizes)
	}
	for name, st := range mirrorStates(t, admin) {
		if want := name != "other"; (st == "draining") != want {
			t.Errorf("mirror %s after drain: %q", name, st)
		}
	}
}
