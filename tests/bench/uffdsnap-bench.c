/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffdsnap-bench: what a live snapshot costs the running program, for
 * libuffdsnap and for the two things people use instead, on one workload in
 * one run (issue #4).
 *
 *   uffdsnap  the library on a memfd region (MAP_SHARED);
 *   fork      the Redis BGSAVE way: the same contents in MAP_PRIVATE|MAP_ANONYMOUS
 *             memory, fork(), the child streams the memory through zstd (same
 *             level, same number of threads) to the same kind of sink and exits;
 *             the parent keeps running;
 *   stw       stop the writers, memcpy everything into a pre-faulted buffer,
 *             resume them, then compress and write the copy.
 *
 * Workload: W writer threads do 8-byte stores as fast as they can, to random
 * pages of the whole region (random) or walking their own slice of it word by
 * word (sequential). Each store writes back the value already there: the MMU
 * sees a write (write-protect and copy-on-write faults happen exactly as for
 * new data) but the contents stay the generated mix, so the compressor sees
 * the same realistic data in every method, however long the writers ran. Each writer reads the TSC after every store (random) or
 * after every page of 512 stores (sequential) -- a page is the unit that can
 * fault -- and keeps, per fixed time slice (1 ms), the number of stores and
 * the longest gap between two consecutive clock reads in preallocated arrays,
 * plus a histogram of gaps above a threshold ("slow stores": faults,
 * preemption). Everything the program reports about itself -- lost work,
 * stalls, fault latencies -- is computed from those arrays afterwards, so the
 * measuring costs the writers one rdtsc (~10 ns here) per clock read and no
 * system call.
 *
 * See tests/bench/README.md for every output field and how it is measured.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/userfaultfd.h>
#include <zstd.h>

#include "uffdsnap.h"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_TSC 1
#endif

/* The installed uapi headers may predate these (kernel-here.md). */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MiB (1024.0 * 1024.0)
#define PAGE 4096u
#define GROUP_BYTES (64u * 1024u)  /* data class granularity: 64 KiB "allocations" */
#define IO_BLOCK (1u << 20)        /* compressor input/output and sink write size */
#define EXTENT_SHIFT 20            /* --region-mib: the data lies in 1 MiB extents, evenly spread */
#define EXTENT_PAGES ((1u << EXTENT_SHIFT) / PAGE)

enum { M_UFFDSNAP, M_FORK, M_STW, NMETHODS };
static const char *const method_name[NMETHODS] = { "uffdsnap", "fork", "stw" };

/* --memory: what the uffdsnap method snapshots. fork and stw always run on
 * private anonymous memory (fork could not snapshot shared memory), with
 * transparent huge pages for anon-thp so all three use the same page size. */
enum { MEM_MEMFD, MEM_ANON, MEM_ANON_THP, MEM_HUGETLB, MEM_MEMFD_THP, NMEMORY };
static const char *const memory_name[NMEMORY] = { "memfd", "anon", "anon-thp", "hugetlb", "memfd-thp" };

enum { PAT_RANDOM, PAT_SEQUENTIAL, PAT_ZIPF, PAT_HOTSET, NPATTERNS };
static const char *const pattern_name[NPATTERNS] = { "random", "sequential", "zipf", "hotset" };
enum { SINK_FILE, SINK_NULL };
enum { CTL_RUN, CTL_PAUSE, CTL_STOP };

/* Slow-store histogram: 100 ns bins up to 409.6 µs, then powers of two. */
#define HIST_LIN 4096
#define HIST_BINS (HIST_LIN + 40)

struct options {
	size_t size;           /* bytes of data */
	size_t region;         /* bytes of region (--region-mib; = size unless sparse) */
	unsigned writers;
	unsigned zappers;      /* --zappers: MADV_DONTNEED threads on the uffdsnap method's shared region */
	int pattern;
	double zipf_s;         /* --pattern zipf:S */
	unsigned hot_pct;      /* --pattern hotset:P */
	unsigned methods;      /* bit per method */
	int sink;
	int level;
	bool json, verify, fsync, keep, adapt;
	int memory;            /* MEM_*: the uffdsnap method's region */
	const char *out_dir;
	const char *trace;
	const char *label;     /* copied into every output line (engine version, run id) */
	unsigned warmup_ms, settle_max_ms, slice_us, slow_us, timeout_s;
	unsigned timeline_ms;  /* JSON: the writers' rate in steps of this many ms; 0 = none */
	unsigned zthreads;     /* compression threads for every method; 0 = online CPUs */
	unsigned chunk_kib, buffer_mib; /* uffdsnap tuning; 0 = the library's defaults */
	uint64_t seed;
	double delta_pct;      /* --delta: > 0 runs run_delta() instead of the methods */
};

/* ---- clock ------------------------------------------------------------------------- */

/*
 * Writers read the TSC (constant and nonstop on this machine, and the kernel's
 * clocksource, so it agrees with CLOCK_MONOTONIC); everything else uses
 * CLOCK_MONOTONIC. The TSC is calibrated against it once, over 200 ms.
 */
static double ns_per_tick = 1.0;

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ticks(void)
{
#ifdef HAVE_TSC
	return __rdtsc();
#else
	return mono_ns();
#endif
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void clock_calibrate(void)
{
#ifdef HAVE_TSC
	uint64_t n0 = mono_ns(), t0 = ticks(), n1, t1;

	sleep_ms(200);
	n1 = mono_ns();
	t1 = ticks();
	ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

/* ---- small helpers ---------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "uffdsnap-bench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static inline uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t r = write(fd, p, len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

static void *map_anon(size_t len, bool populate)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);

	if (p == MAP_FAILED)
		die("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

/* ---- data ----------------------------------------------------------------------------------- */

/*
 * Realistic mixed contents, a pure function of (seed, offset) so every method
 * snapshots the same bytes: per 64 KiB group, 2/8 zero, 2/8 random
 * (incompressible: encrypted or already compressed data), 4/8 text-like
 * (log/JSON-ish words and numbers; zstd -1 gets ~3x on it).
 */
static const char *const words[64] = {
	"the", "user", "id", "name", "value", "error", "request", "GET", "/api/v1/items", "200",
	"OK", "timestamp", "session", "key", "cache", "hit", "miss", "\"status\":", "{", "}",
	"latency_ms", "POST", "404", "INFO", "WARN", "DEBUG", "handler", "connection", "closed",
	"opened", "from", "to", "bytes", "region", "page", "snapshot", "order", "customer", "price",
	"quantity", "true", "false", "null", "\"type\":", "event", "click", "view", "item", "cart",
	"checkout", "payment", "ok", "failed", "retry", "server", "client", "host", "port", "path",
	"query", "lang=en", "utf-8", "GMT", "2026-11-25",
};

static size_t put_uint(uint8_t *p, uint64_t v)
{
	char tmp[24];
	size_t n = 0, i;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10));
	for (i = 0; i < n; i++)
		p[i] = (uint8_t)tmp[n - 1 - i];
	return n;
}

static void fill_text(uint8_t *p, size_t n, uint64_t *s)
{
	size_t i = 0;

	while (i + 40 < n) {
		uint64_t r = xorshift(s);
		const char *w = words[r & 63];
		size_t l = strlen(w);

		memcpy(p + i, w, l);
		i += l;
		if (((r >> 6) & 3) == 0) {
			p[i++] = '=';
			i += put_uint(p + i, (r >> 16) % 100000);
		}
		p[i++] = ((r >> 9) & 15) == 0 ? '\n' : ' ';
	}
	memset(p + i, ' ', n - i);
}

static void fill_group(uint8_t *p, uint64_t seed, uint64_t group)
{
	uint64_t h = mix64(seed ^ mix64(group)), s = h | 1;
	unsigned cls = h & 7;

	if (cls < 2) {
		memset(p, 0, GROUP_BYTES);
	} else if (cls < 4) {
		for (size_t i = 0; i < GROUP_BYTES; i += 8) {
			uint64_t v = xorshift(&s);
			memcpy(p + i, &v, 8);
		}
	} else {
		fill_text(p, GROUP_BYTES, &s);
	}
}

/*
 * Where data page pg lives: the data is in 1 MiB extents, `stride` bytes
 * apart (stride = 1 MiB: one dense block; --region-mib: spread over the
 * region with holes between them). A shift, a multiply and a mask.
 */
static inline uint8_t *data_page(uint8_t *base, size_t stride, uint64_t pg)
{
	return base + (pg >> (EXTENT_SHIFT - 12)) * stride + (pg & (EXTENT_PAGES - 1)) * PAGE;
}

struct fill_arg {
	uint8_t *base;
	size_t stride;
	size_t from, to;  /* groups */
	uint64_t seed;
};

static void *fill_thread(void *arg)
{
	struct fill_arg *a = arg;
	bool sparse = a->stride != (1u << EXTENT_SHIFT);

	for (size_t g = a->from; g < a->to; g++) {
		uint8_t *p = data_page(a->base, a->stride, g * (GROUP_BYTES / PAGE));
		if (sparse)
			(void)madvise(p, GROUP_BYTES, MADV_POPULATE_WRITE);
		fill_group(p, a->seed, g);
	}
	return NULL;
}

/* Populate (one madvise instead of a trap per page: ~11 µs each in this guest)
 * and fill on every core. `len` bytes of data, in extents `stride` apart; the
 * bytes are a function of the data offset only, so sparse and dense regions
 * hold the same data. */
static void fill_data(uint8_t *base, size_t len, size_t stride, uint64_t seed, unsigned ncpu)
{
	size_t groups = len / GROUP_BYTES;
	pthread_t th[64];
	struct fill_arg a[64];

	/* On an old kernel this fails and the fill below faults the pages in. */
	if (stride == (1u << EXTENT_SHIFT))
		(void)madvise(base, len, MADV_POPULATE_WRITE);
	if (ncpu > 64)
		ncpu = 64;
	for (unsigned i = 0; i < ncpu; i++) {
		a[i] = (struct fill_arg){ base, stride, groups * i / ncpu, groups * (i + 1) / ncpu, seed };
		pthread_create(&th[i], NULL, fill_thread, &a[i]);
	}
	for (unsigned i = 0; i < ncpu; i++)
		pthread_join(th[i], NULL);
}

/* ---- compression for fork and stw (and the machine facts) ------------------------------------ */

/*
 * One zstd stream, `nthreads` zstd workers (the library's default is one
 * compression worker per online CPU), 1 MiB output blocks written to fd (or
 * discarded when fd < 0). Returns bytes of compressed output.
 */
static int64_t compress_write(const uint8_t *src, size_t len, int level, unsigned nthreads, int fd, bool do_fsync)
{
	ZSTD_CCtx *c = ZSTD_createCCtx();
	uint8_t *obuf = malloc(IO_BLOCK);
	int64_t out = 0;
	size_t off = 0;

	if (!c || !obuf)
		return -ENOMEM;
	ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
	/* Fails harmlessly (single-threaded) on a libzstd built without threads. */
	if (nthreads > 1)
		ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, (int)nthreads);
	for (;;) {
		size_t n = len - off < IO_BLOCK ? len - off : IO_BLOCK;
		ZSTD_EndDirective mode = off + n == len ? ZSTD_e_end : ZSTD_e_continue;
		ZSTD_inBuffer in = { src + off, n, 0 };
		size_t rem;

		do {
			ZSTD_outBuffer o = { obuf, IO_BLOCK, 0 };
			rem = ZSTD_compressStream2(c, &o, &in, mode);
			if (ZSTD_isError(rem)) {
				out = -EIO;
				goto done;
			}
			if (o.pos && fd >= 0 && write_full(fd, obuf, o.pos)) {
				out = -errno;
				goto done;
			}
			out += (int64_t)o.pos;
		} while (mode == ZSTD_e_end ? rem != 0 : in.pos < in.size);
		off += n;
		if (mode == ZSTD_e_end)
			break;
	}
	if (fd >= 0 && do_fsync && fsync(fd))
		out = -errno;
done:
	ZSTD_freeCCtx(c);
	free(obuf);
	return out;
}

