/* fxdp_shared.h — every type the BPF programs and the Swift daemon share.
 *
 * Included by the programs in bpf/ (through -I Sources/CBPF/include) and by Swift through the CBPF module,
 * so each map key/value, the config record and the counter enum exist exactly once. Only
 * <linux/types.h> types; addresses are byte arrays in network order (bpftool prints them readably);
 * ports and VNIs are host order. Sizes are pinned below and by Swift MemoryLayout tests: changing a
 * layout means bumping FXDP_ABI_VERSION, which is part of every pin name, so an upgraded daemon
 * never reads a map written with an older layout.
 */
#ifndef FXDP_SHARED_H
#define FXDP_SHARED_H

#include <linux/types.h>

#define FXDP_ABI_VERSION 2

/* Pinned map names (under the --bpffs folder, default /sys/fs/bpf/flanneld-xdp). libbpf pins by
 * the map's own name, so these are the names the maps are declared with in bpf/. */
#define FXDP_MAP_PEERS    "fxdp_peers_v2"
#define FXDP_MAP_NODES    "fxdp_nodes_v2"
#define FXDP_MAP_CONFIG   "fxdp_config_v2"
#define FXDP_MAP_COUNTERS "fxdp_counters_v2"
#define FXDP_MAP_PEER_STATS "fxdp_peer_stats_v2"
#define FXDP_MAP_STRANGERS "fxdp_strangers_v2"
#define FXDP_MAP_LOCAL    "fxdp_local_v2"
#define FXDP_MAP_DROPS    "fxdp_drops_v2"
#define FXDP_MAP_MONITOR  "fxdp_monitor_v2"
#define FXDP_MAP_MONITOR_BUDGET "fxdp_monitor_budget_v2"
/* IPv6 (dual-stack and IPv6-only networks): maps of their own beside the IPv4 ones, whose layouts
 * stay as they are, so they carry the same ABI version. */
#define FXDP_MAP_PEERS6   "fxdp_peers6_v2"
#define FXDP_MAP_NODES6   "fxdp_nodes6_v2"
#define FXDP_MAP_CONFIG6  "fxdp_config6_v2"
#define FXDP_MAP_PEER_STATS6 "fxdp_peer_stats6_v2"

#define FXDP_MAX_PEERS 65536
#define FXDP_VXLAN_OVERHEAD 50 /* outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 */
#define FXDP_VXLAN6_OVERHEAD 70 /* outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8 */

/* fxdp_peers: LPM trie, remote pod subnet → where to send it. Written by the daemon's reconciler. */
struct fxdp_peer_key {
	__u32 prefixlen; /* LPM prefix length in bits (0..32) */
	__u8 subnet[4];  /* remote pod subnet, network order */
};

/* Peer flags. */
#define FXDP_PEER_F_DIRECT 0x1 /* DirectRouting: peer on our L2, the route sends unencapsulated (the
                                * fast path leaves its pods' packets to that route) */

struct fxdp_peer_value {
	__u8 node_ip[4];   /* the peer's PublicIP (outer destination), network order */
	__u8 vtep_mac[6];  /* the peer's VtepMAC (inner destination) */
	__u16 flags;       /* FXDP_PEER_F_* */
	__u8 source_ip[4]; /* another address the peer's VXLAN comes from (its lease's BackendData.SourceIP:
	                    * its interface address when --public-ip names another one, without NAT);
	                    * 0.0.0.0 when it sends from node_ip */
};

/* fxdp_nodes: hash, peer node address → presence. The source checks: only VXLAN from these
 * addresses is accepted. Holds every peer's node_ip and source_ip. Written by the reconciler
 * alongside fxdp_peers. */
struct fxdp_node_key {
	__u8 node_ip[4];
};

struct fxdp_node_value {
	__u32 subnets; /* how many peer subnets name this address (as node_ip or source_ip) */
};

/* IPv6 over the IPv6 underlay: flannel runs a second vxlan device, flannel-v6.<VNI>, with the same VNI
 * and port, its own VtepMAC (the lease's BackendV6Data) and the node's IPv6 address (PublicIPv6) as
 * its local address. These are the IPv6 counterparts of fxdp_peers, fxdp_nodes and fxdp_config. */

/* fxdp_peers6: LPM trie, remote IPv6 pod subnet → where to send it. */
struct fxdp_peer6_key {
	__u32 prefixlen;  /* LPM prefix length in bits (0..128) */
	__u8 subnet[16];  /* remote IPv6 pod subnet, network order */
};

