/* flanneld_xdp.bpf.c — flannel's VXLAN data path in eBPF: ten entry points, one object.
 *
 * fxdp_encap       TC egress on flannel.<VNI> (a real kernel vxlan device configured as flanneld
 *                  configures it). IPv4 to a peer's pod subnet is wrapped in outer Ethernet/IPv4/UDP/
 *                  VXLAN/inner Ethernet exactly as that device would frame it and redirected to the
 *                  underlay; anything else goes on to the kernel device, which carries it as stock
 *                  flannel would. Detaching the program hands all traffic back to the kernel.
 * fxdp_decap_xdp   XDP on the underlay (decap mode xdp): VXLAN from a peer node, our VNI, our VtepMAC,
 *                  an inner source of that peer is stripped (the outer CE mark copied in) and marked
 *                  in the XDP metadata for fxdp_decap_steer.
 * fxdp_decap_steer TC ingress on the underlay (decap mode xdp): hands each frame fxdp_decap_xdp
 *                  stripped to flannel.<VNI>'s ingress, so that routing, netfilter and rp_filter see
 *                  it arrive on the overlay device, as the kernel's decap delivers it.
 * fxdp_decap_check TC ingress on the underlay (decap mode tc, where XDP would cost more than it saves,
 *                  as on veth): the same classification and counters, but valid VXLAN is left to the
 *                  kernel vxlan device — or, on the fast path, stripped and handed to the pod.
 * fxdp_fast_encap  TC ingress on each pod's veth (the host side): the fast path's way out. A packet
 *                  of an established flow to a peer's pod is encapsulated and sent to the underlay.
 *                  With the fast path, the decap programs hand such a flow's packets from a peer
 *                  straight to the pod (bpf_redirect_peer): both stacks skipped. "The fast path"
 *                  below says what is checked so that nothing the stack would do is missed.
 * fxdp_vxlan_door  netfilter LOCAL_IN of the node's network namespace: the kernel's vxlan socket
 *                  listens on every local address of every interface; this is its one door. Only
 *                  datagrams from a peer node, through the underlay, to the node IP get in.
 * fxdp_pod_guard   netfilter FORWARD: pods are never peers, so a pod's datagram to a VXLAN port outside
 *                  the pod network is dropped before masquerade could give it a node's address.
 * fxdp_encap6      TC egress on flannel-v6.<VNI>, flannel's second device for IPv6 pods over the IPv6
 *                  underlay: fxdp_encap for IPv6 (fxdp_ipv6.h says what IPv6 changes). The decap
 *                  programs serve both families: an IPv6 frame takes their IPv6 branch.
 * fxdp_vxlan_door6 netfilter LOCAL_IN of IPv6: flannel-v6.<VNI>'s socket's one door.
 * fxdp_pod_guard6  netfilter FORWARD of IPv6: fxdp_pod_guard for the IPv6 pod network.
 *
 * Verdicts (every packet a program decides on bumps exactly one counter, named after FXDP_C_; the
 * netfilter programs count only datagrams to our VXLAN port, fxdp_decap_steer only what it steers):
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
 * | decap (both)       | to our port, not to the node IP nor its local PublicIP   | PASS / OK        | DECAP_PASS_OTHER_HOST   |
 * | decap (both)       | to our port, outer IPv4 options                          | DROP / SHOT      | DECAP_DROP_IP_OPTIONS   |
 * | decap (both)       | to our port, outer tot_len beyond the packet             | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | to our port, outer IPv4 header checksum wrong            | DROP / SHOT      | DECAP_DROP_OUTER_CSUM   |
 * | decap (both)       | to our port, source not in fxdp_nodes                    | DROP / SHOT      | DECAP_DROP_NOT_PEER     |
 * | decap (both)       | VXLAN header truncated                                   | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | flags != I only, reserved bits, or VNI != ours           | DROP / SHOT      | DECAP_DROP_BAD_VNI      |
 * | decap (both)       | inner Ethernet header truncated                          | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | inner Ethernet destination != our VtepMAC                | DROP / SHOT      | DECAP_DROP_INNER_NOT_OURS |
 * | decap (both)       | inner Ethernet source == our VtepMAC (a loop)            | DROP / SHOT      | DECAP_DROP_LOOP         |
 * | decap (both)       | inner Ethernet type not IPv4                             | DROP / SHOT      | DECAP_DROP_INNER_NOT_IPV4 |
 * | decap (both)       | inner IPv4 header truncated (< 20 bytes)                 | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | outer CE on a not-ECT inner packet                       | DROP / SHOT      | DECAP_DROP_ECN          |
 * | decap (both)       | inner source neither in the sender's subnets nor its own | DROP / SHOT      | DECAP_DROP_INNER_SOURCE |
 * | decap (both)       | first fragment (MF) lacking any header above             | DROP / SHOT      | DECAP_DROP_FRAGMENT     |
 * | decap (both)       | first fragment (MF), every check above passed            | PASS / OK        | DECAP_FRAGMENT_OK       |
 * | decap_xdp          | valid; bpf_xdp_adjust_head fails                         | XDP_DROP         | DECAP_DROP_ADJUST       |
 * | decap_xdp          | valid; the driver keeps no XDP metadata                  | XDP_PASS         | DECAP_CHECK_OK          |
 * | decap_xdp          | valid: stripped, CE copied in, marked for the steer      | XDP_PASS         | DECAP_OK                |
 * | decap_check        | valid: left to the kernel vxlan device                   | TC_ACT_OK        | DECAP_CHECK_OK          |
 * | decap_steer        | marked by decap_xdp: into flannel.<VNI>'s ingress        | TC_ACT_REDIRECT  | DECAP_STEER_OK          |
 * | decap_steer        | anything else (decap_xdp counted it)                     | TC_ACT_OK        | —                       |
 * | fast_encap         | fast path off / config not enabled                       | TC_ACT_OK        | FAST_ENCAP_PASS_OFF     |
 * | fast_encap         | not IPv4 from a pod in fxdp_local to its bridge's MAC,   | TC_ACT_OK        | FAST_ENCAP_PASS_NOT_POD |
 * |                    | on its port or bridge                                    |                  |                         |
 * | fast_encap         | not to a peer's pod subnet, or a DirectRouting peer's    | TC_ACT_OK        | FAST_ENCAP_PASS_NOT_PEER |
 * | fast_encap         | not TCP/UDP                                              | TC_ACT_OK        | FAST_ENCAP_PASS_CONNTRACK |
 * | fast_encap         | IP options, fragment, TTL <= 1, bad header checksum or   | TC_ACT_OK        | FAST_ENCAP_PASS_LIMITS  |
 * |                    | length, over the overlay MTU, peer node unroutable or    |                  |                         |
 * |                    | its MAC unresolved                                       |                  |                         |
 * | fast_encap         | conntrack does not vouch for the flow (fxdp_conntrack.h) | TC_ACT_OK        | FAST_ENCAP_PASS_CONNTRACK |
 * | fast_encap         | adjust_room refused                                      | TC_ACT_OK        | FAST_ENCAP_PASS_LIMITS  |
 * | fast_encap         | store failed after the room was made                     | TC_ACT_SHOT      | ENCAP_DROP_ADJUST       |
 * | fast_encap         | encapsulated, inner TTL - 1                              | TC_ACT_REDIRECT  | FAST_ENCAP_OK           |
 * | check/steer (fast) | valid VXLAN, fast path on (instead of CHECK_OK/STEER_OK):|                  |                         |
 * |                    | inner not a plain TCP/UDP packet of a flow conntrack     | OK / to overlay  | FAST_DECAP_PASS_CONNTRACK |
 * |                    | vouches for                                              |                  |                         |
 * |                    | inner options, fragment, TTL <= 1, bad checksum, UDP GSO,| OK / to overlay  | FAST_DECAP_PASS_LIMITS  |
 * |                    | source not in the sender's subnets, pod MAC unresolved,  |                  |                         |
 * |                    | over the bridge MTU, adjust_room refused                 |                  |                         |
 * |                    | inner destination not a pod behind one of our bridges    | OK / to overlay  | FAST_DECAP_PASS_NOT_POD |
 * |                    | stripped (check), forwarded: into the pod                | TC_ACT_REDIRECT  | FAST_DECAP_OK           |
 * |                    | store failed after the strip                             | TC_ACT_SHOT      | DECAP_DROP_ADJUST       |
 * | vxlan_door         | UDP to our port from an address not in fxdp_nodes        | NF_DROP          | DOOR_DROP_NOT_PEER      |
 * | vxlan_door         | from a peer, not via the underlay or not to the node IP  | NF_DROP          | DOOR_DROP_WRONG_DOOR    |
 * |                    | (nor to the lease's PublicIP when that is ours too)      |                  |                         |
 * | vxlan_door         | from a peer, via the underlay, to the node IP            | NF_ACCEPT        | DOOR_OK                 |
 * | pod_guard          | UDP to our port, source in the pod network, dest outside | NF_DROP          | GUARD_DROP_POD_VXLAN    |
 * | fast_encap         | IPv6 (the fast path is IPv4-only)                        | TC_ACT_OK        | FAST_ENCAP_PASS_IPV6    |
 *
 * IPv6 (fxdp_ipv6.h), the rows that differ from IPv4's; the rest share the IPv4 codes above:
 *
 * | encap6             | config or config6 not filled / not enabled               | TC_ACT_OK        | ENCAP_PASS_DISABLED     |
 * | encap6             | skb protocol not IPv6                                    | TC_ACT_OK        | ENCAP6_PASS_NOT_IPV6    |
 * | encap6             | IPv6 header truncated, version != 6                      | TC_ACT_SHOT      | ENCAP_DROP_MALFORMED    |
 * | encap6             | no peer / too big (flannel-v6's MTU)                     | TC_ACT_OK        | ENCAP_PASS_NO_PEER / _TOO_BIG |
 * | encap6             | a GSO super-packet (a checksum per segment: the kernel)  | TC_ACT_OK        | ENCAP6_PASS_GSO         |
 * | encap6             | outer UDP checksum not derivable from the headers        | TC_ACT_OK        | ENCAP6_PASS_CSUM        |
 * | encap6             | fib: no neighbour / no route; adjust_room refused        | TC_ACT_OK        | as for IPv4             |
 * | encap6             | encapsulated                                             | TC_ACT_REDIRECT  | ENCAP6_OK               |
 * | decap (both)       | IPv6 while config6 is not filled                         | PASS / OK        | DECAP_PASS_NOT_IPV4     |
 * | decap (both)       | IPv6 truncated, version != 6                             | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | fragment header with an offset                           | PASS / OK        | DECAP_PASS_FRAGMENT     |
 * | decap (both)       | other extension headers before the transport header      | PASS / OK        | DECAP6_PASS_EXT_HEADERS |
 * | decap (both)       | not UDP, another port / not to our IPv6 address          | PASS / OK        | _PASS_NOT_VXLAN / _PASS_OTHER_HOST |
 * | decap (both)       | payload length 0 or beyond the packet                    | DROP / SHOT      | DECAP_DROP_MALFORMED    |
 * | decap (both)       | UDP checksum 0                                           | DROP / SHOT      | DECAP6_DROP_UDP_ZERO_CSUM |
 * | decap (both)       | source not in fxdp_nodes6; VXLAN, inner Ethernet, ECN,   | DROP / SHOT      | as for IPv4             |
 * |                    | inner source as for IPv4                                 |                  |                         |
 * | decap (both)       | inner Ethernet type not IPv6                             | DROP / SHOT      | DECAP6_DROP_INNER_NOT_IPV6 |
 * | decap (both)       | first (or atomic) fragment, every check above passed     | PASS / OK        | DECAP_FRAGMENT_OK       |
 * | decap_xdp          | valid: stripped, CE copied in, marked IPv6 for the steer | XDP_PASS         | DECAP6_OK               |
 * | decap_xdp / check  | valid, no XDP metadata / valid (TC)                      | XDP_PASS / OK    | DECAP6_CHECK_OK         |
 * | decap_steer        | marked IPv6: into flannel-v6.<VNI>'s ingress             | TC_ACT_REDIRECT  | DECAP6_STEER_OK         |
 * | vxlan_door6        | UDP to our port from an address not in fxdp_nodes6       | NF_DROP          | DOOR6_DROP_NOT_PEER     |
 * | vxlan_door6        | from a peer, not via the underlay, not to our IPv6       | NF_DROP          | DOOR6_DROP_WRONG_DOOR   |
 * |                    | address, or behind extension headers; or a chain longer  |                  |                         |
 * |                    | than FXDP_IPV6_MAX_EXT                                   |                  |                         |
 * | vxlan_door6        | from a peer, via the underlay, to our IPv6 address       | NF_ACCEPT        | DOOR6_OK                |
 * | pod_guard6         | UDP to our port, source in the IPv6 pod network, dest    | NF_DROP          | GUARD6_DROP_POD_VXLAN   |
 * |                    | outside                                                  |                  |                         |
 *
 * Why these verdicts: anything that is not VXLAN to our port passes untouched (the underlay carries
 * other traffic); a VXLAN datagram is accepted only when every header the kernel vxlan device would
 * check is right AND it comes from a peer node (stock flannel accepts VXLAN from anyone)
 * AND its inner source belongs to that peer (a compromised node cannot speak for another node's
 * pods). Outer fragments are delivered as stock flannel delivers them, through the kernel's
 * reassembly, because their first fragment is checked here like a whole datagram (overlapping
 * fragments are discarded by the kernel, so the checked headers are the ones reassembled) and the
 * reassembled datagram meets fxdp_vxlan_door. Non-first fragments pass: they never reassemble
 * without a first fragment that passed. Malformed IPv4 is dropped where ip_rcv would drop it anyway.
 *
 * Every drop is also sampled for `flanneld-xdp monitor` while one listens (fxdp_monitor.h): the drop
 * paths call fxdp_drop_skb / fxdp_report_drop_* next to their counter.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fxdp_shared.h"
#include "fxdp_consts.h"
#include "fxdp_maps.h"
#include "fxdp_counters.h"
#include "fxdp_parsing.h"
#include "fxdp_csum.h"
#include "fxdp_netfilter.h"
#include "fxdp_conntrack.h"
#include "fxdp_monitor.h"
#include "fxdp_encap.h"
#include "fxdp_ipv6.h"

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
	const struct fxdp_config *cfg = bpf_map_lookup_elem(&fxdp_config_v2, &zero);
	if (!cfg || !(cfg->flags & FXDP_CFG_F_ENABLED))
		return NULL;
	return cfg;
}

/* ---------------------------------------------------------------- encap (TC egress, overlay) -- */

