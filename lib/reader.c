/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The snapshot reader: everything that reads snapshot bytes (format v1,
 * format.h, docs/format.md). Nothing read from a file is trusted: every length,
 * count and offset is range-checked against the limits of format.h and the
 * file size before it sizes an allocation or a read, and every record's
 * CRC-32C is checked before any of its body is used.
 *
 * Two ways through a file:
 *  - random access (read, extract): open() reads HEAD, then END from the last
 *    USNAP_END_LEN bytes and the INDX it points to; a read visits only the
 *    index entries of its region that overlap the requested pages.
 *  - sequential (verify): every record from the start, with read(2) on a
 *    stream, so `cat snap | uffdsnap verify -` works.
 * Both go through chunk_load()/chunk_parse(): one place that turns the CHNK
 * record at an offset into checked extents and raw page data.
 *
 * Random access finds pages through a page map per region (which chunk holds
 * each run of pages), built on first use from the chunks' extent tables. The
 * index alone cannot say: a chunk of pages copied for faulting writers spans
 * most of its region while holding a few runs of it, so looking chunks up by
 * span loads every such chunk for every read (docs/design.md, "Reading back
 * a snapshot taken under writes"). The tables are read without their
 * records' checksums, as hints only: a chunk is still checked whole when it
 * is loaded, and what is copied comes from its checked extents.
 *
 * A reader keeps a record buffer, a decompression buffer, one ZSTD_DCtx and
 * runs of pages decompressed ahead of the reads (uffdsnap_reader_cache(),
 * sized by default from the page map; and a few chunks kept whole),
 * and is not thread-safe: use one reader from one thread at a time. Its
 * reads and extracts hand the chunks they will need, in the order they will
 * need them, to worker threads of its own (reader-ahead.c), one per online
 * CPU but the caller's, which decode them while the caller copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "bitmap.h"
#include "reader-private.h"
#include "uffdsnap-private.h"

#define HDR_LEN sizeof(struct usnap_rec_hdr)
#define HEAD_MIN (HDR_LEN + sizeof(struct usnap_head))
#define CHNK_FIXED (HDR_LEN + sizeof(struct usnap_chunk))
#define CHNK_MIN (CHNK_FIXED + sizeof(struct usnap_extent))
#define CHNK_MAX (CHNK_FIXED + (uint64_t)USNAP_MAX_EXTENTS * sizeof(struct usnap_extent) + \
		  usnap_pad8(ZSTD_COMPRESSBOUND((uint64_t)USNAP_MAX_CHUNK_RAW)))
#define INDX_MIN (HDR_LEN + sizeof(struct usnap_index_hdr))
#define EXTRACT_WINDOW (8u << 20)  /* bytes read at once for an output in page order */
#define POPULATE_MIN (1u << 20)    /* a read this large populates the caller's buffer first */
#define AHEAD_BYTES (16u << 20)    /* pages decoded ahead at most, in chunks of the file's mean size */
#define AHEAD_PER_THREAD 4         /* chunks queued at most per decoding thread */
#define AHEAD_WALK 64              /* runs of the page map looked at ahead per read */
#define PARK_RUN_MAX (1u << 20)    /* a longer run is not kept for a later read */
#define PARK_SPARES 4              /* freed buffers of kept runs held for the next ones */
#define HOLD_MAX 4                 /* chunks kept whole at once */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct rd_region {
	const char *name;
	uint64_t length, npages;
	size_t ent_lo, ent_hi;      /* this region's slice of reader.ents */
};

/* An index entry; each region's slice is sorted by first page. */
struct rd_ent {
	uint64_t offset;            /* of the CHNK record */
	uint64_t first, end;        /* pages the chunk spans */
	uint32_t nextents;
};

/* A chunk loaded and checked. Points into the reader's buffers: valid until
 * the next load. */
struct rd_chunk {
	uint64_t offset, len;       /* of the record */
	uint32_t region, nextents;
	const struct usnap_extent *ext;
	const uint8_t *data;        /* raw_len bytes of DATA pages; NULL if not asked for */
	uint64_t raw_len;
	uint64_t first, end;        /* pages spanned */
	uint64_t data_pages, zero_pages;
};

/* Which chunk holds each page of a region: runs of pages in page order that
 * tile the region, each held by one chunk (its index in the region's slice
 * of ents), or none (RD_GAP: pages a delta does not hold). 12 bytes a run,
 * and a run is at least one extent. */
#define RD_GAP UINT32_MAX
struct rd_map {
	uint64_t *first;            /* first page of each run */
	uint32_t *chunk;
	size_t n;
	bool built;
};

/* A run of the page map kept decompressed for a later read: pages a chunk
 * holds beyond the read that loaded it (zero pages as zeros). */
struct rd_park {
	uint32_t region;
	uint64_t run;               /* index in the region's map */
	uint64_t filled;            /* the read that filled it */
	uint8_t *data;
	size_t len, cap;
};

/* A chunk of a short span kept whole for the next reads (hold_chunk()): its
 * extents and its pages as decoded. */
struct rd_hold {
	bool used;
	uint32_t region, chunk, next;
	uint64_t first, end;        /* its span */
	struct usnap_extent *ext;
	uint8_t *data;
	size_t cap;
};

/* One extent with where its pages are: for coverage checks and extraction. */
struct rd_ext {
	uint64_t first;
	uint32_t npages, kind;
	uint32_t region;
	uint64_t chunk;             /* record offset */
	uint64_t data_off;          /* DATA: byte offset in the chunk's raw data */
};

struct uffdsnap_reader {
	int fd;
	bool own_fd, seekable;
	bool stream_read;           /* a stream can be scanned once */
	uint64_t size;              /* file size; for a stream, bytes read so far */

	/* HEAD */
	uint32_t version, page_size, page_shift, nregions;
	uint64_t created_ns;
	uint8_t snap_id[16];
	bool delta;                 /* version 2: pages no extent covers are the parent's */
	bool chained;               /* a link of a chain (reader-chain.c): a delta's pages may be read */
	uint8_t parent_id[16];      /* delta: the parent's snap_id */
	uint32_t depth;             /* delta: 1 + the parent's */
	uint64_t head_end;          /* offset of the first record after HEAD */
	struct rd_region *regions;
	char *names;

	/* END and INDX */
	bool have_end;              /* a valid END (its status may say failed) */
	bool complete;              /* END with status 0 and a valid index */
	struct usnap_end end;
	struct rd_ent *ents;
	size_t nents;
	char reason[256];           /* why !complete */

	/* buffers, reused */
	uint8_t *rec;               /* the record being looked at */
	size_t rec_cap;
	uint8_t *raw;               /* decompressed page data */
	size_t raw_cap;
	ZSTD_DCtx *dctx;
	struct rd_chunk cur;        /* what rec/raw hold, if cur_valid */
	bool cur_valid, cur_data;
	struct rd_map *maps;        /* per region, built on first use */

	/* runs kept for later reads, sorted by region and run: at most
	 * park_max bytes of pages; park_set: park_max is the caller's, else
	 * sized from park_need (park_default()) */
	struct rd_park *parks;
	size_t nparks, park_cap, park_bytes, park_max;
	uint64_t park_need;         /* the most a read in page order of a mapped region keeps */
	bool park_set;
	struct rd_spare { uint8_t *data; size_t cap; } spare[PARK_SPARES]; /* freed run buffers, for reuse */
	struct rd_hold hold[HOLD_MAX];
	uint64_t reads;             /* reads so far: names the one that fills a run */
	uint64_t decoded;           /* chunks loaded with their pages */

	char err[512];

	/* set when this reader presents a chain (reader-chain.c) */
	struct usnap_chain *chain;

	/* uffdsnap_serve_conn() calls running on this reader (from any thread):
	 * the one field several threads change, hence atomic */
	_Atomic unsigned clients;

	/* decoding ahead (reader-ahead.c): started by the first read or
	 * extract that loads a chunk; NULL without workers */
	struct usnap_ahead *ah;
	bool ah_tried, ah_fixed;    /* ah_fixed: ah_n workers (uffdsnap_reader_threads), else by the CPUs */
	unsigned ah_n;
	unsigned ra_id;             /* the last read: region, end, and how far the */
	uint64_t ra_next;           /* map is queued ahead of it (a run index) */
	size_t ra_run;
	uint64_t *want;             /* a read's chunks, one bit a chunk of its region */
	size_t want_words;
};

static void park_drop(struct uffdsnap_reader *r);

/* ---- errors and I/O ------------------------------------------------------------ */

