/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration (pre-copy, docs/migration.md) over real sockets with the real
 * kernel's asynchronous write tracking (UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN):
 *  - idle: a memfd (holes, zero pages, data) and private memory arrive byte
 *    for byte; the sender's memory is unchanged and unprotected afterwards;
 *    a snapshot and add_region are refused while the migration runs and a
 *    snapshot works after it.
 *  - writer: a thread stores into both regions while the rounds run; the
 *    switchover callback stops it and copies the regions: the receiver's
 *    memory equals that copy byte for byte, and round 2 sent pages (the
 *    writes of round 1 were found by the scan).
 *  - cut: the peer hangs up in round 1: the sender's wait fails, no page
 *    stays protected (pagemap bit 57), the writer kept writing throughout.
 *  - hostile sender: garbage, a huge length, a huge region count, another
 *    version, a truncated frame, a bad checksum, pages out of bounds: the
 *    receiver fails with the documented errno; a forged valid stream is
 *    accepted (the forger is right, so the refusals are the checks').
 *  - tcp: two network namespaces joined by a veth pair with a tbf qdisc
 *    (1 Gbit/s), real TCP between them, a writer running: exact at the
 *    switchover; prints pre-copy against stop-and-copy of the same memory
 *    over the same link. Skips (77 for the case) without CAP_NET_ADMIN.
 * Every blocking step runs under Check's timeout and a watchdog.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zstd.h>

#include "helpers.h"
#include "migrate.h"
#ifdef USNAP_TEST_INJECT
#include "compat.h" /* UFFD_FEATURE_WP_ASYNC, newer than the system's headers */
#include "inject.h"
#endif

#define SHLEN (4 * MiB)
#define PRLEN (1 * MiB)

static size_t ps;

/* ---- the program being migrated ------------------------------------------------ */

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
	unsigned nwriters;            /* 1, or 2 with writer 1 zapping pages instead of storing */              /* the callback tries begin and add_region (begin_rc, add_rc) */
};

static void prog_new(struct prog *p, size_t shlen, size_t prlen)
{
	memset(p, 0, sizeof(*p));
	t_mem_new(&p->shm, T_MEM_MEMFD, shlen);
	t_mem_new(&p->prv, T_MEM_ANON_PRIVATE, prlen);
	t_fill_mixed(p->shm.addr, shlen, 7, 5, 7);
	t_fill_random(p->prv.addr, prlen, 8);
	p->ref_shm = t_buf_alloc(shlen);
	p->ref_prv = t_buf_alloc(prlen);
	p->ctx = t_ctx_new(NULL);
	t_add(p->ctx, "guest-ram", p->shm.addr, shlen);
	t_add(p->ctx, "heap", p->prv.addr, prlen);
}

static void prog_free(struct prog *p)
{
	if (p->writing)
		t_writers_stop(&p->w, 10);
	uffdsnap_free(p->ctx);
	t_buf_free(p->ref_shm, p->shm.len);
	t_buf_free(p->ref_prv, p->prv.len);
	t_mem_free(&p->shm);
	t_mem_free(&p->prv);
}

/* Stores a counter into a pseudo-random word of either region, a few per ms. */
static void writer(struct t_writers *w, unsigned idx)
{
	struct prog *p = w->arg;
	uint64_t st = 99 + idx, n = 0;

	while (!w->stop && idx == 1) {
		/* pages of the cold halves filled (a round sends them), then made
		 * zero behind the write tracking's back: zapped private memory
		 * and punched shmem keep no uffd-wp bit for a scan to see */
		size_t cold_prv = p->prv.len / 2 / ps, cold_shm = p->shm.len / 2 / ps, pg[2][16];
		for (unsigned i = 0; i < 16; i++) {
			uint64_t x = t_splitmix64(&st);
			pg[0][i] = cold_prv + x % cold_prv, pg[1][i] = cold_shm + (x >> 20) % cold_shm;
			((volatile uint64_t *)(p->prv.addr + pg[0][i] * ps))[i] = x | 1;
			((volatile uint64_t *)(p->shm.addr + pg[1][i] * ps))[i] = x | 1;
		}
		for (unsigned t = 0; t < 20 && !w->stop; t++)
			usleep(5000);
		for (unsigned i = 0; i < 16; i++) {
			ck_assert_int_eq(madvise(p->prv.addr + pg[0][i] * ps, ps, MADV_DONTNEED), 0);
			ck_assert_int_eq(fallocate(p->shm.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						   (off_t)(pg[1][i] * ps), (off_t)ps), 0);
		}
		w->progress[idx] = n += 16;
		for (unsigned t = 0; t < 20 && !w->stop; t++)
			usleep(5000);
	}
	while (!w->stop) {
		uint64_t x = t_splitmix64(&st);
		struct t_mem *m = x & 1 ? &p->shm : &p->prv;
		size_t span = p->hot && p->hot < m->len ? p->hot : m->len;
		((volatile uint64_t *)m->addr)[(x >> 1) % (span / 8)] = ++n;
		w->progress[idx] = n;
		if (!(n & 7) && !p->fast)
			usleep(50);
	}
}

