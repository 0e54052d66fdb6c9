/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Region kinds x disturbances (issue 3). Every case takes a snapshot of a
 * 16 MiB region with the sink held shut, so the sweep stalls after the first
 * few MiB (the buffer bound), disturbs pages at the end of the region that
 * are not copied yet, then writes them (the write must fault and the
 * pre-image be captured), lets the snapshot finish and compares it, read
 * back with the public reader, byte for byte with a copy of the region taken
 * before begin with no writer running. Each case prints one line saying what
 * the disturbance did and what the kernel showed (pages swapped, migrated,
 * huge pages split ...), so a pass is visibly not vacuous.
 *
 * Rows (region kinds): memfd MAP_SHARED, MAP_SHARED|MAP_ANONYMOUS (both with
 * holes), MAP_PRIVATE of a memfd (file with data and holes, some pages
 * copied-on-write, some read, some never touched), MAP_PRIVATE|MAP_ANONYMOUS
 * (some pages never touched), shmem THP (a tmpfs mounted huge=always in a
 * private mount namespace and detached at once, so no global knob changes
 * and nothing outlives the test child). hugetlbfs has its own test
 * (test-hugetlb.c, which reserves huge pages); here one case checks that
 * MAP_PRIVATE hugetlb is refused and MAP_SHARED accepted.
 *
 * Columns (disturbances, applied after begin to pages not copied yet):
 *   zap       MADV_DONTNEED: shmem keeps the data (markers), the snapshot must
 *             be exact; private memory loses it, and the snapshot must fail
 *             with -ESTALE naming the region and the page (decided behaviour).
 *   pageout   MADV_PAGEOUT (twice) to a zram swap device the parent process
 *             creates for these cases only and always removes (Check unchecked
 *             fixture, atexit and SIGTERM/SIGINT/SIGHUP handlers).
 *   migrate   /proc/sys/vm/compact_memory (up to 3 times, until half the
 *             target pages moved); with USNAP_MATRIX_OFFLINE=1, if fewer than
 *             1/8 moved, offline and online again the (up to 3) memory blocks
 *             holding most target pages (not by default: it changes the
 *             machine); PFNs compared through /proc/self/pagemap. Every page
 *             with a new PFN must still be protected, pgmigrate_success must
 *             have risen as much; if no target page moved, the case reports
 *             itself skipped (compaction never moves a 2 MiB folio: the huge
 *             page kinds are the meson test matrix-migrate-huge).
 *   thp       MADV_COLLAPSE before begin (must collapse), during the snapshot
 *             (refused: see disturb_thp), after it (must collapse), and
 *             mprotect of half a huge page.
 *   mprotect  PROT_READ / PROT_READ|PROT_WRITE toggles, whole and partial.
 *   readers   two threads reading the whole region while the writer writes.
 *   populate  MADV_POPULATE_WRITE (must fault through the handler), then
 *             MADV_WILLNEED and MADV_POPULATE_READ, then the writes.
 *   punch     shmem kinds only: memfd is covered by test-punch.c; here
 *             MADV_REMOVE on MAP_SHARED|MAP_ANONYMOUS and a 4 KiB hole punch
 *             inside a shmem huge page. Both must fail with -ESTALE.
 * Beyond issue 3: a row of anonymous THP (MADV_HUGEPAGE: protected at PMD
 * level), a "free" column for anonymous memory (MADV_FREE, then MADV_PAGEOUT
 * discards the clean pages) and a "pinpunch" column (the punched page is
 * pinned, as by O_DIRECT or io_uring; memfd and shmem THP). Where a
 * disturbance may destroy data the library cannot save, the snapshot must
 * be exact or fail with -ESTALE: never complete and wrong.
 * fork, mremap and munmap are not here (they need engine changes).
 *
 * A single case runs with CK_RUN_CASE=<kind>_<column>, e.g. memfd_pageout.
 * Under a sanitizer, 20 of the 48 cases run (sanitizer_case() below).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/uio.h>
#include <unistd.h>

#include "helpers.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define HUGE (2 * MiB)
#define REGION (16 * MiB)
#define PM_SWAP (1ull << 62)
#define PM_PFN ((1ull << 55) - 1)
#define PM_SWAP_TYPE(e) ((e) & 31)
#define KPF_THP (1ull << 22)

enum kind { K_MEMFD, K_ANONSH, K_PRIVFD, K_ANON, K_THP, K_ANONTHP, NKINDS };
enum col { C_ZAP, C_PAGEOUT, C_MIGRATE, C_THP, C_MPROTECT, C_READERS, C_POPULATE, C_PUNCH, C_FREE, C_PINPUNCH,
	   NCOLS };

static const char *const kname[NKINDS] = { "memfd", "anonshared", "privmemfd", "anon", "shmemthp", "anonthp" };
static const char *const kdesc[NKINDS] = { "memfd MAP_SHARED", "MAP_SHARED|MAP_ANONYMOUS", "MAP_PRIVATE of a memfd",
					   "MAP_PRIVATE|MAP_ANONYMOUS", "shmem THP (tmpfs huge=always)",
					   "MAP_PRIVATE|MAP_ANONYMOUS THP (MADV_HUGEPAGE)" };
static const char *const cname[NCOLS] = { "zap", "pageout", "migrate", "thp", "mprotect", "readers", "populate",
					  "punch", "free", "pinpunch" };

static bool is_anon(enum kind k)
{
	return k == K_ANON || k == K_ANONTHP;
}

static bool is_private(enum kind k)
{
	return k == K_PRIVFD || is_anon(k);
}

/* Which cases exist: punch needs a file (shared kinds; memfd's is
 * test-punch.c), MADV_FREE works on anonymous memory only, and the pinned
 * punch matters where a page sits in a huge folio (memfd is the control). */
static bool case_exists(enum kind k, enum col c)
{
	switch (c) {
	case C_PUNCH: return !is_private(k) && k != K_MEMFD;
	case C_FREE: return is_anon(k);
	case C_PINPUNCH: return k == K_MEMFD || k == K_THP;
	default: return true;
	}
}

/*
 * Under a sanitizer (T_SANITIZED) the matrix runs a representative
 * subset: every column with one shared and one private kind (all of its
 * cases where a column has two or fewer), every kind in at least two
 * columns, every outcome (exact, -ESTALE, the pinned-punch blind spot).
 * What a sanitizer adds is the library's memory and thread errors on each
 * path; which kernel behaviour each of the 48 cases meets, and that the
 * snapshot is exact, the plain build checks in full. USNAP_MATRIX_ALL=1 (or
 * CK_RUN_CASE) runs every case under a sanitizer too.
 */
static bool sanitizer_case(enum kind k, enum col c)
{
	switch (c) {
	case C_ZAP: return k == K_MEMFD || k == K_ANON;          /* markers; -ESTALE */
	case C_PAGEOUT: return k == K_ANONSH || k == K_PRIVFD;   /* shmem swap; swap entries and markers */
	case C_MIGRATE: return k == K_MEMFD || k == K_ANON;
	case C_THP: return k == K_THP || k == K_ANONTHP;
	case C_MPROTECT: return k == K_THP || k == K_PRIVFD;
	case C_READERS: return k == K_ANONSH || k == K_ANONTHP;
	case C_POPULATE: return k == K_MEMFD || k == K_ANON;
	default: return true; /* punch, free, pinpunch: two cases each */
	}
}

static char case_name[64];

/* ---- small system helpers -------------------------------------------------------- */

static long vmstat(const char *key)
{
	FILE *f = fopen("/proc/vmstat", "re");
	char name[64];
	long v, r = -1;

	ck_assert_msg(f != NULL, "open /proc/vmstat: %s", strerror(errno));
	while (fscanf(f, "%63s %ld", name, &v) == 2)
		if (!strcmp(name, key)) {
			r = v;
			break;
		}
	fclose(f);
	return r;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), e = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) < 0)
		e = -errno;
	close(fd);
	return e;
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* write_str, interrupted after `secs` (memory offline retries until a signal). */
static int write_str_bounded(const char *path, const char *s, unsigned secs)
{
	struct sigaction sa = { 0 }, old;
	int r;

	sa.sa_handler = noop_handler; /* no SA_RESTART: the write returns EINTR */
	sigaction(SIGALRM, &sa, &old);
	alarm(secs);
	r = write_str(path, s);
	alarm(0);
	sigaction(SIGALRM, &old, NULL);
	t_watchdog(45, case_name); /* alarm(0) disarmed it */
	return r;
}

