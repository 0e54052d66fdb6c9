/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Chains of deltas (docs/format.md, "Deltas"; lib/reader-chain.c, lib/merge.c).
 *
 * main() takes STEPS + 1 full snapshots of two regions with the real engine,
 * changing some pages between them (random data, zeros, both regions or one),
 * and keeps a copy of the memory at each instant: the oracle. It then writes
 * delta k (format version 2) from full snapshots k-1 and k: the pages that
 * differ, plus page 0 of the pool (a delta may hold unchanged pages), in
 * chunks of up to 8 pages that skip pages inside their span, raw or zstd
 * (tests/forge.c: white-box, links the static library). Delta k has the id of full snapshot k and names k-1's as parent.
 *
 * The cases check that the chain full 0, delta 1..k reads as image k through
 * every reader path (read, extract, restore into a memfd and into memory,
 * lazy restore), that a merge of it is a full snapshot equal to image k, and
 * that every broken chain is refused naming the file.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "format.h"
#include "forge.h"

#define STEPS 10
#define PS 4096u
#define POOL_PAGES (USNAP_SANITIZED ? 64u : 256u)
#define META_PAGES 4u
#define DELTA_CHUNK 8u   /* changed pages per forged chunk */

static char dir[PATH_MAX];
static char full[STEPS + 1][PATH_MAX + 32];
static char delta[STEPS + 1][PATH_MAX + 32];  /* delta[k]: image k over image k-1 */
static uint8_t *img[STEPS + 1][2];            /* the memory at instant k */
static uint8_t ids[STEPS + 1][16];
static uint64_t created[STEPS + 1];
static const char *const names[2] = { "pool", "meta" };
static uint64_t npages[2];

/* ---- forging deltas ----------------------------------------------------------------- */

/*
 * Write to path a delta holding image k where it differs from image k-1,
 * with this parent, depth and id; meta_len: the meta region's length in its
 * table (0: the real one).
 */
static void forge_delta(const char *path, unsigned k, const uint8_t *parent, uint32_t depth, const uint8_t *id,
			uint64_t meta_len)
{
	const uint64_t table[2] = { npages[0] * PS, meta_len ? meta_len : npages[1] * PS };
	const uint8_t *prev[2] = { img[k - 1][0], img[k - 1][1] }, *cur[2] = { img[k][0], img[k][1] };
	struct usnap_forge f = { .nregions = 2, .names = names, .npages = npages, .table_len = table,
				 .page_size = PS, .prev = prev, .cur = cur, .parent_id = parent, .id = id,
				 .depth = depth, .created_ns = created[k], .chunk_pages = DELTA_CHUNK, .zstd = 1,
				 .keep_first = 1 };
	int rc = usnap_forge_delta(path, &f);

	ck_assert_msg(rc == 0, "forging %s: %s", path, strerror(-rc));
}

/* ---- the fixture: STEPS + 1 full snapshots by the engine -------------------------------- */

static void change(uint8_t *pool, uint8_t *meta, unsigned k)
{
	uint64_t s = 0x5eed0000 + k;

	/* a few scattered pages and a run: random data, and some zeros */
	for (unsigned i = 0; i < POOL_PAGES / 16; i++) {
		uint64_t p = usnap_splitmix64(&s) % POOL_PAGES;

		if (i % 5 == 4)
			memset(pool + p * PS, 0, PS);
		else
			usnap_fill_page(pool + p * PS, s, p);
	}
	for (uint64_t p = (k * 7) % (POOL_PAGES - 6), e = p + 5; p < e; p++)
		usnap_fill_page(pool + p * PS, s + 1, p);
	/* meta changes every other step only: a delta with nothing of a region */
	if (k % 2)
		usnap_fill_page(meta + (k % META_PAGES) * PS, s, k);
}