/*
 * The switchover: the program stops writing (the writer is its only
 * writer, so the regions keep their contents at this instant from here on:
 * take_reference() copies them after the migration, outside the downtime).
 * The idle case also checks that the context refuses a snapshot meanwhile.
 */
static int on_switchover(void *user)
{
	struct prog *p = user;
	uint64_t t0 = t_now_ns();

	p->switchovers++;
	if (p->writing) {
		t_writers_stop(&p->w, 10);
		p->writing = false;
		p->progress_at_switch = p->w.progress[0];
	}
	if (p->check_busy) {
		char path[] = "/tmp/usnap-mig-XXXXXX";
		uffdsnap_snap_t *s = NULL;
		int fd = mkstemp(path);
		/* the regions belong to the migration's userfaultfd until it ends */
		p->begin_rc = uffdsnap_begin_file(p->ctx, path, &s);
		if (s)
			uffdsnap_snap_free(s);
		p->add_rc = uffdsnap_add_region(p->ctx, "more", p->prv.addr, ps);
		close(fd);
		unlink(path);
	}
	p->callback_ns = t_now_ns() - t0;
	return 0;
}

static void take_reference(struct prog *p)
{
	ck_assert_int_eq(pread(p->shm.fd, p->ref_shm, p->shm.len, 0), (ssize_t)p->shm.len);
	memcpy(p->ref_prv, p->prv.addr, p->prv.len);
}

static void assert_unprotected(const struct prog *p)
{
	ck_assert_int_eq(t_pagemap_protected(p->shm.addr, p->shm.len), 0);
	ck_assert_int_eq(t_pagemap_protected(p->prv.addr, p->prv.len), 0);
}

/* The receiver holds the two regions, equal to the references. */
static void assert_received(uffdsnap_incoming_t *in, const struct prog *p)
{
	uffdsnap_incoming_region_t r = { .size = sizeof(r) };

	ck_assert_int_eq(uffdsnap_incoming_count(in), 2);
	ck_assert_int_eq(uffdsnap_incoming_region(in, 0, &r), 0);
	ck_assert_str_eq(r.name, "guest-ram");
	ck_assert_uint_eq(r.len, p->shm.len);
	t_assert_msg(!memcmp(r.addr, p->ref_shm, r.len), "guest-ram differs from the sender's at the switchover");
	ck_assert_int_eq(uffdsnap_incoming_region(in, 1, &r), 0);
	ck_assert_str_eq(r.name, "heap");
	ck_assert_uint_eq(r.len, p->prv.len);
	t_assert_msg(!memcmp(r.addr, p->ref_prv, r.len), "heap differs from the sender's at the switchover");
	ck_assert_int_eq(uffdsnap_incoming_region(in, 2, &r), -ENOENT);
}

static void print_stats(const char *label, uffdsnap_migrate_t *m)
{
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };

	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	printf("%s: rounds=%u bytes_wire=%llu pages_sent=%llu zero=%llu downtime=%.2f ms total=%.1f ms rounds(KiB):",
	       label, st.rounds, (unsigned long long)st.bytes_wire, (unsigned long long)st.pages_sent,
	       (unsigned long long)st.pages_zero, st.downtime_ns / 1e6, st.total_ns / 1e6);
	for (unsigned i = 0; i < st.rounds && i < UFFDSNAP_MIGRATE_MAX_ROUNDS; i++)
		printf(" %llu", (unsigned long long)(st.round_bytes[i] >> 10));
	printf("\n");
}

