/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libuffdsnap for libuv programs: take a snapshot from the loop's thread and
 * hear about its progress and its end on that same thread, without any call
 * on the loop waiting for the snapshot.
 *
 * Link with `pkg-config --cflags --libs libuffdsnap-uv` (libuffdsnap and libuv).
 * Reference: docs/api.md "The libuv loop", man uffdsnap_uv_begin.
 */
#ifndef UFFDSNAP_UV_H
#define UFFDSNAP_UV_H

#include <uv.h>

#include <uffdsnap.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Called once on the loop's thread when the snapshot has finished: status is
 * what uffdsnap_wait() returns (0, or a negative errno: -ECANCELED, which is
 * UV_ECANCELED, after uffdsnap_cancel(); -ENOSPC, -EPIPE, a sink callback's
 * error...). No page is protected any more and the library's threads for it
 * have exited. snap may be passed to uffdsnap_snap_error() and
 * uffdsnap_snap_stats() until this callback returns; the library frees it
 * afterwards. A new snapshot of the same context may begin inside it.
 */
typedef void (*uffdsnap_uv_cb)(uffdsnap_snap_t *snap, int status, void *user);

/*
 * Called on the loop's thread every UFFDSNAP_UV_PROGRESS_MS while the
 * snapshot runs, with its uffdsnap_snap_stats().
 */
typedef void (*uffdsnap_uv_progress_cb)(uffdsnap_snap_t *snap, const uffdsnap_stats_t *stats, void *user);

#define UFFDSNAP_UV_PROGRESS_MS 100

/*
 * Begin a snapshot of ctx into sink from the thread running loop, as
 * uffdsnap_begin() does: the instant is taken in this call, whose pause the
 * loop pays. Then return; the loop runs its other handles while the snapshot
 * proceeds, and done (and progress, if not NULL) are called on the loop's
 * thread. The snapshot keeps the loop alive until done has been called.
 *
 * 0 and *snap set: done will be called exactly once. The handle *snap may be
 * given to uffdsnap_cancel() (from any thread), uffdsnap_snap_stats(),
 * uffdsnap_snap_error() and uffdsnap_done() until done returns; never to
 * uffdsnap_snap_free() or uffdsnap_wait(): the library frees it after done.
 * Negative errno (those of uffdsnap_begin(), -EINVAL for a NULL argument,
 * -ENOMEM, -EAGAIN, or a libuv error): nothing was begun, *snap is NULL,
 * done is never called. Either way the sink is owned by the library.
 *
 * Must be called on the loop's thread. user, ctx's regions and the loop must
 * outlive the snapshot: until done is called. uffdsnap_free(ctx) before that
 * cancels it (done then gets -ECANCELED). The loop cannot be closed while
 * the snapshot runs (uv_loop_close() says UV_EBUSY): to shut down, cancel the
 * snapshot and run the loop until done is called. The call adds a uv_async_t
 * and a uv_timer_t to the loop, closed before the snapshot handle is freed;
 * code that closes every handle with uv_walk() must leave these alone (see
 * uffdsnap_uv_owns()).
 */
int uffdsnap_uv_begin(uv_loop_t *loop, uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_uv_cb done,
		      uffdsnap_uv_progress_cb progress, void *user, uffdsnap_snap_t **snap);

/* 1 if h is one of the handles uffdsnap_uv_begin() added to a loop, else 0. */
int uffdsnap_uv_owns(const uv_handle_t *h);

#ifdef __cplusplus
}
#endif
#endif /* UFFDSNAP_UV_H */
