/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 2 (and the kernel-mode half of 3): after begin the program runs
 * on; the first write to a page not yet copied waits only until its old
 * contents are copied; every page is recorded exactly once; after wait no
 * page is protected and writes no longer fault.
 *
 * Byte-exact oracle: the reference is taken with no writer running, begin,
 * then random user writes, zaps (MADV_DONTNEED), writes into holes, and
 * kernel-mode writes (read(2) from a pipe, pread(2) from a file) into the
 * region. The snapshot must equal the reference exactly, and memory must
 * hold every new write.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

struct pipe_feed {
	int wfd;
	const uint8_t *data;
	size_t len;
};

static void *feed_pipe(void *arg)
{
	struct pipe_feed *f = arg;

	for (size_t off = 0; off < f->len;) {
		ssize_t w = write(f->wfd, f->data + off, f->len - off);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	close(f->wfd);
	return NULL;
}

static size_t pick_page(uint64_t *rng, size_t lo, size_t hi)
{
	return lo + (size_t)(t_splitmix64(rng) % (hi - lo));
}

START_TEST(fault_path_oracle)
{
	/* 64 MiB under a sanitizer, 32 under TSan: the same writes, zaps and
	 * kernel-mode writes into a second half that the sweep has not reached */
	const size_t len = T_TSAN ? 32 * MiB : T_SANITIZED ? 64 * MiB : 128 * MiB, np = len / t_page;
	const uffdsnap_opts_t o = t_opts(8 * MiB, 0);
	struct t_fix f;
	uffdsnap_stats_t st, st2;
	char src[PATH_MAX + 16];
	uint8_t *mem, *now, page[65536];
	uint64_t rng = 42;
	size_t holes, nwrites = 0, nzaps = 0, nhole_writes = 0, nkernel = 0;
	int r, sfd, pfd[2];

	t_watchdog(150, "fault_path_oracle");
	mem = t_fix_mem(&f, len);
	holes = t_fill_mixed(mem, len, 7, 61, 13);
	f.ref = t_mem_copy(&f.m);    /* the instant: no writer runs (pread: holes stay holes) */
	now = t_copy(f.ref, len);    /* what memory must hold at the end */
	ck_assert_int_eq(t_mem_holes(&f.m), (long)holes);

	t_fix_ctx(&f, "heap", &o);
	t_fix_cb(&f, "snap");
	snprintf(src, sizeof(src), "%s/src", f.dir);
	/* A slow sink (~50 MiB/s) keeps the sweep in the first half while the test
	 * writes, however slowly the writes go (sanitizers); full speed after. */
	atomic_store(&f.cb.sleep_us, 5000);

	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());

	/* 1. random user-mode writes to the second half (not yet swept) */
	for (int i = 0; i < 3000; i++) {
		size_t p = pick_page(&rng, np / 2, np), off = (size_t)(t_splitmix64(&rng) % (t_page - 8));
		uint64_t v = t_splitmix64(&rng);
		memcpy(mem + p * t_page + off, &v, 8);
		memcpy(now + p * t_page + off, &v, 8);
		nwrites++;
	}
	/* 2. zaps of pages not yet copied, then writes to half of them */
	for (int i = 0; i < 300; i++) {
		size_t p = pick_page(&rng, np / 2, np);
		ck_assert_int_eq(madvise(mem + p * t_page, t_page, MADV_DONTNEED), 0);
		nzaps++;
		if (i & 1) {
			mem[p * t_page + 100] ^= 0x5a;
			now[p * t_page + 100] ^= 0x5a;
		}
	}
	/* 3. writes into holes (pages i % 61 == 1 were never written) */
	for (size_t p = np / 2 + (61 + 1 - np / 2 % 61) % 61; p < np; p += 61 * 7) {
		ck_assert_msg(p % 61 == 1, "hole arithmetic");
		memset(mem + p * t_page, 0xab, 64);
		memset(now + p * t_page, 0xab, 64);
		nhole_writes++;
	}
	/* 4. kernel-mode writes: read(2) from a pipe into 16 pages at a time */
	ck_assert_int_eq(pipe(pfd), 0);
	{
		static uint8_t feed[256 * 4096];
		struct pipe_feed pf = { pfd[1], feed, sizeof(feed) };
		pthread_t t;
		t_fill_random(feed, sizeof(feed), 99);
		ck_assert_int_eq(pthread_create(&t, NULL, feed_pipe, &pf), 0);
		for (size_t done = 0; done < sizeof(feed);) {
			size_t p = pick_page(&rng, np / 2, np - 16), want = 16 * t_page;
			if (want > sizeof(feed) - done)
				want = sizeof(feed) - done;
			ssize_t got = read(pfd[0], mem + p * t_page, want);
			ck_assert_msg(got > 0, "read(2) into the region: %zd %s", got, strerror(errno));
			memcpy(now + p * t_page, feed + done, (size_t)got);
			done += (size_t)got;
			nkernel++;
		}
		ck_assert_int_eq(t_join_timeout(t, 10), 0);
		close(pfd[0]);
	}
	/* 5. kernel-mode writes: pread(2) from a file, 64 KiB at a time */
	sfd = open(src, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	ck_assert(sfd >= 0);
	t_fill_random(page, sizeof(page), 5);
	ck_assert_int_eq(write(sfd, page, sizeof(page)), (ssize_t)sizeof(page));
	for (int i = 0; i < 32; i++) {
		size_t p = pick_page(&rng, np / 2, np - 16);
		ck_assert_int_eq(pread(sfd, mem + p * t_page, sizeof(page), 0), (ssize_t)sizeof(page));
		memcpy(now + p * t_page, page, sizeof(page));
		nkernel++;
	}
	close(sfd);
	t_stats(f.s, &st);
	t_stats_print("after the writes", &st);
	/* Not vacuous: writes went through the fault path. (Not "still running":
	 * under a sanitizer on a loaded machine the writes can outlast the sweep.) */
	ck_assert_uint_gt(st.pages_fault, 0);
	atomic_store(&f.cb.sleep_us, 0);

	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	printf("fault_path_oracle: %zu user writes, %zu zaps, %zu hole writes, %zu kernel-mode writes\n", nwrites,
	       nzaps, nhole_writes, nkernel);
	t_stats_print("done", &st);
	t_assert_exactly_once(&st);
	ck_assert_msg(st.pages_fault > 0, "no page was copied by the fault path");
	ck_assert_msg(st.pages_sweep > 0, "no page was copied by the sweep");
	ck_assert_msg(st.pages_hole == holes, "pages_hole %llu != %zu holes at the instant",
		      (unsigned long long)st.pages_hole, holes);
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	ck_assert_msg(!memcmp(mem, now, len), "memory lost a write made during the snapshot");

	/* writes after wait no longer fault (and would hang here if they did) */
	for (size_t p = 0; p < np; p += 1)
		mem[p * t_page + 1] ^= 1;
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	t_stats(f.s, &st2);
	ck_assert_uint_eq(st2.faults, st.faults);
	ck_assert_uint_eq(st2.pages_fault, st.pages_fault);

	t_fix_check(&f);
	t_buf_free(now, len);
	t_fix_free(&f);
}
END_TEST

/* A writer blocked in a fault is released once its page is copied: a write
 * to a page not yet copied blocks while the sink is stalled and the buffer is
 * full, and completes when the sink moves on. */
struct one_write {
	uint8_t *p;
	_Atomic int done;
};

static void *do_one_write(void *arg)
{
	struct one_write *ow = arg;

	ow->p[0] = 0xee;
	atomic_store(&ow->done, 1);
	return NULL;
}

START_TEST(fault_path_blocks_until_copied)
{
	const size_t len = 64 * MiB;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_fix f;
	uffdsnap_stats_t st;
	struct one_write ow;
	uint8_t *mem;
	pthread_t t;
	int r;

	t_watchdog(60, "fault_path_blocks_until_copied");
	mem = t_fix_mem(&f, len);
	t_fill_random(mem, len, 11);
	f.ref = t_copy(mem, len);
	t_fix_ctx(&f, "r", &o);
	t_fix_cb(&f, NULL);
	t_cb_gate(&f.cb, true);
	ck_assert_int_eq(uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s), 0);
	ck_assert(t_cb_wait_blocked(&f.cb, 10));
	usleep(100 * 1000); /* the sweep fills the buffer */

	ow.p = mem + len - t_page;
	atomic_store(&ow.done, 0);
	ck_assert(t_pagemap_entry(ow.p) & T_PM_WP);
	ck_assert_int_eq(pthread_create(&t, NULL, do_one_write, &ow), 0);
	usleep(300 * 1000);
	t_stats(f.s, &st);
	t_stats_print("writer waiting", &st);
	ck_assert_msg(atomic_load(&ow.done) == 0, "a write to a protected, uncopied page completed while no buffer "
		      "was free: the old contents cannot have been copied");
	ck_assert_msg(st.faults >= 1, "the blocked write raised no fault message");
	t_cb_gate(&f.cb, false);
	ck_assert_int_eq(t_join_timeout(t, 20), 0);
	ck_assert_int_eq(atomic_load(&ow.done), 1);
	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	t_stats_print("done", &st);
	t_assert_exactly_once(&st);
	ck_assert_uint_ge(st.pages_fault, 1);
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	ck_assert_int_eq(mem[len - t_page], 0xee);
	t_fix_check(&f);
	t_fix_free(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("fault-path");
	TCase *tc = tcase_create("fault-path");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, fault_path_oracle);
	tcase_add_test(tc, fault_path_blocks_until_copied);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