/* ---- writers ------------------------------------------------------------------------------------ */

struct writer {
	pthread_t th;
	unsigned id;
	struct bench *b;
	/* Per slice: stores done, and the longest gap (µs) between two clock reads
	 * that ended in the slice. Written only by this writer; read by the main
	 * thread while it runs, hence relaxed atomics (plain moves on x86). */
	_Atomic uint32_t *cnt;
	_Atomic uint32_t *gap_us;
	_Atomic uint64_t hist[HIST_BINS];  /* slow stores by latency */
	uint64_t part_pg, part_npg;        /* sequential: own slice of the data pages */
} __attribute__((aligned(64)));

struct bench {
	struct options o;
	unsigned ncpu, zthreads;
	size_t nslices;
	uint8_t *base;           /* the region of the method being run */
	size_t npages;           /* data pages */
	size_t stride;           /* bytes from one 1 MiB data extent to the next */
	uint64_t origin_tick;    /* slice 0 starts here ... */
	uint64_t origin_ns;      /* ... which is this CLOCK_MONOTONIC time */
	uint64_t slice_ticks, slow_ticks;
	_Atomic int ctl __attribute__((aligned(64)));
	char pad[60];
	pthread_mutex_t lock;
	pthread_cond_t cv_paused, cv_run;
	unsigned npaused;
	struct writer *w;
	pthread_t *zap_th;       /* --zappers, while the uffdsnap method runs on shared memory */
	unsigned nzap;
	_Atomic bool zap_stop;
	_Atomic uint64_t zaps;
	FILE *trace;
	/* zipf and hotset: the page of rank r is (r * perm_mul) % npages, so the
	 * popular pages are spread over the region, not packed at its start */
	uint64_t perm_mul;
	uint32_t *zipf_tab;    /* ZIPF_STEPS + 1 ranks: the quantiles of the distribution */
};

static unsigned hist_bin(uint64_t ns)
{
	if (ns / 100 < HIST_LIN)
		return (unsigned)(ns / 100);
	/* ns >= 409600 > 2^18 */
	unsigned b = HIST_LIN + (63 - (unsigned)__builtin_clzll(ns)) - 18;
	return b < HIST_BINS ? b : HIST_BINS - 1;
}

/* The middle of a bin, in µs. */
static double hist_value_us(unsigned b)
{
	return b < HIST_LIN ? (b + 0.5) * 0.1 : 1.5 * ldexp(1.0, (int)(b - HIST_LIN + 18)) / 1000.0;
}

struct wlocal {
	uint64_t last, next, n, gmax;
	size_t idx;
};

/* Account the stores of the slice in progress (at a slice boundary, or before
 * pausing) and move to the slice containing tick t. */
static void slice_flush(struct bench *b, struct writer *w, struct wlocal *l, uint64_t t)
{
	uint32_t g = (uint32_t)((double)l->gmax * ns_per_tick / 1000.0);

	atomic_store_explicit(&w->cnt[l->idx], atomic_load_explicit(&w->cnt[l->idx], memory_order_relaxed) +
			      (uint32_t)l->n, memory_order_relaxed);
	if (g > atomic_load_explicit(&w->gap_us[l->idx], memory_order_relaxed))
		atomic_store_explicit(&w->gap_us[l->idx], g, memory_order_relaxed);
	l->n = 0;
	l->gmax = 0;
	l->idx = (size_t)((t - b->origin_tick) / b->slice_ticks);
	if (l->idx >= b->nslices)
		l->idx = b->nslices - 1; /* saturate; the watchdog ends the run long before */
	l->next = b->origin_tick + (l->idx + 1) * b->slice_ticks;
}

/* One clock read after a store (or a page of stores): gap, slow-store
 * histogram, slice accounting. */
static inline void tick(struct bench *b, struct writer *w, struct wlocal *l, uint64_t nstores)
{
	uint64_t t = ticks(), d = t - l->last;

	l->last = t;
	if (__builtin_expect(t >= l->next, 0))
		slice_flush(b, w, l, t);
	if (__builtin_expect(d > b->slow_ticks, 0)) {
		unsigned bin = hist_bin((uint64_t)((double)d * ns_per_tick));
		atomic_store_explicit(&w->hist[bin], atomic_load_explicit(&w->hist[bin], memory_order_relaxed) + 1,
				      memory_order_relaxed);
	}
	if (d > l->gmax)
		l->gmax = d;
	l->n += nstores;
}

/* Returns true to stop. The paused time is not hidden: the next gap spans it. */
static bool writer_ctl(struct bench *b, struct writer *w, struct wlocal *l)
{
	int c = atomic_load_explicit(&b->ctl, memory_order_acquire);

	if (c == CTL_STOP)
		return true;
	slice_flush(b, w, l, ticks());
	pthread_mutex_lock(&b->lock);
	b->npaused++;
	pthread_cond_broadcast(&b->cv_paused);
	while (atomic_load(&b->ctl) == CTL_PAUSE)
		pthread_cond_wait(&b->cv_run, &b->lock);
	b->npaused--;
	pthread_mutex_unlock(&b->lock);
	return atomic_load(&b->ctl) == CTL_STOP;
}

/*
 * The skewed patterns, from one random 64-bit x. zipf: the rank is read from
 * a table of the inverse CDF of the continuous approximation of Zipf's law
 * over the pages (P(rank k) ~ 1/k^s), interpolated between its 2^16 steps:
 * one multiply per store, no pow(). hotset: 90% of the stores go to the
 * first P% of ranks, the rest anywhere. Ranks become pages through the
 * permutation, a multiply and one modulo.
 */
#define ZIPF_STEPS 65536u

static inline uint64_t skewed_page(const struct bench *b, uint64_t x)
{
	uint64_t r, np = b->npages;

	if (b->o.pattern == PAT_ZIPF) {
		uint32_t i = (uint32_t)(x >> 48), f = (uint32_t)(x >> 32) & 0xffff;
		r = b->zipf_tab[i] + (((uint64_t)(b->zipf_tab[i + 1] - b->zipf_tab[i]) * f) >> 16);
	} else {
		uint64_t hot = np * b->o.hot_pct / 100 ? np * b->o.hot_pct / 100 : 1;
		r = (uint32_t)x < 3865470566u /* 0.9 * 2^32 */ ? ((x >> 32) * hot) >> 32 : ((x >> 32) * np) >> 32;
	}
	return (r * b->perm_mul) % np;
}

/* The rank-to-page permutation and the zipf table, for b->npages pages. */
static void skew_setup(struct bench *b)
{
	uint64_t np = b->npages;
	double s = b->o.zipf_s, e = 1.0 - s, top;

	b->perm_mul = 2147483647u % np; /* a prime above any page count: coprime to it */
	if (b->o.pattern != PAT_ZIPF)
		return;
	if (!b->zipf_tab && !(b->zipf_tab = malloc((ZIPF_STEPS + 1) * sizeof(*b->zipf_tab))))
		die("out of memory");
	/* CDF(k) ~ (k^e - 1) / (np^e - 1) over [1, np+1); s = 1: ln k / ln np */
	top = fabs(e) < 1e-9 ? log((double)np + 1) : pow((double)np + 1, e) - 1;
	for (uint32_t i = 0; i <= ZIPF_STEPS; i++) {
		double u = (double)i / ZIPF_STEPS;
		double k = fabs(e) < 1e-9 ? exp(u * top) : pow(1 + u * top, 1 / e);
		b->zipf_tab[i] = k - 1 >= (double)np ? (uint32_t)(np - 1) : (uint32_t)(k - 1);
	}
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct bench *b = w->b;
	uint64_t s = mix64(b->o.seed ^ (0x5157ull + w->id)) | 1;
	struct wlocal l = { 0 };

	l.last = ticks();
	slice_flush(b, w, &l, l.last);
	if (b->o.pattern != PAT_SEQUENTIAL) {
		uint8_t *base = b->base;
		uint64_t np = b->npages;
		size_t stride = b->stride;

		for (;;) {
			if (__builtin_expect(atomic_load_explicit(&b->ctl, memory_order_relaxed) != CTL_RUN, 0) &&
			    writer_ctl(b, w, &l))
				break;
			uint64_t x = xorshift(&s);
			/* page by multiply-shift (no division), word within the page */
			uint64_t pg = b->o.pattern == PAT_RANDOM ? ((x >> 32) * np) >> 32 : skewed_page(b, x);
			volatile uint64_t *p = (volatile uint64_t *)(data_page(base, stride, pg) + (x & 511) * 8);
			*p = *p; /* a real store; the contents stay the generated mix */
			tick(b, w, &l, 1);
		}
	} else {
		uint64_t i = 0;

		for (;;) {
			if (__builtin_expect(atomic_load_explicit(&b->ctl, memory_order_relaxed) != CTL_RUN, 0) &&
			    writer_ctl(b, w, &l))
				break;
			volatile uint64_t *p = (volatile uint64_t *)data_page(b->base, b->stride, w->part_pg + i);
			for (unsigned k = 0; k < PAGE / 8; k++)
				p[k] = p[k];
			tick(b, w, &l, PAGE / 8);
			if (++i >= w->part_npg)
				i = 0;
		}
	}
	slice_flush(b, w, &l, ticks());
	return NULL;
}

static void writers_start(struct bench *b)
{
	uint64_t part = b->npages / b->o.writers;

	atomic_store(&b->ctl, CTL_RUN);
	b->origin_ns = mono_ns();
	b->origin_tick = ticks();
	for (unsigned i = 0; i < b->o.writers; i++) {
		struct writer *w = &b->w[i];
		memset(w->hist, 0, sizeof(w->hist));
		for (size_t k = 0; k < b->nslices; k++) {
			atomic_store_explicit(&w->cnt[k], 0, memory_order_relaxed);
			atomic_store_explicit(&w->gap_us[k], 0, memory_order_relaxed);
		}
		w->part_pg = part * i;
		w->part_npg = part;
		if (pthread_create(&w->th, NULL, writer_main, w))
			die("pthread_create: %s", strerror(errno));
	}
}

static void writers_pause(struct bench *b)
{
	atomic_store(&b->ctl, CTL_PAUSE);
	pthread_mutex_lock(&b->lock);
	while (b->npaused < b->o.writers)
		pthread_cond_wait(&b->cv_paused, &b->lock);
	pthread_mutex_unlock(&b->lock);
}

static void writers_resume(struct bench *b, int to)
{
	pthread_mutex_lock(&b->lock);
	atomic_store(&b->ctl, to);
	pthread_cond_broadcast(&b->cv_run);
	pthread_mutex_unlock(&b->lock);
}

static void writers_stop(struct bench *b)
{
	writers_resume(b, CTL_STOP);
	for (unsigned i = 0; i < b->o.writers; i++)
		pthread_join(b->w[i].th, NULL);
}

/*
 * A zap storm (issue #17 goal 5): each zapper drops 8 random data pages of
 * the region from the page tables (MADV_DONTNEED) in a loop without pause. On
 * shared memory nothing is lost (the pages stay in the file, a protected one
 * keeps its uffd-wp marker); a userfaultfd asking for remove events would get
 * one per call, and its write-protect ioctls would fail with EAGAIN until
 * each is read.
 */
