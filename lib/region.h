/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What arming asks of region registration (region.c). */
#ifndef UFFDSNAP_REGION_H
#define UFFDSNAP_REGION_H

#include <stdbool.h>
#include <stdint.h>

#include "maps.h"
#include "uffdsnap-private.h"

/* The UFFDIO_REGISTER mode for memory of this kind: a snapshot's, or
 * add_region's probe's; and the ioctls that registration must offer. */
uint64_t usnap_reg_mode(enum usnap_kind kind, bool probe);
uint64_t usnap_reg_ioctls(enum usnap_kind kind, bool probe);
/* 0 if reg's memory is still what add_region registered, else -errno with
 * the detail; c: our maps, regions checked in address order. */
int usnap_reg_recheck(struct usnap_maps_cursor *c, const struct usnap_reg *reg);
void usnap_reg_release(struct usnap_reg *r);

#endif
