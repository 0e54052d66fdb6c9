/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Deltas (issue 11), writer side: a full snapshot, then deltas, each checked
 * against an oracle, a copy of the memory at its instant. The copy is exact
 * because nothing writes while it is taken and while begin protects: the
 * writers (and the disturbances) run between two snapshots and during each
 * delta, after its begin returned, so what they change belongs to the next
 * instant. A missed change is the worst bug a delta can have, so every link of
 * every chain is folded and compared page by page.
 *
 * The chain is folded here by a minimal applier over lib/format.h (the file,
 * record by record, CRC checked), and read again through the library's chain
 * reader (uffdsnap_reader_open_chain, which test-chain tests on forged
 * deltas): two independent readings of the engine's files, each compared
 * with the oracle.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zstd.h>

#include "helpers.h"
#include "format.h"

#define NREG 2
#define SHM_LEN (USNAP_SANITIZED ? 2 * MiB : 4 * MiB)
#define PRIV_LEN (USNAP_SANITIZED ? 1 * MiB : 2 * MiB)

/* ---- the applier ----------------------------------------------------------- */

struct chain {
	unsigned n;
	size_t len[NREG];
	uint8_t *img[NREG];          /* the chain's image so far */
	uint8_t id[16];              /* its last file's snap_id */
	uint32_t depth;
	uint64_t data_pages;         /* DATA pages of the last file */
	uint8_t *covered[NREG];      /* per page: an extent of the last file covers it */
	char *paths[64];             /* the files, base first */
	unsigned nfiles;
};

static const uint8_t *rec_at(const uint8_t *f, size_t flen, size_t off, uint32_t *type, size_t *len)
{
	const struct usnap_rec_hdr *h = (const struct usnap_rec_hdr *)(f + off);

	ck_assert_msg(off + sizeof(*h) <= flen, "record header past the end at %zu", off);
	ck_assert_msg(h->len >= sizeof(*h) && off + h->len <= flen && !(h->len & 7), "record length %llu at %zu",
		      (unsigned long long)h->len, off);
	ck_assert_msg(usnap_rec_crc(h, h->len) == h->crc, "CRC of the record at %zu", off);
	*type = h->type;
	*len = h->len;
	return (const uint8_t *)(h + 1);
}

