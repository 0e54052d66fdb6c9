/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * live-snapshot: snapshot a memfd while writer threads hammer it, then prove
 * the snapshot is byte-exact.
 *
 *   1. Map a memfd (1 GiB by default) and fill it like a real heap would look:
 *      log-like text, random bytes, pages of zeros and never-touched holes.
 *   2. Start writer threads doing 8-byte stores to random pages at full speed.
 *   3. Take the snapshot mid-flight. To have something to compare with, the
 *      demo pauses its writers, copies the memfd to a reference buffer, calls
 *      uffdsnap_begin_file() and lets the writers go. Only begin's duration is
 *      the library's pause; the reference copy is the demo's own cost and is
 *      reported separately.
 *   4. The writers keep storing while the library sweeps, compresses and
 *      writes the snapshot; each first store to a page waits for that page to
 *      be copied.
 *   5. Read the file back with the reader API and compare it with the
 *      reference, byte for byte.
 *
 * Needs root (or access to /dev/userfaultfd) and Linux 5.19+.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MIB (1024.0 * 1024.0)
#define STRIPE (1u << 20)      /* the fill pattern changes every 1 MiB */
#define STORES_PER_CHECK 64    /* stores between looks at the pause/stop flags */
#define ANYWHERE_ODDS 65536    /* one store in this many lands anywhere: zero pages, holes */
#define VERIFY_CHUNK (32u << 20)

enum kind { TEXT, RANDOM, ZERO, HOLE, NKINDS };
static const char *const kind_name[NKINDS] = { "text", "random", "zero pages", "holes" };

/*
 * 40% text, 25% random, 15% zero pages, 20% holes, interleaved so that every
 * part of the region sees a mix.
 */
static const enum kind pattern[20] = {
	TEXT, RANDOM, TEXT, ZERO, HOLE, TEXT, RANDOM, TEXT, HOLE, ZERO,
	TEXT, RANDOM, HOLE, TEXT, RANDOM, ZERO, TEXT, HOLE, RANDOM, TEXT,
};

struct writer {
	pthread_t thread;
	struct demo *d;
	uint64_t seed;
	/* Published every STORES_PER_CHECK stores; own cache line so that
	 * counting does not slow the other writers down. */
	_Alignas(64) _Atomic uint64_t stores;
};

struct demo {
	/* options */
	size_t size;
	unsigned nwriters;
	const char *out;
	double seconds;

	int memfd;
	uint8_t *base;
	size_t ps;
	uint64_t stripe_pages;
	uint64_t nstripes;
	uint64_t *hot;          /* text and random stripes: the writers' working set */
	uint64_t nhot;
	uint8_t *ref;           /* the region at the snapshot instant */

	atomic_bool pause, stop;
	pthread_barrier_t parked, resumed;
	struct writer *w;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64*: fast enough that the stores, not the generator, set the pace. */
static uint64_t rnd(uint64_t *x)
{
	*x ^= *x >> 12;
	*x ^= *x << 25;
	*x ^= *x >> 27;
	return *x * 0x2545f4914f6cdd1dull;
}

static enum kind kind_of(uint64_t stripe)
{
	return pattern[stripe % 20];
}

static void die(const char *what, int err)
{
	fprintf(stderr, "live-snapshot: %s: %s\n", what, strerror(err));
	exit(1);
}

static void die_uffdsnap(const char *what, int err)
{
	const char *detail = uffdsnap_last_error();

	fprintf(stderr, "live-snapshot: %s failed: %s\n", what, uffdsnap_strerror(err));
	if (detail[0])
		fprintf(stderr, "  detail: %s\n", detail);
	exit(1);
}

/* ---- progress ------------------------------------------------------------------ */

/* "what: 42 % (210 of 500 MiB)" on one line of a terminal's stderr, redrawn;
 * nothing when stderr is a file or pipe. done == total ends the line. */
static void progress(const char *what, uint64_t done, uint64_t total)
{
	static int tty = -1;

	if (tty < 0)
		tty = isatty(STDERR_FILENO);
	if (!tty || !total)
		return;
	fprintf(stderr, "\r%s: %3.0f %% (%.0f of %.0f MiB)%s", what, 100.0 * (double)done / (double)total,
		done / 1048576.0, total / 1048576.0, done >= total ? "\n" : "");
	fflush(stderr);
}

/* ---- filling the region ------------------------------------------------------ */

/* Application log lines: compressible like real text, never two pages alike. */
static void gen_text(uint8_t *buf, size_t len, uint64_t *x, uint64_t *clock_ms)
{
	static const char *const level[] = { "INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR" };
	static const char *const method[] = { "GET", "GET", "GET", "POST", "PUT", "DELETE" };
	static const char *const path[] = { "/api/v1/items", "/api/v1/users", "/api/v1/orders",
					    "/static/app.js", "/healthz", "/login" };
	static const unsigned status[] = { 200, 200, 200, 200, 201, 204, 304, 404, 500 };
	size_t off = 0;
	char line[256];

	while (off < len) {
		uint64_t r = rnd(x), t = (*clock_ms += r % 50);
		int n = snprintf(line, sizeof(line),
				 "2025-06-%02u %02u:%02u:%02u.%03u %-5s worker-%u %s %s/%u status=%u bytes=%u "
				 "dur=%uus\n",
				 (unsigned)(1 + t / 86400000 % 28), (unsigned)(t / 3600000 % 24),
				 (unsigned)(t / 60000 % 60), (unsigned)(t / 1000 % 60), (unsigned)(t % 1000),
				 level[r % 6], (unsigned)(r >> 8) % 16, method[(r >> 12) % 6], path[(r >> 16) % 6],
				 (unsigned)(r >> 20) % 100000, status[(r >> 40) % 9], (unsigned)(r >> 44) % 65536,
				 (unsigned)(r >> 52) % 4096);
		size_t m = (size_t)n < len - off ? (size_t)n : len - off;

		memcpy(buf + off, line, m);
		off += m;
	}
}

static void gen_random(uint8_t *buf, size_t len, uint64_t *x)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rnd(x);
		memcpy(buf + i, &v, 8);
	}
}

