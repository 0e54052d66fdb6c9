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
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#ifndef TSAN
#define TSAN 0
#endif

/*
 * The oracle's word-by-word checks (check_owner, check_static) read only
 * the verifier's own buffers, filled by the reader in the same thread, and
 * tables written before any other thread started: nothing another thread
 * touches. Under TSan they are left uninstrumented, so that a snapshot takes
 * about as long to verify as to take, and the seconds go to snapshots under
 * the disturbers (the interleavings TSan is there for), not to checking
 * 96 MiB word by word at TSan's speed. The reader, the library and
 * everything else stay instrumented.
 */
#if TSAN
#define ORACLE_UNINSTRUMENTED __attribute__((no_sanitize("thread")))
#else
#define ORACLE_UNINSTRUMENTED
#endif

#define NWRITERS 4
#define CHILD NWRITERS           /* owner id of the forked children */
#define NOWNERS (NWRITERS + 1)
/* Halved under the sanitizers: verifying each snapshot word by word took ~12 s
 * of TSan's time at full size; the events and races are the same. */
#define SHM_LEN ((T_SANITIZED ? 32 : 64) * MiB)
#define PRIV_LEN ((T_SANITIZED ? 16 : 32) * MiB)
#define ZPAGES 256               /* last heap pages: static, for the zap phase */
#define CHILD_UPDATES 48         /* page updates per child */
#define MOVES_PER_WINDOW 3
#define THROTTLE_US 20000        /* per sink call while the mremap window is open */

enum { R_SHM, R_PRIV, NREG };
static const char *const reg_name[NREG] = { "shm", "heap" };
static const size_t reg_len[NREG] = { SHM_LEN, PRIV_LEN };

/* ---- content ------------------------------------------------------------------------ */

#define INL static inline __attribute__((always_inline))

INL uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Word `i` of `page` of region `reg` after update n (0: never written). */
INL uint64_t word_of(unsigned reg, uint64_t page, unsigned i, uint64_t n)
{
	if (!n)
		return 0;
	return n << 32 | (mix64(mix64(page << 1 | reg) ^ (uint64_t)i << 40 ^ n) & 0xffffffffull);
}

struct owner {
	size_t npages;           /* M */
	uint32_t *pages;         /* region << 31 | page */
	uint64_t stride, inv;    /* update n writes pages[((n-1) * stride) % M] */
	_Atomic uint64_t *done;  /* last update completed (published with release) */
};

static uint64_t modinv(uint64_t a, uint64_t m)
{
	int64_t t = 0, nt = 1, r = (int64_t)m, nr = (int64_t)a;

	while (nr) {
		int64_t q = r / nr, x;
		x = t - q * nt, t = nt, nt = x;
		x = r - q * nr, r = nr, nr = x;
	}
	ck_assert(r == 1);
	return (uint64_t)(t < 0 ? t + (int64_t)m : t);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b, b = t;
	}
	return a;
}

static void owner_init(struct owner *o)
{
	uint64_t s = o->npages * 618 / 1000 | 1;

	while (gcd(s, o->npages) != 1)
		s++;
	o->stride = s % o->npages;
	o->inv = modinv(o->stride, o->npages);
}

/* Which of the owner's pages update n (>= 1) writes. */
INL size_t page_of_update(const struct owner *o, uint64_t n)
{
	return (size_t)(((n - 1) % o->npages) * o->stride % o->npages);
}

/* The last update <= N that wrote page j (0: none). */
static inline uint64_t last_update(const struct owner *o, size_t j, uint64_t N)
{
	uint64_t i0 = (uint64_t)j * o->inv % o->npages, t;

	if (!N || N - 1 < i0)
		return 0;
	t = N - 1;
	return t - (t - i0) % o->npages + 1;
}

/* Update n of owner o, through the region addresses in base. */
INL void write_update_inl(const struct owner *o, uint8_t *const base[NREG], uint64_t n, size_t pagesz)
{
	uint32_t e = o->pages[page_of_update(o, n)];
	unsigned reg = e >> 31;
	uint64_t p = e & 0x7fffffffu;
	_Atomic uint64_t *w = (_Atomic uint64_t *)(base[reg] + p * pagesz);

	for (unsigned i = 0; i < pagesz / 8; i++)
		atomic_store_explicit(&w[i], word_of(reg, p, i, n), memory_order_relaxed);
}

