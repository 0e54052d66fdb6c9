/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lazy restore for another process over a Unix socket: the page server
 * (uffdsnap_serve_conn, behind `uffdsnap serve`) and its client
 * (uffdsnap_lazy_connect/_client_wait/_client_error/_client_free).
 *
 * The client opens a userfaultfd, checks and registers its regions itself (in
 * its own address space), and sends the descriptor with SCM_RIGHTS together
 * with the region table. The server runs the lazy-restore engine of
 * restore-lazy.c on that descriptor: userfaultfd ioctls act on the mm of the
 * process that created the descriptor, so UFFDIO_COPY from the server's
 * buffers lands in the client's memory. The client keeps its own copy of the
 * descriptor on purpose: if the server dies, the client's watcher thread sees
 * the socket close before the final status, poisons every page that did not
 * arrive and wakes the waiting threads, which then get SIGBUS. Without that
 * copy the kernel would release the registration and fill the missing pages
 * with zeros: wrong data without an error. (A kernel without UFFDIO_POISON
 * cannot poison: there the watcher keeps the registration and answers every
 * fault with SIGBUS itself, until uffdsnap_lazy_client_free().)
 *
 * Protocol (native byte order, both ends on one machine), on a SOCK_STREAM:
 *   client -> server: hello (with the fd), then nregions x (srv_region, name);
 *                     later, with SRV_HELLO_WAIT, one srv_wait when the
 *                     program first waits for the end of the restore
 *   server -> client: status STARTED (0 or the error setting up failed with),
 *                     then, if 0, with SRV_HELLO_STATS a status STATS (the
 *                     server's figures), and status FINISHED once every page
 *                     is resident or the restore failed.
 * The hello's flags are what the client understands beyond version 1's first
 * form: a server ignores flags it does not know, and never sends a client a
 * message the client did not ask for (an older client would take anything
 * but FINISHED for the server going away).
 * The request (hello and region table) must be in within opts->request_ms
 * of the call, or the server answers STARTED -ETIMEDOUT and hangs up.
 * A server that already serves max_clients connections from its reader
 * answers STARTED -EAGAIN at once, before it reads anything, and hangs up:
 * a refusal costs it no wait on a client that is slow to send, and the
 * client, whose sending may then fail, still finds the answer to read.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "reader-private.h"
#include "restore-private.h"
#include "uffd.h"
#include "uffdsnap-private.h"

#define SRV_MAGIC "USNAPSRV"
#define SRV_VERSION 1
#define SRV_STARTED 1
#define SRV_FINISHED 2
#define SRV_STATS 3
#define SRV_WAIT 4

/* srv_hello.flags */
#define SRV_HELLO_WAIT (1u << 0)  /* the client sends srv_wait: a no-prefetch server waits for it */
#define SRV_HELLO_STATS (1u << 1) /* the client reads a STATS status before FINISHED */

struct srv_hello {
	char magic[8];
	uint32_t version;
	uint32_t nregions;      /* 1..USNAP_MAX_REGIONS */
	uint32_t flags;         /* SRV_HELLO_*; 0 from the first clients */
	uint32_t page_size;
	uint64_t features;      /* UFFD_FEATURE_* negotiated on the descriptor */
};

struct srv_region {
	uint64_t addr, len;
	uint32_t name_len;      /* 1..USNAP_MAX_NAME bytes follow, no NUL */
	uint32_t unit_shift;    /* hugetlbfs: log2 of its huge page size; 0: pages (and from the first clients) */
};

/* The server's uffdsnap_lazy_stats_t, as far as the protocol carries it. */
struct srv_stats {
	int32_t state;
	uint32_t reserved;
	uint64_t start_ns, resident_ns, pages_total, pages_fault, pages_prefetch, pages_zero_fault, faults,
		 chunks_fault, chunks_prefetch;
};

struct srv_status {
	uint32_t kind;          /* SRV_STARTED, SRV_STATS, SRV_FINISHED */
	int32_t status;         /* 0 or a negative errno */
	union {
		char msg[504];  /* STARTED, FINISHED: NUL-terminated */
		struct srv_stats stats;
	};
};

struct srv_wait {
	uint32_t kind;          /* SRV_WAIT */
	uint32_t reserved;
};

_Static_assert(sizeof(struct srv_hello) == 32 && sizeof(struct srv_region) == 24 &&
	       sizeof(struct srv_status) == 512 && sizeof(struct srv_wait) == 8, "protocol layout");

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EPIPE;
		p += n, len -= (size_t)n;
	}
	return 0;
}

