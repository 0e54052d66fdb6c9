/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration, pre-copy and post-copy (docs/migration.md): the sender's
 * rounds and the receiver. Owns uffdsnap_migrate_* and uffdsnap_incoming_*;
 * the wire protocol is migrate.h.
 *
 * Rounds need no point in time, only "every page written since the last
 * look": the regions are registered WP-only with a userfaultfd of the
 * migration's own that has UFFD_FEATURE_WP_ASYNC, so the kernel resolves each
 * write fault itself (it clears the page's uffd-wp bit; ~15 us, no message,
 * no handler thread a writer could wait for), and PAGEMAP_SCAN with
 * PM_SCAN_WP_MATCHING lists the pages whose bit is clear and sets it again in
 * the same walk. A page written after that walk is found by the next one;
 * pages are read after the walk that found them, so the last round (after the
 * program stopped writing) sends every page's final contents. What a scan
 * cannot see is covered apart: shmem pages punched out (mincore, scan_holes)
 * and removals and unmaps the kernel announces as events (events_main, on a
 * second thread, because the thread that zaps waits until its event is read).
 *
 * Post-copy (postcopy() on the sender; take_discard, start_postcopy, place
 * and the fault thread on the receiver): after round 1, rounds that only
 * tell the receiver which pages to drop, the switchover, then the receiver
 * runs with its mappings registered for missing pages while the sender
 * answers its requests and pushes the rest.
 *
 * Transport: one thread per side with blocking-style I/O (poll + non-blocking
 * send/recv), not libuv. The sender's work is strictly sequential (scan, read
 * pages, write frames, wait for the round's ACK) and back-pressure is the
 * socket itself: a loop would add a hand-off between the reading and the
 * writing thread and nothing to overlap. Every wait polls an eventfd too, so
 * free() cancels at once, and gives up after USNAP_MIG_IDLE_MS of silence.
 * The post-copy receiver adds a fault thread (the userfaultfd is a second
 * place to block); both send on the socket under send_lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_notsent_bytes (glibc's lacks it) */
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <zstd.h>

#include "bitmap.h"
#include "migrate.h"
#include "uffd.h"
#include "uffdsnap-private.h"

#define USNAP_MIG_IDLE_MS 30000
#define USNAP_MIG_SCAN_VEC 512

uint32_t usnap_mig_crc(const struct usnap_mig_hdr *hdr, const void *payload, uint32_t len)
{
	struct usnap_mig_hdr h = *hdr;

	h.crc = 0;
	return usnap_crc32c(usnap_crc32c(0, &h, sizeof(h)), payload, len);
}

/* ---- I/O shared by both sides ------------------------------------------------ */

/* Wait until fd is ready for `events`: 0, -ECANCELED (abort_fd readable),
 * -ETIMEDOUT (idle), -errno. */
static int wait_fd(int fd, short events, int abort_fd)
{
	struct pollfd p[2] = { { fd, events, 0 }, { abort_fd, POLLIN, 0 } };
	int r;

	do
		r = poll(p, 2, USNAP_MIG_IDLE_MS);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (p[1].revents)
		return -ECANCELED;
	return r ? 0 : -ETIMEDOUT;
}

/* Write every byte of iov; *wire counts them. */
static int write_all(int fd, int abort_fd, struct iovec *iov, unsigned cnt, _Atomic uint64_t *wire)
{
	while (cnt) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = cnt };
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			int r = wait_fd(fd, POLLOUT, abort_fd);
			if (r)
				return r;
			continue;
		}
		*wire += (uint64_t)n;
		while (cnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++, cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* Read exactly len bytes: -EPIPE if the peer hangs up first. */
static int read_all(int fd, int abort_fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
		if (n > 0) {
			p += n, len -= (size_t)n;
			continue;
		}
		if (!n)
			return -EPIPE;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int r = wait_fd(fd, POLLIN, abort_fd);
		if (r)
			return r;
	}
	return 0;
}

static int frame_send(int fd, int abort_fd, uint16_t type, const void *head, uint32_t head_len, const void *data,
		      uint32_t data_len, _Atomic uint64_t *wire)
{
	struct usnap_mig_hdr h = { .magic = USNAP_MIG_MAGIC, .type = type, .len = head_len + data_len };
	struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)head, head_len }, { (void *)data, data_len } };
	struct usnap_mig_hdr z = h;

	h.crc = usnap_crc32c(usnap_crc32c(usnap_crc32c(0, &z, sizeof(z)), head, head_len), data, data_len);
	return write_all(fd, abort_fd, iov, data_len ? 3 : 2, wire);
}

/*
 * Read one frame into buf (cap bytes): its header checked (magic, flags,
 * length against cap) before the payload is read, and the CRC before the
 * caller sees any of it. -EBADMSG with the reason in why.
 */
static int frame_recv(int fd, int abort_fd, struct usnap_mig_hdr *h, uint8_t *buf, size_t cap, char *why,
		      size_t why_len)
{
	int r = read_all(fd, abort_fd, h, sizeof(*h));

	if (r) {
		snprintf(why, why_len, "%s", r == -EPIPE ? "the peer closed the connection" : strerror(-r));
		return r;
	}
	if (h->magic != USNAP_MIG_MAGIC || h->flags) {
		usnap_format(why, why_len, "not a migration frame (magic 0x%08x flags 0x%x)", h->magic, h->flags);
		return -EBADMSG;
	}
	if (h->len > cap) {
		usnap_format(why, why_len, "frame of type %u claims %u bytes; the limit is %zu", h->type, h->len, cap);
		return -EBADMSG;
	}
	r = read_all(fd, abort_fd, buf, h->len);
	if (r) {
		snprintf(why, why_len, "frame of type %u cut short: %s", h->type,
			 r == -EPIPE ? "the peer closed the connection" : strerror(-r));
		return r;
	}
	if (usnap_mig_crc(h, buf, h->len) != h->crc) {
		usnap_format(why, why_len, "frame of type %u, %u bytes: checksum mismatch", h->type, h->len);
		return -EBADMSG;
	}
	return 0;
}

/*
 * Small frames (ROUND_END, ACK) follow large ones: with Nagle's algorithm a
 * ROUND_END would wait for the ACK of the data before it, and the peer's
 * delayed ACK for it, up to 40 ms of downtime. Fails harmlessly on a unix
 * socket.
 */
