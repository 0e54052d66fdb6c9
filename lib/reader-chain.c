/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Chains of snapshots (docs/format.md, "Deltas"): a full snapshot and the
 * deltas after it, read as the image at the last file's instant. This file
 * owns opening a chain (uffdsnap_reader_open_chain(): the link checks), the
 * chain's page map, and the chain's side of every page access of reader.c
 * and restore (reader-private.h), which a reader with a chain attached hands
 * over here.
 *
 * A page of the image is the newest file's that has an extent covering it.
 * The chain's map of a region is built from the files' own page maps (a
 * delta's has gaps where it holds nothing), each laid over the image of the
 * files before it. The chunks of the image are the files' chunks that hold
 * at least one of its pages, numbered by file, base first; a chunk is handed
 * out clipped to those pages, so restore, lazy restore and extract, which
 * check that each page is placed exactly once, read a chain as they read a
 * file. A chunk no newer file shadows is handed out as it is, without a copy.
 *
 * Each file has its own reader (marked a link: usnap_reader_link()); a clone
 * of the chain (one per restore thread) clones them and copies the maps built
 * so far, which never change once built.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reader-private.h"
#include "uffdsnap-private.h"

#define CH_GAP UINT64_MAX  /* a run a delta does not hold */

/* A chunk of one file: file << 32 | its index in the file's region. */
#define CH_OWNER(file, chunk) ((uint64_t)(file) << 32 | (uint64_t)(chunk))
#define CH_FILE(o) ((uint32_t)((o) >> 32))
#define CH_CHUNK(o) ((uint32_t)(o))

/* Runs of pages in page order that tile a region, each held by one owner. */
struct ch_runs {
	uint64_t *first, *own;
	size_t n;
};

struct ch_region {
	bool built;
	uint64_t npages;
	uint64_t *first;            /* runs of the image: first page ... */
	uint32_t *vc;               /* ... and the chunk of the image that holds it */
	size_t n;
	uint64_t *v;                /* the chunks of the image (CH_OWNER), sorted */
	size_t nv;
};

struct usnap_chain {
	unsigned n;
	uffdsnap_reader_t **f;      /* one reader per file, base first */
	char **names;               /* the files' paths, for messages */
	uint32_t nregions, page_shift;
	struct ch_region *regs;

	/* the chunk handed out last: its clipped extents and, if asked, pages */
	struct usnap_extent *ext;
	uint64_t *ext_src;          /* per kept piece: its bytes' offset in the chunk's data (DATA) */
	size_t ext_cap;
	uint8_t *data;
	size_t data_cap;
	bool cur_valid, cur_clipped;
	uint32_t cur_file, cur_nkeep;
};

/* ---- life cycle -------------------------------------------------------------------- */

static void region_free(struct ch_region *g)
{
	free(g->first);
	free(g->vc);
	free(g->v);
	*g = (struct ch_region){ 0 };
}

void usnap_chain_free(struct usnap_chain *c)
{
	if (!c)
		return;
	for (unsigned k = 0; k < c->n; k++) {
		uffdsnap_reader_free(c->f[k]);
		free(c->names[k]);
	}
	for (uint32_t i = 0; c->regs && i < c->nregions; i++)
		region_free(&c->regs[i]);
	free(c->f);
	free(c->names);
	free(c->regs);
	free(c->ext);
	free(c->ext_src);
	free(c->data);
	free(c);
}

static struct usnap_chain *chain_alloc(unsigned n, uint32_t nregions, uint32_t page_shift)
{
	struct usnap_chain *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->f = calloc(n, sizeof(*c->f));
	c->names = calloc(n, sizeof(*c->names));
	c->regs = calloc(nregions, sizeof(*c->regs));
	c->nregions = nregions;
	c->page_shift = page_shift;
	if (!c->f || !c->names || !c->regs) {
		usnap_chain_free(c);
		return NULL;
	}
	return c;
}

static void *dup_array(const void *src, size_t n, size_t size)
{
	void *p = malloc(n ? n * size : 1);

	if (p && n)
		memcpy(p, src, n * size);
	return p;
}

int usnap_chain_clone(const struct usnap_chain *c, struct usnap_chain **out)
{
	struct usnap_chain *d = chain_alloc(c->n, c->nregions, c->page_shift);
	int rc = d ? 0 : -ENOMEM;

	*out = NULL;
	for (unsigned k = 0; k < c->n && !rc; k++) {
		d->n = k + 1;
		if (!(d->names[k] = strdup(c->names[k])))
			rc = -ENOMEM;
		else
			rc = usnap_reader_clone(c->f[k], &d->f[k]);
	}
	for (uint32_t i = 0; i < c->nregions && !rc; i++) {
		const struct ch_region *g = &c->regs[i];
		struct ch_region *h = &d->regs[i];

		if (!g->built)
			continue;
		*h = (struct ch_region){ .built = true, .npages = g->npages, .n = g->n, .nv = g->nv,
					 .first = dup_array(g->first, g->n, sizeof(*g->first)),
					 .vc = dup_array(g->vc, g->n, sizeof(*g->vc)),
					 .v = dup_array(g->v, g->nv, sizeof(*g->v)) };
		if (!h->first || !h->vc || !h->v)
			rc = -ENOMEM;
	}
	if (rc) {
		usnap_chain_free(d);
		return usnap_err(rc, "cloning a chain reader: %s", strerror(-rc));
	}
	*out = d;
	return 0;
}

unsigned usnap_chain_files(const struct usnap_chain *c)
{
	return c->n;
}

uint64_t usnap_chain_decoded(const struct usnap_chain *c)
{
	uint64_t sum = 0;

	for (unsigned k = 0; k < c->n; k++) {
		uffdsnap_info_t i = { .size = sizeof(i) };

		if (!uffdsnap_reader_info(c->f[k], &i))
			sum += i.chunks_loaded;
	}
	return sum;
}

void usnap_chain_cache(struct usnap_chain *c, size_t bytes)
{
	for (unsigned k = 0; k < c->n; k++)
		uffdsnap_reader_cache(c->f[k], bytes);
}

/* r's error: what file k's reader said, naming the file. */
static int file_fail(uffdsnap_reader_t *r, const struct usnap_chain *c, unsigned k, int rc)
{
	return usnap_reader_fail(r, rc, "%s: %s", c->names[k], uffdsnap_reader_error(c->f[k]));
}

int usnap_chain_verify(uffdsnap_reader_t *r, struct usnap_chain *c)
{
	int rc;

	for (unsigned k = 0; k < c->n; k++)
		if ((rc = uffdsnap_reader_verify(c->f[k])))
			return file_fail(r, c, k, rc);
	return 0;
}

/* ---- the chain's page map ------------------------------------------------------------- */

static int runs_alloc(struct ch_runs *x, size_t cap)
{
	x->n = 0;
	x->first = malloc(cap * sizeof(*x->first));
	x->own = malloc(cap * sizeof(*x->own));
	return x->first && x->own ? 0 : -ENOMEM;
}

static void runs_free(struct ch_runs *x)
{
	free(x->first);
	free(x->own);
	*x = (struct ch_runs){ 0 };
}

static void runs_add(struct ch_runs *x, uint64_t first, uint64_t own)
{
	if (x->n && x->own[x->n - 1] == own)
		return;
	x->first[x->n] = first;
	x->own[x->n++] = own;
}

/* The runs of file k's page map of region id (ready). */
static int file_runs(const struct usnap_chain *c, unsigned k, unsigned id, uint64_t npages, struct ch_runs *x)
{
	size_t cap = 64;

	if (runs_alloc(x, cap))
		return -ENOMEM;
	for (uint64_t p = 0, end; p < npages; p = end) {
		size_t i = usnap_reader_locate(c->f[k], id, p, &end);

		if (x->n == cap) {
			uint64_t *f = realloc(x->first, 2 * cap * sizeof(*f)), *o;

			if (f)
				x->first = f;
			if (!f || !(o = realloc(x->own, 2 * cap * sizeof(*o))))
				return -ENOMEM;
			x->own = o;
			cap *= 2;
		}
		runs_add(x, p, i == SIZE_MAX ? CH_GAP : CH_OWNER(k, i));
	}
	return 0;
}

/* The image of a laid over by b: b's runs where it holds pages, a's elsewhere. */
static int overlay(const struct ch_runs *a, const struct ch_runs *b, uint64_t npages, struct ch_runs *out)
{
	size_t i = 0, j = 0;

	if (runs_alloc(out, a->n + b->n))
		return -ENOMEM;
	for (uint64_t p = 0; p < npages;) {
		uint64_t ea = i + 1 < a->n ? a->first[i + 1] : npages;
		uint64_t eb = j + 1 < b->n ? b->first[j + 1] : npages;
		uint64_t e = ea < eb ? ea : eb;

		runs_add(out, p, b->own[j] != CH_GAP ? b->own[j] : a->own[i]);
		i += ea == e;
		j += eb == e;
		p = e;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The image's runs x become region g's map: its chunks numbered, sorted. */
static int map_from_runs(struct ch_region *g, const struct ch_runs *x)
{
	size_t u = 0;

	g->first = malloc(x->n * sizeof(*g->first));
	g->vc = malloc(x->n * sizeof(*g->vc));
	g->v = malloc(x->n * sizeof(*g->v));
	if (!g->first || !g->vc || !g->v)
		return -ENOMEM;
	memcpy(g->v, x->own, x->n * sizeof(*g->v));
	qsort(g->v, x->n, sizeof(*g->v), cmp_u64);
	for (size_t k = 0; k < x->n; k++)
		if (!k || g->v[k] != g->v[u - 1])
			g->v[u++] = g->v[k];
	g->nv = u;
	for (size_t k = 0; k < x->n; k++) {
		const uint64_t *at = bsearch(&x->own[k], g->v, u, sizeof(*g->v), cmp_u64);

		g->first[k] = x->first[k];
		g->vc[k] = (uint32_t)(at - g->v);
	}
	g->n = x->n;
	return 0;
}

static int map_build(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id)
{
	struct ch_region *g = &c->regs[id];
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	struct ch_runs img = { 0 }, b = { 0 }, next = { 0 };
	int rc = 0;

	uffdsnap_reader_region(c->f[0], id, &ri);
	g->npages = ri.length >> c->page_shift;
	for (unsigned k = 0; k < c->n; k++)
		if ((rc = usnap_reader_ready(c->f[k], id)))
			return file_fail(r, c, k, rc);
	/* the base, then each delta laid over the image so far */
	rc = file_runs(c, 0, id, g->npages, &img);
	for (unsigned k = 1; k < c->n && !rc; k++) {
		if (!(rc = file_runs(c, k, id, g->npages, &b)) && !(rc = overlay(&img, &b, g->npages, &next))) {
			runs_free(&img);
			img = next;
			next = (struct ch_runs){ 0 };
		}
		runs_free(&b);
	}
	if (!rc && img.n > UINT32_MAX)
		rc = -EFBIG;
	if (!rc)
		rc = map_from_runs(g, &img);
	runs_free(&img);
	runs_free(&next);
	if (rc) {
		region_free(g);
		return usnap_reader_fail(r, rc, "region '%s': mapping the chain's pages: %s", ri.name, strerror(-rc));
	}
	g->built = true;
	return 0;
}

int usnap_chain_ready(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id)
{
	if (id >= c->nregions)
		return usnap_reader_fail(r, -ENOENT, "no region %u: the snapshot has %u", id, c->nregions);
	return c->regs[id].built ? 0 : map_build(r, c, id);
}

size_t usnap_chain_nchunks(const struct usnap_chain *c, unsigned id)
{
	return c->regs[id].nv;
}

static size_t run_of(const struct ch_region *g, uint64_t p)
{
	return usnap_run_find(g->first, g->n, p);
}

static uint64_t run_end(const struct ch_region *g, size_t k)
{
	return k + 1 < g->n ? g->first[k + 1] : g->npages;
}

size_t usnap_chain_locate(const struct usnap_chain *c, unsigned id, uint64_t p, uint64_t *end)
{
	const struct ch_region *g = &c->regs[id];
	size_t k = run_of(g, p);

	*end = run_end(g, k);
	return g->vc[k];
}

/* ---- page access -------------------------------------------------------------------- */

static int ext_push(struct usnap_chain *c, uint32_t n, uint64_t first, uint64_t npages, uint32_t kind, uint64_t src)
{
	if (n == c->ext_cap) {
		size_t cap = c->ext_cap ? 2 * c->ext_cap : 256;
		struct usnap_extent *p = realloc(c->ext, cap * sizeof(*p));
		uint64_t *q;

		if (!p)
			return -ENOMEM;
		c->ext = p;
		if (!(q = realloc(c->ext_src, cap * sizeof(*q))))
			return -ENOMEM;
		c->ext_src = q;
		c->ext_cap = cap;
	}
	c->ext[n] = (struct usnap_extent){ .first_page = first, .npages = (uint32_t)npages, .kind = kind };
	c->ext_src[n] = src;
	return 0;
}

/*
 * The DATA pages of the kept pieces, each from where usnap_chain_chunk found
 * it: exactly the kept DATA pages are written, whatever the chunk's extents
 * (a hostile file's may overlap: matching pieces to extents by page range
 * once copied a ZERO piece as data, past the buffer; found by fuzz-reader).
 */
static void clip_copy(struct usnap_chain *c, const struct usnap_rchunk *fc, uint8_t *dst)
{
	for (uint32_t j = 0; j < c->cur_nkeep; j++) {
		uint64_t n = (uint64_t)c->ext[j].npages << c->page_shift;

		if (c->ext[j].kind != USNAP_EXT_DATA)
			continue;
		memcpy(dst, fc->data + c->ext_src[j], n);
		dst += n;
	}
}

int usnap_chain_chunk(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id, size_t i, bool want_data,
		      struct usnap_rchunk *out)
{
	const struct ch_region *g;
	struct usnap_rchunk fc;
	uint64_t total = 0, kept = 0, kept_data = 0, data_off = 0;
	uint32_t file, n = 0;
	int rc;

	c->cur_valid = false;
	if ((rc = usnap_chain_ready(r, c, id)))
		return rc;
	g = &c->regs[id];
	if (i >= g->nv)
		return usnap_reader_fail(r, -EINVAL, "no chunk %zu in the chain's region %u", i, id);
	file = CH_FILE(g->v[i]);
	rc = want_data ? usnap_reader_chunk(c->f[file], id, CH_CHUNK(g->v[i]), &fc)
		       : usnap_reader_chunk_meta(c->f[file], id, CH_CHUNK(g->v[i]), &fc);
	if (rc)
		return file_fail(r, c, file, rc);
	/* the pieces of each extent that are this chunk's in the image */
	for (uint32_t x = 0; x < fc.nextents; x++) {
		const struct usnap_extent *e = &fc.ext[x];
		uint64_t end = e->first_page + e->npages;
		size_t k = run_of(g, e->first_page);

		total += e->npages;
		for (uint64_t p = e->first_page, q; p < end; p = q, k++) {
			q = run_end(g, k) < end ? run_end(g, k) : end;
			if (g->vc[k] != i)
				continue;
			if (ext_push(c, n++, p, q - p, e->kind, data_off + ((p - e->first_page) << c->page_shift)))
				return usnap_reader_fail(r, -ENOMEM, "out of memory");
			kept += q - p;
			kept_data += e->kind == USNAP_EXT_DATA ? q - p : 0;
		}
		if (e->kind == USNAP_EXT_DATA)
			data_off += (uint64_t)e->npages << c->page_shift;
	}
	c->cur_file = file;
	c->cur_nkeep = n;
	c->cur_clipped = kept != total;
	c->cur_valid = true;
	if (!c->cur_clipped) {
		*out = fc;
		return 0;
	}
	*out = (struct usnap_rchunk){ .ext = c->ext, .nextents = n, .raw_len = kept_data << c->page_shift };
	if (!want_data)
		return 0;
	if (out->raw_len > c->data_cap) {
		uint8_t *p = realloc(c->data, out->raw_len);

		if (!p) {
			c->cur_valid = false;
			return usnap_reader_fail(r, -ENOMEM, "out of memory for %" PRIu64 " bytes of pages", out->raw_len);
		}
		c->data = p;
		c->data_cap = out->raw_len;
	}
	clip_copy(c, &fc, c->data);
	out->data = c->data;
	return 0;
}

/* Copy what the clipped chunk ch holds of bytes [off, off + len) into buf. */
static void chunk_to_buf(const struct usnap_chain *c, const struct usnap_rchunk *ch, uint64_t off, uint8_t *buf,
			 uint64_t len)
{
	uint64_t data_off = 0;

	for (uint32_t i = 0; i < ch->nextents; i++) {
		const struct usnap_extent *e = &ch->ext[i];
		uint64_t a = e->first_page << c->page_shift, n = (uint64_t)e->npages << c->page_shift;
		uint64_t b0 = a > off ? a : off, b1 = a + n < off + len ? a + n : off + len;

		if (b0 < b1 && e->kind == USNAP_EXT_DATA)
			memcpy(buf + (b0 - off), ch->data + data_off + (b0 - a), b1 - b0);
		else if (b0 < b1)
			memset(buf + (b0 - off), 0, b1 - b0);
		data_off += e->kind == USNAP_EXT_DATA ? n : 0;
	}
}

/*
 * The base holds every page: one read of it all (its chunks are loaded whole
 * anyway), then the newer files' chunks that hold pages of the range, each
 * loaded once and clipped to its pages of the image: deltas come in many
 * small chunks, and a read call per stretch of a delta cost more than that.
 */
int usnap_chain_read(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id, uint64_t off, void *buf, size_t len)
{
	const struct ch_region *g;
	uint64_t p1, *want;
	int rc;

	if ((rc = usnap_chain_ready(r, c, id)))
		return rc;
	g = &c->regs[id];
	if (off > g->npages << c->page_shift || len > (g->npages << c->page_shift) - off)
		return usnap_reader_fail(r, -EINVAL, "bytes %" PRIu64 "+%zu are not inside the region of %" PRIu64
					 " bytes", off, len, g->npages << c->page_shift);
	if (!len)
		return 0;
	if ((rc = uffdsnap_reader_read(c->f[0], id, off, buf, len)))
		return file_fail(r, c, 0, rc);
	/* the chunks of newer files that hold a run of the range, each once */
	if (!(want = calloc((g->nv + 63) / 64, sizeof(*want))))
		return usnap_reader_fail(r, -ENOMEM, "out of memory");
	p1 = (off + len + ((uint64_t)1 << c->page_shift) - 1) >> c->page_shift;
	for (size_t k = run_of(g, off >> c->page_shift); k < g->n && g->first[k] < p1; k++)
		if (CH_FILE(g->v[g->vc[k]]))
			want[g->vc[k] / 64] |= 1ull << (g->vc[k] % 64);
	for (size_t i = 0; i < g->nv && !rc; i++) {
		struct usnap_rchunk ch;

		if (!(want[i / 64] >> (i % 64) & 1))
			continue;
		if (!(rc = usnap_chain_chunk(r, c, id, i, true, &ch)))
			chunk_to_buf(c, &ch, off, buf, len);
	}
	free(want);
	return rc;
}

int usnap_chain_scatter(uffdsnap_reader_t *r, struct usnap_chain *c, uint8_t *base)
{
	int rc;

	if (!c->cur_valid)
		return usnap_reader_fail(r, -EINVAL, "no chunk loaded");
	rc = usnap_reader_chunk_scatter_part(c->f[c->cur_file], base, c->cur_clipped ? c->ext : NULL, c->cur_nkeep);
	return rc ? file_fail(r, c, c->cur_file, rc) : 0;
}

/* ---- opening a chain -------------------------------------------------------------------- */

static const char *hex_id(const uint8_t id[16], char out[33])
{
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", id[i]);
	return out;
}

/* File k's region table is file k-1's. */
static int same_regions(const struct usnap_chain *c, unsigned k, const uffdsnap_info_t *in)
{
	if (in[k].page_size != in[k - 1].page_size || in[k].nregions != in[k - 1].nregions)
		return usnap_err(-ENOLINK, "%s: %u regions of %u-byte pages, but its parent %s has %u of %u-byte "
				 "pages: a delta's region table is its parent's", c->names[k], in[k].nregions,
				 in[k].page_size, c->names[k - 1], in[k - 1].nregions, in[k - 1].page_size);
	for (unsigned i = 0; i < in[k].nregions; i++) {
		uffdsnap_region_info_t a = { .size = sizeof(a) }, b = { .size = sizeof(b) };

		uffdsnap_reader_region(c->f[k], i, &a);
		uffdsnap_reader_region(c->f[k - 1], i, &b);
		if (a.length != b.length || strcmp(a.name, b.name))
			return usnap_err(-ENOLINK, "%s: region %u is '%s' of %" PRIu64 " bytes, but in its parent %s "
					 "it is '%s' of %" PRIu64 ": a delta's region table is its parent's",
					 c->names[k], i, a.name, a.length, c->names[k - 1], b.name, b.length);
	}
	return 0;
}

/* The links: a full snapshot, then deltas each of the file before it. */
static int check_link(const struct usnap_chain *c, unsigned k, const uffdsnap_info_t *in)
{
	char a[33], b[33];

	if (!k && in[0].delta)
		return usnap_err(-ENOLINK, "%s is a delta (of snapshot %s): a chain starts with a full snapshot, "
				 "then its deltas in order", c->names[0], hex_id(in[0].parent_id, a));
	if (!k)
		return 0;
	if (!in[k].delta)
		return usnap_err(-ENOLINK, "%s is a full snapshot: only the first file of a chain is (the base "
				 "first, then each delta after its parent)", c->names[k]);
	if (memcmp(in[k].parent_id, in[k - 1].snap_id, 16)) {
		for (unsigned j = 0; j < c->n; j++)
			if (!memcmp(in[k].parent_id, in[j].snap_id, 16))
				return usnap_err(-ENOLINK, "%s is a delta of %s, not of %s, the file before it: the "
						 "files are out of order (the base first, then each delta after its "
						 "parent)", c->names[k], c->names[j], c->names[k - 1]);
		return usnap_err(-ENOLINK, "%s is a delta of snapshot %s, but the file before it, %s, is snapshot "
				 "%s: a link of the chain is missing, or the file is of another chain", c->names[k],
				 hex_id(in[k].parent_id, a), c->names[k - 1], hex_id(in[k - 1].snap_id, b));
	}
	/* a full snapshot written by merging a chain carries its last delta's
	 * id: the deltas after that one apply to it, at whatever depth */
	if (in[k - 1].delta && in[k].depth != in[k - 1].depth + 1)
		return usnap_err(-ENOLINK, "%s has depth %u, but its parent %s has depth %u: one of them is not "
				 "what it claims", c->names[k], in[k].depth, c->names[k - 1], in[k - 1].depth);
	return same_regions(c, k, in);
}

/* Open file k as a link of c. */
static int open_link(struct usnap_chain *c, unsigned k, const char *path, uffdsnap_info_t *in)
{
	int rc;

	if (!(c->names[k] = strdup(path)))
		return usnap_err(-ENOMEM, "out of memory");
	if ((rc = uffdsnap_reader_open(&c->f[k], path)))
		return usnap_err(rc, "%s: %s", path, uffdsnap_last_error());
	usnap_reader_link(c->f[k]);
	in->size = sizeof(*in);
	uffdsnap_reader_info(c->f[k], in);
	if (!in->complete)
		return usnap_err(-ENODATA, "%s: %s", path, in->reason);
	return 0;
}

USNAP_EXPORT int uffdsnap_reader_open_chain(uffdsnap_reader_t **rp, const char *const *paths, unsigned n)
{
	struct usnap_chain *c = NULL;
	uffdsnap_info_t *in = NULL;
	uffdsnap_reader_t *head = NULL;
	int rc = 0;

	usnap_clear_err();
	if (!rp || !paths || !n)
		return usnap_err(-EINVAL, "uffdsnap_reader_open_chain: reader and paths must not be NULL, n at least 1");
	*rp = NULL;
	for (unsigned k = 0; k < n; k++)
		if (!paths[k])
			return usnap_err(-EINVAL, "uffdsnap_reader_open_chain: paths[%u] is NULL", k);
	if (!(in = calloc(n, sizeof(*in))) || !(c = chain_alloc(n, 1, 0))) {
		free(in);
		return usnap_err(-ENOMEM, "out of memory");
	}
	for (unsigned k = 0; k < n && !rc; k++) {
		c->n = k + 1;
		rc = open_link(c, k, paths[k], &in[k]);
	}
	for (unsigned k = 0; k < n && !rc; k++)
		rc = check_link(c, k, in);
	if (!rc && n == 1) {
		/* a full snapshot alone is a file */
		*rp = c->f[0];
		c->f[0] = NULL;
		goto out;
	}
	if (!rc) {
		free(c->regs);
		c->nregions = in[0].nregions;
		c->page_shift = (uint32_t)__builtin_ctz(in[0].page_size);
		if (!(c->regs = calloc(c->nregions, sizeof(*c->regs))))
			rc = usnap_err(-ENOMEM, "out of memory");
	}
	/* the reader handed out is the last file's (its table, its info) with
	 * the chain attached */
	if (!rc && !(rc = usnap_reader_clone(c->f[n - 1], &head))) {
		usnap_reader_set_chain(head, c);
		c = NULL;
		*rp = head;
	}
out:
	usnap_chain_free(c);
	free(in);
	return rc;
}
