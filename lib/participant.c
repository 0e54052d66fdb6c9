/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Other processes that map a region's file take part in its snapshots
 * (docs/consistency.md, "Other processes"). A participant creates a
 * userfaultfd for its own address space and hands it to the coordinator (the
 * context) over a unix socket; userfaultfd ioctls act on the address space
 * of the process that created the descriptor, whoever calls them, so from
 * then on the coordinator registers, protects and resolves the participant's
 * mappings at every snapshot as it does its own (space.c, arm.c), reading
 * pages through the region's own file.
 *
 * The participant keeps no copy of its descriptor: if the coordinator dies,
 * the kernel releases the descriptor with the coordinator's last reference,
 * which drops every protection and wakes every waiting writer. Registration
 * lasts only while a snapshot runs, as for the coordinator's own regions.
 *
 * The wire is in participant.h: one join message each way, then the
 * connection stays open and silent; when either end closes it, the
 * membership ends. The agent (agent.c), which must learn which files are
 * worth joining before the program maps them, sends a query instead; the
 * answer ends that connection. The coordinator trusts nothing in a join: the
 * peer's uid (SO_PEERCRED), that the descriptor is a userfaultfd (alone in
 * its message; any other descriptor sent is closed), and that each mapping
 * really maps the named region's file at the stated offset in the peer's
 * /proc/PID/maps are checked before anything is registered.
 *
 * libuv is not used here: its IPC pipes hand a received descriptor over only
 * as a libuv handle (uv_accept), and a userfaultfd is not one. One thread
 * polls the listening socket and the members' connections.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "maps.h"
#include "participant.h"
#include "uffd.h"
#include "uffdsnap-private.h"

#define JOIN_TIMEOUT_MS 5000

struct uffdsnap_participant {
	int conn;
};

struct usnap_listener {
	uffdsnap_t *ctx;
	int sock;
	int stop_efd;
	char *path;
	pthread_t thread;
};

/* An error number the peer sent: a -errno, or the peer broke the protocol.
 * Callers return it and uffdsnap_strerror() it: never a value out of range. */
static int peer_errno(int32_t err)
{
	return err < 0 && err >= -4095 ? err : -EPROTO;
}

/* Wait up to ms for fd to become readable; a signal does not cut the wait
 * short (the program may run interval timers). 1 when readable, else 0. */
static int wait_readable(int fd, int ms)
{
	uint64_t end = usnap_now_ns() + (uint64_t)ms * 1000000u, now;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int r;

	while ((r = poll(&pfd, 1, ms)) < 0 && errno == EINTR && (now = usnap_now_ns()) < end)
		ms = (int)((end - now + 999999) / 1000000);
	return r == 1;
}

/* ---- the coordinator ------------------------------------------------------------- */

/* Does [addr, addr + len) of process pid map reg's file at file offset off, all of it? */
static int check_mapping(pid_t pid, const struct usnap_reg *reg, uintptr_t addr, size_t len, uint64_t off)
{
	struct usnap_maps mr;
	struct usnap_vma v;
	uintptr_t covered = addr;

	if (usnap_maps_open(&mr, pid))
		return usnap_err(-errno, "cannot read /proc/%d/maps: %s", (int)pid, strerror(errno));
	while (covered < addr + len && usnap_maps_next(&mr, &v)) {
		if (v.end <= covered)
			continue;
		if (v.start > covered || v.perms[3] != 's' || v.dev != reg->dev || v.ino != reg->ino ||
		    v.off + (covered - v.start) != off + (covered - addr))
			break;
		covered = v.end;
	}
	usnap_maps_close(&mr);
	if (covered < addr + len)
		return usnap_err(-EINVAL, "0x%" PRIxPTR " is not a MAP_SHARED mapping of region '%s''s file at "
				 "offset %" PRIu64 " of the region", covered, reg->name, off - (uint64_t)reg->file_off +
				 (covered - addr));
	return 0;
}

