/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy restore across processes: the page server as a real second process
 * (the uffdsnap tool's `serve`, or a forked child calling
 * uffdsnap_serve_conn()) restores this process's memory through the
 * userfaultfd it received over a Unix socket. Byte-exact round trip; region
 * mismatches reported by the server; a client beyond the server's limit
 * refused with the reason; and failures (a server that dies mid-restore, a
 * corrupt chunk): the client thread waiting for a page gets SIGBUS (in a
 * child, under a deadline), never a hang and never silent zeros.
 *
 * Built a second time as test-restore-serve-nopoison against the fault
 * injection library with USNAP_TEST_NO_POISON (as test-restore-lazy-nopoison):
 * UFFDIO_API denies UFFD_FEATURE_POISON, and the `failure` case runs through
 * the paths for kernels before 6.6.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
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
#ifdef USNAP_TEST_NO_POISON
#include "compat.h" /* UFFD_FEATURE_POISON, newer than the system's headers */
#include "inject.h"
#endif

#define LEN (16 * MiB)

static char tool[PATH_MAX];
static struct t_snapfile fx;
static char sock_path[PATH_MAX + 16];
static uint64_t zero_pages; /* pages the snapshot records as zero */

/* A snapshot of one 16 MiB memfd "pool", and the server's socket next to it. */
static void fixture(void)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;

	t_snapfile_new(&fx, "pool", LEN, 23, 6, 9);
	snprintf(sock_path, sizeof(sock_path), "%s/sock", fx.dir);
	r = t_reader(fx.path);
	uffdsnap_reader_info(r, &info);
	zero_pages = info.pages_zero;
	uffdsnap_reader_free(r);
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

/* A fresh memfd for "pool" in dst, handed to the server at sock_path. */
static uffdsnap_lazy_client_t *connect_pool(struct t_mem *dst)
{
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	int rc;

	t_memfd(dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst->addr, .len = LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	ck_assert_msg(rc == 0, "lazy_connect: %d %s", rc, uffdsnap_last_error());
	return c;
}

/* The server's figures, as the client got them with the final status. */
static void print_served(const char *what, uffdsnap_lazy_client_t *c, uffdsnap_lazy_stats_t *st)
{
	st->size = sizeof(*st);
	ck_assert_int_eq(uffdsnap_lazy_client_stats(c, st), 0);
	printf("  %s: resident after %.1f ms; %llu faults; data pages by fault %llu, by prefetch %llu; zero pages "
	       "filled on touch %llu; chunks loaded for faults %llu, by prefetch %llu\n", what, st->resident_ns / 1e6,
	       (unsigned long long)st->faults, (unsigned long long)st->pages_fault,
	       (unsigned long long)st->pages_prefetch, (unsigned long long)st->pages_zero_fault,
	       (unsigned long long)st->chunks_fault, (unsigned long long)st->chunks_prefetch);
	ck_assert_int_eq(st->state, UFFDSNAP_LAZY_DONE);
	ck_assert_uint_eq(st->pages_total, LEN / t_page);
	ck_assert_uint_eq(st->pages_fault + st->pages_prefetch + zero_pages, LEN / t_page);
}

/* `uffdsnap serve` in a child process with the options that follow log (up
 * to a NULL), its output into the file log unless that is NULL; returns its
 * pid once the socket listens (the socket file appears at bind(), before
 * listen(): a connect in between is refused). */
static pid_t tool_server(const char *log, ...)
{
	const char *argv[16] = { tool, "serve", fx.path, "--socket", sock_path };
	struct stat st;
	va_list ap;
	pid_t pid;
	int n = 5;

	va_start(ap, log);
	while ((argv[n] = va_arg(ap, const char *)))
		ck_assert(++n < 16);
	va_end(ap);
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		int fd = log ? open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		alarm(60);
		execv(tool, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500 && (stat(sock_path, &st) || !unix_listening(sock_path)); i++)
		usleep(10000);
	ck_assert_msg(!stat(sock_path, &st), "the server did not create %s", sock_path);
	ck_assert_msg(unix_listening(sock_path), "the server does not listen on %s", sock_path);
	return pid;
}

/* A server in a child: accept one client, serve it from the snapshot at path
 * with opts (may be NULL). */
static pid_t child_server(const char *path, const uffdsnap_lazy_opts_t *opts)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid;

	strcpy(sa.sun_path, sock_path);
	ck_assert(ls >= 0 && !bind(ls, (struct sockaddr *)&sa, sizeof(sa)) && !listen(ls, 1));
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		uffdsnap_reader_t *r;
		int conn;

		alarm(60);
		if (uffdsnap_reader_open(&r, path) || (conn = accept(ls, NULL, NULL)) < 0)
			_exit(1);
		_exit(uffdsnap_serve_conn(r, conn, opts) ? 2 : 0);
	}
	close(ls);
	return pid;
}

