/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the library asks of the kernel's userfaultfd, one small function per
 * request (uffd.c). Every function returns 0 (or a descriptor) on success and
 * -errno on failure; none prints or records an error detail: the caller knows
 * what the request was for and says so.
 */
#ifndef UFFDSNAP_UFFD_H
#define UFFDSNAP_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compat.h"

/* A new userfaultfd (O_CLOEXEC | O_NONBLOCK): from /dev/userfaultfd (Linux
 * 6.1+, access by file mode) or userfaultfd(2); with user_mode_only, one
 * that ignores kernel-mode faults (all an unprivileged caller may get). */
int usnap_uffd_new(bool user_mode_only);
/* UFFDIO_API asking for `features`; *got: what the kernel offers. Once per
 * descriptor, and unknown bits fail with EINVAL: probe with 0 first. */
int usnap_uffd_api(int uffd, uint64_t features, uint64_t *got);
/* UFFDIO_REGISTER of [addr, addr + len) in `mode`; *ioctls: what the range offers. */
int usnap_uffd_register(int uffd, uintptr_t addr, size_t len, uint64_t mode, uint64_t *ioctls);
/*
 * UFFDIO_UNREGISTER, which drops every protection and marker in the range and
 * wakes its waiters, and then one more UFFDIO_WAKE: UNREGISTER wakes before
 * it changes the VMA, and a fault taken under the per-VMA lock (Linux 6.7+)
 * can queue itself in between and sleep forever (seen here: a writer stuck in
 * handle_userfault after the range was unregistered). Once UNREGISTER has
 * returned such a waiter is queued, so the second wake releases it; it then
 * faults normally. Failure: nothing registered is left there.
 */
int usnap_uffd_unregister(int uffd, uintptr_t addr, size_t len);
void usnap_uffd_wake(int uffd, uintptr_t addr, size_t len);
/* UFFDIO_WRITEPROTECT: protect, or un-protect and wake. EAGAIN while an
 * event of this descriptor is unread (the kernel's mmap_changing). */
int usnap_uffd_protect(int uffd, uintptr_t addr, size_t len, bool wp);
/* UFFDIO_ZEROPAGE and wake; EEXIST if the page is there already. */
int usnap_uffd_zeropage(int uffd, uintptr_t addr, size_t len);
/* UFFDIO_COPY of len bytes from src to dst, or UFFDIO_ZEROPAGE if src is
 * NULL, and wake. *done: the bytes placed, also when it stopped early
 * (EAGAIN with a partial count, EEXIST at a page that is there). */
int usnap_uffd_fill(int uffd, uintptr_t dst, const void *src, size_t len, int64_t *done);
/* UFFDIO_POISON (Linux 6.6+): an access raises SIGBUS instead of waiting;
 * wakes the range unless !wake. *updated: the bytes poisoned (may be NULL). */
int usnap_uffd_poison(int uffd, uintptr_t addr, size_t len, bool wake, int64_t *updated);
/*
 * Is an event (fork, mremap, munmap, madvise) under way on uffd whose message
 * may not be readable yet? Each raises the descriptor's mmap_changing before
 * it changes anything: an un-protect of `page`, memory of ours never
 * registered (ENOENT otherwise, and nothing changes), answers EAGAIN then.
 * A question, not a request: never a fault-injection point.
 */
bool usnap_uffd_changing(int uffd, const void *page, size_t page_size);

/*
 * Asynchronous write tracking (Linux 6.7+, migrate-send.c): a userfaultfd with
 * UFFD_FEATURE_WP_ASYNC, on which the kernel resolves write faults itself
 * (it drops the page's uffd-wp bit; no message, the writer never waits).
 * `features` is what the kernel offers (asked on another descriptor first).
 * Remove, unmap and remap events are asked for too (when offered): a page
 * zapped by MADV_DONTNEED or punched out keeps no uffd-wp bit that a scan
 * could report, so its removal must be heard. The descriptor, or
 * -EOPNOTSUPP without WP_ASYNC.
 */
int usnap_uffd_new_async(uint64_t features);
/*
 * PAGEMAP_SCAN on pagemap_fd (/proc/self/pagemap) over [start, end): the
 * pages written since they were protected, in up to n runs, re-protected in
 * the same walk. Returns the runs found (*walk_end: where the walk stopped,
 * < end when vec filled up), or -errno (-ENOTTY/-EINVAL before Linux 6.7).
 */
int usnap_uffd_scan_written(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
			    uintptr_t *walk_end);
/*
 * PAGEMAP_SCAN over [start, end): the runs of pages mapped now by a present
 * PTE of a file mapping (shmem: pages that are in the file), in up to n runs.
 * Same returns as above.
 */
int usnap_scan_mapped_file(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
			   uintptr_t *walk_end);
/* The same without re-protecting: a last look, after which the range is
 * unregistered. Protecting a written page costs the walk a PTE change: a
 * final scan at 256 MiB took 2.7-10 ms re-protecting, 0.3 ms not, after a
 * writer storing at twice a 1 Gbit/s link's rate (measured). */
int usnap_uffd_scan_written_last(int pagemap_fd, uintptr_t start, uintptr_t end, struct page_region *vec, size_t n,
				 uintptr_t *walk_end);

/*
 * Post-copy placement (migrate-postcopy.c, the receiver): a userfaultfd for MISSING
 * faults on shmem (UFFD_FEATURE_MISSING_SHMEM) that can also poison pages
 * (UFFD_FEATURE_POISON, Linux 6.6+: what a receiver that lost its sender
 * leaves where pages never came). Probes on a first descriptor (UFFDIO_API
 * is once per descriptor). The descriptor, or -EOPNOTSUPP with *missing set
 * to the feature the kernel lacks.
 */
int usnap_uffd_new_missing(uint64_t *missing);

#endif
