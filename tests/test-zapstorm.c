/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * MADV_DONTNEED storms on shared memory (issue 16). With remove events
 * requested, every MADV_DONTNEED on a registered range queues an event, and
 * until it is read the kernel refuses every write-protect change on that
 * userfaultfd (EAGAIN): two threads zapping in tight loops used to fail 5 of
 * 5 snapshots ("un-protecting after the sweep: Resource temporarily
 * unavailable"). Shared memory loses nothing to a zap (the page stays in the
 * file, its uffd-wp marker in the page table), so a snapshot must complete
 * and be exact however the program zaps it.
 *
 * Two sequence writers (the prefix rule, helpers.h) store into two regions
 * while two zappers MADV_DONTNEED 8 random pages at a time, without pause;
 * five snapshots in a row must each succeed and show one instant. The second
 * case adds a private region to the same context (private memory needs remove
 * events: a zap there destroys data): zapping the shared regions must still
 * not disturb the snapshot.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

struct storm {
	uint8_t *base[2];
	size_t len;
};

static void zapper(struct t_writers *w, unsigned idx)
{
	struct storm *z = w->arg;
	uint64_t st = 0x9e3779b97f4a7c15ull * (idx + 1);
	size_t np = z->len / t_page;

	while (!atomic_load(&w->stop)) {
		for (int k = 0; k < 8; k++) {
			size_t p = t_splitmix64(&st) % np;
			if (madvise(z->base[k & 1] + p * t_page, t_page, MADV_DONTNEED))
				return;
		}
		atomic_fetch_add(&w->progress[idx], 8);
	}
}

static void storm(bool with_private)
{
	struct t_seq q = { .pages = T_SANITIZED ? 512 : 2048, .slots_per_page = 64, .nwriters = 2 };
	struct t_mem m[2];
	struct t_writers w, zw;
	struct storm z;
	uffdsnap_t *ctx;
	uffdsnap_opts_t o;
	uint8_t *priv = NULL;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	size_t len = t_seq_region_bytes(&q), plen = (T_SANITIZED ? 2 : 8) * MiB;
	unsigned long long zaps = 0;

	t_memfd(&m[0], len);
	t_mem_new(&m[1], T_MEM_ANON_SHARED, len);
	for (int i = 0; i < 2; i++) {
		memset(m[i].addr, 0, len);
		q.base[i] = z.base[i] = m[i].addr;
	}
	z.len = len;
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 8 * MiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "memfd", m[0].addr, len);
	t_add(ctx, "anon", m[1].addr, len);
	if (with_private) {
		priv = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert(priv != MAP_FAILED);
		t_fill_random(priv, plen, 71);
		t_add(ctx, "private", priv, plen);
	}
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	t_writers_start(&w, q.nwriters, t_seq_writer, &q);
	ck_assert(t_writers_wait_progress(&w, 10000, 20));
	t_writers_start(&zw, 2, zapper, &z);
	ck_assert(t_writers_wait_progress(&zw, 1000, 20));

	for (unsigned round = 0; round < 5; round++) {
		unsigned long long pre[2], post[2];
		uffdsnap_snap_t *s;
		uffdsnap_stats_t st;
		uint8_t *img[2];
		size_t l0, l1;
		int r;

		for (unsigned i = 0; i < q.nwriters; i++)
			pre[i] = atomic_load(&w.progress[i]);
		r = uffdsnap_begin_file(ctx, path, &s);
		for (unsigned i = 0; i < q.nwriters; i++)
			post[i] = atomic_load(&w.progress[i]);
		ck_assert_msg(r == 0, "round %u: begin under a zap storm: %d (%s)", round, r, uffdsnap_last_error());
		r = uffdsnap_wait(s);
		ck_assert_msg(r == 0, "round %u: snapshot under a zap storm failed: %d %s", round, r,
			      uffdsnap_snap_error(s));
		t_stats(s, &st);
		t_assert_exactly_once(&st);
		img[0] = t_read_region(path, "memfd", &l0);
		img[1] = t_read_region(path, "anon", &l1);
		ck_assert(l0 == len && l1 == len);
		for (unsigned i = 0; i < q.nwriters; i++) {
			unsigned long long k = t_seq_check(&q, img, i, atomic_load(&w.progress[i]) + 1);
			ck_assert_msg(k >= pre[i] && k <= post[i] + 1, "round %u writer %u: visible 1..%llu, begin "
				      "ran between %llu and %llu", round, i, k, pre[i], post[i]);
		}
		if (priv) {
			size_t pl;
			uint8_t *pimg = t_read_region(path, "private", &pl);
			ck_assert(pl == plen && !memcmp(pimg, priv, plen));
			t_buf_free(pimg, pl);
		}
		printf("round %u: pause %.3f ms, faults %llu, pages fault/sweep %llu/%llu, zaps so far %llu\n", round,
		       st.begin_ns / 1e6, (unsigned long long)st.faults, (unsigned long long)st.pages_fault,
		       (unsigned long long)st.pages_sweep,
		       (unsigned long long)(atomic_load(&zw.progress[0]) + atomic_load(&zw.progress[1])));
		t_buf_free(img[0], len);
		t_buf_free(img[1], len);
		uffdsnap_snap_free(s);
		ck_assert_int_eq(unlink(path), 0);
	}
	t_writers_stop(&zw, 20);
	zaps = atomic_load(&zw.progress[0]) + atomic_load(&zw.progress[1]);
	t_writers_stop(&w, 20);
	printf("%s: 5 snapshots exact under %llu zaps\n", with_private ? "storm_with_private" : "storm_shared", zaps);
	ck_assert_uint_ge(zaps, 1000);
	uffdsnap_free(ctx);
	t_rmdir(dir);
	if (priv)
		munmap(priv, plen);
	t_mem_free(&m[0]);
	t_mem_free(&m[1]);
}

START_TEST(storm_shared) { t_watchdog(170, "storm_shared"); storm(false); }
END_TEST

START_TEST(storm_with_private) { t_watchdog(170, "storm_with_private"); storm(true); }
END_TEST

int main(void)
{
	Suite *s = suite_create("zapstorm");
	TCase *tc = tcase_create("zapstorm");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, storm_shared);
	tcase_add_test(tc, storm_with_private);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
