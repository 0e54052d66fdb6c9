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
 * A reader keeps one record buffer, one decompression buffer and one ZSTD_DCtx
 * and is not thread-safe: use one reader from one thread at a time.
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
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "reader-private.h"
#include "uffdsnap-private.h"

#define HDR_LEN sizeof(struct usnap_rec_hdr)
#define HEAD_MIN (HDR_LEN + sizeof(struct usnap_head))
#define CHNK_FIXED (HDR_LEN + sizeof(struct usnap_chunk))
#define CHNK_MIN (CHNK_FIXED + sizeof(struct usnap_extent))
#define CHNK_MAX (CHNK_FIXED + (uint64_t)USNAP_MAX_EXTENTS * sizeof(struct usnap_extent) + \
		  usnap_pad8(ZSTD_COMPRESSBOUND((uint64_t)USNAP_MAX_CHUNK_RAW)))
#define INDX_MIN (HDR_LEN + sizeof(struct usnap_index_hdr))

struct rd_region {
	const char *name;
	uint64_t length, npages;
	size_t ent_lo, ent_hi;      /* this region's slice of reader.ents */
};

/* An index entry; each region's slice is sorted by first page. */
struct rd_ent {
	uint64_t offset;            /* of the CHNK record */
	uint64_t first, end;        /* pages the chunk spans */
	uint64_t max_end;           /* highest end in the slice up to here: lets a
				     * lookup skip entries that end before it */
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
	uint32_t page_size, page_shift, nregions;
	uint64_t created_ns;
	uint8_t snap_id[16];
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

	char err[512];

	/* uffdsnap_serve_conn() calls running on this reader (from any thread):
	 * the one field several threads change, hence atomic */
	_Atomic unsigned clients;
};

/* ---- errors and I/O ------------------------------------------------------------ */

__attribute__((format(printf, 3, 4))) static int rd_err(struct uffdsnap_reader *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_vformat(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	return err;
}

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
	if (hd.page_size < USNAP_MIN_PAGE || hd.page_size > USNAP_MAX_PAGE || (hd.page_size & (hd.page_size - 1)))
		return bad(r, "HEAD record at offset %d: page size %u is not a power of two in [%u, %u]",
			   USNAP_MAGIC_LEN, hd.page_size, USNAP_MIN_PAGE, USNAP_MAX_PAGE);
	if (hd.nregions < 1 || hd.nregions > USNAP_MAX_REGIONS || hd.flags)
		return bad(r, "HEAD record at offset %d: %u regions (flags 0x%x): must be 1..%d (flags 0)",
			   USNAP_MAGIC_LEN, hd.nregions, hd.flags, USNAP_MAX_REGIONS);
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
	if (version != USNAP_VERSION)
		return rd_err(r, -EPROTONOSUPPORT, "snapshot format version %u; this library reads version %d",
			      version, USNAP_VERSION);
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
	return 0;
}

/* ---- END and INDX --------------------------------------------------------------- */

static int cmp_ent(const void *a, const void *b)
{
	const struct rd_ent *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/* Per-region slices of the index, sorted by first page, with running max_end. */
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
	for (uint32_t g = 0; g < r->nregions; g++) {
		struct rd_region *reg = &r->regions[g];
		uint64_t max_end = 0;

		qsort(r->ents + reg->ent_lo, reg->ent_hi - reg->ent_lo, sizeof(*r->ents), cmp_ent);
		for (size_t i = reg->ent_lo; i < reg->ent_hi; i++)
			r->ents[i].max_end = max_end = r->ents[i].end > max_end ? r->ents[i].end : max_end;
	}
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
	ZSTD_freeDCtx(r->dctx);
	free(r->rec);
	free(r->raw);
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

	if (!r || !out || out->size < sizeof(out->size))
		return -EINVAL;
	i = (uffdsnap_info_t){
		.size = out->size, .version = USNAP_VERSION, .page_size = r->page_size, .nregions = r->nregions,
		.complete = r->complete, .status = r->have_end ? r->end.status : 0, .created_ns = r->created_ns,
		.chunks = r->end.chunks, .pages_data = r->end.pages_data, .pages_zero = r->end.pages_zero,
		.bytes_raw = r->end.bytes_raw, .bytes_file = r->size, .reason = r->complete ? "" : r->reason,
	};
	memcpy(out, &i, out->size < sizeof(i) ? out->size : sizeof(i));
	return 0;
}

