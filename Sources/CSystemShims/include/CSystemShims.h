/* CSystemShims — the C bridge for system calls Swift cannot make directly: setns, the userspace
 * path's TUN and UDP batches, SIOCSIFMTU, statfs, glibc's heap. */
#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H

#include <linux/if_tun.h>

#include "system_shims.h"

#endif
