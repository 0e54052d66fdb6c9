/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Reading back snapshots taken under writes (issue 15). The snapshot is taken
 * with the sweep held back (t_begin_stalled), and the test itself stores
 * into pages the sweep has not reached, at random or in order: every first
 * store faults, and the fault path copies its page (with a window around it)
 * into fault chunks, which hold a few runs scattered over the region. The
 * region at the instant is known (copied before begin), so every reader is
 * checked against the truth, not against another reader:
 *  - uffdsnap_reader_read() of the whole region in pieces of 4 KiB to the
 *    whole region, and at random offsets, byte-exact; with room to keep the
 *    runs of loaded chunks that lie ahead, a read in page order loads every
 *    chunk at most once (uffdsnap_info_t.chunks_loaded); with no room, some
 *    chunk is loaded again (the file does scatter pages); on a region with
 *    ~39 % of its pages by fault, whose runs ahead of a read in order exceed
 *    the old fixed 8 MiB, the default room loads each chunk exactly once;
 *  - extract to a file (chunk by chunk: each chunk once) and to a pipe;
 *  - lazy restore faults only and with the prefetcher, and the page server:
 *    byte-exact, and no chunk loaded twice (the chunk loads in the stats are
 *    at most the file's chunks);
 *  - a damaged extent table of a fault chunk (read for the page map) fails
 *    reads of the region and lazy start with that chunk's error;
 *  - the read-ahead (lib/reader-ahead.c: worker threads decoding the chunks
 *    a read will need): reads in every piece size byte-exact with 3 workers
 *    as with the default (one per CPU but one); a damaged chunk decoded
 *    ahead fails no read before it, and fails the read that needs it; a
 *    reader freed while its workers decode ahead leaves no thread behind;
 *    a child of fork() reads on with a reader whose workers stayed behind.
 * Structure only: the time these take is for tests/bench/restore-bench --snap.
 * Links the static library for the read-ahead's test hooks (reader-private.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "helpers.h"
#include "reader-private.h"

/* 4 MiB under a sanitizer: the time goes to reading it again and again */
#define LEN (T_SANITIZED ? 4 * MiB : 8 * MiB)

/* SPREAD (not looped over): one store in eight into the first third of the
 * pages stored into, 16 pages after the one before, the others into every
 * fifth page of the rest from its end down (ahead of the sweep) */
enum writes { RANDOM, SEQUENTIAL, NWRITES, SPREAD = NWRITES };
static const char *const writes_name[NWRITES + 1] = { "random", "sequential", "spread" };

struct snap {
	char dir[PATH_MAX];
	char path[PATH_MAX + 16];
	uint8_t *ref;       /* the region at the instant */
	size_t len;
	uint64_t chunks;    /* in the file */
	uint64_t pages_fault; /* copied by the fault path */
};

/*
 * A snapshot of one `len` memfd "pool" (random, zero and hole pages) taken
 * while this thread makes `stores` stores into the pages from `from` on,
 * which the held-back sweep has not reached: at random pages, or every fifth
 * page in order (wrapping around); the sweep sleeps sleep_us a write of the
 * file meanwhile.
 */
static void snap_make(struct snap *sn, enum writes how, size_t len, size_t from, unsigned stores, unsigned sleep_us)
{
	const uffdsnap_opts_t o = t_opts(3 * MiB, 0); /* a small buffer: the sweep stalls on it */
	const size_t npages = len / t_page, p0 = from / t_page;
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_stats_t st;
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_snap_t *s;
	uffdsnap_reader_t *r;
	uffdsnap_t *ctx;
	uint64_t seed = 5;
	long data_pages = 0;
	int rc;

	t_mem_new(&m, T_MEM_MEMFD, len);
	t_fill_mixed(m.addr, len, 21, 9, 7);
	sn->ref = t_mem_copy(&m);
	sn->len = len;
	ctx = t_ctx_new(&o);
	t_add(ctx, "pool", m.addr, len);
	s = t_begin_stalled(ctx, &cb, sleep_us);
	/* the pages from p0 on not copied yet: every page but the holes still protected */
	for (size_t p = p0; p < npages; p++)
		data_pages += p % 9 != 1;
	ck_assert_int_eq(t_pagemap_protected(m.addr + from, len - from), data_pages);
	for (size_t k = 0; k < stores; k++) {
		const size_t span = npages - p0, front = span / 3, back = span - front;
		size_t p = how == SEQUENTIAL ? p0 + k * 5 % span
			   : how == RANDOM ? p0 + t_splitmix64(&seed) % span
			   : k % 8 ? npages - 1 - (k - k / 8 - 1) * 5 % back : p0 + k / 8 * 16 % front;

		m.addr[p * t_page + 100] ^= 0x5a;
	}
	atomic_store(&cb.sleep_us, 0);
	rc = uffdsnap_wait(s);
	ck_assert_msg(rc == 0, "wait: %d %s", rc, uffdsnap_snap_error(s));
	t_stats(s, &st);
	t_stats_print(writes_name[how], &st);
	t_assert_exactly_once(&st);
	/* the stores faulted: the file has fault chunks. Not all 200: random
	 * picks repeat, and the slowed sweep (not stopped) copies some pages
	 * first on a loaded machine (170 of 200 once under ASan) */
	ck_assert_uint_gt(st.pages_fault, 0);
	sn->pages_fault = st.pages_fault;
	t_tmpdir(sn->dir);
	snprintf(sn->path, sizeof(sn->path), "%s/snap", sn->dir);
	t_write_file(sn->path, cb.mem, cb.mem_len);
	r = t_reader(sn->path);
	ck_assert_int_eq(uffdsnap_reader_verify(r), 0);
	uffdsnap_reader_info(r, &info);
	sn->chunks = info.chunks;
	uffdsnap_reader_free(r);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_mem_free(&m);
}

/* LEN bytes, 200 stores into the second half. */
static void snap_new(struct snap *sn, enum writes how)
{
	snap_make(sn, how, LEN, LEN / 2, 200, 20000);
}

static void snap_free(struct snap *sn)
{
	t_buf_free(sn->ref, sn->len);
	t_rmdir(sn->dir);
}

static uint64_t chunks_loaded(const uffdsnap_reader_t *r)
{
	uffdsnap_info_t info = { .size = sizeof(info) };

	ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
	return info.chunks_loaded;
}

#define WORKERS_DEFAULT UINT_MAX
#define CACHE_DEFAULT SIZE_MAX

/* The whole region in pieces of `piece` bytes (the last one shorter), in
 * page order, with `cache` bytes for runs kept ahead (CACHE_DEFAULT: the
 * reader's choice) and `workers` decoding ahead (WORKERS_DEFAULT: the
 * reader's choice); the chunks loaded. */
static uint64_t read_in_pieces(const struct snap *sn, size_t piece, size_t cache, uint8_t *buf, unsigned workers)
{
	const size_t len = sn->len;
	uffdsnap_reader_t *r = NULL;
	uint64_t n;
	int rc;

	if (workers != WORKERS_DEFAULT) {
		r = t_reader(sn->path);
		ck_assert_int_eq(uffdsnap_reader_threads(r, workers), 0);
	} else {
		ck_assert_int_eq(uffdsnap_reader_open(&r, sn->path), 0); /* the library's choice, in every build */
	}
	if (cache != CACHE_DEFAULT)
		ck_assert_int_eq(uffdsnap_reader_cache(r, cache), 0);
	memset(buf, 0xee, len);
	for (size_t off = 0; off < len; off += piece) {
		rc = uffdsnap_reader_read(r, 0, off, buf + off, len - off < piece ? len - off : piece);
		ck_assert_msg(rc == 0, "read at %zu: %d %s", off, rc, uffdsnap_reader_error(r));
	}
	ck_assert_msg(!memcmp(buf, sn->ref, len), "read in %zu-byte pieces differs from the region at the instant",
		      piece);
	/* with workers, chunks went through the read-ahead's slots */
	if (workers && workers != WORKERS_DEFAULT)
		ck_assert_uint_gt(usnap_reader_ahead_decoded(r, NULL), 0);
	n = chunks_loaded(r);
	uffdsnap_reader_free(r);
	return n;
}

START_TEST(read_pieces)
{
	static const size_t pieces[] = { 4096, 12288, 65536, 1 << 20, 3 << 20, 8 * MiB };
	uint8_t *buf = t_buf_alloc(LEN);
	struct snap sn;

	t_watchdog(120, "read_pieces");
	snap_new(&sn, (enum writes)_i);
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i += T_SANITIZED ? 2 : 1) {
		uint64_t room = read_in_pieces(&sn, pieces[i], LEN, buf, WORKERS_DEFAULT);
		uint64_t tight = read_in_pieces(&sn, pieces[i], 512 * KiB, buf, WORKERS_DEFAULT); /* runs evicted */
		/* more workers than CPUs here: decodes finish in any order */
		uint64_t three = read_in_pieces(&sn, pieces[i], LEN, buf, 3);

		printf("%s writes, %zu-byte pieces: %" PRIu64 " chunk loads with room for the region (%" PRIu64 " with 3 "
		       "workers), %" PRIu64 " with 512 KiB; the file has %" PRIu64 " chunks\n", writes_name[_i], pieces[i],
		       room, three, tight, sn.chunks);
		ck_assert_uint_le(room, sn.chunks);
		ck_assert_uint_le(three, sn.chunks);
	}
	/* without runs kept, pages scattered in fault chunks load a chunk again */
	ck_assert_uint_gt(read_in_pieces(&sn, 4096, 0, buf, WORKERS_DEFAULT), sn.chunks);
	/* and without workers, the caller alone, as before the read-ahead */
	ck_assert_uint_le(read_in_pieces(&sn, 65536, LEN, buf, 0), sn.chunks);
	t_buf_free(buf, LEN);
	snap_free(&sn);
}
END_TEST

