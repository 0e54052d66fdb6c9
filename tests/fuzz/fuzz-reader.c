/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for every reader of snapshot bytes (lib/reader.c): the input
 * is a snapshot file. It is read twice:
 *  - as a file (a memfd, so pread and the file size work): open, info,
 *    every region's info and lookup by name, verify, read (the first and
 *    last MiB of each region, and a page-crossing piece), extract to
 *    /dev/null (regions up to 64 MiB, to bound the time) -- header, region
 *    table, END, INDX, chunks, extents, zstd payloads;
 *  - as a stream (a pipe, as `cat snap | uffdsnap verify -` does): open_fd,
 *    verify, info -- the sequential reader.
 * Built two ways: with clang -fsanitize=fuzzer (tests/fuzz/build.sh) for
 * fuzzing, and with a plain main() (corpus-main.c) as the `fuzz-corpus` test
 * of `meson test`, which runs every file of tests/fuzz/corpus/ through it.
 * A finding is a crash, a sanitizer report, a hang, or a broken promise:
 * verify() == 0 on a file whose read() or extract() then fails; or read()
 * of a whole region succeeding where verify() found a page of that region
 * recorded twice or not at all (read would have made up its contents); or
 * a delta (format version 2) whose pages read or extract alone (it must be
 * -ENOLINK: its image needs its chain). The corpus holds deltas forged by
 * tests/test-chain.c --forge.
 * An input holding the file magic again (at a multiple of 8) is also read as
 * a chain (lib/reader-chain.c): cut at each magic, up to 8 files, opened with
 * uffdsnap_reader_open_chain(); a chain that verifies must read, extract and
 * merge, and the merged file must verify (seeds: make-seeds' seed-chain-*).
 *
 * Every record carries a CRC-32C, so almost every mutation would stop at the
 * checksum. Each input is therefore read a second time with the checksum of
 * every record it can frame recomputed ("repaired"), which takes the fuzzer
 * past the checksums into the structure checks behind them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uffdsnap.h"
#include "format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w, n -= (size_t)w;
	}
	return 0;
}

static void broken_promise(const char *what, int e, const uffdsnap_reader_t *r)
{
	fprintf(stderr, "fuzz-reader: verify() accepted the file but %s failed: %d %s (%s)\n", what, e,
		uffdsnap_strerror(e), uffdsnap_reader_error(r));
	abort();
}

/* verify() said "region 'X': page P is recorded twice" or "pages A..B are not
 * recorded": then reading all of region X must fail too. */
static void coverage_oracle(uffdsnap_reader_t *r)
{
	char why[512], *name, *end;
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uint8_t *buf;
	int id, e;

	snprintf(why, sizeof(why), "%s", uffdsnap_reader_error(r));
	if ((!strstr(why, "is recorded twice") && !strstr(why, "are not recorded")) ||
	    strncmp(why, "region '", 8) || !(end = strstr(why, "': ")))
		return;
	name = why + 8;
	*end = '\0';
	if ((id = uffdsnap_reader_find(r, name)) < 0 || uffdsnap_reader_region(r, (unsigned)id, &ri) ||
	    ri.length > (64u << 20) || !(buf = malloc(ri.length)))
		return;
	e = uffdsnap_reader_read(r, (unsigned)id, 0, buf, ri.length);
	free(buf);
	if (!e) {
		fprintf(stderr, "fuzz-reader: verify() rejected region '%s' (%s) but read() of all of it succeeded\n",
			name, why + strlen(name) + 11);
		abort();
	}
}