/* Apply the file at path to c: a full snapshot (c->n == 0 then) or a delta of c. */
static void apply_file(struct chain *c, const char *path, bool delta)
{
	size_t flen, off = USNAP_MAGIC_LEN, len;
	uint8_t *f = usnap_slurp(path, &flen);
	const struct usnap_head *hd;
	const uint8_t *p;
	uint32_t type;
	bool end = false;

	ck_assert(!memcmp(f, USNAP_MAGIC, USNAP_MAGIC_LEN));
	p = rec_at(f, flen, off, &type, &len);
	ck_assert(type == USNAP_REC_HEAD);
	hd = (const struct usnap_head *)p;
	ck_assert_uint_eq(hd->version, delta ? USNAP_VERSION_DELTA : USNAP_VERSION);
	ck_assert_uint_eq(hd->flags, delta ? USNAP_HEAD_DELTA : 0);
	ck_assert_uint_eq(hd->page_size, usnap_page);
	p += sizeof(*hd);
	if (delta) {
		const struct usnap_head_delta *dh = (const struct usnap_head_delta *)p;
		ck_assert_msg(!memcmp(dh->parent_id, c->id, 16), "%s: parent id is not the chain's last id", path);
		ck_assert_uint_eq(dh->depth, c->depth + 1);
		ck_assert_uint_eq(dh->reserved, 0);
		c->depth = dh->depth;
		p += sizeof(*dh);
	} else {
		c->depth = 0;
	}
	ck_assert_uint_eq(hd->nregions, c->n ? c->n : NREG);
	for (unsigned i = 0; i < hd->nregions; i++) {
		const struct usnap_region *r = (const struct usnap_region *)p;
		if (!c->n) {
			c->len[i] = r->length, c->img[i] = usnap_buf_alloc(r->length);
			c->covered[i] = calloc(r->length / usnap_page, 1);
		}
		memset(c->covered[i], 0, r->length / usnap_page);
		ck_assert_uint_eq(r->length, c->len[i]);
		p += sizeof(*r) + usnap_pad8(r->name_len);
	}
	c->n = hd->nregions;
	memcpy(c->id, hd->snap_id, 16);
	c->data_pages = 0;
	for (off += len; !end;) {
		p = rec_at(f, flen, off, &type, &len);
		off += len;
		if (type == USNAP_REC_END) {
			const struct usnap_end *e = (const struct usnap_end *)p;
			ck_assert_int_eq(e->status, 0);
			ck_assert(!memcmp(e->snap_id, c->id, 16));
			ck_assert_uint_eq(e->pages_data, c->data_pages);
			end = true;
		} else if (type == USNAP_REC_CHNK) {
			const struct usnap_chunk *ch = (const struct usnap_chunk *)p;
			const struct usnap_extent *x = (const struct usnap_extent *)(ch + 1);
			const uint8_t *payload = (const uint8_t *)(x + ch->nextents), *data = payload;
			uint8_t *raw = NULL;

			ck_assert(ch->region < c->n && ch->nextents >= 1);
			if (ch->flags & USNAP_CHNK_ZSTD) {
				raw = malloc(ch->raw_len ? ch->raw_len : 1);
				ck_assert(raw);
				ck_assert_uint_eq(ZSTD_decompress(raw, ch->raw_len, payload, ch->stored_len), ch->raw_len);
				data = raw;
			}
			for (uint32_t i = 0; i < ch->nextents; i++) {
				uint8_t *dst = c->img[ch->region] + x[i].first_page * usnap_page;
				size_t n = (size_t)x[i].npages * usnap_page;

				ck_assert((x[i].first_page + x[i].npages) * usnap_page <= c->len[ch->region]);
				for (uint32_t k = 0; k < x[i].npages; k++)
					usnap_assert_msg(!c->covered[ch->region][x[i].first_page + k]++,
							 "%s: page %llu covered twice", path,
							 (unsigned long long)(x[i].first_page + k));
				if (x[i].kind == USNAP_EXT_ZERO) {
					memset(dst, 0, n);
				} else {
					memcpy(dst, data, n);
					data += n;
					c->data_pages += x[i].npages;
				}
			}
			ck_assert_uint_eq((uint64_t)(data - (raw ? raw : payload)), ch->raw_len);
			free(raw);
		}
	}
	free(f);
}

static void chain_free(struct chain *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		usnap_buf_free(c->img[i], c->len[i]);
		free(c->covered[i]);
	}
	c->n = 0;
	for (unsigned i = 0; i < c->nfiles; i++)
		free(c->paths[i]);
	c->nfiles = 0;
}

/* ---- the memory, the oracle, the writers ------------------------------------- */

struct world {
	struct usnap_mem shm;        /* region 0: memfd, MAP_SHARED */
	uint8_t *priv;               /* region 1: MAP_PRIVATE|MAP_ANONYMOUS */
	uint8_t *spare;              /* where mremap moves region 0 for a while */
	uffdsnap_t *ctx;
	char dir[PATH_MAX];
	uint8_t *want[NREG];         /* the oracle: the regions at the last instant */
	uint64_t seed;
	struct chain chain;
	unsigned files;
	uint64_t writes;             /* pages the writer wrote during (and just after) the last snapshot */
	bool storm;                  /* a zapper and pager-out beside the writer */
};

/* Pages 0..7 of region 0 are written by the test itself only. */
#define QUIET 8

static size_t reg_len(unsigned i)
{
	return i ? PRIV_LEN : SHM_LEN;
}

static uint8_t *reg_addr(struct world *w, unsigned i)
{
	return i ? w->priv : w->shm.addr;
}

