// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * premirror XDP decap, attached on mirror hosts.
 *
 * Strips the outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or 41)
 * header of packets addressed to one of this host's tunnel endpoints
 * (pm_decap_addrs) and passes the inner packet to the stack, where the VIP
 * is bound on a local interface. The inner packet is checked against the
 * outer one before anything is changed; a mismatch is dropped and counted.
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

_Static_assert(sizeof(struct decap_stats) == D_MAX * sizeof(__u64),
	       "struct decap_stats must follow enum pm_decap_reason");

static __always_inline int verdict(enum pm_decap_reason r, int action)
{
	__u32 zero = 0;
	struct decap_stats *st = bpf_map_lookup_elem(&pm_decap_stats, &zero);

	if (st && r < D_MAX)
		((__u64 *)st)[r]++;
	return action;
}

/* Not ours: count it and hand it on untouched (peer, else the stack). */
static __always_inline int pass_on(struct xdp_md *ctx, enum pm_decap_reason r)
{
	verdict(r, XDP_PASS);
	bpf_tail_call(ctx, &pm_decap_next, ctx->ingress_ifindex);
	bpf_tail_call(ctx, &pm_decap_next, 0);
	return XDP_PASS;
}

/* Length of the inner packet per its own header, or 0 if it is not valid. */
static __always_inline __u32 inner_len(void *in, void *data_end, __u8 proto)
{
	if (proto == IPPROTO_IPIP) {
		struct iphdr *ih = in;

		if ((void *)(ih + 1) > data_end || ih->version != 4 || ih->ihl < 5)
			return 0;
		return ntohs_len(ih->tot_len);
	}
	struct ipv6hdr *ih = in;

	if ((void *)(ih + 1) > data_end || ih->version != 6)
		return 0;
	return ntohs_len(ih->payload_len) + IPV6_HLEN;
}

static __always_inline int local_endpoint(const void *addr, __u8 family)
{
	struct decap_addr k = { .family = family };

	__builtin_memcpy(k.addr, addr, family == PM_FAMILY_V4 ? 4 : 16);
	return bpf_map_lookup_elem(&pm_decap_addrs, &k) != NULL;
}

/* Remove olen bytes after the l2-byte L2 header (constants at each site). */
static __always_inline int strip(struct xdp_md *ctx, const int l2, const int olen, __u8 proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + l2 + olen > data_end)
		return -1;
	/* Move the L2 header forward over the outer header, then set the
	 * ethertype of the inner family. */
	__builtin_memcpy(data + olen, data, l2);
	*(__be16 *)(data + olen + l2 - 2) = proto == IPPROTO_IPIP ? ETH_P_IP_BE : ETH_P_IPV6_BE;
	return bpf_xdp_adjust_head(ctx, olen);
}

static __always_inline int decap(struct xdp_md *ctx, const int l2, __be16 proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l3 = data + l2;
	__u8 inner;
	__u32 outer_len, olen;
	enum pm_decap_reason ok;

	if (proto == ETH_P_IP_BE) {
		struct iphdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		if (oh->version != 4 || (oh->protocol != IPPROTO_IPIP && oh->protocol != IPPROTO_IPV6))
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		if (!local_endpoint(&oh->daddr, PM_FAMILY_V4))
			return pass_on(ctx, D_PASS_NOT_LOCAL);
		if (oh->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET))
			return pass_on(ctx, D_PASS_FRAGMENT);
		/* Our router never sends outer options; refuse to guess. */
		if (oh->ihl != 5)
			return verdict(D_DROP_MALFORMED, XDP_DROP);
		inner = oh->protocol;
		outer_len = ntohs_len(oh->tot_len);
		olen = IPV4_HLEN;
		ok = D_DECAP_V4;
	} else if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		if (oh->version != 6 || (oh->nexthdr != IPPROTO_IPIP && oh->nexthdr != IPPROTO_IPV6))
			return pass_on(ctx, D_PASS_NOT_TUNNEL);
		if (!local_endpoint(&oh->daddr, PM_FAMILY_V6))
			return pass_on(ctx, D_PASS_NOT_LOCAL);
		inner = oh->nexthdr;
		outer_len = ntohs_len(oh->payload_len) + IPV6_HLEN;
		olen = IPV6_HLEN;
		ok = D_DECAP_V6;
	} else {
		return pass_on(ctx, D_PASS_NOT_TUNNEL);
	}

	/* The inner packet must fill the outer one exactly and fit the frame
	 * (trailing Ethernet padding is allowed). */
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
