/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Regions: what memory may be snapshotted (add_region) and how a region is
 * armed for one snapshot and disarmed after it.
 *
 * A region is either a MAP_SHARED window of one shmem file, or private
 * memory (MAP_PRIVATE anonymous memory, or a MAP_PRIVATE mapping of a shmem
 * file). Shmem pages are read with pread() on the file, never through the
 * mapping: a read through the mapping could raise a MISSING fault and the
 * handler thread would then wait for itself. Private memory is registered
 * WP-only (no MISSING faults), so the handler reads it through the page
 * tables with process_vm_readv(); it is armed as one run covering the
 * region, never-touched pages protected by WP_UNPOPULATED markers.
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
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sched.h>
#include <unistd.h>

#include "maps.h"
#include "uffd.h"
#include "uffdsnap-private.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

/*
 * Registration modes: a snapshot registers shmem MISSING|WP and private memory
 * WP; add_region's probe registers shmem MISSING only (see there). And the
 * ioctls each registration must offer.
 */
static uint64_t reg_mode(enum usnap_kind kind, bool probe)
{
	if (kind != USNAP_SHMEM)
		return UFFDIO_REGISTER_MODE_WP;
	return UFFDIO_REGISTER_MODE_MISSING | (probe ? 0 : UFFDIO_REGISTER_MODE_WP);
}

static uint64_t reg_ioctls(enum usnap_kind kind, bool probe)
{
	uint64_t need = 1ull << _UFFDIO_WAKE;

	if (kind == USNAP_SHMEM)
		need |= 1ull << _UFFDIO_ZEROPAGE;
	if (kind != USNAP_SHMEM || !probe)
		need |= 1ull << _UFFDIO_WRITEPROTECT;
	return need;
}

/*
 * /proc/self/maps read once for ranges checked in address order: begin
 * checks every region, and reading the whole file for each made begin
 * quadratic in the number of regions (1,000 regions: 200 ms of 270). The
 * last mapping read is kept: the next range may start in it.
 */
struct maps_cursor {
	struct usnap_maps mr;
	struct usnap_vma last;
	bool have_last;
};

static int cursor_open(struct maps_cursor *c, const char *name)
{
	c->have_last = false;
	if (usnap_maps_open(&c->mr, 0))
		return usnap_err(-errno, "region '%s': cannot read /proc/self/maps: %s", name, strerror(errno));
	return 0;
}

/* The next mapping that ends above addr: the kept one, or one read now. */
static bool cursor_next(struct maps_cursor *c, uintptr_t addr, struct usnap_vma *v)
{
	if (c->have_last && c->last.end > addr) {
		c->have_last = false;
		*v = c->last;
		return true;
	}
	while (usnap_maps_next(&c->mr, v))
		if (v->end > addr)
			return true;
	return false;
}

/*
 * Check that [addr, end) is covered, without gaps, by readable mappings that
 * are all private, or all shared from one file at linear offsets; return the
 * kind, the first VMA and the file offset of addr. /proc/self/maps is the only
 * place that says MAP_SHARED vs MAP_PRIVATE. c: ranges in address order.
 */
static int scan_maps_at(struct maps_cursor *c, const char *name, uintptr_t addr, uintptr_t end,
			struct usnap_vma *first, off_t *file_off, enum usnap_kind *kind)
{
	struct usnap_vma v;
	uintptr_t covered = addr;
	bool have_first = false;
	int r = 0;

