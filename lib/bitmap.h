/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Page bitmaps, one bit a page in 64-bit words: plain ones for a map one
 * thread owns (the handler's `copied`), atomic ones for maps that several
 * threads fill (restore's placed pages). Ranges are walked a word at a time.
 */
#ifndef UFFDSNAP_BITMAP_H
#define UFFDSNAP_BITMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>

/*
 * A zeroed map of n bits that costs nothing until bits are set: anonymous
 * memory the kernel zeroes page by page on first touch (an allocator's
 * calloc may clear it all at once: ASan's does). For maps sized by a peer's
 * claim (the migration receiver's). n >= 1; NULL if it cannot be mapped.
 */
static inline void *usnap_bits_map(uint64_t n)
{
	void *p = mmap(NULL, (size_t)((n + 63) / 64 * 8), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static inline void usnap_bits_unmap(void *b, uint64_t n)
{
	if (b)
		munmap(b, (size_t)((n + 63) / 64 * 8));
}

/* The bits of word i / 64 that [p, end) covers, and how many they are. */
static inline uint64_t usnap_bits_mask(uint64_t p, uint64_t end, uint64_t *k)
{
	unsigned b = (unsigned)(p % 64);

	*k = end - p < 64 - b ? end - p : 64 - b;
	return (*k == 64 ? ~0ull : ((1ull << *k) - 1)) << b;
}

static inline bool usnap_bit(const uint64_t *b, uint64_t i)
{
	return b[i / 64] >> (i % 64) & 1;
}

static inline void usnap_bits_set(uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t p = from, k; p < to; p += k)
		b[p / 64] |= usnap_bits_mask(p, to, &k);
}

static inline void usnap_bits_clear(uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t p = from, k; p < to; p += k)
		b[p / 64] &= ~usnap_bits_mask(p, to, &k);
}

/* First index in [from, to) whose bit equals `val`, or `to`. */
static inline uint64_t usnap_bits_find(const uint64_t *b, uint64_t from, uint64_t to, bool val)
{
	uint64_t i = from;

	while (i < to) {
		uint64_t w = val ? b[i / 64] : ~b[i / 64];
		w &= ~0ull << (i % 64);
		if (w) {
			i = (i & ~63ull) + (uint64_t)__builtin_ctzll(w);
			return i < to ? i : to;
		}
		i = (i & ~63ull) + 64;
	}
	return to;
}

static inline bool usnap_abit(_Atomic uint64_t *b, uint64_t i)
{
	return atomic_load_explicit(&b[i / 64], memory_order_relaxed) >> (i % 64) & 1;
}

/* Set [from, to) (relaxed: the bits say nothing about other memory). */
static inline void usnap_abits_or(_Atomic uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t p = from, k; p < to; p += k)
		atomic_fetch_or_explicit(&b[p / 64], usnap_bits_mask(p, to, &k), memory_order_relaxed);
}

/* Clear [from, to) (relaxed, as above). */
static inline void usnap_abits_clear(_Atomic uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t p = from, k; p < to; p += k)
		atomic_fetch_and_explicit(&b[p / 64], ~usnap_bits_mask(p, to, &k), memory_order_relaxed);
}

/* Set [from, to); the first index that was set already, or `to`. */
static inline uint64_t usnap_abits_set(_Atomic uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t p = from, k; p < to; p += k) {
		uint64_t mask = usnap_bits_mask(p, to, &k), old = atomic_fetch_or(&b[p / 64], mask);
		if (old & mask)
			return p / 64 * 64 + (uint64_t)__builtin_ctzll(old & mask);
	}
	return to;
}

#endif