static void no_delay(int sock)
{
	int one = 1;

	(void)setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- sender ----------------------------------------------------------------------------- */

struct mig_reg {
	char *name;
	enum usnap_kind kind;
	uintptr_t addr;
	size_t len;
	uint64_t npages;
	int fd;            /* SHMEM: a dup of the region's file; PRIVATE: -1 */
	off_t file_off;
	bool registered;
	uint64_t *sent;    /* SHMEM: pages the receiver holds as data (sent, not since sent as zero) */
	unsigned char *incore; /* SHMEM: mincore(2) vector, one byte a page */
	uint64_t *pending; /* post-copy: pages the receiver dropped and has not been sent since */
	uint64_t *fresh;   /* post-copy: pages pending, not yet announced as dropped */
};

/* Pages [first, first + n) of region `reg`, written since the previous scan. */
struct mig_run {
	unsigned reg;
	uint64_t first, n;
};

struct uffdsnap_migrate {
	uffdsnap_t *ctx;
	int sock;
	uffdsnap_migrate_opts_t opts;
	struct mig_reg *regs;
	unsigned nregs;
	size_t ps;
	int uffd, pagemap, abort_fd;
	uint8_t *buf;                  /* USNAP_MIG_BATCH pages */
	ZSTD_CCtx *zc;                 /* UFFDSNAP_MIGRATE_COMPRESS */
	uint8_t *zbuf;
	size_t zcap;
	struct page_region *vec;
	struct mig_run *runs;
	size_t nruns, runs_cap;
	uint64_t bw_t0, bw_bytes;      /* max_bandwidth pacing: since bw_t0 */

	/* the event thread (events_main): removals heard, to send again */
	pthread_t ev_thread;
	bool ev_started;
	int ev_stop;                   /* eventfd: the event thread ends */
	pthread_mutex_t ev_lock;
	struct mig_run *removed;       /* since the last round began */
	size_t nremoved, removed_cap;
	struct mig_run *removed_all;   /* since round 1: the final round sends them all again */
	size_t nremoved_all, removed_all_cap;
	int ev_err;                    /* a region was unmapped or moved */
	char ev_msg[256];

	pthread_t thread;
	bool started, joined;
	pthread_mutex_t join_lock;
	int result;
	char errmsg[512];

	_Atomic int state, error;
	_Atomic unsigned rounds;
	_Atomic uint64_t round_bytes[UFFDSNAP_MIGRATE_MAX_ROUNDS];
	_Atomic uint64_t bytes_wire, pages_sent, pages_zero, downtime_ns, t0_ns, end_ns;
	_Atomic uint64_t pages_requested; /* post-copy: sent because the receiver faulted on them */
	unsigned pc_round;             /* post-copy: the round of the switchover and the push */
};

static void migrate_defaults(uffdsnap_migrate_opts_t *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->max_downtime_us = UFFDSNAP_MIGRATE_DOWNTIME_US;
	o->max_rounds = UFFDSNAP_MIGRATE_ROUNDS;
}

USNAP_EXPORT void uffdsnap_migrate_opts_init_size(uffdsnap_migrate_opts_t *opts, size_t size)
{
	uffdsnap_migrate_opts_t d;

	migrate_defaults(&d);
	usnap_opts_fill(opts, size, &d, sizeof(d));
}

/* The caller's options over the defaults, only as far as its struct goes. */
static int opts_take(uffdsnap_migrate_opts_t *o, const uffdsnap_migrate_opts_t *in)
{
	migrate_defaults(o);
	if (!in)
		return 0;
	if (usnap_check_size("uffdsnap_migrate", "uffdsnap_migrate_opts_t", in->size,
			     USNAP_SIZE_UPTO(uffdsnap_migrate_opts_t, flags), sizeof(*o)))
		return -EINVAL;
	memcpy(o, in, in->size);
	o->size = sizeof(*o);
	if (!o->max_downtime_us)
		o->max_downtime_us = UFFDSNAP_MIGRATE_DOWNTIME_US;
	if (!o->max_rounds)
		o->max_rounds = UFFDSNAP_MIGRATE_ROUNDS;
	if (o->max_rounds > UFFDSNAP_MIGRATE_MAX_ROUNDS)
		return usnap_err(-EINVAL, "migrate options: max_rounds %u is above %d", o->max_rounds,
				 UFFDSNAP_MIGRATE_MAX_ROUNDS);
	if (o->flags & ~(UFFDSNAP_MIGRATE_POSTCOPY | UFFDSNAP_MIGRATE_COMPRESS))
		return usnap_err(-EINVAL, "migrate options: unknown flags 0x%x", o->flags);
	return 0;
}

static int mig_fail(struct uffdsnap_migrate *m, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int mig_fail(struct uffdsnap_migrate *m, int err, const char *fmt, ...)
{
	va_list ap;

	if (!m->errmsg[0]) {
		va_start(ap, fmt);
		usnap_vformat(m->errmsg, sizeof(m->errmsg), fmt, ap);
		va_end(ap);
	}
	return err;
}

/* Every registration dropped: UNREGISTER clears each uffd-wp bit and marker
 * of the range, so nothing of the program stays protected. */
static void disarm(struct uffdsnap_migrate *m)
{
	for (unsigned i = 0; i < m->nregs; i++)
		if (m->regs[i].registered) {
			usnap_uffd_unregister(m->uffd, m->regs[i].addr, m->regs[i].len);
			m->regs[i].registered = false;
		}
}

/* max_bandwidth: sleep until the bytes written since bw_t0 are due. */
static int pace(struct uffdsnap_migrate *m, uint64_t bytes)
{
	uint64_t due, now;
	struct pollfd p = { m->abort_fd, POLLIN, 0 };

	if (!m->opts.max_bandwidth)
		return 0;
	m->bw_bytes += bytes;
	due = m->bw_t0 + (uint64_t)((double)m->bw_bytes * 1e9 / (double)m->opts.max_bandwidth);
	now = usnap_now_ns();
	if (due > now + 1000000 && poll(&p, 1, (int)((due - now) / 1000000)) > 0)
		return -ECANCELED;
	return 0;
}

static int send_frame(struct uffdsnap_migrate *m, uint16_t type, const void *head, uint32_t hl, const void *data,
		      uint32_t dl)
{
	int r = frame_send(m->sock, m->abort_fd, type, head, hl, data, dl, &m->bytes_wire);

	if (r)
		return mig_fail(m, r, "sending to the receiver: %s", strerror(-r));
	return pace(m, sizeof(struct usnap_mig_hdr) + hl + dl);
}

/* Read pages [first, first + n) (n <= USNAP_MIG_BATCH) of region r into m->buf,
 * by system call, never by touching the mapping: pread from a shmem file
 * leaves holes holes, and process_vm_readv reads private memory that writers
 * change at the same time without a data race of ours. */
static int read_pages(struct uffdsnap_migrate *m, const struct mig_reg *r, uint64_t first, uint64_t n)
{
	size_t len = n * m->ps, got = 0;

	while (got < len) {
		ssize_t k;
		if (r->fd >= 0) {
			k = pread(r->fd, m->buf + got, len - got, r->file_off + (off_t)(first * m->ps + got));
		} else {
			struct iovec l = { m->buf + got, len - got };
			struct iovec rem = { (void *)(r->addr + first * m->ps + got), len - got };
			k = process_vm_readv(getpid(), &l, 1, &rem, 1, 0);
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return mig_fail(m, k < 0 ? -errno : -EFAULT, "region '%s': reading page %" PRIu64 ": %s",
					r->name, first + got / m->ps, k < 0 ? strerror(errno) : "end of file");
		got += (size_t)k;
	}
	return 0;
}

/* Send pages [first, first + n) of region ri: runs of data as PAGES, runs of
 * zero pages as ZERO, or not at all in round 1 (the receiver's memfd starts
 * zero). *count: pages announced in frames. */
static int send_range(struct uffdsnap_migrate *m, unsigned ri, uint64_t first, uint64_t n, unsigned round,
		      uint64_t *count)
{
	const struct mig_reg *r = &m->regs[ri];

	while (n) {
		uint64_t b = n < USNAP_MIG_BATCH ? n : USNAP_MIG_BATCH, i = 0;
		int e = read_pages(m, r, first, b);
		if (e)
			return e;
		while (i < b) {
			bool zero = usnap_page_is_zero(m->buf + i * m->ps, m->ps);
			uint64_t j = i + 1;
			while (j < b && usnap_page_is_zero(m->buf + j * m->ps, m->ps) == zero)
				j++;
			struct usnap_mig_pages p = { .region = ri, .npages = (uint32_t)(j - i), .first = first + i };
			if (r->sent)
				for (uint64_t k = first + i; k < first + j; k++)
					r->sent[k / 64] = zero ? r->sent[k / 64] & ~(1ull << (k % 64))
							       : r->sent[k / 64] | (1ull << (k % 64));
			if (!zero) {
				const uint8_t *data = m->buf + i * m->ps;
				size_t len = (j - i) * m->ps, z = 0;
				/* compressed only when it saves an eighth: else the receiver
				 * would spend time for nothing */
				if (m->zc)
					z = ZSTD_compressCCtx(m->zc, m->zbuf, m->zcap, data, len, 1);
				if (m->zc && !ZSTD_isError(z) && z < len - len / 8)
					e = send_frame(m, USNAP_MIG_PAGES_Z, &p, sizeof(p), m->zbuf, (uint32_t)z);
				else
					e = send_frame(m, USNAP_MIG_PAGES, &p, sizeof(p), data, (uint32_t)len);
				m->pages_sent += j - i;
				m->round_bytes[round - 1] += (j - i) * m->ps;
				*count += j - i;
			} else if (round > 1) {
				e = send_frame(m, USNAP_MIG_ZERO, &p, sizeof(p), NULL, 0);
				m->pages_zero += j - i;
				*count += j - i;
			}
			if (e)
				return e;
			i = j;
		}
		first += b, n -= b;
	}
	return 0;
}

static int push_run(struct mig_run **v, size_t *n, size_t *cap, struct mig_run run)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 256;
		struct mig_run *nv = realloc(*v, c * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		*v = nv, *cap = c;
	}
	(*v)[(*n)++] = run;
	return 0;
}

/* Append to m->runs the pages written since the last scan (protected
 * again, but for the last scan, after the switchover); *bytes: their size. */
static int scan(struct uffdsnap_migrate *m, bool last, uint64_t *bytes)
{
	for (unsigned i = 0; i < m->nregs; i++) {
		const struct mig_reg *r = &m->regs[i];
		uintptr_t start = r->addr, end = r->addr + r->len, walk_end;
		while (start < end) {
			int k = last ? usnap_uffd_scan_written_last(m->pagemap, start, end, m->vec, USNAP_MIG_SCAN_VEC,
								   &walk_end)
				     : usnap_uffd_scan_written(m->pagemap, start, end, m->vec, USNAP_MIG_SCAN_VEC, &walk_end);
			if (k < 0)
				return mig_fail(m, k, "region '%s': PAGEMAP_SCAN: %s", r->name, strerror(-k));
			for (int j = 0; j < k; j++) {
				uint64_t lo = (m->vec[j].start - r->addr) / m->ps, hi = (m->vec[j].end - r->addr) / m->ps;
				if (push_run(&m->runs, &m->nruns, &m->runs_cap, (struct mig_run){ i, lo, hi - lo }))
					return mig_fail(m, -ENOMEM, "the dirty page list");
				*bytes += (hi - lo) * m->ps;
			}
			if (walk_end <= start)
				return mig_fail(m, -EIO, "region '%s': PAGEMAP_SCAN made no progress", r->name);
			start = walk_end;
		}
	}
	return 0;
}

/*
 * The removals the event thread heard, into this round's runs: those since
 * the last round, or for the final round every one since round 1. A removal
 * is heard before the kernel zaps (the zapping thread waits for us to read
 * the event, then zaps), so a round may read the pages just before they
 * go; the final round reads them after the program stopped, when every
 * zap it made is done.
 */
static int take_removed(struct uffdsnap_migrate *m, bool final, uint64_t *bytes)
{
	int r = 0;

	pthread_mutex_lock(&m->ev_lock);
	if (m->ev_err)
		r = mig_fail(m, m->ev_err, "%s", m->ev_msg);
	const struct mig_run *v = final ? m->removed_all : m->removed;
	size_t n = final ? m->nremoved_all : m->nremoved;
	for (size_t i = 0; !r && i < n; i++) {
		if (push_run(&m->runs, &m->nruns, &m->runs_cap, v[i]))
			r = mig_fail(m, -ENOMEM, "the dirty page list");
		*bytes += v[i].n * m->ps;
	}
	m->nremoved = 0;
	pthread_mutex_unlock(&m->ev_lock);
	return r;
}

/* Record a removal of [start, end) (under ev_lock). */
static void heard_remove(struct uffdsnap_migrate *m, uintptr_t start, uintptr_t end)
{
	for (unsigned i = 0; i < m->nregs && !m->ev_err; i++) {
		const struct mig_reg *r = &m->regs[i];
		uintptr_t lo = start > r->addr ? start : r->addr, hi = end < r->addr + r->len ? end : r->addr + r->len;
		if (lo >= hi)
			continue;
		struct mig_run run = { i, (lo - r->addr) / m->ps, (hi - lo + m->ps - 1) / m->ps };
		if (push_run(&m->removed, &m->nremoved, &m->removed_cap, run) ||
		    push_run(&m->removed_all, &m->nremoved_all, &m->removed_all_cap, run)) {
			m->ev_err = -ENOMEM;
			snprintf(m->ev_msg, sizeof(m->ev_msg), "out of memory recording removed pages");
		}
	}
}

/* The next messages of uffd (bytes read, maybe 0), or -1 once stop_fd is
 * readable or poll fails. */
static ssize_t uffd_read(int uffd, int stop_fd, struct uffd_msg *msg, size_t cap)
{
	struct pollfd p[2] = { { uffd, POLLIN, 0 }, { stop_fd, POLLIN, 0 } };
	ssize_t n;

	if (poll(p, 2, -1) < 0 && errno != EINTR)
		return -1;
	if (p[1].revents)
		return -1;
	n = read(uffd, msg, cap);
	return n > 0 ? n : 0;
}

/*
 * Reads the migration descriptor's events at once: a thread that zaps or
 * unmaps registered memory waits in the kernel until its event is read.
 * Write faults never arrive here (WP_ASYNC resolves them).
 */
static void *events_main(void *arg)
{
	struct uffdsnap_migrate *m = arg;
	struct uffd_msg msg[16];
	ssize_t n;

	while ((n = uffd_read(m->uffd, m->ev_stop, msg, sizeof(msg))) >= 0) {
		pthread_mutex_lock(&m->ev_lock);
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
			const struct uffd_msg *e = &msg[i];
			if (e->event == UFFD_EVENT_REMOVE) {
				heard_remove(m, (uintptr_t)e->arg.remove.start, (uintptr_t)e->arg.remove.end);
			} else if ((e->event == UFFD_EVENT_UNMAP || e->event == UFFD_EVENT_REMAP) && !m->ev_err) {
				m->ev_err = -EFAULT;
				usnap_format(m->ev_msg, sizeof(m->ev_msg), "registered memory at 0x%llx was %s during "
					     "the migration", (unsigned long long)(e->event == UFFD_EVENT_UNMAP
						     ? e->arg.remove.start : e->arg.remap.from),
					     e->event == UFFD_EVENT_UNMAP ? "unmapped" : "moved (mremap)");
			}
		}
		pthread_mutex_unlock(&m->ev_lock);
	}
	return NULL;
}

/*
 * Pages punched out of a shmem file (fallocate PUNCH_HOLE, truncation) lose
 * their page table entry and its uffd-wp marker with them, and raise no
 * userfaultfd event: a scan cannot see them. The page cache can: mincore(2)
 * on a shmem mapping says whether the file has the page, and every page the
 * receiver holds as data that the file lacks is sent again (read as zero,
 * it goes as ZERO). A page swapped out also reads "not resident": it is sent
 * again with its data, which costs bytes, not correctness. mincore rather
 * than SEEK_HOLE: one call per region, where a SEEK_HOLE walk cost ~3 us
 * per hole extent (40 ms of downtime over 256 MiB with a hole every 5
 * pages). A punch after this look is found by the next round's; the final
 * round looks after the program stopped.
 */
static int scan_holes(struct uffdsnap_migrate *m, uint64_t *bytes)
{
	for (unsigned i = 0; i < m->nregs; i++) {
		const struct mig_reg *r = &m->regs[i];
		if (!r->sent)
			continue;
		if (mincore((void *)r->addr, r->len, r->incore))
			return mig_fail(m, -errno, "region '%s': mincore: %s", r->name, strerror(errno));
		for (uint64_t k = 0; k < r->npages;) {
			if (!(r->sent[k / 64] >> (k % 64))) {
				k = (k / 64 + 1) * 64;
				continue;
			}
			if (!(r->sent[k / 64] >> (k % 64) & 1) || (r->incore[k] & 1)) {
				k++;
				continue;
			}
			uint64_t e = k + 1;
			while (e < r->npages && (r->sent[e / 64] >> (e % 64) & 1) && !(r->incore[e] & 1))
				e++;
			if (push_run(&m->runs, &m->nruns, &m->runs_cap, (struct mig_run){ i, k, e - k }))
				return mig_fail(m, -ENOMEM, "the dirty page list");
			*bytes += (e - k) * m->ps;
			k = e;
		}
	}
	return 0;
}

/* Close round `round` and wait for the receiver's ACK of it: from then on
 * no byte of the round is in flight anywhere. */
static int end_round(struct uffdsnap_migrate *m, unsigned round, bool final, uint64_t count)
{
	struct usnap_mig_round re = { .round = round, .final = final, .pages = count };
	struct usnap_mig_status st;
	struct usnap_mig_hdr h;
	char why[256];
	int r = send_frame(m, USNAP_MIG_ROUND_END, &re, sizeof(re), NULL, 0);

	if (r)
		return r;
	r = frame_recv(m->sock, m->abort_fd, &h, (uint8_t *)&st, sizeof(st), why, sizeof(why));
	if (r)
		return mig_fail(m, r, "waiting for the receiver's ACK of round %u: %s", round, why);
	if (h.type != USNAP_MIG_ACK || h.len != sizeof(st) || st.value != round)
		return mig_fail(m, -EBADMSG, "expected the ACK of round %u, got a frame of type %u (%u bytes)", round,
				h.type, h.len);
	if (st.status < 0)
		return mig_fail(m, -EPROTO, "the receiver failed round %u: %s", round, strerror(-st.status));
	m->rounds = round;
	return 0;
}

static int hello(struct uffdsnap_migrate *m)
{
	size_t len = sizeof(struct usnap_mig_hello);
	struct usnap_mig_hello *hh;
	struct usnap_mig_status st;
	struct usnap_mig_hdr h;
	char why[256];
	uint8_t *p;
	int r;

	for (unsigned i = 0; i < m->nregs; i++)
		len += 12 + strlen(m->regs[i].name);
	if (!(p = calloc(1, len)))
		return mig_fail(m, -ENOMEM, "the region table");
	hh = (struct usnap_mig_hello *)p;
	*hh = (struct usnap_mig_hello){ USNAP_MIG_VERSION, (uint32_t)m->ps, m->nregs,
					(m->opts.flags & UFFDSNAP_MIGRATE_POSTCOPY) ? USNAP_MIG_HELLO_POSTCOPY : 0 };
	len = sizeof(*hh);
	for (unsigned i = 0; i < m->nregs; i++) {
		uint64_t rl = m->regs[i].len;
		uint32_t nl = (uint32_t)strlen(m->regs[i].name);
		memcpy(p + len, &rl, 8), memcpy(p + len + 8, &nl, 4), memcpy(p + len + 12, m->regs[i].name, nl);
		len += 12 + nl;
	}
	r = send_frame(m, USNAP_MIG_HELLO, p, (uint32_t)len, NULL, 0);
	free(p);
	if (r)
		return r;
	r = frame_recv(m->sock, m->abort_fd, &h, (uint8_t *)&st, sizeof(st), why, sizeof(why));
	if (r)
		return mig_fail(m, r, "waiting for the receiver's answer to the region table: %s", why);
	if (h.type != USNAP_MIG_HELLO_OK || h.len != sizeof(st))
		return mig_fail(m, -EBADMSG, "the receiver answered the region table with a frame of type %u", h.type);
	if (st.status < 0)
		return mig_fail(m, st.status == -EPROTONOSUPPORT ? -EPROTONOSUPPORT : -EPROTO,
				"the receiver (protocol version %u) refused the migration: %s", st.value,
				strerror(-st.status));
	return 0;
}

static int send_runs(struct uffdsnap_migrate *m, unsigned round, uint64_t *count)
{
	for (size_t i = 0; i < m->nruns; i++) {
		int r = send_range(m, m->runs[i].reg, m->runs[i].first, m->runs[i].n, round, count);
		if (r)
			return r;
	}
	m->nruns = 0;
	return 0;
}

static int switchover(struct uffdsnap_migrate *m, uint64_t *t_sw)
{
	int r = 0;

	*t_sw = usnap_now_ns();
	if (m->opts.switchover)
		r = m->opts.switchover(m->opts.user);
	if (r)
		return mig_fail(m, r < 0 ? r : -EINVAL, "the switchover callback returned %d", r);
	return 0;
}

/* ---- post-copy, sender -------------------------------------------------------------- */

/*
 * Pages per pushed frame, and the push's window: the bytes written to a TCP
 * socket and not yet acknowledged by the peer (tcpi_notsent_bytes + unacked
 * segments) kept under USNAP_MIG_PUSH_WINDOW. A page a fault asked for is
 * sent behind that window and nothing else: without it the push would fill
 * tcp_wmem (4 MiB here) and the tbf queue (10 ms at 1 Gbit/s), and every
 * request would wait that long (docs/migration.md "Post-copy", measured).
 * TCP_NOTSENT_LOWAT alone bounds only the unsent part, not what sits in the
 * link's queue. Overridable at build time to measure without it (0: no
 * window).
 */
#define USNAP_MIG_PUSH_BATCH 16u
/* Rounds of drops go on until one finds at most this many pages written
 * since the previous (~1.3 ms of punching on the receiver, measured ~2.5 us
 * a page), or max_rounds allows no more. */
#define USNAP_MIG_DROP_FEW 512u
#ifndef USNAP_MIG_PUSH_WINDOW
#define USNAP_MIG_PUSH_WINDOW (256u << 10)
#endif

/* m->runs (pages written since round 1) into the pending bitmaps, the new
 * ones into `fresh` too; *total: the pages now pending. */
static int pending_take(struct uffdsnap_migrate *m, uint64_t *total)
{
	for (unsigned i = 0; i < m->nregs; i++)
		if (!m->regs[i].pending && (!(m->regs[i].pending = calloc((m->regs[i].npages + 63) / 64, 8)) ||
					    !(m->regs[i].fresh = calloc((m->regs[i].npages + 63) / 64, 8))))
			return mig_fail(m, -ENOMEM, "the post-copy page bitmaps");
	for (size_t i = 0; i < m->nruns; i++) {
		const struct mig_reg *r = &m->regs[m->runs[i].reg];
		for (uint64_t k = m->runs[i].first; k < m->runs[i].first + m->runs[i].n; k++)
			if (!usnap_bit(r->pending, k)) {
				r->pending[k / 64] |= 1ull << (k % 64);
				r->fresh[k / 64] |= 1ull << (k % 64);
				++*total;
			}
	}
	m->nruns = 0;
	return 0;
}

/* The fresh bitmaps as DISCARD frames (chunks with a bit set only), then
 * cleared: the receiver drops each page once. */
static int send_discards(struct uffdsnap_migrate *m)
{
	const uint32_t max = USNAP_MIG_MAX_FRAME / 8 - 2;

	for (unsigned i = 0; i < m->nregs; i++) {
		uint64_t words = (m->regs[i].npages + 63) / 64;
		for (uint64_t w = 0; w < words;) {
			uint32_t n = words - w < max ? (uint32_t)(words - w) : max, k = 0;
			while (k < n && !m->regs[i].fresh[w + k])
				k++;
			if (k < n) {
				struct usnap_mig_discard d = { i, n, w * 64 };
				int r = send_frame(m, USNAP_MIG_DISCARD, &d, sizeof(d), m->regs[i].fresh + w, n * 8);
				if (r)
					return r;
				memset(m->regs[i].fresh + w, 0, n * 8);
			}
			w += n;
		}
	}
	return 0;
}

/* Send pages [first, first + n) of region ri that are still pending (all
 * of them must be), clearing them. */
static int send_pending(struct uffdsnap_migrate *m, unsigned ri, uint64_t first, uint64_t n, uint64_t *count)
{
	uint64_t *b = m->regs[ri].pending;

	for (uint64_t k = first; k < first + n; k++)
		b[k / 64] &= ~(1ull << (k % 64));
	return send_range(m, ri, first, n, m->pc_round, count);
}

/* The next run of pending pages from (*ri, *pg), at most USNAP_MIG_PUSH_BATCH
 * long; false when none is left. */
static bool next_pending(struct uffdsnap_migrate *m, unsigned *ri, uint64_t *pg, uint64_t *n)
{
	for (; *ri < m->nregs; (*ri)++, *pg = 0) {
		const struct mig_reg *r = &m->regs[*ri];
		uint64_t k = usnap_bits_find(r->pending, *pg, r->npages, true);
		if (k >= r->npages)
			continue;
		uint64_t lim = r->npages - k < USNAP_MIG_PUSH_BATCH ? r->npages : k + USNAP_MIG_PUSH_BATCH;
		*pg = k, *n = usnap_bits_find(r->pending, k, lim, false) - k;
		return true;
	}
	return false;
}

/* Bytes written to the socket that its peer has not acknowledged (0 where
 * that cannot be known: a unix socket has no link queue to keep short). */
static uint64_t unacked(int sock)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	/* an older kernel fills less of the struct: enough if it reaches the field */
	if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, &ti, &len) ||
	    len < offsetof(struct tcp_info, tcpi_notsent_bytes) + sizeof(ti.tcpi_notsent_bytes))
		return 0;
	return (uint64_t)ti.tcpi_notsent_bytes + (uint64_t)ti.tcpi_unacked * ti.tcpi_snd_mss;
}

