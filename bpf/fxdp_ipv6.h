/* fxdp_ipv6.h — the IPv6 half of the data path: flannel's second vxlan device, flannel-v6.<VNI>, which
 * carries IPv6 pods over the IPv6 underlay (same VNI and UDP port as flannel.<VNI>, its own VtepMAC,
 * the node's IPv6 address as its local address). The entry points in flanneld_xdp.bpf.c call these;
 * the rules are the IPv4 path's, with what IPv6 changes:
 *
 * - The outer UDP checksum. IPv4 may send 0; IPv6 may not, and flannel's device (created without
 *   udp6zerocsumrx) drops every IPv6 VXLAN datagram whose checksum is 0. Computing it over the whole
 *   packet would cost a pass over the payload, so the encap derives it from the headers: a TCP, UDP
 *   or ICMPv6 segment whose own checksum is right sums (one's complement, checksum field included)
 *   to the complement of its pseudo header, so the outer sum needs only the outer pseudo header,
 *   the 30 bytes of UDP, VXLAN and inner Ethernet headers, the inner IPv6 header and that
 *   complement. This holds for a CHECKSUM_PARTIAL packet too (its field holds the pseudo header sum
 *   and is completed on transmit: the kernel's own lco_csum rests on the same identity). A packet
 *   whose inner checksum cannot be accounted so (other protocols, extension headers, fragments, UDP
 *   without checksum) takes the kernel path, counted ENCAP6_PASS_CSUM.
 * - GSO. bpf_skb_adjust_room marks an encapsulation SKB_GSO_UDP_TUNNEL, never ..._CSUM, so the
 *   segments of a super-packet would all carry the super-packet's checksum: wrong. GSO packets take
 *   the kernel device (ENCAP6_PASS_GSO), which segments with a checksum per segment.
 * - No header checksum, no options: extension headers instead. flannel never sends any but a
 *   fragment header; the decap classifies a datagram with one fragment header like an IPv4
 *   fragment and passes anything with other extension headers untouched (DECAP6_PASS_EXT_HEADERS),
 *   for fxdp_vxlan_door6, which walks the chain, to drop if it is VXLAN for us.
 * - ECN lives in the traffic class (bits 4-5 of the second byte); there is no checksum to update
 *   when CE is copied in.
 */
#ifndef FXDP_IPV6_H
#define FXDP_IPV6_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fxdp_shared.h"
#include "fxdp_consts.h"
#include "fxdp_maps.h"
#include "fxdp_parsing.h"
#include "fxdp_csum.h"
#include "fxdp_encap.h"
#include "fxdp_netfilter.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

/* The IPv6 settings, or NULL while they are not filled / not enabled (IPv6 then passes untouched). */
static __always_inline const struct fxdp_config6 *fxdp_config6_get(void)
{
	__u32 zero = 0;
	const struct fxdp_config6 *cfg6 = bpf_map_lookup_elem(&fxdp_config6_v2, &zero);
	if (!cfg6 || !(cfg6->flags & FXDP_CFG6_F_ENABLED))
		return NULL;
	return cfg6;
}

/* The ECN bits of an IPv6 header's traffic class. */
static __always_inline __u8 fxdp_ipv6_ecn(const void *ip6)
{
	return (((const __u8 *)ip6)[1] >> 4) & 0x3;
}

/* ------------------------------------------------------------------------------------ encap -- */

/* Everything the IPv6 encap writes in front of the inner IPv6 packet, in one store. */
struct fxdp_encap6_headers {
	struct ethhdr outer_eth;
	struct ipv6hdr outer_ip;
	struct udphdr udp;
	struct fxdp_vxlanhdr vxlan;
	struct ethhdr inner_eth;
} __attribute__((packed));
_Static_assert(sizeof(struct fxdp_encap6_headers) == ETH_HLEN + FXDP_VXLAN6_OVERHEAD, "IPv6 encap headers");

/* Offset of the UDP header in fxdp_encap6_headers, and the bytes from there to the inner IPv6
 * header (UDP, VXLAN, inner Ethernet), both in 16-bit words: what the checksum sums. */
#define FXDP_ENCAP6_UDP_WORD ((ETH_HLEN + sizeof(struct ipv6hdr)) / 2)
#define FXDP_ENCAP6_UDP_TO_INNER_WORDS ((sizeof(struct udphdr) + sizeof(struct fxdp_vxlanhdr) + ETH_HLEN) / 2)

