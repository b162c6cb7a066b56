package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/premirror/premirror/internal/maps"
	"github.com/premirror/premirror/internal/maps/mapstest"
)

// TestInspectShowsNextProgram: inspect names the program chained after the
// router, and says so when the slot is empty.
func TestInspectShowsNextProgram(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and pins maps")
	}
	dir := fmt.Sprintf("/sys/fs/bpf/premirror-inspect-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Skipf("no bpffs at /sys/fs/bpf: %v", err)
	}
	defer os.RemoveAll(dir)
	cfg := maps.DefaultConfig()
	cfg.MaxSessions, cfg.MaxAffinity, cfg.MaxTables, cfg.TableSlots = 1024, 1024, 16, 64
	r, err := maps.LoadRouter(cfg, maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	peer, err := mapstest.NewPeer(9, mapstest.PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	// Mirrors show their encapsulation (GUE with its port).
	if err := r.SetMirror(1, maps.Mirror{Addr: netip.MustParseAddr("192.0.2.5"), State: maps.MirrorActive}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetMirror(2, maps.Mirror{Addr: netip.MustParseAddr("2001:db8::6"), State: maps.MirrorActive, Encap: maps.EncapGUE, GUEPort: 6080}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := inspect(&out, dir, nil, 0); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`MIRROR\s+ADDRESS\s+STATE\s+ENCAP\n1\s+192\.0\.2\.5\s+active\s+ipip\n2\s+2001:db8::6\s+active\s+gue udp/6080\n`).Match(out.Bytes()) {
		t.Fatalf("mirrors' encapsulation not shown:\n%s", out.String())
	}
	if !regexp.MustCompile(`NEXT XDP PROGRAM\s+router\s+none`).Match(out.Bytes()) {
		t.Fatalf("empty slot not shown:\n%s", out.String())
	}
	// A router loaded without an agent has the cache off; the agent sets
	// its TTL.
	if !regexp.MustCompile(`NEXT-HOP CACHE\s+off \(a FIB lookup per packet\)\s+generation \d+`).Match(out.Bytes()) {
		t.Fatalf("next-hop cache off not shown:\n%s", out.String())
	}
	if err := r.SetNextHopTTL(maps.DefaultNextHopTTL); err != nil {
		t.Fatal(err)
	}
	if err := r.SetNext(peer.Program); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := inspect(&out, dir, nil, 0); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`NEXT XDP PROGRAM\s+router\s+fw_udp_drop \(id \d+, tag [0-9a-f]+\) on every interface`).Match(out.Bytes()) {
		t.Fatalf("chained program not shown:\n%s", out.String())
	}
	// An interface's own program (the router is not attached: the slot
	// of lo is harmless).
	lo, err := mapstest.NewPeer(9, mapstest.PeerOptions{Name: "fw_lo"})
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	if err := r.SetNextFor(1, lo.Program); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := inspect(&out, dir, nil, 0); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`NEXT XDP PROGRAM\s+router\s+fw_udp_drop \(id \d+, tag [0-9a-f]+\) on every interface[^\n]*\n` +
		`NEXT XDP PROGRAM\s+router\s+fw_lo \(id \d+, tag [0-9a-f]+\) on lo \(ifindex 1\)`).Match(out.Bytes()) {
		t.Fatalf("per-interface program not shown:\n%s", out.String())
	}
	if !regexp.MustCompile(`NEXT-HOP CACHE\s+ttl 250ms, generation \d+\s+0 hits, 0 FIB lookups \(no VIP packet yet\)`).Match(out.Bytes()) {
		t.Fatalf("next-hop cache not shown:\n%s", out.String())
	}
}

// TestInspectMirrorHost: on a node that runs only the decap program,
// inspect shows its endpoints (with their GUE ports) and its packets by
// reason instead of failing on the missing router state; with neither
// program pinned it says so.
func TestInspectMirrorHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and pins maps")
	}
	dir := fmt.Sprintf("/sys/fs/bpf/premirror-inspect-decap-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Skipf("no bpffs at /sys/fs/bpf: %v", err)
	}
	defer os.RemoveAll(dir)
	var out bytes.Buffer
	if err := inspect(&out, dir, nil, 0); err == nil || !regexp.MustCompile(`no router or decap state`).MatchString(err.Error()) {
		t.Fatalf("empty pin dir: %v", err)
	}
	d, err := maps.LoadDecap(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetEndpoint(maps.DecapEndpoint{Addr: netip.MustParseAddr("10.77.0.10")}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(maps.DecapEndpoint{Addr: netip.MustParseAddr("fd77::10"), GUEPort: 6080, SourcesOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.SetSources([]netip.Prefix{netip.MustParsePrefix("fd77::/64"), netip.MustParsePrefix("10.77.0.1/32")}); err != nil {
		t.Fatal(err)
	}
	// One packet that is not a tunnel, so the reasons have a count.
	frame := make([]byte, 60)
	frame[12], frame[13] = 0x08, 0x06 // ARP
	if _, err := d.Program().Run(&ebpf.RunOptions{Data: frame}); err != nil {
		t.Fatal(err)
	}
	if err := inspect(&out, dir, nil, 0); err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`NEXT XDP PROGRAM\s+decap\s+none`,
		`DECAP ENDPOINT\s+ACCEPTS\s+FROM\n10\.77\.0\.10\s+ipip / ip6ip6\s+any source\nfd77::10\s+ipip / ip6ip6, gue udp/6080\s+decap sources only\n`,
		`DECAP SOURCE\n10\.77\.0\.1/32\nfd77::/64\n`,
		`DECAP VERDICT\s+REASON\s+PACKETS\npass\s+pass_not_tunnel\s+1\n`,
	} {
		if !regexp.MustCompile(re).Match(out.Bytes()) {
			t.Fatalf("missing %q in:\n%s", re, out.String())
		}
	}

	// An agent of a build before decap_sources pinned no pm_decap_sources:
	// inspect still reads the rest.
	if err := os.Remove(filepath.Join(dir, "pm_decap_sources")); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := inspect(&out, dir, nil, 0); err != nil {
		t.Fatalf("pins of an older agent: %v", err)
	}
	if !strings.Contains(out.String(), "fd77::10") || strings.Contains(out.String(), "DECAP SOURCE") {
		t.Fatalf("pins of an older agent:\n%s", out.String())
	}
}
