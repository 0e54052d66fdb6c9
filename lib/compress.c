/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Compression workers: turn a chunk of copied pages into a finished CHNK
 * record. All-zero pages are found here (off the fault path) and recorded as
 * ZERO extents without data; with UFFDSNAP_OPT_DELTA every page is
 * fingerprinted here too, and a delta leaves out the pages whose fingerprint
 * is the parent's (delta.c); the remaining pages are fed to zstd run by run
 * (no gather copy), or stored raw when zstd does not make them smaller, or,
 * with UFFDSNAP_OPT_ADAPT, while a write fault waits for a buffer: the writer
 * then waits for a memcpy instead of zstd. The record's CRC-32C is computed
 * here too, so the I/O thread only writes.
 *
 * Chunks copied for writers (fault chunks) are taken before sweep chunks:
 * their buffers are the ones a blocked writer may be waiting to reuse.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "compress.h"
#include "pool.h"
#include "sink.h"
#include "snapshot.h"
#include "uffdsnap-private.h"

struct run {
	const uint8_t *p;
	size_t len;
};

/*
 * Fingerprint page `page` of the job's region (fp: its table, NULL without
 * UFFDSNAP_OPT_DELTA) as h; true if a delta leaves it out: the parent's
 * fingerprint is the same. Each page is recorded once per snapshot, so this
 * worker is the only one reading and writing its slot now.
 */
static bool unchanged(const uffdsnap_snap_t *s, uint64_t *fp, uint64_t page, uint64_t h)
{
	bool same;

	if (!fp)
		return false;
	same = fp[page] == h;
	fp[page] = h;
	return same && s->delta;
}

/*
 * Rewrite the handler's extents into `out`, splitting DATA extents at zero
 * pages and, in a delta, leaving out unchanged pages. Returns the extent
 * count; the data pages left are described by runs. At most one extent per
 * DATA page plus one per ZERO extent of the handler's, as without deltas: a
 * hole extent is left out only whole (one page of it the parent had not as
 * zeros keeps all of it: a ZERO extent costs no data).
 */
static uint32_t split_zero(uffdsnap_snap_t *s, struct usnap_job *j, struct usnap_extent *out, struct run *runs,
			   size_t *nruns, uint64_t *zero_found)
{
	const size_t ps = s->page_size;
	const uint8_t *raw = j->raw;
	uint64_t *fp = s->sregs[j->region].fp, left_out = 0;
	uint32_t n = 0;

	*nruns = 0;
	*zero_found = 0;
	for (uint32_t e = 0; e < j->nextents; e++) {
		const struct usnap_extent *x = &j->ext[e];

		if (x->kind == USNAP_EXT_ZERO) {
			bool same = true;

			for (uint32_t i = 0; fp && i < x->npages; i++)
				same &= unchanged(s, fp, x->first_page + i, s->zero_fp);
			if (fp && same && s->delta)
				left_out += x->npages;
			else
				out[n++] = *x;
			continue;
		}
		for (uint32_t i = 0; i < x->npages; i++, raw += ps) {
			bool zero = usnap_page_is_zero(raw, ps);
			uint32_t kind = zero ? USNAP_EXT_ZERO : USNAP_EXT_DATA;
			struct usnap_extent *last = n ? &out[n - 1] : NULL;

			if (fp && unchanged(s, fp, x->first_page + i, zero ? s->zero_fp : usnap_fingerprint(raw, ps))) {
				left_out++;
				continue;
			}
			if (zero)
				(*zero_found)++;
			if (last && last->kind == kind && last->first_page + last->npages == x->first_page + i) {
				last->npages++;
			} else {
				out[n++] = (struct usnap_extent){ .first_page = x->first_page + i, .npages = 1,
								  .kind = kind };
			}
			if (kind == USNAP_EXT_DATA) {
				if (*nruns && runs[*nruns - 1].p + runs[*nruns - 1].len == raw)
					runs[*nruns - 1].len += ps;
				else
					runs[(*nruns)++] = (struct run){ raw, ps };
			}
		}
	}
	if (left_out)
		atomic_fetch_add(&s->stats.pages_unchanged, left_out);
	return n;
}

static int compress_runs(ZSTD_CCtx *cc, const struct run *runs, size_t nruns, size_t total, uint8_t *dst,
			 size_t cap, size_t *outlen)
{
	ZSTD_outBuffer ob = { dst, cap, 0 };
	size_t r;

	ZSTD_CCtx_reset(cc, ZSTD_reset_session_only);
	ZSTD_CCtx_setPledgedSrcSize(cc, total);
	for (size_t i = 0; i < nruns; i++) {
		ZSTD_inBuffer ib = { runs[i].p, runs[i].len, 0 };
		while (ib.pos < ib.size) {
			r = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_continue);
			if (ZSTD_isError(r))
				return -EIO;
		}
	}
	do {
		ZSTD_inBuffer ib = { NULL, 0, 0 };
		r = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
		if (ZSTD_isError(r))
			return -EIO;
	} while (r);
	*outlen = ob.pos;
	return 0;
}

