/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private memory regions: MAP_PRIVATE|MAP_ANONYMOUS (what malloc gives large
 * allocations, what Redis forks for) and MAP_PRIVATE mappings of a memfd
 * (copy-on-write pages over a shmem file). The oracle is a copy taken with no
 * writer running; after begin the test writes copied and not-yet-copied pages,
 * never-touched pages (which only WP_UNPOPULATED markers protect), and makes
 * the kernel write into the region with read(2). MADV_DONTNEED on private
 * memory discards pages: on a page not copied yet the snapshot must fail with
 * -ESTALE, on a copied one it must not care.
 *
 * test-private-nounpop is this file built again against the fault-injection
 * library with USNAP_TEST_NO_WP_UNPOPULATED: UFFDIO_API then hides
 * UFFD_FEATURE_WP_UNPOPULATED as kernels before 6.4 do, and private_anon_exact
 * (CK_RUN_CASE=anon) runs the path for them: begin maps never-touched pages
 * (MADV_POPULATE_READ) so that there is a PTE to protect.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"
#ifdef USNAP_TEST_NO_WP_UNPOPULATED
#include "inject.h"
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* Linux 6.4, newer than the system's headers */
#endif

struct setup {
	struct t_cb cb;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
};

/* Begin on region [addr, len) with the sink held shut until the sweep has
 * stopped after a few buffers, then let it go on slowly (~12 MiB/s): pages in
 * the second half stay protected, not copied, while the test writes them. A
 * sink held shut for good would block those writes: that is the backpressure. */
static void begin_held(struct setup *t, uint8_t *addr, size_t len)
{
	uffdsnap_opts_t o;

	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	t->ctx = t_ctx_new(&o);
	t_add(t->ctx, "heap", addr, len);
	t->s = t_begin_stalled(t->ctx, &t->cb, 20000);
}

static void end(struct setup *t)
{
	uffdsnap_snap_free(t->s);
	uffdsnap_free(t->ctx);
	t_cb_destroy(&t->cb);
}

/* Writes after the instant, remembered in `now`: data pages, never-touched
 * pages, and a kernel-mode write through read(2). */
static unsigned write_after(uint8_t *addr, uint8_t *now, size_t len, const uint8_t *untouched)
{
	size_t np = len / t_page;
	unsigned n = 0;
	int pfd[2];

	/* never-touched pages first: each must still be protected when written
	 * (one per 64 pages: a write fault un-protects the 16 around it) */
	for (size_t p = np / 2, block = SIZE_MAX; p < np; p++) {
		if (untouched[p] && p / 64 != block) {
			block = p / 64;
			ck_assert_msg(t_pagemap_entry(addr + p * t_page) & T_PM_WP,
				      "never-touched page %zu is not write-protected", p);
			memset(addr + p * t_page, 0xa5, 32);
			memset(now + p * t_page, 0xa5, 32);
			n++;
		}
	}
	for (size_t p = np / 2; p < np; p += 7, n++) {
		addr[p * t_page + 11] ^= 0x3c;
		now[p * t_page + 11] ^= 0x3c;
	}
	ck_assert_int_eq(pipe(pfd), 0);
	ck_assert_int_eq(write(pfd[1], "kernel-mode write", 17), 17);
	ck_assert_int_eq(read(pfd[0], addr + (np - 2) * t_page + 5, 17), 17);
	memcpy(now + (np - 2) * t_page + 5, "kernel-mode write", 17);
	close(pfd[0]);
	close(pfd[1]);
	return n + 1;
}

/*
 * Which path protects the never-touched pages not copied yet (the second
 * half; the sweep is held in the first): with UFFD_FEATURE_WP_UNPOPULATED
 * (6.4+) a marker, and the page stays unmapped; without it begin has mapped
 * the zero page there (MADV_POPULATE_READ). write_after() then checks that
 * they are protected, and the snapshot that they read as zeros.
 */