static void as_file(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	const size_t piece = 1u << 20;
	uffdsnap_reader_t *r = NULL;
	uffdsnap_info_t info = { .size = sizeof(info) };
	int fd = memfd_create("fuzz", MFD_CLOEXEC), nul, verified;

	if (fd < 0 || write_all(fd, data, size)) {
		perror("fuzz-reader: memfd");
		abort();
	}
	if (!buf && !(buf = malloc(piece)))
		abort();
	if (uffdsnap_reader_open_fd(&r, fd)) {
		if (r)
			abort(); /* a failed open must not hand out a reader */
		close(fd);
		return;
	}
	if (uffdsnap_reader_info(r, &info))
		abort();
	if (info.reason == NULL || strlen(info.reason) > 4096)
		abort();
	verified = uffdsnap_reader_verify(r) == 0;
	if (verified && !info.complete)
		abort(); /* verify accepted what open called incomplete */
	if (!verified)
		coverage_oracle(r);
	nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
	for (unsigned id = 0; id < info.nregions; id++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		uint64_t offs[3];
		int e;

		if (uffdsnap_reader_region(r, id, &ri) || !ri.name)
			abort();
		e = uffdsnap_reader_find(r, ri.name);
		if (e < 0 || (unsigned)e != id)
			abort(); /* names are unique: find() returns the same id */
		offs[0] = 0;
		offs[1] = ri.length > piece ? ri.length - piece : 0;
		offs[2] = ri.length / 2 > 100 ? ri.length / 2 - 100 : 0;
		for (int i = 0; i < 3; i++) {
			size_t len = ri.length - offs[i] < piece ? (size_t)(ri.length - offs[i]) : piece;
			if (i == 2 && len > 8192)
				len = 8192;
			e = uffdsnap_reader_read(r, id, offs[i], buf, len);
			if (info.delta && !e)
				abort(); /* a delta alone is no image: its pages are never read */
			if (verified && e && !(info.delta && e == -ENOLINK))
				broken_promise("read()", e, r);
		}
		if (ri.length <= (64u << 20) && nul >= 0) {
			e = uffdsnap_reader_extract_fd(r, id, nul);
			if (info.delta && !e)
				abort();
			if (verified && e && !(info.delta && e == -ENOLINK))
				broken_promise("extract()", e, r);
		}
	}
	/* out of range: must be refused, not read */
	if (uffdsnap_reader_read(r, info.nregions, 0, buf, 1) != -ENOENT)
		abort();
	if (nul >= 0)
		close(nul);
	uffdsnap_reader_free(r);
	close(fd);
}

#define CHAIN_MAX 8

static int memfd_of(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz-chain", MFD_CLOEXEC);

	if (fd < 0 || write_all(fd, data, size)) {
		perror("fuzz-reader: memfd");
		abort();
	}
	return fd;
}

static char merge_dir[64];

static void merge_dir_remove(void)
{
	rmdir(merge_dir);
}

/* The merged image of a chain that verified: a full snapshot that verifies. */
static void merge_oracle(uffdsnap_reader_t *r)
{
	char *dir = merge_dir, path[96];
	uffdsnap_reader_t *m = NULL;
	int e;

	if (!dir[0]) {
		snprintf(dir, sizeof(merge_dir), "/dev/shm/fuzz-reader-XXXXXX");
		if (!mkdtemp(dir))
			abort();
		atexit(merge_dir_remove);
	}
	snprintf(path, sizeof(path), "%s/merged", dir);
	if ((e = uffdsnap_reader_merge_file(r, path, 0)))
		broken_promise("merge_file()", e, r);
	if ((e = uffdsnap_reader_open(&m, path)) || (e = uffdsnap_reader_verify(m))) {
		fprintf(stderr, "fuzz-reader: the merge of a chain that verified does not verify: %d %s (%s)\n", e,
			uffdsnap_strerror(e), m ? uffdsnap_reader_error(m) : uffdsnap_last_error());
		abort();
	}
	uffdsnap_reader_free(m);
	unlink(path);
}

