/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Other processes take part (issue 13): real processes, started with
 * fork+exec of this program (unrelated address spaces), join the context
 * over its socket with their own mappings of the region's memfd, and write
 * through them while a snapshot runs.
 *
 *  - 1 and 4 participants: their stores wait for the copy, the snapshot is
 *    the memory at the instant, byte for byte;
 *  - a participant killed while its stores wait: the snapshot is exact;
 *  - the coordinator killed mid-snapshot: the participant's memory is
 *    writable at once, nothing is left protected;
 *  - a process joining while a snapshot runs fails that snapshot (-EBUSY);
 *  - refusals: an unknown region, a mapping of another file, garbage on the
 *    socket; the coordinator keeps serving;
 *  - a process that may not join: without the privilege to handle kernel-mode
 *    faults its join fails at once (-EPERM, saying what it lacks); of another
 *    uid, the coordinator refuses it (-EACCES);
 *  - UFFDSNAP_OPT_STRICT does not count a participant as an outsider.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (16 * MiB)
#define MEM_FD 100
#define CMD_FD 101
#define ACK_FD 102

/* ---- the participant program ----------------------------------------------------- */

static int participant_main(char **argv)
{
	const char *sock = argv[2];
	size_t off = strtoul(argv[3], NULL, 0), len = strtoul(argv[4], NULL, 0), ps = (size_t)getpagesize();
	uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, MEM_FD, (off_t)off);
	uffdsnap_participant_t *p = NULL;
	uffdsnap_join_region_t jr = { "ram", a, len, off };
	char c;

	if (a == MAP_FAILED || uffdsnap_join(&p, sock, &jr, 1)) {
		fprintf(stderr, "participant: %s\n", uffdsnap_last_error());
		return write(ACK_FD, "E", 1) == 1 ? 1 : 2;
	}
	if (write(ACK_FD, "J", 1) != 1)
		return 1;
	while (read(CMD_FD, &c, 1) == 1) {
		if (c == 'W') {
			for (size_t i = 0; i < len / ps; i++)
				a[i * ps + 16] ^= 0xa5;
			c = 'D';
		} else if (c == 'F') {
			/* a child writes: tracked through the fork event of our userfaultfd */
			pid_t pid = fork();
			int st = 0;

			if (!pid) {
				for (size_t i = 0; i < len / ps; i++)
					a[i * ps + 40] ^= 0x5a;
				_exit(0);
			}
			c = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && !WEXITSTATUS(st) ? 'D' : 'E';
		} else if (c == 'L') {
			uffdsnap_leave(p);
			p = NULL;
			c = 'l';
		}
		if (write(ACK_FD, &c, 1) != 1)
			return 1;
	}
	uffdsnap_leave(p);
	return 0;
}

/* ---- the coordinator's side ----------------------------------------------------- */

struct member {
	pid_t pid;
	int cmd, ack;
};

static void spawn(struct member *m, const char *sock, int memfd, size_t off, size_t len)
{
	int cmd[2], ack[2];
	char o[32], l[32];

	ck_assert(!pipe2(cmd, O_CLOEXEC) && !pipe2(ack, O_CLOEXEC));
	snprintf(o, sizeof(o), "%zu", off);
	snprintf(l, sizeof(l), "%zu", len);
	m->pid = fork();
	ck_assert(m->pid >= 0);
	if (!m->pid) {
		char *argv[] = { "test-participant", "participant", (char *)sock, o, l, NULL };
		alarm(120);
		if (dup2(memfd, MEM_FD) < 0 || dup2(cmd[0], CMD_FD) < 0 || dup2(ack[1], ACK_FD) < 0)
			_exit(3);
		execv("/proc/self/exe", argv);
		_exit(4);
	}
	close(cmd[0]);
	close(ack[1]);
	m->cmd = cmd[1], m->ack = ack[0];
}

/* The participant's next answer; fails the test unless it is `want`. */
static void expect(struct member *m, char want, const char *what)
{
	char c = 0;

	usnap_watchdog(60, what);
	ck_assert_msg(read(m->ack, &c, 1) == 1 && c == want, "%s: participant %d answered '%c', want '%c'", what,
		      (int)m->pid, c, want);
	usnap_watchdog(150, "test");
}

static void send_cmd(struct member *m, char c)
{
	ck_assert(write(m->cmd, &c, 1) == 1);
}

