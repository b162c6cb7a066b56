package maps

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/premirror/premirror/internal/testbed"
)

// TestGUETraffic sends real TCP and UDP through the router to a GUE mirror
// and back by direct server return, for every (inner, outer) family pair:
// a client, an edge running the router and a mirror running the decap
// program, each a network namespace on the testbed's emulated WAN (veth
// pairs to a userspace switch; the testbed creates and deletes them). The
// mirror's identity service, bound to the VIPs on its loopback, answers
// from the VIP straight to the client.
func TestGUETraffic(t *testing.T) {
	requireRoot(t)
	vip4, vip6 := a("10.200.0.10"), a("fd00:200::10")
	const tcpPort, udpPort, guePort = 8080, 8053, 6635
	tb := testbed.ForTest(t, testbed.Topology{
		VIPs:    []netip.Addr{vip4, vip6},
		Service: testbed.Service{TCPPorts: []uint16{tcpPort}, UDPPorts: []uint16{udpPort}},
		Regions: []testbed.Region{{Name: "eu", Edge: "edge1", Clients: 1,
			PrefixV4: netip.MustParsePrefix("10.1.0.0/24"), PrefixV6: netip.MustParsePrefix("fd00:1::/64")}},
		Edges:   []testbed.Edge{{Name: "edge1"}},
		Mirrors: []testbed.Mirror{{Name: "m1"}},
		// Room for GUE over IPv6 (48 bytes) on the 1500-byte edge links.
		ClientMTU: 1400,
	}, testbed.Options{})
	edge, mirror, client := tb.Host("edge1"), tb.Host("m1"), tb.Clients("eu")[0]

	r, err := LoadRouter(testConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	d, err := LoadDecap(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	// Links are created in the host's namespace (ifindexes are per
	// namespace); the file descriptor keeps them after the thread leaves.
	attach := func(h *testbed.Host, opts link.XDPOptions) {
		t.Helper()
		var l link.Link
		if err := h.Do(func() error {
			var err error
			l, err = link.AttachXDP(opts)
			return err
		}); err != nil {
			t.Fatalf("attach XDP in %s: %v", h.Name, err)
		}
		t.Cleanup(func() { l.Close() })
	}
	attach(edge, link.XDPOptions{Program: r.Program(), Interface: edge.Ifaces[0].Index})
	attach(mirror, link.XDPOptions{Program: d.Program(), Interface: mirror.Ifaces[0].Index})

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const eu RegionID = 1
	must(r.SetSettings(Settings{DefaultRegion: eu, OuterSourceV4: edge.V4(), OuterSourceV6: edge.V6()}))
	must(r.SetRegionPrefix(netip.MustParsePrefix("10.1.0.0/24"), eu))
	must(r.SetRegionPrefix(netip.MustParsePrefix("fd00:1::/64"), eu))
	mirrors := map[string]MirrorID{"v4": 1, "v6": 2}
	must(r.SetMirror(1, Mirror{Addr: mirror.V4(), State: MirrorActive, Encap: EncapGUE, GUEPort: guePort}))
	must(r.SetMirror(2, Mirror{Addr: mirror.V6(), State: MirrorActive, Encap: EncapGUE, GUEPort: guePort}))
	vips := map[string]netip.Addr{"v4": vip4, "v6": vip6}
	res := map[string]ResourceID{"v4": 1, "v6": 2}
	for fam, vip := range vips {
		must(r.SetVIP(VIP{vip, tcpPort, TCP}, VIPOptions{Resource: res[fam]}))
		must(r.SetVIP(VIP{vip, udpPort, UDP}, VIPOptions{Resource: res[fam]}))
	}
	must(r.SetNextHopTTL(DefaultNextHopTTL))
	must(d.SetEndpoint(DecapEndpoint{Addr: mirror.V4(), GUEPort: guePort}))
	must(d.SetEndpoint(DecapEndpoint{Addr: mirror.V6(), GUEPort: guePort}))

	sw := tb.Switch()
	pair := func(from, to string) uint64 {
		t.Helper()
		ps, err := sw.PairStats(from, to)
		if err != nil {
			t.Fatal(err)
		}
		return ps.Frames
	}
	for _, inner := range []string{"v4", "v6"} {
		for _, outer := range []string{"v4", "v6"} {
			t.Run(fmt.Sprintf("%s in %s", inner, outer), func(t *testing.T) {
				must(r.SetRoute(res[inner], RegionAny, map[MirrorID]uint32{mirrors[outer]: 1}))
				rs0, ds0 := mustStats(t, r, d)
				toMirror, back, viaEdge := pair("edge1", "m1"), pair("m1", client.Name), pair("m1", "edge1")
				for _, network := range []string{"tcp", "udp"} {
					port := tcpPort
					if network == "udp" {
						port = udpPort
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					rep, err := client.Ask(ctx, network, netip.AddrPortFrom(vips[inner], uint16(port)).String())
					cancel()
					if err != nil {
						t.Fatalf("%s to %s: %v", network, vips[inner], err)
					}
					if rep.Mirror != "m1" {
						t.Fatalf("%s answered by %q, want m1", network, rep.Mirror)
					}
				}
				// The client's last packets (its FIN and ACKs) may still be
				// on their way when the answer is in: wait for the counts to
				// settle.
				// A late packet of the previous subtest's connection (a
				// retransmitted FIN on a loaded machine) still goes to its
				// session's mirror, over the other outer family: count both
				// families, and this subtest's exchange on its own.
				var rs1 Stats
				var ds1 DecapStats
				var sent, stripped, decapped, ours uint64
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					rs1, ds1 = mustStats(t, r, d)
					sent, stripped = rs1.Tx-rs0.Tx, ds1.Gue-ds0.Gue
					decapped = ds1.DecapV4 - ds0.DecapV4 + ds1.DecapV6 - ds0.DecapV6
					ours = ds1.DecapV4 - ds0.DecapV4
					if outer == "v6" {
						ours = ds1.DecapV6 - ds0.DecapV6
					}
					if stripped == sent && decapped == sent || time.Now().After(deadline) {
						break
					}
				}
				// A TCP exchange is at least SYN, ACK, request, FIN; UDP one request.
				if sent < 4 || ours < 4 || rs1.GueZeroCsumV6 != rs0.GueZeroCsumV6 {
					t.Fatalf("router sent %d packets (%d decapsulated from outer %s), %d with a zero checksum", sent, ours, outer, rs1.GueZeroCsumV6-rs0.GueZeroCsumV6)
				}
				// Every packet the router sent arrived as GUE and was stripped.
				if stripped != sent || decapped != sent || ds1.DropMalformed != ds0.DropMalformed {
					t.Fatalf("router sent %d, mirror stripped %d GUE and decapsulated %d, dropped %d",
						sent, stripped, decapped, ds1.DropMalformed-ds0.DropMalformed)
				}
				// Direct server return: the answers went from the mirror
				// to the client, none through the edge.
				if n := pair("edge1", "m1") - toMirror; n < sent {
					t.Fatalf("switch carried %d frames edge → mirror, router sent %d", n, sent)
				}
				if pair("m1", client.Name) == back || pair("m1", "edge1") != viaEdge {
					t.Fatal("replies did not go straight from the mirror to the client")
				}
			})
		}
	}
}

func mustStats(t *testing.T, r *Router, d *Decap) (Stats, DecapStats) {
	t.Helper()
	rs, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return rs, ds
}
