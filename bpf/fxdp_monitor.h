/* fxdp_monitor.h — dropped packets for `flanneld-xdp monitor`, as they happen.
 *
 * Every drop is counted (fxdp_counters.h); this adds a sample of the packet to the fxdp_drops ring
 * buffer, but only while a monitor listens (its heartbeat keeps fxdp_monitor's deadline ahead) and
 * within a per-CPU budget of events per second, so a flood of garbage costs the monitor nothing it
 * did not ask for and costs the data path one array lookup per drop when nobody listens. */
#ifndef FXDP_MONITOR_H
#define FXDP_MONITOR_H

#include <linux/pkt_cls.h>
#include "fxdp_maps.h"
#include "fxdp_netfilter.h"

/* Room in the ring for one event, or NULL when nobody listens or this CPU's budget is spent. */
static __always_inline struct fxdp_drop_event *fxdp_drop_event_reserve(__u32 reason, __u32 ifindex, __u32 packet_len)
{
	__u32 zero = 0;
	const struct fxdp_monitor *m = bpf_map_lookup_elem(&fxdp_monitor_v2, &zero);
	if (!m || !m->listen_until_ns)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now > m->listen_until_ns)
		return 0;
	struct fxdp_monitor_budget *b = bpf_map_lookup_elem(&fxdp_monitor_budget_v2, &zero);
	if (!b)
		return 0;
	__u64 second = now / 1000000000ull;
	if (b->second != second) {
		b->second = second;
		b->written = 0;
	}
	if (b->written >= m->events_per_second) {
		b->suppressed += 1;
		return 0;
	}
	struct fxdp_drop_event *e = bpf_ringbuf_reserve(&fxdp_drops_v2, sizeof(*e), 0);
	if (!e) {
		b->suppressed += 1; /* the monitor is not keeping up */
		return 0;
	}
	b->written += 1;
	e->time_ns = now;
	e->reason = reason;
	e->ifindex = ifindex;
	e->packet_len = packet_len;
	e->sample_len = 0;
	e->flags = 0;
	e->_pad = 0;
	return e;
}

/* How many bytes of a `len`-byte packet go into the sample, bounded for the verifier. */
static __always_inline __u32 fxdp_drop_sample_len(__u64 len)
{
	__u32 n = len < FXDP_DROP_SAMPLE ? (__u32)len : FXDP_DROP_SAMPLE;
	return n & (2 * FXDP_DROP_SAMPLE - 1);
}

/* A drop at a TC hook: the sample starts at the Ethernet header. */
static __always_inline void fxdp_report_drop_skb(struct __sk_buff *skb, __u32 reason)
{
	struct fxdp_drop_event *e = fxdp_drop_event_reserve(reason, skb->ifindex, skb->len);
	if (!e)
		return;
	__u32 n = fxdp_drop_sample_len(skb->len);
	if (n > 0 && n <= FXDP_DROP_SAMPLE && bpf_skb_load_bytes(skb, 0, e->sample, n) == 0)
		e->sample_len = n;
	bpf_ringbuf_submit(e, 0);
}

/* A drop at XDP: the sample starts at the Ethernet header. `len` is the frame's length, as the
 * program computed it from its packet pointers (reading ctx->data here again would spill a packet
 * pointer the verifier refuses to track). */
static __always_inline void fxdp_report_drop_xdp(struct xdp_md *ctx, __u64 len, __u32 reason)
{
	struct fxdp_drop_event *e = fxdp_drop_event_reserve(reason, ctx->ingress_ifindex, len);
	if (!e)
		return;
	__u32 n = fxdp_drop_sample_len(len);
	if (n > 0 && n <= FXDP_DROP_SAMPLE && bpf_xdp_load_bytes(ctx, 0, e->sample, n) == 0)
		e->sample_len = n;
	bpf_ringbuf_submit(e, 0);
}

/* A drop at a netfilter hook: the skb starts at the IPv4 header. */
static __always_inline void fxdp_report_drop_nf(struct bpf_dynptr *packet, __u64 len, __u32 ifindex, __u32 reason)
{
	struct fxdp_drop_event *e = fxdp_drop_event_reserve(reason, ifindex, len);
	if (!e)
		return;
	__u32 n = fxdp_drop_sample_len(len);
	if (n > 0 && n <= FXDP_DROP_SAMPLE && bpf_dynptr_read(e->sample, n, packet, 0, 0) == 0)
		e->sample_len = n;
	e->flags = FXDP_DROP_F_SAMPLE_L3;
	bpf_ringbuf_submit(e, 0);
}

/* A drop at a netfilter hook, counted and reported. */
static __always_inline int fxdp_nf_drop(struct bpf_dynptr *packet, __u64 len, __u32 ifindex, __u32 reason)
{
	fxdp_report_drop_nf(packet, len, ifindex, reason);
	return fxdp_count_verdict(reason, len, FXDP_NF_DROP);
}

/* Counts a drop and reports it: the drop paths' form of fxdp_count_verdict. */
static __always_inline int fxdp_drop_skb(struct __sk_buff *skb, __u32 reason, __u64 len, int verdict)
{
	fxdp_report_drop_skb(skb, reason);
	return fxdp_count_verdict(reason, len, verdict);
}

/* The verdict of a decap program for `code`, a classification that is not "valid VXLAN for us":
 * a drop code drops (counted and reported), any other passes (counted). */
static __always_inline int fxdp_xdp_verdict(struct xdp_md *ctx, __u32 code, __u64 len)
{
	if (!fxdp_counter_is_drop(code))
		return fxdp_count_verdict(code, len, XDP_PASS);
	fxdp_report_drop_xdp(ctx, len, code);
	return fxdp_count_verdict(code, len, XDP_DROP);
}

static __always_inline int fxdp_tc_verdict(struct __sk_buff *skb, __u32 code, __u64 len)
{
	if (fxdp_counter_is_drop(code))
		return fxdp_drop_skb(skb, code, len, TC_ACT_SHOT);
	return fxdp_count_verdict(code, len, TC_ACT_OK);
}

#endif
