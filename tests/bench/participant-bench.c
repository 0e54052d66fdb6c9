/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * participant-bench: the two measured targets of issue 13, same run,
 * alternating, so that a loaded machine disturbs both sides alike.
 *
 *  begin: one memfd of --size MiB (default 1024), all of it data.
 *    "one"   the coordinator alone, every page of its own mapping populated
 *            (one page-table entry per page);
 *    "parts" --participants processes (default 4; fork+exec, unrelated
 *            address spaces) each map and populate their share (size / N) of
 *            the file and join; the coordinator's own mapping has no page
 *            table entries (MADV_DONTNEED), so both sides protect the same
 *            number of populated entries.
 *    Between runs the participants leave ("one") and join again ("parts").
 *    Target: median begin(parts) <= 1.5 x median begin(one).
 *  fault: a store to a page the sweep has not copied yet, timed by the
 *    writer around the store (clock_gettime), --stores pages 64 KiB apart
 *    (one fault each: the fault path copies the 64 KiB around a page) from
 *    the top of the first participant's share down while the sweep starts at
 *    the bottom, once by that participant and once by the coordinator's main
 *    thread (participants joined both times: a page copied is un-protected
 *    in every mapping of it), one snapshot each, per run.
 *    Target: participant p50 <= 1.2 x coordinator p50.
 *  the floor of that ratio: the same stores, same order, resolved by a
 *    minimal handler thread (read the message, copy the 4 KiB page,
 *    un-protect it) of the coordinator, once for its own mapping and once
 *    for a forked child's (its userfaultfd passed over SCM_RIGHTS, as a
 *    participant's is): bare_own / bare_cross, alternating too.
 *
 * The sink discards (no file I/O in the figures). Prints one JSON line.
 *   participant-bench [--size MIB] [--participants N] [--runs R] [--stores K]
 * Root (or /dev/userfaultfd access) needed. Never part of the test suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uffdsnap.h"

#define MEM_FD 100
#define CMD_FD 101
#define ACK_FD 102
#define WINDOW (64u << 10)

static size_t page;

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "participant-bench: %s: %s (%s)\n", what, strerror(errno), uffdsnap_last_error());
	exit(1);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* p50 and p99 of n samples (sorted in place), in µs. */
static void pct(uint64_t *v, size_t n, double *p50, double *p99)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	*p50 = v[n / 2] / 1e3;
	*p99 = v[n * 99 / 100] / 1e3;
}

static void populate(volatile uint8_t *a, size_t len)
{
	uint8_t s = 0;

	for (size_t i = 0; i < len; i += page)
		s += a[i];
	(void)s;
}

/* Store once into each of k windows from the top of [a, a + len) down,
 * timing each store; the latencies go to out. */
static void timed_stores(uint8_t *a, size_t len, size_t k, uint64_t *out)
{
	for (size_t i = 0; i < k; i++) {
		volatile uint8_t *p = a + len - (i + 1) * WINDOW + 128;
		uint64_t t0 = now_ns();
		*p = (uint8_t)(*p + 1);
		out[i] = now_ns() - t0;
	}
}

/* ---- the floor: a bare round trip, in one process and across two ---------------- */

struct bare {
	int uffd;
	const uint8_t *src;        /* the handler's mapping of the file */
	uintptr_t base;            /* where the writer maps it */
	pthread_t thread;
};

static void *bare_handler(void *arg)
{
	struct bare *b = arg;
	static __thread uint8_t buf[65536];
	struct uffd_msg m;

	while (read(b->uffd, &m, sizeof(m)) == sizeof(m)) {
		uintptr_t at = (uintptr_t)m.arg.pagefault.address & ~(uintptr_t)(page - 1);
		struct uffdio_writeprotect wp = { { at, page }, 0 };

		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		memcpy(buf, b->src + (at - b->base), page);
		if (ioctl(b->uffd, UFFDIO_WRITEPROTECT, &wp))
			break;
	}
	return NULL;
}

/* A populated MAP_SHARED mapping of fd and a userfaultfd registered on it
 * for write-protect, in the calling process. */
static int bare_arm(int fd, size_t len, uint8_t **a)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC);

	*a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (u < 0 || *a == MAP_FAILED || ioctl(u, UFFDIO_API, &api) ||
	    ioctl(u, UFFDIO_REGISTER, &(struct uffdio_register){ { (uintptr_t)*a, len }, UFFDIO_REGISTER_MODE_WP }))
		die("bare userfaultfd");
	return u;
}

