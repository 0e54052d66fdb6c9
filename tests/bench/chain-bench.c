/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * chain-bench: restoring a chain of deltas against restoring the same image
 * from one full snapshot, in the same run (issue 11: "a chain of 10 deltas
 * restores byte-exact at >= 0.8 x the speed of the equivalent merged file").
 *
 * A memfd region (--size MiB; per 16 pages 2 zero, 4 random, 10 text-like,
 * as restore-bench) is snapshotted by the engine (the base). Then --deltas
 * times, --pct % of its pages (random ones) get new contents and a delta of
 * the change is written (tests/forge.c: chunks of up to 64 changed pages,
 * zstd level 1, as the engine would store them, while the engine cannot
 * write deltas itself). The chain is merged (uffdsnap_reader_merge_file),
 * and the engine takes a full snapshot of the final image too. Then, --reps
 * times, alternating: eager restore into a fresh memfd
 * (uffdsnap_restore_memfd, all CPUs), into fresh memory
 * (uffdsnap_restore_into) and uffdsnap_reader_read() of the whole region, from the chain, the merged file and the engine's full snapshot;
 * every result is compared with the memory. Best of the reps, wall time and
 * CPU time of all threads (less disturbed by other loads on a shared
 * machine); ratios are speeds (file time / chain time).
 *
 *   chain-bench [--size MiB] [--deltas N] [--pct P] [--reps N] [--dir DIR]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#include "forge.h"

#include "bench-util.h"

/* Page pg of the bench's data, from seed s. */
static void fill_page(uint8_t *q, uint64_t pg, uint64_t *s)
{
	static const char *const words[] = { "alpha ", "beta ", "gamma ", "delta ", "lorem ", "ipsum ",
					     "restore ", "snapshot ", "page ", "memory ", "\n", "42 ", "1337 " };
	unsigned k = pg % 16;

	if (k < 2) {
		memset(q, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE;) {
		if (k < 6) {
			uint64_t v = rnd(s);
			memcpy(q + i, &v, 8);
			i += 8;
			continue;
		}
		const char *w = words[rnd(s) % 13];
		size_t n = strlen(w) < PAGE - i ? strlen(w) : PAGE - i;
		memcpy(q + i, w, n);
		i += n;
	}
}

static uint8_t *copy_of(const uint8_t *p, size_t len)
{
	uint8_t *c = malloc(len);

	if (!c)
		die("malloc", ENOMEM, NULL);
	memcpy(c, p, len);
	return c;
}

/* A full snapshot of ctx by the engine into path; its id into id. */
static void snap_full(uffdsnap_t *ctx, const char *path, uint8_t id[16])
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	uffdsnap_snap_t *snap;
	uffdsnap_reader_t *r;
	int rc;

	if ((rc = uffdsnap_begin_file(ctx, path, &snap)) || (rc = uffdsnap_wait(snap)))
		die(path, rc, uffdsnap_last_error());
	uffdsnap_snap_free(snap);
	if ((rc = uffdsnap_reader_open(&r, path)))
		die(path, rc, uffdsnap_last_error());
	uffdsnap_reader_info(r, &in);
	memcpy(id, in.snap_id, 16);
	uffdsnap_reader_free(r);
}

/* CPU time of the process, every thread: what an operation costs, less
 * disturbed than its wall time by the other loads of a shared machine */
static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct timing {
	double restore_ms, into_ms, read_ms;      /* wall, best */
	double restore_cpu, into_cpu, read_cpu;   /* CPU, best */
};

static uint64_t t_cpu;

static void best(double *b, double *bc, uint64_t t0)
{
	double ms = (now_ns() - t0) / 1e6, cms = (cpu_ns() - t_cpu) / 1e6;

	*b = !*b || ms < *b ? ms : *b;
	*bc = !*bc || cms < *bc ? cms : *bc;
}

/* One eager restore into a memfd, one into memory and one whole-region read
 * of r, each checked against want; the best times so far in b. */
static void measure(uffdsnap_reader_t *r, const uint8_t *want, size_t len, uint8_t *buf, struct timing *b)
{
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	uint64_t t0;
	uint8_t *m;
	int fd, rc;

	t0 = now_ns();
	t_cpu = cpu_ns();
	if ((rc = uffdsnap_restore_memfd(r, 0, &fd, NULL, &st)))
		die("restore", rc, uffdsnap_last_error());
	best(&b->restore_ms, &b->restore_cpu, t0);
	m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED || memcmp(m, want, len))
		die("restore", EBADMSG, "the restored region differs from the memory");
	munmap(m, len);
	close(fd);
	/* into fresh private memory: pages decompressed where they belong */
	t0 = now_ns();
	t_cpu = cpu_ns();
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || (rc = uffdsnap_restore_into(r, 0, m, len, NULL, NULL)))
		die("restore_into", m == MAP_FAILED ? errno : rc, uffdsnap_last_error());
	best(&b->into_ms, &b->into_cpu, t0);
	if (memcmp(m, want, len))
		die("restore_into", EBADMSG, "the restored memory differs");
	munmap(m, len);
	t0 = now_ns();
	t_cpu = cpu_ns();
	if ((rc = uffdsnap_reader_read(r, 0, 0, buf, len)))
		die("read", rc, uffdsnap_reader_error(r));
	best(&b->read_ms, &b->read_cpu, t0);
	if (memcmp(buf, want, len))
		die("read", EBADMSG, "the region read differs from the memory");
}