struct fxdp_peer6_value {
	__u8 node_ip[16];   /* the peer's PublicIPv6 (outer destination) */
	__u8 source_ip[16]; /* another IPv6 address the peer's VXLAN comes from (as fxdp_peer_value's);
	                     * :: when it sends from node_ip */
	__u8 vtep_mac[6];   /* the VtepMAC of the peer's flannel-v6.<VNI> (inner destination) */
	__u16 flags;        /* FXDP_PEER_F_* */
};

/* fxdp_nodes6: hash, peer IPv6 address → how many IPv6 peer subnets name it (value: struct
 * fxdp_node_value). The IPv6 source checks. */
struct fxdp_node6_key {
	__u8 node_ip[16];
};

/* fxdp_config6: array of one, this node's IPv6 settings. The settings both families share (underlay
 * interface and MAC, VNI, UDP port, the inner source check, enabled) are fxdp_config's: the IPv6
 * path runs only while both are enabled. An IPv6-only node fills fxdp_config without an IPv4
 * address (node_ip 0.0.0.0, no IPv4 peers). */
struct fxdp_config6 {
	__u8 node_ip[16];       /* our IPv6 underlay address (flannel-v6.<VNI>'s local address): outer
	                         * source, and where IPv6 VXLAN is accepted */
	__u8 public_ip[16];     /* the lease's PublicIPv6 when it is another local address than node_ip:
	                         * IPv6 VXLAN is accepted there too. ::: none */
	__u8 network[16];       /* the flannel IPv6Network (the IPv6 pod network), for fxdp_pod_guard6 */
	__u8 vtep_mac[6];       /* flannel-v6.<VNI>'s MAC: inner source, and the inner destination accepted */
	__u8 network_prefixlen; /* 0: no IPv6Network known */
	__u8 outer_hop_limit;   /* outer IPv6 hop limit: the underlay's net.ipv6.conf.<dev>.hop_limit, what
	                         * the kernel device with flannel's TTL "auto" sends; 0 → 64 */
	__u32 overlay_ifindex;  /* flannel-v6.<VNI> */
	__u16 overlay_mtu;      /* flannel-v6.<VNI>'s MTU (underlay MTU - 70); 0: no size check */
	__u16 flags;            /* FXDP_CFG6_F_* */
	__u8 _reserved[32];     /* zero: room for settings whose zero value keeps today's behaviour */
};

#define FXDP_CFG6_F_ENABLED 0x1 /* filled: until set, IPv6 is passed to the kernel as before */

/* fxdp_strangers: LRU hash, outer source address of VXLAN dropped as not from a peer → how much
 * and when. Written by the programs on every not-a-peer drop; read by `status` and /readyz, which
 * point out strangers on the underlay subnet (typically a node whose traffic leaves from another
 * address than its lease's PublicIP). */
struct fxdp_stranger {
	__u64 packets;      /* dropped datagrams from this address */
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the latest (CLOCK_MONOTONIC) */
};
#define FXDP_MAX_STRANGERS 256

/* fxdp_local: hash, the MAC of a pod behind one of this node's pod bridges (cni0, docker0) → the
 * bridge port it sits behind (the host side of its veth), that bridge and its MAC. Written by the
 * daemon from the bridges' learned fdb entries of veth ports whose peer is in another network
 * namespace. The fast path finds a pod's MAC through the kernel's own neighbour table
 * (bpf_fib_lookup), so an entry left over for a MAC no one uses any more is never looked up; a pod
 * missing here takes the kernel path. */
struct fxdp_local_key {
	__u8 mac[6];
	__u8 _pad[2];
};

struct fxdp_local_value {
	__u32 port_ifindex;   /* host side of the pod's veth: bpf_redirect_peer hands the pod its packet */
	__u32 bridge_ifindex; /* the bridge that port belongs to */
	__u8 bridge_mac[6];   /* its MAC: what the pod sends routed traffic to */
	__u8 _pad[2];
};
#define FXDP_MAX_LOCAL 4096

/* What fxdp_decap_xdp leaves in the XDP metadata area in front of a frame it decapsulated, for
 * fxdp_decap_steer at TC ingress of the same interface. Only an XDP program can write metadata, so
 * the mark cannot come from the wire. */
