/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Sinks and the I/O stage. One thread per snapshot writes the stream: the
 * file magic and HEAD first, then finished CHNK records in the order workers
 * finish them (batched into one vectored write), then INDX and END. Only this
 * thread writes, so offsets for the index need no locking; a chunk's buffer
 * goes back to the pool once its bytes are out, which is what lets the fault
 * handler go on (backpressure).
 *
 * Writes are plain synchronous pwritev/writev calls on this thread, where
 * every signal is blocked, so a reader that went away is EPIPE, never a
 * SIGPIPE that kills the program. No event loop: the thread waits for one
 * thing (news from the workers), and libuv's loop creation aborts the whole
 * process when its first-use initialisation finds no free descriptor
 * (tests/test-limits.c nofile_edge hit it), where a snapshot must fail with
 * -EMFILE instead. File sinks write
 * to a temporary name next to the target and are closed, checked and renamed
 * over it only on success (outfile.c: the rules for files written by name): a
 * failed snapshot never leaves a file behind that could pass for one.
 * Callback sinks run the user's function on this thread, never on the fault
 * handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inject.h"
#include "latch.h"
#include "outfile.h"
#include "pool.h"
#include "sink.h"
#include "snapshot.h"
#include "uffdsnap-private.h"

/* ---- sink objects ------------------------------------------------------------ */

static struct uffdsnap_sink *sink_alloc(enum usnap_sink_kind kind)
{
	struct uffdsnap_sink *k = calloc(1, sizeof(*k));

	if (k) {
		k->kind = kind;
		k->fd = -1;
	}
	return k;
}

USNAP_EXPORT int uffdsnap_sink_file(uffdsnap_sink_t **sinkp, const char *path, mode_t mode)
{
	struct uffdsnap_sink *k;

	usnap_clear_err();
	if (!sinkp || !path || !*path)
		return usnap_err(-EINVAL, "uffdsnap_sink_file: sink and path must not be NULL or empty");
	*sinkp = NULL;
	if (mode & ~(mode_t)07777)
		return usnap_err(-EINVAL, "uffdsnap_sink_file: mode 0%o is not a permission mode", (unsigned)mode);
	k = sink_alloc(USNAP_SINK_FILE);
	if (!k || !(k->path = strdup(path))) {
		free(k);
		return usnap_err(-ENOMEM, "allocating a file sink");
	}
	k->mode = mode ? mode : 0600;
	*sinkp = k;
	return 0;
}

USNAP_EXPORT int uffdsnap_sink_fd(uffdsnap_sink_t **sinkp, int fd)
{
	struct uffdsnap_sink *k;

	usnap_clear_err();
	if (!sinkp)
		return usnap_err(-EINVAL, "uffdsnap_sink_fd: sink must not be NULL");
	*sinkp = NULL;
	if (fd < 0 || fcntl(fd, F_GETFL) < 0)
		return usnap_err(-EBADF, "uffdsnap_sink_fd: %d is not an open file descriptor", fd);
	if (!(k = sink_alloc(USNAP_SINK_FD)))
		return usnap_err(-ENOMEM, "allocating an fd sink");
	k->fd = fd;
	*sinkp = k;
	return 0;
}

USNAP_EXPORT int uffdsnap_sink_callback(uffdsnap_sink_t **sinkp, uffdsnap_write_fn fn, void *user)
{
	struct uffdsnap_sink *k;

	usnap_clear_err();
	if (!sinkp || !fn)
		return usnap_err(-EINVAL, "uffdsnap_sink_callback: sink and fn must not be NULL");
	*sinkp = NULL;
	if (!(k = sink_alloc(USNAP_SINK_CALLBACK)))
		return usnap_err(-ENOMEM, "allocating a callback sink");
	k->fn = fn;
	k->user = user;
	*sinkp = k;
	return 0;
}

int usnap_sink_open(struct uffdsnap_sink *k)
{
	if (k->kind != USNAP_SINK_FILE)
		return 0;
	k->fd = usnap_out_create(k->path, k->mode, &k->tmp_path);
	return k->fd < 0 ? k->fd : 0;
}

/* Close what the sink opened; a temporary file still there is removed. */
static void sink_release(struct uffdsnap_sink *k)
{
	if (k->kind == USNAP_SINK_FILE && k->fd >= 0) {
		close(k->fd);
		k->fd = -1;
	}
	if (k->tmp_path) {
		unlink(k->tmp_path);
		free(k->tmp_path);
		k->tmp_path = NULL;
	}
}