/* Routes the outer packet to `peer`'s node (bpf_fib_lookup in OUTPUT mode, from the node IP out of
 * the underlay) before anything is changed, so that on failure the untouched packet can still take
 * the kernel path. The helper also refuses when forwarding is off on the underlay (FWD_DISABLED).
 * tot_len 0: with skb->len every GSO packet would come back FRAG_NEEDED (docs/PITFALLS.md). */
static __always_inline long fxdp_route_to_peer(struct __sk_buff *skb, const struct fxdp_config *cfg,
					       const struct fxdp_peer_value *peer, struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET;
	__builtin_memcpy(&fib->ipv4_src, cfg->node_ip, 4);
	__builtin_memcpy(&fib->ipv4_dst, peer->node_ip, 4);
	fib->ifindex = cfg->underlay_ifindex;
	fib->tot_len = 0;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
}

/* The outer IPv4 total length of `len` bytes of Ethernet frame once encapsulated, or 0 when the
 * packet must take the kernel path: over 16 bits, or a non-GSO packet over the overlay MTU (it needs
 * outer fragmentation or an ICMP error, which the kernel device does the flannel way). */
static __always_inline __u32 fxdp_outer_ip_len(struct __sk_buff *skb, const struct fxdp_config *cfg, __u64 len)
{
	__u32 outer_ip_len = len - ETH_HLEN + FXDP_VXLAN_OVERHEAD;
	if (outer_ip_len > 0xffff || (skb->gso_size == 0 && cfg->overlay_mtu != 0 && len - ETH_HLEN > cfg->overlay_mtu))
		return 0;
	return outer_ip_len;
}

