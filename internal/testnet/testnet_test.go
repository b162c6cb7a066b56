package testnet

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
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

// Relisten waits while another socket holds the address and gives up
// after its bound with the bind's error.
func TestRelisten(t *testing.T) {
	holder, err := Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := holder.Addr().String()
	if _, err := Relisten("tcp", addr, 100*time.Millisecond); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("address held: %v, want EADDRINUSE", err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(150 * time.Millisecond)
		holder.Close()
		close(released)
	}()
	ln, err := Relisten("tcp", addr, 5*time.Second)
	<-released
	if err != nil {
		t.Fatalf("address released: %v", err)
	}
	ln.Close()
}
