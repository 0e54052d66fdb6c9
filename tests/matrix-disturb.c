/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The matrix (test-matrix.c): the writer, the readers and the
 * disturbances, one per column (matrix.h).
 */
#include "matrix.h"

/* ---- one case -------------------------------------------------------------------------- */

static void page_write(struct run *t, size_t p)
{
	size_t off = p * t_page + ((p * 8) % (t_page - 8) & ~(size_t)7);
	uint64_t v = 0x5eed000000000000ull ^ p;

	/* atomic (relaxed): the readers load the same words meanwhile */
	__atomic_store_n((uint64_t *)(t->r->addr + off), v, __ATOMIC_RELAXED);
	memcpy(t->r->now + off, &v, 8);
}

static int advise(void *a, size_t len, int advice, int *err)
{
	int rc = madvise(a, len, advice);

	*err = rc ? errno : 0;
	return rc;
}

void writer_fn(struct t_writers *w, unsigned idx)
{
	struct run *t = w->arg;
	uint8_t *a = t->r->addr + t->first * t_page;
	size_t len = t->n * t_page;

	(void)idx;
	if (t->col == C_POPULATE) {
		uffdsnap_stats_t st0 = { .size = sizeof(st0) }, st1 = { .size = sizeof(st1) };
		uffdsnap_snap_stats(t->s, &st0);
		/* a write: each protected page must go through the handler */
		t->pop_rc[0] = advise(a, len / 2, MADV_POPULATE_WRITE, &t->pop_errno[0]);
		uffdsnap_snap_stats(t->s, &st1);
		t->pop_faults = st1.faults - st0.faults;
		t->pop_rc[1] = advise(a, len, MADV_WILLNEED, &t->pop_errno[1]);
		t->pop_rc[2] = advise(a, len, MADV_POPULATE_READ, &t->pop_errno[2]);
	}
	for (size_t p = t->first; p < t->first + t->n && !atomic_load(&w->stop); p++) {
		if (p == t->skip)
			continue;
		page_write(t, p);
		atomic_fetch_add(&w->progress[0], 1);
	}
}

void *reader_main(void *arg)
{
	struct reader_arg *ra = arg;
	struct run *t = ra->t;
	struct rusage ru;

	while (!atomic_load(&t->rstop)) {
		for (size_t off = 0; off < t->r->len && !atomic_load(&t->rstop); off += t_page) {
			(void)__atomic_load_n((uint64_t *)(t->r->addr + off + 64), __ATOMIC_RELAXED);
			atomic_fetch_add(&t->passes[ra->i], 1);
		}
	}
	getrusage(RUSAGE_THREAD, &ru);
	t->minflt[ra->i] = ru.ru_minflt;
	return NULL;
}

/* Read (map) every page of [first, first+n) that held data at the instant,
 * as a program would after begin: shmem huge pages are only markers then
 * (write-protect split the PMD), pages of the private file mapping may never
 * have been mapped. Holes are left alone (a MISSING fault would wait for the
 * shut sink). Returns the number of pages read. */
size_t touch_pages(struct run *t, size_t first, size_t n)
{
	size_t k = 0;

	for (size_t p = first; p < first + n; p++) {
		if (t->r->hole[p])
			continue;
		(void)*(volatile uint64_t *)(t->r->addr + p * t_page);
		t->r->mapped[p] = 1;
		k++;
	}
	return k;
}

/* Pages of [first, first+n) that held data at the instant (and, for the
 * private file mapping, were mapped: MADV_PAGEOUT walks page tables). */
static bool data_page(const struct run *t, size_t p)
{
	if (t->r->hole[p])
		return false;
	return t->r->kind != K_PRIVFD || t->r->mapped[p];
}