static void reap(struct member *m)
{
	int st;

	close(m->cmd);
	close(m->ack);
	st = usnap_wait_child(m->pid, 20, "participant");
	ck_assert_msg(WIFEXITED(st) || WIFSIGNALED(st), "participant status %d", st);
}

struct coord {
	struct usnap_mem m;
	uint8_t *ref;
	char dir[PATH_MAX], sock[PATH_MAX + 16];
	uffdsnap_t *ctx;
	struct usnap_cb cb;
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st;
};

static void coord_new(struct coord *c, uint32_t flags)
{
	uffdsnap_opts_t o;

	memset(c, 0, sizeof(*c));
	usnap_memfd(&c->m, LEN);
	usnap_fill_random(c->m.addr, LEN, 131);
	c->ref = usnap_mem_copy(&c->m);
	usnap_tmpdir(c->dir);
	snprintf(c->sock, sizeof(c->sock), "%s/sock", c->dir);
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB;
	o.flags = flags;
	c->ctx = usnap_ctx_new(&o);
	usnap_add(c->ctx, "ram", c->m.addr, LEN);
	ck_assert_msg(uffdsnap_listen(c->ctx, c->sock) == 0, "listen: %s", uffdsnap_last_error());
}

static int coord_finish(struct coord *c)
{
	return usnap_finish_stalled(c->s, &c->cb, &c->st, "participants");
}

static void coord_free(struct coord *c)
{
	if (c->s)
		uffdsnap_snap_free(c->s);
	uffdsnap_free(c->ctx);
	if (c->s)
		usnap_cb_destroy(&c->cb);
	usnap_rmdir(c->dir);
	usnap_buf_free(c->ref, LEN);
	usnap_mem_free(&c->m);
}

static void wait_count(struct coord *c, int n)
{
	for (int i = 0; i < 2000 && uffdsnap_participant_count(c->ctx) != n; i++)
		usleep(1000);
	ck_assert_int_eq(uffdsnap_participant_count(c->ctx), n);
}

static void writers(unsigned n)
{
	struct member m[4];
	struct coord c;
	struct usnap_expect ex;
	int r;

	coord_new(&c, 0);
	for (unsigned i = 0; i < n; i++) {
		spawn(&m[i], c.sock, c.m.fd, i * (LEN / n), LEN / n);
		expect(&m[i], 'J', "join");
	}
	wait_count(&c, (int)n);
	c.s = usnap_begin_stalled(c.ctx, &c.cb, 20000);
	for (unsigned i = 0; i < n; i++)
		send_cmd(&m[i], 'W');
	for (unsigned i = 0; i < n; i++)
		expect(&m[i], 'D', "writing");
	r = coord_finish(&c);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(c.s));
	ck_assert_msg(c.st.pages_fault > 0, "no store of a participant waited for its copy");
	ex = (struct usnap_expect){ "ram", c.ref, LEN };
	usnap_check_buffer(c.cb.mem, c.cb.mem_len, &ex, 1);
	ck_assert_msg(memcmp(c.m.addr, c.ref, LEN), "the participants' stores did not reach the memory");
	printf("%u participant(s): %llu pages copied for their stores, snapshot exact\n", n,
	       (unsigned long long)c.st.pages_fault);
	for (unsigned i = 0; i < n; i++)
		reap(&m[i]);
	wait_count(&c, 0);
	coord_free(&c);
}

START_TEST(one_participant) { usnap_watchdog(150, "one_participant"); writers(1); }
END_TEST

START_TEST(four_participants) { usnap_watchdog(150, "four_participants"); writers(4); }
END_TEST

