package debugserver

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestStart(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := Start(ctx, "127.0.0.1:0", "pprof_addr", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, tc := range []struct{ path, want string }{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile"},
		{"/debug/pprof/heap?debug=1", "heap profile"},
	} {
		resp, err := c.Get("http://" + addr.String() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), tc.want) {
			t.Fatalf("%s: %d %.200s", tc.path, resp.StatusCode, b)
		}
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Get("http://" + addr.String() + "/debug/pprof/"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still serving after ctx ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartErrorsNameTheField(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "127.0.0.1:99999", "192.0.2.1:0"} {
		_, err := Start(context.Background(), addr, "--pprof-addr", slog.New(slog.DiscardHandler))
		if err == nil || !strings.HasPrefix(err.Error(), "--pprof-addr: ") {
			t.Errorf("%s: %v, want an error naming --pprof-addr", addr, err)
		}
	}
}
