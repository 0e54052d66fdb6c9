/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the migration's files share (docs/migration.md):
 *   migrate.c           the API's options, the frame codec (a pure parser
 *                       over buffers) and the transport both sides use: a
 *                       libuv loop and stream on the caller's socket (struct
 *                       usnap_mig_link)
 *   migrate-send.c      the sender: tracking, rounds, pre-copy, the API
 *   migrate-recv.c      the receiver: the region table, frames, the API
 *   migrate-postcopy.c  post-copy on both sides: drops, the push and requests
 *                       (sender); placement, faults, poison (receiver)
 * The wire protocol is migrate.h.
 */
#ifndef UFFDSNAP_MIGRATE_PRIVATE_H
#define UFFDSNAP_MIGRATE_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <zstd.h>

#include "latch.h"
#include "migrate.h"
#include "uffdsnap-private.h"

/* The peer's silence after which a side gives up (-ETIMEDOUT). */
#define USNAP_MIG_IDLE_MS 30000

/* ---- the transport (migrate.c) -------------------------------------------------------- */

/*
 * One side's end of the connection: a libuv loop run by that side's thread
 * only, the caller's socket as a uv stream on it, a timer for the peer's
 * silence, a timer for the owner's own waits (pacing, the push's window), an
 * async handle through which another thread cancels, and on a post-copy
 * receiver a poll handle on the userfaultfd. Every failure goes to the
 * owner's latch, the first one wins; the owner's thread drives the loop
 * (usnap_mig_turn) until what it waits for has happened or the latch holds
 * an error. Callbacks never run the loop themselves: they parse and record.
 * libuv stays inside migrate.c (its <uv.h> brings <netinet/tcp.h>, which
 * cannot live beside the <linux/tcp.h> post-copy needs).
 */
struct usnap_mig_link;

/* A link on a duplicate of sock (uv_close closes that one; the caller's
 * descriptor stays the caller's, its file flags are put back at the close),
 * for frames of at most frame_cap payload bytes, each handed to on_frame
 * (which must not run the loop); reading starts at once. -errno with the
 * reason as the thread's error. */
int usnap_mig_link_open(struct usnap_mig_link **lp, int sock, size_t frame_cap, struct usnap_latch *latch,
			const char *peer, int (*on_frame)(void *, const struct usnap_mig_hdr *, const uint8_t *),
			void *owner, _Atomic uint64_t *wire);
/* Close every handle and the loop (from the loop's thread). Writes still
 * queued are dropped: usnap_mig_flush first to have them sent. The link
 * stays allocated, so that a late cancel finds it closed. */
void usnap_mig_link_close(struct usnap_mig_link *l);
void usnap_mig_link_free(struct usnap_mig_link *l);
/* From any thread: latch -ECANCELED and wake the loop (no-op once closed). */
void usnap_mig_link_cancel(struct usnap_mig_link *l);
/* Run the loop once, waiting for an event or not: the latched error, else 0. */
int usnap_mig_turn(struct usnap_mig_link *l, bool wait);
/* Queue a frame: header and head are copied; data (may be NULL) must stay
 * unchanged until the write queue is empty (usnap_mig_flush). */
int usnap_mig_write(struct usnap_mig_link *l, uint16_t type, const void *head, uint32_t head_len, const void *data,
		    uint32_t data_len);
/* Run the loop until every queued byte is in the kernel's socket buffer. */
int usnap_mig_flush(struct usnap_mig_link *l);
/* Run the loop until ms have passed or an error is latched (not silence). */
int usnap_mig_sleep(struct usnap_mig_link *l, uint64_t ms);
/* Have the loop wake up every ms (if not armed already) until
 * usnap_mig_wake_stop: for a condition no event announces (the peer's TCP
 * ACKs). */
void usnap_mig_wake_in(struct usnap_mig_link *l, uint64_t ms);
void usnap_mig_wake_stop(struct usnap_mig_link *l);
/* No more frames are wanted (the last one came): the peer may hang up. */
void usnap_mig_stop_reading(struct usnap_mig_link *l);
/* Call cb(arg) on the loop's thread whenever fd is readable, until the
 * link closes or usnap_mig_unwatch. */
int usnap_mig_watch(struct usnap_mig_link *l, int fd, void (*cb)(void *), void *arg);
void usnap_mig_unwatch(struct usnap_mig_link *l);

/*
 * Delimit one frame at the start of p[0..n): 0 if more bytes are needed, the
 * frame's size once it is whole and checked (magic, flags, length against
 * cap before the payload is waited for, then the CRC), or -EBADMSG with the
 * reason in why. Pure: no I/O, no state (the fuzz target reaches it through
 * the receiver).
 */
ssize_t usnap_mig_parse(const uint8_t *p, size_t n, size_t cap, struct usnap_mig_hdr *h, char *why, size_t why_len);

