// Package maps is the only Go code that knows the layout of premirror's BPF
// maps. It loads the XDP router (bpf/router.bpf.c) and decap
// (bpf/decap.bpf.c) programs, pins their maps under /sys/fs/bpf/premirror/
// (reusing compatible pins, so state survives agent restarts and upgrades),
// and offers typed verbs for every map: SetVIP, SetRegionPrefix, SetMirror,
// SetRoute, Sessions, Counters, Stats…
//
// # Maps
//
// Every key and value is a BTF-typed struct from bpf/include/premirror.h,
// so `bpftool map dump pinned /sys/fs/bpf/premirror/<map>` prints named
// fields. Addresses are 16 bytes (IPv4 in the first four) beside a family
// field; ports are in host order.
//
//	map              type            key → value                          written by    read by
//	pm_vips          hash            (addr, port, proto) → resource, affinity   agent   router
//	pm_vip_addrs     hash            addr → number of VIPs                agent         router (fragments, malformed)
//	pm_sessions      LRU hash        5-tuple → mirror, region             router        agent (inspect, metrics)
//	pm_affinity      LRU hash        (resource, client prefix) → mirror, last use   router   agent
//	pm_regions_v4/v6 LPM trie        client prefix → region               agent         router
//	pm_route_index   hash            (resource, region) → table           agent         router
//	pm_route_tables  array of maps   table → [slots]mirror (inner arrays) agent         router
//	pm_table_ids     array           table → its inner map's ID (bookkeeping) agent     agent (restart)
//	pm_mirrors       array           mirror ID → address, state, encap, GUE port   agent   router
//	pm_settings      array[1]        default region, outer sources        agent         router
//	pm_counters      per-CPU hash    (resource, region, mirror) → packets, bytes, new flows   router   agent
//	pm_stats         per-CPU array[1] packets per verdict reason          router        agent
//	pm_frags         LRU hash        (src, dst, proto, IP ID) → first fragment's mirror   router   router
//	pm_nexthops      per-CPU array   mirror ID × 2 + inner-is-IPv6 → cached FIB result   router   router, agent (metrics)
//	pm_nexthop_ctl   array[1]        next-hop cache TTL, generation       agent         router
//	pm_decap_addrs   hash            local tunnel endpoint → GUE port     agent         decap
//	pm_decap_stats   per-CPU array[1] packets per decap reason            decap         agent
//	pm_decap_probe   array[1]        probe echo port, replies/s per CPU   agent         decap
//	pm_decap_probe_budget per-CPU array[1] the echo replies' token bucket decap         decap
//	pm_next          prog array      ifindex (0: every interface) → next XDP program   agent   router (tail call)
//	pm_decap_next    prog array      the same, after the decap program    agent         decap (tail call)
//
// Layouts only grow into former padding (struct mirror's encap and
// gue_dport, decap_addr_info's gue_port: an entry an older build wrote
// reads as IPIP / no GUE) or at the end of the reason counters: LoadRouter
// and LoadDecap carry a pinned pm_stats / pm_decap_stats of an older,
// shorter layout over into the new map, counters included
// (statsmigrate.go); any other difference is ErrIncompatiblePin.
//
// # Encapsulation
//
// A mirror's Encap picks how the router carries packets to it: EncapIPIP
// (IPIP or 6in4 toward an IPv4 address, IPv6-in-IPv6 or 4in6 toward an
// IPv6 one) or EncapGUE: GUE variant 1, i.e. direct IP-in-UDP as Linux
// FOU's direct mode and Katran send it, to the mirror's GUEPort, from a
// source port that is the flow hash in 49152–65535 (GUESourcePort), so a
// mirror NIC that hashes only outer headers still spreads flows over its
// RX queues. The UDP checksum is derived from the inner packet's own
// checksum without reading the payload (see gue_udp in router.bpf.c);
// where that is impossible (fragments, UDP over IPv4 without a checksum,
// IPv6 extension headers) it is 0, which IPv6 allows tunnels (RFC 6935,
// 6936) and which Stats counts as gue_zero_csum_v6 over IPv6. GUE costs 8
// bytes more: the FIB lookup and the path-MTU answer account for them.
// The decap program accepts GUE on an endpoint's GUEPort (SetEndpoint)
// beside IPIP, and does not verify the UDP checksum (the inner packet's
// own checksums are checked by the stack after it).
//
// # Route tables
//
// A route table is an inner array of Config.TableSlots mirror IDs built by
// package chash (exact weight shares, minimum slot moves). Tables are
// content-addressed: every (resource, region) whose slots are identical
// shares one inner map, so memory grows with the number of distinct mirror
// sets, not with resources × regions (4096 × 64 private tables of 4096
// slots would take 4 GiB). A change builds a new inner map, publishes it in
// pm_route_tables, then replaces the 4-byte pm_route_index value: a packet
// sees the old table or the new one, never a mix.
//
// # Memory
//
// Measured by TestFootprint with the kernel's own accounting (fdinfo
// memlock) at 4096 resources × 64 regions (262,144 routes), 1024 mirrors,
// 1M sessions, 256K affinities and 64 distinct tables on 2 CPUs: 171 MiB,
// of which pm_sessions 120 MiB (≈120 B per preallocated session),
// pm_affinity 26 MiB, pm_counters 16 MiB (buckets; entries are allocated
// per live triple, 24 B × CPUs each), pm_route_index 4 MiB + 64 B per
// route, route tables 16 KiB + 0.5 KiB each, LPM tries ≈ 32 B per prefix
// (1M prefixes ≈ 32 MiB more). Every map is bounded by Config.
//
// # Next hop
//
// The router asks the kernel (bpf_fib_lookup) for the next hop, rather
// than reading one from a map the agent fills: routes, ECMP and neighbour
// changes are the kernel's, and nothing is configured twice. It keeps the
// last successful answer per (mirror, inner family) and CPU in pm_nexthops
// and reuses it for later packets while the entry is fresh: younger than
// the TTL of pm_nexthop_ctl, of the current generation, made for the same
// ingress device and IPv4 TOS, and for a packet no longer than one the
// lookup accepted (so the path-MTU check still holds). The agent bumps the
// generation on every route, neighbour and link change (SetNextHopTTL,
// BumpNextHopGeneration; SetMirror and SetSettings bump it themselves when
// a mirror's address or encapsulation, or an outer source, changes), so changes take effect
// within milliseconds; the TTL (DefaultNextHopTTL) bounds staleness while
// no agent runs. ECMP choices are unaffected: the lookup's inputs are the
// same for every packet of a cache entry, so the kernel's hash picked the
// same path each time anyway (for GUE the lookup names UDP and the
// mirror's port but not the per-flow source port, for that reason). A lookup that fails is never cached. When
// the neighbour is not resolved yet the encapsulated packet is handed to
// the stack (pass_no_neigh), which resolves it, so the edge needs IP
// forwarding on.
package maps
