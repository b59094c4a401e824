/* fxdp_consts.h — wire constants and the on-wire header layouts the programs write.
 *
 * The values are the ones a stock flannel node's kernel vxlan device uses (checked against a capture
 * from a `flannel.1` configured as flanneld configures it; see docs/FLANNEL-COMPAT.md): no DF bit, TTL 64
 * (the kernel's ip_default_ttl, because flannel leaves the device TTL at "auto"), TOS 0 with the inner
 * ECN bits copied, UDP source port from the flow hash in the local port range 32768..60999.
 */
#ifndef FXDP_CONSTS_H
#define FXDP_CONSTS_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>

#ifndef AF_INET
#define AF_INET 2
#endif

#define FXDP_OUTER_TTL 64
#define FXDP_SRC_PORT_MIN 32768 /* net.ipv4.ip_local_port_range defaults, as vxlan's udp_flow_src_port */
#define FXDP_SRC_PORT_MAX 60999
#define FXDP_VXLAN_FLAGS_I 0x08000000 /* first 32-bit word of the VXLAN header: only the I flag */
#define FXDP_IP_MF 0x2000
#define FXDP_IP_OFFSET 0x1fff

struct fxdp_vxlanhdr {
	__be32 flags;   /* 0x08 then 24 reserved bits */
	__be32 vni;     /* VNI << 8, low 8 bits reserved */
};

/* Everything the encap writes in front of the inner IPv4 packet, in one store. The original
 * Ethernet header's 14 bytes become outer_eth; bpf_skb_adjust_room inserts the other 50. */
struct fxdp_encap_headers {
	struct ethhdr outer_eth;
	struct iphdr outer_ip;
	struct udphdr udp;
	struct fxdp_vxlanhdr vxlan;
	struct ethhdr inner_eth;
} __attribute__((packed));

_Static_assert(sizeof(struct fxdp_vxlanhdr) == 8, "VXLAN header is 8 bytes");
_Static_assert(sizeof(struct fxdp_encap_headers) == ETH_HLEN + FXDP_VXLAN_OVERHEAD, "encap headers");

/* What the TC decap check reads after the outer IPv4 header (options included): UDP, VXLAN, inner
 * Ethernet, inner IPv4 without options. */
#define FXDP_DECAP_AFTER_OUTER_IP (8 + 8 + ETH_HLEN + 20)

#endif
