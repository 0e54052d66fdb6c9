/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The fault handler thread of a snapshot (fault.c): its lifecycle. */
#ifndef UFFDSNAP_FAULT_H
#define UFFDSNAP_FAULT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "uffdsnap.h"

/* A range the sweep copied, for the handler to un-protect. */
struct usnap_swept {
	unsigned region;
	uint64_t lo, hi;
};
#define USNAP_SWEPT_MAX 32

struct usnap_sreg;

struct usnap_handler {
	pthread_t thread, sweeper;
	bool started;               /* both threads */
	int efd;                    /* wakes it: a failure, `go`, a buffer put back, a range swept */
	/* What the two threads share, under `lock`: the regions' `copied`
	 * bitmaps (a bit is a claim: the page is being or has been recorded),
	 * the run the sweep is copying, and the ranges it copied. */
	pthread_mutex_t lock;
	pthread_cond_t cond;        /* `go`, room in swept[], stop; the sweep thread's exit */
	unsigned fly_region;        /* the sweep's run in flight: claimed, not copied yet */
	uint64_t fly_lo, fly_hi;
	struct usnap_swept swept[USNAP_SWEPT_MAX];
	unsigned nswept;
	bool sweep_over;            /* the sweep handed over its last range (or stopped) */
	bool sweep_exited;          /* the sweep thread touches nothing any more */
	_Atomic bool stop;          /* the sweep must stop: the snapshot failed */
};

/* Before anything can fail: no descriptor yet. */
void usnap_handler_init(struct usnap_handler *h);
/* Its wake-up descriptor (at begin): 0 or -errno with the detail. */
int usnap_handler_open(struct usnap_handler *h);
/* Start the threads of snapshot s (handler and sweep): 0 or -errno with the
 * detail. By begin's thread: a thread in the program's fork() holds glibc
 * locks that pthread_create and pthread_join take, while the kernel waits
 * for the handler to read its FORK event. */
int usnap_handler_start(uffdsnap_snap_t *s);
/* Wake the handler if it sleeps in poll(): it looks again at everything. */
void usnap_handler_wake(struct usnap_handler *h);
/* Every region is armed: faults may be resolved, the sweep may start. */
void usnap_handler_go(struct usnap_handler *h);
/* Join the threads: false if they never started. */
bool usnap_handler_join(struct usnap_handler *h);
void usnap_handler_destroy(struct usnap_handler *h);
/* The first page of [lo, hi) of sr that is not recorded yet (not claimed, or
 * still being copied), or hi. Any thread. */
uint64_t usnap_first_unrecorded(uffdsnap_snap_t *s, const struct usnap_sreg *sr, uint64_t lo, uint64_t hi);

#endif
