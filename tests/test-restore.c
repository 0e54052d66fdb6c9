/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Eager restore (uffdsnap_restore_memfd/_file/_into/_ctx): snapshot -> restore ->
 * byte-exact, for every region kind the core snapshots, on one and on several
 * threads; holes stay holes (SEEK_DATA and st_blocks); a length mismatch, a
 * corrupt chunk and a truncated file are errors that say what and where, and
 * leave no memfd or file behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

#define POOL_LEN (8 * MiB)
#define META_LEN (64 * KiB)

/* A snapshot of two regions: "pool" of `kind` (random, zero and hole pages,
 * and a 1 MiB run of holes at its end) and a small memfd "meta". */
struct fixture {
	char dir[PATH_MAX];
	char path[PATH_MAX + 16];
	struct t_mem pool, meta;
	uint8_t *want[2];            /* contents at the instant */
	size_t len[2];
};

static void fixture_new(struct fixture *f, enum t_mem_kind kind, size_t chunk_bytes)
{
	const uffdsnap_opts_t o = t_opts(0, chunk_bytes);
	uffdsnap_t *ctx;

	memset(f, 0, sizeof(*f));
	t_mem_new(&f->pool, kind, POOL_LEN);
	t_fill_mixed(f->pool.addr, POOL_LEN - MiB, 42, 7, 5);
	t_memfd(&f->meta, META_LEN);
	t_fill_random(f->meta.addr, META_LEN, 9);
	f->len[0] = POOL_LEN, f->len[1] = META_LEN;
	f->want[0] = t_mem_copy(&f->pool);
	f->want[1] = t_mem_copy(&f->meta);
	ctx = t_ctx_new(&o);
	t_add(ctx, "pool", f->pool.addr, POOL_LEN);
	t_add(ctx, "meta", f->meta.addr, META_LEN);
	t_tmpdir(f->dir);
	snprintf(f->path, sizeof(f->path), "%s/snap", f->dir);
	t_snap_file(ctx, f->path, NULL);
	uffdsnap_free(ctx);
}

static void fixture_free(struct fixture *f)
{
	t_buf_free(f->want[0], f->len[0]);
	t_buf_free(f->want[1], f->len[1]);
	t_mem_free(&f->pool);
	t_mem_free(&f->meta);
	t_rmdir(f->dir);
}

/* Pages of fd's first len bytes that are data (not holes), by SEEK_DATA/SEEK_HOLE. */
static size_t data_pages(int fd, size_t len)
{
	size_t n = 0;
	off_t d = 0, h;

	while ((d = lseek(fd, d, SEEK_DATA)) >= 0 && (size_t)d < len) {
		h = lseek(fd, d, SEEK_HOLE);
		ck_assert(h > d);
		n += (size_t)(h - d) / t_page;
		d = h;
	}
	return n;
}

/* fd holds want exactly, and its data pages are exactly the restored data pages. */
static void check_fd(int fd, const uint8_t *want, size_t len, const uffdsnap_restore_stats_t *st, const char *what)
{
	uint8_t *got = t_buf_alloc(len);
	struct stat sb;
	size_t dp;

	ck_assert_int_eq(fstat(fd, &sb), 0);
	ck_assert_msg((size_t)sb.st_size == len, "%s: size %lld, region %zu", what, (long long)sb.st_size, len);
	ck_assert_int_eq(pread(fd, got, len, 0), (ssize_t)len);
	for (size_t p = 0; p < len; p += t_page)
		t_assert_msg(!memcmp(got + p, want + p, t_page), "%s: page %zu differs", what, p / t_page);
	dp = data_pages(fd, len);
	ck_assert_uint_eq(st->pages_data + st->pages_zero, len / t_page);
	ck_assert_msg(dp == st->pages_data, "%s: %zu data pages in the file, %llu restored: zero pages were "
		      "written", what, dp, (unsigned long long)st->pages_data);
	/* tmpfs counts exactly the pages it holds */
	ck_assert_msg((uint64_t)sb.st_blocks * 512 == st->pages_data * t_page, "%s: %lld blocks allocated "
		      "for %llu data pages", what, (long long)sb.st_blocks, (unsigned long long)st->pages_data);
	t_buf_free(got, len);
}