static void write_update(const struct owner *o, uint8_t *const base[NREG], uint64_t n)
{
	write_update_inl(o, base, n, t_page);
}

/* ---- shared state ---------------------------------------------------------------------- */

struct snapjob {
	unsigned idx;
	char path[PATH_MAX + 32];
	uint64_t lo[NOWNERS], hi[NOWNERS];
	uffdsnap_stats_t st;
	double at_s;                 /* seconds into the run when begin returned */
	unsigned moves;              /* mremaps done in this snapshot's window */
	const char *sink;
	char err[512];               /* uffdsnap_snap_error() of a failed snapshot */
};

#define QCAP 2

static struct {
	struct t_mem shm;
	uint8_t *base[NREG];         /* where the regions are now: under maplock */
	pthread_rwlock_t maplock;    /* read: using base[]; write: moving a region */
	struct owner own[NOWNERS];
	_Atomic uint64_t *child_done; /* in a MAP_SHARED page the children write too */
	uffdsnap_t *ctx;
	_Atomic bool stop;
	uint64_t t0;
	unsigned seconds;

	/* first failure, reported by the Check thread at the end */
	pthread_mutex_t fail_lock;
	char fail[2048];
	_Atomic bool failed;

	/* forker <-> main: children live only between two begins */
	pthread_mutex_t child_mu;
	pthread_cond_t child_cv;
	unsigned forks_since_begin, fork_cap;
	bool fork_shm;               /* children write shm (needs fork events) */

	/* mremapper <-> main: the window in which moves are allowed */
	pthread_mutex_t win_mu;
	pthread_cond_t win_cv;
	bool win_open, win_done;
	unsigned win_moves;

	/* verifier queue */
	pthread_mutex_t q_mu;
	pthread_cond_t q_cv;
	struct snapjob q[QCAP];
	unsigned q_head, q_len;
	bool q_closed;
	uint8_t *vbuf[NREG];

	/* counters */
	_Atomic uint64_t zaps, zap_calls, pageouts, forks, child_hangs, moves, verified, pages_checked;
	_Atomic uint64_t swap_max_kb;
	bool zapper, pager, forker, mremapper;
} T;

static void sfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sfail(const char *fmt, ...)
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

static void nap_us(unsigned us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000 };

	nanosleep(&ts, NULL);
}

/* ---- zram swap (main(), in the Check parent: removed even if the test dies) ----------- */

static struct {
	pid_t owner;                 /* the process that set it up (not the Check child) */
	int id;                      /* -1: none */
	char dev[64];
	bool swapon;
	char why[256];               /* why there is no swap */
} Z = { .id = -1 };

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		r = -errno;
	close(fd);
	return r;
}

/* Async-signal-safe: open/write/close/swapoff only. */
static void zram_teardown(void)
{
	char path[96], num[16];
	int n, id = Z.id;

	if (id < 0 || getpid() != Z.owner)
		return;
	Z.id = -1;
	if (Z.swapon && swapoff(Z.dev) != 0) {
		static const char m[] = "test-stress: swapoff of the zram device failed\n";
		if (write(2, m, sizeof(m) - 1) < 0) {
			/* nothing to do */
		}
	}
	Z.swapon = false;
	/* "/sys/block/zram%d/reset", without snprintf */
	n = 0;
	{
		char rev[16];
		int k = 0, v = id;
		do {
			rev[k++] = (char)('0' + v % 10);
			v /= 10;
		} while (v);
		while (k)
			num[n++] = rev[--k];
		num[n] = '\0';
	}
	strcpy(path, "/sys/block/zram");
	strcat(path, num);
	strcat(path, "/reset");
	write_str(path, "1");
	write_str("/sys/class/zram-control/hot_remove", num);
}

