/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Contract 4: memfd, /dev/shm and tmpfs files, and MAP_SHARED|MAP_ANONYMOUS
 * are accepted (and snapshot byte-exact); everything else is refused at
 * uffdsnap_add_region with the documented errno and a detail message.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

static void snapshot_kind(enum t_mem_kind kind)
{
	const size_t len = 16 * MiB;
	const uffdsnap_opts_t o = t_opts(4 * MiB, 0);
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *ref;
	int r;

	t_mem_new(&m, kind, len);
	t_fill_mixed(m.addr, len, 31 + kind, 9, 5);
	ref = t_mem_copy(&m);
	ctx = t_ctx_new(&o);
	ck_assert_int_eq(t_add(ctx, "region", m.addr, len), 0);
	/* the sweep stalls at the 4 MiB bound, then goes on at ~50 MiB/s: the
	 * writes, from the end of the region down to its last quarter, reach pages it
	 * has not copied, and their pre-images must come from the fault path */
	s = t_begin_stalled(ctx, &cb, 5000);
	for (size_t off = len - t_page; off >= len * 3 / 4; off -= 7 * t_page)
		m.addr[off] ^= 0xff; /* writes during the snapshot */
	atomic_store(&cb.sleep_us, 0);
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "%s: wait: %d %s", t_mem_kind_name(kind), r, uffdsnap_snap_error(s));
	t_stats(s, &st);
	printf("region kind %s accepted:\n", t_mem_kind_name(kind));
	t_stats_print(t_mem_kind_name(kind), &st);
	t_assert_exactly_once(&st);
	ck_assert_msg(st.faults > 0 && st.pages_fault > 0, "no write went through the fault path (%llu faults, %llu "
		      "pages copied for them)", (unsigned long long)st.faults, (unsigned long long)st.pages_fault);
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	{
		struct t_expect ex = { "region", ref, len };
		t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_mem_free(&m);
}

START_TEST(region_accepts_memfd) { snapshot_kind(T_MEM_MEMFD); }
END_TEST
START_TEST(region_accepts_devshm) { snapshot_kind(T_MEM_DEVSHM); }
END_TEST
START_TEST(region_accepts_tmpfs) { snapshot_kind(T_MEM_TMPFS); }
END_TEST
START_TEST(region_accepts_anon_shared) { snapshot_kind(T_MEM_ANON_SHARED); }
END_TEST

/*
 * The most regions a context takes (2,048, fewer under a sanitizer), 64 KiB
 * each, laid out the way begin's fast paths care about: runs of adjacent
 * regions (one protect ioctl covers several), a gap after every 16th, and
 * every 8th file holding two regions at two windows. One file is mapped once
 * more outside any region: begin must find that alias among them all and
 * register it, so the write through it below is a fault whose pre-image
 * lands in the snapshot. Writes to every 7th region during the snapshot
 * too. Each region's bytes in the file are those of the instant.
 */
