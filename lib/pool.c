/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The chunk buffers: the context's pool, sized once from buffer_bytes (the
 * memory bound) and pre-faulted in uffdsnap_new, and a snapshot's share of it
 * (struct usnap_jobs): the free list the handler takes a job from for each
 * chunk it copies and every stage gives it back to, and the peak in use.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zstd.h>

#include "fault.h"
#include "pool.h"
#include "snapshot.h"
#include "uffdsnap-private.h"

/* ---- the context's buffers ------------------------------------------------- */

/*
 * Memory a compression worker's zstd context takes once it has compressed a
 * full chunk at the context's level: measured on a throwaway context, since
 * zstd's own estimates are outside its stable API.
 */
static int cctx_bytes(const uffdsnap_t *ctx, size_t *n)
{
	size_t chunk = ctx->opts.chunk_bytes;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	void *src = calloc(1, chunk), *dst = malloc(ZSTD_compressBound(chunk));
	int r = -ENOMEM;

	if (cc && src && dst) {
		r = -EINVAL;
		if (!ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, ctx->opts.zstd_level)) &&
		    !ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cc, chunk)) &&
		    !ZSTD_isError(ZSTD_compress2(cc, dst, ZSTD_compressBound(chunk), src, chunk)))
			*n = ZSTD_sizeof_CCtx(cc), r = 0;
	}
	ZSTD_freeCCtx(cc);
	free(src);
	free(dst);
	if (r)
		usnap_err(r, "zstd level %d: %s", ctx->opts.zstd_level,
			  r == -ENOMEM ? "out of memory for a trial compression" : "rejected");
	return r;
}

#define POOL_OTHER_BYTES (1u << 20)

unsigned usnap_worker_count(const uffdsnap_t *ctx)
{
	long n = ctx->opts.compress_threads ? ctx->opts.compress_threads : sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : (unsigned)n;
}