static void zram_signal(int sig)
{
	zram_teardown();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void zram_setup(void)
{
	char buf[64], path[96], cmd[256];
	int fd, r;
	ssize_t n;

	if (geteuid() != 0) {
		snprintf(Z.why, sizeof(Z.why), "not root (euid %u): no zram swap, no pager-out", geteuid());
		return;
	}
	fd = open("/sys/class/zram-control/hot_add", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(Z.why, sizeof(Z.why), "/sys/class/zram-control/hot_add: %s: no pager-out", strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		snprintf(Z.why, sizeof(Z.why), "reading zram-control/hot_add failed: no pager-out");
		return;
	}
	buf[n] = '\0';
	Z.id = atoi(buf);
	Z.owner = getpid();
	atexit(zram_teardown);
	signal(SIGTERM, zram_signal);
	signal(SIGINT, zram_signal);
	signal(SIGHUP, zram_signal);
	snprintf(Z.dev, sizeof(Z.dev), "/dev/zram%d", Z.id);
	snprintf(path, sizeof(path), "/sys/block/zram%d/disksize", Z.id);
	if ((r = write_str(path, "512M"))) {
		snprintf(Z.why, sizeof(Z.why), "%s: %s: no pager-out", path, strerror(-r));
		zram_teardown();
		return;
	}
	snprintf(cmd, sizeof(cmd), "mkswap %s >/dev/null 2>&1 || /sbin/mkswap %s >/dev/null 2>&1", Z.dev, Z.dev);
	if (system(cmd) != 0) {
		snprintf(Z.why, sizeof(Z.why), "mkswap %s failed: no pager-out", Z.dev);
		zram_teardown();
		return;
	}
	if (swapon(Z.dev, 0) != 0) {
		snprintf(Z.why, sizeof(Z.why), "swapon %s: %s: no pager-out", Z.dev, strerror(errno));
		zram_teardown();
		return;
	}
	Z.swapon = true;
	printf("zram swap: %s (512 MiB) on; removed at exit\n", Z.dev);
}

/*
 * /proc files read with pread() on descriptors opened once, before any
 * snapshot: opening them in the pager thread while begin creates the
 * library's descriptors reuses descriptor numbers, which TSan takes for a race.
 */
static int vmstat_fd = -1, status_fd = -1;

static void proc_open(void)
{
	vmstat_fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
	status_fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
}

/* The number after "key" and `sep` on a line of the file, or 0. */
static uint64_t proc_field(int fd, const char *key, char sep)
{
	char buf[16384], *line, *save;
	size_t kl = strlen(key);
	ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (!strncmp(line, key, kl) && line[kl] == sep)
			return strtoull(line + kl + 1, NULL, 10);
	return 0;
}

static uint64_t vmstat(const char *key)
{
	return proc_field(vmstat_fd, key, ' ');
}

/* A field of /proc/self/status in kB (or the plain number for Threads). */
static uint64_t status_field(const char *key)
{
	return proc_field(status_fd, key, ':');
}

static unsigned count_fds(void)
{
	return (unsigned)t_dir_entries("/proc/self/fd", false);
}

/* ---- the disturbers --------------------------------------------------------------------- */

static void *writer_main(void *arg)
{
	unsigned w = (unsigned)(uintptr_t)arg;
	const struct owner *o = &T.own[w];
	uint8_t *base[NREG];

	for (uint64_t n = atomic_load(o->done) + 1; !atomic_load_explicit(&T.stop, memory_order_relaxed); n++) {
		pthread_rwlock_rdlock(&T.maplock);
		base[0] = T.base[0], base[1] = T.base[1];
		write_update(o, base, n);
		pthread_rwlock_unlock(&T.maplock);
		atomic_store_explicit(o->done, n, memory_order_release);
		switch (w) { /* 0, 1 flat out; 2 moderate; 3 slow: its pages stay holes for long */
		case 2:
			if (n % 16 == 0)
				nap_us(100);
			break;
		case 3:
			nap_us(4000);
			break;
		default:
			if (n % 256 == 0)
				sched_yield();
		}
	}
	return NULL;
}

static uint64_t rnd(uint64_t *s)
{
	return t_splitmix64(s);
}

static void *zapper_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;
	const size_t np = SHM_LEN / t_page;

	while (!atomic_load(&T.stop)) {
		size_t n = 1 + rnd(&seed) % 16, p = rnd(&seed) % (np - n);
		pthread_rwlock_rdlock(&T.maplock);
		if (madvise(T.base[R_SHM] + p * t_page, n * t_page, MADV_DONTNEED))
			sfail("zapper: MADV_DONTNEED: %s", strerror(errno));
		pthread_rwlock_unlock(&T.maplock);
		atomic_fetch_add(&T.zaps, n);
		atomic_fetch_add(&T.zap_calls, 1);
		nap_us((unsigned)(rnd(&seed) % 400));
	}
	return NULL;
}

static void *pager_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;

	while (!atomic_load(&T.stop)) {
		unsigned r = (unsigned)(rnd(&seed) % 2);
		size_t np = reg_len[r] / t_page, n = 64 + rnd(&seed) % 512, p = rnd(&seed) % (np - n);
		uint64_t kb;

		pthread_rwlock_rdlock(&T.maplock);
		/* twice: the first call may leave pages in per-CPU LRU batches */
		for (int i = 0; i < 2; i++)
			if (madvise(T.base[r] + p * t_page, n * t_page, MADV_PAGEOUT))
				sfail("pager-out: MADV_PAGEOUT %s: %s", reg_name[r], strerror(errno));
		pthread_rwlock_unlock(&T.maplock);
		atomic_fetch_add(&T.pageouts, 1);
		kb = status_field("VmSwap");
		if (kb > atomic_load(&T.swap_max_kb))
			atomic_store(&T.swap_max_kb, kb);
		nap_us(5000 + (unsigned)(rnd(&seed) % 20000));
	}
	return NULL;
}

