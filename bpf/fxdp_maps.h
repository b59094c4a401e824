/* fxdp_maps.h — the maps every flanneld-xdp program shares, one block each: key → value, and who
 * writes it. All are pinned by name (LIBBPF_PIN_BY_NAME) under the daemon's bpffs folder, so they
 * outlive the daemon and a restart reuses them; the names carry the ABI version (fxdp_shared.h). */
#ifndef FXDP_MAPS_H
#define FXDP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fxdp_shared.h"

/* Remote pod subnet (LPM) → peer node IP + VtepMAC. Writer: the daemon's reconciler. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FXDP_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fxdp_peer_key);
	__type(value, struct fxdp_peer_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_peers_v2 SEC(".maps");

/* Peer node address (PublicIP, and SourceIP where a peer publishes one) → how many subnets name
 * it: the source checks. Writer: the reconciler, with fxdp_peers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FXDP_MAX_PEERS);
	__type(key, struct fxdp_node_key);
	__type(value, struct fxdp_node_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_nodes_v2 SEC(".maps");

/* Index 0 → this node's settings. Writer: the daemon at start-up (and on config change). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fxdp_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_config_v2 SEC(".maps");

/* enum fxdp_counter → packets/bytes, per CPU. Writer: the programs; the daemon sums across CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FXDP_C_MAX);
	__type(key, __u32);
	__type(value, struct fxdp_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_counters_v2 SEC(".maps");

/* Peer node IP → packets/bytes BPF carried to and from it, per CPU. Writer: the programs add
 * entries; the daemon deletes those of departed nodes. Not preallocated: sized by the peers present. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FXDP_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fxdp_node_key);
	__type(value, struct fxdp_peer_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_peer_stats_v2 SEC(".maps");

/* Outer source of VXLAN dropped as not from a peer → packets, last seen. Writer: the programs on
 * not-a-peer drops (LRU: a flood of spoofed sources only recycles entries). Reader: `status`,
 * /readyz. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FXDP_MAX_STRANGERS);
	__type(key, struct fxdp_node_key);
	__type(value, struct fxdp_stranger);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_strangers_v2 SEC(".maps");

/* Pod MAC → its bridge port and bridge: where the fast path delivers, and which ports it takes
 * packets from. Writer: the daemon, from the pod bridges' fdb. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FXDP_MAX_LOCAL);
	__type(key, struct fxdp_local_key);
	__type(value, struct fxdp_local_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_local_v2 SEC(".maps");

/* Dropped packets for `flanneld-xdp monitor` (fxdp_shared.h). Writer: the programs; reader: monitor. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FXDP_DROPS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_drops_v2 SEC(".maps");

/* Whether a monitor listens, and how many events per second and CPU it takes. Writer: monitor. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fxdp_monitor);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_monitor_v2 SEC(".maps");

/* Each CPU's events this second, and drops past the budget. Writer: the programs; `monitor` reports
 * the suppressed ones. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fxdp_monitor_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_monitor_budget_v2 SEC(".maps");

/* The IPv6 counterparts (flannel-v6.<VNI>), same writers as above. */

/* Remote IPv6 pod subnet (LPM) → peer PublicIPv6 + VtepMAC of its flannel-v6.<VNI>. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FXDP_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fxdp_peer6_key);
	__type(value, struct fxdp_peer6_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_peers6_v2 SEC(".maps");

/* Peer IPv6 address → how many IPv6 subnets name it: the IPv6 source checks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FXDP_MAX_PEERS);
	__type(key, struct fxdp_node6_key);
	__type(value, struct fxdp_node_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_nodes6_v2 SEC(".maps");

/* Index 0 → this node's IPv6 settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fxdp_config6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_config6_v2 SEC(".maps");

/* Peer IPv6 address → packets/bytes BPF carried to and from it, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FXDP_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fxdp_node6_key);
	__type(value, struct fxdp_peer_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fxdp_peer_stats6_v2 SEC(".maps");

#endif
