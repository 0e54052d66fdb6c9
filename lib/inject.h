/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test-only fault injection (tests/test-inject.c, docs/reliability.md).
 *
 * The installed library is built without USNAP_FAULT_INJECTION: this header
 * then only defines usnap_inject_write() as a static inline no-op that the
 * compiler removes, and lib/inject.c is not compiled.
 *
 * The test library libuffdsnap-inject.a (lib/meson.build, never installed) is
 * the same sources built with -DUSNAP_FAULT_INJECTION. Then:
 *  - every allocation and resource the engine and the reader create goes
 *    through inject.c's usnap_inj_NAME (malloc, calloc, realloc, strdup,
 *    mmap, ZSTD_createCCtx/DCtx, pthread_create, eventfd, mkostemp): the
 *    build renames the objects' references with objcopy, so no line of lib/
 *    changes for them and no header redefines a libc name;
 *  - uffd.c, the one file that makes userfaultfd requests, asks
 *    usnap_inject_ioctl() before each request that acts, and
 *    usnap_inject_hidden_features() what UFFDIO_API must not offer;
 *  - sink.c's one hook, usnap_inject_write(), can fail one sink write with a
 *    chosen errno or make it short;
 *  - outfile.c's one hook, usnap_inject_close(), makes the close of an output
 *    file (snapshot, restore, extract) report an error after it closed, as a
 *    delayed write error on NFS or a quota does.
 * A test arms one point with usnap_inject_arm(): the point's calls are
 * counted from 1 across every thread, and call N fails (once, or every call
 * from N on with USNAP_INJ_STICKY).
 *
 * usnap_inject_hide_features() makes UFFDIO_API answer as an older kernel
 * would, without some UFFD_FEATURE_* bits: the kernel is still asked, and
 * everything the library does with the smaller answer runs for real (the
 * paths for kernels without UFFDIO_POISON, say).
 */
#ifndef UFFDSNAP_INJECT_H
#define UFFDSNAP_INJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

enum usnap_inject_point {
	USNAP_INJ_ALLOC,   /* malloc calloc realloc strdup mmap ZSTD_create*Ctx: ENOMEM */
	USNAP_INJ_SYS,     /* pthread_create (EAGAIN), eventfd and mkostemp (EMFILE) */
	USNAP_INJ_IOCTL,   /* UFFDIO_API, REGISTER, WRITEPROTECT, ZEROPAGE (never UNREGISTER or WAKE) */
	USNAP_INJ_WRITE,   /* one sink write: a vectored file/fd write or one batch of callback calls */
	USNAP_INJ_CLOSE,   /* the close of an output file before its rename (outfile.c): EIO */
	USNAP_INJ_NPOINTS
};

enum usnap_inject_mode {
	USNAP_INJ_FAIL = 0,    /* call N fails with the chosen errno (its default if 0) */
	USNAP_INJ_SHORT = 1,   /* WRITE only: call N writes about half its bytes */
	USNAP_INJ_STICKY = 2,  /* with FAIL: every call from N on fails */
};

#ifdef USNAP_FAULT_INJECTION

/* Arm `point`: reset every counter, then call n (1-based) of that point
 * fails with -err (err > 0; 0 picks the point's natural errno). */
void usnap_inject_arm(enum usnap_inject_point point, unsigned long n, int err, int mode);
/* Stop injecting; counters stay readable. */
void usnap_inject_disarm(void);
/* Calls of `point` seen since the last arm (counted while armed or not). */
unsigned long usnap_inject_calls(enum usnap_inject_point point);
/* Faults injected since the last arm. */
unsigned long usnap_inject_fired(void);
/* Start counting without injecting (a dry run that measures a scenario). */
void usnap_inject_count_only(void);
/* From now on UFFDIO_API reports none of the UFFD_FEATURE_* bits in mask as
 * available, and fails with EINVAL, as an older kernel does, when asked for
 * one of them (0: the kernel's own answer again). Not reset by arm/disarm. */
void usnap_inject_hide_features(uint64_t mask);

/* The hook sink.c calls before each write: true if the write fails, with
 * *done set to the negative errno; or *bufs, *n replaced by a shorter copy. */
bool usnap_inject_write(struct iovec **bufs, unsigned *n, ssize_t *done);
/* The hook outfile.c calls after a successful close(2) of an output file:
 * the errno that close reports instead, or 0. */
int usnap_inject_close(void);
/* The hook uffd.c calls before a userfaultfd request that acts: the errno
 * it fails with, or 0. */
int usnap_inject_ioctl(void);
/* The UFFD_FEATURE_* bits UFFDIO_API hides (usnap_inject_hide_features). */
uint64_t usnap_inject_hidden_features(void);

#else

static inline bool usnap_inject_write(struct iovec **bufs, unsigned *n, ssize_t *done)
{
	(void)bufs, (void)n, (void)done;
	return false;
}

static inline int usnap_inject_close(void)
{
	return 0;
}

static inline int usnap_inject_ioctl(void)
{
	return 0;
}

static inline uint64_t usnap_inject_hidden_features(void)
{
	return 0;
}

#endif

#endif
