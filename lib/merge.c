/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Writing a reader's image as one full snapshot (uffdsnap_reader_merge_file()):
 * the compaction of a chain of deltas (docs/format.md, "Deltas"), or the
 * rewrite of a file. The only writer of snapshot files outside a live
 * snapshot: sink.c and compress.c are driven by the snapshot engine and its
 * threads, while this reads the image in page order, one chunk at a time, and
 * writes format version 1 (HEAD, CHNK..., INDX, END) sequentially.
 *
 * The merged file takes the id and the instant of the chain's last file: it
 * is the same snapshot, stored whole, so the deltas taken after that file
 * apply to it (reader-chain.c accepts any depth after a full snapshot).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zstd.h>

#include "format.h"
#include "outfile.h"
#include "reader-private.h"
#include "uffdsnap-private.h"

#define MERGE_CHUNK (1u << 20)  /* bytes of a region per chunk written */
#define HDR_LEN sizeof(struct usnap_rec_hdr)

struct mw {
	uffdsnap_reader_t *r;
	int fd;
	uint64_t off;
	ZSTD_CCtx *cc;
	uint8_t *page_buf, *data, *rec;
	size_t rec_cap;
	struct usnap_index_ent *idx;
	size_t nidx, idx_cap;
	struct usnap_end end;
};

static int mw_write(struct mw *w, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(w->fd, p, len, (off_t)w->off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return usnap_err(n ? -errno : -EIO, "writing the merged snapshot at offset %" PRIu64 ": %s",
					 w->off, n ? strerror(errno) : "no progress");
		p += n, len -= (size_t)n, w->off += (uint64_t)n;
	}
	return 0;
}

static int rec_room(struct mw *w, size_t len)
{
	uint8_t *p;

	if (len <= w->rec_cap)
		return 0;
	if (!(p = realloc(w->rec, len)))
		return usnap_err(-ENOMEM, "out of memory");
	w->rec = p;
	w->rec_cap = len;
	return 0;
}

static void image_region(void *ctx, unsigned i, const char **name, uint64_t *length)
{
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };

	/* the reader's own strings: valid while it is open */
	uffdsnap_reader_region(ctx, i, &ri);
	*name = ri.name;
	*length = ri.length;
}

static int write_head(struct mw *w, const uffdsnap_info_t *in)
{
	struct usnap_head hd = { .version = USNAP_VERSION, .page_size = in->page_size, .nregions = in->nregions,
				 .created_ns = in->created_ns };
	size_t len = usnap_head_rec_len(&hd, image_region, w->r);
	int rc;

	memcpy(hd.snap_id, in->snap_id, sizeof(hd.snap_id));
	if ((rc = rec_room(w, len)))
		return rc;
	usnap_head_rec_put(w->rec, len, &hd, NULL, image_region, w->r);
	if ((rc = mw_write(w, USNAP_MAGIC, USNAP_MAGIC_LEN)))
		return rc;
	return mw_write(w, w->rec, len);
}

/* One chunk: pages [p0, p0 + n) of region id, read from the image into page_buf. */
static int write_chunk(struct mw *w, unsigned id, uint64_t p0, uint32_t n, uint32_t page_size)
{
	struct usnap_extent ext[MERGE_CHUNK / USNAP_MIN_PAGE];
	struct usnap_chunk ch = { .region = id };
	size_t raw = 0, stored, at, len;
	uint32_t ne = 0;
	int rc;

	if ((rc = uffdsnap_reader_read(w->r, id, p0 * page_size, w->page_buf, (size_t)n * page_size)))
		return usnap_err(rc, "%s", uffdsnap_reader_error(w->r));
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *pg = w->page_buf + (size_t)i * page_size;
		uint32_t kind = usnap_page_is_zero(pg, page_size) ? USNAP_EXT_ZERO : USNAP_EXT_DATA;

		if (ne && ext[ne - 1].kind == kind && ext[ne - 1].first_page + ext[ne - 1].npages == p0 + i)
			ext[ne - 1].npages++;
		else
			ext[ne++] = (struct usnap_extent){ .first_page = p0 + i, .npages = 1, .kind = kind };
		if (kind == USNAP_EXT_DATA) {
			memmove(w->page_buf + raw, pg, page_size);
			raw += page_size;
			w->end.pages_data++;
		} else {
			w->end.pages_zero++;
		}
	}
	stored = raw ? ZSTD_compress2(w->cc, w->data, ZSTD_compressBound(MERGE_CHUNK), w->page_buf, raw) : 0;
	if (ZSTD_isError(stored))
		return usnap_err(-EIO, "zstd: %s", ZSTD_getErrorName(stored));
	/* pages zstd cannot shrink are stored as they are */
	ch.flags = raw && stored < raw ? USNAP_CHNK_ZSTD : 0;
	ch.nextents = ne;
	ch.raw_len = raw;
	ch.stored_len = ch.flags ? stored : raw;
	at = HDR_LEN + sizeof(ch) + ne * sizeof(*ext);
	len = usnap_pad8(at + ch.stored_len);
	if ((rc = rec_room(w, len)))
		return rc;
	memset(w->rec + len - 8, 0, 8);
	memcpy(w->rec + HDR_LEN, &ch, sizeof(ch));
	memcpy(w->rec + HDR_LEN + sizeof(ch), ext, ne * sizeof(*ext));
	memcpy(w->rec + at, ch.flags ? w->data : w->page_buf, ch.stored_len);
	usnap_rec_seal(w->rec, USNAP_REC_CHNK, len);
	if (w->nidx == w->idx_cap) {
		size_t cap = w->idx_cap ? 2 * w->idx_cap : 256;
		struct usnap_index_ent *p = realloc(w->idx, cap * sizeof(*p));

		if (!p)
			return usnap_err(-ENOMEM, "out of memory");
		w->idx = p;
		w->idx_cap = cap;
	}
	w->idx[w->nidx++] = (struct usnap_index_ent){ .offset = w->off, .region = id, .nextents = ne,
						     .first_page = p0, .end_page = p0 + n };
	w->end.chunks++;
	w->end.bytes_raw += raw;
	return mw_write(w, w->rec, len);
}

