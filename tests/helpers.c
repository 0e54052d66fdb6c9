/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Test helpers: see helpers.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

size_t usnap_page = 4096;

/* ---- environment --------------------------------------------------------- */

void usnap_test_init(void)
{
	usnap_page = (size_t)sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	setvbuf(stderr, NULL, _IONBF, 0);
}

void usnap_test_require_root(void)
{
	usnap_test_init();
	if (geteuid() != 0) {
		printf("SKIP: this test needs root (mounts tmpfs / switches users); euid is %u\n", geteuid());
		exit(USNAP_SKIP);
	}
}

void usnap_test_require_uffd(void)
{
	uffdsnap_t *ctx = NULL;
	uffdsnap_opts_t o;
	int r;

	usnap_test_init();
	if (geteuid() != 0 && access("/dev/userfaultfd", R_OK | W_OK) != 0) {
		printf("SKIP: not root and /dev/userfaultfd is not accessible (%s): "
		       "userfaultfd with kernel-mode faults is unavailable\n", strerror(errno));
		exit(USNAP_SKIP);
	}
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB; /* keep the probe cheap */
	r = uffdsnap_new(&ctx, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP || r == -EACCES) {
		printf("SKIP: uffdsnap_new: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		exit(USNAP_SKIP);
	}
	if (r) {
		printf("ERROR: uffdsnap_new failed unexpectedly: %d %s (%s)\n", r, uffdsnap_strerror(r),
		       uffdsnap_last_error());
		exit(1);
	}
	uffdsnap_free(ctx);
}

/* Cases skipped in this run: shared with the forked case children, which
 * Check starts after usnap_run_suite() has mapped it. */
static _Atomic unsigned *skipped_cases;

void usnap_skip(const char *name, const char *fmt, ...)
{
	va_list ap;

	ck_assert_msg(skipped_cases != NULL, "usnap_skip outside usnap_run_suite");
	printf("%s: SKIP: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	atomic_fetch_add(skipped_cases, 1);
}

/*
 * tests/run-suite.sh runs two suites at once (plain beside the sanitizer
 * builds). Tests that change what the whole machine shares (vm.nr_hugepages,
 * memory blocks offlined for migration) or count its events get
 * USNAP_EXCLUSIVE=1 from tests/meson.build and hold this lock for their whole
 * run, so two of them never overlap: one would otherwise restore a knob the
 * other still relies on. The kernel drops the lock when the process ends,
 * however it ends.
 */
static void exclusive_lock(void)
{
	int fd;

	if (!getenv("USNAP_EXCLUSIVE"))
		return;
	fd = open(USNAP_EXCLUSIVE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0 || flock(fd, LOCK_EX) != 0) {
		printf("ERROR: %s: %s\n", USNAP_EXCLUSIVE_LOCK, strerror(errno));
		exit(1);
	}
	/* fd stays open: Check's forked test children inherit the lock, harmlessly */
}

int usnap_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed, run;
	unsigned skipped;

	exclusive_lock();

	skipped_cases = mmap(NULL, sizeof(*skipped_cases), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (skipped_cases == MAP_FAILED) {
		printf("ERROR: mmap of the skip counter: %s\n", strerror(errno));
		exit(1);
	}
	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	run = srunner_ntests_run(sr);
	srunner_free(sr);
	skipped = atomic_load(skipped_cases);
	if (failed)
		return 1;
	if (!skipped)
		return 0;
	/* meson counts a program, not a case: a program with a skipped case is
	 * reported SKIP, so tests/meson.build gives the cases that can skip
	 * their own test (CK_INCLUDE_TAGS) and the others still count as run */
	printf("SKIP: %u of %d cases skipped (reasons above)\n", skipped, run);
	return USNAP_SKIP;
}

static char watchdog_what[256];

static void watchdog_fire(int sig)
{
	char msg[400];
	int n;

	(void)sig;
	n = snprintf(msg, sizeof(msg), "\nWATCHDOG: timed out: %s\n", watchdog_what);
	if (write(2, msg, (size_t)n) < 0) {
		/* nothing to do */
	}
	abort();
}

void usnap_watchdog(unsigned seconds, const char *what)
{
	struct sigaction sa = { 0 };

	snprintf(watchdog_what, sizeof(watchdog_what), "%s", what ? what : "");
	sa.sa_handler = watchdog_fire;
	sigaction(SIGALRM, &sa, NULL);
	alarm(seconds);
}

int usnap_join_timeout(pthread_t t, unsigned seconds)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += seconds;
	return pthread_timedjoin_np(t, NULL, &ts);
}

uint64_t usnap_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double usnap_ms_since(uint64_t t0)
{
	return (double)(usnap_now_ns() - t0) / 1e6;
}

void usnap_find_tool(char *tool)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		exit(USNAP_SKIP);
	self[n] = '\0';
	snprintf(tool, PATH_MAX, "%s/../util/uffdsnap", dirname(self));
	if (access(tool, X_OK)) {
		printf("SKIP: the uffdsnap tool is not at %s\n", tool);
		exit(USNAP_SKIP);
	}
}

