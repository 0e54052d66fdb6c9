/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The tool's restore, diff, cat and info subcommands, run as a user would run
 * them (the uffdsnap binary next to this test in the build tree): exit codes
 * (diff: 3 when different, 1 when a file cannot be read; cat: 2 out of range),
 * the pages and ranges diff reports, bytes restored and printed, and names
 * from a hostile file escaped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (4 * MiB)

static char tool[PATH_MAX];
static char dir[PATH_MAX];
static char snap_a[PATH_MAX + 8], snap_b[PATH_MAX + 8];
static struct t_mem mem;
static uint8_t *want_b;

/* Run a shell command; returns its exit status and its stdout in out (cap bytes). */
static int run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t cap, const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	size_t n = 0;
	va_list ap;
	FILE *p;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	p = popen(cmd, "r");
	ck_assert_msg(p, "popen %s: %s", cmd, strerror(errno));
	while (n + 1 < cap && !feof(p)) {
		size_t k = fread(out + n, 1, cap - 1 - n, p);
		if (!k)
			break;
		n += k;
	}
	out[n] = '\0';
	st = pclose(p);
	ck_assert_msg(WIFEXITED(st), "%s: did not exit (status 0x%x)", cmd, st);
	printf("  $ %s -> exit %d\n%s", cmd, WEXITSTATUS(st), out);
	return WEXITSTATUS(st);
}

/* A: mixed contents; B: pages 3, 10..12 and 700 changed, and one hole filled. */
static void setup(void)
{
	uffdsnap_t *ctx;

	t_memfd(&mem, LEN);
	t_fill_mixed(mem.addr, LEN, 5, 9, 4);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "pool", mem.addr, LEN);
	t_tmpdir(dir);
	snprintf(snap_a, sizeof(snap_a), "%s/a", dir);
	snprintf(snap_b, sizeof(snap_b), "%s/b", dir);
	t_snap_file(ctx, snap_a, NULL);
	mem.addr[3 * t_page + 17] ^= 1;
	memset(mem.addr + 10 * t_page, 0x5a, 3 * t_page);
	mem.addr[700 * t_page] ^= 0xff;
	mem.addr[1 * t_page] = 1; /* page 1 was a hole */
	t_snap_file(ctx, snap_b, NULL);
	want_b = t_mem_copy(&mem);
	uffdsnap_free(ctx);
}

static void cleanup(void)
{
	t_buf_free(want_b, LEN);
	t_mem_free(&mem);
	t_rmdir(dir);
}

START_TEST(diff_reports_pages)
{
	char out[8192];

	t_watchdog(60, "diff_reports_pages");
	setup();
	ck_assert_int_eq(run(out, sizeof(out), "%s diff %s %s", tool, snap_a, snap_a), 0);
	ck_assert(strstr(out, "region 'pool': identical (1024 pages)"));
	ck_assert_int_eq(run(out, sizeof(out), "%s diff %s %s", tool, snap_a, snap_b), 3);
	ck_assert(strstr(out, "region 'pool': 1, 3, 10-12, 700\n"));
	ck_assert(strstr(out, "6 of 1024 pages differ, in 4 ranges"));
	ck_assert_int_eq(run(out, sizeof(out), "%s diff %s /nonexistent 2>&1", tool, snap_a), 1);
	cleanup();
}
END_TEST

START_TEST(restore_to_file)
{
	char out[4096], path[PATH_MAX + 16];
	uint8_t *got = t_buf_alloc(LEN);
	struct stat sb;
	int fd;

	t_watchdog(60, "restore_to_file");
	setup();
	snprintf(path, sizeof(path), "/dev/shm/usnap-tool-%d", getpid());
	ck_assert_int_eq(run(out, sizeof(out), "%s restore %s --region pool --to %s --threads 2", tool, snap_b, path),
			 0);
	ck_assert(strstr(out, "restored") && strstr(out, "GB/s"));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert(fd >= 0);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	ck_assert_int_eq(pread(fd, got, LEN, 0), (ssize_t)LEN);
	ck_assert(!memcmp(got, want_b, LEN));
	/* fill_mixed left pages 1, 10, 19, ... as holes; B wrote 1 and 10 only */
	ck_assert_int_ne(lseek(fd, 19 * t_page, SEEK_DATA), 19 * (off_t)t_page);
	ck_assert_int_lt((long long)sb.st_blocks * 512, LEN);
	close(fd);
	unlink(path);
	ck_assert_int_eq(run(out, sizeof(out), "%s restore %s --region nope --to %s 2>&1", tool, snap_b, path), 1);
	ck_assert_int_eq(run(out, sizeof(out), "%s restore %s --to %s 2>/dev/null", tool, snap_b, path), 2);
	ck_assert_int_eq(access(path, F_OK), -1);
	t_buf_free(got, LEN);
	cleanup();
}
END_TEST

