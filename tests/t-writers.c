/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, writer threads: start, wait for progress, stop (see helpers.h).
 */
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* ---- writer threads ----------------------------------------------------------- */

static void *writer_main(void *arg)
{
	struct usnap_writer_slot *sl = arg;
	struct usnap_writers *w = sl->w;

	w->fn(w, sl->i);
	atomic_fetch_add(&w->finished, 1);
	return NULL;
}

void usnap_writers_start(struct usnap_writers *w, unsigned n, usnap_writer_fn fn, void *arg)
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

bool usnap_writers_wait_progress(struct usnap_writers *w, unsigned long long min, unsigned seconds)
{
	uint64_t end = usnap_now_ns() + (uint64_t)seconds * 1000000000ull;

	for (unsigned i = 0; i < w->n; i++) {
		while (atomic_load(&w->progress[i]) < min) {
			if (usnap_now_ns() > end)
				return false;
			usleep(200);
		}
	}
	return true;
}

void usnap_writers_join(struct usnap_writers *w, unsigned seconds)
{
	for (unsigned i = 0; i < w->n; i++) {
		int r = usnap_join_timeout(w->tid[i], seconds);
		ck_assert_msg(r == 0, "writer %u did not finish within %us (%s): blocked on a fault?", i, seconds,
			      strerror(r));
	}
	w->n = 0;
}

void usnap_writers_stop(struct usnap_writers *w, unsigned seconds)
{
	atomic_store(&w->stop, true);
	usnap_writers_join(w, seconds);
}
