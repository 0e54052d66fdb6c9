/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The LD_PRELOAD agent (issue 13): unmodified programs become participants.
 * The coordinator is this test; the programs map the region's file (on
 * /dev/shm) by path and write every page through their own mapping while a
 * snapshot runs: tests/agent/victim.c (C, mmap) and python3 (its mmap
 * module, which calls mmap64). Their stores must wait for their copies and
 * the snapshot must be the memory at the instant, byte for byte. The C
 * program also moves its mapping with mremap before the snapshot
 * (agent_mremap): the agent joins it again where it went.
 * Usage: test-agent AGENT.so VICTIM
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (16 * MiB)

static const char *agent_so, *victim;

struct prog {
	pid_t pid;
	FILE *in, *out;
};

static void start(struct prog *p, char *const argv[], const char *sock)
{
	int in[2], out[2];

	ck_assert(!pipe2(in, O_CLOEXEC) && !pipe2(out, O_CLOEXEC));
	p->pid = fork();
	ck_assert(p->pid >= 0);
	if (!p->pid) {
		alarm(120);
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0)
			_exit(3);
		setenv("LD_PRELOAD", agent_so, 1);
		setenv("UFFDSNAP_COORDINATOR", sock, 1);
		execvp(argv[0], argv);
		_exit(4);
	}
	close(in[0]);
	close(out[1]);
	p->in = fdopen(in[1], "w");
	p->out = fdopen(out[0], "r");
	ck_assert(p->in && p->out);
}

static void expect_line(struct prog *p, char want, const char *what)
{
	char line[64] = "";

	t_watchdog(60, what);
	ck_assert_msg(fgets(line, sizeof(line), p->out) && line[0] == want, "%s: the program said '%s', want '%c'",
		      what, line, want);
	t_watchdog(150, "test");
}

static void run(char *const argv[], bool move, const char *sock, uffdsnap_t *ctx, const uint8_t *ref,
		const uint8_t *mem, const char *label)
{
	struct t_cb cb;
	struct t_expect ex = { "ram", ref, LEN };
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
	struct prog p;
	int r;

	start(&p, argv, sock);
	expect_line(&p, 'R', "mapping");
	for (int i = 0; i < 5000 && uffdsnap_participant_count(ctx) != 1; i++)
		usleep(1000);
	ck_assert_msg(uffdsnap_participant_count(ctx) == 1, "%s: the program did not join", label);
	if (move) {
		/* left at the old address, joined at the new one: one participant */
		ck_assert(fputs("M\n", p.in) >= 0 && !fflush(p.in));
		expect_line(&p, 'R', "moving");
		ck_assert_msg(uffdsnap_participant_count(ctx) == 1, "%s: %d joins after the move", label,
			      uffdsnap_participant_count(ctx));
	}
	s = t_begin_stalled(ctx, &cb, 20000);
	ck_assert(fputs("W\n", p.in) >= 0 && !fflush(p.in));
	expect_line(&p, 'D', "writing");
	atomic_store(&cb.sleep_us, 0);
	r = uffdsnap_wait(s);
	t_stats(s, &st);
	t_stats_print(label, &st);
	ck_assert_msg(r == 0, "%s: wait: %d %s", label, r, uffdsnap_snap_error(s));
	ck_assert_msg(st.pages_fault > 0, "%s: no store of the program waited for its copy", label);
	t_check_buffer(cb.mem, cb.mem_len, &ex, 1);
	ck_assert_msg(memcmp(mem, ref, LEN), "%s: the program's stores did not reach the memory", label);
	printf("%s: joined through the agent, %llu pages copied for its stores, snapshot exact\n", label,
	       (unsigned long long)st.pages_fault);
	uffdsnap_snap_free(s);
	t_cb_destroy(&cb);
	fclose(p.in);
	fclose(p.out);
	ck_assert(WIFEXITED(t_wait_child(p.pid, 20, label)));
	for (int i = 0; i < 5000 && uffdsnap_participant_count(ctx) != 0; i++)
		usleep(1000);
	ck_assert_int_eq(uffdsnap_participant_count(ctx), 0);
}

