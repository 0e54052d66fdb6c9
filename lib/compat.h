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

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#endif