static uffdsnap_migrate_opts_t opts_for(struct prog *p)
{
	uffdsnap_migrate_opts_t o;

	uffdsnap_migrate_opts_init(&o);
	o.switchover = on_switchover;
	o.user = p;
	return o;
}

START_TEST(idle)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	uint8_t *before_shm, *before_prv;
	long holes;
	int sv[2];

	t_watchdog(60, "idle migration");
	prog_new(&p, SHLEN, PRLEN);
	p.check_busy = true;
	holes = t_mem_holes(&p.shm);
	before_shm = t_mem_copy(&p.shm);
	before_prv = t_copy(p.prv.addr, p.prv.len);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_migrate_send(p.ctx, sv[0], &o, &(uffdsnap_migrate_t *){ NULL }), -EBUSY);
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_incoming_complete(in), 0);
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(p.switchovers, 1);
	ck_assert_int_eq(p.begin_rc, -EBUSY);
	ck_assert_int_eq(p.add_rc, -EBUSY);
	take_reference(&p);
	assert_received(in, &p);
	/* never changed, nothing left protected, holes left holes */
	t_assert_msg(!memcmp(before_shm, p.ref_shm, p.shm.len), "the sender's memfd changed");
	t_assert_msg(!memcmp(before_prv, p.ref_prv, p.prv.len), "the sender's private memory changed");
	assert_unprotected(&p);
	ck_assert_int_eq(t_mem_holes(&p.shm), holes);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	ck_assert_int_eq(st.state, UFFDSNAP_MIGRATE_DONE);
	ck_assert_uint_eq(st.rounds, 2); /* everything, then nothing dirty: switch over */
	ck_assert_uint_eq(st.round_bytes[1], 0);
	print_stats("idle", m);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	/* the regions are the context's again */
	char dir[PATH_MAX], path[PATH_MAX + 8];
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/s", dir);
	t_snap_file(p.ctx, path, NULL);
	t_rmdir(dir);
	close(sv[0]), close(sv[1]);
	t_buf_free(before_shm, p.shm.len);
	t_buf_free(before_prv, p.prv.len);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

static void migrate_writers(unsigned nwriters)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int sv[2];

	prog_new(&p, SHLEN, PRLEN);
	if (nwriters == 2)
		p.hot = PRLEN / 2; /* zaps land where no store rewrites them: only their removal tells */
	t_writers_start(&p.w, nwriters, writer, &p);
	p.writing = true;
	ck_assert(t_writers_wait_progress(&p.w, 16, 10));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	o.max_bandwidth = 32 * MiB; /* round 1 takes ~150 ms: the writer dirties pages meanwhile */
	o.max_downtime_us = 5000;
	o.max_rounds = 6;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	unsigned long long at_start = p.w.progress[0];
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(p.switchovers, 1);
	take_reference(&p);
	assert_received(in, &p);
	assert_unprotected(&p);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	print_stats("writer", m);
	printf("writer: %llu stores during the migration\n", p.progress_at_switch - at_start);
	ck_assert_uint_ge(st.rounds, 2);
	ck_assert_msg(st.round_bytes[1] > 0, "round 2 sent nothing: the writes of round 1 were not found");
	ck_assert_uint_gt(p.progress_at_switch - at_start, 100);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
}

START_TEST(writer_exact)
{
	t_watchdog(90, "migration with a writer");
	migrate_writers(1);
	t_watchdog(0, NULL);
}
END_TEST

/* Pages zapped (MADV_DONTNEED) and punched out while the rounds run. */
START_TEST(zapper_exact)
{
	t_watchdog(90, "migration with a zapper");
	migrate_writers(2);
	t_watchdog(0, NULL);
}
END_TEST

/* UFFDSNAP_MIGRATE_COMPRESS on memory that compresses (records of text),
 * with a writer: exact, and fewer bytes on the wire than pages sent. */
