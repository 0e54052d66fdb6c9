/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration (pre-copy, docs/migration.md) over real sockets with the real
 * kernel's asynchronous write tracking (UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN):
 *  - idle: a memfd (holes, zero pages, data) and private memory arrive byte
 *    for byte; the sender's memory is unchanged and unprotected afterwards;
 *    a pipe instead of a stream socket is refused (-ENOTSOCK) by both sides;
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
 *  - pacing_cap: after an idle period max_bandwidth lets out at most the
 *    bandwidth plus a 10 ms credit (and a frame), not a burst.
 *  - tcp: two network namespaces joined by a veth pair with a tbf qdisc
 *    (1 Gbit/s), real TCP between them, a writer running: exact at the
 *    switchover; prints pre-copy and post-copy against stop-and-copy of the
 *    same memory over the same link. Skips (77 for the case) without
 *    CAP_NET_ADMIN.
 * Every blocking step runs under Check's timeout and a watchdog. The parts
 * shared with test-migrate-postcopy.c are t-migrate.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zstd.h>

#include "helpers.h"
#include "migrate.h"
#include "t-migrate.h"
#ifdef USNAP_TEST_INJECT
#include "compat.h" /* UFFD_FEATURE_WP_ASYNC, newer than the system's headers */
#include "inject.h"
#endif

#define SHLEN (4 * MiB)
#define PRLEN (1 * MiB)

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
	/* not a stream socket: refused before anything runs, nothing left protected */
	int pp[2];
	ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
	ck_assert_int_eq(uffdsnap_migrate_send(p.ctx, pp[1], &o, &m), -ENOTSOCK);
	ck_assert_ptr_null(m);
	ck_assert_int_eq(uffdsnap_migrate_recv(pp[0], NULL, &in), -ENOTSOCK);
	ck_assert_ptr_null(in);
	assert_unprotected(&p);
	close(pp[0]), close(pp[1]);
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
	ck_assert_msg(uffdsnap_incoming_complete(in) == 0, "%s", uffdsnap_last_error());
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
	char label[32];
	int r;

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
	snprintf(label, sizeof(label), "hostile case %d", c);
	r = t_mig_feed(buf, n, label, false, keep);
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

/*
 * max_bandwidth after an idle period (pacing_cap): round 1 goes at 16 MiB/s,
 * then the switchover callback rewrites 2 MiB and sleeps 200 ms, so the
 * sender sits idle before the final round. A relay between the two ends
 * timestamps the bytes the sender writes. Every byte the relay reads after
 * the callback returned was written after it (round 1 was acknowledged
 * before the switchover, and round 2 starts after it), and was written no
 * later than it was read; so the bytes read in the PACE_WINDOW_MS after the
 * callback are at most what the pacer let out in that window: the bandwidth
 * times the window, plus its credit cap (USNAP_MIG_PACE_CAP_MS of the
 * bandwidth) plus one frame (a frame goes once the credit is not negative).
 * A slow or loaded machine only makes fewer bytes arrive in the window; no
 * lower bound is asserted. A pacer whose credit grew through the idle period
 * (it banked 3.2 MiB there) let the whole 2 MiB out at once.
 */
#define PACE_BW (16 * MiB)
#define PACE_REWRITE (2 * MiB)
#define PACE_WINDOW_MS 50

struct relay {
	int a, b;                  /* the sender's peer; the receiver's */
	_Atomic bool stop;
	size_t n, cap;
	uint64_t *t;               /* when each read from the sender returned */
	size_t *len;               /* and its bytes */
	pthread_t thread;
};

static void write_full(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k <= 0)
			return; /* the other end is gone: the migration says why */
		p += k, n -= (size_t)k;
	}
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	static uint8_t buf[64 * 1024];

	while (!r->stop) {
		struct pollfd p[2] = { { r->a, POLLIN, 0 }, { r->b, POLLIN, 0 } };
		if (poll(p, 2, 10) <= 0)
			continue;
		if (p[0].revents) {
			ssize_t k = read(r->a, buf, sizeof(buf));
			if (k <= 0)
				break;
			if (r->n < r->cap)
				r->t[r->n] = t_now_ns(), r->len[r->n++] = (size_t)k;
			write_full(r->b, buf, (size_t)k);
		}
		if (p[1].revents) {
			ssize_t k = read(r->b, buf, sizeof(buf));
			if (k <= 0)
				break;
			write_full(r->a, buf, (size_t)k);
		}
	}
	return NULL;
}

