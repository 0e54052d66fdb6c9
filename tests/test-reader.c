/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The reader and CRC-32C: known-answer CRCs, then real snapshot files taken by
 * the engine through the public API, read back byte for byte, and damaged in
 * every way we can think of (flipped bytes in every part, truncation, hostile
 * lengths and counts with valid checksums, garbage, streams): the reader must
 * fail with -EBADMSG/-ENODATA/-ENOEXEC/-EPROTONOSUPPORT, never crash, never
 * return wrong data.
 *
 * White-box: it includes lib/format.h and links the static library for
 * usnap_crc32c()/usnap_rec_crc(), to patch fields and re-seal records.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uffdsnap.h"
#include "format.h"

#define SKIP 77

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

/* Set up by main() before the runner forks the tests. */
static const char *self;          /* this program, for helper() */
static char dir[PATH_MAX];
static char snap_path[PATH_MAX + 32];
static uint8_t *file;             /* the snapshot's bytes */
static size_t file_len;
static uint8_t *expect[2];        /* region contents at the instant */
static const char *const names[2] = { "pool", "meta" };
static const size_t lens[2] = { POOL_PAGES * PS, META_PAGES * PS };

/* Record offsets of the valid file, walked with format.h. */
struct rec {
	size_t off;
	uint32_t type;
	uint64_t len;
};
static struct rec recs[4096];
static unsigned nrecs;

/* ---- small helpers -------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix(&seed);
		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

static void write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the reader went away: that is what some tests do */
		p += n, len -= (size_t)n;
	}
}

/* Write buf to the file `name` in dir; returns its path (a static buffer), NULL on error. */
static const char *save(const char *name, const void *buf, size_t len)
{
	static char path[PATH_MAX + 64];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return NULL;
	write_all(fd, buf, len);
	close(fd);
	return path;
}

static const char *put_file(const char *name, const void *buf, size_t len)
{
	const char *path = save(name, buf, len);

	ck_assert_msg(path, "%s/%s: %s", dir, name, strerror(errno));
	return path;
}

static bool rc_in(int rc, const int *ok, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (rc == ok[i])
			return true;
	return false;
}

/* Feed bytes to a pipe from a thread, so a reader can consume them as a stream. */
struct feeder {
	pthread_t t;
	int fd;
	const uint8_t *buf;
	size_t len;
};

static void *feed_main(void *arg)
{
	struct feeder *f = arg;

	write_all(f->fd, f->buf, f->len);
	close(f->fd);
	return NULL;
}

/* Start feeding; returns the read end. */
static int feed_start(struct feeder *f, const uint8_t *buf, size_t len)
{
	int p[2];

	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	*f = (struct feeder){ .fd = p[1], .buf = buf, .len = len };
	ck_assert_int_eq(pthread_create(&f->t, NULL, feed_main, f), 0);
	return p[0];
}

static void feed_end(struct feeder *f, int rfd)
{
	close(rfd); /* a writer still blocked gets EPIPE */
	pthread_join(f->t, NULL);
}

/* Collect everything written to a pipe. */
struct sink {
	pthread_t t;
	int fd;
	uint8_t *buf;
	size_t len, cap;
};

static void *sink_main(void *arg)
{
	struct sink *k = arg;
	ssize_t n;

	for (;;) {
		if (k->len == k->cap)
			k->buf = realloc(k->buf, k->cap = k->cap * 2 + 65536);
		n = read(k->fd, k->buf + k->len, k->cap - k->len);
		if (n <= 0)
			break;
		k->len += (size_t)n;
	}
	close(k->fd);
	return NULL;
}

/* ---- damage checks ------------------------------------------------------------ */

/*
 * A damaged snapshot at path: open or verify must fail with a reader errno,
 * and read() may succeed only with the right bytes. Returns the message of
 * the failure that rejected the file (static buffer).
 */
