/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy (post-copy) restore: the program runs as soon as uffdsnap_lazy_start()
 * returns and finds every page byte-exact on first touch, in sequential and
 * random order, from several threads, while the prefetcher fills the rest;
 * a page the program wrote is never overwritten by a late copy; untouched zero
 * pages stay holes. Failures (a corrupt chunk, a truncated file) end in SIGBUS
 * for the thread that touches a lost page and an error from wait(), never in a
 * hang: they run in a forked child under a deadline.
 *
 * Built a second time as test-restore-lazy-nopoison, against the fault
 * injection library with USNAP_TEST_NO_POISON: UFFDIO_API then denies
 * UFFD_FEATURE_POISON, as kernels before 6.6 do, and the failure tests run
 * through the fallback the library has for those (tgkill of the faulting
 * thread, the registration kept until free()). How each SIGBUS came is told
 * by its si_code: the kernel's for the access to a poisoned page (positive:
 * BUS_MCEERR_AR with CONFIG_MEMORY_FAILURE, else BUS_ADRERR), SI_TKILL from
 * tgkill.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#ifdef USNAP_TEST_NO_POISON
#include "compat.h" /* UFFD_FEATURE_POISON, newer than the system's headers */
#include "inject.h"
#define SIGBUS_FROM(code) ((code) == SI_TKILL)
#define SIGBUS_WANT "SI_TKILL"
#else
#define SIGBUS_FROM(code) ((code) > 0)
#define SIGBUS_WANT "the kernel's"
#endif

/* 16 MiB under a sanitizer: the same chunks, faults and prefetch on half the
 * pages (the time there goes to filling, restoring and comparing them) */
#define LEN (USNAP_SANITIZED ? 16 * MiB : 32 * MiB)

static struct usnap_snapfile fx; /* fx.want: the region at the instant */
static uint64_t want_zero_pages; /* pages recorded as zero */

/* A snapshot of one LEN memfd "pool": random, zero and hole pages. */
static void fixture(void)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;

	usnap_snapfile_new(&fx, "pool", LEN, 17, 5, 7);
	r = usnap_reader(fx.path);
	uffdsnap_reader_info(r, &info);
	want_zero_pages = info.pages_zero;
	uffdsnap_reader_free(r);
}

/* Start a lazy restore of "pool" from `path` into dst. */
static uffdsnap_lazy_t *start(const char *path, struct usnap_mem *dst, uint32_t flags, double *ms)
{
	uffdsnap_lazy_region_t reg = { .name = "pool", .addr = dst->addr, .len = dst->len };
	uffdsnap_lazy_opts_t o;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uint64_t t0;
	int rc;

	uffdsnap_lazy_opts_init(&o);
	o.flags = flags;
	r = usnap_reader(path);
	t0 = usnap_now_ns();
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, &o);
	if (ms)
		*ms = usnap_ms_since(t0);
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	uffdsnap_reader_free(r); /* the restore does not need it */
	return lz;
}