USNAP_EXPORT int uffdsnap_reader_region(const uffdsnap_reader_t *r, unsigned id, uffdsnap_region_info_t *out)
{
	uffdsnap_region_info_t i;

	if (!r || !out || out->size < sizeof(out->size))
		return -EINVAL;
	if (id >= r->nregions)
		return -ENOENT;
	i = (uffdsnap_region_info_t){ .size = out->size, .name = r->regions[id].name,
				      .length = r->regions[id].length };
	memcpy(out, &i, out->size < sizeof(i) ? out->size : sizeof(i));
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

/* Sort x and check that it covers every page of regions [lo, hi) exactly once. */
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
			if (x[i].first > next)
				return bad(r, "region '%s': pages %" PRIu64 "..%" PRIu64 " are not recorded",
					   reg->name, next, x[i].first - 1);
		}
		if (next != reg->npages)
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
				if (seen[b / 64] >> (b % 64) & 1)
					return p0 + b;
				seen[b / 64] |= 1ull << (b % 64);
			}
			if (e->kind == USNAP_EXT_DATA) {
				/* page * page_size <= region length <= 2^48: no overflow */
				uint64_t b0 = o0 << r->page_shift, b1 = o1 << r->page_shift;
				b0 = b0 > off ? b0 : off;
				b1 = b1 < off + len ? b1 : off + len;
				memcpy(buf + (b0 - off), c->data + data_off + (b0 - (e->first_page << r->page_shift)),
				       b1 - b0);
			}
		}
		if (e->kind == USNAP_EXT_DATA)
			data_off += (uint64_t)e->npages << r->page_shift;
	}
	return UINT64_MAX;
}