static const char *check_damaged(const char *path, const char *what)
{
	static const int open_ok[] = { -EBADMSG, -ENOEXEC, -EPROTONOSUPPORT, -ENODATA };
	static const int verify_ok[] = { -EBADMSG, -ENODATA };
	static char msg[600];
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;
	int rc = uffdsnap_reader_open(&r, path);

	if (rc) {
		ck_assert_msg(rc_in(rc, open_ok, 4), "%s: open: %d %s", what, rc, uffdsnap_last_error());
		snprintf(msg, sizeof(msg), "%s", uffdsnap_last_error());
		ck_assert_msg(*msg, "%s: open failed (%d) without saying why", what, rc);
		return msg;
	}
	ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
	rc = uffdsnap_reader_verify(r);
	ck_assert_msg(rc_in(rc, verify_ok, 2), "%s: verify returned %d (%s)", what, rc, uffdsnap_reader_error(r));
	snprintf(msg, sizeof(msg), "%s", uffdsnap_reader_error(r));
	ck_assert_msg(*msg, "%s: verify failed (%d) without saying why", what, rc);
	for (unsigned id = 0; id < info.nregions && id < 2; id++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		uint8_t *buf;

		if (uffdsnap_reader_region(r, id, &ri) || ri.length != lens[id])
			continue;
		buf = aligned_alloc(PS, ri.length);
		rc = uffdsnap_reader_read(r, id, 0, buf, ri.length);
		if (rc == 0)
			ck_assert_msg(!memcmp(buf, expect[id], ri.length), "%s: read() of region %u returned wrong "
				      "data without an error", what, id);
		else
			ck_assert_msg(rc == -EBADMSG || rc == -ENODATA, "%s: read: %d %s", what, rc,
				      uffdsnap_reader_error(r));
		/* eager restore decompresses in place (reader.c usnap_reader_chunk_scatter) */
		rc = uffdsnap_restore_into(r, id, buf, ri.length, NULL, NULL);
		if (rc == 0)
			ck_assert_msg(!memcmp(buf, expect[id], ri.length), "%s: restore_into() of region %u wrote "
				      "wrong data without an error", what, id);
		else
			ck_assert_msg(rc == -EBADMSG || rc == -ENODATA, "%s: restore_into: %d %s", what, rc,
				      uffdsnap_last_error());
		free(buf);
	}
	uffdsnap_reader_free(r);
	return msg;
}

/* ---- CRC-32C --------------------------------------------------------------------- */

static uint32_t crc_bitwise(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
	}
	return ~crc;
}