/* -- zap -- */
void disturb_zap(struct run *t)
{
	struct region *r = t->r;
	size_t half = t->n / 2, singles = 0;
	long present, prot;

	for (size_t p = t->first; p < t->first + half; p += 5, singles++)
		ck_assert_int_eq(madvise(r->addr + p * t_page, t_page, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(r->addr + (t->first + half) * t_page, (t->n - half) * t_page, MADV_DONTNEED),
			 0);
	present = t_pagemap_present(r->addr + t->first * t_page, t->n * t_page);
	prot = count_protected(r, t->first, t->n);
	snprintf(t->what, sizeof(t->what), "MADV_DONTNEED on %zu single pages and a %zu KiB range: %ld of %zu target "
		 "pages still present, %ld still write-protected", singles, (t->n - half) * t_page / KiB, present,
		 t->n, prot);
	if (is_private(r->kind)) {
		/* the data of the zapped pages is gone: anonymous memory reads as
		 * zeros again, the private file mapping as the file */
		for (size_t p = t->first; p < t->first + t->n; p++) {
			if (p >= t->first + half || (p - t->first) % 5 == 0) {
				size_t off = p * t_page;
				if (is_anon(r->kind))
					memset(r->now + off, 0, t_page);
				else
					memcpy(r->now + off, r->file + off, t_page);
			}
		}
		t->expect_fail = true;
		t->fail_off = t->first * t_page;
	} else {
		/* the page cache keeps the data and markers keep the protection */
		long data = 0;
		for (size_t p = t->first; p < t->first + t->n; p++)
			data += !r->hole[p];
		ck_assert_msg(prot == data, "%ld of %ld zapped data pages lost their write protection", data - prot,
			      data);
	}
}

/* -- pageout -- */
void disturb_pageout(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page, *vec = calloc(t->n, 1);
	uint64_t *pm = calloc(t->n, 8);
	long pswp0 = vmstat("pswpout"), pswp1, data = 0, swapped = 0, swent = 0, marker = 0, prot = 0;
	size_t touched = touch_pages(t, t->first, t->n);
	int rc1, rc2, e1, e2;

	ck_assert(vec && pm);
	rc1 = advise(a, t->n * t_page, MADV_PAGEOUT, &e1);
	rc2 = advise(a, t->n * t_page, MADV_PAGEOUT, &e2); /* what per-CPU batches kept back */
	pswp1 = vmstat("pswpout");
	ck_assert_msg(rc1 == 0 && rc2 == 0, "MADV_PAGEOUT: %s", strerror(rc1 ? e1 : e2));
	ck_assert_int_eq(mincore(a, t->n * t_page, vec), 0);
	pagemap_read(a, t->n, pm);
	for (size_t i = 0; i < t->n; i++) {
		if (!data_page(t, t->first + i))
			continue;
		data++;
		swapped += !(vec[i] & 1);
		if ((pm[i] & PM_SWAP) && !(pm[i] & T_PM_PRESENT)) {
			if (PM_SWAP_TYPE(pm[i]) < 24)
				swent++; /* a swap entry (anonymous memory) */
			else
				marker++; /* a marker (type 31 here): shmem keeps its swap in the page cache */
		}
		prot += !!(pm[i] & T_PM_WP);
	}
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), MADV_PAGEOUT x2 on %zu pages (%ld with "
		 "data): %ld swapped out (not resident per mincore; pagemap: %ld swap entries, %ld uffd-wp markers), "
		 "pswpout +%ld, %ld still write-protected", touched, t->n, data, swapped, swent, marker, pswp1 - pswp0,
		 prot);
	ck_assert_msg(swapped > 0, "MADV_PAGEOUT swapped out none of %ld data pages although %s is swap "
		      "(pswpout +%ld)", data, t_swap.dev, pswp1 - pswp0);
	ck_assert_msg(prot == data, "%ld of %ld paged-out data pages lost their write protection", data - prot, data);
	free(vec);
	free(pm);
}

/* -- migrate -- */
static size_t pfns_moved(const struct region *r, const uint64_t *before, size_t first, size_t n, uint64_t *now)
{
	size_t moved = 0;

	pagemap_read(r->addr, r->np, now);
	for (size_t p = first; p < first + n; p++)
		moved += (before[p] & T_PM_PRESENT) && (now[p] & T_PM_PRESENT) &&
			 (before[p] & PM_PFN) != (now[p] & PM_PFN);
	return moved;
}

