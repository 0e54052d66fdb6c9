/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fault injection (lib/inject.h; linked against libuffdsnap-inject.a, never
 * the installed library). For each injection point, N is swept over a whole
 * run (uffdsnap_new, add_region, begin, writers faulting, wait, snap_free,
 * free): call N of that point fails (or, for sink writes, is short). For
 * every N:
 *   - the run fails with a negative errno and a message, or succeeds, and it
 *     succeeds exactly when nothing was injected or the fault was a short
 *     write; a success is checked byte for byte with the reader, a failure
 *     leaves no file that verifies (file sink: no file at all);
 *   - afterwards no page is protected (pagemap bit 57), every writer makes
 *     progress and joins, the fd count and the thread count are back to
 *     their baseline;
 * and over the whole sweep the heap does not grow.
 * The same sweep runs over the reader (open, verify, read, extract).
 * (Cancel / snap_free / free fired from another thread: test-inject-kill.c.)
 *
 * The kernel side of a sink write is covered too: write(2)/writev(2) are
 * interposed for the fd of an fd sink to return EINTR or a short count at
 * call N; libuv must retry and the snapshot must succeed exactly.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "helpers.h"
#include "inject.h"

/* every N in the plain build; under the sanitizers every 3rd (ASan) or 16th
 * (TSan, several times slower) keeps the suite within CI's time. A strided
 * sweep starts at a random N below the stride (printed; USNAP_INJECT_FIRST
 * repeats it), so that successive runs cover every N. */
#if defined(__SANITIZE_THREAD__)
#define STEP 16
#elif T_SANITIZED
#define STEP 3
#else
#define STEP 1
#endif

/* ---- one injected run ------------------------------------------------------------- */

enum sink_kind { SINK_FILE, SINK_FD, SINK_CB };

struct run_result {
	int stage;          /* 0 new, 1 add_region, 2 sink, 3 begin, 4 wait */
	int err;            /* 0 or the negative errno */
	unsigned long fired, calls;
};

static const size_t run_len = 1 * MiB, run_len2 = 128 * KiB;

static void errno_ok(int err, const char *msg, const char *what)
{
	/* EFAULT: an UFFDIO_REGISTER failing with ENOMEM means "not mapped" */
	static const int ok[] = { ENOMEM, EAGAIN, EMFILE, EIO, ENOSPC, EPIPE, EINTR, EFAULT };
	bool found = false;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		found |= err == -ok[i];
	ck_assert_msg(found, "%s: failed with %d (%s), not an errno the injected fault explains: %s", what, err,
		      strerror(-err), msg);
	ck_assert_msg(msg && msg[0], "%s: failed with %d but no message says why", what, err);
}

/*
 * Run one snapshot of a 1 MiB memfd (holes, zero pages, data) with two
 * writers faulting, with `point` armed at n. The caller checks accounting.
 */
static struct run_result inject_run(enum usnap_inject_point point, unsigned long n, int err, int mode,
				    enum sink_kind sink, const char *what)
{
	struct run_result res = { 0 };
	struct t_mem m, m2;
	struct t_writers w = { 0 };
	struct t_span b;
	struct t_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx = NULL;
	uffdsnap_snap_t *s = NULL;
	uffdsnap_sink_t *k = NULL;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	uint8_t *ref, *ref2;
	int r, fd = -1;

	t_watchdog(30, what); /* per run: a hang names its N */
	t_memfd(&m, run_len);
	t_fill_mixed(m.addr, run_len, 77 + n, 5, 7);
	ref = t_mem_copy(&m);
	t_memfd(&m2, run_len2); /* a second region: begin arms two, and can fail between them */
	t_fill_random(m2.addr, run_len2, n);
	ref2 = t_mem_copy(&m2);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	t_cb_init(&cb, -1);
	cb.keep = true;
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16 * KiB;
	o.buffer_bytes = 256 * KiB;
	o.compress_threads = 2;
	if (sink == SINK_FILE && (point == USNAP_INJ_ALLOC || point == USNAP_INJ_SYS))
		o.flags |= UFFDSNAP_OPT_FSYNC; /* its path allocates too */