START_TEST(cat_bytes_and_hex)
{
	char out[8192], want[128];
	size_t off = 10 * t_page - 8;

	t_watchdog(60, "cat_bytes_and_hex");
	setup();
	ck_assert_int_eq(run(out, sizeof(out), "%s cat %s pool %zu 16 | od -An -tx1 -v | tr -d ' \\n'; echo", tool,
			     snap_b, off), 0);
	for (int i = 0; i < 16; i++)
		snprintf(want + 2 * i, 3, "%02x", want_b[off + (size_t)i]);
	ck_assert_msg(!strncmp(out, want, 32), "cat printed %s, the region holds %s", out, want);
	ck_assert_int_eq(run(out, sizeof(out), "%s cat -x %s pool 0x%zx 24", tool, snap_b, off), 0);
	ck_assert(!strncmp(out, "00009ff8 ", 9));
	ck_assert(strstr(out, "5a 5a 5a 5a 5a 5a 5a 5a") && strstr(out, "|ZZZZZZZZ"));
	ck_assert(strstr(out, "\n0000a010\n"));
	ck_assert_int_eq(run(out, sizeof(out), "%s cat %s pool %zu 2 2>&1", tool, snap_b, (size_t)LEN - 1), 2);
	cleanup();
}
END_TEST

/* A region name may hold any byte but NUL: one that clears the screen, a
 * backslash and a C1 control (CSI as UTF-8) must reach the terminal escaped,
 * from every subcommand that prints a name from the file. */
START_TEST(hostile_name_escaped)
{
	static const char name[] = "evil\x1b[2J\\\xc2\x9b" "end";
	static const char shown[] = "evil\\x1b[2J\\\\\\xc2\\x9bend";
	char out[8192], evil[PATH_MAX + 8];
	struct t_mem m2;
	uffdsnap_t *ctx;

	t_watchdog(60, "hostile_name_escaped");
	setup();
	t_memfd(&m2, 16 * t_page);
	ctx = t_ctx_new(NULL);
	t_add(ctx, name, m2.addr, m2.len);
	snprintf(evil, sizeof(evil), "%s/evil", dir);
	t_snap_file(ctx, evil, NULL);
	uffdsnap_free(ctx);

	ck_assert_int_eq(run(out, sizeof(out), "%s info %s 2>&1", tool, evil), 0);
	ck_assert_msg(strstr(out, shown) && !strchr(out, 0x1b), "info printed the name unescaped");
	ck_assert_int_eq(run(out, sizeof(out), "%s diff %s %s 2>&1", tool, evil, snap_a), 3);
	ck_assert(strstr(out, "region '") && strstr(out, shown) && !strchr(out, 0x1b));
	ck_assert(strstr(out, "region 'pool': only in"));
	/* a name given on the command line is quoted back the same way */
	ck_assert_int_eq(run(out, sizeof(out), "%s cat %s \"$(printf 'x\\033[2J')\" 0 1 2>&1", tool, snap_a), 1);
	ck_assert(strstr(out, "no region 'x\\x1b[2J'") && !strchr(out, 0x1b));
	/* the name still works as an argument, raw; the library's messages
	 * quote it escaped (by the library: bytes outside printable ASCII) */
	ck_assert_int_eq(run(out, sizeof(out), "%s cat -x %s \"$(printf 'evil\\033[2J\\\\\\302\\233end')\" 0 16 "
			     "2>&1", tool, evil), 0);
	ck_assert_int_eq(run(out, sizeof(out), "%s cat %s 0 0 999999 2>&1", tool, evil), 2);
	ck_assert_msg(strstr(out, "past the end of region 'evil\\x1b[2J") && !strchr(out, 0x1b), "%s", out);
	t_mem_free(&m2);
	cleanup();
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	t_test_require_uffd();
	t_find_tool(tool);
	s = suite_create("restore-tool");
	tc = tcase_create("tool");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, diff_reports_pages);
	tcase_add_test(tc, restore_to_file);
	tcase_add_test(tc, cat_bytes_and_hex);
	tcase_add_test(tc, hostile_name_escaped);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