/* RFC 3720 B.4 and the common check value. */
START_TEST(crc32c_known_answers)
{
	uint8_t b[32];

	ck_assert_uint_eq(usnap_crc32c(0, "123456789", 9), 0xE3069283u);
	ck_assert_uint_eq(usnap_crc32c(0, "", 0), 0);
	memset(b, 0, sizeof(b));
	ck_assert_uint_eq(usnap_crc32c(0, b, 32), 0x8A9136AAu);
	memset(b, 0xff, sizeof(b));
	ck_assert_uint_eq(usnap_crc32c(0, b, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	ck_assert_uint_eq(usnap_crc32c(0, b, 32), 0x46DD794Eu);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)(31 - i);
	ck_assert_uint_eq(usnap_crc32c(0, b, 32), 0x113FDB5Cu);
}
END_TEST

/* Every length and alignment path (bytes, words, 3x256 and 3x8192 blocks)
 * against a bitwise reference, and chaining like zlib's crc32. */
START_TEST(crc32c_matches_reference)
{
	const size_t n = 100000;
	uint8_t *b = malloc(n + 64);
	uint64_t seed = 7;

	fill_random(b, n + 64, 42);
	for (int it = 0; it < 400; it++) {
		size_t off = splitmix(&seed) % 64, len = it < 300 ? (size_t)it * 7 % 2000 : splitmix(&seed) % n;
		size_t cut = len ? splitmix(&seed) % len : 0;
		uint32_t want = crc_bitwise(0, b + off, len);

		ck_assert_uint_eq(usnap_crc32c(0, b + off, len), want);
		ck_assert_uint_eq(usnap_crc32c(usnap_crc32c(0, b + off, cut), b + off + cut, len - cut), want);
	}
	free(b);
}
END_TEST

START_TEST(rec_crc_skips_its_field)
{
	uint8_t rec[56], copy[56];

	fill_random(rec, sizeof(rec), 3);
	memcpy(copy, rec, sizeof(rec));
	memset(copy + 4, 0, 4);
	ck_assert_uint_eq(usnap_rec_crc(rec, sizeof(rec)), usnap_crc32c(0, copy, sizeof(copy)));
	rec[4] ^= 0xff; /* the stored crc does not feed itself */
	ck_assert_uint_eq(usnap_rec_crc(rec, sizeof(rec)), usnap_crc32c(0, copy, sizeof(copy)));
}
END_TEST

/* ---- a valid snapshot --------------------------------------------------------------- */

static void read_all(uffdsnap_reader_t *r, unsigned id, uint8_t *buf)
{
	int rc = uffdsnap_reader_read(r, id, 0, buf, lens[id]);

	ck_assert_msg(rc == 0, "read region %u: %d %s", id, rc, uffdsnap_reader_error(r));
}

START_TEST(valid_snapshot_reads_back)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uffdsnap_reader_t *r;
	uint64_t seed = 11, zero_pages = 0;
	uint8_t *buf = malloc(lens[0]);
	struct stat st;
	int rc;

	rc = uffdsnap_reader_open(&r, snap_path);
	ck_assert_msg(rc == 0, "open: %d %s", rc, uffdsnap_last_error());
	rc = uffdsnap_reader_verify(r);
	ck_assert_msg(rc == 0, "verify: %d %s", rc, uffdsnap_reader_error(r));
	ck_assert_str_eq(uffdsnap_reader_error(r), "");
	ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
	ck_assert_uint_eq(info.version, 1);
	ck_assert_uint_eq(info.page_size, PS);
	ck_assert_uint_eq(info.nregions, 2);
	ck_assert_int_eq(info.complete, 1);
	ck_assert_int_eq(info.status, 0);
	ck_assert_str_eq(info.reason, "");
	ck_assert_uint_eq(info.pages_data + info.pages_zero, POOL_PAGES + META_PAGES);
	ck_assert_uint_eq(info.bytes_raw, info.pages_data * PS);
	ck_assert_uint_eq(info.bytes_file, file_len);
	ck_assert_uint_eq(info.chunks, nrecs - 3); /* all but HEAD, INDX, END */
	for (size_t p = 0; p < POOL_PAGES; p++) {
		static const uint8_t zero[PS];
		zero_pages += !memcmp(expect[0] + p * PS, zero, PS);
	}
	ck_assert_uint_ge(info.pages_zero, zero_pages); /* holes and zero pages carry no data */
	for (unsigned id = 0; id < 2; id++) {
		ck_assert_int_eq(uffdsnap_reader_region(r, id, &ri), 0);
		ck_assert_str_eq(ri.name, names[id]);
		ck_assert_uint_eq(ri.length, lens[id]);
		ck_assert_int_eq(uffdsnap_reader_find(r, names[id]), (int)id);
		read_all(r, id, buf);
		ck_assert_msg(!memcmp(buf, expect[id], lens[id]), "region %s differs from memory", names[id]);
	}
	ck_assert_int_eq(uffdsnap_reader_find(r, "nope"), -ENOENT);
	ck_assert_int_eq(uffdsnap_reader_region(r, 2, &ri), -ENOENT);

	/* unaligned pieces, across page and chunk boundaries */
	for (int i = 0; i < 300; i++) {
		uint64_t off = splitmix(&seed) % lens[0], len = splitmix(&seed) % (lens[0] - off + 1);
		if (i % 3 == 0)
			len %= 3 * PS;
		rc = uffdsnap_reader_read(r, 0, off, buf, len);
		ck_assert_msg(rc == 0, "read %llu+%llu: %d %s", (unsigned long long)off, (unsigned long long)len,
			      rc, uffdsnap_reader_error(r));
		ck_assert_msg(!memcmp(buf, expect[0] + off, len), "read %llu+%llu differs",
			      (unsigned long long)off, (unsigned long long)len);
	}
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, lens[0], buf, 0), 0);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, lens[0], buf, 1), -EINVAL);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, 1, buf, lens[0]), -EINVAL);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, UINT64_MAX, buf, 2), -EINVAL);
	ck_assert_int_eq(uffdsnap_reader_read(r, 2, 0, buf, 1), -ENOENT);
	ck_assert(*uffdsnap_reader_error(r));
	/* a second verify of a file works too */
	ck_assert_int_eq(uffdsnap_reader_verify(r), 0);
	uffdsnap_reader_free(r);

	/* the file is what the engine said it wrote */
	ck_assert_int_eq(stat(snap_path, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, file_len);
	free(buf);
}
END_TEST

