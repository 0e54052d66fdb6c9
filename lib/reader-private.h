/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Internal access to a reader's chunks, for restore (restore.c,
 * restore-lazy.c): restoring needs one chunk at a time, by index entry, and
 * several threads reading one snapshot at once. Each thread uses its own
 * clone; loading still goes through the reader's one checked path
 * (chunk_load() in reader.c).
 */
#ifndef UFFDSNAP_READER_PRIVATE_H
#define UFFDSNAP_READER_PRIVATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uffdsnap.h"
#include "format.h"

/* A chunk loaded and checked; points into the reader's buffers, valid until
 * the next call on that reader. */
struct usnap_rchunk {
	const struct usnap_extent *ext;
	uint32_t nextents;
	const uint8_t *data;     /* the DATA pages, in extent-table order */
	uint64_t raw_len;
};

/* The run of a page map that holds page p: the last of the n sorted run
 * starts first[] that is <= p (first[0] is 0). */
static inline size_t usnap_run_find(const uint64_t *first, size_t n, uint64_t p)
{
	size_t lo = 0, hi = n;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (first[mid] <= p)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* A new reader of the same file (a dup of its fd) with its own buffers and
 * decompression context, sharing nothing mutable with r: one per thread. */
int usnap_reader_clone(const uffdsnap_reader_t *r, uffdsnap_reader_t **out);
/* Close a clone's descriptor and nothing else: in a child of fork(), where the
 * thread that used the clone (and may have been changing its buffers) is gone. */
void usnap_reader_abandon(uffdsnap_reader_t *r);
/* The count of page-server connections served from r (restore-serve.c). */
_Atomic unsigned *usnap_reader_clients(uffdsnap_reader_t *r);
/* 0 if region id can be read chunk by chunk (a complete file, not a stream)
 * and its page map is built; else the errno of uffdsnap_reader_read(), with
 * the reason in r's error. */
int usnap_reader_ready(uffdsnap_reader_t *r, unsigned id);
/* Chunks of region id, numbered 0..n-1 in order of their first page. */
size_t usnap_reader_nchunks(const uffdsnap_reader_t *r, unsigned id);
/* The chunk that holds page p of region id, and the end of the run of pages
 * from p that it holds, from the page map (no I/O). The region must be ready
 * (usnap_reader_ready()). It reads only the map, which never changes once
 * built: any thread may ask while another uses r. */
size_t usnap_reader_locate(const uffdsnap_reader_t *r, unsigned id, uint64_t p, uint64_t *run_end);
/* The chunk that holds page p of region id, and the end of the run of pages
 * from p that it holds (above); SIZE_MAX for a run of pages a delta read as
 * a link of a chain does not hold. */
/* Load chunk i of region id with its data, checked against its index entry. */
int usnap_reader_chunk(uffdsnap_reader_t *r, unsigned id, size_t i, struct usnap_rchunk *out);
/* The same without decompressing its pages (out->data is NULL): the record
 * stays loaded for usnap_reader_chunk_scatter(). */
int usnap_reader_chunk_meta(uffdsnap_reader_t *r, unsigned id, size_t i, struct usnap_rchunk *out);
/* The pages of the chunk usnap_reader_chunk_meta() loaded, each DATA extent written
 * at base + (first_page << page shift): decompressed in place, no bounce
 * buffer. A frame found corrupt may have written some of its pages. */
int usnap_reader_chunk_scatter(uffdsnap_reader_t *r, uint8_t *base);
/* The same for the pieces of its extents listed in keep only (in extent
 * order, each inside one extent, as reader-chain.c clips them); NULL: all. */
int usnap_reader_chunk_scatter_part(uffdsnap_reader_t *r, uint8_t *base, const struct usnap_extent *keep,
				    uint32_t nkeep);

/* ---- decoding ahead of the caller (reader-ahead.c) ----
 * Buffers a chunk is loaded into: its record and its decompressed pages. */
struct usnap_rbufs {
	uint8_t *rec, *raw;
	size_t rec_cap, raw_cap;
};

/* Load chunk ci of region id with its pages into b (grown as needed), checked
 * whole as usnap_reader_chunk() checks it, with r's file and zstd context; r
 * is otherwise left as it was (its own buffers, last chunk and error). *out
 * points into b. On failure, the error's text goes to err. */
int usnap_reader_decode(uffdsnap_reader_t *r, unsigned id, size_t ci, struct usnap_rbufs *b, struct usnap_rchunk *out,
			char *err, size_t errlen);

struct usnap_ahead;
/* Start `workers` threads (each with a clone of r) decoding into `slots`
 * slots; fewer if clones or threads cannot be had, -EAGAIN if none. */
int usnap_ahead_new(uffdsnap_reader_t *r, unsigned workers, unsigned slots, struct usnap_ahead **out);
/* Stop the workers (each finishes the chunk it is on), join them, free; in
 * a child of fork(), only free. */
void usnap_ahead_free(struct usnap_ahead *a);
/* This process is a child of fork() since a's workers started: they are not
 * here, a is only to be freed. */
bool usnap_ahead_forked(const struct usnap_ahead *a);
/* Queue chunk ci of region id, after those queued before: 1 if queued or held
 * already, 0 if every slot is taken. */
int usnap_ahead_queue(struct usnap_ahead *a, unsigned id, size_t ci);
/* Drop every chunk held (queued, being decoded or decoded) that keep() does
 * not want; keep NULL drops all. */
void usnap_ahead_keep(struct usnap_ahead *a, bool (*keep)(void *arg, unsigned id, size_t ci), void *arg);
/* A decoded chunk of region id that need() says the caller needs: 0 with its
 * index in *ci and *c (valid until the next take or keep), its error (the
 * text in r's error; *ci set), or 1 if none of them is held (the caller loads
 * one). Decodes queued chunks itself rather than wait idle; decoding, it
 * uses r's file and zstd context (usnap_reader_decode()). */
int usnap_ahead_take(struct usnap_ahead *a, uffdsnap_reader_t *r, unsigned id, bool (*need)(void *arg, size_t ci),
		     void *arg, size_t *ci, struct usnap_rchunk *c);
/* The chunk taken last, if its pages are `data`, the start of its slot's
 * buffer of decoded pages: that buffer is returned (its size in *old_cap),
 * buf (cap bytes, may be NULL) put in its place and the slot given back
 * (the chunk's record with it); else NULL, nothing changed. */
uint8_t *usnap_ahead_trade(struct usnap_ahead *a, const uint8_t *data, uint8_t *buf, size_t cap, size_t *old_cap);
/* Chunks decoded into slots so far (with their pages, without error), and
 * in *failed (if not NULL) those that failed. */
uint64_t usnap_ahead_decoded(const struct usnap_ahead *a, uint64_t *failed);
/* Tests: usnap_ahead_decoded() of r's read-ahead (0 without one). */
uint64_t usnap_reader_ahead_decoded(const uffdsnap_reader_t *r, uint64_t *failed);

/* Record an error in r's text (uffdsnap_reader_error()); returns err. */
__attribute__((format(printf, 3, 4))) int usnap_reader_fail(uffdsnap_reader_t *r, int err, const char *fmt, ...);

/* ---- chains (reader-chain.c) ----
 * A reader that presents a chain is a clone of the chain's last file with a
 * struct usnap_chain attached: region table and information are that
 * file's, and every page access above goes to the chain, which owns a
 * reader per file. */
struct usnap_chain;

/* r is read as a link of a chain: a delta's pages may be read, and its page
 * map has gaps (SIZE_MAX from usnap_reader_locate()). */
void usnap_reader_link(uffdsnap_reader_t *r);
void usnap_reader_set_chain(uffdsnap_reader_t *r, struct usnap_chain *c);

int usnap_chain_read(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id, uint64_t off, void *buf, size_t len);
int usnap_chain_verify(uffdsnap_reader_t *r, struct usnap_chain *c);
void usnap_chain_cache(struct usnap_chain *c, size_t bytes);
void usnap_chain_free(struct usnap_chain *c);
int usnap_chain_clone(const struct usnap_chain *c, struct usnap_chain **out);
unsigned usnap_chain_files(const struct usnap_chain *c);
uint64_t usnap_chain_decoded(const struct usnap_chain *c);
int usnap_chain_ready(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id);
size_t usnap_chain_nchunks(const struct usnap_chain *c, unsigned id);
size_t usnap_chain_locate(const struct usnap_chain *c, unsigned id, uint64_t p, uint64_t *run_end);
int usnap_chain_chunk(uffdsnap_reader_t *r, struct usnap_chain *c, unsigned id, size_t i, bool want_data,
		      struct usnap_rchunk *out);
int usnap_chain_scatter(uffdsnap_reader_t *r, struct usnap_chain *c, uint8_t *base);

#endif