START_TEST(compressed)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int sv[2];

	t_watchdog(90, "compressed migration");
	prog_new(&p, SHLEN, PRLEN);
	for (size_t off = 0; off < SHLEN; off += 64)
		snprintf((char *)p.shm.addr + off, 64, "record %zu: the quick brown fox, page %zu", off / 64, off / ps);
	t_writers_start(&p.w, 1, writer, &p);
	p.writing = true;
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	o.flags = UFFDSNAP_MIGRATE_COMPRESS;
	o.max_rounds = 4;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	take_reference(&p);
	assert_received(in, &p);
	assert_unprotected(&p);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	print_stats("compressed", m);
	/* the 4 MiB of records compress; the 1 MiB of random heap does not */
	ck_assert_uint_lt(st.bytes_wire, st.pages_sent * ps / 2);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

/* ---- forging frames ----------------------------------------------------------------- */

static size_t frame(uint8_t *out, uint16_t type, const void *payload, uint32_t len)
{
	struct usnap_mig_hdr h = { .magic = USNAP_MIG_MAGIC, .type = type, .len = len };

	h.crc = usnap_mig_crc(&h, payload, len);
	memcpy(out, &h, sizeof(h));
	memcpy(out + sizeof(h), payload, len);
	return sizeof(h) + len;
}

/* A region table of one region "r" of `pages` pages, protocol `version`. */
static size_t hello(uint8_t *out, uint32_t version, uint32_t nregions, uint64_t pages)
{
	uint8_t p[64];
	struct usnap_mig_hello h = { version, (uint32_t)ps, nregions, 0 };
	uint64_t len = pages * ps;
	uint32_t nl = 1;

	memcpy(p, &h, sizeof(h));
	memcpy(p + 16, &len, 8), memcpy(p + 24, &nl, 4), p[28] = 'r';
	return frame(out, USNAP_MIG_HELLO, p, 29);
}

static size_t pages_frame(uint8_t *out, uint32_t region, uint64_t first, uint8_t fill)
{
	uint8_t *p = malloc(16 + ps);
	struct usnap_mig_pages h = { region, 1, first };
	size_t n;

	memcpy(p, &h, 16);
	memset(p + 16, fill, ps);
	n = frame(out, USNAP_MIG_PAGES, p, (uint32_t)(16 + ps));
	free(p);
	return n;
}

/* A PAGES_Z frame announcing `npages` pages from `first`, holding `have`
 * pages of `fill` compressed. */
static size_t pages_z_frame(uint8_t *out, uint64_t first, uint32_t npages, uint32_t have, uint8_t fill)
{
	size_t raw_len = have * ps, cap = ZSTD_compressBound(raw_len), n, z;
	uint8_t *raw = malloc(raw_len), *p = malloc(16 + cap);
	struct usnap_mig_pages h = { 0, npages, first };

	memset(raw, fill, raw_len);
	memcpy(p, &h, 16);
	z = ZSTD_compress(p + 16, cap, raw, raw_len, 1);
	ck_assert(!ZSTD_isError(z));
	n = frame(out, USNAP_MIG_PAGES_Z, p, (uint32_t)(16 + z));
	free(raw);
	free(p);
	return n;
}

static size_t round_end(uint8_t *out, uint32_t round, uint32_t final, uint64_t pages)
{
	struct usnap_mig_round r = { round, final, pages };

	return frame(out, USNAP_MIG_ROUND_END, &r, sizeof(r));
}

enum hostile { H_GARBAGE, H_HUGE_LEN, H_HUGE_COUNT, H_VERSION, H_TRUNCATED, H_BAD_CRC, H_OUT_OF_BOUNDS, H_BAD_ZSTD,
	       H_ZSTD_LONG, H_ZSTD_SHORT, H_VALID };

/* Feed the bytes of case `c` to a receiver and return what it said: from
 * recv, or (if recv accepted the region table) from incoming_wait. */
