/* cbpf_shims.h — small C functions for what Swift cannot import from libbpf and the bpf syscall
 * directly (libbpf's va_list logging, link types newer than Debian's uapi headers). Prefixed cbpf_. */
#ifndef CBPF_SHIMS_H
#define CBPF_SHIMS_H

#include <stddef.h>
#include <stdint.h>

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

#endif