static void fixture(void)
{
	uffdsnap_opts_t o = usnap_opts(0, 16 * KiB); /* small chunks: many of the base are shadowed in part */
	struct usnap_mem pool, meta;
	uffdsnap_t *ctx;

	npages[0] = POOL_PAGES;
	npages[1] = META_PAGES;
	if (!*dir)
		usnap_tmpdir(dir);
	usnap_memfd(&pool, POOL_PAGES * PS);
	usnap_memfd(&meta, META_PAGES * PS);
	usnap_fill_mixed(pool.addr, pool.len, 42, 7, 5);
	usnap_fill_random(meta.addr, meta.len, 43);
	ctx = usnap_ctx_new(&o);
	usnap_add(ctx, "pool", pool.addr, pool.len);
	usnap_add(ctx, "meta", meta.addr, meta.len);
	for (unsigned k = 0; k <= STEPS; k++) {
		uffdsnap_info_t in = { .size = sizeof(in) };
		uffdsnap_reader_t *r;

		if (k)
			change(pool.addr, meta.addr, k);
		snprintf(full[k], sizeof(full[k]), "%s/full%u.snap", dir, k);
		usnap_snap_file(ctx, full[k], NULL);
		img[k][0] = usnap_mem_copy(&pool);
		img[k][1] = usnap_mem_copy(&meta);
		r = usnap_reader(full[k]);
		ck_assert_int_eq(uffdsnap_reader_info(r, &in), 0);
		ck_assert_int_eq(in.version, 1);
		ck_assert_int_eq(in.delta, 0);
		memcpy(ids[k], in.snap_id, 16);
		created[k] = in.created_ns;
		uffdsnap_reader_free(r);
	}
	for (unsigned k = 1; k <= STEPS; k++) {
		snprintf(delta[k], sizeof(delta[k]), "%s/delta%u.snap", dir, k);
		forge_delta(delta[k], k, ids[k - 1], k, ids[k], 0);
	}
	uffdsnap_free(ctx);
	usnap_mem_free(&pool);
	usnap_mem_free(&meta);
}

