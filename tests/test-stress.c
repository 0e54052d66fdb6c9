/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Stress: back-to-back snapshots for USNAP_STRESS_SECONDS (default 10, 5
 * under sanitizers) of two regions, a 64 MiB memfd ("shm") and a 32 MiB
 * MAP_PRIVATE|MAP_ANONYMOUS region ("heap"), while everything below runs at
 * once and never pauses for a snapshot:
 *
 *   - 4 writer threads (two flat out, one moderate, one slow so that holes
 *     stay around for most of the run), each owning its own pages in both
 *     regions;
 *   - a zapper: MADV_DONTNEED on random shm pages (the data stays in the
 *     file; protection must survive on PTE markers);
 *   - a pager-out: MADV_PAGEOUT of random ranges of both regions onto a zram
 *     swap device that main() creates and removes (skipped, with the reason,
 *     without root or /sys/class/zram-control);
 *   - a forker: children (one at a time, a few ms each) that write their own
 *     shm pages, tracked through fork events, and scribble on their private
 *     copies of the writers' heap pages, which must never show up in ours;
 *   - an mremapper: moves the shm region to fresh addresses while snapshots
 *     run (everyone uses the regions through pointers it updates under a
 *     writer-preferring rwlock).
 *
 * The oracle needs no pause and no reference copy. Every owner (writer,
 * or "the children", one logical writer across processes) makes updates
 * n = 1, 2, 3, ... in program order; update n rewrites all words of page
 * j(n) = ((n - 1) * stride) mod M of its M pages, in increasing order, word
 * i being word_of(region, page, i, n) = n << 32 | hash(region, page, i, n),
 * and publishes n (release) when done. So an image of the owner's pages is
 * fully determined by the highest update N that shows in it: every page holds
 * the last update to it with n <= N, completely, except page j(N), whose
 * words 0..k-1 may hold N and the rest the update before (the instant may
 * fall in the middle of a page update). Anything else (a torn word, a word of
 * another page or time, a page older or newer than the rest) is a violation.
 * N must also lie in [published before begin, published after begin + 1].
 * Every word is checked, in every snapshot.
 *
 * What the program may not do, and the test therefore does not do (limits
 * of the library; the first two are not documented anywhere yet):
 *   - mremap a region while no snapshot is running: the context would then
 *     lose it (begin: -EFAULT; there is no call to move a region). The
 *     mremapper moves regions only in a window that main opens after begin
 *     returned, with the sink slowed so the snapshot cannot end first.
 *   - fork more than 63 children during one snapshot (-EMFILE): at most
 *     USNAP_STRESS_FORK_CAP (32) are forked per snapshot.
 *   - write shared memory from a child forked before begin (a documented
 *     blind spot): children only live between two begins (a mutex is held
 *     across begin).
 *   - zap private pages: a page not copied yet fails the snapshot with
 *     -ESTALE by design. A short phase at the end provokes exactly that
 *     (expected and counted) and zaps a copied page (must succeed).
 *
 * This test found two hangs, both fixed: glibc's fork() holds the malloc
 * and stdio locks while the kernel waits for the handler to read the FORK
 * event, and the handler took those locks; and a private region moved while
 * the sweep read it failed the snapshot and stayed registered at its new
 * address. The forker therefore uses glibc's fork(), and the mremapper moves
 * both regions.
 * Each disturber can be turned off for bisecting: USNAP_STRESS_NO_ZAPPER,
 * _NO_PAGER, _NO_FORKER, _NO_MREMAP.
 *
 * Also checked after every snapshot: wait() == 0, every page counted once,
 * no page left protected (pagemap bit 57) in either region; at the end: no
 * thread hung (watchdog, joins with timeouts), open fds and threads no more
 * than after the first snapshot, RSS within a loose bound.
 *
 * The parts: stress-disturb.c (the disturbers, the zram device),
 * stress-oracle.c (the owners' updates, the oracle, the verifier thread),
 * here one snapshot and the test; stress.h what they share.
 */
#include "stress.h"

const char *const reg_name[NREG] = { "shm", "heap" };
const size_t reg_len[NREG] = { SHM_LEN, PRIV_LEN };

/* ---- shared state ---------------------------------------------------------------------- */

struct stress T;

void sfail(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&T.fail_lock);
	if (!T.failed) {
		va_start(ap, fmt);
		vsnprintf(T.fail, sizeof(T.fail), fmt, ap);
		va_end(ap);
		fprintf(stderr, "STRESS FAILURE: %s\n", T.fail);
		atomic_store(&T.failed, true);
	}
	pthread_mutex_unlock(&T.fail_lock);
	atomic_store(&T.stop, true);
}

