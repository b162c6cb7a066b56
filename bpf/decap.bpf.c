// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * premirror XDP decap, attached on mirror hosts.
 *
 * Strips the outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or 41)
 * header of packets addressed to one of this host's tunnel endpoints
 * (pm_decap_addrs), and the outer IP and UDP headers of GUE packets (direct
 * IP-in-UDP) to an endpoint's GUE port, and passes the inner packet to the
 * stack, where the VIP is bound on a local interface. The inner packet is checked against the
 * outer one before anything is changed; a mismatch is dropped and counted.
 * An endpoint marked DECAP_F_SOURCES takes tunnel packets only from outer
 * sources in pm_decap_sources (the edges): others are dropped and counted,
 * so a host that can reach the endpoint cannot inject inner packets.
 * Everything else passes untouched, through the peer XDP program in
 * pm_decap_next first if the operator installed one (see router.bpf.c);
 * decapsulated packets are ours and go straight to the stack. (This kernel
 * has no ipip module, so the stack could not decapsulate these packets
 * itself.)
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

#include "premirror.h"
#include "pkt.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct decap_addr);
	__type(value, struct decap_addr_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_addrs SEC(".maps");

/* The outer sources tunnel packets are taken from, for endpoints with
 * DECAP_F_SOURCES (the edges' outer_source addresses or their networks),
 * written by the agent from decap_sources. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct decap_src_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_stats SEC(".maps");

/* The operator's XDP programs that run after ours on what we pass
 * untouched, written by the agent; empty: XDP_PASS. Key = ingress ifindex
 * (that interface only), key 0 = every interface; see pm_next in
 * router.bpf.c. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_next SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_echo_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_probe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_echo_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pm_decap_probe_budget SEC(".maps");

_Static_assert(sizeof(struct decap_stats) == D_MAX * sizeof(__u64),
	       "struct decap_stats must follow enum pm_decap_reason");

static __always_inline void count(enum pm_decap_reason r)
{
	__u32 zero = 0;
	struct decap_stats *st = bpf_map_lookup_elem(&pm_decap_stats, &zero);

	if (st && r < D_MAX)
		((__u64 *)st)[r]++;
}

static __always_inline int verdict(enum pm_decap_reason r, int action)
{
	count(r);
	return action;
}

/* Not ours: count it and hand it on untouched (peer, else the stack). */
static __always_inline int pass_on(struct xdp_md *ctx, enum pm_decap_reason r)
{
	count(r);
	bpf_tail_call(ctx, &pm_decap_next, ctx->ingress_ifindex);
	bpf_tail_call(ctx, &pm_decap_next, 0);
	return XDP_PASS;
}

/* IPv6 fragment header (next header value). */
#define PM_NEXTHDR_FRAGMENT 44

/* Length of the inner packet per its own header (family 4 or 6), or 0 if
 * it is not valid. */
static __always_inline __u32 inner_len(void *in, void *data_end, __u8 family)
{
	if (family == PM_FAMILY_V4) {
		struct iphdr *ih = in;

		if ((void *)(ih + 1) > data_end || ih->version != 4 || ih->ihl < 5)
			return 0;
		__u32 tl = ntohs_len(ih->tot_len);
		/* A total length shorter than the header is no packet. */
		if (tl < (__u32)ih->ihl * 4)
			return 0;
		return tl;
	}
	struct ipv6hdr *ih = in;

	if ((void *)(ih + 1) > data_end || ih->version != 6)
		return 0;
	return ntohs_len(ih->payload_len) + IPV6_HLEN;
}

/* The probe datagram (internal/probe/packet.go): "PMPR", version 1, type
 * (1 request, 2 reply), a zero word, then seq, nonce and send time; 28 to
 * 1232 bytes with padding. */
#define PROBE_HLEN 28
#define PROBE_MAXLEN 1232
#define PROBE_MAGIC_BE 0x504d5052 /* "PMPR" */

/* RFC 1624 incremental update of a checksum for one 16-bit word changed
 * from old to new (words as they sit in memory). */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u64 sum = (__u16)~check;

	sum += (__u16)~old;
	sum += new;
	return (__u16)~csum_fold64(sum);
}

