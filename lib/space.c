/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Address spaces: where each region's pages are mapped while a snapshot runs,
 * and the non-cooperative events that change it.
 *
 * A space is one userfaultfd and the regions registered with it. This
 * process has two (the context's descriptors, probe.c): shared regions in
 * spaces[USNAP_UFFD_SHARED], private ones in spaces[USNAP_UFFD_PRIVATE]. The
 * others are processes forked during the snapshot: with
 * UFFD_FEATURE_EVENT_FORK the kernel copies the registration and every
 * uffd-wp bit into the child and hands us a userfaultfd for it (one for each
 * of ours that registered something), so a child's write to shared memory
 * faults on that descriptor like ours do. A child's private pages are its own
 * copies, not the snapshot's: its faults there are only un-protected.
 *
 * A space maps a region as one or more pieces (struct usnap_map). mremap()
 * moves pieces (UFFD_EVENT_REMAP: the page tables, uffd-wp bits and markers
 * move with the VMA, so protection follows by itself; only our table must),
 * munmap() cuts them (UFFD_EVENT_UNMAP). What munmap took from shmem is still
 * in the file, read with pread() like the rest; what it took from private
 * memory is gone, and if it was not copied yet the snapshot fails.
 *
 * Event messages are read after the fact (the thread that caused the event
 * sleeps until we read it, and every resolving ioctl fails with EAGAIN
 * meanwhile), so a fault message can name an address that has moved since:
 * callers resolve by region page, not by address, and wake the old address.
 *
 * Everything here runs on the handler thread once begin has given `go`;
 * before that, the spaces are only built (snapshot.c) and read by begin.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include "bitmap.h"
#include "snapshot.h"
#include "space.h"
#include "uffd.h"
#include "uffdsnap-private.h"

static int cmp_map(const void *a, const void *b)
{
	const struct usnap_map *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* whole[id]: the address of page 0 when region id is mapped in one piece,
 * in order, all of it (the fast path of usnap_space_next); 0 otherwise. */
static void index_whole(uffdsnap_snap_t *s, struct usnap_space *sp)
{
	memset(sp->whole, 0, s->nregions * sizeof(*sp->whole));
	memset(sp->pieces, 0, s->nregions * sizeof(*sp->pieces));
	for (size_t i = 0; i < sp->nmaps; i++)
		sp->pieces[sp->maps[i].sr->id]++;
	for (size_t i = 0; i < sp->nmaps; i++) {
		const struct usnap_map *m = &sp->maps[i];
		if (sp->pieces[m->sr->id] == 1 && m->first == 0 && m->npages == m->sr->reg->npages)
			sp->whole[m->sr->id] = m->addr;
	}
}

#define SYS_HDR 16 /* keeps the size; keeps 16-byte alignment */

void *usnap_sys_alloc(size_t n)
{
	size_t len = (n + SYS_HDR + 4095) & ~(size_t)4095;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	memcpy(p, &len, sizeof(len));
	return p + SYS_HDR;
}

void usnap_sys_free(void *p)
{
	size_t len;

	if (!p)
		return;
	memcpy(&len, (char *)p - SYS_HDR, sizeof(len));
	munmap((char *)p - SYS_HDR, len);
}

void *usnap_sys_realloc(void *p, size_t n)
{
	size_t len;
	void *q;

	if (!p)
		return usnap_sys_alloc(n);
	memcpy(&len, (char *)p - SYS_HDR, sizeof(len));
	if (n <= len - SYS_HDR)
		return p;
	if (!(q = usnap_sys_alloc(n)))
		return NULL;
	memcpy(q, p, len - SYS_HDR);
	usnap_sys_free(p);
	return q;
}

static void space_release(struct usnap_space *sp)
{
	if (sp->foreign && sp->uffd >= 0)
		close(sp->uffd);
	sp->uffd = -1;
	usnap_sys_free(sp->maps);
	usnap_sys_free(sp->whole);
	usnap_sys_free(sp->pieces);
	sp->maps = NULL, sp->whole = NULL, sp->pieces = NULL;
	sp->nmaps = 0;
}

static int space_alloc(uffdsnap_snap_t *s, struct usnap_space *sp, size_t nmaps)
{
	sp->cap = nmaps + 2;
	sp->maps = usnap_sys_alloc(sp->cap * sizeof(*sp->maps));
	sp->whole = usnap_sys_alloc(s->nregions * sizeof(*sp->whole));
	sp->pieces = usnap_sys_alloc(s->nregions * sizeof(*sp->pieces));
	return sp->maps && sp->whole && sp->pieces ? 0 : -ENOMEM;
}

void usnap_spaces_init(struct usnap_spaces *ss)
{
	pthread_mutex_init(&ss->lock, NULL);
}

int usnap_spaces_ours(uffdsnap_snap_t *s)
{
	s->spaces.n = USNAP_OWN_SPACES; /* freed by usnap_spaces_free even if half allocated */
	for (unsigned k = 0; k < USNAP_OWN_SPACES; k++) {
		struct usnap_space *sp = &s->spaces.sp[k];

		sp->uffd = s->ctx->uffd[k];
		sp->root = k;
		if (space_alloc(s, sp, s->nregions))
			return usnap_err(-ENOMEM, "allocating the region map");
		for (unsigned i = 0; i < s->nregions; i++) {
			const struct usnap_reg *reg = s->sregs[i].reg;
			if (usnap_kind_uffd(reg->kind) == k)
				sp->maps[sp->nmaps++] = (struct usnap_map){ .addr = reg->addr, .npages = reg->npages,
									    .sr = &s->sregs[i] };
		}
		qsort(sp->maps, sp->nmaps, sizeof(*sp->maps), cmp_map);
		index_whole(s, sp);
	}
	return 0;
}

/*
 * A participant is a space of its own, built from the mappings it joined
 * with; the uffd is a dup, so the participant may leave (and the listener
 * close its descriptor) while the snapshot still resolves its faults.
 * Its children count against the same limit as ours.
 */
int usnap_space_participants(uffdsnap_snap_t *s)
{
	struct usnap_spaces *ss = &s->spaces;

	for (const struct usnap_participant *p = s->ctx->parts; p; p = p->next) {
		struct usnap_space *sp = &ss->sp[ss->n];

		*sp = (struct usnap_space){ .uffd = -1, .foreign = true, .pid = p->pid, .root = ss->n };
		ss->n++; /* freed by usnap_spaces_free even if half built */
		if (space_alloc(s, sp, p->nmaps) || (sp->uffd = fcntl(p->uffd, F_DUPFD_CLOEXEC, 0)) < 0)
			return usnap_err(-ENOMEM, "tracking participant %d", (int)p->pid);
		for (unsigned i = 0; i < p->nmaps; i++) {
			const struct usnap_joined *j = &p->maps[i];
			sp->maps[sp->nmaps++] = (struct usnap_map){ .addr = j->addr, .npages = j->n,
								    .sr = &s->sregs[j->region], .first = j->first };
		}
		qsort(sp->maps, sp->nmaps, sizeof(*sp->maps), cmp_map);
		index_whole(s, sp);
	}
	ss->nbase = ss->n;
	ss->joins = atomic_load(&s->ctx->joins);
	return 0;
}

/*
 * Another mapping of sr's file pages [first, first + n) at addr, in this
 * process (found and registered by arm.c at begin, before `go`). It sorts
 * among the region pieces by address like any piece, and the region loses
 * its one-piece fast path.
 */
int usnap_space_add_alias(uffdsnap_snap_t *s, struct usnap_sreg *sr, uintptr_t addr, uint64_t first, uint64_t n)
{
	struct usnap_space *sp = usnap_home(&s->spaces, sr);
	int r = 0;

	pthread_mutex_lock(&s->spaces.lock);
	if (sp->nmaps == sp->cap) {
		size_t cap = sp->cap * 2 + 2;
		struct usnap_map *m = usnap_sys_realloc(sp->maps, cap * sizeof(*m));
		if (m)
			sp->maps = m, sp->cap = cap;
		else
			r = -ENOMEM;
	}
	if (!r) {
		sp->maps[sp->nmaps++] = (struct usnap_map){ .addr = addr, .npages = n, .sr = sr, .first = first,
							    .alias = true };
		qsort(sp->maps, sp->nmaps, sizeof(*sp->maps), cmp_map);
		index_whole(s, sp);
	}
	pthread_mutex_unlock(&s->spaces.lock);
	return r ? usnap_err(r, "tracking another mapping of region '%s'", sr->reg->name) : 0;
}

uintptr_t usnap_space_home_addr(const struct usnap_space *sp, const struct usnap_sreg *sr)
{
	uintptr_t at = 0;
	unsigned n = 0;

	for (size_t i = 0; i < sp->nmaps; i++) {
		const struct usnap_map *m = &sp->maps[i];
		if (m->sr != sr || m->alias)
			continue;
		n++;
		if (m->first == 0 && m->npages == sr->reg->npages)
			at = m->addr;
	}
	return n == 1 ? at : 0;
}

void usnap_spaces_free(uffdsnap_snap_t *s)
{
	for (unsigned i = 0; i < s->spaces.n; i++)
		space_release(&s->spaces.sp[i]);
	s->spaces.n = 0;
	pthread_mutex_destroy(&s->spaces.lock);
}

const struct usnap_map *usnap_space_find(const struct usnap_space *sp, uintptr_t addr, size_t ps)
{
	size_t lo = 0, hi = sp->nmaps;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct usnap_map *m = &sp->maps[mid];
		if (addr < m->addr)
			hi = mid;
		else if (addr >= m->addr + m->npages * ps)
			lo = mid + 1;
		else
			return m;
	}
	return NULL;
}

bool usnap_space_next(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t *lo,
		      uint64_t hi, uintptr_t *addr, uint64_t *n)
{
	const struct usnap_map *best = NULL;

	if (*lo >= hi)
		return false;
	if (sp->whole[sr->id]) {
		*addr = sp->whole[sr->id] + *lo * ps;
		*n = hi - *lo;
		*lo = hi;
		return true;
	}
	/* Moved or cut: the piece holding the lowest page of [*lo, hi). */
	for (size_t i = 0; i < sp->nmaps; i++) {
		const struct usnap_map *m = &sp->maps[i];
		if (m->sr == sr && m->first + m->npages > *lo && m->first < hi && (!best || m->first < best->first))
			best = m;
	}
	if (!best)
		return false;
	uint64_t from = best->first > *lo ? best->first : *lo;
	uint64_t to = best->first + best->npages < hi ? best->first + best->npages : hi;
	*addr = best->addr + (from - best->first) * ps;
	*n = to - from;
	*lo = to;
	return true;
}

bool usnap_space_each(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t lo,
		      uint64_t hi, size_t *cur, uintptr_t *addr, uint64_t *n)
{
	if (lo >= hi)
		return false;
	if (sp->whole[sr->id]) {
		if (*cur)
			return false;
		*cur = 1;
		*addr = sp->whole[sr->id] + lo * ps;
		*n = hi - lo;
		return true;
	}
	for (; *cur < sp->nmaps; ++*cur) {
		const struct usnap_map *m = &sp->maps[*cur];
		uint64_t from = m->first > lo ? m->first : lo;
		uint64_t to = m->first + m->npages < hi ? m->first + m->npages : hi;
		if (m->sr != sr || from >= to)
			continue;
		*addr = m->addr + (from - m->first) * ps;
		*n = to - from;
		++*cur;
		return true;
	}
	return false;
}

/*
 * Apply an event to the pieces of sp over [start, end): moved by `delta`
 * (mremap) or dropped (munmap). A piece straddling an edge is split, so at
 * most two pieces are added.
 */
static int reshape(uffdsnap_snap_t *s, struct usnap_space *sp, uintptr_t start, uintptr_t end, intptr_t delta,
		   bool drop)
{
	size_t ps = s->page_size, n = 0;
	struct usnap_map *out;

	if (sp->nmaps + 2 > sp->cap) {
		size_t cap = sp->cap * 2 + 2;
		struct usnap_map *m = usnap_sys_realloc(sp->maps, cap * sizeof(*m));
		if (!m)
			return -ENOMEM;
		sp->maps = m, sp->cap = cap;
	}
	out = usnap_sys_alloc(sp->cap * sizeof(*out));
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < sp->nmaps; i++) {
		struct usnap_map m = sp->maps[i];
		uintptr_t mend = m.addr + m.npages * ps;
		uintptr_t a = m.addr > start ? m.addr : start, b = mend < end ? mend : end;

		if (a >= b) {
			out[n++] = m;
			continue;
		}
		if (m.addr < a)
			out[n++] = (struct usnap_map){ m.addr, (a - m.addr) / ps, m.sr, m.first, m.alias };
		if (!drop)
			out[n++] = (struct usnap_map){ a + (uintptr_t)delta, (b - a) / ps, m.sr,
						       m.first + (a - m.addr) / ps, m.alias };
		if (b < mend)
			out[n++] = (struct usnap_map){ b, (mend - b) / ps, m.sr, m.first + (b - m.addr) / ps,
						       m.alias };
	}
	usnap_sys_free(sp->maps);
	sp->maps = out;
	sp->nmaps = n;
	qsort(sp->maps, sp->nmaps, sizeof(*sp->maps), cmp_map);
	index_whole(s, sp);
	return 0;
}

