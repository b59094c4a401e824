/* flanneld_xdp.bpf.c — flannel's VXLAN data path in eBPF: three entry points, one object.
 *
 * fxdp_encap       TC egress on flannel.<VNI> (a real kernel vxlan device configured as flanneld
 *                  configures it). IPv4 to a peer's pod subnet is wrapped in outer Ethernet/IPv4/UDP/
 *                  VXLAN/inner Ethernet exactly as that device would frame it and redirected to the
 *                  underlay; anything else goes on to the kernel device, which carries it as stock
 *                  flannel would. Detaching the program hands all traffic back to the kernel.
 * fxdp_decap_xdp   XDP on the underlay: VXLAN from a known peer node, our VNI, our VtepMAC is stripped
 *                  and passed up as the inner packet (Ethernet header re-addressed to the underlay).
 * fxdp_decap_check TC ingress on the underlay where XDP would cost more than it saves (veth): the same
 *                  classification and counters, but valid VXLAN is left to the kernel vxlan device.
 *
 * Verdicts (every row bumps exactly one counter, named after FXDP_C_):
 *
 * | program            | packet                                                   | verdict          | counter                 |
 * |--------------------|----------------------------------------------------------|------------------|-------------------------|
 * | encap              | config map not filled / not enabled                      | TC_ACT_OK        | ENCAP_PASS_DISABLED     |
 * | encap              | skb protocol not IPv4                                    | TC_ACT_OK        | ENCAP_PASS_NOT_IPV4     |
 * | encap              | IPv4 header truncated, version != 4, IHL < 5             | TC_ACT_SHOT      | ENCAP_DROP_MALFORMED    |
 * | encap              | destination in no peer subnet                            | TC_ACT_OK        | ENCAP_PASS_NO_PEER      |
 * | encap              | non-GSO > overlay MTU, or > 65535 once encapsulated      | TC_ACT_OK        | ENCAP_PASS_TOO_BIG      |
 * | encap              | fib lookup fails (no route, forwarding off, ...)         | TC_ACT_OK        | ENCAP_PASS_FIB          |
 * | encap              | adjust_room refuses (already encapsulated skb, no memory)| TC_ACT_OK        | ENCAP_PASS_ADJUST       |
 * | encap              | store_bytes fails after the room was made                | TC_ACT_SHOT      | ENCAP_DROP_ADJUST       |
 * | encap              | encapsulated, neighbour known                            | TC_ACT_REDIRECT  | ENCAP_OK                |
 * | encap              | peer node's MAC not resolved yet (fib NO_NEIGH)          | TC_ACT_OK        | ENCAP_PASS_NO_NEIGH     |
 * | decap (both)       | config map not filled / not enabled                      | PASS / OK        | DECAP_PASS_DISABLED     |
 * | decap (both)       | frame shorter than an Ethernet header                    | PASS / OK        | DECAP_PASS_SHORT        |
 * | decap (both)       | 802.1Q / 802.1ad tag (TC: also an offloaded tag)         | PASS / OK        | DECAP_PASS_VLAN         |
 * | decap (both)       | Ethernet type not IPv4                                   | PASS / OK        | DECAP_PASS_NOT_IPV4     |
 * | decap (both)       | IPv4 truncated, version != 4, IHL < 5, tot_len < IHL     | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | not UDP                                                  | PASS / OK        | DECAP_PASS_NOT_VXLAN    |
 * | decap (both)       | non-first fragment (no UDP header to classify)           | PASS / OK        | DECAP_PASS_FRAGMENT     |
 * | decap (both)       | UDP header truncated                                     | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | UDP to another port                                      | PASS / OK        | DECAP_PASS_NOT_VXLAN    |
 * | decap (both)       | to our port but another destination IP (transit)         | PASS / OK        | DECAP_PASS_OTHER_HOST   |
 * | decap (both)       | to our port, first fragment (MF)                         | DROP / SHOT      | DECAP_DROP_FRAGMENT     |
 * | decap (both)       | to our port, outer IPv4 options                          | DROP / SHOT      | DECAP_DROP_IP_OPTIONS   |
 * | decap (both)       | to our port, source not in fxdp_nodes                    | DROP / SHOT      | DECAP_DROP_NOT_PEER     |
 * | decap (both)       | VXLAN header truncated                                   | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | flags != I only, reserved bits, or VNI != ours           | DROP / SHOT      | DECAP_DROP_BAD_VNI      |
 * | decap (both)       | inner Ethernet header truncated                          | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | inner Ethernet destination != our VtepMAC                | DROP / SHOT      | DECAP_DROP_INNER_NOT_OURS |
 * | decap (both)       | inner Ethernet type not IPv4                             | DROP / SHOT      | DECAP_DROP_INNER_NOT_IPV4 |
 * | decap (both)       | inner IPv4 header truncated (< 20 bytes)                 | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap_xdp          | valid; bpf_xdp_adjust_head fails                         | XDP_DROP         | DECAP_DROP_ADJUST       |
 * | decap_xdp          | valid: 50 bytes stripped, Ethernet dst = underlay MAC    | XDP_PASS         | DECAP_OK                |
 * | decap_check        | valid: left to the kernel vxlan device                   | TC_ACT_OK        | DECAP_CHECK_OK          |
 *
 * Why these verdicts: anything that is not VXLAN to our port passes untouched (the underlay carries
 * other traffic); a VXLAN datagram is accepted only when every header the kernel vxlan device would
 * check is right AND it comes from a peer node (stock flannel accepts VXLAN from anyone: #1757).
 * Outer fragments to our port are dropped because their reassembly would reach the kernel vxlan
 * socket without the source check (flannel's overlay MTU means peers never fragment). Malformed IPv4
 * is dropped where the kernel's ip_rcv would drop it anyway. Non-first fragments pass: without the
 * first fragment (dropped above when it is ours) they never reassemble.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fxdp_shared.h"
#include "fxdp_consts.h"
#include "fxdp_maps.h"
#include "fxdp_counters.h"
#include "fxdp_parsing.h"
#include "fxdp_csum.h"

/* FXDP_PROGRAM_VARIANT: a build-time number compiled into the code (not the data) of every program,
 * so a build with another variant has other program tags over exactly the same maps. Normal builds
 * leave it at 0 and get no extra instruction. It is how a changed program is staged in the upgrade
 * tests (`--bpf-object`, docs/OPERATIONS.md), and how an operator can tell two local builds apart
 * in `bpftool prog show` (the tag). The instruction only sets r0, which the next call overwrites. */
