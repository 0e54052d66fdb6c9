/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Internal structures shared by the engine's files. Who owns what:
 *   probe.c     opening the userfaultfd, feature negotiation, uffdsnap_new/free
 *   region.c    region validation (add_region) and arming/disarming regions
 *               for one snapshot (register, find data extents, protect)
 *   snapshot.c  the snapshot lifecycle: begin, wait, cancel, stats, failure
 *   pool.c      the chunk buffers that bound memory: the context's pool, a
 *               snapshot's free list
 *   fault.c     the fault-handler thread: fault path and sweep in one loop
 *   uffd.c      every userfaultfd request of the engine (uffd.h)
 *   maps.c      reading /proc/PID/maps without stdio or malloc (maps.h)
 *   participant.c  other processes that join a context: the listener, join and leave
 *   space.c     where region pages are mapped (this process, forked children)
 *               and the events that move them: fork, mremap, munmap, remove
 *   compress.c  compression workers: zero pages, fingerprints, zstd, checksummed records
 *   delta.c     deltas: the parent a delta is taken against, fingerprint tables
 *   sink.c      sinks and the I/O thread: header, chunks, index, trailer
 *   reader.c    everything that reads snapshot bytes (reader-private.h: for restore)
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
#include "latch.h"

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

/* Addresses [start, end). */
struct usnap_range {
	uintptr_t start, end;
};

/* A run of pages [first, first + n) of one region. */
struct usnap_run {
	uint64_t first;
	uint64_t n;
};

/* Per-snapshot state of one region, owned by the handler thread. */
struct usnap_sreg {
	const struct usnap_reg *reg;
	unsigned id;
	uint64_t *copied;          /* bitmap: page recorded (data or zero) */
	struct usnap_run *data;    /* populated runs at the instant (SEEK_DATA), sorted */
	size_t ndata;
	bool registered;           /* UFFDIO_REGISTER in force */
	uint64_t *fp;              /* reg->fp, or NULL without UFFDSNAP_OPT_DELTA */
};

/* The pieces a record is written from, in order (see compress.c build_record). */
#define USNAP_JOB_PARTS 16
struct usnap_part {
	const uint8_t *p;
	size_t len;
};

/*
 * One chunk buffer: raw page bytes copied by the handler, then the finished
 * record built by a compression worker, held until the sink has written it.
 */
struct usnap_job {
	struct usnap_job *next;
	unsigned region;
	uint32_t nextents;         /* extents filled by the handler */
	uint32_t data_pages;       /* DATA pages in raw */
	bool fault;                /* pages copied for writers: compress first */
	struct usnap_extent *ext;  /* capacity: snap->job_ext_cap */
	uint8_t *raw;              /* capacity: chunk_bytes */
	uint8_t *out;              /* the record, or its head; capacity: snap->job_out_cap */
	size_t out_len;            /* the whole record's length */
	struct usnap_part part[USNAP_JOB_PARTS]; /* what to write: out, or out's head + runs of raw */
	unsigned nparts;
	uint64_t zero_pages;       /* set by the worker: pages recorded as zero */
	uint64_t first_page, end_page;  /* set by the worker, for the index */
	uint64_t file_offset;      /* set by the I/O stage when batched */
};

/*
 * One piece of a region mapped in an address space: pages [first, first +
 * npages) of sr at addr. A region starts as one piece; mremap and munmap
 * during a snapshot move and cut pieces (space.c). An alias is another
 * MAP_SHARED mapping of the region's file pages in this process, found at
 * begin and protected with the region (region.c usnap_arm_aliases).
 */
struct usnap_map {
	uintptr_t addr;
	uint64_t npages;
	struct usnap_sreg *sr;
	uint64_t first;
	bool alias;
};

/* An address space tracked by a snapshot through one userfaultfd: ours
 * (spaces[USNAP_UFFD_SHARED] and spaces[USNAP_UFFD_PRIVATE]) or a forked child's. */
