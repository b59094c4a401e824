/* fxdp_counters.h — one place that bumps the per-CPU counters (enum fxdp_counter in fxdp_shared.h).
 * Each program calls fxdp_count exactly once per packet, on the path that decides its verdict; the
 * entry points are written as "return fxdp_count_verdict(code, len, verdict)" so that is visible. */
#ifndef FXDP_COUNTERS_H
#define FXDP_COUNTERS_H

#include "fxdp_maps.h"

static __always_inline void fxdp_count(__u32 code, __u64 bytes)
{
	struct fxdp_count *c = bpf_map_lookup_elem(&fxdp_counters_v2, &code);
	if (c) {
		/* Per-CPU slot: no other CPU writes it, and BPF programs do not nest on one CPU for the
		 * same hook, so a plain add is exact. */
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* Per peer node, for what BPF itself carried (encap OK, decap OK/check OK), in `map`
 * (fxdp_peer_stats_v2 or fxdp_peer_stats6_v2, keyed by the node's address). A node's first packet
 * creates its entry; if the map is full the packet is still carried, only not counted per peer. */
static __always_inline void fxdp_count_peer_in(void *map, const void *node, __u64 bytes, int received)
{
	struct fxdp_peer_stats *s = bpf_map_lookup_elem(map, node);
	if (!s) {
		struct fxdp_peer_stats zero = {};
		bpf_map_update_elem(map, node, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(map, node);
		if (!s)
			return;
	}
	if (received) {
		s->rx_packets += 1;
		s->rx_bytes += bytes;
	} else {
		s->tx_packets += 1;
		s->tx_bytes += bytes;
	}
}

static __always_inline void fxdp_count_peer(const struct fxdp_node_key *node, __u64 bytes, int received)
{
	fxdp_count_peer_in(&fxdp_peer_stats_v2, node, bytes, received);
}

static __always_inline void fxdp_count_peer6(const struct fxdp_node6_key *node, __u64 bytes, int received)
{
	fxdp_count_peer_in(&fxdp_peer_stats6_v2, node, bytes, received);
}

/* Remembers the outer source of a datagram dropped as not from a peer (fxdp_strangers): `status`
 * and /readyz name strangers that sit on the underlay subnet. */
static __always_inline void fxdp_note_stranger(const struct fxdp_node_key *source)
{
	__u64 now = bpf_ktime_get_ns();
	struct fxdp_stranger *s = bpf_map_lookup_elem(&fxdp_strangers_v2, source);
	if (s) {
		__sync_fetch_and_add(&s->packets, 1);
		s->last_seen_ns = now;
		return;
	}
	struct fxdp_stranger first = { .packets = 1, .last_seen_ns = now };
	bpf_map_update_elem(&fxdp_strangers_v2, source, &first, BPF_ANY);
}

static __always_inline int fxdp_count_verdict(__u32 code, __u64 bytes, int verdict)
{
	fxdp_count(code, bytes);
	return verdict;
}

#endif