START_TEST(serve_roundtrip)
{
	uffdsnap_lazy_stats_t st;
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	uint64_t s = 5, t0;
	pid_t server;
	int rc, status;

	t_watchdog(90, "serve_roundtrip");
	fixture();
	server = tool_server(NULL, "--once", NULL);
	t0 = t_now_ns();
	c = connect_pool(&dst);
	printf("  connected to the page server (pid %d) in %.2f ms\n", (int)server, t_ms_since(t0));
	/* random touches, then everything, while the server prefetches */
	for (int i = 0; i < 300; i++) {
		size_t p = t_splitmix64(&s) % (LEN / t_page);
		ck_assert_msg(!memcmp(dst.addr + p * t_page, fx.want + p * t_page, t_page), "page %zu", p);
	}
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	printf("  restored across processes in %.1f ms\n", t_ms_since(t0));
	ck_assert(!memcmp(dst.addr, fx.want, LEN));
	print_served("served, with prefetch", c, &st);
	uffdsnap_lazy_client_free(c);
	status = t_wait_child(server, 20, "the page server");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server status 0x%x", status);
	t_mem_free(&dst);
	t_snapfile_free(&fx);
}
END_TEST

/*
 * `serve --no-prefetch`: every page arrives for a fault. The client touches
 * all of them, scattered (page i * 1237 mod n: every page once, as 1237 is
 * odd and n a power of two), before it waits: the server's prefetcher, which
 * would start only then, finds nothing left to place.
 */
START_TEST(serve_no_prefetch)
{
	const size_t npages = LEN / t_page;
	uffdsnap_lazy_stats_t st;
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	pid_t server;
	int rc, status;

	t_watchdog(90, "serve_no_prefetch");
	fixture();
	server = tool_server(NULL, "--no-prefetch", NULL);
	c = connect_pool(&dst);
	for (size_t i = 0; i < npages; i++) {
		size_t p = i * 1237 % npages;
		t_assert_msg(!memcmp(dst.addr + p * t_page, fx.want + p * t_page, t_page), "page %zu", p);
	}
	rc = uffdsnap_lazy_client_wait(c);
	ck_assert_msg(rc == 0, "client_wait: %d %s", rc, uffdsnap_lazy_client_error(c));
	print_served("served, --no-prefetch", c, &st);
	ck_assert_uint_eq(st.pages_prefetch, 0);
	ck_assert_uint_eq(st.chunks_prefetch, 0);
	ck_assert_uint_eq(st.pages_zero_fault, zero_pages);
	uffdsnap_lazy_client_free(c);
	kill(server, SIGTERM);
	status = t_wait_child(server, 20, "the page server");
	ck_assert(WIFSIGNALED(status));
	t_mem_free(&dst);
	t_snapfile_free(&fx);
}
END_TEST