int usnap_pool_init(uffdsnap_t *ctx)
{
	struct usnap_pool *p = &ctx->pool;
	size_t chunk = ctx->opts.chunk_bytes, pages = chunk / ctx->page_size;
	size_t ext_cap = 2 * pages, foot, njobs, zstd;
	uint8_t *m;
	int r = cctx_bytes(ctx, &zstd);

	if (r)
		return r;
	/* and ~0.3-0.4 MiB measured beside them: thread stacks, the threads'
	 * heap arenas, the I/O loop and the snapshot's tables */
	zstd = zstd * usnap_worker_count(ctx) + POOL_OTHER_BYTES;

	/* A worker may split every DATA extent at zero pages: at most one new
	 * extent per page, so twice the pages is always enough. */
	p->out_cap = usnap_pad8(sizeof(struct usnap_rec_hdr) + sizeof(struct usnap_chunk) +
				ext_cap * sizeof(struct usnap_extent) + ZSTD_compressBound(chunk)) + 8;
	foot = chunk + p->out_cap + ext_cap * sizeof(struct usnap_extent);
	if (ctx->opts.buffer_bytes / foot < 4)
		return usnap_err(-EINVAL, "buffer_bytes %zu is too small for chunk_bytes %zu: it must hold at "
				 "least 4 chunk buffers (%zu bytes)", ctx->opts.buffer_bytes, chunk, 4 * foot);
	/* The bound covers the workers' zstd state and the rest of a snapshot's
	 * memory too: what a snapshot adds to the process is all that, not the
	 * buffers alone. Only a bound too small for both gets the 4 buffers it
	 * always got. */
	njobs = ctx->opts.buffer_bytes > zstd + 4 * foot ? (ctx->opts.buffer_bytes - zstd) / foot : 4;
	if (njobs > 65536)
		njobs = 65536;
	/* Pre-faulted once per context, in uffdsnap_new: a fresh page costs a
	 * fault (~10 us in a guest) that would otherwise land on the fault path
	 * of a writer, and populating 64 MiB takes ~150 ms that begin must not. */
	m = mmap(NULL, njobs * foot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (m == MAP_FAILED)
		return usnap_err(-ENOMEM, "mapping %zu bytes of chunk buffers", njobs * foot);
	p->jobs = calloc(njobs, sizeof(*p->jobs));
	if (!p->jobs) {
		munmap(m, njobs * foot);
		return usnap_err(-ENOMEM, "allocating job table");
	}
	p->mem = m, p->mem_len = njobs * foot, p->njobs = (unsigned)njobs;
	p->chunk_bytes = chunk, p->ext_cap = (uint32_t)ext_cap, p->footprint = foot;
	for (size_t i = 0; i < njobs; i++, m += foot) {
		p->jobs[i].raw = m;
		p->jobs[i].out = m + chunk;
		p->jobs[i].ext = (struct usnap_extent *)(m + chunk + p->out_cap);
	}
	return 0;
}

void usnap_pool_free(struct usnap_pool *p)
{
	if (p->mem)
		munmap(p->mem, p->mem_len);
	free(p->jobs);
	memset(p, 0, sizeof(*p));
}

/* ---- a snapshot's share ---------------------------------------------------- */

void usnap_jobs_init(struct usnap_jobs *js, struct usnap_pool *p)
{
	pthread_mutex_init(&js->lock, NULL);
	pthread_cond_init(&js->freed, NULL);
	js->pool = p;
	js->footprint = p->footprint;
	for (unsigned i = 0; i < p->njobs; i++) {
		p->jobs[i].next = js->free;
		js->free = &p->jobs[i];
	}
}

void usnap_jobs_destroy(struct usnap_jobs *js)
{
	pthread_mutex_destroy(&js->lock);
	pthread_cond_destroy(&js->freed);
}

uint64_t usnap_jobs_peak_bytes(struct usnap_jobs *js)
{
	uint64_t n;

	pthread_mutex_lock(&js->lock);
	n = (uint64_t)js->peak * js->footprint;
	pthread_mutex_unlock(&js->lock);
	return n;
}

struct usnap_job *usnap_job_wait(uffdsnap_snap_t *s, _Atomic bool *stop)
{
	struct usnap_job *j;

	/* The sweep (the one that waits) leaves a buffer put back to a write
	 * fault waiting for one: a writer waits on the fault path, nobody on the
	 * sweep, and woken by every put the sweep would take each first. */
	pthread_mutex_lock(&s->jobs.lock);
	while (stop && (!s->jobs.free || s->jobs.fault_waits) && !atomic_load(&s->abort) && !atomic_load(stop))
		pthread_cond_wait(&s->jobs.freed, &s->jobs.lock);
	j = stop && atomic_load(stop) ? NULL : s->jobs.free;
	if (j && !atomic_load(&s->abort)) {
		s->jobs.free = j->next;
		if (++s->jobs.in_use > s->jobs.peak)
			s->jobs.peak = s->jobs.in_use;
	} else {
		j = NULL;
	}
	pthread_mutex_unlock(&s->jobs.lock);
	if (j) {
		j->next = NULL;
		j->nextents = j->data_pages = 0;
		j->zero_pages = 0;
		j->out_len = 0;
		j->fault = false;
	}
	return j;
}

struct usnap_job *usnap_job_get(uffdsnap_snap_t *s)
{
	return usnap_job_wait(s, NULL);
}

void usnap_jobs_fault_waits(struct usnap_jobs *js, bool waits)
{
	pthread_mutex_lock(&js->lock);
	js->fault_waits = waits;
	if (!waits)
		pthread_cond_broadcast(&js->freed);
	pthread_mutex_unlock(&js->lock);
}

void usnap_jobs_wake(struct usnap_jobs *js)
{
	pthread_mutex_lock(&js->lock);
	pthread_cond_broadcast(&js->freed);
	pthread_mutex_unlock(&js->lock);
}

void usnap_job_put(uffdsnap_snap_t *s, struct usnap_job *j)
{
	pthread_mutex_lock(&s->jobs.lock);
	j->next = s->jobs.free;
	s->jobs.free = j;
	s->jobs.in_use--;
	pthread_cond_signal(&s->jobs.freed);
	pthread_mutex_unlock(&s->jobs.lock);
	/* The handler may be in poll() with work waiting for a buffer. */
	usnap_handler_wake(&s->handler);
}
