/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The snapshot lifecycle: begin (arm every region, then release the handler),
 * wait, cancel, stats, failure, free; and the pool of chunk buffers whose fixed
 * size is the memory bound (buffer_bytes).
 *
 * Threads of one snapshot: the fault handler (fault.c, which also sweeps),
 * compress_threads workers (compress.c) and the I/O thread (sink.c). Failure
 * from any of them, or cancel from the caller, goes through usnap_fail(): the
 * first error wins, everyone is woken, and the handler's exit path unregisters
 * every region, which drops all protection and wakes every blocked writer.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "uffdsnap-private.h"

/* ---- the buffer pool ------------------------------------------------------ */

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

static unsigned worker_count(const uffdsnap_t *ctx)
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
	zstd = zstd * worker_count(ctx) + POOL_OTHER_BYTES;

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

struct usnap_job *usnap_job_get(uffdsnap_snap_t *s)
{
	struct usnap_job *j;

	pthread_mutex_lock(&s->pool_lock);
	j = s->free_jobs;
	if (j && !atomic_load(&s->abort)) {
		s->free_jobs = j->next;
		if (++s->jobs_in_use > s->jobs_peak)
			s->jobs_peak = s->jobs_in_use;
	} else {
		j = NULL;
	}
	pthread_mutex_unlock(&s->pool_lock);
	if (j) {
		j->next = NULL;
		j->nextents = j->data_pages = 0;
		j->zero_pages = 0;
		j->out_len = 0;
		j->fault = false;
	}
	return j;
}

void usnap_job_put(uffdsnap_snap_t *s, struct usnap_job *j)
{
	static const uint64_t one = 1;

	pthread_mutex_lock(&s->pool_lock);
	j->next = s->free_jobs;
	s->free_jobs = j;
	s->jobs_in_use--;
	pthread_mutex_unlock(&s->pool_lock);
	/* The handler may be in poll() with work waiting for a buffer. */
	if (write(s->ctl_efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already non-zero, the handler will wake. */
	}
}

/* ---- failure -------------------------------------------------------------- */

void usnap_fail(uffdsnap_snap_t *s, int err, const char *fmt, ...)
{
	static const uint64_t one = 1;
	va_list ap;
	int had;

	va_start(ap, fmt);
	had = usnap_latch_vset(&s->fail, err, fmt, ap);
	va_end(ap);
	if (had == USNAP_LATCH_CLOSED)
		return; /* finished already: a late cancel changes nothing */
	atomic_store(&s->abort, true);
	if (write(s->ctl_efd, &one, sizeof(one)) < 0) {
		/* counter already set */
	}
	pthread_mutex_lock(&s->cq_lock);
	pthread_cond_broadcast(&s->cq_cv);
	pthread_mutex_unlock(&s->cq_lock);
	/* Not `go`: only begin gives it, once it stopped arming. A handler let
	 * go by a worker's failure would unregister while begin still arms. */
	usnap_io_kick(s);
}

/* ---- begin ------------------------------------------------------------------- */

/*
 * Start threads with every signal blocked: a signal handler of the program
 * running on the fault handler could write protected memory and wait for
 * itself. Named (top -H, perf, gdb) by their creator, not by themselves: a
 * handler that named itself late, once begin had armed the regions, could
 * meet a fork() holding the locks that naming takes under ThreadSanitizer
 * while that fork waits for the handler to read its event (test-events
 * fork_at_the_end hung in 2 of 4 TSan runs).
 */
int usnap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name)
{
	sigset_t all, old;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!r)
		pthread_setname_np(*t, name);
	return -r;
}

static int cmp_by_addr(const void *a, const void *b)
{
	const struct usnap_sreg *x = *(struct usnap_sreg *const *)a, *y = *(struct usnap_sreg *const *)b;

	return x->reg->addr < y->reg->addr ? -1 : x->reg->addr > y->reg->addr;
}

static void snap_destroy(uffdsnap_snap_t *s)
{
	for (unsigned i = 0; s->sregs && i < s->nregions; i++) {
		free(s->sregs[i].copied);
		free(s->sregs[i].data);
	}
	usnap_spaces_free(s);
	free(s->readonly);
	free(s->sregs);
	free(s->by_addr);
	free(s->by_file);
	free(s->workers);
	free(s->io.head_rec);
	free(s->io.trailer);
	free(s->io.index);
	if (s->sink)
		usnap_sink_close(s->sink);
	if (s->ctl_efd >= 0)
		close(s->ctl_efd);

	pthread_mutex_destroy(&s->join_lock);
	pthread_mutex_destroy(&s->pool_lock);
	pthread_mutex_destroy(&s->cq_lock);
	pthread_cond_destroy(&s->cq_cv);
	pthread_mutex_destroy(&s->io.lock);
	pthread_cond_destroy(&s->io.cv);
	pthread_mutex_destroy(&s->maps_lock);
	free(s);
}

