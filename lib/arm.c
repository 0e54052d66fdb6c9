/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Arming a snapshot: every region, every other mapping of its pages (aliases
 * in this process, participants' joined mappings) registered, the populated
 * runs listed, all of it write-protected in parallel (the instant); at the
 * end, disarming, the check that no mapping made meanwhile wrote a region's
 * file, and the clean-up after the window (huge pages mapped whole again,
 * shmem PTEs writable again). Also UFFDSNAP_OPT_STRICT's check at begin.
 * What a region is and how it is registered: region.c.
 *
 * Arming shmem (begin):
 *   1. UFFDIO_REGISTER with MISSING|WP. From here a write or read that would
 *      fill a hole raises a MISSING fault, which the handler holds unresolved
 *      until every region is armed, so the set of holes is frozen.
 *   2. SEEK_DATA/SEEK_HOLE on the file lists the populated runs (skipped for a
 *      file with no hole at all, see find_data). Pages swapped out count as
 *      data (shmem keeps them in the page cache's xarray).
 *   3. UFFDIO_WRITEPROTECT each populated run, all regions at once and in
 *      parallel (usnap_protect_all). Holes need no protection: any
 *      access to them is a MISSING fault. A sparse 64 GiB memfd therefore costs
 *      what its data costs, and no page tables are allocated for the holes.
 * Disarming is UFFDIO_UNREGISTER, which clears every uffd-wp bit and PTE
 * marker in the range and wakes every thread waiting on it, whatever state the
 * snapshot reached: it is the one exit for success and failure alike.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>

#include "arm.h"
#include "latch.h"
#include "maps.h"
#include "region.h"
#include "snapshot.h"
#include "space.h"
#include "uffd.h"
#include "uffdsnap-private.h"

static int add_run(struct usnap_sreg *sr, size_t *cap, uint64_t first, uint64_t n)
{
	if (sr->ndata == *cap) {
		size_t c = *cap ? *cap * 2 : 16;
		struct usnap_run *d = realloc(sr->data, c * sizeof(*d));
		if (!d)
			return -ENOMEM;
		sr->data = d, *cap = c;
	}
	sr->data[sr->ndata++] = (struct usnap_run){ first, n };
	return 0;
}

/*
 * The populated runs of the region's file window, in pages. SEEK_HOLE walks
 * the page cache (~13 ms for a populated GiB here, a third of begin), so a file
 * with every page allocated (st_blocks counts pages in memory and in swap) is
 * taken whole without a walk. What else st_blocks counts, pages fallocate()
 * reserved but nobody wrote, then count as data: they read as zeros, the
 * protect below puts a marker on their empty PTEs, so a write to one faults,
 * and the handler tells them from pages punched since the instant (which read
 * as zeros too) by their being in the page cache: that takes cachestat(2)
 * (6.5+). Kept to kernels with WP_UNPOPULATED, the ones our tests cover.
 */
static int find_data(uffdsnap_snap_t *s, struct usnap_sreg *sr)
{
	const struct usnap_reg *reg = sr->reg;
	off_t pos = reg->file_off, end = reg->file_off + (off_t)reg->len;
	off_t ps = (off_t)s->page_size;
	size_t cap = 0;
	struct stat st;

	if ((s->ctx->features & UFFD_FEATURE_WP_UNPOPULATED) && s->ctx->cachestat &&
	    !fstat(reg->fd, &st) && st.st_size >= end && (uint64_t)st.st_blocks * 512 >= (uint64_t)st.st_size) {
		if (add_run(sr, &cap, 0, reg->npages))
			return usnap_err(-ENOMEM, "region '%s': listing populated pages", reg->name);
		return 0;
	}
	while (pos < end) {
		off_t d = lseek(reg->fd, pos, SEEK_DATA), h;
		if (d < 0 && errno == ENXIO)
			break;
		if (d < 0)
			return usnap_err(-errno, "region '%s': SEEK_DATA: %s", reg->name, strerror(errno));
		if (d >= end)
			break;
		h = lseek(reg->fd, d, SEEK_HOLE);
		if (h < 0)
			return usnap_err(-errno, "region '%s': SEEK_HOLE: %s", reg->name, strerror(errno));
		d &= ~(ps - 1);
		h = (h + ps - 1) & ~(ps - 1);
		if (h > end)
			h = end;
		if (add_run(sr, &cap, (uint64_t)(d - reg->file_off) / (uint64_t)ps, (uint64_t)(h - d) / (uint64_t)ps))
			return usnap_err(-ENOMEM, "region '%s': listing populated pages", reg->name);
		pos = h;
	}
	return 0;
}

/*
 * Private and hugetlb memory: the whole region is one run (never-touched
 * pages read as zeros and are stored as such). Without WP_UNPOPULATED (before
 * Linux 6.4) a never-touched private page has no PTE to protect, and a write
 * to it would not fault: map the zero page there first. hugetlbfs is file
 * memory: never-touched huge pages get markers like shmem's.
 */
static int whole_data(uffdsnap_snap_t *s, struct usnap_sreg *sr)
{
	const struct usnap_reg *reg = sr->reg;

	if (reg->kind == USNAP_PRIVATE && !(s->ctx->features & UFFD_FEATURE_WP_UNPOPULATED) &&
	    madvise((void *)reg->addr, reg->len, MADV_POPULATE_READ))
		return usnap_err(-errno, "region '%s': MADV_POPULATE_READ (needed without "
				 "UFFD_FEATURE_WP_UNPOPULATED): %s", reg->name, strerror(errno));
	if (!(sr->data = malloc(sizeof(*sr->data))))
		return usnap_err(-ENOMEM, "region '%s': allocating", reg->name);
	sr->data[0] = (struct usnap_run){ 0, reg->npages };
	sr->ndata = 1;
	return 0;
}

static int protect(int uffd, uintptr_t addr, size_t len)
{
	uint64_t t0 = usnap_now_ns();
	int r;

	/* EAGAIN: an event (MADV_DONTNEED ...) is pending; the handler thread
	 * reads events even while begin runs, so it clears soon. */
	while ((r = usnap_uffd_protect(uffd, addr, len, true)) == -EAGAIN && usnap_now_ns() - t0 < 5000000000ull)
		sched_yield();
	return r;
}

static int arm(uffdsnap_snap_t *s, struct usnap_sreg *sr, struct usnap_maps_cursor *c)
{
	const struct usnap_reg *reg = sr->reg;
	uint64_t ioctls = 0;
	int r;

	if ((r = usnap_reg_recheck(c, reg)))
		return r;
	r = usnap_uffd_register(usnap_home(&s->spaces, sr)->uffd, reg->addr, reg->len, usnap_reg_mode(reg->kind, false),
				&ioctls);
	if (r == -EBUSY)
		return usnap_err(r, "region '%s': another userfaultfd (another context, or another library) "
				 "holds this memory", reg->name);
	if (r)
		return usnap_err(r == -EINVAL || r == -ENOMEM ? -EFAULT : r,
				 "region '%s': UFFDIO_REGISTER failed (%s): was it unmapped or remapped since "
				 "uffdsnap_add_region?", reg->name, strerror(-r));
	sr->registered = true;
	if ((ioctls & usnap_reg_ioctls(reg->kind, false)) != usnap_reg_ioctls(reg->kind, false))
		return usnap_err(-EOPNOTSUPP, "region '%s': kernel offers ioctls 0x%llx for this memory",
				 reg->name, (unsigned long long)ioctls);
	return reg->kind == USNAP_SHMEM ? find_data(s, sr) : whole_data(s, sr);
}

/* Register every region and list its populated runs, in address order: one
 * read of /proc/self/maps for them all. */
int usnap_arm_regions(uffdsnap_snap_t *s)
{
	struct usnap_maps_cursor c;
	int r = 0;

	if (!s->nregions)
		return 0;
	if (usnap_cursor_open(&c))
		return usnap_err(-errno, "region '%s': cannot read /proc/self/maps: %s", s->by_addr[0]->reg->name,
				 strerror(errno));
	for (unsigned i = 0; !r && i < s->nregions; i++)
		r = arm(s, s->by_addr[i], &c);
	usnap_cursor_close(&c);
	return r;
}

/*
 * Protecting is most of begin's cost: ~60-100 ns a populated 4 KiB page here,
 * what fork() spends on a page. UFFDIO_WRITEPROTECT takes mmap_lock for read
 * and page tables have locks of their own, so disjoint ranges protect in
 * parallel: the runs are cut into spans at PROTECT_SPAN boundaries (a multiple
 * of the page-table size, so no two threads share a PTE table) and taken in
 * turn by up to one thread per CPU, begin's own included. Their order does
 * not matter: the handler holds every fault until begin gives `go`, so the
 * instant is the end of the last span for every page alike.
 */
#define PROTECT_SPAN (32ul << 20)
#define PROTECT_MAX_THREADS 8

struct protect_span {
	uintptr_t addr;
	size_t len;
	const struct usnap_reg *reg;
	const struct usnap_space *sp;
};

struct protect_work {
	struct protect_span *span;
	size_t nspans;
	atomic_size_t next;
	struct usnap_latch fail;   /* the first span that failed */
};

static void *protect_main(void *arg)
{
	struct protect_work *w = arg;
	size_t i;

	while (!usnap_latch_err(&w->fail) && (i = atomic_fetch_add(&w->next, 1)) < w->nspans) {
		const struct protect_span *f = &w->span[i];
		int r = protect(f->sp->uffd, f->addr, f->len);

		if (r == -ESRCH && f->sp->foreign)
			r = 0; /* a participant that has exited: nothing of it to protect */

		if (r)
			usnap_latch_set(&w->fail, r, "region '%s': UFFDIO_WRITEPROTECT at +0x%" PRIxPTR ": %s",
					f->reg->name, f->addr - f->reg->addr, strerror(-r));
	}
	return NULL;
}

/*
 * The populated runs of every piece (regions, their aliases, participants'
 * mappings), cut into spans; with `out`, runs that follow each other in
 * memory (adjacent regions: a VMM's memory slots, a database's segments) are
 * joined up to the span boundary. One UFFDIO_WRITEPROTECT then covers
 * several VMAs: it costs far less than one per region (1,000 adjacent 1 MiB
 * regions: 37-87 ms instead of 53-150 ms). Without `out`, an upper bound.
 */
static size_t cut_spans(uffdsnap_snap_t *s, struct protect_span *out)
{
	size_t n = 0, ps = s->page_size;

	for (unsigned k = 0; k < s->spaces.nbase; k++) {
		const struct usnap_space *sp = &s->spaces.sp[k];

		for (size_t i = 0; i < sp->nmaps; i++) {
			const struct usnap_map *m = &sp->maps[i];
			const struct usnap_sreg *sr = m->sr;
			size_t unit = sr->reg->unit * ps;
			uintptr_t step = unit > PROTECT_SPAN ? unit : PROTECT_SPAN;

			for (size_t d = 0; d < sr->ndata; d++) {
				uint64_t lo = sr->data[d].first > m->first ? sr->data[d].first : m->first;
				uint64_t hi = sr->data[d].first + sr->data[d].n;
				if (hi > m->first + m->npages)
					hi = m->first + m->npages;
				uintptr_t a = m->addr + (lo - m->first) * ps, end = m->addr + (hi - m->first) * ps;

				for (uintptr_t b; a < end; a = b) {
					b = (a & ~(step - 1)) + step;
					if (b > end)
						b = end;
					struct protect_span *l = out && n ? &out[n - 1] : NULL;
					if (l && l->sp == sp && l->addr + l->len == a && l->reg->unit == sr->reg->unit &&
					    (l->addr & ~(step - 1)) == (a & ~(step - 1)))
						l->len += b - a;
					else if (out)
						out[n++] = (struct protect_span){ a, b - a, sr->reg, sp };
					else
						n++;
				}
			}
		}
	}
	return n;
}

/* Protect what usnap_arm_regions listed in every region: the instant. */
int usnap_protect_all(uffdsnap_snap_t *s)
{
	struct protect_work w = { 0 };
	pthread_t t[PROTECT_MAX_THREADS - 1];
	size_t nt = 0, want, entries = 0;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int r;

	/* Cut under the spaces' lock (the handler may apply an mremap or munmap
	 * meanwhile); allocated outside it, again if the tables grew. */
	for (size_t cap = 0;;) {
		pthread_mutex_lock(&s->spaces.lock);
		w.nspans = cut_spans(s, NULL);
		if (w.nspans <= cap) {
			w.nspans = cut_spans(s, w.span);
			pthread_mutex_unlock(&s->spaces.lock);
			break;
		}
		pthread_mutex_unlock(&s->spaces.lock);
		free(w.span);
		cap = w.nspans + 16;
		if (!(w.span = malloc(cap * sizeof(*w.span))))
			return usnap_err(-ENOMEM, "allocating the protection plan");
	}
	/* The work is page-table entries: a huge page is one. A thread costs
	 * ~0.1 ms to start, worth it from two spans of 4 KiB pages each (4 GiB
	 * of hugetlbfs is 2048 entries, 0.3 ms on one thread). */
	for (size_t i = 0; i < w.nspans; i++)
		entries += w.span[i].len / (w.span[i].reg->unit * s->page_size);
	want = entries / (2 * PROTECT_SPAN / s->page_size);
	if (want > (size_t)(cpus > 0 ? cpus : 1))
		want = (size_t)(cpus > 0 ? cpus : 1);
	if (want > PROTECT_MAX_THREADS)
		want = PROTECT_MAX_THREADS;
	/* A thread that cannot start leaves its share to the others. */
	nt = usnap_crew_start(t, want > 1 ? (unsigned)want - 1 : 0, protect_main, &w, 0, "usnap-protect", NULL);
	s->stats.protect_threads = nt + 1;
	protect_main(&w);
	usnap_crew_join(t, nt);
	if ((r = usnap_latch_err(&w.fail)))
		r = usnap_err(r, "%s", usnap_latch_msg(&w.fail));
	free(w.span);
	return r;
}

/*
 * End of tracking for every region: unregister where the regions are now
 * (mremap may have moved them, munmap cut them: nothing of ours is left
 * where they were), each range widened to whole VMAs. A region that mremap
 * grew in place took its registration into the new tail, and no event says
 * so; left registered, a hole there would raise a MISSING fault that nobody
 * reads once the snapshot is over. Widening is safe: these descriptors have
 * no registration outside snapshots, so every VMA they touch is ours to
 * clear. The pieces and /proc/self/maps are both in address order: one pass
 * for each of our two descriptors.
 */
static void disarm_space(uffdsnap_snap_t *s, const struct usnap_space *sp)
{
	struct usnap_maps mr;
	struct usnap_vma v = { 0 };
	bool more = !usnap_maps_open(&mr, 0);
	size_t ps = s->page_size;

	for (size_t i = 0; i < sp->nmaps; i++) {
		const struct usnap_map *m = &sp->maps[i];
		uintptr_t a = m->addr, b = m->addr + m->npages * ps;

		/* an alias is in the table only once registered */
		if (!m->sr->registered && !m->alias)
			continue;
		while (more && v.end <= a)
			more = usnap_maps_next(&mr, &v);
		if (more && v.start < a)
			a = v.start;
		while (more && v.end < b)
			more = usnap_maps_next(&mr, &v);
		if (more && v.start < b && v.end > b)
			b = v.end;
		/* Failure: the program unmapped the range itself; nothing is left. */
		usnap_uffd_unregister(sp->uffd, a, b - a);
	}
	usnap_maps_close(&mr);
}

void usnap_disarm_all(uffdsnap_snap_t *s)
{
	for (unsigned k = 0; k < USNAP_OWN_SPACES && k < s->spaces.n; k++)
		disarm_space(s, &s->spaces.sp[k]);
	for (unsigned i = 0; i < s->nregions; i++)
		s->sregs[i].registered = false;
}

/*
 * Write-protecting shmem splits its PMD mappings (the huge pages stay in the
 * page cache, mapped by 512 PTEs from then on), so after a snapshot the
 * program would pay TLB misses for the rest of its life. Once the regions are
 * unregistered (MADV_COLLAPSE refuses uffd-wp ranges, and so does khugepaged)
 * MADV_COLLAPSE of a range whose huge page is in the page cache only maps it
 * by PMD again. Only where huge pages may back the mapping, and over the runs
 * populated at the instant: elsewhere it would allocate huge pages and copy
 * 4 KiB ones into them, which the program did not ask for. Best effort: a
 * range that cannot be collapsed (a hole punched since, no huge page to be
 * had) is left as it is. Runs on the handler thread after disarm.
 */
void usnap_remap_huge(uffdsnap_snap_t *s)
{
	for (unsigned i = 0; i < s->nregions; i++) {
		const struct usnap_sreg *sr = &s->sregs[i];
		struct usnap_space *sp = usnap_home(&s->spaces, sr);

		for (size_t d = 0; sr->reg->thp && d < sr->ndata; d++) {
			uint64_t lo = sr->data[d].first, n;
			uintptr_t addr;
			size_t cur = 0;

			while (usnap_space_each(sp, sr, s->page_size, lo, lo + sr->data[d].n, &cur, &addr, &n))
				if (madvise((void *)addr, n * s->page_size, MADV_COLLAPSE) == 0)
					atomic_fetch_add(&s->stats.pages_huge_remapped, n);
		}
	}
}

/*
 * Un-protecting shmem leaves its PTEs read-only (the kernel makes a shared
 * PTE writable again only on a write fault), so after a snapshot the next
 * write to every page it copied takes one more fault: ~13 us each in this
 * guest, seconds of a writer's time per GiB after the snapshot is over.
 * MADV_POPULATE_WRITE makes them writable for ~0.2 us a page. It would also
 * fill a hole (a page punched since the instant) with a new page, so only
 * pages mapped by a present PTE now are populated, looked up (PAGEMAP_SCAN,
 * Linux 6.7+: without it nothing is done) 2 MiB at a time, which keeps the
 * window between the look and the populate short; a page punched in that
 * window comes back as a page of zeros, the bytes the program would read
 * there anyway. After disarm, never before: on a registered range that hole
 * would raise a MISSING fault on the handler thread, which nobody reads. And
 * only over the pieces still where our table has them: a range the program
 * unmapped meanwhile fails the call harmlessly, a file mapping put there
 * since is only made writable (its bytes do not change). Best effort: any
 * failure leaves the pages to their faults. Runs on the handler thread.
 */
#define WRITABLE_STEP (2u << 20)

void usnap_writable_again(uffdsnap_snap_t *s)
{
	/* zeroed: Valgrind does not know that PAGEMAP_SCAN fills it (CI's memcheck of the demo) */
	struct page_region vec[64] = { 0 };
	int pm = -1;

	for (unsigned i = 0; i < s->nregions; i++) {
		const struct usnap_sreg *sr = &s->sregs[i];
		struct usnap_space *sp = usnap_home(&s->spaces, sr);

		if (sr->reg->kind != USNAP_SHMEM || sr->reg->thp || sr->reg->unit > 1)
			continue; /* private memory is writable again; huge pages: usnap_remap_huge */
		if (pm < 0 && (pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) < 0)
			return;
		for (size_t d = 0; d < sr->ndata; d++) {
			uint64_t lo = sr->data[d].first, n;
			uintptr_t addr;
			size_t cur = 0;

			while (usnap_space_each(sp, sr, s->page_size, lo, lo + sr->data[d].n, &cur, &addr, &n)) {
				for (uintptr_t a = addr, end = addr + n * s->page_size, b, walked; a < end; a = walked) {
					int k;

					b = end - a > WRITABLE_STEP ? a + WRITABLE_STEP : end;
					k = usnap_scan_mapped_file(pm, a, b, vec, sizeof(vec) / sizeof(vec[0]), &walked);
					if (k < 0 || walked <= a)
						goto out; /* no PAGEMAP_SCAN here */
					for (int v = 0; v < k; v++)
						madvise((void *)(uintptr_t)vec[v].start, vec[v].end - vec[v].start,
							MADV_POPULATE_WRITE);
				}
			}
		}
	}
out:
	if (pm >= 0)
		close(pm);
}

/* ---- other mappings of a region's file in this process ---------------------------- */

/*
 * The part of mapping v that maps pages of region reg's file window: the
 * region pages [*first, *first + *n) at *addr. False if none.
 */
static bool file_overlap(const struct usnap_reg *reg, const struct usnap_vma *v, size_t ps, uintptr_t *addr,
			 uint64_t *first, uint64_t *n)
{
	uint64_t lo = (uint64_t)reg->file_off, hi = lo + reg->len, vlo = v->off, vhi = vlo + (v->end - v->start);

	if (reg->kind == USNAP_PRIVATE || v->perms[3] != 's' || v->ino != reg->ino || v->dev != reg->dev)
		return false;
	if (vlo > lo)
		lo = vlo;
	if (vhi < hi)
		hi = vhi;
	if (lo >= hi)
		return false;
	*addr = v->start + (uintptr_t)(lo - vlo);
	*first = (lo - (uint64_t)reg->file_off) / ps;
	*n = (hi - lo) / ps;
	return true;
}

static int cmp_file(const struct usnap_reg *a, dev_t dev, uint64_t ino)
{
	return a->dev != dev ? (a->dev < dev ? -1 : 1) : a->ino != ino ? (a->ino < ino ? -1 : 1) : 0;
}

static int cmp_by_file(const void *a, const void *b)
{
	const struct usnap_reg *y = (*(struct usnap_sreg *const *)b)->reg;

	return cmp_file((*(struct usnap_sreg *const *)a)->reg, y->dev, y->ino);
}

/* The shmem regions by file, so that a mapping finds its regions in log n:
 * begin and the end of the sweep look at every mapping of the process. */
int usnap_index_files(uffdsnap_snap_t *s)
{
	if (!(s->arm.by_file = calloc(s->nregions ? s->nregions : 1, sizeof(*s->arm.by_file))))
		return usnap_err(-ENOMEM, "allocating the region index");
	for (unsigned i = 0; i < s->nregions; i++)
		if (s->sregs[i].reg->kind != USNAP_PRIVATE)
			s->arm.by_file[s->arm.nby_file++] = &s->sregs[i];
	qsort(s->arm.by_file, s->arm.nby_file, sizeof(*s->arm.by_file), cmp_by_file);
	return 0;
}

void usnap_arm_destroy(struct usnap_arm *a)
{
	free(a->by_file);
	free(a->readonly);
}

/* The first of the regions of v's file in s->arm.by_file (nby_file if none):
 * the following ones are too, as long as file_overlap() says so. */
static unsigned first_of_file(const uffdsnap_snap_t *s, const struct usnap_vma *v)
{
	unsigned lo = 0, hi = s->arm.nby_file;

	if (v->perms[3] != 's' || !v->ino)
		return s->arm.nby_file;
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		if (cmp_file(s->arm.by_file[mid]->reg, v->dev, v->ino) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->arm.nby_file && !cmp_file(s->arm.by_file[lo]->reg, v->dev, v->ino) ? lo : s->arm.nby_file;
}

/*
 * A program may map a region's pages more than once (a VMM maps guest RAM
 * for its devices too): a write through another MAP_SHARED mapping would
 * change pages of the instant without a fault of ours. Begin therefore
 * registers every such alias with the region's descriptor before any region
 * lists its holes (a hole filled through an unregistered alias after the
 * listing would be recorded as zeros), and usnap_protect_all protects it with
 * the region. An alias that cannot be registered because it can never be
 * written (a read-only descriptor: no VM_MAYWRITE, EPERM) needs nothing.
 * MAP_PRIVATE mappings of the file never write it.
 */
static int remember_readonly(uffdsnap_snap_t *s, const struct usnap_vma *v)
{
	struct usnap_range *n = realloc(s->arm.readonly, (s->arm.nreadonly + 1) * sizeof(*n));

	if (!n)
		return usnap_err(-ENOMEM, "allocating the list of read-only mappings");
	n[s->arm.nreadonly++] = (struct usnap_range){ v->start, v->end };
	s->arm.readonly = n;
	return 0;
}

/* A mapping found read-only at begin that still cannot write. */
static bool known_readonly(const uffdsnap_snap_t *s, const struct usnap_vma *v)
{
	for (size_t i = 0; v->perms[1] != 'w' && i < s->arm.nreadonly; i++)
		if (v->start >= s->arm.readonly[i].start && v->end <= s->arm.readonly[i].end)
			return true;
	return false;
}

int usnap_arm_aliases(uffdsnap_snap_t *s)
{
	struct usnap_maps mr;
	struct usnap_vma v;
	size_t ps = s->page_size;
	int r = 0;

	if (usnap_maps_open(&mr, 0))
		return usnap_err(-errno, "cannot read /proc/self/maps: %s", strerror(errno));
	while (!r && usnap_maps_next(&mr, &v)) {
		for (unsigned i = first_of_file(s, &v); !r && i < s->arm.nby_file; i++) {
			struct usnap_sreg *sr = s->arm.by_file[i];
			const struct usnap_reg *reg = sr->reg;
			uintptr_t a;
			uint64_t first, n, ioctls;

			if (cmp_file(reg, v.dev, v.ino))
				break; /* past this file's regions */
			if (!file_overlap(reg, &v, ps, &a, &first, &n) || a == reg->addr + first * ps)
				continue; /* not this window of the file, or the region itself */
			r = usnap_uffd_register(usnap_home(&s->spaces, sr)->uffd, a, n * ps, usnap_reg_mode(reg->kind, false),
						&ioctls);
			if (r == -EPERM && v.perms[1] != 'w') {
				r = remember_readonly(s, &v);
				continue;
			}
			if (r)
				r = usnap_err(r, "region '%s': its pages are mapped again at 0x%" PRIxPTR " and that "
					      "mapping cannot be protected (UFFDIO_REGISTER: %s%s)", reg->name, a,
					      strerror(-r), r == -EBUSY ? ": another userfaultfd holds it" : "");
			else
				r = usnap_space_add_alias(s, sr, a, first, n);
		}
	}
	usnap_maps_close(&mr);
	return r;
}

/*
 * At the end of the sweep: is any region's file mapped in a process we track
 * (ours, or a participant) where no piece of ours is? Such a mapping was made
 * during the snapshot (the ones made before are aliases or joined mappings,
 * and pieces follow mremap and munmap): mmap of the file again, MAP_FIXED
 * over a region, munmap then mmap. Writes through it took no fault, so the
 * pages they changed may be in the snapshot with their new contents: fail
 * rather than say it is exact. A mapping made and removed again between two
 * checks is as invisible as write(2) to the file (docs/consistency.md, blind
 * spots). A participant's mapping that cannot write now is not asked about
 * (its VM_MAYWRITE does not show in maps). Runs on the handler thread.
 */
static int check_space(uffdsnap_snap_t *s, const struct usnap_space *sp)
{
	struct usnap_maps mr;
	struct usnap_vma v;
	size_t ps = s->page_size;
	int r = 0;

	if (usnap_maps_open(&mr, sp->pid)) {
		if (sp->pid && errno == ENOENT)
			return 0; /* a participant that has exited writes nothing more */
		r = -errno;
		usnap_fail(s, r, "cannot read the maps of %s to check that no new mapping wrote a region's file: "
			   "%s", sp->pid ? "a participant" : "this process", strerror(-r));
		return r;
	}
	while (!r && usnap_maps_next(&mr, &v)) {
		for (unsigned i = first_of_file(s, &v); !r && i < s->arm.nby_file; i++) {
			const struct usnap_sreg *sr = s->arm.by_file[i];
			uintptr_t a, end;
			uint64_t first, n;

			if (cmp_file(sr->reg, v.dev, v.ino))
				break; /* past this file's regions */
			if (!file_overlap(sr->reg, &v, ps, &a, &first, &n) ||
			    (sp->pid ? v.perms[1] != 'w' : known_readonly(s, &v)))
				continue;
			for (end = a + n * ps; a < end;) {
				const struct usnap_map *m = usnap_space_find(sp, a, ps);
				uintptr_t next;
				if (!m || m->sr != sr || m->first + (a - m->addr) / ps != first)
					break;
				next = m->addr + m->npages * ps < end ? m->addr + m->npages * ps : end;
				first += (next - a) / ps;
				a = next;
			}
			if (a < end && sp->pid)
				usnap_fail(s, -EBUSY, "region '%s': participant %d maps its pages at 0x%" PRIxPTR " without "
					   "having joined that mapping (or mapped them during the snapshot); writes "
					   "through it are not tracked, so the snapshot cannot be exact", sr->reg->name,
					   (int)sp->pid, a);
			else if (a < end)
				usnap_fail(s, -EBUSY, "region '%s': its pages were mapped at 0x%" PRIxPTR " during the "
					   "snapshot; writes through that mapping are not tracked, so the snapshot "
					   "cannot be exact", sr->reg->name, a);
			if (a < end)
				r = -EBUSY;
		}
	}
	usnap_maps_close(&mr);
	return r;
}

int usnap_check_mappings(uffdsnap_snap_t *s)
{
	unsigned shared = 0;
	int r = 0;

	/* The context outlives the handler: it is freed only after it. */
	if (atomic_load(&s->ctx->joins) != s->spaces.joins) {
		usnap_fail(s, -EBUSY, "process %d joined while the snapshot ran: the stores it made before joining "
			   "were not tracked", (int)atomic_load(&s->ctx->last_join_pid));
		return -EBUSY;
	}

	for (unsigned i = 0; i < s->nregions; i++)
		shared += s->sregs[i].reg->kind != USNAP_PRIVATE;
	for (unsigned k = 0; shared && !r && k < s->spaces.n; k++)
		if (k == USNAP_UFFD_SHARED || (s->spaces.sp[k].pid && !s->spaces.sp[k].child))
			r = check_space(s, &s->spaces.sp[k]);
	return r;
}

/*
 * A participant's joined mappings are registered on its userfaultfd (which
 * acts on its address space) with the same modes as ours, before any region
 * lists its holes, like aliases. One that has exited (ESRCH) is left out.
 */
int usnap_arm_participants(uffdsnap_snap_t *s)
{
	size_t ps = s->page_size;

	for (unsigned k = USNAP_OWN_SPACES; k < s->spaces.nbase; k++) {
		const struct usnap_space *sp = &s->spaces.sp[k];
		struct usnap_map *maps;
		size_t n;
		int r = 0;

		/* a copy: once one mapping is registered, the participant's
		 * munmap of it is an event the handler applies to the table */
		pthread_mutex_lock(&s->spaces.lock);
		n = sp->nmaps;
		maps = malloc(n * sizeof(*maps) + 1);
		if (maps)
			memcpy(maps, sp->maps, n * sizeof(*maps));
		pthread_mutex_unlock(&s->spaces.lock);
		if (!maps)
			return usnap_err(-ENOMEM, "participant %d: copying its table", (int)sp->pid);
		for (size_t i = 0; i < n && !r; i++) {
			uint64_t ioctls;

			r = usnap_uffd_register(sp->uffd, maps[i].addr, maps[i].npages * ps,
						usnap_reg_mode(maps[i].sr->reg->kind, false), &ioctls);
			if (r && r != -ESRCH)
				usnap_err(r, "participant %d: registering its mapping of region '%s' at 0x%" PRIxPTR ": %s",
					  (int)sp->pid, maps[i].sr->reg->name, maps[i].addr, strerror(-r));
		}
		free(maps);
		if (r && r != -ESRCH) /* ESRCH: it has exited, nothing of it to track */
			return r;
	}
	return 0;
}

/* ---- other processes mapping a region ------------------------------------------- */

/* Does process `pid` map the file (dev, ino)? */
static bool maps_file(pid_t pid, dev_t dev, ino_t ino)
{
	struct usnap_maps mr;
	struct usnap_vma v;
	bool found = false;

	if (usnap_maps_open(&mr, pid))
		return false; /* gone, or not ours to read (documented) */
	while (!found && usnap_maps_next(&mr, &v))
		found = v.ino == (uint64_t)ino && v.dev == dev;
	usnap_maps_close(&mr);
	return found;
}

static bool joined(const uffdsnap_snap_t *s, pid_t pid)
{
	for (unsigned i = USNAP_OWN_SPACES; i < s->spaces.nbase; i++)
		if (s->spaces.sp[i].pid == pid)
			return true;
	return false;
}

/* UFFDSNAP_OPT_STRICT: at the instant, no other process may map a region's
 * file unless it joined: its writes would not fault on a userfaultfd of ours. */
int usnap_strict_begin(uffdsnap_snap_t *s)
{
	char self[16];
	struct dirent *e;
	DIR *d;

	if (!(d = opendir("/proc")))
		return usnap_err(-errno, "strict: cannot list /proc: %s", strerror(errno));
	snprintf(self, sizeof(self), "%d", (int)getpid());
	while ((e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9' || !strcmp(e->d_name, self) ||
		    joined(s, (pid_t)atoi(e->d_name)))
			continue;
		for (unsigned i = 0; i < s->nregions; i++) {
			const struct usnap_reg *reg = s->sregs[i].reg;
			struct stat st;
			int r;
			if (reg->fd < 0 || fstat(reg->fd, &st) || !maps_file((pid_t)atoi(e->d_name), st.st_dev, st.st_ino))
				continue;
			r = usnap_err(-EBUSY, "region '%s': process %s maps its file too; its writes would not be "
				      "tracked (UFFDSNAP_OPT_STRICT)", reg->name, e->d_name);
			closedir(d); /* e lives in d */
			return r;
		}
	}
	closedir(d);
	return 0;
}

/* Pages of [off, off + len) of fd in the page cache or swap, or -errno.
 * cachestat counts a shmem page in swap as evicted (its swap entry is in the
 * file's mapping); a hole has no entry at all. */
int usnap_cached(int fd, off_t off, size_t len)
{
	struct usnap_cachestat_range r = { (__u64)off, len };
	struct usnap_cachestat cs;

	if (syscall(__NR_cachestat, fd, &r, &cs, 0))
		return -errno;
	return (int)(cs.nr_cache + cs.nr_evicted);
}

bool usnap_in_data(const struct usnap_sreg *sr, uint64_t page)
{
	size_t lo = 0, hi = sr->ndata;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (page < sr->data[mid].first)
			hi = mid;
		else if (page >= sr->data[mid].first + sr->data[mid].n)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}
