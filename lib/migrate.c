/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration, what both sides share (docs/migration.md): the options,
 * the frame codec (migrate.h) and the transport, a libuv loop per side on the
 * caller's socket (migrate-private.h, struct usnap_mig_link). The sender is
 * migrate-send.c, the receiver migrate-recv.c, post-copy migrate-postcopy.c.
 *
 * Each side's thread owns its loop and drives it until what it waits for
 * has happened (a frame, an empty write queue, a pacing delay): the loop
 * multiplexes the socket's two directions, the peer's silence (a timer), the
 * owner's own delays (a second timer), a cancel from another thread (an
 * async handle) and, on a post-copy receiver, the userfaultfd (a poll
 * handle). Callbacks only record (a frame parsed, an error latched); the
 * owner's code, which may block on the loop, is never re-entered from them.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "migrate-private.h"

uint32_t usnap_mig_crc(const struct usnap_mig_hdr *hdr, const void *payload, uint32_t len)
{
	struct usnap_mig_hdr h = *hdr;

	h.crc = 0;
	return usnap_crc32c(usnap_crc32c(0, &h, sizeof(h)), payload, len);
}

/* ---- options -------------------------------------------------------------------------- */

static void migrate_defaults(uffdsnap_migrate_opts_t *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->max_downtime_us = UFFDSNAP_MIGRATE_DOWNTIME_US;
	o->max_rounds = UFFDSNAP_MIGRATE_ROUNDS;
}

USNAP_EXPORT void uffdsnap_migrate_opts_init_size(uffdsnap_migrate_opts_t *opts, size_t size)
{
	uffdsnap_migrate_opts_t d;

	migrate_defaults(&d);
	usnap_opts_fill(opts, size, &d, sizeof(d));
}

/* The caller's options over the defaults, only as far as its struct goes. */
int usnap_mig_opts_take(uffdsnap_migrate_opts_t *o, const uffdsnap_migrate_opts_t *in)
{
	migrate_defaults(o);
	if (!in)
		return 0;
	if (usnap_check_size("uffdsnap_migrate", "uffdsnap_migrate_opts_t", in->size,
			     USNAP_SIZE_UPTO(uffdsnap_migrate_opts_t, flags), sizeof(*o)))
		return -EINVAL;
	memcpy(o, in, in->size);
	o->size = sizeof(*o);
	if (!o->max_downtime_us)
		o->max_downtime_us = UFFDSNAP_MIGRATE_DOWNTIME_US;
	if (!o->max_rounds)
		o->max_rounds = UFFDSNAP_MIGRATE_ROUNDS;
	if (o->max_rounds > UFFDSNAP_MIGRATE_MAX_ROUNDS)
		return usnap_err(-EINVAL, "migrate options: max_rounds %u is above %d", o->max_rounds,
				 UFFDSNAP_MIGRATE_MAX_ROUNDS);
	if (o->flags & ~(UFFDSNAP_MIGRATE_POSTCOPY | UFFDSNAP_MIGRATE_COMPRESS))
		return usnap_err(-EINVAL, "migrate options: unknown flags 0x%x", o->flags);
	return 0;
}

int usnap_mig_latch(struct usnap_latch *l, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_latch_vset(l, err, fmt, ap);
	va_end(ap);
	return err;
}

int usnap_mig_result(struct usnap_latch *l, int r)
{
	if (!r) {
		usnap_latch_close(l);
		return 0;
	}
	usnap_latch_set(l, r, "%s", strerror(-r)); /* the first error stays */
	return usnap_latch_err(l);
}

/* Wait for a sender's or receiver's thread, once, from any number of callers. */
void usnap_mig_join_once(pthread_mutex_t *lock, bool *joined, pthread_t t)
{
	pthread_mutex_lock(lock);
	if (!*joined) {
		pthread_join(t, NULL);
		*joined = true;
	}
	pthread_mutex_unlock(lock);
}

/* ---- frames ---------------------------------------------------------------------------- */