#ifndef FXDP_PROGRAM_VARIANT
#define FXDP_PROGRAM_VARIANT 0
#endif
#if FXDP_PROGRAM_VARIANT
#define FXDP_VARIANT_MARK() asm volatile("r0 = %[variant]" ::[variant] "i"(FXDP_PROGRAM_VARIANT) : "r0")
#else
#define FXDP_VARIANT_MARK() do { } while (0)
#endif

/* Every program starts here, so the variant mark (above) lands in each of them. */
static __always_inline const struct fxdp_config *fxdp_config_get(void)
{
	FXDP_VARIANT_MARK();
	__u32 zero = 0;
	const struct fxdp_config *cfg = bpf_map_lookup_elem(&fxdp_config_v1, &zero);
	if (!cfg || !(cfg->flags & FXDP_CFG_F_ENABLED))
		return NULL;
	return cfg;
}

/* ---------------------------------------------------------------- encap (TC egress, overlay) -- */

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

SEC("tc")
int fxdp_encap(struct __sk_buff *skb)
{
	__u64 len = skb->len;
	const struct fxdp_config *cfg = fxdp_config_get();
	if (!cfg)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_DISABLED, len, TC_ACT_OK);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NOT_IPV4, len, TC_ACT_OK);

	/* Headers of forwarded packets can sit in paged data: make the Ethernet and IPv4 headers
	 * (options included) linear, and nothing more. */
	fxdp_linearize_ipv4_headers(skb, 0);
	struct fxdp_cursor cur = { .pos = (void *)(long)skb->data, .end = (void *)(long)skb->data_end };
	struct iphdr *inner_ip = NULL;
	if (!fxdp_parse_eth(&cur) || fxdp_parse_ipv4(&cur, &inner_ip) != FXDP_IPV4_OK || !inner_ip)
		return fxdp_count_verdict(FXDP_C_ENCAP_DROP_MALFORMED, len, TC_ACT_SHOT);

	struct fxdp_peer_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.subnet, &inner_ip->daddr, 4);
	const struct fxdp_peer_value *peer = bpf_map_lookup_elem(&fxdp_peers_v1, &key);
	if (!peer)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_PEER, len, TC_ACT_OK);
	struct fxdp_node_key peer_node = {};
	__builtin_memcpy(peer_node.node_ip, peer->node_ip, 4);

	/* The outer IPv4 total length is 16 bits; and a non-GSO packet over the overlay MTU would need
	 * outer fragmentation, which the kernel device does the flannel way. */
	__u32 outer_ip_len = len - ETH_HLEN + FXDP_VXLAN_OVERHEAD;
	if (outer_ip_len > 0xffff ||
	    (skb->gso_size == 0 && cfg->overlay_mtu != 0 && len - ETH_HLEN > cfg->overlay_mtu))
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_TOO_BIG, len, TC_ACT_OK);

	/* Route to the peer node before touching the packet, so that on failure the untouched packet
	 * can go on to the kernel vxlan device, which routes (or drops) it as stock flannel would.
	 * The helper also refuses when forwarding is off on the underlay (FWD_DISABLED).
	 * tot_len 0: with skb->len every GSO packet would come back FRAG_NEEDED (PITFALLS). */
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	__builtin_memcpy(&fib.ipv4_src, cfg->node_ip, 4);
	__builtin_memcpy(&fib.ipv4_dst, peer->node_ip, 4);
	fib.ifindex = cfg->underlay_ifindex;
	fib.tot_len = 0;
	long fib_rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		/* The kernel device resolves the neighbour (queueing the packet meanwhile) and the next
		 * packets find it. bpf_redirect_neigh from here lost the packet that triggered the
		 * resolution on veth underlays: a first ping after every ARP expiry went missing. */
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_NEIGH, len, TC_ACT_OK);
	if (fib_rc != BPF_FIB_LKUP_RET_SUCCESS)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_FIB, len, TC_ACT_OK);

	struct fxdp_encap_headers h = {};
	__builtin_memcpy(h.outer_eth.h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(h.outer_eth.h_source, fib.smac, ETH_ALEN);
	h.outer_eth.h_proto = bpf_htons(ETH_P_IP);
	/* Built aside and copied in: the header sits 2-byte aligned inside the packed block. */
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.tos = fxdp_outer_tos(inner_ip->tos);
	ip.tot_len = bpf_htons(outer_ip_len);
	ip.id = (__u16)bpf_get_prandom_u32();
	ip.frag_off = 0; /* no DF, like the kernel vxlan device flannel creates */
	ip.ttl = FXDP_OUTER_TTL;
	ip.protocol = IPPROTO_UDP;
	__builtin_memcpy(&ip.saddr, cfg->node_ip, 4);
	__builtin_memcpy(&ip.daddr, peer->node_ip, 4);
	ip.check = fxdp_ipv4_header_csum(&ip);
	h.outer_ip = ip;
	h.udp.source = bpf_htons(fxdp_src_port(skb));
	h.udp.dest = bpf_htons(cfg->udp_port);
	h.udp.len = bpf_htons(outer_ip_len - sizeof(struct iphdr));
	/* UDP checksum 0: legal for IPv4 (RFC 768, RFC 7348 says SHOULD), accepted by every Linux
	 * receiver, and the only value that survives GSO segmentation without a checksum offload. */
	h.udp.check = 0;
	h.vxlan.flags = bpf_htonl(FXDP_VXLAN_FLAGS_I);
	h.vxlan.vni = bpf_htonl(cfg->vni << 8);
	__builtin_memcpy(h.inner_eth.h_dest, peer->vtep_mac, ETH_ALEN);
	__builtin_memcpy(h.inner_eth.h_source, cfg->vtep_mac, ETH_ALEN);
	h.inner_eth.h_proto = bpf_htons(ETH_P_IP);

	/* Insert 50 bytes after the Ethernet header, declaring the encapsulation so that GSO segments
	 * it as a UDP tunnel (and FIXED_GSO keeps gso_size: otherwise it shrinks by 50 per packet). */
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		      BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	/* It refuses before changing anything (e.g. -EALREADY for an skb that already carries a
	 * tunnel, like a pod's own VXLAN): the kernel device can still encapsulate that one. */
	if (bpf_skb_adjust_room(skb, FXDP_VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, flags))
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_ADJUST, len, TC_ACT_OK);
	/* inner_ip and cur are stale from here on: the helpers below take offsets, not pointers. */
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0))
		return fxdp_count_verdict(FXDP_C_ENCAP_DROP_ADJUST, len, TC_ACT_SHOT);

	fxdp_count_peer(&peer_node, len, 0);
	return fxdp_count_verdict(FXDP_C_ENCAP_OK, len, bpf_redirect(fib.ifindex, 0));
}