struct fxdp_xdp_meta {
	__u32 magic; /* FXDP_XDP_META_MAGIC */
	__u32 flags; /* FXDP_META_F_* */
};
#define FXDP_XDP_META_MAGIC 0xf1a77e11u
#define FXDP_META_F_SOURCE_IN_SUBNET 0x1 /* the inner source lies in a subnet of the sending peer */
#define FXDP_META_F_IPV6 0x2             /* IPv6 VXLAN over the IPv6 underlay: for flannel-v6.<VNI> */

/* fxdp_config: array of one, the node's own settings. Written by the daemon at start-up. */
struct fxdp_config {
	__u8 node_ip[4];          /* our --iface address: outer source, and where VXLAN is accepted */
	__u8 vtep_mac[6];         /* our VtepMAC: inner source, and inner dst we accept */
	__u16 udp_port;           /* VXLAN UDP port, host order (flannel: 8472) */
	__u32 vni;                /* host order (flannel: 1) */
	__u32 underlay_ifindex;   /* the --iface interface the encapsulated packet leaves by */
	__u32 overlay_ifindex;    /* flannel.<VNI> */
	__u16 overlay_mtu;        /* underlay MTU - 50 */
	__u16 flags;              /* FXDP_CFG_F_* */
	__u8 underlay_mac[6];     /* the underlay interface's MAC */
	__u8 outer_ttl;           /* outer IPv4 TTL: net.ipv4.ip_default_ttl of the node's network
	                           * namespace, what the kernel vxlan device with flannel's TTL "auto"
	                           * sends; 0 → 64 */
	__u8 network_prefixlen;   /* the flannel Network (the pod network), for fxdp_pod_guard */
	__u8 network[4];          /* network order */
	__u8 public_ip[4];        /* the lease's PublicIP when it is another local address than node_ip
	                           * (--public-ip without NAT): VXLAN is accepted there too. 0.0.0.0: none */
	__u8 _reserved[20];       /* zero: room for settings whose zero value keeps today's behaviour */
};

