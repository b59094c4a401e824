/* fxdp_conntrack.h — asking the kernel's connection tracking whether a flow may skip the stack.
 *
 * The fast path hands an established flow's packets past routing, netfilter and the bridge. That is
 * safe only for a flow netfilter already judged and that needs no translation, so a packet qualifies
 * when conntrack holds an entry for its flow that is CONFIRMED (its first packet passed every hook:
 * a FORWARD drop leaves none) and has SEEN_REPLY (the answer got through too), with no NAT in either
 * direction (a reply to a kube-proxy DNAT must be un-NATed by the stack) and not DYING. TCP also
 * needs conntrack's state ESTABLISHED (the whole handshake went through the stack), no SYN in the
 * packet (a new connection over an old tuple is conntrack's to sort out) and liberal window tracking
 * in the namespace (FXDP_CFG_F_CT_TCP_LIBERAL): conntrack does not see the sequence numbers of what
 * skipped it, and without that setting it would call the flow's next packet through the stack
 * INVALID, which common rule sets drop. Everything else (the first packets of every flow, ICMP,
 * NATed flows, a namespace where nothing enables conntrack) takes the kernel path, which also creates
 * and confirms the entries.
 *
 * What conntrack would have done with the packets it does not see, done here: an entry close to
 * expiry is refreshed (conntrack refreshes on every packet; UDP entries live 30 s to 120 s), and a
 * FIN or RST shortens it to a TIME_WAIT-like timeout, since conntrack does not see the close.
 *
 * Kernel types are declared with preserve_access_index (CO-RE against the running kernel's BTF);
 * the kfuncs are net/netfilter/nf_conntrack_bpf.c's.
 */
#ifndef FXDP_CONNTRACK_H
#define FXDP_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

struct ip_ct_tcp___fxdp {
	__u8 state;
} __attribute__((preserve_access_index));

union nf_conntrack_proto___fxdp {
	struct ip_ct_tcp___fxdp tcp;
} __attribute__((preserve_access_index));

struct nf_conn {
	__u32 timeout;
	unsigned long status;
	union nf_conntrack_proto___fxdp proto;
} __attribute__((preserve_access_index));

struct bpf_ct_opts___fxdp {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts___fxdp *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;
extern int bpf_ct_change_timeout(struct nf_conn *ct, __u32 timeout) __ksym;

/* The kernel's tick rate, for reading nf_conn.timeout (jiffies). Unknown (no kernel config to read):
 * 0, and the refresh below then assumes 1000, which refreshes early rather than late. */
extern unsigned int CONFIG_HZ __kconfig __weak;

/* include/uapi/linux/netfilter/nf_conntrack_common.h */
#define FXDP_IPS_SEEN_REPLY (1UL << 1)
#define FXDP_IPS_CONFIRMED (1UL << 3)
#define FXDP_IPS_SRC_NAT (1UL << 4)
#define FXDP_IPS_DST_NAT (1UL << 5)
#define FXDP_IPS_DYING (1UL << 9)
/* include/uapi/linux/netfilter/nf_conntrack_tcp.h */
#define FXDP_TCP_CONNTRACK_ESTABLISHED 3

#define FXDP_TCP_FLAG_FIN 0x01
#define FXDP_TCP_FLAG_SYN 0x02
#define FXDP_TCP_FLAG_RST 0x04

/* Refresh an entry whose remaining life is under this, to FXDP_CT_REFRESH_MS (conntrack's UDP stream
 * timeout). After a close seen only here, keep the entry FXDP_CT_CLOSED_MS, like TIME_WAIT. */
#define FXDP_CT_REFRESH_BELOW_S 30
#define FXDP_CT_REFRESH_MS 120000
#define FXDP_CT_CLOSED_MS 120000

/* The flow facts the check needs: the packet's addresses and ports, in packet order. */
struct fxdp_flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 protocol;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 tcp_flags; /* the TCP flags byte, 0 for UDP */
};

/* Whether `flow` may skip the stack in this network namespace (see the file comment). */
static __always_inline int fxdp_flow_established(struct __sk_buff *skb, const struct fxdp_flow *flow, int tcp_liberal)
{
	if (flow->protocol != IPPROTO_TCP && flow->protocol != IPPROTO_UDP)
		return 0;
	if (flow->protocol == IPPROTO_TCP && (!tcp_liberal || (flow->tcp_flags & FXDP_TCP_FLAG_SYN)))
		return 0;
	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = flow->saddr;
	tuple.ipv4.daddr = flow->daddr;
	tuple.ipv4.sport = flow->sport;
	tuple.ipv4.dport = flow->dport;
	struct bpf_ct_opts___fxdp opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = flow->protocol };
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &tuple, sizeof(tuple.ipv4), &opts, sizeof(opts));
	if (!ct)
		return 0;
	unsigned long status = ct->status;
	int ok = (status & (FXDP_IPS_CONFIRMED | FXDP_IPS_SEEN_REPLY)) == (FXDP_IPS_CONFIRMED | FXDP_IPS_SEEN_REPLY) &&
		 !(status & (FXDP_IPS_SRC_NAT | FXDP_IPS_DST_NAT | FXDP_IPS_DYING));
	if (ok && flow->protocol == IPPROTO_TCP)
		ok = ct->proto.tcp.state == FXDP_TCP_CONNTRACK_ESTABLISHED;
	if (ok) {
		if (flow->tcp_flags & (FXDP_TCP_FLAG_FIN | FXDP_TCP_FLAG_RST)) {
			bpf_ct_change_timeout(ct, FXDP_CT_CLOSED_MS);
		} else {
			__u32 hz = CONFIG_HZ ? CONFIG_HZ : 1000;
			__s32 left = (__s32)(ct->timeout - (__u32)bpf_jiffies64());
			if (left < (__s32)(FXDP_CT_REFRESH_BELOW_S * hz))
				bpf_ct_change_timeout(ct, FXDP_CT_REFRESH_MS);
		}
	}
	bpf_ct_release(ct);
	return ok;
}

#endif
