package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The identity protocol, spoken by every mirror's service:
//
//   - TCP: each request line (at most MaxRequestLine bytes, "\n"-ended)
//     gets one reply line. The line "ECHO" gets a reply line and switches
//     the connection to echo mode: every later byte is sent back until the
//     client closes its side, so long-lived flows can be counted end to end.
//   - UDP: each datagram (at most MaxRequestLine bytes) gets one reply
//     datagram.
//
// A reply line is "mirror=<name> proto=<tcp|udp> local=<ip:port>
// remote=<ip:port>[ req=<token>]\n": local is the address the client
// reached (the VIP when routed through the edge), remote the client as the
// mirror saw it, and req echoes the request when it is a token
// ([A-Za-z0-9._:-], at most 64 bytes) so replies can be matched to
// requests.

// MaxRequestLine bounds a request line or datagram.
const MaxRequestLine = 1024

// EchoRequest is the request line that switches a TCP connection to echo.
const EchoRequest = "ECHO"

// ErrBadReply is wrapped by ParseReply errors.
var ErrBadReply = errors.New("bad reply")

// Reply is one parsed reply line.
type Reply struct {
	Mirror string
	Proto  string
	Local  netip.AddrPort
	Remote netip.AddrPort
	Req    string
}

// String formats r as a reply line without the newline.
func (r Reply) String() string {
	s := fmt.Sprintf("mirror=%s proto=%s local=%s remote=%s", r.Mirror, r.Proto, r.Local, r.Remote)
	if r.Req != "" {
		s += " req=" + r.Req
	}
	return s
}

func isToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// ParseReply parses one reply line (a trailing "\n" is allowed). Unknown
// or repeated keys, missing keys and malformed values are errors.
func ParseReply(line string) (Reply, error) {
	line = strings.TrimSuffix(line, "\n")
	var r Reply
	seen := map[string]bool{}
	for _, f := range strings.Split(line, " ") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return Reply{}, fmt.Errorf("%w: field %q is not key=value", ErrBadReply, f)
		}
		if seen[k] {
			return Reply{}, fmt.Errorf("%w: repeated key %q", ErrBadReply, k)
		}
		seen[k] = true
		var err error
		switch k {
		case "mirror":
			if !isToken(v, 64) {
				err = errors.New("not a token")
			}
			r.Mirror = v
		case "proto":
			if v != "tcp" && v != "udp" {
				err = errors.New("want tcp or udp")
			}
			r.Proto = v
		case "local":
			r.Local, err = netip.ParseAddrPort(v)
		case "remote":
			r.Remote, err = netip.ParseAddrPort(v)
		case "req":
			if !isToken(v, 64) {
				err = errors.New("not a token")
			}
			r.Req = v
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			return Reply{}, fmt.Errorf("%w: %s=%q: %v", ErrBadReply, k, v, err)
		}
	}
	for _, k := range []string{"mirror", "proto", "local", "remote"} {
		if !seen[k] {
			return Reply{}, fmt.Errorf("%w: missing %s", ErrBadReply, k)
		}
	}
	return r, nil
}

// ServiceStats counts what one mirror's service did.
type ServiceStats struct {
	// TCPConns accepted and TCPRequests answered (echo switches included).
	TCPConns, TCPRequests uint64
	// EchoConns is the number of connections switched to echo mode and
	// EchoBytes the bytes echoed back on them.
	EchoConns, EchoBytes uint64
	// UDPRequests answered.
	UDPRequests uint64
	// OpenConns is the number of TCP connections open now.
	OpenConns int
}

// MirrorService is the identity service of one mirror.
type MirrorService struct {
	name string
	log  *slog.Logger
	lns  []net.Listener
	pcs  []net.PacketConn
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	tcpConns, tcpReqs, echoConns, echoBytes, udpReqs atomic.Uint64
}

// StartMirrorService serves the identity protocol as name on the given
// listeners and packet sockets until Close. It takes ownership of them.
func StartMirrorService(name string, lns []net.Listener, pcs []net.PacketConn, log *slog.Logger) *MirrorService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &MirrorService{name: name, log: log, lns: lns, pcs: pcs, conns: map[net.Conn]struct{}{}}
	for _, l := range lns {
		s.wg.Add(1)
		go s.accept(l)
	}
	for _, pc := range pcs {
		s.wg.Add(1)
		go s.serveUDP(pc)
	}
	return s
}

// Name returns the identity the service answers with.
func (s *MirrorService) Name() string { return s.name }

// Stats returns the service's counters.
func (s *MirrorService) Stats() ServiceStats {
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	return ServiceStats{
		TCPConns: s.tcpConns.Load(), TCPRequests: s.tcpReqs.Load(),
		EchoConns: s.echoConns.Load(), EchoBytes: s.echoBytes.Load(),
		UDPRequests: s.udpReqs.Load(), OpenConns: open,
	}
}

// Close stops the service, closing its sockets and open connections, and
// waits for its goroutines.
func (s *MirrorService) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	var errs []error
	for _, l := range s.lns {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pc := range s.pcs {
		if err := pc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *MirrorService) accept(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("mirror service accept failed", "mirror", s.name, "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.tcpConns.Add(1)
		s.wg.Add(1)
		go s.serveTCP(c)
	}
}

func (s *MirrorService) reply(proto string, local, remote net.Addr, req string) []byte {
	r := Reply{Mirror: s.name, Proto: proto, Local: addrPort(local), Remote: addrPort(remote)}
	if isToken(req, 64) {
		r.Req = req
	}
	return []byte(r.String() + "\n")
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func (s *MirrorService) serveTCP(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, MaxRequestLine+1)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			// EOF, a reset, or a line longer than allowed: drop the
			// connection either way.
			return
		}
		req := strings.TrimRight(string(line), "\r\n")
		s.tcpReqs.Add(1)
		if _, err := c.Write(s.reply("tcp", c.LocalAddr(), c.RemoteAddr(), req)); err != nil {
			return
		}
		if req == EchoRequest {
			s.echoConns.Add(1)
			_, _ = io.Copy(countWriter{c, &s.echoBytes}, br)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (w countWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n.Add(uint64(n))
	return n, err
}

func (s *MirrorService) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, MaxRequestLine+1)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("mirror service udp read failed", "mirror", s.name, "err", err)
			}
			return
		}
		if n > MaxRequestLine {
			continue
		}
		s.udpReqs.Add(1)
		req := strings.TrimRight(string(buf[:n]), "\r\n")
		_, _ = pc.WriteTo(s.reply("udp", pc.LocalAddr(), from, req), from)
	}
}