static void print_lazy(const char *what, uffdsnap_lazy_t *lz, uffdsnap_lazy_stats_t *st)
{
	st->size = sizeof(*st);
	ck_assert_int_eq(uffdsnap_lazy_stats(lz, st), 0);
	printf("  %s: start %.3f ms, resident after %.1f ms; %llu faults; data pages by fault %llu, by prefetch "
	       "%llu; zero pages filled on touch %llu; chunks loaded for faults %llu, by prefetch %llu\n", what,
	       st->start_ns / 1e6, st->resident_ns / 1e6, (unsigned long long)st->faults,
	       (unsigned long long)st->pages_fault, (unsigned long long)st->pages_prefetch,
	       (unsigned long long)st->pages_zero_fault, (unsigned long long)st->chunks_fault,
	       (unsigned long long)st->chunks_prefetch);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Read the region front to back while the prefetcher runs. */
START_TEST(lazy_sequential)
{
	uffdsnap_lazy_stats_t st;
	struct usnap_mem dst;
	uffdsnap_lazy_t *lz;
	double ms, run_ms;
	uint64_t t0;
	int rc;

	usnap_watchdog(60, "lazy_sequential");
	fixture();
	usnap_memfd(&dst, LEN);
	lz = start(fx.path, &dst, 0, &ms);
	t0 = usnap_now_ns();
	for (size_t p = 0; p < LEN; p += usnap_page)
		usnap_assert_msg(!memcmp(dst.addr + p, fx.want + p, usnap_page), "page %zu differs", p / usnap_page);
	run_ms = usnap_ms_since(t0);
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	print_lazy("sequential", lz, &st);
	printf("  sequential: uffdsnap_lazy_start() took %.3f ms (caller's view); the whole scan %.1f ms\n", ms,
	       run_ms);
	ck_assert_int_eq(st.state, UFFDSNAP_LAZY_DONE);
	ck_assert_uint_eq(st.pages_fault + st.pages_prefetch + want_zero_pages, LEN / usnap_page);
	ck_assert(!memcmp(dst.addr, fx.want, LEN));
	uffdsnap_lazy_free(lz);
	usnap_mem_free(&dst);
	usnap_snapfile_free(&fx);
}
END_TEST

struct toucher {
	pthread_t t;
	uint8_t *base;
	unsigned idx, nthreads;
	uint64_t seed;
	unsigned touches;
	uint64_t *lat_ns;            /* first-touch latency of each touch */
	_Atomic unsigned bad;
};

/* Touch random pages: check the page, then write a marker into it (a byte
 * the snapshot cannot hold there) in this thread's own slice of pages. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	size_t npages = LEN / usnap_page;

	for (unsigned i = 0; i < t->touches; i++) {
		size_t p = (size_t)(usnap_splitmix64(&t->seed) % (npages / t->nthreads)) * t->nthreads + t->idx;
		uint8_t *page = t->base + p * usnap_page;
		uint64_t t0 = usnap_now_ns();
		volatile uint8_t first = page[100];

		t->lat_ns[i] = usnap_now_ns() - t0;
		(void)first;
		if (page[0] != 0xA5 && memcmp(page, fx.want + p * usnap_page, usnap_page))
			t->bad++;
		page[0] = 0xA5;
	}
	return NULL;
}

static void touch_random(uffdsnap_lazy_t *lz, struct usnap_mem *dst, unsigned nthreads, unsigned touches,
			 const char *what)
{
	struct toucher t[4];
	uint64_t *all = malloc(sizeof(uint64_t) * nthreads * touches);
	size_t n = 0;

	ck_assert(nthreads <= 4);
	for (unsigned i = 0; i < nthreads; i++) {
		t[i] = (struct toucher){ .base = dst->addr, .idx = i, .nthreads = nthreads, .seed = 1000 + i,
					 .touches = touches, .lat_ns = all + (size_t)i * touches };
		ck_assert_int_eq(pthread_create(&t[i].t, NULL, toucher_main, &t[i]), 0);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		ck_assert_int_eq(usnap_join_timeout(t[i].t, 30), 0);
		ck_assert_msg(t[i].bad == 0, "thread %u found %u pages with wrong contents", i, t[i].bad);
		n += touches;
	}
	qsort(all, n, sizeof(*all), cmp_u64);
	printf("  %s: %u threads x %u random touches: first-touch latency p50 %.1f us, p99 %.1f us, max %.1f us\n",
	       what, nthreads, touches, all[n / 2] / 1e3, all[n * 99 / 100] / 1e3, all[n - 1] / 1e3);
	(void)lz;
	free(all);
}

/* Random touches, with and without the prefetcher; markers the program wrote
 * survive; zero pages nobody touched stay holes. */
START_TEST(lazy_random)
{
	uffdsnap_lazy_stats_t st;
	struct usnap_mem dst;
	uffdsnap_lazy_t *lz;
	uint8_t *got;
	long holes;
	int rc;

	usnap_watchdog(90, "lazy_random");
	fixture();
	for (int prefetch = 0; prefetch <= 1; prefetch++) {
		const char *what = prefetch ? "random, with prefetch" : "random, faults only";

		usnap_memfd(&dst, LEN);
		lz = start(fx.path, &dst, prefetch ? 0 : UFFDSNAP_LAZY_NO_PREFETCH, NULL);
		if (!prefetch) {
			/* lazy: start returns before any page is placed (the time
			 * it takes is a benchmark's business, not a test's) */
			print_lazy("random, faults only, after start", lz, &st);
			ck_assert_uint_eq(st.pages_fault + st.pages_prefetch + st.pages_zero_fault, 0);
			ck_assert_int_eq(usnap_mem_holes(&dst), (long)(LEN / usnap_page));
		}
		touch_random(lz, &dst, 2, 400, what);
		rc = uffdsnap_lazy_wait(lz);
		ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
		print_lazy(what, lz, &st);
		ck_assert_uint_eq(st.pages_fault + st.pages_prefetch + want_zero_pages, LEN / usnap_page);
		if (!prefetch)
			ck_assert_uint_gt(st.pages_fault, 0);
		/* before reading through the mapping (that would fill holes) */
		holes = usnap_mem_holes(&dst);
		printf("  %s: %ld holes left of %llu zero pages, %llu filled on touch\n", what, holes,
		       (unsigned long long)want_zero_pages, (unsigned long long)st.pages_zero_fault);
		/* exact while faults are served; once the registration is dropped
		 * a touched zero page is filled by the kernel, uncounted */
		if (prefetch)
			ck_assert_int_le(holes, (long)(want_zero_pages - st.pages_zero_fault));
		else
			ck_assert_int_eq(holes, (long)(want_zero_pages - st.pages_zero_fault));
		ck_assert_int_ge(holes, (long)(want_zero_pages - st.pages_zero_fault) - 2 * 400);
		got = usnap_mem_copy(&dst);
		for (size_t p = 0; p < LEN; p += usnap_page) {
			if (got[p] == 0xA5)
				got[p] = fx.want[p]; /* a marker: the page was touched */
			usnap_assert_msg(!memcmp(got + p, fx.want + p, usnap_page), "page %zu differs", p / usnap_page);
		}
		usnap_buf_free(got, LEN);
		uffdsnap_lazy_free(lz);
		usnap_mem_free(&dst);
	}
	usnap_snapfile_free(&fx);
}
END_TEST

/* Private anonymous memory works the same way (UFFDIO_ZEROPAGE maps the
 * shared zero page there). */
START_TEST(lazy_anon_private)
{
	uffdsnap_lazy_region_t reg = { .name = "pool", .len = LEN };
	uffdsnap_lazy_stats_t st;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uint8_t *dst;
	int rc;

	usnap_watchdog(60, "lazy_anon_private");
	fixture();
	dst = usnap_buf_alloc(LEN);
	reg.addr = dst;
	r = usnap_reader(fx.path);
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, NULL);
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	uffdsnap_reader_free(r);
	for (size_t p = LEN; p > 0; p -= usnap_page) /* backwards: against the prefetcher */
		usnap_assert_msg(!memcmp(dst + p - usnap_page, fx.want + p - usnap_page, usnap_page), "page %zu differs",
			      p / usnap_page - 1);
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	print_lazy("private anonymous, backwards", lz, &st);
	ck_assert(!memcmp(dst, fx.want, LEN));
	uffdsnap_lazy_free(lz);
	usnap_buf_free(dst, LEN);
	usnap_snapfile_free(&fx);
}
END_TEST

