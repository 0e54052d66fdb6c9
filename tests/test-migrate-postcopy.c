/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Post-copy live migration (UFFDSNAP_MIGRATE_POSTCOPY, docs/migration.md
 * "Post-copy") with the real kernel: the receiver's mappings registered for
 * missing-page faults (UFFDIO_COPY), the sender's write tracking (WP_ASYNC):
 *  - exact: a writer stores into both regions until the switchover; right
 *    after uffdsnap_incoming_wait() the receiver writes into pages that have
 *    not arrived and reads everything back (faults fetch pages on demand while
 *    the push runs): the memory equals the sender's at the switchover, with
 *    the receiver's stores on top; pages were requested (the on-demand path
 *    ran); the sender is unprotected and unchanged.
 *  - cut: the connection is shut after the switchover: the sender's wait
 *    fails, its memory is the same and unprotected; the receiver's waits fail
 *    and a page that never came raises SIGBUS instead of waiting.
 *  - forged: a hand-made sender: the receiver asks for a page its program
 *    touches (a REQUEST frame naming it), a thread waiting on a page gets
 *    SIGBUS when the sender goes; hostile post-copy frames are refused
 *    (-EBADMSG) and a valid forged stream is accepted.
 * Every case runs under Check's timeout and a watchdog.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"
#include "migrate.h"
#include "t-migrate.h"

/* smaller under a sanitizer: the same paths, fewer pages to compare */
#define SHLEN (T_SANITIZED ? 2 * MiB : 4 * MiB)
#define PRLEN (1 * MiB)

/* ---- SIGBUS, caught in the thread that touches a page --------------------------- */

static __thread sigjmp_buf *volatile bus_jmp; /* volatile: the store before the touch is not dead */
static __thread int bus_code;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (!bus_jmp)
		abort();
	bus_code = si->si_code;
	siglongjmp(*bus_jmp, 1);
}

/* Read a byte of page p: 0 if it could be read, else the SIGBUS si_code. */
static int touch(const volatile uint8_t *p)
{
	sigjmp_buf jb;
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };

	sigaction(SIGBUS, &sa, NULL);
	if (sigsetjmp(jb, 1)) {
		bus_jmp = NULL;
		return bus_code > 0 ? bus_code : -1;
	}
	bus_jmp = &jb;
	(void)*p;
	bus_jmp = NULL;
	return 0;
}

/* The switchover callback of these tests: stop the writer, then store into
 * the last page of each region (found dirty by the final scan: a page that is
 * pushed last, so still missing on the receiver right after the switchover). */
static int switch_and_mark(void *user)
{
	struct prog *p = user;
	int r = on_switchover(user);

	p->shm.addr[p->shm.len - 8] ^= 0x5a;
	p->prv.addr[p->prv.len - 8] ^= 0x5a;
	return r;
}

static void start(struct prog *p, uint64_t bw, int sv[2], uffdsnap_migrate_t **m, uffdsnap_incoming_t **in)
{
	uffdsnap_migrate_opts_t o;

	prog_new(p, SHLEN, PRLEN);
	t_writers_start(&p->w, 1, writer, p);
	p->writing = true;
	ck_assert(t_writers_wait_progress(&p->w, 16, 10));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(p);
	o.flags = UFFDSNAP_MIGRATE_POSTCOPY;
	o.switchover = switch_and_mark;
	o.max_bandwidth = bw; /* round 1 and the push take a while: the writer dirties pages */
	ck_assert_msg(uffdsnap_migrate_send(p->ctx, sv[0], &o, m) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(*in) == 0, "%s", uffdsnap_last_error());
	ck_assert_int_eq(p->switchovers, 1);
}

static void region(uffdsnap_incoming_t *in, unsigned id, uffdsnap_incoming_region_t *r)
{
	r->size = sizeof(*r);
	ck_assert_int_eq(uffdsnap_incoming_region(in, id, r), 0);
}

