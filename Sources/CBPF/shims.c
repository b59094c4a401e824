#define _GNU_SOURCE
#include <errno.h>
#include "cbpf_shims.h"

/* --- libbpf logging and capture --------------------------------------------------------------- */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* --- BPFLoader: bpf_link for netfilter hooks ---------------------------------------------------- */
#include <sys/syscall.h>
#include <unistd.h>
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