START_TEST(extract_to_file_and_pipe)
{
	char out[PATH_MAX + 32];
	uffdsnap_reader_t *r;
	struct sink k = { 0 };
	uint8_t *got = malloc(lens[0]);
	int fd, p[2], rc;
	off_t data;

	ck_assert_int_eq(uffdsnap_reader_open(&r, snap_path), 0);
	for (unsigned id = 0; id < 2; id++) {
		snprintf(out, sizeof(out), "%s/extract-%u", dir, id);
		fd = open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		ck_assert(fd >= 0);
		/* old contents must not survive where the region has holes */
		memset(got, 0xee, lens[0]);
		write_all(fd, got, lens[0]);
		rc = uffdsnap_reader_extract_fd(r, id, fd);
		ck_assert_msg(rc == 0, "extract %u: %d %s", id, rc, uffdsnap_reader_error(r));
		ck_assert_int_eq(lseek(fd, 0, SEEK_END), (off_t)lens[id]);
		ck_assert_int_eq(pread(fd, got, lens[id], 0), (ssize_t)lens[id]);
		ck_assert_msg(!memcmp(got, expect[id], lens[id]), "extracted %s differs", names[id]);
		if (id == 0) {
			/* page 2 was never written: it must be a hole, not written zeros */
			data = lseek(fd, 2 * PS, SEEK_DATA);
			ck_assert_msg(data != 2 * PS, "page 2 (a hole) was written as data");
		}
		close(fd);
	}

	/* a pipe gets every byte, zeros included */
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	k.fd = p[0];
	ck_assert_int_eq(pthread_create(&k.t, NULL, sink_main, &k), 0);
	rc = uffdsnap_reader_extract_fd(r, 0, p[1]);
	close(p[1]);
	pthread_join(k.t, NULL);
	ck_assert_msg(rc == 0, "extract to a pipe: %d %s", rc, uffdsnap_reader_error(r));
	ck_assert_uint_eq(k.len, lens[0]);
	ck_assert(!memcmp(k.buf, expect[0], lens[0]));
	ck_assert_int_eq(uffdsnap_reader_extract_fd(r, 9, p[1]), -ENOENT);
	free(k.buf);
	free(got);
	uffdsnap_reader_free(r);
}
END_TEST

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

static const struct rec *find_rec(uint32_t type)
{
	for (unsigned i = 0; i < nrecs; i++)
		if (recs[i].type == type)
			return &recs[i];
	ck_abort_msg("no record of type 0x%08x", type);
	return NULL;
}

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

#define HDR sizeof(struct usnap_rec_hdr)
#define F(type, member) (HDR + offsetof(type, member))

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

START_TEST(failed_snapshot_says_why)
{
	const struct rec *end = find_rec(USNAP_REC_END);
	uint8_t *copy = malloc(file_len);
	struct usnap_end *e = (struct usnap_end *)(copy + end->off + HDR);
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;
	uint8_t buf[8];

	memcpy(copy, file, file_len);
	e->status = -ENOSPC;
	((struct usnap_rec_hdr *)(copy + end->off))->crc = usnap_rec_crc(copy + end->off, end->len);
	ck_assert_int_eq(uffdsnap_reader_open(&r, put_file("failed", copy, file_len)), 0);
	ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
	ck_assert_int_eq(info.complete, 0);
	ck_assert_int_eq(info.status, -ENOSPC);
	ck_assert_msg(strstr(info.reason, strerror(ENOSPC)), "reason: %s", info.reason);
	ck_assert_int_eq(uffdsnap_reader_read(r, 0, 0, buf, sizeof(buf)), -ENODATA);
	ck_assert_int_eq(uffdsnap_reader_verify(r), -ENODATA);
	ck_assert_msg(strstr(uffdsnap_reader_error(r), "failed"), "%s", uffdsnap_reader_error(r));
	uffdsnap_reader_free(r);
	free(copy);
}
END_TEST