int usnap_wait_child(pid_t pid, unsigned seconds, const char *what)
{
	uint64_t t0 = usnap_now_ns();
	int status;

	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (usnap_ms_since(t0) > seconds * 1000.0) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("%s: process %d did not finish within %u s", what, (int)pid, seconds);
		}
		usleep(2000);
	}
	return status;
}

void usnap_sigbus_child(void)
{
	struct rlimit no_core = { 0, 0 };

	setrlimit(RLIMIT_CORE, &no_core);
	signal(SIGBUS, SIG_DFL);
	alarm(30);
}

/* ---- memory regions -------------------------------------------------------- */

const char *usnap_mem_kind_name(enum usnap_mem_kind k)
{
	switch (k) {
	case USNAP_MEM_MEMFD: return "memfd";
	case USNAP_MEM_DEVSHM: return "/dev/shm file";
	case USNAP_MEM_TMPFS: return "tmpfs file";
	case USNAP_MEM_ANON_SHARED: return "MAP_SHARED|MAP_ANONYMOUS";
	case USNAP_MEM_DISKFILE: return "regular file on /var/tmp";
	case USNAP_MEM_ANON_PRIVATE: return "MAP_PRIVATE|MAP_ANONYMOUS";
	}
	return "?";
}

static int open_file_in(struct usnap_mem *m, const char *dir)
{
	int fd;

	snprintf(m->path, sizeof(m->path), "%s/usnap-test-XXXXXX", dir);
	fd = mkostemp(m->path, O_CLOEXEC);
	ck_assert_msg(fd >= 0, "mkostemp %s: %s", m->path, strerror(errno));
	return fd;
}

