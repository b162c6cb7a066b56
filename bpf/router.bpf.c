// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * premirror XDP router, attached on edge nodes.
 *
 * Per packet: parse (Ethernet + one 802.1Q tag, IPv4 with options, IPv6 with
 * hop-by-hop / routing / destination-options / fragment headers, TCP, UDP,
 * ICMP errors) -> VIP -> session (5-tuple LRU) -> user affinity -> client
 * region (LPM) -> route table for (resource, region) -> mirror state ->
 * encapsulate (outer family = the mirror's family; IP-in-IP or GUE per
 * mirror) -> next hop from the per-CPU next-hop cache or bpf_fib_lookup ->
 * XDP_TX / XDP_REDIRECT. Mirrors answer clients directly.
 *
 * Anything that is not VIP traffic is passed untouched. VIP traffic is never
 * passed to the stack un-encapsulated: the VIP is not local here, so the
 * stack would forward it back towards us.
 *
 * Packets we pass untouched (not IP, not VIP, and malformed ones that are
 * not to a VIP address) first go to the peer XDP program in pm_next, if the
 * operator installed one: a firewall or DDoS filter must see what we do not
 * handle, malformed packets included. Packets we changed (encapsulated and
 * handed to the stack for neighbour resolution) are ours and never chained.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

#include "premirror.h"
#include "pkt.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader (CollectionSpec.Variables): slots per route table - 1.
 * Tables are a power of two in size so the hash is masked, not divided. */
volatile const __u32 route_slots_mask = 4095;

/* How many consecutive slots a new flow tries before giving up when the
 * slot it hashes to holds a draining or down mirror: with half a table
 * unavailable, 2^-32 of new flows find no mirror. */
#define PICK_PROBES 32
/* IPv6 extension headers skipped before giving up. */
#define MAX_EXT_HDRS 6
/* TCP flag bits in byte 13 of the header. */
#define TCP_SYN 0x02
#define TCP_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vip_key);
	__type(value, struct vip_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vip_addr);
	__type(value, struct vip_addr_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_vip_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	/* One LRU shared by all CPUs: BPF_F_NO_COMMON_LRU would split the
	 * capacity per CPU, and veth or badly balanced RSS can put most flows
	 * on one CPU. Measured: no faster here either. */
	__type(key, struct flow_key);
	__type(value, struct session);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct affinity_key);
	__type(value, struct affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct region_key_v4);
	__type(value, struct region_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_regions_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct region_key_v6);
	__type(value, struct region_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_regions_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, struct route_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_route_index SEC(".maps");

/* One route table: slot -> mirror ID. Resized by the loader. */
struct route_slots {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
};

/* Tables are swapped whole: the agent fills a new inner map, then replaces
 * one pointer, so a packet sees the old table or the new one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1 << 14);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct route_slots);
} pm_route_tables SEC(".maps");

/* Bookkeeping for the agent only; the program never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 14);
	__type(key, __u32);
	__type(value, struct table_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_table_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct mirror);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_mirrors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nexthop_ctl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_nexthop_ctl SEC(".maps");

/* Two entries per mirror (IPv4 and IPv6 inner packets use different
 * lookup inputs). Resized by the loader to 2 * max_mirrors. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, struct nexthop);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_nexthops SEC(".maps");

/* Not preallocated: memory follows the (resource, region, mirror) triples
 * that actually carry traffic; an insert allocates once per triple. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct counter_key);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 14);
	__type(key, struct frag_key);
	__type(value, struct frag_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_frags SEC(".maps");

/*
 * The operator's XDP programs that run after ours, written by the agent
 * (xdp_chain). Key = ingress ifindex: the program for that interface only;
 * key 0 = every interface (ifindex 0 is never a real device). 65536 slots
 * cover the ifindexes a host gives its physical devices; a larger ifindex
 * simply gets slot 0. A tail call to an empty slot (or an index beyond
 * max_entries) falls through: the packet passes to the stack as it would
 * without the map. The kernel binds the map to the router's program type
 * and flags at load, so a peer of another type or one built with frags
 * support is refused when inserted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_next SEC(".maps");

_Static_assert(sizeof(struct stats) == R_MAX * sizeof(__u64), "struct stats must follow enum pm_reason");

enum frag_kind {
	FRAG_NONE,
	FRAG_FIRST,
	FRAG_LATER,
};

/* What the parser learnt about one packet. */
struct pkt {
	struct flow_key flow;
	__u32 ip_len;   /* L3 length from the IP header(s) */
	__u32 frag_id;
	__u8 tos;
	__u8 tcp_flags;
	__u8 frag;      /* enum frag_kind */
	__u8 df;        /* outer may not be fragmented */
	__u8 vlan;      /* one 802.1Q tag present */
	__u8 icmp;      /* an ICMP error quoting flow */
	__u8 frag_proto; /* protocol field beside the fragment offset: the pm_frags key's */
	__u8 pad;
	__u32 ifindex;  /* ingress device */
	/* An ICMP error's own source: flow holds the quoted flow's
	 * addresses, pm_frags keys the fragment's (frag_key_of). */
	__u8 frag_src[16];
};

static __always_inline void count(enum pm_reason r)
{
	__u32 zero = 0;
	struct stats *st = bpf_map_lookup_elem(&pm_stats, &zero);

	if (st && r < R_MAX)
		((__u64 *)st)[r]++;
}

static __always_inline int verdict(enum pm_reason r, int action)
{
	count(r);
	return action;
}

/* Not ours: count it, then hand the untouched packet to the interface's
 * peer program, else the one for every interface, else (none, or the tail
 * call fails) to the stack. A tail call that succeeds does not return. */
static __always_inline int pass_on(struct xdp_md *ctx, enum pm_reason r)
{
	count(r);
	bpf_tail_call(ctx, &pm_next, ctx->ingress_ifindex);
	bpf_tail_call(ctx, &pm_next, 0);
	return XDP_PASS;
}

/* ---- hashing (mirrored in Go by maps.FlowHash; keep them identical) ---- */

static __always_inline __u32 rol32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rol32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rol32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 hash_addr(__u32 h, const __u8 *a, __u8 family)
{
	const __u32 *w = (const __u32 *)a;

	h = mix(h, w[0]);
	if (family == PM_FAMILY_V6) {
		h = mix(h, w[1]);
		h = mix(h, w[2]);
		h = mix(h, w[3]);
	}
	return h;
}

static __always_inline __u32 flow_hash(const struct flow_key *k, int no_sport)
{
	__u32 h = 0x5bd1e995;

	h = hash_addr(h, k->src, k->family);
	h = hash_addr(h, k->dst, k->family);
	h = mix(h, ((__u32)(no_sport ? 0 : k->sport) << 16) | k->dport);
	h = mix(h, k->proto);
	return fmix(h);
}

static __always_inline __u32 user_hash(const struct affinity_key *k)
{
	__u32 h = 0x5bd1e995;

	h = mix(h, k->resource);
	h = hash_addr(h, k->client, k->family);
	return fmix(h);
}

/* ---- parsing ---- */

enum parse_result {
	P_OK,
	P_NOT_IP,
	P_MALFORMED,    /* could not read the addresses */
	P_L4_MALFORMED, /* addresses known, the rest (lengths, transport header) bad */
	P_NOT_L4,       /* neither TCP, UDP nor an ICMP error */
};

/*
 * room: bytes from l4 to the end of the IP packet by its own length. The
 * frame may go on (Ethernet pads to 60 bytes, with zeros or leftovers): a
 * header that is not inside the packet is not read from the padding.
 */
static __always_inline int parse_ports(void *l4, void *data_end, __u32 room, struct pkt *p)
{
	if (p->flow.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || th->doff < 5 || th->doff * 4 > room)
			return P_L4_MALFORMED;
		p->flow.sport = bpf_ntohs(th->source);
		p->flow.dport = bpf_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		return P_OK;
	}
	if (p->flow.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || room < UDP_HLEN)
			return P_L4_MALFORMED;
		/* The datagram's length: at least its header, and within the
		 * packet (a first fragment's covers the whole datagram). */
		__u32 ulen = ntohs_len(uh->len);
		if (ulen < UDP_HLEN || (p->frag == FRAG_NONE && ulen > room))
			return P_L4_MALFORMED;
		p->flow.sport = bpf_ntohs(uh->source);
		p->flow.dport = bpf_ntohs(uh->dest);
		return P_OK;
	}
	return P_NOT_L4;
}