/* A frame from the receiver during post-copy: RUNNING (the downtime ends),
 * REQUEST (answered at once if still pending), or the final ACK (*done). */
static int postcopy_answer(struct uffdsnap_migrate *m, bool ended, bool *running, bool *done, uint64_t *left,
			   uint64_t *count, uint64_t t_sw)
{
	union {
		struct usnap_mig_status st;
		struct usnap_mig_pages q;
	} u;
	struct usnap_mig_hdr h;
	char why[256];
	int r = frame_recv(m->sock, m->abort_fd, &h, (uint8_t *)&u, sizeof(u), why, sizeof(why));

	if (r)
		return mig_fail(m, r, "post-copy, the receiver: %s", why);
	if (h.type == USNAP_MIG_RUNNING && h.len == sizeof(u.st) && !*running && u.st.value == m->pc_round) {
		if (u.st.status < 0)
			return mig_fail(m, -EPROTO, "the receiver could not start: %s", strerror(-u.st.status));
		*running = true;
		m->downtime_ns = usnap_now_ns() - t_sw;
		return 0;
	}
	if (h.type == USNAP_MIG_REQUEST && h.len == sizeof(u.q) && *running) {
		if (u.q.region >= m->nregs || u.q.npages != 1 || u.q.first >= m->regs[u.q.region].npages)
			return mig_fail(m, -EBADMSG, "the receiver asked for page %" PRIu64 " of region %u", u.q.first,
					u.q.region);
		/* asked for again, or pushed meanwhile: the page is on its way */
		if (!usnap_bit(m->regs[u.q.region].pending, u.q.first))
			return 0;
		--*left;
		m->pages_requested++;
		return send_pending(m, u.q.region, u.q.first, 1, count);
	}
	if (h.type == USNAP_MIG_ACK && h.len == sizeof(u.st) && ended && u.st.value == m->pc_round) {
		if (u.st.status < 0)
			return mig_fail(m, -EPROTO, "the receiver failed post-copy: %s", strerror(-u.st.status));
		*done = true;
		return 0;
	}
	return mig_fail(m, -EBADMSG, "post-copy: unexpected frame of type %u (%u bytes) from the receiver", h.type,
			h.len);
}

