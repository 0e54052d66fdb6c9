/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libuffdsnap - live, point-in-time snapshots of a running program's memory,
 * built on Linux userfaultfd write-protection.
 *
 * Conventions (liburing style):
 *  - every int function returns 0 (or a non-negative id/count) on success and a
 *    negative errno on failure; uffdsnap_strerror() explains the errno in terms of
 *    this library and uffdsnap_last_error() gives the detail of the calling
 *    thread's last failure ("region 'pool': 0x7f.. is a regular file on ext4 ...").
 *  - structs passed in or out carry their own size in their first member, so
 *    fields can be added without breaking the ABI: set .size = sizeof(struct)
 *    (uffdsnap_opts_init() and friends do this for you: they are macros over
 *    *_init_size() with the caller's sizeof, so a newer library never writes
 *    past a struct compiled against an older header).
 *  - all handles are opaque.
 */
#ifndef UFFDSNAP_H
#define UFFDSNAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UFFDSNAP_VERSION_MAJOR 0
#define UFFDSNAP_VERSION_MINOR 1
#define UFFDSNAP_VERSION_PATCH 0
#define UFFDSNAP_VERSION_NUMBER \
	(UFFDSNAP_VERSION_MAJOR * 10000 + UFFDSNAP_VERSION_MINOR * 100 + UFFDSNAP_VERSION_PATCH)

/* Version of the library actually loaded (compare with UFFDSNAP_VERSION_NUMBER). */
unsigned uffdsnap_version(void);

typedef struct uffdsnap uffdsnap_t;           /* one context: one userfaultfd, one fault handler */
typedef struct uffdsnap_snap uffdsnap_snap_t; /* one snapshot in progress */
typedef struct uffdsnap_opts uffdsnap_opts_t; /* carries its own size; NULL means defaults */
typedef struct uffdsnap_stats uffdsnap_stats_t;
typedef struct uffdsnap_sink uffdsnap_sink_t; /* where a snapshot's bytes go */

/* ---- context options ------------------------------------------------------ */

/* uffdsnap_opts.flags */
/*
 * Allow falling back to a userfaultfd opened with UFFD_USER_MODE_ONLY when the
 * caller may not handle kernel-mode faults (no root, no access to
 * /dev/userfaultfd, vm.unprivileged_userfaultfd=0). In that mode a write the
 * kernel makes on the program's behalf into protected memory (read(2) into a
 * region, for example) fails with EFAULT instead of waiting for the snapshot.
 */
#define UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY (1u << 0)
/* fsync(2) the snapshot file (and its directory) before reporting success. */
#define UFFDSNAP_OPT_FSYNC (1u << 1)
/*
 * Refuse memory whose writes the library could not see (docs/consistency.md):
 * begin fails with -EBUSY if another process maps a region's file (its writes
 * would not fault on this context's userfaultfd). Processes whose
 * /proc/PID/maps this process may not read are not checked.
 */
#define UFFDSNAP_OPT_STRICT (1u << 2)
/*
 * Favour the program over the file size: while write faults wait for buffer
 * space (and for 20 ms after the last did), chunks are stored uncompressed, so
 * the buffers writers wait for free at memcpy speed instead of zstd's. A program that
 * does not write during the snapshot gets the file compressed as usual.
 * stats.chunks_uncompressed counts what it cost.
 */
#define UFFDSNAP_OPT_ADAPT (1u << 3)
/*
 * Keep what deltas need: from the first snapshot on, every snapshot leaves one
 * 64-bit fingerprint per page of its image (8 bytes per page: 0.2 % of 4 KiB
 * pages, held by the context until uffdsnap_free), so that the next may be a
 * delta (uffdsnap_begin_delta). Without it, uffdsnap_begin_delta returns
 * -ENOLINK.
 */
#define UFFDSNAP_OPT_DELTA (1u << 4)

struct uffdsnap_opts {
	size_t size;            /* sizeof(uffdsnap_opts_t) */
	uint32_t flags;         /* UFFDSNAP_OPT_* */
	int zstd_level;         /* zstd level; negative = faster; default 1 */
	int compress_threads;   /* compression workers; 0 = number of online CPUs */
	size_t buffer_bytes;    /* bound on the memory a snapshot adds (docs/api.md); default 64 MiB.
	                         * Allocated (and pre-faulted) by uffdsnap_new, reused by every snapshot. */
	size_t chunk_bytes;     /* bytes of pages per chunk (power of two, >= 16 KiB); default 256 KiB */
};

/* Fill *opts with the defaults (and opts->size): only `size` bytes. */
void uffdsnap_opts_init_size(uffdsnap_opts_t *opts, size_t size);
#define uffdsnap_opts_init(opts) uffdsnap_opts_init_size((opts), sizeof(*(opts)))

/* ---- context ----------------------------------------------------------------- */

/*
 * Open a userfaultfd and negotiate the features a snapshot needs.
 * Errors: -EPERM (not permitted to handle kernel-mode faults), -ENOSYS (no
 * userfaultfd), -EOPNOTSUPP (kernel lacks write-protection of shmem: Linux 5.19+),
 * -EINVAL (bad options), -ENOMEM.
 */
int uffdsnap_new(uffdsnap_t **ctx, const uffdsnap_opts_t *opts);

/*
 * Register [addr, addr+len) under a unique name (1..255 bytes, no NUL).
 * The range must be page aligned, readable, and either mapped MAP_SHARED from
 * one shmem file (memfd, a file on tmpfs or /dev/shm, MAP_SHARED|MAP_ANONYMOUS)
 * contiguously, or private memory (MAP_PRIVATE|MAP_ANONYMOUS, MAP_PRIVATE of a
 * shmem file); it must not overlap another region. Returns the region id (>= 0, in registration
 * order). Errors: -EINVAL (alignment, empty name), -EEXIST (name taken),
 * -EBUSY (overlaps a region, or a snapshot is running), -EFAULT (not mapped),
 * -EMEDIUMTYPE (memory of another kind), -ENAMETOOLONG.
 */
int uffdsnap_add_region(uffdsnap_t *ctx, const char *name, void *addr, size_t len);
/*
 * uffdsnap_add_region() of this process's MAP_SHARED mapping of fd's file at
 * file offset `offset` (a page multiple), `len` bytes from there (0: to the
 * end of that mapping, across the pieces mprotect or madvise split it into):
 * for programs that map a file and do not keep its address (LMDB). Returns
 * the region id. Errors: those of uffdsnap_add_region(), and -EBADF, -ENOENT
 * (no shared mapping of the file holds the offset), -EBUSY (more than one
 * does: register one by address).
 */
