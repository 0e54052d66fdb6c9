/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 5: holes and zero pages are recorded without data. A 64 GiB memfd
 * holding 64 MiB in scattered 1 MiB pieces snapshots quickly into a small
 * file; holes read back as zeros; writes into holes during the snapshot are
 * in memory but the snapshot has zeros there.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

#define SPARSE_LEN (64 * GiB)
#define PIECES 64
#define PIECE (1 * MiB)

static size_t piece_off(unsigned i)
{
	/* one piece in each GiB, at a varying page-aligned offset */
	return (size_t)i * GiB + MiB + ((size_t)i * 7919 % 200) * PIECE + (i % 3) * t_page;
}

static double snap_time_ms(uffdsnap_t *ctx, const char *path, uffdsnap_stats_t *st)
{
	uint64_t t0 = t_now_ns();

	t_snap_file(ctx, path, st);
	return t_ms_since(t0);
}

START_TEST(sparse_64g)
{
	struct t_mem sp, dense;
	uffdsnap_t *ctx, *ctx2;
	uffdsnap_stats_t st, dst;
	uffdsnap_reader_t *rd;
	uffdsnap_info_t info = { .size = sizeof(info) };
	char dir[PATH_MAX], path[PATH_MAX + 16], dpath[PATH_MAX + 16];
	uint8_t *buf, *want;
	struct stat sb;
	uint64_t data_pages = (uint64_t)PIECES * PIECE / t_page, total = SPARSE_LEN / t_page;
	double ms, dms;
	int r, id;

	t_watchdog(150, "sparse_64g");
	t_memfd(&sp, SPARSE_LEN);
	for (unsigned i = 0; i < PIECES; i++)
		t_fill_random(sp.addr + piece_off(i), PIECE, 1000 + i);
	ck_assert_int_eq(t_mem_holes(&sp), (long)(total - data_pages));
	t_memfd(&dense, PIECES * PIECE);
	t_fill_random(dense.addr, dense.len, 77);

	ctx = t_ctx_new(NULL);
	t_add(ctx, "sparse", sp.addr, sp.len);
	ctx2 = t_ctx_new(NULL);
	t_add(ctx2, "dense", dense.addr, dense.len);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/sparse", dir);
	snprintf(dpath, sizeof(dpath), "%s/dense", dir);

	ms = snap_time_ms(ctx, path, &st);
	dms = snap_time_ms(ctx2, dpath, &dst);
	t_stats_print("sparse 64 GiB", &st);
	t_stats_print("dense 64 MiB", &dst);
	printf("sparse_64g: 64 GiB memfd with 64 MiB of data: %.1f ms; dense 64 MiB memfd: %.1f ms; ratio %.2f\n",
	       ms, dms, ms / dms);
	t_assert_exactly_once(&st);
	ck_assert_uint_eq(st.pages_total, total);
	ck_assert_uint_eq(st.pages_hole, total - data_pages);
	ck_assert_uint_eq(st.pages_sweep + st.pages_fault, data_pages);
	ck_assert_uint_le(st.bytes_raw, (uint64_t)PIECES * PIECE);
	ck_assert_int_eq(stat(path, &sb), 0);
	printf("sparse_64g: snapshot file %lld bytes (dense: ", (long long)sb.st_size);
	ck_assert_msg((uint64_t)sb.st_size < (uint64_t)PIECES * PIECE + 8 * MiB, "snapshot of 64 MiB of data in a "
		      "64 GiB memfd is %lld bytes", (long long)sb.st_size);
	ck_assert_int_eq(stat(dpath, &sb), 0);
	printf("%lld bytes)\n", (long long)sb.st_size);

	/* read back: every piece exact, holes zero */
	rd = t_reader(path);
	r = uffdsnap_reader_verify(rd);
	ck_assert_msg(r == 0, "verify: %d (%s)", r, uffdsnap_reader_error(rd));
	ck_assert_int_eq(uffdsnap_reader_info(rd, &info), 0);
	ck_assert_int_eq(info.complete, 1);
	ck_assert_uint_eq(info.pages_data + info.pages_zero, total);
	ck_assert_uint_ge(info.pages_zero, total - data_pages);
	id = uffdsnap_reader_find(rd, "sparse");
	ck_assert_int_eq(id, 0);
	buf = t_buf_alloc(PIECE + 2 * t_page);
	want = t_buf_alloc(PIECE + 2 * t_page);
	for (unsigned i = 0; i < PIECES; i++) {
		size_t off = piece_off(i) - t_page; /* one hole page either side */
		memset(want, 0, PIECE + 2 * t_page);
		t_fill_random(want + t_page, PIECE, 1000 + i);
		r = uffdsnap_reader_read(rd, (unsigned)id, off, buf, PIECE + 2 * t_page);
		ck_assert_msg(r == 0, "read piece %u: %d (%s)", i, r, uffdsnap_reader_error(rd));
		ck_assert_msg(!memcmp(buf, want, PIECE + 2 * t_page), "piece %u differs", i);
		/* a hole page in the middle of the next GiB gap */
		r = uffdsnap_reader_read(rd, (unsigned)id, (size_t)i * GiB + 900 * MiB, buf, 2 * t_page);
		ck_assert_int_eq(r, 0);
		for (size_t k = 0; k < 2 * t_page; k++)
			t_assert_msg(buf[k] == 0, "hole byte at %zu + %zu is %d", (size_t)i * GiB + 900 * MiB, k, buf[k]);
	}
	r = uffdsnap_reader_read(rd, (unsigned)id, SPARSE_LEN - t_page, buf, t_page);
	ck_assert_int_eq(r, 0);
	ck_assert_int_eq(buf[t_page - 1], 0);
	/* reading past the end must fail, not crash */
	ck_assert_int_lt(uffdsnap_reader_read(rd, (unsigned)id, SPARSE_LEN - t_page, buf, 2 * t_page), 0);
	uffdsnap_reader_free(rd);
	printf("sparse_64g: %u pieces byte-exact, holes read as zeros\n", PIECES);
	t_check_file(dpath, &(struct t_expect){ "dense", dense.addr, dense.len }, 1);
	for (unsigned i = 0; i < PIECES; i++)
		ck_assert_int_eq(t_pagemap_protected(sp.addr + piece_off(i), PIECE), 0);

	t_buf_free(buf, PIECE + 2 * t_page);
	t_buf_free(want, PIECE + 2 * t_page);
	uffdsnap_free(ctx);
	uffdsnap_free(ctx2);
	t_rmdir(dir);
	t_mem_free(&sp);
	t_mem_free(&dense);
}
END_TEST

