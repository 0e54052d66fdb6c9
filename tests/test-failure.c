/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 7: every failure (disk full, sink error, snap_free / free / cancel
 * mid-snapshot) drops all protection, wakes every blocked writer, returns a
 * negative errno from wait, and leaves no file that passes verify (nor a
 * temporary file) behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

struct rw_state {
	uint8_t *addr;
	size_t first_page, npages;
};

/* Writes random pages of [first_page, first_page + npages) until stopped. */
static void rw_writer(struct t_writers *w, unsigned idx)
{
	struct rw_state *b = w->arg;
	uint64_t rng = 777 + idx;

	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		uint64_t r = t_splitmix64(&rng);
		__atomic_store_n(&b->addr[(b->first_page + r % b->npages) * t_page + (r >> 52)], (uint8_t)r, __ATOMIC_RELAXED);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
}

/* After a failed wait: nothing protected, every writer still makes progress
 * and stops when told. */
static void assert_released(struct t_mem *m, struct t_writers *w, const char *what)
{
	t_assert_released(m, w, what);
	ck_assert_int_eq(t_pagemap_protected(m->addr, m->len), 0);
}

/* A memfd of len random bytes (seed) that f's context holds as "r", and two
 * writers storing to all of it through b. */
static void setup(struct t_fix *f, size_t len, uint64_t seed, struct t_writers *w, struct rw_state *b)
{
	t_fix_mem(f, len);
	t_fill_random(f->m.addr, len, seed);
	t_fix_ctx(f, "r", NULL);
	*b = (struct rw_state){ f->m.addr, 0, len / t_page };
	t_writers_start(w, 2, rw_writer, b);
}

static void assert_failed(uffdsnap_snap_t *s, int r, int want, const char *what)
{
	uffdsnap_stats_t st;

	t_stats(s, &st);
	t_stats_print(what, &st);
	printf("  %s: wait -> %d (%s): %s\n", what, r, uffdsnap_strerror(r), uffdsnap_snap_error(s));
	ck_assert_msg(r == want, "%s: wait returned %d (%s), expected %d", what, r, uffdsnap_snap_error(s), want);
	ck_assert_msg(uffdsnap_snap_error(s)[0], "%s: no uffdsnap_snap_error text", what);
	ck_assert_int_eq(st.state, UFFDSNAP_STATE_FAILED);
	ck_assert_int_eq(st.error, want);
	ck_assert_int_eq(uffdsnap_done(s), 1);
	ck_assert_int_eq(uffdsnap_wait(s), want); /* again: same answer */
}