int uffdsnap_add_region_fd(uffdsnap_t *ctx, const char *name, int fd, uint64_t offset, size_t len);

/* Number of regions registered so far. */
int uffdsnap_region_count(const uffdsnap_t *ctx);

/* Features the kernel offers (UFFD_FEATURE_* bits from UFFDIO_API). */
uint64_t uffdsnap_kernel_features(const uffdsnap_t *ctx);

/*
 * Features this context uses (a subset of the above). Without
 * UFFD_FEATURE_EVENT_FORK (the kernel grants it only with CAP_SYS_PTRACE) a
 * process forked during a snapshot is not tracked: its writes to shared
 * memory are not seen (docs/consistency.md).
 */
uint64_t uffdsnap_features(const uffdsnap_t *ctx);

/*
 * Free the context. A snapshot still running is cancelled first (its writers
 * are released, uffdsnap_wait() on it returns -ECANCELED); its handle stays
 * valid until uffdsnap_snap_free(). Not thread-safe with other calls on ctx.
 */
void uffdsnap_free(uffdsnap_t *ctx);

/* ---- other processes ------------------------------------------------------------ */

/*
 * Processes that map a region's file take part in the context's snapshots:
 * a participant hands the coordinator (the context) a userfaultfd for its own
 * address space, and from then on every snapshot protects the participant's
 * mappings at the same instant as the coordinator's own and resolves their
 * write faults by copying through the region's file. See
 * docs/consistency.md, "Other processes".
 */
typedef struct uffdsnap_participant uffdsnap_participant_t;

/*
 * Accept participants on the unix socket socket_path (created 0600; a stale
 * socket there is replaced, a live one or any other file is refused with
 * -EADDRINUSE / -EEXIST), on a thread of the library, until uffdsnap_free().
 * Only processes of the same uid, or root, may join; each mapping a process
 * joins with must map the named region's file at the stated offset. A process
 * that joins while a snapshot runs makes that snapshot fail (-EBUSY): its
 * stores before joining were not tracked. Errors: -EALREADY (listening
 * already), -ENAMETOOLONG, and those of socket(2) and bind(2).
 */
int uffdsnap_listen(uffdsnap_t *ctx, const char *socket_path);

/* Number of processes that have joined and not left. */
int uffdsnap_participant_count(const uffdsnap_t *ctx);

typedef struct uffdsnap_join_region {
	const char *name;   /* the coordinator's region */
	void *addr;         /* this process's MAP_SHARED mapping of that region's file */
	size_t len;
	uint64_t offset;    /* where addr lies in the region */
} uffdsnap_join_region_t;

/*
 * Join the coordinator listening on socket_path with n (1 to 64) mappings.
 * The process needs a userfaultfd that handles kernel-mode faults (root,
 * access to /dev/userfaultfd, or vm.unprivileged_userfaultfd=1): -EPERM
 * otherwise, rather than turning its read(2) into EFAULT. Stores the process
 * makes through a joined mapping during a snapshot wait for their page's
 * copy, like the coordinator's. If the coordinator dies, every protection is
 * dropped at once. Errors: -EINVAL, -EPERM, -ECONNREFUSED / -ENOENT (no
 * coordinator), -ETIMEDOUT (no answer), and the coordinator's refusal
 * (-ENOENT no such region, -EINVAL a mapping that is not the region's file,
 * -EACCES another uid, -EUSERS too many participants) with its reason in
 * uffdsnap_last_error().
 */
int uffdsnap_join(uffdsnap_participant_t **p, const char *socket_path, const uffdsnap_join_region_t *regions,
		  unsigned n);

/* Leave: the coordinator no longer tracks this process (after a snapshot
 * that is running now). Frees p. */
void uffdsnap_leave(uffdsnap_participant_t *p);

/* ---- sinks --------------------------------------------------------------------- */

/*
 * Sink callback: consume len bytes. Runs on the library's I/O thread, never on
 * the fault handler; it must not write memory of a registered region while a
 * snapshot runs (that write would wait for buffer space this callback frees).
 * Return 0, or a negative errno to fail the snapshot.
 */
typedef int (*uffdsnap_write_fn)(void *user, const void *buf, size_t len);

/*
 * A file: written to a temporary name "path.tmp.uffdsnap-PID-XXXXXX" (O_EXCL,
 * mode 0600 unless `mode` says otherwise) in the target's directory, closed
 * and renamed over `path` only when the snapshot is complete. mode 0 means
 * 0600. `path` must be a regular file or not exist: uffdsnap_begin() refuses a
 * directory (-EISDIR), a symbolic link (-ELOOP: never followed) and a device,
 * FIFO or socket (-EINVAL). See uffdsnap_clean_temps() for leftovers.
 */
int uffdsnap_sink_file(uffdsnap_sink_t **sink, const char *path, mode_t mode);
/* A file descriptor (pipe, socket, file): the same stream; the fd is not closed. */
int uffdsnap_sink_fd(uffdsnap_sink_t **sink, int fd);
/* A callback. */
int uffdsnap_sink_callback(uffdsnap_sink_t **sink, uffdsnap_write_fn fn, void *user);
/* Free a sink that was not passed to uffdsnap_begin() (begin takes ownership). */
void uffdsnap_sink_free(uffdsnap_sink_t *sink);

/* ---- snapshots ------------------------------------------------------------------- */

/*
 * Take a snapshot. Returns once every region is write-protected: that instant is
 * the snapshot. Writes that fault while begin is still protecting are held
 * until every region is protected, so the snapshot is one instant across all
 * regions. The sink is owned by the snapshot from here on, even on failure.
 * Errors: -EBUSY (a snapshot is running), -ENOENT (no regions), -EFAULT (a
 * region was unmapped since it was added), and sink errors (-EACCES, -ENOSPC...).
 */
int uffdsnap_begin(uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_snap_t **snap);
/* uffdsnap_begin() with uffdsnap_sink_file(path, 0600). */
int uffdsnap_begin_file(uffdsnap_t *ctx, const char *path, uffdsnap_snap_t **snap);

/*
 * A delta (incremental snapshot): uffdsnap_begin() with the same instant,
 * wait, stats, cancel and free, but the file holds only the pages whose
 * contents differ from the context's last snapshot (its parent: the last one
 * begun, if it completed). It names its parent by id (stats.parent_id); a
 * chain, the full snapshot then each delta in order, is read with
 * uffdsnap_reader_open_chain(). Needs UFFDSNAP_OPT_DELTA. Errors: those of
 * uffdsnap_begin(), and -ENOLINK (only here) when there is no usable parent:
 * no snapshot completed yet, the last one failed or was cancelled, a region
 * was added since, or the context lacks UFFDSNAP_OPT_DELTA; the reason is in
 * uffdsnap_last_error(). Take a full snapshot then: never a delta with a gap.
 */