static void *zapper_main(void *arg)
{
	struct bench *b = arg;
	uint64_t st = mono_ns() ^ (uint64_t)(uintptr_t)&st, n = 0;

	while (!atomic_load_explicit(&b->zap_stop, memory_order_relaxed)) {
		for (int k = 0; k < 8; k++) {
			st = st * 6364136223846793005ull + 1442695040888963407ull;
			madvise(data_page(b->base, b->stride, (st >> 17) % b->npages), PAGE, MADV_DONTNEED);
		}
		n += 8;
	}
	atomic_fetch_add(&b->zaps, n);
	return NULL;
}

static void zappers_start(struct bench *b, unsigned n)
{
	atomic_store(&b->zap_stop, false);
	atomic_store(&b->zaps, 0);
	b->zap_th = calloc(n ? n : 1, sizeof(*b->zap_th));
	for (b->nzap = 0; b->nzap < n; b->nzap++)
		if (pthread_create(&b->zap_th[b->nzap], NULL, zapper_main, b))
			die("pthread_create: %s", strerror(errno));
}

static void zappers_stop(struct bench *b)
{
	atomic_store(&b->zap_stop, true);
	while (b->nzap)
		pthread_join(b->zap_th[--b->nzap], NULL);
	free(b->zap_th);
	b->zap_th = NULL;
}

static size_t slice_of(const struct bench *b, uint64_t t_ns)
{
	size_t i = (size_t)((t_ns - b->origin_ns) / (b->o.slice_us * 1000ull));

	return i < b->nslices ? i : b->nslices - 1;
}

/* Stores of all writers in slices [from, to). */
static uint64_t stores_between(const struct bench *b, size_t from, size_t to)
{
	uint64_t sum = 0;

	for (unsigned i = 0; i < b->o.writers; i++)
		for (size_t k = from; k < to; k++)
			sum += atomic_load_explicit(&b->w[i].cnt[k], memory_order_relaxed);
	return sum;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/*
 * The undisturbed rate (stores per slice): the median over 50 ms windows of
 * the warm-up, so a short burst of someone else's work on this shared
 * 2-CPU machine does not move it much.
 */
static double median_rate(const struct bench *b, size_t from, size_t to)
{
	size_t span = 50000 / b->o.slice_us, n = 0;
	double r[512];

	if (!span)
		span = 1;
	for (size_t k = from; k + span <= to && n < 512; k += span)
		r[n++] = (double)stores_between(b, k, k + span) / (double)span;
	if (!n)
		return (double)stores_between(b, from, to) / (double)(to - from);
	qsort(r, n, sizeof(r[0]), cmp_double);
	return r[n / 2];
}

/* The longest gap (µs) that ended in slices [from, to); the slice it ended
 * in into *at unless NULL, and the number of gaps longer than over_us into
 * *over unless NULL (a slice holds at most one gap longer than itself). */
static uint32_t max_gap_between(const struct bench *b, size_t from, size_t to, size_t *at, uint32_t over_us,
				unsigned *over)
{
	uint32_t m = 0;

	for (unsigned i = 0; i < b->o.writers; i++)
		for (size_t k = from; k < to; k++) {
			uint32_t g = atomic_load_explicit(&b->w[i].gap_us[k], memory_order_relaxed);
			if (over && g > over_us)
				++*over;
			if (g > m) {
				m = g;
				if (at)
					*at = k;
			}
		}
	return m;
}

static void hist_snap(const struct bench *b, uint64_t *h)
{
	memset(h, 0, HIST_BINS * sizeof(*h));
	for (unsigned i = 0; i < b->o.writers; i++)
		for (unsigned k = 0; k < HIST_BINS; k++)
			h[k] += atomic_load_explicit(&b->w[i].hist[k], memory_order_relaxed);
}

/* Count and percentiles (µs) of the slow stores between two snapshots. */
static uint64_t hist_stats(const uint64_t *h0, const uint64_t *h1, double *p50, double *p99, double *pmax)
{
	uint64_t n = 0, acc = 0;

	for (unsigned k = 0; k < HIST_BINS; k++)
		n += h1[k] - h0[k];
	*p50 = *p99 = *pmax = NAN;
	for (unsigned k = 0; k < HIST_BINS && n; k++) {
		uint64_t c = h1[k] - h0[k];
		if (!c)
			continue;
		if (acc < (n + 1) / 2 && acc + c >= (n + 1) / 2)
			*p50 = hist_value_us(k);
		if (acc < (n * 99 + 99) / 100 && acc + c >= (n * 99 + 99) / 100)
			*p99 = hist_value_us(k);
		acc += c;
		*pmax = hist_value_us(k);
	}
	return n;
}

/*
 * Percentiles of the n slowest stores between two snapshots. For uffdsnap,
 * n = the library's count of fault messages: a store that waited for the
 * handler (tens of µs) is far slower than the kernel-resolved re-fault of a
 * page left read-only after un-protect (~1 µs), so the n slowest stores are
 * the round trips (an estimate: preemption of the writer can mix in).
 * Ranked from the slowest, the first `skip` are left out: the library's
 * faults_waited, which waited for a buffer (milliseconds), are the slowest.
 */
static void hist_top(const uint64_t *h0, const uint64_t *h1, uint64_t skip, uint64_t n, double *p50, double *p99)
{
	uint64_t acc = 0, k50 = skip + n / 2 + 1, k99 = skip + n / 100 + 1;

	*p50 = *p99 = NAN;
	for (unsigned k = HIST_BINS; k-- > 0 && n;) {
		uint64_t c = h1[k] - h0[k];
		if (acc < k99 && acc + c >= k99)
			*p99 = hist_value_us(k);
		if (acc < k50 && acc + c >= k50)
			*p50 = hist_value_us(k);
		acc += c;
	}
}

/* ---- memory sampler -------------------------------------------------------------------------------- */

/*
 * Peak of (this process's VmRSS + what the fork child holds privately) during
 * a method, sampled every 2 ms. The child's private pages are the pages
 * copy-on-write duplicated for it: one per copy-on-write fault of the parent,
 * which the parent's minor-fault count (/proc/self/stat, cheap) counts while
 * the child lives. The exact figure, Private_Clean + Private_Dirty of the
 * child's /proc/PID/smaps_rollup, walks the child's page tables (36 ms per
 * 256 MiB here), so it is read rarely (<= 10% of the time) as a cross-check;
 * the larger of the two is used. The child's own compressor buffers are only
 * in the smaps figure.
 */
struct sampler {
	pthread_t th;
	_Atomic bool stop;
	_Atomic pid_t child;
	uint64_t self_kib, child_kib, cow_kib, minflt0, peak_kib;
	unsigned samples, child_samples;
	uint64_t child_cost_max, child_peak_kib;
};

static uint64_t status_kib(const char *path, const char *key)
{
	char buf[4096];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;
	char *p;
	uint64_t v = 0;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strstr(buf, key);
	if (p)
		v = strtoull(p + strlen(key), NULL, 10);
	return v;
}

static uint64_t child_private_kib(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	/* two reads: cheap compared with the page-table walk behind each */
	return status_kib(path, "Private_Clean:") + status_kib(path, "Private_Dirty:");
}

static uint64_t self_minflt(void)
{
	char buf[1024], *p;
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	ssize_t n;
	unsigned long long v = 0;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')'); /* fields after the command name: state ppid pgrp session tty tpgid flags minflt */
	if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu", &v) != 1)
		v = 0;
	return v;
}

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	uint64_t next_child = 0, child_every = 10000000;

	while (!atomic_load(&s->stop)) {
		uint64_t now = mono_ns();
		pid_t c = atomic_load(&s->child);

		s->self_kib = status_kib("/proc/self/status", "VmRSS:");
		s->samples++;
		if (c > 0)
			s->cow_kib = (self_minflt() - s->minflt0) * (PAGE / 1024);
		if (c > 0 && now >= next_child) {
			uint64_t t0 = mono_ns(), v = child_private_kib(c), cost = mono_ns() - t0;
			if (v)
				s->child_kib = v;
			s->child_samples++;
			if (cost > s->child_cost_max)
				s->child_cost_max = cost;
			if (cost * 10 > child_every)
				child_every = cost * 10;
			next_child = mono_ns() + child_every;
		} else if (c <= 0) {
			s->child_kib = s->cow_kib = 0;
		}
		uint64_t child = s->child_kib > s->cow_kib ? s->child_kib : s->cow_kib;
		if (s->self_kib + child > s->peak_kib)
			s->peak_kib = s->self_kib + child;
		if (s->child_kib > s->child_peak_kib)
			s->child_peak_kib = s->child_kib;
		sleep_ms(2);
	}
	return NULL;
}

/* ---- machine facts ------------------------------------------------------------------------------------ */

struct machine {
	unsigned cores;
	double memcpy_gb_s, zstd1_mb_s, zstd_all_mb_s, zstd_ratio, sink_mb_s;
	double async_p50_us, async_p99_us, ro_p50_us, ro_p99_us, plain_p50_us, plain_p99_us, protect_ns_page;
	double bare_rt_p50_us, bare_rt_p99_us;
	bool wp_async_ok;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Time one store into each page of [p, p+len), after whatever was set up. */
static void time_page_stores(uint8_t *p, size_t len, double *p50, double *p99)
{
	size_t n = len / PAGE;
	uint64_t *lat = malloc(n * sizeof(*lat));

	for (size_t i = 0; i < n; i++) {
		uint64_t t0 = ticks();
		*(volatile uint64_t *)(p + i * PAGE) = i;
		lat[i] = ticks() - t0;
	}
	qsort(lat, n, sizeof(*lat), cmp_u64);
	*p50 = (double)lat[n / 2] * ns_per_tick / 1000.0;
	*p99 = (double)lat[n * 99 / 100] * ns_per_tick / 1000.0;
	free(lat);
}

/*
 * The kernel's own write-protect fault (UFFD_FEATURE_WP_ASYNC: resolved in the
 * kernel, no message, no handler) on populated memfd pages, with a separate
 * userfaultfd -- the floor for the library's fault path. Then the fault every
 * shmem page takes on its first write after a synchronous un-protect (the PTE
 * is left read-only), and the cost of UFFDIO_WRITEPROTECT per populated page.
 */
static void measure_wp(struct machine *m)
{
	const size_t len = 32u << 20;
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int mfd = memfd_create("bench-wp", MFD_CLOEXEC);
	uint8_t *p;

	if (uffd < 0 || mfd < 0 || ftruncate(mfd, (off_t)len))
		goto out;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (p == MAP_FAILED)
		goto out;
	memset(p, 1, len);
	if (ioctl(uffd, UFFDIO_API, &api) == 0) {
		struct uffdio_register reg = { .range = { (uintptr_t)p, len }, .mode = UFFDIO_REGISTER_MODE_WP };
		struct uffdio_writeprotect wp = { .range = { (uintptr_t)p, len }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) == 0) {
			uint64_t t0 = mono_ns();
			if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0) {
				m->protect_ns_page = (double)(mono_ns() - t0) / (double)(len / PAGE);
				time_page_stores(p, len, &m->async_p50_us, &m->async_p99_us);
				m->wp_async_ok = true;
				/* protect again, un-protect synchronously: PTEs stay read-only */
				ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
				wp.mode = 0;
				if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0) {
					time_page_stores(p, len, &m->ro_p50_us, &m->ro_p99_us);
					/* the floor: the same stores, nothing to fault on */
					time_page_stores(p, len, &m->plain_p50_us, &m->plain_p99_us);
				}
			}
		}
	}
	munmap(p, len);
out:
	if (uffd >= 0)
		close(uffd);
	if (mfd >= 0)
		close(mfd);
}

