/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The matrix (test-matrix.c): /proc and /sys helpers, and the zram swap
 * device the pageout cases swap to (matrix.h).
 */
#include "matrix.h"

/* ---- small system helpers -------------------------------------------------------- */

long vmstat(const char *key)
{
	FILE *f = fopen("/proc/vmstat", "re");
	char name[64];
	long v, r = -1;

	ck_assert_msg(f != NULL, "open /proc/vmstat: %s", strerror(errno));
	while (fscanf(f, "%63s %ld", name, &v) == 2)
		if (!strcmp(name, key)) {
			r = v;
			break;
		}
	fclose(f);
	return r;
}

int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), e = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) < 0)
		e = -errno;
	close(fd);
	return e;
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* write_str, interrupted after `secs` (memory offline retries until a signal). */
int write_str_bounded(const char *path, const char *s, unsigned secs)
{
	struct sigaction sa = { 0 }, old;
	int r;

	sa.sa_handler = noop_handler; /* no SA_RESTART: the write returns EINTR */
	sigaction(SIGALRM, &sa, &old);
	alarm(secs);
	r = write_str(path, s);
	alarm(0);
	sigaction(SIGALRM, &old, NULL);
	t_watchdog(45, case_name); /* alarm(0) disarmed it */
	return r;
}

void pagemap_read(const void *addr, size_t n, uint64_t *out)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	size_t want = n * 8;
	ssize_t r;

	ck_assert_msg(fd >= 0, "open pagemap: %s", strerror(errno));
	r = pread(fd, out, want, (off_t)((uintptr_t)addr / t_page * 8));
	ck_assert_msg(r == (ssize_t)want, "pread pagemap: %zd %s", r, strerror(errno));
	close(fd);
}

/* ---- zram swap, owned by the parent (Check runner) process ------------------------------ */

struct matrix_swap g_swap = { .id = -1 };

void swap_down(void)
{
	char p[128], id[16];

	if (g_swap.id < 0 || getpid() != g_swap.owner)
		return;
	if (g_swap.ok && swapoff(g_swap.dev))
		fprintf(stderr, "swapoff %s: %s\n", g_swap.dev, strerror(errno));
	g_swap.ok = false;
	snprintf(p, sizeof(p), "/sys/block/zram%d/reset", g_swap.id);
	write_str(p, "1");
	snprintf(id, sizeof(id), "%d", g_swap.id);
	if (write_str("/sys/class/zram-control/hot_remove", id))
		fprintf(stderr, "zram%d: hot_remove failed\n", g_swap.id);
	g_swap.id = -1;
}

static void swap_signal(int sig)
{
	swap_down();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Unchecked fixture of the pageout cases: runs in the parent, before the test
 * child is forked; swap_down runs after it, and at exit or on a signal. */
void swap_up(void)
{
	const size_t size = 256 * MiB;
	char p[128], buf[32];
	uint8_t *hdr;
	ssize_t n;
	int fd, e;

	g_swap.ok = false;
	if (geteuid() != 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "not root: cannot create a zram swap device");
		return;
	}
	fd = open("/sys/class/zram-control/hot_add", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "/sys/class/zram-control/hot_add: %s (no zram)",
			 strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "zram hot_add: %s", n < 0 ? strerror(errno) : "no id");
		return;
	}
	buf[n] = '\0';
	if (!g_swap.handlers) {
		struct sigaction sa = { 0 };
		sa.sa_handler = swap_signal;
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGHUP, &sa, NULL);
		atexit(swap_down);
		g_swap.handlers = true;
	}
	g_swap.id = atoi(buf);
	g_swap.owner = getpid();
	snprintf(g_swap.dev, sizeof(g_swap.dev), "/dev/zram%d", g_swap.id);
	snprintf(p, sizeof(p), "/sys/block/zram%d/disksize", g_swap.id);
	if ((e = write_str(p, "256M"))) {
		snprintf(g_swap.why, sizeof(g_swap.why), "%s: %s", p, strerror(-e));
		swap_down();
		return;
	}
	/* the swap header mkswap would write: version 1, last page, magic */
	hdr = calloc(1, 4096);
	((uint32_t *)(hdr + 1024))[0] = 1;
	((uint32_t *)(hdr + 1024))[1] = (uint32_t)(size / 4096 - 1);
	memcpy(hdr + 4096 - 10, "SWAPSPACE2", 10);
	fd = open(g_swap.dev, O_WRONLY | O_CLOEXEC);
	e = fd < 0 ? errno : pwrite(fd, hdr, 4096, 0) != 4096 ? errno : fsync(fd) ? errno : 0;
	if (fd >= 0)
		close(fd);
	free(hdr);
	if (e || swapon(g_swap.dev, 0)) {
		snprintf(g_swap.why, sizeof(g_swap.why), "%s %s: %s", e ? "writing the swap header to" : "swapon",
			 g_swap.dev, strerror(e ? e : errno));
		swap_down();
		return;
	}
	g_swap.ok = true;
}