static void pagemap_read(const void *addr, size_t n, uint64_t *out)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	size_t want = n * 8;
	ssize_t r;

	ck_assert_msg(fd >= 0, "open pagemap: %s", strerror(errno));
	r = pread(fd, out, want, (off_t)((uintptr_t)addr / t_page * 8));
	ck_assert_msg(r == (ssize_t)want, "pread pagemap: %zd %s", r, strerror(errno));
	close(fd);
}

/* ---- zram swap, owned by the parent (Check runner) process ------------------------------ */

static struct {
	bool ok, handlers;
	int id;
	pid_t owner;
	char dev[64], why[256];
} g_swap = { .id = -1 };

static void swap_down(void)
{
	char p[128], id[16];

	if (g_swap.id < 0 || getpid() != g_swap.owner)
		return;
	if (g_swap.ok && swapoff(g_swap.dev))
		fprintf(stderr, "swapoff %s: %s\n", g_swap.dev, strerror(errno));
	g_swap.ok = false;
	snprintf(p, sizeof(p), "/sys/block/zram%d/reset", g_swap.id);
	write_str(p, "1");
	snprintf(id, sizeof(id), "%d", g_swap.id);
	if (write_str("/sys/class/zram-control/hot_remove", id))
		fprintf(stderr, "zram%d: hot_remove failed\n", g_swap.id);
	g_swap.id = -1;
}

static void swap_signal(int sig)
{
	swap_down();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Unchecked fixture of the pageout cases: runs in the parent, before the test
 * child is forked; swap_down runs after it, and at exit or on a signal. */
static void swap_up(void)
{
	const size_t size = 256 * MiB;
	char p[128], buf[32];
	uint8_t *hdr;
	ssize_t n;
	int fd, e;

	g_swap.ok = false;
	if (geteuid() != 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "not root: cannot create a zram swap device");
		return;
	}
	fd = open("/sys/class/zram-control/hot_add", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "/sys/class/zram-control/hot_add: %s (no zram)",
			 strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		snprintf(g_swap.why, sizeof(g_swap.why), "zram hot_add: %s", n < 0 ? strerror(errno) : "no id");
		return;
	}
	buf[n] = '\0';
	if (!g_swap.handlers) {
		struct sigaction sa = { 0 };
		sa.sa_handler = swap_signal;
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGHUP, &sa, NULL);
		atexit(swap_down);
		g_swap.handlers = true;
	}
	g_swap.id = atoi(buf);
	g_swap.owner = getpid();
	snprintf(g_swap.dev, sizeof(g_swap.dev), "/dev/zram%d", g_swap.id);
	snprintf(p, sizeof(p), "/sys/block/zram%d/disksize", g_swap.id);
	if ((e = write_str(p, "256M"))) {
		snprintf(g_swap.why, sizeof(g_swap.why), "%s: %s", p, strerror(-e));
		swap_down();
		return;
	}
	/* the swap header mkswap would write: version 1, last page, magic */
	hdr = calloc(1, 4096);
	((uint32_t *)(hdr + 1024))[0] = 1;
	((uint32_t *)(hdr + 1024))[1] = (uint32_t)(size / 4096 - 1);
	memcpy(hdr + 4096 - 10, "SWAPSPACE2", 10);
	fd = open(g_swap.dev, O_WRONLY | O_CLOEXEC);
	e = fd < 0 ? errno : pwrite(fd, hdr, 4096, 0) != 4096 ? errno : fsync(fd) ? errno : 0;
	if (fd >= 0)
		close(fd);
	free(hdr);
	if (e || swapon(g_swap.dev, 0)) {
		snprintf(g_swap.why, sizeof(g_swap.why), "%s %s: %s", e ? "writing the swap header to" : "swapon",
			 g_swap.dev, strerror(e ? e : errno));
		swap_down();
		return;
	}
	g_swap.ok = true;
}

/* ---- regions ---------------------------------------------------------------------- */

struct region {
	enum kind kind;
	uint8_t *addr, *resv;
	size_t len, np, resv_len;
	int fd;                  /* the shmem file (memfd, tmpfs file, map_files of anon shared), or -1 */
	char mnt[PATH_MAX], path[PATH_MAX + 32]; /* only while thp_mount runs */
	uint8_t *hole;           /* page was a hole / never touched at the instant */
	uint8_t *mapped;         /* privmemfd: page mapped (copied-on-write or read) before the instant */
	uint8_t *file;           /* privmemfd: the file's contents */
	uint8_t *ref;            /* the region at the instant */
	uint8_t *now;            /* what the region must hold after the test's writes */
};

/* A file on a tmpfs with huge=always, mounted in a mount namespace of this
 * test child only and detached at once: the open file keeps it alive, and
 * nothing is left behind however the test ends. */