/* 0, -EPIPE at a clean end of the stream before len bytes, or -errno. */
static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EPIPE;
		p += n, len -= (size_t)n;
	}
	return 0;
}

static int send_status(int fd, uint32_t kind, int status, const char *msg)
{
	struct srv_status st = { .kind = kind, .status = status };

	snprintf(st.msg, sizeof(st.msg), "%s", msg);
	return write_all(fd, &st, sizeof(st));
}

/* ---- the server ----------------------------------------------------------------- */

static void send_stats(int fd, const uffdsnap_lazy_t *lz)
{
	uffdsnap_lazy_stats_t st = { .size = sizeof(st) };
	struct srv_status m = { .kind = SRV_STATS };

	uffdsnap_lazy_stats(lz, &st);
	m.status = st.error;
	m.stats = (struct srv_stats){
		.state = st.state, .start_ns = st.start_ns, .resident_ns = st.resident_ns,
		.pages_total = st.pages_total, .pages_fault = st.pages_fault, .pages_prefetch = st.pages_prefetch,
		.pages_zero_fault = st.pages_zero_fault, .faults = st.faults, .chunks_fault = st.chunks_fault,
		.chunks_prefetch = st.chunks_prefetch,
	};
	(void)write_all(fd, &m, sizeof(m));
}

static bool is_uffd(int fd)
{
	char link[64], target[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	return n > 0 && (target[n] = '\0', !strcmp(target, "anon_inode:[userfaultfd]"));
}

/* A client's request (hello and region table) must be in by a deadline: a
 * connection that sends nothing would otherwise hold its thread and its
 * place among max_clients for as long as it stays open. */
struct srv_deadline {
	uint64_t at_ns;
	uint32_t ms;
};

static int request_late(const struct srv_deadline *d)
{
	return usnap_err(-ETIMEDOUT, "page server: the client did not send its request within %u ms: hung up on it",
			 d->ms);
}

/* Let the next receive on conn wait until the deadline at the latest; with
 * d NULL, for ever. */
static int rcv_budget(int conn, const struct srv_deadline *d)
{
	struct timeval tv = { 0 };
	uint64_t now = usnap_now_ns(), left_us;

	if (d && now >= d->at_ns)
		return request_late(d);
	if (d) {
		left_us = (d->at_ns - now) / 1000 + 1; /* never 0, which means for ever */
		tv = (struct timeval){ .tv_sec = (time_t)(left_us / 1000000), .tv_usec = (suseconds_t)(left_us % 1000000) };
	}
	if (setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)))
		return usnap_err(-errno, "page server: SO_RCVTIMEO: %s", strerror(errno));
	return 0;
}

