/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Soak driver (tests/soak/soak.sh runs it; never part of `meson test`):
 * back-to-back snapshots for a given time under mixed load, each one checked,
 * and the process's RSS, open fds and threads watched for growth.
 *
 * Regions: "main", a memfd whose first part is static (text, random, zero
 * pages, holes: must come back byte for byte) and whose tail holds the slots
 * of the sequence writers; "side", a MAP_SHARED|MAP_ANONYMOUS region with
 * slots only. Load, all running during every snapshot:
 *   - 2 sequence writers storing to "main" and 1 to "side" (user-mode
 *     faults), each write i to slot i mod M, slots spread over pages;
 *   - 1 kernel writer: the same, but every store is a read(2) from a pipe
 *     into the slot (a kernel-mode fault);
 *   - 1 zapper: MADV_DONTNEED on random static pages (protection must survive
 *     on PTE markers; contents stay in the file).
 * Check of a snapshot: verify() passes; the static part is byte-exact; for
 * every writer the writes visible are exactly its writes 1..k for one k (one
 * instant, nothing torn or lost). Sinks alternate between a file, a callback
 * into memory and an fd (a pipe drained by a thread).
 *
 *   usnap-soak [--seconds S] [--size MiB] [--dir DIR] [--keep-going]
 * Exit 0 if every snapshot checked out and nothing grew; prints a line every
 * 10 s and a summary.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uffdsnap.h"

#define NWRITERS 4            /* 0,1: main (stores); 2: side (stores); 3: main (read(2)) */
#define SLOT_PAGES 64         /* pages per writer */

static size_t page;
static size_t main_len, static_len, side_len;
static uint8_t *main_addr, *side_addr;
static _Atomic bool stop;
static _Atomic uint64_t last[NWRITERS];
static _Atomic uint64_t zaps;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "usnap-soak: FAIL: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* ---- sequence slots ---------------------------------------------------------------------- */

static uint64_t nslots(void)
{
	return (uint64_t)SLOT_PAGES * (page / 8);
}

/* slot j of writer w: page j % SLOT_PAGES, word j / SLOT_PAGES */
static size_t slot_off(unsigned w, uint64_t j)
{
	size_t base = w == 2 ? 0 : static_len + (size_t)(w == 3 ? 2 : w) * SLOT_PAGES * page;

	return base + (size_t)(j % SLOT_PAGES) * page + (size_t)(j / SLOT_PAGES) * 8;
}

static uint8_t *writer_base(unsigned w)
{
	return w == 2 ? side_addr : main_addr;
}

static void *seq_writer(void *arg)
{
	unsigned w = (unsigned)(uintptr_t)arg;
	uint8_t *base = writer_base(w);
	uint64_t n = nslots();
	int p[2] = { -1, -1 };

	if (w == 3 && pipe2(p, O_CLOEXEC))
		die("pipe: %s", strerror(errno));
	for (uint64_t i = 1; !atomic_load_explicit(&stop, memory_order_relaxed); i++) {
		uint64_t *slot = (uint64_t *)(base + slot_off(w, (i - 1) % n));
		if (w == 3) {
			/* the kernel stores into the protected page: read(2) waits for the snapshot */
			if (write(p[1], &i, 8) != 8 || read(p[0], slot, 8) != 8)
				die("kernel writer: %s", strerror(errno));
		} else {
			__atomic_store_n(slot, i, __ATOMIC_RELAXED);
		}
		atomic_store_explicit(&last[w], i, memory_order_release);
	}
	if (p[0] >= 0)
		close(p[0]), close(p[1]);
	return NULL;
}

static void *zapper(void *arg)
{
	uint64_t rng = 99;

	(void)arg;
	while (!atomic_load(&stop)) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		madvise(main_addr + ((rng >> 20) % (static_len / page)) * page, page, MADV_DONTNEED);
		atomic_fetch_add(&zaps, 1);
		usleep(200);
	}
	return NULL;
}

/* The visible writes of writer w in `img` (its slots) must be 1..k for one k <= hi. */
static uint64_t seq_check(unsigned w, const uint8_t *img, uint64_t hi)
{
	uint64_t n = nslots(), k = 0;

	for (uint64_t j = 0; j < n; j++) {
		uint64_t v;
		memcpy(&v, img + slot_off(w, j) - (w == 2 ? 0 : static_len), 8);
		if (v > hi || (v && (v - 1) % n != j))
			die("writer %u slot %llu holds %llu: never written there (last write %llu)", w,
			    (unsigned long long)j, (unsigned long long)v, (unsigned long long)hi);
		if (v > k)
			k = v;
	}
	for (uint64_t j = 0; j < n; j++) {
		uint64_t v, want = 0;
		memcpy(&v, img + slot_off(w, j) - (w == 2 ? 0 : static_len), 8);
		if (k >= j + 1)
			want = j + 1 + (k - j - 1) / n * n;
		if (v != want)
			die("writer %u: not one instant: slot %llu holds %llu, a prefix ending at write %llu needs %llu", w,
			    (unsigned long long)j, (unsigned long long)v, (unsigned long long)k,
			    (unsigned long long)want);
	}
	return k;
}