static void print_stats(const char *what, const uffdsnap_restore_stats_t *st)
{
	printf("  %s: %u threads, %llu chunks, %llu data + %llu zero pages, %.2f ms, %.2f GB/s\n", what, st->threads,
	       (unsigned long long)st->chunks, (unsigned long long)st->pages_data,
	       (unsigned long long)st->pages_zero, st->elapsed_ns / 1e6,
	       st->elapsed_ns ? (double)st->bytes_total / (double)st->elapsed_ns : 0.0);
}

static const enum t_mem_kind kinds[] = { T_MEM_MEMFD, T_MEM_DEVSHM, T_MEM_TMPFS,
					     T_MEM_ANON_SHARED };

/* Every region kind, into a memfd, on 1 and on 4 threads. */
START_TEST(memfd_roundtrip)
{
	enum t_mem_kind kind = kinds[_i];
	struct fixture f;
	uffdsnap_reader_t *r;

	t_watchdog(60, "memfd_roundtrip");
	if (kind == T_MEM_TMPFS && geteuid()) {
		t_skip("memfd_roundtrip", "tmpfs: mounting needs root");
		return;
	}
	fixture_new(&f, kind, 64 * KiB);
	r = t_reader(f.path);
	for (unsigned threads = 1; threads <= 4; threads += 3) {
		uffdsnap_restore_opts_t o;
		uffdsnap_restore_stats_t st = { .size = sizeof(st) };
		char what[64];

		uffdsnap_restore_opts_init(&o);
		o.threads = (int)threads;
		for (unsigned id = 0; id < 2; id++) {
			int fd = -1, rc = uffdsnap_restore_memfd(r, id, &fd, &o, &st);

			ck_assert_msg(rc == 0, "restore_memfd %u: %d %s", id, rc, uffdsnap_last_error());
			ck_assert_uint_eq(st.threads, st.chunks < threads ? st.chunks : threads);
			snprintf(what, sizeof(what), "%s region %u, %u threads", t_mem_kind_name(kind), id, threads);
			check_fd(fd, f.want[id], f.len[id], &st, what);
			print_stats(what, &st);
			if (id == 0)
				ck_assert_uint_ge(st.pages_zero, MiB / t_page);
			/* the memfd maps like any other */
			uint8_t *m = mmap(NULL, f.len[id], PROT_READ, MAP_SHARED, fd, 0);
			ck_assert(m != MAP_FAILED);
			ck_assert(!memcmp(m, f.want[id], f.len[id]));
			munmap(m, f.len[id]);
			close(fd);
		}
	}
	uffdsnap_reader_free(r);
	fixture_free(&f);
}
END_TEST