START_TEST(exact)
{
	struct prog p;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_incoming_region_t r[2];
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int sv[2];

	t_watchdog(60, "post-copy exactness");
	start(&p, 32 * MiB, sv, &m, &in);
	region(in, 0, &r[0]), region(in, 1, &r[1]);
	/* the program runs at once: stores into every 5th page, from the last
	 * page of the heap (dirty at the switchover and pushed last); whether
	 * that page was still missing here says whether a fetch must follow */
	unsigned char vec;
	ck_assert_int_eq(mincore((uint8_t *)r[1].addr + r[1].len - ps, ps, &vec), 0);
	bool missing = !(vec & 1);
	for (int i = 1; i >= 0; i--)
		for (size_t off = r[i].len - ps + 16; off >= 16 && off < r[i].len; off -= 5 * ps)
			((volatile uint8_t *)r[i].addr)[off] = (uint8_t)(off / ps) | 1;
	/* what the receiver must hold: the sender's memory at the switchover
	 * (it is paused until its wait returns), the same stores on top */
	take_reference(&p);
	uint8_t *ref[2] = { t_copy(p.ref_shm, p.shm.len), t_copy(p.ref_prv, p.prv.len) };
	for (int i = 1; i >= 0; i--)
		for (size_t off = r[i].len - ps + 16; off >= 16 && off < r[i].len; off -= 5 * ps)
			ref[i][off] = (uint8_t)(off / ps) | 1;
	/* and reads everything while the push runs */
	for (int i = 1; i >= 0; i--)
		t_assert_msg(!memcmp(r[i].addr, ref[i], r[i].len), "region %u differs right after the switchover", i);
	ck_assert_msg(uffdsnap_incoming_complete(in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_migrate_wait(m) == 0, "%s", uffdsnap_last_error());
	for (unsigned i = 0; i < 2; i++)
		t_assert_msg(!memcmp(r[i].addr, ref[i], r[i].len), "region %u differs once complete", i);
	ck_assert_int_eq(uffdsnap_incoming_wait(in), 0);
	t_buf_free(ref[0], p.shm.len), t_buf_free(ref[1], p.prv.len);
	/* the sender: unprotected, unchanged since the switchover */
	assert_unprotected(&p);
	t_assert_msg(!memcmp(p.shm.addr, p.ref_shm, p.shm.len), "the sender's memfd changed");
	t_assert_msg(!memcmp(p.prv.addr, p.ref_prv, p.prv.len), "the sender's private memory changed");
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	print_stats("post-copy", m);
	printf("post-copy: %llu pages requested by faults\n", (unsigned long long)st.pages_requested);
	ck_assert_int_eq(st.state, UFFDSNAP_MIGRATE_DONE);
	ck_assert_uint_ge(st.rounds, 3); /* round 1, rounds of drops, the switchover */
	ck_assert_uint_eq(st.round_bytes[1], 0);
	ck_assert_msg(st.round_bytes[st.rounds - 1] > 0, "nothing was dirty at the switchover: the writer did not run");
	/* the on-demand path ran (if the push had not brought the first page
	 * touched before the test's thread got to it; request_then_lost proves
	 * requests in any case) */
	printf("post-copy: the first page touched was %s\n", missing ? "missing" : "there already");
	ck_assert_msg(st.pages_requested > 0 || !missing, "no page was fetched on demand");
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

START_TEST(cut)
{
	struct prog p;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_incoming_region_t r;
	uffdsnap_migrate_t *m;
	uffdsnap_incoming_t *in;
	int sv[2], rs, rr, code;

	t_watchdog(60, "post-copy, connection cut");
	/* a slow push: the last pages are far from sent when the link goes */
	start(&p, 8 * MiB, sv, &m, &in);
	take_reference(&p);
	shutdown(sv[0], SHUT_RDWR);
	shutdown(sv[1], SHUT_RDWR);
	rs = uffdsnap_migrate_wait(m);
	printf("cut: sender wait %d (%s)\n", rs, uffdsnap_last_error());
	rr = uffdsnap_incoming_complete(in);
	printf("cut: receiver complete %d (%s)\n", rr, uffdsnap_last_error());
	ck_assert_msg(rs == -EPIPE || rs == -ECONNRESET, "sender wait %d", rs);
	ck_assert_msg(rr == -EPIPE || rr == -ECONNRESET, "receiver complete %d", rr);
	ck_assert_int_eq(uffdsnap_incoming_wait(in), rr);
	/* the sender: nothing protected, its memory as at the switchover */
	assert_unprotected(&p);
	t_assert_msg(!memcmp(p.shm.addr, p.ref_shm, p.shm.len), "the sender's memfd changed");
	t_assert_msg(!memcmp(p.prv.addr, p.ref_prv, p.prv.len), "the sender's private memory changed");
	ck_assert_int_eq(uffdsnap_migrate_stats(m, &st), 0);
	ck_assert_int_eq(st.state, UFFDSNAP_MIGRATE_FAILED);
	/* the receiver: the heap's last page never came: SIGBUS, not a wait */
	region(in, 1, &r);
	code = touch((uint8_t *)r.addr + r.len - 8);
	printf("cut: touching a page that never came: %s (si_code %d)\n", code ? "SIGBUS" : "read", code);
	ck_assert_msg(code > 0, "no SIGBUS from the kernel for a lost page (%d)", code);
	uffdsnap_migrate_free(m);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

/* ---- a forged sender ---------------------------------------------------------------- */

#define FPAGES 16u

/* A post-copy region table: one region "r" of FPAGES pages, hello flags. */
static size_t hello_pc(uint8_t *out, uint32_t flags)
{
	uint8_t p[29];
	struct usnap_mig_hello h = { USNAP_MIG_VERSION, (uint32_t)ps, 1, flags };
	uint64_t len = FPAGES * ps;
	uint32_t nl = 1;

	memcpy(p, &h, sizeof(h));
	memcpy(p + 16, &len, 8), memcpy(p + 24, &nl, 4), p[28] = 'r';
	return frame(out, USNAP_MIG_HELLO, p, sizeof(p));
}

static size_t page_fr(uint8_t *out, uint64_t first, uint8_t fill)
{
	uint8_t *p = malloc(16 + ps);
	struct usnap_mig_pages h = { 0, 1, first };
	size_t n;

	memcpy(p, &h, 16);
	memset(p + 16, fill, ps);
	n = frame(out, USNAP_MIG_PAGES, p, (uint32_t)(16 + ps));
	free(p);
	return n;
}

static size_t round_fr(uint8_t *out, uint16_t type, uint32_t round, uint32_t final, uint64_t pages)
{
	struct usnap_mig_round r = { round, final, pages };

	return frame(out, type, &r, sizeof(r));
}

static size_t discard_fr(uint8_t *out, uint32_t region, uint64_t first, uint64_t word)
{
	uint8_t p[24];
	struct usnap_mig_discard d = { region, 1, first };

	memcpy(p, &d, 16), memcpy(p + 16, &word, 8);
	return frame(out, USNAP_MIG_DISCARD, p, sizeof(p));
}

enum pc_case { P_FLAGS, P_DISCARD_PRECOPY, P_DISCARD_EARLY, P_DISCARD_PAST, P_DISCARD_TWICE, P_COUNT, P_NOT_DROPPED,
	       P_END_MISSING, P_END_WITHOUT_SWITCH, P_PAGES_IN_DROPS, P_VALID };

/* Round 1 (pages 3 and 5 of 0x11 and 0x22), discards of `word`, the switchover. */
static size_t pc_prefix(uint8_t *b, uint64_t word, uint64_t count)
{
	size_t n = hello_pc(b, USNAP_MIG_HELLO_POSTCOPY);

	n += page_fr(b + n, 3, 0x11);
	n += page_fr(b + n, 5, 0x22);
	n += round_fr(b + n, USNAP_MIG_ROUND_END, 1, 0, 2);
	n += discard_fr(b + n, 0, 0, word);
	n += round_fr(b + n, USNAP_MIG_POSTCOPY, 2, 0, count);
	return n;
}

/* The receiver's verdict on the bytes of case c: from recv, else from
 * incoming_complete (post-copy's wait returns at the switchover). */
static int feed_pc(enum pc_case c, uffdsnap_incoming_t **keep)
{
	uint8_t *b = calloc(1, 64 * KiB);
	size_t n = 0;
	char label[40];
	int r;

	switch (c) {
	case P_FLAGS:
		n = hello_pc(b, 6);
		break;
	case P_DISCARD_PRECOPY:
		n = hello_pc(b, 0);
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 1, 0, 0);
		n += discard_fr(b + n, 0, 0, 1ull << 3);
		break;
	case P_DISCARD_EARLY:
		n = hello_pc(b, USNAP_MIG_HELLO_POSTCOPY);
		n += discard_fr(b + n, 0, 0, 1ull << 3);
		break;
	case P_DISCARD_PAST: /* bit 20 of a region of 16 pages */
		n = hello_pc(b, USNAP_MIG_HELLO_POSTCOPY);
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 1, 0, 0);
		n += discard_fr(b + n, 0, 0, 1ull << 20);
		break;
	case P_DISCARD_TWICE:
		n = pc_prefix(b, 1ull << 3, 1) - 16 - sizeof(struct usnap_mig_round);
		n += discard_fr(b + n, 0, 0, 1ull << 3);
		break;
	case P_COUNT:
		n = pc_prefix(b, 1ull << 3, 2);
		break;
	case P_NOT_DROPPED:
		n = pc_prefix(b, 1ull << 3, 1);
		n += page_fr(b + n, 5, 0x33);
		break;
	case P_END_MISSING:
		n = pc_prefix(b, (1ull << 3) | (1ull << 9), 2);
		n += page_fr(b + n, 3, 0x33);
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 2, 1, 1);
		break;
	case P_END_WITHOUT_SWITCH: /* pages dropped, then a pre-copy style end */
		n = pc_prefix(b, 1ull << 3, 1) - 16 - sizeof(struct usnap_mig_round);
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 2, 1, 0);
		break;
	case P_PAGES_IN_DROPS: /* a page frame in a round of drops */
		n = hello_pc(b, USNAP_MIG_HELLO_POSTCOPY);
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 1, 0, 0);
		n += page_fr(b + n, 3, 0x33);
		break;
	case P_VALID: /* page 3 again (0x33), page 9 written and now zero */
		n = pc_prefix(b, (1ull << 3) | (1ull << 9), 2);
		n += page_fr(b + n, 3, 0x33);
		struct usnap_mig_pages z = { 0, 1, 9 };
		n += frame(b + n, USNAP_MIG_ZERO, &z, sizeof(z));
		n += round_fr(b + n, USNAP_MIG_ROUND_END, 2, 1, 2);
		break;
	}
	snprintf(label, sizeof(label), "post-copy hostile case %d", c);
	r = t_mig_feed(b, n, label, true, keep);
	free(b);
	return r;
}