	while (covered < end && cursor_next(c, covered, &v)) {
		c->last = v;
		c->have_last = true;
		if (v.start > covered) {
			r = usnap_err(-EFAULT, "region '%s': [0x%" PRIxPTR ", 0x%" PRIxPTR ") is not mapped",
				      name, covered, v.start < end ? v.start : end);
			break;
		}
		enum usnap_kind k = v.perms[3] == 's' ? USNAP_SHMEM : USNAP_PRIVATE;
		if (have_first && k != *kind) {
			r = usnap_err(-EMEDIUMTYPE, "region '%s': mixes shared and private mappings at 0x%" PRIxPTR
				      "; register each as its own region", name, v.start);
			break;
		}
		if (v.perms[0] != 'r') {
			r = usnap_err(-EMEDIUMTYPE, "region '%s': 0x%" PRIxPTR " is not readable (%s)", name,
				      v.start, v.perms);
			break;
		}
		if (!have_first) {
			*first = v;
			*file_off = (off_t)(v.off + (addr - v.start));
			*kind = k;
			have_first = true;
		} else if (k == USNAP_SHMEM && (v.ino != first->ino || v.dev != first->dev ||
			   v.off != first->off + (v.start - first->start))) {
			r = usnap_err(-EMEDIUMTYPE, "region '%s': spans mappings of different files or offsets at "
				      "0x%" PRIxPTR "; register each mapping as its own region", name, v.start);
			break;
		}
		covered = v.end;
	}
	if (!r && covered < end)
		r = usnap_err(-EFAULT, "region '%s': [0x%" PRIxPTR ", 0x%" PRIxPTR ") is not mapped", name, covered, end);
	return r;
}

static int scan_maps(const char *name, uintptr_t addr, uintptr_t end, struct usnap_vma *first, off_t *file_off,
		     enum usnap_kind *kind)
{
	struct maps_cursor c;
	int r = cursor_open(&c, name);

	if (!r)
		r = scan_maps_at(&c, name, addr, end, first, file_off, kind);
	usnap_maps_close(&c.mr);
	return r;
}

/*
 * Without CAP_CHECKPOINT_RESTORE (unprivileged, user-mode-only contexts)
 * /proc/self/map_files is closed to us; the program usually still holds the
 * file open, so find a descriptor of ours that is the same inode.
 */
static int open_own_fd(const struct usnap_vma *v)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	struct stat st;
	int fd = -1;

	if (!d)
		return -1;
	while (fd < 0 && (e = readdir(d))) {
		int n = atoi(e->d_name);
		if (e->d_name[0] == '.' || n == dirfd(d) || fstat(n, &st))
			continue;
		if (st.st_ino == v->ino && st.st_dev == v->dev)
			fd = fcntl(n, F_DUPFD_CLOEXEC, 0);
	}
	closedir(d);
	return fd;
}

/* Open the file behind the mapping and check it is shmem (or hugetlbfs: *unit
 * gets its huge page size) that covers the region. */
static int open_backing(const char *name, const struct usnap_vma *v, uintptr_t addr, off_t file_off, size_t len,
			int *fdp, enum usnap_kind *kind, size_t *unit)
{
	char p[64];
	struct statfs sfs;
	struct stat st;
	int fd;

	snprintf(p, sizeof(p), "/proc/self/map_files/%" PRIxPTR "-%" PRIxPTR, v->start, v->end);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == EPERM || e == EACCES)
			fd = open_own_fd(v);
		if (fd < 0)
			return usnap_err(e == EPERM || e == EACCES ? -EPERM : -e,
					 "region '%s': cannot open its backing file through %s (%s) and no open "
					 "file descriptor of this process is that file: keep the memfd open, or "
					 "grant CAP_CHECKPOINT_RESTORE", name, p, strerror(e));
	}
	if (fstatfs(fd, &sfs) || fstat(fd, &st)) {
		int e = -errno;
		close(fd);
		return usnap_err(e, "region '%s': fstat of backing file: %s", name, strerror(-e));
	}
	if (sfs.f_type == HUGETLBFS_MAGIC) {
		*kind = USNAP_HUGETLB;
		*unit = (size_t)sfs.f_bsize;
		if ((addr | len | (size_t)file_off) & (*unit - 1)) {
			close(fd);
			return usnap_err(-EINVAL, "region '%s': hugetlbfs memory is protected in huge pages of %zu "
					 "KiB: its address, length and file offset must be multiples of that",
					 name, *unit >> 10);
		}
	} else if (sfs.f_type != TMPFS_MAGIC) {
		close(fd);
		return usnap_err(-EMEDIUMTYPE, "region '%s': backed by %s on a filesystem of type 0x%lx, not "
				 "shmem; use memfd_create, a file on tmpfs or /dev/shm, or MAP_SHARED|MAP_ANONYMOUS",
				 name, v->path[0] ? v->path : "a file", (unsigned long)sfs.f_type);
	}
	if (st.st_ino != v->ino || (off_t)st.st_size < file_off + (off_t)len) {
		close(fd);
		return usnap_err(-EINVAL, "region '%s': extends past the end of its file (size %lld)", name,
				 (long long)st.st_size);
	}
	*fdp = fd;
	return 0;
}

