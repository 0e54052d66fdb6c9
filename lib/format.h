/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * On-disk/stream format v1 and v2 (docs/format.md is the specification; this header is
 * its C transcription, shared by the writer in sink.c/compress.c and reader.c).
 *
 * All integers are little-endian; every record starts 8-byte aligned.
 *
 *   file    := MAGIC(8) HEAD CHNK* INDX END
 *   record  := rec_hdr body padding-to-8
 *
 * rec_hdr.crc is CRC-32C over the whole record (header with crc = 0, body and
 * padding), so one check covers lengths, extent tables and payload alike.
 * Chunks may come in any order (faulted pages jump the queue); the index in
 * INDX lists every chunk's offset for random access, and END is a fixed-size
 * record at the very end of the file so a reader finds the index with one
 * pread. A stream without END is incomplete; END with status != 0 is a
 * snapshot that failed and says why.
 */
#ifndef UFFDSNAP_FORMAT_H
#define UFFDSNAP_FORMAT_H

#include <stdint.h>
#include <stddef.h>

#define USNAP_MAGIC "UFFDSNAP"         /* first 8 bytes of every snapshot */
#define USNAP_MAGIC_LEN 8
#define USNAP_VERSION 1                 /* full snapshots: every page of every region */
#define USNAP_VERSION_DELTA 2           /* deltas: only pages that may differ from the parent */