ssize_t usnap_mig_parse(const uint8_t *p, size_t n, size_t cap, struct usnap_mig_hdr *h, char *why, size_t why_len)
{
	if (n < sizeof(*h))
		return 0;
	memcpy(h, p, sizeof(*h));
	if (h->magic != USNAP_MIG_MAGIC || h->flags) {
		usnap_format(why, why_len, "not a migration frame (magic 0x%08x flags 0x%x)", h->magic, h->flags);
		return -EBADMSG;
	}
	if (h->len > cap) {
		usnap_format(why, why_len, "frame of type %u claims %u bytes; the limit is %zu", h->type, h->len, cap);
		return -EBADMSG;
	}
	if (n - sizeof(*h) < h->len)
		return 0;
	if (usnap_mig_crc(h, p + sizeof(*h), h->len) != h->crc) {
		usnap_format(why, why_len, "frame of type %u, %u bytes: checksum mismatch", h->type, h->len);
		return -EBADMSG;
	}
	return (ssize_t)(sizeof(*h) + h->len);
}

/* ---- pacing ---------------------------------------------------------------------------- */

void usnap_mig_pacer_init(struct usnap_mig_pacer *p, uint64_t bytes_per_s, uint64_t now_ns)
{
	p->rate = (double)bytes_per_s / 1e9;
	p->cap = p->rate * USNAP_MIG_PACE_CAP_MS * 1e6;
	p->credit = 0;
	p->last_ns = now_ns;
}

uint64_t usnap_mig_pacer_take(struct usnap_mig_pacer *p, uint64_t now_ns, uint64_t bytes)
{
	if (p->rate <= 0)
		return 0;
	if (now_ns > p->last_ns) {
		p->credit += (double)(now_ns - p->last_ns) * p->rate;
		p->last_ns = now_ns;
	}
	if (p->credit > p->cap)
		p->credit = p->cap;
	if (p->credit < 0)
		return (uint64_t)(-p->credit / p->rate) + 1;
	p->credit -= (double)bytes;
	return 0;
}

/* ---- the transport ------------------------------------------------------------------------ */

struct usnap_mig_link {
	uv_loop_t loop;
	union {
		uv_stream_t s;
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} h;
	uv_timer_t idle, wake;
	uv_async_t cancel;
	uv_poll_t watch;
	void (*watch_cb)(void *);
	void *watch_arg;
	int fd_flags;                 /* the caller's file flags, put back at the close */
	bool woke, reading, watching;
	uv_handle_t *open_handles[5];
	unsigned nhandles, closing;
	/* cancel (any thread) against close (the owner): uv_async_send on a
	 * closed handle is undefined */
	pthread_mutex_t open_lock;
	bool open;
	struct usnap_latch *latch;
	const char *peer;             /* "the receiver", "the sender": for messages */
	/* the peer's bytes: rx[rx_off, rx_len) not yet delimited into frames */
	uint8_t *rx;
	size_t rx_cap, rx_len, rx_off, frame_cap;
	int (*on_frame)(void *owner, const struct usnap_mig_hdr *h, const uint8_t *payload);
	void *owner;
	_Atomic uint64_t *wire;
};

static int link_fail(struct usnap_mig_link *l, int err, const char *what)
{
	/* libuv's errors are -errno on Linux, but for the end of the stream */
	if (err == UV_EOF)
		usnap_latch_set(l->latch, -EPIPE, "%s closed the connection", l->peer);
	else
		usnap_latch_set(l->latch, err, "%s %s: %s", what, l->peer, uv_strerror(err));
	return err == UV_EOF ? -EPIPE : err;
}

static void alive(struct usnap_mig_link *l)
{
	uv_timer_again(&l->idle);
}

static void on_idle(uv_timer_t *t)
{
	struct usnap_mig_link *l = t->data;

	usnap_latch_set(l->latch, -ETIMEDOUT, "%s was silent for %d s", l->peer, USNAP_MIG_IDLE_MS / 1000);
}

static void on_wake(uv_timer_t *t)
{
	struct usnap_mig_link *l = t->data;

	l->woke = true;
}

static void on_cancel(uv_async_t *a)
{
	struct usnap_mig_link *l = a->data;

	usnap_latch_set(l->latch, -ECANCELED, "cancelled");
}

