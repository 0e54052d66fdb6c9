/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The reader and CRC-32C: known-answer CRCs, then a real snapshot file taken
 * by the engine through the public API (reader-fixture.c) read back byte for
 * byte, extracted, read as a stream (also live, from the engine in another
 * process), and garbage and a failed snapshot's file rejected with a reason.
 * Damage to a valid file (flipped bytes, truncation, hostile fields with
 * valid checksums, zstd payloads): test-reader-damage.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reader-fixture.h"

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
		size_t off = t_splitmix64(&seed) % 64, len = it < 300 ? (size_t)it * 7 % 2000 : t_splitmix64(&seed) % n;
		size_t cut = len ? t_splitmix64(&seed) % len : 0;
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
		uint64_t off = t_splitmix64(&seed) % lens[0], len = t_splitmix64(&seed) % (lens[0] - off + 1);
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
		size_t n = t_splitmix64(&seed) % len;
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

int main(int argc, char **argv)
{
	const TTest *const plain[] = { crc32c_known_answers, crc32c_matches_reference, rec_crc_skips_its_field, NULL };
	const TTest *const snap[] = { valid_snapshot_reads_back, extract_to_file_and_pipe, failed_snapshot_says_why,
				      garbage_files, stream_verify, live_stream_verify, NULL };

	return reader_fixture_run(argc, argv, "test-reader", plain, "snapshots", snap);
}