struct scribbler {
	pthread_t t;
	uint8_t *base;
	_Atomic bool stop;
	_Atomic unsigned long writes;
};

/* One store to a random page at a time: each first store after the instant
 * faults, and the snapshot records those pages in scattered fault chunks. */
static void *scribble_main(void *arg)
{
	struct scribbler *w = arg;
	uint64_t s = 77;

	while (!atomic_load(&w->stop)) {
		w->base[usnap_splitmix64(&s) % LEN] ^= 0x5a;
		w->writes++;
	}
	return NULL;
}

/*
 * A snapshot taken under a writer holds fault chunks: scattered pages, whose
 * index spans overlap the sweep's chunks. Eager and lazy restores must find
 * each page in the one chunk that records it: both are compared with the
 * reference reader (uffdsnap_reader_read) of the same file.
 */
START_TEST(restore_fault_chunks)
{
	const uffdsnap_opts_t o = usnap_opts(0, 64 * KiB);
	uffdsnap_lazy_region_t reg = { .name = "pool", .len = LEN };
	uffdsnap_stats_t sst;
	uffdsnap_lazy_stats_t st;
	struct scribbler w = { 0 };
	struct usnap_fix f;
	struct usnap_mem dst;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uint8_t *ref, *got;
	int fd, rc;

	usnap_watchdog(90, "restore_fault_chunks");
	usnap_fix_mem(&f, LEN);
	usnap_fill_mixed(f.m.addr, LEN, 3, 11, 13);
	usnap_fix_ctx(&f, "pool", &o);
	usnap_fix_cb(&f, "faulted");
	f.cb.sleep_us = 300; /* a slow sink keeps the sweep behind the writer */
	w.base = f.m.addr;
	ck_assert_int_eq(pthread_create(&w.t, NULL, scribble_main, &w), 0);
	while (w.writes < 1000)
		usleep(100);
	rc = uffdsnap_begin(f.ctx, usnap_cb_sink(&f.cb), &f.s);
	ck_assert_msg(rc == 0, "begin: %d %s", rc, uffdsnap_last_error());
	rc = uffdsnap_wait(f.s);
	ck_assert_msg(rc == 0, "wait: %d %s", rc, uffdsnap_snap_error(f.s));
	atomic_store(&w.stop, true);
	ck_assert_int_eq(usnap_join_timeout(w.t, 10), 0);
	usnap_stats(f.s, &sst);
	usnap_stats_print("snapshot under a writer", &sst);
	ck_assert_uint_gt(sst.pages_fault, 0);

	ref = usnap_buf_alloc(LEN);
	r = usnap_reader(f.path);
	ck_assert_int_eq(uffdsnap_reader_verify(r), 0);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, 0, ref, LEN), 0);

	/* eager */
	rc = uffdsnap_restore_memfd(r, 0, &fd, NULL, NULL);
	ck_assert_msg(rc == 0, "restore_memfd: %d %s", rc, uffdsnap_last_error());
	got = usnap_buf_alloc(LEN);
	ck_assert_int_eq(pread(fd, got, LEN, 0), (ssize_t)LEN);
	ck_assert_msg(!memcmp(got, ref, LEN), "eager restore differs from the reference reader");
	close(fd);
	usnap_buf_free(got, LEN);

	/* lazy, faults only, in random order, then the rest */
	usnap_memfd(&dst, LEN);
	reg.addr = dst.addr;
	uffdsnap_lazy_opts_t lo = { .size = sizeof(lo), .flags = UFFDSNAP_LAZY_NO_PREFETCH };
	rc = uffdsnap_lazy_start(&lz, r, &reg, 1, &lo);
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	for (uint64_t k = 0, seed = 9; k < 500; k++) {
		size_t p = usnap_splitmix64(&seed) % (LEN / usnap_page);
		ck_assert_msg(!memcmp(dst.addr + p * usnap_page, ref + p * usnap_page, usnap_page),
			      "lazy: page %zu differs from the reference reader", p);
	}
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	print_lazy("fault chunks, random", lz, &st);
	ck_assert(!memcmp(dst.addr, ref, LEN));
	uffdsnap_lazy_free(lz);
	uffdsnap_reader_free(r);
	usnap_mem_free(&dst);
	usnap_buf_free(ref, LEN);
	usnap_fix_free(&f);
}
END_TEST

