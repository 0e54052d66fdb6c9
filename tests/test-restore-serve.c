/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy restore across processes: the page server as a real second process
 * (the uffdsnap tool's `serve`, or a forked child calling
 * uffdsnap_serve_conn()) restores this process's memory through the
 * userfaultfd it received over a Unix socket. Byte-exact round trip; region
 * mismatches reported by the server; a client beyond the server's limit
 * refused with the reason; and a server that dies mid-restore: the client
 * thread waiting for a page gets SIGBUS (in a child, under a deadline), never
 * a hang and never silent zeros.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (16 * MiB)

static char tool[PATH_MAX];
static struct usnap_snapfile fx;
static char sock_path[PATH_MAX + 16];

/* A snapshot of one 16 MiB memfd "pool", and the server's socket next to it. */
static void fixture(void)
{
	usnap_snapfile_new(&fx, "pool", LEN, 23, 6, 9);
	snprintf(sock_path, sizeof(sock_path), "%s/sock", fx.dir);
}

/* A socket bound to path is listening (__SO_ACCEPTCON in /proc/net/unix). */
static bool unix_listening(const char *path)
{
	char line[PATH_MAX + 128], p[PATH_MAX];
	unsigned long flags;
	bool yes = false;
	FILE *f = fopen("/proc/net/unix", "re");

	while (f && !yes && fgets(line, sizeof(line), f))
		yes = sscanf(line, "%*s %*s %*s %lx %*s %*s %*s %4095s", &flags, p) == 2 && (flags & 0x10000) &&
		      !strcmp(p, path);
	if (f)
		fclose(f);
	return yes;
}

/* `uffdsnap serve` in a child process, its output into the file log unless
 * that is NULL; returns its pid once the socket listens (the socket file
 * appears at bind(), before listen(): a connect in between is refused). */
