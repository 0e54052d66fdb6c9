/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Opening the userfaultfd and negotiating features; the context's birth and
 * death (uffdsnap_new/uffdsnap_free) and its options.
 *
 * Kernel-mode faults (read(2) into a protected page) are only delivered to a
 * userfaultfd that was not opened with UFFD_USER_MODE_ONLY. Such a descriptor
 * comes from /dev/userfaultfd (Linux 6.1+, access by file mode) or from
 * userfaultfd(2) with CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1. Only if
 * the caller allows it do we fall back to USER_MODE_ONLY, where those kernel
 * writes fail with EFAULT instead of waiting.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <zstd.h>

#include "arm.h"
#include "pool.h"
#include "region.h"
#include "uffd.h"
#include "uffdsnap-private.h"

/*
 * Features a snapshot cannot do without: write-protect and MISSING on shmem,
 * and REMOVE events, without which MADV_DONTNEED would silently discard
 * private pages not yet copied. WP_UNPOPULATED (6.4+) is taken when offered:
 * it protects never-touched private pages without pre-faulting them.
 *
 * Remove events are asked for on the private memory's descriptor only. While
 * an event is unread the kernel refuses every write-protect change on its
 * descriptor (mmap_changing: EAGAIN), and a program zapping in a loop keeps
 * one unread nearly all the time: two threads calling MADV_DONTNEED without
 * pause failed every snapshot when shared memory asked for them too. Shared
 * memory loses nothing to a zap (the page stays in the file, its uffd-wp
 * marker in the page table), so its descriptor does without
 * (tests/test-zapstorm.c).
 */
#define USNAP_REQUIRED (UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_EVENT_REMOVE)
/*
 * Taken when offered. mremap and munmap events let a snapshot follow a region
 * that moves or goes away. FORK events keep a child's mappings tracked (its
 * writes to shared memory are writes into the snapshot's memory too); the
 * kernel grants them only with CAP_SYS_PTRACE, and without them a child's
 * mappings are simply not registered (docs/consistency.md).
 */
#define USNAP_WANTED (UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP | \
		      UFFD_FEATURE_EVENT_FORK)

static void opts_defaults(uffdsnap_opts_t *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->size = sizeof(*opts);
	opts->zstd_level = 1;
	opts->compress_threads = 0;
	opts->buffer_bytes = 64u << 20;
	opts->chunk_bytes = 256u << 10;
}

USNAP_EXPORT void uffdsnap_opts_init_size(uffdsnap_opts_t *opts, size_t size)
{
	uffdsnap_opts_t d;

	opts_defaults(&d);
	usnap_opts_fill(opts, size, &d, sizeof(d));
}

/* UFFDIO_API with `features` on a descriptor of its own. */
static int api_probe(bool user_mode_only, uint64_t features, uint64_t *got)
{
	int fd = usnap_uffd_new(user_mode_only), r;

	if (fd < 0)
		return fd;
	r = usnap_uffd_api(fd, features, got);
	close(fd);
	return r;
}

/* UFFDIO_API asking for `want` on one of the context's descriptors: fd, or
 * -errno with fd closed. */
static int api_or_close(int fd, uint64_t want)
{
	uint64_t got;
	int r = usnap_uffd_api(fd, want, &got);

	if (!r)
		return fd;
	close(fd);
	return usnap_err(r, "UFFDIO_API(0x%llx): %s", (unsigned long long)want, strerror(-r));
}

int usnap_uffd_features(bool umo, uint64_t *avail, uint64_t *want)
{
	uint64_t got;
	int r;

	/* UFFDIO_API can be called once per descriptor and rejects unknown
	 * feature bits, so ask what exists on a throwaway descriptor first. */
	r = api_probe(umo, 0, avail);
	if (r)
		return usnap_err(r, "UFFDIO_API (probe): %s", strerror(-r));
	if ((*avail & USNAP_REQUIRED) != USNAP_REQUIRED)
		return usnap_err(-EOPNOTSUPP, "kernel userfaultfd features 0x%llx lack write-protect/missing "
				 "on shmem (need UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19+)",
				 (unsigned long long)*avail);
	*want = USNAP_REQUIRED | (*avail & USNAP_WANTED);
	if (*want & UFFD_FEATURE_EVENT_FORK) {
		r = api_probe(umo, UFFD_FEATURE_EVENT_FORK, &got);
		if (r == -EPERM)
			*want &= ~(uint64_t)UFFD_FEATURE_EVENT_FORK;
		else if (r)
			return usnap_err(r, "UFFDIO_API (probe): %s", strerror(-r));
	}
	return 0;
}

int usnap_uffd_api_shared(int fd, uint64_t want)
{
	return api_or_close(fd, want & ~(uint64_t)UFFD_FEATURE_EVENT_REMOVE);
}

