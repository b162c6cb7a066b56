// Package debugserver serves Go's runtime profiles (net/http/pprof) for the
// edge-agent and the controller on a listener of their own, off unless an
// address is configured. The profiles are not on the metrics listener:
// that one is often bound to every node address for Prometheus, and a CPU
// profile or an execution trace costs the process while it runs, so the
// profiles stay on loopback (kubectl port-forward reaches a host-network
// pod's loopback) unless the operator names another address.
package debugserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Handler serves the pprof index and profiles under /debug/pprof/.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Start listens on addr and serves Handler until ctx ends; field names
// the setting in errors ("pprof_addr", "--pprof-addr"). A host that is not
// a loopback address is logged as a warning.
func Start(ctx context.Context, addr, field string, log *slog.Logger) (net.Addr, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen %s: %w", field, addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		log.Warn("profiles served beyond loopback: anyone reaching the address can take CPU profiles and traces", "addr", ln.Addr().String())
	}
	// WriteTimeout stays unset: /debug/pprof/profile?seconds=30 writes
	// after 30 s.
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("profile server stopped", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	log.Info("serving runtime profiles", "addr", ln.Addr().String(), "path", "/debug/pprof/")
	return ln.Addr(), nil
}
