/* fxdp_csum.h — IPv4 header checksums, and the sums the IPv6 encap builds its UDP checksum from. The encap writes a fresh 20-byte outer header, so a full
 * sum over ten 16-bit words is cheaper and clearer than an incremental update; the decap verifies
 * the outer header the same way (ip_rcv's check) and updates the inner one incrementally when it
 * copies a CE mark in (RFC 1624). The outer UDP checksum is left 0, legal for IPv4: see the encap.
 * Over IPv6 it is mandatory; fxdp_ipv6.h derives it from the headers.
 */
#ifndef FXDP_CSUM_H
#define FXDP_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>

static __always_inline __u16 fxdp_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Checksum of an option-less IPv4 header whose check field is 0. Summing the words in memory order
 * gives the checksum in memory order too (one's complement sums are byte-order independent). */
static __always_inline __u16 fxdp_ipv4_header_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return fxdp_csum_fold(sum);
}

/* True when an option-less IPv4 header's checksum is right: the sum over all ten words, check
 * field included, folds to 0xffff. */
static __always_inline int fxdp_ipv4_header_csum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return fxdp_csum_fold(sum) == 0;
}

/* The unfolded one's complement sum of `words` 16-bit words at `p` (2-byte aligned), in memory
 * order like the rest of this file. `words` is a constant: the loop unrolls. */
static __always_inline __u32 fxdp_csum_words(const void *p, int words)
{
	const __u16 *w = p;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < words; i++)
		sum += w[i];
	return sum;
}

/* RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old` to `new` (memory order). */
static __always_inline __u16 fxdp_csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + new;
	return fxdp_csum_fold(sum);
}

#endif
