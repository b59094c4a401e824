/* cbpf_shims.h — small C functions for what Swift cannot import directly. Prefixed cbpf_. */
#ifndef CBPF_SHIMS_H
#define CBPF_SHIMS_H

#include <stddef.h>
#include <stdint.h>

/* setns(2) on the calling thread; returns 0 or -errno. Glibc's module does not expose it. */
int cbpf_setns_net(int fd);
/* unshare(CLONE_NEWNET) on the calling thread; returns 0 or -errno. */
int cbpf_unshare_net(void);

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

/* statfs(2) f_type of path into *magic; returns 0 or -errno. */
int cbpf_fs_magic(const char *path, int64_t *magic);

#endif
