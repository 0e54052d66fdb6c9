/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A valid snapshot file (reader-fixture.c) damaged in every way we can think
 * of: flipped bytes in every part, truncation (files and streams), hostile
 * lengths and counts with valid checksums, zstd payloads damaged under a
 * re-sealed record checksum. The reader must fail with
 * -EBADMSG/-ENODATA/-ENOEXEC/-EPROTONOSUPPORT and say why, never crash, never
 * return wrong data.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reader-fixture.h"

/* Under TSan the corruption sweep flips every 3rd offset of its list: the
 * reader runs in one thread, so what the other offsets add (the reader's
 * answer to each damaged byte, its memory errors) the plain and ASan builds
 * check in full. */
#if defined(__SANITIZE_THREAD__)
#define SWEEP_STEP 3
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SWEEP_STEP 3
#endif
#endif
#ifndef SWEEP_STEP
#define SWEEP_STEP 1
#endif
#define PS 4096u
#define POOL_PAGES 192u
#define META_PAGES 5u


/* ---- damage ----------------------------------------------------------------------------- */

/* Offsets to flip: every byte of every header, extent table, INDX and END,
 * and a spread of payload bytes. */
static size_t sweep_offsets(size_t *offs, size_t cap)
{
	size_t n = 0;

	for (size_t o = 0; o < recs[0].off + recs[0].len && n < cap; o++)
		offs[n++] = o; /* magic, HEAD, region table */
	for (unsigned i = 1; i < nrecs; i++) {
		const struct rec *x = &recs[i];
		size_t fixed = x->len, step = 1;

		if (x->type == USNAP_REC_CHNK) {
			struct usnap_chunk ch;
			memcpy(&ch, file + x->off + sizeof(struct usnap_rec_hdr), sizeof(ch));
			fixed = sizeof(struct usnap_rec_hdr) + sizeof(ch) + ch.nextents * sizeof(struct usnap_extent);
			/* all header bytes of the first chunks; a sample of the others */
			step = i < 6 ? 1 : 7;
		} else if (x->type == USNAP_REC_INDX) {
			step = x->len > 600 ? 3 : 1;
		}
		for (size_t o = 0; o < fixed && n < cap; o += step)
			offs[n++] = x->off + o;
		for (size_t o = fixed; o < x->len && n < cap; o += (x->len - fixed) / 5 + 1)
			offs[n++] = x->off + o; /* payload: start, middle, ... */
		if (x->len > fixed && n < cap)
			offs[n++] = x->off + x->len - 1; /* last payload or padding byte */
	}
	return n;
}

START_TEST(corruption_sweep)
{
	static size_t offs[20000];
	const char *path = put_file("flip", file, file_len);
	size_t n = sweep_offsets(offs, sizeof(offs) / sizeof(offs[0]));
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	char what[64];

	ck_assert(fd >= 0);
	printf("corruption_sweep: %zu offsets in a %zu-byte file of %u records%s\n", n, file_len, nrecs,
	       SWEEP_STEP > 1 ? " (TSan: every 3rd)" : "");
	for (size_t i = 0; i < n; i += SWEEP_STEP) {
		uint8_t b = file[offs[i]] ^ (uint8_t)(1u << (i % 8));

		ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)offs[i]), 1);
		snprintf(what, sizeof(what), "byte %zu flipped", offs[i]);
		check_damaged(path, what);
		ck_assert_int_eq(pwrite(fd, file + offs[i], 1, (off_t)offs[i]), 1);
	}
	close(fd);
}
END_TEST

START_TEST(truncation)
{
	const struct rec *chnk = &recs[1], *indx = &recs[nrecs - 2];
	size_t cuts[] = {
		0, 1, 7, 8, 12, 24, recs[0].off + recs[0].len / 2, recs[0].off + recs[0].len - 1,
		recs[0].off + recs[0].len, chnk->off + 8, chnk->off + 40, chnk->off + chnk->len / 2,
		chnk->off + chnk->len, recs[nrecs / 2].off, indx->off, indx->off + 1, indx->off + indx->len / 2,
		file_len - USNAP_END_LEN, file_len - USNAP_END_LEN + 16, file_len - 8, file_len - 1,
	};
	char what[64];

	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		const char *path = put_file("cut", file, cuts[i]);
		uffdsnap_info_t info = { .size = sizeof(info) };
		uffdsnap_reader_t *r;
		uint8_t buf[16];
		struct feeder f;
		int rc, rfd;

		snprintf(what, sizeof(what), "cut at %zu", cuts[i]);
		rc = uffdsnap_reader_open(&r, path);
		if (rc) {
			ck_assert_msg(rc == -ENODATA || rc == -EBADMSG, "%s: open: %d %s", what, rc,
				      uffdsnap_last_error());
		} else {
			ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
			ck_assert_msg(!info.complete && *info.reason, "%s: opened as complete", what);
			ck_assert_int_eq(uffdsnap_reader_read(r, 0, 0, buf, sizeof(buf)), -ENODATA);
			ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 0, -1), -ENODATA);
			rc = uffdsnap_reader_verify(r);
			ck_assert_msg(rc == -ENODATA, "%s: verify: %d %s", what, rc, uffdsnap_reader_error(r));
			ck_assert_msg(strstr(uffdsnap_reader_error(r), "truncated"), "%s: %s", what,
				      uffdsnap_reader_error(r));
			uffdsnap_reader_free(r);
		}
		/* the same bytes as a stream */
		rfd = feed_start(&f, file, cuts[i]);
		rc = uffdsnap_reader_open_fd(&r, rfd);
		if (!rc) {
			rc = uffdsnap_reader_verify(r);
			ck_assert_msg(rc == -ENODATA, "%s as a stream: verify: %d %s", what, rc,
				      uffdsnap_reader_error(r));
			uffdsnap_reader_free(r);
		} else {
			ck_assert_msg(rc == -ENODATA, "%s as a stream: open: %d", what, rc);
		}
		feed_end(&f, rfd);
	}
}
END_TEST