static void thp_mount(struct region *r)
{
	char opts[64];

	ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
	ck_assert_msg(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "make / private: %s", strerror(errno));
	snprintf(r->mnt, sizeof(r->mnt), "/tmp/usnap-matrix.XXXXXX");
	ck_assert_msg(mkdtemp(r->mnt) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(opts, sizeof(opts), "size=%zu,huge=always,mode=0700", r->len + 4 * HUGE);
	ck_assert_msg(mount("tmpfs", r->mnt, "tmpfs", 0, opts) == 0, "mount tmpfs -o %s: %s", opts, strerror(errno));
	snprintf(r->path, sizeof(r->path), "%s/region", r->mnt);
	r->fd = open(r->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	umount2(r->mnt, MNT_DETACH);
	rmdir(r->mnt);
	ck_assert_msg(r->fd >= 0, "open %s: %s", r->path, strerror(errno));
	r->mnt[0] = r->path[0] = '\0';
}

static void pread_all(int fd, uint8_t *dst, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = pread(fd, dst + off, len - off, (off_t)off);
		ck_assert_msg(n > 0, "pread: %s", n ? strerror(errno) : "EOF");
		off += (size_t)n;
	}
}

/* Copy of the region as it is now, without changing its page tables: shmem
 * through its file (holes stay holes), private memory through the mapping
 * only where a page is mapped (never-touched pages stay unmapped). */
static uint8_t *region_copy(const struct region *r)
{
	uint8_t *c = t_buf_alloc(r->len);

	if (!is_private(r->kind)) {
		pread_all(r->fd, c, r->len);
		return c;
	}
	for (size_t p = 0; p < r->np; p++) {
		size_t off = p * t_page;
		if (r->kind == K_PRIVFD && !r->mapped[p])
			ck_assert(pread(r->fd, c + off, t_page, (off_t)off) == (ssize_t)t_page);
		else if (r->kind == K_ANON && r->hole[p])
			continue; /* never touched: zeros */
		else
			memcpy(c + off, r->addr + off, t_page);
	}
	return c;
}

/* Map a 16 MiB region of kind k at a 2 MiB aligned address between PROT_NONE
 * guards (so its VMAs never merge with neighbours) and fill it. Anonymous THP
 * gets MADV_HUGEPAGE before it is filled; small_tail: except its last 2 MiB,
 * which gets small pages and stays MADV_NOHUGEPAGE (or khugepaged collapses it
 * at once) until the thp disturbance makes it eligible.
 * dense_tail: no holes in the last 4 MiB (the two huge pages the thp column
 * collapses: MADV_COLLAPSE of shmem refuses ranges with holes in them). */
static void region_new(struct region *r, enum kind k, bool small_tail, bool dense_tail)
{
	const uint64_t seed = 0x3a7c + (uint64_t)k;
	int flags = MAP_FIXED, prot = PROT_READ | PROT_WRITE;
	uint8_t *want;

	memset(r, 0, sizeof(*r));
	r->fd = -1;
	r->kind = k;
	r->len = REGION;
	r->np = r->len / t_page;
	r->hole = calloc(r->np, 1);
	r->mapped = calloc(r->np, 1);
	ck_assert(r->hole && r->mapped);
	r->resv_len = r->len + 2 * HUGE;
	r->resv = mmap(NULL, r->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_msg(r->resv != MAP_FAILED, "mmap reservation: %s", strerror(errno));
	r->addr = (uint8_t *)(((uintptr_t)r->resv + t_page + HUGE - 1) & ~(uintptr_t)(HUGE - 1));

	switch (k) {
	case K_MEMFD:
	case K_PRIVFD:
		r->fd = memfd_create("usnap-matrix", MFD_CLOEXEC);
		ck_assert_msg(r->fd >= 0, "memfd_create: %s", strerror(errno));
		break;
	case K_THP:
		thp_mount(r);
		break;
	default:
		break;
	}
	if (r->fd >= 0)
		ck_assert_msg(ftruncate(r->fd, (off_t)r->len) == 0, "ftruncate: %s", strerror(errno));
	flags |= k == K_MEMFD || k == K_THP ? MAP_SHARED : k == K_ANONSH ? MAP_SHARED | MAP_ANONYMOUS
	       : k == K_PRIVFD ? MAP_PRIVATE : MAP_PRIVATE | MAP_ANONYMOUS;
	ck_assert_msg(mmap(r->addr, r->len, prot, flags, k == K_ANONSH || is_anon(k) ? -1 : r->fd, 0) == r->addr,
		      "mmap %s: %s", kdesc[k], strerror(errno));
	if (k == K_ANONSH) {
		char p[96];
		snprintf(p, sizeof(p), "/proc/self/map_files/%" PRIxPTR "-%" PRIxPTR, (uintptr_t)r->addr,
			 (uintptr_t)(r->addr + r->len));
		r->fd = open(p, O_RDONLY | O_CLOEXEC);
		ck_assert_msg(r->fd >= 0, "open %s: %s", p, strerror(errno));
	}
	if (k == K_ANONTHP) {
		ck_assert_int_eq(madvise(r->addr, r->len - (small_tail ? HUGE : 0), MADV_HUGEPAGE), 0);
		if (small_tail)
			ck_assert_int_eq(madvise(r->addr + r->len - HUGE, HUGE, MADV_NOHUGEPAGE), 0);
	}

	/* the expected contents: 1 page in 16 a hole (not with huge pages,
	 * which fill whole huge pages), the rest pseudo-random */
	want = t_buf_alloc(r->len);
	for (size_t p = 0; p < r->np; p++) {
		if (k != K_THP && k != K_ANONTHP && p % 16 == 9 && !(dense_tail && p >= r->np - 2 * HUGE / t_page))
			r->hole[p] = 1;
		else
			t_fill_page(want + p * t_page, seed, p);
	}
	if (k == K_PRIVFD) {
		/* the file holds the data; through the private mapping, pages
		 * p%3==0 are copied-on-write (and changed), p%3==1 read, p%3==2
		 * never touched */
		r->file = t_copy(want, r->len);
		for (size_t p = 0; p < r->np; p++)
			if (!r->hole[p])
				ck_assert(pwrite(r->fd, want + p * t_page, t_page, (off_t)(p * t_page)) ==
					  (ssize_t)t_page);
		for (size_t p = 0; p < r->np; p++) {
			uint8_t *a = r->addr + p * t_page;
			if (p % 3 == 0) {
				a[17] ^= 0xff;
				want[p * t_page + 17] ^= 0xff;
				r->mapped[p] = 1;
				r->hole[p] = 0;
			} else if (p % 3 == 1) {
				(void)*(volatile uint8_t *)a;
				r->mapped[p] = 1;
			}
		}
	} else {
		for (size_t p = 0; p < r->np; p++)
			if (!r->hole[p])
				memcpy(r->addr + p * t_page, want + p * t_page, t_page);
	}
	r->ref = region_copy(r);
	ck_assert_msg(memcmp(r->ref, want, r->len) == 0, "the region does not hold what was written into it");
	t_buf_free(want, r->len);
	r->now = t_copy(r->ref, r->len);
}

static void region_free(struct region *r)
{
	munmap(r->resv, r->resv_len); /* the region and its guards */
	if (r->fd >= 0)
		close(r->fd);
	t_buf_free(r->ref, r->len);
	t_buf_free(r->now, r->len);
	if (r->file)
		t_buf_free(r->file, r->len);
	free(r->hole);
	free(r->mapped);
}

/* ---- what the kernel shows about a range --------------------------------------------- */

struct thp_info {
	long pmd_kb;     /* ShmemPmdMapped + FilePmdMapped of the region's VMAs */
	long anon_kb;    /* AnonHugePages */
	long thp_pages;  /* pages of the region (mapped) that belong to a huge folio (kpageflags) */
	int vmas;
};

/* Mapped pages of [first, first+n) that belong to a huge folio. */
static long thp_pages(const struct region *r, size_t first, size_t n)
{
	uint64_t *pm = calloc(n, 8);
	int kfd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	long k = 0;

	ck_assert_msg(kfd >= 0 && pm, "open /proc/kpageflags: %s", strerror(errno));
	pagemap_read(r->addr + first * t_page, n, pm);
	for (size_t i = 0; i < n; i++) {
		uint64_t fl = 0;
		if (!(pm[i] & T_PM_PRESENT) || !(pm[i] & PM_PFN))
			continue;
		if (pread(kfd, &fl, 8, (off_t)((pm[i] & PM_PFN) * 8)) == 8 && (fl & KPF_THP))
			k++;
	}
	close(kfd);
	free(pm);
	return k;
}

static void thp_info(const struct region *r, struct thp_info *o)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	uintptr_t lo = (uintptr_t)r->addr, hi = lo + r->len;
	bool in = false;
	char line[512];

	memset(o, 0, sizeof(*o));
	ck_assert(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		long kb;
		char c;
		if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3) {
			in = s < hi && e > lo;
			o->vmas += in;
		} else if (in && sscanf(line, "ShmemPmdMapped: %ld", &kb) == 1) {
			o->pmd_kb += kb;
		} else if (in && sscanf(line, "FilePmdMapped: %ld", &kb) == 1) {
			o->pmd_kb += kb;
		} else if (in && sscanf(line, "AnonHugePages: %ld", &kb) == 1) {
			o->anon_kb += kb;
		}
	}
	fclose(f);
	o->thp_pages = thp_pages(r, 0, r->np);
}

static long count_protected(const struct region *r, size_t first, size_t n)
{
	return t_pagemap_protected(r->addr + first * t_page, n * t_page);
}

/* ---- one case -------------------------------------------------------------------------- */

struct run {
	struct region *r;
	enum col col;
	uffdsnap_snap_t *s;
	size_t first, n;        /* the target pages [first, first + n) */
	size_t skip;            /* a target page the writer leaves alone, or SIZE_MAX */
	bool expect_fail;       /* the disturbance must fail the snapshot (-ESTALE) */
	bool may_fail;          /* exact or -ESTALE, never a complete snapshot that is wrong */
	bool no_fault;          /* the first write need not fault (its page may be gone) */
	uint64_t fail_off;      /* at this offset (UINT64_MAX: any) */
	int pin[2];             /* pinpunch: the pipe holding the pinned page */
	char what[1024];        /* what the disturbance did and what the kernel showed */
	char before[256];       /* what was done before begin (thp: a collapse) */
	bool collapse_skip;     /* thp: no huge page to be had, the collapses prove nothing */
	/* populate */
	int pop_rc[3], pop_errno[3];
	uint64_t pop_faults;
	/* readers */
	_Atomic bool rstop;
	_Atomic unsigned long passes[2]; /* pages read */
	long minflt[2];
};

static void page_write(struct run *t, size_t p)
{
	size_t off = p * t_page + ((p * 8) % (t_page - 8) & ~(size_t)7);
	uint64_t v = 0x5eed000000000000ull ^ p;

	/* atomic (relaxed): the readers load the same words meanwhile */
	__atomic_store_n((uint64_t *)(t->r->addr + off), v, __ATOMIC_RELAXED);
	memcpy(t->r->now + off, &v, 8);
}