/* Whether the outer UDP checksum can be derived from the headers of the inner IPv6 packet
 * `inner` (a copy of its header) of the `len`-byte frame in `skb` (see the file comment): a
 * TCP, UDP (with a checksum) or ICMPv6 segment right after the IPv6 header, at least a header
 * long, and a payload length that is the rest of the packet (trailing bytes would be summed by the
 * receiver but are in no inner checksum). */
static __always_inline int fxdp_inner6_checksum_derivable(struct __sk_buff *skb, const struct ipv6hdr *inner, __u64 len)
{
	__u32 payload = bpf_ntohs(inner->payload_len);
	if (ETH_HLEN + sizeof(struct ipv6hdr) + (__u64)payload != len)
		return 0;
	switch (inner->nexthdr) {
	case IPPROTO_TCP:
		return payload >= 20;
	case IPPROTO_ICMPV6:
		return payload >= 4;
	case IPPROTO_UDP: {
		__u16 check = 0;
		if (payload < sizeof(struct udphdr) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr) + __builtin_offsetof(struct udphdr, check), &check, 2))
			return 0;
		return check != 0;
	}
	default:
		return 0;
	}
}

/* The outer UDP checksum for headers `out` (UDP checksum field 0, length `udp_len`) from
 * `source` to `destination` around the inner IPv6 packet whose header is `inner`: outer pseudo
 * header + UDP/VXLAN/inner Ethernet + inner IPv6 header + the inner segment's sum, which is the
 * complement of its pseudo header (the file comment says why). */
static __always_inline __u16 fxdp_encap6_udp_check(const __u16 *out, const __u8 *source, const __u8 *destination,
						   __u32 udp_len, const struct ipv6hdr *inner)
{
	__u32 sum = fxdp_csum_words(source, 8) + fxdp_csum_words(destination, 8) + bpf_htons(udp_len) + bpf_htons(IPPROTO_UDP);
	sum += fxdp_csum_words(out + FXDP_ENCAP6_UDP_WORD, FXDP_ENCAP6_UDP_TO_INNER_WORDS);
	sum += fxdp_csum_words(inner, sizeof(*inner) / 2);
	/* saddr and daddr follow each other: 16 words. */
	__u32 inner_pseudo = fxdp_csum_words(&inner->saddr, 16) + inner->payload_len + bpf_htons(inner->nexthdr);
	sum += fxdp_csum_fold(inner_pseudo); /* the complement of the folded pseudo header sum */
	__u16 check = fxdp_csum_fold(sum);
	return check ? check : 0xffff; /* 0 means "no checksum"; its one's complement twin is sent instead */
}

/* Routes the outer IPv6 packet to `peer`'s node, as fxdp_route_to_peer does for IPv4. */
static __always_inline long fxdp_route_to_peer6(struct __sk_buff *skb, const struct fxdp_config *cfg,
						const struct fxdp_config6 *cfg6, const struct fxdp_peer6_value *peer,
						struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET6;
	__builtin_memcpy(fib->ipv6_src, cfg6->node_ip, 16);
	__builtin_memcpy(fib->ipv6_dst, peer->node_ip, 16);
	fib->ifindex = cfg->underlay_ifindex;
	fib->tot_len = 0;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
}

/* Wraps the Ethernet frame in `skb` (an IPv6 packet whose header is `inner`) for `peer` as
 * flannel-v6.<VNI> frames it: outer IPv6 with the inner ECN bits in the traffic class (CE → ECT(0)),
 * flow label 0, the configured hop limit; UDP from the flow hash's port with the derived checksum;
 * VXLAN; inner Ethernet from our VtepMAC to the peer's. */