static int is_userfaultfd(int fd)
{
	char link[64], target[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return 0;
	target[n] = '\0';
	return !strcmp(target, "anon_inode:[userfaultfd]");
}

/* Check one join request from pid and build its mappings into p (under ctx->lock). */
static int parse_join(uffdsnap_t *ctx, pid_t pid, const uint8_t *buf, size_t n, struct usnap_participant *p)
{
	const struct usnap_join_hdr *h = (const void *)buf;
	size_t ps = ctx->page_size;

	if (n < sizeof(*h) || h->magic != USNAP_JOIN_MAGIC)
		return usnap_err(-EPROTO, "not a join request");
	if (h->version != USNAP_JOIN_VERSION)
		return usnap_err(-EPROTO, "join request of version %u; this coordinator speaks %u", h->version,
				 USNAP_JOIN_VERSION);
	if (!h->nmaps || h->nmaps > USNAP_JOIN_MAX_MAPS || n != sizeof(*h) + h->nmaps * sizeof(struct usnap_join_map))
		return usnap_err(-EPROTO, "join request with %u mappings in %zu bytes", h->nmaps, n);
	if (!(p->maps = calloc(h->nmaps, sizeof(*p->maps))))
		return usnap_err(-ENOMEM, "allocating a participant");
	for (unsigned i = 0; i < h->nmaps; i++) {
		const struct usnap_join_map *m = (const void *)(buf + sizeof(*h) + i * sizeof(struct usnap_join_map));
		const struct usnap_reg *reg = NULL;
		unsigned id;
		int r;

		if (!memchr(m->name, '\0', sizeof(m->name)))
			return usnap_err(-EPROTO, "mapping %u: unterminated region name", i);
		for (id = 0; id < ctx->nregs && !reg; id++)
			if (!strcmp(ctx->regs[id].name, m->name))
				reg = &ctx->regs[id];
		if (!reg)
			return usnap_err(-ENOENT, "no region named '%s'", m->name);
		if (reg->kind == USNAP_PRIVATE)
			return usnap_err(-EMEDIUMTYPE, "region '%s' is private memory: no other process maps it",
					 reg->name);
		if (!m->len || (m->addr | m->len | m->offset) % (ps * reg->unit) || m->offset > reg->len ||
		    m->len > reg->len - m->offset || m->addr > UINTPTR_MAX - m->len)
			return usnap_err(-EINVAL, "region '%s': mapping of %" PRIu64 " bytes at region offset %" PRIu64
					 " at 0x%" PRIx64 " is not page aligned, not inside the region, or wraps around "
					 "the address space", reg->name, m->len, m->offset, m->addr);
		r = check_mapping(pid, reg, (uintptr_t)m->addr, m->len, (uint64_t)reg->file_off + m->offset);
		if (r)
			return r;
		p->maps[p->nmaps++] = (struct usnap_joined){ .region = id - 1, .addr = (uintptr_t)m->addr,
							     .first = m->offset / ps, .n = m->len / ps };
	}
	return 0;
}

static void participant_free(struct usnap_participant *p)
{
	if (p->uffd >= 0)
		close(p->uffd);
	if (p->conn >= 0)
		close(p->conn);
	free(p->maps);
	free(p);
}

/* The shared regions' files, for an agent; the connection is closed after. */
static void on_query(uffdsnap_t *ctx, int conn)
{
	struct usnap_query_region *q = calloc(USNAP_QUERY_MAX, sizeof(*q));
	struct usnap_query_reply h = { .err = q ? 0 : -ENOMEM };
	struct iovec iov[2] = { { &h, sizeof(h) }, { q, 0 } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

	pthread_mutex_lock(&ctx->lock);
	for (unsigned i = 0; q && i < ctx->nregs && h.n < USNAP_QUERY_MAX; i++) {
		const struct usnap_reg *r = &ctx->regs[i];
		if (r->kind == USNAP_PRIVATE)
			continue;
		q[h.n] = (struct usnap_query_region){ .dev = r->dev, .ino = r->ino, .file_off = (uint64_t)r->file_off,
						      .len = r->len };
		snprintf(q[h.n].name, sizeof(q[h.n].name), "%s", r->name);
		h.n++;
	}
	pthread_mutex_unlock(&ctx->lock);
	iov[1].iov_len = h.n * sizeof(*q);
	if (sendmsg(conn, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		/* the agent went away: nothing to tell it */
	}
	free(q);
	close(conn);
}

int usnap_query_regions(const char *path, struct usnap_query_region *out, unsigned cap)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct usnap_join_hdr req = { .magic = USNAP_QUERY_MAGIC, .version = USNAP_JOIN_VERSION };
	struct usnap_query_reply h;
	struct iovec iov[2] = { { &h, sizeof(h) }, { out, cap * sizeof(*out) } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n = -1;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) || send(fd, &req, sizeof(req), MSG_NOSIGNAL) < 0)
		r = -errno;
	else if (!wait_readable(fd, 2 * JOIN_TIMEOUT_MS) || (n = recvmsg(fd, &mh, 0)) < (ssize_t)sizeof(h))
		r = -ETIMEDOUT;
	else if (h.err)
		r = peer_errno(h.err);
	else if (h.n > cap || (size_t)n != sizeof(h) + h.n * sizeof(*out))
		r = -EPROTO;
	else
		r = (int)h.n;
	close(fd);
	for (int i = 0; i < r; i++)
		out[i].name[sizeof(out[i].name) - 1] = '\0';
	return r;
}

/* Read one join from a new connection; a member, or NULL with the reply sent. */
static void on_connect(struct usnap_listener *l, int conn)
{
	uffdsnap_t *ctx = l->ctx;
	static const size_t cap = sizeof(struct usnap_join_hdr) + USNAP_JOIN_MAX_MAPS * sizeof(struct usnap_join_map);
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct usnap_join_reply reply = { 0 };
	struct usnap_participant *p = calloc(1, sizeof(*p));
	uint8_t *buf = malloc(cap + 1);
	struct iovec iov = { buf, cap + 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm) };
	struct cmsghdr *c;
	ssize_t n = -1;
	int r = 0;

	if (!p || !buf) {
		r = usnap_err(-ENOMEM, "allocating a participant");
		goto reply;
	}
	p->uffd = -1;
	p->conn = conn;
	if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl)) {
		r = usnap_err(-errno, "SO_PEERCRED: %s", strerror(errno));
		goto reply;
	}
	p->pid = cred.pid;
	/* Read the request first, also from a peer about to be refused: one
	 * closed with its request unread gets ECONNRESET before our reply. A
	 * peer that connects and says nothing costs this thread a few seconds
	 * at most. Every descriptor it sent is ours to close but one alone in
	 * its message, the userfaultfd. */
	if (wait_readable(conn, JOIN_TIMEOUT_MS))
		n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	for (c = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
			if (p->uffd < 0 && c->cmsg_len == CMSG_LEN(sizeof(int)))
				p->uffd = fd;
			else
				close(fd);
		}
	}
	if (cred.uid != geteuid() && cred.uid != 0) {
		r = usnap_err(-EACCES, "process %d runs as uid %u: only uid %u or root may join", (int)cred.pid,
			      (unsigned)cred.uid, (unsigned)geteuid());
		goto reply;
	}
	if (n == (ssize_t)sizeof(struct usnap_join_hdr) && ((struct usnap_join_hdr *)buf)->magic == USNAP_QUERY_MAGIC) {
		if (p->uffd >= 0)
			close(p->uffd);
		free(buf);
		free(p);
		return on_query(ctx, conn);
	}
	if (n < 0)
		r = usnap_err(-EPROTO, "process %d sent no join request", (int)cred.pid);
	else if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		r = usnap_err(-EPROTO, "process %d sent a join request larger than any valid one", (int)cred.pid);
	else if (p->uffd < 0 || !is_userfaultfd(p->uffd))
		r = usnap_err(-EPROTO, "process %d sent no userfaultfd", (int)cred.pid);
	if (r)
		goto reply;
	pthread_mutex_lock(&ctx->lock);
	r = ctx->nparts >= USNAP_MAX_PARTICIPANTS ? usnap_err(-EUSERS, "%d processes have joined already",
							       USNAP_MAX_PARTICIPANTS)
	    : parse_join(ctx, cred.pid, buf, (size_t)n, p);
	if (!r) {
		p->next = ctx->parts;
		ctx->parts = p;
		ctx->nparts++;
		/* A snapshot running now did not track its stores before it
		 * joined: the handler sees the count move and fails it. */
		atomic_fetch_add(&ctx->joins, 1);
		ctx->last_join_pid = cred.pid;
	}
	pthread_mutex_unlock(&ctx->lock);
