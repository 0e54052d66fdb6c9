/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * hugetlbfs regions (memfd_create(MFD_HUGETLB), MAP_SHARED): protected,
 * copied and un-protected in whole huge pages. The test reserves huge pages
 * through /proc/sys/vm/nr_hugepages and gives them back at exit; without root
 * or free memory for them it skips. Writers hit copied and not-yet-copied
 * huge pages and never-touched ones (which only markers protect); the
 * snapshot must equal the instant and no page may stay protected.
 */
#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

#define HPAGE (2 * MiB)
#define RESERVE 600 /* huge pages: a 1 GiB region and a small one */

static long old_nr = -1;
static pid_t main_pid; /* Check forks a child per test: only main restores */

static long read_nr(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static int write_nr(long v)
{
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
	int ok;

	if (!f)
		return -1;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

static void restore_nr(void)
{
	if (getpid() == main_pid && old_nr >= 0 && write_nr(old_nr) == 0)
		printf("nr_hugepages restored to %ld\n", old_nr);
}

static uint8_t *huge_memfd(int *fd, size_t len)
{
	uint8_t *a;

	*fd = memfd_create("usnap-hugetlb", MFD_CLOEXEC | MFD_HUGETLB);
	ck_assert_msg(*fd >= 0, "memfd_create(MFD_HUGETLB): %s", strerror(errno));
	ck_assert_int_eq(ftruncate(*fd, (off_t)len), 0);
	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	ck_assert_msg(a != MAP_FAILED, "mmap hugetlb: %s", strerror(errno));
	return a;
}

START_TEST(hugetlb_exact)
{
	/* 32 MiB under a sanitizer: the time is the slowed sink writing the
	 * huge pages the writes fault in (2 MiB each), half as many */
	const size_t len = USNAP_SANITIZED ? 32 * MiB : 64 * MiB, nh = len / HPAGE, pph = HPAGE / usnap_page;
	struct usnap_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_stats_t st;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	uint8_t *a, *ref, *now;
	unsigned writes = 0, holes = 0;
	int fd, r;

	usnap_watchdog(120, "hugetlb_exact");
	a = huge_memfd(&fd, len);
	/* every third huge page never touched: a hole in the file */
	for (size_t h = 0; h < nh; h++)
		if (h % 3 != 1)
			usnap_fill_random(a + h * HPAGE, HPAGE, 40 + h);
	ref = usnap_buf_alloc(len);
	ck_assert(pread(fd, ref, len, 0) == (ssize_t)len); /* reading through the mapping would fill the holes */
	now = usnap_copy(ref, len);
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB; /* two huge pages: a fault must span several chunks */
	ctx = usnap_ctx_new(&o);
	usnap_add(ctx, "huge", a, len);
	s = usnap_begin_stalled(ctx, &cb, 20000);
	ck_assert_int_eq(usnap_pagemap_protected(a + len - HPAGE, HPAGE), (long)pph); /* not copied yet */
	/* the second half: not copied yet; holes and data */
	for (size_t h = nh / 2; h < nh; h++, writes++) {
		size_t off = h * HPAGE + (h * 7919 % pph) * usnap_page + 13;
		holes += h % 3 == 1;
		a[off] ^= 0x5a;
		now[off] ^= 0x5a;
	}
	atomic_store(&cb.sleep_us, 0);
	r = uffdsnap_wait(s);
	usnap_stats(s, &st);
	usnap_stats_print("hugetlb", &st);
	printf("hugetlb_exact: %zu huge pages (%zu never touched), %u writes after the instant (%u into holes), "
	       "%" PRIu64 " faults, %" PRIu64 " pages copied for writers, begin %.3f ms\n", nh, (nh + 1) / 3, writes,
	       holes, st.faults, st.pages_fault, st.begin_ns / 1e6);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	usnap_assert_exactly_once(&st);
	ck_assert_uint_ge(st.pages_fault, (uint64_t)pph); /* a fault copies its whole huge page */
	ck_assert_int_eq(usnap_pagemap_protected(a, len), 0);
	{
		struct usnap_expect ex = { "huge", ref, len };
		usnap_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(a, now, len), 0);

	/* and back: restore the snapshot into the same huge pages */
	{
		uffdsnap_restore_stats_t rst = { .size = sizeof(rst) };
		uffdsnap_reader_t *rd;
		FILE *f = tmpfile();
		ck_assert(f && fwrite(cb.mem, 1, cb.mem_len, f) == cb.mem_len && fflush(f) == 0);
		ck_assert_int_eq(uffdsnap_reader_open_fd(&rd, fileno(f)), 0);
		r = uffdsnap_restore_ctx(rd, ctx, NULL, &rst);
		ck_assert_msg(r == 0, "restore_ctx into hugetlb: %d (%s)", r, uffdsnap_last_error());
		ck_assert_msg(memcmp(a, ref, len) == 0, "the restored huge pages differ from the instant");
		printf("hugetlb_exact: restored into the huge pages: %" PRIu64 " data + %" PRIu64 " zero pages\n",
		       rst.pages_data, rst.pages_zero);
		uffdsnap_reader_free(rd);
		fclose(f);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_cb_destroy(&cb);
	usnap_buf_free(ref, len);
	usnap_buf_free(now, len);
	munmap(a, len);
	close(fd);
}
END_TEST

/* The pause for 1 GiB of huge pages: one ioctl per region, 512 huge PTEs.
 * Under a sanitizer, whose pause says nothing, 256 MiB take the same path
 * (the time there is copying the whole region through the library). */
START_TEST(hugetlb_begin_1g)
{
	const size_t len = USNAP_SANITIZED ? 256 * MiB : 1 * GiB;
	struct usnap_cb cb;
	uffdsnap_stats_t st;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	uint8_t *a;
	int fd, r;

	usnap_watchdog(120, "hugetlb_begin_1g");
	a = huge_memfd(&fd, len);
	for (size_t off = 0; off < len; off += usnap_page)
		a[off] = (uint8_t)(off >> 12);
	ctx = usnap_ctx_new(NULL);
	usnap_add(ctx, "huge", a, len);
	usnap_cb_init(&cb, -1); /* a sink that drops the bytes */
	r = uffdsnap_begin(ctx, usnap_cb_sink(&cb), &s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	a[len - 1] ^= 1; /* a write fault */
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	usnap_stats(s, &st);
	printf("hugetlb_begin_1g: begin (protect %zu huge pages) %.3f ms; snapshot %.1f ms, %" PRIu64 " faults\n",
	       len / HPAGE, st.begin_ns / 1e6, st.elapsed_ns / 1e6, st.faults);
	ck_assert_int_eq(usnap_pagemap_protected(a, len), 0);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_cb_destroy(&cb);
	munmap(a, len);
	close(fd);
}
END_TEST

START_TEST(hugetlb_refused)
{
	uffdsnap_t *ctx = usnap_ctx_new(NULL);
	uint8_t *a;
	int fd, r;

	a = huge_memfd(&fd, 4 * MiB);
	r = uffdsnap_add_region(ctx, "half", a, HPAGE / 2);
	printf("hugetlb_refused: half a huge page: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EINVAL);
	munmap(a, 4 * MiB);
	a = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ck_assert(a != MAP_FAILED);
	r = uffdsnap_add_region(ctx, "private", a, 4 * MiB);
	printf("hugetlb_refused: MAP_PRIVATE: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EMEDIUMTYPE);
	munmap(a, 4 * MiB);
	close(fd);
	uffdsnap_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hugetlb");
	TCase *tc = tcase_create("hugetlb");
	long free_before, got;

	usnap_test_require_uffd();
	if (geteuid() != 0) {
		printf("SKIP: reserving huge pages (/proc/sys/vm/nr_hugepages) needs root\n");
		return USNAP_SKIP;
	}
	old_nr = read_nr("/proc/sys/vm/nr_hugepages");
	free_before = read_nr("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
	if (old_nr < 0 || free_before < 0) {
		printf("SKIP: no 2 MiB huge pages on this kernel\n");
		return USNAP_SKIP;
	}
	main_pid = getpid();
	atexit(restore_nr);
	if (write_nr(old_nr + RESERVE) ||
	    (got = read_nr("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")) < free_before + RESERVE) {
		printf("SKIP: could not reserve %d huge pages (memory too fragmented or too small)\n", RESERVE);
		return USNAP_SKIP;
	}
	printf("nr_hugepages %ld -> %ld for the test\n", old_nr, old_nr + RESERVE);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, hugetlb_exact);
	tcase_add_test(tc, hugetlb_begin_1g);
	tcase_add_test(tc, hugetlb_refused);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