/* ---- process accounting --------------------------------------------------------------------- */

static long rss_kib(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "re");

	if (f && fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = 0;
	if (f)
		fclose(f);
	return rss * (long)(page / 1024);
}

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	while (d && (e = readdir(d)))
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n - 1;
}

static int thread_count(void)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	int n = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	if (f)
		fclose(f);
	return n;
}

/* ---- sinks ------------------------------------------------------------------------------------ */

struct mem_sink {
	uint8_t *buf;
	size_t len, cap;
};

static int mem_write(void *user, const void *buf, size_t len)
{
	struct mem_sink *m = user;

	if (m->len + len > m->cap)
		return -ENOSPC; /* fixed buffer: the soak must not grow */
	memcpy(m->buf + m->len, buf, len);
	m->len += len;
	return 0;
}

struct drain {
	int fd, out;
	pthread_t t;
};

static void *drain_main(void *arg)
{
	struct drain *d = arg;
	static uint8_t buf[1 << 16];
	ssize_t n;

	while ((n = read(d->fd, buf, sizeof(buf))) > 0)
		if (write(d->out, buf, (size_t)n) != n)
			die("drain: %s", strerror(errno));
	return NULL;
}

static void write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0 || write(fd, p, n) != (ssize_t)n || close(fd))
		die("writing %s: %s", path, strerror(errno));
}

/* ---- one snapshot ------------------------------------------------------------------------------ */

static void check_snapshot(const char *path, const uint8_t *ref, uint8_t *img, uint64_t hi[NWRITERS],
			   uint64_t ks[NWRITERS])
{
	uffdsnap_reader_t *r;
	size_t tail = main_len - static_len;
	int e;

	if ((e = uffdsnap_reader_open(&r, path)))
		die("reader_open %s: %d (%s)", path, e, uffdsnap_last_error());
	if ((e = uffdsnap_reader_verify(r)))
		die("verify %s: %d (%s)", path, e, uffdsnap_reader_error(r));
	for (size_t off = 0; off < static_len; off += 16u << 20) {
		size_t n = static_len - off < (16u << 20) ? static_len - off : 16u << 20;
		if ((e = uffdsnap_reader_read(r, 0, off, img, n)))
			die("read main: %d (%s)", e, uffdsnap_reader_error(r));
		if (memcmp(img, ref + off, n))
			die("the static part of 'main' differs from the instant near offset %zu", off);
	}
	if ((e = uffdsnap_reader_read(r, 0, static_len, img, tail)))
		die("read main tail: %d (%s)", e, uffdsnap_reader_error(r));
	ks[0] = seq_check(0, img, hi[0]);
	ks[1] = seq_check(1, img, hi[1]);
	ks[3] = seq_check(3, img, hi[3]);
	if ((e = uffdsnap_reader_read(r, 1, 0, img, side_len)))
		die("read side: %d (%s)", e, uffdsnap_reader_error(r));
	ks[2] = seq_check(2, img, hi[2]);
	uffdsnap_reader_free(r);
}

static void fill_static(uint8_t *p, size_t len)
{
	uint64_t x = 12345;

	for (size_t off = 0, i = 0; off < len; off += page, i++) {
		switch (i % 8) {
		case 0: case 1: case 2:
			for (size_t j = 0; j < page; j++)
				p[off + j] = "soak text, compressible "[(i + j) % 24];
			break;
		case 3: case 4:
			for (size_t j = 0; j < page; j += 8) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				memcpy(p + off + j, &x, 8);
			}
			break;
		case 5:
			memset(p + off, 0, page);
			break;
		default:
			break; /* holes */
		}
	}
}