/* Whether the reply budget of this CPU has room for one more reply. */
static __always_inline int probe_budget_ok(__u32 rate)
{
	__u32 zero = 0;
	struct probe_echo_budget *b = bpf_map_lookup_elem(&pm_decap_probe_budget, &zero);

	if (!b || rate == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 cost = 1000000000ULL / rate;
	/* A tenth of a second of replies may go at once. */
	__u64 cap = 100000000ULL > cost ? 100000000ULL : cost;

	b->budget_ns += now - b->last_ns;
	b->last_ns = now;
	if (b->budget_ns > cap)
		b->budget_ns = cap;
	if (b->budget_ns < cost)
		return 0;
	b->budget_ns -= cost;
	return 1;
}

/*
 * An edge's UDP echo probe to one of our endpoints (udp at l4, the IP
 * header at l3 of family fam), answered here with XDP_TX: the request
 * turned into the reply the agent's responder would send (same size, type
 * byte 2) with addresses, ports and MACs swapped. The probe then measures
 * the path through this program, and a mirror host answers while its
 * agent restarts (the program stays attached). Returns -1 when the
 * datagram is not a well-formed request to the probe port (the caller
 * goes on), XDP_PASS when over the reply budget (the caller passes it on
 * untouched, through pm_decap_next: the agent's responder, with its own
 * limit, may still answer), XDP_TX when answered.
 */
static __always_inline int probe_echo(void *data, void *data_end, void *l3, struct udphdr *uh, __u8 fam, __u32 l4len,
				      const struct decap_addr_info *ep)
{
	/* GUE to the endpoint's port (the hot path) is no probe: it leaves
	 * with one compare, before the settings lookup. */
	if ((void *)(uh + 1) > data_end || (ep->gue_port && ntohs_len(uh->dest) == ep->gue_port))
		return -1;
	__u32 zero = 0;
	struct probe_echo_cfg *cfg = bpf_map_lookup_elem(&pm_decap_probe, &zero);

	if (!cfg || !cfg->port || ntohs_len(uh->dest) != cfg->port)
		return -1;
	__u32 plen = ntohs_len(uh->len);
	__u8 *p = (void *)(uh + 1);
	/* The datagram must be what the IP header says it carries, exactly. */
	if (plen != l4len || plen < UDP_HLEN + PROBE_HLEN || plen > UDP_HLEN + PROBE_MAXLEN || (void *)(p + PROBE_HLEN) > data_end ||
	    (void *)uh + plen > data_end)
		return -1;
	if (*(__be32 *)p != bpf_htonl(PROBE_MAGIC_BE) || p[4] != 1 || p[5] != 1 || p[6] || p[7])
		return -1;
	if (!probe_budget_ok(cfg->rate))
		return XDP_PASS; /* counted by the caller's pass_on */

	__u16 oldw = *(__u16 *)(p + 4);
	p[5] = 2;
	if (uh->check)
		uh->check = csum_replace16(uh->check, oldw, *(__u16 *)(p + 4)) ?: 0xffff;
	__be16 port = uh->source;
	uh->source = uh->dest;
	uh->dest = port;
	if (fam == PM_FAMILY_V4) {
		struct iphdr *ih = l3;
		__u32 a = ih->saddr;
		__u16 oldt = *(__u16 *)&ih->ttl;

		ih->saddr = ih->daddr;
		ih->daddr = a;
		ih->ttl = 64;
		ih->check = csum_replace16(ih->check, oldt, *(__u16 *)&ih->ttl);
	} else {
		struct ipv6hdr *ih = l3;
		struct in6_addr a = ih->saddr;

		ih->saddr = ih->daddr;
		ih->daddr = a;
		ih->hop_limit = 64;
	}
	__u8 mac[6];
	__builtin_memcpy(mac, data, 6);
	__builtin_memcpy(data, data + 6, 6);
	__builtin_memcpy(data + 6, mac, 6);
	return verdict(D_PROBE_ECHO, XDP_TX);
}

static __always_inline struct decap_addr_info *local_endpoint(const void *addr, __u8 family)
{
	struct decap_addr k = { .family = family };

	__builtin_memcpy(k.addr, addr, family == PM_FAMILY_V4 ? 4 : 16);
	return bpf_map_lookup_elem(&pm_decap_addrs, &k);
}

/* Whether a tunnel packet from outer source sk may not be decapsulated
 * at endpoint ep: the endpoint takes only listed sources and sk is in no
 * listed prefix. sk is filled only when the endpoint checks. An IPv4
 * source (v4) matches only an IPv4 prefix: the longest match of its
 * ::ffff:a.b.c.d key is an IPv6 prefix (::/0 … ::/80, value
 * DECAP_SRC_V6) only when no IPv4 prefix holds it. */
static __always_inline int source_denied(const struct decap_addr_info *ep, struct decap_src_key *sk, int v4)
{
	if (!(ep->flags & DECAP_F_SOURCES))
		return 0;
	if (sk->prefixlen)
		return 1; /* marked by the caller: no edge's address */
	sk->prefixlen = 128;
	__u8 *v = bpf_map_lookup_elem(&pm_decap_sources, sk);
	return !v || (v4 && *v == DECAP_SRC_V6);
}

/* Remove olen bytes after the l2-byte L2 header (constants at each site). */
static __always_inline int strip(struct xdp_md *ctx, const int l2, const int olen, __u8 family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + l2 + olen > data_end)
		return -1;
	/* Move the L2 header forward over the outer header, then set the
	 * ethertype of the inner family. */
	__builtin_memcpy(data + olen, data, l2);
	*(__be16 *)(data + olen + l2 - 2) = family == PM_FAMILY_V4 ? ETH_P_IP_BE : ETH_P_IPV6_BE;
	return bpf_xdp_adjust_head(ctx, olen);
}

