/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the participant protocol (lib/participant.c), both ends:
 *
 *  - input[0] even: what a hostile participant sends a coordinator. A
 *    coordinator (a context with one 256 KiB memfd region "r" and a private
 *    region "p", listening) receives the rest of the input as one join
 *    message, with a real userfaultfd attached when input[0] & 2, an eventfd
 *    instead when input[0] & 4 (not a userfaultfd: must be refused), and a
 *    second descriptor (an eventfd) in the same message when input[0] & 8
 *    (must be refused, and both closed). Addresses below
 *    1 MiB in the mapping records are taken as offsets into this process's
 *    second mapping of the region's file ("repaired"), so valid joins are
 *    reachable. Oracle: the reply is one struct, an error is a -errno with a
 *    message, and a join the coordinator accepts names region "r" with
 *    mappings that really lie in that second mapping at their stated offsets;
 *    after the hang-up the participant count returns to 0; this process
 *    (coordinator and participant in one) holds as many descriptors after
 *    each input as before the first.
 *  - input[0] odd: what a hostile coordinator answers. A fake coordinator
 *    sends the rest of the input as its one reply message, to uffdsnap_join()
 *    when input[0] & 2, else to the agent's region query. Oracle: the join
 *    fails with a -errno in range and a message, or succeeds only on a reply
 *    whose err is 0; the query returns at most what fits, names terminated.
 *
 * A finding is a crash, a sanitizer report, a hang, or a broken oracle
 * (abort). Built with clang -fsanitize=fuzzer (tests/fuzz/build-participant.sh)
 * and with corpus-main.c as the `fuzz-participant-corpus` test over
 * tests/fuzz/corpus-participant/. Needs a userfaultfd (root): exits 77 without.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "uffdsnap.h"
#include "participant.h"
#include "uffdsnap-private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REGION (256u << 10)
#define REBASE (1u << 20)

static uffdsnap_t *ctx;
static int memfd = -1;
static uint8_t *mine;          /* the coordinator's region: also a mapping of the file in the
				* "participant's" address space, which is this process too */
static uint8_t *second;        /* this process's other mapping of the region's file */
static char coord_path[108], fake_path[108];
static int fake_sock = -1;

/* libFuzzer ends with exit(): the sockets must not stay behind in /tmp */
static void teardown(void)
{
	uffdsnap_free(ctx); /* unlinks coord_path */
	if (fake_sock >= 0)
		close(fake_sock);
	unlink(fake_path);
}

