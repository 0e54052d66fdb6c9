/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * <uffdsnap-uv.h>: a libuv loop serving TCP clients on 127.0.0.1 while a
 * snapshot of memory it writes runs; completion and progress on the loop's
 * thread; cancel (uffdsnap_cancel, uffdsnap_free); sink errors; synchronous
 * errors; the loop closes cleanly afterwards (uv_loop_close() == 0 proves
 * the library closed its handles).
 *
 * The snapshot's sink is a callback that refuses to make progress until the
 * loop has answered GATE_REQUESTS requests and delivered a progress call
 * while the snapshot is running: the snapshot cannot finish unless the loop
 * kept serving, so a loop blocked by the library fails the test (the sink
 * gives up after GATE_SECONDS and fails the snapshot).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "uffdsnap-uv.h"

#define GATE_REQUESTS 50
#define GATE_SECONDS 30
#define CLIENTS 2
#define MAX_REQUESTS 200000 /* per client: bounds the test if something is wrong */

static size_t region_len(void)
{
	return T_SANITIZED ? 4 * MiB : 16 * MiB;
}

struct t {
	uv_loop_t loop;
	pthread_t loop_thread;
	struct t_mem mem;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *snap;
	uint8_t *ref;                   /* the region at the instant */
	/* the stream, written by the library's I/O thread */
	uint8_t *stream;
	size_t stream_len, stream_cap;
	/* gate (sink side reads, loop side writes) */
	atomic_uint served_during, progress_calls;
	atomic_bool running, stop_clients, cancel_issued;
	int sink_fail;                  /* error the sink returns at once (0: none) */
	bool gate;                      /* the sink waits for the loop as described above */
	bool wait_cancel;               /* the sink waits until the loop cancelled */
	/* results, on the loop thread */
	int done_calls, status;
	bool done_on_loop, progress_on_loop, unprotected_in_done;
	char errmsg[256];
	int owned_seen, walked;
	/* server */
	uv_tcp_t server;
	int port;
	int again;                       /* begin another snapshot from done (error test) */
};

static int sink_cb(void *user, const void *buf, size_t len)
{
	struct t *t = user;
	uint64_t t0 = t_now_ns();

	if (t->sink_fail)
		return t->sink_fail;
	while (t->gate && (atomic_load(&t->served_during) < GATE_REQUESTS || atomic_load(&t->progress_calls) < 1)) {
		if (t_ms_since(t0) > GATE_SECONDS * 1000.0)
			return -ETIMEDOUT;
		usleep(1000);
	}
	while (t->wait_cancel && !atomic_load(&t->cancel_issued)) {
		if (t_ms_since(t0) > GATE_SECONDS * 1000.0)
			return -ETIMEDOUT;
		usleep(1000);
	}
	if (t->stream_len + len > t->stream_cap) {
		t->stream_cap = (t->stream_len + len) * 2;
		t->stream = realloc(t->stream, t->stream_cap);
		if (!t->stream)
			return -ENOMEM;
	}
	memcpy(t->stream + t->stream_len, buf, len);
	t->stream_len += len;
	return 0;
}

static uffdsnap_sink_t *new_sink(struct t *t)
{
	uffdsnap_sink_t *sink;

	ck_assert_int_eq(uffdsnap_sink_callback(&sink, sink_cb, t), 0);
	return sink;
}

static void on_progress(uffdsnap_snap_t *snap, const uffdsnap_stats_t *st, void *user)
{
	struct t *t = user;

	t->progress_on_loop = pthread_equal(pthread_self(), t->loop_thread);
	ck_assert_ptr_eq(snap, t->snap);
	ck_assert_int_eq(st->state, UFFDSNAP_STATE_RUNNING);
	atomic_fetch_add(&t->progress_calls, 1);
}

static void walk_cb(uv_handle_t *h, void *arg)
{
	struct t *t = arg;

	t->walked++;
	t->owned_seen += uffdsnap_uv_owns(h);
}

