/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Other mappings of a region's file in this process (issue 16): a VMM maps
 * guest RAM more than once, and may remap it while a snapshot runs.
 *
 *  - an alias mapped before begin is protected with the region: writes
 *    through it wait for their copy, and the snapshot is exact;
 *  - an alias that can never write (a read-only descriptor) is left alone;
 *  - a mapping of the file made during the snapshot (a new alias, mmap
 *    MAP_FIXED over the region, munmap then mmap again) is not tracked: the
 *    snapshot fails with -EBUSY naming it, never "succeeds" with writes made
 *    after the instant;
 *  - the region replaced by other memory (mremap onto it, MAP_FIXED of
 *    another file): its file is written by nobody, so the rest of it is read
 *    from the file and the snapshot is exact;
 *  - two regions may not share file pages (each would copy its own view).
 *
 * Every case writes a marker into every page after the disturbance while the
 * sweep is held back, so a write that escaped the snapshot shows up in the
 * image.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (16 * MiB)

struct run {
	struct t_mem m;
	uint8_t *ref;
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
};

static void setup(struct run *t, uint64_t seed)
{
	memset(t, 0, sizeof(*t));
	t_memfd(&t->m, LEN);
	t_fill_random(t->m.addr, LEN, seed);
	t->ref = t_mem_copy(&t->m);
}

/* Begin with the sweep held back (4 MiB of buffers, a slow sink): most of
 * the region stays protected and uncopied while the test acts. */
static void begin_slow(struct run *t)
{
	uffdsnap_opts_t o;

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	t->ctx = t_ctx_new(&o);
	t_add(t->ctx, "ram", t->m.addr, LEN);
	t->s = t_begin_stalled(t->ctx, &t->cb, 20000);
}

static int finish(struct run *t, const char *label)
{
	return t_finish_stalled(t->s, &t->cb, &t->st, label);
}

static void end(struct run *t)
{
	uffdsnap_snap_free(t->s);
	uffdsnap_free(t->ctx);
	t_cb_destroy(&t->cb);
	t_buf_free(t->ref, LEN);
	t_mem_free(&t->m);
}

static void expect_exact(struct run *t, int r)
{
	struct t_expect ex = { "ram", t->ref, LEN };

	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t->s));
	t_assert_exactly_once(&t->st);
	t_check_buffer(t->cb.mem, t->cb.mem_len, &ex, 1);
}

static void expect_untracked(struct run *t, int r)
{
	ck_assert_msg(r == -EBUSY, "wait returned %d (%s), want -EBUSY: a write through an untracked mapping "
		      "was let into the snapshot", r, uffdsnap_snap_error(t->s));
	ck_assert_msg(strstr(uffdsnap_snap_error(t->s), "mapped"), "error does not name the mapping: %s",
		      uffdsnap_snap_error(t->s));
	printf("  failed as it must: %s\n", uffdsnap_snap_error(t->s));
}

/* A marker in every page of [a, a + LEN), from the middle on first: the
 * sweep (in address order, held back) has copied only the start. */
static void scribble(uint8_t *a)
{
	const size_t np = LEN / t_page;

	for (size_t i = 0; i < np; i++)
		a[((i + np / 2) % np) * t_page + 8] ^= 0x5a;
}

/* A second MAP_SHARED mapping of the region's memfd. */
static uint8_t *map_alias(const struct run *t, void *at, int prot, int fd)
{
	uint8_t *b = mmap(at, LEN, prot, MAP_SHARED | (at ? MAP_FIXED : 0), fd >= 0 ? fd : t->m.fd, 0);

	ck_assert_msg(b != MAP_FAILED, "mmap: %s", strerror(errno));
	return b;
}

START_TEST(alias_before_begin)
{
	struct run t;
	uint8_t *b;
	int r;

	t_watchdog(120, "alias_before_begin");
	setup(&t, 161);
	b = map_alias(&t, NULL, PROT_READ | PROT_WRITE, -1);
	begin_slow(&t);
	ck_assert_int_gt(t_pagemap_protected(b + LEN / 2, LEN / 2), 0);
	scribble(b);
	r = finish(&t, "alias mapped before begin");
	expect_exact(&t, r);
	ck_assert_msg(t.st.pages_fault > 0, "no write through the alias waited for its copy");
	ck_assert_int_eq(t_pagemap_protected(b, LEN), 0);
	munmap(b, LEN);
	end(&t);
}
END_TEST

