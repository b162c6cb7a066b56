package probe

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/premirror/premirror/internal/testbed"
)

// TestResponderRepliesFromProbedAddress: a mirror host answers a probe
// from the address the probe was sent to, whatever address the route back
// would pick. The edge's socket is connected to the mirror's address and
// drops a reply from any other, so a host whose mirror address is not its
// source toward the edge (an address on lo, a secondary address, a
// second NIC) read as a dead mirror: the probe sent to 127.0.0.2 from
// 127.0.0.1 gets its reply from 127.0.0.1, the route's source. Both
// sockets the agent can have: IPv4, and dual-stack "::" (the agent's).
func TestResponderRepliesFromProbedAddress(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"ipv4 socket", "0.0.0.0:0"},
		{"dual-stack socket", "[::]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := net.ListenPacket("udp", tc.listen)
			if err != nil {
				t.Skipf("listen %s: %v", tc.listen, err)
			}
			serve(t, pc)
			port := pc.LocalAddr().(*net.UDPAddr).Port
			d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.1")}}
			p := &UDPProber{Dial: d.DialContext, Timeout: 5 * time.Second}
			target := net.JoinHostPort("127.0.0.2", strconv.Itoa(port))
			if _, err := p.Probe(context.Background(), target); err != nil {
				t.Fatalf("probe of %s from 127.0.0.1: %v", target, err)
			}
		})
	}
}

// TestResponderRepliesFromProbedAddressIPv6: the same over IPv6, in a
// namespace the test makes with two addresses on lo (the agent's
// dual-stack socket).
func TestResponderRepliesFromProbedAddressIPv6(t *testing.T) {
	ns := testbed.NewNetNS(t)
	err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatal(err)
	}
	// AddAddr returns once each address's local route is in: the kernel
	// installs it from a work item after the netlink call, and a probe
	// sent before then is not delivered (seen on a loaded CI machine).
	for _, s := range []string{"fd00:77::1/128", "fd00:77::2/128"} {
		if err := ns.AddAddr("lo", netip.MustParsePrefix(s)); err != nil {
			t.Fatal(err)
		}
	}
	pc, err := ns.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, pc)
	target := net.JoinHostPort("fd00:77::2", strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
	d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("fd00:77::1")}}
	p := &UDPProber{Timeout: 5 * time.Second, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	if _, err := p.Probe(context.Background(), target); err != nil {
		t.Fatalf("probe of %s from fd00:77::1: %v", target, err)
	}
}

// serve runs a Responder on pc until the test ends.
func serve(t *testing.T, pc net.PacketConn) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Responder{}).Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("responder: %v", err)
		}
	})
}
