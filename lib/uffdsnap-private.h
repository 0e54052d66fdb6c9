/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the engine's files share: the context (struct uffdsnap), its regions
 * and participants, the per-snapshot state of a region, and the small common
 * helpers (errors, sizes, threads, the clock). A snapshot and its stages have
 * headers of their own; who owns what (docs/design.md has the code map):
 *   probe.c     opening the userfaultfd, feature negotiation, uffdsnap_new/free
 *   region.c    region validation (add_region) and registration modes (region.h)
 *   snapshot.c  the snapshot lifecycle: begin, wait, cancel, stats, failure (snapshot.h)
 *   arm.c       arming a snapshot's regions (register, find data extents,
 *               aliases, protect) and disarming them (arm.h)
 *   space.c     where region pages are mapped (this process, forked children,
 *               participants) and the events that move them (space.h)
 *   fault.c     the fault-handler and sweep threads: fault path, sweep (fault.h)
 *   pool.c      the chunk buffers that bound memory: the context's pool, a
 *               snapshot's free list (pool.h)
 *   compress.c  compression workers: zero pages, fingerprints, zstd, checksummed records (compress.h)
 *   sink.c      sinks and the I/O thread: header, chunks, index, trailer (sink.h)
 *   delta.c     deltas: the parent a delta is taken against, fingerprint tables
 *   uffd.c      every userfaultfd request of the engine (uffd.h)
 *   maps.c      reading /proc/PID/maps without stdio or malloc (maps.h)
 *   participant.c  other processes that join a context: the listener, join and leave
 *   reader.c    everything that reads snapshot bytes (reader-private.h: for restore)
 *   reader-ahead.c  threads decoding the chunks a read or extract will need
 *   restore*.c  eager and lazy restore, and the page server (restore-private.h)
 *   migrate*.c  live migration (migrate-private.h: which file owns what; migrate.h: the wire protocol)
 *   inject.c    test-only fault injection (never in the installed library)
 *   errors.c    errno texts and the per-thread error detail
 *   threads.c   starting the library's threads, one or a crew of workers
 *   latch.c     the failure latch: first error wins, with its message (latch.h)
 */
#ifndef UFFDSNAP_PRIVATE_H
#define UFFDSNAP_PRIVATE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "uffdsnap.h"
#include "format.h"
#include "pool.h" /* the context holds the chunk buffers */

#define USNAP_EXPORT __attribute__((visibility("default")))

/*
 * Fill a caller's options struct of `size` bytes (its sizeof as the caller
 * compiled it) from the library's `defaults` of `dsize` bytes: never past the
 * caller's struct, zeros past the library's, and .size (the first member) =
 * size, which is what the caller must pass back.
 */
static inline void usnap_opts_fill(void *opts, size_t size, const void *defaults, size_t dsize)
{
	if (!opts || size < sizeof(size_t))
		return;
	memset(opts, 0, size);
	memcpy(opts, defaults, size < dsize ? size : dsize);
	memcpy(opts, &size, sizeof(size));
}

/*
 * The one rule for every struct that carries its own size (docs/api.md,
 * "Structs that carry their size"), options the caller fills and stats the
 * library fills alike: .size must be at least `min` (the first version's
 * size: a struct never initialised has 0 there) and at most this library's
 * sizeof (a larger one comes from a newer header: options this library
 * would ignore, or fields it would leave unset). 0, or -EINVAL with a
 * sentence naming fn and the type (errors.c).
 */