#define FXDP_CFG_F_ENABLED 0x1            /* config filled: until set, programs pass everything to the kernel */
#define FXDP_CFG_F_INNER_SOURCE_CHECK 0x2 /* decap: the inner source must lie in a subnet of the sending
                                           * peer (or be that peer's own address) */
#define FXDP_CFG_F_FAST_PATH 0x4          /* established flows skip the stacks: encap at the pod bridge,
                                           * delivery straight into the pod (docs/BPF-DATAPATH.md) */
#define FXDP_CFG_F_CT_TCP_LIBERAL 0x8     /* net.netfilter.nf_conntrack_tcp_be_liberal is 1 here: conntrack
                                           * accepts TCP packets whose sequence numbers it did not follow,
                                           * so TCP may skip it (the fast path takes TCP only then) */

/* fxdp_counters: per-CPU array indexed by enum fxdp_counter, value fxdp_count. Codes are stable:
 * never renumber, only append (a dashboard keyed by number must keep meaning the same thing).
 * Every packet a program sees bumps exactly one counter; `packets` counts what the program saw
 * (a GSO super-packet is one), `bytes` its length as the program received it.
 * The verdict table in bpf/flanneld_xdp.bpf.c says which verdict goes with each code. */
enum fxdp_counter {
	/* encap (TC egress on flannel.<VNI>) */
	FXDP_C_ENCAP_OK = 0,             /* encapsulated, next hop from bpf_fib_lookup, bpf_redirect */
	FXDP_C_ENCAP_PASS_NOT_IPV4 = 1,  /* not IPv4: left to the kernel vxlan device */
	FXDP_C_ENCAP_PASS_NO_PEER = 2,   /* no peer for the destination: left to the kernel */
	FXDP_C_ENCAP_PASS_DISABLED = 3,  /* config not filled yet: left to the kernel */
	FXDP_C_ENCAP_DROP_MALFORMED = 4, /* truncated IPv4 header, bad version or IHL */
	FXDP_C_ENCAP_DROP_ADJUST = 5,    /* bpf_skb_store_bytes failed after the room was made */
	FXDP_C_ENCAP_PASS_FIB = 6,       /* bpf_fib_lookup gave no next hop (no route to the peer node,
	                                  * forwarding off on the underlay): left to the kernel device */
	FXDP_C_ENCAP_PASS_TOO_BIG = 7,   /* non-GSO longer than the overlay MTU, or > 64 KiB once
	                                  * encapsulated: left to the kernel, which handles it as flannel */
	FXDP_C_ENCAP_OK_NEIGH = 8,       /* encapsulated, next hop unresolved, came by the covering route: bpf_redirect_neigh */
	FXDP_C_ENCAP_PASS_ADJUST = 9,    /* bpf_skb_adjust_room refused (skb already encapsulated, no
	                                  * memory), packet unchanged: left to the kernel */
	FXDP_C_ENCAP_PASS_NO_NEIGH = 10, /* the peer node's MAC is not resolved yet: left to the kernel
	                                  * device, whose send resolves it for the next packets */
	/* IPv6 encap (TC egress on flannel-v6.<VNI>). Its other verdicts mean what they mean for IPv4 and
	 * share the codes above: ENCAP_PASS_DISABLED (fxdp_config or fxdp_config6 not enabled),
	 * ENCAP_DROP_MALFORMED (IPv6 header truncated, version != 6), ENCAP_PASS_NO_PEER,
	 * ENCAP_PASS_TOO_BIG, ENCAP_PASS_FIB, ENCAP_PASS_NO_NEIGH, ENCAP_PASS_ADJUST, ENCAP_DROP_ADJUST. */
	FXDP_C_ENCAP6_OK = 11,           /* encapsulated in IPv6/UDP/VXLAN, bpf_redirect to the underlay */
	FXDP_C_ENCAP6_PASS_GSO = 12,     /* a GSO super-packet: each IPv6 segment needs its own UDP checksum,
	                                  * which only the kernel device's segmentation writes
	                                  * (bpf_skb_adjust_room marks a tunnel without checksum): left to
	                                  * flannel-v6.<VNI> */
	FXDP_C_ENCAP6_PASS_CSUM = 13,    /* the outer UDP checksum cannot be derived from the headers (inner
	                                  * not TCP, UDP or ICMPv6 right after its IPv6 header, UDP without
	                                  * checksum, a payload length that is not the packet's): left to
	                                  * the kernel device */
	FXDP_C_ENCAP6_PASS_NOT_IPV6 = 14,/* on flannel-v6.<VNI>, not IPv6: left to the kernel device */
	/* IPv6 decap. Its other verdicts share the IPv4 decap's codes (the verdict table in
	 * bpf/flanneld_xdp.bpf.c lists which). */
	FXDP_C_DECAP6_OK = 15,           /* XDP: IPv6 VXLAN stripped, marked for the steer */

	/* decap (XDP on the underlay, or the TC-ingress source check in front of kernel decap) */
	FXDP_C_DECAP_OK = 16,             /* XDP: outer headers stripped, inner packet passed up */
	FXDP_C_DECAP_CHECK_OK = 17,       /* TC check: valid VXLAN from a peer, left to kernel decap */
	FXDP_C_DECAP_PASS_NOT_VXLAN = 18, /* IPv4 but not UDP to our VXLAN port: untouched */
	FXDP_C_DECAP_PASS_DISABLED = 19,  /* config not filled yet: untouched */
	FXDP_C_DECAP_DROP_NOT_PEER = 20,  /* VXLAN from a source that is not a known peer node */
	FXDP_C_DECAP_DROP_BAD_VNI = 21,   /* VXLAN with another VNI, without the I flag, or reserved bits set */
	FXDP_C_DECAP_DROP_MALFORMED = 22, /* truncated outer IPv4/UDP/VXLAN/inner headers, bad version or IHL */
	FXDP_C_DECAP_DROP_FRAGMENT = 23,  /* outer IPv4 first fragment of a datagram to our VXLAN port */
	FXDP_C_DECAP_DROP_IP_OPTIONS = 24,/* outer IPv4 with options on a datagram to our VXLAN port */
	FXDP_C_DECAP_DROP_INNER_NOT_OURS = 25, /* inner Ethernet destination is not our VtepMAC */
	FXDP_C_DECAP_DROP_ADJUST = 26,    /* bpf_xdp_adjust_head failed */
	FXDP_C_DECAP_PASS_FRAGMENT = 27,  /* outer non-first fragment: cannot be classified, untouched */
	FXDP_C_DECAP_PASS_NOT_IPV4 = 28,  /* Ethernet type not IPv4 (ARP, IPv6, ...): untouched */
	FXDP_C_DECAP_PASS_VLAN = 29,      /* 802.1Q/802.1ad tagged: belongs to a VLAN device, untouched */
	FXDP_C_DECAP_PASS_SHORT = 30,     /* shorter than an Ethernet header: left to the kernel (drops it) */
	FXDP_C_DECAP_DROP_INNER_NOT_IPV4 = 31, /* inner Ethernet type is not IPv4 */
	FXDP_C_DECAP_PASS_OTHER_HOST = 32, /* UDP to our port but to another IP: untouched (transit is
	                                    * routed on; another local address meets fxdp_vxlan_door) */
	FXDP_C_DECAP_DROP_INNER_SOURCE = 33, /* inner IPv4 source in no subnet of the sending peer and not
	                                      * its own address: a peer impersonating another node's pods */
	FXDP_C_DECAP_DROP_LOOP = 34,      /* inner Ethernet source is our own VtepMAC (vxlan_rcv drops loops) */
	FXDP_C_DECAP_DROP_OUTER_CSUM = 35,/* outer IPv4 header checksum wrong (ip_rcv would drop it) */
	FXDP_C_DECAP_DROP_ECN = 36,       /* outer CE on a not-ECT inner packet (IP_ECN_decapsulate drops it) */
	FXDP_C_DECAP_FRAGMENT_OK = 37,    /* outer first fragment from a peer, every header checked: left to
	                                   * the kernel's reassembly, fxdp_vxlan_door and kernel decap */
	FXDP_C_DECAP_STEER_OK = 38,       /* TC steer: a frame fxdp_decap_xdp decapsulated, redirected into
	                                   * flannel.<VNI>'s ingress (routing and rp_filter see the overlay) */
	FXDP_C_DECAP6_CHECK_OK = 39,      /* IPv6 VXLAN from a peer, left to flannel-v6.<VNI>'s decap (TC
	                                   * check; XDP on a driver without metadata) */
	FXDP_C_DECAP6_STEER_OK = 40,      /* TC steer: IPv6 VXLAN fxdp_decap_xdp decapsulated, redirected
	                                   * into flannel-v6.<VNI>'s ingress */
	FXDP_C_DECAP6_DROP_INNER_NOT_IPV6 = 41, /* IPv6 VXLAN whose inner Ethernet type is not IPv6 */
	FXDP_C_DECAP6_DROP_UDP_ZERO_CSUM = 42,  /* IPv6 VXLAN with UDP checksum 0: flannel-v6.<VNI> (no
	                                         * udp6zerocsumrx) drops every one */
	FXDP_C_DECAP6_PASS_EXT_HEADERS = 43,    /* IPv6 with extension headers other than one fragment header
	                                         * before its payload: untouched (flannel never sends them; if
	                                         * it is VXLAN for us, fxdp_vxlan_door6 drops it) */
	/* fxdp_vxlan_door6 and fxdp_pod_guard6: the IPv6 netfilter doors, as 48-51 for IPv4. */
	FXDP_C_DOOR6_OK = 44,             /* through the underlay, to the node's IPv6 address, from a peer */
	FXDP_C_DOOR6_DROP_NOT_PEER = 45,  /* from an address that is not an IPv6 peer node */
	FXDP_C_DOOR6_DROP_WRONG_DOOR = 46,/* from a peer, but on another interface, to another local address,
	                                   * or behind extension headers (or a chain longer than the door reads) */
	FXDP_C_GUARD6_DROP_POD_VXLAN = 47,/* forwarded from the IPv6 pod network to a VXLAN port outside it */
	/* fxdp_vxlan_door (netfilter LOCAL_IN): every datagram to our VXLAN port that is about to be
	 * delivered locally — to any local address, from any interface, unicast or broadcast, after
	 * reassembly — which is everything that can reach the kernel's vxlan socket. It counts only
	 * datagrams to our port. */
	FXDP_C_DOOR_OK = 48,              /* through the underlay, to the node IP, from a peer node: delivered */
	FXDP_C_DOOR_DROP_NOT_PEER = 49,   /* from an address that is not a peer node */
	FXDP_C_DOOR_DROP_WRONG_DOOR = 50, /* from a peer, but on another interface than the underlay or to
	                                   * another local address (cni0, flannel.<VNI>, loopback, broadcast) */
	/* fxdp_pod_guard (netfilter FORWARD): forwarded datagrams to our VXLAN port. */
	FXDP_C_GUARD_DROP_POD_VXLAN = 51, /* from the pod network to a VXLAN port outside it: pods are never
	                                   * peers, even when masquerade gives them a node's address */

	/* The fast path (FXDP_CFG_F_FAST_PATH): packets of established flows skip both nodes' stacks.
	 * fxdp_fast_encap (TC ingress of a pod bridge) counts every packet it sees; the decap programs
	 * count a valid VXLAN packet under FAST_DECAP_* instead of DECAP_CHECK_OK / DECAP_STEER_OK
	 * while the fast path is on. A *_PASS_* packet takes the kernel path, unchanged. */
	FXDP_C_FAST_ENCAP_OK = 52,           /* encapsulated at the bridge, straight to the underlay */
	FXDP_C_FAST_ENCAP_PASS_OFF = 53,     /* fast path off (or config not filled) */
	FXDP_C_FAST_ENCAP_PASS_NOT_POD = 54, /* not IPv4 to the bridge's MAC from a pod in fxdp_local, on its
	                                      * port or its bridge */
	FXDP_C_FAST_ENCAP_PASS_NOT_PEER = 55,/* destination in no peer's subnet (the host, a local pod, the
	                                      * world: routing, masquerade and the rest are the kernel's), or
	                                      * a DirectRouting peer's (routed unencapsulated) */
	FXDP_C_FAST_ENCAP_PASS_CONNTRACK = 56, /* not (yet) a flow conntrack vouches for: not TCP/UDP, a SYN,
	                                        * no confirmed and answered entry, NAT, TCP not established
	                                        * or not liberal (docs/BPF-DATAPATH.md "The fast path") */
	FXDP_C_FAST_ENCAP_PASS_LIMITS = 57,  /* IP options, a fragment, TTL <= 1, over the overlay MTU, the
	                                      * peer node not routable or its MAC unresolved, adjust_room
	                                      * refused: the kernel answers (ICMP, fragments, ARP) */
	FXDP_C_FAST_DECAP_OK = 58,           /* inner packet handed straight to the pod (bpf_redirect_peer) */
	FXDP_C_FAST_DECAP_PASS_NOT_POD = 59, /* inner destination not a pod behind one of our bridges (by the
	                                      * kernel's route and neighbour, and fxdp_local) */
	FXDP_C_FAST_DECAP_PASS_CONNTRACK = 60, /* as FAST_ENCAP_PASS_CONNTRACK, for the inner packet */
	FXDP_C_FAST_DECAP_PASS_LIMITS = 61,  /* inner options, fragment, TTL <= 1, over the bridge MTU, UDP
	                                      * GSO, pod MAC unresolved, inner source not in the sender's
	                                      * subnets, adjust_room refused */
	FXDP_C_FAST_ENCAP_PASS_IPV6 = 62,    /* IPv6: the fast path is IPv4-only, IPv6 takes the kernel path */

	FXDP_C_MAX = 64
};

/* The counters whose packets were dropped, one bit per code (FXDP_C_MAX is 64): the programs pick
 * their verdict from it and userspace labels drops by it, so the two cannot disagree. A constant
 * shift, not a switch: a switch may compile to a jump table in .rodata, an extra map per load that
 * would defeat the "same program" check on restart. */
#define FXDP_COUNTER_BIT(code) (1ull << (code))
#define FXDP_DROP_COUNTERS                                                                                   \
	(FXDP_COUNTER_BIT(FXDP_C_ENCAP_DROP_MALFORMED) | FXDP_COUNTER_BIT(FXDP_C_ENCAP_DROP_ADJUST) |             \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_NOT_PEER) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_BAD_VNI) |             \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_MALFORMED) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_FRAGMENT) |           \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_IP_OPTIONS) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_INNER_NOT_OURS) |    \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_ADJUST) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_INNER_NOT_IPV4) |        \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_INNER_SOURCE) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_LOOP) |            \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_OUTER_CSUM) | FXDP_COUNTER_BIT(FXDP_C_DECAP_DROP_ECN) |               \
	 FXDP_COUNTER_BIT(FXDP_C_DOOR_DROP_NOT_PEER) | FXDP_COUNTER_BIT(FXDP_C_DOOR_DROP_WRONG_DOOR) |            \
	 FXDP_COUNTER_BIT(FXDP_C_GUARD_DROP_POD_VXLAN) | FXDP_COUNTER_BIT(FXDP_C_DECAP6_DROP_INNER_NOT_IPV6) |      \
	 FXDP_COUNTER_BIT(FXDP_C_DECAP6_DROP_UDP_ZERO_CSUM) | FXDP_COUNTER_BIT(FXDP_C_DOOR6_DROP_NOT_PEER) |       \
	 FXDP_COUNTER_BIT(FXDP_C_DOOR6_DROP_WRONG_DOOR) | FXDP_COUNTER_BIT(FXDP_C_GUARD6_DROP_POD_VXLAN))