void usnap_mem_new(struct usnap_mem *m, enum usnap_mem_kind kind, size_t len)
{
	int prot = PROT_READ | PROT_WRITE;

	memset(m, 0, sizeof(*m));
	m->kind = kind;
	m->len = len;
	m->fd = -1;
	switch (kind) {
	case USNAP_MEM_MEMFD:
		m->fd = memfd_create("usnap-test", MFD_CLOEXEC);
		ck_assert_msg(m->fd >= 0, "memfd_create: %s", strerror(errno));
		break;
	case USNAP_MEM_DEVSHM:
		m->fd = open_file_in(m, "/dev/shm");
		break;
	case USNAP_MEM_TMPFS:
		usnap_tmpfs_mount(m->mnt, len + 4 * MiB);
		m->fd = open_file_in(m, m->mnt);
		break;
	case USNAP_MEM_DISKFILE:
		m->fd = open_file_in(m, "/var/tmp");
		break;
	case USNAP_MEM_ANON_SHARED:
		m->addr = mmap(NULL, len, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		break;
	case USNAP_MEM_ANON_PRIVATE:
		m->addr = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		break;
	}
	if (m->fd >= 0) {
		ck_assert_msg(ftruncate(m->fd, (off_t)len) == 0, "ftruncate %zu: %s", len, strerror(errno));
		m->addr = mmap(NULL, len, prot, MAP_SHARED, m->fd, 0);
	}
	ck_assert_msg(m->addr != MAP_FAILED, "mmap %zu bytes (%s): %s", len, usnap_mem_kind_name(kind),
		      strerror(errno));
}

uint8_t *usnap_memfd(struct usnap_mem *m, size_t len)
{
	usnap_mem_new(m, USNAP_MEM_MEMFD, len);
	return m->addr;
}

void usnap_mem_free(struct usnap_mem *m)
{
	if (m->addr && m->addr != MAP_FAILED)
		munmap(m->addr, m->len);
	if (m->fd >= 0)
		close(m->fd);
	if (m->path[0])
		unlink(m->path);
	if (m->mnt[0])
		usnap_tmpfs_umount(m->mnt);
	memset(m, 0, sizeof(*m));
	m->fd = -1;
}

/* ---- patterns --------------------------------------------------------------- */

uint64_t usnap_splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void usnap_fill_page(void *page, uint64_t seed, uint64_t pageno)
{
	uint64_t st = seed * 0x100000001b3ull ^ (pageno + 1) * 0x9e3779b97f4a7c15ull;
	uint64_t *p = page, x = usnap_splitmix64(&st);

	/* xorshift64 stream seeded per page: cheap and never all-zero */
	if (!x)
		x = 1;
	for (size_t i = 0; i < usnap_page / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = x;
	}
}

void usnap_fill_random(void *addr, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len / usnap_page; i++)
		usnap_fill_page((uint8_t *)addr + i * usnap_page, seed, i);
}

size_t usnap_fill_mixed(void *addr, size_t len, uint64_t seed, unsigned hole_every, unsigned zero_every)
{
	size_t holes = 0;

	for (size_t i = 0; i < len / usnap_page; i++) {
		uint8_t *p = (uint8_t *)addr + i * usnap_page;
		if (hole_every && i % hole_every == 1 % hole_every) {
			holes++;
			continue;
		}
		if (zero_every && i % zero_every == 2 % zero_every)
			memset(p, 0, usnap_page);
		else
			usnap_fill_page(p, seed, i);
	}
	return holes;
}