/*
 * Post-copy, after round 1. The next rounds send no page: the pages written
 * since the previous look are found (scan, removals, punched pages) and the
 * receiver drops them while the program still runs; its ACK says it is done.
 * Each such round is short (a drop costs ~2.5 us a page on the receiver:
 * 10 ms for 4,000 pages, measured), so the next finds fewer pages; once one
 * finds at most USNAP_MIG_DROP_FEW (or at max_rounds - 1) the switchover
 * comes: the program stops, the pages written since the last scan are
 * dropped too, POSTCOPY, and the receiver runs. So the downtime holds one
 * scan and a few drops whatever the program's write rate, not the drops of
 * a whole round. The sender then pushes the pending pages in order while
 * answering the receiver's requests first; the program is paused and its
 * pages are read by system call, so its registration may wait for the end
 * (sender_main drops it on every path): unregistering 256 MiB took 6 ms,
 * which here would delay reading RUNNING and the first requests. One thread: a request is read as soon as the
 * socket says so between two pushed frames of at most USNAP_MIG_PUSH_BATCH
 * pages, and its page goes out before the next push.
 */
static int postcopy(struct uffdsnap_migrate *m)
{
	uint64_t t_sw, dirty = 0, left = 0, count = 0, pg = 0, n, t_last;
	bool running = false, ended = false, done = false;
	unsigned ri = 0, round = 2;
	int r;

	while (round < m->opts.max_rounds) {
		uint64_t before = left;
		if ((r = scan(m, false, &dirty)) || (r = take_removed(m, false, &dirty)) || (r = scan_holes(m, &dirty)) ||
		    (r = pending_take(m, &left)) || (r = send_discards(m)) || (r = end_round(m, round++, false, 0)))
			return r;
		if (left - before <= USNAP_MIG_DROP_FEW)
			break;
	}
	m->pc_round = round;
	if ((r = switchover(m, &t_sw)) || (r = scan(m, true, &dirty)) || (r = take_removed(m, true, &dirty)) ||
	    (r = scan_holes(m, &dirty)) || (r = pending_take(m, &left)) || (r = send_discards(m)))
		return r;
	struct usnap_mig_round pc = { .round = m->pc_round, .final = 0, .pages = left };
	if ((r = send_frame(m, USNAP_MIG_POSTCOPY, &pc, sizeof(pc), NULL, 0)))
		return r;
	t_last = usnap_now_ns();
	while (!done) {
		/* the push starts once the receiver runs: until then the sender
		 * only waits for RUNNING, which it then reads at once (the
		 * downtime) */
		bool pushing = running && !ended;
		bool room = pushing && (USNAP_MIG_PUSH_WINDOW == 0 || unacked(m->sock) < USNAP_MIG_PUSH_WINDOW);
		struct pollfd p[2] = { { m->sock, POLLIN | (room ? POLLOUT : 0), 0 }, { m->abort_fd, POLLIN, 0 } };
		/* a full window is polled again every millisecond: the peer's ACKs
		 * wake no poll of ours */
		int k = poll(p, 2, pushing && !room ? 1 : USNAP_MIG_IDLE_MS);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return mig_fail(m, -errno, "post-copy: poll: %s", strerror(errno));
		if (p[1].revents)
			return mig_fail(m, -ECANCELED, "cancelled");
		if (!k && usnap_now_ns() - t_last >= USNAP_MIG_IDLE_MS * 1000000ull)
			return mig_fail(m, -ETIMEDOUT, "post-copy: the receiver was silent for %d s",
					USNAP_MIG_IDLE_MS / 1000);
		if (k)
			t_last = usnap_now_ns();
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			if ((r = postcopy_answer(m, ended, &running, &done, &left, &count, t_sw)))
				return r;
			continue; /* every request before the next push */
		}
		if (!(p[0].revents & POLLOUT))
			continue;
		if (left && next_pending(m, &ri, &pg, &n)) {
			left -= n;
			if ((r = send_pending(m, ri, pg, n, &count)))
				return r;
		} else {
			struct usnap_mig_round re = { .round = m->pc_round, .final = 1, .pages = count };
			if ((r = send_frame(m, USNAP_MIG_ROUND_END, &re, sizeof(re), NULL, 0)))
				return r;
			ended = true;
		}
	}
	if (!running)
		return mig_fail(m, -EBADMSG, "the receiver acknowledged post-copy without running");
	m->rounds = m->pc_round;
	return 0;
}

static int run(struct uffdsnap_migrate *m)
{
	uint64_t t_sw = 0, count = 0, t_round;
	double budget_s = (double)m->opts.max_downtime_us / 1e6, bw; /* bytes per second */
	unsigned round = 1;
	int r = hello(m);

	if (r)
		return r;
	/* max_rounds 1 is stop-and-copy: the program stops before round 1 */
	if (m->opts.max_rounds == 1 && (r = switchover(m, &t_sw)))
		return r;
	for (unsigned i = 0; i < m->nregs; i++) {
		/* EAGAIN while an event is unread: the event thread reads it at once */
		for (unsigned tries = 0; (r = usnap_uffd_protect(m->uffd, m->regs[i].addr, m->regs[i].len, true)) ==
		     -EAGAIN && tries < 100000; tries++)
			usleep(100);
		if (r)
			return mig_fail(m, r, "region '%s': write-protecting: %s", m->regs[i].name, strerror(-r));
	}
	t_round = usnap_now_ns();
	uint64_t wire0 = m->bytes_wire;
	for (unsigned i = 0; i < m->nregs && !r; i++)
		r = send_range(m, i, 0, m->regs[i].npages, 1, &count);
	if (!r)
		r = end_round(m, 1, m->opts.max_rounds == 1, count);
	if (r || m->opts.max_rounds == 1)
		goto out;
	if (m->opts.flags & UFFDSNAP_MIGRATE_POSTCOPY)
		return postcopy(m);
	bw = (double)(m->bytes_wire - wire0) * 1e9 / (double)(usnap_now_ns() - t_round + 1);
	for (round = 2;; round++) {
		uint64_t dirty = 0;
		bool final;

		count = 0;
		if ((r = scan(m, false, &dirty)) || (r = take_removed(m, false, &dirty)) || (r = scan_holes(m, &dirty)))
			return r;
		/* the dirty set measured just now would take dirty / bw to send:
		 * within the budget (or out of rounds) the program stops now, and
		 * the final round also sends what it wrote since the scan */
		final = round >= m->opts.max_rounds || (double)dirty / bw <= budget_s;
		if (final && ((r = switchover(m, &t_sw)) || (r = scan(m, true, &dirty)) || (r = take_removed(m, true, &dirty)) ||
			      (r = scan_holes(m, &dirty))))
			return r;
		t_round = usnap_now_ns();
		wire0 = m->bytes_wire;
		if ((r = send_runs(m, round, &count)) || (r = end_round(m, round, final, count)))
			return r;
		if (final)
			break;
		/* rounds too small to time leave the estimate as it was */
		if (m->bytes_wire - wire0 >= (1u << 20))
			bw = (double)(m->bytes_wire - wire0) * 1e9 / (double)(usnap_now_ns() - t_round + 1);
	}
out:
	if (!r)
		m->downtime_ns = usnap_now_ns() - t_sw;
	return r;
}