/* Writes into holes while the snapshot runs: memory gets the data, the
 * snapshot keeps zeros (the instant), and the mixed zero-page pattern
 * (written zeros) is stored without data too. A 1 GiB memfd, a quarter of it
 * under the sanitizers: copying and comparing every byte of the reference is
 * what costs there, and a quarter (an eighth under TSan) has the same pieces,
 * holes and writes. */
START_TEST(sparse_hole_writes)
{
	const size_t len = T_TSAN ? 128 * MiB : T_SANITIZED ? 256 * MiB : 1 * GiB, pieces = len / (32 * MiB);
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_fix f;
	uffdsnap_stats_t st;
	uint8_t *mem;
	size_t nwritten = 0;
	long holes;
	int r;

	t_watchdog(120, "sparse_hole_writes");
	mem = t_fix_mem(&f, len);
	/* a MiB of data every 32 MiB, alternating random and zero-filled */
	for (size_t i = 0; i < pieces; i++) {
		if (i & 1)
			memset(mem + i * 32 * MiB, 0, MiB);
		else
			t_fill_random(mem + i * 32 * MiB, MiB, 500 + i);
	}
	holes = t_mem_holes(&f.m);
	f.ref = t_mem_copy(&f.m);
	t_fix_ctx(&f, "sp", &o);
	t_fix_cb(&f, "snap");
	atomic_store(&f.cb.sleep_us, 3000);
	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	for (size_t off = 16 * MiB + 8 * t_page; off < len; off += 32 * MiB + t_page) {
		memset(mem + off, 0x5c, t_page);
		nwritten++;
	}
	t_stats(f.s, &st);
	t_stats_print("after hole writes", &st);
	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	t_stats_print("done", &st);
	printf("sparse_hole_writes: %zu writes into holes during the snapshot; %ld holes at the instant\n", nwritten,
	       holes);
	t_assert_exactly_once(&st);
	ck_assert_uint_eq(st.pages_hole, (uint64_t)holes);
	ck_assert_msg(st.pages_zero_found >= pieces / 2 * MiB / t_page, "zero-filled pages not detected: %llu",
		      (unsigned long long)st.pages_zero_found);
	ck_assert_msg(st.bytes_out < (pieces / 2 + 4) * MiB, "%zu MiB random + %zu MiB zeros wrote %llu bytes",
		      pieces / 2, pieces / 2, (unsigned long long)st.bytes_out);
	for (size_t off = 16 * MiB + 8 * t_page; off < len; off += 32 * MiB + t_page)
		ck_assert_int_eq(mem[off + 17], 0x5c);
	t_fix_check(&f);
	t_fix_free(&f);
}
END_TEST

/*
 * A memfd whose every page fallocate() reserved: st_blocks says "no hole", so
 * begin takes it whole without walking it (arm.c find_data), though half
 * its pages were never written and SEEK_DATA calls those holes. Writes to
 * them during the snapshot must still fault and leave zeros in the snapshot.
 */
START_TEST(sparse_fallocated)
{
	const size_t len = 64 * MiB;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_fix f;
	uffdsnap_stats_t st;
	uint8_t *mem;
	struct stat sb;
	int r;

	t_watchdog(60, "sparse_fallocated");
	mem = t_fix_mem(&f, len);
	ck_assert_int_eq(fallocate(f.m.fd, 0, 0, (off_t)len), 0);
	for (size_t off = 0; off < len; off += 2 * MiB)
		t_fill_random(mem + off, MiB, 900 + off / MiB);
	ck_assert_int_eq(fstat(f.m.fd, &sb), 0);
	ck_assert_msg((uint64_t)sb.st_blocks * 512 >= len, "fallocate left %lld of %zu bytes unallocated",
		      (long long)(len - (uint64_t)sb.st_blocks * 512), len);
	f.ref = t_mem_copy(&f.m);
	t_fix_ctx(&f, "fa", &o);
	t_fix_cb(&f, "snap");
	atomic_store(&f.cb.sleep_us, 3000);
	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	/* one page of every reserved-but-unwritten MiB, and one of every written one */
	for (size_t off = MiB + 5 * t_page; off < len; off += MiB)
		memset(mem + off, 0x5c, t_page);
	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	t_stats_print("fallocated", &st);
	t_assert_exactly_once(&st);
	ck_assert_msg(st.pages_hole == 0, "%llu pages taken as holes: begin walked the file",
		      (unsigned long long)st.pages_hole);
	for (size_t off = MiB + 5 * t_page; off < len; off += MiB)
		ck_assert_int_eq(mem[off + 17], 0x5c);
	t_fix_check(&f);
	t_fix_free(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sparse");
	TCase *tc = tcase_create("sparse");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, sparse_64g);
	tcase_add_test(tc, sparse_hole_writes);
	tcase_add_test(tc, sparse_fallocated);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