	usnap_inject_arm(point, n, err, mode);
	r = uffdsnap_new(&ctx, &o);
	if (r) {
		res.stage = 0;
		goto failed_early;
	}
	r = uffdsnap_add_region(ctx, "r", m.addr, run_len);
	if (r >= 0)
		r = uffdsnap_add_region(ctx, "s", m2.addr, run_len2);
	if (r < 0) {
		res.stage = 1;
		goto failed_early;
	}
	res.stage = 2;
	if (sink == SINK_FILE) {
		r = uffdsnap_sink_file(&k, path, 0);
	} else if (sink == SINK_FD) {
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		ck_assert(fd >= 0);
		r = uffdsnap_sink_fd(&k, fd);
	} else {
		r = uffdsnap_sink_callback(&k, t_cb_write, &cb);
	}
	if (r)
		goto failed_early;
	res.stage = 3;
	r = uffdsnap_begin(ctx, k, &s);
	b = (struct t_span){ m.addr, run_len / t_page };
	t_writers_start(&w, 2, t_span_writer, &b);
	if (r)
		goto failed_early;
	res.stage = 4;
	/* the thread that called begin writes protected memory right away: it
	 * must be released like any writer, whatever failed meanwhile */
	for (size_t off = 0; off < run_len; off += run_len / 16)
		__atomic_fetch_xor(&m.addr[off + 8], 0x5a, __ATOMIC_RELAXED);
	r = uffdsnap_wait(s);
	if (r)
		errno_ok(r, uffdsnap_snap_error(s), what);
	ck_assert_int_eq(uffdsnap_done(s), 1);
	goto done;

failed_early:
	errno_ok(r, uffdsnap_last_error(), what);
	ck_assert_msg(s == NULL, "%s: a failed begin returned a snapshot handle", what);
done:
	if (w.n)
		t_assert_released(&m, &w, what);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_inject_disarm();
	res.err = r < 0 ? r : 0;
	res.fired = usnap_inject_fired();
	res.calls = usnap_inject_calls(point);

	ck_assert_msg(t_pagemap_protected(m2.addr, run_len2) == 0, "%s: second region still protected", what);
	if (res.stage == 4 && !res.err) {
		struct t_expect e[2] = { { "r", ref, run_len }, { "s", ref2, run_len2 } };
		if (sink == SINK_CB)
			t_check_buffer(cb.mem, cb.mem_len, e, 2);
		else
			t_check_file(path, e, 2);
	} else if (sink == SINK_FILE) {
		ck_assert_msg(t_dir_entries(dir, true) == 0, "%s: files left behind by a failed snapshot", what);
	} else if (sink == SINK_FD) {
		ck_assert_msg(!t_file_verifies(path), "%s: the stream of a failed snapshot verifies", what);
	} else if (cb.mem_len) {
		FILE *f = fopen(path, "we");
		ck_assert(f && fwrite(cb.mem, 1, cb.mem_len, f) == cb.mem_len);
		fclose(f);
		ck_assert_msg(!t_file_verifies(path), "%s: the stream of a failed snapshot verifies", what);
	}
	if (fd >= 0)
		close(fd);
	t_rmdir(dir);
	t_cb_destroy(&cb);
	t_buf_free(ref, run_len);
	t_buf_free(ref2, run_len2);
	t_mem_free(&m);
	t_mem_free(&m2);
	return res;
}

/*
 * Sweep N = 1, 2, ... (stride `step`) until a run in which nothing fired.
 * `short_ok`: an injected fault may end in success (short writes).
 */
