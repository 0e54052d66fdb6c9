/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, writer threads: start, wait for progress, stop; a random-store
 * writer and the check that a snapshot released every writer (see helpers.h).
 */
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* ---- writer threads ----------------------------------------------------------- */

static void *writer_main(void *arg)
{
	struct t_writer_slot *sl = arg;
	struct t_writers *w = sl->w;

	w->fn(w, sl->i);
	atomic_fetch_add(&w->finished, 1);
	return NULL;
}

void t_writers_start(struct t_writers *w, unsigned n, t_writer_fn fn, void *arg)
{
	ck_assert(n <= 64);
	memset(w, 0, sizeof(*w));
	w->n = n;
	w->fn = fn;
	w->arg = arg;
	for (unsigned i = 0; i < n; i++) {
		w->slot[i].w = w;
		w->slot[i].i = i;
		ck_assert(pthread_create(&w->tid[i], NULL, writer_main, &w->slot[i]) == 0);
	}
}

bool t_writers_wait_progress(struct t_writers *w, unsigned long long min, unsigned seconds)
{
	uint64_t end = t_now_ns() + (uint64_t)seconds * 1000000000ull;

	for (unsigned i = 0; i < w->n; i++) {
		while (atomic_load(&w->progress[i]) < min) {
			if (t_now_ns() > end)
				return false;
			usleep(200);
		}
	}
	return true;
}

void t_writers_join(struct t_writers *w, unsigned seconds)
{
	for (unsigned i = 0; i < w->n; i++) {
		int r = t_join_timeout(w->tid[i], seconds);
		ck_assert_msg(r == 0, "writer %u did not finish within %us (%s): blocked on a fault?", i, seconds,
			      strerror(r));
	}
	w->n = 0;
}

void t_writers_stop(struct t_writers *w, unsigned seconds)
{
	atomic_store(&w->stop, true);
	t_writers_join(w, seconds);
}

void t_span_writer(struct t_writers *w, unsigned idx)
{
	struct t_span *b = w->arg;
	uint64_t rng = 1234 + idx;

	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		uint64_t r = t_splitmix64(&rng);
		__atomic_store_n(&b->addr[(r % b->npages) * t_page + (r >> 52)], (uint8_t)r, __ATOMIC_RELAXED);
		atomic_fetch_add_explicit(&w->progress[idx], 1, memory_order_relaxed);
	}
}

void t_assert_released(struct t_mem *m, struct t_writers *w, const char *what)
{
	unsigned long long p0[64];
	long prot = t_pagemap_protected(m->addr, m->len);

	ck_assert_msg(prot == 0, "%s: %ld pages still protected after the snapshot ended", what, prot);
	for (unsigned i = 0; i < w->n; i++)
		p0[i] = atomic_load(&w->progress[i]);
	/* A writer starved of CPU for a moment is not a writer blocked on a
	 * fault: give each up to 5 s to make one more store. */
	for (unsigned i = 0; i < w->n; i++) {
		uint64_t t0 = t_now_ns();
		while (atomic_load(&w->progress[i]) == p0[i] && t_ms_since(t0) < 5000)
			usleep(1000);
		ck_assert_msg(atomic_load(&w->progress[i]) > p0[i], "%s: writer %u made no progress in 5 s after the "
			      "snapshot ended (blocked on a fault)", what, i);
	}
	t_writers_stop(w, 10);
}