static void events_stop(struct uffdsnap_migrate *m)
{
	uint64_t one = 1;

	if (!m->ev_started)
		return;
	if (write(m->ev_stop, &one, sizeof(one)) < 0) {
		/* full counter: it was told already */
	}
	pthread_join(m->ev_thread, NULL);
	m->ev_started = false;
}

static void *sender_main(void *arg)
{
	struct uffdsnap_migrate *m = arg;
	int r = run(m);

	disarm(m);
	events_stop(m);
	pthread_mutex_lock(&m->ctx->lock);
	m->ctx->migration = NULL;
	pthread_mutex_unlock(&m->ctx->lock);
	m->result = r;
	m->error = r;
	m->end_ns = usnap_now_ns();
	m->state = r ? UFFDSNAP_MIGRATE_FAILED : UFFDSNAP_MIGRATE_DONE;
	return NULL;
}

static void migrate_release(struct uffdsnap_migrate *m)
{
	for (unsigned i = 0; i < m->nregs; i++) {
		free(m->regs[i].name);
		free(m->regs[i].sent);
		free(m->regs[i].incore);
		free(m->regs[i].pending);
		free(m->regs[i].fresh);
		if (m->regs[i].fd >= 0)
			close(m->regs[i].fd);
	}
	free(m->regs);
	free(m->runs);
	free(m->removed);
	free(m->removed_all);
	free(m->vec);
	free(m->zbuf);
	ZSTD_freeCCtx(m->zc);
	if (m->buf)
		munmap(m->buf, USNAP_MIG_BATCH * m->ps);
	if (m->uffd >= 0)
		close(m->uffd);
	if (m->pagemap >= 0)
		close(m->pagemap);
	if (m->abort_fd >= 0)
		close(m->abort_fd);
	if (m->ev_stop >= 0)
		close(m->ev_stop);
	pthread_mutex_destroy(&m->join_lock);
	pthread_mutex_destroy(&m->ev_lock);
	free(m);
}

/* Copy ctx's regions (under ctx->lock, with the migration claimed) and
 * register them with the migration's descriptor. */
static int arm(struct uffdsnap_migrate *m, const uffdsnap_t *ctx)
{
	uint64_t ioctls;

	if (!(m->regs = calloc(ctx->nregs, sizeof(*m->regs))))
		return usnap_err(-ENOMEM, "the region table");
	for (unsigned i = 0; i < ctx->nregs; i++) {
		const struct usnap_reg *s = &ctx->regs[i];
		struct mig_reg *d = &m->regs[m->nregs++];
		*d = (struct mig_reg){ .name = strdup(s->name), .kind = s->kind, .addr = s->addr, .len = s->len,
				       .npages = s->npages, .fd = -1, .file_off = s->file_off };
		if (!d->name)
			return usnap_err(-ENOMEM, "copying region names");
		if (s->kind == USNAP_HUGETLB)
			return usnap_err(-EOPNOTSUPP, "region '%s': migrating hugetlbfs memory is not supported",
					 s->name);
		if (s->fd >= 0 && (d->fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0)) < 0)
			return usnap_err(-errno, "region '%s': dup of its file: %s", s->name, strerror(errno));
		if (s->fd >= 0 && (!(d->sent = calloc((d->npages + 63) / 64, 8)) || !(d->incore = malloc(d->npages))))
			return usnap_err(-ENOMEM, "region '%s': page bitmap", s->name);
	}
	for (unsigned i = 0; i < m->nregs; i++) {
		struct mig_reg *d = &m->regs[i];
		int r = usnap_uffd_register(m->uffd, d->addr, d->len, UFFDIO_REGISTER_MODE_WP, &ioctls);
		if (r)
			return usnap_err(r == -EINVAL ? -EMEDIUMTYPE : r, "region '%s': UFFDIO_REGISTER (WP_ASYNC): %s",
					 d->name, strerror(-r));
		d->registered = true;
		if (!(ioctls & (1ull << _UFFDIO_WRITEPROTECT)))
			return usnap_err(-EOPNOTSUPP, "region '%s': no write-protection for this memory", d->name);
	}
	return 0;
}

/* PAGEMAP_SCAN exists (Linux 6.7+) and accepts our descriptor: a scan of
 * the first page of region 0 (nothing is protected yet: it finds the page
 * "written", and re-protecting it is harmless before round 1 protects all). */
static int probe_scan(struct uffdsnap_migrate *m)
{
	uintptr_t we;
	int r = usnap_uffd_scan_written(m->pagemap, m->regs[0].addr, m->regs[0].addr + m->ps, m->vec, 1, &we);

	if (r == -ENOTTY || r == -EINVAL)
		return usnap_err(-EOPNOTSUPP, "PAGEMAP_SCAN is not available (%s): migration needs Linux 6.7+",
				 strerror(-r));
	return r < 0 ? usnap_err(r, "PAGEMAP_SCAN: %s", strerror(-r)) : 0;
}