void usnap_sink_close(struct uffdsnap_sink *k)
{
	sink_release(k);
	free(k->path);
	free(k);
}

USNAP_EXPORT void uffdsnap_sink_free(uffdsnap_sink_t *k)
{
	if (k)
		usnap_sink_close(k);
}

/* ---- records ------------------------------------------------------------------- */

static void snap_region(void *ctx, unsigned i, const char **name, uint64_t *length)
{
	const struct usnap_reg *r = ((uffdsnap_snap_t *)ctx)->sregs[i].reg;

	*name = r->name;
	*length = r->len;
}

int usnap_build_head(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	struct usnap_head hd = { .version = s->delta ? USNAP_VERSION_DELTA : USNAP_VERSION,
				 .page_size = (uint32_t)s->page_size, .nregions = s->nregions,
				 .flags = s->delta ? USNAP_HEAD_DELTA : 0, .created_ns = s->created_ns };
	/* The region table after it equals the parent's: regions never change
	 * without ending the chain (delta.c, usnap_delta_lost). */
	struct usnap_head_delta dh = { .depth = s->depth };
	size_t len;

	memcpy(hd.snap_id, s->snap_id, sizeof(hd.snap_id));
	memcpy(dh.parent_id, s->parent_id, sizeof(dh.parent_id));
	len = usnap_head_rec_len(&hd, snap_region, s);
	io->head_len = USNAP_MAGIC_LEN + len;
	if (!(io->head_rec = malloc(io->head_len)))
		return usnap_err(-ENOMEM, "allocating the snapshot header");
	memcpy(io->head_rec, USNAP_MAGIC, USNAP_MAGIC_LEN);
	usnap_head_rec_put(io->head_rec + USNAP_MAGIC_LEN, len, &hd, &dh, snap_region, s);
	return 0;
}

static void fill_end(uffdsnap_snap_t *s, uint8_t *buf, int32_t status, uint64_t index_offset)
{
	struct usnap_io *io = &s->io;
	struct usnap_end e = { .status = status, .index_offset = index_offset, .chunks = io->nindex,
			       .pages_data = io->pages_data, .pages_zero = io->pages_zero, .bytes_raw = io->bytes_raw };

	memcpy(e.snap_id, s->snap_id, sizeof(e.snap_id));
	usnap_end_rec_put(buf, &e);
}

static int build_trailer(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	size_t ilen = usnap_index_rec_len(io->nindex);

	if (!(io->trailer = malloc(ilen + USNAP_END_LEN)))
		return -ENOMEM;
	usnap_index_rec_put(io->trailer, io->index, io->nindex);
	fill_end(s, io->trailer + ilen, 0, io->offset);
	io->trailer_len = ilen + USNAP_END_LEN;
	return 0;
}

