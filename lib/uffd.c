/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The kernel seam: every userfaultfd request of the library goes through
 * here (uffd.h says what each one means), the snapshot engine's and lazy
 * restore's alike. It is also the seam for fault injection: in the test-only
 * libuffdsnap-inject.a, the requests that act (API, REGISTER, WRITEPROTECT,
 * ZEROPAGE) ask inject.h whether to fail first, and UFFDIO_API can answer as
 * an older kernel would; in the installed library those hooks are inline
 * no-ops. UNREGISTER and WAKE are never failed: they are the exit path,
 * they cannot fail on a range that is still mapped, and nothing could
 * recover if they did.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "inject.h"
#include "uffd.h"

/* ioctl(2) for a request that fault injection may fail */
static int acting(int fd, unsigned long req, void *arg)
{
	int e = usnap_inject_ioctl();

	if (e) {
		errno = e;
		return -1;
	}
	return ioctl(fd, req, arg);
}

int usnap_uffd_new(bool user_mode_only)
{
	int fd, dev;

	if (!user_mode_only) {
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
			if (fd >= 0)
				return fd;
		}
	}
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
	return fd >= 0 ? fd : -errno;
}

int usnap_uffd_api(int uffd, uint64_t features, uint64_t *got)
{
	uint64_t hidden = usnap_inject_hidden_features();
	struct uffdio_api a = { .api = UFFD_API, .features = features };

	if (features & hidden)
		return -EINVAL; /* as a kernel without those features answers */
	if (acting(uffd, UFFDIO_API, &a))
		return -errno;
	*got = a.features & ~hidden;
	return 0;
}

int usnap_uffd_register(int uffd, uintptr_t addr, size_t len, uint64_t mode, uint64_t *ioctls)
{
	struct uffdio_register reg = { .range = { addr, len }, .mode = mode };

	if (acting(uffd, UFFDIO_REGISTER, &reg))
		return -errno;
	*ioctls = reg.ioctls;
	return 0;
}

int usnap_uffd_unregister(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { addr, len };
	int rc = ioctl(uffd, UFFDIO_UNREGISTER, &r) ? -errno : 0;

	ioctl(uffd, UFFDIO_WAKE, &r);
	return rc;
}

void usnap_uffd_wake(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { addr, len };

	ioctl(uffd, UFFDIO_WAKE, &r);
}

int usnap_uffd_protect(int uffd, uintptr_t addr, size_t len, bool wp)
{
	struct uffdio_writeprotect w = { .range = { addr, len }, .mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };

	return acting(uffd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

int usnap_uffd_zeropage(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_zeropage z = { .range = { addr, len }, .mode = 0 };

	return acting(uffd, UFFDIO_ZEROPAGE, &z) ? -errno : 0;
}

int usnap_uffd_fill(int uffd, uintptr_t dst, const void *src, size_t len, int64_t *done)
{
	int rc;

	if (src) {
		struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len };
		rc = ioctl(uffd, UFFDIO_COPY, &c) ? -errno : 0;
		*done = rc ? c.copy : (int64_t)len;
	} else {
		struct uffdio_zeropage z = { .range = { dst, len } };
		rc = acting(uffd, UFFDIO_ZEROPAGE, &z) ? -errno : 0;
		*done = rc ? z.zeropage : (int64_t)len;
	}
	return rc;
}

int usnap_uffd_poison(int uffd, uintptr_t addr, size_t len, bool wake, int64_t *updated)
{
	struct uffdio_poison p = { .range = { addr, len }, .mode = wake ? 0 : UFFDIO_POISON_MODE_DONTWAKE };
	int rc = ioctl(uffd, UFFDIO_POISON, &p) ? -errno : 0;

	if (updated)
		*updated = rc ? p.updated : (int64_t)len;
	return rc;
}

bool usnap_uffd_changing(int uffd, const void *page, size_t page_size)
{
	struct uffdio_writeprotect w = { .range = { (uintptr_t)page, page_size }, .mode = 0 };

	/* a probe, not an act: never failed by injection */
	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) && errno == EAGAIN;
}

/* A new descriptor with the features `want`, or -errno. */
static int new_with(uint64_t want)
{
	uint64_t got;
	int fd = usnap_uffd_new(false), r;

	if (fd < 0)
		return fd;
	r = usnap_uffd_api(fd, want, &got);
	if (r) {
		close(fd);
		return r;
	}
	return fd;
}

int usnap_uffd_new_async(uint64_t features)
{
	uint64_t want = UFFD_FEATURE_WP_ASYNC | (features & (UFFD_FEATURE_WP_UNPOPULATED |
							    UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_EVENT_REMOVE |
							    UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP));

	if (!(features & UFFD_FEATURE_WP_ASYNC))
		return -EOPNOTSUPP;
	return new_with(want);
}

/* PAGEMAP_SCAN over [start, end): runs of pages in every category of `mask` */
static int pm_scan(int pagemap_fd, uint64_t flags, uint64_t mask, uintptr_t start, uintptr_t end,
		   struct page_region *vec, size_t n, uintptr_t *walk_end)
{
	struct pm_scan_arg a = {
		.size = sizeof(a), .flags = flags, .start = start, .end = end, .vec = (uintptr_t)vec, .vec_len = n,
		.category_mask = mask, .return_mask = mask,
	};
	int r = ioctl(pagemap_fd, PAGEMAP_SCAN, &a);

	if (r < 0)
		return -errno;
	*walk_end = (uintptr_t)a.walk_end;
	return r;
}

int usnap_uffd_scan_written(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
			    uintptr_t *walk_end)
{
	return pm_scan(pagemap_fd, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, start, end, vec, n,
		       walk_end);
}

int usnap_uffd_scan_written_last(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
				 uintptr_t *walk_end)
{
	return pm_scan(pagemap_fd, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, start, end, vec, n, walk_end);
}

int usnap_scan_mapped_file(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
			   uintptr_t *walk_end)
{
	return pm_scan(pagemap_fd, 0, PAGE_IS_PRESENT | PAGE_IS_FILE, start, end, vec, n, walk_end);
}

int usnap_uffd_new_missing(uint64_t *missing)
{
	uint64_t want = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_POISON, got = 0;
	int fd = usnap_uffd_new(false), r;

	if (fd < 0)
		return fd;
	r = usnap_uffd_api(fd, 0, &got);
	close(fd);
	if (r)
		return r;
	*missing = want & ~got;
	return *missing ? -EOPNOTSUPP : new_with(want);
}