static void sweep(enum usnap_inject_point point, int err, int mode, enum sink_kind sink, const char *label)
{
	unsigned long n = 0, runs = 0, failed = 0, succeeded = 0, injected = 0, step = STEP,
		      first = getenv("USNAP_INJECT_FIRST") ? strtoul(getenv("USNAP_INJECT_FIRST"), NULL, 10)
							  : 1 + t_now_ns() / 1000 % step;
	/* USNAP_INJECT_PASSES=k repeats each sweep k times. By default 2 for
	 * the allocation and resource sweeps, whose second pass shows a heap that
	 * grows without leaking (a cache filled by every failure), and 1 for the
	 * others and under the sanitizers, where LeakSanitizer checks every byte
	 * of every failure path anyway */
	unsigned passes = getenv("USNAP_INJECT_PASSES") ? (unsigned)atoi(getenv("USNAP_INJECT_PASSES"))
			  : !T_SANITIZED && (point == USNAP_INJ_ALLOC || point == USNAP_INJ_SYS) ? 2 : 1;
	int fds0, thr0;
	size_t heap0 = 0, heap_end[64] = { 0 };
	uint64_t t0 = t_now_ns();
	bool short_ok = mode & USNAP_INJ_SHORT;
	char what[160];

	/* warm up (stdio, libuv and zstd internals allocate once) */
	usnap_inject_disarm();
	inject_run(point, 0, err, mode, sink, "warm-up");
	fds0 = t_fd_count();
	thr0 = (int)t_proc_status("Threads");
	for (unsigned pass = 0; pass < passes; pass++) {
		for (n = first;;) {
			struct run_result res;

			snprintf(what, sizeof(what), "%s: call %lu (pass %u)", label, n, pass + 1);
			res = inject_run(point, n, err, mode, sink, what);
			runs++;
			injected += res.fired;
			if (res.err)
				failed++;
			else
				succeeded++;
			if (res.fired && !short_ok)
				ck_assert_msg(res.err, "%s: the fault was injected (%lu) but the run reports success", what,
					      res.fired);
			if (!res.fired)
				ck_assert_msg(!res.err, "%s: nothing was injected but the run failed at stage %d: %d",
					      what, res.stage, res.err);
			if (t_fd_count() != fds0) {
				t_fd_list();
				ck_abort_msg("%s: %d fds open after the run, %d before the sweep", what, t_fd_count(), fds0);
			}
			ck_assert_msg((int)t_proc_status("Threads") == thr0, "%s: %d threads after the run, %d before", what,
				      (int)t_proc_status("Threads"), thr0);
			if (pass == 0 && n == first + 2 * step)
				heap0 = t_heap_used(); /* a few runs in: every cache is warm */
			if (!res.fired && n == first && first > 1) {
				n = first = 1; /* fewer calls than the random start: the first */
				continue;
			}
			if (!res.fired)
				break;
			ck_assert_msg(n < 100000, "%s: the sweep does not end", what);
			n += step;
		}
		heap_end[pass] = t_heap_used();
	}
	if (passes < 1 || passes > 64)
		ck_abort_msg("USNAP_INJECT_PASSES must be 1..64");
	if (!T_SANITIZED && passes > 1) {
		/* the same sweep again: whatever a run leaks, the next pass leaks again */
		ck_assert_msg(heap_end[passes - 1] <= heap_end[0] + 1 * KiB, "%s: the heap grew from %zu to %zu bytes "
			      "over %u more passes of the same sweep", label, heap_end[0], heap_end[passes - 1],
			      passes - 1);
		ck_assert_msg(heap_end[0] <= heap0 + 4 * KiB, "%s: heap grew from %zu to %zu bytes over the sweep",
			      label, heap0, heap_end[0]);
	}
	printf("%s: %u pass(es) of N = %lu..%lu step %lu: %lu runs, %lu faults injected, %lu runs failed cleanly, %lu "
	       "succeeded byte-exact; fds %d, threads %d, heap %zu after 3 runs, %zu after pass 1, %zu after pass %u; "
	       "%.1f s\n", label, passes, first, n, step, runs, injected, failed, succeeded, fds0, thr0, heap0, heap_end[0],
	       heap_end[passes - 1], passes, t_ms_since(t0) / 1000);
	ck_assert_uint_ge(failed, short_ok ? 0 : 1);
}

