/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The snapshot lifecycle: begin (arm every region, then release the handler),
 * wait, cancel, stats, failure, free. (The chunk buffers whose fixed size is
 * the memory bound, buffer_bytes: pool.c.)
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
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "arm.h"
#include "compress.h"
#include "fault.h"
#include "latch.h"
#include "pool.h"
#include "sink.h"
#include "snapshot.h"
#include "space.h"
#include "uffdsnap-private.h"

/* ---- failure -------------------------------------------------------------- */

void usnap_fail(uffdsnap_snap_t *s, int err, const char *fmt, ...)
{
	va_list ap;
	int had;

	va_start(ap, fmt);
	had = usnap_latch_vset(&s->fail, err, fmt, ap);
	va_end(ap);
	if (had == USNAP_LATCH_CLOSED)
		return; /* finished already: a late cancel changes nothing */
	atomic_store(&s->abort, true);
	usnap_handler_wake(&s->handler);
	usnap_compress_wake(s);
	/* Not `go`: only begin gives it, once it stopped arming. A handler let
	 * go by a worker's failure would unregister while begin still arms. */
	usnap_io_kick(s);
}

/* ---- begin ------------------------------------------------------------------- */

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
	usnap_arm_destroy(&s->arm);
	free(s->sregs);
	free(s->by_addr);
	usnap_compress_destroy(&s->cq);
	if (s->sink)
		usnap_sink_close(s->sink);
	usnap_handler_destroy(&s->handler);

	pthread_mutex_destroy(&s->join_lock);
	usnap_jobs_destroy(&s->jobs);
	usnap_io_destroy(&s->io);
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
	s->sink = sink;
	usnap_handler_init(&s->handler);

	pthread_mutex_init(&s->join_lock, NULL);
	usnap_compress_init(&s->cq, ctx->opts.zstd_level);
	usnap_io_init(&s->io);
	usnap_spaces_init(&s->spaces);
	return s;
}

static int snap_prepare(uffdsnap_snap_t *s)
{
	uffdsnap_t *ctx = s->ctx;
	int r;

	usnap_jobs_init(&s->jobs, &ctx->pool);
	s->stats.buffer_bound = ctx->opts.buffer_bytes;
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
	if (usnap_spaces_ours(s))
		return -ENOMEM;
	pthread_mutex_lock(&ctx->lock);
	r = usnap_space_participants(s);
	pthread_mutex_unlock(&ctx->lock);
	if (r)
		return r;
	if ((r = usnap_handler_open(&s->handler)))
		return r;

	if (getrandom(s->snap_id, sizeof(s->snap_id), 0) != sizeof(s->snap_id))
		return usnap_err(-errno, "getrandom: %s", strerror(errno));
	return 0;
}

static int snap_start_threads(uffdsnap_snap_t *s)
{
	int r = usnap_workers_start(s, usnap_worker_count(s->ctx));

	if (!r)
		r = usnap_io_start(s);
	if (!r)
		r = usnap_handler_start(s);
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
	for (unsigned i = 0; s->spaces.n && i < s->nregions; i++) {
		uintptr_t a = usnap_space_home_addr(usnap_home(&s->spaces, &s->sregs[i]), &s->sregs[i]);
		if (a)
			s->ctx->regs[i].addr = a;
	}
}

/* Every region is armed (or begin gave up): faults may be resolved now. */
static void give_go(uffdsnap_snap_t *s)
{
	atomic_store(&s->go, true);
	usnap_handler_go(&s->handler);
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
	s->stats.t0_ns = usnap_now_ns();
	s->stats.begin_ns = s->stats.t0_ns - t0;
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
	if (!usnap_handler_join(&s->handler))
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
	return m && atomic_load(&m->stats.end_ns) && atomic_load(&m->stats.window_end_ns);
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
	end = atomic_load(&s->stats.end_ns);
	wend = atomic_load(&s->stats.window_end_ns);
	st.state = !end ? UFFDSNAP_STATE_RUNNING : err == USNAP_LATCH_CLOSED ? UFFDSNAP_STATE_DONE
									  : UFFDSNAP_STATE_FAILED;
	st.error = err < 0 ? err : 0;
	st.begin_ns = s->stats.begin_ns;
	st.elapsed_ns = (end ? end : now) - s->stats.t0_ns;
	st.window_ns = (wend ? wend : now) - s->stats.t0_ns;
	st.pages_total = s->pages_total;
	st.pages_fault = atomic_load(&s->stats.pages_fault);
	st.pages_sweep = atomic_load(&s->stats.pages_sweep);
	st.pages_hole = atomic_load(&s->stats.pages_hole);
	st.faults = atomic_load(&s->stats.faults);
	st.fault_wait_max_ns = atomic_load(&s->stats.fault_wait_max_ns);
	st.bytes_raw = atomic_load(&s->stats.bytes_raw);
	st.bytes_out = atomic_load(&s->stats.bytes_out);
	st.buffer_peak = usnap_jobs_peak_bytes(&s->jobs);
	st.buffer_bound = s->stats.buffer_bound;
	st.pages_zero_found = atomic_load(&s->stats.pages_zero_found);
	st.chunks = atomic_load(&s->stats.chunks);
	st.forks = atomic_load(&s->stats.forks);
	st.remaps = atomic_load(&s->stats.remaps);
	st.unmaps = atomic_load(&s->stats.unmaps);
	st.protect_threads = s->stats.protect_threads;
	st.chunks_uncompressed = atomic_load(&s->stats.chunks_uncompressed);
	memcpy(st.snap_id, s->snap_id, sizeof(st.snap_id));
	memcpy(st.parent_id, s->parent_id, sizeof(st.parent_id));
	st.depth = s->depth;
	st.pages_unchanged = atomic_load(&s->stats.pages_unchanged);
	st.faults_waited = atomic_load(&s->stats.faults_waited);
	st.fault_wait_ns = atomic_load(&s->stats.fault_wait_ns);
	st.pages_huge_remapped = atomic_load(&s->stats.pages_huge_remapped);
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