/* Several regions, handed over in another order than the snapshot's. */
START_TEST(lazy_two_regions)
{
	static const char *const names[2] = { "a", "b" };
	const size_t lens[2] = { 4 * MiB, 1 * MiB };
	uffdsnap_lazy_region_t regs[2];
	struct usnap_mem src[2], dst[2];
	uint8_t *ref[2];
	uffdsnap_lazy_stats_t st;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uffdsnap_t *ctx;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	int rc;

	usnap_watchdog(60, "lazy_two_regions");
	usnap_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/two", dir);
	ctx = usnap_ctx_new(NULL);
	for (int i = 0; i < 2; i++) {
		usnap_memfd(&src[i], lens[i]);
		usnap_fill_mixed(src[i].addr, lens[i], 40 + (uint64_t)i, 4, 0);
		ref[i] = usnap_mem_copy(&src[i]);
		usnap_add(ctx, names[i], src[i].addr, lens[i]);
	}
	usnap_snap_file(ctx, path, NULL);
	uffdsnap_free(ctx);
	for (int i = 0; i < 2; i++) {
		usnap_mem_free(&src[i]);
		usnap_memfd(&dst[i], lens[i]);
		regs[1 - i] = (uffdsnap_lazy_region_t){ .name = names[i], .addr = dst[i].addr, .len = lens[i] };
	}
	r = usnap_reader(path);
	rc = uffdsnap_lazy_start(&lz, r, regs, 2, &(uffdsnap_lazy_opts_t){ .size = sizeof(uffdsnap_lazy_opts_t),
									  .flags = UFFDSNAP_LAZY_NO_PREFETCH });
	ck_assert_msg(rc == 0, "lazy_start: %d %s", rc, uffdsnap_last_error());
	uffdsnap_reader_free(r);
	for (size_t p = 0; p < lens[1]; p += 37 * usnap_page)
		for (int i = 1; i >= 0; i--)
			ck_assert_msg(!memcmp(dst[i].addr + p, ref[i] + p, usnap_page), "region %s page %zu", names[i],
				      p / usnap_page);
	rc = uffdsnap_lazy_wait(lz);
	ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
	print_lazy("two regions", lz, &st);
	ck_assert_uint_eq(st.pages_total, (lens[0] + lens[1]) / usnap_page);
	uffdsnap_lazy_free(lz);
	for (int i = 0; i < 2; i++) {
		ck_assert_msg(!memcmp(dst[i].addr, ref[i], lens[i]), "region %s differs", names[i]);
		usnap_mem_free(&dst[i]);
		usnap_buf_free(ref[i], lens[i]);
	}
	usnap_rmdir(dir);
}
END_TEST