uint8_t *usnap_buf_alloc(size_t len)
{
	void *p = mmap(NULL, len ? len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_msg(p != MAP_FAILED, "mmap %zu: %s", len, strerror(errno));
	return p;
}

void usnap_buf_free(void *buf, size_t len)
{
	if (buf)
		munmap(buf, len ? len : 1);
}

uint8_t *usnap_copy(const void *addr, size_t len)
{
	uint8_t *p = usnap_buf_alloc(len);

	memcpy(p, addr, len);
	return p;
}

uint8_t *usnap_mem_copy(const struct usnap_mem *m)
{
	uint8_t *p;

	if (m->fd < 0)
		return usnap_copy(m->addr, m->len);
	p = usnap_buf_alloc(m->len);
	for (size_t off = 0; off < m->len;) {
		ssize_t r = pread(m->fd, p + off, m->len - off, (off_t)off);
		ck_assert_msg(r > 0, "pread region file: %s", strerror(errno));
		off += (size_t)r;
	}
	return p;
}

long usnap_mem_holes(const struct usnap_mem *m)
{
	off_t pos = 0, end = (off_t)m->len;
	long data = 0;

	if (m->fd < 0)
		return -1;
	while (pos < end) {
		off_t d = lseek(m->fd, pos, SEEK_DATA), h;
		if (d < 0 || d >= end)
			break;
		h = lseek(m->fd, d, SEEK_HOLE);
		if (h > end)
			h = end;
		data += (long)((h - d) / (off_t)usnap_page);
		pos = h;
	}
	return (long)(m->len / usnap_page) - data;
}

/* ---- pagemap ---------------------------------------------------------------- */

static long pagemap_count(const void *addr, size_t len, uint64_t bit)
{
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(usnap_page - 1);
	size_t n = (len + ((uintptr_t)addr - a) + usnap_page - 1) / usnap_page;
	uint64_t buf[4096];
	long count = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open /proc/self/pagemap: %s", strerror(errno));
	for (size_t done = 0; done < n;) {
		size_t k = n - done < 4096 ? n - done : 4096;
		off_t off = (off_t)((a / usnap_page + done) * 8);
		ssize_t r = pread(fd, buf, k * 8, off);
		ck_assert_msg(r == (ssize_t)(k * 8), "pread pagemap: %zd %s", r, strerror(errno));
		for (size_t i = 0; i < k; i++)
			count += !!(buf[i] & bit);
		done += k;
	}
	close(fd);
	return count;
}

long usnap_pagemap_protected(const void *addr, size_t len)
{
	return pagemap_count(addr, len, USNAP_PM_WP);
}

long usnap_pagemap_present(const void *addr, size_t len)
{
	return pagemap_count(addr, len, USNAP_PM_PRESENT);
}

uint64_t usnap_pagemap_entry(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open /proc/self/pagemap: %s", strerror(errno));
	ck_assert(pread(fd, &e, 8, (off_t)((uintptr_t)addr / usnap_page * 8)) == 8);
	close(fd);
	return e;
}

/* ---- snapshots -------------------------------------------------------------- */

uffdsnap_reader_t *usnap_reader(const char *path)
{
	uffdsnap_reader_t *r;
	int rc = uffdsnap_reader_open(&r, path);

	ck_assert_msg(rc == 0, "reader_open %s: %d %s", path, rc, uffdsnap_last_error());
	return r;
}

uffdsnap_t *usnap_ctx_new(const uffdsnap_opts_t *opts)
{
	uffdsnap_t *ctx = NULL;
	int r = uffdsnap_new(&ctx, opts);

	ck_assert_msg(r == 0, "uffdsnap_new: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert(ctx != NULL);
	return ctx;
}

uffdsnap_opts_t usnap_opts(size_t buffer_bytes, size_t chunk_bytes)
{
	uffdsnap_opts_t o;

	uffdsnap_opts_init(&o);
	if (buffer_bytes)
		o.buffer_bytes = buffer_bytes;
	if (chunk_bytes)
		o.chunk_bytes = chunk_bytes;
	return o;
}

void usnap_snap_file(uffdsnap_t *ctx, const char *path, uffdsnap_stats_t *st)
{
	uffdsnap_snap_t *s;
	int r = uffdsnap_begin_file(ctx, path, &s);

	ck_assert_msg(r == 0, "begin: %d %s", r, uffdsnap_last_error());
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	if (st)
		usnap_stats(s, st);
	uffdsnap_snap_free(s);
}

int usnap_add(uffdsnap_t *ctx, const char *name, void *addr, size_t len)
{
	int id = uffdsnap_add_region(ctx, name, addr, len);

	ck_assert_msg(id >= 0, "add_region '%s' (%zu bytes): %d %s (%s)", name, len, id, uffdsnap_strerror(id),
		      uffdsnap_last_error());
	return id;
}

void usnap_stats(uffdsnap_snap_t *s, uffdsnap_stats_t *st)
{
	int r;

	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	r = uffdsnap_snap_stats(s, st);
	ck_assert_msg(r == 0, "uffdsnap_snap_stats: %d", r);
}

void usnap_stats_print(const char *label, const uffdsnap_stats_t *st)
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

void usnap_assert_exactly_once(const uffdsnap_stats_t *st)
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

void usnap_check_file(const char *path, const struct usnap_expect *expect, unsigned n)
{
	uffdsnap_reader_t *r = usnap_reader(path);
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
	buf = usnap_buf_alloc(piece);
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
			for (size_t p = 0; p < k; p += usnap_page) {
				size_t m = k - p < usnap_page ? k - p : usnap_page;
				bool ok = want ? !memcmp(buf + p, want + off + p, m) : all_zero(buf + p, m);
				if (!ok) {
					bad_pages++;
					if (first_bad == SIZE_MAX)
						first_bad = off + p;
				}
			}
		}
		ck_assert_msg(bad_pages == 0, "region '%s': %zu pages differ from the expected instant, first at "
			      "offset 0x%zx (page %zu)", expect[i].name, bad_pages, first_bad, first_bad / usnap_page);
	}
	usnap_buf_free(buf, piece);
	printf("  snapshot %s: verified, %u region(s) byte-exact; pages data=%llu zero=%llu file=%llu bytes "
	       "(raw %llu)\n", path, n, (unsigned long long)info.pages_data, (unsigned long long)info.pages_zero,
	       (unsigned long long)info.bytes_file, (unsigned long long)info.bytes_raw);
	uffdsnap_reader_free(r);
}

