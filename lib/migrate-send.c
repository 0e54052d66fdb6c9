/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration, the sender (docs/migration.md): tracking the program's
 * writes, the rounds of pre-copy and the switchover; owns
 * uffdsnap_migrate_send/wait/stats/free. Post-copy's rounds after the first
 * are migrate-postcopy.c; the transport is migrate.c.
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
 * second thread, because the thread that zaps waits until its event is read:
 * on the loop thread it would wait behind a scan or a batch of reads).
 *
 * The sender's thread runs the migration's libuv loop. Its work is a
 * sequence (scan, read pages, write frames, wait for the round's ACK), so it
 * is written as one: each frame is handed to uv_write and the loop is run
 * until libuv's write queue for it is empty (back-pressure: the kernel's
 * socket buffer is the only queue, as before), each answer is awaited by
 * running the loop until the read callback has delimited it. The scan and
 * the page reads (PAGEMAP_SCAN, pread, process_vm_readv) stay synchronous on
 * that thread: they are short system calls that never wait for the peer,
 * the data they produce is what the next write sends, and a worker thread
 * would only add a hand-off between the two.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bitmap.h"
#include "migrate-private.h"
#include "uffd.h"

#define USNAP_MIG_SCAN_VEC 512

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

/* A frame to the receiver, once max_bandwidth allows it (the pacer), and
 * the loop run until libuv's queue is empty: the kernel holds every byte of
 * it, so head and data may change after the return. */
int usnap_mig_send_frame(struct uffdsnap_migrate *m, uint16_t type, const void *head, uint32_t hl, const void *data,
			 uint32_t dl)
{
	uint64_t wait;
	int r = usnap_latch_err(&m->latch);

	if (r < 0)
		return r;
	while ((wait = usnap_mig_pacer_take(&m->pacer, usnap_now_ns(), sizeof(struct usnap_mig_hdr) + hl + dl)))
		if ((r = usnap_mig_sleep(m->link, (wait + 999999) / 1000000)))
			return r;
	if ((r = usnap_mig_write(m->link, type, head, hl, data, dl)))
		return r;
	return usnap_mig_flush(m->link);
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
			return usnap_mig_fail(m, k < 0 ? -errno : -EFAULT, "region '%s': reading page %" PRIu64 ": %s",
					r->name, first + got / m->ps, k < 0 ? strerror(errno) : "end of file");
		got += (size_t)k;
	}
	return 0;
}

/* Send pages [first, first + n) of region ri: runs of data as PAGES, runs of
 * zero pages as ZERO, or not at all in round 1 (the receiver's memfd starts
 * zero). *count: pages announced in frames. */