/*
 * UFFDSNAP_OPT_ADAPT: chunks are stored raw until this long after a fault
 * last waited for a buffer. A writer that waited once is about to again;
 * switching back to zstd the moment one buffer came free made the next
 * fault wait for zstd anyway (1 GiB random writer: window 0.83-0.96 s with
 * no hold, 0.51-0.72 s with 20 ms, loaded VM). At least the next chunk
 * compressed after a wait is raw, however late: on a busy machine a worker
 * may not run within the hold (a test saw a 38 ms wait and no raw chunk).
 */
#define ADAPT_HOLD_NS 20000000ull

void usnap_compress_starved(uffdsnap_snap_t *s)
{
	if (!(s->flags & UFFDSNAP_OPT_ADAPT))
		return;
	atomic_store(&s->cq.starved_until_ns, usnap_now_ns() + ADAPT_HOLD_NS);
	atomic_store(&s->cq.starved_owed, true);
}

/* Store this chunk raw: a fault waited for a buffer lately, or since the
 * last raw chunk. */
static bool starved(uffdsnap_snap_t *s)
{
	bool owed;

	if (!(s->flags & UFFDSNAP_OPT_ADAPT))
		return false;
	owed = atomic_exchange(&s->cq.starved_owed, false);
	return owed || usnap_now_ns() < atomic_load(&s->cq.starved_until_ns);
}

static int build_record(uffdsnap_snap_t *s, ZSTD_CCtx *cc, struct usnap_job *j, struct run *runs)
{
	struct usnap_rec_hdr *rh = (struct usnap_rec_hdr *)j->out;
	struct usnap_chunk *ch = (struct usnap_chunk *)(rh + 1);
	struct usnap_extent *ext = (struct usnap_extent *)(ch + 1);
	static const uint8_t zero_pad[8];
	size_t nruns, data_bytes = 0, stored = 0, payload_cap, head;
	uint64_t zero_found, zero_pages = 0;
	uint32_t flags = 0, n;
	uint8_t *payload;
	bool in_place = false;
	int r;

	n = split_zero(s, j, ext, runs, &nruns, &zero_found);
	if (!n) {
		j->nextents = 0; /* a delta's chunk with every page unchanged: nothing to write */
		return 0;
	}
	for (size_t i = 0; i < nruns; i++)
		data_bytes += runs[i].len;
	payload = (uint8_t *)(ext + n);
	head = (size_t)(payload - j->out);
	payload_cap = s->jobs.pool->out_cap - head;
	if (data_bytes && !starved(s)) {
		r = compress_runs(cc, runs, nruns, data_bytes, payload, payload_cap, &stored);
		if (r)
			return r;
		if (stored < data_bytes)
			flags = USNAP_CHNK_ZSTD;
	}
	if (data_bytes && !flags) {
		/* Stored as copied. The pages are written from the raw buffer
		 * itself, after the head: copying them behind it would be one
		 * more pass over every byte, and uncompressed chunks are what
		 * UFFDSNAP_OPT_ADAPT makes to be fast. A chunk cut into more runs
		 * (by zero pages) than a job has parts is gathered, and so is every
		 * chunk for a callback: it gets a record a call, not a call per
		 * run (a sink that sends each call as a packet pays for each). */
		stored = data_bytes;
		in_place = nruns + 2 <= USNAP_JOB_PARTS && s->sink->kind != USNAP_SINK_CALLBACK;
		for (size_t i = 0, at = 0; !in_place && i < nruns; at += runs[i++].len)
			memcpy(payload + at, runs[i].p, runs[i].len);
		atomic_fetch_add(&s->stats.chunks_uncompressed, 1);
	}
	j->out_len = usnap_pad8(head + stored);
	*ch = (struct usnap_chunk){ .region = j->region, .nextents = n, .flags = flags,
				    .raw_len = data_bytes, .stored_len = stored };
	*rh = (struct usnap_rec_hdr){ .type = USNAP_REC_CHNK, .len = j->out_len };
	if (in_place) {
		uint32_t crc = usnap_rec_crc(j->out, head);

		j->nparts = 0;
		j->part[j->nparts++] = (struct usnap_part){ j->out, head };
		for (size_t i = 0; i < nruns; i++) {
			crc = usnap_crc32c(crc, runs[i].p, runs[i].len);
			j->part[j->nparts++] = (struct usnap_part){ runs[i].p, runs[i].len };
		}
		if (j->out_len > head + stored) {
			crc = usnap_crc32c(crc, zero_pad, j->out_len - head - stored);
			j->part[j->nparts++] = (struct usnap_part){ zero_pad, j->out_len - head - stored };
		}
		rh->crc = crc;
	} else {
		memset(payload + stored, 0, j->out_len - head - stored);
		rh->crc = usnap_rec_crc(j->out, j->out_len);
		j->part[0] = (struct usnap_part){ j->out, j->out_len };
		j->nparts = 1;
	}

	j->first_page = ext[0].first_page;
	j->end_page = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (ext[i].first_page + ext[i].npages > j->end_page)
			j->end_page = ext[i].first_page + ext[i].npages;
		if (ext[i].first_page < j->first_page)
			j->first_page = ext[i].first_page;
		if (ext[i].kind == USNAP_EXT_ZERO)
			zero_pages += ext[i].npages;
	}
	j->nextents = n;
	j->data_pages = (uint32_t)(data_bytes / s->page_size);
	j->zero_pages = zero_pages;
	atomic_fetch_add(&s->stats.pages_zero_found, zero_found);
	return 0;
}

