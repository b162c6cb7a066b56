package testbed

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/testbed/internal/kernel"
	"github.com/premirror/premirror/internal/testbed/wan"
)

// BenchmarkBuildTeardown builds and closes the demo topology (3 regions ×
// 2 clients, 1 two-armed edge, 4 mirrors: 12 namespaces, 11 veth pairs,
// 11 mirror listeners per port) per iteration.
func BenchmarkBuildTeardown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root")
	}
	topo, err := LoadTopology("testdata/demo.yaml")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		tb, err := New(context.Background(), topo, Options{NoSignalHandler: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// pathPair is a sender and a receiver namespace joined either through the
// WAN switch or, as the baseline, by a direct veth pair.
type pathPair struct {
	src, dst *NetNS
	dstAddr  netip.Addr
	cleanup  func()
	// switchDrops counts frames the switch lost (nil for the baseline).
	switchDrops func() uint64
}

func switchPair(b *testing.B) pathPair {
	p := netip.MustParsePrefix
	tb, err := New(context.Background(), Topology{
		VIPs:    []netip.Addr{netip.MustParseAddr("10.200.0.1")},
		Regions: []Region{{Name: "r", Edge: "e", Clients: 1, PrefixV4: p("10.1.0.0/24"), PrefixV6: p("fd00:1::/64")}},
		Edges:   []Edge{{Name: "e"}},
		Mirrors: []Mirror{{Name: "m"}},
		Service: Service{Disabled: true},
	}, Options{NoSignalHandler: true})
	if err != nil {
		b.Fatal(err)
	}
	return pathPair{src: tb.Clients("r")[0].NetNS, dst: tb.Host("m").NetNS, dstAddr: tb.Host("m").V4(),
		cleanup: func() { tb.Close() },
		switchDrops: func() uint64 {
			var n uint64
			for _, st := range tb.Switch().Stats() {
				n += st.TotalDrops() - st.Drops[wan.DropMulticast]
			}
			return n
		}}
}

func vethPair(b *testing.B) pathPair {
	a, err := newNetNS("ba")
	if err != nil {
		b.Fatal(err)
	}
	z, err := newNetNS("bz")
	if err != nil {
		b.Fatal(err)
	}
	_, _, err = kernel.CreateVeth(kernel.VethSpec{ANS: a.h, AName: "eth0", AMAC: mac(9, 1), BNS: z.h, BName: "eth0", BMAC: mac(9, 2), MTU: 1500, Alias: LinkAliasPrefix + "bench"})
	if err != nil {
		b.Fatal(err)
	}
	for i, n := range []*NetNS{a, z} {
		if err := kernel.ConfigureIface(n.h, kernel.IfaceConfig{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix([]string{"10.9.0.1/24", "10.9.0.2/24"}[i])}}); err != nil {
			b.Fatal(err)
		}
		// Same offloads as the testbed's hosts, for a like-for-like baseline.
		if err := kernel.SetOffloads(n.h, kernel.Offloads{}, "eth0"); err != nil {
			b.Fatal(err)
		}
	}
	return pathPair{src: a, dst: z, dstAddr: netip.MustParseAddr("10.9.0.2"), cleanup: func() { a.Close(); z.Close() }}
}

// benchUDP blasts b.N datagrams of size bytes from src to dst as fast as
// the sender can and reports what arrived: delivered packets per second
// and Mbit/s of UDP payload, and the loss.
func benchUDP(b *testing.B, mk func(*testing.B) pathPair, size int) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root")
	}
	pp := mk(b)
	defer pp.cleanup()
	sink, err := pp.dst.ListenPacket("udp", netip.AddrPortFrom(pp.dstAddr, 9999).String())
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	_ = sink.(*net.UDPConn).SetReadBuffer(8 << 20)
	var got atomic.Uint64
	var last atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
			last.Store(time.Now().UnixNano())
		}
	}()
	conn, err := pp.src.Dial(context.Background(), "udp", netip.AddrPortFrom(pp.dstAddr, 9999).String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.UDPConn).SetWriteBuffer(8 << 20)
	payload := make([]byte, size)
	// Warm up neighbour entries and the path.
	for i := 0; i < 10; i++ {
		_, _ = conn.Write(payload)
	}
	time.Sleep(50 * time.Millisecond)
	base := got.Load()
	var swBase uint64
	if pp.switchDrops != nil {
		swBase = pp.switchDrops()
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(payload); err != nil {
			b.Fatal(err)
		}
	}
	// Drain: wait until nothing has arrived for 50 ms.
	for {
		time.Sleep(20 * time.Millisecond)
		if l := last.Load(); time.Since(time.Unix(0, l)) > 50*time.Millisecond || got.Load()-base >= uint64(b.N) {
			break
		}
	}
	b.StopTimer()
	end := time.Unix(0, last.Load())
	if end.Before(start) {
		end = time.Now()
	}
	n := got.Load() - base
	el := end.Sub(start).Seconds()
	if el <= 0 {
		el = 1e-9
	}
	b.ReportMetric(float64(n)/el, "delivered-pps")
	b.ReportMetric(float64(n)*float64(size)*8/el/1e6, "payload-Mbit/s")
	b.ReportMetric(100*(1-float64(n)/float64(b.N)), "loss-%")
	if pp.switchDrops != nil {
		// The part of the loss that happened in the switch (its socket
		// buffers overran, or its queues filled); the rest is the
		// receiver's socket buffer.
		b.ReportMetric(100*float64(pp.switchDrops()-swBase)/float64(b.N), "switch-loss-%")
	}
	sink.Close()
	<-done
}

// benchTCP streams b.N × 64 KiB over one TCP connection and reports the
// goodput.
func benchTCP(b *testing.B, mk func(*testing.B) pathPair) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root")
	}
	pp := mk(b)
	defer pp.cleanup()
	l, err := pp.dst.Listen("tcp", netip.AddrPortFrom(pp.dstAddr, 9998).String())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	recvd := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			recvd <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		recvd <- n
	}()
	conn, err := pp.src.Dial(context.Background(), "tcp", netip.AddrPortFrom(pp.dstAddr, 9998).String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	n := <-recvd
	el := time.Since(start).Seconds()
	b.StopTimer()
	conn.Close()
	if n != int64(b.N*len(buf)) {
		b.Fatalf("received %d bytes, sent %d", n, b.N*len(buf))
	}
	b.ReportMetric(float64(n)*8/el/1e6, "Mbit/s")
}

func BenchmarkSwitchUDP64(b *testing.B)     { benchUDP(b, switchPair, 64) }
func BenchmarkSwitchUDP1400(b *testing.B)   { benchUDP(b, switchPair, 1400) }
func BenchmarkSwitchTCP(b *testing.B)       { benchTCP(b, switchPair) }
func BenchmarkBaselineUDP64(b *testing.B)   { benchUDP(b, vethPair, 64) }
func BenchmarkBaselineUDP1400(b *testing.B) { benchUDP(b, vethPair, 1400) }
func BenchmarkBaselineTCP(b *testing.B)     { benchTCP(b, vethPair) }