/* Offline and online again the (up to 3) memory blocks holding most present
 * target pages: every movable page in them is migrated elsewhere. */
static void offline_cycle(struct run *t, const uint64_t *pm, char *desc, size_t desclen)
{
	unsigned long long block_bytes = 0;
	unsigned long blocks[3] = { 0 };
	size_t counts[3] = { 0 }, len = 0;
	FILE *f = fopen("/sys/devices/system/memory/block_size_bytes", "re");

	desc[0] = '\0';
	if (!f || fscanf(f, "%llx", &block_bytes) != 1 || !block_bytes) {
		snprintf(desc, desclen, "; no memory blocks to offline");
		if (f)
			fclose(f);
		return;
	}
	fclose(f);
	for (unsigned k = 0; k < 3; k++) {
		for (size_t p = t->first; p < t->first + t->n; p++) {
			unsigned long b;
			size_t c = 0;
			bool taken = false;
			if (!(pm[p] & T_PM_PRESENT))
				continue;
			b = (unsigned long)((pm[p] & PM_PFN) * t_page / block_bytes);
			for (unsigned j = 0; j < k; j++)
				taken |= blocks[j] == b;
			if (taken)
				continue;
			for (size_t q = t->first; q < t->first + t->n; q++)
				c += (pm[q] & T_PM_PRESENT) &&
				     (unsigned long)((pm[q] & PM_PFN) * t_page / block_bytes) == b;
			if (c > counts[k])
				counts[k] = c, blocks[k] = b;
		}
	}
	if (!counts[0]) {
		snprintf(desc, desclen, ", no present target page to offline");
		return;
	}
	len += (size_t)snprintf(desc + len, desclen - len, ", then memory blocks offlined and onlined again:");
	for (unsigned k = 0; k < 3 && counts[k]; k++) {
		char path[128], state[32] = "";
		int off, on;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/memory%lu/state", blocks[k]);
		f = fopen(path, "re");
		if (!f || !fgets(state, sizeof(state), f) || strncmp(state, "online", 6)) {
			if (f)
				fclose(f);
			continue;
		}
		fclose(f);
		off = write_str_bounded(path, "offline", 5);
		on = 0;
		if (!off && (on = t_write_str(path, "online_kernel")) && (on = t_write_str(path, "online")))
			ck_abort_msg("memory block %lu was offlined and cannot be onlined again: %s", blocks[k],
				     strerror(-on));
		len += (size_t)snprintf(desc + len, desclen - len, " #%lu (%zu target pages) %s", blocks[k], counts[k],
					off ? strerror(-off) : "ok");
		if (len >= desclen)
			break;
	}
}

/* Compaction moves pages from the bottom of a zone into free pages its
 * second scan finds from the top, until the two scans meet: pages near the
 * top stay where they are, and the pages it moved are near the top. So
 * compact once before the region is allocated: its pages then come from
 * what that compaction freed near the bottom, where the next one takes
 * pages from. */
void compact(void)
{
	int e = t_write_str("/proc/sys/vm/compact_memory", "1");

	ck_assert_msg(e == 0, "compact_memory: %s", strerror(-e));
}