static __always_inline enum fxdp_encap_result fxdp_encapsulate6(struct __sk_buff *skb, const struct fxdp_config *cfg,
								 const struct fxdp_config6 *cfg6,
								 const struct fxdp_peer6_value *peer,
								 const struct ipv6hdr *inner, __u32 udp_len,
								 const struct bpf_fib_lookup *fib)
{
	union {
		struct fxdp_encap6_headers h;
		__u16 words[(ETH_HLEN + FXDP_VXLAN6_OVERHEAD) / 2];
	} out = {};
	__builtin_memcpy(out.h.outer_eth.h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(out.h.outer_eth.h_source, fib->smac, ETH_ALEN);
	out.h.outer_eth.h_proto = bpf_htons(ETH_P_IPV6);
	out.h.outer_ip.version = 6;
	out.h.outer_ip.flow_lbl[0] = fxdp_outer_tos(fxdp_ipv6_ecn(inner)) << 4; /* traffic class = ECN; label 0 */
	out.h.outer_ip.payload_len = bpf_htons(udp_len);
	out.h.outer_ip.nexthdr = IPPROTO_UDP;
	out.h.outer_ip.hop_limit = cfg6->outer_hop_limit ? cfg6->outer_hop_limit : FXDP_OUTER_TTL;
	__builtin_memcpy(&out.h.outer_ip.saddr, cfg6->node_ip, 16);
	__builtin_memcpy(&out.h.outer_ip.daddr, peer->node_ip, 16);
	out.h.udp.source = bpf_htons(fxdp_src_port(skb));
	out.h.udp.dest = bpf_htons(cfg->udp_port);
	out.h.udp.len = bpf_htons(udp_len);
	out.h.vxlan.flags = bpf_htonl(FXDP_VXLAN_FLAGS_I);
	out.h.vxlan.vni = bpf_htonl(cfg->vni << 8);
	__builtin_memcpy(out.h.inner_eth.h_dest, peer->vtep_mac, ETH_ALEN);
	__builtin_memcpy(out.h.inner_eth.h_source, cfg6->vtep_mac, ETH_ALEN);
	out.h.inner_eth.h_proto = bpf_htons(ETH_P_IPV6);
	out.h.udp.check = fxdp_encap6_udp_check(out.words, cfg6->node_ip, peer->node_ip, udp_len, inner);

	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		      BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	if (bpf_skb_adjust_room(skb, FXDP_VXLAN6_OVERHEAD, BPF_ADJ_ROOM_MAC, flags))
		return FXDP_ENCAP_REFUSED;
	if (bpf_skb_store_bytes(skb, 0, &out.h, sizeof(out.h), 0))
		return FXDP_ENCAP_BROKEN;
	return FXDP_ENCAP_DONE;
}

/* ------------------------------------------------------------------------------------ decap -- */

/* The local IPv6 addresses VXLAN is accepted at: the node's, and the lease's PublicIPv6 when that is
 * another address of this node. */
static __always_inline int fxdp_is_vxlan_address6(const struct fxdp_config6 *cfg6, const void *address)
{
	if (fxdp_ip6_equal(address, cfg6->node_ip))
		return 1;
	return !fxdp_ip6_is_zero(cfg6->public_ip) && fxdp_ip6_equal(address, cfg6->public_ip);
}

/* What the IPv6 classification found beyond its verdict. */
struct fxdp_decap6_facts {
	struct fxdp_node6_key node; /* the sending peer (outer source), on FXDP_C_DECAP6_OK */
	__u8 outer_ecn;
	__u8 source_in_subnet;
};

/* Whether the inner source lies in an IPv6 subnet fxdp_peers6 gives to the peer that sent it. */
static __always_inline int fxdp_inner_source6_in_sender_subnet(const struct ipv6hdr *outer, const struct ipv6hdr *inner)
{
	struct fxdp_peer6_key key = { .prefixlen = 128 };
	__builtin_memcpy(key.subnet, &inner->saddr, 16);
	const struct fxdp_peer6_value *owner = bpf_map_lookup_elem(&fxdp_peers6_v2, &key);
	if (!owner)
		return 0;
	return fxdp_ip6_equal(&outer->saddr, owner->node_ip) || fxdp_ip6_equal(&outer->saddr, owner->source_ip);
}

/* Classifies one frame whose Ethernet type is IPv6, for both decap programs: FXDP_C_DECAP6_OK is
 * "valid VXLAN for us", FXDP_C_DECAP_FRAGMENT_OK the same for a first fragment; the other codes
 * are verdicts. The order (the verdict table at the top of flanneld_xdp.bpf.c) is the IPv4
 * classification's, with the fragment header and the zero checksum in their places. */
static __always_inline __u32 fxdp_classify_decap6(void *data, void *data_end, __u64 packet_len,
						   const struct fxdp_config *cfg, const struct fxdp_config6 *cfg6,
						   struct fxdp_decap6_facts *facts)
{
	struct fxdp_cursor cur = { .pos = data + ETH_HLEN, .end = data_end };
	struct ipv6hdr *ip6 = fxdp_parse_ipv6(&cur);
	if (!ip6)
		return FXDP_C_DECAP_DROP_MALFORMED;
	__u8 next = ip6->nexthdr;
	int first_fragment = 0;
	if (next == IPPROTO_FRAGMENT) {
		struct fxdp_frag6 *frag = cur.pos;
		if ((void *)(frag + 1) > cur.end)
			return FXDP_C_DECAP_DROP_MALFORMED;
		if (frag->frag_off & bpf_htons(FXDP_IP6_OFFSET))
			return FXDP_C_DECAP_PASS_FRAGMENT;
		/* A first fragment, or an atomic one (RFC 6946: offset 0, no M flag): either is left to the
		 * kernel once its headers are checked, which spares the strip a second header length. */
		first_fragment = 1;
		next = frag->nexthdr;
		cur.pos = frag + 1;
	}
	if (fxdp_ipv6_is_extension(next))
		return FXDP_C_DECAP6_PASS_EXT_HEADERS;
	if (next != IPPROTO_UDP)
		return FXDP_C_DECAP_PASS_NOT_VXLAN;
	struct udphdr *udp = fxdp_parse_udp(&cur);
	if (!udp)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (udp->dest != bpf_htons(cfg->udp_port))
		return FXDP_C_DECAP_PASS_NOT_VXLAN;
	if (!fxdp_is_vxlan_address6(cfg6, &ip6->daddr))
		return FXDP_C_DECAP_PASS_OTHER_HOST;

	/* From here on the datagram is addressed to the VXLAN socket. */
	__u32 truncated = first_fragment ? FXDP_C_DECAP_DROP_FRAGMENT : FXDP_C_DECAP_DROP_MALFORMED;
	__u32 payload = bpf_ntohs(ip6->payload_len);
	/* ipv6_rcv drops both: a payload beyond the packet, and length 0 without a jumbogram option. */
	if (payload == 0 || ETH_HLEN + sizeof(struct ipv6hdr) + (__u64)payload > packet_len)
		return FXDP_C_DECAP_DROP_MALFORMED;
	if (udp->check == 0)
		return FXDP_C_DECAP6_DROP_UDP_ZERO_CSUM;
	__builtin_memcpy(facts->node.node_ip, &ip6->saddr, 16);
	if (!bpf_map_lookup_elem(&fxdp_nodes6_v2, &facts->node))
		return FXDP_C_DECAP_DROP_NOT_PEER;

	__u32 headers = fxdp_check_vxlan_inner_eth(&cur, cfg->vni, cfg6->vtep_mac, bpf_htons(ETH_P_IPV6), truncated,
						  FXDP_C_DECAP6_DROP_INNER_NOT_IPV6);
	if (headers != FXDP_C_DECAP_OK)
		return headers;
	struct ipv6hdr *inner = cur.pos;
	if ((void *)(inner + 1) > cur.end)
		return truncated;
	/* IP6_ECN_decapsulate: outer CE cannot be carried by a not-ECT inner packet. */
	__u8 outer_ecn = fxdp_ipv6_ecn(ip6);
	if (outer_ecn == 0x3 && fxdp_ipv6_ecn(inner) == 0)
		return FXDP_C_DECAP_DROP_ECN;
	int in_subnet = (cfg->flags & (FXDP_CFG_F_INNER_SOURCE_CHECK | FXDP_CFG_F_FAST_PATH)) &&
			fxdp_inner_source6_in_sender_subnet(ip6, inner);
	if ((cfg->flags & FXDP_CFG_F_INNER_SOURCE_CHECK) && !in_subnet && !fxdp_ip6_equal(&inner->saddr, &ip6->saddr))
		return FXDP_C_DECAP_DROP_INNER_SOURCE;
	facts->source_in_subnet = in_subnet;
	facts->outer_ecn = outer_ecn;
	return first_fragment ? FXDP_C_DECAP_FRAGMENT_OK : FXDP_C_DECAP6_OK;
}

/* What the TC check reads after the outer IPv6 header (and fragment header): UDP, VXLAN, inner
 * Ethernet, inner IPv6. */
#define FXDP_DECAP6_AFTER_OUTER_IP (8 + 8 + ETH_HLEN + 40)

/* ---------------------------------------------------------------------------- netfilter -- */

/* The longest chain of extension headers the IPv6 doors read. RFC 8200 has each header at most
 * once and destination options twice: 6. A longer chain might hide VXLAN and is refused. */
#define FXDP_IPV6_MAX_EXT 8

/* Where an IPv6 packet's transport header starts, as the kernel's input walks to it. */
struct fxdp_l4_6 {
	__u32 offset;  /* of the transport header */
	__u8 protocol;
	__u8 extended; /* extension headers other than a fragment header were walked */
};

enum fxdp_walk6 {
	FXDP_WALK6_FOUND = 0,     /* l4 filled */
	FXDP_WALK6_OPAQUE = 1,    /* no transport header to judge: not IPv6, truncated, a non-first fragment */
	FXDP_WALK6_TOO_LONG = 2,  /* more than FXDP_IPV6_MAX_EXT extension headers */
};

/* Walks the IPv6 packet in `packet` (offset 0: its IPv6 header, as at the netfilter hooks). */
static __always_inline enum fxdp_walk6 fxdp_nf_ipv6_transport(struct bpf_dynptr *packet, struct ipv6hdr *ip_out,
							     struct fxdp_l4_6 *l4)
{
	struct ipv6hdr ip_buf;
	const struct ipv6hdr *ip = bpf_dynptr_slice(packet, 0, &ip_buf, sizeof(ip_buf));
	if (!ip || ip->version != 6)
		return FXDP_WALK6_OPAQUE;
	*ip_out = *ip;
	__u8 next = ip->nexthdr;
	__u32 offset = sizeof(struct ipv6hdr);
	l4->extended = 0;
#pragma unroll
	for (int i = 0; i < FXDP_IPV6_MAX_EXT; i++) {
		if (!fxdp_ipv6_is_extension(next)) {
			l4->offset = offset;
			l4->protocol = next;
			return FXDP_WALK6_FOUND;
		}
		__u8 header_buf[4];
		const __u8 *header = bpf_dynptr_slice(packet, offset, header_buf, sizeof(header_buf));
		if (!header)
			return FXDP_WALK6_OPAQUE;
		if (next == IPPROTO_FRAGMENT) {
			if (((header[2] << 8 | header[3]) & FXDP_IP6_OFFSET) != 0)
				return FXDP_WALK6_OPAQUE;
			offset += sizeof(struct fxdp_frag6);
		} else {
			l4->extended = 1;
			offset += next == IPPROTO_AH ? (header[1] + 2) * 4 : (header[1] + 1) * 8;
		}
		next = header[0];
	}
	if (!fxdp_ipv6_is_extension(next)) {
		l4->offset = offset;
		l4->protocol = next;
		return FXDP_WALK6_FOUND;
	}
	return FXDP_WALK6_TOO_LONG;
}

enum fxdp_nf6 {
	FXDP_NF6_OTHER = 0,    /* not a datagram to our VXLAN port (or nothing to judge) */
	FXDP_NF6_VXLAN = 1,    /* UDP to our VXLAN port: `ip` and `l4` filled */
	FXDP_NF6_TOO_LONG = 2, /* a chain of extension headers the doors do not read to its end */
};

/* What an IPv6 netfilter program sees in `ctx`'s packet (its IPv6 header at offset 0). */
static __always_inline enum fxdp_nf6 fxdp_nf_vxlan_datagram6(struct bpf_nf_ctx *ctx, const struct fxdp_config *cfg,
							     struct bpf_dynptr *packet, struct ipv6hdr *ip, struct fxdp_l4_6 *l4)
{
	if (bpf_dynptr_from_skb((struct __sk_buff *)ctx->skb, 0, packet))
		return FXDP_NF6_OTHER;
	enum fxdp_walk6 walked = fxdp_nf_ipv6_transport(packet, ip, l4);
	if (walked == FXDP_WALK6_TOO_LONG)
		return FXDP_NF6_TOO_LONG;
	if (walked != FXDP_WALK6_FOUND || l4->protocol != IPPROTO_UDP)
		return FXDP_NF6_OTHER;
	struct udphdr udp_buf;
	const struct udphdr *udp = bpf_dynptr_slice(packet, l4->offset, &udp_buf, sizeof(udp_buf));
	return udp && udp->dest == bpf_htons(cfg->udp_port) ? FXDP_NF6_VXLAN : FXDP_NF6_OTHER;
}

/* Whether `address` lies in the IPv6 pod network. */
static __always_inline int fxdp_in_network6(const struct fxdp_config6 *cfg6, const struct in6_addr *address)
{
	__u32 prefix = cfg6->network_prefixlen;
	if (prefix == 0 || prefix > 128)
		return 0;
	const __u32 *a = (const __u32 *)address, *n = (const __u32 *)cfg6->network;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (prefix <= 32u * i)
			break;
		__u32 bits = prefix - 32u * i;
		__u32 mask = bits >= 32 ? 0xffffffffu : ~(0xffffffffu >> bits);
		if ((bpf_ntohl(a[i]) & mask) != (bpf_ntohl(n[i]) & mask))
			return 0;
	}
	return 1;
}

#endif