static int feed(enum hostile c, uffdsnap_incoming_t **keep)
{
	uint8_t *buf = calloc(1, 64 * KiB);
	size_t n = 0;
	int sv[2], r;
	uffdsnap_incoming_t *in = NULL;

	switch (c) {
	case H_GARBAGE:
		for (n = 0; n < 4096; n++)
			buf[n] = (uint8_t)(n * 131 + 7);
		break;
	case H_HUGE_LEN: {
		struct usnap_mig_hdr h = { .magic = USNAP_MIG_MAGIC, .type = USNAP_MIG_HELLO, .len = 0xfffffff0u };
		memcpy(buf, &h, sizeof(h));
		n = sizeof(h);
		break;
	}
	case H_HUGE_COUNT:
		n = hello(buf, USNAP_MIG_VERSION, 1000000, 16);
		break;
	case H_VERSION:
		n = hello(buf, 99, 1, 16);
		break;
	case H_TRUNCATED:
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_frame(buf + n, 0, 3, 0x5a) - ps; /* the frame cut after its first bytes */
		break;
	case H_BAD_CRC:
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_frame(buf + n, 0, 3, 0x5a);
		buf[n - 100] ^= 1;
		break;
	case H_OUT_OF_BOUNDS:
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_frame(buf + n, 0, 16, 0x5a);
		break;
	case H_BAD_ZSTD: {
		/* a valid checksum over bytes that are not zstd */
		uint8_t p[16 + 64] = { 0 };
		struct usnap_mig_pages h = { 0, 1, 3 };
		memcpy(p, &h, 16);
		memset(p + 16, 0x77, 64);
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += frame(buf + n, USNAP_MIG_PAGES_Z, p, sizeof(p));
		break;
	}
	case H_ZSTD_LONG: /* decompresses to more than it announces */
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_z_frame(buf + n, 3, 1, 2, 0x5a);
		break;
	case H_ZSTD_SHORT: /* to less */
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_z_frame(buf + n, 3, 2, 1, 0x5a);
		break;
	case H_VALID:
		n = hello(buf, USNAP_MIG_VERSION, 1, 16);
		n += pages_frame(buf + n, 0, 3, 0x5a);
		n += pages_z_frame(buf + n, 5, 2, 2, 0xa5);
		n += round_end(buf + n, 1, 1, 3);
		break;
	}
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[0], buf, n), (ssize_t)n);
	shutdown(sv[0], SHUT_WR); /* a sender that sent this and hung up */
	r = uffdsnap_migrate_recv(sv[1], NULL, &in);
	printf("hostile case %d: recv %d (%s)", c, r, uffdsnap_last_error());
	if (!r) {
		r = uffdsnap_incoming_wait(in);
		printf(", wait %d (%s)", r, uffdsnap_last_error());
	}
	printf("\n");
	if (keep)
		*keep = in;
	else
		uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	free(buf);
	return r;
}

START_TEST(hostile_sender)
{
	uffdsnap_incoming_t *in;
	uffdsnap_incoming_region_t reg = { .size = sizeof(reg) };

	t_watchdog(60, "hostile sender");
	ck_assert_int_eq(feed(H_GARBAGE, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_HUGE_LEN, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_HUGE_COUNT, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_VERSION, NULL), -EPROTONOSUPPORT);
	ck_assert_int_eq(feed(H_TRUNCATED, NULL), -EPIPE);
	ck_assert_int_eq(feed(H_BAD_CRC, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_OUT_OF_BOUNDS, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_BAD_ZSTD, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_ZSTD_LONG, NULL), -EBADMSG);
	ck_assert_int_eq(feed(H_ZSTD_SHORT, NULL), -EBADMSG);
	/* the forger makes valid frames: the same stream, intact, is accepted */
	ck_assert_int_eq(feed(H_VALID, &in), 0);
	ck_assert_int_eq(uffdsnap_incoming_region(in, 0, &reg), 0);
	ck_assert_uint_eq(reg.len, 16 * ps);
	for (size_t i = 0; i < reg.len; i++)
		t_assert_msg(((uint8_t *)reg.addr)[i] == (i / ps == 3 ? 0x5a : i / ps == 5 || i / ps == 6 ? 0xa5 : 0),
				 "byte %zu", i);
	uffdsnap_incoming_free(in);
	t_watchdog(0, NULL);
}
END_TEST

/* ---- a peer that hangs up mid-round -------------------------------------------------- */

