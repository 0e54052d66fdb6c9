/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy (post-copy) restore: uffdsnap_lazy_start/wait/stats/error/free.
 *
 * The program's regions are registered with a userfaultfd in MISSING mode and
 * start() returns. Two threads, each with its own reader clone:
 *  - the handler reads fault messages and serves each by loading the one
 *    chunk that records the faulting page (found in the reader's page map)
 *    and placing every page of that chunk that is not there yet: pages a
 *    writer's fault copied sit scattered in fault chunks, and a chunk placed
 *    whole is never needed again;
 *  - the prefetcher walks every chunk of every region in index order and
 *    places the chunks nobody has taken yet.
 * Each chunk of a region of small pages is taken by one thread (a state per
 * chunk, claimed with compare-and-swap), so it is decompressed at most once
 * per restore; a fault on a page whose chunk the prefetcher is placing waits
 * for it, which costs at most that one chunk.
 * Pages are placed with UFFDIO_COPY. It never overwrites: a page already
 * present fails with EEXIST and is skipped, so the two threads can race for
 * the same chunk without locks and without ever undoing a store the program
 * made after its page arrived. (pwrite into the memfd + UFFDIO_CONTINUE in
 * MINOR mode measured the same speed here, docs/restore.md, but needs page
 * ownership tracking to be safe against that race.)
 *
 * Pages the snapshot records as zero are not placed by the prefetcher: once
 * the prefetcher is through, the registration is dropped and an untouched
 * zero page stays a hole that reads as zero. A zero page touched before that
 * is filled with UFFDIO_ZEROPAGE, with its zero neighbours in a 64 KiB window.
 *
 * hugetlbfs regions take UFFDIO_COPY in whole huge pages only (and have no
 * UFFDIO_ZEROPAGE): there a fault or the prefetcher gathers a whole huge
 * page from every chunk that records part of it, zeros where the snapshot
 * has zero pages, and places it at once. A huge page of zero pages only is
 * placed when touched, as a zero page is elsewhere. Huge pages are claimed
 * as chunks are elsewhere (take_huge), so the two threads never gather the
 * same one: a fault on a huge page the prefetcher is gathering waits for it.
 *
 * Failure (a chunk that does not load, an ioctl error): the first error is
 * logged once; the faulting thread gets SIGBUS through UFFDIO_POISON (or
 * tgkill where the kernel lacks it) rather than a wait that never ends; when
 * the prefetcher is through, every page neither placed nor known to be zero
 * is poisoned and the registration dropped, so later touches get SIGBUS too.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "latch.h"
#include "reader-private.h"
#include "bitmap.h"
#include "restore-private.h"
#include "uffd.h"
#include "uffdsnap-private.h"

#define LZ_MSGS 64                 /* fault messages read at once */
#define LZ_ZERO_WINDOW 16          /* pages: a touched zero page fills its zero neighbours in this window */
#define LZ_MINCORE_PAGES (1u << 18)

/* The state of a chunk of a region of small pages: every page of a chunk
 * DONE is present or known to be zero; FAILED, it could not be loaded or
 * placed (the restore has failed). */
enum { LZ_CHUNK_FREE, LZ_CHUNK_BUSY, LZ_CHUNK_DONE, LZ_CHUNK_FAILED };

struct lz_region {
	const char *name;              /* in the handler's clone */
	unsigned id;                   /* in the snapshot */
	uintptr_t addr;
	size_t len;
	uint64_t npages;
	size_t nchunks;
	_Atomic uint8_t *cstate;       /* per chunk (per huge page in a hugetlbfs region): LZ_CHUNK_* */
	_Atomic uint64_t *present;     /* bitmap: placed by us (data, or zero after a touch) */
	_Atomic uint64_t *zero;        /* bitmap: recorded as zero in a chunk already loaded */
	uint64_t upages;               /* pages placed at once: 1, or those of a huge page (hugetlbfs) */
	bool registered;
};

struct uffdsnap_lazy {
	int uffd, efd;
	pid_t pid;                     /* the process whose memory this is (SIGBUS fallback) */
	bool have_poison;
	uint32_t flags;
	uint32_t page_shift;
	struct lz_region *regs;
	unsigned nregs;
	uffdsnap_reader_t *rh, *rp;    /* the handler's and the prefetcher's clones */
	uint8_t *hbuf_h, *hbuf_p;      /* the handler's and the prefetcher's huge page, gathered */
	size_t hbuf_len;               /* the largest huge page of any region; 0 if none */

	pthread_t handler, prefetcher;
	bool prefetcher_started;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	pthread_cond_t chunk_cv;       /* a chunk left LZ_CHUNK_BUSY */
	bool go;                       /* the prefetcher may run */
	_Atomic bool prefetch_done;
	_Atomic bool closing;          /* free(): the handler must leave even if it keeps a registration */
	_Atomic int state;             /* UFFDSNAP_LAZY_* */

	struct usnap_latch fail;       /* first error wins */

	uint64_t t0, start_ns;
	_Atomic uint64_t resident_ns;
	uint64_t pages_total;
	_Atomic uint64_t pages_fault, pages_prefetch, pages_zero_fault, faults, chunks_fault, chunks_prefetch;
};

/* ---- errors ------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static void lz_fail(uffdsnap_lazy_t *lz, int err, const char *fmt, ...)
{
	va_list ap;
	int had;

	va_start(ap, fmt);
	had = usnap_latch_vset(&lz->fail, err, fmt, ap);
	va_end(ap);
	if (!had && !(lz->flags & UFFDSNAP_LAZY_QUIET))
		usnap_log(USNAP_LAZY_FAILED_LOG, lz->fail.msg, strerror(-err));
}

/* Wake the handler's poll(). An eventfd write fails only when its counter
 * would overflow, which single increments never reach. */
static void kick(uffdsnap_lazy_t *lz)
{
	uint64_t one = 1;
	ssize_t n = write(lz->efd, &one, sizeof(one));

	(void)n;
}

/* ---- bitmaps ------------------------------------------------------------------- */

/* Is every page of [first, end) placed or known to be zero? */
static bool all_done(const struct lz_region *g, uint64_t first, uint64_t end)
{
	for (uint64_t p = first, k; p < end;) {
		uint64_t mask = usnap_bits_mask(p, end, &k);
		uint64_t have = atomic_load_explicit(&g->present[p / 64], memory_order_relaxed) |
				atomic_load_explicit(&g->zero[p / 64], memory_order_relaxed);

		if ((have & mask) != mask)
			return false;
		p += k;
	}
	return true;
}

/* ---- placing pages -------------------------------------------------------------- */

/*
 * Fill pages [page, page + n) of g with UFFDIO_COPY from src, or with
 * UFFDIO_ZEROPAGE if src is NULL. Pages already present are skipped (EEXIST;
 * in a hugetlbfs region, a whole huge page at a time). Adds the pages this
 * call placed to *placed.
 */
static int fill(uffdsnap_lazy_t *lz, struct lz_region *g, uint64_t page, uint64_t n, const uint8_t *src,
		uint64_t *placed)
{
	const unsigned sh = lz->page_shift;

	while (n) {
		uintptr_t dst = g->addr + (page << sh);
		int64_t done;
		int rc;

		rc = usnap_uffd_fill(lz->uffd, dst, src, n << sh, &done);
		if (rc == -EEXIST)
			done = 0; /* this page is there already: skip it */
		else if (rc && rc != -EAGAIN)
			return rc;
		/* EAGAIN: a partial copy (done > 0), or the mm was changing (retry) */
		if (done > 0) {
			uint64_t k = (uint64_t)done >> sh;
			*placed += k;
			page += k, n -= k;
			if (src)
				src += k << sh;
		} else if (rc && errno == EEXIST) {
			page += g->upages, n -= g->upages;
			if (src)
				src += (size_t)g->upages << sh;
		}
	}
	return 0;
}

/* Place every data page of chunk c; remember its zero extents. */
static int place_chunk(uffdsnap_lazy_t *lz, struct lz_region *g, const struct usnap_rchunk *c, uint64_t *placed)
{
	uint64_t data_off = 0;
	int rc;

	for (uint32_t i = 0; i < c->nextents; i++) {
		const struct usnap_extent *e = &c->ext[i];

		if (e->kind == USNAP_EXT_ZERO) {
			usnap_abits_or(g->zero, e->first_page, e->first_page + e->npages);
			continue;
		}
		if ((rc = fill(lz, g, e->first_page, e->npages, c->data + data_off, placed)))
			return rc;
		usnap_abits_or(g->present, e->first_page, e->first_page + e->npages);
		data_off += (uint64_t)e->npages << lz->page_shift;
	}
	return 0;
}

/* Copy what chunk c holds of pages [a, b) into buf (which holds page h on):
 * data pages copied, zero pages marked. Adds the pages found to *found and
 * the data pages to *ndata. */
static void gather(uffdsnap_lazy_t *lz, struct lz_region *g, const struct usnap_rchunk *c, uint64_t a, uint64_t b,
		   uint64_t h, uint8_t *buf, uint64_t *found, uint64_t *ndata)
{
	const unsigned sh = lz->page_shift;
	uint64_t data_off = 0;

	for (uint32_t k = 0; k < c->nextents; k++) {
		const struct usnap_extent *e = &c->ext[k];
		uint64_t x = e->first_page > a ? e->first_page : a;
		uint64_t y = e->first_page + e->npages < b ? e->first_page + e->npages : b;

		if (x < y) {
			*found += y - x;
			if (e->kind == USNAP_EXT_DATA) {
				memcpy(buf + ((x - h) << sh), c->data + data_off + ((x - e->first_page) << sh),
				       (y - x) << sh);
				*ndata += y - x;
			} else {
				usnap_abits_or(g->zero, x, y);
			}
		}
		if (e->kind == USNAP_EXT_DATA)
			data_off += (uint64_t)e->npages << sh;
	}
}

/*
 * hugetlbfs: place the huge page that begins at page h of g, gathered in buf
 * from the chunks that hold its pages (found in the handler's page map,
 * loaded through rd). One of zero pages only is placed only if touch is set
 * (a fault), else left a hole. Adds the data and zero pages this call placed
 * to *data and *zero (unless NULL; nothing if the other thread placed it
 * first), the chunks loaded to *chunks. A failure is the restore's (lz_fail).
 */
static int place_huge(uffdsnap_lazy_t *lz, struct lz_region *g, uffdsnap_reader_t *rd, uint64_t h, uint8_t *buf,
		      bool touch, _Atomic uint64_t *data, _Atomic uint64_t *zero, _Atomic uint64_t *chunks)
{
	const uint64_t hend = h + g->upages;
	uint64_t found = 0, ndata = 0, placed = 0, run_end;
	size_t last = SIZE_MAX;
	int rc;

	memset(buf, 0, g->upages << lz->page_shift);
	/* zero pages only, as an earlier gather found (the prefetcher leaves
	 * those a hole): the touch that places them loads nothing again */
	if (all_done(g, h, hend))
		found = g->upages;
	for (uint64_t p = found ? hend : h; p < hend; p = run_end) {
		size_t i = usnap_reader_locate(lz->rh, g->id, p, &run_end);
		struct usnap_rchunk c;

		/* the last chunk stays loaded in rd: a chunk with several runs
		 * here is loaded once if nothing comes between them */
		if ((rc = usnap_reader_chunk(rd, g->id, i, &c))) {
			lz_fail(lz, rc, "region '%s', huge page at page %" PRIu64 ": %s", g->name, h,
				uffdsnap_reader_error(rd));
			return rc;
		}
		if (i != last)
			atomic_fetch_add_explicit(chunks, 1, memory_order_relaxed);
		last = i;
		gather(lz, g, &c, p, run_end < hend ? run_end : hend, h, buf, &found, &ndata);
	}
	if (found != g->upages) {
		lz_fail(lz, -EBADMSG, "region '%s', huge page at page %" PRIu64 ": %" PRIu64 " of its %" PRIu64
			" pages are recorded", g->name, h, found, g->upages);
		return -EBADMSG;
	}
	if (!ndata && !touch)
		return 0;
	if ((rc = fill(lz, g, h, g->upages, buf, &placed))) {
		lz_fail(lz, rc, "region '%s', huge page at page %" PRIu64 ": placing it: %s", g->name, h, strerror(-rc));
		return rc;
	}
	usnap_abits_or(g->present, h, h + g->upages);
	if (placed)
		atomic_fetch_add_explicit(data, ndata, memory_order_relaxed);
	if (placed && zero)
		atomic_fetch_add_explicit(zero, g->upages - ndata, memory_order_relaxed);
	return 0;
}

/* Chunk i of g leaves BUSY for `state`: wake a fault waiting for it. */
static void chunk_end(uffdsnap_lazy_t *lz, struct lz_region *g, size_t i, uint8_t state)
{
	pthread_mutex_lock(&lz->lock);
	atomic_store(&g->cstate[i], state);
	pthread_cond_broadcast(&lz->chunk_cv);
	pthread_mutex_unlock(&lz->lock);
}

/*
 * Claim unit i of g, a chunk or a huge page (FREE -> BUSY): true if this
 * thread has it now, and ends it with chunk_end(). Else *st is the state
 * found; with `wait`, one BUSY (the other thread's) is waited out first, and
 * the caller looks again: what it waited for may have placed its page.
 */
static bool claim(uffdsnap_lazy_t *lz, struct lz_region *g, size_t i, bool wait, uint8_t *st)
{
	*st = LZ_CHUNK_FREE;
	if (atomic_compare_exchange_strong(&g->cstate[i], st, LZ_CHUNK_BUSY))
		return true;
	if (*st == LZ_CHUNK_BUSY && wait) {
		pthread_mutex_lock(&lz->lock);
		while (atomic_load(&g->cstate[i]) == LZ_CHUNK_BUSY)
			pthread_cond_wait(&lz->chunk_cv, &lz->lock);
		pthread_mutex_unlock(&lz->lock);
	}
	return false;
}

/*
 * hugetlbfs: claim the huge page that holds page p and place it (place_huge).
 * It ends DONE once present, FREE again if it was left a hole (zero pages
 * only, and no touch: a later fault places it). A fault (touch) waits for a
 * huge page the prefetcher is placing; the prefetcher skips one a fault has.
 */
static int take_huge(uffdsnap_lazy_t *lz, struct lz_region *g, uffdsnap_reader_t *rd, uint64_t p, uint8_t *buf,
		     bool touch, _Atomic uint64_t *data, _Atomic uint64_t *zero, _Atomic uint64_t *chunks)
{
	const uint64_t hp = p / g->upages, h = hp * g->upages;

	for (;;) {
		uint8_t st;
		int rc;

		if (claim(lz, g, hp, touch, &st)) {
			rc = place_huge(lz, g, rd, h, buf, touch, data, zero, chunks);
			chunk_end(lz, g, hp, rc ? LZ_CHUNK_FAILED : usnap_abit(g->present, h) ? LZ_CHUNK_DONE
												: LZ_CHUNK_FREE);
			return rc;
		}
		if (st == LZ_CHUNK_FAILED)
			return usnap_latch_err(&lz->fail);
		if (st == LZ_CHUNK_DONE || !touch)
			return 0;
	}
}

/*
 * Take chunk i of g (the caller claimed it: BUSY), load it through rd and
 * place every page of it that is not there yet, page `first` first (if it
 * is a data page of the chunk: the page a thread waits for). Adds the pages
 * placed to *pages and the load to *chunks; leaves the chunk DONE or FAILED.
 */
static int take_chunk(uffdsnap_lazy_t *lz, struct lz_region *g, uffdsnap_reader_t *rd, size_t i, uint64_t first,
		      _Atomic uint64_t *pages, _Atomic uint64_t *chunks)
{
	struct usnap_rchunk c;
	uint64_t data_off = 0, placed = 0;
	int rc = usnap_reader_chunk(rd, g->id, i, &c);

	if (rc) {
		lz_fail(lz, rc, "region '%s': %s", g->name, uffdsnap_reader_error(rd));
		chunk_end(lz, g, i, LZ_CHUNK_FAILED);
		return rc;
	}
	atomic_fetch_add_explicit(chunks, 1, memory_order_relaxed);
	for (uint32_t k = 0; k < c.nextents; k++) {
		const struct usnap_extent *e = &c.ext[k];

		if (e->kind != USNAP_EXT_DATA)
			continue;
		if (first - e->first_page < e->npages) {
			rc = fill(lz, g, first, 1, c.data + data_off + ((first - e->first_page) << lz->page_shift),
				  &placed);
			break;
		}
		data_off += (uint64_t)e->npages << lz->page_shift;
	}
	if (!rc)
		rc = place_chunk(lz, g, &c, &placed);
	atomic_fetch_add_explicit(pages, placed, memory_order_relaxed);
	if (rc)
		lz_fail(lz, rc, "region '%s': placing the pages of chunk %zu: %s", g->name, i, strerror(-rc));
	chunk_end(lz, g, i, rc ? LZ_CHUNK_FAILED : LZ_CHUNK_DONE);
	return rc;
}

/* ---- the fault handler ------------------------------------------------------------ */

static struct lz_region *region_at(uffdsnap_lazy_t *lz, uintptr_t addr)
{
	for (unsigned i = 0; i < lz->nregs; i++)
		if (addr - lz->regs[i].addr < lz->regs[i].len)
			return &lz->regs[i];
	return NULL;
}

/* Fill the touched zero page p and the pages around it, in its aligned
 * window, that are known to be zero and not placed yet. */
static int zero_fill(uffdsnap_lazy_t *lz, struct lz_region *g, uint64_t p)
{
	uint64_t w0 = p / LZ_ZERO_WINDOW * LZ_ZERO_WINDOW, w1 = w0 + LZ_ZERO_WINDOW, placed = 0;
	int rc = 0;

	w1 = w1 < g->npages ? w1 : g->npages;
	for (uint64_t a = w0; a < w1 && !rc;) {
		uint64_t b = a;

		while (b < w1 && usnap_abit(g->zero, b) && !usnap_abit(g->present, b))
			b++;
		if (b == a) {
			a++;
			continue;
		}
		rc = fill(lz, g, a, b - a, NULL, &placed);
		usnap_abits_or(g->present, a, b);
		a = b;
	}
	atomic_fetch_add_explicit(&lz->pages_zero_fault, placed, memory_order_relaxed);
	return rc;
}

/* Serve a fault on page p: a zero page is filled; a data page is placed
 * first, so its thread runs on, then the rest of its chunk. */
static int serve(uffdsnap_lazy_t *lz, struct lz_region *g, uint64_t p)
{
	uint64_t run_end;
	size_t i;
	int rc;

	if (g->upages > 1)
		return take_huge(lz, g, lz->rh, p, lz->hbuf_h, true, &lz->pages_fault, &lz->pages_zero_fault,
				 &lz->chunks_fault);
	i = usnap_reader_locate(lz->rh, g->id, p, &run_end);
	for (;;) {
		uint8_t st;

		/* a chunk loaded already said p is zero */
		if (usnap_abit(g->zero, p))
			break;
		/* BUSY: the prefetcher is placing it, one chunk's time */
		if (claim(lz, g, i, true, &st)) {
			if ((rc = take_chunk(lz, g, lz->rh, i, p, &lz->pages_fault, &lz->chunks_fault)))
				return rc;
			continue;
		}
		if (st == LZ_CHUNK_BUSY)
			continue;
		if (usnap_abit(g->present, p))
			return 0;
		if (st == LZ_CHUNK_FAILED)
			return usnap_latch_err(&lz->fail);
		/* DONE without p: the chunk the map named does not record it */
		lz_fail(lz, -EBADMSG, "region '%s': page %" PRIu64 " is not in chunk %zu, which the page map names",
			g->name, p, i);
		return -EBADMSG;
	}
	if (!(rc = zero_fill(lz, g, p)))
		return 0;
	lz_fail(lz, rc, "region '%s', page %" PRIu64 ": placing it: %s", g->name, p, strerror(-rc));
	return rc;
}

/* The faulting thread must not wait for a page that will never come. range:
 * its page, or the whole huge page in a hugetlbfs region. */
static void poison(uffdsnap_lazy_t *lz, struct uffdio_range range, pid_t tid)
{
	int rc = lz->have_poison ? usnap_uffd_poison(lz->uffd, range.start, range.len, true, NULL) : -ENOSYS;

	if (!rc || rc == -EEXIST) {
		/* EEXIST: the page arrived after all; wake the thread to find it */
		usnap_uffd_wake(lz->uffd, range.start, range.len);
		return;
	}
	if (tid > 0)
		syscall(SYS_tgkill, lz->pid, tid, SIGBUS);
}

static void on_fault(uffdsnap_lazy_t *lz, const struct uffd_msg *m)
{
	uintptr_t addr = (uintptr_t)m->arg.pagefault.address & ~(((uintptr_t)1 << lz->page_shift) - 1);
	struct lz_region *g = region_at(lz, addr);
	struct uffdio_range unit = { .start = addr, .len = (uint64_t)1 << lz->page_shift };
	uint64_t p;

	atomic_fetch_add_explicit(&lz->faults, 1, memory_order_relaxed);
	/* a range registered with this userfaultfd that is not one of the
	 * regions (a page-server client's mistake): nobody can serve it */
	if (!g) {
		poison(lz, unit, (pid_t)m->arg.pagefault.feat.ptid);
		return;
	}
	p = (addr - g->addr) >> lz->page_shift;
	unit.start = g->addr + ((p - p % g->upages) << lz->page_shift);
	unit.len = g->upages << lz->page_shift;
	/* placed since the fault was raised: the copy woke it, or will */
	if (usnap_abit(g->present, p) || !serve(lz, g, p)) {
		usnap_uffd_wake(lz->uffd, unit.start, unit.len);
		return;
	}
	poison(lz, unit, (pid_t)m->arg.pagefault.feat.ptid);
}

/* After a failure: poison every page neither placed nor known to be zero (in
 * a hugetlbfs region, every huge page with such a page). */
static void poison_rest(uffdsnap_lazy_t *lz)
{
	for (unsigned i = 0; i < lz->nregs; i++) {
		struct lz_region *g = &lz->regs[i];

		for (uint64_t p = 0; p < g->npages;) {
			int64_t updated;
			uint64_t q = p;
			int rc;

			while (q < g->npages && !all_done(g, q, q + g->upages))
				q += g->upages;
			if (q == p) {
				p += g->upages;
				continue;
			}
			rc = usnap_uffd_poison(lz->uffd, g->addr + (p << lz->page_shift), (q - p) << lz->page_shift, true,
					       &updated);
			if (!rc)
				p = q;
			else if (rc == -ESRCH) /* the process is gone: nobody left to protect */
				return;
			else if (updated > 0) /* stopped early: go on from there */
				p += (uint64_t)updated >> lz->page_shift;
			else /* EEXIST: the page is present after all; else give the page up */
				p += g->upages;
		}
	}
}

static void unregister_all(uffdsnap_lazy_t *lz)
{
	for (unsigned i = 0; i < lz->nregs; i++) {
		struct lz_region *g = &lz->regs[i];

		/* wakes every thread still waiting in the range: it finds its page,
		 * a hole that reads as zero, or a poisoned page (and the one more
		 * wake-up after it, uffd.h) */
		if (g->registered && !usnap_uffd_unregister(lz->uffd, g->addr, g->len))
			g->registered = false;
	}
}

static void finish(uffdsnap_lazy_t *lz)
{
	bool failed = usnap_latch_err(&lz->fail) != 0;

	/* without UFFDIO_POISON a failed restore keeps its registration, so the
	 * handler keeps signalling faults on lost pages, until free() */
	if (failed && lz->have_poison)
		poison_rest(lz);
	if (!failed || lz->have_poison)
		unregister_all(lz);
	atomic_store(&lz->resident_ns, usnap_now_ns() - lz->t0);
	pthread_mutex_lock(&lz->lock);
	atomic_store(&lz->state, failed ? UFFDSNAP_LAZY_FAILED : UFFDSNAP_LAZY_DONE);
	pthread_cond_broadcast(&lz->cv);
	pthread_mutex_unlock(&lz->lock);
}

static void *handler_main(void *arg)
{
	uffdsnap_lazy_t *lz = arg;
	struct pollfd pfd[2] = { { .fd = lz->uffd, .events = POLLIN }, { .fd = lz->efd, .events = POLLIN } };
	struct uffd_msg msgs[LZ_MSGS];
	bool finished = false;

	usnap_thread_prompt(); /* beside the prefetcher, a first touch waits for this thread */
	for (;;) {
		ssize_t n = read(lz->uffd, msgs, sizeof(msgs));
		uint64_t v;

		if (n > 0) {
			for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
				if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
					on_fault(lz, &msgs[i]);
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			lz_fail(lz, -errno, "reading the userfaultfd: %s", strerror(errno));
			break;
		}
		/* all faults raised so far are served: the prefetcher being through
		 * means every data page is present */
		if (!finished && atomic_load(&lz->prefetch_done)) {
			finish(lz);
			finished = true;
		}
		/* done, or failed with every lost page poisoned: no fault can come */
		if (atomic_load(&lz->closing) ||
		    (finished && (atomic_load(&lz->state) == UFFDSNAP_LAZY_DONE || lz->have_poison)))
			break;
		if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
			lz_fail(lz, -errno, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[1].revents & POLLIN && read(lz->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			break;
	}
	if (!finished)
		finish(lz);
	return NULL;
}

/* ---- the prefetcher ------------------------------------------------------------------ */

static void *prefetch_main(void *arg)
{
	uffdsnap_lazy_t *lz = arg;

	pthread_mutex_lock(&lz->lock);
	while (!lz->go)
		pthread_cond_wait(&lz->cv, &lz->lock);
	pthread_mutex_unlock(&lz->lock);
	for (unsigned r = 0; r < lz->nregs && !atomic_load(&lz->closing); r++) {
		struct lz_region *g = &lz->regs[r];

		for (uint64_t h = 0; g->upages > 1 && h < g->npages && !atomic_load(&lz->closing); h += g->upages)
			if (!usnap_abit(g->present, h) && take_huge(lz, g, lz->rp, h, lz->hbuf_p, false, &lz->pages_prefetch,
							      NULL, &lz->chunks_prefetch) == -ESRCH)
				goto out; /* the process exited */
		for (size_t i = 0; g->upages == 1 && i < g->nchunks && !atomic_load(&lz->closing); i++) {
			uint8_t st;

			/* taken for a fault already; a failure goes on with the next
			 * chunk: every other one can still be restored */
			if (claim(lz, g, i, false, &st) &&
			    take_chunk(lz, g, lz->rp, i, UINT64_MAX, &lz->pages_prefetch, &lz->chunks_prefetch) == -ESRCH)
				goto out; /* the process exited (a page-server client): nothing to restore into */
		}
	}
out:
	atomic_store(&lz->prefetch_done, true);
	kick(lz);
	return NULL;
}

/* ---- setup ----------------------------------------------------------------------------- */

/* A userfaultfd that handles kernel-mode faults too: a read(2) into a region
 * must wait for its page, not fail with EFAULT. */
int usnap_restore_uffd(uint64_t *features)
{
	const uint64_t want = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_THREAD_ID |
			      UFFD_FEATURE_POISON;
	uint64_t avail = 0, got;
	int fd = usnap_uffd_new(false), err;

	/* UFFDIO_API works once per descriptor and rejects unknown bits: ask a
	 * throwaway descriptor what exists first */
	if (fd >= 0) {
		err = usnap_uffd_api(fd, 0, &avail);
		close(fd);
		fd = err ? err : usnap_uffd_new(false);
	}
	if (fd < 0) {
		err = fd == -EACCES ? -EPERM : fd;
		return usnap_err(err, "opening a userfaultfd: %s (needs root, access to /dev/userfaultfd, or "
				 "vm.unprivileged_userfaultfd=1)", strerror(-fd));
	}
	*features = avail & want;
	if ((err = usnap_uffd_api(fd, *features, &got))) {
		close(fd);
		return usnap_err(err, "UFFDIO_API: %s", strerror(-err));
	}
	return fd;
}

/*
 * Does the shmem file behind addr hold no data at all (a fresh memfd)? Then
 * the range is empty without asking mincore(), which looks up the page cache
 * page by page (9 ms per GiB here, most of lazy start's time). Found through
 * /proc/self/map_files, which needs CAP_CHECKPOINT_RESTORE: false whenever
 * it cannot tell, and the caller asks mincore().
 */
static bool backing_empty(const void *addr)
{
	DIR *d = opendir("/proc/self/map_files");
	struct dirent *e;
	bool empty = false;

	if (!d)
		return false;
	while ((e = readdir(d))) {
		uintptr_t start, end;
		struct stat st;
		char path[32 + sizeof(e->d_name)];
		int fd;

		if (sscanf(e->d_name, "%" SCNxPTR "-%" SCNxPTR, &start, &end) != 2 || (uintptr_t)addr - start >= end - start)
			continue;
		snprintf(path, sizeof(path), "/proc/self/map_files/%s", e->d_name);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0) {
			empty = !fstat(fd, &st) && !st.st_blocks;
			close(fd);
		}
		break;
	}
	closedir(d);
	return empty;
}

/*
 * The page size of the hugetlbfs mapping at addr (its KernelPageSize in
 * /proc/self/smaps), 0 if unknown. smaps walks the page tables of every
 * mapping it passes: only asked for memory known to be hugetlbfs.
 */
static size_t huge_page_size(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char line[512];
	size_t kb = 0;
	bool in = false;

	while (f && !kb && fgets(line, sizeof(line), f)) {
		uintptr_t start, end;

		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &start, &end) == 2)
			in = (uintptr_t)addr - start < end - start;
		else if (in && sscanf(line, "KernelPageSize: %zu kB", &kb) != 1)
			kb = 0;
	}
	if (f)
		fclose(f);
	return kb << 10;
}

