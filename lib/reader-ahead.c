/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Decoding ahead of a reader's caller (reader.c: uffdsnap_reader_read() and
 * extract): worker threads load the chunks the caller will need, through the
 * reader's one checked path (usnap_reader_decode(): pread, CRC-32C, structure,
 * index entry, zstd), into a few slots, while the caller copies the pages of
 * chunks decoded before. Eager restore is fast because every CPU decodes;
 * a reader used to decode on its caller's thread alone (issue 15: reads at
 * half the speed of restore on 2 CPUs).
 *
 * The caller queues chunks in the order it will need them
 * (usnap_ahead_queue()); a worker takes the oldest queued one. The caller
 * takes any chunk it still needs that is decoded (usnap_ahead_take(): a read
 * copies its chunks in any order), or else decodes the oldest one still
 * queued itself; while workers are on all the ones it needs, it decodes the
 * next queued chunk instead of waiting. So it waits only when there is no
 * work, and never for a worker that the machine's load has descheduled
 * while chunks it could use are ready.
 *
 * What a slot holds, pages or an error, is seen only by a take of that
 * chunk: a chunk is checked whole before any of its bytes is used, and a
 * chunk decoded ahead and found damaged fails the read that needs it and no
 * other. The slots bound the memory: each holds one chunk's record and
 * pages, and nothing is queued without a free slot.
 *
 * Workers are started by the first read that needs a chunk and live until
 * the reader is freed, which stops them and joins them (a worker in the middle
 * of a chunk finishes it first). A child of fork() has none of them, and
 * maybe a lock one of them held or a buffer one was reallocating (a slot's,
 * its clone's: freeing those was a double free in a test's child): it closes
 * the clones' descriptors and leaves the rest behind (usnap_ahead_forked()),
 * and its reader starts workers of its own.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "reader-private.h"
#include "uffdsnap-private.h"

enum { SL_FREE, SL_QUEUED, SL_BUSY, SL_DONE };

struct ah_slot {
	int state;                  /* SL_*, under the lock */
	bool orphan;                /* dropped while busy: free once decoded */
	unsigned id;
	size_t ci;                  /* chunk ci of region id */
	uint64_t seq;               /* queue order */
	/* owned by the thread that made it SL_BUSY until SL_DONE, then by the caller */
	struct usnap_rbufs b;
	struct usnap_rchunk c;
	int rc;
	char err[512];
};

struct ah_worker {
	struct usnap_ahead *a;
	uffdsnap_reader_t *r;       /* a clone: its own fd, buffers and zstd context */
};

struct usnap_ahead {
	pthread_mutex_t lock;
	pthread_cond_t work;        /* a chunk was queued, or stop */
	pthread_cond_t done;        /* a slot became SL_DONE */
	bool stop;
	unsigned forks;             /* the count of forks when the workers started */
	uint64_t seq;
	unsigned nslots, nworkers;
	struct ah_slot *slots;
	struct ah_slot *last;       /* taken last: the caller may still be copying from it */
	_Atomic uint64_t decoded, failed;  /* decodes into slots, and those that failed */
	pthread_t *tid;
	struct ah_worker *w;
};

/* fork()s this process is a child of, counted in the child (pthread_atfork):
 * one load per read tells a reader that its workers stayed in the parent */
static _Atomic unsigned forks;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;

static void forked(void)
{
	atomic_fetch_add(&forks, 1);
}

static void count_forks(void)
{
	pthread_atfork(NULL, NULL, forked);
}

bool usnap_ahead_forked(const struct usnap_ahead *a)
{
	return a->forks != atomic_load_explicit(&forks, memory_order_relaxed);
}

static struct ah_slot *find(struct usnap_ahead *a, unsigned id, size_t ci)
{
	for (unsigned i = 0; i < a->nslots; i++) {
		struct ah_slot *s = &a->slots[i];

		if (s->state != SL_FREE && !s->orphan && s->id == id && s->ci == ci)
			return s;
	}
	return NULL;
}

static struct ah_slot *oldest_queued(struct usnap_ahead *a)
{
	struct ah_slot *best = NULL;

	for (unsigned i = 0; i < a->nslots; i++)
		if (a->slots[i].state == SL_QUEUED && (!best || a->slots[i].seq < best->seq))
			best = &a->slots[i];
	return best;
}

/* Decode queued slot s with reader r's file and zstd context, the lock held
 * on entry and on return, not meanwhile (s is SL_BUSY then); s ends SL_DONE,
 * or free if it was dropped meanwhile. */