reply:
	reply.err = r;
	if (r)
		usnap_format(reply.msg, sizeof(reply.msg), "%s", uffdsnap_last_error());
	if (send(conn, &reply, sizeof(reply), MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(reply) && !r) {
		/* it is gone already: its hang-up ends the membership */
	}
	free(buf);
	if (r) {
		if (p)
			participant_free(p);
		else
			close(conn);
	}
}

/* A member's connection closed (it left, or died): it takes no part from now on. */
static void on_leave(uffdsnap_t *ctx, int conn)
{
	struct usnap_participant **pp, *p = NULL;

	pthread_mutex_lock(&ctx->lock);
	for (pp = &ctx->parts; *pp; pp = &(*pp)->next) {
		if ((*pp)->conn == conn) {
			p = *pp;
			*pp = p->next;
			ctx->nparts--;
			break;
		}
	}
	pthread_mutex_unlock(&ctx->lock);
	if (p)
		participant_free(p); /* a running snapshot holds a dup of its descriptor */
}

static void *listener_main(void *arg)
{
	struct usnap_listener *l = arg;
	uffdsnap_t *ctx = l->ctx;

	for (;;) {
		struct pollfd pfd[2 + USNAP_MAX_PARTICIPANTS];
		nfds_t n = 2;

		pfd[0] = (struct pollfd){ .fd = l->stop_efd, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = l->sock, .events = POLLIN };
		pthread_mutex_lock(&ctx->lock);
		for (struct usnap_participant *p = ctx->parts; p && n < 2 + USNAP_MAX_PARTICIPANTS; p = p->next)
			pfd[n++] = (struct pollfd){ .fd = p->conn, .events = POLLIN };
		pthread_mutex_unlock(&ctx->lock);
		if (poll(pfd, n, -1) < 0 && errno != EINTR)
			return NULL;
		if (pfd[0].revents)
			return NULL;
		if (pfd[1].revents & POLLIN) {
			int conn = accept4(l->sock, NULL, NULL, SOCK_CLOEXEC);
			if (conn >= 0)
				on_connect(l, conn);
		}
		/* A member sends nothing after its join: anything readable is
		 * its hang-up (or a protocol breach, which ends it too). */
		for (nfds_t i = 2; i < n; i++)
			if (pfd[i].revents)
				on_leave(ctx, pfd[i].fd);
	}
}