int usnap_reader_fail(uffdsnap_reader_t *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_vformat(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	return err;
}

#define rd_err usnap_reader_fail

#define bad(r, ...) rd_err(r, -EBADMSG, __VA_ARGS__)

static const char *rec_what(uint32_t type)
{
	switch (type) {
	case USNAP_REC_HEAD:
		return "HEAD record";
	case USNAP_REC_CHNK:
		return "chunk";
	case USNAP_REC_INDX:
		return "INDX record";
	case USNAP_REC_END:
		return "END record";
	default:
		return "record";
	}
}

static const char *src_what(const struct uffdsnap_reader *r)
{
	return r->seekable ? "file" : "stream";
}

/* Read up to len bytes at off: fewer only at the end of the data. Streams are
 * read sequentially, so off is always where the stream is. */
static ssize_t src_read(struct uffdsnap_reader *r, uint64_t off, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = r->seekable ? pread(r->fd, (uint8_t *)buf + done, len - done, (off_t)(off + done))
					: read(r->fd, (uint8_t *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return rd_err(r, -errno, "reading the snapshot at offset %" PRIu64 ": %s", off + done,
				      strerror(errno));
		if (n == 0)
			break;
		done += (size_t)n;
	}
	if (!r->seekable)
		r->size = off + done;
	return (ssize_t)done;
}

static int grow(uint8_t **buf, size_t *cap, uint64_t need)
{
	uint8_t *p;

	if (need <= *cap)
		return 0;
	if (!(p = realloc(*buf, need)))
		return -ENOMEM;
	*buf = p;
	*cap = need;
	return 0;
}

/* The data ended inside the record at off that needs len bytes. */
static int rd_short(struct uffdsnap_reader *r, uint64_t off, uint32_t type, uint64_t len, uint64_t end)
{
	/* a file with a valid END at its tail is not truncated: the length lies */
	if (r->seekable && r->have_end)
		return bad(r, "%s at offset %" PRIu64 ": length %" PRIu64 " runs past the END record",
			   rec_what(type), off, len);
	return rd_err(r, -ENODATA, "truncated: %s at offset %" PRIu64 " needs %" PRIu64 " bytes, %s ends at "
		      "offset %" PRIu64, rec_what(type), off, len, src_what(r), end);
}

/* Read the `want` first bytes of the record at off (at least its header) into r->rec. */
static int rec_begin(struct uffdsnap_reader *r, uint64_t off, size_t want, struct usnap_rec_hdr *h)
{
	ssize_t n;

	r->cur_valid = false;
	if (grow(&r->rec, &r->rec_cap, want))
		return rd_err(r, -ENOMEM, "out of memory");
	n = src_read(r, off, r->rec, want);
	if (n < 0)
		return (int)n;
	if (n == 0 && !r->head_end)
		return rd_err(r, -ENODATA, "truncated: %s ends at offset %" PRIu64 ", before the HEAD record",
			      src_what(r), off);
	if (n == 0)
		return rd_err(r, -ENODATA, "truncated: no END record, %s ends at offset %" PRIu64, src_what(r), off);
	if ((size_t)n < HDR_LEN)
		return rd_short(r, off, 0, HDR_LEN, off + (uint64_t)n);
	memcpy(h, r->rec, HDR_LEN);
	if ((size_t)n < want)
		return rd_short(r, off, h->type, want, off + (uint64_t)n);
	return 0;
}

/* The record's length must be a multiple of 8 in [min, max]. */
static int rec_len_ok(struct uffdsnap_reader *r, uint64_t off, const struct usnap_rec_hdr *h, uint64_t min,
		      uint64_t max)
{
	if (h->len < min || h->len > max || h->len % 8)
		return bad(r, "%s at offset %" PRIu64 ": length %" PRIu64 " is not a multiple of 8 in [%" PRIu64
			   ", %" PRIu64 "]", rec_what(h->type), off, h->len, min, max);
	return 0;
}

/* Read the rest of the record at off (`have` bytes are in r->rec) and check its checksum. */
static int rec_fill(struct uffdsnap_reader *r, uint64_t off, const struct usnap_rec_hdr *h, size_t have)
{
	ssize_t n;

	if (r->seekable && h->len > r->size - off)
		return rd_short(r, off, h->type, h->len, r->size);
	if (grow(&r->rec, &r->rec_cap, h->len))
		return rd_err(r, -ENOMEM, "out of memory for a %" PRIu64 "-byte record", h->len);
	n = src_read(r, off + have, r->rec + have, h->len - have);
	if (n < 0)
		return (int)n;
	if ((uint64_t)n < h->len - have)
		return rd_short(r, off, h->type, h->len, off + have + (uint64_t)n);
	if (usnap_rec_crc(r->rec, h->len) != h->crc)
		return bad(r, "%s at offset %" PRIu64 ": checksum mismatch", rec_what(h->type), off);
	return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	while (n--)
		if (*p++)
			return false;
	return true;
}

/* ---- HEAD ------------------------------------------------------------------------- */

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int names_unique(struct uffdsnap_reader *r)
{
	const char **v = malloc(r->nregions * sizeof(*v));
	int rc = 0;

	if (!v)
		return rd_err(r, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < r->nregions; i++)
		v[i] = r->regions[i].name;
	qsort(v, r->nregions, sizeof(*v), cmp_name);
	for (uint32_t i = 1; i < r->nregions && !rc; i++)
		if (!strcmp(v[i - 1], v[i]))
			rc = bad(r, "HEAD record at offset %d: region name '%s' appears twice", USNAP_MAGIC_LEN, v[i]);
	free(v);
	return rc;
}

/* Region entry i at rec + *pos: check it, keep it, advance *pos. */
static int region_parse(struct uffdsnap_reader *r, const uint8_t *rec, uint64_t len, uint64_t *pos, uint32_t i,
			char **names)
{
	struct usnap_region e;
	const char *name;
	uint64_t pad;

	if (len - *pos < sizeof(e))
		return bad(r, "HEAD record at offset %d: region table ends inside entry %u", USNAP_MAGIC_LEN, i);
	memcpy(&e, rec + *pos, sizeof(e));
	name = (const char *)rec + *pos + sizeof(e);
	pad = usnap_pad8(e.name_len);
	if (e.name_len < 1 || e.name_len > USNAP_MAX_NAME || pad > len - *pos - sizeof(e))
		return bad(r, "HEAD record at offset %d: region %u: name length %u out of range", USNAP_MAGIC_LEN, i,
			   e.name_len);
	if (memchr(name, 0, e.name_len) || !all_zero((const uint8_t *)name + e.name_len, pad - e.name_len))
		return bad(r, "HEAD record at offset %d: region %u: NUL in the name or padding not zero",
			   USNAP_MAGIC_LEN, i);
	if (!e.length || e.length % r->page_size || e.length > USNAP_MAX_REGION_LEN || e.flags)
		return bad(r, "HEAD record at offset %d: region %u: length %" PRIu64 " (flags 0x%x) is not a "
			   "multiple of the page size up to 2^48", USNAP_MAGIC_LEN, i, e.length, e.flags);
	memcpy(*names, name, e.name_len);
	(*names)[e.name_len] = '\0';
	r->regions[i] = (struct rd_region){ .name = *names, .length = e.length,
					    .npages = e.length >> r->page_shift };
	*names += e.name_len + 1;
	*pos += sizeof(e) + pad;
	return 0;
}

/* The HEAD record is in r->rec with its checksum checked. */
static int head_parse(struct uffdsnap_reader *r, uint64_t len)
{
	struct usnap_head hd;
	uint64_t pos = HEAD_MIN;
	char *names;
	int rc;

	memcpy(&hd, r->rec + HDR_LEN, sizeof(hd));
	if (hd.flags != (hd.version == USNAP_VERSION_DELTA ? USNAP_HEAD_DELTA : 0))
		return bad(r, "HEAD record at offset %d: flags 0x%x in a version %u snapshot", USNAP_MAGIC_LEN,
			   hd.flags, hd.version);
	if (hd.version == USNAP_VERSION_DELTA) {
		struct usnap_head_delta dh;

		if (len - pos < sizeof(dh))
			return bad(r, "HEAD record at offset %d: too short for a delta's parent", USNAP_MAGIC_LEN);
		memcpy(&dh, r->rec + pos, sizeof(dh));
		if (!dh.depth || dh.reserved)
			return bad(r, "HEAD record at offset %d: delta depth %u (reserved 0x%x): must be 1 or more "
				   "(reserved 0)", USNAP_MAGIC_LEN, dh.depth, dh.reserved);
		r->delta = true;
		r->depth = dh.depth;
		memcpy(r->parent_id, dh.parent_id, sizeof(r->parent_id));
		pos += sizeof(dh);
	}
	r->version = hd.version;
	if (hd.page_size < USNAP_MIN_PAGE || hd.page_size > USNAP_MAX_PAGE || (hd.page_size & (hd.page_size - 1)))
		return bad(r, "HEAD record at offset %d: page size %u is not a power of two in [%u, %u]",
			   USNAP_MAGIC_LEN, hd.page_size, USNAP_MIN_PAGE, USNAP_MAX_PAGE);
	if (hd.nregions < 1 || hd.nregions > USNAP_MAX_REGIONS)
		return bad(r, "HEAD record at offset %d: %u regions: must be 1..%d", USNAP_MAGIC_LEN, hd.nregions,
			   USNAP_MAX_REGIONS);
	r->page_size = hd.page_size;
	r->page_shift = (uint32_t)__builtin_ctz(hd.page_size);
	r->created_ns = hd.created_ns;
	memcpy(r->snap_id, hd.snap_id, sizeof(r->snap_id));
	/* every entry takes at least 16 + name_len bytes of the record: len bounds both */
	r->regions = calloc(hd.nregions, sizeof(*r->regions));
	r->names = names = malloc(len);
	if (!r->regions || !names)
		return rd_err(r, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < hd.nregions; i++)
		if ((rc = region_parse(r, r->rec, len, &pos, i, &names)))
			return rc;
	if (pos != len)
		return bad(r, "HEAD record at offset %d: %" PRIu64 " bytes after the region table", USNAP_MAGIC_LEN,
			   len - pos);
	r->nregions = hd.nregions;
	return names_unique(r);
}

/*
 * MAGIC, then HEAD. The version is looked at before the checksum: a newer
 * version may frame its header differently, and should be reported as such.
 */
static int head_load(struct uffdsnap_reader *r)
{
	uint8_t magic[USNAP_MAGIC_LEN];
	struct usnap_rec_hdr h;
	uint32_t version;
	ssize_t n;
	int rc;

	n = src_read(r, 0, magic, sizeof(magic));
	if (n < 0)
		return (int)n;
	if (memcmp(magic, USNAP_MAGIC, (size_t)n))
		return rd_err(r, -ENOEXEC, "the file does not start with \"%s\"", USNAP_MAGIC);
	if (n < USNAP_MAGIC_LEN)
		return rd_err(r, -ENODATA, "truncated: %s ends at offset %zd, inside the magic", src_what(r), n);
	if ((rc = rec_begin(r, USNAP_MAGIC_LEN, HEAD_MIN, &h)))
		return rc;
	if (h.type != USNAP_REC_HEAD)
		return bad(r, "offset %d: the first record is of type 0x%08x, not HEAD", USNAP_MAGIC_LEN, h.type);
	memcpy(&version, r->rec + HDR_LEN, sizeof(version));
	if (version != USNAP_VERSION && version != USNAP_VERSION_DELTA)
		return rd_err(r, -EPROTONOSUPPORT, "snapshot format version %u; this library reads versions %d "
			      "and %d", version, USNAP_VERSION, USNAP_VERSION_DELTA);
	if ((rc = rec_len_ok(r, USNAP_MAGIC_LEN, &h, HEAD_MIN, USNAP_MAX_HEAD_LEN)) ||
	    (rc = rec_fill(r, USNAP_MAGIC_LEN, &h, HEAD_MIN)) || (rc = head_parse(r, h.len)))
		return rc;
	r->head_end = USNAP_MAGIC_LEN + h.len;
	return 0;
}

/* ---- chunks ------------------------------------------------------------------------ */

/* The payload is one zstd frame of raw_len bytes; r has a context to decode it. */
static int frame_ok(struct uffdsnap_reader *r, uint64_t off, const uint8_t *src, uint64_t stored, uint64_t raw_len)
{
	unsigned long long fcs = ZSTD_getFrameContentSize(src, stored);

	if (fcs == ZSTD_CONTENTSIZE_ERROR || ZSTD_findFrameCompressedSize(src, stored) != stored)
		return bad(r, "chunk at offset %" PRIu64 ": the payload is not exactly one zstd frame", off);
	if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != raw_len)
		return bad(r, "chunk at offset %" PRIu64 ": the zstd frame holds %llu bytes, the chunk %" PRIu64,
			   off, fcs, raw_len);
	if (!r->dctx && !(r->dctx = ZSTD_createDCtx()))
		return rd_err(r, -ENOMEM, "out of memory for a zstd context");
	return 0;
}

static int chunk_inflate(struct uffdsnap_reader *r, uint64_t off, const uint8_t *src, uint64_t stored,
			 uint64_t raw_len)
{
	size_t n;
	int rc;

	if ((rc = frame_ok(r, off, src, stored, raw_len)))
		return rc;
	if (grow(&r->raw, &r->raw_cap, raw_len))
		return rd_err(r, -ENOMEM, "out of memory for %" PRIu64 " bytes of pages", raw_len);
	n = ZSTD_decompressDCtx(r->dctx, r->raw, raw_len, src, stored);
	if (ZSTD_isError(n))
		return bad(r, "chunk at offset %" PRIu64 ": zstd: %s", off, ZSTD_getErrorName(n));
	if (n != raw_len)
		return bad(r, "chunk at offset %" PRIu64 ": decompressed to %zu bytes, expected %" PRIu64, off, n,
			   raw_len);
	return 0;
}

/* Check the extents of the chunk in r->rec against its region; fill c's page counts. */
static int chunk_extents(struct uffdsnap_reader *r, struct rd_chunk *c)
{
	const struct rd_region *reg = &r->regions[c->region];

	c->first = UINT64_MAX;
	c->end = c->data_pages = c->zero_pages = 0;
	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *x = &c->ext[i];

		if (x->kind > USNAP_EXT_ZERO || !x->npages || x->first_page > reg->npages ||
		    x->npages > reg->npages - x->first_page)
			return bad(r, "chunk at offset %" PRIu64 ": extent %u (pages %" PRIu64 "+%u, kind %u) is "
				   "not inside region '%s' of %" PRIu64 " pages", c->offset, i, x->first_page,
				   x->npages, x->kind, reg->name, reg->npages);
		*(x->kind == USNAP_EXT_DATA ? &c->data_pages : &c->zero_pages) += x->npages;
		if (x->first_page < c->first)
			c->first = x->first_page;
		if (x->first_page + x->npages > c->end)
			c->end = x->first_page + x->npages;
	}
	if (c->data_pages != c->raw_len >> r->page_shift)
		return bad(r, "chunk at offset %" PRIu64 ": %" PRIu64 " DATA pages but %" PRIu64 " bytes of data",
			   c->offset, c->data_pages, c->raw_len);
	return 0;
}

/*
 * The CHNK record at off is in r->rec, its checksum checked: check its
 * structure and, with want_data, decompress its pages.
 */
static int chunk_parse(struct uffdsnap_reader *r, uint64_t off, uint64_t len, bool want_data, struct rd_chunk *c)
{
	struct usnap_chunk ch;
	uint64_t ext_end, body;
	const uint8_t *payload;
	int rc;

	memcpy(&ch, r->rec + HDR_LEN, sizeof(ch));
	if (ch.region >= r->nregions || !ch.nextents || ch.nextents > USNAP_MAX_EXTENTS ||
	    (ch.flags & ~USNAP_CHNK_ZSTD) || ch.reserved)
		return bad(r, "chunk at offset %" PRIu64 ": region %u, %u extents, flags 0x%x, reserved 0x%x: "
			   "out of range", off, ch.region, ch.nextents, ch.flags, ch.reserved);
	ext_end = CHNK_FIXED + (uint64_t)ch.nextents * sizeof(struct usnap_extent);
	if (ch.raw_len > USNAP_MAX_CHUNK_RAW || ch.raw_len % r->page_size || ext_end > len ||
	    ch.stored_len > len - ext_end || usnap_pad8(ext_end + ch.stored_len) != len)
		return bad(r, "chunk at offset %" PRIu64 ": %" PRIu64 " raw bytes stored in %" PRIu64 " with %u "
			   "extents do not make a %" PRIu64 "-byte record", off, ch.raw_len, ch.stored_len,
			   ch.nextents, len);
	body = ext_end + ch.stored_len;
	if (!all_zero(r->rec + body, len - body))
		return bad(r, "chunk at offset %" PRIu64 ": padding is not zero", off);
	if (ch.flags & USNAP_CHNK_ZSTD ? !ch.raw_len || !ch.stored_len : ch.stored_len != ch.raw_len)
		return bad(r, "chunk at offset %" PRIu64 ": %" PRIu64 " bytes stored for %" PRIu64 " %s", off,
			   ch.stored_len, ch.raw_len, ch.flags & USNAP_CHNK_ZSTD ? "compressed" : "uncompressed");
	*c = (struct rd_chunk){ .offset = off, .len = len, .region = ch.region, .nextents = ch.nextents,
				.ext = (const struct usnap_extent *)(r->rec + CHNK_FIXED), .raw_len = ch.raw_len };
	if ((rc = chunk_extents(r, c)))
		return rc;
	if (!want_data)
		return 0;
	payload = r->rec + ext_end;
	if (!(ch.flags & USNAP_CHNK_ZSTD)) {
		c->data = payload;
		return 0;
	}
	if ((rc = chunk_inflate(r, off, payload, ch.stored_len, ch.raw_len)))
		return rc;
	c->data = r->raw;
	return 0;
}

