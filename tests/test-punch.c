/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Never lie about a snapshot: a page populated at the instant that the
 * program destroys without a write fault (hole punch, MADV_REMOVE) before the
 * snapshot copied it cannot be recorded, and the snapshot must fail with
 * -ESTALE naming the region, never come out "complete" with zeros. Both ways
 * the kernel can show it: the page is never touched again (the sweep reads a
 * hole), or it is touched again (a MISSING fault on a page that was data).
 * The sink is held shut so the sweep cannot copy the page first.
 *
 * reclaimed_zero_page: the one spurious -ESTALE (docs/reliability.md, bug
 * 16), and the proof that the kernel leaves nothing to tell it from a punch;
 * reclaimed_zero_page_prevented: what a program can do about it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/types.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helpers.h"

enum how { PUNCH_UNTOUCHED, REMOVE_THEN_WRITE };

/* A snapshot of m as region 'pool' whose sweep is stalled (its sink shut)
 * once the buffers are full: pages far from the start stay uncopied. `keep`:
 * the stream is kept in cb->mem. */
static uffdsnap_snap_t *begin_stalled(struct t_mem *m, size_t len, uffdsnap_t **ctx, struct t_cb *cb, bool keep)
{
	uffdsnap_opts_t o;
	uffdsnap_snap_t *s;

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	*ctx = t_ctx_new(&o);
	t_add(*ctx, "pool", m->addr, len);
	t_cb_init(cb, -1);
	cb->keep = keep;
	t_cb_gate(cb, true);
	ck_assert_int_eq(uffdsnap_begin(*ctx, t_cb_sink(cb), &s), 0);
	ck_assert(t_cb_wait_blocked(cb, 10));
	return s;
}

static void destroy_uncopied_page(enum how how)
{
	static const char *names[] = { "fallocate(PUNCH_HOLE), page never touched again",
				       "MADV_REMOVE, then a write to the page" };
	const size_t len = 64 * MiB;
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *victim;
	int r;

	t_watchdog(60, names[how]);
	t_memfd(&m, len);
	t_fill_random(m.addr, len, 71);
	s = begin_stalled(&m, len, &ctx, &cb, false);

	victim = m.addr + len - 3 * t_page; /* the sweep goes in address order: far away */
	ck_assert(t_pagemap_entry(victim) & T_PM_WP);
	if (how == PUNCH_UNTOUCHED) {
		ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					   (off_t)(len - 3 * t_page), (off_t)t_page), 0);
	} else {
		ck_assert_int_eq(madvise(victim, t_page, MADV_REMOVE), 0);
		/* a MISSING fault on a page that was data: the failure releases it */
		victim[100] = 0x5a;
	}
	t_cb_gate(&cb, false);
	r = uffdsnap_wait(s);
	t_stats(s, &st);
	t_stats_print(names[how], &st);
	printf("%s: wait %d, \"%s\"\n", names[how], r, uffdsnap_snap_error(s));
	ck_assert_int_eq(r, -ESTALE);
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), "region 'pool'"));
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), "0x3ffd000"));
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	/* the program goes on: its stores to the page land in the file (read
	 * back with pread(2), not through the mapping that stored them), on a
	 * page that is zero but for them: the destroyed data did not come back */
	victim[200] = 0x77;
	{
		uint8_t page[4096];
		ck_assert(t_page <= sizeof(page));
		ck_assert_int_eq(pread(m.fd, page, t_page, (off_t)(len - 3 * t_page)), (ssize_t)t_page);
		ck_assert_int_eq(page[200], 0x77);
		ck_assert_int_eq(page[100], how == REMOVE_THEN_WRITE ? 0x5a : 0);
		page[100] = page[200] = 0;
		for (size_t i = 0; i < t_page; i++)
			t_assert_msg(!page[i], "byte %zu of the destroyed page is %#x", i, page[i]);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_mem_free(&m);
}

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

/* What the kernel shows of one page of a shmem file, through every window a
 * process has on it: the file (SEEK_DATA, cachestat), its mapping (pagemap,
 * mincore) and the bytes. */
static const uint8_t zero4k[4096];

struct page_view {
	int data, in_cache, evicted, recently_evicted, resident, wp, present, zero;
};

