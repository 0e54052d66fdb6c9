/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One snapshot (snapshot.c: its lifecycle): the regions' per-snapshot state,
 * the failure every stage reports to, the counters every stage adds to, and
 * each stage's own state (its header says whose).
 */
#ifndef UFFDSNAP_SNAPSHOT_H
#define UFFDSNAP_SNAPSHOT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "arm.h"
#include "compress.h"
#include "fault.h"
#include "latch.h"
#include "pool.h"
#include "sink.h"
#include "space.h"
#include "uffdsnap-private.h"

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
	uint64_t buffer_bound;
};

struct uffdsnap_snap {
	uffdsnap_t *ctx;            /* NULL once detached (threads joined) */
	size_t page_size;
	uint32_t flags;             /* opts.flags */
	struct uffdsnap_sink *sink;
	struct usnap_sreg *sregs;   /* in region id order */
	struct usnap_sreg **by_addr;/* sorted by address at begin: the sweep's order */
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

	/* lifecycle */
	_Atomic bool go;            /* every region armed: faults may be resolved */
	_Atomic int state;          /* UFFDSNAP_STATE_* */
	bool joined;
	pthread_mutex_t join_lock;

	/* each stage's own state: its file initialises and frees it (see its header) */
	struct usnap_spaces spaces;  /* space.c */
	struct usnap_arm arm;        /* arm.c */
	struct usnap_handler handler; /* fault.c */
	struct usnap_jobs jobs;      /* pool.c */
	struct usnap_compress cq;    /* compress.c */
	struct usnap_io io;          /* sink.c */

	struct usnap_counters stats;
};

/* The snapshot fails with err (the first failure wins): every stage is woken
 * and the handler's exit path ends the protection. */
void usnap_fail(uffdsnap_snap_t *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