/* ---- hostile fields with valid checksums ---------------------------------------------------- */

/*
 * Patch `size` bytes at `field` (offset inside the record of `type`) with v,
 * re-seal the record's CRC unless told not to, and require a rejection that
 * is not a checksum mismatch: the range checks must catch it.
 */
static void hostile(uint32_t type, size_t field, uint64_t v, size_t size, bool reseal, int want)
{
	const struct rec *x = find_rec(type);
	uint8_t *copy = malloc(file_len);
	struct usnap_rec_hdr *h = (struct usnap_rec_hdr *)(copy + x->off);
	const char *msg, *path;
	char what[96];

	memcpy(copy, file, file_len);
	memcpy(copy + x->off + field, &v, size);
	if (reseal)
		h->crc = usnap_rec_crc(h, x->len);
	path = put_file("hostile", copy, file_len);
	snprintf(what, sizeof(what), "record 0x%08x field +%zu = 0x%llx", type, field, (unsigned long long)v);
	msg = check_damaged(path, what);
	ck_assert_msg(!strstr(msg, "checksum"), "%s: rejected by the checksum, not a range check: %s", what, msg);
	if (want) {
		uffdsnap_reader_t *r;
		int rc = uffdsnap_reader_open(&r, path);
		if (!rc) {
			rc = uffdsnap_reader_verify(r);
			uffdsnap_reader_free(r);
		}
		ck_assert_msg(rc == want, "%s: %d, expected %d (%s)", what, rc, want, msg);
	}
	printf("  %-48s -> %s\n", what, msg);
	free(copy);
}

/*
 * A compressed chunk whose zstd payload is damaged but whose record checksum
 * was recomputed: only zstd can tell (a corrupt block, or its own frame
 * checksum), and every reader, including eager restore decompressing in
 * place, must say so rather than return or place wrong pages.
 */
START_TEST(zstd_payload_resealed)
{
	const struct rec *x = NULL;
	struct usnap_chunk ch;
	size_t payload;

	for (unsigned i = 0; i < nrecs && !x; i++) {
		if (recs[i].type != USNAP_REC_CHNK)
			continue;
		memcpy(&ch, file + recs[i].off + HDR, sizeof(ch));
		if (ch.flags & USNAP_CHNK_ZSTD)
			x = &recs[i];
	}
	ck_assert_msg(x != NULL, "no compressed chunk in the test snapshot");
	payload = x->off + HDR + sizeof(ch) + ch.nextents * sizeof(struct usnap_extent);
	/* the frame header, a block in the middle, the frame's own checksum */
	const size_t where[] = { 6, ch.stored_len / 2, ch.stored_len - 2 };
	for (unsigned k = 0; k < 3; k++) {
		size_t at = payload + where[k];
		uint8_t *copy = malloc(file_len);
		struct usnap_rec_hdr *h = (struct usnap_rec_hdr *)(copy + x->off);
		char what[96];
		const char *msg;

		memcpy(copy, file, file_len);
		copy[at] ^= 0x5a;
		h->crc = usnap_rec_crc(h, x->len);
		snprintf(what, sizeof(what), "zstd payload byte +%zu of %llu flipped, re-sealed", at - payload,
			 (unsigned long long)ch.stored_len);
		msg = check_damaged(put_file("zstd", copy, file_len), what);
		printf("  %-48s -> %s\n", what, msg);
		free(copy);
	}
}
END_TEST

