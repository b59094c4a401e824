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
	libbpf_set_print(cbpf_libbpf_print);
}

void cbpf_libbpf_capture_begin(void)
{
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
