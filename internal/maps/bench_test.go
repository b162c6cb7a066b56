package maps

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/premirror/premirror/internal/maps/internal/benchprog"
	"github.com/premirror/premirror/internal/maps/mapstest"
	"github.com/premirror/premirror/internal/probe"
)

// harness runs programs through BPF_PROG_TEST_RUN with the frame restored
// before every repetition (see bpf/bench.bpf.c).
type harness struct {
	f    *fixture
	objs *benchprog.BenchObjects
}

func newHarness(b *testing.B, f *fixture) *harness {
	objs, err := benchprog.Load()
	if err != nil {
		b.Fatalf("load bench harness: %v", err)
	}
	b.Cleanup(func() { objs.Close() })
	return &harness{f: f, objs: objs}
}

// timeRun returns the kernel-measured time per run of prog over frame.
func (h *harness) timeRun(b *testing.B, prog *ebpf.Program, frame []byte, n int) (uint32, time.Duration) {
	var ret uint32
	var d time.Duration
	var err error
	// One CPU: the restore harness's flow sequence is per CPU, and a run
	// that migrated would replay flows instead of creating new ones.
	h.f.env.do(func() {
		err = onOneCPU(func() error {
			var err error
			ret, d, err = prog.Benchmark(frame, n, nil)
			return err
		})
	})
	if err != nil {
		b.Fatalf("benchmark run: %v", err)
	}
	return ret, d
}

// restored times target behind the restore harness in the given mode.
func (h *harness) restored(b *testing.B, target *ebpf.Program, frame []byte, mode, flows uint32, n int) (uint32, time.Duration) {
	fr := benchprog.BenchBenchFrame{Len: uint32(len(frame)), Mode: mode, Flows: flows}
	copy(fr.Data[:], frame)
	// Source port, and the last two bytes of the source address.
	if frame[12] == 0x08 { // IPv4
		fr.SportOff, fr.SrcOff = 14+20, 14+12+2
	} else {
		fr.SportOff, fr.SrcOff = 14+40, 14+8+14
	}
	if err := h.objs.BenchFrame.Put(uint32(0), &fr); err != nil {
		b.Fatal(err)
	}
	if err := h.objs.BenchTarget.Put(uint32(0), target); err != nil {
		b.Fatal(err)
	}
	return h.timeRun(b, h.objs.BenchRestore, frame, n)
}

