// Package kernel is the one place in the testbed that talks to the kernel
// directly: named network namespaces, veth pairs, addresses, routes,
// neighbours, sysctls, ethtool offloads, AF_PACKET sockets, the
// pass-through XDP program, and /proc scans for leftovers.
//
// Everything else in internal/testbed goes through these functions, so the
// raw syscalls (golang.org/x/sys/unix) and netlink stay confined here, as
// cilium/ebpf confines its own with depguard. Every function that must run
// with the calling thread inside a namespace does so through [InNS], which
// locks the OS thread and never returns a thread to the Go scheduler while
// it is still in a foreign namespace.
//
// Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root); Linux 5.13+ for XDP on veth
// with GRO under user control, 4.20+ for PACKET_IGNORE_OUTGOING.
package kernel