/* Wraps the Ethernet frame in `skb` (an IPv4 packet whose TOS is `inner_tos`) for `peer`, exactly as
 * flannel's kernel vxlan device frames it, with the next hop `fib` found. */
static __always_inline enum fxdp_encap_result fxdp_encapsulate(struct __sk_buff *skb, const struct fxdp_config *cfg,
								const struct fxdp_peer_value *peer, __u8 inner_tos,
								__u32 outer_ip_len, const struct bpf_fib_lookup *fib)
{
	struct fxdp_encap_headers h = {};
	__builtin_memcpy(h.outer_eth.h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(h.outer_eth.h_source, fib->smac, ETH_ALEN);
	h.outer_eth.h_proto = bpf_htons(ETH_P_IP);
	/* Built aside and copied in: the header sits 2-byte aligned inside the packed block. */
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.tos = fxdp_outer_tos(inner_tos);
	ip.tot_len = bpf_htons(outer_ip_len);
	ip.id = (__u16)bpf_get_prandom_u32();
	ip.frag_off = 0; /* no DF, like the kernel vxlan device flannel creates */
	ip.ttl = cfg->outer_ttl ? cfg->outer_ttl : FXDP_OUTER_TTL;
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
		return FXDP_ENCAP_REFUSED;
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0))
		return FXDP_ENCAP_BROKEN;
	return FXDP_ENCAP_DONE;
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
		return fxdp_drop_skb(skb, FXDP_C_ENCAP_DROP_MALFORMED, len, TC_ACT_SHOT);

	struct fxdp_peer_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.subnet, &inner_ip->daddr, 4);
	const struct fxdp_peer_value *peer = bpf_map_lookup_elem(&fxdp_peers_v2, &key);
	if (!peer)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_PEER, len, TC_ACT_OK);
	struct fxdp_node_key peer_node = {};
	__builtin_memcpy(peer_node.node_ip, peer->node_ip, 4);

	__u32 outer_ip_len = fxdp_outer_ip_len(skb, cfg, len);
	if (!outer_ip_len)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_TOO_BIG, len, TC_ACT_OK);

	struct bpf_fib_lookup fib = {};
	/* A packet the covering route brought (the peer's kernel state is not programmed yet) carries
	 * our own VtepMAC, the covering gateway's neighbour: the kernel device has no fdb entry to send
	 * it by, so it could not resolve the next hop either. */
	struct ethhdr *eth = (void *)(long)skb->data;
	int covering = (void *)(eth + 1) <= (void *)(long)skb->data_end && fxdp_mac_equal(eth->h_dest, cfg->vtep_mac);
	long fib_rc = fxdp_route_to_peer(skb, cfg, peer, &fib);
	if (fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH && !covering)
		/* The kernel device resolves the neighbour (queueing the packet meanwhile) and the next
		 * packets find it. bpf_redirect_neigh from here lost the packet that triggered the
		 * resolution on veth underlays: a first ping after every ARP expiry went missing. */
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_NEIGH, len, TC_ACT_OK);
	if (fib_rc != BPF_FIB_LKUP_RET_SUCCESS && fib_rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_FIB, len, TC_ACT_OK);

	/* inner_ip and cur are stale once the room is made: only values read before are used. */
	enum fxdp_encap_result done = fxdp_encapsulate(skb, cfg, peer, inner_ip->tos, outer_ip_len, &fib);
	if (done == FXDP_ENCAP_REFUSED)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_ADJUST, len, TC_ACT_OK);
	if (done == FXDP_ENCAP_BROKEN)
		return fxdp_drop_skb(skb, FXDP_C_ENCAP_DROP_ADJUST, len, TC_ACT_SHOT);
	fxdp_count_peer(&peer_node, len, 0);
	if (fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* Only for the covering route (above): the kernel resolves the next hop fib named and
		 * writes the outer Ethernet header. */
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };
		return fxdp_count_verdict(FXDP_C_ENCAP_OK_NEIGH, len, bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0));
	}
	return fxdp_count_verdict(FXDP_C_ENCAP_OK, len, bpf_redirect(fib.ifindex, 0));
}

/* ----------------------------------------------------- IPv6 encap (TC egress, flannel-v6.<VNI>) -- */

SEC("tc")
int fxdp_encap6(struct __sk_buff *skb)
{
	__u64 len = skb->len;
	const struct fxdp_config *cfg = fxdp_config_get();
	const struct fxdp_config6 *cfg6 = cfg ? fxdp_config6_get() : NULL;
	if (!cfg6)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_DISABLED, len, TC_ACT_OK);
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return fxdp_count_verdict(FXDP_C_ENCAP6_PASS_NOT_IPV6, len, TC_ACT_OK);

	fxdp_linearize_ipv6_headers(skb, 0);
	struct fxdp_cursor cur = { .pos = (void *)(long)skb->data, .end = (void *)(long)skb->data_end };
	struct ipv6hdr *ip6 = NULL;
	if (!fxdp_parse_eth(&cur) || !(ip6 = fxdp_parse_ipv6(&cur)))
		return fxdp_drop_skb(skb, FXDP_C_ENCAP_DROP_MALFORMED, len, TC_ACT_SHOT);
	/* A copy: the packet pointers are stale once the room is made. */
	struct ipv6hdr inner = *ip6;

	struct fxdp_peer6_key key = { .prefixlen = 128 };
	__builtin_memcpy(key.subnet, &inner.daddr, 16);
	const struct fxdp_peer6_value *peer = bpf_map_lookup_elem(&fxdp_peers6_v2, &key);
	if (!peer)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_PEER, len, TC_ACT_OK);
	/* UDP length: UDP and VXLAN headers and the whole inner Ethernet frame. */
	__u32 udp_len = len + sizeof(struct udphdr) + sizeof(struct fxdp_vxlanhdr);
	if (udp_len > 0xffff || (skb->gso_size == 0 && cfg6->overlay_mtu != 0 && len - ETH_HLEN > cfg6->overlay_mtu))
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_TOO_BIG, len, TC_ACT_OK);
	if (skb->gso_size)
		return fxdp_count_verdict(FXDP_C_ENCAP6_PASS_GSO, len, TC_ACT_OK);
	if (!fxdp_inner6_checksum_derivable(skb, &inner, len))
		return fxdp_count_verdict(FXDP_C_ENCAP6_PASS_CSUM, len, TC_ACT_OK);

	struct bpf_fib_lookup fib = {};
	long fib_rc = fxdp_route_to_peer6(skb, cfg, cfg6, peer, &fib);
	if (fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_NO_NEIGH, len, TC_ACT_OK);
	if (fib_rc != BPF_FIB_LKUP_RET_SUCCESS)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_FIB, len, TC_ACT_OK);

	enum fxdp_encap_result done = fxdp_encapsulate6(skb, cfg, cfg6, peer, &inner, udp_len, &fib);
	if (done == FXDP_ENCAP_REFUSED)
		return fxdp_count_verdict(FXDP_C_ENCAP_PASS_ADJUST, len, TC_ACT_OK);
	if (done == FXDP_ENCAP_BROKEN)
		return fxdp_drop_skb(skb, FXDP_C_ENCAP_DROP_ADJUST, len, TC_ACT_SHOT);
	/* The peer's address is the first member of its map value: it serves as the key. */
	fxdp_count_peer6((const struct fxdp_node6_key *)peer->node_ip, len, 0);
	return fxdp_count_verdict(FXDP_C_ENCAP6_OK, len, bpf_redirect(fib.ifindex, 0));
}