/*
 * The child. We are a threaded process, so only async-signal-safe code, and
 * none of it instrumented by a sanitizer: the child of a fork() must not enter
 * a sanitizer runtime whose locks another thread may have held (raw system
 * calls for the same reason).
 */
#define CHILD_CODE __attribute__((noinline, no_sanitize("address", "thread", "undefined")))

INL uint64_t child_rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	return mix64(z);
}

CHILD_CODE static void child_body(uint8_t *const base[NREG], uint64_t seed, size_t pagesz)
{
	const struct owner *o = &T.own[CHILD];
	uint64_t n0 = atomic_load_explicit(T.child_done, memory_order_acquire);
	struct timespec nap = { 0, 150000 };

	for (uint64_t k = 1; T.fork_shm && k <= CHILD_UPDATES; k++) {
		write_update_inl(o, base, n0 + k, pagesz);
		atomic_store_explicit(T.child_done, n0 + k, memory_order_release);
		if (k % 8 == 0)
			syscall(SYS_nanosleep, &nap, NULL);
	}
	/* Our copy of the heap: garbage that must never reach the parent's snapshots. */
	for (int i = 0; i < 8; i++) {
		size_t p = child_rnd(&seed) % (PRIV_LEN / pagesz);
		_Atomic uint64_t *w = (_Atomic uint64_t *)(base[R_PRIV] + p * pagesz + (child_rnd(&seed) % (pagesz / 8)) * 8);
		atomic_store_explicit(w, 0xbadc0ffee0ddf00dull, memory_order_relaxed);
	}
	syscall(SYS_exit_group, 0);
}

static void *forker_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;

	while (!atomic_load(&T.stop)) {
		uint8_t *base[NREG];
		uint64_t t0;
		int status = 0;
		pid_t pid, w;

		pthread_mutex_lock(&T.child_mu);
		while (T.forks_since_begin >= T.fork_cap && !atomic_load(&T.stop))
			pthread_cond_wait(&T.child_cv, &T.child_mu);
		if (atomic_load(&T.stop)) {
			pthread_mutex_unlock(&T.child_mu);
			break;
		}
		pthread_rwlock_rdlock(&T.maplock); /* the child must see the regions where they are */
		base[0] = T.base[0], base[1] = T.base[1];
		/* glibc's fork(): it holds the malloc and stdio locks while the
		 * kernel waits for the handler to read the FORK event */
		pid = fork();
		if (pid == 0)
			child_body(base, seed, t_page);
		pthread_rwlock_unlock(&T.maplock);
		rnd(&seed);
		if (pid < 0) {
			sfail("fork: %s", strerror(errno));
			pthread_mutex_unlock(&T.child_mu);
			break;
		}
		T.forks_since_begin++;
		atomic_fetch_add(&T.forks, 1);
		/* A child blocked on a fault nobody resolves is a hang. */
		t0 = t_now_ns();
		while ((w = waitpid(pid, &status, WNOHANG)) == 0 && t_now_ns() - t0 < 30000000000ull)
			nap_us(200);
		if (w == 0) {
			atomic_fetch_add(&T.child_hangs, 1);
			sfail("forked child %d did not exit within 30 s (blocked on a fault?)", (int)pid);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
		} else if (w != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			sfail("forked child %d: waitpid %d, status 0x%x", (int)pid, (int)w, status);
		}
		pthread_mutex_unlock(&T.child_mu);
		nap_us(1000 + (unsigned)(rnd(&seed) % 4000));
	}
	return NULL;
}

