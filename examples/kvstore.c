/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * kvstore: a small RESP2 key-value server (libuv, one thread) whose whole
 * data set -- hash table, entries, allocator state -- lives in one memfd
 * arena, so that BGSAVE is a libuffdsnap snapshot of that arena taken from
 * the loop with uffdsnap_uv_begin(), instead of Redis's fork().
 *
 *   kvstore --port PORT --dir DIR [--arena-mib N] [--huge none|thp|hugetlb]
 *           [--restore lazy|eager|lazy-touch] [--check] [--bind ADDR]
 *           [--snap-threads N] [--zstd-level N] [--snap-nice N]
 *           [--client-output-limit MIB]
 *
 * Enough RESP2 for redis-cli and redis-benchmark: PING SET GET DEL EXISTS
 * INCR MSET MGET DBSIZE FLUSHALL INFO CONFIG GET SAVE BGSAVE LASTSAVE
 * SHUTDOWN ECHO and DEBUG DIGEST, pipelined, inline or multibulk.
 *
 * Everything in the arena is an offset from its start, never a pointer: a
 * restored arena is mapped at another address. The arena is consistent
 * between two commands, and BGSAVE and SAVE begin between two commands on
 * the only thread that writes it, so every snapshot is a consistent
 * database. At start-up DIR/dump.usnap, if present, is restored lazily
 * (uffdsnap_lazy_start(): the server answers at once, pages arrive on first
 * touch or from the background pass); the snapshot context is created once
 * the restore is done, and a BGSAVE before that is refused as Redis refuses
 * one while a save is in progress.
 *
 * A client's replies waiting to be sent are bounded: once they reach
 * --client-output-limit (default 64 MiB), the server stops reading and
 * executing that client's commands until half of them are sent, so a client
 * that pipelines requests and never reads costs the limit plus one reply, not
 * memory without end. A single reply larger than OUT_REPLY_MAX (1 GiB: MGET
 * of many big values) closes the connection, as Redis closes a client over
 * its hard output limit.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <ctype.h>
#include <fnmatch.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <uffdsnap.h>
#include <uffdsnap-uv.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

#define ARENA_MAGIC 0x4b5653544f524531ull /* "KVSTORE1" */
#define ARENA_VERSION 1
#define NCLASS 192
#define MIN_BUCKETS 1024u
#define PROTO_MAX_BULK (512ll << 20)     /* Redis's proto-max-bulk-len */
#define PROTO_MAX_ARGS (1024 * 1024)
#define PROTO_MAX_INLINE (64 << 10)
#define QUERY_BUF_MAX (1ull << 30)       /* Redis's client-query-buffer-limit */
#define OUT_REPLY_MAX (1ull << 30)       /* one command's reply, at most */
#define REHASH_STEPS 4                   /* buckets moved per write command */

/* ---- the arena ------------------------------------------------------------- */

struct arena_hdr {
	uint64_t magic, version, arena_len;
	uint64_t brk;                 /* first byte never allocated */
	uint64_t used;                /* bytes in allocated blocks */
	uint64_t nkeys;
	uint64_t ht_off[2], ht_size[2], ht_used[2];
	int64_t rehash;               /* next bucket of ht[0] to move; -1: not rehashing */
	uint64_t free_head[NCLASS];   /* free blocks of each size class */
};

/* An entry: key and value bytes follow; cls is its block's size class. */
struct entry {
	uint64_t next;
	uint64_t hash;
	uint32_t klen, vlen;
	uint32_t cls, pad;
	char data[];
};

static struct {
	/* options */
	const char *dir, *bind;
	int port;
	size_t arena_len;
	enum { HUGE_NONE, HUGE_THP, HUGE_TLB } huge;
	bool lazy, check;
	int snap_threads, zstd_level;
	int snap_nice;                   /* nice of the snapshot's threads (--snap-nice) */
	uint32_t lazy_flags;             /* --restore lazy-touch: UFFDSNAP_LAZY_NO_PREFETCH */
	size_t out_limit;                /* --client-output-limit: replies queued before reading stops */

	int memfd;
	uint8_t *base;
	struct arena_hdr *h;
	char dump[PATH_MAX];

	uv_loop_t *loop;
	uv_tcp_t server;
	uv_signal_t sigint, sigterm;
	uv_timer_t lazy_poll;
	bool shutting_down;

	uffdsnap_t *ctx;               /* NULL while a lazy restore runs */
	uffdsnap_lazy_t *lz;
	uffdsnap_snap_t *bg;           /* the running BGSAVE */
	uint64_t bg_t0_ns;
	uint64_t dirty, dirty_at_bg;
	time_t lastsave;
	int last_bg_ok;                /* 1 ok, 0 err */
	long long last_bg_time_sec;    /* -1 before the first */
	uffdsnap_stats_t last_stats;
	uint64_t lazy_start_ns;
	double lazy_ms;
	time_t start_time;
	uint64_t commands, connections;
	uint64_t out_pauses, out_closes; /* clients stopped at the output limit; closed over OUT_REPLY_MAX */
} S = { .dir = ".", .bind = "127.0.0.1", .port = 6379, .arena_len = 4ull << 30, .lazy = true,
	.snap_threads = 1, .zstd_level = 1, .last_bg_ok = 1, .last_bg_time_sec = -1, .out_limit = 64u << 20 };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *at(uint64_t off)
{
	return S.base + off;
}

/* Size classes: 4 per power of two from 32 B (at most 25 % lost to rounding). */
static unsigned size_class(uint64_t n, uint64_t *cap)
{
	unsigned c = 0;
	uint64_t sz = 32;

	while (sz < n) {
		uint64_t p = 1ull << (63 - __builtin_clzll(sz));
		sz += p / 4 > 8 ? p / 4 : 8;
		c++;
	}
	*cap = sz;
	return c;
}

static uint64_t class_bytes(unsigned c)
{
	uint64_t sz = 32;

	while (c--) {
		uint64_t p = 1ull << (63 - __builtin_clzll(sz));
		sz += p / 4 > 8 ? p / 4 : 8;
	}
	return sz;
}

/* 0 when the arena is full. */
static uint64_t arena_alloc(uint64_t n, unsigned *clsp)
{
	struct arena_hdr *h = S.h;
	uint64_t cap, off;
	unsigned c = size_class(n, &cap);

	if (c >= NCLASS)
		return 0;
	off = h->free_head[c];
	if (off) {
		h->free_head[c] = *(uint64_t *)at(off);
	} else {
		if (cap > h->arena_len - h->brk)
			return 0;
		off = h->brk;
		h->brk += cap;
	}
	h->used += cap;
	*clsp = c;
	return off;
}