/*
 * munmap of our own private memory destroyed pages: if any was not copied
 * yet, the snapshot cannot hold the instant. (DONTNEED and REMOVE, also
 * reported here, zap the same way.) Shared memory keeps its pages in the file.
 */
static void check_discard(uffdsnap_snap_t *s, const struct usnap_space *sp, uintptr_t start, uintptr_t end,
			  const char *how)
{
	size_t ps = s->page_size;

	for (size_t i = 0; i < sp->nmaps && !atomic_load(&s->abort); i++) {
		const struct usnap_map *m = &sp->maps[i];
		uintptr_t a = m->addr > start ? m->addr : start, b = m->addr + m->npages * ps;

		if (b > end)
			b = end;
		if (m->sr->reg->kind != USNAP_PRIVATE || a >= b)
			continue;
		uint64_t p0 = m->first + (a - m->addr) / ps, p1 = m->first + (b - m->addr + ps - 1) / ps;
		uint64_t p = usnap_first_unrecorded(s, m->sr, p0, p1);
		if (p < p1) {
			usnap_fail(s, -ESTALE, "region '%s': %s discarded the page at offset 0x%" PRIx64
				   " of private memory before it was copied", m->sr->reg->name, how, p * ps);
			return;
		}
	}
}

/* A child's userfaultfd: copy the parent space's table, or give the child up. */
static void on_fork(uffdsnap_snap_t *s, const struct usnap_space *parent, int fd)
{
	struct usnap_space *sp;

	if (atomic_load(&s->abort)) {
		close(fd); /* releasing it unregisters the child and wakes it */
		return;
	}
	if (s->spaces.sp[parent->root].children == USNAP_MAX_CHILDREN || s->spaces.n == USNAP_MAX_SPACES) {
		close(fd);
		usnap_fail(s, -EMFILE, "more than %d processes forked during the snapshot: the writes of the "
			   "next one could not be tracked", USNAP_MAX_CHILDREN);
		return;
	}
	sp = &s->spaces.sp[s->spaces.n];
	*sp = (struct usnap_space){ .uffd = fd, .child = true, .foreign = true, .root = parent->root };
	if (space_alloc(s, sp, parent->nmaps)) {
		space_release(sp);
		close(fd);
		usnap_fail(s, -ENOMEM, "tracking a forked child");
		return;
	}
	memcpy(sp->maps, parent->maps, parent->nmaps * sizeof(*sp->maps));
	sp->nmaps = parent->nmaps;
	index_whole(s, sp);
	s->spaces.n++;
	/* A fork is reported once through each of our descriptors that has
	 * something registered: count processes, not descriptors. */
	if (++s->spaces.sp[parent->root].children > atomic_load(&s->stats.forks))
		atomic_store(&s->stats.forks, s->spaces.sp[parent->root].children);
}

