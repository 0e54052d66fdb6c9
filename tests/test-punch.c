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
 * 16), and the proof that the kernel leaves nothing to tell it from a punch.
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
 * once the buffers are full: pages far from the start stay uncopied. */
static uffdsnap_snap_t *begin_stalled(struct usnap_mem *m, size_t len, uffdsnap_t **ctx, struct usnap_cb *cb)
{
	uffdsnap_opts_t o;
	uffdsnap_snap_t *s;

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	*ctx = usnap_ctx_new(&o);
	usnap_add(*ctx, "pool", m->addr, len);
	usnap_cb_init(cb, -1);
	usnap_cb_gate(cb, true);
	ck_assert_int_eq(uffdsnap_begin(*ctx, usnap_cb_sink(cb), &s), 0);
	ck_assert(usnap_cb_wait_blocked(cb, 10));
	return s;
}

static void destroy_uncopied_page(enum how how)
{
	static const char *names[] = { "fallocate(PUNCH_HOLE), page never touched again",
				       "MADV_REMOVE, then a write to the page" };
	const size_t len = 64 * MiB;
	struct usnap_mem m;
	struct usnap_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *victim;
	int r;

	usnap_watchdog(60, names[how]);
	usnap_memfd(&m, len);
	usnap_fill_random(m.addr, len, 71);
	s = begin_stalled(&m, len, &ctx, &cb);

	victim = m.addr + len - 3 * usnap_page; /* the sweep goes in address order: far away */
	ck_assert(usnap_pagemap_entry(victim) & USNAP_PM_WP);
	if (how == PUNCH_UNTOUCHED) {
		ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					   (off_t)(len - 3 * usnap_page), (off_t)usnap_page), 0);
	} else {
		ck_assert_int_eq(madvise(victim, usnap_page, MADV_REMOVE), 0);
		/* a MISSING fault on a page that was data: the failure releases it */
		victim[100] = 0x5a;
	}
	usnap_cb_gate(&cb, false);
	r = uffdsnap_wait(s);
	usnap_stats(s, &st);
	usnap_stats_print(names[how], &st);
	printf("%s: wait %d, \"%s\"\n", names[how], r, uffdsnap_snap_error(s));
	ck_assert_int_eq(r, -ESTALE);
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), "region 'pool'"));
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), "0x3ffd000"));
	ck_assert_int_eq(usnap_pagemap_protected(m.addr, len), 0);
	/* the program goes on: its stores to the page land in the file (read
	 * back with pread(2), not through the mapping that stored them), on a
	 * page that is zero but for them: the destroyed data did not come back */
	victim[200] = 0x77;
	{
		uint8_t page[4096];
		ck_assert(usnap_page <= sizeof(page));
		ck_assert_int_eq(pread(m.fd, page, usnap_page, (off_t)(len - 3 * usnap_page)), (ssize_t)usnap_page);
		ck_assert_int_eq(page[200], 0x77);
		ck_assert_int_eq(page[100], how == REMOVE_THEN_WRITE ? 0x5a : 0);
		page[100] = page[200] = 0;
		for (size_t i = 0; i < usnap_page; i++)
			usnap_assert_msg(!page[i], "byte %zu of the destroyed page is %#x", i, page[i]);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_cb_destroy(&cb);
	usnap_mem_free(&m);
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
	struct { __u64 off, len; } range = { page * usnap_page, usnap_page };
	struct { __u64 cache, dirty, writeback, evicted, recently_evicted; } cs;
	struct page_view v = { 0 };
	unsigned char mc = 0;
	uint8_t buf[4096];
	uint64_t pm = usnap_pagemap_entry(map + page * usnap_page);

	ck_assert(usnap_page <= sizeof(buf));
	v.data = lseek(fd, (off_t)(page * usnap_page), SEEK_DATA) == (off_t)(page * usnap_page);
	ck_assert_int_eq(syscall(__NR_cachestat, fd, &range, &cs, 0), 0);
	v.in_cache = (int)cs.cache;
	v.evicted = (int)cs.evicted;
	v.recently_evicted = (int)cs.recently_evicted;
	ck_assert_int_eq(mincore((void *)(map + page * usnap_page), usnap_page, &mc), 0);
	v.resident = mc & 1;
	v.wp = !!(pm & USNAP_PM_WP);
	v.present = !!(pm & USNAP_PM_PRESENT);
	ck_assert_int_eq(pread(fd, buf, usnap_page, (off_t)(page * usnap_page)), (ssize_t)usnap_page);
	v.zero = !memcmp(buf, zero4k, usnap_page);
	return v;
}

/* Page out [first, first + n) until reclaim dropped every clean page of it
 * (the first call may leave pages in per-CPU LRU batches); the pages left. */
static size_t page_out(int fd, uint8_t *map, size_t first, size_t n)
{
	size_t left = n;

	for (int tries = 0; tries < 5 && left; tries++) {
		ck_assert_int_eq(madvise(map + first * usnap_page, n * usnap_page, MADV_PAGEOUT), 0);
		left = 0;
		for (size_t i = first; i < first + n; i++)
			left += lseek(fd, (off_t)(i * usnap_page), SEEK_DATA) == (off_t)(i * usnap_page);
	}
	return left;
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
	struct usnap_mem m;
	struct usnap_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	struct page_view dropped, punched;
	volatile uint8_t sink = 0;
	char where[64];
	int r;

	usnap_watchdog(60, "reclaimed_zero_page");
	ck_assert_int_eq(usnap_page, 4096);
	usnap_memfd(&m, len);
	usnap_fill_random(m.addr, len, 72);
	/* pages far..far+31: holes, then read once (clean zeros); far+32: data */
	ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(far * usnap_page),
				   (off_t)(32 * usnap_page)), 0);
	for (size_t i = far; i < far + 32; i++)
		sink += m.addr[i * usnap_page];
	for (size_t i = far; i < far + 32; i++)
		ck_assert_msg(view(m.fd, m.addr, i).data, "a read fault did not populate page %zu", i);

	/* Part 1: while a snapshot holds the pages protected and its sweep is
	 * stalled before them, drop page far by reclaim and punch page far+32. */
	{
		s = begin_stalled(&m, len, &ctx, &cb);
		if (page_out(m.fd, m.addr, far, 1)) {
			usnap_skip("reclaimed_zero_page", "MADV_PAGEOUT never dropped a clean shmem page here");
			usnap_cb_gate(&cb, false);
			uffdsnap_wait(s);
			goto out;
		}
		ck_assert_int_eq(fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					   (off_t)((far + 32) * usnap_page), (off_t)usnap_page), 0);
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
		usnap_cb_gate(&cb, false);
		r = uffdsnap_wait(s);
		printf("reclaimed_zero_page: wait %d, \"%s\"\n", r, uffdsnap_snap_error(s));
		ck_assert_int_eq(r, -ESTALE);
		snprintf(where, sizeof(where), "offset 0x%zx ", far * usnap_page);
		ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(s), where));
		ck_assert_int_eq(usnap_pagemap_protected(m.addr, len), 0);
	}
out:
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_cb_destroy(&cb);
	usnap_mem_free(&m);
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

	usnap_test_require_uffd();
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, punch_untouched_fails);
	tcase_add_test(tc, remove_then_write_fails);
	suite_add_tcase(s, tc);
	tc = tcase_create("reclaim");
	tcase_set_tags(tc, "reclaim"); /* skips where reclaim keeps clean pages: punch-reclaim */
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, reclaimed_zero_page);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