START_TEST(lazy_mismatch)
{
	uffdsnap_lazy_region_t reg = { .name = "pool" };
	struct usnap_mem dst;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;

	usnap_watchdog(60, "lazy_mismatch");
	fixture();
	r = usnap_reader(fx.path);
	usnap_memfd(&dst, LEN);
	reg.addr = dst.addr;
	reg.len = LEN - usnap_page;
	ck_assert_int_eq(uffdsnap_lazy_start(&lz, r, &reg, 1, NULL), -EINVAL);
	printf("  length: %s\n", uffdsnap_last_error());
	ck_assert(strstr(uffdsnap_last_error(), "'pool'"));
	reg.len = LEN;
	reg.name = "nope";
	ck_assert_int_eq(uffdsnap_lazy_start(&lz, r, &reg, 1, NULL), -ENOENT);
	reg.name = "pool";
	dst.addr[5 * usnap_page] = 1;
	ck_assert_int_eq(uffdsnap_lazy_start(&lz, r, &reg, 1, NULL), -EEXIST);
	printf("  not empty: %s\n", uffdsnap_last_error());
	/* a failed start leaves the memory unregistered and usable */
	dst.addr[6 * usnap_page] = 2;
	ck_assert_int_eq(dst.addr[6 * usnap_page], 2);
	uffdsnap_reader_free(r);
	usnap_mem_free(&dst);
	usnap_snapfile_free(&fx);
}
END_TEST