/*
 * The bare synchronous round trip, the floor for the library's fault path:
 * populated memfd pages, write-protected through a userfaultfd of our own; a
 * minimal handler thread blocks in read(), copies the faulting page with one
 * memcpy (the least any snapshot does) and un-protects it, which wakes the
 * writer. One store per page, timed by the writer, in this run, on this
 * machine, under whatever load it carries.
 */
struct bare_rt {
	int uffd;
	uint8_t *p, *copy;
};

static void *bare_handler(void *arg)
{
	struct bare_rt *rt = arg;
	struct uffd_msg msg;

	while (read(rt->uffd, &msg, sizeof(msg)) == sizeof(msg)) {
		uintptr_t a = (uintptr_t)msg.arg.pagefault.address & ~(uintptr_t)(PAGE - 1);
		struct uffdio_writeprotect wp = { .range = { a, PAGE }, .mode = 0 };

		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		memcpy(rt->copy + (a - (uintptr_t)rt->p), (void *)a, PAGE);
		if (ioctl(rt->uffd, UFFDIO_WRITEPROTECT, &wp))
			break;
	}
	return NULL;
}

static void measure_bare_rt(struct machine *m)
{
	const size_t len = 8u << 20;
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	struct bare_rt rt = { .uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC) };
	int mfd = memfd_create("bench-rt", MFD_CLOEXEC);
	pthread_t th;

	m->bare_rt_p50_us = m->bare_rt_p99_us = NAN;
	if (rt.uffd < 0 || mfd < 0 || ftruncate(mfd, (off_t)len) || ioctl(rt.uffd, UFFDIO_API, &api))
		goto out;
	rt.p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, mfd, 0);
	if (rt.p == MAP_FAILED)
		goto out;
	rt.copy = map_anon(len, true);
	memset(rt.p, 1, len);
	struct uffdio_register reg = { .range = { (uintptr_t)rt.p, len }, .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .range = { (uintptr_t)rt.p, len }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	if (!ioctl(rt.uffd, UFFDIO_REGISTER, &reg) && !ioctl(rt.uffd, UFFDIO_WRITEPROTECT, &wp) &&
	    !pthread_create(&th, NULL, bare_handler, &rt)) {
		time_page_stores(rt.p, len, &m->bare_rt_p50_us, &m->bare_rt_p99_us);
		/* the handler sleeps in read(), a cancellation point */
		pthread_cancel(th);
		pthread_join(th, NULL);
	}
	munmap(rt.p, len);
	munmap(rt.copy, len);
out:
	if (rt.uffd >= 0)
		close(rt.uffd);
	if (mfd >= 0)
		close(mfd);
}

static void measure_machine(struct bench *b, struct machine *m)
{
	size_t len = b->o.size < (256u << 20) ? b->o.size : (256u << 20);
	size_t zlen = len < (128u << 20) ? len : (128u << 20);
	uint8_t *src = map_anon(len, true), *dst = map_anon(len, true);
	double best = 1e30;

	m->cores = b->ncpu;
	fill_data(src, len, 1u << EXTENT_SHIFT, b->o.seed, b->ncpu);
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = mono_ns();
		memcpy(dst, src, len);
		double s = (double)(mono_ns() - t0) / 1e9;
		if (s < best)
			best = s;
	}
	m->memcpy_gb_s = (double)len / best / 1e9;

	uint64_t t0 = mono_ns();
	int64_t z = compress_write(src, zlen, b->o.level, 1, -1, false);
	m->zstd1_mb_s = (double)zlen / ((double)(mono_ns() - t0) / 1e9) / 1e6;
	t0 = mono_ns();
	z = compress_write(src, zlen, b->o.level, b->ncpu, -1, false); /* all cores */
	m->zstd_all_mb_s = (double)zlen / ((double)(mono_ns() - t0) / 1e9) / 1e6;
	m->zstd_ratio = z > 0 ? (double)zlen / (double)z : NAN;

	m->sink_mb_s = INFINITY;
	if (b->o.sink == SINK_FILE) {
		char path[PATH_MAX];
		uint64_t s = 12345;
		for (size_t i = 0; i < len; i += 8) {
			uint64_t v = xorshift(&s);
			memcpy(dst + i, &v, 8);
		}
		snprintf(path, sizeof(path), "%s/uffdsnap-bench-%d.sinktest", b->o.out_dir, (int)getpid());
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			die("%s: %s", path, strerror(errno));
		t0 = mono_ns();
		for (size_t off = 0; off < len; off += IO_BLOCK)
			if (write_full(fd, dst + off, IO_BLOCK))
				die("writing %s: %s", path, strerror(errno));
		if (b->o.fsync)
			fsync(fd);
		m->sink_mb_s = (double)len / ((double)(mono_ns() - t0) / 1e9) / 1e6;
		close(fd);
		unlink(path);
	}
	munmap(src, len);
	munmap(dst, len);
	measure_wp(m);
	measure_bare_rt(m);
}

/* ---- output ------------------------------------------------------------------------------------------ */

struct emit {
	bool json, first;
};

static const char *g_label;

static void e_str(struct emit *e, const char *k, const char *v);

static void e_begin(struct emit *e, const char *kind)
{
	e->first = true;
	if (e->json)
		printf("{");
	else
		printf("%-9s", kind);
	if (g_label)
		e_str(e, "label", g_label);
}

static void e_key(struct emit *e, const char *k)
{
	if (e->json)
		printf("%s\"%s\":", e->first ? "" : ",", k);
	else
		printf(" %s=", k);
	e->first = false;
}

static void e_str(struct emit *e, const char *k, const char *v)
{
	e_key(e, k);
	printf(e->json ? "\"%s\"" : "%s", v);
}

static void e_num(struct emit *e, const char *k, double v)
{
	e_key(e, k);
	if (!isfinite(v))
		printf("null");
	else if (fabs(v) >= 100)
		printf("%.1f", v);
	else
		printf("%.3f", v);
}

static void e_int(struct emit *e, const char *k, uint64_t v)
{
	e_key(e, k);
	printf("%" PRIu64, v);
}

static void e_bool(struct emit *e, const char *k, bool v)
{
	e_key(e, k);
	printf(v ? "true" : "false");
}

static void e_u32_array(struct emit *e, const char *k, const uint32_t *v, size_t n)
{
	e_key(e, k);
	printf("[");
	for (size_t i = 0; i < n; i++)
		printf(i ? ",%" PRIu32 : "%" PRIu32, v[i]);
	printf("]");
}

static void e_end(struct emit *e)
{
	printf(e->json ? "}\n" : "\n");
	fflush(stdout);
}

/* ---- one method ------------------------------------------------------------------------------------------ */

struct result {
	bool ran, ok;
	double zaps_per_s;     /* --zappers: MADV_DONTNEED calls per second, warm-up to settled */
	double begin_ms, begin_protect_ms, window_ms, total_ms, max_stall_ms, base_max_stall_ms;
	double max_stall_from_ms;  /* the worst stall began this long after the instant (± a slice) */
	unsigned stalls_over_20ms; /* the writers' gaps longer than 20 ms, instant to settled (issue 17 goal 9) */
	double lost_work_ms, lost_work_window_ms, settle_ms, base_rate, base_slow_per_s;
	double fault_p50_us, fault_p99_us, tail_p50_us, uffd_p50_us, uffd_p99_us;
	double nowait_p50_us, nowait_p99_us, waited_p50_us, waited_p99_us;
	/* honesty: the undisturbed rate before and after, lost work at each
	 * (an interval), other processes' CPU use during the run */
	double rate_pre, rate_post, lost_work_lo_ms, lost_work_hi_ms, outside_cpu_pct;
	bool lost_work_clamped, disturbed;
	uint64_t faults, tail_faults;
	double extra_rss_peak_mib, child_smaps_peak_mib;
	int64_t bytes_out;
	bool settled;
	char verify[96];
	uffdsnap_stats_t st;
	/* The writers' rate (stores per ms, all writers) from 500 ms before the
	 * instant to the end of settle, in steps of --timeline-ms: for plots. */
	uint32_t *tl;
	size_t tl_n;
	double tl_t0_ms, tl_step_ms;
};

static pid_t g_child = -1;

static void on_alarm(int sig)
{
	static const char msg[] = "uffdsnap-bench: timeout, giving up\n";

	(void)sig;
	if (g_child > 0)
		kill(g_child, SIGKILL);
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing to do */
	}
	_exit(3);
}

static int discard_cb(void *user, const void *buf, size_t len)
{
	(void)user;
	(void)buf;
	(void)len;
	return 0;
}

/* Compare a snapshot file with the reference copy taken at the instant. */
static void verify_file(const char *path, const uint8_t *ref, size_t len, char *res, size_t rlen)
{
	uffdsnap_reader_t *r;
	uint8_t *buf = malloc(IO_BLOCK);
	int id, e;

	if ((e = uffdsnap_reader_open(&r, path))) {
		snprintf(res, rlen, "open failed: %s", uffdsnap_last_error());
		free(buf);
		return;
	}
	snprintf(res, rlen, "ok");
	if ((e = uffdsnap_reader_verify(r)) || (id = uffdsnap_reader_find(r, "bench")) < 0) {
		snprintf(res, rlen, "verify failed: %d %s", e, uffdsnap_reader_error(r));
		goto out;
	}
	for (size_t off = 0; off < len; off += IO_BLOCK) {
		if ((e = uffdsnap_reader_read(r, (unsigned)id, off, buf, IO_BLOCK))) {
			snprintf(res, rlen, "read failed at %zu: %d", off, e);
			break;
		}
		if (memcmp(buf, ref + off, IO_BLOCK)) {
			size_t i = 0;
			while (buf[i] == ref[off + i])
				i++;
			snprintf(res, rlen, "MISMATCH at byte %zu", off + i);
			break;
		}
	}
out:
	uffdsnap_reader_free(r);
	free(buf);
}

/*
 * CPU time used by everyone (/proc/stat: busy and stolen jiffies, all CPUs)
 * and by this process and its reaped children (the fork method's child).
 * Their difference over a run is other processes' load: it only ever slows
 * the writers down, so a run where it was large is marked disturbed.
 */
struct cpu_sample {
	uint64_t all, self, ns;
};

static void cpu_sample(struct cpu_sample *c)
{
	unsigned long long v[8] = { 0 }, ut = 0, st = 0, cut = 0, cst = 0;
	char buf[1024], *p;
	FILE *f = fopen("/proc/stat", "re");

	c->ns = mono_ns();
	c->all = c->self = 0;
	if (f) {
		if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
			   &v[6], &v[7]) == 8)
			c->all = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* all but idle and iowait */
		fclose(f);
	}
	f = fopen("/proc/self/stat", "re");
	if (f) {
		/* after the command name: state ppid pgrp session tty tpgid flags
		 * minflt cminflt majflt cmajflt utime stime cutime cstime */
		if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) &&
		    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &ut, &st, &cut,
			   &cst) == 4)
			c->self = ut + st + cut + cst;
		fclose(f);
	}
}

/* Other processes' CPU use since c0, in % of one CPU. */
static double outside_cpu_pct(const struct cpu_sample *c0)
{
	struct cpu_sample c1;
	double jiffies = (double)sysconf(_SC_CLK_TCK), other;

	cpu_sample(&c1);
	other = (double)(c1.all - c0->all) - (double)(c1.self - c0->self);
	return other > 0 ? other / jiffies / ((double)(c1.ns - c0->ns) / 1e9) * 100.0 : 0.0;
}

/*
 * The undisturbed rate again, after the snapshot has settled: over the same
 * length as the warm-up, capped at 500 ms. Outside load can only lower a rate,
 * so the higher of the two is the better estimate of the undisturbed rate.
 */
