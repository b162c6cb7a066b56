package wan

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// memPort is an in-memory PortIO: frames injected with send are read by
// the switch; frames the switch writes are collected.
type memPort struct {
	in     chan []byte
	mu     sync.Mutex
	out    [][]byte
	outAt  []time.Time
	got    chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newMemPort() *memPort {
	return &memPort{in: make(chan []byte, 1024), got: make(chan struct{}, 1024), closed: make(chan struct{})}
}

func (m *memPort) Read(buf []byte) (int, error) {
	select {
	case f := <-m.in:
		if len(f) > len(buf) {
			return 0, ErrOversize
		}
		return copy(buf, f), nil
	case <-m.closed:
		return 0, net.ErrClosed
	}
}

func (m *memPort) Write(f []byte) error {
	m.mu.Lock()
	m.out = append(m.out, append([]byte(nil), f...))
	m.outAt = append(m.outAt, time.Now())
	m.mu.Unlock()
	select {
	case m.got <- struct{}{}:
	default: // only wait() reads got; count() sees every frame
	}
	return nil
}

// memBatch is a memPort that also moves frames in batches.
type memBatch struct{ *memPort }

func (m memBatch) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	n, err := m.Read(bufs[0])
	if err != nil {
		if errors.Is(err, ErrOversize) {
			lens[0] = -1
			return 1, nil
		}
		return 0, err
	}
	lens[0] = n
	i := 1
	for ; i < len(bufs); i++ {
		select {
		case f := <-m.in:
			if len(f) > len(bufs[i]) {
				lens[i] = -1
			} else {
				lens[i] = copy(bufs[i], f)
			}
			continue
		default:
		}
		break
	}
	return i, nil
}

func (m memBatch) WriteBatch(frames [][]byte) (int, error) {
	for _, f := range frames {
		m.Write(f)
	}
	return len(frames), nil
}

func (m *memPort) Close() error { m.once.Do(func() { close(m.closed) }); return nil }

func (m *memPort) wait(t *testing.T, n int) [][]byte {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for m.count() < n {
		select {
		case <-m.got:
		case <-time.After(time.Millisecond):
		case <-deadline:
			t.Fatalf("got %d frames, want %d", m.count(), n)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]byte(nil), m.out...)
}

func (m *memPort) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.out)
}

var (
	swMAC = func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, i} }
	hMAC  = func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 1, 0, i} }
	vip4  = netip.MustParseAddr("10.200.0.1")
	vip6  = netip.MustParseAddr("fd00:200::1")
)

// frame4 builds an Ethernet+IPv4 frame with a valid header checksum.
func frame4(dstMAC net.HardwareAddr, src, dst netip.Addr, ttl, proto byte, payload []byte) []byte {
	f := make([]byte, 14+20+len(payload))
	copy(f[0:6], dstMAC)
	copy(f[6:12], net.HardwareAddr{2, 9, 9, 9, 9, 9})
	binary.BigEndian.PutUint16(f[12:], etherTypeV4)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(payload)))
	ip[8], ip[9] = ttl, proto
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ipv4Checksum(ip[:20]))
	copy(ip[20:], payload)
	return f
}

func frame6(dstMAC net.HardwareAddr, src, dst netip.Addr, hop, next byte, payload []byte) []byte {
	f := make([]byte, 14+40+len(payload))
	copy(f[0:6], dstMAC)
	binary.BigEndian.PutUint16(f[12:], etherTypeV6)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6], ip[7] = next, hop
	s, d := src.As16(), dst.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	copy(ip[40:], payload)
	return f
}

func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		if i != 10 {
			sum += uint32(binary.BigEndian.Uint16(h[i:]))
		}
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}

// testNet: clients c1 (region A → edge e1) and c2 (→ e2), edges e1 and e2
// (e1 has two arms), mirror m.
type testNet struct {
	sw    *Switch
	ports map[string]*memPort
	mac   map[string]net.HardwareAddr
}