static void on_done(uffdsnap_snap_t *snap, int status, void *user)
{
	struct t *t = user;

	t->done_calls++;
	t->done_on_loop = pthread_equal(pthread_self(), t->loop_thread);
	t->status = status;
	snprintf(t->errmsg, sizeof(t->errmsg), "%s", uffdsnap_snap_error(snap));
	t->unprotected_in_done = t_pagemap_protected(t->mem.addr, t->mem.len) == 0;
	ck_assert_int_eq(uffdsnap_done(snap), 1);
	atomic_store(&t->running, false);
	atomic_store(&t->stop_clients, true);
	if (t->again) {
		t->again = 0;
		t->sink_fail = 0;
		t->stream_len = 0;
		/* a new snapshot of the same context from inside done */
		ck_assert_int_eq(uffdsnap_uv_begin(&t->loop, t->ctx, new_sink(t), on_done, NULL, t, &t->snap), 0);
		atomic_store(&t->running, true);
	}
	if (!uv_is_closing((uv_handle_t *)&t->server))
		uv_close((uv_handle_t *)&t->server, NULL);
}

/* ---- the TCP server: 8-byte requests, each stores into the region and is echoed --- */

struct conn {
	uv_tcp_t tcp;
	struct t *t;
	uint8_t part[8];
	size_t npart;
};

struct reply {
	uv_write_t req;
	uint64_t v;
};

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)h;
	buf->base = malloc(hint);
	buf->len = buf->base ? hint : 0;
}

static void on_written(uv_write_t *req, int status)
{
	(void)status;
	free(req);
}

static void conn_closed(uv_handle_t *h)
{
	free(h->data);
}

static void serve(struct conn *c, uint64_t v)
{
	struct t *t = c->t;
	size_t pages = t->mem.len / t_page;
	struct reply *r = malloc(sizeof(*r));
	uv_buf_t b;

	/* a store the snapshot must not see: the write fault is taken on this thread */
	memcpy(t->mem.addr + (v * 7919 % pages) * t_page + (v % 64) * 8, &v, 8);
	if (atomic_load(&t->running))
		atomic_fetch_add(&t->served_during, 1);
	ck_assert_ptr_nonnull(r);
	r->v = v;
	b = uv_buf_init((char *)&r->v, 8);
	ck_assert_int_eq(uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_written), 0);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	for (ssize_t i = 0; i < n; i++) {
		c->part[c->npart++] = (uint8_t)buf->base[i];
		if (c->npart == 8) {
			uint64_t v;

			memcpy(&v, c->part, 8);
			serve(c, v);
			c->npart = 0;
		}
	}
	free(buf->base);
	if (n < 0)
		uv_close((uv_handle_t *)s, conn_closed);
}

static void on_conn(uv_stream_t *server, int status)
{
	struct t *t = server->data;
	struct conn *c = calloc(1, sizeof(*c));

	ck_assert_int_eq(status, 0);
	ck_assert_ptr_nonnull(c);
	c->t = t;
	uv_tcp_init(&t->loop, &c->tcp);
	c->tcp.data = c;
	ck_assert_int_eq(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
	ck_assert_int_eq(uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read), 0);
}

static void server_start(struct t *t)
{
	struct sockaddr_in a;
	int alen = sizeof(a);

	uv_ip4_addr("127.0.0.1", 0, &a);
	ck_assert_int_eq(uv_tcp_init(&t->loop, &t->server), 0);
	t->server.data = t;
	ck_assert_int_eq(uv_tcp_bind(&t->server, (struct sockaddr *)&a, 0), 0);
	ck_assert_int_eq(uv_listen((uv_stream_t *)&t->server, 16, on_conn), 0);
	ck_assert_int_eq(uv_tcp_getsockname(&t->server, (struct sockaddr *)&a, &alen), 0);
	t->port = ntohs(a.sin_port);
}

/* A client: blocking request/response round trips until told to stop. */
static void *client_main(void *arg)
{
	struct t *t = arg;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)t->port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	uint64_t n = 0;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		return (void *)-1l;
	while (!atomic_load(&t->stop_clients) && n < MAX_REQUESTS) {
		uint64_t v = (uint64_t)pthread_self() ^ n++, back;

		if (write(fd, &v, 8) != 8 || recv(fd, &back, 8, MSG_WAITALL) != 8 || back != v)
			break;
	}
	close(fd);
	return NULL;
}