struct usnap_space {
	int uffd;                  /* ours: the context's; a child's: from its FORK event; a
				    * participant's: a dup of the one it joined with (owned) */
	bool child;
	bool foreign;              /* another process: a child or a participant (ESRCH once it exits) */
	pid_t pid;                 /* a participant's */
	unsigned root;             /* the space of ours or of a participant it descends from */
	unsigned children;         /* a root's: children forked during the snapshot */
	struct usnap_map *maps;    /* sorted by addr */
	size_t nmaps, cap;
	uintptr_t *whole;          /* per region: address of page 0 if mapped whole, in one piece; else 0 */
	uint32_t *pieces;          /* per region: pieces mapped */
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

/* Processes a snapshot follows: this one and up to 63 forked while it runs,
 * each through both descriptors, and participants (participant.c) with
 * children of their own while room is left. */
#define USNAP_MAX_CHILDREN 63
#define USNAP_MAX_PARTICIPANTS 32
#define USNAP_MAX_SPACES (USNAP_OWN_SPACES * (1 + USNAP_MAX_CHILDREN) + 2 * USNAP_MAX_PARTICIPANTS)

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

/* Job pool and buffer memory: one mapping per context, reused by its snapshots. */
struct usnap_pool {
	void *mem;
	size_t mem_len;
	struct usnap_job *jobs;
	unsigned njobs;
	size_t chunk_bytes;
	uint32_t ext_cap;
	size_t out_cap;
	size_t footprint;          /* bytes of one job: what buffer_bytes is divided by */
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

struct uffdsnap {
	int uffd[USNAP_OWN_SPACES]; /* by usnap_kind_uffd() */
	uint64_t features;          /* what the kernel offers */
	uint64_t enabled;           /* what the descriptors asked for, together */
	bool user_mode_only;
	bool cachestat;             /* cachestat(2) exists (Linux 6.5): region.c find_data */
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

enum usnap_sink_kind { USNAP_SINK_FILE, USNAP_SINK_FD, USNAP_SINK_CALLBACK };

struct uffdsnap_sink {
	enum usnap_sink_kind kind;
	int fd;                 /* FILE: the temp file; FD: the caller's fd */
	char *path;             /* FILE: final name */
	char *tmp_path;         /* FILE: temp name while writing */
	mode_t mode;
	uffdsnap_write_fn fn;
	void *user;
};

/* The I/O stage (sink.c). */
struct usnap_io {
	pthread_t thread;
	bool thread_started;
	/* under lock: the queue of finished records, filled by workers, and
	 * kicked, set by whoever has news for the I/O thread (cv) */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool kicked;
	struct usnap_job *q_head, *q_tail;
	bool producers_done;
	/* owned by the I/O thread */
	uint8_t *head_rec;          /* HEAD record, written first */
	size_t head_len;
	bool head_written, trailer_written, synced;
	bool finished, sink_failed;
	uint8_t *trailer;           /* INDX + END */
	size_t trailer_len;
	uint64_t offset;            /* bytes written so far */
	struct usnap_index_ent *index;
	size_t nindex, index_cap;
	/* the write in flight: jobs and buffers */
	struct usnap_job *batch[64];
	unsigned nbatch;
	struct iovec bufs[64];
	unsigned nbufs, buf_first;
	uint64_t pages_data, pages_zero, bytes_raw;
};

/* A snapshot's share of the context's chunk buffers (pool.c, which alone
 * reads these): a free list. */
struct usnap_jobs {
	struct usnap_pool *pool;    /* the context's; not used once detached */
	size_t footprint;           /* copied: stats outlive the context */
	pthread_mutex_t lock;
	struct usnap_job *free;
	unsigned in_use, peak;      /* under lock */
};

/* A snapshot's statistics, counted by every stage and read by
 * uffdsnap_snap_stats (snapshot.c) from any thread: atomics. */
struct usnap_counters {
	uint64_t begin_ns, t0_ns;
	unsigned protect_threads;  /* set in begin, before its caller has the handle */
	_Atomic uint64_t end_ns, window_end_ns;
	_Atomic uint64_t pages_fault, pages_sweep, pages_hole, pages_zero_found, faults, chunks;
	_Atomic uint64_t fault_wait_max_ns, bytes_raw, bytes_out;
	_Atomic uint64_t forks, remaps, unmaps, chunks_uncompressed, pages_unchanged;
	_Atomic uint64_t faults_waited, fault_wait_ns, pages_huge_remapped;
	_Atomic uint64_t starved_until_ns;  /* a fault waited for a buffer lately (UFFDSNAP_OPT_ADAPT) */
	uint64_t buffer_bound;
};

/* The compression stage (compress.c, which alone reads these): the queue
 * of copied chunks, fault chunks first, and the workers. */
struct usnap_compress {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct usnap_job *fault, *fault_tail, *sweep, *sweep_tail;
	bool closed;
	unsigned workers_left;
	pthread_t *workers;
	unsigned workers_started;
	int zstd_level;
};

struct uffdsnap_snap {
	uffdsnap_t *ctx;            /* NULL once detached (threads joined) */
	size_t page_size;
	uint32_t flags;             /* opts.flags */
	struct uffdsnap_sink *sink;
	struct usnap_sreg *sregs;   /* in region id order */
	struct usnap_sreg **by_addr;/* sorted by address at begin: the sweep's order */
	struct usnap_sreg **by_file;/* shmem regions sorted by (dev, ino): finding a mapping's regions */
	unsigned nby_file;
	struct usnap_space spaces[USNAP_MAX_SPACES]; /* owned by the handler once `go` */
	unsigned nspaces;
	pthread_mutex_t maps_lock;  /* the spaces' piece tables while begin still reads them: the
				     * handler applies events (mremap, munmap, fork) meanwhile */
	unsigned nbase;             /* the spaces begin arms: ours and the participants'. Children come
				     * after them, added by the handler even while begin arms, so begin
				     * reads only these (fixed before the handler starts) */
	struct usnap_range *readonly; /* mappings of region pages that can never write (found by
				       * begin, region.c usnap_arm_aliases) */
	size_t nreadonly;
	uint64_t joins;             /* ctx->joins when the participants were copied */
	unsigned nregions;
	uint64_t pages_total;
	uint8_t snap_id[16];
	uint64_t created_ns;
	/* delta.c: set by begin */
	bool delta;                 /* a delta: version 2, unchanged pages left out */
	uint8_t parent_id[16];      /* a delta's parent */
	uint32_t depth;             /* 0: full; a delta: its parent's + 1 */
	uint64_t zero_fp;           /* the fingerprint of a zero page */