static void setup(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint8_t *priv;
	int r;

	snprintf(coord_path, sizeof(coord_path), "/tmp/usnap-fuzz-part-%d.sock", (int)getpid());
	snprintf(fake_path, sizeof(fake_path), "/tmp/usnap-fuzz-fake-%d.sock", (int)getpid());
	r = uffdsnap_new(&ctx, NULL);
	if (r == -EPERM || r == -EACCES || r == -ENOSYS || r == -EOPNOTSUPP) {
		printf("SKIP: no userfaultfd here: %s\n", uffdsnap_last_error());
		exit(77);
	}
	memfd = memfd_create("fuzz-part", MFD_CLOEXEC);
	if (r || memfd < 0 || ftruncate(memfd, REGION)) {
		fprintf(stderr, "setup: %d %s\n", r, uffdsnap_last_error());
		abort();
	}
	mine = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	second = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	priv = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mine == MAP_FAILED || second == MAP_FAILED || priv == MAP_FAILED ||
	    uffdsnap_add_region(ctx, "r", mine, REGION) < 0 || uffdsnap_add_region(ctx, "p", priv, 64 << 10) < 0 ||
	    uffdsnap_listen(ctx, coord_path)) {
		fprintf(stderr, "setup: %s\n", uffdsnap_last_error());
		abort();
	}
	memcpy(sa.sun_path, fake_path, strlen(fake_path));
	unlink(fake_path);
	fake_sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fake_sock < 0 || bind(fake_sock, (struct sockaddr *)&sa, sizeof(sa)) || listen(fake_sock, 4))
		abort();
	atexit(teardown);
}

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		abort();
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static int uffd_new(void)
{
	return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

/* ---- a hostile participant ----------------------------------------------------- */

static void wait_no_members(void)
{
	for (int i = 0; i < 5000 && uffdsnap_participant_count(ctx) != 0; i++)
		usleep(200);
	if (uffdsnap_participant_count(ctx) != 0) {
		fprintf(stderr, "a member that hung up is still counted\n");
		abort();
	}
}

/* An accepted join must be what the coordinator promises to check. */
static void check_accepted(const uint8_t *msg, size_t n)
{
	const struct usnap_join_hdr *h = (const void *)msg;

	if (n < sizeof(*h) || !h->nmaps || n != sizeof(*h) + h->nmaps * sizeof(struct usnap_join_map)) {
		fprintf(stderr, "accepted a join of %zu bytes\n", n);
		abort();
	}
	for (unsigned i = 0; i < h->nmaps; i++) {
		const struct usnap_join_map *m = (const void *)(msg + sizeof(*h) + i * sizeof(struct usnap_join_map));
		/* either mapping of the file at offset 0 is a true claim */
		uintptr_t lo = m->addr >= (uintptr_t)mine && m->addr < (uintptr_t)mine + REGION ? (uintptr_t)mine
											   : (uintptr_t)second,
			  hi = lo + REGION;

		if (strcmp(m->name, "r") || !m->len || m->addr < lo || m->len > hi - m->addr ||
		    m->addr - lo != m->offset) {
			fprintf(stderr, "accepted mapping %u: '%.*s' 0x%llx+0x%llx at region offset 0x%llx, "
				"but region 'r' is mapped at 0x%lx+0x%x\n", i, (int)sizeof(m->name), m->name,
				(unsigned long long)m->addr, (unsigned long long)m->len,
				(unsigned long long)m->offset, (unsigned long)lo, REGION);
			abort();
		}
	}
}

static void as_participant(uint8_t mode, const uint8_t *data, size_t size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(2 * sizeof(int))];
	} cm;
	uint8_t *msg = malloc(size ? size : 1);
	struct iovec iov = { msg, size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct usnap_join_reply reply;
	int fd = -1, fd2 = -1, conn;
	ssize_t got;

	if (!msg)
		abort();
	memcpy(msg, data, size);
	/* small addresses point into the second mapping */
	for (size_t off = sizeof(struct usnap_join_hdr); off + sizeof(struct usnap_join_map) <= size;
	     off += sizeof(struct usnap_join_map)) {
		struct usnap_join_map m;
		memcpy(&m, msg + off, sizeof(m));
		if (m.addr < REBASE) {
			m.addr += (uintptr_t)second;
			memcpy(msg + off, &m, sizeof(m));
		}
	}
	if (mode & 4)
		fd = eventfd(0, EFD_CLOEXEC);
	else if (mode & (2 | 8))
		fd = uffd_new();
	if (mode & 8)
		fd2 = eventfd(0, EFD_CLOEXEC);
	if (fd >= 0) {
		int fds[2] = { fd, fd2 };
		size_t k = fd2 >= 0 ? 2 : 1;
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = &cm;
		mh.msg_controllen = CMSG_SPACE(k * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(k * sizeof(int));
		memcpy(CMSG_DATA(c), fds, k * sizeof(int));
	}
	memcpy(sa.sun_path, coord_path, strlen(coord_path));
	conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (conn < 0 || connect(conn, (struct sockaddr *)&sa, sizeof(sa)))
		abort();
	if (sendmsg(conn, &mh, MSG_NOSIGNAL) < 0 && errno != EMSGSIZE)
		abort();
	if (fd >= 0)
		close(fd);
	if (fd2 >= 0)
		close(fd2);
	while ((got = recv(conn, &reply, sizeof(reply), 0)) < 0 && errno == EINTR)
		; /* libFuzzer's timer */
	if (size == sizeof(struct usnap_join_hdr) && ((const struct usnap_join_hdr *)msg)->magic == USNAP_QUERY_MAGIC) {
		/* the agent's region query: answered with the region table */
	} else if (got == (ssize_t)sizeof(reply)) {
		if (reply.err > 0 || reply.err < -4095 || (reply.err && !memchr(reply.msg, '\0', sizeof(reply.msg))) ||
		    (reply.err && !reply.msg[0])) {
			fprintf(stderr, "reply err %d without a proper message\n", reply.err);
			abort();
		}
		if (!reply.err) {
			if (mode & 8) {
				fprintf(stderr, "accepted a join that came with two descriptors\n");
				abort();
			}
			check_accepted(msg, size);
			if (uffdsnap_participant_count(ctx) != 1) {
				fprintf(stderr, "accepted, but %d members\n", uffdsnap_participant_count(ctx));
				abort();
			}
		}
	} else {
		fprintf(stderr, "reply of %zd bytes (%s)\n", got, got < 0 ? strerror(errno) : "");
		abort();
	}
	close(conn);
	wait_no_members();
	free(msg);
}

/* ---- a hostile coordinator ----------------------------------------------------- */

struct fake {
	const uint8_t *reply;
	size_t n;
};

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 4)];
	} cm;
	uint8_t buf[sizeof(struct usnap_join_hdr) + 64 * sizeof(struct usnap_join_map)];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm) };
	int conn = accept4(fake_sock, NULL, NULL, SOCK_CLOEXEC);

	if (conn < 0)
		abort();
	if (recvmsg(conn, &mh, MSG_CMSG_CLOEXEC) >= 0)
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) {
					int fd;
					memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
					close(fd);
				}
	if (send(conn, f->reply, f->n, MSG_NOSIGNAL) < 0 && errno != EMSGSIZE && errno != EPIPE)
		abort();
	close(conn);
	return NULL;
}

