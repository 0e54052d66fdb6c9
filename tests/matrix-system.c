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
	r = t_write_str(path, s);
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

/* Unchecked fixture of the pageout cases: runs in the parent, before the test
 * child is forked; swap_down runs after it, and at exit or on a signal. */
void swap_up(void)
{
	t_swap_up(256);
}

void swap_down(void)
{
	t_swap_down();
}