/*
 * GUE (variant 1: direct IP-in-UDP, what the router sends to PM_ENCAP_GUE
 * mirrors) to one of our endpoints on its GUE port. The UDP header must
 * fill the rest of the outer packet (l4 is where it starts; rest = outer
 * payload length), and the inner packet the rest of the UDP datagram;
 * anything else is dropped. Returns the inner family (4 or 6), 0 when the
 * datagram is not GUE for us (pass untouched), -1 when malformed.
 *
 * The UDP checksum is not verified. Doing so would mean summing the whole
 * datagram, payload included, in the program (the kernel's verdict on it
 * is not visible to XDP); the inner packet keeps its own protection, which
 * the stack checks after we pass it on: the IPv4 header checksum, and the
 * TCP / UDP / ICMPv6 checksum, whose pseudo-header covers the inner
 * addresses. What the outer checksum alone would catch (corruption of an
 * inner IPv6 flow label or hop limit, or of a packet without a transport
 * checksum) IPIP does not catch either, and the link's CRC covers the hop.
 * A zero checksum is accepted over IPv6 too (RFC 6935/6936: the router
 * sends one when the inner packet's checksum cannot be derived).
 */
static __always_inline int gue(void *l4, void *data_end, __u32 rest, const struct decap_addr_info *ep,
			       enum pm_decap_reason *why)
{
	struct udphdr *uh = l4;

	*why = D_PASS_UDP_NOT_GUE;
	if (!ep->gue_port)
		return 0;
	if ((void *)(uh + 1) > data_end) {
		*why = D_PASS_NOT_TUNNEL; /* too short to tell: the stack judges it */
		return 0;
	}
	if (ntohs_len(uh->dest) != ep->gue_port)
		return 0;
	if (ntohs_len(uh->len) != rest || rest < UDP_HLEN + IPV4_HLEN)
		return -1;
	__u8 *in = (void *)(uh + 1);
	if ((void *)(in + 1) > data_end)
		return -1;
	__u8 family = in[0] >> 4;
	if (family != PM_FAMILY_V4 && family != PM_FAMILY_V6)
		return -1;
	__u32 il = inner_len(in, data_end, family);
	if (!il || il + UDP_HLEN != rest)
		return -1;
	return family;
}

