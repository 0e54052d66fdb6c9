/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fixture of the reader tests (test-reader.c, test-reader-damage.c): one
 * real snapshot file taken by the engine through the public API in a helper
 * process (regions "pool", POOL_PAGES of random, zero, never-written and
 * compressible pages, and "meta", META_PAGES random), its bytes and records,
 * the regions' contents at the instant, and the helpers both programs use.
 *
 * White-box: lib/format.h, and the static library for usnap_crc32c() /
 * usnap_rec_crc(), to patch fields and re-seal records.
 */
#ifndef USNAP_READER_FIXTURE_H
#define USNAP_READER_FIXTURE_H

#include <check.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "helpers.h"
#include "format.h"

#define SKIP T_SKIP
#define PS 4096u
#define POOL_PAGES 192u
#define META_PAGES 5u
#define HDR sizeof(struct usnap_rec_hdr)
#define F(type, member) (HDR + offsetof(type, member))

extern const char *self;           /* this program, for helper() */
extern char dir[PATH_MAX];         /* a temporary directory the files go to */
extern char snap_path[PATH_MAX + 32];
extern uint8_t *file;              /* the snapshot's bytes */
extern size_t file_len;
extern uint8_t *expect[2];         /* region contents at the instant */
extern const char *const names[2];
extern const size_t lens[2];

/* Record offsets of the valid file, walked with format.h. */
struct rec {
	size_t off;
	uint32_t type;
	uint64_t len;
};
extern struct rec recs[4096];
extern unsigned nrecs;

void fill_random(uint8_t *p, size_t len, uint64_t seed);
/* Write all of buf; gives up quietly when the reader went away. */
void write_all(int fd, const void *buf, size_t len);
/* Write buf to the file `name` in dir; returns its path (a static buffer), NULL on error. */
const char *save(const char *name, const void *buf, size_t len);
/* save(), failing the test on an error. */
const char *put_file(const char *name, const void *buf, size_t len);
bool rc_in(int rc, const int *ok, unsigned n);

/* Feed bytes to a pipe from a thread, so a reader can consume them as a stream. */
struct feeder {
	pthread_t t;
	int fd;
	const uint8_t *buf;
	size_t len;
};

/* Start feeding; returns the read end. */
int feed_start(struct feeder *f, const uint8_t *buf, size_t len);
/* Close the read end (a writer still blocked gets EPIPE) and join. */
void feed_end(struct feeder *f, int rfd);

/* A damaged snapshot at path: open or verify must fail with a reader errno,
 * and read() may succeed only with the right bytes. Returns the message of
 * the failure that rejected the file (static buffer). */
const char *check_damaged(const char *path, const char *what);
/* The first record of `type` in the valid file. */
const struct rec *find_rec(uint32_t type);
/* Run this program again as a helper: `mode` "--snapshot" or "--stream" (to out_fd). */
pid_t helper(const char *mode, int out_fd);

/* main() of the program `name` ("test-..."): its suite is the cases `plain`
 * (test case "crc32c"), then, once there is a snapshot, the cases `snap`
 * (test case snap_name); both lists NULL-terminated. */
int reader_fixture_run(int argc, char **argv, const char *name, const TTest *const *plain, const char *snap_name,
		       const TTest *const *snap);

#endif
