/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Sinks and options: file sink (mode, atomic rename over the target), fd sink
 * into a pipe (the same stream; verifiable as a stream), callback sink;
 * options (zstd levels, compression threads, fsync) all produce byte-exact
 * snapshots; bad option structs are refused, older (smaller) ones accepted.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

/* Region sizes, halved under ASan and quartered under TSan: every sink,
 * option set and compression thread count still runs against a writer; the
 * time there goes to filling, copying and comparing the bytes. */
#define SZ(mib) ((size_t)(T_TSAN ? (mib) / 4 : T_SANITIZED ? (mib) / 2 : (mib)) * MiB)

struct sk_state {
	uint8_t *addr;
	size_t len;
};

static void sk_writer(struct t_writers *w, unsigned idx)
{
	struct sk_state *b = w->arg;
	uint64_t rng = 55 + idx, np = b->len / t_page;

	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		uint64_t r = t_splitmix64(&rng);
		__atomic_store_n(&b->addr[(r % np) * t_page + (r >> 52)], (uint8_t)r, __ATOMIC_RELAXED);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
}

START_TEST(sink_file_atomic_rename)
{
	const size_t len = SZ(64);
	struct t_mem m;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_sink_t *k;
	char dir[PATH_MAX], path[PATH_MAX + 16], path2[PATH_MAX + 16];
	static const char junk[] = "an older file that must stay intact until the snapshot is complete";
	uint8_t *ref, *old;
	size_t oldlen;
	struct stat sb;
	int r, fd, entries_running;

	t_watchdog(60, "sink_file_atomic_rename");
	t_memfd(&m, len);
	t_fill_random(m.addr, len, 61);
	ref = t_copy(m.addr, len);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "r", m.addr, len);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	snprintf(path2, sizeof(path2), "%s/snap-0640", dir);

	/* target absent: nothing under that name until wait returns 0 */
	umask(022);
	r = uffdsnap_begin_file(ctx, path, &s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	ck_assert_msg(access(path, F_OK) != 0, "target exists while the snapshot runs");
	entries_running = t_dir_entries(dir, true);
	ck_assert_int_eq(entries_running, 1); /* the temporary file, in the target's directory */
	for (size_t off = 0; off < len; off += 3 * t_page)
		m.addr[off]++;
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	ck_assert_int_eq(stat(path, &sb), 0);
	printf("sink_file_atomic_rename: mode %o, %lld bytes\n", (unsigned)(sb.st_mode & 07777), (long long)sb.st_size);
	ck_assert_uint_eq(sb.st_mode & 07777, 0600);
	ck_assert_int_eq(t_dir_entries(dir, true), 1);
	{
		struct t_expect ex = { "r", ref, len };
		t_check_file(path, &ex, 1);
	}
	uffdsnap_snap_free(s);

	/* target present: the old contents stay until the rename */
	fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	ck_assert(fd >= 0);
	ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	t_buf_free(ref, len);
	ref = t_copy(m.addr, len);
	ck_assert_int_eq(uffdsnap_begin_file(ctx, path, &s), 0);
	old = t_slurp(path, &oldlen);
	ck_assert_msg(oldlen == sizeof(junk) && !memcmp(old, junk, oldlen), "the old target changed before the "
		      "snapshot completed");
	free(old);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	{
		struct t_expect ex = { "r", ref, len };
		t_check_file(path, &ex, 1);
	}
	uffdsnap_snap_free(s);

	/* explicit mode */
	ck_assert_int_eq(uffdsnap_sink_file(&k, path2, 0640), 0);
	ck_assert_int_eq(uffdsnap_begin(ctx, k, &s), 0);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	ck_assert_int_eq(stat(path2, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 07777, 0640);
	ck_assert(t_file_verifies(path2));
	uffdsnap_snap_free(s);
	ck_assert_int_eq(t_dir_entries(dir, true), 2);

	/* bad sink arguments */
	ck_assert_int_eq(uffdsnap_sink_file(&k, NULL, 0), -EINVAL);
	ck_assert_int_eq(uffdsnap_sink_file(&k, "", 0), -EINVAL);
	ck_assert_int_lt(uffdsnap_sink_fd(&k, -1), 0);
	ck_assert_int_eq(uffdsnap_sink_callback(&k, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffdsnap_sink_fd(&k, 1), 0);
	uffdsnap_sink_free(k); /* never begun */
	uffdsnap_sink_free(NULL);

	uffdsnap_free(ctx);
	t_rmdir(dir);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

struct drain {
	int fd;
	uint8_t *buf;
	size_t len, cap;
	int verify_result;        /* for the reader-on-a-pipe variant */
	bool verify;
};

static void *drain_pipe(void *arg)
{
	struct drain *d = arg;

	if (d->verify) {
		uffdsnap_reader_t *r = NULL;
		d->verify_result = uffdsnap_reader_open_fd(&r, d->fd);
		if (!d->verify_result) {
			d->verify_result = uffdsnap_reader_verify(r);
			if (d->verify_result)
				fprintf(stderr, "stream verify: %s\n", uffdsnap_reader_error(r));
			uffdsnap_reader_free(r);
		}
		return NULL;
	}
	for (;;) {
		ssize_t n;
		if (d->len == d->cap) {
			d->cap = d->cap ? d->cap * 2 : 1 << 20;
			d->buf = realloc(d->buf, d->cap);
			if (!d->buf)
				return NULL;
		}
		n = read(d->fd, d->buf + d->len, d->cap - d->len);
		if (n <= 0)
			break;
		d->len += (size_t)n;
	}
	return NULL;
}

START_TEST(sink_fd_pipe)
{
	const size_t len = SZ(32);
	struct t_mem m[2];
	struct t_writers w;
	struct sk_state b;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_sink_t *k;
	uffdsnap_stats_t st;
	struct drain d;
	pthread_t t;
	uint8_t *ref[2];
	int p[2], r;

	t_watchdog(90, "sink_fd_pipe");
	for (int i = 0; i < 2; i++) {
		t_memfd(&m[i], len);
		t_fill_mixed(m[i].addr, len, 70 + i, 11, 7);
		ref[i] = t_mem_copy(&m[i]);
	}
	ctx = t_ctx_new(NULL);
	t_add(ctx, "first", m[0].addr, len);
	t_add(ctx, "second", m[1].addr, len);

	/* 1: stored by a thread, checked byte-exact */
	ck_assert_int_eq(pipe(p), 0);
	memset(&d, 0, sizeof(d));
	d.fd = p[0];
	ck_assert_int_eq(pthread_create(&t, NULL, drain_pipe, &d), 0);
	ck_assert_int_eq(uffdsnap_sink_fd(&k, p[1]), 0);
	ck_assert_int_eq(uffdsnap_begin(ctx, k, &s), 0);
	b = (struct sk_state){ m[0].addr, len };
	t_writers_start(&w, 1, sk_writer, &b);
	r = uffdsnap_wait(s);
	t_writers_stop(&w, 10);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	t_stats(s, &st);
	t_stats_print("fd sink", &st);
	ck_assert_msg(fcntl(p[1], F_GETFD) >= 0, "the fd sink closed the caller's fd");
	close(p[1]);
	ck_assert_int_eq(t_join_timeout(t, 10), 0);
	close(p[0]);
	printf("sink_fd_pipe: %zu bytes through the pipe (bytes_out %llu)\n", d.len, (unsigned long long)st.bytes_out);
	ck_assert_uint_eq(d.len, st.bytes_out);
	{
		struct t_expect ex[2] = { { "first", ref[0], len }, { "second", ref[1], len } };
		t_check_buffer(d.buf, d.len, ex, 2);
	}
	free(d.buf);
	uffdsnap_snap_free(s);

	/* 2: the reader verifies the stream straight from the pipe */
	ck_assert_int_eq(pipe(p), 0);
	memset(&d, 0, sizeof(d));
	d.fd = p[0];
	d.verify = true;
	d.verify_result = 1;
	ck_assert_int_eq(pthread_create(&t, NULL, drain_pipe, &d), 0);
	ck_assert_int_eq(uffdsnap_sink_fd(&k, p[1]), 0);
	ck_assert_int_eq(uffdsnap_begin(ctx, k, &s), 0);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	close(p[1]);
	ck_assert_int_eq(t_join_timeout(t, 20), 0);
	close(p[0]);
	printf("sink_fd_pipe: uffdsnap_reader_open_fd + verify on the pipe -> %d\n", d.verify_result);
	ck_assert_int_eq(d.verify_result, 0);
	uffdsnap_snap_free(s);

	uffdsnap_free(ctx);
	for (int i = 0; i < 2; i++) {
		t_buf_free(ref[i], len);
		t_mem_free(&m[i]);
	}
}
END_TEST

START_TEST(sink_callback)
{
	const size_t len = SZ(32);
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *ref;

	t_watchdog(60, "sink_callback");
	t_memfd(&m, len);
	t_fill_mixed(m.addr, len, 80, 5, 3);
	ref = t_mem_copy(&m);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "cb", m.addr, len);
	t_cb_init(&cb, -1);
	cb.keep = true;
	ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
	for (size_t off = 0; off < len; off += 5 * t_page)
		m.addr[off] = 1;
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	t_stats(s, &st);
	t_stats_print("callback", &st);
	printf("sink_callback: %lu calls, %zu bytes\n", atomic_load(&cb.calls), cb.mem_len);
	ck_assert_uint_eq(cb.mem_len, st.bytes_out);
	{
		struct t_expect ex = { "cb", ref, len };
		t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

/* Each option set produces a byte-exact snapshot while a writer runs. */
static void options_case(int level, int threads, uint32_t flags, size_t len)
{
	struct t_mem m;
	struct t_writers w;
	struct sk_state b;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	char dir[PATH_MAX], path[PATH_MAX + 16], label[64];
	uint8_t *ref;
	uint64_t t0;
	int r;

	t_memfd(&m, len);
	/* compressible: pages of random words repeated, and zero pages */
	t_fill_mixed(m.addr, len, 90, 13, 4);
	for (size_t off = 0; off < len; off += 2 * t_page)
		memset(m.addr + off + 64, 'x', t_page - 128);
	ref = t_mem_copy(&m);
	uffdsnap_opts_init(&o);
	o.zstd_level = level;
	o.compress_threads = threads;
	o.flags = flags;
	ctx = t_ctx_new(&o);
	t_add(ctx, "o", m.addr, len);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	t0 = t_now_ns();
	r = uffdsnap_begin_file(ctx, path, &s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	b = (struct sk_state){ m.addr, len };
	t_writers_start(&w, 1, sk_writer, &b);
	r = uffdsnap_wait(s);
	t_writers_stop(&w, 10);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	t_stats(s, &st);
	snprintf(label, sizeof(label), "level %d threads %d flags %#x", level, threads, flags);
	t_stats_print(label, &st);
	printf("  options %s: %.1f ms, ratio %.2f\n", label, t_ms_since(t0),
	       st.bytes_out ? (double)st.bytes_raw / (double)st.bytes_out : 0.0);
	t_assert_exactly_once(&st);
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	{
		struct t_expect ex = { "o", ref, len };
		t_check_file(path, &ex, 1);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_rmdir(dir);
	t_buf_free(ref, len);
	t_mem_free(&m);
}

START_TEST(sink_options_levels)
{
	t_watchdog(170, "sink_options_levels");
	options_case(-5, 0, 0, SZ(32));
	options_case(1, 0, 0, SZ(32));
	options_case(19, 0, 0, 4 * MiB);
}
END_TEST

START_TEST(sink_options_threads_fsync)
{
	t_watchdog(170, "sink_options_threads_fsync");
	options_case(1, 1, 0, SZ(32));
	options_case(1, 4, 0, SZ(32));
	options_case(3, 2, UFFDSNAP_OPT_FSYNC, SZ(32));
}
END_TEST

/*
 * Chunks zstd cannot shrink are written from the copied pages themselves,
 * in as many pieces as zero pages cut them into, or gathered when they are
 * cut into more pieces than a job holds or go to a callback (compress.c
 * build_record). Random pages with a zero page every `every` pages, through
 * an fd sink (writev of the pieces) or, for odd `every`, a callback: every
 * chunk stored uncompressed, the stream byte-exact.
 */
static void uncompressed_case(unsigned every)
{
	const size_t len = 8 * MiB;
	struct t_fix f;
	uffdsnap_stats_t st;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 256 * 1024);
	uint8_t *mem = t_fix_mem(&f, len);
	int r;

	t_fill_random(mem, len, 4242 + every);
	for (size_t p = 0; every && p < len / t_page; p += every)
		memset(mem + p * t_page, 0, t_page);
	f.ref = t_mem_copy(&f.m);
	t_fix_ctx(&f, "u", &o);
	t_fix_cb(&f, every & 1 ? NULL : "snap");
	if (every & 1) {
		r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	} else {
		uffdsnap_sink_t *k;
		ck_assert_int_eq(uffdsnap_sink_fd(&k, f.cb.fd), 0);
		r = uffdsnap_begin(f.ctx, k, &f.s);
	}
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &st);
	printf("  zero page every %u: %llu of %llu chunks uncompressed, %llu bytes\n", every,
	       (unsigned long long)st.chunks_uncompressed, (unsigned long long)st.chunks,
	       (unsigned long long)st.bytes_out);
	ck_assert_uint_eq(st.chunks_uncompressed, st.chunks);
	t_fix_check(&f);
	t_fix_free(&f);
}

START_TEST(sink_uncompressed_pieces)
{
	t_watchdog(60, "sink_uncompressed_pieces");
	uncompressed_case(0);   /* fd: one piece of pages a chunk */
	uncompressed_case(8);   /* fd: 8 pieces */
	uncompressed_case(2);   /* fd: 32 pieces, gathered */
	uncompressed_case(3);   /* callback: gathered */
}
END_TEST

START_TEST(sink_options_struct)
{
	struct {
		uffdsnap_opts_t o;
		char tail[64];
	} big;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx = NULL;
	int r;

	/* size 0, too big */
	uffdsnap_opts_init(&o);
	o.size = 0;
	ck_assert_int_eq(uffdsnap_new(&ctx, &o), -EINVAL);
	ck_assert_ptr_null(ctx);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	memset(&big, 0, sizeof(big));
	uffdsnap_opts_init(&big.o);
	big.o.size = sizeof(big);
	ck_assert_int_eq(uffdsnap_new(&ctx, &big.o), -EINVAL);
	/* unknown flag, bad values */
	uffdsnap_opts_init(&o);
	o.flags = 1u << 30;
	ck_assert_int_eq(uffdsnap_new(&ctx, &o), -EINVAL);
	uffdsnap_opts_init(&o);
	o.zstd_level = 1000;
	ck_assert_int_eq(uffdsnap_new(&ctx, &o), -EINVAL);
	uffdsnap_opts_init(&o);
	o.compress_threads = -1;
	ck_assert_int_eq(uffdsnap_new(&ctx, &o), -EINVAL);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 3 * 4096;
	ck_assert_int_eq(uffdsnap_new(&ctx, &o), -EINVAL);
	ck_assert_int_eq(uffdsnap_new(NULL, NULL), -EINVAL);
	/* an older, smaller struct: fields past .size are not read (they hold garbage here) */
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 1;        /* would be refused if read */
	o.chunk_bytes = 12345;     /* would be refused if read */
	o.size = offsetof(uffdsnap_opts_t, buffer_bytes);
	r = uffdsnap_new(&ctx, &o);
	ck_assert_msg(r == 0, "older opts (size %zu): %d (%s)", o.size, r, uffdsnap_last_error());
	uffdsnap_free(ctx);
	ctx = NULL;
	o.size = offsetof(uffdsnap_opts_t, zstd_level);
	o.zstd_level = 1000;
	r = uffdsnap_new(&ctx, &o);
	ck_assert_msg(r == 0, "older opts (size %zu): %d (%s)", o.size, r, uffdsnap_last_error());
	uffdsnap_free(ctx);
	uffdsnap_free(NULL);
	/* NULL opts = defaults */
	ctx = t_ctx_new(NULL);
	uffdsnap_free(ctx);
	/* stats struct size */
	{
		struct t_mem m;
		uffdsnap_snap_t *s;
		uffdsnap_stats_t st;
		struct t_cb cb;
		t_memfd(&m, 1 * MiB);
		ctx = t_ctx_new(NULL);
		t_add(ctx, "s", m.addr, m.len);
		t_cb_init(&cb, -1);
		ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
		ck_assert_int_eq(uffdsnap_wait(s), 0);
		memset(&st, 0, sizeof(st));
		st.size = 0;
		ck_assert_int_eq(uffdsnap_snap_stats(s, &st), -EINVAL);
		st.size = sizeof(st) + 8;
		ck_assert_int_eq(uffdsnap_snap_stats(s, &st), -EINVAL);
		memset(&st, 0xff, sizeof(st));
		st.size = offsetof(uffdsnap_stats_t, begin_ns); /* older: size, state, error */
		ck_assert_int_eq(uffdsnap_snap_stats(s, &st), 0);
		ck_assert_int_eq(st.state, UFFDSNAP_STATE_DONE);
		ck_assert_uint_eq(st.pages_total, UINT64_MAX); /* untouched past .size */
		uffdsnap_snap_free(s);
		uffdsnap_free(ctx);
		t_cb_destroy(&cb);
		t_mem_free(&m);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sinks");
	TCase *tc = tcase_create("sinks");

	t_test_require_uffd();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, sink_file_atomic_rename);
	tcase_add_test(tc, sink_fd_pipe);
	tcase_add_test(tc, sink_callback);
	tcase_add_test(tc, sink_options_levels);
	tcase_add_test(tc, sink_options_threads_fsync);
	tcase_add_test(tc, sink_uncompressed_pieces);
	suite_add_tcase(s, tc);
	/* no write faults: valgrind-friendly (CK_RUN_CASE=opts) */
	tc = tcase_create("opts");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, sink_options_struct);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
