/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every
 * record in a snapshot: usnap_crc32c() and usnap_rec_crc().
 *
 * x86-64 CPUs with SSE4.2 have a crc32 instruction with a latency of three
 * cycles and a throughput of one per cycle, so long buffers are cut into three
 * interleaved streams whose CRCs are combined with a table-driven "append n
 * zero bytes" operator (the method of Mark Adler's crc32c.c). Everything else
 * uses slicing-by-8 tables. The implementation is picked, and its tables are
 * built, once on first use.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "format.h"

#define POLY 0x82F63B78u

typedef uint32_t crc_fn(uint32_t crc, const uint8_t *p, size_t len);

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v)); /* unaligned-safe; one mov on x86 */
	return v;
}

/* ---- slicing-by-8 ------------------------------------------------------------ */

static uint32_t sw_table[8][256];

static void sw_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
		sw_table[0][n] = c;
	}
	for (uint32_t n = 0; n < 256; n++)
		for (int k = 1; k < 8; k++)
			sw_table[k][n] = (sw_table[k - 1][n] >> 8) ^ sw_table[0][sw_table[k - 1][n] & 0xff];
}

/* crc is the raw register here (no pre/post inversion) */
static uint32_t sw_crc(uint32_t crc, const uint8_t *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xff];
		len--;
	}
	for (; len >= 8; p += 8, len -= 8) {
		uint64_t w = load64(p) ^ crc;
		crc = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
		      sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
		      sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
		      sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
	}
	while (len--)
		crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xff];
	return crc;
}

/* ---- SSE4.2 ------------------------------------------------------------------ */

#if defined(__x86_64__)
#include <nmmintrin.h>

#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

/* shift_x[k][b]: register value b << 8k advanced over x zero bytes */
static uint32_t shift_long[4][256], shift_short[4][256];

__attribute__((target("sse4.2"))) static uint32_t hw_zeros(uint32_t crc, size_t len)
{
	uint64_t c = crc;

	for (size_t i = 0; i < len; i += 8)
		c = _mm_crc32_u64(c, 0);
	return (uint32_t)c;
}

/* The operator is linear: build each table from its 8 single-bit images. */
__attribute__((target("sse4.2"))) static void hw_shift_init(uint32_t t[4][256], size_t len)
{
	for (int k = 0; k < 4; k++) {
		t[k][0] = 0;
		for (uint32_t b = 1; b < 256; b++) {
			uint32_t low = b & -b;
			t[k][b] = b == low ? hw_zeros(b << (8 * k), len) : t[k][low] ^ t[k][b ^ low];
		}
	}
}

static inline uint32_t shift(uint32_t t[4][256], uint32_t crc)
{
	return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
}

/* Three independent streams of `block` bytes each keep the crc32 unit busy. */
__attribute__((target("sse4.2"))) static inline const uint8_t *
hw_triple(uint64_t *crc, const uint8_t *p, size_t block, uint32_t t[4][256])
{
	uint64_t c0 = *crc, c1 = 0, c2 = 0;
	const uint8_t *end = p + block;

	do {
		c0 = _mm_crc32_u64(c0, load64(p));
		c1 = _mm_crc32_u64(c1, load64(p + block));
		c2 = _mm_crc32_u64(c2, load64(p + 2 * block));
		p += 8;
	} while (p < end);
	c0 = shift(t, (uint32_t)c0) ^ c1;
	*crc = shift(t, (uint32_t)c0) ^ c2;
	return p + 2 * block;
}

__attribute__((target("sse4.2"))) static uint32_t hw_crc(uint32_t crc32, const uint8_t *p, size_t len)
{
	uint64_t crc = crc32;

	while (len && ((uintptr_t)p & 7)) {
		crc = _mm_crc32_u8((uint32_t)crc, *p++);
		len--;
	}
	for (; len >= 3 * LONG_BLOCK; len -= 3 * LONG_BLOCK)
		p = hw_triple(&crc, p, LONG_BLOCK, shift_long);
	for (; len >= 3 * SHORT_BLOCK; len -= 3 * SHORT_BLOCK)
		p = hw_triple(&crc, p, SHORT_BLOCK, shift_short);
	for (; len >= 8; p += 8, len -= 8)
		crc = _mm_crc32_u64(crc, load64(p));
	while (len--)
		crc = _mm_crc32_u8((uint32_t)crc, *p++);
	return (uint32_t)crc;
}
#endif

/* ---- dispatch ------------------------------------------------------------------ */

static crc_fn first_crc;
static _Atomic(crc_fn *) crc_impl = first_crc;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_select(void)
{
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("sse4.2")) {
		hw_shift_init(shift_long, LONG_BLOCK);
		hw_shift_init(shift_short, SHORT_BLOCK);
		atomic_store_explicit(&crc_impl, hw_crc, memory_order_release);
		return;
	}
#endif
	sw_init();
	atomic_store_explicit(&crc_impl, sw_crc, memory_order_release);
}

static uint32_t first_crc(uint32_t crc, const uint8_t *p, size_t len)
{
	pthread_once(&crc_once, crc_select);
	return atomic_load_explicit(&crc_impl, memory_order_acquire)(crc, p, len);
}

uint32_t usnap_crc32c(uint32_t crc, const void *buf, size_t len)
{
	/* acquire: a thread that sees the final function also sees its tables */
	crc_fn *fn = atomic_load_explicit(&crc_impl, memory_order_acquire);

	return ~fn(~crc, buf, len);
}

/* len >= sizeof(struct usnap_rec_hdr): callers check that before asking. */
uint32_t usnap_rec_crc(const void *rec, uint64_t len)
{
	static const uint8_t zero_crc[4];
	const uint8_t *p = rec;
	uint32_t crc;

	crc = usnap_crc32c(0, p, offsetof(struct usnap_rec_hdr, crc));
	crc = usnap_crc32c(crc, zero_crc, sizeof(zero_crc));
	return usnap_crc32c(crc, p + 8, (size_t)(len - 8));
}