START_TEST(garbage_files)
{
	const size_t len = 64 * 1024;
	uint8_t *g = malloc(len);
	uint64_t seed = 99;

	for (int i = 0; i < 60; i++) {
		size_t n = splitmix(&seed) % len;
		fill_random(g, len, (uint64_t)i);
		if (i % 3 == 1)
			memcpy(g, USNAP_MAGIC, USNAP_MAGIC_LEN);
		if (i % 3 == 2) /* a valid prefix, then garbage */
			memcpy(g, file, n < file_len ? n : file_len);
		check_damaged(put_file("garbage", g, n), "garbage");
	}
	free(g);
}
END_TEST

/* ---- streams ------------------------------------------------------------------------------- */

static int verify_stream(const uint8_t *buf, size_t len, uffdsnap_info_t *info)
{
	uffdsnap_reader_t *r;
	struct feeder f;
	uint8_t b[8];
	int rfd = feed_start(&f, buf, len), rc;

	rc = uffdsnap_reader_open_fd(&r, rfd);
	if (!rc) {
		ck_assert_int_eq(uffdsnap_reader_read(r, 0, 0, b, sizeof(b)), -ESPIPE);
		rc = uffdsnap_reader_verify(r);
		if (!rc)
			ck_assert_int_eq(uffdsnap_reader_verify(r), -EINVAL); /* consumed */
		if (info)
			uffdsnap_reader_info(r, info);
		uffdsnap_reader_free(r);
	}
	feed_end(&f, rfd);
	return rc;
}

START_TEST(stream_verify)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uint8_t *copy = malloc(file_len);
	int rc;

	ck_assert_int_eq(verify_stream(file, file_len, &info), 0);
	ck_assert_int_eq(info.complete, 1);
	ck_assert_uint_eq(info.pages_data + info.pages_zero, POOL_PAGES + META_PAGES);
	ck_assert_uint_eq(info.bytes_file, file_len);
	for (unsigned i = 0; i < nrecs; i++) {
		memcpy(copy, file, file_len);
		copy[recs[i].off + recs[i].len / 2] ^= 0x10;
		rc = verify_stream(copy, file_len, NULL);
		ck_assert_msg(rc == -EBADMSG || rc == -EPROTONOSUPPORT, "record %u damaged: %d", i, rc);
	}
	/* trailing bytes after END */
	copy = realloc(copy, file_len + 8);
	memcpy(copy, file, file_len);
	memset(copy + file_len, 0, 8);
	ck_assert_int_eq(verify_stream(copy, file_len + 8, NULL), -EBADMSG);
	free(copy);
}
END_TEST

/* The engine (in a helper process) writes into a pipe while this process
 * verifies the stream from the other end. */
static pid_t helper(const char *mode, int out_fd);

START_TEST(live_stream_verify)
{
	uffdsnap_reader_t *r;
	int p[2], rc, st;
	pid_t pid;

	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	pid = helper("--stream", p[1]);
	close(p[1]);
	rc = uffdsnap_reader_open_fd(&r, p[0]);
	ck_assert_msg(rc == 0, "open_fd: %d %s", rc, uffdsnap_last_error());
	rc = uffdsnap_reader_verify(r);
	ck_assert_msg(rc == 0, "live stream: %d %s", rc, uffdsnap_reader_error(r));
	uffdsnap_reader_free(r);
	close(p[0]);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the snapshot process failed: status 0x%x", st);
}
END_TEST

/* ---- setup ------------------------------------------------------------------------------------ */

static int die(const char *what, int rc, const char *detail)
{
	fprintf(stderr, "test-reader: %s: %d %s (%s)\n", what, rc, uffdsnap_strerror(rc), detail);
	return -1;
}

/* A mixed pool: random, zero-written, never-written (holes) and compressible
 * pages, so chunks have DATA and ZERO extents, zstd and raw payloads. */
static void fill_pool(uint8_t *m)
{
	for (size_t i = 0; i < POOL_PAGES; i++) {
		uint8_t *p = m + i * PS;
		switch (i % 6) {
		case 0:
		case 4:
			fill_random(p, PS, i);
			break;
		case 1:
			memset(p, 0, PS); /* populated, all zero */
			break;
		case 3:
			for (size_t k = 0; k < PS; k += 32)
				snprintf((char *)p + k, 32, "page %zu line %zu ........", i, k / 32);
			break;
		default:
			break; /* a hole */
		}
	}
}