struct paced {
	struct prog p;             /* first: on_switchover's user */
	_Atomic uint64_t t_end;    /* the callback returned */
};

static int idle_switchover(void *user)
{
	struct paced *x = user;
	int r = on_switchover(&x->p);

	t_fill_random(x->p.shm.addr, PACE_REWRITE, 99);
	usleep(200000);
	x->t_end = t_now_ns();
	return r;
}

START_TEST(pacing_cap)
{
	struct paced x;
	struct relay rl = { .cap = 1 << 16 };
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int s1[2], s2[2];
	size_t early = 0;

	t_watchdog(60, "pacing after an idle period");
	prog_new(&x.p, SHLEN, PRLEN);
	x.t_end = 0;
	rl.t = calloc(rl.cap, sizeof(*rl.t));
	rl.len = calloc(rl.cap, sizeof(*rl.len));
	ck_assert(rl.t && rl.len);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s1), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s2), 0);
	rl.a = s1[1], rl.b = s2[0];
	ck_assert_int_eq(pthread_create(&rl.thread, NULL, relay_main, &rl), 0);
	o = opts_for(&x.p);
	o.switchover = idle_switchover;
	o.user = &x;
	o.max_bandwidth = PACE_BW;
	o.max_rounds = 2;
	ck_assert_msg(uffdsnap_migrate_send(x.p.ctx, s1[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_recv(s2[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_complete(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	rl.stop = true;
	pthread_join(rl.thread, NULL);
	take_reference(&x.p);
	assert_received(in, &x.p);
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	print_stats("pacing", m);
	ck_assert_int_eq(x.p.switchovers, 1);
	ck_assert_uint_eq(st.rounds, 2);
	ck_assert_uint_lt(rl.n, rl.cap); /* every read was timed */
	for (size_t i = 0; i < rl.n; i++)
		if (rl.t[i] >= x.t_end && rl.t[i] < x.t_end + PACE_WINDOW_MS * 1000000ull)
			early += rl.len[i];
	size_t frame_max = sizeof(struct usnap_mig_hdr) + sizeof(struct usnap_mig_pages) + USNAP_MIG_BATCH * ps;
	/* 10: the cap, USNAP_MIG_PACE_CAP_MS (lib/migrate-private.h) */
	size_t bound = (size_t)((double)PACE_BW * (PACE_WINDOW_MS + 10) / 1000) + frame_max;
	printf("pacing: %zu bytes in the first %d ms after a 200 ms idle period (bound %zu); round 2: %llu bytes\n",
	       early, PACE_WINDOW_MS, bound, (unsigned long long)st.round_bytes[1]);
	/* the bound means something: the final round is larger than it */
	ck_assert_uint_ge(st.round_bytes[1], PACE_REWRITE);
	ck_assert_uint_gt(PACE_REWRITE, bound);
	ck_assert_msg(early <= bound, "%zu bytes in %d ms after an idle period: the pacer let a burst out (bound %zu)",
		      early, PACE_WINDOW_MS, bound);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(s1[0]), close(s1[1]), close(s2[0]), close(s2[1]);
	free(rl.t), free(rl.len);
	prog_free(&x.p);
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
 * protected, fails the migration and leaves nothing protected; a
 * post-copy receiver without UFFDIO_POISON refuses in the handshake, and one
 * whose registration fails says so in RUNNING.
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

/* A post-copy receiver on a kernel without UFFDIO_POISON (Linux < 6.6;
 * UFFDIO_API made to hide it) refuses in the handshake; the sender's wait
 * gives -EPROTO with the reason, its program never stopped, nothing stays
 * protected. */
START_TEST(postcopy_old_receiver)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in = NULL;
	int sv[2], r;

	t_watchdog(60, "post-copy receiver without UFFDIO_POISON");
	prog_new(&p, SHLEN, PRLEN);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	o.flags = UFFDSNAP_MIGRATE_POSTCOPY;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	usnap_inject_hide_features(UFFD_FEATURE_POISON);
	r = uffdsnap_migrate_recv(sv[1], NULL, &in);
	usnap_inject_hide_features(0);
	printf("post-copy, old receiver: recv %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(uffdsnap_last_error(), "Linux 6.6"));
	ck_assert_ptr_null(in);
	r = uffdsnap_migrate_wait(m);
	printf("post-copy, old receiver: wait %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EPROTO);
	ck_assert_int_eq(p.switchovers, 0);
	assert_unprotected(&p);
	uffdsnap_migrate_free(m);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

/* A post-copy receiver whose registration for missing pages fails (the third
 * userfaultfd request it makes: UFFDIO_API twice, then REGISTER): it answers
 * RUNNING with the error, so a sender fails at once; its waits give it. */
START_TEST(postcopy_register_fails)
{
	uint8_t b[256], got[64], hp[29];
	struct usnap_mig_hello h = { USNAP_MIG_VERSION, (uint32_t)ps, 1, USNAP_MIG_HELLO_POSTCOPY };
	struct usnap_mig_round r1 = { 1, 0, 0 }, pc = { 2, 0, 0 };
	struct usnap_mig_status st;
	struct usnap_mig_hdr hd;
	uffdsnap_incoming_t *in;
	uint64_t len = 16 * ps;
	uint32_t nl = 1;
	size_t n;
	int sv[2];

	t_watchdog(30, "post-copy registration fails");
	memcpy(hp, &h, 16), memcpy(hp + 16, &len, 8), memcpy(hp + 24, &nl, 4), hp[28] = 'r';
	n = frame(b, USNAP_MIG_HELLO, hp, sizeof(hp));
	n += frame(b + n, USNAP_MIG_ROUND_END, &r1, sizeof(r1));
	n += frame(b + n, USNAP_MIG_POSTCOPY, &pc, sizeof(pc));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[0], b, n), (ssize_t)n);
	usnap_inject_arm(USNAP_INJ_IOCTL, 3, ENOMEM, USNAP_INJ_FAIL);
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, &in) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_incoming_complete(in), -ENOMEM);
	printf("post-copy, registration fails: %s\n", uffdsnap_last_error());
	ck_assert_ptr_nonnull(strstr(uffdsnap_last_error(), "UFFDIO_REGISTER (missing)"));
	usnap_inject_disarm();
	ck_assert_int_eq(usnap_inject_fired(), 1);
	ck_assert_int_eq(uffdsnap_incoming_wait(in), -ENOMEM);
	/* the receiver said: HELLO_OK, ACK of round 1, RUNNING with the error */
	for (unsigned i = 0; i < 3; i++) {
		ck_assert_int_eq(read(sv[0], &hd, sizeof(hd)), (ssize_t)sizeof(hd));
		ck_assert_uint_le(hd.len, sizeof(got));
		ck_assert_int_eq(read(sv[0], got, hd.len), (ssize_t)hd.len);
	}
	ck_assert_int_eq(hd.type, USNAP_MIG_RUNNING);
	memcpy(&st, got, sizeof(st));
	ck_assert_int_eq(st.status, -ENOMEM);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	t_watchdog(0, NULL);
}
END_TEST
#endif

/* ---- two hosts: network namespaces, veth, tbf, TCP ------------------------------------ */

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
	ck_assert_msg(uffdsnap_incoming_complete(in) == 0, "%s", uffdsnap_last_error());
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
	/* the receiver runs after round 1; the pages of the hot set come after
	 * (under a sanitizer test-migrate-postcopy covers the same code) */
	if (!T_SANITIZED)
		migrate_tcp("tcp post-copy", len, 0, 512 * KiB, false, UFFDSNAP_MIGRATE_POSTCOPY);
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
	tcase_add_test(tc, pacing_cap);
	suite_add_tcase(s, tc);
#ifdef USNAP_TEST_INJECT
	tc = tcase_create("inject");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, old_kernel);
	tcase_add_test(tc, protect_fails);
	tcase_add_test(tc, postcopy_old_receiver);
	tcase_add_test(tc, postcopy_register_fails);
	suite_add_tcase(s, tc);
#endif
	/* the tcp case: its own meson test (CK_RUN_CASE=tcp), skipped without
	 * CAP_NET_ADMIN or ip(8) and tc(8) */
	const char *only = getenv("CK_RUN_CASE");
	if (!t_mig_netns_init()) {
		printf("tcp: skipped: cannot create network namespaces (no CAP_NET_ADMIN, or no ip/tc)\n");
		if (only && !strcmp(only, "tcp"))
			return 77;
	} else {
		tc = tcase_create("tcp");
		tcase_set_timeout(tc, 180);
		tcase_add_unchecked_fixture(tc, NULL, netns_down);
		tcase_add_test(tc, tcp_tbf);
		suite_add_tcase(s, tc);
	}
	return t_run_suite(s);
}