/*
 * max_bandwidth as a token bucket: credit grows at the bandwidth and is
 * capped at USNAP_MIG_PACE_CAP_MS of it, so an idle period (a wait for an
 * ACK, the switchover callback) cannot bank a burst. A frame goes when the
 * credit is not negative and takes its size from it: in any interval of T
 * seconds at most bw * T + cap + one frame is written.
 */
#define USNAP_MIG_PACE_CAP_MS 10
struct usnap_mig_pacer {
	double rate;                  /* bytes per ns; 0: unlimited */
	double credit, cap;           /* bytes */
	uint64_t last_ns;
};
void usnap_mig_pacer_init(struct usnap_mig_pacer *p, uint64_t bytes_per_s, uint64_t now_ns);
/* 0 if `bytes` may go at now_ns (and are taken), else the ns to wait first. */
uint64_t usnap_mig_pacer_take(struct usnap_mig_pacer *p, uint64_t now_ns, uint64_t bytes);

/* Options over the defaults (migrate.c). */
int usnap_mig_opts_take(uffdsnap_migrate_opts_t *o, const uffdsnap_migrate_opts_t *in);
/* Latch err and its message (the first failure wins); returns err, so that
 * a step fails with its own error whatever came first. */
int usnap_mig_latch(struct usnap_latch *l, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A side's outcome from its thread's r: 0 (the latch closed: a failure
 * heard after the end, the peer hanging up, is not one), or the first error
 * latched. */
int usnap_mig_result(struct usnap_latch *l, int r);
/* Join a side's thread once, whoever asks first. */
void usnap_mig_join_once(pthread_mutex_t *lock, bool *joined, pthread_t t);

/* ---- the sender (migrate-send.c, migrate-postcopy.c) ------------------------------------ */

struct mig_reg {
	char *name;
	enum usnap_kind kind;
	uintptr_t addr;
	size_t len;
	uint64_t npages;
	int fd;            /* SHMEM: a dup of the region's file; PRIVATE: -1 */
	off_t file_off;
	bool registered;
	uint64_t *sent;    /* SHMEM: pages the receiver holds as data (sent, not since sent as zero) */
	unsigned char *incore; /* SHMEM: mincore(2) vector, one byte a page */
	uint64_t *pending; /* post-copy: pages the receiver dropped and has not been sent since */
	uint64_t *fresh;   /* post-copy: pages pending, not yet announced as dropped */
};

/* Pages [first, first + n) of region `reg`, written since the previous scan. */
struct mig_run {
	unsigned reg;
	uint64_t first, n;
};

struct uffdsnap_migrate {
	uffdsnap_t *ctx;
	int sock;
	uffdsnap_migrate_opts_t opts;
	struct mig_reg *regs;
	unsigned nregs;
	size_t ps;
	int uffd, pagemap;
	uint8_t *buf;                  /* USNAP_MIG_BATCH pages */
	ZSTD_CCtx *zc;                 /* UFFDSNAP_MIGRATE_COMPRESS */
	uint8_t *zbuf;
	size_t zcap;
	struct page_region *vec;
	struct mig_run *runs;
	size_t nruns, runs_cap;
	struct usnap_mig_pacer pacer;
	struct usnap_mig_link *link;

	/* a frame from the receiver, outside post-copy's push: one at a time
	 * (HELLO_OK, ACK), taken by expect_frame */
	bool have_frame;
	struct usnap_mig_hdr got_hdr;
	uint8_t got[sizeof(struct usnap_mig_pages)];
	/* post-copy, after the switchover: the receiver's frames are taken as
	 * they come (postcopy_frame); requests wait in `asks` for the sender's
	 * thread, which answers them before its next pushed frame */
	bool pc_live, pc_running, pc_ended, pc_done;
	uint64_t pc_t_sw, pc_left;      /* the switchover's time; pages pending */
	struct mig_run *asks;
	size_t nasks, asks_cap, ask_next;

	/* the event thread (events_main): removals heard, to send again */
	pthread_t ev_thread;
	bool ev_started;
	int ev_stop;                   /* eventfd: the event thread ends */
	pthread_mutex_t ev_lock;
	struct mig_run *removed;       /* since the last round began */
	size_t nremoved, removed_cap;
	struct mig_run *removed_all;   /* since round 1: the final round sends them all again */
	size_t nremoved_all, removed_all_cap;
	int ev_err;                    /* a region was unmapped or moved */
	char ev_msg[256];

	pthread_t thread;
	bool started, joined;
	pthread_mutex_t join_lock;
	int result;                    /* the thread's: 0 or the latched error */
	struct usnap_latch latch;      /* the migration's first error */

	_Atomic int state, error;
	_Atomic unsigned rounds;
	_Atomic uint64_t round_bytes[UFFDSNAP_MIGRATE_MAX_ROUNDS];
	_Atomic uint64_t bytes_wire, pages_sent, pages_zero, downtime_ns, t0_ns, end_ns;
	_Atomic uint64_t pages_requested; /* post-copy: sent because the receiver faulted on them */
	unsigned pc_round;             /* post-copy: the round of the switchover and the push */
};

#define usnap_mig_fail(m, err, ...) usnap_mig_latch(&(m)->latch, (err), __VA_ARGS__)
int usnap_mig_push_run(struct mig_run **v, size_t *n, size_t *cap, struct mig_run run);
int usnap_mig_send_frame(struct uffdsnap_migrate *m, uint16_t type, const void *head, uint32_t hl, const void *data,
			 uint32_t dl);
int usnap_mig_send_range(struct uffdsnap_migrate *m, unsigned ri, uint64_t first, uint64_t n, unsigned round,
			 uint64_t *count);
/* The pages written since the last look: scan, removals, punched pages. */
int usnap_mig_find_dirty(struct uffdsnap_migrate *m, bool last, uint64_t *bytes);
int usnap_mig_end_round(struct uffdsnap_migrate *m, unsigned round, bool final, uint64_t count);
int usnap_mig_switchover(struct uffdsnap_migrate *m, uint64_t *t_sw);
/* migrate-postcopy.c: everything after round 1 of a post-copy migration. */
int usnap_mig_postcopy(struct uffdsnap_migrate *m);
/* migrate-postcopy.c: a receiver's frame during the push (the link's
 * on_frame once pc_live is set). */
int usnap_mig_postcopy_frame(struct uffdsnap_migrate *m, const struct usnap_mig_hdr *h, const uint8_t *p);

/* ---- the receiver (migrate-recv.c, migrate-postcopy.c) ------------------------------------ */

struct in_reg {
	char *name;
	size_t len;
	uint64_t npages;
	int fd;
	void *addr;
	_Atomic uint64_t *dropped;     /* post-copy: pages dropped and not arrived since: the others'
					* contents are final here. Zero to start with, and mapped
					* (usnap_bits_map), so that a region table's claim costs no
					* work before pages come (a hostile 28 TiB claim kept a
					* fill of ones busy for minutes: found by fuzz-migrate) */
	uint64_t *asked;               /* post-copy: pages requested */
	bool registered;               /* post-copy: with in->uffd, for missing pages */
};

struct uffdsnap_incoming {
	bool postcopy;                 /* the sender's HELLO asked for it */
	bool running;                  /* post-copy: switched over */
	bool hello_seen, final_seen;   /* the loop thread's progress */
	int uffd;                      /* post-copy: missing-page faults, watched by the loop */
	struct usnap_mig_link *link;
	_Atomic uint64_t wire;         /* bytes sent back (not reported) */
	pthread_mutex_t state_lock;
	pthread_cond_t state_cond;
	bool hello_done, ready, finished; /* under state_lock: recv may return; the memory may be
					   * used; the thread ended */
	bool dead;                     /* post-copy failed: faults on pages not arrived are poisoned */
	uint64_t missing;              /* post-copy: pages dropped and not arrived yet */
	uint64_t count;                /* pages announced in the current round */
	unsigned expect;               /* the round being received */
	size_t ps;
	struct in_reg *regs;
	unsigned nregs;
	size_t cap;                    /* largest frame payload accepted */
	ZSTD_DCtx *zd;                 /* created at the first compressed frame */
	uint8_t *zout;                 /* USNAP_MIG_BATCH pages */
	pthread_t thread;
	bool started, joined;
	pthread_mutex_t join_lock;
	int result;                    /* the thread's: 0 or the latched error */
	struct usnap_latch latch;      /* the receiver's first error */
};

#define usnap_in_fail(in, err, ...) usnap_mig_latch(&(in)->latch, (err), __VA_ARGS__)
/* An answer to the sender, queued (best effort after a failure). */
int usnap_in_send_status(struct uffdsnap_incoming *in, uint16_t type, uint32_t value, int status);
/* Set a state flag (hello_done, ready, finished) and wake the API's waits. */
void usnap_in_mark(struct uffdsnap_incoming *in, bool *flag);
/* migrate-postcopy.c, the receiver's side */
int usnap_in_place(struct uffdsnap_incoming *in, unsigned ri, uint64_t first, uint32_t n, const uint8_t *data);
int usnap_in_take_discard(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p);
int usnap_in_start_postcopy(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p);
/* Read and serve the faults the userfaultfd holds now, without waiting. */
void usnap_in_faults(struct uffdsnap_incoming *in);
void usnap_in_postcopy_end(struct uffdsnap_incoming *in, bool failed);

#endif