/* The hello and its descriptor. */
static int recv_hello(int conn, struct srv_hello *h, int *uffd, const struct srv_deadline *d)
{
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct iovec iov = { .iov_base = h, .iov_len = sizeof(*h) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c;
	ssize_t n;
	int rc;

	*uffd = -1;
	if ((rc = rcv_budget(conn, d)))
		return rc;
	do
		n = recvmsg(conn, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EAGAIN)
		return request_late(d);
	if (n < 0)
		return usnap_err(-errno, "page server: receiving the hello: %s", strerror(errno));
	/* keep the first descriptor; any other one a client sent is closed, not leaked */
	for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
			if (*uffd < 0)
				*uffd = fd;
			else
				close(fd);
		}
	}
	if (*uffd >= 0 && !is_uffd(*uffd)) {
		close(*uffd);
		*uffd = -1;
		return usnap_err(-EBADF, "page server: the client sent a descriptor that is not a userfaultfd");
	}
	if ((size_t)n < sizeof(*h) && usnap_now_ns() >= d->at_ns) /* part of it, then the timeout */
		return request_late(d);
	if ((size_t)n != sizeof(*h) || memcmp(h->magic, SRV_MAGIC, sizeof(h->magic)) || h->version != SRV_VERSION)
		return usnap_err(-EPROTO, "page server: the client did not send a version %d hello", SRV_VERSION);
	if (*uffd < 0)
		return usnap_err(-EBADF, "page server: the hello came without a userfaultfd");
	if (!h->nregions || h->nregions > USNAP_MAX_REGIONS)
		return usnap_err(-EPROTO, "page server: %u regions", h->nregions);
	return 0;
}

/* len bytes of the region table. */
static int recv_table(int conn, void *buf, size_t len, const struct srv_deadline *d)
{
	int rc = rcv_budget(conn, d);

	if (!rc && (rc = read_all(conn, buf, len)))
		rc = rc == -EAGAIN ? request_late(d)
				   : usnap_err(rc, "page server: reading the region table: %s", strerror(-rc));
	return rc;
}

/* The region table; names point into *names, units (0: pages) into units. */
static int recv_regions(int conn, const struct srv_hello *h, uffdsnap_lazy_region_t *regs, char *names,
			size_t *units, const struct srv_deadline *d)
{
	for (uint32_t i = 0; i < h->nregions; i++) {
		struct srv_region g;
		int rc = recv_table(conn, &g, sizeof(g), d);

		if (rc)
			return rc;
		if (!g.name_len || g.name_len > USNAP_MAX_NAME || g.addr > UINTPTR_MAX || g.len > SIZE_MAX ||
		    (size_t)1 << (g.unit_shift & 63) > USNAP_LAZY_MAX_UNIT)
			return usnap_err(-EPROTO, "page server: region %u: name length %u, huge page shift %u", i,
					 g.name_len, g.unit_shift);
		units[i] = g.unit_shift ? (size_t)1 << g.unit_shift : 0;
		if ((rc = recv_table(conn, names, g.name_len, d)))
			return rc;
		names[g.name_len] = '\0';
		regs[i] = (uffdsnap_lazy_region_t){ .name = names, .addr = (void *)(uintptr_t)g.addr,
						    .len = (size_t)g.len };
		names += g.name_len + 1;
	}
	return 0;
}