/* ------------------------------------------------------------ decap (underlay, XDP or TC check) -- */

/* The local addresses VXLAN is accepted at: the --iface address, and the lease's PublicIP when
 * that is another address of this node (peers send to the PublicIP). */
static __always_inline int fxdp_is_vxlan_address(const struct fxdp_config *cfg, const void *address)
{
	if (fxdp_ip_equal(address, cfg->node_ip))
		return 1;
	const __u8 *p = cfg->public_ip;
	return (p[0] | p[1] | p[2] | p[3]) && fxdp_ip_equal(address, p);
}

/* What the classification found beyond its verdict, for the entry points. */
struct fxdp_decap_facts {
	struct fxdp_node_key node; /* the sending peer node (outer source), on FXDP_C_DECAP_OK */
	__u8 outer_tos;            /* for the CE copy */
	__u8 source_in_subnet;     /* the inner source lies in a subnet of the sender (looked up only
	                            * when the inner source check or the fast path needs it) */
};

/* Whether the inner source lies in a subnet fxdp_peers gives to the peer that sent the datagram
 * (its pods, its flannel.<VNI> address): by its node IP, or by the SourceIP its lease publishes. */
static __always_inline int fxdp_inner_source_in_sender_subnet(const struct iphdr *outer, const struct iphdr *inner)
{
	struct fxdp_peer_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.subnet, &inner->saddr, 4);
	const struct fxdp_peer_value *owner = bpf_map_lookup_elem(&fxdp_peers_v2, &key);
	if (!owner)
		return 0;
	return fxdp_ip_equal(&outer->saddr, owner->node_ip) || fxdp_ip_equal(&outer->saddr, owner->source_ip);
}

/* Classifies one frame for both decap programs. FXDP_C_DECAP_OK means "valid VXLAN for us";
 * FXDP_C_DECAP_FRAGMENT_OK the same for a first fragment; each entry point maps them to its own
 * action. The table at the top lists the order of the checks. `packet_len` is the whole packet's
 * length (data_end - data only covers the linear part of an skb). */
static __always_inline __u32 fxdp_classify_decap(void *data, void *data_end, __u64 packet_len,
						  const struct fxdp_config *cfg, struct fxdp_decap_facts *facts)
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

	/* VXLAN to another address: routed on when it is transit, and met by fxdp_vxlan_door when it
	 * is another local address of ours (cni0, flannel.<VNI>, a broadcast). */
	if (!fxdp_is_vxlan_address(cfg, &ip->daddr))
		return FXDP_C_DECAP_PASS_OTHER_HOST;

	/* From here on the datagram is addressed to the VXLAN socket: anything wrong is dropped. A
	 * first fragment (MF) must carry every header checked below; its checks stand for the
	 * reassembled datagram. */
	int first_fragment = (ip->frag_off & bpf_htons(FXDP_IP_MF)) != 0;
	__u32 truncated = first_fragment ? FXDP_C_DECAP_DROP_FRAGMENT : FXDP_C_DECAP_DROP_MALFORMED;
	if (ip->ihl != 5)
		return FXDP_C_DECAP_DROP_IP_OPTIONS;
	if (ETH_HLEN + (__u64)bpf_ntohs(ip->tot_len) > packet_len)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (!fxdp_ipv4_header_csum_ok(ip))
		return FXDP_C_DECAP_DROP_OUTER_CSUM;
	__builtin_memcpy(facts->node.node_ip, &ip->saddr, 4);
	if (!bpf_map_lookup_elem(&fxdp_nodes_v2, &facts->node)) {
		fxdp_note_stranger(&facts->node);
		return FXDP_C_DECAP_DROP_NOT_PEER;
	}

	__u32 headers = fxdp_check_vxlan_inner_eth(&cur, cfg->vni, cfg->vtep_mac, bpf_htons(ETH_P_IP), truncated,
						  FXDP_C_DECAP_DROP_INNER_NOT_IPV4);
	if (headers != FXDP_C_DECAP_OK)
		return headers;
	struct iphdr *inner_ip = cur.pos;
	if ((void *)(inner_ip + 1) > cur.end)
		return truncated;
	/* IP_ECN_decapsulate: outer CE cannot be carried by a not-ECT inner packet. */
	if ((ip->tos & 0x3) == 0x3 && (inner_ip->tos & 0x3) == 0)
		return FXDP_C_DECAP_DROP_ECN;
	/* The inner source may be the sender's own address, or lie in one of its subnets. */
	int in_subnet = (cfg->flags & (FXDP_CFG_F_INNER_SOURCE_CHECK | FXDP_CFG_F_FAST_PATH)) &&
			fxdp_inner_source_in_sender_subnet(ip, inner_ip);
	if ((cfg->flags & FXDP_CFG_F_INNER_SOURCE_CHECK) && !in_subnet && inner_ip->saddr != ip->saddr)
		return FXDP_C_DECAP_DROP_INNER_SOURCE;
	facts->source_in_subnet = in_subnet;
	facts->outer_tos = ip->tos;
	return first_fragment ? FXDP_C_DECAP_FRAGMENT_OK : FXDP_C_DECAP_OK;
}

/* ----------------------------------------------------------------------------- the fast path -- */

/* Established flows between a pod of this node and a pod of a peer skip both stacks: fxdp_fast_encap
 * takes the pod's packet where it enters the host (TC ingress of its bridge) and sends it encapsulated
 * straight to the underlay; the decap programs hand a peer's packet straight to the pod
 * (bpf_redirect_peer into its namespace). What the skipped stack does is done here where a packet of
 * such a flow needs it (TTL decrement, ECN, checksum level) and the rest is ruled out before a packet
 * is taken: a packet that needs routing decisions, netfilter, NAT, ICMP or ARP takes the kernel path
 * unchanged, counted by reason. docs/BPF-DATAPATH.md "The fast path" has the full argument. */

enum fxdp_fast_reason {
	FXDP_FAST_OK = 0,
	FXDP_FAST_LIMITS = 1,    /* the kernel must answer or transform it */
	FXDP_FAST_CONNTRACK = 2, /* not a flow conntrack vouches for (see fxdp_conntrack.h) */
};

/* One IPv4 packet as the fast path sees it: a copy of its option-less header and its flow. */
struct fxdp_fast_packet {
	struct iphdr ip;
	struct fxdp_flow flow;
	__u8 l4_len; /* TCP header or UDP header length: a GSO segment is 20 + l4_len + gso_size */
};

