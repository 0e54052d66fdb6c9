/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the migration tests share (t-migrate.c): the program being migrated
 * (a memfd and private memory, a writer thread, the switchover callback that
 * stops it), the checks of the receiver's memory against the sender's at the
 * switchover, frame forging, and two network namespaces joined by a veth
 * pair under tbf. Used by test-migrate.c (pre-copy) and
 * test-migrate-postcopy.c.
 */
#ifndef T_MIGRATE_H
#define T_MIGRATE_H

#include "helpers.h"

extern size_t ps;

struct prog {
	struct t_mem shm, prv;
	uffdsnap_t *ctx;
	struct t_writers w;
	bool writing;
	size_t hot;                   /* the writer stores into the first `hot` bytes of each region (0: all) */
	uint8_t *ref_shm, *ref_prv;   /* the regions at the switchover */
	_Atomic unsigned switchovers;
	int begin_rc, add_rc;         /* what begin and add_region said during the migration */
	unsigned long long progress_at_switch;
	uint64_t callback_ns;         /* time the switchover callback took (part of the downtime) */
	bool check_busy;
	bool fast;                    /* the writer stores without pausing */
	unsigned nwriters;            /* 1, or 2 with writer 1 zapping pages instead of storing */
};

void prog_new(struct prog *p, size_t shlen, size_t prlen);
void prog_free(struct prog *p);
/* Stores a counter into a pseudo-random word of either region (writer 1:
 * fills and zaps pages instead); the thread function for t_writers_start. */
void writer(struct t_writers *w, unsigned idx);
int on_switchover(void *user);
/* The regions now (after the switchover, which stopped every writer). */
void take_reference(struct prog *p);
void assert_unprotected(const struct prog *p);
void assert_received(uffdsnap_incoming_t *in, const struct prog *p);
void print_stats(const char *label, uffdsnap_migrate_t *m);
uffdsnap_migrate_opts_t opts_for(struct prog *p);
/* A frame of `type` with a valid checksum into out; its size. */
size_t frame(uint8_t *out, uint16_t type, const void *payload, uint32_t len);
/* Feed n bytes (a forged sender that then hangs up) to a new receiver and
 * return its verdict: recv's, else incoming_wait's (complete's if
 * `complete`: post-copy's wait returns at the switchover). *keep gets the
 * receiver (freed if keep is NULL). */
int t_mig_feed(const uint8_t *b, size_t n, const char *label, bool complete, uffdsnap_incoming_t **keep);

/* Network namespaces: t_mig_netns_init() (from main) names them after the
 * pid and says whether they can be made (CAP_NET_ADMIN, ip, tc). */
bool t_mig_netns_init(void);
void netns_up(void);
/* Unchecked teardown (in the runner, after the case, pass or fail). */
void netns_down(void);
/* A TCP connection from namespace a (*snd) to namespace b (*rcv). */
void tcp_pair(int *snd, int *rcv);

#endif