/*
 * ICMP errors quote the packet that caused them: our mirror's reply, sent
 * from the VIP to the client. Rebuild the client's flow key from the quote
 * so the error reaches the mirror that owns the flow (PMTU discovery).
 */
static __always_inline int parse_quote_v4(void *q, void *data_end, __u32 room, struct pkt *p)
{
	struct iphdr *ih = q;

	if ((void *)(ih + 1) > data_end || ih->version != 4 || ih->ihl < 5)
		return P_L4_MALFORMED;
	__u32 hl = ih->ihl * 4;
	if (hl > 60)
		return P_L4_MALFORMED;
	/* The quote carries only 8 bytes of transport header. */
	__u16 *ports = q + hl;
	if ((void *)(ports + 2) > data_end || hl + 4 > room)
		return P_L4_MALFORMED;
	if (ih->protocol != IPPROTO_TCP && ih->protocol != IPPROTO_UDP)
		return P_NOT_L4;
	/* The error goes to the quoted packet's source: an error to any
	 * other address is not about a flow of ours, whatever it quotes. */
	if (ih->saddr != *(__u32 *)p->flow.dst)
		return P_NOT_L4;
	p->flow.proto = ih->protocol;
	*(__u32 *)p->frag_src = *(__u32 *)p->flow.src;
	*(__u32 *)p->flow.src = ih->daddr;
	*(__u32 *)p->flow.dst = ih->saddr;
	p->flow.sport = bpf_ntohs(ports[1]);
	p->flow.dport = bpf_ntohs(ports[0]);
	p->icmp = 1;
	return P_OK;
}

static __always_inline int parse_quote_v6(void *q, void *data_end, __u32 room, struct pkt *p)
{
	struct ipv6hdr *ih = q;

	if ((void *)(ih + 1) > data_end || ih->version != 6)
		return P_L4_MALFORMED;
	__u16 *ports = (void *)(ih + 1);
	if ((void *)(ports + 2) > data_end || IPV6_HLEN + 4 > room)
		return P_L4_MALFORMED;
	if (ih->nexthdr != IPPROTO_TCP && ih->nexthdr != IPPROTO_UDP)
		return P_NOT_L4;
	const __u32 *qs = (const __u32 *)&ih->saddr, *d = (const __u32 *)p->flow.dst;
	if ((qs[0] ^ d[0]) | (qs[1] ^ d[1]) | (qs[2] ^ d[2]) | (qs[3] ^ d[3]))
		return P_NOT_L4; /* not to the quoted source (see parse_quote_v4) */
	p->flow.proto = ih->nexthdr;
	__builtin_memcpy(p->frag_src, p->flow.src, 16);
	__builtin_memcpy(p->flow.src, &ih->daddr, 16);
	__builtin_memcpy(p->flow.dst, &ih->saddr, 16);
	p->flow.sport = bpf_ntohs(ports[1]);
	p->flow.dport = bpf_ntohs(ports[0]);
	p->icmp = 1;
	return P_OK;
}

static __always_inline int parse_l4(void *l4, void *data_end, __u32 room, struct pkt *p)
{
	if (p->frag == FRAG_LATER)
		return P_OK;
	if (p->flow.proto == IPPROTO_ICMP && p->flow.family == PM_FAMILY_V4) {
		struct icmp_hdr *ic = l4;

		if ((void *)(ic + 1) > data_end || room < sizeof(*ic))
			return P_L4_MALFORMED;
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED)
			return P_NOT_L4;
		return parse_quote_v4(ic + 1, data_end, room - sizeof(*ic), p);
	}
	if (p->flow.proto == IPPROTO_ICMPV6 && p->flow.family == PM_FAMILY_V6) {
		struct icmp_hdr *ic = l4;

		if ((void *)(ic + 1) > data_end || room < sizeof(*ic))
			return P_L4_MALFORMED;
		if (ic->type != ICMPV6_DEST_UNREACH && ic->type != ICMPV6_PKT_TOOBIG &&
		    ic->type != ICMPV6_TIME_EXCEED)
			return P_NOT_L4;
		return parse_quote_v6(ic + 1, data_end, room - sizeof(*ic), p);
	}
	return parse_ports(l4, data_end, room, p);
}

