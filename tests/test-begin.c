/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 1: uffdsnap_begin returns once every region is write-protected,
 * and the snapshot is one instant across all regions even while other threads
 * keep writing (faults raised while begin protects are held).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

/*
 * With the sink blocked, the sweep can copy (and un-protect) at most
 * buffer_bytes of pages; everything else must still be protected right after
 * begin and stay so. Holes carry no protection (they are tracked as MISSING).
 */
START_TEST(begin_protects_every_page)
{
	/* 32 MiB a region under a sanitizer (slower per byte filled and
	 * compared), 16 under TSan: still 8 times the bound over the two
	 * regions */
	const size_t len = T_TSAN ? 16 * MiB : T_SANITIZED ? 32 * MiB : 64 * MiB, bound = 4 * MiB;
	struct t_mem a, b;
	struct t_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	uint8_t *refa, *refb;
	long pa, pb, pa2, pb2, pages = (long)(2 * len / t_page), slack = (long)(bound / t_page);
	int r, fd;

	t_watchdog(100, "begin_protects_every_page");
	t_memfd(&a, len);
	t_mem_new(&b, T_MEM_ANON_SHARED, len);
	t_fill_random(a.addr, len, 1);
	t_fill_random(b.addr, len, 2);
	refa = t_copy(a.addr, len);
	refb = t_copy(b.addr, len);
	ck_assert_int_eq(t_pagemap_protected(a.addr, len), 0);

	uffdsnap_opts_init(&o);
	o.buffer_bytes = bound;
	ctx = t_ctx_new(&o);
	ck_assert_int_eq(t_add(ctx, "a", a.addr, len), 0);
	ck_assert_int_eq(t_add(ctx, "b", b.addr, len), 1);
	ck_assert_int_eq(uffdsnap_region_count(ctx), 2);

	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	ck_assert(fd >= 0);
	t_cb_init(&cb, fd);
	t_cb_gate(&cb, true);
	r = uffdsnap_begin(ctx, t_cb_sink(&cb), &s);
	ck_assert_msg(r == 0, "begin: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());
	pa = t_pagemap_protected(a.addr, len);
	pb = t_pagemap_protected(b.addr, len);
	printf("begin_protects_every_page: right after begin %ld + %ld of %ld pages protected (sweep may have "
	       "taken at most %ld)\n", pa, pb, pages, slack);
	ck_assert_msg(pa + pb >= pages - slack, "only %ld of %ld pages protected after begin", pa + pb, pages);
	ck_assert_msg(pa + pb <= pages, "%ld protected > %ld pages", pa + pb, pages);
	ck_assert_msg(t_cb_wait_blocked(&cb, 10), "the sink was never called");
	usleep(200 * 1000);
	pa2 = t_pagemap_protected(a.addr, len);
	pb2 = t_pagemap_protected(b.addr, len);
	t_stats(s, &st);
	t_stats_print("sink blocked 200ms", &st);
	ck_assert_msg(pa2 + pb2 >= pages - slack, "the sweep un-protected %ld pages past the buffer bound with the "
		      "sink blocked", pages - pa2 - pb2);
	ck_assert_msg(st.pages_sweep + st.pages_fault <= (uint64_t)slack, "copied %llu pages with the sink "
		      "blocked, bound is %ld", (unsigned long long)(st.pages_sweep + st.pages_fault), slack);
	ck_assert_int_eq(st.state, UFFDSNAP_STATE_RUNNING);
	ck_assert_int_eq(uffdsnap_done(s), 0);

	t_cb_gate(&cb, false);
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	ck_assert_int_eq(uffdsnap_done(s), 1);
	ck_assert_str_eq(uffdsnap_snap_error(s), "");
	t_stats(s, &st);
	t_stats_print("done", &st);
	t_assert_exactly_once(&st);
	ck_assert_int_eq(st.state, UFFDSNAP_STATE_DONE);
	ck_assert_uint_eq(st.pages_total, (uint64_t)pages);
	ck_assert_int_eq(t_pagemap_protected(a.addr, len), 0);
	ck_assert_int_eq(t_pagemap_protected(b.addr, len), 0);
	ck_assert_int_eq(uffdsnap_wait(s), 0); /* may be called again */
	close(fd);
	{
		struct t_expect ex[2] = { { "a", refa, len }, { "b", refb, len } };
		t_check_file(path, ex, 2);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_rmdir(dir);
	t_buf_free(refa, len);
	t_buf_free(refb, len);
	t_mem_free(&a);
	t_mem_free(&b);
}
END_TEST

/*
 * The prefix rule: 4 writers, each alternating its writes between two regions,
 * never paused. Every write completed before begin started must be in the
 * snapshot, none after begin returned, and the visible set is a prefix of each
 * writer's program order across both regions.
 *
 * `pad` bytes of zeros around the writers' pages make the regions large enough
 * for begin to protect them with several threads; the writers' pages are then
 * at the start of one region and the end of the other, in spans protected first
 * and last. Under the sanitizers only the writers' pages are read back (the
 * pad was ~8 s of TSan-instrumented reading per round); the file is still
 * verified whole.
 */
static void prefix_round(unsigned rounds, unsigned nwriters, size_t pad, unsigned min_protect_threads)
{
	struct t_seq q = { .pages = 1024, .slots_per_page = 64, .nwriters = nwriters };
	struct t_mem m[2];
	struct t_writers w;
	uffdsnap_t *ctx;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	size_t seq = t_seq_region_bytes(&q), len = seq + pad;

	for (int i = 0; i < 2; i++) {
		t_memfd(&m[i], len);
		memset(m[i].addr, 0, len);
	}
	q.base[0] = m[0].addr;
	q.base[1] = m[1].addr + pad;
	ctx = t_ctx_new(NULL);
	t_add(ctx, "even", m[0].addr, len);
	t_add(ctx, "odd", m[1].addr, len);
	t_tmpdir(dir);
	t_writers_start(&w, nwriters, t_seq_writer, &q);
	ck_assert_msg(t_writers_wait_progress(&w, 100000, 20), "writers did not start");

	/* a round in which no write faulted (the writers had no CPU during the
	 * window: the other lane of tests/run-suite.sh) proves the prefix and
	 * nothing of the fault path: it is taken again, up to four times */
	unsigned faulted = 0, round;

	for (round = 0; faulted < rounds && round < rounds + 4; round++) {
		unsigned long long pre[64], post[64], k[64];
		uffdsnap_snap_t *s;
		uffdsnap_stats_t st;
		uint8_t *img[2];
		size_t l0, l1;
		int r;

		snprintf(path, sizeof(path), "%s/snap%u", dir, round);
		for (unsigned i = 0; i < nwriters; i++)
			pre[i] = atomic_load(&w.progress[i]);
		r = uffdsnap_begin_file(ctx, path, &s);
		for (unsigned i = 0; i < nwriters; i++)
			post[i] = atomic_load(&w.progress[i]);
		ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
		r = uffdsnap_wait(s);
		ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
		t_stats(s, &st);
		t_assert_exactly_once(&st);
		ck_assert_int_eq(t_pagemap_protected(m[0].addr, len) + t_pagemap_protected(m[1].addr, len), 0);
		img[0] = t_read_region_range(path, "even", 0, T_SANITIZED ? seq : len, &l0);
		img[1] = t_read_region_range(path, "odd", T_SANITIZED ? pad : 0, T_SANITIZED ? seq : len, &l1);
		ck_assert(l0 == len && l1 == len);
		{
			uint8_t *seqimg[2] = { img[0], img[1] + (T_SANITIZED ? 0 : pad) };
			for (unsigned i = 0; i < nwriters; i++)
				k[i] = t_seq_check(&q, seqimg, i, atomic_load(&w.progress[i]) + 1);
		}
		printf("prefix round %u (%u protect threads):", round, (unsigned)st.protect_threads);
		ck_assert_msg(st.protect_threads >= min_protect_threads, "begin protected with %u thread(s), "
			      "expected at least %u", (unsigned)st.protect_threads, min_protect_threads);
		for (unsigned i = 0; i < nwriters; i++) {
			unsigned long long last = atomic_load(&w.progress[i]) + 1; /* a store may precede its count */
			printf(" w%u: visible 1..%llu (begin from %llu to %llu, now %llu)", i, k[i], pre[i], post[i],
			       last - 1);
			ck_assert_msg(k[i] >= pre[i], "writer %u: write %llu completed before begin but is not in the "
				      "snapshot (visible up to %llu)", i, pre[i], k[i]);
			ck_assert_msg(k[i] <= post[i] + 1, "writer %u: write %llu is in the snapshot but was made after "
				      "begin returned (%llu)", i, k[i], post[i]);
		}
		printf("\n");
		t_stats_print("prefix", &st);
		faulted += st.faults > 0;
		t_buf_free(img[0], T_SANITIZED ? seq : len);
		t_buf_free(img[1], T_SANITIZED ? seq : len);
		uffdsnap_snap_free(s);
		unlink(path);
	}
	printf("prefix: %u of %u rounds had write faults\n", faulted, round);
	ck_assert_msg(faulted > 0, "no write faulted in %u rounds: the writers were not writing during the snapshots",
		      round);
	t_writers_stop(&w, 20);
	/* the checker itself: live memory must be exactly the prefix ending at each writer's last write */
	for (unsigned i = 0; i < nwriters; i++) {
		unsigned long long last = atomic_load(&w.progress[i]);
		ck_assert_uint_eq(t_seq_check(&q, q.base, i, last), last);
	}
	uffdsnap_free(ctx);
	t_rmdir(dir);
	t_mem_free(&m[0]);
	t_mem_free(&m[1]);
}

START_TEST(begin_one_instant_prefix)
{
	t_watchdog(150, "begin_one_instant_prefix");
	prefix_round(3, 4, 0, 1);
}
END_TEST

/* The same across a begin that protects with a thread per CPU (2 x 96 MiB;
 * 2 x 64 MiB, one round, under the sanitizers: still two threads' worth). */
START_TEST(begin_one_instant_parallel)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	t_watchdog(150, "begin_one_instant_parallel");
	prefix_round(T_SANITIZED ? 1 : 2, 4, (T_SANITIZED ? 64 : 96) * MiB, cpus > 1 ? 2 : 1);
}
END_TEST

/* Errors of begin: each refused call leaves nothing protected or running. */
START_TEST(begin_errors)
{
	struct t_mem a, b;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s = (void *)1, *s2;
	uffdsnap_sink_t *k;
	struct t_cb cb;
	int r;

	t_watchdog(60, "begin_errors");
	t_memfd(&a, 4 * MiB);
	t_fill_random(a.addr, a.len, 3);
	ctx = t_ctx_new(NULL);

	/* no regions */
	r = uffdsnap_begin_file(ctx, "/var/tmp/usnap-never-created", &s);
	ck_assert_int_eq(r, -ENOENT);
	ck_assert_ptr_null(s);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	ck_assert_int_ne(access("/var/tmp/usnap-never-created", F_OK), 0);

	/* NULL arguments */
	ck_assert_int_eq(uffdsnap_begin(NULL, NULL, &s), -EINVAL);
	ck_assert_int_eq(uffdsnap_begin(ctx, NULL, &s), -EINVAL);
	t_add(ctx, "a", a.addr, a.len);
	ck_assert_int_eq(uffdsnap_sink_fd(&k, 1), 0);
	ck_assert_int_eq(uffdsnap_begin(ctx, k, NULL), -EINVAL); /* sink owned (freed) even on failure */

	/* a sink that cannot open: the file's directory does not exist */
	r = uffdsnap_begin_file(ctx, "/var/tmp/usnap-no-such-dir/x/snap", &s);
	ck_assert_msg(r < 0, "begin into a missing directory: %d", r);
	printf("begin_errors: missing dir -> %d %s (%s)\n", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert_int_eq(t_pagemap_protected(a.addr, a.len), 0);

	/* busy: a second begin while one runs */
	t_cb_init(&cb, -1);
	t_cb_gate(&cb, true);
	ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
	r = uffdsnap_begin(ctx, t_cb_sink(&cb), &s2);
	ck_assert_int_eq(r, -EBUSY);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	t_cb_gate(&cb, false);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	uffdsnap_snap_free(s);

	/* a region unmapped since it was added */
	t_memfd(&b, 1 * MiB);
	t_add(ctx, "b", b.addr, b.len);
	ck_assert_int_eq(munmap(b.addr, b.len), 0);
	r = uffdsnap_begin_file(ctx, "/var/tmp/usnap-never-created", &s);
	printf("begin_errors: unmapped region -> %d %s (%s)\n", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert_int_eq(r, -EFAULT);
	ck_assert_int_ne(access("/var/tmp/usnap-never-created", F_OK), 0);
	ck_assert_int_eq(t_pagemap_protected(a.addr, a.len), 0);
	b.addr = NULL;
	a.addr[0]++; /* must not hang */

	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_mem_free(&a);
	t_mem_free(&b);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("begin");
	TCase *tc = tcase_create("begin");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, begin_protects_every_page);
	tcase_add_test(tc, begin_one_instant_prefix);
	tcase_add_test(tc, begin_one_instant_parallel);
	tcase_add_test(tc, begin_errors);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