START_TEST(inject_alloc)
{
	t_watchdog(170, "inject_alloc");
	sweep(USNAP_INJ_ALLOC, 0, USNAP_INJ_FAIL, SINK_FILE, "alloc ENOMEM, file sink");
	sweep(USNAP_INJ_ALLOC, 0, USNAP_INJ_FAIL, SINK_CB, "alloc ENOMEM, callback sink");
}
END_TEST

START_TEST(inject_alloc_sticky)
{
	t_watchdog(170, "inject_alloc_sticky");
	sweep(USNAP_INJ_ALLOC, 0, USNAP_INJ_FAIL | USNAP_INJ_STICKY, SINK_FD, "alloc ENOMEM from N on, fd sink");
}
END_TEST

START_TEST(inject_sys)
{
	t_watchdog(170, "inject_sys");
	sweep(USNAP_INJ_SYS, 0, USNAP_INJ_FAIL, SINK_FILE, "threads/eventfd/mkostemp, file sink");
	sweep(USNAP_INJ_SYS, 0, USNAP_INJ_FAIL, SINK_CB, "threads/eventfd, callback sink");
}
END_TEST

START_TEST(inject_ioctl)
{
	t_watchdog(170, "inject_ioctl");
	sweep(USNAP_INJ_IOCTL, 0, USNAP_INJ_FAIL, SINK_CB, "uffd ioctl ENOMEM, callback sink");
	sweep(USNAP_INJ_IOCTL, ENOMEM, USNAP_INJ_FAIL, SINK_FD, "uffd ioctl ENOMEM, fd sink");
	sweep(USNAP_INJ_IOCTL, 0, USNAP_INJ_FAIL | USNAP_INJ_STICKY, SINK_FILE, "uffd ioctl ENOMEM from N on, file sink");
}
END_TEST

START_TEST(inject_write_fail)
{
	t_watchdog(170, "inject_write_fail");
	sweep(USNAP_INJ_WRITE, ENOSPC, USNAP_INJ_FAIL, SINK_FILE, "sink write ENOSPC, file sink");
	sweep(USNAP_INJ_WRITE, EPIPE, USNAP_INJ_FAIL, SINK_FD, "sink write EPIPE, fd sink");
	sweep(USNAP_INJ_WRITE, EINTR, USNAP_INJ_FAIL, SINK_CB, "callback returns -EINTR");
}
END_TEST

START_TEST(inject_write_short)
{
	t_watchdog(170, "inject_write_short");
	sweep(USNAP_INJ_WRITE, 0, USNAP_INJ_SHORT, SINK_FILE, "short sink write, file sink");
	sweep(USNAP_INJ_WRITE, 0, USNAP_INJ_SHORT, SINK_FD, "short sink write, fd sink");
	sweep(USNAP_INJ_WRITE, 0, USNAP_INJ_SHORT, SINK_CB, "short sink write, callback sink");
}
END_TEST

/* ---- the kernel's side: write(2)/writev(2) of an fd sink ------------------------------- */

static _Atomic int sys_fd = -1;          /* the fd whose writes are interposed */
static _Atomic unsigned long sys_calls, sys_target, sys_fired;
static _Atomic int sys_mode;             /* 0 EINTR, 1 short */

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

/* true: fail this call with EINTR (*short_len = 0) or shorten it to *short_len */
static bool sys_hit(int fd, size_t len, size_t *short_len)
{
	unsigned long c;

	if (fd != atomic_load(&sys_fd))
		return false;
	c = atomic_fetch_add(&sys_calls, 1) + 1;
	if (c != atomic_load(&sys_target) || (atomic_load(&sys_mode) == 1 && len < 2))
		return false;
	atomic_fetch_add(&sys_fired, 1);
	*short_len = atomic_load(&sys_mode) == 1 ? (len + 1) / 2 : 0;
	return true;
}

/* Interposed for the whole process (libuv calls these); every other fd goes
 * to the next definition (libc, or a sanitizer's interceptor). */