USNAP_EXPORT int uffdsnap_migrate_send(uffdsnap_t *ctx, int sock, const uffdsnap_migrate_opts_t *opts,
				       uffdsnap_migrate_t **mp)
{
	struct uffdsnap_migrate *m;
	int r;

	usnap_clear_err();
	if (mp)
		*mp = NULL;
	if (!ctx || !mp || sock < 0)
		return usnap_err(-EINVAL, "uffdsnap_migrate_send: ctx and m must not be NULL, sock must be open");
	if (!(m = calloc(1, sizeof(*m))))
		return usnap_err(-ENOMEM, "allocating the migration");
	m->uffd = m->pagemap = m->abort_fd = m->ev_stop = -1;
	m->ctx = ctx, m->sock = sock, m->ps = ctx->page_size;
	pthread_mutex_init(&m->join_lock, NULL);
	pthread_mutex_init(&m->ev_lock, NULL);
	m->t0_ns = usnap_now_ns();
	if ((r = opts_take(&m->opts, opts))) {
		migrate_release(m);
		return r;
	}

	pthread_mutex_lock(&ctx->lock);
	r = ctx->active ? usnap_err(-EBUSY, "a snapshot is running on this context")
	    : ctx->migration ? usnap_err(-EBUSY, "a migration is already running on this context")
	    : !ctx->nregs ? usnap_err(-ENOENT, "no regions registered: call uffdsnap_add_region first")
	    : 0;
	if (!r) {
		ctx->migration = m;
		m->uffd = usnap_uffd_new_async(ctx->features);
		if (m->uffd < 0)
			r = m->uffd == -EOPNOTSUPP
				? usnap_err(-EOPNOTSUPP, "the kernel lacks UFFD_FEATURE_WP_ASYNC: migration needs "
					    "Linux 6.7+")
				: usnap_err(m->uffd, "a userfaultfd for write tracking: %s", strerror(-m->uffd));
	}
	if (!r)
		r = arm(m, ctx);
	pthread_mutex_unlock(&ctx->lock);
	if (!r && (m->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) < 0)
		r = usnap_err(-errno, "/proc/self/pagemap: %s", strerror(errno));
	if (!r && ((m->abort_fd = eventfd(0, EFD_CLOEXEC)) < 0 || (m->ev_stop = eventfd(0, EFD_CLOEXEC)) < 0))
		r = usnap_err(-errno, "eventfd: %s", strerror(errno));
	if (!r) {
		r = usnap_thread_start(&m->ev_thread, events_main, m, "usnap-mig-event");
		m->ev_started = !r;
	}
	if (!r && (!(m->vec = calloc(USNAP_MIG_SCAN_VEC, sizeof(*m->vec))) ||
		   (m->buf = mmap(NULL, USNAP_MIG_BATCH * m->ps, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)) {
		m->buf = NULL;
		r = usnap_err(-ENOMEM, "migration buffers");
	}
	if (!r && (m->opts.flags & UFFDSNAP_MIGRATE_COMPRESS)) {
		m->zcap = ZSTD_compressBound(USNAP_MIG_BATCH * m->ps);
		if (!(m->zc = ZSTD_createCCtx()) || !(m->zbuf = malloc(m->zcap)))
			r = usnap_err(-ENOMEM, "compression buffers");
	}
	if (!r)
		r = probe_scan(m);
	if (!r) {
		no_delay(sock);
		m->bw_t0 = usnap_now_ns();
		r = usnap_thread_start(&m->thread, sender_main, m, "usnap-migrate");
		m->started = !r;
	}
	if (r) {
		disarm(m);
		events_stop(m);
		pthread_mutex_lock(&ctx->lock);
		if (ctx->migration == m)
			ctx->migration = NULL;
		pthread_mutex_unlock(&ctx->lock);
		migrate_release(m);
		return r;
	}
	*mp = m;
	return 0;
}

/* Wait for a sender's or receiver's thread, once, from any number of callers. */
static void join_once(pthread_mutex_t *lock, bool *joined, pthread_t t)
{
	pthread_mutex_lock(lock);
	if (!*joined) {
		pthread_join(t, NULL);
		*joined = true;
	}
	pthread_mutex_unlock(lock);
}

USNAP_EXPORT int uffdsnap_migrate_wait(uffdsnap_migrate_t *m)
{
	if (!m)
		return usnap_err(-EINVAL, "m is NULL");
	join_once(&m->join_lock, &m->joined, m->thread);
	return m->result ? usnap_err(m->result, "migration: %s", m->errmsg) : 0;
}

USNAP_EXPORT int uffdsnap_migrate_stats(const uffdsnap_migrate_t *m, uffdsnap_migrate_stats_t *out)
{
	uffdsnap_migrate_stats_t s = { .size = sizeof(s) };
	uint64_t end;

	if (!m || !out)
		return usnap_err(-EINVAL, "uffdsnap_migrate_stats: m and out must not be NULL");
	if (usnap_check_size("uffdsnap_migrate_stats", "uffdsnap_migrate_stats_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_migrate_stats_t, error), sizeof(s)))
		return -EINVAL;
	s.state = m->state;
	s.error = m->error;
	s.rounds = m->rounds;
	for (unsigned i = 0; i < UFFDSNAP_MIGRATE_MAX_ROUNDS; i++)
		s.round_bytes[i] = m->round_bytes[i];
	s.bytes_wire = m->bytes_wire;
	s.pages_sent = m->pages_sent;
	s.pages_zero = m->pages_zero;
	s.downtime_ns = m->downtime_ns;
	s.pages_requested = m->pages_requested;
	end = m->end_ns;
	s.total_ns = (end ? end : usnap_now_ns()) - m->t0_ns;
	s.size = out->size;
	memcpy(out, &s, out->size);
	return 0;
}

static void cancel(int abort_fd)
{
	uint64_t one = 1;

	if (write(abort_fd, &one, sizeof(one)) < 0) {
		/* an eventfd write fails only when the counter is full: woken already */
	}
}

void usnap_migrate_stop(struct uffdsnap_migrate *m)
{
	cancel(m->abort_fd);
	uffdsnap_migrate_wait(m);
}

USNAP_EXPORT void uffdsnap_migrate_free(uffdsnap_migrate_t *m)
{
	if (!m)
		return;
	usnap_migrate_stop(m);
	migrate_release(m);
}

/* ---- receiver ------------------------------------------------------------------------- */

struct in_reg {
	char *name;
	size_t len;
	uint64_t npages;
	int fd;
	void *addr;
	_Atomic uint64_t *dropped;     /* post-copy: pages dropped and not arrived since: the others'
					* contents are final here. Zero to start with, and mapped
					* (usnap_bits_map), so that a region table's claim costs no
					* work before pages come (a hostile 28 TiB claim kept a
					* fill of ones busy for minutes: found by fuzz-migrate) */
	uint64_t *asked;               /* post-copy: pages requested (the fault thread's) */
	bool registered;               /* post-copy: with in->uffd, for missing pages */
};

struct uffdsnap_incoming {
	int sock, abort_fd;
	bool postcopy;                 /* the sender's HELLO asked for it */
	bool running;                  /* post-copy: switched over (the receiver thread's) */
	int uffd, fault_stop;          /* post-copy: missing-page faults; eventfd ending the fault thread */
	pthread_t fault_thread;
	bool fault_started;
	pthread_mutex_t send_lock;     /* the socket's reverse direction: ACKs and RUNNING, and requests */
	pthread_mutex_t state_lock;
	pthread_cond_t state_cond;
	bool ready, finished;          /* under state_lock: the memory may be used; the thread ended */
	_Atomic bool dead;             /* post-copy failed: faults on pages not arrived are poisoned */
	uint64_t missing;              /* post-copy: pages dropped and not arrived yet */
	size_t ps;
	struct in_reg *regs;
	unsigned nregs;
	uint8_t *buf;
	size_t cap;
	ZSTD_DCtx *zd;                 /* created at the first compressed frame */
	uint8_t *zout;                 /* USNAP_MIG_BATCH pages */
	pthread_t thread;
	bool started, joined;
	pthread_mutex_t join_lock;
	int result;
	char errmsg[512];
};

/* Set a state flag (ready, finished) and wake uffdsnap_incoming_wait(). */
static void mark(struct uffdsnap_incoming *in, bool *flag)
{
	pthread_mutex_lock(&in->state_lock);
	*flag = true;
	pthread_cond_broadcast(&in->state_cond);
	pthread_mutex_unlock(&in->state_lock);
}

static int in_fail(struct uffdsnap_incoming *in, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int in_fail(struct uffdsnap_incoming *in, int err, const char *fmt, ...)
{
	va_list ap;

	if (!in->errmsg[0]) {
		va_start(ap, fmt);
		usnap_vformat(in->errmsg, sizeof(in->errmsg), fmt, ap);
		va_end(ap);
	}
	return err;
}

/* A frame to the sender: the fault thread's requests and the receiver
 * thread's answers share the direction. */
static int send_back(struct uffdsnap_incoming *in, uint16_t type, const void *p, uint32_t len)
{
	_Atomic uint64_t wire = 0;
	int r;

	pthread_mutex_lock(&in->send_lock);
	r = frame_send(in->sock, in->abort_fd, type, p, len, NULL, 0, &wire);
	pthread_mutex_unlock(&in->send_lock);
	return r;
}

static int send_status(struct uffdsnap_incoming *in, uint16_t type, uint32_t value, int status)
{
	struct usnap_mig_status st = { value, status };

	return send_back(in, type, &st, sizeof(st));
}

/* Parse the region table from hostile bytes and create the memfds. */
static int take_hello(struct uffdsnap_incoming *in, const uint8_t *p, uint32_t len)
{
	struct usnap_mig_hello h;
	size_t off = sizeof(h);
	uint64_t total = 0;

	if (len < sizeof(h))
		return in_fail(in, -EBADMSG, "region table of %u bytes is too short", len);
	memcpy(&h, p, sizeof(h));
	if (h.version != USNAP_MIG_VERSION)
		return in_fail(in, -EPROTONOSUPPORT, "the sender speaks protocol version %u; this library %u",
			       h.version, USNAP_MIG_VERSION);
	if (h.page_size != in->ps)
		return in_fail(in, -EBADMSG, "the sender's page size is %u; ours is %zu", h.page_size, in->ps);
	if (!h.nregions || h.nregions > USNAP_MAX_REGIONS || (h.flags & ~USNAP_MIG_HELLO_POSTCOPY))
		return in_fail(in, -EBADMSG, "region table: %u regions (1..%d), flags 0x%x", h.nregions,
			       USNAP_MAX_REGIONS, h.flags);
	if (h.flags & USNAP_MIG_HELLO_POSTCOPY) {
		uint64_t lack = 0;
		in->postcopy = true;
		in->uffd = usnap_uffd_new_missing(&lack);
		if (in->uffd < 0)
			return in_fail(in, in->uffd, "post-copy needs a userfaultfd with missing-page faults on shmem "
				       "and UFFDIO_POISON (Linux 6.6+): %s%s%s", strerror(-in->uffd),
				       lack & UFFD_FEATURE_MISSING_SHMEM ? "; no UFFD_FEATURE_MISSING_SHMEM" : "",
				       lack & UFFD_FEATURE_POISON ? "; no UFFD_FEATURE_POISON" : "");
		if ((in->fault_stop = eventfd(0, EFD_CLOEXEC)) < 0)
			return in_fail(in, -errno, "eventfd: %s", strerror(errno));
	}
	if (!(in->regs = calloc(h.nregions, sizeof(*in->regs))))
		return in_fail(in, -ENOMEM, "the region table");
	for (unsigned i = 0; i < h.nregions; i++) {
		struct in_reg *r = &in->regs[in->nregs];
		uint64_t rl;
		uint32_t nl;
		if (len - off < 12)
			return in_fail(in, -EBADMSG, "region table: region %u is cut short", i);
		memcpy(&rl, p + off, 8), memcpy(&nl, p + off + 8, 4);
		off += 12;
		if (!nl || nl > USNAP_MAX_NAME || nl > len - off || memchr(p + off, 0, nl))
			return in_fail(in, -EBADMSG, "region table: region %u has a bad name (%u bytes)", i, nl);
		if (!rl || rl % in->ps || rl > (1ull << 47) || __builtin_add_overflow(total, rl, &total) ||
		    total > (1ull << 47))
			return in_fail(in, -EBADMSG, "region table: region %u has a bad length %" PRIu64, i, rl);
		for (unsigned j = 0; j < in->nregs; j++)
			if (strlen(in->regs[j].name) == nl && !memcmp(in->regs[j].name, p + off, nl))
				return in_fail(in, -EBADMSG, "region table: region %u repeats a name", i);
		if (!(r->name = strndup((const char *)p + off, nl)))
			return in_fail(in, -ENOMEM, "region names");
		off += nl;
		r->fd = -1;
		r->len = rl, r->npages = rl / in->ps;
		in->nregs++;
		/* memfd names are at most 249 bytes: the rest of a long name is cut */
		char mname[250];
		snprintf(mname, sizeof(mname), "uffdsnap-in:%s", r->name);
		r->fd = memfd_create(mname, MFD_CLOEXEC);
		if (r->fd < 0)
			return in_fail(in, -errno, "region '%s': memfd_create: %s", r->name, strerror(errno));
		if (ftruncate(r->fd, (off_t)rl))
			return in_fail(in, -errno, "region '%s': sizing its memfd to %" PRIu64 ": %s", r->name, rl,
				       strerror(errno));
		r->addr = mmap(NULL, rl, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
		if (r->addr == MAP_FAILED) {
			r->addr = NULL;
			return in_fail(in, -errno, "region '%s': mapping %" PRIu64 " bytes: %s", r->name, rl,
				       strerror(errno));
		}
		/* post-copy: every page is final until a DISCARD says otherwise
		 * (round 1 sends them all, holes as holes) */
		if (in->postcopy) {
			if (!(r->dropped = usnap_bits_map(r->npages)) || !(r->asked = usnap_bits_map(r->npages)))
				return in_fail(in, -ENOMEM, "region '%s': page bitmaps", r->name);
		}
	}
	if (off != len)
		return in_fail(in, -EBADMSG, "region table: %u bytes, %zu used", len, off);
	return 0;
}

/*
 * Post-copy, after the switchover: pages [first, first + n) of region ri
 * arrive (data, or zero if NULL). They must be pages the receiver dropped and
 * has not received since. UFFDIO_COPY (or ZEROPAGE) maps them and wakes the
 * threads faulting there. EEXIST means the page was created behind the
 * mapping's back (a write(2) or fallocate on the memfd, or a fault through
 * another mapping of it) after it was dropped: its contents are not the
 * sender's and nothing can merge them, so the migration fails (-EEXIST) and
 * the page is left as it is.
 */
static int place(struct uffdsnap_incoming *in, unsigned ri, uint64_t first, uint32_t n, const uint8_t *data)
{
	struct in_reg *r = &in->regs[ri];
	uint64_t done = 0;

	for (uint64_t k = first; k < first + n; k++)
		if (!usnap_abit(r->dropped, k))
			return in_fail(in, -EBADMSG, "region '%s': page %" PRIu64 " arrived twice", r->name, k);
	while (done < n) {
		int64_t got = 0;
		int e = usnap_uffd_fill(in->uffd, (uintptr_t)r->addr + (first + done) * in->ps,
					data ? data + done * in->ps : NULL, (n - done) * in->ps, &got);
		if (got > 0)
			done += (uint64_t)got / in->ps;
		if (e == -EEXIST)
			return in_fail(in, -EEXIST, "region '%s': page %" PRIu64 " was created outside the migration's "
				       "mapping before it arrived", r->name, first + done);
		if (e && e != -EAGAIN)
			return in_fail(in, e, "region '%s': placing page %" PRIu64 ": %s", r->name, first + done,
				       strerror(-e));
	}
	usnap_abits_clear(r->dropped, first, first + n);
	in->missing -= n;
	return 0;
}

/* A DISCARD frame (post-copy, between round 1 and the switchover): the pages
 * it names were written on the sender since round 1 sent them; they are
 * punched out here and arrive again after the switchover. */
static int take_discard(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h)
{
	struct usnap_mig_discard d;
	uint64_t words;

	if (h->len < sizeof(d))
		return in_fail(in, -EBADMSG, "discard frame of %u bytes", h->len);
	memcpy(&d, in->buf, sizeof(d));
	if (d.region >= in->nregs || !d.nwords || h->len != sizeof(d) + (uint64_t)d.nwords * 8 || d.first % 64 ||
	    d.first / 64 > (words = (in->regs[d.region].npages + 63) / 64) || d.nwords > words - d.first / 64)
		return in_fail(in, -EBADMSG, "discard frame: region %u, %u words from page %" PRIu64, d.region,
			       d.nwords, d.first);
	struct in_reg *r = &in->regs[d.region];
	for (uint32_t w = 0; w < d.nwords; w++) {
		uint64_t x, base = d.first + (uint64_t)w * 64;
		memcpy(&x, in->buf + sizeof(d) + (size_t)w * 8, 8);
		if ((x & atomic_load(&r->dropped[base / 64])) ||
		    (r->npages - base < 64 && x >> (r->npages - base)))
			return in_fail(in, -EBADMSG, "discard frame: region '%s' pages from %" PRIu64 " dropped twice "
				       "or past its end", r->name, base);
		atomic_fetch_or(&r->dropped[base / 64], x);
		in->missing += (uint64_t)__builtin_popcountll(x);
		while (x) {
			unsigned b = (unsigned)__builtin_ctzll(x), e = b;
			while (e < 64 && (x >> e & 1))
				e++;
			x &= e == 64 ? 0 : ~0ull << e;
			if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)((base + b) * in->ps),
				      (off_t)((e - b) * in->ps)))
				return in_fail(in, -errno, "region '%s': dropping pages: %s", r->name, strerror(errno));
		}
	}
	return 0;
}

/* Apply a PAGES or ZERO frame after checking it names pages that exist. */
static int take_pages(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, uint64_t *count)
{
	struct usnap_mig_pages p;
	uint64_t end;

	if (h->len < sizeof(p))
		return in_fail(in, -EBADMSG, "page frame of %u bytes", h->len);
	memcpy(&p, in->buf, sizeof(p));
	if (p.region >= in->nregs || !p.npages || p.npages > USNAP_MIG_BATCH ||
	    __builtin_add_overflow(p.first, (uint64_t)p.npages, &end) || end > in->regs[p.region].npages)
		return in_fail(in, -EBADMSG, "page frame: region %u pages %" PRIu64 "+%u are not in the migration",
			       p.region, p.first, p.npages);
	const struct in_reg *r = &in->regs[p.region];
	off_t off = (off_t)(p.first * in->ps);
	size_t len = (size_t)p.npages * in->ps;
	const uint8_t *data = in->buf + sizeof(p);
	if (h->type == USNAP_MIG_PAGES_Z) {
		/* decompressed into a buffer of exactly the pages' size: a frame
		 * that decompresses to more, or less, is refused */
		if (!in->zd && (!(in->zd = ZSTD_createDCtx()) || !(in->zout = malloc(USNAP_MIG_BATCH * in->ps))))
			return in_fail(in, -ENOMEM, "decompression buffers");
		size_t z = ZSTD_decompressDCtx(in->zd, in->zout, len, data, h->len - sizeof(p));
		if (ZSTD_isError(z) || z != len)
			return in_fail(in, -EBADMSG, "compressed page frame: %s",
				       ZSTD_isError(z) ? ZSTD_getErrorName(z) : "not the announced pages");
		data = in->zout;
	}
	if (h->type == USNAP_MIG_ZERO && h->len != sizeof(p))
		return in_fail(in, -EBADMSG, "zero frame of %u bytes", h->len);
	if (h->type == USNAP_MIG_PAGES && h->len != sizeof(p) + len)
		return in_fail(in, -EBADMSG, "page frame of %u bytes for %u pages", h->len, p.npages);
	if (in->running) {
		int e = place(in, p.region, p.first, p.npages, h->type == USNAP_MIG_ZERO ? NULL : data);
		if (e)
			return e;
	} else if (h->type == USNAP_MIG_ZERO) {
		/* the pages read as zero again and cost no memory */
		if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len))
			return in_fail(in, -errno, "region '%s': punching pages: %s", r->name, strerror(errno));
	} else {
		for (size_t done = 0; done < len;) {
			ssize_t k = pwrite(r->fd, data + done, len - done, off + (off_t)done);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return in_fail(in, k < 0 ? -errno : -EIO, "region '%s': writing pages: %s", r->name,
					       k < 0 ? strerror(errno) : "short write");
			done += (size_t)k;
		}
	}
	*count += p.npages;
	return 0;
}

/* Poison page(s) [addr, addr + len) and wake whoever waits there. */
static void poison_pages(struct uffdsnap_incoming *in, uintptr_t addr, size_t len)
{
	while (len) {
		int64_t done = 0;
		int e = usnap_uffd_poison(in->uffd, addr, len, true, &done);
		if (!e)
			return;
		/* EEXIST: that page is there after all; skip it */
		size_t step = done > 0 ? (size_t)done : in->ps;
		if (done <= 0)
			usnap_uffd_wake(in->uffd, addr, in->ps);
		if (done <= 0 && e != -EEXIST && e != -EAGAIN)
			step = len; /* nothing more can be done here */
		addr += step, len -= step;
	}
}

static void poison_rest(struct uffdsnap_incoming *in)
{
	uint64_t left = in->missing; /* the bits set in the maps: stop once all are found */

	for (unsigned i = 0; i < in->nregs && left; i++) {
		struct in_reg *r = &in->regs[i];
		for (uint64_t k = 0; k < r->npages && left;) {
			if (!usnap_abit(r->dropped, k)) {
				/* a word at a time where nothing is missing */
				k = atomic_load(&r->dropped[k / 64]) >> (k % 64) ? k + 1 : (k | 63) + 1;
				continue;
			}
			uint64_t e = k + 1;
			while (e < r->npages && usnap_abit(r->dropped, e))
				e++;
			poison_pages(in, (uintptr_t)r->addr + k * in->ps, (e - k) * in->ps);
			left -= e - k < left ? e - k : left;
			k = e;
		}
	}
}

/*
 * A fault on a registered page: one whose contents are final is a hole that
 * reads as zero (a zero page of round 1, or one the program punched since):
 * placed as zero at once. One not arrived yet is asked for, once; its
 * arrival (UFFDIO_COPY) wakes every thread waiting on it. After a failure
 * it is poisoned.
 */
static void on_fault(struct uffdsnap_incoming *in, uintptr_t addr)
{
	struct in_reg *r = NULL;

	addr &= ~(uintptr_t)(in->ps - 1);
	for (unsigned i = 0; i < in->nregs && !r; i++)
		if (addr >= (uintptr_t)in->regs[i].addr && addr < (uintptr_t)in->regs[i].addr + in->regs[i].len)
			r = &in->regs[i];
	if (!r) {
		poison_pages(in, addr, in->ps);
		return;
	}
	uint64_t k = (addr - (uintptr_t)r->addr) / in->ps;
	if (!usnap_abit(r->dropped, k)) {
		int64_t done;
		int e = usnap_uffd_fill(in->uffd, addr, NULL, in->ps, &done);
		if (e == -EEXIST)
			usnap_uffd_wake(in->uffd, addr, in->ps);
		else if (e)
			poison_pages(in, addr, in->ps);
		return;
	}
	if (atomic_load(&in->dead)) {
		poison_pages(in, addr, in->ps);
		return;
	}
	if (usnap_bit(r->asked, k))
		return;
	r->asked[k / 64] |= 1ull << (k % 64);
	struct usnap_mig_pages q = { (uint32_t)(r - in->regs), 1, k };
	/* a lost connection: the receiver thread hears it too, and poisons */
	(void)send_back(in, USNAP_MIG_REQUEST, &q, sizeof(q));
}

static void *fault_main(void *arg)
{
	struct uffdsnap_incoming *in = arg;
	struct uffd_msg msg[16];
	ssize_t n;

	while ((n = uffd_read(in->uffd, in->fault_stop, msg, sizeof(msg))) >= 0)
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msg[0]); i++)
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(in, (uintptr_t)msg[i].arg.pagefault.address);
	return NULL;
}