void disturb_migrate(struct run *t)
{
	struct region *r = t->r;
	uint64_t *before = calloc(r->np, 8), *now = calloc(r->np, 8);
	size_t touched = touch_pages(t, t->first, t->n);
	long mig0 = vmstat("pgmigrate_success"), prot0 = count_protected(r, t->first, t->n), prot1;
	size_t present = 0, moved = 0, moved_region, moved_prot = 0, compactions = 0;
	long mig;
	char off_desc[512] = "";

	ck_assert(before && now);
	pagemap_read(r->addr, r->np, before);
	for (size_t p = t->first; p < t->first + t->n; p++)
		present += !!(before[p] & T_PM_PRESENT);
	/* compaction moves what lies below its free scanner: often many pages
	 * of the region, sometimes none */
	while (compactions < 3 && moved < present / 2) {
		compact();
		compactions++;
		moved = pfns_moved(r, before, t->first, t->n, now);
	}
	if (moved < present / 8 && getenv("USNAP_MATRIX_OFFLINE")) {
		offline_cycle(t, before, off_desc, sizeof(off_desc));
		moved = pfns_moved(r, before, t->first, t->n, now);
	}
	moved_region = pfns_moved(r, before, 0, r->np, now);
	mig = vmstat("pgmigrate_success") - mig0;
	prot1 = count_protected(r, t->first, t->n);
	for (size_t p = t->first; p < t->first + t->n; p++)
		if ((before[p] & T_PM_PRESENT) && (now[p] & T_PM_PRESENT) &&
		    (before[p] & PM_PFN) != (now[p] & PM_PFN))
			moved_prot += (before[p] & T_PM_WP) && (now[p] & T_PM_WP);
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), compact_memory x%zu%s: %zu of %zu present "
		 "target pages migrated (new PFN; %zu in the region), %zu of them write-protected before and after, "
		 "pgmigrate_success +%ld; write-protected target pages %ld before, %ld after", touched, compactions,
		 off_desc, moved, present, moved_region, moved_prot, mig, prot0, prot1);
	ck_assert_msg(prot1 == prot0, "migration dropped the write protection of %ld target pages", prot0 - prot1);
	ck_assert_msg(moved_prot == moved, "%zu migrated target pages lost their write protection", moved - moved_prot);
	ck_assert_msg(mig >= (long)moved, "%zu pages got a new PFN but pgmigrate_success rose by %ld", moved, mig);
	if (!moved) {
		/* compaction moves the movable pages below the point where its
		 * two scanners meet, and never a pageblock-sized folio */
		t_skip(case_name, "compaction migrated none of the %zu target pages (pgmigrate_success +%ld)%s; "
			   "USNAP_MATRIX_OFFLINE=1 also tries to offline their memory blocks", present, mig,
			   r->kind == K_THP || r->kind == K_ANONTHP ? ": it does not move 2 MiB huge pages" : "");
	}
	free(before);
	free(now);
}

/* -- thp --
 * MADV_COLLAPSE three times: before the instant (of the last huge page but
 * one: the snapshot then starts on a huge page made a moment before, and the
 * disturbance splits it), during the snapshot (of the last one), and after
 * the snapshot (the last one again). The kernel refuses to collapse over
 * write-protected memory: mm/khugepaged.c gives up with SCAN_PTE_UFFD_WP on
 * an anonymous PTE or swap entry with the uffd-wp bit and on a file VMA
 * registered for write-protect (userfaultfd_wp(vma)), and MADV_COLLAPSE turns
 * that into EINVAL. So the collapse during the snapshot must be refused (or,
 * should a kernel allow it, leave the pages protected); the ones before and
 * after must happen, which the pages' folios show (kpageflags). */

/* MADV_COLLAPSE of the huge page at `a`; rc, errno and how many of its 512
 * pages are then in a huge folio (read first: shmem collapses the file, and
 * its pages may not be mapped) into the outputs. */
static int collapse(struct run *t, uint8_t *a, int *err, long *folio)
{
	struct region *r = t->r;
	size_t first = (size_t)(a - r->addr) / t_page;
	int rc;

	if (is_anon(r->kind))
		ck_assert_int_eq(madvise(a, HUGE, MADV_HUGEPAGE), 0); /* small_tail's NOHUGEPAGE: eligible now */
	rc = advise(a, HUGE, MADV_COLLAPSE, err);
	touch_pages(t, first, HUGE / t_page);
	*folio = thp_pages(r, first, HUGE / t_page);
	return rc;
}

/* The collapse before begin, where nothing is registered. A MAP_PRIVATE file
 * mapping with pages copied-on-write cannot be collapsed at all (the file's
 * huge folio cannot replace the anonymous copies): there it only runs. */