static uint8_t *map_memfd(const char *name, size_t len, int *fd)
{
	uint8_t *m;

	*fd = memfd_create(name, MFD_CLOEXEC);
	if (*fd < 0 || ftruncate(*fd, (off_t)len))
		return NULL;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	return m == MAP_FAILED ? NULL : m;
}

/* The expected image: read with pread so holes are not populated. */
static uint8_t *image(int fd, size_t len)
{
	uint8_t *b = malloc(len);

	if (b && pread(fd, b, len, 0) != (ssize_t)len) {
		free(b);
		return NULL;
	}
	return b;
}

static int load_file(void)
{
	int fd = open(snap_path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0 || fstat(fd, &st) || !(file = malloc((size_t)st.st_size)) ||
	    pread(fd, file, (size_t)st.st_size, 0) != st.st_size)
		return die("reading the snapshot", -errno, snap_path);
	close(fd);
	file_len = (size_t)st.st_size;
	for (size_t off = USNAP_MAGIC_LEN; off + sizeof(struct usnap_rec_hdr) <= file_len && nrecs < 4096;) {
		struct usnap_rec_hdr h;
		memcpy(&h, file + off, sizeof(h));
		recs[nrecs++] = (struct rec){ .off = off, .type = h.type, .len = h.len };
		off += h.len;
	}
	if (nrecs < 4 || recs[nrecs - 1].type != USNAP_REC_END || recs[nrecs - 2].type != USNAP_REC_INDX)
		return die("walking the snapshot's records", -EBADMSG, "unexpected layout");
	return 0;
}

static int make_snapshot(uffdsnap_t *ctx)
{
	uint8_t *m[2];
	int fd[2], rc;
	uffdsnap_snap_t *s;

	for (int i = 0; i < 2; i++)
		if (!(m[i] = map_memfd(names[i], lens[i], &fd[i])))
			return die("memfd", -errno, names[i]);
	fill_pool(m[0]);
	fill_random(m[1], lens[1], 77);
	for (int i = 0; i < 2; i++) {
		if (!(expect[i] = image(fd[i], lens[i])))
			return die("copying a region", -errno, names[i]);
		if (!save(names[i], expect[i], lens[i]))
			return die("saving a region image", -errno, names[i]);
		if ((rc = uffdsnap_add_region(ctx, names[i], m[i], lens[i])) != i)
			return die("add_region", rc, uffdsnap_last_error());
	}
	if ((rc = uffdsnap_begin_file(ctx, snap_path, &s)))
		return die("begin", rc, uffdsnap_last_error());
	/* writes after the instant: fault chunks, out of page order */
	for (size_t p = 100; p < 110; p++)
		memset(m[0] + p * PS, 0xab, 100);
	m[1][PS * 3] ^= 1;
	rc = uffdsnap_wait(s);
	if (rc)
		return die("wait", rc, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx); /* before the regions go away */
	for (int i = 0; i < 2; i++) {
		munmap(m[i], lens[i]);
		close(fd[i]);
	}
	return 0;
}