static void bare_protect(struct bare *b, size_t len)
{
	struct uffdio_writeprotect wp = { { b->base, len }, UFFDIO_WRITEPROTECT_MODE_WP };

	if (ioctl(b->uffd, UFFDIO_WRITEPROTECT, &wp))
		die("bare protect");
}

/* The child's side: arm its own mapping, send the descriptor and the
 * address, then store when told ('B') and send the latencies back. */
static void bare_child(int fd, size_t len, size_t k, int sock, int cmd, int ack, uint64_t *lat)
{
	uint8_t *a;
	int u = bare_arm(fd, len, &a);
	char ctl[CMSG_SPACE(sizeof(int))] = { 0 }, c;
	uintptr_t base = (uintptr_t)a;
	struct iovec iov = { &base, sizeof(base) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	cm->cmsg_level = SOL_SOCKET, cm->cmsg_type = SCM_RIGHTS, cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &u, sizeof(int));
	if (sendmsg(sock, &mh, 0) != sizeof(base))
		_exit(5);
	close(u);
	while (read(cmd, &c, 1) == 1 && c == 'B') {
		timed_stores(a, len, k, lat);
		if (write(ack, lat, k * sizeof(*lat)) != (ssize_t)(k * sizeof(*lat)))
			_exit(6);
	}
	_exit(0);
}

/* ---- a participant process ------------------------------------------------------ */

static int participant_main(char **argv)
{
	size_t off = strtoul(argv[3], NULL, 0), len = strtoul(argv[4], NULL, 0), k = strtoul(argv[5], NULL, 0);
	uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, MEM_FD, (off_t)off);
	uint64_t *lat = calloc(k ? k : 1, sizeof(*lat));
	uffdsnap_participant_t *p = NULL;
	uffdsnap_join_region_t jr = { "ram", a, len, off };
	char c;

	page = (size_t)getpagesize();
	if (a == MAP_FAILED || !lat)
		return 1;
	populate(a, len);
	while (read(CMD_FD, &c, 1) == 1) {
		if (c == 'J' && uffdsnap_join(&p, argv[2], &jr, 1)) {
			fprintf(stderr, "participant: %s\n", uffdsnap_last_error());
			return 1;
		} else if (c == 'L') {
			uffdsnap_leave(p);
			p = NULL;
		} else if (c == 'W') {
			timed_stores(a, len, k, lat);
			if (write(ACK_FD, lat, k * sizeof(*lat)) != (ssize_t)(k * sizeof(*lat)))
				return 1;
			continue;
		} else if (c == 'Q') {
			return 0;
		}
		if (write(ACK_FD, &c, 1) != 1)
			return 1;
	}
	return 0;
}

/* ---- the coordinator ------------------------------------------------------------ */

struct member {
	pid_t pid;
	int cmd, ack;
};

static void tell(struct member *m, char c)
{
	char a;

	if (write(m->cmd, &c, 1) != 1 || read(m->ack, &a, 1) != 1 || a != c)
		die("participant did not answer");
}

static int discard(void *user, const void *buf, size_t len)
{
	(void)user, (void)buf, (void)len;
	return 0;
}

static uffdsnap_snap_t *begin(uffdsnap_t *ctx, uint64_t *ns)
{
	uffdsnap_sink_t *sink;
	uffdsnap_snap_t *s;
	uint64_t t0;

	if (uffdsnap_sink_callback(&sink, discard, NULL))
		die("sink");
	t0 = now_ns();
	if (uffdsnap_begin(ctx, sink, &s))
		die("begin");
	*ns = now_ns() - t0;
	return s;
}

static void finish(uffdsnap_snap_t *s, int how)
{
	int r;

	if (how)
		uffdsnap_cancel(s);
	r = uffdsnap_wait(s);
	if (r && !(how && r == -ECANCELED)) {
		fprintf(stderr, "snapshot: %d %s\n", r, uffdsnap_snap_error(s));
		exit(1);
	}
	uffdsnap_snap_free(s);
}

