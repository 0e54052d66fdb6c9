/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, the oracle of the prefix rule: sequence writers whose
 * updates tell whether a snapshot is one instant (see helpers.h).
 */

#include "helpers.h"

/* ---- the prefix rule ---------------------------------------------------------- */

static inline uint64_t seq_nslots(const struct usnap_seq *q)
{
	return (uint64_t)q->pages * q->slots_per_page;
}

static inline size_t seq_offset(const struct usnap_seq *q, unsigned wr, uint64_t j)
{
	return ((size_t)wr * q->pages + (size_t)(j % q->pages)) * usnap_page + (size_t)(j / q->pages) * 8;
}

size_t usnap_seq_region_bytes(const struct usnap_seq *q)
{
	return (size_t)q->nwriters * q->pages * usnap_page;
}

void usnap_seq_writer(struct usnap_writers *w, unsigned idx)
{
	const struct usnap_seq *q = w->arg;
	uint64_t n = seq_nslots(q);

	for (uint64_t i = 1; !atomic_load_explicit(&w->stop, memory_order_relaxed); i++) {
		uint64_t s = i - 1;
		_Atomic uint64_t *slot = (_Atomic uint64_t *)(q->base[s & 1] + seq_offset(q, idx, (s >> 1) % n));
		atomic_store_explicit(slot, i, memory_order_relaxed);
		atomic_store_explicit(&w->progress[idx], i, memory_order_relaxed);
	}
}

uint64_t usnap_seq_check(const struct usnap_seq *q, uint8_t *const snap[2], unsigned wr, uint64_t last)
{
	uint64_t n = seq_nslots(q), k = 0, bad = 0;
	char first[256] = "";

	/* k: the highest write visible; every value must be one this slot received */
	/* j = s * pages + p: walk page by page, slot by slot (cache friendly) */
	for (unsigned r = 0; r < 2; r++) {
		for (uint64_t jj = 0; jj < n; jj++) {
			uint64_t j = (jj % q->slots_per_page) * q->pages + jj / q->slots_per_page;
			uint64_t v = *(const uint64_t *)(snap[r] + seq_offset(q, wr, j));
			if (!v)
				continue;
			usnap_assert_msg(v <= last && ((v - 1) & 1) == r && ((v - 1) >> 1) % n == j,
				      "writer %u region %u slot %llu holds %llu: never written there (last write %llu)",
				      wr, r, (unsigned long long)j, (unsigned long long)v, (unsigned long long)last);
			if (v > k)
				k = v;
		}
	}
	/* every slot must hold the last write to it with seq <= k */
	for (unsigned r = 0; r < 2; r++) {
		for (uint64_t jj = 0; jj < n; jj++) {
			uint64_t j = (jj % q->slots_per_page) * q->pages + jj / q->slots_per_page;
			uint64_t v = *(const uint64_t *)(snap[r] + seq_offset(q, wr, j)), want = 0;
			if (k >= 1 + r && (k - 1 - r) / 2 >= j) {
				uint64_t t = (k - 1 - r) / 2;
				uint64_t m = (t - j) / n;
				want = 2 * (j + n * m) + r + 1;
			}
			if (v != want) {
				if (!bad++)
					snprintf(first, sizeof(first), "region %u slot %llu holds %llu, a prefix ending at "
						 "write %llu needs %llu", r, (unsigned long long)j, (unsigned long long)v,
						 (unsigned long long)k, (unsigned long long)want);
			}
		}
	}
	ck_assert_msg(bad == 0, "writer %u: the writes visible are not a prefix of its program order: %llu slots "
		      "wrong; first: %s", wr, (unsigned long long)bad, first);
	return k;
}