// BenchmarkRouter measures ns/packet through BPF_PROG_TEST_RUN. Encapsulating
// cases run behind the restore harness; its own cost (restore -> floor minus
// floor) is subtracted, so every figure is comparable with the floor and
// with Katran's measured the same way (ANCHORS.md).
func BenchmarkRouter(b *testing.B) {
	// Twice the live flows of the 1M-session case: an LRU evicts before
	// it is completely full (per-CPU free lists), and an evicted flow
	// would be a new flow, not an established one.
	cfg := DefaultConfig()
	cfg.MaxSessions = 2 << 20
	f := newFixtureConfig(b, cfg)
	f.addGUE(b)
	h := newHarness(b, f)
	// The flow benchmarks rewrite the low 16 bits of the client address:
	// keep those clients in a region that has a route.
	if err := f.r.SetRegionPrefix(netip.MustParsePrefix("198.51.0.0/16"), regEU); err != nil {
		b.Fatal(err)
	}
	// The next-hop cache as the agent configures it: refilled every TTL,
	// and on a miss; the *_fib cases below turn it off.
	if err := f.r.SetNextHopTTL(DefaultNextHopTTL); err != nil {
		b.Fatal(err)
	}
	syn4 := pkt{src: clientEU, dst: vipWeb.Addr, sport: 40000, dport: 80}.frame(b)
	ack4 := pkt{src: clientEU, dst: vipWeb.Addr, sport: 40000, dport: 80, flags: "A"}.frame(b)
	ack6 := pkt{src: client6EU, dst: vipWeb6.Addr, sport: 40000, dport: 443, flags: "A"}.frame(b)
	other := pkt{src: clientEU, dst: a("192.0.2.99"), sport: 40000, dport: 80, flags: "A"}.frame(b)
	// The same established flows toward GUE mirrors (addGUE): IPv4 in
	// IPv4 and IPv6 in IPv6, UDP checksum derived.
	gue4 := pkt{src: clientEU, dst: vipG.Addr, sport: 40000, dport: 80, flags: "A"}.frame(b)
	gue6 := pkt{src: client6EU, dst: vipG6.Addr, sport: 40000, dport: 443, flags: "A"}.frame(b)

	// The harness's own cost, measured with enough repetitions to be stable
	// even when the benchmark itself runs once (-benchtime=1x).
	const calib = 200000
	_, floorCal := h.timeRun(b, h.objs.BenchFloor, ack4, calib)
	_, harnessCal := h.restored(b, h.objs.BenchFloor, ack4, 0, 0, calib)
	overhead := harnessCal - floorCal

	smallCfg := DefaultConfig()
	smallCfg.MaxSessions = 4096
	small := newFixtureConfig(b, smallCfg)
	if err := small.r.SetRegionPrefix(netip.MustParsePrefix("198.51.0.0/16"), regEU); err != nil {
		b.Fatal(err)
	}
	if err := small.r.SetNextHopTTL(DefaultNextHopTTL); err != nil {
		b.Fatal(err)
	}
	smallH := newHarness(b, small)
	report := func(b *testing.B, d time.Duration) {
		b.ReportMetric(float64(d.Nanoseconds()), "ns/pkt")
		b.ReportMetric(float64(overhead.Nanoseconds()), "harness-ns")
	}
	encap := func(name string, frame []byte, mode, flows uint32, warm int) {
		warmed := false
		b.Run(name, func(b *testing.B) {
			// b.Run calls this with growing b.N: warm up once, untimed.
			if warm > 0 && !warmed {
				h.restored(b, f.r.Program(), frame, mode, flows, warm)
				warmed = true
				if n, err := f.r.SessionCount(); err != nil || n < int(flows) {
					b.Fatalf("%d sessions live after warm-up, want %d (%v)", n, flows, err)
				}
				b.ResetTimer()
			}
			ret, d := h.restored(b, f.r.Program(), frame, mode, flows, b.N)
			if ret != xdpRedirect && ret != xdpTX {
				b.Fatalf("verdict %s", verdictNames[ret])
			}
			report(b, d-overhead)
		})
	}

	b.Run("floor", func(b *testing.B) {
		_, d := h.timeRun(b, h.objs.BenchFloor, ack4, b.N)
		report(b, d)
	})
	b.Run("pass_non_vip", func(b *testing.B) {
		ret, d := h.timeRun(b, f.r.Program(), other, b.N)
		if ret != xdpPass {
			b.Fatalf("verdict %s", verdictNames[ret])
		}
		report(b, d)
	})
	// The same packet handed on to a peer XDP program (xdp_chain): the
	// tail call plus the peer's own work (a counter and a UDP port check).
	b.Run("pass_non_vip_peer", func(b *testing.B) {
		peer, err := mapstest.NewPeer(9, mapstest.PeerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer peer.Close()
		if err := f.r.SetNext(peer.Program); err != nil {
			b.Fatal(err)
		}
		defer f.r.ClearNext()
		ret, d := h.timeRun(b, f.r.Program(), other, b.N)
		if seen, err := peer.Seen(); ret != xdpPass || err != nil || seen != uint64(b.N) {
			b.Fatalf("verdict %s, peer ran %d of %d times (%v)", verdictNames[ret], seen, b.N, err)
		}
		report(b, d)
	})
	encap("established_v4", ack4, 0, 0, 1)
	encap("new_flow_v4", syn4, 1, 0, 0)
	encap("established_v6", ack6, 0, 0, 1)
	encap("established_v4_gue", gue4, 0, 0, 1)
	encap("established_v6_gue", gue6, 0, 0, 1)
	// The same packets with the next-hop cache off: bpf_fib_lookup on
	// every packet, as before the cache.
	for _, c := range []struct {
		name  string
		frame []byte
	}{{"established_v4_fib", ack4}, {"established_v6_fib", ack6}} {
		if err := f.r.SetNextHopTTL(0); err != nil {
			b.Fatal(err)
		}
		encap(c.name, c.frame, 0, 0, 1)
		if err := f.r.SetNextHopTTL(DefaultNextHopTTL); err != nil {
			b.Fatal(err)
		}
	}
	// 1M live sessions, each packet from the next one: the LRU lookups
	// miss the CPU caches as they would on a busy edge.
	encap("established_1M_sessions", ack4, 2, 1<<20, 1<<20)

	// The same new-flow path with a session table that fits in the CPU
	// caches (4096 entries, evicting on every insert): what the program
	// costs when the big table's DRAM misses are taken out.
	b.Run("new_flow_v4_4k_sessions", func(b *testing.B) {
		ret, d := smallH.restored(b, small.r.Program(), syn4, 1, 0, b.N)
		if ret != xdpRedirect && ret != xdpTX {
			b.Fatalf("verdict %s", verdictNames[ret])
		}
		report(b, d-overhead)
	})
}

// BenchmarkDecap: the decap program on a mirror host, kernel-timed ns per
// packet through the restore harness (its cost subtracted): an IPIP packet
// stripped, a GUE one (UDP to the endpoint's GUE port: it must not pay
// for the probe echo's settings), and an edge's UDP echo probe answered in
// XDP, beside the XDP_TX floor.
func BenchmarkDecap(b *testing.B) {
	f := newFixture(b)
	f.addGUE(b)
	h := newHarness(b, f)
	d, err := LoadDecap(Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	mirror := fixtureMirrors[m1]
	if err := d.AddEndpoint(mirror); err != nil {
		b.Fatal(err)
	}
	if err := d.SetProbeEcho(9461, 1<<30); err != nil {
		b.Fatal(err)
	}
	// The router's own IPIP output towards m1 is the decap's input.
	v, out := f.send(b, pkt{src: clientEU, dst: vipWeb.Addr, sport: 1, dport: 80}.frame(b))
	if v != xdpTX && v != xdpRedirect {
		b.Fatalf("router verdict %s", verdictNames[v])
	}
	ipip := bytes.Clone(out)
	g := gueMirrors[mGUE4]
	if err := d.SetEndpoint(DecapEndpoint{Addr: g.Addr, GUEPort: g.GUEPort}); err != nil {
		b.Fatal(err)
	}
	if v, out = f.send(b, pkt{src: clientEU, dst: vipG.Addr, sport: 1, dport: 80}.frame(b)); v != xdpTX && v != xdpRedirect {
		b.Fatalf("router verdict %s", verdictNames[v])
	}
	gue := bytes.Clone(out)
	req, err := probe.AppendPacket(nil, probe.Packet{Type: probe.TypeRequest, Seq: 1, Nonce: 2, Len: 64})
	if err != nil {
		b.Fatal(err)
	}
	echo := echoFrame(b, netip.MustParseAddr("10.1.0.5"), mirror, 9461, req, false)

	const calib = 200000
	_, floorCal := h.timeRun(b, h.objs.BenchFloor, echo, calib)
	_, harnessCal := h.restored(b, h.objs.BenchFloor, echo, 0, 0, calib)
	overhead := harnessCal - floorCal
	// decap_sources: 64 edge networks (IPv4 /24s and IPv6 /48s) plus the
	// router's own address, so the trie has depth to walk.
	var srcs []netip.Prefix
	for i := range 32 {
		srcs = append(srcs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(i), 0}), 24),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i)}), 48))
	}
	srcs = append(srcs, netip.PrefixFrom(edgeV4, 32))
	if _, _, err := d.SetSources(srcs); err != nil {
		b.Fatal(err)
	}
	sourcesOnly := func(on bool) {
		if err := d.SetEndpoint(DecapEndpoint{Addr: mirror, SourcesOnly: on}); err != nil {
			b.Fatal(err)
		}
		if err := d.SetEndpoint(DecapEndpoint{Addr: g.Addr, GUEPort: g.GUEPort, SourcesOnly: on}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name    string
		frame   []byte
		want    uint32
		sources bool
	}{
		{"ipip_v4", ipip, xdpPass, false},
		{"gue_v4", gue, xdpPass, false},
		{"probe_echo_v4", echo, xdpTX, false},
		{"ipip_v4_sources", ipip, xdpPass, true},
		{"gue_v4_sources", gue, xdpPass, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			sourcesOnly(c.sources)
			ret, dur := h.restored(b, d.Program(), c.frame, 0, 0, b.N)
			if ret != c.want {
				b.Fatalf("verdict %s", verdictNames[ret])
			}
			b.ReportMetric(float64((dur - overhead).Nanoseconds()), "ns/pkt")
			b.ReportMetric(float64(overhead.Nanoseconds()), "harness-ns")
		})
	}
	b.Run("floor", func(b *testing.B) {
		_, dur := h.timeRun(b, h.objs.BenchFloor, echo, b.N)
		b.ReportMetric(float64(dur.Nanoseconds()), "ns/pkt")
	})
}