int main(int argc, char **argv)
{
	size_t mib = 1024, nparts = 4, runs = 5, k = 256;
	char dir[] = "/tmp/participant-bench-XXXXXX", sock[64];
	struct member m[16];
	uint64_t *b_one, *b_parts, *f_coord, *f_part, *f_bown, *f_bcross, *f_bchild;
	struct bare own, cross;
	int bsock[2], bcmd[2], back[2], bfd;
	pid_t bpid;
	size_t blen;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uint8_t *a;
	size_t len, share;
	int memfd;

	page = (size_t)getpagesize();
	if (argc > 5 && !strcmp(argv[1], "participant"))
		return participant_main(argv);
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--size"))
			mib = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--participants"))
			nparts = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--runs"))
			runs = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--stores"))
			k = strtoul(argv[i + 1], NULL, 0);
		else {
			fprintf(stderr, "usage: %s [--size MIB] [--participants N] [--runs R] [--stores K]\n", argv[0]);
			return 2;
		}
	}
	len = mib << 20;
	share = len / (nparts ? nparts : 1);
	if (!nparts || nparts > 16 || !runs || share % WINDOW || k * WINDOW > share / 2) {
		fprintf(stderr, "participant-bench: 1-16 participants, size/N a multiple of 64 KiB, stores <= a "
				"quarter of a share in 64 KiB windows\n");
		return 2;
	}
	b_one = calloc(runs, 8), b_parts = calloc(runs, 8);
	f_coord = calloc(runs * k, 8), f_part = calloc(runs * k, 8);
	memfd = memfd_create("participant-bench", 0);
	if (!b_one || !b_parts || !f_coord || !f_part || memfd < 0 || ftruncate(memfd, (off_t)len))
		die("setup");
	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (a == MAP_FAILED)
		die("mmap");
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(a + i) = i * 0x9e3779b97f4a7c15ull;
	/* the floor, set up while this process has one thread: the child
	 * only makes syscalls */
	blen = k * WINDOW;
	f_bown = calloc(runs * k, 8), f_bcross = calloc(runs * k, 8), f_bchild = calloc(k, 8);
	bfd = memfd_create("participant-bench-bare", 0);
	if (!f_bown || !f_bcross || !f_bchild || bfd < 0 || ftruncate(bfd, (off_t)blen) ||
	    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, bsock) || pipe2(bcmd, O_CLOEXEC) || pipe2(back, O_CLOEXEC))
		die("bare setup");
	if (!(bpid = fork()))
		bare_child(bfd, blen, k, bsock[1], bcmd[0], back[1], f_bchild);
	{
		char ctl[CMSG_SPACE(sizeof(int))];
		struct iovec iov = { &cross.base, sizeof(cross.base) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
		uint8_t *oa;

		if (bpid < 0 || recvmsg(bsock[0], &mh, 0) != sizeof(cross.base) || !CMSG_FIRSTHDR(&mh))
			die("bare child");
		memcpy(&cross.uffd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
		own.uffd = bare_arm(bfd, blen, &oa);
		own.src = cross.src = oa;
		own.base = (uintptr_t)oa;
		if (pthread_create(&own.thread, NULL, bare_handler, &own) ||
		    pthread_create(&cross.thread, NULL, bare_handler, &cross))
			die("bare handlers");
	}
	if (!mkdtemp(dir))
		die("mkdtemp");
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	uffdsnap_opts_init(&o);
	if (uffdsnap_new(&ctx, &o) || uffdsnap_add_region(ctx, "ram", a, len) < 0 || uffdsnap_listen(ctx, sock))
		die("coordinator");
	for (size_t i = 0; i < nparts; i++) {
		int cmd[2], ack[2];
		char off[32], l[32], ks[32];

		if (pipe2(cmd, O_CLOEXEC) || pipe2(ack, O_CLOEXEC))
			die("pipe");
		snprintf(off, sizeof(off), "%zu", i * share);
		snprintf(l, sizeof(l), "%zu", share);
		snprintf(ks, sizeof(ks), "%zu", k);
		if (!(m[i].pid = fork())) {
			char *av[] = { argv[0], "participant", sock, off, l, ks, NULL };
			if (dup2(memfd, MEM_FD) < 0 || dup2(cmd[0], CMD_FD) < 0 || dup2(ack[1], ACK_FD) < 0)
				_exit(3);
			execv("/proc/self/exe", av);
			_exit(4);
		}
		close(cmd[0]);
		close(ack[1]);
		m[i].cmd = cmd[1], m[i].ack = ack[0];
	}
	for (size_t r = 0; r < runs; r++) {
		uffdsnap_snap_t *s;

		/* begin, the coordinator alone with every entry populated */
		populate(a, len);
		finish(begin(ctx, &b_one[r]), 1);
		/* begin with the participants holding the entries */
		madvise(a, len, MADV_DONTNEED);
		for (size_t i = 0; i < nparts; i++)
			tell(&m[i], 'J');
		while (uffdsnap_participant_count(ctx) != (int)nparts)
			usleep(1000);
		finish(begin(ctx, &b_parts[r]), 1);
		/* a participant's stores (the first participant's share: its top)
		 * and the coordinator's own, same pages (so also un-protected in
		 * the participant that maps them, as its stores were there), one
		 * snapshot each; which goes first alternates from run to run */
		for (int w = 0; w < 2; w++) {
			s = begin(ctx, &(uint64_t){ 0 });
			if ((w + (int)r) % 2 == 0) {
				if (write(m[0].cmd, "W", 1) != 1 ||
				    read(m[0].ack, f_part + r * k, k * 8) != (ssize_t)(k * 8))
					die("participant stores");
			} else {
				timed_stores(a, share, k, f_coord + r * k);
			}
			finish(s, 0);
		}
		for (size_t i = 0; i < nparts; i++)
			tell(&m[i], 'L');
		while (uffdsnap_participant_count(ctx) != 0)
			usleep(1000);
		/* the floor, same stores, order alternating too */
		bare_protect(&own, blen);
		bare_protect(&cross, blen);
		for (int w = 0; w < 2; w++) {
			if ((w + (int)r) % 2 == 0) {
				if (write(bcmd[1], "B", 1) != 1 ||
				    read(back[0], f_bcross + r * k, k * 8) != (ssize_t)(k * 8))
					die("bare child stores");
			} else {
				timed_stores((uint8_t *)own.base, blen, k, f_bown + r * k);
			}
		}
	}
	{
		int st;
		if (write(bcmd[1], "Q", 1) != 1 || waitpid(bpid, &st, 0) != bpid)
			die("bare child exit");
		pthread_cancel(own.thread);
		pthread_cancel(cross.thread);
		pthread_join(own.thread, NULL);
		pthread_join(cross.thread, NULL);
	}
	for (size_t i = 0; i < nparts; i++) {
		int st;
		if (write(m[i].cmd, "Q", 1) != 1 || waitpid(m[i].pid, &st, 0) != m[i].pid)
			die("participant exit");
	}
	{
		double bo50, bo99, bp50, bp99, fc50, fc99, fp50, fp99, fo50, fo99, fx50, fx99;
		pct(b_one, runs, &bo50, &bo99);
		pct(b_parts, runs, &bp50, &bp99);
		pct(f_coord, runs * k, &fc50, &fc99);
		pct(f_part, runs * k, &fp50, &fp99);
		pct(f_bown, runs * k, &fo50, &fo99);
		pct(f_bcross, runs * k, &fx50, &fx99);
		printf("{\"size_mib\":%zu,\"participants\":%zu,\"runs\":%zu,\"stores_per_run\":%zu,"
		       "\"begin_one_ms\":%.3f,\"begin_parts_ms\":%.3f,\"begin_ratio\":%.3f,"
		       "\"fault_coord_p50_us\":%.1f,\"fault_coord_p99_us\":%.1f,"
		       "\"fault_part_p50_us\":%.1f,\"fault_part_p99_us\":%.1f,\"fault_p50_ratio\":%.3f,"
		       "\"bare_own_p50_us\":%.1f,\"bare_cross_p50_us\":%.1f,\"bare_p50_ratio\":%.3f,"
		       "\"loadavg\":%.2f}\n", mib, nparts, runs, k, bo50 / 1e3, bp50 / 1e3, bp50 / bo50, fc50, fc99, fp50,
		       fp99, fp50 / fc50, fo50, fx50, fx50 / fo50, ({ double l[1]; getloadavg(l, 1) == 1 ? l[0] : -1; }));
	}
	uffdsnap_free(ctx);
	rmdir(dir);
	return 0;
}
