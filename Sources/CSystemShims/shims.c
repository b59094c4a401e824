/* CSystemShims — what Swift cannot call directly: setns, the userspace path's TUN and UDP batches,
 * SIOCSIFMTU, statfs, glibc's heap. Prefixed shim_; failures return -errno. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include "system_shims.h"

int shim_setns_net(int fd)
{
	return setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
}

int shim_unshare_net(void)
{
	return unshare(CLONE_NEWNET) == 0 ? 0 : -errno;
}

/* userspace data path */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/if_tun.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

int shim_udp_socket(uint32_t addr, uint16_t port, int reuseport, int gro, int bufsize)
{
	int one = 1;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (gro && setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) < 0)
		goto fail;
	/* Outer DF clear, as a kernel vxlan device sends by default: a smaller underlay hop fragments
	 * the datagram instead of dropping it. */
	int pmtu = IP_PMTUDISC_DONT;
	if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu)) < 0)
		goto fail;
	/* The outer TOS of each datagram: a Congestion Experienced mark is copied into the inner packet. */
	if (setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &one, sizeof(one)) < 0)
		goto fail;
	if (bufsize > 0) {
		/* FORCE variants ignore rmem_max/wmem_max (we run as root); fall back quietly. */
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof(bufsize)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize));
		if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof(bufsize)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));
	}
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = addr;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		goto fail;
	return fd;
fail:;
	int err = errno;
	close(fd);
	return -err;
}

/* The arrays one recvmmsg/sendmmsg batch needs, on the caller's stack. */
struct shim_batch {
	struct mmsghdr msgs[SHIM_DGRAM_BATCH_MAX];
	struct iovec iov[SHIM_DGRAM_BATCH_MAX];
	struct sockaddr_in addr[SHIM_DGRAM_BATCH_MAX];
	union {
		char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(int))]; /* UDP_GRO/UDP_SEGMENT and IP_TOS */
		struct cmsghdr align;
	} ctl[SHIM_DGRAM_BATCH_MAX];
};

/* Links the first n (at most SHIM_DGRAM_BATCH_MAX) datagrams' buffers, addresses and control
 * space into the batch's message headers; returns how many. */
static unsigned shim_batch_prepare(struct shim_batch *b, const struct shim_dgram *d, unsigned n)
{
	if (n > SHIM_DGRAM_BATCH_MAX)
		n = SHIM_DGRAM_BATCH_MAX;
	memset(b->msgs, 0, sizeof(b->msgs[0]) * n);
	for (unsigned i = 0; i < n; i++) {
		b->iov[i].iov_base = d[i].data;
		b->iov[i].iov_len = d[i].len;
		b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
		b->msgs[i].msg_hdr.msg_iovlen = 1;
		b->msgs[i].msg_hdr.msg_name = &b->addr[i];
		b->msgs[i].msg_hdr.msg_namelen = sizeof(b->addr[i]);
		b->msgs[i].msg_hdr.msg_control = b->ctl[i].buf;
		b->msgs[i].msg_hdr.msg_controllen = sizeof(b->ctl[i].buf);
	}
	return n;
}

int shim_udp_recv_batch(int fd, struct shim_dgram *d, unsigned n)
{
	struct shim_batch b;
	n = shim_batch_prepare(&b, d, n);
	int got = recvmmsg(fd, b.msgs, n, MSG_DONTWAIT, NULL);
	if (got < 0)
		return -errno;
	for (int i = 0; i < got; i++) {
		struct msghdr *h = &b.msgs[i].msg_hdr;
		d[i].len = b.msgs[i].msg_len;
		d[i].truncated = (h->msg_flags & MSG_TRUNC) != 0;
		d[i].segment = 0;
		d[i].tos = 0;
		if (h->msg_namelen >= sizeof(struct sockaddr_in) && b.addr[i].sin_family == AF_INET) {
			d[i].addr = b.addr[i].sin_addr.s_addr;
			d[i].port = ntohs(b.addr[i].sin_port);
		} else {
			d[i].addr = 0;
			d[i].port = 0;
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
			if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
				int seg;
				memcpy(&seg, CMSG_DATA(c), sizeof(seg));
				d[i].segment = (uint16_t)seg;
			} else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
				d[i].tos = *(const uint8_t *)CMSG_DATA(c);
			}
		}
	}
	return got;
}

