/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The kinds x disturbances matrix (test-matrix.c says what it checks): what
 * its files share. matrix-system.c: /proc and /sys helpers and the zram swap
 * device; matrix-region.c: the region of each kind, its copy at the instant
 * and what the kernel shows about it; matrix-disturb.c: the writer and the
 * disturbances; test-matrix.c: the cases, one run, main().
 */
#ifndef USNAP_TEST_MATRIX_H
#define USNAP_TEST_MATRIX_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/uio.h>
#include <unistd.h>

#include "helpers.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define HUGE (2 * MiB)
#define REGION (16 * MiB)
#define PM_SWAP (1ull << 62)
#define PM_PFN ((1ull << 55) - 1)
#define PM_SWAP_TYPE(e) ((e) & 31)
#define KPF_THP (1ull << 22)

enum kind { K_MEMFD, K_ANONSH, K_PRIVFD, K_ANON, K_THP, K_ANONTHP, NKINDS };
enum col { C_ZAP, C_PAGEOUT, C_MIGRATE, C_THP, C_MPROTECT, C_READERS, C_POPULATE, C_PUNCH, C_FREE, C_PINPUNCH,
	   NCOLS };

extern const char *const kname[NKINDS];
extern const char *const kdesc[NKINDS];
extern const char *const cname[NCOLS];
extern char case_name[64];      /* the running case, for messages */

static inline bool is_anon(enum kind k)
{
	return k == K_ANON || k == K_ANONTHP;
}

static inline bool is_private(enum kind k)
{
	return k == K_PRIVFD || is_anon(k);
}

/* ---- matrix-system.c ---- */
long vmstat(const char *key);
int write_str_bounded(const char *path, const char *s, unsigned secs);
void pagemap_read(const void *addr, size_t n, uint64_t *out);
/* the zram swap device (t_swap): a Check unchecked fixture of the pageout cases */
void swap_up(void);
void swap_down(void);

/* ---- matrix-region.c ---- */
struct region {
	enum kind kind;
	uint8_t *addr, *resv;
	size_t len, np, resv_len;
	int fd;                  /* the shmem file (memfd, tmpfs file, map_files of anon shared), or -1 */
	char mnt[PATH_MAX], path[PATH_MAX + 32]; /* only while thp_mount runs */
	uint8_t *hole;           /* page was a hole / never touched at the instant */
	uint8_t *mapped;         /* privmemfd: page mapped (copied-on-write or read) before the instant */
	uint8_t *file;           /* privmemfd: the file's contents */
	uint8_t *ref;            /* the region at the instant */
	uint8_t *now;            /* what the region must hold after the test's writes */
};

void region_new(struct region *r, enum kind k, bool small_tail, bool dense_tail);
uint8_t *region_copy(const struct region *r);
void region_free(struct region *r);

struct thp_info {
	long pmd_kb;     /* ShmemPmdMapped + FilePmdMapped of the region's VMAs */
	long anon_kb;    /* AnonHugePages */
	long thp_pages;  /* pages of the region (mapped) that belong to a huge folio (kpageflags) */
	int vmas;
};

long thp_pages(const struct region *r, size_t first, size_t n);
void thp_info(const struct region *r, struct thp_info *o);
long count_protected(const struct region *r, size_t first, size_t n);

/* ---- matrix-disturb.c ---- */
struct run {
	struct region *r;
	enum col col;
	uffdsnap_snap_t *s;
	size_t first, n;        /* the target pages [first, first + n) */
	size_t skip;            /* a target page the writer leaves alone, or SIZE_MAX */
	bool expect_fail;       /* the disturbance must fail the snapshot (-ESTALE) */
	bool may_fail;          /* exact or -ESTALE, never a complete snapshot that is wrong */
	bool no_fault;          /* the first write need not fault (its page may be gone) */
	uint64_t fail_off;      /* at this offset (UINT64_MAX: any) */
	int pin[2];             /* pinpunch: the pipe holding the pinned page */
	char what[1024];        /* what the disturbance did and what the kernel showed */
	char before[256];       /* what was done before begin (thp: a collapse) */
	bool collapse_skip;     /* thp: no huge page to be had, the collapses prove nothing */
	/* populate */
	int pop_rc[3], pop_errno[3];
	uint64_t pop_faults;
	/* readers */
	_Atomic bool rstop;
	_Atomic unsigned long passes[2]; /* pages read */
	long minflt[2];
};

struct reader_arg {
	struct run *t;
	unsigned i;
};

void writer_fn(struct t_writers *w, unsigned idx);
void *reader_main(void *arg);
size_t touch_pages(struct run *t, size_t first, size_t n);
void disturb_zap(struct run *t);
void disturb_pageout(struct run *t);
void compact(void);
void disturb_migrate(struct run *t);
void collapse_before(struct run *t, char *desc, size_t desclen);
void disturb_thp(struct run *t);
void collapse_after(struct run *t);
void disturb_mprotect(struct run *t);
void disturb_readers_prep(struct run *t);
void disturb_punch(struct run *t);
void disturb_free(struct run *t);
void disturb_pinpunch(struct run *t);

#endif