static int index_add(struct usnap_io *io, const struct usnap_job *j)
{
	if (io->nindex == io->index_cap) {
		size_t cap = io->index_cap ? io->index_cap * 2 : 1024;
		struct usnap_index_ent *n = realloc(io->index, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		io->index = n, io->index_cap = cap;
	}
	io->index[io->nindex++] = (struct usnap_index_ent){ .offset = j->file_offset, .region = j->region,
							    .nextents = j->nextents, .first_page = j->first_page,
							    .end_page = j->end_page };
	return 0;
}

/* ---- the I/O thread -------------------------------------------------------------- */

static void add_buf(struct usnap_io *io, void *base, size_t len)
{
	io->bufs[io->nbufs++] = (struct iovec){ base, len };
}

/* A failed fd or callback stream still says why it ends, when the sink
 * itself is not what failed. */
static void write_failed_end(uffdsnap_snap_t *s)
{
	struct uffdsnap_sink *k = s->sink;
	uint8_t end[USNAP_END_LEN];
	size_t off = 0;

	fill_end(s, end, usnap_latch_err(&s->fail), 0);
	if (k->kind == USNAP_SINK_CALLBACK) {
		k->fn(k->user, end, sizeof(end));
		return;
	}
	while (off < sizeof(end)) {
		ssize_t n = write(k->fd, end + off, sizeof(end) - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

static void io_finish(uffdsnap_snap_t *s, bool ok)
{
	struct usnap_io *io = &s->io;
	struct uffdsnap_sink *k = s->sink;

	io->finished = true;
	if (ok && !usnap_latch_close(&s->fail))
		ok = false;
	if (ok && k->kind == USNAP_SINK_FILE) {
		/* Committed: the latch is closed, only this thread may reopen it.
		 * The commit closes the file (checked) before the rename and
		 * unlinks it if anything fails: uffdsnap_wait() returns that error. */
		char msg[sizeof(s->fail.msg)];
		int rc = usnap_out_commit(k->fd, k->tmp_path, k->path, s->flags & UFFDSNAP_OPT_FSYNC, msg,
					  sizeof(msg));

		k->fd = -1;
		free(k->tmp_path);
		k->tmp_path = NULL;
		if (rc) {
			usnap_latch_reopen(&s->fail, rc, msg);
			ok = false;
		}
	}
	if (!ok && k->kind != USNAP_SINK_FILE && io->head_written && !io->sink_failed)
		write_failed_end(s);
	sink_release(k);
	atomic_store(&s->stats.end_ns, usnap_now_ns());
}

/* Account n bytes written; when the batch is out, release its buffers. */
static void io_complete(uffdsnap_snap_t *s, ssize_t n)
{
	struct usnap_io *io = &s->io;

	if (n <= 0) {
		io->sink_failed = true;
		usnap_fail(s, n < 0 ? (int)n : -EIO, "writing %s at offset %" PRIu64 ": %s",
			   s->sink->path ? s->sink->path : "the snapshot", io->offset,
			   n < 0 ? strerror((int)-n) : "the sink accepted no bytes");
		return;
	}
	io->offset += (uint64_t)n;
	atomic_fetch_add(&s->stats.bytes_out, (uint64_t)n);
	while (n > 0 && io->buf_first < io->nbufs) {
		struct iovec *b = &io->bufs[io->buf_first];
		if ((size_t)n >= b->iov_len) {
			n -= (ssize_t)b->iov_len;
			io->buf_first++;
		} else {
			b->iov_base = (uint8_t *)b->iov_base + n;
			b->iov_len -= (size_t)n;
			n = 0;
		}
	}
	if (io->buf_first < io->nbufs)
		return; /* short write: the rest goes next */
	for (unsigned i = 0; i < io->nbatch; i++) {
		struct usnap_job *j = io->batch[i];
		if (index_add(io, j)) {
			usnap_fail(s, -ENOMEM, "growing the chunk index");
			break;
		}
		io->pages_data += j->data_pages;
		io->pages_zero += j->zero_pages;
		io->bytes_raw += (uint64_t)j->data_pages * s->page_size;
		atomic_fetch_add(&s->stats.chunks, 1);
	}
	for (unsigned i = 0; i < io->nbatch; i++)
		usnap_job_put(s, io->batch[i]);
	io->nbatch = io->nbufs = io->buf_first = 0;
}

static void io_submit(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	struct uffdsnap_sink *k = s->sink;
	struct iovec *bufs = io->bufs + io->buf_first;
	unsigned n = io->nbufs - io->buf_first;
	ssize_t done = 0;
	int r;

	if (usnap_inject_write(&bufs, &n, &done)) return io_complete(s, done); /* tests only: inject.h */
	if (k->kind == USNAP_SINK_CALLBACK) {
		for (unsigned i = 0; i < n && done >= 0; i++) {
			r = k->fn(k->user, bufs[i].iov_base, bufs[i].iov_len);
			done = r ? (r < 0 ? r : -EIO) : done + (ssize_t)bufs[i].iov_len;
		}
	} else {
		/* EINTR: a signal the program sent this thread (all are blocked
		 * here, but a stop/continue still interrupts); write again. */
		do
			done = k->kind == USNAP_SINK_FILE ? pwritev(k->fd, bufs, (int)n, (off_t)io->offset)
			     : n == 1 ? write(k->fd, bufs[0].iov_base, bufs[0].iov_len) : writev(k->fd, bufs, (int)n);
		while (done < 0 && errno == EINTR);
		if (done < 0)
			done = -errno;
	}
	io_complete(s, done);
}

static void sync_sink(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	int r;

	io->synced = true;
	r = fsync(s->sink->fd) ? -errno : 0;
	/* pipes and sockets cannot be synced: there is nothing to make durable */
	if (s->sink->kind == USNAP_SINK_FD && (r == -EINVAL || r == -EROFS || r == -ENOTSUP))
		r = 0;
	if (r < 0) {
		io->sink_failed = true;
		usnap_fail(s, r, "fsync of the snapshot: %s", strerror(-r));
	}
}

/* Make the next batch ready; false when there is nothing to write now. */
static bool io_prepare(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	struct usnap_job *j;

	if (atomic_load(&s->abort)) {
		io_finish(s, false);
		return false;
	}
	if (io->buf_first < io->nbufs)
		return true; /* the rest of a short write */
	if (!atomic_load(&s->go))
		return false;
	if (!io->head_written) {
		add_buf(io, io->head_rec, io->head_len);
		io->head_written = true;
	}
	pthread_mutex_lock(&io->lock);
	while ((j = io->q_head) && io->nbufs + j->nparts <= sizeof(io->bufs) / sizeof(io->bufs[0])) {
		if (!(io->q_head = j->next))
			io->q_tail = NULL;
		j->file_offset = io->offset;
		for (unsigned i = 0; i < io->nbufs; i++)
			j->file_offset += io->bufs[i].iov_len;
		io->batch[io->nbatch++] = j;
		for (unsigned i = 0; i < j->nparts; i++)
			add_buf(io, (void *)j->part[i].p, j->part[i].len);
	}
	bool drained = io->producers_done && !io->q_head;
	pthread_mutex_unlock(&io->lock);
	if (io->nbufs)
		return true;
	if (!drained)
		return false;
	if (!io->trailer_written) {
		if (build_trailer(s)) {
			usnap_fail(s, -ENOMEM, "allocating the snapshot index");
			return false;
		}
		add_buf(io, io->trailer, io->trailer_len);
		io->trailer_written = true;
		return true;
	}
	if ((s->flags & UFFDSNAP_OPT_FSYNC) && s->sink->kind != USNAP_SINK_CALLBACK && !io->synced) {
		sync_sink(s);
		if (atomic_load(&s->abort))
			return false; /* the failure's wake-up finishes */
	}
	io_finish(s, true);
	return false;
}

static void io_step(uffdsnap_snap_t *s)
{
	while (!s->io.finished && io_prepare(s))
		io_submit(s);
}

static void *io_main(void *arg)
{
	uffdsnap_snap_t *s = arg;
	struct usnap_io *io = &s->io;

	while (!io->finished) {
		pthread_mutex_lock(&io->lock);
		while (!io->kicked)
			pthread_cond_wait(&io->cv, &io->lock);
		io->kicked = false;
		pthread_mutex_unlock(&io->lock);
		io_step(s);
	}
	return NULL;
}

void usnap_io_init(struct usnap_io *io)
{
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->cv, NULL);
}

void usnap_io_destroy(struct usnap_io *io)
{
	free(io->head_rec);
	free(io->trailer);
	free(io->index);
	pthread_mutex_destroy(&io->lock);
	pthread_cond_destroy(&io->cv);
}

int usnap_io_start(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	int r = usnap_thread_start(&io->thread, io_main, s, "usnap-io");

	if (r)
		return usnap_err(r, "starting the I/O thread: %s", strerror(-r));
	io->thread_started = true;
	return 0;
}

/* News for the I/O thread: a record, the end of the producers, go, a failure. */
void usnap_io_kick(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;

	pthread_mutex_lock(&io->lock);
	io->kicked = true;
	pthread_cond_signal(&io->cv);
	pthread_mutex_unlock(&io->lock);
}

void usnap_io_push(uffdsnap_snap_t *s, struct usnap_job *j)
{
	struct usnap_io *io = &s->io;

	j->next = NULL;
	pthread_mutex_lock(&io->lock);
	if (io->q_tail)
		io->q_tail->next = j;
	else
		io->q_head = j;
	io->q_tail = j;
	pthread_mutex_unlock(&io->lock);
	usnap_io_kick(s);
}

void usnap_io_producers_done(uffdsnap_snap_t *s)
{
	pthread_mutex_lock(&s->io.lock);
	s->io.producers_done = true;
	pthread_mutex_unlock(&s->io.lock);
	usnap_io_kick(s);
}

void usnap_io_join(uffdsnap_snap_t *s)
{
	struct usnap_io *io = &s->io;
	struct usnap_job *j;

	if (io->thread_started) {
		pthread_join(io->thread, NULL);
		io->thread_started = false;
	}
	/* Records finished after the I/O stage stopped (failure): back to the pool. */
	while ((j = io->q_head)) {
		io->q_head = j->next;
		usnap_job_put(s, j);
	}
	io->q_tail = NULL;
	for (unsigned i = 0; i < io->nbatch; i++)
		usnap_job_put(s, io->batch[i]);
	io->nbatch = 0;
	if (!atomic_load(&s->stats.end_ns))
		atomic_store(&s->stats.end_ns, usnap_now_ns());
}
