/* foreign.bpf.c — test-only: stands for another agent's programs, attached with the ip/tc CLI, so
 * tests can show BPFLoader leaves what is not its own. No maps (tc/ip load it without bpffs). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int foreign_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int foreign_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}