static void arena_free(uint64_t off, unsigned c)
{
	*(uint64_t *)at(off) = S.h->free_head[c];
	S.h->free_head[c] = off;
	S.h->used -= class_bytes(c);
}

static void arena_init(void)
{
	struct arena_hdr *h = S.h;
	unsigned c;

	memset(h, 0, sizeof(*h));
	h->magic = ARENA_MAGIC;
	h->version = ARENA_VERSION;
	h->arena_len = S.arena_len;
	h->brk = (sizeof(*h) + 63) & ~63ull;
	h->rehash = -1;
	h->ht_size[0] = MIN_BUCKETS;
	h->ht_off[0] = arena_alloc(MIN_BUCKETS * 8, &c);
	memset(at(h->ht_off[0]), 0, MIN_BUCKETS * 8);
}

/* ---- the hash table (incremental rehash, as Redis's dict) ------------------- */

static uint64_t hash_bytes(const char *p, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n;

	while (n >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		h = (h ^ (w * 0xbf58476d1ce4e5b9ull)) * 0x94d049bb133111ebull;
		h ^= h >> 29;
		p += 8, n -= 8;
	}
	if (n) {
		uint64_t w = 0;

		memcpy(&w, p, n);
		h = (h ^ (w * 0xbf58476d1ce4e5b9ull)) * 0x94d049bb133111ebull;
	}
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ull;
	return h ^ (h >> 32);
}

static uint64_t *bucket(int t, uint64_t hash)
{
	return (uint64_t *)at(S.h->ht_off[t] + (hash & (S.h->ht_size[t] - 1)) * 8);
}

static void rehash_step(unsigned n)
{
	struct arena_hdr *h = S.h;
	unsigned empty_visits = n * 10;

	while (h->rehash >= 0 && n && h->ht_used[0]) {
		uint64_t *b = (uint64_t *)at(h->ht_off[0] + (uint64_t)h->rehash * 8);

		if (!*b) {
			h->rehash++;
			if (--empty_visits == 0)
				return;
			continue;
		}
		while (*b) {
			struct entry *e = at(*b);
			uint64_t off = *b, *nb = bucket(1, e->hash);

			*b = e->next;
			e->next = *nb;
			*nb = off;
			h->ht_used[0]--;
			h->ht_used[1]++;
		}
		h->rehash++;
		n--;
	}
	if (h->rehash >= 0 && !h->ht_used[0]) {
		arena_free(h->ht_off[0], size_class(h->ht_size[0] * 8, &(uint64_t){ 0 }));
		h->ht_off[0] = h->ht_off[1], h->ht_size[0] = h->ht_size[1], h->ht_used[0] = h->ht_used[1];
		h->ht_off[1] = h->ht_size[1] = h->ht_used[1] = 0;
		h->rehash = -1;
	}
}

static void maybe_grow(void)
{
	struct arena_hdr *h = S.h;
	uint64_t n, off;
	unsigned c;

	if (h->rehash >= 0 || h->nkeys < h->ht_size[0])
		return;
	n = h->ht_size[0] * 2;
	off = arena_alloc(n * 8, &c);
	if (!off)
		return; /* stay at this size: longer chains, not a failure */
	memset(at(off), 0, n * 8);
	h->ht_off[1] = off, h->ht_size[1] = n, h->ht_used[1] = 0;
	h->rehash = 0;
}

/* The slot pointing at the entry for key (or the empty slot ending its chain). */
static uint64_t *lookup(const char *k, size_t kl, uint64_t hash, int *tp)
{
	for (int t = 0; t < (S.h->rehash >= 0 ? 2 : 1); t++) {
		uint64_t *p = bucket(t, hash);

		while (*p) {
			struct entry *e = at(*p);

			if (e->hash == hash && e->klen == kl && !memcmp(e->data, k, kl)) {
				*tp = t;
				return p;
			}
			p = &e->next;
		}
	}
	return NULL;
}

static struct entry *get(const char *k, size_t kl)
{
	int t;
	uint64_t *p = lookup(k, kl, hash_bytes(k, kl), &t);

	return p ? at(*p) : NULL;
}

/* Insert or replace; false when the arena is full (nothing changed). */
static bool set(const char *k, size_t kl, const char *v, size_t vl)
{
	uint64_t hash = hash_bytes(k, kl), *p, off, need = sizeof(struct entry) + kl + vl;
	struct entry *e;
	unsigned c;
	int t;

	rehash_step(REHASH_STEPS);
	p = lookup(k, kl, hash, &t);
	if (p) {
		e = at(*p);
		if (need <= class_bytes(e->cls)) { /* in place: one page written, usually */
			memcpy(e->data + kl, v, vl);
			e->vlen = (uint32_t)vl;
			S.dirty++;
			return true;
		}
	}
	off = arena_alloc(need, &c);
	if (!off)
		return false;
	e = at(off);
	e->hash = hash, e->klen = (uint32_t)kl, e->vlen = (uint32_t)vl, e->cls = c, e->pad = 0;
	memcpy(e->data, k, kl);
	memcpy(e->data + kl, v, vl);
	if (p) { /* replace in its chain */
		struct entry *old = at(*p);

		e->next = old->next;
		arena_free(*p, old->cls);
		*p = off;
	} else {
		uint64_t *b;

		t = S.h->rehash >= 0 ? 1 : 0;
		b = bucket(t, hash);

		e->next = *b;
		*b = off;
		S.h->ht_used[t]++;
		S.h->nkeys++;
		maybe_grow();
	}
	S.dirty++;
	return true;
}

static bool del(const char *k, size_t kl)
{
	uint64_t hash = hash_bytes(k, kl), *p, off;
	struct entry *e;
	int t;

	rehash_step(REHASH_STEPS);
	p = lookup(k, kl, hash, &t);
	if (!p)
		return false;
	off = *p;
	e = at(off);
	*p = e->next;
	S.h->ht_used[t]--;
	arena_free(off, e->cls);
	S.h->nkeys--;
	S.dirty++;
	return true;
}