static void teardown(void)
{
	usnap_rmdir(dir);
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* The chain full 0, delta 1..k. */
static uffdsnap_reader_t *chain(unsigned k)
{
	const char *p[STEPS + 1];
	uffdsnap_reader_t *r;
	int rc;

	p[0] = full[0];
	for (unsigned i = 1; i <= k; i++)
		p[i] = delta[i];
	rc = uffdsnap_reader_open_chain(&r, p, k + 1);
	ck_assert_msg(rc == 0, "open_chain of %u: %d %s", k + 1, rc, uffdsnap_last_error());
	return r;
}

/* Open_chain must fail with err and a message naming `file` and saying `what`. */
static void refused(const char *const *p, unsigned n, int err, const char *file, const char *what)
{
	uffdsnap_reader_t *r = (uffdsnap_reader_t *)1;
	int rc = uffdsnap_reader_open_chain(&r, p, n);

	printf("  refused: %s\n", uffdsnap_last_error());
	ck_assert_msg(rc == err, "open_chain: %d, expected %d (%s)", rc, err, uffdsnap_last_error());
	ck_assert_ptr_null(r);
	ck_assert_msg(strstr(uffdsnap_last_error(), file), "the message does not name %s", file);
	ck_assert_msg(strstr(uffdsnap_last_error(), what), "the message does not say '%s'", what);
}

static void check_image(uffdsnap_reader_t *r, unsigned k)
{
	for (unsigned g = 0; g < 2; g++) {
		size_t len = npages[g] * PS;
		uint8_t *buf = malloc(len);
		int rc = uffdsnap_reader_read(r, g, 0, buf, len);

		ck_assert_msg(rc == 0, "read region %u: %d %s", g, rc, uffdsnap_reader_error(r));
		ck_assert_msg(!memcmp(buf, img[k][g], len), "region %s differs from image %u", names[g], k);
		free(buf);
	}
}

static const char *copy_file(const char *src, const char *name, size_t cut, long flip)
{
	static char path[PATH_MAX + 64];
	struct stat st;
	uint8_t *b;
	int fd;

	ck_assert_int_eq(stat(src, &st), 0);
	b = malloc((size_t)st.st_size);
	fd = open(src, O_RDONLY);
	ck_assert_int_eq(read(fd, b, (size_t)st.st_size), st.st_size);
	close(fd);
	if (flip >= 0)
		b[flip] ^= 0x40;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_eq(write(fd, b, (size_t)st.st_size - cut), (ssize_t)((size_t)st.st_size - cut));
	close(fd);
	free(b);
	return path;
}

/* ---- cases ------------------------------------------------------------------------------- */

/* Every prefix of the chain reads as its image, whole and in unaligned pieces. */
START_TEST(chain_read)
{
	for (unsigned k = 1; k <= STEPS; k++) {
		uffdsnap_info_t in = { .size = sizeof(in) };
		uffdsnap_reader_t *r = chain(k);

		ck_assert_int_eq(uffdsnap_reader_info(r, &in), 0);
		ck_assert_uint_eq(in.files, k + 1);
		ck_assert_int_eq(in.delta, 1);
		ck_assert_uint_eq(in.depth, k);
		ck_assert(!memcmp(in.snap_id, ids[k], 16));
		ck_assert(!memcmp(in.parent_id, ids[k - 1], 16));
		check_image(r, k);
		if (k == STEPS) {
			uint8_t *buf = malloc(3 * PS);

			for (uint64_t off = 100; off + 3 * PS <= POOL_PAGES * PS; off += 5 * PS + 777) {
				ck_assert_int_eq(uffdsnap_reader_read(r, 0, off, buf, 2 * PS + 5), 0);
				ck_assert(!memcmp(buf, img[k][0] + off, 2 * PS + 5));
			}
			free(buf);
			ck_assert_int_eq(uffdsnap_reader_verify(r), 0);
		}
		uffdsnap_reader_free(r);
	}
}
END_TEST

/* Extract into a file (chunk by chunk: the clipped chunks) and into a pipe. */
START_TEST(chain_extract)
{
	uffdsnap_reader_t *r = chain(STEPS);
	char path[PATH_MAX + 32];
	size_t len = POOL_PAGES * PS;
	uint8_t *buf = malloc(len);
	int fd, pfd[2];

	snprintf(path, sizeof(path), "%s/extract.bin", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 0, fd), 0);
	ck_assert_int_eq(pread(fd, buf, len, 0), (ssize_t)len);
	ck_assert(!memcmp(buf, img[STEPS][0], len));
	close(fd);
	unlink(path);
	/* a pipe gets the region in page order through reads */
	ck_assert_int_eq(pipe(pfd), 0);
	fcntl(pfd[1], F_SETPIPE_SZ, (int)(META_PAGES * PS));
	ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 1, pfd[1]), 0);
	ck_assert_int_eq(read(pfd[0], buf, META_PAGES * PS), (ssize_t)(META_PAGES * PS));
	ck_assert(!memcmp(buf, img[STEPS][1], META_PAGES * PS));
	close(pfd[0]);
	close(pfd[1]);
	free(buf);
	uffdsnap_reader_free(r);
}
END_TEST

/* Eager restore into a memfd (pwrite of clipped chunks) and into memory
 * (decompressed in place, shadowed pages dropped), with two threads. */
START_TEST(chain_restore)
{
	uffdsnap_restore_opts_t o;
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	uffdsnap_reader_t *r = chain(STEPS);
	size_t len = POOL_PAGES * PS;
	uint8_t *mem, *buf = malloc(len);
	int fd, rc;

	uffdsnap_restore_opts_init(&o);
	o.threads = 2;
	rc = uffdsnap_restore_memfd(r, 0, &fd, &o, &st);
	ck_assert_msg(rc == 0, "restore_memfd: %d %s", rc, uffdsnap_last_error());
	ck_assert_uint_eq(st.pages_data + st.pages_zero, POOL_PAGES);
	ck_assert_int_eq(pread(fd, buf, len, 0), (ssize_t)len);
	ck_assert(!memcmp(buf, img[STEPS][0], len));
	close(fd);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(mem, 0xa5, len); /* zero pages must be written as zeros */
	rc = uffdsnap_restore_into(r, 0, mem, len, &o, NULL);
	ck_assert_msg(rc == 0, "restore_into: %d %s", rc, uffdsnap_last_error());
	ck_assert(!memcmp(mem, img[STEPS][0], len));
	munmap(mem, len);
	free(buf);
	uffdsnap_reader_free(r);
}
END_TEST

