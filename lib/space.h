/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Where a snapshot's region pages are mapped, in this process and the others
 * it follows, and the events that move them (space.c). */
#ifndef UFFDSNAP_SPACE_H
#define UFFDSNAP_SPACE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "uffdsnap-private.h"

/*
 * One piece of a region mapped in an address space: pages [first, first +
 * npages) of sr at addr. A region starts as one piece; mremap and munmap
 * during a snapshot move and cut pieces (space.c). An alias is another
 * MAP_SHARED mapping of the region's file pages in this process, found at
 * begin and protected with the region (arm.c usnap_arm_aliases).
 */
struct usnap_map {
	uintptr_t addr;
	uint64_t npages;
	struct usnap_sreg *sr;
	uint64_t first;
	bool alias;
};

/* An address space tracked by a snapshot through one userfaultfd: ours
 * (spaces[USNAP_UFFD_SHARED] and spaces[USNAP_UFFD_PRIVATE]) or a forked child's. */
struct usnap_space {
	int uffd;                  /* ours: the context's; a child's: from its FORK event; a
				    * participant's: a dup of the one it joined with (owned) */
	bool child;
	bool foreign;              /* another process: a child or a participant (ESRCH once it exits) */
	pid_t pid;                 /* a participant's */
	unsigned root;             /* the space of ours or of a participant it descends from */
	unsigned children;         /* a root's: children forked during the snapshot */
	struct usnap_map *maps;    /* sorted by addr */
	size_t nmaps, cap;
	uintptr_t *whole;          /* per region: address of page 0 if mapped whole, in one piece; else 0 */
	uint32_t *pieces;          /* per region: pieces mapped */
};

/* Processes a snapshot follows: this one and up to 63 forked while it runs,
 * each through both descriptors, and participants (participant.c) with
 * children of their own while room is left. */
#define USNAP_MAX_CHILDREN 63
#define USNAP_MAX_SPACES (USNAP_OWN_SPACES * (1 + USNAP_MAX_CHILDREN) + 2 * USNAP_MAX_PARTICIPANTS)

/* A snapshot's spaces: ours (USNAP_UFFD_SHARED, USNAP_UFFD_PRIVATE), then the
 * participants', then children as they fork. */
struct usnap_spaces {
	struct usnap_space sp[USNAP_MAX_SPACES]; /* owned by the handler once `go` */
	unsigned n;
	unsigned nbase;             /* the spaces begin arms: ours and the participants'. Children come
				     * after them, added by the handler even while begin arms, so begin
				     * reads only these (fixed before the handler starts) */
	uint64_t joins;             /* ctx->joins when the participants were copied */
	pthread_mutex_t lock;       /* the piece tables while begin or the sweep thread reads them:
				     * the handler applies events (mremap, munmap, fork) meanwhile */
	_Atomic uint64_t events_read; /* events the handler has read (the kernel moved the pages) */
	_Atomic uint64_t events_done; /* ... and applied to the tables: while they differ, a read
				       * through the tables may look at the old place */
};

void usnap_spaces_init(struct usnap_spaces *ss);
/* Our two spaces, with every region where it was added (at begin). */
int usnap_spaces_ours(uffdsnap_snap_t *s);
/* Spaces for the context's participants (under ctx->lock, at begin, after
 * ours): from here on ss->nbase and ss->joins are fixed. */
int usnap_space_participants(uffdsnap_snap_t *s);
/* Our space that tracks region sr (by its kind). */
static inline struct usnap_space *usnap_home(struct usnap_spaces *ss, const struct usnap_sreg *sr)
{
	return &ss->sp[usnap_kind_uffd(sr->reg->kind)];
}
int usnap_space_add_alias(uffdsnap_snap_t *s, struct usnap_sreg *sr, uintptr_t addr, uint64_t first, uint64_t n);
/* Where region sr is mapped whole, in one piece of its own (aliases aside), or 0. */
uintptr_t usnap_space_home_addr(const struct usnap_space *sp, const struct usnap_sreg *sr);
void usnap_spaces_free(uffdsnap_snap_t *s);
const struct usnap_map *usnap_space_find(const struct usnap_space *sp, uintptr_t addr, size_t ps);
/* The next run of pages [*lo, hi) of sr mapped in sp, from the lowest page:
 * its address and length; advances *lo past it. False when none is left. */
bool usnap_space_next(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t *lo,
		      uint64_t hi, uintptr_t *addr, uint64_t *n);
/* Every mapping of pages [lo, hi) of sr in sp, aliases included: call with
 * *cur = 0, then again while it returns true (*addr, *n: one part). */
bool usnap_space_each(const struct usnap_space *sp, const struct usnap_sreg *sr, size_t ps, uint64_t lo,
		      uint64_t hi, size_t *cur, uintptr_t *addr, uint64_t *n);
struct uffd_msg;
void usnap_space_event(uffdsnap_snap_t *s, struct usnap_space *sp, const struct uffd_msg *m);
void usnap_msg_drop(const struct uffd_msg *m);
void usnap_space_end(uffdsnap_snap_t *s, struct usnap_space *sp);

/*
 * Memory for the handler thread's own tables. Not malloc(): a thread
 * inside fork() holds glibc's malloc (and stdio) locks while the kernel waits
 * for the handler to read its FORK event, so the handler must never wait for
 * those locks. Zeroed; mmap-backed.
 */
void *usnap_sys_alloc(size_t n);
void *usnap_sys_realloc(void *p, size_t n);
void usnap_sys_free(void *p);

#endif