static __always_inline int parse_v4(void *l3, void *data_end, struct pkt *p)
{
	struct iphdr *ih = l3;

	if ((void *)(ih + 1) > data_end)
		return P_MALFORMED;
	if (ih->version != 4 || ih->ihl < 5)
		return P_MALFORMED;
	p->flow.family = PM_FAMILY_V4;
	p->flow.proto = ih->protocol;
	p->frag_proto = ih->protocol;
	*(__u32 *)p->flow.src = ih->saddr;
	*(__u32 *)p->flow.dst = ih->daddr;
	/* From here the addresses are known: to a VIP address, a bad
	 * length is dropped, not passed. */
	__u32 hl = ih->ihl * 4;
	__u32 tot = ntohs_len(ih->tot_len);
	if (tot < hl || l3 + tot > data_end)
		return P_L4_MALFORMED;
	p->ip_len = tot;
	p->tos = ih->tos;
	__u16 fo = bpf_ntohs(ih->frag_off);
	p->df = !!(fo & IPV4_DF);
	p->frag_id = bpf_ntohs(ih->id); /* also the outer header's without DF */
	if (fo & (IPV4_MF | IPV4_OFFSET))
		p->frag = (fo & IPV4_OFFSET) ? FRAG_LATER : FRAG_FIRST;
	if (hl > 60)
		return P_MALFORMED;
	return parse_l4(l3 + hl, data_end, tot - hl, p);
}

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

static __always_inline int parse_v6(void *l3, void *data_end, struct pkt *p)
{
	struct ipv6hdr *ih = l3;

	if ((void *)(ih + 1) > data_end)
		return P_MALFORMED;
	if (ih->version != 6)
		return P_MALFORMED;
	p->flow.family = PM_FAMILY_V6;
	__builtin_memcpy(p->flow.src, &ih->saddr, 16);
	__builtin_memcpy(p->flow.dst, &ih->daddr, 16);
	/* A payload length of 0 with a jumbo option (RFC 2675) is a
	 * jumbogram: more than a frame here, and not ours to carry. */
	__u32 tot = ntohs_len(ih->payload_len) + IPV6_HLEN;
	if (l3 + tot > data_end)
		return P_L4_MALFORMED;
	p->ip_len = tot;
	p->tos = (ih->priority << 4) | (ih->flow_lbl[0] >> 4);
	p->df = 1; /* IPv6 is never fragmented on the path */

	__u8 nh = ih->nexthdr;
	void *cur = ih + 1;
	__u32 off = IPV6_HLEN; /* of cur, checked against tot */

#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
			__u8 *eh = cur;

			if ((void *)(eh + 2) > data_end || off + 2 > tot)
				return P_L4_MALFORMED;
			nh = eh[0];
			cur += (eh[1] + 1) * 8;
			off += (eh[1] + 1) * 8;
			continue;
		}
		if (nh == IPPROTO_FRAGMENT) {
			struct ipv6_frag *fh = cur;

			if ((void *)(fh + 1) > data_end || off + sizeof(*fh) > tot)
				return P_L4_MALFORMED;
			__u16 fo = bpf_ntohs(fh->frag_off);
			nh = fh->nexthdr;
			cur = fh + 1;
			off += sizeof(*fh);
			if ((fo & 0xfff8) || (fo & 1)) {
				p->frag = (fo & 0xfff8) ? FRAG_LATER : FRAG_FIRST;
				p->frag_id = bpf_ntohl(fh->id);
				/* Every fragment carries this next header, also
				 * when more extension headers follow in the first
				 * one: it keys pm_frags. A later fragment's data
				 * is no header at all. */
				p->frag_proto = nh;
				if (p->frag == FRAG_LATER)
					break;
			}
			continue;
		}
		break;
	}
	if (p->frag == FRAG_LATER) {
		p->flow.proto = nh;
		return P_OK;
	}
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	    nh == IPPROTO_FRAGMENT)
		return P_L4_MALFORMED; /* more extension headers than we walk */
	if (off > tot)
		return P_L4_MALFORMED;
	p->flow.proto = nh;
	return parse_l4(cur, data_end, tot - off, p);
}

/* ---- lookups ---- */

static __always_inline int is_vip_addr(const struct pkt *p)
{
	struct vip_addr va = {};

	__builtin_memcpy(va.addr, p->flow.dst, 16);
	va.family = p->flow.family;
	return bpf_map_lookup_elem(&pm_vip_addrs, &va) != NULL;
}

static __always_inline __u32 client_region(const struct pkt *p, const struct settings *st)
{
	struct region_info *ri;

	if (p->flow.family == PM_FAMILY_V4) {
		struct region_key_v4 k = { .prefix_len = 32 };

		*(__u32 *)k.addr = *(__u32 *)p->flow.src;
		ri = bpf_map_lookup_elem(&pm_regions_v4, &k);
	} else {
		struct region_key_v6 k = { .prefix_len = 128 };

		__builtin_memcpy(k.addr, p->flow.src, 16);
		ri = bpf_map_lookup_elem(&pm_regions_v6, &k);
	}
	if (ri)
		return ri->region;
	return st ? st->default_region : PM_REGION_ANY;
}

static __always_inline struct mirror *mirror_get(__u32 id)
{
	return bpf_map_lookup_elem(&pm_mirrors, &id);
}

/*
 * Pick an active mirror from the route table of (resource, region), falling
 * back to the resource's wildcard table. Returns 0 and sets *out, or the
 * drop reason.
 */
static __always_inline int pick(__u32 resource, __u32 region, __u32 hash, __u32 *out)
{
	struct route_key rk = { .resource = resource, .region = region };
	struct route_ref *ref = bpf_map_lookup_elem(&pm_route_index, &rk);

	if (!ref && region != PM_REGION_ANY) {
		rk.region = PM_REGION_ANY;
		ref = bpf_map_lookup_elem(&pm_route_index, &rk);
	}
	if (!ref)
		return R_DROP_NO_ROUTE;
	void *table = bpf_map_lookup_elem(&pm_route_tables, &ref->table);
	if (!table)
		return R_DROP_NO_ROUTE;

	/* A bounded loop, not unrolled: the common case exits at i == 0. */
	for (int i = 0; i < PICK_PROBES; i++) {
		__u32 slot = (hash + i) & route_slots_mask;
		__u32 *m = bpf_map_lookup_elem(table, &slot);

		if (!m || *m == PM_MIRROR_NONE)
			continue;
		struct mirror *mi = mirror_get(*m);
		if (mi && mi->state == MIRROR_ACTIVE) {
			*out = *m;
			return 0;
		}
	}
	return R_DROP_NO_MIRROR;
}

static __always_inline __u32 mask_word(__u32 w, int bits)
{
	if (bits >= 32)
		return w;
	if (bits <= 0)
		return 0;
	return w & bpf_htonl(~0u << (32 - bits));
}

static __always_inline void mask_client(struct affinity_key *ak, const struct pkt *p, int plen)
{
	__u32 *dst = (__u32 *)ak->client;
	const __u32 *src = (const __u32 *)p->flow.src;

	dst[0] = mask_word(src[0], plen);
	if (p->flow.family == PM_FAMILY_V6) {
		dst[1] = mask_word(src[1], plen - 32);
		dst[2] = mask_word(src[2], plen - 64);
		dst[3] = mask_word(src[3], plen - 96);
	}
}