/*
 * A large share of a region copied by the fault path (issue 15's last case):
 * stores into the pages from a quarter on, one in five near their start,
 * so that nearly every fault chunk is needed early and holds runs spread
 * over the rest of the region: more of them lie ahead of a read in page
 * order than the old fixed default of UFFDSNAP_READER_CACHE bytes kept
 * (with it, chunks are loaded again: asserted, so that this file does test
 * the default). With the default, a whole-region read in every piece size
 * loads each chunk once.
 */
#define WIDE_LEN (T_SANITIZED ? 16 * MiB : 64 * MiB)

START_TEST(read_fault_heavy)
{
	static const size_t pieces[] = { 4096, 65536, 1 << 20, 32 * MiB };
	uint8_t *buf = t_buf_alloc(WIDE_LEN);
	struct snap sn;

	t_watchdog(120, "read_fault_heavy");
	snap_make(&sn, RANDOM, WIDE_LEN, WIDE_LEN / 4, WIDE_LEN / (64 * KiB) * 2, 2000);
	/* the stores faulted in most of their three quarters */
	ck_assert_uint_gt(sn.pages_fault, WIDE_LEN / t_page / 4);
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i += T_SANITIZED ? 2 : 1) {
		uint64_t n = read_in_pieces(&sn, pieces[i], CACHE_DEFAULT, buf, WORKERS_DEFAULT);

		printf("fault-heavy (%" PRIu64 " of %zu pages by the fault path), %zu-byte pieces: %" PRIu64 " chunk "
		       "loads with the default cache; the file has %" PRIu64 " chunks\n", sn.pages_fault,
		       WIDE_LEN / t_page, pieces[i], n, sn.chunks);
		ck_assert_uint_eq(n, sn.chunks);
	}
	if (!T_SANITIZED)
		ck_assert_uint_gt(read_in_pieces(&sn, 4096, UFFDSNAP_READER_CACHE, buf, WORKERS_DEFAULT), sn.chunks);
	t_buf_free(buf, WIDE_LEN);
	snap_free(&sn);
}
END_TEST