/* UDP after an IPv4 header of ihl words to ep's GUE port (options case). */
static __always_inline int to_gue_port(void *l3, __u8 ihl, void *data_end, const struct decap_addr_info *ep)
{
	struct udphdr *uh = l3 + (ihl & 0xf) * 4;

	if ((void *)(uh + 1) > data_end)
		return 0;
	return ntohs_len(uh->dest) == ep->gue_port;
}

static __always_inline int decap(struct xdp_md *ctx, const int l2, __be16 proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l3 = data + l2;
	__u8 inner, l4proto;
	__u32 outer_len, olen;
	struct decap_addr_info *ep;
	enum pm_decap_reason ok;
	struct decap_src_key sk = {};

	if (proto == ETH_P_IP_BE) {
		struct iphdr *oh = l3;

		if ((void *)(oh + 1) > data_end || oh->version != 4)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		l4proto = oh->protocol;
		if (l4proto != IPPROTO_IPIP && l4proto != IPPROTO_IPV6 && l4proto != IPPROTO_UDP)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		ep = local_endpoint(&oh->daddr, PM_FAMILY_V4);
		if (!ep)
			return pass_on(ctx, l4proto == IPPROTO_UDP ? D_PASS_NOT_TUNNEL : D_PASS_NOT_LOCAL);
		if (l4proto == IPPROTO_UDP && oh->ihl == 5 && !(oh->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET))) {
			int r = probe_echo(data, data_end, l3, l3 + IPV4_HLEN, PM_FAMILY_V4,
					   ntohs_len(oh->tot_len) - IPV4_HLEN, ep);

			if (r == XDP_PASS)
				return pass_on(ctx, D_PASS_PROBE_OVER_BUDGET);
			if (r >= 0)
				return r;
		}
		if (l4proto == IPPROTO_UDP && !ep->gue_port)
			return pass_on(ctx, D_PASS_UDP_NOT_GUE);
		if (oh->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET))
			return pass_on(ctx, D_PASS_FRAGMENT);
		outer_len = ntohs_len(oh->tot_len);
		olen = IPV4_HLEN;
		ok = D_DECAP_V4;
		if (ep->flags & DECAP_F_SOURCES) {
			sk.addr[10] = 0xff;
			sk.addr[11] = 0xff;
			__builtin_memcpy(&sk.addr[12], &oh->saddr, 4);
		}
		if (oh->ihl != 5) {
			/* Our router never sends outer options: a tunnel packet
			 * with them is refused rather than guessed at. Other UDP
			 * with options is the stack's. */
			if (l4proto == IPPROTO_UDP && !to_gue_port(l3, oh->ihl, data_end, ep))
				return pass_on(ctx, D_PASS_UDP_NOT_GUE);
			return verdict(D_DROP_MALFORMED, XDP_DROP);
		}
	} else if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *oh = l3;

		if ((void *)(oh + 1) > data_end || oh->version != 6)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		l4proto = oh->nexthdr;
		if (l4proto == PM_NEXTHDR_FRAGMENT) {
			/* A fragment of a tunnel packet to one of our endpoints is
			 * counted as its IPv4 counterpart is (pass_fragment), and
			 * left to the stack as before. */
			__u8 *fh = (void *)(oh + 1);

			if ((void *)(fh + 8) > data_end)
				return pass_on(ctx, D_PASS_NOT_TUNNEL);
			l4proto = fh[0];
			if (l4proto != IPPROTO_IPIP && l4proto != IPPROTO_IPV6 && l4proto != IPPROTO_UDP)
				return pass_on(ctx, D_PASS_NOT_TUNNEL);
			ep = local_endpoint(&oh->daddr, PM_FAMILY_V6);
			if (!ep)
				return pass_on(ctx, l4proto == IPPROTO_UDP ? D_PASS_NOT_TUNNEL : D_PASS_NOT_LOCAL);
			if (l4proto == IPPROTO_UDP && !ep->gue_port)
				return pass_on(ctx, D_PASS_UDP_NOT_GUE);
			return pass_on(ctx, D_PASS_FRAGMENT);
		}
		if (l4proto != IPPROTO_IPIP && l4proto != IPPROTO_IPV6 && l4proto != IPPROTO_UDP)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		ep = local_endpoint(&oh->daddr, PM_FAMILY_V6);
		if (!ep)
			return pass_on(ctx, l4proto == IPPROTO_UDP ? D_PASS_NOT_TUNNEL : D_PASS_NOT_LOCAL);
		if (l4proto == IPPROTO_UDP) {
			int r = probe_echo(data, data_end, l3, l3 + IPV6_HLEN, PM_FAMILY_V6, ntohs_len(oh->payload_len), ep);

			if (r == XDP_PASS)
				return pass_on(ctx, D_PASS_PROBE_OVER_BUDGET);
			if (r >= 0)
				return r;
		}
		outer_len = ntohs_len(oh->payload_len) + IPV6_HLEN;
		olen = IPV6_HLEN;
		ok = D_DECAP_V6;
		if (ep->flags & DECAP_F_SOURCES) {
			__builtin_memcpy(sk.addr, &oh->saddr, 16);
			/* An IPv4-mapped IPv6 source never comes from an edge (RFC
			 * 4291 2.5.5.2: not on the wire) and would match the IPv4
			 * prefixes: refused. */
			if (!oh->saddr.in6_u.u6_addr32[0] && !oh->saddr.in6_u.u6_addr32[1] &&
			    oh->saddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
				sk.prefixlen = 1;
		}
	} else {
		return pass_on(ctx, D_PASS_NOT_TUNNEL);
	}

	/* The outer packet must fit the frame (trailing Ethernet padding is
	 * allowed). */
	if (l4proto == IPPROTO_UDP) {
		enum pm_decap_reason why;
		int fam = gue(l3 + olen, data_end, outer_len - olen, ep, &why);

		if (fam == 0)
			return pass_on(ctx, why);
		if (source_denied(ep, &sk, olen == IPV4_HLEN))
			return verdict(D_DROP_SOURCE, XDP_DROP);
		if (fam < 0 || outer_len < olen || l3 + outer_len > data_end)
			return verdict(D_DROP_MALFORMED, XDP_DROP);
		count(D_GUE);
		int err = olen == IPV4_HLEN ? strip(ctx, l2, IPV4_HLEN + UDP_HLEN, fam)
					    : strip(ctx, l2, IPV6_HLEN + UDP_HLEN, fam);
		if (err)
			return verdict(D_DROP_MALFORMED, XDP_DROP);
		return verdict(ok, XDP_PASS);
	}

	if (source_denied(ep, &sk, olen == IPV4_HLEN))
		return verdict(D_DROP_SOURCE, XDP_DROP);
	/* IPIP / IPv6-in-IP: the inner packet must fill the outer one exactly. */
	inner = l4proto == IPPROTO_IPIP ? PM_FAMILY_V4 : PM_FAMILY_V6;
	__u32 il = inner_len(l3 + olen, data_end, inner);
	if (!il || il + olen != outer_len || l3 + outer_len > data_end)
		return verdict(D_DROP_MALFORMED, XDP_DROP);

	int err = olen == IPV4_HLEN ? strip(ctx, l2, IPV4_HLEN, inner) : strip(ctx, l2, IPV6_HLEN, inner);
	if (err)
		return verdict(D_DROP_MALFORMED, XDP_DROP);
	return verdict(ok, XDP_PASS);
}

SEC("xdp")
int pm_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 proto;

	int l2 = parse_l2(data, data_end, &proto);
	if (!l2)
		return pass_on(ctx, D_PASS_NOT_TUNNEL);
	if (l2 == 18)
		return decap(ctx, 18, proto);
	return decap(ctx, 14, proto);
}
