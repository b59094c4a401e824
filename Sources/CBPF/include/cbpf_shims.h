/* cbpf_shims.h — small C functions for what Swift cannot import directly. Prefixed cbpf_. */
#ifndef CBPF_SHIMS_H
#define CBPF_SHIMS_H

#include <stddef.h>
#include <stdint.h>

/* setns(2) on the calling thread; returns 0 or -errno. Glibc's module does not expose it. */
int cbpf_setns_net(int fd);
/* unshare(CLONE_NEWNET) on the calling thread; returns 0 or -errno. */
int cbpf_unshare_net(void);

#endif
