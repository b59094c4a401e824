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
