/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The matrix (test-matrix.c): a region of each kind, its contents at the
 * instant, and what the kernel shows about it (matrix.h).
 */
#include "matrix.h"

/* ---- regions ---------------------------------------------------------------------- */

/* A file on a tmpfs with huge=always, mounted in a mount namespace of this
 * test child only and detached at once: the open file keeps it alive, and
 * nothing is left behind however the test ends. */
static void thp_mount(struct region *r)
{
	char opts[64];

	ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
	ck_assert_msg(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "make / private: %s", strerror(errno));
	snprintf(r->mnt, sizeof(r->mnt), "/tmp/usnap-matrix.XXXXXX");
	ck_assert_msg(mkdtemp(r->mnt) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(opts, sizeof(opts), "size=%zu,huge=always,mode=0700", r->len + 4 * HUGE);
	ck_assert_msg(mount("tmpfs", r->mnt, "tmpfs", 0, opts) == 0, "mount tmpfs -o %s: %s", opts, strerror(errno));
	snprintf(r->path, sizeof(r->path), "%s/region", r->mnt);
	r->fd = open(r->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	umount2(r->mnt, MNT_DETACH);
	rmdir(r->mnt);
	ck_assert_msg(r->fd >= 0, "open %s: %s", r->path, strerror(errno));
	r->mnt[0] = r->path[0] = '\0';
}

static void pread_all(int fd, uint8_t *dst, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = pread(fd, dst + off, len - off, (off_t)off);
		ck_assert_msg(n > 0, "pread: %s", n ? strerror(errno) : "EOF");
		off += (size_t)n;
	}
}

/* Copy of the region as it is now, without changing its page tables: shmem
 * through its file (holes stay holes), private memory through the mapping
 * only where a page is mapped (never-touched pages stay unmapped). */
uint8_t *region_copy(const struct region *r)
{
	uint8_t *c = t_buf_alloc(r->len);

	if (!is_private(r->kind)) {
		pread_all(r->fd, c, r->len);
		return c;
	}
	for (size_t p = 0; p < r->np; p++) {
		size_t off = p * t_page;
		if (r->kind == K_PRIVFD && !r->mapped[p])
			ck_assert(pread(r->fd, c + off, t_page, (off_t)off) == (ssize_t)t_page);
		else if (r->kind == K_ANON && r->hole[p])
			continue; /* never touched: zeros */
		else
			memcpy(c + off, r->addr + off, t_page);
	}
	return c;
}

/* Map a 16 MiB region of kind k at a 2 MiB aligned address between PROT_NONE
 * guards (so its VMAs never merge with neighbours) and fill it. Anonymous THP
 * gets MADV_HUGEPAGE before it is filled; small_tail: except its last 2 MiB,
 * which gets small pages and stays MADV_NOHUGEPAGE (or khugepaged collapses it
 * at once) until the thp disturbance makes it eligible.
 * dense_tail: no holes in the last 4 MiB (the two huge pages the thp column
 * collapses: MADV_COLLAPSE of shmem refuses ranges with holes in them). */
void region_new(struct region *r, enum kind k, bool small_tail, bool dense_tail)
{
	const uint64_t seed = 0x3a7c + (uint64_t)k;
	int flags = MAP_FIXED, prot = PROT_READ | PROT_WRITE;
	uint8_t *want;

	memset(r, 0, sizeof(*r));
	r->fd = -1;
	r->kind = k;
	r->len = REGION;
	r->np = r->len / t_page;
	r->hole = calloc(r->np, 1);
	r->mapped = calloc(r->np, 1);
	ck_assert(r->hole && r->mapped);
	r->resv_len = r->len + 2 * HUGE;
	r->resv = mmap(NULL, r->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_msg(r->resv != MAP_FAILED, "mmap reservation: %s", strerror(errno));
	r->addr = (uint8_t *)(((uintptr_t)r->resv + t_page + HUGE - 1) & ~(uintptr_t)(HUGE - 1));

	switch (k) {
	case K_MEMFD:
	case K_PRIVFD:
		r->fd = memfd_create("usnap-matrix", MFD_CLOEXEC);
		ck_assert_msg(r->fd >= 0, "memfd_create: %s", strerror(errno));
		break;
	case K_THP:
		thp_mount(r);
		break;
	default:
		break;
	}
	if (r->fd >= 0)
		ck_assert_msg(ftruncate(r->fd, (off_t)r->len) == 0, "ftruncate: %s", strerror(errno));
	flags |= k == K_MEMFD || k == K_THP ? MAP_SHARED : k == K_ANONSH ? MAP_SHARED | MAP_ANONYMOUS
	       : k == K_PRIVFD ? MAP_PRIVATE : MAP_PRIVATE | MAP_ANONYMOUS;
	ck_assert_msg(mmap(r->addr, r->len, prot, flags, k == K_ANONSH || is_anon(k) ? -1 : r->fd, 0) == r->addr,
		      "mmap %s: %s", kdesc[k], strerror(errno));
	if (k == K_ANONSH) {
		char p[96];
		snprintf(p, sizeof(p), "/proc/self/map_files/%" PRIxPTR "-%" PRIxPTR, (uintptr_t)r->addr,
			 (uintptr_t)(r->addr + r->len));
		r->fd = open(p, O_RDONLY | O_CLOEXEC);
		ck_assert_msg(r->fd >= 0, "open %s: %s", p, strerror(errno));
	}
	if (k == K_ANONTHP) {
		ck_assert_int_eq(madvise(r->addr, r->len - (small_tail ? HUGE : 0), MADV_HUGEPAGE), 0);
		if (small_tail)
			ck_assert_int_eq(madvise(r->addr + r->len - HUGE, HUGE, MADV_NOHUGEPAGE), 0);
	}

	/* the expected contents: 1 page in 16 a hole (not with huge pages,
	 * which fill whole huge pages), the rest pseudo-random */
	want = t_buf_alloc(r->len);
	for (size_t p = 0; p < r->np; p++) {
		if (k != K_THP && k != K_ANONTHP && p % 16 == 9 && !(dense_tail && p >= r->np - 2 * HUGE / t_page))
			r->hole[p] = 1;
		else
			t_fill_page(want + p * t_page, seed, p);
	}
	if (k == K_PRIVFD) {
		/* the file holds the data; through the private mapping, pages
		 * p%3==0 are copied-on-write (and changed), p%3==1 read, p%3==2
		 * never touched */
		r->file = t_copy(want, r->len);
		for (size_t p = 0; p < r->np; p++)
			if (!r->hole[p])
				ck_assert(pwrite(r->fd, want + p * t_page, t_page, (off_t)(p * t_page)) ==
					  (ssize_t)t_page);
		for (size_t p = 0; p < r->np; p++) {
			uint8_t *a = r->addr + p * t_page;
			if (p % 3 == 0) {
				a[17] ^= 0xff;
				want[p * t_page + 17] ^= 0xff;
				r->mapped[p] = 1;
				r->hole[p] = 0;
			} else if (p % 3 == 1) {
				(void)*(volatile uint8_t *)a;
				r->mapped[p] = 1;
			}
		}
	} else {
		for (size_t p = 0; p < r->np; p++)
			if (!r->hole[p])
				memcpy(r->addr + p * t_page, want + p * t_page, t_page);
	}
	r->ref = region_copy(r);
	ck_assert_msg(memcmp(r->ref, want, r->len) == 0, "the region does not hold what was written into it");
	t_buf_free(want, r->len);
	r->now = t_copy(r->ref, r->len);
}

void region_free(struct region *r)
{
	munmap(r->resv, r->resv_len); /* the region and its guards */
	if (r->fd >= 0)
		close(r->fd);
	t_buf_free(r->ref, r->len);
	t_buf_free(r->now, r->len);
	if (r->file)
		t_buf_free(r->file, r->len);
	free(r->hole);
	free(r->mapped);
}

/* ---- what the kernel shows about a range --------------------------------------------- */

/* Mapped pages of [first, first+n) that belong to a huge folio. */
long thp_pages(const struct region *r, size_t first, size_t n)
{
	uint64_t *pm = calloc(n, 8);
	int kfd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	long k = 0;

	ck_assert_msg(kfd >= 0 && pm, "open /proc/kpageflags: %s", strerror(errno));
	pagemap_read(r->addr + first * t_page, n, pm);
	for (size_t i = 0; i < n; i++) {
		uint64_t fl = 0;
		if (!(pm[i] & T_PM_PRESENT) || !(pm[i] & PM_PFN))
			continue;
		if (pread(kfd, &fl, 8, (off_t)((pm[i] & PM_PFN) * 8)) == 8 && (fl & KPF_THP))
			k++;
	}
	close(kfd);
	free(pm);
	return k;
}

void thp_info(const struct region *r, struct thp_info *o)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	uintptr_t lo = (uintptr_t)r->addr, hi = lo + r->len;
	bool in = false;
	char line[512];

	memset(o, 0, sizeof(*o));
	ck_assert(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		long kb;
		char c;
		if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3) {
			in = s < hi && e > lo;
			o->vmas += in;
		} else if (in && sscanf(line, "ShmemPmdMapped: %ld", &kb) == 1) {
			o->pmd_kb += kb;
		} else if (in && sscanf(line, "FilePmdMapped: %ld", &kb) == 1) {
			o->pmd_kb += kb;
		} else if (in && sscanf(line, "AnonHugePages: %ld", &kb) == 1) {
			o->anon_kb += kb;
		}
	}
	fclose(f);
	o->thp_pages = thp_pages(r, 0, r->np);
}

long count_protected(const struct region *r, size_t first, size_t n)
{
	return t_pagemap_protected(r->addr + first * t_page, n * t_page);
}