/* Where a fast decap delivers: the pod's bridge port, the pod's and the bridge's MACs. */
struct fxdp_fast_target {
	__u32 port_ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/* Copies the IPv4 header at `ip_off`; 0 when there is none (too short, not version 4). */
static __always_inline int fxdp_fast_read_ip(struct __sk_buff *skb, __u32 ip_off, struct fxdp_fast_packet *p)
{
	if (bpf_skb_load_bytes(skb, ip_off, &p->ip, sizeof(p->ip)))
		return 0;
	return p->ip.version == 4;
}

/* The rest of what the fast path needs from the packet: a plain IPv4 header (no options, not a
 * fragment, a right checksum, a length the packet has, TTL above 1: anything else the kernel must
 * drop, answer or reassemble) and a TCP or UDP flow. */
static __always_inline enum fxdp_fast_reason fxdp_fast_read_flow(struct __sk_buff *skb, __u32 ip_off, struct fxdp_fast_packet *p)
{
	const struct iphdr *ip = &p->ip;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(FXDP_IP_MF | FXDP_IP_OFFSET)) || ip->ttl <= 1 ||
	    !fxdp_ipv4_header_csum_ok(ip))
		return FXDP_FAST_LIMITS;
	/* A GSO packet's header carries the super-packet's length (or 0 beyond 64 KiB). */
	if (!skb->gso_size && bpf_ntohs(ip->tot_len) != skb->len - ip_off)
		return FXDP_FAST_LIMITS;
	p->flow.saddr = ip->saddr;
	p->flow.daddr = ip->daddr;
	p->flow.protocol = ip->protocol;
	if (ip->protocol == IPPROTO_TCP) {
		__u8 tcp[14]; /* ports, sequence, ack, data offset, flags */
		if (bpf_skb_load_bytes(skb, ip_off + sizeof(struct iphdr), tcp, sizeof(tcp)))
			return FXDP_FAST_LIMITS;
		__builtin_memcpy(&p->flow.sport, &tcp[0], 2);
		__builtin_memcpy(&p->flow.dport, &tcp[2], 2);
		p->l4_len = (tcp[12] >> 4) * 4;
		p->flow.tcp_flags = tcp[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		__u8 udp[4];
		if (bpf_skb_load_bytes(skb, ip_off + sizeof(struct iphdr), udp, sizeof(udp)))
			return FXDP_FAST_LIMITS;
		__builtin_memcpy(&p->flow.sport, &udp[0], 2);
		__builtin_memcpy(&p->flow.dport, &udp[2], 2);
		p->l4_len = sizeof(struct udphdr);
	} else {
		return FXDP_FAST_CONNTRACK;
	}
	return FXDP_FAST_OK;
}

/* The length of the IP packets that leave: the packet's own, or for GSO each segment's. */
static __always_inline __u32 fxdp_fast_wire_len(struct __sk_buff *skb, const struct fxdp_fast_packet *p)
{
	if (skb->gso_size)
		return sizeof(struct iphdr) + p->l4_len + skb->gso_size;
	return bpf_ntohs(p->ip.tot_len);
}

/* ip_forward's TTL decrement, on the header copy (its checksum recomputed: it was checked). */
static __always_inline void fxdp_fast_forward_ip(struct iphdr *ip)
{
	ip->ttl -= 1;
	ip->check = 0;
	ip->check = fxdp_ipv4_header_csum(ip);
}

SEC("tc")
int fxdp_fast_encap(struct __sk_buff *skb)
{
	__u64 len = skb->len;
	const struct fxdp_config *cfg = fxdp_config_get();
	if (!cfg || !(cfg->flags & FXDP_CFG_F_FAST_PATH))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_OFF, len, TC_ACT_OK);
	/* Only what a pod sends its gateway to be routed: from a pod in fxdp_local, to its bridge's MAC,
	 * seen on the pod's own port (before the bridge) or on its bridge (what the bridge passes up). */
	struct ethhdr eth;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_IPV6, len, TC_ACT_OK);
	if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_NOT_POD, len, TC_ACT_OK);
	struct fxdp_local_key source = {};
	__builtin_memcpy(source.mac, eth.h_source, ETH_ALEN);
	const struct fxdp_local_value *pod = bpf_map_lookup_elem(&fxdp_local_v2, &source);
	if (!pod || (skb->ifindex != pod->port_ifindex && skb->ifindex != pod->bridge_ifindex) ||
	    !fxdp_mac_equal(eth.h_dest, pod->bridge_mac))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_NOT_POD, len, TC_ACT_OK);

	struct fxdp_fast_packet p = {};
	if (!fxdp_fast_read_ip(skb, ETH_HLEN, &p))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_NOT_PEER, len, TC_ACT_OK);
	struct fxdp_peer_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.subnet, &p.ip.daddr, 4);
	const struct fxdp_peer_value *peer = bpf_map_lookup_elem(&fxdp_peers_v2, &key);
	/* A DirectRouting peer's pods are routed to it unencapsulated, by the kernel. */
	if (!peer || (peer->flags & FXDP_PEER_F_DIRECT))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_NOT_PEER, len, TC_ACT_OK);

	enum fxdp_fast_reason why = fxdp_fast_read_flow(skb, ETH_HLEN, &p);
	if (why == FXDP_FAST_CONNTRACK)
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_CONNTRACK, len, TC_ACT_OK);
	/* Over the overlay MTU the kernel answers with ICMP (the pod's DF) or fragments, as flannel. */
	__u32 outer_ip_len = len - ETH_HLEN + FXDP_VXLAN_OVERHEAD;
	if (why != FXDP_FAST_OK || outer_ip_len > 0xffff ||
	    (cfg->overlay_mtu && fxdp_fast_wire_len(skb, &p) > cfg->overlay_mtu))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_LIMITS, len, TC_ACT_OK);
	struct bpf_fib_lookup fib = {};
	if (fxdp_route_to_peer(skb, cfg, peer, &fib) != BPF_FIB_LKUP_RET_SUCCESS)
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_LIMITS, len, TC_ACT_OK);
	if (!fxdp_flow_established(skb, &p.flow, cfg->flags & FXDP_CFG_F_CT_TCP_LIBERAL))
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_CONNTRACK, len, TC_ACT_OK);

	enum fxdp_encap_result done = fxdp_encapsulate(skb, cfg, peer, p.ip.tos, outer_ip_len, &fib);
	if (done == FXDP_ENCAP_REFUSED)
		return fxdp_count_verdict(FXDP_C_FAST_ENCAP_PASS_LIMITS, len, TC_ACT_OK);
	fxdp_fast_forward_ip(&p.ip);
	if (done == FXDP_ENCAP_BROKEN ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + FXDP_VXLAN_OVERHEAD, &p.ip, sizeof(p.ip), 0))
		return fxdp_drop_skb(skb, FXDP_C_ENCAP_DROP_ADJUST, len, TC_ACT_SHOT);
	struct fxdp_node_key peer_node = {};
	__builtin_memcpy(peer_node.node_ip, peer->node_ip, 4);
	fxdp_count_peer(&peer_node, len, 0);
	return fxdp_count_verdict(FXDP_C_FAST_ENCAP_OK, len, bpf_redirect(fib.ifindex, 0));
}

/* Whether the inner packet at `ip_off` may go straight to a pod, and which: routed as if it arrived
 * on flannel.<VNI> (bpf_fib_lookup in forwarding mode: the kernel's routes, its forwarding setting
 * and its neighbour table decide), to a bridge whose port for that MAC fxdp_local knows, in a flow
 * conntrack vouches for. Returns FXDP_C_FAST_DECAP_OK or the reason it may not. */