/*
 * Private memory is read through the page tables, so its file (if any) does
 * not matter, except hugetlbfs: MAP_PRIVATE huge pages would have to be read
 * through the page tables in huge units, which is not done.
 */
static int check_private(const char *name, const struct usnap_vma *v)
{
	char p[64];
	struct statfs sfs;
	int fd, huge = strstr(v->path, "anon_hugepage") != NULL;

	if (!huge && v->ino) {
		snprintf(p, sizeof(p), "/proc/self/map_files/%" PRIxPTR "-%" PRIxPTR, v->start, v->end);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			huge = !fstatfs(fd, &sfs) && sfs.f_type == HUGETLBFS_MAGIC;
			close(fd);
		}
	}
	return huge ? usnap_err(-EMEDIUMTYPE, "region '%s': MAP_PRIVATE hugetlbfs memory is not supported; "
				"map it MAP_SHARED", name) : 0;
}

static size_t pmd_size(void)
{
	unsigned long pmd = 0;
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "re");

	if (f) {
		if (fscanf(f, "%lu", &pmd) != 1)
			pmd = 0;
		fclose(f);
	}
	return pmd;
}

/* May the kernel back the mapping at a with transparent huge pages (its
 * smaps THPeligible)? */
static bool thp_eligible(uintptr_t a)
{
	char line[256];
	uintptr_t lo, hi;
	int eligible = 0;
	bool in = false;
	FILE *f = fopen("/proc/self/smaps", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (usnap_parse_range(line, &lo, &hi))
			in = a >= lo && a < hi;
		else if (in && sscanf(line, "THPeligible: %d", &eligible) == 1)
			break;
	}
	fclose(f);
	return eligible == 1;
}

/*
 * Private memory that may be backed by transparent huge pages is copied and
 * un-protected a huge page at a time, like hugetlbfs: un-protecting part of a
 * PMD-mapped huge page splits it, and the 64 KiB fault windows and 256 KiB
 * sweep steps used to split every huge page of the region (test-private
 * private_thp_stays_huge: 64 MiB of AnonHugePages before a snapshot, none
 * after). The unit counts from the region's start, so it is only used when
 * that is aligned to the huge page size. Returns the unit in bytes, or 0.
 */
static size_t thp_unit(uintptr_t a)
{
	size_t pmd = pmd_size();

	return pmd && !(a & (pmd - 1)) && thp_eligible(a) ? pmd : 0;
}

/*
 * Two regions over the same file pages would each copy the page when its own
 * mapping is written, and the other would then read the new contents from
 * the file: refused. Another mapping of a region's pages is an alias, which
 * begin protects with the region (usnap_arm_aliases).
 */
static int shares_pages(const uffdsnap_t *ctx, const char *name, const struct usnap_vma *v, off_t off, size_t len)
{
	for (unsigned i = 0; i < ctx->nregs; i++) {
		const struct usnap_reg *o = &ctx->regs[i];
		if (o->kind != USNAP_PRIVATE && o->ino == v->ino && o->dev == v->dev &&
		    off < o->file_off + (off_t)o->len && o->file_off < off + (off_t)len)
			return usnap_err(-EBUSY, "region '%s' maps file pages that region '%s' maps too; register "
					 "one of the mappings (a snapshot protects every mapping of a region's "
					 "pages in this process)", name, o->name);
	}
	return 0;
}