int uffdsnap_begin_delta(uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_snap_t **snap);
/* uffdsnap_begin_delta() with uffdsnap_sink_file(path, 0600). */
int uffdsnap_begin_delta_file(uffdsnap_t *ctx, const char *path, uffdsnap_snap_t **snap);

/*
 * Wait for the snapshot to finish. 0: complete and durable as the options ask;
 * otherwise a negative errno (-ENOSPC, -EPIPE, -ECANCELED, -EIO ...) with the
 * reason in uffdsnap_snap_error(). In every case no page is left protected and
 * no writer is blocked when this returns. May be called more than once.
 */
int uffdsnap_wait(uffdsnap_snap_t *snap);

/* Non-blocking: 1 if finished, 0 if running. */
int uffdsnap_done(const uffdsnap_snap_t *snap);

/* Cancel a running snapshot (from any thread); wait() then returns -ECANCELED. */
void uffdsnap_cancel(uffdsnap_snap_t *snap);

/* Human-readable reason a snapshot failed, or "" while fine. */
const char *uffdsnap_snap_error(const uffdsnap_snap_t *snap);

struct uffdsnap_stats {
	size_t size;              /* in: sizeof(uffdsnap_stats_t) */
	int state;                /* UFFDSNAP_STATE_* */
	int error;                /* 0 or the negative errno wait() returns */
	uint64_t begin_ns;        /* time begin() spent protecting: the pause */
	uint64_t elapsed_ns;      /* begin to finish (or to now while running) */
	uint64_t window_ns;       /* begin until no page was protected any more */
	uint64_t pages_total;     /* pages in all regions */
	/* every page is counted once: pages_fault + pages_sweep + pages_hole == pages_total */
	uint64_t pages_fault;     /* copied by the fault handler for a writer */
	uint64_t pages_sweep;     /* copied by the background sweep */
	uint64_t pages_hole;      /* holes at the instant: recorded as zero without copying */
	uint64_t faults;          /* fault messages handled */
	uint64_t fault_wait_max_ns; /* longest a fault waited for buffer space */
	uint64_t bytes_raw;       /* bytes of page data copied */
	uint64_t bytes_out;       /* bytes written to the sink */
	uint64_t buffer_peak;     /* peak bytes held copied but not yet written */
	uint64_t buffer_bound;    /* the configured bound */
	uint64_t pages_zero_found;/* copied pages found all-zero, stored without data */
	uint64_t chunks;          /* chunk records written */
	/* events followed (docs/consistency.md): */
	uint64_t forks;           /* processes forked while tracked (their faults were handled too) */
	uint64_t remaps;          /* mremap()s of registered memory followed to the new address */
	uint64_t unmaps;          /* munmap()s of registered memory */
	uint64_t protect_threads; /* threads that write-protected in begin (its caller's included) */
	uint64_t chunks_uncompressed; /* chunks stored raw: zstd did not shrink them, or UFFDSNAP_OPT_ADAPT */
	/* the snapshot's identity, as its file's HEAD holds it (uffdsnap_reader_info) */
	uint8_t snap_id[16];      /* this snapshot's id (random; also in the file's END) */
	uint8_t parent_id[16];    /* a delta: its parent's snap_id; zeros for a full snapshot */
	uint64_t depth;           /* 0 for a full snapshot; a delta: its parent's depth + 1 */
	uint64_t pages_unchanged; /* a delta: pages copied but left out, equal to the parent's */
	/* of `faults`: those whose resolution was delayed by a wait for buffer space (theirs or one
	 * the handler went through while they were queued), and the sum of those waits */
	uint64_t faults_waited;
	uint64_t fault_wait_ns;
	/* shmem pages mapped by PMD again after the snapshot (protecting splits huge mappings) */
	uint64_t pages_huge_remapped;
};

#define UFFDSNAP_STATE_RUNNING 0
#define UFFDSNAP_STATE_DONE 1
#define UFFDSNAP_STATE_FAILED 2

/* Fill *out (set out->size first). Safe to call while the snapshot runs. */
int uffdsnap_snap_stats(const uffdsnap_snap_t *snap, uffdsnap_stats_t *out);

/* Free a snapshot handle; a running snapshot is cancelled and waited for. */
void uffdsnap_snap_free(uffdsnap_snap_t *snap);

/* ---- errors ------------------------------------------------------------------------ */

/* What a negative errno from this library means and what to do about it. */
const char *uffdsnap_strerror(int err);
/* Detail of the calling thread's last failed call ("" if none). */
const char *uffdsnap_last_error(void);

/*
 * Where the library's log lines go. The library is quiet by default: it logs
 * only what a caller cannot learn in time from a return value, today a lazy
 * restore that fails in its own thread (the program's next touch of a page
 * not restored gets SIGBUS; UFFDSNAP_LAZY_QUIET silences it for one
 * restore). fn(user, line) gets one line without a newline, on whichever
 * library thread failed, possibly while program threads wait on a page: it
 * must not take a lock a program thread may hold (stdio's, say: write(2) is
 * safe). Process-wide; NULL stops logging. uffdsnap_log_stderr writes each
 * line to standard error with write(2).
 */
typedef void (*uffdsnap_log_fn)(void *user, const char *line);
void uffdsnap_set_log_fn(uffdsnap_log_fn fn, void *user);
void uffdsnap_log_stderr(void *user, const char *line);

/*
 * Temporary files that writers of `path` (snapshots, restores, extracts) left
 * behind when they were killed: "path.tmp.uffdsnap-PID-XXXXXX". A temporary is
 * stale when no process PID runs and no writer holds its lock. fn (may be
 * NULL) is called for each temporary with stale 1 or 0 (still being written);
 * with remove != 0 stale ones are unlinked first. Every new output to `path`
 * removes them too. Returns the number of stale temporaries, or -errno.
 */
typedef void (*uffdsnap_temp_fn)(void *user, const char *tmp_path, long pid, int stale);
int uffdsnap_clean_temps(const char *path, int remove, uffdsnap_temp_fn fn, void *user);

/* ---- reading snapshot files ---------------------------------------------------------- */

