// Package testbed builds multi-region network testbeds out of Linux network
// namespaces, for premirror's end-to-end tests and its demo.
//
// # Topology
//
// A [Topology] (a Go value, or YAML through [LoadTopology]; see
// testdata/demo.yaml) names client regions (each with an IPv4 and an IPv6
// prefix, a number of clients and the edge its VIP traffic goes to), edge
// routers (one or two arms), mirrors and the VIPs. [New] (or [ForTest]
// in tests) turns it into:
//
//   - one namespace per host ([Host]): clients "<region>-<i>", edges and
//     mirrors by name. Each has an uplink veth eth0 (a two-armed edge also
//     eth1, which faces the mirrors: the edge routes the mirrors'
//     addresses via eth1, everything else via eth0), a /32 and a /128
//     address per interface, default routes through the gateways
//     [GatewayV4] and [GatewayV6] whose neighbour entries are permanent
//     (no ARP or ND is ever needed), IPv6 addresses without DAD, transmit
//     checksum offload off (complete checksums on the wire, so frames
//     survive being copied or encapsulated by XDP), forwarding on edges
//     and loose rp_filter everywhere (a mirror accepts VIP packets from
//     any client on eth0). Client links may get a smaller MTU
//     ([Topology.ClientMTU]) so an edge's IPIP/IP6IP6 encapsulation of a
//     full-size client packet fits the edge → mirror links;
//   - on every mirror, the VIPs on lo (/32, /128) and the identity
//     service ([MirrorService]) on each VIP and on the mirror's own
//     addresses, TCP and UDP, on the topology's ports (default 8080/tcp,
//     8053/udp): it answers every request with a line naming the mirror
//     ([Reply]), and echoes long-lived streams ([Echo]);
//   - the emulated WAN: a userspace L3 switch ([wan.Switch]) in its own
//     namespace, owning the far end of every host veth. It routes by
//     destination address (a VIP goes to the edge of the sender's region),
//     delays each frame by the one-way delay of its (source host,
//     destination host) pair, optionally drops it, and counts everything.
//     Change paths at run time with [Testbed.SetDelay], [Testbed.SetLoss]
//     and [Testbed.SetPath]; region names stand for all their clients.
//
// The switch-side veth ends run a pass-through XDP program, so frames a
// host's XDP program sends with XDP_TX or XDP_REDIRECT reach the switch.
//
// # Running code in a host
//
// [NetNS.Do] runs a function on a locked OS thread inside the namespace;
// [NetNS.Dial], [NetNS.Listen] and [NetNS.ListenPacket] create sockets in
// it; [NetNS.Command] starts a program in its network namespace only
// (nsenter --net, so bpffs pins stay visible), in its own process group,
// killed and reaped on Close. [NetNS.Path] is the namespace file
// (/run/netns/pmtb-…), [Host.Ifaces] the interfaces with their indexes,
// MACs, addresses, gateway MAC and switch port.
//
// # Cleanup and leaks
//
// Close removes everything the testbed created: processes, services, the
// switch, namespaces (and with them every veth). [ForTest] registers it
// with tb.Cleanup; unless [Options.NoSignalHandler] is set, SIGINT,
// SIGTERM and SIGHUP close open testbeds before the signal kills the
// process; and [New] first calls [Sweep], which deletes namespaces (and
// kills processes in them) left by testbed processes that died. Namespace
// names carry the owner's pid and start time for that.
//
// [VerifyNoLeaks] (or [NewLeakChecker]) checks at the end of a test that
// no namespace of this process remains, that nothing keeps a deleted one
// alive (a process, one of our threads, an open handle), that no testbed
// link sits in the root namespace, that no child process remains, that no
// goroutine leaked (goleak), and optionally that no new pin exists under a
// bpffs directory.
//
// [NewNetNS] gives a unit test of another package one fresh namespace.
//
// # Accuracy and cost
//
// The delay line sleeps on a timerfd, not a Go timer: a frame leaves
// typically 0.05–0.15 ms after its due time. The guaranteed p50 RTT error
// is max(1 ms, 5%) of the configured RTT; docs/BENCHMARKS.md records
// measured p50/p99 errors, the switch's throughput and the build time.
//
// Everything here needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF);
// [ForTest] and [NewNetNS] skip the test without it.
package testbed