static __always_inline __u32 fxdp_fast_decap_target(struct __sk_buff *skb, const struct fxdp_config *cfg, __u32 ip_off,
						     int source_in_subnet, struct fxdp_fast_packet *p,
						     struct fxdp_fast_target *t)
{
	if (!fxdp_fast_read_ip(skb, ip_off, p))
		return FXDP_C_FAST_DECAP_PASS_LIMITS;
	enum fxdp_fast_reason why = fxdp_fast_read_flow(skb, ip_off, p);
	if (why == FXDP_FAST_CONNTRACK)
		return FXDP_C_FAST_DECAP_PASS_CONNTRACK;
	/* rp_filter is skipped with the stack: only a source the sender owns by its subnets (what the
	 * inner source check establishes) goes this way. A GSO super-packet still flagged as a UDP
	 * tunnel would be segmented as one if its inner protocol is UDP: only TCP GSO goes. */
	if (why != FXDP_FAST_OK || !source_in_subnet || (skb->gso_size && p->flow.protocol != IPPROTO_TCP))
		return FXDP_C_FAST_DECAP_PASS_LIMITS;

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = p->ip.tos;
	fib.l4_protocol = p->flow.protocol;
	fib.sport = p->flow.sport;
	fib.dport = p->flow.dport;
	fib.tot_len = skb->gso_size ? 0 : bpf_ntohs(p->ip.tot_len);
	fib.ipv4_src = p->ip.saddr;
	fib.ipv4_dst = p->ip.daddr;
	fib.ifindex = cfg->overlay_ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return FXDP_C_FAST_DECAP_PASS_LIMITS;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return FXDP_C_FAST_DECAP_PASS_NOT_POD;
	if (skb->gso_size && fxdp_fast_wire_len(skb, p) > fib.mtu_result)
		return FXDP_C_FAST_DECAP_PASS_LIMITS;
	struct fxdp_local_key pod_key = {};
	__builtin_memcpy(pod_key.mac, fib.dmac, ETH_ALEN);
	const struct fxdp_local_value *pod = bpf_map_lookup_elem(&fxdp_local_v2, &pod_key);
	if (!pod || pod->bridge_ifindex != fib.ifindex)
		return FXDP_C_FAST_DECAP_PASS_NOT_POD;
	if (!fxdp_flow_established(skb, &p->flow, cfg->flags & FXDP_CFG_F_CT_TCP_LIBERAL))
		return FXDP_C_FAST_DECAP_PASS_CONNTRACK;
	t->port_ifindex = pod->port_ifindex;
	__builtin_memcpy(t->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(t->smac, fib.smac, ETH_ALEN);
	return FXDP_C_FAST_DECAP_OK;
}

/* Hands the decapsulated packet (Ethernet at 0, IPv4 at 14) to the pod: addressed from its bridge to
 * it, forwarded (TTL), into the pod's namespace. */
static __always_inline int fxdp_fast_deliver(struct __sk_buff *skb, struct fxdp_fast_packet *p,
					     const struct fxdp_fast_target *t, __u64 len)
{
	struct {
		struct ethhdr eth;
		struct iphdr ip;
	} __attribute__((packed)) out = {};
	__builtin_memcpy(out.eth.h_dest, t->dmac, ETH_ALEN);
	__builtin_memcpy(out.eth.h_source, t->smac, ETH_ALEN);
	out.eth.h_proto = bpf_htons(ETH_P_IP);
	fxdp_fast_forward_ip(&p->ip);
	out.ip = p->ip;
	if (bpf_skb_store_bytes(skb, 0, &out, sizeof(out), 0))
		return fxdp_drop_skb(skb, FXDP_C_DECAP_DROP_ADJUST, len, TC_ACT_SHOT);
	return fxdp_count_verdict(FXDP_C_FAST_DECAP_OK, len, bpf_redirect_peer(t->port_ifindex, 0));
}

/* The TC check's fast path for a datagram classified FXDP_C_DECAP_OK: strip it here when its inner
 * packet may go straight to a pod, else leave it whole to the kernel vxlan device. */
static __always_inline int fxdp_fast_decap_tc(struct __sk_buff *skb, const struct fxdp_config *cfg,
					      const struct fxdp_decap_facts *facts, __u64 len)
{
	struct fxdp_fast_packet p = {};
	struct fxdp_fast_target t = {};
	__u32 code = fxdp_fast_decap_target(skb, cfg, ETH_HLEN + FXDP_VXLAN_OVERHEAD, facts->source_in_subnet, &p, &t);
	if (code != FXDP_C_FAST_DECAP_OK)
		return fxdp_count_verdict(code, len, TC_ACT_OK);
	/* Remove the outer IPv4, UDP, VXLAN and inner Ethernet headers after the outer Ethernet one
	 * (rewritten below). FIXED_GSO keeps the segment size the sender chose; NO_CSUM_RESET keeps a
	 * CHECKSUM_UNNECESSARY, whose level the outer UDP header used up (below). */
	if (bpf_skb_adjust_room(skb, -FXDP_VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET))
		return fxdp_count_verdict(FXDP_C_FAST_DECAP_PASS_LIMITS, len, TC_ACT_OK);
	/* The kernel's UDP receive consumes one level of CHECKSUM_UNNECESSARY for the outer UDP header
	 * (a zero checksum counts: udp4_csum_init), leaving the inner checksums to be verified unless
	 * the device vouched for them too. */
	if (bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) >= 0)
		bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	/* IP_ECN_decapsulate: an outer CE mark is copied into an ECT inner header (the classification
	 * dropped CE over not-ECT). */
	if ((facts->outer_tos & 0x3) == 0x3)
		p.ip.tos |= 0x3;
	return fxdp_fast_deliver(skb, &p, &t, len);
}

enum fxdp_strip {
	FXDP_STRIP_DONE = 0,    /* stripped, marked, re-addressed: the inner frame starts at ctx->data */
	FXDP_STRIP_NO_META = 1, /* the driver keeps no XDP metadata: nothing changed */
	FXDP_STRIP_FAILED = 2,  /* the head could not be moved, or the frame is not what it was */
};

/* What fxdp_decap_xdp does to a valid datagram of either family: the mark for fxdp_decap_steer goes
 * in first (a driver without XDP metadata refuses it, and the datagram then goes up whole to the
 * kernel vxlan device, after the netfilter door, which delivers it on the overlay as stock flannel
 * does); then `overhead` bytes go, and the inner frame is addressed to the underlay, whose receive
 * path drops frames for other MACs until the steer moves it to the overlay device (were the steer
 * detached, the packet would still be delivered, as before it existed). */
static __always_inline enum fxdp_strip fxdp_xdp_strip(struct xdp_md *ctx, int overhead, __u32 meta_flags, const __u8 *underlay_mac)
{
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct fxdp_xdp_meta)))
		return FXDP_STRIP_NO_META;
	if (bpf_xdp_adjust_head(ctx, overhead))
		return FXDP_STRIP_FAILED;
	/* Re-derive: both helpers invalidated every packet pointer. */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct fxdp_xdp_meta *meta = (void *)(long)ctx->data_meta;
	struct ethhdr *eth = data;
	if ((void *)(meta + 1) > data || (void *)(eth + 1) > data_end)
		return FXDP_STRIP_FAILED;
	meta->magic = FXDP_XDP_META_MAGIC;
	meta->flags = meta_flags;
	__builtin_memcpy(eth->h_dest, underlay_mac, ETH_ALEN);
	return FXDP_STRIP_DONE;
}

/* fxdp_decap_xdp for a frame that is not IPv4: IPv6 VXLAN is classified and stripped as IPv4 VXLAN
 * is, and marked for the steer to hand it to flannel-v6.<VNI>; anything else passes. */
