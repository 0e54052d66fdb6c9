/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Signals and odd programs:
 *  - SIGALRM storms: setitimer() at 100 us while writers are blocked in
 *    faults; the handler itself writes protected memory, and one writer
 *    stores through read(2) (kernel-mode faults, which must wait for the
 *    copy: no EFAULT). A signal makes the kernel abandon the fault, run the
 *    handler and retry the store, so the handler thread sees the same page
 *    fault again and again. The snapshot must stay exact, every writer must
 *    finish;
 *  - fork() + exec() during a snapshot: the exec'd child must not inherit
 *    the userfaultfd (nor any other descriptor of the library: eventfd,
 *    epoll, the backing file, the temporary snapshot file) -- checked through
 *    the child's /proc/PID/fd;
 *  - fork() without exec during a snapshot: the child's mapping is not
 *    registered, its store must not hang (docs/design.md: a blind spot);
 *  - the thread that calls uffdsnap_begin() writes protected memory right
 *    after it, on the main thread and on another thread;
 *  - a snapshot target that is a symlink someone planted: the file sink
 *    writes a new file (O_EXCL temporary, mode 0600) and renames it over the
 *    link; the file the link pointed to is never opened or changed.
 * The storm test uses ITIMER_REAL, so its watchdog is a thread, not alarm().
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* ---- a watchdog thread (alarm() is taken by the storm) ----------------------------- */

struct tdog {
	pthread_t t;
	unsigned seconds;
	const char *what;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool off;
};