START_TEST(hostile_frames)
{
	uffdsnap_incoming_region_t r;
	uffdsnap_incoming_t *in;

	t_watchdog(60, "hostile post-copy frames");
	ck_assert_int_eq(feed_pc(P_FLAGS, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_DISCARD_PRECOPY, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_DISCARD_EARLY, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_DISCARD_PAST, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_DISCARD_TWICE, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_COUNT, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_NOT_DROPPED, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_END_MISSING, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_END_WITHOUT_SWITCH, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_PAGES_IN_DROPS, NULL), -EBADMSG);
	ck_assert_int_eq(feed_pc(P_VALID, &in), 0);
	region(in, 0, &r);
	for (size_t i = 0; i < r.len; i++)
		t_assert_msg(((uint8_t *)r.addr)[i] == (i / ps == 3 ? 0x33 : i / ps == 5 ? 0x22 : 0), "byte %zu", i);
	uffdsnap_incoming_free(in);
	t_watchdog(0, NULL);
}
END_TEST

/* A forged sender's stream up to the switchover with page 3 dropped; the
 * receiver runs (*in, its region *r); sv[0] is the sender's end. */
static void forged_switchover(int sv[2], uint8_t *b, uffdsnap_incoming_t **in, uffdsnap_incoming_region_t *r)
{
	size_t n;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	n = pc_prefix(b, 1ull << 3, 1);
	ck_assert_int_eq(write(sv[0], b, n), (ssize_t)n);
	ck_assert_msg(uffdsnap_migrate_recv(sv[1], NULL, in) == 0, "%s", uffdsnap_last_error());
	ck_assert_msg(uffdsnap_incoming_wait(*in) == 0, "%s", uffdsnap_last_error());
	region(*in, 0, r);
}