__attribute__((visibility("default"))) ssize_t write(int fd, const void *buf, size_t len)
{
	static write_fn next_;
	write_fn next = __atomic_load_n(&next_, __ATOMIC_RELAXED);
	size_t sl;

	if (!next)
		__atomic_store_n(&next_, next = (write_fn)dlsym(RTLD_NEXT, "write"), __ATOMIC_RELAXED);
	if (sys_hit(fd, len, &sl)) {
		if (!sl)
			return errno = EINTR, -1;
		len = sl;
	}
	return next(fd, buf, len);
}

__attribute__((visibility("default"))) ssize_t writev(int fd, const struct iovec *iov, int n)
{
	static writev_fn next_;
	writev_fn next = __atomic_load_n(&next_, __ATOMIC_RELAXED);
	struct iovec cut[64];
	size_t total = 0, sl;

	if (!next)
		__atomic_store_n(&next_, next = (writev_fn)dlsym(RTLD_NEXT, "writev"), __ATOMIC_RELAXED);
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (n <= 64 && sys_hit(fd, total, &sl)) {
		int k = 0;
		if (!sl)
			return errno = EINTR, -1;
		for (; k < n && sl; k++) {
			cut[k] = iov[k];
			if (cut[k].iov_len > sl)
				cut[k].iov_len = sl;
			sl -= cut[k].iov_len;
		}
		return next(fd, cut, k);
	}
	return next(fd, iov, n);
}

static void sys_sweep(int mode, const char *label)
{
	unsigned long n, runs = 0;
	int fds0;
	uint64_t t0 = t_now_ns();

	fds0 = -1; /* taken after the first run: libuv opens its signal pipe once per process */
	for (n = 1;; n += STEP) {
		struct t_mem m;
		struct t_writers w = { 0 };
		struct t_span b;
		uffdsnap_opts_t o;
		uffdsnap_t *ctx;
		uffdsnap_snap_t *s;
		uffdsnap_sink_t *k;
		char dir[PATH_MAX], path[PATH_MAX + 16];
		struct t_expect e;
		uint8_t *ref;
		int fd, r;

		t_memfd(&m, run_len);
		t_fill_mixed(m.addr, run_len, 5 + n, 5, 7);
		ref = t_mem_copy(&m);
		t_tmpdir(dir);
		snprintf(path, sizeof(path), "%s/snap", dir);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		ck_assert(fd >= 0);
		uffdsnap_opts_init(&o);
		o.chunk_bytes = 16 * KiB;
		o.buffer_bytes = 256 * KiB;
		ctx = t_ctx_new(&o);
		t_add(ctx, "r", m.addr, run_len);
		ck_assert_int_eq(uffdsnap_sink_fd(&k, fd), 0);
		atomic_store(&sys_calls, 0);
		atomic_store(&sys_fired, 0);
		atomic_store(&sys_target, n);
		atomic_store(&sys_mode, mode);
		atomic_store(&sys_fd, fd);
		r = uffdsnap_begin(ctx, k, &s);
		ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
		b = (struct t_span){ m.addr, run_len / t_page };
		t_writers_start(&w, 2, t_span_writer, &b);
		r = uffdsnap_wait(s);
		atomic_store(&sys_fd, -1);
		ck_assert_msg(r == 0, "%s at write %lu: the snapshot failed: %d (%s)", label, n, r,
			      uffdsnap_snap_error(s));
		t_assert_released(&m, &w, label);
		uffdsnap_snap_free(s);
		uffdsnap_free(ctx);
		close(fd);
		e = (struct t_expect){ "r", ref, run_len };
		t_check_file(path, &e, 1);
		t_rmdir(dir);
		t_buf_free(ref, run_len);
		t_mem_free(&m);
		runs++;
		if (fds0 < 0)
			fds0 = t_fd_count();
		ck_assert_int_eq(t_fd_count(), fds0);
		if (!atomic_load(&sys_fired))
			break;
	}
	printf("%s: %lu runs, every one succeeded byte-exact (%.1f s)\n", label, runs, t_ms_since(t0) / 1000);
	ck_assert_uint_ge(runs, 2);
}