/*
 * A reader checks everything it reads (lengths against the format's limits and
 * the file size, every record's CRC-32C) before using it, so a corrupt or
 * hostile file gives -EBADMSG, never a crash or silently wrong data.
 * One reader must be used by one thread at a time (it caches a decompression
 * context and buffers); separate readers are independent. Its reads and
 * extracts decode chunks on threads of its own as well (one per online CPU
 * but the caller's), started by the first read and stopped by
 * uffdsnap_reader_free().
 */
typedef struct uffdsnap_reader uffdsnap_reader_t;

typedef struct uffdsnap_info {
	size_t size;             /* in: sizeof(uffdsnap_info_t) */
	uint32_t version;        /* format version */
	uint32_t page_size;
	uint32_t nregions;
	int complete;            /* 1 if the trailer says the snapshot completed */
	int status;              /* 0, or the negative errno a failed snapshot recorded */
	uint64_t created_ns;     /* CLOCK_REALTIME at the snapshot instant */
	/* the four counters come from the trailer: 0 while it is not known */
	uint64_t chunks;
	uint64_t pages_data;     /* pages stored with data */
	uint64_t pages_zero;     /* holes and zero pages */
	uint64_t bytes_raw;      /* bytes of page data before compression */
	uint64_t bytes_file;     /* size of the snapshot file (a stream: bytes read so far) */
	const char *reason;      /* why complete is 0 ("" if complete); valid while the reader lives */
	uint64_t chunks_loaded;  /* chunks this reader has loaded with their pages (decompressed) so far;
	                          * a chunk served from its cache is not counted again */
	/* identity and chain (docs/format.md, "Deltas"): */
	uint8_t snap_id[16];     /* the snapshot's unique id */
	uint8_t parent_id[16];   /* a delta: the id of the snapshot it applies to; else zeros */
	uint32_t depth;          /* a delta: 1 + its parent's depth (1 on a full snapshot); else 0 */
	int delta;               /* 1 if a delta (version 2): alone it is a file, not an image */
	unsigned files;          /* files the reader presents: 1, or a chain's length
	                          * (uffdsnap_reader_open_chain(): the fields above are its last file's) */
} uffdsnap_info_t;

typedef struct uffdsnap_region_info {
	size_t size;             /* in: sizeof(uffdsnap_region_info_t) */
	const char *name;        /* valid while the reader lives; any bytes but NUL (escape to print) */
	uint64_t length;         /* bytes */
} uffdsnap_region_info_t;

/*
 * Open a snapshot file for reading: the header and the trailer (index) are read
 * and checked. A file without a valid trailer (truncated, or the snapshot
 * failed) opens with info.complete = 0 so it can be inspected; reading page data
 * from it fails with -ENODATA. A delta (format version 2, info.delta = 1) opens
 * and verifies, but its pages are read only with its chain (-ENOLINK alone). Errors: -ENOEXEC (not a snapshot), -EPROTONOSUPPORT
 * (newer format), -EBADMSG (corrupt), -ENODATA (shorter than its header), plus
 * open(2) and read(2) errors; uffdsnap_last_error() says what and where.
 */
int uffdsnap_reader_open(uffdsnap_reader_t **r, const char *path);
/* The same from an fd (read with pread from offset 0 when it is a file). A
 * non-seekable fd (pipe, socket) is read as a stream: only
 * uffdsnap_reader_verify() may be used on it, once; read and extract fail with
 * -ESPIPE. The header is read here, so this blocks until it arrives. The fd is
 * not closed. */
int uffdsnap_reader_open_fd(uffdsnap_reader_t **r, int fd);
/*
 * Open a chain: a full snapshot and the deltas taken after it, paths[0] the
 * full one, then each delta after its parent (n >= 1). The reader presents
 * the image at the last file's instant through every reader call (read,
 * extract, verify, restore, lazy restore, serve); its region table and info
 * are the last file's, with info.files = n. Every file must be complete; each
 * delta's parent id must be the previous file's id, its depth its place in
 * the chain, and its region table the same. A wrong order, a missing link, a
 * file of another chain (-ENOLINK), or a file that does not open (its own
 * error) is refused, and uffdsnap_last_error() names the file.
 */
int uffdsnap_reader_open_chain(uffdsnap_reader_t **r, const char *const *paths, unsigned n);
int uffdsnap_reader_info(const uffdsnap_reader_t *r, uffdsnap_info_t *out);
/* Name and length of region `id` (0 .. nregions-1), or -ENOENT. */
int uffdsnap_reader_region(const uffdsnap_reader_t *r, unsigned id, uffdsnap_region_info_t *out);
/* Region id by name, or -ENOENT. */
int uffdsnap_reader_find(const uffdsnap_reader_t *r, const char *name);
/*
 * Read every record, check every checksum, decompress every chunk and check that
 * every page of every region is recorded exactly once and that the trailer
 * agrees. 0 only for a complete, intact snapshot; else -EBADMSG (corrupt),
 * -ENODATA (incomplete or failed), with the reason in uffdsnap_reader_error().
 * On a stream this reads the stream to its end; afterwards info() reports the
 * trailer's counters.
 */
int uffdsnap_reader_verify(uffdsnap_reader_t *r);
/*
 * Copy bytes [off, off+len) of region `id` into buf (holes read as zeros).
 * 0, or -EINVAL (range not inside the region), -ENOENT (no such region),
 * -ENODATA (incomplete snapshot), -EBADMSG (a chunk it needs is corrupt, or
 * the extent tables of the region's chunks do not account for every page once),
 * -ENOLINK (a delta opened alone: its pages are read with its chain,
 * uffdsnap_reader_open_chain()).
 * The first read or extract of a region maps which chunk holds each page
 * (12 bytes per run of pages that one chunk holds); each read decompresses
 * every chunk it needs once, and keeps the runs of them that lie beyond it
 * for later reads (uffdsnap_reader_cache()).
 * The reader's threads decode the chunks a read needs, and for reads in page
 * order the chunks after it, while the caller copies: at most 4 chunks per
 * decoding thread (fewer if that would exceed 16 MiB of pages) plus the one
 * being copied. A chunk decoded ahead that is damaged fails only the read
 * that needs it.
 */
int uffdsnap_reader_read(uffdsnap_reader_t *r, unsigned id, uint64_t off, void *buf, size_t len);
/*
 * Keep at most `bytes` of decompressed pages (runs of loaded chunks that lie
 * beyond a read) for later reads; 0 keeps only the last chunk. Drops what is
 * kept. 0, or -EINVAL. Default: what a read in page order of the regions read
 * so far needs to load each chunk once (worked out from the page map when a
 * region is first read; pages a snapshot under writes copied for faults lie
 * scattered over fault chunks), at least UFFDSNAP_READER_CACHE and at most
 * UFFDSNAP_READER_CACHE_AUTO; setting it replaces that rule for the reader.
 */