USNAP_EXPORT int uffdsnap_add_region(uffdsnap_t *ctx, const char *name, void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr, end;
	struct usnap_reg *r;
	struct usnap_vma v;
	off_t file_off = 0;
	enum usnap_kind kind = USNAP_SHMEM;
	uint64_t ioctls = 0;
	size_t nlen, unit = 0;
	bool thp;
	int fd = -1, err, id;

	usnap_clear_err();
	if (!ctx)
		return usnap_err(-EINVAL, "ctx is NULL");
	if (!name || !(nlen = strlen(name)))
		return usnap_err(-EINVAL, "region name is NULL or empty");
	if (nlen > USNAP_MAX_NAME)
		return usnap_err(-ENAMETOOLONG, "region name is %zu bytes; the limit is %d", nlen, USNAP_MAX_NAME);
	if (!len || (a | len) & (ctx->page_size - 1) || __builtin_add_overflow(a, len, &end))
		return usnap_err(-EINVAL, "region '%s': address %p and length %zu must be non-zero multiples "
				 "of the page size (%zu)", name, addr, len, ctx->page_size);

	pthread_mutex_lock(&ctx->lock);
	err = 0;
	if (ctx->active)
		err = usnap_err(-EBUSY, "region '%s': cannot add regions while a snapshot runs", name);
	else if (ctx->migration)
		err = usnap_err(-EBUSY, "region '%s': cannot add regions while a migration runs", name);
	for (unsigned i = 0; !err && i < ctx->nregs; i++) {
		const struct usnap_reg *o = &ctx->regs[i];
		if (!strcmp(o->name, name))
			err = usnap_err(-EEXIST, "region name '%s' is already registered", name);
		else if (a < o->addr + o->len && o->addr < end)
			err = usnap_err(-EBUSY, "region '%s' overlaps region '%s'", name, o->name);
	}
	if (!err && ctx->nregs >= USNAP_MAX_REGIONS)
		err = usnap_err(-ENOSPC, "too many regions (limit %d)", USNAP_MAX_REGIONS);
	if (!err)
		err = scan_maps(name, a, end, &v, &file_off, &kind);
	if (!err && kind == USNAP_SHMEM)
		err = shares_pages(ctx, name, &v, file_off, len);
	if (!err)
		err = kind == USNAP_SHMEM ? open_backing(name, &v, a, file_off, len, &fd, &kind, &unit)
					  : check_private(name, &v);
	if (!err && kind == USNAP_PRIVATE)
		unit = thp_unit(a);
	/* shmem huge pages: see usnap_remap_huge */
	thp = !err && kind == USNAP_SHMEM && len >= pmd_size() && pmd_size() && thp_eligible(a);
	if (err)
		goto out;

	/*
	 * Prove now, not at begin, that the kernel can track this memory. For
	 * shmem only MISSING mode: unregistering a WP registration leaves every
	 * present shmem PTE read-only (uffd_wp_range() does not upgrade shared
	 * mappings), which would cost the program one extra fault per page.
	 * Write-protect on shmem is implied by UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	 * (checked by uffdsnap_new) for any VMA that accepts MISSING here.
	 * Private memory is registered WP-only, at begin too: it has no file to
	 * read holes from, and never-touched pages carry WP_UNPOPULATED markers.
	 */
	err = usnap_uffd_register(ctx->uffd[usnap_kind_uffd(kind)], a, len, reg_mode(kind, true), &ioctls);
	if (err) {
		if (fd >= 0)
			close(fd);
		err = usnap_err(err == -EINVAL ? -EMEDIUMTYPE : err, "region '%s': UFFDIO_REGISTER failed: %s%s",
				name, strerror(-err), err == -EBUSY ? " (another userfaultfd holds this memory: "
				"another context snapshotting it, or another library)" : "");
		goto out;
	}
	usnap_uffd_unregister(ctx->uffd[usnap_kind_uffd(kind)], a, len);
	if ((ioctls & reg_ioctls(kind, true)) != reg_ioctls(kind, true)) {
		if (fd >= 0)
			close(fd);
		err = usnap_err(-EOPNOTSUPP, "region '%s': kernel offers ioctls 0x%llx for this memory",
				name, (unsigned long long)ioctls);
		goto out;
	}

	if (ctx->nregs == ctx->cap) {
		unsigned cap = ctx->cap ? ctx->cap * 2 : 8;
		struct usnap_reg *n = realloc(ctx->regs, cap * sizeof(*n));
		if (!n) {
			if (fd >= 0)
				close(fd);
			err = usnap_err(-ENOMEM, "growing the region table");
			goto out;
		}
		ctx->regs = n, ctx->cap = cap;
	}
	r = &ctx->regs[ctx->nregs];
	*r = (struct usnap_reg){ .name = strdup(name), .kind = kind, .ino = v.ino, .dev = v.dev, .addr = a, .len = len,
				 .npages = len / ctx->page_size, .fd = fd, .file_off = file_off,
				 .unit = unit ? (uint32_t)(unit / ctx->page_size) : 1, .thp = thp };
	if (!r->name) {
		if (fd >= 0)
			close(fd);
		err = usnap_err(-ENOMEM, "copying the region name");
		goto out;
	}
	id = (int)ctx->nregs++;
	if (ctx->parent.ok) /* else its reason (none completed, the last failed) still holds */
		usnap_delta_lost(ctx, "region '%s' was added after the last snapshot", name);
	pthread_mutex_unlock(&ctx->lock);
	return id;
out:
	pthread_mutex_unlock(&ctx->lock);
	return err;
}