// newTestNet builds the switch with plain ports, or batching ones when the
// test name ends in "batch".
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	tn := &testNet{ports: map[string]*memPort{}, mac: map[string]net.HardwareAddr{}}
	type pd struct {
		name, site string
		addrs      []string
	}
	pds := []pd{
		{"p1", "c1", []string{"10.1.0.1", "fd00:1::1"}},
		{"p2", "c2", []string{"10.2.0.1", "fd00:2::1"}},
		{"p3", "e1", []string{"10.255.0.1", "fd00:ff::1"}},
		{"p4", "e1", []string{"10.255.0.2", "fd00:ff::2"}},
		{"p5", "e2", []string{"10.255.0.3", "fd00:ff::3"}},
		{"p6", "m", []string{"10.255.0.4", "fd00:ff::4"}},
	}
	var ports []Port
	for i, p := range pds {
		mp := newMemPort()
		tn.ports[p.name] = mp
		tn.mac[p.name] = swMAC(byte(i + 1))
		var as []netip.Addr
		for _, a := range p.addrs {
			as = append(as, netip.MustParseAddr(a))
		}
		var io PortIO = mp
		if strings.HasSuffix(t.Name(), "batch") {
			io = memBatch{mp}
		}
		ports = append(ports, Port{Name: p.name, Site: p.site, MAC: swMAC(byte(i + 1)), PeerMAC: hMAC(byte(i + 1)), Addrs: as, IO: io})
	}
	sw, err := New(Config{
		Sites: []Site{{Name: "c1", VIPPort: "p3"}, {Name: "c2", VIPPort: "p5"}, {Name: "e1"}, {Name: "e2"}, {Name: "m"}},
		Ports: ports, VIPs: []netip.Addr{vip4, vip6}, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	tn.sw = sw
	t.Cleanup(func() {
		if err := sw.Close(); err != nil {
			t.Error(err)
		}
	})
	return tn
}

// inBothModes runs test with plain ports and with batching ports (see
// newTestNet).
func inBothModes(t *testing.T, test func(*testing.T)) {
	for _, mode := range []string{"single", "batch"} {
		t.Run(mode, test)
	}
}

func TestRouting(t *testing.T) { inBothModes(t, testRouting) }

func testRouting(t *testing.T) {
	tn := newTestNet(t)
	a := netip.MustParseAddr
	tests := []struct {
		name   string
		in     string
		frame  []byte
		out    string // "" = dropped
		reason DropReason
	}{
		{"v4 to site", "p1", frame4(swMAC(1), a("10.1.0.1"), a("10.255.0.4"), 64, 6, []byte("x")), "p6", 0},
		{"v6 to site", "p1", frame6(swMAC(1), a("fd00:1::1"), a("fd00:ff::4"), 64, 17, []byte("x")), "p6", 0},
		{"v4 vip from c1 to e1 arm 0", "p1", frame4(swMAC(1), a("10.1.0.1"), vip4, 64, 6, nil), "p3", 0},
		{"v6 vip from c2 to e2", "p2", frame6(swMAC(2), a("fd00:2::1"), vip6, 64, 6, nil), "p5", 0},
		{"vip from mirror has no edge", "p6", frame4(swMAC(6), vip4, vip4, 64, 6, nil), "", DropNoRoute},
		{"ipip routed by outer dst", "p4", frame4(swMAC(4), a("10.255.0.2"), a("10.255.0.4"), 64, 4,
			frame4(nil, a("10.1.0.1"), vip4, 64, 6, nil)[14:]), "p6", 0},
		{"ip6ip6 routed by outer dst", "p4", frame6(swMAC(4), a("fd00:ff::2"), a("fd00:ff::4"), 64, 41,
			frame6(nil, a("fd00:1::1"), vip6, 64, 6, nil)[14:]), "p6", 0},
		{"unknown destination", "p1", frame4(swMAC(1), a("10.1.0.1"), a("192.0.2.1"), 64, 6, nil), "", DropNoRoute},
		{"wrong mac", "p1", frame4(swMAC(2), a("10.1.0.1"), a("10.255.0.4"), 64, 6, nil), "", DropNotForUs},
		{"broadcast", "p1", append(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, make([]byte, 50)...), "", DropMulticast},
		{"arp", "p1", append(append(swMAC(1), make([]byte, 6)...), 0x08, 0x06, 0, 0), "", DropNonIP},
		{"ttl 1", "p1", frame4(swMAC(1), a("10.1.0.1"), a("10.255.0.4"), 1, 6, nil), "", DropTTL},
		{"hop limit 1", "p1", frame6(swMAC(1), a("fd00:1::1"), a("fd00:ff::4"), 1, 6, nil), "", DropTTL},
		{"short ip", "p1", frame4(swMAC(1), a("10.1.0.1"), a("10.255.0.4"), 64, 6, nil)[:30], "", DropMalformed},
		{"runt", "p1", []byte{1, 2, 3}, "", DropMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.frame
			orig := append([]byte(nil), in...)
			before, _ := tn.sw.PortStats(tc.in)
			var outBefore int
			if tc.out != "" {
				outBefore = tn.ports[tc.out].count()
			}
			tn.ports[tc.in].in <- in
			if tc.out == "" {
				deadline := time.Now().Add(5 * time.Second)
				for {
					st, _ := tn.sw.PortStats(tc.in)
					if st.Drops[tc.reason] == before.Drops[tc.reason]+1 {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("drop %v not counted: %+v", tc.reason, st)
					}
					time.Sleep(time.Millisecond)
				}
			}
			got := tn.ports[tc.out].wait(t, outBefore+1)[outBefore]
			if want := hMAC(tc.out[1] - '0'); string(got[0:6]) != string(want) {
				t.Errorf("dst mac %v, want %v", net.HardwareAddr(got[0:6]), want)
			}
			if string(got[6:12]) != string(tn.mac[tc.out]) {
				t.Errorf("src mac %v, want %v", net.HardwareAddr(got[6:12]), tn.mac[tc.out])
			}
			if binary.BigEndian.Uint16(orig[12:]) == etherTypeV4 {
				if got[14+8] != orig[14+8]-1 {
					t.Errorf("ttl %d, want %d", got[14+8], orig[14+8]-1)
				}
				if c := binary.BigEndian.Uint16(got[14+10:]); c != ipv4Checksum(got[14:34]) {
					t.Errorf("header checksum %#x, want %#x", c, ipv4Checksum(got[14:34]))
				}
			} else if got[14+7] != orig[14+7]-1 {
				t.Errorf("hop limit %d, want %d", got[14+7], orig[14+7]-1)
			}
			if string(got[14:21]) != string(orig[14:21]) && binary.BigEndian.Uint16(orig[12:]) == etherTypeV6 {
				t.Errorf("ipv6 header changed beyond hop limit")
			}
			if string(got[34:]) != string(orig[34:]) {
				t.Errorf("payload changed")
			}
		})
	}
}