START_TEST(serve_mismatch)
{
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	uffdsnap_lazy_region_t reg;
	pid_t server;
	int rc, status;

	t_watchdog(60, "serve_mismatch");
	fixture();
	server = child_server(fx.path, NULL); /* the defaults: it must answer, not refuse */
	t_memfd(&dst, 2 * LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = 2 * LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	printf("  wrong length: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert(strstr(uffdsnap_last_error(), "page server: region 'pool'"));
	status = t_wait_child(server, 20, "the page server");
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(uffdsnap_lazy_connect(&c, sock_path, &reg, 1), -ECONNREFUSED); /* nobody listens now */
	/* the memory is the program's again, unregistered */
	dst.addr[0] = 7;
	ck_assert_int_eq(dst.addr[0], 7);
	t_mem_free(&dst);
	t_snapfile_free(&fx);
}
END_TEST

/* Some thread of process pid has a /proc/PID/task/TID/file (syscall, wchan)
 * that begins with prefix: it is blocked in that system call, or there. */
static bool task_shows(pid_t pid, const char *file, const char *prefix)
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

		snprintf(path, sizeof(path), "%s/%s/%s", dir, e->d_name, file);
		if (e->d_name[0] == '.' || !(f = fopen(path, "re")))
			continue;
		found = fgets(buf, sizeof(buf), f) && !strncmp(buf, prefix, strlen(prefix));
		fclose(f);
	}
	closedir(d);
	return found;
}

/* Wait (up to 10 s) until task_shows(pid, file, prefix). */
static void await_task(pid_t pid, const char *file, const char *prefix, const char *what)
{
	uint64_t t0 = t_now_ns();

	while (!task_shows(pid, file, prefix)) {
		ck_assert_msg(t_ms_since(t0) < 10000, "%s never happened", what);
		usleep(1000);
	}
}

/* A `serve --max-clients 1` (and timeout_opt) server, its log into log, and
 * in *silent a connection to it that sends nothing: returns once the server
 * waits for that connection's hello, which holds its one place. */
static pid_t held_server(const char *log, const char *timeout_opt, int *silent)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char in_recvmsg[16];
	pid_t server = tool_server(log, "--max-clients=1", timeout_opt, NULL);

	strcpy(sa.sun_path, sock_path);
	*silent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(*silent >= 0 && !connect(*silent, (struct sockaddr *)&sa, sizeof(sa)));
	snprintf(in_recvmsg, sizeof(in_recvmsg), "%d ", SYS_recvmsg);
	await_task(server, "syscall", in_recvmsg, "the server waiting for the silent connection's hello");
	return server;
}

/*
 * --max-clients 1. The first connection sends nothing: its server thread
 * waits for the hello, and the connection holds the one place. A client then
 * is refused at once, with -EAGAIN and the reason, its memory unregistered,
 * and the server logs it; once the first hangs up, the next client is served.
 */
START_TEST(serve_client_limit)
{
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct t_mem dst, dst2;
	char log[PATH_MAX + 16];
	uint64_t t0;
	size_t len;
	char *out;
	pid_t server;
	int rc, hold, status;

	t_watchdog(60, "serve_client_limit");
	fixture();
	snprintf(log, sizeof(log), "%s/log", fx.dir);
	/* the request timeout far beyond the test: the place stays held */
	server = held_server(log, "--request-timeout=60000", &hold);

	t_memfd(&dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	printf("  a second client while one is served: %d %s\n", rc, uffdsnap_last_error());
	ck_assert_int_eq(rc, -EAGAIN);
	ck_assert(!strcmp(uffdsnap_last_error(), "page server: refused: the server is serving its limit of 1 client: "
			  "try again later"));
	dst.addr[0] = 7; /* unregistered: the program's again */
	ck_assert_int_eq(dst.addr[0], 7);

	close(hold);
	t_memfd(&dst2, LEN);
	reg.addr = dst2.addr;
	t0 = t_now_ns();
	/* the server frees the place when it has seen the hang-up */
	while ((rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1)) == -EAGAIN && t_ms_since(t0) < 10000)
		usleep(10000);
	ck_assert_msg(rc == 0, "lazy_connect after the first client left: %d %s", rc, uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_lazy_client_wait(c), 0);
	ck_assert(!memcmp(dst2.addr, fx.want, LEN));
	uffdsnap_lazy_client_free(c);

	kill(server, SIGTERM);
	status = t_wait_child(server, 20, "the page server");
	ck_assert(WIFSIGNALED(status));
	out = (char *)t_slurp(log, &len);
	out[len] = '\0';
	printf("  the server's log:\n%s", out);
	ck_assert_msg(strstr(out, "uffdsnap serve: client 2: Resource temporarily unavailable: refused: the server is serving "
			      "its limit of 1 client: try again later\n"), "the server did not log the refusal");
	free(out);
	t_mem_free(&dst);
	t_mem_free(&dst2);
	t_snapfile_free(&fx);
}
END_TEST

