package testbed

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseReply(t *testing.T) {
	good := "mirror=m1 proto=tcp local=10.200.0.1:8080 remote=10.1.0.1:4000 req=q7\n"
	r, err := ParseReply(good)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mirror != "m1" || r.Proto != "tcp" || r.Local.String() != "10.200.0.1:8080" || r.Remote.Port() != 4000 || r.Req != "q7" {
		t.Errorf("parsed %+v", r)
	}
	if r.String()+"\n" != good {
		t.Errorf("round trip %q", r.String())
	}
	for _, bad := range []string{
		"",
		"mirror=m1",
		"mirror=m1 proto=sctp local=1.2.3.4:1 remote=1.2.3.4:2",
		"mirror=m1 proto=tcp local=1.2.3.4 remote=1.2.3.4:2",
		"mirror=m1 proto=tcp local=1.2.3.4:1 remote=1.2.3.4:2 extra=1",
		"mirror=m1 mirror=m2 proto=tcp local=1.2.3.4:1 remote=1.2.3.4:2",
		"mirror=m/1 proto=tcp local=1.2.3.4:1 remote=1.2.3.4:2",
		"mirror=m1  proto=tcp local=1.2.3.4:1 remote=1.2.3.4:2",
	} {
		if _, err := ParseReply(bad); !errors.Is(err, ErrBadReply) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add("mirror=m1 proto=udp local=[fd00::1]:53 remote=[fd00:1::1]:999 req=x")
	f.Add("mirror=m1 proto=tcp local=1.2.3.4:1 remote=1.2.3.4:2")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReply(s)
		if err != nil {
			return
		}
		r2, err := ParseReply(r.String())
		if err != nil || r2 != r {
			t.Fatalf("round trip of %q: %+v, %v", s, r2, err)
		}
	})
}

// TestMirrorServiceLoopback runs the service on loopback (no root): TCP
// request lines, echo mode, over-long lines, UDP, counters, Close.
func TestMirrorServiceLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := StartMirrorService("m9", []net.Listener{l}, []net.PacketConn{pc}, nil)
	defer svc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []string{"a1", "not a token!", ""} {
		r, err := Ask(ctx, c, req)
		if err != nil {
			t.Fatal(err)
		}
		wantReq := req
		if req != "a1" {
			wantReq = ""
		}
		if r.Mirror != "m9" || r.Proto != "tcp" || r.Req != wantReq || r.Local.String() != l.Addr().String() {
			t.Errorf("reply %+v to %q", r, req)
		}
	}
	// An over-long line closes the connection.
	if _, err := io.WriteString(c, strings.Repeat("x", MaxRequestLine+10)+"\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("read %d bytes after an over-long line", n)
	}
	c.Close()

	uc, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	r, err := AskUDP(ctx, uc, "u1")
	if err != nil || r.Mirror != "m9" || r.Proto != "udp" || r.Req != "u1" {
		t.Errorf("udp reply %+v, %v", r, err)
	}

	ec, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	res, err := Echo(sctx, ec.(*net.TCPConn), 4096, time.Millisecond, nil)
	if err != nil || res.Mirror != "m9" || res.Received == 0 {
		t.Fatalf("echo %+v, %v", res, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var st ServiceStats
	for time.Now().Before(deadline) {
		if st = svc.Stats(); st.OpenConns == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.TCPConns != 2 || st.TCPRequests != 4 || st.EchoConns != 1 || st.EchoBytes != res.Received || st.UDPRequests != 1 || st.OpenConns != 0 {
		t.Errorf("stats %+v (echo %+v)", st, res)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Error("service still accepting after Close")
	}
}