START_TEST(region_many)
{
	const unsigned n = T_SANITIZED ? 256 : 2048;
	const size_t len = 64 * KiB; /* and a gap of len after every 16th */
	uint8_t *area, *ref, *alias = NULL, **addr = calloc(n, sizeof(*addr));
	struct t_expect *ex = calloc(n, sizeof(*ex));
	char (*names)[16] = calloc(n, sizeof(*names)), dir[PATH_MAX], path[PATH_MAX + 8];
	uffdsnap_t *ctx = t_ctx_new(NULL);
	uffdsnap_snap_t *snap;
	uffdsnap_stats_t st;
	uint64_t t0;
	int fd = -1, r;

	ck_assert(addr && ex && names);
	area = mmap(NULL, n / 16 * (16 * len + len), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(area != MAP_FAILED);
	ref = t_buf_alloc(n * len);
	for (unsigned i = 0; i < n; i++) {
		/* a second window of the previous region's file for every 8th */
		bool second = i % 8 == 1;
		if (!second) {
			if (fd >= 0)
				close(fd);
			fd = memfd_create("many", MFD_CLOEXEC);
			ck_assert(fd >= 0 && !ftruncate(fd, (off_t)(2 * len)));
		}
		addr[i] = mmap(area + i / 16 * (16 * len + len) + i % 16 * len, len, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_FIXED, fd, second ? (off_t)len : 0);
		ck_assert(addr[i] != MAP_FAILED);
		t_fill_random(addr[i], len, 1000 + i);
		memcpy(ref + (size_t)i * len, addr[i], len);
		if (i == 40)
			ck_assert((alias = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) != MAP_FAILED);
		snprintf(names[i], sizeof(names[i]), "r%u", i);
		ck_assert_int_eq(t_add(ctx, names[i], addr[i], len), (int)i);
		ex[i] = (struct t_expect){ names[i], ref + (size_t)i * len, len };
	}
	close(fd);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	t0 = t_now_ns();
	r = uffdsnap_begin_file(ctx, path, &snap);
	ck_assert_msg(r == 0, "begin over %u regions: %d %s", n, r, uffdsnap_last_error());
	printf("begin over %u regions of 64 KiB: %.1f ms (not a test of speed)\n", n, t_ms_since(t0));
	for (unsigned i = 0; i < n; i += 7)
		addr[i][(i % 16) * t_page] ^= 0x5a;
	alias[3 * t_page] ^= 0xa5; /* region 40's page 3, through the alias */
	r = uffdsnap_wait(snap);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(snap));
	t_stats(snap, &st);
	t_stats_print("many regions", &st);
	t_assert_exactly_once(&st);
	ck_assert_msg(st.faults > 0, "no write during the snapshot faulted");
	ck_assert_int_eq(addr[40][3 * t_page], (uint8_t)(ref[40 * len + 3 * t_page] ^ 0xa5));
	t_check_file(path, ex, n);
	uffdsnap_snap_free(snap);
	uffdsnap_free(ctx);
	munmap(alias, len);
	munmap(area, n / 16 * (16 * len + len));
	t_buf_free(ref, n * len);
	t_rmdir(dir);
	free(addr);
	free(ex);
	free(names);
}
END_TEST

