/* verifier_reject.bpf.c — test-only: reads packet data without a bounds check, so the verifier
 * refuses it; used to check that the verifier log reaches the error. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("xdp")
int xdp_unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	return data[20] == 1 ? XDP_DROP : XDP_PASS;
}