void collapse_before(struct run *t, char *desc, size_t desclen)
{
	struct region *r = t->r;
	long folio;
	int e, rc = collapse(t, r->addr + r->len - 2 * HUGE, &e, &folio);

	snprintf(desc, desclen, "MADV_COLLAPSE before begin: %s%s (%ld of 512 pages in a huge folio)",
		 rc ? "failed, " : "0", rc ? strerror(e) : "", folio);
	if (r->kind == K_PRIVFD)
		return;
	if (rc && (e == EAGAIN || e == ENOMEM)) {
		t_skip(case_name, "MADV_COLLAPSE before begin: %s (no huge page to be had)", strerror(e));
		t->collapse_skip = true;
		return;
	}
	ck_assert_msg(rc == 0 && folio == 512, "%s", desc);
}

void disturb_thp(struct run *t)
{
	struct region *r = t->r;
	struct thp_info i0, i1, i2;
	uint8_t *last = r->addr + r->len - HUGE, *split = r->addr + r->len - 2 * HUGE;
	long prot0 = count_protected(r, t->first, t->n), prot1, folio;
	int rc, e;

	thp_info(r, &i0);
	rc = collapse(t, last, &e, &folio);
	thp_info(r, &i1);
	/* split the huge page (or page table) below: half of it read-only, then back */
	ck_assert_int_eq(mprotect(split, HUGE / 2, PROT_READ), 0);
	thp_info(r, &i2);
	ck_assert_int_eq(mprotect(split, HUGE / 2, PROT_READ | PROT_WRITE), 0);
	prot1 = count_protected(r, t->first, t->n);
	snprintf(t->what, sizeof(t->what), "%s; MADV_COLLAPSE of the last 2 MiB during the snapshot: %s%s (its pages "
		 "read back: %ld of 512 "
		 "in a huge folio); mapped huge-folio pages %ld -> %ld, PmdMapped %ld -> %ld kB, AnonHugePages %ld -> "
		 "%ld kB; mprotect of half a huge page: %d VMAs, AnonHugePages %ld kB, PmdMapped %ld kB; "
		 "write-protected target pages %ld before, %ld after", t->before, rc ? "failed, " : "0 (collapsed)",
		 rc ? strerror(e) : "", folio, i0.thp_pages, i1.thp_pages, i0.pmd_kb, i1.pmd_kb, i0.anon_kb, i1.anon_kb,
		 i2.vmas, i2.anon_kb, i2.pmd_kb, prot0, prot1);
	/* refused over protected pages (see above); a kernel that collapsed
	 * anyway may move the data to a new huge page, never unprotect it */
	ck_assert_msg(rc ? e == EINVAL : folio == 512, "MADV_COLLAPSE during the snapshot: %s, %ld of 512 pages in "
		      "a huge folio", rc ? strerror(e) : "0", folio);
	ck_assert_msg(prot1 == prot0, "MADV_COLLAPSE/mprotect left %ld target pages unprotected", prot0 - prot1);
}

/* The collapse after the snapshot, where nothing is registered any more: it
 * must happen (a snapshot leaves nothing behind that stops it), and keep
 * what the program wrote. */
void collapse_after(struct run *t)
{
	struct region *r = t->r;
	long folio;
	int e, rc = collapse(t, r->addr + r->len - HUGE, &e, &folio);

	printf("%s: MADV_COLLAPSE of the last 2 MiB after the snapshot: %s%s (%ld of 512 pages in a huge folio)\n",
	       case_name, rc ? "failed, " : "0", rc ? strerror(e) : "", folio);
	if (r->kind == K_PRIVFD || t->collapse_skip)
		return;
	if (rc && (e == EAGAIN || e == ENOMEM)) {
		t_skip(case_name, "MADV_COLLAPSE after the snapshot: %s (no huge page to be had)", strerror(e));
		return;
	}
	ck_assert_msg(rc == 0 && folio == 512, "MADV_COLLAPSE after the snapshot: %s, %ld of 512 pages in a huge "
		      "folio", rc ? strerror(e) : "0", folio);
	ck_assert_msg(memcmp(r->addr, r->now, r->len) == 0, "the collapse changed the region");
}