/*
 * Load and check the chunk at off, which must end by `limit`: extents and,
 * with want_data, raw page data. The last chunk loaded stays cached.
 */
static int chunk_load(struct uffdsnap_reader *r, uint64_t off, uint64_t limit, bool want_data, struct rd_chunk *c)
{
	struct usnap_rec_hdr h;
	int rc;

	if (r->cur_valid && r->cur.offset == off && (r->cur_data || !want_data)) {
		*c = r->cur;
		return 0;
	}
	if ((rc = rec_begin(r, off, CHNK_FIXED, &h)))
		return rc;
	if (h.type != USNAP_REC_CHNK)
		return bad(r, "offset %" PRIu64 ": expected a chunk, found type 0x%08x", off, h.type);
	if ((rc = rec_len_ok(r, off, &h, CHNK_MIN, CHNK_MAX)))
		return rc;
	if (h.len > limit - off)
		return bad(r, "chunk at offset %" PRIu64 ": length %" PRIu64 " runs past offset %" PRIu64, off,
			   h.len, limit);
	if ((rc = rec_fill(r, off, &h, CHNK_FIXED)) || (rc = chunk_parse(r, off, h.len, want_data, c)))
		return rc;
	r->cur = *c;
	r->cur_valid = true;
	r->cur_data = want_data;
	r->decoded += want_data;
	return 0;
}

/* ---- END and INDX --------------------------------------------------------------- */

static int cmp_ent(const void *a, const void *b)
{
	const struct rd_ent *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/* Per-region slices of the index, sorted by first page. */
static int index_sort(struct uffdsnap_reader *r, const struct usnap_index_ent *in, size_t n)
{
	size_t *fill, at = 0;

	r->ents = malloc((n ? n : 1) * sizeof(*r->ents));
	fill = calloc(r->nregions, sizeof(*fill));
	if (!r->ents || !fill) {
		free(fill);
		return rd_err(r, -ENOMEM, "out of memory for an index of %zu chunks", n);
	}
	for (size_t i = 0; i < n; i++)
		fill[in[i].region]++;
	for (uint32_t g = 0; g < r->nregions; g++) {
		r->regions[g].ent_lo = at;
		at += fill[g];
		fill[g] = r->regions[g].ent_lo;
		r->regions[g].ent_hi = at;
	}
	for (size_t i = 0; i < n; i++)
		r->ents[fill[in[i].region]++] = (struct rd_ent){ .offset = in[i].offset, .first = in[i].first_page,
								 .end = in[i].end_page,
								 .nextents = in[i].nextents };
	free(fill);
	r->nents = n;
	for (uint32_t g = 0; g < r->nregions; g++)
		qsort(r->ents + r->regions[g].ent_lo, r->regions[g].ent_hi - r->regions[g].ent_lo, sizeof(*r->ents),
		      cmp_ent);
	return 0;
}

/*
 * Index entries are in file order and each must leave room for its chunk's
 * fixed part and extents before the next: that bounds every later allocation
 * by the file size.
 */
static int index_check(struct uffdsnap_reader *r, uint64_t ioff, const struct usnap_index_ent *e, size_t n)
{
	uint64_t next = r->head_end;

	for (size_t i = 0; i < n; i++) {
		uint64_t need = CHNK_FIXED + (uint64_t)e[i].nextents * sizeof(struct usnap_extent);

		if (e[i].offset % 8 || e[i].offset < next || e[i].offset > ioff || need > ioff - e[i].offset)
			return bad(r, "INDX record at offset %" PRIu64 ": entry %zu: chunk offset %" PRIu64
				   " is out of order or out of the file", ioff, i, e[i].offset);
		if (e[i].region >= r->nregions || !e[i].nextents || e[i].nextents > USNAP_MAX_EXTENTS ||
		    e[i].first_page >= e[i].end_page || e[i].end_page > r->regions[e[i].region].npages)
			return bad(r, "INDX record at offset %" PRIu64 ": entry %zu: region %u, %u extents, pages %"
				   PRIu64 "..%" PRIu64 ": out of range", ioff, i, e[i].region, e[i].nextents,
				   e[i].first_page, e[i].end_page);
		next = e[i].offset + need;
	}
	return 0;
}

/* A valid END with status 0 is at the tail: load the INDX it points to. */
static int index_load(struct uffdsnap_reader *r)
{
	uint64_t ioff = r->end.index_offset, end_off = r->size - USNAP_END_LEN;
	const struct usnap_index_ent *e;
	struct usnap_rec_hdr h;
	uint64_t count;
	int rc;

	if (ioff % 8 || ioff < r->head_end || ioff > end_off || end_off - ioff < INDX_MIN)
		return bad(r, "END record at offset %" PRIu64 ": index offset %" PRIu64 " is out of range", end_off,
			   ioff);
	if ((rc = rec_begin(r, ioff, INDX_MIN, &h)))
		return rc;
	if (h.type != USNAP_REC_INDX || h.len != end_off - ioff)
		return bad(r, "offset %" PRIu64 ": expected an INDX record of %" PRIu64 " bytes up to the END "
			   "record, found type 0x%08x of %" PRIu64, ioff, end_off - ioff, h.type, h.len);
	if ((rc = rec_len_ok(r, ioff, &h, INDX_MIN, end_off - ioff)) || (rc = rec_fill(r, ioff, &h, INDX_MIN)))
		return rc;
	memcpy(&count, r->rec + HDR_LEN, sizeof(count));
	if (count > (h.len - INDX_MIN) / sizeof(struct usnap_index_ent) ||
	    INDX_MIN + count * sizeof(struct usnap_index_ent) != h.len || count != r->end.chunks)
		return bad(r, "INDX record at offset %" PRIu64 ": %" PRIu64 " entries do not fit its length %"
			   PRIu64 " or the END record's %" PRIu64 " chunks", ioff, count, h.len, r->end.chunks);
	/* the record buffer is reused by every load: check and sort from it now */
	e = (const struct usnap_index_ent *)(r->rec + INDX_MIN);
	if ((rc = index_check(r, ioff, e, count)))
		return rc;
	return index_sort(r, e, count);
}

/* status is 0 or -errno (Linux errnos are below 4096); reserved is 0 */
static bool end_fields_ok(const struct usnap_end *e)
{
	return e->status <= 0 && e->status >= -4095 && !e->reserved;
}

static int no_end(struct uffdsnap_reader *r)
{
	snprintf(r->reason, sizeof(r->reason), "truncated: no END record, file ends at offset %" PRIu64, r->size);
	return 0;
}

/* The last USNAP_END_LEN bytes of a file: END or not; if complete, the index.
 * Only a broken index is an error: without a valid END the file still opens. */
static int trailer_load(struct uffdsnap_reader *r)
{
	uint8_t buf[USNAP_END_LEN];
	struct usnap_rec_hdr h;
	struct usnap_end e;
	uint64_t off = r->size - USNAP_END_LEN;
	bool crc_ok;
	ssize_t n;
	int rc;

	if (r->size < r->head_end + USNAP_END_LEN || r->size % 8)
		return no_end(r);
	if ((n = src_read(r, off, buf, sizeof(buf))) < 0)
		return (int)n;
	memcpy(&h, buf, sizeof(h));
	memcpy(&e, buf + HDR_LEN, sizeof(e));
	if ((size_t)n < sizeof(buf) || h.type != USNAP_REC_END || h.len != USNAP_END_LEN)
		return no_end(r);
	crc_ok = usnap_rec_crc(buf, sizeof(buf)) == h.crc;
	if (!crc_ok || !end_fields_ok(&e) || memcmp(e.snap_id, r->snap_id, sizeof(e.snap_id))) {
		snprintf(r->reason, sizeof(r->reason), "END record at offset %" PRIu64 ": %s", off,
			 !crc_ok ? "checksum mismatch"
			 : !end_fields_ok(&e) ? "status is not 0 or a negative errno, or reserved bits are set"
			 : "it belongs to another snapshot (snapshot id differs from HEAD's)");
		return 0;
	}
	r->have_end = true;
	r->end = e;
	if (e.status) {
		snprintf(r->reason, sizeof(r->reason), "the snapshot failed: %s", strerror(-e.status));
		return 0;
	}
	if ((rc = index_load(r)))
		return rc;
	r->complete = true;
	return 0;
}

/* ---- open and close ------------------------------------------------------------- */

static int reader_open(struct uffdsnap_reader **rp, int fd, bool own_fd)
{
	struct uffdsnap_reader *r = calloc(1, sizeof(*r));
	struct stat st;
	int rc;

	*rp = NULL;
	if (!r) {
		if (own_fd)
			close(fd);
		return usnap_err(-ENOMEM, "out of memory");
	}
	r->fd = fd;
	r->own_fd = own_fd;
	r->park_max = UFFDSNAP_READER_CACHE;
	if (fstat(fd, &st)) {
		rc = rd_err(r, -errno, "fstat: %s", strerror(errno));
		goto fail;
	}
	if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);
		if (end < 0) {
			rc = rd_err(r, -errno, "lseek: %s", strerror(errno));
			goto fail;
		}
		r->seekable = true;
		r->size = (uint64_t)end;
	}
	if ((rc = head_load(r)))
		goto fail;
	if (r->seekable)
		rc = trailer_load(r);
	else
		snprintf(r->reason, sizeof(r->reason), "read from a stream: only uffdsnap_reader_verify() reads "
			 "past the header");
	if (rc)
		goto fail;
	r->err[0] = '\0';
	*rp = r;
	return 0;
fail:
	usnap_err(rc, "%s", r->err);
	uffdsnap_reader_free(r);
	return rc;
}

USNAP_EXPORT int uffdsnap_reader_open(uffdsnap_reader_t **rp, const char *path)
{
	int fd;

	usnap_clear_err();
	if (!rp || !path)
		return usnap_err(-EINVAL, "uffdsnap_reader_open: reader and path must not be NULL");
	*rp = NULL;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return usnap_err(-errno, "opening %s: %s", path, strerror(errno));
	return reader_open(rp, fd, true);
}

USNAP_EXPORT int uffdsnap_reader_open_fd(uffdsnap_reader_t **rp, int fd)
{
	usnap_clear_err();
	if (!rp)
		return usnap_err(-EINVAL, "uffdsnap_reader_open_fd: reader must not be NULL");
	*rp = NULL;
	if (fd < 0)
		return usnap_err(-EBADF, "uffdsnap_reader_open_fd: %d is not a file descriptor", fd);
	return reader_open(rp, fd, false);
}

USNAP_EXPORT void uffdsnap_reader_free(uffdsnap_reader_t *r)
{
	if (!r)
		return;
	if (r->own_fd)
		close(r->fd);
	usnap_ahead_free(r->ah);
	usnap_chain_free(r->chain);
	ZSTD_freeDCtx(r->dctx);
	free(r->rec);
	free(r->raw);
	park_drop(r);
	for (uint32_t i = 0; r->maps && i < r->nregions; i++) {
		free(r->maps[i].first);
		free(r->maps[i].chunk);
	}
	free(r->maps);
	free(r->want);
	free(r->ents);
	free(r->regions);
	free(r->names);
	free(r);
}

USNAP_EXPORT const char *uffdsnap_reader_error(const uffdsnap_reader_t *r)
{
	return r ? r->err : "";
}

/* ---- information ------------------------------------------------------------------- */

