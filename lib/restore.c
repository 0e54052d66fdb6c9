/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Eager restore: a region of a snapshot file into a new memfd, a file (on
 * hugetlbfs through a mapping), or existing memory, all at once
 * (uffdsnap_restore_memfd/_file/_into), and
 * every region of a context from the snapshot's regions of the same names
 * (uffdsnap_restore_ctx).
 *
 * The caller's thread and threads-1 helpers each take the next chunk index
 * from one counter, load it with their own reader clone (reader-private.h:
 * own buffers and zstd context) and place its DATA extents. Only DATA is ever
 * written: into a fresh memfd or file a ZERO extent simply stays a hole.
 *
 * A per-page bitmap, claimed with atomic OR as extents are placed, checks that
 * each page is recorded at most once; at the end the claimed count must equal
 * the region's pages, so a file whose chunks overlap or miss pages fails with
 * -EBADMSG instead of restoring two versions of a page or a silent hole.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "bitmap.h"
#include "latch.h"
#include "outfile.h"
#include "reader-private.h"
#include "uffdsnap-private.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define RS_MAX_THREADS 64

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

/* Where the pages go. */
struct rs_target {
	int fd;             /* >= 0: pwrite at page offsets into a fresh (all-hole) file */
	uint8_t *addr;      /* else: memory */
	bool fresh;         /* the memory is a fresh mapping of holes: zero pages need nothing */
};

struct rs_job {
	unsigned id;
	const struct rs_target *t;
	uint32_t page_shift;
	uint64_t npages;
	size_t nchunks;
	_Atomic size_t next;            /* the next chunk index to take */
	_Atomic uint64_t *claimed;      /* bitmap: page placed */
	_Atomic uint64_t pages_data, pages_zero;
	struct usnap_latch fail;        /* first error wins; the others stop */
};

struct rs_worker {
	struct rs_job *j;
	uffdsnap_reader_t *r;           /* a clone, freed by the caller */
};

__attribute__((format(printf, 3, 4))) static void rs_fail(struct rs_job *j, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_latch_vset(&j->fail, err, fmt, ap);
	va_end(ap);
}

/* Mark pages [first, first + n) placed; -EBADMSG with *dup if one already was. */
static int claim_pages(_Atomic uint64_t *bits, uint64_t first, uint64_t n, uint64_t *dup)
{
	*dup = usnap_abits_set(bits, first, first + n);
	return *dup < first + n ? -EBADMSG : 0;
}

/* Zero pages of existing memory: free them where that reads back as zero
 * (shared shmem), else write only the pages that are not zero already
 * (reading private anonymous memory maps the shared zero page: no allocation). */
static void zero_mem(uint8_t *p, size_t len, size_t page)
{
	if (!madvise(p, len, MADV_REMOVE))
		return;
	for (size_t off = 0; off < len; off += page) {
		const uint64_t *w = (const uint64_t *)(p + off);
		size_t i = 0;

		while (i < page / 8 && !w[i])
			i++;
		if (i < page / 8)
			memset(p + off, 0, page);
	}
}

static int write_at(struct rs_job *j, uint64_t at, const uint8_t *src, uint64_t len)
{
	while (len) {
		ssize_t n = pwrite(j->t->fd, src, len, (off_t)at);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n ? -errno : -EIO;
			rs_fail(j, err, "writing %" PRIu64 " bytes at offset %" PRIu64 ": %s", len, at, strerror(-err));
			return err;
		}
		src += n, at += (uint64_t)n, len -= (uint64_t)n;
	}
	return 0;
}

/*
 * Place the extents of chunk idx. Into memory, the pages are claimed and
 * mapped first, then decompressed where they belong (no bounce buffer: a
 * memcpy less per byte); into a file, written from the reader's buffer.
 */