#define UFFDSNAP_READER_CACHE (8u << 20)
#define UFFDSNAP_READER_CACHE_AUTO (256u << 20)
int uffdsnap_reader_cache(uffdsnap_reader_t *r, size_t bytes);
/*
 * Decode with n threads of the reader's besides the caller's (0: on the
 * caller's thread alone; at most UFFDSNAP_READER_THREADS_MAX). Default: one
 * per online CPU but the caller's. Stops and joins the threads it has;
 * the next read that needs a chunk starts n new ones. A reader of a chain
 * decodes on the caller's thread whatever n is. 0, or -EINVAL.
 */
#define UFFDSNAP_READER_THREADS_MAX 63u
int uffdsnap_reader_threads(uffdsnap_reader_t *r, unsigned n);
/*
 * Write region `id`, full length, to fd from offset 0. A regular file is
 * truncated and holes stay holes; to a pipe or device the zeros are written.
 * Errors as uffdsnap_reader_read(), plus write(2) errors.
 */
int uffdsnap_reader_extract_fd(uffdsnap_reader_t *r, unsigned id, int fd);
/*
 * Write region `id` to the file `path` as uffdsnap_sink_file() writes a
 * snapshot: the same rules for `path` (a regular file or nothing: -EISDIR,
 * -ELOOP, -EINVAL otherwise), under a temporary name renamed over `path` only
 * once complete and closed without error, with `mode` (0 means 0600). An
 * incomplete snapshot (-ENODATA) or a stream (-ESPIPE) is refused before any
 * file is created. Holes stay holes. The detail is in uffdsnap_last_error().
 */
int uffdsnap_reader_extract_file(uffdsnap_reader_t *r, unsigned id, const char *path, mode_t mode);
/*
 * Write the reader's image (of a file, or of a chain: uffdsnap_reader_open_chain())
 * to `path` as one full snapshot (format version 1, zstd level 1; all-zero
 * pages stored as ZERO), under the rules of uffdsnap_reader_extract_file(): a
 * temporary file renamed over `path` only once complete, `mode` 0 meaning
 * 0600. The new file has a new snapshot id and the last file's instant.
 * Errors as uffdsnap_reader_read(), plus write(2) errors; the detail is in
 * uffdsnap_last_error().
 */
int uffdsnap_reader_merge_file(uffdsnap_reader_t *r, const char *path, mode_t mode);
/* Why the last verify/read/extract call on r failed ("" if it succeeded). */
const char *uffdsnap_reader_error(const uffdsnap_reader_t *r);
void uffdsnap_reader_free(uffdsnap_reader_t *r);

/* ---- restoring snapshots ----------------------------------------------------------------- */

/*
 * Eager restore: the contents of a region of a complete snapshot, all at
 * once, decompressed on several threads (each with its own reader clone and
 * zstd context; chunks are handed out by index). Pages the snapshot records as
 * zero (holes and all-zero pages) are never written: in a new memfd or file
 * they stay holes and cost no memory. Every page is checked to be recorded
 * exactly once, so a damaged file fails with -EBADMSG, never with a silently
 * short image. The reader is used by the calling thread only and must not be
 * used by another thread during the call. Details of a failure are in
 * uffdsnap_last_error() ("region 'pool': chunk at offset ...: checksum mismatch").
 */
typedef struct uffdsnap_restore_opts {
	size_t size;            /* sizeof(uffdsnap_restore_opts_t) */
	int threads;            /* decompression threads incl. the caller's; 0 = online CPUs */
	uint32_t flags;         /* UFFDSNAP_RESTORE_* */
} uffdsnap_restore_opts_t;

/* uffdsnap_restore_memfd(): a memfd of huge pages (MFD_HUGETLB, the default
 * huge page size): the region's length must be a multiple of it, and the
 * pages must be there (vm.nr_hugepages). */
#define UFFDSNAP_RESTORE_HUGETLB (1u << 0)

typedef struct uffdsnap_restore_stats {
	size_t size;            /* in: sizeof(uffdsnap_restore_stats_t) */
	unsigned threads;       /* threads that ran */
	uint64_t elapsed_ns;    /* the whole call */
	uint64_t bytes_total;   /* region length; bytes_total / elapsed_ns = throughput in GB/s */
	uint64_t bytes_data;    /* bytes of data pages written */
	uint64_t pages_data;
	uint64_t pages_zero;    /* left as holes (or zeroed, for existing memory) */
	uint64_t chunks;
} uffdsnap_restore_stats_t;

/* Fill *opts with the defaults (and opts->size): only `size` bytes. */
void uffdsnap_restore_opts_init_size(uffdsnap_restore_opts_t *opts, size_t size);
#define uffdsnap_restore_opts_init(opts) uffdsnap_restore_opts_init_size((opts), sizeof(*(opts)))

/*
 * Restore region `id` into a new memfd (named after the region, sized to it,
 * close-on-exec) and return it in *fd_out, ready to mmap(MAP_SHARED) or to pass
 * to another process; of huge pages with UFFDSNAP_RESTORE_HUGETLB in opts->flags.
 * opts and stats may be NULL.
 * Errors: -ENOENT (no region id), -ENODATA (incomplete snapshot), -ESPIPE (a
 * stream), -EBADMSG (corrupt), -ENOMEM/-ENOSPC (memfd, huge pages), -EINVAL
 * (also: a region that is not whole huge pages).
 */
int uffdsnap_restore_memfd(uffdsnap_reader_t *r, unsigned id, int *fd_out, const uffdsnap_restore_opts_t *opts,
			   uffdsnap_restore_stats_t *stats);
/*
 * Restore region `id` into the file `path` (meant for tmpfs or /dev/shm): written
 * to a temporary name in the same directory (mode 0600), closed and renamed
 * over `path` only once complete, so a failed restore leaves nothing behind.
 * `path` follows the rules of uffdsnap_sink_file() (-EISDIR, -ELOOP, -EINVAL
 * for what is not a regular file). On hugetlbfs the file is mapped and filled
 * (no write(2) there); the region must then be whole huge pages.
 */
int uffdsnap_restore_file(uffdsnap_reader_t *r, unsigned id, const char *path, const uffdsnap_restore_opts_t *opts,
			  uffdsnap_restore_stats_t *stats);