START_TEST(participant_killed)
{
	struct member m;
	struct coord c;
	struct usnap_expect ex;
	int r;

	usnap_watchdog(150, "participant_killed");
	coord_new(&c, 0);
	spawn(&m, c.sock, c.m.fd, 0, LEN);
	expect(&m, 'J', "join");
	wait_count(&c, 1);
	usnap_cb_init(&c.cb, -1);
	c.cb.keep = true;
	usnap_cb_gate(&c.cb, true);
	r = uffdsnap_begin(c.ctx, usnap_cb_sink(&c.cb), &c.s);
	ck_assert_msg(r == 0, "begin: %s", uffdsnap_last_error());
	send_cmd(&m, 'W');
	/* its stores wait: the sink is shut and the buffers fill up */
	for (int i = 0; i < 5000 && (usnap_stats(c.s, &c.st), !c.cb.blocked || !c.st.faults); i++)
		usleep(1000);
	ck_assert(c.st.faults > 0);
	kill(m.pid, SIGKILL);
	reap(&m);
	usnap_cb_gate(&c.cb, false);
	r = coord_finish(&c);
	ck_assert_msg(r == 0, "wait after the participant died: %d %s", r, uffdsnap_snap_error(c.s));
	ex = (struct usnap_expect){ "ram", c.ref, LEN };
	usnap_check_buffer(c.cb.mem, c.cb.mem_len, &ex, 1);
	wait_count(&c, 0);
	coord_free(&c);
}
END_TEST