static void pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("writing the memfd", errno);
		buf = (const uint8_t *)buf + n, len -= (size_t)n, off += n;
	}
}

static void pread_all(int fd, void *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pread(fd, buf, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("reading the memfd", n < 0 ? errno : EIO);
		buf = (uint8_t *)buf + n, len -= (size_t)n, off += n;
	}
}

static void setup_region(struct demo *d)
{
	uint64_t bytes[NKINDS] = { 0 }, x = 0x9e3779b97f4a7c15ull, clock_ms = 0;
	uint8_t *buf = malloc(STRIPE);
	double t0 = now();

	d->ps = (size_t)sysconf(_SC_PAGESIZE);
	d->stripe_pages = STRIPE / d->ps;
	d->nstripes = d->size / STRIPE;
	d->hot = calloc(d->nstripes, sizeof(*d->hot));
	if (!buf || !d->hot)
		die("allocating", ENOMEM);
	d->memfd = memfd_create("live-snapshot", MFD_CLOEXEC);
	if (d->memfd < 0)
		die("memfd_create", errno);
	if (ftruncate(d->memfd, (off_t)d->size))
		die("ftruncate", errno);
	d->base = mmap(NULL, d->size, PROT_READ | PROT_WRITE, MAP_SHARED, d->memfd, 0);
	if (d->base == MAP_FAILED)
		die("mmap", errno);

	/* Filled with pwrite() so that holes stay holes: the kernel only
	 * allocates the pages written. */
	for (uint64_t s = 0; s < d->nstripes; s++) {
		enum kind k = kind_of(s);

		bytes[k] += STRIPE;
		if (k == HOLE)
			continue;
		if (k != ZERO)
			d->hot[d->nhot++] = s;
		if (k == TEXT)
			gen_text(buf, STRIPE, &x, &clock_ms);
		else if (k == RANDOM)
			gen_random(buf, STRIPE, &x);
		else
			memset(buf, 0, STRIPE);
		pwrite_all(d->memfd, buf, STRIPE, (off_t)(s * STRIPE));
		/* Map the page tables now, so that the throughput measured before
		 * the snapshot is that of stores and not of first-touch faults.
		 * Best effort: MADV_POPULATE_WRITE is Linux 5.14+. */
		madvise(d->base + s * STRIPE, STRIPE, MADV_POPULATE_WRITE);
	}
	free(buf);
	printf("region: %.0f MiB memfd: %.0f MiB %s, %.0f MiB %s, %.0f MiB %s, %.0f MiB %s (filled in %.2f s)\n",
	       d->size / MIB, bytes[TEXT] / MIB, kind_name[TEXT], bytes[RANDOM] / MIB, kind_name[RANDOM],
	       bytes[ZERO] / MIB, kind_name[ZERO], bytes[HOLE] / MIB, kind_name[HOLE], now() - t0);
}

