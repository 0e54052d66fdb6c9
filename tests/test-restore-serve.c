/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy restore across processes: the page server as a real second process
 * (the uffdsnap tool's `serve`, or a forked child calling
 * uffdsnap_serve_conn()) restores this process's memory through the
 * userfaultfd it received over a Unix socket. Byte-exact round trip; region
 * mismatches reported by the server; and a server that dies mid-restore: the
 * client thread waiting for a page gets SIGBUS (in a child, under a deadline),
 * never a hang and never silent zeros.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (16 * MiB)

static char tool[PATH_MAX];
static char dir[PATH_MAX];
static char snap_path[PATH_MAX + 16], sock_path[PATH_MAX + 16];
static uint8_t *want;

static void fixture(void)
{
	struct usnap_mem m;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	int rc;

	usnap_memfd(&m, LEN);
	usnap_fill_mixed(m.addr, LEN, 23, 6, 9);
	want = usnap_mem_copy(&m);
	ctx = usnap_ctx_new(NULL);
	usnap_add(ctx, "pool", m.addr, LEN);
	usnap_tmpdir(dir);
	snprintf(snap_path, sizeof(snap_path), "%s/snap", dir);
	snprintf(sock_path, sizeof(sock_path), "%s/sock", dir);
	rc = uffdsnap_begin_file(ctx, snap_path, &s);
	ck_assert_msg(rc == 0, "begin: %d %s", rc, uffdsnap_last_error());
	rc = uffdsnap_wait(s);
	ck_assert_msg(rc == 0, "wait: %d %s", rc, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	usnap_mem_free(&m);
}

static void fixture_free(void)
{
	usnap_buf_free(want, LEN);
	usnap_rmdir(dir);
}

/* `uffdsnap serve` in a child process; returns its pid once the socket exists. */
static pid_t tool_server(const char *extra)
{
	struct stat st;
	pid_t pid = fork();

	ck_assert(pid >= 0);
	if (pid == 0) {
		alarm(60);
		execl(tool, tool, "serve", snap_path, "--socket", sock_path, extra, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && stat(sock_path, &st); i++)
		usleep(10000);
	ck_assert_msg(!stat(sock_path, &st), "the server did not create %s", sock_path);
	return pid;
}

static int wait_exit(pid_t pid, unsigned seconds)
{
	uint64_t t0 = usnap_now_ns();
	int status;

	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (usnap_ms_since(t0) > seconds * 1000.0) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("process %d did not finish within %u s", (int)pid, seconds);
		}
		usleep(2000);
	}
	return status;
}