/* A live snapshot of a small region into out_fd, with a fault while it runs. */
static int stream_snapshot(int out_fd)
{
	const size_t len = 64 * PS;
	uffdsnap_sink_t *sink;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	int fd, rc;
	uint8_t *m = map_memfd("live", len, &fd);

	if (!m)
		return die("memfd", -errno, "live");
	fill_random(m, len / 2, 5);
	if ((rc = uffdsnap_new(&ctx, NULL)) || (rc = uffdsnap_add_region(ctx, "live", m, len)) < 0 ||
	    (rc = uffdsnap_sink_fd(&sink, out_fd)) || (rc = uffdsnap_begin(ctx, sink, &s)))
		return die("starting a stream snapshot", rc, uffdsnap_last_error());
	memset(m, 0x77, PS); /* a fault during the snapshot */
	if ((rc = uffdsnap_wait(s)))
		return die("wait", rc, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	return 0;
}

/* The helper process: `test-reader --snapshot DIR` or `--stream` (to stdout). */
static int helper_main(const char *mode, const char *arg)
{
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	int rc;

	if (!strcmp(mode, "--stream"))
		return stream_snapshot(STDOUT_FILENO) ? 1 : 0;
	snprintf(dir, sizeof(dir), "%s", arg);
	snprintf(snap_path, sizeof(snap_path), "%s/valid.snap", dir);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16384; /* many small chunks: a real index, many records to damage */
	rc = uffdsnap_new(&ctx, &o);
	if (rc) {
		printf("SKIP: snapshot tests need userfaultfd (euid %u): uffdsnap_new: %s (%s)\n",
		       (unsigned)geteuid(), uffdsnap_strerror(rc), uffdsnap_last_error());
		return SKIP;
	}
	return make_snapshot(ctx) ? 1 : 0;
}

/*
 * The engine runs in a helper: this program, exec'd again. Valgrind does not
 * follow exec (and would deadlock a thread faulting on protected memory: it
 * runs one thread at a time), and a process that forks after a file snapshot
 * used libuv's thread pool crashes in the child's exit (uv_library_shutdown
 * joins pool threads the child does not have), while Check forks every test.
 */
static pid_t helper(const char *mode, int out_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (out_fd >= 0 && dup2(out_fd, STDOUT_FILENO) < 0)
			_exit(127);
		execl(self, self, mode, dir, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Take the snapshot the tests read; returns 0, SKIP, or 1. */
static int snapshot_in_helper(void)
{
	pid_t pid = helper("--snapshot", -1);
	int st;

	snprintf(snap_path, sizeof(snap_path), "%s/valid.snap", dir);
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return die("the snapshot process", -ECHILD, "it did not exit normally");
	if (WEXITSTATUS(st))
		return WEXITSTATUS(st) == SKIP ? SKIP : 1;
	for (int i = 0; i < 2; i++) {
		char path[PATH_MAX + 32];
		int fd;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		expect[i] = malloc(lens[i]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || pread(fd, expect[i], lens[i], 0) != (ssize_t)lens[i])
			return die("reading the expected image", -errno, path);
		close(fd);
	}
	return load_file();
}

/* Remove what the tests left in dir (one level). */
static void cleanup(void)
{
	static const char *const left[] = { "valid.snap", "pool", "meta", "flip", "cut", "hostile", "garbage", "failed",
					    "extract-0", "extract-1" };
	char path[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, left[i]);
		unlink(path);
	}
	rmdir(dir);
}

int main(int argc, char **argv)
{
	Suite *suite;
	TCase *tc, *ts;
	SRunner *sr;
	int rc, failed;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN); /* streams whose reader gave up get EPIPE */
	if (argc == 3)
		return helper_main(argv[1], argv[2]);
	/* argv[0], not /proc/self/exe: under valgrind that is valgrind */
	self = strchr(argv[0], '/') ? argv[0] : "/proc/self/exe";
	snprintf(dir, sizeof(dir), "/var/tmp/test-reader.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	rc = snapshot_in_helper();
	if (rc == 1) {
		cleanup();
		return 1;
	}

	suite = suite_create("reader");
	tc = tcase_create("crc32c");
	tcase_add_test(tc, crc32c_known_answers);
	tcase_add_test(tc, crc32c_matches_reference);
	tcase_add_test(tc, rec_crc_skips_its_field);
	suite_add_tcase(suite, tc);
	if (!rc) {
		printf("snapshot: %zu bytes, %u records\n", file_len, nrecs);
		ts = tcase_create("snapshots");
		tcase_set_timeout(ts, 120);
		tcase_add_test(ts, valid_snapshot_reads_back);
		tcase_add_test(ts, extract_to_file_and_pipe);
		tcase_add_test(ts, corruption_sweep);
		tcase_add_test(ts, truncation);
		tcase_add_test(ts, hostile_fields);
		tcase_add_test(ts, zstd_payload_resealed);
		tcase_add_test(ts, failed_snapshot_says_why);
		tcase_add_test(ts, garbage_files);
		tcase_add_test(ts, stream_verify);
		tcase_add_test(ts, live_stream_verify);
		suite_add_tcase(suite, ts);
	}

	sr = srunner_create(suite);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	cleanup();
	return failed ? 1 : rc;
}