/*
 * Restore region `id` into existing memory [addr, addr+len), which must be
 * page aligned, writable and exactly the region's length (else -EINVAL, and
 * uffdsnap_last_error() names the region and both lengths). Zero pages are made
 * zero without writing where possible: punched (MADV_REMOVE) in shared shmem,
 * left alone where they already read as zero.
 */
int uffdsnap_restore_into(uffdsnap_reader_t *r, unsigned id, void *addr, size_t len,
			  const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats);
/*
 * Restore every region registered with ctx from the snapshot's region of the
 * same name, as uffdsnap_restore_into() does. All regions are matched (name
 * present, same length) before any is written; a mismatch is -ENOENT or
 * -EINVAL naming the region. Regions of the snapshot that ctx lacks are left
 * alone. -EBUSY while a snapshot runs on ctx; no snapshot can begin during
 * the restore. stats sums the regions.
 */
int uffdsnap_restore_ctx(uffdsnap_reader_t *r, uffdsnap_t *ctx, const uffdsnap_restore_opts_t *opts,
			 uffdsnap_restore_stats_t *stats);

/*
 * Lazy (post-copy) restore: the program maps its regions, hands them over and
 * runs at once. The regions are registered with a userfaultfd (MISSING mode);
 * a handler thread serves each first touch from the snapshot, placing the
 * whole chunk around the faulting page with UFFDIO_COPY, while a background
 * thread places the remaining chunks in order. Once every data page is
 * present the registration is dropped and the memory runs with no overhead;
 * pages the snapshot records as zero that were never touched stay holes.
 *
 * The memory must be MAP_SHARED shmem (memfd, tmpfs, /dev/shm,
 * MAP_SHARED|MAP_ANONYMOUS) or private anonymous memory, page aligned, the
 * region's exact length, and empty (no page present). Until the restore is
 * done, it must not be filled by other means (write(2) to the memfd, another
 * mapping, a forked child touching it): a page placed that way wins over the
 * snapshot's.
 *
 * If a page cannot be served (a chunk fails its checksum, the file is cut
 * short, an ioctl fails) the restore fails: the reason is logged to stderr
 * once, and every thread touching a page that was not restored gets SIGBUS
 * (UFFDIO_POISON, Linux 6.6+; on older kernels the faulting thread is sent
 * SIGBUS) instead of waiting forever.
 */
typedef struct uffdsnap_lazy uffdsnap_lazy_t;

typedef struct uffdsnap_lazy_region {
	const char *name;       /* the region in the snapshot */
	void *addr;
	size_t len;
} uffdsnap_lazy_region_t;

/* uffdsnap_lazy_opts.flags */
/* No background pass until uffdsnap_lazy_wait() or uffdsnap_lazy_free():
 * only faults are served (to measure or test the fault path alone). For
 * uffdsnap_serve_conn(): until the client calls uffdsnap_lazy_client_wait()
 * or uffdsnap_lazy_client_free(), or hangs up. */
#define UFFDSNAP_LAZY_NO_PREFETCH (1u << 0)
/* Do not log a failure to stderr (uffdsnap_lazy_error() still has it). */
#define UFFDSNAP_LAZY_QUIET (1u << 1)

/* uffdsnap_lazy_opts.max_clients when it is 0 */
#define UFFDSNAP_SERVE_MAX_CLIENTS 64
/* uffdsnap_lazy_opts.request_ms when it is 0 */
#define UFFDSNAP_SERVE_REQUEST_MS 5000

typedef struct uffdsnap_lazy_opts {
	size_t size;            /* sizeof(uffdsnap_lazy_opts_t) */
	uint32_t flags;         /* UFFDSNAP_LAZY_* */
	uint32_t max_clients;   /* uffdsnap_serve_conn() only: connections served at once from one
	                         * reader; more are refused with -EAGAIN. 0 = UFFDSNAP_SERVE_MAX_CLIENTS.
	                         * (Added in 0.1's padding: sizeof is unchanged on 64-bit.) */
	uint32_t request_ms;    /* uffdsnap_serve_conn() only: time a connection has to send its whole
	                         * request (hello and region table) before the server hangs up on it
	                         * with -ETIMEDOUT. 0 = UFFDSNAP_SERVE_REQUEST_MS. */
} uffdsnap_lazy_opts_t;

#define UFFDSNAP_LAZY_RUNNING 0
#define UFFDSNAP_LAZY_DONE 1
#define UFFDSNAP_LAZY_FAILED 2

typedef struct uffdsnap_lazy_stats {
	size_t size;              /* in: sizeof(uffdsnap_lazy_stats_t) */
	int state;                /* UFFDSNAP_LAZY_* */
	int error;                /* 0 or the negative errno of the failure */
	uint64_t start_ns;        /* time uffdsnap_lazy_start() took: until the program could run */
	uint64_t resident_ns;     /* start until every page was present and the registration
	                           * dropped; 0 while running */
	uint64_t pages_total;     /* pages in the regions */
	uint64_t pages_fault;     /* data pages placed for a fault (the chunk around it) */
	uint64_t pages_prefetch;  /* data pages placed by the background pass */
	uint64_t pages_zero_fault;/* zero pages filled because they were touched (hugetlbfs: the zero
	                           * pages of every huge page placed for a fault) */
	uint64_t faults;          /* fault messages served */
	uint64_t chunks_fault;    /* chunks loaded for faults */
	uint64_t chunks_prefetch; /* chunks loaded by the background pass; outside hugetlbfs each chunk is
	                           * loaded once: chunks_fault + chunks_prefetch <= the snapshot's chunks */
} uffdsnap_lazy_stats_t;

/* Fill *opts with the defaults (and opts->size): only `size` bytes. */
void uffdsnap_lazy_opts_init_size(uffdsnap_lazy_opts_t *opts, size_t size);
#define uffdsnap_lazy_opts_init(opts) uffdsnap_lazy_opts_init_size((opts), sizeof(*(opts)))
/*
 * Start restoring n regions of r's snapshot lazily; returns once the regions
 * are registered and the threads run. r may be freed afterwards (the restore
 * uses clones of it). Errors: -ENOENT (no region of that name), -EINVAL
 * (length or alignment mismatch), -EEXIST (the memory is not empty), -EBUSY
 * (already registered with a userfaultfd), -ENODATA/-ESPIPE (the snapshot
 * cannot be read chunk by chunk), -EPERM/-ENOSYS (userfaultfd).
 */
int uffdsnap_lazy_start(uffdsnap_lazy_t **lz, uffdsnap_reader_t *r, const uffdsnap_lazy_region_t *regions,
			unsigned n, const uffdsnap_lazy_opts_t *opts);