/* Single pages and odd ranges at random offsets, in random order. */
START_TEST(read_random)
{
	uint8_t *buf = t_buf_alloc(LEN);
	uffdsnap_reader_t *r;
	uint64_t seed = 11;
	struct snap sn;

	t_watchdog(120, "read_random");
	snap_new(&sn, RANDOM);
	r = t_reader(sn.path);
	for (unsigned k = 0; k < 2000; k++) {
		size_t off = t_splitmix64(&seed) % LEN, len = 1 + t_splitmix64(&seed) % (k % 2 ? 300000 : 5000);
		int rc;

		len = len < LEN - off ? len : LEN - off;
		rc = uffdsnap_reader_read(r, 0, off, buf, len);
		ck_assert_msg(rc == 0, "read %zu+%zu: %d %s", off, len, rc, uffdsnap_reader_error(r));
		ck_assert_msg(!memcmp(buf, sn.ref + off, len), "read %zu+%zu differs from the region at the instant",
			      off, len);
	}
	uffdsnap_reader_free(r);
	t_buf_free(buf, LEN);
	snap_free(&sn);
}
END_TEST

struct pipe_extract {
	uffdsnap_reader_t *r;
	int fd, rc;
};

static void *extract_main(void *arg)
{
	struct pipe_extract *pe = arg;

	pe->rc = uffdsnap_reader_extract_fd(pe->r, 0, pe->fd);
	close(pe->fd);
	return NULL;
}

