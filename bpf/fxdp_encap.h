/* fxdp_encap.h — what both encapsulations (IPv4 on flannel.<VNI>, IPv6 on flannel-v6.<VNI>) frame
 * alike, as the kernel vxlan device does: the outer ECN bits and the UDP source port. */
#ifndef FXDP_ENCAP_H
#define FXDP_ENCAP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fxdp_consts.h"

/* The kernel's ip_tunnel_ecn_encap with the device TOS at 0 (flannel never sets one): the outer
 * header carries the inner ECN bits, except that CE becomes ECT(0). */
static __always_inline __u8 fxdp_outer_tos(__u8 inner_tos)
{
	__u8 ecn = inner_tos & 0x3;
	return ecn == 0x3 ? 0x2 : ecn;
}

/* vxlan's udp_flow_src_port: the flow hash, upper bits folded in, scaled into the port range. */
static __always_inline __u16 fxdp_src_port(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);
	if (!hash)
		return FXDP_SRC_PORT_MIN;
	hash ^= hash << 16;
	return (__u16)((((__u64)hash * (FXDP_SRC_PORT_MAX - FXDP_SRC_PORT_MIN)) >> 32) + FXDP_SRC_PORT_MIN);
}

enum fxdp_encap_result {
	FXDP_ENCAP_DONE = 0,    /* encapsulated: redirect to fib->ifindex */
	FXDP_ENCAP_REFUSED = 1, /* bpf_skb_adjust_room refused: the packet is unchanged */
	FXDP_ENCAP_BROKEN = 2,  /* the room was made but the headers could not be written: drop */
};

#endif