/* ---- writers --------------------------------------------------------------------- */

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct demo *d = w->d;
	uint64_t x = w->seed, n = 0;
	size_t slot_mask = (d->ps - 1) & ~(size_t)7;

	for (;;) {
		for (unsigned i = 0; i < STORES_PER_CHECK; i++) {
			uint64_t r = rnd(&x), page;

			/* Mostly the working set, like a real program; rarely anywhere,
			 * so that some zero pages get data and some holes get filled
			 * (MISSING faults during the snapshot). */
			if ((r >> 48) % ANYWHERE_ODDS)
				page = d->hot[r % d->nhot] * d->stripe_pages + (r >> 32) % d->stripe_pages;
			else
				page = (r >> 8) % (d->nstripes * d->stripe_pages);
			/* Relaxed atomic: writers may race on a word, which is fine
			 * for the demo but must not be a data race in C. */
			__atomic_store_n((uint64_t *)(d->base + page * d->ps + ((r >> 20) & slot_mask)), n + i,
					 __ATOMIC_RELAXED);
		}
		n += STORES_PER_CHECK;
		atomic_store_explicit(&w->stores, n, memory_order_relaxed);
		if (atomic_load_explicit(&d->pause, memory_order_acquire)) {
			/* Parked between two stores: nothing of ours is in flight, so
			 * the region holds still until the main thread lets us go. */
			pthread_barrier_wait(&d->parked);
			pthread_barrier_wait(&d->resumed);
		}
		if (atomic_load_explicit(&d->stop, memory_order_relaxed))
			return NULL;
	}
}

static uint64_t total_stores(const struct demo *d)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < d->nwriters; i++)
		n += atomic_load_explicit(&d->w[i].stores, memory_order_relaxed);
	return n;
}

static void start_writers(struct demo *d)
{
	int r;

	if (d->nwriters && !(d->w = aligned_alloc(_Alignof(struct writer), d->nwriters * sizeof(*d->w))))
		die("allocating writers", ENOMEM);
	if ((r = pthread_barrier_init(&d->parked, NULL, d->nwriters + 1)) ||
	    (r = pthread_barrier_init(&d->resumed, NULL, d->nwriters + 1)))
		die("pthread_barrier_init", r);
	for (unsigned i = 0; i < d->nwriters; i++) {
		d->w[i].d = d;
		d->w[i].seed = 0x1234567ull * (i + 1) | 1;
		atomic_init(&d->w[i].stores, 0);
		if ((r = pthread_create(&d->w[i].thread, NULL, writer_main, &d->w[i])))
			die("pthread_create", r);
	}
}

static void stop_writers(struct demo *d)
{
	atomic_store(&d->stop, true);
	for (unsigned i = 0; i < d->nwriters; i++)
		pthread_join(d->w[i].thread, NULL);
}

/* ---- verification ------------------------------------------------------------------ */

static void report_mismatch(const struct demo *d, uint64_t off, const uint8_t *got)
{
	uint64_t page = off / d->ps;

	fprintf(stderr, "live-snapshot: MISMATCH at region offset 0x%" PRIx64 " (page %" PRIu64 ", a %s stripe)\n",
		off, page, kind_name[kind_of(off / STRIPE)]);
	fprintf(stderr, "  expected:");
	for (unsigned i = 0; i < 16 && off + i < d->size; i++)
		fprintf(stderr, " %02x", d->ref[off + i]);
	fprintf(stderr, "\n  snapshot:");
	for (unsigned i = 0; i < 16 && off + i < d->size; i++)
		fprintf(stderr, " %02x", got[i]);
	fprintf(stderr, "\n");
}