int usnap_lazy_arm(int uffd, const char *name, void *addr, size_t len, size_t *unit)
{
	const size_t page = (size_t)sysconf(_SC_PAGESIZE), npages = len / page;
	uint64_t ioctls;
	unsigned char *vec;
	int rc = 0;

	if (!addr || !len || (uintptr_t)addr % page || len % page)
		return usnap_err(-EINVAL, "region '%s': the memory %p+%zu is not page aligned", name, addr, len);
	/* no page may be present: UFFDIO_COPY would keep it */
	if (!(vec = malloc(LZ_MINCORE_PAGES)))
		return usnap_err(-ENOMEM, "out of memory");
	for (size_t p = backing_empty(addr) ? npages : 0; p < npages && !rc; p += LZ_MINCORE_PAGES) {
		size_t n = npages - p < LZ_MINCORE_PAGES ? npages - p : LZ_MINCORE_PAGES;

		if (mincore((uint8_t *)addr + p * page, n * page, vec)) {
			rc = usnap_err(errno == ENOMEM ? -EFAULT : -errno, "region '%s': the memory at %p is not "
				       "mapped: %s", name, (void *)((uint8_t *)addr + p * page), strerror(errno));
			break;
		}
		for (size_t k = 0; k < n; k++)
			if (vec[k] & 1) {
				rc = usnap_err(-EEXIST, "region '%s': page %zu of the memory is present: lazy restore "
					       "needs empty memory (a fresh memfd or mapping)", name, p + k);
				break;
			}
	}
	free(vec);
	if (rc)
		return rc;
	if ((rc = usnap_uffd_register(uffd, (uintptr_t)addr, len, UFFDIO_REGISTER_MODE_MISSING, &ioctls)))
		return usnap_err(rc, "region '%s': registering %p+%zu with the userfaultfd: %s%s", name, addr, len,
				 strerror(-rc), rc == -EBUSY ? " (already registered with another userfaultfd)"
				 : rc == -EINVAL ? " (not shmem or anonymous memory, or hugetlbfs memory not aligned "
				 "to its huge pages?)" : "");
	*unit = page;
	if (!(ioctls & (1ull << _UFFDIO_COPY))) {
		rc = usnap_err(-EOPNOTSUPP, "region '%s': UFFDIO_COPY is not available for this memory", name);
	} else if (!(ioctls & (1ull << _UFFDIO_ZEROPAGE))) {
		/* the kernel offers every kind of memory UFFDIO_ZEROPAGE but hugetlbfs */
		*unit = huge_page_size(addr);
		if (*unit <= page || *unit & (*unit - 1))
			rc = usnap_err(-EOPNOTSUPP, "region '%s': hugetlbfs memory of unknown huge page size", name);
	}
	if (rc)
		usnap_uffd_unregister(uffd, (uintptr_t)addr, len);
	return rc;
}