/* A socket at path that answers is another coordinator's: never take it over. */
static int claim_path(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int probe, live;

	if (lstat(path, &st)) /* nothing there */
		return errno == ENOENT ? 0 : usnap_err(-errno, "%s: %s", path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return usnap_err(-EEXIST, "%s exists and is not a socket: not replaced", path);
	probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return usnap_err(-errno, "socket: %s", strerror(errno));
	live = !connect(probe, (const struct sockaddr *)sa, sizeof(*sa)) || errno != ECONNREFUSED;
	close(probe);
	if (live)
		return usnap_err(-EADDRINUSE, "another process listens on %s", path);
	return unlink(path) ? usnap_err(-errno, "removing the stale socket %s: %s", path, strerror(errno)) : 0;
}

USNAP_EXPORT int uffdsnap_listen(uffdsnap_t *ctx, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct usnap_listener *l;
	int r;

	usnap_clear_err();
	if (!ctx || !path)
		return usnap_err(-EINVAL, "ctx and socket_path must not be NULL");
	if (strlen(path) >= sizeof(sa.sun_path))
		return usnap_err(-ENAMETOOLONG, "socket path of %zu bytes; the limit is %zu", strlen(path),
				 sizeof(sa.sun_path) - 1);
	if (ctx->listener)
		return usnap_err(-EALREADY, "this context listens already");
	memcpy(sa.sun_path, path, strlen(path));
	if ((r = claim_path(path, &sa)))
		return r;
	if (!(l = calloc(1, sizeof(*l))) || !(l->path = strdup(path))) {
		free(l);
		return usnap_err(-ENOMEM, "allocating the listener");
	}
	l->ctx = ctx;
	l->stop_efd = eventfd(0, EFD_CLOEXEC);
	l->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (l->stop_efd < 0 || l->sock < 0)
		r = usnap_err(-errno, "creating the socket: %s", strerror(errno));
	else if (bind(l->sock, (struct sockaddr *)&sa, sizeof(sa)) || chmod(path, 0600) || listen(l->sock, 16))
		r = usnap_err(-errno, "listening on %s: %s", path, strerror(errno));
	if (!r && (r = usnap_thread_start(&l->thread, listener_main, l, "usnap-listen")))
		usnap_err(r, "starting the listener thread: %s", strerror(-r));
	if (r) {
		if (l->sock >= 0) {
			close(l->sock);
			unlink(path);
		}
		if (l->stop_efd >= 0)
			close(l->stop_efd);
		free(l->path);
		free(l);
		return r;
	}
	ctx->listener = l;
	return 0;
}

void usnap_listener_stop(uffdsnap_t *ctx)
{
	struct usnap_listener *l = ctx->listener;
	struct usnap_participant *p;

	if (l) {
		if (write(l->stop_efd, &(uint64_t){ 1 }, sizeof(uint64_t)) < 0) {
			/* cannot fail on a fresh eventfd */
		}
		pthread_join(l->thread, NULL);
		close(l->sock);
		unlink(l->path);
		close(l->stop_efd);
		free(l->path);
		free(l);
		ctx->listener = NULL;
	}
	while ((p = ctx->parts)) {
		ctx->parts = p->next;
		participant_free(p);
	}
	ctx->nparts = 0;
}

USNAP_EXPORT int uffdsnap_participant_count(const uffdsnap_t *ctx)
{
	uffdsnap_t *c = (uffdsnap_t *)ctx;
	int n;

	if (!c)
		return usnap_err(-EINVAL, "ctx is NULL");
	pthread_mutex_lock(&c->lock);
	n = (int)c->nparts;
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* ---- the participant ------------------------------------------------------------- */

USNAP_EXPORT int uffdsnap_join(uffdsnap_participant_t **pp, const char *path, const uffdsnap_join_region_t *regions,
			       unsigned n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = sizeof(struct usnap_join_hdr) + (size_t)n * sizeof(struct usnap_join_map);
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm;
	struct usnap_join_reply reply;
	struct usnap_join_hdr *h;
	uint64_t avail, want;
	struct iovec iov;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm) };
	int uffd = -1, conn = -1, r = 0;
	bool refused = false;

	usnap_clear_err();
	if (pp)
		*pp = NULL;
	if (!pp || !path || !regions || !n || n > USNAP_JOIN_MAX_MAPS)
		return usnap_err(-EINVAL, "uffdsnap_join: participant, socket path and 1 to %d regions are needed",
				 USNAP_JOIN_MAX_MAPS);
	if (strlen(path) >= sizeof(sa.sun_path))
		return usnap_err(-ENAMETOOLONG, "socket path of %zu bytes; the limit is %zu", strlen(path),
				 sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path));
	if (!(h = calloc(1, len)))
		return usnap_err(-ENOMEM, "allocating the join request");
	*h = (struct usnap_join_hdr){ .magic = USNAP_JOIN_MAGIC, .version = USNAP_JOIN_VERSION, .nmaps = n };
	for (unsigned i = 0; i < n && !r; i++) {
		struct usnap_join_map *m = (struct usnap_join_map *)(h + 1) + i;
		if (!regions[i].name || strlen(regions[i].name) > USNAP_MAX_NAME)
			r = usnap_err(-EINVAL, "regions[%u]: name is NULL or longer than %d bytes", i, USNAP_MAX_NAME);
		else
			strcpy(m->name, regions[i].name);
		m->addr = (uintptr_t)regions[i].addr, m->len = regions[i].len, m->offset = regions[i].offset;
	}
	/* The program's read(2) into its memory must wait for a snapshot, not
	 * fail with EFAULT: no user-mode-only descriptor here. */
	if (!r && (uffd = usnap_uffd_new(false)) < 0)
		r = usnap_err(uffd == -EACCES ? -EPERM : uffd, "this process cannot open a userfaultfd that handles "
			      "kernel-mode faults (%s): it needs access to /dev/userfaultfd, CAP_SYS_PTRACE or "
			      "vm.unprivileged_userfaultfd=1", strerror(-uffd));
	if (!r && !(r = usnap_uffd_features(false, &avail, &want)) && (uffd = usnap_uffd_api_shared(uffd, want)) < 0)
		r = uffd;
	if (!r && (conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) < 0)
		r = usnap_err(-errno, "socket: %s", strerror(errno));
	if (!r && connect(conn, (struct sockaddr *)&sa, sizeof(sa)))
		r = usnap_err(-errno, "connecting to the coordinator at %s: %s", path, strerror(errno));
	if (!r) {
		iov = (struct iovec){ h, len };
		memset(&cm, 0, sizeof(cm));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &uffd, sizeof(int));
		if (sendmsg(conn, &mh, MSG_NOSIGNAL) != (ssize_t)len) {
			int e = errno;
			/* A coordinator that refuses before reading (another uid)
			 * has sent its reason and closed: report that, not EPIPE. */
			if ((e == EPIPE || e == ECONNRESET) &&
			    recv(conn, &reply, sizeof(reply), MSG_DONTWAIT) == sizeof(reply) && reply.err)
				refused = true;
			else
				r = usnap_err(-e, "sending the join request: %s", strerror(e));
		}
	}
	/* The coordinator holds the descriptor now; keeping a copy would keep
	 * this process's memory registered if the coordinator died. */
	if (uffd >= 0)
		close(uffd);
	if (!r && !refused &&
	    (!wait_readable(conn, 2 * JOIN_TIMEOUT_MS) || recv(conn, &reply, sizeof(reply), 0) != sizeof(reply)))
		r = usnap_err(-ETIMEDOUT, "the coordinator at %s did not answer the join", path);
	if (!r && reply.err) {
		reply.msg[sizeof(reply.msg) - 1] = '\0';
		r = usnap_err(peer_errno(reply.err), "the coordinator refused: %s", reply.msg);
	}
	free(h);
	if (!r && !(*pp = malloc(sizeof(**pp))))
		r = usnap_err(-ENOMEM, "allocating the participant");
	if (r) {
		if (conn >= 0)
			close(conn);
		return r;
	}
	(*pp)->conn = conn;
	return 0;
}

USNAP_EXPORT void uffdsnap_leave(uffdsnap_participant_t *p)
{
	if (!p)
		return;
	close(p->conn);
	free(p);
}
