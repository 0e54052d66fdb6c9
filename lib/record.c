/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Building the records of the format (format.h, docs/format.md) that the
 * engine's I/O stage (sink.c) and the merge (merge.c) both write: the header
 * and checksum of any record, HEAD with its region table, INDX and END. CHNK
 * bodies differ (compress.c scatters its payload, merge.c copies it), their
 * header and checksum do not.
 */
#include <string.h>

#include "format.h"

void usnap_rec_seal(void *rec, uint32_t type, uint64_t len)
{
	struct usnap_rec_hdr h = { .type = type, .len = len };

	/* the checksum covers the header with crc = 0: header first */
	memcpy(rec, &h, sizeof(h));
	h.crc = usnap_rec_crc(rec, len);
	memcpy(rec, &h, sizeof(h));
}

size_t usnap_head_rec_len(const struct usnap_head *hd, usnap_region_fn *region, void *ctx)
{
	size_t len = sizeof(struct usnap_rec_hdr) + sizeof(*hd) +
		     (hd->flags & USNAP_HEAD_DELTA ? sizeof(struct usnap_head_delta) : 0);

	for (unsigned i = 0; i < hd->nregions; i++) {
		const char *name;
		uint64_t length;

		region(ctx, i, &name, &length);
		len += sizeof(struct usnap_region) + usnap_pad8(strlen(name));
	}
	return len;
}

void usnap_head_rec_put(uint8_t *rec, size_t len, const struct usnap_head *hd, const struct usnap_head_delta *dh,
			usnap_region_fn *region, void *ctx)
{
	uint8_t *p = rec + sizeof(struct usnap_rec_hdr);

	memset(rec, 0, len); /* names' padding */
	memcpy(p, hd, sizeof(*hd));
	p += sizeof(*hd);
	if (hd->flags & USNAP_HEAD_DELTA) {
		memcpy(p, dh, sizeof(*dh));
		p += sizeof(*dh);
	}
	for (unsigned i = 0; i < hd->nregions; i++) {
		struct usnap_region e = { 0 };
		const char *name;

		region(ctx, i, &name, &e.length);
		e.name_len = (uint32_t)strlen(name);
		memcpy(p, &e, sizeof(e));
		memcpy(p + sizeof(e), name, e.name_len);
		p += sizeof(e) + usnap_pad8(e.name_len);
	}
	usnap_rec_seal(rec, USNAP_REC_HEAD, len);
}

size_t usnap_index_rec_put(uint8_t *rec, const struct usnap_index_ent *ent, uint64_t n)
{
	struct usnap_index_hdr ih = { .count = n };
	size_t len = usnap_index_rec_len(n);

	memcpy(rec + sizeof(struct usnap_rec_hdr), &ih, sizeof(ih));
	if (n)
		memcpy(rec + sizeof(struct usnap_rec_hdr) + sizeof(ih), ent, n * sizeof(*ent));
	usnap_rec_seal(rec, USNAP_REC_INDX, len);
	return len;
}

void usnap_end_rec_put(uint8_t *rec, const struct usnap_end *e)
{
	memcpy(rec + sizeof(struct usnap_rec_hdr), e, sizeof(*e));
	usnap_rec_seal(rec, USNAP_REC_END, USNAP_END_LEN);
}
