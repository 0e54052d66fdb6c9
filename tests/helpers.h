/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers shared by the tests/test-*.c programs, one file per purpose:
 * t-env.c (the suite runner, root, watchdogs, files), t-mem.c (regions,
 * patterns, pagemap), t-snap.c (snapshots, sinks, fixtures), t-writers.c
 * (writer threads) and t-oracle.c (the prefix rule).
 *
 * Conventions:
 *  - every test program calls t_test_require_uffd() in main() before
 *    starting the Check runner: without root/userfaultfd it prints why and
 *    exits 77 (meson's "skipped").
 *  - anything that can block on a fault runs under a Check timeout and, for
 *    threads, under t_watchdog() (alarm(): a hang aborts the test child)
 *    and t_join_timeout().
 *  - helpers fail the current Check test (ck_assert) on setup errors.
 */
#ifndef USNAP_TEST_HELPERS_H
#define USNAP_TEST_HELPERS_H

#include <check.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "uffdsnap.h"

#define T_SKIP 77
/* the lock of tests run with USNAP_EXCLUSIVE=1 (shell tests take it with flock(1)) */
#define T_EXCLUSIVE_LOCK "/tmp/libuffdsnap-tests.lock"

/* 1 when built with AddressSanitizer or ThreadSanitizer (gcc says so with
 * __SANITIZE_*__, clang with __has_feature): several times slower per byte
 * touched, so a few tests use smaller regions or fewer runs that take the
 * same paths. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif
/* 1 under ThreadSanitizer alone, the slowest of the three builds (it runs
 * the suite in the other CI lane, tests/run-suite.sh) */
#if defined(__SANITIZE_THREAD__)
#define T_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define T_TSAN 1
#endif
#endif
#ifndef T_TSAN
#define T_TSAN 0
#endif
#define KiB (1024ul)
#define MiB (1024ul * 1024ul)
#define GiB (1024ul * 1024ul * 1024ul)

extern size_t t_page; /* page size, set by t_test_require_uffd() / t_test_init() */

/*
 * ck_assert_msg for loops over pages, slots or bytes. Check's ck_assert_msg
 * records a checkpoint on every pass (a message written to its result file
 * and read back by the parent), which over a million passes costs seconds,
 * and tens of seconds under ThreadSanitizer. This one does nothing unless it
 * fails, and then fails exactly as ck_assert_msg does.
 */
#define t_assert_msg(expr, ...) \
	((expr) ? (void)0 : _ck_assert_failed(__FILE__, __LINE__, "Assertion '" #expr "' failed", ##__VA_ARGS__))

/* ---- environment (t-env.c) -------------------------------------------------------- */

/* Set up page size and stdout buffering (called by t_test_require_uffd). */
void t_test_init(void);
/* Exit 77 with a printed reason unless a context can be created (root or
 * /dev/userfaultfd access, kernel with shmem write-protect). */
void t_test_require_uffd(void);
/* Exit 77 with a reason unless running as root (mounts, setresuid). */
void t_test_require_root(void);
/* Run the suite (CK_FORK unless CK_FORK=no in env) and return the exit code:
 * 1 if a case failed, else 77 (meson's SKIP) if a case called t_skip(),
 * else 0. */
int t_run_suite(Suite *s);
/* t_run_suite of a suite `name` of one test case `name`: the tests in
 * cases (NULL-terminated), each under a Check timeout of `timeout` s. */
int t_run_cases(const char *name, unsigned timeout, const TTest *const *cases);
/* From inside a case that cannot run here (no swap, no fork events, ...):
 * print "name: SKIP: reason" and count the case as skipped; the case then
 * returns. Cases that may skip get a Check tag of their own and a meson test
 * of their own (tests/meson.build), so a skip never hides the cases that ran. */
void t_skip(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A watchdog for the current (forked) test: after `seconds`, print `what`
 * and abort(). 0 disarms. */
void t_watchdog(unsigned seconds, const char *what);
/* pthread_join with a timeout; 0 on success, ETIMEDOUT if the thread hangs. */
int t_join_timeout(pthread_t t, unsigned seconds);
uint64_t t_now_ns(void);
double t_ms_since(uint64_t t0_ns);
/* The uffdsnap tool of this build tree into tool (PATH_MAX); exit 77 if it is
 * not there. Call from main(). */
void t_find_tool(char *tool);
/* Wait for the child pid; after `seconds` kill it and fail the test, saying
 * `what` hung. Returns its wait status. */
int t_wait_child(pid_t pid, unsigned seconds, const char *what);
/* In a forked child that is meant to die of SIGBUS: no core file, SIGBUS's
 * default action (a sanitizer's handler would turn it into an exit), and an
 * alarm() so that it cannot outlive the test. */
void t_sigbus_child(void);

/* Process accounting, for tests that a failure leaks nothing: open fds,
 * a field of /proc/self/status ("Threads", "RssAnon": its number, -1 if
 * absent), bytes in use on the main heap (exact only without glibc's tcache:
 * t_exec_without_tcache), and a listing of the open fds for a failure's
 * message. */
int t_fd_count(void);
void t_fd_list(void);
long t_proc_status(const char *key);
size_t t_heap_used(void);
/* Re-execute this program once with glibc's tcache off (not under a
 * sanitizer, whose allocator is not glibc's); returns in the re-executed one. */
void t_exec_without_tcache(char **argv);

/* ---- memory regions (t-mem.c) ----------------------------------------------------- */

enum t_mem_kind {
	T_MEM_MEMFD,        /* memfd_create + ftruncate + mmap MAP_SHARED */
	T_MEM_DEVSHM,       /* a file on /dev/shm */
	T_MEM_TMPFS,        /* a file on a freshly mounted tmpfs (root) */
	T_MEM_ANON_SHARED,  /* MAP_SHARED | MAP_ANONYMOUS */
	T_MEM_DISKFILE,     /* a regular file on /var/tmp (must be refused) */
	T_MEM_ANON_PRIVATE, /* MAP_PRIVATE | MAP_ANONYMOUS (must be refused) */
};

struct t_mem {
	enum t_mem_kind kind;
	uint8_t *addr;
	size_t len;
	int fd;                 /* backing file, -1 for anonymous */
	char path[PATH_MAX];    /* file path for DEVSHM/TMPFS/DISKFILE ("" once unlinked) */
	char mnt[PATH_MAX];     /* tmpfs mount point for TMPFS */
};

/* Map a region of `len` bytes of the given kind (contents: holes). */
void t_mem_new(struct t_mem *m, enum t_mem_kind kind, size_t len);
/* memfd shorthand; returns the address. */
uint8_t *t_memfd(struct t_mem *m, size_t len);
void t_mem_free(struct t_mem *m);
const char *t_mem_kind_name(enum t_mem_kind kind);

/* ---- patterns (t-mem.c) ----------------------------------------------------------- */

uint64_t t_splitmix64(uint64_t *state);
/* Deterministic pseudo-random contents of page `pageno` for `seed`. */
void t_fill_page(void *page, uint64_t seed, uint64_t pageno);
/* Fill [addr, addr+len) page by page with t_fill_page(seed, i). */
void t_fill_random(void *addr, size_t len, uint64_t seed);
/* Mixed contents: for page i, i % hole_every == 1 is left untouched (a hole
 * if the region is fresh), i % zero_every == 2 is written with zeros, the rest
 * random. 0 disables a kind. Returns the number of pages left as holes. */
size_t t_fill_mixed(void *addr, size_t len, uint64_t seed, unsigned hole_every, unsigned zero_every);
/* A private anonymous copy of [addr, addr+len) (free with t_buf_free). */
uint8_t *t_copy(const void *addr, size_t len);
/* The same for a region, read with pread(2) from its file when it has one:
 * reading holes through a shmem mapping would populate them. */
uint8_t *t_mem_copy(const struct t_mem *m);
/* Number of pages of the file that are holes (SEEK_DATA/SEEK_HOLE); -1 if no fd. */
long t_mem_holes(const struct t_mem *m);
uint8_t *t_buf_alloc(size_t len);
void t_buf_free(void *buf, size_t len);

/* ---- pagemap (t-mem.c) ------------------------------------------------------------ */

/* Number of pages in [addr, addr+len) whose pagemap entry has bit 57
 * (uffd-wp protected) set; -1 on error (fails the test). */
long t_pagemap_protected(const void *addr, size_t len);
/* Number of pages present in RAM (bit 63). */
long t_pagemap_present(const void *addr, size_t len);
/* Raw pagemap entry of one page. */
uint64_t t_pagemap_entry(const void *addr);
#define T_PM_WP (1ull << 57)
#define T_PM_PRESENT (1ull << 63)

/* ---- snapshots (t-snap.c) --------------------------------------------------------- */

/* uffdsnap_reader_open, failing the test with the detail on error. */
uffdsnap_reader_t *t_reader(const char *path);
/* uffdsnap_new with a context, failing the test with the detail on error. */
uffdsnap_t *t_ctx_new(const uffdsnap_opts_t *opts);
/* The default options with these bounds (0 keeps the default). */
uffdsnap_opts_t t_opts(size_t buffer_bytes, size_t chunk_bytes);
/* Snapshot ctx into the file path and wait, failing the test unless both
 * succeed; the snapshot's stats into *st unless st is NULL. */
void t_snap_file(uffdsnap_t *ctx, const char *path, uffdsnap_stats_t *st);
/* add_region, asserting success; returns the id. */
int t_add(uffdsnap_t *ctx, const char *name, void *addr, size_t len);
/* Fetch and print stats ("label: faults=.. fault=.. sweep=.. hole=.."). */
void t_stats(uffdsnap_snap_t *s, uffdsnap_stats_t *st);
void t_stats_print(const char *label, const uffdsnap_stats_t *st);
/* Assert pages_fault + pages_sweep + pages_hole == pages_total. */
void t_assert_exactly_once(const uffdsnap_stats_t *st);

struct t_expect {
	const char *name;      /* region name in the snapshot */
	const void *data;      /* expected bytes (NULL: expect all zero) */
	size_t len;
};
/* Open `path` with the public reader, require verify() == 0, complete == 1,
 * nregions == n, and every region's bytes equal to expect[i]. Prints a line. */
void t_check_file(const char *path, const struct t_expect *expect, unsigned n);
/* Same for a snapshot stream held in memory (written to a temp file first). */
void t_check_buffer(const void *buf, size_t len, const struct t_expect *expect, unsigned n);
/* Read a whole region of a verified snapshot file into a new buffer
 * (t_buf_free(buf, *len)). */
uint8_t *t_read_region(const char *path, const char *name, size_t *len);
/* Bytes [off, off + len) of the region (len SIZE_MAX: to its end); *region_len: its length. */
uint8_t *t_read_region_range(const char *path, const char *name, size_t off, size_t len, size_t *region_len);
/* 1 if `path` exists and passes uffdsnap_reader_verify(), else 0. */
int t_file_verifies(const char *path);

/* ---- files and directories (t-env.c) ---------------------------------------------- */

/* mkdtemp under /var/tmp into buf (PATH_MAX); fails the test on error. */
void t_tmpdir(char *buf);
/* Remove a directory and the files in it (one level). */
void t_rmdir(const char *dir);
/* Number of entries (not . and ..) in dir. Prints them if `print`. */
int t_dir_entries(const char *dir, bool print);
/* Mount a tmpfs of `size` bytes on a new mkdtemp dir (root; fails test). */
void t_tmpfs_mount(char *dir, size_t size);
void t_tmpfs_umount(const char *dir);
/* Read a whole file into memory (malloc); *len gets its size. */
uint8_t *t_slurp(const char *path, size_t *len);
/* Write len bytes as the whole of the file path (created 0600, or truncated). */
void t_write_file(const char *path, const void *data, size_t len);

/* ---- sinks (t-snap.c) ------------------------------------------------------------- */

/*
 * A callback sink for tests: stores the stream to `fd` (if >= 0) and/or in
 * memory; can sleep per call, fail at call N, or block on a gate until opened.
 */
struct t_cb {
	int fd;                      /* write the stream here (-1: don't) */
	bool keep;                   /* also keep the stream in memory */
	uint8_t *mem;
	size_t mem_len, mem_cap;
	_Atomic unsigned sleep_us;   /* per call; may be changed while the snapshot runs */
	unsigned fail_at;            /* 1-based call number that returns fail_err (0: never) */
	int fail_err;
	_Atomic unsigned long calls;
	_Atomic unsigned long long bytes;
	_Atomic bool blocked;        /* a call is waiting at the gate */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool gate_closed;            /* calls wait while closed */
	unsigned gate_after;         /* the gate applies from this call number on (1-based; 0 = 1) */
};

void t_cb_init(struct t_cb *cb, int fd);
void t_cb_destroy(struct t_cb *cb);
/* The uffdsnap_write_fn to pass with &cb. */
int t_cb_write(void *user, const void *buf, size_t len);
/* A sink for cb (asserting success). */
uffdsnap_sink_t *t_cb_sink(struct t_cb *cb);
void t_cb_gate(struct t_cb *cb, bool closed);
/* Wait (up to `seconds`) until a call is blocked at the gate; returns true if so. */
bool t_cb_wait_blocked(struct t_cb *cb, unsigned seconds);
/* Begin on ctx into cb (kept in memory) with the sink held shut until the
 * sweep has stalled on the buffer bound, then slowed to one call per
 * `sleep_us`: most pages stay protected and not copied while the test acts.
 * A sink held shut for good would block every write (backpressure). */
uffdsnap_snap_t *t_begin_stalled(uffdsnap_t *ctx, struct t_cb *cb, unsigned sleep_us);
/* Wait (up to `seconds`) until the sweep of s has stopped: no page recorded
 * for 100 ms, the buffers all taken while the sink is held shut. True if so. */
bool t_wait_sweep_stalled(uffdsnap_snap_t *s, unsigned seconds);
/* Its end: the sink at full speed again, wait, the stats into *st (printed
 * under label); returns wait()'s result. */
int t_finish_stalled(uffdsnap_snap_t *s, struct t_cb *cb, uffdsnap_stats_t *st, const char *label);
/* The three ways a program ends a snapshot that is running. */
enum t_end { T_END_CANCEL, T_END_SNAP_FREE, T_END_CTX_FREE };
/* End snapshot s of ctx that way (from any thread). */
void t_end_snapshot(enum t_end how, uffdsnap_t *ctx, uffdsnap_snap_t *s);

/* ---- what a test changes in the system (t-swap.c) --------------------------------- */

/* The process's zram swap device: at most one. */
struct t_swap {
	int id;                 /* -1: none */
	pid_t owner;            /* the process that made it, the only one that removes it */
	bool on;                /* swapon done */
	char dev[64];
	char why[256];          /* why there is none */
};
extern struct t_swap t_swap;
/* Make a zram device of `mib` MiB and swap on it (root only): true if
 * t_swap.on, else t_swap.why says why not. Removed by t_swap_down(), at exit,
 * or on SIGTERM/SIGINT/SIGHUP. */
bool t_swap_up(unsigned mib);
/* Remove it (async-signal-safe; nothing in a process that did not make it). */
void t_swap_down(void);
/* Write s to a /proc or /sys file: 0 or -errno. */
int t_write_str(const char *path, const char *s);
/* Set a /proc or /sys knob (at most one a process; of a multiple-choice
 * knob, "always [never]", the word in brackets is kept), its old value put back
 * by t_knob_restore(), at exit, on SIGTERM/SIGINT/SIGHUP, or after a
 * SIGKILL by the next test that sets one: 0 or -errno. */
int t_knob_set(const char *path, const char *value);
/* Put it back (async-signal-safe; nothing in a process that did not set it). */
void t_knob_restore(void);
/* Put back the knobs of test processes that died without (t_test_init). */
void t_knob_reap(void);

/* ---- writer threads (t-writers.c) ------------------------------------------------- */

struct t_writers;
typedef void (*t_writer_fn)(struct t_writers *w, unsigned idx);
struct t_writer_slot {
	struct t_writers *w;
	unsigned i;
};

struct t_writers {
	unsigned n;
	pthread_t tid[64];
	t_writer_fn fn;
	void *arg;                   /* shared test state */
	_Atomic bool stop;
	_Atomic unsigned long long progress[64]; /* per-writer counters the fn maintains */
	_Atomic unsigned finished;
	struct t_writer_slot slot[64];
};

/* Start n writers running fn(w, i). */
void t_writers_start(struct t_writers *w, unsigned n, t_writer_fn fn, void *arg);
/* Wait until every writer's progress[] reached at least `min` (up to `seconds`). */
bool t_writers_wait_progress(struct t_writers *w, unsigned long long min, unsigned seconds);
/* Set stop and join each writer with a timeout; fails the test if one hangs. */
void t_writers_stop(struct t_writers *w, unsigned seconds);
/* Join (without setting stop) each writer with a timeout; fails on hang. */
void t_writers_join(struct t_writers *w, unsigned seconds);

/* A writer fn (arg: a struct t_span) storing one byte at a time to random
 * pages of the span until stopped. */
struct t_span {
	uint8_t *addr;
	size_t npages;
};
void t_span_writer(struct t_writers *w, unsigned idx);
/* After a snapshot ended (`what` names the run): nothing of m protected, and
 * every writer stores again within 5 s (none blocked on a fault); then stop
 * the writers. */
void t_assert_released(struct t_mem *m, struct t_writers *w, const char *what);

/* ---- fixtures (t-snap.c) ---------------------------------------------------------- */

/*
 * The setup and teardown most snapshot tests share: a memfd region that a
 * context holds alone, the region's contents at the instant, and a callback
 * sink that writes the stream to a file in a fresh directory or keeps it in
 * memory. In a test's order:
 *   t_fix_mem(&f, len)          the memfd (holes); the test fills it and sets f.ref
 *   t_fix_ctx(&f, name, opts)   the context (opts NULL: defaults) with the region
 *   t_fix_cb(&f, file)          f.cb writes to f.path = f.dir/file, or keeps the
 *                                   stream in memory if file is NULL
 *   ... begin with t_cb_sink(&f.cb) into f.s ...
 *   t_fix_check(&f)             the stream holds the one region, byte-exact with f.ref
 *   t_fix_free(&f)              frees what is set: f.s, f.ctx, the sink, the
 *                                   directory, f.ref, the memory
 * A test that frees the snapshot or the context itself sets the pointer to NULL.
 */
struct t_fix {
	struct t_mem m;
	const char *name;
	uint8_t *ref;                /* the region at the instant (len bytes) */
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	struct t_cb cb;          /* cb.fd: the stream's file, -1 when kept in memory */
	bool have_cb;
	char dir[PATH_MAX];          /* "" when the stream is kept in memory */
	char path[PATH_MAX + 16];
};

uint8_t *t_fix_mem(struct t_fix *f, size_t len);
void t_fix_ctx(struct t_fix *f, const char *name, const uffdsnap_opts_t *opts);
void t_fix_cb(struct t_fix *f, const char *file);
void t_fix_check(struct t_fix *f);
void t_fix_free(struct t_fix *f);

/*
 * A finished snapshot file for the restore tests: one memfd region `name` of
 * `len` bytes filled by t_fill_mixed(seed, hole_every, zero_every),
 * snapshotted to path = dir/snap in a fresh directory; the memory is gone,
 * want holds what the snapshot must give back.
 */
struct t_snapfile {
	char dir[PATH_MAX];
	char path[PATH_MAX + 16];
	uint8_t *want;
	size_t len;
};

void t_snapfile_new(struct t_snapfile *f, const char *name, size_t len, uint64_t seed, unsigned hole_every,
			unsigned zero_every);
void t_snapfile_free(struct t_snapfile *f);
/* A copy of f's snapshot in f->dir/name with the byte in its middle flipped
 * (in a chunk's data); returns the first page of the region that no longer
 * reads back, failing the test if there is none. */
size_t t_snapfile_flipped(const struct t_snapfile *f, const char *name, char *path);

/* ---- the prefix rule (t-oracle.c) ---------------------------------------------------
 *
 * Sequence writers: writer w does writes i = 1, 2, 3, ... in program order;
 * write i stores the value i into slot S(i) of region (i-1)&1 (alternating
 * between the two regions), slots being 8-byte words inside the writer's own
 * `pages` pages of each region, spread so that consecutive writes to one
 * region land on different pages. A snapshot that is one instant shows, for
 * each writer, exactly the writes 1..k for one k: every slot holds the last
 * write to it with seq <= k (or 0).
 */
struct t_seq {
	uint8_t *base[2];          /* the two regions */
	size_t pages;              /* pages per writer per region */
	unsigned slots_per_page;   /* words used per page (<= page/8) */
	unsigned nwriters;
};
/* Bytes each region needs. */
size_t t_seq_region_bytes(const struct t_seq *q);
/* t_writer_fn: w->arg is a struct t_seq *; progress[idx] = last seq written. */
void t_seq_writer(struct t_writers *w, unsigned idx);
/* Check writer `wr` in the image of the two regions (snap[0], snap[1]); the
 * writer's last write was `last`. Returns k (writes visible) and fails the test
 * (with the first violation) unless the visible writes are a prefix. */
uint64_t t_seq_check(const struct t_seq *q, uint8_t *const snap[2], unsigned wr, uint64_t last);

#endif