static void post_rate(struct bench *b, struct result *res, const struct cpu_sample *cpu0)
{
	unsigned ms = b->o.warmup_ms < 500 ? b->o.warmup_ms : 500;
	uint64_t ta = mono_ns();
	size_t sa, sz;

	sleep_ms(ms);
	sa = slice_of(b, ta) + 1, sz = slice_of(b, mono_ns());
	res->rate_post = median_rate(b, sa, sz);
	res->outside_cpu_pct = outside_cpu_pct(cpu0);
}

/*
 * Lost work from slice s0 (the instant) to ss (settled), and up to sd (the
 * snapshot written), at the better undisturbed rate (lost_work_ms) and at the
 * worse (the interval's other end). Never negative: a writer cannot do more
 * than its undisturbed rate, so more stores than that mean the rate was
 * underestimated (outside load during the measurement) and the run is
 * marked disturbed.
 */
static void lost_work(const struct bench *b, struct result *res, size_t s0, size_t sd, size_t ss)
{
	double slice_ms = b->o.slice_us / 1000.0, hi = fmax(res->rate_pre, res->rate_post);
	double lo = fmin(res->rate_pre, res->rate_post), done = (double)stores_between(b, s0, ss);
	double raw;

	if (!(lo > 0))
		lo = hi;
	res->base_rate = hi;
	raw = ((double)(ss - s0) * hi - done) / hi * slice_ms;
	res->lost_work_clamped = raw < 0;
	res->lost_work_ms = res->lost_work_hi_ms = fmax(raw, 0);
	res->lost_work_lo_ms = fmax(((double)(ss - s0) * lo - done) / lo * slice_ms, 0);
	res->lost_work_window_ms =
		fmax(((double)(sd - s0) * hi - (double)stores_between(b, s0, sd)) / hi * slice_ms, 0);
	/* 20% of a CPU taken by others, or the two rates 20% apart */
	res->disturbed = res->lost_work_clamped || res->outside_cpu_pct > 20.0 || lo < 0.8 * hi;
}