START_TEST(cut_mid_round)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	struct usnap_mig_status ok = { USNAP_MIG_VERSION, 0 };
	uint8_t *buf = malloc(256 * KiB), fr[64];
	size_t got = 0;
	int sv[2], r;

	t_watchdog(60, "connection cut");
	prog_new(&p, SHLEN, PRLEN);
	t_writers_start(&p.w, 1, writer, &p);
	p.writing = true;
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	o.max_bandwidth = 16 * MiB;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	/* a receiver that accepts the region table, reads 1 MiB of round 1 and hangs up */
	ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_HELLO_OK, &ok, sizeof(ok))),
			 (ssize_t)(sizeof(struct usnap_mig_hdr) + sizeof(ok)));
	while (got < 1 * MiB) {
		ssize_t k = read(sv[1], buf, 256 * KiB);
		ck_assert_int_gt(k, 0);
		got += (size_t)k;
	}
	unsigned long long before = p.w.progress[0];
	ck_assert(t_writers_wait_progress(&p.w, before + 100, 10)); /* writes go on during the round */
	close(sv[1]);
	r = uffdsnap_migrate_wait(m);
	printf("cut: wait %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_msg(r == -EPIPE || r == -ECONNRESET, "wait returned %d", r);
	ck_assert_int_eq(p.switchovers, 0);
	assert_unprotected(&p);
	before = p.w.progress[0];
	ck_assert(t_writers_wait_progress(&p.w, before + 100, 10)); /* and after it */
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	ck_assert_int_eq(st.state, UFFDSNAP_MIGRATE_FAILED);
	ck_assert_int_eq(st.error, r);
	uffdsnap_migrate_free(m);
	close(sv[0]);
	free(buf);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

/* A receiver that answers the region table with garbage, or accepts it and
 * then reads nothing while the migration, or its context, is freed: the
 * sender fails (-EBADMSG, -ECANCELED), nothing stays protected. */
START_TEST(hostile_receiver)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	struct usnap_mig_status ok = { USNAP_MIG_VERSION, 0 };
	uint8_t junk[64], fr[64];
	int sv[2], r;

	t_watchdog(60, "hostile receiver");
	prog_new(&p, SHLEN, PRLEN);
	for (unsigned i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 37 + 1);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	ck_assert_int_eq(write(sv[1], junk, sizeof(junk)), (ssize_t)sizeof(junk));
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	r = uffdsnap_migrate_wait(m);
	printf("hostile receiver: wait %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EBADMSG);
	assert_unprotected(&p);
	uffdsnap_migrate_free(m);
	close(sv[0]), close(sv[1]);

	/* accepted, then silence: free cancels the sender blocked on a full socket */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_HELLO_OK, &ok, sizeof(ok))),
			 (ssize_t)(sizeof(struct usnap_mig_hdr) + sizeof(ok)));
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	usleep(100000);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	ck_assert_int_eq(st.state, UFFDSNAP_MIGRATE_RUNNING);
	ck_assert_int_gt(t_pagemap_protected(p.shm.addr, p.shm.len), 0); /* round 1 is tracking */
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	uint64_t t0 = t_now_ns();
	uffdsnap_migrate_free(m);
	printf("hostile receiver: free of a blocked sender took %.2f ms\n", t_ms_since(t0));
	assert_unprotected(&p);
	ck_assert_int_eq(p.switchovers, 0);
	close(sv[0]), close(sv[1]);

	/* the same, and the context freed under the migration: it is cancelled */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_HELLO_OK, &ok, sizeof(ok))),
			 (ssize_t)(sizeof(struct usnap_mig_hdr) + sizeof(ok)));
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	usleep(50000);
	uffdsnap_free(p.ctx);
	p.ctx = NULL;
	ck_assert_int_eq(uffdsnap_migrate_wait(m), -ECANCELED);
	assert_unprotected(&p);
	uffdsnap_migrate_free(m);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

#ifdef USNAP_TEST_INJECT
/*
 * Built again against the fault-injection library (test-migrate-inject):
 * a kernel without WP_ASYNC (UFFDIO_API hides it, as Linux < 6.7 answers)
 * is refused with -EOPNOTSUPP and its reason, the context left usable; a
 * write-protect that fails in round 1, after the first region was
 * protected, fails the migration and leaves nothing protected.
 */
START_TEST(old_kernel)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_t *m = NULL;
	char dir[PATH_MAX], path[PATH_MAX + 8];
	int sv[2];

	t_watchdog(60, "old kernel");
	usnap_inject_hide_features(UFFD_FEATURE_WP_ASYNC);
	prog_new(&p, SHLEN, PRLEN);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	ck_assert_int_eq(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m), -EOPNOTSUPP);
	printf("old kernel: %s\n", uffdsnap_last_error());
	ck_assert_ptr_null(m);
	ck_assert_ptr_nonnull(strstr(uffdsnap_last_error(), "Linux 6.7"));
	assert_unprotected(&p);
	t_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/s", dir);
	t_snap_file(p.ctx, path, NULL); /* the context is not left claimed */
	t_rmdir(dir);
	usnap_inject_hide_features(0);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