static inline int fxdp_counter_is_drop(__u32 code)
{
	return code < FXDP_C_MAX && ((FXDP_DROP_COUNTERS >> code) & 1);
}

struct fxdp_count {
	__u64 packets;
	__u64 bytes;
};

/* fxdp_peer_stats: per-CPU hash, peer node IP (struct fxdp_node_key) → what BPF carried to and
 * from that node. Written by the programs (an entry appears with a node's first packet); entries
 * of nodes no longer in fxdp_nodes are deleted by the daemon. Packets left to the kernel path
 * (the *_pass_* counters) are not in it. `tx_*`: encapsulated to the node (inner length);
 * `rx_*`: accepted from the node by decap (outer length, as the program received it).
 * fxdp_peer_stats6 is the same for IPv6 peer addresses (key struct fxdp_node6_key). */
struct fxdp_peer_stats {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
};

/* fxdp_drops: ring buffer of dropped packets for `flanneld-xdp monitor`. A program writes one event
 * per drop only while a monitor listens (fxdp_monitor's deadline lies ahead) and the CPU's budget
 * for the current second is not spent: with nobody listening a drop costs one array lookup more. The
 * sample is the packet's first bytes, from the Ethernet header (TC, XDP) or the IPv4 header
 * (netfilter hooks); userspace parses it. */
