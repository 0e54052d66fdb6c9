/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Post-copy migration, both sides (docs/migration.md "Post-copy"). The
 * sender (usnap_mig_postcopy, after round 1): rounds that only tell the
 * receiver which pages to drop, the switchover, then the push of the pages
 * still pending while the receiver's requests are answered first. The
 * receiver: the drops (take_discard), the switchover (start_postcopy: its
 * mappings registered for missing pages), placing what arrives, its faults
 * and, after a failure, poison.
 *
 * Both run on their side's libuv loop (migrate.c). The sender's read
 * callback only records a request (usnap_mig_postcopy_frame); its thread
 * answers every recorded request before it pushes the next frame (each frame
 * sent is flushed to the kernel first: libuv holds none), and pushes only
 * while the window below has room, so a request waits behind at most that
 * window and one pushed frame. The
 * receiver's userfaultfd is a poll handle of the same loop that reads the
 * socket: its faults are read between two frames (usnap_in_faults), and the
 * requests they make go out on the same thread as ACKs and RUNNING, so no
 * thread and no lock are needed to share the reverse direction.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_notsent_bytes (glibc's lacks it) */
#include <unistd.h>

#include "bitmap.h"
#include "migrate-private.h"
#include "uffd.h"

/* ---- the sender -------------------------------------------------------------------------- */

/*
 * Pages per pushed frame, and the push's window: the bytes written to the
 * socket and not yet acknowledged by the peer (tcpi_notsent_bytes + unacked
 * segments; libuv holds none, every frame is flushed) kept under
 * USNAP_MIG_PUSH_WINDOW. A page a fault asked for is sent behind that window
 * and nothing else: without it the push would fill
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
			return usnap_mig_fail(m, -ENOMEM, "the post-copy page bitmaps");
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
				int r = usnap_mig_send_frame(m, USNAP_MIG_DISCARD, &d, sizeof(d), m->regs[i].fresh + w, n * 8);
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

	usnap_bits_clear(b, first, first + n);
	return usnap_mig_send_range(m, ri, first, n, m->pc_round, count);
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

/* A frame from the receiver during the push (the link's on_frame): RUNNING
 * (the downtime ends), REQUEST (recorded for the sender's thread, if the
 * page is still pending), or the final ACK. Runs in the read callback: it
 * must not send. */
int usnap_mig_postcopy_frame(struct uffdsnap_migrate *m, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	union {
		struct usnap_mig_status st;
		struct usnap_mig_pages q;
	} u;

	memset(&u, 0, sizeof(u));
	memcpy(&u, p, h->len < sizeof(u) ? h->len : sizeof(u));
	if (h->type == USNAP_MIG_RUNNING && h->len == sizeof(u.st) && !m->pc_running && u.st.value == m->pc_round) {
		if (u.st.status < 0)
			return usnap_mig_fail(m, -EPROTO, "the receiver could not start: %s", strerror(-u.st.status));
		m->pc_running = true;
		m->downtime_ns = usnap_now_ns() - m->pc_t_sw;
		return 0;
	}
	if (h->type == USNAP_MIG_REQUEST && h->len == sizeof(u.q) && m->pc_running) {
		if (u.q.region >= m->nregs || u.q.npages != 1 || u.q.first >= m->regs[u.q.region].npages)
			return usnap_mig_fail(m, -EBADMSG, "the receiver asked for page %" PRIu64 " of region %u",
					      u.q.first, u.q.region);
		uint64_t *b = m->regs[u.q.region].pending;
		/* asked for again, or pushed meanwhile: the page is on its way */
		if (!usnap_bit(b, u.q.first))
			return 0;
		usnap_bits_clear(b, u.q.first, u.q.first + 1);
		m->pc_left--;
		m->pages_requested++;
		if (usnap_mig_push_run(&m->asks, &m->nasks, &m->asks_cap, (struct mig_run){ u.q.region, u.q.first, 1 }))
			return usnap_mig_fail(m, -ENOMEM, "the list of requested pages");
		return 0;
	}
	if (h->type == USNAP_MIG_ACK && h->len == sizeof(u.st) && m->pc_ended && u.st.value == m->pc_round) {
		if (u.st.status < 0)
			return usnap_mig_fail(m, -EPROTO, "the receiver failed post-copy: %s", strerror(-u.st.status));
		m->pc_done = true;
		usnap_mig_stop_reading(m->link);
		return 0;
	}
	return usnap_mig_fail(m, -EBADMSG, "post-copy: unexpected frame of type %u (%u bytes) from the receiver",
			      h->type, h->len);
}

/* The next step of the push: a requested page, else (when the window has
 * room) the next pending run or the final ROUND_END. *sent: false when
 * nothing could go. */
static int push_step(struct uffdsnap_migrate *m, unsigned *ri, uint64_t *pg, uint64_t *count, bool *sent)
{
	uint64_t n;

	*sent = true;
	if (m->ask_next < m->nasks) {
		const struct mig_run a = m->asks[m->ask_next++];
		if (m->ask_next == m->nasks)
			m->ask_next = m->nasks = 0;
		return usnap_mig_send_range(m, a.reg, a.first, a.n, m->pc_round, count);
	}
	/* the push starts once the receiver runs: until then the sender only
	 * waits for RUNNING, which it then reads at once (the downtime) */
	if (!m->pc_running || m->pc_ended ||
	    (USNAP_MIG_PUSH_WINDOW && unacked(m->sock) >= USNAP_MIG_PUSH_WINDOW)) {
		*sent = false;
		return 0;
	}
	if (m->pc_left && next_pending(m, ri, pg, &n)) {
		m->pc_left -= n;
		return send_pending(m, *ri, *pg, n, count);
	}
	struct usnap_mig_round re = { .round = m->pc_round, .final = 1, .pages = *count };
	m->pc_ended = true;
	return usnap_mig_send_frame(m, USNAP_MIG_ROUND_END, &re, sizeof(re), NULL, 0);
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
 * which here would delay reading RUNNING and the first requests.
 */
int usnap_mig_postcopy(struct uffdsnap_migrate *m)
{
	uint64_t dirty = 0, count = 0, pg = 0;
	unsigned ri = 0, round = 2;
	bool sent;
	int r;

	while (round < m->opts.max_rounds) {
		uint64_t before = m->pc_left;
		if ((r = usnap_mig_find_dirty(m, false, &dirty)) || (r = pending_take(m, &m->pc_left)) ||
		    (r = send_discards(m)) || (r = usnap_mig_end_round(m, round++, false, 0)))
			return r;
		if (m->pc_left - before <= USNAP_MIG_DROP_FEW)
			break;
	}
	m->pc_round = round;
	if ((r = usnap_mig_switchover(m, &m->pc_t_sw)) || (r = usnap_mig_find_dirty(m, true, &dirty)) ||
	    (r = pending_take(m, &m->pc_left)) || (r = send_discards(m)))
		return r;
	struct usnap_mig_round pc = { .round = m->pc_round, .final = 0, .pages = m->pc_left };
	m->pc_live = true; /* the receiver's frames go to usnap_mig_postcopy_frame from now on */
	if ((r = usnap_mig_send_frame(m, USNAP_MIG_POSTCOPY, &pc, sizeof(pc), NULL, 0)))
		return r;
	while (!m->pc_done) {
		if ((r = push_step(m, &ri, &pg, &count, &sent)))
			return r;
		/* after a frame, the requests that came meanwhile are read (not
		 * waited for); with nothing to send, the loop waits for a frame,
		 * or for a millisecond while the window is full: the peer's TCP
		 * ACKs that open it wake nothing of ours */
		if (!sent && m->pc_running && !m->pc_ended)
			usnap_mig_wake_in(m->link, 1);
		else
			usnap_mig_wake_stop(m->link);
		if ((r = usnap_mig_turn(m->link, !sent)))
			return r;
	}
	if (!m->pc_running)
		return usnap_mig_fail(m, -EBADMSG, "the receiver acknowledged post-copy without running");
	m->rounds = m->pc_round;
	return 0;
}

/* ---- the receiver ---------------------------------------------------------------------- */

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
int usnap_in_place(struct uffdsnap_incoming *in, unsigned ri, uint64_t first, uint32_t n, const uint8_t *data)
{
	struct in_reg *r = &in->regs[ri];
	uint64_t done = 0;

	for (uint64_t k = first; k < first + n; k++)
		if (!usnap_abit(r->dropped, k))
			return usnap_in_fail(in, -EBADMSG, "region '%s': page %" PRIu64 " arrived twice", r->name, k);
	while (done < n) {
		int64_t got = 0;
		int e = usnap_uffd_fill(in->uffd, (uintptr_t)r->addr + (first + done) * in->ps,
					data ? data + done * in->ps : NULL, (n - done) * in->ps, &got);
		if (got > 0)
			done += (uint64_t)got / in->ps;
		if (e == -EEXIST)
			return usnap_in_fail(in, -EEXIST, "region '%s': page %" PRIu64 " was created outside the migration's "
				       "mapping before it arrived", r->name, first + done);
		if (e && e != -EAGAIN)
			return usnap_in_fail(in, e, "region '%s': placing page %" PRIu64 ": %s", r->name, first + done,
				       strerror(-e));
	}
	usnap_abits_clear(r->dropped, first, first + n);
	in->missing -= n;
	return 0;
}

/* A DISCARD frame (post-copy, between round 1 and the switchover): the pages
 * it names were written on the sender since round 1 sent them; they are
 * punched out here and arrive again after the switchover. */
int usnap_in_take_discard(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	struct usnap_mig_discard d;
	uint64_t words;

	if (h->len < sizeof(d))
		return usnap_in_fail(in, -EBADMSG, "discard frame of %u bytes", h->len);
	memcpy(&d, p, sizeof(d));
	if (d.region >= in->nregs || !d.nwords || h->len != sizeof(d) + (uint64_t)d.nwords * 8 || d.first % 64 ||
	    d.first / 64 > (words = (in->regs[d.region].npages + 63) / 64) || d.nwords > words - d.first / 64)
		return usnap_in_fail(in, -EBADMSG, "discard frame: region %u, %u words from page %" PRIu64, d.region,
			       d.nwords, d.first);
	struct in_reg *r = &in->regs[d.region];
	for (uint32_t w = 0; w < d.nwords; w++) {
		uint64_t x, base = d.first + (uint64_t)w * 64;
		memcpy(&x, p + sizeof(d) + (size_t)w * 8, 8);
		if ((x & atomic_load(&r->dropped[base / 64])) ||
		    (r->npages - base < 64 && x >> (r->npages - base)))
			return usnap_in_fail(in, -EBADMSG, "discard frame: region '%s' pages from %" PRIu64 " dropped twice "
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
				return usnap_in_fail(in, -errno, "region '%s': dropping pages: %s", r->name, strerror(errno));
		}
	}
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
	if (in->dead) {
		poison_pages(in, addr, in->ps);
		return;
	}
	if (usnap_bit(r->asked, k))
		return;
	usnap_bits_set(r->asked, k, k + 1);
	struct usnap_mig_pages q = { (uint32_t)(r - in->regs), 1, k };
	/* queued behind nothing but ACKs: the reverse direction carries no
	 * data. A lost connection: the read side hears it too, and poisons */
	(void)usnap_mig_write(in->link, USNAP_MIG_REQUEST, &q, sizeof(q), NULL, 0);
}

void usnap_in_faults(struct uffdsnap_incoming *in)
{
	struct uffd_msg msg[16];
	ssize_t n;

	/* the descriptor is non-blocking: EAGAIN once none is left */
	while ((n = read(in->uffd, msg, sizeof(msg))) > 0)
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msg[0]); i++)
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(in, (uintptr_t)msg[i].arg.pagefault.address);
}