static void print_row(const char *what, const struct timing *t, const struct timing *base, uint64_t bytes)
{
	printf("  %-30s %8.1f %8.1f %8.1f %6.2f %6.2f %6.2f %11" PRIu64 "\n", what, t->restore_ms, t->into_ms,
	       t->read_ms, base->restore_ms / t->restore_ms, base->into_ms / t->into_ms, base->read_ms / t->read_ms,
	       bytes);
	printf("  %-30s %8.1f %8.1f %8.1f %6.2f %6.2f %6.2f\n", "  (CPU time)", t->restore_cpu, t->into_cpu,
	       t->read_cpu, base->restore_cpu / t->restore_cpu, base->into_cpu / t->into_cpu,
	       base->read_cpu / t->read_cpu);
}

static uint64_t file_bytes(const char *path)
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	uffdsnap_reader_t *r;
	uint64_t n = 0;

	if (!uffdsnap_reader_open(&r, path)) {
		uffdsnap_reader_info(r, &in);
		n = in.bytes_file;
		uffdsnap_reader_free(r);
	}
	return n;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "size", required_argument, NULL, 's' }, { "deltas", required_argument, NULL, 'n' },
		{ "pct", required_argument, NULL, 'p' },  { "reps", required_argument, NULL, 'r' },
		{ "dir", required_argument, NULL, 'd' },  { 0 },
	};
	unsigned size_mib = 256, n = 10, reps = 3;
	double pct = 1.0;
	const char *dir = "/var/tmp";
	char tmpl[4096], base_path[4200], merged[4200], full[4200], (*delta)[4200];
	const char **chain;
	uint8_t (*ids)[16];
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_reader_t *rc_chain, *rc_merged, *rc_full;
	struct timing tc = { 0 }, tm = { 0 }, tf = { 0 };
	uint64_t seed = 7, chain_bytes = 0, t0;
	uint8_t *mem, *prev, *buf;
	size_t len, npages;
	double merge_ms;
	int c, fd, rc;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = (unsigned)atoi(optarg); break;
		case 'n': n = (unsigned)atoi(optarg); break;
		case 'p': pct = atof(optarg); break;
		case 'r': reps = (unsigned)atoi(optarg); break;
		case 'd': dir = optarg; break;
		default:
			fprintf(stderr, "usage: chain-bench [--size MiB] [--deltas N] [--pct P] [--reps N] [--dir DIR]\n");
			return 2;
		}
	}
	if (!size_mib || !n || pct <= 0 || pct > 100 || !reps)
		die("arguments", EINVAL, "--size, --deltas, --reps > 0, 0 < --pct <= 100");
	len = (size_t)size_mib * MiB;
	npages = len / PAGE;
	snprintf(tmpl, sizeof(tmpl), "%s/chain-bench.XXXXXX", dir);
	if (!mkdtemp(tmpl))
		die(tmpl, errno, NULL);
	delta = calloc(n + 1, sizeof(*delta));
	ids = calloc(n + 1, sizeof(*ids));
	chain = calloc(n + 1, sizeof(*chain));
	if ((fd = memfd_create("chain-bench", MFD_CLOEXEC)) < 0 || ftruncate(fd, (off_t)len))
		die("memfd", errno, NULL);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED || !delta || !ids || !chain || !(buf = malloc(len)))
		die("memory", ENOMEM, NULL);
	for (size_t p = 0; p < npages; p++)
		fill_page(mem + p * PAGE, p, &seed);
	uffdsnap_opts_init(&o);
	if ((rc = uffdsnap_new(&ctx, &o)) || (rc = uffdsnap_add_region(ctx, "pool", mem, len)))
		die("context", rc, uffdsnap_last_error());
	snprintf(base_path, sizeof(base_path), "%s/base.snap", tmpl);
	snap_full(ctx, base_path, ids[0]);
	chain[0] = base_path;
	chain_bytes = file_bytes(base_path);
	prev = copy_of(mem, len);
	for (unsigned k = 1; k <= n; k++) {
		const char *names[1] = { "pool" };
		const uint64_t np[1] = { npages };
		const uint8_t *pv[1] = { prev }, *cu[1] = { mem };
		struct usnap_forge f = { .nregions = 1, .names = names, .npages = np, .page_size = PAGE, .prev = pv,
					 .cur = cu, .parent_id = ids[k - 1], .id = ids[k], .depth = k,
					 .created_ns = (uint64_t)time(NULL) * 1000000000ull, .chunk_pages = 64,
					 .zstd = 2 };

		for (size_t i = 0; i < (size_t)(npages * pct / 100); i++) {
			uint64_t p = rnd(&seed) % npages;
			fill_page(mem + p * PAGE, p + 16 * (rnd(&seed) % 2), &seed);
		}
		if (getrandom(ids[k], 16, 0) != 16)
			die("getrandom", errno, NULL);
		snprintf(delta[k], sizeof(delta[k]), "%s/delta%u.snap", tmpl, k);
		if ((rc = usnap_forge_delta(delta[k], &f)))
			die(delta[k], rc, NULL);
		chain[k] = delta[k];
		chain_bytes += file_bytes(delta[k]);
		memcpy(prev, mem, len);
	}
	snprintf(full, sizeof(full), "%s/full.snap", tmpl);
	snap_full(ctx, full, (uint8_t[16]){ 0 });
	if ((rc = uffdsnap_reader_open_chain(&rc_chain, chain, n + 1)))
		die("open_chain", rc, uffdsnap_last_error());
	snprintf(merged, sizeof(merged), "%s/merged.snap", tmpl);
	t0 = now_ns();
	t_cpu = cpu_ns();
	if ((rc = uffdsnap_reader_merge_file(rc_chain, merged, 0)))
		die("merge", rc, uffdsnap_last_error());
	merge_ms = (now_ns() - t0) / 1e6;
	if ((rc = uffdsnap_reader_open(&rc_merged, merged)) || (rc = uffdsnap_reader_open(&rc_full, full)))
		die("open", rc, uffdsnap_last_error());
	for (unsigned i = 0; i < reps; i++) {
		measure(rc_chain, mem, len, buf, &tc);
		measure(rc_merged, mem, len, buf, &tm);
		measure(rc_full, mem, len, buf, &tf);
	}
	printf("chain-bench: %u MiB region, base + %u deltas of %.2f %% random pages each (chunks of up to 64 "
	       "changed pages, zstd 1), best of %u, %ld CPUs\n", size_mib, n, pct, reps, sysconf(_SC_NPROCESSORS_ONLN));
	printf("  merge of the chain: %.1f ms\n", merge_ms);
	printf("  %-30s %8s %8s %8s %6s %6s %6s %11s\n", "source (ms; speed x merged)", "memfd", "into", "read",
	       "memfd", "into", "read", "file bytes");
	print_row("merged file (the baseline)", &tm, &tm, file_bytes(merged));
	print_row("engine's full snapshot", &tf, &tm, file_bytes(full));
	print_row("chain: base + deltas", &tc, &tm, chain_bytes);
	printf("  chain speed / merged file speed: restore to memfd %.2f, into memory %.2f, read %.2f (target >= 0.8)\n",
	       tm.restore_ms / tc.restore_ms, tm.into_ms / tc.into_ms, tm.read_ms / tc.read_ms);
	printf("  the same in CPU time: restore to memfd %.2f, into memory %.2f, read %.2f\n",
	       tm.restore_cpu / tc.restore_cpu, tm.into_cpu / tc.into_cpu, tm.read_cpu / tc.read_cpu);
	printf("  chain speed / engine's full snapshot speed: restore to memfd %.2f, into memory %.2f, read %.2f\n",
	       tf.restore_ms / tc.restore_ms, tf.into_ms / tc.into_ms, tf.read_ms / tc.read_ms);
	uffdsnap_reader_free(rc_chain);
	uffdsnap_reader_free(rc_merged);
	uffdsnap_reader_free(rc_full);
	uffdsnap_free(ctx);
	unlink(merged);
	unlink(full);
	unlink(base_path);
	for (unsigned k = 1; k <= n; k++)
		unlink(delta[k]);
	rmdir(tmpl);
	return 0;
}