static void flushall(void)
{
	/* Punching the memfd returns the memory, but a snapshot that has not
	 * copied those pages yet would fail with -ESTALE, and a lazy restore
	 * must not see its placed pages vanish: only without either. */
	if (!S.bg && !S.lz && fallocate(S.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)S.arena_len) == 0) {
		/* the header page is gone too: arena_init writes it again */
	}
	S.dirty += S.h->nkeys ? S.h->nkeys : 1;
	arena_init();
}

/* Order-independent digest of every key and value (DEBUG DIGEST). */
static uint64_t digest(void)
{
	uint64_t d = 0;

	for (int t = 0; t < (S.h->rehash >= 0 ? 2 : 1); t++)
		for (uint64_t i = 0; i < S.h->ht_size[t]; i++)
			for (uint64_t off = *(uint64_t *)at(S.h->ht_off[t] + i * 8); off;) {
				struct entry *e = at(off);

				d += hash_bytes(e->data, (size_t)e->klen + e->vlen) ^ (e->klen * 0x9e3779b97f4a7c15ull);
				off = e->next;
			}
	return d;
}

/* --check: every structure of a restored arena within bounds and counted right. */
static int arena_check(void)
{
	struct arena_hdr *h = S.h;
	uint64_t keys = 0, lim = h->arena_len;

	if (h->brk > lim || h->rehash >= (int64_t)h->ht_size[0] || h->ht_size[0] < MIN_BUCKETS ||
	    (h->ht_size[0] & (h->ht_size[0] - 1)))
		return -1;
	for (int t = 0; t < (h->rehash >= 0 ? 2 : 1); t++) {
		uint64_t used = 0;

		if (h->ht_off[t] + h->ht_size[t] * 8 > h->brk)
			return -1;
		for (uint64_t i = 0; i < h->ht_size[t]; i++)
			for (uint64_t off = *(uint64_t *)at(h->ht_off[t] + i * 8); off; used++) {
				struct entry *e = at(off);

				if (off + sizeof(*e) > h->brk || e->cls >= NCLASS ||
				    off + class_bytes(e->cls) > h->brk ||
				    sizeof(*e) + (uint64_t)e->klen + e->vlen > class_bytes(e->cls) ||
				    e->hash != hash_bytes(e->data, e->klen) ||
				    (e->hash & (h->ht_size[t] - 1)) != i || used > h->nkeys)
					return -1;
				off = e->next;
			}
		if (used != h->ht_used[t])
			return -1;
		keys += used;
	}
	return keys == h->nkeys ? 0 : -1;
}

/* ---- replies ------------------------------------------------------------------ */

struct conn {
	uv_tcp_t tcp;
	char *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_len, out_cap;
	bool closing;
	bool out_paused;  /* reading stopped: too many replies wait to be sent */
	bool out_failed;  /* a reply over OUT_REPLY_MAX or no memory for it: dropped, the connection closes */
};

/* Room for n more bytes of replies; false (and the connection condemned) if there cannot be. */
static bool out_need(struct conn *c, size_t n)
{
	size_t cap;
	char *p;

	if (c->out_failed)
		return false;
	if (c->out_len + n <= c->out_cap)
		return true;
	cap = (c->out_len + n) * 2 < 16384 ? 16384 : (c->out_len + n) * 2;
	if (c->out_len + n > OUT_REPLY_MAX || !(p = realloc(c->out, cap))) {
		fprintf(stderr, "kvstore: closing a client whose replies would exceed %s\n",
			c->out_len + n > OUT_REPLY_MAX ? "1 GiB" : "the memory available");
		c->out_failed = true;
		return false;
	}
	c->out = p, c->out_cap = cap;
	return true;
}

static void out_raw(struct conn *c, const void *p, size_t n)
{
	if (!out_need(c, n))
		return;
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
}

static void out_fmt(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!out_need(c, 256))
		return;
	va_start(ap, fmt);
	n = vsnprintf(c->out + c->out_len, c->out_cap - c->out_len, fmt, ap);
	va_end(ap);
	if ((size_t)n >= c->out_cap - c->out_len) {
		if (!out_need(c, (size_t)n + 1))
			return;
		va_start(ap, fmt);
		vsnprintf(c->out + c->out_len, c->out_cap - c->out_len, fmt, ap);
		va_end(ap);
	}
	c->out_len += (size_t)n;
}

/* a string literal, its length counted by the compiler */
#define OUT_LIT(c, s) out_raw((c), "" s, sizeof(s) - 1)
#define OUT_OK(c) OUT_LIT((c), "+OK\r\n")
#define OUT_NIL(c) OUT_LIT((c), "$-1\r\n")

static void out_bulk(struct conn *c, const char *p, size_t n)
{
	out_fmt(c, "$%zu\r\n", n);
	out_raw(c, p, n);
	OUT_LIT(c, "\r\n");
}


/* ---- persistence ---------------------------------------------------------------- */

static void snap_opts(uffdsnap_opts_t *o)
{
	uffdsnap_opts_init(o);
	/* the server first, the file's size second: uncompressed chunks while a
	 * write waits for buffer space */
	o->flags |= UFFDSNAP_OPT_ADAPT | UFFDSNAP_OPT_FSYNC;
	/* one worker by default, as Redis's BGSAVE child compresses on one
	 * core: the server keeps the other */
	o->compress_threads = S.snap_threads;
	o->zstd_level = S.zstd_level;
}