static struct page_view view(int fd, const uint8_t *map, size_t page)
{
	struct { __u64 off, len; } range = { page * t_page, t_page };
	struct { __u64 cache, dirty, writeback, evicted, recently_evicted; } cs;
	struct page_view v = { 0 };
	unsigned char mc = 0;
	uint8_t buf[4096];
	uint64_t pm = t_pagemap_entry(map + page * t_page);

	ck_assert(t_page <= sizeof(buf));
	v.data = lseek(fd, (off_t)(page * t_page), SEEK_DATA) == (off_t)(page * t_page);
	ck_assert_int_eq(syscall(__NR_cachestat, fd, &range, &cs, 0), 0);
	v.in_cache = (int)cs.cache;
	v.evicted = (int)cs.evicted;
	v.recently_evicted = (int)cs.recently_evicted;
	ck_assert_int_eq(mincore((void *)(map + page * t_page), t_page, &mc), 0);
	v.resident = mc & 1;
	v.wp = !!(pm & T_PM_WP);
	v.present = !!(pm & T_PM_PRESENT);
	ck_assert_int_eq(pread(fd, buf, t_page, (off_t)(page * t_page)), (ssize_t)t_page);
	v.zero = !memcmp(buf, zero4k, t_page);
	return v;
}

/* Page out [first, first + n) until reclaim dropped every clean page of it
 * (the first call may leave pages in per-CPU LRU batches); the pages left. */
static size_t page_out(int fd, uint8_t *map, size_t first, size_t n)
{
	size_t left = n;

	for (int tries = 0; tries < 5 && left; tries++) {
		ck_assert_int_eq(madvise(map + first * t_page, n * t_page, MADV_PAGEOUT), 0);
		left = 0;
		for (size_t i = first; i < first + n; i++)
			left += lseek(fd, (off_t)(i * t_page), SEEK_DATA) == (off_t)(i * t_page);
	}
	return left;
}

/* Pages [first, first + n) made holes, then read once: clean folios of zeros. */
static void read_populated_holes(struct t_mem *m, size_t first, size_t n)
{
	volatile uint8_t sink = 0;

	ck_assert_int_eq(fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(first * t_page),
				   (off_t)(n * t_page)), 0);
	for (size_t i = first; i < first + n; i++)
		sink += m->addr[i * t_page];
	(void)sink;
}

/*
 * A shmem page filled by a read fault is a clean folio of zeros, which reclaim
 * (memory pressure, or here DAMON's pageout scheme, or MADV_PAGEOUT) may drop
 * from the file without writing it anywhere: it becomes a hole, with no punch.
 * Part 1 shows, outside any snapshot and with the same protection a snapshot
 * puts on the pages, that such a page and a punched page of data look the
 * same through every window the kernel gives (file, page cache counters,
 * page tables, bytes): the pre-image is the only difference, and it is gone.
 * Part 2 shows what the library does about it: it cannot prove the dropped
 * page held zeros at the instant, so the snapshot fails with -ESTALE naming
 * the page (safe: never a wrong snapshot reported good), and nothing stays
 * protected.
 */
START_TEST(reclaimed_zero_page)
{
	const size_t len = 16 * MiB, npages = len / 4096, far = npages - 64;
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	struct page_view dropped, punched;
	char where[64];
	int r;

	t_watchdog(60, "reclaimed_zero_page");
	ck_assert_int_eq(t_page, 4096);
	t_memfd(&m, len);
	t_fill_random(m.addr, len, 72);
	/* pages far..far+31: holes, then read once (clean zeros); far+32: data */
	read_populated_holes(&m, far, 32);
	for (size_t i = far; i < far + 32; i++)
		ck_assert_msg(view(m.fd, m.addr, i).data, "a read fault did not populate page %zu", i);

	/* Part 1: while a snapshot holds the pages protected and its sweep is
	 * stalled before them, drop page far by reclaim and punch page far+32. */
	{
		s = begin_stalled(&m, len, &ctx, &cb, false);
		if (page_out(m.fd, m.addr, far, 1)) {
			t_skip("reclaimed_zero_page", "MADV_PAGEOUT never dropped a clean shmem page here");
			t_cb_gate(&cb, false);
			uffdsnap_wait(s);
			goto out;
		}
		ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					   (off_t)((far + 32) * t_page), (off_t)t_page), 0);
		dropped = view(m.fd, m.addr, far);
		punched = view(m.fd, m.addr, far + 32);
		printf("reclaimed: data %d cache %d evicted %d/%d resident %d wp %d present %d zero %d\n", dropped.data,
		       dropped.in_cache, dropped.evicted, dropped.recently_evicted, dropped.resident, dropped.wp,
		       dropped.present, dropped.zero);
		printf("punched:   data %d cache %d evicted %d/%d resident %d wp %d present %d zero %d\n", punched.data,
		       punched.in_cache, punched.evicted, punched.recently_evicted, punched.resident, punched.wp,
		       punched.present, punched.zero);
		ck_assert_msg(!memcmp(&dropped, &punched, sizeof(dropped)),
			      "the kernel shows a reclaimed clean page differently from a punched one: "
			      "the library could tell them apart (docs/reliability.md, bug 16)");
		ck_assert(!dropped.data && dropped.zero && dropped.wp);
		/* Part 2: the snapshot cannot tell either, and fails on the first */
		t_cb_gate(&cb, false);
		r = uffdsnap_wait(s);
		printf("reclaimed_zero_page: wait %d, \"%s\"\n", r, uffdsnap_snap_error(s));
		ck_assert_int_eq(r, -ESTALE);
		snprintf(where, sizeof(where), "offset 0x%zx ", far * t_page);
		ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), where));
		ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	}