#define USNAP_FOURCC(a, b, c, d) \
	((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
#define USNAP_REC_HEAD USNAP_FOURCC('H', 'E', 'A', 'D')
#define USNAP_REC_CHNK USNAP_FOURCC('C', 'H', 'N', 'K')
#define USNAP_REC_INDX USNAP_FOURCC('I', 'N', 'D', 'X')
#define USNAP_REC_END USNAP_FOURCC('E', 'N', 'D', '!')

/* Limits a reader enforces before trusting anything from a file. */
#define USNAP_MAX_REGIONS 2048             /* x (16 + 256) bytes fits USNAP_MAX_HEAD_LEN */
#define USNAP_MAX_NAME 255
#define USNAP_MAX_HEAD_LEN (1u << 20)
#define USNAP_MAX_CHUNK_RAW (64u << 20)     /* page bytes in one chunk */
#define USNAP_MAX_EXTENTS 65536             /* extents in one chunk */
#define USNAP_MAX_REGION_LEN (1ull << 48)
#define USNAP_MIN_PAGE 4096u
#define USNAP_MAX_PAGE (1u << 30)

struct usnap_rec_hdr {
	uint32_t type;   /* USNAP_REC_* */
	uint32_t crc;    /* CRC-32C of the whole padded record with this field 0 */
	uint64_t len;    /* whole record length in bytes incl. this header, multiple of 8 */
};

/* HEAD body, followed by nregions usnap_region entries */
struct usnap_head {
	uint32_t version;      /* USNAP_VERSION */
	uint32_t page_size;    /* bytes; a power of two */
	uint32_t nregions;
	uint32_t flags;        /* 0 in v1 */
	uint64_t created_ns;   /* CLOCK_REALTIME at the instant */
	uint8_t snap_id[16];   /* random; repeated in END so pieces of two files never mix */
};

#define USNAP_HEAD_DELTA (1u << 0)     /* version 2 only: a delta, usnap_head_delta follows */

/*
 * Version 2 (deltas): HEAD's body is usnap_head (version 2, flags DELTA) then
 * this, then the region table, which must equal the parent's (page size,
 * count, lengths and names). A page no extent of the delta covers is the
 * parent's page; DATA and ZERO extents replace it. Full snapshots stay
 * version 1, so readers that predate deltas still read every full snapshot
 * and refuse a delta as an unsupported version, not as corruption.
 */
struct usnap_head_delta {
	uint8_t parent_id[16]; /* snap_id of the snapshot this delta applies to */
	uint32_t depth;        /* 1 for a delta of a full snapshot, parent's depth + 1 after */
	uint32_t reserved;     /* 0 */
};

/* region entry: fixed part then name bytes, padded to 8 */
struct usnap_region {
	uint64_t length;       /* bytes, multiple of page_size, > 0 */
	uint32_t name_len;     /* 1..USNAP_MAX_NAME */
	uint32_t flags;        /* 0 in v1 */
	/* char name[name_len]; pad to 8 */
};

#define USNAP_CHNK_ZSTD (1u << 0)   /* payload is one zstd frame; else raw page bytes */

/* CHNK body, followed by nextents usnap_extent entries, then stored_len payload bytes */
struct usnap_chunk {
	uint32_t region;       /* index into the region table */
	uint32_t nextents;     /* 1..USNAP_MAX_EXTENTS */
	uint32_t flags;        /* USNAP_CHNK_* */
	uint32_t reserved;     /* 0 */
	uint64_t raw_len;      /* bytes of DATA pages = data pages * page_size */
	uint64_t stored_len;   /* payload bytes in the record */
};

#define USNAP_EXT_DATA 0       /* npages pages of data, in payload order */
#define USNAP_EXT_ZERO 1       /* npages pages that read as zero (holes, zero pages) */

struct usnap_extent {
	uint64_t first_page;   /* page index within the region */
	uint32_t npages;       /* >= 1 */
	uint32_t kind;         /* USNAP_EXT_* */
};

/* INDX body: count, then count entries */
struct usnap_index_hdr {
	uint64_t count;
};

struct usnap_index_ent {
	uint64_t offset;       /* file offset of the CHNK record */
	uint32_t region;
	uint32_t nextents;
	uint64_t first_page;   /* lowest page the chunk covers */
	uint64_t end_page;     /* one past the highest page */
};

/* END body; the END record is the last USNAP_END_LEN bytes of a file */
struct usnap_end {
	int32_t status;        /* 0 = complete; else -errno the snapshot failed with */
	uint32_t reserved;
	uint64_t index_offset; /* file offset of INDX (0 if status != 0) */
	uint64_t chunks;
	uint64_t pages_data;
	uint64_t pages_zero;
	uint64_t bytes_raw;
	uint8_t snap_id[16];
};

#define USNAP_END_LEN (sizeof(struct usnap_rec_hdr) + sizeof(struct usnap_end))

_Static_assert(sizeof(struct usnap_rec_hdr) == 16, "rec_hdr layout");
_Static_assert(USNAP_MAGIC_LEN + 16 + 40 + 24 + USNAP_MAX_REGIONS * (16 + 256) <= USNAP_MAX_HEAD_LEN,
	       "the largest region table a writer may produce must pass the reader's bound");
_Static_assert(sizeof(struct usnap_head) == 40, "head layout");
_Static_assert(sizeof(struct usnap_head_delta) == 24, "delta head layout");
_Static_assert(sizeof(struct usnap_region) == 16, "region layout");
_Static_assert(sizeof(struct usnap_chunk) == 32, "chunk layout");
_Static_assert(sizeof(struct usnap_extent) == 16, "extent layout");
_Static_assert(sizeof(struct usnap_index_ent) == 32, "index layout");
_Static_assert(sizeof(struct usnap_end) == 64, "end layout");

static inline uint64_t usnap_pad8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "format v1 is written natively: add byte swapping before porting to big-endian"
#endif

/* CRC-32C (Castagnoli), hardware accelerated where the CPU has it (crc32c.c). */
uint32_t usnap_crc32c(uint32_t crc, const void *buf, size_t len);

/* CRC of a record in memory: computed with hdr->crc treated as 0. */
uint32_t usnap_rec_crc(const void *rec, uint64_t len);

/* ---- writing records (record.c), for sink.c and merge.c ---- */

/* Fill in the header of the record of len bytes at rec, its checksum last. */
void usnap_rec_seal(void *rec, uint32_t type, uint64_t len);
/* The name and length of region i of a HEAD being written. */
typedef void usnap_region_fn(void *ctx, unsigned i, const char **name, uint64_t *length);
/* The bytes of the HEAD record of hd (with usnap_head_delta if hd->flags says
 * DELTA) and hd->nregions regions, and the record, sealed, at rec. */
size_t usnap_head_rec_len(const struct usnap_head *hd, usnap_region_fn *region, void *ctx);
void usnap_head_rec_put(uint8_t *rec, size_t len, const struct usnap_head *hd, const struct usnap_head_delta *dh,
			usnap_region_fn *region, void *ctx);
/* The INDX record of n entries, sealed, at rec; returns its length. */
static inline size_t usnap_index_rec_len(uint64_t n)
{
	return sizeof(struct usnap_rec_hdr) + sizeof(struct usnap_index_hdr) + n * sizeof(struct usnap_index_ent);
}
size_t usnap_index_rec_put(uint8_t *rec, const struct usnap_index_ent *ent, uint64_t n);
/* The END record of e, sealed, at rec (USNAP_END_LEN bytes). */
void usnap_end_rec_put(uint8_t *rec, const struct usnap_end *e);

#endif
