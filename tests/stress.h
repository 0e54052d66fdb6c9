/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The stress test (test-stress.c says what it does and checks): what its
 * files share. The content every owner writes and the oracle reads back
 * (below), the shared state T, and the three parts: the disturbers
 * (stress-disturb.c), the oracle and its verifier thread
 * (stress-oracle.c), one snapshot and the test (test-stress.c).
 */
#ifndef USNAP_TEST_STRESS_H
#define USNAP_TEST_STRESS_H

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

#define TSAN T_TSAN

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
extern const char *const reg_name[NREG];
extern const size_t reg_len[NREG];

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

/* The shared state: one instance, T (test-stress.c). */
struct stress {
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
};
extern struct stress T;

/* the first failure: kept for the Check thread, and everyone stops */
void sfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nap_us(unsigned us);

/* ---- stress-disturb.c: /proc, the disturbers ---- */
void proc_open(void);
uint64_t vmstat(const char *key);
uint64_t status_field(const char *key);
unsigned count_fds(void);
void *writer_main(void *arg);
void *zapper_main(void *arg);
void *pager_main(void *arg);
void *forker_main(void *arg);
void *mremapper_main(void *arg);

/* ---- stress-oracle.c ---- */
void owner_init(struct owner *o);
void write_update(const struct owner *o, uint8_t *const base[NREG], uint64_t n);
void oracle_selftest(void);
void *verifier_main(void *arg);
void enqueue(const struct snapjob *j);
/* Wait until the verifier has checked every snapshot queued (it is idle). */
void verified_all(void);

#endif