/* The POSTCOPY frame: every dropped page announced; the mappings are
 * registered for missing-page faults, the fault thread starts, the sender
 * hears RUNNING and the program may use the memory. */
static int start_postcopy(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, unsigned round)
{
	struct usnap_mig_round re;
	uint64_t ioctls;
	int r = 0;

	if (h->len != sizeof(re))
		return in_fail(in, -EBADMSG, "post-copy frame of %u bytes", h->len);
	memcpy(&re, in->buf, sizeof(re));
	if (re.round != round || re.final || re.pages != in->missing)
		return in_fail(in, -EBADMSG, "post-copy frame: round %u, final %u, %" PRIu64 " pages dropped; %" PRIu64
			       " were", re.round, re.final, re.pages, in->missing);
	in->running = true;
	for (unsigned i = 0; i < in->nregs && !r; i++) {
		struct in_reg *g = &in->regs[i];
		r = usnap_uffd_register(in->uffd, (uintptr_t)g->addr, g->len, UFFDIO_REGISTER_MODE_MISSING, &ioctls);
		if (r)
			in_fail(in, r, "region '%s': UFFDIO_REGISTER (missing): %s", g->name, strerror(-r));
		g->registered = !r;
	}
	if (!r && (r = usnap_thread_start(&in->fault_thread, fault_main, in, "usnap-mig-fault")))
		in_fail(in, r, "starting the fault thread");
	in->fault_started = !r;
	if (r) {
		/* the sender learns it at once rather than after 30 s of silence */
		send_status(in, USNAP_MIG_RUNNING, round, r);
		return r;
	}
	r = send_status(in, USNAP_MIG_RUNNING, round, 0);
	if (r)
		return in_fail(in, r, "telling the sender the program runs: %s", strerror(-r));
	mark(in, &in->ready);
	return 0;
}