/* 0 if the snapshot file holds exactly the reference. */
static int verify(const struct demo *d)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uffdsnap_reader_t *r;
	uint8_t *buf = malloc(VERIFY_CHUNK);
	double t0 = now();
	int id, err, ret = 1;

	if (!buf)
		die("allocating", ENOMEM);
	err = uffdsnap_reader_open(&r, d->out);
	if (err) {
		fprintf(stderr, "live-snapshot: cannot open %s: %s\n", d->out, uffdsnap_strerror(err));
		free(buf);
		return 1;
	}
	err = uffdsnap_reader_verify(r);
	if (err) {
		fprintf(stderr, "live-snapshot: %s does not verify: %s (%s)\n", d->out, uffdsnap_reader_error(r),
			uffdsnap_strerror(err));
		goto out;
	}
	if ((err = uffdsnap_reader_info(r, &info)) || (id = uffdsnap_reader_find(r, "demo")) < 0 ||
	    (err = uffdsnap_reader_region(r, (unsigned)id, &ri))) {
		fprintf(stderr, "live-snapshot: reading the index of %s: %s\n", d->out, uffdsnap_reader_error(r));
		goto out;
	}
	if (info.nregions != 1 || ri.length != d->size) {
		fprintf(stderr, "live-snapshot: %s holds %u region(s), 'demo' is %" PRIu64 " bytes; expected 1 "
			"region of %zu bytes\n", d->out, info.nregions, ri.length, d->size);
		goto out;
	}
	for (uint64_t off = 0; off < d->size; off += VERIFY_CHUNK) {
		size_t len = d->size - off < VERIFY_CHUNK ? d->size - off : VERIFY_CHUNK;

		progress("read back", off, d->size);
		err = uffdsnap_reader_read(r, (unsigned)id, off, buf, len);
		if (err) {
			fprintf(stderr, "live-snapshot: reading region offset 0x%" PRIx64 ": %s (%s)\n", off,
				uffdsnap_reader_error(r), uffdsnap_strerror(err));
			goto out;
		}
		if (memcmp(buf, d->ref + off, len)) {
			size_t i = 0;

			while (buf[i] == d->ref[off + i])
				i++;
			report_mismatch(d, off + i, buf + i);
			goto out;
		}
	}
	progress("read back", d->size, d->size);
	printf("read back:     %" PRIu64 " chunks, %.1f MiB file, verified and compared in %.2f s\n", info.chunks,
	       info.bytes_file / MIB, now() - t0);
	ret = 0;
out:
	uffdsnap_reader_free(r);
	free(buf);
	return ret;
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: live-snapshot [--size MiB] [--writers N] [--seconds S] [--out PATH]\n"
		"  --size MiB     size of the memfd (default 1024)\n"
		"  --writers N    writer threads storing to random pages (default 2); 0 runs\n"
		"                 without writers, e.g. under valgrind, which runs one thread\n"
		"                 at a time and so cannot run a writer waiting on a fault\n"
		"  --seconds S    how long the writers run before the snapshot (default 1); they\n"
		"                 then keep running until the snapshot is complete\n"
		"  --out PATH     snapshot file (default /tmp/live-snapshot.snap)\n");
}