START_TEST(extract)
{
	struct pipe_extract pe;
	char out[PATH_MAX + 16];
	pthread_t t;
	uffdsnap_reader_t *r;
	struct snap sn;
	uint8_t *got;
	size_t len;
	int fd, p[2];

	t_watchdog(120, "extract");
	snap_new(&sn, RANDOM);
	snprintf(out, sizeof(out), "%s/region", sn.dir);
	r = t_reader(sn.path);
	ck_assert((fd = open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) >= 0);
	ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 0, fd), 0);
	close(fd);
	printf("extract to a file: %" PRIu64 " chunk loads, %" PRIu64 " chunks\n", chunks_loaded(r), sn.chunks);
	/* chunk by chunk */
	ck_assert_uint_eq(chunks_loaded(r), sn.chunks);
	uffdsnap_reader_free(r);
	got = t_slurp(out, &len);
	ck_assert_uint_eq(len, LEN);
	ck_assert_msg(!memcmp(got, sn.ref, LEN), "extract to a file differs from the region at the instant");
	free(got);

	/* to a pipe: in page order, from another thread */
	ck_assert_int_eq(pipe(p), 0);
	pe = (struct pipe_extract){ .r = t_reader(sn.path), .fd = p[1] };
	ck_assert_int_eq(pthread_create(&t, NULL, extract_main, &pe), 0);
	got = t_buf_alloc(LEN);
	for (size_t off = 0; off < LEN;) {
		ssize_t n = read(p[0], got + off, LEN - off);
		ck_assert_msg(n > 0, "the pipe ended at %zu", off);
		off += (size_t)n;
	}
	close(p[0]);
	ck_assert_int_eq(t_join_timeout(t, 30), 0);
	ck_assert_msg(pe.rc == 0, "extract to a pipe: %d %s", pe.rc, uffdsnap_reader_error(pe.r));
	ck_assert_msg(!memcmp(got, sn.ref, LEN), "extract to a pipe differs from the region at the instant");
	t_buf_free(got, LEN);
	uffdsnap_reader_free(pe.r);
	snap_free(&sn);
}
END_TEST