int usnap_lazy_unit(uffdsnap_lazy_t *lz, unsigned i, size_t unit)
{
	struct lz_region *g = &lz->regs[i];

	if (unit < ((size_t)1 << lz->page_shift) || unit > USNAP_LAZY_MAX_UNIT || unit & (unit - 1) ||
	    (g->addr | g->len) & (unit - 1))
		return usnap_err(-EINVAL, "region '%s': huge pages of %zu bytes for memory at %#" PRIxPTR "+%zu",
				 g->name, unit, g->addr, g->len);
	g->upages = unit >> lz->page_shift;
	if (unit > lz->hbuf_len && g->upages > 1)
		lz->hbuf_len = unit;
	if (g->upages > 1) { /* claimed per huge page there (take_huge), not per chunk */
		_Atomic uint8_t *hs = calloc(g->npages / g->upages + 1, sizeof(*hs));

		if (!hs)
			return usnap_err(-ENOMEM, "region '%s': out of memory", g->name);
		free((void *)g->cstate);
		g->cstate = hs;
	}
	return 0;
}

/* Match region `in` with the snapshot's and set up its lookup arrays. */
static int region_match(uffdsnap_lazy_t *lz, struct lz_region *g, const uffdsnap_lazy_region_t *in)
{
	const size_t page = (size_t)1 << lz->page_shift;
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	int id, rc;

	if (!in->name || (id = uffdsnap_reader_find(lz->rh, in->name)) < 0)
		return usnap_err(-ENOENT, "lazy restore: the snapshot has no region '%s'", in->name ? in->name : "");
	uffdsnap_reader_region(lz->rh, (unsigned)id, &ri);
	g->name = ri.name;
	g->id = (unsigned)id;
	g->addr = (uintptr_t)in->addr;
	g->len = in->len;
	if (in->len != ri.length)
		return usnap_err(-EINVAL, "region '%s' is %" PRIu64 " bytes in the snapshot, the memory given for it "
				 "%zu bytes: the lengths must match", ri.name, ri.length, in->len);
	if (!in->addr || g->addr % page)
		return usnap_err(-EINVAL, "region '%s': the memory at %p is not page aligned", ri.name, in->addr);
	if ((rc = usnap_reader_ready(lz->rh, g->id)))
		return usnap_err(rc, "region '%s': %s", ri.name, uffdsnap_reader_error(lz->rh));
	for (unsigned i = 0; i < lz->nregs; i++)
		if (&lz->regs[i] != g && lz->regs[i].len && (lz->regs[i].id == g->id ||
		    (g->addr < lz->regs[i].addr + lz->regs[i].len && lz->regs[i].addr < g->addr + g->len)))
			return usnap_err(-EINVAL, "region '%s': given twice, or its memory overlaps region '%s'",
					 ri.name, lz->regs[i].name);
	g->npages = in->len / page;
	g->upages = 1;
	g->nchunks = usnap_reader_nchunks(lz->rh, g->id);
	g->cstate = calloc(g->nchunks + 1, sizeof(*g->cstate));
	g->present = calloc((g->npages + 63) / 64, sizeof(uint64_t));
	g->zero = calloc((g->npages + 63) / 64, sizeof(uint64_t));
	if (!g->cstate || !g->present || !g->zero)
		return usnap_err(-ENOMEM, "region '%s': out of memory", ri.name);
	return 0;
}

