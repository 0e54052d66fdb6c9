/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fault handler thread: the fault path and the sweep, in one loop.
 *
 * One thread does both so that "copy before un-protect, exactly once" needs
 * no locks: the per-region bitmap `copied` is only touched here. Each turn
 * it reads every pending fault message first (writers are waiting on them),
 * then copies one chunk of the sweep, then sleeps in poll() if there is
 * nothing to do.
 *
 * A write fault (WP) on a page not yet copied: pread() the page from the
 * backing file into the current fault chunk, mark it copied, then
 * UFFDIO_WRITEPROTECT(mode 0) the page, which also wakes the writer. On a page
 * already copied (the sweep got there while the message was queued) only the
 * un-protect is left to do.
 *
 * A MISSING fault is an access to a page that was a hole at the instant (the
 * set of holes is frozen by the MISSING registration before it was listed, see
 * region.c): record it as a zero page and fill it with UFFDIO_ZEROPAGE. A
 * MISSING fault on a page that was populated at the instant means the program
 * destroyed data without a write fault (hole punch, truncate, MADV_REMOVE):
 * the snapshot fails rather than record a hole that was never there.
 *
 * The sweep walks every region in address order: pages already copied are
 * skipped, holes are recorded as zero without reading, populated runs are
 * read with one pread() per run and un-protected with one ioctl per chunk.
 *
 * Nothing here touches region memory through the mapping, and no user code
 * runs on this thread, so it can never wait on a fault of its own.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compat.h"
#include "uffdsnap-private.h"

struct handler {
	uffdsnap_snap_t *s;
	size_t ps;
	uint32_t chunk_pages;
	struct usnap_job *fjob;   /* fault chunk being filled */
	unsigned cur_reg;         /* sweep cursor: region (address order), page, data run */
	uint64_t cur_page;
	size_t cur_run;
	bool sweep_done;
};

/* ---- bitmap -------------------------------------------------------------------- */

static bool test_bit(const uint64_t *b, uint64_t i)
{
	return b[i / 64] >> (i % 64) & 1;
}

static void set_bits(uint64_t *b, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++)
		b[i / 64] |= 1ull << (i % 64);
}

/* First index in [from, to) whose bit equals `val`, or `to`. */
static uint64_t find_bit(const uint64_t *b, uint64_t from, uint64_t to, bool val)
{
	uint64_t i = from;

	while (i < to) {
		uint64_t w = val ? b[i / 64] : ~b[i / 64];
		w &= ~0ull << (i % 64);
		if (w) {
			i = (i & ~63ull) + (uint64_t)__builtin_ctzll(w);
			return i < to ? i : to;
		}
		i = (i & ~63ull) + 64;
	}
	return to;
}

/* ---- uffd ioctls --------------------------------------------------------------------- */

static int unprotect(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_writeprotect wp = { .range = { addr, len }, .mode = 0 };

	for (int tries = 0; ioctl(uffd, UFFDIO_WRITEPROTECT, &wp); tries++) {
		if (errno != EAGAIN || tries > 1000)
			return -errno;
		sched_yield();
	}
	return 0;
}

static void wake(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { addr, len };

	ioctl(uffd, UFFDIO_WAKE, &r);
}

static int zeropage(int uffd, uintptr_t addr, size_t len)
{
	struct uffdio_zeropage z = { .range = { addr, len }, .mode = 0 };

	for (int tries = 0; ioctl(uffd, UFFDIO_ZEROPAGE, &z); tries++) {
		if (errno == EEXIST) {
			/* Filled meanwhile (another mapping of the file): just retry it. */
			wake(uffd, addr, len);
			return 0;
		}
		if (errno != EAGAIN || tries > 1000)
			return -errno;
		sched_yield();
	}
	return 0;
}

/* ---- chunk building --------------------------------------------------------------------- */

static void add_extent(struct usnap_job *j, uint64_t first, uint64_t n, uint32_t kind)
{
	struct usnap_extent *last = j->nextents ? &j->ext[j->nextents - 1] : NULL;

	if (last && last->kind == kind && last->first_page + last->npages == first &&
	    (uint64_t)last->npages + n <= UINT32_MAX) {
		last->npages += (uint32_t)n;
		return;
	}
	j->ext[j->nextents++] = (struct usnap_extent){ .first_page = first, .npages = (uint32_t)n, .kind = kind };
}

static bool job_full(const struct handler *h, const struct usnap_job *j)
{
	return j->data_pages >= h->chunk_pages || j->nextents >= h->chunk_pages;
}