/*
 * A connection that sends nothing holds the one place of a --max-clients 1
 * server only until the request timeout (1 s here): a real client is
 * refused while it holds it, then the server logs the timeout and hangs up
 * on it, and the next try of the real client is served.
 */
START_TEST(serve_silent_client)
{
	static const char timed_out[] = "uffdsnap serve: client 1: Connection timed out: page server: the client did not "
					"send its request within 1000 ms: hung up on it\n";
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	char log[PATH_MAX + 16], buf[1024];
	size_t len, answer = 0;
	ssize_t n;
	uint64_t t0;
	double served_ms;
	int silent, rc, tries = 1;
	char *out, *line;
	pid_t server;

	t_watchdog(60, "serve_silent_client");
	fixture();
	snprintf(log, sizeof(log), "%s/log", fx.dir);
	t0 = t_now_ns();
	server = held_server(log, "--request-timeout=1000", &silent);

	t_memfd(&dst, LEN);
	reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
	rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1);
	ck_assert_msg(rc == -EAGAIN, "a client while the silent one holds the place: %d %s", rc,
		      uffdsnap_last_error());
	/* refused: the memory is unregistered and empty again, ready for the next try */
	while ((rc = uffdsnap_lazy_connect(&c, sock_path, &reg, 1)) == -EAGAIN && t_ms_since(t0) < 10000) {
		tries++;
		usleep(20000);
	}
	served_ms = t_ms_since(t0);
	ck_assert_msg(rc == 0, "lazy_connect after the silent client's timeout: %d %s", rc, uffdsnap_last_error());
	printf("  a silent connection held the one place: the real client was served %.0f ms after it connected, "
	       "at its try %d\n", served_ms, tries);
	ck_assert_msg(served_ms >= 1000, "served after %.0f ms, before the silent client's timeout", served_ms);
	ck_assert_int_eq(uffdsnap_lazy_client_wait(c), 0);
	ck_assert(!memcmp(dst.addr, fx.want, LEN));
	uffdsnap_lazy_client_free(c);
	/* the silent connection got the server's answer, then the hang-up */
	while ((n = recv(silent, buf, sizeof(buf), 0)) > 0)
		answer += (size_t)n;
	ck_assert_msg(n == 0 && answer > 0, "the silent connection: %zd after %zu bytes", n, answer);
	close(silent);

	kill(server, SIGTERM);
	t_wait_child(server, 20, "the page server");
	out = (char *)t_slurp(log, &len);
	out[len] = '\0';
	line = strstr(out, "uffdsnap serve: client 1:");
	ck_assert_msg(line, "the server logged nothing for the silent client:\n%s", out);
	printf("  the server's log: %.*s", (int)(strchrnul(line, '\n') - line + 1), line);
	ck_assert_msg(!strncmp(line, timed_out, strlen(timed_out)), "the server did not log the timeout");
	free(out);
	t_mem_free(&dst);
	t_snapfile_free(&fx);
}
END_TEST

/* The client exits mid-restore: the server notices (ESRCH), ends that
 * restore with an error and does not hang. */