int usnap_check_size(const char *fn, const char *type, size_t size, size_t min, size_t ours);
#define USNAP_SIZE_UPTO(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* errors.c: format a message with every byte outside printable ASCII as \xNN. */
void usnap_vformat(char *dst, size_t cap, const char *fmt, va_list ap);
void usnap_format(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* One line to the application's log hook (uffdsnap_set_log_fn), if it set one. */
void usnap_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* errors.c: record a detail for uffdsnap_last_error() and return err. */
int usnap_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void usnap_clear_err(void);

static inline uint64_t usnap_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Kinds of memory. SHMEM pages are read with pread() on the backing file and
 * holes are tracked with MISSING registration; PRIVATE pages (anonymous
 * memory, or MAP_PRIVATE of a file) exist only in this process's page tables
 * and are read with process_vm_readv(), with never-touched pages protected
 * through UFFD_FEATURE_WP_UNPOPULATED markers. HUGETLB pages (MAP_SHARED of
 * hugetlbfs) are read with pread() too, but hugetlbfs has neither MISSING
 * faults we could resolve (no UFFDIO_ZEROPAGE) nor SEEK_DATA: the whole region
 * is protected (markers on never-touched huge pages) and every protection
 * change covers whole huge pages.
 */
enum usnap_kind { USNAP_SHMEM, USNAP_PRIVATE, USNAP_HUGETLB };

static inline bool usnap_page_is_zero(const uint8_t *p, size_t n)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t acc = 0;

	if (w[0])
		return false; /* the common case for data pages: decide on one load */
	for (size_t i = 0; i < n / 8; i += 8)
		acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
	return !acc;
}

/* One registered region. */
struct usnap_reg {
	char *name;
	enum usnap_kind kind;
	uintptr_t addr;
	size_t len;
	uint64_t npages;
	int fd;            /* SHMEM: the backing file, read with pread(); PRIVATE: -1 */
	off_t file_off;    /* file offset of addr */
	uint64_t ino;      /* the mapping's inode (0: anonymous), to notice a remap */
	dev_t dev;         /* and its device: (dev, ino) names the file in /proc/self/maps */
	uint32_t unit;     /* pages per unit of protection: 1, or those of a huge page */
	uint64_t *fp;      /* UFFDSNAP_OPT_DELTA: per page, the fingerprint of its contents at the
			    * last snapshot's instant (delta.c); written by that snapshot's workers */
	bool thp;          /* SHMEM: transparent huge pages may back it (THPeligible at add_region) */
};

/* A run of pages [first, first + n) of one region. */
struct usnap_run {
	uint64_t first;
	uint64_t n;
};

/* Per-snapshot state of one region: `copied` under handler.lock (fault.c). */
struct usnap_sreg {
	const struct usnap_reg *reg;
	unsigned id;
	uint64_t *copied;          /* bitmap: page recorded (data or zero) */
	struct usnap_run *data;    /* populated runs at the instant (SEEK_DATA), sorted */
	size_t ndata;
	bool registered;           /* UFFDIO_REGISTER in force */
	uint64_t *fp;              /* reg->fp, or NULL without UFFDSNAP_OPT_DELTA */
};

/*
 * A context has two userfaultfds, one for each kind of region (probe.c): the
 * one for shared memory asks for no remove events, so that MADV_DONTNEED
 * storms on shared memory never make the kernel refuse our write-protect
 * changes (it refuses them, EAGAIN, while any event is unread).
 */
enum { USNAP_UFFD_SHARED = 0, USNAP_UFFD_PRIVATE = 1, USNAP_OWN_SPACES = 2 };

static inline unsigned usnap_kind_uffd(enum usnap_kind kind)
{
	return kind == USNAP_PRIVATE ? USNAP_UFFD_PRIVATE : USNAP_UFFD_SHARED;
}

/* Processes that may join a context (participant.c). */
#define USNAP_MAX_PARTICIPANTS 32

/* One mapping a participant joined with: pages [first, first + n) of region
 * `region` at addr in the participant's address space. */
struct usnap_joined {
	unsigned region;
	uintptr_t addr;
	uint64_t first, n;
};

/* A process that joined the context (participant.c); under ctx->lock. */
struct usnap_participant {
	struct usnap_participant *next;
	pid_t pid;
	int uffd;                  /* its userfaultfd: acts on its address space */
	int conn;                  /* its connection: closed when it leaves or dies */
	struct usnap_joined *maps;
	unsigned nmaps;
};

/*
 * What the next delta is taken against (delta.c), under ctx->lock. ok: every
 * region's fingerprint table holds the image of snapshot `id` at its instant.
 * Otherwise `why` says what is missing ("" = no snapshot completed yet).
 */