/*
 * Choose the mirror of a flow the session table does not know. Users with
 * affinity keep their mirror while it is active or draining; otherwise the
 * user's (or flow's) hash indexes the route table.
 */
static __always_inline int choose(const struct pkt *p, const struct vip_info *vip, __u32 region,
				  int record, __u32 *out)
{
	if (!vip->affinity_timeout_s)
		return pick(vip->resource, region,
			    flow_hash(&p->flow, vip->flags & PM_VIP_HASH_NO_SRC_PORT), out);

	struct affinity_key ak = { .resource = vip->resource, .family = p->flow.family };
	ak.prefix_len = p->flow.family == PM_FAMILY_V4 ? vip->affinity_prefix_v4 : vip->affinity_prefix_v6;
	mask_client(&ak, p, ak.prefix_len);

	__u64 now = bpf_ktime_get_ns();
	struct affinity *a = bpf_map_lookup_elem(&pm_affinity, &ak);
	if (a && a->last_used_ns && now - a->last_used_ns < (__u64)vip->affinity_timeout_s * 1000000000ULL) {
		struct mirror *mi = mirror_get(a->mirror);

		if (mi && (mi->state == MIRROR_ACTIVE || mi->state == MIRROR_DRAINING)) {
			*out = a->mirror;
			if (record)
				a->last_used_ns = now;
			return 0;
		}
	}
	int r = pick(vip->resource, region, user_hash(&ak), out);
	if (r || !record)
		return r;
	struct affinity na = { .mirror = *out, .last_used_ns = now };
	bpf_map_update_elem(&pm_affinity, &ak, &na, BPF_ANY);
	return 0;
}

static __always_inline void account(__u32 resource, __u32 region, __u32 mirror, __u32 bytes,
				    int new_flow)
{
	struct counter_key ck = { .resource = resource, .region = region, .mirror = mirror };
	struct counter *c = bpf_map_lookup_elem(&pm_counters, &ck);

	if (!c) {
		struct counter zero = {};

		bpf_map_update_elem(&pm_counters, &ck, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&pm_counters, &ck);
		if (!c) {
			count(R_COUNTER_OVERFLOW);
			return;
		}
	}
	c->packets++;
	c->bytes += bytes;
	c->new_flows += new_flow;
}

/* ---- encapsulation and transmit ---- */

/*
 * GUE (encap = PM_ENCAP_GUE) is variant 1 of draft-ietf-intarea-gue, i.e.
 * direct IP-in-UDP as Linux FOU's "direct" mode and Katran send it: outer
 * IPv4 or IPv6 (the mirror's family), a UDP header, then the client's
 * packet unchanged. The source port carries the flow hash, so a mirror
 * whose NIC hashes only outer headers spreads flows over its RX queues
 * (toward IPv6 mirrors the flow label carries it too, as for IPIP).
 *
 * The UDP checksum is derived without reading the payload: when the inner
 * packet's own transport checksum covers all of it and its pseudo-header
 * (an unfragmented TCP segment, UDP datagram with a checksum, or ICMPv6
 * message, without IPv6 extension headers), the inner segment sums to
 * minus its pseudo-header, so the outer checksum is
 *   fold(outer pseudo-header + UDP header + inner IP header - inner pseudo-header)
 * and an inner IPv4 header sums to zero on its own (its header checksum),
 * options included. ICMP (IPv4) has no pseudo-header: its message sums to
 * zero. The sums are taken on the GUE path only (inner_share).
 * Otherwise (fragments, whose checksum covers bytes not in this packet;
 * UDP over IPv4 without a checksum; IPv6 with extension headers, which we
 * would have to sum) the checksum is 0: legal over IPv4, and over IPv6 the
 * zero-checksum exception for tunnels (RFC 6935, 6936), which our decap
 * accepts; those packets are counted in gue_zero_csum_v6. A wrong inner
 * checksum makes the outer one wrong too: the receiver drops a packet it
 * would have dropped after decapsulation anyway.
 */
#define GUE_SPORT_BASE 0xC000 /* the IANA ephemeral range, 49152.. */
#define GUE_SPORT_MASK 0x3FFF

static __always_inline int is_gue(const struct mirror *mi)
{
	return mi->encap == PM_ENCAP_GUE;
}

/* Outer header bytes after L2 toward mi. */
static __always_inline __u32 tunnel_len(const struct mirror *mi)
{
	return (mi->family == PM_FAMILY_V4 ? IPV4_HLEN : IPV6_HLEN) + (is_gue(mi) ? UDP_HLEN : 0);
}

static __always_inline int fib(struct xdp_md *ctx, const struct pkt *p, const struct mirror *mi,
			       const struct settings *st, struct bpf_fib_lookup *fp)
{
	fp->ifindex = p->ifindex;
	fp->tot_len = p->ip_len + tunnel_len(mi);
	if (is_gue(mi)) {
		/* Policy rules may match the UDP port. The source port is left
		 * out: it varies per flow, and one cached answer serves every
		 * flow to the mirror (see transmit). */
		fp->l4_protocol = IPPROTO_UDP;
		fp->dport = bpf_htons(mi->gue_dport);
	} else {
		fp->l4_protocol = p->flow.family == PM_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	}
	if (mi->family == PM_FAMILY_V4) {
		fp->family = AF_INET;
		fp->tos = p->tos;
		fp->ipv4_src = *(__u32 *)st->outer_src_v4;
		fp->ipv4_dst = *(__u32 *)mi->addr;
	} else {
		fp->family = AF_INET6;
		__builtin_memcpy(fp->ipv6_src, st->outer_src_v6, 16);
		__builtin_memcpy(fp->ipv6_dst, mi->addr, 16);
	}
	return bpf_fib_lookup(ctx, fp, sizeof(*fp), 0);
}

/*
 * Make room for add bytes of outer header between the L2 header (l2 bytes)
 * and the packet: both constants at every call site, so the verifier sees
 * fixed offsets. Returns the new start of the frame, or NULL, and the end
 * in *end.
 */
static __always_inline void *push(struct xdp_md *ctx, const int add, const int l2, void **end)
{
	if (bpf_xdp_adjust_head(ctx, -add))
		return NULL;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + add + l2 > data_end)
		return NULL;
	__builtin_memcpy(data, data + add, l2);
	*end = data_end;
	return data;
}

