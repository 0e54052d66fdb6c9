/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unpaused multi-writer consistency: 4 writer threads, two regions, 10
 * back-to-back snapshots on one context; in every snapshot each writer's
 * visible writes are a prefix of its program order across both regions, and
 * include everything it wrote before begin started.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

START_TEST(multiwriter_ten_snapshots)
{
	struct t_seq q = { .pages = 512, .slots_per_page = 64, .nwriters = 4 };
	struct t_mem m[2];
	struct t_writers w;
	uffdsnap_t *ctx;
	uffdsnap_opts_t o;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	size_t len = t_seq_region_bytes(&q);
	uint64_t total_faults = 0, total_fault_pages = 0;
	const unsigned rounds = T_SANITIZED ? 4 : 10; /* a sanitizer: ~1.7 s a round under TSan */

	t_watchdog(170, "multiwriter_ten_snapshots");
	t_memfd(&m[0], len);
	t_mem_new(&m[1], T_MEM_ANON_SHARED, len);
	for (int i = 0; i < 2; i++) {
		memset(m[i].addr, 0, len);
		q.base[i] = m[i].addr;
	}
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 8 * MiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "memfd", m[0].addr, len);
	t_add(ctx, "anon", m[1].addr, len);
	t_tmpdir(dir);
	t_writers_start(&w, q.nwriters, t_seq_writer, &q);
	ck_assert(t_writers_wait_progress(&w, 10000, 20));

	for (unsigned round = 0; round < rounds; round++) {
		unsigned long long pre[4], post[4], k[4];
		uffdsnap_snap_t *s;
		uffdsnap_stats_t st;
		uint8_t *img[2];
		size_t l0, l1;
		int r;

		snprintf(path, sizeof(path), "%s/snap", dir);
		for (unsigned i = 0; i < q.nwriters; i++)
			pre[i] = atomic_load(&w.progress[i]);
		r = uffdsnap_begin_file(ctx, path, &s);
		for (unsigned i = 0; i < q.nwriters; i++)
			post[i] = atomic_load(&w.progress[i]);
		ck_assert_msg(r == 0, "round %u: begin: %d (%s)", round, r, uffdsnap_last_error());
		usleep(10 * 1000 * (round % 3));
		r = uffdsnap_wait(s);
		ck_assert_msg(r == 0, "round %u: wait: %d %s", round, r, uffdsnap_snap_error(s));
		t_stats(s, &st);
		t_assert_exactly_once(&st);
		ck_assert_int_eq(t_pagemap_protected(m[0].addr, len), 0);
		ck_assert_int_eq(t_pagemap_protected(m[1].addr, len), 0);
		img[0] = t_read_region(path, "memfd", &l0);
		img[1] = t_read_region(path, "anon", &l1);
		ck_assert(l0 == len && l1 == len);
		printf("round %u: pause %.3f ms, faults %llu, pages fault/sweep %llu/%llu;", round, st.begin_ns / 1e6,
		       (unsigned long long)st.faults, (unsigned long long)st.pages_fault,
		       (unsigned long long)st.pages_sweep);
		for (unsigned i = 0; i < q.nwriters; i++) {
			unsigned long long last = atomic_load(&w.progress[i]) + 1;
			k[i] = t_seq_check(&q, img, i, last);
			printf(" w%u 1..%llu [%llu,%llu]", i, k[i], pre[i], post[i]);
			ck_assert_msg(k[i] >= pre[i], "round %u writer %u: write %llu made before begin is missing "
				      "(visible up to %llu)", round, i, pre[i], k[i]);
			ck_assert_msg(k[i] <= post[i] + 1, "round %u writer %u: write %llu made after begin returned "
				      "(%llu) is visible", round, i, k[i], post[i]);
		}
		printf("\n");
		total_faults += st.faults;
		total_fault_pages += st.pages_fault;
		t_buf_free(img[0], len);
		t_buf_free(img[1], len);
		uffdsnap_snap_free(s);
		ck_assert_int_eq(unlink(path), 0);
	}
	t_writers_stop(&w, 20);
	printf("multiwriter_ten_snapshots: %u snapshots, %llu faults, %llu pages copied for writers\n", rounds,
	       (unsigned long long)total_faults, (unsigned long long)total_fault_pages);
	ck_assert_msg(total_fault_pages > 0, "the writers never hit a protected page");
	for (unsigned i = 0; i < q.nwriters; i++) {
		unsigned long long last = atomic_load(&w.progress[i]);
		ck_assert_uint_eq(t_seq_check(&q, q.base, i, last), last);
	}
	uffdsnap_free(ctx);
	t_rmdir(dir);
	t_mem_free(&m[0]);
	t_mem_free(&m[1]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("multiwriter");
	TCase *tc = tcase_create("multiwriter");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, multiwriter_ten_snapshots);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
