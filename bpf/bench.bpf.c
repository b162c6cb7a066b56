// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Benchmark harness for BPF_PROG_TEST_RUN (tests only, never attached).
 *
 * The kernel reuses one buffer for every repetition, so after the first run
 * an encapsulating program would see its own output. bench_restore puts
 * the pristine frame back (and, for flow benchmarks, rewrites the source
 * port and address from a per-CPU sequence), then tail-calls the program
 * under test. bench_floor is the XDP_TX floor; restore -> floor measures the
 * harness itself so its cost can be subtracted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define FRAME_MAX 256

enum bench_mode {
	BENCH_FIXED = 0,  /* the same flow every run */
	BENCH_NEW = 1,    /* a new source port every run */
	BENCH_ROTATE = 2, /* cycle through `flows` established flows */
};

struct bench_frame {
	__u32 len;
	__u32 mode;
	__u32 flows;
	__u16 sport_off; /* offset of the TCP/UDP source port */
	__u16 src_off;   /* offset of the last two bytes of the source address */
	__u8 data[FRAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_target SEC(".maps");

SEC("xdp")
int bench_floor(struct xdp_md *ctx)
{
	return XDP_TX;
}

SEC("xdp")
int bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_frame *f = bpf_map_lookup_elem(&bench_frame, &zero);

	if (!f || f->len > FRAME_MAX)
		return XDP_ABORTED;
	int cur = (int)bpf_xdp_get_buff_len(ctx);
	int delta = cur - (int)f->len;
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return XDP_ABORTED;

	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
#pragma unroll
	for (int i = 0; i < FRAME_MAX / 8; i++) {
		if (data + i * 8 + 8 > end)
			break;
		((__u64 *)data)[i] = ((__u64 *)f->data)[i];
	}
	__u32 tail = f->len & ~7u;
#pragma unroll
	for (int i = 0; i < 7; i++) {
		__u32 off = tail + i;
		if (off >= FRAME_MAX || data + off + 1 > end)
			break;
		data[off] = f->data[off];
	}

	if (f->mode != BENCH_FIXED) {
		__u32 *seq = bpf_map_lookup_elem(&bench_seq, &zero);
		if (!seq)
			return XDP_ABORTED;
		__u32 n = ++*seq;
		if (f->mode == BENCH_ROTATE && f->flows)
			n %= f->flows;
		__u32 so = f->sport_off, ao = f->src_off;
		if (so > FRAME_MAX - 2 || ao > FRAME_MAX - 2)
			return XDP_ABORTED;
		if (data + so + 2 > end || data + ao + 2 > end)
			return XDP_ABORTED;
		/* 2^16 ports x 2^16 addresses: up to 4G distinct flows. */
		*(__u16 *)(data + so) = __builtin_bswap16((__u16)n);
		*(__u16 *)(data + ao) = __builtin_bswap16((__u16)(n >> 16));
	}
	bpf_tail_call(ctx, &bench_target, 0);
	return XDP_ABORTED;
}