// Ask sends one request line on a TCP connection to a mirror service and
// reads the reply line. It reads byte by byte so nothing after the reply
// is consumed (the connection stays usable, e.g. for echo mode).
func Ask(ctx context.Context, c net.Conn, req string) (Reply, error) {
	if strings.ContainsAny(req, "\n") || len(req) > MaxRequestLine {
		return Reply{}, fmt.Errorf("request %q: must be one line of at most %d bytes", req, MaxRequestLine)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		return Reply{}, fmt.Errorf("send request: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) <= 512 {
		if _, err := io.ReadFull(c, b); err != nil {
			if ctx.Err() != nil {
				return Reply{}, ctx.Err()
			}
			return Reply{}, fmt.Errorf("read reply: %w", err)
		}
		if b[0] == '\n' {
			return ParseReply(string(line))
		}
		line = append(line, b[0])
	}
	return Reply{}, fmt.Errorf("%w: line too long", ErrBadReply)
}

// AskUDP sends one datagram on a connected UDP socket and waits for the
// reply whose req matches (a unique token per call avoids confusing a late
// reply with the current one); it gives up when ctx ends.
func AskUDP(ctx context.Context, c net.Conn, req string) (Reply, error) {
	if !isToken(req, 64) {
		return Reply{}, fmt.Errorf("request %q: must be a token", req)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write([]byte(req)); err != nil {
		return Reply{}, fmt.Errorf("send request: %w", err)
	}
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return Reply{}, ctx.Err()
			}
			return Reply{}, fmt.Errorf("read reply: %w", err)
		}
		r, err := ParseReply(string(buf[:n]))
		if err != nil {
			return Reply{}, err
		}
		if r.Req == req {
			return r, nil
		}
	}
}

var askSeq atomic.Uint64

// Ask dials addr ("ip:port") over network ("tcp", "tcp6", "udp", …) from
// inside the namespace, sends one request and returns the reply.
func (n *NetNS) Ask(ctx context.Context, network, addr string) (Reply, error) {
	c, err := n.Dial(ctx, network, addr)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	req := fmt.Sprintf("q%d", askSeq.Add(1))
	if strings.HasPrefix(network, "udp") {
		return AskUDP(ctx, c, req)
	}
	return Ask(ctx, c, req)
}

// EchoResult is what [Echo] counted.
type EchoResult struct {
	// Mirror served the connection (from the reply to "ECHO").
	Mirror string
	// Sent bytes written; Received bytes read back, all verified.
	Sent, Received uint64
}

// Echo switches the TCP connection c to echo mode, then writes chunk bytes
// of a deterministic pattern every interval until ctx ends (interval 0:
// as fast as possible), half-closes, and reads until the mirror closes.
// Every byte read back is checked against the pattern, so lost, duplicated
// or corrupted bytes are errors. A reset or corruption returns the counts
// so far with the error. onReply, if not nil, sees the identity reply
// before streaming starts.
func Echo(ctx context.Context, c *net.TCPConn, chunk int, interval time.Duration, onReply func(Reply)) (EchoResult, error) {
	var res EchoResult
	r, err := Ask(context.WithoutCancel(ctx), c, EchoRequest)
	if err != nil {
		return res, err
	}
	res.Mirror = r.Mirror
	if onReply != nil {
		onReply(r)
	}
	if chunk <= 0 {
		chunk = 1024
	}
	var sent atomic.Uint64
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, chunk)
		var off uint64
		var tick *time.Ticker
		if interval > 0 {
			tick = time.NewTicker(interval)
			defer tick.Stop()
		}
		for ctx.Err() == nil {
			for i := range buf {
				buf[i] = echoPattern(off + uint64(i))
			}
			n, err := c.Write(buf)
			off += uint64(n)
			sent.Store(off)
			if err != nil {
				werr <- fmt.Errorf("echo write: %w", err)
				return
			}
			if tick != nil {
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
			}
		}
		werr <- c.CloseWrite()
	}()
	buf := make([]byte, 64<<10)
	var got uint64
	var rerr error
	for {
		n, err := c.Read(buf)
		for i := 0; i < n; i++ {
			if buf[i] != echoPattern(got+uint64(i)) {
				rerr = fmt.Errorf("echo byte %d corrupted", got+uint64(i))
				break
			}
		}
		got += uint64(n)
		if rerr != nil {
			c.Close()
			break
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				rerr = fmt.Errorf("echo read: %w", err)
				c.Close()
			}
			break
		}
	}
	err = <-werr
	res.Sent, res.Received = sent.Load(), got
	if rerr != nil {
		return res, rerr
	}
	if err != nil {
		return res, err
	}
	if res.Sent != res.Received {
		return res, fmt.Errorf("echo: sent %d bytes, received %d", res.Sent, res.Received)
	}
	return res, nil
}

func echoPattern(i uint64) byte { return byte(i ^ i>>8 ^ i>>16) }