/* ---- failures: in a child, which must die of SIGBUS, not hang --------------------- */

enum child_exit { CHILD_WRONG_DATA = 10, CHILD_NO_ERROR, CHILD_TOUCHED };

static int sigbus_pipe = -1; /* the child's end */

/* In the child: say how the SIGBUS came, then die of it. */
static void report_sigbus(int sig, siginfo_t *si, void *uc)
{
	ssize_t n = write(sigbus_pipe, &si->si_code, sizeof(si->si_code));

	(void)n, (void)uc;
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Run fn in a child; it must be killed by SIGBUS within 20 s, not hang on a
 * page that cannot be restored, and the SIGBUS must have come the way this
 * build expects (SIGBUS_FROM). */
/* The application's log hook (uffdsnap_set_log_fn) in a child: its first
 * line goes to a page the parent reads after the child died. */
static void log_to_page(void *user, const char *line)
{
	char *page = user;

	if (!page[0])
		snprintf(page, 4096, "%s", line);
}

/* The child dies of SIGBUS, and the failure that caused it reached the log
 * hook first (before the SIGBUS that may end the program). */
static void expect_sigbus(void (*fn)(const char *, size_t), const char *path, size_t page, const char *what)
{
	uint64_t t0 = usnap_now_ns();
	int status, code = 0, p[2];
	char *logged;
	pid_t pid;

	logged = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert(logged != MAP_FAILED);
	ck_assert(!pipe2(p, O_CLOEXEC));
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		struct sigaction sa = { .sa_sigaction = report_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER };

		usnap_sigbus_child();
		sigbus_pipe = p[1];
		sigaction(SIGBUS, &sa, NULL);
		uffdsnap_set_log_fn(log_to_page, logged);
		fn(path, page);
		_exit(CHILD_TOUCHED);
	}
	close(p[1]);
	status = usnap_wait_child(pid, 20, what);
	printf("  %s: logged \"%s\"\n", what, logged);
	ck_assert_msg(strstr(logged, "lazy restore failed"), "%s: nothing reached the log hook", what);
	munmap(logged, 4096);
	if (read(p[0], &code, sizeof(code)) != sizeof(code))
		code = 0;
	close(p[0]);
	printf("  %s: child %s %d (si_code %s) after %.1f ms\n", what,
	       WIFSIGNALED(status) ? "killed by signal" : "exited",
	       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
	       code == BUS_MCEERR_AR ? "BUS_MCEERR_AR: a poisoned page" : code == BUS_ADRERR ? "BUS_ADRERR: a poisoned page"
	       : code == SI_TKILL ? "SI_TKILL: tgkill" : "?",
	       usnap_ms_since(t0));
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "%s: the child %s %d, not SIGBUS", what,
		      WIFSIGNALED(status) ? "got signal" : "exited with", WIFSIGNALED(status) ? WTERMSIG(status)
									      : WEXITSTATUS(status));
	ck_assert_msg(SIGBUS_FROM(code), "%s: SIGBUS with si_code %d, not %s", what, code, SIGBUS_WANT);
}

/* Faults only: a good page is right, the bad page's touch gets SIGBUS. */
static void child_touch_bad(const char *path, size_t bad)
{
	struct usnap_mem dst;
	uffdsnap_lazy_t *lz;
	size_t good = bad > 200 ? 0 : LEN / usnap_page - 1;

	usnap_memfd(&dst, LEN);
	lz = start(path, &dst, UFFDSNAP_LAZY_NO_PREFETCH, NULL);
	if (memcmp(dst.addr + good * usnap_page, fx.want + good * usnap_page, usnap_page))
		_exit(CHILD_WRONG_DATA);
	(void)*(volatile uint8_t *)(dst.addr + bad * usnap_page + 8);
	(void)lz;
}