/* Wait until the restore is done (0) or has failed (its negative errno).
 * Starts the background pass if UFFDSNAP_LAZY_NO_PREFETCH held it back. */
int uffdsnap_lazy_wait(uffdsnap_lazy_t *lz);
/* Fill *out (set out->size first). Safe to call from any thread at any time. */
int uffdsnap_lazy_stats(const uffdsnap_lazy_t *lz, uffdsnap_lazy_stats_t *out);
/* Why the restore failed, or "". */
const char *uffdsnap_lazy_error(const uffdsnap_lazy_t *lz);
/* uffdsnap_lazy_wait(), then release everything. */
void uffdsnap_lazy_free(uffdsnap_lazy_t *lz);

/*
 * Lazy restore for another process, over a Unix socket (the way VMMs and
 * CRIU-like tools restore a process): the process to restore calls
 * uffdsnap_lazy_connect(), which checks and registers its regions with a new
 * userfaultfd and sends it (SCM_RIGHTS) with the region table to a page
 * server; the server (`uffdsnap serve SNAPFILE --socket PATH`, or any program
 * calling uffdsnap_serve_conn() on an accepted connection) matches the regions
 * with its snapshot and serves the faults and the prefetch exactly as
 * uffdsnap_lazy_start() does in-process. connect returns once the server has
 * accepted the regions: the process may run.
 *
 * If the server dies before every page arrived, the client poisons the pages
 * that did not: a thread touching one (or waiting for one) gets SIGBUS, and
 * uffdsnap_lazy_client_wait() returns -EPIPE.
 */
typedef struct uffdsnap_lazy_client uffdsnap_lazy_client_t;

/* Serve one client on the connected socket conn until its restore is done or
 * failed (0 or its negative errno). r is only read (it is cloned): one
 * reader may serve several connections at once from several threads, up to
 * opts->max_clients; a connection beyond that is answered -EAGAIN ("try again
 * later") at once, without reading its request, and the call returns -EAGAIN
 * with the reason in uffdsnap_last_error(). A connection that has not sent
 * its whole request within opts->request_ms is answered and the call returns
 * -ETIMEDOUT. */
int uffdsnap_serve_conn(uffdsnap_reader_t *r, int conn, const uffdsnap_lazy_opts_t *opts);
/* Connect to the page server at socket_path and hand it the n regions (the
 * rules of uffdsnap_lazy_start() apply). Errors: those of uffdsnap_lazy_start()
 * as the server reports them, -EAGAIN if the server serves as many clients as
 * it takes, and connect(2) errors; detail in uffdsnap_last_error(). */
int uffdsnap_lazy_connect(uffdsnap_lazy_client_t **c, const char *socket_path,
			  const uffdsnap_lazy_region_t *regions, unsigned n);
/* Wait until the server reports the restore done (0) or failed, or goes away (-EPIPE). */
int uffdsnap_lazy_client_wait(uffdsnap_lazy_client_t *c);
/* Why it failed, or "". */
const char *uffdsnap_lazy_client_error(const uffdsnap_lazy_client_t *c);
/* Fill *out (set out->size first) with the server's figures for this restore,
 * as it sent them with its final status: until then (and from a server that
 * does not send them) only state and error are set, the counts are 0. */
int uffdsnap_lazy_client_stats(const uffdsnap_lazy_client_t *c, uffdsnap_lazy_stats_t *out);
/* uffdsnap_lazy_client_wait(), then release everything. */
void uffdsnap_lazy_client_free(uffdsnap_lazy_client_t *c);

/* ---- live migration ------------------------------------------------------------------ */

/*
 * Move the memory of ctx's regions to another process (usually on another
 * host) over a connected stream socket the caller made (TCP or unix), while
 * the program keeps running: pre-copy, or post-copy (UFFDSNAP_MIGRATE_POSTCOPY
 * below), docs/migration.md. Round 1 sends every page; each later round
 * sends the pages written since the previous round, found by the kernel's asynchronous write tracking
 * (UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN, Linux 6.7+): writers never wait.
 * When the pages still dirty fit the downtime budget, or at max_rounds, the
 * switchover callback runs (the program stops writing the regions and
 * returns 0), the last pages are sent, and the receiver's memory then equals
 * the sender's at the switchover, byte for byte. The sender's memory is never
 * changed, and on every path (success, failure, a lost connection) no page is
 * left protected and no thread of the program is blocked.
 */
typedef struct uffdsnap_migrate uffdsnap_migrate_t;
typedef struct uffdsnap_incoming uffdsnap_incoming_t;

/* uffdsnap_migrate_opts.flags: post-copy. After round 1 the program stops
 * (switchover callback) and the receiver runs at once: a page it touches that
 * has not arrived is fetched on demand while the sender pushes the rest; the
 * sender's program stays paused until uffdsnap_migrate_wait() returns. The
 * receiver needs Linux 6.6+ (UFFDIO_POISON). docs/migration.md "Post-copy". */
#define UFFDSNAP_MIGRATE_POSTCOPY (1u << 0)
/* Compress pages with zstd (level 1) on the sender's thread; a batch is sent
 * compressed only when that saves an eighth of it. For links slower than
 * zstd (about 1 Gbit/s and below); round_bytes still counts page bytes. */
#define UFFDSNAP_MIGRATE_COMPRESS (1u << 1)

/* Defaults for the options left 0, and the limit on max_rounds. */
#define UFFDSNAP_MIGRATE_DOWNTIME_US 300000
#define UFFDSNAP_MIGRATE_ROUNDS 30
#define UFFDSNAP_MIGRATE_MAX_ROUNDS 64

typedef struct uffdsnap_migrate_opts {
	size_t size;                    /* sizeof(uffdsnap_migrate_opts_t) */
	uint32_t flags;                 /* UFFDSNAP_MIGRATE_* */
	int (*switchover)(void *user);  /* sender: the program stops writing the regions; returns 0
	                                 * (or a negative errno to fail the migration). NULL: the
	                                 * program is known not to write. On a library thread. */
	void *user;
	uint64_t max_downtime_us;       /* sender: 0 = UFFDSNAP_MIGRATE_DOWNTIME_US */
	unsigned max_rounds;            /* sender: 0 = UFFDSNAP_MIGRATE_ROUNDS; at most
	                                 * UFFDSNAP_MIGRATE_MAX_ROUNDS */
	uint64_t max_bandwidth;         /* sender: bytes per second; 0 = unlimited */
} uffdsnap_migrate_opts_t;