static double secs(void)
{
	return (double)(t_now_ns() - T.t0) / 1e9;
}

void nap_us(unsigned us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000 };

	nanosleep(&ts, NULL);
}

/* ---- one snapshot --------------------------------------------------------------------------- */

static void read_done(uint64_t *v)
{
	for (unsigned o = 0; o < NOWNERS; o++)
		v[o] = atomic_load_explicit(T.own[o].done, memory_order_acquire);
}

static long protected_now(void)
{
	long n;

	pthread_rwlock_rdlock(&T.maplock);
	n = t_pagemap_protected(T.base[R_SHM], SHM_LEN) + t_pagemap_protected(T.base[R_PRIV], PRIV_LEN);
	pthread_rwlock_unlock(&T.maplock);
	return n;
}

enum zap_mode { ZAP_NONE, ZAP_UNCOPIED, ZAP_COPIED };

/*
 * Take snapshot idx into dir; returns wait()'s result. `zap`: the zap phase
 * (the sink held shut meanwhile, so the sweep stalls early).
 */
static int one_snapshot(unsigned idx, const char *dir, enum zap_mode zap, struct snapjob *j)
{
	const bool file_sink = zap == ZAP_NONE && idx % 3 == 2;
	const bool window = zap == ZAP_NONE && !file_sink && T.mremapper;
	struct t_cb cb;
	uffdsnap_snap_t *s = NULL;
	uffdsnap_stats_t st = { .size = sizeof(st) };
	int r, fd = -1;

	memset(j, 0, sizeof(*j));
	j->idx = idx;
	j->sink = file_sink ? "file" : "cb";
	snprintf(j->path, sizeof(j->path), "%s/snap-%u", dir, idx);
	t_cb_init(&cb, -1);
	if (!file_sink) {
		fd = open(j->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		ck_assert_msg(fd >= 0, "open %s: %s", j->path, strerror(errno));
		cb.fd = fd;
		/* the mremap window and the copied-page zap: slowed, so the
		 * snapshot runs for seconds; the uncopied-page zap: shut, so
		 * the sweep stalls after a few chunks */
		if (window || zap == ZAP_COPIED)
			atomic_store(&cb.sleep_us, THROTTLE_US);
		if (zap == ZAP_UNCOPIED)
			t_cb_gate(&cb, true);
	}

	/* no child alive and none forked while begin runs (see the header) */
	pthread_mutex_lock(&T.child_mu);
	read_done(j->lo);
	if (file_sink) {
		r = uffdsnap_begin_file(T.ctx, j->path, &s);
	} else {
		r = uffdsnap_begin(T.ctx, t_cb_sink(&cb), &s);
	}
	read_done(j->hi);
	j->at_s = secs();
	T.forks_since_begin = 0;
	pthread_cond_broadcast(&T.child_cv);
	pthread_mutex_unlock(&T.child_mu);
	if (r) {
		sfail("snapshot %u: begin: %d %s (%s)", idx, r, uffdsnap_strerror(r), uffdsnap_last_error());
		t_cb_gate(&cb, false);
		if (fd >= 0)
			close(fd);
		t_cb_destroy(&cb);
		return r;
	}

	if (window) {
		/* the moves happen while this snapshot certainly runs: at
		 * THROTTLE_US per sink call it needs seconds to end */
		uint64_t t0 = t_now_ns();
		pthread_mutex_lock(&T.win_mu);
		T.win_moves = MOVES_PER_WINDOW;
		T.win_open = true;
		T.win_done = false;
		pthread_cond_broadcast(&T.win_cv);
		while (!T.win_done && !atomic_load(&T.stop) && t_now_ns() - t0 < 60000000000ull) {
			if (uffdsnap_done(s)) { /* ended (or failed) under the mremapper's feet */
				sfail("snapshot %u ended while the mremapper still had %u of %u moves to make: %s", idx,
				      T.win_moves, MOVES_PER_WINDOW,
				      *uffdsnap_snap_error(s) ? uffdsnap_snap_error(s) : "no error (ended too early)");
				break;
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50000000;
			if (ts.tv_nsec >= 1000000000)
				ts.tv_sec++, ts.tv_nsec -= 1000000000;
			pthread_cond_timedwait(&T.win_cv, &T.win_mu, &ts);
		}
		if (!T.win_done && !atomic_load(&T.stop))
			sfail("snapshot %u: the mremapper did not finish its moves within 60 s (blocked?)", idx);
		j->moves = MOVES_PER_WINDOW - T.win_moves;
		T.win_open = false;
		pthread_mutex_unlock(&T.win_mu);
		/* A mremap still running (stop was set) must not land after the
		 * snapshot: wait for it under the lock. */
		pthread_rwlock_wrlock(&T.maplock);
		pthread_rwlock_unlock(&T.maplock);
		atomic_store(&cb.sleep_us, 0);
	}
	if (zap != ZAP_NONE) {
		const size_t np = PRIV_LEN / t_page, p = np - ZPAGES + (zap == ZAP_COPIED ? 16 : 0);

		if (zap == ZAP_UNCOPIED)
			ck_assert(t_cb_wait_blocked(&cb, 30)); /* the sweep stalls within a few chunks */
		pthread_rwlock_rdlock(&T.maplock);
		if (zap == ZAP_COPIED) {
			/* a write fault copies the page (same contents: the page is
			 * static); it waits for a buffer of the slowed sink */
			_Atomic uint64_t *w = (_Atomic uint64_t *)(T.base[R_PRIV] + p * t_page);
			atomic_store(w, word_of(R_PRIV, p, 0, 1));
		}
		ck_assert_int_eq(madvise(T.base[R_PRIV] + p * t_page, t_page, MADV_DONTNEED), 0);
		pthread_rwlock_unlock(&T.maplock);
		t_cb_gate(&cb, false);
		atomic_store(&cb.sleep_us, 0);
	}

	r = uffdsnap_wait(s);
	snprintf(j->err, sizeof(j->err), "%s", r ? uffdsnap_snap_error(s) : "");
	uffdsnap_snap_stats(s, &st);
	j->st = st;
	if (r == 0) {
		if (st.pages_fault + st.pages_sweep + st.pages_hole != st.pages_total)
			sfail("snapshot %u: pages counted more or less than once: fault %" PRIu64 " + sweep %" PRIu64
			     " + hole %" PRIu64 " != %" PRIu64, idx, st.pages_fault, st.pages_sweep, st.pages_hole,
			     st.pages_total);
		if (window && st.remaps != j->moves)
			sfail("snapshot %u: %u mremaps during the snapshot, %" PRIu64 " followed", idx, j->moves,
			     st.remaps);
	} else if (zap == ZAP_NONE) {
		sfail("snapshot %u: wait: %d %s: %s", idx, r, uffdsnap_strerror(r), uffdsnap_snap_error(s));
	}
	{
		long prot = protected_now();
		if (prot)
			sfail("snapshot %u: %ld pages still write-protected after wait() returned %d", idx, prot, r);
	}
	if (zap != ZAP_NONE) {
		printf("zap phase, %s private page: wait %d%s%s\n", zap == ZAP_COPIED ? "a copied" : "an uncopied", r,
		       r ? ": " : "", r ? uffdsnap_snap_error(s) : "");
		/* the static page is gone (private: zeros): put it back */
		const size_t np = PRIV_LEN / t_page, p = np - ZPAGES + (zap == ZAP_COPIED ? 16 : 0);
		pthread_rwlock_rdlock(&T.maplock);
		for (unsigned i = 0; i < t_page / 8; i++)
			((uint64_t *)(T.base[R_PRIV] + p * t_page))[i] = word_of(R_PRIV, p, i, 1);
		pthread_rwlock_unlock(&T.maplock);
	}
	uffdsnap_snap_free(s);
	if (fd >= 0)
		close(fd);
	t_cb_destroy(&cb);
	return r;
}

/* ---- the test -------------------------------------------------------------------------------- */

static bool env_flag(const char *name)
{
	const char *e = getenv(name);

	return e && *e && strcmp(e, "0");
}

static unsigned stress_seconds(void)
{
	const char *e = getenv("USNAP_STRESS_SECONDS");

	if (e && *e)
		return (unsigned)strtoul(e, NULL, 10);
	/* under a sanitizer the zap phase (three more snapshots) and the
	 * verification of every snapshot come on top: TSan verifies in step
	 * with main, a few seconds per snapshot */
	return T_TSAN ? 2 : T_SANITIZED ? 3 : 6;
}

static void owners_init(void)
{
	const size_t nshm = SHM_LEN / t_page, npriv = PRIV_LEN / t_page - ZPAGES;
	uint8_t *shared;

	for (unsigned o = 0; o < NOWNERS; o++) {
		T.own[o].pages = malloc((nshm + npriv) * sizeof(uint32_t));
		ck_assert(T.own[o].pages);
	}
	/* interleaved page by page: every fault-around window holds pages of all owners */
	for (size_t p = 0; p < nshm; p++) {
		struct owner *o = &T.own[p % NOWNERS];
		o->pages[o->npages++] = (uint32_t)(R_SHM << 31 | p);
	}
	for (size_t p = 0; p < npriv; p++) {
		struct owner *o = &T.own[p % NWRITERS];
		o->pages[o->npages++] = (uint32_t)((uint32_t)R_PRIV << 31 | p);
	}
	shared = mmap(NULL, t_page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert(shared != MAP_FAILED);
	T.child_done = (_Atomic uint64_t *)shared;
	for (unsigned o = 0; o < NOWNERS; o++) {
		owner_init(&T.own[o]);
		T.own[o].done = o == CHILD ? T.child_done : calloc(1, sizeof(_Atomic uint64_t));
		ck_assert(T.own[o].done);
	}
}

START_TEST(stress_everything_at_once)
{
	pthread_t wt[NWRITERS], zt, pt, ft, mt, vt;
	pthread_rwlockattr_t ra;
	uffdsnap_opts_t o;
	char dir[PATH_MAX];
	uint64_t pswp0, pswp1, seed = t_now_ns(), end_ns, rss1 = 0, rss2;
	unsigned idx = 0, timed, fds1 = 0, thr1 = 0, fds2, thr2, estale = 0;
	bool baseline = false;
	int r;

	memset(&T, 0, sizeof(T));
	T.seconds = stress_seconds();
	t_watchdog(T.seconds + 150, "stress: a snapshot, writer or disturber hung");
	printf("stress: %u s (USNAP_STRESS_SECONDS; %s build), seed %" PRIu64 "\n", T.seconds,
	       T_SANITIZED ? "sanitizer" : "plain", seed);
	pthread_mutex_init(&T.fail_lock, NULL);
	pthread_mutex_init(&T.child_mu, NULL);
	pthread_cond_init(&T.child_cv, NULL);
	pthread_mutex_init(&T.win_mu, NULL);
	pthread_cond_init(&T.win_cv, NULL);
	pthread_mutex_init(&T.q_mu, NULL);
	pthread_cond_init(&T.q_cv, NULL);
	/* writer-preferring, or the readers (4 writers flat out) starve the mremapper */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&T.maplock, &ra);
	{
		const char *e = getenv("USNAP_STRESS_FORK_CAP");
		T.fork_cap = e && *e ? (unsigned)strtoul(e, NULL, 10) : 32;
	}

	t_memfd(&T.shm, SHM_LEN);
	T.base[R_SHM] = T.shm.addr;
	T.base[R_PRIV] = mmap(NULL, PRIV_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(T.base[R_PRIV] != MAP_FAILED);
	for (unsigned g = 0; g < NREG; g++) {
		T.vbuf[g] = t_buf_alloc(reg_len[g]);
	}
	owners_init();
	oracle_selftest();
	{
		const size_t np = PRIV_LEN / t_page;
		for (size_t p = np - ZPAGES; p < np; p++)
			for (unsigned i = 0; i < t_page / 8; i++)
				((uint64_t *)(T.base[R_PRIV] + p * t_page))[i] = word_of(R_PRIV, p, i, 1);
	}

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 8 * MiB; /* backpressure: writers wait for the sink now and then */
	T.ctx = t_ctx_new(&o);
	t_add(T.ctx, reg_name[R_SHM], T.base[R_SHM], SHM_LEN);
	t_add(T.ctx, reg_name[R_PRIV], T.base[R_PRIV], PRIV_LEN);
	T.fork_shm = uffdsnap_features(T.ctx) & UFFD_FEATURE_EVENT_FORK;
	T.zapper = !env_flag("USNAP_STRESS_NO_ZAPPER");
	T.forker = !env_flag("USNAP_STRESS_NO_FORKER");
	/* A disturbance that cannot run (or was turned off) makes the whole
	 * program report SKIP with its reason (t_skip: exit 77 unless a check
	 * failed): a green "stress" means all five ran. */
	if (!T.zapper)
		t_skip("zapper", "off (USNAP_STRESS_NO_ZAPPER)");
	if (!T.forker)
		t_skip("forker", "off (USNAP_STRESS_NO_FORKER)");
	if (!T.fork_shm)
		t_skip("forker", "no UFFD_FEATURE_EVENT_FORK (needs CAP_SYS_PTRACE): children only write their "
			   "own private copies (a child's writes to shared memory are a documented blind spot then)");
	T.mremapper = (uffdsnap_features(T.ctx) & (UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP)) ==
		      (UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP);
	if (!T.mremapper)
		t_skip("mremapper", "the context does not follow mremap (no UFFD_FEATURE_EVENT_REMAP)");
	else if (env_flag("USNAP_STRESS_NO_MREMAP"))
		T.mremapper = false, t_skip("mremapper", "off (USNAP_STRESS_NO_MREMAP)");
	T.pager = t_swap.on && !env_flag("USNAP_STRESS_NO_PAGER");
	if (!T.pager)
		t_skip("pager-out", "%s", t_swap.on ? "off (USNAP_STRESS_NO_PAGER)" : t_swap.why);
	t_tmpdir(dir);
	proc_open();
	pswp0 = vmstat("pswpout");

	T.t0 = t_now_ns();
	for (unsigned w = 0; w < NWRITERS; w++)
		ck_assert(pthread_create(&wt[w], NULL, writer_main, (void *)(uintptr_t)w) == 0);
	if (T.zapper)
		ck_assert(pthread_create(&zt, NULL, zapper_main, (void *)(uintptr_t)(seed + 1)) == 0);
	if (T.pager)
		ck_assert(pthread_create(&pt, NULL, pager_main, (void *)(uintptr_t)(seed + 2)) == 0);
	if (T.forker)
		ck_assert(pthread_create(&ft, NULL, forker_main, (void *)(uintptr_t)(seed + 3)) == 0);
	if (T.mremapper)
		ck_assert(pthread_create(&mt, NULL, mremapper_main, NULL) == 0);
	ck_assert(pthread_create(&vt, NULL, verifier_main, NULL) == 0);
	usleep(50 * 1000); /* let everyone get going */

	end_ns = t_now_ns() + (uint64_t)T.seconds * 1000000000ull;
	while (t_now_ns() < end_ns && !atomic_load(&T.failed)) {
		struct snapjob j;

		if (one_snapshot(idx, dir, ZAP_NONE, &j) == 0 && !atomic_load(&T.failed))
			enqueue(&j);
		else
			unlink(j.path);
		idx++;
		if (idx == 2) { /* after warming up: the baseline for growth */
			/* sampled with the verifier idle: a reader it has open
			 * holds a descriptor, and decoding threads while it reads */
			verified_all();
			fds1 = count_fds();
			thr1 = (unsigned)status_field("Threads");
			rss1 = status_field("VmRSS");
			baseline = true;
		}
	}
	timed = idx;
	verified_all();
	fds2 = count_fds();
	thr2 = (unsigned)status_field("Threads");
	rss2 = status_field("VmRSS");

	/* The zap phase: private pages discarded mid-snapshot (writers still running). */
	if (!atomic_load(&T.failed)) {
		struct snapjob j;
		/* the sweep stalled after a few chunks, far from the static pages */
		r = one_snapshot(idx++, dir, ZAP_UNCOPIED, &j);
		if (r == -ESTALE && strstr(j.err, "MADV_DONTNEED") && strstr(j.err, "'heap'"))
			estale++;
		else
			sfail("zap phase: zapping an uncopied private page: wait %d (%s), expected -ESTALE naming "
			     "MADV_DONTNEED and region 'heap'", r, j.err);
		unlink(j.path);
		if (!atomic_load(&T.failed)) {
			r = one_snapshot(idx++, dir, ZAP_COPIED, &j);
			if (r != 0)
				sfail("zap phase: zapping a private page already copied failed the snapshot: %d (%s)", r,
				     j.err);
			else
				enqueue(&j);
		}
		if (!atomic_load(&T.failed) && one_snapshot(idx++, dir, ZAP_NONE, &j) == 0)
			enqueue(&j); /* and the next one is exact again */
	}

	/* stop everything; nothing may hang */
	atomic_store(&T.stop, true);
	pthread_mutex_lock(&T.child_mu);
	pthread_cond_broadcast(&T.child_cv);
	pthread_mutex_unlock(&T.child_mu);
	pthread_mutex_lock(&T.win_mu);
	pthread_cond_broadcast(&T.win_cv);
	pthread_mutex_unlock(&T.win_mu);
	for (unsigned w = 0; w < NWRITERS; w++)
		ck_assert_msg(t_join_timeout(wt[w], 30) == 0, "writer %u hangs", w);
	if (T.zapper)
		ck_assert_msg(t_join_timeout(zt, 30) == 0, "the zapper hangs");
	if (T.pager)
		ck_assert_msg(t_join_timeout(pt, 30) == 0, "the pager-out hangs");
	if (T.forker)
		ck_assert_msg(t_join_timeout(ft, 60) == 0, "the forker hangs");
	if (T.mremapper)
		ck_assert_msg(t_join_timeout(mt, 30) == 0, "the mremapper hangs");
	pthread_mutex_lock(&T.q_mu);
	T.q_closed = true;
	pthread_cond_broadcast(&T.q_cv);
	pthread_mutex_unlock(&T.q_mu);
	ck_assert_msg(t_join_timeout(vt, 120) == 0, "the verifier hangs");
	pswp1 = vmstat("pswpout");

	printf("summary: %u snapshots taken, %" PRIu64 " verified exact (%" PRIu64 " pages checked word by word); "
	       "%" PRIu64 " shm pages zapped (%" PRIu64 " calls); %" PRIu64 " pageout calls, %" PRIu64
	       " pages swapped out (pswpout delta), VmSwap peak %" PRIu64 " kB; %" PRIu64 " forks (%" PRIu64
	       " hung); %" PRIu64 " mremaps; updates w0..3,c %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
	       "; zap phase: %u expected -ESTALE\n",
	       idx, atomic_load(&T.verified), atomic_load(&T.pages_checked), atomic_load(&T.zaps),
	       atomic_load(&T.zap_calls), atomic_load(&T.pageouts), pswp1 - pswp0, atomic_load(&T.swap_max_kb),
	       atomic_load(&T.forks), atomic_load(&T.child_hangs), atomic_load(&T.moves),
	       (uint64_t)atomic_load(T.own[0].done), (uint64_t)atomic_load(T.own[1].done),
	       (uint64_t)atomic_load(T.own[2].done), (uint64_t)atomic_load(T.own[3].done),
	       (uint64_t)atomic_load(T.own[4].done), estale);
	printf("resources between snapshots: after snapshot 2 / at the end: fds %u / %u, threads %u / %u, "
	       "RSS %" PRIu64 " / %" PRIu64 " kB\n", fds1, fds2, thr1, thr2, rss1, rss2);

	ck_assert_msg(!atomic_load(&T.failed), "%s", T.fail);
	ck_assert_msg(protected_now() == 0, "pages still protected at the end");
	ck_assert_uint_ge(atomic_load(&T.verified), 3);
	/* the baseline is taken after the timed loop's second snapshot: on a
	 * loaded machine a sanitizer build may not get that far (the zap phase's
	 * snapshots come after the last sample) */
	if (!baseline)
		printf("resources: not compared, the timed loop took %u snapshot(s) in %u s\n", timed, T.seconds);
	if (baseline) {
		ck_assert_msg(fds2 <= fds1 + 2, "open fds grew: %u -> %u", fds1, fds2);
		ck_assert_msg(thr2 <= thr1, "threads grew: %u -> %u", thr1, thr2);
		/* (not under a sanitizer: its shadow memory grows with every new
		 * address the mremapper moves a region to) */
		if (!T_SANITIZED)
			ck_assert_msg(rss2 <= rss1 + 256 * 1024, "RSS grew: %" PRIu64 " -> %" PRIu64 " kB", rss1, rss2);
	}

	uffdsnap_free(T.ctx);
	t_rmdir(dir);
	munmap(T.base[R_PRIV], PRIV_LEN);
	t_mem_free(&T.shm);
	for (unsigned g = 0; g < NREG; g++)
		t_buf_free(T.vbuf[g], reg_len[g]);
	for (unsigned i = 0; i < NOWNERS; i++) {
		free(T.own[i].pages);
		if (i != CHILD)
			free(T.own[i].done);
	}
	munmap(T.child_done, t_page);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("stress");
	TCase *tc = tcase_create("stress");
	int ret;

	t_test_require_uffd();
	/* in this (the Check parent) process: removed even if the test dies */
	if (t_swap_up(512))
		printf("zram swap: %s (512 MiB) on; removed at exit\n", t_swap.dev);
	tcase_set_timeout(tc, stress_seconds() + 170);
	tcase_add_test(tc, stress_everything_at_once);
	suite_add_tcase(s, tc);
	ret = t_run_suite(s);
	t_swap_down();
	return ret;
}