static void run_method(struct bench *b, int method, struct result *res)
{
	const struct options *o = &b->o;
	const size_t len = o->region; /* = o->size unless --region-mib */
	struct sampler sm = { 0 };
	uint64_t h_base0[HIST_BINS], h_base1[HIST_BINS], h0[HIST_BINS], h1[HIST_BINS], h2[HIST_BINS];
	uint64_t t0, t1, t_done, t_win_end, t_settle, base_kib;
	struct cpu_sample cpu0;
	char path[PATH_MAX];
	uint8_t *ref = NULL;
	int mfd = -1, r;
	double dummy;

	memset(res, 0, sizeof(*res));
	res->ran = true;
	snprintf(path, sizeof(path), "%s/uffdsnap-bench-%d-%s.snap", o->out_dir, (int)getpid(), method_name[method]);

	/* The region: shmem (or --memory) for the library, private anonymous
	 * memory (what a program such as Redis has) for fork and stw. Same bytes
	 * in all. */
	if (method == M_UFFDSNAP && (o->memory == MEM_MEMFD || o->memory == MEM_HUGETLB || o->memory == MEM_MEMFD_THP)) {
		bool huge = o->memory == MEM_HUGETLB;

		mfd = memfd_create("bench", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
		if (mfd < 0 || ftruncate(mfd, (off_t)len))
			die("memfd%s: %s%s", huge ? " (MFD_HUGETLB)" : "", strerror(errno),
			    huge ? ": reserve huge pages first (echo N > /proc/sys/vm/nr_hugepages)" : "");
		b->base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | (huge ? MAP_POPULATE : 0), mfd, 0);
		if (b->base == MAP_FAILED)
			die("mmap memfd: %s%s", strerror(errno),
			    huge ? ": reserve huge pages first (echo N > /proc/sys/vm/nr_hugepages)" : "");
		if (o->memory == MEM_MEMFD_THP && madvise(b->base, len, MADV_HUGEPAGE))
			die("MADV_HUGEPAGE on the memfd: %s", strerror(errno));
	} else {
		/* sparse: no commit charge for the holes (64 GiB > RAM is refused otherwise) */
		b->base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | (len > o->size ? MAP_NORESERVE : 0), -1, 0);
		if (b->base == MAP_FAILED)
			die("mmap %zu bytes: %s", len, strerror(errno));
		if ((o->memory == MEM_ANON_THP || o->memory == MEM_MEMFD_THP) && madvise(b->base, len, MADV_HUGEPAGE))
			die("MADV_HUGEPAGE: %s", strerror(errno));
	}
	fill_data(b->base, o->size, b->stride, o->seed, b->ncpu);
	b->npages = o->size / PAGE;
	skew_setup(b);
	if (o->verify && method == M_UFFDSNAP)
		ref = map_anon(len, true);

	/* Warm-up: the undisturbed rate, measured now, on this region. The first
	 * 100 ms (thread start, caches) are left out. */
	writers_start(b);
	if (o->zappers && method == M_UFFDSNAP && mfd >= 0)
		zappers_start(b, o->zappers);
	sleep_ms(100);
	cpu_sample(&cpu0);
	uint64_t tb0 = mono_ns();
	hist_snap(b, h_base0);
	sleep_ms(o->warmup_ms);
	uint64_t tb1 = mono_ns();
	hist_snap(b, h_base1);
	size_t sb0 = slice_of(b, tb0) + 1, sb1 = slice_of(b, tb1);
	res->base_rate = res->rate_pre = median_rate(b, sb0, sb1); /* stores per slice */
	res->base_max_stall_ms = max_gap_between(b, sb0, sb1, NULL, 0, NULL) / 1000.0;
	res->base_slow_per_s = (double)hist_stats(h_base0, h_base1, &dummy, &dummy, &dummy) /
			       ((double)(tb1 - tb0) / 1e9);

	/* Memory above the program's own: everything from here on. */
	base_kib = status_kib("/proc/self/status", "VmRSS:");
	sm.peak_kib = base_kib;
	pthread_create(&sm.th, NULL, sampler_main, &sm);

	uffdsnap_t *ctx = NULL;
	uffdsnap_snap_t *snap = NULL;
	uint8_t *copy = NULL;
	int pfd[2] = { -1, -1 };
	pid_t pid = -1;

	if (method == M_UFFDSNAP) {
		uffdsnap_opts_t uo;
		uffdsnap_opts_init(&uo);
		uo.zstd_level = o->level;
		uo.compress_threads = (int)o->zthreads;
		if (o->chunk_kib)
			uo.chunk_bytes = (size_t)o->chunk_kib << 10;
		if (o->buffer_mib)
			uo.buffer_bytes = (size_t)o->buffer_mib << 20;
		if (o->fsync)
			uo.flags |= UFFDSNAP_OPT_FSYNC;
		if (o->adapt)
			uo.flags |= UFFDSNAP_OPT_ADAPT;
		if ((r = uffdsnap_new(&ctx, &uo)) < 0)
			die("uffdsnap_new: %s (%s)", uffdsnap_strerror(r), uffdsnap_last_error());
		if ((r = uffdsnap_add_region(ctx, "bench", b->base, len)) < 0)
			die("uffdsnap_add_region: %s (%s)", uffdsnap_strerror(r), uffdsnap_last_error());
	} else if (method == M_STW) {
		copy = map_anon(len, true); /* pre-faulted: the fair case for stw */
	} else if (pipe2(pfd, O_CLOEXEC)) {
		die("pipe: %s", strerror(errno));
	}
	sleep_ms(50);

	/* ---- the instant ---- */
	if (ref) {
		/* --verify: the reference is the memory at the instant, so the
		 * writers are held from the copy until begin has returned. */
		writers_pause(b);
		memcpy(ref, b->base, len);
	}
	hist_snap(b, h0);
	t0 = mono_ns();
	if (method == M_UFFDSNAP) {
		uffdsnap_sink_t *sink;
		if (o->sink == SINK_FILE)
			r = uffdsnap_sink_file(&sink, path, 0600);
		else
			r = uffdsnap_sink_callback(&sink, discard_cb, NULL);
		if (r || (r = uffdsnap_begin(ctx, sink, &snap)))
			die("uffdsnap_begin: %s (%s)", uffdsnap_strerror(r), uffdsnap_last_error());
		t1 = mono_ns();
		if (ref)
			writers_resume(b, CTL_RUN);
		r = uffdsnap_wait(snap);
		t_done = mono_ns();
		res->st.size = sizeof(res->st);
		uffdsnap_snap_stats(snap, &res->st);
		res->ok = r == 0;
		if (r)
			fprintf(stderr, "uffdsnap_wait: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_snap_error(snap));
		res->bytes_out = (int64_t)res->st.bytes_out;
		res->begin_protect_ms = (double)res->st.begin_ns / 1e6;
		/* the library's window starts when protection is complete (~t1) */
		t_win_end = t1 + res->st.window_ns;
		if (t_win_end > t_done)
			t_win_end = t_done;
	} else if (method == M_FORK) {
		sm.minflt0 = self_minflt();
		pid = fork();
		if (pid == 0) {
			/* The child: stream the memory as it was at fork() and exit. */
			int fd = -1;
			int64_t out;
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			close(pfd[0]);
			if (o->sink == SINK_FILE) {
				fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
				if (fd < 0)
					_exit(1);
			}
			out = compress_write(b->base, len, o->level, b->zthreads, fd, o->fsync);
			if (write(pfd[1], &out, sizeof(out)) != sizeof(out))
				_exit(1);
			_exit(out < 0);
		}
		t1 = mono_ns();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		g_child = pid;
		atomic_store(&sm.child, pid);
		close(pfd[1]);
		int status = 0;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		t_done = t_win_end = mono_ns();
		atomic_store(&sm.child, 0);
		g_child = -1;
		if (read(pfd[0], &res->bytes_out, sizeof(res->bytes_out)) != sizeof(res->bytes_out))
			res->bytes_out = -1;
		close(pfd[0]);
		res->ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && res->bytes_out > 0;
	} else {
		writers_pause(b);
		memcpy(copy, b->base, len);
		writers_resume(b, CTL_RUN);
		t1 = t_win_end = mono_ns();
		int fd = -1;
		if (o->sink == SINK_FILE && (fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
			die("%s: %s", path, strerror(errno));
		res->bytes_out = compress_write(copy, len, o->level, b->zthreads, fd, o->fsync);
		if (fd >= 0)
			close(fd);
		munmap(copy, len);
		t_done = mono_ns();
		res->ok = res->bytes_out > 0;
	}
	hist_snap(b, h1);

	/*
	 * Settle: the disturbance outlasts the snapshot (shmem pages un-protected
	 * by the library and the parent's pages after fork are left read-only, so
	 * their next write still faults). Lost work is counted until the rate over
	 * the last 200 ms is back to 90% of the warm-up rate, at least 300 ms and
	 * at most --settle-max-ms after the end.
	 */
	res->settled = false;
	for (;;) {
		sleep_ms(20);
		uint64_t now = mono_ns();
		size_t sn = slice_of(b, now);
		size_t span = 200000 / o->slice_us;
		if (now - t_done >= 300000000ull && sn > span + 2) {
			/* slices still open (a writer stuck in a fault has not
			 * flushed) read as low: that only makes this conservative */
			double rate = (double)stores_between(b, sn - 2 - span, sn - 2) / (double)span;
			if (rate >= 0.9 * res->base_rate) {
				res->settled = true;
				break;
			}
		}
		if (now - t_done >= o->settle_max_ms * 1000000ull)
			break;
	}
	t_settle = mono_ns() - 2 * o->slice_us * 1000ull;
	hist_snap(b, h2);
	post_rate(b, res, &cpu0);
	atomic_store(&sm.stop, true);
	pthread_join(sm.th, NULL);
	writers_stop(b);
	if (b->nzap) {
		zappers_stop(b);
		res->zaps_per_s = (double)atomic_load(&b->zaps) / ((double)(mono_ns() - tb0) / 1e9);
	}

	/* ---- derived numbers ---- */
	size_t s0 = slice_of(b, t0), sd = slice_of(b, t_done) + 1, ss = slice_of(b, t_settle) + 1;
	double slice_ms = o->slice_us / 1000.0;

	res->begin_ms = (double)(t1 - t0) / 1e6;
	res->window_ms = (double)(t_win_end - t0) / 1e6;
	res->total_ms = (double)(t_done - t0) / 1e6;
	res->settle_ms = (double)(t_settle - t_done) / 1e6;
	size_t s_max = s0;
	res->max_stall_ms = max_gap_between(b, s0, ss, &s_max, 20000, &res->stalls_over_20ms) / 1000.0;
	/* where the worst stall began, from the instant: < begin_ms means in begin */
	res->max_stall_from_ms = (double)(s_max + 1 - s0) * slice_ms - res->max_stall_ms;
	lost_work(b, res, s0, sd, ss);
	res->faults = hist_stats(h0, h1, &res->fault_p50_us, &res->fault_p99_us, &dummy);
	hist_top(h0, h1, 0, method == M_UFFDSNAP ? res->st.faults : 0, &res->uffd_p50_us, &res->uffd_p99_us);
	if (method == M_UFFDSNAP) {
		uint64_t nw = res->st.faults_waited < res->st.faults ? res->st.faults_waited : res->st.faults;
		hist_top(h0, h1, 0, nw, &res->waited_p50_us, &res->waited_p99_us);
		hist_top(h0, h1, nw, res->st.faults - nw, &res->nowait_p50_us, &res->nowait_p99_us);
	}
	res->tail_faults = hist_stats(h1, h2, &res->tail_p50_us, &dummy, &dummy);
	res->extra_rss_peak_mib = (double)(sm.peak_kib - base_kib) / 1024.0;
	res->child_smaps_peak_mib = (double)sm.child_peak_kib / 1024.0;
	if (getenv("BENCH_DEBUG"))
		fprintf(stderr, "sampler: %u samples, %u child samples, child read max %.3f ms\n", sm.samples,
			sm.child_samples, (double)sm.child_cost_max / 1e6);

	if (b->trace) {
		for (size_t k = s0 > 500 ? s0 - 500 : 0; k < ss; k++)
			fprintf(b->trace, "%s,%.3f,%" PRIu64 "\n", method_name[method],
				((double)k * slice_ms) - (double)(t0 - b->origin_ns) / 1e6, stores_between(b, k, k + 1));
	}

	if (o->timeline_ms) {
		size_t per = o->timeline_ms * 1000u / o->slice_us, pre = 500000 / o->slice_us;
		size_t from = s0 > pre ? s0 - pre : 0;

		if (!per)
			per = 1;
		res->tl_n = (ss - from + per - 1) / per;
		res->tl = malloc(res->tl_n * sizeof(*res->tl));
		if (!res->tl)
			die("out of memory");
		res->tl_t0_ms = (double)from * slice_ms - (double)(t0 - b->origin_ns) / 1e6;
		res->tl_step_ms = (double)per * slice_ms;
		for (size_t j = 0; j < res->tl_n; j++) {
			size_t a = from + j * per, z = a + per < ss ? a + per : ss;
			res->tl[j] = (uint32_t)llround((double)stores_between(b, a, z) / ((double)(z - a) * slice_ms));
		}
	}

	snprintf(res->verify, sizeof(res->verify), "%s", ref ? "" : "not requested");
	if (method == M_UFFDSNAP) {
		if (ref && o->sink == SINK_FILE && res->ok)
			verify_file(path, ref, len, res->verify, sizeof(res->verify));
		else if (ref)
			snprintf(res->verify, sizeof(res->verify), "needs --sink file");
		uffdsnap_snap_free(snap);
		uffdsnap_free(ctx);
	}
	if (ref)
		munmap(ref, len);
	if (o->sink == SINK_FILE && !o->keep)
		unlink(path);
	munmap(b->base, len);
	if (mfd >= 0)
		close(mfd);
	b->base = NULL;
}

/* ---- --delta PCT (issue 11) ------------------------------------------------------------------------------ */

/* One snapshot of ctx (full or delta) into a file of --out; its JSON line. */
static void delta_phase(struct bench *b, struct emit *e, uffdsnap_t *ctx, bool delta, const char *kind,
			double *total_ms, uint64_t *bytes)
{
	const struct options *o = &b->o;
	char path[PATH_MAX];
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uffdsnap_snap_t *snap;
	uint64_t t0, t1, t2;
	int r;

	snprintf(path, sizeof(path), "%s/uffdsnap-bench-%d-%s.snap", o->out_dir, (int)getpid(), kind);
	t0 = mono_ns();
	r = delta ? uffdsnap_begin_delta_file(ctx, path, &snap) : uffdsnap_begin_file(ctx, path, &snap);
	if (r)
		die("begin (%s): %s (%s)", kind, uffdsnap_strerror(r), uffdsnap_last_error());
	t1 = mono_ns();
	r = uffdsnap_wait(snap);
	t2 = mono_ns();
	if (r)
		die("%s: %s (%s)", kind, uffdsnap_strerror(r), uffdsnap_snap_error(snap));
	uffdsnap_snap_stats(snap, &st);
	uffdsnap_snap_free(snap);
	if (!o->keep)
		unlink(path);
	*total_ms = (double)(t2 - t0) / 1e6;
	*bytes = st.bytes_out;
	e_begin(e, kind);
	e_str(e, "kind", kind);
	e_int(e, "size_mib", o->size >> 20);
	e_num(e, "begin_ms", (double)(t1 - t0) / 1e6);
	e_num(e, "total_ms", *total_ms);
	e_int(e, "bytes_out", st.bytes_out);
	e_int(e, "pages_total", st.pages_total);
	e_int(e, "pages_unchanged", st.pages_unchanged);
	e_int(e, "pages_fault", st.pages_fault);
	e_int(e, "chunks", st.chunks);
	e_int(e, "depth", st.depth);
	e_end(e);
}

/*
 * --delta PCT: on one memfd region of --size MiB, the writers storing as
 * usual (the same bytes back: they fault, they change nothing), a full
 * snapshot from a context without UFFDSNAP_OPT_DELTA (the baseline) and one
 * from a context with it (what fingerprinting costs); then, writers paused,
 * PCT % of the pages get new bytes (random pages, or the first PCT % with
 * --pattern sequential: a hot set), and a delta is taken while the writers
 * run. Their rate between snapshots, once settled, is compared with the
 * option off (after the first full snapshot) and on (after the delta): the
 * option runs nothing between snapshots.
 */
static double ratio(double a, double b);

/*
 * The writers' rate once a snapshot's disturbance is over (shmem pages stay
 * read-only after it, so each page's next store still faults): wait until the
 * last 200 ms ran at 90 % of `base` (at most --settle-max-ms), then the median
 * over --warmup-ms.
 */
static double settled_rate(struct bench *b, double base)
{
	const size_t span = 200000 / b->o.slice_us;
	uint64_t t0 = mono_ns(), t;

	do {
		sleep_ms(20);
		t = mono_ns();
	} while (t - t0 < b->o.settle_max_ms * 1000000ull &&
		 (t - t0 < 300000000ull ||
		  (double)stores_between(b, slice_of(b, t) - 2 - span, slice_of(b, t) - 2) / (double)span < 0.9 * base));
	t0 = mono_ns();
	sleep_ms(b->o.warmup_ms);
	return median_rate(b, slice_of(b, t0) + 1, slice_of(b, mono_ns()));
}

static void run_delta(struct bench *b, struct emit *e, double pct)
{
	const struct options *o = &b->o;
	double full0_ms, full_ms, delta_ms, rate_base, rate0, rate1;
	uint64_t full0_b, full_b, delta_b, t0, x = o->seed | 1, nchg;
	uffdsnap_opts_t uo;
	uffdsnap_t *ctx;
	int mfd = memfd_create("bench-delta", MFD_CLOEXEC), r;

	if (o->region != o->size)
		die("--delta needs a dense region (no --region-mib)");
	if (mfd < 0 || ftruncate(mfd, (off_t)o->size))
		die("memfd: %s", strerror(errno));
	b->base = mmap(NULL, o->size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (b->base == MAP_FAILED)
		die("mmap memfd: %s", strerror(errno));
	fill_data(b->base, o->size, b->stride, o->seed, b->ncpu);
	b->npages = o->size / PAGE;
	writers_start(b);
	sleep_ms(100);
	t0 = mono_ns();
	sleep_ms(o->warmup_ms);
	rate_base = median_rate(b, slice_of(b, t0) + 1, slice_of(b, mono_ns()));

	for (int with = 0; with < 2; with++) {
		uffdsnap_opts_init(&uo);
		uo.zstd_level = o->level;
		uo.compress_threads = (int)o->zthreads;
		uo.flags = with ? UFFDSNAP_OPT_DELTA : 0;
		if ((r = uffdsnap_new(&ctx, &uo)) < 0 || (r = uffdsnap_add_region(ctx, "bench", b->base, o->size)) < 0)
			die("context: %s (%s)", uffdsnap_strerror(r), uffdsnap_last_error());
		if (with)
			break;
		delta_phase(b, e, ctx, false, "full-nofp", &full0_ms, &full0_b);
		rate0 = settled_rate(b, rate_base); /* between snapshots, the option off */
		uffdsnap_free(ctx);
	}
	delta_phase(b, e, ctx, false, "full", &full_ms, &full_b);
	settled_rate(b, rate_base);
	writers_pause(b);
	nchg = (uint64_t)((double)b->npages * pct / 100.0);
	for (uint64_t i = 0; i < nchg; i++) {
		uint64_t pg = o->pattern == PAT_SEQUENTIAL ? i : ((xorshift(&x) >> 32) * b->npages) >> 32;
		((uint64_t *)data_page(b->base, b->stride, pg))[xorshift(&x) & 511] ^= x | 1;
	}
	writers_resume(b, CTL_RUN);
	delta_phase(b, e, ctx, true, "delta", &delta_ms, &delta_b);
	rate1 = settled_rate(b, rate_base); /* between snapshots, the option on */
	writers_stop(b);
	uffdsnap_free(ctx);

	e_begin(e, "delta-ratios");
	e_str(e, "kind", "delta-ratios");
	e_int(e, "size_mib", o->size >> 20);
	e_num(e, "pct", pct);
	e_int(e, "pages_changed", nchg);
	e_num(e, "delta_total_vs_full", ratio(delta_ms, full_ms));
	e_num(e, "delta_bytes_vs_full", ratio((double)delta_b, (double)full_b));
	e_num(e, "full_fp_total_vs_nofp", ratio(full_ms, full0_ms));
	e_num(e, "rate_fp_on_vs_off", ratio(rate1, rate0));
	e_num(e, "rate_base_per_ms", rate_base * 1000.0 / o->slice_us);
	e_num(e, "rate_off_per_ms", rate0 * 1000.0 / o->slice_us);
	e_num(e, "rate_on_per_ms", rate1 * 1000.0 / o->slice_us);
	e_end(e);
	munmap(b->base, o->size);
	close(mfd);
	b->base = NULL;
}

/* ---- main ------------------------------------------------------------------------------------------------- */

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: uffdsnap-bench [options]\n"
		"  --size MiB              region size (default 256); with --region-mib: the data in it\n"
		"  --region-mib N          sparse: an N MiB region holding --size MiB of data in 1 MiB extents\n"
		"                          spread evenly, holes between; writers touch only the data\n"
		"                          (uffdsnap and fork; stw would need an N MiB copy and is skipped)\n"
		"  --writers N             writer threads (default 1)\n"
		"  --zappers N             uffdsnap on shared memory: N more threads MADV_DONTNEED 8 random pages\n"
		"                          at a time without pause, from the warm-up on (a zap storm; default 0)\n"
		"  --pattern random|sequential|zipf[:S]|hotset:P\n"
		"                          zipf: page popularity ~ 1/rank^S (S default 0.99); hotset: 90%% of the\n"
		"                          stores to P%% of the pages, the rest uniform; popular pages spread out\n"
		"  --method uffdsnap|fork|stw|all   (comma-separated list allowed; default all)\n"
		"  --sink file|null        file: snapshot files in --out; null: discard (default file)\n"
		"  --zstd-level N          (default 1, the library's default)\n"
		"  --out DIR               directory for snapshot files (default /var/tmp)\n"
		"  --json                  one JSON object per line\n"
		"  --verify                uffdsnap: check the file byte for byte against the memory at the instant\n"
		"                          (the writers are paused for the reference copy: timings then differ)\n"
		"  --fsync                 all methods fsync their output (uffdsnap: UFFDSNAP_OPT_FSYNC)\n"
		"  --adapt                 uffdsnap: UFFDSNAP_OPT_ADAPT (store chunks raw while a writer waits)\n"
		"  --memory KIND           uffdsnap's region: memfd (default), anon, anon-thp (fork and stw on THP\n"
		"                          too), hugetlb (MFD_HUGETLB: reserve nr_hugepages first), memfd-thp (memfd\n"
		"                          with MADV_HUGEPAGE: needs shmem_enabled advise or always; fork and stw on THP)\n"
		"  --keep                  keep snapshot files\n"
		"  --warmup-ms N           undisturbed-rate measurement per method (default 1000)\n"
		"  --settle-max-ms N       longest wait for the rate to recover after a snapshot (default 15000)\n"
		"  --slice-us N            rate slice (default 1000)\n"
		"  --slow-us N             a store slower than this counts as a fault (default 1)\n"
		"  --trace FILE            append per-slice store counts as CSV (method,t_ms,stores)\n"
		"  --timeline-ms N         JSON: the writers' rate from t0-500 ms to the end of settle in\n"
		"                          steps of N ms (timeline_* fields; default 10, 0 = none)\n"
		"  --timeout S             abort the whole run after S seconds (default 600)\n"
		"  --compress-threads N    zstd threads for every method (default: online CPUs, the library's default)\n"
		"  --chunk-kib N, --buffer-mib N   uffdsnap: chunk_bytes / buffer_bytes (default: the library's)\n"
		"  --label TEXT            copied into every output line\n"
		"  --seed N\n"
		"  --delta PCT             instead of the methods: a full snapshot (without and with\n"
		"                          UFFDSNAP_OPT_DELTA), PCT %% of the pages changed, then a delta\n");
	exit(code);
}

static unsigned parse_methods(const char *s)
{
	unsigned m = 0;
	char *dup = strdup(s), *save = NULL;

	for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (!strcmp(t, "all"))
			m |= (1u << NMETHODS) - 1;
		else if (!strcmp(t, "uffdsnap"))
			m |= 1u << M_UFFDSNAP;
		else if (!strcmp(t, "fork"))
			m |= 1u << M_FORK;
		else if (!strcmp(t, "stw"))
			m |= 1u << M_STW;
		else
			usage(1);
	}
	free(dup);
	return m;
}