static void as_chain(const uint8_t *data, size_t size)
{
	static uint8_t buf[8192];
	size_t cut[CHAIN_MAX + 1];
	char paths[CHAIN_MAX][32];
	const char *pp[CHAIN_MAX];
	int fds[CHAIN_MAX], nul;
	unsigned n = 1;
	uffdsnap_reader_t *r = NULL;
	uffdsnap_info_t info = { .size = sizeof(info) };
	bool verified;

	cut[0] = 0;
	for (size_t off = USNAP_MAGIC_LEN; off + USNAP_MAGIC_LEN <= size && n < CHAIN_MAX; off += 8)
		if (!memcmp(data + off, USNAP_MAGIC, USNAP_MAGIC_LEN))
			cut[n++] = off;
	if (n < 2)
		return;
	cut[n] = size;
	for (unsigned i = 0; i < n; i++) {
		fds[i] = memfd_of(data + cut[i], cut[i + 1] - cut[i]);
		snprintf(paths[i], sizeof(paths[i]), "/proc/self/fd/%d", fds[i]);
		pp[i] = paths[i];
	}
	if (uffdsnap_reader_open_chain(&r, pp, n)) {
		if (r)
			abort();
		goto out;
	}
	if (uffdsnap_reader_info(r, &info) || !info.reason)
		abort();
	verified = uffdsnap_reader_verify(r) == 0;
	if (verified && (!info.complete || info.files != n))
		abort();
	nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
	for (unsigned id = 0; id < info.nregions; id++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		int e;

		if (uffdsnap_reader_region(r, id, &ri) || !ri.name)
			abort();
		e = uffdsnap_reader_read(r, id, 0, buf, ri.length < sizeof(buf) ? (size_t)ri.length : sizeof(buf));
		if (verified && e)
			broken_promise("read() of a chain", e, r);
		if (ri.length <= (64u << 20) && nul >= 0 && (e = uffdsnap_reader_extract_fd(r, id, nul)) && verified)
			broken_promise("extract() of a chain", e, r);
	}
	if (nul >= 0)
		close(nul);
	if (verified && info.nregions)
		merge_oracle(r);
	uffdsnap_reader_free(r);
out:
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

static void as_stream(const uint8_t *data, size_t size)
{
	uffdsnap_reader_t *r = NULL;
	uffdsnap_info_t info = { .size = sizeof(info) };
	int p[2];

	if (pipe2(p, O_CLOEXEC))
		abort();
	/* the whole input fits in the pipe: no writer thread needed */
	if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0 && size > 65536)
		size = 65536;
	if (size > (1u << 20))
		size = 1u << 20;
	if (write_all(p[1], data, size))
		abort();
	close(p[1]);
	if (!uffdsnap_reader_open_fd(&r, p[0])) {
		int e = uffdsnap_reader_verify(r);
		if (uffdsnap_reader_info(r, &info))
			abort();
		if (!e && !info.complete)
			abort();
		if (uffdsnap_reader_verify(r) != -EINVAL) /* a stream is read once */
			abort();
		uffdsnap_reader_free(r);
	} else if (r) {
		abort();
	}
	close(p[0]);
}

static void repair_at(uint8_t *d, size_t off, uint64_t len, size_t *fixed)
{
	struct usnap_rec_hdr h;
	uint32_t c;

	memcpy(&h, d + off, sizeof(h));
	c = usnap_rec_crc(d + off, len);
	if (c != h.crc) {
		memcpy(d + off + offsetof(struct usnap_rec_hdr, crc), &c, sizeof(c));
		(*fixed)++;
	}
}

/* Recompute the CRC of every record the chain from HEAD frames, and of an
 * END record at the tail; returns how many changed. */
static size_t repair(uint8_t *d, size_t n)
{
	size_t off = USNAP_MAGIC_LEN, fixed = 0;
	struct usnap_rec_hdr h;

	while (off + sizeof(h) <= n) {
		memcpy(&h, d + off, sizeof(h));
		if (!memcmp(d + off, USNAP_MAGIC, USNAP_MAGIC_LEN)) { /* the next file of a chain */
			off += USNAP_MAGIC_LEN;
			continue;
		}
		if (h.len < sizeof(h) || h.len % 8 || h.len > n - off)
			break;
		repair_at(d, off, h.len, &fixed);
		off += h.len;
	}
	if (n >= USNAP_MAGIC_LEN + USNAP_END_LEN && off != n) {
		memcpy(&h, d + n - USNAP_END_LEN, sizeof(h));
		if (h.type == USNAP_REC_END && h.len == USNAP_END_LEN)
			repair_at(d, n - USNAP_END_LEN, USNAP_END_LEN, &fixed);
	}
	return fixed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	as_file(data, size);
	as_stream(data, size);
	as_chain(data, size);
	if (size && (copy = malloc(size))) {
		memcpy(copy, data, size);
		if (repair(copy, size)) {
			as_file(copy, size);
			as_stream(copy, size);
			as_chain(copy, size);
		}
		free(copy);
	}
	return 0;
}