static void on_watch(uv_poll_t *p, int status, int events)
{
	struct usnap_mig_link *l = p->data;

	(void)status, (void)events;
	l->watch_cb(l->watch_arg);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct usnap_mig_link *l = h->data;

	(void)hint;
	/* what is left of a frame moves to the front once the room behind it
	 * cannot hold a whole one: each byte is moved at most once */
	if (l->rx_cap - l->rx_len < l->frame_cap + sizeof(struct usnap_mig_hdr)) {
		memmove(l->rx, l->rx + l->rx_off, l->rx_len - l->rx_off);
		l->rx_len -= l->rx_off;
		l->rx_off = 0;
	}
	*buf = uv_buf_init((char *)l->rx + l->rx_len, (unsigned)(l->rx_cap - l->rx_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct usnap_mig_link *l = s->data;
	char why[256];

	(void)buf;
	if (n > 0) {
		l->rx_len += (size_t)n;
		alive(l);
	}
	/* frames before an error: what came before a hang-up is taken */
	while (l->reading && usnap_latch_err(l->latch) >= 0) {
		struct usnap_mig_hdr h;
		ssize_t k = usnap_mig_parse(l->rx + l->rx_off, l->rx_len - l->rx_off, l->frame_cap, &h, why,
					    sizeof(why));
		if (k < 0)
			usnap_latch_set(l->latch, -EBADMSG, "%s sent a bad frame: %s", l->peer, why);
		if (k <= 0)
			break;
		l->rx_off += (size_t)k;
		if (l->on_frame(l->owner, &h, l->rx + l->rx_off - h.len) < 0)
			usnap_latch_set(l->latch, -EIO, "a frame from %s could not be taken", l->peer);
	}
	if (l->rx_off == l->rx_len)
		l->rx_off = l->rx_len = 0;
	if (n < 0 && l->reading) {
		if (l->rx_len)
			usnap_latch_set(l->latch, n == UV_EOF ? -EPIPE : (int)n, "%s sent a frame cut short: %s", l->peer,
					n == UV_EOF ? "the connection closed" : uv_strerror((int)n));
		link_fail(l, (int)n, "reading from");
	}
	if (usnap_latch_err(l->latch) < 0)
		usnap_mig_stop_reading(l);
}

void usnap_mig_stop_reading(struct usnap_mig_link *l)
{
	if (l->reading)
		uv_read_stop(&l->h.s);
	l->reading = false;
}

struct mig_wreq {
	uv_write_t req;
	struct usnap_mig_link *l;
	size_t bytes;
	struct usnap_mig_hdr h;
	uint8_t head[32];
};

static void on_written(uv_write_t *w, int status)
{
	struct mig_wreq *q = (struct mig_wreq *)w;
	struct usnap_mig_link *l = q->l;

	if (status == 0) {
		*l->wire += q->bytes;
		alive(l);
	} else if (status != UV_ECANCELED) {
		link_fail(l, status, "sending to");
	}
	free(q);
}

int usnap_mig_write(struct usnap_mig_link *l, uint16_t type, const void *head, uint32_t head_len, const void *data,
		    uint32_t data_len)
{
	struct mig_wreq *q;
	uv_buf_t b[3];
	int r;

	/* not refused after a failure: a receiver's refusal is sent then */
	if (head_len > sizeof(q->head) || !(q = malloc(sizeof(*q)))) {
		usnap_latch_set(l->latch, -ENOMEM, "a frame for %s", l->peer);
		return -ENOMEM;
	}
	q->l = l;
	q->h = (struct usnap_mig_hdr){ .magic = USNAP_MIG_MAGIC, .type = type, .len = head_len + data_len };
	if (head_len)
		memcpy(q->head, head, head_len);
	q->h.crc = usnap_crc32c(usnap_mig_crc(&q->h, q->head, head_len), data, data_len);
	q->bytes = sizeof(q->h) + head_len + data_len;
	b[0] = uv_buf_init((char *)&q->h, sizeof(q->h));
	b[1] = uv_buf_init((char *)q->head, head_len);
	b[2] = uv_buf_init((char *)data, data_len);
	r = uv_write(&q->req, &l->h.s, b, data_len ? 3 : 2, on_written);
	if (r) {
		free(q);
		return link_fail(l, r, "sending to");
	}
	return 0;
}

/* Bytes libuv holds for the socket that the kernel has not taken yet. */
static size_t queued(const struct usnap_mig_link *l)
{
	return uv_stream_get_write_queue_size(&l->h.s);
}

int usnap_mig_turn(struct usnap_mig_link *l, bool wait)
{
	int r = usnap_latch_err(l->latch);

	if (r < 0)
		return r;
	uv_run(&l->loop, wait ? UV_RUN_ONCE : UV_RUN_NOWAIT);
	r = usnap_latch_err(l->latch);
	return r < 0 ? r : 0;
}

int usnap_mig_flush(struct usnap_mig_link *l)
{
	int r = 0;

	while (!r && queued(l))
		r = usnap_mig_turn(l, true);
	return r;
}

/*
 * The wake timer repeats: uv_run(UV_RUN_ONCE) first runs the timers that are
 * due and then polls with the next timer's deadline. A one-shot timer that
 * fell due before that poll (the thread was descheduled, or busy since the
 * loop's clock was last read) fired at the top and left the poll with no
 * deadline at all: test-migrate writer_exact hung in 6 of ~45 runs, the
 * sender asleep in epoll_wait(-1) with its pacing delay long past.
 */
void usnap_mig_wake_in(struct usnap_mig_link *l, uint64_t ms)
{
	if (uv_is_active((uv_handle_t *)&l->wake))
		return;
	l->woke = false;
	uv_timer_start(&l->wake, on_wake, ms, ms);
}

void usnap_mig_wake_stop(struct usnap_mig_link *l)
{
	uv_timer_stop(&l->wake);
}

int usnap_mig_sleep(struct usnap_mig_link *l, uint64_t ms)
{
	int r = 0;

	/* our own wait is not the peer's silence */
	uv_timer_stop(&l->idle);
	usnap_mig_wake_stop(l);
	usnap_mig_wake_in(l, ms);
	while (!r && !l->woke)
		r = usnap_mig_turn(l, true);
	usnap_mig_wake_stop(l);
	alive(l);
	return r;
}

int usnap_mig_watch(struct usnap_mig_link *l, int fd, void (*cb)(void *), void *arg)
{
	int r = uv_poll_init(&l->loop, &l->watch, fd);

	if (r)
		return r;
	l->watch.data = l;
	l->watch_cb = cb, l->watch_arg = arg;
	l->open_handles[l->nhandles++] = (uv_handle_t *)&l->watch;
	l->watching = true;
	return uv_poll_start(&l->watch, UV_READABLE, on_watch);
}

void usnap_mig_unwatch(struct usnap_mig_link *l)
{
	if (l->watching)
		uv_poll_stop(&l->watch);
	l->watching = false;
}

/*
 * Small frames (ROUND_END, ACK) follow large ones: with Nagle's algorithm a
 * ROUND_END would wait for the ACK of the data before it, and the peer's
 * delayed ACK for it, up to 40 ms of downtime.
 */
static void no_delay(int sock)
{
	int one = 1;

	(void)setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* The loop and its handles but the stream; 0 or a libuv error. */
static int link_loop(struct usnap_mig_link *l)
{
	int r = uv_loop_init(&l->loop);

	if (r)
		return r;
	l->open = true;
	if ((r = uv_async_init(&l->loop, &l->cancel, on_cancel)))
		return r;
	uv_timer_init(&l->loop, &l->idle); /* cannot fail on Linux */
	uv_timer_init(&l->loop, &l->wake);
	l->cancel.data = l->idle.data = l->wake.data = l;
	l->open_handles[l->nhandles++] = (uv_handle_t *)&l->cancel;
	l->open_handles[l->nhandles++] = (uv_handle_t *)&l->idle;
	l->open_handles[l->nhandles++] = (uv_handle_t *)&l->wake;
	uv_timer_start(&l->idle, on_idle, USNAP_MIG_IDLE_MS, USNAP_MIG_IDLE_MS);
	return 0;
}

/*
 * A close-on-exec duplicate of fd. ThreadSanitizer sees the ordering a
 * socketpair's writes and reads give (the sender's switchover callback
 * before the receiver's program reads the memory) only on descriptors it
 * knows belong to the pair, and it learns that from dup(), not from
 * fcntl(F_DUPFD_CLOEXEC): under it, dup() then FD_CLOEXEC (a window in
 * which a concurrent exec could inherit the duplicate); otherwise the atomic
 * call.
 */
static int dup_cloexec(int fd)
{
#ifdef __SANITIZE_THREAD__
	int d = dup(fd);

	if (d >= 0)
		(void)fcntl(d, F_SETFD, FD_CLOEXEC);
	return d;
#else
	return fcntl(fd, F_DUPFD_CLOEXEC, 0);
#endif
}

/* The socket as a stream: TCP as TCP, any other stream socket (unix,
 * vsock) as a byte stream. libuv closes the descriptor it is given. */
static int link_stream(struct usnap_mig_link *l, int sock)
{
	uv_handle_type t = uv_guess_handle(sock);
	int type = 0, fd, r;
	socklen_t tl = sizeof(type);

	if (t != UV_TCP && (t == UV_UDP || getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM))
		return usnap_err(-ENOTSOCK, "descriptor %d is not a connected stream socket", sock);
	if ((l->fd_flags = fcntl(sock, F_GETFL)) < 0 || (fd = dup_cloexec(sock)) < 0)
		return usnap_err(-errno, "descriptor %d: %s", sock, strerror(errno));
	if (t == UV_TCP)
		no_delay(sock);
	r = t == UV_TCP ? uv_tcp_init(&l->loop, &l->h.tcp) : uv_pipe_init(&l->loop, &l->h.pipe, 0);
	if (r) {
		close(fd);
		return usnap_err(r, "a libuv stream: %s", uv_strerror(r));
	}
	l->h.s.data = l;
	l->open_handles[l->nhandles++] = (uv_handle_t *)&l->h.s;
	r = t == UV_TCP ? uv_tcp_open(&l->h.tcp, fd) : uv_pipe_open(&l->h.pipe, fd);
	if (r) {
		close(fd);
		return usnap_err(r, "descriptor %d as a libuv stream: %s", sock, uv_strerror(r));
	}
	if ((r = uv_read_start(&l->h.s, on_alloc, on_read)))
		return usnap_err(r, "reading descriptor %d: %s", sock, uv_strerror(r));
	l->reading = true;
	return 0;
}

/*
 * The first libuv loop of the process makes a process-wide pipe for its
 * signal handling and calls abort() if pipe2 fails (docs/reliability.md,
 * bug 14): with the descriptor limit reached a migration must fail with
 * -EMFILE, not end the program. A pipe made and closed first proves that two
 * descriptors are free (the loop's own epoll and eventfd fail cleanly).
 */
static int fds_free(void)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC))
		return usnap_err(-errno, "no descriptors left for the connection's event loop: %s", strerror(errno));
	close(p[0]);
	close(p[1]);
	return 0;
}

