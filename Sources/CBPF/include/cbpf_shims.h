/* cbpf_shims.h — small C functions for what Swift cannot import directly. Prefixed cbpf_. */
#ifndef CBPF_SHIMS_H
#define CBPF_SHIMS_H

#include <stddef.h>
#include <stdint.h>

/* setns(2) on the calling thread; returns 0 or -errno. Glibc's module does not expose it. */
int cbpf_setns_net(int fd);
/* unshare(CLONE_NEWNET) on the calling thread; returns 0 or -errno. */
int cbpf_unshare_net(void);

/* userspace data path */
/* One UDP datagram in a batch. `data` points into a buffer the caller owns (preallocated, reused).
 * recv: `len` is the capacity on input and the received length on output, `addr`/`port` the
 * sender; send: `len` is the length, `addr`/`port` the destination. `addr` holds the 4 address
 * bytes in network order (as in struct in_addr); `port` is host order. `segment` is the UDP GSO
 * segment size to send with (0 = one datagram) or the GRO segment size the kernel reported. */
struct cbpf_dgram {
	uint8_t *data;
	uint32_t len;
	uint32_t addr;
	uint16_t port;
	uint16_t segment;
	uint8_t truncated; /* recv: 1 when MSG_TRUNC was set (datagram larger than the buffer) */
	uint8_t tos;       /* recv: the outer IPv4 TOS byte (IP_RECVTOS), for the ECN copy; send: the
	                    * outer TOS to send with (IP_TOS), 0 for the socket's */
	uint16_t _pad;
};
#define CBPF_DGRAM_BATCH_MAX 64
/* A UDP socket bound to addr:port (addr network order), SO_REUSEPORT when `reuseport`, UDP_GRO when
 * `gro`, buffers of `bufsize` bytes when > 0, IP_PMTUDISC_DONT (outer DF clear, as kernel vxlan),
 * IP_RECVTOS (each received datagram reports its TOS).
 * Returns the fd or -errno. */
int cbpf_udp_socket(uint32_t addr, uint16_t port, int reuseport, int gro, int bufsize);
/* recvmmsg(MSG_DONTWAIT) of up to n (<= CBPF_DGRAM_BATCH_MAX) datagrams; returns the count or -errno. */
int cbpf_udp_recv_batch(int fd, struct cbpf_dgram *d, unsigned n);
/* sendmmsg of n datagrams (UDP_SEGMENT cmsg when segment != 0); returns how many went out or -errno
 * when the first one failed. */
int cbpf_udp_send_batch(int fd, const struct cbpf_dgram *d, unsigned n);
/* Opens /dev/net/tun and attaches it to interface `name` with TUNSETIFF `flags` (IFF_TUN, IFF_NO_PI,
 * IFF_MULTI_QUEUE, IFF_VNET_HDR). Returns the fd or -errno. The fd is O_CLOEXEC|O_NONBLOCK. */
int cbpf_tun_open(const char *name, int flags);
/* TUNSETOFFLOAD; returns 0 or -errno. */
int cbpf_tun_set_offload(int fd, unsigned int offloads);
/* SIOCSIFMTU on interface `name` in the calling thread's network namespace; 0 or -errno. */
int cbpf_if_set_mtu(const char *name, int mtu);

/* --- BPFLoader: libbpf logging and capture, bpffs checks --------------------------------------- */

/* Receives every libbpf message, already formatted (libbpf hands out a va_list, which Swift cannot
 * format). level is a libbpf_print_level (0 warn, 1 info, 2 debug). */
typedef void (*cbpf_log_sink_fn)(int level, const char *message);

/* Installs the formatting print callback into libbpf (idempotent) and sets where messages go;
 * sink may be NULL (messages then only reach an active capture). */
void cbpf_libbpf_set_log_sink(cbpf_log_sink_fn sink);

/* Starts collecting libbpf warnings emitted on the calling thread (a verifier log, "map create
 * failed", ...), so a failed call can report them. Only the last part (64 KiB) is kept. */
void cbpf_libbpf_capture_begin(void);

/* Stops collecting on this thread and returns what was collected as a malloc'd string the caller
 * frees, or NULL when nothing was said. */
char *cbpf_libbpf_capture_end(void);

/* The kernel's numbers for BPF netfilter programs (6.4+), absent from Debian's uapi headers (6.1). */
#define CBPF_BPF_PROG_TYPE_NETFILTER 32
#define CBPF_BPF_NETFILTER 45
#define CBPF_BPF_LINK_TYPE_NETFILTER 10
/* bpf(BPF_LINK_CREATE) attaching program `prog_fd` to netfilter hook `hooknum` of protocol family
 * `pf` (NFPROTO_IPV4 = 2) at `priority`, in the calling thread's network namespace. Returns the
 * link fd or -errno. */
int cbpf_link_create_netfilter(int prog_fd, unsigned pf, unsigned hooknum, int priority);

/* tcx (Linux 6.6+): BPF programs on an interface's ingress or egress without a qdisc, as links.
 * The numbers are absent from Debian's uapi headers (6.1). */
#define CBPF_BPF_TCX_INGRESS 46
#define CBPF_BPF_TCX_EGRESS 47
#define CBPF_BPF_LINK_TYPE_TCX 11
/* bpf(BPF_LINK_CREATE) attaching SCHED_CLS program `prog_fd` to `attach_type` (TCX_INGRESS or
 * TCX_EGRESS) of interface `ifindex` of the calling thread's namespace, after the programs already
 * there. Returns the link fd or -errno. */
int cbpf_link_create_tcx(int prog_fd, int ifindex, unsigned attach_type);
/* bpf(BPF_PROG_QUERY) on a tcx hook: up to `capacity` program ids and their link ids (0 for a
 * program attached without a link) in the order they run, their number in *count. Returns 0 or
 * -errno. */
int cbpf_tcx_query(int ifindex, unsigned attach_type, uint32_t *prog_ids, uint32_t *link_ids, uint32_t capacity,
		   uint32_t *count);

/* statfs(2) f_type of path into *magic; returns 0 or -errno. */
int cbpf_fs_magic(const char *path, int64_t *magic);

/* glibc's heap, for the daemon's memory (malloc.h is not in Swift's Glibc module). */
struct cbpf_heap_stats {
	uint64_t in_use;    /* bytes handed out by malloc (mallinfo2 uordblks + hblkhd) */
	uint64_t free;      /* bytes free inside the arenas (fordblks) */
	uint64_t arena;     /* bytes the arenas hold from the kernel (arena: main heap plus thread heaps) */
};
void cbpf_heap_stats(struct cbpf_heap_stats *out);
/* malloc_trim(0): gives free pages of every arena back to the kernel; returns 1 if any went back. */
int cbpf_heap_trim(void);
/* mallopt(M_TRIM_THRESHOLD, trim) and mallopt(M_MMAP_THRESHOLD, mmap): fixed values (glibc then
 * stops raising them after large frees). Returns 1 when both were accepted. */
int cbpf_heap_set_thresholds(int trim, int mmap);

#endif
