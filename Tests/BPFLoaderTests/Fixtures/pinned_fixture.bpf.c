/* pinned_fixture.bpf.c — test-only: a map libbpf pins by name under the object's pin root, used to
 * check that reopening reuses the pinned map and its contents. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} fx_pinned SEC(".maps");

SEC("xdp")
int xdp_pinned(struct xdp_md *ctx)
{
	__u32 key = 1;
	__u64 *v = bpf_map_lookup_elem(&fx_pinned, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	return XDP_PASS;
}