static int ctx_open(void)
{
	uffdsnap_opts_t o;
	int r;

	snap_opts(&o);
	r = uffdsnap_new(&S.ctx, &o);
	if (!r) {
		r = uffdsnap_add_region(S.ctx, "arena", S.base, S.arena_len);
		r = r < 0 ? r : 0;
	}
	if (r) {
		fprintf(stderr, "kvstore: snapshots unavailable: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		uffdsnap_free(S.ctx);
		S.ctx = NULL;
	}
	return r;
}

static void log_stats(const char *what, int status, const uffdsnap_stats_t *st)
{
	fprintf(stderr,
		"kvstore: %s %s in %.1f ms (begin %.2f ms): %" PRIu64 " pages, %" PRIu64 " by faults (%" PRIu64
		" faults), %" PRIu64 " holes, %" PRIu64 " bytes written, buffer peak %" PRIu64 " MiB%s%s\n",
		what, status ? "failed" : "done", st->elapsed_ns / 1e6, st->begin_ns / 1e6, st->pages_total, st->pages_fault,
		st->faults, st->pages_hole, st->bytes_out, st->buffer_peak >> 20, status ? ": " : "",
		status ? uffdsnap_strerror(status) : "");
}

static void bg_done(uffdsnap_snap_t *snap, int status, void *user)
{
	uffdsnap_stats_t st = { .size = sizeof(st) };

	(void)user;
	uffdsnap_snap_stats(snap, &st);
	S.last_stats = st;
	S.bg = NULL;
	S.last_bg_ok = status == 0;
	S.last_bg_time_sec = (long long)((now_ns() - S.bg_t0_ns + 500000000ull) / 1000000000ull);
	if (status == 0) {
		S.dirty -= S.dirty_at_bg;
		S.lastsave = time(NULL);
	} else {
		fprintf(stderr, "kvstore: BGSAVE: %s\n", uffdsnap_snap_error(snap));
	}
	log_stats("BGSAVE", status, &st);
}

static const char *save_refused(void)
{
	if (S.bg || S.lz)
		return "-ERR Background save already in progress\r\n";
	if (!S.ctx)
		return "-ERR snapshots are unavailable on this server (see its log)\r\n";
	return NULL;
}

static void cmd_bgsave(struct conn *c)
{
	const char *no = save_refused();
	uffdsnap_sink_t *sink;
	int r;

	if (no) {
		out_raw(c, no, strlen(no));
		return;
	}
	r = uffdsnap_sink_file(&sink, S.dump, 0600);
	S.bg_t0_ns = now_ns();
	S.dirty_at_bg = S.dirty;
	if (!r) {
		/* Threads inherit their creator's nice value, and begin creates the
		 * snapshot's threads: lower this thread's priority around begin, so
		 * that on a busy machine the snapshot's work yields to the server.
		 * Raising it back needs CAP_SYS_NICE (kvstore runs as root anyway). */
		pid_t tid = gettid();
		int old = getpriority(PRIO_PROCESS, (id_t)tid);

		if (S.snap_nice)
			setpriority(PRIO_PROCESS, (id_t)tid, S.snap_nice);
		r = uffdsnap_uv_begin(S.loop, S.ctx, sink, bg_done, NULL, NULL, &S.bg);
		if (S.snap_nice && setpriority(PRIO_PROCESS, (id_t)tid, old))
			fprintf(stderr, "kvstore: restoring the loop's priority: %s\n", strerror(errno));
	}
	if (r) {
		S.last_bg_ok = 0;
		out_fmt(c, "-ERR BGSAVE: %s\r\n", uffdsnap_last_error());
		return;
	}
	OUT_LIT(c, "+Background saving started\r\n");
}

/* SAVE blocks the server, as Redis's does. */
static void cmd_save(struct conn *c)
{
	const char *no = save_refused();
	uffdsnap_snap_t *s;
	uffdsnap_stats_t st = { .size = sizeof(st) };
	int r;

	if (no) {
		out_raw(c, no, strlen(no));
		return;
	}
	r = uffdsnap_begin_file(S.ctx, S.dump, &s);
	if (r) {
		out_fmt(c, "-ERR SAVE: %s\r\n", uffdsnap_last_error());
		return;
	}
	r = uffdsnap_wait(s);
	uffdsnap_snap_stats(s, &st);
	log_stats("SAVE", r, &st);
	if (r)
		out_fmt(c, "-ERR SAVE: %s\r\n", uffdsnap_snap_error(s));
	else {
		S.dirty = 0;
		S.lastsave = time(NULL);
		OUT_OK(c);
	}
	uffdsnap_snap_free(s);
}

/* ---- commands ----------------------------------------------------------------- */

struct arg {
	const char *p;
	size_t n;
};

static bool is(const struct arg *a, const char *name)
{
	return a->n == strlen(name) && !strncasecmp(a->p, name, a->n);
}

static void oom(struct conn *c)
{
	OUT_LIT(c, "-OOM the arena is full (--arena-mib)\r\n");
}

static bool parse_ll(const char *p, size_t n, long long *v)
{
	char buf[32], *end;

	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, p, n);
	buf[n] = 0;
	errno = 0;
	*v = strtoll(buf, &end, 10);
	return !errno && *end == 0 && !(buf[0] == '0' && n > 1) && !(buf[0] == '+') && !isspace((unsigned char)buf[0]);
}

static void cmd_info(struct conn *c, const struct arg *a, int argc)
{
	char buf[4096]; /* the sections below take about 1 KiB */
	int n = 0;
	bool all = argc < 2 || is(&a[1], "all") || is(&a[1], "everything") || is(&a[1], "default");
	uffdsnap_lazy_stats_t ls = { .size = sizeof(ls) };

	if (all || is(&a[1], "server"))
		n += snprintf(buf + n, sizeof(buf) - n,
			      "# Server\r\nredis_version:7.0.0\r\nkvstore:libuffdsnap %u\r\nprocess_id:%d\r\n"
			      "tcp_port:%d\r\nuptime_in_seconds:%lld\r\n\r\n",
			      uffdsnap_version(), (int)getpid(), S.port, (long long)(time(NULL) - S.start_time));
	if (all || is(&a[1], "memory"))
		n += snprintf(buf + n, sizeof(buf) - n, "# Memory\r\nused_memory:%" PRIu64 "\r\narena_bytes:%zu\r\n"
			      "arena_brk:%" PRIu64 "\r\n\r\n", S.h->used, S.arena_len, S.h->brk);
	if (all || is(&a[1], "stats"))
		n += snprintf(buf + n, sizeof(buf) - n, "# Stats\r\ntotal_connections_received:%" PRIu64 "\r\n"
			      "total_commands_processed:%" PRIu64 "\r\n"
			      "client_output_limit_pauses:%" PRIu64 "\r\nclient_output_limit_closes:%" PRIu64
			      "\r\n\r\n", S.connections, S.commands, S.out_pauses, S.out_closes);
	if (all || is(&a[1], "persistence")) {
		if (S.lz)
			uffdsnap_lazy_stats(S.lz, &ls);
		n += snprintf(buf + n, sizeof(buf) - n,
			      "# Persistence\r\nloading:0\r\nusnap_lazy_restore_in_progress:%d\r\n"
			      "usnap_lazy_restore_ms:%.1f\r\nrdb_changes_since_last_save:%" PRIu64 "\r\n"
			      "rdb_bgsave_in_progress:%d\r\nrdb_last_save_time:%lld\r\nrdb_last_bgsave_status:%s\r\n"
			      "rdb_last_bgsave_time_sec:%lld\r\nrdb_current_bgsave_time_sec:%lld\r\n"
			      "usnap_last_begin_ms:%.3f\r\nusnap_last_pages_fault:%" PRIu64 "\r\n"
			      "usnap_last_faults:%" PRIu64 "\r\nusnap_last_bytes_out:%" PRIu64 "\r\n"
			      "usnap_last_buffer_peak:%" PRIu64 "\r\nusnap_last_fault_wait_max_ms:%.3f\r\n\r\n",
			      S.lz != NULL, S.lazy_ms, S.dirty, S.bg != NULL, (long long)S.lastsave,
			      S.last_bg_ok ? "ok" : "err", S.last_bg_time_sec,
			      S.bg ? (long long)((now_ns() - S.bg_t0_ns) / 1000000000ull) : -1ll,
			      S.last_stats.begin_ns / 1e6, S.last_stats.pages_fault, S.last_stats.faults,
			      S.last_stats.bytes_out, S.last_stats.buffer_peak, S.last_stats.fault_wait_max_ns / 1e6);
	}
	if (all || is(&a[1], "keyspace")) {
		n += snprintf(buf + n, sizeof(buf) - n, "# Keyspace\r\n");
		if (S.h->nkeys)
			n += snprintf(buf + n, sizeof(buf) - n, "db0:keys=%" PRIu64 ",expires=0,avg_ttl=0\r\n",
				      S.h->nkeys);
	}
	out_bulk(c, buf, (size_t)n);
}