static void setup(struct t *t)
{
	memset(t, 0, sizeof(*t));
	t_watchdog(90, "test-uv");
	ck_assert_int_eq(uv_loop_init(&t->loop), 0);
	t->loop_thread = pthread_self();
	t_memfd(&t->mem, region_len());
	t_fill_random(t->mem.addr, t->mem.len, 14);
	t->ctx = t_ctx_new(NULL);
	t_add(t->ctx, "heap", t->mem.addr, t->mem.len);
}

static void teardown(struct t *t)
{
	ck_assert_int_eq(uv_loop_close(&t->loop), 0); /* every handle, the library's too, closed */
	if (t->ctx)
		uffdsnap_free(t->ctx);
	t_mem_free(&t->mem);
	if (t->ref)
		t_buf_free(t->ref, t->mem.len);
	free(t->stream);
}

START_TEST(uv_serves_tcp_during_snapshot)
{
	static struct t t;
	pthread_t cl[CLIENTS];
	struct t_expect e;

	setup(&t);
	server_start(&t);
	for (int i = 0; i < CLIENTS; i++)
		ck_assert_int_eq(pthread_create(&cl[i], NULL, client_main, &t), 0);
	t.gate = true;
	t.ref = t_copy(t.mem.addr, t.mem.len); /* only this thread writes the region */
	atomic_store(&t.running, true);
	ck_assert_int_eq(uffdsnap_uv_begin(&t.loop, t.ctx, new_sink(&t), on_done, on_progress, &t, &t.snap), 0);
	ck_assert_ptr_nonnull(t.snap);
	uv_walk(&t.loop, walk_cb, &t);
	ck_assert_int_eq(t.owned_seen, 2); /* the async and the progress timer */
	ck_assert_int_gt(t.walked, 2);     /* and the server's handle is not ours */
	ck_assert_int_eq(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
	for (int i = 0; i < CLIENTS; i++)
		ck_assert_int_eq(t_join_timeout(cl[i], 30), 0);
	printf("served %u requests and %u progress calls during the snapshot; status %d %s\n",
	       atomic_load(&t.served_during), atomic_load(&t.progress_calls), t.status, t.errmsg);
	ck_assert_int_eq(t.done_calls, 1);
	ck_assert_int_eq(t.status, 0);
	ck_assert(t.done_on_loop);
	ck_assert(t.progress_on_loop);
	ck_assert(t.unprotected_in_done);
	ck_assert_uint_ge(atomic_load(&t.served_during), GATE_REQUESTS);
	/* the loop's stores after the instant are not in the snapshot */
	ck_assert_int_ne(memcmp(t.ref, t.mem.addr, t.mem.len), 0);
	e = (struct t_expect){ "heap", t.ref, t.mem.len };
	t_check_buffer(t.stream, t.stream_len, &e, 1);
	teardown(&t);
}
END_TEST

static void cancel_timer_cb(uv_timer_t *tm)
{
	struct t *t = tm->data;

	uffdsnap_cancel(t->snap);
	atomic_store(&t->cancel_issued, true);
	uv_close((uv_handle_t *)tm, NULL);
}

START_TEST(uv_snapshot_cancel)
{
	static struct t t;
	uv_timer_t tm;

	setup(&t);
	uv_tcp_init(&t.loop, &t.server); /* closed by on_done */
	t.wait_cancel = true;
	ck_assert_int_eq(uffdsnap_uv_begin(&t.loop, t.ctx, new_sink(&t), on_done, NULL, &t, &t.snap), 0);
	uv_timer_init(&t.loop, &tm);
	tm.data = &t;
	uv_timer_start(&tm, cancel_timer_cb, 10, 0);
	ck_assert_int_eq(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(t.done_calls, 1);
	ck_assert_int_eq(t.status, UV_ECANCELED);
	ck_assert(t.done_on_loop);
	ck_assert(t.unprotected_in_done);
	teardown(&t);
}
END_TEST

static void free_ctx_timer_cb(uv_timer_t *tm)
{
	struct t *t = tm->data;

	atomic_store(&t->cancel_issued, true); /* first: free waits for the sink to return */
	uffdsnap_free(t->ctx); /* cancels; the handle lives on until done */
	t->ctx = NULL;
	uv_close((uv_handle_t *)tm, NULL);
}

/* uffdsnap_free() of the context while the snapshot runs: done still comes, with -ECANCELED. */
START_TEST(uv_free_ctx)
{
	static struct t t;
	uv_timer_t tm;

	setup(&t);
	uv_tcp_init(&t.loop, &t.server);
	t.wait_cancel = true;
	ck_assert_int_eq(uffdsnap_uv_begin(&t.loop, t.ctx, new_sink(&t), on_done, on_progress, &t, &t.snap), 0);
	uv_timer_init(&t.loop, &tm);
	tm.data = &t;
	uv_timer_start(&tm, free_ctx_timer_cb, 10, 0);
	ck_assert_int_eq(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(t.done_calls, 1);
	ck_assert_int_eq(t.status, -ECANCELED);
	ck_assert(t.unprotected_in_done);
	teardown(&t);
}
END_TEST

/* A sink error reaches done with its errno and reason; a snapshot begun from done then succeeds. */
START_TEST(uv_sink_error_then_again)
{
	static struct t t;
	struct t_expect e;

	setup(&t);
	uv_tcp_init(&t.loop, &t.server);
	t.sink_fail = -ENOSPC;
	t.again = 1;
	ck_assert_int_eq(uffdsnap_uv_begin(&t.loop, t.ctx, new_sink(&t), on_done, NULL, &t, &t.snap), 0);
	while (t.done_calls < 1)
		uv_run(&t.loop, UV_RUN_ONCE);
	ck_assert_int_eq(t.status, -ENOSPC);
	ck_assert_str_ne(t.errmsg, "");
	printf("sink error: %s\n", t.errmsg);
	ck_assert_int_eq(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(t.done_calls, 2);
	ck_assert_int_eq(t.status, 0);
	e = (struct t_expect){ "heap", t.mem.addr, t.mem.len };
	t_check_buffer(t.stream, t.stream_len, &e, 1);
	teardown(&t);
}
END_TEST

static void never(uffdsnap_snap_t *snap, int status, void *user)
{
	(void)snap, (void)status, (void)user;
	ck_abort_msg("done called after a synchronous failure");
}

/* Errors of the call itself: nothing begun, done never called, the sink freed (ASan: no leak). */
START_TEST(uv_sync_errors)
{
	uv_loop_t loop;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *snap = (void *)1;
	uffdsnap_sink_t *sink;

	t_watchdog(60, "test-uv sync errors");
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	ctx = t_ctx_new(NULL);
	ck_assert_int_eq(uffdsnap_sink_callback(&sink, sink_cb, NULL), 0);
	ck_assert_int_eq(uffdsnap_uv_begin(&loop, ctx, sink, never, NULL, NULL, &snap), -ENOENT); /* no regions */
	ck_assert_ptr_null(snap);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	ck_assert_int_eq(uffdsnap_sink_callback(&sink, sink_cb, NULL), 0);
	ck_assert_int_eq(uffdsnap_uv_begin(&loop, ctx, sink, NULL, NULL, NULL, &snap), -EINVAL);
	ck_assert_int_eq(uffdsnap_uv_begin(&loop, NULL, NULL, never, NULL, NULL, &snap), -EINVAL);
	ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	uffdsnap_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("uv");
	TCase *tc = tcase_create("uv");

	t_test_require_uffd();
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, uv_serves_tcp_during_snapshot);
	tcase_add_test(tc, uv_snapshot_cancel);
	tcase_add_test(tc, uv_free_ctx);
	tcase_add_test(tc, uv_sink_error_then_again);
	tcase_add_test(tc, uv_sync_errors);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