static void untouched_path(struct setup *t, uint8_t *addr, size_t len, const uint8_t *untouched)
{
	size_t np = len / t_page, n = 0, present = 0;
	bool unpop = uffdsnap_features(t->ctx) & UFFD_FEATURE_WP_UNPOPULATED;

	for (size_t p = np / 2; p < np; p++) {
		if (!untouched[p])
			continue;
		n++;
		present += !!(t_pagemap_entry(addr + p * t_page) & T_PM_PRESENT);
	}
	printf("private_anon_exact: %s: %zu of %zu never-touched pages not copied yet are mapped after begin\n",
	       unpop ? "UFFD_FEATURE_WP_UNPOPULATED" : "no UFFD_FEATURE_WP_UNPOPULATED (as before 6.4)", present, n);
#ifdef USNAP_TEST_NO_WP_UNPOPULATED
	ck_assert_msg(!unpop, "the context has UFFD_FEATURE_WP_UNPOPULATED although UFFDIO_API hid it");
#endif
	ck_assert_msg(unpop ? present == 0 : present == n, "%zu of %zu never-touched pages mapped", present, n);
}

START_TEST(private_anon_exact)
{
	/* 32 MiB under a sanitizer (as private_file_exact everywhere), 16 under
	 * TSan: the time is the slowed sink writing what the writes fault in,
	 * the second half */
	const size_t len = T_TSAN ? 16 * MiB : T_SANITIZED ? 32 * MiB : 64 * MiB, np = len / t_page;
	uint8_t *addr, *ref, *now, *untouched = calloc(np, 1);
	uffdsnap_stats_t st;
	struct setup t;
	unsigned n;
	int r;

	t_watchdog(90, "private_anon_exact");
	addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(addr != MAP_FAILED && untouched);
	/* 4 KiB pages whatever the THP setting: the writes below count on 64 KiB
	 * fault windows (huge pages are private_thp_stays_huge's) */
	ck_assert_int_eq(madvise(addr, len, MADV_NOHUGEPAGE), 0);
	for (size_t p = 0; p < np; p++) {
		if (p % 5 == 3)
			untouched[p] = 1; /* never touched: no page, no PTE */
		else
			t_fill_page(addr + p * t_page, 17, p);
	}
	/* the copy leaves never-touched pages alone (zeros): a read would map
	 * the zero page there, and nothing would be left for a marker */
	ref = t_buf_alloc(len);
	for (size_t p = 0; p < np; p++)
		if (!untouched[p])
			memcpy(ref + p * t_page, addr + p * t_page, t_page);
	now = t_copy(ref, len);
	begin_held(&t, addr, len);
	untouched_path(&t, addr, len, untouched);
	n = write_after(addr, now, len, untouched);
	atomic_store(&t.cb.sleep_us, 0);
	r = uffdsnap_wait(t.s);
	t_stats(t.s, &st);
	t_stats_print("private anon", &st);
	printf("private_anon_exact: %u writes after the instant, %llu pages copied for writers\n", n,
	       (unsigned long long)st.pages_fault);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t.s));
	t_assert_exactly_once(&st);
	ck_assert_uint_gt(st.pages_fault, np / 2 / 7 / 2);
	ck_assert_int_eq(t_pagemap_protected(addr, len), 0);
	{
		struct t_expect ex = { "heap", ref, len };
		t_check_buffer(t.cb.mem, t.cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(addr, now, len), 0);
	end(&t);
	t_buf_free(ref, len);
	t_buf_free(now, len);
	munmap(addr, len);
	free(untouched);
}
END_TEST

/* Writes to every 97th page of the second half (remembered in `now`) while
 * the sweep is held, then let it go and wait: the snapshot's result. */