static void cmd_config(struct conn *c, const struct arg *a, int argc)
{
	/* what redis-benchmark and redis-cli ask for */
	static const char *const conf[][2] = {
		{ "save", "" }, { "appendonly", "no" }, { "databases", "1" }, { "maxmemory", "0" },
	};
	const size_t nconf = sizeof(conf) / sizeof(conf[0]);
	char pat[256];
	int n = 0;

	if (argc != 3 || !is(&a[1], "get")) {
		OUT_LIT(c, "-ERR only CONFIG GET parameter is supported\r\n");
		return;
	}
	snprintf(pat, sizeof(pat), "%.*s", (int)(a[2].n < 255 ? a[2].n : 255), a[2].p);
	for (size_t i = 0; i < nconf; i++)
		n += fnmatch(pat, conf[i][0], FNM_CASEFOLD) == 0;
	out_fmt(c, "*%d\r\n", 2 * n);
	for (size_t i = 0; i < nconf; i++)
		if (fnmatch(pat, conf[i][0], FNM_CASEFOLD) == 0) {
			out_bulk(c, conf[i][0], strlen(conf[i][0]));
			out_bulk(c, conf[i][1], strlen(conf[i][1]));
		}
}

static void shutdown_server(void);

/* One command; false if the connection is to be closed after the reply. */
static bool dispatch(struct conn *c, struct arg *a, int argc)
{
	const struct arg *k = &a[1];
	struct entry *e;

	if (is(&a[0], "get") && argc == 2) {
		e = get(k->p, k->n);
		if (e)
			out_bulk(c, e->data + e->klen, e->vlen);
		else
			OUT_NIL(c);
	} else if (is(&a[0], "set") && argc == 3) {
		if (a[2].n > UINT32_MAX - 64)
			OUT_LIT(c, "-ERR value too large\r\n");
		else if (set(k->p, k->n, a[2].p, a[2].n))
			OUT_OK(c);
		else
			oom(c);
	} else if (is(&a[0], "set")) {
		OUT_LIT(c, "-ERR syntax error (SET key value only)\r\n");
	} else if (is(&a[0], "ping") && argc <= 2) {
		if (argc == 2)
			out_bulk(c, k->p, k->n);
		else
			OUT_LIT(c, "+PONG\r\n");
	} else if (is(&a[0], "echo") && argc == 2) { /* redis-cli --pipe ends with one */
		out_bulk(c, k->p, k->n);
	} else if ((is(&a[0], "del") || is(&a[0], "exists")) && argc >= 2) {
		long long n = 0;
		bool d = is(&a[0], "del");

		for (int i = 1; i < argc; i++)
			n += d ? del(a[i].p, a[i].n) : get(a[i].p, a[i].n) != NULL;
		out_fmt(c, ":%lld\r\n", n);
	} else if (is(&a[0], "incr") && argc == 2) {
		long long v = 0;
		char buf[32];
		int n;

		e = get(k->p, k->n);
		if (e && !parse_ll(e->data + e->klen, e->vlen, &v)) {
			OUT_LIT(c, "-ERR value is not an integer or out of range\r\n");
			return true;
		}
		if (v == LLONG_MAX) {
			OUT_LIT(c, "-ERR increment or decrement would overflow\r\n");
			return true;
		}
		n = snprintf(buf, sizeof(buf), "%lld", ++v);
		if (set(k->p, k->n, buf, (size_t)n))
			out_fmt(c, ":%lld\r\n", v);
		else
			oom(c);
	} else if (is(&a[0], "mset") && argc >= 3 && argc % 2 == 1) {
		for (int i = 1; i < argc; i += 2)
			if (!set(a[i].p, a[i].n, a[i + 1].p, a[i + 1].n)) {
				oom(c); /* the pairs before stay set, as in Redis after OOM mid-way */
				return true;
			}
		OUT_OK(c);
	} else if (is(&a[0], "mget") && argc >= 2) {
		out_fmt(c, "*%d\r\n", argc - 1);
		for (int i = 1; i < argc; i++) {
			e = get(a[i].p, a[i].n);
			if (e)
				out_bulk(c, e->data + e->klen, e->vlen);
			else
				OUT_NIL(c);
		}
	} else if (is(&a[0], "dbsize") && argc == 1) {
		out_fmt(c, ":%" PRIu64 "\r\n", S.h->nkeys);
	} else if ((is(&a[0], "flushall") || is(&a[0], "flushdb")) && argc <= 2) {
		flushall();
		OUT_OK(c);
	} else if (is(&a[0], "info")) {
		cmd_info(c, a, argc);
	} else if (is(&a[0], "config")) {
		cmd_config(c, a, argc);
	} else if (is(&a[0], "bgsave") && argc <= 2) {
		cmd_bgsave(c);
	} else if (is(&a[0], "save") && argc == 1) {
		cmd_save(c);
	} else if (is(&a[0], "lastsave") && argc == 1) {
		out_fmt(c, ":%lld\r\n", (long long)S.lastsave);
	} else if (is(&a[0], "debug") && argc == 2 && is(&a[1], "digest")) {
		char hex[17];

		snprintf(hex, sizeof(hex), "%016" PRIx64, S.h->nkeys ? digest() : 0);
		out_bulk(c, hex, 16);
	} else if (is(&a[0], "shutdown") && argc <= 2) {
		shutdown_server();
		return false;
	} else if (is(&a[0], "command")) {
		OUT_LIT(c, "*0\r\n"); /* redis-cli asks for docs; it copes without */
	} else {
		out_fmt(c, "-ERR unknown command or wrong number of arguments for '%.*s'\r\n",
			(int)(a[0].n > 64 ? 64 : a[0].n), a[0].p);
	}
	return true;
}

