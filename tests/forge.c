/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Deltas written from two images in memory: see forge.h. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "format.h"
#include "forge.h"

#define MAX_CHUNK_PAGES 256u

struct buf {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

static void put(struct buf *b, const void *src, size_t len)
{
	if (b->oom)
		return;
	if (b->len + len > b->cap) {
		size_t cap = (b->len + len) * 2;
		uint8_t *p = realloc(b->p, cap);

		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, src, len);
	b->len += len;
}

static void pad(struct buf *b)
{
	static const uint8_t z[8];

	put(b, z, usnap_pad8(b->len) - b->len);
}

/* Seal the record from offset `at` of b to its end. */
static void seal(struct buf *b, size_t at, uint32_t type)
{
	struct usnap_rec_hdr h = { .type = type, .len = b->len - at };

	if (b->oom)
		return;
	memcpy(b->p + at, &h, sizeof(h));
	h.crc = usnap_rec_crc(b->p + at, h.len);
	memcpy(b->p + at, &h, sizeof(h));
}

static bool zero_page(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* One chunk of pages v[0..n) of region g. */
static int chunk(struct buf *b, struct buf *idx, const struct usnap_forge *f, unsigned g, const uint64_t *v,
		 unsigned n, bool zstd, struct usnap_end *end, uint8_t *raw, uint8_t *z, size_t zcap)
{
	const size_t ps = f->page_size;
	struct usnap_extent ext[MAX_CHUNK_PAGES];
	struct usnap_chunk ch = { .region = g };
	struct usnap_index_ent ie = { .offset = b->len, .region = g, .first_page = UINT64_MAX };
	struct usnap_rec_hdr h = { 0 };
	size_t at = b->len, zlen = 0;
	unsigned ne = 0;

	for (unsigned i = 0; i < n; i++) {
		const uint8_t *pg = f->cur[g] + v[i] * ps;
		uint32_t kind = zero_page(pg, ps) ? USNAP_EXT_ZERO : USNAP_EXT_DATA;

		if (ne && ext[ne - 1].kind == kind && ext[ne - 1].first_page + ext[ne - 1].npages == v[i])
			ext[ne - 1].npages++;
		else
			ext[ne++] = (struct usnap_extent){ .first_page = v[i], .npages = 1, .kind = kind };
		if (kind == USNAP_EXT_DATA) {
			memcpy(raw + ch.raw_len, pg, ps);
			ch.raw_len += ps;
		}
		ie.first_page = v[i] < ie.first_page ? v[i] : ie.first_page;
		ie.end_page = v[i] + 1 > ie.end_page ? v[i] + 1 : ie.end_page;
		end->pages_data += kind == USNAP_EXT_DATA;
		end->pages_zero += kind == USNAP_EXT_ZERO;
	}
	if (zstd && ch.raw_len) {
		zlen = ZSTD_compress(z, zcap, raw, ch.raw_len, 1);
		if (ZSTD_isError(zlen))
			return -EIO;
	}
	ch.flags = zlen && zlen < ch.raw_len ? USNAP_CHNK_ZSTD : 0;
	ch.stored_len = ch.flags ? zlen : ch.raw_len;
	ch.nextents = ie.nextents = ne;
	put(b, &h, sizeof(h));
	put(b, &ch, sizeof(ch));
	put(b, ext, ne * sizeof(*ext));
	put(b, ch.flags ? z : raw, ch.stored_len);
	pad(b);
	seal(b, at, USNAP_REC_CHNK);
	put(idx, &ie, sizeof(ie));
	end->chunks++;
	end->bytes_raw += ch.raw_len;
	return 0;
}

static int body(struct buf *b, struct buf *idx, const struct usnap_forge *f, struct usnap_end *end)
{
	const size_t ps = f->page_size, cap = ZSTD_compressBound(MAX_CHUNK_PAGES * ps);
	uint8_t *raw = malloc(MAX_CHUNK_PAGES * ps), *z = malloc(cap);
	uint64_t v[MAX_CHUNK_PAGES];
	unsigned chunks = 0;
	int rc = raw && z ? 0 : -ENOMEM;

	for (unsigned g = 0; g < f->nregions && !rc; g++) {
		unsigned n = 0;

		for (uint64_t p = 0; p < f->npages[g] && !rc; p++) {
			if (memcmp(f->prev[g] + p * ps, f->cur[g] + p * ps, ps) || (f->keep_first && !g && !p))
				v[n++] = p;
			if (n == f->chunk_pages || (n && p + 1 == f->npages[g])) {
				rc = chunk(b, idx, f, g, v, n, f->zstd == 2 || (f->zstd == 1 && chunks % 2), end, raw, z,
					   cap);
				chunks++;
				n = 0;
			}
		}
	}
	free(raw);
	free(z);
	return rc;
}

int usnap_forge_delta(const char *path, const struct usnap_forge *f)
{
	struct buf b = { 0 }, idx = { 0 };
	struct usnap_head hd = { .version = USNAP_VERSION_DELTA, .page_size = f->page_size, .nregions = f->nregions,
				 .flags = USNAP_HEAD_DELTA, .created_ns = f->created_ns };
	struct usnap_head_delta dh = { .depth = f->depth };
	struct usnap_rec_hdr h = { 0 };
	struct usnap_end end = { 0 };
	struct usnap_index_hdr ih;
	size_t at;
	FILE *out;
	int rc;

	if (!f->chunk_pages || f->chunk_pages > MAX_CHUNK_PAGES)
		return -EINVAL;
	memcpy(hd.snap_id, f->id, 16);
	memcpy(end.snap_id, f->id, 16);
	memcpy(dh.parent_id, f->parent_id, 16);
	put(&b, USNAP_MAGIC, USNAP_MAGIC_LEN);
	put(&b, &h, sizeof(h));
	put(&b, &hd, sizeof(hd));
	put(&b, &dh, sizeof(dh));
	for (unsigned g = 0; g < f->nregions; g++) {
		struct usnap_region e = { .length = f->table_len ? f->table_len[g] : f->npages[g] * f->page_size,
					  .name_len = (uint32_t)strlen(f->names[g]) };

		put(&b, &e, sizeof(e));
		put(&b, f->names[g], e.name_len);
		pad(&b);
	}
	seal(&b, USNAP_MAGIC_LEN, USNAP_REC_HEAD);
	rc = body(&b, &idx, f, &end);
	end.index_offset = at = b.len;
	ih.count = end.chunks;
	put(&b, &h, sizeof(h));
	put(&b, &ih, sizeof(ih));
	put(&b, idx.p, idx.len);
	seal(&b, at, USNAP_REC_INDX);
	at = b.len;
	put(&b, &h, sizeof(h));
	put(&b, &end, sizeof(end));
	seal(&b, at, USNAP_REC_END);
	if (!rc && (b.oom || idx.oom))
		rc = -ENOMEM;
	if (!rc && !(out = fopen(path, "we")))
		rc = -errno;
	else if (!rc) {
		if (fwrite(b.p, 1, b.len, out) != b.len)
			rc = -EIO;
		if (fclose(out) && !rc)
			rc = -errno;
	}
	free(b.p);
	free(idx.p);
	return rc;
}
