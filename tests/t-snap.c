/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, snapshots: contexts and regions, begin/wait with their
 * checks, reading a snapshot back, sinks (the callback sink with its gate
 * and throttle), and the snapshot-file fixtures (see helpers.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

/* ---- snapshots -------------------------------------------------------------- */

uffdsnap_reader_t *t_reader(const char *path)
{
	uffdsnap_reader_t *r;
	int rc = uffdsnap_reader_open(&r, path);

	ck_assert_msg(rc == 0, "reader_open %s: %d %s", path, rc, uffdsnap_last_error());
	/* Under a sanitizer, on the caller's thread: every test reads its
	 * snapshots back, and the decoding threads made the sanitizer lanes of
	 * CI ~80 s longer; test-reader-writes tests the threads in every build
	 * (it sets their number itself, or opens its readers with the default). */
	if (T_SANITIZED)
		ck_assert_int_eq(uffdsnap_reader_threads(r, 0), 0);
	return r;
}

uffdsnap_t *t_ctx_new(const uffdsnap_opts_t *opts)
{
	uffdsnap_t *ctx = NULL;
	int r = uffdsnap_new(&ctx, opts);

	ck_assert_msg(r == 0, "uffdsnap_new: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert(ctx != NULL);
	return ctx;
}

uffdsnap_opts_t t_opts(size_t buffer_bytes, size_t chunk_bytes)
{
	uffdsnap_opts_t o;

	uffdsnap_opts_init(&o);
	if (buffer_bytes)
		o.buffer_bytes = buffer_bytes;
	if (chunk_bytes)
		o.chunk_bytes = chunk_bytes;
	return o;
}

void t_snap_file(uffdsnap_t *ctx, const char *path, uffdsnap_stats_t *st)
{
	uffdsnap_snap_t *s;
	int r = uffdsnap_begin_file(ctx, path, &s);

	ck_assert_msg(r == 0, "begin: %d %s", r, uffdsnap_last_error());
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	if (st)
		t_stats(s, st);
	uffdsnap_snap_free(s);
}

int t_add(uffdsnap_t *ctx, const char *name, void *addr, size_t len)
{
	int id = uffdsnap_add_region(ctx, name, addr, len);

	ck_assert_msg(id >= 0, "add_region '%s' (%zu bytes): %d %s (%s)", name, len, id, uffdsnap_strerror(id),
		      uffdsnap_last_error());
	return id;
}

void t_stats(uffdsnap_snap_t *s, uffdsnap_stats_t *st)
{
	int r;

	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	r = uffdsnap_snap_stats(s, st);
	ck_assert_msg(r == 0, "uffdsnap_snap_stats: %d", r);
}

void t_stats_print(const char *label, const uffdsnap_stats_t *st)
{
	printf("  [%s] state=%d err=%d pause=%.3fms elapsed=%.1fms window=%.1fms pages: total=%llu "
	       "fault=%llu sweep=%llu hole=%llu zero_found=%llu; faults=%llu fault_wait_max=%.2fms "
	       "raw=%lluKiB out=%lluKiB buffer_peak=%lluKiB/%lluKiB chunks=%llu\n",
	       label, st->state, st->error, st->begin_ns / 1e6, st->elapsed_ns / 1e6, st->window_ns / 1e6,
	       (unsigned long long)st->pages_total, (unsigned long long)st->pages_fault,
	       (unsigned long long)st->pages_sweep, (unsigned long long)st->pages_hole,
	       (unsigned long long)st->pages_zero_found, (unsigned long long)st->faults,
	       st->fault_wait_max_ns / 1e6, (unsigned long long)(st->bytes_raw >> 10),
	       (unsigned long long)(st->bytes_out >> 10), (unsigned long long)(st->buffer_peak >> 10),
	       (unsigned long long)(st->buffer_bound >> 10), (unsigned long long)st->chunks);
}

void t_assert_exactly_once(const uffdsnap_stats_t *st)
{
	ck_assert_msg(st->pages_fault + st->pages_sweep + st->pages_hole == st->pages_total,
		      "pages counted more or less than once: fault %llu + sweep %llu + hole %llu != total %llu",
		      (unsigned long long)st->pages_fault, (unsigned long long)st->pages_sweep,
		      (unsigned long long)st->pages_hole, (unsigned long long)st->pages_total);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

void t_check_file(const char *path, const struct t_expect *expect, unsigned n)
{
	uffdsnap_reader_t *r = t_reader(path);
	uffdsnap_info_t info = { .size = sizeof(info) };
	const size_t piece = 4 * MiB;
	uint8_t *buf;
	int e;

	e = uffdsnap_reader_verify(r);
	ck_assert_msg(e == 0, "reader_verify %s: %d %s (%s)", path, e, uffdsnap_strerror(e), uffdsnap_reader_error(r));
	e = uffdsnap_reader_info(r, &info);
	ck_assert_msg(e == 0, "reader_info: %d", e);
	ck_assert_msg(info.complete == 1, "snapshot %s not complete", path);
	ck_assert_msg(info.status == 0, "snapshot %s records status %d", path, info.status);
	ck_assert_msg(info.nregions == n, "snapshot has %u regions, expected %u", info.nregions, n);
	buf = t_buf_alloc(piece);
	for (unsigned i = 0; i < n; i++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		const uint8_t *want = expect[i].data;
		size_t bad_pages = 0, first_bad = SIZE_MAX;
		int id = uffdsnap_reader_find(r, expect[i].name);

		ck_assert_msg(id >= 0, "region '%s' not in snapshot: %d", expect[i].name, id);
		e = uffdsnap_reader_region(r, (unsigned)id, &ri);
		ck_assert_msg(e == 0, "reader_region %d: %d", id, e);
		ck_assert_msg(ri.length == expect[i].len, "region '%s' length %llu, expected %zu", expect[i].name,
			      (unsigned long long)ri.length, expect[i].len);
		for (size_t off = 0; off < expect[i].len; off += piece) {
			size_t k = expect[i].len - off < piece ? expect[i].len - off : piece;
			e = uffdsnap_reader_read(r, (unsigned)id, off, buf, k);
			ck_assert_msg(e == 0, "reader_read '%s' at %zu+%zu: %d %s (%s)", expect[i].name, off, k, e,
				      uffdsnap_strerror(e), uffdsnap_reader_error(r));
			for (size_t p = 0; p < k; p += t_page) {
				size_t m = k - p < t_page ? k - p : t_page;
				bool ok = want ? !memcmp(buf + p, want + off + p, m) : all_zero(buf + p, m);
				if (!ok) {
					bad_pages++;
					if (first_bad == SIZE_MAX)
						first_bad = off + p;
				}
			}
		}
		ck_assert_msg(bad_pages == 0, "region '%s': %zu pages differ from the expected instant, first at "
			      "offset 0x%zx (page %zu)", expect[i].name, bad_pages, first_bad, first_bad / t_page);
	}
	t_buf_free(buf, piece);
	printf("  snapshot %s: verified, %u region(s) byte-exact; pages data=%llu zero=%llu file=%llu bytes "
	       "(raw %llu)\n", path, n, (unsigned long long)info.pages_data, (unsigned long long)info.pages_zero,
	       (unsigned long long)info.bytes_file, (unsigned long long)info.bytes_raw);
	uffdsnap_reader_free(r);
}

void t_check_buffer(const void *data, size_t len, const struct t_expect *expect, unsigned n)
{
	char dir[PATH_MAX], path[PATH_MAX + 16];

	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/stream", dir);
	t_write_file(path, data, len);
	t_check_file(path, expect, n);
	t_rmdir(dir);
}

/* Verifies the file once for all the regions a test reads from it in a row:
 * a verify is a checksum pass over the whole file, ~4 s per 128 MiB under
 * TSan. A file written again has another inode or mtime. */
static void verify_once(uffdsnap_reader_t *r, const char *path)
{
	static struct stat last;
	struct stat st;
	int e;

	ck_assert_msg(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
	if (st.st_dev == last.st_dev && st.st_ino == last.st_ino && st.st_size == last.st_size &&
	    st.st_mtim.tv_sec == last.st_mtim.tv_sec && st.st_mtim.tv_nsec == last.st_mtim.tv_nsec)
		return;
	e = uffdsnap_reader_verify(r);
	ck_assert_msg(e == 0, "reader_verify %s: %d (%s)", path, e, uffdsnap_reader_error(r));
	last = st;
}

uint8_t *t_read_region_range(const char *path, const char *name, size_t off, size_t len, size_t *region_len)
{
	uffdsnap_reader_t *r = t_reader(path);
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uint8_t *buf;
	int e, id;

	verify_once(r, path);
	id = uffdsnap_reader_find(r, name);
	ck_assert_msg(id >= 0, "region '%s' not found: %d", name, id);
	ck_assert(uffdsnap_reader_region(r, (unsigned)id, &ri) == 0);
	*region_len = (size_t)ri.length;
	if (len == SIZE_MAX)
		len = *region_len;
	ck_assert_msg(off <= *region_len && len <= *region_len - off, "region '%s' is %zu bytes: no [%zu, +%zu)",
		      name, *region_len, off, len);
	buf = t_buf_alloc(len);
	e = uffdsnap_reader_read(r, (unsigned)id, off, buf, len);
	ck_assert_msg(e == 0, "reader_read '%s': %d (%s)", name, e, uffdsnap_reader_error(r));
	uffdsnap_reader_free(r);
	return buf;
}

uint8_t *t_read_region(const char *path, const char *name, size_t *len)
{
	return t_read_region_range(path, name, 0, SIZE_MAX, len);
}

int t_file_verifies(const char *path)
{
	uffdsnap_reader_t *r = NULL;
	int ok;

	if (access(path, F_OK))
		return 0;
	if (uffdsnap_reader_open(&r, path))
		return 0;
	ok = uffdsnap_reader_verify(r) == 0;
	uffdsnap_reader_free(r);
	return ok;
}

/* ---- sinks ------------------------------------------------------------------- */

void t_cb_init(struct t_cb *cb, int fd)
{
	memset(cb, 0, sizeof(*cb));
	cb->fd = fd;
	pthread_mutex_init(&cb->lock, NULL);
	pthread_cond_init(&cb->cv, NULL);
}

void t_cb_destroy(struct t_cb *cb)
{
	free(cb->mem);
	cb->mem = NULL;
	pthread_mutex_destroy(&cb->lock);
	pthread_cond_destroy(&cb->cv);
}

int t_cb_write(void *user, const void *buf, size_t len)
{
	struct t_cb *cb = user;
	unsigned long call = atomic_fetch_add(&cb->calls, 1) + 1;
	unsigned us;

	pthread_mutex_lock(&cb->lock);
	while (cb->gate_closed && call >= (cb->gate_after ? cb->gate_after : 1)) {
		atomic_store(&cb->blocked, true);
		pthread_cond_broadcast(&cb->cv);
		pthread_cond_wait(&cb->cv, &cb->lock);
	}
	atomic_store(&cb->blocked, false);
	pthread_mutex_unlock(&cb->lock);
	if (cb->fail_at && call == cb->fail_at)
		return cb->fail_err;
	us = atomic_load(&cb->sleep_us);
	if (us)
		usleep(us);
	if (cb->fd >= 0) {
		for (size_t off = 0; off < len;) {
			ssize_t w = write(cb->fd, (const uint8_t *)buf + off, len - off);
			if (w < 0)
				return -errno;
			off += (size_t)w;
		}
	}
	if (cb->keep) {
		if (cb->mem_len + len > cb->mem_cap) {
			size_t cap = cb->mem_cap ? cb->mem_cap : 1 << 20;
			uint8_t *m;
			while (cap < cb->mem_len + len)
				cap *= 2;
			if (!(m = realloc(cb->mem, cap)))
				return -ENOMEM;
			cb->mem = m, cb->mem_cap = cap;
		}
		memcpy(cb->mem + cb->mem_len, buf, len);
		cb->mem_len += len;
	}
	atomic_fetch_add(&cb->bytes, len);
	return 0;
}

uffdsnap_sink_t *t_cb_sink(struct t_cb *cb)
{
	uffdsnap_sink_t *k = NULL;
	int r = uffdsnap_sink_callback(&k, t_cb_write, cb);

	ck_assert_msg(r == 0 && k, "uffdsnap_sink_callback: %d", r);
	return k;
}

void t_cb_gate(struct t_cb *cb, bool closed)
{
	pthread_mutex_lock(&cb->lock);
	cb->gate_closed = closed;
	pthread_cond_broadcast(&cb->cv);
	pthread_mutex_unlock(&cb->lock);
}

bool t_cb_wait_blocked(struct t_cb *cb, unsigned seconds)
{
	uint64_t end = t_now_ns() + (uint64_t)seconds * 1000000000ull;

	while (!atomic_load(&cb->blocked)) {
		if (t_now_ns() > end)
			return false;
		usleep(1000);
	}
	return true;
}

uffdsnap_snap_t *t_begin_stalled(uffdsnap_t *ctx, struct t_cb *cb, unsigned sleep_us)
{
	uffdsnap_snap_t *s;
	int r;

	t_cb_init(cb, -1);
	cb->keep = true;
	t_cb_gate(cb, true);
	r = uffdsnap_begin(ctx, t_cb_sink(cb), &s);
	ck_assert_msg(r == 0, "begin: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert(t_cb_wait_blocked(cb, 10));
	atomic_store(&cb->sleep_us, sleep_us);
	t_cb_gate(cb, false);
	return s;
}

bool t_wait_sweep_stalled(uffdsnap_snap_t *s, unsigned seconds)
{
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uint64_t last = UINT64_MAX, t0 = t_now_ns();
	unsigned still = 0;

	while (t_now_ns() - t0 < seconds * 1000000000ull) {
		uint64_t done;

		uffdsnap_snap_stats(s, &st);
		done = st.pages_sweep + st.pages_hole + st.pages_fault;
		still = done == last ? still + 1 : 0;
		last = done;
		if (still == 10)
			return true;
		usleep(10 * 1000);
	}
	return false;
}

void t_end_snapshot(enum t_end how, uffdsnap_t *ctx, uffdsnap_snap_t *s)
{
	if (how == T_END_CANCEL)
		uffdsnap_cancel(s);
	else if (how == T_END_SNAP_FREE)
		uffdsnap_snap_free(s);
	else
		uffdsnap_free(ctx);
}

int t_finish_stalled(uffdsnap_snap_t *s, struct t_cb *cb, uffdsnap_stats_t *st, const char *label)
{
	int r;

	atomic_store(&cb->sleep_us, 0);
	r = uffdsnap_wait(s);
	t_stats(s, st);
	t_stats_print(label, st);
	return r;
}

/* ---- fixtures ---------------------------------------------------------------- */

uint8_t *t_fix_mem(struct t_fix *f, size_t len)
{
	memset(f, 0, sizeof(*f));
	return t_memfd(&f->m, len);
}

void t_fix_ctx(struct t_fix *f, const char *name, const uffdsnap_opts_t *opts)
{
	f->name = name;
	f->ctx = t_ctx_new(opts);
	t_add(f->ctx, name, f->m.addr, f->m.len);
}

void t_fix_cb(struct t_fix *f, const char *file)
{
	int fd = -1;

	if (file) {
		t_tmpdir(f->dir);
		snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, file);
		fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		ck_assert_msg(fd >= 0, "open %s: %s", f->path, strerror(errno));
	}
	t_cb_init(&f->cb, fd);
	f->cb.keep = !file;
	f->have_cb = true;
}

void t_fix_check(struct t_fix *f)
{
	struct t_expect ex = { f->name, f->ref, f->m.len };

	ck_assert_msg(f->have_cb, "t_fix_check: no t_fix_cb");
	if (f->cb.fd < 0) {
		t_check_buffer(f->cb.mem, f->cb.mem_len, &ex, 1);
		return;
	}
	close(f->cb.fd);
	f->cb.fd = -1;
	t_check_file(f->path, &ex, 1);
}

void t_fix_free(struct t_fix *f)
{
	uffdsnap_snap_free(f->s);
	uffdsnap_free(f->ctx);
	if (f->have_cb) {
		if (f->cb.fd >= 0)
			close(f->cb.fd);
		t_cb_destroy(&f->cb);
	}
	if (f->dir[0])
		t_rmdir(f->dir);
	if (f->ref)
		t_buf_free(f->ref, f->m.len);
	t_mem_free(&f->m);
}

void t_snapfile_new(struct t_snapfile *f, const char *name, size_t len, uint64_t seed, unsigned hole_every,
			unsigned zero_every)
{
	struct t_mem m;
	uffdsnap_t *ctx;

	t_memfd(&m, len);
	t_fill_mixed(m.addr, len, seed, hole_every, zero_every);
	f->want = t_mem_copy(&m);
	f->len = len;
	ctx = t_ctx_new(NULL);
	t_add(ctx, name, m.addr, len);
	t_tmpdir(f->dir);
	snprintf(f->path, sizeof(f->path), "%s/snap", f->dir);
	t_snap_file(ctx, f->path, NULL);
	uffdsnap_free(ctx);
	t_mem_free(&m);
}

void t_snapfile_free(struct t_snapfile *f)
{
	t_buf_free(f->want, f->len);
	t_rmdir(f->dir);
}

size_t t_snapfile_flipped(const struct t_snapfile *f, const char *name, char *path)
{
	uint8_t *bytes, *buf = t_buf_alloc(t_page);
	uffdsnap_reader_t *r;
	size_t len, p;

	snprintf(path, PATH_MAX + 16, "%s/%s", f->dir, name);
	bytes = t_slurp(f->path, &len);
	bytes[len / 2] ^= 0x40;
	t_write_file(path, bytes, len);
	free(bytes);
	r = t_reader(path);
	for (p = 0; p < f->len / t_page; p++)
		if (uffdsnap_reader_read(r, 0, p * t_page, buf, t_page))
			break;
	uffdsnap_reader_free(r);
	t_buf_free(buf, t_page);
	ck_assert_msg(p < f->len / t_page, "no page of %s fails to read", path);
	printf("  %s: flipped the byte at offset %zu: page %zu is lost\n", name, len / 2, p);
	return p;
}
