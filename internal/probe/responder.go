package probe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"
)

// DefaultEchoRate bounds the replies a Responder sends per second. An edge
// probes a mirror it routes to every 400 ms (2.5/s) and the others every
// 2 s or less often, so 10,000/s serves 4,000 edges all routing to one
// host, while a spoofed flood reflects no more than that, in replies no
// larger than its requests (no amplification). The agent sets it with
// probe.echo_rate.
const DefaultEchoRate = 10000

// Responder answers UDP echo requests on a mirror host. It replies only to
// well-formed requests, with a datagram of the same size, under a rate
// limit.
type Responder struct {
	// Rate is the reply budget per second; 0 means DefaultEchoRate and a
	// negative value disables the limit.
	Rate float64
	// Logger receives malformed-packet and socket errors (nil: discard).
	Logger *slog.Logger
	// Metrics counts requests by outcome (nil: not counted).
	Metrics *Metrics
}

// ListenAndServe opens addr on network ("udp", "udp4", "udp6") with listen
// (nil means net.ListenConfig) and serves until ctx is done.
func (r *Responder) ListenAndServe(ctx context.Context, listen ListenFunc, network, addr string) error {
	if listen == nil {
		var lc net.ListenConfig
		listen = lc.ListenPacket
	}
	pc, err := listen(ctx, network, addr)
	if err != nil {
		return fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return r.Serve(ctx, pc)
}

// Serve answers requests on pc until ctx is done, then closes pc and
// returns nil. A socket error other than the shutdown returns it.
func (r *Responder) Serve(ctx context.Context, pc net.PacketConn) error {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lim *rate.Limiter
	switch {
	case r.Rate == 0:
		lim = rate.NewLimiter(DefaultEchoRate, DefaultEchoRate/10)
	case r.Rate > 0:
		lim = rate.NewLimiter(rate.Limit(r.Rate), max(1, int(r.Rate/10)))
	}
	stop := context.AfterFunc(ctx, func() { _ = pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer pc.Close()

	buf := make([]byte, MaxPacketLen+1)
	rc := newReplyConn(pc)
	for {
		n, to, from, err := rc.readFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("echo responder read: %w", err)
		}
		p, err := DecodePacket(buf[:n])
		if err != nil || p.Type != TypeRequest {
			r.Metrics.echo("malformed")
			log.Debug("probe echo: dropped datagram", "peer", from.String(), "len", n, "err", err)
			continue
		}
		if lim != nil && !lim.Allow() {
			r.Metrics.echo("rate_limited")
			continue
		}
		buf[5] = byte(TypeReply)
		if err := rc.replyTo(buf[:n], to, from); err != nil {
			r.Metrics.echo("send_error")
			log.Debug("probe echo: reply failed", "peer", from.String(), "err", err)
			continue
		}
		r.Metrics.echo("answered")
	}
}

// replyConn answers from the address each request was sent to: the
// prober's socket is connected to the mirror's address and drops a reply
// from any other, and on an unbound socket the kernel would pick the
// route's source toward the edge (another address when the mirror's is
// on lo, secondary, or behind another NIC). It reads the request's
// destination with IP_PKTINFO / IPV6_PKTINFO and sends from it. An IPv4
// request on a dual-stack socket arrives as a v4-mapped address; its
// reply goes out with IP_PKTINFO, which Linux takes on such a socket
// (x/net's IPV6_PKTINFO does not carry v4-mapped sources). A socket that
// cannot (not UDP) replies as the kernel chooses.
type replyConn struct {
	pc net.PacketConn
	r4 *ipv4.PacketConn // reads, on an IPv4 socket
	r6 *ipv6.PacketConn // reads, on an IPv6 (dual-stack) socket
	w4 *ipv4.PacketConn // IPv4 replies
	w6 *ipv6.PacketConn // IPv6 replies
}

func newReplyConn(pc net.PacketConn) *replyConn {
	rc := &replyConn{pc: pc}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return rc
	}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && !la.IP.IsUnspecified() {
		return rc // bound to one address: replies come from it
	}
	rc.w4, rc.w6 = ipv4.NewPacketConn(uc), ipv6.NewPacketConn(uc)
	if rc.w6.SetControlMessage(ipv6.FlagDst, true) == nil {
		rc.r6 = rc.w6
	} else if rc.w4.SetControlMessage(ipv4.FlagDst, true) == nil {
		rc.r4 = rc.w4
	}
	return rc
}

// readFrom reads a request, its sender and the address it was sent to
// (nil when unknown).
func (rc *replyConn) readFrom(b []byte) (n int, to net.IP, from net.Addr, err error) {
	switch {
	case rc.r6 != nil:
		var cm *ipv6.ControlMessage
		n, cm, from, err = rc.r6.ReadFrom(b)
		if cm != nil {
			to = cm.Dst
		}
	case rc.r4 != nil:
		var cm *ipv4.ControlMessage
		n, cm, from, err = rc.r4.ReadFrom(b)
		if cm != nil {
			to = cm.Dst
		}
	default:
		n, from, err = rc.pc.ReadFrom(b)
	}
	return n, to, from, err
}

// replyTo sends b to dst from src, or from the kernel's choice when src
// is unknown, multicast or refused (a broadcast address).
func (rc *replyConn) replyTo(b []byte, src net.IP, dst net.Addr) error {
	if src != nil && !src.IsMulticast() && !src.IsUnspecified() && (rc.r4 != nil || rc.r6 != nil) {
		var err error
		if v4 := src.To4(); v4 != nil {
			_, err = rc.w4.WriteTo(b, &ipv4.ControlMessage{Src: v4}, dst)
		} else {
			_, err = rc.w6.WriteTo(b, &ipv6.ControlMessage{Src: src}, dst)
		}
		if err == nil {
			return nil
		}
	}
	_, err := rc.pc.WriteTo(b, dst)
	return err
}