static int write_and_wait(struct setup *t, uint8_t *addr, uint8_t *now, size_t np, uffdsnap_stats_t *st,
			  const char *label)
{
	int r;

	for (size_t p = np / 2 + 3; p < np; p += 97) {
		addr[p * t_page + 9] ^= 0x5a;
		now[p * t_page + 9] ^= 0x5a;
	}
	atomic_store(&t->cb.sleep_us, 0);
	r = uffdsnap_wait(t->s);
	t_stats(t->s, st);
	t_stats_print(label, st);
	return r;
}

/* kB of a field ("AnonHugePages:", "ShmemPmdMapped:") of the mapping that holds addr (smaps). */
static long smaps_kib(const void *addr, const char *field)
{
	char line[512];
	uintptr_t a = (uintptr_t)addr, lo, hi;
	size_t flen = strlen(field);
	long kib = -1;
	bool in = false;
	FILE *f = fopen("/proc/self/smaps", "re");

	ck_assert(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a >= lo && a < hi;
		else if (in && !strncmp(line, field, flen) && sscanf(line + flen, "%ld kB", &kib) == 1)
			break;
	}
	fclose(f);
	return kib;
}

/*
 * Transparent huge pages (what a VMM's guest memory usually is): copied and
 * un-protected a huge page at a time, so a write fault does not split the
 * huge page it lands in (an un-protect of 64 KiB inside it would), and the
 * program keeps its huge pages after the snapshot.
 */
START_TEST(private_thp_stays_huge)
{
	const size_t len = 64 * MiB, huge = 2 * MiB, np = len / t_page;
	uint8_t *raw, *addr, *ref, *now;
	uffdsnap_stats_t st;
	struct setup t;
	long before, after;
	int r;

	t_watchdog(90, "private_thp_stays_huge");
	raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(raw != MAP_FAILED);
	addr = (uint8_t *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(addr, len, MADV_HUGEPAGE)) {
		t_skip("private_thp_stays_huge", "MADV_HUGEPAGE: %s", strerror(errno));
		munmap(raw, len + huge);
		return;
	}
	for (size_t p = 0; p < np; p++)
		t_fill_page(addr + p * t_page, 29, p);
	before = smaps_kib(addr, "AnonHugePages:");
	if (before < (long)(len / 2 / 1024)) {
		/* THP off, or no huge page to be had: nothing to prove */
		t_skip("private_thp_stays_huge", "only %ld kB of huge pages (THP disabled or memory fragmented)",
			   before);
		munmap(raw, len + huge);
		return;
	}
	ref = t_copy(addr, len);
	now = t_copy(ref, len);
	begin_held(&t, addr, len);
	r = write_and_wait(&t, addr, now, np, &st, "private thp");
	after = smaps_kib(addr, "AnonHugePages:");
	printf("private_thp_stays_huge: AnonHugePages %ld kB before, %ld kB after; %llu faults, %llu pages copied "
	       "for writers\n", before, after, (unsigned long long)st.faults, (unsigned long long)st.pages_fault);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t.s));
	t_assert_exactly_once(&st);
	ck_assert_uint_gt(st.pages_fault, 0);
	{
		struct t_expect ex = { "heap", ref, len };
		t_check_buffer(t.cb.mem, t.cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(addr, now, len), 0);
	ck_assert_msg(after >= before * 9 / 10, "huge pages split by the snapshot: %ld kB before, %ld kB after",
		      before, after);
	end(&t);
	t_buf_free(ref, len);
	t_buf_free(now, len);
	munmap(raw, len + huge);
}
END_TEST

#define SHMEM_THP_KNOB "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

/*
 * Shmem transparent huge pages (issue 17, goal 10): write-protecting shmem
 * splits its PMD mappings, so without more the program would map its huge
 * pages with 4 KiB PTEs for the rest of its life. After the snapshot the
 * library maps them by PMD again (MADV_COLLAPSE once unregistered): the
 * mapping's ShmemPmdMapped comes back, and the snapshot is exact. Needs
 * shmem THP: the knob is set to "advise" if it is "never" (and put back),
 * and the region asks with MADV_HUGEPAGE.
 */