static void *mremapper_main(void *arg)
{
	unsigned turn = 0;

	(void)arg;
	for (;;) {
		unsigned want;

		pthread_mutex_lock(&T.win_mu);
		while (!(T.win_open && !T.win_done) && !atomic_load(&T.stop))
			pthread_cond_wait(&T.win_cv, &T.win_mu);
		want = T.win_moves;
		pthread_mutex_unlock(&T.win_mu);
		if (atomic_load(&T.stop))
			break;
		for (unsigned i = 0; i < want && !atomic_load(&T.stop); i++, turn++) {
			unsigned r = turn % 3 != 2 ? R_PRIV : R_SHM;
			/* a fresh range: moving back to an old address could hit
			 * whatever another thread mapped there meanwhile */
			uint8_t *dst = mmap(NULL, reg_len[r], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *to;

			if (dst == MAP_FAILED) {
				sfail("mremapper: mmap: %s", strerror(errno));
				break;
			}
			pthread_rwlock_wrlock(&T.maplock);
			to = mremap(T.base[r], reg_len[r], reg_len[r], MREMAP_MAYMOVE | MREMAP_FIXED, dst);
			if (to == MAP_FAILED) {
				sfail("mremapper: mremap %s: %s", reg_name[r], strerror(errno));
				munmap(dst, reg_len[r]);
			} else {
				T.base[r] = to;
				if (r == R_SHM)
					T.shm.addr = to;
			}
			pthread_rwlock_unlock(&T.maplock);
			atomic_fetch_add(&T.moves, 1);
			pthread_mutex_lock(&T.win_mu);
			T.win_moves--; /* main counts what is left */
			pthread_mutex_unlock(&T.win_mu);
			nap_us(2000);
		}
		pthread_mutex_lock(&T.win_mu);
		T.win_done = true;
		pthread_cond_broadcast(&T.win_cv);
		pthread_mutex_unlock(&T.win_mu);
	}
	return NULL;
}

/* ---- the oracle ---------------------------------------------------------------------------- */

/*
 * Check owner o's pages in the image img[]: returns 0 and the highest update
 * N visible, or -1 with the first violation in err.
 */
ORACLE_UNINSTRUMENTED static int check_owner(unsigned oid, uint8_t *const img[NREG], uint64_t lo, uint64_t hi, uint64_t *Np, char *err,
		       size_t errlen)
{
	const struct owner *o = &T.own[oid];
	const unsigned W = (unsigned)(t_page / 8);
	uint64_t *maxv = malloc(o->npages * sizeof(*maxv)), *minv = malloc(o->npages * sizeof(*minv));
	uint32_t *kpre = malloc(o->npages * sizeof(*kpre));
	uint64_t N = 0;
	int ret = -1;

	if (!maxv || !minv || !kpre) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	/* 1: every word must be a word some update wrote to exactly this
	 * place, and a page must read as a prefix of one update over another */
	for (size_t j = 0; j < o->npages; j++) {
		unsigned reg = o->pages[j] >> 31;
		uint64_t p = o->pages[j] & 0x7fffffffu;
		const uint64_t *w = (const uint64_t *)(img[reg] + p * t_page);
		uint64_t hiv = w[0] >> 32, lov = hiv;
		unsigned k = W;

		for (unsigned i = 0; i < W; i++) {
			uint64_t v = w[i] >> 32;
			if (w[i] != word_of(reg, p, i, v) || (v && page_of_update(o, v) != j)) {
				snprintf(err, errlen, "owner %u: %s page %" PRIu64 " word %u is 0x%016" PRIx64
					 ": %s (expected a word of this page: 0x%016" PRIx64 " for its version %" PRIu64 ")",
					 oid, reg_name[reg], p, i, w[i],
					 w[i] != word_of(reg, p, i, v) ? "torn or foreign bytes" :
					 "a version that never wrote this page", word_of(reg, p, i, v), v);
				goto out;
			}
			if (v != hiv && k == W) {
				k = i, lov = v;
			} else if (v != (k == W ? hiv : lov)) {
				snprintf(err, errlen, "owner %u: %s page %" PRIu64 " is torn: word %u holds update %" PRIu64
					 " after words of %" PRIu64 " and %" PRIu64 " (a page update writes words in order)",
					 oid, reg_name[reg], p, i, v, hiv, lov);
				goto out;
			}
		}
		if (k < W && lov > hiv) {
			snprintf(err, errlen, "owner %u: %s page %" PRIu64 ": words 0..%u hold update %" PRIu64
				 " but later words the newer %" PRIu64, oid, reg_name[reg], p, k - 1, hiv, lov);
			goto out;
		}
		maxv[j] = hiv, minv[j] = lov, kpre[j] = k;
		if (hiv > N)
			N = hiv;
	}
	/* 2: one instant: every page holds the last update <= N */
	for (size_t j = 0; j < o->npages; j++) {
		unsigned reg = o->pages[j] >> 31;
		uint64_t p = o->pages[j] & 0x7fffffffu, want = last_update(o, j, N);
		bool ok;

		if (N && j == page_of_update(o, N)) /* the one page an update may be half done on */
			ok = maxv[j] == N && (kpre[j] == W || minv[j] == last_update(o, j, N - 1));
		else
			ok = maxv[j] == want && kpre[j] == W;
		if (!ok) {
			uint32_t e = o->pages[page_of_update(o, N ? N : 1)];
			snprintf(err, errlen, "owner %u: not one instant: the highest update visible is %" PRIu64
				 " (%s page %u), so %s page %" PRIu64 " must hold update %" PRIu64 ", but holds %" PRIu64
				 " (words 0..%u) and %" PRIu64 " (the rest); updates complete before begin %" PRIu64
				 ", after %" PRIu64, oid, N, reg_name[e >> 31], e & 0x7fffffffu, reg_name[reg], p, want,
				 maxv[j], kpre[j] - 1, minv[j], lo, hi);
			goto out;
		}
	}
	/* 3: and that instant lies inside begin */
	if (N < lo || N > hi + 1) {
		snprintf(err, errlen, "owner %u: the snapshot shows updates 1..%" PRIu64 ", but %" PRIu64
			 " were complete before begin was called and %" PRIu64 " when it returned: %s", oid, N, lo, hi,
			 N < lo ? "updates made before the instant are missing" : "updates made after it are visible");
		goto out;
	}
	*Np = N;
	ret = 0;
out:
	free(maxv);
	free(minv);
	free(kpre);
	return ret;
}

/* The static zap-phase pages: update 1, always. */
ORACLE_UNINSTRUMENTED static int check_static(uint8_t *const img[NREG], char *err, size_t errlen)
{
	const size_t np = PRIV_LEN / t_page;

	for (size_t p = np - ZPAGES; p < np; p++) {
		const uint64_t *w = (const uint64_t *)(img[R_PRIV] + p * t_page);
		for (unsigned i = 0; i < t_page / 8; i++) {
			if (w[i] != word_of(R_PRIV, p, i, 1)) {
				snprintf(err, errlen, "static heap page %zu word %u is 0x%016" PRIx64 ", expected 0x%016"
					 PRIx64, p, i, w[i], word_of(R_PRIV, p, i, 1));
				return -1;
			}
		}
	}
	return 0;
}

static void verify_job(const struct snapjob *j)
{
	uffdsnap_reader_t *r = NULL;
	uffdsnap_info_t info = { .size = sizeof(info) };
	uint64_t N[NOWNERS] = { 0 };
	char err[1024] = "";
	int e, id;

	e = uffdsnap_reader_open(&r, j->path);
	if (e) {
		sfail("snapshot %u: reader_open %s: %d %s (%s)", j->idx, j->path, e, uffdsnap_strerror(e),
		     uffdsnap_last_error());
		return;
	}
	e = uffdsnap_reader_verify(r);
	if (!e)
		e = uffdsnap_reader_info(r, &info);
	if (e || !info.complete || info.status || info.nregions != NREG) {
		sfail("snapshot %u: %s: verify %d (%s), complete %d, status %d, %u regions", j->idx, j->path, e,
		     uffdsnap_reader_error(r), info.complete, info.status, info.nregions);
		goto out;
	}
	for (unsigned g = 0; g < NREG; g++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		id = uffdsnap_reader_find(r, reg_name[g]);
		if (id < 0 || uffdsnap_reader_region(r, (unsigned)id, &ri) || ri.length != reg_len[g]) {
			sfail("snapshot %u: region '%s' missing or of the wrong length", j->idx, reg_name[g]);
			goto out;
		}
		e = uffdsnap_reader_read(r, (unsigned)id, 0, T.vbuf[g], reg_len[g]);
		if (e) {
			sfail("snapshot %u: reader_read '%s': %d (%s)", j->idx, reg_name[g], e, uffdsnap_reader_error(r));
			goto out;
		}
	}
	for (unsigned o = 0; o < NOWNERS; o++) {
		if (check_owner(o, T.vbuf, j->lo[o], j->hi[o], &N[o], err, sizeof(err))) {
			sfail("snapshot %u (%s, at %.2f s, %u moves, %" PRIu64 " forks followed): %s; file kept: %s", j->idx,
			     j->sink, j->at_s, j->moves, j->st.forks, err, j->path);
			uffdsnap_reader_free(r);
			return; /* keep the file */
		}
	}
	if (check_static(T.vbuf, err, sizeof(err))) {
		sfail("snapshot %u: %s; file kept: %s", j->idx, err, j->path);
		uffdsnap_reader_free(r);
		return;
	}
	atomic_fetch_add(&T.verified, 1);
	atomic_fetch_add(&T.pages_checked, (SHM_LEN + PRIV_LEN) / t_page);
	printf("snap %3u @%6.2fs %-4s pause %6.2f ms, %5.0f ms; pages fault %5" PRIu64 " sweep %5" PRIu64 " hole %5"
	       PRIu64 "; faults %5" PRIu64 "; forks %2" PRIu64 " remaps %" PRIu64 " unmaps %" PRIu64
	       "; updates w0..3,c %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ": exact\n", j->idx,
	       j->at_s, j->sink, j->st.begin_ns / 1e6, j->st.elapsed_ns / 1e6, j->st.pages_fault, j->st.pages_sweep,
	       j->st.pages_hole, j->st.faults, j->st.forks, j->st.remaps, j->st.unmaps, N[0], N[1], N[2], N[3],
	       N[4]);
out:
	uffdsnap_reader_free(r);
	unlink(j->path);
}

/*
 * The oracle must reject what it is there to catch: build images of every
 * owner in the verification buffers by replaying updates, check that they
 * pass, then break them in the ways a wrong snapshot would and check that
 * each is caught.
 */
static void oracle_selftest(void)
{
	uint64_t N[NOWNERS], got;
	char err[1024];
	struct owner *o = &T.own[0];
	const unsigned W = (unsigned)(t_page / 8);
	uint64_t *w, save[512];
	size_t j;

	for (unsigned g = 0; g < NREG; g++)
		memset(T.vbuf[g], 0, reg_len[g]);
	for (unsigned i = 0; i < NOWNERS; i++) {
		N[i] = 2 * T.own[i].npages + 37 + i;
		for (uint64_t n = 1; n <= N[i]; n++)
			write_update(&T.own[i], T.vbuf, n);
		ck_assert_msg(check_owner(i, T.vbuf, N[i], N[i], &got, err, sizeof(err)) == 0 && got == N[i],
			      "oracle self-test: a replayed image fails: %s", err);
	}
	for (size_t p = PRIV_LEN / t_page - ZPAGES; p < PRIV_LEN / t_page; p++)
		for (unsigned i = 0; i < W; i++)
			((uint64_t *)(T.vbuf[R_PRIV] + p * t_page))[i] = word_of(R_PRIV, p, i, 1);
	ck_assert_msg(check_static(T.vbuf, err, sizeof(err)) == 0, "oracle self-test: static pages: %s", err);

	/* owner 0 half way through update N+1: words 0..99 new, the rest older */
	{
		uint32_t e = o->pages[page_of_update(o, N[0] + 1)];
		w = (uint64_t *)(T.vbuf[e >> 31] + (e & 0x7fffffffu) * t_page);
		for (unsigned i = 0; i < 100; i++)
			w[i] = word_of(e >> 31, e & 0x7fffffffu, i, N[0] + 1);
	}
	ck_assert_msg(check_owner(0, T.vbuf, N[0], N[0], &got, err, sizeof(err)) == 0 && got == N[0] + 1,
		      "oracle self-test: an update in progress at the instant is rejected: %s", err);
#define EXPECT_CAUGHT(what, lo, hi)                                                                          \
	do {                                                                                                 \
		err[0] = '\0';                                                                              \
		ck_assert_msg(check_owner(0, T.vbuf, lo, hi, &got, err, sizeof(err)) != 0,                   \
			      "oracle self-test: not caught: %s", what);                                     \
		printf("oracle self-test: %s: caught (%.90s...)\n", what, err);                            \
	} while (0)
	EXPECT_CAUGHT("instant before begin (bounds)", N[0] + 2, N[0] + 2);
	EXPECT_CAUGHT("instant after begin returned (bounds)", N[0] - 1, N[0] - 1);

	/* a page that is not the one being written: j(N) - 1 in update order */
	j = page_of_update(o, N[0] - 1);
	{
		uint32_t e = o->pages[j];
		unsigned reg = e >> 31;
		uint64_t p = e & 0x7fffffffu, v = last_update(o, j, N[0]);
		w = (uint64_t *)(T.vbuf[reg] + p * t_page);
		memcpy(save, w, W * 8);
		w[17] ^= 1ull << 3;
		EXPECT_CAUGHT("one flipped bit", N[0], N[0]);
		memcpy(w, save, W * 8);
		for (unsigned i = 0; i < W; i++) /* the whole page one update older */
			w[i] = word_of(reg, p, i, v - o->npages);
		EXPECT_CAUGHT("a page older than the instant", N[0], N[0]);
		for (unsigned i = 0; i < W / 2; i++) /* torn: first half new, second half old */
			w[i] = word_of(reg, p, i, v);
		EXPECT_CAUGHT("a torn page away from the writer", N[0], N[0]);
		for (unsigned i = 0; i < W; i++) /* second half new, first half old */
			w[i] = word_of(reg, p, i, i < W / 2 ? v - o->npages : v);
		EXPECT_CAUGHT("a page written backwards", N[0], N[0]);
		memcpy(w, save, W * 8);
		w[5] = 0;
		EXPECT_CAUGHT("a zeroed word", N[0], N[0]);
		memcpy(w, save, W * 8);
		{
			uint32_t e2 = o->pages[(j + 1) % o->npages];
			memcpy(w, T.vbuf[e2 >> 31] + (e2 & 0x7fffffffu) * t_page, W * 8);
		}
		EXPECT_CAUGHT("another page's contents", N[0], N[0]);
		memcpy(w, save, W * 8);
	}
	ck_assert_msg(check_owner(0, T.vbuf, N[0], N[0], &got, err, sizeof(err)) == 0,
		      "oracle self-test: restoring did not restore: %s", err);
#undef EXPECT_CAUGHT
}

static void *verifier_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct snapjob j;

		pthread_mutex_lock(&T.q_mu);
		while (!T.q_len && !T.q_closed)
			pthread_cond_wait(&T.q_cv, &T.q_mu);
		if (!T.q_len) {
			pthread_mutex_unlock(&T.q_mu);
			break;
		}
		j = T.q[T.q_head];
		pthread_mutex_unlock(&T.q_mu);
		if (atomic_load(&T.failed))
			unlink(j.path);
		else
			verify_job(&j);
		pthread_mutex_lock(&T.q_mu);
		T.q_head = (T.q_head + 1) % QCAP;
		T.q_len--;
		pthread_cond_broadcast(&T.q_cv);
		pthread_mutex_unlock(&T.q_mu);
	}
	return NULL;
}