START_TEST(file_roundtrip)
{
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	char dir[] = "/dev/shm/usnap-restore.XXXXXX", path[sizeof(dir) + 16];
	struct fixture f;
	uffdsnap_reader_t *r;
	int fd, rc;

	t_watchdog(60, "file_roundtrip");
	fixture_new(&f, T_MEM_MEMFD, 256 * KiB);
	ck_assert(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pool", dir);
	/* an existing file is replaced, its old bytes gone where the region has holes */
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert(fd >= 0);
	ck_assert_int_eq(ftruncate(fd, 2 * POOL_LEN), 0);
	ck_assert_int_eq(pwrite(fd, "old", 3, POOL_LEN - t_page), 3); /* inside the final hole run */
	close(fd);
	r = t_reader(f.path);
	rc = uffdsnap_restore_file(r, 0, path, NULL, &st);
	ck_assert_msg(rc == 0, "restore_file: %d %s", rc, uffdsnap_last_error());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert(fd >= 0);
	check_fd(fd, f.want[0], POOL_LEN, &st, "/dev/shm file");
	print_stats("/dev/shm file", &st);
	close(fd);
	ck_assert_int_eq(t_dir_entries(dir, true), 1); /* no temporary file left */
	uffdsnap_reader_free(r);
	t_rmdir(dir);
	fixture_free(&f);
}
END_TEST

/* Into existing memory full of old bytes: shmem (zero pages punched) and
 * private anonymous memory. */
START_TEST(into_roundtrip)
{
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	struct fixture f;
	struct t_mem dst;
	uffdsnap_reader_t *r;
	uint8_t *anon;
	int rc;

	t_watchdog(60, "into_roundtrip");
	fixture_new(&f, T_MEM_MEMFD, 64 * KiB);
	r = t_reader(f.path);
	t_memfd(&dst, POOL_LEN);
	memset(dst.addr, 0xee, POOL_LEN);
	rc = uffdsnap_restore_into(r, 0, dst.addr, POOL_LEN, NULL, &st);
	ck_assert_msg(rc == 0, "restore_into shmem: %d %s", rc, uffdsnap_last_error());
	print_stats("into shmem", &st);
	/* before reading: a read of a shmem hole through the mapping fills it */
	ck_assert_int_eq(t_mem_holes(&dst), (long)st.pages_zero);
	ck_assert(!memcmp(dst.addr, f.want[0], POOL_LEN));

	anon = t_buf_alloc(POOL_LEN);
	memset(anon, 0xee, POOL_LEN / 2); /* half old bytes, half never touched */
	rc = uffdsnap_restore_into(r, 0, anon, POOL_LEN, NULL, &st);
	ck_assert_msg(rc == 0, "restore_into anon: %d %s", rc, uffdsnap_last_error());
	print_stats("into private anonymous", &st);
	ck_assert(!memcmp(anon, f.want[0], POOL_LEN));
	t_buf_free(anon, POOL_LEN);
	t_mem_free(&dst);
	uffdsnap_reader_free(r);
	fixture_free(&f);
}
END_TEST

/* Every region of a context, by name: into shmem (zero pages punched) and
 * shared anonymous memory; mismatches name the region. */
START_TEST(ctx_roundtrip)
{
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	struct t_mem dpool, dmeta, small;
	uffdsnap_t *ctx;
	struct fixture f;
	uffdsnap_reader_t *r;
	int rc;

	t_watchdog(60, "ctx_roundtrip");
	fixture_new(&f, T_MEM_MEMFD, 64 * KiB);
	r = t_reader(f.path);
	t_memfd(&dpool, POOL_LEN);
	t_mem_new(&dmeta, T_MEM_ANON_SHARED, META_LEN);
	memset(dpool.addr, 0xee, POOL_LEN);
	memset(dmeta.addr, 0xee, META_LEN);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "meta", dmeta.addr, META_LEN); /* registration order need not match */
	t_add(ctx, "pool", dpool.addr, POOL_LEN);
	rc = uffdsnap_restore_ctx(r, ctx, NULL, &st);
	ck_assert_msg(rc == 0, "restore_ctx: %d %s", rc, uffdsnap_last_error());
	print_stats("context, 2 regions", &st);
	ck_assert_uint_eq(st.bytes_total, POOL_LEN + META_LEN);
	ck_assert_int_eq(t_mem_holes(&dpool), (long)st.pages_zero);
	ck_assert(!memcmp(dpool.addr, f.want[0], POOL_LEN));
	ck_assert(!memcmp(dmeta.addr, f.want[1], META_LEN));
	uffdsnap_free(ctx);

	/* a region the snapshot lacks, and one of another length: nothing written */
	t_memfd(&small, META_LEN - t_page);
	memset(small.addr, 0x11, META_LEN - t_page);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "meta", small.addr, META_LEN - t_page);
	ck_assert_int_eq(uffdsnap_restore_ctx(r, ctx, NULL, NULL), -EINVAL);
	printf("  context length mismatch: %s\n", uffdsnap_last_error());
	ck_assert(strstr(uffdsnap_last_error(), "'meta'"));
	ck_assert_int_eq(small.addr[0], 0x11);
	uffdsnap_free(ctx);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "other", small.addr, META_LEN - t_page);
	ck_assert_int_eq(uffdsnap_restore_ctx(r, ctx, NULL, NULL), -ENOENT);
	printf("  context region not in the snapshot: %s\n", uffdsnap_last_error());
	ck_assert(strstr(uffdsnap_last_error(), "'other'"));
	uffdsnap_free(ctx);
	t_mem_free(&small);
	t_mem_free(&dpool);
	t_mem_free(&dmeta);
	uffdsnap_reader_free(r);
	fixture_free(&f);
}
END_TEST