#define FXDP_DROPS_RING_BYTES (256 * 1024)
#define FXDP_DROP_SAMPLE 128
#define FXDP_DROP_F_SAMPLE_L3 0x1 /* the sample starts at the IP header (no Ethernet): IPv4 or IPv6, as
                                   * its version says */
struct fxdp_drop_event {
	__u64 time_ns;    /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 reason;     /* enum fxdp_counter: the counter the drop was counted under */
	__u32 ifindex;    /* the interface it arrived on (0: unknown) */
	__u32 packet_len; /* the whole packet's length */
	__u16 sample_len; /* bytes of sample[] filled */
	__u8 flags;       /* FXDP_DROP_F_* */
	__u8 _pad;
	__u8 sample[FXDP_DROP_SAMPLE];
};

/* fxdp_monitor: array[1], written by `flanneld-xdp monitor` (a heartbeat each second). */
struct fxdp_monitor {
	__u64 listen_until_ns;  /* bpf_ktime_get_ns() deadline: events are written until then */
	__u32 events_per_second; /* per CPU; the rest of a second's drops are only counted */
	__u32 _pad;
};

/* fxdp_monitor_budget: per-CPU array[1], the programs' own bookkeeping of that rate. */
struct fxdp_monitor_budget {
	__u64 second;     /* bpf_ktime_get_ns() / 1e9 of the current window */
	__u32 written;    /* events written in that second */
	__u32 suppressed; /* drops past the budget, since the map was created (never reset) */
};