/*
 * The one MAP_SHARED mapping of fd's file that holds `offset`, followed across
 * the VMAs it was split into (mprotect, madvise) while they map the file on.
 * A second mapping of those pages is refused rather than guessed between:
 * registering one would leave the other an untracked alias of the region.
 */
USNAP_EXPORT int uffdsnap_add_region_fd(uffdsnap_t *ctx, const char *name, int fd, uint64_t offset, size_t len)
{
	struct usnap_maps m;
	struct usnap_vma v;
	struct stat st;
	uintptr_t addr = 0, end = 0, other = 0;
	uint64_t end_off = 0;
	unsigned found = 0;

	usnap_clear_err();
	if (!ctx)
		return usnap_err(-EINVAL, "ctx is NULL");
	if (fstat(fd, &st))
		return usnap_err(-errno, "region '%s': descriptor %d: %s", name ? name : "", fd, strerror(errno));
	if (offset & (ctx->page_size - 1))
		return usnap_err(-EINVAL, "region '%s': offset 0x%" PRIx64 " is not a multiple of the page size",
				 name ? name : "", offset);
	if (usnap_maps_open(&m, 0))
		return usnap_err(-errno, "reading /proc/self/maps: %s", strerror(errno));
	while (usnap_maps_next(&m, &v)) {
		if (v.perms[3] != 's' || v.dev != st.st_dev || v.ino != (uint64_t)st.st_ino)
			continue;
		if (found == 1 && v.start == end && v.off == end_off) {
			end = v.end;
			end_off = v.off + (v.end - v.start);
			continue;
		}
		if (offset < v.off || offset - v.off >= v.end - v.start)
			continue;
		if (found++) {
			other = v.start + (uintptr_t)(offset - v.off);
			continue;
		}
		addr = v.start + (uintptr_t)(offset - v.off);
		end = v.end;
		end_off = v.off + (v.end - v.start);
	}
	usnap_maps_close(&m);
	if (!found)
		return usnap_err(-ENOENT, "region '%s': this process has no MAP_SHARED mapping of descriptor %d's "
				 "file at offset 0x%" PRIx64, name ? name : "", fd, offset);
	if (found > 1)
		return usnap_err(-EBUSY, "region '%s': offset 0x%" PRIx64 " of descriptor %d's file is mapped %u times "
				 "(at 0x%" PRIxPTR " and 0x%" PRIxPTR "); register one by address with "
				 "uffdsnap_add_region()", name ? name : "", offset, fd, found, addr, other);
	return uffdsnap_add_region(ctx, name, (void *)addr, len ? len : end - addr);
}

USNAP_EXPORT int uffdsnap_region_count(const uffdsnap_t *ctx)
{
	return ctx ? (int)ctx->nregs : usnap_err(-EINVAL, "ctx is NULL");
}

void usnap_reg_release(struct usnap_reg *r)
{
	free(r->name);
	free(r->fp);
	if (r->fd >= 0)
		close(r->fd);
}

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