/* ------------------------------------------------------------ decap (underlay, XDP or TC check) -- */

/* Classifies one frame for both decap programs. FXDP_C_DECAP_OK means "valid VXLAN for us"; each
 * entry point maps it to its own action. The table at the top lists the order of the checks. On
 * FXDP_C_DECAP_OK, `node` holds the sending peer node's IP (for the per-peer counters). */
static __always_inline __u32 fxdp_classify_decap(void *data, void *data_end, const struct fxdp_config *cfg,
						  struct fxdp_node_key *node)
{
	struct fxdp_cursor cur = { .pos = data, .end = data_end };

	struct ethhdr *eth = fxdp_parse_eth(&cur);
	if (!eth)
		return FXDP_C_DECAP_PASS_SHORT;
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return FXDP_C_DECAP_PASS_VLAN;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return FXDP_C_DECAP_PASS_NOT_IPV4;

	struct iphdr *ip = NULL;
	if (fxdp_parse_ipv4(&cur, &ip) != FXDP_IPV4_OK || !ip)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (ip->protocol != IPPROTO_UDP)
		return FXDP_C_DECAP_PASS_NOT_VXLAN;
	if (ip->frag_off & bpf_htons(FXDP_IP_OFFSET))
		return FXDP_C_DECAP_PASS_FRAGMENT;