START_TEST(client_dies)
{
	uffdsnap_lazy_region_t reg;
	uffdsnap_lazy_client_t *c;
	struct t_mem dst;
	pid_t server, client;
	int status;

	t_watchdog(60, "client_dies");
	fixture();
	server = tool_server(NULL, "--once", NULL);
	client = fork();
	ck_assert(client >= 0);
	if (client == 0) {
		alarm(30);
		t_memfd(&dst, LEN);
		reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
		if (uffdsnap_lazy_connect(&c, sock_path, &reg, 1))
			_exit(10);
		/* exit_group directly: the point is a process that vanishes with its
		 * restore thread running, and a sanitizer's exit-time checks (which
		 * _exit runs under TSan) would call that a leak */
		syscall(SYS_exit_group, memcmp(dst.addr, fx.want, t_page) ? 11 : 0);
	}
	status = t_wait_child(client, 20, "the client");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client status 0x%x", status);
	status = t_wait_child(server, 20, "the page server");
	printf("  client exited mid-restore: the server exited with %d\n", WEXITSTATUS(status));
	ck_assert(WIFEXITED(status));
	t_snapfile_free(&fx);
}
END_TEST

static const uffdsnap_lazy_opts_t faults_only = { .size = sizeof(uffdsnap_lazy_opts_t),
						 .flags = UFFDSNAP_LAZY_NO_PREFETCH };
static int step[2][2]; /* client -> test: ready; test -> client: go on */
static size_t bad_page; /* serve_corrupt_chunk's lost page */

/* A client process (SIGBUS kills it): "pool" in a fresh memfd handed to the
 * server at sock_path, then it exits with act's code (10: connect failed). */
static pid_t client_child(int (*act)(uint8_t *mem, uffdsnap_lazy_client_t *c))
{
	pid_t pid;

	ck_assert(!pipe(step[0]) && !pipe(step[1]));
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		uffdsnap_lazy_region_t reg;
		uffdsnap_lazy_client_t *c;
		struct t_mem dst;

		t_sigbus_child();
		t_memfd(&dst, LEN);
		reg = (uffdsnap_lazy_region_t){ .name = "pool", .addr = dst.addr, .len = LEN };
		_exit(uffdsnap_lazy_connect(&c, sock_path, &reg, 1) ? 10 : act(dst.addr, c));
	}
	return pid;
}

/* In the client: say it is ready and wait until the test says go on. */
static bool client_step(void)
{
	char b;

	return write(step[0][1], "r", 1) == 1 && read(step[1][0], &b, 1) == 1;
}

/* The client's wait status, once it ended, printed after what. */
static int client_end(pid_t pid, const char *what)
{
	int status = t_wait_child(pid, 20, "the client");

	printf("  %s: client %s %d\n", what, WIFSIGNALED(status) ? "killed by signal" : "exited",
	       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	return status;
}

static int touch_after_stop(uint8_t *mem, uffdsnap_lazy_client_t *c)
{
	(void)c;
	if (memcmp(mem, fx.want, t_page))
		return 11;
	if (!client_step())
		return 12;
	/* the server is stopped: this waits, then the server dies */
	(void)*(volatile uint8_t *)(mem + LEN - t_page);
	return 13;
}

START_TEST(server_dies)
{
	pid_t server, client;
	int status = 0;
	char b;

	t_watchdog(60, "server_dies");
	fixture();
	server = child_server(fx.path, &faults_only);
	client = client_child(touch_after_stop);
	ck_assert_int_eq(read(step[0][0], &b, 1), 1);
	kill(server, SIGSTOP);
	/* stopped for sure: SIGSTOP takes effect asynchronously */
	ck_assert_int_eq(waitpid(server, &status, WUNTRACED), server);
	ck_assert(WIFSTOPPED(status));
	ck_assert_int_eq(write(step[1][1], "g", 1), 1);
	/* nothing else can place that page (the server does not prefetch) */
	await_task(client, "wchan", "handle_userfault", "the client waiting for its page");
	kill(server, SIGKILL);
	waitpid(server, NULL, 0);
	status = client_end(client, "server killed while the client waited for a page");
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "the client did not get SIGBUS");
	t_snapfile_free(&fx);
}
END_TEST