static int advise(void *a, size_t len, int advice, int *err)
{
	int rc = madvise(a, len, advice);

	*err = rc ? errno : 0;
	return rc;
}

static void writer_fn(struct t_writers *w, unsigned idx)
{
	struct run *t = w->arg;
	uint8_t *a = t->r->addr + t->first * t_page;
	size_t len = t->n * t_page;

	(void)idx;
	if (t->col == C_POPULATE) {
		uffdsnap_stats_t st0 = { .size = sizeof(st0) }, st1 = { .size = sizeof(st1) };
		uffdsnap_snap_stats(t->s, &st0);
		/* a write: each protected page must go through the handler */
		t->pop_rc[0] = advise(a, len / 2, MADV_POPULATE_WRITE, &t->pop_errno[0]);
		uffdsnap_snap_stats(t->s, &st1);
		t->pop_faults = st1.faults - st0.faults;
		t->pop_rc[1] = advise(a, len, MADV_WILLNEED, &t->pop_errno[1]);
		t->pop_rc[2] = advise(a, len, MADV_POPULATE_READ, &t->pop_errno[2]);
	}
	for (size_t p = t->first; p < t->first + t->n && !atomic_load(&w->stop); p++) {
		if (p == t->skip)
			continue;
		page_write(t, p);
		atomic_fetch_add(&w->progress[0], 1);
	}
}

struct reader_arg {
	struct run *t;
	unsigned i;
};

static void *reader_main(void *arg)
{
	struct reader_arg *ra = arg;
	struct run *t = ra->t;
	struct rusage ru;

	while (!atomic_load(&t->rstop)) {
		for (size_t off = 0; off < t->r->len && !atomic_load(&t->rstop); off += t_page) {
			(void)__atomic_load_n((uint64_t *)(t->r->addr + off + 64), __ATOMIC_RELAXED);
			atomic_fetch_add(&t->passes[ra->i], 1);
		}
	}
	getrusage(RUSAGE_THREAD, &ru);
	t->minflt[ra->i] = ru.ru_minflt;
	return NULL;
}

/* Read (map) every page of [first, first+n) that held data at the instant,
 * as a program would after begin: shmem huge pages are only markers then
 * (write-protect split the PMD), pages of the private file mapping may never
 * have been mapped. Holes are left alone (a MISSING fault would wait for the
 * shut sink). Returns the number of pages read. */
static size_t touch_pages(struct run *t, size_t first, size_t n)
{
	size_t k = 0;

	for (size_t p = first; p < first + n; p++) {
		if (t->r->hole[p])
			continue;
		(void)*(volatile uint64_t *)(t->r->addr + p * t_page);
		t->r->mapped[p] = 1;
		k++;
	}
	return k;
}

/* Pages of [first, first+n) that held data at the instant (and, for the
 * private file mapping, were mapped: MADV_PAGEOUT walks page tables). */
static bool data_page(const struct run *t, size_t p)
{
	if (t->r->hole[p])
		return false;
	return t->r->kind != K_PRIVFD || t->r->mapped[p];
}

/* -- zap -- */
static void disturb_zap(struct run *t)
{
	struct region *r = t->r;
	size_t half = t->n / 2, singles = 0;
	long present, prot;

	for (size_t p = t->first; p < t->first + half; p += 5, singles++)
		ck_assert_int_eq(madvise(r->addr + p * t_page, t_page, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(r->addr + (t->first + half) * t_page, (t->n - half) * t_page, MADV_DONTNEED),
			 0);
	present = t_pagemap_present(r->addr + t->first * t_page, t->n * t_page);
	prot = count_protected(r, t->first, t->n);
	snprintf(t->what, sizeof(t->what), "MADV_DONTNEED on %zu single pages and a %zu KiB range: %ld of %zu target "
		 "pages still present, %ld still write-protected", singles, (t->n - half) * t_page / KiB, present,
		 t->n, prot);
	if (is_private(r->kind)) {
		/* the data of the zapped pages is gone: anonymous memory reads as
		 * zeros again, the private file mapping as the file */
		for (size_t p = t->first; p < t->first + t->n; p++) {
			if (p >= t->first + half || (p - t->first) % 5 == 0) {
				size_t off = p * t_page;
				if (is_anon(r->kind))
					memset(r->now + off, 0, t_page);
				else
					memcpy(r->now + off, r->file + off, t_page);
			}
		}
		t->expect_fail = true;
		t->fail_off = t->first * t_page;
	} else {
		/* the page cache keeps the data and markers keep the protection */
		long data = 0;
		for (size_t p = t->first; p < t->first + t->n; p++)
			data += !r->hole[p];
		ck_assert_msg(prot == data, "%ld of %ld zapped data pages lost their write protection", data - prot,
			      data);
	}
}

/* -- pageout -- */
static void disturb_pageout(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page, *vec = calloc(t->n, 1);
	uint64_t *pm = calloc(t->n, 8);
	long pswp0 = vmstat("pswpout"), pswp1, data = 0, swapped = 0, swent = 0, marker = 0, prot = 0;
	size_t touched = touch_pages(t, t->first, t->n);
	int rc1, rc2, e1, e2;

	ck_assert(vec && pm);
	rc1 = advise(a, t->n * t_page, MADV_PAGEOUT, &e1);
	rc2 = advise(a, t->n * t_page, MADV_PAGEOUT, &e2); /* what per-CPU batches kept back */
	pswp1 = vmstat("pswpout");
	ck_assert_msg(rc1 == 0 && rc2 == 0, "MADV_PAGEOUT: %s", strerror(rc1 ? e1 : e2));
	ck_assert_int_eq(mincore(a, t->n * t_page, vec), 0);
	pagemap_read(a, t->n, pm);
	for (size_t i = 0; i < t->n; i++) {
		if (!data_page(t, t->first + i))
			continue;
		data++;
		swapped += !(vec[i] & 1);
		if ((pm[i] & PM_SWAP) && !(pm[i] & T_PM_PRESENT)) {
			if (PM_SWAP_TYPE(pm[i]) < 24)
				swent++; /* a swap entry (anonymous memory) */
			else
				marker++; /* a marker (type 31 here): shmem keeps its swap in the page cache */
		}
		prot += !!(pm[i] & T_PM_WP);
	}
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), MADV_PAGEOUT x2 on %zu pages (%ld with "
		 "data): %ld swapped out (not resident per mincore; pagemap: %ld swap entries, %ld uffd-wp markers), "
		 "pswpout +%ld, %ld still write-protected", touched, t->n, data, swapped, swent, marker, pswp1 - pswp0,
		 prot);
	ck_assert_msg(swapped > 0, "MADV_PAGEOUT swapped out none of %ld data pages although %s is swap "
		      "(pswpout +%ld)", data, g_swap.dev, pswp1 - pswp0);
	ck_assert_msg(prot == data, "%ld of %ld paged-out data pages lost their write protection", data - prot, data);
	free(vec);
	free(pm);
}

/* -- migrate -- */
static size_t pfns_moved(const struct region *r, const uint64_t *before, size_t first, size_t n, uint64_t *now)
{
	size_t moved = 0;

	pagemap_read(r->addr, r->np, now);
	for (size_t p = first; p < first + n; p++)
		moved += (before[p] & T_PM_PRESENT) && (now[p] & T_PM_PRESENT) &&
			 (before[p] & PM_PFN) != (now[p] & PM_PFN);
	return moved;
}

/* Offline and online again the (up to 3) memory blocks holding most present
 * target pages: every movable page in them is migrated elsewhere. */
