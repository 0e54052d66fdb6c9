/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Deltas (format version 2, docs/format.md "Deltas") written from two images
 * in memory, for tests/test-chain.c and tests/bench/chain-bench.c while the
 * engine cannot write them. White-box: uses lib/format.h and usnap_rec_crc()
 * from the static library.
 */
#ifndef USNAP_TEST_FORGE_H
#define USNAP_TEST_FORGE_H

#include <stddef.h>
#include <stdint.h>

struct usnap_forge {
	unsigned nregions;
	const char *const *names;
	const uint64_t *npages;          /* pages of each region (compared) */
	const uint64_t *table_len;       /* lengths written in the region table; NULL: npages * page */
	uint32_t page_size;
	const uint8_t *const *prev;      /* each region's image at the parent's instant */
	const uint8_t *const *cur;       /* ... and at the delta's */
	const uint8_t *parent_id, *id;   /* 16 bytes each */
	uint32_t depth;
	uint64_t created_ns;
	unsigned chunk_pages;            /* changed pages per chunk (1..256) */
	int zstd;                        /* 0 raw, 1 every other chunk, 2 every chunk (if it shrinks) */
	int keep_first;                  /* also hold page 0 of region 0, changed or not */
};

/* Write the delta of f->cur over f->prev to path: the pages that differ (and
 * page 0 with keep_first), in chunks that skip unchanged pages inside their
 * span; ZERO extents for all-zero pages. 0, or -errno. */
int usnap_forge_delta(const char *path, const struct usnap_forge *f);

#endif