START_TEST(mismatch_errors)
{
	struct fixture f;
	uffdsnap_reader_t *r;
	uint8_t *buf;
	int fd = 7, rc;

	t_watchdog(60, "mismatch_errors");
	fixture_new(&f, T_MEM_MEMFD, 64 * KiB);
	r = t_reader(f.path);
	buf = t_buf_alloc(POOL_LEN + t_page);
	rc = uffdsnap_restore_into(r, 0, buf, POOL_LEN - t_page, NULL, NULL);
	ck_assert_int_eq(rc, -EINVAL);
	printf("  length mismatch: %s\n", uffdsnap_last_error());
	ck_assert(strstr(uffdsnap_last_error(), "'pool'") && strstr(uffdsnap_last_error(), "8388608"));
	ck_assert_int_eq(uffdsnap_restore_into(r, 0, buf + 1, POOL_LEN, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffdsnap_restore_into(r, 2, buf, POOL_LEN, NULL, NULL), -ENOENT);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 5, &fd, NULL, NULL), -ENOENT);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, NULL, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffdsnap_restore_memfd(NULL, 0, &fd, NULL, NULL), -EINVAL);
	t_buf_free(buf, POOL_LEN + t_page);
	uffdsnap_reader_free(r);
	fixture_free(&f);
}
END_TEST

/* A flipped byte inside a chunk, and a truncated file: errors, no output. */
START_TEST(damaged_snapshot)
{
	char bad[PATH_MAX + 32], out[PATH_MAX + 32];
	struct fixture f;
	uffdsnap_reader_t *r;
	uint8_t *bytes;
	size_t len;
	int fd = 7, rc;

	t_watchdog(60, "damaged_snapshot");
	fixture_new(&f, T_MEM_MEMFD, 64 * KiB);
	bytes = t_slurp(f.path, &len);
	/* chunks of "pool" fill the middle of the file */
	bytes[len / 2] ^= 0x10;
	snprintf(bad, sizeof(bad), "%s/flipped", f.dir);
	t_write_file(bad, bytes, len);
	r = t_reader(bad);
	for (int threads = 1; threads <= 2; threads++) {
		uffdsnap_restore_opts_t o = { .size = sizeof(o), .threads = threads };
		rc = uffdsnap_restore_memfd(r, 0, &fd, &o, NULL);
		printf("  flipped byte, %d thread(s): %d %s\n", threads, rc, uffdsnap_last_error());
		ck_assert_int_eq(rc, -EBADMSG);
		ck_assert_int_eq(fd, -1);
		ck_assert(strstr(uffdsnap_last_error(), "'pool'") && strstr(uffdsnap_last_error(), "checksum"));
	}
	snprintf(out, sizeof(out), "%s/out", f.dir);
	ck_assert_int_eq(uffdsnap_restore_file(r, 0, out, NULL, NULL), -EBADMSG);
	ck_assert_int_eq(access(out, F_OK), -1);
	ck_assert_int_eq(t_dir_entries(f.dir, false), 2); /* snap and flipped: no temporary left */
	uffdsnap_reader_free(r);

	/* truncated: opens for inspection, restores nothing */
	bytes[len / 2] ^= 0x10;
	t_write_file(bad, bytes, len - 100);
	r = t_reader(bad);
	rc = uffdsnap_restore_memfd(r, 0, &fd, NULL, NULL);
	printf("  truncated: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -ENODATA);
	uffdsnap_reader_free(r);
	free(bytes);
	fixture_free(&f);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("restore");
	TCase *tc = tcase_create("eager");

	tcase_set_timeout(tc, 90);
	tcase_add_loop_test(tc, memfd_roundtrip, 0, sizeof(kinds) / sizeof(kinds[0]));
	tcase_add_test(tc, file_roundtrip);
	tcase_add_test(tc, into_roundtrip);
	tcase_add_test(tc, ctx_roundtrip);
	tcase_add_test(tc, mismatch_errors);
	tcase_add_test(tc, damaged_snapshot);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	t_test_require_uffd();
	return t_run_suite(suite());
}