static void lz_destroy(uffdsnap_lazy_t *lz)
{
	for (unsigned i = 0; lz->regs && i < lz->nregs; i++) {
		free((void *)lz->regs[i].cstate);
		free(lz->regs[i].present);
		free(lz->regs[i].zero);
	}
	free(lz->regs);
	if (lz->hbuf_h)
		munmap(lz->hbuf_h, lz->hbuf_len);
	if (lz->hbuf_p)
		munmap(lz->hbuf_p, lz->hbuf_len);
	uffdsnap_reader_free(lz->rh);
	uffdsnap_reader_free(lz->rp);
	if (lz->uffd >= 0)
		close(lz->uffd); /* drops any registration left */
	if (lz->efd >= 0)
		close(lz->efd);
	pthread_mutex_destroy(&lz->lock);
	pthread_cond_destroy(&lz->cv);
	pthread_cond_destroy(&lz->chunk_cv);
	free(lz);
}

/* Undo a restore that never ran: a fault can only be pending on our
 * regions, and unregistering them wakes it. */
void usnap_lazy_abandon(uffdsnap_lazy_t *lz)
{
	if (lz->prefetcher_started) {
		atomic_store(&lz->closing, true);
		pthread_mutex_lock(&lz->lock);
		lz->go = true;
		pthread_cond_broadcast(&lz->cv);
		pthread_mutex_unlock(&lz->lock);
		pthread_join(lz->prefetcher, NULL);
	}
	unregister_all(lz);
	lz_destroy(lz);
}