struct toucher {
	const volatile uint8_t *page;
	int code;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	t->code = touch(t->page);
	return NULL;
}

/* A forged sender that switches over with page 3 dropped: the receiver's
 * touch of it comes back as a REQUEST for exactly that page; the sender then
 * goes away without sending it: the waiting thread gets SIGBUS, the
 * receiver's waits fail with -EPIPE. */
START_TEST(request_then_lost)
{
	uint8_t *b = calloc(1, 64 * KiB), got[64];
	struct usnap_mig_hdr h;
	struct usnap_mig_pages q;
	uffdsnap_incoming_region_t r;
	uffdsnap_incoming_t *in;
	struct toucher t;
	pthread_t th;
	int sv[2];

	t_watchdog(30, "post-copy request, then the sender lost");
	forged_switchover(sv, b, &in, &r);
	/* the receiver said: HELLO_OK, ACK of round 1, RUNNING */
	for (unsigned i = 0; i < 3; i++) {
		ck_assert_int_eq(read(sv[0], &h, sizeof(h)), (ssize_t)sizeof(h));
		ck_assert_int_le(h.len, sizeof(got));
		ck_assert_int_eq(read(sv[0], got, h.len), (ssize_t)h.len);
	}
	ck_assert_int_eq(h.type, USNAP_MIG_RUNNING);
	ck_assert_int_eq(((uint8_t *)r.addr)[5 * ps], 0x22); /* round 1's page, no fault */
	t.page = (uint8_t *)r.addr + 3 * ps;
	ck_assert_int_eq(pthread_create(&th, NULL, toucher_main, &t), 0);
	ck_assert_int_eq(read(sv[0], &h, sizeof(h)), (ssize_t)sizeof(h));
	ck_assert_int_eq(h.type, USNAP_MIG_REQUEST);
	ck_assert_int_eq(h.len, sizeof(q));
	ck_assert_int_eq(read(sv[0], &q, sizeof(q)), (ssize_t)sizeof(q));
	ck_assert_int_eq(usnap_mig_crc(&h, &q, sizeof(q)), h.crc);
	ck_assert_uint_eq(q.region, 0);
	ck_assert_uint_eq(q.npages, 1);
	ck_assert_uint_eq(q.first, 3);
	usleep(20000);
	close(sv[0]); /* the sender is gone */
	pthread_join(th, NULL);
	printf("request then lost: the waiting thread got %s (si_code %d)\n", t.code ? "SIGBUS" : "its read", t.code);
	ck_assert_msg(t.code > 0, "the thread waiting on a lost page got no SIGBUS (%d)", t.code);
	ck_assert_int_eq(uffdsnap_incoming_complete(in), -EPIPE);
	ck_assert_int_eq(uffdsnap_incoming_wait(in), -EPIPE);
	ck_assert_int_eq(((uint8_t *)r.addr)[5 * ps], 0x22);
	ck_assert_int_gt(touch((uint8_t *)r.addr + 3 * ps), 0);
	uffdsnap_incoming_free(in);
	close(sv[1]);
	free(b);
	t_watchdog(0, NULL);
}
END_TEST

