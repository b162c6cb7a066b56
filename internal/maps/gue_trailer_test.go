package maps

import (
	"encoding/binary"
	"math"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// primeNextHop fills mirror id's pm_nexthops entries (both inner
// families, every CPU) with a fresh next hop out of ifindex 1 (lo, where
// a test run without a context is received): the router then encapsulates
// and answers XDP_TX without a FIB lookup, so its output can be checked in
// the test's own namespace.
func primeNextHop(t *testing.T, r *Router, id MirrorID, mac []byte) {
	t.Helper()
	if err := r.SetNextHopTTL(MaxNextHopTTL); err != nil {
		t.Fatal(err)
	}
	nh, err := r.NextHopCache()
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	v := routerNexthop{ExpiresNs: math.MaxUint64, Generation: nh.Generation, IfindexIn: 1, IfindexOut: 1, MaxLen: 65535}
	copy(v.Dmac[:], mac)
	copy(v.Smac[:], edgeMAC)
	vals := make([]routerNexthop, cpus)
	for i := range vals {
		vals[i] = v
	}
	for _, k := range []uint32{uint32(id) << 1, uint32(id)<<1 | 1} {
		if err := r.objs.PmNexthops.Put(k, vals); err != nil {
			t.Fatal(err)
		}
	}
}

// udpWithTrailer is an IPv4 UDP datagram from client to vip:53 whose UDP
// length (12: 4 bytes of data) is below the IP payload (20): 8 bytes of
// trailer after the datagram, as the router's sweep carries ("UDP length
// below the packet (trailer) carried"). Its UDP checksum is valid: over
// the pseudo-header with the UDP length and the 12 bytes of the datagram.
func udpWithTrailer(client, vip netip.Addr) []byte {
	udp := append(udpHdr(5353, 53, 12), 'p', 'i', 'n', 'g')
	var ph []byte
	ph = append(ph, client.AsSlice()...)
	ph = append(ph, vip.AsSlice()...)
	ph = append(ph, 0, 17, 0, 12)
	c := ^onesSum(append(ph, udp...))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	trailer := []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4}
	return rawV4(client, vip, 17, 0x4000, 0, nil, append(udp, trailer...))
}

// TestGUEChecksumUDPTrailer: the router carries a UDP datagram shorter
// than its IP payload (the sweep's trailer case); over GUE its outer UDP
// checksum must then still be valid (or 0), never a wrong one. The
// checksum is derived as if the inner UDP checksum covered the whole IP
// payload with the IP payload length in its pseudo-header; it covers the
// UDP length's bytes with the UDP length, so the outer checksum is off by
// the trailer's sum and the length difference.
func TestGUEChecksumUDPTrailer(t *testing.T) {
	r := newRootFixture(t)
	gm := gueMirrors[mGUE4]
	if err := r.SetMirror(mGUE4, gm); err != nil {
		t.Fatal(err)
	}
	if err := r.SetVIP(vipGU, VIPOptions{Resource: resG}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRoute(resG, regEU, map[MirrorID]uint32{mGUE4: 1}); err != nil {
		t.Fatal(err)
	}
	primeNextHop(t, r, mGUE4, mirrorMAC(gm.Addr))

	run := func(t *testing.T, in []byte) []byte {
		t.Helper()
		opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
		v, err := r.Program().Run(opts)
		if err != nil {
			t.Fatal(err)
		}
		if v != xdpTX {
			t.Fatalf("verdict %s, want TX", verdictNames[v])
		}
		return opts.DataOut
	}
	outerUDP := func(out []byte) []byte {
		tot := int(binary.BigEndian.Uint16(out[14+2:]))
		return out[14+20 : 14+tot]
	}

	// Sanity: an ordinary datagram's outer checksum is valid here.
	plain := ethFrame(rawV4(clientEU, vipGU.Addr, 17, 0x4000, 0, nil, append(udpHdr(5354, 53, 12), 'p', 'i', 'n', 'g')), 0x0800, 0)
	{
		l4 := plain[14+20:]
		var ph []byte
		ph = append(ph, clientEU.AsSlice()...)
		ph = append(ph, vipGU.Addr.AsSlice()...)
		ph = append(ph, 0, 17, 0, 12)
		binary.BigEndian.PutUint16(l4[6:], ^onesSum(append(ph, l4[:12]...)))
	}
	if u := outerUDP(run(t, plain)); !udpChecksumValid(edgeV4, gm.Addr, u) {
		t.Fatalf("plain datagram: outer UDP checksum %#04x invalid", binary.BigEndian.Uint16(u[6:]))
	}

	in := ethFrame(udpWithTrailer(clientEU, vipGU.Addr), 0x0800, 0)
	u := outerUDP(run(t, in))
	if c := binary.BigEndian.Uint16(u[6:]); c != 0 && !udpChecksumValid(edgeV4, gm.Addr, u) {
		t.Errorf("datagram with a trailer: outer UDP checksum %#04x invalid (want a valid one or 0)", c)
	}

	// IPv6 inside, toward the IPv6 GUE mirror: the same.
	g6 := gueMirrors[mGUE6]
	if err := r.SetMirror(mGUE6, g6); err != nil {
		t.Fatal(err)
	}
	if err := r.SetVIP(vipGU6, VIPOptions{Resource: resG6}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRoute(resG6, regEU, map[MirrorID]uint32{mGUE6: 1}); err != nil {
		t.Fatal(err)
	}
	primeNextHop(t, r, mGUE6, mirrorMAC(g6.Addr))
	udp := append(udpHdr(5353, 53, 12), 'p', 'i', 'n', 'g')
	var ph []byte
	ph = append(ph, client6EU.AsSlice()...)
	ph = append(ph, vipGU6.Addr.AsSlice()...)
	ph = append(ph, 0, 0, 0, 12, 0, 0, 0, 17)
	binary.BigEndian.PutUint16(udp[6:], ^onesSum(append(ph, udp...)))
	in6 := ethFrame(rawV6(client6EU, vipGU6.Addr, nil, 17, -1, append(udp, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4)), 0x86dd, 0)
	opts := &ebpf.RunOptions{Data: in6, DataOut: make([]byte, len(in6)+256)}
	if v, err := r.Program().Run(opts); err != nil || v != xdpTX {
		t.Fatalf("v6: verdict %s (%v), want TX", verdictNames[v], err)
	}
	out := opts.DataOut
	plen := int(binary.BigEndian.Uint16(out[14+4:]))
	u6 := out[14+40 : 14+40+plen]
	if c := binary.BigEndian.Uint16(u6[6:]); c != 0 && !udpChecksumValid(edgeV6, g6.Addr, u6) {
		t.Fatalf("v6 datagram with a trailer: outer UDP checksum %#04x invalid (want a valid one or 0)", c)
	}
}
