package controller

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/credentials"

	pb "github.com/premirror/premirror/api/premirror/v1"
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
