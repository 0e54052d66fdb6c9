/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * restore-bench: what restoring a snapshot costs a program, with the
 * physical baselines measured in the same run (issue #5).
 *
 *   memcpy      GB/s between two pre-faulted buffers (one thread, best of 3)
 *   raw read    read(2) of an uncompressed raw image (in the page cache) into
 *               fresh memory: the "physical" way to load a memory image
 *   decode      uffdsnap_reader_read() of the whole region into a pre-faulted
 *               buffer, one thread: pread + CRC-32C + zstd + memcpy, no page
 *               allocation (what eager restore costs before the kernel's part)
 *   eager       uffdsnap_restore_memfd() on all CPUs, and uffdsnap_restore_into()
 *               into fresh private memory: time until the program can run, GB/s;
 *               then once more into the same memory, now populated
 *   lazy        uffdsnap_lazy_start() into a fresh memfd: time until the
 *               program can run; then one thread touches random pages while the
 *               prefetcher runs (first-touch latency p50/p99) and the time until
 *               every page is resident; the same with faults only (no prefetch)
 *   mechanism   placing 256 KiB chunks into a registered memfd mapping with
 *               UFFDIO_COPY against pwrite(2) into the memfd + UFFDIO_CONTINUE
 *
 * With --snap FILE it measures reading back a snapshot someone else took
 * (e.g. examples/live-snapshot, whose writers store while the snapshot runs,
 * so fault-path pages sit scattered in fault chunks), each against eager
 * restore of the same file in the same run (issue #15): eager restore into a
 * memfd; uffdsnap_reader_read() of the whole region in pieces of 4 KiB to
 * 32 MiB; extract to a file; lazy restore and the page server, faults only,
 * touching random pages (first-touch latency, chunk loads against the
 * file's chunks). Each of the restore, extract and read figures comes with
 * the CPU time (user + sys) this process spent on it, all threads and the
 * calling thread alone, and the run with the load average: on a shared
 * machine a thread that gets no CPU shows as time, not as CPU, and the
 * caller's CPU time is what the operation would take at least with a CPU
 * for each thread.
 *
 * Data: per 64 KiB group, 2/16 zero pages, 4/16 random, 10/16 text-like
 * (words and numbers; zstd -1 compresses the whole ~2.5:1).
 * Not a test: needs root (or /dev/userfaultfd) and an idle machine.
 *
 *   restore-bench [--size MiB] [--out DIR] [--touches N] [--threads N] [--json]
 *   restore-bench --snap FILE [--touches N] [--budget S] [--out DIR]
 *   restore-bench --make FILE [--size MiB] [--writes none|random|sequential]
 *
 * --make writes the bench's data to a snapshot file, idle or while one thread
 * stores to random pages or to one page after another, for --snap.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#include "bench-util.h"

static void fill(uint8_t *p, size_t len)
{
	static const char *const words[] = { "alpha ", "beta ", "gamma ", "delta ", "lorem ", "ipsum ",
					     "restore ", "snapshot ", "page ", "memory ", "\n", "42 ", "1337 " };
	uint64_t s = 12345;

	for (size_t pg = 0; pg < len / PAGE; pg++) {
		uint8_t *q = p + pg * PAGE;
		unsigned k = pg % 16;

		if (k < 2)
			continue; /* zero (the memfd is fresh: a hole) */
		if (k < 6) {
			for (size_t i = 0; i < PAGE; i += 8) {
				uint64_t v = rnd(&s);
				memcpy(q + i, &v, 8);
			}
			continue;
		}
		for (size_t i = 0; i < PAGE;) {
			const char *w = words[rnd(&s) % 13];
			size_t n = strlen(w);
			if (n > PAGE - i)
				n = PAGE - i;
			memcpy(q + i, w, n);
			i += n;
		}
	}
}

static int memfd_of(size_t len, uint8_t **addr)
{
	int fd = memfd_create("restore-bench", MFD_CLOEXEC);

	if (fd < 0 || ftruncate(fd, (off_t)len))
		die("memfd", errno, NULL);
	*addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*addr == MAP_FAILED)
		die("mmap", errno, NULL);
	return fd;
}

/* CPU time (user + sys) so far of this process (all threads), or of the
 * calling thread only: the caller's share is the least time the operation
 * takes when every thread has a CPU of its own. */
static uint64_t cpu_of(int who)
{
	struct rusage ru;

	getrusage(who, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static uint64_t cpu_ns(void)
{
	return cpu_of(RUSAGE_SELF);
}

/* CPU seconds of an operation: all threads, and the calling thread's. */
struct cpu_s {
	uint64_t all0, own0;
	double all, own;
};

static void cpu_start(struct cpu_s *c)
{
	c->all0 = cpu_ns();
	c->own0 = cpu_of(RUSAGE_THREAD);
}

static void cpu_stop(struct cpu_s *c)
{
	c->all = (double)(cpu_ns() - c->all0) / 1e9;
	c->own = (double)(cpu_of(RUSAGE_THREAD) - c->own0) / 1e9;
}

static double gbs(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (double)ns : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double memcpy_gbs(void)
{
	size_t len = 256 * MiB;
	uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uint8_t *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	double best = 0;

	memset(a, 1, len);
	memset(b, 2, len);
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = now_ns();
		memcpy(b, a, len);
		double g = gbs(len, now_ns() - t0);
		best = g > best ? g : best;
	}
	munmap(a, len);
	munmap(b, len);
	return best;
}

static void write_file(const char *path, const uint8_t *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0)
		die(path, errno, NULL);
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, p + off, len - off > (1u << 30) ? (1u << 30) : len - off);
		if (n <= 0)
			die(path, errno, NULL);
		off += (size_t)n;
	}
	close(fd);
}

/* read(2) of the raw image into fresh memory, as one would load a dump */
static uint64_t raw_read_ns(const char *path, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *buf;
	uint64_t t0;

	if (fd < 0)
		die(path, errno, NULL);
	t0 = now_ns();
	buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t off = 0; off < len;) {
		ssize_t n = read(fd, buf + off, len - off > (1u << 30) ? (1u << 30) : len - off);
		if (n <= 0)
			die("read", errno, NULL);
		off += (size_t)n;
	}
	t0 = now_ns() - t0;
	munmap(buf, len);
	close(fd);
	return t0;
}

struct lazy_result {
	double start_ms, resident_ms, p50_us, p99_us, max_us;
	uffdsnap_lazy_stats_t st;
};

/* One thread touches `touches` random pages of addr, each once, timing each
 * first touch: p50, p99 and the worst into res. */
static void touch_random(uint8_t *addr, size_t len, unsigned touches, uint64_t s, struct lazy_result *res)
{
	uint64_t *lat = calloc(touches, sizeof(*lat));
	uint8_t *seen = calloc(len / PAGE, 1);

	for (unsigned i = 0; i < touches;) {
		size_t p = rnd(&s) % (len / PAGE);
		uint64_t a;

		if (seen[p])
			continue;
		seen[p] = 1;
		a = now_ns();
		(void)*(volatile uint8_t *)(addr + p * PAGE + 64);
		lat[i++] = now_ns() - a;
	}
	qsort(lat, touches, sizeof(*lat), cmp_u64);
	res->p50_us = lat[touches / 2] / 1e3;
	res->p99_us = lat[touches * 99 / 100] / 1e3;
	res->max_us = lat[touches - 1] / 1e3;
	free(lat);
	free(seen);
}

/* Lazy restore into a fresh memfd; one thread touches `touches` random pages
 * (each timed once, on its first touch) right after start. */
static void lazy_run(const char *snap, const char *name, size_t len, unsigned touches, uint32_t flags,
		     struct lazy_result *res)
{
	uffdsnap_lazy_opts_t o;
	uffdsnap_lazy_region_t reg = { .name = name, .len = len };
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uint64_t seed = 99, t0;
	uint8_t *addr;
	int fd, rc;

	if ((rc = uffdsnap_reader_open(&r, snap)))
		die(snap, rc, uffdsnap_last_error());
	fd = memfd_of(len, &addr);
	reg.addr = addr;
	uffdsnap_lazy_opts_init(&o);
	o.flags = flags;
	t0 = now_ns();
	if ((rc = uffdsnap_lazy_start(&lz, r, &reg, 1, &o)))
		die("uffdsnap_lazy_start", rc, uffdsnap_last_error());
	res->start_ms = (now_ns() - t0) / 1e6;
	touch_random(addr, len, touches, seed, res);
	if ((rc = uffdsnap_lazy_wait(lz)))
		die("uffdsnap_lazy_wait", rc, uffdsnap_lazy_error(lz));
	res->st.size = sizeof(res->st);
	uffdsnap_lazy_stats(lz, &res->st);
	res->resident_ms = res->st.resident_ns / 1e6;
	uffdsnap_lazy_free(lz);
	uffdsnap_reader_free(r);
	munmap(addr, len);
	close(fd);
}

/* uffdsnap_reader_read() of the whole region into warm memory, in 64 MiB pieces */
static uint64_t decode_ns(uffdsnap_reader_t *r, size_t len)
{
	const size_t piece = 64 * MiB < len ? 64 * MiB : len;
	uint8_t *buf = mmap(NULL, piece, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uint64_t t0 = now_ns();
	int rc;

	for (size_t off = 0; off < len; off += piece)
		if ((rc = uffdsnap_reader_read(r, 0, off, buf, len - off < piece ? len - off : piece)))
			die("uffdsnap_reader_read", rc, uffdsnap_reader_error(r));
	t0 = now_ns() - t0;
	munmap(buf, piece);
	return t0;
}

/* ---- making a snapshot, idle or under writes ------------------------------------------ */

enum writes { NONE, RANDOM, SEQUENTIAL };

struct writer {
	uint8_t *addr;
	size_t len;
	enum writes how;
	_Atomic bool stop;
	_Atomic uint64_t stores;
};

/* 8-byte stores at full speed, to random pages or to one page after another
 * (wrapping around), until told to stop. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t s = 4242, n = 0;

	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		size_t p = w->how == RANDOM ? rnd(&s) % (w->len / PAGE) : n % (w->len / PAGE);

		*(volatile uint64_t *)(w->addr + p * PAGE + (n % 512) * 8) = n;
		atomic_store_explicit(&w->stores, ++n, memory_order_relaxed);
	}
	return NULL;
}

/* Snapshot the region at addr into path, with a writer storing meanwhile
 * unless `how` is NONE. */
static void take_snapshot(const char *path, uint8_t *addr, size_t len, enum writes how)
{
	struct writer w = { .addr = addr, .len = len, .how = how };
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uffdsnap_snap_t *sn;
	uffdsnap_t *ctx;
	pthread_t t;
	int rc;

	if ((rc = uffdsnap_new(&ctx, NULL)))
		die("uffdsnap_new", rc, uffdsnap_last_error());
	if ((rc = uffdsnap_add_region(ctx, "heap", addr, len)) < 0)
		die("uffdsnap_add_region", rc, uffdsnap_last_error());
	if (how != NONE) {
		pthread_create(&t, NULL, writer_main, &w);
		while (atomic_load(&w.stores) < 100000)
			usleep(100);
	}
	if ((rc = uffdsnap_begin_file(ctx, path, &sn)) || (rc = uffdsnap_wait(sn)))
		die("snapshot", rc, uffdsnap_last_error());
	if (how != NONE) {
		atomic_store(&w.stop, true);
		pthread_join(t, NULL);
	}
	uffdsnap_snap_stats(sn, &st);
	fprintf(stderr, "restore-bench: %s: %" PRIu64 " of %" PRIu64 " pages copied by the fault path\n", path,
		st.pages_fault, st.pages_total);
	uffdsnap_snap_free(sn);
	uffdsnap_free(ctx);
}

/* ---- reading back a given snapshot (--snap) ---------------------------------------- */

/* uffdsnap_reader_read() of region id in pieces of `piece` bytes with a fresh
 * reader, for at most budget_ns: bytes/ns over what was read (a slow reader
 * is measured on a prefix of the region). */
static double read_gbs(const char *snap, unsigned id, size_t len, size_t piece, uint64_t budget_ns, size_t *done,
		       struct cpu_s *cpu)
{
	uint8_t *buf = mmap(NULL, piece, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uffdsnap_reader_t *r;
	uint64_t t0, t;
	size_t off = 0;
	int rc;

	if ((rc = uffdsnap_reader_open(&r, snap)))
		die(snap, rc, uffdsnap_last_error());
	cpu_start(cpu);
	t0 = now_ns();
	for (t = t0; off < len && t - t0 < budget_ns; off += piece, t = now_ns())
		if ((rc = uffdsnap_reader_read(r, id, off, buf, len - off < piece ? len - off : piece)))
			die("uffdsnap_reader_read", rc, uffdsnap_reader_error(r));
	uffdsnap_reader_free(r); /* joins the reader's threads: their CPU time is counted */
	cpu_stop(cpu);
	munmap(buf, piece);
	*done = off < len ? off : len;
	return gbs(*done, t - t0);
}

struct server {
	int lfd;
	uffdsnap_reader_t *r;
	int rc;
};

static void *server_main(void *arg)
{
	struct server *sv = arg;
	uffdsnap_lazy_opts_t o;
	int conn = accept(sv->lfd, NULL, NULL);

	uffdsnap_lazy_opts_init(&o);
	o.flags = UFFDSNAP_LAZY_NO_PREFETCH | UFFDSNAP_LAZY_QUIET;
	sv->rc = conn < 0 ? -errno : uffdsnap_serve_conn(sv->r, conn, &o);
	if (conn >= 0)
		close(conn);
	return NULL;
}

/* The page server of this process to itself, faults only: `touches` random
 * first touches, then the server's figures. */
static void serve_run(const char *snap, const char *dir, const char *name, size_t len, unsigned touches,
		      struct lazy_result *res)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_region_t reg = { .name = name, .len = len };
	struct server sv = { 0 };
	uffdsnap_lazy_client_t *c;
	uint64_t seed = 7;
	uint8_t *addr;
	pthread_t t;
	int fd, rc;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/restore-bench-%d.sock", dir, getpid());
	unlink(sa.sun_path);
	if ((rc = uffdsnap_reader_open(&sv.r, snap)))
		die(snap, rc, uffdsnap_last_error());
	if ((sv.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    bind(sv.lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(sv.lfd, 1))
		die("page server socket", errno, sa.sun_path);
	pthread_create(&t, NULL, server_main, &sv);
	fd = memfd_of(len, &addr);
	reg.addr = addr;
	if ((rc = uffdsnap_lazy_connect(&c, sa.sun_path, &reg, 1)))
		die("uffdsnap_lazy_connect", rc, uffdsnap_last_error());
	touch_random(addr, len, touches, seed, res);
	if ((rc = uffdsnap_lazy_client_wait(c)))
		die("uffdsnap_lazy_client_wait", rc, uffdsnap_lazy_client_error(c));
	res->st.size = sizeof(res->st);
	uffdsnap_lazy_client_stats(c, &res->st);
	uffdsnap_lazy_client_free(c);
	pthread_join(t, NULL);
	if (sv.rc)
		die("uffdsnap_serve_conn", sv.rc, NULL);
	close(sv.lfd);
	unlink(sa.sun_path);
	uffdsnap_reader_free(sv.r);
	munmap(addr, len);
	close(fd);
}

/* Everything against eager restore of the same file, in one run. */
static int readback(const char *snap, const char *dir, unsigned touches, double budget_s, bool json)
{
	static const size_t pieces[] = { 4096, 65536, 1 << 20, 32 << 20 };
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uffdsnap_restore_stats_t est = { .size = sizeof(est) };
	struct lazy_result lf = { 0 }, lp = { 0 }, sf = { 0 };
	uffdsnap_reader_t *r;
	double restore_gbs, extract_gbs, piece_gbs[4], load0[1], load1[1];
	struct cpu_s restore_cpu, extract_cpu, piece_cpu[4];
	size_t piece_done[4];
	char out[4096], name[256];
	uint64_t t0;
	int rc, fd;

	if (getloadavg(load0, 1) != 1)
		load0[0] = -1;

	if ((rc = uffdsnap_reader_open(&r, snap)) || (rc = uffdsnap_reader_info(r, &info)) ||
	    (rc = uffdsnap_reader_region(r, 0, &ri)))
		die(snap, rc, uffdsnap_last_error());
	snprintf(name, sizeof(name), "%s", ri.name); /* ri.name lives as long as r */
	/* eager restore, all CPUs: the yardstick */
	cpu_start(&restore_cpu);
	t0 = now_ns();
	if ((rc = uffdsnap_restore_memfd(r, 0, &fd, NULL, &est)))
		die("uffdsnap_restore_memfd", rc, uffdsnap_last_error());
	restore_gbs = gbs(ri.length, now_ns() - t0);
	cpu_stop(&restore_cpu);
	close(fd);
	snprintf(out, sizeof(out), "%s/restore-bench-%d.region", dir, getpid());
	if ((fd = open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		die(out, errno, NULL);
	cpu_start(&extract_cpu);
	t0 = now_ns();
	if ((rc = uffdsnap_reader_extract_fd(r, 0, fd)))
		die("uffdsnap_reader_extract_fd", rc, uffdsnap_reader_error(r));
	extract_gbs = gbs(ri.length, now_ns() - t0);
	close(fd);
	unlink(out);
	uffdsnap_reader_free(r);
	cpu_stop(&extract_cpu);
	for (unsigned i = 0; i < 4; i++)
		piece_gbs[i] = read_gbs(snap, 0, ri.length, pieces[i], (uint64_t)(budget_s * 1e9), &piece_done[i],
					&piece_cpu[i]);
	lazy_run(snap, name, ri.length, touches, UFFDSNAP_LAZY_NO_PREFETCH | UFFDSNAP_LAZY_QUIET, &lf);
	lazy_run(snap, name, ri.length, touches, UFFDSNAP_LAZY_QUIET, &lp);
	serve_run(snap, dir, name, ri.length, touches, &sf);
	if (getloadavg(load1, 1) != 1)
		load1[0] = -1;
	if (json) {
		printf("{\"snap\":\"%s\",\"region_mib\":%.0f,\"chunks\":%" PRIu64 ",\"loadavg_start\":%.2f,"
		       "\"loadavg_end\":%.2f,\"restore_gb_s\":%.3f,\"restore_cpu_s\":%.3f,\"extract_gb_s\":%.3f,"
		       "\"extract_cpu_s\":%.3f", snap, ri.length / (double)MiB, info.chunks, load0[0], load1[0], restore_gbs,
		       restore_cpu.all, extract_gbs, extract_cpu.all);
		printf(",\"restore_caller_cpu_s\":%.3f,\"extract_caller_cpu_s\":%.3f", restore_cpu.own, extract_cpu.own);
		for (unsigned i = 0; i < 4; i++)
			printf(",\"read_%zuk_gb_s\":%.3f,\"read_%zuk_cpu_s\":%.3f,\"read_%zuk_caller_cpu_s\":%.3f",
			       pieces[i] >> 10, piece_gbs[i], pieces[i] >> 10, piece_cpu[i].all, pieces[i] >> 10,
			       piece_cpu[i].own);
		printf(",\"lazy_start_ms\":%.3f", lf.start_ms);
		printf(",\"lazy_faultonly_p50_us\":%.1f,\"lazy_faultonly_p99_us\":%.1f,\"lazy_faultonly_max_us\":%.1f,"
		       "\"lazy_faultonly_chunks\":%" PRIu64 ",\"lazy_p50_us\":%.1f,\"lazy_p99_us\":%.1f,\"lazy_max_us\":%.1f,"
		       "\"lazy_chunks\":%" PRIu64 ",\"serve_p50_us\":%.1f,\"serve_p99_us\":%.1f,\"serve_max_us\":%.1f,"
		       "\"serve_chunks\":%" PRIu64 "}\n", lf.p50_us, lf.p99_us, lf.max_us,
		       lf.st.chunks_fault + lf.st.chunks_prefetch, lp.p50_us, lp.p99_us, lp.max_us,
		       lp.st.chunks_fault + lp.st.chunks_prefetch, sf.p50_us, sf.p99_us, sf.max_us,
		       sf.st.chunks_fault + sf.st.chunks_prefetch);
		return 0;
	}
	printf("restore-bench --snap %s: region '%s' %.0f MiB, %" PRIu64 " chunks, %.1f MiB file; load average %.2f "
	       "at the start, %.2f at the end\n", snap, name, ri.length / (double)MiB, info.chunks,
	       info.bytes_file / (double)MiB, load0[0], load1[0]);
	printf("  eager restore_memfd, %u threads       %6.3f GB/s   (1.00)              cpu %.3f s (caller %.3f)\n",
	       est.threads, restore_gbs, restore_cpu.all, restore_cpu.own);
	printf("  extract_fd to a file on %s     %6.3f GB/s   time %.2f x restore   cpu %.3f s (caller %.3f)\n", dir,
	       extract_gbs, restore_gbs / extract_gbs, extract_cpu.all, extract_cpu.own);
	for (unsigned i = 0; i < 4; i++)
		printf("  reader_read in %5zu KiB pieces         %6.3f GB/s   time %.2f x restore   cpu %.3f s (caller %.3f)%s\n",
		       pieces[i] >> 10, piece_gbs[i], restore_gbs / piece_gbs[i], piece_cpu[i].all, piece_cpu[i].own,
		       piece_done[i] < ri.length ? " (measured on a prefix)" : "");
	printf("  lazy, faults only: start %.2f ms; %u first touches p50 %.1f us p99 %.1f us max %.1f us; %" PRIu64
	       " faults, %" PRIu64 " chunk loads for faults + %" PRIu64 " by prefetch (file: %" PRIu64 " chunks)\n",
	       lf.start_ms, touches, lf.p50_us, lf.p99_us, lf.max_us, lf.st.faults, lf.st.chunks_fault,
	       lf.st.chunks_prefetch, info.chunks);
	printf("  lazy + prefetch:   %u first touches p50 %.1f us p99 %.1f us max %.1f us; %" PRIu64 " + %" PRIu64
	       " chunk loads\n", touches, lp.p50_us, lp.p99_us, lp.max_us, lp.st.chunks_fault, lp.st.chunks_prefetch);
	printf("  page server, faults only: p50 %.1f us p99 %.1f us max %.1f us; %" PRIu64 " + %" PRIu64
	       " chunk loads\n", sf.p50_us, sf.p99_us, sf.max_us, sf.st.chunks_fault, sf.st.chunks_prefetch);
	return 0;
}

static int uffd_open(void)
{
	struct uffdio_api a = { .api = UFFD_API, .features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM };
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC), fd;

	fd = dev >= 0 ? ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC) : (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (dev >= 0)
		close(dev);
	if (fd < 0 || ioctl(fd, UFFDIO_API, &a))
		die("userfaultfd", errno, NULL);
	return fd;
}

/* GB/s placing 256 KiB chunks into a 256 MiB registered memfd mapping: UFFDIO_COPY
 * (MISSING mode) or pwrite into the memfd + UFFDIO_CONTINUE (MINOR mode). */
static double mechanism_gbs(bool cont)
{
	const size_t len = 256 * MiB, chunk = 256 * 1024;
	uint8_t *src = malloc(chunk), *a;
	int fd = memfd_of(len, &a), u = uffd_open();
	struct uffdio_register reg = { .range = { (uintptr_t)a, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING | (cont ? UFFDIO_REGISTER_MODE_MINOR : 0) };
	uint64_t t0;

	memset(src, 7, chunk);
	if (ioctl(u, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER", errno, NULL);
	t0 = now_ns();
	for (size_t off = 0; off < len; off += chunk) {
		if (cont) {
			struct uffdio_continue c = { .range = { (uintptr_t)a + off, chunk } };
			if (pwrite(fd, src, chunk, (off_t)off) != (ssize_t)chunk || ioctl(u, UFFDIO_CONTINUE, &c))
				die("pwrite + UFFDIO_CONTINUE", errno, NULL);
		} else {
			struct uffdio_copy c = { .dst = (uintptr_t)a + off, .src = (uintptr_t)src, .len = chunk };
			if (ioctl(u, UFFDIO_COPY, &c))
				die("UFFDIO_COPY", errno, NULL);
		}
	}
	t0 = now_ns() - t0;
	munmap(a, len);
	close(fd);
	close(u);
	free(src);
	return gbs(len, t0);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },  { "out", required_argument, NULL, 'o' },
		{ "touches", required_argument, NULL, 't' }, { "threads", required_argument, NULL, 'j' },
		{ "json", no_argument, NULL, 'J' },        { "snap", required_argument, NULL, 'S' },
		{ "budget", required_argument, NULL, 'b' }, { "make", required_argument, NULL, 'M' },
		{ "writes", required_argument, NULL, 'w' }, { 0 },
	};
	const char *out = "/var/tmp";
	size_t size = 1024 * MiB;
	unsigned touches = 2000;
	int threads = 0, c, rc, fd;
	bool json = false;
	const char *given = NULL, *make = NULL;
	enum writes writes = NONE;
	double budget = 30;
	char snap[4096], raw[4096];
	uffdsnap_restore_opts_t ro;
	uffdsnap_restore_stats_t est = { .size = sizeof(est) }, ist = { .size = sizeof(ist) };
	struct lazy_result lp = { 0 }, lf = { 0 };
	uffdsnap_reader_t *r;
	struct utsname u;
	uint8_t *addr, *anon;
	uint64_t t0, raw_ns, dec_ns, eager_ns, into_ns, warm_ns, file_bytes;
	double mc, copy_gbs, cont_gbs;

	while ((c = getopt_long(argc, argv, "s:o:t:j:JS:b:", longopts, NULL)) != -1) {
		switch (c) {
		case 'S': given = optarg; break;
		case 'b': budget = strtod(optarg, NULL); break;
		case 'M': make = optarg; break;
		case 'w': writes = !strcmp(optarg, "random") ? RANDOM : !strcmp(optarg, "sequential") ? SEQUENTIAL : NONE; break;
		case 's': size = strtoull(optarg, NULL, 0) * MiB; break;
		case 'o': out = optarg; break;
		case 't': touches = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'j': threads = atoi(optarg); break;
		case 'J': json = true; break;
		default:
			fprintf(stderr, "usage: restore-bench [--size MiB] [--out DIR] [--touches N] [--threads N] "
				"[--json]\n       restore-bench --snap FILE [--touches N] [--budget S] [--out DIR] "
				"[--json]\n       restore-bench --make FILE [--size MiB] [--writes none|random|sequential]\n");
			return 2;
		}
	}
	if (given)
		return readback(given, out, touches, budget, json);
	if (!size || touches > size / PAGE / 2 || !touches)
		die("arguments", EINVAL, "--size must be > 0 and --touches at most half its pages");
	snprintf(snap, sizeof(snap), "%s/restore-bench-%d.snap", out, getpid());
	snprintf(raw, sizeof(raw), "%s/restore-bench-%d.raw", out, getpid());

	/* the image: a snapshot, and the same bytes raw */
	fd = memfd_of(size, &addr);
	fill(addr, size);
	if (make) {
		take_snapshot(make, addr, size, writes);
		return 0;
	}
	write_file(raw, addr, size);
	take_snapshot(snap, addr, size, NONE);
	munmap(addr, size);
	close(fd);

	mc = memcpy_gbs();
	raw_ns = raw_read_ns(raw, size);

	if ((rc = uffdsnap_reader_open(&r, snap)))
		die(snap, rc, uffdsnap_last_error());
	{
		uffdsnap_info_t info = { .size = sizeof(info) };
		uffdsnap_reader_info(r, &info);
		file_bytes = info.bytes_file;
	}
	dec_ns = decode_ns(r, size);
	uffdsnap_restore_opts_init(&ro);
	ro.threads = threads;
	t0 = now_ns();
	if ((rc = uffdsnap_restore_memfd(r, 0, &fd, &ro, &est)))
		die("uffdsnap_restore_memfd", rc, uffdsnap_last_error());
	addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	eager_ns = now_ns() - t0;
	munmap(addr, size);
	close(fd);
	anon = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	t0 = now_ns();
	if ((rc = uffdsnap_restore_into(r, 0, anon, size, &ro, &ist)))
		die("uffdsnap_restore_into", rc, uffdsnap_last_error());
	into_ns = now_ns() - t0;
	/* again, into the same memory, now populated: what reloading a live
	 * buffer pool costs, with no page to allocate */
	t0 = now_ns();
	if ((rc = uffdsnap_restore_into(r, 0, anon, size, &ro, &ist)))
		die("uffdsnap_restore_into", rc, uffdsnap_last_error());
	warm_ns = now_ns() - t0;
	munmap(anon, size);
	uffdsnap_reader_free(r);

	lazy_run(snap, "heap", size, touches, 0, &lp);
	lazy_run(snap, "heap", size, touches, UFFDSNAP_LAZY_NO_PREFETCH, &lf);
	copy_gbs = mechanism_gbs(false);
	cont_gbs = mechanism_gbs(true);
	unlink(snap);
	unlink(raw);

	uname(&u);
	if (json) {
		printf("{\"size_mib\":%zu,\"cores\":%ld,\"kernel\":\"%s\",\"snapshot_bytes\":%" PRIu64 ",\"memcpy_gb_s\":%.2f,"
		       "\"raw_read_ms\":%.1f,\"raw_read_gb_s\":%.2f,\"decode_1thread_gb_s\":%.2f,\"eager_memfd_ms\":%.1f,\"eager_memfd_gb_s\":%.2f,"
		       "\"eager_threads\":%u,\"eager_into_ms\":%.1f,\"eager_into_gb_s\":%.2f,\"eager_warm_gb_s\":%.2f,"
		       "\"lazy_start_ms\":%.3f,\"lazy_resident_ms\":%.1f,\"lazy_touch_p50_us\":%.1f,"
		       "\"lazy_touch_p99_us\":%.1f,\"lazy_pages_fault\":%" PRIu64 ",\"lazy_pages_prefetch\":%" PRIu64 ","
		       "\"faultonly_touch_p50_us\":%.1f,\"faultonly_touch_p99_us\":%.1f,\"faultonly_resident_ms\":%.1f,"
		       "\"uffdio_copy_gb_s\":%.2f,\"pwrite_continue_gb_s\":%.2f}\n",
		       (size_t)(size / MiB), sysconf(_SC_NPROCESSORS_ONLN), u.release, file_bytes, mc, raw_ns / 1e6,
		       gbs(size, raw_ns), gbs(size, dec_ns), eager_ns / 1e6, gbs(size, eager_ns), est.threads, into_ns / 1e6,
		       gbs(size, into_ns), gbs(size, warm_ns), lp.start_ms, lp.resident_ms, lp.p50_us, lp.p99_us, lp.st.pages_fault,
		       lp.st.pages_prefetch, lf.p50_us, lf.p99_us, lf.resident_ms, copy_gbs, cont_gbs);
		return 0;
	}
	printf("restore-bench: %zu MiB, %ld CPUs, Linux %s; snapshot %.1f MiB (%.2f:1)\n", (size_t)(size / MiB),
	       sysconf(_SC_NPROCESSORS_ONLN), u.release, file_bytes / (double)MiB, (double)size / (double)file_bytes);
	printf("  memcpy (1 thread, pre-faulted)        %6.2f GB/s\n", mc);
	printf("  raw read(2) into fresh memory          %8.1f ms   %6.2f GB/s   (program runs after)\n",
	       raw_ns / 1e6, gbs(size, raw_ns));
	printf("  decode only (reader_read, 1 thread, warm buffer)      %6.2f GB/s\n", gbs(size, dec_ns));
	printf("  eager restore_memfd, %u threads         %8.1f ms   %6.2f GB/s   %.0f%% of memcpy\n", est.threads,
	       eager_ns / 1e6, gbs(size, eager_ns), 100 * gbs(size, eager_ns) / mc);
	printf("  eager restore_into fresh anon memory   %8.1f ms   %6.2f GB/s\n", into_ns / 1e6,
	       gbs(size, into_ns));
	printf("  eager restore_into the same, populated %8.1f ms   %6.2f GB/s   %.0f%% of memcpy\n", warm_ns / 1e6,
	       gbs(size, warm_ns), 100 * gbs(size, warm_ns) / mc);
	printf("  lazy start (program runs after)        %8.3f ms\n", lp.start_ms);
	printf("  lazy + prefetch: %u first touches p50 %.1f us p99 %.1f us max %.1f us; resident after %.1f ms;"
	       " data pages by fault %" PRIu64 ", by prefetch %" PRIu64 "\n", touches, lp.p50_us, lp.p99_us,
	       lp.max_us, lp.resident_ms, lp.st.pages_fault, lp.st.pages_prefetch);
	printf("  lazy, faults only: %u first touches p50 %.1f us p99 %.1f us max %.1f us (then prefetch: resident "
	       "after %.1f ms)\n", touches, lf.p50_us, lf.p99_us, lf.max_us, lf.resident_ms);
	printf("  placing 256 KiB chunks: UFFDIO_COPY %.2f GB/s, pwrite + UFFDIO_CONTINUE %.2f GB/s\n", copy_gbs,
	       cont_gbs);
	return 0;
}
