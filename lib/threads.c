/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Starting the library's threads: one (the handler, the I/O thread, a
 * restore's handler ...) or a crew of like workers (compression, parallel
 * protect, eager restore), all started the same way.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "uffdsnap-private.h"

/*
 * Start threads with every signal blocked: a signal handler of the program
 * running on the fault handler could write protected memory and wait for
 * itself. Named (top -H, perf, gdb) by their creator, not by themselves: a
 * handler that named itself late, once begin had armed the regions, could
 * meet a fork() holding the locks that naming takes under ThreadSanitizer
 * while that fork waits for the handler to read its event (test-events
 * fork_at_the_end hung in 2 of 4 TSan runs).
 */
int usnap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name)
{
	sigset_t all, old;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!r)
		pthread_setname_np(*t, name);
	return -r;
}

unsigned usnap_crew_start(pthread_t *t, unsigned n, void *(*fn)(void *), void *arg, size_t stride, const char *name,
			  int *err)
{
	unsigned i;
	int r = 0;

	for (i = 0; i < n; i++)
		if ((r = usnap_thread_start(&t[i], fn, (char *)arg + i * stride, name)))
			break;
	if (err)
		*err = r;
	return i;
}

void usnap_crew_join(pthread_t *t, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		pthread_join(t[i], NULL);
}

/*
 * A thread that resolves faults sleeps until a writer faults, and the writer
 * waits until it has run; the sweep, the compression workers and the
 * program's threads meanwhile hold the CPUs. Since Linux 6.12 a fair
 * (SCHED_OTHER) thread may ask for a shorter slice (sched_runtime, 0.1-100
 * ms), and EEVDF lets a waking thread with a shorter slice preempt the one
 * running: the handler gets a CPU at once, without a real-time policy and
 * without more than its fair share. Measured idle (1 GiB, random writer,
 * 9 runs each): fault p50 104 -> 91 us, p99 0.4-3.1 -> 0.3-0.8 ms, the
 * writer's lost work unchanged. Older kernels ignore the field. The
 * thread's policy and nice value are kept; a real-time or batch thread is
 * left as it is.
 */
void usnap_thread_prompt(void)
{
	struct usnap_sched_attr a = { .size = sizeof(a) }; /* Valgrind 3.19 does not know sched_getattr fills it */

	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) || a.sched_policy != SCHED_OTHER)
		return;
	a.sched_runtime = 100 * 1000;
	a.sched_flags = 0;
	(void)syscall(SYS_sched_setattr, 0, &a, 0);
}