static uffdsnap_snap_t *snap_alloc(uffdsnap_t *ctx, struct uffdsnap_sink *sink)
{
	uffdsnap_snap_t *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->ctx = ctx;
	s->page_size = ctx->page_size;
	s->flags = ctx->opts.flags;
	s->zstd_level = ctx->opts.zstd_level;
	s->sink = sink;
	s->ctl_efd = -1;

	pthread_mutex_init(&s->join_lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	pthread_mutex_init(&s->cq_lock, NULL);
	pthread_cond_init(&s->cq_cv, NULL);
	pthread_mutex_init(&s->io.lock, NULL);
	pthread_cond_init(&s->io.cv, NULL);
	pthread_mutex_init(&s->maps_lock, NULL);
	return s;
}

static int snap_prepare(uffdsnap_snap_t *s)
{
	uffdsnap_t *ctx = s->ctx;
	struct usnap_pool *p = &ctx->pool;
	int r;

	s->pool = p;
	s->job_footprint = p->footprint;
	s->buffer_bound = ctx->opts.buffer_bytes;
	for (unsigned i = 0; i < p->njobs; i++) {
		p->jobs[i].next = s->free_jobs;
		s->free_jobs = &p->jobs[i];
	}
	s->nregions = ctx->nregs;
	s->sregs = calloc(s->nregions, sizeof(*s->sregs));
	s->by_addr = calloc(s->nregions, sizeof(*s->by_addr));
	if (!s->sregs || !s->by_addr)
		return usnap_err(-ENOMEM, "allocating snapshot state");
	for (unsigned i = 0; i < s->nregions; i++) {
		struct usnap_sreg *sr = &s->sregs[i];
		sr->reg = &ctx->regs[i];
		sr->id = i;
		sr->copied = calloc((sr->reg->npages + 63) / 64, sizeof(uint64_t));
		if (!sr->copied)
			return usnap_err(-ENOMEM, "allocating the page bitmap of region '%s'", sr->reg->name);
		s->by_addr[i] = sr;
		s->pages_total += sr->reg->npages;
	}
	qsort(s->by_addr, s->nregions, sizeof(*s->by_addr), cmp_by_addr);
	if ((r = usnap_index_files(s)))
		return r;
	if (usnap_space_init(s))
		return -ENOMEM;
	pthread_mutex_lock(&ctx->lock);
	r = usnap_space_participants(s);
	s->nbase = s->nspaces;
	s->joins = atomic_load(&ctx->joins);
	pthread_mutex_unlock(&ctx->lock);
	if (r)
		return r;
	s->ctl_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->ctl_efd < 0)
		return usnap_err(-errno, "eventfd: %s", strerror(errno));

	if (getrandom(s->snap_id, sizeof(s->snap_id), 0) != sizeof(s->snap_id))
		return usnap_err(-errno, "getrandom: %s", strerror(errno));
	return 0;
}

static int snap_start_threads(uffdsnap_snap_t *s)
{
	int r = usnap_workers_start(s, worker_count(s->ctx));

	if (!r)
		r = usnap_io_start(s);
	if (!r) {
		r = usnap_thread_start(&s->handler, usnap_handler_main, s, "usnap-handler");
		s->handler_started = !r;
		if (r)
			usnap_err(r, "starting the fault handler thread: %s", strerror(-r));
	}
	return r;
}

static void snap_join(uffdsnap_snap_t *s);

/*
 * A region that mremap moved whole during the snapshot is registered at its
 * new address from now on. One that was cut, or moved in parts, keeps its old
 * address, and the next begin reports it gone. Under ctx->lock.
 */
static void follow_moves(uffdsnap_snap_t *s)
{
	for (unsigned i = 0; s->nspaces && i < s->nregions; i++) {
		uintptr_t a = usnap_space_home_addr(usnap_home(s, &s->sregs[i]), &s->sregs[i]);
		if (a)
			s->ctx->regs[i].addr = a;
	}
}

/* Every region is armed (or begin gave up): faults may be resolved now. */
static void give_go(uffdsnap_snap_t *s)
{
	atomic_store(&s->go, true);
	if (write(s->ctl_efd, &(uint64_t){ 1 }, sizeof(uint64_t)) < 0) {
		/* counter already set: the handler wakes anyway */
	}
	usnap_io_kick(s);
}

