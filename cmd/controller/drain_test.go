package main

import (
	"context"
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
func startCtlController(t *testing.T) []string {
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
		done <- commands.Run(ctx, []string{"run", "--name", "solo", "--listen", addr, "--tls-dir", certs,
			"--data-dir", filepath.Join(dir, "etcd"), "--etcd-listen", freeAddr(t), "--etcd-peer-listen", freeAddr(t),
			"--metrics-addr", maddr, "--tick", "100ms"})
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