static void agent_case(bool python, bool move)
{
	char path[64], dir[PATH_MAX], sock[PATH_MAX + 16], len[32];
	uffdsnap_t *ctx;
	uffdsnap_opts_t o;
	uint8_t *mem, *ref;
	int fd;

	snprintf(path, sizeof(path), "/dev/shm/usnap-agent-%d", (int)getpid());
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	ck_assert(fd >= 0 && !ftruncate(fd, LEN));
	mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert(mem != MAP_FAILED);
	t_fill_random(mem, LEN, 141);
	ref = t_copy(mem, LEN);
	t_tmpdir(dir);
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	snprintf(len, sizeof(len), "%lu", LEN);
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "ram", mem, LEN);
	ck_assert(uffdsnap_listen(ctx, sock) == 0);
	if (python) {
		static const char script[] =
			"import mmap, os, sys\n"
			"fd = os.open(sys.argv[1], os.O_RDWR); n = int(sys.argv[2])\n"
			"m = mmap.mmap(fd, n, mmap.MAP_SHARED)\n"
			"print('R', flush=True)\n"
			"for line in sys.stdin:\n"
			"    if line.startswith('W'):\n"
			"        for i in range(0, n, mmap.PAGESIZE): m[i + 24] ^= 0x3c\n"
			"        print('D', flush=True)\n";
		char *const argv[] = { "python3", "-c", (char *)script, path, len, NULL };
		run(argv, false, sock, ctx, ref, mem, "python3");
	} else {
		char *const argv[] = { (char *)victim, path, len, NULL };
		run(argv, move, sock, ctx, ref, mem, move ? "C program, moved" : "C program");
	}
	uffdsnap_free(ctx);
	t_rmdir(dir);
	t_buf_free(ref, LEN);
	munmap(mem, LEN);
	close(fd);
	unlink(path);
}

/* A sanitizer-built agent cannot be preloaded into a program built without
 * the sanitizer (its runtime must come first). */
#define SKIP_UNDER_SANITIZER(name)                                                                        \
	if (T_SANITIZED)                                                                               \
		return t_skip(name, "a sanitizer-built LD_PRELOAD agent cannot run in a program built "   \
				  "without that sanitizer")

START_TEST(agent_c_program)
{
	SKIP_UNDER_SANITIZER("agent_c_program");
	t_watchdog(150, "agent_c_program");
	agent_case(false, false);
}
END_TEST

START_TEST(agent_mremap)
{
	SKIP_UNDER_SANITIZER("agent_mremap");
	t_watchdog(150, "agent_mremap");
	agent_case(false, true);
}
END_TEST

START_TEST(agent_python)
{
	SKIP_UNDER_SANITIZER("agent_python");
	t_watchdog(150, "agent_python");
	if (access("/usr/bin/python3", X_OK))
		return t_skip("agent_python", "no /usr/bin/python3");
	agent_case(true, false);
}
END_TEST

int main(int argc, char **argv)
{
	static char agent_buf[PATH_MAX], victim_buf[PATH_MAX];
	Suite *s = suite_create("agent");
	TCase *tc = tcase_create("agent"), *py = tcase_create("python");

	if (argc != 3)
		return fprintf(stderr, "usage: test-agent AGENT.so VICTIM\n"), 2;
	/* absolute: the programs may change directory */
	agent_so = realpath(argv[1], agent_buf), victim = realpath(argv[2], victim_buf);
	if (!agent_so || !victim)
		return fprintf(stderr, "test-agent: %s or %s: %s\n", argv[1], argv[2], strerror(errno)), 2;
	t_test_require_uffd();
	tcase_set_timeout(tc, 160);
	tcase_set_timeout(py, 160);
	tcase_add_test(tc, agent_c_program);
	tcase_add_test(tc, agent_mremap);
	/* its own meson test (tag "python"), as skippable cases are */
	tcase_set_tags(py, "python");
	tcase_add_test(py, agent_python);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, py);
	return t_run_suite(s);
}