static unsigned long num(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	if (*end || end == s)
		usage(1);
	return v;
}

/* --pattern zipf[:S] (0 < S <= 3, default 0.99) or hotset:P (1..99). */
static void parse_skew(const char *arg, struct options *o)
{
	char *end;

	if (!strncmp(arg, "zipf", 4) && (!arg[4] || arg[4] == ':')) {
		o->pattern = PAT_ZIPF;
		o->zipf_s = arg[4] ? strtod(arg + 5, &end) : 0.99;
		if ((arg[4] && *end) || !(o->zipf_s > 0 && o->zipf_s <= 3))
			die("--pattern zipf:S: S in (0, 3], not '%s'", arg + 4);
	} else if (!strncmp(arg, "hotset:", 7)) {
		o->pattern = PAT_HOTSET;
		o->hot_pct = (unsigned)strtoul(arg + 7, &end, 10);
		if (*end || !o->hot_pct || o->hot_pct > 99)
			die("--pattern hotset:P: P a percentage 1..99, not '%s'", arg + 7);
	} else {
		usage(1);
	}
}

static void parse(int argc, char **argv, struct options *o)
{
	static const struct option lo[] = {
		{ "size", 1, 0, 's' },      { "writers", 1, 0, 'w' },   { "pattern", 1, 0, 'p' },
		{ "method", 1, 0, 'm' },    { "sink", 1, 0, 'k' },      { "zstd-level", 1, 0, 'z' },
		{ "out", 1, 0, 'o' },       { "json", 0, 0, 'j' },      { "verify", 0, 0, 'v' },
		{ "fsync", 0, 0, 'f' },     { "keep", 0, 0, 'K' },      { "warmup-ms", 1, 0, 'W' },
		{ "settle-max-ms", 1, 0, 'S' }, { "slice-us", 1, 0, 'l' }, { "slow-us", 1, 0, 'L' },
		{ "trace", 1, 0, 't' },     { "timeout", 1, 0, 'T' },   { "seed", 1, 0, 'e' },
		{ "compress-threads", 1, 0, 'c' }, { "label", 1, 0, 'B' },
		{ "chunk-kib", 1, 0, 'C' }, { "buffer-mib", 1, 0, 'M' }, { "help", 0, 0, 'h' },
		{ "timeline-ms", 1, 0, 'R' }, { "region-mib", 1, 0, 'g' }, { "adapt", 0, 0, 'A' },
		{ "memory", 1, 0, 'y' },    { "delta", 1, 0, 'D' },     { "zappers", 1, 0, 'Z' },
		{ 0, 0, 0, 0 },
	};
	int c;

	*o = (struct options){ .size = 256u << 20, .writers = 1, .pattern = PAT_RANDOM, .methods = 7,
			       .sink = SINK_FILE, .level = 1, .out_dir = "/var/tmp", .warmup_ms = 1000,
			       .settle_max_ms = 15000, .slice_us = 1000, .slow_us = 1, .timeout_s = 600,
			       .timeline_ms = 10,
			       .seed = 0x75ffd5 };
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 's': o->size = (size_t)num(optarg) << 20; break;
		case 'g': o->region = (size_t)num(optarg) << 20; break;
		case 'w': o->writers = (unsigned)num(optarg); break;
		case 'Z': o->zappers = (unsigned)num(optarg); break;
		case 'p':
			if (!strcmp(optarg, "random")) o->pattern = PAT_RANDOM;
			else if (!strcmp(optarg, "sequential")) o->pattern = PAT_SEQUENTIAL;
			else parse_skew(optarg, o);
			break;
		case 'm': o->methods = parse_methods(optarg); break;
		case 'k':
			if (!strcmp(optarg, "file")) o->sink = SINK_FILE;
			else if (!strcmp(optarg, "null")) o->sink = SINK_NULL;
			else usage(1);
			break;
		case 'z': o->level = atoi(optarg); break;
		case 'o': o->out_dir = optarg; break;
		case 'j': o->json = true; break;
		case 'v': o->verify = true; break;
		case 'f': o->fsync = true; break;
		case 'A': o->adapt = true; break;
		case 'y':
			for (o->memory = 0; o->memory < NMEMORY && strcmp(optarg, memory_name[o->memory]); o->memory++)
				;
			if (o->memory == NMEMORY)
				die("--memory: memfd, anon, anon-thp or hugetlb, not '%s'", optarg);
			break;
		case 'K': o->keep = true; break;
		case 'W': o->warmup_ms = (unsigned)num(optarg); break;
		case 'S': o->settle_max_ms = (unsigned)num(optarg); break;
		case 'l': o->slice_us = (unsigned)num(optarg); break;
		case 'L': o->slow_us = (unsigned)num(optarg); break;
		case 't': o->trace = optarg; break;
		case 'T': o->timeout_s = (unsigned)num(optarg); break;
		case 'e': o->seed = num(optarg); break;
		case 'B': o->label = optarg; break;
		case 'C': o->chunk_kib = (unsigned)num(optarg); break;
		case 'M': o->buffer_mib = (unsigned)num(optarg); break;
		case 'c': o->zthreads = (unsigned)num(optarg); break;
		case 'R': o->timeline_ms = (unsigned)num(optarg); break;
		case 'D': o->delta_pct = atof(optarg); if (o->delta_pct <= 0 || o->delta_pct > 100) usage(1); break;
		case 'h': usage(0); break;
		default: usage(1);
		}
	}
	if (!o->size || o->size % (GROUP_BYTES) || !o->writers || o->writers > 64 || !o->slice_us || o->warmup_ms < 100)
		die("bad options: --size must be a positive number of MiB, --writers 1..64, --warmup-ms >= 100");
	if (!o->region)
		o->region = o->size;
	if (o->region < o->size)
		die("bad options: --region-mib must be at least --size");
	if (o->region > o->size) {
		if (o->verify)
			die("--verify needs a dense region (no --region-mib)");
		if (o->methods & (1u << M_STW))
			fprintf(stderr, "uffdsnap-bench: --region-mib: skipping stw (it would copy the whole region)\n");
		o->methods &= ~(1u << M_STW);
	}
}

static double ratio(double a, double b) { return b > 0 ? a / b : NAN; }

static void emit_honesty(struct emit *e, const struct bench *b, const struct result *r)
{
	e_num(e, "lost_work_lo_ms", r->lost_work_lo_ms);
	e_num(e, "lost_work_hi_ms", r->lost_work_hi_ms);
	e_bool(e, "lost_work_clamped", r->lost_work_clamped);
	e_num(e, "base_rate_pre_per_ms", r->rate_pre * 1000.0 / b->o.slice_us);
	e_num(e, "base_rate_post_per_ms", r->rate_post * 1000.0 / b->o.slice_us);
	e_num(e, "outside_cpu_pct", r->outside_cpu_pct);
	e_bool(e, "disturbed", r->disturbed);
}

static void emit_fault_split(struct emit *e, const struct result *r)
{
	e_int(e, "uffd_faults_waited", r->st.faults_waited);
	e_num(e, "fault_wait_total_ms", (double)r->st.fault_wait_ns / 1e6);
	e_num(e, "uffd_fault_nowait_p50_us", r->nowait_p50_us);
	e_num(e, "uffd_fault_nowait_p99_us", r->nowait_p99_us);
	e_num(e, "uffd_fault_waited_p50_us", r->waited_p50_us);
	e_num(e, "uffd_fault_waited_p99_us", r->waited_p99_us);
}

static void emit_pattern(struct emit *e, const struct options *o)
{
	e_str(e, "pattern", pattern_name[o->pattern]);
	if (o->pattern == PAT_ZIPF)
		e_num(e, "zipf_s", o->zipf_s);
	if (o->pattern == PAT_HOTSET)
		e_int(e, "hot_pct", o->hot_pct);
}