	/* failure: first error wins; closed (USNAP_LATCH_CLOSED) once the I/O
	 * stage has committed to success, and later failures lose */
	struct usnap_latch fail;
	_Atomic bool abort;
	int ctl_efd;                /* wakes the handler: abort, or a job was freed */

	/* lifecycle */
	_Atomic bool go;            /* every region armed: faults may be resolved */
	_Atomic int state;          /* UFFDSNAP_STATE_* */
	bool joined;
	pthread_mutex_t join_lock;
	pthread_t handler;
	bool handler_started;

	struct usnap_jobs jobs;

	struct usnap_compress cq;

	struct usnap_io io;

	struct usnap_counters stats;
};

/* probe.c */
int usnap_uffd_open(uffdsnap_t *ctx);
/* What the kernel offers (*avail) and what tracking memory asks of it (*want). */
int usnap_uffd_features(bool user_mode_only, uint64_t *avail, uint64_t *want);
/* UFFDIO_API on fd for shared memory: `want` without remove events. fd, or
 * -errno with fd closed. */
int usnap_uffd_api_shared(int fd, uint64_t want);

/* region.c */
int usnap_arm_regions(uffdsnap_snap_t *s);
int usnap_index_files(uffdsnap_snap_t *s);
int usnap_arm_aliases(uffdsnap_snap_t *s);
int usnap_protect_all(uffdsnap_snap_t *s);
int usnap_arm_participants(uffdsnap_snap_t *s);
int usnap_check_mappings(uffdsnap_snap_t *s);
void usnap_disarm_all(uffdsnap_snap_t *s);
void usnap_remap_huge(uffdsnap_snap_t *s);
void usnap_writable_again(uffdsnap_snap_t *s);
int usnap_strict_begin(uffdsnap_snap_t *s);
void usnap_reg_release(struct usnap_reg *r);
bool usnap_in_data(const struct usnap_sreg *sr, uint64_t page);
int usnap_cached(int fd, off_t off, size_t len);

/* threads.c */
int usnap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name);
/* Start threads t[0..n) as usnap_thread_start, thread i running
 * fn(arg + i * stride), up to the first that cannot start (its -errno in
 * *err unless NULL, else 0): how many started. */
unsigned usnap_crew_start(pthread_t *t, unsigned n, void *(*fn)(void *), void *arg, size_t stride, const char *name,
			  int *err);
void usnap_crew_join(pthread_t *t, unsigned n);

/* snapshot.c */
void usnap_fail(uffdsnap_snap_t *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* pool.c */
int usnap_pool_init(uffdsnap_t *ctx);
void usnap_pool_free(struct usnap_pool *pool);
/* Compression workers a snapshot of ctx starts (compress_threads, or the CPUs). */
unsigned usnap_worker_count(const uffdsnap_t *ctx);
void usnap_jobs_init(struct usnap_jobs *js, struct usnap_pool *pool);
void usnap_jobs_destroy(struct usnap_jobs *js);
/* The most buffer bytes in use at once so far. */
uint64_t usnap_jobs_peak_bytes(struct usnap_jobs *js);
/* A free job (NULL if none, or the snapshot is failing), and back. */
struct usnap_job *usnap_job_get(uffdsnap_snap_t *s);
void usnap_job_put(uffdsnap_snap_t *s, struct usnap_job *job);

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

/* space.c */
int usnap_space_init(uffdsnap_snap_t *s);
/* Spaces for the context's participants (under ctx->lock, at begin). */
int usnap_space_participants(uffdsnap_snap_t *s);
/* Our space that tracks region sr (by its kind). */
static inline struct usnap_space *usnap_home(uffdsnap_snap_t *s, const struct usnap_sreg *sr)
{
	return &s->spaces[usnap_kind_uffd(sr->reg->kind)];
}
int usnap_space_add_alias(uffdsnap_snap_t *s, struct usnap_sreg *sr, uintptr_t addr, uint64_t first, uint64_t n);
/* Where region sr is mapped whole, in one piece of its own (aliases aside), or 0. */
uintptr_t usnap_space_home_addr(const struct usnap_space *sp, const struct usnap_sreg *sr);
void usnap_spaces_free(uffdsnap_snap_t *s);
const struct usnap_map *usnap_space_find(const struct usnap_space *sp, uintptr_t addr, size_t ps);
/* The next run of pages [*lo, hi) of sr mapped in sp, from the lowest page:
 * its address and length; advances *lo past it. False when none is left. */
bool usnap_space_next(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t *lo,
		      uint64_t hi, uintptr_t *addr, uint64_t *n);
/* Every mapping of pages [lo, hi) of sr in sp, aliases included: call with
 * *cur = 0, then again while it returns true (*addr, *n: one part). */
bool usnap_space_each(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t lo,
		      uint64_t hi, size_t *cur, uintptr_t *addr, uint64_t *n);
struct uffd_msg;
void usnap_space_event(uffdsnap_snap_t *s, struct usnap_space *sp, const struct uffd_msg *m);
void usnap_msg_drop(const struct uffd_msg *m);
void usnap_space_end(uffdsnap_snap_t *s, struct usnap_space *sp);

/*
 * space.c: memory for the handler thread's own tables. Not malloc(): a thread
 * inside fork() holds glibc's malloc (and stdio) locks while the kernel waits
 * for the handler to read its FORK event, so the handler must never wait for
 * those locks. Zeroed; mmap-backed.
 */
void *usnap_sys_alloc(size_t n);
void *usnap_sys_realloc(void *p, size_t n);
void usnap_sys_free(void *p);

/* migrate-send.c: cancel a running migration and wait for its thread (uffdsnap_free). */
void usnap_migrate_stop(struct uffdsnap_migrate *m);

/* fault.c */
void *usnap_handler_main(void *arg);

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

/* compress.c */
void usnap_compress_init(struct usnap_compress *cq, int zstd_level);
void usnap_compress_destroy(struct usnap_compress *cq);
void usnap_compress_wake(uffdsnap_snap_t *s);
int usnap_workers_start(uffdsnap_snap_t *s, unsigned n);
void usnap_compress_submit(uffdsnap_snap_t *s, struct usnap_job *job);
void usnap_compress_close(uffdsnap_snap_t *s);
void usnap_workers_join(uffdsnap_snap_t *s);

/* sink.c */
int usnap_sink_open(struct uffdsnap_sink *sink);
int usnap_io_start(uffdsnap_snap_t *s);
void usnap_io_push(uffdsnap_snap_t *s, struct usnap_job *job);
void usnap_io_producers_done(uffdsnap_snap_t *s);
void usnap_io_kick(uffdsnap_snap_t *s);
void usnap_io_join(uffdsnap_snap_t *s);
void usnap_sink_close(struct uffdsnap_sink *sink);
int usnap_build_head(uffdsnap_snap_t *s);

#endif