USNAP_EXPORT int uffdsnap_reader_info(const uffdsnap_reader_t *r, uffdsnap_info_t *out)
{
	uffdsnap_info_t i;

	usnap_clear_err();
	if (!r || !out)
		return usnap_err(-EINVAL, "uffdsnap_reader_info: reader and out must not be NULL");
	if (usnap_check_size("uffdsnap_reader_info", "uffdsnap_info_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_info_t, reason), sizeof(i)))
		return -EINVAL;
	i = (uffdsnap_info_t){
		.size = out->size, .version = r->version, .page_size = r->page_size, .nregions = r->nregions,
		.complete = r->complete, .status = r->have_end ? r->end.status : 0, .created_ns = r->created_ns,
		.chunks = r->end.chunks, .pages_data = r->end.pages_data, .pages_zero = r->end.pages_zero,
		.bytes_raw = r->end.bytes_raw, .bytes_file = r->size, .reason = r->complete ? "" : r->reason,
		.chunks_loaded = r->chain ? usnap_chain_decoded(r->chain) : r->decoded + usnap_ahead_decoded(r->ah, NULL),
		.delta = r->delta, .depth = r->depth, .files = r->chain ? usnap_chain_files(r->chain) : 1,
	};
	memcpy(i.snap_id, r->snap_id, sizeof(i.snap_id));
	memcpy(i.parent_id, r->parent_id, sizeof(i.parent_id));
	memcpy(out, &i, out->size);
	return 0;
}

USNAP_EXPORT int uffdsnap_reader_region(const uffdsnap_reader_t *r, unsigned id, uffdsnap_region_info_t *out)
{
	uffdsnap_region_info_t i;

	usnap_clear_err();
	if (!r || !out)
		return usnap_err(-EINVAL, "uffdsnap_reader_region: reader and out must not be NULL");
	if (usnap_check_size("uffdsnap_reader_region", "uffdsnap_region_info_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_region_info_t, length), sizeof(i)))
		return -EINVAL;
	if (id >= r->nregions)
		return usnap_err(-ENOENT, "uffdsnap_reader_region: no region %u (the snapshot has %u)", id,
				 r->nregions);
	i = (uffdsnap_region_info_t){ .size = out->size, .name = r->regions[id].name,
				      .length = r->regions[id].length };
	memcpy(out, &i, out->size);
	return 0;
}

USNAP_EXPORT int uffdsnap_reader_find(const uffdsnap_reader_t *r, const char *name)
{
	if (!r || !name)
		return -EINVAL;
	for (uint32_t i = 0; i < r->nregions; i++)
		if (!strcmp(r->regions[i].name, name))
			return (int)i;
	return -ENOENT;
}

/* ---- coverage ------------------------------------------------------------------------ */

static int cmp_ext(const void *a, const void *b)
{
	const struct rd_ext *x = a, *y = b;

	if (x->region != y->region)
		return x->region < y->region ? -1 : 1;
	return x->first < y->first ? -1 : x->first > y->first;
}

/* Sort x and check that it covers every page of regions [lo, hi) exactly once
 * (a delta: at most once, the others are its parent's). */
static int cover_check(struct uffdsnap_reader *r, struct rd_ext *x, size_t n, uint32_t lo, uint32_t hi)
{
	size_t i = 0;

	if (n)
		qsort(x, n, sizeof(*x), cmp_ext);
	for (uint32_t g = lo; g < hi; g++) {
		const struct rd_region *reg = &r->regions[g];
		uint64_t next = 0;

		for (; i < n && x[i].region == g; next = x[i].first + x[i].npages, i++) {
			if (x[i].first < next)
				return bad(r, "region '%s': page %" PRIu64 " is recorded twice (chunks at offsets %"
					   PRIu64 " and %" PRIu64 ")", reg->name, x[i].first, x[i - 1].chunk,
					   x[i].chunk);
			if (x[i].first > next && !r->delta)
				return bad(r, "region '%s': pages %" PRIu64 "..%" PRIu64 " are not recorded",
					   reg->name, next, x[i].first - 1);
		}
		if (next != reg->npages && !r->delta)
			return bad(r, "region '%s': pages %" PRIu64 "..%" PRIu64 " are not recorded", reg->name, next,
				   reg->npages - 1);
	}
	return 0;
}

/* Append the extents of chunk c to *x (capacity *cap, grown as needed). */
static int ext_append(struct uffdsnap_reader *r, const struct rd_chunk *c, struct rd_ext **x, size_t *n,
		      size_t *cap)
{
	uint64_t data_off = 0;

	if (*n + c->nextents > *cap) {
		size_t ncap = (*cap ? *cap * 2 : 1024) + c->nextents;
		struct rd_ext *p = realloc(*x, ncap * sizeof(*p));
		if (!p)
			return rd_err(r, -ENOMEM, "out of memory for %zu extents", ncap);
		*x = p;
		*cap = ncap;
	}
	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];

		(*x)[(*n)++] = (struct rd_ext){ .first = e->first_page, .npages = e->npages, .kind = e->kind,
						.region = c->region, .chunk = c->offset, .data_off = data_off };
		if (e->kind == USNAP_EXT_DATA)
			data_off += (uint64_t)e->npages << r->page_shift;
	}
	return 0;
}

/* ---- verify: one sequential pass ----------------------------------------------------- */

struct scan {
	uint64_t off;
	struct usnap_index_ent *chunks;  /* what INDX must say */
	size_t nchunks, chunks_cap;
	struct rd_ext *x;
	size_t nx, x_cap;
	uint64_t pages_data, pages_zero, bytes_raw;
	uint64_t index_off;              /* 0 until INDX is seen */
};

static int scan_chunk(struct uffdsnap_reader *r, struct scan *s, const struct usnap_rec_hdr *h)
{
	struct rd_chunk c;
	int rc;

	if (s->index_off)
		return bad(r, "chunk at offset %" PRIu64 " follows the INDX record", s->off);
	if ((rc = rec_len_ok(r, s->off, h, CHNK_MIN, CHNK_MAX)) || (rc = rec_fill(r, s->off, h, HDR_LEN)) ||
	    (rc = chunk_parse(r, s->off, h->len, true, &c)) ||
	    (rc = ext_append(r, &c, &s->x, &s->nx, &s->x_cap)))
		return rc;
	if (s->nchunks == s->chunks_cap) {
		size_t ncap = s->chunks_cap ? s->chunks_cap * 2 : 256;
		struct usnap_index_ent *p = realloc(s->chunks, ncap * sizeof(*p));
		if (!p)
			return rd_err(r, -ENOMEM, "out of memory");
		s->chunks = p;
		s->chunks_cap = ncap;
	}
	s->chunks[s->nchunks++] = (struct usnap_index_ent){ .offset = s->off, .region = c.region,
							    .nextents = c.nextents, .first_page = c.first,
							    .end_page = c.end };
	s->pages_data += c.data_pages;
	s->pages_zero += c.zero_pages;
	s->bytes_raw += c.raw_len;
	return 0;
}

static int scan_index(struct uffdsnap_reader *r, struct scan *s, const struct usnap_rec_hdr *h)
{
	uint64_t want = INDX_MIN + s->nchunks * sizeof(struct usnap_index_ent), count;
	const struct usnap_index_ent *e;
	int rc;

	if (s->index_off)
		return bad(r, "INDX record at offset %" PRIu64 ": a second index", s->off);
	if (h->len != want)
		return bad(r, "INDX record at offset %" PRIu64 ": length %" PRIu64 ", but %zu chunks need %" PRIu64,
			   s->off, h->len, s->nchunks, want);
	if ((rc = rec_fill(r, s->off, h, HDR_LEN)))
		return rc;
	memcpy(&count, r->rec + HDR_LEN, sizeof(count));
	if (count != s->nchunks)
		return bad(r, "INDX record at offset %" PRIu64 ": %" PRIu64 " entries for %zu chunks", s->off, count,
			   s->nchunks);
	e = (const struct usnap_index_ent *)(r->rec + INDX_MIN);
	for (size_t i = 0; i < s->nchunks; i++) {
		const struct usnap_index_ent *c = &s->chunks[i];
		if (e[i].offset != c->offset || e[i].region != c->region || e[i].nextents != c->nextents ||
		    e[i].first_page != c->first_page || e[i].end_page != c->end_page)
			return bad(r, "INDX record at offset %" PRIu64 ": entry %zu does not match the chunk at "
				   "offset %" PRIu64, s->off, i, c->offset);
	}
	s->index_off = s->off;
	return 0;
}

static int scan_end(struct uffdsnap_reader *r, struct scan *s, const struct usnap_rec_hdr *h)
{
	struct usnap_end e;
	uint8_t extra;
	ssize_t n;
	int rc;

	if ((rc = rec_len_ok(r, s->off, h, USNAP_END_LEN, USNAP_END_LEN)) || (rc = rec_fill(r, s->off, h, HDR_LEN)))
		return rc;
	memcpy(&e, r->rec + HDR_LEN, sizeof(e));
	if (memcmp(e.snap_id, r->snap_id, sizeof(e.snap_id)))
		return bad(r, "END record at offset %" PRIu64 ": it belongs to another snapshot (snapshot id "
			   "differs from HEAD's)", s->off);
	if (!end_fields_ok(&e))
		return bad(r, "END record at offset %" PRIu64 ": status %d is not 0 or a negative errno, or "
			   "reserved bits are set", s->off, e.status);
	if (e.status)
		return rd_err(r, -ENODATA, "the snapshot failed: %s", strerror(-e.status));
	if (!s->index_off || e.index_offset != s->index_off)
		return bad(r, "END record at offset %" PRIu64 ": index offset %" PRIu64 ", but the INDX record is "
			   "at %" PRIu64, s->off, e.index_offset, s->index_off);
	if (e.chunks != s->nchunks || e.pages_data != s->pages_data || e.pages_zero != s->pages_zero ||
	    e.bytes_raw != s->bytes_raw)
		return bad(r, "END record at offset %" PRIu64 ": counts (%" PRIu64 " chunks, %" PRIu64 "+%" PRIu64
			   " pages, %" PRIu64 " bytes) differ from the file's (%zu, %" PRIu64 "+%" PRIu64 ", %" PRIu64
			   ")", s->off, e.chunks, e.pages_data, e.pages_zero, e.bytes_raw, s->nchunks,
			   s->pages_data, s->pages_zero, s->bytes_raw);
	if ((n = src_read(r, s->off + h->len, &extra, 1)) < 0)
		return (int)n;
	if (n)
		return bad(r, "END record at offset %" PRIu64 ": data follows it", s->off);
	if ((rc = cover_check(r, s->x, s->nx, 0, r->nregions)))
		return rc;
	/* a stream is now known complete; a file already was */
	r->end = e;
	r->have_end = r->complete = true;
	return 0;
}

static int scan_records(struct uffdsnap_reader *r, struct scan *s)
{
	for (;;) {
		struct usnap_rec_hdr h;
		int rc = rec_begin(r, s->off, HDR_LEN, &h);

		if (rc)
			return rc;
		switch (h.type) {
		case USNAP_REC_CHNK:
			rc = scan_chunk(r, s, &h);
			break;
		case USNAP_REC_INDX:
			rc = scan_index(r, s, &h);
			break;
		case USNAP_REC_END:
			return scan_end(r, s, &h);
		default:
			return bad(r, "record at offset %" PRIu64 ": unexpected type 0x%08x", s->off, h.type);
		}
		if (rc)
			return rc;
		s->off += h.len;
	}
}

USNAP_EXPORT int uffdsnap_reader_verify(uffdsnap_reader_t *r)
{
	struct scan s = { 0 };
	int rc;

	if (!r)
		return -EINVAL;
	r->err[0] = '\0';
	if (r->chain)
		return usnap_chain_verify(r, r->chain);
	if (!r->seekable && r->stream_read)
		return rd_err(r, -EINVAL, "a stream can be verified only once");
	r->stream_read = true;
	s.off = r->head_end;
	rc = scan_records(r, &s);
	free(s.chunks);
	free(s.x);
	return rc;
}

/* ---- random access ----------------------------------------------------------------------- */

static int need_index(struct uffdsnap_reader *r, unsigned id)
{
	if (id >= r->nregions)
		return rd_err(r, -ENOENT, "no region %u: the snapshot has %u", id, r->nregions);
	if (!r->seekable)
		return rd_err(r, -ESPIPE, "the snapshot is read from a stream: only uffdsnap_reader_verify() "
			      "can read it");
	if (!r->complete)
		return rd_err(r, -ENODATA, "%s", r->reason);
	if (r->delta && !r->chained)
		return rd_err(r, -ENOLINK, "the snapshot is a delta (depth %" PRIu32 "): it holds only the pages that "
			      "changed since its parent, and its image is read with its parent chain (the full "
			      "snapshot and every delta up to this one)", r->depth);
	return 0;
}

/* Load the chunk of index entry e and check that it is what the index says. */
static int ent_load(struct uffdsnap_reader *r, unsigned id, const struct rd_ent *e, bool want_data,
		    struct rd_chunk *c)
{
	int rc = chunk_load(r, e->offset, r->end.index_offset, want_data, c);

	if (rc)
		return rc;
	if (c->region != id || c->nextents != e->nextents || c->first != e->first || c->end != e->end)
		return bad(r, "chunk at offset %" PRIu64 ": does not match its index entry", e->offset);
	return 0;
}

/* ---- the page map ---------------------------------------------------------------------- */

struct map_ext {
	uint64_t first, end;
	uint32_t chunk;
};

static int cmp_map_ext(const void *a, const void *b)
{
	const struct map_ext *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/*
 * The extent tables, read as hints, do not tile the region: something in the
 * file is damaged. Load every chunk of the region whole (checksum, structure,
 * index entry) to say what; if all of them are sound, the tiling is what is
 * wrong.
 */
static int map_blame(struct uffdsnap_reader *r, unsigned id, uint64_t page, bool twice)
{
	const struct rd_region *reg = &r->regions[id];
	struct rd_chunk c;
	int rc;

	for (size_t i = reg->ent_lo; i < reg->ent_hi; i++)
		if ((rc = ent_load(r, id, &r->ents[i], false, &c)))
			return rc;
	return bad(r, "region '%s': page %" PRIu64 " is %s", reg->name, page,
		   twice ? "recorded twice" : "not recorded");
}

/*
 * The extents of chunk i of region id, from its extent table (unchecked),
 * into x. A chunk whose span no other chunk's span overlaps holds every page
 * of it (or the file is damaged, which loading it shows): then, and for a
 * chunk of one extent, the index says it all and nothing is read. Chunks
 * of the sweep alone, as in a snapshot nobody wrote during, need no read.
 */
static int map_hints(struct uffdsnap_reader *r, unsigned id, size_t i, bool alone, struct usnap_extent *tab,
		     struct map_ext *x, size_t *nx)
{
	const struct rd_ent *e = &r->ents[r->regions[id].ent_lo + i];
	size_t len = (size_t)e->nextents * sizeof(*tab);
	ssize_t n;

	/* a delta's chunk may skip pages of its span that did not change */
	if (e->nextents == 1 || (alone && !r->delta)) {
		x[(*nx)++] = (struct map_ext){ e->first, e->end, (uint32_t)i };
		return 0;
	}
	if ((n = src_read(r, e->offset + CHNK_FIXED, tab, len)) < 0)
		return (int)n;
	if ((size_t)n < len)
		return 1;
	for (uint32_t k = 0; k < e->nextents; k++) {
		if (!tab[k].npages || tab[k].kind > USNAP_EXT_ZERO || tab[k].first_page < e->first ||
		    tab[k].npages > e->end - tab[k].first_page)
			return 1;
		x[(*nx)++] = (struct map_ext){ tab[k].first_page, tab[k].first_page + tab[k].npages, (uint32_t)i };
	}
	return 0;
}

static void map_add(struct rd_map *m, uint64_t first, uint32_t chunk)
{
	if (m->n && m->chunk[m->n - 1] == chunk)
		return;
	m->first[m->n] = first;
	m->chunk[m->n++] = chunk;
}

/* Build the page map of region id: one small read per chunk of several extents. */
static int map_build(struct uffdsnap_reader *r, unsigned id)
{
	const struct rd_region *reg = &r->regions[id];
	struct rd_map *m = &r->maps[id];
	size_t nch = reg->ent_hi - reg->ent_lo, cap = 0, nx = 0, runs = 0;
	uint32_t most = 1;
	struct usnap_extent *tab;
	struct map_ext *x;
	uint64_t next = 0, reach = 0;
	int rc = 0;

	if (nch >= RD_GAP)
		return rd_err(r, -EFBIG, "region '%s': %zu chunks: this reader maps at most 2^32 a region", reg->name,
			      nch);
	for (size_t i = reg->ent_lo; i < reg->ent_hi; i++) {
		cap += r->ents[i].nextents; /* bounded by the file size: index_check() */
		most = r->ents[i].nextents > most ? r->ents[i].nextents : most;
	}
	x = malloc((cap ? cap : 1) * sizeof(*x));
	tab = malloc(most * sizeof(*tab));
	if (!x || !tab) {
		free(x);
		free(tab);
		return rd_err(r, -ENOMEM, "out of memory for the map of %zu extents", cap);
	}
	/* ents are sorted by first page: a span is alone if it starts at or after
	 * the end of every span before it and ends by the start of the next */
	for (size_t i = 0; i < nch && !rc; i++) {
		const struct rd_ent *e = &r->ents[reg->ent_lo + i];
		bool alone = e->first >= reach && (i + 1 == nch || e[1].first >= e->end);

		reach = e->end > reach ? e->end : reach;
		rc = map_hints(r, id, i, alone, tab, x, &nx);
	}
	free(tab);
	if (rc > 0) {
		free(x);
		return map_blame(r, id, 0, false);
	}
	if (nx)
		qsort(x, nx, sizeof(*x), cmp_map_ext);
	for (size_t k = 0; k < nx && !rc; next = x[k].end, k++) {
		if (x[k].first < next || (x[k].first > next && !r->delta)) {
			rc = map_blame(r, id, x[k].first < next ? x[k].first : next, x[k].first < next);
		} else if (!k || x[k].chunk != x[k - 1].chunk || x[k].first > next) {
			runs += 1 + (x[k].first > next);
		}
	}
	if (!rc && next != reg->npages && !r->delta)
		rc = map_blame(r, id, next, false);
	runs += next != reg->npages;
	if (!rc && (!(m->first = malloc(runs * sizeof(*m->first))) || !(m->chunk = malloc(runs * sizeof(*m->chunk)))))
		rc = rd_err(r, -ENOMEM, "out of memory for the map of %zu runs", runs);
	/* a delta's pages it does not hold make runs of RD_GAP */
	next = 0;
	for (size_t k = 0; k < nx && !rc; next = x[k].end, k++) {
		if (x[k].first > next)
			map_add(m, next, RD_GAP);
		map_add(m, x[k].first, x[k].chunk);
	}
	if (!rc && next != reg->npages)
		map_add(m, next, RD_GAP);
	free(x);
	if (rc) {
		free(m->first);
		free(m->chunk);
		*m = (struct rd_map){ 0 };
		return rc;
	}
	m->built = true;
	return 0;
}

/*
 * The bytes of runs a read of region id in page order keeps at most with
 * room for all (park_chunk()): a chunk is loaded at its first run, and each
 * of its runs from there on is kept (or read) until the read passes it. So
 * the runs kept while the read is in run j are those, at or after j, of the
 * chunks whose first run is at or before j: summed over the map, an upper
 * bound for any piece size. 8 bytes a run and a chunk, for a moment.
 */
static uint64_t map_keep_need(const struct uffdsnap_reader *r, unsigned id)
{
	const struct rd_map *m = &r->maps[id];
	const size_t nch = r->regions[id].ent_hi - r->regions[id].ent_lo;
	size_t *first = malloc((nch ? nch : 1) * sizeof(*first));
	uint64_t *add = calloc(m->n + 1, sizeof(*add)), *sub = calloc(m->n + 1, sizeof(*sub));
	uint64_t sum = 0, most = 0;

	if (!first || !add || !sub) {
		free(first);
		free(add);
		free(sub);
		return 0; /* out of memory: the default stays UFFDSNAP_READER_CACHE */
	}
	for (size_t c = 0; c < nch; c++)
		first[c] = SIZE_MAX;
	for (size_t k = 0; k < m->n; k++) {
		uint64_t kend = k + 1 < m->n ? m->first[k + 1] : r->regions[id].npages;
		uint64_t len = (kend - m->first[k]) << r->page_shift;
		uint32_t c = m->chunk[k];

		if (c == RD_GAP || len > PARK_RUN_MAX)
			continue;
		if (first[c] == SIZE_MAX)
			first[c] = k;
		add[first[c]] += len + sizeof(struct rd_park);
		sub[k + 1] += len + sizeof(struct rd_park);
	}
	for (size_t k = 0; k < m->n; k++) {
		sum = sum + add[k] - sub[k];
		most = sum > most ? sum : most;
	}
	free(first);
	free(add);
	free(sub);
	return most;
}

/* The default room for runs kept: what the regions mapped so far need, within
 * UFFDSNAP_READER_CACHE .. UFFDSNAP_READER_CACHE_AUTO. */
static void park_default(struct uffdsnap_reader *r)
{
	uint64_t need = r->park_need;

	if (!r->park_set)
		r->park_max = need < UFFDSNAP_READER_CACHE ? UFFDSNAP_READER_CACHE
			      : need > UFFDSNAP_READER_CACHE_AUTO ? UFFDSNAP_READER_CACHE_AUTO : (size_t)need;
}

/* need_index(), and the page map of region id. */
static int need_map(struct uffdsnap_reader *r, unsigned id)
{
	uint64_t need;
	int rc = need_index(r, id);

	if (rc)
		return rc;
	if (!r->maps && !(r->maps = calloc(r->nregions, sizeof(*r->maps))))
		return rd_err(r, -ENOMEM, "out of memory");
	if (r->maps[id].built)
		return 0;
	if ((rc = map_build(r, id)))
		return rc;
	need = map_keep_need(r, id);
	r->park_need = need > r->park_need ? need : r->park_need;
	park_default(r);
	return 0;
}

/* The run of map m that holds page p. */
static size_t map_run(const struct rd_map *m, uint64_t p)
{
	return usnap_run_find(m->first, m->n, p);
}

/*
 * Copy what chunk c holds of [off, off + len) and mark its pages of [p0, p1)
 * in `seen`. Returns the first page found marked already (recorded twice),
 * or UINT64_MAX. A count of pages would not do: a page recorded twice and
 * one never recorded add up to the right number.
 */
static uint64_t chunk_copy(const struct uffdsnap_reader *r, const struct rd_chunk *c, uint64_t off, uint8_t *buf,
			   uint64_t len, uint64_t p0, uint64_t p1, uint64_t *seen)
{
	uint64_t data_off = 0;

	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];
		uint64_t e1 = e->first_page + e->npages;
		uint64_t o0 = e->first_page > p0 ? e->first_page : p0, o1 = e1 < p1 ? e1 : p1;

		if (o0 < o1) {
			for (uint64_t b = o0 - p0; b < o1 - p0; b++) {
				if (usnap_bit(seen, b))
					return p0 + b;
				usnap_bits_set(seen, b, b + 1);
			}
			/* page * page_size <= region length <= 2^48: no overflow */
			uint64_t b0 = o0 << r->page_shift, b1 = o1 << r->page_shift;
			b0 = b0 > off ? b0 : off;
			b1 = b1 < off + len ? b1 : off + len;
			if (e->kind == USNAP_EXT_DATA)
				memcpy(buf + (b0 - off), c->data + data_off + (b0 - (e->first_page << r->page_shift)),
				       b1 - b0);
			else
				memset(buf + (b0 - off), 0, b1 - b0);
		}
		if (e->kind == USNAP_EXT_DATA)
			data_off += (uint64_t)e->npages << r->page_shift;
	}
	return UINT64_MAX;
}


/*
 * Map the pages of [buf, buf + len) that it covers whole, in one call: this
 * machine's page faults cost ~12 us each (a fresh 512 MiB buffer measured
 * 1.98 s to fill, 0.40 s warm). Best effort: memory that cannot be
 * populated so takes its faults.
 */
static void populate(void *buf, size_t len)
{
	const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)buf + page - 1) & ~(page - 1), b = ((uintptr_t)buf + len) & ~(page - 1);

	if (a < b)
		madvise((void *)a, b - a, MADV_POPULATE_WRITE);
}