static __always_inline void outer_v4(struct iphdr *o, const struct pkt *p, const struct mirror *mi,
				     const struct settings *st, __u8 proto, __u16 len)
{
	o->version = 4;
	o->ihl = 5;
	o->tos = p->tos;
	o->tot_len = bpf_htons(len);
	/* A fragmentable outer packet needs an ID that differs between
	 * packets (RFC 6864: a path router may fragment it, and the mirror
	 * reassembles by ID): the inner IPv4 packet's, which its sender
	 * varies. With DF (every IPv6 inner packet) 0 is as good as any. */
	o->id = p->df ? 0 : bpf_htons((__u16)p->frag_id);
	o->frag_off = p->df ? bpf_htons(IPV4_DF) : 0;
	o->ttl = 64;
	o->protocol = proto;
	o->check = 0;
	o->saddr = *(__u32 *)st->outer_src_v4;
	o->daddr = *(__u32 *)mi->addr;
	o->check = ipv4_csum(o);
}

static __always_inline void outer_v6(struct ipv6hdr *o, const struct pkt *p, const struct mirror *mi,
				     const struct settings *st, __u8 proto, __u32 hash)
{
	/* Flow label from the flow hash gives mirrors RSS entropy. */
	*(__be32 *)o = bpf_htonl(0x60000000 | ((__u32)p->tos << 20) | (hash & 0xfffff));
	o->payload_len = bpf_htons(p->ip_len + (proto == IPPROTO_UDP ? UDP_HLEN : 0));
	o->nexthdr = proto;
	o->hop_limit = 64;
	__builtin_memcpy(&o->saddr, st->outer_src_v6, 16);
	__builtin_memcpy(&o->daddr, mi->addr, 16);
}

/*
 * The inner packet's share of a GUE checksum: its IP header minus its
 * pseudo-header, or -1 when its transport checksum does not stand in for
 * it. Read from the packet (at inner, after the outer headers) on the GUE
 * path only: flags noted while parsing every packet would cost IPIP
 * packets a little and the verifier twice the states.
 *
 * Derivable: unfragmented (a fragment's checksum covers bytes it does not
 * carry) TCP, UDP with a checksum, ICMP errors (the only ICMP we steer);
 * over IPv6 only without extension headers (they would have to be
 * summed). An IPv4 header, options included, sums to zero, so its share is
 * minus the pseudo-header, or nothing for ICMP (no pseudo-header). IPv6:
 * the addresses and the payload length (= the upper-layer length) cancel,
 * leaving version/class/flow label and next header/hop limit minus the
 * pseudo-header's next header.
 */
static __always_inline __s64 inner_share(const struct pkt *p, const void *inner, const void *data_end)
{
	__u64 s = 0;

	if (p->frag != FRAG_NONE)
		return -1;
	if (p->flow.family == PM_FAMILY_V4) {
		const struct iphdr *ih = inner;

		if ((void *)(ih + 1) > data_end)
			return -1;
		if (ih->protocol == IPPROTO_ICMP)
			return 0;
		__u32 hl = (ih->ihl & 0xf) * 4;
		if (ih->protocol == IPPROTO_UDP) {
			const struct udphdr *uh = inner + hl;

			/* UDP over IPv4 may go without a checksum (0). A
			 * datagram shorter than the IP payload (a trailer
			 * follows) covers neither the trailer nor this length. */
			if ((void *)(uh + 1) > data_end || !uh->check ||
			    ntohs_len(uh->len) != p->ip_len - hl)
				return -1;
		} else if (ih->protocol != IPPROTO_TCP) {
			return -1;
		}
		s = csum_sub32(s, ih->saddr);
		s = csum_sub32(s, ih->daddr);
		s = csum_sub32(s, bpf_htons(ih->protocol));
		return csum_sub32(s, bpf_htons(p->ip_len - hl));
	}
	const struct ipv6hdr *ih = inner;

	if ((void *)(ih + 1) > data_end)
		return -1;
	__u8 nh = ih->nexthdr;
	if (nh == IPPROTO_UDP) {
		const struct udphdr *uh = (const void *)(ih + 1);

		/* Over IPv6 a UDP checksum of 0 is invalid anyway; a
		 * trailer after the datagram is not covered (see IPv4). */
		if ((void *)(uh + 1) > data_end || !uh->check ||
		    ntohs_len(uh->len) != p->ip_len - IPV6_HLEN)
			return -1;
	} else if (nh != IPPROTO_TCP && nh != IPPROTO_ICMPV6) {
		return -1; /* an extension header */
	}
	s = *(const __u32 *)ih;
	s += *((const __u16 *)ih + 3);
	return csum_sub32(s, bpf_htons(nh));
}

/* Fill the GUE UDP header; addrs is the raw sum of the outer addresses,
 * inner the client's packet. */
static __always_inline void gue_udp(struct udphdr *uh, const struct pkt *p, const struct mirror *mi,
				    __u32 hash, __u64 addrs, int v6, const void *inner, const void *data_end)
{
	__u16 len = p->ip_len + UDP_HLEN;

	uh->source = bpf_htons(GUE_SPORT_BASE | (hash & GUE_SPORT_MASK));
	uh->dest = bpf_htons(mi->gue_dport);
	uh->len = bpf_htons(len);
	uh->check = 0;
	__s64 share = inner_share(p, inner, data_end);
	if (share < 0) {
		if (v6)
			count(R_GUE_ZERO_CSUM_V6);
		return;
	}
	/* Pseudo-header (addresses, protocol, length) + UDP header
	 * (ports, length) + the inner packet's share. */
	__u64 s = addrs + share + bpf_htons(IPPROTO_UDP) + 2 * (__u32)bpf_htons(len);
	s += uh->source + uh->dest;
	__u16 c = ~csum_fold64(s);
	/* 0 means "no checksum" in UDP: send its other form. */
	uh->check = c ? c : 0xffff;
}

static __always_inline __u64 sum_addr6(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return (__u64)w[0] + w[1] + w[2] + w[3];
}

/*
 * Insert the outer header(s) between the L2 header (l2 bytes, a constant at
 * every call site) and the packet.
 */
