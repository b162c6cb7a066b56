package testbed_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/testbed"
)

// Example shows the calls an end-to-end test makes. (Compiled, not run:
// it needs root.)
func Example() {
	var t *testing.T // the test's *testing.T

	// Leak check first: its cleanup then runs after the testbed's.
	testbed.VerifyNoLeaks(t, testbed.LeakOptions{PinDir: "/sys/fs/bpf/premirror-e2e"})

	topo, err := testbed.LoadTopology("testdata/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tb := testbed.ForTest(t, topo, testbed.Options{})

	edge := tb.Host("edge1")
	eth0, _ := edge.Iface("eth0")
	fmt.Println(edge.Path(), eth0.Name, eth0.Index, eth0.GatewayMAC)

	// Run the agent in the edge's network namespace (bpffs stays shared).
	agent := edge.Command("bin/edge-agent", "--config", "/tmp/edge.yaml")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}

	// Make the EU region far from m-eu, at run time.
	if err := tb.SetDelay("eu", "m-eu", 80*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	// Ask the VIP from an EU client: the reply names the mirror.
	ctx := context.Background()
	vip := tb.VIPs()[0]
	r, err := tb.Clients("eu")[0].Ask(ctx, "tcp", netip.AddrPortFrom(vip, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("served by", r.Mirror)

	// Or keep a connection for a long-lived echo stream.
	conn, err := tb.Host("eu-1").Dial(ctx, "tcp", netip.AddrPortFrom(vip, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
}