/* (a) disk full: a 64 MiB random region into a 4 MiB tmpfs. */
START_TEST(failure_enospc)
{
	struct t_fix f;
	struct t_writers w;
	struct rw_state b;
	char mnt[PATH_MAX], path[PATH_MAX + 16];
	int r;

	t_watchdog(120, "failure_enospc");
	t_tmpfs_mount(mnt, 4 * MiB);
	snprintf(path, sizeof(path), "%s/snap", mnt);
	setup(&f, 64 * MiB, 9, &w, &b);
	ck_assert(t_writers_wait_progress(&w, 1000, 10));
	r = uffdsnap_begin_file(f.ctx, path, &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	r = uffdsnap_wait(f.s);
	assert_failed(f.s, r, -ENOSPC, "ENOSPC");
	assert_released(&f.m, &w, "ENOSPC");
	ck_assert_msg(access(path, F_OK) != 0, "the target %s exists after a failed snapshot", path);
	ck_assert_msg(t_dir_entries(mnt, true) == 0, "files left in %s after a failed snapshot", mnt);
	t_fix_free(&f);
	t_tmpfs_umount(mnt);
}
END_TEST

/* (b) an fd sink whose reader went away. */
static void closed_pipe(bool ignore_sigpipe)
{
	struct t_fix f;
	struct t_writers w;
	struct rw_state b;
	uffdsnap_sink_t *k;
	int r, p[2];

	t_watchdog(60, "failure closed pipe");
	if (ignore_sigpipe)
		signal(SIGPIPE, SIG_IGN);
	ck_assert_int_eq(pipe(p), 0);
	close(p[0]);
	ck_assert_int_eq(uffdsnap_sink_fd(&k, p[1]), 0);
	setup(&f, 32 * MiB, 19, &w, &b);
	r = uffdsnap_begin(f.ctx, k, &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	r = uffdsnap_wait(f.s);
	assert_failed(f.s, r, -EPIPE, ignore_sigpipe ? "EPIPE (SIGPIPE ignored)" : "EPIPE (SIGPIPE default)");
	assert_released(&f.m, &w, "EPIPE");
	ck_assert_msg(fcntl(p[1], F_GETFD) >= 0, "the fd sink closed the caller's fd");
	close(p[1]);
	t_fix_free(&f);
}

START_TEST(failure_epipe) { closed_pipe(true); }
END_TEST
/* The library must turn a vanished reader into EPIPE without a SIGPIPE that
 * kills a program that did not ignore it. */
START_TEST(failure_epipe_sigpipe_default) { closed_pipe(false); }
END_TEST

/* (c) a callback sink failing at call N. */
START_TEST(failure_callback_eio)
{
	struct t_fix f;
	struct t_writers w;
	struct rw_state b;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	int r;

	t_watchdog(60, "failure_callback_eio");
	setup(&f, 32 * MiB, 29, &w, &b);
	t_fix_cb(&f, NULL);
	f.cb.fail_at = 5;
	f.cb.fail_err = -EIO;
	ck_assert_int_eq(uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s), 0);
	r = uffdsnap_wait(f.s);
	assert_failed(f.s, r, -EIO, "callback -EIO at call 5");
	assert_released(&f.m, &w, "callback -EIO");
	printf("  callback calls: %lu, bytes kept %zu\n", atomic_load(&f.cb.calls), f.cb.mem_len);
	ck_assert_uint_ge(atomic_load(&f.cb.calls), 5);
	/* what did reach the sink must not pass for a snapshot */
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/partial", dir);
	t_write_file(path, f.cb.mem, f.cb.mem_len);
	ck_assert_msg(!t_file_verifies(path), "the stream of a failed snapshot passes verify");
	t_rmdir(dir);
	t_fix_free(&f);
}
END_TEST

/* (d)(e)(f): writers really blocked in faults (sink shut, buffer full), then
 * the snapshot is ended by snap_free / ctx free / cancel. */

struct killer {
	enum t_end how;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
};

static void *kill_it(void *arg)
{
	struct killer *k = arg;

	t_end_snapshot(k->how, k->ctx, k->s);
	return NULL;
}

static void blocked_writers(enum t_end how)
{
	static const char *names[] = { [T_END_SNAP_FREE] = "snap_free mid-snapshot",
				       [T_END_CTX_FREE] = "uffdsnap_free(ctx) mid-snapshot", [T_END_CANCEL] = "cancel" };
	const size_t len = 64 * MiB;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_fix f;
	struct t_writers w;
	struct rw_state b;
	struct killer k;
	uffdsnap_stats_t st;
	unsigned long long p1[4];
	pthread_t t;
	uint8_t *mem;
	int r;

	t_watchdog(90, names[how]);
	mem = t_fix_mem(&f, len);
	t_fill_random(mem, len, 39);
	t_fix_ctx(&f, "r", &o);
	t_fix_cb(&f, "partial");
	t_cb_gate(&f.cb, true);
	ck_assert_int_eq(uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s), 0);
	ck_assert(t_cb_wait_blocked(&f.cb, 10));
	b = (struct rw_state){ mem, len / t_page / 2, len / t_page / 2 }; /* far from the sweep */
	t_writers_start(&w, 3, rw_writer, &b);
	usleep(300 * 1000);
	for (unsigned i = 0; i < 3; i++)
		p1[i] = atomic_load(&w.progress[i]);
	usleep(200 * 1000);
	t_stats(f.s, &st);
	t_stats_print(names[how], &st);
	for (unsigned i = 0; i < 3; i++)
		ck_assert_msg(atomic_load(&w.progress[i]) == p1[i], "writer %u is not blocked (%llu -> %llu writes)",
			      i, p1[i], atomic_load(&w.progress[i]));
	ck_assert_uint_ge(st.faults, 1);
	ck_assert_int_gt(t_pagemap_protected(mem, len), 0);

	k = (struct killer){ how, f.ctx, f.s };
	ck_assert_int_eq(pthread_create(&t, NULL, kill_it, &k), 0);
	/* the sink is still shut: the writers must be released anyway */
	atomic_store(&w.stop, true);
	for (unsigned i = 0; i < 3; i++) {
		r = t_join_timeout(w.tid[i], 10);
		ck_assert_msg(r == 0, "%s: writer %u still blocked 10 s later, while a sink call is in progress",
			      names[how], i);
	}
	w.n = 0;
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	printf("%s: %d writers released with the sink still blocked\n", names[how], 3);
	t_cb_gate(&f.cb, false);
	ck_assert_msg(t_join_timeout(t, 20) == 0, "%s did not return after the sink was released", names[how]);
	if (how != T_END_SNAP_FREE) {
		r = uffdsnap_wait(f.s);
		assert_failed(f.s, r, -ECANCELED, names[how]);
		uffdsnap_snap_free(f.s);
	}
	if (how != T_END_CTX_FREE)
		uffdsnap_free(f.ctx);
	f.s = NULL;
	f.ctx = NULL;
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	mem[len - 1]++; /* and it stays writable */
	ck_assert_msg(!t_file_verifies(f.path), "%s: the partial stream passes verify", names[how]);
	t_fix_free(&f);
}