static int write_tail(struct mw *w)
{
	size_t len = usnap_index_rec_len(w->nidx);
	uint8_t end[USNAP_END_LEN];
	int rc;

	if ((rc = rec_room(w, len)))
		return rc;
	usnap_index_rec_put(w->rec, w->idx, w->nidx);
	w->end.index_offset = w->off;
	if ((rc = mw_write(w, w->rec, len)))
		return rc;
	usnap_end_rec_put(end, &w->end);
	return mw_write(w, end, sizeof(end));
}

static int merge_to(struct mw *w, const uffdsnap_info_t *in)
{
	const uint32_t per = MERGE_CHUNK / in->page_size ? MERGE_CHUNK / in->page_size : 1;
	int rc;

	w->cc = ZSTD_createCCtx();
	w->page_buf = malloc((size_t)per * in->page_size);
	w->data = malloc(ZSTD_compressBound((size_t)per * in->page_size));
	if (!w->cc || !w->page_buf || !w->data)
		return usnap_err(-ENOMEM, "out of memory");
	if (ZSTD_isError(ZSTD_CCtx_setParameter(w->cc, ZSTD_c_compressionLevel, 1)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(w->cc, ZSTD_c_checksumFlag, 1)))
		return usnap_err(-EINVAL, "zstd refused the compression parameters");
	memcpy(w->end.snap_id, in->snap_id, sizeof(w->end.snap_id));
	if ((rc = write_head(w, in)))
		return rc;
	for (unsigned id = 0; id < in->nregions; id++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		uint64_t npages;

		uffdsnap_reader_region(w->r, id, &ri);
		npages = ri.length / in->page_size;
		for (uint64_t p = 0; p < npages; p += per)
			if ((rc = write_chunk(w, id, p, npages - p < per ? (uint32_t)(npages - p) : per, in->page_size)))
				return rc;
	}
	if ((rc = write_tail(w)))
		return rc;
	if (fsync(w->fd))
		return usnap_err(-errno, "fsync: %s", strerror(errno));
	return 0;
}

USNAP_EXPORT int uffdsnap_reader_merge_file(uffdsnap_reader_t *r, const char *path, mode_t mode)
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	struct mw w = { .r = r };
	char msg[512], *tmp;
	int rc = 0;

	usnap_clear_err();
	if (!r || !path || !*path)
		return usnap_err(-EINVAL, "uffdsnap_reader_merge_file: reader and path must not be NULL or empty");
	if (mode & ~(mode_t)07777)
		return usnap_err(-EINVAL, "uffdsnap_reader_merge_file: mode 0%o is not a permission mode", (unsigned)mode);
	uffdsnap_reader_info(r, &in);
	/* an image that cannot be read whole is refused before any file is made */
	for (unsigned id = 0; id < in.nregions && !rc; id++)
		if ((rc = usnap_reader_ready(r, id)))
			return usnap_err(rc, "%s", uffdsnap_reader_error(r));
	if ((w.fd = usnap_out_create(path, mode ? mode : 0600, &tmp)) < 0)
		return w.fd;
	if ((rc = merge_to(&w, &in))) {
		close(w.fd);
		unlink(tmp);
	} else if ((rc = usnap_out_commit(w.fd, tmp, path, true, msg, sizeof(msg)))) {
		usnap_err(rc, "%s", msg);
	}
	free(tmp);
	ZSTD_freeCCtx(w.cc);
	free(w.page_buf);
	free(w.data);
	free(w.rec);
	free(w.idx);
	return rc;
}