static void on_uffd(void *arg)
{
	usnap_in_faults(arg);
}

/* The POSTCOPY frame: every dropped page announced; the mappings are
 * registered for missing-page faults, the loop watches the userfaultfd, the
 * sender hears RUNNING and the program may use the memory. */
int usnap_in_start_postcopy(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	struct usnap_mig_round re;
	uint64_t ioctls;
	int r = 0;

	if (h->len != sizeof(re))
		return usnap_in_fail(in, -EBADMSG, "post-copy frame of %u bytes", h->len);
	memcpy(&re, p, sizeof(re));
	if (re.round != in->expect || re.final || re.pages != in->missing)
		return usnap_in_fail(in, -EBADMSG, "post-copy frame: round %u, final %u, %" PRIu64 " pages dropped; %" PRIu64
			       " were", re.round, re.final, re.pages, in->missing);
	in->running = true;
	for (unsigned i = 0; i < in->nregs && !r; i++) {
		struct in_reg *g = &in->regs[i];
		r = usnap_uffd_register(in->uffd, (uintptr_t)g->addr, g->len, UFFDIO_REGISTER_MODE_MISSING, &ioctls);
		if (r)
			usnap_in_fail(in, r, "region '%s': UFFDIO_REGISTER (missing): %s", g->name, strerror(-r));
		g->registered = !r;
	}
	if (!r && (r = usnap_mig_watch(in->link, in->uffd, on_uffd, in)))
		usnap_in_fail(in, r, "watching the userfaultfd: %s", strerror(-r));
	if (r) {
		/* the sender learns it at once rather than after 30 s of silence */
		usnap_in_send_status(in, USNAP_MIG_RUNNING, in->expect, r);
		return r;
	}
	if ((r = usnap_in_send_status(in, USNAP_MIG_RUNNING, in->expect, 0)))
		return r;
	usnap_in_mark(in, &in->ready);
	return 0;
}

/* After the push, or a failure: on failure every page not arrived is
 * poisoned (a touch raises SIGBUS, never waits for a page that cannot come),
 * and the threads already waiting are woken to find it so; the loop stops
 * watching faults and the mappings are unregistered (the poison stays). */
void usnap_in_postcopy_end(struct uffdsnap_incoming *in, bool failed)
{
	if (failed) {
		in->dead = true;
		poison_rest(in);
	}
	usnap_mig_unwatch(in->link);
	for (unsigned i = 0; i < in->nregs; i++)
		if (in->regs[i].registered) {
			usnap_uffd_unregister(in->uffd, (uintptr_t)in->regs[i].addr, in->regs[i].len);
			in->regs[i].registered = false;
		}
}

