package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// DialFunc opens a connection; (*net.Dialer).DialContext fits. The agent
// passes one that creates the socket inside the edge's network namespace.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ListenFunc opens a packet socket; (*net.ListenConfig).ListenPacket fits.
type ListenFunc func(ctx context.Context, network, address string) (net.PacketConn, error)

// Prober times one probe to addr (an IP literal and port: a host name would
// add a DNS lookup to the measured time).
type Prober interface {
	Probe(ctx context.Context, addr string) (time.Duration, error)
}

// Sentinel probe failures, for callers and metrics that branch on them.
var (
	// ErrTimeout: no answer before the probe's deadline.
	ErrTimeout = errors.New("probe timed out")
	// ErrRefused: the host answered with a TCP RST or an ICMP port
	// unreachable — reachable, but the service is not there.
	ErrRefused = errors.New("probe refused")
)

// DefaultProbeTimeout bounds a probe whose context has no deadline.
const DefaultProbeTimeout = time.Second

// orDefault returns d, or a plain net.Dialer's DialContext when d is nil.
func (d DialFunc) orDefault() DialFunc {
	if d != nil {
		return d
	}
	var nd net.Dialer
	return nd.DialContext
}

// classify maps socket errors onto the sentinels, keeping the cause.
func classify(op string, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s: %w: %w", op, ErrRefused, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%s: %w: %w", op, ErrTimeout, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	if d <= 0 {
		d = DefaultProbeTimeout
	}
	return context.WithTimeout(ctx, d)
}

// TCPProber measures the TCP handshake: the time from connect() to the
// SYN-ACK, which is one round trip plus the peer's accept-queue delay —
// exactly what a new client connection pays.
type TCPProber struct {
	// Dial opens the connection; nil means a plain net.Dialer.
	Dial DialFunc
	// Timeout applies when the context has no deadline (default 1 s).
	Timeout time.Duration
}

// Probe connects to addr and closes the connection at once.
func (p *TCPProber) Probe(ctx context.Context, addr string) (time.Duration, error) {
	ctx, cancel := withTimeout(ctx, p.Timeout)
	defer cancel()
	start := time.Now()
	conn, err := p.Dial.orDefault()(ctx, "tcp", addr)
	rtt := time.Since(start)
	if err != nil {
		return 0, classify("tcp probe "+addr, err)
	}
	// Close with RST instead of FIN: a probe every 2 s would otherwise
	// leave a TIME_WAIT socket per probe on the edge.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
	return rtt, nil
}

// UDPProber sends one echo request and waits for the matching reply from a
// Responder.
type UDPProber struct {
	// Dial opens the socket; nil means a plain net.Dialer.
	Dial DialFunc
	// Size is the datagram length (HeaderLen to MaxPacketLen); 0 means
	// HeaderLen.
	Size int
	// Timeout applies when the context has no deadline (default 1 s).
	Timeout time.Duration

	seq atomic.Uint32
}

// Probe sends an echo request to addr and times the reply.
func (p *UDPProber) Probe(ctx context.Context, addr string) (time.Duration, error) {
	ctx, cancel := withTimeout(ctx, p.Timeout)
	defer cancel()
	conn, err := p.Dial.orDefault()(ctx, "udp", addr)
	if err != nil {
		return 0, classify("udp probe "+addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return 0, fmt.Errorf("udp probe %s: set deadline: %w", addr, err)
		}
	}
	// Unblock the read if the context is cancelled before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := Packet{Type: TypeRequest, Seq: p.seq.Add(1), Nonce: rand.Uint64(), Len: p.Size}
	start := time.Now()
	req.Sent = start.UnixNano()
	buf, err := AppendPacket(make([]byte, 0, max(p.Size, HeaderLen)), req)
	if err != nil {
		return 0, fmt.Errorf("udp probe %s: %w", addr, err)
	}
	if _, err := conn.Write(buf); err != nil {
		return 0, classify("udp probe "+addr, err)
	}
	rb := make([]byte, MaxPacketLen+1)
	for {
		n, err := conn.Read(rb)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				err = cerr // report the cancellation, not the forced deadline
			}
			return 0, classify("udp probe "+addr, err)
		}
		got, err := DecodePacket(rb[:n])
		// A stray or forged datagram is ignored; only the reply carrying
		// this probe's nonce ends the wait.
		if err != nil || got.Type != TypeReply || got.Nonce != req.Nonce || got.Seq != req.Seq {
			continue
		}
		return time.Since(start), nil
	}
}