	struct udphdr *udp = fxdp_parse_udp(&cur);
	if (!udp)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (udp->dest != bpf_htons(cfg->udp_port))
		return FXDP_C_DECAP_PASS_NOT_VXLAN;

	/* VXLAN for another host that we merely route: the kernel forwards it as before. */
	if (!fxdp_ip_equal(&ip->daddr, cfg->node_ip))
		return FXDP_C_DECAP_PASS_OTHER_HOST;

	/* From here on the datagram is addressed to the VXLAN socket: anything wrong is dropped. */
	if (ip->frag_off & bpf_htons(FXDP_IP_MF))
		return FXDP_C_DECAP_DROP_FRAGMENT;
	if (ip->ihl != 5)
		return FXDP_C_DECAP_DROP_IP_OPTIONS;
	__builtin_memcpy(node->node_ip, &ip->saddr, 4);
	if (!bpf_map_lookup_elem(&fxdp_nodes_v1, node))
		return FXDP_C_DECAP_DROP_NOT_PEER;

	struct fxdp_vxlanhdr *vx = fxdp_parse_vxlan(&cur);
	if (!vx)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (vx->flags != bpf_htonl(FXDP_VXLAN_FLAGS_I) || vx->vni != bpf_htonl(cfg->vni << 8))
		return FXDP_C_DECAP_DROP_BAD_VNI;