START_TEST(shmem_thp_huge_again)
{
	const size_t len = (T_SANITIZED ? 16 : 64) * MiB, huge = 2 * MiB, np = len / t_page;
	char knob[128] = "";
	uint8_t *raw, *addr, *ref, *now;
	uffdsnap_stats_t st;
	struct setup t;
	long before, during, after;
	int fd, r;
	FILE *f = fopen(SHMEM_THP_KNOB, "re");

	t_watchdog(90, "shmem_thp_huge_again");
	if (!f || !fgets(knob, sizeof(knob), f)) {
		t_skip("shmem_thp_huge_again", "no %s: kernel without transparent huge pages", SHMEM_THP_KNOB);
		if (f)
			fclose(f);
		return;
	}
	fclose(f);
	/* put back at the end of this case, or by t_knob_set's guards if it dies */
	if ((strstr(knob, "[never]") || strstr(knob, "[deny]")) &&
	    (getuid() || t_knob_set(SHMEM_THP_KNOB, "advise"))) {
		t_skip("shmem_thp_huge_again", "shmem THP is off (%.*s) and cannot be set to advise",
		       (int)strcspn(knob, "\n"), knob);
		return;
	}
	fd = memfd_create("thp", MFD_CLOEXEC);
	ck_assert(fd >= 0 && !ftruncate(fd, (off_t)len));
	raw = mmap(NULL, len + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(raw != MAP_FAILED);
	addr = (uint8_t *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	ck_assert(mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == addr);
	ck_assert_int_eq(madvise(addr, len, MADV_HUGEPAGE), 0);
	t_fill_random(addr, len, 41);
	before = smaps_kib(addr, "ShmemPmdMapped:");
	if (before < (long)(len / 2 / 1024)) {
		t_skip("shmem_thp_huge_again", "only %ld kB mapped by PMD (no huge page to be had)", before);
		goto out;
	}
	ref = t_copy(addr, len);
	now = t_copy(ref, len);
	begin_held(&t, addr, len);
	during = smaps_kib(addr, "ShmemPmdMapped:");
	r = write_and_wait(&t, addr, now, np, &st, "shmem thp");
	after = smaps_kib(addr, "ShmemPmdMapped:");
	printf("shmem_thp_huge_again: ShmemPmdMapped %ld kB before, %ld kB while protected, %ld kB after; "
	       "%llu pages mapped huge again\n", before, during, after, (unsigned long long)st.pages_huge_remapped);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t.s));
	t_assert_exactly_once(&st);
	{
		struct t_expect ex = { "heap", ref, len };
		t_check_buffer(t.cb.mem, t.cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(addr, now, len), 0);
	/* the event this test is about: protecting split the mappings */
	ck_assert_msg(during < before, "protecting did not split the PMD mappings (%ld kB before, %ld kB during): "
		      "nothing to prove", before, during);
	ck_assert_msg(after >= before, "huge mappings not re-established: %ld kB before, %ld kB after", before,
		      after);
	ck_assert_uint_ge(st.pages_huge_remapped * t_page / 1024, (uint64_t)before);
	end(&t);
	t_buf_free(ref, len);
	t_buf_free(now, len);
out:
	munmap(raw, len + huge);
	close(fd);
	t_knob_restore();
}
END_TEST

START_TEST(private_file_exact)
{
	const size_t len = 32 * MiB, np = len / t_page;
	uint8_t *addr, *ref, *now, *untouched = calloc(np, 1);
	uffdsnap_stats_t st;
	struct t_mem m;
	struct setup t;
	int r;

	t_watchdog(90, "private_file_exact");
	t_memfd(&m, len);
	t_fill_random(m.addr, len, 23);
	addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, m.fd, 0);
	ck_assert(addr != MAP_FAILED && untouched);
	/* some pages copied-on-write before the instant, the rest still the file's */
	for (size_t p = 0; p < np; p += 2)
		addr[p * t_page] ^= 0xff;
	for (size_t p = 1; p < np; p += 2)
		untouched[p] = 0; /* file pages are populated: no marker needed */
	ref = t_copy(addr, len);
	now = t_copy(ref, len);
	begin_held(&t, addr, len);
	write_after(addr, now, len, untouched);
	atomic_store(&t.cb.sleep_us, 0);
	r = uffdsnap_wait(t.s);
	t_stats(t.s, &st);
	t_stats_print("private file", &st);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t.s));
	t_assert_exactly_once(&st);
	ck_assert_uint_gt(st.pages_fault, 0);
	ck_assert_int_eq(t_pagemap_protected(addr, len), 0);
	{
		struct t_expect ex = { "heap", ref, len };
		t_check_buffer(t.cb.mem, t.cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(addr, now, len), 0);
	end(&t);
	t_buf_free(ref, len);
	t_buf_free(now, len);
	munmap(addr, len);
	t_mem_free(&m);
	free(untouched);
}
END_TEST