/* Touch 300 random pages of the restored memory, each against the instant. */
static void touch_check(const struct snap *sn, const uint8_t *addr)
{
	uint64_t seed = 3;

	for (unsigned k = 0; k < 300; k++) {
		size_t p = t_splitmix64(&seed) % (LEN / t_page);
		ck_assert_msg(!memcmp(addr + p * t_page, sn->ref + p * t_page, t_page),
			      "page %zu differs from the region at the instant", p);
	}
}

/* faults: the touches must have faulted (no prefetcher); with one, it may
 * have placed every page before the first touch on a loaded machine. */
static void lazy_stats_check(const struct snap *sn, const char *what, const uffdsnap_lazy_stats_t *st,
			     const uint8_t *addr, bool faults)
{
	printf("%s: %" PRIu64 " faults, chunks loaded %" PRIu64 " for faults + %" PRIu64 " by the prefetcher; the "
	       "file has %" PRIu64 "\n", what, st->faults, st->chunks_fault, st->chunks_prefetch, sn->chunks);
	if (faults)
		ck_assert_uint_gt(st->faults, 0);
	ck_assert_uint_le(st->chunks_fault + st->chunks_prefetch, sn->chunks);
	ck_assert_msg(!memcmp(addr, sn->ref, LEN), "%s: the restored region differs from the instant", what);
}

START_TEST(lazy)
{
	uffdsnap_lazy_region_t reg = { .name = "pool", .len = LEN };
	uffdsnap_lazy_stats_t st = { .size = sizeof(st) };
	struct t_mem dst;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	struct snap sn;
	int rc;

	t_watchdog(120, "lazy");
	snap_new(&sn, (enum writes)(_i / 2));
	r = t_reader(sn.path);
	t_memfd(&dst, LEN);
	reg.addr = dst.addr;
	uffdsnap_lazy_opts_t lo = { .size = sizeof(lo), .flags = _i % 2 ? UFFDSNAP_LAZY_NO_PREFETCH : 0 };
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, &lo);
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	touch_check(&sn, dst.addr);
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	uffdsnap_lazy_stats(lz, &st);
	lazy_stats_check(&sn, _i % 2 ? "lazy, faults only" : "lazy", &st, dst.addr, _i % 2);
	uffdsnap_lazy_free(lz);
	uffdsnap_reader_free(r);
	t_mem_free(&dst);
	snap_free(&sn);
}
END_TEST

struct server {
	int ls;
	uffdsnap_reader_t *r;
	int rc;
};

static void *server_main(void *arg)
{
	struct server *sv = arg;
	uffdsnap_lazy_opts_t o = { .size = sizeof(o), .flags = UFFDSNAP_LAZY_NO_PREFETCH };
	int conn = accept(sv->ls, NULL, NULL);

	sv->rc = conn < 0 ? -errno : uffdsnap_serve_conn(sv->r, conn, &o);
	if (conn >= 0)
		close(conn);
	return NULL;
}