static int arm(uffdsnap_snap_t *s, struct usnap_sreg *sr, struct maps_cursor *c)
{
	const struct usnap_reg *reg = sr->reg;
	uint64_t ioctls = 0;
	int r;

	/* Still the memory add_region checked? Something else may have been
	 * mapped where the program unmapped a region, and would register fine. */
	{
		struct usnap_vma v;
		enum usnap_kind kind;
		off_t off;

		r = scan_maps_at(c, reg->name, reg->addr, reg->addr + reg->len, &v, &off, &kind);
		if (r)
			return r;
		if ((kind == USNAP_PRIVATE) != (reg->kind == USNAP_PRIVATE) || v.ino != reg->ino ||
		    (kind == USNAP_SHMEM && off != reg->file_off))
			return usnap_err(-EFAULT, "region '%s': the memory at 0x%" PRIxPTR " is not what "
					 "uffdsnap_add_region registered (unmapped and mapped again?)", reg->name,
					 reg->addr);
	}
	r = usnap_uffd_register(usnap_home(s, sr)->uffd, reg->addr, reg->len, reg_mode(reg->kind, false), &ioctls);
	if (r == -EBUSY)
		return usnap_err(r, "region '%s': another userfaultfd (another context, or another library) "
				 "holds this memory", reg->name);
	if (r)
		return usnap_err(r == -EINVAL || r == -ENOMEM ? -EFAULT : r,
				 "region '%s': UFFDIO_REGISTER failed (%s): was it unmapped or remapped since "
				 "uffdsnap_add_region?", reg->name, strerror(-r));
	sr->registered = true;
	if ((ioctls & reg_ioctls(reg->kind, false)) != reg_ioctls(reg->kind, false))
		return usnap_err(-EOPNOTSUPP, "region '%s': kernel offers ioctls 0x%llx for this memory",
				 reg->name, (unsigned long long)ioctls);
	return reg->kind == USNAP_SHMEM ? find_data(s, sr) : whole_data(s, sr);
}

/* Register every region and list its populated runs, in address order: one
 * read of /proc/self/maps for them all. */