int usnap_uffd_open(uffdsnap_t *ctx)
{
	bool umo = false;
	uint64_t avail = 0, want;
	int fd, r;

	fd = usnap_uffd_new(false);
	if (fd == -EPERM && (ctx->opts.flags & UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY)) {
		umo = true;
		fd = usnap_uffd_new(true);
	}
	if (fd == -EPERM || fd == -EACCES)
		return usnap_err(-EPERM, "cannot open a userfaultfd that handles kernel-mode faults: "
				 "/dev/userfaultfd is not accessible and userfaultfd(2) needs CAP_SYS_PTRACE "
				 "or vm.unprivileged_userfaultfd=1");
	if (fd == -ENOSYS)
		return usnap_err(-ENOSYS, "userfaultfd(2) returned ENOSYS: kernel built without CONFIG_USERFAULTFD");
	if (fd < 0)
		return usnap_err(fd, "userfaultfd: %s", strerror(-fd));

	r = usnap_uffd_features(umo, &avail, &want);
	if (r) {
		close(fd);
		return r;
	}
	fd = usnap_uffd_api_shared(fd, want);
	if (fd < 0)
		return fd;
	r = usnap_uffd_new(umo);
	if (r >= 0)
		r = api_or_close(r, want);
	else
		usnap_err(r, "userfaultfd: %s", strerror(-r));
	if (r < 0) {
		close(fd);
		return r;
	}
	ctx->uffd[USNAP_UFFD_SHARED] = fd;
	ctx->uffd[USNAP_UFFD_PRIVATE] = r;
	ctx->user_mode_only = umo;
	ctx->features = avail;
	ctx->enabled = want;
	/* asked of no file: EBADF where the call exists, ENOSYS where not */
	ctx->cachestat = usnap_cached(-1, 0, 1) != -ENOSYS;
	return 0;
}

static int normalize_opts(uffdsnap_opts_t *o, const uffdsnap_opts_t *in, size_t page_size)
{
	opts_defaults(o);
	if (!in)
		return 0;
	if (usnap_check_size("uffdsnap_new", "uffdsnap_opts_t", in->size, USNAP_SIZE_UPTO(uffdsnap_opts_t, flags),
			     sizeof(*o)))
		return -EINVAL;
	memcpy(o, in, in->size);
	o->size = sizeof(*o);
	if (o->flags & ~(uint32_t)(UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY | UFFDSNAP_OPT_FSYNC | UFFDSNAP_OPT_STRICT |
				   UFFDSNAP_OPT_ADAPT | UFFDSNAP_OPT_DELTA))
		return usnap_err(-EINVAL, "unknown bits 0x%x in uffdsnap_opts.flags", o->flags);
	if (o->zstd_level < ZSTD_minCLevel() || o->zstd_level > ZSTD_maxCLevel())
		return usnap_err(-EINVAL, "zstd_level %d outside [%d, %d]", o->zstd_level,
				 ZSTD_minCLevel(), ZSTD_maxCLevel());
	if (o->compress_threads < 0 || o->compress_threads > 256)
		return usnap_err(-EINVAL, "compress_threads %d outside [0, 256]", o->compress_threads);
	if (o->chunk_bytes == 0)
		o->chunk_bytes = 256u << 10;
	if (o->chunk_bytes < 16384 || o->chunk_bytes > (16u << 20) || (o->chunk_bytes & (o->chunk_bytes - 1)) ||
	    o->chunk_bytes < page_size)
		return usnap_err(-EINVAL, "chunk_bytes %zu: must be a power of two in [16 KiB, 16 MiB]",
				 o->chunk_bytes);
	if (o->buffer_bytes == 0)
		o->buffer_bytes = 64u << 20;
	return 0;
}

USNAP_EXPORT int uffdsnap_new(uffdsnap_t **ctxp, const uffdsnap_opts_t *opts)
{
	uffdsnap_t *ctx;
	int r;

	usnap_clear_err();
	if (!ctxp)
		return usnap_err(-EINVAL, "ctx pointer is NULL");
	*ctxp = NULL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return usnap_err(-ENOMEM, "allocating the context");
	ctx->uffd[0] = ctx->uffd[1] = -1;
	ctx->page_size = (size_t)sysconf(_SC_PAGESIZE);
	r = normalize_opts(&ctx->opts, opts, ctx->page_size);
	if (!r)
		r = usnap_pool_init(ctx);
	if (!r)
		r = usnap_uffd_open(ctx);
	if (r) {
		usnap_pool_free(&ctx->pool);
		free(ctx);
		return r;
	}
	pthread_mutex_init(&ctx->lock, NULL);
	*ctxp = ctx;
	return 0;
}

USNAP_EXPORT uint64_t uffdsnap_kernel_features(const uffdsnap_t *ctx)
{
	return ctx ? ctx->features : 0;
}

USNAP_EXPORT uint64_t uffdsnap_features(const uffdsnap_t *ctx)
{
	return ctx ? ctx->enabled : 0;
}

USNAP_EXPORT void uffdsnap_free(uffdsnap_t *ctx)
{
	uffdsnap_snap_t *s;
	uffdsnap_migrate_t *m;

	if (!ctx)
		return;
	pthread_mutex_lock(&ctx->lock);
	s = ctx->active;
	m = ctx->migration;
	pthread_mutex_unlock(&ctx->lock);
	if (m)
		usnap_migrate_stop(m); /* the handle stays the caller's, its wait gives -ECANCELED */
	if (s) {
		/* The handle stays the caller's; it just loses its context. */
		uffdsnap_cancel(s);
		uffdsnap_wait(s);
	}
	usnap_listener_stop(ctx);
	for (unsigned i = 0; i < ctx->nregs; i++)
		usnap_reg_release(&ctx->regs[i]);
	free(ctx->regs);
	usnap_pool_free(&ctx->pool);
	close(ctx->uffd[USNAP_UFFD_SHARED]);
	close(ctx->uffd[USNAP_UFFD_PRIVATE]);
	pthread_mutex_destroy(&ctx->lock);
	free(ctx);
}