#ifdef __cplusplus
#define FXDP_STATIC_ASSERT static_assert
#else
#define FXDP_STATIC_ASSERT _Static_assert
#endif
FXDP_STATIC_ASSERT(sizeof(struct fxdp_peer_key) == 8, "fxdp_peer_key layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_peer_value) == 16, "fxdp_peer_value layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_node_key) == 4, "fxdp_node_key layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_node_value) == 4, "fxdp_node_value layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_config) == 64, "fxdp_config layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_count) == 16, "fxdp_count layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_peer_stats) == 32, "fxdp_peer_stats layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_stranger) == 16, "fxdp_stranger layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_xdp_meta) == 8, "fxdp_xdp_meta layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_local_key) == 8, "fxdp_local_key layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_local_value) == 16, "fxdp_local_value layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_drop_event) == 152, "fxdp_drop_event layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_monitor) == 16, "fxdp_monitor layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_monitor_budget) == 16, "fxdp_monitor_budget layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_peer6_key) == 20, "fxdp_peer6_key layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_peer6_value) == 40, "fxdp_peer6_value layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_node6_key) == 16, "fxdp_node6_key layout");
FXDP_STATIC_ASSERT(sizeof(struct fxdp_config6) == 96, "fxdp_config6 layout");

#endif /* FXDP_SHARED_H */