/* ---- runs kept for later reads -------------------------------------------------------- */

/*
 * A read loads every chunk that holds a page it wants, but a chunk of pages
 * copied for faulting writers also holds runs far ahead in the region. A
 * read in page order would load it again for each of them: the runs that
 * reach beyond the read are kept instead, within park_max bytes; when room
 * is needed, runs of other regions go first, then runs behind the read,
 * then the runs farthest ahead (docs/design.md has the numbers).
 */

/*
 * Run buffers come and go at the pace of reads (a 4 KiB read keeps the rest
 * of each chunk it loads), and fresh memory costs a page fault a page: on a
 * 1 GiB read in 4 KiB pieces, as much time as the copies into them. So a few
 * freed buffers are held for the next runs: at most PARK_SPARES of at most
 * PARK_RUN_MAX bytes, besides park_max.
 */
static void spare_put(struct uffdsnap_reader *r, uint8_t *data, size_t cap)
{
	size_t least = 0;

	for (size_t i = 0; i < PARK_SPARES && data; i++) {
		if (!r->spare[i].data) {
			r->spare[i] = (struct rd_spare){ data, cap };
			return;
		}
		least = r->spare[i].cap < r->spare[least].cap ? i : least;
	}
	if (data && cap > r->spare[least].cap) {
		free(r->spare[least].data);
		r->spare[least] = (struct rd_spare){ data, cap };
		return;
	}
	free(data);
}

/* A buffer of at least len bytes: the smallest spare that holds it, if it is
 * less than twice as large, else a new one (NULL without memory). */
static uint8_t *spare_get(struct uffdsnap_reader *r, size_t len, size_t *cap)
{
	size_t best = PARK_SPARES;
	uint8_t *data;

	for (size_t i = 0; i < PARK_SPARES; i++)
		if (r->spare[i].data && r->spare[i].cap >= len && r->spare[i].cap / 2 < len &&
		    (best == PARK_SPARES || r->spare[i].cap < r->spare[best].cap))
			best = i;
	if (best == PARK_SPARES) {
		*cap = len;
		if ((data = malloc(len)))
			populate(data, len);
		return data;
	}
	data = r->spare[best].data;
	*cap = r->spare[best].cap;
	r->spare[best] = (struct rd_spare){ 0 };
	return data;
}

/* The largest spare, taken (NULL if none). */
static uint8_t *spare_largest(struct uffdsnap_reader *r, size_t *cap)
{
	size_t best = 0;
	uint8_t *data;

	for (size_t i = 1; i < PARK_SPARES; i++)
		best = r->spare[i].cap > r->spare[best].cap ? i : best;
	data = r->spare[best].data;
	*cap = r->spare[best].cap;
	r->spare[best] = (struct rd_spare){ 0 };
	return data;
}

static void park_free(struct uffdsnap_reader *r, size_t i)
{
	r->park_bytes -= r->parks[i].len + sizeof(struct rd_park);
	spare_put(r, r->parks[i].data, r->parks[i].cap);
	memmove(&r->parks[i], &r->parks[i + 1], (r->nparks - i - 1) * sizeof(*r->parks));
	r->nparks--;
}

static void park_drop(struct uffdsnap_reader *r)
{
	for (size_t i = 0; i < r->nparks; i++)
		free(r->parks[i].data);
	for (size_t i = 0; i < HOLD_MAX; i++) {
		free(r->hold[i].data);
		free(r->hold[i].ext);
	}
	memset(r->hold, 0, sizeof(r->hold));
	for (size_t i = 0; i < PARK_SPARES; i++)
		free(r->spare[i].data);
	memset(r->spare, 0, sizeof(r->spare));
	free(r->parks);
	r->parks = NULL;
	r->nparks = r->park_cap = r->park_bytes = 0;
}

