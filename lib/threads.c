/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Starting the library's threads: one (the handler, the I/O thread, a
 * restore's handler ...) or a crew of like workers (compression, parallel
 * protect, eager restore), all started the same way.
 */
#include <pthread.h>
#include <signal.h>

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