int usnap_arm_regions(uffdsnap_snap_t *s)
{
	struct maps_cursor c;
	int r;

	if (!s->nregions)
		return 0;
	r = cursor_open(&c, s->by_addr[0]->reg->name);
	for (unsigned i = 0; !r && i < s->nregions; i++)
		r = arm(s, s->by_addr[i], &c);
	usnap_maps_close(&c.mr);
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

	for (unsigned k = 0; k < s->nbase; k++) {
		const struct usnap_space *sp = &s->spaces[k];

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

	/* Cut under maps_lock (the handler may apply an mremap or munmap
	 * meanwhile); allocated outside it, again if the tables grew. */
	for (size_t cap = 0;;) {
		pthread_mutex_lock(&s->maps_lock);
		w.nspans = cut_spans(s, NULL);
		if (w.nspans <= cap) {
			w.nspans = cut_spans(s, w.span);
			pthread_mutex_unlock(&s->maps_lock);
			break;
		}
		pthread_mutex_unlock(&s->maps_lock);
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
	for (unsigned k = 0; k < USNAP_OWN_SPACES && k < s->nspaces; k++)
		disarm_space(s, &s->spaces[k]);
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
		struct usnap_space *sp = usnap_home(s, sr);

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
		struct usnap_space *sp = usnap_home(s, sr);

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
	if (!(s->by_file = calloc(s->nregions ? s->nregions : 1, sizeof(*s->by_file))))
		return usnap_err(-ENOMEM, "allocating the region index");
	for (unsigned i = 0; i < s->nregions; i++)
		if (s->sregs[i].reg->kind != USNAP_PRIVATE)
			s->by_file[s->nby_file++] = &s->sregs[i];
	qsort(s->by_file, s->nby_file, sizeof(*s->by_file), cmp_by_file);
	return 0;
}

/* The first of the regions of v's file in s->by_file (nby_file if none):
 * the following ones are too, as long as file_overlap() says so. */
static unsigned first_of_file(const uffdsnap_snap_t *s, const struct usnap_vma *v)
{
	unsigned lo = 0, hi = s->nby_file;

	if (v->perms[3] != 's' || !v->ino)
		return s->nby_file;
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		if (cmp_file(s->by_file[mid]->reg, v->dev, v->ino) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->nby_file && !cmp_file(s->by_file[lo]->reg, v->dev, v->ino) ? lo : s->nby_file;
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
	struct usnap_range *n = realloc(s->readonly, (s->nreadonly + 1) * sizeof(*n));

	if (!n)
		return usnap_err(-ENOMEM, "allocating the list of read-only mappings");
	n[s->nreadonly++] = (struct usnap_range){ v->start, v->end };
	s->readonly = n;
	return 0;
}

/* A mapping found read-only at begin that still cannot write. */
static bool known_readonly(const uffdsnap_snap_t *s, const struct usnap_vma *v)
{
	for (size_t i = 0; v->perms[1] != 'w' && i < s->nreadonly; i++)
		if (v->start >= s->readonly[i].start && v->end <= s->readonly[i].end)
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
		for (unsigned i = first_of_file(s, &v); !r && i < s->nby_file; i++) {
			struct usnap_sreg *sr = s->by_file[i];
			const struct usnap_reg *reg = sr->reg;
			uintptr_t a;
			uint64_t first, n, ioctls;

			if (cmp_file(reg, v.dev, v.ino))
				break; /* past this file's regions */
			if (!file_overlap(reg, &v, ps, &a, &first, &n) || a == reg->addr + first * ps)
				continue; /* not this window of the file, or the region itself */
			r = usnap_uffd_register(usnap_home(s, sr)->uffd, a, n * ps, reg_mode(reg->kind, false), &ioctls);
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
		for (unsigned i = first_of_file(s, &v); !r && i < s->nby_file; i++) {
			const struct usnap_sreg *sr = s->by_file[i];
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
	if (atomic_load(&s->ctx->joins) != s->joins) {
		usnap_fail(s, -EBUSY, "process %d joined while the snapshot ran: the stores it made before joining "
			   "were not tracked", (int)atomic_load(&s->ctx->last_join_pid));
		return -EBUSY;
	}

	for (unsigned i = 0; i < s->nregions; i++)
		shared += s->sregs[i].reg->kind != USNAP_PRIVATE;
	for (unsigned k = 0; shared && !r && k < s->nspaces; k++)
		if (k == USNAP_UFFD_SHARED || (s->spaces[k].pid && !s->spaces[k].child))
			r = check_space(s, &s->spaces[k]);
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

	for (unsigned k = USNAP_OWN_SPACES; k < s->nbase; k++) {
		const struct usnap_space *sp = &s->spaces[k];
		struct usnap_map *maps;
		size_t n;
		int r = 0;

		/* a copy: once one mapping is registered, the participant's
		 * munmap of it is an event the handler applies to the table */
		pthread_mutex_lock(&s->maps_lock);
		n = sp->nmaps;
		maps = malloc(n * sizeof(*maps) + 1);
		if (maps)
			memcpy(maps, sp->maps, n * sizeof(*maps));
		pthread_mutex_unlock(&s->maps_lock);
		if (!maps)
			return usnap_err(-ENOMEM, "participant %d: copying its table", (int)sp->pid);
		for (size_t i = 0; i < n && !r; i++) {
			uint64_t ioctls;

			r = usnap_uffd_register(sp->uffd, maps[i].addr, maps[i].npages * ps,
						reg_mode(maps[i].sr->reg->kind, false), &ioctls);
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
	for (unsigned i = USNAP_OWN_SPACES; i < s->nbase; i++)
		if (s->spaces[i].pid == pid)
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

/* Pages of [off, off + len) of fd in the page cache (or swap), or -errno. */
int usnap_cached(int fd, off_t off, size_t len)
{
	struct usnap_cachestat_range r = { (__u64)off, len };
	struct usnap_cachestat cs;

	if (syscall(__NR_cachestat, fd, &r, &cs, 0))
		return -errno;
	return (int)cs.nr_cache;
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