static int place(struct rs_job *j, uffdsnap_reader_t *r, size_t idx)
{
	struct usnap_rchunk cc, *c = &cc;
	uint64_t data_off = 0, dup;
	int rc = j->t->addr ? usnap_reader_chunk_meta(r, j->id, idx, c) : usnap_reader_chunk(r, j->id, idx, c);

	if (rc) {
		rs_fail(j, rc, "%s", uffdsnap_reader_error(r));
		return rc;
	}

	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];
		uint64_t at = e->first_page << j->page_shift, len = (uint64_t)e->npages << j->page_shift;

		if (claim_pages(j->claimed, e->first_page, e->npages, &dup)) {
			rs_fail(j, -EBADMSG, "page %" PRIu64 " is recorded twice (again in chunk %zu of the region)",
				dup, idx);
			return -EBADMSG;
		}
		if (e->kind == USNAP_EXT_ZERO) {
			/* a fresh file is all holes already */
			if (j->t->addr && !j->t->fresh)
				zero_mem(j->t->addr + at, len, (size_t)1 << j->page_shift);
			atomic_fetch_add_explicit(&j->pages_zero, e->npages, memory_order_relaxed);
			continue;
		}
		if (j->t->addr) {
			/* one call allocates and maps the pages: a first-touch fault per
			 * page from the copy costs several times more (docs/restore.md) */
			madvise(j->t->addr + at, len, MADV_POPULATE_WRITE);
		} else if ((rc = write_at(j, at, c->data + data_off, len))) {
			return rc;
		}
		data_off += len;
		atomic_fetch_add_explicit(&j->pages_data, e->npages, memory_order_relaxed);
	}
	if (j->t->addr && (rc = usnap_reader_chunk_scatter(r, j->t->addr))) {
		rs_fail(j, rc, "%s", uffdsnap_reader_error(r));
		return rc;
	}
	return 0;
}

static void work(struct rs_job *j, uffdsnap_reader_t *r)
{
	while (!usnap_latch_err(&j->fail)) {
		size_t i = atomic_fetch_add(&j->next, 1);

		if (i >= j->nchunks || place(j, r, i))
			return;
	}
}

static void *worker_main(void *arg)
{
	struct rs_worker *w = arg;

	work(w->j, w->r);
	return NULL;
}

static unsigned thread_count(const uffdsnap_restore_opts_t *o, size_t nchunks)
{
	long n = o && o->threads > 0 ? o->threads : sysconf(_SC_NPROCESSORS_ONLN); /* size: check_structs() */

	if (n < 1)
		n = 1;
	if (n > RS_MAX_THREADS)
		n = RS_MAX_THREADS;
	if ((size_t)n > nchunks)
		n = nchunks ? (long)nchunks : 1;
	return (unsigned)n;
}

static void stats_out(uffdsnap_restore_stats_t *out, const uffdsnap_restore_stats_t *st)
{
	size_t n;

	if (!out)
		return;
	n = out->size < sizeof(*st) ? out->size : sizeof(*st);
	memcpy((char *)out + sizeof(out->size), (const char *)st + sizeof(st->size), n - sizeof(st->size));
}

/* The size-versioned structs, by the one rule (usnap_check_size). */
static int check_structs(const uffdsnap_restore_opts_t *opts, const uffdsnap_restore_stats_t *stats)
{
	if (opts && usnap_check_size("uffdsnap_restore", "uffdsnap_restore_opts_t", opts->size,
				     USNAP_SIZE_UPTO(uffdsnap_restore_opts_t, threads), sizeof(*opts)))
		return -EINVAL;
	if (opts && opts->threads < 0)
		return usnap_err(-EINVAL, "uffdsnap_restore_opts_t.threads is %d: 0 (one per CPU) or more", opts->threads);
	if (opts && opts->size >= USNAP_SIZE_UPTO(uffdsnap_restore_opts_t, flags) && (opts->flags & ~UFFDSNAP_RESTORE_HUGETLB))
		return usnap_err(-EINVAL, "uffdsnap_restore_opts_t.flags has unknown bits 0x%x", opts->flags);
	if (stats && usnap_check_size("uffdsnap_restore", "uffdsnap_restore_stats_t", stats->size,
				      USNAP_SIZE_UPTO(uffdsnap_restore_stats_t, threads), sizeof(*stats)))
		return -EINVAL;
	return 0;
}