/* Serve one connection of r, counted in r's clients by the caller. */
static int serve(uffdsnap_reader_t *r, int conn, const uffdsnap_lazy_opts_t *opts)
{
	uffdsnap_lazy_region_t *regs = NULL;
	size_t *units = NULL;
	uffdsnap_lazy_t *lz = NULL;
	struct ucred cred = { 0 };
	struct srv_deadline d = { .at_ns = usnap_now_ns() + opts->request_ms * UINT64_C(1000000),
				  .ms = opts->request_ms };
	struct srv_hello h;
	char *names = NULL;
	int uffd, rc;

	rc = recv_hello(conn, &h, &uffd, &d);
	if (!rc && (!(regs = calloc(h.nregions, sizeof(*regs))) || !(units = calloc(h.nregions, sizeof(*units))) ||
		    !(names = malloc((size_t)h.nregions * (USNAP_MAX_NAME + 1)))))
		rc = usnap_err(-ENOMEM, "out of memory");
	if (!rc)
		rc = recv_regions(conn, &h, regs, names, units, &d);
	/* from here the client takes its time: it says when it waits for the
	 * end whenever its program gets there */
	if (!rc)
		rc = rcv_budget(conn, NULL);
	/* the kernel's word for who the client is, not the client's: the
	 * SIGBUS fallback must not be aimed at another process */
	if (!rc && getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &(socklen_t){ sizeof(cred) }))
		rc = usnap_err(-errno, "page server: SO_PEERCRED: %s", strerror(errno));
	/* setup takes the descriptor over, even when it fails */
	if (!rc)
		rc = usnap_lazy_setup(&lz, r, uffd, h.features, cred.pid, regs, h.nregions, opts);
	else if (uffd >= 0)
		close(uffd);
	for (uint32_t i = 0; !rc && i < h.nregions; i++)
		if (units[i] && (rc = usnap_lazy_unit(lz, i, units[i])))
			usnap_lazy_abandon(lz);
	if (!rc && (rc = usnap_lazy_go(lz)))
		usnap_lazy_abandon(lz);
	free(regs);
	free(units);
	free(names);
	/* the client waits for this answer before it runs */
	send_status(conn, SRV_STARTED, rc, rc ? uffdsnap_last_error() : "");
	if (rc)
		return rc;
	/* as uffdsnap_lazy_wait() in-process: only faults are served until the
	 * client waits for the end, or hangs up (then nobody faults any more,
	 * and the prefetcher finds the process gone or everything placed) */
	if (opts->flags & UFFDSNAP_LAZY_NO_PREFETCH && h.flags & SRV_HELLO_WAIT) {
		struct srv_wait w;
		(void)read_all(conn, &w, sizeof(w));
	}
	rc = uffdsnap_lazy_wait(lz);
	if (h.flags & SRV_HELLO_STATS)
		send_stats(conn, lz);
	send_status(conn, SRV_FINISHED, rc, uffdsnap_lazy_error(lz));
	if (rc)
		usnap_err(rc, "%s", uffdsnap_lazy_error(lz));
	uffdsnap_lazy_free(lz);
	return rc;
}

USNAP_EXPORT int uffdsnap_serve_conn(uffdsnap_reader_t *r, int conn, const uffdsnap_lazy_opts_t *opts)
{
	_Atomic unsigned *clients;
	uffdsnap_lazy_opts_t o;
	int rc;

	usnap_clear_err();
	if (!r || conn < 0)
		return usnap_err(-EINVAL, "uffdsnap_serve_conn: a reader and a connection are needed");
	if ((rc = usnap_lazy_opts_get(opts, &o, "uffdsnap_serve_conn")))
		return rc;
	/* each client costs two threads, two reader clones and its descriptors
	 * for as long as its restore runs: a bound keeps a crowd from taking
	 * the server down */
	clients = usnap_reader_clients(r);
	if (atomic_fetch_add(clients, 1) < o.max_clients) {
		rc = serve(r, conn, &o);
	} else {
		rc = usnap_err(-EAGAIN, "refused: the server is serving its limit of %u client%s: try again later",
			       o.max_clients, o.max_clients == 1 ? "" : "s");
		send_status(conn, SRV_STARTED, rc, uffdsnap_last_error());
	}
	atomic_fetch_sub(clients, 1);
	return rc;
}

/* ---- the client --------------------------------------------------------------------- */

struct uffdsnap_lazy_client {
	int sock, uffd, efd;        /* efd: free() stops the watcher */
	uint64_t features;
	struct { uintptr_t addr; size_t len, unit; } *regs;
	unsigned nregs;
	pthread_t watcher;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int state;                  /* UFFDSNAP_LAZY_*, under lock */
	int err;
	char msg[512];
	uffdsnap_lazy_stats_t stats; /* the server's, once it sent them; under lock */
	_Atomic bool said_wait;
};

/* The server is gone before it finished: no page that has not arrived ever
 * will. Poison them all (present pages fail with EEXIST and are stepped
 * over), unregister, wake: every waiting thread gets SIGBUS. Without
 * UFFDIO_POISON the registration stays and only the wake is done: a fault
 * the dead server had read is raised again, for answer_faults(). */