static __always_inline int fxdp_decap_xdp6(struct xdp_md *ctx, const struct fxdp_config *cfg, __u64 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct fxdp_config6 *cfg6 = fxdp_config6_get();
	struct ethhdr *eth = data;
	if (!cfg6 || (void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_NOT_IPV4, len, XDP_PASS);

	struct fxdp_decap6_facts facts = {};
	__u32 code = fxdp_classify_decap6(data, data_end, len, cfg, cfg6, &facts);
	if (code != FXDP_C_DECAP6_OK)
		return fxdp_xdp_verdict(ctx, code, len);
	enum fxdp_strip strip = fxdp_xdp_strip(ctx, FXDP_VXLAN6_OVERHEAD,
						FXDP_META_F_IPV6 | (facts.source_in_subnet ? FXDP_META_F_SOURCE_IN_SUBNET : 0),
						cfg->underlay_mac);
	if (strip == FXDP_STRIP_NO_META) {
		fxdp_count_peer6(&facts.node, len, 1);
		return fxdp_count_verdict(FXDP_C_DECAP6_CHECK_OK, len, XDP_PASS);
	}
	data = (void *)(long)ctx->data;
	struct ipv6hdr *inner_ip = data + ETH_HLEN;
	if (strip != FXDP_STRIP_DONE || (void *)(inner_ip + 1) > (void *)(long)ctx->data_end)
		return fxdp_xdp_verdict(ctx, FXDP_C_DECAP_DROP_ADJUST, len);
	/* IP6_ECN_decapsulate: an outer CE mark is copied into an ECT inner header (no checksum). */
	if (facts.outer_ecn == 0x3)
		((__u8 *)inner_ip)[1] |= 0x3 << 4;
	fxdp_count_peer6(&facts.node, len, 1);
	return fxdp_count_verdict(FXDP_C_DECAP6_OK, len, XDP_PASS);
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

	struct fxdp_decap_facts facts = {};
	__u32 code = fxdp_classify_decap(data, data_end, len, cfg, &facts);
	if (code != FXDP_C_DECAP_OK)
		return code == FXDP_C_DECAP_PASS_NOT_IPV4 ? fxdp_decap_xdp6(ctx, cfg, len) : fxdp_xdp_verdict(ctx, code, len);

	enum fxdp_strip strip = fxdp_xdp_strip(ctx, FXDP_VXLAN_OVERHEAD, facts.source_in_subnet ? FXDP_META_F_SOURCE_IN_SUBNET : 0,
						cfg->underlay_mac);
	if (strip == FXDP_STRIP_NO_META) {
		fxdp_count_peer(&facts.node, len, 1);
		return fxdp_count_verdict(FXDP_C_DECAP_CHECK_OK, len, XDP_PASS);
	}
	data = (void *)(long)ctx->data;
	struct iphdr *inner_ip = data + ETH_HLEN;
	if (strip != FXDP_STRIP_DONE || (void *)(inner_ip + 1) > (void *)(long)ctx->data_end)
		return fxdp_xdp_verdict(ctx, FXDP_C_DECAP_DROP_ADJUST, len);
	/* IP_ECN_decapsulate: an outer CE mark is copied into an ECT inner header. */
	if ((facts.outer_tos & 0x3) == 0x3 && (inner_ip->tos & 0x3) != 0x3) {
		__u16 old = *(__u16 *)inner_ip;
		inner_ip->tos |= 0x3;
		inner_ip->check = fxdp_csum_replace16(inner_ip->check, old, *(__u16 *)inner_ip);
	}
	fxdp_count_peer(&facts.node, len, 1);
	return fxdp_count_verdict(FXDP_C_DECAP_OK, len, XDP_PASS);
}

SEC("tc")
int fxdp_decap_steer(struct __sk_buff *skb)
{
	struct fxdp_xdp_meta *meta = (void *)(long)skb->data_meta;
	if ((void *)(meta + 1) > (void *)(long)skb->data || meta->magic != FXDP_XDP_META_MAGIC)
		return TC_ACT_OK;
	__u32 meta_flags = meta->flags;
	__u64 len = skb->len;
	/* Decapsulated while enabled: steer it even if the flag was just cleared (the overlay device is
	 * the same either way). */
	FXDP_VARIANT_MARK();
	__u32 zero = 0;
	if (meta_flags & FXDP_META_F_IPV6) {
		/* IPv6 takes the kernel path from flannel-v6.<VNI> on (the fast path is IPv4's). */
		const struct fxdp_config6 *cfg6 = bpf_map_lookup_elem(&fxdp_config6_v2, &zero);
		if (!cfg6 || !cfg6->overlay_ifindex || bpf_skb_store_bytes(skb, 0, cfg6->vtep_mac, ETH_ALEN, 0))
			return TC_ACT_OK;
		return fxdp_count_verdict(FXDP_C_DECAP6_STEER_OK, len, bpf_redirect(cfg6->overlay_ifindex, BPF_F_INGRESS));
	}
	const struct fxdp_config *cfg = bpf_map_lookup_elem(&fxdp_config_v2, &zero);
	if (!cfg || !cfg->overlay_ifindex)
		return TC_ACT_OK;
	__u32 code = FXDP_C_DECAP_STEER_OK;
	if ((cfg->flags & (FXDP_CFG_F_ENABLED | FXDP_CFG_F_FAST_PATH)) == (FXDP_CFG_F_ENABLED | FXDP_CFG_F_FAST_PATH)) {
		/* XDP stripped the frame and copied the CE mark already. */
		struct fxdp_fast_packet p = {};
		struct fxdp_fast_target t = {};
		code = fxdp_fast_decap_target(skb, cfg, ETH_HLEN, meta_flags & FXDP_META_F_SOURCE_IN_SUBNET, &p, &t);
		if (code == FXDP_C_FAST_DECAP_OK)
			return fxdp_fast_deliver(skb, &p, &t, len);
	}
	/* flannel.<VNI>'s receive path keeps frames addressed to its own MAC, the VtepMAC. */
	if (bpf_skb_store_bytes(skb, 0, cfg->vtep_mac, ETH_ALEN, 0))
		return TC_ACT_OK;
	return fxdp_count_verdict(code, len, bpf_redirect(cfg->overlay_ifindex, BPF_F_INGRESS));
}

/* fxdp_decap_check for a frame that is not IPv4: IPv6 VXLAN is checked as IPv4 VXLAN is, and a
 * valid datagram left to flannel-v6.<VNI>; anything else passes. */
static __always_inline int fxdp_decap_check6(struct __sk_buff *skb, const struct fxdp_config *cfg, __u64 len)
{
	const struct fxdp_config6 *cfg6 = fxdp_config6_get();
	if (!cfg6)
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_NOT_IPV4, len, TC_ACT_OK);
	fxdp_linearize_ipv6_headers(skb, FXDP_DECAP6_AFTER_OUTER_IP);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return fxdp_count_verdict(FXDP_C_DECAP_PASS_NOT_IPV4, len, TC_ACT_OK);
	struct fxdp_decap6_facts facts = {};
	__u32 code = fxdp_classify_decap6(data, data_end, len, cfg, cfg6, &facts);
	if (code == FXDP_C_DECAP6_OK) {
		fxdp_count_peer6(&facts.node, len, 1);
		return fxdp_count_verdict(FXDP_C_DECAP6_CHECK_OK, len, TC_ACT_OK);
	}
	return fxdp_tc_verdict(skb, code, len);
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
	struct fxdp_decap_facts facts = {};
	__u32 code = fxdp_classify_decap((void *)(long)skb->data, (void *)(long)skb->data_end, len, cfg, &facts);
	if (code == FXDP_C_DECAP_OK) {
		fxdp_count_peer(&facts.node, len, 1);
		if (cfg->flags & FXDP_CFG_F_FAST_PATH)
			return fxdp_fast_decap_tc(skb, cfg, &facts, len);
		return fxdp_count_verdict(FXDP_C_DECAP_CHECK_OK, len, TC_ACT_OK);
	}
	return code == FXDP_C_DECAP_PASS_NOT_IPV4 ? fxdp_decap_check6(skb, cfg, len) : fxdp_tc_verdict(skb, code, len);
}