START_TEST(protect_fails)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int sv[2], r;

	t_watchdog(60, "protect fails");
	prog_new(&p, SHLEN, PRLEN);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	/* ioctls counted: UFFDIO_API, REGISTER x 2, WRITEPROTECT of region 0, of region 1 */
	usnap_inject_arm(USNAP_INJ_IOCTL, 5, ENOMEM, USNAP_INJ_FAIL);
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	r = uffdsnap_migrate_wait(m);
	printf("protect fails: wait %d (%s)\n", r, uffdsnap_last_error());
	usnap_inject_disarm();
	ck_assert_int_eq(usnap_inject_fired(), 1);
	ck_assert_int_eq(r, -ENOMEM);
	ck_assert_ptr_nonnull(strstr(uffdsnap_last_error(), "'heap': write-protecting"));
	assert_unprotected(&p);
	close(sv[0]); /* the receiver hears the sender go */
	ck_assert_int_eq(uffdsnap_incoming_wait(in), -EPIPE);
	uffdsnap_incoming_free(in);
	uffdsnap_migrate_free(m);
	close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST
#endif

/* ---- two hosts: network namespaces, veth, tbf, TCP ------------------------------------ */

static char ns_a[64], ns_b[64], veth_a[16], veth_b[16]; /* named after our pid: runs of several builds at once do not collide */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd);
}

/* Unchecked teardown (in the runner, after the case, pass or fail). */
static void netns_down(void)
{
	sh("ip netns del %s 2>/dev/null", ns_a);
	sh("ip netns del %s 2>/dev/null", ns_b);
	sh("ip link del %s 2>/dev/null", veth_a); /* if it never reached a namespace */
}

/* Two namespaces, a veth pair 10.213.77.1 (a) - 10.213.77.2 (b), 1 Gbit/s
 * token buckets on both ends. */
static void netns_up(void)
{
	ck_assert_int_eq(sh("ip netns add %s && ip netns add %s", ns_a, ns_b), 0);
	ck_assert_int_eq(sh("ip link add %s type veth peer name %s && ip link set %s netns %s && "
			    "ip link set %s netns %s", veth_a, veth_b, veth_a, ns_a, veth_b, ns_b), 0);
	ck_assert_int_eq(sh("ip -n %s addr add 10.213.77.1/30 dev %s && ip -n %s link set %s up && "
			    "ip -n %s link set lo up", ns_a, veth_a, ns_a, veth_a, ns_a), 0);
	ck_assert_int_eq(sh("ip -n %s addr add 10.213.77.2/30 dev %s && ip -n %s link set %s up && "
			    "ip -n %s link set lo up", ns_b, veth_b, ns_b, veth_b, ns_b), 0);
	ck_assert_int_eq(sh("ip netns exec %s tc qdisc add dev %s root tbf rate 1gbit burst 256kb latency 10ms && "
			    "ip netns exec %s tc qdisc add dev %s root tbf rate 1gbit burst 256kb latency 10ms",
			    ns_a, veth_a, ns_b, veth_b), 0);
}

static void enter(const char *ns)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "/run/netns/%s", ns);
	ck_assert_int_ge(fd = open(path, O_RDONLY | O_CLOEXEC), 0);
	ck_assert_int_eq(setns(fd, CLONE_NEWNET), 0);
	close(fd);
}

