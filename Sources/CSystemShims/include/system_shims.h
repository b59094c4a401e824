/* system_shims.h — small C functions for what Swift cannot import directly (variadic ioctl and
 * setsockopt, setns, recvmmsg/sendmmsg with control messages, glibc's malloc.h). Prefixed shim_. */
#ifndef SYSTEM_SHIMS_H
#define SYSTEM_SHIMS_H

#include <stddef.h>
#include <stdint.h>

/* setns(2) on the calling thread; returns 0 or -errno. Glibc's module does not expose it. */
int shim_setns_net(int fd);
/* unshare(CLONE_NEWNET) on the calling thread; returns 0 or -errno. */
int shim_unshare_net(void);

/* userspace data path */
/* One UDP datagram in a batch. `data` points into a buffer the caller owns (preallocated, reused).
 * recv: `len` is the capacity on input and the received length on output, `addr`/`port` the
 * sender; send: `len` is the length, `addr`/`port` the destination. `addr` holds the 4 address
 * bytes in network order (as in struct in_addr); `port` is host order. `segment` is the UDP GSO
 * segment size to send with (0 = one datagram) or the GRO segment size the kernel reported. */
struct shim_dgram {
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
#define SHIM_DGRAM_BATCH_MAX 64
/* A UDP socket bound to addr:port (addr network order), SO_REUSEPORT when `reuseport`, UDP_GRO when
 * `gro`, buffers of `bufsize` bytes when > 0, IP_PMTUDISC_DONT (outer DF clear, as kernel vxlan),
 * IP_RECVTOS (each received datagram reports its TOS).
 * Returns the fd or -errno. */
int shim_udp_socket(uint32_t addr, uint16_t port, int reuseport, int gro, int bufsize);
/* recvmmsg(MSG_DONTWAIT) of up to n (<= SHIM_DGRAM_BATCH_MAX) datagrams; returns the count or -errno. */
int shim_udp_recv_batch(int fd, struct shim_dgram *d, unsigned n);
/* sendmmsg of n datagrams (UDP_SEGMENT cmsg when segment != 0); returns how many went out or -errno
 * when the first one failed. */
int shim_udp_send_batch(int fd, const struct shim_dgram *d, unsigned n);
/* Opens /dev/net/tun and attaches it to interface `name` with TUNSETIFF `flags` (IFF_TUN, IFF_NO_PI,
 * IFF_MULTI_QUEUE, IFF_VNET_HDR). Returns the fd or -errno. The fd is O_CLOEXEC|O_NONBLOCK. */
int shim_tun_open(const char *name, int flags);
/* TUNSETOFFLOAD; returns 0 or -errno. */
int shim_tun_set_offload(int fd, unsigned int offloads);
/* SIOCSIFMTU on interface `name` in the calling thread's network namespace; 0 or -errno. */
int shim_if_set_mtu(const char *name, int mtu);

/* statfs(2) f_type of path into *magic; returns 0 or -errno. */
int shim_fs_magic(const char *path, int64_t *magic);

/* glibc's heap, for the daemon's memory (malloc.h is not in Swift's Glibc module). */
struct shim_heap_stats {
	uint64_t in_use;    /* bytes handed out by malloc (mallinfo2 uordblks + hblkhd) */
	uint64_t free;      /* bytes free inside the arenas (fordblks) */
	uint64_t arena;     /* bytes the arenas hold from the kernel (arena: main heap plus thread heaps) */
};
void shim_heap_stats(struct shim_heap_stats *out);
/* malloc_trim(0): gives free pages of every arena back to the kernel; returns 1 if any went back. */
int shim_heap_trim(void);
/* mallopt(M_TRIM_THRESHOLD, trim) and mallopt(M_MMAP_THRESHOLD, mmap): fixed values (glibc then
 * stops raising them after large frees). Returns 1 when both were accepted. */
int shim_heap_set_thresholds(int trim, int mmap);

/* posix_spawn_file_actions_addclosefrom_np(actions, from): the child closes every descriptor >= from
 * before exec (glibc 2.34; not exported to Swift). `actions` is a posix_spawn_file_actions_t*.
 * Returns 0 or an errno value. */
int shim_spawn_close_from(void *actions, int from);

#endif