START_TEST(failure_snap_free_mid_snapshot) { blocked_writers(T_END_SNAP_FREE); }
END_TEST
START_TEST(failure_ctx_free_mid_snapshot) { blocked_writers(T_END_CTX_FREE); }
END_TEST
START_TEST(failure_cancel_blocked_writers) { blocked_writers(T_END_CANCEL); }
END_TEST

/* (f') cancel of a file-sink snapshot: no target, no temporary file. */
/* Reads uffdsnap_snap_error() while the snapshot fails. The failing thread
 * sets err first and writes the message after, so a read in between could
 * return half a message, a data race the TSan lane runs this test for. */
struct error_poll {
	uffdsnap_snap_t *s;
	_Atomic bool stop;
	unsigned long reads;
	char last[512];
};

static void *poll_error(void *arg)
{
	struct error_poll *p = arg;

	/* at least once: a poller the loaded machine starts late still reads
	 * the final message */
	do {
		snprintf(p->last, sizeof(p->last), "%s", uffdsnap_snap_error(p->s));
		p->reads++;
	} while (!atomic_load(&p->stop));
	return NULL;
}

START_TEST(failure_cancel_file)
{
	struct error_poll poll = { 0 };
	pthread_t poller;
	struct t_fix f;
	struct t_writers w;
	struct rw_state b;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	int r;

	t_watchdog(60, "failure_cancel_file");
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	setup(&f, 128 * MiB, 49, &w, &b);
	ck_assert_int_eq(uffdsnap_begin_file(f.ctx, path, &f.s), 0);
	ck_assert_msg(t_dir_entries(dir, true) == 1, "no temporary file while the snapshot runs");
	ck_assert_msg(access(path, F_OK) != 0, "the target exists before the snapshot finished");
	poll.s = f.s;
	ck_assert_int_eq(pthread_create(&poller, NULL, poll_error, &poll), 0);
	uffdsnap_cancel(f.s);
	uffdsnap_cancel(f.s); /* twice is harmless */
	r = uffdsnap_wait(f.s);
	atomic_store(&poll.stop, true);
	ck_assert_int_eq(t_join_timeout(poller, 10), 0);
	printf("failure_cancel_file: %lu reads of uffdsnap_snap_error during the failure, the last \"%s\"\n",
	       poll.reads, poll.last);
	ck_assert_str_eq(poll.last, "cancelled");
	assert_failed(f.s, r, -ECANCELED, "cancel (file sink)");
	assert_released(&f.m, &w, "cancel (file sink)");
	ck_assert_msg(access(path, F_OK) != 0, "the target exists after cancel");
	ck_assert_msg(t_dir_entries(dir, true) == 0, "files left in %s after cancel", dir);
	uffdsnap_cancel(f.s); /* after the end: no effect */
	ck_assert_int_eq(uffdsnap_wait(f.s), -ECANCELED);
	uffdsnap_snap_free(f.s);
	f.s = NULL;
	/* the context is usable again */
	t_snap_file(f.ctx, path, NULL);
	ck_assert(t_file_verifies(path));
	t_fix_free(&f);
	t_rmdir(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("failure");
	TCase *tc = tcase_create("failure");

	t_test_require_uffd();
	t_test_require_root(); /* tmpfs mount for ENOSPC */
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, failure_enospc);
	tcase_add_test(tc, failure_epipe);
	tcase_add_test(tc, failure_epipe_sigpipe_default);
	tcase_add_test(tc, failure_callback_eio);
	tcase_add_test(tc, failure_snap_free_mid_snapshot);
	tcase_add_test(tc, failure_ctx_free_mid_snapshot);
	tcase_add_test(tc, failure_cancel_blocked_writers);
	tcase_add_test(tc, failure_cancel_file);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