/* A TCP connection from namespace a (*snd) to namespace b (*rcv). */
static void tcp_pair(int *snd, int *rcv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(47613) };
	int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), l, one = 1;

	ck_assert_int_ge(self, 0);
	inet_pton(AF_INET, "10.213.77.2", &sa.sin_addr);
	enter(ns_b);
	ck_assert_int_ge(l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(l, 1), 0);
	enter(ns_a);
	ck_assert_int_ge(*snd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), 0);
	ck_assert_int_eq(connect(*snd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_ge(*rcv = accept4(l, NULL, NULL, SOCK_CLOEXEC), 0);
	close(l);
	ck_assert_int_eq(setns(self, CLONE_NEWNET), 0);
	close(self);
}

/* One migration of a fresh program over a fresh connection; prints its figures. */
static void migrate_tcp(const char *label, size_t shlen, unsigned max_rounds, size_t hot, bool fast, uint32_t flags)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int snd, rcv;

	prog_new(&p, shlen, PRLEN);
	p.hot = hot;
	p.fast = fast;
	t_writers_start(&p.w, 1, writer, &p);
	p.writing = true;
	ck_assert(t_writers_wait_progress(&p.w, 100, 10));
	tcp_pair(&snd, &rcv);
	o = opts_for(&p);
	o.max_downtime_us = 30000;
	o.max_rounds = max_rounds;
	o.flags = flags;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, snd, &o, &m) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_recv(rcv, NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(p.switchovers, 1);
	take_reference(&p);
	assert_received(in, &p);
	assert_unprotected(&p);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	print_stats(label, m);
	printf("%s: of the downtime, the test's switchover callback (stop the writer, copy the regions): %.2f ms\n",
	       label, p.callback_ns / 1e6);
	if (max_rounds == 1)
		ck_assert_uint_eq(st.rounds, 1);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(snd), close(rcv);
	prog_free(&p);
}

START_TEST(tcp_tbf)
{
	size_t len = (size_t)(getenv("USNAP_MIGRATE_MB") ? atoi(getenv("USNAP_MIGRATE_MB")) : 32) * MiB;

	t_watchdog(120, "migration over TCP");
	netns_up();
	/* a hot set of 512 KiB per region, which the link outruns: pre-copy converges */
	migrate_tcp("tcp pre-copy", len, 0, 512 * KiB, false, 0);
	migrate_tcp("tcp stop-and-copy", len, 1, 512 * KiB, false, 0);
	migrate_tcp("tcp pre-copy compressed", len, 0, 512 * KiB, false, UFFDSNAP_MIGRATE_COMPRESS);
	/* stores all over the memory without pause, faster than the link
	 * drains them: no round gets below the budget, max_rounds ends it */
	migrate_tcp("tcp pre-copy, writer above the link", len, 5, 0, true, 0);
	t_watchdog(0, NULL);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	t_test_require_uffd();
	ps = (size_t)sysconf(_SC_PAGESIZE);
	s = suite_create("migrate");
	tc = tcase_create("socketpair");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, idle);
	tcase_add_test(tc, writer_exact);
	tcase_add_test(tc, zapper_exact);
	tcase_add_test(tc, compressed);
	tcase_add_test(tc, cut_mid_round);
	tcase_add_test(tc, hostile_sender);
	tcase_add_test(tc, hostile_receiver);
	suite_add_tcase(s, tc);
#ifdef USNAP_TEST_INJECT
	tc = tcase_create("inject");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, old_kernel);
	tcase_add_test(tc, protect_fails);
	suite_add_tcase(s, tc);
#endif
	/* the tcp case: its own meson test (CK_RUN_CASE=tcp), skipped without
	 * CAP_NET_ADMIN or ip(8) and tc(8) */
	const char *only = getenv("CK_RUN_CASE");
	bool netns = !system("ip netns add usnapmig-probe-$$ 2>/dev/null && ip netns del usnapmig-probe-$$ && "
			     "command -v tc >/dev/null");
	if (!netns) {
		printf("tcp: skipped: cannot create network namespaces (no CAP_NET_ADMIN, or no ip/tc)\n");
		if (only && !strcmp(only, "tcp"))
			return 77;
	} else {
		snprintf(ns_a, sizeof(ns_a), "usnapmig-%d-a", (int)getpid());
		snprintf(ns_b, sizeof(ns_b), "usnapmig-%d-b", (int)getpid());
		snprintf(veth_a, sizeof(veth_a), "umig%da", (int)getpid() % 10000000);
		snprintf(veth_b, sizeof(veth_b), "umig%db", (int)getpid() % 10000000);
		tc = tcase_create("tcp");
		tcase_set_timeout(tc, 180);
		tcase_add_unchecked_fixture(tc, NULL, netns_down);
		tcase_add_test(tc, tcp_tbf);
		suite_add_tcase(s, tc);
	}
	return t_run_suite(s);
}