static struct usnap_job *next_job(uffdsnap_snap_t *s)
{
	struct usnap_job *j = NULL;

	pthread_mutex_lock(&s->cq.lock);
	for (;;) {
		if ((j = s->cq.fault)) {
			if (!(s->cq.fault = j->next))
				s->cq.fault_tail = NULL;
			break;
		}
		if ((j = s->cq.sweep)) {
			if (!(s->cq.sweep = j->next))
				s->cq.sweep_tail = NULL;
			break;
		}
		if (s->cq.closed)
			break;
		pthread_cond_wait(&s->cq.cv, &s->cq.lock);
	}
	pthread_mutex_unlock(&s->cq.lock);
	if (j)
		j->next = NULL;
	return j;
}

static void *worker_main(void *arg)
{
	uffdsnap_snap_t *s = arg;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	struct run *runs = malloc(sizeof(*runs) * (s->jobs.pool->chunk_bytes / s->page_size));
	struct usnap_job *j;
	bool last;

	if (!cc || !runs)
		usnap_fail(s, -ENOMEM, "allocating a compression context");
	else if (ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, s->cq.zstd_level)) ||
		 ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1)))
		usnap_fail(s, -EINVAL, "zstd rejected compression level %d", s->cq.zstd_level);

	while ((j = next_job(s))) {
		int r = atomic_load(&s->abort) ? -ECANCELED : build_record(s, cc, j, runs);
		if (r || !j->nextents) {
			if (r && r != -ECANCELED)
				usnap_fail(s, r, "zstd failed to compress a chunk of region %u", j->region);
			usnap_job_put(s, j);
			continue;
		}
		usnap_io_push(s, j);
	}
	ZSTD_freeCCtx(cc);
	free(runs);
	pthread_mutex_lock(&s->cq.lock);
	last = --s->cq.workers_left == 0;
	pthread_mutex_unlock(&s->cq.lock);
	if (last)
		usnap_io_producers_done(s);
	return NULL;
}

void usnap_compress_submit(uffdsnap_snap_t *s, struct usnap_job *j)
{
	struct usnap_job **head = j->fault ? &s->cq.fault : &s->cq.sweep;
	struct usnap_job **tail = j->fault ? &s->cq.fault_tail : &s->cq.sweep_tail;

	j->next = NULL;
	pthread_mutex_lock(&s->cq.lock);
	if (*tail)
		(*tail)->next = j;
	else
		*head = j;
	*tail = j;
	pthread_cond_signal(&s->cq.cv);
	pthread_mutex_unlock(&s->cq.lock);
}

/* No more chunks: workers finish the queue and exit. */
void usnap_compress_close(uffdsnap_snap_t *s)
{
	pthread_mutex_lock(&s->cq.lock);
	s->cq.closed = true;
	pthread_cond_broadcast(&s->cq.cv);
	pthread_mutex_unlock(&s->cq.lock);
}

int usnap_workers_start(uffdsnap_snap_t *s, unsigned n)
{
	int r;

	s->cq.workers = calloc(n, sizeof(*s->cq.workers));
	if (!s->cq.workers)
		return usnap_err(-ENOMEM, "allocating worker threads");
	s->cq.workers_left = n;
	s->cq.workers_started = usnap_crew_start(s->cq.workers, n, worker_main, s, 0, "usnap-zstd", &r);
	if (r) {
		/* Workers never started still count as finished. */
		pthread_mutex_lock(&s->cq.lock);
		s->cq.workers_left -= n - s->cq.workers_started;
		pthread_mutex_unlock(&s->cq.lock);
		return usnap_err(r, "starting compression threads: %s", strerror(-r));
	}
	return 0;
}

void usnap_compress_init(struct usnap_compress *cq, int zstd_level)
{
	pthread_mutex_init(&cq->lock, NULL);
	pthread_cond_init(&cq->cv, NULL);
	cq->zstd_level = zstd_level;
}

void usnap_compress_destroy(struct usnap_compress *cq)
{
	free(cq->workers);
	pthread_mutex_destroy(&cq->lock);
	pthread_cond_destroy(&cq->cv);
}

/* A failure: workers waiting for a chunk look at s->abort. */
void usnap_compress_wake(uffdsnap_snap_t *s)
{
	pthread_mutex_lock(&s->cq.lock);
	pthread_cond_broadcast(&s->cq.cv);
	pthread_mutex_unlock(&s->cq.lock);
}

void usnap_workers_join(uffdsnap_snap_t *s)
{
	usnap_crew_join(s->cq.workers, s->cq.workers_started);
	s->cq.workers_started = 0;
}
