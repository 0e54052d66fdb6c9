/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The migration tests' shared parts (t-migrate.h says what they are). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate.h"
#include "netpair.h"
#include "t-migrate.h"

size_t ps;

/* ---- the program being migrated ------------------------------------------------ */


void prog_new(struct prog *p, size_t shlen, size_t prlen)
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

void prog_free(struct prog *p)
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
void writer(struct t_writers *w, unsigned idx)
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
int on_switchover(void *user)
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

void take_reference(struct prog *p)
{
	ck_assert_int_eq(pread(p->shm.fd, p->ref_shm, p->shm.len, 0), (ssize_t)p->shm.len);
	memcpy(p->ref_prv, p->prv.addr, p->prv.len);
}

void assert_unprotected(const struct prog *p)
{
	ck_assert_int_eq(t_pagemap_protected(p->shm.addr, p->shm.len), 0);
	ck_assert_int_eq(t_pagemap_protected(p->prv.addr, p->prv.len), 0);
}

/* The receiver holds the two regions, equal to the references. */
void assert_received(uffdsnap_incoming_t *in, const struct prog *p)
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

void print_stats(const char *label, uffdsnap_migrate_t *m)
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

uffdsnap_migrate_opts_t opts_for(struct prog *p)
{
	uffdsnap_migrate_opts_t o;

	uffdsnap_migrate_opts_init(&o);
	o.switchover = on_switchover;
	o.user = p;
	return o;
}


size_t frame(uint8_t *out, uint16_t type, const void *payload, uint32_t len)
{
	struct usnap_mig_hdr h = { .magic = USNAP_MIG_MAGIC, .type = type, .len = len };

	h.crc = usnap_mig_crc(&h, payload, len);
	memcpy(out, &h, sizeof(h));
	memcpy(out + sizeof(h), payload, len);
	return sizeof(h) + len;
}


static struct t_netpair net;

/* Unchecked teardown (in the runner, after the case, pass or fail). */
void netns_down(void)
{
	t_netpair_down(&net);
}

/* Two namespaces, a veth pair 10.213.77.1 (a) - 10.213.77.2 (b), 1 Gbit/s
 * token buckets on both ends. */
void netns_up(void)
{
	ck_assert_int_eq(t_netpair_up(&net, 1000), 0);
}

/* A TCP connection from namespace a (*snd) to namespace b (*rcv). */
void tcp_pair(int *snd, int *rcv)
{
	int r = t_netpair_tcp(&net, snd, rcv);

	ck_assert_msg(r == 0, "a TCP connection between the namespaces: %s", strerror(-r));
}

bool t_mig_netns_init(void)
{
	return t_netpair_init(&net, "usnapmig", 77, 47613);
}

int t_mig_feed(const uint8_t *b, size_t n, const char *label, bool complete, uffdsnap_incoming_t **keep)
{
	uffdsnap_incoming_t *in = NULL;
	int sv[2], r;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[0], b, n), (ssize_t)n);
	shutdown(sv[0], SHUT_WR); /* a sender that sent this and hung up */
	r = uffdsnap_migrate_recv(sv[1], NULL, &in);
	printf("%s: recv %d (%s)", label, r, uffdsnap_last_error());
	if (!r) {
		r = complete ? uffdsnap_incoming_complete(in) : uffdsnap_incoming_wait(in);
		printf(", %s %d (%s)", complete ? "complete" : "wait", r, uffdsnap_last_error());
	}
	printf("\n");
	if (keep)
		*keep = in;
	else
		uffdsnap_incoming_free(in);
	close(sv[0]), close(sv[1]);
	return r;
}