int main(int argc, char **argv)
{
	unsigned seconds = 600;
	size_t size_mib = 256;
	const char *dir = "/var/tmp";
	char path[4096];
	pthread_t wt[NWRITERS], zt;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	struct mem_sink ms;
	uint8_t *ref, *img;
	uint64_t t0, next_report, snaps = 0, by_kind[3] = { 0 }, faults = 0, max_pause = 0, bytes = 0;
	long rss0 = 0, rss_max = 0, rss_last = 0;
	int fds0 = 0, fds_max = 0, thr0 = 0, thr_max = 0, memfd, e, keep_going = 0;
	unsigned long nfailed = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			size_mib = (size_t)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--keep-going"))
			keep_going = 1; /* a failed snapshot is counted and reported, and the soak goes on */
		else {
			fprintf(stderr, "usage: usnap-soak [--seconds S] [--size MiB] [--dir DIR] [--keep-going]\n");
			return 2;
		}
	}
	page = (size_t)sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	side_len = (size_t)SLOT_PAGES * page;
	main_len = size_mib << 20;
	static_len = main_len - 3 * (size_t)SLOT_PAGES * page;
	if ((memfd = memfd_create("soak-main", MFD_CLOEXEC)) < 0 || ftruncate(memfd, (off_t)main_len))
		die("memfd: %s", strerror(errno));
	main_addr = mmap(NULL, main_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	side_addr = mmap(NULL, side_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ref = malloc(static_len);
	img = malloc(16u << 20 > main_len - static_len ? 16u << 20 : main_len - static_len);
	ms.cap = main_len / 2 + (8u << 20); /* a quarter of the static part is random */
	ms.buf = malloc(ms.cap);
	if (main_addr == MAP_FAILED || side_addr == MAP_FAILED || !ref || !img || !ms.buf)
		die("out of memory");
	fill_static(main_addr, static_len);
	/* The reference is read from the file, not the mapping: a load from a hole
	 * of a shmem mapping populates it with a clean zero page, and Linux 6.18
	 * drops such pages again on MADV_DONTNEED, which makes them holes: the
	 * engine cannot tell that from a hole punch and fails with -ESTALE
	 * (docs/reliability.md). */
	for (size_t off = 0; off < static_len;) {
		ssize_t n = pread(memfd, ref + off, static_len - off, (off_t)off);
		if (n <= 0)
			die("pread: %s", strerror(errno));
		off += (size_t)n;
	}
	memset(ms.buf, 0, ms.cap);          /* resident from the start: RSS is flat if nothing leaks */

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 16u << 20;
	if ((e = uffdsnap_new(&ctx, &o)))
		die("uffdsnap_new: %d %s (%s)", e, uffdsnap_strerror(e), uffdsnap_last_error());
	if ((e = uffdsnap_add_region(ctx, "main", main_addr, main_len)) < 0 ||
	    (e = uffdsnap_add_region(ctx, "side", side_addr, side_len)) < 0)
		die("add_region: %d (%s)", e, uffdsnap_last_error());
	for (unsigned w = 0; w < NWRITERS; w++)
		if (pthread_create(&wt[w], NULL, seq_writer, (void *)(uintptr_t)w))
			die("pthread_create");
	if (pthread_create(&zt, NULL, zapper, NULL))
		die("pthread_create");
	snprintf(path, sizeof(path), "%s/usnap-soak.%d.snap", dir, (int)getpid());
	printf("soak: %u s, regions main %zu MiB (static %zu MiB + slots) and side %zu KiB, %d writers "
	       "(one through read(2)), a zapper; snapshots to %s\n", seconds, main_len >> 20, static_len >> 20,
	       side_len >> 10, NWRITERS, path);

	t0 = now_ns();
	next_report = t0 + 10000000000ull;
	while (now_ns() - t0 < (uint64_t)seconds * 1000000000ull) {
		unsigned kind = (unsigned)(snaps % 3);
		uffdsnap_sink_t *k = NULL;
		uffdsnap_snap_t *s;
		uffdsnap_stats_t st = { .size = sizeof(st) };
		struct drain d = { .fd = -1 };
		uint64_t hi[NWRITERS], ks[NWRITERS] = { 0 };
		int p[2];

		if (kind == 0) {
			e = uffdsnap_sink_file(&k, path, 0);
		} else if (kind == 1) {
			ms.len = 0;
			e = uffdsnap_sink_callback(&k, mem_write, &ms);
		} else {
			if (pipe2(p, O_CLOEXEC))
				die("pipe: %s", strerror(errno));
			d.fd = p[0];
			if ((d.out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
				die("open %s: %s", path, strerror(errno));
			if (pthread_create(&d.t, NULL, drain_main, &d))
				die("pthread_create");
			e = uffdsnap_sink_fd(&k, p[1]);
		}
		if (e)
			die("sink: %d", e);
		if ((e = uffdsnap_begin(ctx, k, &s)))
			die("begin: %d %s (%s)", e, uffdsnap_strerror(e), uffdsnap_last_error());
		if ((e = uffdsnap_wait(s))) {
			if (!keep_going)
				die("snapshot %llu (sink %u): %d (%s)", (unsigned long long)snaps, kind, e,
				    uffdsnap_snap_error(s));
			printf("  FAILED snapshot %llu (sink %u) at %.0f s: %d (%s)\n", (unsigned long long)snaps, kind,
			       (now_ns() - t0) / 1e9, e, uffdsnap_snap_error(s));
			{
				/* what the file says about the page now (a hole? data again?) */
				const char *at = strstr(uffdsnap_snap_error(s), "offset 0x");
				if (at) {
					off_t off = (off_t)strtoull(at + 7, NULL, 16);
					printf("    now: SEEK_DATA from 0x%llx -> 0x%llx; SEEK_HOLE -> 0x%llx\n",
					       (long long)off, (long long)lseek(memfd, off, SEEK_DATA),
					       (long long)lseek(memfd, off, SEEK_HOLE));
				}
			}
			nfailed++;
		}
		/* every write visible in the snapshot happened before this point */
		for (unsigned w = 0; w < NWRITERS; w++)
			hi[w] = atomic_load_explicit(&last[w], memory_order_acquire);
		uffdsnap_snap_stats(s, &st);
		uffdsnap_snap_free(s);
		if (kind == 1)
			write_file(path, ms.buf, ms.len);
		if (kind == 2) {
			close(p[1]);
			pthread_join(d.t, NULL);
			close(p[0]);
			close(d.out);
		}
		if (!e)
			check_snapshot(path, ref, img, hi, ks);
		unlink(path);
		snaps++;
		by_kind[kind]++;
		faults += st.faults;
		bytes += st.bytes_out;
		if (st.begin_ns > max_pause)
			max_pause = st.begin_ns;
		rss_last = rss_kib();
		if (snaps == 5) {
			rss0 = rss_last;
			fds0 = fd_count();
			thr0 = thread_count();
		}
		if (snaps >= 5) {
			int fds = fd_count(), thr = thread_count();
			rss_max = rss_last > rss_max ? rss_last : rss_max;
			fds_max = fds > fds_max ? fds : fds_max;
			thr_max = thr > thr_max ? thr : thr_max;
			if (fds != fds0 || thr != thr0)
				die("after snapshot %llu: %d fds and %d threads, %d and %d after snapshot 5",
				    (unsigned long long)snaps, fds, thr, fds0, thr0);
		}
		if (now_ns() >= next_report) {
			printf("  %4.0f s: %llu snapshots (file %llu, callback %llu, fd %llu), %llu faults, %.1f GiB "
			       "written, max pause %.2f ms, zaps %llu; RSS %ld KiB (after #5: %ld), fds %d, threads %d; "
			       "writes visible in the last: %llu %llu %llu %llu\n", (now_ns() - t0) / 1e9,
			       (unsigned long long)snaps, (unsigned long long)by_kind[0], (unsigned long long)by_kind[1],
			       (unsigned long long)by_kind[2], (unsigned long long)faults, bytes / 1073741824.0,
			       max_pause / 1e6, (unsigned long long)atomic_load(&zaps), rss_last, rss0, fd_count(),
			       thread_count(), (unsigned long long)ks[0], (unsigned long long)ks[1],
			       (unsigned long long)ks[2], (unsigned long long)ks[3]);
			next_report += 10000000000ull;
		}
	}
	atomic_store(&stop, true);
	for (unsigned w = 0; w < NWRITERS; w++)
		pthread_join(wt[w], NULL);
	pthread_join(zt, NULL);
	uffdsnap_free(ctx);
	printf("soak: %llu snapshots in %.0f s, every one verified, static part byte-exact, every writer one "
	       "instant; %llu faults; RSS %ld KiB after snapshot 5, max %ld, last %ld; fds %d (max %d); threads %d "
	       "(max %d)\n", (unsigned long long)snaps, (now_ns() - t0) / 1e9, (unsigned long long)faults, rss0,
	       rss_max, rss_last, fds0, fds_max, thr0, thr_max);
	if (snaps < 6)
		die("only %llu snapshots: too short to tell", (unsigned long long)snaps);
	if (rss_max > rss0 + 8192)
		die("RSS grew from %ld to %ld KiB", rss0, rss_max);
	if (nfailed)
		die("%lu of %llu snapshots failed", nfailed, (unsigned long long)snaps);
	printf("soak: PASS\n");
	return 0;
}
