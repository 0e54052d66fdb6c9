/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test-only fault injection: see inject.h. Compiled only into the test
 * library, never into the installed one. The library's objects there call
 * usnap_inj_NAME where their source says NAME (lib/meson.build renames the
 * references with objcopy); this file is outside the renaming, so NAME here
 * is the real function.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <zstd.h>

#include "inject.h"

#if !defined(_FILE_OFFSET_BITS) || _FILE_OFFSET_BITS != 64
#error "lib/meson.build redirects mmap64 and mkostemp64, the names of mmap and mkostemp with 64-bit offsets"
#endif

static struct {
	_Atomic int armed;               /* point + 1, 0 when off */
	_Atomic unsigned long target;    /* 1-based call that fails */
	_Atomic int err;                 /* positive errno; 0 = the point's natural one */
	_Atomic int mode;
	_Atomic unsigned long calls[USNAP_INJ_NPOINTS];
	_Atomic unsigned long fired;
	_Atomic uint64_t hidden;         /* UFFD_FEATURE_* bits UFFDIO_API does not admit to */
} inj;

void usnap_inject_hide_features(uint64_t mask)
{
	atomic_store(&inj.hidden, mask);
}

void usnap_inject_arm(enum usnap_inject_point point, unsigned long n, int err, int mode)
{
	atomic_store(&inj.armed, 0);
	for (int i = 0; i < USNAP_INJ_NPOINTS; i++)
		atomic_store(&inj.calls[i], 0);
	atomic_store(&inj.fired, 0);
	atomic_store(&inj.target, n);
	atomic_store(&inj.err, err);
	atomic_store(&inj.mode, mode);
	atomic_store(&inj.armed, (int)point + 1);
}

void usnap_inject_count_only(void)
{
	usnap_inject_arm(USNAP_INJ_ALLOC, 0, 0, 0); /* target 0 never matches */
}

void usnap_inject_disarm(void)
{
	atomic_store(&inj.armed, 0);
}

unsigned long usnap_inject_calls(enum usnap_inject_point point)
{
	return atomic_load(&inj.calls[point]);
}

unsigned long usnap_inject_fired(void)
{
	return atomic_load(&inj.fired);
}

/* Count a call of `point`; the errno to fail it with, or 0. */
static int hit(enum usnap_inject_point point, int natural)
{
	unsigned long c = atomic_fetch_add(&inj.calls[point], 1) + 1, t;
	int err;

	if (atomic_load(&inj.armed) != (int)point + 1)
		return 0;
	t = atomic_load(&inj.target);
	if (!t || (c != t && !((atomic_load(&inj.mode) & USNAP_INJ_STICKY) && c > t)))
		return 0;
	atomic_fetch_add(&inj.fired, 1);
	err = atomic_load(&inj.err);
	return err ? err : natural;
}

/* ---- allocations ------------------------------------------------------------ */

/* What the renamed references resolve to: the real signatures, renamed. */
void *usnap_inj_malloc(size_t n);
void *usnap_inj_calloc(size_t n, size_t m);
void *usnap_inj_realloc(void *p, size_t n);
char *usnap_inj_strdup(const char *s);
void *usnap_inj_mmap64(void *a, size_t len, int prot, int flags, int fd, off_t off);
ZSTD_CCtx *usnap_inj_ZSTD_createCCtx(void);
ZSTD_DCtx *usnap_inj_ZSTD_createDCtx(void);
int usnap_inj_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
int usnap_inj_eventfd(unsigned v, int flags);
int usnap_inj_mkostemp64(char *tmpl, int flags);

void *usnap_inj_malloc(size_t n)
{
	if (hit(USNAP_INJ_ALLOC, ENOMEM))
		return errno = ENOMEM, NULL;
	return malloc(n);
}

void *usnap_inj_calloc(size_t n, size_t m)
{
	if (hit(USNAP_INJ_ALLOC, ENOMEM))
		return errno = ENOMEM, NULL;
	return calloc(n, m);
}

void *usnap_inj_realloc(void *p, size_t n)
{
	if (hit(USNAP_INJ_ALLOC, ENOMEM))
		return errno = ENOMEM, NULL;
	return realloc(p, n);
}

char *usnap_inj_strdup(const char *s)
{
	if (hit(USNAP_INJ_ALLOC, ENOMEM))
		return errno = ENOMEM, NULL;
	return strdup(s);
}

void *usnap_inj_mmap64(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	if (hit(USNAP_INJ_ALLOC, ENOMEM))
		return errno = ENOMEM, MAP_FAILED;
	return mmap(a, len, prot, flags, fd, off);
}

ZSTD_CCtx *usnap_inj_ZSTD_createCCtx(void)
{
	return hit(USNAP_INJ_ALLOC, ENOMEM) ? NULL : ZSTD_createCCtx();
}

ZSTD_DCtx *usnap_inj_ZSTD_createDCtx(void)
{
	return hit(USNAP_INJ_ALLOC, ENOMEM) ? NULL : ZSTD_createDCtx();
}

/* ---- threads and descriptors --------------------------------------------------- */

int usnap_inj_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
	int e = hit(USNAP_INJ_SYS, EAGAIN);

	return e ? e : pthread_create(t, a, fn, arg);
}

int usnap_inj_eventfd(unsigned v, int flags)
{
	int e = hit(USNAP_INJ_SYS, EMFILE);

	if (e)
		return errno = e, -1;
	return eventfd(v, flags);
}

int usnap_inj_mkostemp64(char *tmpl, int flags)
{
	int e = hit(USNAP_INJ_SYS, EMFILE);

	if (e)
		return errno = e, -1;
	return mkostemp(tmpl, flags);
}

/* ---- userfaultfd requests (uffd.c) ------------------------------------------------ */

int usnap_inject_ioctl(void)
{
	return hit(USNAP_INJ_IOCTL, ENOMEM);
}

uint64_t usnap_inject_hidden_features(void)
{
	return atomic_load(&inj.hidden);
}

/* ---- sink writes ------------------------------------------------------------------- */

bool usnap_inject_write(struct iovec **bufs, unsigned *n, ssize_t *done)
{
	static _Thread_local struct iovec copy[64];
	size_t total = 0, keep;
	unsigned k = 0;
	int e = hit(USNAP_INJ_WRITE, EIO);

	if (!e)
		return false;
	if (!(atomic_load(&inj.mode) & USNAP_INJ_SHORT)) {
		*done = -e;
		return true;
	}
	for (unsigned i = 0; i < *n; i++)
		total += (*bufs)[i].iov_len;
	if (total < 2 || *n > 64)
		return false;
	/* keep about half, ending inside a buffer where possible */
	keep = (total + 1) / 2;
	for (unsigned i = 0; i < *n && keep; i++, k++) {
		copy[i] = (*bufs)[i];
		if (copy[i].iov_len > keep)
			copy[i].iov_len = keep;
		keep -= copy[i].iov_len;
	}
	*bufs = copy;
	*n = k;
	return false;
}

/* ---- output files ------------------------------------------------------------------- */

int usnap_inject_close(void)
{
	return hit(USNAP_INJ_CLOSE, EIO);
}