START_TEST(hostile_fields)
{
	const size_t reg0 = HDR + sizeof(struct usnap_head);
	const size_t ext0 = HDR + sizeof(struct usnap_chunk);
	const size_t ent0 = HDR + sizeof(struct usnap_index_hdr);
	uint64_t first_chunk_raw;

	memcpy(&first_chunk_raw, file + find_rec(USNAP_REC_CHNK)->off + F(struct usnap_chunk, raw_len), 8);

	/* lengths no checksum could be computed over: the range check must come first */
	hostile(USNAP_REC_HEAD, offsetof(struct usnap_rec_hdr, len), 1ull << 63, 8, false, -EBADMSG);
	hostile(USNAP_REC_CHNK, offsetof(struct usnap_rec_hdr, len), 1ull << 63, 8, false, -EBADMSG);
	hostile(USNAP_REC_CHNK, offsetof(struct usnap_rec_hdr, len), UINT64_MAX - 7, 8, false, -EBADMSG);
	hostile(USNAP_REC_INDX, offsetof(struct usnap_rec_hdr, len), 1ull << 62, 8, false, -EBADMSG);

	hostile(USNAP_REC_HEAD, F(struct usnap_head, version), 3, 4, true, -EPROTONOSUPPORT);
	/* a version 2 HEAD without the DELTA flag, or a full one with it, is corrupt */
	hostile(USNAP_REC_HEAD, F(struct usnap_head, version), 2, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, nregions), 1u << 31, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, nregions), 0, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, nregions), 3, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, page_size), 3, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, page_size), 1u << 31, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, page_size), 8192, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, F(struct usnap_head, flags), 1, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, length), 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, length), 0, 8, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, length), 100, 8, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, length), 2ull * POOL_PAGES * PS, 8, true,
		-EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, name_len), UINT32_MAX, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, name_len), 0, 4, true, -EBADMSG);
	hostile(USNAP_REC_HEAD, reg0 + offsetof(struct usnap_region, name_len), 256, 4, true, -EBADMSG);
	/* region 1 "meta" renamed "pool": two regions of one name */
	hostile(USNAP_REC_HEAD, reg0 + 2 * sizeof(struct usnap_region) + 8, 0x6c6f6f70, 4, true, -EBADMSG);

	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, nextents), UINT32_MAX, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, nextents), 0, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, raw_len), 1ull << 62, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, raw_len), first_chunk_raw + PS, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, stored_len), 1ull << 62, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, stored_len), 1, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, region), 99, 4, true, -EBADMSG);
	{
		/* the other region, whichever the first chunk belongs to (it depends
		 * on which chunk the engine finished first) */
		uint32_t reg;
		memcpy(&reg, file + find_rec(USNAP_REC_CHNK)->off + F(struct usnap_chunk, region), 4);
		hostile(USNAP_REC_CHNK, F(struct usnap_chunk, region), 1 - reg, 4, true, -EBADMSG);
	}
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, flags), 0x80, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, F(struct usnap_chunk, reserved), 1, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, ext0 + offsetof(struct usnap_extent, first_page), 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, ext0 + offsetof(struct usnap_extent, first_page), POOL_PAGES, 8, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, ext0 + offsetof(struct usnap_extent, npages), 0, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, ext0 + offsetof(struct usnap_extent, npages), UINT32_MAX, 4, true, -EBADMSG);
	hostile(USNAP_REC_CHNK, ext0 + offsetof(struct usnap_extent, kind), 7, 4, true, -EBADMSG);

	hostile(USNAP_REC_INDX, HDR, 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_INDX, HDR, 1u << 31, 8, true, -EBADMSG);
	hostile(USNAP_REC_INDX, HDR, 0, 8, true, -EBADMSG);
	hostile(USNAP_REC_INDX, ent0 + offsetof(struct usnap_index_ent, offset), 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_INDX, ent0 + offsetof(struct usnap_index_ent, offset), 16, 8, true, -EBADMSG);
	hostile(USNAP_REC_INDX, ent0 + offsetof(struct usnap_index_ent, nextents), UINT32_MAX, 4, true, -EBADMSG);
	hostile(USNAP_REC_INDX, ent0 + offsetof(struct usnap_index_ent, region), 99, 4, true, -EBADMSG);
	hostile(USNAP_REC_INDX, ent0 + offsetof(struct usnap_index_ent, end_page), 1ull << 62, 8, true, -EBADMSG);

	hostile(USNAP_REC_END, F(struct usnap_end, index_offset), 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_END, F(struct usnap_end, index_offset), 8, 8, true, -EBADMSG);
	hostile(USNAP_REC_END, F(struct usnap_end, chunks), 1ull << 63, 8, true, -EBADMSG);
	hostile(USNAP_REC_END, F(struct usnap_end, pages_data), 1ull << 62, 8, true, -EBADMSG);
	hostile(USNAP_REC_END, F(struct usnap_end, bytes_raw), 12345, 8, true, -EBADMSG);
	hostile(USNAP_REC_END, F(struct usnap_end, status), (uint32_t)-ENOSPC, 4, true, -ENODATA);
	hostile(USNAP_REC_END, F(struct usnap_end, snap_id), 0x1234, 8, true, -EBADMSG);
}
END_TEST

int main(int argc, char **argv)
{
	const TTest *const none[] = { NULL };
	const TTest *const snap[] = { corruption_sweep, truncation, hostile_fields, zstd_payload_resealed, NULL };

	return reader_fixture_run(argc, argv, "test-reader-damage", none, "damage", snap);
}