/* Lazy restore: faults and the background pass, both from the chain. */
START_TEST(chain_lazy)
{
	struct usnap_mem dst;
	uffdsnap_lazy_region_t reg;
	uffdsnap_reader_t *r = chain(STEPS);
	uffdsnap_lazy_t *lz;
	int rc;

	usnap_watchdog(60, "chain_lazy");
	usnap_memfd(&dst, POOL_PAGES * PS);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = dst.len };
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, NULL);
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	uffdsnap_reader_free(r);
	for (size_t p = POOL_PAGES; p > 0; p--) /* backwards: against the background pass */
		ck_assert_msg(!memcmp(dst.addr + (p - 1) * PS, img[STEPS][0] + (p - 1) * PS, PS), "page %zu", p - 1);
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	uffdsnap_lazy_free(lz);
	usnap_mem_free(&dst);
}
END_TEST

/* The page server, in another process, serves a chain as it serves a file. */
START_TEST(chain_serve)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct usnap_mem dst;
	int ls, rc;
	pid_t pid;
	char path[PATH_MAX + 16];

	usnap_watchdog(60, "chain_serve");
	snprintf(path, sizeof(path), "%s/serve.sock", dir);
	ck_assert(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(ls >= 0 && !bind(ls, (struct sockaddr *)&sa, sizeof(sa)) && !listen(ls, 1));
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		uffdsnap_lazy_opts_t o;
		uffdsnap_reader_t *r;
		const char *p[STEPS + 1];
		int conn;

		alarm(50);
		uffdsnap_lazy_opts_init(&o);
		p[0] = full[0];
		for (unsigned i = 1; i <= STEPS; i++)
			p[i] = delta[i];
		if (uffdsnap_reader_open_chain(&r, p, STEPS + 1) || (conn = accept(ls, NULL, NULL)) < 0)
			_exit(1);
		_exit(uffdsnap_serve_conn(r, conn, &o) ? 2 : 0);
	}
	close(ls);
	usnap_memfd(&dst, POOL_PAGES * PS);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = dst.len };
	rc = uffdsnap_lazy_connect(&c, sa.sun_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect: %d %s", rc, uffdsnap_last_error());
	for (size_t p = 0; p < POOL_PAGES; p += 3)
		ck_assert_msg(!memcmp(dst.addr + p * PS, img[STEPS][0] + p * PS, PS), "page %zu", p);
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	ck_assert(!memcmp(dst.addr, img[STEPS][0], POOL_PAGES * PS));
	uffdsnap_lazy_client_free(c);
	ck_assert_int_eq(usnap_wait_child(pid, 30, "the page server"), 0);
	usnap_mem_free(&dst);
}
END_TEST

/* A merge is a full snapshot equal to the chain, with the last delta's id:
 * the deltas after it chain onto it (compaction). */
START_TEST(chain_merge)
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	char merged[PATH_MAX + 32];
	const char *p[STEPS];
	uffdsnap_reader_t *r = chain(5), *m;
	int rc;

	snprintf(merged, sizeof(merged), "%s/merged5.snap", dir);
	rc = uffdsnap_reader_merge_file(r, merged, 0);
	ck_assert_msg(rc == 0, "merge: %d %s", rc, uffdsnap_last_error());
	uffdsnap_reader_free(r);
	m = usnap_reader(merged);
	ck_assert_int_eq(uffdsnap_reader_verify(m), 0);
	ck_assert_int_eq(uffdsnap_reader_info(m, &in), 0);
	ck_assert_int_eq(in.version, 1);
	ck_assert_int_eq(in.delta, 0);
	ck_assert(!memcmp(in.snap_id, ids[5], 16));
	ck_assert_uint_eq(in.created_ns, created[5]);
	check_image(m, 5);
	uffdsnap_reader_free(m);
	/* merged, delta 6..10 */
	p[0] = merged;
	for (unsigned i = 6; i <= STEPS; i++)
		p[i - 5] = delta[i];
	rc = uffdsnap_reader_open_chain(&r, p, STEPS - 4);
	ck_assert_msg(rc == 0, "open_chain after a merge: %d %s", rc, uffdsnap_last_error());
	check_image(r, STEPS);
	uffdsnap_reader_free(r);
	unlink(merged);
}
END_TEST