/* Fills one control message and returns the room it takes in msg_control. The kernel reads
 * each option at the size it expects (UDP_SEGMENT a uint16_t, IP_TOS an int), so the caller
 * passes a value of exactly that type. */
static size_t shim_put_cmsg(struct cmsghdr *c, int level, int type, const void *value, size_t size)
{
	c->cmsg_level = level;
	c->cmsg_type = type;
	c->cmsg_len = CMSG_LEN(size);
	memcpy(CMSG_DATA(c), value, size);
	return CMSG_SPACE(size);
}

int shim_udp_send_batch(int fd, const struct shim_dgram *d, unsigned n)
{
	struct shim_batch b;
	n = shim_batch_prepare(&b, d, n);
	for (unsigned i = 0; i < n; i++) {
		struct msghdr *h = &b.msgs[i].msg_hdr;
		memset(&b.addr[i], 0, sizeof(b.addr[i]));
		b.addr[i].sin_family = AF_INET;
		b.addr[i].sin_port = htons(d[i].port);
		b.addr[i].sin_addr.s_addr = d[i].addr;
		/* Control messages only when there is something to say (UDP GSO, an outer TOS). */
		h->msg_controllen = 0;
		if (!d[i].segment && !d[i].tos)
			continue;
		memset(b.ctl[i].buf, 0, sizeof(b.ctl[i].buf));
		h->msg_controllen = sizeof(b.ctl[i].buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(h);
		size_t used = 0;
		if (d[i].segment) {
			uint16_t seg = d[i].segment;
			used += shim_put_cmsg(c, IPPROTO_UDP, UDP_SEGMENT, &seg, sizeof(seg));
			c = CMSG_NXTHDR(h, c);
		}
		if (d[i].tos) {
			/* The outer TOS (the inner packet's ECN bits, as a kernel vxlan device copies them). */
			int tos = d[i].tos;
			used += shim_put_cmsg(c, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
		}
		h->msg_controllen = used;
	}
	int sent = sendmmsg(fd, b.msgs, n, 0);
	return sent < 0 ? -errno : sent;
}

int shim_tun_open(const char *name, int flags)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	ifr.ifr_flags = (short)flags;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

int shim_tun_set_offload(int fd, unsigned int offloads)
{
	return ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) == 0 ? 0 : -errno;
}

int shim_if_set_mtu(const char *name, int mtu)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	ifr.ifr_mtu = mtu;
	int rc = ioctl(fd, SIOCSIFMTU, &ifr) == 0 ? 0 : -errno;
	close(fd);
	return rc;
}

#include <sys/vfs.h>

int shim_fs_magic(const char *path, int64_t *magic)
{
	struct statfs st;
	if (statfs(path, &st) != 0)
		return -errno;
	*magic = (int64_t)st.f_type;
	return 0;
}

/* ---- glibc heap ---- */
#include <malloc.h>

void shim_heap_stats(struct shim_heap_stats *out) {
	struct mallinfo2 m = mallinfo2();
	out->in_use = (uint64_t)m.uordblks + (uint64_t)m.hblkhd;
	out->free = (uint64_t)m.fordblks;
	out->arena = (uint64_t)m.arena;
}

int shim_heap_trim(void) { return malloc_trim(0); }

int shim_heap_set_thresholds(int trim, int mmap) {
	int a = mallopt(M_TRIM_THRESHOLD, trim);
	int b = mallopt(M_MMAP_THRESHOLD, mmap);
	return a == 1 && b == 1;
}


#include <spawn.h>

int shim_spawn_close_from(void *actions, int from)
{
	return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, from);
}
