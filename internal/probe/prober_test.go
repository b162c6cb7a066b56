package probe

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var loopbacks = []struct{ name, host string }{{"v4", "127.0.0.1"}, {"v6", "::1"}}

// tcpServer accepts and closes connections until the test ends.
func tcpServer(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no loopback %s: %v", host, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// udpResponder runs a Responder on host and returns its address.
func udpResponder(t *testing.T, host string, r *Responder) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no loopback %s: %v", host, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("responder: %v", err)
		}
	})
	return pc.LocalAddr().String()
}

// closedPort returns an address on host where nothing listens.
func closedPort(t *testing.T, network, host string) string {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Skipf("no loopback %s: %v", host, err)
		}
		a := ln.Addr().String()
		ln.Close()
		return a
	default:
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Skipf("no loopback %s: %v", host, err)
		}
		a := pc.LocalAddr().String()
		pc.Close()
		return a
	}
}

func TestTCPProberLoopback(t *testing.T) {
	for _, lb := range loopbacks {
		t.Run(lb.name, func(t *testing.T) {
			addr := tcpServer(t, lb.host)
			var dials atomic.Int32
			p := &TCPProber{Dial: func(ctx context.Context, n, a string) (net.Conn, error) {
				dials.Add(1) // the agent's netns dialer stands here
				var d net.Dialer
				return d.DialContext(ctx, n, a)
			}}
			for range 3 {
				rtt, err := p.Probe(context.Background(), addr)
				if err != nil {
					t.Fatal(err)
				}
				if rtt <= 0 || rtt > time.Second {
					t.Fatalf("loopback rtt %v", rtt)
				}
			}
			if dials.Load() != 3 {
				t.Fatalf("injected dialer used %d times, want 3", dials.Load())
			}
			_, err := p.Probe(context.Background(), closedPort(t, "tcp", lb.host))
			if !errors.Is(err, ErrRefused) || ResultClass(err) != "refused" {
				t.Fatalf("closed port: err = %v, want ErrRefused", err)
			}
		})
	}
}

func TestTCPProberTimeout(t *testing.T) {
	// A SYN that is never answered cannot be produced on loopback without
	// root and packet filters; a dialer that blocks stands in for it.
	p := &TCPProber{Timeout: 20 * time.Millisecond, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	if _, err := p.Probe(context.Background(), "192.0.2.1:80"); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
}

func TestUDPProberLoopback(t *testing.T) {
	for _, lb := range loopbacks {
		t.Run(lb.name, func(t *testing.T) {
			m := NewMetrics()
			addr := udpResponder(t, lb.host, &Responder{Metrics: m})
			p := &UDPProber{Size: 100}
			for range 3 {
				rtt, err := p.Probe(context.Background(), addr)
				if err != nil {
					t.Fatal(err)
				}
				if rtt <= 0 || rtt > time.Second {
					t.Fatalf("loopback rtt %v", rtt)
				}
			}
			// The responder counts a reply once WriteTo returns, which can
			// be after the prober has read it: wait for the count.
			got := 0.0
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if got = testutil.ToFloat64(m.echoes.WithLabelValues("answered")); got >= 3 {
					break
				}
			}
			if got != 3 {
				t.Fatalf("answered = %v, want 3", got)
			}
			_, err := p.Probe(context.Background(), closedPort(t, "udp", lb.host))
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("closed port: err = %v, want ErrRefused", err)
			}
		})
	}
}

func TestUDPProberTimeoutAndCancel(t *testing.T) {
	// A bound socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := &UDPProber{Timeout: 30 * time.Millisecond}
	if _, err := p.Probe(context.Background(), pc.LocalAddr().String()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	p.Timeout = 10 * time.Second
	_, err = p.Probe(ctx, pc.LocalAddr().String())
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("cancelled probe: err = %v, want context.Canceled", err)
	}
}

func TestResponderIgnoresGarbageAndForgedReplies(t *testing.T) {
	m := NewMetrics()
	addr := udpResponder(t, "127.0.0.1", &Responder{Metrics: m})
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reply, _ := AppendPacket(nil, Packet{Type: TypeReply, Len: HeaderLen})
	for _, b := range [][]byte{[]byte("hello"), make([]byte, 64), reply} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := AppendPacket(nil, Packet{Type: TypeRequest, Seq: 5, Nonce: 77, Len: 300})
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodePacket(buf[:n])
	if err != nil || got.Type != TypeReply || got.Nonce != 77 || got.Seq != 5 {
		t.Fatalf("first answer = %+v, %v; want the reply to the only request", got, err)
	}
	if n != len(req) {
		t.Fatalf("reply %d bytes for a %d-byte request: must not amplify", n, len(req))
	}
	if got := testutil.ToFloat64(m.echoes.WithLabelValues("malformed")); got != 3 {
		t.Fatalf("malformed = %v, want 3", got)
	}
}

func TestResponderRateLimit(t *testing.T) {
	m := NewMetrics()
	addr := udpResponder(t, "127.0.0.1", &Responder{Rate: 0.001, Metrics: m}) // burst 1, then nothing
	// The first probe may wait as long as a loaded machine needs; only
	// the second must give up quickly.
	if _, err := (&UDPProber{Timeout: 5 * time.Second}).Probe(context.Background(), addr); err != nil {
		t.Fatalf("first probe within burst: %v", err)
	}
	p := &UDPProber{Timeout: 50 * time.Millisecond}
	if _, err := p.Probe(context.Background(), addr); !errors.Is(err, ErrTimeout) {
		t.Fatalf("second probe: err = %v, want ErrTimeout (rate limited)", err)
	}
	if got := testutil.ToFloat64(m.echoes.WithLabelValues("rate_limited")); got != 1 {
		t.Fatalf("rate_limited = %v, want 1", got)
	}
}

func TestResponderListenAndServe(t *testing.T) {
	var listens atomic.Int32
	listen := func(ctx context.Context, n, a string) (net.PacketConn, error) {
		listens.Add(1)
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, n, a)
	}
	r := &Responder{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.ListenAndServe(ctx, listen, "udp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if listens.Load() != 1 {
		t.Fatal("injected listen function not used")
	}
	if err := r.ListenAndServe(context.Background(), nil, "udp", "256.0.0.1:1"); err == nil {
		t.Fatal("bad address accepted")
	}
}

func TestMetricsLint(t *testing.T) {
	m := NewMetrics()
	m.result(KindTCP, time.Millisecond, nil)
	m.result(KindUDP, 0, ErrTimeout)
	m.echo("answered")
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}
