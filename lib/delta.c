/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Deltas (incremental snapshots): what the next delta is taken against, and
 * the fingerprint tables that decide which pages it leaves out.
 *
 * With UFFDSNAP_OPT_DELTA every snapshot, full or delta, leaves per region one
 * 64-bit fingerprint (XXH3-64) per page of its image: the compression workers
 * (compress.c) hash each page they record, from the bytes copied at the
 * instant, and a zero page or a hole gets the fingerprint of a zero page. A
 * delta leaves out every page whose fingerprint equals the one its parent
 * left. This compares contents at the two instants, so it is exact whatever
 * the kernel did in between (zap, swap, migration, THP split, fork, mremap,
 * hole punch, truncate) and leaves out pages written back to their old bytes;
 * the one way to miss a change is two different pages with one fingerprint,
 * 2^-64 per changed page for a hash with no structure such inputs could
 * exploit (docs/design.md, "Deltas": why not a CRC).
 *
 * The tables are updated in place: each page is recorded exactly once per
 * snapshot, so its worker reads the parent's fingerprint and writes the new
 * one in one step. A snapshot that fails or is cancelled leaves them half
 * updated, so it leaves no parent: the next delta is refused (-ENOLINK) until a
 * full snapshot completes. One table per context (8 bytes per page, 0.2 % of
 * 4 KiB pages) rather than two: a failed snapshot is rare, memory is not.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "latch.h"
#include "snapshot.h"
#include "uffdsnap-private.h"

uint64_t usnap_fingerprint(const void *page, size_t len)
{
	return XXH3_64bits(page, len);
}

void usnap_delta_lost(uffdsnap_t *ctx, const char *fmt, ...)
{
	va_list ap;

	ctx->parent.ok = false;
	va_start(ap, fmt);
	usnap_vformat(ctx->parent.why, sizeof(ctx->parent.why), fmt, ap);
	va_end(ap);
}

int usnap_delta_check(const uffdsnap_t *ctx, bool delta)
{
	if (!delta || ctx->parent.ok)
		return 0;
	if (!(ctx->opts.flags & UFFDSNAP_OPT_DELTA))
		return usnap_err(-ENOLINK, "no parent for a delta: the context was created without "
				 "UFFDSNAP_OPT_DELTA, so its snapshots keep no fingerprints; take full snapshots");
	return usnap_err(-ENOLINK, "no parent for a delta: %s; take a full snapshot first",
			 ctx->parent.why[0] ? ctx->parent.why : "no snapshot has completed on this context yet");
}

int usnap_delta_begin(uffdsnap_snap_t *s)
{
	uffdsnap_t *ctx = s->ctx;
	uint8_t *zero;
	int r = 0;

	pthread_mutex_lock(&ctx->lock);
	if (s->delta) {
		memcpy(s->parent_id, ctx->parent.id, sizeof(s->parent_id));
		s->depth = ctx->parent.depth + 1;
	}
	/* From here the tables change: until this snapshot completes, nothing is a parent. */
	if (ctx->opts.flags & UFFDSNAP_OPT_DELTA)
		usnap_delta_lost(ctx, "the last snapshot has not finished");
	for (unsigned i = 0; (ctx->opts.flags & UFFDSNAP_OPT_DELTA) && !r && i < s->nregions; i++) {
		struct usnap_reg *reg = &ctx->regs[i];

		if (!reg->fp && !(reg->fp = calloc(reg->npages, sizeof(*reg->fp))))
			r = usnap_err(-ENOMEM, "allocating the fingerprints of region '%s' (%llu pages)", reg->name,
				      (unsigned long long)reg->npages);
		s->sregs[i].fp = reg->fp;
	}
	pthread_mutex_unlock(&ctx->lock);
	if (r)
		return r;
	if (!(zero = calloc(1, s->page_size)))
		return usnap_err(-ENOMEM, "allocating a zero page");
	s->zero_fp = usnap_fingerprint(zero, s->page_size);
	free(zero);
	return 0;
}

void usnap_delta_end(uffdsnap_snap_t *s)
{
	uffdsnap_t *ctx = s->ctx;
	int err = usnap_latch_err(&s->fail);

	if (!(ctx->opts.flags & UFFDSNAP_OPT_DELTA))
		return;
	if (err == USNAP_LATCH_CLOSED) {
		ctx->parent.ok = true;
		memcpy(ctx->parent.id, s->snap_id, sizeof(ctx->parent.id));
		ctx->parent.depth = s->depth;
		ctx->parent.why[0] = '\0';
	} else {
		/* Even one that failed before its workers ran: simpler to state than
		 * which failures left the tables whole. */
		if (err == -ECANCELED)
			usnap_delta_lost(ctx, "the last snapshot was cancelled");
		else
			usnap_delta_lost(ctx, "the last snapshot failed: %s", usnap_latch_msg(&s->fail));
	}
}