/* The coordinator is a child here; this process joins it. */
START_TEST(coordinator_killed)
{
	struct usnap_mem m;
	int ready[2], st;
	char sock[PATH_MAX + 16], dir[PATH_MAX], c = 0;
	uffdsnap_participant_t *p;
	uffdsnap_join_region_t jr;
	uint8_t *b;
	pid_t pid;

	usnap_watchdog(150, "coordinator_killed");
	usnap_memfd(&m, LEN);
	usnap_fill_random(m.addr, LEN, 132);
	usnap_tmpdir(dir);
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	b = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0);
	ck_assert(b != MAP_FAILED);
	ck_assert(!pipe(ready));
	pid = fork();
	ck_assert(pid >= 0);
	if (!pid) {
		uffdsnap_t *ctx;
		uffdsnap_snap_t *s;
		struct usnap_cb cb;

		alarm(60);
		munmap(b, LEN); /* only the participant's mapping is the participant's */
		if (uffdsnap_new(&ctx, NULL) || uffdsnap_add_region(ctx, "ram", m.addr, LEN) < 0 ||
		    uffdsnap_listen(ctx, sock) || write(ready[1], "L", 1) != 1)
			_exit(1);
		while (uffdsnap_participant_count(ctx) != 1)
			usleep(1000);
		usnap_cb_init(&cb, -1);
		usnap_cb_gate(&cb, true); /* nothing is ever copied */
		if (uffdsnap_begin(ctx, usnap_cb_sink(&cb), &s) || write(ready[1], "B", 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	ck_assert(read(ready[0], &c, 1) == 1 && c == 'L');
	jr = (uffdsnap_join_region_t){ "ram", b, LEN, 0 };
	ck_assert_msg(uffdsnap_join(&p, sock, &jr, 1) == 0, "join: %s", uffdsnap_last_error());
	ck_assert(read(ready[0], &c, 1) == 1 && c == 'B');
	ck_assert_msg(usnap_pagemap_protected(b, LEN) > 0, "begin did not protect the participant's mapping");
	kill(pid, SIGKILL);
	st = usnap_wait_child(pid, 10, "coordinator");
	ck_assert(WIFSIGNALED(st));
	/* the coordinator held the only reference to our userfaultfd: its death
	 * dropped every protection, so these stores cannot wait */
	usnap_watchdog(5, "a store after the coordinator died");
	for (size_t i = 0; i < LEN / usnap_page; i++)
		b[i * usnap_page] ^= 1;
	usnap_watchdog(150, "coordinator_killed");
	ck_assert_int_eq(usnap_pagemap_protected(b, LEN), 0);
	printf("coordinator_killed: every page of the participant written at once after the kill\n");
	uffdsnap_leave(p);
	munmap(b, LEN);
	usnap_rmdir(dir);
	usnap_mem_free(&m);
}
END_TEST

/* The participant forks during the snapshot and its child writes every page:
 * the child is followed through the fork event of the participant's own
 * userfaultfd (its privileges: CAP_SYS_PTRACE here). */
START_TEST(participant_forks)
{
	struct member m;
	struct coord c;
	struct usnap_expect ex;
	int r;

	usnap_watchdog(150, "participant_forks");
	coord_new(&c, 0);
	if (!(uffdsnap_features(c.ctx) & UFFD_FEATURE_EVENT_FORK)) {
		coord_free(&c);
		return usnap_skip("participant_forks", "no fork events without CAP_SYS_PTRACE");
	}
	spawn(&m, c.sock, c.m.fd, 0, LEN);
	expect(&m, 'J', "join");
	wait_count(&c, 1);
	c.s = usnap_begin_stalled(c.ctx, &c.cb, 20000);
	send_cmd(&m, 'F');
	expect(&m, 'D', "the forked child writing");
	r = coord_finish(&c);
	ck_assert_msg(r == 0, "wait: %d %s", r, uffdsnap_snap_error(c.s));
	ck_assert_msg(c.st.forks >= 1, "the participant's fork was not followed");
	ck_assert_msg(c.st.pages_fault > 0, "no store of the child waited for its copy");
	ex = (struct usnap_expect){ "ram", c.ref, LEN };
	usnap_check_buffer(c.cb.mem, c.cb.mem_len, &ex, 1);
	printf("participant_forks: %llu fork(s) followed, %llu pages copied for the child's stores, exact\n",
	       (unsigned long long)c.st.forks, (unsigned long long)c.st.pages_fault);
	reap(&m);
	coord_free(&c);
}
END_TEST

START_TEST(join_mid_snapshot)
{
	struct member m;
	struct coord c;
	int r;

	usnap_watchdog(150, "join_mid_snapshot");
	coord_new(&c, 0);
	c.s = usnap_begin_stalled(c.ctx, &c.cb, 20000);
	spawn(&m, c.sock, c.m.fd, 0, LEN);
	expect(&m, 'J', "join");
	r = coord_finish(&c);
	ck_assert_msg(r == -EBUSY && strstr(uffdsnap_snap_error(c.s), "joined while the snapshot ran"),
		      "a join mid-snapshot: wait returned %d (%s)", r, uffdsnap_snap_error(c.s));
	printf("join_mid_snapshot: %s\n", uffdsnap_snap_error(c.s));
	reap(&m);
	coord_free(&c);
}
END_TEST

START_TEST(refusals)
{
	struct usnap_mem other;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_participant_t *p;
	uffdsnap_join_region_t jr;
	struct coord c;
	char junk[64], reply[300];
	int fd, r;

	usnap_watchdog(60, "refusals");
	coord_new(&c, 0);
	jr = (uffdsnap_join_region_t){ "nope", c.m.addr, LEN, 0 };
	r = uffdsnap_join(&p, c.sock, &jr, 1);
	printf("unknown region: %d %s\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -ENOENT);
	usnap_memfd(&other, LEN);
	jr = (uffdsnap_join_region_t){ "ram", other.addr, LEN, 0 };
	r = uffdsnap_join(&p, c.sock, &jr, 1);
	printf("another file: %d %s\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EINVAL);
	jr = (uffdsnap_join_region_t){ "ram", c.m.addr, LEN, usnap_page };
	ck_assert_int_eq(uffdsnap_join(&p, c.sock, &jr, 1), -EINVAL); /* past the region's end */
	/* garbage, and a silent client that hangs up */
	memcpy(sa.sun_path, c.sock, strlen(c.sock));
	fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	ck_assert(!connect(fd, (struct sockaddr *)&sa, sizeof(sa)));
	memset(junk, 0x41, sizeof(junk));
	ck_assert(write(fd, junk, sizeof(junk)) == sizeof(junk));
	r = (int)read(fd, reply, sizeof(reply));
	ck_assert_msg(r > 4 && *(int32_t *)reply == -EPROTO, "garbage answered %d bytes", r);
	close(fd);
	fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	ck_assert(!connect(fd, (struct sockaddr *)&sa, sizeof(sa)));
	close(fd);
	/* a second coordinator may not take the socket over */
	{
		uffdsnap_t *ctx2 = usnap_ctx_new(NULL);
		ck_assert_int_eq(uffdsnap_listen(ctx2, c.sock), -EADDRINUSE);
		uffdsnap_free(ctx2);
	}
	ck_assert_int_eq(uffdsnap_participant_count(c.ctx), 0);
	usnap_mem_free(&other);
	coord_free(&c);
}
END_TEST

/* In a child: become uid/gid 65534, keeping (as effective) only the
 * capabilities in keep; then join with the whole region and return what the
 * join said, and its message on stdout. */
static int join_as_nobody(struct coord *c, uint64_t keep)
{
	struct __user_cap_header_struct hd = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { { 0 } };
	uffdsnap_join_region_t jr = { "ram", c->m.addr, LEN, 0 };
	uffdsnap_participant_t *p = NULL;
	int r;

	if (prctl(PR_SET_KEEPCAPS, 1) || setgroups(0, NULL) || setgid(65534) || setuid(65534))
		return 100;
	d[0].effective = d[0].permitted = (uint32_t)keep;
	d[1].effective = d[1].permitted = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hd, d))
		return 101;
	r = uffdsnap_join(&p, c->sock, &jr, 1);
	printf("join as uid 65534 (capabilities 0x%llx): %d \"%s\"\n", (unsigned long long)keep, r,
	       uffdsnap_last_error());
	fflush(stdout);
	uffdsnap_leave(p);
	return -r;
}

static int child_join_as_nobody(struct coord *c, uint64_t keep)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (!pid)
		_exit(join_as_nobody(c, keep));
	int st = usnap_wait_child(pid, 30, "join as nobody");

	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) < 100, "the child could not drop privileges (status 0x%x)", st);
	return -WEXITSTATUS(st);
}