void usnap_check_buffer(const void *data, size_t len, const struct usnap_expect *expect, unsigned n)
{
	char dir[PATH_MAX], path[PATH_MAX + 16];

	usnap_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/stream", dir);
	usnap_write_file(path, data, len);
	usnap_check_file(path, expect, n);
	usnap_rmdir(dir);
}

uint8_t *usnap_read_region(const char *path, const char *name, size_t *len)
{
	uffdsnap_reader_t *r = usnap_reader(path);
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uint8_t *buf;
	int e, id;

	e = uffdsnap_reader_verify(r);
	ck_assert_msg(e == 0, "reader_verify %s: %d (%s)", path, e, uffdsnap_reader_error(r));
	id = uffdsnap_reader_find(r, name);
	ck_assert_msg(id >= 0, "region '%s' not found: %d", name, id);
	ck_assert(uffdsnap_reader_region(r, (unsigned)id, &ri) == 0);
	*len = (size_t)ri.length;
	buf = usnap_buf_alloc(*len);
	e = uffdsnap_reader_read(r, (unsigned)id, 0, buf, *len);
	ck_assert_msg(e == 0, "reader_read '%s': %d (%s)", name, e, uffdsnap_reader_error(r));
	uffdsnap_reader_free(r);
	return buf;
}

int usnap_file_verifies(const char *path)
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

/* ---- files and directories ----------------------------------------------------- */

void usnap_tmpdir(char *buf)
{
	snprintf(buf, PATH_MAX, "/var/tmp/usnap-test.XXXXXX");
	ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp: %s", strerror(errno));
}

void usnap_rmdir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX * 2];

	if (d) {
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			unlink(p);
		}
		closedir(d);
	}
	rmdir(dir);
}

int usnap_dir_entries(const char *dir, bool print)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	ck_assert_msg(d != NULL, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (print)
			printf("  entry in %s: %s\n", dir, e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

void usnap_tmpfs_mount(char *dir, size_t size)
{
	char opts[64];

	snprintf(dir, PATH_MAX, "/tmp/usnap-tmpfs.XXXXXX");
	ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(opts, sizeof(opts), "size=%zu,mode=0700", size);
	ck_assert_msg(mount("tmpfs", dir, "tmpfs", 0, opts) == 0, "mount -t tmpfs -o %s %s: %s", opts, dir,
		      strerror(errno));
}

void usnap_tmpfs_umount(const char *dir)
{
	if (umount2(dir, MNT_DETACH))
		fprintf(stderr, "umount %s: %s\n", dir, strerror(errno));
	rmdir(dir);
}

uint8_t *usnap_slurp(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	ck_assert(fstat(fd, &st) == 0);
	p = malloc((size_t)st.st_size + 1);
	ck_assert(p != NULL);
	for (size_t off = 0; off < (size_t)st.st_size;) {
		ssize_t r = read(fd, p + off, (size_t)st.st_size - off);
		ck_assert_msg(r > 0, "read %s: %s", path, strerror(errno));
		off += (size_t)r;
	}
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

void usnap_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, (const uint8_t *)data + off, len - off);
		ck_assert_msg(w > 0, "write %s: %s", path, strerror(errno));
		off += (size_t)w;
	}
	close(fd);
}