/* ------------------------------------------------- the socket's door and the pods (netfilter) -- */

/* The IPv4 and UDP headers of a datagram to our VXLAN port at a netfilter hook (the skb starts at
 * its IPv4 header there), or 0 when it is something else: not IPv4/UDP, a non-first fragment,
 * another port, too short. */
static __always_inline int fxdp_nf_vxlan_datagram(struct bpf_nf_ctx *ctx, const struct fxdp_config *cfg,
						   struct bpf_dynptr *packet, struct iphdr *ip_out)
{
	if (bpf_dynptr_from_skb((struct __sk_buff *)ctx->skb, 0, packet))
		return 0;
	struct iphdr ip_buf;
	const struct iphdr *ip = bpf_dynptr_slice(packet, 0, &ip_buf, sizeof(ip_buf));
	if (!ip || ip->version != 4 || ip->ihl < 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(FXDP_IP_OFFSET)))
		return 0;
	struct udphdr udp_buf;
	const struct udphdr *udp = bpf_dynptr_slice(packet, ip->ihl * 4, &udp_buf, sizeof(udp_buf));
	if (!udp || udp->dest != bpf_htons(cfg->udp_port))
		return 0;
	*ip_out = *ip;
	return 1;
}

SEC("netfilter")
int fxdp_vxlan_door(struct bpf_nf_ctx *ctx)
{
	const struct fxdp_config *cfg = fxdp_config_get();
	struct bpf_dynptr packet;
	struct iphdr ip;
	if (!cfg || !fxdp_nf_vxlan_datagram(ctx, cfg, &packet, &ip))
		return FXDP_NF_ACCEPT;
	__u64 len = ctx->skb->len;
	const struct net_device *in = ctx->state->in;
	int ifindex = in ? in->ifindex : 0;
	struct fxdp_node_key source = {};
	__builtin_memcpy(source.node_ip, &ip.saddr, 4);
	if (!bpf_map_lookup_elem(&fxdp_nodes_v2, &source)) {
		fxdp_note_stranger(&source);
		fxdp_report_drop_nf(&packet, len, ifindex, FXDP_C_DOOR_DROP_NOT_PEER);
		return fxdp_count_verdict(FXDP_C_DOOR_DROP_NOT_PEER, len, FXDP_NF_DROP);
	}
	if (ifindex != (int)cfg->underlay_ifindex || !fxdp_is_vxlan_address(cfg, &ip.daddr)) {
		fxdp_report_drop_nf(&packet, len, ifindex, FXDP_C_DOOR_DROP_WRONG_DOOR);
		return fxdp_count_verdict(FXDP_C_DOOR_DROP_WRONG_DOOR, len, FXDP_NF_DROP);
	}
	return fxdp_count_verdict(FXDP_C_DOOR_OK, len, FXDP_NF_ACCEPT);
}

static __always_inline int fxdp_in_network(const struct fxdp_config *cfg, __be32 address)
{
	__u32 prefix = cfg->network_prefixlen;
	if (prefix == 0 || prefix > 32)
		return 0;
	__u32 mask = prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix);
	__be32 network;
	__builtin_memcpy(&network, cfg->network, 4);
	return (bpf_ntohl(address) & mask) == (bpf_ntohl(network) & mask);
}

SEC("netfilter")
int fxdp_pod_guard(struct bpf_nf_ctx *ctx)
{
	const struct fxdp_config *cfg = fxdp_config_get();
	struct bpf_dynptr packet;
	struct iphdr ip;
	if (!cfg || !fxdp_nf_vxlan_datagram(ctx, cfg, &packet, &ip))
		return FXDP_NF_ACCEPT;
	if (fxdp_in_network(cfg, ip.saddr) && !fxdp_in_network(cfg, ip.daddr)) {
		const struct net_device *in = ctx->state->in;
		fxdp_report_drop_nf(&packet, ctx->skb->len, in ? in->ifindex : 0, FXDP_C_GUARD_DROP_POD_VXLAN);
		return fxdp_count_verdict(FXDP_C_GUARD_DROP_POD_VXLAN, ctx->skb->len, FXDP_NF_DROP);
	}
	return FXDP_NF_ACCEPT;
}

/* The IPv6 doors: fxdp_vxlan_door and fxdp_pod_guard for IPv6, on the same hooks of IPv6. The
 * kernel's vxlan socket of flannel-v6.<VNI> listens on every local IPv6 address, as the IPv4 one
 * does on every IPv4 address. The packet's extension headers are walked as the kernel's input
 * walks them (fxdp_nf_ipv6_transport). */

SEC("netfilter")
int fxdp_vxlan_door6(struct bpf_nf_ctx *ctx)
{
	const struct fxdp_config *cfg = fxdp_config_get();
	const struct fxdp_config6 *cfg6 = cfg ? fxdp_config6_get() : NULL;
	struct bpf_dynptr packet;
	struct ipv6hdr ip;
	struct fxdp_l4_6 l4 = {};
	enum fxdp_nf6 seen = cfg6 ? fxdp_nf_vxlan_datagram6(ctx, cfg, &packet, &ip, &l4) : FXDP_NF6_OTHER;
	if (seen == FXDP_NF6_OTHER)
		return FXDP_NF_ACCEPT;
	__u64 len = ctx->skb->len;
	const struct net_device *in = ctx->state->in;
	int ifindex = in ? in->ifindex : 0;
	if (seen == FXDP_NF6_TOO_LONG)
		return fxdp_nf_drop(&packet, len, ifindex, FXDP_C_DOOR6_DROP_WRONG_DOOR);
	struct fxdp_node6_key source = {};
	__builtin_memcpy(source.node_ip, &ip.saddr, 16);
	if (!bpf_map_lookup_elem(&fxdp_nodes6_v2, &source))
		return fxdp_nf_drop(&packet, len, ifindex, FXDP_C_DOOR6_DROP_NOT_PEER);
	if (ifindex != (int)cfg->underlay_ifindex || !fxdp_is_vxlan_address6(cfg6, &ip.daddr) || l4.extended)
		return fxdp_nf_drop(&packet, len, ifindex, FXDP_C_DOOR6_DROP_WRONG_DOOR);
	return fxdp_count_verdict(FXDP_C_DOOR6_OK, len, FXDP_NF_ACCEPT);
}

SEC("netfilter")
int fxdp_pod_guard6(struct bpf_nf_ctx *ctx)
{
	const struct fxdp_config *cfg = fxdp_config_get();
	const struct fxdp_config6 *cfg6 = cfg ? fxdp_config6_get() : NULL;
	struct bpf_dynptr packet;
	struct ipv6hdr ip;
	struct fxdp_l4_6 l4 = {};
	if (!cfg6 || fxdp_nf_vxlan_datagram6(ctx, cfg, &packet, &ip, &l4) != FXDP_NF6_VXLAN)
		return FXDP_NF_ACCEPT;
	if (fxdp_in_network6(cfg6, &ip.saddr) && !fxdp_in_network6(cfg6, &ip.daddr)) {
		const struct net_device *in = ctx->state->in;
		return fxdp_nf_drop(&packet, ctx->skb->len, in ? in->ifindex : 0, FXDP_C_GUARD6_DROP_POD_VXLAN);
	}
	return FXDP_NF_ACCEPT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