static pid_t tool_server(const char *extra, const char *log)
{
	struct stat st;
	pid_t pid = fork();

	ck_assert(pid >= 0);
	if (pid == 0) {
		int fd = log ? open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		alarm(60);
		execl(tool, tool, "serve", fx.path, "--socket", sock_path, extra, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && (stat(sock_path, &st) || !unix_listening(sock_path)); i++)
		usleep(10000);
	ck_assert_msg(!stat(sock_path, &st), "the server did not create %s", sock_path);
	ck_assert_msg(unix_listening(sock_path), "the server does not listen on %s", sock_path);
	return pid;
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
	server = tool_server("--once", NULL);
	usnap_memfd(&dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
	t0 = usnap_now_ns();
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect: %d %s", rc, uffdsnap_last_error());
	printf("  connected to the page server (pid %d) in %.2f ms\n", (int)server, usnap_ms_since(t0));
	/* random touches, then everything, while the server prefetches */
	for (int i = 0; i < 300; i++) {
		size_t p = usnap_splitmix64(&s) % (LEN / usnap_page);
		ck_assert_msg(!memcmp(dst.addr + p * usnap_page, fx.want + p * usnap_page, usnap_page), "page %zu", p);
	}
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	printf("  restored across processes in %.1f ms\n", usnap_ms_since(t0));
	ck_assert(!memcmp(dst.addr, fx.want, LEN));
	uffdsnap_lazy_client_free(c);
	status = usnap_wait_child(server, 20, "the page server");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server status 0x%x", status);
	usnap_mem_free(&dst);
	usnap_snapfile_free(&fx);
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
	server = tool_server("--once", NULL);
	usnap_memfd(&dst, 2 * LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = 2 * LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	printf("  wrong length: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert(strstr(uffdsnap_last_error(), "page server: region 'pool'"));
	/* the memory is the program's again, unregistered */
	dst.addr[0] = 7;
	ck_assert_int_eq(dst.addr[0], 7);
	status = usnap_wait_child(server, 20, "the page server");
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(uffdsnap_lazy_connect(&c, sock_path, &reg, 1), -ENOENT); /* nobody listens now */
	usnap_mem_free(&dst);
	usnap_snapfile_free(&fx);
}
END_TEST

/* A thread of process pid is blocked in system call nr. */
static bool in_syscall(pid_t pid, long nr)
{
	char dir[64], path[PATH_MAX], buf[64];
	struct dirent *e;
	bool found = false;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
	if (!(d = opendir(dir)))
		return false;
	while (!found && (e = readdir(d))) {
		FILE *f;

		snprintf(path, sizeof(path), "%s/%s/syscall", dir, e->d_name);
		if (e->d_name[0] == '.' || !(f = fopen(path, "re")))
			continue;
		found = fgets(buf, sizeof(buf), f) && strtol(buf, NULL, 10) == nr && buf[0] != 'r';
		fclose(f);
	}
	closedir(d);
	return found;
}

/*
 * --max-clients 1. The first connection sends nothing: its server thread
 * waits for the hello, and the connection holds the one place. A client then
 * is refused at once, with -EAGAIN and the reason, its memory unregistered,
 * and the server logs it; once the first hangs up, the next client is served.
 */
START_TEST(serve_client_limit)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct usnap_mem dst, dst2;
	char log[PATH_MAX + 16];
	uint64_t t0;
	size_t len;
	char *out;
	pid_t server;
	int rc, hold, status;

	usnap_watchdog(60, "serve_client_limit");
	fixture();
	snprintf(log, sizeof(log), "%s/log", fx.dir);
	server = tool_server("--max-clients=1", log);
	strcpy(sa.sun_path, sock_path);
	hold = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(hold >= 0 && !connect(hold, (struct sockaddr *)&sa, sizeof(sa)));
	t0 = usnap_now_ns();
	while (!in_syscall(server, SYS_recvmsg)) {
		ck_assert_msg(usnap_ms_since(t0) < 10000, "the server never waited for the first client's hello");
		usleep(1000);
	}

	usnap_memfd(&dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	printf("  a second client while one is served: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EAGAIN);
	ck_assert(!strcmp(uffdsnap_last_error(), "page server: refused: the server is serving its limit of 1 client: "
			  "try again later"));
	dst.addr[0] = 7; /* unregistered: the program's again */
	ck_assert_int_eq(dst.addr[0], 7);

	close(hold);
	usnap_memfd(&dst2, LEN);
	reg.addr = dst2.addr;
	t0 = usnap_now_ns();
	/* the server frees the place when it has seen the hang-up */
	while ((rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1)) == -EAGAIN && usnap_ms_since(t0) < 10000)
		usleep(10000);
	ck_assert_msg(rc == 0, "lazy_connect after the first client left: %d %s", rc, uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_lazy_client_wait(c), 0);
	ck_assert(!memcmp(dst2.addr, fx.want, LEN));
	uffdsnap_lazy_client_free(c);

	kill(server, SIGTERM);
	status = usnap_wait_child(server, 20, "the page server");
	ck_assert(WIFSIGNALED(status));
	out = (char *)usnap_slurp(log, &len);
	out[len] = '\0';
	printf("  the server's log:\n%s", out);
	ck_assert_msg(strstr(out, "uffdsnap: client 2: Resource temporarily unavailable: refused: the server is serving "
			      "its limit of 1 client: try again later\n"), "the server did not log the refusal");
	free(out);
	usnap_mem_free(&dst);
	usnap_mem_free(&dst2);
	usnap_snapfile_free(&fx);
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
		if (uffdsnap_reader_open(&r, fx.path) || (conn = accept(ls, NULL, NULL)) < 0)
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
	server = tool_server("--once", NULL);
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
		syscall(SYS_exit_group, memcmp(dst.addr, fx.want, usnap_page) ? 11 : 0);
	}
	status = usnap_wait_child(client, 20, "the client");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client status 0x%x", status);
	status = usnap_wait_child(server, 20, "the page server");
	printf("  client exited mid-restore: the server exited with %d\n", WEXITSTATUS(status));
	ck_assert(WIFEXITED(status));
	usnap_snapfile_free(&fx);
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
		uffdsnap_lazy_region_t reg;
		uffdsnap_lazy_client_t *c;
		struct usnap_mem dst;

		usnap_sigbus_child();
		usnap_memfd(&dst, LEN);
		reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
		if (uffdsnap_lazy_connect(&c, sock_path, &reg, 1))
			_exit(10);
		if (memcmp(dst.addr, fx.want, usnap_page))
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
	status = usnap_wait_child(client, 20, "the client");
	printf("  server killed while the client waited for a page: client %s %d\n",
	       WIFSIGNALED(status) ? "killed by signal" : "exited", WIFSIGNALED(status) ? WTERMSIG(status)
										 : WEXITSTATUS(status));
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "the client did not get SIGBUS");
	usnap_snapfile_free(&fx);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	usnap_test_require_uffd();
	usnap_find_tool(tool);
	s = suite_create("restore-serve");
	tc = tcase_create("serve");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, serve_roundtrip);
	tcase_add_test(tc, serve_mismatch);
	tcase_add_test(tc, serve_client_limit);
	tcase_add_test(tc, client_dies);
	tcase_add_test(tc, server_dies);
	suite_add_tcase(s, tc);
	return usnap_run_suite(s);
}
