/* CBPF — the C bridge for BPF: libbpf, the kernel/user shared header (fxdp_shared.h), the link
 * and packet headers the BPF side uses (XDP flags, TC actions, packet sockets for captures), and
 * shims for libbpf's logging and the link types Debian's headers lack. */
#ifndef CBPF_H
#define CBPF_H

#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <linux/if_link.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/pkt_cls.h>

#include "fxdp_shared.h"
#include "cbpf_shims.h"

#endif