static void offline_cycle(struct run *t, const uint64_t *pm, char *desc, size_t desclen)
{
	unsigned long long block_bytes = 0;
	unsigned long blocks[3] = { 0 };
	size_t counts[3] = { 0 }, len = 0;
	FILE *f = fopen("/sys/devices/system/memory/block_size_bytes", "re");

	desc[0] = '\0';
	if (!f || fscanf(f, "%llx", &block_bytes) != 1 || !block_bytes) {
		snprintf(desc, desclen, "; no memory blocks to offline");
		if (f)
			fclose(f);
		return;
	}
	fclose(f);
	for (unsigned k = 0; k < 3; k++) {
		for (size_t p = t->first; p < t->first + t->n; p++) {
			unsigned long b;
			size_t c = 0;
			bool taken = false;
			if (!(pm[p] & T_PM_PRESENT))
				continue;
			b = (unsigned long)((pm[p] & PM_PFN) * t_page / block_bytes);
			for (unsigned j = 0; j < k; j++)
				taken |= blocks[j] == b;
			if (taken)
				continue;
			for (size_t q = t->first; q < t->first + t->n; q++)
				c += (pm[q] & T_PM_PRESENT) &&
				     (unsigned long)((pm[q] & PM_PFN) * t_page / block_bytes) == b;
			if (c > counts[k])
				counts[k] = c, blocks[k] = b;
		}
	}
	if (!counts[0]) {
		snprintf(desc, desclen, ", no present target page to offline");
		return;
	}
	len += (size_t)snprintf(desc + len, desclen - len, ", then memory blocks offlined and onlined again:");
	for (unsigned k = 0; k < 3 && counts[k]; k++) {
		char path[128], state[32] = "";
		int off, on;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/memory%lu/state", blocks[k]);
		f = fopen(path, "re");
		if (!f || !fgets(state, sizeof(state), f) || strncmp(state, "online", 6)) {
			if (f)
				fclose(f);
			continue;
		}
		fclose(f);
		off = write_str_bounded(path, "offline", 5);
		on = 0;
		if (!off && (on = write_str(path, "online_kernel")) && (on = write_str(path, "online")))
			ck_abort_msg("memory block %lu was offlined and cannot be onlined again: %s", blocks[k],
				     strerror(-on));
		len += (size_t)snprintf(desc + len, desclen - len, " #%lu (%zu target pages) %s", blocks[k], counts[k],
					off ? strerror(-off) : "ok");
		if (len >= desclen)
			break;
	}
}

/* Compaction moves pages from the bottom of a zone into free pages its
 * second scan finds from the top, until the two scans meet: pages near the
 * top stay where they are, and the pages it moved are near the top. So
 * compact once before the region is allocated: its pages then come from
 * what that compaction freed near the bottom, where the next one takes
 * pages from. */
static void compact(void)
{
	int e = write_str("/proc/sys/vm/compact_memory", "1");

	ck_assert_msg(e == 0, "compact_memory: %s", strerror(-e));
}

static void disturb_migrate(struct run *t)
{
	struct region *r = t->r;
	uint64_t *before = calloc(r->np, 8), *now = calloc(r->np, 8);
	size_t touched = touch_pages(t, t->first, t->n);
	long mig0 = vmstat("pgmigrate_success"), prot0 = count_protected(r, t->first, t->n), prot1;
	size_t present = 0, moved = 0, moved_region, moved_prot = 0, compactions = 0;
	long mig;
	char off_desc[512] = "";

	ck_assert(before && now);
	pagemap_read(r->addr, r->np, before);
	for (size_t p = t->first; p < t->first + t->n; p++)
		present += !!(before[p] & T_PM_PRESENT);
	/* compaction moves what lies below its free scanner: often many pages
	 * of the region, sometimes none */
	while (compactions < 3 && moved < present / 2) {
		compact();
		compactions++;
		moved = pfns_moved(r, before, t->first, t->n, now);
	}
	if (moved < present / 8 && getenv("USNAP_MATRIX_OFFLINE")) {
		offline_cycle(t, before, off_desc, sizeof(off_desc));
		moved = pfns_moved(r, before, t->first, t->n, now);
	}
	moved_region = pfns_moved(r, before, 0, r->np, now);
	mig = vmstat("pgmigrate_success") - mig0;
	prot1 = count_protected(r, t->first, t->n);
	for (size_t p = t->first; p < t->first + t->n; p++)
		if ((before[p] & T_PM_PRESENT) && (now[p] & T_PM_PRESENT) &&
		    (before[p] & PM_PFN) != (now[p] & PM_PFN))
			moved_prot += (before[p] & T_PM_WP) && (now[p] & T_PM_WP);
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), compact_memory x%zu%s: %zu of %zu present "
		 "target pages migrated (new PFN; %zu in the region), %zu of them write-protected before and after, "
		 "pgmigrate_success +%ld; write-protected target pages %ld before, %ld after", touched, compactions,
		 off_desc, moved, present, moved_region, moved_prot, mig, prot0, prot1);
	ck_assert_msg(prot1 == prot0, "migration dropped the write protection of %ld target pages", prot0 - prot1);
	ck_assert_msg(moved_prot == moved, "%zu migrated target pages lost their write protection", moved - moved_prot);
	ck_assert_msg(mig >= (long)moved, "%zu pages got a new PFN but pgmigrate_success rose by %ld", moved, mig);
	if (!moved) {
		/* compaction moves the movable pages below the point where its
		 * two scanners meet, and never a pageblock-sized folio */
		t_skip(case_name, "compaction migrated none of the %zu target pages (pgmigrate_success +%ld)%s; "
			   "USNAP_MATRIX_OFFLINE=1 also tries to offline their memory blocks", present, mig,
			   r->kind == K_THP || r->kind == K_ANONTHP ? ": it does not move 2 MiB huge pages" : "");
	}
	free(before);
	free(now);
}

/* -- thp --
 * MADV_COLLAPSE three times: before the instant (of the last huge page but
 * one: the snapshot then starts on a huge page made a moment before, and the
 * disturbance splits it), during the snapshot (of the last one), and after
 * the snapshot (the last one again). The kernel refuses to collapse over
 * write-protected memory: mm/khugepaged.c gives up with SCAN_PTE_UFFD_WP on
 * an anonymous PTE or swap entry with the uffd-wp bit and on a file VMA
 * registered for write-protect (userfaultfd_wp(vma)), and MADV_COLLAPSE turns
 * that into EINVAL. So the collapse during the snapshot must be refused (or,
 * should a kernel allow it, leave the pages protected); the ones before and
 * after must happen, which the pages' folios show (kpageflags). */

/* MADV_COLLAPSE of the huge page at `a`; rc, errno and how many of its 512
 * pages are then in a huge folio (read first: shmem collapses the file, and
 * its pages may not be mapped) into the outputs. */
static int collapse(struct run *t, uint8_t *a, int *err, long *folio)
{
	struct region *r = t->r;
	size_t first = (size_t)(a - r->addr) / t_page;
	int rc;

	if (is_anon(r->kind))
		ck_assert_int_eq(madvise(a, HUGE, MADV_HUGEPAGE), 0); /* small_tail's NOHUGEPAGE: eligible now */
	rc = advise(a, HUGE, MADV_COLLAPSE, err);
	touch_pages(t, first, HUGE / t_page);
	*folio = thp_pages(r, first, HUGE / t_page);
	return rc;
}

/* The collapse before begin, where nothing is registered. A MAP_PRIVATE file
 * mapping with pages copied-on-write cannot be collapsed at all (the file's
 * huge folio cannot replace the anonymous copies): there it only runs. */
static void collapse_before(struct run *t, char *desc, size_t desclen)
{
	struct region *r = t->r;
	long folio;
	int e, rc = collapse(t, r->addr + r->len - 2 * HUGE, &e, &folio);

	snprintf(desc, desclen, "MADV_COLLAPSE before begin: %s%s (%ld of 512 pages in a huge folio)",
		 rc ? "failed, " : "0", rc ? strerror(e) : "", folio);
	if (r->kind == K_PRIVFD)
		return;
	if (rc && (e == EAGAIN || e == ENOMEM)) {
		t_skip(case_name, "MADV_COLLAPSE before begin: %s (no huge page to be had)", strerror(e));
		t->collapse_skip = true;
		return;
	}
	ck_assert_msg(rc == 0 && folio == 512, "%s", desc);
}