static int receive(struct uffdsnap_incoming *in)
{
	uint64_t count = 0;
	unsigned expect = 1;
	char why[256];

	for (;;) {
		struct usnap_mig_hdr h;
		struct usnap_mig_round re;
		int r = frame_recv(in->sock, in->abort_fd, &h, in->buf, in->cap, why, sizeof(why));
		if (r)
			return in_fail(in, r, "receiving round %u: %s", expect, why);
		switch (h.type) {
		case USNAP_MIG_PAGES:
		case USNAP_MIG_PAGES_Z:
		case USNAP_MIG_ZERO:
			/* post-copy sends pages in round 1 and after the switchover only */
			if (in->postcopy && !in->running && expect > 1)
				return in_fail(in, -EBADMSG, "page frame in post-copy round %u, before the switchover",
					       expect);
			if ((r = take_pages(in, &h, &count)))
				return r;
			break;
		case USNAP_MIG_ROUND_END:
			if (h.len != sizeof(re))
				return in_fail(in, -EBADMSG, "round end frame of %u bytes", h.len);
			memcpy(&re, in->buf, sizeof(re));
			/* post-copy: round 1, rounds of drops only, then after the
			 * switchover the end of the push, once every dropped page
			 * arrived */
			if (re.round != expect || re.pages != count || re.final > 1 ||
			    (in->postcopy && re.round > 1 && (in->running ? !re.final || in->missing : re.final)))
				return in_fail(in, -EBADMSG, "round end: round %u (final %u) with %" PRIu64 " pages; expected "
					       "round %u with %" PRIu64 " (%" PRIu64 " pages missing)", re.round, re.final,
					       re.pages, expect, count, in->missing);
			r = send_status(in, USNAP_MIG_ACK, re.round, 0);
			if (r)
				return in_fail(in, r, "acknowledging round %u: %s", re.round, strerror(-r));
			if (re.final)
				return 0;
			if (expect++ == UFFDSNAP_MIGRATE_MAX_ROUNDS)
				return in_fail(in, -EBADMSG, "more than %d rounds", UFFDSNAP_MIGRATE_MAX_ROUNDS);
			count = 0;
			break;
		case USNAP_MIG_DISCARD:
		case USNAP_MIG_POSTCOPY:
			if (!in->postcopy || in->running || expect < 2)
				return in_fail(in, -EBADMSG, "unexpected frame of type %u in round %u", h.type, expect);
			if (h.type == USNAP_MIG_DISCARD && (r = take_discard(in, &h)))
				return r;
			if (h.type == USNAP_MIG_POSTCOPY && (r = start_postcopy(in, &h, expect)))
				return r;
			count = 0;
			break;
		default:
			return in_fail(in, -EBADMSG, "unexpected frame of type %u in round %u", h.type, expect);
		}
	}
}

/* After the push, or a failure: on failure every page not arrived is
 * poisoned (a touch raises SIGBUS, never waits for a page that cannot come),
 * and the threads already waiting are woken to find it so; the fault thread
 * ends and the mappings are unregistered (the poison stays). */
static void postcopy_end(struct uffdsnap_incoming *in, bool failed)
{
	uint64_t one = 1;

	if (failed) {
		atomic_store(&in->dead, true);
		poison_rest(in);
	}
	if (in->fault_started) {
		if (write(in->fault_stop, &one, sizeof(one)) < 0) {
			/* full counter: it was told already */
		}
		pthread_join(in->fault_thread, NULL);
		in->fault_started = false;
	}
	for (unsigned i = 0; i < in->nregs; i++)
		if (in->regs[i].registered) {
			usnap_uffd_unregister(in->uffd, (uintptr_t)in->regs[i].addr, in->regs[i].len);
			in->regs[i].registered = false;
		}
}

static void *receiver_main(void *arg)
{
	struct uffdsnap_incoming *in = arg;

	in->result = receive(in);
	if (in->running)
		postcopy_end(in, in->result != 0);
	if (!in->result)
		mark(in, &in->ready);
	mark(in, &in->finished);
	return NULL;
}

static void incoming_release(struct uffdsnap_incoming *in)
{
	for (unsigned i = 0; i < in->nregs; i++) {
		if (in->regs[i].addr)
			munmap(in->regs[i].addr, in->regs[i].len);
		if (in->regs[i].fd >= 0)
			close(in->regs[i].fd);
		free(in->regs[i].name);
		usnap_bits_unmap((void *)in->regs[i].dropped, in->regs[i].npages);
		usnap_bits_unmap(in->regs[i].asked, in->regs[i].npages);
	}
	free(in->regs);
	if (in->uffd >= 0)
		close(in->uffd);
	if (in->fault_stop >= 0)
		close(in->fault_stop);
	pthread_mutex_destroy(&in->send_lock);
	pthread_mutex_destroy(&in->state_lock);
	pthread_cond_destroy(&in->state_cond);
	ZSTD_freeDCtx(in->zd);
	free(in->zout);
	if (in->buf)
		munmap(in->buf, in->cap);
	if (in->abort_fd >= 0)
		close(in->abort_fd);
	pthread_mutex_destroy(&in->join_lock);
	free(in);
}

USNAP_EXPORT int uffdsnap_migrate_recv(int sock, const uffdsnap_migrate_opts_t *opts, uffdsnap_incoming_t **inp)
{
	struct uffdsnap_incoming *in;
	uffdsnap_migrate_opts_t o;
	struct usnap_mig_hdr h;
	char why[256];
	int r;

	usnap_clear_err();
	if (inp)
		*inp = NULL;
	if (!inp || sock < 0)
		return usnap_err(-EINVAL, "uffdsnap_migrate_recv: in must not be NULL, sock must be open");
	if ((r = opts_take(&o, opts)))
		return r;
	if (!(in = calloc(1, sizeof(*in))))
		return usnap_err(-ENOMEM, "allocating the receiver");
	pthread_mutex_init(&in->join_lock, NULL);
	pthread_mutex_init(&in->send_lock, NULL);
	pthread_mutex_init(&in->state_lock, NULL);
	pthread_cond_init(&in->state_cond, NULL);
	in->uffd = in->fault_stop = -1;
	in->sock = sock;
	in->ps = (size_t)sysconf(_SC_PAGESIZE);
	in->cap = sizeof(struct usnap_mig_pages) + USNAP_MIG_BATCH * in->ps;
	if (in->cap < USNAP_MIG_MAX_FRAME)
		in->cap = USNAP_MIG_MAX_FRAME;
	no_delay(sock);
	in->abort_fd = eventfd(0, EFD_CLOEXEC);
	in->buf = mmap(NULL, in->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (in->abort_fd < 0 || in->buf == MAP_FAILED) {
		r = in->abort_fd < 0 ? -errno : -ENOMEM;
		in->buf = NULL;
		incoming_release(in);
		return usnap_err(r, "receiver buffers: %s", strerror(-r));
	}
	r = frame_recv(sock, in->abort_fd, &h, in->buf, USNAP_MIG_MAX_FRAME, why, sizeof(why));
	if (r)
		in_fail(in, r, "reading the sender's region table: %s", why);
	else if (h.type != USNAP_MIG_HELLO)
		r = in_fail(in, -EBADMSG, "expected the region table, got a frame of type %u", h.type);
	else
		r = take_hello(in, in->buf, h.len);
	/* a sender that speaks our protocol learns why (best effort) */
	if (r != -EBADMSG && r != -EPIPE && r != -ETIMEDOUT)
		send_status(in, USNAP_MIG_HELLO_OK, USNAP_MIG_VERSION, r);
	if (!r) {
		r = usnap_thread_start(&in->thread, receiver_main, in, "usnap-mig-recv");
		in->started = !r;
		if (r)
			in_fail(in, r, "starting the receiver thread");
	}
	if (r) {
		r = usnap_err(r, "%s", in->errmsg);
		incoming_release(in);
		return r;
	}
	*inp = in;
	return 0;
}

USNAP_EXPORT int uffdsnap_incoming_wait(uffdsnap_incoming_t *in)
{
	bool failed;

	if (!in)
		return usnap_err(-EINVAL, "in is NULL");
	pthread_mutex_lock(&in->state_lock);
	while (!in->ready && !in->finished)
		pthread_cond_wait(&in->state_cond, &in->state_lock);
	failed = in->finished && in->result;
	pthread_mutex_unlock(&in->state_lock);
	return failed ? usnap_err(in->result, "incoming migration: %s", in->errmsg) : 0;
}

USNAP_EXPORT int uffdsnap_incoming_complete(uffdsnap_incoming_t *in)
{
	if (!in)
		return usnap_err(-EINVAL, "in is NULL");
	join_once(&in->join_lock, &in->joined, in->thread);
	return in->result ? usnap_err(in->result, "incoming migration: %s", in->errmsg) : 0;
}

USNAP_EXPORT int uffdsnap_incoming_count(const uffdsnap_incoming_t *in)
{
	return in ? (int)in->nregs : usnap_err(-EINVAL, "in is NULL");
}

USNAP_EXPORT int uffdsnap_incoming_region(const uffdsnap_incoming_t *in, unsigned id, uffdsnap_incoming_region_t *out)
{
	uffdsnap_incoming_region_t r = { .size = sizeof(r) };

	if (!in || !out)
		return usnap_err(-EINVAL, "uffdsnap_incoming_region: in and out must not be NULL");
	if (usnap_check_size("uffdsnap_incoming_region", "uffdsnap_incoming_region_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_incoming_region_t, addr), sizeof(r)))
		return -EINVAL;
	if (id >= in->nregs)
		return usnap_err(-ENOENT, "no region %u (%u regions)", id, in->nregs);
	r.name = in->regs[id].name;
	r.len = in->regs[id].len;
	r.fd = in->regs[id].fd;
	r.addr = in->regs[id].addr;
	r.size = out->size;
	memcpy(out, &r, out->size);
	return 0;
}

USNAP_EXPORT void uffdsnap_incoming_free(uffdsnap_incoming_t *in)
{
	if (!in)
		return;
	cancel(in->abort_fd);
	uffdsnap_incoming_complete(in);
	incoming_release(in);
}