static int wait_free_touch(uint8_t *mem, uffdsnap_lazy_client_t *c)
{
	if (!client_step())
		return 12;
	if (uffdsnap_lazy_client_wait(c) != -EPIPE)
		return 14;
	uffdsnap_lazy_client_free(c);
#ifdef USNAP_TEST_NO_POISON
	(void)mem;
	return 0; /* the registration went with the client: nothing guards the pages now */
#else
	(void)*(volatile uint8_t *)(mem + LEN - t_page);
	return 13;
#endif
}

/*
 * The server dies while the client touches nothing: the client's wait says
 * so (-EPIPE) and its free returns (without UFFDIO_POISON its watcher is
 * answering faults with SIGBUS then, and must stop). With UFFDIO_POISON a
 * page that never arrived still gets SIGBUS after the free.
 */
START_TEST(server_dies_then_free)
{
	pid_t server, client;
	int status;
	char b;

	t_watchdog(60, "server_dies_then_free");
	fixture();
	server = child_server(fx.path, &faults_only);
	client = client_child(wait_free_touch);
	ck_assert_int_eq(read(step[0][0], &b, 1), 1);
	kill(server, SIGKILL);
	waitpid(server, NULL, 0);
	ck_assert_int_eq(write(step[1][1], "g", 1), 1);
	status = client_end(client, "server killed, then the client waited and freed");
#ifdef USNAP_TEST_NO_POISON
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client status 0x%x", status);
#else
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "client status 0x%x", status);
#endif
	t_snapfile_free(&fx);
}
END_TEST

static int touch_bad(uint8_t *mem, uffdsnap_lazy_client_t *c)
{
	size_t good = bad_page > 200 ? 0 : LEN / t_page - 1;

	(void)c;
	if (memcmp(mem + good * t_page, fx.want + good * t_page, t_page))
		return 11;
	(void)*(volatile uint8_t *)(mem + bad_page * t_page + 8);
	return 13;
}

/* A chunk that fails its checksum, served faults only: the client thread that
 * touches a page of it gets SIGBUS (the server poisons the page in the
 * client's memory, or without UFFDIO_POISON sends the thread SIGBUS). */
START_TEST(serve_corrupt_chunk)
{
	char bad_path[PATH_MAX + 16];
	pid_t server, client;
	int status;

	t_watchdog(60, "serve_corrupt_chunk");
	fixture();
	bad_page = t_snapfile_flipped(&fx, "flipped", bad_path);
	server = child_server(bad_path, &faults_only);
	client = client_child(touch_bad);
	status = client_end(client, "served a corrupt chunk");
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "the client did not get SIGBUS");
	status = t_wait_child(server, 20, "the page server");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "server status 0x%x", status);
	t_snapfile_free(&fx);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	t_test_require_uffd();
#ifdef USNAP_TEST_NO_POISON
	usnap_inject_hide_features(UFFD_FEATURE_POISON);
#endif
	t_find_tool(tool);
	s = suite_create("restore-serve");
	tc = tcase_create("serve");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, serve_roundtrip);
	tcase_add_test(tc, serve_no_prefetch);
	tcase_add_test(tc, serve_mismatch);
	tcase_add_test(tc, serve_client_limit);
	tcase_add_test(tc, serve_silent_client);
	tcase_add_test(tc, client_dies);
	suite_add_tcase(s, tc);
	/* the one case test-restore-serve-nopoison runs (CK_RUN_CASE=failure) */
	tc = tcase_create("failure");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, server_dies);
	tcase_add_test(tc, server_dies_then_free);
	tcase_add_test(tc, serve_corrupt_chunk);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