static void client_abandon(uffdsnap_lazy_client_t *c)
{
	const bool poison = c->features & UFFD_FEATURE_POISON;

	for (unsigned i = 0; i < c->nregs; i++) {
		uintptr_t a = c->regs[i].addr;
		size_t len = c->regs[i].len;

		for (size_t off = 0; poison && off < len;) {
			int64_t updated;

			if (!usnap_uffd_poison(c->uffd, a + off, len - off, false, &updated))
				break;
			off += updated > 0 ? (size_t)updated : c->regs[i].unit; /* EEXIST: a page that did arrive */
		}
		if (poison)
			usnap_uffd_unregister(c->uffd, a, len); /* wakes too */
		else
			usnap_uffd_wake(c->uffd, a, len);
	}
}

/* After client_abandon() without UFFDIO_POISON: a thread touching a page that
 * did not arrive gets SIGBUS from here, until free() says stop. */
static void answer_faults(uffdsnap_lazy_client_t *c)
{
	struct pollfd pfd[2] = { { .fd = c->uffd, .events = POLLIN }, { .fd = c->efd, .events = POLLIN } };
	struct uffd_msg msgs[16];

	while (!(pfd[1].revents & POLLIN)) {
		ssize_t n = read(c->uffd, msgs, sizeof(msgs));

		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				syscall(SYS_tgkill, getpid(), (pid_t)msgs[i].arg.pagefault.feat.ptid, SIGBUS);
		if (n <= 0 && poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
	}
}

/* Until the final status; false if the server went away before it. */
static bool watch(uffdsnap_lazy_client_t *c)
{
	struct srv_status st;
	bool finished;
	int rc;

	while (!(rc = read_all(c->sock, &st, sizeof(st))) && st.kind == SRV_STATS) {
		pthread_mutex_lock(&c->lock);
		c->stats = (uffdsnap_lazy_stats_t){
			.size = sizeof(c->stats), .state = st.stats.state, .error = st.status,
			.start_ns = st.stats.start_ns, .resident_ns = st.stats.resident_ns,
			.pages_total = st.stats.pages_total, .pages_fault = st.stats.pages_fault,
			.pages_prefetch = st.stats.pages_prefetch, .pages_zero_fault = st.stats.pages_zero_fault,
			.faults = st.stats.faults, .chunks_fault = st.stats.chunks_fault,
			.chunks_prefetch = st.stats.chunks_prefetch,
		};
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_lock(&c->lock);
	finished = !rc && st.kind == SRV_FINISHED;
	if (finished) {
		c->err = st.status <= 0 && st.status >= -4095 ? st.status : -EPROTO;
		st.msg[sizeof(st.msg) - 1] = '\0';
		usnap_format(c->msg, sizeof(c->msg), "%s", st.msg); /* the server's words: escaped */
	} else {
		c->err = -EPIPE;
		snprintf(c->msg, sizeof(c->msg), "the page server went away before the restore was complete%s%s",
			 rc && rc != -EPIPE ? ": " : "", rc && rc != -EPIPE ? strerror(-rc) : "");
		/* before the SIGBUS it explains, which may end the process */
		usnap_log(USNAP_LAZY_FAILED_LOG, c->msg, strerror(-c->err));
		client_abandon(c);
	}
	c->state = c->err ? UFFDSNAP_LAZY_FAILED : UFFDSNAP_LAZY_DONE;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->lock);
	return finished;
}

static void *watcher_main(void *arg)
{
	uffdsnap_lazy_client_t *c = arg;

	if (!watch(c) && !(c->features & UFFD_FEATURE_POISON))
		answer_faults(c);
	return NULL;
}

static int send_hello(uffdsnap_lazy_client_t *c, const uffdsnap_lazy_region_t *regions, unsigned n)
{
	struct srv_hello h = { .version = SRV_VERSION, .nregions = n, .flags = SRV_HELLO_WAIT | SRV_HELLO_STATS,
			       .page_size = (uint32_t)sysconf(_SC_PAGESIZE), .features = c->features };
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} u = { 0 };
	struct iovec iov = { .iov_base = &h, .iov_len = sizeof(h) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	ssize_t sent;
	int rc = 0;

	memcpy(h.magic, SRV_MAGIC, sizeof(h.magic));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &c->uffd, sizeof(int));
	do
		sent = sendmsg(c->sock, &m, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	/* the fd goes with the first byte: send the rest of a short write plainly */
	if (sent < 0 || (rc = write_all(c->sock, (uint8_t *)&h + sent, sizeof(h) - (size_t)sent)))
		return usnap_err(sent < 0 ? -errno : rc, "sending to the page server: %s",
				 strerror(sent < 0 ? errno : -rc));
	for (unsigned i = 0; i < n && !rc; i++) {
		struct srv_region g = { .addr = (uintptr_t)regions[i].addr, .len = regions[i].len,
					.name_len = (uint32_t)strlen(regions[i].name),
					.unit_shift = c->regs[i].unit > h.page_size ? (uint32_t)__builtin_ctzl(c->regs[i].unit) : 0 };
		if (!(rc = write_all(c->sock, &g, sizeof(g))))
			rc = write_all(c->sock, regions[i].name, g.name_len);
	}
	return rc ? usnap_err(rc, "sending to the page server: %s", strerror(-rc)) : 0;
}

static void client_destroy(uffdsnap_lazy_client_t *c)
{
	if (c->sock >= 0)
		close(c->sock);
	if (c->uffd >= 0)
		close(c->uffd);
	if (c->efd >= 0)
		close(c->efd);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cv);
	free(c->regs);
	free(c);
}

