/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The compression stage (compress.c): copied chunks in, records out to the I/O stage. */
#ifndef UFFDSNAP_COMPRESS_H
#define UFFDSNAP_COMPRESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "uffdsnap.h"

struct usnap_job;

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
	/* UFFDSNAP_OPT_ADAPT: a fault waited for a buffer lately (the fault
	 * handler, usnap_compress_starved), and no chunk was stored raw since */
	_Atomic uint64_t starved_until_ns;
	_Atomic bool starved_owed;
};

void usnap_compress_init(struct usnap_compress *cq, int zstd_level);
void usnap_compress_destroy(struct usnap_compress *cq);
void usnap_compress_wake(uffdsnap_snap_t *s);
int usnap_workers_start(uffdsnap_snap_t *s, unsigned n);
void usnap_compress_submit(uffdsnap_snap_t *s, struct usnap_job *job);
/* A fault waits for a buffer (the fault handler, each turn of its wait):
 * with UFFDSNAP_OPT_ADAPT the chunks compressed meanwhile and shortly after
 * are stored raw. */
void usnap_compress_starved(uffdsnap_snap_t *s);
void usnap_compress_close(uffdsnap_snap_t *s);
void usnap_workers_join(uffdsnap_snap_t *s);

#endif