int usnap_lazy_setup(uffdsnap_lazy_t **lzp, uffdsnap_reader_t *r, int uffd, uint64_t features, pid_t pid,
		     const uffdsnap_lazy_region_t *regions, unsigned n, const uffdsnap_lazy_opts_t *opts)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_lazy_t *lz;
	int rc;

	*lzp = NULL;
	if (!(lz = calloc(1, sizeof(*lz)))) {
		close(uffd);
		return usnap_err(-ENOMEM, "out of memory");
	}
	lz->uffd = uffd;
	lz->efd = -1;
	lz->t0 = usnap_now_ns();
	lz->pid = pid;
	lz->have_poison = features & UFFD_FEATURE_POISON;
	lz->flags = opts->flags;
	pthread_mutex_init(&lz->lock, NULL);
	pthread_cond_init(&lz->cv, NULL);
	pthread_cond_init(&lz->chunk_cv, NULL);
	lz->go = !(lz->flags & UFFDSNAP_LAZY_NO_PREFETCH);
	uffdsnap_reader_info(r, &info);
	lz->page_shift = (uint32_t)__builtin_ctz(info.page_size);
	if (info.page_size != (uint32_t)sysconf(_SC_PAGESIZE)) {
		rc = usnap_err(-EINVAL, "the snapshot's page size %u is not this machine's %ld", info.page_size,
			       sysconf(_SC_PAGESIZE));
		goto fail;
	}
	if ((rc = usnap_reader_clone(r, &lz->rh)) || (rc = usnap_reader_clone(r, &lz->rp)))
		goto fail;
	if ((lz->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		rc = usnap_err(-errno, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (!(lz->regs = calloc(n, sizeof(*lz->regs)))) {
		rc = usnap_err(-ENOMEM, "out of memory");
		goto fail;
	}
	lz->nregs = n;
	for (unsigned i = 0; i < n; i++) {
		if ((rc = region_match(lz, &lz->regs[i], &regions[i])))
			goto fail;
		lz->pages_total += lz->regs[i].npages;
	}
	*lzp = lz;
	return 0;
fail:
	lz_destroy(lz);
	return rc;
}

int usnap_lazy_go(uffdsnap_lazy_t *lz)
{
	int rc;

	if (lz->hbuf_len) {
		lz->hbuf_h = mmap(NULL, lz->hbuf_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		lz->hbuf_p = mmap(NULL, lz->hbuf_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (lz->hbuf_h == MAP_FAILED)
			lz->hbuf_h = NULL;
		if (lz->hbuf_p == MAP_FAILED)
			lz->hbuf_p = NULL;
		if (!lz->hbuf_h || !lz->hbuf_p)
			return usnap_err(-ENOMEM, "out of memory for two huge pages of %zu bytes", lz->hbuf_len);
	}

	for (unsigned i = 0; i < lz->nregs; i++)
		lz->regs[i].registered = true;
	if ((rc = usnap_thread_start(&lz->prefetcher, prefetch_main, lz, "usnap-prefetch")))
		return usnap_err(rc, "starting the prefetch thread: %s", strerror(-rc));
	lz->prefetcher_started = true;
	if ((rc = usnap_thread_start(&lz->handler, handler_main, lz, "usnap-lazy")))
		return usnap_err(rc, "starting the fault handler thread: %s", strerror(-rc));
	lz->start_ns = usnap_now_ns() - lz->t0;
	return 0;
}

USNAP_EXPORT void uffdsnap_lazy_opts_init_size(uffdsnap_lazy_opts_t *opts, size_t size)
{
	uffdsnap_lazy_opts_t d = { .size = sizeof(d) };

	usnap_opts_fill(opts, size, &d, sizeof(d));
}

int usnap_lazy_opts_get(const uffdsnap_lazy_opts_t *in, uffdsnap_lazy_opts_t *out, const char *fn)
{
	*out = (uffdsnap_lazy_opts_t){ .size = sizeof(*out) };
	if (in && usnap_check_size(fn, "uffdsnap_lazy_opts_t", in->size, USNAP_SIZE_UPTO(uffdsnap_lazy_opts_t, flags),
				   sizeof(*out)))
		return -EINVAL;
	if (in)
		memcpy(out, in, in->size);
	out->size = sizeof(*out);
	if (!out->max_clients)
		out->max_clients = UFFDSNAP_SERVE_MAX_CLIENTS;
	if (!out->request_ms)
		out->request_ms = UFFDSNAP_SERVE_REQUEST_MS;
	return 0;
}

USNAP_EXPORT int uffdsnap_lazy_start(uffdsnap_lazy_t **lzp, uffdsnap_reader_t *r,
				     const uffdsnap_lazy_region_t *regions, unsigned n,
				     const uffdsnap_lazy_opts_t *opts)
{
	uint64_t t0 = usnap_now_ns(), features;
	uffdsnap_lazy_opts_t o;
	uffdsnap_lazy_t *lz;
	int uffd, rc;

	usnap_clear_err();
	if (!lzp || !r || !regions || !n)
		return usnap_err(-EINVAL, "uffdsnap_lazy_start: lz, r and at least one region are needed");
	*lzp = NULL;
	if ((rc = usnap_lazy_opts_get(opts, &o, "uffdsnap_lazy_start")))
		return rc;
	if ((uffd = usnap_restore_uffd(&features)) < 0)
		return uffd;
	if ((rc = usnap_lazy_setup(&lz, r, uffd, features, getpid(), regions, n, &o)))
		return rc;
	lz->t0 = t0;
	for (unsigned i = 0; i < n; i++) {
		size_t unit;

		if ((rc = usnap_lazy_arm(uffd, lz->regs[i].name, regions[i].addr, regions[i].len, &unit))) {
			usnap_lazy_abandon(lz);
			return rc;
		}
		lz->regs[i].registered = true;
		if ((rc = usnap_lazy_unit(lz, i, unit))) {
			usnap_lazy_abandon(lz);
			return rc;
		}
	}
	if ((rc = usnap_lazy_go(lz))) {
		usnap_lazy_abandon(lz);
		return rc;
	}
	*lzp = lz;
	return 0;
}

USNAP_EXPORT int uffdsnap_lazy_wait(uffdsnap_lazy_t *lz)
{
	if (!lz)
		return -EINVAL;
	pthread_mutex_lock(&lz->lock);
	lz->go = true;
	pthread_cond_broadcast(&lz->cv);
	while (atomic_load(&lz->state) == UFFDSNAP_LAZY_RUNNING)
		pthread_cond_wait(&lz->cv, &lz->lock);
	pthread_mutex_unlock(&lz->lock);
	return usnap_latch_err(&lz->fail);
}

USNAP_EXPORT int uffdsnap_lazy_stats(const uffdsnap_lazy_t *lz, uffdsnap_lazy_stats_t *out)
{
	uffdsnap_lazy_stats_t st;
	uffdsnap_lazy_t *l = (uffdsnap_lazy_t *)lz; /* atomics are read, not changed */

	usnap_clear_err();
	if (!lz || !out)
		return usnap_err(-EINVAL, "uffdsnap_lazy_stats: lz and out must not be NULL");
	if (usnap_check_size("uffdsnap_lazy_stats", "uffdsnap_lazy_stats_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_lazy_stats_t, error), sizeof(st)))
		return -EINVAL;
	st = (uffdsnap_lazy_stats_t){
		.size = out->size, .state = atomic_load(&l->state), .error = usnap_latch_err(&l->fail),
		.start_ns = l->start_ns, .resident_ns = atomic_load(&l->resident_ns), .pages_total = l->pages_total,
		.pages_fault = atomic_load(&l->pages_fault), .pages_prefetch = atomic_load(&l->pages_prefetch),
		.pages_zero_fault = atomic_load(&l->pages_zero_fault), .faults = atomic_load(&l->faults),
		.chunks_fault = atomic_load(&l->chunks_fault), .chunks_prefetch = atomic_load(&l->chunks_prefetch),
	};
	memcpy(out, &st, out->size);
	return 0;
}

USNAP_EXPORT const char *uffdsnap_lazy_error(const uffdsnap_lazy_t *lz)
{
	return lz ? usnap_latch_msg(&lz->fail) : "";
}

USNAP_EXPORT void uffdsnap_lazy_free(uffdsnap_lazy_t *lz)
{
	if (!lz)
		return;
	uffdsnap_lazy_wait(lz);
	atomic_store(&lz->closing, true);
	kick(lz);
	pthread_join(lz->handler, NULL);
	pthread_join(lz->prefetcher, NULL);
	lz_destroy(lz);
}