static void as_coordinator(uint8_t mode, const uint8_t *data, size_t size)
{
	struct fake f = { data, size };
	pthread_t t;

	if (pthread_create(&t, NULL, fake_main, &f))
		abort();
	if (mode & 2) {
		static uint8_t page[4096] __attribute__((aligned(4096)));
		uffdsnap_join_region_t jr = { "r", page, sizeof(page), 0 };
		uffdsnap_participant_t *p = NULL;
		int r = uffdsnap_join(&p, fake_path, &jr, 1);
		struct usnap_join_reply rep = { 0 };

		memcpy(&rep, data, size < sizeof(rep) ? size : sizeof(rep));
		if (r > 0 || r < -4095 || (r && !uffdsnap_last_error()[0]) || (r && p) || (!r && !p) ||
		    (!r && (size < sizeof(rep) || rep.err))) {
			fprintf(stderr, "join answered %d (%s) to a reply of %zu bytes, err %d\n", r,
				uffdsnap_last_error(), size, rep.err);
			abort();
		}
		uffdsnap_leave(p);
	} else {
		struct usnap_query_region q[4];
		int r = usnap_query_regions(fake_path, q, 4);

		if (r > 4 || r < -4095) {
			fprintf(stderr, "query answered %d\n", r);
			abort();
		}
		for (int i = 0; i < r; i++)
			if (!memchr(q[i].name, '\0', sizeof(q[i].name)))
				abort();
	}
	pthread_join(t, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fds;

	if (!ctx) {
		setup();
		fds = fd_count();
	}
	if (!size || size > sizeof(struct usnap_join_hdr) + 80 * sizeof(struct usnap_join_map))
		return 0;
	if (data[0] & 1)
		as_coordinator(data[0], data + 1, size - 1);
	else
		as_participant(data[0], data + 1, size - 1);
	/* the coordinator closes its end after replying: give it a moment */
	for (int i = 0; i < 5000 && fd_count() != fds; i++)
		usleep(200);
	if (fd_count() != fds) {
		fprintf(stderr, "%d descriptors open, %d before\n", fd_count(), fds);
		abort();
	}
	return 0;
}
