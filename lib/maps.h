/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Reading /proc/self/maps without stdio or malloc (maps.c). */
#ifndef UFFDSNAP_MAPS_H
#define UFFDSNAP_MAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct usnap_vma {
	uintptr_t start, end;
	char perms[8];           /* "rw-s": [3] is 's' for MAP_SHARED */
	uint64_t off;            /* file offset of start */
	dev_t dev;
	uint64_t ino;            /* 0: no file */
	char path[256];          /* cut if longer */
};

struct usnap_maps {
	int fd;
	bool skip;               /* in the rest of a line longer than buf */
	size_t len, pos;
	char buf[4096];
};

/* Process pid's maps (0: ours); 0, or -1 with errno set. */
int usnap_maps_open(struct usnap_maps *m, pid_t pid);
/* The next mapping, in address order; false at the end. */
bool usnap_maps_next(struct usnap_maps *m, struct usnap_vma *v);
void usnap_maps_close(struct usnap_maps *m);
/*
 * /proc/self/maps read once for ranges looked up in address order: begin
 * checks every region, and reading the whole file for each made begin
 * quadratic in the number of regions (1,000 regions: 200 ms of 270). The
 * last mapping returned is kept: the next range may start in it.
 */
struct usnap_maps_cursor {
	struct usnap_maps mr;
	struct usnap_vma last;
	bool have_last;
};

/* Our maps; 0, or -1 with errno set. */
int usnap_cursor_open(struct usnap_maps_cursor *c);
/* The next mapping that ends above addr: the kept one, or one read now. */
bool usnap_cursor_next(struct usnap_maps_cursor *c, uintptr_t addr, struct usnap_vma *v);
void usnap_cursor_close(struct usnap_maps_cursor *c);
/* "start-end" at the head of a maps or smaps line; false for any other line. */
bool usnap_parse_range(const char *line, uintptr_t *start, uintptr_t *end);

#endif
