/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration wire protocol (migrate*.c, docs/migration.md "Protocol").
 * Shared with tests/test-migrate.c, which forges hostile frames.
 *
 * A stream of frames, little-endian. Every frame is a 16-byte header and a
 * payload of hdr.len bytes; hdr.crc is the CRC-32C of the header (crc field
 * zero) followed by the payload, so a receiver checks a whole frame before it
 * uses any of it. Sender to receiver: HELLO, then PAGES/ZERO frames, each
 * round closed by ROUND_END; receiver to sender: HELLO_OK after HELLO, ACK
 * after each ROUND_END (its arrival means every byte of the round has been
 * read and applied: no data of the round sits in a socket buffer or a queue
 * of the link any more). The ROUND_END with final = 1 comes after the
 * switchover; its ACK ends the migration.
 *
 * Post-copy (HELLO flag USNAP_MIG_HELLO_POSTCOPY): after round 1's ACK the
 * sender switches over and sends DISCARD frames (bitmaps of the pages
 * written during round 1: the receiver drops its copies) and POSTCOPY; the
 * receiver registers its mappings for missing-page faults, answers RUNNING
 * and the program runs. Its faults on dropped pages go back as REQUEST
 * frames on the same socket (the reverse direction carries nothing else, so
 * a request never queues behind pushed pages); the sender answers them
 * before its background push of the rest, which it keeps to a small window
 * in flight (migrate-postcopy.c, push_step()). A ROUND_END with round 2, final = 1
 * follows the last page; its ACK ends the migration.
 */
#ifndef UFFDSNAP_MIGRATE_H
#define UFFDSNAP_MIGRATE_H

#include <stdint.h>

#define USNAP_MIG_MAGIC 0x47494d55u     /* "UMIG" */
#define USNAP_MIG_VERSION 2u             /* 2: post-copy frames, HELLO flags */
#define USNAP_MIG_BATCH 64u             /* pages per PAGES frame at most */
#define USNAP_MIG_MAX_PAGE (64u << 10)  /* largest page size accepted */
#define USNAP_MIG_MAX_FRAME (1u << 20)  /* largest payload of a frame but PAGES (16 + npages * page_size) */

enum usnap_mig_type {
	USNAP_MIG_HELLO = 1,      /* u32 version, page_size, nregions, flags; per region: u64 len,
				   * u32 name_len (1..USNAP_MAX_NAME), name (no NUL) */
	USNAP_MIG_HELLO_OK = 2,   /* struct usnap_mig_status: version, 0 or a negative errno */
	USNAP_MIG_PAGES = 3,      /* struct usnap_mig_pages, then npages * page_size bytes */
	USNAP_MIG_ZERO = 4,       /* struct usnap_mig_pages: the pages are zero now */
	USNAP_MIG_ROUND_END = 5,  /* struct usnap_mig_round */
	USNAP_MIG_ACK = 6,        /* struct usnap_mig_status: the round, 0 or a negative errno */
	USNAP_MIG_PAGES_Z = 7,    /* struct usnap_mig_pages, then one zstd frame of exactly
				   * npages * page_size bytes (UFFDSNAP_MIGRATE_COMPRESS) */
	USNAP_MIG_DISCARD = 8,    /* struct usnap_mig_discard, then nwords u64: bit i of word w is
				   * page first + 64 * w + i, to drop and wait for (post-copy) */
	USNAP_MIG_POSTCOPY = 9,   /* struct usnap_mig_round: round 2, final 0, pages = pages dropped */
	USNAP_MIG_REQUEST = 10,   /* <- struct usnap_mig_pages, npages 1: the receiver faulted there */
	USNAP_MIG_RUNNING = 11,   /* <- struct usnap_mig_status: round 2, 0 or a negative errno */
};

#define USNAP_MIG_HELLO_POSTCOPY 1u     /* struct usnap_mig_hello.flags */

struct usnap_mig_hdr {
	uint32_t magic;
	uint16_t type;
	uint16_t flags;                 /* 0 */
	uint32_t len;                   /* payload bytes */
	uint32_t crc;
};

struct usnap_mig_hello {
	uint32_t version, page_size, nregions, flags;
};

struct usnap_mig_status {
	uint32_t value;                 /* HELLO_OK: version; ACK: round */
	int32_t status;
};

struct usnap_mig_pages {
	uint32_t region;
	uint32_t npages;                /* 1..USNAP_MIG_BATCH */
	uint64_t first;
};

struct usnap_mig_discard {
	uint32_t region;
	uint32_t nwords;                /* 1..USNAP_MIG_MAX_FRAME / 8 - 2 */
	uint64_t first;                 /* a multiple of 64 */
};

struct usnap_mig_round {
	uint32_t round;
	uint32_t final;                 /* 1: after the switchover, the last */
	uint64_t pages;                 /* pages of PAGES and ZERO frames in this round */
};

_Static_assert(sizeof(struct usnap_mig_hdr) == 16, "header layout");
_Static_assert(sizeof(struct usnap_mig_pages) == 16, "pages layout");
_Static_assert(sizeof(struct usnap_mig_discard) == 16, "discard layout");

/* The CRC a frame's header carries (hdr->crc is ignored). */
uint32_t usnap_mig_crc(const struct usnap_mig_hdr *hdr, const void *payload, uint32_t len);

#endif