/* ---- sinks ------------------------------------------------------------------- */

void usnap_cb_init(struct usnap_cb *cb, int fd)
{
	memset(cb, 0, sizeof(*cb));
	cb->fd = fd;
	pthread_mutex_init(&cb->lock, NULL);
	pthread_cond_init(&cb->cv, NULL);
}

void usnap_cb_destroy(struct usnap_cb *cb)
{
	free(cb->mem);
	cb->mem = NULL;
	pthread_mutex_destroy(&cb->lock);
	pthread_cond_destroy(&cb->cv);
}

int usnap_cb_write(void *user, const void *buf, size_t len)
{
	struct usnap_cb *cb = user;
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

uffdsnap_sink_t *usnap_cb_sink(struct usnap_cb *cb)
{
	uffdsnap_sink_t *k = NULL;
	int r = uffdsnap_sink_callback(&k, usnap_cb_write, cb);

	ck_assert_msg(r == 0 && k, "uffdsnap_sink_callback: %d", r);
	return k;
}

void usnap_cb_gate(struct usnap_cb *cb, bool closed)
{
	pthread_mutex_lock(&cb->lock);
	cb->gate_closed = closed;
	pthread_cond_broadcast(&cb->cv);
	pthread_mutex_unlock(&cb->lock);
}

bool usnap_cb_wait_blocked(struct usnap_cb *cb, unsigned seconds)
{
	uint64_t end = usnap_now_ns() + (uint64_t)seconds * 1000000000ull;

	while (!atomic_load(&cb->blocked)) {
		if (usnap_now_ns() > end)
			return false;
		usleep(1000);
	}
	return true;
}

uffdsnap_snap_t *usnap_begin_stalled(uffdsnap_t *ctx, struct usnap_cb *cb, unsigned sleep_us)
{
	uffdsnap_snap_t *s;
	int r;

	usnap_cb_init(cb, -1);
	cb->keep = true;
	usnap_cb_gate(cb, true);
	r = uffdsnap_begin(ctx, usnap_cb_sink(cb), &s);
	ck_assert_msg(r == 0, "begin: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert(usnap_cb_wait_blocked(cb, 10));
	atomic_store(&cb->sleep_us, sleep_us);
	usnap_cb_gate(cb, false);
	return s;
}

bool usnap_wait_sweep_stalled(uffdsnap_snap_t *s, unsigned seconds)
{
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uint64_t last = UINT64_MAX, t0 = usnap_now_ns();
	unsigned still = 0;

	while (usnap_now_ns() - t0 < seconds * 1000000000ull) {
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

int usnap_finish_stalled(uffdsnap_snap_t *s, struct usnap_cb *cb, uffdsnap_stats_t *st, const char *label)
{
	int r;

	atomic_store(&cb->sleep_us, 0);
	r = uffdsnap_wait(s);
	usnap_stats(s, st);
	usnap_stats_print(label, st);
	return r;
}

/* ---- writer threads ----------------------------------------------------------- */

static void *writer_main(void *arg)
{
	struct usnap_writer_slot *sl = arg;
	struct usnap_writers *w = sl->w;

	w->fn(w, sl->i);
	atomic_fetch_add(&w->finished, 1);
	return NULL;
}

void usnap_writers_start(struct usnap_writers *w, unsigned n, usnap_writer_fn fn, void *arg)
{
	ck_assert(n <= 64);
	memset(w, 0, sizeof(*w));
	w->n = n;
	w->fn = fn;
	w->arg = arg;
	for (unsigned i = 0; i < n; i++) {
		w->slot[i].w = w;
		w->slot[i].i = i;
		ck_assert(pthread_create(&w->tid[i], NULL, writer_main, &w->slot[i]) == 0);
	}
}

bool usnap_writers_wait_progress(struct usnap_writers *w, unsigned long long min, unsigned seconds)
{
	uint64_t end = usnap_now_ns() + (uint64_t)seconds * 1000000000ull;

	for (unsigned i = 0; i < w->n; i++) {
		while (atomic_load(&w->progress[i]) < min) {
			if (usnap_now_ns() > end)
				return false;
			usleep(200);
		}
	}
	return true;
}

void usnap_writers_join(struct usnap_writers *w, unsigned seconds)
{
	for (unsigned i = 0; i < w->n; i++) {
		int r = usnap_join_timeout(w->tid[i], seconds);
		ck_assert_msg(r == 0, "writer %u did not finish within %us (%s): blocked on a fault?", i, seconds,
			      strerror(r));
	}
	w->n = 0;
}

void usnap_writers_stop(struct usnap_writers *w, unsigned seconds)
{
	atomic_store(&w->stop, true);
	usnap_writers_join(w, seconds);
}

/* ---- fixtures ---------------------------------------------------------------- */

uint8_t *usnap_fix_mem(struct usnap_fix *f, size_t len)
{
	memset(f, 0, sizeof(*f));
	return usnap_memfd(&f->m, len);
}

void usnap_fix_ctx(struct usnap_fix *f, const char *name, const uffdsnap_opts_t *opts)
{
	f->name = name;
	f->ctx = usnap_ctx_new(opts);
	usnap_add(f->ctx, name, f->m.addr, f->m.len);
}

void usnap_fix_cb(struct usnap_fix *f, const char *file)
{
	int fd = -1;

	if (file) {
		usnap_tmpdir(f->dir);
		snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, file);
		fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		ck_assert_msg(fd >= 0, "open %s: %s", f->path, strerror(errno));
	}
	usnap_cb_init(&f->cb, fd);
	f->cb.keep = !file;
	f->have_cb = true;
}

void usnap_fix_check(struct usnap_fix *f)
{
	struct usnap_expect ex = { f->name, f->ref, f->m.len };

	ck_assert_msg(f->have_cb, "usnap_fix_check: no usnap_fix_cb");
	if (f->cb.fd < 0) {
		usnap_check_buffer(f->cb.mem, f->cb.mem_len, &ex, 1);
		return;
	}
	close(f->cb.fd);
	f->cb.fd = -1;
	usnap_check_file(f->path, &ex, 1);
}

void usnap_fix_free(struct usnap_fix *f)
{
	uffdsnap_snap_free(f->s);
	uffdsnap_free(f->ctx);
	if (f->have_cb) {
		if (f->cb.fd >= 0)
			close(f->cb.fd);
		usnap_cb_destroy(&f->cb);
	}
	if (f->dir[0])
		usnap_rmdir(f->dir);
	if (f->ref)
		usnap_buf_free(f->ref, f->m.len);
	usnap_mem_free(&f->m);
}

void usnap_snapfile_new(struct usnap_snapfile *f, const char *name, size_t len, uint64_t seed, unsigned hole_every,
			unsigned zero_every)
{
	struct usnap_mem m;
	uffdsnap_t *ctx;

	usnap_memfd(&m, len);
	usnap_fill_mixed(m.addr, len, seed, hole_every, zero_every);
	f->want = usnap_mem_copy(&m);
	f->len = len;
	ctx = usnap_ctx_new(NULL);
	usnap_add(ctx, name, m.addr, len);
	usnap_tmpdir(f->dir);
	snprintf(f->path, sizeof(f->path), "%s/snap", f->dir);
	usnap_snap_file(ctx, f->path, NULL);
	uffdsnap_free(ctx);
	usnap_mem_free(&m);
}

void usnap_snapfile_free(struct usnap_snapfile *f)
{
	usnap_buf_free(f->want, f->len);
	usnap_rmdir(f->dir);
}

size_t usnap_snapfile_flipped(const struct usnap_snapfile *f, const char *name, char *path)
{
	uint8_t *bytes, *buf = usnap_buf_alloc(usnap_page);
	uffdsnap_reader_t *r;
	size_t len, p;

	snprintf(path, PATH_MAX + 16, "%s/%s", f->dir, name);
	bytes = usnap_slurp(f->path, &len);
	bytes[len / 2] ^= 0x40;
	usnap_write_file(path, bytes, len);
	free(bytes);
	r = usnap_reader(path);
	for (p = 0; p < f->len / usnap_page; p++)
		if (uffdsnap_reader_read(r, 0, p * usnap_page, buf, usnap_page))
			break;
	uffdsnap_reader_free(r);
	usnap_buf_free(buf, usnap_page);
	ck_assert_msg(p < f->len / usnap_page, "no page of %s fails to read", path);
	printf("  %s: flipped the byte at offset %zu: page %zu is lost\n", name, len / 2, p);
	return p;
}

/* ---- the prefix rule ---------------------------------------------------------- */

static inline uint64_t seq_nslots(const struct usnap_seq *q)
{
	return (uint64_t)q->pages * q->slots_per_page;
}

static inline size_t seq_offset(const struct usnap_seq *q, unsigned wr, uint64_t j)
{
	return ((size_t)wr * q->pages + (size_t)(j % q->pages)) * usnap_page + (size_t)(j / q->pages) * 8;
}

size_t usnap_seq_region_bytes(const struct usnap_seq *q)
{
	return (size_t)q->nwriters * q->pages * usnap_page;
}

void usnap_seq_writer(struct usnap_writers *w, unsigned idx)
{
	const struct usnap_seq *q = w->arg;
	uint64_t n = seq_nslots(q);

	for (uint64_t i = 1; !atomic_load_explicit(&w->stop, memory_order_relaxed); i++) {
		uint64_t s = i - 1;
		_Atomic uint64_t *slot = (_Atomic uint64_t *)(q->base[s & 1] + seq_offset(q, idx, (s >> 1) % n));
		atomic_store_explicit(slot, i, memory_order_relaxed);
		atomic_store_explicit(&w->progress[idx], i, memory_order_relaxed);
	}
}

uint64_t usnap_seq_check(const struct usnap_seq *q, uint8_t *const snap[2], unsigned wr, uint64_t last)
{
	uint64_t n = seq_nslots(q), k = 0, bad = 0;
	char first[256] = "";

	/* k: the highest write visible; every value must be one this slot received */
	/* j = s * pages + p: walk page by page, slot by slot (cache friendly) */
	for (unsigned r = 0; r < 2; r++) {
		for (uint64_t jj = 0; jj < n; jj++) {
			uint64_t j = (jj % q->slots_per_page) * q->pages + jj / q->slots_per_page;
			uint64_t v = *(const uint64_t *)(snap[r] + seq_offset(q, wr, j));
			if (!v)
				continue;
			usnap_assert_msg(v <= last && ((v - 1) & 1) == r && ((v - 1) >> 1) % n == j,
				      "writer %u region %u slot %llu holds %llu: never written there (last write %llu)",
				      wr, r, (unsigned long long)j, (unsigned long long)v, (unsigned long long)last);
			if (v > k)
				k = v;
		}
	}
	/* every slot must hold the last write to it with seq <= k */
	for (unsigned r = 0; r < 2; r++) {
		for (uint64_t jj = 0; jj < n; jj++) {
			uint64_t j = (jj % q->slots_per_page) * q->pages + jj / q->slots_per_page;
			uint64_t v = *(const uint64_t *)(snap[r] + seq_offset(q, wr, j)), want = 0;
			if (k >= 1 + r && (k - 1 - r) / 2 >= j) {
				uint64_t t = (k - 1 - r) / 2;
				uint64_t m = (t - j) / n;
				want = 2 * (j + n * m) + r + 1;
			}
			if (v != want) {
				if (!bad++)
					snprintf(first, sizeof(first), "region %u slot %llu holds %llu, a prefix ending at "
						 "write %llu needs %llu", r, (unsigned long long)j, (unsigned long long)v,
						 (unsigned long long)k, (unsigned long long)want);
			}
		}
	}
	ck_assert_msg(bad == 0, "writer %u: the writes visible are not a prefix of its program order: %llu slots "
		      "wrong; first: %s", wr, (unsigned long long)bad, first);
	return k;
}