/* -- mprotect -- */
void disturb_mprotect(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page;
	size_t len = t->n * t_page;
	long prot0 = count_protected(r, t->first, t->n), prot1;
	struct thp_info ti;
	int maxvmas = 0;

	for (int round = 0; round < 3; round++) {
		ck_assert_int_eq(mprotect(a, len, PROT_READ), 0);
		ck_assert_int_eq(mprotect(a, len, PROT_READ | PROT_WRITE), 0);
		ck_assert_int_eq(mprotect(a + len / 4, len / 2, PROT_READ), 0); /* splits the VMA in three */
		ck_assert_int_eq(mprotect(a + len / 4, len / 2, PROT_READ | PROT_WRITE), 0);
		for (size_t off = 0; off < len; off += 128 * KiB) /* and in many */
			ck_assert_int_eq(mprotect(a + off, 64 * KiB, PROT_READ), 0);
		thp_info(r, &ti);
		if (ti.vmas > maxvmas)
			maxvmas = ti.vmas;
		ck_assert_int_eq(mprotect(a, len, PROT_READ | PROT_WRITE), 0);
	}
	prot1 = count_protected(r, t->first, t->n);
	thp_info(r, &ti);
	snprintf(t->what, sizeof(t->what), "3 rounds of PROT_READ / PROT_READ|PROT_WRITE over %zu KiB (whole, middle "
		 "half, every other 64 KiB: up to %d VMAs, %d after): write-protected target pages %ld before, %ld after",
		 len / KiB, maxvmas, ti.vmas, prot0, prot1);
	ck_assert_msg(prot1 == prot0, "mprotect made %ld protected pages writable", prot0 - prot1);
}

/* -- readers: read faults everywhere while the writer writes -- */
void disturb_readers_prep(struct run *t)
{
	struct region *r = t->r;

	/* shmem: zap the targets so the readers' loads fault them back in
	 * (through the markers); private memory has never-touched pages */
	if (!is_private(r->kind))
		ck_assert_int_eq(madvise(r->addr + t->first * t_page, t->n * t_page, MADV_DONTNEED), 0);
}

/* -- punch -- */
void disturb_punch(struct run *t)
{
	struct region *r = t->r;
	size_t p = r->np - 3;
	uint8_t *a = r->addr + p * t_page;

	ck_assert(!r->hole[p]);
	ck_assert(t_pagemap_entry(a) & T_PM_WP);
	t->expect_fail = true;
	t->fail_off = p * t_page;
	memset(r->now + p * t_page, 0, t_page);
	if (r->kind == K_THP) {
		size_t touched = touch_pages(t, t->first, t->n);
		long huge0 = thp_pages(r, t->first, t->n), huge1;
		ck_assert_int_eq(fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(p * t_page),
					   (off_t)t_page), 0);
		huge1 = thp_pages(r, t->first, t->n);
		t->skip = p; /* never touched again: the copy must notice */
		snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped): %ld in a huge folio; fallocate("
			 "PUNCH_HOLE) of page %zu, not touched again: %ld target pages in a huge folio after (%s), file "
			 "holes %ld", touched, huge0, p, huge1, huge1 < huge0 ? "the folio was split" : "NOT split",
			 t_mem_holes(&(struct t_mem){ .fd = r->fd, .len = r->len }));
	} else {
		ck_assert_int_eq(madvise(a, t_page, MADV_REMOVE), 0);
		snprintf(t->what, sizeof(t->what), "MADV_REMOVE of page %zu, then the writer writes it (a MISSING fault "
			 "on a page that held data)", p);
	}
}

