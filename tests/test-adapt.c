/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * UFFDSNAP_OPT_ADAPT: chunks are stored uncompressed while write faults wait
 * for buffer space (and shortly after), and the snapshot stays byte-exact.
 * Slow zstd (level 9) and a 1 MiB pool make a writer that touches every page
 * of the first 3 MiB wait; the sweep compresses the rest once it is done.
 * The same run without the flag stores every (compressible) chunk
 * compressed, and with the flag but no writer nothing waits, so nothing is
 * stored raw.
 */
#include <string.h>

#include "helpers.h"

#define LEN (48 * MiB)
#define WRITTEN (LEN / 16)     /* the rest takes the sweep longer than ADAPT_HOLD_NS */

struct adapt_state {
	uint8_t *addr;
};

/* One pass over the first pages after begin: each store faults, none is in the snapshot. */
static void adapt_writer(struct t_writers *w, unsigned idx)
{
	struct adapt_state *a = w->arg;

	for (size_t off = 0; off < WRITTEN; off += t_page) {
		__atomic_store_n(&a->addr[off + 100], (uint8_t)0xa5, __ATOMIC_RELAXED);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
}

/* Compressible pages (a byte pattern and a quarter of noise), the same for every run. */
static void fill(uint8_t *p)
{
	uint64_t rng = 42;

	for (size_t off = 0; off < LEN; off += t_page) {
		memset(p + off, (int)(off / t_page * 7), t_page);
		for (size_t i = 0; i < t_page / 4; i += 8) {
			uint64_t v = t_splitmix64(&rng);
			memcpy(p + off + i * 4, &v, sizeof(v));
		}
	}
}

static void run(bool adapt, bool writer, uffdsnap_stats_t *st)
{
	uffdsnap_opts_t o = t_opts(1 * MiB, 64 * 1024);
	struct t_fix f;
	struct t_writers w;
	struct adapt_state a;
	int r;

	o.zstd_level = 9;
	if (adapt)
		o.flags |= UFFDSNAP_OPT_ADAPT;
	a.addr = t_fix_mem(&f, LEN);
	fill(a.addr);
	f.ref = t_mem_copy(&f.m);
	t_fix_ctx(&f, "adapt", &o);
	t_fix_cb(&f, "snap");
	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	if (writer) {
		t_writers_start(&w, 1, adapt_writer, &a);
		t_writers_join(&w, 60);
	}
	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, st);
	printf("adapt=%d writer=%d: %llu of %llu chunks stored uncompressed, %llu bytes out, longest wait of a "
	       "fault for a buffer %.2f ms\n", adapt, writer, (unsigned long long)st->chunks_uncompressed,
	       (unsigned long long)st->chunks, (unsigned long long)st->bytes_out, st->fault_wait_max_ns / 1e6);
	t_assert_exactly_once(st);
	t_fix_check(&f);
	t_fix_free(&f);
}

START_TEST(adapt_when_a_writer_waits)
{
	uffdsnap_stats_t on, off, idle;

	t_watchdog(150, "adapt_when_a_writer_waits");
	/* whether the writer catches the sweep's full buffers is timing: on a
	 * machine busy elsewhere (the other lane of tests/run-suite.sh) it may
	 * finish first, so a run where it never waited is taken again */
	for (unsigned i = 0; i < 4; i++) {
		run(true, true, &on);
		if (on.fault_wait_max_ns > 0)
			break;
	}
	run(false, true, &off);
	run(true, false, &idle);
	ck_assert_msg(on.fault_wait_max_ns > 0, "the writer never waited for a buffer: the test proves nothing");
	ck_assert_msg(on.chunks_uncompressed > 0, "a writer waited and no chunk was stored uncompressed");
	ck_assert_msg(on.chunks_uncompressed < on.chunks, "every chunk uncompressed, though nothing waits once the "
		      "writer is done");
	ck_assert_msg(off.chunks_uncompressed == 0, "%llu chunks uncompressed without UFFDSNAP_OPT_ADAPT",
		      (unsigned long long)off.chunks_uncompressed);
	ck_assert_msg(idle.chunks_uncompressed == 0, "%llu chunks uncompressed with no writer waiting",
		      (unsigned long long)idle.chunks_uncompressed);
	ck_assert_msg(on.bytes_out > off.bytes_out, "uncompressed chunks and no bigger stream");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("adapt");
	TCase *tc = tcase_create("adapt");

	t_test_require_uffd();
	tcase_set_timeout(tc, 160);
	tcase_add_test(tc, adapt_when_a_writer_waits);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