out:
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_mem_free(&m);
}
END_TEST

/*
 * The remedy docs/consistency.md gives a program that reads holes of its
 * shared memory: fallocate(KEEP_SIZE) over those pages before a snapshot
 * marks their folios dirty (mm/shmem.c does so "so that reclaim will not
 * mistake it for freeable"), so reclaim keeps them (or swaps them out, as
 * data) and the snapshot of the same scene as reclaimed_zero_page succeeds.
 */
START_TEST(reclaimed_zero_page_prevented)
{
	const size_t len = 16 * MiB, npages = len / 4096, far = npages - 64;
	struct t_mem m;
	struct t_cb cb;
	struct t_expect e;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uint8_t *ref;
	size_t kept;
	int r;

	t_watchdog(60, "reclaimed_zero_page_prevented");
	ck_assert_int_eq(t_page, 4096);
	t_memfd(&m, len);
	t_fill_random(m.addr, len, 73);
	read_populated_holes(&m, far, 32);
	/* the remedy: allocate over what is already there */
	ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_KEEP_SIZE, (off_t)(far * t_page), (off_t)(32 * t_page)), 0);
	/* the control, before the instant: such pages without the remedy are dropped here */
	read_populated_holes(&m, far + 40, 8);
	if (page_out(m.fd, m.addr, far + 40, 8) == 8) {
		t_skip("reclaimed_zero_page_prevented", "MADV_PAGEOUT never dropped a clean shmem page here");
		t_mem_free(&m);
		return;
	}
	ref = t_mem_copy(&m);
	s = begin_stalled(&m, len, &ctx, &cb, true);
	kept = page_out(m.fd, m.addr, far, 32);
	t_cb_gate(&cb, false);
	r = uffdsnap_wait(s);
	printf("reclaimed_zero_page_prevented: %zu of 32 read-populated pages still data after MADV_PAGEOUT; "
	       "wait %d \"%s\"\n", kept, r, uffdsnap_snap_error(s));
	ck_assert_msg(kept == 32, "reclaim dropped %zu of 32 pages that fallocate had made dirty", 32 - kept);
	ck_assert_msg(r == 0, "the snapshot failed: %d %s", r, uffdsnap_snap_error(s));
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	e = (struct t_expect){ "pool", ref, len };
	t_check_buffer(cb.mem, cb.mem_len, &e, 1);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

START_TEST(punch_untouched_fails) { destroy_uncopied_page(PUNCH_UNTOUCHED); }
END_TEST

START_TEST(remove_then_write_fails) { destroy_uncopied_page(REMOVE_THEN_WRITE); }
END_TEST

int main(void)
{
	Suite *s = suite_create("punch");
	TCase *tc = tcase_create("punch");

	t_test_require_uffd();
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, punch_untouched_fails);
	tcase_add_test(tc, remove_then_write_fails);
	suite_add_tcase(s, tc);
	tc = tcase_create("reclaim");
	tcase_set_tags(tc, "reclaim"); /* skips where reclaim keeps clean pages: punch-reclaim */
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, reclaimed_zero_page);
	tcase_add_test(tc, reclaimed_zero_page_prevented);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
