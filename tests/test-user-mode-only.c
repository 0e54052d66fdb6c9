/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY, as an unprivileged user (uid 65534 in a
 * forked child; /dev/userfaultfd is root-only and
 * vm.unprivileged_userfaultfd=0 here): without the flag uffdsnap_new fails
 * -EPERM with a helpful message; with it, it succeeds, a plain write to a
 * protected page works (user-mode fault), and a read(2) into a protected page
 * fails with EFAULT instead of waiting.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static int read_int(const char *path)
{
	char buf[32] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC), v = -1;

	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) > 0)
			v = atoi(buf);
		close(fd);
	}
	return v;
}

static void drop_privileges(void)
{
	ck_assert_msg(setgroups(0, NULL) == 0, "setgroups: %s", strerror(errno));
	ck_assert_msg(setresgid(65534, 65534, 65534) == 0, "setresgid: %s", strerror(errno));
	ck_assert_msg(setresuid(65534, 65534, 65534) == 0, "setresuid: %s", strerror(errno));
	/* setresuid clears the dumpable flag, which makes /proc/self root-owned */
	ck_assert(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == 0);
	ck_assert_int_eq(geteuid(), 65534);
}

START_TEST(umo_unprivileged)
{
	const size_t len = 8 * MiB;
	struct t_mem m;
	struct t_cb cb;
	uffdsnap_opts_t o;
	uffdsnap_t *ctx = NULL;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	uint8_t *ref;
	int r, p[2];

	t_watchdog(60, "umo_unprivileged");
	drop_privileges();

	r = uffdsnap_new(&ctx, NULL);
	printf("umo_unprivileged: as uid %u without the flag: %d\n  strerror: %s\n  detail: %s\n", geteuid(), r,
	       uffdsnap_strerror(r), uffdsnap_last_error());
	ck_assert_int_eq(r, -EPERM);
	ck_assert_ptr_null(ctx);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	ck_assert_ptr_nonnull(strstr(uffdsnap_strerror(r), "unprivileged_userfaultfd"));

	uffdsnap_opts_init(&o);
	o.flags = UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY;
	o.buffer_bytes = 4 * MiB;
	r = uffdsnap_new(&ctx, &o);
	ck_assert_msg(r == 0, "with ALLOW_USER_MODE_ONLY: %d %s (%s)", r, uffdsnap_strerror(r), uffdsnap_last_error());

	t_memfd(&m, len);
	t_fill_random(m.addr, len, 101);
	ref = t_copy(m.addr, len);
	r = uffdsnap_add_region(ctx, "umo", m.addr, len);
	ck_assert_msg(r == 0, "add_region as an unprivileged user: %d %s (%s)", r, uffdsnap_strerror(r),
		      uffdsnap_last_error());
	t_cb_init(&cb, -1);
	cb.keep = true;
	t_cb_gate(&cb, true); /* keep pages protected while we probe */
	r = uffdsnap_begin(ctx, t_cb_sink(&cb), &s);
	ck_assert_msg(r == 0, "begin: %d (%s)", r, uffdsnap_last_error());
	ck_assert(t_cb_wait_blocked(&cb, 10));
	usleep(50 * 1000);
	{
		uint8_t *target = m.addr + len - t_page;
		uint8_t data[64];
		ssize_t n;
		ck_assert(t_pagemap_entry(target) & T_PM_WP);
		ck_assert_int_eq(pipe(p), 0);
		memset(data, 0x42, sizeof(data));
		ck_assert_int_eq(write(p[1], data, sizeof(data)), (ssize_t)sizeof(data));
		n = read(p[0], target, sizeof(data));
		printf("umo_unprivileged: read(2) into a protected page -> %zd (%s)\n", n, n < 0 ? strerror(errno) : "ok");
		ck_assert_msg(n == -1 && errno == EFAULT, "read(2) into a protected page in user-mode-only mode: %zd %s",
			      n, strerror(errno));
		ck_assert_int_eq(memcmp(target, ref + len - t_page, t_page), 0);
		close(p[0]);
		close(p[1]);
	}
	t_cb_gate(&cb, false);
	m.addr[len - t_page] = 0x99; /* a plain write: a user-mode fault, handled */
	m.addr[0] ^= 1;
	r = uffdsnap_wait(s);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(s));
	t_stats(s, &st);
	t_stats_print("user-mode-only", &st);
	t_assert_exactly_once(&st);
	ck_assert_int_eq(t_pagemap_protected(m.addr, len), 0);
	ck_assert_int_eq(m.addr[len - t_page], 0x99);
	{
		struct t_expect ex = { "umo", ref, len };
		t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	}
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_buf_free(ref, len);
	t_mem_free(&m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("user-mode-only");
	TCase *tc = tcase_create("user-mode-only");

	t_test_require_uffd();
	t_test_require_root();
	if (read_int("/proc/sys/vm/unprivileged_userfaultfd") != 0) {
		printf("SKIP: vm.unprivileged_userfaultfd is not 0: an unprivileged user gets full userfaultfd\n");
		return T_SKIP;
	}
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, umo_unprivileged);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
