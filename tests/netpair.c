/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Two network namespaces joined by a veth pair (netpair.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netpair.h"

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	if (r)
		fprintf(stderr, "netpair: '%s' failed (%d)\n", cmd, r);
	return r;
}

bool t_netpair_init(struct t_netpair *n, const char *tag, int subnet, int port)
{
	int pid = (int)getpid();

	memset(n, 0, sizeof(*n));
	snprintf(n->ns_a, sizeof(n->ns_a), "%s-%d-%d-a", tag, pid, subnet);
	snprintf(n->ns_b, sizeof(n->ns_b), "%s-%d-%d-b", tag, pid, subnet);
	/* interface names: at most 15 bytes */
	snprintf(n->veth_a, sizeof(n->veth_a), "un%d%da", subnet % 100, pid % 1000000);
	snprintf(n->veth_b, sizeof(n->veth_b), "un%d%db", subnet % 100, pid % 1000000);
	snprintf(n->ip_b, sizeof(n->ip_b), "10.213.%d.2", subnet);
	n->subnet = subnet;
	n->port = port;
	return !system("ip netns add usnap-netpair-probe-$$ 2>/dev/null && ip netns del usnap-netpair-probe-$$ && "
		       "command -v tc >/dev/null");
}

int t_netpair_up(struct t_netpair *n, unsigned mbit)
{
	if (sh("ip netns add %s && ip netns add %s", n->ns_a, n->ns_b) ||
	    sh("ip link add %s type veth peer name %s && ip link set %s netns %s && ip link set %s netns %s",
	       n->veth_a, n->veth_b, n->veth_a, n->ns_a, n->veth_b, n->ns_b) ||
	    sh("ip -n %s addr add 10.213.%d.1/30 dev %s && ip -n %s link set %s up && ip -n %s link set lo up",
	       n->ns_a, n->subnet, n->veth_a, n->ns_a, n->veth_a, n->ns_a) ||
	    sh("ip -n %s addr add %s/30 dev %s && ip -n %s link set %s up && ip -n %s link set lo up", n->ns_b,
	       n->ip_b, n->veth_b, n->ns_b, n->veth_b, n->ns_b) ||
	    sh("ip netns exec %s tc qdisc add dev %s root tbf rate %umbit burst 256kb latency 10ms && "
	       "ip netns exec %s tc qdisc add dev %s root tbf rate %umbit burst 256kb latency 10ms",
	       n->ns_a, n->veth_a, mbit, n->ns_b, n->veth_b, mbit))
		return -1;
	return 0;
}

void t_netpair_down(struct t_netpair *n)
{
	char cmd[256];

	/* best effort, quiet: parts may never have been made (the link is
	 * still here if it never reached a namespace). Not conditional on a
	 * flag: Check's runner calls it after a case that made the pair in a
	 * forked child. */
	snprintf(cmd, sizeof(cmd), "ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null; "
		 "ip link del %s 2>/dev/null; true", n->ns_a, n->ns_b, n->veth_a);
	(void)!system(cmd);
}

static int enter(const char *ns)
{
	char path[128];
	int fd, r = 0;

	snprintf(path, sizeof(path), "/run/netns/%s", ns);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || setns(fd, CLONE_NEWNET))
		r = -errno;
	if (fd >= 0)
		close(fd);
	return r;
}

int t_netpair_tcp(struct t_netpair *n, int *snd, int *rcv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)n->port) };
	int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), l = -1, one = 1, r = 0;

	*snd = *rcv = -1;
	if (self < 0)
		return -errno;
	inet_pton(AF_INET, n->ip_b, &sa.sin_addr);
	if ((r = enter(n->ns_b)))
		goto out;
	if ((l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1)) {
		r = -errno;
		goto out;
	}
	if ((r = enter(n->ns_a)))
		goto out;
	if ((*snd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    connect(*snd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    (*rcv = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
		r = -errno;
out:
	if (l >= 0)
		close(l);
	if (setns(self, CLONE_NEWNET) && !r)
		r = -errno;
	close(self);
	return r;
}