static void disturb_thp(struct run *t)
{
	struct region *r = t->r;
	struct thp_info i0, i1, i2;
	uint8_t *last = r->addr + r->len - HUGE, *split = r->addr + r->len - 2 * HUGE;
	long prot0 = count_protected(r, t->first, t->n), prot1, folio;
	int rc, e;

	thp_info(r, &i0);
	rc = collapse(t, last, &e, &folio);
	thp_info(r, &i1);
	/* split the huge page (or page table) below: half of it read-only, then back */
	ck_assert_int_eq(mprotect(split, HUGE / 2, PROT_READ), 0);
	thp_info(r, &i2);
	ck_assert_int_eq(mprotect(split, HUGE / 2, PROT_READ | PROT_WRITE), 0);
	prot1 = count_protected(r, t->first, t->n);
	snprintf(t->what, sizeof(t->what), "%s; MADV_COLLAPSE of the last 2 MiB during the snapshot: %s%s (its pages "
		 "read back: %ld of 512 "
		 "in a huge folio); mapped huge-folio pages %ld -> %ld, PmdMapped %ld -> %ld kB, AnonHugePages %ld -> "
		 "%ld kB; mprotect of half a huge page: %d VMAs, AnonHugePages %ld kB, PmdMapped %ld kB; "
		 "write-protected target pages %ld before, %ld after", t->before, rc ? "failed, " : "0 (collapsed)",
		 rc ? strerror(e) : "", folio, i0.thp_pages, i1.thp_pages, i0.pmd_kb, i1.pmd_kb, i0.anon_kb, i1.anon_kb,
		 i2.vmas, i2.anon_kb, i2.pmd_kb, prot0, prot1);
	/* refused over protected pages (see above); a kernel that collapsed
	 * anyway may move the data to a new huge page, never unprotect it */
	ck_assert_msg(rc ? e == EINVAL : folio == 512, "MADV_COLLAPSE during the snapshot: %s, %ld of 512 pages in "
		      "a huge folio", rc ? strerror(e) : "0", folio);
	ck_assert_msg(prot1 == prot0, "MADV_COLLAPSE/mprotect left %ld target pages unprotected", prot0 - prot1);
}

/* The collapse after the snapshot, where nothing is registered any more: it
 * must happen (a snapshot leaves nothing behind that stops it), and keep
 * what the program wrote. */
static void collapse_after(struct run *t)
{
	struct region *r = t->r;
	long folio;
	int e, rc = collapse(t, r->addr + r->len - HUGE, &e, &folio);

	printf("%s: MADV_COLLAPSE of the last 2 MiB after the snapshot: %s%s (%ld of 512 pages in a huge folio)\n",
	       case_name, rc ? "failed, " : "0", rc ? strerror(e) : "", folio);
	if (r->kind == K_PRIVFD || t->collapse_skip)
		return;
	if (rc && (e == EAGAIN || e == ENOMEM)) {
		t_skip(case_name, "MADV_COLLAPSE after the snapshot: %s (no huge page to be had)", strerror(e));
		return;
	}
	ck_assert_msg(rc == 0 && folio == 512, "MADV_COLLAPSE after the snapshot: %s, %ld of 512 pages in a huge "
		      "folio", rc ? strerror(e) : "0", folio);
	ck_assert_msg(memcmp(r->addr, r->now, r->len) == 0, "the collapse changed the region");
}

/* -- mprotect -- */
static void disturb_mprotect(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page;
	size_t len = t->n * t_page;
	long prot0 = count_protected(r, t->first, t->n), prot1;
	struct thp_info ti;
	int maxvmas = 0;

	for (int round = 0; round < 3; round++) {
		ck_assert_int_eq(mprotect(a, len, PROT_READ), 0);
		ck_assert_int_eq(mprotect(a, len, PROT_READ | PROT_WRITE), 0);
		ck_assert_int_eq(mprotect(a + len / 4, len / 2, PROT_READ), 0); /* splits the VMA in three */
		ck_assert_int_eq(mprotect(a + len / 4, len / 2, PROT_READ | PROT_WRITE), 0);
		for (size_t off = 0; off < len; off += 128 * KiB) /* and in many */
			ck_assert_int_eq(mprotect(a + off, 64 * KiB, PROT_READ), 0);
		thp_info(r, &ti);
		if (ti.vmas > maxvmas)
			maxvmas = ti.vmas;
		ck_assert_int_eq(mprotect(a, len, PROT_READ | PROT_WRITE), 0);
	}
	prot1 = count_protected(r, t->first, t->n);
	thp_info(r, &ti);
	snprintf(t->what, sizeof(t->what), "3 rounds of PROT_READ / PROT_READ|PROT_WRITE over %zu KiB (whole, middle "
		 "half, every other 64 KiB: up to %d VMAs, %d after): write-protected target pages %ld before, %ld after",
		 len / KiB, maxvmas, ti.vmas, prot0, prot1);
	ck_assert_msg(prot1 == prot0, "mprotect made %ld protected pages writable", prot0 - prot1);
}

/* -- readers: read faults everywhere while the writer writes -- */
static void disturb_readers_prep(struct run *t)
{
	struct region *r = t->r;

	/* shmem: zap the targets so the readers' loads fault them back in
	 * (through the markers); private memory has never-touched pages */
	if (!is_private(r->kind))
		ck_assert_int_eq(madvise(r->addr + t->first * t_page, t->n * t_page, MADV_DONTNEED), 0);
}

/* -- punch -- */
static void disturb_punch(struct run *t)
{
	struct region *r = t->r;
	size_t p = r->np - 3;
	uint8_t *a = r->addr + p * t_page;

	ck_assert(!r->hole[p]);
	ck_assert(t_pagemap_entry(a) & T_PM_WP);
	t->expect_fail = true;
	t->fail_off = p * t_page;
	memset(r->now + p * t_page, 0, t_page);
	if (r->kind == K_THP) {
		size_t touched = touch_pages(t, t->first, t->n);
		long huge0 = thp_pages(r, t->first, t->n), huge1;
		ck_assert_int_eq(fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(p * t_page),
					   (off_t)t_page), 0);
		huge1 = thp_pages(r, t->first, t->n);
		t->skip = p; /* never touched again: the copy must notice */
		snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped): %ld in a huge folio; fallocate("
			 "PUNCH_HOLE) of page %zu, not touched again: %ld target pages in a huge folio after (%s), file "
			 "holes %ld", touched, huge0, p, huge1, huge1 < huge0 ? "the folio was split" : "NOT split",
			 t_mem_holes(&(struct t_mem){ .fd = r->fd, .len = r->len }));
	} else {
		ck_assert_int_eq(madvise(a, t_page, MADV_REMOVE), 0);
		snprintf(t->what, sizeof(t->what), "MADV_REMOVE of page %zu, then the writer writes it (a MISSING fault "
			 "on a page that held data)", p);
	}
}

/* -- free: MADV_FREE, then reclaim discards the lazily freed pages -- */
static void disturb_free(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page;
	size_t len = t->n * t_page;
	uint64_t *pm = calloc(t->n, 8);
	long discarded = 0, present = 0, prot = 0, prot0 = count_protected(r, t->first, t->n);
	int rc, e;

	ck_assert(pm != NULL);
	rc = advise(a, len, MADV_FREE, &e);
	ck_assert_msg(rc == 0, "MADV_FREE: %s", strerror(e));
	/* clean lazily-freed pages are dropped, not swapped (no swap needed) */
	advise(a, len, MADV_PAGEOUT, &e);
	advise(a, len, MADV_PAGEOUT, &e);
	pagemap_read(a, t->n, pm);
	for (size_t i = 0; i < t->n; i++) {
		present += !!(pm[i] & T_PM_PRESENT);
		prot += !!(pm[i] & T_PM_WP);
		if (!(pm[i] & (T_PM_PRESENT | PM_SWAP | T_PM_WP))) {
			discarded++; /* reads as zeros from now on */
			memset(r->now + (t->first + i) * t_page, 0, t_page);
		}
	}
	snprintf(t->what, sizeof(t->what), "MADV_FREE over %zu pages, then MADV_PAGEOUT x2: %ld pages discarded (no "
		 "page, no protection left), %ld still present; write-protected target pages %ld before, %ld after",
		 t->n, discarded, present, prot0, prot);
	/* no event tells the library: it must notice, or the pages must not go */
	t->may_fail = true;
	t->no_fault = true;
	t->fail_off = UINT64_MAX;
	free(pm);
}

