package probe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

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
	for {
		n, from, err := pc.ReadFrom(buf)
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
		if _, err := pc.WriteTo(buf[:n], from); err != nil {
			r.Metrics.echo("send_error")
			log.Debug("probe echo: reply failed", "peer", from.String(), "err", err)
			continue
		}
		r.Metrics.echo("answered")
	}
}
