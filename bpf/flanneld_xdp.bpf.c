/* placeholder: the data path programs land here (issue 2). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "fxdp_maps.h"

SEC("tc")
int fxdp_encap(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int fxdp_decap(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