	struct ethhdr *inner_eth = fxdp_parse_eth(&cur);
	if (!inner_eth)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (!fxdp_mac_equal(inner_eth->h_dest, cfg->vtep_mac))
		return FXDP_C_DECAP_DROP_INNER_NOT_OURS;
	if (inner_eth->h_proto != bpf_htons(ETH_P_IP))
		return FXDP_C_DECAP_DROP_INNER_NOT_IPV4;
	if (cur.pos + sizeof(struct iphdr) > cur.end)
		return FXDP_C_DECAP_DROP_MALFORMED;
	return FXDP_C_DECAP_OK;
}

/* Which decap codes are drops, as a bit mask over codes 16..47 (a switch here would compile to a
 * jump table in .rodata: an extra map per load, which would defeat the "same program" check on
 * restart). */
#define FXDP_DECAP_BIT(code) (1u << ((code) - FXDP_C_DECAP_OK))
#define FXDP_DECAP_DROP_MASK                                                                             \
	(FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_NOT_PEER) | FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_BAD_VNI) |         \
	 FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_MALFORMED) | FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_FRAGMENT) |       \
	 FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_IP_OPTIONS) | FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_INNER_NOT_OURS) | \
	 FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_ADJUST) | FXDP_DECAP_BIT(FXDP_C_DECAP_DROP_INNER_NOT_IPV4))

static __always_inline int fxdp_decap_is_drop(__u32 code)
{
	if (code < FXDP_C_DECAP_OK || code >= FXDP_C_DECAP_OK + 32)
		return 0;
	return (FXDP_DECAP_DROP_MASK >> (code - FXDP_C_DECAP_OK)) & 1;
}

SEC("xdp")
int fxdp_decap_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	const struct fxdp_config *cfg = fxdp_config_get();
	if (!cfg)
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_DISABLED, len, XDP_PASS);

	struct fxdp_node_key node = {};
	__u32 code = fxdp_classify_decap(data, data_end, cfg, &node);
	if (code != FXDP_C_DECAP_OK)
		return fxdp_count_verdict(code, len, fxdp_decap_is_drop(code) ? XDP_DROP : XDP_PASS);

	if (bpf_xdp_adjust_head(ctx, FXDP_VXLAN_OVERHEAD))
		return fxdp_count_verdict(FXDP_C_DECAP_DROP_ADJUST, len, XDP_DROP);
	/* Re-derive: adjust_head invalidated every packet pointer. The inner Ethernet header is now
	 * first; the stack drops frames not addressed to the interface, so re-address it (PITFALLS). */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return fxdp_count_verdict(FXDP_C_DECAP_DROP_ADJUST, len, XDP_DROP);
	__builtin_memcpy(eth->h_dest, cfg->underlay_mac, ETH_ALEN);
	fxdp_count_peer(&node, len, 1);
	return fxdp_count_verdict(FXDP_C_DECAP_OK, len, XDP_PASS);
}

SEC("tc")
int fxdp_decap_check(struct __sk_buff *skb)
{
	__u64 len = skb->len;
	const struct fxdp_config *cfg = fxdp_config_get();
	if (!cfg)
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_DISABLED, len, TC_ACT_OK);
	if (skb->vlan_present)
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_VLAN, len, TC_ACT_OK);

	/* Make the headers the classification reads linear, and nothing more. */
	fxdp_linearize_ipv4_headers(skb, FXDP_DECAP_AFTER_OUTER_IP);
	struct fxdp_node_key node = {};
	__u32 code = fxdp_classify_decap((void *)(long)skb->data, (void *)(long)skb->data_end, cfg, &node);
	if (code == FXDP_C_DECAP_OK) {
		fxdp_count_peer(&node, len, 1);
		return fxdp_count_verdict(FXDP_C_DECAP_CHECK_OK, len, TC_ACT_OK);
	}
	return fxdp_count_verdict(code, len, fxdp_decap_is_drop(code) ? TC_ACT_SHOT : TC_ACT_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
