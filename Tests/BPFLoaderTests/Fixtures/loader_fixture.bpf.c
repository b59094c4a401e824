/* loader_fixture.bpf.c — test-only object for BPFLoaderTests: one XDP program steered by an LPM
 * trie, two TC programs with different verdicts, a hash map whose value has C trailing padding,
 * and a per-CPU counter array. Nothing here is part of the data path. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct fx_lpm_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* destination prefix → XDP verdict to return (1 drop, 2 pass, 3 tx) */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 64);
	__type(key, struct fx_lpm_key);
	__type(value, __u32);
} fx_lpm SEC(".maps");

/* sizeof 16 in C, 12 + 4 bytes of trailing padding in Swift terms: exercises size vs stride. */
struct fx_value {
	__u64 a;
	__u32 b;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct fx_value);
} fx_hash SEC(".maps");

/* index = verdict or TC program number → how many runs ended there */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} fx_counts SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&fx_counts, &index);
	if (c)
		*c += 1;
}

SEC("xdp")
int xdp_fixture(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_ABORTED;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		count(XDP_PASS);
		return XDP_PASS;
	}
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_ABORTED;
	struct fx_lpm_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &ip->daddr, 4);
	__u32 *verdict = bpf_map_lookup_elem(&fx_lpm, &key);
	__u32 action = verdict ? *verdict : XDP_PASS;
	if (action == XDP_TX) {
		/* Bounce: swap source and destination MAC. */
		__u8 tmp[ETH_ALEN];
		__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	}
	if (action > XDP_REDIRECT)
		action = XDP_ABORTED;
	count(action);
	return action;
}

/* A second XDP program (passes everything) to replace the first with. */
SEC("xdp")
int xdp_other(struct xdp_md *ctx)
{
	count(7);
	return XDP_PASS;
}

/* TC: marks the packet (destination MAC's last byte := 0xAA) and lets it go. */
SEC("tc")
int tc_mark(struct __sk_buff *skb)
{
	__u8 mark = 0xAA;
	bpf_skb_store_bytes(skb, 5, &mark, 1, 0);
	count(5);
	return TC_ACT_OK;
}

/* TC: drops everything. */
SEC("tc")
int tc_drop(struct __sk_buff *skb)
{
	count(6);
	return TC_ACT_SHOT;
}

/* Read-only config the loader fills before load (libbpf's ".rodata" map). */
const volatile __u32 fx_config_verdict = XDP_PASS;

/* XDP: returns the configured verdict. */
SEC("xdp")
int xdp_config(struct xdp_md *ctx)
{
	return fx_config_verdict;
}
