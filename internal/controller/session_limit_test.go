package controller

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/credentials"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/testnet"
)

// TestSessionMessagesThrottled: an agent that sends reports as fast as it
// can (each is an etcd write) is slowed to msgsPerInterval per report
// interval after a burst of msgBurst; nothing it sent is refused.
func TestSessionMessagesThrottled(t *testing.T) {
	r := startReplica(t, "r1", testPrefix(t), nil) // report interval 100ms: 100 messages/s
	tc := credentials.NewTLS(clientTLS(t, issueFiles(t, shared.ca, t.TempDir(), "edge-1", nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := openSession(ctx, t, r.addr, &tc, "edge-1", "eu")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	before := testutil.ToFloat64(r.c.m.reports)
	start := time.Now()
	const sent = 250
	go func() {
		for range sent {
			if s.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: &pb.Report{}}}) != nil {
				return
			}
		}
	}()
	rate := float64(msgsPerInterval) / r.c.cfg.ReportInterval.Seconds()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := testutil.ToFloat64(r.c.m.reports) - before
		// At most the burst plus the rate over the time so far (measured
		// after the count, so a slow machine only loosens the bound).
		if limit := msgBurst + rate*time.Since(start).Seconds() + 1; got > limit {
			t.Fatalf("%v reports handled %v after the flood began: more than %v", got, time.Since(start), limit)
		}
		if got >= sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %v of %d reports handled: throttled messages must wait, not be lost", got, sent)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if testutil.ToFloat64(r.c.m.throttled) == 0 {
		t.Fatal("premirror_controller_agent_messages_throttled_total did not count the flood")
	}
}

// landedKV lets the first live/ write land but reports it failed, as a
// Put cancelled with its stream may (disconnect's own comment).
type landedKV struct {
	clientv3.KV
	failed atomic.Bool
}

func (k *landedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if strings.Contains(key, "/live/") && k.failed.CompareAndSwap(false, true) {
		if _, err := k.KV.Put(context.Background(), key, val, opts...); err != nil {
			return nil, err
		}
		return nil, context.Canceled
	}
	return k.KV.Put(ctx, key, val, opts...)
}

// A session whose registration's live write failed but landed ends
// without its live record: otherwise the node looks connected to this
// replica for as long as the replica runs (its lease), and `delete node`
// refuses to forget it.
func TestFailedRegistrationLeavesNoLiveRecord(t *testing.T) {
	prefix := testPrefix(t)
	cli := etcdClient(t)
	defer cli.Close()
	cli.KV = &landedKV{KV: cli.KV}
	c, err := New(Config{Name: "r1", TLS: shared.files, Prefix: prefix, TickInterval: 100 * time.Millisecond,
		ReportInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: quietLogger()}, cli)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := testnet.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, lis) }()
	defer func() { cancel(); <-done }()

	tc := credentials.NewTLS(clientTLS(t, issueFiles(t, shared.ca, t.TempDir(), "edge-1", nil)))
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if _, err := openSession(sctx, t, lis.Addr().String(), &tc, "edge-1", "eu"); err == nil {
		t.Fatal("registration succeeded though its live write failed")
	}
	time.Sleep(3 * time.Second) // beyond disconnect's own deadline
	resp, err := cli.Get(context.Background(), prefix+"live/edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Fatal("the failed session's live record stays: the node looks connected while the replica runs")
	}
	if err := c.forgetNode(context.Background(), "edge-1"); err != nil {
		t.Fatalf("forget the node after its failed session: %v", err)
	}
}

// Every report is an etcd write (live/<node>), and the session's message
// limiter is there so one node cannot fill etcd's quota for everyone. A
// report is bounded only by the gRPC receive limit (64 MiB) and etcd's
// request limit (10 MiB): at msgsPerInterval reports per interval, one
// agent could write ~90 MB/s that etcd keeps for the 10 min of history.
// A report whose record is far beyond anything an agent sends must be
// refused, not stored.
func TestOversizedReportNotStored(t *testing.T) {
	prefix := testPrefix(t)
	r := startReplica(t, "r1", prefix, nil)
	tc := credentials.NewTLS(clientTLS(t, issueFiles(t, shared.ca, t.TempDir(), "edge-1", nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := openSession(ctx, t, r.addr, &tc, "edge-1", "eu")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	name := strings.Repeat("m", 1000)
	rep := &pb.Report{}
	for range 8000 { // ~8 MB of probe results naming no mirror
		rep.Probes = append(rep.Probes, &pb.ProbeResult{Mirror: name, Health: pb.Health_HEALTH_UP, Samples: 1})
	}
	if err := s.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Report{Report: rep}}); err != nil {
		t.Fatal(err)
	}
	// The session either ends (refused) or the report is handled.
	deadline := time.Now().Add(5 * time.Second)
	var size int
	for time.Now().Before(deadline) {
		resp, err := r.cli.Get(ctx, prefix+"live/edge-1")
		if err == nil && len(resp.Kvs) == 1 {
			size = len(resp.Kvs[0].Value)
			if size > 1<<20 {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if size > 1<<20 {
		t.Fatalf("an agent's report of %d bytes was stored in etcd as its live record", size)
	}
}