/* A page written through the memfd (not the mapping) after it was dropped:
 * when its contents arrive, UFFDIO_COPY finds it there (EEXIST) and the
 * migration fails with -EEXIST; the file keeps the program's write, the
 * mapping raises SIGBUS there as on every page that never came. */
START_TEST(created_outside)
{
	uint8_t *b = calloc(1, 64 * KiB), x = 0x77;
	uffdsnap_incoming_region_t r;
	uffdsnap_incoming_t *in;
	size_t n;
	int sv[2];

	t_watchdog(30, "a page created behind the mapping's back");
	forged_switchover(sv, b, &in, &r);
	ck_assert_int_eq(pwrite(r.fd, &x, 1, (off_t)(3 * ps)), 1);
	n = page_fr(b, 3, 0x33);
	n += round_fr(b + n, USNAP_MIG_ROUND_END, 2, 1, 1);
	ck_assert_int_eq(write(sv[0], b, n), (ssize_t)n);
	ck_assert_int_eq(uffdsnap_incoming_complete(in), -EEXIST);
	printf("created outside: %s\n", uffdsnap_last_error());
	/* in the file, the program's byte; through the mapping, like every page
	 * that did not come from the sender, SIGBUS */
	ck_assert_int_eq(pread(r.fd, &x, 1, (off_t)(3 * ps)), 1);
	ck_assert_int_eq(x, 0x77);
	ck_assert_int_gt(touch((uint8_t *)r.addr + 3 * ps), 0);
	uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	free(b);
	t_watchdog(0, NULL);
}
END_TEST

