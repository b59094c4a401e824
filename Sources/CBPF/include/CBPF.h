/* CBPF — the C bridge Swift imports: libbpf, libmnl, the kernel/user shared header, and shims for
 * what Swift cannot import (function-like macros, variadic ioctl, setns). */
#ifndef CBPF_H
#define CBPF_H

#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_ether.h>
#include <linux/if_tun.h>
#include <linux/if_packet.h>
#include <linux/neighbour.h>
#include <linux/pkt_sched.h>
#include <linux/pkt_cls.h>

#include "fxdp_shared.h"
#include "cbpf_shims.h"

#endif
