/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Two hosts on one machine for migration tests and benchmarks: two network
 * namespaces joined by a veth pair, a token bucket (tbf) on both ends, real
 * TCP between them (this kernel has no netem). No Check here: the bench links
 * it too; functions return 0 or -errno and say what failed on stderr.
 */
#ifndef UFFDSNAP_TESTS_NETPAIR_H
#define UFFDSNAP_TESTS_NETPAIR_H

#include <stdbool.h>

struct t_netpair {
	char ns_a[64], ns_b[64], veth_a[16], veth_b[16];
	char ip_b[16];              /* 10.213.SUBNET.2; a is .1 */
	int subnet, port;
};

/* Name the pair after `tag`, the pid and `subnet` (10.213.SUBNET.0/30); true
 * if this machine can make it (CAP_NET_ADMIN, ip, tc). Makes nothing. */
bool t_netpair_init(struct t_netpair *n, const char *tag, int subnet, int port);
/* Make it, `mbit` Mbit/s each way; 0 or -1 (what failed is printed). */
int t_netpair_up(struct t_netpair *n, unsigned mbit);
/* Remove whatever exists of it; safe to call twice, or after a failed up. */
void t_netpair_down(struct t_netpair *n);
/* A fresh TCP connection from namespace a (*snd) to namespace b (*rcv); 0 or -errno. */
int t_netpair_tcp(struct t_netpair *n, int *snd, int *rcv);

#endif
