package testnet

import (
	"net"
	"strconv"
	"testing"
)

func TestListenBelowEphemeralRange(t *testing.T) {
	lo, ok := ephemeralLow()
	if !ok {
		t.Skip("no /proc/sys/net/ipv4/ip_local_port_range")
	}
	for range 20 {
		ln, err := Listen("tcp", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		port, _ := strconv.Atoi(p)
		ln.Close()
		if lo-lowest >= 1000 && (port < lowest || port >= lo) {
			t.Fatalf("port %d outside [%d, %d)", port, lowest, lo)
		}
		// Closed, the same address opens again.
		again, err := net.Listen("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("reopen %s: %v", ln.Addr(), err)
		}
		again.Close()
	}
}