/* uffdsnap_begin() and uffdsnap_begin_delta() (delta: version 2, unchanged pages left out). */
static int snap_begin(uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_snap_t **snapp, bool delta)
{
	uffdsnap_snap_t *s;
	struct timespec rt;
	uint64_t t0;
	int r;

	usnap_clear_err();
	if (snapp)
		*snapp = NULL;
	if (!ctx || !sink || !snapp) {
		if (sink)
			uffdsnap_sink_free(sink);
		return usnap_err(-EINVAL, "%s: ctx, sink and snap must not be NULL",
				 delta ? "uffdsnap_begin_delta" : "uffdsnap_begin");
	}
	s = snap_alloc(ctx, sink);
	if (!s) {
		uffdsnap_sink_free(sink);
		return usnap_err(-ENOMEM, "allocating the snapshot");
	}
	s->delta = delta;
	pthread_mutex_lock(&ctx->lock);
	r = ctx->active ? usnap_err(-EBUSY, "a snapshot is already running on this context")
	    : ctx->migration ? usnap_err(-EBUSY, "a migration is running on this context")
	    : !ctx->nregs ? usnap_err(-ENOENT, "no regions registered: call uffdsnap_add_region first")
	    : usnap_delta_check(ctx, delta);
	if (!r)
		ctx->active = s;
	pthread_mutex_unlock(&ctx->lock);
	if (r) {
		s->ctx = NULL;
		snap_destroy(s);
		return r;
	}
	r = snap_prepare(s);
	if (!r)
		r = usnap_delta_begin(s);
	if (!r)
		r = usnap_sink_open(s->sink);
	if (!r)
		r = snap_start_threads(s);

	/* The instant: every region armed while the handler is not yet reading
	 * the userfaultfd, so any fault raised meanwhile is held. The other
	 * mappings of the regions' pages (aliases, participants') are registered
	 * first: each region lists its holes once registered, and a hole filled
	 * through a mapping not registered yet would be recorded as zeros. */
	t0 = usnap_now_ns();
	if (!r)
		r = usnap_arm_aliases(s);
	if (!r)
		r = usnap_arm_participants(s);
	if (!r)
		r = usnap_arm_regions(s);
	if (!r)
		r = usnap_protect_all(s);
	if (!r && (s->flags & UFFDSNAP_OPT_STRICT))
		r = usnap_strict_begin(s);
	s->t0_ns = usnap_now_ns();
	s->begin_ns = s->t0_ns - t0;
	clock_gettime(CLOCK_REALTIME, &rt);
	s->created_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
	if (!r)
		r = usnap_build_head(s);
	if (!r && atomic_load(&s->abort))
		r = -EIO; /* a worker failed meanwhile: its error is the one returned */
	if (r) {
		/* Keep the detail: usnap_fail must not overwrite the thread's message. */
		usnap_fail(s, r, "%s", uffdsnap_last_error());
		give_go(s); /* the threads waiting for it see the failure and exit */
		snap_join(s);
		/* The first error, not a consequence of it; final once joined. */
		r = usnap_err(usnap_latch_err(&s->fail), "%s", usnap_latch_msg(&s->fail));
		snap_destroy(s);
		return r;
	}
	give_go(s);
	*snapp = s;
	return 0;
}

USNAP_EXPORT int uffdsnap_begin(uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_snap_t **snapp)
{
	return snap_begin(ctx, sink, snapp, false);
}

USNAP_EXPORT int uffdsnap_begin_delta(uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_snap_t **snapp)
{
	return snap_begin(ctx, sink, snapp, true);
}

static int begin_path(uffdsnap_t *ctx, const char *path, uffdsnap_snap_t **snap, bool delta)
{
	uffdsnap_sink_t *sink;
	int r = uffdsnap_sink_file(&sink, path, 0600);

	if (r) {
		if (snap)
			*snap = NULL;
		return r;
	}
	return snap_begin(ctx, sink, snap, delta);
}

USNAP_EXPORT int uffdsnap_begin_file(uffdsnap_t *ctx, const char *path, uffdsnap_snap_t **snap)
{
	return begin_path(ctx, path, snap, false);
}

USNAP_EXPORT int uffdsnap_begin_delta_file(uffdsnap_t *ctx, const char *path, uffdsnap_snap_t **snap)
{
	return begin_path(ctx, path, snap, true);
}

/* ---- wait, cancel, free ---------------------------------------------------------- */

/* Join every thread once; afterwards the snapshot no longer uses its context. */
static void snap_join(uffdsnap_snap_t *s)
{
	uffdsnap_t *ctx;

	pthread_mutex_lock(&s->join_lock);
	if (s->joined) {
		pthread_mutex_unlock(&s->join_lock);
		return;
	}
	if (s->handler_started)
		pthread_join(s->handler, NULL);
	else
		usnap_compress_close(s); /* the handler would have closed the queue */
	usnap_workers_join(s);
	usnap_io_join(s);
	/* Regions the handler never got to (failed begin) are disarmed here. */
	if (s->sregs)
		usnap_disarm_all(s);
	ctx = s->ctx;
	if (ctx) {
		pthread_mutex_lock(&ctx->lock);
		follow_moves(s);
		usnap_delta_end(s);
		if (ctx->active == s)
			ctx->active = NULL;
		pthread_mutex_unlock(&ctx->lock);
		s->ctx = NULL;
	}
	atomic_store(&s->state, usnap_latch_err(&s->fail) == USNAP_LATCH_CLOSED ? UFFDSNAP_STATE_DONE
										: UFFDSNAP_STATE_FAILED);
	s->joined = true;
	pthread_mutex_unlock(&s->join_lock);
}

