/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Writes the seed inputs of the reader fuzzer into DIR: real, small
 * snapshots taken with the library (needs userfaultfd: run as root), plus a
 * failed stream (END with an error), truncated copies, and chains: a full
 * snapshot followed by deltas taken after writes, concatenated into one
 * input (the fuzz target splits an input at every file magic).
 *   make-seeds DIR
 * The committed corpus (tests/fuzz/corpus/) started from these and was then
 * grown by the fuzzer and minimized (tests/fuzz/build.sh, docs/reliability.md).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uffdsnap.h"

static const char *dir;
static size_t page;

static void die(const char *what, int e)
{
	fprintf(stderr, "make-seeds: %s: %d %s (%s)\n", what, e, uffdsnap_strerror(e), uffdsnap_last_error());
	exit(1);
}

static uint8_t *region(size_t len, int *fdp)
{
	int fd = memfd_create("seed", MFD_CLOEXEC);
	uint8_t *p;

	if (fd < 0 || ftruncate(fd, (off_t)len))
		die("memfd", -errno);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap", -errno);
	*fdp = fd;
	return p;
}

/* kind: 0 text (compresses), 1 random (stored raw), 2 zeros, 3 hole */
static void fill(uint8_t *p, size_t len, const int *kinds, unsigned nkinds, uint64_t seed)
{
	for (size_t off = 0, i = 0; off < len; off += page, i++) {
		int k = kinds[i % nkinds];
		if (k == 0)
			for (size_t j = 0; j < page; j++)
				p[off + j] = "uffdsnap seed text "[(j + i) % 19];
		else if (k == 1)
			for (size_t j = 0; j < page; j++)
				p[off + j] = (uint8_t)((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 56);
		else if (k == 2)
			memset(p + off, 0, page);
	}
}

struct rspec {
	const char *name;
	size_t pages;
	int kinds[8];
	unsigned nkinds;
};

static void snap(const char *file, const struct rspec *rs, unsigned n, size_t chunk)
{
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	char path[4096];
	int e, fds[8];
	uint8_t *addr[8];

	uffdsnap_opts_init(&o);
	o.chunk_bytes = chunk;
	o.buffer_bytes = 1 << 20;
	if ((e = uffdsnap_new(&ctx, &o)))
		die("new", e);
	for (unsigned i = 0; i < n; i++) {
		addr[i] = region(rs[i].pages * page, &fds[i]);
		fill(addr[i], rs[i].pages * page, rs[i].kinds, rs[i].nkinds, i + 1);
		if ((e = uffdsnap_add_region(ctx, rs[i].name, addr[i], rs[i].pages * page)) < 0)
			die("add_region", e);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if ((e = uffdsnap_begin_file(ctx, path, &s)) || (e = uffdsnap_wait(s)))
		die(file, e);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	for (unsigned i = 0; i < n; i++) {
		munmap(addr[i], rs[i].pages * page);
		close(fds[i]);
	}
	printf("%s\n", path);
}

static void truncated(const char *from, const char *to, double frac)
{
	char a[4096], b[4096];
	FILE *f, *g;
	long n;
	char *buf;

	snprintf(a, sizeof(a), "%s/%s", dir, from);
	snprintf(b, sizeof(b), "%s/%s", dir, to);
	if (!(f = fopen(a, "rb")) || !(g = fopen(b, "wb")))
		die("truncated", -errno);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n);
	if (fread(buf, 1, (size_t)n, f) != (size_t)n)
		die("read", -EIO);
	fwrite(buf, 1, (size_t)(n * frac) & ~7ul, g);
	fclose(f);
	fclose(g);
	free(buf);
	printf("%s\n", b);
}

/* A stream that ends with a failure: END carrying -ECANCELED. */
struct cb {
	FILE *f;
	unsigned calls;
	uffdsnap_snap_t *s;
};

static int cb_write(void *user, const void *buf, size_t len)
{
	struct cb *c = user;

	fwrite(buf, 1, len, c->f);
	if (++c->calls == 2 && c->s)
		uffdsnap_cancel(c->s);
	return 0;
}

static void failed_stream(const char *file)
{
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_sink_t *k;
	struct cb c = { 0 };
	char path[4096];
	int fd, e;
	size_t len = 24 * page;
	uint8_t *p = region(len, &fd);
	int kinds[] = { 0, 0, 2, 1, 0, 3 };

	fill(p, len, kinds, 6, 7);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16384;
	o.buffer_bytes = 1 << 20;
	o.compress_threads = 1;
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	c.f = fopen(path, "wb");
	if ((e = uffdsnap_new(&ctx, &o)) || (e = uffdsnap_add_region(ctx, "failed", p, len)) < 0 ||
	    (e = uffdsnap_sink_callback(&k, cb_write, &c)))
		die("failed stream", e);
	/* cancelled from the sink at its second call: the stream gets an END with the error */
	if ((e = uffdsnap_begin(ctx, k, &c.s)))
		die("begin", e);
	e = uffdsnap_wait(c.s);
	uffdsnap_snap_free(c.s);
	uffdsnap_free(ctx);
	fclose(c.f);
	printf("%s (wait: %d)\n", path, e);
}

static void append(FILE *out, const char *path)
{
	char buf[65536];
	size_t n;
	FILE *f = fopen(path, "rb");

	if (!f)
		die(path, -errno);
	while ((n = fread(buf, 1, sizeof(buf), f)))
		fwrite(buf, 1, n, out);
	fclose(f);
	unlink(path);
}

/* A full snapshot of two regions, then `ndeltas` deltas, each after writing
 * a few pages (one back to a hole): one input, the files end to end. */
static void chain(const char *file, unsigned ndeltas)
{
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	char path[4096], part[4200];
	int e, fd[2], kinds[] = { 0, 1, 2, 3 };
	size_t len = 20 * page;
	uint8_t *p[2];
	FILE *out;

	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16384;
	o.buffer_bytes = 1 << 20;
	o.flags |= UFFDSNAP_OPT_DELTA;
	if ((e = uffdsnap_new(&ctx, &o)))
		die("new", e);
	for (int i = 0; i < 2; i++) {
		p[i] = region(len, &fd[i]);
		fill(p[i], len, kinds, 4, (uint64_t)i + 9);
		if ((e = uffdsnap_add_region(ctx, i ? "b" : "a", p[i], len)) < 0)
			die("add_region", e);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if (!(out = fopen(path, "wb")))
		die(path, -errno);
	for (unsigned k = 0; k <= ndeltas; k++) {
		snprintf(part, sizeof(part), "%s.%u", path, k);
		if (k) {
			memset(p[k & 1] + (k * 3 % 20) * page, 'A' + (int)k, page);
			fallocate(fd[0], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(k * 7 % 20 * page),
				  (off_t)page);
		}
		e = k ? uffdsnap_begin_delta_file(ctx, part, &s) : uffdsnap_begin_file(ctx, part, &s);
		if (e || (e = uffdsnap_wait(s)))
			die(file, e);
		uffdsnap_snap_free(s);
		append(out, part);
	}
	fclose(out);
	uffdsnap_free(ctx);
	for (int i = 0; i < 2; i++) {
		munmap(p[i], len);
		close(fd[i]);
	}
	printf("%s (%u deltas)\n", path, ndeltas);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: make-seeds DIR\n");
		return 2;
	}
	dir = argv[1];
	page = (size_t)sysconf(_SC_PAGESIZE);
	{
		struct rspec r[] = { { "text", 16, { 0 }, 1 } };
		snap("seed-text", r, 1, 16384);
	}
	{
		struct rspec r[] = { { "mixed", 40, { 0, 1, 2, 3 }, 4 }, { "holes", 24, { 3, 3, 0 }, 3 } };
		snap("seed-two-regions", r, 2, 16384);
	}
	{
		struct rspec r[] = { { "random", 8, { 1 }, 1 } };
		snap("seed-raw", r, 1, 16384);
	}
	{
		struct rspec r[] = { { "empty", 32, { 3 }, 1 } };
		snap("seed-all-holes", r, 1, 16384);
	}
	{
		struct rspec r[] = { { "a", 4, { 0, 2 }, 2 },
				     { "a-region-with-a-rather-long-name-to-exercise-the-name-table", 4, { 2 }, 1 },
				     { "c", 12, { 1, 0, 3 }, 3 } };
		snap("seed-three-regions", r, 3, 32768);
	}
	{
		struct rspec r[] = { { "big", 128, { 0, 0, 1, 2, 3, 0 }, 6 } };
		snap("seed-many-chunks", r, 1, 16384);
	}
	truncated("seed-two-regions", "seed-truncated-half", 0.5);
	truncated("seed-text", "seed-truncated-head", 0.02);
	failed_stream("seed-failed-stream");
	chain("seed-chain-1", 1);
	chain("seed-chain-3", 3);
	return 0;
}