START_TEST(join_not_permitted)
{
	struct coord c;
	int r;

	usnap_watchdog(60, "join_not_permitted");
	usnap_test_require_root();
	coord_new(&c, 0);
	/* no privilege at all: vm.unprivileged_userfaultfd=0 and a root-only
	 * /dev/userfaultfd leave it only a user-mode-only descriptor, which
	 * would turn the program's read(2) into its memory into EFAULT */
	r = child_join_as_nobody(&c, 0);
	ck_assert_msg(r == -EPERM, "unprivileged join: %d", r);
	/* it may handle kernel-mode faults (and reach the socket), but runs
	 * as another uid: the coordinator refuses it (SO_PEERCRED) */
	r = child_join_as_nobody(&c, (1ull << CAP_SYS_PTRACE) | (1ull << CAP_DAC_OVERRIDE));
	ck_assert_msg(r == -EACCES, "join from another uid: %d", r);
	ck_assert_int_eq(uffdsnap_participant_count(c.ctx), 0);
	/* and still accepts a process that may join (this one, with the
	 * coordinator's mapping: only joined and left here) */
	{
		uffdsnap_join_region_t jr = { "ram", c.m.addr, LEN, 0 };
		uffdsnap_participant_t *p;
		ck_assert_int_eq(uffdsnap_join(&p, c.sock, &jr, 1), 0);
		wait_count(&c, 1);
		uffdsnap_leave(p);
		wait_count(&c, 0);
	}
	coord_free(&c);
}
END_TEST

START_TEST(strict_counts_participants)
{
	struct member m;
	struct coord c;
	int r;

	usnap_watchdog(150, "strict_counts_participants");
	coord_new(&c, UFFDSNAP_OPT_STRICT);
	spawn(&m, c.sock, c.m.fd, 0, LEN);
	expect(&m, 'J', "join");
	wait_count(&c, 1);
	usnap_cb_init(&c.cb, -1);
	c.cb.keep = true;
	r = uffdsnap_begin(c.ctx, usnap_cb_sink(&c.cb), &c.s);
	ck_assert_msg(r == 0, "STRICT begin with a participant mapping the file: %d %s", r, uffdsnap_last_error());
	ck_assert_int_eq(coord_finish(&c), 0);
	reap(&m);
	coord_free(&c);
}
END_TEST

int main(int argc, char **argv)
{
	Suite *s;
	TCase *tc, *fork;

	if (argc > 4 && !strcmp(argv[1], "participant"))
		return participant_main(argv);
	s = suite_create("participant");
	tc = tcase_create("participant");
	usnap_test_require_uffd();
	tcase_set_timeout(tc, 160);
	tcase_add_test(tc, one_participant);
	tcase_add_test(tc, four_participants);
	tcase_add_test(tc, participant_killed);
	tcase_add_test(tc, coordinator_killed);
	tcase_add_test(tc, join_mid_snapshot);
	tcase_add_test(tc, refusals);
	tcase_add_test(tc, join_not_permitted);
	tcase_add_test(tc, strict_counts_participants);
	suite_add_tcase(s, tc);
	fork = tcase_create("fork"); /* skips without fork events: a meson test of its own */
	tcase_set_timeout(fork, 160);
	tcase_set_tags(fork, "fork");
	tcase_add_test(fork, participant_forks);
	suite_add_tcase(s, fork);
	return usnap_run_suite(s);
}