static __always_inline int encap(struct xdp_md *ctx, const struct pkt *p, const struct mirror *mi,
				 const struct settings *st, __u32 hash, const int l2)
{
	__u8 inner_proto = p->flow.family == PM_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	void *data, *end;

	if (mi->family == PM_FAMILY_V4) {
		if (is_gue(mi)) {
			data = push(ctx, IPV4_HLEN + UDP_HLEN, l2, &end);
			if (!data)
				return -1;
			struct iphdr *o = data + l2;
			outer_v4(o, p, mi, st, IPPROTO_UDP, p->ip_len + IPV4_HLEN + UDP_HLEN);
			__u64 addrs = (__u64)o->saddr + o->daddr;
			gue_udp(data + l2 + IPV4_HLEN, p, mi, hash, addrs, 0, data + l2 + IPV4_HLEN + UDP_HLEN,
				end);
		} else {
			data = push(ctx, IPV4_HLEN, l2, &end);
			if (!data)
				return -1;
			outer_v4(data + l2, p, mi, st, inner_proto, p->ip_len + IPV4_HLEN);
		}
		*(__be16 *)(data + l2 - 2) = ETH_P_IP_BE;
	} else {
		if (is_gue(mi)) {
			data = push(ctx, IPV6_HLEN + UDP_HLEN, l2, &end);
			if (!data)
				return -1;
			outer_v6(data + l2, p, mi, st, IPPROTO_UDP, hash);
			__u64 addrs = sum_addr6(st->outer_src_v6) + sum_addr6(mi->addr);
			gue_udp(data + l2 + IPV6_HLEN, p, mi, hash, addrs, 1, data + l2 + IPV6_HLEN + UDP_HLEN,
				end);
		} else {
			data = push(ctx, IPV6_HLEN, l2, &end);
			if (!data)
				return -1;
			outer_v6(data + l2, p, mi, st, inner_proto, hash);
		}
		*(__be16 *)(data + l2 - 2) = ETH_P_IPV6_BE;
	}
	return 0;
}

/*
 * Path MTU through the tunnel. A packet that no longer fits once
 * encapsulated is answered, from the VIP, with ICMP "fragmentation needed"
 * (IPv4 with DF) or ICMPv6 "packet too big" carrying the egress MTU minus
 * the tunnel overhead, and sent back out the ingress device: the client
 * lowers its path MTU and resends. (Silently dropping it would make a PMTU
 * black hole: every full-size TCP segment lost.) The quote is the start of
 * the offending packet, enough for the client to find its socket.
 */
#define TOOBIG_QUOTE_V4 56  /* bytes of the offending IPv4 packet quoted */
#define TOOBIG_QUOTE_V6 184 /* bytes of the offending IPv6 packet quoted */

static __always_inline __u32 csum_add_words(const void *p, void *data_end, const int words)
{
	const __u16 *w = p;
	__u32 sum = 0;

	for (int i = 0; i < words; i++) {
		if ((void *)(w + i + 1) > data_end)
			break;
		sum += w[i];
	}
	return sum;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Turn the frame around after `add` bytes were prepended: the old L2
 * header moves to the front with its addresses swapped, carrying the given
 * ethertype. Returns the new data pointer, or NULL. */
static __always_inline void *reply_l2(struct xdp_md *ctx, const int l2, const int add, __be16 ethertype)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 mac[ETH_ALEN];

	if (data + add + l2 > data_end)
		return NULL;
	__builtin_memcpy(data, data + add, l2);
	struct ethhdr *eth = data;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	*(__be16 *)(data + l2 - 2) = ethertype;
	return data;
}

static __always_inline int too_big_v4(struct xdp_md *ctx, const int l2, __u16 mtu)
{
	const int add = IPV4_HLEN + sizeof(struct icmp_hdr);

	if (bpf_xdp_adjust_head(ctx, -add))
		return -1;
	/* Back where it came from. */
	void *data = reply_l2(ctx, l2, add, ETH_P_IP_BE);
	void *data_end = (void *)(long)ctx->data_end;
	if (!data || data + add + l2 + TOOBIG_QUOTE_V4 > data_end)
		return -1;

	struct iphdr *orig = data + l2 + add;
	struct iphdr *ip = data + l2;
	struct icmp_hdr *ic = data + l2 + IPV4_HLEN;
	__be32 client = orig->saddr, vip = orig->daddr;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(add + TOOBIG_QUOTE_V4);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = vip;
	ip->daddr = client;
	ip->check = ipv4_csum(ip);
	ic->type = ICMP_DEST_UNREACH;
	ic->code = 4; /* fragmentation needed and DF set */
	ic->csum = 0;
	ic->rest = bpf_htonl(mtu);
	ic->csum = csum_fold32(csum_add_words(ic, data_end, (sizeof(*ic) + TOOBIG_QUOTE_V4) / 2));

	/* Cut the frame after the quote. */
	int keep = l2 + add + TOOBIG_QUOTE_V4;
	int cur = (int)bpf_xdp_get_buff_len(ctx);
	if (cur > keep && bpf_xdp_adjust_tail(ctx, keep - cur))
		return -1;
	return 0;
}

static __always_inline int too_big_v6(struct xdp_md *ctx, const int l2, __u32 mtu)
{
	const int add = IPV6_HLEN + sizeof(struct icmp_hdr);

	if (bpf_xdp_adjust_head(ctx, -add))
		return -1;
	void *data = reply_l2(ctx, l2, add, ETH_P_IPV6_BE);
	void *data_end = (void *)(long)ctx->data_end;
	if (!data || data + add + l2 + TOOBIG_QUOTE_V6 > data_end)
		return -1;

	struct ipv6hdr *orig = data + l2 + add;
	struct ipv6hdr *ip = data + l2;
	struct icmp_hdr *ic = data + l2 + IPV6_HLEN;
	struct in6_addr client = orig->saddr, vip = orig->daddr;
	*(__be32 *)ip = bpf_htonl(0x60000000);
	ip->payload_len = bpf_htons(sizeof(*ic) + TOOBIG_QUOTE_V6);
	ip->nexthdr = IPPROTO_ICMPV6;
	ip->hop_limit = 64;
	ip->saddr = vip;
	ip->daddr = client;
	ic->type = ICMPV6_PKT_TOOBIG;
	ic->code = 0;
	ic->csum = 0;
	ic->rest = bpf_htonl(mtu);
	/* Pseudo-header: addresses, upper-layer length, next header. */
	__u32 sum = csum_add_words(&ip->saddr, data_end, 16);
	sum += bpf_htons(sizeof(*ic) + TOOBIG_QUOTE_V6);
	sum += bpf_htons(IPPROTO_ICMPV6);
	sum += csum_add_words(ic, data_end, (sizeof(*ic) + TOOBIG_QUOTE_V6) / 2);
	ic->csum = csum_fold32(sum);

	int keep = l2 + add + TOOBIG_QUOTE_V6;
	int cur = (int)bpf_xdp_get_buff_len(ctx);
	if (cur > keep && bpf_xdp_adjust_tail(ctx, keep - cur))
		return -1;
	return 0;
}