USNAP_EXPORT int uffdsnap_reader_read(uffdsnap_reader_t *r, unsigned id, uint64_t off, void *buf, size_t len)
{
	const struct rd_region *reg;
	uint64_t p0, p1, twice = UINT64_MAX, missing = UINT64_MAX, *seen;
	size_t lo, hi;
	int rc = 0;

	if (!r || (!buf && len))
		return -EINVAL;
	r->err[0] = '\0';
	if ((rc = need_index(r, id)))
		return rc;
	reg = &r->regions[id];
	if (off > reg->length || len > reg->length - off)
		return rd_err(r, -EINVAL, "bytes %" PRIu64 "+%zu are not inside region '%s' of %" PRIu64 " bytes",
			      off, len, reg->name, reg->length);
	if (!len)
		return 0;
	memset(buf, 0, len);
	p0 = off >> r->page_shift;
	p1 = (off + len + r->page_size - 1) >> r->page_shift;
	/* max_end only grows along the slice: skip entries ending before p0 */
	for (lo = reg->ent_lo, hi = reg->ent_hi; lo < hi;) {
		size_t mid = lo + (hi - lo) / 2;
		if (r->ents[mid].max_end <= p0)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* one bit per page asked for: sized by the caller's len, not by the file */
	if (!(seen = calloc((p1 - p0 + 63) / 64, sizeof(*seen))))
		return rd_err(r, -ENOMEM, "out of memory for a read of %zu bytes", len);
	for (size_t i = lo; i < reg->ent_hi && r->ents[i].first < p1 && twice == UINT64_MAX; i++) {
		struct rd_chunk c;

		if (r->ents[i].end <= p0)
			continue;
		if ((rc = ent_load(r, id, &r->ents[i], true, &c)))
			break;
		twice = chunk_copy(r, &c, off, buf, len, p0, p1, seen);
	}
	for (uint64_t b = 0; !rc && twice == UINT64_MAX && b < p1 - p0 && missing == UINT64_MAX; b++)
		if (!(seen[b / 64] >> (b % 64) & 1))
			missing = p0 + b;
	free(seen);
	if (rc)
		return rc;
	if (twice != UINT64_MAX)
		return bad(r, "region '%s': page %" PRIu64 " is recorded twice", reg->name, twice);
	if (missing != UINT64_MAX)
		return bad(r, "region '%s': page %" PRIu64 " is not recorded", reg->name, missing);
	return 0;
}

/* ---- extract ------------------------------------------------------------------------------- */

/* Every extent of region id, sorted, each page exactly once. */
static int region_extents(struct uffdsnap_reader *r, unsigned id, struct rd_ext **xp, size_t *np)
{
	const struct rd_region *reg = &r->regions[id];
	size_t n = 0, cap = 0;
	struct rd_ext *x = NULL;
	int rc = 0;

	for (size_t i = reg->ent_lo; i < reg->ent_hi; i++)
		cap += r->ents[i].nextents; /* bounded by the file size: index_check() */
	if (cap && !(x = malloc(cap * sizeof(*x))))
		return rd_err(r, -ENOMEM, "out of memory for %zu extents", cap);
	for (size_t i = reg->ent_lo; i < reg->ent_hi && !rc; i++) {
		struct rd_chunk c;
		if (!(rc = ent_load(r, id, &r->ents[i], false, &c)))
			rc = ext_append(r, &c, &x, &n, &cap);
	}
	if (!rc)
		rc = cover_check(r, x, n, id, id + 1);
	if (rc) {
		free(x);
		return rc;
	}
	*xp = x;
	*np = n;
	return 0;
}

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

USNAP_EXPORT int uffdsnap_reader_extract_fd(uffdsnap_reader_t *r, unsigned id, int fd)
{
	struct rd_ext *x = NULL;
	struct out o;
	size_t n = 0;
	int rc;

	if (!r)
		return -EINVAL;
	r->err[0] = '\0';
	if ((rc = need_index(r, id)) || (rc = region_extents(r, id, &x, &n)) ||
	    (rc = out_open(r, fd, r->regions[id].length, &o))) {
		free(x);
		return rc;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		uint64_t at = x[i].first << r->page_shift, len = (uint64_t)x[i].npages << r->page_shift;
		struct rd_chunk c;

		if (x[i].kind == USNAP_EXT_ZERO)
			rc = o.holes ? 0 : out_zeros(r, &o, at, len);
		else if (!(rc = chunk_load(r, x[i].chunk, r->end.index_offset, true, &c)))
			rc = x[i].data_off + len > c.raw_len
				     ? bad(r, "chunk at offset %" PRIu64 ": changed while being read", x[i].chunk)
				     : out_write(r, &o, at, c.data + x[i].data_off, len);
	}
	free(x);
	return rc;
}

/* ---- chunk access for restore (reader-private.h) --------------------------------------------- */

_Atomic unsigned *usnap_reader_clients(uffdsnap_reader_t *r)
{
	return &r->clients;
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
				       .page_size = r->page_size, .page_shift = r->page_shift,
				       .nregions = r->nregions, .created_ns = r->created_ns, .head_end = r->head_end,
				       .have_end = r->have_end, .complete = r->complete, .end = r->end,
				       .nents = r->nents };
	memcpy(c->snap_id, r->snap_id, sizeof(c->snap_id));
	memcpy(c->reason, r->reason, sizeof(c->reason));
	c->regions = malloc(r->nregions * sizeof(*c->regions));
	c->names = malloc(names_len);
	c->ents = malloc((r->nents ? r->nents : 1) * sizeof(*c->ents));
	/* pread() has no shared offset: a dup of the fd serves every clone */
	c->fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
	c->own_fd = c->fd >= 0;
	if (!c->regions || !c->names || !c->ents || c->fd < 0) {
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
	return need_index(r, id);
}

size_t usnap_reader_nchunks(const uffdsnap_reader_t *r, unsigned id)
{
	return r->regions[id].ent_hi - r->regions[id].ent_lo;
}

void usnap_reader_chunk_span(const uffdsnap_reader_t *r, unsigned id, size_t i, uint64_t *first, uint64_t *end)
{
	const struct rd_ent *e = &r->ents[r->regions[id].ent_lo + i];

	*first = e->first;
	*end = e->end;
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
	return chunk_by_index(r, id, i, true, out);
}

int usnap_reader_chunk_meta(uffdsnap_reader_t *r, unsigned id, size_t i, struct usnap_rchunk *out)
{
	return chunk_by_index(r, id, i, false, out);
}

/*
 * zstd streams into each DATA extent's place in turn. Its output still goes
 * through the context's window buffer when an extent is shorter than a zstd
 * block, but the bulk of the pages is written once, where they belong.
 */
int usnap_reader_chunk_scatter(uffdsnap_reader_t *r, uint8_t *base)
{
	const struct rd_chunk *c = &r->cur;
	struct usnap_chunk ch;
	const uint8_t *payload;
	ZSTD_inBuffer in;
	size_t left = 1;
	int rc;

	if (!r->cur_valid)
		return rd_err(r, -EINVAL, "no chunk loaded");
	memcpy(&ch, r->rec + HDR_LEN, sizeof(ch));
	payload = r->rec + CHNK_FIXED + (size_t)c->nextents * sizeof(struct usnap_extent);
	if (!(ch.flags & USNAP_CHNK_ZSTD)) {
		for (uint32_t i = 0; i < c->nextents; i++) {
			const struct usnap_extent *e = &c->ext[i];
			size_t len = (size_t)e->npages << r->page_shift;

			if (e->kind == USNAP_EXT_DATA) {
				memcpy(base + (e->first_page << r->page_shift), payload, len);
				payload += len;
			}
		}
		return 0;
	}
	if ((rc = frame_ok(r, c->offset, payload, ch.stored_len, c->raw_len)))
		return rc;
	ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
	in = (ZSTD_inBuffer){ payload, ch.stored_len, 0 };
	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];
		ZSTD_outBuffer out = { base + (e->first_page << r->page_shift), (size_t)e->npages << r->page_shift, 0 };

		while (e->kind == USNAP_EXT_DATA && out.pos < out.size) {
			size_t pos = out.pos, ipos = in.pos;

			left = ZSTD_decompressStream(r->dctx, &out, &in);
			if (ZSTD_isError(left))
				return bad(r, "chunk at offset %" PRIu64 ": zstd: %s", c->offset, ZSTD_getErrorName(left));
			if (out.pos == pos && in.pos == ipos)
				return bad(r, "chunk at offset %" PRIu64 ": the zstd frame ends before its %" PRIu64
					   " bytes of pages", c->offset, c->raw_len);
		}
	}
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
