/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Regions: what memory may be snapshotted. uffdsnap_add_region checks a range
 * against /proc/self/maps, opens its backing file and proves that the kernel
 * can track it; how a snapshot registers a region (usnap_reg_mode) and whether
 * the memory is still what was added (usnap_reg_recheck) are decided here
 * too. Arming the regions for one snapshot and disarming them: arm.c.
 *
 * A region is either a MAP_SHARED window of one shmem file, or private
 * memory (MAP_PRIVATE anonymous memory, or a MAP_PRIVATE mapping of a shmem
 * file). Shmem pages are read with pread() on the file, never through the
 * mapping: a read through the mapping could raise a MISSING fault and the
 * handler thread would then wait for itself. Private memory is registered
 * WP-only (no MISSING faults), so the handler reads it through the page
 * tables with process_vm_readv(); it is armed as one run covering the
 * region, never-touched pages protected by WP_UNPOPULATED markers.
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
#include "region.h"
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
uint64_t usnap_reg_mode(enum usnap_kind kind, bool probe)
{
	if (kind != USNAP_SHMEM)
		return UFFDIO_REGISTER_MODE_WP;
	return UFFDIO_REGISTER_MODE_MISSING | (probe ? 0 : UFFDIO_REGISTER_MODE_WP);
}

uint64_t usnap_reg_ioctls(enum usnap_kind kind, bool probe)
{
	uint64_t need = 1ull << _UFFDIO_WAKE;

	if (kind == USNAP_SHMEM)
		need |= 1ull << _UFFDIO_ZEROPAGE;
	if (kind != USNAP_SHMEM || !probe)
		need |= 1ull << _UFFDIO_WRITEPROTECT;
	return need;
}

/*
 * Check that [addr, end) is covered, without gaps, by readable mappings that
 * are all private, or all shared from one file at linear offsets; return the
 * kind, the first VMA and the file offset of addr. /proc/self/maps is the only
 * place that says MAP_SHARED vs MAP_PRIVATE. c: ranges in address order.
 */
static int scan_maps_at(struct usnap_maps_cursor *c, const char *name, uintptr_t addr, uintptr_t end,
			struct usnap_vma *first, off_t *file_off, enum usnap_kind *kind)
{
	struct usnap_vma v;
	uintptr_t covered = addr;
	bool have_first = false;
	int r = 0;

	while (covered < end && usnap_cursor_next(c, covered, &v)) {
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
	struct usnap_maps_cursor c;
	int r;

	if (usnap_cursor_open(&c))
		return usnap_err(-errno, "region '%s': cannot read /proc/self/maps: %s", name, strerror(errno));
	r = scan_maps_at(&c, name, addr, end, first, file_off, kind);
	usnap_cursor_close(&c);
	return r;
}

/* Still the memory add_region checked? Something else may have been mapped
 * where the program unmapped a region, and would register fine. c: regions
 * in address order. */
int usnap_reg_recheck(struct usnap_maps_cursor *c, const struct usnap_reg *reg)
{
	struct usnap_vma v;
	enum usnap_kind kind;
	off_t off;
	int r = scan_maps_at(c, reg->name, reg->addr, reg->addr + reg->len, &v, &off, &kind);

	if (r)
		return r;
	if ((kind == USNAP_PRIVATE) != (reg->kind == USNAP_PRIVATE) || v.ino != reg->ino ||
	    (kind == USNAP_SHMEM && off != reg->file_off))
		return usnap_err(-EFAULT, "region '%s': the memory at 0x%" PRIxPTR " is not what "
				 "uffdsnap_add_region registered (unmapped and mapped again?)", reg->name, reg->addr);
	return 0;
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
	err = usnap_uffd_register(ctx->uffd[usnap_kind_uffd(kind)], a, len, usnap_reg_mode(kind, true), &ioctls);
	if (err) {
		if (fd >= 0)
			close(fd);
		err = usnap_err(err == -EINVAL ? -EMEDIUMTYPE : err, "region '%s': UFFDIO_REGISTER failed: %s%s",
				name, strerror(-err), err == -EBUSY ? " (another userfaultfd holds this memory: "
				"another context snapshotting it, or another library)" : "");
		goto out;
	}
	usnap_uffd_unregister(ctx->uffd[usnap_kind_uffd(kind)], a, len);
	if ((ioctls & usnap_reg_ioctls(kind, true)) != usnap_reg_ioctls(kind, true)) {
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