/* Check the arguments common to every restore: 0, or an error recorded. */
static int check_region(uffdsnap_reader_t *r, unsigned id, uffdsnap_region_info_t *ri,
			const uffdsnap_restore_opts_t *opts, const uffdsnap_restore_stats_t *stats)
{
	int rc;

	if ((rc = check_structs(opts, stats)))
		return rc;
	if (!r)
		return usnap_err(-EINVAL, "restore: the reader must not be NULL");
	ri->size = sizeof(*ri);
	if (uffdsnap_reader_region(r, id, ri))
		return usnap_err(-ENOENT, "restore: the snapshot has no region %u", id);
	if ((rc = usnap_reader_ready(r, id)))
		return usnap_err(rc, "region '%s': %s", ri->name, uffdsnap_reader_error(r));
	return 0;
}

/* Restore region id of r into t. The region was checked by check_region(). */
static int run(uffdsnap_reader_t *r, unsigned id, const char *name, uint64_t length, const struct rs_target *t,
	       const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	struct rs_worker w[RS_MAX_THREADS] = { 0 };
	pthread_t tid[RS_MAX_THREADS];
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	struct rs_job *j = calloc(1, sizeof(*j));
	uint64_t t0 = usnap_now_ns(), placed;
	unsigned n, nw, started;
	int rc = 0;

	if (!j)
		return usnap_err(-ENOMEM, "out of memory");
	uffdsnap_reader_info(r, &info);
	j->id = id;
	j->t = t;
	j->page_shift = (uint32_t)__builtin_ctz(info.page_size);
	j->npages = length / info.page_size;
	j->nchunks = usnap_reader_nchunks(r, id);
	j->claimed = calloc((j->npages + 63) / 64, sizeof(*j->claimed));
	n = thread_count(opts, j->nchunks);
	if (!j->claimed) {
		rc = usnap_err(-ENOMEM, "region '%s': out of memory for a bitmap of %" PRIu64 " pages", name,
			       j->npages);
		goto out;
	}
	/* the caller's thread is worker 0 and uses r itself; a clone or a
	 * thread that cannot be had is not fatal: fewer threads do the work */
	for (nw = 1; nw < n && !usnap_reader_clone(r, &w[nw].r); nw++)
		w[nw].j = j;
	started = usnap_crew_start(tid, nw - 1, worker_main, &w[1], sizeof(w[0]), "usnap-restore", NULL);
	usnap_clear_err();
	work(j, r);
	usnap_crew_join(tid, started);
	for (unsigned i = 1; i < nw; i++)
		uffdsnap_reader_free(w[i].r);
	st.threads = started + 1;
	placed = j->pages_data + j->pages_zero;
	if ((rc = usnap_latch_err(&j->fail)))
		usnap_err(rc, "region '%s': %s", name, usnap_latch_msg(&j->fail));
	else if (placed != j->npages)
		rc = usnap_err(-EBADMSG, "region '%s': %" PRIu64 " of its %" PRIu64 " pages are not recorded in the "
			       "snapshot", name, j->npages - placed, j->npages);
	st.elapsed_ns = usnap_now_ns() - t0;
	st.bytes_total = length;
	st.pages_data = j->pages_data;
	st.pages_zero = j->pages_zero;
	st.bytes_data = j->pages_data << j->page_shift;
	st.chunks = j->nchunks;
	stats_out(stats, &st);
out:
	free(j->claimed);
	free(j);
	return rc;
}

USNAP_EXPORT void uffdsnap_restore_opts_init_size(uffdsnap_restore_opts_t *opts, size_t size)
{
	uffdsnap_restore_opts_t d = { .size = sizeof(d) };

	usnap_opts_fill(opts, size, &d, sizeof(d));
}

/*
 * hugetlbfs has no write(2) (pwrite fails with EINVAL): the file is sized,
 * mapped and filled as uffdsnap_restore_into() fills memory. A shared
 * hugetlbfs mapping reserves its huge pages at mmap, so running out of them
 * is an -ENOMEM here, never a SIGBUS while the pages are written. The file
 * holds whole huge pages only.
 */