func TestDelayAndOrder(t *testing.T) { inBothModes(t, testDelayAndOrder) }

func testDelayAndOrder(t *testing.T) {
	tn := newTestNet(t)
	a := netip.MustParseAddr
	const d = 40 * time.Millisecond
	if err := tn.sw.SetPath("c1", "m", Path{Delay: d}); err != nil {
		t.Fatal(err)
	}
	mk := func(seq byte) []byte {
		return frame4(swMAC(1), a("10.1.0.1"), a("10.255.0.4"), 64, 17, []byte{seq})
	}
	start := time.Now()
	for i := byte(0); i < 5; i++ {
		tn.ports["p1"].in <- mk(i)
	}
	time.Sleep(5 * time.Millisecond)
	// Lower the delay while frames are in flight: later frames must not
	// overtake earlier ones.
	if err := tn.sw.SetPath("c1", "m", Path{}); err != nil {
		t.Fatal(err)
	}
	for i := byte(5); i < 10; i++ {
		tn.ports["p1"].in <- mk(i)
	}
	out := tn.ports["p6"].wait(t, 10)
	for i, f := range out {
		if f[34] != byte(i) {
			t.Fatalf("frame %d carries seq %d: order not kept", i, f[34])
		}
	}
	tn.ports["p6"].mu.Lock()
	first := tn.ports["p6"].outAt[0]
	tn.ports["p6"].mu.Unlock()
	if el := first.Sub(start); el < d {
		t.Errorf("first frame left after %v, before its %v delay", el, d)
	}
	if p, _ := tn.sw.Path("c1", "m"); p.Delay != 0 {
		t.Errorf("path delay %v after reset", p.Delay)
	}
	// Other pairs are unaffected by c1→m's delay.
	if p, _ := tn.sw.Path("m", "c1"); p != (Path{}) {
		t.Errorf("reverse path %+v, want zero", p)
	}
}

func TestLossAndCounters(t *testing.T) { inBothModes(t, testLossAndCounters) }

