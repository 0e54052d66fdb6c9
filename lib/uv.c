/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * <uffdsnap-uv.h>: snapshots begun from a libuv loop, with progress and
 * completion delivered on the loop's thread. Built on the public API only.
 *
 * The loop thread calls uffdsnap_begin() (the instant) and returns. A helper
 * thread, started before begin so that nothing can fail once the snapshot
 * runs, blocks in uffdsnap_wait() and then wakes the loop with a uv_async_t;
 * the async callback joins the helper (it is only returning by then), calls
 * done, closes the handles and frees everything in the close callbacks.
 * Progress is a uv_timer_t on the loop reading uffdsnap_snap_stats(), which
 * does not wait for the snapshot: a helper posting stats through the async
 * would need a second thread (wait cannot time out) or polling.
 *
 * uv_async_send() on a closed handle is undefined, so the async must stay
 * open until the helper has sent it: the handles belong to us until then,
 * and a process-wide list lets uv_walk() shutdown code recognise them
 * (uffdsnap_uv_owns()).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "uffdsnap-private.h"
#include "uffdsnap-uv.h"

struct usnap_uv {
	uv_async_t wake;
	uv_timer_t tick;
	bool has_tick;
	int open_handles;
	uffdsnap_snap_t *snap;
	uffdsnap_uv_cb done;
	uffdsnap_uv_progress_cb progress;
	void *user;
	pthread_t helper;
	/* helper <-> begin handshake: the helper waits for the snapshot (or
	 * for none, when begin failed) before calling uffdsnap_wait() */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool go;
	int status; /* set by the helper before it wakes the loop; read after join */
	struct usnap_uv *next;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct usnap_uv *live;

static void live_add(struct usnap_uv *u)
{
	pthread_mutex_lock(&live_lock);
	u->next = live;
	live = u;
	pthread_mutex_unlock(&live_lock);
}

static void live_del(struct usnap_uv *u)
{
	pthread_mutex_lock(&live_lock);
	for (struct usnap_uv **p = &live; *p; p = &(*p)->next)
		if (*p == u) {
			*p = u->next;
			break;
		}
	pthread_mutex_unlock(&live_lock);
}

USNAP_EXPORT int uffdsnap_uv_owns(const uv_handle_t *h)
{
	int r = 0;

	pthread_mutex_lock(&live_lock);
	for (struct usnap_uv *u = live; u && !r; u = u->next)
		r = h == (const uv_handle_t *)&u->wake || (u->has_tick && h == (const uv_handle_t *)&u->tick);
	pthread_mutex_unlock(&live_lock);
	return r;
}

static void *helper_main(void *arg)
{
	struct usnap_uv *u = arg;
	uffdsnap_snap_t *snap;

	pthread_mutex_lock(&u->lock);
	while (!u->go)
		pthread_cond_wait(&u->cv, &u->lock);
	snap = u->snap;
	pthread_mutex_unlock(&u->lock);
	if (!snap)
		return NULL; /* begin failed: nothing to wait for */
	u->status = uffdsnap_wait(snap);
	uv_async_send(&u->wake);
	return NULL;
}

static void release(struct usnap_uv *u)
{
	uffdsnap_snap_free(u->snap); /* finished: frees without waiting */
	pthread_mutex_destroy(&u->lock);
	pthread_cond_destroy(&u->cv);
	free(u);
}

static void on_close(uv_handle_t *h)
{
	struct usnap_uv *u = h->data;

	if (--u->open_handles == 0)
		release(u);
}

static void close_all(struct usnap_uv *u)
{
	live_del(u);
	if (u->has_tick)
		uv_close((uv_handle_t *)&u->tick, on_close);
	uv_close((uv_handle_t *)&u->wake, on_close);
}

static void on_wake(uv_async_t *h)
{
	struct usnap_uv *u = h->data;

	/* The helper sent the async as its last act: joining does not wait for the snapshot. */
	pthread_join(u->helper, NULL);
	if (u->has_tick)
		uv_timer_stop(&u->tick);
	u->done(u->snap, u->status, u->user);
	close_all(u);
}

static void on_tick(uv_timer_t *t)
{
	struct usnap_uv *u = t->data;
	uffdsnap_stats_t st = { .size = sizeof(st) };

	if (uffdsnap_snap_stats(u->snap, &st) == 0 && st.state == UFFDSNAP_STATE_RUNNING)
		u->progress(u->snap, &st, u->user);
}

static void go(struct usnap_uv *u, uffdsnap_snap_t *snap)
{
	pthread_mutex_lock(&u->lock);
	u->snap = snap;
	u->go = true;
	pthread_cond_signal(&u->cv);
	pthread_mutex_unlock(&u->lock);
}

USNAP_EXPORT int uffdsnap_uv_begin(uv_loop_t *loop, uffdsnap_t *ctx, uffdsnap_sink_t *sink, uffdsnap_uv_cb done,
				   uffdsnap_uv_progress_cb progress, void *user, uffdsnap_snap_t **snap)
{
	struct usnap_uv *u;
	uffdsnap_snap_t *s = NULL;
	int r;

	if (snap)
		*snap = NULL;
	if (!loop || !ctx || !sink || !done || !snap) {
		uffdsnap_sink_free(sink);
		return usnap_err(-EINVAL, "uffdsnap_uv_begin: loop, ctx, sink, done and snap must not be NULL");
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		uffdsnap_sink_free(sink);
		return usnap_err(-ENOMEM, "uffdsnap_uv_begin: out of memory");
	}
	u->done = done;
	u->progress = progress;
	u->user = user;
	pthread_mutex_init(&u->lock, NULL);
	pthread_cond_init(&u->cv, NULL);
	r = uv_async_init(loop, &u->wake, on_wake);
	if (r) {
		uffdsnap_sink_free(sink);
		release(u);
		return usnap_err(r, "uffdsnap_uv_begin: uv_async_init: %s", uv_strerror(r));
	}
	u->wake.data = u;
	u->open_handles = 1;
	if (progress) {
		uv_timer_init(loop, &u->tick); /* cannot fail on Linux */
		u->tick.data = u;
		u->has_tick = true;
		u->open_handles++;
	}
	live_add(u);
	r = usnap_thread_start(&u->helper, helper_main, u, "usnap-uv");
	if (r) {
		uffdsnap_sink_free(sink);
		close_all(u);
		return usnap_err(r, "uffdsnap_uv_begin: starting the helper thread: %s", strerror(-r));
	}
	r = uffdsnap_begin(ctx, sink, &s);
	go(u, s);
	if (r) {
		/* detail of begin's failure stays in uffdsnap_last_error() */
		pthread_join(u->helper, NULL);
		close_all(u);
		return r;
	}
	if (progress) {
		uv_timer_start(&u->tick, on_tick, UFFDSNAP_UV_PROGRESS_MS, UFFDSNAP_UV_PROGRESS_MS);
		uv_unref((uv_handle_t *)&u->tick); /* the async keeps the loop alive, once */
	}
	*snap = s;
	return 0;
}
