/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * hugetlbfs regions (memfd_create(MFD_HUGETLB), MAP_SHARED): protected,
 * copied and un-protected in whole huge pages. The test reserves huge pages
 * through /proc/sys/vm/nr_hugepages and gives them back at exit; without root
 * or free memory for them it skips. Writers hit copied and not-yet-copied
 * huge pages and never-touched ones (which only markers protect); the
 * snapshot must equal the instant and no page may stay protected. Lazy
 * restore into fresh huge pages, in-process and through a page server in
 * another process, gives the snapshot back byte-exact.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define HPAGE (2 * MiB)
#define RESERVE 600 /* huge pages: a 1 GiB region and a small one */

static long read_nr(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static uint8_t *huge_memfd(int *fd, size_t len)
{
	uint8_t *a;

	*fd = memfd_create("usnap-hugetlb", MFD_CLOEXEC | MFD_HUGETLB);
	ck_assert_msg(*fd >= 0, "memfd_create(MFD_HUGETLB): %s", strerror(errno));
	ck_assert_int_eq(ftruncate(*fd, (off_t)len), 0);
	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	ck_assert_msg(a != MAP_FAILED, "mmap hugetlb: %s", strerror(errno));
	return a;
}

START_TEST(hugetlb_exact)
{
	/* 32 MiB under a sanitizer (16 under TSan): the time is the slowed sink
	 * writing the huge pages the writes fault in (2 MiB each) */
	const size_t len = T_TSAN ? 16 * MiB : T_SANITIZED ? 32 * MiB : 64 * MiB, nh = len / HPAGE, pph = HPAGE / t_page;
	struct t_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_stats_t st;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	uint8_t *a, *ref, *now;
	unsigned writes = 0, holes = 0;
	int fd, r;

	t_watchdog(120, "hugetlb_exact");
	a = huge_memfd(&fd, len);
	/* every third huge page never touched: a hole in the file */
	for (size_t h = 0; h < nh; h++)
		if (h % 3 != 1)
			t_fill_random(a + h * HPAGE, HPAGE, 40 + h);
	ref = t_buf_alloc(len);
	ck_assert(pread(fd, ref, len, 0) == (ssize_t)len); /* reading through the mapping would fill the holes */
	now = t_copy(ref, len);
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB; /* two huge pages: a fault must span several chunks */
	ctx = t_ctx_new(&o);
	t_add(ctx, "huge", a, len);
	s = t_begin_stalled(ctx, &cb, 20000);
	ck_assert_int_eq(t_pagemap_protected(a + len - HPAGE, HPAGE), (long)pph); /* not copied yet */
	/* the second half: not copied yet; holes and data */
	for (size_t h = nh / 2; h < nh; h++, writes++) {
		size_t off = h * HPAGE + (h * 7919 % pph) * t_page + 13;
		holes += h % 3 == 1;
		a[off] ^= 0x5a;
		now[off] ^= 0x5a;
	}
	atomic_store(&cb.sleep_us, 0);
	r = uffdsnap_wait(s);
	t_stats(s, &st);
	t_stats_print("hugetlb", &st);
	printf("hugetlb_exact: %zu huge pages (%zu never touched), %u writes after the instant (%u into holes), "
	       "%" PRIu64 " faults, %" PRIu64 " pages copied for writers, begin %.3f ms\n", nh, (nh + 1) / 3, writes,
	       holes, st.faults, st.pages_fault, st.begin_ns / 1e6);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	t_assert_exactly_once(&st);
	ck_assert_uint_ge(st.pages_fault, (uint64_t)pph); /* a fault copies its whole huge page */
	ck_assert_int_eq(t_pagemap_protected(a, len), 0);
	{
		struct t_expect ex = { "huge", ref, len };
		t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	ck_assert_int_eq(memcmp(a, now, len), 0);

	/* and back: restore the snapshot into the same huge pages */
	{
		uffdsnap_restore_stats_t rst = { .size = sizeof(rst) };
		uffdsnap_reader_t *rd;
		FILE *f = tmpfile();
		ck_assert(f && fwrite(cb.mem, 1, cb.mem_len, f) == cb.mem_len && fflush(f) == 0);
		ck_assert_int_eq(uffdsnap_reader_open_fd(&rd, fileno(f)), 0);
		r = uffdsnap_restore_ctx(rd, ctx, NULL, &rst);
		ck_assert_msg(r == 0, "restore_ctx into hugetlb: %d (%s)", r, uffdsnap_last_error());
		ck_assert_msg(memcmp(a, ref, len) == 0, "the restored huge pages differ from the instant");
		printf("hugetlb_exact: restored into the huge pages: %" PRIu64 " data + %" PRIu64 " zero pages\n",
		       rst.pages_data, rst.pages_zero);
		uffdsnap_reader_free(rd);
		fclose(f);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_buf_free(now, len);
	munmap(a, len);
	close(fd);
}
END_TEST

/* The pause for 1 GiB of huge pages: one ioctl per region, 512 huge PTEs.
 * Under a sanitizer, whose pause says nothing, 256 MiB take the same path
 * (the time there is copying the whole region through the library). */
START_TEST(hugetlb_begin_1g)
{
	const size_t len = T_TSAN ? 128 * MiB : T_SANITIZED ? 256 * MiB : 1 * GiB;
	struct t_cb cb;
	uffdsnap_stats_t st;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	uint8_t *a;
	int fd, r;

	t_watchdog(120, "hugetlb_begin_1g");
	a = huge_memfd(&fd, len);
	for (size_t off = 0; off < len; off += t_page)
		a[off] = (uint8_t)(off >> 12);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "huge", a, len);
	t_cb_init(&cb, -1); /* a sink that drops the bytes */
	r = uffdsnap_begin(ctx, t_cb_sink(&cb), &s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	a[len - 1] ^= 1; /* a write fault */
	ck_assert_int_eq(uffdsnap_wait(s), 0);
	t_stats(s, &st);
	printf("hugetlb_begin_1g: begin (protect %zu huge pages) %.3f ms; snapshot %.1f ms, %" PRIu64 " faults\n",
	       len / HPAGE, st.begin_ns / 1e6, st.elapsed_ns / 1e6, st.faults);
	ck_assert_int_eq(t_pagemap_protected(a, len), 0);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	munmap(a, len);
	close(fd);
}
END_TEST

START_TEST(hugetlb_refused)
{
	uffdsnap_t *ctx = t_ctx_new(NULL);
	uint8_t *a;
	int fd, r;

	a = huge_memfd(&fd, 4 * MiB);
	r = uffdsnap_add_region(ctx, "half", a, HPAGE / 2);
	printf("hugetlb_refused: half a huge page: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EINVAL);
	munmap(a, 4 * MiB);
	a = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ck_assert(a != MAP_FAILED);
	r = uffdsnap_add_region(ctx, "private", a, 4 * MiB);
	printf("hugetlb_refused: MAP_PRIVATE: %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EMEDIUMTYPE);
	munmap(a, 4 * MiB);
	close(fd);
	uffdsnap_free(ctx);
}
END_TEST

static void print_lazy(const char *what, const uffdsnap_lazy_stats_t *st)
{
	printf("hugetlb_lazy: %s: resident after %.1f ms; %" PRIu64 " faults; data pages by fault %" PRIu64
	       ", by prefetch %" PRIu64 "; zero pages placed for faults %" PRIu64 "; chunks loaded for faults %" PRIu64
	       ", by prefetch %" PRIu64 "\n", what, st->resident_ns / 1e6, st->faults, st->pages_fault,
	       st->pages_prefetch, st->pages_zero_fault, st->chunks_fault, st->chunks_prefetch);
}

/* Touch n random pages of a (each page checked against ref), then wait for
 * the rest: wait is a lazy or a client wait. */
static void touch_random(const uint8_t *a, const uint8_t *ref, size_t len, unsigned n, uint64_t seed)
{
	for (unsigned i = 0; i < n; i++) {
		size_t p = t_splitmix64(&seed) % (len / t_page);
		t_assert_msg(!memcmp(a + p * t_page, ref + p * t_page, t_page), "page %zu differs", p);
	}
}

/* In a child: lazily restore path's "huge" (len bytes) into fresh huge pages
 * and touch page bad, whose chunk does not load: SIGBUS must end it, for
 * the fault itself (faults only) or, after wait() returned the failure, for
 * the huge page left poisoned. */
static void huge_touch_lost(const char *path, size_t len, size_t bad, bool after_wait)
{
	uffdsnap_lazy_region_t reg = { .name = "huge", .len = len };
	uffdsnap_lazy_opts_t o;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	int fd;

	t_sigbus_child();
	uffdsnap_lazy_opts_init(&o);
	o.flags = after_wait ? 0 : UFFDSNAP_LAZY_NO_PREFETCH;
	reg.addr = huge_memfd(&fd, len);
	if (uffdsnap_reader_open(&r, path) || uffdsnap_lazy_start(&lz, r, &reg, 1, &o))
		_exit(10);
	if (after_wait && !uffdsnap_lazy_wait(lz))
		_exit(11);
	(void)*(volatile uint8_t *)((uint8_t *)reg.addr + bad * t_page + 8);
	_exit(13);
}

/*
 * Lazy restore into hugetlbfs: every huge page arrives whole (UFFDIO_COPY
 * takes nothing less there), gathered from the several chunks that record
 * it. Huge pages of data, of data and zero pages, and never touched (zero
 * in the snapshot); faults only, then with the prefetcher, then through a
 * page server in a child process. Then a corrupt chunk: a thread touching
 * its huge page gets SIGBUS (the whole huge page is poisoned).
 */
START_TEST(hugetlb_lazy)
{
	const size_t len = 32 * MiB, nh = len / HPAGE;
	uffdsnap_info_t info = { .size = sizeof(info) };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_region_t reg = { .name = "huge", .len = len };
	uffdsnap_lazy_stats_t st = { .size = sizeof(st) };
	uffdsnap_lazy_opts_t o;
	uffdsnap_lazy_client_t *c;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;
	uffdsnap_t *ctx;
	char dir[PATH_MAX], path[PATH_MAX + 16];
	uint64_t data_pages;
	uint8_t *a, *ref;
	int fd, rc, ls, status;
	pid_t server;

	t_watchdog(60, "hugetlb_lazy");
	a = huge_memfd(&fd, len);
	for (size_t h = 0; h < nh; h++)
		if (h % 4) /* 0: a hole; 2: data, then zero pages */
			t_fill_random(a + h * HPAGE, h % 4 == 2 ? HPAGE / 3 : HPAGE, 60 + h);
	ref = t_buf_alloc(len);
	ck_assert(pread(fd, ref, len, 0) == (ssize_t)len);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "huge", a, len);
	t_snap_file(ctx, path, NULL);
	uffdsnap_free(ctx);
	munmap(a, len);
	close(fd);
	r = t_reader(path);
	uffdsnap_reader_info(r, &info);
	data_pages = len / t_page - info.pages_zero;
	printf("hugetlb_lazy: the snapshot has %" PRIu64 " chunks\n", info.chunks);

	for (int prefetch = 0; prefetch <= 1; prefetch++) {
		a = huge_memfd(&fd, len);
		reg.addr = a;
		uffdsnap_lazy_opts_init(&o);
		o.flags = prefetch ? 0 : UFFDSNAP_LAZY_NO_PREFETCH;
		rc = uffdsnap_lazy_start(&lz, r, &reg, 1, &o);
		ck_assert_msg(rc == 0, "lazy_start into hugetlb: %d %s", rc, uffdsnap_last_error());
		touch_random(a, ref, len, 200, 7 + (uint64_t)prefetch);
		rc = uffdsnap_lazy_wait(lz);
		ck_assert_msg(rc == 0, "lazy_wait: %d %s", rc, uffdsnap_lazy_error(lz));
		ck_assert_int_eq(uffdsnap_lazy_stats(lz, &st), 0);
		print_lazy(prefetch ? "in-process, with prefetch" : "in-process, faults only", &st);
		ck_assert_uint_eq(st.pages_fault + st.pages_prefetch, data_pages);
		/* huge pages are claimed like chunks, and a huge page of zero pages
		 * is not loaded again when touched: each chunk of this file (none
		 * spans two huge pages) is loaded once */
		ck_assert_uint_le(st.chunks_fault + st.chunks_prefetch, info.chunks);
		ck_assert_msg(!memcmp(a, ref, len), "the lazily restored huge pages differ from the snapshot");
		uffdsnap_lazy_free(lz);
		munmap(a, len);
		close(fd);
	}

	/* across processes: the huge page size travels with the region table */
	ck_assert(strlen(dir) + sizeof("/sock") <= sizeof(sa.sun_path));
	strcat(strcpy(sa.sun_path, dir), "/sock");
	ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(ls >= 0 && !bind(ls, (struct sockaddr *)&sa, sizeof(sa)) && !listen(ls, 1));
	server = fork();
	ck_assert(server >= 0);
	if (server == 0) {
		int conn = accept(ls, NULL, NULL);

		alarm(30);
		_exit(conn < 0 || uffdsnap_serve_conn(r, conn, NULL) ? 1 : 0);
	}
	close(ls);
	a = huge_memfd(&fd, len);
	reg.addr = a;
	rc = uffdsnap_lazy_connect(&c, sa.sun_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect into hugetlb: %d %s", rc, uffdsnap_last_error());
	touch_random(a, ref, len, 200, 9);
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	ck_assert_int_eq(uffdsnap_lazy_client_stats(c, &st), 0);
	print_lazy("page server", &st);
	ck_assert_uint_eq(st.pages_fault + st.pages_prefetch, data_pages);
	ck_assert_uint_le(st.chunks_fault + st.chunks_prefetch, info.chunks);
	ck_assert_msg(!memcmp(a, ref, len), "the huge pages restored by the page server differ from the snapshot");
	uffdsnap_lazy_client_free(c);
	status = t_wait_child(server, 20, "the page server");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server status 0x%x", status);
	munmap(a, len);
	close(fd);
	uffdsnap_reader_free(r);

	{
		struct t_snapfile f = { .want = ref, .len = len };
		char bad_path[PATH_MAX + 16];
		size_t bad;

		strcpy(f.dir, dir);
		strcpy(f.path, path);
		bad = t_snapfile_flipped(&f, "flipped", bad_path);
		for (int after_wait = 0; after_wait <= 1; after_wait++) {
			pid_t child = fork();

			ck_assert(child >= 0);
			if (child == 0)
				huge_touch_lost(bad_path, len, bad, after_wait);
			status = t_wait_child(child, 20, "the child touching a lost huge page");
			printf("hugetlb_lazy: corrupt chunk, %s: child %s %d\n", after_wait ? "after wait()" : "faults only",
			       WIFSIGNALED(status) ? "killed by signal" : "exited",
			       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
			ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "no SIGBUS for a lost huge page");
		}
	}
	t_buf_free(ref, len);
	t_rmdir(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hugetlb");
	TCase *tc = tcase_create("hugetlb");
	long old_nr, free_before, got;
	char want[32];

	t_test_require_uffd();
	if (geteuid() != 0) {
		printf("SKIP: reserving huge pages (/proc/sys/vm/nr_hugepages) needs root\n");
		return T_SKIP;
	}
	old_nr = read_nr("/proc/sys/vm/nr_hugepages");
	free_before = read_nr("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
	if (old_nr < 0 || free_before < 0) {
		printf("SKIP: no 2 MiB huge pages on this kernel\n");
		return T_SKIP;
	}
	/* put back at exit, on SIGTERM, or by the next test after a SIGKILL */
	snprintf(want, sizeof(want), "%ld", old_nr + RESERVE);
	if (t_knob_set("/proc/sys/vm/nr_hugepages", want) ||
	    (got = read_nr("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")) < free_before + RESERVE) {
		printf("SKIP: could not reserve %d huge pages (memory too fragmented or too small)\n", RESERVE);
		return T_SKIP;
	}
	printf("nr_hugepages %ld -> %ld for the test\n", old_nr, old_nr + RESERVE);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, hugetlb_exact);
	tcase_add_test(tc, hugetlb_begin_1g);
	tcase_add_test(tc, hugetlb_refused);
	tcase_add_test(tc, hugetlb_lazy);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