/* ---- connections and the protocol -------------------------------------------------- */

struct wreq {
	uv_write_t req;
	char *buf;
};

static struct arg *argv_buf;
static size_t argv_cap;

static void conn_closed(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (c) {
		free(c->in);
		free(c->out);
		free(c);
	}
}

static void conn_close(struct conn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->tcp))
		uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

/* replies not yet sent: queued in libuv, and being built */
static size_t out_pending(const struct conn *c)
{
	return c->tcp.write_queue_size + c->out_len;
}

static void process(struct conn *c);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct conn *c = req->handle->data;

	free(w->buf);
	free(w);
	if (status < 0 && c)
		conn_close(c);
	else if (c && c->out_paused && !c->closing && !uv_is_closing((uv_handle_t *)&c->tcp) &&
		 out_pending(c) <= S.out_limit / 2) {
		/* half sent: take the commands read meanwhile, then read again */
		c->out_paused = false;
		uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
		process(c);
	}
}

static void flush(struct conn *c)
{
	struct wreq *w;
	uv_buf_t b;

	if (!c->out_len || uv_is_closing((uv_handle_t *)&c->tcp))
		return;
	w = malloc(sizeof(*w));
	if (!w) {
		conn_close(c);
		return;
	}
	w->buf = c->out;
	b = uv_buf_init(c->out, (unsigned)c->out_len);
	c->out = NULL;
	c->out_len = c->out_cap = 0;
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written)) {
		free(w->buf);
		free(w);
		conn_close(c);
	}
}

static void after_shutdown(uv_shutdown_t *req, int status)
{
	(void)status;
	conn_close(req->handle->data);
	free(req);
}

/* Reply with a protocol error, then close once it is sent (as Redis does). */
static void proto_error(struct conn *c, const char *why)
{
	uv_shutdown_t *req = malloc(sizeof(*req));

	fprintf(stderr, "kvstore: protocol error from a client: %s\n", why);
	out_fmt(c, "-ERR Protocol error: %s\r\n", why);
	flush(c);
	c->closing = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, after_shutdown)) {
		free(req);
		conn_close(c);
	}
}

static bool argv_room(size_t n)
{
	struct arg *a;

	if (n <= argv_cap)
		return true;
	a = realloc(argv_buf, n * sizeof(*a));
	if (!a)
		return false;
	argv_buf = a, argv_cap = n;
	return true;
}

/* The line at p (up to limit bytes): its length without \r\n, -1 if incomplete, -2 if too long. */
static long line_len(const char *p, size_t avail, size_t limit)
{
	const char *nl = memchr(p, '\n', avail < limit ? avail : limit);

	if (!nl)
		return avail >= limit ? -2 : -1;
	return nl > p && nl[-1] == '\r' ? nl - p - 1 : nl - p;
}

/*
 * Parse one command at buf[0..avail): bytes it took, 0 if incomplete (with
 * *need the bytes to wait for, when known), -1 after a protocol error reply.
 */
static long parse(struct conn *c, const char *buf, size_t avail, int *argc, size_t *need)
{
	long long n, len;
	long l;
	size_t pos;

	if (buf[0] != '*') { /* inline: words separated by blanks */
		int k = 0;

		l = line_len(buf, avail, PROTO_MAX_INLINE);
		if (l == -2)
			return proto_error(c, "too big inline request"), -1;
		if (l < 0)
			return 0;
		for (long i = 0; i < l;) {
			while (i < l && (buf[i] == ' ' || buf[i] == '\t'))
				i++;
			if (i == l)
				break;
			if (!argv_room((size_t)k + 1))
				return proto_error(c, "out of memory"), -1;
			argv_buf[k].p = buf + i;
			while (i < l && buf[i] != ' ' && buf[i] != '\t')
				i++;
			argv_buf[k].n = (size_t)(buf + i - argv_buf[k].p);
			k++;
		}
		*argc = k;
		return (long)(memchr(buf, '\n', avail) - (void *)buf) + 1;
	}
	l = line_len(buf, avail, 32);
	if (l == -2)
		return proto_error(c, "invalid multibulk length"), -1;
	if (l < 0)
		return 0;
	if (!parse_ll(buf + 1, (size_t)l - 1, &n) || n > PROTO_MAX_ARGS)
		return proto_error(c, "invalid multibulk length"), -1;
	pos = (size_t)l + 2;
	if (n <= 0) {
		*argc = 0;
		return (long)pos;
	}
	if (!argv_room((size_t)n))
		return proto_error(c, "out of memory"), -1;
	for (long long i = 0; i < n; i++) {
		if (pos >= avail)
			return 0;
		if (buf[pos] != '$')
			return proto_error(c, "expected '$'"), -1;
		l = line_len(buf + pos, avail - pos, 32);
		if (l == -2)
			return proto_error(c, "invalid bulk length"), -1;
		if (l < 0)
			return 0;
		if (!parse_ll(buf + pos + 1, (size_t)l - 1, &len) || len < 0 || len > PROTO_MAX_BULK)
			return proto_error(c, "invalid bulk length"), -1;
		pos += (size_t)l + 2;
		if (avail - pos < (size_t)len + 2) {
			*need = pos + (size_t)len + 2;
			return 0;
		}
		if (buf[pos + len] != '\r' || buf[pos + len + 1] != '\n')
			return proto_error(c, "bulk not followed by CRLF"), -1;
		argv_buf[i].p = buf + pos;
		argv_buf[i].n = (size_t)len;
		pos += (size_t)len + 2;
	}
	*argc = (int)n;
	return (long)pos;
}