#define REFUSE(ctx, name, addr, len, err)                                                                  \
	do {                                                                                               \
		const char *n_ = (name);                                                                   \
		int r_ = uffdsnap_add_region(ctx, n_, addr, len);                                        \
		const char *d_ = uffdsnap_last_error();                                                    \
		printf("  refused %-28s -> %d (%s): %s\n", #err, r_, r_ < 0 ? uffdsnap_strerror(r_) : "-", d_); \
		ck_assert_msg(r_ == -(err), "add_region(%s, %p, %zu): %d, expected -%s", n_ ? n_ : "NULL", \
			      (void *)(addr), (size_t)(len), r_, #err);                                    \
		ck_assert_msg(d_ && d_[0], "no uffdsnap_last_error() detail for -%s", #err);              \
	} while (0)

START_TEST(region_refusals)
{
	struct t_mem ok, disk, hole;
	uint8_t *privdisk, *noaccess;
	uffdsnap_t *ctx;
	char longname[300];
	int n0;

	t_watchdog(60, "region_refusals");
	t_memfd(&ok, 8 * MiB);
	t_mem_new(&disk, T_MEM_DISKFILE, 1 * MiB);
	/* private memory is accepted (test-private), but not over a disk file
	 * (no uffd-wp for regular files) nor without read access. Mapped before
	 * the gap below is made, so that neither lands in it. */
	privdisk = mmap(NULL, disk.len, PROT_READ | PROT_WRITE, MAP_PRIVATE, disk.fd, 0);
	noaccess = mmap(NULL, 1 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(privdisk != MAP_FAILED && noaccess != MAP_FAILED);
	t_memfd(&hole, 3 * MiB);
	ck_assert_int_eq(munmap(hole.addr + 1 * MiB, 1 * MiB), 0); /* a gap in the middle */
	memset(disk.addr, 1, disk.len);
	ctx = t_ctx_new(NULL);

	printf("region_refusals:\n");
	REFUSE(ctx, "disk", disk.addr, disk.len, EMEDIUMTYPE);
	REFUSE(ctx, "private-disk", privdisk, disk.len, EMEDIUMTYPE);
	REFUSE(ctx, "no-access", noaccess, 1 * MiB, EMEDIUMTYPE);
	REFUSE(ctx, "unaligned-addr", ok.addr + 8, 4 * t_page, EINVAL);
	REFUSE(ctx, "unaligned-len", ok.addr, t_page + 100, EINVAL);
	REFUSE(ctx, "zero-len", ok.addr, 0, EINVAL);
	REFUSE(ctx, NULL, ok.addr, t_page, EINVAL);
	REFUSE(ctx, "", ok.addr, t_page, EINVAL);
	memset(longname, 'n', sizeof(longname));
	longname[256] = '\0';
	REFUSE(ctx, longname, ok.addr, t_page, ENAMETOOLONG);
	REFUSE(ctx, "gap", hole.addr, 3 * MiB, EFAULT);
	REFUSE(ctx, "unmapped", hole.addr + 1 * MiB, 1 * MiB, EFAULT);
	REFUSE(ctx, "nowhere", (void *)(uintptr_t)(64 * KiB), t_page, EFAULT);
	/* a range spanning the memfd and an unrelated mapping next to it is not one file */
	ck_assert_int_eq(uffdsnap_region_count(ctx), 0);

	/* 255 bytes is fine */
	longname[255] = '\0';
	ck_assert_int_eq(t_add(ctx, longname, ok.addr + 7 * MiB, 1 * MiB), 0);
	ck_assert_int_eq(t_add(ctx, "pool", ok.addr, 2 * MiB), 1);
	REFUSE(ctx, "pool", ok.addr + 4 * MiB, 1 * MiB, EEXIST);
	REFUSE(ctx, "overlap-inside", ok.addr + 1 * MiB, t_page, EBUSY);
	REFUSE(ctx, "overlap-tail", ok.addr + 2 * MiB - t_page, 2 * t_page, EBUSY);
	REFUSE(ctx, "overlap-all", ok.addr, 8 * MiB, EBUSY);
	REFUSE(ctx, "same", ok.addr, 2 * MiB, EBUSY);
	/* adjacent is fine */
	ck_assert_int_eq(t_add(ctx, "adjacent", ok.addr + 2 * MiB, 1 * MiB), 2);
	n0 = uffdsnap_region_count(ctx);
	ck_assert_int_eq(n0, 3);

	/* add_region while a snapshot runs */
	{
		struct t_cb cb;
		uffdsnap_snap_t *s;
		t_cb_init(&cb, -1);
		t_cb_gate(&cb, true);
		ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
		REFUSE(ctx, "late", ok.addr + 5 * MiB, 1 * MiB, EBUSY);
		t_cb_gate(&cb, false);
		ck_assert_int_eq(uffdsnap_wait(s), 0);
		uffdsnap_snap_free(s);
		t_cb_destroy(&cb);
		/* and after it, adding works again */
		ck_assert_int_eq(t_add(ctx, "late", ok.addr + 5 * MiB, 1 * MiB), 3);
	}
	ck_assert_int_eq(uffdsnap_region_count(ctx), 4);
	ck_assert_int_eq(uffdsnap_add_region(NULL, "x", ok.addr, t_page), -EINVAL);
	ck_assert_int_lt(uffdsnap_region_count(NULL), 0);

	uffdsnap_free(ctx);
	t_mem_free(&ok);
	t_mem_free(&disk);
	munmap(privdisk, disk.len);
	munmap(noaccess, 1 * MiB);
	munmap(hole.addr, 1 * MiB);
	munmap(hole.addr + 2 * MiB, 1 * MiB);
	hole.addr = NULL;
	t_mem_free(&hole);
}
END_TEST

/* A region that spans two different shmem files mapped back to back. */
START_TEST(region_refuses_two_files)
{
	struct t_mem a, b;
	uffdsnap_t *ctx;
	uint8_t *base;
	int r;

	t_memfd(&a, 1 * MiB);
	t_memfd(&b, 1 * MiB);
	base = mmap(NULL, 2 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(base != MAP_FAILED);
	ck_assert(mmap(base, 1 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, a.fd, 0) == base);
	ck_assert(mmap(base + 1 * MiB, 1 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b.fd, 0) ==
		  base + 1 * MiB);
	ctx = t_ctx_new(NULL);
	r = uffdsnap_add_region(ctx, "two", base, 2 * MiB);
	printf("region_refuses_two_files: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EMEDIUMTYPE);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	/* each one alone is fine */
	ck_assert_int_eq(t_add(ctx, "one", base, 1 * MiB), 0);
	ck_assert_int_eq(t_add(ctx, "other", base + 1 * MiB, 1 * MiB), 1);
	uffdsnap_free(ctx);
	munmap(base, 2 * MiB);
	t_mem_free(&a);
	t_mem_free(&b);
}
END_TEST

START_TEST(region_strerror)
{
	static const int errs[] = { EPERM, ENOSYS, EOPNOTSUPP, EINVAL, EEXIST, EBUSY, EFAULT, EMEDIUMTYPE,
				    ENAMETOOLONG, ENOENT, ENOMEM, ENOSPC, EPIPE, EIO, ECANCELED, EBADMSG,
				    ENODATA, ENOEXEC, EPROTONOSUPPORT, EACCES, ESTALE, EDQUOT, EAGAIN };
	const char *unknown = uffdsnap_strerror(-99999);

	ck_assert_ptr_nonnull(unknown);
	ck_assert(unknown[0]);
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		const char *m = uffdsnap_strerror(-errs[i]);
		ck_assert_msg(m && strlen(m) >= 10, "strerror(-%d) is too short: %s", errs[i], m ? m : "NULL");
		ck_assert_msg(strcmp(m, unknown), "strerror(-%d) = the unknown-error text", errs[i]);
		ck_assert_str_eq(uffdsnap_strerror(errs[i]), m); /* positive values too */
		printf("  strerror(-%s%d) = %s\n", "", errs[i], m);
	}
	/* what a user must be told about permissions */
	ck_assert_ptr_nonnull(strstr(uffdsnap_strerror(-EPERM), "root"));
	ck_assert_ptr_nonnull(strstr(uffdsnap_strerror(-EPERM), "unprivileged_userfaultfd"));
	/* unknown values never crash or return NULL */
	{
		static const int odd[] = { 4095, -4095, 12345, -12345, INT_MAX, -INT_MAX, INT_MIN, 0, 1 };
		for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
			const char *m = uffdsnap_strerror(odd[i]);
			ck_assert_msg(m && m[0], "strerror(%d) NULL or empty", odd[i]);
		}
	}
	ck_assert_uint_eq(uffdsnap_version(), UFFDSNAP_VERSION_NUMBER);
}
END_TEST

/*
 * A program compiled against an older header has smaller option structs:
 * the *_init macros pass its sizeof, and the library must write no byte past
 * it (and its defaults must be accepted as they are).
 */
START_TEST(opts_init_older_struct)
{
	const size_t old = offsetof(uffdsnap_opts_t, zstd_level) + sizeof(int);
	unsigned char buf[sizeof(uffdsnap_opts_t) + 32];
	uffdsnap_opts_t *o = (uffdsnap_opts_t *)buf;
	uffdsnap_t *ctx;

	memset(buf, 0xaa, sizeof(buf));
	uffdsnap_opts_init_size(o, old);
	ck_assert_uint_eq(o->size, old);
	ck_assert_int_eq(o->zstd_level, 1);
	for (size_t i = old; i < sizeof(buf); i++)
		ck_assert_msg(buf[i] == 0xaa, "uffdsnap_opts_init_size(%zu) wrote byte %zu", old, i);
	ck_assert_int_eq(uffdsnap_new(&ctx, o), 0);
	uffdsnap_free(ctx);

	/* a newer program's larger struct: the tail is zeroed, and new() says
	 * the size is not one it knows */
	memset(buf, 0xaa, sizeof(buf));
	uffdsnap_opts_init_size(o, sizeof(buf));
	ck_assert_uint_eq(o->size, sizeof(buf));
	ck_assert_int_eq(buf[sizeof(buf) - 1], 0);
	ck_assert_int_eq(uffdsnap_new(&ctx, o), -EINVAL);
	printf("  options of another size: %s\n", uffdsnap_last_error());
	{
		uffdsnap_restore_opts_t ro;
		uffdsnap_lazy_opts_t lo;
		uffdsnap_restore_opts_init(&ro);
		uffdsnap_lazy_opts_init(&lo);
		ck_assert_uint_eq(ro.size, sizeof(ro));
		ck_assert_uint_eq(lo.size, sizeof(lo));
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("region");
	TCase *tc = tcase_create("accept");

	t_test_require_uffd();
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, region_accepts_memfd);
	tcase_add_test(tc, region_accepts_devshm);
	tcase_add_test(tc, region_accepts_tmpfs);
	tcase_add_test(tc, region_accepts_anon_shared);
	tcase_add_test(tc, region_many);
	suite_add_tcase(s, tc);
	/* no write faults in this case: it can run under valgrind (CK_RUN_CASE=refuse);
	 * valgrind serializes threads, so a thread blocked in a uffd fault hangs it */
	tc = tcase_create("refuse");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, region_refusals);
	tcase_add_test(tc, region_refuses_two_files);
	tcase_add_test(tc, region_strerror);
	tcase_add_test(tc, opts_init_older_struct);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