int usnap_mig_link_open(struct usnap_mig_link **lp, int sock, size_t frame_cap, struct usnap_latch *latch,
			const char *peer, int (*on_frame)(void *, const struct usnap_mig_hdr *, const uint8_t *),
			void *owner, _Atomic uint64_t *wire)
{
	struct usnap_mig_link *l = calloc(1, sizeof(*l));
	int r;

	*lp = l;
	if (!l)
		return usnap_err(-ENOMEM, "the connection's state");
	pthread_mutex_init(&l->open_lock, NULL);
	l->fd_flags = -1;
	l->latch = latch, l->peer = peer, l->frame_cap = frame_cap;
	l->on_frame = on_frame, l->owner = owner, l->wire = wire;
	l->rx_cap = 2 * (frame_cap + sizeof(struct usnap_mig_hdr));
	l->rx = mmap(NULL, l->rx_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (l->rx == MAP_FAILED) {
		l->rx = NULL;
		return usnap_err(-ENOMEM, "the receive buffer");
	}
	if ((r = fds_free()))
		return r;
	if ((r = link_loop(l)))
		return usnap_err(r, "a libuv loop: %s", uv_strerror(r));
	return link_stream(l, sock);
}

static void on_closed(uv_handle_t *h)
{
	struct usnap_mig_link *l = h->data;

	l->closing--;
}

void usnap_mig_link_cancel(struct usnap_mig_link *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->open_lock);
	if (l->open)
		uv_async_send(&l->cancel);
	pthread_mutex_unlock(&l->open_lock);
}

void usnap_mig_link_close(struct usnap_mig_link *l)
{
	uv_os_fd_t fd;
	bool was_open;

	if (!l)
		return;
	pthread_mutex_lock(&l->open_lock);
	was_open = l->open;
	l->open = false;
	pthread_mutex_unlock(&l->open_lock);
	if (!was_open)
		return;
	/* the caller's flags back on the description libuv made non-blocking */
	if (l->fd_flags >= 0 && l->nhandles > 3 && !uv_fileno((uv_handle_t *)&l->h.s, &fd))
		(void)fcntl(fd, F_SETFL, l->fd_flags);
	for (unsigned i = 0; i < l->nhandles; i++) {
		l->closing++;
		uv_close(l->open_handles[i], on_closed);
	}
	l->nhandles = 0;
	while (l->closing)
		uv_run(&l->loop, UV_RUN_ONCE);
	uv_loop_close(&l->loop);
}

void usnap_mig_link_free(struct usnap_mig_link *l)
{
	if (!l)
		return;
	usnap_mig_link_close(l);
	if (l->rx)
		munmap(l->rx, l->rx_cap);
	pthread_mutex_destroy(&l->open_lock);
	free(l);
}
