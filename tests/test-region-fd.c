/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffdsnap_add_region_fd(): a region named by its file, for programs that map
 * a file and keep no address (LMDB). The library must find the one shared
 * mapping that holds the offset, follow it across the VMAs mprotect split it
 * into, and refuse what it cannot decide: no mapping, two mappings of the
 * same pages, a descriptor that is not open.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

/* A memfd of `len` mapped once, split in three VMAs by making one page in
 * the middle read-only (the writes below skip it). */
START_TEST(region_fd_whole_mapping)
{
	const size_t len = 4 * MiB;
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uint8_t *ref;
	int id, r;

	t_watchdog(60, "region_fd_whole_mapping");
	t_memfd(&m, len);
	t_fill_mixed(m.addr, len, 17, 9, 5);
	ck_assert_int_eq(mprotect(m.addr + len / 2 + t_page, t_page, PROT_READ), 0);
	ctx = t_ctx_new(NULL);
	id = uffdsnap_add_region_fd(ctx, "by-fd", m.fd, 0, 0);
	ck_assert_msg(id == 0, "add_region_fd: %d (%s)", id, uffdsnap_last_error());
	/* the same pages by address: the region is exactly the mapping */
	r = uffdsnap_add_region(ctx, "again", m.addr, t_page);
	ck_assert_msg(r == -EBUSY, "the mapping's first page is not in the region: %d (%s)", r, uffdsnap_last_error());
	r = uffdsnap_add_region(ctx, "again", m.addr + len - t_page, t_page);
	ck_assert_msg(r == -EBUSY, "the mapping's last page is not in the region: %d (%s)", r, uffdsnap_last_error());
	ref = t_mem_copy(&m);
	t_cb_init(&cb, -1);
	cb.keep = true;
	ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
	for (size_t off = 0; off < len; off += 64 * t_page)
		m.addr[off] ^= 0x5a; /* writes during the snapshot */
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	{
		struct t_expect e = { "by-fd", ref, len };
		t_check_buffer(cb.mem, cb.mem_len, &e, 1);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

/* An offset and length inside the mapping: that part, at the right address. */
START_TEST(region_fd_part)
{
	const size_t len = 2 * MiB, off = 64 * KiB, part = 256 * KiB;
	struct t_mem m;
	uffdsnap_t *ctx;
	int id, r;

	t_memfd(&m, len);
	ctx = t_ctx_new(NULL);
	id = uffdsnap_add_region_fd(ctx, "part", m.fd, off, part);
	ck_assert_msg(id == 0, "add_region_fd: %d (%s)", id, uffdsnap_last_error());
	/* the pages just outside are free, those inside taken */
	ck_assert_int_eq(uffdsnap_add_region(ctx, "before", m.addr + off - t_page, t_page), 1);
	ck_assert_int_eq(uffdsnap_add_region(ctx, "after", m.addr + off + part, t_page), 2);
	r = uffdsnap_add_region(ctx, "inside", m.addr + off + part - t_page, t_page);
	ck_assert_int_eq(r, -EBUSY);
	uffdsnap_free(ctx);
	t_mem_free(&m);
}
END_TEST

START_TEST(region_fd_refusals)
{
	const size_t len = 1 * MiB;
	struct t_mem m;
	uffdsnap_t *ctx;
	uint8_t *second;
	int unmapped, r;

	t_memfd(&m, len);
	ctx = t_ctx_new(NULL);
	unmapped = memfd_create("unmapped", MFD_CLOEXEC);
	ck_assert(unmapped >= 0 && ftruncate(unmapped, (off_t)len) == 0);
	r = uffdsnap_add_region_fd(ctx, "none", unmapped, 0, 0);
	printf("not mapped: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -ENOENT);
	r = uffdsnap_add_region_fd(ctx, "past-the-end", m.fd, len, 0);
	ck_assert_int_eq(r, -ENOENT);
	r = uffdsnap_add_region_fd(ctx, "badf", 1000, 0, 0);
	ck_assert_int_eq(r, -EBADF);
	r = uffdsnap_add_region_fd(ctx, "odd", m.fd, 100, 0);
	ck_assert_int_eq(r, -EINVAL);
	second = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0);
	ck_assert(second != MAP_FAILED);
	r = uffdsnap_add_region_fd(ctx, "twice", m.fd, 0, 0);
	printf("mapped twice: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EBUSY);
	ck_assert_ptr_nonnull(strstr(uffdsnap_last_error(), "uffdsnap_add_region()"));
	ck_assert_int_eq(uffdsnap_region_count(ctx), 0);
	munmap(second, len);
	/* a private mapping of the file is no candidate: the shared one is found */
	second = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, m.fd, 0);
	ck_assert(second != MAP_FAILED);
	ck_assert_int_eq(uffdsnap_add_region_fd(ctx, "shared", m.fd, 0, 0), 0);
	munmap(second, len);
	close(unmapped);
	uffdsnap_free(ctx);
	t_mem_free(&m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("region-fd");
	TCase *tc = tcase_create("region-fd");

	t_test_require_uffd();
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, region_fd_whole_mapping);
	tcase_add_test(tc, region_fd_part);
	tcase_add_test(tc, region_fd_refusals);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