/* A delta alone: a complete file that verifies and says what it is, whose
 * pages are refused with -ENOLINK by every path. */
START_TEST(delta_alone)
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	uffdsnap_reader_t *r = usnap_reader(delta[3]);
	char out[PATH_MAX + 32];
	uint8_t buf[PS];
	int fd;

	ck_assert_int_eq(uffdsnap_reader_info(r, &in), 0);
	ck_assert_int_eq(in.version, 2);
	ck_assert_int_eq(in.delta, 1);
	ck_assert_int_eq(in.complete, 1);
	ck_assert_uint_eq(in.depth, 3);
	ck_assert_uint_eq(in.files, 1);
	ck_assert(!memcmp(in.parent_id, ids[2], 16));
	ck_assert(!memcmp(in.snap_id, ids[3], 16));
	ck_assert_int_eq(uffdsnap_reader_verify(r), 0);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, 0, buf, PS), -ENOLINK);
	printf("  delta alone: %s\n", uffdsnap_reader_error(r));
	ck_assert(strstr(uffdsnap_reader_error(r), "delta") && strstr(uffdsnap_reader_error(r), "parent chain"));
	snprintf(out, sizeof(out), "%s/alone.bin", dir);
	fd = open(out, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 0, fd), -ENOLINK);
	close(fd);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &fd, NULL, NULL), -ENOLINK);
	snprintf(out, sizeof(out), "%s/alone.snap", dir);
	ck_assert_int_eq(uffdsnap_reader_merge_file(r, out, 0), -ENOLINK);
	ck_assert_int_eq(access(out, F_OK), -1);
	uffdsnap_reader_free(r);
	/* a reader that knows version 1 only finds the DELTA flag there: corrupt,
	 * never a full snapshot (the version patched, HEAD re-sealed) */
	{
		const char *p = copy_file(delta[3], "as-v1.snap", 0, -1);
		uint8_t head[4096];
		struct usnap_rec_hdr h;
		uint32_t v1 = 1;

		fd = open(p, O_RDWR);
		ck_assert_int_eq(pread(fd, head, sizeof(head), 0), (ssize_t)sizeof(head));
		memcpy(&h, head + USNAP_MAGIC_LEN, sizeof(h));
		memcpy(head + USNAP_MAGIC_LEN + sizeof(h), &v1, 4);
		h.crc = usnap_rec_crc(head + USNAP_MAGIC_LEN, h.len);
		memcpy(head + USNAP_MAGIC_LEN, &h, sizeof(h));
		ck_assert_int_eq(pwrite(fd, head, sizeof(head), 0), (ssize_t)sizeof(head));
		close(fd);
		ck_assert_int_eq(uffdsnap_reader_open(&r, p), -EBADMSG);
		unlink(p);
	}
}
END_TEST

