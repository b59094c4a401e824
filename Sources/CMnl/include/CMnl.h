/* CMnl — the C bridge for rtnetlink: libmnl and the kernel's netlink headers (links, addresses,
 * routes, neighbours, fdb, tc). */
#ifndef CMNL_H
#define CMNL_H

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/pkt_sched.h>
#include <linux/pkt_cls.h>

#endif