USNAP_EXPORT int uffdsnap_reader_cache(uffdsnap_reader_t *r, size_t bytes)
{
	if (!r)
		return -EINVAL;
	park_drop(r);
	r->park_max = bytes;
	r->park_set = true;
	if (r->chain)
		usnap_chain_cache(r->chain, bytes);
	return 0;
}

/* Where run k of region id is, or would go, in parks. */
static size_t park_pos(const struct uffdsnap_reader *r, uint32_t id, uint64_t k)
{
	size_t lo = 0, hi = r->nparks;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct rd_park *q = &r->parks[mid];

		if (q->region < id || (q->region == id && q->run < k))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct rd_park *park_find(struct uffdsnap_reader *r, uint32_t id, uint64_t k)
{
	size_t i = park_pos(r, id, k);

	return i < r->nparks && r->parks[i].region == id && r->parks[i].run == k ? &r->parks[i] : NULL;
}

/* A new entry for run k of region id, its pages all zero so far (no data
 * buffer yet); NULL without memory: the run is then not kept. */
static struct rd_park *park_new(struct uffdsnap_reader *r, uint32_t id, uint64_t k)
{
	size_t i = park_pos(r, id, k);

	if (r->nparks == r->park_cap) {
		size_t ncap = r->park_cap ? 2 * r->park_cap : 64;
		struct rd_park *p = realloc(r->parks, ncap * sizeof(*p));
		if (!p)
			return NULL;
		r->parks = p;
		r->park_cap = ncap;
	}
	memmove(&r->parks[i + 1], &r->parks[i], (r->nparks - i) * sizeof(*r->parks));
	r->parks[i] = (struct rd_park){ .region = id, .run = k, .filled = r->reads };
	r->nparks++;
	r->park_bytes += sizeof(struct rd_park);
	return &r->parks[i];
}

/* Out of memory while keeping runs: a run filled in part would read as zeros
 * where its pages are, so drop every run this read began. */
static void park_abandon(struct uffdsnap_reader *r)
{
	for (size_t j = r->nparks; j-- > 0;)
		if (r->parks[j].filled == r->reads)
			park_free(r, j);
}

/* The zero pages of chunk c in pages [first, end), the run q keeps: its
 * extents tile the run, so the rest is its data, copied in. If they do not
 * (the map disagrees with the checked chunk: the file changed), all of it,
 * as no byte of the buffer may reach a read unwritten. */
static void park_zeros(const struct uffdsnap_reader *r, const struct rd_chunk *c, struct rd_park *q, uint64_t first,
		       uint64_t end)
{
	uint64_t pages = 0;

	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];

		if (e->first_page < first || e->first_page + e->npages > end)
			continue;
		pages += e->npages;
		if (e->kind != USNAP_EXT_DATA)
			memset(q->data + ((e->first_page - first) << r->page_shift), 0,
			       (size_t)e->npages << r->page_shift);
	}
	if (pages != end - first)
		memset(q->data, 0, q->len);
}

static struct rd_hold *hold_find(struct uffdsnap_reader *r, uint32_t id, uint32_t ci)
{
	for (size_t i = 0; i < HOLD_MAX; i++)
		if (r->hold[i].used && r->hold[i].region == id && r->hold[i].chunk == ci)
			return &r->hold[i];
	return NULL;
}

static void hold_free(struct uffdsnap_reader *r, struct rd_hold *h)
{
	spare_put(r, h->data, h->cap);
	free(h->ext);
	*h = (struct rd_hold){ 0 };
}

/*
 * Keep chunk c (index ci of region id) whole, without a copy, if its span
 * is short (at most PARK_RUN_MAX) and reaches beyond page p1: a chunk of the
 * sweep read in pieces smaller than it, whose runs fault runs interleave.
 * Its pages are taken from the buffer they were decoded into (the
 * read-ahead's slot if `ahead`, else r's own), which gets a spare in
 * exchange: copying nearly every page of the region once more into a run
 * cost a read in 4 KiB pieces a fifth of its time. At most HOLD_MAX chunks
 * (of at most PARK_RUN_MAX bytes of pages each) are so kept, besides
 * park_max; false if c is not (its runs are then kept as runs).
 */
static bool hold_chunk(struct uffdsnap_reader *r, uint32_t id, uint32_t ci, const struct rd_chunk *c, uint64_t p0,
		       uint64_t p1, bool ahead)
{
	const struct rd_map *m = &r->maps[id];
	struct rd_hold *h = NULL;
	struct usnap_extent *ext;
	size_t cap = 0, got_cap = 0;
	uint8_t *give, *got;

	if (!r->park_max || !c->data || c->end <= p1 || (c->end - c->first) << r->page_shift > PARK_RUN_MAX ||
	    (!ahead && c->data != r->raw))
		return false;
	/* a free place, or one of another region or behind the read */
	for (size_t i = 0; i < HOLD_MAX && (!h || h->used); i++)
		if (!r->hold[i].used || r->hold[i].region != id || r->hold[i].end <= p0)
			h = &r->hold[i];
	if (!h)
		return false;
	/* loaded again after runs of it were dropped: some may still be kept */
	for (size_t k = map_run(m, c->first); k < m->n && m->first[k] < c->end; k++)
		if (m->chunk[k] == ci && park_find(r, id, k))
			return false;
	if (!(ext = malloc(c->nextents * sizeof(*ext))))
		return false;
	memcpy(ext, c->ext, c->nextents * sizeof(*ext)); /* c's record may be reused once traded */
	give = spare_largest(r, &cap);
	if (ahead) {
		got = usnap_ahead_trade(r->ah, c->data, give, cap, &got_cap);
	} else {
		got = r->raw, got_cap = r->raw_cap;
		r->raw = give, r->raw_cap = cap;
		r->cur_valid = false; /* its pages are the hold's now */
	}
	if (!got) { /* stored without compression: the pages are in its record */
		spare_put(r, give, cap);
		free(ext);
		return false;
	}
	if (got_cap > PARK_RUN_MAX) { /* grown for a larger chunk before: the bound is on memory */
		uint8_t *less = realloc(got, PARK_RUN_MAX);

		if (less)
			got = less, got_cap = PARK_RUN_MAX;
	}
	if (h->used)
		hold_free(r, h);
	*h = (struct rd_hold){ .used = true, .region = id, .chunk = ci, .next = c->nextents, .first = c->first,
			       .end = c->end, .ext = ext, .data = got, .cap = got_cap };
	return true;
}

/* Keep chunk c (index ci of region id), loaded for a read of pages
 * [p0, p1), for the reads after it: whole (hold_chunk(); ahead: c is the
 * read-ahead's), or the runs of it that reach beyond p1, every extent of c
 * in such a run copied in (zero pages as zeros). */
static void park_chunk(struct uffdsnap_reader *r, uint32_t id, uint32_t ci, const struct rd_chunk *c, uint64_t p0,
		       uint64_t p1, bool ahead)
{
	const struct rd_map *m = &r->maps[id];
	uint64_t data_off = 0;

	if (hold_chunk(r, id, ci, c, p0, p1, ahead))
		return;

	for (uint32_t i = 0; i < c->nextents && r->park_max; i++) {
		const struct usnap_extent *e = &c->ext[i];
		uint64_t len = (uint64_t)e->npages << r->page_shift, kend;
		size_t k = map_run(m, e->first_page);
		struct rd_park *q;

		if (e->kind == USNAP_EXT_DATA)
			data_off += len;
		kend = k + 1 < m->n ? m->first[k + 1] : r->regions[id].npages;
		/* (the map not agreeing with a checked chunk: the file changed;
		 * the read itself checks every page) */
		if (kend <= p1 || m->chunk[k] != ci || e->first_page + e->npages > kend ||
		    (kend - m->first[k]) << r->page_shift > PARK_RUN_MAX)
			continue;
		if (!(q = park_find(r, id, k)) && !(q = park_new(r, id, k))) {
			park_abandon(r);
			return;
		}
		if (q->filled != r->reads || e->kind != USNAP_EXT_DATA)
			continue; /* kept whole by an earlier read; zeros are there */
		if (!q->data) {
			size_t run_len = (size_t)(kend - m->first[k]) << r->page_shift;

			/* not calloc(): zeroing every run cost as much as its copy */
			if (!(q->data = spare_get(r, run_len, &q->cap))) {
				park_abandon(r);
				return;
			}
			q->len = run_len;
			r->park_bytes += run_len;
			park_zeros(r, c, q, m->first[k], kend);
		}
		memcpy(q->data + ((e->first_page - m->first[k]) << r->page_shift), c->data + data_off - len, len);
	}
}

/* Make room: other regions' runs first, then runs behind run k0 of region
 * id, then the runs farthest ahead. */
static void park_evict(struct uffdsnap_reader *r, uint32_t id, uint64_t k0)
{
	while (r->park_bytes > r->park_max && r->nparks) {
		size_t lo = park_pos(r, id, 0), hi = park_pos(r, id + 1, 0);

		park_free(r, lo > 0 ? 0 : hi < r->nparks ? r->nparks - 1 : r->parks[lo].run < k0 ? lo : hi - 1);
	}
}

/* r->want, all clear, with a bit for each of n chunks. */
static int want_room(struct uffdsnap_reader *r, size_t n)
{
	size_t words = (n + 63) / 64;
	uint64_t *w;

	if (words <= r->want_words)
		return 0;
	if (!(w = calloc(words, sizeof(*w))))
		return rd_err(r, -ENOMEM, "out of memory");
	free(r->want);
	r->want = w;
	r->want_words = words;
	return 0;
}

/* The chunks (indexes in region id's slice) that hold the runs k0..k1 not
 * kept already, each once, in page-map order (the order the read copies
 * them in, and the order they are decoded in), into a new array; their bits
 * set in r->want, which want_clear() clears. */
static int need_chunks(struct uffdsnap_reader *r, unsigned id, size_t k0, size_t k1, uint32_t **out, size_t *n)
{
	const struct rd_map *m = &r->maps[id];
	size_t u = 0;
	uint32_t *v;

	if (want_room(r, r->regions[id].ent_hi - r->regions[id].ent_lo))
		return -ENOMEM;
	if (!(v = malloc((k1 - k0 + 1) * sizeof(*v))))
		return rd_err(r, -ENOMEM, "out of memory");
	for (size_t k = k0; k <= k1; k++) {
		uint32_t ci = m->chunk[k];

		if (ci != RD_GAP && !usnap_bit(r->want, ci) && !park_find(r, id, k) && !hold_find(r, id, ci)) {
			usnap_bits_set(r->want, ci, ci + 1);
			v[u++] = ci;
		}
	}
	*out = v;
	*n = u;
	return 0;
}

static void want_clear(struct uffdsnap_reader *r, const uint32_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		usnap_bits_clear(r->want, v[i], v[i] + 1);
}

/*
 * Copy the kept runs among k0..k1 whose chunks are not being loaded (in
 * r->want: those copy their own pages) into buf, marking their pages of [p0, p1) in seen;
 * a run the read is done with is dropped. Returns the first page marked
 * already, or UINT64_MAX.
 */
static uint64_t park_copy(struct uffdsnap_reader *r, unsigned id, size_t k0, size_t k1, uint64_t off, uint8_t *buf,
			  uint64_t len, uint64_t p0, uint64_t p1, uint64_t *seen)
{
	const struct rd_map *m = &r->maps[id];

	/* chunks kept whole: what each holds of the read (none is loaded again) */
	for (size_t i = 0; i < HOLD_MAX; i++) {
		struct rd_hold *h = &r->hold[i];
		const struct rd_chunk c = { .ext = h->ext, .nextents = h->next, .data = h->data };
		uint64_t twice;

		if (!h->used || h->region != id || h->end <= p0 || h->first >= p1)
			continue;
		if ((twice = chunk_copy(r, &c, off, buf, len, p0, p1, seen)) != UINT64_MAX)
			return twice;
		if (h->end <= p1)
			hold_free(r, h);
	}

	for (size_t k = k0; k <= k1; k++) {
		uint64_t kend = k + 1 < m->n ? m->first[k + 1] : r->regions[id].npages;
		uint64_t a = m->first[k] > p0 ? m->first[k] : p0, b = kend < p1 ? kend : p1, b0, b1;
		struct rd_park *q = park_find(r, id, k);

		if (!q || (m->chunk[k] != RD_GAP && usnap_bit(r->want, m->chunk[k])))
			continue;
		for (uint64_t bit = a - p0; bit < b - p0; bit++) {
			if (usnap_bit(seen, bit))
				return p0 + bit;
			usnap_bits_set(seen, bit, bit + 1);
		}
		b0 = a << r->page_shift, b1 = b << r->page_shift;
		b0 = b0 > off ? b0 : off;
		b1 = b1 < off + len ? b1 : off + len;
		if (q->data)
			memcpy(buf + (b0 - off), q->data + (b0 - (m->first[k] << r->page_shift)), b1 - b0);
		else
			memset(buf + (b0 - off), 0, b1 - b0);
		if (kend <= p1)
			park_free(r, (size_t)(q - r->parks));
	}
	return UINT64_MAX;
}

