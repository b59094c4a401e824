#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include "cbpf_shims.h"

int cbpf_setns_net(int fd)
{
	return setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
}

int cbpf_unshare_net(void)
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

int cbpf_udp_socket(uint32_t addr, uint16_t port, int reuseport, int gro, int bufsize)
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

int cbpf_udp_recv_batch(int fd, struct cbpf_dgram *d, unsigned n)
{
	struct mmsghdr msgs[CBPF_DGRAM_BATCH_MAX];
	struct iovec iov[CBPF_DGRAM_BATCH_MAX];
	struct sockaddr_in from[CBPF_DGRAM_BATCH_MAX];
	union {
		char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl[CBPF_DGRAM_BATCH_MAX];

	if (n > CBPF_DGRAM_BATCH_MAX)
		n = CBPF_DGRAM_BATCH_MAX;
	memset(msgs, 0, sizeof(msgs[0]) * n);
	for (unsigned i = 0; i < n; i++) {
		iov[i].iov_base = d[i].data;
		iov[i].iov_len = d[i].len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &from[i];
		msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
		msgs[i].msg_hdr.msg_control = ctl[i].buf;
		msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
	}
	int got = recvmmsg(fd, msgs, n, MSG_DONTWAIT, NULL);
	if (got < 0)
		return -errno;
	for (int i = 0; i < got; i++) {
		d[i].len = msgs[i].msg_len;
		d[i].truncated = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
		d[i].segment = 0;
		d[i].tos = 0;
		if (msgs[i].msg_hdr.msg_namelen >= sizeof(struct sockaddr_in) && from[i].sin_family == AF_INET) {
			d[i].addr = from[i].sin_addr.s_addr;
			d[i].port = ntohs(from[i].sin_port);
		} else {
			d[i].addr = 0;
			d[i].port = 0;
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
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

int cbpf_udp_send_batch(int fd, const struct cbpf_dgram *d, unsigned n)
{
	struct mmsghdr msgs[CBPF_DGRAM_BATCH_MAX];
	struct iovec iov[CBPF_DGRAM_BATCH_MAX];
	struct sockaddr_in to[CBPF_DGRAM_BATCH_MAX];
	union {
		char buf[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl[CBPF_DGRAM_BATCH_MAX];

	if (n > CBPF_DGRAM_BATCH_MAX)
		n = CBPF_DGRAM_BATCH_MAX;
	memset(msgs, 0, sizeof(msgs[0]) * n);
	for (unsigned i = 0; i < n; i++) {
		iov[i].iov_base = d[i].data;
		iov[i].iov_len = d[i].len;
		memset(&to[i], 0, sizeof(to[i]));
		to[i].sin_family = AF_INET;
		to[i].sin_port = htons(d[i].port);
		to[i].sin_addr.s_addr = d[i].addr;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &to[i];
		msgs[i].msg_hdr.msg_namelen = sizeof(to[i]);
		if (!d[i].segment && !d[i].tos)
			continue;
		memset(ctl[i].buf, 0, sizeof(ctl[i].buf));
		msgs[i].msg_hdr.msg_control = ctl[i].buf;
		msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
		size_t used = 0;
		if (d[i].segment) {
			c->cmsg_level = IPPROTO_UDP;
			c->cmsg_type = UDP_SEGMENT;
			c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
			uint16_t seg = d[i].segment;
			memcpy(CMSG_DATA(c), &seg, sizeof(seg));
			used += CMSG_SPACE(sizeof(uint16_t));
			c = CMSG_NXTHDR(&msgs[i].msg_hdr, c);
		}
		if (d[i].tos) {
			/* The outer TOS (the inner packet's ECN bits, as a kernel vxlan device copies them). */
			c->cmsg_level = IPPROTO_IP;
			c->cmsg_type = IP_TOS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			int tos = d[i].tos;
			memcpy(CMSG_DATA(c), &tos, sizeof(tos));
			used += CMSG_SPACE(sizeof(int));
		}
		msgs[i].msg_hdr.msg_controllen = used;
	}
	int sent = sendmmsg(fd, msgs, n, 0);
	return sent < 0 ? -errno : sent;
}

int cbpf_tun_open(const char *name, int flags)
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

int cbpf_tun_set_offload(int fd, unsigned int offloads)
{
	return ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) == 0 ? 0 : -errno;
}

int cbpf_if_set_mtu(const char *name, int mtu)
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

/* --- BPFLoader: libbpf logging and capture, bpffs checks --------------------------------------- */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <stdatomic.h>
#include <bpf/libbpf.h>

#define CBPF_CAPTURE_KEEP (64 * 1024)

static _Atomic(cbpf_log_sink_fn) cbpf_log_sink;
static atomic_int cbpf_print_installed;
static _Thread_local int cbpf_capture_active;
static _Thread_local char *cbpf_capture_buf;
static _Thread_local size_t cbpf_capture_len;

static void cbpf_capture_append(const char *text, size_t len)
{
	/* Keep the tail: the end of a verifier log says why it refused. */
	if (len >= CBPF_CAPTURE_KEEP) {
		text += len - (CBPF_CAPTURE_KEEP - 1);
		len = CBPF_CAPTURE_KEEP - 1;
		cbpf_capture_len = 0;
	}
	if (cbpf_capture_buf == NULL) {
		cbpf_capture_buf = malloc(CBPF_CAPTURE_KEEP);
		if (cbpf_capture_buf == NULL)
			return;
		cbpf_capture_len = 0;
	}
	if (cbpf_capture_len + len >= CBPF_CAPTURE_KEEP) {
		size_t drop = cbpf_capture_len + len - (CBPF_CAPTURE_KEEP - 1);
		memmove(cbpf_capture_buf, cbpf_capture_buf + drop, cbpf_capture_len - drop);
		cbpf_capture_len -= drop;
	}
	memcpy(cbpf_capture_buf + cbpf_capture_len, text, len);
	cbpf_capture_len += len;
	cbpf_capture_buf[cbpf_capture_len] = '\0';
}

static int cbpf_libbpf_print(enum libbpf_print_level level, const char *format, va_list args)
{
	char small[1024];
	char *text = small;
	va_list copy;
	va_copy(copy, args);
	int n = vsnprintf(small, sizeof(small), format, copy);
	va_end(copy);
	if (n < 0)
		return 0;
	if ((size_t)n >= sizeof(small)) {
		/* Verifier logs arrive as one huge message. */
		text = malloc((size_t)n + 1);
		if (text == NULL)
			return 0;
		vsnprintf(text, (size_t)n + 1, format, args);
	}
	if (cbpf_capture_active && level == LIBBPF_WARN)
		cbpf_capture_append(text, (size_t)n);
	cbpf_log_sink_fn sink = atomic_load(&cbpf_log_sink);
	if (sink != NULL)
		sink((int)level, text);
	if (text != small)
		free(text);
	return n;
}

void cbpf_libbpf_set_log_sink(cbpf_log_sink_fn sink)
{
	atomic_store(&cbpf_log_sink, sink);
	atomic_store(&cbpf_print_installed, 1);
	libbpf_set_print(cbpf_libbpf_print);
}

void cbpf_libbpf_capture_begin(void)
{
	/* Install our printer once; later libbpf_set_print calls by others are left alone. */
	int expected = 0;
	if (atomic_compare_exchange_strong(&cbpf_print_installed, &expected, 1))
		libbpf_set_print(cbpf_libbpf_print);
	cbpf_capture_active = 1;
	cbpf_capture_len = 0;
	if (cbpf_capture_buf != NULL)
		cbpf_capture_buf[0] = '\0';
}

char *cbpf_libbpf_capture_end(void)
{
	cbpf_capture_active = 0;
	if (cbpf_capture_buf == NULL || cbpf_capture_len == 0)
		return NULL;
	char *out = strdup(cbpf_capture_buf);
	cbpf_capture_len = 0;
	cbpf_capture_buf[0] = '\0';
	return out;
}

int cbpf_fs_magic(const char *path, int64_t *magic)
{
	struct statfs st;
	if (statfs(path, &st) != 0)
		return -errno;
	*magic = (int64_t)st.f_type;
	return 0;
}

/* ---- glibc heap ---- */
#include <malloc.h>

void cbpf_heap_stats(struct cbpf_heap_stats *out) {
	struct mallinfo2 m = mallinfo2();
	out->in_use = (uint64_t)m.uordblks + (uint64_t)m.hblkhd;
	out->free = (uint64_t)m.fordblks;
	out->arena = (uint64_t)m.arena;
}

int cbpf_heap_trim(void) { return malloc_trim(0); }

int cbpf_heap_set_thresholds(int trim, int mmap) {
	int a = mallopt(M_TRIM_THRESHOLD, trim);
	int b = mallopt(M_MMAP_THRESHOLD, mmap);
	return a == 1 && b == 1;
}

/* --- BPFLoader: bpf_link for netfilter hooks ---------------------------------------------------- */
#include <sys/syscall.h>
#include <linux/bpf.h>

/* BPF_LINK_CREATE's attr for a netfilter hook (kernel 6.4+), laid out by hand: Debian's uapi header
 * (6.1) predates the `netfilter` member, and libbpf 1.1 has no bpf_link_create opts for it. The
 * layout is the kernel's union bpf_attr link_create: prog_fd, target_fd, attach_type, flags, then
 * the netfilter struct. */
struct cbpf_link_create_netfilter_attr {
	uint32_t prog_fd;
	uint32_t target_fd;
	uint32_t attach_type;
	uint32_t flags;
	uint32_t pf;
	uint32_t hooknum;
	int32_t priority;
	uint32_t nf_flags;
	uint8_t rest[128 - 32];
};

/* The tcx part of union bpf_attr's link_create member (kernel 6.6+). */
struct cbpf_link_create_tcx_attr {
	uint32_t prog_fd;
	uint32_t target_ifindex;
	uint32_t attach_type;
	uint32_t flags;
	uint32_t relative_fd;
	uint32_t _pad;
	uint64_t expected_revision;
	uint8_t rest[128 - 32];
};

int cbpf_link_create_tcx(int prog_fd, int ifindex, unsigned attach_type)
{
	struct cbpf_link_create_tcx_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_fd = (uint32_t)prog_fd;
	attr.target_ifindex = (uint32_t)ifindex;
	attr.attach_type = attach_type;
	long fd = syscall(__NR_bpf, BPF_LINK_CREATE, &attr, 32);
	return fd < 0 ? -errno : (int)fd;
}

/* union bpf_attr's query member as of 6.6 (link ids and revision added for tcx). */
struct cbpf_prog_query_attr {
	uint32_t target_ifindex;
	uint32_t attach_type;
	uint32_t query_flags;
	uint32_t attach_flags;
	uint64_t prog_ids;
	uint32_t count;
	uint32_t _pad;
	uint64_t prog_attach_flags;
	uint64_t link_ids;
	uint64_t link_attach_flags;
	uint64_t revision;
	uint8_t rest[128 - 64];
};

int cbpf_tcx_query(int ifindex, unsigned attach_type, uint32_t *prog_ids, uint32_t *link_ids, uint32_t capacity,
		   uint32_t *count)
{
	struct cbpf_prog_query_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.target_ifindex = (uint32_t)ifindex;
	attr.attach_type = attach_type;
	attr.prog_ids = (uint64_t)(uintptr_t)prog_ids;
	attr.link_ids = (uint64_t)(uintptr_t)link_ids;
	attr.count = capacity;
	long ret = syscall(__NR_bpf, BPF_PROG_QUERY, &attr, 64);
	if (ret < 0)
		return -errno;
	*count = attr.count;
	return 0;
}

int cbpf_link_create_netfilter(int prog_fd, unsigned pf, unsigned hooknum, int priority)
{
	struct cbpf_link_create_netfilter_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_fd = (uint32_t)prog_fd;
	attr.attach_type = CBPF_BPF_NETFILTER;
	attr.pf = pf;
	attr.hooknum = hooknum;
	attr.priority = priority;
	long fd = syscall(__NR_bpf, BPF_LINK_CREATE, &attr, 32);
	return fd < 0 ? -errno : (int)fd;
}