/* Holes written through an alias: the MISSING fault comes from the alias
 * address, the page is filled (at whichever mapping) and the writer there
 * must be woken; the snapshot records the holes as zeros. */
START_TEST(alias_holes)
{
	struct run t;
	uint8_t *b;
	int r;

	t_watchdog(120, "alias_holes");
	memset(&t, 0, sizeof(t));
	t_memfd(&t.m, LEN);
	t_fill_random(t.m.addr, LEN / 2, 168); /* the second half stays holes */
	t.ref = t_mem_copy(&t.m);
	ck_assert_int_ge(t_mem_holes(&t.m), (long)(LEN / 2 / t_page));
	b = map_alias(&t, NULL, PROT_READ | PROT_WRITE, -1);
	begin_slow(&t);
	for (size_t i = LEN / 2 / t_page; i < LEN / t_page; i++)
		b[i * t_page] = 0x77; /* each waits for its MISSING fault through the alias */
	r = finish(&t, "holes written through an alias");
	expect_exact(&t, r);
	ck_assert_msg(t.st.pages_hole >= LEN / 2 / t_page, "holes recorded: %llu",
		      (unsigned long long)t.st.pages_hole);
	ck_assert_int_eq(t.m.addr[LEN - t_page], 0x77);
	munmap(b, LEN);
	end(&t);
}
END_TEST

START_TEST(alias_readonly)
{
	char path[64];
	struct run t;
	uint8_t *b;
	int fd, r;

	t_watchdog(120, "alias_readonly");
	setup(&t, 162);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", t.m.fd);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	b = map_alias(&t, NULL, PROT_READ, fd);
	begin_slow(&t);
	ck_assert_int_eq(b[LEN - 1], t.ref[LEN - 1]);
	scribble(t.m.addr);
	r = finish(&t, "read-only alias");
	expect_exact(&t, r);
	munmap(b, LEN);
	close(fd);
	end(&t);
}
END_TEST

START_TEST(alias_after_begin)
{
	struct run t;
	uint8_t *b;
	int r;

	t_watchdog(120, "alias_after_begin");
	setup(&t, 163);
	begin_slow(&t);
	b = map_alias(&t, NULL, PROT_READ | PROT_WRITE, -1);
	scribble(b);
	r = finish(&t, "alias mapped after begin");
	expect_untracked(&t, r);
	munmap(b, LEN);
	end(&t);
}
END_TEST

START_TEST(remap_fixed_same_file)
{
	struct run t;
	int r;

	t_watchdog(120, "remap_fixed_same_file");
	setup(&t, 164);
	begin_slow(&t);
	map_alias(&t, t.m.addr, PROT_READ | PROT_WRITE, -1);
	scribble(t.m.addr);
	r = finish(&t, "region mapped again with MAP_FIXED");
	ck_assert_uint_ge(t.st.unmaps, 1);
	expect_untracked(&t, r);
	end(&t);
}
END_TEST

START_TEST(munmap_then_mmap)
{
	struct run t;
	uint8_t *b;
	int r;

	t_watchdog(120, "munmap_then_mmap");
	setup(&t, 165);
	begin_slow(&t);
	ck_assert_int_eq(munmap(t.m.addr, LEN), 0);
	/* Not MAP_FIXED: a sanitizer's allocator may have taken the address
	 * meanwhile, and clobbering it would crash the test, not the case. */
	b = mmap(t.m.addr, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, t.m.fd, 0);
	if (b == MAP_FAILED)
		b = map_alias(&t, NULL, PROT_READ | PROT_WRITE, -1);
	t.m.addr = b;
	scribble(t.m.addr);
	r = finish(&t, "region unmapped and mapped again");
	expect_untracked(&t, r);
	end(&t);
}
END_TEST

/* Other memory where the region was: the file is left alone, so the rest of
 * the region comes from it, exactly. */
