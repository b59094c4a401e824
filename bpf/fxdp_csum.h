/* fxdp_csum.h — checksum helpers. Only the outer IPv4 header checksum is computed here: the encap
 * writes a fresh 20-byte header, so a full sum over ten 16-bit words is cheaper and clearer than an
 * incremental update. (The outer UDP checksum is left 0, legal for IPv4: see the encap notes.)
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

#endif