START_TEST(chain_refused)
{
	char other[PATH_MAX + 32], wide[PATH_MAX + 32];
	const char *p[4];
	uint8_t stranger[16];
	uffdsnap_reader_t *r;
	int rc;

	memset(stranger, 0x5a, sizeof(stranger));
	/* a delta first */
	p[0] = delta[1], p[1] = delta[2];
	refused(p, 2, -ENOLINK, delta[1], "starts with a full snapshot");
	/* wrong order */
	p[0] = full[0], p[1] = delta[2], p[2] = delta[1];
	refused(p, 3, -ENOLINK, delta[2], "out of order");
	/* a missing link */
	p[0] = full[0], p[1] = delta[1], p[2] = delta[3];
	refused(p, 3, -ENOLINK, delta[3], "missing");
	/* a full snapshot in the middle */
	p[0] = full[0], p[1] = delta[1], p[2] = full[2];
	refused(p, 3, -ENOLINK, full[2], "full snapshot");
	/* a delta of another chain */
	snprintf(other, sizeof(other), "%s/other.snap", dir);
	forge_delta(other, 2, stranger, 2, ids[2], 0);
	p[0] = full[0], p[1] = delta[1], p[2] = other;
	refused(p, 3, -ENOLINK, other, "another chain");
	/* the right parent, another region table */
	snprintf(wide, sizeof(wide), "%s/wide.snap", dir);
	forge_delta(wide, 2, ids[1], 2, ids[2], (META_PAGES + 1) * PS);
	p[0] = full[0], p[1] = delta[1], p[2] = wide;
	refused(p, 3, -ENOLINK, wide, "region table");
	/* the right parent, a wrong depth */
	forge_delta(wide, 2, ids[1], 5, ids[2], 0);
	refused(p, 3, -ENOLINK, wide, "depth");
	/* truncated */
	p[2] = copy_file(delta[2], "cut.snap", 40, -1);
	refused(p, 3, -ENODATA, p[2], "truncated");
	/* a damaged chunk: opens (index intact), then read and verify name the file */
	p[2] = copy_file(delta[2], "flip.snap", 0, 300);
	rc = uffdsnap_reader_open_chain(&r, p, 3);
	ck_assert_msg(rc == 0, "open_chain: %d %s", rc, uffdsnap_last_error());
	{
		uint8_t *buf = malloc(POOL_PAGES * PS);

		rc = uffdsnap_reader_read(r, 0, 0, buf, POOL_PAGES * PS);
		printf("  damaged: %s\n", uffdsnap_reader_error(r));
		ck_assert_int_eq(rc, -EBADMSG);
		ck_assert(strstr(uffdsnap_reader_error(r), p[2]));
		free(buf);
	}
	ck_assert_int_eq(uffdsnap_reader_verify(r), -EBADMSG);
	ck_assert(strstr(uffdsnap_reader_error(r), p[2]));
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &(int){ 0 }, NULL, NULL), -EBADMSG);
	uffdsnap_reader_free(r);
	ck_assert_int_eq(uffdsnap_reader_open_chain(&r, NULL, 1), -EINVAL);
	ck_assert_int_eq(uffdsnap_reader_open_chain(&r, p, 0), -EINVAL);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("chain");
	TCase *tc = tcase_create("chain");

	tcase_set_timeout(tc, 60);
	/* unchecked: once, in the runner, before the forked cases */
	tcase_add_unchecked_fixture(tc, fixture, teardown);
	tcase_add_test(tc, chain_read);
	tcase_add_test(tc, chain_extract);
	tcase_add_test(tc, chain_restore);
	tcase_add_test(tc, chain_lazy);
	tcase_add_test(tc, chain_serve);
	tcase_add_test(tc, chain_merge);
	tcase_add_test(tc, delta_alone);
	tcase_add_test(tc, chain_refused);
	suite_add_tcase(s, tc);
	return s;
}

START_TEST(forge_only)
{
	fixture();
}
END_TEST

/* test-chain --forge DIR: write the files (fullK.snap, deltaK.snap) into DIR
 * and keep them, for tests/test-cli.sh. */
int main(int argc, char **argv)
{
	Suite *s;
	TCase *tc;

	usnap_test_require_uffd();
	if (argc != 3 || strcmp(argv[1], "--forge"))
		return usnap_run_suite(suite());
	snprintf(dir, sizeof(dir), "%s", argv[2]);
	s = suite_create("forge");
	tc = tcase_create("forge");
	tcase_add_test(tc, forge_only);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