static int run_hugetlbfs(uffdsnap_reader_t *r, unsigned id, const uffdsnap_region_info_t *ri, int fd, size_t huge,
			 const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	struct rs_target t = { .fd = -1, .fresh = true };
	int rc;

	if (!ri->length || ri->length % huge)
		return usnap_err(-EINVAL, "region '%s' is %" PRIu64 " bytes: a file on hugetlbfs holds whole huge "
				 "pages of %zu KiB; restore it to tmpfs or /dev/shm instead", ri->name, ri->length,
				 huge >> 10);
	if (ftruncate(fd, (off_t)ri->length))
		return usnap_err(-errno, "region '%s': sizing the hugetlbfs file to %" PRIu64 " bytes: %s", ri->name,
				 ri->length, strerror(errno));
	t.addr = mmap(NULL, ri->length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (t.addr == MAP_FAILED)
		return usnap_err(-errno, "region '%s': mapping %" PRIu64 " bytes of hugetlbfs: %s%s", ri->name,
				 ri->length, strerror(errno),
				 errno == ENOMEM ? " (not enough free huge pages: see vm.nr_hugepages)" : "");
	rc = run(r, id, ri->name, ri->length, &t, opts, stats);
	munmap(t.addr, ri->length);
	return rc;
}

/* Restore into fd, which is empty; ftruncate()s it to the region first. */
static int run_fd(uffdsnap_reader_t *r, unsigned id, const uffdsnap_region_info_t *ri, int fd,
		  const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	struct rs_target t = { .fd = fd };
	struct statfs sfs;

	if (!fstatfs(fd, &sfs) && sfs.f_type == HUGETLBFS_MAGIC)
		return run_hugetlbfs(r, id, ri, fd, (size_t)sfs.f_bsize, opts, stats);
	if (ftruncate(fd, (off_t)ri->length))
		return usnap_err(-errno, "region '%s': sizing the output to %" PRIu64 " bytes: %s", ri->name,
				 ri->length, strerror(errno));
	return run(r, id, ri->name, ri->length, &t, opts, stats);
}

USNAP_EXPORT int uffdsnap_restore_memfd(uffdsnap_reader_t *r, unsigned id, int *fd_out,
					const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	uffdsnap_region_info_t ri;
	char name[250];
	bool huge;
	int fd, rc;

	usnap_clear_err();
	if (!fd_out)
		return usnap_err(-EINVAL, "uffdsnap_restore_memfd: fd_out must not be NULL");
	*fd_out = -1;
	if ((rc = check_region(r, id, &ri, opts, stats)))
		return rc;
	/* memfd names are at most 249 bytes; the name is only a label in /proc */
	snprintf(name, sizeof(name), "%s", ri.name);
	huge = opts && opts->size >= USNAP_SIZE_UPTO(uffdsnap_restore_opts_t, flags) &&
	       (opts->flags & UFFDSNAP_RESTORE_HUGETLB);
	if ((fd = memfd_create(name, MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0))) < 0)
		return usnap_err(-errno, "region '%s': memfd_create%s: %s", ri.name, huge ? " (MFD_HUGETLB)" : "",
				 strerror(errno));
	if ((rc = run_fd(r, id, &ri, fd, opts, stats))) {
		close(fd);
		return rc;
	}
	*fd_out = fd;
	return 0;
}

USNAP_EXPORT int uffdsnap_restore_file(uffdsnap_reader_t *r, unsigned id, const char *path,
				       const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	uffdsnap_region_info_t ri;
	char msg[512], *tmp;
	int fd, rc;

	usnap_clear_err();
	if (!path || !*path)
		return usnap_err(-EINVAL, "uffdsnap_restore_file: path must not be NULL or empty");
	/* an incomplete snapshot or a stream is refused before any file is made */
	if ((rc = check_region(r, id, &ri, opts, stats)))
		return rc;
	if ((fd = usnap_out_create(path, 0600, &tmp)) < 0)
		return usnap_err(fd, "region '%s': %s", ri.name, uffdsnap_last_error());
	if ((rc = run_fd(r, id, &ri, fd, opts, stats))) {
		close(fd);
		unlink(tmp);
	} else if ((rc = usnap_out_commit(fd, tmp, path, false, msg, sizeof(msg)))) {
		usnap_err(rc, "region '%s': %s", ri.name, msg);
	}
	free(tmp);
	return rc;
}

