/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Resource limits at the edge (issue 16): with RLIMIT_NOFILE a few
 * descriptors above what the process holds, and with RLIMIT_AS a little
 * above its size, every step (uffdsnap_new, add_region, begin, wait) either
 * works or fails with a negative errno and a sentence; whatever happened, no
 * page is left protected and a writer of the region is never blocked. The
 * sweep must cross the edge: some attempts fail and some succeed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (8 * MiB)

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int top = 0;

	ck_assert(d);
	while ((e = readdir(d)))
		if (atoi(e->d_name) > top)
			top = atoi(e->d_name);
	closedir(d);
	return top;
}

struct outcome {
	int fail, ok;
};

/* One attempt under the current limits: a snapshot of m to dir/snap while
 * the program stores into every page (none may hang). Returns its result;
 * check() looks at it once the limits are lifted again. */
static int attempt(struct usnap_mem *m, const char *dir, char *why, size_t cap)
{
	char path[PATH_MAX + 16];
	uffdsnap_t *ctx = NULL;
	uffdsnap_snap_t *s = NULL;
	int r;

	snprintf(path, sizeof(path), "%s/snap", dir);
	r = uffdsnap_new(&ctx, NULL);
	if (!r)
		r = uffdsnap_add_region(ctx, "r", m->addr, LEN) < 0 ? -1 : 0;
	if (!r)
		r = uffdsnap_begin_file(ctx, path, &s);
	if (!r) {
		for (size_t i = 0; i < LEN / usnap_page; i++)
			m->addr[i * usnap_page] ^= 1;
		r = uffdsnap_wait(s);
	}
	snprintf(why, cap, "%s", s ? uffdsnap_snap_error(s) : uffdsnap_last_error());
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	return r;
}

static void check(struct usnap_mem *m, const char *dir, int r, const char *why, struct outcome *o, const char *what)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/snap", dir);
	if (r) {
		ck_assert_msg(r < 0 && *why, "%s: failed with %d and no reason", what, r);
		printf("  %s: %s\n", what, why);
		o->fail++;
	} else {
		ck_assert_msg(usnap_file_verifies(path), "%s: the snapshot reported good does not verify", what);
		o->ok++;
	}
	ck_assert_int_eq(usnap_pagemap_protected(m->addr, LEN), 0);
	for (size_t i = 0; i < LEN / usnap_page; i++)
		m->addr[i * usnap_page] ^= 1;
	unlink(path);
}

static size_t vm_size(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	unsigned long pages = 0;

	ck_assert(f && fscanf(f, "%lu", &pages) == 1);
	fclose(f);
	return pages * usnap_page;
}

/*
 * Steps 0..nsteps of `resource`: RLIMIT_NOFILE with every free descriptor
 * number below the limit taken but `step` of them, RLIMIT_AS `step` x 16 MiB
 * above the process's size.
 */
static void edge(int resource, int nsteps, const char *label)
{
	struct rlimit old, lim;
	struct outcome o = { 0 };
	struct usnap_mem m;
	char dir[PATH_MAX], what[64], why[600];

	usnap_memfd(&m, LEN);
	usnap_fill_random(m.addr, LEN, 5);
	usnap_tmpdir(dir);
	ck_assert(!getrlimit(resource, &old));
	for (int step = 0; step <= nsteps; step++) {
		int top = open_fds(), fill[1024], nfill = 0, fd, r;

		lim = old;
		if (resource == RLIMIT_NOFILE) {
			while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0 && fd < top && nfill < 1024)
				fill[nfill++] = fd;
			if (fd >= 0)
				close(fd);
			lim.rlim_cur = (rlim_t)(top + 1 + step);
			snprintf(what, sizeof(what), "%d descriptors free", step);
		} else {
			lim.rlim_cur = (rlim_t)(vm_size() + (size_t)step * 16 * MiB);
			snprintf(what, sizeof(what), "%d MiB of address space free", step * 16);
		}
		ck_assert(!setrlimit(resource, &lim));
		r = attempt(&m, dir, why, sizeof(why));
		ck_assert(!setrlimit(resource, &old));
		check(&m, dir, r, why, &o, what);
		while (nfill)
			close(fill[--nfill]);
	}
	printf("%s: %d attempts failed cleanly, %d succeeded\n", label, o.fail, o.ok);
	ck_assert_msg(o.fail > 0 && o.ok > 0, "the sweep did not cross the edge (%d failed, %d succeeded)", o.fail,
		      o.ok);
	usnap_rmdir(dir);
	usnap_mem_free(&m);
}

START_TEST(nofile_edge) { usnap_watchdog(150, "nofile_edge"); edge(RLIMIT_NOFILE, 16, "nofile_edge"); }
END_TEST

START_TEST(address_space_edge)
{
	/* A sanitizer reserves terabytes of shadow address space up front:
	 * RLIMIT_AS cannot be brought near the program's size under one. */
	if (USNAP_SANITIZED)
		return usnap_skip("address_space_edge", "a sanitizer's shadow memory needs the address space");
	usnap_watchdog(150, "address_space_edge");
	edge(RLIMIT_AS, 10, "address_space_edge");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("limits");
	TCase *tc = tcase_create("limits"), *as = tcase_create("as");

	usnap_test_require_uffd();
	tcase_set_timeout(tc, 160);
	tcase_set_timeout(as, 160);
	tcase_add_test(tc, nofile_edge);
	tcase_set_tags(as, "as"); /* skips under a sanitizer: a meson test of its own */
	tcase_add_test(as, address_space_edge);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, as);
	return usnap_run_suite(s);
}
