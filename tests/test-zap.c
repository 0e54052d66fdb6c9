/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 3: pages zapped mid-snapshot (MADV_DONTNEED) stay tracked: the
 * uffd-wp marker survives the zap (pagemap bit 57 still set), a later write
 * still faults first (it waits for the copy), and the snapshot holds the old
 * data. The sink is held shut so the sweep (which walks in address order and
 * is bounded by buffer_bytes) cannot reach the zapped pages at the end.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

struct zap_writer {
	uint8_t *addr;
	size_t *pages;
	size_t n;
};

static void write_zapped(struct t_writers *w, unsigned idx)
{
	struct zap_writer *z = w->arg;

	(void)idx;
	for (size_t i = 0; i < z->n; i++) {
		memset(z->addr + z->pages[i] * t_page, 0xc3, 128);
		atomic_fetch_add(&w->progress[0], 1);
	}
}

START_TEST(zap_keeps_tracking)
{
	/* 128 MiB under a sanitizer (slower per byte filled and compared): the
	 * zapped pages are still in the last quarter, far from the sweep */
	const size_t len = T_SANITIZED ? 128 * MiB : 256 * MiB, np = len / t_page, nzap = 192;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_fix f;
	struct t_writers w;
	struct zap_writer z;
	uffdsnap_stats_t st;
	size_t pages[192];
	uint64_t faults0;
	long range_wp;
	int r;

	t_watchdog(150, "zap_keeps_tracking");
	t_fix_mem(&f, len);
	t_fill_random(f.m.addr, len, 21);
	f.ref = t_copy(f.m.addr, len);
	t_fix_ctx(&f, "big", &o);
	t_fix_cb(&f, "snap");
	t_cb_gate(&f.cb, true);

	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	ck_assert(t_cb_wait_blocked(&f.cb, 10));
	/* the write below must find every buffer taken: wait until the sweep
	 * has filled them all (under a sanitizer that takes a while) */
	ck_assert(t_wait_sweep_stalled(f.s, 30));

	/* single pages scattered over the last quarter */
	for (size_t i = 0; i < nzap; i++) {
		pages[i] = np * 3 / 4 + i * 311 % (np / 4 - 4096); /* clear of the range below */
		uint8_t *p = f.m.addr + pages[i] * t_page;
		ck_assert_msg(t_pagemap_entry(p) & T_PM_WP, "page %zu not protected before the zap", pages[i]);
		ck_assert_int_eq(madvise(p, t_page, MADV_DONTNEED), 0);
		uint64_t e = t_pagemap_entry(p);
		ck_assert_msg(!(e & T_PM_PRESENT), "page %zu still present after MADV_DONTNEED", pages[i]);
		ck_assert_msg(e & T_PM_WP, "page %zu lost its uffd-wp marker on MADV_DONTNEED (entry %#llx)",
			      pages[i], (unsigned long long)e);
	}
	/* a 4 MiB range near the end, zapped in one call */
	ck_assert_int_eq(madvise(f.m.addr + len - 8 * MiB, 4 * MiB, MADV_DONTNEED), 0);
	range_wp = t_pagemap_protected(f.m.addr + len - 8 * MiB, 4 * MiB);
	ck_assert_int_eq(t_pagemap_present(f.m.addr + len - 8 * MiB, 4 * MiB), 0);
	printf("zap_keeps_tracking: %zu single pages and a 4 MiB range zapped; range still protected: %ld of %lu\n",
	       nzap, range_wp, 4 * MiB / t_page);
	ck_assert_int_eq(range_wp, (long)(4 * MiB / t_page));
	/* reading a zapped page maps it back, still protected */
	ck_assert_int_eq(memcmp(f.m.addr + pages[0] * t_page, f.ref + pages[0] * t_page, t_page), 0);
	ck_assert(t_pagemap_entry(f.m.addr + pages[0] * t_page) & T_PM_WP);

	/* a write to a zapped page must wait for the copy: with the sink shut and
	 * the buffer full it cannot complete */
	z.addr = f.m.addr;
	z.pages = pages;
	z.n = nzap;
	t_stats(f.s, &st);
	faults0 = st.faults;
	t_writers_start(&w, 1, write_zapped, &z);
	/* the event: the handler receives the write's fault. It cannot resolve
	 * it (sink shut, buffers full), so the write has not completed. Without
	 * the protection no fault comes, and the writer finishes instead. */
	while (st.faults == faults0 && atomic_load(&w.progress[0]) < nzap)
		t_stats(f.s, &st), usleep(1000);
	t_stats_print("writer on zapped pages, sink shut", &st);
	ck_assert_msg(atomic_load(&w.progress[0]) == 0, "a write to a zapped page completed without waiting for "
		      "its copy (the zap dropped the protection)");
	ck_assert_uint_gt(st.faults, faults0);

	atomic_store(&f.cb.sleep_us, 1000); /* slow: the sweep must not reach the last quarter first */
	t_cb_gate(&f.cb, false);
	t_writers_join(&w, 30);
	ck_assert_uint_eq(atomic_load(&w.progress[0]), nzap);
	t_stats(f.s, &st);
	t_stats_print("writer done", &st);
	ck_assert_msg(st.pages_fault >= nzap, "only %llu pages copied by faults for %zu writes to zapped pages",
		      (unsigned long long)st.pages_fault, nzap);
	atomic_store(&f.cb.sleep_us, 0);
	/* and the zapped range, written after the gate opened */
	memset(f.m.addr + len - 8 * MiB, 0x77, 4 * MiB);

	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	t_stats_print("done", &st);
	t_assert_exactly_once(&st);
	ck_assert_int_eq(t_pagemap_protected(f.m.addr, len), 0);
	t_fix_check(&f);
	for (size_t i = 0; i < nzap; i++)
		ck_assert_int_eq(f.m.addr[pages[i] * t_page + 5], 0xc3);
	t_fix_free(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("zap");
	TCase *tc = tcase_create("zap");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, zap_keeps_tracking);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