/* Read one whole frame from fd into h and p (cap bytes). */
static void read_frame(int fd, struct usnap_mig_hdr *h, uint8_t *p, size_t cap)
{
	size_t got = 0;

	ck_assert_int_eq(read(fd, h, sizeof(*h)), (ssize_t)sizeof(*h));
	ck_assert_uint_le(h->len, cap);
	while (got < h->len) {
		ssize_t k = read(fd, p + got, h->len - got);
		ck_assert_int_gt(k, 0);
		got += (size_t)k;
	}
}

/* A receiver that follows the protocol up to the switchover, then asks for
 * a page of a region that does not exist: the sender fails (-EBADMSG) and
 * leaves its program unprotected. */
START_TEST(hostile_request)
{
	struct prog p;
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_t *m;
	struct usnap_mig_hdr h;
	uint8_t *buf = malloc(2 * MiB), fr[64];
	int sv[2], r;

	t_watchdog(60, "hostile post-copy request");
	prog_new(&p, SHLEN, PRLEN);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o = opts_for(&p);
	o.flags = UFFDSNAP_MIGRATE_POSTCOPY;
	ck_assert_msg(uffdsnap_migrate_send(p.ctx, sv[0], &o, &m) == 0, "%s", uffdsnap_last_error());
	for (;;) {
		read_frame(sv[1], &h, buf, 2 * MiB);
		struct usnap_mig_status st = { USNAP_MIG_VERSION, 0 };
		struct usnap_mig_round re;
		memcpy(&re, buf, sizeof(re));
		if (h.type == USNAP_MIG_HELLO) {
			ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_HELLO_OK, &st, sizeof(st))), 24);
		} else if (h.type == USNAP_MIG_ROUND_END) {
			st.value = re.round;
			ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_ACK, &st, sizeof(st))), 24);
		} else if (h.type == USNAP_MIG_POSTCOPY) {
			struct usnap_mig_pages q = { 7, 1, 0 };
			st.value = re.round;
			ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_RUNNING, &st, sizeof(st))), 24);
			ck_assert_int_eq(write(sv[1], fr, frame(fr, USNAP_MIG_REQUEST, &q, sizeof(q))), 32);
			break;
		}
	}
	ck_assert_int_eq(p.switchovers, 1);
	/* nothing more is read: the sender reads the request between two pushed
	 * frames, before the socket's buffer could fill */
	r = uffdsnap_migrate_wait(m);
	printf("hostile request: wait %d (%s)\n", r, uffdsnap_last_error());
	ck_assert_int_eq(r, -EBADMSG);
	assert_unprotected(&p);
	uffdsnap_migrate_free(m);
	close(sv[0]), close(sv[1]);
	free(buf);
	prog_free(&p);
	t_watchdog(0, NULL);
}
END_TEST

int main(void)
{
	Suite *s;
	TCase *tc;

	t_test_require_uffd();
	ps = (size_t)sysconf(_SC_PAGESIZE);
	s = suite_create("migrate-postcopy");
	tc = tcase_create("postcopy");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, exact);
	tcase_add_test(tc, cut);
	tcase_add_test(tc, hostile_frames);
	tcase_add_test(tc, request_then_lost);
	tcase_add_test(tc, created_outside);
	tcase_add_test(tc, hostile_request);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}
