/* fxdp_parsing.h — bounds-checked header parsing with a cursor.
 *
 * Each parse_* checks that the whole header lies before `end`, returns a pointer to it and advances
 * the cursor; NULL means truncated (the cursor is then left where it was). The IPv4 parser checks
 * version and IHL before it trusts the variable length. Nothing here can read out of bounds: the
 * verifier sees the comparison against `end` before every access.
 */
#ifndef FXDP_PARSING_H
#define FXDP_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "fxdp_shared.h"
#include "fxdp_consts.h"

struct fxdp_cursor {
	void *pos;
	void *end;
};

static __always_inline struct ethhdr *fxdp_parse_eth(struct fxdp_cursor *c)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return NULL;
	c->pos = eth + 1;
	return eth;
}

enum fxdp_ipv4_parse {
	FXDP_IPV4_OK = 0,
	FXDP_IPV4_TRUNCATED = 1, /* fewer bytes than the fixed header or than IHL says */
	FXDP_IPV4_BAD = 2,       /* version is not 4, IHL < 5, or total length shorter than the header */
};

/* Parses an IPv4 header including its options; on success the cursor is at the L4 header. */
static __always_inline enum fxdp_ipv4_parse fxdp_parse_ipv4(struct fxdp_cursor *c, struct iphdr **out)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return FXDP_IPV4_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return FXDP_IPV4_BAD;
	__u32 hdr_len = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < hdr_len)
		return FXDP_IPV4_BAD;
	if (c->pos + hdr_len > c->end)
		return FXDP_IPV4_TRUNCATED;
	c->pos += hdr_len;
	*out = ip;
	return FXDP_IPV4_OK;
}

static __always_inline struct udphdr *fxdp_parse_udp(struct fxdp_cursor *c)
{
	struct udphdr *udp = c->pos;
	if ((void *)(udp + 1) > c->end)
		return NULL;
	c->pos = udp + 1;
	return udp;
}

static __always_inline struct fxdp_vxlanhdr *fxdp_parse_vxlan(struct fxdp_cursor *c)
{
	struct fxdp_vxlanhdr *vx = c->pos;
	if ((void *)(vx + 1) > c->end)
		return NULL;
	c->pos = vx + 1;
	return vx;
}

static __always_inline int fxdp_ip_equal(const void *a, const __u8 *b)
{
	const __u8 *x = a;
	return x[0] == b[0] && x[1] == b[1] && x[2] == b[2] && x[3] == b[3];
}

static __always_inline int fxdp_mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* The VXLAN header and the inner Ethernet header, which both families' decap classifications check
 * alike: the I flag alone and our VNI; an inner destination that is our VtepMAC (`vtep_mac`, the
 * device's of that family), an inner source that is not (a loop), the family's inner type. Returns
 * FXDP_C_DECAP_OK with the cursor at the inner network header, else the verdict: `truncated` for a
 * header cut short, `wrong_type` for another inner type. */
static __always_inline __u32 fxdp_check_vxlan_inner_eth(struct fxdp_cursor *c, __u32 vni, const __u8 *vtep_mac,
							 __be16 inner_type, __u32 truncated, __u32 wrong_type)
{
	struct fxdp_vxlanhdr *vx = fxdp_parse_vxlan(c);
	if (!vx)
		return truncated;
	if (vx->flags != bpf_htonl(FXDP_VXLAN_FLAGS_I) || vx->vni != bpf_htonl(vni << 8))
		return FXDP_C_DECAP_DROP_BAD_VNI;
	struct ethhdr *inner_eth = fxdp_parse_eth(c);
	if (!inner_eth)
		return truncated;
	if (!fxdp_mac_equal(inner_eth->h_dest, vtep_mac))
		return FXDP_C_DECAP_DROP_INNER_NOT_OURS;
	if (fxdp_mac_equal(inner_eth->h_source, vtep_mac))
		return FXDP_C_DECAP_DROP_LOOP;
	if (inner_eth->h_proto != inner_type)
		return wrong_type;
	return FXDP_C_DECAP_OK;
}

/* Makes the first `want` bytes of the packet (at most all of it) linear, when they are not yet. */
static __always_inline void fxdp_make_linear(struct __sk_buff *skb, __u32 want)
{
	__u32 len = skb->len;
	if (want > len)
		want = len;
	if ((long)skb->data + want > (long)skb->data_end)
		bpf_skb_pull_data(skb, want);
}

/* Makes linear exactly the headers a TC program reads: Ethernet, IPv4 with its options, and `after`
 * more bytes, never beyond the packet. No more: TCP leaves no tailroom after its header, so pulling
 * even a few payload bytes reallocates the head of every GSO packet (a fixed 124-byte pull in the
 * decap check and 74 in the encap cost a fifth of the four-stream throughput). Headers that are
 * linear already (the common case) cost two comparisons. For anything but IPv4 nothing is pulled
 * beyond the IPv4-sized prefix: the parsers then classify it from what is there. */
static __always_inline void fxdp_linearize_ipv4_headers(struct __sk_buff *skb, __u32 after)
{
	fxdp_make_linear(skb, ETH_HLEN + sizeof(struct iphdr));
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	fxdp_make_linear(skb, ETH_HLEN + ip->ihl * 4 + after);
}

/* The IPv6 header and the fragment header that flannel-v6's datagrams may carry. */
struct fxdp_frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, M flag in bit 0 */
	__be32 identification;
};
#define FXDP_IP6_OFFSET 0xfff8 /* frag_off without the M flag (and the 2 reserved bits) */

/* An IPv6 header: the fixed 40 bytes, version 6; NULL when truncated or another version. */
static __always_inline struct ipv6hdr *fxdp_parse_ipv6(struct fxdp_cursor *c)
{
	struct ipv6hdr *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end || ip6->version != 6)
		return NULL;
	c->pos = ip6 + 1;
	return ip6;
}

/* The extension headers Linux's IPv6 input walks on its way to a transport protocol: hop-by-hop
 * options, routing, fragment, authentication, destination options. */
static __always_inline int fxdp_ipv6_is_extension(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING || nexthdr == IPPROTO_FRAGMENT ||
	       nexthdr == IPPROTO_AH || nexthdr == IPPROTO_DSTOPTS;
}

/* Two IPv6 addresses (16 bytes each, any alignment the target allows) are equal. */
static __always_inline int fxdp_ip6_equal(const void *a, const void *b)
{
	const __u32 *x = a, *y = b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int fxdp_ip6_is_zero(const void *a)
{
	const __u32 *x = a;
	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* Makes linear Ethernet, the IPv6 header, a fragment header right after it if there is one, and
 * `after` more bytes (see fxdp_linearize_ipv4_headers for why no more). */
static __always_inline void fxdp_linearize_ipv6_headers(struct __sk_buff *skb, __u32 after)
{
	fxdp_make_linear(skb, ETH_HLEN + sizeof(struct ipv6hdr));
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return;
	__u32 fragment = ip6->nexthdr == IPPROTO_FRAGMENT ? sizeof(struct fxdp_frag6) : 0;
	fxdp_make_linear(skb, ETH_HLEN + sizeof(struct ipv6hdr) + fragment + after);
}

#endif