static void replaced(bool by_mremap)
{
	struct t_mem other;
	struct run t;
	uint8_t *o;
	int r;

	setup(&t, 166);
	begin_slow(&t);
	if (by_mremap) {
		o = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert(o != MAP_FAILED);
		memset(o, 0x11, LEN);
		o = mremap(o, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, t.m.addr);
		ck_assert_msg(o == t.m.addr, "mremap: %s", strerror(errno));
	} else {
		t_memfd(&other, LEN);
		o = mmap(t.m.addr, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, other.fd, 0);
		ck_assert_msg(o == t.m.addr, "mmap: %s", strerror(errno));
	}
	scribble(t.m.addr);
	r = finish(&t, by_mremap ? "other memory moved onto the region" : "another file mapped over the region");
	ck_assert_uint_ge(t.st.unmaps, 1);
	expect_exact(&t, r);
	if (!by_mremap) {
		munmap(t.m.addr, LEN);
		t_mem_free(&other);
		t.m.addr = mmap(t.m.addr, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, t.m.fd, 0);
	}
	end(&t);
}

START_TEST(mremap_onto_region) { t_watchdog(120, "mremap_onto_region"); replaced(true); }
END_TEST

START_TEST(map_fixed_other_file) { t_watchdog(120, "map_fixed_other_file"); replaced(false); }
END_TEST

START_TEST(regions_share_file_pages)
{
	struct t_mem m;
	uffdsnap_t *ctx;
	uint8_t *b;
	int r;

	t_memfd(&m, 4 * MiB);
	b = mmap(NULL, 2 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 1 * MiB);
	ck_assert(b != MAP_FAILED);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "a", m.addr, 4 * MiB);
	r = uffdsnap_add_region(ctx, "b", b, 2 * MiB);
	ck_assert_msg(r == -EBUSY, "a second region over the same file pages: %d (%s)", r, uffdsnap_last_error());
	ck_assert_msg(strstr(uffdsnap_last_error(), "'a'"), "error does not name the other region: %s",
		      uffdsnap_last_error());
	printf("regions_share_file_pages: %s\n", uffdsnap_last_error());
	uffdsnap_free(ctx);
	munmap(b, 2 * MiB);
	t_mem_free(&m);
}
END_TEST

/* A second context on memory a first one is snapshotting: -EBUSY that says
 * another userfaultfd holds it, at add_region and at begin. */
START_TEST(two_contexts)
{
	uffdsnap_t *ctx2;
	uffdsnap_snap_t *s2 = NULL;
	struct t_cb cb2;
	struct run t;
	int r;

	t_watchdog(120, "two_contexts");
	setup(&t, 167);
	ctx2 = t_ctx_new(NULL);
	t_add(ctx2, "ram", t.m.addr, LEN); /* before the first snapshot: free */
	begin_slow(&t);
	r = uffdsnap_add_region(ctx2, "again", t.m.addr, LEN);
	ck_assert_int_eq(r, -EBUSY);
	t_cb_init(&cb2, -1);
	r = uffdsnap_begin(ctx2, t_cb_sink(&cb2), &s2);
	printf("two_contexts: %d %s\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EBUSY);
	ck_assert_msg(strstr(uffdsnap_last_error(), "another userfaultfd"), "%s", uffdsnap_last_error());
	ck_assert_int_eq(finish(&t, "the first context"), 0);
	uffdsnap_free(ctx2);
	t_cb_destroy(&cb2);
	end(&t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("alias");
	TCase *tc = tcase_create("alias");

	t_test_require_uffd();
	tcase_set_timeout(tc, 150);
	tcase_add_test(tc, alias_before_begin);
	tcase_add_test(tc, alias_holes);
	tcase_add_test(tc, alias_readonly);
	tcase_add_test(tc, alias_after_begin);
	tcase_add_test(tc, remap_fixed_same_file);
	tcase_add_test(tc, munmap_then_mmap);
	tcase_add_test(tc, mremap_onto_region);
	tcase_add_test(tc, map_fixed_other_file);
	tcase_add_test(tc, regions_share_file_pages);
	tcase_add_test(tc, two_contexts);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
