package replicator

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/premirror/premirror/internal/pki"
	"github.com/premirror/premirror/internal/replicator/throttle"
	"github.com/premirror/premirror/internal/replicator/wire"
)

// countConn sits below TLS: it counts the bytes that cross the TCP
// connection (so "bytes on the wire" includes record overhead and the
// handshake) and, once buffering is on, gathers TLS records into 256 KiB
// writes. crypto/tls issues one write per 16 KiB record; batching them
// cuts the sender's system calls sixteenfold. The link flushes after every
// message, so nothing waits in the buffer.
type countConn struct {
	net.Conn
	rx, tx atomic.Int64
	// onWrite, if set, is told about every write (metrics).
	onWrite func(n int)
	onRead  func(n int)

	mu  sync.Mutex
	buf []byte // nil: unbuffered
}

const connBuffer = 256 << 10

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rx.Add(int64(n))
	if c.onRead != nil && n > 0 {
		c.onRead(n)
	}
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return c.write(p)
	}
	if len(c.buf)+len(p) > cap(c.buf) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(c.buf)/2 {
			return c.write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *countConn) write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.tx.Add(int64(n))
	if c.onWrite != nil && n > 0 {
		c.onWrite(n)
	}
	return n, err
}

func (c *countConn) buffer() {
	c.mu.Lock()
	c.buf = make([]byte, 0, connBuffer)
	c.mu.Unlock()
}