/* Fill *opts with the defaults (and opts->size): only `size` bytes. */
void uffdsnap_migrate_opts_init_size(uffdsnap_migrate_opts_t *opts, size_t size);
#define uffdsnap_migrate_opts_init(opts) uffdsnap_migrate_opts_init_size((opts), sizeof(*(opts)))

#define UFFDSNAP_MIGRATE_RUNNING 0
#define UFFDSNAP_MIGRATE_DONE 1
#define UFFDSNAP_MIGRATE_FAILED 2

typedef struct uffdsnap_migrate_stats {
	size_t size;                    /* in: sizeof(uffdsnap_migrate_stats_t) */
	int state;                      /* UFFDSNAP_MIGRATE_* */
	int error;                      /* 0 or the negative errno wait() returns */
	unsigned rounds;                /* rounds sent, the final one (after the switchover) included */
	uint64_t round_bytes[UFFDSNAP_MIGRATE_MAX_ROUNDS]; /* page bytes sent in each round */
	uint64_t bytes_wire;            /* bytes written to the socket (frames, headers included) */
	uint64_t pages_sent;            /* pages sent with their data, all rounds */
	uint64_t pages_zero;            /* pages sent as "zero" (no data) */
	uint64_t downtime_ns;           /* switchover callback called until the receiver confirmed */
	uint64_t total_ns;              /* uffdsnap_migrate_send() until done or failed */
	uint64_t pages_requested;       /* post-copy: pages sent because the receiver faulted on them */
} uffdsnap_migrate_stats_t;

/*
 * Start migrating ctx's regions over sock on a thread of the library; returns
 * once the regions are tracked. The regions are registered with a userfaultfd
 * of the migration for its duration: no snapshot may run meanwhile (and
 * uffdsnap_begin() and uffdsnap_add_region() answer -EBUSY until it ended).
 * uffdsnap_free(ctx) cancels a migration still running (its wait then gives
 * -ECANCELED; free the handle afterwards as usual).
 * sock is not closed (on TCP, TCP_NODELAY is set on it). Errors: -EINVAL, -EBUSY (a snapshot or a migration
 * runs), -ENOENT (no regions), -EOPNOTSUPP (no WP_ASYNC or PAGEMAP_SCAN: Linux
 * 6.7+; or a hugetlbfs region), -EPERM, -ENOMEM. With UFFDSNAP_MIGRATE_POSTCOPY a receiver
 * that cannot take it refuses in the handshake: wait gives -EPROTO.
 */
int uffdsnap_migrate_send(uffdsnap_t *ctx, int sock, const uffdsnap_migrate_opts_t *opts, uffdsnap_migrate_t **m);
/*
 * Wait for the migration: 0 once the receiver has confirmed every page;
 * otherwise a negative errno (-EPIPE or -ECONNRESET: the connection was lost;
 * -ETIMEDOUT: the receiver stopped reading or answering for 30 s; -EBADMSG or
 * -EPROTO: the receiver's answer was corrupt or a refusal; -ECANCELED) with
 * the detail in uffdsnap_last_error() of the waiting thread. Before the
 * switchover a failure leaves the program running untouched; after it, the
 * program is paused (it returned from the switchover callback) and decides
 * whether to resume. In post-copy a failure after the switchover leaves the
 * receiver without the pages it lacked (they raise SIGBUS there): resuming
 * the sender is then the only copy of the program that is whole. May be
 * called more than once.
 */
int uffdsnap_migrate_wait(uffdsnap_migrate_t *m);
/* Fill *out (set out->size first). Safe to call while the migration runs. */
int uffdsnap_migrate_stats(const uffdsnap_migrate_t *m, uffdsnap_migrate_stats_t *out);
/* Cancel a running migration (wait then returns -ECANCELED), wait, release. */
void uffdsnap_migrate_free(uffdsnap_migrate_t *m);

/*
 * Receive a migration on sock: reads the sender's region table (waiting up
 * to 30 s for it), creates one memfd per region (named after it, sized to
 * it, mapped MAP_SHARED) and receives the rounds on a thread of the library.
 * Every byte from the socket is checked before use (frame checksums, lengths,
 * region numbers and page ranges): a corrupt or hostile stream fails with
 * -EBADMSG, never a crash. opts may be NULL (the sender's fields are
 * ignored). Errors: -EBADMSG, -EPROTONOSUPPORT (another protocol version),
 * -EPIPE (the sender hung up), -ETIMEDOUT, -ENOMEM, -EINVAL.
 */
int uffdsnap_migrate_recv(int sock, const uffdsnap_migrate_opts_t *opts, uffdsnap_incoming_t **in);
/* 0 once the memory equals the sender's at the switchover and may be used
 * (post-copy: through `addr` only; a read of a page not arrived yet waits
 * for it); else the negative errno of the failure (-EBADMSG, -EPIPE,
 * -ETIMEDOUT: the sender sent nothing for 30 s), also when it came after an
 * earlier 0. */
int uffdsnap_incoming_wait(uffdsnap_incoming_t *in);
/*
 * 0 once every page has arrived (pre-copy: when uffdsnap_incoming_wait()
 * returns). Post-copy: a failure after the switchover (-EPIPE, -ECONNRESET,
 * -ETIMEDOUT, -EBADMSG, -ECANCELED from free; -EEXIST: a page was created
 * through the memfd or another mapping before it arrived) leaves every page
 * that never came poisoned: touching one raises SIGBUS, and threads waiting
 * on one get SIGBUS at once. Until then use the memory through `addr` only
 * (read(2) of the memfd sees zeros where pages have not arrived).
 */
int uffdsnap_incoming_complete(uffdsnap_incoming_t *in);
/* Number of regions. */
int uffdsnap_incoming_count(const uffdsnap_incoming_t *in);

typedef struct uffdsnap_incoming_region {
	size_t size;                    /* in: sizeof(uffdsnap_incoming_region_t) */
	const char *name;               /* the sender's region name (valid until free) */
	size_t len;
	int fd;                         /* the memfd holding the region (owned by in: dup it to keep it) */
	void *addr;                     /* its MAP_SHARED mapping (unmapped by free) */
} uffdsnap_incoming_region_t;

/* Region `id` (0 .. count-1), or -ENOENT. */
int uffdsnap_incoming_region(const uffdsnap_incoming_t *in, unsigned id, uffdsnap_incoming_region_t *out);
/* Stop receiving (a running receive fails with -ECANCELED), unmap, close, release. */
void uffdsnap_incoming_free(uffdsnap_incoming_t *in);

#ifdef __cplusplus
}
#endif
#endif /* UFFDSNAP_H */
