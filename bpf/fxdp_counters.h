/* fxdp_counters.h — one place that bumps the per-CPU counters (enum fxdp_counter in fxdp_shared.h).
 * Each program calls fxdp_count exactly once per packet, on the path that decides its verdict; the
 * entry points are written as "return fxdp_count_verdict(code, len, verdict)" so that is visible. */
#ifndef FXDP_COUNTERS_H
#define FXDP_COUNTERS_H

#include "fxdp_maps.h"

static __always_inline void fxdp_count(__u32 code, __u64 bytes)
{
	struct fxdp_count *c = bpf_map_lookup_elem(&fxdp_counters_v1, &code);
	if (c) {
		/* Per-CPU slot: no other CPU writes it, and BPF programs do not nest on one CPU for the
		 * same hook, so a plain add is exact. */
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline int fxdp_count_verdict(__u32 code, __u64 bytes, int verdict)
{
	fxdp_count(code, bytes);
	return verdict;
}

#endif