func (c *countConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *countConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// Close sends what is buffered (the TLS close alert) and closes.
func (c *countConn) Close() error {
	c.flush()
	return c.Conn.Close()
}

// link is one authenticated replication connection.
type link struct {
	raw   *countConn
	conn  *tls.Conn
	br    *bufio.Reader
	rd    *wire.Reader
	peer  string // verified certificate common name
	proto uint16

	wmu  sync.Mutex
	wbuf []byte

	limiter *throttle.Limiter // nil: no limit (receivers)
	meter   *rateMeter        // measures throttled frames; nil: none
	stop    func() bool       // detaches the context watcher
	rtt     *rttSampler       // nil: no delay control

	// chain is the peer's verified certificate chain, which the node's
	// revocation sweep checks against the CRL current now; untrack takes
	// the link out of that sweep (nil: not tracked).
	chain   []*x509.Certificate
	untrack func()
	revoked atomic.Bool // the sweep ended the link
}

func newLink(raw *countConn, conn *tls.Conn) *link {
	raw.buffer()
	br := bufio.NewReaderSize(conn, 256<<10)
	cs := conn.ConnectionState()
	l := &link{raw: raw, conn: conn, br: br, rd: wire.NewReader(br), peer: pki.PeerName(cs)}
	if len(cs.VerifiedChains) > 0 {
		l.chain = cs.VerifiedChains[0]
	}
	return l
}

// watch closes the connection when ctx ends so blocked reads and writes
// return.
func (l *link) watch(ctx context.Context) {
	l.stop = context.AfterFunc(ctx, func() { l.conn.Close() })
}

func (l *link) close() error {
	if l.stop != nil {
		l.stop()
	}
	if l.untrack != nil {
		l.untrack()
	}
	l.rtt.close()
	return l.conn.Close()
}

// send encodes and writes one message.
func (l *link) send(m wire.Message) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	b, err := wire.AppendFrame(l.wbuf[:0], m)
	if err != nil {
		return err
	}
	l.wbuf = b
	if _, err := l.conn.Write(b); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	if err := l.raw.flush(); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// outFrame is an encoded Blocks frame in pieces (see wire.BlocksBuilder).
type outFrame struct {
	head, trailer []byte
	data          [][]byte
	size          int
}

// bytes is the frame's length from its parts (what goes on the wire; the
// pacing and the rate meter count this, never size, so a count that
// disagrees with the bytes cannot stall a frame or skew a rate).
func (f outFrame) bytes() int {
	n := len(f.head) + len(f.trailer)
	for _, d := range f.data {
		n += len(d)
	}
	return n
}

// sendFrame writes a frame, throttled by the link's limiter. A throttled
// link (copies and cycles, not interactive traffic) is measured: the
// sender is backlogged from here until the frame is on the socket.
func (l *link) sendFrame(ctx context.Context, f outFrame) error {
	if l.meter == nil || l.limiter == nil {
		return l.sendFrameNow(ctx, f)
	}
	l.meter.begin(time.Now())
	err := l.sendFrameNow(ctx, f)
	l.meter.end(time.Now(), f.bytes(), err == nil)
	return err
}

func (l *link) sendFrameNow(ctx context.Context, f outFrame) error {
	if l.limiter != nil && l.limiter.Quantum() > 0 {
		return l.sendPaced(ctx, f)
	}
	if l.limiter != nil {
		if err := l.limiter.Wait(ctx, f.size); err != nil {
			return err
		}
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.writeFrame(f, func(p []byte) error {
		_, err := l.conn.Write(p)
		return err
	})
}

// writeFrame writes f's parts in order through write, then flushes; the
// caller holds l.wmu.
func (l *link) writeFrame(f outFrame, write func([]byte) error) error {
	parts := append(append([][]byte{f.head}, f.data...), f.trailer)
	for _, p := range parts {
		if err := write(p); err != nil {
			return fmt.Errorf("send frame: %w", err)
		}
	}
	if err := l.raw.flush(); err != nil {
		return fmt.Errorf("send frame: %w", err)
	}
	return nil
}

// sendPaced writes a frame a quantum at a time (see Limiter.Quantum),
// each sent before waiting for the next one's tokens. A frame written
// whole would reach the path's bottleneck as one line-rate burst, a
// queue of up to a frame (4 MiB) that a delay target cannot allow. The
// link's write lock is held throughout so no message lands inside the
// frame.
func (l *link) sendPaced(ctx context.Context, f outFrame) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	remaining, budget := f.bytes(), 0 // what is left of the frame
	write := func(p []byte) error {
		for len(p) > 0 {
			if budget == 0 {
				if err := l.raw.flush(); err != nil {
					return err
				}
				// Whatever is left goes at once if control was
				// switched off mid-frame.
				q := l.limiter.Quantum()
				if q <= 0 {
					q = remaining
				}
				budget = min(q, remaining)
				if err := l.limiter.Wait(ctx, budget); err != nil {
					return err
				}
			}
			k := min(budget, len(p))
			if _, err := l.conn.Write(p[:k]); err != nil {
				return err
			}
			budget -= k
			remaining -= k
			p = p[k:]
		}
		return nil
	}
	return l.writeFrame(f, write)
}

// sendError reports err to the peer as an Error frame (best effort).
func (l *link) sendError(err error) {
	l.send(&wire.Error{Code: codeOf(err), Msg: err.Error()})
}

// read reads the next frame into m; an Error frame becomes the matching
// sentinel error.
func (l *link) read(m wire.Message) error {
	if err := l.rd.Read(m); err != nil {
		return wireError(err)
	}
	return nil
}

// negotiate picks the highest protocol version both ranges contain.
func negotiate(ourMin, ourMax, theirMin, theirMax uint16) (uint16, error) {
	v := min(ourMax, theirMax)
	if v < max(ourMin, theirMin) {
		return 0, fmt.Errorf("%w: peer speaks protocol versions %d..%d, this node %d..%d; upgrade the older side",
			ErrIncompatible, theirMin, theirMax, ourMin, ourMax)
	}
	return v, nil
}

// dialConfig says how to reach one peer.
type dialConfig struct {
	addr    string
	tls     *tls.Config
	limiter *throttle.Limiter
	meter   *rateMeter // measures the link's frames (nil: none)
	// rtt, if set, receives RTT samples of the connection (delay control).
	rtt func(time.Duration)
	// metrics hooks for bytes on the wire
	onWrite, onRead func(int)
	// track, if set, enters the link in its node's revocation sweep.
	track func(*link)
}

// dial connects, completes mutual TLS and exchanges Hello/Welcome. The
// link is closed when ctx ends.
func dial(ctx context.Context, dc dialConfig, hello *wire.Hello) (*link, *wire.Welcome, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", dc.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", dc.addr, err)
	}
	raw := &countConn{Conn: c, onWrite: dc.onWrite, onRead: dc.onRead}
	tc := tls.Client(raw, dc.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("tls handshake with %s: %w", dc.addr, err)
	}
	l := newLink(raw, tc)
	l.limiter, l.meter = dc.limiter, dc.meter
	if dc.track != nil {
		dc.track(l)
	}
	if dc.rtt != nil {
		l.rtt = startRTTSampler(c, raw.tx.Load, dc.rtt)
	}
	l.watch(ctx)
	if err := l.send(hello); err != nil {
		l.close()
		return nil, nil, err
	}
	var w wire.Welcome
	if err := l.read(&w); err != nil {
		l.close()
		return nil, nil, fmt.Errorf("%s session with %s: %w", hello.Op, dc.addr, err)
	}
	if w.Proto < hello.MinProto || w.Proto > hello.MaxProto {
		l.close()
		return nil, nil, fmt.Errorf("%w: peer chose protocol %d outside %d..%d", ErrIncompatible, w.Proto, hello.MinProto, hello.MaxProto)
	}
	l.proto = w.Proto
	return l, &w, nil
}