static void process(struct conn *c)
{
	size_t pos = 0, need = 0;

	while (pos < c->in_len && !c->closing) {
		int argc = 0;
		long used;

		if (out_pending(c) >= S.out_limit) {
			/* the client does not read its replies: neither do we its commands */
			if (!c->out_paused)
				S.out_pauses++;
			c->out_paused = true;
			uv_read_stop((uv_stream_t *)&c->tcp);
			break;
		}
		used = parse(c, c->in + pos, c->in_len - pos, &argc, &need);
		if (used <= 0)
			break;
		pos += (size_t)used;
		S.commands += argc > 0;
		if (argc > 0 && !dispatch(c, argv_buf, argc)) {
			c->closing = true;
			break;
		}
		if (c->out_failed) {
			S.out_closes++;
			c->closing = true;
			conn_close(c);
			return;
		}
	}
	if (c->closing) /* a protocol error's reply is out already; SHUTDOWN closes it */
		return;
	memmove(c->in, c->in + pos, c->in_len - pos);
	c->in_len -= pos;
	if (need > c->in_cap) { /* a big value on its way: one allocation for it */
		char *p = realloc(c->in, need);

		if (p)
			c->in = p, c->in_cap = need;
	}
	flush(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct conn *c = h->data;

	(void)hint;
	if (c->in_cap - c->in_len < 65536) {
		size_t cap = c->in_cap ? c->in_cap * 2 : 65536;
		char *p = cap <= QUERY_BUF_MAX ? realloc(c->in, cap) : NULL;

		if (!p) {
			*buf = uv_buf_init(NULL, 0); /* on_read gets UV_ENOBUFS and closes */
			return;
		}
		c->in = p, c->in_cap = cap;
	}
	*buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	(void)buf;
	if (n < 0) { /* EOF or error, possibly mid-command: the partial command is dropped */
		conn_close(c);
		return;
	}
	c->in_len += (size_t)n;
	process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct conn *c;

	if (status < 0)
		return;
	c = calloc(1, sizeof(*c));
	if (!c)
		return;
	uv_tcp_init(S.loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) || S.shutting_down) {
		conn_close(c);
		return;
	}
	S.connections++;
	uv_tcp_nodelay(&c->tcp, 1);
	uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- start-up and shut-down ---------------------------------------------------------- */

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	/* the snapshot's handles close themselves once it is cancelled */
	if (uffdsnap_uv_owns(h) || uv_is_closing(h))
		return;
	uv_close(h, h->type == UV_TCP && h != (uv_handle_t *)&S.server ? conn_closed : NULL);
}

static void shutdown_server(void)
{
	if (S.shutting_down)
		return;
	S.shutting_down = true;
	if (S.bg)
		uffdsnap_cancel(S.bg); /* as Redis kills its BGSAVE child */
	uv_walk(S.loop, close_walk, NULL);
}

static void on_signal(uv_signal_t *h, int sig)
{
	(void)h;
	fprintf(stderr, "kvstore: signal %d, shutting down\n", sig);
	shutdown_server();
}

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "kvstore: %s%s%s\n", what, detail && *detail ? ": " : "", detail ? detail : "");
	exit(1);
}

static void checked(void)
{
	uint64_t t0 = now_ns();

	if (arena_check())
		die("--check: the restored arena is inconsistent", NULL);
	fprintf(stderr, "kvstore: --check: %" PRIu64 " keys, arena consistent (%.1f ms)\n", S.h->nkeys,
		(now_ns() - t0) / 1e6);
}

static void lazy_poll_cb(uv_timer_t *t)
{
	uffdsnap_lazy_stats_t ls = { .size = sizeof(ls) };

	uffdsnap_lazy_stats(S.lz, &ls);
	if (ls.state == UFFDSNAP_LAZY_RUNNING)
		return;
	if (ls.state == UFFDSNAP_LAZY_FAILED)
		die("lazy restore failed", uffdsnap_lazy_error(S.lz));
	uffdsnap_lazy_free(S.lz); /* done: frees without waiting */
	S.lz = NULL;
	S.lazy_ms = (now_ns() - S.lazy_start_ns) / 1e6;
	fprintf(stderr, "kvstore: lazy restore done in %.1f ms (%" PRIu64 " pages on faults, %" PRIu64
		" prefetched)\n", S.lazy_ms, ls.pages_fault, ls.pages_prefetch);
	uv_close((uv_handle_t *)t, NULL);
	if (S.check)
		checked();
	ctx_open();
}

