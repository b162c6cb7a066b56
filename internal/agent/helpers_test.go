package agent

import (
	"io"
	"log/slog"
	"net/netip"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
