/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fault handler thread and the sweep thread: the fault path, and the
 * copy of every other page.
 *
 * The handler reads the userfaultfds: it applies events, resolves faults,
 * and is the only thread that changes protection. The sweep thread copies
 * chunk after chunk and hands each range it copied to the handler, which
 * un-protects it between faults. A writer's fault thus waits for the
 * handler's own work on it (and at most one un-protect), never for a sweep
 * read: the handler sleeps in poll() until a message or a range arrives.
 *
 * "Copy before un-protect, exactly once" rests on the per-region bitmap
 * `copied`, whose bits are claims taken under handler.lock: a page is copied
 * by whoever claims it first. The handler un-protects a page only once it
 * is copied: its own claims are copied by the time it un-protects, and a
 * fault on the sweep's run in flight (claimed, being read: at most a chunk)
 * waits until it has landed.
 *
 * Before begin has armed every region the thread already reads the
 * userfaultfd, but only to handle events; page faults are held until then.
 *
 * A write fault (WP) on a page not yet copied: read the page (pread() on the
 * backing file for shmem, process_vm_readv() for private memory) into the
 * current fault chunk, mark it copied, then UFFDIO_WRITEPROTECT(mode 0) the
 * page, which also wakes the writer. On a page already copied (the sweep got
 * there while the message was queued) only the un-protect is left to do.
 *
 * A MISSING fault is an access to a page that was a hole at the instant (the
 * set of holes is frozen by the MISSING registration before it was listed, see
 * arm.c): record it as a zero page and fill it with UFFDIO_ZEROPAGE. A
 * MISSING fault on a page that was populated at the instant means the program
 * destroyed data without a write fault (hole punch, truncate, MADV_REMOVE):
 * the snapshot fails rather than record a hole that was never there.
 *
 * Messages come from every address space the snapshot tracks (space.c: ours
 * and forked children's), and a region is looked up there by address, but
 * resolved by region page: events (mremap, munmap, fork, MADV_DONTNEED) are
 * handled by space.c as soon as they are read.
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
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "arm.h"
#include "bitmap.h"
#include "compress.h"
#include "fault.h"
#include "pool.h"
#include "snapshot.h"
#include "space.h"
#include "uffd.h"
#include "uffdsnap-private.h"

struct handler {
	uffdsnap_snap_t *s;
	bool sweeper;             /* the sweep thread's: it never reads messages nor changes protection */
	size_t ps;
	uint32_t chunk_pages;
	uint32_t around;          /* fault-around window: FAULT_AROUND, or less in small chunks */
	struct usnap_job *fjob;   /* fault chunk being filled */
	unsigned cur_reg;         /* sweep cursor: region (address order), page, data run */
	uint64_t cur_page;
	size_t cur_run;
	bool sweep_done;          /* handler: every range of the sweep is un-protected; sweep: all copied */
	struct held *held;        /* messages read but not handled yet */
	size_t nheld, held_cap;
	uint64_t wait_gen;        /* waits for a buffer so far: a fault read before one was delayed by it */
	unsigned first;           /* the space poll() found readable first: read it first */
};

struct held {
	unsigned space;
	uint64_t wait_gen;
	struct uffd_msg m;
};

static int read_messages(struct handler *h, bool resolve);
static void wait_for_work(struct handler *h);
static void stop_sweep(uffdsnap_snap_t *s);

/* ---- uffd ioctls --------------------------------------------------------------------- */

/*
 * EAGAIN from a resolving ioctl: an event (MADV_DONTNEED, ...) is pending and
 * its thread waits until we read it, so read it (holding any page faults that
 * come with it) and let the caller retry. Bounded, in case the event never
 * shows up. The sweep thread reads no messages: it wakes the handler and
 * gives it the CPU.
 */
static int event_pending(struct handler *h, uint64_t *t0)
{
	int n;

	if (!*t0)
		*t0 = usnap_now_ns();
	else if (usnap_now_ns() - *t0 > 5000000000ull)
		return -EAGAIN;
	if (h->sweeper) {
		usnap_handler_wake(&h->s->handler);
		sched_yield();
		return 0;
	}
	n = read_messages(h, false);
	if (n < 0)
		return n;
	if (!n)
		sched_yield();
	return 0;
}

/* An event under way on uffd whose message may not be readable yet (asked
 * with a page of our chunk buffers, never registered). */
static bool event_in_flight(uffdsnap_snap_t *s, int uffd)
{
	return usnap_uffd_changing(uffd, usnap_jobs_probe_page(&s->jobs), s->page_size);
}

/*
 * ... on any descriptor of ours, and of the participants once `all`: the
 * probe page is ours, and may be registered in a participant's address space
 * until its ranges are unregistered. Children's are closed by then.
 */
static bool events_in_flight(uffdsnap_snap_t *s, bool all)
{
	for (unsigned k = 0; k < (all ? s->spaces.n : USNAP_OWN_SPACES); k++)
		if (!s->spaces.sp[k].child && event_in_flight(s, s->spaces.sp[k].uffd))
			return true;
	return false;
}

/*
 * Un-protect pages [lo, hi) of region sr wherever space sp maps them (an
 * alias too). After an EAGAIN the pages are looked up again from the start:
 * the event read meanwhile may have moved or cut them, and un-protecting a
 * range twice does no harm. A child that has exited (ESRCH: no mm) has
 * nothing left to un-protect.
 */
static int unprotect(struct handler *h, struct usnap_space *sp, const struct usnap_sreg *sr, uint64_t lo, uint64_t hi)
{
	uint64_t t0 = 0, n;
	uintptr_t addr;
	size_t cur = 0;
	int r;

	while (usnap_space_each(sp, sr, h->ps, lo, hi, &cur, &addr, &n)) {
		r = usnap_uffd_protect(sp->uffd, addr, n * h->ps, false);
		if (!r || (r == -ESRCH && sp->foreign))
			continue;
		if (r != -EAGAIN || (r = event_pending(h, &t0)))
			return r;
		cur = 0;
	}
	return 0;
}

/*
 * Fill page p of sr (a hole) where sp maps it, and wake its waiters there
 * and at its aliases: one page of the file serves them all, and a writer
 * faulting through an alias sleeps on that address.
 */
static int zeropage(struct handler *h, struct usnap_space *sp, const struct usnap_sreg *sr, uint64_t p)
{
	uint64_t t0 = 0, lo = p, n;
	uintptr_t addr;
	size_t cur = 0;
	int r;

	while (usnap_space_next(sp, sr, h->ps, &lo, p + 1, &addr, &n)) {
		r = usnap_uffd_zeropage(sp->uffd, addr, h->ps);
		if (!r || r == -EEXIST)
			break; /* EEXIST: filled meanwhile through another mapping */
		if (r == -ESRCH && sp->foreign)
			return 0;
		if (r != -EAGAIN || (r = event_pending(h, &t0)))
			return r;
		lo = p;
	}
	/* mapped once (no alias, not cut): ZEROPAGE woke the only address */
	while (!sp->whole[sr->id] && usnap_space_each(sp, sr, h->ps, p, p + 1, &cur, &addr, &n))
		usnap_uffd_wake(sp->uffd, addr, h->ps);
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

/* Has the job no room for `need` more pages (each possibly its own extent)? */
static bool job_full(const struct handler *h, const struct usnap_job *j, uint32_t need)
{
	return j->data_pages + need > h->chunk_pages || j->nextents + need > h->chunk_pages;
}

static void fail_removed(struct handler *h, const struct usnap_reg *reg, uint64_t page)
{
	usnap_fail(h->s, -ESTALE, "region '%s': the page at offset 0x%" PRIx64 " was removed (hole punch, "
		   "truncate or MADV_REMOVE) before it was copied", reg->name, page * h->ps);
}

/*
 * Private memory lives only in our page tables. process_vm_readv() on
 * ourselves reads it like a load would, but a range the program unmapped
 * meanwhile is EFAULT rather than a SIGSEGV in the program. A read never
 * raises a write-protect fault, and private regions are not registered for
 * MISSING faults, so it cannot wait on this thread.
 */
static int read_private(struct handler *h, const struct usnap_sreg *sr, uint8_t *dst, uint64_t p, uint64_t n)
{
	uint64_t lo, got, k, t0 = 0;
	uintptr_t addr;
	uint64_t applied = 0;
	bool behind = false;      /* the sweep's look: an event was read, not applied yet */
	ssize_t r = 0;
	int e = 0;

again:
	/* Where the pages are now: mremap may have moved them. The handler
	 * changes the tables meanwhile, under spaces.lock. */
	if (h->sweeper) {
		pthread_mutex_lock(&h->s->spaces.lock);
		applied = atomic_load(&h->s->spaces.events_done);
	}
	for (lo = p, got = 0; usnap_space_next(usnap_home(&h->s->spaces, sr), sr, h->ps, &lo, p + n, &addr, &k) &&
			      got == lo - k - p; got += k) {
		struct iovec local = { dst + got * h->ps, k * h->ps }, remote = { (void *)addr, k * h->ps };
		r = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
		e = r < 0 ? errno : 0;
		if (r != (ssize_t)(k * h->ps))
			break;
	}
	if (h->sweeper) {
		behind = atomic_load(&h->s->spaces.events_read) != applied;
		pthread_mutex_unlock(&h->s->spaces.lock);
	}
	if (got == n)
		return 0;
	/* mremap and munmap change the mapping first and only then queue their
	 * event: read it (the handler reads it for the sweep, and applies it
	 * after reading: `behind`), and look again */
	if ((behind || event_in_flight(h->s, usnap_home(&h->s->spaces, sr)->uffd)) && !event_pending(h, &t0) &&
	    !atomic_load(&h->s->abort))
		goto again;
	usnap_fail(h->s, e ? -e : -EFAULT, "region '%s': reading page %" PRIu64 ": %s", sr->reg->name, p + got,
		   e ? strerror(e) : "it is no longer mapped");
	return -1;
}

/*
 * pread() of the backing file. A page populated at the instant that the
 * program punched (fallocate PUNCH_HOLE, MADV_REMOVE) before we got to it
 * reads as zeros that were never there, and keeps its uffd-wp marker, so
 * only the file can tell: every page that reads as all zeros must be in the
 * page cache or in swap. One cachestat() over the zero pages of the run says
 * so for all of them (a syscall costs ~1 us here, and a fault-around window
 * of zeros used to pay 16 of them); only if it counts fewer is each page
 * looked at: SEEK_DATA on the page itself, else in the page cache (reserved
 * by fallocate, never written). A punched page stays a hole until its next
 * access, whose MISSING fault waits for this thread, so checking after the
 * read cannot miss it. (SEEK_HOLE over the run would be one call, but it
 * scans the file up to its first hole: to the end of a dense file, each time.)
 */
static int read_shmem(struct handler *h, const struct usnap_reg *reg, uint8_t *dst, uint64_t p, uint64_t n)
{
	size_t got = 0, want = n * h->ps;

	while (got < want) {
		ssize_t r = pread(reg->fd, dst + got, want - got, reg->file_off + (off_t)(p * h->ps + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			usnap_fail(h->s, r ? -errno : -ESTALE, "region '%s': reading page %" PRIu64 ": %s", reg->name,
				   p + got / h->ps, r ? strerror(errno) : "its file was truncated during the snapshot");
			return -1;
		}
		got += (size_t)r;
	}
	/* A page of the instant that reads as zeros and is a hole now was
	 * punched since (or never written, only reserved by fallocate: it is in
	 * the page cache then, see arm.c find_data). */
	uint64_t first = n, last = 0;
	for (uint64_t i = 0; i < n; i++)
		if (usnap_page_is_zero(dst + i * h->ps, h->ps)) {
			first = first < n ? first : i;
			last = i;
		}
	if (first == n ||
	    usnap_cached(reg->fd, reg->file_off + (off_t)((p + first) * h->ps), (last + 1 - first) * h->ps) ==
		    (int)(last + 1 - first))
		return 0;
	for (uint64_t i = first; i <= last; i++) {
		off_t at = reg->file_off + (off_t)((p + i) * h->ps);
		if (usnap_page_is_zero(dst + i * h->ps, h->ps) && lseek(reg->fd, at, SEEK_DATA) != at &&
		    usnap_cached(reg->fd, at, h->ps) <= 0) {
			fail_removed(h, reg, p + i);
			return -1;
		}
	}
	return 0;
}

/* Read pages [p, p+n) of a region into the job's raw buffer. */
static int copy_pages(struct handler *h, struct usnap_sreg *sr, struct usnap_job *j, uint64_t p, uint64_t n)
{
	const struct usnap_reg *reg = sr->reg;
	uint8_t *dst = j->raw + (size_t)j->data_pages * h->ps;
	size_t want = n * h->ps;

	if (reg->kind == USNAP_PRIVATE ? read_private(h, sr, dst, p, n) : read_shmem(h, reg, dst, p, n))
		return -1;
	add_extent(j, p, n, USNAP_EXT_DATA);
	j->data_pages += (uint32_t)n;
	atomic_fetch_add(&h->s->stats.bytes_raw, want);
	return 0;
}

/* ---- the fault path ------------------------------------------------------------------------ */

/*
 * Fault-around: a write fault copies and un-protects the aligned 64 KiB around
 * its page, not just the page. A sequential writer then faults once per 16
 * pages, and the copy and the TLB-flushing un-protect are paid once for all of
 * them; the sweep would have had to copy those pages anyway.
 */
#define FAULT_AROUND 16u

/* A fault chunk for region sr with room for a fault-around window, or NULL on abort. */
static struct usnap_job *fault_job(struct handler *h, struct usnap_sreg *sr)
{
	uffdsnap_snap_t *s = h->s;
	struct usnap_job *j = h->fjob;
	uint64_t t0, waited, max;
	bool waiting;

	if (j && (j->region != sr->id || job_full(h, j, sr->reg->unit > 1 ? 1 : h->around))) {
		usnap_compress_submit(s, j);
		h->fjob = j = NULL;
	}
	if (j)
		return j;
	/* Backpressure: the writer waits until the sink frees a buffer. Events
	 * are still read meanwhile: a thread forking or unmapping would
	 * otherwise wait for the sink too, and it may be the one that drains it. */
	t0 = usnap_now_ns();
	waiting = false;
	while (!(j = usnap_job_get(s)) && !atomic_load(&s->abort)) {
		int n;

		if (!waiting)
			usnap_jobs_fault_waits(&s->jobs, true);
		waiting = true;
		usnap_compress_starved(s);
		n = read_messages(h, false);
		if (n < 0) {
			usnap_fail(s, n, "reading the userfaultfd: %s", strerror(-n));
			break;
		}
		if (n == 0)
			wait_for_work(h);
	}
	waited = usnap_now_ns() - t0;
	if (waiting) {
		usnap_jobs_fault_waits(&s->jobs, false);
		/* after the wait: faults held during it count it too */
		h->wait_gen++;
		atomic_fetch_add(&s->stats.fault_wait_ns, waited);
	}
	max = atomic_load(&s->stats.fault_wait_max_ns);
	while (waited > max && !atomic_compare_exchange_weak(&s->stats.fault_wait_max_ns, &max, waited))
		;
	if (j) {
		j->region = sr->id;
		j->fault = true;
	}
	return h->fjob = j;
}

/*
 * Claim the next run of pages of [*from, hi) not claimed yet (for shmem,
 * populated at the instant: holes are left to their MISSING faults and the
 * sweep), at most max pages: [p, q). False if none is left.
 */
static bool claim_run(struct handler *h, struct usnap_sreg *sr, uint64_t *from, uint64_t hi, uint64_t max,
		      uint64_t *p, uint64_t *q)
{
	bool shmem = sr->reg->kind == USNAP_SHMEM;
	uint64_t a, b;

	pthread_mutex_lock(&h->s->handler.lock);
	for (a = usnap_bits_find(sr->copied, *from, hi, false); a < hi && shmem && !usnap_in_data(sr, a);)
		a = usnap_bits_find(sr->copied, a + 1, hi, false);
	for (b = a; b < hi && b - a < max && !usnap_bit(sr->copied, b) && (!shmem || usnap_in_data(sr, b)); b++)
		;
	usnap_bits_set(sr->copied, a, b);
	pthread_mutex_unlock(&h->s->handler.lock);
	*p = a, *q = *from = b;
	return a < hi;
}

/*
 * Copy the pages of [lo, hi) nobody claimed yet into as many fault chunks as
 * it takes (a huge page does not fit in one). The chunk comes first: a wait
 * for a buffer reads events, and a page claimed but not copied would look
 * recorded to a discard of private memory (space.c check_discard).
 */
static int copy_around(struct handler *h, struct usnap_sreg *sr, uint64_t lo, uint64_t hi)
{
	for (uint64_t from = lo, p, q;;) {
		struct usnap_job *j = fault_job(h, sr);
		if (!j)
			return -1;
		if (!claim_run(h, sr, &from, hi, h->chunk_pages - j->data_pages, &p, &q))
			return 0;
		if (copy_pages(h, sr, j, p, q - p))
			return -1;
		atomic_fetch_add(&h->s->stats.pages_fault, q - p);
	}
}

/* Does the sweep's run in flight overlap [lo, hi) of sr? Under handler.lock. */
static bool flying(const struct usnap_handler *hd, const struct usnap_sreg *sr, uint64_t lo, uint64_t hi)
{
	return hd->fly_region == sr->id && hd->fly_lo < hd->fly_hi && hd->fly_lo < hi && hd->fly_hi > lo;
}

/*
 * Wait until the sweep has copied the pages of [lo, hi) it claimed: a run
 * of at most one chunk. It may itself wait for an event to be read (a read
 * of private memory that mremap moved), so events are read meanwhile and
 * faults held.
 */
static void wait_landed(struct handler *h, const struct usnap_sreg *sr, uint64_t lo, uint64_t hi)
{
	struct usnap_handler *hd = &h->s->handler;

	pthread_mutex_lock(&hd->lock);
	while (flying(hd, sr, lo, hi) && !atomic_load(&h->s->abort)) {
		pthread_mutex_unlock(&hd->lock);
		if (read_messages(h, false) <= 0)
			sched_yield();
		pthread_mutex_lock(&hd->lock);
	}
	pthread_mutex_unlock(&hd->lock);
}

/* Is page p of sr claimed (recorded, or being copied)? */
static bool claimed(struct handler *h, const struct usnap_sreg *sr, uint64_t p)
{
	bool r;

	pthread_mutex_lock(&h->s->handler.lock);
	r = usnap_bit(sr->copied, p);
	pthread_mutex_unlock(&h->s->handler.lock);
	return r;
}

/* Claim page p of sr: false if somebody has. */
static bool claim_page(struct handler *h, struct usnap_sreg *sr, uint64_t p)
{
	bool fresh;

	pthread_mutex_lock(&h->s->handler.lock);
	fresh = !usnap_bit(sr->copied, p);
	if (fresh)
		usnap_bits_set(sr->copied, p, p + 1);
	pthread_mutex_unlock(&h->s->handler.lock);
	return fresh;
}

uint64_t usnap_first_unrecorded(uffdsnap_snap_t *s, const struct usnap_sreg *sr, uint64_t lo, uint64_t hi)
{
	struct usnap_handler *hd = &s->handler;
	uint64_t p;

	pthread_mutex_lock(&hd->lock);
	p = usnap_bits_find(sr->copied, lo, hi, false);
	if (flying(hd, sr, lo, p))
		p = hd->fly_lo > lo ? hd->fly_lo : lo;
	pthread_mutex_unlock(&hd->lock);
	return p;
}

/*
 * A fault on registered memory that is no region's any more (a region grown
 * in place by mremap, say): resolve it as if nothing tracked it, or the
 * writer would fault again for as long as the snapshot runs.
 */
static void untracked(struct usnap_space *sp, uintptr_t addr, size_t ps, bool wp)
{
	if (!(wp ? usnap_uffd_protect(sp->uffd, addr, ps, false) : usnap_uffd_zeropage(sp->uffd, addr, ps)))
		return;
	/* Gone or filled meanwhile (EAGAIN: an event; the writer retries and
	 * faults again if need be): a wake is all it takes. */
	usnap_uffd_wake(sp->uffd, addr, ps);
}

static void handle_fault_msg(struct handler *h, struct usnap_space *sp, const struct uffd_msg *m)
{
	uffdsnap_snap_t *s = h->s;
	uintptr_t addr = (uintptr_t)m->arg.pagefault.address & ~(uintptr_t)(h->ps - 1);
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
	const struct usnap_map *map;
	uint64_t p, lo, hi;
	struct usnap_sreg *sr;
	struct usnap_job *j;
	bool theirs;
	int r;

	atomic_fetch_add(&s->stats.faults, 1);
	map = usnap_space_find(sp, addr, h->ps);
	if (!map) {
		untracked(sp, addr, h->ps, wp);
		return;
	}
	sr = map->sr;
	p = lo = map->first + (addr - map->addr) / h->ps;
	hi = p + 1;
	/* A child's private pages are its own copies, never the snapshot's:
	 * nothing to copy there. Anywhere else the window is widened only when
	 * this fault copies it (pages around an already copied one may not be
	 * copied), except a huge page, which is only ever un-protected whole. */
	theirs = sp->child && sr->reg->kind == USNAP_PRIVATE;
	if (wp && (theirs || sr->reg->unit > 1 || !claimed(h, sr, p))) {
		uint64_t win = sr->reg->unit > h->around ? sr->reg->unit : h->around;
		lo = p & ~(win - 1);
		hi = lo + win < sr->reg->npages ? lo + win : sr->reg->npages;
	}
	if (theirs) {
		/* un-protect only */
	} else if (wp) {
		if (copy_around(h, sr, lo, hi))
			return;
	} else if (!claimed(h, sr, p)) {
		if (usnap_in_data(sr, p))
			return fail_removed(h, sr->reg, p);
		j = fault_job(h, sr);
		if (!j)
			return;
		if (claim_page(h, sr, p)) {
			add_extent(j, p, 1, USNAP_EXT_ZERO);
			atomic_fetch_add(&s->stats.pages_hole, 1);
		}
	}
	/* Every populated page of [lo, hi) is claimed now; once those the
	 * sweep is still reading are copied, un-protect them all. */
	if (wp)
		wait_landed(h, sr, lo, hi);
	r = wp ? unprotect(h, sp, sr, lo, hi) : zeropage(h, sp, sr, p);
	if (r) {
		usnap_fail(s, r, "region '%s': resolving a %s fault at 0x%" PRIxPTR ": %s", sr->reg->name,
			   wp ? "write-protect" : "missing", addr, strerror(-r));
		return;
	}
	/* Resolved where the page is now; its writer may sleep where it was. */
	map = usnap_space_find(sp, addr, h->ps);
	if (!map || map->sr != sr || map->first + (addr - map->addr) / h->ps != p)
		usnap_uffd_wake(sp->uffd, addr, h->ps);
}

/* Resolve a fault read when h->wait_gen was gen; count it if a wait for a
 * buffer delayed it (its own or another's while it was queued). */
static void handle_fault(struct handler *h, struct usnap_space *sp, const struct uffd_msg *m, uint64_t gen)
{
	handle_fault_msg(h, sp, m);
	if (h->wait_gen != gen)
		atomic_fetch_add(&h->s->stats.faults_waited, 1);
}

/* ---- the sweep ----------------------------------------------------------------------------- */

/* Hand range [lo, hi) of region r, copied, to the handler to un-protect. */
static void hand_over(uffdsnap_snap_t *s, unsigned r, uint64_t lo, uint64_t hi)
{
	struct usnap_handler *hd = &s->handler;

	pthread_mutex_lock(&hd->lock);
	while (hd->nswept == USNAP_SWEPT_MAX && !hd->stop)
		pthread_cond_wait(&hd->cond, &hd->lock);
	if (!hd->stop)
		hd->swept[hd->nswept++] = (struct usnap_swept){ r, lo, hi };
	pthread_mutex_unlock(&hd->lock);
	usnap_handler_wake(hd);
}

/*
 * Fill job with the next chunk of the sweep (sweep thread). Each run is
 * claimed and marked in flight under handler.lock, read without it; the
 * range copied is handed to the handler.
 */
static void sweep_step(struct handler *h, struct usnap_job *j)
{
	uffdsnap_snap_t *s = h->s;
	struct usnap_handler *hd = &s->handler;
	uint64_t lo = UINT64_MAX, hi = 0;
	struct usnap_sreg *sr = NULL;

	while (h->cur_reg < s->nregions && !job_full(h, j, 1) && !atomic_load(&s->abort)) {
		uint64_t p, q, limit;
		bool in_data;
		int r;

		sr = s->by_addr[h->cur_reg];
		if (h->cur_page >= sr->reg->npages) {
			h->cur_reg++, h->cur_page = 0, h->cur_run = 0;
			if (j->nextents)
				break; /* a chunk holds pages of one region */
			continue;
		}
		j->region = sr->id;
		pthread_mutex_lock(&hd->lock);
		p = usnap_bits_find(sr->copied, h->cur_page, sr->reg->npages, false);
		if (p >= sr->reg->npages) {
			pthread_mutex_unlock(&hd->lock);
			h->cur_page = p;
			continue;
		}
		while (h->cur_run < sr->ndata && sr->data[h->cur_run].first + sr->data[h->cur_run].n <= p)
			h->cur_run++;
		in_data = h->cur_run < sr->ndata && sr->data[h->cur_run].first <= p;
		limit = in_data ? sr->data[h->cur_run].first + sr->data[h->cur_run].n
		      : h->cur_run < sr->ndata ? sr->data[h->cur_run].first : sr->reg->npages;
		q = usnap_bits_find(sr->copied, p, limit, true);
		if (q - p > (1u << 30))
			q = p + (1u << 30);
		if (in_data && q - p > h->chunk_pages - j->data_pages)
			q = p + h->chunk_pages - j->data_pages;
		usnap_bits_set(sr->copied, p, q);
		if (in_data)
			hd->fly_region = sr->id, hd->fly_lo = p, hd->fly_hi = q;
		pthread_mutex_unlock(&hd->lock);
		h->cur_page = q;
		if (!in_data) {
			add_extent(j, p, q - p, USNAP_EXT_ZERO);
			atomic_fetch_add(&s->stats.pages_hole, q - p);
			continue;
		}
		r = copy_pages(h, sr, j, p, q - p);
		pthread_mutex_lock(&hd->lock);
		hd->fly_lo = hd->fly_hi = 0;
		pthread_mutex_unlock(&hd->lock);
		if (r)
			return usnap_job_put(s, j);
		atomic_fetch_add(&s->stats.pages_sweep, q - p);
		if (p < lo)
			lo = p;
		hi = q;
	}
	/* [lo, hi) holds only pages recorded by now (copied here or by faults)
	 * and holes, which carry no protection. Its un-protect also wakes
	 * writers whose faults came while it was in flight. Huge pages: only
	 * whole ones. The sweep copies in address order, so the start of the
	 * first is copied already; the rest of the last is left to the next
	 * step (or to a fault, which copies and un-protects it whole). */
	sr = hi > lo ? &s->sregs[j->region] : NULL;
	if (sr && sr->reg->unit > 1) {
		lo &= ~(uint64_t)(sr->reg->unit - 1);
		hi &= ~(uint64_t)(sr->reg->unit - 1);
	}
	if (j->nextents)
		usnap_compress_submit(s, j);
	else
		usnap_job_put(s, j);
	if (hi > lo)
		hand_over(s, sr->id, lo, hi);
	if (h->cur_reg >= s->nregions)
		h->sweep_done = true;
}

static void *sweep_main(void *arg)
{
	uffdsnap_snap_t *s = arg;
	struct usnap_handler *hd = &s->handler;
	struct handler h = { .s = s, .sweeper = true, .ps = s->page_size };
	struct usnap_job *j;

	h.chunk_pages = (uint32_t)(s->jobs.pool->chunk_bytes / h.ps);
	pthread_mutex_lock(&hd->lock);
	while (!atomic_load(&s->go) && !atomic_load(&hd->stop))
		pthread_cond_wait(&hd->cond, &hd->lock);
	pthread_mutex_unlock(&hd->lock);
	while (!h.sweep_done && !atomic_load(&s->abort) && (j = usnap_job_wait(s, &hd->stop)))
		sweep_step(&h, j);
	pthread_mutex_lock(&hd->lock);
	hd->sweep_over = hd->sweep_exited = true;
	pthread_cond_broadcast(&hd->cond);
	pthread_mutex_unlock(&hd->lock);
	usnap_handler_wake(hd);
	return NULL;
}

/*
 * Un-protect the ranges the sweep handed over (handler). Returns how many;
 * h->sweep_done once the sweep is over and every range is done.
 */
static int unprotect_swept(struct handler *h)
{
	uffdsnap_snap_t *s = h->s;
	struct usnap_handler *hd = &s->handler;
	struct usnap_swept r[USNAP_SWEPT_MAX];
	unsigned n;
	bool over;

	pthread_mutex_lock(&hd->lock);
	n = hd->nswept;
	memcpy(r, hd->swept, n * sizeof(r[0]));
	hd->nswept = 0;
	over = hd->sweep_over;
	pthread_cond_broadcast(&hd->cond);
	pthread_mutex_unlock(&hd->lock);
	for (unsigned i = 0; i < n && !atomic_load(&s->abort); i++) {
		struct usnap_sreg *sr = &s->sregs[r[i].region];
		int e = unprotect(h, usnap_home(&s->spaces, sr), sr, r[i].lo, r[i].hi);
		if (e)
			usnap_fail(s, e, "region '%s': un-protecting after the sweep: %s", sr->reg->name, strerror(-e));
	}
	h->sweep_done = over;
	return (int)n;
}

/* ---- the loop -------------------------------------------------------------------------------- */

#define FAULT_BATCH 64

static int hold(struct handler *h, unsigned space, const struct uffd_msg *m)
{
	if (h->nheld == h->held_cap) {
		size_t cap = h->held_cap ? h->held_cap * 2 : 64;
		struct held *n = usnap_sys_realloc(h->held, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		h->held = n, h->held_cap = cap;
	}
	h->held[h->nheld++] = (struct held){ space, h->wait_gen, *m };
	return 0;
}

/*
 * Read the pending messages of every space. Events are handled at once (the
 * thread that caused one sleeps until it is read, and resolving ioctls fail
 * with EAGAIN until then); page faults are resolved now if `resolve`, else
 * held for later. Returns how many were read, 0 if none, or a negative errno.
 */
static int read_messages(struct handler *h, bool resolve)
{
	uffdsnap_snap_t *s = h->s;
	struct uffd_msg msgs[FAULT_BATCH];
	uint64_t gen;
	int total = 0;

	/* A read costs ~1-2 us here: with participants, the faulting space's
	 * message would wait behind a read of every space before it. */
	for (unsigned k = 0; k < s->spaces.n; k++) { /* a FORK adds spaces: read them too */
		unsigned si = (h->first + k) % s->spaces.n;
		ssize_t n = read(s->spaces.sp[si].uffd, msgs, sizeof(msgs));
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		n = n < 0 ? 0 : n / (ssize_t)sizeof(msgs[0]);
		gen = h->wait_gen;
		for (ssize_t i = 0; i < n; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
				atomic_fetch_add(&s->spaces.events_read, 1);
				usnap_space_event(s, &s->spaces.sp[si], &msgs[i]);
			} else if (atomic_load(&s->abort))
				continue; /* unregistering wakes it */
			else if (resolve)
				handle_fault(h, &s->spaces.sp[si], &msgs[i], gen);
			else if (hold(h, si, &msgs[i]))
				usnap_fail(s, -ENOMEM, "holding fault messages");
		}
		total += (int)n;
	}
	return total;
}

/* Resolve held faults, including any held while resolving them. */
static void resolve_held(struct handler *h)
{
	for (size_t i = 0; i < h->nheld && !atomic_load(&h->s->abort); i++) {
		struct held m = h->held[i]; /* hold() may move the array */
		handle_fault(h, &h->s->spaces.sp[m.space], &m.m, m.wait_gen);
	}
	h->nheld = 0;
}

/*
 * After the last UNREGISTER: read every message left, and make sure none is
 * still coming. Page faults the unregister resolved are stale (a MISSING one
 * read by the next snapshot would record a populated page as a hole), and a
 * FORK one carries a descriptor. An event can still be on its way: a fork
 * (or mremap, munmap, madvise) that saw the ranges registered queues its
 * event only after dropping mmap_lock, and its thread then sleeps until
 * someone reads it -- with nobody reading, until the next snapshot. Every
 * such operation raises the context's mmap_changing under mmap_lock, before
 * our UNREGISTER could take it: event_in_flight() says when the last is read.
 */
static void drain_messages(uffdsnap_snap_t *s)
{
	struct uffd_msg msgs[FAULT_BATCH];
	struct pollfd pfd[USNAP_OWN_SPACES];
	uint64_t t0 = usnap_now_ns();
	ssize_t n;

	for (unsigned k = 0; k < USNAP_OWN_SPACES; k++)
		pfd[k] = (struct pollfd){ .fd = s->spaces.sp[k].uffd, .events = POLLIN };
	for (;;) {
		for (unsigned k = 0; k < s->spaces.n; k++) {
			int uffd = s->spaces.sp[k].uffd;

			if (s->spaces.sp[k].child)
				continue; /* closed: the kernel released it */

			while ((n = read(uffd, msgs, sizeof(msgs))) > 0) {
				for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
					/* a move that raced with the unregister took
					 * its registration along: clear it where it went */
					if (msgs[i].event == UFFD_EVENT_REMAP)
						usnap_uffd_unregister(uffd, msgs[i].arg.remap.to, msgs[i].arg.remap.len);
					usnap_msg_drop(&msgs[i]);
				}
			}
		}
		if (!events_in_flight(s, true) || usnap_now_ns() - t0 > 5000000000ull)
			return;
		poll(pfd, USNAP_OWN_SPACES, 10); /* the event is being queued */
	}
}

static void wait_for_work(struct handler *h)
{
	uffdsnap_snap_t *s = h->s;
	struct pollfd pfd[USNAP_MAX_SPACES + 1];
	uint64_t v;

	/* The wake-up of a failure may have been consumed by an earlier wait
	 * (waiting for a buffer): it was set before that wake-up was sent. */
	if (atomic_load(&s->abort) && atomic_load(&s->go))
		return;
	pfd[0] = (struct pollfd){ .fd = s->handler.efd, .events = POLLIN };
	for (unsigned i = 0; i < s->spaces.n; i++)
		pfd[i + 1] = (struct pollfd){ .fd = s->spaces.sp[i].uffd, .events = POLLIN };
	if (poll(pfd, s->spaces.n + 1, -1) <= 0)
		return;
	for (unsigned i = 0; i < s->spaces.n; i++)
		if (pfd[i + 1].revents) {
			h->first = i;
			break;
		}
	if ((pfd[0].revents & POLLIN) && read(s->handler.efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: consumed by an earlier wake-up */
	}
}

static void *handler_main(void *arg)
{
	uffdsnap_snap_t *s = arg;
	struct handler h = { .s = s, .ps = s->page_size };
	int n;

	usnap_thread_prompt();
	h.chunk_pages = (uint32_t)(s->jobs.pool->chunk_bytes / h.ps);
	h.around = FAULT_AROUND < h.chunk_pages ? FAULT_AROUND : h.chunk_pages; /* both powers of two */

	/* While begin arms the regions only events are handled: faults are
	 * held, so no write lands in one region after the instant while another
	 * is still being armed, and begin's ioctls never wait for an event. Not
	 * even a failure ends this early: unregistering now could race with
	 * begin registering the next region. */
	while (!atomic_load(&s->go)) {
		n = read_messages(&h, false);
		if (n < 0)
			usnap_fail(s, n, "reading the userfaultfd: %s", strerror(-n));
		else if (n == 0)
			wait_for_work(&h);
	}

	while (!atomic_load(&s->abort)) {
		resolve_held(&h);
		n = read_messages(&h, true);
		if (n < 0) {
			usnap_fail(s, n, "reading the userfaultfd: %s", strerror(-n));
			break;
		}
		n += unprotect_swept(&h);
		if (h.sweep_done && n == 0 && !h.nheld)
			break; /* every page recorded */
		if (n == 0 && !h.nheld)
			wait_for_work(&h);
	}
	stop_sweep(s);

	/* Every page is recorded: was the file written through a mapping made
	 * meanwhile? */
	if (h.sweep_done && !atomic_load(&s->abort))
		usnap_check_mappings(s);
	if (h.fjob) {
		if (atomic_load(&s->abort))
			usnap_job_put(s, h.fjob);
		else
			usnap_compress_submit(s, h.fjob);
	}
	/* Success or failure, this is where protection ends: unregistering
	 * clears every uffd-wp bit and marker and wakes every waiting thread
	 * (held faults included). First every event under way is read, so the
	 * regions are unregistered where they are now. */
	for (uint64_t t0 = usnap_now_ns(); usnap_now_ns() - t0 < 5000000000ull;) {
		if (read_messages(&h, false) > 0)
			continue;
		if (!events_in_flight(s, false))
			break;
		poll(NULL, 0, 1);
	}
	usnap_disarm_all(s);
	usnap_remap_huge(s);
	for (unsigned i = USNAP_OWN_SPACES; i < s->spaces.n; i++)
		usnap_space_end(s, &s->spaces.sp[i]);
	drain_messages(s);
	usnap_sys_free(h.held);
	atomic_store(&s->stats.window_end_ns, usnap_now_ns());
	usnap_compress_close(s);
	/* Outside the window, and beside the workers finishing the file rather
	 * than before them: it delays only the join (uffdsnap_wait). */
	usnap_writable_again(s);
	return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

/* Stop the sweep thread wherever it waits, and wait until it has (not by
 * pthread_join: see usnap_handler_start). */
static void stop_sweep(uffdsnap_snap_t *s)
{
	struct usnap_handler *hd = &s->handler;

	atomic_store(&hd->stop, true);
	usnap_jobs_wake(&s->jobs);
	pthread_mutex_lock(&hd->lock);
	pthread_cond_broadcast(&hd->cond);
	while (!hd->sweep_exited)
		pthread_cond_wait(&hd->cond, &hd->lock);
	pthread_mutex_unlock(&hd->lock);
}

void usnap_handler_init(struct usnap_handler *hd)
{
	hd->efd = -1;
	pthread_mutex_init(&hd->lock, NULL);
	pthread_cond_init(&hd->cond, NULL);
}

int usnap_handler_open(struct usnap_handler *hd)
{
	hd->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return hd->efd < 0 ? usnap_err(-errno, "eventfd: %s", strerror(errno)) : 0;
}

int usnap_handler_start(uffdsnap_snap_t *s)
{
	struct usnap_handler *hd = &s->handler;
	int r = usnap_thread_start(&hd->sweeper, sweep_main, s, "usnap-sweep");

	if (r)
		return usnap_err(r, "starting the sweep thread: %s", strerror(-r));
	r = usnap_thread_start(&hd->thread, handler_main, s, "usnap-handler");
	if (r) {
		stop_sweep(s);
		pthread_join(hd->sweeper, NULL);
		return usnap_err(r, "starting the fault handler thread: %s", strerror(-r));
	}
	hd->started = true;
	return 0;
}

void usnap_handler_go(struct usnap_handler *hd)
{
	usnap_handler_wake(hd);
	pthread_mutex_lock(&hd->lock);
	pthread_cond_broadcast(&hd->cond);
	pthread_mutex_unlock(&hd->lock);
}

void usnap_handler_wake(struct usnap_handler *hd)
{
	static const uint64_t one = 1;

	if (write(hd->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already set, it wakes anyway */
	}
}

bool usnap_handler_join(struct usnap_handler *hd)
{
	if (hd->started) {
		pthread_join(hd->thread, NULL);
		pthread_join(hd->sweeper, NULL);
	}
	return hd->started;
}

void usnap_handler_destroy(struct usnap_handler *hd)
{
	if (hd->efd >= 0)
		close(hd->efd);
	pthread_mutex_destroy(&hd->lock);
	pthread_cond_destroy(&hd->cond);
}