/* With the prefetcher: wait() reports the failure, then a touch of the lost
 * page gets SIGBUS after the registration is gone. */
static void child_wait_then_touch(const char *path, size_t bad)
{
	struct usnap_mem dst;
	uffdsnap_lazy_t *lz;

	usnap_memfd(&dst, LEN);
	lz = start(path, &dst, 0, NULL);
	if (uffdsnap_lazy_wait(lz) == 0)
		_exit(CHILD_NO_ERROR);
	fprintf(stderr, "  wait(): %s\n", uffdsnap_lazy_error(lz));
	for (size_t p = 0; p < LEN / usnap_page; p += 97)
		if (p / 64 != bad / 64 && memcmp(dst.addr + p * usnap_page, fx.want + p * usnap_page, usnap_page))
			_exit(CHILD_WRONG_DATA);
	(void)*(volatile uint8_t *)(dst.addr + bad * usnap_page + 8);
}

START_TEST(lazy_corrupt_chunk)
{
	char bad_path[PATH_MAX + 16];
	size_t bad;

	usnap_watchdog(90, "lazy_corrupt_chunk");
	fixture();
	bad = usnap_snapfile_flipped(&fx, "flipped", bad_path);
	expect_sigbus(child_touch_bad, bad_path, bad, "corrupt chunk, faults only");
	expect_sigbus(child_wait_then_touch, bad_path, bad, "corrupt chunk, after wait()");
	usnap_snapfile_free(&fx);
}
END_TEST

/* The snapshot file is cut short (and unlinked) after the restore started. */
static void child_truncate(const char *path, size_t unused)
{
	struct usnap_mem dst;
	uffdsnap_lazy_t *lz;

	(void)unused;
	usnap_memfd(&dst, LEN);
	lz = start(path, &dst, UFFDSNAP_LAZY_NO_PREFETCH, NULL);
	if (memcmp(dst.addr, fx.want, usnap_page))
		_exit(CHILD_WRONG_DATA);
	/* an unlinked file stays readable through the open descriptors; a
	 * truncated one does not */
	if (truncate(path, 4096) || unlink(path))
		_exit(CHILD_WRONG_DATA);
	(void)*(volatile uint8_t *)(dst.addr + LEN - usnap_page);
	(void)lz;
}

START_TEST(lazy_file_truncated)
{
	char copy[PATH_MAX + 16];
	uint8_t *bytes;
	size_t len;

	usnap_watchdog(60, "lazy_file_truncated");
	fixture();
	bytes = usnap_slurp(fx.path, &len);
	snprintf(copy, sizeof(copy), "%s/copy", fx.dir);
	usnap_write_file(copy, bytes, len);
	free(bytes);
	expect_sigbus(child_truncate, copy, 0, "file truncated and unlinked");
	usnap_snapfile_free(&fx);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	usnap_test_require_uffd();
#ifdef USNAP_TEST_NO_POISON
	usnap_inject_hide_features(UFFD_FEATURE_POISON);
#endif
	s = suite_create("restore-lazy");
	tc = tcase_create("lazy");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, lazy_sequential);
	tcase_add_test(tc, lazy_random);
	tcase_add_test(tc, lazy_anon_private);
	tcase_add_test(tc, restore_fault_chunks);
	tcase_add_test(tc, lazy_two_regions);
	tcase_add_test(tc, lazy_mismatch);
	suite_add_tcase(s, tc);
	/* the one case test-restore-lazy-nopoison runs (CK_RUN_CASE=failure) */
	tc = tcase_create("failure");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, lazy_corrupt_chunk);
	tcase_add_test(tc, lazy_file_truncated);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