START_TEST(private_dontneed)
{
	const size_t len = 64 * MiB, np = len / t_page;
	uint8_t *addr, *ref;
	struct setup t;
	int r;

	t_watchdog(90, "private_dontneed");
	addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(addr != MAP_FAILED);
	t_fill_random(addr, len, 29);
	ref = t_copy(addr, len);

	/* a copied page may be discarded: the snapshot already holds it */
	begin_held(&t, addr, len);
	addr[(np - 10) * t_page] ^= 1; /* the write fault copies the page first */
	ck_assert_int_eq(madvise(addr + (np - 10) * t_page, t_page, MADV_DONTNEED), 0);
	atomic_store(&t.cb.sleep_us, 0);
	r = uffdsnap_wait(t.s);
	printf("private_dontneed: after a copied page was discarded: wait %d\n", r);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(t.s));
	{
		struct t_expect ex = { "heap", ref, len };
		t_check_buffer(t.cb.mem, t.cb.mem_len, &ex, 1);
	}
	end(&t);

	/* a page not copied yet cannot be: the snapshot fails and says where */
	begin_held(&t, addr, len);
	ck_assert_int_eq(madvise(addr + (np - 3) * t_page, t_page, MADV_DONTNEED), 0);
	atomic_store(&t.cb.sleep_us, 0);
	r = uffdsnap_wait(t.s);
	printf("private_dontneed: after an uncopied page was discarded: wait %d, \"%s\"\n", r,
	       uffdsnap_snap_error(t.s));
	ck_assert_int_eq(r, -ESTALE);
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(t.s), "region 'heap'"));
	ck_assert_ptr_nonnull(strstr(uffdsnap_snap_error(t.s), "0x3ffd000"));
	ck_assert_int_eq(t_pagemap_protected(addr, len), 0);
	addr[5] = 1; /* the program goes on */
	end(&t);
	t_buf_free(ref, len);
	munmap(addr, len);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("private");
	TCase *tc = tcase_create("private"), *tt = tcase_create("thp"), *ta = tcase_create("anon");

	t_test_require_uffd();
#ifdef USNAP_TEST_NO_WP_UNPOPULATED
	usnap_inject_hide_features(UFFD_FEATURE_WP_UNPOPULATED);
#endif
	tcase_set_timeout(ta, 120); /* the case test-private-nounpop runs */
	tcase_add_test(ta, private_anon_exact);
	suite_add_tcase(s, ta);
	tcase_set_tags(tt, "thp"); /* skips without huge pages: meson test private-thp */
	tcase_set_timeout(tt, 120);
	tcase_add_test(tt, private_thp_stays_huge);
	tcase_add_test(tt, shmem_thp_huge_again);
	suite_add_tcase(s, tt);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, private_file_exact);
	tcase_add_test(tc, private_dontneed);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
