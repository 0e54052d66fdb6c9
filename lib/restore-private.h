/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The lazy-restore engine (restore-lazy.c) in pieces, so the page server
 * (restore-serve.c) can run it on a userfaultfd another process sent: that
 * process opens and arms its regions, the server matches and serves them.
 */
#ifndef UFFDSNAP_RESTORE_PRIVATE_H
#define UFFDSNAP_RESTORE_PRIVATE_H

#include <stdint.h>
#include <sys/types.h>

#include "uffdsnap.h"

/* The caller's options (NULL: the defaults) in *out, every field this library
 * knows set: those past in->size get their defaults. -EINVAL naming fn if
 * in->size is not one this library knows. */
int usnap_lazy_opts_get(const uffdsnap_lazy_opts_t *in, uffdsnap_lazy_opts_t *out, const char *fn);
/* A userfaultfd for restoring (MISSING on shmem, thread ids, poison where the
 * kernel has them: the features in *features). Negative errno, detail set. */
int usnap_restore_uffd(uint64_t *features);
/* Check that [addr, addr+len) is page aligned, mapped and empty, and register
 * it with uffd in MISSING mode. *unit: the bytes UFFDIO_COPY must place at
 * once there (the page size, or hugetlbfs's huge page size). */
int usnap_lazy_arm(int uffd, const char *name, void *addr, size_t len, size_t *unit);
/* A lazy restore of regions (already registered with uffd, in process pid)
 * from r's snapshot, not started yet, with opts from usnap_lazy_opts_get().
 * Takes uffd over, even on failure. */
int usnap_lazy_setup(uffdsnap_lazy_t **lz, uffdsnap_reader_t *r, int uffd, uint64_t features, pid_t pid,
		     const uffdsnap_lazy_region_t *regions, unsigned n, const uffdsnap_lazy_opts_t *opts);
/* The largest huge page a lazy restore places (UFFDIO_COPY needs all of it
 * in one buffer, one per thread). */
#define USNAP_LAZY_MAX_UNIT ((size_t)1 << 30)
/* Region i of lz is placed in units of unit bytes (usnap_lazy_arm()'s):
 * -EINVAL if that is no power of two in [page, USNAP_LAZY_MAX_UNIT] or the
 * region is not aligned to it. Before usnap_lazy_go(). */
int usnap_lazy_unit(uffdsnap_lazy_t *lz, unsigned i, size_t unit);
/* Start the handler and prefetch threads. */
int usnap_lazy_go(uffdsnap_lazy_t *lz);
/* What usnap_log() says, once per restore, of a lazy restore that failed:
 * its message and strerror() of its error. */
#define USNAP_LAZY_FAILED_LOG \
	"libuffdsnap: lazy restore failed: %s (%s); a thread touching a page that is not restored gets SIGBUS"
/* Release a restore whose setup or go failed: unregister and free. */
void usnap_lazy_abandon(uffdsnap_lazy_t *lz);

#endif
