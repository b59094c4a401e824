/* fxdp_netfilter.h — what a BPF netfilter program (BPF_PROG_TYPE_NETFILTER, kernel 6.4+) needs,
 * without a generated vmlinux.h: the few kernel structs it reads, declared with
 * preserve_access_index so that libbpf relocates every field access against the running kernel's
 * BTF (CO-RE), and the kfuncs that read the packet (bpf_dynptr_from_skb, bpf_dynptr_slice).
 *
 * Why netfilter at all: LOCAL_IN is the one hook every locally delivered datagram passes — to any
 * local address, from any interface, unicast or broadcast, after reassembly — so it is the door of
 * the kernel vxlan socket, which listens on every address. FORWARD sees what pods send through the
 * node before masquerade rewrites its source.
 */
#ifndef FXDP_NETFILTER_H
#define FXDP_NETFILTER_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Verdicts (include/uapi/linux/netfilter.h) and hooks; the Swift loader attaches with the same
 * numbers (BPFLoader.NetfilterHook). */
#define FXDP_NF_DROP 0
#define FXDP_NF_ACCEPT 1

struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

struct nf_hook_state {
	__u8 hook;
	__u8 pf;
	struct net_device *in;
	struct net_device *out;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned int len;
} __attribute__((preserve_access_index));

/* The program's context (include/net/netfilter/nf_bpf_link.h). */
struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __attribute__((preserve_access_index));

/* kfuncs (kernel/bpf/helpers.c, net/core/filter.c): a dynptr over the skb whose offset 0 is the
 * network header at these hooks, and a bounds-checked view of `len` bytes at `offset` (a pointer
 * into the packet, or into `buffer` when the bytes are not linear; NULL past the end). */
extern int bpf_dynptr_from_skb(struct __sk_buff *skb, __u64 flags, struct bpf_dynptr *ptr) __ksym;
extern void *bpf_dynptr_slice(const struct bpf_dynptr *ptr, __u32 offset, void *buffer, __u32 buffer__szk) __ksym;

#endif
