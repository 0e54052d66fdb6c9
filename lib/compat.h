/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Kernel constants newer than the system headers (Debian 12 ships Linux 6.1
 * uapi headers). Values are from include/uapi/linux/userfaultfd.h upstream.
 * We never assume a feature from its constant: probe.c asks UFFDIO_API.
 */
#ifndef UFFDSNAP_COMPAT_H
#define UFFDSNAP_COMPAT_H

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef UFFDIO_POISON
/* Linux 6.6: install a "poisoned" PTE marker; an access raises SIGBUS
 * (restore-lazy.c uses it so a fault it cannot serve never hangs). */
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
	struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#ifndef PAGEMAP_SCAN
/* Linux 6.7: PAGEMAP_SCAN on /proc/PID/pagemap (include/uapi/linux/fs.h).
 * With a WP_ASYNC userfaultfd, PAGE_IS_WRITTEN means "no uffd-wp bit": the
 * page was written since it was last protected. PM_SCAN_WP_MATCHING
 * re-protects what it reports in the same walk (migrate-send.c's rounds). */
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
struct page_region {
	__u64 start, end, categories;
};
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
	__u64 size, flags, start, end, walk_end, vec, vec_len, max_pages;
	__u64 category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_IOCTL_MAGIC 'f'
#define PAGEMAP_SCAN _IOWR(PAGEMAP_IOCTL_MAGIC, 16, struct pm_scan_arg)
#endif

#ifndef __NR_cachestat
/* Linux 6.5: page-cache residency of a file range, by descriptor. The number
 * is the same on every architecture (it postdates the syscall table merge). */
#define __NR_cachestat 451
#endif
struct usnap_cachestat_range {
	__u64 off, len;
};
struct usnap_cachestat {
	__u64 nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* sched_attr, version 0 (48 bytes): <linux/sched/types.h> clashes with
 * glibc's <sched.h> over struct sched_param, and glibc < 2.41 has no copy. */
struct usnap_sched_attr {
	__u32 size, sched_policy;
	__u64 sched_flags;
	__s32 sched_nice;
	__u32 sched_priority;
	__u64 sched_runtime, sched_deadline, sched_period;
};

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#endif