/* The page server, faults only, in a thread of this process. */
START_TEST(serve)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_region_t reg = { .name = "pool", .len = LEN };
	uffdsnap_lazy_stats_t st = { .size = sizeof(st) };
	struct server sv = { 0 };
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	struct snap sn;
	pthread_t t;
	int rc;

	t_watchdog(120, "serve");
	snap_new(&sn, RANDOM);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s/sock", sn.dir);
	sv.r = t_reader(sn.path);
	ck_assert((sv.ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
	ck_assert(!bind(sv.ls, (struct sockaddr *)&sa, sizeof(sa)) && !listen(sv.ls, 1));
	ck_assert_int_eq(pthread_create(&t, NULL, server_main, &sv), 0);
	t_memfd(&dst, LEN);
	reg.addr = dst.addr;
	rc = uffdsnap_lazy_connect(&c, sa.sun_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect: %d %s", rc, uffdsnap_last_error());
	touch_check(&sn, dst.addr);
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	ck_assert_int_eq(uffdsnap_lazy_client_stats(c, &st), 0);
	lazy_stats_check(&sn, "page server, faults only", &st, dst.addr, true);
	uffdsnap_lazy_client_free(c);
	ck_assert_int_eq(t_join_timeout(t, 30), 0);
	ck_assert_int_eq(sv.rc, 0);
	close(sv.ls);
	uffdsnap_reader_free(sv.r);
	t_mem_free(&dst);
	snap_free(&sn);
}
END_TEST

/* An index entry of a snapshot file, read by hand (docs/format.md): END's
 * index_offset, INDX's entries {offset, region, nextents, first, end}. */
struct ient {
	uint64_t off, first, end;
	uint32_t nextents;
};

/* Entry i of the index of the snapshot bytes f (len): false past the last. */
static bool index_entry(const uint8_t *f, size_t len, uint64_t i, struct ient *e)
{
	uint64_t ioff, count;

	memcpy(&ioff, f + len - 80 + 24, 8);
	memcpy(&count, f + ioff + 16, 8);
	if (i >= count)
		return false;
	memcpy(&e->off, f + ioff + 24 + 32 * i, 8);
	memcpy(&e->nextents, f + ioff + 24 + 32 * i + 12, 4);
	memcpy(&e->first, f + ioff + 24 + 32 * i + 16, 8);
	memcpy(&e->end, f + ioff + 24 + 32 * i + 24, 8);
	return true;
}

/* A snapshot taken under random writes, for `what` to damage: its bytes. */
static uint8_t *snap_bytes(struct snap *sn, const char *what, size_t *len)
{
	t_watchdog(120, what);
	snap_new(sn, RANDOM);
	return t_slurp(sn->path, len);
}

/*
 * Flip a bit of the first extent of the widest chunk of several extents (a
 * fault chunk, whose table the page map reads), without re-sealing its
 * checksum.
 */
START_TEST(damaged_table)
{
	uffdsnap_lazy_region_t reg = { .name = "pool", .len = LEN };
	uint64_t best = 0, best_span = 0;
	char bad[PATH_MAX + 16];
	uint8_t page[4096];
	struct t_mem dst;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	struct ient e;
	struct snap sn;
	uint8_t *f;
	size_t len;
	int rc;

	f = snap_bytes(&sn, "damaged_table", &len);
	for (uint64_t i = 0; index_entry(f, len, i, &e); i++) {
		if (e.nextents > 1 && e.end - e.first > best_span) {
			best = e.off;
			best_span = e.end - e.first;
		}
	}
	ck_assert_uint_gt(best_span, 64); /* wider than a chunk: a fault chunk */
	f[best + 48 + 2] ^= 0x10; /* first_page of extent 0, + 1 << 20 */
	snprintf(bad, sizeof(bad), "%s/damaged", sn.dir);
	t_write_file(bad, f, len);
	free(f);

	r = t_reader(bad);
	rc = uffdsnap_reader_read(r, 0, 0, page, sizeof(page));
	printf("damaged table: read: %d %s\n", rc, uffdsnap_reader_error(r));
	ck_assert_int_eq(rc, -EBADMSG);
	ck_assert_msg(strstr(uffdsnap_reader_error(r), "checksum mismatch"), "%s", uffdsnap_reader_error(r));
	t_memfd(&dst, LEN);
	reg.addr = dst.addr;
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, NULL);
	printf("damaged table: lazy_start: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EBADMSG);
	ck_assert_msg(strstr(uffdsnap_last_error(), "checksum mismatch"), "%s", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_reader_verify(r), -EBADMSG);
	uffdsnap_reader_free(r);
	t_mem_free(&dst);
	snap_free(&sn);
}
END_TEST

/*
 * Flip a byte in the middle of the payload of the chunk of narrowest span (a
 * chunk of the sweep) among those that start in the second half of the
 * region and store at least 256 bytes, without re-sealing it (a chunk of
 * zero pages stores almost nothing: a byte 100 bytes into its payload was the
 * next record's, once, and the read of page 0 found that one damaged): no page before its first is in it, nor after its span. Reads in 4 KiB
 * pieces in page order: the read-ahead decodes that chunk (and finds it
 * damaged) before the reads get there, and every read before its first page
 * still succeeds, byte-exact; the read of its first page fails with its
 * error, again when retried; reads after it succeed.
 */
START_TEST(damaged_ahead)
{
	uint64_t first = UINT64_MAX, end = 0, coff = 0, failed = 0, span = UINT64_MAX, stored = 0, sl;
	char bad[PATH_MAX + 16], where[64];
	uint32_t nextents = 0;
	uint8_t page[4096];
	uffdsnap_reader_t *r;
	struct ient e;
	struct snap sn;
	uint8_t *f;
	size_t len;
	int rc;

	f = snap_bytes(&sn, "damaged_ahead", &len);
	for (uint64_t i = 0; index_entry(f, len, i, &e); i++) {
		memcpy(&sl, f + e.off + 16 + 24, 8); /* the chunk header's stored_len */
		if (e.first >= LEN / t_page / 2 && e.end - e.first < span && sl >= 256)
			first = e.first, end = e.end, coff = e.off, nextents = e.nextents, span = e.end - e.first, stored = sl;
	}
	ck_assert_uint_ne(first, UINT64_MAX);
	/* the payload follows the record and chunk headers and the extents */
	f[coff + 48 + 16 * nextents + stored / 2] ^= 0x01;
	snprintf(bad, sizeof(bad), "%s/damaged", sn.dir);
	t_write_file(bad, f, len);
	free(f);
	snprintf(where, sizeof(where), "chunk at offset %" PRIu64 ":", coff);

	r = t_reader(bad);
	ck_assert_int_eq(uffdsnap_reader_threads(r, 2), 0);
	for (uint64_t p = 0; p < first; p++) {
		/* before the last page ahead of it: let the workers get there */
		for (unsigned ms = 0; p + 1 == first && ms < 10000 && !failed; ms++) {
			usnap_reader_ahead_decoded(r, &failed);
			usleep(1000);
		}
		rc = uffdsnap_reader_read(r, 0, p * t_page, page, t_page);
		ck_assert_msg(rc == 0, "read of page %" PRIu64 ", before the damaged chunk at page %" PRIu64 ": %d %s", p,
			      first, rc, uffdsnap_reader_error(r));
		ck_assert_msg(!memcmp(page, sn.ref + p * t_page, t_page), "page %" PRIu64 " differs", p);
	}
	printf("damaged chunk ahead (pages %" PRIu64 "..%" PRIu64 ", %s): %" PRIu64 " failed decodes ahead before "
	       "the read that needs it\n", first, end - 1, where, failed);
	ck_assert_uint_ge(failed, 1);
	for (unsigned k = 0; k < 2; k++) {
		rc = uffdsnap_reader_read(r, 0, first * t_page, page, t_page);
		printf("the read that needs it: %d %s\n", rc, uffdsnap_reader_error(r));
		ck_assert_int_eq(rc, -EBADMSG);
		ck_assert_msg(strstr(uffdsnap_reader_error(r), where) &&
			      strstr(uffdsnap_reader_error(r), "checksum mismatch"), "%s", uffdsnap_reader_error(r));
	}
	for (uint64_t p = end; p < end + 128 && p < LEN / t_page; p++) {
		rc = uffdsnap_reader_read(r, 0, p * t_page, page, t_page);
		ck_assert_msg(rc == 0, "read of page %" PRIu64 ", after the damaged chunk: %d %s", p, rc,
			      uffdsnap_reader_error(r));
		ck_assert_msg(!memcmp(page, sn.ref + p * t_page, t_page), "page %" PRIu64 " differs", p);
	}
	uffdsnap_reader_free(r);
	snap_free(&sn);
}
END_TEST

/*
 * Free readers while their workers decode ahead: two reads in page order
 * queue chunks ahead, and the reader is freed at once or a moment later.
 * No thread may be left (ASan and TSan check the memory and the hand-over).
 */
START_TEST(close_ahead)
{
	const unsigned rounds = T_SANITIZED ? 12 : 60;
	uint8_t buf[2 * 4096];
	long threads0;
	struct snap sn;

	t_watchdog(120, "close_ahead");
	snap_new(&sn, RANDOM);
	threads0 = t_proc_status("Threads");
	for (unsigned k = 0; k < rounds; k++) {
		uffdsnap_reader_t *r = t_reader(sn.path);
		unsigned workers = 1 + k % 3;
		size_t off = (k % 4) * (LEN / 4);

		ck_assert_int_eq(uffdsnap_reader_threads(r, workers), 0);
		ck_assert_int_eq(uffdsnap_reader_read(r, 0, off, buf, t_page), 0);
		ck_assert_int_eq(uffdsnap_reader_read(r, 0, off + t_page, buf + t_page, t_page), 0);
		ck_assert(!memcmp(buf, sn.ref + off, 2 * t_page));
		ck_assert_int_eq(t_proc_status("Threads"), threads0 + (long)workers);
		if (k % 2)
			usleep(200 * (k % 5));
		uffdsnap_reader_free(r);
		ck_assert_int_eq(t_proc_status("Threads"), threads0);
	}
	snap_free(&sn);
}
END_TEST

/*
 * fork() while the workers decode ahead: the child has none of them (and
 * maybe a lock one held); its reads go on, byte-exact, with workers of its
 * own (under TSan: on its own thread, after dropping the parent's), and it
 * frees the reader; the parent's reads go on too.
 */
START_TEST(fork_ahead)
{
	uint8_t *buf = t_buf_alloc(LEN);
	uffdsnap_reader_t *r;
	struct snap sn;
	pid_t pid;

	t_watchdog(120, "fork_ahead");
	snap_new(&sn, RANDOM);
	r = t_reader(sn.path);
	ck_assert_int_eq(uffdsnap_reader_threads(r, 2), 0);
	for (size_t off = 0; off < LEN / 2; off += 64 * KiB)
		ck_assert_int_eq(uffdsnap_reader_read(r, 0, off, buf + off, 64 * KiB), 0);
	ck_assert((pid = fork()) >= 0);
	if (!pid) {
		int bad = 0;

		if (T_TSAN) /* which kills a child that starts threads */
			uffdsnap_reader_threads(r, 0);
		for (size_t off = LEN / 2; off < LEN && !bad; off += 64 * KiB)
			bad = uffdsnap_reader_read(r, 0, off, buf + off, 64 * KiB) || memcmp(buf + off, sn.ref + off, 64 * KiB);
		uffdsnap_reader_free(r);
		_exit(bad || memcmp(buf, sn.ref, LEN) ? 1 : 0);
	}
	for (size_t off = LEN / 2; off < LEN; off += 64 * KiB)
		ck_assert_int_eq(uffdsnap_reader_read(r, 0, off, buf + off, 64 * KiB), 0);
	ck_assert(!memcmp(buf, sn.ref, LEN));
	ck_assert_int_eq(t_wait_child(pid, 60, "the child reading after fork()"), 0);
	uffdsnap_reader_free(r);
	t_buf_free(buf, LEN);
	snap_free(&sn);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	t_test_require_uffd();
	s = suite_create("reader-writes");
	tc = tcase_create("reader");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, read_pieces, 0, NWRITES);
	tcase_add_test(tc, read_fault_heavy);
	tcase_add_test(tc, read_random);
	tcase_add_test(tc, extract);
	tcase_add_test(tc, damaged_ahead);
	tcase_add_test(tc, close_ahead);
	tcase_add_test(tc, fork_ahead);
	suite_add_tcase(s, tc);
	tc = tcase_create("lazy");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, lazy, 0, 2 * NWRITES);
	tcase_add_test(tc, serve);
	tcase_add_test(tc, damaged_table);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