static void *tdog_main(void *arg)
{
	struct tdog *d = arg;
	struct timespec ts;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += d->seconds;
	pthread_mutex_lock(&d->lock);
	while (!d->off && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&d->cv, &d->lock, &ts);
	if (!d->off) {
		fprintf(stderr, "\nWATCHDOG: %s did not finish in %u s\n", d->what, d->seconds);
		abort();
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

static void tdog_start(struct tdog *d, unsigned seconds, const char *what)
{
	sigset_t all, old;

	*d = (struct tdog){ .seconds = seconds, .what = what };
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cv, NULL);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ck_assert(pthread_create(&d->t, NULL, tdog_main, d) == 0);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void tdog_stop(struct tdog *d)
{
	pthread_mutex_lock(&d->lock);
	d->off = true;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->lock);
	pthread_join(d->t, NULL);
}

/* ---- writers ------------------------------------------------------------------------ */

struct sig_state {
	uint8_t *addr;
	size_t npages;
	_Atomic bool go;          /* writers write (after begin) */
	_Atomic bool handler_writes;
};

static struct sig_state *g_state;
static _Atomic unsigned long g_signals, g_signals_during;

static void on_alarm(int sig)
{
	int saved = errno;
	struct sig_state *st = g_state;
	unsigned long n = atomic_fetch_add(&g_signals, 1);

	(void)sig;
	if (st && atomic_load(&st->handler_writes)) {
		/* the handler stores into protected memory too: a fault inside a
		 * signal that interrupted a fault */
		__atomic_store_n(&st->addr[(n * 7919 % st->npages) * t_page + 64], (uint8_t)n, __ATOMIC_RELAXED);
		atomic_fetch_add(&g_signals_during, 1);
	}
	errno = saved;
}

static void storm_writer(struct t_writers *w, unsigned idx)
{
	struct sig_state *st = w->arg;
	uint64_t rng = 4242 + idx;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* only the writers take the storm */
	while (!atomic_load(&st->go) && !atomic_load(&w->stop))
		usleep(100);
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		uint64_t r = t_splitmix64(&rng);
		__atomic_store_n(&st->addr[(r % st->npages) * t_page + (r >> 54)], (uint8_t)r, __ATOMIC_RELAXED);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
}

/* The kernel stores for this one: read(2) from a pipe into protected pages,
 * under the same storm. The system call must wait for the copy, whatever
 * the signals: no EFAULT, no lost bytes. */
static _Atomic unsigned long k_efault, k_eintr, k_short, k_reads;

static void storm_kernel_writer(struct t_writers *w, unsigned idx)
{
	struct sig_state *st = w->arg;
	uint8_t buf[512];
	sigset_t set;
	int p[2];

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	ck_assert(pipe2(p, O_CLOEXEC) == 0);
	while (!atomic_load(&st->go) && !atomic_load(&w->stop))
		usleep(100);
	for (uint64_t i = 0; !atomic_load_explicit(&w->stop, memory_order_relaxed); i++) {
		uint8_t *dst = st->addr + (i * 17 % st->npages) * t_page + 1024;
		size_t got = 0;
		memset(buf, (int)(i & 0xff), sizeof(buf));
		while (write(p[1], buf, sizeof(buf)) < 0 && errno == EINTR)
			;
		while (got < sizeof(buf)) {
			ssize_t r = read(p[0], dst + got, sizeof(buf) - got);
			if (r < 0 && errno == EINTR) {
				atomic_fetch_add(&k_eintr, 1);
				continue;
			}
			if (r < 0 && errno == EFAULT) {
				atomic_fetch_add(&k_efault, 1); /* the kernel gave up on the fault */
				continue;
			}
			ck_assert_msg(r > 0, "read(2) into the region: %s", strerror(errno));
			if ((size_t)r < sizeof(buf) - got)
				atomic_fetch_add(&k_short, 1);
			got += (size_t)r;
		}
		ck_assert_msg(!memcmp(dst, buf, sizeof(buf)), "read(2) into the region lost bytes");
		atomic_fetch_add(&k_reads, 1);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
	close(p[0]);
	close(p[1]);
}

static void mixed_writer(struct t_writers *w, unsigned idx)
{
	if (idx == 3)
		storm_kernel_writer(w, idx);
	else
		storm_writer(w, idx);
}

static void block_sigalrm(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	ck_assert(pthread_sigmask(SIG_BLOCK, &set, NULL) == 0);
}

static void storm(bool restart, const char *label)
{
	const size_t len = 32 * MiB;
	const uffdsnap_opts_t o = t_opts(2 * MiB, 64 * KiB);
	struct t_fix f;
	struct t_writers w;
	struct sig_state st = { 0 };
	struct tdog dog;
	struct sigaction sa = { 0 };
	struct itimerval it = { { 0, 100 }, { 0, 100 } }, off = { 0 };
	uffdsnap_stats_t stats;
	unsigned long long before[64];
	uint8_t *mem;
	int r;

	tdog_start(&dog, 150, label);
	block_sigalrm(); /* main and the library's threads never take it */
	mem = t_fix_mem(&f, len);
	t_fill_mixed(mem, len, 11, 9, 13);
	f.ref = t_mem_copy(&f.m);
	st = (struct sig_state){ .addr = mem, .npages = len / t_page };
	g_state = &st;
	sa.sa_handler = on_alarm;
	sa.sa_flags = restart ? SA_RESTART : 0;
	sigemptyset(&sa.sa_mask);
	ck_assert(sigaction(SIGALRM, &sa, NULL) == 0);
	t_writers_start(&w, 4, mixed_writer, &st);
	ck_assert(setitimer(ITIMER_REAL, &it, NULL) == 0);

	t_fix_ctx(&f, "storm", &o);
	t_fix_cb(&f, NULL);
	atomic_store(&f.cb.sleep_us, 300); /* a slow sink: writers wait in faults for buffers */
	r = uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	atomic_store(&st.handler_writes, true);
	atomic_store(&st.go, true);
	r = uffdsnap_wait(f.s);
	atomic_store(&st.handler_writes, false);
	ck_assert_msg(r == 0, "%s: wait: %d (%s)", label, r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &stats);
	t_stats_print(label, &stats);
	t_assert_exactly_once(&stats);
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	/* the writers go on under the storm, then stop */
	for (unsigned i = 0; i < w.n; i++)
		before[i] = atomic_load(&w.progress[i]);
	/* (a generous deadline: on a loaded 2-CPU machine a writer can wait
	 * tens of ms for a CPU; a writer stuck in a fault never moves) */
	for (unsigned i = 0; i < w.n; i++) {
		uint64_t t0 = t_now_ns();
		while (atomic_load(&w.progress[i]) == before[i] && t_now_ns() - t0 < 10000000000ull)
			usleep(1000);
		ck_assert_msg(atomic_load(&w.progress[i]) > before[i], "%s: writer %u stuck after the snapshot", label, i);
	}
	t_writers_stop(&w, 10);
	ck_assert(setitimer(ITIMER_REAL, &off, NULL) == 0);
	printf("%s: %lu SIGALRMs, %lu of them during the snapshot (each storing into the region); faults %llu for "
	       "%llu pages copied for writers; fault_wait_max %.2f ms\n", label, atomic_load(&g_signals),
	       atomic_load(&g_signals_during), (unsigned long long)stats.faults,
	       (unsigned long long)stats.pages_fault, stats.fault_wait_max_ns / 1e6);
	printf("%s: kernel writer: %lu read(2)s into the region, %lu EINTR, %lu EFAULT, %lu short\n", label,
	       atomic_load(&k_reads), atomic_load(&k_eintr), atomic_load(&k_efault), atomic_load(&k_short));
	ck_assert_msg(atomic_load(&g_signals_during) >= 100, "%s: the storm did not hit the snapshot", label);
	ck_assert_msg(atomic_load(&k_efault) == 0, "%s: read(2) into protected memory failed with EFAULT %lu times "
		      "under the storm (it must wait for the copy)", label, atomic_load(&k_efault));
	ck_assert_uint_gt(atomic_load(&k_reads), 0);
	ck_assert_uint_gt(stats.pages_fault, 0);
	t_fix_check(&f);
	g_state = NULL;
	t_fix_free(&f);
	tdog_stop(&dog);
}

START_TEST(sig_alrm_storm) { storm(false, "SIGALRM storm, no SA_RESTART"); }
END_TEST
START_TEST(sig_alrm_storm_restart) { storm(true, "SIGALRM storm, SA_RESTART"); }
END_TEST

/* ---- fork and exec during a snapshot ---------------------------------------------------- */

/* Run `ls -l /proc/<child>/fd` in a forked and exec'd child; its output. */
static char *child_fds(void)
{
	static char out[16384];
	size_t n = 0;
	int p[2], status;
	pid_t pid;

	ck_assert(pipe2(p, O_CLOEXEC) == 0);
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		execl("/bin/sh", "sh", "-c", "ls -l /proc/$$/fd", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		ssize_t r = read(p[0], out + n, sizeof(out) - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	out[n] = '\0';
	close(p[0]);
	ck_assert(waitpid(pid, &status, 0) == pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "ls in the child failed: %s", out);
	return out;
}

/*
 * gated: a callback sink stuck at a gate until after the exec, so the
 * snapshot is certainly running (threads, userfaultfd, eventfd, epoll, the
 * backing file all open). Otherwise a file sink, whose temporary file is
 * checked too when the snapshot is still running at the exec (it normally is).
 */
static void fork_exec(bool gated)
{
	const size_t len = 32 * MiB;
	const uffdsnap_opts_t o = t_opts(2 * MiB, 64 * KiB);
	struct t_fix f;
	struct t_writers w;
	struct sig_state st;
	uffdsnap_stats_t stats;
	const char *bad[] = { "userfaultfd", "eventfd", "eventpoll", "memfd:", ".tmp.", "map_files" };
	char *fds;
	uint8_t *mem, *got;
	size_t glen;
	int r, status, running;
	bool tracked;
	size_t skip;
	pid_t pid;

	t_watchdog(120, "fork_exec");
	mem = t_fix_mem(&f, len);
	t_fill_random(mem, len, 5);
	f.ref = t_mem_copy(&f.m);
	/* the file sink's target, or where the callback's stream is put to be read */
	t_tmpdir(f.dir);
	snprintf(f.path, sizeof(f.path), "%s/snap", f.dir);
	t_fix_ctx(&f, "r", &o);
	t_fix_cb(&f, NULL);
	t_cb_gate(&f.cb, true);
	st = (struct sig_state){ .addr = mem, .npages = len / t_page };
	t_writers_start(&w, 2, storm_writer, &st);
	r = gated ? uffdsnap_begin(f.ctx, t_cb_sink(&f.cb), &f.s) : uffdsnap_begin_file(f.ctx, f.path, &f.s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	atomic_store(&st.go, true); /* writers start after the instant: ref is the instant */

	/* exec while the snapshot runs: nothing of the library crosses exec */
	fds = child_fds();
	running = !uffdsnap_done(f.s);
	printf("fork_exec (%s sink): the exec'd child's descriptors, snapshot %s:\n%s", gated ? "stuck callback" : "file",
	       running ? "still running" : "already finished", fds);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!strstr(fds, bad[i]), "a descriptor of the library (%s) leaked into an exec'd child:\n%s",
			      bad[i], fds);
	if (gated)
		ck_assert_msg(running, "the snapshot ended before the exec although its sink is stuck");
	else if (!running)
		t_skip("sig_fork_exec_file", "the file snapshot finished before the exec: its temporary file "
			   "was not there to check");

	/* fork without exec: with UFFD_FEATURE_EVENT_FORK the child's mapping
	 * stays tracked, so its store waits for the snapshot like ours and the
	 * snapshot keeps the page's pre-image; without it the child's store
	 * is invisible (a documented blind spot), so page 0 is not compared. */
	tracked = uffdsnap_features(f.ctx) & UFFD_FEATURE_EVENT_FORK;
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		alarm(30);
		mem[0] = 0xee;
		_exit(0);
	}
	t_cb_gate(&f.cb, false); /* a stuck sink would hold the child's store too */
	ck_assert(waitpid(pid, &status, 0) == pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child did not exit cleanly "
		      "(status 0x%x): its store to shared memory hung or crashed", status);

	r = uffdsnap_wait(f.s);
	ck_assert_msg(r == 0, "wait: %d (%s)", r, uffdsnap_snap_error(f.s));
	t_stats(f.s, &stats);
	t_stats_print("fork+exec", &stats);
	t_writers_stop(&w, 10);
	if (tracked && gated) /* (a file snapshot may end before either fork) */
		ck_assert_msg(stats.forks >= 2, "%" PRIu64 " forks followed; expected the exec'd and the writing child",
			      stats.forks);
	printf("  forked children followed: %" PRIu64 " (fork events %s)\n", stats.forks, tracked ? "on" : "off");
	if (gated)
		t_write_file(f.path, f.cb.mem, f.cb.mem_len);
	got = t_read_region(f.path, "r", &glen);
	ck_assert_uint_eq(glen, len);
	skip = tracked ? 0 : t_page;
	ck_assert_msg(!memcmp(got + skip, f.ref + skip, len - skip), "the snapshot differs from the instant%s",
		      tracked ? "" : " (outside page 0)");
	t_buf_free(got, glen);
	t_fix_free(&f);
	if (!tracked)
		t_skip(gated ? "sig_fork_exec" : "sig_fork_exec_file", "no UFFD_FEATURE_EVENT_FORK (needs "
			   "CAP_SYS_PTRACE): the store of a child forked during the snapshot was not checked");
}

START_TEST(sig_fork_exec) { fork_exec(true); }
END_TEST
START_TEST(sig_fork_exec_file) { fork_exec(false); }
END_TEST

/* ---- the thread that calls begin writes right after ------------------------------------ */

struct self_arg {
	struct t_fix *f;
	uffdsnap_stats_t stats;
	int r;
};

static void *begin_and_write(void *arg)
{
	struct self_arg *a = arg;
	struct t_mem *m = &a->f->m;
	uffdsnap_snap_t *s;

	a->r = uffdsnap_begin(a->f->ctx, t_cb_sink(&a->f->cb), &s);
	if (a->r)
		return NULL;
	/* every page, right away, from the last (the sweep starts at the
	 * first, on its own thread): each store waits for its page to be
	 * copied */
	for (size_t off = m->len; off > 0; off -= t_page)
		m->addr[off - t_page + 1] ^= 0xff;
	a->r = uffdsnap_wait(s);
	a->stats.size = sizeof(a->stats);
	uffdsnap_snap_stats(s, &a->stats);
	uffdsnap_snap_free(s);
	return NULL;
}

static void self_write(bool other_thread)
{
	const size_t len = 16 * MiB;
	const char *label = other_thread ? "begin + write on another thread" : "begin + write on the main thread";
	const uffdsnap_opts_t o = t_opts(1 * MiB, 64 * KiB); /* few buffers: the writer also waits for the sink */
	struct t_fix f;
	struct self_arg a = { .f = &f };
	uint8_t *mem;
	pthread_t t;

	t_watchdog(120, label);
	mem = t_fix_mem(&f, len);
	t_fill_random(mem, len, 17);
	f.ref = t_mem_copy(&f.m);
	t_fix_cb(&f, NULL);
	t_fix_ctx(&f, "r", &o);
	if (other_thread) {
		ck_assert(pthread_create(&t, NULL, begin_and_write, &a) == 0);
		ck_assert_msg(t_join_timeout(t, 60) == 0, "%s: the thread hangs", label);
	} else {
		begin_and_write(&a);
	}
	ck_assert_msg(a.r == 0, "%s: %d", label, a.r);
	t_stats_print(label, &a.stats);
	t_assert_exactly_once(&a.stats);
	ck_assert_uint_gt(a.stats.pages_fault, 0);
	ck_assert_int_eq(t_pagemap_protected(mem, len), 0);
	for (size_t off = 0; off < len; off += t_page) {
		uint8_t want = f.ref[off + 1] ^ 0xffu;
		t_assert_msg(mem[off + 1] == want, "%s: a store was lost at 0x%zx", label, off);
	}
	t_fix_check(&f);
	t_fix_free(&f);
}

START_TEST(sig_begin_then_write_main) { self_write(false); }
END_TEST
START_TEST(sig_begin_then_write_thread) { self_write(true); }
END_TEST

START_TEST(sec_symlink_target)
{
	const size_t len = 4 * MiB;
	struct t_fix f;
	struct stat st;
	char victim[PATH_MAX + 16];
	uint8_t *got;
	size_t glen;
	int fd;

	t_watchdog(60, "sec_symlink_target");
	t_fix_mem(&f, len);
	t_tmpdir(f.dir);
	snprintf(victim, sizeof(victim), "%s/victim", f.dir);
	snprintf(f.path, sizeof(f.path), "%s/snap", f.dir);
	fd = open(victim, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	ck_assert(fd >= 0 && write(fd, "precious", 8) == 8);
	close(fd);
	ck_assert(symlink(victim, f.path) == 0);
	t_fill_random(f.m.addr, len, 23);
	f.ref = t_mem_copy(&f.m);
	t_fix_ctx(&f, "r", NULL);
	/* the rule (lib/outfile.c): a symlink at the target is refused, neither
	 * followed nor replaced, before any file is created */
	ck_assert_int_eq(uffdsnap_begin_file(f.ctx, f.path, &f.s), -ELOOP);
	ck_assert_msg(strstr(uffdsnap_last_error(), "symbolic link"), "%s", uffdsnap_last_error());
	got = t_slurp(victim, &glen);
	ck_assert_msg(glen == 8 && !memcmp(got, "precious", 8), "the file behind the planted symlink was written");
	free(got);
	ck_assert(lstat(f.path, &st) == 0);
	ck_assert_msg(S_ISLNK(st.st_mode), "the planted symlink was replaced");
	ck_assert_int_eq(t_dir_entries(f.dir, true), 2);
	printf("sec_symlink_target: begin refused the link (-ELOOP); the link and the file it points to are "
	       "intact\n");
	t_fix_free(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("signals");
	TCase *tc = tcase_create("signals");

	t_test_require_uffd();
	tcase_set_timeout(tc, 170);
	tcase_add_test(tc, sig_alrm_storm);
	tcase_add_test(tc, sig_alrm_storm_restart);
	tcase_add_test(tc, sig_begin_then_write_main);
	tcase_add_test(tc, sig_begin_then_write_thread);
	tcase_add_test(tc, sec_symlink_target);
	suite_add_tcase(s, tc);
	/* may skip, each a meson test of its own: without fork events
	 * (signals-fork), and when the file snapshot ended before the exec
	 * (signals-exec-file: 32 MiB take ~30 ms, a fork and exec about as long) */
	tc = tcase_create("fork");
	tcase_set_tags(tc, "fork");
	tcase_set_timeout(tc, 170);
	tcase_add_test(tc, sig_fork_exec);
	suite_add_tcase(s, tc);
	tc = tcase_create("exec-file");
	tcase_set_tags(tc, "exec-file");
	tcase_set_timeout(tc, 170);
	tcase_add_test(tc, sig_fork_exec_file);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
