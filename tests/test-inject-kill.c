/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Cancel, snap_free and free fired from another thread at random moments of
 * a snapshot, some of them while writers are provably blocked in faults
 * (docs/reliability.md "Cancel and free from another thread"). Every round
 * releases the writers, returns 0 or -ECANCELED, and leaks no fd, thread or
 * heap byte. No fault is injected: split from test-inject.c, whose process
 * accounting it shares (tests/t-env.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* ---- cancel, snap_free, free from another thread ---------------------------------------- */

static const char *const kill_name[] = { [T_END_CANCEL] = "uffdsnap_cancel", [T_END_SNAP_FREE] = "uffdsnap_snap_free",
					  [T_END_CTX_FREE] = "uffdsnap_free" };

struct killer {
	enum t_end how;
	unsigned delay_us;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	_Atomic bool fired, done;
	uffdsnap_stats_t st;  /* at the moment of the kill */
};

static void *killer_main(void *arg)
{
	struct killer *kl = arg;

	usleep(kl->delay_us);
	kl->st.size = sizeof(kl->st);
	uffdsnap_snap_stats(kl->s, &kl->st);
	atomic_store(&kl->fired, true);
	t_end_snapshot(kl->how, kl->ctx, kl->s);
	atomic_store(&kl->done, true);
	return NULL;
}

/*
 * `gate`: the sink blocks until the kill, so every buffer is in flight and
 * the writers are blocked in faults waiting for one; they must be released
 * by the kill while the sink is still stuck. Otherwise a slow sink and a
 * random moment.
 */
static void kill_round(enum t_end how, bool gate, unsigned delay_us, unsigned long *while_blocked,
		       unsigned long *cancelled)
{
	const size_t len = 8 * MiB;
	struct t_mem m;
	struct t_writers w = { 0 };
	struct t_span b;
	struct t_cb cb;
	struct killer kl = { 0 };
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	uffdsnap_snap_t *s;
	pthread_t t;
	char what[128];
	int r;

	snprintf(what, sizeof(what), "%s%s after %u us", kill_name[how], gate ? " (sink stuck)" : "", delay_us);
	t_memfd(&m, len);
	t_fill_random(m.addr, len, delay_us);
	t_cb_init(&cb, -1);
	if (gate)
		t_cb_gate(&cb, true);
	else
		atomic_store(&cb.sleep_us, 200);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 64 * KiB;
	o.buffer_bytes = 1 * MiB;
	ctx = t_ctx_new(&o);
	t_add(ctx, "r", m.addr, len);
	ck_assert_int_eq(uffdsnap_begin(ctx, t_cb_sink(&cb), &s), 0);
	b = (struct t_span){ m.addr, len / t_page };
	t_writers_start(&w, 2, t_span_writer, &b);
	if (gate) {
		/* every buffer in flight: each writer ends up waiting in a fault */
		uint64_t t0 = t_now_ns();
		bool stalled = false;
		ck_assert(t_cb_wait_blocked(&cb, 10));
		while (!stalled && t_ms_since(t0) < 5000) {
			unsigned long long p0[64];
			for (unsigned i = 0; i < w.n; i++)
				p0[i] = atomic_load(&w.progress[i]);
			usleep(20 * 1000);
			stalled = true;
			for (unsigned i = 0; i < w.n; i++)
				stalled &= atomic_load(&w.progress[i]) == p0[i];
		}
		ck_assert_msg(stalled, "%s: the writers never blocked although the sink is stuck", what);
		(*while_blocked)++;
	}
	kl = (struct killer){ .how = how, .delay_us = delay_us, .ctx = ctx, .s = s };
	ck_assert_int_eq(pthread_create(&t, NULL, killer_main, &kl), 0);
	if (gate) {
		/* writers released while the sink is still stuck */
		while (!atomic_load(&kl.fired))
			usleep(100);
		{
			unsigned long long p0[64];
			for (unsigned i = 0; i < w.n; i++)
				p0[i] = atomic_load(&w.progress[i]);
			for (unsigned i = 0; i < w.n; i++) {
				uint64_t t0 = t_now_ns();
				while (atomic_load(&w.progress[i]) == p0[i] && t_ms_since(t0) < 5000)
					usleep(1000);
				ck_assert_msg(atomic_load(&w.progress[i]) > p0[i], "%s: writer %u still blocked while the "
					      "sink is stuck", what, i);
			}
		}
		t_cb_gate(&cb, false);
	}
	ck_assert_msg(t_join_timeout(t, 30) == 0, "%s: the killer thread hangs", what);
	if (how == T_END_SNAP_FREE) {
		s = NULL;
	} else {
		r = uffdsnap_wait(s);
		ck_assert_msg(r == 0 || r == -ECANCELED, "%s: wait returned %d (%s)", what, r, uffdsnap_snap_error(s));
		if (r == -ECANCELED) {
			(*cancelled)++;
			ck_assert_str_eq(uffdsnap_snap_error(s), "cancelled");
		}
	}
	t_assert_released(&m, &w, what);
	uffdsnap_snap_free(s);
	if (how != T_END_CTX_FREE)
		uffdsnap_free(ctx);
	t_cb_destroy(&cb);
	t_mem_free(&m);
}

static void kill_sweep(enum t_end how)
{
	unsigned long rounds = T_SANITIZED ? 8 : 24, blocked = 0, cancelled = 0;
	uint64_t rng = 99 + how, t0 = t_now_ns();
	int fds0, thr0;
	size_t heap0 = 0;

	kill_round(how, false, 0, &blocked, &cancelled); /* warm-up */
	fds0 = t_fd_count();
	thr0 = (int)t_proc_status("Threads");
	for (unsigned long i = 0; i < rounds; i++) {
		bool gate = i % 3 == 0;
		kill_round(how, gate, gate ? (unsigned)(t_splitmix64(&rng) % 2000)
					   : (unsigned)(t_splitmix64(&rng) % 40000), &blocked, &cancelled);
		ck_assert_int_eq(t_fd_count(), fds0);
		ck_assert_int_eq((int)t_proc_status("Threads"), thr0);
		if (i == 2)
			heap0 = t_heap_used();
	}
	if (!T_SANITIZED)
		ck_assert_msg(t_heap_used() <= heap0 + 4 * KiB, "%s: heap grew from %zu to %zu", kill_name[how], heap0,
			      t_heap_used());
	printf("%s from another thread: %lu rounds, %lu while writers waited in faults, %lu cancelled; fds %d "
	       "threads %d heap %zu -> %zu; %.1f s\n", kill_name[how], rounds, blocked, cancelled, fds0, thr0, heap0,
	       t_heap_used(), t_ms_since(t0) / 1000);
	ck_assert_uint_ge(blocked, rounds / 3);
}

START_TEST(inject_kill_cancel)
{
	t_watchdog(170, "inject_kill_cancel");
	kill_sweep(T_END_CANCEL);
}
END_TEST

START_TEST(inject_kill_snap_free)
{
	t_watchdog(170, "inject_kill_snap_free");
	kill_sweep(T_END_SNAP_FREE);
}
END_TEST

START_TEST(inject_kill_free)
{
	t_watchdog(170, "inject_kill_free");
	kill_sweep(T_END_CTX_FREE);
}
END_TEST

int main(int argc, char **argv)
{
	const TTest *const cases[] = { inject_kill_cancel, inject_kill_snap_free, inject_kill_free, NULL };

	(void)argc;
	t_exec_without_tcache(argv); /* the heap checks are exact without it */
	t_test_require_uffd();
	return t_run_cases("inject-kill", 180, cases);
}