/* Read pages [p, p+n) of a region into the job's raw buffer. */
static int copy_pages(struct handler *h, struct usnap_sreg *sr, struct usnap_job *j, uint64_t p, uint64_t n)
{
	const struct usnap_reg *reg = sr->reg;
	uint8_t *dst = j->raw + (size_t)j->data_pages * h->ps;
	size_t want = n * h->ps, got = 0;

	while (got < want) {
		ssize_t r = pread(reg->fd, dst + got, want - got, reg->file_off + (off_t)(p * h->ps + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			usnap_fail(h->s, -errno, "region '%s': reading page %" PRIu64 ": %s", reg->name, p,
				   strerror(errno));
			return -1;
		}
		if (r == 0) {
			usnap_fail(h->s, -ESTALE, "region '%s': its file was truncated during the snapshot "
				   "(page %" PRIu64 " is past the end)", reg->name, p + got / h->ps);
			return -1;
		}
		got += (size_t)r;
	}
	/*
	 * A page populated at the instant that reads back as a hole was punched
	 * (fallocate PUNCH_HOLE, MADV_REMOVE) before we got to it, and pread()
	 * returned zeros that were never there. It stays a hole until its next
	 * access, whose MISSING fault waits for this thread, so checking after
	 * the read cannot miss it.
	 */
	off_t start = reg->file_off + (off_t)(p * h->ps), hole = lseek(reg->fd, start, SEEK_HOLE);
	if (hole >= 0 && hole < start + (off_t)want) {
		usnap_fail(h->s, -ESTALE, "region '%s': the page at offset 0x%" PRIx64 " was removed (hole "
			   "punch, truncate or MADV_REMOVE) before it was copied", reg->name,
			   (uint64_t)(hole - reg->file_off));
		return -1;
	}
	add_extent(j, p, n, USNAP_EXT_DATA);
	j->data_pages += (uint32_t)n;
	atomic_fetch_add(&h->s->bytes_raw, want);
	return 0;
}

/* ---- the fault path ------------------------------------------------------------------------ */

static struct usnap_sreg *lookup(const uffdsnap_snap_t *s, uintptr_t addr)
{
	size_t lo = 0, hi = s->nregions;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct usnap_reg *r = s->by_addr[mid]->reg;
		if (addr < r->addr)
			hi = mid;
		else if (addr >= r->addr + r->len)
			lo = mid + 1;
		else
			return s->by_addr[mid];
	}
	return NULL;
}

/* A fault chunk for region sr with room for one more page, or NULL on abort. */
static struct usnap_job *fault_job(struct handler *h, struct usnap_sreg *sr)
{
	uffdsnap_snap_t *s = h->s;
	struct usnap_job *j = h->fjob;
	uint64_t t0, waited, max;

	if (j && (j->region != sr->id || job_full(h, j))) {
		usnap_compress_submit(s, j);
		h->fjob = j = NULL;
	}
	if (j)
		return j;
	/* Backpressure: the writer waits until the sink frees a buffer. */
	t0 = usnap_now_ns();
	j = usnap_job_get(s, true);
	waited = usnap_now_ns() - t0;
	max = atomic_load(&s->fault_wait_max_ns);
	while (waited > max && !atomic_compare_exchange_weak(&s->fault_wait_max_ns, &max, waited))
		;
	if (j) {
		j->region = sr->id;
		j->fault = true;
	}
	return h->fjob = j;
}

static void handle_fault(struct handler *h, const struct uffd_msg *m)
{
	uffdsnap_snap_t *s = h->s;
	uintptr_t addr = (uintptr_t)m->arg.pagefault.address & ~(uintptr_t)(h->ps - 1);
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
	struct usnap_sreg *sr;
	struct usnap_job *j;
	uint64_t p;
	int r;

	if (m->event != UFFD_EVENT_PAGEFAULT)
		return;
	atomic_fetch_add(&s->faults, 1);
	sr = lookup(s, addr);
	if (!sr) {
		wake(s->uffd, addr, h->ps);
		return;
	}
	p = (addr - sr->reg->addr) / h->ps;
	if (!test_bit(sr->copied, p)) {
		if (!wp && usnap_in_data(sr, p)) {
			usnap_fail(s, -ESTALE, "region '%s': the page at offset 0x%" PRIx64 " was removed (hole "
				   "punch, truncate or MADV_REMOVE) before it was copied", sr->reg->name, p * h->ps);
			return;
		}
		j = fault_job(h, sr);
		if (!j)
			return;
		if (wp) {
			if (copy_pages(h, sr, j, p, 1))
				return;
			atomic_fetch_add(&s->pages_fault, 1);
		} else {
			add_extent(j, p, 1, USNAP_EXT_ZERO);
			atomic_fetch_add(&s->pages_hole, 1);
		}
		set_bits(sr->copied, p, p + 1);
	}
	r = wp ? unprotect(s->uffd, addr, h->ps) : zeropage(s->uffd, addr, h->ps);
	if (r)
		usnap_fail(s, r, "region '%s': resolving a %s fault at 0x%" PRIxPTR ": %s", sr->reg->name,
			   wp ? "write-protect" : "missing", addr, strerror(-r));
}

/* ---- the sweep ----------------------------------------------------------------------------- */