static void parse_args(struct demo *d, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "writers", required_argument, NULL, 'w' },
		{ "seconds", required_argument, NULL, 't' },
		{ "out", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	unsigned long v;
	char *end;
	int c;

	d->size = 1024ul << 20;
	d->nwriters = 2;
	d->seconds = 1.0;
	d->out = "/tmp/live-snapshot.snap";
	while ((c = getopt_long(argc, argv, "s:w:t:o:h", longopts, NULL)) != -1) {
		errno = 0;
		switch (c) {
		case 's':
			v = strtoul(optarg, &end, 10);
			if (errno || *end || v == 0 || v > (1ul << 20))
				goto bad;
			d->size = v << 20;
			break;
		case 'w':
			v = strtoul(optarg, &end, 10);
			if (errno || *end || v > 1024)
				goto bad;
			d->nwriters = (unsigned)v;
			break;
		case 't':
			d->seconds = strtod(optarg, &end);
			if (errno || *end || !(d->seconds >= 0 && d->seconds <= 3600))
				goto bad;
			break;
		case 'o':
			d->out = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind == argc)
		return;
bad:
	fprintf(stderr, "live-snapshot: bad argument '%s'\n", optind < argc && c == -1 ? argv[optind] : optarg);
	usage(stderr);
	exit(2);
}

static void sleep_s(double s)
{
	struct timespec ts = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	struct demo d = { 0 };
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uffdsnap_t *ctx;
	uffdsnap_snap_t *snap;
	double t_warm, t_pause, t_ref, t_begin, t_resume, t_done;
	uint64_t n_warm, n_pause, n_done;
	int err, id;

	parse_args(&d, argc, argv);

	/* The context first: without userfaultfd there is nothing to show. */
	err = uffdsnap_new(&ctx, NULL);
	if (err)
		die_uffdsnap("uffdsnap_new", err);

	setup_region(&d);
	/* Populated now: first-touch faults would otherwise inflate the time
	 * the writers are paused for the reference copy. */
	d.ref = mmap(NULL, d.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (d.ref == MAP_FAILED)
		die("allocating the reference buffer", errno);
	id = uffdsnap_add_region(ctx, "demo", d.base, d.size);
	if (id < 0)
		die_uffdsnap("uffdsnap_add_region", id);

	start_writers(&d);
	t_warm = now();
	if (d.nwriters)
		printf("writers:       %u, storing 8 bytes at a time to random pages for %.1f s before the "
		       "snapshot\n", d.nwriters, d.seconds);
	sleep_s(d.seconds);

	/* The reference instant: writers parked, region copied, then begin. */
	atomic_store(&d.pause, true);
	pthread_barrier_wait(&d.parked);
	t_pause = now();
	n_warm = n_pause = total_stores(&d);
	/* pread(), not memcpy() from the mapping: a read fault on a hole of a
	 * MAP_SHARED shmem mapping allocates the page, and the holes are part of
	 * what this demo shows. pread() of a hole returns zeros and allocates
	 * nothing. */
	pread_all(d.memfd, d.ref, d.size, 0);
	t_ref = now();
	err = uffdsnap_begin_file(ctx, d.out, &snap);
	t_begin = now();
	atomic_store(&d.pause, false);
	pthread_barrier_wait(&d.resumed);
	t_resume = now();
	if (err) {
		stop_writers(&d);
		die_uffdsnap("uffdsnap_begin_file", err);
	}
	uffdsnap_snap_stats(snap, &st);
	printf("begin pause:   %.1f ms in uffdsnap_begin_file (%.1f ms of it protecting the region)\n",
	       (t_begin - t_ref) * 1e3, st.begin_ns * 1e-6);
	printf("demo's own:    %.1f ms reference copy; writers paused %.1f ms in all\n", (t_ref - t_pause) * 1e3,
	       (t_resume - t_pause) * 1e3);

	/* the program runs on; a terminal is shown how far the snapshot got */
	while (isatty(STDERR_FILENO) && !uffdsnap_done(snap)) {
		uffdsnap_snap_stats(snap, &st);
		progress("snapshot", (st.pages_fault + st.pages_sweep + st.pages_hole) * (uint64_t)getpagesize(),
			 st.pages_total * (uint64_t)getpagesize());
		usleep(200 * 1000);
	}
	err = uffdsnap_wait(snap);
	t_done = now();
	uffdsnap_snap_stats(snap, &st);
	progress("snapshot", st.pages_total * (uint64_t)getpagesize(), st.pages_total * (uint64_t)getpagesize());
	n_done = total_stores(&d);
	stop_writers(&d);
	uffdsnap_snap_stats(snap, &st);
	if (err) {
		fprintf(stderr, "live-snapshot: snapshot failed: %s\n  detail: %s\n", uffdsnap_strerror(err),
			uffdsnap_snap_error(snap));
		return 1;
	}

	printf("snapshot:      %.0f MiB in %.2f s = %.0f MiB/s; pages protected for %.2f s after begin\n",
	       d.size / MIB, st.elapsed_ns * 1e-9, d.size / MIB / (st.elapsed_ns * 1e-9), st.window_ns * 1e-9);
	printf("pages:         %" PRIu64 " = %" PRIu64 " copied by fault + %" PRIu64 " by sweep + %" PRIu64
	       " holes; %" PRIu64 " copied pages were zero\n",
	       st.pages_total, st.pages_fault, st.pages_sweep, st.pages_hole, st.pages_zero_found);
	printf("faults:        %" PRIu64 " handled; longest wait for a free buffer %.2f ms\n", st.faults,
	       st.fault_wait_max_ns * 1e-6);
	printf("compression:   %.1f MiB of page data -> %.1f MiB written (%.2fx; %.2fx of the region)\n",
	       st.bytes_raw / MIB, st.bytes_out / MIB, st.bytes_out ? (double)st.bytes_raw / st.bytes_out : 0.0,
	       st.bytes_out ? (double)d.size / st.bytes_out : 0.0);
	printf("buffer:        peak %.1f MiB of a %.1f MiB bound\n", st.buffer_peak / MIB, st.buffer_bound / MIB);
	if (d.nwriters)
		printf("writers:       %.1f M stores/s before, %.1f M stores/s during the snapshot\n",
		       n_warm / (t_pause - t_warm) * 1e-6, (n_done - n_pause) / (t_done - t_resume) * 1e-6);
	uffdsnap_snap_free(snap);
	uffdsnap_free(ctx);

	err = verify(&d);
	if (!err)
		printf("snapshot verified: byte-exact (%s)\n", d.out);
	munmap(d.ref, d.size);
	munmap(d.base, d.size);
	close(d.memfd);
	free(d.hot);
	free(d.w);
	return err;
}