func testLossAndCounters(t *testing.T) {
	tn := newTestNet(t)
	a := netip.MustParseAddr
	if err := tn.sw.SetPath("c1", "m", Path{Loss: 0.3}); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	go func() {
		for i := 0; i < n; i++ {
			tn.ports["p1"].in <- frame4(swMAC(1), a("10.1.0.1"), a("10.255.0.4"), 64, 17, nil)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	var ps PairStats
	for time.Now().Before(deadline) {
		ps, _ = tn.sw.PairStats("c1", "m")
		if ps.Frames+ps.Lost == n && tn.ports["p6"].count() == int(ps.Frames) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ps.Frames+ps.Lost != n {
		t.Fatalf("pair counted %d+%d frames, want %d", ps.Frames, ps.Lost, n)
	}
	// 0.3 ± 5 standard deviations (σ ≈ 0.0102 for n = 2000).
	if f := float64(ps.Lost) / n; f < 0.25 || f > 0.35 {
		t.Errorf("loss fraction %.3f, want about 0.3", f)
	}
	in, _ := tn.sw.PortStats("p1")
	out, _ := tn.sw.PortStats("p6")
	if in.RxFrames != n || in.Drops[DropLoss] != ps.Lost || out.TxFrames != ps.Frames {
		t.Errorf("port counters rx=%d loss=%d tx=%d, pair %+v", in.RxFrames, in.Drops[DropLoss], out.TxFrames, ps)
	}
}

func TestConfigErrors(t *testing.T) {
	io := func() PortIO { return newMemPort() }
	base := func() Config {
		return Config{
			Sites: []Site{{Name: "a"}, {Name: "b"}},
			Ports: []Port{
				{Name: "p1", Site: "a", MAC: swMAC(1), PeerMAC: hMAC(1), Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, IO: io()},
				{Name: "p2", Site: "b", MAC: swMAC(2), PeerMAC: hMAC(2), Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, IO: io()},
			},
		}
	}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"duplicate site", func(c *Config) { c.Sites[1].Name = "a" }},
		{"unknown site", func(c *Config) { c.Ports[1].Site = "zz" }},
		{"duplicate port", func(c *Config) { c.Ports[1].Name = "p1" }},
		{"duplicate address", func(c *Config) { c.Ports[1].Addrs = c.Ports[0].Addrs }},
		{"vip is a site address", func(c *Config) { c.VIPs = c.Ports[0].Addrs }},
		{"bad vip port", func(c *Config) { c.Sites[0].VIPPort = "p9" }},
		{"short mac", func(c *Config) { c.Ports[0].MAC = c.Ports[0].MAC[:3] }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			if sw, err := New(c); err == nil {
				sw.Close()
				t.Fatal("no error")
			}
		})
	}
	sw, err := New(base())
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	for _, p := range []Path{{Delay: -1}, {Delay: 2 * MaxDelay}, {Loss: -0.1}, {Loss: 1.5}} {
		if err := sw.SetPath("a", "b", p); err == nil {
			t.Errorf("SetPath(%+v) accepted", p)
		}
	}
	if err := sw.SetPath("a", "nope", Path{}); !errors.Is(err, ErrUnknownSite) {
		t.Errorf("unknown site: %v", err)
	}
}

func FuzzFrame(f *testing.F) {
	a := netip.MustParseAddr
	f.Add(frame4(swMAC(1), a("10.0.0.1"), a("10.0.0.2"), 64, 6, []byte("abc")))
	f.Add(frame6(swMAC(1), a("fd00::1"), a("fd00::2"), 2, 17, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dst, ttl, _, ok := parseDst(b)
		if !ok || ttl <= 1 {
			return
		}
		if !dst.IsValid() {
			t.Fatal("ok without an address")
		}
		v4 := dst.Is4()
		var before uint16
		if v4 {
			before = binary.BigEndian.Uint16(b[14+10:])
		}
		decTTL(b)
		if v4 {
			ihl := int(b[14]&0xf) * 4
			// The incremental update must agree with a full recomputation
			// whenever the original checksum was right.
			h := append([]byte(nil), b[14:14+ihl]...)
			h[8]++
			if ipv4Checksum(h) == before {
				if c := binary.BigEndian.Uint16(b[14+10:]); c != ipv4Checksum(b[14:14+ihl]) {
					t.Fatalf("checksum %#x after decrement, want %#x", c, ipv4Checksum(b[14:14+ihl]))
				}
			}
		}
	})
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestItemHeapOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h itemHeap
	for i := 0; i < 2000; i++ {
		h.push(item{release: rng.Int64N(50), seq: uint64(i)})
		if rng.IntN(3) == 0 {
			h.pop()
		}
	}
	prev := item{release: -1}
	for len(h) > 0 {
		it := h.pop()
		if it.release < prev.release || (it.release == prev.release && it.seq < prev.seq) {
			t.Fatalf("popped %+v after %+v", it, prev)
		}
		prev = it
	}
}