START_TEST(serve_roundtrip)
{
	uffdsnap_lazy_client_t *c;
	struct usnap_mem dst;
	uffdsnap_lazy_region_t reg;
	uint64_t s = 5, t0;
	pid_t server;
	int rc, status;

	usnap_watchdog(90, "serve_roundtrip");
	fixture();
	server = tool_server("--once");
	usnap_memfd(&dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
	t0 = usnap_now_ns();
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect: %d %s", rc, uffdsnap_last_error());
	printf("  connected to the page server (pid %d) in %.2f ms\n", (int)server, usnap_ms_since(t0));
	/* random touches, then everything, while the server prefetches */
	for (int i = 0; i < 300; i++) {
		size_t p = usnap_splitmix64(&s) % (LEN / usnap_page);
		ck_assert_msg(!memcmp(dst.addr + p * usnap_page, want + p * usnap_page, usnap_page), "page %zu", p);
	}
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	printf("  restored across processes in %.1f ms\n", usnap_ms_since(t0));
	ck_assert(!memcmp(dst.addr, want, LEN));
	uffdsnap_lazy_client_free(c);
	status = wait_exit(server, 20);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server status 0x%x", status);
	usnap_mem_free(&dst);
	fixture_free();
}
END_TEST

START_TEST(serve_mismatch)
{
	uffdsnap_lazy_client_t *c;
	struct usnap_mem dst;
	uffdsnap_lazy_region_t reg;
	pid_t server;
	int rc, status;

	usnap_watchdog(60, "serve_mismatch");
	fixture();
	server = tool_server("--once");
	usnap_memfd(&dst, 2 * LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = 2 * LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	printf("  wrong length: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert(strstr(uffdsnap_last_error(), "page server: region 'pool'"));
	/* the memory is the program's again, unregistered */
	dst.addr[0] = 7;
	ck_assert_int_eq(dst.addr[0], 7);
	status = wait_exit(server, 20);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(uffdsnap_lazy_connect(&c, sock_path, &reg, 1), -ENOENT); /* nobody listens now */
	usnap_mem_free(&dst);
	fixture_free();
}
END_TEST

/* A server in a child: accept one client, serve faults only (no prefetch). */
static pid_t child_server(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid;

	strcpy(sa.sun_path, sock_path);
	ck_assert(ls >= 0 && !bind(ls, (struct sockaddr *)&sa, sizeof(sa)) && !listen(ls, 1));
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		uffdsnap_lazy_opts_t o;
		uffdsnap_reader_t *r;
		int conn;

		alarm(60);
		uffdsnap_lazy_opts_init(&o);
		o.flags = UFFDSNAP_LAZY_NO_PREFETCH;
		if (uffdsnap_reader_open(&r, snap_path) || (conn = accept(ls, NULL, NULL)) < 0)
			_exit(1);
		_exit(uffdsnap_serve_conn(r, conn, &o) ? 2 : 0);
	}
	close(ls);
	return pid;
}

/* The client exits mid-restore: the server notices (ESRCH), ends that
 * restore with an error and does not hang. */
START_TEST(client_dies)
{
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct usnap_mem dst;
	pid_t server, client;
	int status;

	usnap_watchdog(60, "client_dies");
	fixture();
	server = tool_server("--once");
	client = fork();
	ck_assert(client >= 0);
	if (client == 0) {
		alarm(30);
		usnap_memfd(&dst, LEN);
		reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
		if (uffdsnap_lazy_connect(&c, sock_path, &reg, 1))
			_exit(10);
		/* exit_group directly: the point is a process that vanishes with its
		 * restore thread running, and a sanitizer's exit-time checks (which
		 * _exit runs under TSan) would call that a leak */
		syscall(SYS_exit_group, memcmp(dst.addr, want, usnap_page) ? 11 : 0);
	}
	status = wait_exit(client, 20);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client status 0x%x", status);
	status = wait_exit(server, 20);
	printf("  client exited mid-restore: the server exited with %d\n", WEXITSTATUS(status));
	ck_assert(WIFEXITED(status));
	fixture_free();
}
END_TEST

START_TEST(server_dies)
{
	int ready[2], go[2], status = 0;
	pid_t server, client;
	char b;

	usnap_watchdog(60, "server_dies");
	fixture();
	server = child_server();
	ck_assert(!pipe(ready) && !pipe(go));
	client = fork();
	ck_assert(client >= 0);
	if (client == 0) {
		struct rlimit no_core = { 0, 0 };
		uffdsnap_lazy_region_t reg;
		uffdsnap_lazy_client_t *c;
		struct usnap_mem dst;

		setrlimit(RLIMIT_CORE, &no_core);
		signal(SIGBUS, SIG_DFL); /* a sanitizer's handler would turn it into an exit */
		alarm(30);
		usnap_memfd(&dst, LEN);
		reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
		if (uffdsnap_lazy_connect(&c, sock_path, &reg, 1))
			_exit(10);
		if (memcmp(dst.addr, want, usnap_page))
			_exit(11);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(12);
		/* the server is stopped: this waits, then the server dies */
		(void)*(volatile uint8_t *)(dst.addr + LEN - usnap_page);
		_exit(13);
	}
	ck_assert_int_eq(read(ready[0], &b, 1), 1);
	kill(server, SIGSTOP);
	/* stopped for sure: SIGSTOP takes effect asynchronously */
	ck_assert_int_eq(waitpid(server, &status, WUNTRACED), server);
	ck_assert(WIFSTOPPED(status));
	ck_assert_int_eq(write(go[1], "g", 1), 1);
	usleep(200 * 1000);
	/* still waiting for its page */
	ck_assert_msg(waitpid(client, &status, WNOHANG) == 0, "the client ended early (status 0x%x)", status);
	kill(server, SIGKILL);
	waitpid(server, NULL, 0);
	status = wait_exit(client, 20);
	printf("  server killed while the client waited for a page: client %s %d\n",
	       WIFSIGNALED(status) ? "killed by signal" : "exited", WIFSIGNALED(status) ? WTERMSIG(status)
										 : WEXITSTATUS(status));
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "the client did not get SIGBUS");
	fixture_free();
}
END_TEST

int main(void)
{
	char self[PATH_MAX];
	ssize_t n;
	Suite *s;
	TCase *tc;

	usnap_test_require_uffd();
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return USNAP_SKIP;
	self[n] = '\0';
	snprintf(tool, sizeof(tool), "%s/../util/uffdsnap", dirname(self));
	if (access(tool, X_OK)) {
		printf("SKIP: the uffdsnap tool is not at %s\n", tool);
		return USNAP_SKIP;
	}
	s = suite_create("restore-serve");
	tc = tcase_create("serve");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, serve_roundtrip);
	tcase_add_test(tc, serve_mismatch);
	tcase_add_test(tc, client_dies);
	tcase_add_test(tc, server_dies);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
