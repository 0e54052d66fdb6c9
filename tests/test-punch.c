/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Never lie about a snapshot: a page populated at the instant that the
 * program destroys without a write fault (hole punch, MADV_REMOVE) before the
 * snapshot copied it cannot be recorded, and the snapshot must fail with
 * -ESTALE naming the region, never come out "complete" with zeros. Both ways
 * the kernel can show it: the page is never touched again (the sweep reads a
 * hole), or it is touched again (a MISSING fault on a page that was data).
 * The sink is held shut so the sweep cannot copy the page first.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

enum how { PUNCH_UNTOUCHED, REMOVE_THEN_WRITE };

static void destroy_uncopied_page(enum how how)
{
	static const char *names[] = { "fallocate(PUNCH_HOLE), page never touched again",
				       "MADV_REMOVE, then a write to the page" };
	const size_t len = 64 * MiB;
	struct usnap_mem m;
	struct usnap_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *victim;
	int r;

	usnap_watchdog(60, names[how]);
	usnap_memfd(&m, len);
	usnap_fill_random(m.addr, len, 71);
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	ctx = usnap_ctx_new(&o);
	usnap_add(ctx, "pool", m.addr, len);
	usnap_cb_init(&cb, -1);
	usnap_cb_gate(&cb, true);
	ck_assert_int_eq(uffdsnap_begin(ctx, usnap_cb_sink(&cb), &s), 0);
	ck_assert(usnap_cb_wait_blocked(&cb, 10));

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
	return usnap_run_suite(s);
}