/* ---- decoding ahead ------------------------------------------------------------------------ */

int usnap_reader_decode(uffdsnap_reader_t *r, unsigned id, size_t ci, struct usnap_rbufs *b, struct usnap_rchunk *out,
			char *err, size_t errlen)
{
	/* r's own buffers, last chunk, count and error stay as they are: b's
	 * buffers stand in for its buffers for one load */
	struct usnap_rbufs own = { r->rec, r->raw, r->rec_cap, r->raw_cap };
	struct rd_chunk cur = r->cur, c;
	bool cur_valid = r->cur_valid, cur_data = r->cur_data;
	uint64_t decoded = r->decoded;
	char saved[sizeof(r->err)];
	int rc;

	memcpy(saved, r->err, sizeof(saved));
	r->rec = b->rec, r->raw = b->raw, r->rec_cap = b->rec_cap, r->raw_cap = b->raw_cap;
	r->cur_valid = false;
	rc = ent_load(r, id, &r->ents[r->regions[id].ent_lo + ci], true, &c);
	*b = (struct usnap_rbufs){ r->rec, r->raw, r->rec_cap, r->raw_cap };
	r->rec = own.rec, r->raw = own.raw, r->rec_cap = own.rec_cap, r->raw_cap = own.raw_cap;
	r->cur = cur, r->cur_valid = cur_valid, r->cur_data = cur_data;
	r->decoded = decoded;
	if (rc)
		snprintf(err, errlen, "%s", r->err);
	else
		*out = (struct usnap_rchunk){ .ext = c.ext, .nextents = c.nextents, .data = c.data, .raw_len = c.raw_len };
	memcpy(r->err, saved, sizeof(saved));
	return rc;
}

/* End r's read-ahead (the next read may start another); the chunks it
 * decoded still count in info.chunks_loaded. */
static void ahead_stop(struct uffdsnap_reader *r)
{
	r->decoded += usnap_ahead_decoded(r->ah, NULL);
	usnap_ahead_free(r->ah);
	r->ah = NULL;
	r->ah_tried = false;
}

USNAP_EXPORT int uffdsnap_reader_threads(uffdsnap_reader_t *r, unsigned n)
{
	if (!r || n > UFFDSNAP_READER_THREADS_MAX)
		return -EINVAL;
	ahead_stop(r);
	r->ah_fixed = true;
	r->ah_n = n;
	return 0;
}

uint64_t usnap_reader_ahead_decoded(const uffdsnap_reader_t *r, uint64_t *failed)
{
	return usnap_ahead_decoded(r->ah, failed);
}

/*
 * The read-ahead of a plain file's reader, started on first use: one worker
 * per online CPU but one (the rule of eager restore, whose caller decodes
 * too), and room for AHEAD_PER_THREAD chunks a decoding thread within
 * AHEAD_BYTES of pages, plus the chunk the caller holds. NULL with one CPU,
 * or if no thread could be started: the caller then decodes alone.
 */
static struct usnap_ahead *ahead(struct uffdsnap_reader *r)
{
	uint64_t mean, fit;
	unsigned workers, slots;
	long cpus;

	if (r->ah && usnap_ahead_forked(r->ah))
		ahead_stop(r); /* a child of fork(): the workers stayed in the parent */
	if (r->ah || r->ah_tried || r->chain)
		return r->ah;
	r->ah_tried = true;
	cpus = sysconf(_SC_NPROCESSORS_ONLN); /* reads a file: once */
	workers = r->ah_fixed ? r->ah_n
		  : cpus > 1 ? (unsigned)(cpus <= UFFDSNAP_READER_THREADS_MAX ? cpus - 1 : UFFDSNAP_READER_THREADS_MAX)
			     : 0;
	if (!workers)
		return NULL;
	mean = r->end.chunks ? r->end.bytes_raw / r->end.chunks : 0;
	fit = AHEAD_BYTES / (mean > (64u << 10) ? mean : (64u << 10));
	slots = AHEAD_PER_THREAD * (workers + 1);
	slots = (fit < slots ? (fit > 2 ? (unsigned)fit : 2) : slots) + 1;
	usnap_ahead_new(r, workers, slots, &r->ah);
	usnap_clear_err(); /* a clone that failed set it; the reader goes on without */
	return r->ah;
}

static bool still_wanted(void *arg, size_t ci)
{
	const struct uffdsnap_reader *r = arg;

	return usnap_bit(r->want, ci);
}

static bool in_want(void *arg, unsigned id, size_t ci)
{
	const struct uffdsnap_reader *r = arg;

	return id == r->ra_id && still_wanted(arg, ci);
}

/* A chunk of region id still wanted (its bit in r->want; v[*sync..] lists
 * them), in *ci with its pages: any the read-ahead has decoded, else the
 * first of v from *sync on, loaded here. Its bit is cleared. */
static int chunk_next(struct uffdsnap_reader *r, unsigned id, const uint32_t *v, size_t *sync, size_t *ci,
		      struct usnap_rchunk *c, bool *ahead)
{
	int rc = r->ah ? usnap_ahead_take(r->ah, r, id, still_wanted, r, ci, c) : 1;

	*ahead = rc <= 0;
	if (rc > 0) {
		while (!usnap_bit(r->want, v ? v[*sync] : *sync))
			++*sync;
		*ci = v ? v[*sync] : *sync;
		rc = usnap_reader_chunk(r, id, *ci, c);
	}
	usnap_bits_clear(r->want, *ci, *ci + 1);
	return rc;
}

/*
 * Queue what the read-ahead has room for: the read's chunks from *next on (v,
 * or chunks 0..n-1 without it), then, for a read in page order, the chunks
 * of the runs after it in map order (none kept already: a run is kept only by loading its chunk, and
 * that chunk is then loaded again only if it was dropped).
 */
static void ahead_fill(struct uffdsnap_reader *r, unsigned id, const uint32_t *v, size_t n, size_t *next, bool seq)
{
	const struct rd_map *m = &r->maps[id];

	while (*next < n && (!still_wanted(r, v ? v[*next] : *next) ||
			     usnap_ahead_queue(r->ah, id, v ? v[*next] : *next)))
		++*next;
	if (*next < n || !seq)
		return;
	for (unsigned walk = 0; r->ra_run < m->n && walk < AHEAD_WALK; walk++, r->ra_run++)
		if (m->chunk[r->ra_run] != RD_GAP && !park_find(r, id, r->ra_run) &&
		    !hold_find(r, id, m->chunk[r->ra_run]) && !usnap_ahead_queue(r->ah, id, m->chunk[r->ra_run]))
			break;
}

USNAP_EXPORT int uffdsnap_reader_read(uffdsnap_reader_t *r, unsigned id, uint64_t off, void *buf, size_t len)
{
	const struct rd_region *reg;
	uint64_t p0, p1, twice = UINT64_MAX, missing = UINT64_MAX, *seen;
	uint32_t *chunks = NULL;
	size_t n = 0, k0, k1, next = 0;
	bool cont, seq;
	int rc = 0;

	if (!r || (!buf && len))
		return -EINVAL;
	r->err[0] = '\0';
	if (r->chain)
		return usnap_chain_read(r, r->chain, id, off, buf, len);
	if ((rc = need_map(r, id)))
		return rc;
	reg = &r->regions[id];
	if (off > reg->length || len > reg->length - off)
		return rd_err(r, -EINVAL, "bytes %" PRIu64 "+%zu are not inside region '%s' of %" PRIu64 " bytes",
			      off, len, reg->name, reg->length);
	if (!len)
		return 0;
	p0 = off >> r->page_shift;
	p1 = (off + len + r->page_size - 1) >> r->page_shift;
	k0 = map_run(&r->maps[id], p0);
	k1 = map_run(&r->maps[id], p1 - 1);
	r->reads++;
	if ((rc = need_chunks(r, id, k0, k1, &chunks, &n)))
		return rc;
	/* one bit per page asked for: sized by the caller's len, not by the file */
	if (!(seen = calloc((p1 - p0 + 63) / 64, sizeof(*seen)))) {
		want_clear(r, chunks, n);
		free(chunks);
		return rd_err(r, -ENOMEM, "out of memory for a read of %zu bytes", len);
	}
	/* a read that goes on from the last one, or starts a region, is read
	 * ahead of; any other read drops what was decoded for another place */
	cont = id == r->ra_id && off == r->ra_next;
	seq = cont || !off;
	r->ra_run = cont && r->ra_run > k1 ? r->ra_run : k1 + 1;
	r->ra_id = id;
	r->ra_next = off + len;
	if ((n || r->ah) && ahead(r)) {
		if (!cont)
			usnap_ahead_keep(r->ah, in_want, r);
		ahead_fill(r, id, chunks, n, &next, seq);
	}
	/* every byte of a large read is written: where the caller's buffer is
	 * fresh memory, one call maps it */
	if (len >= POPULATE_MIN)
		populate(buf, len);
	twice = park_copy(r, id, k0, k1, off, buf, len, p0, p1, seen);
	/* each chunk once, in the order they are decoded in: what it holds is
	 * copied from its checked extents, whatever the map said */
	for (size_t left = n, sync = 0; left && twice == UINT64_MAX; left--) {
		struct usnap_rchunk u;
		struct rd_chunk c;
		bool from_ahead;
		size_t ci;

		if ((rc = chunk_next(r, id, chunks, &sync, &ci, &u, &from_ahead)))
			break;
		/* its span is its index entry's (checked when it was loaded) */
		c = (struct rd_chunk){ .ext = u.ext, .nextents = u.nextents, .data = u.data, .raw_len = u.raw_len,
				       .first = r->ents[reg->ent_lo + ci].first, .end = r->ents[reg->ent_lo + ci].end };
		if ((twice = chunk_copy(r, &c, off, buf, len, p0, p1, seen)) == UINT64_MAX) {
			park_chunk(r, id, (uint32_t)ci, &c, p0, p1, from_ahead);
			park_evict(r, id, k0);
		}
		if (r->ah)
			ahead_fill(r, id, chunks, n, &next, seq);
	}
	for (uint64_t b = 0; !rc && twice == UINT64_MAX && b < p1 - p0 && missing == UINT64_MAX; b++)
		if (!usnap_bit(seen, b))
			missing = p0 + b;
	free(seen);
	want_clear(r, chunks, n);
	free(chunks);
	if (rc)
		return rc;
	if (twice != UINT64_MAX)
		return bad(r, "region '%s': page %" PRIu64 " is recorded twice", reg->name, twice);
	if (missing != UINT64_MAX)
		return bad(r, "region '%s': page %" PRIu64 " is not recorded", reg->name, missing);
	return 0;
}

/* ---- extract ------------------------------------------------------------------------------- */

struct out {
	int fd;
	bool holes;       /* a regular file: ZERO extents stay holes */
	bool positional;  /* pwrite at page offsets, else write in order */
};

static int out_write(struct uffdsnap_reader *r, const struct out *o, uint64_t off, const void *buf, uint64_t len)
{
	const uint8_t *p = buf;

	while (len) {
		size_t want = len < (1u << 30) ? (size_t)len : (1u << 30);
		ssize_t n = o->positional ? pwrite(o->fd, p, want, (off_t)off) : write(o->fd, p, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return rd_err(r, n ? -errno : -EIO, "writing the region at offset %" PRIu64 ": %s", off,
				      n ? strerror(errno) : "no progress");
		p += n, off += (uint64_t)n, len -= (uint64_t)n;
	}
	return 0;
}

static int out_zeros(struct uffdsnap_reader *r, const struct out *o, uint64_t off, uint64_t len)
{
	static const uint8_t zeros[1 << 16];
	int rc = 0;

	while (len && !rc) {
		uint64_t n = len < sizeof(zeros) ? len : sizeof(zeros);
		rc = out_write(r, o, off, zeros, n);
		off += n, len -= n;
	}
	return rc;
}

static int out_open(struct uffdsnap_reader *r, int fd, uint64_t length, struct out *o)
{
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fstat(fd, &st))
		return rd_err(r, -errno, "the output fd %d: %s", fd, strerror(errno));
	if (S_ISREG(st.st_mode) && (fl & O_APPEND))
		return rd_err(r, -EINVAL, "the output file is open for appending: the region must start at offset 0");
	o->fd = fd;
	o->holes = S_ISREG(st.st_mode);
	o->positional = o->holes || lseek(fd, 0, SEEK_CUR) >= 0;
	/* truncating to 0 first drops old contents where the region has holes */
	if (o->holes && (ftruncate(fd, 0) || ftruncate(fd, (off_t)length)))
		return rd_err(r, -errno, "truncating the output to %" PRIu64 " bytes: %s", length, strerror(errno));
	return 0;
}

/* Into a file or a seekable output: chunk by chunk, each decompressed once
 * (by the read-ahead's workers, in index order, while this thread writes),
 * each extent written where it belongs; every page claimed once in a bitmap,
 * as eager restore does. */