static void world_new(struct world *w, uint32_t flags)
{
	/* small buffers: a sweep held by a shut sink stalls early (snap_held) */
	uffdsnap_opts_t o = usnap_opts(4 * MiB, 64 * KiB);

	memset(w, 0, sizeof(*w));
	usnap_memfd(&w->shm, SHM_LEN);
	w->priv = mmap(NULL, PRIV_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->spare = mmap(NULL, SHM_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(w->priv != MAP_FAILED && w->spare != MAP_FAILED);
	/* mixed contents: holes, zero pages, data */
	usnap_fill_mixed(w->shm.addr, SHM_LEN, 1, 7, 5);
	usnap_fill_mixed(w->priv, PRIV_LEN, 2, 9, 4);
	o.flags |= flags;
	w->ctx = usnap_ctx_new(&o);
	usnap_add(w->ctx, "shm", w->shm.addr, SHM_LEN);
	usnap_add(w->ctx, "priv", w->priv, PRIV_LEN);
	usnap_tmpdir(w->dir);
	w->seed = 1000;
}

static void world_free(struct world *w)
{
	uffdsnap_free(w->ctx);
	for (unsigned i = 0; i < NREG; i++)
		if (w->want[i])
			usnap_buf_free(w->want[i], reg_len(i));
	chain_free(&w->chain);
	usnap_mem_free(&w->shm);
	munmap(w->priv, PRIV_LEN);
	munmap(w->spare, SHM_LEN);
	usnap_rmdir(w->dir);
}

/* The oracle: nothing writes now, and the next begin comes before anything does. */
static void take_oracle(struct world *w)
{
	for (unsigned i = 0; i < NREG; i++) {
		if (w->want[i])
			usnap_buf_free(w->want[i], reg_len(i));
		w->want[i] = i ? usnap_copy(w->priv, PRIV_LEN) : usnap_mem_copy(&w->shm);
	}
}

static void write_page(struct world *w, unsigned r, size_t page)
{
	usnap_fill_page(reg_addr(w, r) + page * usnap_page, w->seed++, page);
}

/* Change `pct` percent of the pages of both regions, at random; returns how many. */
static size_t change_pages(struct world *w, double pct)
{
	uint64_t st = w->seed;
	size_t total = 0;

	for (unsigned r = 0; r < NREG; r++) {
		size_t np = reg_len(r) / usnap_page, n = (size_t)(np * pct / 100.0);
		for (size_t i = 0; i < n; i++)
			write_page(w, r, QUIET + usnap_splitmix64(&st) % (np - QUIET));
		total += n;
	}
	return total;
}

/* With w->storm, a second thread zaps and pages out shared pages while the writer writes. */
static void stormer(struct usnap_writers *ws, struct world *w, uint64_t st)
{
	const size_t np = SHM_LEN / usnap_page;

	while (!atomic_load(&ws->stop)) {
		size_t first = usnap_splitmix64(&st) % (np - 32);
		int advice = usnap_splitmix64(&st) & 1 ? MADV_DONTNEED : MADV_PAGEOUT;

		ck_assert_int_eq(madvise(w->shm.addr + first * usnap_page, 32 * usnap_page, advice), 0);
		atomic_fetch_add(&ws->progress[1], 1);
		usleep(300);
	}
}

/* Writers during a delta: change pages of both regions until stopped. */
static void writer_fn(struct usnap_writers *ws, unsigned idx)
{
	struct world *w = ws->arg;
	uint64_t st = 77 + idx + w->seed;

	if (idx == 1)
		return stormer(ws, w, st);
	while (!atomic_load(&ws->stop)) {
		unsigned r = usnap_splitmix64(&st) & 1;
		size_t page = QUIET + usnap_splitmix64(&st) % (reg_len(r) / usnap_page - QUIET);

		usnap_fill_page(reg_addr(w, r) + page * usnap_page, usnap_splitmix64(&st), page);
		if (atomic_fetch_add(&ws->progress[idx], 1) > 20)
			usleep(1000);
	}
}

/* Snapshot into the next file, full or delta; *st its stats; returns wait()'s result. */
static int snap(struct world *w, bool delta, void (*during)(struct world *), uffdsnap_stats_t *st, char *path)
{
	struct usnap_writers ws = { 0 };
	uffdsnap_snap_t *s;
	int r;

	snprintf(path, PATH_MAX + 32, "%s/%u.snap", w->dir, w->files++);
	take_oracle(w);
	r = delta ? uffdsnap_begin_delta_file(w->ctx, path, &s) : uffdsnap_begin_file(w->ctx, path, &s);
	ck_assert_msg(!r, "begin%s: %s (%s)", delta ? "_delta" : "", uffdsnap_strerror(r), uffdsnap_last_error());
	if (during) /* first: the snapshot's window is short under a sanitizer */
		during(w);
	w->seed += 7919; /* new bytes from this writer, not the last one's again */
	usnap_writers_start(&ws, w->storm ? 2 : 1, writer_fn, w);
	usnap_writers_wait_progress(&ws, 20, 10);
	r = uffdsnap_wait(s);
	usnap_writers_stop(&ws, 10);
	w->writes = atomic_load(&ws.progress[0]);
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	ck_assert_int_eq(uffdsnap_snap_stats(s, st), 0);
	if (r)
		printf("snapshot %s failed: %s\n", path, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	return r;
}

/* The chain's files through uffdsnap_reader_open_chain, compared with the oracle. */
static void check_chain_reader(struct world *w)
{
	uffdsnap_reader_t *r = NULL;
	int rc = uffdsnap_reader_open_chain(&r, (const char *const *)w->chain.paths, w->chain.nfiles);

	ck_assert_msg(!rc, "open_chain of %u files: %s (%s)", w->chain.nfiles, uffdsnap_strerror(rc),
		      uffdsnap_last_error());
	for (unsigned i = 0; i < NREG; i++) {
		uint8_t *got = usnap_buf_alloc(reg_len(i));
		int id = uffdsnap_reader_find(r, i ? "priv" : "shm");

		ck_assert_int_eq(id, (int)i);
		rc = uffdsnap_reader_read(r, (unsigned)id, 0, got, reg_len(i));
		ck_assert_msg(!rc, "chain read: %s (%s)", uffdsnap_strerror(rc), uffdsnap_reader_error(r));
		for (size_t p = 0; p < reg_len(i) / usnap_page; p++)
			usnap_assert_msg(!memcmp(got + p * usnap_page, w->want[i] + p * usnap_page, usnap_page),
					 "chain reader, %u files: region %u page %zu differs from the memory at the "
					 "last instant", w->chain.nfiles, i, p);
		usnap_buf_free(got, reg_len(i));
	}
	uffdsnap_reader_free(r);
}

/* Fold the file at path into the chain and compare its image with the oracle. */
static void check_link(struct world *w, const char *path, bool delta, const uffdsnap_stats_t *st)
{
	uint8_t prev[16];

	memcpy(prev, w->chain.id, 16);
	usnap_assert_exactly_once(st);
	if (!delta)
		chain_free(&w->chain);
	apply_file(&w->chain, path, delta);
	ck_assert(!memcmp(st->snap_id, w->chain.id, 16));
	ck_assert_uint_eq(st->depth, w->chain.depth);
	if (delta)
		ck_assert(!memcmp(st->parent_id, prev, 16));
	for (unsigned i = 0; i < NREG; i++)
		for (size_t p = 0; p < reg_len(i) / usnap_page; p++)
			usnap_assert_msg(!memcmp(w->chain.img[i] + p * usnap_page, w->want[i] + p * usnap_page, usnap_page),
					 "%s (depth %u): region %u page %zu differs from the memory at its instant", path,
					 w->chain.depth, i, p);
	ck_assert(w->chain.nfiles < sizeof(w->chain.paths) / sizeof(w->chain.paths[0]));
	w->chain.paths[w->chain.nfiles++] = strdup(path);
	check_chain_reader(w);
	printf("%s: depth %u, %llu pages of %llu written as data, %llu left out unchanged (forks %llu, remaps %llu)\n",
	       path, w->chain.depth, (unsigned long long)w->chain.data_pages, (unsigned long long)st->pages_total,
	       (unsigned long long)st->pages_unchanged, (unsigned long long)st->forks, (unsigned long long)st->remaps);
}

/* A snapshot that must succeed, checked as a link of the chain. */
static void snap_check(struct world *w, bool delta, void (*during)(struct world *), uffdsnap_stats_t *st)
{
	char path[PATH_MAX + 32];
	int r = snap(w, delta, during, st, path);

	ck_assert_msg(!r, "%s: %s", path, uffdsnap_strerror(r));
	check_link(w, path, delta, st);
}

static void expect_no_parent(uffdsnap_t *ctx, const char *why)
{
	uffdsnap_snap_t *s = (uffdsnap_snap_t *)1;
	char path[] = "/nonexistent-dir/never-written.snap";
	int r = uffdsnap_begin_delta_file(ctx, path, &s);

	ck_assert_msg(r == -ENOLINK, "begin_delta gave %d (%s), not -ENOLINK", r, uffdsnap_last_error());
	ck_assert_ptr_null(s);
	ck_assert_msg(strstr(uffdsnap_last_error(), why), "reason '%s' does not say '%s'", uffdsnap_last_error(), why);
	ck_assert(strstr(uffdsnap_strerror(r), "parent"));
	printf("-ENOLINK: %s\n", uffdsnap_last_error());
}

/*
 * A delta whose protection window stays open while `during` runs: every page
 * changed, so every chunk has data for the sink, which is held shut until the
 * sweep has stalled on the buffer bound, then slowed to 10 ms a call (tens of
 * chunks are left) while `during` runs. Without that, the snapshot may end
 * between two events `during` causes, and a region moved after its snapshot
 * ended is not followed (the next begin refuses it).
 */
static void snap_held(struct world *w, void (*during)(struct world *), uffdsnap_stats_t *st)
{
	char path[PATH_MAX + 32];
	struct usnap_cb cb;
	uffdsnap_snap_t *s;
	int fd;

	change_pages(w, 100.0);
	snprintf(path, sizeof(path), "%s/%u.snap", w->dir, w->files++);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	usnap_cb_init(&cb, fd);
	usnap_cb_gate(&cb, true);
	take_oracle(w);
	ck_assert_int_eq(uffdsnap_begin_delta(w->ctx, usnap_cb_sink(&cb), &s), 0);
	ck_assert_msg(usnap_wait_sweep_stalled(s, 20), "the sweep did not stall on the shut sink");
	/* Open, but slow: `during` may wait for the handler, which may wait for
	 * a buffer only the sink frees. */
	atomic_store(&cb.sleep_us, 10000);
	usnap_cb_gate(&cb, false);
	during(w);
	atomic_store(&cb.sleep_us, 0);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	ck_assert_int_eq(uffdsnap_snap_stats(s, st), 0);
	uffdsnap_snap_free(s);
	usnap_cb_destroy(&cb);
	close(fd);
	check_link(w, path, true, st);
}

/* ---- cases ---------------------------------------------------------------------- */

START_TEST(no_parent)
{
	struct world w;
	uffdsnap_stats_t st;
	uffdsnap_snap_t *s, *busy;
	struct usnap_cb cb;
	struct usnap_mem extra;
	char path[PATH_MAX + 32];
	int r, fd;

	usnap_watchdog(60, "no_parent");
	/* without the option: never a parent, even after a full snapshot */
	world_new(&w, 0);
	expect_no_parent(w.ctx, "UFFDSNAP_OPT_DELTA");
	ck_assert_int_eq(snap(&w, false, NULL, &st, path), 0);
	expect_no_parent(w.ctx, "UFFDSNAP_OPT_DELTA");
	world_free(&w);

	world_new(&w, UFFDSNAP_OPT_DELTA);
	expect_no_parent(w.ctx, "no snapshot has completed");
	snap_check(&w, false, NULL, &st);
	snap_check(&w, true, NULL, &st);
	/* a busy context says busy, not "no parent"; refusals at the door keep the parent */
	snprintf(path, sizeof(path), "%s/held.snap", w.dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	usnap_cb_init(&cb, fd);
	usnap_cb_gate(&cb, true);
	take_oracle(&w);
	ck_assert_int_eq(uffdsnap_begin_delta(w.ctx, usnap_cb_sink(&cb), &s), 0);
	ck_assert_int_eq(uffdsnap_begin_delta_file(w.ctx, "/nonexistent-dir/x", &busy), -EBUSY);
	usnap_cb_gate(&cb, false);
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	st.size = sizeof(st);
	ck_assert_int_eq(uffdsnap_snap_stats(s, &st), 0);
	uffdsnap_snap_free(s);
	usnap_cb_destroy(&cb);
	close(fd);
	check_link(&w, path, true, &st);
	ck_assert_int_eq(uffdsnap_begin_delta(w.ctx, NULL, &busy), -EINVAL);
	snap_check(&w, true, NULL, &st);
	ck_assert_int_eq(uffdsnap_begin_file(w.ctx, "/nonexistent-dir/x", &s), -ENOENT);
	/* a failed begin that never armed anything (the sink's directory is
	 * missing) still ends the chain: simpler to state than which failures
	 * left the fingerprints whole */
	expect_no_parent(w.ctx, "failed");
	snap_check(&w, false, NULL, &st);

	/* cancelled */
	snprintf(path, sizeof(path), "%s/cancelled.snap", w.dir);
	ck_assert_int_eq(uffdsnap_begin_file(w.ctx, path, &s), 0);
	uffdsnap_cancel(s);
	r = uffdsnap_wait(s);
	uffdsnap_snap_free(s);
	if (r == -ECANCELED) /* a snapshot may finish before the cancel lands */
		expect_no_parent(w.ctx, "cancelled");
	snap_check(&w, false, NULL, &st);

	/* failed after its begin: the sink refuses the first write */
	usnap_cb_init(&cb, -1);
	cb.fail_at = 1;
	cb.fail_err = -EIO;
	ck_assert_int_eq(uffdsnap_begin_delta(w.ctx, usnap_cb_sink(&cb), &s), 0);
	ck_assert_int_eq(uffdsnap_wait(s), -EIO);
	uffdsnap_snap_free(s);
	usnap_cb_destroy(&cb);
	expect_no_parent(w.ctx, "failed");
	snap_check(&w, false, NULL, &st);
	snap_check(&w, true, NULL, &st);

	/* a region added since */
	usnap_memfd(&extra, 64 * KiB);
	usnap_add(w.ctx, "extra", extra.addr, 64 * KiB);
	expect_no_parent(w.ctx, "'extra' was added");
	uffdsnap_free(w.ctx);
	w.ctx = NULL;
	usnap_mem_free(&extra);
	world_free(&w);
}
END_TEST

/*
 * 1 % changed: the delta's data are the pages changed since the full
 * snapshot's instant and none other; a page written back to its old bytes is
 * left out.
 */
START_TEST(one_percent)
{
	struct world w;
	uffdsnap_stats_t full, d;
	const size_t np = (SHM_LEN + PRIV_LEN) / usnap_page;
	size_t changed;
	uint8_t *old;

	usnap_watchdog(60, "one_percent");
	world_new(&w, UFFDSNAP_OPT_DELTA);
	snap_check(&w, false, NULL, &full);
	changed = change_pages(&w, 1.0) + w.writes;
	/* back and forth: a page changed, then its old bytes again */
	old = usnap_copy(w.shm.addr + 3 * usnap_page, usnap_page);
	write_page(&w, 0, 3);
	memcpy(w.shm.addr + 3 * usnap_page, old, usnap_page);
	usnap_buf_free(old, usnap_page);
	snap_check(&w, true, NULL, &d);
	ck_assert_msg(!w.chain.covered[0][3], "a page written back to its old bytes is in the delta");
	ck_assert_msg(w.chain.data_pages <= changed, "%llu data pages, %zu changed",
		      (unsigned long long)w.chain.data_pages, changed);
	ck_assert_uint_ge(d.pages_unchanged, np - changed);
	/* at most the changed pages stored raw, each with an extent, a chunk's head and index entry */
	ck_assert_uint_le(d.bytes_out, changed * (usnap_page + 128) + 64 * KiB);
	printf("1 %% (%zu pages changed of %zu): full %llu bytes, delta %llu bytes\n", changed, np,
	       (unsigned long long)full.bytes_out, (unsigned long long)d.bytes_out);
	/* nothing changed but what the writer wrote during the last delta */
	changed = w.writes;
	snap_check(&w, true, NULL, &d);
	ck_assert_uint_le(w.chain.data_pages, changed);
	world_free(&w);
}
END_TEST

static void zap(struct world *w)
{
	/* shared: the pages stay in the file; private: they read as zeros now */
	ck_assert_int_eq(madvise(w->shm.addr + 16 * usnap_page, 64 * usnap_page, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(w->priv + 8 * usnap_page, 16 * usnap_page, MADV_DONTNEED), 0);
}

static void punch(struct world *w)
{
	ck_assert_int_eq(fallocate(w->shm.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100 * usnap_page,
				   50 * usnap_page), 0);
}

/* Truncate the file and grow it back: every page of region 0 reads as zeros. */
static void truncate_regrow(struct world *w)
{
	ck_assert_int_eq(ftruncate(w->shm.fd, SHM_LEN / 2), 0);
	ck_assert_int_eq(ftruncate(w->shm.fd, SHM_LEN), 0);
}

/* A child writes shared pages, then exits. */
static void fork_write(struct world *w)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (!pid) {
		for (size_t p = 200; p < 240; p++)
			usnap_fill_page(w->shm.addr + p * usnap_page, 5555 + p, p);
		w->priv[0] = 1; /* its own copy: not the parent's region */
		_exit(0);
	}
	ck_assert_int_eq(usnap_wait_child(pid, 20, "fork_write child"), 0);
}

/*
 * Move region 0 to the spare range and reserve the range it left as the next
 * spare. Never MREMAP_FIXED back onto a range left unmapped while other
 * threads run: their allocator may have mapped something there meanwhile (a
 * worker's zstd context did, under AddressSanitizer), and FIXED would unmap it.
 */
static void move_region(struct world *w)
{
	uint8_t *to = w->spare, *from = w->shm.addr;
	void *a = mremap(from, SHM_LEN, SHM_LEN, MREMAP_MAYMOVE | MREMAP_FIXED, to);

	ck_assert_ptr_eq(a, to);
	w->shm.addr = to;
	usnap_fill_page(to + 300 * usnap_page, w->seed++, 300);
	w->spare = mmap(from, SHM_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (w->spare == MAP_FAILED)
		w->spare = mmap(NULL, SHM_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(w->spare != MAP_FAILED);
}

/* Away and back where it was registered (during a snapshot: snap_held). */
static void remap(struct world *w)
{
	uint8_t *home = w->shm.addr;

	move_region(w);
	move_region(w);
	ck_assert_ptr_eq(w->shm.addr, home);
}

/* A write through the file: no fault (a blind spot during a snapshot, so only between two). */
static void pwrite_file(struct world *w)
{
	uint8_t page[65536];

	usnap_fill_page(page, 9191, 0);
	ck_assert_int_eq(pwrite(w->shm.fd, page, usnap_page, 400 * (off_t)usnap_page), (ssize_t)usnap_page);
}

static void (*const disturb[])(struct world *) = { zap, punch, truncate_regrow, fork_write, remap, pwrite_file };
static const char *const disturb_name[] = { "zap", "punch", "truncate-regrow", "fork", "mremap", "pwrite" };

/* Each disturbance between two snapshots, then the chain goes on exact. */
START_TEST(disturb_between)
{
	struct world w;
	uffdsnap_stats_t st;

	usnap_watchdog(120, "disturb_between");
	world_new(&w, UFFDSNAP_OPT_DELTA);
	snap_check(&w, false, NULL, &st);
	for (unsigned k = 0; k < sizeof(disturb) / sizeof(disturb[0]); k++) {
		printf("between: %s\n", disturb_name[k]);
		change_pages(&w, 0.5);
		disturb[k](&w);
		snap_check(&w, true, NULL, &st);
	}
	/* and what the writer wrote during the last one */
	snap_check(&w, true, NULL, &st);
	world_free(&w);
}
END_TEST

/*
 * Each disturbance while a delta runs (with a writer). A hole punch or a
 * truncate of pages not copied yet, or MADV_DONTNEED of private ones, fails
 * that snapshot (-ESTALE, test-punch);
 * then the next delta must be refused, and a full snapshot starts a new chain.
 */
START_TEST(disturb_during)
{
	struct world w;
	uffdsnap_stats_t st;
	char path[PATH_MAX + 32];

	usnap_watchdog(120, "disturb_during");
	world_new(&w, UFFDSNAP_OPT_DELTA);
	snap_check(&w, false, NULL, &st);
	for (unsigned k = 0; k < sizeof(disturb) / sizeof(disturb[0]); k++) {
		int r;

		if (disturb[k] == pwrite_file)
			continue;
		printf("during: %s\n", disturb_name[k]);
		change_pages(&w, 0.5);
		/* pages removed before they were copied: private ones by the zap */
		if (disturb[k] == zap || disturb[k] == punch || disturb[k] == truncate_regrow) {
			r = snap(&w, true, disturb[k], &st, path);
			if (r) {
				ck_assert_int_eq(r, -ESTALE);
				expect_no_parent(w.ctx, "failed");
				snap_check(&w, false, NULL, &st);
				continue;
			}
			/* it copied the pages first: an exact delta */
			check_link(&w, path, true, &st);
		} else if (disturb[k] == remap) {
			snap_held(&w, remap, &st);
			ck_assert_uint_eq(st.remaps, 2);
		} else {
			snap_check(&w, true, disturb[k], &st);
		}
	}
	/* what the last disturbance and the writer changed during the last delta */
	snap_check(&w, true, NULL, &st);
	world_free(&w);
}
END_TEST

/*
 * Deltas under a storm: while each delta runs, the writer writes and another
 * thread zaps (MADV_DONTNEED) and pages out (MADV_PAGEOUT) shared pages, copied
 * or not; every link stays exact.
 */
START_TEST(storm)
{
	struct world w;
	uffdsnap_stats_t st;

	usnap_watchdog(120, "storm");
	world_new(&w, UFFDSNAP_OPT_DELTA);
	w.storm = true;
	snap_check(&w, false, NULL, &st);
	for (unsigned k = 0; k < (USNAP_SANITIZED ? 3 : 6); k++) {
		change_pages(&w, 2.0);
		snap_check(&w, true, NULL, &st);
	}
	w.storm = false;
	snap_check(&w, true, NULL, &st);
	world_free(&w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("delta");
	TCase *tc = tcase_create("delta");

	usnap_test_require_uffd();
	tcase_set_timeout(tc, 150);
	tcase_add_test(tc, no_parent);
	tcase_add_test(tc, one_percent);
	tcase_add_test(tc, disturb_between);
	tcase_add_test(tc, disturb_during);
	tcase_add_test(tc, storm);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