static __always_inline int too_big(struct xdp_md *ctx, const struct pkt *p, const struct mirror *mi,
				   __u16 egress_mtu)
{
	/* GUE's UDP header makes the tunnel 8 bytes longer. */
	int overhead = tunnel_len(mi);
	int err;

	if (p->flow.family == PM_FAMILY_V4) {
		/* Without DF the client never hears of path MTU: nothing to say. */
		if (!p->df || p->icmp)
			return verdict(R_DROP_TOO_BIG, XDP_DROP);
		__u16 mtu = egress_mtu > overhead + 68 ? egress_mtu - overhead : 68;
		err = p->vlan ? too_big_v4(ctx, 18, mtu) : too_big_v4(ctx, 14, mtu);
	} else {
		if (p->icmp) /* never answer an ICMP error with one */
			return verdict(R_DROP_TOO_BIG, XDP_DROP);
		__u32 mtu = egress_mtu > overhead + 1280 ? egress_mtu - overhead : 1280;
		err = p->vlan ? too_big_v6(ctx, 18, mtu) : too_big_v6(ctx, 14, mtu);
	}
	if (err)
		return verdict(R_DROP_TOO_BIG, XDP_DROP);
	return verdict(R_ICMP_TOO_BIG, XDP_TX);
}

static __always_inline int has_src(const struct settings *st, __u8 family)
{
	if (family == PM_FAMILY_V4)
		return *(__u32 *)st->outer_src_v4 != 0;
	const __u64 *w = (const __u64 *)st->outer_src_v6;
	return (w[0] | w[1]) != 0;
}

/* encap with the frame's L2 header length as a constant (verifier). */
static __always_inline int encap_frame(struct xdp_md *ctx, const struct pkt *p, const struct mirror *mi,
				       const struct settings *st, __u32 hash)
{
	return p->vlan ? encap(ctx, p, mi, st, hash, 18) : encap(ctx, p, mi, st, hash, 14);
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	int d = 0;

#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

/*
 * Remember a successful lookup. Entries are per CPU, so plain stores do.
 * A lookup that confirms the cached result (same generation, inputs and
 * answer, not expired) only raises max_len and keeps the expiry: the
 * entry's age is that of its oldest confirmation.
 */
static __always_inline void nexthop_fill(struct nexthop *nh, const struct bpf_fib_lookup *fp,
					 const struct pkt *p, __u32 gen, __u32 ttl_ms, __u8 tos,
					 __u32 tot, __u64 now)
{
	int same = now < nh->expires_ns && nh->generation == gen && nh->ifindex_in == p->ifindex &&
		   nh->tos == tos && nh->ifindex_out == fp->ifindex && mac_eq(nh->dmac, fp->dmac) &&
		   mac_eq(nh->smac, fp->smac);

	nh->lookups++;
	if (same) {
		if (tot > nh->max_len)
			nh->max_len = tot;
		return;
	}
	nh->expires_ns = now + (__u64)ttl_ms * 1000000ULL;
	nh->generation = gen;
	nh->ifindex_in = p->ifindex;
	nh->ifindex_out = fp->ifindex;
	nh->max_len = tot;
	nh->tos = tos;
	__builtin_memcpy(nh->smac, fp->smac, ETH_ALEN);
	__builtin_memcpy(nh->dmac, fp->dmac, ETH_ALEN);
}

/* Rewrite the MACs of the encapsulated frame and send it out ifindex. */
static __always_inline int send(struct xdp_md *ctx, const struct pkt *p, __u32 ifindex,
				const __u8 *smac, const __u8 *dmac)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return verdict(R_DROP_ENCAP, XDP_DROP);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	if (ifindex == p->ifindex)
		return verdict(R_TX, XDP_TX);
	count(R_REDIRECT);
	return bpf_redirect(ifindex, 0);
}

/*
 * Next hop: a fresh pm_nexthops entry for (mirror, inner family) made by
 * the same lookup (ingress device, TOS), in the current generation, that
 * already accepted a packet at least this long (so the MTU check holds),
 * or else bpf_fib_lookup. The agent bumps the generation on every route,
 * neighbour and link change; the TTL bounds staleness while it is away.
 */
static __always_inline int transmit(struct xdp_md *ctx, const struct pkt *p, __u32 mirror,
				    const struct mirror *mi, const struct settings *st, __u32 hash)
{
	struct bpf_fib_lookup fp = {};
	struct nexthop *nh = NULL;
	__u32 zero = 0, gen = 0, ttl_ms = 0;
	__u64 now = 0;

	if (!has_src(st, mi->family))
		return verdict(R_DROP_NO_OUTER_SRC, XDP_DROP);

	__u32 tot = p->ip_len + tunnel_len(mi);
	__u8 tos = mi->family == PM_FAMILY_V4 ? p->tos : 0;
	struct nexthop_ctl *ctl = bpf_map_lookup_elem(&pm_nexthop_ctl, &zero);

	if (ctl && ctl->ttl_ms) {
		__u32 idx = (mirror << 1) | (p->flow.family == PM_FAMILY_V6);

		gen = ctl->generation;
		ttl_ms = ctl->ttl_ms;
		nh = bpf_map_lookup_elem(&pm_nexthops, &idx);
	}
	if (nh) {
		now = bpf_ktime_get_coarse_ns();
		if (now < nh->expires_ns && nh->generation == gen && nh->ifindex_in == p->ifindex &&
		    nh->tos == tos && tot <= nh->max_len) {
			int err = encap_frame(ctx, p, mi, st, hash);
			if (err)
				return verdict(R_DROP_ENCAP, XDP_DROP);
			nh->hits++;
			return send(ctx, p, nh->ifindex_out, nh->smac, nh->dmac);
		}
	}

	int rc = fib(ctx, p, mi, st, &fp);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return too_big(ctx, p, mi, fp.mtu_result);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return verdict(R_DROP_FIB_MISS, XDP_DROP);

	int err = encap_frame(ctx, p, mi, st, hash);
	if (err)
		return verdict(R_DROP_ENCAP, XDP_DROP);

	/* The kernel knows the route but not the neighbour yet: let the stack
	 * forward this encapsulated packet, which resolves it for the next. */
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return verdict(R_PASS_NO_NEIGH, XDP_PASS);

	if (nh)
		nexthop_fill(nh, &fp, p, gen, ttl_ms, tos, tot, now);
	return send(ctx, p, fp.ifindex, fp.smac, fp.dmac);
}

/* ---- the program ---- */

/* The datagram a fragment belongs to: the same in every fragment. An ICMP
 * error's flow is the quoted one, (client, VIP); its fragments carry
 * (sender of the error, VIP), and the later ones are not parsed: key the
 * error's own source. (Its destination is the VIP either way.) */
static __always_inline void frag_key_of(const struct pkt *p, struct frag_key *fk)
{
	fk->id = p->frag_id;
	fk->proto = p->frag_proto;
	fk->family = p->flow.family;
	__builtin_memcpy(fk->src, p->icmp ? p->frag_src : p->flow.src, 16);
	__builtin_memcpy(fk->dst, p->flow.dst, 16);
}

/*
 * Not VIP traffic: passed. A first fragment of it to a VIP address leaves
 * a record without a mirror, so that its later fragments, which carry no
 * ports and would be dropped as strays at that address, are passed too.
 */