struct usnap_parent {
	bool ok;
	uint8_t id[16];
	uint32_t depth;            /* 0: a full snapshot */
	char why[384];
};

/* The library's context: its descriptors, options, regions and buffers;
 * what a snapshot holds while it runs: snapshot.h. */
struct uffdsnap {
	int uffd[USNAP_OWN_SPACES]; /* by usnap_kind_uffd() */
	uint64_t features;          /* what the kernel offers */
	uint64_t enabled;           /* what the descriptors asked for, together */
	bool user_mode_only;
	bool cachestat;             /* cachestat(2) exists (Linux 6.5): arm.c find_data */
	uffdsnap_opts_t opts;       /* normalized */
	size_t page_size;
	struct usnap_reg *regs;
	unsigned nregs, cap;
	struct usnap_pool pool;
	pthread_mutex_t lock;       /* active, migration, participants */
	struct uffdsnap_snap *active;
	/* A migration running (migrate-send.c): the regions are registered with its
	 * WP_ASYNC userfaultfd, and a VMA takes one userfaultfd at a time, so
	 * begin and add_region refuse (-EBUSY) until it ended. */
	struct uffdsnap_migrate *migration;
	struct usnap_participant *parts;
	unsigned nparts;
	_Atomic uint64_t joins;     /* joins so far: a snapshot notices one made while it ran */
	_Atomic pid_t last_join_pid;
	struct usnap_listener *listener; /* participant.c, once uffdsnap_listen() was called */
	struct usnap_parent parent; /* delta.c */
};

/* probe.c */
int usnap_uffd_open(uffdsnap_t *ctx);
/* What the kernel offers (*avail) and what tracking memory asks of it (*want). */
int usnap_uffd_features(bool user_mode_only, uint64_t *avail, uint64_t *want);
/* UFFDIO_API on fd for shared memory: `want` without remove events. fd, or
 * -errno with fd closed. */
int usnap_uffd_api_shared(int fd, uint64_t want);

/* threads.c */
int usnap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name);
/* Start threads t[0..n) as usnap_thread_start, thread i running
 * fn(arg + i * stride), up to the first that cannot start (its -errno in
 * *err unless NULL, else 0): how many started. */
unsigned usnap_crew_start(pthread_t *t, unsigned n, void *(*fn)(void *), void *arg, size_t stride, const char *name,
			  int *err);
void usnap_crew_join(pthread_t *t, unsigned n);
/* The calling thread asks the scheduler for a short slice: a thread that
 * resolves faults (threads.c). */
void usnap_thread_prompt(void);

/* participant.c */
/* Stop accepting, and end every membership (uffdsnap_free). */
void usnap_listener_stop(uffdsnap_t *ctx);
/* A coordinator's shared regions, as its listener tells an agent. */
struct usnap_query_region {
	char name[USNAP_MAX_NAME + 1];
	uint64_t dev, ino, file_off, len;
};
#define USNAP_QUERY_MAX 256
/* Ask the coordinator at path: how many regions went into out, or -errno. */
int usnap_query_regions(const char *path, struct usnap_query_region *out, unsigned cap);

/* migrate-send.c: cancel a running migration and wait for its thread (uffdsnap_free). */
void usnap_migrate_stop(struct uffdsnap_migrate *m);

/* delta.c */
/* Under ctx->lock, at begin: -ENOLINK with the reason when no delta can be taken now. */
int usnap_delta_check(const uffdsnap_t *ctx, bool delta);
/* Begin of snapshot s (a delta if s->delta): fingerprint tables, the parent's id. */
int usnap_delta_begin(uffdsnap_snap_t *s);
/* Under ctx->lock, once s's threads are joined: s is the next parent, or there is none. */
void usnap_delta_end(uffdsnap_snap_t *s);
/* Under ctx->lock: no delta can be taken until the next complete snapshot, because... */
void usnap_delta_lost(uffdsnap_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The fingerprint of one page of bytes (XXH3-64). */
uint64_t usnap_fingerprint(const void *page, size_t len);

#endif
