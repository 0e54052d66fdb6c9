/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * migrate-bench: live migration of one memfd of "guest RAM" between two
 * network namespaces joined by a veth pair under tbf (1 Gbit/s by default),
 * real TCP, with stop-and-copy, pre-copy and post-copy in the same run, while
 * a writer dirties a hot set at a tenth of the link's bandwidth (issue 12,
 * docs/migration.md "Measured"). Per method: downtime, total time, bytes on
 * the wire, rounds, total time against bytes / link rate; for post-copy also
 * the receiver's first touches of pages that had not arrived (latency of a
 * fetch on demand while the push runs). Needs root (CAP_NET_ADMIN, a
 * userfaultfd); exit 77 without. Not a test: never in the suite.
 *
 *   migrate-bench [--size MB] [--rate-mbit N] [--hot-mb N] [--dirty-pct P] [--methods stop,pre,post]
 *                 [--touches N] [--notsent-lowat BYTES]
 */
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench-util.h"
#include "netpair.h"
#include "uffdsnap.h"

static struct t_netpair net;

static void net_down(void)
{
	t_netpair_down(&net);
}

static void on_signal(int sig)
{
	net_down();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void net_up(unsigned mbit)
{
	if (!t_netpair_init(&net, "umigb", 78, 47614)) {
		printf("migrate-bench: skipped: cannot create network namespaces (needs CAP_NET_ADMIN and ip, tc)\n");
		exit(77);
	}
	atexit(net_down);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (t_netpair_up(&net, mbit))
		die("setting up the namespaces", EIO, NULL);
}

/* A fresh TCP connection from namespace a (*snd) to b (*rcv). */
static void tcp_pair(int *snd, int *rcv)
{
	int r = t_netpair_tcp(&net, snd, rcv);

	if (r)
		die("a TCP connection between the namespaces", -r, NULL);
}

/* ---- the guest: memory and a writer ---------------------------------------------- */

static uint8_t *ram;
static size_t ram_len, hot_len;
static double dirty_pages_per_s;
static pthread_t wr_thread;
static atomic_bool wr_stop;
static atomic_ullong wr_stores;

static void *writer_main(void *arg)
{
	uint64_t st = 42, t0 = now_ns(), done = 0;

	(void)arg;
	while (!atomic_load(&wr_stop)) {
		/* stores due by now at the target rate, one per page */
		uint64_t due = (uint64_t)((double)(now_ns() - t0) * dirty_pages_per_s / 1e9);
		for (; done < due && !atomic_load(&wr_stop); done++) {
			uint64_t x = rnd(&st);
			((volatile uint64_t *)(ram + (x % (hot_len / PAGE)) * PAGE))[(x >> 40) % (PAGE / 8)] = x;
		}
		atomic_store(&wr_stores, done);
		usleep(200);
	}
	return NULL;
}

static void writer_start(void)
{
	atomic_store(&wr_stop, false);
	if (pthread_create(&wr_thread, NULL, writer_main, NULL))
		die("pthread_create", EAGAIN, NULL);
}

static void writer_stop(void)
{
	atomic_store(&wr_stop, true);
	pthread_join(wr_thread, NULL);
}

static uint64_t callback_ns;
static int notsent_lowat; /* --notsent-lowat: set on the sender's socket (0: not) */

static int on_switchover(void *user)
{
	uint64_t t0 = now_ns();

	(void)user;
	writer_stop();
	callback_ns = now_ns() - t0;
	return 0;
}

/* ---- the receiver's first touches (post-copy) ------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Read one byte of `n` random pages of the hot set, timing each. */
static void touch_hot(const uint8_t *addr, unsigned n, uint64_t *lat)
{
	uint64_t st = 7;

	for (unsigned i = 0; i < n; i++) {
		const volatile uint8_t *p = addr + (rnd(&st) % (hot_len / PAGE)) * PAGE;
		uint64_t t0 = now_ns();
		(void)*p;
		lat[i] = now_ns() - t0;
	}
	qsort(lat, n, sizeof(*lat), cmp_u64);
}

enum method { STOP, PRE, POST };
static const char *const method_name[] = { "stop-and-copy", "pre-copy", "post-copy" };

static void run(enum method meth, uffdsnap_t *ctx, double link_bytes_s, unsigned touches)
{
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_incoming_region_t reg = { .size = sizeof(reg) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	uint64_t *lat = calloc(touches ? touches : 1, sizeof(*lat)), t_touch = 0;
	int snd, rcv, r;

	writer_start();
	usleep(500000); /* the writer at its rate before the migration starts */
	tcp_pair(&snd, &rcv);
	if (notsent_lowat && setsockopt(snd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &notsent_lowat, sizeof(notsent_lowat)))
		die("TCP_NOTSENT_LOWAT", errno, NULL);
	uffdsnap_migrate_opts_init(&o);
	o.switchover = on_switchover;
	o.max_downtime_us = 30000;
	o.max_rounds = meth == STOP ? 1 : 0;
	o.flags = meth == POST ? UFFDSNAP_MIGRATE_POSTCOPY : 0;
	if ((r = uffdsnap_migrate_send(ctx, snd, &o, &m)))
		die("uffdsnap_migrate_send", r, uffdsnap_last_error());
	if ((r = uffdsnap_migrate_recv(rcv, NULL, &in)))
		die("uffdsnap_migrate_recv", r, uffdsnap_last_error());
	if ((r = uffdsnap_incoming_wait(in)))
		die("uffdsnap_incoming_wait", r, uffdsnap_last_error());
	if ((r = uffdsnap_incoming_region(in, 0, &reg)))
		die("uffdsnap_incoming_region", r, uffdsnap_last_error());
	if (meth == POST && touches) {
		uint64_t t0 = now_ns();
		touch_hot(reg.addr, touches, lat);
		t_touch = now_ns() - t0;
	}
	if ((r = uffdsnap_incoming_complete(in)))
		die("uffdsnap_incoming_complete", r, uffdsnap_last_error());
	if ((r = uffdsnap_migrate_wait(m)))
		die("uffdsnap_migrate_wait", r, uffdsnap_last_error());
	if (memcmp(reg.addr, ram, ram_len))
		die("the receiver's memory differs from the sender's", EIO, method_name[meth]);
	uffdsnap_migrate_stats(m, &st);
	double ideal = (double)st.bytes_wire / link_bytes_s;
	/* the callback (stopping the writer) is the program's part of the
	 * downtime: on a loaded machine it can be most of it */
	printf("%-14s rounds %2u  wire %7.1f MB  downtime %8.2f ms (callback %.2f, the rest %.2f)  total %7.0f ms  "
	       "total / (bytes/link) %.2f\n",
	       method_name[meth], st.rounds, st.bytes_wire / 1e6, st.downtime_ns / 1e6, callback_ns / 1e6,
	       (st.downtime_ns - callback_ns) / 1e6, st.total_ns / 1e6, st.total_ns / 1e9 / ideal);
	if (meth == POST && touches)
		printf("%-14s first touches of %u random hot pages right after the switchover: median %.0f us, "
		       "p90 %.0f us, max %.1f ms (%.0f ms in all); %llu pages fetched on demand, %.1f MB pushed\n",
		       "", touches, lat[touches / 2] / 1e3, lat[touches * 9 / 10] / 1e3, lat[touches - 1] / 1e6,
		       t_touch / 1e6, (unsigned long long)st.pages_requested, st.round_bytes[st.rounds - 1] / 1e6);
	printf("{\"method\":\"%s\",\"size_mb\":%zu,\"rounds\":%u,\"bytes_wire\":%llu,\"downtime_ms\":%.3f,"
	       "\"callback_ms\":%.3f,\"total_ms\":%.1f,\"ideal_ms\":%.1f,\"pages_requested\":%llu,\"touch_median_us\":%.1f,"
	       "\"touch_max_ms\":%.3f}\n",
	       method_name[meth], (size_t)(ram_len / MiB), st.rounds, (unsigned long long)st.bytes_wire, st.downtime_ns / 1e6,
	       callback_ns / 1e6, st.total_ns / 1e6, ideal * 1e3, (unsigned long long)st.pages_requested,
	       touches ? lat[touches / 2] / 1e3 : 0, touches ? lat[touches - 1] / 1e6 : 0);
	fflush(stdout);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(snd), close(rcv);
	free(lat);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = { { "size", 1, 0, 's' }, { "rate-mbit", 1, 0, 'r' }, { "hot-mb", 1, 0, 'h' },
					    { "dirty-pct", 1, 0, 'd' }, { "methods", 1, 0, 'm' },
					    { "touches", 1, 0, 't' }, { "notsent-lowat", 1, 0, 'l' },
					    { 0, 0, 0, 0 } };
	unsigned mbit = 1000, hot_mb = 32, touches = 200;
	double pct = 10;
	const char *methods = "stop,pre,post";
	uffdsnap_t *ctx;
	uint64_t seed = 1;
	int c, fd, r;

	ram_len = 256 * MiB;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': ram_len = strtoull(optarg, NULL, 0) * MiB; break;
		case 'r': mbit = (unsigned)atoi(optarg); break;
		case 'h': hot_mb = (unsigned)atoi(optarg); break;
		case 'd': pct = atof(optarg); break;
		case 'm': methods = optarg; break;
		case 't': touches = (unsigned)atoi(optarg); break;
		case 'l': notsent_lowat = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [--size MB] [--rate-mbit N] [--hot-mb N] [--dirty-pct P] "
				"[--methods stop,pre,post] [--touches N] [--notsent-lowat BYTES]\n", argv[0]);
			return 2;
		}
	}
	hot_len = (size_t)hot_mb * MiB < ram_len ? (size_t)hot_mb * MiB : ram_len;
	double link = mbit * 1e6 / 8;
	dirty_pages_per_s = link * pct / 100 / PAGE;
	net_up(mbit);
	/* guest RAM: three pages in four random, the rest never touched (holes) */
	if ((fd = memfd_create("guest-ram", MFD_CLOEXEC)) < 0 || ftruncate(fd, (off_t)ram_len))
		die("memfd", errno, NULL);
	if ((ram = mmap(NULL, ram_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
		die("mmap", errno, NULL);
	for (size_t off = 0; off < ram_len; off += PAGE)
		if (rnd(&seed) % 4)
			for (size_t w = 0; w < PAGE / 8; w++)
				((uint64_t *)(ram + off))[w] = rnd(&seed);
	if ((r = uffdsnap_new(&ctx, NULL)) || (r = uffdsnap_add_region(ctx, "guest-ram", ram, ram_len)))
		die("uffdsnap context", r, uffdsnap_last_error());
	printf("migrate-bench: %zu MiB memfd (3/4 random pages, 1/4 holes), link %u Mbit/s tbf, writer dirtying "
	       "a %zu MiB hot set at %.0f %% of the link (%.0f pages/s); load average at start: ",
	       (size_t)(ram_len / MiB), mbit, (size_t)(hot_len / MiB), pct, dirty_pages_per_s);
	fflush(stdout);
	(void)!system("cut -d' ' -f1-3 /proc/loadavg");
	if (strstr(methods, "stop"))
		run(STOP, ctx, link, 0);
	if (strstr(methods, "pre"))
		run(PRE, ctx, link, 0);
	if (strstr(methods, "post"))
		run(POST, ctx, link, touches);
	uffdsnap_free(ctx);
	munmap(ram, ram_len);
	close(fd);
	net_down();
	return 0;
}