/* Events may come while begin still reads the tables (they are applied
 * under spaces.lock); a thread waiting for the lock holds nothing we need. */
static void space_event(uffdsnap_snap_t *s, struct usnap_space *sp, const struct uffd_msg *m);

void usnap_space_event(uffdsnap_snap_t *s, struct usnap_space *sp, const struct uffd_msg *m)
{
	pthread_mutex_lock(&s->spaces.lock);
	space_event(s, sp, m);
	atomic_fetch_add(&s->spaces.events_done, 1);
	pthread_mutex_unlock(&s->spaces.lock);
}

static void space_event(uffdsnap_snap_t *s, struct usnap_space *sp, const struct uffd_msg *m)
{
	uintptr_t start, end;
	int r = 0;

	switch (m->event) {
	case UFFD_EVENT_FORK:
		on_fork(s, sp, (int)m->arg.fork.ufd);
		return;
	case UFFD_EVENT_REMAP:
		start = (uintptr_t)m->arg.remap.from, end = start + (uintptr_t)m->arg.remap.len;
		r = reshape(s, sp, start, end, (intptr_t)(m->arg.remap.to - m->arg.remap.from), false);
		/* A writer that faulted on the old address before the move still
		 * sleeps on it, and resolving by the new address will not wake it. */
		usnap_uffd_wake(sp->uffd, start, end - start);
		atomic_fetch_add(&s->stats.remaps, 1);
		break;
	case UFFD_EVENT_UNMAP:
		start = (uintptr_t)m->arg.remove.start, end = (uintptr_t)m->arg.remove.end;
		if (!sp->child)
			check_discard(s, sp, start, end, "munmap");
		r = reshape(s, sp, start, end, 0, true);
		usnap_uffd_wake(sp->uffd, start, end - start);
		atomic_fetch_add(&s->stats.unmaps, 1);
		break;
	case UFFD_EVENT_REMOVE:
		if (!sp->child)
			check_discard(s, sp, (uintptr_t)m->arg.remove.start, (uintptr_t)m->arg.remove.end,
				      "MADV_DONTNEED, MADV_FREE or MADV_REMOVE");
		return;
	default:
		return;
	}
	if (r)
		usnap_fail(s, r, "following a %s of registered memory: %s",
			   m->event == UFFD_EVENT_REMAP ? "mremap" : "munmap", strerror(-r));
}

/* A message that will not be handled: a FORK one still holds a descriptor. */
void usnap_msg_drop(const struct uffd_msg *m)
{
	if (m->event == UFFD_EVENT_FORK)
		close((int)m->arg.fork.ufd);
}

/*
 * End of tracking in one space. For ours, see usnap_disarm_all (arm.c); a
 * child's or a participant's descriptor is unregistered piece by piece, and a
 * child's closed (its last reference: the kernel wakes whatever still waits).
 * A participant's stays open until its events are drained (fault.c): the
 * listener holds the descriptor too, so an event left unread would keep the
 * participant's thread asleep. A child that has exited has no mm
 * left: the ioctls fail with ESRCH and closing is all there is.
 */
void usnap_space_end(uffdsnap_snap_t *s, struct usnap_space *sp)
{
	size_t ps = s->page_size;

	for (size_t i = 0; sp->foreign && i < sp->nmaps; i++)
		usnap_uffd_unregister(sp->uffd, sp->maps[i].addr, sp->maps[i].npages * ps);
	if (sp->child) {
		close(sp->uffd);
		sp->uffd = -1;
	}
}
