/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Arming a snapshot's regions and disarming them (arm.c). */
#ifndef UFFDSNAP_ARM_H
#define UFFDSNAP_ARM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "uffdsnap-private.h"

/* Addresses [start, end). */
struct usnap_range {
	uintptr_t start, end;
};

/* What arming found at begin, for the checks at the end. */
struct usnap_arm {
	struct usnap_sreg **by_file;  /* shmem regions sorted by (dev, ino): finding a mapping's regions */
	unsigned nby_file;
	struct usnap_range *readonly; /* mappings of region pages that can never write (usnap_arm_aliases) */
	size_t nreadonly;
};

void usnap_arm_destroy(struct usnap_arm *a);

/* At begin, in this order (see snapshot.c): the shmem regions indexed by file,
 * other mappings of their pages registered (ours, then the participants'),
 * every region registered and its populated runs listed, all of it protected. */
int usnap_index_files(uffdsnap_snap_t *s);
int usnap_arm_aliases(uffdsnap_snap_t *s);
int usnap_arm_participants(uffdsnap_snap_t *s);
int usnap_arm_regions(uffdsnap_snap_t *s);
int usnap_protect_all(uffdsnap_snap_t *s);
/* UFFDSNAP_OPT_STRICT: no other process maps a region's file unless it joined. */
int usnap_strict_begin(uffdsnap_snap_t *s);

/* On the handler thread: at the end of the sweep, did a mapping made
 * meanwhile write a region's file; then the end of protection (also at the
 * join of a begin that failed); then, best effort, huge pages mapped whole
 * and shmem pages writable again. */
int usnap_check_mappings(uffdsnap_snap_t *s);
void usnap_disarm_all(uffdsnap_snap_t *s);
void usnap_remap_huge(uffdsnap_snap_t *s);
void usnap_writable_again(uffdsnap_snap_t *s);

/* Was page `page` of sr populated at the instant (listed at begin)? */
bool usnap_in_data(const struct usnap_sreg *sr, uint64_t page);
/* Pages of [off, off + len) of fd in the page cache (or swap), or -errno. */
int usnap_cached(int fd, off_t off, size_t len);

#endif