/* Fill job with the next chunk of the sweep; un-protect what it copied. */
static void sweep_step(struct handler *h, struct usnap_job *j)
{
	uffdsnap_snap_t *s = h->s;
	uint64_t lo = UINT64_MAX, hi = 0;
	struct usnap_sreg *sr = NULL;

	while (h->cur_reg < s->nregions && !job_full(h, j)) {
		uint64_t p, q, limit;
		bool in_data;

		sr = s->by_addr[h->cur_reg];
		if (h->cur_page >= sr->reg->npages) {
			h->cur_reg++, h->cur_page = 0, h->cur_run = 0;
			if (j->nextents)
				break; /* a chunk holds pages of one region */
			continue;
		}
		j->region = sr->id;
		p = find_bit(sr->copied, h->cur_page, sr->reg->npages, false);
		if (p >= sr->reg->npages) {
			h->cur_page = p;
			continue;
		}
		while (h->cur_run < sr->ndata && sr->data[h->cur_run].first + sr->data[h->cur_run].n <= p)
			h->cur_run++;
		in_data = h->cur_run < sr->ndata && sr->data[h->cur_run].first <= p;
		limit = in_data ? sr->data[h->cur_run].first + sr->data[h->cur_run].n
		      : h->cur_run < sr->ndata ? sr->data[h->cur_run].first : sr->reg->npages;
		q = find_bit(sr->copied, p, limit, true);
		if (q - p > (1u << 30))
			q = p + (1u << 30);
		if (in_data) {
			if (q - p > h->chunk_pages - j->data_pages)
				q = p + h->chunk_pages - j->data_pages;
			if (copy_pages(h, sr, j, p, q - p))
				return usnap_job_put(s, j);
			atomic_fetch_add(&s->pages_sweep, q - p);
			if (p < lo)
				lo = p;
			hi = q;
		} else {
			add_extent(j, p, q - p, USNAP_EXT_ZERO);
			atomic_fetch_add(&s->pages_hole, q - p);
		}
		set_bits(sr->copied, p, q);
		h->cur_page = q;
	}
	/* Copied first, un-protected now: [lo, hi) holds only pages recorded by
	 * now (copied here or by earlier faults) and holes, which carry no
	 * protection. This also wakes writers whose messages are still queued. */
	if (hi > lo) {
		sr = &s->sregs[j->region];
		int r = unprotect(s->uffd, sr->reg->addr + lo * h->ps, (hi - lo) * h->ps);
		if (r) {
			usnap_fail(s, r, "region '%s': un-protecting after the sweep: %s", sr->reg->name, strerror(-r));
			return usnap_job_put(s, j);
		}
	}
	if (j->nextents)
		usnap_compress_submit(s, j);
	else
		usnap_job_put(s, j);
	if (h->cur_reg >= s->nregions)
		h->sweep_done = true;
}

/* ---- the loop -------------------------------------------------------------------------------- */

#define FAULT_BATCH 64

/* Read and handle pending messages: >0 handled, 0 none pending, <0 error. */
static int drain_faults(struct handler *h)
{
	struct uffd_msg msgs[FAULT_BATCH];
	ssize_t n = read(h->s->uffd, msgs, sizeof(msgs));

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]) && !atomic_load(&h->s->abort); i++)
		handle_fault(h, &msgs[i]);
	return (int)(n / (ssize_t)sizeof(msgs[0]));
}

/* Messages of faults that the unregister resolved are stale: a MISSING one
 * read by the next snapshot would record a populated page as a hole. */
static void discard_messages(int uffd)
{
	struct uffd_msg msgs[FAULT_BATCH];

	while (read(uffd, msgs, sizeof(msgs)) > 0)
		;
}

static void wait_for_work(struct handler *h)
{
	struct pollfd pfd[2] = { { .fd = h->s->uffd, .events = POLLIN }, { .fd = h->s->ctl_efd, .events = POLLIN } };
	uint64_t v;

	if (poll(pfd, 2, -1) > 0 && (pfd[1].revents & POLLIN)) {
		if (read(h->s->ctl_efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: consumed by an earlier wake-up */
		}
	}
}

void *usnap_handler_main(void *arg)
{
	uffdsnap_snap_t *s = arg;
	struct handler h = { .s = s, .ps = s->page_size };
	struct usnap_job *j;
	int n;

	h.chunk_pages = (uint32_t)(s->pool->chunk_bytes / h.ps);
	pthread_mutex_lock(&s->lock);
	while (!s->go)
		pthread_cond_wait(&s->cv, &s->lock);
	pthread_mutex_unlock(&s->lock);

	while (!atomic_load(&s->abort)) {
		n = drain_faults(&h);
		if (n < 0) {
			usnap_fail(s, n, "reading the userfaultfd: %s", strerror(-n));
			break;
		}
		if (!h.sweep_done) {
			j = usnap_job_get(s, false);
			if (j) {
				sweep_step(&h, j);
				continue;
			}
		} else if (n == 0) {
			break; /* every page recorded */
		}
		if (n == 0)
			wait_for_work(&h);
	}

	if (h.fjob) {
		if (atomic_load(&s->abort))
			usnap_job_put(s, h.fjob);
		else
			usnap_compress_submit(s, h.fjob);
	}
	/* Success or failure, this is where protection ends: unregistering
	 * clears every uffd-wp bit and marker and wakes every waiting thread. */
	for (unsigned i = 0; i < s->nregions; i++)
		usnap_disarm(s, &s->sregs[i]);
	discard_messages(s->uffd);
	atomic_store(&s->window_end_ns, usnap_now_ns());
	usnap_compress_close(s);
	return NULL;
}