/*
 * Under TSan the verifier works in step with main: a descriptor number that
 * one thread closed and another reused, with no lock between, is a race to
 * TSan, and the verifier's files would interleave with begin's.
 */
#define VERIFY_IN_STEP TSAN

static void enqueue(const struct snapjob *j)
{
	pthread_mutex_lock(&T.q_mu);
	while (T.q_len == QCAP)
		pthread_cond_wait(&T.q_cv, &T.q_mu);
	T.q[(T.q_head + T.q_len) % QCAP] = *j;
	T.q_len++;
	pthread_cond_broadcast(&T.q_cv);
	while (VERIFY_IN_STEP && T.q_len)
		pthread_cond_wait(&T.q_cv, &T.q_mu);
	pthread_mutex_unlock(&T.q_mu);
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
	return T_SANITIZED ? 5 : 10;
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
	T.pager = Z.swapon && !env_flag("USNAP_STRESS_NO_PAGER");
	if (!T.pager)
		t_skip("pager-out", "%s", Z.swapon ? "off (USNAP_STRESS_NO_PAGER)" : Z.why);
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
			fds1 = count_fds();
			thr1 = (unsigned)status_field("Threads");
			rss1 = status_field("VmRSS");
			baseline = true;
		}
	}
	timed = idx;
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
	zram_setup();
	tcase_set_timeout(tc, stress_seconds() + 170);
	tcase_add_test(tc, stress_everything_at_once);
	suite_add_tcase(s, tc);
	ret = t_run_suite(s);
	zram_teardown();
	return ret;
}
