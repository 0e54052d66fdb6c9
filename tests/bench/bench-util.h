/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The small helpers restore-bench and chain-bench share: the clock, a
 * seeded generator, and the exit on a failed step. */
#ifndef USNAP_BENCH_UTIL_H
#define USNAP_BENCH_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MiB (1024ull * 1024)
#define PAGE 4096ull

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* "PROGRAM: what: errno text: detail", exit 1 */
static inline void die(const char *what, int err, const char *detail)
{
	fprintf(stderr, "%s: %s: %s%s%s\n", program_invocation_short_name, what, strerror(err < 0 ? -err : err),
		detail ? ": " : "", detail ? detail : "");
	exit(1);
}

/* splitmix64 */
static inline uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

#endif
