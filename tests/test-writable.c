/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * After a snapshot the library makes the shmem pages it un-protected writable
 * again (arm.c usnap_writable_again: MADV_POPULATE_WRITE over pages with a
 * present PTE), so the program's next write to each does not fault. That fast
 * path must change nothing else: a hole stays a hole (a page never written,
 * and a page punched during the snapshot after it was copied), every byte of
 * the memory stays what the program left, and the snapshot is exact.
 *
 * The kernel's side is asserted, not assumed: the program's writes after the
 * snapshot take (almost) no page fault (getrusage minflt; without the fast
 * path each of them takes one: the PTE stays read-only after un-protect).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "helpers.h"

static long minflt(void)
{
	struct rusage ru;

	ck_assert_int_eq(getrusage(RUSAGE_THREAD, &ru), 0);
	return ru.ru_minflt;
}

/* PAGEMAP_SCAN (Linux 6.7+; newer than the system's headers: struct
 * pm_scan_arg is 12 u64, the first page_region field is 3) answers on
 * /proc/self/pagemap. */
static bool have_pagemap_scan(void *addr)
{
	enum { IS_PRESENT = 1 << 3 };
	uint64_t vec[3], a[12] = { sizeof(a), 0, (uintptr_t)addr, (uintptr_t)addr + t_page, 0, (uintptr_t)vec, 1,
				   0, 0, IS_PRESENT, 0, IS_PRESENT };
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC), r;

	ck_assert_int_ge(fd, 0);
	r = ioctl(fd, _IOWR('f', 16, uint64_t[12]), a);
	close(fd);
	return r >= 0;
}

static bool is_hole(int fd, size_t page)
{
	off_t at = (off_t)(page * t_page);

	return lseek(fd, at, SEEK_DATA) != at;
}

START_TEST(writable_after_snapshot)
{
	const size_t len = (T_SANITIZED ? 2 : 8) * MiB, np = len / t_page;
	const size_t far = np - 4; /* random data (t_fill_mixed: holes at i % 8 == 1) */
	uffdsnap_opts_t o = t_opts(1 * MiB, 64 * KiB);
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *before, *after;
	bool *hole = calloc(np, sizeof(*hole));
	size_t nhole = 0, ndata = 0;
	long holes0, f0, faults;

	t_watchdog(60, "writable_after_snapshot");
	t_memfd(&m, len);
	if (!have_pagemap_scan(m.addr)) {
		t_skip("writable_after_snapshot", "no PAGEMAP_SCAN (Linux 6.7+): the pages are left to their faults");
		goto out;
	}
	t_fill_mixed(m.addr, len, 91, 8, 5);
	for (size_t i = 0; i < np; i++)
		nhole += hole[i] = is_hole(m.fd, i);
	ck_assert(!hole[far] && !hole[far + 1] && nhole > 0);
	holes0 = t_mem_holes(&m);
	ck_assert_int_eq(holes0, (long)nhole);
	before = t_mem_copy(&m);

	/* A slow sink keeps the snapshot running while a page is written (the
	 * fault copies and un-protects its 64 KiB) and then punched: a hole now,
	 * in a run that was data at the instant. */
	ctx = t_ctx_new(&o);
	t_add(ctx, "pool", m.addr, len);
	s = t_begin_stalled(ctx, &cb, 50000);
	((volatile uint8_t *)m.addr)[far * t_page] = before[far * t_page];
	ck_assert_msg(t_pagemap_protected(m.addr, len) > 0, "the snapshot ended before the punch: nothing tested");
	ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(far * t_page),
				   (off_t)(2 * t_page)), 0);
	ck_assert_int_eq(t_finish_stalled(s, &cb, &st, "writable"), 0);
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	t_check_buffer(cb.mem, cb.mem_len, &(struct t_expect){ "pool", before, len }, 1);

	/* holes stay holes: never written, and punched after the copy */
	hole[far] = hole[far + 1] = true;
	for (size_t i = 0; i < np; i++)
		t_assert_msg(is_hole(m.fd, i) == hole[i], "page %zu: a hole %d, expected %d", i, !hole[i], hole[i]);
	ck_assert_int_eq(t_mem_holes(&m), holes0 + 2);
	ck_assert_int_eq(t_pagemap_present(m.addr + far * t_page, 2 * t_page), 0);
	/* every byte as the program left it */
	memset(before + far * t_page, 0, 2 * t_page);
	after = t_mem_copy(&m);
	ck_assert_int_eq(memcmp(before, after, len), 0);

	/* the program's next write to each page takes no fault */
	f0 = minflt();
	for (size_t i = 0; i < np; i++) {
		volatile uint8_t *v = m.addr + i * t_page;
		if (!hole[i]) {
			*v = *v;
			ndata++;
		}
	}
	faults = minflt() - f0;
	printf("writable: %zu data pages, %ld write faults after the snapshot (%zu holes)\n", ndata, faults, nhole);
	ck_assert_msg(faults < (long)ndata / 4, "%ld of %zu pages still fault on their first write", faults, ndata);

	t_buf_free(after, len);
	t_buf_free(before, len);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
out:
	free(hole);
	t_mem_free(&m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("writable");
	TCase *tc = tcase_create("writable");

	t_test_require_uffd();
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, writable_after_snapshot);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