static __always_inline int pass_not_vip(struct xdp_md *ctx, const struct pkt *p)
{
	if (p->frag == FRAG_FIRST && is_vip_addr(p)) {
		struct frag_key fk = {};
		struct frag_info fi = { .mirror = PM_MIRROR_NONE };

		frag_key_of(p, &fk);
		bpf_map_update_elem(&pm_frags, &fk, &fi, BPF_ANY);
	}
	return pass_on(ctx, R_PASS_NOT_VIP);
}

static __always_inline int steer_later_fragment(struct xdp_md *ctx, struct pkt *p,
						const struct settings *st)
{
	struct frag_key fk = {};

	frag_key_of(p, &fk);
	struct frag_info *fi = bpf_map_lookup_elem(&pm_frags, &fk);
	if (!fi) {
		if (is_vip_addr(p))
			return verdict(R_DROP_FRAG_MISS, XDP_DROP);
		return pass_on(ctx, R_PASS_NOT_VIP);
	}
	if (fi->mirror == PM_MIRROR_NONE) /* its first fragment was passed */
		return pass_on(ctx, R_PASS_NOT_VIP);
	struct mirror *mi = mirror_get(fi->mirror);
	if (!mi || mi->state == MIRROR_DOWN || mi->state == MIRROR_UNUSED)
		return verdict(R_DROP_NO_MIRROR, XDP_DROP);
	count(R_FRAGMENTS);
	account(fi->resource, fi->region, fi->mirror, p->ip_len, 0);
	return transmit(ctx, p, fi->mirror, mi, st, flow_hash(&p->flow, 1));
}

SEC("xdp")
int pm_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	__be16 proto;

	/* Read before any helper: the verifier refuses ctx loads through a
	 * pointer the compiler offset for later use. */
	p.ifindex = ctx->ingress_ifindex;
	int l2 = parse_l2(data, data_end, &proto);
	if (!l2)
		return pass_on(ctx, R_PASS_NOT_IP);
	p.vlan = l2 != sizeof(struct ethhdr);

	int r;
	if (proto == ETH_P_IP_BE)
		r = parse_v4(data + l2, data_end, &p);
	else if (proto == ETH_P_IPV6_BE)
		r = parse_v6(data + l2, data_end, &p);
	else
		return pass_on(ctx, R_PASS_NOT_IP);

	switch (r) {
	case P_OK:
		break;
	case P_NOT_L4:
		return pass_not_vip(ctx, &p);
	case P_L4_MALFORMED:
		/* Never let a broken packet to a VIP address reach the stack. */
		if (is_vip_addr(&p))
			return verdict(R_DROP_MALFORMED, XDP_DROP);
		return pass_on(ctx, R_PASS_MALFORMED);
	default:
		return pass_on(ctx, R_PASS_MALFORMED);
	}

	__u32 zero = 0;
	struct settings *st;

	if (p.frag == FRAG_LATER) {
		st = bpf_map_lookup_elem(&pm_settings, &zero);
		if (!st)
			return verdict(R_PASS_MALFORMED, XDP_PASS); /* unreachable: arrays always hit */
		return steer_later_fragment(ctx, &p, st);
	}

	struct vip_key vk = { .port = p.flow.dport, .proto = p.flow.proto, .family = p.flow.family };
	__builtin_memcpy(vk.addr, p.flow.dst, 16);
	struct vip_info *vip = bpf_map_lookup_elem(&pm_vips, &vk);
	if (!vip)
		return pass_not_vip(ctx, &p);
	/* Settings only matter to VIP traffic: non-VIP packets skip the lookup. */
	st = bpf_map_lookup_elem(&pm_settings, &zero);
	if (!st)
		return verdict(R_PASS_MALFORMED, XDP_PASS); /* unreachable: arrays always hit */

	__u32 mirror = 0, region;
	int new_flow = 0;
	struct mirror *mi;
	struct session *s = bpf_map_lookup_elem(&pm_sessions, &p.flow);

	int bare_syn = p.flow.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;

	if (s && bare_syn && (s->flags & SESSION_ESTABLISHED) && !p.icmp) {
		/* The client reuses the 5-tuple of a finished connection: a new
		 * flow, routed by today's tables and counted as an access. */
		region = client_region(&p, st);
		r = choose(&p, vip, region, 1, &mirror);
		if (r)
			return verdict(r, XDP_DROP);
		s->mirror = mirror;
		s->region = region;
		s->flags = 0;
		new_flow = 1;
		mi = mirror_get(mirror);
	} else if (s) {
		region = s->region;
		mirror = s->mirror;
		if (!bare_syn && !(s->flags & SESSION_ESTABLISHED) && p.flow.proto == IPPROTO_TCP && !p.icmp)
			s->flags |= SESSION_ESTABLISHED;
		mi = mirror_get(mirror);
		if (!mi || mi->state == MIRROR_DOWN || mi->state == MIRROR_UNUSED) {
			/* The flow's mirror died: re-pick (affinity to it is void too). */
			r = choose(&p, vip, region, !p.icmp, &mirror);
			if (r)
				return verdict(r, XDP_DROP);
			if (!p.icmp) {
				s->mirror = mirror;
				count(R_REROUTED);
			}
			mi = mirror_get(mirror);
		}
	} else {
		region = client_region(&p, st);
		r = choose(&p, vip, region, !p.icmp, &mirror);
		if (r)
			return verdict(r, XDP_DROP);
		mi = mirror_get(mirror);
		if (!p.icmp) {
			struct session ns = { .mirror = mirror, .region = region };

			/* A flow picked up mid-way (no SYN seen) is established. */
			if (p.flow.proto == IPPROTO_TCP && !bare_syn)
				ns.flags = SESSION_ESTABLISHED;
			bpf_map_update_elem(&pm_sessions, &p.flow, &ns, BPF_ANY);
			/* Only real opens count as accesses, not mid-flow pickups. */
			new_flow = p.flow.proto == IPPROTO_UDP || bare_syn;
		}
	}
	if (!mi)
		return verdict(R_DROP_NO_MIRROR, XDP_DROP);

	if (p.frag == FRAG_FIRST) {
		struct frag_key fk = {};
		struct frag_info fi = { .mirror = mirror, .resource = vip->resource, .region = region };

		frag_key_of(&p, &fk);
		bpf_map_update_elem(&pm_frags, &fk, &fi, BPF_ANY);
		count(R_FRAGMENTS);
	}
	if (p.icmp)
		count(R_ICMP_STEERED);
	account(vip->resource, region, mirror, p.ip_len, new_flow);
	return transmit(ctx, &p, mirror, mi, st, flow_hash(&p.flow, 0));
}