static void decode(struct usnap_ahead *a, uffdsnap_reader_t *r, struct ah_slot *s)
{
	s->state = SL_BUSY;
	pthread_mutex_unlock(&a->lock);
	s->rc = usnap_reader_decode(r, s->id, s->ci, &s->b, &s->c, s->err, sizeof(s->err));
	atomic_fetch_add_explicit(s->rc ? &a->failed : &a->decoded, 1, memory_order_relaxed);
	pthread_mutex_lock(&a->lock);
	s->state = s->orphan ? SL_FREE : SL_DONE;
	s->orphan = false;
	pthread_cond_broadcast(&a->done);
}

static void *worker_main(void *arg)
{
	struct ah_worker *w = arg;
	struct usnap_ahead *a = w->a;
	struct ah_slot *s = NULL; /* (gcc -fsanitize=address cannot tell it is set before use) */

	pthread_mutex_lock(&a->lock);
	for (;;) {
		while (!a->stop && !(s = oldest_queued(a)))
			pthread_cond_wait(&a->work, &a->lock);
		if (a->stop)
			break;
		decode(a, w->r, s);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

static void slots_free(struct usnap_ahead *a)
{
	for (unsigned i = 0; a->slots && i < a->nslots; i++) {
		free(a->slots[i].b.rec);
		free(a->slots[i].b.raw);
	}
	for (unsigned i = 0; a->w && i < a->nworkers; i++)
		uffdsnap_reader_free(a->w[i].r);
	free(a->slots);
	free(a->w);
	free(a->tid);
	free(a);
}

int usnap_ahead_new(uffdsnap_reader_t *r, unsigned workers, unsigned slots, struct usnap_ahead **out)
{
	struct usnap_ahead *a = calloc(1, sizeof(*a));
	unsigned n = 0;

	*out = NULL;
	if (!a)
		return -ENOMEM;
	pthread_once(&forks_once, count_forks);
	a->forks = atomic_load(&forks);
	a->nslots = slots;
	a->slots = calloc(slots, sizeof(*a->slots));
	a->w = calloc(workers, sizeof(*a->w));
	a->tid = calloc(workers, sizeof(*a->tid));
	if (!a->slots || !a->w || !a->tid) {
		slots_free(a);
		return -ENOMEM;
	}
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->work, NULL);
	pthread_cond_init(&a->done, NULL);
	/* a clone or a thread that cannot be had is not fatal: fewer workers */
	for (a->nworkers = 0; a->nworkers < workers && !usnap_reader_clone(r, &a->w[a->nworkers].r); a->nworkers++)
		a->w[a->nworkers].a = a;
	n = usnap_crew_start(a->tid, a->nworkers, worker_main, a->w, sizeof(*a->w), "usnap-readahead", NULL);
	for (unsigned i = n; i < a->nworkers; i++)
		uffdsnap_reader_free(a->w[i].r);
	a->nworkers = n;
	if (!n) {
		pthread_cond_destroy(&a->done);
		pthread_cond_destroy(&a->work);
		pthread_mutex_destroy(&a->lock);
		slots_free(a);
		return -EAGAIN;
	}
	*out = a;
	return 0;
}

void usnap_ahead_free(struct usnap_ahead *a)
{
	if (!a)
		return;
	if (usnap_ahead_forked(a)) {
		/* the memory stays: the threads that owned parts of it are gone */
		for (unsigned i = 0; i < a->nworkers; i++)
			usnap_reader_abandon(a->w[i].r);
		return;
	}
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_broadcast(&a->work);
	pthread_mutex_unlock(&a->lock);
	usnap_crew_join(a->tid, a->nworkers);
	pthread_cond_destroy(&a->done);
	pthread_cond_destroy(&a->work);
	pthread_mutex_destroy(&a->lock);
	slots_free(a);
}

/*
 * Wake a worker for the queued chunks (lock held) only once the caller is
 * down to half the slots of chunks decoded ahead. Woken for each chunk it
 * would sleep and wake once a chunk whenever it is ahead of the caller: two
 * context switches a chunk, which cost a 512 MiB read 0.3 s of CPU more
 * than decoding alone on this guest (kernel-here.md: cross-CPU wake-ups
 * are expensive). The caller never waits for a worker asleep: it decodes
 * what is queued itself.
 */
static void wake(struct usnap_ahead *a)
{
	unsigned ready = 0, queued = 0;

	for (unsigned i = 0; i < a->nslots; i++) {
		ready += a->slots[i].state == SL_DONE && &a->slots[i] != a->last;
		queued += a->slots[i].state == SL_QUEUED;
	}
	if (queued && ready < a->nslots / 2)
		pthread_cond_signal(&a->work);
}

int usnap_ahead_queue(struct usnap_ahead *a, unsigned id, size_t ci)
{
	int held = 1;

	pthread_mutex_lock(&a->lock);
	if (!find(a, id, ci)) {
		unsigned i = 0;

		while (i < a->nslots && a->slots[i].state != SL_FREE)
			i++;
		if (i == a->nslots) {
			held = 0;
		} else {
			a->slots[i].state = SL_QUEUED;
			a->slots[i].id = id;
			a->slots[i].ci = ci;
			a->slots[i].seq = a->seq++;
			wake(a);
		}
	}
	pthread_mutex_unlock(&a->lock);
	return held;
}

/* Give slot s back (lock held): a busy one once its decode ends. */
static void drop(struct usnap_ahead *a, struct ah_slot *s)
{
	if (s->state == SL_BUSY)
		s->orphan = true;
	else
		s->state = SL_FREE;
	if (a->last == s)
		a->last = NULL;
}

void usnap_ahead_keep(struct usnap_ahead *a, bool (*keep)(void *arg, unsigned id, size_t ci), void *arg)
{
	pthread_mutex_lock(&a->lock);
	for (unsigned i = 0; i < a->nslots; i++) {
		struct ah_slot *s = &a->slots[i];

		if (s->state != SL_FREE && !s->orphan && (!keep || !keep(arg, s->id, s->ci)))
			drop(a, s);
	}
	pthread_mutex_unlock(&a->lock);
}

int usnap_ahead_take(struct usnap_ahead *a, uffdsnap_reader_t *r, unsigned id, bool (*need)(void *arg, size_t ci),
		     void *arg, size_t *ci, struct usnap_rchunk *c)
{
	struct ah_slot *s;
	int rc;

	pthread_mutex_lock(&a->lock);
	/* the caller is done with the chunk it took before, unless it needs it again */
	if (a->last && (a->last->id != id || !need(arg, a->last->ci))) {
		drop(a, a->last);
		wake(a);
	}
	for (;;) {
		struct ah_slot *queued = NULL, *other = NULL;
		bool busy = false;

		s = NULL;
		for (unsigned i = 0; i < a->nslots && !s; i++) {
			struct ah_slot *t = &a->slots[i];

			if (t->state == SL_FREE || t->orphan)
				continue;
			if (t->state == SL_QUEUED && (!other || t->seq < other->seq))
				other = t;
			if (t->id != id || !need(arg, t->ci))
				continue;
			if (t->state == SL_DONE)
				s = t;
			else if (t->state == SL_QUEUED && (!queued || t->seq < queued->seq))
				queued = t;
			busy |= t->state == SL_BUSY;
		}
		if (s)
			break;
		if (queued) {
			decode(a, r, queued);
		} else if (!busy) {
			pthread_mutex_unlock(&a->lock);
			return 1;
		} else if (other) {
			decode(a, r, other); /* workers have the ones needed: do the next one meanwhile */
		} else {
			pthread_cond_wait(&a->done, &a->lock);
		}
	}
	*ci = s->ci;
	rc = s->rc;
	if (rc) {
		usnap_reader_fail(r, rc, "%s", s->err);
		drop(a, s);
	} else {
		*c = s->c;
		a->last = s;
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

uint8_t *usnap_ahead_trade(struct usnap_ahead *a, const uint8_t *data, uint8_t *buf, size_t cap, size_t *old_cap)
{
	uint8_t *old = NULL;

	pthread_mutex_lock(&a->lock);
	if (a->last && data && a->last->b.raw == data) {
		old = a->last->b.raw;
		*old_cap = a->last->b.raw_cap;
		a->last->b.raw = buf;
		a->last->b.raw_cap = cap;
		/* its pages are gone: the slot is free for the next chunk */
		drop(a, a->last);
		wake(a);
	}
	pthread_mutex_unlock(&a->lock);
	return old;
}

uint64_t usnap_ahead_decoded(const struct usnap_ahead *a, uint64_t *failed)
{
	if (failed)
		*failed = a ? atomic_load_explicit(&a->failed, memory_order_relaxed) : 0;
	return a ? atomic_load_explicit(&a->decoded, memory_order_relaxed) : 0;
}