/* -- pinpunch: a hole punch of a page someone holds a reference to (an
 * O_DIRECT or io_uring buffer in flight; here vmsplice into a pipe). A small
 * page leaves the page cache all the same; in a huge folio the reference
 * stops the split, and the kernel zeroes the 4 KiB inside the folio instead:
 * the page stays "data" for SEEK_DATA.
 * KNOWN BLIND SPOT (docs/consistency.md): in a huge folio the copy reads
 * zeros and SEEK_DATA says data, so nothing can tell the zeroed page from one
 * that was zero at the instant; the snapshot completes with zeros there. The
 * case asserts exactly that, and the rest exact. The memfd case (a small
 * page) is detected (-ESTALE). -- */
static void disturb_pinpunch(struct run *t)
{
	struct region *r = t->r;
	size_t p = r->np - 3, touched = touch_pages(t, t->first, t->n);
	long huge0 = thp_pages(r, t->first, t->n), huge1;
	struct iovec iov = { r->addr + p * t_page, t_page };
	off_t at = (off_t)(p * t_page);
	uint8_t page[4096];
	bool zero = true;

	ck_assert(t_page <= sizeof(page) && !r->hole[p]);
	ck_assert_int_eq(pipe2(t->pin, O_CLOEXEC), 0);
	ck_assert_int_eq(vmsplice(t->pin[1], &iov, 1, 0), (ssize_t)t_page);
	ck_assert_int_eq(fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, (off_t)t_page), 0);
	huge1 = thp_pages(r, t->first, t->n);
	ck_assert(pread(r->fd, page, t_page, at) == (ssize_t)t_page);
	for (size_t i = 0; i < t_page; i++)
		zero &= !page[i];
	memset(r->now + p * t_page, 0, t_page);
	t->skip = p; /* never touched again */
	t->may_fail = true;
	t->fail_off = (uint64_t)at;
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), %ld in a huge folio; page %zu pinned "
		 "(vmsplice), then fallocate(PUNCH_HOLE) of it, not touched again: %ld target pages in a huge folio "
		 "after, the page reads %s, SEEK_DATA calls it %s", touched, huge0, p, huge1,
		 zero ? "all zero" : "NOT zero", lseek(r->fd, at, SEEK_DATA) == at ? "data" : "a hole");
}