USNAP_EXPORT int uffdsnap_wait(uffdsnap_snap_t *s)
{
	int err;

	if (!s)
		return usnap_err(-EINVAL, "snap is NULL");
	snap_join(s);
	err = usnap_latch_err(&s->fail);
	return err == USNAP_LATCH_CLOSED ? 0 : err;
}

USNAP_EXPORT int uffdsnap_done(const uffdsnap_snap_t *s)
{
	uffdsnap_snap_t *m = (uffdsnap_snap_t *)s;

	/* Finished means written (or failed) and no page protected any more. */
	return m && atomic_load(&m->end_ns) && atomic_load(&m->window_end_ns);
}

USNAP_EXPORT void uffdsnap_cancel(uffdsnap_snap_t *s)
{
	if (s)
		usnap_fail(s, -ECANCELED, "cancelled");
}

USNAP_EXPORT const char *uffdsnap_snap_error(const uffdsnap_snap_t *s)
{
	if (!s)
		return "snap is NULL";
	return usnap_latch_msg(&s->fail);
}

USNAP_EXPORT int uffdsnap_snap_stats(const uffdsnap_snap_t *cs, uffdsnap_stats_t *out)
{
	uffdsnap_snap_t *s = (uffdsnap_snap_t *)cs;
	uffdsnap_stats_t st;
	uint64_t end, wend, now = usnap_now_ns();
	int err;

	if (!s || !out)
		return usnap_err(-EINVAL, "snap and out must not be NULL");
	if (usnap_check_size("uffdsnap_snap_stats", "uffdsnap_stats_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_stats_t, state), sizeof(st)))
		return -EINVAL;
	memset(&st, 0, sizeof(st));
	st.size = out->size;
	err = usnap_latch_err(&s->fail);
	end = atomic_load(&s->end_ns);
	wend = atomic_load(&s->window_end_ns);
	st.state = !end ? UFFDSNAP_STATE_RUNNING : err == USNAP_LATCH_CLOSED ? UFFDSNAP_STATE_DONE
									  : UFFDSNAP_STATE_FAILED;
	st.error = err < 0 ? err : 0;
	st.begin_ns = s->begin_ns;
	st.elapsed_ns = (end ? end : now) - s->t0_ns;
	st.window_ns = (wend ? wend : now) - s->t0_ns;
	st.pages_total = s->pages_total;
	st.pages_fault = atomic_load(&s->pages_fault);
	st.pages_sweep = atomic_load(&s->pages_sweep);
	st.pages_hole = atomic_load(&s->pages_hole);
	st.faults = atomic_load(&s->faults);
	st.fault_wait_max_ns = atomic_load(&s->fault_wait_max_ns);
	st.bytes_raw = atomic_load(&s->bytes_raw);
	st.bytes_out = atomic_load(&s->bytes_out);
	pthread_mutex_lock(&s->pool_lock);
	st.buffer_peak = (uint64_t)s->jobs_peak * s->job_footprint;
	pthread_mutex_unlock(&s->pool_lock);
	st.buffer_bound = s->buffer_bound;
	st.pages_zero_found = atomic_load(&s->pages_zero_found);
	st.chunks = atomic_load(&s->chunks);
	st.forks = atomic_load(&s->forks);
	st.remaps = atomic_load(&s->remaps);
	st.unmaps = atomic_load(&s->unmaps);
	st.protect_threads = s->protect_threads;
	st.chunks_uncompressed = atomic_load(&s->chunks_uncompressed);
	memcpy(st.snap_id, s->snap_id, sizeof(st.snap_id));
	memcpy(st.parent_id, s->parent_id, sizeof(st.parent_id));
	st.depth = s->depth;
	st.pages_unchanged = atomic_load(&s->pages_unchanged);
	st.faults_waited = atomic_load(&s->faults_waited);
	st.fault_wait_ns = atomic_load(&s->fault_wait_ns);
	st.pages_huge_remapped = atomic_load(&s->pages_huge_remapped);
	memcpy(out, &st, out->size);
	return 0;
}

USNAP_EXPORT void uffdsnap_snap_free(uffdsnap_snap_t *s)
{
	if (!s)
		return;
	uffdsnap_cancel(s);
	snap_join(s);
	snap_destroy(s);
}