int usnap_mig_send_range(struct uffdsnap_migrate *m, unsigned ri, uint64_t first, uint64_t n, unsigned round,
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
				(zero ? usnap_bits_clear : usnap_bits_set)(r->sent, first + i, first + j);
			if (!zero) {
				const uint8_t *data = m->buf + i * m->ps;
				size_t len = (j - i) * m->ps, z = 0;
				/* compressed only when it saves an eighth: else the receiver
				 * would spend time for nothing */
				if (m->zc)
					z = ZSTD_compressCCtx(m->zc, m->zbuf, m->zcap, data, len, 1);
				if (m->zc && !ZSTD_isError(z) && z < len - len / 8)
					e = usnap_mig_send_frame(m, USNAP_MIG_PAGES_Z, &p, sizeof(p), m->zbuf, (uint32_t)z);
				else
					e = usnap_mig_send_frame(m, USNAP_MIG_PAGES, &p, sizeof(p), data, (uint32_t)len);
				m->pages_sent += j - i;
				m->round_bytes[round - 1] += (j - i) * m->ps;
				*count += j - i;
			} else if (round > 1) {
				e = usnap_mig_send_frame(m, USNAP_MIG_ZERO, &p, sizeof(p), NULL, 0);
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

int usnap_mig_push_run(struct mig_run **v, size_t *n, size_t *cap, struct mig_run run)
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
				return usnap_mig_fail(m, k, "region '%s': PAGEMAP_SCAN: %s", r->name, strerror(-k));
			for (int j = 0; j < k; j++) {
				uint64_t lo = (m->vec[j].start - r->addr) / m->ps, hi = (m->vec[j].end - r->addr) / m->ps;
				if (usnap_mig_push_run(&m->runs, &m->nruns, &m->runs_cap, (struct mig_run){ i, lo, hi - lo }))
					return usnap_mig_fail(m, -ENOMEM, "the dirty page list");
				*bytes += (hi - lo) * m->ps;
			}
			if (walk_end <= start)
				return usnap_mig_fail(m, -EIO, "region '%s': PAGEMAP_SCAN made no progress", r->name);
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
		r = usnap_mig_fail(m, m->ev_err, "%s", m->ev_msg);
	const struct mig_run *v = final ? m->removed_all : m->removed;
	size_t n = final ? m->nremoved_all : m->nremoved;
	for (size_t i = 0; !r && i < n; i++) {
		if (usnap_mig_push_run(&m->runs, &m->nruns, &m->runs_cap, v[i]))
			r = usnap_mig_fail(m, -ENOMEM, "the dirty page list");
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
		if (usnap_mig_push_run(&m->removed, &m->nremoved, &m->removed_cap, run) ||
		    usnap_mig_push_run(&m->removed_all, &m->nremoved_all, &m->removed_all_cap, run)) {
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
			return usnap_mig_fail(m, -errno, "region '%s': mincore: %s", r->name, strerror(errno));
		for (uint64_t k = usnap_bits_find(r->sent, 0, r->npages, true); k < r->npages;
		     k = usnap_bits_find(r->sent, k, r->npages, true)) {
			if (r->incore[k] & 1) {
				k++;
				continue;
			}
			uint64_t e = k + 1;
			while (e < r->npages && usnap_bit(r->sent, e) && !(r->incore[e] & 1))
				e++;
			if (usnap_mig_push_run(&m->runs, &m->nruns, &m->runs_cap, (struct mig_run){ i, k, e - k }))
				return usnap_mig_fail(m, -ENOMEM, "the dirty page list");
			*bytes += (e - k) * m->ps;
			k = e;
		}
	}
	return 0;
}

/* The next frame from the receiver (HELLO_OK, ACK): its header and payload
 * (at most sizeof(m->got) bytes, the link's limit). */
static int expect_frame(struct uffdsnap_migrate *m, struct usnap_mig_hdr *h, void *p, size_t len)
{
	int r = 0;

	while (!r && !m->have_frame)
		r = usnap_mig_turn(m->link, true);
	if (r)
		return r;
	m->have_frame = false;
	*h = m->got_hdr;
	memset(p, 0, len);
	memcpy(p, m->got, h->len < len ? h->len : len);
	return 0;
}

/* The link's on_frame: a frame from the receiver. */
static int sender_frame(void *owner, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	struct uffdsnap_migrate *m = owner;

	if (m->pc_live)
		return usnap_mig_postcopy_frame(m, h, p);
	if (m->have_frame)
		return usnap_mig_fail(m, -EBADMSG, "the receiver sent a frame of type %u (%u bytes) out of turn",
				      h->type, h->len);
	m->got_hdr = *h;
	memcpy(m->got, p, h->len);
	m->have_frame = true;
	return 0;
}

/* Close round `round` and wait for the receiver's ACK of it: from then on
 * no byte of the round is in flight anywhere. */
int usnap_mig_end_round(struct uffdsnap_migrate *m, unsigned round, bool final, uint64_t count)
{
	struct usnap_mig_round re = { .round = round, .final = final, .pages = count };
	struct usnap_mig_status st;
	struct usnap_mig_hdr h;
	int r = usnap_mig_send_frame(m, USNAP_MIG_ROUND_END, &re, sizeof(re), NULL, 0);

	if (r || (r = expect_frame(m, &h, &st, sizeof(st))))
		return r;
	if (h.type != USNAP_MIG_ACK || h.len != sizeof(st) || st.value != round)
		return usnap_mig_fail(m, -EBADMSG, "expected the ACK of round %u, got a frame of type %u (%u bytes)",
				      round, h.type, h.len);
	if (st.status < 0)
		return usnap_mig_fail(m, -EPROTO, "the receiver failed round %u: %s", round, strerror(-st.status));
	if (final)
		usnap_mig_stop_reading(m->link); /* the receiver may hang up now */
	m->rounds = round;
	return 0;
}

static int hello(struct uffdsnap_migrate *m)
{
	size_t len = sizeof(struct usnap_mig_hello);
	struct usnap_mig_hello *hh;
	struct usnap_mig_status st;
	struct usnap_mig_hdr h;
	uint8_t *p;
	int r;

	for (unsigned i = 0; i < m->nregs; i++)
		len += 12 + strlen(m->regs[i].name);
	if (!(p = calloc(1, len)))
		return usnap_mig_fail(m, -ENOMEM, "the region table");
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
	r = usnap_mig_send_frame(m, USNAP_MIG_HELLO, NULL, 0, p, (uint32_t)len);
	free(p);
	if (r || (r = expect_frame(m, &h, &st, sizeof(st))))
		return r;
	if (h.type != USNAP_MIG_HELLO_OK || h.len != sizeof(st))
		return usnap_mig_fail(m, -EBADMSG, "the receiver answered the region table with a frame of type %u", h.type);
	if (st.status < 0)
		return usnap_mig_fail(m, st.status == -EPROTONOSUPPORT ? -EPROTONOSUPPORT : -EPROTO,
				"the receiver (protocol version %u) refused the migration: %s", st.value,
				strerror(-st.status));
	return 0;
}

int usnap_mig_find_dirty(struct uffdsnap_migrate *m, bool last, uint64_t *bytes)
{
	int r = scan(m, last, bytes);

	if (!r)
		r = take_removed(m, last, bytes);
	if (!r)
		r = scan_holes(m, bytes);
	return r;
}

static int send_runs(struct uffdsnap_migrate *m, unsigned round, uint64_t *count)
{
	for (size_t i = 0; i < m->nruns; i++) {
		int r = usnap_mig_send_range(m, m->runs[i].reg, m->runs[i].first, m->runs[i].n, round, count);
		if (r)
			return r;
	}
	m->nruns = 0;
	return 0;
}

int usnap_mig_switchover(struct uffdsnap_migrate *m, uint64_t *t_sw)
{
	int r = 0;

	*t_sw = usnap_now_ns();
	if (m->opts.switchover)
		r = m->opts.switchover(m->opts.user);
	if (r)
		return usnap_mig_fail(m, r < 0 ? r : -EINVAL, "the switchover callback returned %d", r);
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
	if (m->opts.max_rounds == 1 && (r = usnap_mig_switchover(m, &t_sw)))
		return r;
	for (unsigned i = 0; i < m->nregs; i++) {
		/* EAGAIN while an event is unread: the event thread reads it at once */
		for (unsigned tries = 0; (r = usnap_uffd_protect(m->uffd, m->regs[i].addr, m->regs[i].len, true)) ==
		     -EAGAIN && tries < 100000; tries++)
			usleep(100);
		if (r)
			return usnap_mig_fail(m, r, "region '%s': write-protecting: %s", m->regs[i].name, strerror(-r));
	}
	t_round = usnap_now_ns();
	uint64_t wire0 = m->bytes_wire;
	for (unsigned i = 0; i < m->nregs && !r; i++)
		r = usnap_mig_send_range(m, i, 0, m->regs[i].npages, 1, &count);
	if (!r)
		r = usnap_mig_end_round(m, 1, m->opts.max_rounds == 1, count);
	if (r || m->opts.max_rounds == 1)
		goto out;
	if (m->opts.flags & UFFDSNAP_MIGRATE_POSTCOPY)
		return usnap_mig_postcopy(m);
	bw = (double)(m->bytes_wire - wire0) * 1e9 / (double)(usnap_now_ns() - t_round + 1);
	for (round = 2;; round++) {
		uint64_t dirty = 0;
		bool final;

		count = 0;
		if ((r = usnap_mig_find_dirty(m, false, &dirty)))
			return r;
		/* the dirty set measured just now would take dirty / bw to send:
		 * within the budget (or out of rounds) the program stops now, and
		 * the final round also sends what it wrote since the scan */
		final = round >= m->opts.max_rounds || (double)dirty / bw <= budget_s;
		if (final && ((r = usnap_mig_switchover(m, &t_sw)) || (r = usnap_mig_find_dirty(m, true, &dirty))))
			return r;
		t_round = usnap_now_ns();
		wire0 = m->bytes_wire;
		if ((r = send_runs(m, round, &count)) || (r = usnap_mig_end_round(m, round, final, count)))
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
	/* the connection's end: after the final ACK the receiver may hang up */
	usnap_mig_link_close(m->link);
	m->result = usnap_mig_result(&m->latch, r);
	m->error = m->result;
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
	free(m->asks);
	usnap_mig_link_free(m->link);
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
	m->uffd = m->pagemap = m->ev_stop = -1;
	m->ctx = ctx, m->sock = sock, m->ps = ctx->page_size;
	pthread_mutex_init(&m->join_lock, NULL);
	pthread_mutex_init(&m->ev_lock, NULL);
	m->t0_ns = usnap_now_ns();
	if ((r = usnap_mig_opts_take(&m->opts, opts))) {
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
	if (!r && (m->ev_stop = eventfd(0, EFD_CLOEXEC)) < 0)
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
		r = usnap_mig_link_open(&m->link, sock, sizeof(m->got), &m->latch, "the receiver", sender_frame, m,
					&m->bytes_wire);
	}
	if (!r) {
		usnap_mig_pacer_init(&m->pacer, m->opts.max_bandwidth, usnap_now_ns());
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

USNAP_EXPORT int uffdsnap_migrate_wait(uffdsnap_migrate_t *m)
{
	if (!m)
		return usnap_err(-EINVAL, "m is NULL");
	usnap_mig_join_once(&m->join_lock, &m->joined, m->thread);
	return m->result ? usnap_err(m->result, "migration: %s", usnap_latch_msg(&m->latch)) : 0;
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

void usnap_migrate_stop(struct uffdsnap_migrate *m)
{
	usnap_mig_link_cancel(m->link);
	uffdsnap_migrate_wait(m);
}

USNAP_EXPORT void uffdsnap_migrate_free(uffdsnap_migrate_t *m)
{
	if (!m)
		return;
	usnap_migrate_stop(m);
	migrate_release(m);
}

