/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The chunk buffers (pool.c): the context's pool, whose size is the memory
 * bound, and a snapshot's free list of it. A job is one buffer on its way
 * through the stages: filled by the handler (fault.c), turned into a record
 * by a worker (compress.c), written by the I/O thread (sink.c), put back.
 */
#ifndef UFFDSNAP_POOL_H
#define UFFDSNAP_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uffdsnap.h"

struct usnap_extent;

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
	struct usnap_extent *ext;  /* capacity: pool->ext_cap */
	uint8_t *raw;              /* capacity: chunk_bytes */
	uint8_t *out;              /* the record, or its head; capacity: pool->out_cap */
	size_t out_len;            /* the whole record's length */
	struct usnap_part part[USNAP_JOB_PARTS]; /* what to write: out, or out's head + runs of raw */
	unsigned nparts;
	uint64_t zero_pages;       /* set by the worker: pages recorded as zero */
	uint64_t first_page, end_page;  /* set by the worker, for the index */
	uint64_t file_offset;      /* set by the I/O stage when batched */
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

/* A snapshot's share of the context's chunk buffers (pool.c, which alone
 * changes these; the stages read the pool's sizes): a free list. */
struct usnap_jobs {
	struct usnap_pool *pool;    /* the context's; not used once detached */
	size_t footprint;           /* copied: stats outlive the context */
	pthread_mutex_t lock;
	pthread_cond_t freed;       /* a buffer was put back (the sweep thread waits for one) */
	struct usnap_job *free;
	unsigned in_use, peak;      /* under lock */
	bool fault_waits;           /* under lock: the fault path waits for a buffer, the sweep leaves it the next */
};

int usnap_pool_init(uffdsnap_t *ctx);
void usnap_pool_free(struct usnap_pool *pool);
/* Compression workers a snapshot of ctx starts (compress_threads, or the CPUs). */
unsigned usnap_worker_count(const uffdsnap_t *ctx);
void usnap_jobs_init(struct usnap_jobs *js, struct usnap_pool *pool);
void usnap_jobs_destroy(struct usnap_jobs *js);
/* A page of ours that no userfaultfd ever registers: the buffers' first. */
static inline void *usnap_jobs_probe_page(const struct usnap_jobs *js)
{
	return js->pool->mem;
}
/* The most buffer bytes in use at once so far. */
uint64_t usnap_jobs_peak_bytes(struct usnap_jobs *js);
/* A free job (NULL if none, or the snapshot is failing), and back. */
struct usnap_job *usnap_job_get(uffdsnap_snap_t *s);
void usnap_job_put(uffdsnap_snap_t *s, struct usnap_job *job);
/* A free job, waiting for one unless stop is NULL; NULL once the snapshot
 * failed or *stop (whoever sets it calls usnap_jobs_wake). */
struct usnap_job *usnap_job_wait(uffdsnap_snap_t *s, _Atomic bool *stop);
void usnap_jobs_wake(struct usnap_jobs *js);
/* The fault path waits for a buffer (true) or no longer does (false). */
void usnap_jobs_fault_waits(struct usnap_jobs *js, bool waits);

#endif