START_TEST(inject_syscall_eintr)
{
	t_watchdog(170, "inject_syscall_eintr");
	sys_sweep(0, "write(2) -> EINTR at call N, fd sink");
}
END_TEST

START_TEST(inject_syscall_short)
{
	t_watchdog(170, "inject_syscall_short");
	sys_sweep(1, "write(2) short at call N, fd sink");
}
END_TEST

/* ---- the reader under allocation failure ------------------------------------------- */

START_TEST(inject_reader_alloc)
{
	const size_t len = 2 * MiB;
	struct t_mem m;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	char dir[PATH_MAX], path[PATH_MAX + 16], out[PATH_MAX + 16];
	uint8_t *ref, *buf;
	unsigned long n, failed = 0;
	int fds0;
	size_t heap0 = 0;

	t_watchdog(170, "inject_reader_alloc");
	t_memfd(&m, len);
	t_fill_mixed(m.addr, len, 3, 5, 7);
	ref = t_mem_copy(&m);
	buf = t_buf_alloc(len);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	snprintf(out, sizeof(out), "%s/out", dir);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16 * KiB;
	o.buffer_bytes = 256 * KiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "r", m.addr, len);
	ck_assert_int_eq(uffdsnap_begin_file(ctx, path, &s), 0);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);

	fds0 = t_fd_count();
	for (n = 0;; n++) {
		uffdsnap_reader_t *r = NULL;
		int e, ofd, stage = 0;

		usnap_inject_arm(USNAP_INJ_ALLOC, n, 0, USNAP_INJ_FAIL);
		e = uffdsnap_reader_open(&r, path);
		if (!e && ++stage && !(e = uffdsnap_reader_verify(r)) && ++stage &&
		    !(e = uffdsnap_reader_read(r, 0, 0, buf, len)) && ++stage) {
			ofd = open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			ck_assert(ofd >= 0);
			e = uffdsnap_reader_extract_fd(r, 0, ofd);
			close(ofd);
		}
		usnap_inject_disarm();
		if (e) {
			const char *msg = stage ? uffdsnap_reader_error(r) : uffdsnap_last_error();
			ck_assert_msg(e == -ENOMEM && msg[0], "reader, allocation %lu failing: %d (%s), expected -ENOMEM "
				      "with a message", n, e, msg);
			ck_assert_uint_ge(usnap_inject_fired(), 1);
			failed++;
		} else {
			size_t olen;
			uint8_t *o2 = t_slurp(out, &olen);
			ck_assert_msg(!memcmp(buf, ref, len), "reader: read differs with allocation %lu failing", n);
			ck_assert(olen == len && !memcmp(o2, ref, len));
			free(o2);
		}
		uffdsnap_reader_free(r);
		ck_assert_int_eq(t_fd_count(), fds0);
		if (n == 3)
			heap0 = t_heap_used();
		if (n && !usnap_inject_fired())
			break;
	}
	if (!T_SANITIZED)
		ck_assert_msg(t_heap_used() <= heap0 + 4 * KiB, "reader: heap grew from %zu to %zu", heap0, t_heap_used());
	printf("reader alloc sweep: %lu allocations, each failing once: %lu runs failed with -ENOMEM, the rest read "
	       "exactly; fds %d; heap %zu -> %zu\n", n - 1, failed, fds0, heap0, t_heap_used());
	ck_assert_uint_ge(failed, 5);
	t_rmdir(dir);
	t_buf_free(buf, len);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

int main(int argc, char **argv)
{
	const TTest *const cases[] = { inject_alloc, inject_alloc_sticky, inject_sys, inject_ioctl, inject_write_fail,
				       inject_write_short, inject_syscall_eintr, inject_syscall_short,
				       inject_reader_alloc, NULL };

	(void)argc;
	t_exec_without_tcache(argv); /* the heap checks are exact without it */
	t_test_require_uffd();
	return t_run_cases("inject", 180, cases);
}