int main(int argc, char **argv)
{
	struct bench b = { 0 };
	struct machine m = { 0 };
	struct result res[NMETHODS] = { 0 };
	struct emit e = { 0 };
	struct utsname un;
	double load0[3] = { 0 }, load1[3] = { 0 };

	parse(argc, argv, &b.o);
	e.json = b.o.json;
	g_label = b.o.label;
	b.ncpu = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	b.stride = (b.o.region / (b.o.size >> EXTENT_SHIFT)) & ~(size_t)(PAGE - 1);
	b.zthreads = b.o.zthreads ? b.o.zthreads : b.ncpu;
	signal(SIGALRM, on_alarm);
	alarm(b.o.timeout_s);
	getloadavg(load0, 3);
	clock_calibrate();

	pthread_mutex_init(&b.lock, NULL);
	pthread_cond_init(&b.cv_paused, NULL);
	pthread_cond_init(&b.cv_run, NULL);
	b.nslices = (size_t)b.o.timeout_s * 1000000u / b.o.slice_us + 1;
	b.slice_ticks = (uint64_t)(b.o.slice_us * 1000.0 / ns_per_tick);
	b.slow_ticks = (uint64_t)(b.o.slow_us * 1000.0 / ns_per_tick);
	if (posix_memalign((void **)&b.w, 64, b.o.writers * sizeof(*b.w)))
		die("out of memory");
	memset(b.w, 0, b.o.writers * sizeof(*b.w));
	for (unsigned i = 0; i < b.o.writers; i++) {
		b.w[i].id = i;
		b.w[i].b = &b;
		b.w[i].cnt = calloc(b.nslices, sizeof(*b.w[i].cnt));
		b.w[i].gap_us = calloc(b.nslices, sizeof(*b.w[i].gap_us));
		if (!b.w[i].cnt || !b.w[i].gap_us)
			die("out of memory");
	}
	if (b.o.trace && !(b.trace = fopen(b.o.trace, "a")))
		die("%s: %s", b.o.trace, strerror(errno));

	measure_machine(&b, &m);
	uname(&un);
	e_begin(&e, "machine");
	e_str(&e, "kind", "machine");
	e_str(&e, "kernel", un.release);
	e_int(&e, "cores", m.cores);
	e_num(&e, "memcpy_gb_s", m.memcpy_gb_s);
	e_num(&e, "zstd_mb_s_1core", m.zstd1_mb_s);
	e_num(&e, "zstd_mb_s", m.zstd_all_mb_s);
	e_num(&e, "zstd_ratio", m.zstd_ratio);
	e_int(&e, "zstd_level", (uint64_t)b.o.level);
	e_int(&e, "compress_threads", b.zthreads);
	e_bool(&e, "adapt", b.o.adapt);
	e_str(&e, "memory", memory_name[b.o.memory]);
	e_num(&e, "sink_mb_s", m.sink_mb_s);
	e_bool(&e, "wp_async", m.wp_async_ok);
	e_num(&e, "wp_async_fault_p50_us", m.async_p50_us);
	e_num(&e, "wp_async_fault_p99_us", m.async_p99_us);
	e_num(&e, "ro_refault_p50_us", m.ro_p50_us);
	e_num(&e, "ro_refault_p99_us", m.ro_p99_us);
	e_num(&e, "plain_store_p50_us", m.plain_p50_us);
	e_num(&e, "wp_protect_ns_per_page", m.protect_ns_page);
	e_num(&e, "bare_uffd_rt_p50_us", m.bare_rt_p50_us);
	e_num(&e, "bare_uffd_rt_p99_us", m.bare_rt_p99_us);
	e_num(&e, "loadavg_start", load0[0]);
	e_end(&e);

	if (b.o.delta_pct > 0) {
		run_delta(&b, &e, b.o.delta_pct);
		b.o.methods = 0;
	}
	for (int k = 0; k < NMETHODS; k++) {
		struct result *r = &res[k];
		double bound_ms;

		if (!(b.o.methods & (1u << k)))
			continue;
		run_method(&b, k, r);
		/* the slowest stage of the pipeline for this amount of data */
		bound_ms = fmax((double)b.o.size / (m.memcpy_gb_s * 1e9),
				fmax((double)b.o.size / (m.zstd_all_mb_s * 1e6),
				     r->bytes_out > 0 ? (double)r->bytes_out / (m.sink_mb_s * 1e6) : 0)) * 1e3;
		e_begin(&e, method_name[k]);
		e_str(&e, "method", method_name[k]);
		e_int(&e, "size_mib", b.o.size >> 20);
		e_int(&e, "region_mib", b.o.region >> 20);
		e_int(&e, "writers", b.o.writers);
		if (r->zaps_per_s > 0) {
			e_int(&e, "zappers", b.o.zappers);
			e_num(&e, "zaps_per_s", r->zaps_per_s);
		}
		emit_pattern(&e, &b.o);
		e_str(&e, "sink", b.o.sink == SINK_FILE ? "file" : "null");
		e_str(&e, "memory", k == M_UFFDSNAP ? memory_name[b.o.memory]
				    : memory_name[b.o.memory == MEM_ANON_THP || b.o.memory == MEM_MEMFD_THP ? MEM_ANON_THP
														: MEM_ANON]);
		if (k == M_UFFDSNAP)
			e_bool(&e, "adapt", b.o.adapt);
		e_bool(&e, "ok", r->ok);
		e_num(&e, "begin_ms", r->begin_ms);
		e_num(&e, "max_stall_ms", r->max_stall_ms);
		e_num(&e, "max_stall_from_ms", r->max_stall_from_ms);
		e_int(&e, "stalls_over_20ms", r->stalls_over_20ms);
		e_num(&e, "lost_work_ms", r->lost_work_ms);
		e_num(&e, "lost_work_window_ms", r->lost_work_window_ms);
		emit_honesty(&e, &b, r);
		e_num(&e, "window_ms", r->window_ms);
		e_num(&e, "total_ms", r->total_ms);
		e_int(&e, "faults", r->faults);
		e_num(&e, "fault_p50_us", r->fault_p50_us);
		e_num(&e, "fault_p99_us", r->fault_p99_us);
		e_int(&e, "tail_faults", r->tail_faults);
		e_num(&e, "tail_fault_p50_us", r->tail_p50_us);
		e_num(&e, "settle_ms", r->settle_ms);
		e_bool(&e, "settled", r->settled);
		e_num(&e, "extra_rss_peak_mib", r->extra_rss_peak_mib);
		e_int(&e, "bytes_out", (uint64_t)(r->bytes_out > 0 ? r->bytes_out : 0));
		e_num(&e, "mb_s", (double)b.o.size / 1e6 / (r->total_ms / 1e3));
		e_num(&e, "pipeline_bound_ms", bound_ms);
		e_num(&e, "total_over_bound", r->total_ms / bound_ms);
		e_num(&e, "base_rate_per_ms", r->base_rate * 1000.0 / b.o.slice_us);
		e_num(&e, "base_max_stall_ms", r->base_max_stall_ms);
		e_num(&e, "base_slow_per_s", r->base_slow_per_s);
		if (k == M_FORK)
			e_num(&e, "child_smaps_peak_mib", r->child_smaps_peak_mib);
		if (k == M_UFFDSNAP) {
			e_int(&e, "pages_huge_remapped", r->st.pages_huge_remapped);
			e_num(&e, "begin_protect_ms", r->begin_protect_ms);
			e_int(&e, "protect_threads", r->st.protect_threads);
			e_int(&e, "chunks", r->st.chunks);
			e_int(&e, "chunks_uncompressed", r->st.chunks_uncompressed);
			e_int(&e, "uffd_faults", r->st.faults);
			e_num(&e, "uffd_fault_p50_us", r->uffd_p50_us);
			e_num(&e, "uffd_fault_p99_us", r->uffd_p99_us);
			emit_fault_split(&e, r);
			e_int(&e, "pages_fault", r->st.pages_fault);
			e_int(&e, "pages_sweep", r->st.pages_sweep);
			e_int(&e, "pages_zero_found", r->st.pages_zero_found);
			e_num(&e, "buffer_peak_mib", (double)r->st.buffer_peak / MiB);
			e_num(&e, "fault_wait_max_ms", (double)r->st.fault_wait_max_ns / 1e6);
			e_str(&e, "verify", r->verify);
		}
		if (r->tl && e.json) {
			e_num(&e, "timeline_t0_ms", r->tl_t0_ms);
			e_num(&e, "timeline_step_ms", r->tl_step_ms);
			e_u32_array(&e, "timeline_stores_per_ms", r->tl, r->tl_n);
		}
		e_end(&e);
		free(r->tl);
		r->tl = NULL;
	}

	getloadavg(load1, 3);
	const struct result *u = &res[M_UFFDSNAP], *f = &res[M_FORK], *s = &res[M_STW];
	if (u->ran && (f->ran || s->ran)) {
		e_begin(&e, "ratios");
		e_str(&e, "kind", "ratios");
		e_int(&e, "size_mib", b.o.size >> 20);
		e_int(&e, "region_mib", b.o.region >> 20);
		e_int(&e, "writers", b.o.writers);
		emit_pattern(&e, &b.o);
		e_str(&e, "sink", b.o.sink == SINK_FILE ? "file" : "null");
		if (f->ran) {
			e_num(&e, "begin_ms_vs_fork", ratio(u->begin_ms, f->begin_ms));
			e_num(&e, "lost_work_ms_vs_fork", ratio(u->lost_work_ms, f->lost_work_ms));
			e_num(&e, "lost_work_window_ms_vs_fork", ratio(u->lost_work_window_ms, f->lost_work_window_ms));
			e_num(&e, "max_stall_ms_vs_fork", ratio(u->max_stall_ms, f->max_stall_ms));
			e_num(&e, "total_ms_vs_fork", ratio(u->total_ms, f->total_ms));
			e_num(&e, "extra_rss_peak_mib_vs_fork", ratio(u->extra_rss_peak_mib, f->extra_rss_peak_mib));
		}
		if (s->ran) {
			e_num(&e, "begin_ms_vs_stw", ratio(u->begin_ms, s->begin_ms));
			e_num(&e, "lost_work_ms_vs_stw", ratio(u->lost_work_ms, s->lost_work_ms));
			e_num(&e, "lost_work_window_ms_vs_stw", ratio(u->lost_work_window_ms, s->lost_work_window_ms));
			e_num(&e, "max_stall_ms_vs_stw", ratio(u->max_stall_ms, s->max_stall_ms));
			e_num(&e, "total_ms_vs_stw", ratio(u->total_ms, s->total_ms));
			e_num(&e, "extra_rss_peak_mib_vs_stw", ratio(u->extra_rss_peak_mib, s->extra_rss_peak_mib));
		}
		e_num(&e, "fault_p50_vs_wp_async", ratio(u->fault_p50_us, m.async_p50_us));
		e_num(&e, "uffd_fault_p50_vs_wp_async", ratio(u->uffd_p50_us, m.async_p50_us));
		e_num(&e, "uffd_fault_p50_vs_bare_rt", ratio(u->uffd_p50_us, m.bare_rt_p50_us));
		e_num(&e, "uffd_fault_nowait_p50_vs_bare_rt", ratio(u->nowait_p50_us, m.bare_rt_p50_us));
		e_num(&e, "uffd_fault_nowait_p99_vs_p50", ratio(u->nowait_p99_us, u->nowait_p50_us));
		e_num(&e, "extra_rss_peak_vs_bound", ratio(u->extra_rss_peak_mib, (double)u->st.buffer_bound / MiB));
		e_num(&e, "buffer_bound_mib", (double)u->st.buffer_bound / MiB);
		e_num(&e, "loadavg_end", load1[0]);
		e_bool(&e, "disturbed", u->disturbed || f->disturbed || s->disturbed);
		e_end(&e);
	}
	if (b.trace)
		fclose(b.trace);
	for (unsigned i = 0; i < b.o.writers; i++) {
		free(b.w[i].cnt);
		free(b.w[i].gap_us);
	}
	free(b.w);
	for (int k = 0; k < NMETHODS; k++)
		if (res[k].ran && !res[k].ok)
			return 1;
	return 0;
}