static int extract_chunks(struct uffdsnap_reader *r, unsigned id, const struct out *o)
{
	const struct rd_region *reg = &r->regions[id];
	uint64_t *claimed = calloc((reg->npages + 63) / 64, sizeof(*claimed)), count = 0;
	size_t nchunks = usnap_reader_nchunks(r, id), next = 0;
	struct usnap_ahead *a = nchunks > 1 ? ahead(r) : NULL;
	int rc = 0;

	if (!claimed)
		return rd_err(r, -ENOMEM, "region '%s': out of memory for a bitmap of %" PRIu64 " pages", reg->name,
			      reg->npages);
	r->ra_next = UINT64_MAX; /* the next read starts afresh */
	if ((rc = want_room(r, nchunks))) {
		free(claimed);
		return rc;
	}
	usnap_bits_set(r->want, 0, nchunks);
	if (a)
		usnap_ahead_keep(a, NULL, NULL);
	/* through the chunk access restore uses: a chain's chunks come clipped
	 * to the pages that are theirs in its image (a chain has no read-ahead);
	 * in the order they are decoded in */
	for (size_t n = 0, sync = 0; n < nchunks && !rc; n++) {
		uint64_t data_off = 0;
		struct usnap_rchunk c;
		bool from_ahead;
		size_t i;

		if (a)
			ahead_fill(r, id, NULL, nchunks, &next, false);
		if ((rc = chunk_next(r, id, NULL, &sync, &i, &c, &from_ahead)))
			break;
		for (uint32_t k = 0; k < c.nextents && !rc; k++) {
			const struct usnap_extent *e = &c.ext[k];
			uint64_t at = e->first_page << r->page_shift, len = (uint64_t)e->npages << r->page_shift;

			for (uint64_t p = e->first_page; p < e->first_page + e->npages && !rc; p++) {
				if (claimed[p / 64] >> (p % 64) & 1)
					rc = bad(r, "region '%s': page %" PRIu64 " is recorded twice", reg->name, p);
				claimed[p / 64] |= 1ull << (p % 64);
			}
			count += e->npages;
			if (rc)
				break;
			if (e->kind == USNAP_EXT_ZERO) {
				rc = o->holes ? 0 : out_zeros(r, o, at, len);
				continue;
			}
			rc = out_write(r, o, at, c.data + data_off, len);
			data_off += len;
		}
	}
	memset(r->want, 0, (nchunks + 63) / 64 * sizeof(*r->want));
	for (uint64_t p = 0; !rc && count != reg->npages && p < reg->npages; p++)
		if (!(claimed[p / 64] >> (p % 64) & 1))
			rc = bad(r, "region '%s': page %" PRIu64 " is not recorded", reg->name, p);
	free(claimed);
	return rc;
}

/* Into a pipe or socket: in page order, a window at a time. */
static int extract_stream(struct uffdsnap_reader *r, unsigned id, const struct out *o)
{
	const uint64_t length = r->regions[id].length;
	const size_t win = length < EXTRACT_WINDOW ? (size_t)length : EXTRACT_WINDOW;
	uint8_t *buf = malloc(win);
	int rc = 0;

	if (!buf)
		return rd_err(r, -ENOMEM, "out of memory");
	for (uint64_t off = 0; off < length && !rc; off += win) {
		size_t n = length - off < win ? (size_t)(length - off) : win;

		if (!(rc = uffdsnap_reader_read(r, id, off, buf, n)))
			rc = out_write(r, o, off, buf, n);
	}
	free(buf);
	return rc;
}

USNAP_EXPORT int uffdsnap_reader_extract_fd(uffdsnap_reader_t *r, unsigned id, int fd)
{
	struct out o;
	int rc;

	if (!r)
		return -EINVAL;
	r->err[0] = '\0';
	if ((rc = usnap_reader_ready(r, id)) || (rc = out_open(r, fd, r->regions[id].length, &o)))
		return rc;
	return o.positional ? extract_chunks(r, id, &o) : extract_stream(r, id, &o);
}

/* ---- chunk access for restore (reader-private.h) --------------------------------------------- */

_Atomic unsigned *usnap_reader_clients(uffdsnap_reader_t *r)
{
	return &r->clients;
}

void usnap_reader_abandon(uffdsnap_reader_t *r)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
}

int usnap_reader_clone(const uffdsnap_reader_t *r, uffdsnap_reader_t **out)
{
	struct uffdsnap_reader *c = calloc(1, sizeof(*c));
	size_t names_len = 0;

	*out = NULL;
	for (uint32_t i = 0; i < r->nregions; i++)
		names_len += strlen(r->regions[i].name) + 1;
	if (!c)
		return usnap_err(-ENOMEM, "out of memory");
	*c = (struct uffdsnap_reader){ .fd = -1, .seekable = r->seekable, .size = r->size,
				       .version = r->version, .delta = r->delta, .chained = r->chained,
				       .depth = r->depth, .page_size = r->page_size, .page_shift = r->page_shift,
				       .nregions = r->nregions, .created_ns = r->created_ns, .head_end = r->head_end,
				       .have_end = r->have_end, .complete = r->complete, .end = r->end,
				       .nents = r->nents, .park_set = true };
	memcpy(c->snap_id, r->snap_id, sizeof(c->snap_id));
	memcpy(c->parent_id, r->parent_id, sizeof(c->parent_id));
	memcpy(c->reason, r->reason, sizeof(c->reason));
	c->regions = malloc(r->nregions * sizeof(*c->regions));
	c->names = malloc(names_len);
	c->ents = malloc((r->nents ? r->nents : 1) * sizeof(*c->ents));
	/* pread() has no shared offset: a dup of the fd serves every clone */
	c->fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
	c->own_fd = c->fd >= 0;
	if (!c->regions || !c->names || !c->ents || c->fd < 0 || (r->chain && usnap_chain_clone(r->chain, &c->chain))) {
		int err = c->fd < 0 ? -errno : -ENOMEM;
		uffdsnap_reader_free(c);
		return usnap_err(err, "cloning a snapshot reader: %s", strerror(-err));
	}
	memcpy(c->regions, r->regions, r->nregions * sizeof(*c->regions));
	memcpy(c->names, r->names, names_len);
	for (uint32_t i = 0; i < r->nregions; i++)
		c->regions[i].name = c->names + (r->regions[i].name - r->names);
	memcpy(c->ents, r->ents, r->nents * sizeof(*c->ents));
	*out = c;
	return 0;
}

int usnap_reader_ready(uffdsnap_reader_t *r, unsigned id)
{
	r->err[0] = '\0';
	if (r->chain)
		return usnap_chain_ready(r, r->chain, id);
	return need_map(r, id);
}

size_t usnap_reader_nchunks(const uffdsnap_reader_t *r, unsigned id)
{
	if (r->chain)
		return usnap_chain_nchunks(r->chain, id);
	return r->regions[id].ent_hi - r->regions[id].ent_lo;
}

size_t usnap_reader_locate(const uffdsnap_reader_t *r, unsigned id, uint64_t p, uint64_t *run_end)
{
	const struct rd_map *m = &r->maps[id];
	size_t k;

	if (r->chain)
		return usnap_chain_locate(r->chain, id, p, run_end);
	k = map_run(m, p);

	*run_end = k + 1 < m->n ? m->first[k + 1] : r->regions[id].npages;
	return m->chunk[k] == RD_GAP ? SIZE_MAX : m->chunk[k];
}

static int chunk_by_index(uffdsnap_reader_t *r, unsigned id, size_t i, bool want_data, struct usnap_rchunk *out)
{
	struct rd_chunk c;
	int rc = ent_load(r, id, &r->ents[r->regions[id].ent_lo + i], want_data, &c);

	if (rc)
		return rc;
	*out = (struct usnap_rchunk){ .ext = c.ext, .nextents = c.nextents, .data = c.data, .raw_len = c.raw_len };
	return 0;
}

int usnap_reader_chunk(uffdsnap_reader_t *r, unsigned id, size_t i, struct usnap_rchunk *out)
{
	if (r->chain)
		return usnap_chain_chunk(r, r->chain, id, i, true, out);
	return chunk_by_index(r, id, i, true, out);
}

int usnap_reader_chunk_meta(uffdsnap_reader_t *r, unsigned id, size_t i, struct usnap_rchunk *out)
{
	if (r->chain)
		return usnap_chain_chunk(r, r->chain, id, i, false, out);
	return chunk_by_index(r, id, i, false, out);
}

void usnap_reader_link(uffdsnap_reader_t *r)
{
	r->chained = true;
}

void usnap_reader_set_chain(uffdsnap_reader_t *r, struct usnap_chain *c)
{
	r->chain = c;
}

#define SCATTER_SKIP (256u << 10)  /* bytes decompressed at once where nothing is kept */

/* Decompress the next len bytes of the frame in r's context to dst, or
 * nowhere (dst NULL: pages of the chunk another file replaces). */
static int frame_next(struct uffdsnap_reader *r, ZSTD_inBuffer *in, uint8_t *dst, uint64_t len, size_t *left)
{
	const struct rd_chunk *c = &r->cur;

	if (!dst && len) {
		/* the dropped pages go through the buffer of decompressed pages */
		r->cur_data = false;
		if (grow(&r->raw, &r->raw_cap, SCATTER_SKIP))
			return rd_err(r, -ENOMEM, "out of memory");
	}
	while (len) {
		size_t n = !dst && len > SCATTER_SKIP ? SCATTER_SKIP : (size_t)len;
		ZSTD_outBuffer out = { dst ? dst : r->raw, n, 0 };

		while (out.pos < out.size) {
			size_t pos = out.pos, ipos = in->pos;

			*left = ZSTD_decompressStream(r->dctx, &out, in);
			if (ZSTD_isError(*left))
				return bad(r, "chunk at offset %" PRIu64 ": zstd: %s", c->offset, ZSTD_getErrorName(*left));
			if (out.pos == pos && in->pos == ipos)
				return bad(r, "chunk at offset %" PRIu64 ": the zstd frame ends before its %" PRIu64
					   " bytes of pages", c->offset, c->raw_len);
		}
		len -= n;
		dst = dst ? dst + n : NULL;
	}
	return 0;
}

/*
 * zstd streams into each DATA extent's place in turn. Its output still goes
 * through the context's window buffer when an extent is shorter than a zstd
 * block, but the bulk of the pages is written once, where they belong.
 * With keep, only the pieces of extents it lists (in extent order, as
 * reader-chain.c clips them) are written; the rest is decoded and dropped.
 */
int usnap_reader_chunk_scatter_part(uffdsnap_reader_t *r, uint8_t *base, const struct usnap_extent *keep,
				    uint32_t nkeep)
{
	const struct rd_chunk *c = &r->cur;
	struct usnap_chunk ch;
	const uint8_t *payload;
	ZSTD_inBuffer in;
	size_t left = 1;
	uint32_t j = 0;
	bool z;
	int rc;

	if (!r->cur_valid)
		return rd_err(r, -EINVAL, "no chunk loaded");
	memcpy(&ch, r->rec + HDR_LEN, sizeof(ch));
	payload = r->rec + CHNK_FIXED + (size_t)c->nextents * sizeof(struct usnap_extent);
	z = ch.flags & USNAP_CHNK_ZSTD;
	if (z) {
		if ((rc = frame_ok(r, c->offset, payload, ch.stored_len, c->raw_len)))
			return rc;
		ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
		in = (ZSTD_inBuffer){ payload, ch.stored_len, 0 };
	}
	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];
		uint64_t p = e->first_page, end = e->first_page + e->npages;

		if (e->kind != USNAP_EXT_DATA)
			continue;
		while (p < end) {
			/* the next piece to keep, if it is in this extent; or all of it */
			while (keep && j < nkeep && keep[j].kind != USNAP_EXT_DATA)
				j++;
			bool here = keep && j < nkeep && keep[j].first_page >= p && keep[j].first_page < end;
			uint64_t k0 = !keep ? p : here ? keep[j].first_page : end;
			uint64_t k1 = !keep ? end : here ? k0 + keep[j].npages : end;
			uint64_t len = (k0 - p) << r->page_shift, klen = (k1 - k0) << r->page_shift;
			uint8_t *dst = base + (k0 << r->page_shift);

			j += here;
			if (z && ((rc = frame_next(r, &in, NULL, len, &left)) || (rc = frame_next(r, &in, dst, klen, &left))))
				return rc;
			if (!z)
				memcpy(dst, payload + len, klen);
			payload += z ? 0 : len + klen;
			p = k1;
		}
	}
	if (!z)
		return 0;
	/* Every page is placed; the frame's end (and its checksum) must follow. */
	while (left) {
		ZSTD_outBuffer none = { NULL, 0, 0 };
		size_t ipos = in.pos;

		left = ZSTD_decompressStream(r->dctx, &none, &in);
		if (ZSTD_isError(left))
			return bad(r, "chunk at offset %" PRIu64 ": zstd: %s", c->offset, ZSTD_getErrorName(left));
		if (left && in.pos == ipos)
			return bad(r, "chunk at offset %" PRIu64 ": the zstd frame holds more than its %" PRIu64
				   " bytes of pages", c->offset, c->raw_len);
	}
	return 0;
}

int usnap_reader_chunk_scatter(uffdsnap_reader_t *r, uint8_t *base)
{
	if (r->chain)
		return usnap_chain_scatter(r, r->chain, base);
	return usnap_reader_chunk_scatter_part(r, base, NULL, 0);
}