USNAP_EXPORT int uffdsnap_lazy_connect(uffdsnap_lazy_client_t **cp, const char *socket_path,
				       const uffdsnap_lazy_region_t *regions, unsigned n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_client_t *c;
	struct srv_status st;
	int rc, sent;

	usnap_clear_err();
	if (!cp || !socket_path || !regions || !n || n > USNAP_MAX_REGIONS)
		return usnap_err(-EINVAL, "uffdsnap_lazy_connect: a socket path and 1..%d regions are needed",
				 USNAP_MAX_REGIONS);
	*cp = NULL;
	if (strlen(socket_path) >= sizeof(sa.sun_path))
		return usnap_err(-ENAMETOOLONG, "%s: too long for a Unix socket path", socket_path);
	for (unsigned i = 0; i < n; i++)
		if (!regions[i].name || !*regions[i].name || strlen(regions[i].name) > USNAP_MAX_NAME)
			return usnap_err(-EINVAL, "uffdsnap_lazy_connect: region %u needs a name of 1..%d bytes", i,
					 USNAP_MAX_NAME);
	if (!(c = calloc(1, sizeof(*c))))
		return usnap_err(-ENOMEM, "out of memory");
	c->sock = c->uffd = c->efd = -1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	strcpy(sa.sun_path, socket_path);
	if (!(c->regs = calloc(n, sizeof(*c->regs)))) {
		rc = usnap_err(-ENOMEM, "out of memory");
		goto fail;
	}
	if ((c->efd = eventfd(0, EFD_CLOEXEC)) < 0) {
		rc = usnap_err(-errno, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if ((c->uffd = usnap_restore_uffd(&c->features)) < 0) {
		rc = c->uffd;
		goto fail;
	}
	for (unsigned i = 0; i < n; i++) {
		if ((rc = usnap_lazy_arm(c->uffd, regions[i].name, regions[i].addr, regions[i].len, &c->regs[i].unit)))
			goto fail;
		c->regs[i].addr = (uintptr_t)regions[i].addr;
		c->regs[i].len = regions[i].len;
		c->nregs = i + 1;
	}
	/* connected only now: the server gives the request a deadline, and the
	 * emptiness checks above may take a while for large regions */
	if ((c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    connect(c->sock, (struct sockaddr *)&sa, sizeof(sa))) {
		rc = usnap_err(-errno, "connecting to the page server at %s: %s", socket_path, strerror(errno));
		goto fail;
	}
	/* a server that refuses us answers without reading and hangs up: when
	 * the sending failed for that, its answer is still there to read (and
	 * it cannot be a 0: that comes only after the whole request was read) */
	sent = send_hello(c, regions, n);
	if (sent && sent != -EPIPE && sent != -ECONNRESET) {
		rc = sent;
		goto fail;
	}
	if ((rc = read_all(c->sock, &st, sizeof(st)))) {
		/* no answer: the failed send says what went wrong, if one did */
		rc = sent ? sent
			  : usnap_err(rc == -EPIPE ? -ECONNRESET : rc, "the page server at %s hung up before it "
				      "answered", socket_path);
		goto fail;
	}
	if (st.kind != SRV_STARTED || st.status > 0 || st.status < -4095) {
		rc = usnap_err(-EPROTO, "the page server at %s answered with nonsense", socket_path);
		goto fail;
	}
	if (st.status) {
		st.msg[sizeof(st.msg) - 1] = '\0';
		rc = usnap_err(st.status, "page server: %s", st.msg);
		goto fail;
	}
	/* from here the server serves faults: only the watcher may end it */
	if ((rc = usnap_thread_start(&c->watcher, watcher_main, c, "usnap-watcher"))) {
		usnap_err(rc, "starting the watcher thread: %s", strerror(-rc));
		shutdown(c->sock, SHUT_RDWR);
		watch(c); /* reads EOF: poisons what did not arrive */
		client_destroy(c);
		return rc;
	}
	*cp = c;
	return 0;
fail:
	for (unsigned i = 0; i < c->nregs; i++)
		usnap_uffd_unregister(c->uffd, c->regs[i].addr, c->regs[i].len);
	client_destroy(c);
	return rc;
}

USNAP_EXPORT int uffdsnap_lazy_client_wait(uffdsnap_lazy_client_t *c)
{
	struct srv_wait w = { .kind = SRV_WAIT };
	int err;

	if (!c)
		return -EINVAL;
	/* a no-prefetch server starts its prefetcher now, as uffdsnap_lazy_wait()
	 * does in-process; if the server is gone, the watcher sees that anyway */
	if (!atomic_exchange(&c->said_wait, true))
		(void)write_all(c->sock, &w, sizeof(w));
	pthread_mutex_lock(&c->lock);
	while (c->state == UFFDSNAP_LAZY_RUNNING)
		pthread_cond_wait(&c->cv, &c->lock);
	err = c->err;
	pthread_mutex_unlock(&c->lock);
	return err;
}

USNAP_EXPORT const char *uffdsnap_lazy_client_error(const uffdsnap_lazy_client_t *c)
{
	return c ? c->msg : "";
}

USNAP_EXPORT int uffdsnap_lazy_client_stats(const uffdsnap_lazy_client_t *c, uffdsnap_lazy_stats_t *out)
{
	uffdsnap_lazy_client_t *cc = (uffdsnap_lazy_client_t *)c; /* the lock is taken, nothing changed */
	uffdsnap_lazy_stats_t st;

	usnap_clear_err();
	if (!c || !out)
		return usnap_err(-EINVAL, "uffdsnap_lazy_client_stats: client and out must not be NULL");
	if (usnap_check_size("uffdsnap_lazy_client_stats", "uffdsnap_lazy_stats_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_lazy_stats_t, error), sizeof(st)))
		return -EINVAL;
	pthread_mutex_lock(&cc->lock);
	st = c->stats;
	st.state = c->state;
	st.error = c->err;
	pthread_mutex_unlock(&cc->lock);
	st.size = out->size;
	memcpy(out, &st, out->size);
	return 0;
}

USNAP_EXPORT void uffdsnap_lazy_client_free(uffdsnap_lazy_client_t *c)
{
	if (!c)
		return;
	uffdsnap_lazy_client_wait(c);
	(void)eventfd_write(c->efd, 1); /* cannot fail: one increment */
	pthread_join(c->watcher, NULL);
	client_destroy(c);
}