static void matrix_run(enum kind k, enum col c)
{
	struct region r;
	struct run t;
	struct t_cb cb;
	struct t_writers w;
	struct thp_info thp0, thp1, thp2;
	struct reader_arg ra[2];
	pthread_t rt[2];
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_stats_t st;
	uint64_t faults0, t0, tcase0;
	unsigned long long writes;
	bool held = false;
	long prot_before;
	int rc;

	snprintf(case_name, sizeof(case_name), "%s_%s", kname[k], cname[c]);
	if (c == C_PAGEOUT && !g_swap.ok) {
		t_skip(case_name, "no swap for MADV_PAGEOUT: %s", g_swap.why);
		return;
	}
	t_watchdog(45, case_name);
	tcase0 = t_now_ns();
	memset(&t, 0, sizeof(t));
	if (c == C_MIGRATE)
		compact();
	region_new(&r, k, c == C_THP, c == C_THP);
	t.pin[0] = t.pin[1] = -1;
	t.r = &r;
	t.col = c;
	/* migrate: the last 10 MiB (the sweep stalls at 4), so that compaction,
	 * which moves only some pages, finds some of them (see compact()) */
	t.n = (c == C_THP ? 2 : c == C_MIGRATE ? 5 : 1) * HUGE / t_page;
	t.first = r.np - t.n;
	t.skip = SIZE_MAX;
	if (c == C_THP) {
		collapse_before(&t, t.before, sizeof(t.before));
		t_buf_free(r.ref, r.len); /* the same bytes, unless a hole became a zero page */
		t_buf_free(r.now, r.len);
		r.ref = region_copy(&r);
		r.now = t_copy(r.ref, r.len);
	}
	thp_info(&r, &thp0);

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "r", r.addr, r.len);
	t_cb_init(&cb, -1);
	cb.keep = true;
	t_cb_gate(&cb, true);
	rc = uffdsnap_begin(ctx, t_cb_sink(&cb), &t.s);
	ck_assert_msg(rc == 0, "begin: %d %s (%s)", rc, uffdsnap_strerror(rc), uffdsnap_last_error());
	/* the sink is shut: the sweep stops once every buffer is full (4 MiB),
	 * far below the targets in the last 2-4 MiB */
	ck_assert(t_cb_wait_blocked(&cb, 10));
	thp_info(&r, &thp1);
	prot_before = count_protected(&r, t.first, t.n);
	ck_assert_msg(prot_before > 0, "no target page is write-protected after begin");

	if (k == K_THP && c != C_PAGEOUT && c != C_MIGRATE && c != C_READERS && c != C_PUNCH && c != C_PINPUNCH) {
		/* write-protect left markers only (the PMD was split): map half of
		 * the targets again, still protected, and leave half as markers */
		touch_pages(&t, t.first, t.n / 2);
	}
	switch (c) {
	case C_ZAP: disturb_zap(&t); break;
	case C_PAGEOUT: disturb_pageout(&t); break;
	case C_MIGRATE: disturb_migrate(&t); break;
	case C_THP: disturb_thp(&t); break;
	case C_MPROTECT: disturb_mprotect(&t); break;
	case C_READERS: disturb_readers_prep(&t); break;
	case C_PUNCH: disturb_punch(&t); break;
	case C_FREE: disturb_free(&t); break;
	case C_PINPUNCH: disturb_pinpunch(&t); break;
	default: break;
	}

	t_stats(t.s, &st);
	faults0 = st.faults;
	if (c == C_READERS) {
		for (unsigned i = 0; i < 2; i++) {
			ra[i] = (struct reader_arg){ &t, i };
			ck_assert(pthread_create(&rt[i], NULL, reader_main, &ra[i]) == 0);
		}
	}
	t_writers_start(&w, 1, writer_fn, &t);
	if (!t.expect_fail && !t.no_fault) {
		/* the sink is still shut and the sweep stalled: the first write to
		 * a protected page must raise a fault (and wait for a buffer) */
		t0 = t_now_ns();
		while (!(held = st.faults > faults0) && t_now_ns() - t0 < 10000000000ull) {
			usleep(1000);
			t_stats(t.s, &st);
		}
	}
	/* ~25 MiB/s at most: the sweep (4 MiB in) stays well behind the targets
	 * (12 MiB in) while the writer, whose faults are served first, writes */
	atomic_store(&cb.sleep_us, 10000);
	t_cb_gate(&cb, false);
	t_writers_join(&w, 30);
	writes = atomic_load(&w.progress[0]);
	if (c == C_READERS) {
		atomic_store(&t.rstop, true);
		for (unsigned i = 0; i < 2; i++)
			ck_assert_msg(t_join_timeout(rt[i], 30) == 0, "reader %u blocked", i);
		snprintf(t.what, sizeof(t.what), "%s2 readers read %lu and %lu pages of the region (%ld and %ld minor "
			 "faults) while the writer wrote", is_private(k) ? "" : "targets zapped, then ",
			 (unsigned long)t.passes[0], (unsigned long)t.passes[1], t.minflt[0], t.minflt[1]);
	}
	if (c == C_POPULATE)
		snprintf(t.what, sizeof(t.what), "MADV_POPULATE_WRITE over %zu pages: %d%s%s (%llu fault messages), "
			 "MADV_WILLNEED: %d%s%s, MADV_POPULATE_READ over %zu pages: %d%s%s", t.n / 2, t.pop_rc[0],
			 t.pop_rc[0] ? " " : "", t.pop_rc[0] ? strerror(t.pop_errno[0]) : "",
			 (unsigned long long)t.pop_faults, t.pop_rc[1], t.pop_rc[1] ? " " : "",
			 t.pop_rc[1] ? strerror(t.pop_errno[1]) : "", t.n, t.pop_rc[2], t.pop_rc[2] ? " " : "",
			 t.pop_rc[2] ? strerror(t.pop_errno[2]) : "");
	atomic_store(&cb.sleep_us, 0);
	rc = uffdsnap_wait(t.s);
	t_stats(t.s, &st);
	thp_info(&r, &thp2);
	if (t.pin[0] >= 0) {
		close(t.pin[0]);
		close(t.pin[1]);
	}

	/* the end state holds whatever the outcome: nothing protected, the
	 * writer done, the memory what the program wrote */
	ck_assert_int_eq(t_pagemap_protected(r.addr, r.len), 0);
	ck_assert_uint_eq(writes, t.n - (t.skip != SIZE_MAX));
	ck_assert_msg(memcmp(r.addr, r.now, r.len) == 0, "the region does not hold what the program wrote");

	if (t.expect_fail || (t.may_fail && rc)) {
		char off[32] = "region 'r'";
		const char *msg = uffdsnap_snap_error(t.s);
		if (t.fail_off != UINT64_MAX)
			snprintf(off, sizeof(off), "0x%" PRIx64, t.fail_off);
		printf("%s: %s: %s; wait %d (%s) \"%s\"; writer wrote %llu pages; faults=%llu fault-copied=%llu; "
		       "%.0f ms\n", case_name, kdesc[k], t.what, rc, rc ? uffdsnap_strerror(rc) : "no error", msg, writes,
		       (unsigned long long)st.faults, (unsigned long long)st.pages_fault, t_ms_since(tcase0));
		ck_assert_msg(rc == -ESTALE, "wait: %d, expected -ESTALE (%s)", rc, msg);
		ck_assert_msg(strstr(msg, "region 'r'") && strstr(msg, off), "error \"%s\" does not name region 'r' "
			      "and offset %s", msg, off);
	} else {
		struct t_expect ex = { "r", r.ref, r.len };
		char thp[256] = "";
		if (k == K_THP || k == K_ANONTHP)
			snprintf(thp, sizeof(thp), "; huge pages PMD-mapped: %ld before begin (ShmemPmdMapped %ld kB, "
				 "AnonHugePages %ld kB), %ld after begin, %ld after the snapshot; mapped pages in huge "
				 "folios: %ld, %ld, %ld", (thp0.pmd_kb + thp0.anon_kb) / 2048, thp0.pmd_kb, thp0.anon_kb,
				 (thp1.pmd_kb + thp1.anon_kb) / 2048, (thp2.pmd_kb + thp2.anon_kb) / 2048, thp0.thp_pages,
				 thp1.thp_pages, thp2.thp_pages);
		printf("%s: %s: %s; writer wrote %llu pages after begin, its first write %s; faults=%llu "
		       "fault-copied=%llu sweep=%llu hole=%llu%s; wait %d; %.0f ms\n", case_name, kdesc[k], t.what, writes,
		       held ? "faulted while the sink was shut" : t.no_fault ? "was not required to fault"
		       : "DID NOT FAULT", (unsigned long long)st.faults,
		       (unsigned long long)st.pages_fault, (unsigned long long)st.pages_sweep,
		       (unsigned long long)st.pages_hole, thp, rc, t_ms_since(tcase0));
		ck_assert_msg(rc == 0, "wait: %d %s", rc, uffdsnap_snap_error(t.s));
		t_assert_exactly_once(&st);
		if (!t.no_fault) {
			ck_assert_msg(held, "the writer's first write to a protected page raised no fault");
			ck_assert_uint_gt(st.pages_fault, 0);
		}
		if (c == C_POPULATE) {
			ck_assert_msg(t.pop_rc[0] == 0, "MADV_POPULATE_WRITE: %s", strerror(t.pop_errno[0]));
			ck_assert_msg(t.pop_faults > 0, "MADV_POPULATE_WRITE of protected pages raised no fault");
			ck_assert_msg(t.pop_rc[2] == 0, "MADV_POPULATE_READ: %s", strerror(t.pop_errno[2]));
		}
		if (c == C_READERS)
			ck_assert(t.passes[0] > 0 && t.passes[1] > 0);
		if (c == C_PINPUNCH && k == K_THP) {
			printf("%s: KNOWN BLIND SPOT (docs/consistency.md): the pinned page punched inside a huge folio "
			       "is zero in the snapshot; every other page must be exact\n", case_name);
			memset(r.ref + t.skip * t_page, 0, t_page);
		}
		t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	if (c == C_THP)
		collapse_after(&t);
	uffdsnap_snap_free(t.s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	region_free(&r);
	t_watchdog(0, NULL);
}

START_TEST(matrix_case)
{
	matrix_run((enum kind)(_i / NCOLS), (enum col)(_i % NCOLS));
}
END_TEST

/* hugetlbfs: MAP_SHARED is accepted (test-hugetlb.c snapshots it), MAP_PRIVATE refused. */
START_TEST(hugetlb_kinds)
{
	const int kinds[2] = { MAP_SHARED, MAP_PRIVATE };

	for (int i = 0; i < 2; i++) {
		uffdsnap_t *ctx;
		void *a = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, kinds[i] | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE,
			       -1, 0);
		int id;
		if (a == MAP_FAILED) {
			t_skip("hugetlb_kinds", "mmap MAP_HUGETLB: %s", strerror(errno));
			return;
		}
		ctx = t_ctx_new(NULL);
		id = uffdsnap_add_region(ctx, "huge", a, HUGE);
		printf("hugetlb_kinds: %s hugetlb: add_region %d \"%s\"\n", i ? "MAP_PRIVATE" : "MAP_SHARED", id,
		       id < 0 ? uffdsnap_last_error() : "accepted");
		if (i)
			ck_assert_int_eq(id, -EMEDIUMTYPE);
		else
			ck_assert_int_ge(id, 0);
		uffdsnap_free(ctx);
		munmap(a, HUGE);
	}
}
END_TEST

int main(void)
{
	static char names[NKINDS * NCOLS][48];
	Suite *s = suite_create("matrix");
	TCase *tc;
	const bool all = !T_SANITIZED || getenv("USNAP_MATRIX_ALL") || getenv("CK_RUN_CASE");
	unsigned ncases = 0, nrun = 0;

	t_test_require_uffd();
	t_test_require_root(); /* pagemap PFNs, kpageflags, mounts, compaction, zram */
	for (int c = 0; c < NCOLS; c++) {
		for (int k = 0; k < NKINDS; k++) {
			int i = k * NCOLS + c;
			if (!case_exists((enum kind)k, (enum col)c))
				continue;
			ncases++;
			if (!all && !sanitizer_case((enum kind)k, (enum col)c))
				continue;
			nrun++;
			snprintf(names[i], sizeof(names[i]), "%s_%s", kname[k], cname[c]);
			tc = tcase_create(names[i]);
			tcase_set_timeout(tc, 60);
			/* the columns that skip when the machine cannot give the
			 * event: meson tests of their own (tests/meson.build) */
			if (c == C_PAGEOUT) {
				tcase_set_tags(tc, "swap");
				tcase_add_unchecked_fixture(tc, swap_up, swap_down);
			}
			if (c == C_MIGRATE) /* compaction moves no 2 MiB folio */
				tcase_set_tags(tc, k == K_THP || k == K_ANONTHP ? "migrate-huge" : "migrate");
			if (c == C_THP)
				tcase_set_tags(tc, "thp");
			tcase_add_loop_test(tc, matrix_case, i, i + 1);
			suite_add_tcase(s, tc);
		}
	}
	if (!all)
		printf("matrix: sanitizer build: %u of %u cases, one shared and one private kind per column (the plain "
		       "build runs all of them; USNAP_MATRIX_ALL=1 runs all here)\n", nrun, ncases);
	tc = tcase_create("hugetlb_kinds");
	tcase_set_tags(tc, "hugetlb");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, hugetlb_kinds);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