USNAP_EXPORT int uffdsnap_restore_into(uffdsnap_reader_t *r, unsigned id, void *addr, size_t len,
				       const uffdsnap_restore_opts_t *opts, uffdsnap_restore_stats_t *stats)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_region_info_t ri;
	struct rs_target t = { .fd = -1, .addr = addr };
	int rc;

	usnap_clear_err();
	if ((rc = check_region(r, id, &ri, opts, stats)))
		return rc;
	uffdsnap_reader_info(r, &info);
	if (len != ri.length)
		return usnap_err(-EINVAL, "region '%s' is %" PRIu64 " bytes in the snapshot, the memory given for it "
				 "%zu bytes: the lengths must match", ri.name, ri.length, len);
	if (!addr || (uintptr_t)addr % info.page_size)
		return usnap_err(-EINVAL, "region '%s': the memory at %p is not aligned to the snapshot's page size "
				 "%u", ri.name, addr, info.page_size);
	return run(r, id, ri.name, ri.length, &t, opts, stats);
}

USNAP_EXPORT int uffdsnap_restore_ctx(uffdsnap_reader_t *r, uffdsnap_t *ctx, const uffdsnap_restore_opts_t *opts,
				      uffdsnap_restore_stats_t *stats)
{
	uffdsnap_restore_stats_t sum = { .size = sizeof(sum) };
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	int rc = 0, id;

	usnap_clear_err();
	if (!r || !ctx)
		return usnap_err(-EINVAL, "uffdsnap_restore_ctx: reader and context must not be NULL");
	if ((rc = check_structs(opts, stats)))
		return rc;
	/* held throughout: a snapshot must not start on half-restored memory */
	pthread_mutex_lock(&ctx->lock);
	if (ctx->active)
		rc = usnap_err(-EBUSY, "a snapshot is running on this context");
	else if (!ctx->nregs)
		rc = usnap_err(-ENOENT, "the context has no regions");
	/* match every region before writing any */
	for (unsigned i = 0; i < ctx->nregs && !rc; i++) {
		const struct usnap_reg *g = &ctx->regs[i];

		if ((id = uffdsnap_reader_find(r, g->name)) < 0)
			rc = usnap_err(-ENOENT, "region '%s' is registered with the context but not in the snapshot",
				       g->name);
		else if (!(rc = check_region(r, (unsigned)id, &ri, NULL, NULL)) && ri.length != g->len)
			rc = usnap_err(-EINVAL, "region '%s' is %" PRIu64 " bytes in the snapshot and %zu bytes in the "
				       "context: the lengths must match", g->name, ri.length, g->len);
	}
	for (unsigned i = 0; i < ctx->nregs && !rc; i++) {
		const struct usnap_reg *g = &ctx->regs[i];
		uffdsnap_restore_stats_t st = { .size = sizeof(st) };
		struct rs_target t = { .fd = -1, .addr = (uint8_t *)g->addr };

		id = uffdsnap_reader_find(r, g->name);
		if (!(rc = run(r, (unsigned)id, g->name, g->len, &t, opts, &st))) {
			sum.threads = st.threads > sum.threads ? st.threads : sum.threads;
			sum.elapsed_ns += st.elapsed_ns;
			sum.bytes_total += st.bytes_total;
			sum.bytes_data += st.bytes_data;
			sum.pages_data += st.pages_data;
			sum.pages_zero += st.pages_zero;
			sum.chunks += st.chunks;
		}
	}
	pthread_mutex_unlock(&ctx->lock);
	if (!rc)
		stats_out(stats, &sum);
	return rc;
}