/* -- free: MADV_FREE, then reclaim discards the lazily freed pages -- */
void disturb_free(struct run *t)
{
	struct region *r = t->r;
	uint8_t *a = r->addr + t->first * t_page;
	size_t len = t->n * t_page;
	uint64_t *pm = calloc(t->n, 8);
	long discarded = 0, present = 0, prot = 0, prot0 = count_protected(r, t->first, t->n);
	int rc, e;

	ck_assert(pm != NULL);
	rc = advise(a, len, MADV_FREE, &e);
	ck_assert_msg(rc == 0, "MADV_FREE: %s", strerror(e));
	/* clean lazily-freed pages are dropped, not swapped (no swap needed) */
	advise(a, len, MADV_PAGEOUT, &e);
	advise(a, len, MADV_PAGEOUT, &e);
	pagemap_read(a, t->n, pm);
	for (size_t i = 0; i < t->n; i++) {
		present += !!(pm[i] & T_PM_PRESENT);
		prot += !!(pm[i] & T_PM_WP);
		if (!(pm[i] & (T_PM_PRESENT | PM_SWAP | T_PM_WP))) {
			discarded++; /* reads as zeros from now on */
			memset(r->now + (t->first + i) * t_page, 0, t_page);
		}
	}
	snprintf(t->what, sizeof(t->what), "MADV_FREE over %zu pages, then MADV_PAGEOUT x2: %ld pages discarded (no "
		 "page, no protection left), %ld still present; write-protected target pages %ld before, %ld after",
		 t->n, discarded, present, prot0, prot);
	/* no event tells the library: it must notice, or the pages must not go */
	t->may_fail = true;
	t->no_fault = true;
	t->fail_off = UINT64_MAX;
	free(pm);
}

/* -- pinpunch: a hole punch of a page someone holds a reference to (an
 * O_DIRECT or io_uring buffer in flight; here vmsplice into a pipe). A small
 * page leaves the page cache all the same; in a huge folio the reference
 * stops the split, and the kernel zeroes the 4 KiB inside the folio instead:
 * the page stays "data" for SEEK_DATA.
 * KNOWN BLIND SPOT (docs/consistency.md): in a huge folio the copy reads
 * zeros and SEEK_DATA says data, so nothing can tell the zeroed page from one
 * that was zero at the instant; the snapshot completes with zeros there. The
 * case asserts exactly that, and the rest exact. The memfd case (a small
 * page) is detected (-ESTALE). -- */
void disturb_pinpunch(struct run *t)
{
	struct region *r = t->r;
	size_t p = r->np - 3, touched = touch_pages(t, t->first, t->n);
	long huge0 = thp_pages(r, t->first, t->n), huge1;
	struct iovec iov = { r->addr + p * t_page, t_page };
	off_t at = (off_t)(p * t_page);
	uint8_t page[4096];
	bool zero = true;

	ck_assert(t_page <= sizeof(page) && !r->hole[p]);
	ck_assert_int_eq(pipe2(t->pin, O_CLOEXEC), 0);
	ck_assert_int_eq(vmsplice(t->pin[1], &iov, 1, 0), (ssize_t)t_page);
	ck_assert_int_eq(fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, (off_t)t_page), 0);
	huge1 = thp_pages(r, t->first, t->n);
	ck_assert(pread(r->fd, page, t_page, at) == (ssize_t)t_page);
	for (size_t i = 0; i < t_page; i++)
		zero &= !page[i];
	memset(r->now + p * t_page, 0, t_page);
	t->skip = p; /* never touched again */
	t->may_fail = true;
	t->fail_off = (uint64_t)at;
	snprintf(t->what, sizeof(t->what), "%zu target pages read (mapped), %ld in a huge folio; page %zu pinned "
		 "(vmsplice), then fallocate(PUNCH_HOLE) of it, not touched again: %ld target pages in a huge folio "
		 "after, the page reads %s, SEEK_DATA calls it %s", touched, huge0, p, huge1,
		 zero ? "all zero" : "NOT zero", lseek(r->fd, at, SEEK_DATA) == at ? "data" : "a hole");
}