static void arena_map(void)
{
	unsigned fl = MFD_CLOEXEC | (S.huge == HUGE_TLB ? MFD_HUGETLB : 0);

	S.memfd = memfd_create("kvstore-arena", fl);
	if (S.memfd < 0 || ftruncate(S.memfd, (off_t)S.arena_len))
		die("memfd for the arena", strerror(errno));
	S.base = mmap(NULL, S.arena_len, PROT_READ | PROT_WRITE, MAP_SHARED, S.memfd, 0);
	if (S.base == MAP_FAILED)
		die("mapping the arena", strerror(errno));
	if (S.huge == HUGE_THP && madvise(S.base, S.arena_len, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)", strerror(errno));
	S.h = (struct arena_hdr *)S.base;
}

/* Restore DIR/dump.usnap into a new arena of its size; false if there is none. */
static bool restore(void)
{
	uffdsnap_reader_t *r;
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	int id, err;

	if (access(S.dump, F_OK))
		return false;
	if ((err = uffdsnap_reader_open(&r, S.dump)))
		die("opening the dump", uffdsnap_last_error());
	uffdsnap_reader_info(r, &info);
	if (!info.complete)
		die("the dump is incomplete", info.reason);
	if ((id = uffdsnap_reader_find(r, "arena")) < 0 || uffdsnap_reader_region(r, (unsigned)id, &ri))
		die("the dump has no region 'arena'", NULL);
	if (ri.length != S.arena_len)
		fprintf(stderr, "kvstore: the dump's arena is %" PRIu64 " MiB: using that size\n", ri.length >> 20);
	S.arena_len = ri.length;
	arena_map();
	S.lazy_start_ns = now_ns();
	if (S.lazy) {
		uffdsnap_lazy_region_t reg = { "arena", S.base, S.arena_len };
		uffdsnap_lazy_opts_t lo;

		uffdsnap_lazy_opts_init(&lo);
		lo.flags |= S.lazy_flags;
		if ((err = uffdsnap_lazy_start(&S.lz, r, &reg, 1, &lo)))
			die("lazy restore", uffdsnap_last_error());
	} else {
		if ((err = uffdsnap_restore_into(r, (unsigned)id, S.base, S.arena_len, NULL, NULL)))
			die("restore", uffdsnap_last_error());
		S.lazy_ms = (now_ns() - S.lazy_start_ns) / 1e6;
		fprintf(stderr, "kvstore: eager restore done in %.1f ms\n", S.lazy_ms);
	}
	uffdsnap_reader_free(r);
	/* the header's page is served first (lazily: on this fault) */
	if (S.h->magic != ARENA_MAGIC || S.h->version != ARENA_VERSION || S.h->arena_len != S.arena_len ||
	    S.h->brk > S.arena_len)
		die("the dump's arena is not a kvstore arena of this version", NULL);
	fprintf(stderr, "kvstore: restored %" PRIu64 " keys from %s (%s)\n", S.h->nkeys, S.dump,
		S.lazy ? "lazily" : "eagerly");
	return true;
}

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: kvstore [--port PORT] [--bind ADDR] [--dir DIR] [--arena-mib N]\n"
		"               [--huge none|thp|hugetlb] [--restore lazy|eager|lazy-touch] [--check]\n"
		"               [--snap-threads N] [--zstd-level N] [--snap-nice N]\n"
		"               [--client-output-limit MIB]\n"
		"  --port 0 picks a free port and prints it. Defaults: 6379, 127.0.0.1, ., 4096 MiB,\n"
		"  none, lazy, 1 compression thread, zstd level 1. The arena is a sparse memfd:\n"
		"  memory is used as data arrives.\n"
		"  lazy-touch restores only pages that are touched, so the restore stays in\n"
		"  progress (tests: BGSAVE is refused meanwhile). --check walks the restored arena.\n"
		"  --client-output-limit: a client's replies waiting to be sent (default 64 MiB)\n"
		"  before the server stops reading its commands until half are sent.\n");
	exit(code);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "port", 1, 0, 'p' }, { "bind", 1, 0, 'b' }, { "dir", 1, 0, 'd' }, { "arena-mib", 1, 0, 'a' },
		{ "huge", 1, 0, 'H' }, { "snap-threads", 1, 0, 't' }, { "zstd-level", 1, 0, 'z' },
		{ "snap-nice", 1, 0, 'n' }, { "restore", 1, 0, 'r' }, { "check", 0, 0, 'c' }, { "help", 0, 0, 'h' },
		{ "client-output-limit", 1, 0, 'O' },
		{ 0, 0, 0, 0 },
	};
	struct sockaddr_storage addr;
	int o, r, alen = sizeof(addr);
	char *end;

	uffdsnap_set_log_fn(uffdsnap_log_stderr, NULL); /* a lazy restore's failure, before its SIGBUS */
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'p': S.port = atoi(optarg); break;
		case 'b': S.bind = optarg; break;
		case 'd': S.dir = optarg; break;
		case 'a':
			S.arena_len = strtoull(optarg, &end, 10) << 20;
			if (*end || S.arena_len < (4u << 20))
				usage(2);
			break;
		case 'H':
			S.huge = !strcmp(optarg, "thp") ? HUGE_THP : !strcmp(optarg, "hugetlb") ? HUGE_TLB : HUGE_NONE;
			if (S.huge == HUGE_NONE && strcmp(optarg, "none"))
				usage(2);
			break;
		case 'r':
			S.lazy = strcmp(optarg, "eager") != 0;
			if (!strcmp(optarg, "lazy-touch"))
				S.lazy_flags = UFFDSNAP_LAZY_NO_PREFETCH;
			else if (S.lazy && strcmp(optarg, "lazy"))
				usage(2);
			break;
		case 't': S.snap_threads = atoi(optarg); break;
		case 'z': S.zstd_level = atoi(optarg); break;
		case 'n': S.snap_nice = atoi(optarg); break;
		case 'c': S.check = true; break;
		case 'O':
			S.out_limit = strtoull(optarg, &end, 10) << 20;
			if (*end || !S.out_limit)
				usage(2);
			break;
		case 'h': usage(0); break;
		default: usage(2);
		}
	}
	if (optind != argc || S.port < 0 || S.port > 65535)
		usage(2);
	snprintf(S.dump, sizeof(S.dump), "%s/dump.usnap", S.dir);
	signal(SIGPIPE, SIG_IGN);
	S.start_time = S.lastsave = time(NULL);
	S.loop = uv_default_loop();

	if (restore()) {
		if (S.lz) {
			uv_timer_init(S.loop, &S.lazy_poll);
			uv_timer_start(&S.lazy_poll, lazy_poll_cb, 5, 5);
		} else {
			if (S.check)
				checked();
			ctx_open();
		}
	} else {
		arena_map();
		arena_init();
		ctx_open();
	}

	if ((r = uv_ip4_addr(S.bind, S.port, (struct sockaddr_in *)&addr)) &&
	    (r = uv_ip6_addr(S.bind, S.port, (struct sockaddr_in6 *)&addr)))
		die("--bind", uv_strerror(r));
	uv_tcp_init(S.loop, &S.server);
	if ((r = uv_tcp_bind(&S.server, (struct sockaddr *)&addr, 0)) ||
	    (r = uv_listen((uv_stream_t *)&S.server, 511, on_connection)))
		die("listening", uv_strerror(r));
	uv_tcp_getsockname(&S.server, (struct sockaddr *)&addr, &alen);
	S.port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
	printf("kvstore: listening on %s:%d, arena %zu MiB%s\n", S.bind, S.port, S.arena_len >> 20,
	       S.huge == HUGE_TLB ? " (hugetlbfs)" : S.huge == HUGE_THP ? " (THP)" : "");
	fflush(stdout);
	uv_signal_init(S.loop, &S.sigint);
	uv_signal_start(&S.sigint, on_signal, SIGINT);
	uv_signal_init(S.loop, &S.sigterm);
	uv_signal_start(&S.sigterm, on_signal, SIGTERM);

	uv_run(S.loop, UV_RUN_DEFAULT);

	if (S.lz)
		uffdsnap_lazy_free(S.lz);
	uffdsnap_free(S.ctx);
	r = uv_loop_close(S.loop);
	free(argv_buf);
	munmap(S.base, S.arena_len);
	close(S.memfd);
	return r ? 1 : 0;
}
