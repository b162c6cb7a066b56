// Package wan is the testbed's emulated wide-area network: a userspace L3
// switch that joins every site (client host, edge router, mirror) and
// delays each frame by a per-(source site, destination site) one-way delay,
// with optional random loss, changeable at run time.
//
// The kernel this project tests on has no netem, so the delay element is
// ours. Each site's uplink veth has its far end in the switch's namespace;
// the switch reads whole Ethernet frames from those ends through AF_PACKET
// sockets ([OpenKernelPort]), routes each frame by destination IP:
//
//   - a site address goes to the port that owns it;
//   - a VIP goes to the edge port chosen for the source site ([Site.VIPPort]),
//     which is how a client region is tied to its edge router;
//   - anything else is dropped and counted ([DropNoRoute]).
//
// Encapsulated packets (IPIP, IP6IP6, 6in4, 4in6) are routed by their outer
// destination like any other packet. The switch rewrites the MAC addresses
// (source = egress port, destination = the site's interface), decrements
// the TTL or hop limit (dropping expired packets, so a routing loop ends),
// and releases the frame on the egress port once its pair's delay has
// passed. Frames of one (source, destination) pair leave in the order they
// arrived, even when the delay is lowered while frames are in flight.
//
// Frames must be addressed to the ingress port's MAC: sites reach the
// switch through a default gateway whose neighbour entry is permanent, so
// no ARP or neighbour discovery crosses the switch; broadcast and multicast
// frames are counted ([DropMulticast]) and dropped.
//
// Timing: the delay line uses Go timers. On a 2-vCPU machine a frame leaves
// typically 0.1–0.3 ms after its due time, rarely more than 1 ms; see
// docs/BENCHMARKS.md ("Testbed WAN emulator") for measured RTT error and
// throughput.
package wan
