/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet helpers shared by the router and decap programs. */
#ifndef PM_PKT_H
#define PM_PKT_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86DD)

#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define UDP_HLEN 8

#define IPV4_DF 0x4000
#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/*
 * A 16-bit network-order length or offset in host order, with its range
 * known to the verifier. Kernels before 6.8 forget every bound of a
 * register after the byte-swap instruction bpf_ntohs compiles to, and then
 * refuse to add it to a packet pointer; the explicit mask (an instruction
 * the compiler may not drop) restores 0..0xffff.
 */
static __always_inline __u32 ntohs_len(__be16 v)
{
	__u64 x = bpf_ntohs(v);

	asm volatile("%0 &= 0xffff" : "+r"(x));
	return x;
}

/* ICMP and ICMPv6 share the first 8 bytes' layout; the UAPI headers for
 * them pull in libc, so the few constants we need live here. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be32 rest;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3

/*
 * L2 header length: 14, or 18 with one 802.1Q tag. Returns 0 for frames we
 * do not carry (too short, QinQ) and stores the L3 ethertype in *proto.
 */
static __always_inline int parse_l2(void *data, void *data_end, __be16 *proto)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto != ETH_P_8021Q_BE) {
		*proto = eth->h_proto;
		return sizeof(*eth);
	}
	struct vlan_hdr *vh = (void *)(eth + 1);
	if ((void *)(vh + 1) > data_end)
		return 0;
	*proto = vh->proto;
	return sizeof(*eth) + sizeof(*vh);
}

/*
 * Ones'-complement arithmetic for the Internet checksum on raw words, as
 * loaded from the packet: the checksum does not depend on byte order
 * (RFC 1071), so words are added as they sit in memory, constants are
 * converted with bpf_htons, and a folded sum is stored without a swap. A
 * 64-bit accumulator takes 32-bit words without carries lost; subtracting
 * w is adding its complement (-w mod 2^32-1, hence mod 2^16-1).
 */
static __always_inline __u64 csum_sub32(__u64 sum, __u32 w)
{
	return sum + (__u32)~w;
}

/* Fold to 16 bits, not complemented: 0..0xffff, where 0 and 0xffff both
 * stand for zero. */
static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Internet checksum of an option-less IPv4 header. */
static __always_inline __u16 ipv4_csum(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < IPV4_HLEN / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#endif /* PM_PKT_H */
